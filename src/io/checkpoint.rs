//! Checkpoints (SPEC §9): one safetensors file with PyTorch names and layouts, the model
//! configuration in `__metadata__`, and the timm `hrnet_w30` backbone import.

use std::collections::BTreeSet;
use std::path::Path;

use super::tensors::TensorFile;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::model::layers::{ParamEntry, ParamKind};
use crate::model::PrrNet;

pub const FORMAT_KEY: &str = "prrnet.format";
pub const CONFIG_KEY: &str = "prrnet.config";
pub const FORMAT_VERSION: &str = "1";

/// Keys of a timm classification checkpoint that are not part of the backbone.
const TIMM_HEAD_PREFIXES: [&str; 4] = [
    "incre_modules.",
    "downsamp_modules.",
    "final_layer.",
    "classifier.",
];

/// Our layout → PyTorch layout (`[cout,k,k,cin]` → `[cout,cin,k,k]` for convolutions).
pub fn to_torch(e: &ParamEntry, data: &[f32]) -> Vec<f32> {
    match e.kind {
        ParamKind::ConvWeight { cout, cin, k } => {
            let mut out = vec![0.0; data.len()];
            for o in 0..cout {
                for ky in 0..k {
                    for kx in 0..k {
                        for i in 0..cin {
                            out[((o * cin + i) * k + ky) * k + kx] =
                                data[((o * k + ky) * k + kx) * cin + i];
                        }
                    }
                }
            }
            out
        }
        _ => data.to_vec(),
    }
}

/// PyTorch layout → our layout.
pub fn from_torch(e: &ParamEntry, data: &[f32]) -> Vec<f32> {
    match e.kind {
        ParamKind::ConvWeight { cout, cin, k } => {
            let mut out = vec![0.0; data.len()];
            for o in 0..cout {
                for i in 0..cin {
                    for ky in 0..k {
                        for kx in 0..k {
                            out[((o * k + ky) * k + kx) * cin + i] =
                                data[((o * cin + i) * k + ky) * k + kx];
                        }
                    }
                }
            }
            out
        }
        _ => data.to_vec(),
    }
}

/// Every parameter and running statistic of `net`, PyTorch-named and laid out.
pub fn state_dict(net: &PrrNet) -> Result<TensorFile> {
    let mut f = TensorFile::default();
    for e in net.entries() {
        let v = net.read(e.tensor)?;
        f.insert(e.name.clone(), e.torch_shape(), to_torch(e, &v));
    }
    f.metadata.insert(FORMAT_KEY.into(), FORMAT_VERSION.into());
    f.metadata.insert(CONFIG_KEY.into(), net.cfg.to_json());
    Ok(f)
}

/// Write a checkpoint atomically.
pub fn save(net: &PrrNet, path: &Path) -> Result<()> {
    state_dict(net)?.write(path)
}

/// The configuration stored in a checkpoint's metadata, if any.
pub fn config_of(file: &TensorFile) -> Result<Option<Config>> {
    match file.metadata.get(CONFIG_KEY) {
        Some(s) => Config::from_json(s).map(Some),
        None => Ok(None),
    }
}

/// A loaded tensor's values must be finite (a NaN weight makes every score NaN, which no
/// threshold can judge), and a variance (`non_negative` names which) must not be negative: its
/// square root scales BatchNorm, and Adam's update.
pub(crate) fn check_values(
    data: &[f32],
    non_negative: Option<&str>,
) -> std::result::Result<(), String> {
    let bad = data.iter().filter(|v| !v.is_finite()).count();
    if bad > 0 {
        return Err(format!(
            "{bad} of {} values are not finite (NaN or infinite): the file is damaged or was \
             saved from a diverged run",
            data.len()
        ));
    }
    if let Some(what) = non_negative {
        if let Some(v) = data.iter().find(|v| **v < 0.0) {
            return Err(format!("a {what} is negative ({v})"));
        }
    }
    Ok(())
}

/// Load every entry of `net` from `file` under `prefix + entry name`. Keys in the file that the
/// model does not have are an error unless `ignore` accepts them.
fn load_entries(
    net: &PrrNet,
    file: &TensorFile,
    entries: &[&ParamEntry],
    name_in_file: impl Fn(&str) -> String,
    ignore: impl Fn(&str) -> bool,
    source: &Path,
) -> Result<()> {
    let mut wanted = BTreeSet::new();
    for e in entries {
        let key = name_in_file(&e.name);
        let a = file
            .expect(&key, &e.torch_shape())
            .map_err(|err| match err {
                Error::Key { key, msg } => Error::Key {
                    key,
                    msg: format!("{msg} in {}", source.display()),
                },
                other => other,
            })?;
        let variance = matches!(e.kind, ParamKind::RunningVar).then_some("running variance");
        check_values(&a.data, variance).map_err(|msg| Error::Key {
            key: key.clone(),
            msg: format!("{msg} in {}", source.display()),
        })?;
        net.write(e.tensor, &from_torch(e, &a.data))?;
        wanted.insert(key);
    }
    for key in file.tensors.keys() {
        if !wanted.contains(key) && !ignore(key) {
            return Err(Error::Key {
                key: key.clone(),
                msg: format!(
                    "unexpected key in {} (not a parameter of the {} model)",
                    source.display(),
                    net.cfg.preset
                ),
            });
        }
    }
    Ok(())
}

/// Load a full PRRNet checkpoint (every key of SPEC §9 must be present with its shape).
pub fn load(net: &PrrNet, path: &Path) -> Result<()> {
    let file = TensorFile::read(path)?;
    load_file(net, &file, path)
}

pub fn load_file(net: &PrrNet, file: &TensorFile, path: &Path) -> Result<()> {
    let entries: Vec<&ParamEntry> = net.entries().iter().collect();
    load_entries(
        net,
        file,
        &entries,
        |n| n.to_string(),
        |k| k.ends_with("num_batches_tracked"),
        path,
    )
    .map_err(|e| explain_model_mismatch(e, net, file))
}

/// A missing, unexpected or wrongly shaped key of a file saved from another model than the
/// one built (flags such as `--preset` override the file's configuration): say which two.
fn explain_model_mismatch(e: Error, net: &PrrNet, file: &TensorFile) -> Error {
    let Ok(Some(saved)) = config_of(file) else {
        return e;
    };
    let model = |c: &Config| format!("preset {} with n = {}, G = {}", c.preset, c.n, c.groups);
    let built = &net.cfg;
    let differs =
        saved.preset != built.preset || saved.n != built.n || saved.groups != built.groups;
    match e {
        Error::Shape { .. } | Error::Key { .. } if differs => Error::Config(format!(
            "{e}: the file was saved from {}, but {} was asked for (drop the overriding flag)",
            model(&saved),
            model(built)
        )),
        other => other,
    }
}

/// Import a timm `hrnet_w30` state dict (unprefixed timm keys) as the backbone. Head keys of the
/// classification model and `num_batches_tracked` are ignored.
pub fn import_timm(net: &PrrNet, path: &Path) -> Result<()> {
    let file = TensorFile::read(path)?;
    let entries: Vec<&ParamEntry> = net
        .entries()
        .iter()
        .filter(|e| e.name.starts_with("backbone."))
        .collect();
    load_entries(
        net,
        &file,
        &entries,
        |n| n.trim_start_matches("backbone.").to_string(),
        |k| {
            k.ends_with("num_batches_tracked")
                || TIMM_HEAD_PREFIXES.iter().any(|p| k.starts_with(p))
        },
        path,
    )
}
