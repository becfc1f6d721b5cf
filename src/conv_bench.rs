//! `prrnet bench-conv`: every convolution shape of one network step, timed algorithm by
//! algorithm (im2col + cuBLAS, implicit GEMM, halo tiles, and `auto`, which runs whichever of
//! them it measured fastest for the shape: `backend::cuda::tune`) on the GPU, so the fixed
//! rules of the dispatch (`backend::cuda::conv_implicit`) can be checked shape by shape.
//!
//! The shapes and their call counts come from running one step of the configuration over the
//! counting backend (`bench::conv_uses`). Pointwise convolutions are timed only for the
//! inference plan (without `--backward`), where they run `conv2d_bias_act`: cuBLAS and then
//! `bias_act_inplace` under im2col, the implicit kernel with its fused epilogue otherwise. In a
//! training step they are plain cuBLAS GEMMs under every algorithm and are left out.
//! Per shape, algorithm and pass (`forward`: `conv2d_bias_act` with bias and ReLU; with
//! `--backward` also `backward_data` and `backward_weight`, each gradient alone) it reports the
//! median / min / max milliseconds of `iters` timed calls after `warmup` untimed ones (CUDA
//! events), TFLOP/s (2 per multiply-add) and the calls per step. The halo algorithm is reported
//! only where its kernels take the shape (elsewhere it runs the implicit kernels). Last, one
//! `conv_total` record per algorithm and pass: Σ calls × median over the shapes, where the halo
//! algorithm counts the implicit time for the shapes it leaves to the implicit kernels, so the
//! totals compare.

use clap::Args;
use serde::Serialize;

use crate::backend::cuda::{open_cuda, shape_name, ConvAlgo, CudaBackend};
use crate::backend::{Backend, ConvShape, DeviceRequest, Precision};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::relation_bench::{stats, time};
use crate::rng::Rng;
use crate::tensor::Tensor;

/// The command line of `prrnet bench-conv`.
#[derive(Args, Clone, Debug)]
pub struct BenchConvArgs {
    /// cuda | cuda:N
    #[arg(long, default_value = "cuda")]
    pub device: String,
    #[arg(long, default_value = "w30")]
    pub preset: String,
    /// Input side (default: the preset's).
    #[arg(long)]
    pub size: Option<usize>,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// fp32 | tf32 | bf16
    #[arg(long, default_value = "bf16")]
    pub precision: String,
    /// Comma-separated algorithms: im2col, implicit, halo, auto.
    #[arg(long, default_value = "implicit,halo,im2col,auto")]
    pub algos: String,
    /// Also time the data and weight gradients (the shapes of a training step).
    #[arg(long)]
    pub backward: bool,
    /// The halo algorithm's least patch fill (0: time it on every 3×3 stride-1 shape;
    /// default: the backend's, 0.5 unless PRRNET_HALO_MIN_FILL says otherwise).
    #[arg(long)]
    pub halo_min_fill: Option<f64>,
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// One JSON line per record.
    #[arg(long)]
    pub json: bool,
}

/// One measurement (`kind` "conv") or one algorithm's step total (`kind` "conv_total").
#[derive(Clone, Debug, Serialize)]
pub struct ConvBenchRecord {
    #[serde(rename = "impl")]
    pub implementation: String,
    pub kind: String,
    pub device: String,
    pub preset: String,
    pub size: usize,
    pub precision: String,
    /// "train" (the shapes of a training step, with `--backward`) or "infer" (the inference
    /// plan's).
    pub mode: String,
    pub algo: String,
    pub pass: String,
    /// The shape (absent in totals).
    pub shape: Option<String>,
    pub calls: u32,
    pub ms_median: f64,
    pub ms_min: Option<f64>,
    pub ms_max: Option<f64>,
    pub tflops: Option<f64>,
}

