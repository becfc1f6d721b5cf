//! Shared test helpers: random data, tensors on the CPU backend, and a central-difference
//! gradient checker for backend operations.
#![allow(dead_code)]

use prrnet::backend::cpu::CpuBackend;
use prrnet::rng::Rng;
use prrnet::tensor::Tensor;
use prrnet::Backend;

/// Random values in roughly N(0, scale²) (never all zero).
pub fn randn(rng: &mut Rng, len: usize, scale: f64) -> Vec<f32> {
    rng.vec(len, |r| r.normal() * scale)
}

pub fn uniform(rng: &mut Rng, len: usize, lo: f64, hi: f64) -> Vec<f32> {
    rng.vec(len, |r| r.range(lo, hi))
}

pub fn put(be: &mut CpuBackend, data: &[f32]) -> Tensor {
    let id = be.alloc(data.len()).unwrap();
    let t = Tensor::new(id, 0, data.len());
    be.upload(t, data).unwrap();
    t
}

pub fn get(be: &CpuBackend, t: Tensor) -> Vec<f32> {
    let mut v = vec![0.0; t.len];
    be.download(t, &mut v).unwrap();
    v
}

/// ‖a − b‖ / max(‖b‖, tiny), accumulated in f64.
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let (mut num, mut den) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        num += (*x as f64 - *y as f64).powi(2);
        den += (*y as f64).powi(2);
    }
    num.sqrt() / den.sqrt().max(1e-30)
}

pub fn rel_l2_f64(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    num.sqrt() / den.sqrt().max(1e-30)
}

pub type Fwd<'a> = dyn Fn(&CpuBackend, &[Tensor], Tensor) + 'a;
pub type Bwd<'a> = dyn Fn(&CpuBackend, &[Tensor], Tensor, Tensor, &[Tensor]) + 'a;

/// Central-difference check of an operation's backward.
///
/// `fwd(be, inputs, out)` computes the output; `bwd(be, inputs, out, dout, dinputs)` must ADD
/// the input gradients into `dinputs`. The scalar is `L = Σ_k r_k·out_k` with random `r`
/// (accumulated in f64). Input gradients start from random values to verify the `+=`
/// contract. For each input index in `check`, up to `samples` coordinates are perturbed by
/// `±h`; the numeric and analytic gradients must agree to `tol` (relative L2 over the sampled
/// coordinates). Returns the worst relative error.
#[allow(clippy::too_many_arguments)]
pub fn grad_check(
    name: &str,
    inputs: &[Vec<f32>],
    out_len: usize,
    fwd: &Fwd,
    bwd: &Bwd,
    check: &[usize],
    samples: usize,
    h: f32,
    tol: f64,
) -> f64 {
    let mut rng = Rng::new(0xC0FFEE ^ out_len as u64);
    let mut be = CpuBackend::new();
    let ins: Vec<Tensor> = inputs.iter().map(|d| put(&mut be, d)).collect();
    let out = put(&mut be, &vec![f32::NAN; out_len]);
    let r = randn(&mut rng, out_len, 1.0);
    let dout = put(&mut be, &r);
    let init: Vec<Vec<f32>> = inputs
        .iter()
        .map(|d| randn(&mut rng, d.len(), 1.0))
        .collect();
    let dins: Vec<Tensor> = init.iter().map(|d| put(&mut be, d)).collect();

    let loss = |be: &CpuBackend| -> f64 {
        fwd(be, &ins, out);
        get(be, out)
            .iter()
            .zip(&r)
            .map(|(o, r)| *o as f64 * *r as f64)
            .sum()
    };
    // Analytic gradients (after a forward, as in the model).
    loss(&be);
    bwd(&be, &ins, out, dout, &dins);
    let mut worst = 0f64;
    for &i in check {
        let ana_full: Vec<f32> = get(&be, dins[i])
            .iter()
            .zip(&init[i])
            .map(|(g, c)| g - c)
            .collect();
        let len = inputs[i].len();
        let coords: Vec<usize> = if len <= samples {
            (0..len).collect()
        } else {
            (0..samples).map(|_| rng.below(len)).collect()
        };
        let mut num = Vec::new();
        let mut ana = Vec::new();
        let mut x = inputs[i].clone();
        for &k in &coords {
            let orig = x[k];
            x[k] = orig + h;
            be.upload(ins[i], &x).unwrap();
            let lp = loss(&be);
            x[k] = orig - h;
            be.upload(ins[i], &x).unwrap();
            let lm = loss(&be);
            x[k] = orig;
            be.upload(ins[i], &x).unwrap();
            num.push((lp - lm) / (2.0 * h as f64));
            ana.push(ana_full[k] as f64);
        }
        let err = rel_l2_f64(&ana, &num);
        assert!(
            err <= tol,
            "{name}: input {i}: relative error {err:.3e} > {tol:.1e}\n  analytic {:?}\n  numeric  {:?}",
            &ana[..ana.len().min(8)],
            &num[..num.len().min(8)]
        );
        eprintln!("{name}: input {i}: rel err {err:.2e}");
        worst = worst.max(err);
    }
    worst
}
