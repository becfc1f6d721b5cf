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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn conv_forward_and_adjoint(
        b in 1usize..3, h in 3usize..12, w in 3usize..12, cin in 1usize..5, cout in 1usize..5,
        k in prop::sample::select(vec![1usize, 3]), stride in 1usize..3, pad in 0usize..2, seed in 0u64..1000,
    ) {
        prop_assume!(h + 2 * pad >= k && w + 2 * pad >= k);
        let s = ConvShape::new(b, h, w, cin, cout, k, stride, pad);
        let mut rng = Rng::new(seed);
        let x = randn(&mut rng, s.x_len(), 1.0);
        let wt = randn(&mut rng, s.w_len(), 1.0);
        let gy = randn(&mut rng, s.y_len(), 1.0);
        let mut be = CpuBackend::new();
        let (xt, wtt, yt) = (put(&mut be, &x), put(&mut be, &wt), put(&mut be, &vec![f32::NAN; s.y_len()]));
        let gyt = put(&mut be, &gy);
        let (dx, dw) = (put(&mut be, &vec![0.0; s.x_len()]), put(&mut be, &vec![0.0; s.w_len()]));
        be.conv2d(&s, xt, wtt, None, yt).unwrap();
        be.conv2d_backward(&s, xt, wtt, gyt, Some(dx), Some(dw), None).unwrap();
        let y = get(&be, yt);
        prop_assert!(rel_l2(&y, &naive_conv(&s, &x, &wt)) < 1e-5);
        // ⟨conv(x), gy⟩ = ⟨x, dx⟩ = ⟨w, dw⟩ (the conv is linear in each argument).
        let lhs = dot(&y, &gy);
        let scale = lhs.abs().max(1.0);
        prop_assert!((lhs - dot(&x, &get(&be, dx))).abs() < 1e-4 * scale);
        prop_assert!((lhs - dot(&wt, &get(&be, dw))).abs() < 1e-4 * scale);
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
