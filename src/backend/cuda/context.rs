//! The CUDA backend object: context, stream, kernel modules, buffers, workspace and the launch
//! helper every operation family uses.
//!
//! Buffers are `CudaSlice<f32>` owned by the backend and addressed by `BufId`; operations work on
//! raw device pointers (`base + off`), so `&self` operations may write any buffer (the trait's
//! no-aliasing rule makes that sound, exactly as on the CPU). Event tracking is disabled: there is
//! one stream and everything is ordered on it.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr};
use cudarc::nvrtc::Ptx;

use super::blas::Blas;
use super::kernels::{KernelImage, KERNEL_FILES};
use crate::backend::Precision;
use crate::error::{Error, Result};
use crate::tensor::{BufId, Tensor};

/// A kernel named at build time: (index of its file in `KERNEL_FILES`, function name).
pub(crate) type Kernel = (usize, &'static str);

/// One kernel argument (passed by value, as the kernel's C signature declares it).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Arg {
    /// A device pointer (`float*`, `double*`, …); 0 is a null pointer.
    Ptr(u64),
    I32(i32),
    I64(i64),
    F32(f32),
}

/// Threads per block of the 1-D grid-stride kernels.
pub(crate) const BLOCK: u32 = 256;

pub(crate) fn dev_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Device(format!("{what}: {e:?}"))
}

/// A dimension as the `int` a kernel takes; sizes beyond `i32::MAX` are an error, not a wrap.
pub(crate) fn int(what: &str, v: usize) -> Result<i32> {
    i32::try_from(v)
        .map_err(|_| Error::Device(format!("{what} = {v} exceeds the kernels' 32-bit range")))
}

/// The number in environment variable `name` when it is set and not blank, else `default`; an
/// error naming what is `expected` when it is not a number or `valid` refuses it.
pub(crate) fn env_number(
    name: &str,
    default: f64,
    valid: impl Fn(f64) -> bool,
    expected: &str,
) -> Result<f64> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|x| valid(*x))
            .ok_or_else(|| Error::Config(format!("{name} must be {expected}, not `{v}`"))),
        _ => Ok(default),
    }
}

pub(crate) fn check_len(what: &str, t: Tensor, len: usize) -> Result<()> {
    if t.len != len {
        return Err(Error::Device(format!(
            "{what}: tensor has {} elements, operation expects {len}",
            t.len
        )));
    }
    Ok(())
}

struct Buffer {
    slice: CudaSlice<f32>,
    ptr: u64,
    len: usize,
}

/// The grow-only scratch area (im2col columns, relation q, reduction partials).
struct Workspace {
    slice: Option<CudaSlice<f32>>,
    ptr: u64,
    len: usize,
}

pub struct CudaBackend {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) blas: Mutex<Blas>,
    /// Per kernel file: its functions by name.
    functions: Vec<HashMap<&'static str, CudaFunction>>,
    bufs: Vec<Buffer>,
    workspace: Mutex<Workspace>,
    pub(crate) name: String,
    cc: (i32, i32),
    /// Largest dynamic + static shared memory a block may opt into.
    pub(crate) max_smem_optin: usize,
    /// The current [`Precision`] as its discriminant.
    precision: AtomicU8,
    /// The current [`super::ConvAlgo`] as its discriminant (`PRRNET_CONV_ALGO` at creation).
    pub(crate) conv_algo: AtomicU8,
    /// The halo kernels' least patch fill, as f64 bits (`PRRNET_HALO_MIN_FILL` at creation).
    pub(crate) halo_min_fill: AtomicU64,
    /// The kernel choices made by measurement (tune.rs).
    pub(crate) tuning: Mutex<super::tune::Tuning>,
    /// Its FLOP floor, as f64 bits (`PRRNET_TUNE_MIN_GFLOP` at creation).
    pub(crate) tune_min_flops: AtomicU64,
    /// Whether a CUDA graph capture is open on the stream (nothing may synchronise).
    pub(crate) capturing: AtomicBool,
    /// The most bytes kernel tuning held at once (`note_tune_transient`).
    tune_transient_peak: AtomicUsize,
    /// Grow-only page-locked staging area for `upload_with`.
    pinned: Mutex<Staging>,
    /// Instantiated CUDA graphs, addressed by index.
    pub(crate) graphs: Mutex<Vec<super::graph::Graph>>,
}

