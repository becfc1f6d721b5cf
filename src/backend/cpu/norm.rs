//! BatchNorm over `[rows, C]` (channels-last 2-D maps and 1-D feature batches alike), fused with
//! an optional residual add and ReLU: `y = relu?(γ·(x − μ)·rstd + β + residual?)`.
//!
//! Train mode normalises with the batch mean and biased variance and updates the running
//! statistics with the unbiased variance (PyTorch semantics); eval mode uses the running ones.
//! Reductions accumulate in f64.
//!
//! Every pass walks whole rows with all its per-channel slices cut to length C first, so the
//! inner loops over channels carry no bounds checks and no branches and vectorise; the
//! options (residual, ReLU, train) are decided once per row, not per element.

use rayon::prelude::*;

use super::elementwise::relu_slice;
use super::{check_len, CpuBackend};
use crate::backend::{BatchNormGrads, BatchNormTensors, NormShape};

const ROWS_PER_TASK: usize = 512;

/// Per-channel f64 sums over all rows, `add_row(row, sums)` adding one row of `c` values. Partial
/// sums per fixed block of rows are combined in block order, so the result does not depend on
/// thread scheduling.
fn channel_sums(x: &[f32], c: usize, add_row: impl Fn(&[f32], &mut [f64]) + Sync) -> Vec<f64> {
    let partial: Vec<Vec<f64>> = x
        .par_chunks(c * ROWS_PER_TASK)
        .map(|chunk| {
            let mut s = vec![0f64; c];
            for row in chunk.chunks_exact(c) {
                add_row(row, &mut s);
            }
            s
        })
        .collect();
    sum_in_order(partial, c)
}

/// Element-wise sum of equal-length vectors, in their order.
pub(crate) fn sum_in_order(parts: Vec<Vec<f64>>, len: usize) -> Vec<f64> {
    let mut total = vec![0f64; len];
    for p in parts {
        for (t, v) in total.iter_mut().zip(p) {
            *t += v;
        }
    }
    total
}

/// `out`'s blocks of `ROWS_PER_TASK` rows (of `c` values), or `blocks` Nones without `out`: lets
/// one parallel loop write optional outputs.
fn row_blocks(out: Option<&mut [f32]>, c: usize, blocks: usize) -> Vec<Option<&mut [f32]>> {
    match out {
        Some(o) => o.chunks_mut(c * ROWS_PER_TASK).map(Some).collect(),
        None => (0..blocks).map(|_| None).collect(),
    }
}

