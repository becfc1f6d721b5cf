//! Every relation kernel version × precision (`prrnet::backend::cuda::relation_tc`) against the
//! CPU f32 reference and against the exact SIMT version, forward (`norms`, `lsum`, `p`) and
//! backward (`df`, accumulated), plus determinism (two runs bitwise equal) and the dispatch.
//!
//! - Inputs are random and non-zero: features uniform in [0.02, 1) (post-ReLU-like: a shared
//!   positive component, so the backward's Σ_j dS_ij = 0 cancellation is exercised), `dp`
//!   standard normal, `df` starting from random values of the gradient's own size, so a kernel
//!   that overwrites instead of adding fails and the increment keeps its precision.
//! - Forward outputs are poisoned with NaN before every launch.
//! - Each version's backward consumes its own forward's `norms`, `lsum`, `p` (as in training);
//!   the CPU's backward consumes the CPU's. The increment `df_after − df_before` is compared.
//! - Tolerance (relative L2, `‖gpu − ref‖ / ‖ref‖`): fp32 (simt, split, sym) 1e-5, TF32 1e-3,
//!   BF16 1e-2.
//!   An f64 emulation of the tensor-core numerics (operands rounded to TF32/BF16, f32
//!   accumulation) predicts about 5e-4 (TF32) and 4e-3 (BF16) for `df`, 1e-4 at most for `p`.
//! - The CPU reference of each shape is computed once and shared by all versions.
//!
//! Without a usable GPU each GPU test prints a skip message and passes; with
//! `PRRNET_REQUIRE_GPU=1` it fails instead.

use prrnet::backend::cpu::CpuBackend;
use prrnet::backend::cuda::relation_tc::{
    relation_executed_share, relation_versions, RelationVersion,
};
use prrnet::backend::cuda::CudaBackend;
use prrnet::backend::{Backend, Precision, RelationShape};
use prrnet::rng::Rng;
use prrnet::tensor::Tensor;

/// Open GPU 0, or explain why the test is skipped (fails instead under PRRNET_REQUIRE_GPU=1).
fn open_gpu(test: &str) -> Option<CudaBackend> {
    let require = std::env::var("PRRNET_REQUIRE_GPU").is_ok_and(|v| v == "1");
    match prrnet::backend::cuda::open_cuda(0) {
        Ok(be) => Some(be),
        Err(e) if require => panic!("{test}: PRRNET_REQUIRE_GPU=1 but no usable GPU: {e}"),
        Err(e) => {
            eprintln!("SKIP {test}: no usable GPU ({e}); set PRRNET_REQUIRE_GPU=1 to fail instead");
            None
        }
    }
}

fn tolerance(p: Precision) -> f64 {
    match p {
        Precision::Fp32 => 1e-5,
        Precision::Tf32 => 1e-3,
        Precision::Bf16 => 1e-2,
    }
}

fn put(be: &mut dyn Backend, data: &[f32]) -> Tensor {
    let t = Tensor::new(be.alloc(data.len()).unwrap(), 0, data.len());
    be.upload(t, data).unwrap();
    t
}

fn get(be: &dyn Backend, t: Tensor) -> Vec<f32> {
    let mut v = vec![0f32; t.len];
    be.download(t, &mut v).unwrap();
    v
}

/// Relative L2 error of `got` against `want`; panics on a non-finite value or above `tol`.
fn check(what: &str, got: &[f32], want: &[f32], tol: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length mismatch");
    let (mut num, mut den) = (0f64, 0f64);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.is_finite() && w.is_finite(),
            "{what}: non-finite value at element {i} of {} (got {g}, want {w})",
            got.len()
        );
        num += (*g as f64 - *w as f64).powi(2);
        den += (*w as f64).powi(2);
    }
    let err = if den > 0.0 {
        (num / den).sqrt()
    } else {
        num.sqrt()
    };
    if err > tol {
        let (i, g, w) = got
            .iter()
            .zip(want)
            .enumerate()
            .map(|(i, (g, w))| (i, *g, *w))
            .max_by(|a, b| (a.1 - a.2).abs().total_cmp(&(b.1 - b.2).abs()))
            .unwrap();
        panic!(
            "{what}: relative L2 error {err:.3e} > {tol:.0e} ({} elements; worst at {i}: got {g}, want {w})",
            got.len()
        );
    }
    eprintln!(
        "{what}: relative L2 error {err:.2e} ({} elements)",
        got.len()
    );
    err
}

