//! Throughput measurement shared by `prrnet bench` and `benches/`: random non-zero inputs,
//! warm-up, then per-iteration timing, reported with the same JSON fields as
//! `reference/bench.py`. Iterations are timed with the backend's markers
//! ([`Backend::timer_mark`]): CUDA events on a GPU (as bench.py does), the host clock on the
//! CPU. `breakdown` adds per-stage device times (markers around every stage, read once per
//! step) and the per-stage cost model (FLOPs, minimum bytes) of [`stage_costs`].

use serde::Serialize;

use crate::backend::count::{ConvUse, CostHandle, CountBackend, StageCost, OTHER};
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
    /// Also time every stage (device markers around each, no synchronisation) and attach the
    /// cost model.
    pub breakdown: bool,
    /// Bracket these iterations (warm-up included, 0-based) for an attached profiler.
    pub profile_window: Option<crate::profile::ProfileWindow>,
    /// Inference: replay the forward as a recorded CUDA graph (where the backend has graphs).
    pub graph: bool,
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
    /// How the network ran: `train` (training plan), `inference` (folded inference plan, plain
    /// launches) or `inference+graph` (the same, replayed as a CUDA graph).
    pub plan: String,
    pub iters: usize,
    pub ms_median: f64,
    pub ms_min: f64,
    pub ms_max: f64,
    pub images_per_s: f64,
    pub peak_mem_bytes: u64,
    /// How iterations and stages were timed: `cuda-events` or `host-clock`.
    pub timer: String,
    /// On a GPU: how convolutions ran (`auto`, `halo`, `implicit` or `im2col`,
    /// `PRRNET_CONV_ALGO`), so the algorithms can be compared run against run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conv_algo: Option<String>,
    /// On a GPU: every kernel chosen by measurement during the run (convolution paths under
    /// `auto`, relation versions), with the times of the candidates it was chosen from.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kernel_choices: Vec<crate::backend::KernelChoice>,
    /// Median milliseconds per stage (with `breakdown`), in execution order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<(String, f64)>,
    /// With `breakdown`: per stage, the median device time and the cost model's work, then
    /// `other` (the step's time outside every stage, and the work enqueued there).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub breakdown: Vec<StageRecord>,
    /// With `breakdown`: the median time of a whole step during the breakdown iterations
    /// (markers around the step), for comparison with `ms_median`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breakdown_step_ms: Option<f64>,
}

/// One stage of the breakdown.
#[derive(Clone, Debug, Serialize)]
pub struct StageRecord {
    pub stage: String,
    /// Median milliseconds.
    pub ms: f64,
    /// The cost model's FLOPs (10⁹) and, of those, matrix-product FLOPs.
    pub gflop: f64,
    pub matmul_gflop: f64,
    /// The cost model's minimum DRAM traffic (10⁹ bytes).
    pub gbytes: f64,
}

/// The cost model: per-stage FLOPs and minimum bytes of one inference pass (eval mode) or one
/// training step (forward, backward, Adam) of `cfg` at `batch`, computed by running the model
/// over the counting backend ([`CountBackend`]): nothing is allocated or computed. Stages in
/// execution order; work outside every stage (the backward's gradient zeroing) last, as
/// `other`, when there is some.
pub fn stage_costs(cfg: &Config, batch: usize, train: bool) -> Result<Vec<StageCost>> {
    let mut stages = count_step(cfg, batch, train)?.stages();
    // `other` last, whatever order it first appeared in.
    if let Some(i) = stages.iter().position(|c| c.stage == OTHER) {
        let o = stages.remove(i);
        stages.push(o);
    }
    Ok(stages)
}

/// The convolution shapes of one step (as [`stage_costs`]), each with its call counts.
pub fn conv_uses(cfg: &Config, batch: usize, train: bool) -> Result<Vec<ConvUse>> {
    Ok(count_step(cfg, batch, train)?.conv_uses())
}