impl CudaBackend {
    /// Create the context on device `ordinal`, load every embedded kernel module.
    pub(crate) fn new(ordinal: usize) -> Result<Self> {
        let count = CudaContext::device_count().map_err(|e| dev_err("cuDeviceGetCount", e))?;
        if ordinal >= count.max(0) as usize {
            return Err(Error::Device(format!(
                "CUDA device {ordinal} does not exist ({count} device(s) present)"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| dev_err("creating the CUDA context", e))?;
        // SAFETY: called before any buffer or stream exists; one stream orders everything.
        unsafe { ctx.disable_event_tracking() };
        let cc = ctx
            .compute_capability()
            .map_err(|e| dev_err("querying the compute capability", e))?;
        let name = ctx.name().unwrap_or_else(|_| "unknown CUDA device".into());
        if cc.0 < 8 {
            return Err(Error::Device(format!(
                "CUDA device {ordinal} ({name}) has compute capability {}.{}; PRRNet needs 8.0 or newer",
                cc.0, cc.1
            )));
        }
        if !super::kernels::KERNELS_EMBEDDED {
            return Err(Error::Device(
                "this build embeds no CUDA kernels (nvcc was not found when it was compiled); \
                 rebuild with nvcc available (scripts/install-cuda-toolchain.sh) or use --device cpu"
                    .into(),
            ));
        }
        let max_smem_optin = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .map_err(|e| dev_err("querying shared memory size", e))?
            .max(48 * 1024) as usize;
        // A non-default stream: CUDA graphs can only capture one.
        let stream = ctx
            .new_stream()
            .map_err(|e| dev_err("creating a CUDA stream", e))?;
        let functions = KERNEL_FILES
            .iter()
            .map(|img| load_file(&ctx, img, cc))
            .collect::<Result<Vec<_>>>()?;
        let blas = Blas::new(stream.clone())?;
        let conv_algo = super::ConvAlgo::from_env()?;
        let halo_min_fill = super::conv_halo::min_fill_from_env()?;
        let tune_min_flops = super::tune::min_flops_from_env()?;
        Ok(CudaBackend {
            ctx,
            stream,
            blas: Mutex::new(blas),
            functions,
            bufs: Vec::new(),
            workspace: Mutex::new(Workspace {
                slice: None,
                ptr: 0,
                len: 0,
            }),
            name: format!("cuda:{ordinal} ({name}, sm_{}{})", cc.0, cc.1),
            cc,
            max_smem_optin,
            precision: AtomicU8::new(Precision::Fp32 as u8),
            conv_algo: AtomicU8::new(conv_algo as u8),
            halo_min_fill: AtomicU64::new(halo_min_fill.to_bits()),
            tuning: Mutex::new(super::tune::Tuning::from_env()?),
            tune_min_flops: AtomicU64::new(tune_min_flops.to_bits()),
            capturing: AtomicBool::new(false),
            tune_transient_peak: AtomicUsize::new(0),
            graphs: Mutex::new(Vec::new()),
            pinned: Mutex::new(Staging::default()),
        })
    }

    /// Switch GEMMs and the relation map to `p` (see [`Precision`]).
    pub(crate) fn set_precision_impl(&self, p: Precision) -> Result<()> {
        self.bind()?;
        self.blas
            .lock()
            .map_err(|_| Error::Device("cuBLAS handle lock poisoned".into()))?
            .set_precision(p);
        self.precision.store(p as u8, Ordering::Relaxed);
        Ok(())
    }

    pub(crate) fn precision_impl(&self) -> Precision {
        match self.precision.load(Ordering::Relaxed) {
            1 => Precision::Tf32,
            2 => Precision::Bf16,
            _ => Precision::Fp32,
        }
    }

    /// The device's compute capability (major, minor).
    pub fn compute_capability(&self) -> (i32, i32) {
        self.cc
    }

    pub(crate) fn bind(&self) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| dev_err("binding the CUDA context", e))
    }

    pub(crate) fn alloc_buf(&mut self, len: usize) -> Result<BufId> {
        self.bind()?;
        let bytes = len * 4;
        let oom = |e: cudarc::driver::DriverError| {
            Error::OutOfMemory(format!(
                "cannot allocate {bytes} bytes ({} MiB) on {}: {e:?} ({} MiB already allocated)",
                bytes >> 20,
                self.name,
                self.total_bytes() >> 20
            ))
        };
        // Zero-length buffers get one element so that every buffer has a valid address.
        let slice = self.stream.alloc_zeros::<f32>(len.max(1)).map_err(oom)?;
        let (ptr, _sync) = slice.device_ptr(&self.stream);
        drop(_sync);
        self.bufs.push(Buffer { slice, ptr, len });
        Ok(BufId(self.bufs.len() as u32 - 1))
    }

    /// The peak of this backend's device memory: the buffers and the workspace (both only
    /// grow), cuBLAS's workspace, and the most that kernel tuning ever held at once beside
    /// them (its save and comparison copies, freed after each choice).
    pub(crate) fn total_bytes(&self) -> usize {
        let ws = self.workspace.lock().map(|w| w.len).unwrap_or(0);
        (self.bufs.iter().map(|b| b.len).sum::<usize>() + ws) * 4
            + super::blas::BLAS_WORKSPACE_BYTES
            + self.tune_transient_peak.load(Ordering::Relaxed)
    }

    /// Note `bytes` held by kernel tuning at once (see [`CudaBackend::total_bytes`]).
    pub(crate) fn note_tune_transient(&self, bytes: usize) {
        self.tune_transient_peak.fetch_max(bytes, Ordering::Relaxed);
    }

    /// The most bytes kernel tuning has held at once beside the buffers (counted in
    /// `allocated_bytes`).
    pub fn tuning_peak_bytes(&self) -> usize {
        self.tune_transient_peak.load(Ordering::Relaxed)
    }

    /// The device address of a tensor's first element (range-checked).
    pub(crate) fn ptr(&self, t: Tensor) -> Result<u64> {
        let b = self
            .bufs
            .get(t.buf.0 as usize)
            .ok_or_else(|| Error::Device(format!("tensor {t:?}: no such buffer")))?;
        if t.off + t.len > b.len {
            return Err(Error::Device(format!(
                "tensor {t:?} lies outside its buffer of {} elements",
                b.len
            )));
        }
        let _ = &b.slice;
        Ok(b.ptr + (t.off * 4) as u64)
    }

    /// `ptr` of an optional tensor, 0 (a null pointer for the kernel) when absent.
    pub(crate) fn optr(&self, t: Option<Tensor>) -> Result<u64> {
        t.map_or(Ok(0), |t| self.ptr(t))
    }

    /// Run `f` with a workspace of at least `floats` f32 elements (64-byte aligned, contents
    /// unspecified). The workspace only grows; growing waits for the stream first, because
    /// queued kernels may still use the old one. The lock is held while `f` enqueues its work.
    pub(crate) fn with_workspace<R>(
        &self,
        floats: usize,
        f: impl FnOnce(u64) -> Result<R>,
    ) -> Result<R> {
        let mut ws = self
            .workspace
            .lock()
            .map_err(|_| Error::Device("workspace lock poisoned".into()))?;
        if ws.len < floats {
            self.bind()?;
            self.synchronize_stream()?;
            ws.slice = None;
            ws.len = 0;
            ws.ptr = 0;
            let want = floats.next_multiple_of(1 << 16);
            // SAFETY: workspace contents are always written before they are read.
            let slice = unsafe { self.stream.alloc::<f32>(want) }.map_err(|e| {
                Error::OutOfMemory(format!(
                    "cannot allocate a {} byte workspace on {}: {e:?}",
                    want * 4,
                    self.name
                ))
            })?;
            let (ptr, sync) = slice.device_ptr(&self.stream);
            drop(sync);
            ws.ptr = ptr;
            ws.len = want;
            ws.slice = Some(slice);
        }
        f(ws.ptr)
    }

    pub(crate) fn synchronize_stream(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| {
            dev_err(
                "CUDA stream synchronize (an earlier kernel may have failed)",
                e,
            )
        })
    }

