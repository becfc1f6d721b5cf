//! Channel concatenation (kernels/concat.cu), attention pooling (kernels/attention.cu) and the
//! region metrics (kernels/region.cu); twins of cpu/concat.rs, cpu/attention.rs, cpu/region.rs.

use super::context::{check_len, int, Arg, CudaBackend};
use super::kernels::names::{attention as ka, concat as kc, region as kr};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

pub(crate) fn concat_forward(
    be: &CudaBackend,
    rows: usize,
    src: Tensor,
    src_c: usize,
    dst: Tensor,
    dst_c: usize,
    offset: usize,
) -> Result<()> {
    check_len("concat src", src, rows * src_c)?;
    check_len("concat dst", dst, rows * dst_c)?;
    if offset + src_c > dst_c {
        return Err(Error::Device(format!(
            "concat: channels {offset}..{} out of range of {dst_c}",
            offset + src_c
        )));
    }
    let n = rows * src_c;
    be.launch_1d(
        kc::CONCAT_FORWARD,
        n,
        &[
            Arg::Ptr(be.ptr(src)?),
            Arg::I32(int("src_c", src_c)?),
            Arg::Ptr(be.ptr(dst)?),
            Arg::I32(int("dst_c", dst_c)?),
            Arg::I32(int("offset", offset)?),
            Arg::I64(n as i64),
        ],
    )
}

pub(crate) fn concat_backward(
    be: &CudaBackend,
    rows: usize,
    d_dst: Tensor,
    dst_c: usize,
    offset: usize,
    d_src: Tensor,
    src_c: usize,
) -> Result<()> {
    check_len("concat d_src", d_src, rows * src_c)?;
    check_len("concat d_dst", d_dst, rows * dst_c)?;
    if offset + src_c > dst_c {
        return Err(Error::Device(format!(
            "concat: channels {offset}..{} out of range of {dst_c}",
            offset + src_c
        )));
    }
    let n = rows * src_c;
    be.launch_1d(
        kc::CONCAT_BACKWARD,
        n,
        &[
            Arg::Ptr(be.ptr(d_dst)?),
            Arg::I32(int("dst_c", dst_c)?),
            Arg::I32(int("offset", offset)?),
            Arg::Ptr(be.ptr(d_src)?),
            Arg::I32(int("src_c", src_c)?),
            Arg::I64(n as i64),
        ],
    )
}

pub(crate) fn attention_forward(
    be: &CudaBackend,
    b: usize,
    n: usize,
    c: usize,
    f: Tensor,
    m: Tensor,
    out: Tensor,
) -> Result<()> {
    check_len("attention f", f, b * n * c)?;
    check_len("attention m", m, b * n)?;
    check_len("attention out", out, 2 * b * c)?;
    be.launch(
        ka::ATTENTION_FORWARD,
        (c.div_ceil(32) as u32, b as u32, 1),
        (32, 8, 1),
        0,
        &[
            Arg::Ptr(be.ptr(f)?),
            Arg::Ptr(be.ptr(m)?),
            Arg::I32(int("pixels", n)?),
            Arg::I32(int("channels", c)?),
            Arg::I32(int("batch", b)?),
            Arg::Ptr(be.ptr(out)?),
        ],
    )
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_backward(
    be: &CudaBackend,
    b: usize,
    n: usize,
    c: usize,
    f: Tensor,
    m: Tensor,
    out: Tensor,
    dout: Tensor,
    df: Tensor,
    dm: Tensor,
) -> Result<()> {
    check_len("attention f", f, b * n * c)?;
    check_len("attention m", m, b * n)?;
    check_len("attention out", out, 2 * b * c)?;
    check_len("attention df", df, b * n * c)?;
    check_len("attention dm", dm, b * n)?;
    check_len("attention dout", dout, 2 * b * c)?;
    if b == 0 || n == 0 {
        return Ok(());
    }
    let mp = be.ptr(m)?;
    be.with_workspace(2 * b, |z| {
        be.launch(
            ka::ATTENTION_DENOMINATORS,
            (b as u32, 1, 1),
            (256, 1, 1),
            0,
            &[Arg::Ptr(mp), Arg::I32(int("pixels", n)?), Arg::Ptr(z)],
        )?;
        be.launch(
            ka::ATTENTION_BACKWARD,
            ((b * n).div_ceil(8) as u32, 1, 1),
            (256, 1, 1),
            0,
            &[
                Arg::Ptr(be.ptr(f)?),
                Arg::Ptr(mp),
                Arg::Ptr(be.ptr(out)?),
                Arg::Ptr(be.ptr(dout)?),
                Arg::Ptr(z),
                Arg::I32(int("batch", b)?),
                Arg::I32(int("pixels", n)?),
                Arg::I32(int("channels", c)?),
                Arg::Ptr(be.ptr(df)?),
                Arg::Ptr(be.ptr(dm)?),
            ],
        )
    })
}

fn check_groups(d: usize, groups: usize) -> Result<()> {
    if groups == 0 || !d.is_multiple_of(groups) {
        return Err(Error::Device(format!(
            "region: groups {groups} must divide d = {d}"
        )));
    }
    Ok(())
}

pub(crate) fn region_forward(
    be: &CudaBackend,
    b: usize,
    d: usize,
    groups: usize,
    ab: Tensor,
    z: Tensor,
) -> Result<()> {
    check_groups(d, groups)?;
    check_len("region ab", ab, 2 * b * d)?;
    check_len("region z", z, b * 3 * groups)?;
    be.launch(
        kr::REGION_FORWARD,
        (groups as u32, b as u32, 1),
        (128, 1, 1),
        0,
        &[
            Arg::Ptr(be.ptr(ab)?),
            Arg::I32(int("batch", b)?),
            Arg::I32(int("d", d)?),
            Arg::I32(int("groups", groups)?),
            Arg::Ptr(be.ptr(z)?),
        ],
    )
}

pub(crate) fn region_backward(
    be: &CudaBackend,
    b: usize,
    d: usize,
    groups: usize,
    ab: Tensor,
    dz: Tensor,
    dab: Tensor,
) -> Result<()> {
    check_groups(d, groups)?;
    check_len("region ab", ab, 2 * b * d)?;
    check_len("region dz", dz, b * 3 * groups)?;
    check_len("region dab", dab, 2 * b * d)?;
    be.launch(
        kr::REGION_BACKWARD,
        (groups as u32, b as u32, 1),
        (128, 1, 1),
        0,
        &[
            Arg::Ptr(be.ptr(ab)?),
            Arg::Ptr(be.ptr(dz)?),
            Arg::I32(int("batch", b)?),
            Arg::I32(int("d", d)?),
            Arg::I32(int("groups", groups)?),
            Arg::Ptr(be.ptr(dab)?),
        ],
    )
}
