//! Implicit-GEMM convolution forward (kernels/conv_implicit.cu) with the folded-BatchNorm
//! epilogue fused in, and the dispatch of every non-trivial convolution call to one of three
//! paths ([`ConvPath`]): im2col + cuBLAS (`conv.rs`), the implicit-GEMM kernels (here and
//! `conv_wgrad.rs`), the halo-tile kernels (`conv_halo.rs`).
//!
//! - [`ConvAlgo::Auto`] (the default): each (pass, precision, shape) takes the path measured
//!   fastest for it the first time it ran (`tune.rs`); unmeasured ones take the rule of
//!   [`ConvAlgo::Halo`].
//! - [`ConvAlgo::Halo`]: the 3×3 stride-1 shapes whose output fills the halo kernels' 8×16
//!   patches well (`conv_halo.rs`: every precision on the tensor cores, fp32 as 3×TF32) run
//!   there, forward and data gradient; everything else as [`ConvAlgo::Implicit`].
//! - [`ConvAlgo::Implicit`]: every convolution runs on the implicit kernels, 1×1 ones
//!   included: the forward on `conv_implicit_simt` (precision Fp32: exact f32 FMA) or
//!   `conv_implicit_{tf32,bf16}` (WMMA tensor cores, f32 accumulation), which gather the
//!   im2col matrix tile by tile in shared memory instead of writing it to a workspace, and
//!   apply `relu?(acc + bias? + residual?)` before the single store of `y`.
//! - [`ConvAlgo::Im2col`]: the first path (im2col into a workspace, cuBLAS GEMM, then
//!   `bias_add` / `bias_act_inplace` as separate passes), kept as the fallback.
//!
//! Pointwise convolutions (1×1, stride 1, no padding) stay on cuBLAS under the halo rule
//! (and so where [`ConvAlgo::Auto`] measures nothing), except under `conv2d_bias_act`: there
//! the implicit kernel's fused epilogue saves the separate `bias_act_inplace` pass over y (and
//! its residual), which costs more than the GEMM itself at these memory-bound shapes (the
//! inference plan's folded 1×1 convolutions: HRNet's bottlenecks and the fuse layers' upward
//! terms). [`ConvAlgo::Auto`] times cuBLAS against the implicit kernels in every pass (the
//! data gradient as the transposed 1×1 convolution, the weight gradient on conv_wgrad).
//! The algorithm is chosen with [`CudaBackend::set_conv_algo`];
//! `PRRNET_CONV_ALGO=auto|im2col|implicit|halo` sets the initial choice when the backend is
//! created. Backward: off the im2col path, the data gradient of a stride-1 convolution runs on
//! the forward kernels (implicit or halo), that of a strided one on their phase twins
//! (`conv_phase_*`), and the weight gradient on `conv_wgrad.rs` (see [`conv2d_backward`]); the
//! bias gradient stays on `conv.rs`.

use std::sync::atomic::Ordering;

use super::context::{check_len, int, Arg, CudaBackend, Kernel};
use super::kernels::names::conv as kc;
use super::kernels::names::conv_implicit as kci;
use super::tune::{self, Candidate, TuneKey};
use super::{conv, conv_halo, conv_wgrad, elementwise as ew};
use crate::backend::{ConvShape, Precision};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// How non-pointwise convolution forwards run on the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum ConvAlgo {
    /// im2col into a workspace + cuBLAS GEMM (+ a separate epilogue pass).
    Im2col = 0,
    /// Implicit GEMM (kernels/conv_implicit.cu) with the epilogue fused.
    Implicit = 1,
    /// The halo-tile kernels (kernels/conv_halo.cu) where they apply, else implicit GEMM.
    Halo = 2,
    /// Per shape and pass, the path measured fastest (`tune.rs`); the halo rule where nothing
    /// was measured.
    #[default]
    Auto = 3,
}

