//! Every operation's backward against central finite differences on random inputs, including
//! the odd sizes of W30 at 299 (75 → 38 → 19 → 10), stride 2, and non-divisible adaptive bins.

mod common;

use common::*;
use prrnet::backend::*;
use prrnet::rng::Rng;

const H: f32 = 1e-2;
const TOL: f64 = 2e-3;

fn conv_case(name: &str, s: ConvShape, bias: bool, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut inputs = vec![
        randn(&mut rng, s.x_len(), 1.0),
        randn(&mut rng, s.w_len(), 0.3),
    ];
    if bias {
        inputs.push(randn(&mut rng, s.cout, 0.5));
    }
    let checks: Vec<usize> = (0..inputs.len()).collect();
    grad_check(
        name,
        &inputs,
        s.y_len(),
        &|be, i, out| be.conv2d(&s, i[0], i[1], i.get(2).copied(), out).unwrap(),
        &|be, i, _out, dy, d| {
            be.conv2d_backward(
                &s,
                i[0],
                i[1],
                dy,
                Some(d[0]),
                Some(d[1]),
                d.get(2).copied(),
            )
            .unwrap()
        },
        &checks,
        40,
        H,
        TOL,
    );
}

#[test]
fn conv3x3_same() {
    conv_case(
        "conv 3x3 s1",
        ConvShape::new(2, 7, 6, 3, 4, 3, 1, 1),
        false,
        1,
    );
}

/// Rows of 12 or more outputs: on AVX-512 and AVX2 machines the CPU backend's direct kernels
/// (`conv_direct`) take these shapes, forward and backward (the second with more input
/// channels than the direct backward's limit, which its few output channels lift).
#[test]
fn conv3x3_wide_rows() {
    conv_case(
        "conv 3x3 s1 wide",
        ConvShape::new(2, 3, 14, 3, 5, 3, 1, 1),
        false,
        7,
    );
    conv_case(
        "conv 3x3 s1 wide, 70 → 3 channels",
        ConvShape::new(1, 2, 12, 70, 3, 3, 1, 1),
        false,
        8,
    );
}

#[test]
fn conv3x3_stride2_odd() {
    // 75 → 38 style: odd input, stride 2, pad 1.
    conv_case(
        "conv 3x3 s2 odd",
        ConvShape::new(2, 9, 9, 3, 5, 3, 2, 1),
        false,
        2,
    );
    conv_case(
        "conv 3x3 s2 19→10",
        ConvShape::new(1, 19, 19, 2, 3, 3, 2, 1),
        false,
        3,
    );
}

#[test]
fn conv1x1_pointwise_and_valid_with_bias() {
    conv_case("conv 1x1", ConvShape::new(2, 5, 5, 6, 3, 1, 1, 0), true, 4);
    // The relation convolutions: valid 3×3 on 5×5 maps, then (n−2)×(n−2) to 1×1.
    conv_case(
        "conv valid 3x3",
        ConvShape::new(6, 5, 5, 1, 4, 3, 1, 0),
        true,
        5,
    );
    conv_case(
        "conv valid k=n-2",
        ConvShape::new(6, 3, 3, 4, 5, 3, 1, 0),
        true,
        6,
    );
}

#[test]
fn linear() {
    let (m, k, n) = (7, 5, 4);
    let mut rng = Rng::new(7);
    let inputs = vec![
        randn(&mut rng, m * k, 1.0),
        randn(&mut rng, n * k, 0.5),
        randn(&mut rng, n, 0.5),
    ];
    grad_check(
        "linear",
        &inputs,
        m * n,
        &|be, i, out| be.linear(m, k, n, i[0], i[1], Some(i[2]), out).unwrap(),
        &|be, i, _o, dy, d| {
            be.linear_backward(m, k, n, i[0], i[1], dy, Some(d[0]), Some(d[1]), Some(d[2]))
                .unwrap()
        },
        &[0, 1, 2],
        60,
        H,
        TOL,
    );
}

