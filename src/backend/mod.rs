//! The operation set: every operation the network needs, forward and backward, behind one
//! object-safe trait that the CPU reference and the CUDA backend both implement.
//!
//! Conventions (written down once, relied on everywhere):
//! - Activations are channels-last: `[B, H, W, C]`, a pixel's channels contiguous. A 2-D
//!   activation `[rows, C]` is the same thing with `H = W = 1`.
//! - Convolution weights are `[C_out, kh, kw, C_in]` (OHWI); linear weights `[out, in]`. Files use
//!   PyTorch's layouts; conversion happens only at the file boundary (`io`).
//! - Forward operations overwrite their outputs, unless an `accumulate` flag says otherwise.
//! - **Every backward operation adds (`+=`) into the gradients it produces**, parameter and
//!   activation gradients alike. The model zeroes the gradient arenas once per step, so a tensor
//!   read by several consumers (residuals, fuse layers) gets the sum of their contributions
//!   without temporary buffers. The only exception is `relu_backward_inplace`, which masks a
//!   gradient that is complete.
//! - Operations are enqueued: on a GPU they run asynchronously on the backend's stream; only
//!   `download` (and `synchronize`) wait.
//! - Outputs never alias inputs unless an operation's name says `inplace`.

pub mod count;
pub mod cpu;
pub mod cuda;

use crate::error::Result;
use crate::tensor::{BufId, Tensor};

/// The largest supported relation-bin side `n` (a row's bins fit on the stack).
pub const MAX_BINS_SIDE: usize = 16;

/// A 2-D convolution over channels-last activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ConvShape {
    pub b: usize,
    pub h: usize,
    pub w: usize,
    pub cin: usize,
    pub cout: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub ho: usize,
    pub wo: usize,
}

impl ConvShape {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        b: usize,
        h: usize,
        w: usize,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Self {
        assert!(
            h + 2 * pad >= k && w + 2 * pad >= k,
            "kernel larger than input"
        );
        let ho = (h + 2 * pad - k) / stride + 1;
        let wo = (w + 2 * pad - k) / stride + 1;
        ConvShape {
            b,
            h,
            w,
            cin,
            cout,
            k,
            stride,
            pad,
            ho,
            wo,
        }
    }
    pub fn x_len(&self) -> usize {
        self.b * self.h * self.w * self.cin
    }
    pub fn y_len(&self) -> usize {
        self.b * self.ho * self.wo * self.cout
    }
    pub fn w_len(&self) -> usize {
        self.cout * self.k * self.k * self.cin
    }
    /// Columns of the im2col matrix: one row per output pixel, `(ky, kx, ci)` order.
    pub fn col_k(&self) -> usize {
        self.k * self.k * self.cin
    }
    /// A 1×1, stride-1, unpadded convolution is a plain GEMM over pixels.
    pub fn is_pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }
    /// The im2col matrix is `x` itself, `[B·Ho·Wo, k·k·Cin]`: a pointwise convolution, or an
    /// unpadded window as large as the map (one output pixel per image: the relation module's
    /// second convolution). Such a convolution is a plain GEMM.
    pub fn columns_are_input(&self) -> bool {
        self.is_pointwise() || (self.pad == 0 && self.k == self.h && self.k == self.w)
    }
    pub fn flops(&self) -> f64 {
        2.0 * (self.b * self.ho * self.wo) as f64 * self.col_k() as f64 * self.cout as f64
    }
    /// The stride-1 convolution whose forward is this one's data gradient: input dy
    /// `[B, Ho, Wo, Cout]`, output dx `[B, H, W, Cin]`, weights flipped and transposed, padding
    /// k − 1 − p (a 1×1 convolution's is the 1×1 convolution Cout → Cin). `None` where that
    /// does not hold (stride > 1, padding ≥ k).
    pub fn transposed(&self) -> Option<ConvShape> {
        if self.stride != 1 || self.pad >= self.k {
            return None;
        }
        let t = ConvShape {
            b: self.b,
            h: self.ho,
            w: self.wo,
            cin: self.cout,
            cout: self.cin,
            k: self.k,
            stride: 1,
            pad: self.k - 1 - self.pad,
            ho: self.h,
            wo: self.w,
        };
        // The output size of the transposed convolution is the input's by construction.
        debug_assert_eq!(t.ho, t.h + 2 * t.pad + 1 - t.k);
        Some(t)
    }
}