    fn function(&self, k: Kernel) -> Result<&CudaFunction> {
        self.functions
            .get(k.0)
            .and_then(|m| m.get(k.1))
            .ok_or_else(|| Error::Device(format!("kernel {} is not loaded", k.1)))
    }

    /// Allow `k` to use `bytes` of dynamic shared memory next to at most `static_bytes` of
    /// static shared memory. A block whose static + dynamic total exceeds 48 KiB needs the
    /// opt-in attribute (even when the dynamic part alone is below 48 KiB).
    pub(crate) fn allow_dynamic_smem(
        &self,
        k: Kernel,
        bytes: usize,
        static_bytes: usize,
    ) -> Result<()> {
        if bytes + static_bytes > self.max_smem_optin {
            return Err(Error::Device(format!(
                "kernel {} needs {} bytes of shared memory; {} allows at most {}",
                k.1,
                bytes + static_bytes,
                self.name,
                self.max_smem_optin
            )));
        }
        if bytes + static_bytes > 48 * 1024 {
            self.function(k)?
                .set_attribute(
                    CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    bytes as i32,
                )
                .map_err(|e| dev_err(&format!("setting the shared memory size of {}", k.1), e))?;
        }
        Ok(())
    }

    /// Enqueue kernel `k` on the stream.
    pub(crate) fn launch(
        &self,
        k: Kernel,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        smem: u32,
        args: &[Arg],
    ) -> Result<()> {
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(());
        }
        // The hardware limits (a launch beyond them fails with an unhelpful INVALID_VALUE).
        if grid.0 > i32::MAX as u32
            || grid.1 > 65535
            || grid.2 > 65535
            || block.0 as u64 * block.1 as u64 * block.2 as u64 > 1024
            || block.2 > 64
        {
            return Err(Error::Device(format!(
                "kernel {}: launch configuration grid {grid:?} block {block:?} exceeds the \
                 device limits (grid y, z <= 65535; at most 1024 threads per block)",
                k.1
            )));
        }
        let f = self.function(k)?;
        self.bind()?;
        let mut storage: Vec<Arg> = args.to_vec();
        let mut params: Vec<*mut c_void> = storage
            .iter_mut()
            .map(|a| match a {
                Arg::Ptr(p) => p as *mut u64 as *mut c_void,
                Arg::I32(v) => v as *mut i32 as *mut c_void,
                Arg::I64(v) => v as *mut i64 as *mut c_void,
                Arg::F32(v) => v as *mut f32 as *mut c_void,
            })
            .collect();
        // SAFETY: `params` point at values that live until this call returns (the driver copies
        // them); argument lists are written to match each kernel's C signature.
        unsafe {
            cudarc::driver::result::launch_kernel(
                f.cu_function(),
                grid,
                block,
                smem,
                self.stream.cu_stream(),
                &mut params,
            )
        }
        .map_err(|e| dev_err(&format!("launching kernel {}", k.1), e))
    }

    /// Enqueue a 1-D grid-stride kernel over `n` elements (nothing when `n == 0`).
    pub(crate) fn launch_1d(&self, k: Kernel, n: usize, args: &[Arg]) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let blocks = n.div_ceil(BLOCK as usize).min(1 << 20) as u32;
        self.launch(k, (blocks, 1, 1), (BLOCK, 1, 1), 0, args)
    }

    pub(crate) fn upload_to(&self, dst: Tensor, src: &[f32]) -> Result<()> {
        check_len("upload", dst, src.len())?;
        if src.is_empty() {
            return Ok(());
        }
        let p = self.ptr(dst)?;
        self.bind()?;
        // SAFETY: destination range checked; the copy completes before we return (synchronize),
        // so `src` outlives it.
        unsafe { cudarc::driver::result::memcpy_htod_async(p, src, self.stream.cu_stream()) }
            .map_err(|e| dev_err("host-to-device copy", e))?;
        self.synchronize_stream()
    }

    /// `upload_with` through page-locked staging memory (falls back to an ordinary upload
    /// when page-locked memory cannot be had).
    pub(crate) fn upload_pinned(
        &self,
        dst: Tensor,
        fill: &mut dyn FnMut(&mut [f32]),
    ) -> Result<()> {
        let p = self.ptr(dst)?;
        let len = dst.len;
        if len == 0 {
            return Ok(());
        }
        self.bind()?;
        let mut staging = self
            .pinned
            .lock()
            .map_err(|_| Error::Device("staging lock poisoned".into()))?;
        // The previous upload's copy may still be reading the staging area.
        staging.wait()?;
        if staging.buf.as_ref().is_none_or(|s| s.len() < len) {
            staging.buf = None;
            // Plain (cached) page-locked memory, not write-combined: `fill` writes with strides
            // (the NCHW → NHWC transpose), which write-combining buffers handle badly.
            // SAFETY: f32 is valid for any bit pattern; `fill` writes before the copy reads.
            match unsafe { self.ctx.alloc_pinned_with_flags::<f32>(len, 0) } {
                Ok(s) => staging.buf = Some(s),
                Err(_) => {
                    drop(staging);
                    let mut v = vec![0.0; len];
                    fill(&mut v);
                    return self.upload_to(dst, &v);
                }
            }
        }
        let host = staging
            .buf
            .as_mut()
            .expect("staging allocated above")
            .as_mut_slice()
            .map_err(|e| dev_err("page-locked staging memory", e))?;
        let host = &mut host[..len];
        fill(host);
        // SAFETY: destination range checked. The copy runs in stream order (after the work
        // already enqueued, before any enqueued later), so the caller may go on at once: an
        // inference pipeline stages the next batch while the network still works on this one.
        // The staging area is not written again before the event recorded here has passed.
        unsafe { cudarc::driver::result::memcpy_htod_async(p, &*host, self.stream.cu_stream()) }
            .map_err(|e| dev_err("host-to-device copy", e))?;
        staging.copied = Some(
            self.stream
                .record_event(None)
                .map_err(|e| dev_err("cuEventRecord (staging copy)", e))?,
        );
        Ok(())
    }

    pub(crate) fn download_from(&self, src: Tensor, dst: &mut [f32]) -> Result<()> {
        check_len("download", src, dst.len())?;
        if dst.is_empty() {
            return self.synchronize_stream();
        }
        let p = self.ptr(src)?;
        self.bind()?;
        // SAFETY: source range checked; we wait for the copy before `dst` is used.
        unsafe { cudarc::driver::result::memcpy_dtoh_async(dst, p, self.stream.cu_stream()) }
            .map_err(|e| dev_err("device-to-host copy", e))?;
        self.synchronize_stream()
    }
}