fn bn_case(train: bool, residual: bool, relu: bool, seed: u64) {
    let (rows, c) = (23, 4);
    let mut rng = Rng::new(seed);
    let inputs = vec![
        randn(&mut rng, rows * c, 2.0),
        uniform(&mut rng, c, 0.5, 1.5),
        randn(&mut rng, c, 0.3),
        randn(&mut rng, rows * c, 1.0),
        randn(&mut rng, c, 0.3),        // running mean
        uniform(&mut rng, c, 0.5, 1.5), // running var
        vec![0.0; c],                   // save mean
        vec![0.0; c],                   // save rstd
    ];
    let s = NormShape {
        rows,
        c,
        eps: 1e-5,
        momentum: 0.1,
        train,
    };
    let tensors = move |i: &[prrnet::tensor::Tensor], y| BatchNormTensors {
        x: i[0],
        gamma: i[1],
        beta: i[2],
        residual: residual.then_some(i[3]),
        running_mean: i[4],
        running_var: i[5],
        save_mean: i[6],
        save_rstd: i[7],
        relu,
        y,
    };
    let name = format!("batchnorm train={train} residual={residual} relu={relu}");
    let checks: &[usize] = if residual { &[0, 1, 2, 3] } else { &[0, 1, 2] };
    grad_check(
        &name,
        &inputs,
        rows * c,
        &|be, i, out| be.batchnorm(&s, &tensors(i, out)).unwrap(),
        &|be, i, out, dy, d| {
            be.batchnorm_backward(
                &s,
                &tensors(i, out),
                &BatchNormGrads {
                    dy,
                    dx: Some(d[0]),
                    dgamma: Some(d[1]),
                    dbeta: Some(d[2]),
                    dresidual: residual.then_some(d[3]),
                },
            )
            .unwrap()
        },
        checks,
        60,
        H,
        TOL,
    );
}

#[test]
fn batchnorm_train_and_eval() {
    bn_case(true, false, false, 10);
    bn_case(true, true, true, 11);
    bn_case(false, false, true, 12);
    bn_case(false, true, false, 13);
}

#[test]
fn batchnorm_running_stats_update() {
    // Running statistics follow PyTorch: momentum 0.1, unbiased variance.
    let (rows, c) = (5, 2);
    let x: Vec<f32> = vec![1.0, 2.0, 3.0, -1.0, 0.5, 4.0, -2.0, 0.0, 1.5, 1.0];
    let mut be = prrnet::backend::cpu::CpuBackend::new();
    let t = |be: &mut _, d: &[f32]| put(be, d);
    let xt = t(&mut be, &x);
    let g = t(&mut be, &[1.0, 1.0]);
    let b = t(&mut be, &[0.0, 0.0]);
    let rm = t(&mut be, &[0.2, -0.1]);
    let rv = t(&mut be, &[1.0, 2.0]);
    let sm = t(&mut be, &[0.0, 0.0]);
    let sr = t(&mut be, &[0.0, 0.0]);
    let y = t(&mut be, &[0.0; 10]);
    let s = NormShape {
        rows,
        c,
        eps: 1e-5,
        momentum: 0.1,
        train: true,
    };
    be.batchnorm(
        &s,
        &BatchNormTensors {
            x: xt,
            gamma: g,
            beta: b,
            running_mean: rm,
            running_var: rv,
            save_mean: sm,
            save_rstd: sr,
            residual: None,
            relu: false,
            y,
        },
    )
    .unwrap();
    for ch in 0..c {
        let col: Vec<f64> = (0..rows).map(|r| x[r * c + ch] as f64).collect();
        let mean = col.iter().sum::<f64>() / rows as f64;
        let var_u = col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (rows - 1) as f64;
        let want_rm = 0.9 * [0.2, -0.1][ch] + 0.1 * mean;
        let want_rv = 0.9 * [1.0, 2.0][ch] + 0.1 * var_u;
        assert!((get(&be, rm)[ch] as f64 - want_rm).abs() < 1e-6);
        assert!((get(&be, rv)[ch] as f64 - want_rv).abs() < 1e-5);
    }
}

