//! BatchNorm over `[rows, C]` (channels-last 2-D maps and 1-D feature batches alike), fused with
//! an optional residual add and ReLU: `y = relu?(γ·(x − μ)·rstd + β + residual?)`.
//!
//! Train mode normalises with the batch mean and biased variance and updates the running
//! statistics with the unbiased variance (PyTorch semantics); eval mode uses the running ones.
//! Reductions accumulate in f64.
//!
//! Every pass walks its block of rows in *periods*: the fewest whole rows whose values fill
//! whole 16-lane vectors (`period(c)` values; 240 for W30's 30-, 60- and 120-channel maps).
//! The per-channel parameters are tiled to one period, so element `j` of a period meets
//! channel `j mod C`'s values at index `j` and the inner loops run over hundreds of values
//! without a row boundary, a channel index or a remainder per row. Walking row by row instead
//! left W30's 30-channel maps at about 6 cycles per value: a 30-value loop is two vectors and a
//! scalar tail.

use rayon::prelude::*;

use super::elementwise::relu_value;
use super::simd::simd_fn;
use super::{check_len, CpuBackend};
use crate::backend::{BatchNormGrads, BatchNormTensors, NormShape};

/// Rows per parallel task; a multiple of every period's row count (at most `LANES`), so every
/// task's block starts on a period boundary.
const ROWS_PER_TASK: usize = 512;

/// Lanes of the widest vector the period is sized for (AVX-512, f32).
const LANES: usize = 16;

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Values in one period of `c` channels: `c · 16 / gcd(c, 16)`, whole rows and whole vectors.
pub(super) fn period(c: usize) -> usize {
    c * (LANES / gcd(c, LANES))
}

/// `p` (one value per channel) repeated over `len` values: element `j` is `p[j mod p.len()]`.
pub(super) fn tile<T: Copy>(p: &[T], len: usize) -> Vec<T> {
    p.iter().copied().cycle().take(len).collect()
}

/// Per-channel f64 sums over all rows of `x`. `add(block, acc)` adds a block of whole rows,
/// starting on a period boundary, into one accumulator per position of the period; each
/// block's accumulators are folded into channels in order, and the blocks' sums combined in
/// block order, so the result does not depend on thread scheduling.
fn channel_sums(x: &[f32], c: usize, add: impl Fn(&[f32], &mut [f64]) + Sync) -> Vec<f64> {
    let partial: Vec<Vec<f64>> = x
        .par_chunks(c * ROWS_PER_TASK)
        .map(|block| {
            let mut acc = vec![0f64; period(c)];
            add(block, &mut acc);
            fold_period(&acc, c)
        })
        .collect();
    sum_in_order(partial, c)
}

/// `Σ_r x[r, j]` per column of `x` (rows of `c`), in f64, in a fixed order.
pub(super) fn column_sums(x: &[f32], c: usize) -> Vec<f64> {
    channel_sums(x, c, add_values)
}

/// Per-channel mean and biased variance over all rows of `x`, in f64, reading `x` from memory
/// once: each block of `ROWS_PER_TASK` rows takes its sums, then its squares about its own
/// mean while it is still in cache, and the blocks' moments are combined in block order with
/// the pairwise update (Chan, Golub and LeVeque): with n rows so far of mean μ and n_b of mean
/// μ_b, `μ += (μ_b − μ)·n_b/(n + n_b)` and `M2 += M2_b + (μ_b − μ)²·n·n_b/(n + n_b)`. Still
/// a two-pass variance within every block, and the order is fixed by the shape.
fn channel_moments(x: &[f32], c: usize) -> (Vec<f64>, Vec<f64>) {
    let len = period(c);
    let parts: Vec<(f64, Vec<f64>, Vec<f64>)> = x
        .par_chunks(c * ROWS_PER_TASK)
        .map(|block| {
            let n = (block.len() / c) as f64;
            let mut acc = vec![0f64; len];
            add_values(block, &mut acc);
            let mean: Vec<f64> = fold_period(&acc, c).iter().map(|s| s / n).collect();
            acc.fill(0.0);
            add_centered_squares(block, &tile(&mean, len), &mut acc);
            (n, mean, fold_period(&acc, c))
        })
        .collect();
    let (mut count, mut mean, mut m2) = (0f64, vec![0f64; c], vec![0f64; c]);
    for (n, block_mean, block_m2) in parts {
        let total = count + n;
        for ch in 0..c {
            let delta = block_mean[ch] - mean[ch];
            mean[ch] += delta * n / total;
            m2[ch] += block_m2[ch] + delta * delta * count * n / total;
        }
        count = total;
    }
    let var = m2.iter().map(|v| v / count.max(1.0)).collect();
    (mean, var)
}

