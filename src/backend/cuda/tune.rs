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
//! saved to a buffer of its own first, restored before each candidate and after the
//! measurements; the chosen candidate then runs once more, for real. Per candidate: one
//! untimed run (a workspace may grow, a module load), whose output is checked against the most
//! trusted candidate's (`tune_check.rs`: one that disagrees is left out and reported), then
//! [`TIMED_RUNS`] timed ones, their median compared.
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
use super::tune_check::Check;
use super::tune_journal::{Journal, Screened};
use crate::backend::{ConvShape, KernelChoice, PathTime, Precision, RejectedPath, RelationShape};
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
    /// Lower is trusted more: the candidates that were checked against the CPU backend on a
    /// GPU first. The most trusted one that runs is the reference the others are checked
    /// against (`tune_check.rs`).
    fn trust(self) -> u8;
}

/// The output of a tuned call: compared between candidates, and saved and restored around the
/// measurements when the call adds into it (`accumulates`).
#[derive(Clone, Copy)]
pub(crate) struct Output {
    pub t: Tensor,
    pub accumulates: bool,
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

    /// What a quarantine covers (`tune_journal.rs`): the key without its shape, one kernel
    /// family: `conv forward bf16`.
    fn scope(&self) -> String {
        let (op, pass, _, precision, _) = self.parts();
        format!("{op} {pass} {precision}")
    }

    fn precision(&self) -> Precision {
        match *self {
            TuneKey::Conv { precision, .. } | TuneKey::Relation { precision, .. } => precision,
        }
    }

    /// What a report names the key by: op, pass, shape, precision, epilogue.
    fn parts(&self) -> (&'static str, &'static str, String, Precision, String) {
        match *self {
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
        }
    }

    /// The key in words, for messages: `conv forward b64 75x75 30->30 k3 s1 p1 bf16`.
    fn describe(&self) -> String {
        let (op, pass, shape, precision, _) = self.parts();
        format!("{op} {pass} {shape} {precision}")
    }