/// One inference forward or training step of `cfg` at `batch` over the counting backend.
/// Inference counts the inference plan (`PrrNet::new_inference`: BatchNorm folded into the
/// convolutions, each unit's epilogue fused), the way `detect` and `bench` run it; the first
/// forward folds and is not counted.
fn count_step(cfg: &Config, batch: usize, train: bool) -> Result<CostHandle> {
    let be = CountBackend::new();
    let costs = be.costs();
    let (b, s) = (batch, cfg.size);
    let mut net = if train {
        PrrNet::new(cfg, Box::new(be), b, true)?
    } else {
        PrrNet::new_inference(cfg, Box::new(be), b)?
    };
    let image = vec![0.0f32; b * 3 * s * s];
    let label = vec![0.0f32; b];
    let mask = vec![0.0f32; b * s * s];
    net.set_input(&Batch {
        image: &image,
        mask: train.then_some(mask.as_slice()),
        label: train.then_some(label.as_slice()),
        mask_weight: None,
    })?;
    costs.reset();
    if train {
        net.forward(Mode::TRAIN)?;
        net.backward(Mode::TRAIN, false)?;
        net.adam_step(2e-4, false)?;
    } else {
        net.forward(Mode::EVAL)?;
        costs.reset();
        net.forward(Mode::EVAL)?;
    }
    Ok(costs)
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
    let graph = !o.train && o.graph && be.supports_graphs();
    // Inference runs the plan `detect` uses: BatchNorm folded, activations reused.
    let mut net = if o.train {
        PrrNet::new(&o.cfg, be, b, true)?
    } else {
        PrrNet::new_inference(&o.cfg, be, b)?
    };
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
    // Enqueue one step (no synchronisation).
    let step = |net: &mut PrrNet| -> Result<()> {
        if o.train {
            net.forward(Mode::TRAIN)?;
            net.backward(Mode::TRAIN, false)?;
            net.adam_step(2e-4, false)
        } else if graph {
            net.forward_graph()
        } else {
            net.forward(Mode::EVAL)
        }
    };
    // Markers around the step, as bench.py records CUDA events around its step.
    let timed_step = |net: &mut PrrNet| -> Result<f64> {
        let a = net.backend().timer_mark()?;
        step(net)?;
        let b = net.backend().timer_mark()?;
        let t = net.backend().timer_elapsed_ms(&a, &b)?;
        net.synchronize()?;
        Ok(t)
    };
    let mut prof = crate::profile::Profiling::new(o.profile_window);
    let mut iteration = 0u64;
    for _ in 0..o.warmup {
        prof.before(net.backend(), iteration)?;
        step(&mut net)?;
        net.synchronize()?;
        iteration += 1;
    }
    let mut ms = Vec::with_capacity(o.iters);
    for _ in 0..o.iters.max(1) {
        prof.before(net.backend(), iteration)?;
        ms.push(timed_step(&mut net)?);
        iteration += 1;
    }
    prof.finish(net.backend())?;
    // The breakdown runs separately so that its markers do not disturb the step timing.
    let mut per_stage: Vec<(String, Vec<f64>)> = Vec::new();
    let mut step_ms = Vec::new();
    let mut outside = Vec::new();
    if o.breakdown {
        net.set_profiling(true);
        for _ in 0..o.iters.max(1) {
            let t = timed_step(&mut net)?;
            let times = net.take_stage_times()?;
            outside.push(t - times.iter().map(|(_, t)| t).sum::<f64>());
            step_ms.push(t);
            for (i, (name, t)) in times.into_iter().enumerate() {
                if per_stage.len() <= i {
                    per_stage.push((name.to_string(), Vec::new()));
                }
                per_stage[i].1.push(t);
            }
        }
        net.set_profiling(false);
    }
    let stages: Vec<(String, f64)> = per_stage
        .into_iter()
        .map(|(name, v)| (name, median(v)))
        .collect();
    // On a GPU: our buffers and workspace (grow-only, so the current total is the peak),
    // comparable to PyTorch's `max_memory_allocated`. On the CPU: the process's peak RSS
    // (read before the cost model below allocates its dummy inputs).
    let peak_mem_bytes = if net.backend().is_host() {
        peak_rss_bytes().max(net.backend().allocated_bytes() as u64)
    } else {
        net.backend().allocated_bytes() as u64
    };
    let breakdown = if o.breakdown {
        let costs = stage_costs(&o.cfg, b, o.train)?;
        let cost = |name: &str| costs.iter().find(|c| c.stage == name);
        let record = |name: &str, ms: f64| {
            let c = cost(name).cloned().unwrap_or_default();
            StageRecord {
                stage: name.to_string(),
                ms,
                gflop: c.flop / 1e9,
                matmul_gflop: c.matmul_flop / 1e9,
                gbytes: c.bytes / 1e9,
            }
        };
        let mut v: Vec<StageRecord> = stages.iter().map(|(n, t)| record(n, *t)).collect();
        v.push(record(OTHER, median(outside).max(0.0)));
        v
    } else {
        Vec::new()
    };
    ms.sort_by(f64::total_cmp);
    let med = ms[ms.len() / 2];
    Ok(BenchResult {
        implementation: "prrnet".into(),
        device,
        preset: o.cfg.preset.clone(),
        size: s,
        batch: b,
        precision: o.precision.clone(),
        mode: if o.train { "train" } else { "infer" }.into(),
        plan: match (o.train, graph) {
            (true, _) => "train",
            (false, false) => "inference",
            (false, true) => "inference+graph",
        }
        .into(),
        iters: ms.len(),
        ms_median: med,
        ms_min: ms[0],
        ms_max: ms[ms.len() - 1],
        images_per_s: b as f64 / (med / 1e3),
        peak_mem_bytes,
        timer: if net.backend().is_host() {
            "host-clock"
        } else {
            "cuda-events"
        }
        .into(),
        // The algorithm the CUDA backend read from the environment when it was created.
        conv_algo: if net.backend().is_host() {
            None
        } else {
            Some(
                crate::backend::cuda::ConvAlgo::from_env()?
                    .name()
                    .to_string(),
            )
        },
        kernel_choices: net.backend().kernel_choices(),
        stages,
        breakdown,
        breakdown_step_ms: (!step_ms.is_empty()).then(|| median(step_ms)),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ConvShape;

    fn stage<'a>(c: &'a [StageCost], name: &str) -> &'a StageCost {
        c.iter().find(|c| c.stage == name).expect(name)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-6 * b.abs()
    }

    /// The matrix-product FLOPs agree with PyTorch's `torch.utils.flop_counter.FlopCounterMode`
    /// on reference/prrnet_ref.py (PyTorch 2.x, counted on the CPU): W30 at 299×299, batch 1,
    /// backbone forward 26.08208172 GFLOP, whole forward 56.094993724, backbone forward +
    /// backward 78.16848516 (no gradient for the image); tiny at 64×64, batch 2: 0.01031168,
    /// 0.053598464 and 0.029165568.
    #[test]
    fn matmul_flops_match_pytorch_flop_counter() {
        let w30 = Config::preset("w30").unwrap();
        let c = stage_costs(&w30, 1, true).unwrap();
        let mm = |n: &str| stage(&c, n).matmul_flop;
        assert!(close(mm("fwd.backbone"), 26.08208172e9));
        let fwd: f64 = c
            .iter()
            .filter(|s| s.stage.starts_with("fwd."))
            .map(|s| s.matmul_flop)
            .sum();
        assert!(close(fwd, 56.094993724e9), "{fwd}");
        assert!(close(
            mm("fwd.backbone") + mm("bwd.backbone"),
            78.16848516e9
        ));
        // The relation map: 2·N²·C per image forward (N = 75², C = 450), 3× that backward.
        let n = 75.0f64 * 75.0;
        assert_eq!(mm("fwd.relation"), 2.0 * n * n * 450.0);
        assert_eq!(mm("bwd.relation"), 3.0 * mm("fwd.relation"));

        let tiny = Config::preset("tiny").unwrap();
        let c = stage_costs(&tiny, 2, true).unwrap();
        let mm = |n: &str| stage(&c, n).matmul_flop;
        assert!(close(mm("fwd.backbone"), 0.01031168e9));
        let fwd: f64 = c
            .iter()
            .filter(|s| s.stage.starts_with("fwd."))
            .map(|s| s.matmul_flop)
            .sum();
        assert!(close(fwd, 0.053598464e9), "{fwd}");
        assert!(close(
            mm("fwd.backbone") + mm("bwd.backbone"),
            0.029165568e9
        ));
    }

    #[test]
    fn conv_uses_count_every_w30_convolution_shape() {
        let w30 = Config::preset("w30").unwrap();
        let uses = conv_uses(&w30, 2, true).unwrap();
        let find = |s: ConvShape| uses.iter().find(|u| u.shape == s).copied();
        // The 75×75 branch's BasicBlock convolutions: stage2 1 module, stage3 4, stage4 3, each
        // with 4 blocks of 2 convolutions.
        let b0 = find(ConvShape::new(2, 75, 75, 30, 30, 3, 1, 1)).expect("branch-0 3×3");
        assert_eq!(b0.forward, 8 * (1 + 4 + 3));
        assert_eq!(
            (b0.backward_data, b0.backward_weight),
            (b0.forward, b0.forward)
        );
        // The stem's first convolution has no data gradient (its input is the image).
        let stem = find(ConvShape::new(2, 299, 299, 3, 64, 3, 2, 1)).expect("stem conv1");
        assert_eq!(
            (stem.forward, stem.backward_data, stem.backward_weight),
            (1, 0, 1)
        );
        // Inference: forward only, the same shapes.
        let infer = conv_uses(&w30, 2, false).unwrap();
        assert_eq!(infer.len(), uses.len());
        assert!(infer
            .iter()
            .all(|u| u.backward_data == 0 && u.backward_weight == 0 && u.forward > 0));
    }

    #[test]
    fn costs_cover_every_stage_and_scale_with_the_batch() {
        let tiny = Config::preset("tiny").unwrap();
        let one = stage_costs(&tiny, 1, true).unwrap();
        let three = stage_costs(&tiny, 3, true).unwrap();
        let names: Vec<&str> = one.iter().map(|c| c.stage.as_str()).collect();
        assert_eq!(
            names,
            [
                "fwd.backbone",
                "fwd.aggregation",
                "fwd.relation",
                "fwd.pr_heads",
                "fwd.rr",
                "fwd.losses",
                "bwd.losses",
                "bwd.rr",
                "bwd.pr_heads",
                "bwd.relation",
                "bwd.aggregation",
                "bwd.backbone",
                "optimizer",
                OTHER
            ]
        );
        for (a, b) in one.iter().zip(&three) {
            assert!(a.bytes > 0.0, "{}", a.stage);
            assert!(b.bytes >= a.bytes, "{}", a.stage);
            if a.stage == "optimizer" || a.stage == OTHER {
                continue;
            }
            assert!(a.flop > 0.0, "{}", a.stage);
            // Per-image work: linear in the batch (BatchNorm1d over the batch included).
            assert!(
                close(b.flop, 3.0 * a.flop),
                "{}: {} vs {}",
                a.stage,
                b.flop,
                a.flop
            );
        }
        // The optimizer touches every parameter once: 7 f32 arrays' worth of traffic.
        let net = PrrNet::new(&tiny, Box::new(CountBackend::new()), 1, true).unwrap();
        let params = net.arena_sizes().0 as f64;
        assert_eq!(stage(&one, "optimizer").bytes, 7.0 * 4.0 * params);
        // Inference: forward stages only, no losses without labels.
        let infer = stage_costs(&tiny, 1, false).unwrap();
        assert_eq!(infer.len(), 5);
        assert!(infer.iter().all(|c| c.stage.starts_with("fwd.")));
    }

    #[test]
    fn breakdown_reports_time_and_cost_per_stage_on_the_cpu() {
        let r = run(
            Box::new(crate::backend::cpu::CpuBackend::new()),
            &BenchOptions {
                cfg: Config::preset("tiny").unwrap(),
                batch: 2,
                train: true,
                iters: 2,
                warmup: 0,
                precision: "fp32".into(),
                breakdown: true,
                profile_window: None,
                graph: true,
            },
        )
        .unwrap();
        assert_eq!(r.timer, "host-clock");
        assert_eq!(r.breakdown.len(), r.stages.len() + 1);
        for (rec, (name, ms)) in r.breakdown.iter().zip(&r.stages) {
            assert_eq!(&rec.stage, name);
            assert_eq!(rec.ms, *ms);
            assert!(rec.ms >= 0.0 && rec.gbytes > 0.0, "{rec:?}");
        }
        let total: f64 = r.breakdown.iter().map(|s| s.ms).sum();
        let step = r.breakdown_step_ms.unwrap();
        assert!(total > 0.0 && step > 0.0);
        assert_eq!(r.breakdown.last().unwrap().stage, OTHER);
    }
}
