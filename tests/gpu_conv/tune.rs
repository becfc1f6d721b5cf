//! Kernel choice by measurement (backend::cuda::tune), part of the gpu_conv tests: the convolution paths of
//! `ConvAlgo::Auto` and the relation map's versions. Measuring must leave every output as one
//! run of the chosen candidate would (the candidates run on the call's own operands; an output
//! the call accumulates into, dx, dw, df or a residual that is y itself, is saved and restored
//! around them), choose once per key, and never run while a CUDA graph is being captured.
//!
//! Against the CPU backend, with the floor at 0 so that these small shapes are measured:
//! convolutions on a shape the halo kernels take (three paths forward and for the data
//! gradient), a strided one (the phase kernels), a pointwise one (cuBLAS against the implicit
//! kernel's epilogue); the relation map in BF16 (sym, v3, v2 forward; v3, v2 backward).
//! Every candidate's output is checked against the most trusted one's before it is timed; one
//! that disagrees (made so on purpose here) is left out.
//! Tolerances as tests/gpu_conv.rs and tests/gpu_relation.rs (relative L2: fp32 1e-5, bf16
//! 1e-2). Without a usable GPU
//! the test prints a skip message and passes; `PRRNET_REQUIRE_GPU=1` makes it fail instead.

use prrnet::backend::cpu::CpuBackend;
use prrnet::backend::cuda::{ConvAlgo, CudaBackend};
use prrnet::backend::{Backend, ConvShape, Precision, RelationShape};
use prrnet::rng::Rng;
use prrnet::tensor::Tensor;

use super::{common, finish, open_concrete, put_gpu};

fn get_gpu(gpu: &CudaBackend, t: Tensor) -> Vec<f32> {
    let mut v = vec![0.0; t.len];
    gpu.download(t, &mut v).unwrap();
    v
}

/// A 3×3 convolution the halo kernels take (odd sizes, partial tiles): three candidates for
/// the forward and the data gradient, two for the weight gradient.
fn halo_shape() -> ConvShape {
    ConvShape::new(2, 13, 29, 6, 70, 3, 1, 1)
}

/// Inputs, and the CPU's outputs: y = relu(conv + bias + residual), and dx, dw, db accumulated
/// onto their initial values.
struct Case {
    s: ConvShape,
    x: Vec<f32>,
    w: Vec<f32>,
    bias: Vec<f32>,
    residual: Vec<f32>,
    dy: Vec<f32>,
    grads0: [Vec<f32>; 3],
    y: Vec<f32>,
    grads: [Vec<f32>; 3],
}

fn case(s: ConvShape, rng: &mut Rng) -> Case {
    let x = common::randn(rng, s.x_len(), 1.0);
    let w = common::randn(rng, s.w_len(), (1.0 / s.col_k() as f64).sqrt());
    let bias = common::randn(rng, s.cout, 0.5);
    let residual = common::randn(rng, s.y_len(), 0.5);
    let dy = common::randn(rng, s.y_len(), 1.0);
    let grads0 = [
        common::randn(rng, s.x_len(), 0.5),
        common::randn(rng, s.w_len(), 0.5),
        common::randn(rng, s.cout, 0.5),
    ];
    let mut cpu = CpuBackend::new();
    let [xc, wc, bc, rc, dyc] = [&x, &w, &bias, &residual, &dy].map(|v| common::put(&mut cpu, v));
    let yc = common::put(&mut cpu, &vec![f32::NAN; s.y_len()]);
    cpu.conv2d_bias_act(&s, xc, wc, bc, Some(rc), true, yc)
        .unwrap();
    let [dxc, dwc, dbc] = grads0.clone().map(|v| common::put(&mut cpu, &v));
    cpu.conv2d_backward(&s, xc, wc, dyc, Some(dxc), Some(dwc), Some(dbc))
        .unwrap();
    Case {
        s,
        y: common::get(&cpu, yc),
        grads: [dxc, dwc, dbc].map(|t| common::get(&cpu, t)),
        x,
        w,
        bias,
        residual,
        dy,
        grads0,
    }
}