/// The inputs of one shape and the CPU reference results.
struct Case {
    s: RelationShape,
    f: Vec<f32>,
    dp: Vec<f32>,
    /// The starting value of the accumulated gradient.
    df0: Vec<f32>,
    norms: Vec<f32>,
    lsum: Vec<f32>,
    p: Vec<f32>,
    /// ∂L/∂f (the increment the backward adds).
    grad: Vec<f32>,
}

impl Case {
    fn name(&self) -> String {
        let s = &self.s;
        format!("b{} {}x{} c{} n{}", s.b, s.h, s.w, s.c, s.n)
    }
}

fn reference(s: RelationShape, seed: u64) -> Case {
    let (np, nb) = (s.pixels(), s.bins());
    let mut rng = Rng::new(seed);
    let f = rng.vec(s.b * np * s.c, |r| r.range(0.02, 1.0));
    let dp = rng.vec(s.b * np * nb, |r| r.normal());
    let mut cpu = CpuBackend::new();
    let ft = put(&mut cpu, &f);
    let norms = put(&mut cpu, &vec![f32::NAN; s.b * np]);
    let lsum = put(&mut cpu, &vec![f32::NAN; s.b * np]);
    let p = put(&mut cpu, &vec![f32::NAN; s.b * np * nb]);
    let dpt = put(&mut cpu, &dp);
    let df = put(&mut cpu, &vec![0.0; s.b * np * s.c]);
    cpu.relation(&s, ft, norms, lsum, p).unwrap();
    cpu.relation_backward(&s, ft, norms, lsum, p, dpt, df)
        .unwrap();
    let grad = get(&cpu, df);
    let rms = (grad.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / grad.len() as f64).sqrt();
    assert!(rms > 0.0 && rms.is_finite(), "reference gradient rms {rms}");
    let df0 = rng.vec(grad.len(), |r| {
        let v = r.normal();
        (v + 0.05 * v.signum()) * rms
    });
    Case {
        s,
        norms: get(&cpu, norms),
        lsum: get(&cpu, lsum),
        p: get(&cpu, p),
        f,
        dp,
        df0,
        grad,
    }
}

/// One version's results on the GPU.
struct Out {
    norms: Vec<f32>,
    lsum: Vec<f32>,
    p: Vec<f32>,
    /// df_after − df_before.
    grad: Vec<f32>,
}

/// Device buffers of one shape, allocated once and reused by every version.
struct Bufs {
    f: Tensor,
    norms: Tensor,
    lsum: Tensor,
    p: Tensor,
    dp: Tensor,
    df: Tensor,
}

impl Bufs {
    fn new(be: &mut CudaBackend, c: &Case) -> Bufs {
        let s = &c.s;
        let (np, nb) = (s.pixels(), s.bins());
        Bufs {
            f: put(be, &c.f),
            norms: put(be, &vec![f32::NAN; s.b * np]),
            lsum: put(be, &vec![f32::NAN; s.b * np]),
            p: put(be, &vec![f32::NAN; s.b * np * nb]),
            dp: put(be, &c.dp),
            df: put(be, &c.df0),
        }
    }

    fn poison(&self, be: &CudaBackend) {
        for t in [self.norms, self.lsum, self.p] {
            be.upload(t, &vec![f32::NAN; t.len]).unwrap();
        }
    }

    fn forward(&self, be: &CudaBackend, c: &Case, v: RelationVersion, prec: Precision) {
        self.poison(be);
        be.relation_forward_version(v, prec, &c.s, self.f, self.norms, self.lsum, self.p)
            .unwrap_or_else(|e| panic!("{} {v} {prec} forward: {e}", c.name()));
        be.synchronize().unwrap();
    }

    /// The backward from `df0`, using the forward outputs currently in the buffers.
    fn backward(
        &self,
        be: &CudaBackend,
        c: &Case,
        v: RelationVersion,
        prec: Precision,
    ) -> Vec<f32> {
        be.upload(self.df, &c.df0).unwrap();
        be.relation_backward_version(
            v, prec, &c.s, self.f, self.norms, self.lsum, self.p, self.dp, self.df,
        )
        .unwrap_or_else(|e| panic!("{} {v} {prec} backward: {e}", c.name()));
        get(be, self.df)
    }