/// Resampling of `[B, hi, wi, C]` to `[B, ho, wo, C]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResizeShape {
    pub b: usize,
    pub c: usize,
    pub hi: usize,
    pub wi: usize,
    pub ho: usize,
    pub wo: usize,
}

impl ResizeShape {
    pub fn x_len(&self) -> usize {
        self.b * self.hi * self.wi * self.c
    }
    pub fn y_len(&self) -> usize {
        self.b * self.ho * self.wo * self.c
    }
}

/// The output of [`Backend::fuse_sum_relu`]: `[b, ho, wo, c]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SumShape {
    pub b: usize,
    pub c: usize,
    pub ho: usize,
    pub wo: usize,
}

impl SumShape {
    pub fn y_len(&self) -> usize {
        self.b * self.ho * self.wo * self.c
    }
    /// The resize taking term `t` to this shape.
    pub fn resize_from(&self, t: &SumTerm) -> ResizeShape {
        ResizeShape {
            b: self.b,
            c: self.c,
            hi: t.hi,
            wi: t.wi,
            ho: self.ho,
            wo: self.wo,
        }
    }
}

/// One addend of [`Backend::fuse_sum_relu`]: `x: [b, hi, wi, c]`, resized (nearest, SPEC §6)
/// to the output's size; the identity when it already has that size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SumTerm {
    pub x: Tensor,
    pub hi: usize,
    pub wi: usize,
}

/// The most terms one [`Backend::fuse_sum_relu`] takes (an HRNet has at most four branches;
/// the kernel takes its term pointers as arguments).
pub const MAX_SUM_TERMS: usize = 4;

/// Checks the term count and every tensor's length for [`Backend::fuse_sum_relu`].
pub fn check_sum_terms(s: &SumShape, terms: &[SumTerm], y: Tensor) -> Result<()> {
    let bad = |msg: String| Err(crate::error::Error::Other(format!("fuse_sum_relu: {msg}")));
    if terms.is_empty() || terms.len() > MAX_SUM_TERMS {
        return bad(format!(
            "{} terms, expected 1 to {MAX_SUM_TERMS}",
            terms.len()
        ));
    }
    if y.len != s.y_len() {
        return bad(format!("y has {} elements, expected {}", y.len, s.y_len()));
    }
    for (j, t) in terms.iter().enumerate() {
        let want = s.resize_from(t).x_len();
        if t.x.len != want || (s.y_len() > 0 && (t.hi == 0 || t.wi == 0)) {
            return bad(format!(
                "term {j} has {} elements, expected {want} ({}x{}x{}x{})",
                t.x.len, s.b, t.hi, t.wi, s.c
            ));
        }
        if t.x.overlaps(&y) {
            return bad(format!("term {j} aliases the output"));
        }
    }
    Ok(())
}

/// Checks [`Backend::resize_bilinear_into`]'s operands: `x: [b, hi, wi, c]`, the wide side
/// `[b, ho, wo, wide_c]` with room for channels `[offset, offset + c)`, and no aliasing.
pub fn check_channel_slice(
    s: &ResizeShape,
    x: Tensor,
    wide: Tensor,
    wide_c: usize,
    offset: usize,
) -> Result<()> {
    let bad = |msg: String| {
        Err(crate::error::Error::Other(format!(
            "bilinear resize: {msg}"
        )))
    };
    if x.len != s.x_len() {
        return bad(format!("x has {} elements, expected {}", x.len, s.x_len()));
    }
    let want = s.b * s.ho * s.wo * wide_c;
    if wide.len != want {
        return bad(format!(
            "the {}x{}x{}x{wide_c} side has {} elements, expected {want}",
            s.b, s.ho, s.wo, wide.len
        ));
    }
    if offset + s.c > wide_c {
        return bad(format!(
            "channels {offset}..{} do not fit in {wide_c}",
            offset + s.c
        ));
    }
    if x.overlaps(&wide) {
        return bad("input and output alias".into());
    }
    Ok(())
}

