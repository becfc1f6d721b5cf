//! k×k convolutions over channels-last activations by im2col + GEMM.
//!
//! x: [B, H, W, Cin], w: [Cout, k, k, Cin], y: [B, Ho, Wo, Cout].
//! The column matrix has one row per output pixel and `k·k·Cin` columns in `(ky, kx, ci)`
//! order, so `y = col · wᵀ`. Images are processed in chunks so the columns stay within a
//! bounded workspace. Where the columns would be `x` itself (1×1 stride-1 convolutions, and
//! windows as large as the map) the convolution is `linear`. On AVX-512 and AVX2 machines,
//! those with column rows of at most 16 values run in `conv_small`, and the stride-1 k×k ones
//! with rows of at least 12 outputs in `conv_direct` (the backward only with at most 64
//! channels): where each was measured faster (on AVX-512).

use rayon::prelude::*;

use super::conv_direct;
use super::conv_small;
use super::elementwise::BiasAct;
use super::linear;
use super::{check_len, disjoint, sgemm, CpuBackend};
use crate::backend::ConvShape;
use crate::tensor::Tensor;

/// Upper bound on im2col workspace elements (64 MB of f32).
const COL_BUDGET: usize = 16 << 20;

fn images_per_chunk(s: &ConvShape) -> usize {
    let per_image = s.ho * s.wo * s.col_k();
    (COL_BUDGET / per_image.max(1)).clamp(1, s.b)
}

/// Fill `col` ([nb·Ho·Wo, k·k·Cin]) from images `x` ([nb, H, W, Cin]).
fn im2col(s: &ConvShape, x: &[f32], nb: usize, col: &mut [f32]) {
    let kk = s.col_k();
    let (h, w, cin) = (s.h as isize, s.w as isize, s.cin);
    col[..nb * s.ho * s.wo * kk]
        .par_chunks_mut(s.wo * kk)
        .enumerate()
        .for_each(|(row, out)| {
            let b = row / s.ho;
            let oy = row % s.ho;
            let img = &x[b * s.h * s.w * cin..(b + 1) * s.h * s.w * cin];
            for ox in 0..s.wo {
                let dst = &mut out[ox * kk..(ox + 1) * kk];
                for ky in 0..s.k {
                    let iy = (oy * s.stride + ky) as isize - s.pad as isize;
                    for kx in 0..s.k {
                        let ix = (ox * s.stride + kx) as isize - s.pad as isize;
                        let d = &mut dst[(ky * s.k + kx) * cin..(ky * s.k + kx + 1) * cin];
                        if iy < 0 || iy >= h || ix < 0 || ix >= w {
                            d.fill(0.0);
                        } else {
                            let o = (iy as usize * s.w + ix as usize) * cin;
                            d.copy_from_slice(&img[o..o + cin]);
                        }
                    }
                }
            }
        });
}

/// `dx += col2im(dcol)`, written as a gather over input pixels so threads never collide.
fn col2im_add(s: &ConvShape, dcol: &[f32], nb: usize, dx: &mut [f32]) {
    let kk = s.col_k();
    let cin = s.cin;
    dx[..nb * s.h * s.w * cin]
        .par_chunks_mut(s.w * cin)
        .enumerate()
        .for_each(|(row, out)| {
            let b = row / s.h;
            let iy = row % s.h;
            for ky in 0..s.k {
                let ty = iy + s.pad;
                if ty < ky || !(ty - ky).is_multiple_of(s.stride) {
                    continue;
                }
                let oy = (ty - ky) / s.stride;
                if oy >= s.ho {
                    continue;
                }
                for ix in 0..s.w {
                    let tx = ix + s.pad;
                    for kx in 0..s.k {
                        if tx < kx || !(tx - kx).is_multiple_of(s.stride) {
                            continue;
                        }
                        let ox = (tx - kx) / s.stride;
                        if ox >= s.wo {
                            continue;
                        }
                        let src = ((b * s.ho + oy) * s.wo + ox) * kk + (ky * s.k + kx) * cin;
                        for (d, v) in out[ix * cin..(ix + 1) * cin]
                            .iter_mut()
                            .zip(&dcol[src..src + cin])
                        {
                            *d += v;
                        }
                    }
                }
            }
        });
}

/// `y = relu?(conv(x, w) + bias + residual?)` (`act`: the epilogue, if any). The paths that
/// write their output in pieces (a row of the direct kernel, a task of `conv_small`, a chunk of
/// im2col's) apply it to each piece while it is still in cache; the epilogue's arithmetic is
/// the same wherever it runs.
pub fn forward(
    be: &CpuBackend,
    s: &ConvShape,
    x: Tensor,
    w: Tensor,
    act: Option<(Tensor, Option<Tensor>, bool)>,
    y: Tensor,
) {
    check_len("conv x", x, s.x_len());
    check_len("conv w", w, s.w_len());
    check_len("conv y", y, s.y_len());
    let act = act.map(|(bias, residual, relu)| {
        check_len("conv bias", bias, s.cout);
        BiasAct::new(be, y, bias, residual, relu)
    });
    if s.columns_are_input() {
        linear::forward(be, s.b * s.ho * s.wo, s.col_k(), s.cout, x, w, None, y);
        if let Some(a) = act {
            a.apply_parallel(be.w(y), 0);
        }
        return;
    }
    disjoint(&[y], &[x, w]);
    let (xs, ws, ys) = (be.r(x), be.r(w), be.w(y));
    if let Some(isa) = conv_small::suits(s) {
        conv_small::forward(isa, s, xs, ws, act.as_ref(), ys);
    } else if let Some(isa) = conv_direct::suits(s) {
        let lim = &conv_direct::LIMITS;
        be.with_workspace(conv_direct::workspace_len(lim, s), |work| {
            conv_direct::forward(isa, lim, s, xs, ws, act.as_ref(), ys, work)
        });
    } else {
        im2col_forward(be, s, xs, ws, act.as_ref(), ys);
    }
}

