//! Nearest / bilinear resizing and adaptive average pooling (kernels/resample.cu), twin of
//! cpu/resample.rs. Backward passes are gathers (one thread per input-gradient element).

use super::context::{check_len, int, Arg, CudaBackend};
use super::kernels::names::resample as k;
use crate::backend::ResizeShape;
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

pub(crate) fn bilinear(be: &CudaBackend, s: &ResizeShape, x: Tensor, y: Tensor) -> Result<()> {
    run(be, k::BILINEAR_FORWARD, s, x, y, false, None)
}

pub(crate) fn bilinear_backward(
    be: &CudaBackend,
    s: &ResizeShape,
    dy: Tensor,
    dx: Tensor,
) -> Result<()> {
    run(be, k::BILINEAR_BACKWARD, s, dx, dy, true, None)
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
