//! Choosing kernels by measurement: the convolutions under [`super::ConvAlgo::Auto`] (the
//! default) and the relation map when `PRRNET_RELATION_VERSION` does not name a version.
//!
//! The first time a key is seen (a convolution's pass, precision, shape and operand alignment;
//! the relation's direction, precision and shape), every candidate that can compute it (the
//! convolution paths of [`super::conv_implicit::ConvPath`], the relation's tensor-core versions)
//! runs on the call's own operands, timed with CUDA events, and the fastest is kept for that key
//! from then on. Why: the fixed rules (the halo kernels' patch-fill threshold, the implicit
//! kernels for 1×1 convolutions with an epilogue, the relation versions' order of preference)
//! are first guesses, several made without a GPU; measured per shape, the fastest candidate is
//! the one that runs on whatever device the backend is on, and one that turns out slower
//! somewhere costs nothing there.
//!
//! Side effects: a run writes the call's output, and accumulates into it where the call does
//! (the gradients dx, dw and df, an epilogue whose residual is the output). Such an output is
//! saved to a buffer of its own first and restored after the measurements; the chosen candidate
//! then runs once more, for real. Per candidate: one untimed run (a workspace may grow, a module
//! load), then [`TIMED_RUNS`] timed ones, their median compared.
//!
//! Not measured, the fallback (the fixed rule) runs instead: while a CUDA graph is being captured
//! (timing needs the host to wait; the forward a capture records is run once before it, and
//! measures), below the FLOP floor ([`CudaBackend::set_tune_min_flops`]: microseconds whichever
//! candidate runs; `PRRNET_TUNE_MIN_GFLOP=inf` turns measuring off), and when the save buffer
//! cannot be allocated.
//!
//! The choice depends on timings, so two processes may choose differently where candidates are
//! close; results then differ within rounding (every candidate is checked against the CPU
//! backend by the GPU tests). Fixed choices (`PRRNET_CONV_ALGO=halo|implicit|im2col`,
//! `PRRNET_RELATION_VERSION=…`, or the floor at `inf`) give the same kernels, and the same bits,
//! every run.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use cudarc::driver::{CudaSlice, DevicePtr};
use serde::{Deserialize, Serialize};

use super::context::{env_number, CudaBackend};
use super::conv_implicit::ConvPass;
use super::elementwise::copy_ptr;
use super::relation_tc::relation_flops;
use super::timing;
use crate::backend::{ConvShape, KernelChoice, PathTime, Precision, RelationShape};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Timed runs per candidate (after one untimed run).
pub(crate) const TIMED_RUNS: usize = 3;
/// Default FLOP floor of measuring (2 per multiply-add): 0.25 GFLOP, about a microsecond of BF16
/// tensor cores on an H100 and well under a millisecond for any candidate.
pub(crate) const MIN_FLOPS: f64 = 0.25e9;

/// One of the interchangeable implementations a choice is made between.
pub(crate) trait Candidate: Copy {
    fn name(self) -> &'static str;
}

/// What a choice is kept for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) enum TuneKey {
    /// `align`: the widest staging vector (1, 2 or 4 floats) every operand address allows,
    /// which selects kernel variants.
    Conv {
        pass: ConvPass,
        precision: Precision,
        shape: ConvShape,
        align: u8,
    },
    Relation {
        backward: bool,
        precision: Precision,
        shape: RelationShape,
    },
}

impl TuneKey {
    /// FLOPs of one call (2 per multiply-add), for the floor.
    fn flops(&self) -> f64 {
        match self {
            TuneKey::Conv { shape, .. } => shape.flops(),
            TuneKey::Relation {
                backward, shape, ..
            } => relation_flops(shape, *backward),
        }
    }

