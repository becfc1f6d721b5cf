//! The relation map's kernel versions (SPEC §4.1) and the public API to run a named one.
//!
//! - [`RelationVersion::Simt`]: kernels/relation.cu, exact f32 on the CUDA cores (f64
//!   accumulators): the plain fp32 version, and every precision's fallback.
//! - [`RelationVersion::V1`]: kernels/relation_tc.cu `v1`, WMMA tensor cores (TF32 or BF16
//!   inputs, f32 accumulation), every tile through shared memory: the simple one.
//! - [`RelationVersion::V2`]: kernels/relation_tc.cu `v2`, `mma.sync` from registers, a 3-stage
//!   `cp.async` pipeline, register-resident epilogues (the bin sums as a second MMA against the
//!   0/1 bin membership; `M = dS + dSᵀ` turned into A fragments in place). Forward needs n ≤ 8.
//! - [`RelationVersion::V3`] (BF16 only): kernels/relation_tc.cu `v3`, v2's forward with
//!   `ldmatrix` fragment loads; a backward with 8 warps that keeps `dq` in registers (one
//!   `M` tile through shared memory per column tile, `Q_J` double-buffered whole). Forward needs
//!   n ≤ 8, backward C ≤ 480.
//! - [`RelationVersion::Split`] ([`Precision::Fp32`]): v2's kernels in "3×TF32": the operand
//!   copy stays exact f32 and every product `a·b` is `hi·hi + hi·lo + lo·hi` of TF32 halves
//!   (`x = hi + lo` to about 2⁻²² relative), three tensor-core MMAs with f32 accumulation.
//!   fp32 accuracy (the tests hold it to simt's 1e-5) at a third of the TF32 rate, which is
//!   still above the CUDA cores' f32 rate. Forward needs n ≤ 8.
//! - [`RelationVersion::Sym`] (every precision): kernels/relation_sym.cu, a forward that uses
//!   the scores' symmetry: each unordered pair of 128-row tiles is computed once and serves
//!   both row tiles (row sums for one, column sums through transposed fragments for the other:
//!   `movmatrix` in BF16, shuffles in TF32), half of the GEMM and exponentials of v3's (BF16),
//!   v2's (TF32) or split's (fp32, 3×TF32) forward, whose score loops it reuses; the blocks'
//!   partial sums meet in 64-bit fixed point (exact, order-free, so deterministic). Its
//!   backward is that of v3 (BF16), v2 (TF32) or split (fp32). Forward needs n ≤ 5.
//!
//! The tensor-core versions read a padded operand copy of `q` that their normalisation kernel
//! writes into the workspace: `[B, Np, Cp]` with `Np` = N rounded up to 128 and `Cp` = C rounded
//! up to 32, zero beyond N and C (TF32: f32 values rounded to TF32; split: exact f32; BF16: 2-byte values), so the
//! GEMM loops need no bounds checks. Workspace (floats, each part rounded up to 16):
//! forward `qop`, `pixbins [Np]` (every pixel's bins, packed; v2); backward the same, then the
//! recomputed norms `[B·N]`, `D [B·N]`, `gt [B·N, n²]`.
//!
//! [`CudaBackend::relation_forward_version`] / [`CudaBackend::relation_backward_version`] run a
//! named version; the `Backend` operations dispatch with [`CudaBackend::relation_dispatch`]:
//! every precision → the fastest tensor-core version that computes in it and supports the
//! shape (and fits the device's shared memory), simt when none does.
//! `PRRNET_RELATION_VERSION=simt|v1|…` overrides the choice when the named version computes in
//! the precision and supports the call (simt always can).

use std::sync::OnceLock;

use super::context::{int, Arg, CudaBackend, Kernel};
use super::kernels::names::relation_sym as ks;
use super::kernels::names::relation_tc as kt;
use crate::backend::{Precision, RelationShape, MAX_BINS_SIDE};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

pub use super::relation_cost::{
    relation_bytes, relation_executed_share, relation_flops, relation_workspace_bytes,
};
pub use super::relation_version::{relation_versions, RelationVersion};

// ---- geometry shared with the kernels (keep in step with kernels/relation_tc.cu) -------------

