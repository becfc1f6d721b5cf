//! The CPU reference backend: f32 storage, f64 accumulation where a reduction is long,
//! multi-threaded with rayon, GEMMs through the `gemm` crate.
//!
//! It is the oracle every CUDA kernel is tested against, so each operation is written for
//! clarity first; the hot ones (convolution, relation map) are GEMM-shaped so that it is also
//! fast enough to train the `tiny` preset and to run W30 on a small machine.

mod adam;
mod attention;
mod concat;
mod conv;
mod conv_direct;
#[cfg(test)]
mod conv_naive;
mod conv_small;
mod elementwise;
mod exp;
mod linear;
mod loss;
mod norm;
mod region;
mod relation;
mod resample;
mod simd;

use std::sync::Mutex;

use crate::backend::*;
use crate::error::{Error, Result};
use crate::tensor::{BufId, Tensor};

/// One heap buffer owned by the backend. Raw parts, so that operations taking `&self` may write
/// into buffers other than the ones they read (the trait's no-aliasing rule makes this sound).
struct RawBuf {
    ptr: *mut f32,
    len: usize,
}

pub struct CpuBackend {
    bufs: Vec<RawBuf>,
    /// Operations started so far (each trait call is one), and, when tracing, every tensor
    /// access as (operation, tensor): the activation planner's liveness source.
    ops: std::sync::atomic::AtomicU64,
    trace: Option<Mutex<Vec<(u64, Tensor)>>>,
    /// Grow-only scratch (im2col columns, relation rows); allocated on first use, then reused.
    workspace: Mutex<Vec<f32>>,
}

// SAFETY: buffers are plain heap memory; concurrent access is governed by the operation
// contracts (outputs never alias inputs), exactly as device memory is on a GPU.
unsafe impl Send for CpuBackend {}
unsafe impl Sync for CpuBackend {}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuBackend {
    pub fn new() -> Self {
        CpuBackend {
            bufs: Vec::new(),
            ops: std::sync::atomic::AtomicU64::new(0),
            trace: None,
            workspace: Mutex::new(Vec::new()),
        }
    }

    /// A backend that records every tensor access with the index of the operation making it.
    pub fn tracing() -> Self {
        let mut b = Self::new();
        b.trace = Some(Mutex::new(Vec::new()));
        b
    }

    /// The accesses recorded so far (tracing backends), as (operation index, tensor).
    pub fn take_trace(&self) -> Vec<(u64, Tensor)> {
        self.trace.as_ref().map_or_else(Vec::new, |t| {
            std::mem::take(&mut *t.lock().unwrap_or_else(|e| e.into_inner()))
        })
    }

    fn tick(&self) {
        self.ops.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn raw(&self, t: Tensor) -> *mut f32 {
        if let Some(tr) = &self.trace {
            let op = self.ops.load(std::sync::atomic::Ordering::Relaxed);
            tr.lock().unwrap_or_else(|e| e.into_inner()).push((op, t));
        }
        let b = &self.bufs[t.buf.0 as usize];
        assert!(
            t.off + t.len <= b.len,
            "tensor {t:?} outside its buffer of {} elements",
            b.len
        );
        // SAFETY: in bounds, checked above.
        unsafe { b.ptr.add(t.off) }
    }

    /// Read access to a tensor.
    pub(crate) fn r(&self, t: Tensor) -> &[f32] {
        // SAFETY: in bounds; no operation writes a tensor it also reads through `r`.
        unsafe { std::slice::from_raw_parts(self.raw(t), t.len) }
    }

    /// Write access to a tensor. Callers never hold two overlapping `w` slices, nor a `w` slice
    /// overlapping an `r` slice (the trait's aliasing rule; checked in debug builds by `disjoint`).
    #[allow(clippy::mut_from_ref)]
    pub(crate) fn w(&self, t: Tensor) -> &mut [f32] {
        // SAFETY: see above.
        unsafe { std::slice::from_raw_parts_mut(self.raw(t), t.len) }
    }

    /// Run `f` with a scratch slice of at least `len` elements (contents unspecified).
    pub(crate) fn with_workspace<R>(&self, len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
        let mut ws = self.workspace.lock().unwrap_or_else(|e| e.into_inner());
        if ws.len() < len {
            ws.resize(len, 0.0);
        }
        f(&mut ws[..len])
    }
}

/// Panics when an output overlaps any input (debug builds only).
pub(crate) fn disjoint(outputs: &[Tensor], inputs: &[Tensor]) {
    if cfg!(debug_assertions) {
        for o in outputs {
            for i in inputs {
                assert!(!o.overlaps(i), "output {o:?} aliases input {i:?}");
            }
        }
    }
}

pub(crate) fn check_len(name: &str, t: Tensor, len: usize) {
    assert_eq!(
        t.len, len,
        "{name}: tensor has {} elements, op expects {len}",
        t.len
    );
}

/// Row-major GEMM `C[m,n] (+)= A[m,k] · B[k,n]` with element strides: A[i,l] = a[i·a_rs + l·a_cs],
/// B[l,j] = b[l·b_rs + j·b_cs], C[i,j] = c[i·ldc + j]. `parallel`: let `gemm` use the rayon pool
/// (false when already inside a parallel loop).
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                c[i * ldc..i * ldc + n].fill(0.0);
            }
        }
        return;
    }
    assert!((m - 1) * ldc + n <= c.len(), "gemm: C too small");
    assert!(
        (m - 1) * a_rs + (k - 1) * a_cs < a.len(),
        "gemm: A too small"
    );
    assert!(
        (k - 1) * b_rs + (n - 1) * b_cs < b.len(),
        "gemm: B too small"
    );
    let par = if parallel {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every index the GEMM touches is inside the slices (checked above).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        );
    }
}

