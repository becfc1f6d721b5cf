//! `prrnet-train`: train PRRNet on a dataset (folder, CSV/JSONL manifest or DeepfakeBench JSON),
//! on self-blended fakes made from real images, or — with no arguments — on the built-in
//! procedural default (the `tiny` preset, from scratch).

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};
use prrnet::data::dataset;
use prrnet::data::loader::LoaderOptions;
use prrnet::data::sbi::SbiParams;
use prrnet::io::checkpoint;
use prrnet::model::PrrNet;
use prrnet::train::{self, LoaderSource, Outcome, Schedule, TrainOptions};
use prrnet::{backend, Config, DeviceRequest, Error, Result};

#[derive(Parser)]
#[command(name = "prrnet-train", version, about = "Train PRRNet")]
struct Cli {
    /// Dataset: a folder with real/ and fake/ (and optional masks/), a .csv/.jsonl manifest, or
    /// a DeepfakeBench .json. Without it: the built-in procedural dataset.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Output folder: checkpoints (last, best), metrics.jsonl, config.json, loss.png, roc.png.
    #[arg(long, default_value = "runs/prrnet-train")]
    out: PathBuf,
    /// Continue the run in this folder from its `last` checkpoint, with the settings recorded in
    /// its config.json (flags that contradict them are an error; --device, --workers,
    /// --max-steps and --profile-window may change).
    #[arg(long)]
    resume: Option<PathBuf>,
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// Input side (default: the preset's).
    #[arg(long)]
    size: Option<usize>,
    #[arg(long, default_value_t = 5)]
    n: usize,
    #[arg(long, default_value_t = 1)]
    groups: usize,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Epochs (default: 7 with a pretrained backbone, the paper's schedule; 24 from scratch).
    #[arg(long)]
    epochs: Option<usize>,
    /// Epochs with the backbone frozen (only with --backbone; default 4).
    #[arg(long)]
    freeze_epochs: Option<usize>,
    /// Learning rate while the backbone is frozen (paper: 2e-4).
    #[arg(long, default_value_t = 2e-4)]
    lr_frozen: f32,
    /// Learning rate once everything trains (paper: 2e-5; from scratch default 1e-3).
    #[arg(long)]
    lr: Option<f32>,
    /// Weight λ of the classification loss.
    #[arg(long, default_value_t = 0.1)]
    lambda: f32,
    /// ImageNet backbone: a timm `hrnet_w30` safetensors state dict.
    #[arg(long)]
    backbone: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// auto | cpu | cuda | cuda:N
    #[arg(long, default_value = "auto")]
    device: String,
    /// fp32 | tf32 | bf16: the GEMMs' and the relation map's operands on a GPU (f32
    /// accumulation, f32 weights and Adam state); the CPU computes in fp32 only.
    #[arg(long, default_value = "fp32")]
    precision: String,
    /// Loader threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Validation fraction for a seeded split by video (when the data has no split column).
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f64,
    /// Probability that a real training image is replaced by its self-blended fake.
    #[arg(long, default_value_t = 0.0)]
    self_blend: f32,
    /// Built-in dataset: training samples per epoch and validation samples.
    #[arg(long, default_value_t = 4096)]
    builtin_train: usize,
    #[arg(long, default_value_t = 512)]
    builtin_val: usize,
    /// Stop after this many steps in total (writes `last`; resume continues).
    #[arg(long)]
    max_steps: Option<u64>,
    /// START:COUNT — bracket these training steps (0-based) with the CUDA profiler start/stop
    /// calls, for `nsys --capture-range=cudaProfilerApi` and `ncu`.
    #[arg(long)]
    profile_window: Option<prrnet::profile::ProfileWindow>,
}

/// `--resume DIR`: every setting recorded in `DIR/config.json` when the run started replaces
/// its flag's default; a flag given with another value is an error, since a resumed run
/// continues exactly. The settings not recorded (device, loader threads, step limit, profiler
/// window) stay as given.
fn adopt_recorded_settings(cli: &mut Cli, given: &ArgMatches, dir: &Path) -> Result<()> {
    if !dir.join("last.safetensors").is_file() {
        return Err(Error::Config(format!(
            "cannot resume: {} holds no last checkpoint (last.safetensors); is it a \
             prrnet-train output folder?",
            dir.display()
        )));
    }
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let recorded: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::file(&path, format!("not valid JSON: {e}")))?;
    let mut conflicts = Vec::new();
    macro_rules! adopt {
        ($field:ident, $pointer:literal) => {
            if let Some(v) = recorded.pointer($pointer) {
                let run = serde_json::from_value(v.clone()).map_err(|e| {
                    Error::file(&path, format!("{}: {e}", $pointer.trim_start_matches('/')))
                })?;
                if given.value_source(stringify!($field)) != Some(ValueSource::CommandLine) {
                    cli.$field = run;
                } else if cli.$field != run {
                    conflicts.push(format!(
                        "--{} {} (the run has {})",
                        stringify!($field).replace('_', "-"),
                        // As config.json writes them (f32 without f64 digits).
                        serde_json::to_string(&cli.$field).unwrap_or_default(),
                        serde_json::to_string(&run).unwrap_or_default()
                    ));
                }
            }
        };
    }
    adopt!(preset, "/model/preset");
    adopt!(n, "/model/n");
    adopt!(groups, "/model/groups");
    adopt!(size, "/model/size");
    adopt!(data, "/data");
    adopt!(batch, "/batch");
    adopt!(precision, "/precision");
    adopt!(epochs, "/schedule/epochs");
    adopt!(freeze_epochs, "/schedule/freeze_epochs");
    adopt!(lr_frozen, "/schedule/lr_frozen");
    adopt!(lr, "/schedule/lr");
    adopt!(lambda, "/lambda");
    adopt!(backbone, "/backbone");
    adopt!(seed, "/seed");
    adopt!(self_blend, "/self_blend");
    adopt!(val_fraction, "/val_fraction");
    adopt!(builtin_train, "/builtin/train");
    adopt!(builtin_val, "/builtin/val");
    if conflicts.is_empty() {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "cannot resume {} with other settings than it started with ({}): {}; leave these \
             flags out",
            dir.display(),
            path.display(),
            conflicts.join(", ")
        )))
    }
}