/// Rows of the operand copy are padded to a multiple of this (the largest row tile).
const ROW_PAD: usize = 128;
/// Channels of the operand copy are padded to a multiple of this (the staged chunk).
pub(super) const CHAN_PAD: usize = 32;

const fn a128(bytes: usize) -> usize {
    bytes.div_ceil(128) * 128
}

/// Bytes per operand element and the shared-memory row pitch (elements) of a 32-channel chunk.
pub(super) fn operand(p: Precision) -> (usize, usize) {
    match p {
        Precision::Bf16 => (2, 40),
        _ => (4, 36),
    }
}

pub(super) mod v1 {
    pub const THREADS: u32 = 128;
    pub const F_BM: usize = 128;
    pub const F_BN: usize = 64;
    pub const LDE: usize = F_BM + 4;
    pub const B_BM: usize = 32;
    pub const B_BN: usize = 64;
    pub const LDS: usize = B_BN + 4;
    pub const LDM: usize = B_BN + 8;
}

pub(super) mod v2 {
    pub const STAGES: usize = 3;
    pub const F_THREADS: u32 = 256;
    pub const F_BM: usize = 128;
    pub const F_BN: usize = 128;
    pub const B_THREADS: u32 = 128;
    pub const B_BM: usize = 64;
    pub const B_BN: usize = 64;
    /// Largest n of the forward (n² bins in at most 8 tiles of 8).
    pub const MAX_N: usize = 8;
    /// 8-bin tiles of the forward's accumulators for n: 2, 4 or 8.
    pub fn nbt(n: usize) -> usize {
        match n * n {
            0..=16 => 2,
            17..=32 => 4,
            _ => 8,
        }
    }
}

pub(super) mod v3 {
    pub const THREADS: u32 = 256;
    pub const BM: usize = 64;
    pub const BN: usize = 64;
    /// M tile row pitch (bf16).
    pub const LDM: usize = BN + 8;
    /// Largest padded channel count of the backward (dq's Cp/32 n8 tiles per warp in registers).
    pub const MAX_CPAD: usize = 480;

    /// Dynamic shared memory of the backward (kernels/relation_tc.cu `v3::Smem`).
    pub fn backward_smem(cpad: usize, nb: usize) -> usize {
        let a = super::a128;
        let ldq = cpad + 8;
        a(BM * ldq * 2)
            + a(2 * BN * ldq * 2)
            + a(BM * LDM * 2)
            + a(BM * nb * 4)
            + a(2 * BN * nb * 4)
            + 2 * 3 * BN * 4
    }
}

pub(super) mod sym {
    pub const THREADS: u32 = 256;
    pub const BM: usize = 128;
    /// Largest n of the forward: n² bins and the column sums in its 4 tiles of 8 slots
    /// (kernels/relation_sym.cu `SLOT_TILES`, one instantiation per precision).
    pub const MAX_N: usize = 5;
    /// Column-partial row pitch in floats (kernels/relation_sym.cu `col_pitch`): the 8-slot
    /// tiles holding the n² + 1 slots, made ≡ 8 or 24 mod 32.
    pub fn col_pitch(n: usize) -> usize {
        let cp = (n * n + 1).div_ceil(8) * 8;
        if cp.is_multiple_of(16) {
            cp + 8
        } else {
            cp
        }
    }
    /// Dynamic shared memory of the forward (kernels/relation_sym.cu): the 3-stage pipeline of
    /// v2/v3 (operand bytes `ob`, row pitch `lda`), then four row warps' column partials
    /// `[BM][col_pitch]` f32.
    pub fn forward_smem(n: usize, ob: usize, lda: usize) -> usize {
        let stages = super::v2::STAGES * 2 * BM * lda * ob;
        stages + 4 * BM * col_pitch(n) * 4
    }
    /// The version whose backward `sym` runs at precision `p`.
    pub fn backward_version(p: super::Precision) -> super::RelationVersion {
        match p {
            super::Precision::Bf16 => super::RelationVersion::V3,
            super::Precision::Tf32 => super::RelationVersion::V2,
            super::Precision::Fp32 => super::RelationVersion::Split,
        }
    }
    /// Floats of the fixed-point accumulators `[B·N, n² + 1]` (u64, two floats each).
    pub fn acc_floats(rows: usize, nb: usize) -> usize {
        (rows * (nb + 1) * 2).next_multiple_of(16)
    }
}

