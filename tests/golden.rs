//! Golden parity with the PyTorch reference (`reference/make_golden.py`): the committed `tiny`
//! cases in eval and train mode — every output, the losses, every parameter gradient, the input
//! gradient, and (train) the updated BatchNorm running statistics. Outputs must agree to a
//! relative L2 error of 1e-4, gradients to 1e-3.
//!
//! A W30 eval-mode check runs when PyTorch is available (`PRRNET_TORCH_PYTHON`, or the
//! project's `.torch-venv`): the golden is generated at test time, never committed.

mod common;

use std::path::{Path, PathBuf};

use common::rel_l2;
use prrnet::backend::cpu::CpuBackend;
use prrnet::io::dump::{self, DumpOptions};
use prrnet::io::tensors::TensorFile;

const OUT_TOL: f64 = 1e-4;
const GRAD_TOL: f64 = 1e-3;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Run our dump on a golden case's weights and inputs; compare with PyTorch's file.
fn compare(dir: &Path, case: &str, mode: &str) {
    compare_with(dir, case, mode, GRAD_TOL, &[])
}

fn compare_with(dir: &Path, case: &str, mode: &str, grad_tol: f64, skip: &[&str]) {
    let wpath = dir.join(format!("{case}_weights.safetensors"));
    let weights = TensorFile::read(&wpath).unwrap();
    let input = TensorFile::read(&dir.join(format!("{case}_input.safetensors"))).unwrap();
    let want = TensorFile::read(&dir.join(format!("{case}_out_{mode}.safetensors"))).unwrap();
    let cfg = dump::resolve_config(&weights, None, None, None, None).unwrap();
    let out = std::env::temp_dir().join(format!(
        "prrnet-golden-{case}-{mode}-{}.safetensors",
        std::process::id()
    ));
    dump::run(
        Box::new(CpuBackend::new()),
        &cfg,
        &weights,
        &wpath,
        &input,
        &out,
        &DumpOptions {
            train: mode == "train",
            grads: true,
        },
    )
    .unwrap();
    let got = TensorFile::read(&out).unwrap();
    std::fs::remove_file(&out).ok();
    let mut failures = Vec::new();
    let mut compared = 0;
    for (name, w) in want
        .tensors
        .iter()
        .filter(|(n, _)| !skip.contains(&n.as_str()))
    {
        let Some(g) = got.get(name) else {
            failures.push(format!("{name}: missing from our dump"));
            continue;
        };
        if g.shape != w.shape {
            failures.push(format!("{name}: shape {:?} vs {:?}", g.shape, w.shape));
            continue;
        }
        let tol = if name.starts_with("grad.") {
            grad_tol
        } else {
            OUT_TOL
        };
        compared += 1;
        // A gradient that is zero in exact arithmetic (a bias followed by train-mode BatchNorm)
        // is f32 rounding noise on both sides: then both must be noise-sized.
        let norm = |d: &[f32]| d.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        if name.starts_with("grad.") && norm(&w.data) < 1e-5 {
            if norm(&g.data) >= 1e-5 {
                failures.push(format!(
                    "{name}: ‖ours‖ = {:.2e} where PyTorch's is noise",
                    norm(&g.data)
                ));
            }
            continue;
        }
        let err = rel_l2(&g.data, &w.data);
        if err > tol || !err.is_finite() {
            failures.push(format!("{name}: relative L2 error {err:.3e} > {tol:.0e}"));
        }
    }
    assert!(
        compared > 100,
        "{case}/{mode}: only {compared} tensors compared"
    );
    assert!(
        failures.is_empty(),
        "{case}/{mode}: {} of {} tensors differ:\n  {}",
        failures.len(),
        want.tensors.len(),
        failures.join("\n  ")
    );
}

#[test]
fn tiny64_eval() {
    compare(&golden_dir(), "tiny64", "eval");
}

#[test]
fn tiny64_train() {
    compare(&golden_dir(), "tiny64", "train");
}

#[test]
fn tiny50_odd_sizes_eval() {
    compare(&golden_dir(), "tiny50", "eval");
}

#[test]
fn tiny50_odd_sizes_train() {
    compare(&golden_dir(), "tiny50", "train");
}

fn torch_python() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("PRRNET_TORCH_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".torch-venv/bin/python");
    venv.exists().then_some(venv)
}

#[test]
fn w30_eval_against_pytorch_when_available() {
    let Some(py) = torch_python() else {
        eprintln!(
            "SKIPPED w30 golden: PyTorch not found (set PRRNET_TORCH_PYTHON or create .torch-venv, see reference/README.md)"
        );
        return;
    };
    let dir = std::env::temp_dir().join(format!("prrnet-w30-golden-{}", std::process::id()));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("reference/make_golden.py");
    let status = std::process::Command::new(&py)
        .arg(&script)
        .args([
            "--preset", "w30", "--size", "299", "--batch", "1", "--mode", "eval",
        ])
        .args([
            "--n", "5", "--groups", "1", "--seed", "0", "--name", "w30", "--out",
        ])
        .arg(&dir)
        .status()
        .expect("run make_golden.py");
    assert!(status.success(), "make_golden.py failed");
    // Outputs at 1e-4 as for `tiny`. The backbone gradients of W30 are ill-conditioned in f32:
    // measured on this golden, PyTorch's own f32 gradients differ from its f64 ones by up to
    // 6.3e-3 (grad.image) and ours by up to 1.1e-2, so gradients get a 3e-2 bound here. The
    // largest differences in stage4 come from one ReLU of the last fuse output whose input is a
    // cancelling sum at f32 rounding level (f64: 5.4e-5; PyTorch f32: 2.4e-7; ours: 0): the
    // sign is a coin flip in f32, and that pixel carries 0.7% of the gradient of x0.
    // `score` is skipped: with a saturated sigmoid its relative error is the logit's absolute
    // error, and `logit` itself is compared at 1e-4.
    compare_with(&dir, "w30", "eval", 3e-2, &["score"]);
    std::fs::remove_dir_all(&dir).ok();
}