    /// Forward with `fv`, backward with `v` (the same version unless `v` cannot run this
    /// forward), each twice to check determinism.
    fn run(
        &self,
        be: &CudaBackend,
        c: &Case,
        fv: RelationVersion,
        v: RelationVersion,
        prec: Precision,
    ) -> Out {
        let tag = format!("{} {v} {prec} (forward {fv})", c.name());
        let fprec = if fv.supports(prec) {
            prec
        } else {
            Precision::Fp32
        };
        self.forward(be, c, fv, fprec);
        let (norms, lsum, p) = (get(be, self.norms), get(be, self.lsum), get(be, self.p));
        let after = self.backward(be, c, v, prec);
        // Determinism: the same launches again give the same bits.
        self.forward(be, c, fv, fprec);
        assert!(
            get(be, self.norms) == norms && get(be, self.lsum) == lsum && get(be, self.p) == p,
            "{tag}: the forward is not deterministic"
        );
        let again = self.backward(be, c, v, prec);
        assert!(after == again, "{tag}: the backward is not deterministic");
        let grad = after.iter().zip(&c.df0).map(|(a, b)| a - b).collect();
        Out {
            norms,
            lsum,
            p,
            grad,
        }
    }
}

fn compare(
    tag: &str,
    got: &Out,
    want_norms: &[f32],
    want_lsum: &[f32],
    want_p: &[f32],
    want_grad: &[f32],
    tol: f64,
) {
    check(&format!("{tag} norms"), &got.norms, want_norms, tol);
    check(&format!("{tag} lsum"), &got.lsum, want_lsum, tol);
    check(&format!("{tag} p"), &got.p, want_p, tol);
    check(&format!("{tag} df"), &got.grad, want_grad, tol);
}

/// Every version × precision on one shape.
fn all_versions(test: &str, shapes: &[RelationShape]) {
    let Some(mut be) = open_gpu(test) else {
        return;
    };
    eprintln!("{test}: {}", be.name());
    for (k, &s) in shapes.iter().enumerate() {
        let c = reference(s, 100 + k as u64);
        let bufs = Bufs::new(&mut be, &c);
        let simt = bufs.run(
            &be,
            &c,
            RelationVersion::Simt,
            RelationVersion::Simt,
            Precision::Fp32,
        );
        for &v in relation_versions() {
            for &prec in v.precisions() {
                let tag = format!("{} {v} {prec}", c.name());
                if let Err(e) = be.relation_version_check(v, prec, &s, true) {
                    // A version may refuse a shape only for the shared memory it needs (a
                    // smaller device) or for a register limit it documents (v2/v3 forward:
                    // n ≤ 8; v3 backward: C ≤ 480).
                    let why = e.to_string();
                    assert!(
                        why.contains("shared memory") || why.contains("in registers"),
                        "{tag}: the version refuses the shape: {why}"
                    );
                    eprintln!("{tag}: {why}");
                }
                let fwd_ok = be.relation_version_check(v, prec, &s, false).is_ok();
                let bwd_ok = be.relation_backward_check(v, prec, &s).is_ok();
                if !bwd_ok {
                    eprintln!("SKIP {tag}");
                    continue;
                }
                // Without its own forward, the backward runs on the dispatched forward's outputs.
                let fv = if fwd_ok {
                    v
                } else {
                    be.relation_dispatch(prec, &s, false)
                };
                let out = if v == RelationVersion::Simt && prec == Precision::Fp32 {
                    None
                } else {
                    Some(bufs.run(&be, &c, fv, v, prec))
                };
                let out = out.as_ref().unwrap_or(&simt);
                let tol = tolerance(prec);
                let tag = format!("{tag} (forward {fv})");
                compare(
                    &format!("{tag} vs cpu"),
                    out,
                    &c.norms,
                    &c.lsum,
                    &c.p,
                    &c.grad,
                    tol,
                );
                if v != RelationVersion::Simt {
                    compare(
                        &format!("{tag} vs simt"),
                        out,
                        &simt.norms,
                        &simt.lsum,
                        &simt.p,
                        &simt.grad,
                        tol,
                    );
                }
            }
        }
    }
}

