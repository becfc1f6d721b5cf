//! Activation memory reuse for inference plans.
//!
//! A training plan keeps every activation (backward reads them). An inference plan does not
//! need to: a backbone activation is dead once its last reader has run, and its memory can hold
//! a later one. The backbone's access pattern does not depend on the batch size or the input
//! side, so we learn it once by running the backbone at batch 1 on a small input through a
//! tracing CPU backend (every tensor access is logged with the index of the operation making
//! it), then pack the real-size activations into one region: two activations may share memory
//! only when their lifetimes — first to last operation touching them, inclusive — are
//! disjoint. The packing is the usual greedy one (largest first, lowest offset that does not
//! collide with anything already placed and alive at the same time).
//!
//! The backbone input (written by `set_input`, before the forward) and the backbone outputs
//! (read by the heads) are kept alive for the whole forward.

use super::hrnet::HrNet;
use super::layers::{Builder, Ctx};
use crate::backend::cpu::CpuBackend;
use crate::backend::Backend;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::tensor::{BufId, Tensor};

/// The input side the access pattern is traced at (small, so tracing costs milliseconds).
const TRACE_SIZE: usize = 64;

/// Where the backbone's activations go: `offsets[i]` for the i-th activation the backbone
/// asks for, all inside `[0, region)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReusePlan {
    pub offsets: Vec<usize>,
    pub region: usize,
}

/// Lifetime of one activation in operation indices, inclusive.
type Life = (u64, u64);
const ALWAYS: Life = (0, u64::MAX);

fn backbone_builder() -> Builder {
    Builder::new(BufId(0), BufId(1), BufId(2)).inference(BufId(3))
}

/// Lifetimes of the backbone's activations, in allocation order.
fn backbone_lifetimes(cfg: &Config) -> Result<Vec<Life>> {
    let tcfg = Config {
        size: TRACE_SIZE,
        ..cfg.clone()
    };
    let mut bd = backbone_builder();
    let hr = HrNet::new(&mut bd, &tcfg, 1);
    let mut be = CpuBackend::tracing();
    let folded = bd.folded.as_ref().map_or(0, |a| a.used);
    for (want, len) in [bd.params.used, bd.state.used, bd.acts.used, folded]
        .into_iter()
        .enumerate()
    {
        let id = be.alloc(len)?;
        debug_assert_eq!(id, BufId(want as u32));
    }
    be.take_trace();
    let cx = Ctx {
        be: &be,
        bn_train: false,
        dacts: None,
        dparams: None,
        folded: true,
    };
    hr.forward(&cx)?;
    let trace = be.take_trace();

    // Non-empty activations sorted by offset (the bump allocator hands them out in order).
    let acts = &bd.act_log;
    let mut by_off: Vec<usize> = (0..acts.len()).filter(|&i| acts[i].len > 0).collect();
    by_off.sort_by_key(|&i| acts[i].off);
    let mut life: Vec<Option<Life>> = vec![None; acts.len()];
    for (op, t) in trace {
        if t.buf != bd.acts.buf || t.len == 0 {
            continue;
        }
        let k = by_off.partition_point(|&i| acts[i].off <= t.off);
        let owner = k.checked_sub(1).map(|k| by_off[k]).filter(|&i| {
            let a = acts[i];
            t.off >= a.off && t.off + t.len <= a.off + a.len
        });
        let Some(i) = owner else {
            return Err(Error::Other(format!(
                "memory planner: access {t:?} does not lie inside one activation"
            )));
        };
        life[i] = Some(match life[i] {
            None => (op, op),
            Some((a, b)) => (a.min(op), b.max(op)),
        });
    }
    let mut pinned = vec![hr.input];
    pinned.extend(hr.outputs());
    Ok(acts
        .iter()
        .zip(life)
        .map(|(t, l)| {
            if pinned.iter().any(|p| p.off == t.off && p.len == t.len) {
                ALWAYS
            } else {
                // Never touched (e.g. BatchNorm statistics of folded units): keep it out of
                // everyone's way rather than reason about it.
                l.unwrap_or(ALWAYS)
            }
        })
        .collect())
}

