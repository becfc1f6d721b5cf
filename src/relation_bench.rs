//! `prrnet bench-relation`: the fused relation kernels (SPEC §4.1) timed version by version on
//! random non-zero inputs, with the same JSON fields as `reference/bench_relation.py` (PyTorch's
//! straightforward normalise → bmm → softmax → adaptive pooling).
//!
//! Per version and pass (`forward`, and with `--backward` also `backward` and
//! `forward_backward`) it reports the median / min / max milliseconds of `iters` timed calls
//! after `warmup` untimed ones (CUDA events on the backend's stream; the host clock on the CPU),
//! the nominal rate (`relation_flops`: forward `2·N²·C + 2·N²` per image, backward
//! `3·2·N²·C + 8·N²`) in TFLOP/s, the same machine's dense GEMM rate measured in the same run
//! (cuBLAS `GemmEx`, square `--gemm-side`, in the pass's precision: fp32, TF32 or true BF16
//! operands with f32 accumulation) and the percentage of it, the modelled bytes
//! (`relation_bytes`: operand tiles re-read per tile pair plus the compulsory traffic) and the
//! memory the call needs (its tensors and workspace) and the backend holds.

use std::time::Instant;

use clap::Args;
use serde::Serialize;

use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::relation_tc::{
    relation_bytes, relation_executed_share, relation_flops, relation_versions,
    relation_workspace_bytes, RelationVersion,
};
use crate::backend::cuda::CudaBackend;
use crate::backend::{Backend, DeviceRequest, Precision, RelationShape};
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::Tensor;

/// The command line of `prrnet bench-relation`.
#[derive(Args, Clone, Debug)]
pub struct BenchRelationArgs {
    /// cuda | cuda:N | cpu (the CPU reference, fp32 only; use small sizes)
    #[arg(long, default_value = "cuda")]
    pub device: String,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Feature map height (W30 at 299×299: 75).
    #[arg(long, default_value_t = 75)]
    pub h: usize,
    #[arg(long, default_value_t = 75)]
    pub w: usize,
    /// Channels C (W30: 30 + 60 + 120 + 240 = 450).
    #[arg(long, default_value_t = 450)]
    pub c: usize,
    /// Relation bins per side (the configuration's default is 5).
    #[arg(long, default_value_t = 5)]
    pub n: usize,
    /// fp32 | tf32 | bf16 (the simt version always computes in fp32); default: tf32 on a GPU,
    /// fp32 on the CPU (which computes in nothing else)
    #[arg(long)]
    pub precision: Option<String>,
    /// A version (simt, v1, …), `tc` (every tensor-core version of the precision) or `all`
    /// (those, then simt).
    #[arg(long, default_value = "all")]
    pub version: String,
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// One JSON line per measurement.
    #[arg(long)]
    pub json: bool,
    /// Also time the backward alone and forward + backward.
    #[arg(long)]
    pub backward: bool,
    /// Sizes instead of --h/--w/--c: `w30` (75x75x450, 38x38x450, 19x19x450) or a
    /// comma-separated list of HxWxC.
    #[arg(long)]
    pub sizes: Option<String>,
    /// Side of the square cuBLAS GEMMs that measure the dense rate (0: skip).
    #[arg(long, default_value_t = 8192)]
    pub gemm_side: usize,
}