/// The first of a run's checkpoints in `dir`, if any: a new run there would overwrite them. (A
/// folder with only the config.json of a run that failed before its first checkpoint has
/// nothing to lose.)
fn run_file_in(dir: &Path) -> Option<&'static str> {
    ["last.safetensors", "best.safetensors"]
        .into_iter()
        .find(|f| dir.join(f).exists())
}

/// A new run's `--out` must hold no run's checkpoints.
fn refuse_a_run_in(dir: &Path) -> Result<()> {
    match run_file_in(dir) {
        None => Ok(()),
        Some(file) => Err(Error::Config(format!(
            "{} already holds a training run ({file}), which a new run would overwrite: \
             continue it with --resume {0}, or choose another --out",
            dir.display()
        ))),
    }
}

fn out_given(given: &ArgMatches) -> bool {
    given.value_source("out") == Some(ValueSource::CommandLine)
}

/// Create `dir` and lock `dir/train.lock` for the whole run, so that a second prrnet-train on
/// the same folder stops instead of interleaving its checkpoints with this one's (the lock goes
/// with the process, also when it crashes). `None`: another run holds it.
fn lock_folder(dir: &Path) -> Result<Option<File>> {
    prrnet::io::create_folder(dir)?;
    let path = dir.join("train.lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => {
            eprintln!(
                "warning: cannot lock {} ({e}); no other run may write to this folder",
                path.display()
            );
            Ok(Some(file))
        }
    }
}

/// The output folder, locked for this run (`lock_folder`). `--resume DIR` and an explicit
/// `--out` take their folder or fail (another run holds it, or `--out` holds a run's
/// checkpoints); the default `runs/prrnet-train` moves on to `-2`, `-3`, … until a folder
/// holds no checkpoint and no other run, so the built-in job can simply be run again.
fn claim_output_folder(cli: &Cli, given: &ArgMatches) -> Result<(PathBuf, File)> {
    let busy = |dir: &Path| {
        Error::Config(format!(
            "{} is in use by another prrnet-train run",
            dir.display()
        ))
    };
    if let Some(dir) = &cli.resume {
        return Ok((dir.clone(), lock_folder(dir)?.ok_or_else(|| busy(dir))?));
    }
    if out_given(given) {
        let lock = lock_folder(&cli.out)?.ok_or_else(|| busy(&cli.out))?;
        // Checked again (`run` did before the dataset loaded) under the lock: a run may have
        // ended there since.
        refuse_a_run_in(&cli.out)?;
        return Ok((cli.out.clone(), lock));
    }
    for k in 1.. {
        let mut name = cli.out.clone().into_os_string();
        if k > 1 {
            name.push(format!("-{k}"));
        }
        let dir = PathBuf::from(name);
        if run_file_in(&dir).is_some() {
            continue;
        }
        if let Some(lock) = lock_folder(&dir)? {
            if run_file_in(&dir).is_none() {
                return Ok((dir, lock));
            }
        }
    }
    unreachable!("an unbounded search ends at a free folder")
}

