//! The fused relation map, twin of cpu/relation.rs (SPEC §4.1): the dispatch between its
//! versions (see `relation_tc.rs`) and the exact f32 SIMT version (kernels/relation.cu).
//! SIMT workspace: q [B, N, C] (normalised features); the backward adds scratch norms [B·N],
//! D [B·N] and gt [B·N, n²] (G_ib / |b|). Never N×N.

use super::context::{check_len, int, Arg, CudaBackend};
use super::kernels::names::relation as k;
use super::relation_tc::RelationVersion;
use super::tune::{self, TuneKey};
use crate::backend::{Precision, RelationShape, MAX_BINS_SIDE};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

const FWD_TI: usize = 32;
const BWD_TI: usize = 16;
const BWD_TJ: usize = 32;
/// Upper bounds of the kernels' static shared memory (ptxas reports 13184 and 8832 bytes).
const FWD_STATIC_SMEM: usize = 14 * 1024;
const BWD_STATIC_SMEM: usize = 10 * 1024;

fn check_shape(s: &RelationShape) -> Result<()> {
    if s.n == 0 || s.n > MAX_BINS_SIDE || s.h == 0 || s.w == 0 {
        return Err(Error::Device(format!(
            "relation: bins n = {} must be in 1..={MAX_BINS_SIDE} and the map non-empty ({}×{})",
            s.n, s.h, s.w
        )));
    }
    Ok(())
}

/// The tensor lengths every relation version checks: the forward's, and with `grads` the
/// backward's `dp` and `df`.
pub(crate) fn check_tensors(
    s: &RelationShape,
    f: Tensor,
    norms: Tensor,
    lsum: Tensor,
    p: Tensor,
    grads: Option<(Tensor, Tensor)>,
) -> Result<()> {
    let (np, c, nb) = (s.pixels(), s.c, s.bins());
    check_len("relation f", f, s.b * np * c)?;
    check_len("relation norms", norms, s.b * np)?;
    check_len("relation lsum", lsum, s.b * np)?;
    check_len("relation p", p, s.b * np * nb)?;
    if let Some((dp, df)) = grads {
        check_len("relation dp", dp, s.b * np * nb)?;
        check_len("relation df", df, s.b * np * c)?;
    }
    Ok(())
}

/// q = f / max(‖f‖, 1e-12) into `q`, ‖f‖ into `norms`.
fn normalize(be: &CudaBackend, s: &RelationShape, f: u64, q: u64, norms: u64) -> Result<()> {
    let pixels = s.b * s.pixels();
    be.launch(
        k::RELATION_NORMALIZE,
        (pixels.div_ceil(8) as u32, 1, 1),
        (256, 1, 1),
        0,
        &[
            Arg::Ptr(f),
            Arg::I32(int("relation pixels", pixels)?),
            Arg::I32(int("relation channels", s.c)?),
            Arg::Ptr(q),
            Arg::Ptr(norms),
        ],
    )
}

/// `Backend::relation`: the version measured fastest for the shape and the backend's precision
/// (`tune.rs`), or where nothing is measured (`PRRNET_RELATION_VERSION` set, a graph capture,
/// below the floor) the one [`CudaBackend::relation_dispatch`] picks.
pub(crate) fn forward(
    be: &CudaBackend,
    s: &RelationShape,
    f: Tensor,
    norms: Tensor,
    lsum: Tensor,
    p: Tensor,
) -> Result<()> {
    let prec = be.precision_impl();
    let run = |v: RelationVersion| match v {
        RelationVersion::Simt => simt_forward(be, s, f, norms, lsum, p),
        v => be.relation_forward_version(v, prec, s, f, norms, lsum, p),
    };
    let out = tune::Output {
        t: p,
        accumulates: false,
    };
    let v = version(be, prec, s, false, out, &run)?;
    run(v)
}

/// The version for `s` at `prec`: the fixed rule when `PRRNET_RELATION_VERSION` is set, else
/// the measured choice among [`CudaBackend::relation_candidates`] (`output`: what the call
/// writes).
fn version(
    be: &CudaBackend,
    prec: Precision,
    s: &RelationShape,
    backward: bool,
    output: tune::Output,
    run: &dyn Fn(RelationVersion) -> Result<()>,
) -> Result<RelationVersion> {
    let rule = be.relation_dispatch(prec, s, backward);
    if be.relation_version_fixed() {
        return Ok(rule);
    }
    let key = TuneKey::Relation {
        backward,
        precision: prec,
        shape: *s,
    };
    let candidates = be.relation_candidates(prec, s, backward);
    tune::choose(be, key, &candidates, rule, output, run)
}

/// `Backend::relation_backward`, dispatched like [`forward`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    be: &CudaBackend,
    s: &RelationShape,
    f: Tensor,
    norms: Tensor,
    lsum: Tensor,
    p: Tensor,
    dp: Tensor,
    df: Tensor,
) -> Result<()> {
    let prec = be.precision_impl();
    let run = |v: RelationVersion| match v {
        RelationVersion::Simt => simt_backward(be, s, f, norms, lsum, p, dp, df),
        v => be.relation_backward_version(v, prec, s, f, norms, lsum, p, dp, df),
    };
    let out = tune::Output {
        t: df,
        accumulates: true,
    };
    let v = version(be, prec, s, true, out, &run)?;
    run(v)
}