simd_fn! {
    /// `acc[j] += x[j]` over each period of `x` (`acc`: one period).
    fn add_values(x: &[f32], acc: &mut [f64]) {
        for seg in x.chunks(acc.len()) {
            for (a, v) in acc.iter_mut().zip(seg) {
                *a += *v as f64;
            }
        }
    }
}

simd_fn! {
    /// `acc[j] += (x[j] − mean[j])²` over each period of `x` (`mean` tiled, `acc`: one period).
    fn add_centered_squares(x: &[f32], mean: &[f64], acc: &mut [f64]) {
        let n = acc.len();
        for seg in x.chunks(n) {
            for ((a, v), m) in acc.iter_mut().zip(seg).zip(&mean[..n]) {
                let d = *v as f64 - m;
                *a += d * d;
            }
        }
    }
}

/// Per-channel values tiled over one period (see the module notes).
struct Tiled {
    mean: Vec<f32>,
    rstd: Vec<f32>,
    gamma: Vec<f32>,
    /// β in the forward; unused by the backward.
    beta: Vec<f32>,
}

simd_fn! {
    /// `y = relu?((x − μ)·rstd·γ + β + residual?)` over a block of whole rows.
    fn normalize_block(x: &[f32], y: &mut [f32], residual: Option<&[f32]>, relu: bool, p: &Tiled) {
        let len = p.mean.len();
        for (k, (ys, xs)) in y.chunks_mut(len).zip(x.chunks(len)).enumerate() {
            let n = ys.len();
            let (xs, mean, rstd) = (&xs[..n], &p.mean[..n], &p.rstd[..n]);
            let (gamma, beta) = (&p.gamma[..n], &p.beta[..n]);
            let res = residual.map(|r| &r[k * len..k * len + n]);
            // One pass writing each value once: a separate ReLU pass re-read what had just
            // been stored and stalled on it (75×75×30 forward: 110 → 87 µs without it).
            for j in 0..n {
                let mut v = (xs[j] - mean[j]) * rstd[j] * gamma[j] + beta[j];
                if let Some(r) = res {
                    v += r[j];
                }
                ys[j] = if relu { relu_value(v) } else { v };
            }
        }
    }
}

/// A period's accumulators folded into one sum per channel, row by row in order.
fn fold_period(acc: &[f64], c: usize) -> Vec<f64> {
    let mut sums = vec![0f64; c];
    for row in acc.chunks_exact(c) {
        for (s, v) in sums.iter_mut().zip(row) {
            *s += v;
        }
    }
    sums
}