    fn record(&self, chosen: &'static str, times: &[(&'static str, f64)]) -> KernelChoice {
        let (op, pass, shape, precision, epilogue) = match *self {
            TuneKey::Conv {
                pass,
                precision,
                shape,
                ..
            } => (
                "conv",
                pass.name(),
                super::conv_implicit::shape_name(&shape),
                precision,
                pass.epilogue(),
            ),
            TuneKey::Relation {
                backward,
                precision,
                shape: s,
            } => (
                "relation",
                if backward { "backward" } else { "forward" },
                format!("b{} {}x{} c{} n{}", s.b, s.h, s.w, s.c, s.n),
                precision,
                String::new(),
            ),
        };
        KernelChoice {
            op: op.into(),
            pass: pass.into(),
            shape,
            precision: precision.to_string(),
            epilogue,
            chosen: chosen.into(),
            paths: times
                .iter()
                .map(|&(path, ms)| PathTime {
                    path: path.into(),
                    ms,
                })
                .collect(),
        }
    }
}

/// The choices made so far (by candidate name), and their records in the order they were made.
#[derive(Default)]
pub(crate) struct Tuning {
    chosen: HashMap<TuneKey, &'static str>,
    log: Vec<Saved>,
}

/// One choice as [`CudaBackend::saved_kernel_choices`] writes it.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct Saved {
    key: TuneKey,
    choice: KernelChoice,
}

/// The name of a candidate as `&'static str` (choices store names): every convolution path and
/// relation version.
fn candidate_name(name: &str) -> Option<&'static str> {
    use super::conv_implicit::ConvPath;
    [ConvPath::Im2col, ConvPath::Implicit, ConvPath::Halo]
        .iter()
        .map(|p| p.name())
        .chain(
            super::relation_tc::relation_versions()
                .iter()
                .map(|v| v.name()),
        )
        .find(|n| *n == name)
}

impl CudaBackend {
    /// The least FLOPs (2 per multiply-add) of a call that is measured ([`MIN_FLOPS`] by
    /// default, `PRRNET_TUNE_MIN_GFLOP` at creation); smaller ones take the fallback. Infinity
    /// turns measuring off.
    pub fn set_tune_min_flops(&self, flops: f64) {
        self.tune_min_flops
            .store(flops.max(0.0).to_bits(), Ordering::Relaxed);
    }

    /// See [`CudaBackend::set_tune_min_flops`].
    pub fn tune_min_flops(&self) -> f64 {
        f64::from_bits(self.tune_min_flops.load(Ordering::Relaxed))
    }

    /// Every choice measured on this backend (or restored), oldest first.
    pub fn kernel_choices(&self) -> Vec<KernelChoice> {
        self.tuning
            .lock()
            .map(|t| t.log.iter().map(|s| s.choice.clone()).collect())
            .unwrap_or_default()
    }

    /// The choices as JSON for [`CudaBackend::restore_kernel_choices`]; None when there are none.
    pub fn saved_kernel_choices(&self) -> Option<String> {
        let t = self.tuning.lock().ok()?;
        (!t.log.is_empty()).then(|| serde_json::to_string(&t.log).expect("choices serialise"))
    }

    /// Take back choices saved by [`CudaBackend::saved_kernel_choices`] (keys measured here
    /// already keep their own choice). An error for text that is not such a list.
    pub fn restore_kernel_choices(&self, json: &str) -> Result<()> {
        let saved: Vec<Saved> = serde_json::from_str(json)
            .map_err(|e| Error::Config(format!("not a list of saved kernel choices: {e}")))?;
        let mut named = Vec::with_capacity(saved.len());
        for s in saved {
            let name = candidate_name(&s.choice.chosen).ok_or_else(|| {
                Error::Config(format!(
                    "saved kernel choice names no kernel: {}",
                    s.choice.chosen
                ))
            })?;
            named.push((name, s));
        }
        let mut t = self.tuning()?;
        for (name, s) in named {
            if let std::collections::hash_map::Entry::Vacant(e) = t.chosen.entry(s.key) {
                e.insert(name);
                t.log.push(s);
            }
        }
        Ok(())
    }

    /// Forget every choice (the next call of each key measures again).
    pub fn clear_kernel_choices(&self) {
        if let Ok(mut t) = self.tuning.lock() {
            *t = Tuning::default();
        }
    }

    fn tuning(&self) -> Result<std::sync::MutexGuard<'_, Tuning>> {
        self.tuning
            .lock()
            .map_err(|_| Error::Device("kernel tuning lock poisoned".into()))
    }
}