/// Numeric precision of the GEMMs and the relation map's Q·Qᵀ (everything else stays f32).
///
/// - `Fp32`: exact f32 arithmetic (the default, and the only mode of the CPU reference).
/// - `Tf32`: tensor cores with TF32 inputs (10-bit mantissa), f32 accumulation.
/// - `Bf16`: tensor cores with BF16 inputs (7-bit mantissa), f32 accumulation.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[repr(u8)]
pub enum Precision {
    #[default]
    Fp32 = 0,
    Tf32 = 1,
    Bf16 = 2,
}

impl std::str::FromStr for Precision {
    type Err = crate::error::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "fp32" | "f32" => Ok(Precision::Fp32),
            "tf32" => Ok(Precision::Tf32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(crate::error::Error::Config(format!(
                "unknown precision `{s}` (expected fp32, tf32 or bf16)"
            ))),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
        })
    }
}

/// One kernel choice made by measurement on the CUDA backend (a convolution's path, the
/// relation map's version), for reports (`prrnet bench --json`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KernelChoice {
    /// `conv` or `relation`.
    pub op: String,
    /// conv: forward, backward_data or backward_weight; relation: forward or backward.
    pub pass: String,
    /// conv: `b64 75x75 30->30 k3 s1 p1` (as bench-conv names shapes); relation:
    /// `b64 75x75 c450 n5`.
    pub shape: String,
    pub precision: String,
    /// The epilogue of a forward: any of `bias`, `residual` (or `residual=y`: accumulating into
    /// the output), `relu`, joined by `+` (else empty).
    pub epilogue: String,
    /// The candidate that runs (conv: im2col, implicit or halo; relation: a version name).
    pub chosen: String,
    /// Every candidate timed, with its median milliseconds.
    pub paths: Vec<PathTime>,
    /// The candidate whose output every other one's was compared with before it was timed (the
    /// most trusted that ran); empty when no comparison could be made (no memory for it).
    #[serde(default)]
    pub reference: String,
    /// Candidates left out of the choice: a launch that failed, or an output that did not
    /// agree with the reference's.
    #[serde(default)]
    pub rejected: Vec<RejectedPath>,
}

/// A candidate left out of a [`KernelChoice`], and why.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RejectedPath {
    pub path: String,
    pub reason: String,
}

/// One candidate's median time in a [`KernelChoice`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PathTime {
    pub path: String,
    pub ms: f64,
}

/// The fused relation map of SPEC §4.1: `f: [B, N, C]` (N = h·w) → `p: [B, N, n, n]`.
/// Requires `h ≥ n` and `w ≥ n` (the configuration guarantees it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct RelationShape {
    pub b: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub n: usize,
}

impl RelationShape {
    pub fn pixels(&self) -> usize {
        self.h * self.w
    }
    pub fn bins(&self) -> usize {
        self.n * self.n
    }
}

/// BatchNorm over `rows` samples of `c` channels (BatchNorm2d: rows = B·H·W; BatchNorm1d: rows = B).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NormShape {
    pub rows: usize,
    pub c: usize,
    pub eps: f32,
    pub momentum: f32,
    /// Batch statistics (and running-stat update) when true; running statistics when false.
    pub train: bool,
}

/// The tensors of one BatchNorm application `y = relu?(γ·(x−μ)·rstd + β + residual?)`.
#[derive(Clone, Copy, Debug)]
pub struct BatchNormTensors {
    pub x: Tensor,
    pub gamma: Tensor,
    pub beta: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    /// `[C]`: the mean and 1/sqrt(var+eps) that normalised `x` (batch or running), kept for backward.
    pub save_mean: Tensor,
    pub save_rstd: Tensor,
    pub residual: Option<Tensor>,
    pub relu: bool,
    pub y: Tensor,
}

