//! The relation map's kernel versions by name (simt, v1, v2, v3, split, sym): what each
//! computes in, how it works in a line, and its place in the tuner's order of trust. How each
//! runs: relation_tc.rs (its module comment describes the versions in full).

use std::str::FromStr;

use crate::backend::Precision;
use crate::error::{Error, Result};

/// One implementation of the fused relation kernels (forward and backward).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RelationVersion {
    /// Exact f32 on the CUDA cores (kernels/relation.cu); fp32 only.
    Simt,
    /// WMMA tensor cores, tiles through shared memory (TF32, BF16).
    V1,
    /// `mma.sync` tensor cores, `cp.async` pipeline, register epilogues (TF32, BF16).
    V2,
    /// `ldmatrix` + `mma.sync`, `dq` in registers in the backward (BF16).
    V3,
    /// v2's kernels with 3×TF32 products: fp32 accuracy on the tensor cores (fp32).
    Split,
    /// The symmetric forward (each tile pair once, fixed-point cross-block sums) with the
    /// backward of v3 (BF16), v2 (TF32) or split (fp32).
    Sym,
}

const ALL_VERSIONS: [RelationVersion; 6] = [
    RelationVersion::Simt,
    RelationVersion::V1,
    RelationVersion::V2,
    RelationVersion::V3,
    RelationVersion::Split,
    RelationVersion::Sym,
];

/// Every version, the exact one first.
pub fn relation_versions() -> &'static [RelationVersion] {
    &ALL_VERSIONS
}

impl super::tune::Candidate for RelationVersion {
    fn name(self) -> &'static str {
        RelationVersion::name(self)
    }

    /// simt, v1 and v2 were checked against the CPU on an H100 (2026-11-27); v3, split and sym
    /// only under cuda-emu so far.
    fn trust(self) -> u8 {
        match self {
            RelationVersion::Simt => 0,
            RelationVersion::V1 => 1,
            RelationVersion::V2 => 2,
            RelationVersion::V3 => 3,
            RelationVersion::Split => 4,
            RelationVersion::Sym => 5,
        }
    }
}

impl RelationVersion {
    /// The name used on command lines and in reports (`simt`, `v1`, …).
    pub fn name(self) -> &'static str {
        match self {
            RelationVersion::Simt => "simt",
            RelationVersion::V1 => "v1",
            RelationVersion::V2 => "v2",
            RelationVersion::V3 => "v3",
            RelationVersion::Split => "split",
            RelationVersion::Sym => "sym",
        }
    }

    /// The precisions this version computes in.
    pub fn precisions(self) -> &'static [Precision] {
        match self {
            RelationVersion::Simt | RelationVersion::Split => &[Precision::Fp32],
            RelationVersion::V1 | RelationVersion::V2 => &[Precision::Tf32, Precision::Bf16],
            RelationVersion::V3 => &[Precision::Bf16],
            RelationVersion::Sym => &[Precision::Fp32, Precision::Tf32, Precision::Bf16],
        }
    }

    /// One line on how it works.
    pub fn description(self) -> &'static str {
        match self {
            RelationVersion::Simt => {
                "exact f32 SIMT: 32x32 score tiles, f64 row and bin accumulators (relation.cu)"
            }
            RelationVersion::V1 => {
                "WMMA tensor cores: 128x64 forward / 32x64 backward tiles through shared memory, \
                 row-walk bin epilogue, dq accumulated in shared memory (relation_tc.cu v1)"
            }
            RelationVersion::V2 => {
                "mma.sync tensor cores: 128x128 forward / 64x64 backward tiles, 3-stage cp.async \
                 pipeline, bins as a second MMA and M = dS + dS^T in registers (relation_tc.cu v2)"
            }
            RelationVersion::V3 => {
                "ldmatrix + mma.sync: v2's forward; backward 64x64 tiles on 8 warps with dq in \
                 registers, Q_J double-buffered, M through shared memory (relation_tc.cu v3)"
            }
            RelationVersion::Split => {
                "3xTF32 mma.sync: v2's tiles and pipeline on exact f32 operands, each product \
                 hi*hi + hi*lo + lo*hi of TF32 halves, fp32-accurate (relation_tc.cu split)"
            }
            RelationVersion::Sym => {
                "symmetric forward: each pair of 128x128 tiles once, row and column bin sums \
                 (transposed fragments), 64-bit fixed-point cross-block sums; the backward of \
                 v3 (bf16), v2 (tf32) or split (fp32) (relation_sym.cu)"
            }
        }
    }

    /// Whether this version computes in precision `p`.
    pub fn supports(self, p: Precision) -> bool {
        self.precisions().contains(&p)
    }
}

impl std::fmt::Display for RelationVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for RelationVersion {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        ALL_VERSIONS
            .iter()
            .copied()
            .find(|v| v.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<_> = ALL_VERSIONS.iter().map(|v| v.name()).collect();
                Error::Config(format!(
                    "unknown relation version `{s}` (expected one of {})",
                    names.join(", ")
                ))
            })
    }
}