/// Minimum elements per rayon task for cheap elementwise loops.
pub(crate) const PAR_MIN: usize = 1 << 14;

impl Backend for CpuBackend {
    fn name(&self) -> String {
        self.tick();
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn is_host(&self) -> bool {
        self.tick();
        true
    }

    fn alloc(&mut self, len: usize) -> Result<BufId> {
        let mut v: Vec<f32> = Vec::new();
        v.try_reserve_exact(len).map_err(|_| {
            Error::OutOfMemory(format!(
                "cannot allocate {} MB of host memory",
                len * 4 / (1 << 20)
            ))
        })?;
        v.resize(len, 0.0);
        let ptr = Box::into_raw(v.into_boxed_slice()) as *mut f32;
        self.bufs.push(RawBuf { ptr, len });
        Ok(BufId(self.bufs.len() as u32 - 1))
    }

    fn allocated_bytes(&self) -> usize {
        self.tick();
        let ws = self.workspace.lock().map(|w| w.len()).unwrap_or(0);
        (self.bufs.iter().map(|b| b.len).sum::<usize>() + ws) * 4
    }

    fn upload(&self, dst: Tensor, src: &[f32]) -> Result<()> {
        self.tick();
        check_len("upload", dst, src.len());
        self.w(dst).copy_from_slice(src);
        Ok(())
    }

    fn upload_with(&self, dst: Tensor, fill: &mut dyn FnMut(&mut [f32])) -> Result<()> {
        self.tick();
        fill(self.w(dst));
        Ok(())
    }

    fn download(&self, src: Tensor, dst: &mut [f32]) -> Result<()> {
        self.tick();
        check_len("download", src, dst.len());
        dst.copy_from_slice(self.r(src));
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        self.tick();
        Ok(())
    }

    fn fill(&self, t: Tensor, value: f32) -> Result<()> {
        self.tick();
        elementwise::fill(self, t, value);
        Ok(())
    }
    fn copy(&self, src: Tensor, dst: Tensor) -> Result<()> {
        self.tick();
        elementwise::copy(self, src, dst);
        Ok(())
    }
    fn add_inplace(&self, dst: Tensor, src: Tensor) -> Result<()> {
        self.tick();
        elementwise::add_inplace(self, dst, src);
        Ok(())
    }
    fn relu_inplace(&self, x: Tensor) -> Result<()> {
        self.tick();
        elementwise::relu_inplace(self, x);
        Ok(())
    }
    fn relu_backward_inplace(&self, y: Tensor, dy: Tensor) -> Result<()> {
        self.tick();
        elementwise::relu_backward_inplace(self, y, dy);
        Ok(())
    }
    fn bias_act_inplace(
        &self,
        rows: usize,
        c: usize,
        y: Tensor,
        bias: Tensor,
        residual: Option<Tensor>,
        relu: bool,
    ) -> Result<()> {
        self.tick();
        elementwise::bias_act_inplace(self, rows, c, y, bias, residual, relu);
        Ok(())
    }
    fn sigmoid(&self, x: Tensor, y: Tensor) -> Result<()> {
        self.tick();
        elementwise::sigmoid(self, x, y);
        Ok(())
    }
    fn sigmoid_backward(&self, y: Tensor, dy: Tensor, dx: Tensor) -> Result<()> {
        self.tick();
        elementwise::sigmoid_backward(self, y, dy, dx);
        Ok(())
    }

    fn conv2d(
        &self,
        s: &ConvShape,
        x: Tensor,
        w: Tensor,
        bias: Option<Tensor>,
        y: Tensor,
    ) -> Result<()> {
        self.tick();
        conv::forward(self, s, x, w, bias.map(|b| (b, None, false)), y);
        Ok(())
    }
    /// One operation rather than the default's convolution and bias pass: each convolution
    /// path applies the epilogue to the output it has just written, while it is in cache.
    fn conv2d_bias_act(
        &self,
        s: &ConvShape,
        x: Tensor,
        w: Tensor,
        bias: Tensor,
        residual: Option<Tensor>,
        relu: bool,
        y: Tensor,
    ) -> Result<()> {
        self.tick();
        conv::forward(self, s, x, w, Some((bias, residual, relu)), y);
        Ok(())
    }
    fn conv2d_backward(
        &self,
        s: &ConvShape,
        x: Tensor,
        w: Tensor,
        dy: Tensor,
        dx: Option<Tensor>,
        dw: Option<Tensor>,
        dbias: Option<Tensor>,
    ) -> Result<()> {
        self.tick();
        conv::backward(self, s, x, w, dy, dx, dw, dbias);
        Ok(())
    }
    fn linear(
        &self,
        m: usize,
        k: usize,
        n: usize,
        x: Tensor,
        w: Tensor,
        bias: Option<Tensor>,
        y: Tensor,
    ) -> Result<()> {
        self.tick();
        linear::forward(self, m, k, n, x, w, bias, y);
        Ok(())
    }
    fn linear_backward(
        &self,
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
        self.tick();
        linear::backward(self, m, k, n, x, w, dy, dx, dw, dbias);
        Ok(())
    }

    fn batchnorm(&self, s: &NormShape, t: &BatchNormTensors) -> Result<()> {
        self.tick();
        norm::forward(self, s, t);
        Ok(())
    }
    fn batchnorm_backward(
        &self,
        s: &NormShape,
        t: &BatchNormTensors,
        g: &BatchNormGrads,
    ) -> Result<()> {
        self.tick();
        norm::backward(self, s, t, g);
        Ok(())
    }

    fn resize_nearest(
        &self,
        s: &ResizeShape,
        x: Tensor,
        y: Tensor,
        accumulate: bool,
    ) -> Result<()> {
        self.tick();
        resample::nearest(self, s, x, y, accumulate);
        Ok(())
    }
    fn resize_nearest_backward(&self, s: &ResizeShape, dy: Tensor, dx: Tensor) -> Result<()> {
        self.tick();
        resample::nearest_backward(self, s, dy, dx);
        Ok(())
    }
    fn fuse_sum_relu(&self, s: &SumShape, terms: &[SumTerm], y: Tensor) -> Result<()> {
        check_sum_terms(s, terms, y)?;
        self.tick();
        resample::fuse_sum_relu(self, s, terms, y);
        Ok(())
    }
    fn resize_bilinear_into(
        &self,
        s: &ResizeShape,
        x: Tensor,
        y: Tensor,
        y_c: usize,
        offset: usize,
    ) -> Result<()> {
        check_channel_slice(s, x, y, y_c, offset)?;
        self.tick();
        resample::bilinear(self, s, x, y, y_c, offset);
        Ok(())
    }
    fn resize_bilinear_into_backward(
        &self,
        s: &ResizeShape,
        dy: Tensor,
        dy_c: usize,
        offset: usize,
        dx: Tensor,
    ) -> Result<()> {
        check_channel_slice(s, dx, dy, dy_c, offset)?;
        self.tick();
        resample::bilinear_backward(self, s, dy, dy_c, offset, dx);
        Ok(())
    }
    fn adaptive_avg_pool(&self, s: &ResizeShape, x: Tensor, y: Tensor) -> Result<()> {
        self.tick();
        resample::adaptive_avg_pool(self, s, x, y);
        Ok(())
    }
    fn adaptive_avg_pool_backward(&self, s: &ResizeShape, dy: Tensor, dx: Tensor) -> Result<()> {
        self.tick();
        resample::adaptive_avg_pool_backward(self, s, dy, dx);
        Ok(())
    }

    fn concat_channels(
        &self,
        rows: usize,
        src: Tensor,
        src_c: usize,
        dst: Tensor,
        dst_c: usize,
        offset: usize,
    ) -> Result<()> {
        self.tick();
        concat::forward(self, rows, src, src_c, dst, dst_c, offset);
        Ok(())
    }
    fn concat_channels_backward(
        &self,
        rows: usize,
        d_dst: Tensor,
        dst_c: usize,
        offset: usize,
        d_src: Tensor,
        src_c: usize,
    ) -> Result<()> {
        self.tick();
        concat::backward(self, rows, d_dst, dst_c, offset, d_src, src_c);
        Ok(())
    }

    fn relation(
        &self,
        s: &RelationShape,
        f: Tensor,
        norms: Tensor,
        lsum: Tensor,
        p: Tensor,
    ) -> Result<()> {
        self.tick();
        relation::forward(self, s, f, norms, lsum, p);
        Ok(())
    }
    fn relation_backward(
        &self,
        s: &RelationShape,
        f: Tensor,
        norms: Tensor,
        lsum: Tensor,
        p: Tensor,
        dp: Tensor,
        df: Tensor,
    ) -> Result<()> {
        self.tick();
        relation::backward(self, s, f, norms, lsum, p, dp, df);
        Ok(())
    }
    fn attention_pool(
        &self,
        b: usize,
        n: usize,
        c: usize,
        f: Tensor,
        m: Tensor,
        out: Tensor,
    ) -> Result<()> {
        self.tick();
        attention::forward(self, b, n, c, f, m, out);
        Ok(())
    }
    fn attention_pool_backward(
        &self,
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
        self.tick();
        attention::backward(self, b, n, c, f, m, out, dout, df, dm);
        Ok(())
    }
    fn region_metrics(
        &self,
        b: usize,
        d: usize,
        groups: usize,
        ab: Tensor,
        z: Tensor,
    ) -> Result<()> {
        self.tick();
        region::forward(self, b, d, groups, ab, z);
        Ok(())
    }
    fn region_metrics_backward(
        &self,
        b: usize,
        d: usize,
        groups: usize,
        ab: Tensor,
        dz: Tensor,
        dab: Tensor,
    ) -> Result<()> {
        self.tick();
        region::backward(self, b, d, groups, ab, dz, dab);
        Ok(())
    }

    fn bce_with_logits(
        &self,
        rows: usize,
        cols: usize,
        x: Tensor,
        target: Tensor,
        weight: Tensor,
        scale: f32,
        loss: Tensor,
    ) -> Result<()> {
        self.tick();
        loss::bce_with_logits(self, rows, cols, x, target, weight, scale, loss);
        Ok(())
    }
    fn bce_with_logits_backward(
        &self,
        rows: usize,
        cols: usize,
        x: Tensor,
        target: Tensor,
        weight: Tensor,
        scale: f32,
        dx: Tensor,
    ) -> Result<()> {
        self.tick();
        loss::bce_with_logits_backward(self, rows, cols, x, target, weight, scale, dx);
        Ok(())
    }
    fn adam(&self, param: Tensor, grad: Tensor, m: Tensor, v: Tensor, a: &AdamArgs) -> Result<()> {
        self.tick();
        adam::step(self, param, grad, m, v, a);
        Ok(())
    }
}

impl Drop for CpuBackend {
    fn drop(&mut self) {
        for b in self.bufs.drain(..) {
            // SAFETY: `ptr`/`len` came from `Box::into_raw` of a boxed slice of this length.
            unsafe {
                drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                    b.ptr, b.len,
                )))
            };
        }
    }
}
