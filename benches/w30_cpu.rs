//! W30 at 299×299, batch 4, on the CPU: inference (eval mode) and a training step, with
//! PyTorch's eager reference (`reference/bench.py`) measured in the same run when PyTorch is
//! available (`PRRNET_TORCH_PYTHON` or `.torch-venv`). `cargo bench --bench w30_cpu`.
//! Set `PRRNET_BENCH_QUICK=1` for a smaller run (tiny preset).

use std::path::{Path, PathBuf};

use prrnet::backend::cpu::CpuBackend;
use prrnet::bench::{run, BenchOptions};
use prrnet::Config;

fn torch_python() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("PRRNET_TORCH_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".torch-venv/bin/python");
    venv.exists().then_some(venv)
}

fn main() {
    // `cargo test --benches` runs bench targets with `--bench` absent: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let quick = std::env::var("PRRNET_BENCH_QUICK").is_ok();
    let (preset, batch, iters) = if quick {
        ("tiny", 16, 5)
    } else {
        ("w30", 4, 3)
    };
    let cfg = Config::preset(preset).unwrap();
    for train in [false, true] {
        let r = run(
            Box::new(CpuBackend::new()),
            &BenchOptions {
                cfg: cfg.clone(),
                batch,
                train,
                iters,
                warmup: 1,
                precision: "fp32".into(),
                breakdown: false,
                profile_window: None,
                graph: true,
            },
        )
        .expect("benchmark");
        println!("{}", serde_json::to_string(&r).unwrap());
        if let Some(py) = torch_python() {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("reference/bench.py");
            let out = std::process::Command::new(py)
                .arg(script)
                .args(["--device", "cpu", "--preset", preset, "--size"])
                .arg(cfg.size.to_string())
                .args(["--batch", &batch.to_string(), "--iters", &iters.to_string()])
                .args(["--warmup", "1", "--json", "--mode"])
                .arg(if train { "train" } else { "infer" })
                .output();
            match out {
                Ok(o) => print!("{}", String::from_utf8_lossy(&o.stdout)),
                Err(e) => eprintln!("reference/bench.py failed: {e}"),
            }
        } else {
            eprintln!("PyTorch not found: the reference is not measured in this run");
        }
    }
}
