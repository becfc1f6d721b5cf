//! Fully connected layers: `y[m, n] = x[m, k] · w[n, k]ᵀ + bias[n]` (also every 1×1 convolution).

use rayon::prelude::*;

use super::{check_len, disjoint, sgemm, CpuBackend};
use crate::tensor::Tensor;

#[allow(clippy::too_many_arguments)]
pub fn forward(
    be: &CpuBackend,
    m: usize,
    k: usize,
    n: usize,
    x: Tensor,
    w: Tensor,
    bias: Option<Tensor>,
    y: Tensor,
) {
    check_len("linear x", x, m * k);
    check_len("linear w", w, n * k);
    check_len("linear y", y, m * n);
    disjoint(&[y], &[x, w]);
    let ys = be.w(y);
    // B[l, j] = w[j, l]: row stride 1, column stride k.
    sgemm(m, n, k, ys, n, false, be.r(x), k, 1, be.r(w), 1, k, true);
    if let Some(b) = bias {
        check_len("linear bias", b, n);
        add_bias(ys, be.r(b));
    }
}

/// `y[r, :] += bias` for every row.
pub fn add_bias(y: &mut [f32], bias: &[f32]) {
    let n = bias.len();
    y.par_chunks_mut(n).with_min_len(64).for_each(|row| {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    });
}

/// `db[j] += Σ_r dy[r, j]`, accumulated in f64.
pub fn bias_grad(dy: &[f32], n: usize, db: &mut [f32]) {
    // Fixed blocks combined in order: deterministic whatever the thread scheduling.
    let partial: Vec<Vec<f64>> = dy
        .par_chunks(n * 256)
        .map(|chunk| {
            let mut s = vec![0f64; n];
            for row in chunk.chunks(n) {
                for (a, v) in s.iter_mut().zip(row) {
                    *a += *v as f64;
                }
            }
            s
        })
        .collect();
    let sums = super::norm::sum_in_order(partial, n);
    for (d, s) in db.iter_mut().zip(sums) {
        *d += s as f32;
    }
}

#[allow(clippy::too_many_arguments)]
pub fn backward(
    be: &CpuBackend,
    m: usize,
    k: usize,
    n: usize,
    x: Tensor,
    w: Tensor,
    dy: Tensor,
    dx: Option<Tensor>,
    dw: Option<Tensor>,
    dbias: Option<Tensor>,
) {
    check_len("linear dy", dy, m * n);
    let dys = be.r(dy);
    if let Some(dx) = dx {
        check_len("linear dx", dx, m * k);
        disjoint(&[dx], &[dy, w]);
        // dx[m, k] += dy[m, n] · w[n, k]
        sgemm(m, k, n, be.w(dx), k, true, dys, n, 1, be.r(w), k, 1, true);
    }
    if let Some(dw) = dw {
        check_len("linear dw", dw, n * k);
        disjoint(&[dw], &[dy, x]);
        // dw[n, k] += dy[m, n]ᵀ · x[m, k]
        sgemm(n, k, m, be.w(dw), k, true, dys, 1, n, be.r(x), k, 1, true);
    }
    if let Some(db) = dbias {
        check_len("linear dbias", db, n);
        bias_grad(dys, n, be.w(db));
    }
}