#[test]
fn odd_shapes() {
    // 13×11: n = 4 bins overlap on both sides, N = 143 spans two 128-row and three 64-column
    // tiles, C = 37 is no multiple of the MMA k or the 32-channel chunk. 19×19 n = 8 and
    // 16×16 n = 5 use v2's 8- and 4-tile bin accumulators (13×11 n = 4 the 2-tile one).
    all_versions(
        "odd_shapes",
        &[
            RelationShape {
                b: 2,
                h: 13,
                w: 11,
                c: 37,
                n: 4,
            },
            RelationShape {
                b: 2,
                h: 19,
                w: 19,
                c: 60,
                n: 8,
            },
            RelationShape {
                b: 1,
                h: 16,
                w: 16,
                c: 40,
                n: 5,
            },
            // n = 9 > 8: the v2 and v3 forwards refuse (v1 runs it), their backwards still run.
            RelationShape {
                b: 1,
                h: 20,
                w: 18,
                c: 24,
                n: 9,
            },
            // C = 450 as W30 (Cp = 480): v3's widest dq (15 n8 tiles per warp, the last one
            // loaded alone) and nearly its W30 shared memory (205 of 212 KB); N = 72 ends in a
            // partial tile.
            RelationShape {
                b: 1,
                h: 9,
                w: 8,
                c: 450,
                n: 3,
            },
            // C = 490 > 480: v3's backward refuses (dq would not fit its registers), its
            // forward runs; the BF16 backward dispatch falls back to v2.
            RelationShape {
                b: 1,
                h: 9,
                w: 7,
                c: 490,
                n: 3,
            },
        ],
    );
}

#[test]
fn tile_pair_parity() {
    // The symmetric forward (`sym`) visits each unordered pair of 128-row tiles once, block I
    // taking J = I + d mod T for d = 0..=T/2 (for even T, d = T/2 only when I < T/2): T = 5 (odd,
    // 25×21 = 525 rows) and T = 4 (even, 21×19 = 399, bins overlapping on both sides), both
    // ending in a partial tile. Every version runs them.
    all_versions(
        "tile_pair_parity",
        &[
            RelationShape {
                b: 2,
                h: 25,
                w: 21,
                c: 33,
                n: 5,
            },
            RelationShape {
                b: 1,
                h: 21,
                w: 19,
                c: 24,
                n: 5,
            },
        ],
    );
}

#[test]
fn w30_at_299() {
    // PRRNet-W30 at 299×299: a 75×75 map of C_in = 450 channels, n = 5 (config.rs), batch 2.
    all_versions(
        "w30_at_299",
        &[RelationShape {
            b: 2,
            h: 75,
            w: 75,
            c: 450,
            n: 5,
        }],
    );
}

