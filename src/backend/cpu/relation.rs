//! The relation map of SPEC §4.1 on the CPU, one pair of pixel tiles of one image per task,
//! using the symmetry of the scores (`s_ij = s_ji`) so each score is computed once.
//!
//! Per image: `q = f / max(‖f‖, 1e-12)` ([N, C]). For tiles I ≤ J of T pixels:
//! `S_IJ = q_I · q_Jᵀ` (one GEMM), `E = exp(S − 1)` (fixed shift: s ≤ 1). Row i ∈ I adds
//! `E_ij` to `l_i` and to the bins containing j; for I ≠ J row j ∈ J also adds `E_ij` to `l_j`
//! and the bins containing i. Then `P_ib = bin_ib / (l_i·|b|)`. Only one T×T tile of scores per
//! thread exists at once.
//!
//! Backward (G = ∂L/∂P): `dS_ij = R_ij (g_ij − D_i)` with `R_ij = e_ij / l_i`,
//! `g_ij = Σ_{b∋j} G_ib/|b|`, `D_i = Σ_b P_ib G_ib`. For tiles I ≤ J the symmetric tile
//! `M_ij = dS_ij + dS_ji` (both from the one recomputed score) gives `dq_I += M·q_J` and, for
//! I ≠ J, `dq_J += Mᵀ·q_I`, so `dq_i = Σ_j (dS_ij + dS_ji) q_j`. Finally
//! `df_i += (dq_i − q_i (q_i·dq_i)) / ‖f_i‖` (below 1e-12: `dq_i/1e-12`).
//! Cost: half a score GEMM forward; one and a half backward (instead of one and three).
//!
//! Threads. A tile pair is one task on one thread, its GEMMs single-threaded and its
//! exponential and sums done while the tile is in that core's cache; the pairs run in rounds
//! in which no tile appears twice ([`rounds`]), for every image of a group at once, so the
//! tasks of a round never write the same sums and every sum receives its terms in a fixed
//! order (deterministic, whatever the thread count and the group: [`group_len`] sizes the
//! group so that a round has tasks for every thread). Splitting each tile's GEMM over the
//! threads instead, with a parallel pass for each of the exponential and the sums, took 76
//! against 54 ms forward and 175 against 148 ms backward at 75×75×450, one image, 2 threads
//! (`cargo bench --bench cpu_ops -- relation`).

use std::sync::Mutex;

use rayon::prelude::*;

use super::exp::exp_shifted_inplace;
use super::{check_len, disjoint, sgemm, CpuBackend};
use crate::backend::{adaptive_bin, RelationShape, MAX_BINS_SIDE};
use crate::tensor::Tensor;

/// Pixels per tile: large enough for an efficient GEMM, small enough for the cache.
const TILE: usize = 512;

/// Floats of normalised features a group of images may hold at once whatever the thread count
/// (forward: q; backward: q and dq): 16 MB, one W30 image (75×75×450) at 299×299, a whole
/// `tiny` batch. On 2 threads W30's six tasks a round already fill them; its four images at
/// once measured no faster and held 60 MB more.
const GROUP_FLOATS: usize = 4 << 20;
/// Most floats a group may hold to give more threads enough tasks (see [`group_len`]): 128 MB,
/// six W30 images backward, twelve forward.
const GROUP_FLOATS_MOST: usize = 32 << 20;

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

/// The pairs of tiles `I ≤ J` of `tiles` tiles in rounds in which no tile appears twice
/// (the round-robin "circle" schedule; with an odd count, the tile left out of a round takes
/// its diagonal pair then; with an even one, the diagonals make one more round). The pairs of
/// a round run side by side, each adding to its own two tiles' sums, and every tile gets its
/// contributions in the same order, round after round, whatever the thread count.
fn rounds(tiles: usize) -> Vec<Vec<(usize, usize)>> {
    if tiles == 0 {
        return Vec::new();
    }
    // An even number of seats; seat `tiles` (odd counts only) stands for "no partner".
    let seats = tiles + tiles % 2;
    let mut ring: Vec<usize> = (1..seats).collect();
    let mut rounds = Vec::new();
    for _ in 1..seats {
        let order: Vec<usize> = std::iter::once(0).chain(ring.iter().copied()).collect();
        let round = (0..seats / 2)
            .map(|k| {
                let (a, b) = (order[k], order[seats - 1 - k]);
                match (a == tiles, b == tiles) {
                    (true, _) => (b, b),
                    (_, true) => (a, a),
                    _ => (a.min(b), a.max(b)),
                }
            })
            .collect();
        rounds.push(round);
        ring.rotate_right(1);
    }
    if tiles.is_multiple_of(2) {
        rounds.push((0..tiles).map(|i| (i, i)).collect());
    }
    rounds
}