/// One forward (residual separate), one forward accumulating into y (residual = y) and one
/// backward (dx, dw, db) on the GPU; returns [y, y in place, dx, dw, db].
fn run_gpu(gpu: &mut CudaBackend, c: &Case) -> [Vec<f32>; 5] {
    let s = c.s;
    let [x, w, b, r, dy] = [&c.x, &c.w, &c.bias, &c.residual, &c.dy].map(|v| put_gpu(gpu, v));
    let y = put_gpu(gpu, &vec![f32::NAN; s.y_len()]);
    gpu.conv2d_bias_act(&s, x, w, b, Some(r), true, y).unwrap();
    let y_sep = get_gpu(gpu, y);
    gpu.upload(y, &c.residual).unwrap();
    gpu.conv2d_bias_act(&s, x, w, b, Some(y), true, y).unwrap();
    let y_in_place = get_gpu(gpu, y);
    let [dx, dw, db] = c.grads0.clone().map(|v| put_gpu(gpu, &v));
    gpu.conv2d_backward(&s, x, w, dy, Some(dx), Some(dw), Some(db))
        .unwrap();
    [
        y_sep,
        y_in_place,
        get_gpu(gpu, dx),
        get_gpu(gpu, dw),
        get_gpu(gpu, db),
    ]
}

fn check(label: &str, got: &[Vec<f32>; 5], c: &Case, tol: f64, failures: &mut Vec<String>) {
    let want = [&c.y, &c.y, &c.grads[0], &c.grads[1], &c.grads[2]];
    for (i, what) in ["y", "y (residual = y)", "dx", "dw", "db"]
        .iter()
        .enumerate()
    {
        let err = common::rel_l2(&got[i], want[i]);
        let finite = got[i].iter().all(|v| v.is_finite());
        let ok = finite && err <= tol;
        eprintln!(
            "{} {label} {what:17} rel err {err:.2e}",
            if ok { "ok  " } else { "FAIL" }
        );
        if !ok {
            failures.push(format!(
                "{label} {what}: rel err {err:.2e} (tol {tol:.0e}), finite {finite}"
            ));
        }
    }
}

/// The relation map of these tests: two 13×11 maps of 40 channels in 5×5 bins (overlapping
/// bins, partial tiles).
const RELATION: RelationShape = RelationShape {
    b: 2,
    h: 13,
    w: 11,
    c: 40,
    n: 5,
};

/// The lengths of the relation map's outputs: norms, row sums, p.
fn outputs(s: &RelationShape) -> [usize; 3] {
    let np = s.b * s.pixels();
    [np, np, np * s.bins()]
}