/// Greedy packing: `lens[i]` floats alive over `lives[i]`; returns offsets (16-float aligned)
/// and the region size.
pub fn pack(lens: &[usize], lives: &[Life]) -> (Vec<usize>, usize) {
    assert_eq!(lens.len(), lives.len());
    let mut order: Vec<usize> = (0..lens.len()).collect();
    // Largest first; ties by earlier start, then index, so the result is deterministic.
    order.sort_by_key(|&i| (std::cmp::Reverse(lens[i]), lives[i].0, i));
    let mut offsets = vec![0usize; lens.len()];
    let mut placed: Vec<usize> = Vec::new();
    let mut region = 0usize;
    for &i in &order {
        let len = lens[i].next_multiple_of(16);
        let (s, e) = lives[i];
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&j| lives[j].0 <= e && s <= lives[j].1)
            .map(|&j| (offsets[j], offsets[j] + lens[j].next_multiple_of(16)))
            .collect();
        busy.sort_unstable();
        let mut at = 0usize;
        for (a, b) in busy {
            if a >= at + len {
                break;
            }
            at = at.max(b);
        }
        offsets[i] = at;
        region = region.max(at + len);
        placed.push(i);
    }
    (offsets, region)
}

/// The reuse plan of the backbone of `cfg` at `batch`.
pub fn backbone_reuse(cfg: &Config, batch: usize) -> Result<ReusePlan> {
    let lives = backbone_lifetimes(cfg)?;
    let mut bd = backbone_builder();
    HrNet::new(&mut bd, cfg, batch);
    let lens: Vec<usize> = bd.act_log.iter().map(|t: &Tensor| t.len).collect();
    if lens.len() != lives.len() {
        return Err(Error::Other(format!(
            "memory planner: the backbone asks for {} activations at size {} but {} at the \
             traced size {TRACE_SIZE}",
            lens.len(),
            cfg.size,
            lives.len()
        )));
    }
    let (offsets, region) = pack(&lens, &lives);
    Ok(ReusePlan { offsets, region })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute-force check: no two activations alive at the same time share memory.
    fn assert_valid(lens: &[usize], lives: &[Life], offsets: &[usize], region: usize) {
        for i in 0..lens.len() {
            assert!(offsets[i].is_multiple_of(16) && offsets[i] + lens[i] <= region);
            for j in i + 1..lens.len() {
                let overlap_time = lives[i].0 <= lives[j].1 && lives[j].0 <= lives[i].1;
                let overlap_mem = lens[i] > 0
                    && lens[j] > 0
                    && offsets[i] < offsets[j] + lens[j]
                    && offsets[j] < offsets[i] + lens[i];
                assert!(!(overlap_time && overlap_mem), "{i} and {j} collide");
            }
        }
    }

    #[test]
    fn pack_separates_overlapping_lifetimes_and_reuses_dead_memory() {
        // A chain a → b → c → d: neighbours overlap (an op reads one and writes the next).
        let lens = [100, 100, 100, 100];
        let lives = [(0, 1), (1, 2), (2, 3), (3, 4)];
        let (off, region) = pack(&lens, &lives);
        assert_valid(&lens, &lives, &off, region);
        assert_eq!(region, 2 * 112, "a chain needs two slots");
        // Everything alive at once: no reuse.
        let lives = [ALWAYS; 4];
        let (off, region) = pack(&lens, &lives);
        assert_valid(&lens, &lives, &off, region);
        assert_eq!(region, 4 * 112);
    }

    #[test]
    fn pack_random_cases_are_valid() {
        let mut rng = crate::rng::Rng::new(3);
        for _ in 0..200 {
            let n = 1 + rng.below(30);
            let lens: Vec<usize> = (0..n).map(|_| rng.below(500)).collect();
            let lives: Vec<Life> = (0..n)
                .map(|_| {
                    let a = rng.below(50) as u64;
                    (a, a + rng.below(20) as u64)
                })
                .collect();
            let (off, region) = pack(&lens, &lives);
            assert_valid(&lens, &lives, &off, region);
        }
    }

    #[test]
    fn backbone_plans_are_valid_and_much_smaller() {
        // (preset, largest allowed reuse/plain ratio)
        for (preset, max_ratio) in [("tiny", 0.6), ("w30", 0.25)] {
            let cfg = Config::preset(preset).unwrap();
            let lives = backbone_lifetimes(&cfg).unwrap();
            let mut bd = backbone_builder();
            HrNet::new(&mut bd, &cfg, 2);
            let lens: Vec<usize> = bd.act_log.iter().map(|t| t.len).collect();
            let plan = backbone_reuse(&cfg, 2).unwrap();
            assert_valid(&lens, &lives, &plan.offsets, plan.region);
            let plain = bd.acts.used;
            let ratio = plan.region as f64 / plain as f64;
            eprintln!(
                "{preset}: reuse region {} vs {plain} ({ratio:.3})",
                plan.region
            );
            assert!(ratio <= max_ratio, "{preset}: ratio {ratio:.3}");
        }
    }
}