/// One score tile's scratch per thread of the pool, carved from the workspace. A task takes
/// its thread's slot, so the lock is never contended.
struct Scratch<'a>(Vec<Mutex<&'a mut [f32]>>);

impl<'a> Scratch<'a> {
    fn new(ws: &'a mut [f32], tile_floats: usize) -> Scratch<'a> {
        Scratch(ws.chunks_mut(tile_floats).map(Mutex::new).collect())
    }

    fn floats(tile_floats: usize) -> usize {
        rayon::current_num_threads() * tile_floats
    }

    fn mine(&self) -> std::sync::MutexGuard<'_, &'a mut [f32]> {
        let slot = rayon::current_thread_index().unwrap_or(0) % self.0.len();
        self.0[slot].lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One side of a tile pair: the tile, its first pixel and its pixel count.
#[derive(Clone, Copy)]
struct Side {
    tile: usize,
    start: usize,
    len: usize,
}

/// The tile pairs of a group of images: their normalised features `qs` ([images, N, C]), tiles
/// of `t` pixels, the rounds they run in and the threads' scratch.
struct Pairs<'a, 's> {
    qs: &'a [f32],
    np: usize,
    c: usize,
    t: usize,
    schedule: &'a [Vec<(usize, usize)>],
    scratch: &'a Scratch<'s>,
}

impl Pairs<'_, '_> {
    /// `body(image, I, J, e)` for every tile pair I ≤ J of every one of `images` images, round
    /// after round, the tasks of a round in parallel; `e` holds the pair's exponentiated scores
    /// `exp(q_i·q_j − 1)` ([I.len, J.len]) in the calling thread's scratch.
    fn for_each(&self, images: usize, body: impl Fn(usize, Side, Side, &mut [f32]) + Sync) {
        let (np, c, t) = (self.np, self.c, self.t);
        let side = |tile: usize| Side {
            tile,
            start: tile * t,
            len: t.min(np - tile * t),
        };
        for round in self.schedule {
            let tasks: Vec<_> = (0..images)
                .flat_map(|img| round.iter().map(move |&pair| (img, pair)))
                .collect();
            tasks.into_par_iter().for_each(|(img, (ti, tj))| {
                let q = &self.qs[img * np * c..][..np * c];
                let (a, b) = (side(ti), side(tj));
                let mut e = self.scratch.mine();
                let e = &mut e[..a.len * b.len];
                score_tile(q, c, a.start, a.len, b.start, b.len, e);
                exp_shifted_inplace(e);
                body(img, a, b, e);
            });
        }
    }
}

/// Images whose features (`per_image` floats of workspace each) are held at once, out of
/// `images`, on `threads` threads when a round has `pairs` tile pairs per image. A round has
/// tasks for every image of the group and ends with its slowest thread, so the group holds
/// whatever fits in `GROUP_FLOATS` (small maps: one tile, one task per image), and, on more
/// threads, enough images for twice as many tasks as threads (up to `GROUP_FLOATS_MOST`): W30
/// has 6 pairs a round, which one image at a time would leave 10 of 16 threads idle. The
/// images of a group are independent, so its size changes nothing in the results.
fn group_len(per_image: usize, images: usize, pairs: usize, threads: usize) -> usize {
    let per_image = per_image.max(1);
    let to_fill = (2 * threads).div_ceil(pairs.max(1));
    let affordable = (GROUP_FLOATS_MOST / per_image).max(1);
    (GROUP_FLOATS / per_image)
        .max(to_fill.min(affordable))
        .clamp(1, images)
}

/// Tile pairs in the shortest round of [`rounds`]`(tiles)`.
fn pairs_per_round(tiles: usize) -> usize {
    tiles.div_ceil(2)
}

/// [`group_len`] for `s` on the current thread pool, at `per_image` floats an image.
fn pool_group(s: &RelationShape, per_image: usize) -> usize {
    let np = s.pixels();
    let pairs = pairs_per_round(np.div_ceil(TILE.min(np)));
    group_len(per_image, s.b, pairs, rayon::current_num_threads())
}

/// `S[r, k] = q[i0 + r] · q[j0 + k]` for an `ri × rj` tile (row stride `rj`), on the calling
/// thread.
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
        false,
    );
}

/// One exponentiated score tile: `e[r·cols + k]` for row pixel `row0 + r` and column pixel
/// `col0 + k`. The forward adds each tile to the row sums `l` and the class sums `cl` ([rows,
/// K]) of its rows and, off the diagonal, of its columns: the slices of those tiles alone.
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
        let (rows, cols, col0) = (self.rows, self.cols, self.col0);
        let nk = geo.classes();
        let w = geo.w;
        for ((row, l), acc) in self.e[..rows * cols]
            .chunks(cols)
            .zip(&mut l[..rows])
            .zip(cl.chunks_mut(nk))
        {
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
        }
    }

    /// The transposed view of [`Self::add_to_rows`], without transposing: every entry to its
    /// column's total and, per class of the row pixel, to the column's class sums. Rows of one
    /// class come in runs (pixels along an image row), so each run is a sum of whole tile
    /// rows, taken `COLS` columns at a time.
    fn add_to_cols(&self, geo: &Geometry, l: &mut [f64], cl: &mut [f64]) {
        const COLS: usize = 64;
        let (rows, cols) = (self.rows, self.cols);
        let nk = geo.classes();
        let runs = geo.class_runs(self.row0, rows);
        let mut sum = [0f64; COLS];
        for (t, (l, acc)) in l[..cols]
            .chunks_mut(COLS)
            .zip(cl.chunks_mut(COLS * nk))
            .enumerate()
        {
            let (k0, kn) = (t * COLS, l.len());
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
        }
    }
}

