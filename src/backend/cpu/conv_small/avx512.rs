//! The small-convolution kernels in AVX-512: a column row is one register.

use std::arch::x86_64::*;

use super::{
    pixel_blocks, round_up, window_runs, ConvShape, Cursor, Gather, L, MAX_COLS, MAX_COUT, P,
};

/// The first `n` lanes of a vector (all of them from 16 on).
fn lanes(n: usize) -> __mmask16 {
    ((1u32 << n.min(L)) - 1) as __mmask16
}

/// This module's [`Gather`].
struct Rows;

impl Gather for Rows {
    /// One output pixel's row of the column matrix, `(ky, kx, ci)` order, zero where the
    /// window leaves the image. The row (at most `MAX_COLS` = 16 floats) is put together in a
    /// register, each run of inputs expanded into its lanes, and stored whole: the products
    /// then read its values one at a time, and a load of what a masked store wrote waits for
    /// that store to retire (so did a `copy_from_slice` of a few floats, a `memmove` call).
    #[inline(always)]
    unsafe fn gather(s: &ConvShape, x: &[f32], c: Cursor, col: &mut [f32; MAX_COLS]) {
        let mut row = _mm512_setzero_ps();
        for (ky, kx, src, n) in window_runs(s, c) {
            let dst = (ky * s.k + kx) * s.cin;
            assert!(src + n <= x.len() && dst + n <= MAX_COLS);
            let m = (lanes(n) as u32) << dst;
            row = _mm512_mask_expandloadu_ps(row, m as __mmask16, x.as_ptr().add(src));
        }
        _mm512_storeu_ps(col.as_mut_ptr(), row);
    }
}

/// `y = conv(x, w)` over the images of one task (`wt`: [kk, Cout rounded up]).
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn forward(s: &ConvShape, x: &[f32], wt: &[f32], y: &mut [f32]) {
    let (kk, cp) = (s.col_k(), round_up(s.cout));
    pixel_blocks::<Rows>(s, x, y.len() / s.cout, |q0, np, col| {
        for g in (0..cp).step_by(L) {
            let mut acc = [_mm512_setzero_ps(); P];
            for t in 0..kk {
                let wv = _mm512_loadu_ps(wt[t * cp + g..][..L].as_ptr());
                for (a, c) in acc.iter_mut().zip(col) {
                    *a = _mm512_fmadd_ps(_mm512_set1_ps(c[t]), wv, *a);
                }
            }
            let m = lanes(s.cout - g);
            for (j, a) in acc[..np].iter().enumerate() {
                let o = (q0 + j) * s.cout + g;
                assert!(o + (s.cout - g).min(L) <= y.len());
                _mm512_mask_storeu_ps(y.as_mut_ptr().add(o), m, *a);
            }
        }
    });
}

/// `dx += ∂conv/∂x · dy` over the images of one task (`wp`: [Cout, L], the taps padded).
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn backward_data(s: &ConvShape, wp: &[f32], dy: &[f32], dx: &mut [f32]) {
    let pixels = dy.len() / s.cout;
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
        // dcol_j[t] = Σ_co dy[j, co]·w[co, t], all taps in one vector.
        let mut acc = [_mm512_setzero_ps(); P];
        for co in 0..s.cout {
            let wv = _mm512_loadu_ps(wp[co * L..][..L].as_ptr());
            for (a, r) in acc.iter_mut().zip(&rows) {
                *a = _mm512_fmadd_ps(_mm512_set1_ps(r[co]), wv, *a);
            }
        }
        for (c, a) in dcol.iter_mut().zip(&acc) {
            _mm512_storeu_ps(c.as_mut_ptr(), *a);
        }
        for c in &dcol[..np] {
            super::scatter_add(s, c, cur, dx);
            cur.advance(s);
        }
    }
}

/// `acc[t, co] += Σ_p col_p[t]·dy[p, co]` over the images of one task (`acc`: [kk, Cout
/// rounded up]).
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn backward_weights(s: &ConvShape, x: &[f32], dy: &[f32], acc: &mut [f32]) {
    let (kk, cp) = (s.col_k(), round_up(s.cout));
    pixel_blocks::<Rows>(s, x, dy.len() / s.cout, |q0, np, col| {
        for g in (0..cp).step_by(L) {
            let m = lanes(s.cout - g);
            let mut dv = [_mm512_setzero_ps(); P];
            for (j, d) in dv[..np].iter_mut().enumerate() {
                let o = (q0 + j) * s.cout + g;
                assert!(o + (s.cout - g).min(L) <= dy.len());
                *d = _mm512_maskz_loadu_ps(m, dy.as_ptr().add(o));
            }
            for t in 0..kk {
                let a = acc[t * cp + g..][..L].as_mut_ptr();
                let mut v = _mm512_loadu_ps(a);
                for (d, c) in dv.iter().zip(col) {
                    v = _mm512_fmadd_ps(_mm512_set1_ps(c[t]), *d, v);
                }
                _mm512_storeu_ps(a, v);
            }
        }
    });
}
