//! The relation map of SPEC §4.1 on the CPU, one image and one pair of pixel tiles at a time,
//! using the symmetry of the scores (`s_ij = s_ji`) so each score is computed once.
//!
//! Per image: `q = f / max(‖f‖, 1e-12)` ([N, C]). For tiles I ≤ J of T pixels:
//! `S_IJ = q_I · q_Jᵀ` (one GEMM), `E = exp(S − 1)` (fixed shift: s ≤ 1). Row i ∈ I adds
//! `E_ij` to `l_i` and to the bins containing j; for I ≠ J row j ∈ J also adds `E_ij` to `l_j`
//! and the bins containing i. Then `P_ib = bin_ib / (l_i·|b|)`. Only T×T scores exist at once.
//!
//! Backward (G = ∂L/∂P): `dS_ij = R_ij (g_ij − D_i)` with `R_ij = e_ij / l_i`,
//! `g_ij = Σ_{b∋j} G_ib/|b|`, `D_i = Σ_b P_ib G_ib`. For tiles I ≤ J the symmetric tile
//! `M_ij = dS_ij + dS_ji` (both from the one recomputed score) gives `dq_I += M·q_J` and, for
//! I ≠ J, `dq_J += Mᵀ·q_I`, so `dq_i = Σ_j (dS_ij + dS_ji) q_j`. Tiles run in a fixed order
//! (deterministic). Finally `df_i += (dq_i − q_i (q_i·dq_i)) / ‖f_i‖` (below 1e-12: `dq_i/1e-12`).
//! Cost: half a score GEMM forward; one and a half backward (instead of one and three).

use rayon::prelude::*;

use super::exp::exp_shifted_inplace;
use super::{check_len, disjoint, sgemm, CpuBackend};
use crate::backend::{adaptive_bin, RelationShape, MAX_BINS_SIDE};
use crate::tensor::Tensor;

/// Pixels per tile: large enough for an efficient GEMM, small enough for the cache.
const TILE: usize = 512;

/// Columns per task of [`ScoreTile::add_to_cols`].
const COLS_PER_TASK: usize = 64;

/// Bin geometry of one image. Along each side a position lies in one bin or in two neighbouring
/// ones; that gives `2n − 1` classes per side (`c < n`: bin `c` alone; `c ≥ n`: bins `c − n`
/// and `c − n + 1`), and `K = (2n − 1)²` classes of pixels, each with its list of bins. Sums
/// over "the bins containing pixel j" become per-class sums, and a row of pixels splits into a
/// few runs of one class each.
struct Geometry {
    w: usize,
    /// Classes per side, `2n − 1`.
    cs: usize,
    /// `1 / |b|` per bin `v·n + u`.
    inv_size: Vec<f32>,
    /// Class of every pixel, `vclass·cs + uclass`.
    class: Vec<u16>,
    vclass: Vec<usize>,
    /// Runs of constant x-class along a row: `(x0, x1, uclass)`.
    runs: Vec<(usize, usize, usize)>,
    /// The bins of every class.
    class_bins: Vec<Vec<usize>>,
}

