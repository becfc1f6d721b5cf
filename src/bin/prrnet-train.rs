//! `prrnet-train`: trains PRRNet. This first version runs a short from-scratch training of the
//! `tiny` preset on random data to exercise the full step (forward, backward, Adam); the
//! data pipeline, schedule and checkpointing arrive with the training issue.

use std::process::ExitCode;

use prrnet::model::{Batch, Mode, PrrNet};
use prrnet::rng::Rng;
use prrnet::{backend, Config, DeviceRequest, Result};

fn run() -> Result<()> {
    let cfg = Config::preset("tiny")?;
    let be = backend::open(DeviceRequest::Auto)?;
    let b = 8;
    let mut net = PrrNet::new(&cfg, be, b, true)?;
    net.init_weights(0)?;
    let s = cfg.size;
    let mut rng = Rng::new(1);
    for step in 0..20 {
        let image = rng.vec(b * 3 * s * s, |r| r.normal());
        let label: Vec<f32> = (0..b).map(|i| (i % 2) as f32).collect();
        let mask: Vec<f32> = (0..b * s * s)
            .map(|i| {
                if (i / (s * s)) % 2 == 1 && (i % s) < s / 2 {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        net.set_input(&Batch {
            image: &image,
            mask: Some(&mask),
            label: Some(&label),
            mask_weight: None,
        })?;
        net.forward(Mode::TRAIN)?;
        let l = net.losses()?;
        net.backward(Mode::TRAIN, false)?;
        net.adam_step(1e-3, false)?;
        println!(
            "step {step:3}  loss {:.4}  loc {:.4}  cls {:.4}",
            l.loss, l.loc, l.cls
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
