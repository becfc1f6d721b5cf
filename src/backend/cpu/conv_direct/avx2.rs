//! The direct kernels in AVX2 with FMA: each 16-lane vector of a tile is two 8-lane
//! registers (the packed layout is the AVX-512 one), and the blocks are sized for 16
//! registers instead of 32 ([`super::Isa::block_rows`]).
//!
//! Every lane computes what the AVX-512 kernels compute, in the same order with the same
//! fused multiply-adds, so both give the same bits (tested in `super::tests`).

use std::arch::x86_64::*;

use super::{Block, WgradBlock, L};

/// Lanes of one register.
const H: usize = 8;

/// The lanes of half `h` of vector `i` of a tile that hold one of its `cols` channels, as
/// `maskload` / `maskstore` take them (all bits set where a lane is used).
#[target_feature(enable = "avx2")]
fn lane_mask(cols: usize, i: usize, h: usize) -> __m256i {
    let n = cols.saturating_sub(i * L + h * H).min(H) as i32;
    _mm256_cmpgt_epi32(
        _mm256_set1_epi32(n),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    )
}

/// How many of the tile's `cols` channels half `h` of vector `i` holds.
fn lanes(cols: usize, i: usize, h: usize) -> usize {
    cols.saturating_sub(i * L + h * H).min(H)
}

/// `at[..8]` where the half holds 8 channels, else its `lanes(cols, i, h)` first lanes and
/// zeros (a masked store is microcoded and slow on AMD's cores: only partial halves use it).
#[target_feature(enable = "avx2")]
unsafe fn load_half(at: *const f32, cols: usize, i: usize, h: usize) -> __m256 {
    if lanes(cols, i, h) == H {
        _mm256_loadu_ps(at)
    } else {
        _mm256_maskload_ps(at, lane_mask(cols, i, h))
    }
}

/// Stores the half's channels at `at`, leaving the lanes past them untouched.
#[target_feature(enable = "avx2")]
unsafe fn store_half(at: *mut f32, cols: usize, i: usize, h: usize, v: __m256) {
    match lanes(cols, i, h) {
        0 => {}
        H => _mm256_storeu_ps(at, v),
        _ => _mm256_maskstore_ps(at, lane_mask(cols, i, h), v),
    }
}

/// The block's `PB` (= `b.pixels`) outputs × `V` vectors of channels, summed over the taps
/// `b.taps` (and added to `y` where `b.accumulate`).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn block<const V: usize, const PB: usize>(b: &Block, y: &mut [f32]) {
    let x = b.x.as_ptr();
    let w = b.w.as_ptr();
    let out = y.as_mut_ptr();
    let mut acc = [[[_mm256_setzero_ps(); 2]; V]; PB];
    if b.accumulate {
        for (p, accp) in acc.iter_mut().enumerate() {
            for (i, a) in accp.iter_mut().enumerate() {
                for (h, ah) in a.iter_mut().enumerate() {
                    *ah = load_half(out.add(p * b.y_ps + i * L + h * H), b.cols, i, h);
                }
            }
        }
    }
    // As in the AVX-512 kernel: the pass's taps a row of taps (one ky) at a time, each row
    // one loop over (kx1 − kx0)·cin consecutive inputs per pixel.
    let (k, cin) = (b.k, b.cin);
    let mut tap = b.taps.start;
    while tap < b.taps.end {
        let (ky, kx0) = (tap / k, tap % k);
        let kx1 = k.min(kx0 + b.taps.end - tap);
        let xr = x.add(ky * b.x_rs + kx0 * cin);
        // Opaque to the optimiser, as in the AVX-512 kernel: the PB pointers stay in registers.
        let xs: [*const f32; PB] = std::hint::black_box(std::array::from_fn(|p| xr.add(p * cin)));
        let mut wr = w.add(tap * cin * V * L);
        for j in 0..(kx1 - kx0) * cin {
            let mut wv = [[_mm256_setzero_ps(); 2]; V];
            for (i, wvi) in wv.iter_mut().enumerate() {
                wvi[0] = _mm256_loadu_ps(wr.add(i * L));
                wvi[1] = _mm256_loadu_ps(wr.add(i * L + H));
            }
            wr = wr.add(V * L);
            for (accp, xp) in acc.iter_mut().zip(&xs) {
                let xv = _mm256_broadcast_ss(&*xp.add(j));
                for (a, wvi) in accp.iter_mut().zip(&wv) {
                    a[0] = _mm256_fmadd_ps(xv, wvi[0], a[0]);
                    a[1] = _mm256_fmadd_ps(xv, wvi[1], a[1]);
                }
            }
        }
        tap += kx1 - kx0;
    }
    for (p, accp) in acc.iter().enumerate() {
        for (i, a) in accp.iter().enumerate() {
            for (h, ah) in a.iter().enumerate() {
                store_half(out.add(p * b.y_ps + i * L + h * H), b.cols, i, h, *ah);
            }
        }
    }
}

/// The weight-gradient block's `R` (= `b.nci`) input channels × `V` vectors of output
/// channels, added into `out` over its row's pixels: per pixel, 2·V loads of dy and R
/// broadcasts of x.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn wgrad<const V: usize, const R: usize>(b: &WgradBlock, out: &mut [f32]) {
    let s = b.s;
    let (ky, kx) = b.tap;
    let o = out.as_mut_ptr();
    let mut acc = [[[_mm256_setzero_ps(); 2]; V]; R];
    for (r, accr) in acc.iter_mut().enumerate() {
        for (i, a) in accr.iter_mut().enumerate() {
            for (h, ah) in a.iter_mut().enumerate() {
                *ah = _mm256_loadu_ps(o.add((r * V + i) * L + h * H));
            }
        }
    }
    let row = b.row;
    let (img, oy) = (row / s.ho, row % s.ho);
    let x =
        b.xp.as_ptr()
            .add(((img * b.hp + oy + ky) * b.wp + kx) * s.cin + b.ci0);
    let d = b.dy.as_ptr().add(row * s.wo * s.cout + b.c0);
    for ox in 0..s.wo {
        let mut dv = [[_mm256_setzero_ps(); 2]; V];
        for (i, dvi) in dv.iter_mut().enumerate() {
            for (h, dvh) in dvi.iter_mut().enumerate() {
                // Lanes past the tile's channels read as zero, as AVX-512's maskz load.
                *dvh = load_half(d.add(ox * s.cout + i * L + h * H), b.cols, i, h);
            }
        }
        for (r, accr) in acc.iter_mut().enumerate() {
            let xv = _mm256_broadcast_ss(&*x.add(ox * s.cin + r));
            for (a, dvi) in accr.iter_mut().zip(&dv) {
                a[0] = _mm256_fmadd_ps(xv, dvi[0], a[0]);
                a[1] = _mm256_fmadd_ps(xv, dvi[1], a[1]);
            }
        }
    }
    for (r, accr) in acc.iter().enumerate() {
        for (i, a) in accr.iter().enumerate() {
            for (h, ah) in a.iter().enumerate() {
                _mm256_storeu_ps(o.add((r * V + i) * L + h * H), *ah);
            }
        }
    }
}
