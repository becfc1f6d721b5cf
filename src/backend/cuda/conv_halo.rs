//! 3×3 stride-1 convolutions on the halo-tile tensor-core kernels (kernels/conv_halo.cu):
//! forward with the fused epilogue, and the data gradient as the forward of the transposed
//! convolution. Chosen by `conv_implicit.rs` under [`super::ConvAlgo::Halo`] (the default) for
//! the shapes [`applies`] accepts; every other shape runs the implicit-GEMM kernels.
//!
//! Every precision runs on the tensor cores: BF16 and TF32 operands (rounded to nearest when
//! staged), fp32 as 3×TF32 (each product from TF32 halves, fp32-accurate; wmma_ops.cuh
//! `OpTf32x3`). The weights are first packed per call (`conv_halo_pack_*`) into the layout the
//! kernel copies to shared memory with cp.async: `[⌈Cin/KS⌉][9][Np][KS]` in the operand type,
//! `KS` = 16 (BF16) or 8 (f32), `Np` = Cout rounded up to the column tile; workspace.

use super::context::{env_number, int, Arg, CudaBackend, Kernel};
use super::conv_implicit::staging_vec;
use super::kernels::names::conv_halo as kh;
use crate::backend::{ConvShape, Precision};
use crate::error::{Error, Result};

/// Output patch of one block (kernels/conv_halo.cu `TH × TW`).
const PATCH_H: usize = 8;
const PATCH_W: usize = 16;
const THREADS: u32 = 128;
/// Bytes per operand row in shared memory, and the halo's input pixels.
const ROW_BYTES: usize = 48;
const HALO_PIXELS: usize = (PATCH_H + 2) * (PATCH_W + 2);
/// Below this share of the patches' pixels being real outputs the implicit kernels run instead
/// (W30: the 75×75 and 38×38 branches fill 88% and 75%; 19×19 and 10×10 only 47% and 39%).
/// A first guess, to be set from `prrnet bench-conv --halo-min-fill 0` on a GPU;
/// `PRRNET_HALO_MIN_FILL` or [`CudaBackend::set_halo_min_fill`] override it.
pub(crate) const MIN_FILL: f64 = 0.5;

/// `PRRNET_HALO_MIN_FILL` when set (a number in [0, 1]), else [`MIN_FILL`].
pub(crate) fn min_fill_from_env() -> Result<f64> {
    env_number(
        "PRRNET_HALO_MIN_FILL",
        MIN_FILL,
        |f| (0.0..=1.0).contains(&f),
        "a number in [0, 1]",
    )
}

/// The share of the launched patch pixels that are output pixels of `s`.
fn fill(s: &ConvShape) -> f64 {
    let ph = s.ho.div_ceil(PATCH_H) * PATCH_H;
    let pw = s.wo.div_ceil(PATCH_W) * PATCH_W;
    (s.ho * s.wo) as f64 / (ph * pw) as f64
}

/// Whether the halo kernels can run `s` (3×3, stride 1, padding ≤ 2, an even Cin: the input
/// is staged two or four floats at a time) with a patch fill of at least `min_fill`.
pub(crate) fn applies(s: &ConvShape, min_fill: f64) -> bool {
    s.k == 3
        && s.stride == 1
        && s.pad <= 2
        && s.cin.is_multiple_of(2)
        && s.ho > 0
        && s.wo > 0
        && fill(s) >= min_fill
}

/// The staging vector (2 or 4 floats) for input `x` of `s`, None when `x` is not aligned to
/// one (arena tensors always are; the caller then runs the implicit kernels).
pub(crate) fn staging(s: &ConvShape, x: u64) -> Option<usize> {
    Some(staging_vec(&[s.cin], &[x])).filter(|&v| v >= 2)
}

/// Output channels per block: 32 when that covers Cout, else 64.
fn tile_n(cout: usize) -> usize {
    if cout <= 32 {
        32
    } else {
        64
    }
}

/// Values per chunk (the MMA's k) and bytes per value.
fn chunk(p: Precision) -> (usize, usize) {
    match p {
        Precision::Bf16 => (16, 2),
        Precision::Tf32 | Precision::Fp32 => (8, 4),
    }
}

/// Dynamic shared memory of a launch with column tile `bn`: two stages of the halo and of the
/// weights, or the f32 C tile that reuses them after the main loop.
fn smem_bytes(bn: usize) -> usize {
    let operands = 2 * HALO_PIXELS * ROW_BYTES + 2 * 9 * bn * ROW_BYTES;
    let c_tile = PATCH_H * PATCH_W * (bn + 4) * 4;
    operands.max(c_tile)
}

fn pack_kernel(p: Precision) -> Kernel {
    match p {
        Precision::Bf16 => kh::CONV_HALO_PACK_BF16,
        Precision::Tf32 => kh::CONV_HALO_PACK_TF32,
        Precision::Fp32 => kh::CONV_HALO_PACK_F32,
    }
}

