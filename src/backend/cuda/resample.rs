//! Nearest / bilinear resizing and adaptive average pooling (kernels/resample.cu), twin of
//! cpu/resample.rs. Backward passes are gathers (one thread per input-gradient element).

use super::context::{check_len, int, Arg, CudaBackend};
use super::kernels::names::resample as k;
use crate::backend::{
    check_channel_slice, check_sum_terms, ResizeShape, SumShape, SumTerm, MAX_SUM_TERMS,
};
use crate::error::Result;
use crate::tensor::Tensor;

/// `(src, dst, c, hi, wi, ho, wo)` arguments; `src`/`dst` are `x`/`y` forward, `dy`/`dx` backward.
fn args(s: &ResizeShape, src: u64, dst: u64) -> Result<Vec<Arg>> {
    Ok(vec![
        Arg::Ptr(src),
        Arg::Ptr(dst),
        Arg::I32(int("channels", s.c)?),
        Arg::I32(int("hi", s.hi)?),
        Arg::I32(int("wi", s.wi)?),
        Arg::I32(int("ho", s.ho)?),
        Arg::I32(int("wo", s.wo)?),
    ])
}

fn run(
    be: &CudaBackend,
    kernel: (usize, &'static str),
    s: &ResizeShape,
    x: Tensor,
    y: Tensor,
    backward: bool,
    extra: Option<i32>,
) -> Result<()> {
    check_len("resize x", x, s.x_len())?;
    check_len("resize y", y, s.y_len())?;
    if s.c == 0 || s.hi == 0 || s.wi == 0 || s.ho == 0 || s.wo == 0 {
        return Ok(());
    }
    let (xp, yp) = (be.ptr(x)?, be.ptr(y)?);
    let (mut a, total) = if backward {
        (args(s, yp, xp)?, s.x_len())
    } else {
        (args(s, xp, yp)?, s.y_len())
    };
    if let Some(e) = extra {
        a.push(Arg::I32(e));
    }
    a.push(Arg::I64(total as i64));
    be.launch_1d(kernel, total, &a)
}

pub(crate) fn nearest(
    be: &CudaBackend,
    s: &ResizeShape,
    x: Tensor,
    y: Tensor,
    accumulate: bool,
) -> Result<()> {
    run(
        be,
        k::NEAREST_FORWARD,
        s,
        x,
        y,
        false,
        Some(accumulate as i32),
    )
}

pub(crate) fn nearest_backward(
    be: &CudaBackend,
    s: &ResizeShape,
    dy: Tensor,
    dx: Tensor,
) -> Result<()> {
    run(be, k::NEAREST_BACKWARD, s, dx, dy, true, None)
}

/// `Backend::fuse_sum_relu`: one kernel; the term slots past `terms.len()` get null pointers
/// and a 1×1 size (never read).
pub(crate) fn fuse_sum_relu(
    be: &CudaBackend,
    s: &SumShape,
    terms: &[SumTerm],
    y: Tensor,
) -> Result<()> {
    check_sum_terms(s, terms, y)?;
    let total = s.y_len();
    if total == 0 {
        return Ok(());
    }
    let mut a = Vec::with_capacity(3 * MAX_SUM_TERMS + 6);
    for j in 0..MAX_SUM_TERMS {
        a.push(Arg::Ptr(match terms.get(j) {
            Some(t) => be.ptr(t.x)?,
            None => 0,
        }));
    }
    for j in 0..MAX_SUM_TERMS {
        let (hi, wi) = terms.get(j).map_or((1, 1), |t| (t.hi, t.wi));
        a.push(Arg::I32(int("term hi", hi)?));
        a.push(Arg::I32(int("term wi", wi)?));
    }
    a.extend([
        Arg::I32(terms.len() as i32),
        Arg::Ptr(be.ptr(y)?),
        Arg::I32(int("channels", s.c)?),
        Arg::I32(int("ho", s.ho)?),
        Arg::I32(int("wo", s.wo)?),
        Arg::I64(total as i64),
    ]);
    be.launch_1d(k::FUSE_SUM_RELU, total, &a)
}

/// `Backend::resize_bilinear_into` (forward: `x` → channels `[offset, offset + s.c)` of `wide`)
/// and its backward (those channels of `wide` → `x`, accumulated).
#[allow(clippy::too_many_arguments)]
pub(crate) fn bilinear_slice(
    be: &CudaBackend,
    s: &ResizeShape,
    x: Tensor,
    wide: Tensor,
    wide_c: usize,
    offset: usize,
    backward: bool,
) -> Result<()> {
    check_channel_slice(s, x, wide, wide_c, offset)?;
    if s.c == 0 || s.hi == 0 || s.wi == 0 || s.ho == 0 || s.wo == 0 {
        return Ok(());
    }
    let (xp, wp) = (be.ptr(x)?, be.ptr(wide)?);
    let (kernel, mut a, total) = if backward {
        (k::BILINEAR_BACKWARD, args(s, wp, xp)?, s.x_len())
    } else {
        (k::BILINEAR_FORWARD, args(s, xp, wp)?, s.y_len())
    };
    a.extend([
        Arg::I32(int("wide channels", wide_c)?),
        Arg::I32(int("channel offset", offset)?),
        Arg::I64(total as i64),
    ]);
    be.launch_1d(kernel, total, &a)
}

pub(crate) fn adaptive_avg_pool(
    be: &CudaBackend,
    s: &ResizeShape,
    x: Tensor,
    y: Tensor,
) -> Result<()> {
    run(be, k::ADAPTIVE_POOL_FORWARD, s, x, y, false, None)
}

pub(crate) fn adaptive_avg_pool_backward(
    be: &CudaBackend,
    s: &ResizeShape,
    dy: Tensor,
    dx: Tensor,
) -> Result<()> {
    run(be, k::ADAPTIVE_POOL_BACKWARD, s, dx, dy, true, None)
}