pub fn forward(be: &CpuBackend, s: &NormShape, t: &BatchNormTensors) {
    let (rows, c) = (s.rows, s.c);
    check_len("bn x", t.x, rows * c);
    check_len("bn y", t.y, rows * c);
    for p in [
        t.gamma,
        t.beta,
        t.running_mean,
        t.running_var,
        t.save_mean,
        t.save_rstd,
    ] {
        check_len("bn parameter", p, c);
    }
    if c == 0 {
        return;
    }
    let x = be.r(t.x);
    let (mean, rstd): (Vec<f32>, Vec<f32>) = if s.train {
        let sum = channel_sums(x, c, |row, s| {
            for (acc, v) in s.iter_mut().zip(row) {
                *acc += *v as f64;
            }
        });
        let mean: Vec<f64> = sum.iter().map(|v| v / rows as f64).collect();
        let sq = channel_sums(x, c, |row, s| {
            for ((acc, v), m) in s.iter_mut().zip(row).zip(&mean) {
                let d = *v as f64 - m;
                *acc += d * d;
            }
        });
        let var: Vec<f64> = sq.iter().map(|v| v / rows as f64).collect();
        let (rm, rv) = (be.w(t.running_mean), be.w(t.running_var));
        let mom = s.momentum as f64;
        for ch in 0..c {
            let unbiased = if rows > 1 {
                var[ch] * rows as f64 / (rows - 1) as f64
            } else {
                var[ch]
            };
            rm[ch] = ((1.0 - mom) * rm[ch] as f64 + mom * mean[ch]) as f32;
            rv[ch] = ((1.0 - mom) * rv[ch] as f64 + mom * unbiased) as f32;
        }
        (
            mean.iter().map(|m| *m as f32).collect(),
            var.iter()
                .map(|v| (1.0 / (v + s.eps as f64).sqrt()) as f32)
                .collect(),
        )
    } else {
        (
            be.r(t.running_mean).to_vec(),
            be.r(t.running_var)
                .iter()
                .map(|v| 1.0 / (v + s.eps).sqrt())
                .collect(),
        )
    };
    be.w(t.save_mean).copy_from_slice(&mean);
    be.w(t.save_rstd).copy_from_slice(&rstd);
    let (gamma, beta) = (be.r(t.gamma), be.r(t.beta));
    let residual = t.residual.map(|r| {
        check_len("bn residual", r, rows * c);
        be.r(r)
    });
    let relu = t.relu;
    let y = be.w(t.y);
    y.par_chunks_mut(c * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(task, ychunk)| {
            let o = task * ROWS_PER_TASK * c;
            let xchunk = &x[o..o + ychunk.len()];
            let rchunk = residual.map(|r| &r[o..o + ychunk.len()]);
            for (row, (yr, xr)) in ychunk
                .chunks_exact_mut(c)
                .zip(xchunk.chunks_exact(c))
                .enumerate()
            {
                let (xr, mean, rstd, gamma, beta) =
                    (&xr[..c], &mean[..c], &rstd[..c], &gamma[..c], &beta[..c]);
                for ch in 0..c {
                    yr[ch] = (xr[ch] - mean[ch]) * rstd[ch] * gamma[ch] + beta[ch];
                }
                if let Some(rc) = rchunk {
                    for (v, r) in yr.iter_mut().zip(&rc[row * c..(row + 1) * c]) {
                        *v += r;
                    }
                }
                if relu {
                    relu_slice(yr);
                }
            }
        });
}

/// The gradient reaching the affine output, after undoing the ReLU (`y ≤ 0`: none).
#[inline(always)]
fn through_relu(relu: bool, y: f32, dy: f32) -> f32 {
    if relu && y <= 0.0 {
        0.0
    } else {
        dy
    }
}