fn resize_case(kind: &str, s: ResizeShape, seed: u64) {
    let mut rng = Rng::new(seed);
    let inputs = vec![randn(&mut rng, s.x_len(), 1.0)];
    let k = kind.to_string();
    grad_check(
        &format!("{kind} {}x{} -> {}x{}", s.hi, s.wi, s.ho, s.wo),
        &inputs,
        s.y_len(),
        &|be, i, out| match k.as_str() {
            "nearest" => be.resize_nearest(&s, i[0], out, false).unwrap(),
            "bilinear" => be.resize_bilinear(&s, i[0], out).unwrap(),
            _ => be.adaptive_avg_pool(&s, i[0], out).unwrap(),
        },
        &|be, _i, _o, dy, d| match k.as_str() {
            "nearest" => be.resize_nearest_backward(&s, dy, d[0]).unwrap(),
            "bilinear" => be.resize_bilinear_backward(&s, dy, d[0]).unwrap(),
            _ => be.adaptive_avg_pool_backward(&s, dy, d[0]).unwrap(),
        },
        &[0],
        80,
        H,
        TOL,
    );
}

fn rs(b: usize, c: usize, hi: usize, wi: usize, ho: usize, wo: usize) -> ResizeShape {
    ResizeShape {
        b,
        c,
        hi,
        wi,
        ho,
        wo,
    }
}

#[test]
fn resize_odd_sizes() {
    resize_case("nearest", rs(2, 3, 10, 10, 75, 75), 20);
    resize_case("nearest", rs(1, 2, 38, 38, 75, 75), 21);
    resize_case("nearest", rs(1, 2, 19, 19, 38, 38), 22);
    resize_case("bilinear", rs(2, 3, 10, 10, 75, 75), 23);
    resize_case("bilinear", rs(1, 2, 19, 13, 38, 75), 24);
    resize_case("bilinear", rs(1, 2, 9, 9, 4, 5), 25);
    resize_case("adaptive", rs(2, 2, 13, 13, 4, 4), 26);
    resize_case("adaptive", rs(1, 3, 16, 16, 5, 5), 27);
    resize_case("adaptive", rs(1, 1, 75, 75, 5, 5), 28);
}

#[test]
fn concat() {
    let (rows, sc, dc, off) = (6, 3, 7, 2);
    let mut rng = Rng::new(30);
    let inputs = vec![randn(&mut rng, rows * sc, 1.0)];
    grad_check(
        "concat",
        &inputs,
        rows * dc,
        &|be, i, out| {
            be.fill(out, 0.5).unwrap();
            be.concat_channels(rows, i[0], sc, out, dc, off).unwrap()
        },
        &|be, _i, _o, dy, d| {
            be.concat_channels_backward(rows, dy, dc, off, d[0], sc)
                .unwrap()
        },
        &[0],
        40,
        H,
        TOL,
    );
}

fn relation_case(b: usize, h: usize, w: usize, c: usize, n: usize, seed: u64) {
    let s = RelationShape { b, h, w, c, n };
    let np = h * w;
    let mut rng = Rng::new(seed);
    let inputs = vec![
        randn(&mut rng, b * np * c, 1.0),
        vec![0.0; b * np],
        vec![0.0; b * np],
    ];
    grad_check(
        &format!("relation {h}x{w} c={c} n={n}"),
        &inputs,
        b * np * n * n,
        &|be, i, out| be.relation(&s, i[0], i[1], i[2], out).unwrap(),
        &|be, i, out, dy, d| {
            be.relation_backward(&s, i[0], i[1], i[2], out, dy, d[0])
                .unwrap()
        },
        &[0],
        60,
        H,
        TOL,
    );
}

#[test]
fn relation_map() {
    relation_case(2, 6, 6, 5, 3, 40);
    relation_case(1, 13, 13, 4, 4, 41); // non-divisible, overlapping bins
    relation_case(1, 7, 9, 3, 5, 42);
}

#[test]
fn attention_pool() {
    let (b, n, c) = (2, 11, 5);
    let mut rng = Rng::new(50);
    let inputs = vec![
        randn(&mut rng, b * n * c, 1.0),
        uniform(&mut rng, b * n, 0.05, 0.95),
    ];
    grad_check(
        "attention",
        &inputs,
        2 * b * c,
        &|be, i, out| be.attention_pool(b, n, c, i[0], i[1], out).unwrap(),
        &|be, i, out, dy, d| {
            be.attention_pool_backward(b, n, c, i[0], i[1], out, dy, d[0], d[1])
                .unwrap()
        },
        &[0, 1],
        60,
        1e-3,
        TOL,
    );
}