/// A group of images' per-tile pieces of a buffer of `per_pixel` values per pixel, one lock
/// each: `[image][tile]`. The rounds keep the locks uncontended.
fn tile_locks<T>(
    buf: &mut [T],
    images: usize,
    np: usize,
    t: usize,
    per_pixel: usize,
) -> Vec<Vec<Mutex<&mut [T]>>> {
    buf.chunks_mut(np * per_pixel)
        .take(images)
        .map(|img| img.chunks_mut(t * per_pixel).map(Mutex::new).collect())
        .collect()
}

fn lock<'a, 'b, T>(m: &'a Mutex<&'b mut [T]>) -> std::sync::MutexGuard<'a, &'b mut [T]> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn forward(
    be: &CpuBackend,
    s: &RelationShape,
    f: Tensor,
    norms: Tensor,
    lsum: Tensor,
    p: Tensor,
) {
    let group = pool_group(s, s.pixels() * s.c);
    forward_in_groups(be, s, f, norms, lsum, p, group);
}

/// [`forward`], `group` images at a time.
fn forward_in_groups(
    be: &CpuBackend,
    s: &RelationShape,
    f: Tensor,
    norms: Tensor,
    lsum: Tensor,
    p: Tensor,
    group: usize,
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
    let schedule = rounds(np.div_ceil(t));
    let mut lacc = vec![0f64; group * np];
    let mut cacc = vec![0f64; group * np * nk];
    be.with_workspace(group * np * c + Scratch::floats(t * t), |ws| {
        let (qs, scratch) = ws.split_at_mut(group * np * c);
        let scratch = Scratch::new(scratch, t * t);
        for b0 in (0..s.b).step_by(group) {
            let images = group.min(s.b - b0);
            // The group's rows are consecutive in every buffer: one pass each.
            let (rows, floats) = (
                b0 * np..(b0 + images) * np,
                b0 * np * c..(b0 + images) * np * c,
            );
            normalise(
                &fs[floats],
                c,
                &mut qs[..images * np * c],
                &mut ns[rows.clone()],
            );
            let pairs = Pairs {
                qs: &*qs,
                np,
                c,
                t,
                schedule: &schedule,
                scratch: &scratch,
            };
            lacc.fill(0.0);
            cacc.fill(0.0);
            {
                let l_tiles = tile_locks(&mut lacc, images, np, t, 1);
                let c_tiles = tile_locks(&mut cacc, images, np, t, nk);
                pairs.for_each(images, |i, a, b, e| {
                    let tile = ScoreTile {
                        e,
                        rows: a.len,
                        cols: b.len,
                        row0: a.start,
                        col0: b.start,
                    };
                    let (l, cl) = (&l_tiles[i], &c_tiles[i]);
                    tile.add_to_rows(&geo, &mut lock(&l[a.tile]), &mut lock(&cl[a.tile]));
                    if b.tile != a.tile {
                        // The same scores seen from the rows of J.
                        tile.add_to_cols(&geo, &mut lock(&l[b.tile]), &mut lock(&cl[b.tile]));
                    }
                });
            }
            let nr = images * np;
            ls[rows.clone()]
                .par_iter_mut()
                .zip(ps[rows.start * nb..rows.end * nb].par_chunks_mut(nb))
                .zip(lacc[..nr].par_iter().zip(cacc[..nr * nk].par_chunks(nk)))
                .for_each(|((l, prow), (lsum, crow))| {
                    *l = *lsum as f32;
                    let mut bins = [0f64; MAX_BINS_SIDE * MAX_BINS_SIDE];
                    for (v, members) in crow.iter().zip(&geo.class_bins) {
                        for &bin in members {
                            bins[bin] += v;
                        }
                    }
                    for (k, pv) in prow.iter_mut().enumerate() {
                        *pv = (bins[k] * geo.inv_size[k] as f64 / lsum) as f32;
                    }
                });
        }
    });
}