#[test]
fn auto_tunes_once_per_shape_and_keeps_results() {
    let Some(mut gpu) = open_concrete("auto_tunes_once_per_shape_and_keeps_results") else {
        return;
    };
    let mut rng = Rng::new(0x7_0E5);
    // (label, shape, choices measured): the forward with a separate residual (every shape);
    // with residual = y only where two paths remain without im2col (the halo shape); the data
    // and the weight gradient (pointwise: cuBLAS against the implicit kernels).
    let shapes = [
        ("halo 13x29 6->70", halo_shape(), 4),
        (
            "strided 9x11 13->17",
            ConvShape::new(2, 9, 11, 13, 17, 3, 2, 1),
            3,
        ),
        (
            "pointwise 9x7 6->12",
            ConvShape::new(2, 9, 7, 6, 12, 1, 1, 0),
            3,
        ),
    ];
    gpu.set_conv_algo(ConvAlgo::Auto);
    gpu.set_tune_min_flops(0.0);
    let mut failures = Vec::new();
    for (name, s, want) in shapes {
        let c = case(s, &mut rng);
        for p in [Precision::Fp32, Precision::Bf16] {
            gpu.set_precision(p).unwrap();
            let tol = if p == Precision::Fp32 { 1e-5 } else { 1e-2 };
            gpu.clear_kernel_choices();
            let first = run_gpu(&mut gpu, &c);
            check(
                &format!("{name} {p} tuning"),
                &first,
                &c,
                tol,
                &mut failures,
            );
            let choices = gpu.kernel_choices();
            for ch in &choices {
                eprintln!(
                    "     {} {} [{}] → {} ({})",
                    ch.pass,
                    ch.shape,
                    ch.epilogue,
                    ch.chosen,
                    ch.paths
                        .iter()
                        .map(|t| format!("{} {:.3} ms", t.path, t.ms))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                let valid = ch.paths.len() >= 2
                    && ch.paths.iter().any(|t| t.path == ch.chosen)
                    && ch.paths.iter().all(|t| t.ms.is_finite() && t.ms >= 0.0);
                if !valid {
                    failures.push(format!("{name} {p}: malformed choice {ch:?}"));
                }
                // Every candidate here is right: checked against the reference, none left out.
                if !ch.rejected.is_empty() || !ch.paths.iter().any(|t| t.path == ch.reference) {
                    failures.push(format!("{name} {p}: a candidate was left out: {ch:?}"));
                }
            }
            if choices.len() != want {
                failures.push(format!(
                    "{name} {p}: {} choices, expected {want}",
                    choices.len()
                ));
            }
            if choices.iter().any(|ch| {
                ch.epilogue.contains("residual=y") && ch.paths.iter().any(|t| t.path == "im2col")
            }) {
                failures.push(format!("{name} {p}: im2col timed for an in-place residual"));
            }
            // The same calls again: no new measurement, the same paths, the same bits.
            let again = run_gpu(&mut gpu, &c);
            if gpu.kernel_choices().len() != choices.len() {
                failures.push(format!("{name} {p}: measured again on the second call"));
            }
            if again
                .iter()
                .zip(&first)
                .any(|(a, b)| a.iter().zip(b).any(|(u, v)| u.to_bits() != v.to_bits()))
            {
                failures.push(format!(
                    "{name} {p}: the second call's results differ from the first's"
                ));
            }
        }
    }
    // Under the floor nothing is measured, and the results stay right.
    gpu.set_precision(Precision::Fp32).unwrap();
    gpu.set_tune_min_flops(f64::INFINITY);
    gpu.clear_kernel_choices();
    let c = case(shapes[0].1, &mut rng);
    let got = run_gpu(&mut gpu, &c);
    check("halo fp32 under the floor", &got, &c, 1e-5, &mut failures);
    if !gpu.kernel_choices().is_empty() {
        failures.push("a shape under the floor was measured".into());
    }
    finish(&gpu, &failures);
}

/// A convolution first met inside a graph capture takes the fallback path without measuring
/// (measuring would synchronise the stream and invalidate the capture), and the replayed graph
/// computes the right result.
#[test]
fn auto_does_not_tune_inside_a_graph_capture() {
    let Some(mut gpu) = open_concrete("auto_does_not_tune_inside_a_graph_capture") else {
        return;
    };
    gpu.set_tune_min_flops(0.0);
    gpu.clear_kernel_choices();
    let mut rng = Rng::new(0xCA97);
    let c = case(halo_shape(), &mut rng);
    let s = c.s;
    let [x, w, b, r] = [&c.x, &c.w, &c.bias, &c.residual].map(|v| put_gpu(&mut gpu, v));
    let y = put_gpu(&mut gpu, &vec![f32::NAN; s.y_len()]);
    // Nothing may allocate during a capture: a first run under the fixed halo rule (the path
    // Auto falls back to here) sizes the workspace, without measuring anything.
    gpu.set_conv_algo(ConvAlgo::Halo);
    gpu.conv2d_bias_act(&s, x, w, b, Some(r), true, y).unwrap();
    gpu.set_conv_algo(ConvAlgo::Auto);
    gpu.upload(y, &vec![f32::NAN; s.y_len()]).unwrap();
    gpu.synchronize().unwrap();
    gpu.graph_begin().unwrap();
    let ran = gpu.conv2d_bias_act(&s, x, w, b, Some(r), true, y);
    let graph = gpu.graph_end();
    ran.unwrap();
    let graph = graph.expect("the capture must survive the convolution");
    assert!(gpu.kernel_choices().is_empty(), "measured inside a capture");
    gpu.graph_launch(graph).unwrap();
    let got = get_gpu(&gpu, y);
    let err = common::rel_l2(&got, &c.y);
    assert!(err <= 1e-5, "graph replay: rel err {err:.2e}");
    // Outside the capture the same call is measured.
    gpu.conv2d_bias_act(&s, x, w, b, Some(r), true, y).unwrap();
    assert_eq!(gpu.kernel_choices().len(), 1);
}

/// The relation map in BF16: the forward among sym, v3 and v2, the backward (which adds into
/// df) among v3 and v2; results as the CPU's, one measurement per direction.
#[test]
fn relation_versions_measured_once_and_results_kept() {
    let Some(mut gpu) = open_concrete("relation_versions_measured_once_and_results_kept") else {
        return;
    };
    let s = RELATION;
    let (np, nb) = (s.pixels(), s.bins());
    let mut rng = Rng::new(0x4E1A);
    let f = common::uniform(&mut rng, s.b * np * s.c, 0.02, 1.0);
    let dp = common::randn(&mut rng, s.b * np * nb, 1.0);
    let df0 = common::randn(&mut rng, s.b * np * s.c, 0.1);
    let mut cpu = CpuBackend::new();
    let [fc, dpc, dfc] = [&f, &dp, &df0].map(|v| common::put(&mut cpu, v));
    let [nc, lc, pc] = outputs(&s).map(|n| common::put(&mut cpu, &vec![f32::NAN; n]));
    cpu.relation(&s, fc, nc, lc, pc).unwrap();
    cpu.relation_backward(&s, fc, nc, lc, pc, dpc, dfc).unwrap();
    // df is compared by its increment (df after − df0), which a second accumulation would
    // double whatever df0's size.
    let increment =
        |df: Vec<f32>| -> Vec<f32> { df.iter().zip(&df0).map(|(a, b)| a - b).collect() };
    let [l, p, df] = [lc, pc, dfc].map(|t| common::get(&cpu, t));
    let want = [l, p, increment(df)];

    gpu.set_tune_min_flops(0.0);
    gpu.clear_kernel_choices();
    gpu.set_precision(Precision::Bf16).unwrap();
    let [fg, dpg] = [&f, &dp].map(|v| put_gpu(&mut gpu, v));
    let [ng, lg, pg] = outputs(&s).map(|n| put_gpu(&mut gpu, &vec![f32::NAN; n]));
    let dfg = put_gpu(&mut gpu, &df0);
    let mut runs = Vec::new();
    let mut failures = Vec::new();
    for round in 0..2 {
        for t in [ng, lg, pg] {
            gpu.upload(t, &vec![f32::NAN; t.len]).unwrap();
        }
        gpu.upload(dfg, &df0).unwrap();
        gpu.relation(&s, fg, ng, lg, pg).unwrap();
        gpu.relation_backward(&s, fg, ng, lg, pg, dpg, dfg).unwrap();
        let [l, p, df] = [lg, pg, dfg].map(|t| get_gpu(&gpu, t));
        let got = [l, p, increment(df)];
        for (i, what) in ["lsum", "p", "df − df0"].iter().enumerate() {
            let err = common::rel_l2(&got[i], &want[i]);
            eprintln!("round {round} {what:4} rel err {err:.2e}");
            if err.is_nan() || err > 1e-2 {
                failures.push(format!(
                    "round {round} {what}: rel err {err:.2e} (tol 1e-2)"
                ));
            }
        }
        runs.push(got);
        let choices = gpu.kernel_choices();
        for ch in &choices {
            eprintln!(
                "     {} {} {} → {} {:?}",
                ch.op, ch.pass, ch.shape, ch.chosen, ch.paths
            );
        }
        let names = |pass: &str| -> Vec<String> {
            choices
                .iter()
                .filter(|c| c.op == "relation" && c.pass == pass)
                .flat_map(|c| c.paths.iter().map(|t| t.path.clone()))
                .collect()
        };
        // Devices whose shared memory cannot hold v3 or sym measure fewer candidates.
        let fwd = names("forward");
        let bwd = names("backward");
        if choices.len() != 2 || fwd.len() < 2 || bwd.len() < 2 || !fwd.contains(&"v2".into()) {
            failures.push(format!(
                "round {round}: expected one forward and one backward choice of ≥ 2 versions, \
                 got {choices:?}"
            ));
        }
        if bwd.iter().any(|v| v == "sym") {
            failures.push("sym measured as a backward of its own (it runs v3's)".into());
        }
        if choices
            .iter()
            .any(|c| !c.rejected.is_empty() || c.reference != "v2")
        {
            failures.push(format!(
                "round {round}: expected every version checked against v2, none left out"
            ));
        }
    }
    let same = runs[0]
        .iter()
        .zip(&runs[1])
        .all(|(a, b)| a.iter().zip(b).all(|(u, v)| u.to_bits() == v.to_bits()));
    if !same {
        failures.push("the second round's results differ from the first's".into());
    }
    finish(&gpu, &failures);
}

/// A candidate whose output disagrees with the most trusted candidate's is left out of the
/// choice and reported, however fast it is: here the halo kernels (convolutions) and sym (the
/// relation forward) with an eighth of their output overwritten while they are measured
/// (`inject_tune_fault`). The results stay the CPU's, and the other candidates are kept.
#[test]
fn a_candidate_that_disagrees_is_left_out() {
    let Some(mut gpu) = open_concrete("a_candidate_that_disagrees_is_left_out") else {
        return;
    };
    let mut rng = Rng::new(0xFA17);
    let c = case(halo_shape(), &mut rng);
    gpu.set_conv_algo(ConvAlgo::Auto);
    gpu.set_tune_min_flops(0.0);
    let mut failures = Vec::new();
    for p in [Precision::Fp32, Precision::Bf16] {
        gpu.set_precision(p).unwrap();
        gpu.clear_kernel_choices();
        gpu.inject_tune_fault(Some("halo"));
        let got = run_gpu(&mut gpu, &c);
        gpu.inject_tune_fault(None);
        let tol = if p == Precision::Fp32 { 1e-5 } else { 1e-2 };
        check(&format!("halo left out {p}"), &got, &c, tol, &mut failures);
        let choices = gpu.kernel_choices();
        // The forward (separate residual and residual = y) and the data gradient have a halo
        // candidate; the weight gradient does not.
        let with_halo: Vec<_> = choices
            .iter()
            .filter(|ch| ch.pass != "backward_weight")
            .collect();
        if with_halo.len() != 3 {
            failures.push(format!(
                "{p}: {} choices with a halo candidate",
                with_halo.len()
            ));
        }
        for ch in with_halo {
            eprintln!(
                "     {} [{}] → {} rejected {:?}",
                ch.pass, ch.epilogue, ch.chosen, ch.rejected
            );
            let left_out = ch.rejected.len() == 1
                && ch.rejected[0].path == "halo"
                && ch.rejected[0].reason.contains("differs from");
            if !left_out || ch.chosen == "halo" || ch.paths.iter().any(|t| t.path == "halo") {
                failures.push(format!("{p}: halo not left out: {ch:?}"));
            }
            if ch.paths.is_empty() || ch.reference == "halo" || ch.reference.is_empty() {
                failures.push(format!("{p}: no trusted candidate kept: {ch:?}"));
            }
        }
    }

    // The relation forward in BF16: sym left out, v3 and v2 kept.
    let s = RELATION;
    let f = common::uniform(&mut rng, s.b * s.pixels() * s.c, 0.02, 1.0);
    let mut cpu = CpuBackend::new();
    let fc = common::put(&mut cpu, &f);
    let [nc, lc, pc] = outputs(&s).map(|n| common::put(&mut cpu, &vec![f32::NAN; n]));
    cpu.relation(&s, fc, nc, lc, pc).unwrap();
    gpu.set_precision(Precision::Bf16).unwrap();
    gpu.clear_kernel_choices();
    let fg = put_gpu(&mut gpu, &f);
    let [ng, lg, pg] = outputs(&s).map(|n| put_gpu(&mut gpu, &vec![f32::NAN; n]));
    gpu.inject_tune_fault(Some("sym"));
    gpu.relation(&s, fg, ng, lg, pg).unwrap();
    gpu.inject_tune_fault(None);
    let err = common::rel_l2(&get_gpu(&gpu, pg), &common::get(&cpu, pc));
    eprintln!("relation p with sym left out: rel err {err:.2e}");
    if err.is_nan() || err > 1e-2 {
        failures.push(format!("relation p: rel err {err:.2e} (tol 1e-2)"));
    }
    let choices = gpu.kernel_choices();
    let sym_left_out = choices.len() == 1
        && choices[0].chosen != "sym"
        && choices[0].reference == "v2"
        && choices[0]
            .rejected
            .iter()
            .map(|r| r.path.as_str())
            .eq(["sym"]);
    if !sym_left_out {
        failures.push(format!("relation: sym not left out: {choices:?}"));
    }
    finish(&gpu, &failures);
}

/// A candidate that stops its process while it is measured (a kernel fault takes the CUDA
/// context with it) leaves its turn open in the tuning journal. A backend that opens the
/// journal puts it in quarantine: it is left out of every measurement of the same operation,
/// pass and precision, with the reason in the choice's record, and everything else is still
/// measured. Here `inject_tune_stop` stands in for the fault: the halo kernels in the fp32
/// forward. The data gradient (another pass) and the BF16 forward keep halo.
#[test]
fn a_candidate_that_stopped_a_process_is_quarantined() {
    let Some(mut gpu) = open_concrete("a_candidate_that_stopped_a_process_is_quarantined") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("prrnet-tune-journal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let journal = dir.join("journal.tsv");
    let _ = std::fs::remove_file(&journal);
    let mut rng = Rng::new(0x570B);
    let c = case(halo_shape(), &mut rng);
    let s = c.s;
    gpu.set_conv_algo(ConvAlgo::Auto);
    gpu.set_tune_min_flops(0.0);
    gpu.set_precision(Precision::Fp32).unwrap();
    gpu.clear_kernel_choices();
    gpu.set_tune_journal(Some(&journal)).unwrap();
    let mut failures = Vec::new();

    // The "first process": the forward stops in halo's turn (the last, by trust).
    gpu.inject_tune_stop(Some("halo"));
    let [x, w, b, r] = [&c.x, &c.w, &c.bias, &c.residual].map(|v| put_gpu(&mut gpu, v));
    let y = put_gpu(&mut gpu, &vec![f32::NAN; s.y_len()]);
    match gpu.conv2d_bias_act(&s, x, w, b, Some(r), true, y) {
        Err(e) if e.to_string().contains("injected fault") => {}
        other => failures.push(format!(
            "the injected stop did not fail the call: {other:?}"
        )),
    }
    gpu.inject_tune_stop(None);
    let text = std::fs::read_to_string(&journal).unwrap();
    let begins: Vec<_> = text.lines().filter(|l| l.starts_with("begin\t")).collect();
    let ends = text.lines().filter(|l| l.starts_with("end\t")).count();
    eprintln!("journal after the stop:\n{text}");
    if begins.len() != 3 || ends != 2 || !begins[2].contains("\thalo\tconv forward fp32\t") {
        failures.push(format!("journal after the stop: {text}"));
    }

    // The "next process": a new journal reader, no choices yet.
    gpu.set_tune_journal(Some(&journal)).unwrap();
    gpu.clear_kernel_choices();
    let got = run_gpu(&mut gpu, &c);
    check("halo quarantined fp32", &got, &c, 1e-5, &mut failures);
    for ch in gpu.kernel_choices() {
        eprintln!(
            "     {} [{}] → {} paths {:?} rejected {:?}",
            ch.pass, ch.epilogue, ch.chosen, ch.paths, ch.rejected
        );
        let halo_timed = ch.paths.iter().any(|t| t.path == "halo");
        let quarantined = ch.rejected.len() == 1
            && ch.rejected[0].path == "halo"
            && ch.rejected[0].reason.contains("quarantined")
            && ch.rejected[0].reason.contains("conv forward b2");
        match ch.pass.as_str() {
            "forward" if !quarantined || halo_timed || ch.chosen == "halo" => {
                failures.push(format!("fp32 forward: halo not quarantined: {ch:?}"))
            }
            "backward_data" if !halo_timed || !ch.rejected.is_empty() => {
                failures.push(format!("fp32 data gradient: halo not measured: {ch:?}"))
            }
            _ => {}
        }
    }
    let forwards = gpu
        .kernel_choices()
        .iter()
        .filter(|ch| ch.pass == "forward")
        .count();
    if forwards != 2 {
        failures.push(format!("{forwards} forward choices recorded, want 2"));
    }
    // Saved choices that name halo (a checkpoint's, say) are not taken back where halo is in
    // quarantine: those keys are measured again. The data gradient's is taken back.
    let saved = gpu.saved_kernel_choices().unwrap();
    let as_halo = ["im2col", "implicit"].iter().fold(saved, |s, p| {
        s.replace(&format!("\"chosen\":\"{p}\""), "\"chosen\":\"halo\"")
    });
    gpu.clear_kernel_choices();
    gpu.restore_kernel_choices(&as_halo).unwrap();
    let restored: Vec<_> = gpu.kernel_choices().into_iter().map(|c| c.pass).collect();
    if restored != ["backward_data", "backward_weight"] {
        failures.push(format!("restored choices of passes {restored:?}"));
    }

    // Another precision is another kernel family: halo is measured there.
    gpu.set_precision(Precision::Bf16).unwrap();
    gpu.clear_kernel_choices();
    let got = run_gpu(&mut gpu, &c);
    check("halo kept bf16", &got, &c, 1e-2, &mut failures);
    for ch in gpu
        .kernel_choices()
        .iter()
        .filter(|ch| ch.pass == "forward")
    {
        if !ch.paths.iter().any(|t| t.path == "halo") || !ch.rejected.is_empty() {
            failures.push(format!("bf16 forward: halo not measured: {ch:?}"));
        }
    }
    gpu.set_tune_journal(None).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    finish(&gpu, &failures);
}

/// The memory measuring holds for a moment (the save of an output the call adds into, the
/// reference's copy) counts in `allocated_bytes`, the peak that benchmarks report: after every
/// path has run the shape once under its fixed rule (so the workspace has grown as far as it
/// will), a measured run adds exactly its own buffers and what measuring held.
#[test]
fn memory_held_while_measuring_is_counted() {
    let Some(mut gpu) = open_concrete("memory_held_while_measuring_is_counted") else {
        return;
    };
    let mut rng = Rng::new(0x3E3);
    let c = case(halo_shape(), &mut rng);
    gpu.set_precision(Precision::Bf16).unwrap();
    gpu.set_tune_min_flops(0.0);
    for algo in [ConvAlgo::Im2col, ConvAlgo::Implicit, ConvAlgo::Halo] {
        gpu.set_conv_algo(algo);
        run_gpu(&mut gpu, &c);
    }
    // What one more run adds without measuring: its own buffers (run_gpu allocates them).
    let before = gpu.allocated_bytes();
    run_gpu(&mut gpu, &c);
    let buffers = gpu.allocated_bytes() - before;
    assert_eq!(gpu.tuning_peak_bytes(), 0, "nothing measured yet");
    let before = gpu.allocated_bytes();
    gpu.set_conv_algo(ConvAlgo::Auto);
    run_gpu(&mut gpu, &c);
    assert!(!gpu.kernel_choices().is_empty());
    // At least the largest of: the forward's copy of y, the data gradient's save and copy of
    // dx, the weight gradient's of dw (here y's: 70 channels against x's 6).
    let held = gpu.tuning_peak_bytes();
    let s = c.s;
    let at_least = (4 * s.y_len()).max(8 * s.x_len()).max(8 * s.w_len());
    assert!(
        held >= at_least,
        "measuring held {held} bytes, expected ≥ {at_least}"
    );
    assert_eq!(gpu.allocated_bytes(), before + buffers + held);
}

/// Choices saved by one backend and restored into another (a resumed training run,
/// src/train/state.rs): the second measures nothing, runs the same kernels and gets the same
/// bits; text that is not a saved list is an error.
#[test]
fn saved_choices_restore_into_a_new_backend() {
    let Some(mut first) = open_concrete("saved_choices_restore_into_a_new_backend") else {
        return;
    };
    let mut rng = Rng::new(0x5A7E);
    let c = case(halo_shape(), &mut rng);
    first.set_tune_min_flops(0.0);
    first.set_precision(Precision::Bf16).unwrap();
    let want = run_gpu(&mut first, &c);
    let json = first.saved_kernel_choices().expect("choices were measured");
    let Some(mut second) = open_concrete("saved_choices_restore_into_a_new_backend") else {
        return;
    };
    second.set_tune_min_flops(0.0);
    second.set_precision(Precision::Bf16).unwrap();
    assert!(second.saved_kernel_choices().is_none());
    second.restore_kernel_choices(&json).unwrap();
    assert_eq!(second.kernel_choices(), first.kernel_choices());
    let got = run_gpu(&mut second, &c);
    assert_eq!(
        second.kernel_choices().len(),
        first.kernel_choices().len(),
        "measured again after the restore"
    );
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        assert!(
            a.iter().zip(b).all(|(u, v)| u.to_bits() == v.to_bits()),
            "output {i} differs from the first backend's"
        );
    }
    assert!(second
        .restore_kernel_choices("{\"not\": \"a list\"}")
        .is_err());
    let renamed = json.replace("\"chosen\":\"", "\"chosen\":\"x");
    assert!(second.restore_kernel_choices(&renamed).is_err());
}

/// Training checkpoints carry the backend's kernel choices (src/train/state.rs): `save` writes
/// them beside the checkpoint (`last.kernels.json`), `load` gives them to the resuming run's
/// backend; an unreadable file leaves the resume working, with nothing restored.
#[test]
fn checkpoints_carry_the_kernel_choices() {
    use prrnet::model::PrrNet;
    use prrnet::train::state::{self, TrainState};
    use prrnet::Config;
    let Some(mut gpu) = open_concrete("checkpoints_carry_the_kernel_choices") else {
        return;
    };
    // One measured choice, made on the backend before the network takes it over.
    gpu.set_tune_min_flops(0.0);
    let mut rng = Rng::new(0xC4EC);
    let c = case(ConvShape::new(2, 9, 11, 13, 17, 3, 2, 1), &mut rng);
    run_gpu(&mut gpu, &c);
    let made = gpu.kernel_choices();
    assert!(!made.is_empty());
    let cfg = Config::preset("tiny").unwrap();
    let net = PrrNet::new(&cfg, Box::new(gpu), 1, true).unwrap();
    let dir = common::tmp_dir("kernel-choices");
    let st = TrainState {
        epoch: 0,
        step_in_epoch: 1,
        global_step: 1,
        adam_steps: 1,
        best_auc: None,
        seed: 3,
    };
    state::save(&net, &dir, "last", &st).unwrap();
    assert!(state::kernels_path(&dir, "last").is_file());

    let Some(fresh) = open_concrete("checkpoints_carry_the_kernel_choices") else {
        return;
    };
    let mut resumed = PrrNet::new(&cfg, Box::new(fresh), 1, true).unwrap();
    assert_eq!(state::load(&mut resumed, &dir, "last").unwrap(), st);
    assert_eq!(resumed.backend().kernel_choices(), made);

    std::fs::write(state::kernels_path(&dir, "last"), "not json").unwrap();
    let Some(other) = open_concrete("checkpoints_carry_the_kernel_choices") else {
        return;
    };
    let mut again = PrrNet::new(&cfg, Box::new(other), 1, true).unwrap();
    assert_eq!(state::load(&mut again, &dir, "last").unwrap(), st);
    assert!(again.backend().kernel_choices().is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}
