//! Criterion benchmarks of the CPU backend's operations at W30 sizes (batch 1), so CPU
//! regressions show: `cargo bench --bench cpu_ops`.

use criterion::{criterion_group, criterion_main, Criterion};
use prrnet::backend::cpu::CpuBackend;
use prrnet::backend::*;
use prrnet::rng::Rng;
use prrnet::tensor::Tensor;

fn put(be: &mut CpuBackend, len: usize, rng: &mut Rng) -> Tensor {
    let id = be.alloc(len).unwrap();
    let t = Tensor::new(id, 0, len);
    be.upload(t, &rng.vec(len, |r| r.normal())).unwrap();
    t
}

fn conv(c: &mut Criterion) {
    let mut rng = Rng::new(1);
    let mut be = CpuBackend::new();
    // A stage-2 BasicBlock convolution of branch 0 (75×75×30), the deeper branches' at the
    // training benchmark's batch of 4 (few rows per weight: the weight gradient's hard case),
    // stage 2's first convolution (layer1's 256 channels into branch 0's 30) and a stem
    // convolutions; the relation module's.
    for (name, s) in [
        (
            "conv3x3 75x75x30",
            ConvShape::new(1, 75, 75, 30, 30, 3, 1, 1),
        ),
        (
            "conv3x3 75x75x30 batch 4",
            ConvShape::new(4, 75, 75, 30, 30, 3, 1, 1),
        ),
        (
            "conv3x3 38x38x60 batch 4",
            ConvShape::new(4, 38, 38, 60, 60, 3, 1, 1),
        ),
        (
            "conv3x3 19x19x120 batch 4",
            ConvShape::new(4, 19, 19, 120, 120, 3, 1, 1),
        ),
        (
            "conv3x3 10x10x240 batch 4",
            ConvShape::new(4, 10, 10, 240, 240, 3, 1, 1),
        ),
        (
            "conv3x3 75x75x256->30",
            ConvShape::new(1, 75, 75, 256, 30, 3, 1, 1),
        ),
        (
            "conv3x3 s2 299x299x3->64",
            ConvShape::new(1, 299, 299, 3, 64, 3, 2, 1),
        ),
        (
            "conv3x3 s2 150x150x64",
            ConvShape::new(1, 150, 150, 64, 64, 3, 2, 1),
        ),
        (
            "conv1x1 75x75x256->64",
            ConvShape::new(1, 75, 75, 256, 64, 1, 1, 0),
        ),
        // The relation module's two convolutions over every pixel's n×n bin map (n = 5).
        (
            "rel.conv1 5x5x1->32 x5625",
            ConvShape::new(75 * 75, 5, 5, 1, 32, 3, 1, 0),
        ),
        (
            "rel.conv2 3x3x32->64 x5625",
            ConvShape::new(75 * 75, 3, 3, 32, 64, 3, 1, 0),
        ),
    ] {
        let x = put(&mut be, s.x_len(), &mut rng);
        let w = put(&mut be, s.w_len(), &mut rng);
        let y = put(&mut be, s.y_len(), &mut rng);
        let dx = put(&mut be, s.x_len(), &mut rng);
        let dw = put(&mut be, s.w_len(), &mut rng);
        c.bench_function(&format!("{name} fwd"), |b| {
            b.iter(|| be.conv2d(&s, x, w, None, y).unwrap())
        });
        if s.b == 4 && s.cin == 30 {
            // As the inference plan runs a BasicBlock's second convolution: BatchNorm folded
            // into a bias, the residual and ReLU after.
            let bias = put(&mut be, s.cout, &mut rng);
            let res = put(&mut be, s.y_len(), &mut rng);
            c.bench_function(&format!("{name} fwd + bias, residual, relu"), |b| {
                b.iter(|| {
                    be.conv2d_bias_act(&s, x, w, bias, Some(res), true, y)
                        .unwrap()
                })
            });
        }
        c.bench_function(&format!("{name} bwd"), |b| {
            b.iter(|| {
                be.conv2d_backward(&s, x, w, y, Some(dx), Some(dw), None)
                    .unwrap()
            })
        });
        if s.b == 4 {
            // Each gradient alone: they run different kernels (the data gradient is a
            // convolution like the forward; the weight gradient sums over pixels).
            c.bench_function(&format!("{name} bwd data"), |b| {
                b.iter(|| {
                    be.conv2d_backward(&s, x, w, y, Some(dx), None, None)
                        .unwrap()
                })
            });
            c.bench_function(&format!("{name} bwd weights"), |b| {
                b.iter(|| {
                    be.conv2d_backward(&s, x, w, y, None, Some(dw), None)
                        .unwrap()
                })
            });
        }
    }
}