/// Per row of one image, what `M` needs: `D_i`, `1/l_i`, and g by class, `hc[i·K + k] =
/// Σ_{b ∈ class k} G_ib/|b|` (so g_ij = hc[i, class(j)]), also transposed (`ht[k·N + j]`) for
/// the dS_ji half.
struct RowTerms {
    d: Vec<f32>,
    inv_l: Vec<f32>,
    hc: Vec<f32>,
    ht: Vec<f32>,
}

impl RowTerms {
    fn new(geo: &Geometry, np: usize, nb: usize, p: &[f32], g: &[f32], lsum: &[f32]) -> RowTerms {
        let nk = geo.classes();
        let mut t = RowTerms {
            d: vec![0f32; np],
            inv_l: vec![0f32; np],
            hc: vec![0f32; np * nk],
            ht: vec![0f32; nk * np],
        };
        t.d.par_iter_mut()
            .zip(t.inv_l.par_iter_mut())
            .zip(t.hc.par_chunks_mut(nk))
            .enumerate()
            .for_each(|(i, ((d, il), hrow))| {
                let (prow, grow) = (&p[i * nb..(i + 1) * nb], &g[i * nb..(i + 1) * nb]);
                *d = prow
                    .iter()
                    .zip(grow)
                    .map(|(p, g)| *p as f64 * *g as f64)
                    .sum::<f64>() as f32;
                *il = 1.0 / lsum[i];
                for (k, members) in geo.class_bins.iter().enumerate() {
                    hrow[k] = members
                        .iter()
                        .map(|&bin| grow[bin] * geo.inv_size[bin])
                        .sum();
                }
            });
        let hc = &t.hc;
        t.ht.par_chunks_mut(np).enumerate().for_each(|(k, col)| {
            for (j, v) in col.iter_mut().enumerate() {
                *v = hc[j * nk + k];
            }
        });
        t
    }

