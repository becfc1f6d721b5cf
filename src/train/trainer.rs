//! The training loop: schedule, steps, validation, checkpoints, metrics log and plots, resume,
//! clean interruption, and a hard stop on a non-finite loss.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::Serialize;

use super::progress::Progress;
use super::state::{self, TrainState};
use super::Schedule;
use crate::error::{Error, Result};
use crate::metrics;
use crate::model::{Batch, Mode, PrrNet};

/// One batch of training or validation data in PyTorch layouts.
#[derive(Clone, Debug, Default)]
pub struct TrainBatch {
    /// `[B, 3, S, S]`, normalised.
    pub image: Vec<f32>,
    /// `[B, 1, S, S]` in [0, 1].
    pub mask: Vec<f32>,
    /// `[B]`: 1 when the sample's mask counts for the localisation loss.
    pub mask_weight: Vec<f32>,
    /// `[B]`: 1 = fake.
    pub label: Vec<f32>,
    pub video: Vec<String>,
}

impl TrainBatch {
    pub fn len(&self) -> usize {
        self.label.len()
    }
    pub fn is_empty(&self) -> bool {
        self.label.is_empty()
    }
}

/// Where batches come from. Training batches hold `batch` samples, fewer where files could not
/// be read (the trainer fills such a batch with its own samples again, and takes an empty one
/// as a step without an update); their order and content are a pure function of
/// `(seed, epoch)`, which is what makes resuming exact.
pub trait DataSource {
    /// Batches of `epoch`, skipping the first `skip` without producing them where possible.
    fn train_batches(
        &self,
        epoch: usize,
        skip: usize,
    ) -> Box<dyn Iterator<Item = Result<TrainBatch>> + '_>;
    /// Batches per training epoch.
    fn train_steps(&self) -> usize;
    /// The validation set in fixed order; the last batch may be short.
    fn val_batches(&self) -> Box<dyn Iterator<Item = Result<TrainBatch>> + '_>;
    /// Files skipped so far (unreadable or corrupt), with the reason.
    fn skipped(&self) -> Vec<(PathBuf, String)>;
}

#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub out: PathBuf,
    pub schedule: Schedule,
    pub seed: u64,
    /// Continue from `out`'s `last` checkpoint.
    pub resume: bool,
    /// Stop after this many steps in total (for tests and quick looks); `None` = the schedule.
    pub max_steps: Option<u64>,
    /// Bracket these global steps (0-based) for an attached profiler.
    pub profile_window: Option<crate::profile::ProfileWindow>,
}

/// Validation metrics of one epoch (SPEC-independent definitions in `crate::metrics`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ValidationMetrics {
    pub accuracy: f64,
    pub auc: f64,
    pub average_precision: f64,
    pub eer: f64,
    pub video_auc: f64,
    pub pixel_auc: f64,
    pub iou: f64,
    pub loss: f64,
    pub samples: usize,
}

#[derive(Serialize)]
struct EpochLog<'a> {
    epoch: usize,
    lr: f32,
    frozen_backbone: bool,
    steps: usize,
    loss: f64,
    loss_loc: f64,
    loss_cls: f64,
    images_per_s: f64,
    seconds: f64,
    val: &'a ValidationMetrics,
    skipped_files: usize,
}

/// How training ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Finished {
        best_auc: Option<f64>,
    },
    /// Ctrl-C: the step in progress finished and `last` was written.
    Interrupted {
        global_step: u64,
    },
    /// `max_steps` reached (`last` written).
    StepLimit {
        global_step: u64,
    },
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Ask the running training loop to stop after the current step (the Ctrl-C handler calls this).
pub fn request_stop() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Fill a short (non-empty) batch up to the model's batch size with its own samples again, in
/// place and in order: sample `n + k` is sample `k mod n`. A full batch is left as it is.
fn fill_up(b: &mut TrainBatch, to: usize) {
    let n = b.len();
    if n >= to {
        return;
    }
    fn repeat(v: &mut Vec<f32>, n: usize, extra: usize) {
        let per = v.len() / n;
        for k in 0..extra {
            let i = k % n;
            v.extend_from_within(i * per..(i + 1) * per);
        }
    }
    let extra = to - n;
    repeat(&mut b.image, n, extra);
    repeat(&mut b.mask, n, extra);
    repeat(&mut b.mask_weight, n, extra);
    repeat(&mut b.label, n, extra);
}

