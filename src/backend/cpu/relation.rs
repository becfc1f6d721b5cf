//! The relation map of SPEC §4.1 on the CPU, one image and one block of rows at a time.
//!
//! Per image: `q = f / max(‖f‖, 1e-12)` ([N, C]); per block of rows I: `S = q_I · qᵀ` ([|I|, N],
//! one GEMM), then for each row `e_ij = exp(s_ij − 1)` (fixed shift: s_ij ≤ 1),
//! `l_i = Σ_j e_ij`, `P_ib = Σ_{j∈b} e_ij / (l_i · |b|)`. Only `|I| × N` scores exist at once.
//!
//! Backward (given G = ∂L/∂P), per block: recompute S, then in place
//! `dS_ij = R_ij (g_ij − D_i)` with `R_ij = e_ij / l_i`, `g_ij = Σ_{b∋j} G_ib/|b|`,
//! `D_i = Σ_b P_ib G_ib`; `dq_I += dS · q` and `dq += dSᵀ · q_I` (two GEMMs, blocks in order, so
//! the result is deterministic); finally `df_i += (dq_i − q_i (q_i·dq_i)) / max(‖f_i‖, 1e-12)`.

use rayon::prelude::*;

use super::{check_len, disjoint, sgemm, CpuBackend};
use crate::backend::{adaptive_bin, RelationShape, MAX_BINS_SIDE};
use crate::tensor::Tensor;

/// Rows per block: large enough for an efficient GEMM, small enough to stay in cache-ish memory.
const BLOCK_ROWS: usize = 256;

/// Bin geometry of one side: bin `u` covers `[lo[u], hi[u])`; `first[x]..=last[x]` are the bins
/// containing position `x` (contiguous because bins are ordered and overlap only neighbours).
struct Bins {
    lo: Vec<usize>,
    hi: Vec<usize>,
    first: Vec<usize>,
    last: Vec<usize>,
}

impl Bins {
    fn new(len: usize, n: usize) -> Bins {
        let (lo, hi): (Vec<_>, Vec<_>) = (0..n).map(|u| adaptive_bin(u, len, n)).unzip();
        let first = (0..len)
            .map(|x| (0..n).find(|&u| lo[u] <= x && x < hi[u]).unwrap())
            .collect();
        let last = (0..len)
            .map(|x| (0..n).rev().find(|&u| lo[u] <= x && x < hi[u]).unwrap())
            .collect();
        Bins {
            lo,
            hi,
            first,
            last,
        }
    }
    fn size(&self, u: usize) -> usize {
        self.hi[u] - self.lo[u]
    }
}

/// `q[i] = f[i] / max(‖f[i]‖, 1e-12)`; returns the norms.
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

/// `S[r, j] = q[i0 + r] · q[j]` for the rows of one block.
fn scores(q: &[f32], c: usize, n_pix: usize, i0: usize, rows: usize, s: &mut [f32]) {
    sgemm(
        rows,
        n_pix,
        c,
        s,
        n_pix,
        false,
        &q[i0 * c..],
        c,
        1,
        q,
        1,
        c,
        true,
    );
}