impl ConvAlgo {
    pub fn name(self) -> &'static str {
        match self {
            ConvAlgo::Im2col => "im2col",
            ConvAlgo::Implicit => "implicit",
            ConvAlgo::Halo => "halo",
            ConvAlgo::Auto => "auto",
        }
    }

    pub(crate) fn from_u8(v: u8) -> ConvAlgo {
        [
            ConvAlgo::Im2col,
            ConvAlgo::Implicit,
            ConvAlgo::Halo,
            ConvAlgo::Auto,
        ]
        .into_iter()
        .find(|a| *a as u8 == v)
        .unwrap_or_default()
    }

    /// The initial algorithm: `PRRNET_CONV_ALGO` when set, else [`ConvAlgo::Auto`].
    pub(crate) fn from_env() -> Result<ConvAlgo> {
        match std::env::var("PRRNET_CONV_ALGO") {
            Ok(v) if !v.trim().is_empty() => v.trim().parse(),
            _ => Ok(ConvAlgo::default()),
        }
    }
}

impl std::str::FromStr for ConvAlgo {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "im2col" => Ok(ConvAlgo::Im2col),
            "implicit" => Ok(ConvAlgo::Implicit),
            "halo" => Ok(ConvAlgo::Halo),
            "auto" => Ok(ConvAlgo::Auto),
            _ => Err(Error::Config(format!(
                "unknown convolution algorithm `{s}` (PRRNET_CONV_ALGO: expected auto, \
                 im2col, implicit or halo)"
            ))),
        }
    }
}

impl std::fmt::Display for ConvAlgo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The concrete way one convolution call runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConvPath {
    /// im2col into a workspace + cuBLAS (conv.rs), the epilogue as a separate pass; 1×1: cuBLAS.
    Im2col,
    /// The implicit-GEMM kernels (here, conv_wgrad.rs).
    Implicit,
    /// The halo-tile kernels (conv_halo.rs).
    Halo,
}

impl ConvPath {
    pub fn name(self) -> &'static str {
        match self {
            ConvPath::Im2col => "im2col",
            ConvPath::Implicit => "implicit",
            ConvPath::Halo => "halo",
        }
    }
}

impl Candidate for ConvPath {
    fn name(self) -> &'static str {
        ConvPath::name(self)
    }

    /// im2col + cuBLAS and the implicit kernels were checked against the CPU on an H100
    /// (2026-11-27); the halo kernels only under cuda-emu so far.
    fn trust(self) -> u8 {
        match self {
            ConvPath::Im2col => 0,
            ConvPath::Implicit => 1,
            ConvPath::Halo => 2,
        }
    }
}

/// Which computation of a convolution a path is chosen for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub(crate) enum ConvPass {
    /// y = relu?(conv(x, w) + bias? + residual?): the epilogue's parts matter to im2col's cost,
    /// and a residual that is y itself (`in_place`) rules im2col out.
    Forward {
        bias: bool,
        residual: bool,
        in_place: bool,
        relu: bool,
    },
    /// dx += ∂L/∂x.
    Data,
    /// dw += ∂L/∂w.
    Weight,
}

impl ConvPass {
    pub(crate) fn name(self) -> &'static str {
        match self {
            ConvPass::Forward { .. } => "forward",
            ConvPass::Data => "backward_data",
            ConvPass::Weight => "backward_weight",
        }
    }

    /// A forward's epilogue: `bias`, `residual` (`residual=y` in place), `relu`, joined by `+`.
    pub(crate) fn epilogue(self) -> String {
        let ConvPass::Forward {
            bias,
            residual,
            in_place,
            relu,
        } = self
        else {
            return String::new();
        };
        [
            (bias, "bias"),
            (residual && !in_place, "residual"),
            (in_place, "residual=y"),
            (relu, "relu"),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| n)
        .collect::<Vec<_>>()
        .join("+")
    }
}

/// A shape as bench-conv and the tuning reports name it: `b64 75x75 30->30 k3 s1 p1`.
pub fn shape_name(s: &ConvShape) -> String {
    format!(
        "b{} {}x{} {}->{} k{} s{} p{}",
        s.b, s.h, s.w, s.cin, s.cout, s.k, s.stride, s.pad
    )
}

impl CudaBackend {
    /// Choose how later non-pointwise convolution forwards run (see [`ConvAlgo`]).
    pub fn set_conv_algo(&self, a: ConvAlgo) {
        self.conv_algo.store(a as u8, Ordering::Relaxed);
    }

    /// The current convolution algorithm.
    pub fn conv_algo(&self) -> ConvAlgo {
        ConvAlgo::from_u8(self.conv_algo.load(Ordering::Relaxed))
    }