/// Dynamic shared memory of a version's forward kernel.
fn forward_smem(v: RelationVersion, p: Precision, n: usize) -> usize {
    let (ob, lda) = operand(p);
    let nb = n * n;
    match v {
        RelationVersion::Simt => 32 * nb * 8,
        RelationVersion::V1 => {
            a128(v1::F_BM * lda * ob)
                + a128(v1::F_BN * lda * ob)
                + a128(v1::F_BN * v1::LDE * 4)
                + a128(v1::F_BN * 4)
                + nb * v1::F_BM * 4
        }
        RelationVersion::V2 | RelationVersion::V3 | RelationVersion::Split => {
            let stages = v2::STAGES * (v2::F_BM + v2::F_BN) * lda * ob;
            let combine = v2::F_BM * (v2::nbt(n) * 8 + 1) * 4;
            stages.max(combine)
        }
        RelationVersion::Sym => sym::forward_smem(n, ob, lda),
    }
}

/// Dynamic shared memory of a version's backward kernel.
fn backward_smem(v: RelationVersion, p: Precision, n: usize, c: usize) -> usize {
    let (ob, lda) = operand(p);
    let nb = n * n;
    let ldg = nb | 1;
    let cpad = c.next_multiple_of(CHAN_PAD);
    match v {
        RelationVersion::Simt => 16 * c * 8 + (16 + 32) * nb * 4,
        RelationVersion::V1 => {
            a128(v1::B_BM * (cpad + 4) * 4)
                + a128(v1::B_BM * lda * ob)
                + a128(v1::B_BN * lda * ob)
                + a128(v1::B_BM * v1::LDS * 4)
                + a128(v1::B_BM * v1::LDM * ob)
                + a128(v1::B_BM * ldg * 4)
                + a128(v1::B_BN * ldg * 4)
                + a128((2 * v1::B_BM + 2 * v1::B_BN) * 4)
                + (v1::B_BM + v1::B_BN) * 4 * 4
        }
        RelationVersion::V2 | RelationVersion::Split => {
            v2::B_BM * (cpad + 8) * 4 + v2::STAGES * (v2::B_BM + v2::B_BN) * lda * ob
        }
        RelationVersion::V3 => v3::backward_smem(cpad, nb),
        RelationVersion::Sym => backward_smem(sym::backward_version(p), p, n, c),
    }
}

/// Padded operand geometry of a tensor-core call.
#[derive(Clone, Copy, Debug)]
pub(super) struct Padded {
    npad: usize,
    cpad: usize,
    /// Floats of the operand copy (rounded up to 16: 64-byte alignment of what follows).
    qop_floats: usize,
    /// Floats of the packed pixel bins `[Np]` that follow it (rounded up to 16).
    pixbin_floats: usize,
}

impl Padded {
    /// Floats of the operand copy and the pixel bins.
    pub(super) fn floats(&self) -> usize {
        self.qop_floats + self.pixbin_floats
    }
}

pub(super) fn padded(s: &RelationShape, p: Precision) -> Padded {
    let (ob, _) = operand(p);
    let npad = s.pixels().next_multiple_of(ROW_PAD);
    let cpad = s.c.next_multiple_of(CHAN_PAD);
    Padded {
        npad,
        cpad,
        qop_floats: (s.b * npad * cpad * ob / 4).next_multiple_of(16),
        pixbin_floats: npad.next_multiple_of(16),
    }
}

/// The kernels of one tensor-core version at one precision (and, for v2's forward, n).
struct TcKernels {
    normalize: Kernel,
    forward: Kernel,
    backward: Kernel,
    /// Threads per block and rows `i` per block, forward and backward.
    fwd_block: (u32, usize),
    bwd_block: (u32, usize),
}