pub fn forward(
    be: &CpuBackend,
    s: &RelationShape,
    f: Tensor,
    norms: Tensor,
    lsum: Tensor,
    p: Tensor,
) {
    let (np, c, nb, n) = (s.pixels(), s.c, s.bins(), s.n);
    assert!(n <= MAX_BINS_SIDE, "relation: n = {n} > {MAX_BINS_SIDE}");
    check_len("relation f", f, s.b * np * c);
    check_len("relation norms", norms, s.b * np);
    check_len("relation lsum", lsum, s.b * np);
    check_len("relation p", p, s.b * np * nb);
    disjoint(&[norms, lsum, p], &[f]);
    let (by, bx) = (Bins::new(s.h, n), Bins::new(s.w, n));
    let (fs, ns, ls, ps) = (be.r(f), be.w(norms), be.w(lsum), be.w(p));
    let block = BLOCK_ROWS.min(np);
    be.with_workspace(np * c + block * np, |ws| {
        let (q, sc) = ws.split_at_mut(np * c);
        for b in 0..s.b {
            normalise(
                &fs[b * np * c..(b + 1) * np * c],
                c,
                q,
                &mut ns[b * np..(b + 1) * np],
            );
            for i0 in (0..np).step_by(block) {
                let rows = block.min(np - i0);
                scores(q, c, np, i0, rows, sc);
                let prow = &mut ps[(b * np + i0) * nb..(b * np + i0 + rows) * nb];
                let lrow = &mut ls[b * np + i0..b * np + i0 + rows];
                sc[..rows * np]
                    .par_chunks_mut(np)
                    .zip(prow.par_chunks_mut(nb))
                    .zip(lrow.par_iter_mut())
                    .for_each(|((srow, prow), l)| {
                        let mut total = 0f64;
                        for v in srow.iter_mut() {
                            *v = (*v - 1.0).exp();
                            total += *v as f64;
                        }
                        *l = total as f32;
                        for v in 0..n {
                            for u in 0..n {
                                let mut acc = 0f64;
                                for y in by.lo[v]..by.hi[v] {
                                    let r = &srow[y * s.w + bx.lo[u]..y * s.w + bx.hi[u]];
                                    acc += r.iter().map(|e| *e as f64).sum::<f64>();
                                }
                                let size = (by.size(v) * bx.size(u)) as f64;
                                prow[v * n + u] = (acc / (total * size)) as f32;
                            }
                        }
                    });
            }
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
    let (np, c, nb, n) = (s.pixels(), s.c, s.bins(), s.n);
    check_len("relation f", f, s.b * np * c);
    check_len("relation df", df, s.b * np * c);
    check_len("relation dp", dp, s.b * np * nb);
    check_len("relation p", p, s.b * np * nb);
    disjoint(&[df], &[f, norms, lsum, p, dp]);
    let (by, bx) = (Bins::new(s.h, n), Bins::new(s.w, n));
    let (fs, ns, ls, ps, gs, dfs) = (
        be.r(f),
        be.r(norms),
        be.r(lsum),
        be.r(p),
        be.r(dp),
        be.w(df),
    );
    let block = BLOCK_ROWS.min(np);
    let mut scratch_norms = vec![0f32; np];
    be.with_workspace(2 * np * c + block * np, |ws| {
        let (q, rest) = ws.split_at_mut(np * c);
        let (dq, sc) = rest.split_at_mut(np * c);
        for b in 0..s.b {
            normalise(&fs[b * np * c..(b + 1) * np * c], c, q, &mut scratch_norms);
            dq.fill(0.0);
            for i0 in (0..np).step_by(block) {
                let rows = block.min(np - i0);
                scores(q, c, np, i0, rows, sc);
                let base = b * np + i0;
                sc[..rows * np]
                    .par_chunks_mut(np)
                    .enumerate()
                    .for_each(|(r, srow)| {
                        let i = base + r;
                        let (prow, grow) = (&ps[i * nb..(i + 1) * nb], &gs[i * nb..(i + 1) * nb]);
                        let d: f64 = prow
                            .iter()
                            .zip(grow)
                            .map(|(p, g)| *p as f64 * *g as f64)
                            .sum();
                        let d = d as f32;
                        // G_ib / |b| for every bin.
                        let mut gt = [0f32; MAX_BINS_SIDE * MAX_BINS_SIDE];
                        for v in 0..n {
                            for u in 0..n {
                                gt[v * n + u] = grow[v * n + u] / (by.size(v) * bx.size(u)) as f32;
                            }
                        }
                        let inv_l = 1.0 / ls[i];
                        for y in 0..s.h {
                            for x in 0..s.w {
                                let j = y * s.w + x;
                                let mut g = 0f32;
                                for v in by.first[y]..=by.last[y] {
                                    for u in bx.first[x]..=bx.last[x] {
                                        g += gt[v * n + u];
                                    }
                                }
                                let rij = (srow[j] - 1.0).exp() * inv_l;
                                srow[j] = rij * (g - d);
                            }
                        }
                    });
                let ds = &sc[..rows * np];
                // dq[I] += dS · q
                sgemm(
                    rows,
                    c,
                    np,
                    &mut dq[i0 * c..(i0 + rows) * c],
                    c,
                    true,
                    ds,
                    np,
                    1,
                    q,
                    c,
                    1,
                    true,
                );
                // dq += dSᵀ · q[I]
                sgemm(
                    np,
                    c,
                    rows,
                    dq,
                    c,
                    true,
                    ds,
                    1,
                    np,
                    &q[i0 * c..(i0 + rows) * c],
                    c,
                    1,
                    true,
                );
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
