//! BatchNorm (kernels/norm.cu), twin of cpu/norm.rs: `y = relu?(γ·(x−μ)·rstd + β + residual?)`.
//! Per-channel reductions are two-stage and deterministic (f64 partials per row chunk, then a
//! fixed-order sum per channel). Workspace: partials [2, chunks, C] f64, then (backward) the
//! [2C] f64 sums. The training forward reads x once for its statistics (shifted moments,
//! kernels/norm.cu) and once to apply them.

use super::context::{check_len, int, Arg, CudaBackend};
use super::conv::{finalize_grid, row_chunks};
use super::kernels::names::norm as k;
use crate::backend::{BatchNormGrads, BatchNormTensors, NormShape};
use crate::error::Result;

/// Workspace layout in f32 units: (floats needed, offset of the [2C] f64 stats).
fn layout(chunks: usize, c: usize) -> (usize, usize) {
    let partial = (2 * chunks * c * 2).next_multiple_of(16);
    (partial + 2 * c * 2, partial)
}

pub(crate) fn forward(be: &CudaBackend, s: &NormShape, t: &BatchNormTensors) -> Result<()> {
    let (rows, c) = (s.rows, s.c);
    check_len("bn x", t.x, rows * c)?;
    check_len("bn y", t.y, rows * c)?;
    for p in [
        t.gamma,
        t.beta,
        t.running_mean,
        t.running_var,
        t.save_mean,
        t.save_rstd,
    ] {
        check_len("bn parameter", p, c)?;
    }
    if let Some(r) = t.residual {
        check_len("bn residual", r, rows * c)?;
    }
    if c == 0 {
        return Ok(());
    }
    let (x, sm, sr) = (be.ptr(t.x)?, be.ptr(t.save_mean)?, be.ptr(t.save_rstd)?);
    let (rm, rv) = (be.ptr(t.running_mean)?, be.ptr(t.running_var)?);
    let ci = int("channels", c)?;
    let chan_grid = (c.div_ceil(256) as u32, 1, 1);
    let warp_grid = finalize_grid(c);
    if s.train {
        let (rpc, chunks) = row_chunks(rows);
        let (need, _) = layout(chunks, c);
        be.with_workspace(need, |ws| {
            let partial = ws;
            let part_grid = (c.div_ceil(32) as u32, chunks as u32, 1);
            let ri = int("rows", rows)?;
            // One pass over x: shifted moments per chunk, then mean and variance per channel.
            be.launch(
                k::BN_MOMENTS_PARTIAL,
                part_grid,
                (32, 8, 1),
                0,
                &[
                    Arg::Ptr(x),
                    Arg::I32(ri),
                    Arg::I32(ci),
                    Arg::I32(rpc as i32),
                    Arg::Ptr(partial),
                ],
            )?;
            be.launch(
                k::BN_TRAIN_FINALIZE,
                warp_grid,
                (256, 1, 1),
                0,
                &[
                    Arg::Ptr(partial),
                    Arg::I32(chunks as i32),
                    Arg::I32(ri),
                    Arg::I32(ci),
                    Arg::Ptr(x),
                    Arg::F32(s.eps),
                    Arg::F32(s.momentum),
                    Arg::Ptr(rm),
                    Arg::Ptr(rv),
                    Arg::Ptr(sm),
                    Arg::Ptr(sr),
                ],
            )
        })?;
    } else {
        be.launch(
            k::BN_EVAL_FINALIZE,
            chan_grid,
            (256, 1, 1),
            0,
            &[
                Arg::Ptr(rm),
                Arg::Ptr(rv),
                Arg::F32(s.eps),
                Arg::I32(ci),
                Arg::Ptr(sm),
                Arg::Ptr(sr),
            ],
        )?;
    }
    let total = rows * c;
    be.launch_1d(
        k::BN_APPLY,
        total,
        &[
            Arg::Ptr(x),
            Arg::Ptr(sm),
            Arg::Ptr(sr),
            Arg::Ptr(be.ptr(t.gamma)?),
            Arg::Ptr(be.ptr(t.beta)?),
            Arg::Ptr(be.optr(t.residual)?),
            Arg::I32(t.relu as i32),
            Arg::I32(ci),
            Arg::Ptr(be.ptr(t.y)?),
            Arg::I64(total as i64),
        ],
    )
}

