//! Nearest and bilinear resizing and adaptive average pooling, with PyTorch's index rules
//! (SPEC §6, shared with the CUDA kernels through `backend::{nearest_src, bilinear_taps,
//! adaptive_bin}`). x: [B, hi, wi, C] → y: [B, ho, wo, C].
//!
//! Forward passes parallelise over output rows; backward passes scatter-add within one image
//! and parallelise over images, so no two threads touch the same gradient element.

use rayon::prelude::*;

use super::{check_len, disjoint, CpuBackend};
use crate::backend::{adaptive_bin, bilinear_taps, nearest_src, ResizeShape, SumShape, SumTerm};
use crate::tensor::Tensor;

fn check(s: &ResizeShape, x: Tensor, y: Tensor) {
    check_len("resize x", x, s.x_len());
    check_len("resize y", y, s.y_len());
}

pub fn nearest(be: &CpuBackend, s: &ResizeShape, x: Tensor, y: Tensor, accumulate: bool) {
    check(s, x, y);
    disjoint(&[y], &[x]);
    let (xs, c) = (be.r(x), s.c);
    be.w(y)
        .par_chunks_mut(s.wo * c)
        .enumerate()
        .for_each(|(row, out)| {
            let (b, oy) = (row / s.ho, row % s.ho);
            let iy = nearest_src(oy, s.hi, s.ho);
            for ox in 0..s.wo {
                let ix = nearest_src(ox, s.wi, s.wo);
                let src = &xs[((b * s.hi + iy) * s.wi + ix) * c..][..c];
                let dst = &mut out[ox * c..(ox + 1) * c];
                if accumulate {
                    dst.iter_mut().zip(src).for_each(|(d, v)| *d += v);
                } else {
                    dst.copy_from_slice(src);
                }
            }
        });
}

/// `Backend::fuse_sum_relu` (arguments checked by the caller): per output pixel, the terms'
/// channel vectors copied / added in order, then the ReLU of `relu_inplace`.
pub fn fuse_sum_relu(be: &CpuBackend, s: &SumShape, terms: &[SumTerm], y: Tensor) {
    if s.y_len() == 0 {
        return;
    }
    let xs: Vec<&[f32]> = terms.iter().map(|t| be.r(t.x)).collect();
    let c = s.c;
    be.w(y)
        .par_chunks_mut(s.wo * c)
        .enumerate()
        .for_each(|(row, out)| {
            let (b, oy) = (row / s.ho, row % s.ho);
            for (ox, dst) in out.chunks_exact_mut(c).enumerate() {
                for (j, (t, x)) in terms.iter().zip(&xs).enumerate() {
                    let iy = nearest_src(oy, t.hi, s.ho);
                    let ix = nearest_src(ox, t.wi, s.wo);
                    let src = &x[((b * t.hi + iy) * t.wi + ix) * c..][..c];
                    if j == 0 {
                        dst.copy_from_slice(src);
                    } else {
                        dst.iter_mut().zip(src).for_each(|(d, v)| *d += v);
                    }
                }
                // NaN stays NaN, as in relu_inplace.
                dst.iter_mut().filter(|v| **v < 0.0).for_each(|v| *v = 0.0);
            }
        });
}

pub fn nearest_backward(be: &CpuBackend, s: &ResizeShape, dy: Tensor, dx: Tensor) {
    check(s, dx, dy);
    disjoint(&[dx], &[dy]);
    let (dys, c) = (be.r(dy), s.c);
    be.w(dx)
        .par_chunks_mut(s.hi * s.wi * c)
        .enumerate()
        .for_each(|(b, img)| {
            for oy in 0..s.ho {
                let iy = nearest_src(oy, s.hi, s.ho);
                for ox in 0..s.wo {
                    let ix = nearest_src(ox, s.wi, s.wo);
                    let src = &dys[((b * s.ho + oy) * s.wo + ox) * c..][..c];
                    let dst = &mut img[(iy * s.wi + ix) * c..][..c];
                    dst.iter_mut().zip(src).for_each(|(d, v)| *d += v);
                }
            }
        });
}

