//! Training checkpoints: the model file (SPEC §9, loadable by `prrnet`) plus a second file beside
//! it holding the Adam moments and the training progress, both written atomically. The progress
//! is stored in both files' metadata, so a pair that does not belong together is detected.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::io::checkpoint;
use crate::io::tensors::TensorFile;
use crate::model::PrrNet;

const STATE_KEY: &str = "prrnet.train_state";

/// Where training stands after the last completed step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// 0-based epoch in progress (or the next one when `step_in_epoch == 0`).
    pub epoch: usize,
    /// Steps of `epoch` already done.
    pub step_in_epoch: usize,
    pub global_step: u64,
    pub adam_steps: u64,
    pub best_auc: Option<f64>,
    pub seed: u64,
}

/// The model file and the optimizer file of checkpoint `name` in `dir`.
pub fn paths(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{name}.safetensors")),
        dir.join(format!("{name}.optim.safetensors")),
    )
}

/// The kernels chosen by measurement beside checkpoint `name` (GPU runs; see
/// `Backend::saved_kernel_choices`).
pub fn kernels_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.kernels.json"))
}

/// Save model + optimizer + progress. Both files are written in full under temporary names
/// first, then renamed into place one right after the other: a failed write (a full disk)
/// leaves the previous pair whole, and only a crash between the two renames (no I/O between
/// them) can leave a pair whose states differ, which `load` rejects. Before them, where the
/// backend chose kernels by measurement, those choices (`{name}.kernels.json`), so that a
/// resumed run computes with the same kernels.
pub fn save(net: &PrrNet, dir: &Path, name: &str, st: &TrainState) -> Result<()> {
    let (model_path, optim_path) = paths(dir, name);
    if let Some(json) = net.backend().saved_kernel_choices() {
        crate::io::tensors::write_atomic(&kernels_path(dir, name), json.as_bytes())?;
    }
    let json = serde_json::to_string(st).expect("state serialises");
    let mut optim = TensorFile::default();
    let (m, v) = net.adam_moments()?;
    let len = m.len;
    optim.insert("adam.m", vec![len], net.read(m)?);
    optim.insert("adam.v", vec![len], net.read(v)?);
    optim.metadata.insert(STATE_KEY.into(), json.clone());
    let optim = optim.stage(&optim_path)?;
    let mut model = checkpoint::state_dict(net)?;
    model.metadata.insert(STATE_KEY.into(), json);
    let model = model.stage(&model_path)?;
    optim.commit()?;
    model.commit()
}

/// Load a checkpoint pair saved by [`save`] into `net`; returns the progress.
pub fn load(net: &mut PrrNet, dir: &Path, name: &str) -> Result<TrainState> {
    let (model_path, optim_path) = paths(dir, name);
    let model = TensorFile::read(&model_path)?;
    let optim = TensorFile::read(&optim_path)?;
    let state_of = |f: &TensorFile, p: &Path| -> Result<TrainState> {
        let s = f
            .metadata
            .get(STATE_KEY)
            .ok_or_else(|| Error::file(p, "no training state in the metadata"))?;
        serde_json::from_str(s).map_err(|e| Error::file(p, format!("bad training state: {e}")))
    };
    let st = state_of(&model, &model_path)?;
    if state_of(&optim, &optim_path)? != st {
        return Err(Error::file(
            &optim_path,
            format!(
                "does not belong to {} (different training step)",
                model_path.display()
            ),
        ));
    }
    if let Some(cfg) = checkpoint::config_of(&model)? {
        if cfg != net.cfg {
            return Err(Error::Config(format!(
                "{} was trained with {}, this run uses {}",
                model_path.display(),
                cfg.to_json(),
                net.cfg.to_json()
            )));
        }
    }
    checkpoint::load_file(net, &model, &model_path)?;
    let (m, v) = net.adam_moments()?;
    let am = optim.expect("adam.m", &[m.len])?;
    let av = optim.expect("adam.v", &[v.len])?;
    // Checked as the weights are (checkpoint::load_file): a NaN moment would make every later
    // update NaN.
    let moments = checkpoint::check_values(&am.data, None)
        .and_then(|()| checkpoint::check_values(&av.data, Some("second moment")));
    if moments.is_err() {
        return Err(Error::file(
            &optim_path,
            "the Adam moments hold non-finite values or a negative second moment: the file is \
             damaged",
        ));
    }
    net.write(m, &am.data)?;
    net.write(v, &av.data)?;
    net.set_adam_steps(st.adam_steps);
    restore_kernels(net, &kernels_path(dir, name));
    Ok(st)
}

/// The kernel choices saved beside a checkpoint, where there are any. They only decide which of
/// several correct kernels runs, so an unreadable file costs exactness against the interrupted
/// run, not the resume: it is reported and the kernels are measured again.
fn restore_kernels(net: &PrrNet, path: &Path) {
    let Ok(json) = std::fs::read_to_string(path) else {
        return;
    };
    if let Err(e) = net.backend().restore_kernel_choices(&json) {
        eprintln!(
            "warning: {}: {e}; the kernels are chosen again, so results may differ from the \
             interrupted run within rounding",
            path.display()
        );
    }
}
