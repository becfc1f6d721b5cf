//! Fully connected layers: `y[m, n] = x[m, k] · w[n, k]ᵀ + bias[n]` (also every 1×1 convolution).

use rayon::prelude::*;

use super::elementwise::BiasAct;
use super::simd::simd_fn;
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
    if n == 1 {
        // A mask head's single output: one dot product per row.
        let (xs, ws) = (be.r(x), be.r(w));
        ys.par_chunks_mut(ROWS_PER_TASK)
            .zip(xs.par_chunks(ROWS_PER_TASK * k))
            .for_each(|(y, x)| dot_rows(x, ws, y));
    } else {
        // B[l, j] = w[j, l]: row stride 1, column stride k.
        sgemm(m, n, k, ys, n, false, be.r(x), k, 1, be.r(w), 1, k, true);
    }
    if let Some(b) = bias {
        check_len("linear bias", b, n);
        BiasAct::new(be, y, b, None, false).apply_parallel(ys, 0);
    }
}

/// `db[j] += Σ_r dy[r, j]`, accumulated in f64 in a fixed order (BatchNorm's column sums).
pub fn bias_grad(dy: &[f32], n: usize, db: &mut [f32]) {
    for (d, s) in db.iter_mut().zip(super::norm::column_sums(dy, n)) {
        *d += s as f32;
    }
}

/// Rows per task of the single-output paths (n = 1), where the `gemm` crate's products
/// are slow: the `tiny` preset's mask head (8192 × 320 → 1) took 0.8 ms forward and 1.6 ms
/// backward a step through it.
const ROWS_PER_TASK: usize = 1024;

simd_fn! {
    /// `y[r] = x[r, ..] · w` for a block of rows of `w.len()` values, in 16 partial sums per
    /// row (added in a fixed order).
    fn dot_rows(x: &[f32], w: &[f32], y: &mut [f32]) {
        const LANES: usize = 16;
        for (row, out) in x.chunks_exact(w.len()).zip(y.iter_mut()) {
            let mut acc = [0f32; LANES];
            let (xv, wv) = (row.chunks_exact(LANES), w.chunks_exact(LANES));
            let tail: f32 = xv.remainder().iter().zip(wv.remainder()).map(|(a, b)| a * b).sum();
            for (a, b) in xv.zip(wv) {
                for l in 0..LANES {
                    acc[l] += a[l] * b[l];
                }
            }
            *out = acc.iter().sum::<f32>() + tail;
        }
    }
}

simd_fn! {
    /// `out[r, ..] += d[r] · v` for every row r of `out` (rows of `v.len()` values).
    fn add_scaled_rows(d: &[f32], v: &[f32], out: &mut [f32]) {
        for (row, dr) in out.chunks_exact_mut(v.len()).zip(d) {
            for (o, x) in row.iter_mut().zip(v) {
                *o += dr * x;
            }
        }
    }
}

simd_fn! {
    /// `acc += Σ_r d[r] · x[r, ..]` over the rows of `x` (rows of `acc.len()` values), in row
    /// order.
    fn add_weighted_rows(d: &[f32], x: &[f32], acc: &mut [f32]) {
        for (row, dr) in x.chunks_exact(acc.len()).zip(d) {
            for (a, v) in acc.iter_mut().zip(row) {
                *a += dr * v;
            }
        }
    }
}

/// Rows per partial product of [`weight_grad`]: large enough for an efficient GEMM, small
/// enough that a W30 layer's rows make several.
const WGRAD_ROWS: usize = 2048;

/// Independent products [`weight_grad`] aims for: where the rows make fewer blocks than this,
/// the columns are cut into slices too.
const WGRAD_MIN_TASKS: usize = 8;

/// Narrowest column slice worth its own product.
const WGRAD_MIN_COLS: usize = 64;