fn tc_kernels(v: RelationVersion, p: Precision, n: usize) -> Option<TcKernels> {
    use Precision::{Bf16, Fp32, Tf32};
    use RelationVersion::{Split, Sym, V1, V2, V3};
    let normalize = match p {
        Tf32 => kt::RELATION_TC_NORMALIZE_TF32,
        Bf16 => kt::RELATION_TC_NORMALIZE_BF16,
        Fp32 => kt::RELATION_TC_NORMALIZE_F32,
    };
    let (forward, backward) = match (v, p) {
        (V1, Tf32) => (
            kt::RELATION_TC_V1_FORWARD_TF32,
            kt::RELATION_TC_V1_BACKWARD_TF32,
        ),
        (V1, Bf16) => (
            kt::RELATION_TC_V1_FORWARD_BF16,
            kt::RELATION_TC_V1_BACKWARD_BF16,
        ),
        (V2, Tf32) => (
            match v2::nbt(n) {
                2 => kt::RELATION_TC_V2_FORWARD_TF32_B2,
                4 => kt::RELATION_TC_V2_FORWARD_TF32_B4,
                _ => kt::RELATION_TC_V2_FORWARD_TF32_B8,
            },
            kt::RELATION_TC_V2_BACKWARD_TF32,
        ),
        (V2, Bf16) => (
            match v2::nbt(n) {
                2 => kt::RELATION_TC_V2_FORWARD_BF16_B2,
                4 => kt::RELATION_TC_V2_FORWARD_BF16_B4,
                _ => kt::RELATION_TC_V2_FORWARD_BF16_B8,
            },
            kt::RELATION_TC_V2_BACKWARD_BF16,
        ),
        (V3, Bf16) => (
            match v2::nbt(n) {
                2 => kt::RELATION_TC_V3_FORWARD_BF16_B2,
                4 => kt::RELATION_TC_V3_FORWARD_BF16_B4,
                _ => kt::RELATION_TC_V3_FORWARD_BF16_B8,
            },
            kt::RELATION_TC_V3_BACKWARD_BF16,
        ),
        (Sym, _) => {
            let fwd = match p {
                Bf16 => ks::RELATION_SYM_FORWARD_BF16,
                Tf32 => ks::RELATION_SYM_FORWARD_TF32,
                Fp32 => ks::RELATION_SYM_FORWARD_F32,
            };
            let bwd = tc_kernels(sym::backward_version(p), p, n)?;
            return Some(TcKernels {
                normalize,
                forward: fwd,
                backward: bwd.backward,
                fwd_block: (sym::THREADS, sym::BM),
                bwd_block: bwd.bwd_block,
            });
        }
        (Split, Fp32) => (
            match v2::nbt(n) {
                2 => kt::RELATION_TC_SPLIT_FORWARD_B2,
                4 => kt::RELATION_TC_SPLIT_FORWARD_B4,
                _ => kt::RELATION_TC_SPLIT_FORWARD_B8,
            },
            kt::RELATION_TC_SPLIT_BACKWARD,
        ),
        _ => return None,
    };
    let (fwd_block, bwd_block) = match v {
        V1 => ((v1::THREADS, v1::F_BM), (v1::THREADS, v1::B_BM)),
        V3 => ((v2::F_THREADS, v2::F_BM), (v3::THREADS, v3::BM)),
        _ => ((v2::F_THREADS, v2::F_BM), (v2::B_THREADS, v2::B_BM)),
    };
    Some(TcKernels {
        normalize,
        forward,
        backward,
        fwd_block,
        bwd_block,
    })
}

