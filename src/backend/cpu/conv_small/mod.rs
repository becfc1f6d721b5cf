//! Convolutions whose im2col rows are short (k·k·Cin ≤ [`MAX_COLS`], Cout ≤ [`MAX_COUT`]):
//! computed a block of output pixels at a time, with no column matrix and no GEMM. AVX-512 or
//! AVX2 with FMA ([`Isa`]); elsewhere `conv.rs` keeps im2col + GEMM.
//!
//! x: [B, H, W, Cin], w: [Cout, k, k, Cin], y: [B, Ho, Wo, Cout] (as in `conv.rs`).
//!
//! Why: the relation module's first convolution (every pixel's 5×5 bin map, one channel, into
//! 3×3×32) is a GEMM with 9 columns. im2col copied its inputs one float at a time (a `memmove`
//! call each), the GEMM's packing and thread hand-offs cost more than its 9 multiply-adds per
//! output, and the backward folded the column gradient back one float at a time too.
//!
//! Here the output pixels of a task (whole images) are taken `P` at a time, across image
//! boundaries; each pixel's inputs are gathered into a small array (its row of the column
//! matrix, `col`), and every product keeps `P` independent sums in vector registers:
//! - forward: `y[p, co] = Σ_t col_p[t]·w[co, t]`, 16-lane vectors over output channels;
//! - data gradient: `dcol_p[t] = Σ_co dy[p, co]·w[co, t]`, one vector of taps, then added
//!   into the pixel's inputs;
//! - weight gradient: `dw[co, t] += Σ_p dy[p, co]·col_p[t]`, vectors over output channels,
//!   summed per task and the tasks' sums added in task order.
//!
//! Sums run in f32 with FMA in a fixed order; the tasks depend on the shape alone, never on the
//! number of threads.

use rayon::prelude::*;

use super::elementwise::BiasAct;
use super::simd::Isa;
use crate::backend::ConvShape;

/// Longest column row (k·k·Cin) handled here: one vector. The stem's first convolution (27
/// columns, 64 output channels, stride 2) ran 1.6× slower here than im2col + GEMM, whose
/// packed products use all 27 columns well.
pub const MAX_COLS: usize = 16;

/// Most output channels handled here.
pub const MAX_COUT: usize = 64;

/// Lanes of one vector (one AVX-512 register, two AVX2 ones).
const L: usize = 16;
const _: () = assert!(MAX_COLS == L, "a column row is one vector");

/// Output pixels computed together: independent sums, so no FMA waits on the previous one.
const P: usize = 8;

/// Output pixels per task (whole images, at least one).
const TASK_PIXELS: usize = 2048;

/// The instruction set `s` runs on here, if it runs here: short column rows, few output
/// channels, not a plain GEMM, AVX-512 or AVX2. Measured (`cargo bench --bench cpu_ops --
/// rel.conv1`, 2 threads, one W30 image's 5625 maps): see docs/PERFORMANCE.md.
pub fn suits(s: &ConvShape) -> Option<Isa> {
    (s.col_k() <= MAX_COLS && s.cout <= MAX_COUT && !s.columns_are_input())
        .then(Isa::detect)
        .flatten()
}

fn round_up(v: usize) -> usize {
    v.div_ceil(L) * L
}

fn images_per_task(s: &ConvShape) -> usize {
    (TASK_PIXELS / (s.ho * s.wo).max(1)).max(1)
}

/// An output pixel's place, advanced one pixel at a time (no divisions in the loops).
#[derive(Clone, Copy)]
struct Cursor {
    img: usize,
    oy: usize,
    ox: usize,
}

impl Cursor {
    const START: Cursor = Cursor {
        img: 0,
        oy: 0,
        ox: 0,
    };
    fn advance(&mut self, s: &ConvShape) {
        self.ox += 1;
        if self.ox == s.wo {
            self.ox = 0;
            self.oy += 1;
            if self.oy == s.ho {
                self.oy = 0;
                self.img += 1;
            }
        }
    }
}

