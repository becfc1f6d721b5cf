//! The relation benchmark's models of one call of a version: workspace, nominal FLOPs, the share
//! of them a version executes, and bytes moved (`prrnet bench-relation`, the tuner's floor). The
//! tile geometry they use is relation_tc.rs's, kept in step with the kernels.

use super::relation_tc::{operand, padded, sym, v1, v2, v3, CHAN_PAD};
use super::relation_version::RelationVersion;
use crate::backend::{Precision, RelationShape};

/// Bytes of workspace one call of version `v` uses (the operand copy or SIMT's f32 `q`, and the
/// backward's scratch vectors).
pub fn relation_workspace_bytes(
    v: RelationVersion,
    p: Precision,
    s: &RelationShape,
    backward: bool,
) -> usize {
    let rows = s.b * s.pixels();
    let scratch = if backward {
        2 * rows.next_multiple_of(16) + rows * s.bins()
    } else {
        0
    };
    let q = match v {
        RelationVersion::Simt => (rows * s.c).next_multiple_of(16),
        RelationVersion::Sym if !backward => {
            padded(s, p).floats() + sym::acc_floats(rows, s.bins())
        }
        _ => padded(s, p).floats(),
    };
    (q + scratch) * 4
}

/// Nominal floating-point work of one call, the benchmark's denominator (per image, N = h·w):
/// forward `2·N²·C` (Q·Qᵀ) `+ 2·N²` (exp and the row/bin accumulation of every score);
/// backward `3·2·N²·C` (the score recomputation plus the two GEMMs dS·Q and dSᵀ·Q of the
/// textbook backward) `+ 8·N²` (exp, g, dS for both orientations). Versions that fuse dS·Q and
/// dSᵀ·Q into one GEMM (all of ours) execute about `2·2·N²·C`; the symmetric forward (`sym`)
/// executes about half of the forward's `2·N²·C`. The nominal count is the same for every
/// implementation, so rates compare.
pub fn relation_flops(s: &RelationShape, backward: bool) -> f64 {
    let (n2, c) = ((s.pixels() * s.pixels()) as f64, s.c as f64);
    let per_image = if backward {
        6.0 * n2 * c + 8.0 * n2
    } else {
        2.0 * n2 * c + 2.0 * n2
    };
    s.b as f64 * per_image
}

/// The share of the nominal [`relation_flops`] version `v` executes: every backward (simt's
/// too) forms `dS·Q + dSᵀ·Q` as one GEMM, 2 of the nominal 3 `N²·C` products; the symmetric
/// forward computes T(T + 1)/2 of the T² score tiles (T = ⌈N/128⌉); the other forwards all of it.
pub fn relation_executed_share(v: RelationVersion, s: &RelationShape, backward: bool) -> f64 {
    let (n2, c) = ((s.pixels() * s.pixels()) as f64, s.c as f64);
    if backward {
        return (4.0 * n2 * c + 8.0 * n2) / (6.0 * n2 * c + 8.0 * n2);
    }
    if v == RelationVersion::Sym {
        let t = s.pixels().div_ceil(sym::BM) as f64;
        return (t + 1.0) / (2.0 * t);
    }
    1.0
}

/// Bytes a version moves between L2/DRAM and the SMs in one call (the model, per image):
/// every block re-reads its row tile and each column tile of the operand copy once per tile pair
/// (forward: `⌈N/BM⌉·⌈N/BN⌉·(BM + BN)·Cp·e` bytes, `e` the operand size; the backward reads the
/// column tile twice, for the scores and for `dq`, plus its row tile once per pair; v3's
/// backward reads the column tile once and its row tile once per block), plus the
/// compulsory traffic: `f` read by the normalisation, the operand copy written, `p`, `lsum`,
/// `norms` written (backward: `p`, `dp`, `f` read, `df` read and written, `gt` and `D`).
/// The symmetric forward reads `T(T + 1)/2` tile pairs (`T = ⌈N/128⌉`) and moves its 8-byte
/// fixed-point sums: cleared, added (the row side once per block, the column side once per
/// off-diagonal pair, `128·(n² + 1)` each) and read back.
pub fn relation_bytes(v: RelationVersion, p: Precision, s: &RelationShape, backward: bool) -> f64 {
    let (np, c, nb) = (s.pixels() as f64, s.c as f64, s.bins() as f64);
    if v == RelationVersion::Sym && !backward {
        let (ob, _) = operand(p);
        let cp = s.c.next_multiple_of(CHAN_PAD) as f64;
        let bm = sym::BM as f64;
        let t = (np / bm).ceil();
        let pairs = t * (t + 1.0) / 2.0;
        // Added: a row side per block (t) and a column side per off-diagonal pair (pairs − t);
        // then cleared and read back once.
        let sums = pairs * bm * (nb + 1.0) * 8.0 + 2.0 * np * (nb + 1.0) * 8.0;
        let compulsory = np * c * 4.0 + np * cp * ob as f64 + np * nb * 4.0 + 2.0 * np * 4.0;
        return s.b as f64 * (pairs * 2.0 * bm * cp * ob as f64 + sums + compulsory);
    }
    let v = if v == RelationVersion::Sym {
        sym::backward_version(p)
    } else {
        v
    };
    let (ob, cp, bm, bn, col_reads) = match v {
        RelationVersion::Simt => {
            if backward {
                (4.0, c, 16.0, 32.0, 2.0)
            } else {
                (4.0, c, 32.0, 32.0, 1.0)
            }
        }
        RelationVersion::V1
        | RelationVersion::V2
        | RelationVersion::V3
        | RelationVersion::Split
        | RelationVersion::Sym => {
            let (ob, _) = operand(p);
            let cp = s.c.next_multiple_of(CHAN_PAD) as f64;
            let (fb, bb) = match v {
                RelationVersion::V1 => ((v1::F_BM, v1::F_BN), (v1::B_BM, v1::B_BN)),
                RelationVersion::V3 => ((v2::F_BM, v2::F_BN), (v3::BM, v3::BN)),
                _ => ((v2::F_BM, v2::F_BN), (v2::B_BM, v2::B_BN)),
            };
            if backward && v == RelationVersion::V3 {
                (ob as f64, cp, 0.0, bb.1 as f64, 1.0)
            } else if backward {
                (ob as f64, cp, bb.0 as f64, bb.1 as f64, 2.0)
            } else {
                (ob as f64, cp, fb.0 as f64, fb.1 as f64, 1.0)
            }
        }
    };
    // Row tiles per image (v3's backward: its row tile once per block, `bm` = 0 per pair).
    let row_tiles = if backward && v == RelationVersion::V3 {
        (np / v3::BM as f64).ceil()
    } else {
        (np / bm).ceil()
    };
    let tiles = row_tiles * (np / bn).ceil();
    let once = if bm == 0.0 {
        row_tiles * v3::BM as f64 * cp * ob
    } else {
        0.0
    };
    let tile_traffic = tiles * (bm + col_reads * bn) * cp * ob + once;
    let compulsory = if backward {
        np * c * 4.0 * 4.0 + np * cp * ob + np * nb * 4.0 * 4.0 + np * 4.0 * 4.0
    } else {
        np * c * 4.0 + np * cp * ob + np * nb * 4.0 + 2.0 * np * 4.0
    };
    s.b as f64 * (tile_traffic + compulsory)
}
