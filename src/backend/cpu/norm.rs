//! BatchNorm over `[rows, C]` (channels-last 2-D maps and 1-D feature batches alike), fused with
//! an optional residual add and ReLU: `y = relu?(γ·(x − μ)·rstd + β + residual?)`.
//!
//! Train mode normalises with the batch mean and biased variance and updates the running
//! statistics with the unbiased variance (PyTorch semantics); eval mode uses the running ones.
//! Reductions accumulate in f64.

use rayon::prelude::*;

use super::{check_len, CpuBackend};
use crate::backend::{BatchNormGrads, BatchNormTensors, NormShape};

const ROWS_PER_TASK: usize = 512;

/// Per-channel sums of `f(channel, value)` over all rows, in f64. Partial sums per fixed block
/// of rows are combined in block order, so the result does not depend on thread scheduling.
fn channel_sums(x: &[f32], c: usize, f: impl Fn(usize, f32) -> f64 + Sync) -> Vec<f64> {
    let partial: Vec<Vec<f64>> = x
        .par_chunks(c * ROWS_PER_TASK)
        .map(|chunk| {
            let mut s = vec![0f64; c];
            for row in chunk.chunks(c) {
                for (ch, v) in row.iter().enumerate() {
                    s[ch] += f(ch, *v);
                }
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
    let x = be.r(t.x);
    let (mean, rstd): (Vec<f32>, Vec<f32>) = if s.train {
        let sum = channel_sums(x, c, |_, v| v as f64);
        let mean: Vec<f64> = sum.iter().map(|v| v / rows as f64).collect();
        let sq = channel_sums(x, c, |ch, v| {
            let d = v as f64 - mean[ch];
            d * d
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
    let y = be.w(t.y);
    y.par_chunks_mut(c * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(task, ychunk)| {
            let r0 = task * ROWS_PER_TASK;
            for (i, yrow) in ychunk.chunks_mut(c).enumerate() {
                let o = (r0 + i) * c;
                for ch in 0..c {
                    let mut v = (x[o + ch] - mean[ch]) * rstd[ch] * gamma[ch] + beta[ch];
                    if let Some(r) = residual {
                        v += r[o + ch];
                    }
                    if t.relu {
                        v = if v < 0.0 { 0.0 } else { v }; // keeps NaN
                    }
                    yrow[ch] = v;
                }
            }
        });
}

pub fn backward(be: &CpuBackend, s: &NormShape, t: &BatchNormTensors, g: &BatchNormGrads) {
    let (rows, c) = (s.rows, s.c);
    check_len("bn dy", g.dy, rows * c);
    let (x, y, dy) = (be.r(t.x), be.r(t.y), be.r(g.dy));
    let (mean, rstd, gamma) = (be.r(t.save_mean), be.r(t.save_rstd), be.r(t.gamma));
    let relu = t.relu;
    // The gradient reaching the affine output (after undoing the ReLU).
    let dpre = |i: usize| -> f32 {
        if relu && y[i] <= 0.0 {
            0.0
        } else {
            dy[i]
        }
    };
    let xhat = |i: usize, ch: usize| (x[i] - mean[ch]) * rstd[ch];
    let need_sums = g.dgamma.is_some() || (s.train && g.dx.is_some());
    let (sum_d, sum_dx) = if need_sums {
        let partial: Vec<Vec<f64>> = (0..rows.div_ceil(ROWS_PER_TASK))
            .into_par_iter()
            .map(|task| {
                let mut acc = vec![0f64; 2 * c];
                for r in task * ROWS_PER_TASK..((task + 1) * ROWS_PER_TASK).min(rows) {
                    for ch in 0..c {
                        let i = r * c + ch;
                        let d = dpre(i) as f64;
                        acc[ch] += d;
                        acc[c + ch] += d * xhat(i, ch) as f64;
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
        check_len("bn dgamma", dg, c);
        for (d, s) in be.w(dg).iter_mut().zip(&sum_dx) {
            *d += *s as f32;
        }
    }
    if let Some(db) = g.dbeta {
        check_len("bn dbeta", db, c);
        let sums: Vec<f64> = if need_sums {
            sum_d.clone()
        } else {
            (0..c)
                .map(|ch| (0..rows).map(|r| dpre(r * c + ch) as f64).sum())
                .collect()
        };
        for (d, s) in be.w(db).iter_mut().zip(&sums) {
            *d += *s as f32;
        }
    }
    if let Some(dr) = g.dresidual {
        check_len("bn dresidual", dr, rows * c);
        be.w(dr)
            .par_chunks_mut(c)
            .with_min_len(ROWS_PER_TASK)
            .enumerate()
            .for_each(|(r, row)| {
                for (ch, d) in row.iter_mut().enumerate() {
                    *d += dpre(r * c + ch);
                }
            });
    }
    if let Some(dx) = g.dx {
        check_len("bn dx", dx, rows * c);
        let inv_m = 1.0 / rows as f64;
        let mean_d: Vec<f32> = sum_d.iter().map(|v| (v * inv_m) as f32).collect();
        let mean_dx: Vec<f32> = sum_dx.iter().map(|v| (v * inv_m) as f32).collect();
        be.w(dx)
            .par_chunks_mut(c)
            .with_min_len(ROWS_PER_TASK)
            .enumerate()
            .for_each(|(r, row)| {
                for (ch, d) in row.iter_mut().enumerate() {
                    let i = r * c + ch;
                    let k = gamma[ch] * rstd[ch];
                    *d += if s.train {
                        k * (dpre(i) - mean_d[ch] - xhat(i, ch) * mean_dx[ch])
                    } else {
                        k * dpre(i)
                    };
                }
            });
    }
}