/// Gradients produced by a BatchNorm backward (all `+=`).
#[derive(Clone, Copy, Debug)]
pub struct BatchNormGrads {
    pub dy: Tensor,
    pub dx: Option<Tensor>,
    pub dgamma: Option<Tensor>,
    pub dbeta: Option<Tensor>,
    pub dresidual: Option<Tensor>,
}

/// Adam hyper-parameters for one step (PyTorch semantics, no weight decay).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamArgs {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// 1-based step count after this update (bias corrections use it).
    pub step: u64,
}

/// A point in a backend's queue of work, for timing ([`Backend::timer_mark`]).
pub enum Marker {
    /// The host clock, read after the queue drained (backends without device timers).
    Host(std::time::Instant),
    /// A device timestamp owned by the backend that made it (on CUDA, a recorded event).
    Device(Box<dyn std::any::Any + Send + Sync>),
}

impl std::fmt::Debug for Marker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Marker::Host(t) => write!(f, "Marker::Host({t:?})"),
            Marker::Device(_) => f.write_str("Marker::Device(..)"),
        }
    }
}

/// Everything the network needs, on one device.
pub trait Backend: Send + Sync {
    /// Human-readable device description.
    fn name(&self) -> String;
    /// Allocate a zero-filled buffer of `len` f32 elements.
    fn alloc(&mut self, len: usize) -> Result<BufId>;
    /// Bytes of device memory currently allocated by this backend (buffers and workspaces).
    fn allocated_bytes(&self) -> usize;
    fn upload(&self, dst: Tensor, src: &[f32]) -> Result<()>;
    fn download(&self, src: Tensor, dst: &mut [f32]) -> Result<()>;
    /// Upload `dst.len` values that `fill` writes into a host staging area: on a GPU, page-
    /// locked memory (the copy runs at full DMA speed, with no extra host copy); on the CPU,
    /// the destination itself. It returns once `fill` has run; on a GPU the copy may still be
    /// in flight, ordered after the work already enqueued and before any enqueued later.
    fn upload_with(&self, dst: Tensor, fill: &mut dyn FnMut(&mut [f32])) -> Result<()> {
        let mut v = vec![0.0; dst.len];
        fill(&mut v);
        self.upload(dst, &v)
    }
    /// Wait until every enqueued operation has finished.
    fn synchronize(&self) -> Result<()>;
    /// Start / stop collection by an attached profiler (`nsys --capture-range=cudaProfilerApi`,
    /// `ncu --profile-from-start off`). No-ops where there is nothing to profile.
    fn profiler_start(&self) -> Result<()> {
        Ok(())
    }
    fn profiler_stop(&self) -> Result<()> {
        Ok(())
    }
    /// The kernels chosen by measurement so far, oldest first (the CUDA backend's convolution
    /// paths and relation versions; empty elsewhere).
    fn kernel_choices(&self) -> Vec<KernelChoice> {
        Vec::new()
    }
    /// The kernel choices made by measurement, as JSON that [`Backend::restore_kernel_choices`]
    /// takes back (None where nothing was measured): a resumed training run then runs the same
    /// kernels, and computes the same bits, as the run it continues.
    fn saved_kernel_choices(&self) -> Option<String> {
        None
    }
    /// Take back choices saved by [`Backend::saved_kernel_choices`], before the calls they are
    /// for; a choice this device cannot run falls back to the fixed rule. Nothing to do where
    /// nothing is measured.
    fn restore_kernel_choices(&self, _json: &str) -> Result<()> {
        Ok(())
    }
    /// Whether [`Backend::graph_begin`] works here (CUDA graphs).
    fn supports_graphs(&self) -> bool {
        false
    }
    /// Start recording the operations enqueued from now on into a replayable graph instead of
    /// running them. Nothing recorded may allocate, upload, download or synchronise.
    fn graph_begin(&self) -> Result<()> {
        Err(crate::error::Error::Config(format!(
            "{} cannot record graphs",
            self.name()
        )))
    }
    /// Stop recording; returns the graph's id for [`Backend::graph_launch`].
    fn graph_end(&self) -> Result<usize> {
        Err(crate::error::Error::Config(format!(
            "{} cannot record graphs",
            self.name()
        )))
    }
    /// Enqueue a recorded graph: the same operations on the same buffers' current contents.
    fn graph_launch(&self, id: usize) -> Result<()> {
        Err(crate::error::Error::Config(format!(
            "{} cannot replay graph {id}",
            self.name()
        )))
    }
    /// True when buffers live in host memory (the CPU backend).
    fn is_host(&self) -> bool {
        false
    }
    /// The precision GEMMs and the relation map run in (see [`Precision`]).
    fn precision(&self) -> Precision {
        Precision::Fp32
    }
    /// Switch the precision of every later operation. Backends without tensor cores refuse
    /// anything but `Fp32` with an error that names the request.
    fn set_precision(&self, p: Precision) -> Result<()> {
        if p == Precision::Fp32 {
            Ok(())
        } else {
            Err(crate::error::Error::Config(format!(
                "precision `{p}` needs a CUDA device; {} computes in fp32 only",
                self.name()
            )))
        }
    }