/// One measurement (one JSON line).
#[derive(Clone, Debug, Serialize)]
pub struct RelationBenchRecord {
    #[serde(rename = "impl")]
    pub implementation: String,
    /// Always `relation`.
    pub kind: String,
    pub device: String,
    pub version: String,
    pub precision: String,
    /// forward | backward | forward_backward
    pub pass: String,
    pub batch: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub n: usize,
    pub iters: usize,
    pub ms_median: f64,
    pub ms_min: f64,
    pub ms_max: f64,
    /// Nominal floating-point operations of one call (`relation_flops`).
    pub flops: f64,
    /// flops / median time, 10¹² per second.
    pub tflops: f64,
    /// The device's dense GEMM rate in the same precision, measured in this run.
    pub gemm_tflops: Option<f64>,
    /// 100 · tflops / gemm_tflops.
    pub pct_of_gemm: Option<f64>,
    /// The floating-point operations a CUDA version executes (`flops` times
    /// `relation_executed_share`: fused backwards, the symmetric forward's half of the tiles;
    /// none for the CPU reference).
    pub executed_flops: Option<f64>,
    /// executed_flops / median time, 10¹² per second: what the hardware ran.
    pub executed_tflops: Option<f64>,
    /// Modelled bytes between L2/DRAM and the SMs per call (`relation_bytes`; none on the CPU).
    pub bytes_model: Option<f64>,
    /// bytes_model / median time, 10⁹ bytes per second.
    pub gbps_model: Option<f64>,
    /// Device memory the call needs: its tensors and its workspace.
    pub peak_mem_bytes: u64,
    /// Device memory the backend holds at the end of the measurement (all buffers, workspace).
    pub device_mem_bytes: u64,
}

/// Parse `--sizes`: `w30` or `HxWxC,...`; without it the single size of --h/--w/--c.
pub fn parse_sizes(a: &BenchRelationArgs) -> Result<Vec<(usize, usize, usize)>> {
    let Some(list) = a.sizes.as_deref() else {
        return Ok(vec![(a.h, a.w, a.c)]);
    };
    if list.eq_ignore_ascii_case("w30") {
        return Ok(vec![(75, 75, 450), (38, 38, 450), (19, 19, 450)]);
    }
    list.split(',')
        .map(|item| {
            let v: Vec<usize> = item
                .trim()
                .split('x')
                .map(|x| x.parse::<usize>())
                .collect::<std::result::Result<_, _>>()
                .map_err(|_| Error::Config(format!("bad size `{item}`: expected HxWxC")))?;
            match v[..] {
                [h, w, c] if h > 0 && w > 0 && c > 0 => Ok((h, w, c)),
                _ => Err(Error::Config(format!("bad size `{item}`: expected HxWxC"))),
            }
        })
        .collect()
}

/// (median, min, max) of the timings (also `prrnet bench-conv`'s).
pub(crate) fn stats(mut ms: Vec<f64>) -> (f64, f64, f64) {
    ms.sort_by(f64::total_cmp);
    (ms[ms.len() / 2], ms[0], ms[ms.len() - 1])
}