pub fn backward(be: &CpuBackend, s: &NormShape, t: &BatchNormTensors, g: &BatchNormGrads) {
    let (rows, c) = (s.rows, s.c);
    check_len("bn dy", g.dy, rows * c);
    if let Some(dg) = g.dgamma {
        check_len("bn dgamma", dg, c);
    }
    if let Some(db) = g.dbeta {
        check_len("bn dbeta", db, c);
    }
    if let Some(dr) = g.dresidual {
        check_len("bn dresidual", dr, rows * c);
    }
    if let Some(dx) = g.dx {
        check_len("bn dx", dx, rows * c);
    }
    if let (Some(dx), Some(dr)) = (g.dx, g.dresidual) {
        assert!(!dx.overlaps(&dr), "bn dx {dx:?} aliases dresidual {dr:?}");
    }
    if rows == 0 || c == 0 {
        return;
    }
    let (x, y, dy) = (be.r(t.x), be.r(t.y), be.r(g.dy));
    let (mean, rstd, gamma) = (be.r(t.save_mean), be.r(t.save_rstd), be.r(t.gamma));
    let relu = t.relu;
    let blocks = rows.div_ceil(ROWS_PER_TASK);
    let block = c * ROWS_PER_TASK;

    // Σ_rows dpre and Σ_rows dpre·x̂ per channel (f64, per fixed row block, combined in order).
    let need_sums = g.dgamma.is_some() || g.dbeta.is_some() || (s.train && g.dx.is_some());
    let (sum_d, sum_dx) = if need_sums {
        let partial: Vec<Vec<f64>> = (0..blocks)
            .into_par_iter()
            .map(|task| {
                let span = task * block..((task + 1) * block).min(rows * c);
                let mut acc = vec![0f64; 2 * c];
                let (ad, adx) = acc.split_at_mut(c);
                let (ad, adx, mean, rstd) = (&mut ad[..c], &mut adx[..c], &mean[..c], &rstd[..c]);
                for ((xr, yr), dyr) in x[span.clone()]
                    .chunks_exact(c)
                    .zip(y[span.clone()].chunks_exact(c))
                    .zip(dy[span].chunks_exact(c))
                {
                    let (xr, yr, dyr) = (&xr[..c], &yr[..c], &dyr[..c]);
                    for ch in 0..c {
                        let d = through_relu(relu, yr[ch], dyr[ch]) as f64;
                        ad[ch] += d;
                        adx[ch] += d * ((xr[ch] - mean[ch]) * rstd[ch]) as f64;
                    }
                }
                acc
            })
            .collect();
        let sums = sum_in_order(partial, 2 * c);
        (sums[..c].to_vec(), sums[c..].to_vec())
    } else {
        (Vec::new(), Vec::new())
    };
    if let Some(dg) = g.dgamma {
        for (d, s) in be.w(dg).iter_mut().zip(&sum_dx) {
            *d += *s as f32;
        }
    }
    if let Some(db) = g.dbeta {
        for (d, s) in be.w(db).iter_mut().zip(&sum_d) {
            *d += *s as f32;
        }
    }
    if g.dx.is_none() && g.dresidual.is_none() {
        return;
    }

    // dresidual += dpre and dx += γ·rstd·(dpre − mean(dpre) − x̂·mean(dpre·x̂)) (train) or
    // γ·rstd·dpre (eval), in one pass over x, y and dy.
    let inv_m = 1.0 / rows as f64;
    let mean_d: Vec<f32> = sum_d.iter().map(|v| (v * inv_m) as f32).collect();
    let mean_dx: Vec<f32> = sum_dx.iter().map(|v| (v * inv_m) as f32).collect();
    let train = s.train;
    let dx_blocks = row_blocks(g.dx.map(|t| be.w(t)), c, blocks);
    let dr_blocks = row_blocks(g.dresidual.map(|t| be.w(t)), c, blocks);
    dx_blocks
        .into_par_iter()
        .zip(dr_blocks)
        .enumerate()
        .for_each(|(task, (mut dxb, mut drb))| {
            let span = task * block..((task + 1) * block).min(rows * c);
            let rows_here = span.len() / c;
            let (xb, yb, dyb) = (&x[span.clone()], &y[span.clone()], &dy[span]);
            for r in 0..rows_here {
                let o = r * c..(r + 1) * c;
                let (yr, dyr) = (&yb[o.clone()], &dyb[o.clone()]);
                if let Some(drb) = drb.as_deref_mut() {
                    for ((d, yv), dv) in drb[o.clone()].iter_mut().zip(yr).zip(dyr) {
                        *d += through_relu(relu, *yv, *dv);
                    }
                }
                let Some(dxb) = dxb.as_deref_mut() else {
                    continue;
                };
                let (dxr, xr) = (&mut dxb[o.clone()], &xb[o]);
                let (gamma, rstd) = (&gamma[..c], &rstd[..c]);
                if train {
                    let (mean, mean_d, mean_dx) = (&mean[..c], &mean_d[..c], &mean_dx[..c]);
                    for ch in 0..c {
                        let d = through_relu(relu, yr[ch], dyr[ch]);
                        let xhat = (xr[ch] - mean[ch]) * rstd[ch];
                        dxr[ch] += gamma[ch] * rstd[ch] * (d - mean_d[ch] - xhat * mean_dx[ch]);
                    }
                } else {
                    for ch in 0..c {
                        let d = through_relu(relu, yr[ch], dyr[ch]);
                        dxr[ch] += gamma[ch] * rstd[ch] * d;
                    }
                }
            }
        });
}
