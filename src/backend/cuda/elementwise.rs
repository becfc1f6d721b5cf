//! Launches of kernels/elementwise.cu (twin of cpu/elementwise.rs).

use super::context::{check_len, int, Arg, CudaBackend};
use super::kernels::names::elementwise as k;
use crate::error::Result;
use crate::tensor::Tensor;

pub(crate) fn fill(be: &CudaBackend, t: Tensor, value: f32) -> Result<()> {
    fill_ptr(be, be.ptr(t)?, t.len, value)
}

/// `len` floats at device address `p` (a tensor or workspace) = `value`.
pub(crate) fn fill_ptr(be: &CudaBackend, p: u64, len: usize, value: f32) -> Result<()> {
    be.launch_1d(
        k::FILL,
        len,
        &[Arg::Ptr(p), Arg::I64(len as i64), Arg::F32(value)],
    )
}

pub(crate) fn copy(be: &CudaBackend, src: Tensor, dst: Tensor) -> Result<()> {
    check_len("copy", dst, src.len)?;
    copy_ptr(be, be.ptr(src)?, be.ptr(dst)?, src.len)
}

/// `len` floats from device address `src` to `dst` (tensors or buffers of their own).
pub(crate) fn copy_ptr(be: &CudaBackend, src: u64, dst: u64, len: usize) -> Result<()> {
    be.launch_1d(
        k::COPY,
        len,
        &[Arg::Ptr(src), Arg::Ptr(dst), Arg::I64(len as i64)],
    )
}

pub(crate) fn add_inplace(be: &CudaBackend, dst: Tensor, src: Tensor) -> Result<()> {
    check_len("add_inplace", dst, src.len)?;
    let (d, s) = (be.ptr(dst)?, be.ptr(src)?);
    be.launch_1d(
        k::ADD_INPLACE,
        src.len,
        &[Arg::Ptr(d), Arg::Ptr(s), Arg::I64(src.len as i64)],
    )
}

pub(crate) fn relu_inplace(be: &CudaBackend, x: Tensor) -> Result<()> {
    let p = be.ptr(x)?;
    be.launch_1d(
        k::RELU_INPLACE,
        x.len,
        &[Arg::Ptr(p), Arg::I64(x.len as i64)],
    )
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn bias_act_inplace(
    be: &CudaBackend,
    rows: usize,
    c: usize,
    y: Tensor,
    bias: Tensor,
    residual: Option<Tensor>,
    relu: bool,
) -> Result<()> {
    check_len("bias_act y", y, rows * c)?;
    check_len("bias_act bias", bias, c)?;
    if let Some(r) = residual {
        check_len("bias_act residual", r, rows * c)?;
    }
    if rows == 0 || c == 0 {
        return Ok(());
    }
    be.launch_1d(
        k::BIAS_ACT_INPLACE,
        y.len,
        &[
            Arg::Ptr(be.ptr(y)?),
            Arg::Ptr(be.ptr(bias)?),
            Arg::Ptr(be.optr(residual)?),
            Arg::I64(y.len as i64),
            Arg::I32(int("bias_act channels", c)?),
            Arg::I32(relu as i32),
        ],
    )
}

pub(crate) fn relu_backward_inplace(be: &CudaBackend, y: Tensor, dy: Tensor) -> Result<()> {
    check_len("relu_backward", dy, y.len)?;
    let (yp, dp) = (be.ptr(y)?, be.ptr(dy)?);
    be.launch_1d(
        k::RELU_BACKWARD_INPLACE,
        y.len,
        &[Arg::Ptr(yp), Arg::Ptr(dp), Arg::I64(y.len as i64)],
    )
}

pub(crate) fn sigmoid(be: &CudaBackend, x: Tensor, y: Tensor) -> Result<()> {
    check_len("sigmoid", y, x.len)?;
    let (xp, yp) = (be.ptr(x)?, be.ptr(y)?);
    be.launch_1d(
        k::SIGMOID,
        x.len,
        &[Arg::Ptr(xp), Arg::Ptr(yp), Arg::I64(x.len as i64)],
    )
}

pub(crate) fn sigmoid_backward(be: &CudaBackend, y: Tensor, dy: Tensor, dx: Tensor) -> Result<()> {
    check_len("sigmoid_backward dy", dy, y.len)?;
    check_len("sigmoid_backward dx", dx, y.len)?;
    let (yp, dyp, dxp) = (be.ptr(y)?, be.ptr(dy)?, be.ptr(dx)?);
    be.launch_1d(
        k::SIGMOID_BACKWARD,
        y.len,
        &[
            Arg::Ptr(yp),
            Arg::Ptr(dyp),
            Arg::Ptr(dxp),
            Arg::I64(y.len as i64),
        ],
    )
}