/// `PRRNET_TUNE_MIN_GFLOP` in FLOPs when set (a number ≥ 0, or `inf`), else [`MIN_FLOPS`].
pub(crate) fn min_flops_from_env() -> Result<f64> {
    let gflop = env_number(
        "PRRNET_TUNE_MIN_GFLOP",
        MIN_FLOPS / 1e9,
        |g| g >= 0.0,
        "a number ≥ 0 (or inf)",
    )?;
    Ok(gflop * 1e9)
}

/// The candidate for `key` among `candidates` (those that can compute it): the measured choice
/// when there is one or it can be measured now, else `fallback`. `accumulates`: the output the
/// call adds into, saved and restored around the measurements (see the module comment); `run`
/// runs one candidate. The caller then runs the result.
pub(crate) fn choose<P: Candidate>(
    be: &CudaBackend,
    key: TuneKey,
    candidates: &[P],
    fallback: P,
    accumulates: Option<Tensor>,
    run: &dyn Fn(P) -> Result<()>,
) -> Result<P> {
    if candidates.len() < 2 {
        return Ok(candidates.first().copied().unwrap_or(fallback));
    }
    if let Some(name) = be.tuning()?.chosen.get(&key) {
        return Ok(candidates
            .iter()
            .copied()
            .find(|c| c.name() == *name)
            .unwrap_or(fallback));
    }
    if be.capturing.load(Ordering::Relaxed) || key.flops() < be.tune_min_flops() {
        return Ok(fallback);
    }
    let saved = match accumulates {
        Some(t) => match save(be, t)? {
            Some(s) => Some((t, s)),
            None => return Ok(fallback),
        },
        None => None,
    };
    let mut times = Vec::with_capacity(candidates.len());
    let mut first_error = None;
    for &c in candidates {
        // A candidate that refuses the call (a launch limit, a workspace it cannot get) is left
        // out; the call fails only if every candidate does.
        match time_runs(be, c, run) {
            Ok(ms) => times.push((c, ms)),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some((t, (_slice, ptr))) = &saved {
        // The save buffer is freed (in stream order) after this copy has read it.
        copy_ptr(be, *ptr, be.ptr(*t)?, t.len)?;
    }
    let Some(chosen) = times.iter().min_by(|a, b| a.1.total_cmp(&b.1)).map(|t| t.0) else {
        return Err(first_error.unwrap_or_else(|| Error::Other("no kernel candidate ran".into())));
    };
    let mut tuning = be.tuning()?;
    if tuning.chosen.insert(key, chosen.name()).is_none() {
        let named: Vec<_> = times.iter().map(|(c, ms)| (c.name(), *ms)).collect();
        let choice = key.record(chosen.name(), &named);
        tuning.log.push(Saved { key, choice });
    }
    Ok(chosen)
}

/// The median milliseconds of [`TIMED_RUNS`] runs of `c`, after one untimed run.
fn time_runs<P: Candidate>(be: &CudaBackend, c: P, run: &dyn Fn(P) -> Result<()>) -> Result<f64> {
    let mut ms = Vec::with_capacity(TIMED_RUNS);
    for rep in 0..=TIMED_RUNS {
        let start = timing::mark(be)?;
        run(c)?;
        let stop = timing::mark(be)?;
        if rep > 0 {
            ms.push(timing::elapsed_ms(be, &start, &stop)?);
        }
    }
    ms.sort_by(f64::total_cmp);
    Ok(ms[ms.len() / 2])
}

/// A copy of `t` in a buffer of its own (and that buffer's address), or None when it cannot
/// be allocated (then nothing is measured, and the call goes on).
fn save(be: &CudaBackend, t: Tensor) -> Result<Option<(CudaSlice<f32>, u64)>> {
    be.bind()?;
    // SAFETY: written by the copy below before anything reads it.
    let Ok(slice) = (unsafe { be.stream.alloc::<f32>(t.len.max(1)) }) else {
        return Ok(None);
    };
    let (ptr, sync) = slice.device_ptr(&be.stream);
    drop(sync);
    copy_ptr(be, be.ptr(t)?, ptr, t.len)?;
    Ok(Some((slice, ptr)))
}