    /// Whether the forward of `s` runs on the halo kernels under the current algorithm.
    pub fn conv_uses_halo(&self, s: &ConvShape) -> bool {
        self.conv_algo() == ConvAlgo::Halo && conv_halo::applies(s, self.halo_min_fill())
    }

    /// The least share of the halo kernels' 8×16 output patches that must be real output
    /// pixels for a 3×3 stride-1 convolution to run there (0 to 1; 0.5 by default,
    /// `PRRNET_HALO_MIN_FILL` at creation).
    pub fn set_halo_min_fill(&self, fill: f64) {
        self.halo_min_fill
            .store(fill.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
    }

    /// See [`CudaBackend::set_halo_min_fill`].
    pub fn halo_min_fill(&self) -> f64 {
        f64::from_bits(self.halo_min_fill.load(Ordering::Relaxed))
    }
}

/// Output tile of every implicit kernel (`BM × BN` in kernels/conv_implicit.cu).
const TILE_M: usize = 64;
const TILE_N: usize = 64;
/// Threads per block: simt 256 (4 × 4 outputs each), tc 128 (4 warps of 32 × 32).
const SIMT_THREADS: u32 = 256;
const TC_THREADS: u32 = 128;

/// The widest staging vector (floats) of the tensor-core kernels (here and in `conv_wgrad.rs`):
/// the largest VEC ∈ {4, 2, 1} dividing every count in `channels` with every device address in
/// `ptrs` VEC·4-byte aligned.
pub(crate) fn staging_vec(channels: &[usize], ptrs: &[u64]) -> usize {
    [4usize, 2]
        .into_iter()
        .find(|&v| {
            channels.iter().all(|c| c % v == 0) && ptrs.iter().all(|p| p % (4 * v as u64) == 0)
        })
        .unwrap_or(1)
}

/// The variant of a kernel family for a staging vector of `vec` floats: `[one, two, four]`.
pub(crate) fn by_vec(vec: usize, [v1, v2, v4]: [Kernel; 3]) -> Kernel {
    match vec {
        4 => v4,
        2 => v2,
        _ => v1,
    }
}

/// The kernel and block size for a precision and staging vector: the forward kernels, or
/// (`phase`) their twins for the data gradient of a strided convolution.
fn kernel_for(p: Precision, vec: usize, phase: bool) -> (Kernel, u32) {
    let tc = |family: [Kernel; 3]| (by_vec(vec, family), TC_THREADS);
    match (p, phase) {
        (Precision::Fp32, false) => (kci::CONV_IMPLICIT_SIMT, SIMT_THREADS),
        (Precision::Fp32, true) => (kci::CONV_PHASE_SIMT, SIMT_THREADS),
        (Precision::Tf32, false) => tc([
            kci::CONV_IMPLICIT_TF32,
            kci::CONV_IMPLICIT_TF32_V2,
            kci::CONV_IMPLICIT_TF32_V4,
        ]),
        (Precision::Tf32, true) => tc([
            kci::CONV_PHASE_TF32,
            kci::CONV_PHASE_TF32_V2,
            kci::CONV_PHASE_TF32_V4,
        ]),
        (Precision::Bf16, false) => tc([
            kci::CONV_IMPLICIT_BF16,
            kci::CONV_IMPLICIT_BF16_V2,
            kci::CONV_IMPLICIT_BF16_V4,
        ]),
        (Precision::Bf16, true) => tc([
            kci::CONV_PHASE_BF16,
            kci::CONV_PHASE_BF16_V2,
            kci::CONV_PHASE_BF16_V4,
        ]),
    }
}

/// The implicit-GEMM forward on device addresses `[x, w, bias, residual, y]` (0: absent).
/// `residual` may equal `y` (the kernels read each element before writing it, in the same
/// thread).
fn launch_implicit_ptrs(be: &CudaBackend, s: &ConvShape, ptrs: [u64; 5], relu: bool) -> Result<()> {
    let m = s.b * s.ho * s.wo;
    if m == 0 || s.cout == 0 {
        return Ok(());
    }
    // Every dimension, and the products the kernels form in 32 bits, must fit an int:
    // m, k·k·Cin, B·H (the pixel table's rowb); global offsets are 64-bit in the kernels.
    // Tile origins and chunk counts are formed past the end (m0 + 63, k0 + 31): keep headroom.
    let grid_m = m.div_ceil(TILE_M);
    int("conv output pixels (rounded to the tile)", grid_m * TILE_M)?;
    int("conv k·k·Cin (rounded to the chunk)", s.col_k() + 64)?;
    int("conv B·H", s.b * s.h)?;
    let grid_n = s.cout.div_ceil(TILE_N);
    if grid_n > 65535 {
        return Err(Error::Device(format!(
            "conv {s:?}: grid ({grid_m}, {grid_n}) exceeds the launch limits"
        )));
    }
    let [x, w, bias, residual, y] = ptrs;
    let (kernel, threads) = kernel_for(be.precision_impl(), staging_vec(&[s.cin], &[x, w]), false);
    be.launch(
        kernel,
        (grid_m as u32, grid_n as u32, 1),
        (threads, 1, 1),
        0,
        &[
            Arg::Ptr(x),
            Arg::Ptr(w),
            Arg::Ptr(bias),
            Arg::Ptr(residual),
            Arg::Ptr(y),
        ]
        .into_iter()
        .chain(geometry_args(s)?)
        .chain([Arg::I32(relu as i32)])
        .collect::<Vec<_>>(),
    )
}

/// `dx += ∂L/∂x` of the strided convolution `s` (stride ≥ 2) on the `conv_phase_*` kernels:
/// one launch, `s.stride²` phases in `gridDim.z`, each a stride-1 implicit GEMM over dy with
/// only the taps that reach that phase's pixels (kernels/conv_gather.cuh `PhaseTaps`). The
/// accumulation is the epilogue's residual term (residual = dx). `wf` holds the flipped
/// weights (`conv_flip_weights`, [Cin, k, k, Cout]).
fn launch_phase(be: &CudaBackend, s: &ConvShape, dy: u64, wf: u64, dx: u64) -> Result<()> {
    let phases = s.stride * s.stride;
    // The largest phase (0, 0) has ⌈H/s⌉ × ⌈W/s⌉ pixels per image.
    let m = s.b * s.h.div_ceil(s.stride) * s.w.div_ceil(s.stride);
    if m == 0 || s.cin == 0 {
        return Ok(());
    }
    let grid_m = m.div_ceil(TILE_M);
    int(
        "conv data-gradient pixels (rounded to the tile)",
        grid_m * TILE_M,
    )?;
    int("conv input elements per channel (B·H·W)", s.b * s.h * s.w)?;
    int(
        "conv k·k·Cout (rounded to the chunk)",
        s.k * s.k * s.cout + 64,
    )?;
    int("conv B·Ho", s.b * s.ho)?;
    let grid_n = s.cin.div_ceil(TILE_N);
    if grid_n > 65535 || phases > 65535 {
        return Err(Error::Device(format!(
            "conv {s:?}: data-gradient grid ({grid_m}, {grid_n}, {phases}) exceeds the launch \
             limits"
        )));
    }
    let vec = staging_vec(&[s.cout], &[dy, wf]);
    let (kernel, threads) = kernel_for(be.precision_impl(), vec, true);
    // (batch, h, w, cin) = dy's, (ho, wo, cout) = dx's: see kernels/conv_implicit.cu.
    let geometry = [
        ("batch", s.b),
        ("ho", s.ho),
        ("wo", s.wo),
        ("cout", s.cout),
        ("h", s.h),
        ("w", s.w),
        ("cin", s.cin),
        ("k", s.k),
        ("stride", s.stride),
        ("pad", s.pad),
    ]
    .into_iter()
    .map(|(what, v)| int(what, v).map(Arg::I32))
    .collect::<Result<Vec<_>>>()?;
    be.launch(
        kernel,
        (grid_m as u32, grid_n as u32, phases as u32),
        (threads, 1, 1),
        0,
        &[
            Arg::Ptr(dy),
            Arg::Ptr(wf),
            Arg::Ptr(0),
            Arg::Ptr(dx),
            Arg::Ptr(dx),
        ]
        .into_iter()
        .chain(geometry)
        .chain([Arg::I32(0)])
        .collect::<Vec<_>>(),
    )
}

/// Runs `f` on a workspace holding `w` ([Cout, k, k, Cin]) flipped and transposed to
/// [Cin, k, k, Cout] (`conv_flip_weights`): the weights of the data-gradient convolutions.
fn with_flipped_weights<T>(
    be: &CudaBackend,
    s: &ConvShape,
    w: u64,
    f: impl FnOnce(u64) -> Result<T>,
) -> Result<T> {
    let wlen = s.w_len();
    be.with_workspace(wlen, |wf| {
        be.launch_1d(
            kc::CONV_FLIP_WEIGHTS,
            wlen,
            &[
                Arg::Ptr(w),
                Arg::Ptr(wf),
                Arg::I32(int("cout", s.cout)?),
                Arg::I32(int("k", s.k)?),
                Arg::I32(int("cin", s.cin)?),
                Arg::I64(wlen as i64),
            ],
        )?;
        f(wf)
    })
}

/// The geometry arguments every implicit kernel takes, in order: (mtotal = B·Ho·Wo, h, w, cin,
/// ho, wo, cout, k, stride, pad).
pub(crate) fn geometry_args(s: &ConvShape) -> Result<[Arg; 10]> {
    Ok([
        Arg::I32(int("conv output pixels", s.b * s.ho * s.wo)?),
        Arg::I32(int("h", s.h)?),
        Arg::I32(int("w", s.w)?),
        Arg::I32(int("cin", s.cin)?),
        Arg::I32(int("ho", s.ho)?),
        Arg::I32(int("wo", s.wo)?),
        Arg::I32(int("cout", s.cout)?),
        Arg::I32(int("k", s.k)?),
        Arg::I32(int("stride", s.stride)?),
        Arg::I32(int("pad", s.pad)?),
    ])
}

fn check_shapes(s: &ConvShape, x: Tensor, w: Tensor, y: Tensor) -> Result<()> {
    check_len("conv x", x, s.x_len())?;
    check_len("conv w", w, s.w_len())?;
    check_len("conv y", y, s.y_len())
}

/// Whether the halo rule ([`ConvAlgo::Halo`]) sends `s`, with input at `x`, to the halo kernels.
fn halo_rule(be: &CudaBackend, s: &ConvShape, x: u64) -> bool {
    conv_halo::applies(s, be.halo_min_fill()) && conv_halo::staging(s, x).is_some()
}

/// Whether the halo kernels can run `s` at all (any patch fill), with input at `x`.
fn halo_can(s: &ConvShape, x: u64) -> bool {
    conv_halo::applies(s, 0.0) && conv_halo::staging(s, x).is_some()
}

/// The path of `pass` for `s`: under [`ConvAlgo::Auto`] the measured choice among `paths`
/// (`tune::choose`, which runs them; `output`: what they write; `rule` where
/// nothing is measured), else `rule`. `ptrs`: the operand addresses, whose alignment selects
/// kernel variants.
#[allow(clippy::too_many_arguments)]
fn pick(
    be: &CudaBackend,
    pass: ConvPass,
    s: &ConvShape,
    ptrs: &[u64],
    paths: &[ConvPath],
    rule: ConvPath,
    output: tune::Output,
    run: &dyn Fn(ConvPath) -> Result<()>,
) -> Result<ConvPath> {
    if be.conv_algo() != ConvAlgo::Auto {
        return Ok(rule);
    }
    let key = TuneKey::Conv {
        pass,
        precision: be.precision_impl(),
        shape: *s,
        align: staging_vec(&[], ptrs) as u8,
    };
    tune::choose(be, key, paths, rule, output, run)
}

/// The operands of one forward call (`conv2d`: no residual, no ReLU).
#[derive(Clone, Copy)]
struct Forward {
    x: Tensor,
    w: Tensor,
    bias: Option<Tensor>,
    residual: Option<Tensor>,
    relu: bool,
    y: Tensor,
}

/// `y = relu?(conv(x, w) + bias? + residual?)` on the path the algorithm picks. `fused`: called
/// as `conv2d_bias_act` (whose 1×1 shapes the fixed rules send to the implicit kernel).
fn forward(be: &CudaBackend, s: &ConvShape, f: Forward, fused: bool) -> Result<()> {
    let ptrs = [
        be.ptr(f.x)?,
        be.ptr(f.w)?,
        be.optr(f.bias)?,
        be.optr(f.residual)?,
        be.ptr(f.y)?,
    ];
    let algo = be.conv_algo();
    let rule = match algo {
        ConvAlgo::Im2col => ConvPath::Im2col,
        ConvAlgo::Implicit => ConvPath::Implicit,
        _ if s.is_pointwise() && !fused => ConvPath::Im2col,
        ConvAlgo::Halo | ConvAlgo::Auto if halo_rule(be, s, ptrs[0]) => ConvPath::Halo,
        ConvAlgo::Halo | ConvAlgo::Auto => ConvPath::Implicit,
    };
    // im2col writes y before its epilogue pass adds the residual: not when they alias.
    let in_place = f.residual.is_some() && ptrs[3] == ptrs[4];
    let mut paths = vec![ConvPath::Implicit];
    if !in_place {
        paths.push(ConvPath::Im2col);
    }
    if halo_can(s, ptrs[0]) {
        paths.push(ConvPath::Halo);
    }
    let pass = ConvPass::Forward {
        bias: f.bias.is_some(),
        residual: f.residual.is_some(),
        in_place,
        relu: f.relu,
    };
    let run = |p: ConvPath| run_forward(be, s, p, f, ptrs);
    let path = pick(
        be,
        pass,
        s,
        &ptrs,
        &paths,
        rule,
        tune::Output {
            t: f.y,
            accumulates: in_place,
        },
        &run,
    )?;
    run(path)
}

fn run_forward(
    be: &CudaBackend,
    s: &ConvShape,
    path: ConvPath,
    f: Forward,
    ptrs: [u64; 5],
) -> Result<()> {
    match path {
        ConvPath::Im2col if f.residual.is_none() && !f.relu => {
            conv::conv2d(be, s, f.x, f.w, f.bias, f.y)
        }
        ConvPath::Im2col => {
            let bias = f.bias.ok_or_else(|| {
                Error::Other("conv: a residual or ReLU epilogue without a bias".into())
            })?;
            conv::conv2d(be, s, f.x, f.w, None, f.y)?;
            let rows = s.b * s.ho * s.wo;
            ew::bias_act_inplace(be, rows, s.cout, f.y, bias, f.residual, f.relu)
        }
        ConvPath::Implicit => launch_implicit_ptrs(be, s, ptrs, f.relu),
        ConvPath::Halo => {
            let vec = conv_halo::staging(s, ptrs[0])
                .ok_or_else(|| Error::Other(format!("conv {s:?}: halo path on an unaligned x")))?;
            conv_halo::launch(be, s, ptrs, vec, f.relu, false)
        }
    }
}

/// `Backend::conv2d` on the GPU: the forward with an optional bias on the algorithm's path.
pub(crate) fn conv2d(
    be: &CudaBackend,
    s: &ConvShape,
    x: Tensor,
    w: Tensor,
    bias: Option<Tensor>,
    y: Tensor,
) -> Result<()> {
    check_shapes(s, x, w, y)?;
    if let Some(b) = bias {
        check_len("conv bias", b, s.cout)?;
    }
    let f = Forward {
        x,
        w,
        bias,
        residual: None,
        relu: false,
        y,
    };
    forward(be, s, f, false)
}

/// `Backend::conv2d_bias_act` on the GPU: under the fixed rules one fused kernel for every
/// shape, pointwise ones included (the im2col algorithm: the convolution on `conv.rs`, then
/// `bias_act_inplace`); under [`ConvAlgo::Auto`] the measured path.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv2d_bias_act(
    be: &CudaBackend,
    s: &ConvShape,
    x: Tensor,
    w: Tensor,
    bias: Tensor,
    residual: Option<Tensor>,
    relu: bool,
    y: Tensor,
) -> Result<()> {
    check_shapes(s, x, w, y)?;
    check_len("conv bias", bias, s.cout)?;
    if let Some(r) = residual {
        check_len("conv residual", r, s.y_len())?;
    }
    let f = Forward {
        x,
        w,
        bias: Some(bias),
        residual,
        relu,
        y,
    };
    forward(be, s, f, true)
}

