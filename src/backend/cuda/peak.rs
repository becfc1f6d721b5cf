//! The device's measured peaks, the denominators of the floors in docs/PERFORMANCE.md:
//! dense GEMM rate (cuBLAS `GemmEx`, square, untransposed) in fp32, TF32 and BF16 (true
//! `CUDA_R_16BF` operands, f32 accumulation and output), and device memory bandwidth (a large
//! device-to-device copy, counting the bytes read and written). Timed with CUDA events on the
//! backend's stream after warm-up; the median of the timed repetitions is reported, with the
//! best one beside it.

use cudarc::cublas::sys::cublasComputeType_t as Ct;
use cudarc::driver::{CudaSlice, DevicePtr};
use serde::Serialize;

use super::blas::GemmType;
use super::context::{dev_err, CudaBackend};
use crate::backend::Backend;
use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub struct PeakOptions {
    /// Side of the square GEMMs (M = N = K).
    pub gemm_side: usize,
    /// Bytes copied per repetition of the bandwidth test.
    pub copy_bytes: usize,
    pub warmup: usize,
    pub iters: usize,
}

impl Default for PeakOptions {
    fn default() -> Self {
        PeakOptions {
            gemm_side: 8192,
            copy_bytes: 1 << 30,
            warmup: 3,
            iters: 10,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct GemmPeak {
    /// fp32 | tf32 | bf16
    pub precision: String,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub ms_median: f64,
    pub ms_min: f64,
    /// 2·M·N·K / median time.
    pub tflops: f64,
    /// 2·M·N·K / best time.
    pub tflops_best: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CopyPeak {
    /// Bytes copied (each is read once and written once).
    pub bytes: usize,
    pub ms_median: f64,
    pub ms_min: f64,
    /// 2·bytes / median time, in 10⁹ bytes per second.
    pub gbps: f64,
    pub gbps_best: f64,
}

/// One JSON line of `prrnet bench --peaks`.
#[derive(Clone, Debug, Serialize)]
pub struct Peaks {
    #[serde(rename = "impl")]
    pub implementation: String,
    pub kind: String,
    pub device: String,
    pub fp32_tflops: f64,
    pub tf32_tflops: f64,
    pub bf16_tflops: f64,
    pub dram_gbps: f64,
    pub gemm: Vec<GemmPeak>,
    pub copy: CopyPeak,
}

fn median_min(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0])
}

/// Deterministic values in [-1, 1) (non-zero data keeps the power draw, and so the clocks,
/// representative: an all-zero GEMM runs cooler and faster).
fn host_values(len: usize) -> Vec<f32> {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn bf16_bits(v: &[f32]) -> Vec<u16> {
    v.iter()
        .map(|&x| half::bf16::from_f32(x).to_bits())
        .collect()
}

fn ptr<T>(be: &CudaBackend, s: &CudaSlice<T>) -> u64 {
    let (p, sync) = s.device_ptr(&be.stream);
    drop(sync);
    p
}

/// Time `f` (which enqueues work) `warmup + iters` times with device markers.
fn time(
    be: &CudaBackend,
    o: &PeakOptions,
    mut f: impl FnMut() -> Result<()>,
) -> Result<(f64, f64)> {
    for _ in 0..o.warmup {
        f()?;
    }
    be.synchronize()?;
    let mut ms = Vec::with_capacity(o.iters);
    for _ in 0..o.iters.max(1) {
        let a = be.timer_mark()?;
        f()?;
        let b = be.timer_mark()?;
        ms.push(be.timer_elapsed_ms(&a, &b)?);
    }
    Ok(median_min(ms))
}

/// Measure the GEMM rates and the memory bandwidth of `be`'s device.
pub fn measure(be: &CudaBackend, o: &PeakOptions) -> Result<Peaks> {
    be.bind()?;
    let n = o.gemm_side;
    let alloc_err =
        |what: &str, e| Error::OutOfMemory(format!("peak measurement: allocating {what}: {e:?}"));
    let host = host_values(n * n);
    let a32 = be
        .stream
        .clone_htod(&host)
        .map_err(|e| alloc_err("A (f32)", e))?;
    let b32 = be
        .stream
        .clone_htod(&host)
        .map_err(|e| alloc_err("B (f32)", e))?;
    let bits = bf16_bits(&host);
    let a16 = be
        .stream
        .clone_htod(&bits)
        .map_err(|e| alloc_err("A (bf16)", e))?;
    let b16 = be
        .stream
        .clone_htod(&bits)
        .map_err(|e| alloc_err("B (bf16)", e))?;
    // The host vectors must outlive the asynchronous uploads.
    be.synchronize()?;
    drop((host, bits));
    // SAFETY: every GEMM writes C completely before anything reads it.
    let c = unsafe { be.stream.alloc::<f32>(n * n) }.map_err(|e| alloc_err("C", e))?;
    let (pa32, pb32, pa16, pb16, pc) = (
        ptr(be, &a32),
        ptr(be, &b32),
        ptr(be, &a16),
        ptr(be, &b16),
        ptr(be, &c),
    );
    let flop = 2.0 * (n as f64).powi(3);
    let mut gemm = Vec::new();
    for (precision, a, b, ty, compute) in [
        ("fp32", pa32, pb32, GemmType::F32, Ct::CUBLAS_COMPUTE_32F),
        (
            "tf32",
            pa32,
            pb32,
            GemmType::F32,
            Ct::CUBLAS_COMPUTE_32F_FAST_TF32,
        ),
        ("bf16", pa16, pb16, GemmType::Bf16, Ct::CUBLAS_COMPUTE_32F),
    ] {
        let (med, min) = time(be, o, || {
            be.blas
                .lock()
                .map_err(|_| Error::Device("cuBLAS handle lock poisoned".into()))?
                .gemm_typed(n, n, n, a, b, ty, pc, GemmType::F32, compute)
        })?;
        gemm.push(GemmPeak {
            precision: precision.into(),
            m: n,
            n,
            k: n,
            ms_median: med,
            ms_min: min,
            tflops: flop / (med * 1e-3) / 1e12,
            tflops_best: flop / (min * 1e-3) / 1e12,
        });
    }
    drop((a32, b32, a16, b16, c));

    let bytes = o.copy_bytes;
    let src = be
        .stream
        .alloc_zeros::<u8>(bytes)
        .map_err(|e| alloc_err("the copy source", e))?;
    let mut dst = be
        .stream
        .alloc_zeros::<u8>(bytes)
        .map_err(|e| alloc_err("the copy destination", e))?;
    let (med, min) = time(be, o, || {
        be.stream
            .memcpy_dtod(&src, &mut dst)
            .map_err(|e| dev_err("device-to-device copy", e))
    })?;
    let moved = 2.0 * bytes as f64;
    let copy = CopyPeak {
        bytes,
        ms_median: med,
        ms_min: min,
        gbps: moved / (med * 1e-3) / 1e9,
        gbps_best: moved / (min * 1e-3) / 1e9,
    };
    be.synchronize()?;
    let rate = |p: &str| {
        gemm.iter()
            .find(|g| g.precision == p)
            .map_or(0.0, |g| g.tflops)
    };
    Ok(Peaks {
        implementation: "prrnet".into(),
        kind: "peaks".into(),
        device: be.name(),
        fp32_tflops: rate("fp32"),
        tf32_tflops: rate("tf32"),
        bf16_tflops: rate("bf16"),
        dram_gbps: copy.gbps,
        gemm,
        copy,
    })
}

/// Open CUDA device `ordinal` and measure its peaks (an error without a GPU).
pub fn measure_device(ordinal: usize, o: &PeakOptions) -> Result<Peaks> {
    let be = super::open_cuda(ordinal)?;
    measure(&be, o)
}
