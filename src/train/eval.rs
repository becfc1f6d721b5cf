//! `prrnet eval`: the validation metrics of training on a whole labelled dataset, written as
//! JSON, with ROC and score-histogram plots.

use std::path::Path;

use serde::Serialize;

use super::source::LoaderSource;
use super::trainer::{evaluate_with_progress, ValidationMetrics};
use crate::backend::Precision;
use crate::data::dataset::{self, Sample};
use crate::data::loader::LoaderOptions;
use crate::error::{Error, Result};
use crate::model::PrrNet;

#[derive(Serialize)]
struct Report<'a> {
    weights: String,
    data: String,
    model: &'a crate::Config,
    /// The operands' precision on the device (fp32 | tf32 | bf16).
    precision: String,
    skipped_files: Vec<(String, String)>,
    #[serde(flatten)]
    metrics: &'a ValidationMetrics,
}

/// The samples of the labelled dataset at `data` (an error when it has none).
pub fn samples(data: &Path) -> Result<Vec<Sample>> {
    let samples = dataset::load(data)?;
    if samples.is_empty() {
        return Err(Error::file(data, "the dataset has no samples"));
    }
    Ok(samples)
}

/// Score `samples` (from [`samples`], read from `data`) with `net` (eval mode) and write
/// `out/metrics.json`, `out/roc.png`, `out/scores.png`. Returns the metrics.
pub fn run(
    net: &mut PrrNet,
    weights: &Path,
    data: &Path,
    samples: Vec<Sample>,
    out: &Path,
    workers: usize,
    precision: Precision,
) -> Result<ValidationMetrics> {
    let opts = LoaderOptions {
        workers,
        ..LoaderOptions::eval(net.cfg.size, net.batch, None)
    };
    let total = samples.len();
    let source = LoaderSource::new(Vec::new(), samples, opts.clone(), opts);
    let mut progress = crate::progress::RunProgress::new("prrnet eval", total);
    let ev = evaluate_with_progress(net, &source, Some(&mut progress));
    progress.finish();
    let ev = ev?;
    if ev.scores.is_empty() {
        return Err(Error::file(
            data,
            format!("none of its {total} samples could be read (each is reported above)"),
        ));
    }
    // Metrics over NaN scores would look like numbers and mean nothing (detect makes such an
    // input an error record; here the whole evaluation is in question).
    let bad = ev.scores.iter().filter(|s| !s.is_finite()).count();
    if bad > 0 {
        return Err(Error::Numeric(format!(
            "{bad} of {} scores are not finite: the network gave no usable output with {}",
            ev.scores.len(),
            weights.display()
        )));
    }
    crate::io::create_folder(out)?;
    // Each was printed when the loader met it; the report lists them too.
    let skipped = crate::train::DataSource::skipped(&source);
    let report = Report {
        weights: weights.display().to_string(),
        data: data.display().to_string(),
        model: &net.cfg,
        precision: precision.to_string(),
        skipped_files: skipped
            .iter()
            .map(|(p, w)| (p.display().to_string(), w.clone()))
            .collect(),
        metrics: &ev.metrics,
    };
    let json = serde_json::to_string_pretty(&report).expect("report serialises");
    crate::io::tensors::write_atomic(&out.join("metrics.json"), json.as_bytes())?;
    crate::plot::roc_plot(&out.join("roc.png"), &ev.fpr, &ev.tpr, ev.metrics.auc)?;
    let hist = |label: f32| -> Vec<(f64, f64)> {
        const BINS: usize = 20;
        let mut counts = [0usize; BINS];
        let mut n = 0usize;
        for (s, l) in ev.scores.iter().zip(&ev.labels) {
            if *l == label && s.is_finite() {
                counts[((*s as f64 * BINS as f64) as usize).min(BINS - 1)] += 1;
                n += 1;
            }
        }
        (0..BINS)
            .map(|k| {
                (
                    (k as f64 + 0.5) / BINS as f64,
                    counts[k] as f64 / n.max(1) as f64,
                )
            })
            .collect()
    };
    let (real, fake) = (hist(0.0), hist(1.0));
    crate::plot::line_plot(
        &out.join("scores.png"),
        "score histogram",
        &[("real", &real), ("fake", &fake)],
        "score",
        "fraction",
    )?;
    Ok(ev.metrics)
}