/// Time `f` (which enqueues work) `iters` times after `warmup` untimed calls: CUDA events on a
/// GPU, the host clock (with a synchronisation) on the CPU. Also `prrnet bench-conv`'s.
pub(crate) fn time(
    be: &dyn Backend,
    warmup: usize,
    iters: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<Vec<f64>> {
    for _ in 0..warmup {
        f()?;
    }
    be.synchronize()?;
    let mut ms = Vec::with_capacity(iters.max(1));
    for _ in 0..iters.max(1) {
        if be.is_host() {
            let t = Instant::now();
            f()?;
            be.synchronize()?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        } else {
            let a = be.timer_mark()?;
            f()?;
            let b = be.timer_mark()?;
            ms.push(be.timer_elapsed_ms(&a, &b)?);
        }
    }
    Ok(ms)
}

/// The tensors of one size.
struct Tensors {
    f: Tensor,
    norms: Tensor,
    lsum: Tensor,
    p: Tensor,
    dp: Tensor,
    df: Tensor,
}

fn tensors(be: &mut dyn Backend, s: &RelationShape, seed: u64) -> Result<Tensors> {
    let (rows, nb) = (s.b * s.pixels(), s.bins());
    let mut rng = Rng::new(seed);
    fn put(be: &mut dyn Backend, data: Vec<f32>) -> Result<Tensor> {
        let t = Tensor::new(be.alloc(data.len())?, 0, data.len());
        be.upload(t, &data)?;
        Ok(t)
    }
    fn zeros(be: &mut dyn Backend, len: usize) -> Result<Tensor> {
        Ok(Tensor::new(be.alloc(len)?, 0, len))
    }
    // Post-ReLU-like features (non-negative, non-zero) and a normal upstream gradient.
    let f = put(be, rng.vec(rows * s.c, |r| r.range(0.02, 1.0)))?;
    let dp = put(be, rng.vec(rows * nb, |r| r.normal()))?;
    Ok(Tensors {
        f,
        dp,
        norms: zeros(be, rows)?,
        lsum: zeros(be, rows)?,
        p: zeros(be, rows * nb)?,
        df: zeros(be, rows * s.c)?,
    })
}

/// What one version runs: a named CUDA version, or the CPU reference.
#[derive(Clone, Copy, Debug)]
enum Runner {
    Cuda(RelationVersion, Precision),
    Cpu,
}

impl Runner {
    fn name(self) -> String {
        match self {
            Runner::Cuda(v, _) => v.name().to_string(),
            Runner::Cpu => "cpu".to_string(),
        }
    }
    fn precision(self) -> Precision {
        match self {
            Runner::Cuda(_, p) => p,
            Runner::Cpu => Precision::Fp32,
        }
    }
}

enum Device {
    Cuda(Box<CudaBackend>),
    Cpu(CpuBackend),
}

impl Device {
    fn backend(&self) -> &dyn Backend {
        match self {
            Device::Cuda(b) => b.as_ref(),
            Device::Cpu(b) => b,
        }
    }
    fn backend_mut(&mut self) -> &mut dyn Backend {
        match self {
            Device::Cuda(b) => b.as_mut(),
            Device::Cpu(b) => b,
        }
    }
    fn forward(&self, r: Runner, s: &RelationShape, t: &Tensors) -> Result<()> {
        match (self, r) {
            (Device::Cuda(be), Runner::Cuda(v, p)) => {
                be.relation_forward_version(v, p, s, t.f, t.norms, t.lsum, t.p)
            }
            (d, _) => d.backend().relation(s, t.f, t.norms, t.lsum, t.p),
        }
    }
    fn backward(&self, r: Runner, s: &RelationShape, t: &Tensors) -> Result<()> {
        match (self, r) {
            (Device::Cuda(be), Runner::Cuda(v, p)) => {
                be.relation_backward_version(v, p, s, t.f, t.norms, t.lsum, t.p, t.dp, t.df)
            }
            (d, _) => d
                .backend()
                .relation_backward(s, t.f, t.norms, t.lsum, t.p, t.dp, t.df),
        }
    }
}

/// The versions `--version` names at `--precision` (simt runs in fp32).
fn runners(a: &BenchRelationArgs, prec: Precision, cpu: bool) -> Result<Vec<Runner>> {
    if cpu {
        if prec != Precision::Fp32 {
            return Err(Error::Config(format!(
                "bench-relation on the CPU computes in fp32 only, not {prec}"
            )));
        }
        if a.version != "all" && a.version != "cpu" {
            return Err(Error::Config(format!(
                "bench-relation on the CPU has only the `cpu` version, not `{}`",
                a.version
            )));
        }
        return Ok(vec![Runner::Cpu]);
    }
    let with_prec = |v: RelationVersion| {
        if v.supports(prec) {
            Runner::Cuda(v, prec)
        } else {
            Runner::Cuda(v, Precision::Fp32)
        }
    };
    if a.version == "all" || a.version == "tc" {
        // The tensor-core versions first and the exact-f32 simt baseline last: at W30 size simt
        // takes seconds per call, and a run cut short should still have the fast numbers.
        let mut out: Vec<Runner> = relation_versions()
            .iter()
            .filter(|v| **v != RelationVersion::Simt && v.supports(prec))
            .map(|&v| Runner::Cuda(v, prec))
            .collect();
        if a.version == "all" {
            out.push(Runner::Cuda(RelationVersion::Simt, Precision::Fp32));
        }
        return Ok(out);
    }
    let v: RelationVersion = a.version.parse()?;
    if !v.supports(prec) && v != RelationVersion::Simt {
        return Err(Error::Config(format!(
            "relation version {v} does not compute in {prec}"
        )));
    }
    Ok(vec![with_prec(v)])
}

/// Run the benchmark; `emit` receives every record as soon as it is measured.
pub fn run(a: &BenchRelationArgs, mut emit: impl FnMut(&RelationBenchRecord)) -> Result<()> {
    let sizes = parse_sizes(a)?;
    if a.n == 0 || a.batch == 0 {
        return Err(Error::Config(
            "bench-relation: --n and --batch must be positive".into(),
        ));
    }
    let mut dev = match a.device.parse::<DeviceRequest>()? {
        DeviceRequest::Cpu => Device::Cpu(CpuBackend::new()),
        DeviceRequest::Cuda(i) => Device::Cuda(Box::new(crate::backend::cuda::open_cuda(i)?)),
        DeviceRequest::Auto => match crate::backend::cuda::open_cuda(0) {
            Ok(b) => Device::Cuda(Box::new(b)),
            Err(_) => Device::Cpu(CpuBackend::new()),
        },
    };
    let cpu = matches!(dev, Device::Cpu(_));
    let prec: Precision = match &a.precision {
        Some(p) => p.parse()?,
        None if cpu => Precision::Fp32,
        None => Precision::Tf32,
    };
    let list = runners(a, prec, cpu)?;
    // The dense GEMM rates of this device, per precision.
    let gemm: Option<[f64; 3]> = match &dev {
        Device::Cuda(be) if a.gemm_side > 0 => {
            let o = crate::backend::cuda::peak::PeakOptions {
                gemm_side: a.gemm_side,
                copy_bytes: 256 << 20,
                warmup: 2,
                iters: 5,
            };
            let pk = crate::backend::cuda::peak::measure(be, &o)?;
            Some([pk.fp32_tflops, pk.tf32_tflops, pk.bf16_tflops])
        }
        _ => None,
    };
    let device = dev.backend().name();
    for (k, &(h, w, c)) in sizes.iter().enumerate() {
        let s = RelationShape {
            b: a.batch,
            h,
            w,
            c,
            n: a.n,
        };
        if h < a.n || w < a.n {
            return Err(Error::Config(format!(
                "bench-relation: a {h}x{w} map is smaller than n = {}",
                a.n
            )));
        }
        let t = tensors(dev.backend_mut(), &s, 42 + k as u64)?;
        let (rows, nb) = (s.b * s.pixels(), s.bins());
        for &r in &list {
            if let (Device::Cuda(be), Runner::Cuda(v, p)) = (&dev, r) {
                if let Err(e) = be.relation_version_check(v, p, &s, a.backward) {
                    eprintln!("bench-relation: skipping {v} {p} at {h}x{w}x{c}: {e}");
                    continue;
                }
            }
            let mut passes = vec!["forward"];
            if a.backward {
                passes.extend(["backward", "forward_backward"]);
            }
            for pass in passes {
                let be = dev.backend();
                let ms = match pass {
                    "forward" => time(be, a.warmup, a.iters, || dev.forward(r, &s, &t))?,
                    "backward" => {
                        dev.forward(r, &s, &t)?;
                        time(be, a.warmup, a.iters, || dev.backward(r, &s, &t))?
                    }
                    _ => time(be, a.warmup, a.iters, || {
                        dev.forward(r, &s, &t)?;
                        dev.backward(r, &s, &t)
                    })?,
                };
                let n_it = ms.len();
                let (med, min, max) = stats(ms);
                let (fwd, bwd) = (pass != "backward", pass != "forward");
                let flops = if fwd { relation_flops(&s, false) } else { 0.0 }
                    + if bwd { relation_flops(&s, true) } else { 0.0 };
                let (bytes, ws) = match r {
                    Runner::Cuda(v, p) => {
                        let b = |bw| relation_bytes(v, p, &s, bw);
                        let bytes =
                            if fwd { b(false) } else { 0.0 } + if bwd { b(true) } else { 0.0 };
                        (Some(bytes), relation_workspace_bytes(v, p, &s, bwd))
                    }
                    Runner::Cpu => (None, 0),
                };
                let tensor_floats = rows * (2 + nb + c) + if bwd { rows * (nb + c) } else { 0 };
                let tflops = flops / (med * 1e-3) / 1e12;
                let executed_flops = match r {
                    Runner::Cuda(v, _) => {
                        let part = |bw| relation_flops(&s, bw) * relation_executed_share(v, &s, bw);
                        Some(
                            if fwd { part(false) } else { 0.0 }
                                + if bwd { part(true) } else { 0.0 },
                        )
                    }
                    Runner::Cpu => None,
                };
                let rate = gemm.map(|g| g[r.precision() as usize]);
                emit(&RelationBenchRecord {
                    implementation: "prrnet".into(),
                    kind: "relation".into(),
                    device: device.clone(),
                    version: r.name(),
                    precision: r.precision().to_string(),
                    pass: pass.into(),
                    batch: s.b,
                    h,
                    w,
                    c,
                    n: s.n,
                    iters: n_it,
                    ms_median: med,
                    ms_min: min,
                    ms_max: max,
                    flops,
                    tflops,
                    gemm_tflops: rate,
                    pct_of_gemm: rate.filter(|g| *g > 0.0).map(|g| 100.0 * tflops / g),
                    executed_flops,
                    executed_tflops: executed_flops.map(|f| f / (med * 1e-3) / 1e12),
                    bytes_model: bytes,
                    gbps_model: bytes.map(|b| b / (med * 1e-3) / 1e9),
                    peak_mem_bytes: (tensor_floats * 4 + ws) as u64,
                    device_mem_bytes: be.allocated_bytes() as u64,
                });
            }
        }
    }
    Ok(())
}

/// `prrnet bench-relation`: run and print (JSON lines with `--json`, else a table).
pub fn main(a: &BenchRelationArgs) -> Result<()> {
    run(a, |r| {
        if a.json {
            println!("{}", serde_json::to_string(r).expect("record serialises"));
            return;
        }
        let rate = match (r.gemm_tflops, r.pct_of_gemm) {
            (Some(g), Some(pct)) => format!(" = {pct:.1}% of cuBLAS {} {g:.1}", r.precision),
            _ => String::new(),
        };
        let executed = match (r.executed_flops, r.executed_tflops) {
            (Some(f), Some(t)) if (f - r.flops).abs() > 1e-9 * r.flops => {
                format!(" (executes {t:.2})")
            }
            _ => String::new(),
        };
        let model = match (r.bytes_model, r.gbps_model) {
            (Some(b), Some(g)) => format!(", model {:.2} GB ({g:.0} GB/s)", b / 1e9),
            _ => String::new(),
        };
        println!(
            "{:5} {:4} {:16} {}x{}x{} n{} b{}: {:9.3} ms median ({:.3}–{:.3}), {:7.2} TFLOP/s{rate}{executed}{model}, \
             needs {:.0} MiB, holds {:.0} MiB",
            r.version,
            r.precision,
            r.pass,
            r.h,
            r.w,
            r.c,
            r.n,
            r.batch,
            r.ms_median,
            r.ms_min,
            r.ms_max,
            r.tflops,
            r.peak_mem_bytes as f64 / (1u64 << 20) as f64,
            r.device_mem_bytes as f64 / (1u64 << 20) as f64,
        );
    })
}
