//! Convolutions (im2col / col2im from kernels/conv.cu + cuBLAS) and linear layers (cuBLAS +
//! kernels/linear.cu); twin of cpu/conv.rs and cpu/linear.rs.
//!
//! x: [B, H, W, Cin], w: [Cout, k, k, Cin] (OHWI), y: [B, Ho, Wo, Cout]. The column matrix has
//! one row per output pixel and `k·k·Cin` columns in `(ky, kx, ci)` order: `y = col · wᵀ`,
//! `dw += dyᵀ · col`, `dcol = dy · w`, `dx += col2im(dcol)`. Images go in chunks so the
//! columns fit a bounded workspace. 1×1 stride-1 convolutions are plain linear layers.

use super::blas::Operand;
use super::context::{check_len, int, Arg, CudaBackend};
use super::kernels::names::{conv as kc, linear as kl};
use crate::backend::ConvShape;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Upper bound on im2col workspace elements (128 MiB of f32).
const COL_BUDGET: usize = 32 << 20;

fn images_per_chunk(s: &ConvShape) -> usize {
    let per_image = s.ho * s.wo * s.col_k();
    (COL_BUDGET / per_image.max(1)).clamp(1, s.b.max(1))
}

/// The cuBLAS handle, with the context current on this thread (cuBLAS runs in the calling
/// thread's current context; a GEMM may be the first call a thread makes).
fn blas_lock(be: &CudaBackend) -> Result<std::sync::MutexGuard<'_, super::blas::Blas>> {
    be.bind()?;
    be.blas
        .lock()
        .map_err(|_| Error::Device("cuBLAS handle lock poisoned".into()))
}

/// `y[r, :] += bias` for `rows` rows of `n`.
pub(crate) fn bias_add(
    be: &CudaBackend,
    y: u64,
    bias: Tensor,
    rows: usize,
    n: usize,
) -> Result<()> {
    check_len("bias", bias, n)?;
    let b = be.ptr(bias)?;
    be.launch_1d(
        kl::BIAS_ADD,
        rows * n,
        &[
            Arg::Ptr(y),
            Arg::Ptr(b),
            Arg::I32(int("n", n)?),
            Arg::I64((rows * n) as i64),
        ],
    )
}

/// `db[j] += Σ_r dy[r, j]` (two-stage deterministic reduction in f64).
pub(crate) fn bias_grad(
    be: &CudaBackend,
    dy: u64,
    rows: usize,
    n: usize,
    db: Tensor,
) -> Result<()> {
    check_len("dbias", db, n)?;
    if n == 0 {
        return Ok(());
    }
    let dbp = be.ptr(db)?;
    let (rpc, chunks) = row_chunks(rows);
    be.with_workspace(2 * chunks * n, |ws| {
        be.launch(
            kl::BIAS_GRAD_PARTIAL,
            (n.div_ceil(32) as u32, chunks as u32, 1),
            (32, 8, 1),
            0,
            &[
                Arg::Ptr(dy),
                Arg::I32(int("rows", rows)?),
                Arg::I32(int("n", n)?),
                Arg::I32(int("rows per chunk", rpc)?),
                Arg::Ptr(ws),
            ],
        )?;
        be.launch(
            kl::BIAS_GRAD_FINALIZE,
            finalize_grid(n),
            (256, 1, 1),
            0,
            &[
                Arg::Ptr(ws),
                Arg::I32(chunks as i32),
                Arg::I32(n as i32),
                Arg::Ptr(dbp),
            ],
        )
    })
}

/// Grid of a reducing `*_finalize` launch (block 256): one warp per column, 8 per block
/// (`COLUMNS_PER_BLOCK` in kernels/reduce.cuh).
pub(crate) fn finalize_grid(cols: usize) -> (u32, u32, u32) {
    (cols.div_ceil(8) as u32, 1, 1)
}