    /// Mark the current point of the queue of work, for [`Backend::timer_elapsed_ms`].
    /// Device backends record a timestamp in the queue without waiting; the default waits for
    /// the queue to drain and reads the host clock.
    fn timer_mark(&self) -> Result<Marker> {
        self.synchronize()?;
        Ok(Marker::Host(std::time::Instant::now()))
    }
    /// Milliseconds of work between two markers of this backend (waits for `b` to be reached).
    fn timer_elapsed_ms(&self, a: &Marker, b: &Marker) -> Result<f64> {
        match (a, b) {
            (Marker::Host(a), Marker::Host(b)) => {
                Ok(b.saturating_duration_since(*a).as_secs_f64() * 1e3)
            }
            _ => Err(crate::error::Error::Other(format!(
                "timer markers {a:?} and {b:?} were not made by {}",
                self.name()
            ))),
        }
    }
    /// The model entered stage `Some(name)` (`fwd.backbone`, …) or left it (`None`). Only
    /// bookkeeping backends (the cost model, [`count::CountBackend`]) act on it.
    fn stage_hint(&self, _stage: Option<&'static str>) {}

    // ---- elementwise -------------------------------------------------------------------
    fn fill(&self, t: Tensor, value: f32) -> Result<()>;
    fn copy(&self, src: Tensor, dst: Tensor) -> Result<()>;
    /// `dst += src`.
    fn add_inplace(&self, dst: Tensor, src: Tensor) -> Result<()>;
    fn relu_inplace(&self, x: Tensor) -> Result<()>;
    /// `dy *= (y > 0)`: turns the gradient of a ReLU output into that of its input.
    fn relu_backward_inplace(&self, y: Tensor, dy: Tensor) -> Result<()>;
    /// `y[r, c] = relu?(y[r, c] + bias[c] + residual?[r, c])` over `y: [rows, c]`: the epilogue
    /// of a convolution whose BatchNorm was folded into its weights (inference only).
    #[allow(clippy::too_many_arguments)]
    fn bias_act_inplace(
        &self,
        rows: usize,
        c: usize,
        y: Tensor,
        bias: Tensor,
        residual: Option<Tensor>,
        relu: bool,
    ) -> Result<()>;
    fn sigmoid(&self, x: Tensor, y: Tensor) -> Result<()>;
    /// `dx += dy · y · (1 − y)` with `y = sigmoid(x)`.
    fn sigmoid_backward(&self, y: Tensor, dy: Tensor, dx: Tensor) -> Result<()>;

    // ---- convolution and linear layers ---------------------------------------------------
    /// `y[b,oy,ox,co] = Σ w[co,ky,kx,ci] · x[b, oy·s+ky−p, ox·s+kx−p, ci] (+ bias[co])`.
    fn conv2d(
        &self,
        s: &ConvShape,
        x: Tensor,
        w: Tensor,
        bias: Option<Tensor>,
        y: Tensor,
    ) -> Result<()>;
    /// `y = relu?(conv2d(x, w) + bias + residual?)`: a convolution and its epilogue (a unit
    /// whose BatchNorm was folded in, in inference plans; the relation convolutions' bias and
    /// ReLU). Backends may fuse the epilogue into the convolution; by default it is a separate
    /// pass.
    #[allow(clippy::too_many_arguments)]
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
        self.conv2d(s, x, w, None, y)?;
        self.bias_act_inplace(s.b * s.ho * s.wo, s.cout, y, bias, residual, relu)
    }
    #[allow(clippy::too_many_arguments)]
    fn conv2d_backward(
        &self,
        s: &ConvShape,
        x: Tensor,
        w: Tensor,
        dy: Tensor,
        dx: Option<Tensor>,
        dw: Option<Tensor>,
        dbias: Option<Tensor>,
    ) -> Result<()>;
    /// `y[m, n] = Σ_k x[m, k] · w[n, k] (+ bias[n])`.
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &self,
        m: usize,
        k: usize,
        n: usize,
        x: Tensor,
        w: Tensor,
        bias: Option<Tensor>,
        y: Tensor,
    ) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<()>;

    // ---- normalisation -------------------------------------------------------------------
    fn batchnorm(&self, s: &NormShape, t: &BatchNormTensors) -> Result<()>;
    fn batchnorm_backward(
        &self,
        s: &NormShape,
        t: &BatchNormTensors,
        g: &BatchNormGrads,
    ) -> Result<()>;

    // ---- resampling (SPEC §6) --------------------------------------------------------------
    /// Nearest resize; with `accumulate`, `y += resize(x)` (the fuse layers' sums).
    fn resize_nearest(&self, s: &ResizeShape, x: Tensor, y: Tensor, accumulate: bool)
        -> Result<()>;
    fn resize_nearest_backward(&self, s: &ResizeShape, dy: Tensor, dx: Tensor) -> Result<()>;
    /// An HRNet fuse output in one pass: `y = relu(t_0 + t_1 + …)` over `y: [b, ho, wo, c]`,
    /// each `t_j` its term resized (nearest) to `ho × wo`, summed left to right in f32 with the
    /// first term copied, and the ReLU of `relu_inplace`. Bit for bit what a copy (or resize),
    /// one `add_inplace` (or accumulating resize) per further term and `relu_inplace` give,
    /// in one read of each term and one write of `y` instead of a read-modify-write of `y` per
    /// term. 1 to [`MAX_SUM_TERMS`] terms (checked by [`check_sum_terms`]); none aliases `y`.
    fn fuse_sum_relu(&self, s: &SumShape, terms: &[SumTerm], y: Tensor) -> Result<()>;
    /// Bilinear resize (align_corners = False) of `x: [b, hi, wi, c]` into channels
    /// `[offset, offset + c)` of `y: [b, ho, wo, y_c]`, the other channels left as they are:
    /// the feature aggregation's upsampling and concatenation in one pass (checked by
    /// [`check_channel_slice`]).
    fn resize_bilinear_into(
        &self,
        s: &ResizeShape,
        x: Tensor,
        y: Tensor,
        y_c: usize,
        offset: usize,
    ) -> Result<()>;
    /// Backward of [`Backend::resize_bilinear_into`]: `dx +=` the resize's adjoint applied to
    /// channels `[offset, offset + c)` of `dy: [b, ho, wo, dy_c]`.
    fn resize_bilinear_into_backward(
        &self,
        s: &ResizeShape,
        dy: Tensor,
        dy_c: usize,
        offset: usize,
        dx: Tensor,
    ) -> Result<()>;
    /// Bilinear resize `x: [b, hi, wi, c] → y: [b, ho, wo, c]`.
    fn resize_bilinear(&self, s: &ResizeShape, x: Tensor, y: Tensor) -> Result<()> {
        self.resize_bilinear_into(s, x, y, s.c, 0)
    }
    fn resize_bilinear_backward(&self, s: &ResizeShape, dy: Tensor, dx: Tensor) -> Result<()> {
        self.resize_bilinear_into_backward(s, dy, s.c, 0, dx)
    }
    /// Adaptive average pooling `[B, hi, wi, C] → [B, ho, wo, C]` (bins may overlap).
    fn adaptive_avg_pool(&self, s: &ResizeShape, x: Tensor, y: Tensor) -> Result<()>;
    fn adaptive_avg_pool_backward(&self, s: &ResizeShape, dy: Tensor, dx: Tensor) -> Result<()>;

    // ---- channel concatenation -------------------------------------------------------------
    /// `dst[r, offset + c] = src[r, c]` for `src: [rows, src_c]`, `dst: [rows, dst_c]`.
    fn concat_channels(
        &self,
        rows: usize,
        src: Tensor,
        src_c: usize,
        dst: Tensor,
        dst_c: usize,
        offset: usize,
    ) -> Result<()>;
    /// `d_src[r, c] += d_dst[r, offset + c]`.
    #[allow(clippy::too_many_arguments)]
    fn concat_channels_backward(
        &self,
        rows: usize,
        d_dst: Tensor,
        dst_c: usize,
        offset: usize,
        d_src: Tensor,
        src_c: usize,
    ) -> Result<()>;

    // ---- PRRNet-specific -------------------------------------------------------------------
    /// SPEC §4.1 steps 1–3, fused: `f: [B,N,C]` → `norms: [B,N]` (‖f_i‖), `lsum: [B,N]`
    /// (`l_i = Σ_j exp(s_ij − 1)`), `p: [B,N,n,n]`. Never materialises N×N for the batch.
    fn relation(
        &self,
        s: &RelationShape,
        f: Tensor,
        norms: Tensor,
        lsum: Tensor,
        p: Tensor,
    ) -> Result<()>;
    /// Backward of [`Backend::relation`]: `df += ∂L/∂f` given `dp = ∂L/∂p`.
    #[allow(clippy::too_many_arguments)]
    fn relation_backward(
        &self,
        s: &RelationShape,
        f: Tensor,
        norms: Tensor,
        lsum: Tensor,
        p: Tensor,
        dp: Tensor,
        df: Tensor,
    ) -> Result<()>;
    /// SPEC §4.2: `f: [B,N,C]`, `m: [B,N]` → `out: [2B, C]`, rows `0..B` = F_man, `B..2B` = F_ori.
    fn attention_pool(
        &self,
        b: usize,
        n: usize,
        c: usize,
        f: Tensor,
        m: Tensor,
        out: Tensor,
    ) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<()>;
    /// SPEC §5: `ab: [2B, d]` (rows `0..B` = a, `B..2B` = b) → `z: [B, 3G]` = [cos, euc, inn].
    fn region_metrics(
        &self,
        b: usize,
        d: usize,
        groups: usize,
        ab: Tensor,
        z: Tensor,
    ) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
    fn region_metrics_backward(
        &self,
        b: usize,
        d: usize,
        groups: usize,
        ab: Tensor,
        dz: Tensor,
        dab: Tensor,
    ) -> Result<()>;

    // ---- losses and optimiser ------------------------------------------------------------
    /// `loss[0] = scale · Σ_r weight[r] · Σ_c BCE_with_logits(x[r,c], target[r,c])`.
    #[allow(clippy::too_many_arguments)]
    fn bce_with_logits(
        &self,
        rows: usize,
        cols: usize,
        x: Tensor,
        target: Tensor,
        weight: Tensor,
        scale: f32,
        loss: Tensor,
    ) -> Result<()>;
    /// `dx[r,c] += scale · weight[r] · (sigmoid(x[r,c]) − target[r,c])`.
    #[allow(clippy::too_many_arguments)]
    fn bce_with_logits_backward(
        &self,
        rows: usize,
        cols: usize,
        x: Tensor,
        target: Tensor,
        weight: Tensor,
        scale: f32,
        dx: Tensor,
    ) -> Result<()>;
    /// One Adam update of `param` from `grad`, with moment buffers `m`, `v` (same length).
    fn adam(&self, param: Tensor, grad: Tensor, m: Tensor, v: Tensor, a: &AdamArgs) -> Result<()>;
}

