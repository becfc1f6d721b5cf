//! Throughput measurement shared by `prrnet bench` and `benches/`: random non-zero inputs,
//! warm-up, then per-iteration timing (host clock after a device synchronisation), reported
//! with the same JSON fields as `reference/bench.py`.

use std::time::Instant;

use serde::Serialize;

use crate::backend::Backend;
use crate::config::Config;
use crate::error::Result;
use crate::model::{Batch, Mode, PrrNet};
use crate::rng::Rng;

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub cfg: Config,
    pub batch: usize,
    pub train: bool,
    pub iters: usize,
    pub warmup: usize,
    pub precision: String,
    /// Also time every stage (synchronising around each).
    pub breakdown: bool,
    /// Bracket these iterations (warm-up included, 0-based) for an attached profiler.
    pub profile_window: Option<crate::profile::ProfileWindow>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    #[serde(rename = "impl")]
    pub implementation: String,
    pub device: String,
    pub preset: String,
    pub size: usize,
    pub batch: usize,
    pub precision: String,
    pub mode: String,
    pub iters: usize,
    pub ms_median: f64,
    pub ms_min: f64,
    pub ms_max: f64,
    pub images_per_s: f64,
    pub peak_mem_bytes: u64,
    /// Median milliseconds per stage (with `breakdown`), in execution order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<(String, f64)>,
}

/// The process's peak resident memory (Linux `VmHWM`), 0 where unknown.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Time `iters` inference passes (eval mode) or training steps (train-mode forward, backward,
/// Adam at lr 2e-4) after `warmup` untimed ones.
pub fn run(be: Box<dyn Backend>, o: &BenchOptions) -> Result<BenchResult> {
    be.set_precision(o.precision.parse()?)?;
    let device = be.name();
    let (b, s) = (o.batch, o.cfg.size);
    let mut net = PrrNet::new(&o.cfg, be, b, o.train)?;
    net.init_weights(0)?;
    let mut rng = Rng::new(42);
    let image = rng.vec(b * 3 * s * s, |r| r.normal());
    let label: Vec<f32> = (0..b).map(|i| (i % 2) as f32).collect();
    let mask = rng.vec(b * s * s, |r| r.uniform());
    net.set_input(&Batch {
        image: &image,
        mask: o.train.then_some(mask.as_slice()),
        label: o.train.then_some(label.as_slice()),
        mask_weight: None,
    })?;
    let step = |net: &mut PrrNet| -> Result<()> {
        if o.train {
            net.forward(Mode::TRAIN)?;
            net.backward(Mode::TRAIN, false)?;
            net.adam_step(2e-4, false)?;
        } else {
            net.forward(Mode::EVAL)?;
        }
        net.synchronize()
    };
    let mut prof = crate::profile::Profiling::new(o.profile_window);
    let mut iteration = 0u64;
    for _ in 0..o.warmup {
        prof.before(net.backend(), iteration)?;
        step(&mut net)?;
        iteration += 1;
    }
    let mut ms = Vec::with_capacity(o.iters);
    for _ in 0..o.iters.max(1) {
        prof.before(net.backend(), iteration)?;
        let t = Instant::now();
        step(&mut net)?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        iteration += 1;
    }
    prof.finish(net.backend())?;
    // The breakdown runs separately so its synchronisations do not disturb the step timing.
    let mut per_stage: Vec<(String, Vec<f64>)> = Vec::new();
    if o.breakdown {
        net.set_profiling(true);
        for _ in 0..o.iters.max(1) {
            step(&mut net)?;
            for (i, (name, t)) in net.take_stage_times().into_iter().enumerate() {
                if per_stage.len() <= i {
                    per_stage.push((name.to_string(), Vec::new()));
                }
                per_stage[i].1.push(t);
            }
        }
        net.set_profiling(false);
    }
    let stages = per_stage
        .into_iter()
        .map(|(name, mut v)| {
            v.sort_by(f64::total_cmp);
            (name, v[v.len() / 2])
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    let median = ms[ms.len() / 2];
    Ok(BenchResult {
        implementation: "prrnet".into(),
        device,
        preset: o.cfg.preset.clone(),
        size: s,
        batch: b,
        precision: o.precision.clone(),
        mode: if o.train { "train" } else { "infer" }.into(),
        iters: ms.len(),
        ms_median: median,
        ms_min: ms[0],
        ms_max: ms[ms.len() - 1],
        images_per_s: b as f64 / (median / 1e3),
        // On a GPU: our buffers and workspace (grow-only, so the current total is the peak),
        // comparable to PyTorch's `max_memory_allocated`. On the CPU: the process's peak RSS.
        peak_mem_bytes: if net.backend().is_host() {
            peak_rss_bytes().max(net.backend().allocated_bytes() as u64)
        } else {
            net.backend().allocated_bytes() as u64
        },
        stages,
    })
}