/// Settings no run can use (an empty batch, no epochs, a learning rate that is not a positive
/// number, a probability outside [0, 1]) are refused before anything is read or written: a
/// NaN learning rate, say, would otherwise train to NaN weights and save them.
fn check_settings(cli: &Cli) -> Result<()> {
    let mut bad = Vec::new();
    if cli.batch == 0 {
        bad.push("--batch must be at least 1".to_string());
    }
    if cli.epochs == Some(0) {
        bad.push("--epochs must be at least 1".to_string());
    }
    for (flag, v) in [("--lr", cli.lr), ("--lr-frozen", Some(cli.lr_frozen))] {
        if let Some(v) = v.filter(|v| !(v.is_finite() && *v > 0.0)) {
            bad.push(format!("{flag} must be a positive number, not {v}"));
        }
    }
    if !(cli.lambda.is_finite() && cli.lambda >= 0.0) {
        bad.push(format!("--lambda must be a number ≥ 0, not {}", cli.lambda));
    }
    if cli.backbone.is_none() && cli.freeze_epochs.is_some_and(|f| f > 0) {
        bad.push(
            "--freeze-epochs needs --backbone (a run from scratch has no trained backbone to \
             keep fixed)"
                .to_string(),
        );
    }
    if !(0.0..=1.0).contains(&cli.self_blend) {
        bad.push(format!(
            "--self-blend is a probability (0 to 1), not {}",
            cli.self_blend
        ));
    }
    if !(0.0..=1.0).contains(&cli.val_fraction) {
        bad.push(format!(
            "--val-fraction is a fraction (0 to 1), not {}",
            cli.val_fraction
        ));
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(Error::Config(bad.join("; ")))
    }
}