fn norm_and_resample(c: &mut Criterion) {
    let mut rng = Rng::new(2);
    let mut be = CpuBackend::new();
    let (rows, ch) = (75 * 75, 30);
    let x = put(&mut be, rows * ch, &mut rng);
    let y = put(&mut be, rows * ch, &mut rng);
    let p: Vec<Tensor> = (0..6).map(|_| put(&mut be, ch, &mut rng)).collect();
    let t = BatchNormTensors {
        x,
        gamma: p[0],
        beta: p[1],
        running_mean: p[2],
        running_var: p[3],
        save_mean: p[4],
        save_rstd: p[5],
        residual: None,
        relu: true,
        y,
    };
    let s = NormShape {
        rows,
        c: ch,
        eps: 1e-5,
        momentum: 0.1,
        train: true,
    };
    c.bench_function("batchnorm train 75x75x30 fwd", |b| {
        b.iter(|| be.batchnorm(&s, &t).unwrap())
    });
    // The backward as a BasicBlock's second unit runs it: residual and ReLU, every gradient.
    let residual = put(&mut be, rows * ch, &mut rng);
    let tr = BatchNormTensors {
        residual: Some(residual),
        ..t
    };
    be.batchnorm(&s, &tr).unwrap();
    let d: Vec<Tensor> = (0..3).map(|_| put(&mut be, rows * ch, &mut rng)).collect();
    let dp: Vec<Tensor> = (0..2).map(|_| put(&mut be, ch, &mut rng)).collect();
    let g = BatchNormGrads {
        dy: d[0],
        dx: Some(d[1]),
        dgamma: Some(dp[0]),
        dbeta: Some(dp[1]),
        dresidual: Some(d[2]),
    };
    c.bench_function("batchnorm train 75x75x30 bwd (residual, relu)", |b| {
        b.iter(|| be.batchnorm_backward(&s, &tr, &g).unwrap())
    });
    let rs = ResizeShape {
        b: 1,
        c: 240,
        hi: 10,
        wi: 10,
        ho: 75,
        wo: 75,
    };
    let xs = put(&mut be, rs.x_len(), &mut rng);
    let ys = put(&mut be, rs.y_len(), &mut rng);
    c.bench_function("bilinear 10->75 x240", |b| {
        b.iter(|| be.resize_bilinear(&rs, xs, ys).unwrap())
    });
}

fn relation(c: &mut Criterion) {
    let mut rng = Rng::new(3);
    let mut be = CpuBackend::new();
    // One image at the paper's size: N = 75², C = 450, n = 5.
    let s = RelationShape {
        b: 1,
        h: 75,
        w: 75,
        c: 450,
        n: 5,
    };
    let np = s.pixels();
    let f = put(&mut be, np * s.c, &mut rng);
    let norms = put(&mut be, np, &mut rng);
    let lsum = put(&mut be, np, &mut rng);
    let p = put(&mut be, np * 25, &mut rng);
    let dp = put(&mut be, np * 25, &mut rng);
    let df = put(&mut be, np * s.c, &mut rng);
    let mut g = c.benchmark_group("relation 75x75x450");
    g.sample_size(10);
    g.bench_function("fwd", |b| {
        b.iter(|| be.relation(&s, f, norms, lsum, p).unwrap())
    });
    g.bench_function("bwd", |b| {
        b.iter(|| be.relation_backward(&s, f, norms, lsum, p, dp, df).unwrap())
    });
    g.finish();
}

criterion_group!(benches, conv, norm_and_resample, relation);
criterion_main!(benches);