/// `y = conv(x, w)` through a column matrix, a chunk of images at a time.
fn im2col_forward(
    be: &CpuBackend,
    s: &ConvShape,
    xs: &[f32],
    ws: &[f32],
    act: Option<&BiasAct>,
    ys: &mut [f32],
) {
    let kk = s.col_k();
    let chunk = images_per_chunk(s);
    let (xi, yi) = (s.h * s.w * s.cin, s.ho * s.wo * s.cout);
    be.with_workspace(chunk * s.ho * s.wo * kk, |col| {
        for b0 in (0..s.b).step_by(chunk) {
            let nb = chunk.min(s.b - b0);
            im2col(s, &xs[b0 * xi..(b0 + nb) * xi], nb, col);
            let rows = nb * s.ho * s.wo;
            let yc = &mut ys[b0 * yi..(b0 + nb) * yi];
            // y[rows, cout] = col[rows, kk] · w[cout, kk]ᵀ
            sgemm(
                rows, s.cout, kk, yc, s.cout, false, col, kk, 1, ws, 1, kk, true,
            );
            if let Some(a) = act {
                a.apply_parallel(yc, b0 * yi);
            }
        }
    });
}

#[allow(clippy::too_many_arguments)]
pub fn backward(
    be: &CpuBackend,
    s: &ConvShape,
    x: Tensor,
    w: Tensor,
    dy: Tensor,
    dx: Option<Tensor>,
    dw: Option<Tensor>,
    dbias: Option<Tensor>,
) {
    check_len("conv x", x, s.x_len());
    check_len("conv w", w, s.w_len());
    check_len("conv dy", dy, s.y_len());
    if s.columns_are_input() {
        let m = s.b * s.ho * s.wo;
        return linear::backward(be, m, s.col_k(), s.cout, x, w, dy, dx, dw, dbias);
    }
    if let Some(db) = dbias {
        check_len("conv dbias", db, s.cout);
        linear::bias_grad(be.r(dy), s.cout, be.w(db));
    }
    if dx.is_none() && dw.is_none() {
        return;
    }
    let (xs, ws, dys) = (be.r(x), be.r(w), be.r(dy));
    if let Some(dx) = dx {
        check_len("conv dx", dx, s.x_len());
        disjoint(&[dx], &[dy, w]);
    }
    if let Some(dw) = dw {
        check_len("conv dw", dw, s.w_len());
        disjoint(&[dw], &[dy, x]);
    }
    if let Some(isa) = conv_small::suits(s) {
        if let Some(dw) = dw {
            conv_small::backward_weights(isa, s, xs, dys, be.w(dw));
        }
        if let Some(dx) = dx {
            conv_small::backward_data(isa, s, ws, dys, be.w(dx));
        }
        return;
    }
    if let Some(isa) = conv_direct::suits_backward(s) {
        let lim = &conv_direct::LIMITS;
        be.with_workspace(conv_direct::workspace_len(lim, s), |work| {
            if let Some(dw) = dw {
                conv_direct::backward_weights(isa, lim, s, xs, dys, be.w(dw), work);
            }
            if let Some(dx) = dx {
                conv_direct::backward_data(isa, lim, s, ws, dys, be.w(dx), work);
            }
        });
        return;
    }
    let kk = s.col_k();
    let chunk = images_per_chunk(s);
    let (xi, yi) = (s.h * s.w * s.cin, s.ho * s.wo * s.cout);
    be.with_workspace(chunk * s.ho * s.wo * kk, |col| {
        for b0 in (0..s.b).step_by(chunk) {
            let nb = chunk.min(s.b - b0);
            let rows = nb * s.ho * s.wo;
            let dyc = &dys[b0 * yi..(b0 + nb) * yi];
            if let Some(dw) = dw {
                im2col(s, &xs[b0 * xi..(b0 + nb) * xi], nb, col);
                // dw[cout, kk] += dy[rows, cout]ᵀ · col[rows, kk]
                linear::weight_grad(dyc, s.cout, col, kk, rows, be.w(dw));
            }
            if let Some(dx) = dx {
                // dcol[rows, kk] = dy[rows, cout] · w[cout, kk]
                sgemm(
                    rows, kk, s.cout, col, kk, false, dyc, s.cout, 1, ws, kk, 1, true,
                );
                col2im_add(s, col, nb, &mut be.w(dx)[b0 * xi..(b0 + nb) * xi]);
            }
        }
    });
}