/// Run the benchmark; `emit` receives every record as soon as it is measured.
pub fn run(a: &BenchConvArgs, mut emit: impl FnMut(&ConvBenchRecord)) -> Result<()> {
    let prec: Precision = a.precision.parse()?;
    let algos = a
        .algos
        .split(',')
        .map(|s| s.trim().parse::<ConvAlgo>())
        .collect::<Result<Vec<_>>>()?;
    let ordinal = match a.device.parse::<DeviceRequest>()? {
        DeviceRequest::Cuda(i) => i,
        DeviceRequest::Auto => 0,
        DeviceRequest::Cpu => {
            return Err(Error::Config(
                "bench-conv compares the GPU's convolution algorithms; it has no CPU mode".into(),
            ))
        }
    };
    let mut cfg = Config::preset(&a.preset)?;
    if let Some(s) = a.size {
        cfg.size = s;
    }
    let uses: Vec<_> = crate::bench::conv_uses(&cfg, a.batch, a.backward)?
        .into_iter()
        .filter(|u| !(a.backward && u.shape.is_pointwise()))
        .collect();
    // The backend's own message suggests `--device cpu`, which this command does not have.
    let mut be = open_cuda(ordinal).map_err(|e| match e {
        Error::Device(msg) => Error::Device(format!(
            "bench-conv needs a GPU (it compares the GPU's convolution algorithms): {}",
            msg.trim_end_matches("; use --device cpu")
        )),
        other => other,
    })?;
    be.set_precision(prec)?;
    if let Some(f) = a.halo_min_fill {
        be.set_halo_min_fill(f);
    }
    let device = be.name();

    // One buffer per operand, as large as the largest shape needs.
    let max = |f: fn(&ConvShape) -> usize| uses.iter().map(|u| f(&u.shape)).max().unwrap_or(0);
    let mut rng = Rng::new(17);
    let mut put = |be: &mut CudaBackend, len: usize, scale: f64| -> Result<Tensor> {
        let t = Tensor::new(be.alloc(len.max(1))?, 0, len.max(1));
        be.upload(t, &rng.vec(len.max(1), |r| scale * r.normal()))?;
        Ok(t)
    };
    let x = put(&mut be, max(ConvShape::x_len), 1.0)?;
    let w = put(&mut be, max(ConvShape::w_len), 0.05)?;
    let y = put(&mut be, max(ConvShape::y_len), 1.0)?;
    // The gradients accumulate into buffers of their own, so no input drifts.
    let dx = put(&mut be, max(ConvShape::x_len), 0.0)?;
    let dw = put(&mut be, max(ConvShape::w_len), 0.0)?;
    let bias = put(
        &mut be,
        uses.iter().map(|u| u.shape.cout).max().unwrap_or(0),
        0.1,
    )?;
    let part = |t: Tensor, len: usize| Tensor::new(t.buf, 0, len);

    // A record of this run with the fields every record shares.
    let record = |kind: &str, algo: ConvAlgo, pass: &str, calls: u32, ms: f64| ConvBenchRecord {
        implementation: "prrnet".into(),
        kind: kind.into(),
        device: device.clone(),
        preset: a.preset.clone(),
        size: cfg.size,
        precision: prec.to_string(),
        mode: if a.backward { "train" } else { "infer" }.into(),
        algo: algo.to_string(),
        pass: pass.into(),
        shape: None,
        calls,
        ms_median: ms,
        ms_min: None,
        ms_max: None,
        tflops: None,
    };
    let mut passes = vec!["forward"];
    if a.backward {
        passes.extend(["backward_data", "backward_weight"]);
    }
    // (algo, pass) → Σ calls × ms, and (shape index, pass) → implicit ms for the halo totals.
    let mut totals = vec![vec![0.0f64; passes.len()]; algos.len()];
    let mut implicit_ms = vec![vec![None::<f64>; passes.len()]; uses.len()];
    let mut halo_used = vec![vec![false; passes.len()]; uses.len()];
    for (si, u) in uses.iter().enumerate() {
        let s = u.shape;
        let (xs, ws, ys) = (part(x, s.x_len()), part(w, s.w_len()), part(y, s.y_len()));
        let (dxs, dws) = (part(dx, s.x_len()), part(dw, s.w_len()));
        let b = part(bias, s.cout);
        for (ai, &algo) in algos.iter().enumerate() {
            be.set_conv_algo(algo);
            for (pi, &pass) in passes.iter().enumerate() {
                let calls = match pass {
                    "forward" => u.forward,
                    "backward_data" => u.backward_data,
                    _ => u.backward_weight,
                };
                if calls == 0 {
                    continue;
                }
                // Where the halo kernels run: the forward of `s`, the data gradient's
                // transposed stride-1 convolution; never the weight gradient.
                let halo_here = match pass {
                    "forward" => be.conv_uses_halo(&s),
                    "backward_data" => s.transposed().is_some_and(|t| be.conv_uses_halo(&t)),
                    _ => false,
                };
                if algo == ConvAlgo::Halo && !halo_here {
                    continue;
                }
                let op = || -> Result<()> {
                    match pass {
                        "forward" => be.conv2d_bias_act(&s, xs, ws, b, None, true, ys),
                        // dy = y's buffer; each gradient alone, as the dispatch sees it.
                        "backward_data" => {
                            be.conv2d_backward(&s, xs, ws, ys, Some(dxs), None, None)
                        }
                        _ => be.conv2d_backward(&s, xs, ws, ys, None, Some(dws), None),
                    }
                };
                let ms = time(&be, a.warmup, a.iters, op)?;
                let (med, min, max) = stats(ms);
                totals[ai][pi] += calls as f64 * med;
                if algo == ConvAlgo::Implicit {
                    implicit_ms[si][pi] = Some(med);
                }
                if algo == ConvAlgo::Halo {
                    halo_used[si][pi] = true;
                }
                emit(&ConvBenchRecord {
                    shape: Some(shape_name(&s)),
                    ms_min: Some(min),
                    ms_max: Some(max),
                    tflops: Some(s.flops() / (med * 1e-3) / 1e12),
                    ..record("conv", algo, pass, calls, med)
                });
            }
        }
    }
    be.set_conv_algo(ConvAlgo::default());
    for (ai, &algo) in algos.iter().enumerate() {
        for (pi, &pass) in passes.iter().enumerate() {
            let mut total = totals[ai][pi];
            if algo == ConvAlgo::Halo {
                // The shapes the halo kernels leave to the implicit ones, at implicit's time.
                for (si, u) in uses.iter().enumerate() {
                    let calls = [u.forward, u.backward_data, u.backward_weight][pi];
                    if !halo_used[si][pi] {
                        match implicit_ms[si][pi] {
                            Some(ms) => total += calls as f64 * ms,
                            None if calls > 0 => {
                                total = f64::NAN; // implicit not measured: no comparable total
                            }
                            None => {}
                        }
                    }
                }
            }
            let calls = uses
                .iter()
                .map(|u| [u.forward, u.backward_data, u.backward_weight][pi])
                .sum();
            emit(&record("conv_total", algo, pass, calls, total));
        }
    }
    Ok(())
}

/// `prrnet bench-conv`: run and print (JSON lines with `--json`, else a table).
pub fn main(a: &BenchConvArgs) -> Result<()> {
    run(a, |r| {
        if a.json {
            println!("{}", serde_json::to_string(r).expect("record serialises"));
            return;
        }
        match (&r.shape, r.tflops) {
            (Some(shape), Some(tf)) => println!(
                "{:8} {:4} {:15} {:32} x{:<3} {:9.3} ms ({:.3}–{:.3}) {:7.2} TFLOP/s",
                r.algo,
                r.precision,
                r.pass,
                shape,
                r.calls,
                r.ms_median,
                r.ms_min.unwrap_or(f64::NAN),
                r.ms_max.unwrap_or(f64::NAN),
                tf
            ),
            _ => println!(
                "total    {:8} {:4} {:15} {} calls: {:.3} ms per step",
                r.algo, r.precision, r.pass, r.calls, r.ms_median
            ),
        }
    })
}