/// Element-wise sum of equal-length vectors, in their order.
fn sum_in_order(parts: Vec<Vec<f64>>, len: usize) -> Vec<f64> {
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
        let (mean, var) = channel_moments(x, c);
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
    let len = period(c);
    let p = Tiled {
        mean: tile(&mean, len),
        rstd: tile(&rstd, len),
        gamma: tile(gamma, len),
        beta: tile(beta, len),
    };
    let y = be.w(t.y);
    y.par_chunks_mut(c * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(task, yb)| {
            let span = task * ROWS_PER_TASK * c..task * ROWS_PER_TASK * c + yb.len();
            let rb = residual.map(|r| &r[span.clone()]);
            normalize_block(&x[span], yb, rb, t.relu, &p);
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

simd_fn! {
    /// `ad[j] += dpre[j]`, `adx[j] += dpre[j]·x̂[j]` over each period of a block of whole rows
    /// (`dpre`: `dy` through the ReLU; `ad`, `adx`: one period each).
    fn add_grad_sums(
        x: &[f32],
        y: &[f32],
        dy: &[f32],
        relu: bool,
        p: &Tiled,
        ad: &mut [f64],
        adx: &mut [f64],
    ) {
        let len = ad.len();
        for ((xs, ys), dys) in x.chunks(len).zip(y.chunks(len)).zip(dy.chunks(len)) {
            let n = xs.len();
            let (ys, dys, ad, adx) = (&ys[..n], &dys[..n], &mut ad[..n], &mut adx[..n]);
            let (mean, rstd) = (&p.mean[..n], &p.rstd[..n]);
            for j in 0..n {
                let d = through_relu(relu, ys[j], dys[j]) as f64;
                ad[j] += d;
                adx[j] += d * ((xs[j] - mean[j]) * rstd[j]) as f64;
            }
        }
    }
}

/// The backward's per-channel terms tiled over one period: `d` = mean(dpre), `dx` =
/// mean(dpre·x̂) (train mode).
struct GradMeans {
    d: Vec<f32>,
    dx: Vec<f32>,
}

simd_fn! {
    /// Over a block of whole rows: `dresidual += dpre` and `dx += γ·rstd·(dpre − mean(dpre) −
    /// x̂·mean(dpre·x̂))` (train) or `γ·rstd·dpre` (eval).
    #[allow(clippy::too_many_arguments)]
    fn grad_inputs_block(
        x: &[f32],
        y: &[f32],
        dy: &[f32],
        dx: Option<&mut [f32]>,
        dres: Option<&mut [f32]>,
        relu: bool,
        train: bool,
        p: &Tiled,
        m: &GradMeans,
    ) {
        let (mut dx, mut dres) = (dx, dres);
        let len = p.mean.len();
        for o in (0..x.len()).step_by(len) {
            let o = o..(o + len).min(x.len());
            let n = o.len();
            let (ys, dys) = (&y[o.clone()], &dy[o.clone()]);
            if let Some(dr) = dres.as_deref_mut() {
                for ((d, yv), dv) in dr[o.clone()].iter_mut().zip(ys).zip(dys) {
                    *d += through_relu(relu, *yv, *dv);
                }
            }
            let Some(dx) = dx.as_deref_mut() else {
                continue;
            };
            let (dxs, xs) = (&mut dx[o.clone()], &x[o]);
            let (gamma, rstd) = (&p.gamma[..n], &p.rstd[..n]);
            if train {
                let (mean, mean_d, mean_dx) = (&p.mean[..n], &m.d[..n], &m.dx[..n]);
                for j in 0..n {
                    let d = through_relu(relu, ys[j], dys[j]);
                    let xhat = (xs[j] - mean[j]) * rstd[j];
                    dxs[j] += gamma[j] * rstd[j] * (d - mean_d[j] - xhat * mean_dx[j]);
                }
            } else {
                for j in 0..n {
                    let d = through_relu(relu, ys[j], dys[j]);
                    dxs[j] += gamma[j] * rstd[j] * d;
                }
            }
        }
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
    let relu = t.relu;
    let blocks = rows.div_ceil(ROWS_PER_TASK);
    let block = c * ROWS_PER_TASK;
    let len = period(c);
    let p = Tiled {
        mean: tile(be.r(t.save_mean), len),
        rstd: tile(be.r(t.save_rstd), len),
        gamma: tile(be.r(t.gamma), len),
        beta: Vec::new(),
    };
    let span = |task: usize| task * block..((task + 1) * block).min(rows * c);

    // Σ_rows dpre and Σ_rows dpre·x̂ per channel (f64, per fixed row block, combined in order).
    let need_sums = g.dgamma.is_some() || g.dbeta.is_some() || (s.train && g.dx.is_some());
    let (sum_d, sum_dx) = if need_sums {
        let partial: Vec<Vec<f64>> = (0..blocks)
            .into_par_iter()
            .map(|task| {
                let mut acc = vec![0f64; 2 * len];
                let (ad, adx) = acc.split_at_mut(len);
                let o = span(task);
                add_grad_sums(&x[o.clone()], &y[o.clone()], &dy[o], relu, &p, ad, adx);
                let mut sums = fold_period(ad, c);
                sums.extend(fold_period(adx, c));
                sums
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

    let inv_m = 1.0 / rows as f64;
    let mean_of = |sums: &[f64]| -> Vec<f32> {
        let means: Vec<f32> = sums.iter().map(|v| (v * inv_m) as f32).collect();
        tile(&means, len)
    };
    let m = GradMeans {
        d: mean_of(&sum_d),
        dx: mean_of(&sum_dx),
    };
    let dx_blocks = row_blocks(g.dx.map(|t| be.w(t)), c, blocks);
    let dr_blocks = row_blocks(g.dresidual.map(|t| be.w(t)), c, blocks);
    dx_blocks
        .into_par_iter()
        .zip(dr_blocks)
        .enumerate()
        .for_each(|(task, (dxb, drb))| {
            let o = span(task);
            grad_inputs_block(
                &x[o.clone()],
                &y[o.clone()],
                &dy[o],
                dxb,
                drb,
                relu,
                s.train,
                &p,
                &m,
            );
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::rng::Rng;
    use crate::tensor::Tensor;

    fn put(be: &mut CpuBackend, v: &[f32]) -> Tensor {
        let t = Tensor::new(be.alloc(v.len()).unwrap(), 0, v.len());
        be.upload(t, v).unwrap();
        t
    }

    fn get(be: &CpuBackend, t: Tensor) -> Vec<f32> {
        let mut v = vec![0f32; t.len];
        be.download(t, &mut v).unwrap();
        v
    }

    fn close(what: &str, got: &[f32], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let g = *g as f64;
            assert!(
                (g - w).abs() <= tol * (1.0 + w.abs()),
                "{what}[{i}] = {g}, want {w}"
            );
        }
    }

    /// Channel counts whose periods span 1 to 16 rows and row counts that end mid-period,
    /// inside the first block and past it (several blocks, a partial last one): the forward
    /// (train and eval) and every gradient against the formulas written out per channel in
    /// f64; the existing gradients are added to.
    #[test]
    fn block_moments_combine_to_the_two_pass_variance() {
        // Several blocks and a partial one; channels far from zero relative to their spread,
        // where a one-pass E[x²] − E[x]² would lose digits.
        let (rows, c) = (3 * ROWS_PER_TASK + 77, 5);
        let mut rng = Rng::new(5);
        let x = rng.vec(rows * c, |r| 1000.0 + 0.01 * r.normal());
        let (mean, var) = channel_moments(&x, c);
        for ch in 0..c {
            let col: Vec<f64> = (0..rows).map(|r| x[r * c + ch] as f64).collect();
            let m = col.iter().sum::<f64>() / rows as f64;
            let v = col.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / rows as f64;
            assert!((mean[ch] - m).abs() <= 1e-12 * m.abs(), "mean {ch}");
            assert!(
                (var[ch] - v).abs() <= 1e-9 * v,
                "var {ch}: {} vs {v}",
                var[ch]
            );
        }
    }

    #[test]
    fn periodic_passes_match_the_per_channel_formulas() {
        let mut rng = Rng::new(11);
        for (rows, c) in [
            (7, 1),
            (37, 3),
            (5, 30),
            (1100, 30),
            (513, 60),
            (19, 64),
            (1031, 120),
        ] {
            for (train, residual, relu) in [
                (true, true, true),
                (true, false, false),
                (false, true, true),
            ] {
                let what =
                    format!("rows {rows} c {c} train {train} residual {residual} relu {relu}");
                let mut be = CpuBackend::new();
                let n = rows * c;
                let xv = rng.vec(n, |r| 2.0 * r.normal() + 0.5);
                let rv = rng.vec(n, |r| r.normal());
                let gv = rng.vec(c, |r| 1.0 + 0.3 * r.normal());
                let bv = rng.vec(c, |r| 0.3 * r.normal());
                let run_mean = rng.vec(c, |r| 0.2 * r.normal());
                let run_var = rng.vec(c, |r| 1.0 + 0.5 * r.uniform());
                let t = BatchNormTensors {
                    x: put(&mut be, &xv),
                    gamma: put(&mut be, &gv),
                    beta: put(&mut be, &bv),
                    running_mean: put(&mut be, &run_mean),
                    running_var: put(&mut be, &run_var),
                    save_mean: put(&mut be, &vec![f32::NAN; c]),
                    save_rstd: put(&mut be, &vec![f32::NAN; c]),
                    residual: residual.then(|| put(&mut be, &rv)),
                    relu,
                    y: put(&mut be, &vec![f32::NAN; n]),
                };
                let s = NormShape {
                    rows,
                    c,
                    eps: 1e-5,
                    momentum: 0.1,
                    train,
                };
                forward(&be, &s, &t);

                // Per channel in f64: the statistics, then y.
                let (mut mean, mut rstd) = (vec![0f64; c], vec![0f64; c]);
                for ch in 0..c {
                    let col = (0..rows).map(|r| xv[r * c + ch] as f64);
                    if train {
                        let m = col.clone().sum::<f64>() / rows as f64;
                        let var = col.map(|v| (v - m) * (v - m)).sum::<f64>() / rows as f64;
                        mean[ch] = m;
                        rstd[ch] = 1.0 / (var + 1e-5).sqrt();
                    } else {
                        mean[ch] = run_mean[ch] as f64;
                        rstd[ch] = 1.0 / (run_var[ch] as f64 + 1e-5).sqrt();
                    }
                }
                let xhat = |i: usize| (xv[i] as f64 - mean[i % c]) * rstd[i % c];
                let pre: Vec<f64> = (0..n)
                    .map(|i| {
                        xhat(i) * gv[i % c] as f64
                            + bv[i % c] as f64
                            + if residual { rv[i] as f64 } else { 0.0 }
                    })
                    .collect();
                let y: Vec<f64> = pre
                    .iter()
                    .map(|&v| if relu { v.max(0.0) } else { v })
                    .collect();
                close(
                    &format!("{what}: mean"),
                    &get(&be, t.save_mean),
                    &mean,
                    1e-5,
                );
                close(
                    &format!("{what}: rstd"),
                    &get(&be, t.save_rstd),
                    &rstd,
                    1e-5,
                );
                close(&format!("{what}: y"), &get(&be, t.y), &y, 1e-4);

                let dyv = rng.vec(n, |r| r.normal());
                let start_dx = rng.vec(n, |r| r.normal());
                let start_dr = rng.vec(n, |r| r.normal());
                let start_p = rng.vec(2 * c, |r| r.normal());
                let g = BatchNormGrads {
                    dy: put(&mut be, &dyv),
                    dx: Some(put(&mut be, &start_dx)),
                    dgamma: Some(put(&mut be, &start_p[..c])),
                    dbeta: Some(put(&mut be, &start_p[c..])),
                    dresidual: residual.then(|| put(&mut be, &start_dr)),
                };
                backward(&be, &s, &t, &g);
                // dpre = dy through the ReLU (judged on the stored y, as the kernel does).
                let yv = get(&be, t.y);
                let dpre: Vec<f64> = (0..n)
                    .map(|i| {
                        if relu && yv[i] <= 0.0 {
                            0.0
                        } else {
                            dyv[i] as f64
                        }
                    })
                    .collect();
                let (mut sd, mut sdx) = (vec![0f64; c], vec![0f64; c]);
                for i in 0..n {
                    sd[i % c] += dpre[i];
                    sdx[i % c] += dpre[i] * xhat(i);
                }
                let dgamma: Vec<f64> = (0..c).map(|ch| start_p[ch] as f64 + sdx[ch]).collect();
                let dbeta: Vec<f64> = (0..c).map(|ch| start_p[c + ch] as f64 + sd[ch]).collect();
                let dx: Vec<f64> = (0..n)
                    .map(|i| {
                        let ch = i % c;
                        let k = gv[ch] as f64 * rstd[ch];
                        let d = if train {
                            dpre[i] - sd[ch] / rows as f64 - xhat(i) * sdx[ch] / rows as f64
                        } else {
                            dpre[i]
                        };
                        start_dx[i] as f64 + k * d
                    })
                    .collect();
                close(
                    &format!("{what}: dgamma"),
                    &get(&be, g.dgamma.unwrap()),
                    &dgamma,
                    1e-4,
                );
                close(
                    &format!("{what}: dbeta"),
                    &get(&be, g.dbeta.unwrap()),
                    &dbeta,
                    1e-4,
                );
                close(&format!("{what}: dx"), &get(&be, g.dx.unwrap()), &dx, 1e-4);
                if let Some(dr) = g.dresidual {
                    let want: Vec<f64> = (0..n).map(|i| start_dr[i] as f64 + dpre[i]).collect();
                    close(&format!("{what}: dresidual"), &get(&be, dr), &want, 1e-6);
                }
            }
        }
    }
}