impl Geometry {
    fn new(h: usize, w: usize, n: usize) -> Geometry {
        assert!(n <= MAX_BINS_SIDE, "relation: n = {n} > {MAX_BINS_SIDE}");
        // With a side at least n long, a position lies in one bin or two neighbouring ones;
        // shorter sides (three bins per position) are outside the operation's contract.
        assert!(
            h >= n && w >= n,
            "relation: a {h}×{w} map is smaller than the n = {n} bins"
        );
        let side_class = |len: usize| -> Vec<usize> {
            let bins: Vec<_> = (0..n).map(|u| adaptive_bin(u, len, n)).collect();
            (0..len)
                .map(|p| {
                    let first = bins.iter().position(|&(a, b)| a <= p && p < b).unwrap();
                    let last = bins.iter().rposition(|&(a, b)| a <= p && p < b).unwrap();
                    debug_assert!(last <= first + 1);
                    if last == first {
                        first
                    } else {
                        n + first
                    }
                })
                .collect()
        };
        let cs = 2 * n - 1;
        let vclass = side_class(h);
        let uclass = side_class(w);
        let class = (0..h * w)
            .map(|p| (vclass[p / w] * cs + uclass[p % w]) as u16)
            .collect();
        let mut runs = Vec::new();
        let mut x0 = 0;
        for x in 1..=w {
            if x == w || uclass[x] != uclass[x0] {
                runs.push((x0, x, uclass[x0]));
                x0 = x;
            }
        }
        let members = |c: usize| {
            if c < n {
                vec![c]
            } else {
                vec![c - n, c - n + 1]
            }
        };
        let class_bins = (0..cs * cs)
            .map(|k| {
                let mut v = Vec::new();
                for a in members(k / cs) {
                    for b in members(k % cs) {
                        v.push(a * n + b);
                    }
                }
                v
            })
            .collect();
        let ys: Vec<_> = (0..n).map(|v| adaptive_bin(v, h, n)).collect();
        let xs: Vec<_> = (0..n).map(|u| adaptive_bin(u, w, n)).collect();
        let mut inv_size = vec![0f32; n * n];
        for v in 0..n {
            for u in 0..n {
                inv_size[v * n + u] = 1.0 / ((ys[v].1 - ys[v].0) * (xs[u].1 - xs[u].0)) as f32;
            }
        }
        Geometry {
            w,
            cs,
            inv_size,
            class,
            vclass,
            runs,
            class_bins,
        }
    }

    fn classes(&self) -> usize {
        self.cs * self.cs
    }

    /// Pixels `p0 .. p0 + len` as runs of one class: `(first, end, class)`, offsets from `p0`.
    fn class_runs(&self, p0: usize, len: usize) -> Vec<(usize, usize, usize)> {
        let class = &self.class[p0..p0 + len];
        let mut runs = Vec::new();
        let mut r0 = 0;
        for r in 1..=len {
            if r == len || class[r] != class[r0] {
                runs.push((r0, r, class[r0] as usize));
                r0 = r;
            }
        }
        runs
    }
}

/// Sum with eight independent accumulators (vectorisable), in f64.
#[inline]
fn sum_f64(x: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            acc[k] += c[k] as f64;
        }
    }
    acc.iter().sum::<f64>() + tail.iter().map(|v| *v as f64).sum::<f64>()
}

/// `q[i] = f[i] / max(‖f[i]‖, 1e-12)`; writes the norms.
fn normalise(f: &[f32], c: usize, q: &mut [f32], norms: &mut [f32]) {
    q.par_chunks_mut(c)
        .zip(f.par_chunks(c))
        .zip(norms.par_iter_mut())
        .for_each(|((q, f), nrm)| {
            let n = f
                .iter()
                .map(|v| (*v as f64) * (*v as f64))
                .sum::<f64>()
                .sqrt() as f32;
            *nrm = n;
            let inv = 1.0 / n.max(1e-12);
            for (a, b) in q.iter_mut().zip(f) {
                *a = b * inv;
            }
        });
}

/// `S[r, k] = q[i0 + r] · q[j0 + k]` for an `ri × rj` tile (row stride `rj`).
#[allow(clippy::too_many_arguments)]
fn score_tile(q: &[f32], c: usize, i0: usize, ri: usize, j0: usize, rj: usize, s: &mut [f32]) {
    sgemm(
        ri,
        rj,
        c,
        s,
        rj,
        false,
        &q[i0 * c..],
        c,
        1,
        &q[j0 * c..],
        1,
        c,
        true,
    );
}

/// One exponentiated score tile: `e[r·cols + k]` for row pixel `row0 + r` and column pixel
/// `col0 + k`. The forward adds each tile to the row sums `l` ([N]) and the class sums
/// `cl` ([N, K]) of its rows and, off the diagonal, of its columns.
struct ScoreTile<'a> {
    e: &'a [f32],
    rows: usize,
    cols: usize,
    row0: usize,
    col0: usize,
}

