//! Checkpoints: round trip, clear errors for missing/unexpected/misshapen keys and broken
//! files, and the timm backbone import.

use std::path::PathBuf;

use prrnet::backend::cpu::CpuBackend;
use prrnet::io::checkpoint;
use prrnet::io::tensors::TensorFile;
use prrnet::model::layers::ParamKind;
use prrnet::model::{Batch, Mode, PrrNet};
use prrnet::rng::Rng;
use prrnet::{Config, Error};

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("prrnet-ckpt-{}-{name}", std::process::id()))
}

fn tiny(seed: u64) -> PrrNet {
    let cfg = Config::preset("tiny").unwrap();
    let mut net = PrrNet::new(&cfg, Box::new(CpuBackend::new()), 2, false).unwrap();
    net.init_weights(seed).unwrap();
    net
}

fn outputs(net: &mut PrrNet) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let s = net.cfg.size;
    let image = Rng::new(5).vec(2 * 3 * s * s, |r| r.normal());
    net.set_input(&Batch {
        image: &image,
        mask: None,
        label: None,
        mask_weight: None,
    })
    .unwrap();
    net.forward(Mode::EVAL).unwrap();
    net.dump_outputs().unwrap()
}

#[test]
fn round_trip_gives_identical_outputs() {
    let mut a = tiny(1);
    let path = tmp("roundtrip.safetensors");
    checkpoint::save(&a, &path).unwrap();
    let mut b = tiny(2);
    assert_ne!(outputs(&mut a), outputs(&mut b));
    checkpoint::load(&b, &path).unwrap();
    assert_eq!(outputs(&mut a), outputs(&mut b));
    let file = TensorFile::read(&path).unwrap();
    assert_eq!(checkpoint::config_of(&file).unwrap(), Some(a.cfg.clone()));
    // PyTorch layouts on disk.
    assert_eq!(
        file.get("backbone.conv1.weight").unwrap().shape,
        vec![16, 3, 3, 3]
    );
    assert_eq!(
        file.get("pr.proj.weight").unwrap().shape,
        vec![256, 40, 1, 1]
    );
    assert_eq!(file.get("rr.cls.fc1.weight").unwrap().shape, vec![16, 3]);
    std::fs::remove_file(path).ok();
}

#[test]
fn bad_keys_and_shapes_are_named() {
    let net = tiny(1);
    let good = checkpoint::state_dict(&net).unwrap();
    let path = tmp("bad.safetensors");

    let mut missing = good.clone();
    missing.tensors.remove("rr.fm.bn.running_var");
    missing.write(&path).unwrap();
    let e = checkpoint::load(&net, &path).unwrap_err().to_string();
    assert!(
        e.contains("rr.fm.bn.running_var") && e.contains("[128]"),
        "{e}"
    );

    let mut extra = good.clone();
    extra.insert("pr.unknown.weight", vec![2], vec![1.0, 2.0]);
    extra.write(&path).unwrap();
    let e = checkpoint::load(&net, &path).unwrap_err().to_string();
    assert!(
        e.contains("pr.unknown.weight") && e.contains("unexpected"),
        "{e}"
    );

    let mut shaped = good.clone();
    shaped.insert("pr.proj.weight", vec![256, 40], vec![0.0; 256 * 40]);
    shaped.write(&path).unwrap();
    match checkpoint::load(&net, &path).unwrap_err() {
        Error::Shape {
            key,
            expected,
            found,
        } => {
            assert_eq!(key, "pr.proj.weight");
            assert_eq!(expected, vec![256, 40, 1, 1]);
            assert_eq!(found, vec![256, 40]);
        }
        other => panic!("expected a shape error, got {other}"),
    }
    std::fs::remove_file(path).ok();
}

/// Values no network can run with: a NaN or infinite weight and a negative running variance
/// are refused at load, naming the key (they would make every score NaN).
#[test]
fn non_finite_weights_and_negative_variances_are_refused() {
    let net = tiny(1);
    let good = checkpoint::state_dict(&net).unwrap();
    let path = tmp("values.safetensors");
    for (key, at, value, says) in [
        (
            "pr.proj.weight",
            7,
            f32::NAN,
            "1 of 10240 values are not finite",
        ),
        ("rr.fm.bn.bias", 0, f32::INFINITY, "not finite"),
        (
            "rr.fm.bn.running_var",
            3,
            -0.5,
            "running variance is negative (-0.5)",
        ),
    ] {
        let mut bad = good.clone();
        let a = bad.tensors.get_mut(key).unwrap();
        a.data[at] = value;
        bad.write(&path).unwrap();
        let e = checkpoint::load(&net, &path).unwrap_err().to_string();
        assert!(e.contains(key) && e.contains(says), "{e}");
    }
    // The untouched file still loads (the checks reject only the bad values).
    good.write(&path).unwrap();
    checkpoint::load(&net, &path).unwrap();
    std::fs::remove_file(path).ok();
}