/// Adaptive average pooling of a `[S, S]` mask to `[H, H]` (SPEC §6), on the host.
fn pool_mask(mask: &[f32], s: usize, h: usize) -> Vec<f32> {
    let mut out = vec![0f32; h * h];
    for v in 0..h {
        let (y0, y1) = crate::backend::adaptive_bin(v, s, h);
        for u in 0..h {
            let (x0, x1) = crate::backend::adaptive_bin(u, s, h);
            let mut acc = 0f64;
            for y in y0..y1 {
                for x in x0..x1 {
                    acc += mask[y * s + x] as f64;
                }
            }
            out[v * h + u] = (acc / ((y1 - y0) * (x1 - x0)) as f64) as f32;
        }
    }
    out
}

/// The result of [`evaluate`]: metrics, the ROC curve, and every score with its label.
#[derive(Clone, Debug, Default)]
pub struct Evaluation {
    pub metrics: ValidationMetrics,
    pub fpr: Vec<f64>,
    pub tpr: Vec<f64>,
    pub scores: Vec<f32>,
    pub labels: Vec<f32>,
}

/// Evaluate on the validation set (eval-mode BatchNorm) and compute the metrics.
pub fn validate(
    net: &mut PrrNet,
    data: &dyn DataSource,
) -> Result<(ValidationMetrics, Vec<f64>, Vec<f64>)> {
    let e = evaluate(net, data)?;
    Ok((e.metrics, e.fpr, e.tpr))
}

/// Run the model in eval mode over `data`'s validation batches; keep every score.
pub fn evaluate(net: &mut PrrNet, data: &dyn DataSource) -> Result<Evaluation> {
    evaluate_with_progress(net, data, None)
}

/// [`evaluate`], reporting the samples scored so far to `progress`.
pub fn evaluate_with_progress(
    net: &mut PrrNet,
    data: &dyn DataSource,
    mut progress: Option<&mut crate::progress::RunProgress>,
) -> Result<Evaluation> {
    let (b, s, h) = (net.batch, net.cfg.size, net.cfg.feature_side());
    let mut scores = Vec::new();
    let mut labels = Vec::new();
    let mut videos = Vec::new();
    // Predicted and pooled ground-truth masks `[samples, H·H]`, with the mask weights.
    let mut pred_masks: Vec<f32> = Vec::new();
    let mut gt_masks: Vec<f32> = Vec::new();
    let mut mask_weights: Vec<f32> = Vec::new();
    let mut loss_sum = 0f64;
    let mut batches = 0usize;
    for batch in data.val_batches() {
        let mut batch = batch?;
        let n = batch.len();
        if n == 0 {
            continue;
        }
        // Samples n.. are filled in; their outputs are not read.
        fill_up(&mut batch, b);
        net.set_input(&Batch {
            image: &batch.image,
            mask: Some(&batch.mask),
            label: Some(&batch.label),
            mask_weight: Some(&batch.mask_weight),
        })?;
        if net.is_inference() {
            // `prrnet eval`: the recorded forward on GPUs (plain on the CPU).
            net.forward_graph()?;
        } else {
            net.forward(Mode::EVAL)?;
        }
        loss_sum += net.losses()?.loss as f64;
        batches += 1;
        let (score, mask) = net.predictions()?;
        for i in 0..n {
            scores.push(score[i]);
            labels.push(batch.label[i]);
            videos.push(batch.video.get(i).cloned().unwrap_or_default());
            pred_masks.extend_from_slice(&mask[i * h * h..(i + 1) * h * h]);
            gt_masks.extend(pool_mask(&batch.mask[i * s * s..(i + 1) * s * s], s, h));
            mask_weights.push(batch.mask_weight[i]);
        }
        if let Some(p) = progress.as_deref_mut() {
            p.update(scores.len(), 0);
        }
    }
    let (fpr, tpr, _) = metrics::roc_curve(&scores, &labels);
    let m = ValidationMetrics {
        accuracy: metrics::accuracy(&scores, &labels, 0.5),
        auc: metrics::roc_auc(&scores, &labels),
        average_precision: metrics::average_precision(&scores, &labels),
        eer: metrics::eer(&scores, &labels),
        video_auc: metrics::video_auc(&scores, &labels, &videos),
        pixel_auc: metrics::pixel_auc(&pred_masks, &gt_masks, &mask_weights),
        iou: metrics::iou_at_05(&pred_masks, &gt_masks, &mask_weights),
        loss: loss_sum / batches.max(1) as f64,
        samples: scores.len(),
    };
    Ok(Evaluation {
        metrics: m,
        fpr,
        tpr,
        scores,
        labels,
    })
}