impl ScoreTile<'_> {
    /// Every entry to its row's total and, per class of the column pixel, to the row's class
    /// sums.
    fn add_to_rows(&self, geo: &Geometry, l: &mut [f64], cl: &mut [f64]) {
        let (rows, cols, row0, col0) = (self.rows, self.cols, self.row0, self.col0);
        let nk = geo.classes();
        let w = geo.w;
        self.e[..rows * cols]
            .par_chunks(cols)
            .zip(l[row0..row0 + rows].par_iter_mut())
            .zip(cl[row0 * nk..(row0 + rows) * nk].par_chunks_mut(nk))
            .for_each(|((row, l), acc)| {
                let mut k = 0;
                while k < cols {
                    // One image row's stretch of this tile row: pixels (y, x..x+len).
                    let p = col0 + k;
                    let (y, x) = (p / w, p % w);
                    let len = (w - x).min(cols - k);
                    let vbase = geo.vclass[y] * geo.cs;
                    for &(a, b, uc) in &geo.runs {
                        let (a, b) = (a.max(x), b.min(x + len));
                        if a < b {
                            let s = sum_f64(&row[k + a - x..k + b - x]);
                            acc[vbase + uc] += s;
                            *l += s;
                        }
                    }
                    k += len;
                }
            });
    }

    /// The transposed view of [`Self::add_to_rows`], without transposing: every entry to its
    /// column's total and, per class of the row pixel, to the column's class sums. Rows of one
    /// class come in runs (pixels along an image row), so each run is a sum of whole tile rows.
    fn add_to_cols(&self, geo: &Geometry, l: &mut [f64], cl: &mut [f64]) {
        let (rows, cols, row0, col0) = (self.rows, self.cols, self.row0, self.col0);
        let nk = geo.classes();
        let runs = geo.class_runs(row0, rows);
        l[col0..col0 + cols]
            .par_chunks_mut(COLS_PER_TASK)
            .zip(cl[col0 * nk..(col0 + cols) * nk].par_chunks_mut(COLS_PER_TASK * nk))
            .enumerate()
            .for_each(|(t, (l, acc))| {
                let (k0, kn) = (t * COLS_PER_TASK, l.len());
                let mut sum = [0f64; COLS_PER_TASK];
                let sum = &mut sum[..kn];
                for &(r0, r1, class) in &runs {
                    sum.fill(0.0);
                    for r in r0..r1 {
                        let src = &self.e[r * cols + k0..r * cols + k0 + kn];
                        for (s, v) in sum.iter_mut().zip(src) {
                            *s += *v as f64;
                        }
                    }
                    for (k, s) in sum.iter().enumerate() {
                        acc[k * nk + class] += s;
                        l[k] += s;
                    }
                }
            });
    }
}