/// Rows per chunk and chunk count of the two-stage column reductions (at most 1024 chunks).
pub(crate) fn row_chunks(rows: usize) -> (usize, usize) {
    let rpc = 256usize.max(rows.div_ceil(1024));
    (rpc, rows.div_ceil(rpc).max(1))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn linear(
    be: &CudaBackend,
    m: usize,
    k: usize,
    n: usize,
    x: Tensor,
    w: Tensor,
    bias: Option<Tensor>,
    y: Tensor,
) -> Result<()> {
    check_len("linear x", x, m * k)?;
    check_len("linear w", w, n * k)?;
    check_len("linear y", y, m * n)?;
    let (xp, wp, yp) = (be.ptr(x)?, be.ptr(w)?, be.ptr(y)?);
    be.bind()?;
    // y[m, n] = x[m, k] · w[n, k]ᵀ
    blas_lock(be)?.gemm(
        m,
        n,
        k,
        Operand {
            ptr: xp,
            trans: false,
            ld: k,
        },
        Operand {
            ptr: wp,
            trans: true,
            ld: k,
        },
        yp,
        n,
        0.0,
    )?;
    if let Some(b) = bias {
        bias_add(be, yp, b, m, n)?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn linear_backward(
    be: &CudaBackend,
    m: usize,
    k: usize,
    n: usize,
    x: Tensor,
    w: Tensor,
    dy: Tensor,
    dx: Option<Tensor>,
    dw: Option<Tensor>,
    dbias: Option<Tensor>,
) -> Result<()> {
    check_len("linear dy", dy, m * n)?;
    let dyp = be.ptr(dy)?;
    be.bind()?;
    if let Some(dx) = dx {
        check_len("linear dx", dx, m * k)?;
        check_len("linear w", w, n * k)?;
        // dx[m, k] += dy[m, n] · w[n, k]
        blas_lock(be)?.gemm(
            m,
            k,
            n,
            Operand {
                ptr: dyp,
                trans: false,
                ld: n,
            },
            Operand {
                ptr: be.ptr(w)?,
                trans: false,
                ld: k,
            },
            be.ptr(dx)?,
            k,
            1.0,
        )?;
    }
    if let Some(dw) = dw {
        check_len("linear dw", dw, n * k)?;
        check_len("linear x", x, m * k)?;
        // dw[n, k] += dy[m, n]ᵀ · x[m, k]
        blas_lock(be)?.gemm(
            n,
            k,
            m,
            Operand {
                ptr: dyp,
                trans: true,
                ld: n,
            },
            Operand {
                ptr: be.ptr(x)?,
                trans: false,
                ld: k,
            },
            be.ptr(dw)?,
            k,
            1.0,
        )?;
    }
    if let Some(db) = dbias {
        bias_grad(be, dyp, m, n, db)?;
    }
    Ok(())
}

fn conv_args(s: &ConvShape, src: u64, dst: u64, total: usize) -> Result<Vec<Arg>> {
    Ok(vec![
        Arg::Ptr(src),
        Arg::Ptr(dst),
        Arg::I32(int("h", s.h)?),
        Arg::I32(int("w", s.w)?),
        Arg::I32(int("cin", s.cin)?),
        Arg::I32(int("ho", s.ho)?),
        Arg::I32(int("wo", s.wo)?),
        Arg::I32(int("k", s.k)?),
        Arg::I32(int("stride", s.stride)?),
        Arg::I32(int("pad", s.pad)?),
        Arg::I64(total as i64),
    ])
}

pub(crate) fn conv2d(
    be: &CudaBackend,
    s: &ConvShape,
    x: Tensor,
    w: Tensor,
    bias: Option<Tensor>,
    y: Tensor,
) -> Result<()> {
    check_len("conv x", x, s.x_len())?;
    check_len("conv w", w, s.w_len())?;
    check_len("conv y", y, s.y_len())?;
    if s.is_pointwise() {
        return linear(be, s.b * s.h * s.w, s.cin, s.cout, x, w, bias, y);
    }
    let (xp, wp, yp) = (be.ptr(x)?, be.ptr(w)?, be.ptr(y)?);
    let kk = s.col_k();
    let chunk = images_per_chunk(s);
    let (xi, yi) = (s.h * s.w * s.cin, s.ho * s.wo * s.cout);
    be.with_workspace(chunk * s.ho * s.wo * kk, |col| {
        for b0 in (0..s.b).step_by(chunk) {
            let nb = chunk.min(s.b - b0);
            let rows = nb * s.ho * s.wo;
            be.launch_1d(
                kc::IM2COL,
                rows * kk,
                &conv_args(s, xp + (b0 * xi * 4) as u64, col, rows * kk)?,
            )?;
            // y[rows, cout] = col[rows, kk] · w[cout, kk]ᵀ
            blas_lock(be)?.gemm(
                rows,
                s.cout,
                kk,
                Operand {
                    ptr: col,
                    trans: false,
                    ld: kk,
                },
                Operand {
                    ptr: wp,
                    trans: true,
                    ld: kk,
                },
                yp + (b0 * yi * 4) as u64,
                s.cout,
                0.0,
            )?;
        }
        Ok(())
    })?;
    if let Some(b) = bias {
        bias_add(be, yp, b, s.b * s.ho * s.wo, s.cout)?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn conv2d_backward(
    be: &CudaBackend,
    s: &ConvShape,
    x: Tensor,
    w: Tensor,
    dy: Tensor,
    dx: Option<Tensor>,
    dw: Option<Tensor>,
    dbias: Option<Tensor>,
) -> Result<()> {
    check_len("conv x", x, s.x_len())?;
    check_len("conv w", w, s.w_len())?;
    check_len("conv dy", dy, s.y_len())?;
    if s.is_pointwise() {
        return linear_backward(be, s.b * s.h * s.w, s.cin, s.cout, x, w, dy, dx, dw, dbias);
    }
    let dyp = be.ptr(dy)?;
    if let Some(db) = dbias {
        bias_grad(be, dyp, s.b * s.ho * s.wo, s.cout, db)?;
    }
    if dx.is_none() && dw.is_none() {
        return Ok(());
    }
    if let Some(dx) = dx {
        check_len("conv dx", dx, s.x_len())?;
    }
    if let Some(dw) = dw {
        check_len("conv dw", dw, s.w_len())?;
    }
    let (xp, wp) = (be.ptr(x)?, be.ptr(w)?);
    let (dxp, dwp) = (be.optr(dx)?, be.optr(dw)?);
    let kk = s.col_k();
    let chunk = images_per_chunk(s);
    let (xi, yi) = (s.h * s.w * s.cin, s.ho * s.wo * s.cout);
    be.with_workspace(chunk * s.ho * s.wo * kk, |col| {
        for b0 in (0..s.b).step_by(chunk) {
            let nb = chunk.min(s.b - b0);
            let rows = nb * s.ho * s.wo;
            let dyc = dyp + (b0 * yi * 4) as u64;
            if dw.is_some() {
                be.launch_1d(
                    kc::IM2COL,
                    rows * kk,
                    &conv_args(s, xp + (b0 * xi * 4) as u64, col, rows * kk)?,
                )?;
                // dw[cout, kk] += dy[rows, cout]ᵀ · col[rows, kk]
                blas_lock(be)?.gemm(
                    s.cout,
                    kk,
                    rows,
                    Operand {
                        ptr: dyc,
                        trans: true,
                        ld: s.cout,
                    },
                    Operand {
                        ptr: col,
                        trans: false,
                        ld: kk,
                    },
                    dwp,
                    kk,
                    1.0,
                )?;
            }
            if dx.is_some() {
                // dcol[rows, kk] = dy[rows, cout] · w[cout, kk]
                blas_lock(be)?.gemm(
                    rows,
                    kk,
                    s.cout,
                    Operand {
                        ptr: dyc,
                        trans: false,
                        ld: s.cout,
                    },
                    Operand {
                        ptr: wp,
                        trans: false,
                        ld: kk,
                    },
                    col,
                    kk,
                    0.0,
                )?;
                let n = nb * xi;
                be.launch_1d(
                    kc::COL2IM_ADD,
                    n,
                    &conv_args(s, col, dxp + (b0 * xi * 4) as u64, n)?,
                )?;
            }
        }
        Ok(())
    })
}