#[test]
fn dispatch_follows_the_precision() {
    let Some(mut be) = open_gpu("dispatch_follows_the_precision") else {
        return;
    };
    // The fixed rule, not a measured choice (tests/gpu_tune.rs covers that).
    be.set_tune_min_flops(f64::INFINITY);
    let s = RelationShape {
        b: 2,
        h: 19,
        w: 17,
        c: 45,
        n: 5,
    };
    // fp32 runs on the tensor cores in 3×TF32 wherever the kernels fit the device: the
    // symmetric forward (sym) first, split's otherwise; sym's backward is split's.
    for backward in [false, true] {
        let fits = |v: RelationVersion| {
            if backward {
                be.relation_backward_check(v, Precision::Fp32, &s)
            } else {
                be.relation_version_check(v, Precision::Fp32, &s, false)
            }
            .is_ok()
        };
        let want = if fits(RelationVersion::Sym) {
            RelationVersion::Sym
        } else if fits(RelationVersion::Split) {
            RelationVersion::Split
        } else {
            RelationVersion::Simt
        };
        assert_eq!(
            be.relation_dispatch(Precision::Fp32, &s, backward),
            want,
            "fp32 dispatch (backward: {backward})"
        );
        if backward {
            assert_eq!(fits(RelationVersion::Sym), fits(RelationVersion::Split));
        }
    }
    let c = reference(s, 7);
    let bufs = Bufs::new(&mut be, &c);
    for prec in [Precision::Fp32, Precision::Tf32, Precision::Bf16] {
        for backward in [false, true] {
            let v = be.relation_dispatch(prec, &s, backward);
            assert!(
                v.supports(prec) || v == RelationVersion::Simt,
                "{prec}: dispatch chose {v}"
            );
        }
        // The Backend operations give exactly what the dispatched version gives.
        let v = be.relation_dispatch(prec, &s, false);
        let vb = be.relation_dispatch(prec, &s, true);
        let named_prec = |v: RelationVersion| {
            if v == RelationVersion::Simt {
                Precision::Fp32
            } else {
                prec
            }
        };
        bufs.forward(&be, &c, v, named_prec(v));
        let want = (get(&be, bufs.norms), get(&be, bufs.lsum), get(&be, bufs.p));
        let want_df = bufs.backward(&be, &c, vb, named_prec(vb));
        be.set_precision(prec).unwrap();
        bufs.poison(&be);
        be.relation(&s, bufs.f, bufs.norms, bufs.lsum, bufs.p)
            .unwrap();
        let got = (get(&be, bufs.norms), get(&be, bufs.lsum), get(&be, bufs.p));
        assert!(
            got == want,
            "{prec}: Backend::relation differs from version {v}"
        );
        be.upload(bufs.df, &c.df0).unwrap();
        be.relation_backward(&s, bufs.f, bufs.norms, bufs.lsum, bufs.p, bufs.dp, bufs.df)
            .unwrap();
        assert!(
            get(&be, bufs.df) == want_df,
            "{prec}: Backend::relation_backward differs from version {vb}"
        );
        be.set_precision(Precision::Fp32).unwrap();
        eprintln!("{prec}: forward {v}, backward {vb}");
    }
    // Every precision: the symmetric forward wherever it fits (it needs n ≤ 5).
    let many_bins = RelationShape { n: 6, ..s };
    for prec in [Precision::Fp32, Precision::Tf32, Precision::Bf16] {
        if be
            .relation_version_check(RelationVersion::Sym, prec, &s, false)
            .is_ok()
        {
            assert_eq!(
                be.relation_dispatch(prec, &s, false),
                RelationVersion::Sym,
                "{prec}"
            );
        }
        assert!(be
            .relation_version_check(RelationVersion::Sym, prec, &many_bins, false)
            .is_err());
        assert_ne!(
            be.relation_dispatch(prec, &many_bins, false),
            RelationVersion::Sym,
            "{prec}"
        );
    }
    // v3's backward keeps dq in registers for C ≤ 480 only: beyond, BF16 falls back.
    let wide = RelationShape { c: 490, ..s };
    assert!(be
        .relation_backward_check(RelationVersion::V3, Precision::Bf16, &wide)
        .is_err());
    let vb = be.relation_dispatch(Precision::Bf16, &wide, true);
    assert!(
        vb != RelationVersion::V3 && vb.supports(Precision::Bf16),
        "C = 490: BF16 backward dispatch chose {vb}"
    );
}

#[test]
fn version_names_and_precisions() {
    // Needs no GPU.
    for &v in relation_versions() {
        assert_eq!(v.name().parse::<RelationVersion>().unwrap(), v);
        assert!(!v.precisions().is_empty());
        assert!(!v.description().is_empty());
    }
    assert!(RelationVersion::Simt.supports(Precision::Fp32));
    assert!(!RelationVersion::Simt.supports(Precision::Tf32));
    assert!(RelationVersion::Split.supports(Precision::Fp32));
    assert!(!RelationVersion::Split.supports(Precision::Tf32));
    for p in [Precision::Fp32, Precision::Tf32, Precision::Bf16] {
        assert!(RelationVersion::Sym.supports(p));
    }
    assert!(relation_versions()
        .iter()
        .any(|v| v.supports(Precision::Tf32)));
    assert!(relation_versions()
        .iter()
        .any(|v| v.supports(Precision::Bf16)));
    assert!("nope".parse::<RelationVersion>().is_err());
    // The executed share of the nominal work: the symmetric forward computes T(T + 1)/2 of the
    // T² score tiles (W30: T = 44), every backward fuses dS·Q + dSᵀ·Q into one GEMM.
    let w30 = RelationShape {
        b: 64,
        h: 75,
        w: 75,
        c: 450,
        n: 5,
    };
    let share = |v, bw| relation_executed_share(v, &w30, bw);
    assert!((share(RelationVersion::Sym, false) - 45.0 / 88.0).abs() < 1e-12);
    assert_eq!(share(RelationVersion::V3, false), 1.0);
    assert_eq!(share(RelationVersion::Simt, false), 1.0);
    for v in [
        RelationVersion::Sym,
        RelationVersion::V3,
        RelationVersion::Simt,
    ] {
        let b = share(v, true);
        assert!((b - 2.0 / 3.0).abs() < 1e-3, "{v} backward share {b}");
    }
}