/// Why `v` cannot run `s` at `p` on `be` (None: it can).
fn unsupported(
    be: &CudaBackend,
    v: RelationVersion,
    p: Precision,
    s: &RelationShape,
    backward: bool,
) -> Option<String> {
    if !v.supports(p) {
        let ps: Vec<_> = v.precisions().iter().map(|p| p.to_string()).collect();
        return Some(format!(
            "relation version {v} computes in {} only, not {p}",
            ps.join(", ")
        ));
    }
    if s.n == 0 || s.n > MAX_BINS_SIDE || s.h < s.n || s.w < s.n {
        return Some(format!(
            "relation: bins n = {} must be in 1..={MAX_BINS_SIDE} and at most the map's sides \
             ({}×{})",
            s.n, s.h, s.w
        ));
    }
    if v == RelationVersion::Simt {
        return None;
    }
    let tc2 = matches!(
        v,
        RelationVersion::V2 | RelationVersion::V3 | RelationVersion::Split
    );
    if tc2 && !backward && s.n > v2::MAX_N {
        return Some(format!(
            "relation version {v} forward keeps n² ≤ {} bins in registers; n = {}",
            v2::MAX_N * v2::MAX_N,
            s.n
        ));
    }
    if v == RelationVersion::Sym && backward {
        // Its backward is another version's.
        return unsupported(be, sym::backward_version(p), p, s, true)
            .map(|why| format!("{why} (the backward of relation version {v})"));
    }
    if v == RelationVersion::Sym && s.n > sym::MAX_N {
        return Some(format!(
            "relation version {v} forward keeps n² + 1 ≤ {} bin sums in registers; n = {}",
            sym::MAX_N * sym::MAX_N + 1,
            s.n
        ));
    }
    let pd = padded(s, p);
    if v == RelationVersion::V3 && backward && pd.cpad > v3::MAX_CPAD {
        return Some(format!(
            "relation version {v} backward keeps dq of at most {} channels in registers; C = {}",
            v3::MAX_CPAD,
            s.c
        ));
    }
    if i32::try_from(s.b * pd.npad).is_err() || i32::try_from(pd.npad * pd.cpad).is_err() {
        return Some(format!(
            "relation version {v}: {} rows of {} channels exceed the kernels' 32-bit range",
            s.b * pd.npad,
            pd.cpad
        ));
    }
    let smem = if backward {
        backward_smem(v, p, s.n, s.c)
    } else {
        forward_smem(v, p, s.n)
    };
    if smem > be.max_smem_optin {
        return Some(format!(
            "relation version {v} {}: needs {smem} bytes of shared memory for n = {}, C = {}; \
             {} allows {}",
            if backward { "backward" } else { "forward" },
            s.n,
            s.c,
            be.name,
            be.max_smem_optin
        ));
    }
    None
}

/// Tensor-core versions, fastest first (each computes in the precisions it lists).
const TC_PREFERENCE: [RelationVersion; 5] = [
    RelationVersion::Sym,
    RelationVersion::V3,
    RelationVersion::V2,
    RelationVersion::Split,
    RelationVersion::V1,
];

fn env_override() -> Option<RelationVersion> {
    static V: OnceLock<Option<RelationVersion>> = OnceLock::new();
    *V.get_or_init(|| {
        std::env::var("PRRNET_RELATION_VERSION")
            .ok()
            .and_then(|s| s.parse().ok())
    })
}

impl CudaBackend {
    /// The version the relation operations use for `s` at precision `p` (the forward when
    /// `backward` is false): the fastest tensor-core version that computes in `p` and supports
    /// the shape on this device (fp32: [`RelationVersion::Split`]), else simt.
    /// `PRRNET_RELATION_VERSION` overrides the choice when that version can run it.
    pub fn relation_dispatch(
        &self,
        p: Precision,
        s: &RelationShape,
        backward: bool,
    ) -> RelationVersion {
        if let Some(v) = env_override() {
            if v == RelationVersion::Simt || unsupported(self, v, p, s, backward).is_none() {
                return v;
            }
        }
        TC_PREFERENCE
            .iter()
            .copied()
            .find(|&v| unsupported(self, v, p, s, backward).is_none())
            .unwrap_or(RelationVersion::Simt)
    }

    /// The versions measured against each other for `s` at `p` (`tune.rs`): the tensor-core
    /// versions that can run it, v1 (the simple one) left out, and for the backward each kernel
    /// once (sym's backward is another version's); simt alone where none can.
    pub(crate) fn relation_candidates(
        &self,
        p: Precision,
        s: &RelationShape,
        backward: bool,
    ) -> Vec<RelationVersion> {
        let mut out: Vec<RelationVersion> = Vec::new();
        for v in TC_PREFERENCE {
            let runs = if backward && v == RelationVersion::Sym {
                sym::backward_version(p)
            } else {
                v
            };
            if v != RelationVersion::V1
                && unsupported(self, v, p, s, backward).is_none()
                && !out.contains(&runs)
            {
                out.push(runs);
            }
        }
        if out.is_empty() {
            out.push(RelationVersion::Simt);
        }
        out
    }

    /// Whether `PRRNET_RELATION_VERSION` names a version (then nothing is measured).
    pub(crate) fn relation_version_fixed(&self) -> bool {
        env_override().is_some()
    }

