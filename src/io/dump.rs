//! The debug dump of SPEC §10: run one forward pass on a file of inputs and write every named
//! intermediate tensor (and, on request, every gradient) to a safetensors file.

use std::path::Path;

use super::checkpoint;
use super::tensors::TensorFile;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::model::{Batch, Mode, PrrNet};
use crate::Backend;

/// Options of `prrnet forward`.
#[derive(Clone, Debug)]
pub struct DumpOptions {
    pub train: bool,
    pub grads: bool,
}

/// The configuration for a weights file: its metadata, overridden by explicit flags.
pub fn resolve_config(
    weights: &TensorFile,
    preset: Option<&str>,
    n: Option<usize>,
    groups: Option<usize>,
    size: Option<usize>,
) -> Result<Config> {
    let mut cfg = match (checkpoint::config_of(weights)?, preset) {
        (Some(meta), None) => meta,
        // A preset flag wins over the metadata; n and G still come from the metadata.
        (Some(meta), Some(p)) if meta.preset != p => Config {
            n: meta.n,
            groups: meta.groups,
            ..Config::preset(p)?
        },
        (Some(meta), Some(_)) => meta,
        (None, Some(p)) => Config::preset(p)?,
        (None, None) => {
            return Err(Error::Config(
                "the weights file has no configuration metadata: pass --preset".into(),
            ))
        }
    };
    if let Some(n) = n {
        cfg.n = n;
    }
    if let Some(g) = groups {
        cfg.groups = g;
    }
    if let Some(s) = size {
        cfg.size = s;
    }
    cfg.validate()?;
    Ok(cfg)
}

/// Run the dump: `weights` and `input` files in, `out` file written.
pub fn run(
    be: Box<dyn Backend>,
    cfg: &Config,
    weights: &TensorFile,
    weights_path: &Path,
    input: &TensorFile,
    out: &Path,
    opts: &DumpOptions,
) -> Result<()> {
    let image = input.get("image").ok_or_else(|| Error::Key {
        key: "image".into(),
        msg: "missing from the input file (expected [B,3,S,S])".into(),
    })?;
    if image.shape.len() != 4 || image.shape[1] != 3 || image.shape[2] != image.shape[3] {
        return Err(Error::Shape {
            key: "image".into(),
            expected: vec![0, 3, cfg.size, cfg.size],
            found: image.shape.clone(),
        });
    }
    let b = image.shape[0];
    let mut cfg = cfg.clone();
    if image.shape[2] != cfg.size {
        cfg.size = image.shape[2];
        cfg.validate()?;
    }
    let s = cfg.size;
    let mask = input.expect_opt("mask", &[b, 1, s, s])?;
    let label = input.expect_opt("label", &[b])?;
    let mask_weight = input.expect_opt("mask_weight", &[b])?;
    if opts.grads && label.is_none() {
        return Err(Error::Config(
            "--grads needs `label` in the input file (the loss is differentiated)".into(),
        ));
    }
    let mut net = PrrNet::new(&cfg, be, b, opts.grads)?;
    checkpoint::load_file(&net, weights, weights_path)?;
    net.set_input(&Batch {
        image: &image.data,
        mask: mask.map(|a| a.data.as_slice()),
        label: label.map(|a| a.data.as_slice()),
        mask_weight: mask_weight.map(|a| a.data.as_slice()),
    })?;
    let mode = if opts.train { Mode::TRAIN } else { Mode::EVAL };
    net.forward(mode)?;
    let mut file = TensorFile::default();
    for (name, shape, data) in net.dump_outputs()? {
        file.insert(name, shape, data);
    }
    if opts.grads {
        net.backward(mode, true)?;
        for e in net.entries().iter().filter(|e| e.trainable) {
            let g = net.read(net.grad_of(e.tensor)?)?;
            file.insert(
                format!("grad.{}", e.name),
                e.torch_shape(),
                checkpoint::to_torch(e, &g),
            );
        }
        file.insert("grad.image", vec![b, 3, s, s], net.input_grad()?);
    }
    if opts.train {
        for e in net.entries().iter().filter(|e| !e.trainable) {
            file.insert(
                format!("state.{}", e.name),
                e.torch_shape(),
                net.read(e.tensor)?,
            );
        }
    }
    file.metadata
        .insert(checkpoint::CONFIG_KEY.into(), cfg.to_json());
    file.write(out)
}