/// Load one kernel file: the cubin for this device's architecture when embedded, else the PTX.
fn load_file(
    ctx: &Arc<CudaContext>,
    img: &KernelImage,
    cc: (i32, i32),
) -> Result<HashMap<&'static str, CudaFunction>> {
    let arch = (cc.0 * 10 + cc.1) as u32;
    // A cubin runs on devices of the same major version and an equal or newer minor one.
    let cubin = img
        .cubins
        .iter()
        .filter(|(a, _)| a / 10 == arch / 10 && *a <= arch)
        .max_by_key(|(a, _)| *a);
    let mut errors = Vec::new();
    let mut module = None;
    if let Some((a, bytes)) = cubin {
        match ctx.load_module(Ptx::from_binary(bytes.to_vec())) {
            Ok(m) => module = Some(m),
            Err(e) => errors.push(format!("cubin sm_{a}: {e:?}")),
        }
    }
    if module.is_none() && !img.ptx.is_empty() {
        match ctx.load_module(Ptx::from_src(img.ptx)) {
            Ok(m) => module = Some(m),
            Err(e) => errors.push(format!("PTX compute_{}: {e:?}", img.ptx_arch)),
        }
    }
    let module = module.ok_or_else(|| {
        Error::Device(format!(
            "cannot load kernels/{}.cu for sm_{arch}: {}",
            img.file,
            if errors.is_empty() {
                "no image embedded".to_string()
            } else {
                errors.join("; ")
            }
        ))
    })?;
    img.functions
        .iter()
        .map(|&name| {
            module.load_function(name).map(|f| (name, f)).map_err(|e| {
                dev_err(
                    &format!("loading kernel {name} from kernels/{}.cu", img.file),
                    e,
                )
            })
        })
        .collect()
}

/// The page-locked staging area of `upload_with` and the event after its last copy.
#[derive(Default)]
struct Staging {
    buf: Option<cudarc::driver::PinnedHostSlice<f32>>,
    copied: Option<cudarc::driver::CudaEvent>,
}

impl Staging {
    /// Wait until the last copy out of the staging area has finished.
    fn wait(&mut self) -> Result<()> {
        if let Some(ev) = self.copied.take() {
            ev.synchronize()
                .map_err(|e| dev_err("cuEventSynchronize (staging copy)", e))?;
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // Page-locked memory must outlive the DMA reading it.
        let _ = self.wait();
    }
}