// ---- index rules shared by every backend (SPEC §6) ----------------------------------------

/// The source index of output `dst` for nearest resizing `input → output` (PyTorch's rule).
pub fn nearest_src(dst: usize, input: usize, output: usize) -> usize {
    if input == output {
        dst
    } else if output == 2 * input {
        dst >> 1
    } else {
        let scale = input as f32 / output as f32;
        ((dst as f32 * scale).floor() as usize).min(input - 1)
    }
}

/// Bilinear (align_corners = False) source taps for output `dst`: `(x0, x1, w0, w1)`.
pub fn bilinear_taps(dst: usize, input: usize, output: usize) -> (usize, usize, f32, f32) {
    let scale = input as f32 / output as f32;
    let src = ((dst as f32 + 0.5) * scale - 0.5).max(0.0);
    let x0 = (src as usize).min(input - 1);
    let x1 = (x0 + 1).min(input - 1);
    let frac = src - x0 as f32;
    (x0, x1, 1.0 - frac, frac)
}

/// Adaptive average pooling bin `u` of `n` along a side of length `len`: `[start, end)`.
pub fn adaptive_bin(u: usize, len: usize, n: usize) -> (usize, usize) {
    let start = (u * len) / n;
    let end = ((u + 1) * len).div_ceil(n);
    (start, end)
}