/// For each window row `ky` inside the image, the run of the window that lies inside it:
/// `(ky, first column tap, offset of its first input in x, floats in the run)`. A run's floats
/// (up to k·Cin) are consecutive in x (channels-last), as they are in the column row.
#[inline(always)]
fn window_runs(
    s: &ConvShape,
    c: Cursor,
) -> impl Iterator<Item = (usize, usize, usize, usize)> + '_ {
    let ix0 = (c.ox * s.stride) as isize - s.pad as isize;
    let kx_lo = (-ix0).clamp(0, s.k as isize) as usize;
    let kx_hi = (s.w as isize - ix0).clamp(0, s.k as isize) as usize;
    (0..s.k).filter_map(move |ky| {
        let iy = (c.oy * s.stride + ky) as isize - s.pad as isize;
        if iy < 0 || iy >= s.h as isize || kx_lo >= kx_hi {
            return None;
        }
        let pixel = (c.img * s.h + iy as usize) * s.w + (ix0 + kx_lo as isize) as usize;
        Some((ky, kx_lo, pixel * s.cin, (kx_hi - kx_lo) * s.cin))
    })
}

/// How a kernel puts together one output pixel's row of the column matrix, `(ky, kx, ci)`
/// order, zero where the window leaves the image.
trait Gather {
    /// # Safety
    /// Called only from within the kernel that implements it (on a CPU with its
    /// instructions); the implementation checks its bounds.
    unsafe fn gather(s: &ConvShape, x: &[f32], c: Cursor, col: &mut [f32; MAX_COLS]);
}

/// Runs `block(q0, np, col)` over a task's `pixels` output pixels, `P` at a time: `q0` the
/// first of them, `np` (≤ P) how many, `col` their rows of the column matrix put together by
/// `G` (the rows past `np` zero, so that a partial block adds nothing).
///
/// # Safety
/// As [`Gather::gather`].
#[inline(always)]
unsafe fn pixel_blocks<G: Gather>(
    s: &ConvShape,
    x: &[f32],
    pixels: usize,
    mut block: impl FnMut(usize, usize, &[[f32; MAX_COLS]; P]),
) {
    let mut col = [[0f32; MAX_COLS]; P];
    let mut cur = Cursor::START;
    for q0 in (0..pixels).step_by(P) {
        let np = P.min(pixels - q0);
        for (j, c) in col.iter_mut().enumerate() {
            if j < np {
                G::gather(s, x, cur, c);
                cur.advance(s);
            } else {
                *c = [0.0; MAX_COLS];
            }
        }
        block(q0, np, &col);
    }
}

/// The adjoint of the kernels' `gather`: `x[window] += dcol`, the taps outside the image dropped.
/// One float at a time: the windows of neighbouring pixels overlap, and a vector load of
/// what a masked vector store had just written waited for that store to retire (half of
/// the data gradient's time).
#[inline(always)]
fn scatter_add(s: &ConvShape, dcol: &[f32; MAX_COLS], c: Cursor, x: &mut [f32]) {
    for (ky, kx, dst, n) in window_runs(s, c) {
        let src = (ky * s.k + kx) * s.cin;
        for (d, v) in x[dst..dst + n].iter_mut().zip(&dcol[src..src + n]) {
            *d += v;
        }
    }
}

/// The tasks: `(first image, images)` in order.
fn tasks(s: &ConvShape) -> Vec<(usize, usize)> {
    let per = images_per_task(s);
    (0..s.b)
        .step_by(per)
        .map(|b0| (b0, per.min(s.b - b0)))
        .collect()
}

/// `y = conv(x, w)`, then the epilogue `act` on each task's output while it is in cache, on
/// `isa` (which this CPU must have).
pub fn forward(
    isa: Isa,
    s: &ConvShape,
    x: &[f32],
    w: &[f32],
    act: Option<&BiasAct>,
    y: &mut [f32],
) {
    assert!(isa.available(), "this CPU has no {isa:?}");
    // wt[t, co] = w[co, t], Cout padded to whole vectors with zeros.
    let (kk, cp) = (s.col_k(), round_up(s.cout));
    let mut wt = vec![0f32; kk * cp];
    for co in 0..s.cout {
        for t in 0..kk {
            wt[t * cp + co] = w[co * kk + t];
        }
    }
    let (xi, yi) = (s.h * s.w * s.cin, s.ho * s.wo * s.cout);
    let per = images_per_task(s);
    y[..s.b * yi]
        .par_chunks_mut(per * yi)
        .zip(x[..s.b * xi].par_chunks(per * xi))
        .enumerate()
        .for_each(|(i, (ys, xs))| {
            // SAFETY: the CPU has `isa` (asserted above).
            #[cfg(target_arch = "x86_64")]
            unsafe {
                match isa {
                    Isa::Avx512 => avx512::forward(s, xs, &wt, ys),
                    Isa::Avx2 => avx2::forward(s, xs, &wt, ys),
                }
            }
            if let Some(a) = act {
                a.apply(ys, i * per * yi);
            }
        });
}

