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

/// Rows per partial product of [`weight_grad`]: large enough for an efficient GEMM, small
/// enough that a W30 layer's rows make several.
const WGRAD_ROWS: usize = 2048;

/// `dw[n, k] += dy[m, n]ᵀ · x[m, k]`: one product per fixed block of `WGRAD_ROWS` rows, in
/// parallel, the partial products added in block order.
///
/// Why not one parallel GEMM: its output (Cout × k·k·Cin, often 30 × 270) is too small for the
/// `gemm` crate to split well; it ran slower on 2 threads than on 1 (W30's 75×75×30 3×3
/// convolution at batch 4: 5.8 ms against 4.2 ms). Fixed blocks keep the sum independent of the
/// number of threads.
pub(crate) fn weight_grad(dy: &[f32], n: usize, x: &[f32], k: usize, m: usize, dw: &mut [f32]) {
    let partials: Vec<Vec<f32>> = (0..m.div_ceil(WGRAD_ROWS))
        .into_par_iter()
        .map(|block| {
            let r0 = block * WGRAD_ROWS;
            let rows = WGRAD_ROWS.min(m - r0);
            let mut p = vec![0f32; n * k];
            sgemm(
                n,
                k,
                rows,
                &mut p,
                k,
                false,
                &dy[r0 * n..(r0 + rows) * n],
                1,
                n,
                &x[r0 * k..(r0 + rows) * k],
                k,
                1,
                false,
            );
            p
        })
        .collect();
    for p in partials {
        for (d, v) in dw[..n * k].iter_mut().zip(p) {
            *d += v;
        }
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
        weight_grad(dys, n, be.r(x), k, m, be.w(dw));
    }
    if let Some(db) = dbias {
        check_len("linear dbias", db, n);
        bias_grad(dys, n, be.w(db));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Several row blocks and a partial last one, against the sum written out in f64; the
    /// existing `dw` is added to, not overwritten.
    #[test]
    fn weight_grad_over_row_blocks_matches_the_plain_sum() {
        let (m, n, k) = (2 * WGRAD_ROWS + 77, 5, 9);
        let mut rng = Rng::new(7);
        let dy = rng.vec(m * n, |r| r.normal());
        let x = rng.vec(m * k, |r| r.normal());
        let start = rng.vec(n * k, |r| r.normal());
        let mut dw = start.clone();
        weight_grad(&dy, n, &x, k, m, &mut dw);
        for j in 0..n {
            for l in 0..k {
                let want = start[j * k + l] as f64
                    + (0..m)
                        .map(|r| dy[r * n + j] as f64 * x[r * k + l] as f64)
                        .sum::<f64>();
                let got = dw[j * k + l] as f64;
                assert!(
                    (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                    "dw[{j}, {l}] = {got}, want {want}"
                );
            }
        }
    }
}
