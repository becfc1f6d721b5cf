//! Whole-network parity GPU vs CPU: `tiny` and W30 at 299×299 (batch 2), outputs and every
//! gradient of one train-mode forward/backward, then the parameters after one Adam step.
//! f32 mode: outputs within 1e-4 (relative L2; the sigmoid outputs `score` and `mask` through
//! their logits), gradients within 1e-3 (`tiny`) or 3e-2 (W30, see
//! `w30_299_train_step_matches_cpu`), parameters after Adam within 1e-5 (relative L2).
//! Skips without a GPU; fails instead under `PRRNET_REQUIRE_GPU=1`.

mod common;

use prrnet::backend::cpu::CpuBackend;
use prrnet::model::{Batch, Mode, PrrNet};
use prrnet::rng::Rng;
use prrnet::{Backend, Config};

/// Whether `err` is within `tol` (NaN is not).
fn within(err: f64, tol: f64) -> bool {
    err <= tol
}

fn run(test: &str, cfg: Config, b: usize, grad_tol: f64) {
    let Some(gpu) = common::open_gpu(test) else {
        return;
    };
    let s = cfg.size;
    let mut rng = Rng::new(11);
    let image = rng.vec(b * 3 * s * s, |r| r.normal());
    let mask: Vec<f32> = (0..b * s * s)
        .map(|i| {
            if (i / (s * s)) % 2 == 1 && (i % s) > s / 3 {
                0.9
            } else {
                0.0
            }
        })
        .collect();
    let label: Vec<f32> = (0..b).map(|i| (i % 2) as f32).collect();
    let mut nets = Vec::new();
    for be in [Box::new(CpuBackend::new()) as Box<dyn Backend>, gpu] {
        let mut net = PrrNet::new(&cfg, be, b, true).unwrap();
        net.init_weights(5).unwrap();
        net.set_input(&Batch {
            image: &image,
            mask: Some(&mask),
            label: Some(&label),
            mask_weight: None,
        })
        .unwrap();
        net.forward(Mode::TRAIN).unwrap();
        net.backward(Mode::TRAIN, true).unwrap();
        nets.push(net);
    }
    let (cpu, gpu) = (&nets[0], &nets[1]);
    let mut failures = Vec::new();
    for ((name, _, c), (_, _, g)) in cpu
        .dump_outputs()
        .unwrap()
        .iter()
        .zip(gpu.dump_outputs().unwrap())
    {
        // `score` and `mask` are sigmoids of `logit` and `mask_logit`, which are compared
        // here (as in tests/golden.rs); the sigmoid op itself has its parity test in
        // tests/gpu_parity.rs. The sigmoid turns a logit's *absolute* error into the
        // probability's error, and at W30's initialisation the mask logits are large, so f32
        // rounding alone moves probabilities near z = 0: under cuda-emu (2026-11-27) mask
        // differed by 1.17e-4 relative L2 and 6e-3 at most, while mask_logit agreed within 1e-4.
        let err = common::rel_l2(&g, c);
        let max_abs = g
            .iter()
            .zip(c.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        let rms = (c.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / c.len() as f64).sqrt();
        eprintln!("{name}: relative L2 {err:.2e}, max |gpu − cpu| {max_abs:.2e}, rms {rms:.2e}");
        if name == "score" || name == "mask" {
            continue;
        }
        if !within(err, 1e-4) {
            failures.push(format!("{name}: {err:.2e}"));
        }
    }
    for e in cpu.entries() {
        let (c, g) = if e.trainable {
            (
                cpu.read(cpu.grad_of(e.tensor).unwrap()).unwrap(),
                gpu.read(gpu.grad_of(e.tensor).unwrap()).unwrap(),
            )
        } else {
            (cpu.read(e.tensor).unwrap(), gpu.read(e.tensor).unwrap())
        };
        let norm: f64 = c.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        if norm < 1e-5 {
            continue; // analytically zero (bias before train-mode BatchNorm)
        }
        let err = common::rel_l2(&g, &c);
        let tol = if e.trainable { grad_tol } else { 1e-3 };
        if !within(err, tol) {
            failures.push(format!("grad/state {}: {err:.2e}", e.name));
        }
    }
    let err = common::rel_l2(&gpu.input_grad().unwrap(), &cpu.input_grad().unwrap());
    if !within(err, grad_tol) {
        failures.push(format!("grad.image: {err:.2e}"));
    }
    // One Adam step on both, from the same gradients: the GPU's are copied into the CPU net
    // first. (Adam's first step moves every parameter by about ±lr whatever its gradient's
    // size, so gradients that agree to f32 rounding but differ in sign where they are ~0 (a
    // bias before a train-mode BatchNorm, a zero-initialised BN bias) would make parameters
    // differ by O(lr); with equal inputs the two Adam implementations must agree closely.)
    for e in nets[0].entries().iter().filter(|e| e.trainable) {
        let gg = nets[1].read(nets[1].grad_of(e.tensor).unwrap()).unwrap();
        nets[0]
            .write(nets[0].grad_of(e.tensor).unwrap(), &gg)
            .unwrap();
    }
    for net in nets.iter_mut() {
        net.adam_step(1e-3, false).unwrap();
    }
    for e in nets[0].entries().iter().filter(|e| e.trainable) {
        let c = nets[0].read(e.tensor).unwrap();
        let g = nets[1].read(e.tensor).unwrap();
        let err = common::rel_l2(&g, &c);
        if !within(err, 1e-5) {
            failures.push(format!("param after Adam {}: {err:.2e}", e.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{test}: {} mismatches:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

#[test]
fn tiny_train_step_matches_cpu() {
    run(
        "tiny_train_step_matches_cpu",
        Config::preset("tiny").unwrap(),
        4,
        1e-3,
    );
}

#[test]
fn w30_299_train_step_matches_cpu() {
    run(
        "w30_299_train_step_matches_cpu",
        Config::preset("w30").unwrap(),
        2,
        // The backbone gradients of W30 are ill-conditioned in f32 (tests/golden.rs measures
        // PyTorch's own f32 gradients 6.3e-3 and ours 1.1e-2 away from f64 ones, mostly from a
        // ReLU whose input is a cancelling sum at rounding level), so two correct f32
        // implementations with different summation orders differ by that much too.
        3e-2,
    );
}
