//! The `prrnet` command line: the debug dump on the committed golden files, clear errors for
//! a missing GPU and bad files (never a panic), `info` and a small `bench`.

use std::path::Path;
use std::process::Command;

use prrnet::io::tensors::TensorFile;

fn prrnet() -> Command {
    Command::new(env!("CARGO_BIN_EXE_prrnet"))
}

fn golden(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
        .display()
        .to_string()
}

#[test]
fn forward_dump_writes_the_spec_tensors() {
    let out = std::env::temp_dir().join(format!("prrnet-cli-{}.safetensors", std::process::id()));
    let st = prrnet()
        .args([
            "forward",
            "--weights",
            &golden("tiny50_weights.safetensors"),
        ])
        .args(["--input", &golden("tiny50_input.safetensors"), "--out"])
        .arg(&out)
        .args(["--train", "--grads"])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let f = TensorFile::read(&out).unwrap();
    for name in [
        "features",
        "relation",
        "f_rel",
        "f_upd",
        "mask",
        "f_man",
        "f_ori",
        "logit",
        "score",
        "loss",
        "loss_loc",
        "loss_cls",
        "grad.image",
        "grad.pr.proj.weight",
        "state.rr.fm.bn.running_mean",
    ] {
        assert!(f.get(name).is_some(), "{name} missing");
    }
    assert_eq!(f.get("relation").unwrap().shape, vec![3, 169, 4, 4]);
    std::fs::remove_file(out).ok();
}

#[test]
fn errors_are_messages_not_panics() {
    // A file that is not safetensors.
    let bad =
        std::env::temp_dir().join(format!("prrnet-cli-bad-{}.safetensors", std::process::id()));
    std::fs::write(&bad, b"garbage").unwrap();
    let o = prrnet()
        .args(["forward", "--weights"])
        .arg(&bad)
        .args([
            "--input",
            &golden("tiny50_input.safetensors"),
            "--out",
            "/dev/null",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("error:") && !err.contains("panicked"),
        "{err}"
    );
    std::fs::remove_file(bad).ok();
    // Wrong preset for the weights: a key/shape error that names the key.
    let o = prrnet()
        .args([
            "forward",
            "--weights",
            &golden("tiny50_weights.safetensors"),
            "--preset",
            "w30",
        ])
        .args([
            "--input",
            &golden("tiny50_input.safetensors"),
            "--out",
            "/dev/null",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("backbone."), "{err}");
    // No GPU: `--device cuda` is a clear error (only checked where there is no GPU).
    if prrnet::backend::cuda::open(0).is_err() {
        let o = prrnet()
            .args([
                "bench", "--device", "cuda", "--preset", "tiny", "--iters", "1",
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains("error: device error"),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn info_and_bench_run_on_the_cpu() {
    let o = prrnet().arg("info").output().unwrap();
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("cpu:"));
    let o = prrnet()
        .args([
            "bench", "--device", "cpu", "--preset", "tiny", "--batch", "2",
        ])
        .args([
            "--iters",
            "2",
            "--warmup",
            "0",
            "--train",
            "--json",
            "--breakdown",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["impl"], "prrnet");
    assert_eq!(v["mode"], "train");
    assert!(v["images_per_s"].as_f64().unwrap() > 0.0);
    let stages = v["stages"].as_array().unwrap();
    assert!(stages.iter().any(|s| s[0] == "bwd.relation"));
}

/// `bench-relation` on the CPU with no precision flag times the fp32 reference (the default
/// there); a reduced precision is refused with a message.
#[test]
fn bench_relation_runs_on_the_cpu_by_default_in_fp32() {
    let small = [
        "bench-relation",
        "--device",
        "cpu",
        "--batch",
        "1",
        "--h",
        "12",
        "--w",
        "12",
        "--c",
        "16",
        "--iters",
        "1",
        "--warmup",
        "0",
    ];
    let o = prrnet().args(small).arg("--json").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(first["precision"], "fp32", "{out}");
    let o = prrnet()
        .args(small)
        .args(["--precision", "bf16"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("fp32 only"), "{err}");
}