/// Train; returns how the run ended and its output folder.
fn run(mut cli: Cli, given: &ArgMatches) -> Result<(Outcome, PathBuf)> {
    match cli.resume.clone() {
        Some(dir) => adopt_recorded_settings(&mut cli, given, &dir)?,
        // Before the dataset loads (which can take long): a folder that holds a run is refused
        // at once. `claim_output_folder` checks again under the lock.
        None if out_given(given) => refuse_a_run_in(&cli.out)?,
        None => {}
    }
    check_settings(&cli)?;
    let mut cfg = Config::preset(&cli.preset)?;
    cfg.n = cli.n;
    cfg.groups = cli.groups;
    if let Some(s) = cli.size {
        cfg.size = s;
    }
    cfg.validate()?;
    let builtin = cli.data.is_none();
    let (train_set, val_set) = match &cli.data {
        None => dataset::builtin(cli.builtin_train, cli.builtin_val, cli.seed),
        Some(path) => {
            let all = dataset::load(path)?;
            dataset::split_by_video(all, cli.val_fraction, cli.seed)
        }
    };
    let fakes = train_set.iter().filter(|s| s.label > 0.5).count();
    let reals = train_set.len() - fakes;
    if fakes == 0 && (reals == 0 || cli.self_blend <= 0.0) {
        eprintln!(
            "warning: the training set has no fakes{}: the classifier can only learn one class",
            if reals > 0 {
                " and --self-blend is 0 (a fraction of the reals can be turned into labelled \
                 fakes with --self-blend P)"
            } else {
                ""
            }
        );
    } else if reals == 0 {
        eprintln!(
            "warning: the training set has no real images: the classifier can only learn one class"
        );
    }
    if train_set.len() < cli.batch {
        return Err(Error::Config(format!(
            "{} training samples: fewer than one batch of {}",
            train_set.len(),
            cli.batch
        )));
    }
    // The built-in default uses stronger artifacts than the SBI ranges meant for real faces.
    let sbi = if builtin {
        SbiParams::builtin()
    } else {
        SbiParams::sbi()
    };
    let train_opts = LoaderOptions {
        size: cfg.size,
        batch: cli.batch,
        shuffle: true,
        seed: cli.seed,
        workers: cli.workers,
        sbi: Some(sbi.clone()),
        self_blend_fraction: cli.self_blend,
        drop_last: true,
        flip: true,
        fresh_generated: builtin,
        ..LoaderOptions::default()
    };
    let val_opts = LoaderOptions {
        workers: cli.workers,
        ..LoaderOptions::eval(cfg.size, cli.batch, Some(sbi))
    };
    let schedule = match &cli.backbone {
        Some(_) => {
            let p = Schedule::paper();
            Schedule {
                epochs: cli.epochs.unwrap_or(p.epochs),
                freeze_epochs: cli.freeze_epochs.unwrap_or(p.freeze_epochs),
                lr_frozen: cli.lr_frozen,
                lr: cli.lr.unwrap_or(p.lr),
            }
        }
        None => Schedule::from_scratch(cli.epochs.unwrap_or(24), cli.lr.unwrap_or(1e-3)),
    };
    let be = backend::open(cli.device.parse::<DeviceRequest>()?)?;
    be.set_precision(cli.precision.parse()?)?;
    let device = be.name();
    let mut net = PrrNet::new(&cfg, be, cli.batch, true)?;
    net.lambda = cli.lambda;
    let resume = cli.resume.is_some();
    if !resume {
        net.init_weights(cli.seed)?;
        if let Some(b) = &cli.backbone {
            checkpoint::import_timm(&net, b)?;
        }
    }
    // Only now, with the network allocated and a backbone imported: a run that cannot start
    // (out of memory, a backbone of the wrong network) leaves no output folder behind.
    let (out, _lock) = claim_output_folder(&cli, given)?;
    eprintln!(
        "prrnet-train: {} on {device} in {}; {} training / {} validation samples; {}; output in {}",
        cfg.to_json(),
        cli.precision,
        train_set.len(),
        val_set.len(),
        schedule,
        out.display()
    );
    if !resume {
        let config = serde_json::json!({
            "model": cfg,
            "data": cli.data,
            "batch": cli.batch,
            "precision": cli.precision,
            "schedule": { "epochs": schedule.epochs, "freeze_epochs": schedule.freeze_epochs,
                          "lr_frozen": schedule.lr_frozen, "lr": schedule.lr },
            "lambda": cli.lambda,
            "backbone": cli.backbone,
            "seed": cli.seed,
            "self_blend": cli.self_blend,
            "val_fraction": cli.val_fraction,
            "builtin": builtin.then(|| serde_json::json!({
                "train": cli.builtin_train, "val": cli.builtin_val })),
        });
        let path = out.join("config.json");
        prrnet::io::tensors::write_atomic(
            &path,
            serde_json::to_string_pretty(&config)
                .expect("json")
                .as_bytes(),
        )?;
    }
    let source = LoaderSource::new(train_set, val_set, train_opts, val_opts);
    ctrlc::set_handler(|| {
        eprintln!("\ninterrupt: finishing the current step, then writing a checkpoint");
        train::request_stop();
    })
    .map_err(|e| Error::Other(format!("cannot install the Ctrl-C handler: {e}")))?;
    let outcome = train::train(
        &mut net,
        &source,
        &TrainOptions {
            out: out.clone(),
            schedule,
            seed: cli.seed,
            resume,
            max_steps: cli.max_steps,
            profile_window: cli.profile_window,
        },
    )?;
    let skipped = prrnet::train::DataSource::skipped(&source).len();
    if skipped > 0 {
        eprintln!("{skipped} files could not be used (each reported above when first met)");
    }
    Ok((outcome, out))
}

fn main() -> ExitCode {
    let given = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&given).unwrap_or_else(|e| e.exit());
    match run(cli, &given) {
        Ok((Outcome::Finished { best_auc }, _)) => {
            match best_auc {
                Some(auc) => eprintln!("done; best validation AUC {auc:.4}"),
                None => eprintln!(
                    "done; no finite validation AUC (does the validation split hold both labels?)"
                ),
            }
            ExitCode::SUCCESS
        }
        Ok((Outcome::Interrupted { global_step } | Outcome::StepLimit { global_step }, out)) => {
            eprintln!(
                "stopped at step {global_step}; continue with --resume {}",
                out.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
