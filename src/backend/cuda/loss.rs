//! Weighted BCE on logits (kernels/loss.cu) and Adam (kernels/adam.cu); twins of cpu/loss.rs
//! and cpu/adam.rs.

use super::context::{check_len, int, Arg, CudaBackend};
use super::kernels::names::{adam as ka, loss as kl};
use crate::backend::AdamArgs;
use crate::error::Result;
use crate::tensor::Tensor;

#[allow(clippy::too_many_arguments)]
pub(crate) fn bce_forward(
    be: &CudaBackend,
    rows: usize,
    cols: usize,
    x: Tensor,
    target: Tensor,
    weight: Tensor,
    scale: f32,
    loss: Tensor,
) -> Result<()> {
    check_len("bce x", x, rows * cols)?;
    check_len("bce target", target, rows * cols)?;
    check_len("bce weight", weight, rows)?;
    check_len("bce loss", loss, 1)?;
    be.launch(
        kl::BCE_FORWARD,
        (1, 1, 1),
        (1024, 1, 1),
        0,
        &[
            Arg::Ptr(be.ptr(x)?),
            Arg::Ptr(be.ptr(target)?),
            Arg::Ptr(be.ptr(weight)?),
            Arg::I32(int("rows", rows)?),
            Arg::I32(int("cols", cols)?),
            Arg::F32(scale),
            Arg::Ptr(be.ptr(loss)?),
        ],
    )
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn bce_backward(
    be: &CudaBackend,
    rows: usize,
    cols: usize,
    x: Tensor,
    target: Tensor,
    weight: Tensor,
    scale: f32,
    dx: Tensor,
) -> Result<()> {
    check_len("bce x", x, rows * cols)?;
    check_len("bce target", target, rows * cols)?;
    check_len("bce weight", weight, rows)?;
    check_len("bce dx", dx, rows * cols)?;
    let n = rows * cols;
    be.launch_1d(
        kl::BCE_BACKWARD,
        n,
        &[
            Arg::Ptr(be.ptr(x)?),
            Arg::Ptr(be.ptr(target)?),
            Arg::Ptr(be.ptr(weight)?),
            Arg::I32(int("cols", cols)?),
            Arg::F32(scale),
            Arg::Ptr(be.ptr(dx)?),
            Arg::I64(n as i64),
        ],
    )
}

pub(crate) fn adam(
    be: &CudaBackend,
    param: Tensor,
    grad: Tensor,
    m: Tensor,
    v: Tensor,
    a: &AdamArgs,
) -> Result<()> {
    for t in [grad, m, v] {
        check_len("adam", t, param.len)?;
    }
    // Bias corrections exactly as cpu/adam.rs (f64, then rounded to f32).
    let bc1 = 1.0 - (a.beta1 as f64).powi(a.step as i32);
    let bc2 = 1.0 - (a.beta2 as f64).powi(a.step as i32);
    let step_size = (a.lr as f64 / bc1) as f32;
    let bc2_sqrt = bc2.sqrt() as f32;
    let n = param.len;
    be.launch_1d(
        ka::ADAM_STEP,
        n,
        &[
            Arg::Ptr(be.ptr(param)?),
            Arg::Ptr(be.ptr(grad)?),
            Arg::Ptr(be.ptr(m)?),
            Arg::Ptr(be.ptr(v)?),
            Arg::I64(n as i64),
            Arg::F32(a.beta1),
            Arg::F32(a.beta2),
            Arg::F32(a.eps),
            Arg::F32(step_size),
            Arg::F32(bc2_sqrt),
        ],
    )
}