/// The kernel for a precision, column tile (32 or 64) and staging vector (4, else 2).
fn conv_kernel(p: Precision, bn: usize, vec: usize) -> Kernel {
    use Precision::{Bf16, Fp32, Tf32};
    match (p, bn == 32, vec == 4) {
        (Bf16, true, true) => kh::CONV_HALO_BF16_N32_V4,
        (Bf16, true, false) => kh::CONV_HALO_BF16_N32_V2,
        (Bf16, false, true) => kh::CONV_HALO_BF16_N64_V4,
        (Bf16, false, false) => kh::CONV_HALO_BF16_N64_V2,
        (Tf32, true, true) => kh::CONV_HALO_TF32_N32_V4,
        (Tf32, true, false) => kh::CONV_HALO_TF32_N32_V2,
        (Tf32, false, true) => kh::CONV_HALO_TF32_N64_V4,
        (Tf32, false, false) => kh::CONV_HALO_TF32_N64_V2,
        (Fp32, true, true) => kh::CONV_HALO_X3_N32_V4,
        (Fp32, true, false) => kh::CONV_HALO_X3_N32_V2,
        (Fp32, false, true) => kh::CONV_HALO_X3_N64_V4,
        (Fp32, false, false) => kh::CONV_HALO_X3_N64_V2,
    }
}

/// `y = relu?(conv(x, w) + bias? + residual?)` for a shape [`applies`] accepts, on device
/// addresses `[x, w, bias, residual, y]` (0: absent; `residual` may equal `y`), staging `x`
/// `vec` floats at a time ([`staging`]). With
/// `transposed`, `w` holds the weights of the convolution whose data gradient this is (`s` is
/// then that gradient's own stride-1 shape: `s.cin` = the original Cout, `s.cout` = the
/// original Cin), packed flipped and transposed on the fly.
pub(crate) fn launch(
    be: &CudaBackend,
    s: &ConvShape,
    ptrs: [u64; 5],
    vec: usize,
    relu: bool,
    transposed: bool,
) -> Result<()> {
    debug_assert!(applies(s, 0.0), "conv_halo::launch on {s:?}");
    if s.b == 0 || s.cout == 0 {
        return Ok(());
    }
    let p = be.precision_impl();
    let (ks, value_bytes) = chunk(p);
    let bn = tile_n(s.cout);
    let npad = s.cout.next_multiple_of(bn);
    let chunks = s.cin.div_ceil(ks);
    let packed = chunks * 9 * npad * ks;
    let tiles = s.b * s.ho.div_ceil(PATCH_H) * s.wo.div_ceil(PATCH_W);
    int("conv halo patches", tiles)?;
    int("conv halo B·H·W", s.b * s.h * s.w)?;
    int("conv halo packed weights", packed)?;
    let grid_n = npad / bn;
    if grid_n > 65535 {
        return Err(Error::Device(format!(
            "conv {s:?}: {grid_n} column tiles exceed the launch limits"
        )));
    }
    let [x, w, bias, residual, y] = ptrs;
    let kernel = conv_kernel(p, bn, vec);
    let smem = smem_bytes(bn);
    be.allow_dynamic_smem(kernel, smem, 0)?;
    let packed_floats = (packed * value_bytes).div_ceil(4);
    be.with_workspace(packed_floats, |wp| {
        be.launch_1d(
            pack_kernel(p),
            packed,
            &[
                Arg::Ptr(w),
                Arg::I32(int("cout", s.cout)?),
                Arg::I32(int("cin", s.cin)?),
                Arg::I32(int("padded cout", npad)?),
                Arg::I32(transposed as i32),
                Arg::Ptr(wp),
                Arg::I64(packed as i64),
            ],
        )?;
        be.launch(
            kernel,
            (tiles as u32, grid_n as u32, 1),
            (THREADS, 1, 1),
            smem as u32,
            &[
                Arg::Ptr(x),
                Arg::Ptr(wp),
                Arg::Ptr(bias),
                Arg::Ptr(residual),
                Arg::Ptr(y),
                Arg::I32(int("h", s.h)?),
                Arg::I32(int("w", s.w)?),
                Arg::I32(int("cin", s.cin)?),
                Arg::I32(int("ho", s.ho)?),
                Arg::I32(int("wo", s.wo)?),
                Arg::I32(int("cout", s.cout)?),
                Arg::I32(int("pad", s.pad)?),
                Arg::I32(int("padded cout", npad)?),
                Arg::I32(relu as i32),
            ],
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn w30_branches_that_fill_their_patches_take_the_halo_kernels() {
        let s = |hw: usize, c: usize| ConvShape::new(64, hw, hw, c, c, 3, 1, 1);
        let by_default = |s: &ConvShape| applies(s, MIN_FILL);
        assert!(by_default(&s(75, 30)) && by_default(&s(38, 60)));
        assert!(!by_default(&s(19, 120)) && !by_default(&s(10, 240)));
        assert!(applies(&s(10, 240), 0.0), "any fill when asked");
        for (why, s) in [
            ("stride 2", ConvShape::new(2, 75, 75, 30, 60, 3, 2, 1)),
            ("pointwise", ConvShape::new(2, 16, 16, 30, 60, 1, 1, 0)),
            ("5×5", ConvShape::new(2, 16, 16, 4, 4, 5, 1, 2)),
        ] {
            assert!(!applies(&s, 0.0), "{why}");
        }
        assert!(
            by_default(&ConvShape::new(1, 8, 16, 4, 4, 3, 1, 1)),
            "exactly one patch"
        );
    }

    #[test]
    fn shared_memory_fits_an_sm80_block() {
        // An A100 allows 163 KB per block, an H100 227 KB.
        for bn in [32, 64] {
            assert!(smem_bytes(bn) <= 163 * 1024, "bn {bn}: {}", smem_bytes(bn));
        }
        assert_eq!(smem_bytes(32), 2 * 180 * 48 + 2 * 9 * 32 * 48);
    }
}