    /// Whether `v` can run the relation `s` at `p` on this device (forward, and backward when
    /// `backward`); the error says why not.
    pub fn relation_version_check(
        &self,
        v: RelationVersion,
        p: Precision,
        s: &RelationShape,
        backward: bool,
    ) -> Result<()> {
        match unsupported(self, v, p, s, false).or_else(|| {
            if backward {
                unsupported(self, v, p, s, true)
            } else {
                None
            }
        }) {
            Some(why) => Err(Error::Device(why)),
            None => Ok(()),
        }
    }

    /// Whether `v`'s backward alone can run the relation `s` at `p` on this device (on the
    /// outputs of another version's forward, when its own forward refuses the shape).
    pub fn relation_backward_check(
        &self,
        v: RelationVersion,
        p: Precision,
        s: &RelationShape,
    ) -> Result<()> {
        match unsupported(self, v, p, s, true) {
            Some(why) => Err(Error::Device(why)),
            None => Ok(()),
        }
    }

    /// [`crate::backend::Backend::relation`] with a named version and precision (regardless of
    /// the backend's precision setting): `f: [B,N,C]` → `norms`, `lsum: [B,N]`, `p: [B,N,n,n]`.
    /// An error when the version does not compute in `precision` or cannot run the shape.
    #[allow(clippy::too_many_arguments)]
    pub fn relation_forward_version(
        &self,
        v: RelationVersion,
        precision: Precision,
        s: &RelationShape,
        f: Tensor,
        norms: Tensor,
        lsum: Tensor,
        p: Tensor,
    ) -> Result<()> {
        if let Some(why) = unsupported(self, v, precision, s, false) {
            return Err(Error::Device(why));
        }
        match v {
            RelationVersion::Simt => super::relation::simt_forward(self, s, f, norms, lsum, p),
            _ => tc_forward(self, v, precision, s, f, norms, lsum, p),
        }
    }

    /// [`crate::backend::Backend::relation_backward`] with a named version and precision:
    /// `df += ∂L/∂f` given `dp = ∂L/∂p` and the forward's `norms`, `lsum`, `p`.
    #[allow(clippy::too_many_arguments)]
    pub fn relation_backward_version(
        &self,
        v: RelationVersion,
        precision: Precision,
        s: &RelationShape,
        f: Tensor,
        norms: Tensor,
        lsum: Tensor,
        p: Tensor,
        dp: Tensor,
        df: Tensor,
    ) -> Result<()> {
        if let Some(why) = unsupported(self, v, precision, s, true) {
            return Err(Error::Device(why));
        }
        match v {
            RelationVersion::Simt => {
                super::relation::simt_backward(self, s, f, norms, lsum, p, dp, df)
            }
            _ => tc_backward(self, v, precision, s, f, norms, lsum, p, dp, df),
        }
    }
}

/// The operand copy (rows padded to `ROW_PAD`, channels to `CHAN_PAD`), the norms and the
/// packed pixel bins (each skipped when its pointer is 0).
#[allow(clippy::too_many_arguments)]
fn tc_normalize(
    be: &CudaBackend,
    k: Kernel,
    s: &RelationShape,
    pd: &Padded,
    f: u64,
    qop: u64,
    norms: u64,
    pixbins: u64,
) -> Result<()> {
    let rows = s.b * pd.npad;
    be.launch(
        k,
        (rows.div_ceil(8) as u32, 1, 1),
        (256, 1, 1),
        0,
        &[
            Arg::Ptr(f),
            Arg::I32(int("relation batch", s.b)?),
            Arg::I32(int("relation pixels", s.pixels())?),
            Arg::I32(int("relation padded pixels", pd.npad)?),
            Arg::I32(int("relation channels", s.c)?),
            Arg::I32(int("relation padded channels", pd.cpad)?),
            Arg::I32(s.h as i32),
            Arg::I32(s.w as i32),
            Arg::I32(s.n as i32),
            Arg::Ptr(qop),
            Arg::Ptr(norms),
            Arg::Ptr(pixbins),
        ],
    )
}