/// The device a user asked for (`--device auto|cpu|cuda|cuda:N`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceRequest {
    Auto,
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceRequest {
    type Err = crate::error::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(DeviceRequest::Auto),
            "cpu" => Ok(DeviceRequest::Cpu),
            "cuda" | "gpu" => Ok(DeviceRequest::Cuda(0)),
            _ => match s.strip_prefix("cuda:") {
                Some(i) => i.parse().map(DeviceRequest::Cuda).map_err(|_| {
                    crate::error::Error::Config(format!("bad device `{s}`: expected cuda:N"))
                }),
                None => Err(crate::error::Error::Config(format!(
                    "unknown device `{s}`: expected auto, cpu, cuda or cuda:N"
                ))),
            },
        }
    }
}

/// Open the requested device. `Auto` picks the first GPU when one is usable, else the CPU.
pub fn open(req: DeviceRequest) -> Result<Box<dyn Backend>> {
    match req {
        DeviceRequest::Cpu => Ok(Box::new(cpu::CpuBackend::new())),
        DeviceRequest::Cuda(i) => cuda::open(i),
        DeviceRequest::Auto => match cuda::open(0) {
            Ok(b) => Ok(b),
            Err(_) => Ok(Box::new(cpu::CpuBackend::new())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::ConvShape;

    #[test]
    fn the_transposed_convolution_maps_the_output_back_to_the_input() {
        let s = ConvShape::new(2, 17, 13, 30, 60, 3, 1, 0);
        let t = s.transposed().unwrap();
        assert_eq!((t.h, t.w, t.cin, t.cout, t.pad), (15, 11, 60, 30, 2));
        assert_eq!((t.ho, t.wo), (s.h, s.w));
        assert!(ConvShape::new(2, 17, 13, 30, 60, 3, 2, 1)
            .transposed()
            .is_none());
        let p = ConvShape::new(2, 17, 13, 30, 60, 1, 1, 0)
            .transposed()
            .unwrap();
        assert_eq!(
            (p.h, p.w, p.cin, p.cout, p.k, p.pad),
            (17, 13, 60, 30, 1, 0)
        );
        assert_eq!((p.ho, p.wo), (17, 13));
    }
}