fn write_plots(
    out: &Path,
    history: &[(usize, f64, f64, f64, f64)],
    fpr: &[f64],
    tpr: &[f64],
    auc: f64,
) -> Result<()> {
    let pts = |k: usize| -> Vec<(f64, f64)> {
        history
            .iter()
            .map(|h| {
                let v = [h.1, h.2, h.3, h.4][k];
                (h.0 as f64 + 1.0, v)
            })
            .collect()
    };
    let (total, loc, cls, val) = (pts(0), pts(1), pts(2), pts(3));
    crate::plot::line_plot(
        &out.join("loss.png"),
        "loss per epoch",
        &[
            ("train loss", &total),
            ("train loc", &loc),
            ("train cls", &cls),
            ("val loss", &val),
        ],
        "epoch",
        "loss",
    )?;
    crate::plot::roc_plot(&out.join("roc.png"), fpr, tpr, auc)
}

/// Train `net` on `data`. The model must have been built with gradients, with the batch size
/// of the data source's training batches, and initialised (or resumed: `opts.resume`).
pub fn train(net: &mut PrrNet, data: &dyn DataSource, opts: &TrainOptions) -> Result<Outcome> {
    crate::io::create_folder(&opts.out)?;
    let log_path = opts.out.join("metrics.jsonl");
    let mut st = if opts.resume {
        let st = state::load(net, &opts.out, "last")?;
        eprintln!(
            "resuming from {}: epoch {}, step {} of it ({} steps done)",
            opts.out.join("last.safetensors").display(),
            st.epoch + 1,
            st.step_in_epoch,
            st.global_step
        );
        st
    } else {
        std::fs::write(&log_path, b"").map_err(|e| Error::io(&log_path, e))?;
        TrainState {
            epoch: 0,
            step_in_epoch: 0,
            global_step: 0,
            adam_steps: net.adam_steps(),
            best_auc: None,
            seed: opts.seed,
        }
    };
    // The log of the epochs the checkpoint completed. An epoch's line is written before its
    // `last` checkpoint, so a crash between the two leaves a line for an epoch the resumed
    // run does again: dropped here, the log keeps one line per epoch.
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let logged: Vec<(&str, serde_json::Value)> = text
        .lines()
        .filter_map(|l| Some((l, serde_json::from_str::<serde_json::Value>(l).ok()?)))
        .filter(|(_, v)| v["epoch"].as_u64().is_some_and(|e| (e as usize) < st.epoch))
        .collect();
    if opts.resume {
        let kept: String = logged.iter().map(|(l, _)| format!("{l}\n")).collect();
        if kept != text {
            crate::io::tensors::write_atomic(&log_path, kept.as_bytes())?;
        }
    }
    // Loss history for the plots.
    let mut history: Vec<(usize, f64, f64, f64, f64)> = logged
        .iter()
        .map(|(_, v)| {
            (
                v["epoch"].as_u64().unwrap_or(0) as usize,
                v["loss"].as_f64().unwrap_or(f64::NAN),
                v["loss_loc"].as_f64().unwrap_or(f64::NAN),
                v["loss_cls"].as_f64().unwrap_or(f64::NAN),
                v["val"]["loss"].as_f64().unwrap_or(f64::NAN),
            )
        })
        .collect();
    let steps = data.train_steps();
    if steps == 0 {
        return Err(Error::Config(
            "the training set has fewer samples than one batch".into(),
        ));
    }
    INTERRUPTED.store(false, Ordering::SeqCst);
    let mut prof = crate::profile::Profiling::new(opts.profile_window);
    while st.epoch < opts.schedule.epochs {
        let epoch = st.epoch;
        let (lr, frozen) = opts.schedule.phase(epoch);
        let mode = Mode {
            train_bn: true,
            frozen_backbone: frozen,
        };
        let started = Instant::now();
        let mut progress = Progress::new(epoch, steps);
        let (mut sum, mut sum_loc, mut sum_cls, mut n) = (0f64, 0f64, 0f64, 0usize);
        let whole_epoch = st.step_in_epoch == 0;
        for batch in data.train_batches(epoch, st.step_in_epoch) {
            let step = st.step_in_epoch;
            let batch = batch?;
            if batch.is_empty() {
                // Every file of this batch was unreadable (each reported): a step without an
                // update, still counted, so that a resumed run skips the same batches.
                st.step_in_epoch += 1;
                continue;
            }
            // A batch shortened by unreadable files is filled with its own samples again: the
            // network is planned for exactly `net.batch`.
            let mut batch = batch;
            fill_up(&mut batch, net.batch);
            prof.before(net.backend(), st.global_step)?;
            net.set_input(&Batch {
                image: &batch.image,
                mask: Some(&batch.mask),
                label: Some(&batch.label),
                mask_weight: Some(&batch.mask_weight),
            })?;
            net.forward(mode)?;
            let l = net.losses()?;
            if !l.loss.is_finite() {
                return Err(Error::Numeric(format!(
                    "non-finite loss ({}; loc {}, cls {}) at epoch {} step {} (global step {}); \
                     weights were not updated, the last good checkpoint is in {}",
                    l.loss,
                    l.loc,
                    l.cls,
                    epoch + 1,
                    step + 1,
                    st.global_step + 1,
                    opts.out.display()
                )));
            }
            net.backward(mode, false)?;
            net.adam_step(lr, frozen)?;
            sum += l.loss as f64;
            sum_loc += l.loc as f64;
            sum_cls += l.cls as f64;
            n += 1;
            st.step_in_epoch += 1;
            st.global_step += 1;
            st.adam_steps = net.adam_steps();
            progress.step(step, batch.len(), l.loss, l.loc, l.cls);
            let limit = opts.max_steps.is_some_and(|m| st.global_step >= m);
            if INTERRUPTED.load(Ordering::SeqCst) || limit {
                prof.finish(net.backend())?;
                state::save(net, &opts.out, "last", &st)?;
                eprintln!(
                    "\nstopped after step {} (epoch {}); checkpoint written to {}",
                    st.global_step,
                    epoch + 1,
                    opts.out.join("last.safetensors").display()
                );
                return Ok(if limit {
                    Outcome::StepLimit {
                        global_step: st.global_step,
                    }
                } else {
                    Outcome::Interrupted {
                        global_step: st.global_step,
                    }
                });
            }
        }
        if n == 0 && whole_epoch {
            // Not a single readable sample in a whole epoch: training would "finish" having
            // learnt nothing.
            return Err(Error::Other(format!(
                "epoch {} read no training sample: every file of the training set failed \
                 (each is reported above)",
                epoch + 1
            )));
        }
        let seconds = started.elapsed().as_secs_f64();
        let images_per_s = progress.images_per_s();
        let (val, fpr, tpr) = validate(net, data)?;
        let skipped = data.skipped();
        eprintln!(
            "epoch {} done in {seconds:.1}s: train loss {:.4}; val AUC {:.4} acc {:.4} AP {:.4} EER {:.4} video AUC {:.4} pixel AUC {:.4} IoU {:.4}",
            epoch + 1,
            sum / n.max(1) as f64,
            val.auc,
            val.accuracy,
            val.average_precision,
            val.eer,
            val.video_auc,
            val.pixel_auc,
            val.iou
        );
        st.epoch += 1;
        st.step_in_epoch = 0;
        let improved = val.auc.is_finite() && st.best_auc.is_none_or(|b| val.auc > b);
        if improved {
            st.best_auc = Some(val.auc);
        }
        // `best`, the log line, then `last`: until `last` records the epoch as done, a resumed
        // run does it again, which rewrites the other two.
        if improved {
            state::save(net, &opts.out, "best", &st)?;
        }
        let line = EpochLog {
            epoch,
            lr,
            frozen_backbone: frozen,
            steps: n,
            loss: sum / n.max(1) as f64,
            loss_loc: sum_loc / n.max(1) as f64,
            loss_cls: sum_cls / n.max(1) as f64,
            images_per_s,
            seconds,
            val: &val,
            skipped_files: skipped.len(),
        };
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&log_path)
            .map_err(|e| Error::io(&log_path, e))?;
        writeln!(
            f,
            "{}",
            serde_json::to_string(&line).expect("log serialises")
        )
        .map_err(|e| Error::io(&log_path, e))?;
        drop(f);
        state::save(net, &opts.out, "last", &st)?;
        history.push((epoch, line.loss, line.loss_loc, line.loss_cls, val.loss));
        write_plots(&opts.out, &history, &fpr, &tpr, val.auc)?;
    }
    prof.finish(net.backend())?;
    Ok(Outcome::Finished {
        best_auc: st.best_auc,
    })
}