pub fn forward(
    be: &CpuBackend,
    s: &RelationShape,
    f: Tensor,
    norms: Tensor,
    lsum: Tensor,
    p: Tensor,
) {
    let (np, c, nb) = (s.pixels(), s.c, s.bins());
    check_len("relation f", f, s.b * np * c);
    check_len("relation norms", norms, s.b * np);
    check_len("relation lsum", lsum, s.b * np);
    check_len("relation p", p, s.b * np * nb);
    disjoint(&[norms, lsum, p], &[f]);
    let geo = Geometry::new(s.h, s.w, s.n);
    let (fs, ns, ls, ps) = (be.r(f), be.w(norms), be.w(lsum), be.w(p));
    let t = TILE.min(np);
    let nk = geo.classes();
    let mut lacc = vec![0f64; np];
    let mut cacc = vec![0f64; np * nk];
    be.with_workspace(np * c + t * t, |ws| {
        let (q, sc) = ws.split_at_mut(np * c);
        for b in 0..s.b {
            normalise(
                &fs[b * np * c..(b + 1) * np * c],
                c,
                q,
                &mut ns[b * np..(b + 1) * np],
            );
            lacc.fill(0.0);
            cacc.fill(0.0);
            for i0 in (0..np).step_by(t) {
                let ri = t.min(np - i0);
                for j0 in (i0..np).step_by(t) {
                    let rj = t.min(np - j0);
                    score_tile(q, c, i0, ri, j0, rj, sc);
                    sc[..ri * rj]
                        .par_chunks_mut(rj)
                        .for_each(exp_shifted_inplace);
                    let tile = ScoreTile {
                        e: sc,
                        rows: ri,
                        cols: rj,
                        row0: i0,
                        col0: j0,
                    };
                    tile.add_to_rows(&geo, &mut lacc, &mut cacc);
                    if j0 != i0 {
                        // The same scores seen from the rows of J.
                        tile.add_to_cols(&geo, &mut lacc, &mut cacc);
                    }
                }
            }
            ls[b * np..(b + 1) * np]
                .par_iter_mut()
                .zip(ps[b * np * nb..(b + 1) * np * nb].par_chunks_mut(nb))
                .enumerate()
                .for_each(|(i, (l, prow))| {
                    *l = lacc[i] as f32;
                    let mut bins = [0f64; MAX_BINS_SIDE * MAX_BINS_SIDE];
                    for (k, members) in geo.class_bins.iter().enumerate() {
                        let v = cacc[i * nk + k];
                        for &bin in members {
                            bins[bin] += v;
                        }
                    }
                    for (k, pv) in prow.iter_mut().enumerate() {
                        *pv = (bins[k] * geo.inv_size[k] as f64 / lacc[i]) as f32;
                    }
                });
        }
    });
}