    /// `M_ij = dS_ij + dS_ji` in place over the exponentiated scores `m` of rows
    /// `i0 .. i0 + rows`, columns `j0 .. j0 + cols`.
    fn symmetric_ds(&self, geo: &Geometry, i0: usize, j0: usize, cols: usize, m: &mut [f32]) {
        let (np, nk) = (self.d.len(), geo.classes());
        let runs = geo.class_runs(j0, cols);
        let (dj, lj) = (&self.d[j0..j0 + cols], &self.inv_l[j0..j0 + cols]);
        for (r, row) in m.chunks_mut(cols).enumerate() {
            let i = i0 + r;
            let (di, li) = (self.d[i], self.inv_l[i]);
            let hrow = &self.hc[i * nk..(i + 1) * nk];
            // g_ji for every j of the tile: row i's class, all rows j.
            let hcol = &self.ht[geo.class[i] as usize * np + j0..][..cols];
            // Over runs of columns of one class (`g_ij` constant along a run), so the inner
            // loop has no lookup and vectorises.
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
        }
    }
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
    let group = pool_group(s, 2 * s.pixels() * s.c);
    backward_in_groups(be, s, f, norms, lsum, p, dp, df, group);
}

/// [`backward`], `group` images at a time.
#[allow(clippy::too_many_arguments)]
fn backward_in_groups(
    be: &CpuBackend,
    s: &RelationShape,
    f: Tensor,
    norms: Tensor,
    lsum: Tensor,
    p: Tensor,
    dp: Tensor,
    df: Tensor,
    group: usize,
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
    let schedule = rounds(np.div_ceil(t));
    let mut scratch_norms = vec![0f32; group * np];
    be.with_workspace(2 * group * np * c + Scratch::floats(t * t), |ws| {
        let (qs, rest) = ws.split_at_mut(group * np * c);
        let (dqs, scratch) = rest.split_at_mut(group * np * c);
        let scratch = Scratch::new(scratch, t * t);
        for b0 in (0..s.b).step_by(group) {
            let images = group.min(s.b - b0);
            // The group's rows are consecutive in every buffer.
            let floats = b0 * np * c..(b0 + images) * np * c;
            let nr = images * np;
            normalise(
                &fs[floats.clone()],
                c,
                &mut qs[..nr * c],
                &mut scratch_norms[..nr],
            );
            let qs = &*qs;
            let pairs = Pairs {
                qs,
                np,
                c,
                t,
                schedule: &schedule,
                scratch: &scratch,
            };
            let terms: Vec<_> = (b0..b0 + images)
                .map(|b| {
                    let (pb, gb) = (&ps[b * np * nb..][..np * nb], &gs[b * np * nb..][..np * nb]);
                    RowTerms::new(&geo, np, nb, pb, gb, &ls[b * np..][..np])
                })
                .collect();
            dqs[..images * np * c].fill(0.0);
            {
                let dq_tiles = tile_locks(dqs, images, np, t, c);
                pairs.for_each(images, |i, a, b, m| {
                    // M in place over the exponentiated scores (the forward's exponential).
                    terms[i].symmetric_ds(&geo, a.start, b.start, b.len, m);
                    let q = &qs[i * np * c..][..np * c];
                    let (qa, qb) = (
                        &q[a.start * c..][..a.len * c],
                        &q[b.start * c..][..b.len * c],
                    );
                    // dq[I] += M · q[J]
                    let mut dq = lock(&dq_tiles[i][a.tile]);
                    sgemm(
                        a.len, c, b.len, &mut dq, c, true, m, b.len, 1, qb, c, 1, false,
                    );
                    drop(dq);
                    if b.tile != a.tile {
                        // dq[J] += Mᵀ · q[I]
                        let mut dq = lock(&dq_tiles[i][b.tile]);
                        sgemm(
                            b.len, c, a.len, &mut dq, c, true, m, 1, b.len, qa, c, 1, false,
                        );
                    }
                });
            }
            // Normalisation backward.
            dfs[floats]
                .par_chunks_mut(c)
                .zip(dqs[..nr * c].par_chunks(c))
                .zip(qs[..nr * c].par_chunks(c))
                .zip(ns[b0 * np..b0 * np + nr].par_iter())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::rng::Rng;

    /// Every pair I ≤ J exactly once, and no tile twice in one round.
    #[test]
    fn rounds_cover_every_pair_once_with_disjoint_tiles() {
        for tiles in 1..=13 {
            let mut seen = vec![0u32; tiles * tiles];
            for round in rounds(tiles) {
                let mut used = vec![false; tiles];
                for (i, j) in round {
                    assert!(i <= j && j < tiles, "{tiles} tiles: pair ({i}, {j})");
                    seen[i * tiles + j] += 1;
                    for t in [i, j] {
                        assert!(
                            !used[t] || i == j && t == j,
                            "{tiles} tiles: tile {t} twice"
                        );
                        used[t] = true;
                    }
                }
            }
            for i in 0..tiles {
                for j in 0..tiles {
                    let want = u32::from(i <= j);
                    assert_eq!(seen[i * tiles + j], want, "{tiles} tiles: pair ({i}, {j})");
                }
            }
            let shortest = rounds(tiles).iter().map(Vec::len).min();
            assert_eq!(shortest, Some(pairs_per_round(tiles)), "{tiles} tiles");
        }
    }

    /// W30 at 299×299 (75×75×450, 11 tiles of 512 pixels: 6 pairs a round): one image at a
    /// time on 2 threads (its 16 MB fills `GROUP_FLOATS`), enough images for 32 tasks on 16
    /// threads (6, within `GROUP_FLOATS_MOST` forward and, at twice the floats, backward), never
    /// more than the batch; a small map's whole batch at once.
    #[test]
    fn groups_fill_the_threads_within_the_memory_bound() {
        let (np, c): (usize, usize) = (75 * 75, 450);
        let pairs = pairs_per_round(np.div_ceil(TILE));
        assert_eq!(pairs, 6);
        assert_eq!(group_len(np * c, 64, pairs, 2), 1);
        assert_eq!(group_len(np * c, 64, pairs, 16), 6);
        assert_eq!(group_len(2 * np * c, 64, pairs, 16), 6);
        assert_eq!(group_len(2 * np * c, 64, pairs, 64), 6);
        assert_eq!(group_len(np * c, 4, pairs, 16), 4);
        assert_eq!(group_len(16 * 16 * 64, 32, 1, 2), 32);
    }

    /// Forward and backward give the same bits one image at a time and the whole batch at once,
    /// on one thread and on several: the group and the thread count only decide what runs side
    /// by side (three images of three tiles each, so rounds hold two pairs).
    #[test]
    fn results_do_not_depend_on_the_group_or_the_threads() {
        let s = RelationShape {
            b: 3,
            h: 34,
            w: 31,
            c: 24,
            n: 5,
        };
        let (np, nb) = (s.pixels(), s.bins());
        assert_eq!(np.div_ceil(TILE), 3);
        let mut rng = Rng::new(11);
        let f = rng.vec(s.b * np * s.c, |r| r.normal());
        let g = rng.vec(s.b * np * nb, |r| r.normal());
        let run = |group: usize| {
            let mut be = CpuBackend::new();
            let mut put = |v: &[f32]| {
                let t = Tensor::new(be.alloc(v.len()).unwrap(), 0, v.len());
                be.upload(t, v).unwrap();
                t
            };
            let ft = put(&f);
            let gt = put(&g);
            let norms = put(&vec![f32::NAN; s.b * np]);
            let lsum = put(&vec![f32::NAN; s.b * np]);
            let p = put(&vec![f32::NAN; s.b * np * nb]);
            let df = put(&vec![0.5; s.b * np * s.c]);
            forward_in_groups(&be, &s, ft, norms, lsum, p, group);
            backward_in_groups(&be, &s, ft, norms, lsum, p, gt, df, group);
            [norms, lsum, p, df].map(|t| {
                let mut v = vec![0.0; t.len];
                be.download(t, &mut v).unwrap();
                v
            })
        };
        let pool = |threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
        };
        let want = pool(1).install(|| run(1));
        assert!(want[2].iter().all(|v| v.is_finite() && *v > 0.0));
        for (threads, group) in [(1, 3), (4, 1), (4, 3), (3, 2)] {
            let got = pool(threads).install(|| run(group));
            for (name, (a, b)) in ["norms", "lsum", "p", "df"]
                .iter()
                .zip(want.iter().zip(&got))
            {
                let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(
                    same,
                    "{name} differs with {threads} threads, groups of {group}"
                );
            }
        }
    }
}