/// The exact f32 forward (relation.cu), whatever the precision setting.
pub(crate) fn simt_forward(
    be: &CudaBackend,
    s: &RelationShape,
    f: Tensor,
    norms: Tensor,
    lsum: Tensor,
    p: Tensor,
) -> Result<()> {
    check_shape(s)?;
    let (np, c, nb) = (s.pixels(), s.c, s.bins());
    super::relation::check_tensors(s, f, norms, lsum, p, None)?;
    if s.b == 0 {
        return Ok(());
    }
    let (fp, np_, lp, pp) = (be.ptr(f)?, be.ptr(norms)?, be.ptr(lsum)?, be.ptr(p)?);
    let smem = FWD_TI * nb * 8;
    be.allow_dynamic_smem(k::RELATION_FORWARD, smem, FWD_STATIC_SMEM)?;
    be.with_workspace(s.b * np * c, |q| {
        normalize(be, s, fp, q, np_)?;
        be.launch(
            k::RELATION_FORWARD,
            (np.div_ceil(FWD_TI) as u32, s.b as u32, 1),
            (256, 1, 1),
            smem as u32,
            &[
                Arg::Ptr(q),
                Arg::I32(int("relation pixels", np)?),
                Arg::I32(int("relation channels", c)?),
                Arg::I32(s.h as i32),
                Arg::I32(s.w as i32),
                Arg::I32(s.n as i32),
                Arg::Ptr(lp),
                Arg::Ptr(pp),
            ],
        )
    })
}

/// The exact f32 backward (relation.cu), whatever the precision setting.
#[allow(clippy::too_many_arguments)]
pub(crate) fn simt_backward(
    be: &CudaBackend,
    s: &RelationShape,
    f: Tensor,
    norms: Tensor,
    lsum: Tensor,
    p: Tensor,
    dp: Tensor,
    df: Tensor,
) -> Result<()> {
    check_shape(s)?;
    let (np, c, nb) = (s.pixels(), s.c, s.bins());
    super::relation::check_tensors(s, f, norms, lsum, p, Some((dp, df)))?;
    if s.b == 0 {
        return Ok(());
    }
    let (fp, nrm, lp, pp, dpp, dfp) = (
        be.ptr(f)?,
        be.ptr(norms)?,
        be.ptr(lsum)?,
        be.ptr(p)?,
        be.ptr(dp)?,
        be.ptr(df)?,
    );
    let smem = BWD_TI * c * 8 + (BWD_TI + BWD_TJ) * nb * 4 + 4 * (s.h + s.w) * 4;
    be.allow_dynamic_smem(k::RELATION_BACKWARD, smem, BWD_STATIC_SMEM)?;
    let rows = s.b * np;
    let q_len = (rows * c).next_multiple_of(16);
    let v_len = rows.next_multiple_of(16);
    let gt_len = rows * nb;
    be.with_workspace(q_len + 2 * v_len + gt_len, |ws| {
        let q = ws;
        let scratch_norms = q + (q_len * 4) as u64;
        let dvec = scratch_norms + (v_len * 4) as u64;
        let gt = dvec + (v_len * 4) as u64;
        normalize(be, s, fp, q, scratch_norms)?;
        backward_rows(be, s, pp, dpp, dvec, gt)?;
        be.launch(
            k::RELATION_BACKWARD,
            (np.div_ceil(BWD_TI) as u32, s.b as u32, 1),
            (256, 1, 1),
            smem as u32,
            &[
                Arg::Ptr(q),
                Arg::Ptr(nrm),
                Arg::Ptr(lp),
                Arg::Ptr(dvec),
                Arg::Ptr(gt),
                Arg::I32(int("relation pixels", np)?),
                Arg::I32(int("relation channels", c)?),
                Arg::I32(s.h as i32),
                Arg::I32(s.w as i32),
                Arg::I32(s.n as i32),
                Arg::Ptr(dfp),
            ],
        )
    })
}

/// `D_i = Σ_b P_ib G_ib` into `dvec [B·N]` and `gt_ib = G_ib / |b|` into `gt [B·N, n²]`
/// (relation_backward_rows), the first step of every backward version.
pub(crate) fn backward_rows(
    be: &CudaBackend,
    s: &RelationShape,
    p: u64,
    dp: u64,
    dvec: u64,
    gt: u64,
) -> Result<()> {
    let rows = s.b * s.pixels();
    be.launch(
        k::RELATION_BACKWARD_ROWS,
        (rows.div_ceil(256) as u32, 1, 1),
        (256, 1, 1),
        0,
        &[
            Arg::Ptr(p),
            Arg::Ptr(dp),
            Arg::I32(int("relation rows", rows)?),
            Arg::I32(s.h as i32),
            Arg::I32(s.w as i32),
            Arg::I32(s.n as i32),
            Arg::Ptr(dvec),
            Arg::Ptr(gt),
        ],
    )
}
