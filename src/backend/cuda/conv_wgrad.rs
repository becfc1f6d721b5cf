//! The weight gradient of a k×k convolution without an im2col matrix (kernels/conv_wgrad.cu):
//! `dw += dyᵀ · A` with A gathered from `x` tile by tile, the pixels split into slices whose
//! partial tiles are then added in a fixed order. TF32 / BF16 on the tensor cores, Fp32 exact
//! on the CUDA cores (`conv_wgrad_simt*`).
//!
//! Used by [`super::conv_implicit::conv2d_backward`] with the implicit and halo algorithms;
//! the im2col algorithm keeps `conv.rs` (im2col + cuBLAS).

use super::context::{int, Arg, CudaBackend};
use super::conv_implicit::{by_vec, geometry_args, staging_vec};
use super::kernels::names::conv_wgrad as kw;
use crate::backend::{ConvShape, Precision};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Output tile (Cout × K) and pixel chunk of kernels/conv_wgrad.cu.
const TILE: usize = 64;
const CHUNK: usize = 32;
/// Threads per block: tensor cores 128 (4 warps of 32 × 32), simt 256 (4 × 4 outputs each).
const TC_THREADS: u32 = 128;
const SIMT_THREADS: u32 = 256;
/// Blocks to aim for: enough to fill any current GPU several times over.
const TARGET_BLOCKS: usize = 512;
/// Fewest chunks of 32 pixels per slice (so a slice's partial tile is worth its write).
const MIN_CHUNKS: usize = 8;

/// The pixel slices of `s`: (slices, pixels per slice, a multiple of the chunk). Depends on the
/// shape alone, so results are the same on every device.
fn slices(s: &ConvShape) -> (usize, usize) {
    let m = s.b * s.ho * s.wo;
    let tiles = s.cout.div_ceil(TILE) * s.col_k().div_ceil(TILE);
    let chunks = m.div_ceil(CHUNK);
    let want = TARGET_BLOCKS.div_ceil(tiles).max(1);
    let most = (chunks / MIN_CHUNKS).max(1);
    let splits = want.min(most);
    let mper = chunks.div_ceil(splits) * CHUNK;
    (m.div_ceil(mper), mper)
}

/// `dw += ∂L/∂w` of the convolution `s` (x `[B, H, W, Cin]`, dy `[B, Ho, Wo, Cout]`,
/// dw `[Cout, k, k, Cin]`), lengths checked by the caller.
pub(crate) fn conv2d_wgrad(
    be: &CudaBackend,
    s: &ConvShape,
    x: Tensor,
    dy: Tensor,
    dw: Tensor,
) -> Result<()> {
    let (xp, dyp, dwp) = (be.ptr(x)?, be.ptr(dy)?, be.ptr(dw)?);
    let vec = staging_vec(&[s.cin, s.cout], &[xp, dyp]);
    let (family, threads) = match be.precision_impl() {
        Precision::Fp32 => (
            [
                kw::CONV_WGRAD_SIMT,
                kw::CONV_WGRAD_SIMT_V2,
                kw::CONV_WGRAD_SIMT_V4,
            ],
            SIMT_THREADS,
        ),
        Precision::Tf32 => (
            [
                kw::CONV_WGRAD_TF32,
                kw::CONV_WGRAD_TF32_V2,
                kw::CONV_WGRAD_TF32_V4,
            ],
            TC_THREADS,
        ),
        Precision::Bf16 => (
            [
                kw::CONV_WGRAD_BF16,
                kw::CONV_WGRAD_BF16_V2,
                kw::CONV_WGRAD_BF16_V4,
            ],
            TC_THREADS,
        ),
    };
    let kernel = by_vec(vec, family);
    let m = s.b * s.ho * s.wo;
    let kdim = s.col_k();
    if m == 0 || s.cout == 0 || kdim == 0 {
        return Ok(());
    }
    let (splits, mper) = slices(s);
    // The kernel forms a slice's end (z·mper + mper) and the tile origins in 32 bits; offsets
    // are 64-bit.
    int("conv output pixels (with a slice of headroom)", m + mper)?;
    int(
        "conv k·k·Cin (rounded to the tile)",
        kdim.next_multiple_of(TILE),
    )?;
    int("conv B·H", s.b * s.h)?;
    let (gx, gy) = (s.cout.div_ceil(TILE), kdim.div_ceil(TILE));
    if gy > 65535 || splits > 65535 {
        return Err(Error::Device(format!(
            "conv {s:?}: weight-gradient grid ({gx}, {gy}, {splits}) exceeds the launch limits"
        )));
    }
    let len = s.cout * kdim;
    be.with_workspace(splits * len, |part| {
        be.launch(
            kernel,
            (gx as u32, gy as u32, splits as u32),
            (threads, 1, 1),
            0,
            &[Arg::Ptr(xp), Arg::Ptr(dyp), Arg::Ptr(part)]
                .into_iter()
                .chain(geometry_args(s)?)
                .chain([Arg::I32(int("conv pixels per slice", mper)?)])
                .collect::<Vec<_>>(),
        )?;
        be.launch_1d(
            kw::CONV_WGRAD_REDUCE,
            len,
            &[
                Arg::Ptr(part),
                Arg::Ptr(dwp),
                Arg::I32(splits as i32),
                Arg::I64(len as i64),
            ],
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(b: usize, hw: usize, cin: usize, cout: usize, k: usize, stride: usize) -> ConvShape {
        let pad = k / 2;
        let ho = (hw + 2 * pad - k) / stride + 1;
        ConvShape {
            b,
            h: hw,
            w: hw,
            cin,
            cout,
            k,
            stride,
            pad,
            ho,
            wo: ho,
        }
    }

    #[test]
    fn slices_cover_every_pixel_once() {
        for s in [
            shape(64, 75, 30, 30, 3, 1),
            shape(64, 10, 240, 240, 3, 1),
            shape(1, 5, 3, 8, 3, 2),
            shape(2, 13, 37, 70, 3, 1),
        ] {
            let m = s.b * s.ho * s.wo;
            let (splits, mper) = slices(&s);
            assert_eq!(mper % CHUNK, 0, "{s:?}");
            assert!(
                splits * mper >= m && (splits - 1) * mper < m,
                "{s:?}: {splits} × {mper}"
            );
            let tiles = s.cout.div_ceil(TILE) * s.col_k().div_ceil(TILE);
            assert!(splits == 1 || mper >= MIN_CHUNKS * CHUNK, "{s:?}");
            assert!(tiles * splits <= 2 * TARGET_BLOCKS + tiles, "{s:?}");
        }
    }
}
