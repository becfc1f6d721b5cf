//! The direct kernels in AVX-512: one 16-lane register per vector of a tile.

use std::arch::x86_64::*;

use super::{Block, WgradBlock, L};

/// The lanes of vector `i` of a tile that hold one of its `cols` channels.
fn lane_mask(cols: usize, i: usize) -> __mmask16 {
    let n = cols.saturating_sub(i * L).min(L);
    ((1u32 << n) - 1) as __mmask16
}

/// The block's `PB` (= `b.pixels`) outputs × `V` vectors of channels, summed over the taps
/// `b.taps` (and added to `y` where `b.accumulate`).
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn block<const V: usize, const PB: usize>(b: &Block, y: &mut [f32]) {
    let x = b.x.as_ptr();
    let w = b.w.as_ptr();
    let out = y.as_mut_ptr();
    let mask = |i: usize| lane_mask(b.cols, i);
    let mut acc = [[_mm512_setzero_ps(); V]; PB];
    if b.accumulate {
        for (p, accp) in acc.iter_mut().enumerate() {
            for (i, a) in accp.iter_mut().enumerate() {
                *a = _mm512_maskz_loadu_ps(mask(i), out.add(p * b.y_ps + i * L));
            }
        }
    }
    // The pass's taps row by row: for one ky, taps kx0..kx1 read the (kx1 − kx0)·cin
    // consecutive floats from pixel (ox0 + p + kx0) on, so each row of taps is one loop
    // (same order of terms as tap by tap, channel by channel).
    let (k, cin) = (b.k, b.cin);
    let mut tap = b.taps.start;
    while tap < b.taps.end {
        let (ky, kx0) = (tap / k, tap % k);
        let kx1 = k.min(kx0 + b.taps.end - tap);
        // Input (oy + ky, ox0 + p + kx0, ·) for each pixel, and tap (ky, kx0, 0)'s weights.
        let xr = x.add(ky * b.x_rs + kx0 * cin);
        // Opaque to the optimiser: otherwise it rebuilds each pixel's address from one
        // base every iteration (two integer operations per broadcast) instead of keeping
        // the PB pointers in registers.
        let xs: [*const f32; PB] = std::hint::black_box(std::array::from_fn(|p| xr.add(p * cin)));
        let mut wr = w.add(tap * cin * V * L);
        for j in 0..(kx1 - kx0) * cin {
            let mut wv = [_mm512_setzero_ps(); V];
            for (i, wvi) in wv.iter_mut().enumerate() {
                *wvi = _mm512_loadu_ps(wr.add(i * L));
            }
            wr = wr.add(V * L);
            for (accp, xp) in acc.iter_mut().zip(&xs) {
                let xv = _mm512_set1_ps(*xp.add(j));
                for (a, wvi) in accp.iter_mut().zip(&wv) {
                    *a = _mm512_fmadd_ps(xv, *wvi, *a);
                }
            }
        }
        tap += kx1 - kx0;
    }
    for (p, accp) in acc.iter().enumerate() {
        for (i, a) in accp.iter().enumerate() {
            if i * L < b.cols {
                _mm512_mask_storeu_ps(out.add(p * b.y_ps + i * L), mask(i), *a);
            }
        }
    }
}

/// The weight-gradient block's `R` (= `b.nci`) input channels × `V` vectors of output
/// channels, added into `out` over its row's pixels: per pixel, V loads of dy and R
/// broadcasts of x.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn wgrad<const V: usize, const R: usize>(b: &WgradBlock, out: &mut [f32]) {
    let s = b.s;
    let (ky, kx) = b.tap;
    let masks: [__mmask16; V] = std::array::from_fn(|i| lane_mask(b.cols, i));
    let o = out.as_mut_ptr();
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    for (r, accr) in acc.iter_mut().enumerate() {
        for (i, a) in accr.iter_mut().enumerate() {
            *a = _mm512_loadu_ps(o.add((r * V + i) * L));
        }
    }
    let row = b.row;
    let (img, oy) = (row / s.ho, row % s.ho);
    let x =
        b.xp.as_ptr()
            .add(((img * b.hp + oy + ky) * b.wp + kx) * s.cin + b.ci0);
    let d = b.dy.as_ptr().add(row * s.wo * s.cout + b.c0);
    for ox in 0..s.wo {
        let mut dv = [_mm512_setzero_ps(); V];
        for (i, dvi) in dv.iter_mut().enumerate() {
            *dvi = _mm512_maskz_loadu_ps(masks[i], d.add(ox * s.cout + i * L));
        }
        for (r, accr) in acc.iter_mut().enumerate() {
            let xv = _mm512_set1_ps(*x.add(ox * s.cin + r));
            for (a, dvi) in accr.iter_mut().zip(&dv) {
                *a = _mm512_fmadd_ps(xv, *dvi, *a);
            }
        }
    }
    for (r, accr) in acc.iter().enumerate() {
        for (i, a) in accr.iter().enumerate() {
            _mm512_storeu_ps(o.add((r * V + i) * L), *a);
        }
    }
}