/// `dx += ∂conv/∂x · dy`, on `isa`.
pub fn backward_data(isa: Isa, s: &ConvShape, w: &[f32], dy: &[f32], dx: &mut [f32]) {
    assert!(isa.available(), "this CPU has no {isa:?}");
    // wp[co, t] = w[co, t], the taps padded to one vector with zeros.
    let kk = s.col_k();
    let mut wp = vec![0f32; s.cout * L];
    for co in 0..s.cout {
        wp[co * L..co * L + kk].copy_from_slice(&w[co * kk..(co + 1) * kk]);
    }
    let (xi, yi) = (s.h * s.w * s.cin, s.ho * s.wo * s.cout);
    let per = images_per_task(s);
    dx[..s.b * xi]
        .par_chunks_mut(per * xi)
        .zip(dy[..s.b * yi].par_chunks(per * yi))
        .for_each(|(dxs, dys)| {
            // SAFETY: as in `forward`.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                match isa {
                    Isa::Avx512 => avx512::backward_data(s, &wp, dys, dxs),
                    Isa::Avx2 => avx2::backward_data(s, &wp, dys, dxs),
                }
            }
        });
}

/// `dw += ∂conv/∂w · dy`, on `isa`.
pub fn backward_weights(isa: Isa, s: &ConvShape, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    assert!(isa.available(), "this CPU has no {isa:?}");
    let (kk, cp) = (s.col_k(), round_up(s.cout));
    let (xi, yi) = (s.h * s.w * s.cin, s.ho * s.wo * s.cout);
    let partials: Vec<Vec<f32>> = tasks(s)
        .into_par_iter()
        .map(|(b0, nb)| {
            let mut acc = vec![0f32; kk * cp];
            // SAFETY: as in `forward`.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                let (xs, dys) = (&x[b0 * xi..(b0 + nb) * xi], &dy[b0 * yi..(b0 + nb) * yi]);
                match isa {
                    Isa::Avx512 => avx512::backward_weights(s, xs, dys, &mut acc),
                    Isa::Avx2 => avx2::backward_weights(s, xs, dys, &mut acc),
                }
            }
            acc
        })
        .collect();
    // acc[t, co], added in task order.
    for acc in &partials {
        for co in 0..s.cout {
            for t in 0..kk {
                dw[co * kk + t] += acc[t * cp + co];
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::conv_naive::check_on_every_isa;

    /// The three passes against the f64 sums, on every instruction set this CPU has (where it
    /// has both, with the same bits): rel.conv1's shape over several tasks and a partial block
    /// of 8 pixels; output channels over a vector and a half (20: AVX2's last register
    /// partial) and over more than one vector (40); stride 2 with padding; column rows whose
    /// runs cross AVX2's two registers (3 channels × 2 taps per run, 12 columns) and fill the
    /// whole row (4×4 taps of one channel, 16). The gradients are added to non-zero values.
    #[test]
    fn small_passes_match_the_plain_sums() {
        for s in [
            ConvShape::new(300, 5, 5, 1, 32, 3, 1, 0),
            ConvShape::new(3, 11, 9, 1, 20, 3, 2, 1),
            ConvShape::new(2, 6, 7, 3, 40, 2, 1, 1),
            ConvShape::new(2, 7, 6, 1, 9, 4, 1, 2),
        ] {
            assert!(s.col_k() <= MAX_COLS && s.cout <= MAX_COUT && !s.columns_are_input());
            let mut passes = |isa,
                              x: &[f32],
                              w: &[f32],
                              dy: &[f32],
                              y: &mut [f32],
                              dx: &mut [f32],
                              dw: &mut [f32]| {
                forward(isa, &s, x, w, None, y);
                backward_data(isa, &s, w, dy, dx);
                backward_weights(isa, &s, x, dy, dw);
            };
            if !check_on_every_isa("small_passes_match_the_plain_sums", &s, &mut passes) {
                return;
            }
        }
    }
}
