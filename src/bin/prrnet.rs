//! `prrnet`: the debug dump, device information, and (in later issues) batch detection,
//! evaluation and benchmarks.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
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
    /// Show the compute devices this build can use.
    Info,
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
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
            Ok(())
        }
        Cmd::Info => {
            println!("cpu: {} threads", rayon::current_num_threads());
            match backend::cuda::open(0) {
                Ok(b) => println!("cuda: {}", b.name()),
                Err(e) => println!("cuda: unavailable ({e})"),
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
