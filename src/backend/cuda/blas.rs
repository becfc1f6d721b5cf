//! cuBLAS SGEMM for row-major matrices, with an exact-f32 (default) or TF32 math mode.
//!
//! cuBLAS is column-major; a row-major `C[M,N] = op(A)·op(B)` is the column-major
//! `Cᵀ[N,M] = op(B)ᵀ·op(A)ᵀ`, i.e. `gemm(m = N, n = M, k = K, B, A)` with the same transpose
//! flags (TOOLCHAIN.md).

use std::sync::Arc;

use cudarc::cublas::sys::{cublasMath_t, cublasOperation_t};
use cudarc::cublas::{result as cublas, CudaBlas};
use cudarc::driver::CudaStream;

use super::context::dev_err;
use crate::error::{Error, Result};

pub(crate) struct Blas {
    blas: CudaBlas,
}

/// One row-major operand: device pointer, whether it is used transposed, its row stride.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Operand {
    pub ptr: u64,
    /// `false`: stored as `[rows, cols]` of op(X); `true`: stored as `[cols, rows]` (use Xᵀ).
    pub trans: bool,
    /// Row stride (elements) of the matrix as stored.
    pub ld: usize,
}

fn c_int(what: &str, v: usize) -> Result<i32> {
    i32::try_from(v)
        .map_err(|_| Error::Device(format!("GEMM {what} = {v} exceeds cuBLAS's int range")))
}

impl Blas {
    pub(crate) fn new(stream: Arc<CudaStream>) -> Result<Self> {
        let blas = CudaBlas::new(stream).map_err(|e| dev_err("creating the cuBLAS handle", e))?;
        let b = Blas { blas };
        b.set_tf32(false)?;
        Ok(b)
    }

    pub(crate) fn set_tf32(&self, on: bool) -> Result<()> {
        let mode = if on {
            cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH
        } else {
            cublasMath_t::CUBLAS_DEFAULT_MATH
        };
        // SAFETY: a valid handle and a valid enum value.
        unsafe { cudarc::cublas::sys::cublasSetMathMode(*self.blas.handle(), mode) }
            .result()
            .map_err(|e| dev_err("cublasSetMathMode", e))
    }

    /// Row-major `C[m, n] = op(A)[m, k] · op(B)[k, n] + beta · C` (`ldc` = row stride of C).
    /// With `beta == 0` C is not read (it may hold NaN).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn gemm(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: Operand,
        b: Operand,
        c: u64,
        ldc: usize,
        beta: f32,
    ) -> Result<()> {
        if m == 0 || n == 0 {
            return Ok(());
        }
        let op = |t: bool| {
            if t {
                cublasOperation_t::CUBLAS_OP_T
            } else {
                cublasOperation_t::CUBLAS_OP_N
            }
        };
        let alpha = 1.0f32;
        // k == 0 is valid for cuBLAS: C = beta·C.
        // SAFETY: the callers pass pointers to ranges they have checked against the shapes.
        unsafe {
            cublas::sgemm(
                *self.blas.handle(),
                op(b.trans),
                op(a.trans),
                c_int("n", n)?,
                c_int("m", m)?,
                c_int("k", k)?,
                &alpha,
                b.ptr as *const f32,
                c_int("ldb", b.ld.max(1))?,
                a.ptr as *const f32,
                c_int("lda", a.ld.max(1))?,
                &beta,
                c as *mut f32,
                c_int("ldc", ldc.max(1))?,
            )
        }
        .map_err(|e| dev_err(&format!("cublasSgemm (m={m}, n={n}, k={k})"), e))
    }
}