fn grid(s: &RelationShape, rows_per_block: usize) -> Result<(u32, u32, u32)> {
    if s.b > 65535 {
        return Err(Error::Device(format!(
            "relation: batch {} exceeds the grid's 65535 images",
            s.b
        )));
    }
    Ok((s.pixels().div_ceil(rows_per_block) as u32, s.b as u32, 1))
}

#[allow(clippy::too_many_arguments)]
fn tc_forward(
    be: &CudaBackend,
    v: RelationVersion,
    prec: Precision,
    s: &RelationShape,
    f: Tensor,
    norms: Tensor,
    lsum: Tensor,
    p: Tensor,
) -> Result<()> {
    let np = s.pixels();
    super::relation::check_tensors(s, f, norms, lsum, p, None)?;
    if s.b == 0 {
        return Ok(());
    }
    let k = tc_kernels(v, prec, s.n)
        .ok_or_else(|| Error::Device(format!("relation version {v} has no {prec} kernels")))?;
    let (fp, nrm, lp, pp) = (be.ptr(f)?, be.ptr(norms)?, be.ptr(lsum)?, be.ptr(p)?);
    let pd = padded(s, prec);
    let smem = forward_smem(v, prec, s.n);
    be.allow_dynamic_smem(k.forward, smem, 0)?;
    let g = grid(s, k.fwd_block.1)?;
    if v == RelationVersion::Sym {
        return sym_forward(be, &k, s, &pd, smem, g, fp, nrm, lp, pp);
    }
    let dims = [
        Arg::I32(int("relation pixels", np)?),
        Arg::I32(int("relation padded pixels", pd.npad)?),
        Arg::I32(int("relation padded channels", pd.cpad)?),
        Arg::I32(s.h as i32),
        Arg::I32(s.w as i32),
        Arg::I32(s.n as i32),
        Arg::Ptr(lp),
        Arg::Ptr(pp),
    ];
    be.with_workspace(pd.floats(), |ws| {
        let qop = ws;
        let pixbins = qop + (pd.qop_floats * 4) as u64;
        let with_bins = v != RelationVersion::V1;
        tc_normalize(
            be,
            k.normalize,
            s,
            &pd,
            fp,
            qop,
            nrm,
            if with_bins { pixbins } else { 0 },
        )?;
        let mut args = vec![Arg::Ptr(qop)];
        if with_bins {
            args.push(Arg::Ptr(pixbins));
        }
        args.extend_from_slice(&dims);
        be.launch(k.forward, g, (k.fwd_block.0, 1, 1), smem as u32, &args)
    })
}

/// The symmetric forward (kernels/relation_sym.cu): normalise, clear the fixed-point sums,
/// the tile pairs, then P and l from the sums. Workspace: the operand copy, the pixel bins, then
/// `acc [B·N, n² + 1]` u64.
#[allow(clippy::too_many_arguments)]
fn sym_forward(
    be: &CudaBackend,
    k: &TcKernels,
    s: &RelationShape,
    pd: &Padded,
    smem: usize,
    g: (u32, u32, u32),
    f: u64,
    norms: u64,
    lsum: u64,
    p: u64,
) -> Result<()> {
    let rows = s.b * s.pixels();
    let slots = s.bins() + 1;
    let acc_len = rows * slots;
    let acc_floats = sym::acc_floats(rows, s.bins());
    be.with_workspace(pd.floats() + acc_floats, |ws| {
        let qop = ws;
        let pixbins = qop + (pd.qop_floats * 4) as u64;
        let acc = pixbins + (pd.pixbin_floats * 4) as u64;
        tc_normalize(be, k.normalize, s, pd, f, qop, norms, pixbins)?;
        // The sums start from zero: 0.0f is the all-zero word, so two per u64.
        super::elementwise::fill_ptr(be, acc, 2 * acc_len, 0.0)?;
        be.launch(
            k.forward,
            g,
            (k.fwd_block.0, 1, 1),
            smem as u32,
            &[
                Arg::Ptr(qop),
                Arg::Ptr(pixbins),
                Arg::I32(int("relation pixels", s.pixels())?),
                Arg::I32(int("relation padded pixels", pd.npad)?),
                Arg::I32(int("relation padded channels", pd.cpad)?),
                Arg::I32(s.n as i32),
                Arg::Ptr(acc),
            ],
        )?;
        be.launch(
            ks::RELATION_SYM_FINALIZE,
            (rows.div_ceil(256) as u32, 1, 1),
            (256, 1, 1),
            0,
            &[
                Arg::Ptr(acc),
                Arg::I32(int("relation rows", rows)?),
                Arg::I32(s.h as i32),
                Arg::I32(s.w as i32),
                Arg::I32(s.n as i32),
                Arg::Ptr(lsum),
                Arg::Ptr(p),
            ],
        )
    })
}

