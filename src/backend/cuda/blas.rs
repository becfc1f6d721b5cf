//! cuBLAS GEMMs for row-major f32 matrices. The operands stay f32 in memory; the compute type
//! picks the arithmetic: exact f32 (the default), or tensor cores fed TF32 or BF16 inputs with
//! f32 accumulation (`CUBLAS_COMPUTE_32F_FAST_TF32` / `_FAST_16BF`).
//!
//! cuBLAS is column-major; a row-major `C[M,N] = op(A)·op(B)` is the column-major
//! `Cᵀ[N,M] = op(B)ᵀ·op(A)ᵀ`, i.e. `gemm(m = N, n = M, k = K, B, A)` with the same transpose
//! flags (TOOLCHAIN.md).

use std::sync::Arc;

use cudarc::cublas::sys::{
    cublasComputeType_t, cublasGemmAlgo_t, cublasMath_t, cublasOperation_t, cudaDataType_t,
};
use cudarc::cublas::{result as cublas, CudaBlas};
use cudarc::driver::CudaStream;

use super::context::dev_err;
use crate::backend::Precision;
use crate::error::{Error, Result};

pub(crate) struct Blas {
    blas: CudaBlas,
    compute: cublasComputeType_t,
    /// cuBLAS's workspace, set explicitly so that no GEMM allocates (CUDA graph capture
    /// forbids allocation; 32 MiB is what NVIDIA recommends for Hopper).
    _workspace: cudarc::driver::CudaSlice<u8>,
}

pub(crate) const BLAS_WORKSPACE_BYTES: usize = 32 << 20;

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
        // SAFETY: cuBLAS owns the workspace's contents.
        let workspace = unsafe { stream.alloc::<u8>(BLAS_WORKSPACE_BYTES) }
            .map_err(|e| dev_err("allocating the cuBLAS workspace", e))?;
        let blas =
            CudaBlas::new(stream.clone()).map_err(|e| dev_err("creating the cuBLAS handle", e))?;
        {
            use cudarc::driver::DevicePtr;
            let (ptr, _sync) = workspace.device_ptr(&stream);
            // SAFETY: a valid handle and a device allocation of the stated size that lives as
            // long as the handle (both are fields of this struct).
            unsafe {
                cudarc::cublas::sys::cublasSetWorkspace_v2(
                    *blas.handle(),
                    ptr as *mut std::ffi::c_void,
                    BLAS_WORKSPACE_BYTES,
                )
            }
            .result()
            .map_err(|e| dev_err("cublasSetWorkspace", e))?;
        }
        // Default math: no tensor-core shortcut unless the compute type asks for one.
        // SAFETY: a valid handle and a valid enum value.
        unsafe {
            cudarc::cublas::sys::cublasSetMathMode(
                *blas.handle(),
                cublasMath_t::CUBLAS_DEFAULT_MATH,
            )
        }
        .result()
        .map_err(|e| dev_err("cublasSetMathMode", e))?;
        Ok(Blas {
            blas,
            compute: cublasComputeType_t::CUBLAS_COMPUTE_32F,
            _workspace: workspace,
        })
    }

    pub(crate) fn set_precision(&mut self, p: Precision) {
        self.compute = match p {
            Precision::Fp32 => cublasComputeType_t::CUBLAS_COMPUTE_32F,
            Precision::Tf32 => cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
            Precision::Bf16 => cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_16BF,
        };
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
        let f32t = cudaDataType_t::CUDA_R_32F;
        unsafe {
            cublas::gemm_ex(
                *self.blas.handle(),
                op(b.trans),
                op(a.trans),
                c_int("n", n)?,
                c_int("m", m)?,
                c_int("k", k)?,
                &alpha as *const f32 as *const std::ffi::c_void,
                b.ptr as *const std::ffi::c_void,
                f32t,
                c_int("ldb", b.ld.max(1))?,
                a.ptr as *const std::ffi::c_void,
                f32t,
                c_int("lda", a.ld.max(1))?,
                &beta as *const f32 as *const std::ffi::c_void,
                c as *mut std::ffi::c_void,
                f32t,
                c_int("ldc", ldc.max(1))?,
                self.compute,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| {
            dev_err(
                &format!("cublasGemmEx ({:?}, m={m}, n={n}, k={k})", self.compute),
                e,
            )
        })
    }
}

// ---- typed GEMM (peak-rate measurement, `peak.rs`) --------------------------------------

/// The storage type of a typed GEMM operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GemmType {
    F32,
    Bf16,
}

impl GemmType {
    fn cuda(self) -> cudaDataType_t {
        match self {
            GemmType::F32 => cudaDataType_t::CUDA_R_32F,
            GemmType::Bf16 => cudaDataType_t::CUDA_R_16BF,
        }
    }
}

impl Blas {
    /// Row-major `C[m, n] = A[m, k] · B[k, n]` (dense, untransposed) with explicit operand
    /// types and compute type — independent of the backend's precision setting. Used to
    /// measure the device's dense GEMM rate; `compute` is one of the `CUBLAS_COMPUTE_32F*`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn gemm_typed(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: u64,
        b: u64,
        ab_type: GemmType,
        c: u64,
        c_type: GemmType,
        compute: cublasComputeType_t,
    ) -> Result<()> {
        let (alpha, beta) = (1.0f32, 0.0f32);
        let no = cublasOperation_t::CUBLAS_OP_N;
        // SAFETY: the caller passes device buffers of at least m·k, k·n and m·n elements of
        // the stated types.
        unsafe {
            cublas::gemm_ex(
                *self.blas.handle(),
                no,
                no,
                c_int("n", n)?,
                c_int("m", m)?,
                c_int("k", k)?,
                &alpha as *const f32 as *const std::ffi::c_void,
                b as *const std::ffi::c_void,
                ab_type.cuda(),
                c_int("ldb", n)?,
                a as *const std::ffi::c_void,
                ab_type.cuda(),
                c_int("lda", k)?,
                &beta as *const f32 as *const std::ffi::c_void,
                c as *mut std::ffi::c_void,
                c_type.cuda(),
                c_int("ldc", n)?,
                compute,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| {
            dev_err(
                &format!("cublasGemmEx ({ab_type:?}→{c_type:?}, {compute:?}, m={m}, n={n}, k={k})"),
                e,
            )
        })
    }
}
