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

/// A fresh, empty temporary folder `prrnet-<tag>-<pid>`.
pub fn tmp_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("prrnet-{tag}-{}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A randomly initialised `tiny` checkpoint written to `dir/tiny.safetensors`.
pub fn tiny_checkpoint(dir: &std::path::Path, seed: u64) -> std::path::PathBuf {
    let cfg = prrnet::Config::preset("tiny").unwrap();
    let mut net = prrnet::model::PrrNet::new(&cfg, Box::new(CpuBackend::new()), 1, false).unwrap();
    net.init_weights(seed).unwrap();
    let p = dir.join("tiny.safetensors");
    prrnet::io::checkpoint::save(&net, &p).unwrap();
    p
}

/// A deterministic pseudo-random value in 0..256 for pixel (x, y, c) of image `seed`: a smooth
/// gradient plus noise, so images differ in content and in statistics.
pub fn noise(seed: u32, x: u32, y: u32, c: u32) -> u8 {
    let mut h = seed
        .wrapping_mul(0x9E37_79B9)
        .wrapping_add(x.wrapping_mul(0x85EB_CA6B))
        .wrapping_add(y.wrapping_mul(0xC2B2_AE35))
        .wrapping_add(c.wrapping_mul(0x27D4_EB2F));
    h ^= h >> 15;
    h = h.wrapping_mul(0x2C1B_3C6D);
    h ^= h >> 12;
    let base = (x * 255 / 97 + y * 255 / 131 + seed * 37) % 256;
    ((base + (h & 0x7F)) % 256) as u8
}

/// An 8-bit RGB image of [`noise`].
pub fn rgb_image(seed: u32, w: u32, h: u32) -> image::DynamicImage {
    image::DynamicImage::ImageRgb8(image::ImageBuffer::from_fn(w, h, |x, y| {
        image::Rgb([
            noise(seed, x, y, 0),
            noise(seed, x, y, 1),
            noise(seed, x, y, 2),
        ])
    }))
}

/// Random weights (seed) plus BatchNorm affine parameters and running statistics far from their
/// defaults (γ = 1, β = 0, μ = 0, σ² = 1), so that BatchNorm folding changes every weight.
pub fn randomise_with_bn(net: &mut prrnet::model::PrrNet, seed: u64) {
    use prrnet::model::layers::ParamKind;
    net.init_weights(seed).unwrap();
    let mut rng = Rng::new(seed + 1);
    for e in net.entries().to_vec() {
        let n = e.tensor.len;
        let v = match e.kind {
            ParamKind::BnWeight => rng.vec(n, |r| r.range(0.5, 1.5)),
            ParamKind::BnBias => rng.vec(n, |r| 0.2 * r.normal()),
            ParamKind::RunningMean => rng.vec(n, |r| 0.3 * r.normal()),
            ParamKind::RunningVar => rng.vec(n, |r| r.range(0.3, 3.0)),
            _ => continue,
        };
        net.write(e.tensor, &v).unwrap();
    }
}

/// Copy every parameter and running statistic between two networks of the same configuration.
pub fn copy_params(from: &prrnet::model::PrrNet, to: &prrnet::model::PrrNet) {
    for (a, b) in from.entries().iter().zip(to.entries()) {
        assert_eq!(a.name, b.name);
        to.write(b.tensor, &from.read(a.tensor).unwrap()).unwrap();
    }
}

/// Open GPU 0, or explain why the calling test is skipped; under `PRRNET_REQUIRE_GPU=1` a
/// missing GPU fails the test instead.
pub fn open_gpu(test: &str) -> Option<Box<dyn Backend>> {
    let require = std::env::var("PRRNET_REQUIRE_GPU").is_ok_and(|v| v == "1");
    match prrnet::backend::cuda::open(0) {
        Ok(be) => Some(be),
        Err(e) if require => panic!("{test}: PRRNET_REQUIRE_GPU=1 but no usable GPU: {e}"),
        Err(e) => {
            eprintln!("SKIP {test}: no usable GPU ({e}); set PRRNET_REQUIRE_GPU=1 to fail instead");
            None
        }
    }
}