/// A file saved from another configuration than the model built (a flag overrode the
/// file's): the error names both.
#[test]
fn another_models_file_names_both_configurations() {
    let saved = tiny(1);
    let path = tmp("other-config.safetensors");
    checkpoint::save(&saved, &path).unwrap();
    let cfg = Config {
        n: 4,
        ..Config::preset("tiny").unwrap()
    };
    let net = PrrNet::new(&cfg, Box::new(CpuBackend::new()), 2, false).unwrap();
    let e = checkpoint::load(&net, &path).unwrap_err().to_string();
    assert!(
        e.contains("pr.rel.conv2.weight")
            && e.contains("saved from preset tiny with n = 5, G = 1")
            && e.contains("preset tiny with n = 4, G = 1 was asked for"),
        "{e}"
    );
    std::fs::remove_file(path).ok();
}

#[test]
fn broken_files_are_errors_not_panics() {
    let net = tiny(1);
    let path = tmp("broken.safetensors");
    checkpoint::save(&net, &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    for cut in [0, 4, 8, 100, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let e = checkpoint::load(&net, &path).unwrap_err();
        assert!(e.to_string().contains("safetensors"), "cut {cut}: {e}");
    }
    std::fs::write(&path, b"this is not a checkpoint at all, just text").unwrap();
    assert!(checkpoint::load(&net, &path).is_err());
    let e = checkpoint::load(&net, &tmp("does-not-exist")).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    std::fs::remove_file(path).ok();
}

#[test]
fn timm_backbone_import() {
    let src = tiny(7);
    let sd = checkpoint::state_dict(&src).unwrap();
    // A timm-style file: unprefixed backbone keys, plus classification-head keys and
    // num_batches_tracked, which the import ignores.
    let mut timm = TensorFile::default();
    for (k, a) in &sd.tensors {
        if let Some(rest) = k.strip_prefix("backbone.") {
            timm.insert(rest, a.shape.clone(), a.data.clone());
        }
    }
    timm.insert("bn1.num_batches_tracked", vec![1], vec![3.0]);
    timm.insert("incre_modules.0.0.conv1.weight", vec![2, 2], vec![0.0; 4]);
    timm.insert("classifier.weight", vec![10, 4], vec![0.0; 40]);
    timm.insert("final_layer.0.weight", vec![3], vec![0.0; 3]);
    let path = tmp("timm.safetensors");
    timm.write(&path).unwrap();
    let dst = tiny(8);
    checkpoint::import_timm(&dst, &path).unwrap();
    for e in dst.entries() {
        let same =
            dst.read(e.tensor).unwrap() == src.read(src.entry(&e.name).unwrap().tensor).unwrap();
        if e.name.starts_with("backbone.") {
            assert!(same, "{} not imported", e.name);
        } else if matches!(
            e.kind,
            ParamKind::ConvWeight { .. } | ParamKind::LinearWeight { .. }
        ) {
            // Randomly initialised head weights stay the destination's own.
            assert!(!same, "{} was overwritten", e.name);
        }
    }
    // A head key that is not part of timm's classification head is still an error.
    timm.insert("something.else", vec![1], vec![0.0]);
    timm.write(&path).unwrap();
    let e = checkpoint::import_timm(&dst, &path)
        .unwrap_err()
        .to_string();
    assert!(e.contains("something.else"), "{e}");
    std::fs::remove_file(path).ok();
}

#[test]
fn config_validation() {
    let mut c = Config::preset("tiny").unwrap();
    c.groups = 3;
    assert!(c.validate().unwrap_err().to_string().contains("divide"));
    assert!(Config::preset("w31").is_err());
    let w = Config::preset("w30").unwrap();
    assert_eq!(w.branch_sides(), [75, 38, 19, 10]);
    assert_eq!(w.arch().c_in(), 450);
}
