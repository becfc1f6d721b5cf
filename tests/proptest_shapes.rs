//! Property sweeps over shapes: convolution, resizing and pooling forward against naive
//! definitions, and their backward passes against the adjoint identity
//! `⟨A x, y⟩ = ⟨x, Aᵀ y⟩` (exact for linear operators up to rounding).

mod common;

use common::*;
use proptest::prelude::*;
use prrnet::backend::cpu::CpuBackend;
use prrnet::backend::*;
use prrnet::rng::Rng;

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

fn naive_conv(s: &ConvShape, x: &[f32], w: &[f32]) -> Vec<f32> {
    let mut y = vec![0f32; s.y_len()];
    for b in 0..s.b {
        for oy in 0..s.ho {
            for ox in 0..s.wo {
                for co in 0..s.cout {
                    let mut acc = 0f64;
                    for ky in 0..s.k {
                        for kx in 0..s.k {
                            let iy = (oy * s.stride + ky) as isize - s.pad as isize;
                            let ix = (ox * s.stride + kx) as isize - s.pad as isize;
                            if iy < 0 || ix < 0 || iy >= s.h as isize || ix >= s.w as isize {
                                continue;
                            }
                            for ci in 0..s.cin {
                                let xv =
                                    x[((b * s.h + iy as usize) * s.w + ix as usize) * s.cin + ci];
                                let wv = w[((co * s.k + ky) * s.k + kx) * s.cin + ci];
                                acc += xv as f64 * wv as f64;
                            }
                        }
                    }
                    y[((b * s.ho + oy) * s.wo + ox) * s.cout + co] = acc as f32;
                }
            }
        }
    }
    y
}

/// The forward against [`naive_conv`], and both gradients through the adjoint identities
/// ⟨conv(x), gy⟩ = ⟨x, dx⟩ = ⟨w, dw⟩ (the conv is linear in each argument).
fn check_conv(s: &ConvShape, seed: u64) {
    let mut rng = Rng::new(seed);
    let x = randn(&mut rng, s.x_len(), 1.0);
    let wt = randn(&mut rng, s.w_len(), 1.0);
    let gy = randn(&mut rng, s.y_len(), 1.0);
    let mut be = CpuBackend::new();
    let (xt, wtt, yt) = (
        put(&mut be, &x),
        put(&mut be, &wt),
        put(&mut be, &vec![f32::NAN; s.y_len()]),
    );
    let gyt = put(&mut be, &gy);
    let (dx, dw) = (
        put(&mut be, &vec![0.0; s.x_len()]),
        put(&mut be, &vec![0.0; s.w_len()]),
    );
    be.conv2d(s, xt, wtt, None, yt).unwrap();
    be.conv2d_backward(s, xt, wtt, gyt, Some(dx), Some(dw), None)
        .unwrap();
    let y = get(&be, yt);
    assert!(rel_l2(&y, &naive_conv(s, &x, &wt)) < 1e-5, "{s:?}: forward");
    let lhs = dot(&y, &gy);
    let scale = lhs.abs().max(1.0);
    assert!(
        (lhs - dot(&x, &get(&be, dx))).abs() < 1e-4 * scale,
        "{s:?}: data gradient"
    );
    assert!(
        (lhs - dot(&wt, &get(&be, dw))).abs() < 1e-4 * scale,
        "{s:?}: weight gradient"
    );
}