/// `Backend::conv2d_backward` on the GPU. Pointwise shapes, and every shape under the im2col
/// algorithm, run `conv.rs` (im2col + cuBLAS). Otherwise each gradient takes its own path:
/// - the data gradient of a stride-1 convolution is `dx += conv(dy, flip(w)ᵀ, pad k − 1 − p)` on
///   the implicit-GEMM or halo forward kernels (the accumulation is the epilogue's residual
///   term, with residual = y = dx), so the k²-times-larger column gradient of the im2col path
///   is never written; that of a strided convolution is the same sum split by output phase
///   ([`launch_phase`]), again without the column gradient;
/// - the weight gradient is `conv_wgrad.rs` (implicit, split over the pixels; exact f32 on the
///   CUDA cores at Fp32);
/// - under [`ConvAlgo::Auto`] each of them may also take the im2col path, if measured faster,
///   and pointwise shapes measure the implicit kernels against cuBLAS too (their fixed rule:
///   cuBLAS).
///
/// The bias gradient stays on `conv.rs`.
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
    let algo = be.conv_algo();
    let pointwise = s.is_pointwise();
    if algo == ConvAlgo::Im2col || (pointwise && algo == ConvAlgo::Halo) {
        return conv::conv2d_backward(be, s, x, w, dy, dx, dw, dbias);
    }
    check_len("conv x", x, s.x_len())?;
    check_len("conv w", w, s.w_len())?;
    check_len("conv dy", dy, s.y_len())?;
    if let Some(dx) = dx {
        check_len("conv dx", dx, s.x_len())?;
        let ptrs = [be.ptr(dy)?, be.ptr(w)?, be.ptr(dx)?];
        let halo = |allowed: &dyn Fn(&ConvShape, u64) -> bool| {
            s.transposed().is_some_and(|t| allowed(&t, ptrs[0]))
        };
        let rule = match algo {
            ConvAlgo::Auto if pointwise => ConvPath::Im2col,
            ConvAlgo::Halo | ConvAlgo::Auto if halo(&|t, p| halo_rule(be, t, p)) => ConvPath::Halo,
            _ => ConvPath::Implicit,
        };
        let mut paths = vec![ConvPath::Implicit, ConvPath::Im2col];
        if halo(&halo_can) {
            paths.push(ConvPath::Halo);
        }
        let run = |p: ConvPath| run_data(be, s, p, x, w, dy, dx, ptrs);
        let out = tune::Output {
            t: dx,
            accumulates: true,
        };
        let path = pick(be, ConvPass::Data, s, &ptrs, &paths, rule, out, &run)?;
        run(path)?;
    }
    if let Some(dw) = dw {
        check_len("conv dw", dw, s.w_len())?;
        let ptrs = [be.ptr(x)?, be.ptr(dy)?, be.ptr(dw)?];
        let paths = [ConvPath::Implicit, ConvPath::Im2col];
        let run = |p: ConvPath| match p {
            ConvPath::Im2col => conv::conv2d_backward(be, s, x, w, dy, None, Some(dw), None),
            _ => conv_wgrad::conv2d_wgrad(be, s, x, dy, dw),
        };
        let rule = if pointwise && algo == ConvAlgo::Auto {
            ConvPath::Im2col
        } else {
            ConvPath::Implicit
        };
        let out = tune::Output {
            t: dw,
            accumulates: true,
        };
        let path = pick(be, ConvPass::Weight, s, &ptrs, &paths, rule, out, &run)?;
        run(path)?;
    }
    conv::conv2d_backward(be, s, x, w, dy, None, None, dbias)
}