/// `dw[n, k] += dy[m, n]ᵀ · x[m, k]`: one product per fixed block of `WGRAD_ROWS` rows and
/// slice of columns, in parallel, the partial products added in block order.
///
/// Why not one parallel GEMM: its output (Cout × k·k·Cin, often 30 × 270) is too small for the
/// `gemm` crate to split well; it ran slower on 2 threads than on 1 (W30's 75×75×30 3×3
/// convolution at batch 4: 5.8 ms against 4.2 ms). Why the column slices: the deep branches'
/// maps are small (19×19 at batch 4 is 1444 rows, one block), and one block alone ran on one
/// thread. The blocks and slices depend on the shape alone, so the sum does not depend on the
/// number of threads.
pub(crate) fn weight_grad(dy: &[f32], n: usize, x: &[f32], k: usize, m: usize, dw: &mut [f32]) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let blocks = m.div_ceil(WGRAD_ROWS);
    if n == 1 {
        // One output: a weighted sum of x's rows per block, the blocks added in order.
        let partials: Vec<Vec<f32>> = dy[..m]
            .par_chunks(WGRAD_ROWS)
            .zip(x[..m * k].par_chunks(WGRAD_ROWS * k))
            .map(|(d, xb)| {
                let mut p = vec![0f32; k];
                add_weighted_rows(d, xb, &mut p);
                p
            })
            .collect();
        for p in partials {
            for (d, v) in dw[..k].iter_mut().zip(&p) {
                *d += v;
            }
        }
        return;
    }
    let slices = WGRAD_MIN_TASKS
        .div_ceil(blocks)
        .min(k.div_ceil(WGRAD_MIN_COLS))
        .max(1);
    let width = k.div_ceil(slices);
    // The product of task t: block t / slices, columns [c0, c0 + cols) for slice t % slices.
    let cols_of = |t: usize| {
        let c0 = (t % slices) * width;
        (c0, width.min(k - c0))
    };
    let partials: Vec<Vec<f32>> = (0..blocks * slices)
        .into_par_iter()
        .map(|t| {
            let r0 = (t / slices) * WGRAD_ROWS;
            let rows = WGRAD_ROWS.min(m - r0);
            let (c0, cols) = cols_of(t);
            // p[n, cols] = dy[rows, n]ᵀ · x[rows, c0..c0 + cols]
            let mut p = vec![0f32; n * cols];
            sgemm(
                n,
                cols,
                rows,
                &mut p,
                cols,
                false,
                &dy[r0 * n..(r0 + rows) * n],
                1,
                n,
                &x[r0 * k + c0..(r0 + rows) * k],
                k,
                1,
                false,
            );
            p
        })
        .collect();
    for (t, p) in partials.into_iter().enumerate() {
        let (c0, cols) = cols_of(t);
        for (drow, prow) in dw[..n * k].chunks_exact_mut(k).zip(p.chunks_exact(cols)) {
            for (d, v) in drow[c0..c0 + cols].iter_mut().zip(prow) {
                *d += v;
            }
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
        let (dxs, ws) = (be.w(dx), be.r(w));
        if n == 1 {
            // dx[r, ..] += dy[r] · w
            dxs.par_chunks_mut(ROWS_PER_TASK * k)
                .zip(dys.par_chunks(ROWS_PER_TASK))
                .for_each(|(dx, d)| add_scaled_rows(d, ws, dx));
        } else {
            // dx[m, k] += dy[m, n] · w[n, k]
            sgemm(m, k, n, dxs, k, true, dys, n, 1, ws, k, 1, true);
        }
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

    /// Several row blocks and a partial last one; one block cut into column slices (a slice
    /// narrower than the rest at the end); against the sum written out in f64. The existing
    /// `dw` is added to, not overwritten.
    #[test]
    fn weight_grad_over_row_blocks_and_column_slices_matches_the_plain_sum() {
        for (m, n, k) in [
            (2 * WGRAD_ROWS + 77, 5, 9),
            (700, 7, 301),
            (WGRAD_ROWS + 3, 3, 150),
            // One output (its own path).
            (2 * WGRAD_ROWS + 5, 1, 37),
        ] {
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
                        "{m}×{n}×{k}: dw[{j}, {l}] = {got}, want {want}"
                    );
                }
            }
        }
    }

    /// The single-output forward and data gradient (their own loops) against the sums written
    /// out in f64, over several row tasks, a partial last one and a row length that is not a
    /// multiple of 16; with a bias, and dx added to.
    #[test]
    fn single_output_forward_and_data_gradient_match_the_plain_sums() {
        use crate::backend::Backend;
        let (m, k) = (2 * ROWS_PER_TASK + 19, 37);
        let mut rng = Rng::new(11);
        let x = rng.vec(m * k, |r| r.normal());
        let w = rng.vec(k, |r| r.normal());
        let b = rng.vec(1, |r| r.normal());
        let dy = rng.vec(m, |r| r.normal());
        let dx0 = rng.vec(m * k, |r| r.normal());
        let mut be = CpuBackend::new();
        let mut put = |v: &[f32]| {
            let t = Tensor::new(be.alloc(v.len()).unwrap(), 0, v.len());
            be.upload(t, v).unwrap();
            t
        };
        let (xt, wt, bt, dyt, dxt) = (put(&x), put(&w), put(&b), put(&dy), put(&dx0));
        let yt = put(&vec![f32::NAN; m]);
        forward(&be, m, k, 1, xt, wt, Some(bt), yt);
        backward(&be, m, k, 1, xt, wt, dyt, Some(dxt), None, None);
        let (y, dx) = (be.r(yt), be.r(dxt));
        for r in 0..m {
            let want = b[0] as f64
                + (0..k)
                    .map(|l| x[r * k + l] as f64 * w[l] as f64)
                    .sum::<f64>();
            assert!(
                (y[r] as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
                "y[{r}] = {}, want {want}",
                y[r]
            );
            for l in 0..k {
                let want = dx0[r * k + l] as f64 + dy[r] as f64 * w[l] as f64;
                let got = dx[r * k + l] as f64;
                assert!(
                    (got - want).abs() <= 1e-6 * (1.0 + want.abs()),
                    "dx[{r}, {l}]"
                );
            }
        }
    }
}