#[allow(clippy::too_many_arguments)]
fn tc_backward(
    be: &CudaBackend,
    v: RelationVersion,
    prec: Precision,
    s: &RelationShape,
    f: Tensor,
    norms: Tensor,
    lsum: Tensor,
    p: Tensor,
    dp: Tensor,
    df: Tensor,
) -> Result<()> {
    let v = if v == RelationVersion::Sym {
        sym::backward_version(prec)
    } else {
        v
    };
    let (np, c, nb) = (s.pixels(), s.c, s.bins());
    super::relation::check_tensors(s, f, norms, lsum, p, Some((dp, df)))?;
    if s.b == 0 {
        return Ok(());
    }
    let k = tc_kernels(v, prec, s.n)
        .ok_or_else(|| Error::Device(format!("relation version {v} has no {prec} kernels")))?;
    let (fp, nrm, lp, pp, dpp, dfp) = (
        be.ptr(f)?,
        be.ptr(norms)?,
        be.ptr(lsum)?,
        be.ptr(p)?,
        be.ptr(dp)?,
        be.ptr(df)?,
    );
    let pd = padded(s, prec);
    let smem = backward_smem(v, prec, s.n, s.c);
    be.allow_dynamic_smem(k.backward, smem, 0)?;
    let g = grid(s, k.bwd_block.1)?;
    let rows = s.b * np;
    let v_len = rows.next_multiple_of(16);
    let gt_len = rows * nb;
    be.with_workspace(pd.floats() + 2 * v_len + gt_len, |ws| {
        let qop = ws;
        let pixbins = qop + (pd.qop_floats * 4) as u64;
        let qnorm = pixbins + (pd.pixbin_floats * 4) as u64;
        let dvec = qnorm + (v_len * 4) as u64;
        let gt = dvec + (v_len * 4) as u64;
        let with_bins = v != RelationVersion::V1;
        tc_normalize(
            be,
            k.normalize,
            s,
            &pd,
            fp,
            qop,
            qnorm,
            if with_bins { pixbins } else { 0 },
        )?;
        super::relation::backward_rows(be, s, pp, dpp, dvec, gt)?;
        let head = [Arg::Ptr(fp), Arg::Ptr(qnorm), Arg::Ptr(nrm), Arg::Ptr(lp)];
        let dims = [
            Arg::I32(int("relation pixels", np)?),
            Arg::I32(int("relation padded pixels", pd.npad)?),
            Arg::I32(int("relation channels", c)?),
            Arg::I32(int("relation padded channels", pd.cpad)?),
        ];
        let mut args = vec![Arg::Ptr(qop)];
        if with_bins {
            // v2, v3: (qop, pixbins, f, qnorm, norms, lsum, dvec, gt, npix, npad, c, cpad, n, df)
            args.push(Arg::Ptr(pixbins));
            args.extend_from_slice(&head);
            args.extend_from_slice(&[Arg::Ptr(dvec), Arg::Ptr(gt)]);
            args.extend_from_slice(&dims);
            args.push(Arg::I32(s.n as i32));
        } else {
            // v1: (qop, f, qnorm, norms, lsum, dvec, gt, npix, npad, c, cpad, h, w, n, df)
            args.extend_from_slice(&head);
            args.extend_from_slice(&[Arg::Ptr(dvec), Arg::Ptr(gt)]);
            args.extend_from_slice(&dims);
            args.extend_from_slice(&[
                Arg::I32(s.h as i32),
                Arg::I32(s.w as i32),
                Arg::I32(s.n as i32),
            ]);
        }
        args.push(Arg::Ptr(dfp));
        be.launch(k.backward, g, (k.bwd_block.0, 1, 1), smem as u32, &args)
    })
}