#[test]
fn region_metrics() {
    for (groups, seed) in [(1, 60), (2, 61), (4, 62)] {
        let (b, d) = (3, 8);
        let mut rng = Rng::new(seed);
        let inputs = vec![randn(&mut rng, 2 * b * d, 1.0)];
        grad_check(
            &format!("region G={groups}"),
            &inputs,
            b * 3 * groups,
            &|be, i, out| be.region_metrics(b, d, groups, i[0], out).unwrap(),
            &|be, i, _o, dy, dd| {
                be.region_metrics_backward(b, d, groups, i[0], dy, dd[0])
                    .unwrap()
            },
            &[0],
            48,
            1e-3,
            TOL,
        );
    }
}

#[test]
fn bce_loss_and_elementwise() {
    let (rows, cols) = (3, 5);
    let mut rng = Rng::new(70);
    let inputs = vec![
        randn(&mut rng, rows * cols, 2.0),
        uniform(&mut rng, rows * cols, 0.0, 1.0),
        vec![1.0, 0.0, 1.0],
    ];
    grad_check(
        "bce",
        &inputs,
        1,
        &|be, i, out| {
            be.bce_with_logits(rows, cols, i[0], i[1], i[2], 0.37, out)
                .unwrap()
        },
        &|be, i, _o, dy, d| {
            // dy is a scalar weight on the loss: fold it into the scale.
            let mut r = [0f32];
            be.download(dy, &mut r).unwrap();
            be.bce_with_logits_backward(rows, cols, i[0], i[1], i[2], 0.37 * r[0], d[0])
                .unwrap()
        },
        &[0],
        15,
        1e-3,
        1e-3,
    );
    let inputs = vec![randn(&mut rng, 40, 2.0)];
    grad_check(
        "sigmoid",
        &inputs,
        40,
        &|be, i, out| be.sigmoid(i[0], out).unwrap(),
        &|be, _i, out, dy, d| be.sigmoid_backward(out, dy, d[0]).unwrap(),
        &[0],
        40,
        1e-3,
        1e-3,
    );
    grad_check(
        "relu",
        &inputs,
        40,
        &|be, i, out| {
            be.copy(i[0], out).unwrap();
            be.relu_inplace(out).unwrap()
        },
        &|be, _i, out, dy, d| {
            // relu_backward_inplace masks dy; then accumulate it into d.
            be.relu_backward_inplace(out, dy).unwrap();
            be.add_inplace(d[0], dy).unwrap()
        },
        &[0],
        40,
        1e-3,
        1e-3,
    );
}

#[test]
fn adam_matches_pytorch_formula() {
    let mut rng = Rng::new(80);
    let n = 50;
    let p0 = randn(&mut rng, n, 1.0);
    let mut be = prrnet::backend::cpu::CpuBackend::new();
    let p = put(&mut be, &p0);
    let g = put(&mut be, &vec![0.0; n]);
    let m = put(&mut be, &vec![0.0; n]);
    let v = put(&mut be, &vec![0.0; n]);
    let (lr, b1, b2, eps) = (1e-2f64, 0.9f64, 0.999f64, 1e-8f64);
    let mut want: Vec<f64> = p0.iter().map(|x| *x as f64).collect();
    let mut wm = vec![0f64; n];
    let mut wv = vec![0f64; n];
    for step in 1..=5u64 {
        let grad = randn(&mut rng, n, 1.0);
        be.upload(g, &grad).unwrap();
        be.adam(
            p,
            g,
            m,
            v,
            &AdamArgs {
                lr: lr as f32,
                beta1: b1 as f32,
                beta2: b2 as f32,
                eps: eps as f32,
                step,
            },
        )
        .unwrap();
        for i in 0..n {
            let gi = grad[i] as f64;
            wm[i] = b1 * wm[i] + (1.0 - b1) * gi;
            wv[i] = b2 * wv[i] + (1.0 - b2) * gi * gi;
            let bc1 = 1.0 - b1.powi(step as i32);
            let bc2 = 1.0 - b2.powi(step as i32);
            want[i] -= lr / bc1 * wm[i] / (wv[i].sqrt() / bc2.sqrt() + eps);
        }
    }
    let got: Vec<f64> = get(&be, p).iter().map(|x| *x as f64).collect();
    assert!(rel_l2_f64(&got, &want) < 1e-6);
}
