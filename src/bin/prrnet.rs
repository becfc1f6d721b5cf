//! `prrnet`: batch detection, the debug dump, device information and benchmarks (evaluation
//! in a later issue).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use prrnet::detect::{
    self, pipeline::PictureDirs, records::RecordWriter, Detector, DetectorOptions, Precision,
};
use prrnet::io::{dump, tensors::TensorFile};
use prrnet::{backend, DeviceRequest, Result};

#[derive(Parser)]
#[command(name = "prrnet", version, about = "PRRNet face-forgery detection")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Evaluate a checkpoint on a labelled dataset (folder, CSV/JSONL manifest or DeepfakeBench
    /// JSON): accuracy, AUC, AP, EER, video AUC, pixel AUC and IoU as JSON, with ROC and
    /// score-histogram plots.
    Eval {
        /// Checkpoint (.safetensors).
        #[arg(long)]
        weights: PathBuf,
        /// Labelled dataset: a folder with real/ and fake/ (and optional masks/), a .csv/.jsonl
        /// manifest, or a DeepfakeBench .json.
        #[arg(long)]
        data: PathBuf,
        /// Output folder for metrics.json, roc.png and scores.png [default: eval, or eval-2,
        /// eval-3, … when that already holds results].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Images per forward pass at most (the samples are split into batches of equal size).
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// auto | cpu | cuda | cuda:N
        #[arg(long, default_value = "auto")]
        device: String,
        /// fp32 | tf32 | bf16 (recorded in metrics.json)
        #[arg(long, default_value = "fp32")]
        precision: String,
        /// Input side (default: the checkpoint's).
        #[arg(long)]
        size: Option<usize>,
        /// Model preset for a checkpoint without metadata (w30 | tiny); wins over metadata.
        #[arg(long)]
        preset: Option<String>,
        /// Relation bins per side
        #[arg(long)]
        n: Option<usize>,
        /// Metric groups G
        #[arg(long)]
        groups: Option<usize>,
        /// Loader threads (0 = all cores).
        #[arg(long, default_value_t = 0)]
        workers: usize,
    },
    /// Run one forward pass on a file of inputs and dump every intermediate tensor (SPEC §10).
    Forward {
        /// Checkpoint (.safetensors) with PyTorch names and layouts.
        #[arg(long)]
        weights: PathBuf,
        /// Inputs: `image [B,3,S,S]` (normalised), optional `mask [B,1,S,S]`, `label [B]`,
        /// `mask_weight [B]`.
        #[arg(long)]
        input: PathBuf,
        /// Output safetensors file.
        #[arg(long)]
        out: PathBuf,
        /// Model preset when the checkpoint has no metadata (w30 | tiny); wins over metadata.
        #[arg(long)]
        preset: Option<String>,
        /// Relation bins per side.
        #[arg(long)]
        n: Option<usize>,
        /// Metric groups G.
        #[arg(long)]
        groups: Option<usize>,
        /// BatchNorm with batch statistics (train mode).
        #[arg(long)]
        train: bool,
        /// Also write the gradient of `loss` w.r.t. every parameter (`grad.<name>`) and the
        /// input (`grad.image`).
        #[arg(long)]
        grads: bool,
        /// auto | cpu | cuda | cuda:N
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Score image files, folders (recursive) and manifests (.txt, .csv / .jsonl with a `path`
    /// column): one record per input (path, score, verdict, mask_fraction, or error).
    Detect {
        /// Image files, folders and manifests; `-` reads paths from standard input, one per
        /// line.
        #[arg(required = true, value_name = "INPUT")]
        inputs: Vec<PathBuf>,
        /// Checkpoint (.safetensors).
        #[arg(long)]
        weights: PathBuf,
        /// auto | cpu | cuda | cuda:N
        #[arg(long, default_value = "auto")]
        device: String,
        /// Images per forward pass at most (the inputs are split into batches of equal size).
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// fp32 | tf32 | bf16
        #[arg(long, default_value = "fp32")]
        precision: String,
        /// Input side (default: the checkpoint's).
        #[arg(long)]
        size: Option<usize>,
        /// An image is called fake when its score is at least this.
        #[arg(long, default_value_t = 0.5)]
        threshold: f32,
        /// Records file: JSON lines, or CSV when it ends in .csv (default: stdout, JSON lines).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Folder for the manipulation masks (8-bit PNG at each image's original size).
        #[arg(long)]
        masks: Option<PathBuf>,
        /// Folder for heat-maps of the mask over each image.
        #[arg(long)]
        overlay: Option<PathBuf>,
        /// Exit with an error status when any input failed.
        #[arg(long)]
        strict: bool,
        /// Model preset for a checkpoint without metadata (w30 | tiny); wins over metadata.
        #[arg(long)]
        preset: Option<String>,
        /// Relation bins per side.
        #[arg(long)]
        n: Option<usize>,
        /// Metric groups G.
        #[arg(long)]
        groups: Option<usize>,
        /// START:COUNT — bracket these forward batches (0-based) with the CUDA profiler
        /// start/stop calls, for `nsys --capture-range=cudaProfilerApi` and `ncu`.
        #[arg(long)]
        profile_window: Option<prrnet::profile::ProfileWindow>,
        /// Run every forward as ordinary launches instead of replaying a recorded CUDA graph.
        #[arg(long)]
        no_graph: bool,
    },
    /// Show the compute devices this build can use.
    Info,
    /// Time the fused relation kernels version by version (TFLOP/s against the measured dense
    /// GEMM rate, modelled bytes, device memory); JSON fields of reference/bench_relation.py.
    BenchRelation(prrnet::relation_bench::BenchRelationArgs),
    /// Time every convolution shape of a network step algorithm by algorithm (im2col, implicit
    /// GEMM, halo tiles) on the GPU, with per-step totals.
    BenchConv(prrnet::conv_bench::BenchConvArgs),
    /// Time inference or training steps on random non-zero inputs.
    Bench {
        /// auto | cpu | cuda | cuda:N
        #[arg(long, default_value = "auto")]
        device: String,
        #[arg(long, default_value = "w30")]
        preset: String,
        /// Input side (default: the preset's).
        #[arg(long)]
        size: Option<usize>,
        #[arg(long, default_value_t = 4)]
        batch: usize,
        /// fp32 | tf32 | bf16
        #[arg(long, default_value = "fp32")]
        precision: String,
        /// Time a training step (forward, backward, Adam) instead of inference.
        #[arg(long)]
        train: bool,
        #[arg(long, default_value_t = 5)]
        iters: usize,
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        /// Print one JSON line (the fields of reference/bench.py).
        #[arg(long)]
        json: bool,
        /// Also report the device time of every stage (forward and backward by module,
        /// optimizer; CUDA events on a GPU) with the cost model's FLOPs and bytes.
        #[arg(long)]
        breakdown: bool,
        /// START:COUNT — bracket these iterations (0-based, warm-up included) with the CUDA
        /// profiler start/stop calls, for `nsys --capture-range=cudaProfilerApi` and `ncu`.
        #[arg(long)]
        profile_window: Option<prrnet::profile::ProfileWindow>,
        /// Instead of the network: measure the GPU's dense GEMM rate (fp32, TF32, BF16; cuBLAS,
        /// 8192³) and memory bandwidth (device-to-device copy), the floors' denominators.
        #[arg(long)]
        peaks: bool,
        /// Instead of timing: print the cost model (FLOPs and minimum DRAM bytes per stage) of
        /// this configuration, computed without running the network.
        #[arg(long)]
        costs: bool,
        /// Inference: run plain launches instead of replaying a recorded CUDA graph.
        #[arg(long)]
        no_graph: bool,
    },
}

fn detect(
    inputs: &[PathBuf],
    weights: &std::path::Path,
    device: DeviceRequest,
    mut opts: DetectorOptions,
    out: Option<PathBuf>,
    dirs: PictureDirs,
    strict: bool,
) -> Result<ExitCode> {
    let sources = detect::inputs::collect(inputs);
    // As few batches as --batch allows, evenly filled: little padding is computed.
    opts.batch = prrnet::PrrNet::even_batch(sources.len(), opts.batch);
    let det = Detector::open(weights, device, opts)?;
    let c = det.config();
    eprintln!(
        "prrnet detect: {} inputs, {} n={} G={} at {}x{}, batch {}, on {}",
        sources.len(),
        c.preset,
        c.n,
        c.groups,
        c.size,
        c.size,
        det.batch(),
        det.device()
    );
    let mut writer = RecordWriter::create(out.as_deref())?;
    let summary = detect::pipeline::run(&det, sources, &mut writer, &dirs, true)?;
    det.finish_profiling()?;
    eprintln!("prrnet detect: {summary}");
    Ok(if summary.ok(strict) {
        ExitCode::SUCCESS
    } else {
        if summary.succeeded == 0 {
            eprintln!("prrnet detect: no input was scored");
        }
        ExitCode::FAILURE
    })
}

/// The default output of `eval`: `eval`, or the first of `eval-2`, `eval-3`, … that holds no
/// results yet, so that evaluating a second checkpoint keeps the first one's.
fn unused_eval_folder() -> PathBuf {
    std::iter::once("eval".to_string())
        .chain((2..).map(|k| format!("eval-{k}")))
        .map(PathBuf::from)
        .find(|dir| !dir.join("metrics.json").exists())
        .expect("an unbounded search ends at a free folder")
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Eval {
            weights,
            data,
            out,
            batch,
            device,
            precision,
            size,
            preset,
            n,
            groups,
            workers,
        } => {
            let wf = TensorFile::read(&weights)?;
            let cfg = dump::resolve_config(&wf, preset.as_deref(), n, groups, size)?;
            let be = backend::open(device.parse::<DeviceRequest>()?)?;
            let precision = precision.parse::<Precision>()?;
            be.set_precision(precision)?;
            let out = out.unwrap_or_else(unused_eval_folder);
            let samples = prrnet::train::eval::samples(&data)?;
            let batch = prrnet::PrrNet::even_batch(samples.len(), batch);
            let mut net = prrnet::PrrNet::new_inference(&cfg, be, batch)?;
            prrnet::io::checkpoint::load_file(&net, &wf, &weights)?;
            let m = prrnet::train::eval::run(
                &mut net, &weights, &data, samples, &out, workers, precision,
            )?;
            println!("{}", serde_json::to_string(&m).expect("metrics serialise"));
            eprintln!("wrote {}", out.join("metrics.json").display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Detect {
            inputs,
            weights,
            device,
            batch,
            precision,
            size,
            threshold,
            out,
            masks,
            overlay,
            strict,
            preset,
            n,
            groups,
            profile_window,
            no_graph,
        } => detect(
            &inputs,
            &weights,
            device.parse::<DeviceRequest>()?,
            DetectorOptions {
                batch,
                size,
                preset,
                n,
                groups,
                precision: precision.parse::<Precision>()?,
                threshold,
                profile_window,
                graphs: !no_graph,
            },
            out,
            PictureDirs { masks, overlay },
            strict,
        ),
        Cmd::Forward {
            weights,
            input,
            out,
            preset,
            n,
            groups,
            train,
            grads,
            device,
        } => {
            let wf = TensorFile::read(&weights)?;
            let cfg = dump::resolve_config(&wf, preset.as_deref(), n, groups, None)?;
            let inp = TensorFile::read(&input)?;
            let be = backend::open(device.parse::<DeviceRequest>()?)?;
            // The input's side wins over the checkpoint's (`dump::run`); say the one that runs.
            let mut shown = cfg.clone();
            if let Some(side) = inp.get("image").and_then(|a| a.shape.get(2)) {
                shown.size = *side;
            }
            eprintln!("prrnet forward: {} on {}", shown.to_json(), be.name());
            dump::run(
                be,
                &cfg,
                &wf,
                &weights,
                &inp,
                &out,
                &dump::DumpOptions { train, grads },
            )?;
            eprintln!("wrote {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench {
            device,
            preset,
            size,
            batch,
            precision,
            train,
            iters,
            warmup,
            json,
            breakdown,
            profile_window,
            peaks,
            costs,
            no_graph,
        } => {
            if peaks {
                return bench_peaks(&device, iters, warmup, json);
            }
            let mut cfg = prrnet::Config::preset(&preset)?;
            if let Some(s) = size {
                cfg.size = s;
            }
            cfg.validate()?;
            if costs {
                print_costs(&cfg, batch, train, json)?;
                return Ok(ExitCode::SUCCESS);
            }
            let be = backend::open(device.parse::<DeviceRequest>()?)?;
            let r = prrnet::bench::run(
                be,
                &prrnet::bench::BenchOptions {
                    cfg,
                    batch,
                    train,
                    iters,
                    warmup,
                    precision,
                    breakdown,
                    profile_window,
                    graph: !no_graph,
                },
            )?;
            if json {
                println!("{}", serde_json::to_string(&r).expect("serialise"));
            } else {
                println!(
                    "{} {} {}x{} batch {} {} on {}: {:.1} ms median ({:.1}–{:.1}), {:.2} images/s, peak {:.0} MiB",
                    r.implementation, r.preset, r.size, r.size, r.batch, r.mode, r.device,
                    r.ms_median, r.ms_min, r.ms_max, r.images_per_s,
                    r.peak_mem_bytes as f64 / (1 << 20) as f64
                );
                print_breakdown(&r);
                print_kernel_choices(&r);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::BenchRelation(a) => {
            prrnet::relation_bench::main(&a)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::BenchConv(a) => {
            prrnet::conv_bench::main(&a)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Info => {
            use prrnet::backend::cuda;
            println!("prrnet {}", env!("CARGO_PKG_VERSION"));
            println!("cpu: {} threads", rayon::current_num_threads());
            let kernels = cuda::embedded_kernels();
            if kernels.is_empty() {
                println!("cuda kernels: none embedded (built without nvcc)");
            } else {
                println!("cuda kernels embedded:");
                for (file, arches) in &kernels {
                    println!("  {file:14} {}", arches.join(" "));
                }
            }
            match cuda::device_info() {
                Ok(devs) if devs.is_empty() => println!("cuda devices: none (no CUDA driver)"),
                Ok(devs) => {
                    for d in devs {
                        println!(
                            "cuda:{}: {}, compute capability {}.{}, {:.1} GiB, driver CUDA {}.{}",
                            d.ordinal,
                            d.name,
                            d.compute_capability.0,
                            d.compute_capability.1,
                            d.total_memory as f64 / (1u64 << 30) as f64,
                            d.driver_version / 1000,
                            (d.driver_version % 1000) / 10
                        );
                    }
                }
                Err(e) => println!("cuda devices: error ({e})"),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The stage table of `prrnet bench --breakdown`: device time, share, the cost model's work
/// and the rates it implies.
/// The kernels chosen by measurement: per operation, how many calls took each candidate (the
/// full list, with every candidate's time, is in `--json`'s `kernel_choices`), and every
/// candidate left out, with the reason.
fn print_kernel_choices(r: &prrnet::bench::BenchResult) {
    let mut counts: Vec<(String, String, usize)> = Vec::new();
    for c in &r.kernel_choices {
        match counts
            .iter_mut()
            .find(|(op, p, _)| *op == c.op && *p == c.chosen)
        {
            Some((_, _, n)) => *n += 1,
            None => counts.push((c.op.clone(), c.chosen.clone(), 1)),
        }
    }
    for op in ["conv", "relation"] {
        let of: Vec<String> = counts
            .iter()
            .filter(|(o, _, _)| o == op)
            .map(|(_, p, n)| format!("{p} {n}"))
            .collect();
        if !of.is_empty() {
            println!("{op} kernels chosen by measurement: {}", of.join(", "));
        }
    }
    // A candidate left out is a kernel that failed or computed something else on this device.
    for c in &r.kernel_choices {
        for x in &c.rejected {
            println!(
                "left out: {} for {} {} {} {}: {}",
                x.path, c.op, c.pass, c.shape, c.precision, x.reason
            );
        }
    }
}

fn print_breakdown(r: &prrnet::bench::BenchResult) {
    if r.breakdown.is_empty() {
        return;
    }
    let total: f64 = r.breakdown.iter().map(|s| s.ms).sum();
    println!(
        "  {:18} {:>9} {:>6} {:>9} {:>8} {:>9} {:>8}   ({})",
        "stage", "ms", "%", "GFLOP", "GB", "TFLOP/s", "GB/s", r.timer
    );
    for s in &r.breakdown {
        let secs = s.ms / 1e3;
        println!(
            "  {:18} {:9.2} {:5.1}% {:9.2} {:8.3} {:9.2} {:8.1}",
            s.stage,
            s.ms,
            100.0 * s.ms / total,
            s.gflop,
            s.gbytes,
            if secs > 0.0 {
                s.gflop / secs / 1e3
            } else {
                0.0
            },
            if secs > 0.0 { s.gbytes / secs } else { 0.0 },
        );
    }
    if let Some(t) = r.breakdown_step_ms {
        println!(
            "  whole step during the breakdown: {t:.2} ms (plain timing: {:.2} ms)",
            r.ms_median
        );
    }
}

/// `prrnet bench --costs`: the per-stage cost model, one line per stage (or one JSON line).
fn print_costs(cfg: &prrnet::Config, batch: usize, train: bool, json: bool) -> Result<()> {
    let costs = prrnet::bench::stage_costs(cfg, batch, train)?;
    let mode = if train { "train" } else { "infer" };
    if json {
        let stages: Vec<serde_json::Value> = costs
            .iter()
            .map(|c| {
                serde_json::json!({
                    "stage": c.stage,
                    "gflop": c.flop / 1e9,
                    "matmul_gflop": c.matmul_flop / 1e9,
                    "gbytes": c.bytes / 1e9,
                    "ops": c.ops,
                })
            })
            .collect();
        let v = serde_json::json!({
            "kind": "costs",
            "preset": cfg.preset,
            "size": cfg.size,
            "batch": batch,
            "mode": mode,
            "stages": stages,
        });
        println!("{v}");
        return Ok(());
    }
    println!(
        "cost model: {} {}x{} batch {batch} {mode} (FLOPs; minimum DRAM bytes, f32 storage)",
        cfg.preset, cfg.size, cfg.size
    );
    println!(
        "  {:18} {:>10} {:>12} {:>9} {:>6}",
        "stage", "GFLOP", "matmul GFLOP", "GB", "ops"
    );
    let (mut f, mut m, mut b) = (0.0, 0.0, 0.0);
    for c in &costs {
        println!(
            "  {:18} {:10.2} {:12.2} {:9.3} {:6}",
            c.stage,
            c.flop / 1e9,
            c.matmul_flop / 1e9,
            c.bytes / 1e9,
            c.ops
        );
        (f, m, b) = (f + c.flop, m + c.matmul_flop, b + c.bytes);
    }
    println!(
        "  {:18} {:10.2} {:12.2} {:9.3}",
        "total",
        f / 1e9,
        m / 1e9,
        b / 1e9
    );
    Ok(())
}

/// `prrnet bench --peaks`: the device's measured GEMM rates and memory bandwidth.
fn bench_peaks(device: &str, iters: usize, warmup: usize, json: bool) -> Result<ExitCode> {
    use prrnet::backend::cuda::peak;
    let needs_gpu = |why: String| {
        prrnet::Error::Config(format!(
            "--peaks measures a GPU (cuBLAS GEMM rates, device memory bandwidth): {why}"
        ))
    };
    let ordinal = match device.parse::<DeviceRequest>()? {
        DeviceRequest::Cuda(i) => i,
        DeviceRequest::Auto => 0,
        DeviceRequest::Cpu => {
            return Err(needs_gpu(
                "--device cpu has none; use --device cuda on a machine with a GPU".into(),
            ))
        }
    };
    if !prrnet::backend::cuda::driver_present() {
        return Err(needs_gpu(
            "this machine has no CUDA driver (libcuda)".into(),
        ));
    }
    let p = peak::measure_device(
        ordinal,
        &peak::PeakOptions {
            iters: iters.max(3),
            warmup: warmup.max(2),
            ..Default::default()
        },
    )?;
    if json {
        println!("{}", serde_json::to_string(&p).expect("serialise"));
    } else {
        println!("peaks on {}:", p.device);
        for g in &p.gemm {
            println!(
                "  GEMM {:4} {}x{}x{}: {:8.3} ms median, {:7.1} TFLOP/s (best {:.1})",
                g.precision, g.m, g.n, g.k, g.ms_median, g.tflops, g.tflops_best
            );
        }
        println!(
            "  copy {} MiB device-to-device: {:.3} ms median, {:.0} GB/s read+write (best {:.0})",
            p.copy.bytes >> 20,
            p.copy.ms_median,
            p.copy.gbps,
            p.copy.gbps_best
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so printing into a pipe the reader closed (`prrnet detect … | head`)
    // would panic or fail with "Broken pipe"; with the default action the command ends
    // quietly, as other Unix tools do.
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any other thread exists; SIG_DFL is a valid
    // disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