pub(crate) fn backward(
    be: &CudaBackend,
    s: &NormShape,
    t: &BatchNormTensors,
    g: &BatchNormGrads,
) -> Result<()> {
    let (rows, c) = (s.rows, s.c);
    check_len("bn dy", g.dy, rows * c)?;
    check_len("bn x", t.x, rows * c)?;
    check_len("bn y", t.y, rows * c)?;
    if let Some(d) = g.dgamma {
        check_len("bn dgamma", d, c)?;
    }
    if let Some(d) = g.dbeta {
        check_len("bn dbeta", d, c)?;
    }
    if let Some(d) = g.dx {
        check_len("bn dx", d, rows * c)?;
    }
    if let Some(d) = g.dresidual {
        check_len("bn dresidual", d, rows * c)?;
    }
    if c == 0 || rows == 0 {
        return Ok(());
    }
    let (x, y, dy) = (be.ptr(t.x)?, be.ptr(t.y)?, be.ptr(g.dy)?);
    let (sm, sr, gamma) = (be.ptr(t.save_mean)?, be.ptr(t.save_rstd)?, be.ptr(t.gamma)?);
    let need_sums = g.dgamma.is_some() || g.dbeta.is_some() || (s.train && g.dx.is_some());
    let need_apply = g.dx.is_some() || g.dresidual.is_some();
    if !need_sums && !need_apply {
        return Ok(());
    }
    let (ri, ci) = (int("rows", rows)?, int("channels", c)?);
    let (rpc, chunks) = row_chunks(rows);
    let (need, stats_off) = layout(chunks, c);
    be.with_workspace(need, |ws| {
        let partial = ws;
        let sums64 = ws + (stats_off * 4) as u64;
        if need_sums {
            be.launch(
                k::BN_BACKWARD_PARTIAL,
                (c.div_ceil(32) as u32, chunks as u32, 1),
                (32, 8, 1),
                0,
                &[
                    Arg::Ptr(x),
                    Arg::Ptr(y),
                    Arg::Ptr(dy),
                    Arg::Ptr(sm),
                    Arg::Ptr(sr),
                    Arg::I32(t.relu as i32),
                    Arg::I32(ri),
                    Arg::I32(ci),
                    Arg::I32(rpc as i32),
                    Arg::Ptr(partial),
                ],
            )?;
            be.launch(
                k::BN_BACKWARD_FINALIZE,
                finalize_grid(c),
                (256, 1, 1),
                0,
                &[
                    Arg::Ptr(partial),
                    Arg::I32(chunks as i32),
                    Arg::I32(ci),
                    Arg::Ptr(sums64),
                    Arg::Ptr(be.optr(g.dgamma)?),
                    Arg::Ptr(be.optr(g.dbeta)?),
                ],
            )?;
        }
        if need_apply {
            let total = rows * c;
            be.launch_1d(
                k::BN_BACKWARD_APPLY,
                total,
                &[
                    Arg::Ptr(x),
                    Arg::Ptr(y),
                    Arg::Ptr(dy),
                    Arg::Ptr(sm),
                    Arg::Ptr(sr),
                    Arg::Ptr(gamma),
                    Arg::Ptr(sums64),
                    Arg::I32(t.relu as i32),
                    Arg::I32(s.train as i32),
                    Arg::I32(ri),
                    Arg::I32(ci),
                    Arg::Ptr(be.optr(g.dx)?),
                    Arg::Ptr(be.optr(g.dresidual)?),
                    Arg::I64(total as i64),
                ],
            )?;
        }
        Ok(())
    })
}
