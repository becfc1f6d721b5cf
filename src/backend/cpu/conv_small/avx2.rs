//! The small-convolution kernels in AVX2 with FMA: a column row (16 floats) is two 8-lane
//! registers, and each block of `P` pixels works on one register's worth of output channels
//! (or taps) at a time, so that its `P` sums, the shared vector and the broadcast fit in 16
//! registers.
//!
//! Every lane sums what the AVX-512 kernels sum, in the same order with the same fused
//! multiply-adds, so both give the same bits (tested in `super::tests`).

use std::arch::x86_64::*;

use super::{
    pixel_blocks, round_up, window_runs, ConvShape, Cursor, Gather, L, MAX_COLS, MAX_COUT, P,
};

/// Lanes of one register.
const H: usize = 8;

/// Lanes `lo .. hi` of a register (clamped to 0 .. 8), as `maskload` / `maskstore` take
/// them.
#[target_feature(enable = "avx2")]
fn lane_range(lo: isize, hi: isize) -> __m256i {
    let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let ge_lo = _mm256_cmpgt_epi32(idx, _mm256_set1_epi32(lo as i32 - 1));
    let lt_hi = _mm256_cmpgt_epi32(_mm256_set1_epi32(hi as i32), idx);
    _mm256_and_si256(ge_lo, lt_hi)
}

/// This module's [`Gather`].
struct Rows;

impl Gather for Rows {
    /// One output pixel's row of the column matrix, `(ky, kx, ci)` order, zero where the window
    /// leaves the image, put together in two registers and stored whole (as the AVX-512 kernel
    /// does with an expanding load): each run of inputs is loaded into its lanes with a masked
    /// load from the address that puts x[src] in lane `dst`. Masked-off lanes are not read.
    #[inline(always)]
    unsafe fn gather(s: &ConvShape, x: &[f32], c: Cursor, col: &mut [f32; MAX_COLS]) {
        let mut row = [_mm256_setzero_ps(); 2];
        for (ky, kx, src, n) in window_runs(s, c) {
            let dst = (ky * s.k + kx) * s.cin;
            assert!(src + n <= x.len() && dst + n <= MAX_COLS);
            for (h, r) in row.iter_mut().enumerate() {
                let (lo, hi) = (
                    dst as isize - (h * H) as isize,
                    (dst + n) as isize - (h * H) as isize,
                );
                if hi <= 0 || lo >= H as isize {
                    continue;
                }
                // Lane j of half h reads x[src − dst + h·8 + j]: inside the run exactly for the
                // lanes the mask keeps.
                let base = x.as_ptr().wrapping_add(src + h * H).wrapping_sub(dst);
                *r = _mm256_or_ps(*r, _mm256_maskload_ps(base, lane_range(lo, hi)));
            }
        }
        _mm256_storeu_ps(col.as_mut_ptr(), row[0]);
        _mm256_storeu_ps(col.as_mut_ptr().add(H), row[1]);
    }
}

/// `y = conv(x, w)` over the images of one task (`wt`: [kk, Cout rounded up to 16]).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn forward(s: &ConvShape, x: &[f32], wt: &[f32], y: &mut [f32]) {
    let (kk, cp) = (s.col_k(), round_up(s.cout));
    pixel_blocks::<Rows>(s, x, y.len() / s.cout, |q0, np, col| {
        for g in (0..s.cout).step_by(H) {
            let mut acc = [_mm256_setzero_ps(); P];
            for t in 0..kk {
                let wv = _mm256_loadu_ps(wt[t * cp + g..][..H].as_ptr());
                for (a, c) in acc.iter_mut().zip(col) {
                    *a = _mm256_fmadd_ps(_mm256_set1_ps(c[t]), wv, *a);
                }
            }
            let n = (s.cout - g).min(H);
            for (j, a) in acc[..np].iter().enumerate() {
                let o = (q0 + j) * s.cout + g;
                assert!(o + n <= y.len());
                let at = y.as_mut_ptr().add(o);
                if n == H {
                    _mm256_storeu_ps(at, *a);
                } else {
                    // Microcoded on AMD's cores: only a last, partial register uses it.
                    _mm256_maskstore_ps(at, lane_range(0, n as isize), *a);
                }
            }
        }
    });
}

/// `dx += ∂conv/∂x · dy` over the images of one task (`wp`: [Cout, 16], the taps padded).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn backward_data(s: &ConvShape, wp: &[f32], dy: &[f32], dx: &mut [f32]) {
    let pixels = dy.len() / s.cout;
    let kk = s.col_k();
    // Rows past the last pixel read zeros, so every sum runs over all P.
    let zeros = [0f32; MAX_COUT];
    let mut dcol = [[0f32; MAX_COLS]; P];
    let mut cur = Cursor::START;
    for q0 in (0..pixels).step_by(P) {
        let np = P.min(pixels - q0);
        let rows: [&[f32]; P] = std::array::from_fn(|j| {
            if j < np {
                &dy[(q0 + j) * s.cout..]
            } else {
                &zeros
            }
        });
        // dcol_j[t] = Σ_co dy[j, co]·w[co, t], eight taps at a time (the second half only
        // where there are more than eight taps; its lanes are otherwise never read).
        for h in (0..kk.div_ceil(H)).map(|h| h * H) {
            let mut acc = [_mm256_setzero_ps(); P];
            for co in 0..s.cout {
                let wv = _mm256_loadu_ps(wp[co * L + h..][..H].as_ptr());
                for (a, r) in acc.iter_mut().zip(&rows) {
                    *a = _mm256_fmadd_ps(_mm256_set1_ps(r[co]), wv, *a);
                }
            }
            for (c, a) in dcol.iter_mut().zip(&acc) {
                _mm256_storeu_ps(c[h..][..H].as_mut_ptr(), *a);
            }
        }
        for c in &dcol[..np] {
            super::scatter_add(s, c, cur, dx);
            cur.advance(s);
        }
    }
}

/// `acc[t, co] += Σ_p col_p[t]·dy[p, co]` over the images of one task (`acc`: [kk, Cout
/// rounded up to 16]).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn backward_weights(s: &ConvShape, x: &[f32], dy: &[f32], acc: &mut [f32]) {
    let (kk, cp) = (s.col_k(), round_up(s.cout));
    pixel_blocks::<Rows>(s, x, dy.len() / s.cout, |q0, np, col| {
        for g in (0..s.cout).step_by(H) {
            let n = (s.cout - g).min(H);
            let mut dv = [_mm256_setzero_ps(); P];
            for (j, d) in dv[..np].iter_mut().enumerate() {
                let o = (q0 + j) * s.cout + g;
                assert!(o + n <= dy.len());
                let at = dy.as_ptr().add(o);
                *d = if n == H {
                    _mm256_loadu_ps(at)
                } else {
                    _mm256_maskload_ps(at, lane_range(0, n as isize))
                };
            }
            for t in 0..kk {
                let a = acc[t * cp + g..][..H].as_mut_ptr();
                let mut v = _mm256_loadu_ps(a);
                for (d, c) in dv.iter().zip(col) {
                    v = _mm256_fmadd_ps(_mm256_set1_ps(c[t]), *d, v);
                }
                _mm256_storeu_ps(a, v);
            }
        }
    });
}