/// Shapes for the short-column kernel (`conv_small`, on AVX-512 and AVX2 machines) that the sweep
/// below does not reach: many relation maps (several tasks, a partial block of 8 pixels),
/// output channels over more than one vector, runs of several input channels.
#[test]
fn small_column_convolutions_over_several_tasks() {
    for (seed, s) in [
        ConvShape::new(500, 5, 5, 1, 32, 3, 1, 0),
        ConvShape::new(3, 11, 9, 1, 20, 3, 2, 1),
        ConvShape::new(2, 6, 7, 4, 40, 2, 1, 1),
    ]
    .iter()
    .enumerate()
    {
        check_conv(s, seed as u64);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn conv_forward_and_adjoint(
        b in 1usize..3, h in 3usize..12, w in 3usize..12, cin in 1usize..5, cout in 1usize..5,
        k in prop::sample::select(vec![1usize, 3]), stride in 1usize..3, pad in 0usize..2, seed in 0u64..1000,
    ) {
        prop_assume!(h + 2 * pad >= k && w + 2 * pad >= k);
        check_conv(&ConvShape::new(b, h, w, cin, cout, k, stride, pad), seed);
    }

    #[test]
    fn resize_and_pool_adjoint(
        b in 1usize..3, c in 1usize..4, hi in 1usize..20, wi in 1usize..20,
        ho in 1usize..24, wo in 1usize..24, kind in 0usize..3, seed in 0u64..1000,
    ) {
        // Adaptive pooling only shrinks or keeps sizes in the network; allow any size anyway
        // except empty bins (ho > hi gives bins of one pixel, still valid).
        let s = ResizeShape { b, c, hi, wi, ho, wo };
        let mut rng = Rng::new(seed);
        let x = randn(&mut rng, s.x_len(), 1.0);
        let gy = randn(&mut rng, s.y_len(), 1.0);
        let mut be = CpuBackend::new();
        let (xt, yt, gyt) = (put(&mut be, &x), put(&mut be, &vec![f32::NAN; s.y_len()]), put(&mut be, &gy));
        let dx = put(&mut be, &vec![0.0; s.x_len()]);
        match kind {
            0 => { be.resize_nearest(&s, xt, yt, false).unwrap(); be.resize_nearest_backward(&s, gyt, dx).unwrap(); }
            1 => { be.resize_bilinear(&s, xt, yt).unwrap(); be.resize_bilinear_backward(&s, gyt, dx).unwrap(); }
            _ => { be.adaptive_avg_pool(&s, xt, yt).unwrap(); be.adaptive_avg_pool_backward(&s, gyt, dx).unwrap(); }
        }
        let y = get(&be, yt);
        prop_assert!(y.iter().all(|v| v.is_finite()));
        // Forward against the naive definitions of SPEC §6.
        for bi in 0..b { for oy in 0..ho { for ox in 0..wo { for ch in 0..c {
            let px = |iy: usize, ix: usize| x[((bi * hi + iy) * wi + ix) * c + ch] as f64;
            let want = match kind {
                0 => px(nearest_src(oy, hi, ho), nearest_src(ox, wi, wo)),
                1 => {
                    let (y0, y1, a0, a1) = bilinear_taps(oy, hi, ho);
                    let (x0, x1, b0, b1) = bilinear_taps(ox, wi, wo);
                    a0 as f64 * (b0 as f64 * px(y0, x0) + b1 as f64 * px(y0, x1))
                        + a1 as f64 * (b0 as f64 * px(y1, x0) + b1 as f64 * px(y1, x1))
                }
                _ => {
                    let (y0, y1) = adaptive_bin(oy, hi, ho);
                    let (x0, x1) = adaptive_bin(ox, wi, wo);
                    let mut acc = 0.0;
                    for iy in y0..y1 { for ix in x0..x1 { acc += px(iy, ix); } }
                    acc / ((y1 - y0) * (x1 - x0)) as f64
                }
            };
            let got = y[((bi * ho + oy) * wo + ox) * c + ch] as f64;
            prop_assert!((got - want).abs() < 1e-5 * want.abs().max(1.0), "kind {} at {},{}: {} vs {}", kind, oy, ox, got, want);
        }}}}
        let lhs = dot(&y, &gy);
        prop_assert!((lhs - dot(&x, &get(&be, dx))).abs() < 1e-4 * lhs.abs().max(1.0));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// `fuse_sum_relu` is, bit for bit, the sequence of passes it replaces: the first term
    /// copied (or resized), each further one added (or resized with accumulation), then ReLU.
    /// Terms of any size (smaller, larger, the output's own), values of both signs so the ReLU
    /// matters, and one term holding a NaN that must survive.
    #[test]
    fn fuse_sum_relu_is_the_sequence_of_passes(
        b in 1usize..3, c in 1usize..6, ho in 1usize..20, wo in 1usize..20,
        sizes in proptest::collection::vec((0usize..20, 0usize..20), 1..=MAX_SUM_TERMS),
        seed in 0u64..1000,
    ) {
        let s = SumShape { b, c, ho, wo };
        let mut rng = Rng::new(seed);
        let mut be = CpuBackend::new();
        // A size of 0 stands for the output's own size (the identity and down-sampled terms).
        let terms: Vec<SumTerm> = sizes.iter().map(|&(h, w)| {
            let (hi, wi) = if h == 0 || w == 0 { (ho, wo) } else { (h, w) };
            let x = put(&mut be, &randn(&mut rng, b * hi * wi * c, 1.0));
            SumTerm { x, hi, wi }
        }).collect();
        let mut nan = get(&be, terms[0].x);
        nan[0] = f32::NAN;
        be.upload(terms[0].x, &nan).unwrap();
        let fused = put(&mut be, &vec![f32::NAN; s.y_len()]);
        be.fuse_sum_relu(&s, &terms, fused).unwrap();
        let passes = put(&mut be, &vec![f32::NAN; s.y_len()]);
        for (j, t) in terms.iter().enumerate() {
            be.resize_nearest(&s.resize_from(t), t.x, passes, j > 0).unwrap();
        }
        let before_relu = get(&be, passes);
        be.relu_inplace(passes).unwrap();
        let (f, p) = (get(&be, fused), get(&be, passes));
        prop_assert!(f[0].is_nan() && p[0].is_nan());
        for (i, (a, e)) in f.iter().zip(&p).enumerate() {
            prop_assert!(a.to_bits() == e.to_bits() || (a.is_nan() && e.is_nan()),
                "element {}: fused {} vs passes {}", i, a, e);
        }
        // Both sides of the ReLU were exercised, wherever the sums hold enough independent
        // values for that to be all but certain (a 1×1 first term, whose one value is the NaN,
        // makes every output NaN; a few small terms make only a few distinct sums).
        let mut distinct: Vec<u32> =
            before_relu.iter().filter(|v| !v.is_nan()).map(|v| v.to_bits()).collect();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() >= 32 {
            prop_assert!(f.contains(&0.0) && f.iter().any(|v| *v > 0.0));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// `resize_bilinear_into` a channel slice is exactly the plain resize followed by
    /// `concat_channels`, leaving the other channels alone; its backward is exactly
    /// `concat_channels_backward` into a zeroed buffer followed by the plain backward.
    #[test]
    fn bilinear_into_a_slice_is_resize_then_concat(
        b in 1usize..3, c in 1usize..5, extra in 0usize..6, before in 0usize..4,
        hi in 1usize..12, wi in 1usize..12, ho in 1usize..16, wo in 1usize..16,
        seed in 0u64..1000,
    ) {
        let s = ResizeShape { b, c, hi, wi, ho, wo };
        let (wide_c, offset) = (before + c + extra, before);
        let rows = b * ho * wo;
        let mut rng = Rng::new(seed);
        let mut be = CpuBackend::new();
        let x = put(&mut be, &randn(&mut rng, s.x_len(), 1.0));
        let wide0 = randn(&mut rng, rows * wide_c, 1.0);
        let (direct, staged) = (put(&mut be, &wide0), put(&mut be, &wide0));
        let up = put(&mut be, &vec![f32::NAN; s.y_len()]);
        be.resize_bilinear_into(&s, x, direct, wide_c, offset).unwrap();
        be.resize_bilinear(&s, x, up).unwrap();
        be.concat_channels(rows, up, c, staged, wide_c, offset).unwrap();
        let (d, st) = (get(&be, direct), get(&be, staged));
        prop_assert!(d.iter().zip(&st).all(|(a, e)| a.to_bits() == e.to_bits()));
        // Backward: the gradient is the wide tensor itself.
        let dx0 = randn(&mut rng, s.x_len(), 0.5);
        let (dx_direct, dx_staged) = (put(&mut be, &dx0), put(&mut be, &dx0));
        be.resize_bilinear_into_backward(&s, direct, wide_c, offset, dx_direct).unwrap();
        let du = put(&mut be, &vec![0.0; s.y_len()]);
        be.concat_channels_backward(rows, direct, wide_c, offset, du, c).unwrap();
        be.resize_bilinear_backward(&s, du, dx_staged).unwrap();
        let (gd, gs) = (get(&be, dx_direct), get(&be, dx_staged));
        prop_assert!(gd.iter().zip(&gs).all(|(a, e)| a == e), "backward differs");
        prop_assert!(gd.iter().zip(&dx0).any(|(a, e)| a != e), "backward added nothing");
    }
}

#[test]
fn bilinear_into_rejects_bad_slices() {
    let mut be = CpuBackend::new();
    let s = ResizeShape {
        b: 1,
        c: 2,
        hi: 2,
        wi: 2,
        ho: 4,
        wo: 4,
    };
    let x = put(&mut be, &[1.0; 8]);
    let wide = put(&mut be, &[0.5; 80]);
    let err = |x, wide, wide_c, off| {
        be.resize_bilinear_into(&s, x, wide, wide_c, off)
            .unwrap_err()
            .to_string()
    };
    assert!(err(x, wide, 5, 4).contains("channels 4..6 do not fit in 5"));
    assert!(err(x, wide, 4, 0).contains("has 80 elements, expected 64"));
    assert!(err(wide, wide, 5, 0).contains("x has 80 elements"));
    let e = be
        .resize_bilinear_into_backward(&s, wide, 5, 4, x)
        .unwrap_err()
        .to_string();
    assert!(e.contains("do not fit"), "{e}");
    assert_eq!(get(&be, wide), vec![0.5; 80], "a refused call wrote");
    be.resize_bilinear_into(&s, x, wide, 5, 3).unwrap();
    let w = get(&be, wide);
    assert!(w.chunks(5).all(|px| px == [0.5, 0.5, 0.5, 1.0, 1.0]));
}

#[test]
fn fuse_sum_relu_rejects_bad_terms() {
    let mut be = CpuBackend::new();
    let s = SumShape {
        b: 1,
        c: 2,
        ho: 4,
        wo: 4,
    };
    let y = put(&mut be, &[0.5; 32]);
    let x = put(&mut be, &[1.0; 32]);
    let small = put(&mut be, &[1.0; 8]);
    let term = |x, hi, wi| SumTerm { x, hi, wi };
    let err = |terms: &[SumTerm], y| be.fuse_sum_relu(&s, terms, y).unwrap_err().to_string();
    assert!(err(&[], y).contains("0 terms"), "{}", err(&[], y));
    assert!(err(&[term(x, 4, 4); 5], y).contains("5 terms"));
    assert!(err(&[term(small, 4, 4)], y).contains("term 0 has 8 elements"));
    assert!(err(&[term(x, 4, 4), term(small, 2, 1)], y).contains("term 1 has 8 elements"));
    assert!(err(&[term(y, 4, 4)], y).contains("aliases the output"));
    assert!(err(&[term(x, 4, 4)], small).contains("y has 8 elements"));
    // Nothing was written by the refused calls.
    assert_eq!(get(&be, y), vec![0.5; 32]);
    be.fuse_sum_relu(&s, &[term(x, 4, 4), term(small, 2, 2)], y)
        .unwrap();
    assert_eq!(get(&be, y), vec![2.0; 32]);
}

#[test]
fn index_rules_match_pytorch_examples() {
    // nearest 38 → 75: scale = 38/75 in f32, floor(dst·scale).
    assert_eq!(nearest_src(74, 38, 75), 37);
    assert_eq!(nearest_src(1, 38, 75), 0);
    assert_eq!(nearest_src(2, 38, 75), 1);
    // exact doubling uses dst >> 1.
    assert_eq!(nearest_src(75, 38, 76), 37);
    // bilinear 10 → 75, align_corners = False: src = (dst + 0.5)·10/75 − 0.5, clamped at 0.
    let (x0, x1, w0, w1) = bilinear_taps(0, 10, 75);
    assert_eq!((x0, x1), (0, 1));
    assert!((w1 - 0.0).abs() < 1e-7 && (w0 - 1.0).abs() < 1e-7);
    let (x0, x1, _, w1) = bilinear_taps(40, 10, 75);
    assert_eq!((x0, x1), (4, 5));
    assert!((w1 - (40.5f32 * 10.0 / 75.0 - 0.5 - 4.0)).abs() < 1e-6);
    let (x0, x1, _, _) = bilinear_taps(74, 10, 75);
    assert_eq!((x0, x1), (9, 9));
    // adaptive bins of 13 into 4: [0,4) [3,7) [6,10) [9,13): overlapping.
    let bins: Vec<_> = (0..4).map(|u| adaptive_bin(u, 13, 4)).collect();
    assert_eq!(bins, vec![(0, 4), (3, 7), (6, 10), (9, 13)]);
}