/// `Backend::resize_bilinear_into` (operands checked by the caller): `y` is `[b, ho, wo, y_c]`
/// and the resize fills its channels `[offset, offset + c)`.
pub fn bilinear(be: &CpuBackend, s: &ResizeShape, x: Tensor, y: Tensor, y_c: usize, offset: usize) {
    if s.y_len() == 0 {
        return;
    }
    let (xs, c) = (be.r(x), s.c);
    let xtaps: Vec<_> = (0..s.wo).map(|o| bilinear_taps(o, s.wi, s.wo)).collect();
    be.w(y)
        .par_chunks_mut(s.wo * y_c)
        .enumerate()
        .for_each(|(row, out)| {
            let (b, oy) = (row / s.ho, row % s.ho);
            let (y0, y1, wy0, wy1) = bilinear_taps(oy, s.hi, s.ho);
            let px = |iy: usize, ix: usize| &xs[((b * s.hi + iy) * s.wi + ix) * c..][..c];
            for (ox, &(x0, x1, wx0, wx1)) in xtaps.iter().enumerate() {
                let (a, bb, cc, d) = (px(y0, x0), px(y0, x1), px(y1, x0), px(y1, x1));
                let dst = &mut out[ox * y_c + offset..][..c];
                for ch in 0..c {
                    dst[ch] =
                        wy0 * (wx0 * a[ch] + wx1 * bb[ch]) + wy1 * (wx0 * cc[ch] + wx1 * d[ch]);
                }
            }
        });
}

/// `Backend::resize_bilinear_into_backward` (operands checked by the caller): the gradient is
/// read from channels `[offset, offset + c)` of `dy: [b, ho, wo, dy_c]`.
pub fn bilinear_backward(
    be: &CpuBackend,
    s: &ResizeShape,
    dy: Tensor,
    dy_c: usize,
    offset: usize,
    dx: Tensor,
) {
    if s.x_len() == 0 || s.y_len() == 0 {
        return;
    }
    let (dys, c) = (be.r(dy), s.c);
    let xtaps: Vec<_> = (0..s.wo).map(|o| bilinear_taps(o, s.wi, s.wo)).collect();
    be.w(dx)
        .par_chunks_mut(s.hi * s.wi * c)
        .enumerate()
        .for_each(|(b, img)| {
            for oy in 0..s.ho {
                let (y0, y1, wy0, wy1) = bilinear_taps(oy, s.hi, s.ho);
                for (ox, &(x0, x1, wx0, wx1)) in xtaps.iter().enumerate() {
                    let g = &dys[((b * s.ho + oy) * s.wo + ox) * dy_c + offset..][..c];
                    for (iy, ix, wt) in [
                        (y0, x0, wy0 * wx0),
                        (y0, x1, wy0 * wx1),
                        (y1, x0, wy1 * wx0),
                        (y1, x1, wy1 * wx1),
                    ] {
                        let dst = &mut img[(iy * s.wi + ix) * c..][..c];
                        dst.iter_mut().zip(g).for_each(|(d, v)| *d += wt * v);
                    }
                }
            }
        });
}

pub fn adaptive_avg_pool(be: &CpuBackend, s: &ResizeShape, x: Tensor, y: Tensor) {
    check(s, x, y);
    disjoint(&[y], &[x]);
    let (xs, c) = (be.r(x), s.c);
    be.w(y)
        .par_chunks_mut(s.wo * c)
        .enumerate()
        .for_each(|(row, out)| {
            let (b, v) = (row / s.ho, row % s.ho);
            let (y0, y1) = adaptive_bin(v, s.hi, s.ho);
            let mut acc = vec![0f64; c];
            for u in 0..s.wo {
                let (x0, x1) = adaptive_bin(u, s.wi, s.wo);
                acc.fill(0.0);
                for iy in y0..y1 {
                    for ix in x0..x1 {
                        let src = &xs[((b * s.hi + iy) * s.wi + ix) * c..][..c];
                        acc.iter_mut().zip(src).for_each(|(a, v)| *a += *v as f64);
                    }
                }
                let inv = 1.0 / ((y1 - y0) * (x1 - x0)) as f64;
                for ch in 0..c {
                    out[u * c + ch] = (acc[ch] * inv) as f32;
                }
            }
        });
}

pub fn adaptive_avg_pool_backward(be: &CpuBackend, s: &ResizeShape, dy: Tensor, dx: Tensor) {
    check(s, dx, dy);
    disjoint(&[dx], &[dy]);
    let (dys, c) = (be.r(dy), s.c);
    be.w(dx)
        .par_chunks_mut(s.hi * s.wi * c)
        .enumerate()
        .for_each(|(b, img)| {
            for v in 0..s.ho {
                let (y0, y1) = adaptive_bin(v, s.hi, s.ho);
                for u in 0..s.wo {
                    let (x0, x1) = adaptive_bin(u, s.wi, s.wo);
                    let inv = 1.0 / ((y1 - y0) * (x1 - x0)) as f32;
                    let g = &dys[((b * s.ho + v) * s.wo + u) * c..][..c];
                    for iy in y0..y1 {
                        for ix in x0..x1 {
                            let dst = &mut img[(iy * s.wi + ix) * c..][..c];
                            dst.iter_mut().zip(g).for_each(|(d, v)| *d += v * inv);
                        }
                    }
                }
            }
        });
}