#[allow(clippy::too_many_arguments)]
pub fn backward(
    be: &CpuBackend,
    s: &RelationShape,
    f: Tensor,
    norms: Tensor,
    lsum: Tensor,
    p: Tensor,
    dp: Tensor,
    df: Tensor,
) {
    let (np, c, nb) = (s.pixels(), s.c, s.bins());
    check_len("relation f", f, s.b * np * c);
    check_len("relation df", df, s.b * np * c);
    check_len("relation dp", dp, s.b * np * nb);
    check_len("relation p", p, s.b * np * nb);
    disjoint(&[df], &[f, norms, lsum, p, dp]);
    let geo = Geometry::new(s.h, s.w, s.n);
    let (fs, ns, ls, ps, gs, dfs) = (
        be.r(f),
        be.r(norms),
        be.r(lsum),
        be.r(p),
        be.r(dp),
        be.w(df),
    );
    let t = TILE.min(np);
    let mut scratch_norms = vec![0f32; np];
    // Per row of one image: D_i, 1/l_i, and g by class: `hc[i·K + k] = Σ_{b ∈ class k} G_ib/|b|`
    // (so g_ij = hc[i, class(j)]), also transposed (`ht[k·N + j]`) for the dS_ji half.
    let nk = geo.classes();
    let mut d = vec![0f32; np];
    let mut inv_l = vec![0f32; np];
    let mut hc = vec![0f32; np * nk];
    let mut ht = vec![0f32; nk * np];
    be.with_workspace(2 * np * c + t * t, |ws| {
        let (q, rest) = ws.split_at_mut(np * c);
        let (dq, m) = rest.split_at_mut(np * c);
        for b in 0..s.b {
            normalise(&fs[b * np * c..(b + 1) * np * c], c, q, &mut scratch_norms);
            dq.fill(0.0);
            let base = b * np;
            d.par_iter_mut()
                .zip(inv_l.par_iter_mut())
                .zip(hc.par_chunks_mut(nk))
                .enumerate()
                .for_each(|(i, ((d, il), hrow))| {
                    let (prow, grow) = (
                        &ps[(base + i) * nb..(base + i + 1) * nb],
                        &gs[(base + i) * nb..(base + i + 1) * nb],
                    );
                    *d = prow
                        .iter()
                        .zip(grow)
                        .map(|(p, g)| *p as f64 * *g as f64)
                        .sum::<f64>() as f32;
                    *il = 1.0 / ls[base + i];
                    for (k, members) in geo.class_bins.iter().enumerate() {
                        hrow[k] = members
                            .iter()
                            .map(|&bin| grow[bin] * geo.inv_size[bin])
                            .sum();
                    }
                });
            ht.par_chunks_mut(np).enumerate().for_each(|(k, col)| {
                for (j, v) in col.iter_mut().enumerate() {
                    *v = hc[j * nk + k];
                }
            });
            for i0 in (0..np).step_by(t) {
                let ri = t.min(np - i0);
                for j0 in (i0..np).step_by(t) {
                    let rj = t.min(np - j0);
                    score_tile(q, c, i0, ri, j0, rj, m);
                    // M_ij = dS_ij + dS_ji, in place over the scores.
                    let (d, inv_l, hc, ht, geo) = (&d, &inv_l, &hc, &ht, &geo);
                    let runs = geo.class_runs(j0, rj);
                    m[..ri * rj]
                        .par_chunks_mut(rj)
                        .enumerate()
                        .for_each(|(r, row)| {
                            let i = i0 + r;
                            let (di, li) = (d[i], inv_l[i]);
                            let hrow = &hc[i * nk..(i + 1) * nk];
                            // g_ji for every j of the tile: row i's class, all rows j.
                            let hcol = &ht[geo.class[i] as usize * np + j0..][..rj];
                            let (dj, lj) = (&d[j0..j0 + rj], &inv_l[j0..j0 + rj]);
                            // The same exponential as the forward's (vectorised), then M,
                            // over runs of columns of one class (`g_ij` constant along a run),
                            // so the inner loop has no lookup and vectorises.
                            exp_shifted_inplace(row);
                            for &(k0, k1, class) in &runs {
                                let g_minus_d = hrow[class] - di;
                                let (row, hcol) = (&mut row[k0..k1], &hcol[k0..k1]);
                                let (dj, lj) = (&dj[k0..k1], &lj[k0..k1]);
                                for k in 0..row.len() {
                                    let e = row[k];
                                    let ds_ij = e * li * g_minus_d;
                                    let ds_ji = e * lj[k] * (hcol[k] - dj[k]);
                                    row[k] = ds_ij + ds_ji;
                                }
                            }
                        });
                    let mt = &m[..ri * rj];
                    // dq[I] += M · q[J]
                    sgemm(
                        ri,
                        c,
                        rj,
                        &mut dq[i0 * c..(i0 + ri) * c],
                        c,
                        true,
                        mt,
                        rj,
                        1,
                        &q[j0 * c..(j0 + rj) * c],
                        c,
                        1,
                        true,
                    );
                    if j0 != i0 {
                        // dq[J] += Mᵀ · q[I]
                        sgemm(
                            rj,
                            c,
                            ri,
                            &mut dq[j0 * c..(j0 + rj) * c],
                            c,
                            true,
                            mt,
                            1,
                            rj,
                            &q[i0 * c..(i0 + ri) * c],
                            c,
                            1,
                            true,
                        );
                    }
                }
            }
            // Normalisation backward.
            let dfb = &mut dfs[b * np * c..(b + 1) * np * c];
            let nrm = &ns[b * np..(b + 1) * np];
            dfb.par_chunks_mut(c)
                .zip(dq.par_chunks(c))
                .zip(q.par_chunks(c))
                .zip(nrm.par_iter())
                .for_each(|(((dfi, dqi), qi), nrm)| {
                    if *nrm > 1e-12 {
                        let dot: f64 = qi.iter().zip(dqi).map(|(a, b)| *a as f64 * *b as f64).sum();
                        let dot = dot as f32;
                        let inv = 1.0 / nrm;
                        for ((d, g), qv) in dfi.iter_mut().zip(dqi).zip(qi) {
                            *d += (g - qv * dot) * inv;
                        }
                    } else {
                        for (d, g) in dfi.iter_mut().zip(dqi) {
                            *d += g / 1e-12;
                        }
                    }
                });
        }
    });
}