    fn record(
        &self,
        chosen: &'static str,
        times: &[(&'static str, f64)],
        reference: Option<&'static str>,
        rejected: &[(&'static str, String)],
    ) -> KernelChoice {
        let (op, pass, shape, precision, epilogue) = self.parts();
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
            reference: reference.unwrap_or_default().into(),
            rejected: rejected
                .iter()
                .map(|(path, reason)| RejectedPath {
                    path: (*path).into(),
                    reason: reason.clone(),
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
    /// Where each candidate's turn is written down, and the quarantine read from it.
    journal: Option<Journal>,
    /// A candidate made to misbehave while measured, for tests: [`CudaBackend::inject_tune_fault`],
    /// [`CudaBackend::inject_tune_stop`].
    fault: Option<(String, Fault)>,
}

/// How [`Tuning::fault`]'s candidate misbehaves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// An eighth of its output overwritten, as a race might leave it.
    Wrong,
    /// The measurement fails after its run, as when its kernel faults and the context is lost.
    Stop,
}

impl Tuning {
    /// A new record, with the journal of `PRRNET_TUNE_JOURNAL` when it names a file and the
    /// stop of `PRRNET_TEST_TUNE_STOP` (a test hook: the candidate whose turns fail, see
    /// [`CudaBackend::inject_tune_stop`]).
    pub(crate) fn from_env() -> Result<Tuning> {
        let journal = match std::env::var_os("PRRNET_TUNE_JOURNAL") {
            Some(p) if !p.is_empty() => Some(Journal::open(std::path::Path::new(&p))?),
            _ => None,
        };
        let fault = std::env::var("PRRNET_TEST_TUNE_STOP")
            .ok()
            .filter(|c| !c.is_empty())
            .map(|c| (c, Fault::Stop));
        Ok(Tuning {
            journal,
            fault,
            ..Default::default()
        })
    }

    /// `candidates` without those the journal has in quarantine for `key`'s scope.
    fn screen<P: Candidate>(&self, key: &TuneKey, candidates: &[P], fallback: P) -> Screened<P> {
        match &self.journal {
            Some(j) => j.screen(&key.scope(), candidates, fallback),
            None => Screened {
                candidates: candidates.to_vec(),
                fallback,
                left_out: Vec::new(),
            },
        }
    }

    /// Write down the start of `c`'s turn at `key` (None without a journal).
    fn begin_turn(&mut self, c: &str, key: &TuneKey) -> Result<Option<u64>> {
        match &mut self.journal {
            Some(j) => j.begin(c, &key.scope(), &key.describe()).map(Some),
            None => Ok(None),
        }
    }

    fn end_turn(&mut self, turn: Option<u64>) -> Result<()> {
        match (&mut self.journal, turn) {
            (Some(j), Some(t)) => j.end(t),
            _ => Ok(()),
        }
    }

    /// Keep `chosen` for `key` with its record, unless a choice was made for it meanwhile.
    fn keep(
        &mut self,
        key: TuneKey,
        chosen: &'static str,
        times: &[(&'static str, f64)],
        reference: Option<&'static str>,
        rejected: &[(&'static str, String)],
    ) {
        if self.chosen.insert(key, chosen).is_none() {
            let choice = key.record(chosen, times, reference, rejected);
            self.log.push(Saved { key, choice });
        }
    }
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
    /// The least FLOPs (2 per multiply-add) of a call that is measured (by default
    /// `MIN_FLOPS`, 0.25 GFLOP, or `PRRNET_TUNE_MIN_GFLOP` at creation); smaller ones take the
    /// fallback. Infinity turns measuring off.
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
            // A choice of a candidate in quarantine is measured again instead.
            let scope = s.key.scope();
            if t.journal
                .as_ref()
                .is_some_and(|j| j.quarantined(name, &scope).is_some())
            {
                continue;
            }
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
            t.chosen.clear();
            t.log.clear();
        }
    }

    /// For tests of the check between candidates: from now on, whenever the candidate named
    /// `candidate` (a convolution path or a relation version) runs while a choice is being
    /// measured, an eighth of its output is overwritten afterwards, as a kernel with a race
    /// might leave it. The check must then leave it out. None ends it.
    #[doc(hidden)]
    pub fn inject_tune_fault(&self, candidate: Option<&str>) {
        self.set_tune_fault(candidate, Fault::Wrong);
    }

    /// For tests of the tuning journal: from now on, the measurement fails right after the
    /// candidate named `candidate` runs, with its turn left open in the journal, as when its
    /// kernel faults and the context is lost (the context stays usable here). None ends it.
    /// `PRRNET_TEST_TUNE_STOP=CANDIDATE` sets it at creation.
    #[doc(hidden)]
    pub fn inject_tune_stop(&self, candidate: Option<&str>) {
        self.set_tune_fault(candidate, Fault::Stop);
    }

    fn set_tune_fault(&self, candidate: Option<&str>, fault: Fault) {
        if let Ok(mut t) = self.tuning.lock() {
            t.fault = candidate.map(|c| (c.to_owned(), fault));
        }
    }

    fn tune_fault(&self) -> Option<(String, Fault)> {
        self.tuning.lock().ok().and_then(|t| t.fault.clone())
    }

    /// Keep the tuning journal at `path` from now on (None: no journal), and read its
    /// quarantine: candidates that stopped an earlier process while measured are left out of
    /// every measurement of their scope (`tune_journal.rs`). `PRRNET_TUNE_JOURNAL` sets it at
    /// creation. Choices made already stay.
    pub fn set_tune_journal(&self, path: Option<&std::path::Path>) -> Result<()> {
        let journal = path.map(Journal::open).transpose()?;
        self.tuning()?.journal = journal;
        Ok(())
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
/// when there is one or it can be measured now, else `fallback`. `output`: what the call writes
/// (checked between candidates; saved and restored when the call adds into it, see the module
/// comment); `run` runs one candidate. The caller then runs the result.
pub(crate) fn choose<P: Candidate>(
    be: &CudaBackend,
    key: TuneKey,
    candidates: &[P],
    fallback: P,
    output: Output,
    run: &dyn Fn(P) -> Result<()>,
) -> Result<P> {
    if candidates.len() < 2 {
        return Ok(candidates.first().copied().unwrap_or(fallback));
    }
    // The common case, every call after the first of a key: no screening on this path (a
    // choice never names a candidate in quarantine when it is made or restored).
    let chosen = be.tuning()?.chosen.get(&key).copied();
    if let Some(name) = chosen {
        return Ok(
            match candidates.iter().copied().find(|c| c.name() == name) {
                Some(c) => c,
                None => be.tuning()?.screen(&key, candidates, fallback).fallback,
            },
        );
    }
    let Screened {
        candidates,
        fallback,
        left_out,
    } = be.tuning()?.screen(&key, candidates, fallback);
    if candidates.len() < 2 {
        // The quarantine left one candidate (or none): nothing to measure; the record says
        // what was left out.
        let only = candidates.first().copied().unwrap_or(fallback);
        be.tuning()?.keep(key, only.name(), &[], None, &left_out);
        return Ok(only);
    }
    if be.capturing.load(Ordering::Relaxed) || key.flops() < be.tune_min_flops() {
        return Ok(fallback);
    }
    let out = output.t;
    let saved = if output.accumulates {
        match save(be, out)? {
            Some(s) => Some(s),
            None => return Ok(fallback),
        }
    } else {
        None
    };
    let base = saved.as_ref().map(|s| s.1);
    let mut check = Check::new(be, out, base, key.precision())?;
    let mut order = candidates;
    order.sort_by_key(|c| c.trust());
    let mut times = Vec::with_capacity(order.len());
    let mut rejected = left_out;
    let mut first_error = None;
    for (i, &c) in order.iter().enumerate() {
        // Each candidate starts from the call's own output (the first finds it there).
        let restore = base.filter(|_| i > 0);
        let outcome = take_turn(be, &key, c, run, out, restore, check.as_mut())?;
        match outcome {
            Turn::Timed(ms) => times.push((c, ms)),
            Turn::Disagrees(why) => {
                eprintln!(
                    "prrnet: warning: kernel {} left out of {}: {why}",
                    c.name(),
                    key.describe()
                );
                rejected.push((c.name(), why));
            }
            // A candidate that refuses the call (a launch limit, a workspace it cannot get) is
            // left out; the call fails only if every candidate does.
            Turn::Failed(e) => {
                rejected.push((c.name(), format!("failed: {e}")));
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some((_slice, ptr)) = &saved {
        // The save buffer is freed (in stream order) after this copy has read it.
        copy_ptr(be, *ptr, be.ptr(out)?, out.len)?;
    }
    let Some(chosen) = times.iter().min_by(|a, b| a.1.total_cmp(&b.1)).map(|t| t.0) else {
        return Err(first_error.unwrap_or_else(|| {
            Error::Other(format!(
                "no kernel candidate gave a result that could be used for {}",
                key.describe()
            ))
        }));
    };
    let reference = check.as_ref().and_then(|c| c.reference());
    let named: Vec<_> = times.iter().map(|(c, ms)| (c.name(), *ms)).collect();
    be.tuning()?
        .keep(key, chosen.name(), &named, reference, &rejected);
    Ok(chosen)
}

/// The error of a measurement that stopped in `candidate`'s turn, with what to do about it:
/// the journal leaves the candidate out of the next run, or the kernels can be fixed.
fn stopped_in_turn(be: &CudaBackend, candidate: &str, key: &TuneKey, e: Error) -> Error {
    let journal = be
        .tuning
        .lock()
        .ok()
        .and_then(|t| t.journal.as_ref().map(|j| j.path().display().to_string()));
    let next = match journal {
        Some(path) => format!("the tuning journal {path} leaves it out of the next run"),
        None => "with PRRNET_TUNE_JOURNAL=FILE a run that stops here leaves it out of the \
                 next one that names FILE"
            .to_owned(),
    };
    let why = match e {
        Error::Device(m) => m,
        e => e.to_string(),
    };
    Error::Device(format!(
        "kernel {candidate} stopped while being measured for {}: {why} ({next}; \
         PRRNET_CONV_ALGO=im2col and PRRNET_RELATION_VERSION=v2 fix the kernels instead)",
        key.describe()
    ))
}

/// How one candidate's turn at a measurement ended.
enum Turn {
    /// Its median milliseconds.
    Timed(f64),
    /// Its output did not agree with the reference's (why).
    Disagrees(String),
    /// It refused the call.
    Failed(Error),
}

/// One candidate's turn, written down in the journal as it begins and ends: `restore` the
/// output from the save (an output the call adds into), run `c` once, check that run against
/// the reference's, then time it. An `Err` means the candidate stopped the measurement (its
/// turn stays open in the journal): the measurement itself failed (a copy, the comparison, a
/// fault that surfaces there), or the device no longer works after the candidate failed.
fn take_turn<P: Candidate>(
    be: &CudaBackend,
    key: &TuneKey,
    c: P,
    run: &dyn Fn(P) -> Result<()>,
    out: Tensor,
    restore: Option<u64>,
    check: Option<&mut Check>,
) -> Result<Turn> {
    let turn = be.tuning()?.begin_turn(c.name(), key)?;
    let work = move || -> Result<Turn> {
        if let Some(base) = restore {
            copy_ptr(be, base, be.ptr(out)?, out.len)?;
        }
        if let Err(e) = run(c) {
            return Ok(Turn::Failed(e));
        }
        // The misbehaviour a test injected ([`CudaBackend::inject_tune_fault`],
        // [`CudaBackend::inject_tune_stop`]).
        match be.tune_fault().filter(|(name, _)| name == c.name()) {
            // An eighth of the output made wrong, as a race might leave it.
            Some((_, Fault::Wrong)) => {
                super::elementwise::fill_ptr(be, be.ptr(out)?, out.len.div_ceil(8), 1e3)?
            }
            Some((_, Fault::Stop)) => {
                return Err(Error::Device(format!(
                    "injected fault: kernel {} stops the process (PRRNET_TEST_TUNE_STOP)",
                    c.name()
                )))
            }
            None => {}
        }
        if let Some(check) = check {
            if let Some(why) = check.disagreement(be, c)? {
                return Ok(Turn::Disagrees(why));
            }
        }
        Ok(match time_runs(be, c, run) {
            Ok(ms) => Turn::Timed(ms),
            Err(e) => Turn::Failed(e),
        })
    };
    let outcome = match work() {
        Err(e) => return Err(stopped_in_turn(be, c.name(), key, e)),
        Ok(Turn::Failed(e)) if be.synchronize_stream().is_err() => {
            return Err(stopped_in_turn(be, c.name(), key, e))
        }
        Ok(t) => t,
    };
    be.tuning()?.end_turn(turn)?;
    Ok(outcome)
}

/// The median milliseconds of [`TIMED_RUNS`] runs of `c` (after its untimed, checked run).
fn time_runs<P: Candidate>(be: &CudaBackend, c: P, run: &dyn Fn(P) -> Result<()>) -> Result<f64> {
    let mut ms = Vec::with_capacity(TIMED_RUNS);
    for _ in 0..TIMED_RUNS {
        let start = timing::mark(be)?;
        run(c)?;
        let stop = timing::mark(be)?;
        ms.push(timing::elapsed_ms(be, &start, &stop)?);
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
    be.note_tune_transient(4 * t.len.max(1));
    let (ptr, sync) = slice.device_ptr(&be.stream);
    drop(sync);
    copy_ptr(be, be.ptr(t)?, ptr, t.len)?;
    Ok(Some((slice, ptr)))
}