/// `dx += ∂L/∂x` of the convolution `s` on `path`; `ptrs` = [dy, w, dx].
#[allow(clippy::too_many_arguments)]
fn run_data(
    be: &CudaBackend,
    s: &ConvShape,
    path: ConvPath,
    x: Tensor,
    w: Tensor,
    dy: Tensor,
    dx: Tensor,
    [dyp, wp, dxp]: [u64; 3],
) -> Result<()> {
    match (path, s.transposed()) {
        (ConvPath::Im2col, _) => conv::conv2d_backward(be, s, x, w, dy, Some(dx), None, None),
        (ConvPath::Halo, Some(t)) => {
            let vec = conv_halo::staging(&t, dyp)
                .ok_or_else(|| Error::Other(format!("conv {s:?}: halo path on an unaligned dy")))?;
            // The halo kernels pack the flipped, transposed weights themselves.
            conv_halo::launch(be, &t, [dyp, wp, 0, dxp, dxp], vec, false, true)
        }
        (_, Some(t)) => with_flipped_weights(be, s, wp, |wf| {
            launch_implicit_ptrs(be, &t, [dyp, wf, 0, dxp, dxp], false)
        }),
        (_, None) => with_flipped_weights(be, s, wp, |wf| launch_phase(be, s, dyp, wf, dxp)),
    }
}
