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
        #[arg(long)]
        weights: PathBuf,
        #[arg(long)]
        data: PathBuf,
        /// Output folder for metrics.json, roc.png and scores.png.
        #[arg(long, default_value = "eval")]
        out: PathBuf,
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// auto | cpu | cuda | cuda:N
        #[arg(long, default_value = "auto")]
        device: String,
        /// Input side (default: the checkpoint's).
        #[arg(long)]
        size: Option<usize>,
        /// For a bare state dict without metadata.
        #[arg(long)]
        preset: Option<String>,
        #[arg(long)]
        n: Option<usize>,
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
        /// Image files, folders and manifests.
        #[arg(required = true, value_name = "INPUT")]
        inputs: Vec<PathBuf>,
        /// Checkpoint (.safetensors).
        #[arg(long)]
        weights: PathBuf,
        /// auto | cpu | cuda | cuda:N
        #[arg(long, default_value = "auto")]
        device: String,
        /// Images per forward pass.
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
    },
    /// Show the compute devices this build can use.
    Info,
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
        /// Also report the time of every stage (forward and backward by module, optimizer).
        #[arg(long)]
        breakdown: bool,
        /// START:COUNT — bracket these iterations (0-based, warm-up included) with the CUDA
        /// profiler start/stop calls, for `nsys --capture-range=cudaProfilerApi` and `ncu`.
        #[arg(long)]
        profile_window: Option<prrnet::profile::ProfileWindow>,
    },
}

fn detect(
    inputs: &[PathBuf],
    weights: &std::path::Path,
    device: DeviceRequest,
    opts: DetectorOptions,
    out: Option<PathBuf>,
    dirs: PictureDirs,
    strict: bool,
) -> Result<ExitCode> {
    let sources = detect::inputs::collect(inputs);
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
    let summary = detect::pipeline::run(&det, sources, &mut writer, &dirs)?;
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

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Eval {
            weights,
            data,
            out,
            batch,
            device,
            size,
            preset,
            n,
            groups,
            workers,
        } => {
            let wf = TensorFile::read(&weights)?;
            let cfg = dump::resolve_config(&wf, preset.as_deref(), n, groups, size)?;
            let be = backend::open(device.parse::<DeviceRequest>()?)?;
            let mut net = prrnet::PrrNet::new(&cfg, be, batch, false)?;
            prrnet::io::checkpoint::load_file(&net, &wf, &weights)?;
            let m = prrnet::train::eval::run(&mut net, &weights, &data, &out, workers)?;
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
            eprintln!("prrnet forward: {} on {}", cfg.to_json(), be.name());
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
        } => {
            let mut cfg = prrnet::Config::preset(&preset)?;
            if let Some(s) = size {
                cfg.size = s;
            }
            cfg.validate()?;
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
                let total: f64 = r.stages.iter().map(|(_, t)| t).sum();
                for (name, t) in &r.stages {
                    println!("  {name:18} {t:9.1} ms  {:5.1}%", 100.0 * t / total);
                }
            }
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

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
