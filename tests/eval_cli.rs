//! `prrnet eval` on a small labelled folder dataset: metrics JSON with every field, the ROC and
//! score-histogram plots, and a corrupt file reported and skipped; NaN scores and a dataset of
//! unreadable files are errors.

use std::path::Path;
use std::process::{Command, Output};

use prrnet::backend::cpu::CpuBackend;
use prrnet::data::{procedural, sbi};
use prrnet::io::checkpoint;
use prrnet::model::PrrNet;
use prrnet::rng::Rng;
use prrnet::Config;

fn save_rgb(path: &Path, rgb: &[f32], s: usize) {
    let bytes: Vec<u8> = rgb.iter().map(|v| (v * 255.0).round() as u8).collect();
    image::RgbImage::from_raw(s as u32, s as u32, bytes)
        .unwrap()
        .save(path)
        .unwrap();
}

/// The `tiny` network with seeded weights.
fn tiny_net() -> PrrNet {
    let mut net = PrrNet::new(
        &Config::preset("tiny").unwrap(),
        Box::new(CpuBackend::new()),
        4,
        false,
    )
    .unwrap();
    net.init_weights(1).unwrap();
    net
}

/// `prrnet eval` on the CPU, batch 4, without `--out`.
fn eval_cmd(weights: &Path, data: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_prrnet"));
    c.args(["eval", "--device", "cpu", "--batch", "4", "--weights"])
        .arg(weights)
        .arg("--data")
        .arg(data);
    c
}

/// `prrnet eval` on the CPU, batch 4, into `out`.
fn run_eval(weights: &Path, data: &Path, out: &Path) -> Output {
    eval_cmd(weights, data)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

#[test]
fn eval_writes_metrics_and_plots() {
    let dir = std::env::temp_dir().join(format!("prrnet-eval-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    let s = 64;
    let mut rng = Rng::new(4);
    for k in 0..6 {
        let video = format!("v{k}");
        for d in ["real", "fake", "masks"] {
            std::fs::create_dir_all(dir.join("data").join(d).join(&video)).unwrap();
        }
        let scene = procedural::scene(&mut rng, s);
        save_rgb(&dir.join(format!("data/real/{video}/0.png")), &scene, s);
        let (fake, mask) = sbi::self_blend(&scene, s, &mut rng, &sbi::SbiParams::builtin());
        save_rgb(&dir.join(format!("data/fake/{video}/0.png")), &fake, s);
        let m: Vec<u8> = mask.iter().map(|v| (v * 255.0).round() as u8).collect();
        image::GrayImage::from_raw(s as u32, s as u32, m)
            .unwrap()
            .save(dir.join(format!("data/masks/{video}/0.png")))
            .unwrap();
    }
    std::fs::write(dir.join("data/real/v0/broken.png"), b"not a png").unwrap();
    let net = tiny_net();
    let w = dir.join("w.safetensors");
    checkpoint::save(&net, &w).unwrap();
    let o = run_eval(&w, &dir.join("data"), &dir.join("out"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_eq!(
        err.matches("broken.png").count(),
        1,
        "corrupt file not reported exactly once: {err}"
    );
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("out/metrics.json")).unwrap()).unwrap();
    for k in [
        "accuracy",
        "auc",
        "average_precision",
        "eer",
        "video_auc",
        "pixel_auc",
        "iou",
    ] {
        assert!(m.get(k).is_some(), "{k} missing in {m}");
    }
    assert_eq!(m["samples"], 12);
    assert_eq!(m["precision"], "fp32");
    assert!(m["auc"].as_f64().unwrap().is_finite());
    assert_eq!(m["skipped_files"].as_array().unwrap().len(), 1);
    for f in ["roc.png", "scores.png"] {
        let img = image::open(dir.join("out").join(f)).unwrap();
        assert!(img.width() > 100 && img.height() > 100);
    }

    // Without --out: `eval`, then `eval-2`, so a second evaluation keeps the first's results.
    for folder in ["eval", "eval-2"] {
        let o = eval_cmd(Path::new("w.safetensors"), Path::new("data"))
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let again: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(folder).join("metrics.json")).unwrap())
                .unwrap();
        assert_eq!(again["auc"], m["auc"]);
    }

    // Finite weights so large that every score overflows to NaN: an error, no metrics written.
    for key in ["rr.cls.fc1.weight", "rr.cls.fc2.weight"] {
        let mut data = net.read(net.entry(key).unwrap().tensor).unwrap();
        for (i, v) in data.iter_mut().enumerate() {
            *v = if i % 2 == 0 { 3e38 } else { -3e38 };
        }
        net.write(net.entry(key).unwrap().tensor, &data).unwrap();
    }
    let huge = dir.join("huge.safetensors");
    checkpoint::save(&net, &huge).unwrap();
    let o = run_eval(&huge, &dir.join("data"), &dir.join("out-nan"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("12 of 12 scores are not finite"), "{err}");
    assert!(!dir.join("out-nan/metrics.json").exists());
    std::fs::remove_dir_all(&dir).ok();
}

/// A dataset whose every file is unreadable: an error that says so, not metrics of nothing.
#[test]
fn eval_of_only_unreadable_files_fails() {
    let dir = std::env::temp_dir().join(format!("prrnet-eval-none-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    for (folder, name) in [("real/v0", "a.png"), ("fake/v1", "b.jpg")] {
        std::fs::create_dir_all(dir.join("data").join(folder)).unwrap();
        std::fs::write(dir.join("data").join(folder).join(name), b"not an image").unwrap();
    }
    let w = dir.join("w.safetensors");
    checkpoint::save(&tiny_net(), &w).unwrap();
    let o = run_eval(&w, &dir.join("data"), &dir.join("out"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("none of its 2 samples could be read"), "{err}");
    assert!(!dir.join("out/metrics.json").exists());
    std::fs::remove_dir_all(&dir).ok();
}
