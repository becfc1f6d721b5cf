//! GPU convolution forward (`conv2d`, `conv2d_bias_act`) and backward against the CPU backend,
//! for every algorithm (im2col + cuBLAS, implicit GEMM, halo tiles) × every precision (fp32,
//! tf32, bf16), on the W30 shapes at 299×299 (batch 2) and on odd shapes that exercise every
//! tile tail. The halo algorithm is run only on the shapes its kernels take (elsewhere it runs
//! the implicit kernels, already covered).
//!
//! Outputs are poisoned with NaN before every launch (a forgotten element fails); inputs are
//! random normal values. Each launch runs twice and the two results must be bitwise equal.
//! Tolerances (relative L2 against the CPU's f32): fp32 1e-5, tf32 1e-3, bf16 1e-2.
//!
//! Without a usable GPU the tests print a skip message and pass; with `PRRNET_REQUIRE_GPU=1`
//! they fail instead. `PRRNET_CONV_SHAPES=odd,halo` keeps only the shapes whose labels start
//! with one of those words (the GPU bundle's compute-sanitizer runs: the small shapes reach
//! every kernel and every tail at a fraction of the W30 shapes' time), and
//! `PRRNET_CONV_ALGOS=implicit,halo` only those algorithms.
//!
//! The module `tune` (tests/gpu_conv/tune.rs) checks the choice of kernels by measurement
//! (`ConvAlgo::Auto`, the relation versions).

mod common;
#[path = "gpu_conv/tune.rs"]
mod tune;

use prrnet::backend::cpu::CpuBackend;
use prrnet::backend::cuda::{open_cuda, ConvAlgo, CudaBackend};
use prrnet::backend::{Backend, ConvShape, Precision};
use prrnet::rng::Rng;
use prrnet::tensor::Tensor;

/// The concrete CUDA backend (for `set_conv_algo`), with `common::open_gpu`'s skip logic.
fn open_concrete(test: &str) -> Option<CudaBackend> {
    let require = std::env::var("PRRNET_REQUIRE_GPU").is_ok_and(|v| v == "1");
    match open_cuda(0) {
        Ok(be) => Some(be),
        Err(e) if require => panic!("{test}: PRRNET_REQUIRE_GPU=1 but no usable GPU: {e}"),
        Err(e) => {
            eprintln!("SKIP {test}: no usable GPU ({e}); set PRRNET_REQUIRE_GPU=1 to fail instead");
            None
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn shape(
    b: usize,
    h: usize,
    w: usize,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
) -> ConvShape {
    ConvShape::new(b, h, w, cin, cout, k, stride, pad)
}

/// [`all_shapes`], restricted by `PRRNET_CONV_SHAPES` when it is set.
fn shapes() -> Vec<(&'static str, ConvShape)> {
    let keep = std::env::var("PRRNET_CONV_SHAPES").unwrap_or_default();
    let prefixes: Vec<&str> = keep.split(',').filter(|p| !p.is_empty()).collect();
    let picked: Vec<_> = all_shapes()
        .into_iter()
        .filter(|(name, _)| prefixes.is_empty() || prefixes.iter().any(|p| name.starts_with(p)))
        .collect();
    assert!(
        !picked.is_empty(),
        "PRRNET_CONV_SHAPES={keep} matches no shape"
    );
    picked
}

fn all_shapes() -> Vec<(&'static str, ConvShape)> {
    vec![
        // W30 at 299×299, batch 2: the branch 3×3 convolutions …
        ("w30 75x75 30->30", shape(2, 75, 75, 30, 30, 3, 1, 1)),
        ("w30 38x38 60->60", shape(2, 38, 38, 60, 60, 3, 1, 1)),
        ("w30 19x19 120->120", shape(2, 19, 19, 120, 120, 3, 1, 1)),
        ("w30 10x10 240->240", shape(2, 10, 10, 240, 240, 3, 1, 1)),
        // … the stride-2 fuse / transition convolutions …
        ("w30 s2 75->38 30->60", shape(2, 75, 75, 30, 60, 3, 2, 1)),
        ("w30 s2 38->19 60->120", shape(2, 38, 38, 60, 120, 3, 2, 1)),
        (
            "w30 s2 19->10 120->240",
            shape(2, 19, 19, 120, 240, 3, 2, 1),
        ),
        ("w30 s2 75->38 30->30", shape(2, 75, 75, 30, 30, 3, 2, 1)),
        // … and the stem.
        ("stem 299->150 3->64", shape(2, 299, 299, 3, 64, 3, 2, 1)),
        ("stem 150->75 64->64", shape(2, 150, 150, 64, 64, 3, 2, 1)),
        // Odd shapes (every tail; the relation head's unpadded k = 3 and k = n − 2).
        ("odd 7x5 3->5 k3 s1 p1", shape(2, 7, 5, 3, 5, 3, 1, 1)),
        ("odd 8x8 1->4 k3 p0", shape(2, 8, 8, 1, 4, 3, 1, 0)),
        ("odd 6x6 5->3 k4 p0", shape(2, 6, 6, 5, 3, 4, 1, 0)),
        ("odd 9x11 13->17 k3 s2 p1", shape(2, 9, 11, 13, 17, 3, 2, 1)),
        // The data gradient's phases (kernels/conv_gather.cuh PhaseTaps): even sides (the
        // last row and column of dx see one tap fewer), k = 4 (two taps in each direction of
        // every phase), stride 3 with padding 0 and 2, and a 1×1 stride-2 convolution, whose
        // odd phases have no taps at all (dx unchanged there).
        ("odd 10x8 7->9 k3 s2 p1", shape(2, 10, 8, 7, 9, 3, 2, 1)),
        ("odd 9x10 4->6 k4 s2 p1", shape(1, 9, 10, 4, 6, 4, 2, 1)),
        ("odd 11x13 6->5 k3 s3 p0", shape(2, 11, 13, 6, 5, 3, 3, 0)),
        ("odd 12x7 8->4 k5 s3 p2", shape(1, 12, 7, 8, 4, 5, 3, 2)),
        ("odd 7x9 5->3 k1 s2 p0", shape(2, 7, 9, 5, 3, 1, 2, 0)),
        // Pointwise: the implicit kernels under the implicit algorithm (forward, the data
        // gradient as the transposed 1×1 convolution, the weight gradient); under halo cuBLAS,
        // except conv2d_bias_act (the fused epilogue): a fuse-layer shape, a bottleneck's
        // widening 64 → 256 (four column tiles), and odd channel counts (two-float and scalar
        // staging).
        ("pointwise 10x10 30->60", shape(2, 10, 10, 30, 60, 1, 1, 0)),
        (
            "pointwise 15x15 64->256",
            shape(2, 15, 15, 64, 256, 1, 1, 0),
        ),
        ("pointwise 9x7 6->5", shape(2, 9, 7, 6, 5, 1, 1, 0)),
        ("pointwise 7x9 5->70", shape(1, 7, 9, 5, 70, 1, 1, 0)),
        // Halo-kernel shapes: Cin 6 (two-float staging, a partial channel chunk), Cout 70 (two
        // column tiles of 64, the second nearly empty), a 13×29 output (partial patches in
        // both directions); padding 2 (Ho = H + 2; its data gradient has padding 0) and
        // padding 0 (exact patches, Cout 33; its data gradient has padding 2 and Cin 33).
        ("halo 13x29 6->70 p1", shape(2, 13, 29, 6, 70, 3, 1, 1)),
        ("halo 14x30 30->30 p2", shape(1, 14, 30, 30, 30, 3, 1, 2)),
        ("halo 18x34 60->33 p0", shape(1, 18, 34, 60, 33, 3, 1, 0)),
    ]
}

/// The algorithms a test runs on `s`: halo only where its kernels take the shape; only those
/// named in `PRRNET_CONV_ALGOS` (comma-separated) when it is set.
fn algos_for(gpu: &CudaBackend, s: &ConvShape) -> Vec<ConvAlgo> {
    let mut algos = vec![ConvAlgo::Im2col, ConvAlgo::Implicit];
    gpu.set_conv_algo(ConvAlgo::Halo);
    if gpu.conv_uses_halo(s) {
        algos.push(ConvAlgo::Halo);
    }
    if let Ok(names) = std::env::var("PRRNET_CONV_ALGOS") {
        let wanted: Vec<ConvAlgo> = names
            .split(',')
            .map(|n| n.trim().parse().expect("PRRNET_CONV_ALGOS"))
            .collect();
        algos.retain(|a| wanted.contains(a));
    }
    algos
}

/// Inputs and CPU results of one shape.
struct Reference {
    x: Vec<f32>,
    w: Vec<f32>,
    bias: Vec<f32>,
    residual: Vec<f32>,
    /// conv2d without bias, with bias.
    conv: Vec<f32>,
    conv_bias: Vec<f32>,
    /// conv2d_bias_act for (residual, relu) = (F, F), (F, T), (T, F), (T, T).
    act: Vec<Vec<f32>>,
}

/// (label, operation, expected output).
type Case<'a> = (String, Box<dyn Fn(&CudaBackend)>, &'a Vec<f32>);

const COMBOS: [(bool, bool); 4] = [(false, false), (false, true), (true, false), (true, true)];

fn reference(s: &ConvShape, rng: &mut Rng) -> Reference {
    let x = common::randn(rng, s.x_len(), 1.0);
    let w = common::randn(rng, s.w_len(), (1.0 / s.col_k() as f64).sqrt());
    let bias = common::randn(rng, s.cout, 0.5);
    let residual = common::randn(rng, s.y_len(), 0.5);
    let mut cpu = CpuBackend::new();
    let (xt, wt) = (common::put(&mut cpu, &x), common::put(&mut cpu, &w));
    let bt = common::put(&mut cpu, &bias);
    let rt = common::put(&mut cpu, &residual);
    let yt = common::put(&mut cpu, &vec![f32::NAN; s.y_len()]);
    cpu.conv2d(s, xt, wt, None, yt).unwrap();
    let conv = common::get(&cpu, yt);
    let rows = s.b * s.ho * s.wo;
    let epilogue = |cpu: &CpuBackend, res: Option<Tensor>, relu: bool| {
        cpu.upload(yt, &conv).unwrap();
        cpu.bias_act_inplace(rows, s.cout, yt, bt, res, relu)
            .unwrap();
        common::get(cpu, yt)
    };
    let conv_bias = epilogue(&cpu, None, false);
    let act = COMBOS
        .iter()
        .map(|&(res, relu)| epilogue(&cpu, res.then_some(rt), relu))
        .collect();
    Reference {
        x,
        w,
        bias,
        residual,
        conv,
        conv_bias,
        act,
    }
}

fn put_gpu(gpu: &mut CudaBackend, data: &[f32]) -> Tensor {
    let t = Tensor::new(gpu.alloc(data.len()).unwrap(), 0, data.len());
    gpu.upload(t, data).unwrap();
    t
}

fn tolerance(p: Precision) -> f64 {
    match p {
        Precision::Fp32 => 1e-5,
        Precision::Tf32 => 1e-3,
        Precision::Bf16 => 1e-2,
    }
}

/// Back to fp32 for whoever uses the backend next, then fail with every collected mismatch.
fn finish(gpu: &CudaBackend, failures: &[String]) {
    gpu.set_precision(Precision::Fp32).unwrap();
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn conv_algo_names_parse() {
    assert_eq!("im2col".parse::<ConvAlgo>().unwrap(), ConvAlgo::Im2col);
    assert_eq!("Implicit".parse::<ConvAlgo>().unwrap(), ConvAlgo::Implicit);
    assert!("winograd".parse::<ConvAlgo>().is_err());
    assert_eq!("halo".parse::<ConvAlgo>().unwrap(), ConvAlgo::Halo);
    assert_eq!("auto".parse::<ConvAlgo>().unwrap(), ConvAlgo::Auto);
    assert_eq!(ConvAlgo::default(), ConvAlgo::Auto);
    assert_eq!(ConvAlgo::Im2col.to_string(), "im2col");
}

#[test]
fn conv_forward_matches_cpu_every_algo_and_precision() {
    // The trait-object path must open too (the same skip / require behaviour).
    if common::open_gpu("conv_forward_matches_cpu_every_algo_and_precision").is_none() {
        return;
    }
    let Some(mut gpu) = open_concrete("conv_forward_matches_cpu_every_algo_and_precision") else {
        return;
    };
    let mut rng = Rng::new(0x5EED_C0DE);
    let mut failures = Vec::new();
    for (name, s) in shapes() {
        let r = reference(&s, &mut rng);
        let x = put_gpu(&mut gpu, &r.x);
        let w = put_gpu(&mut gpu, &r.w);
        let bias = put_gpu(&mut gpu, &r.bias);
        let residual = put_gpu(&mut gpu, &r.residual);
        let poison = vec![f32::NAN; s.y_len()];
        let y = put_gpu(&mut gpu, &poison);
        for algo in algos_for(&gpu, &s) {
            gpu.set_conv_algo(algo);
            assert_eq!(gpu.conv_algo(), algo);
            for p in [Precision::Fp32, Precision::Tf32, Precision::Bf16] {
                gpu.set_precision(p).unwrap();
                let tol = tolerance(p);
                // (label, operation, expected)
                let mut cases: Vec<Case> = vec![
                    (
                        "conv2d".into(),
                        Box::new(move |g: &CudaBackend| g.conv2d(&s, x, w, None, y).unwrap()),
                        &r.conv,
                    ),
                    (
                        "conv2d+bias".into(),
                        Box::new(move |g: &CudaBackend| g.conv2d(&s, x, w, Some(bias), y).unwrap()),
                        &r.conv_bias,
                    ),
                ];
                for (i, &(res, relu)) in COMBOS.iter().enumerate() {
                    cases.push((
                        format!("conv2d_bias_act(residual={res}, relu={relu})"),
                        Box::new(move |g: &CudaBackend| {
                            g.conv2d_bias_act(&s, x, w, bias, res.then_some(residual), relu, y)
                                .unwrap()
                        }),
                        &r.act[i],
                    ));
                }
                for (label, op, want) in &cases {
                    let mut outs = Vec::new();
                    for _ in 0..2 {
                        gpu.upload(y, &poison).unwrap();
                        op(&gpu);
                        let mut got = vec![0.0; s.y_len()];
                        gpu.download(y, &mut got).unwrap();
                        outs.push(got);
                    }
                    let err = common::rel_l2(&outs[0], want);
                    let finite = outs[0].iter().all(|v| v.is_finite());
                    let same = outs[0]
                        .iter()
                        .zip(&outs[1])
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    let ok = finite && err <= tol && same;
                    eprintln!(
                        "{} {name:26} {algo:8} {p} {label:42} rel err {err:.2e}{}{}",
                        if ok { "ok  " } else { "FAIL" },
                        if finite { "" } else { " (non-finite output)" },
                        if same { "" } else { " (not deterministic)" },
                    );
                    if !ok {
                        failures.push(format!(
                            "{name} {algo} {p} {label}: rel err {err:.2e} (tol {tol:.0e}), \
                             finite {finite}, deterministic {same}"
                        ));
                    }
                }
            }
        }
    }
    finish(&gpu, &failures);
}

/// `conv2d_backward` (dx, dw, dbias, each accumulated onto earlier contents) against the CPU,
/// every algorithm × every precision: with the implicit and halo algorithms the data gradient
/// of a stride-1 convolution runs as a forward convolution of dy with the flipped weights
/// (the halo kernels pack them flipped themselves), that of a strided one on the phase
/// kernels (`conv_phase_*`); pointwise shapes run the implicit kernels under the implicit
/// algorithm and cuBLAS under halo. Also dx alone and dw alone (the dispatch).
#[test]
fn conv_backward_matches_cpu_every_algo_and_precision() {
    let Some(mut gpu) = open_concrete("conv_backward_matches_cpu_every_algo_and_precision") else {
        return;
    };
    let mut rng = Rng::new(0xBAC4_C0DE);
    let mut failures = Vec::new();
    let picked = shapes()
        .into_iter()
        .filter(|(name, _)| !name.starts_with("stem") && !name.contains("38->19"));
    for (name, s) in picked {
        let x = common::randn(&mut rng, s.x_len(), 1.0);
        let w = common::randn(&mut rng, s.w_len(), (1.0 / s.col_k() as f64).sqrt());
        let dy = common::randn(&mut rng, s.y_len(), 1.0);
        let dx0 = common::randn(&mut rng, s.x_len(), 0.5);
        let dw0 = common::randn(&mut rng, s.w_len(), 0.5);
        let db0 = common::randn(&mut rng, s.cout, 0.5);
        // CPU: every gradient at once, and dx alone / dw alone (the same values).
        let mut cpu = CpuBackend::new();
        let [xc, wc, dyc] = [&x, &w, &dy].map(|v| common::put(&mut cpu, v));
        let [dxc, dwc, dbc] = [&dx0, &dw0, &db0].map(|v| common::put(&mut cpu, v));
        cpu.conv2d_backward(&s, xc, wc, dyc, Some(dxc), Some(dwc), Some(dbc))
            .unwrap();
        let want = [dxc, dwc, dbc].map(|t| common::get(&cpu, t));

        let [xg, wg, dyg] = [&x, &w, &dy].map(|v| put_gpu(&mut gpu, v));
        let [dxg, dwg, dbg] = [&dx0, &dw0, &db0].map(|v| put_gpu(&mut gpu, v));
        for algo in algos_for(&gpu, &s) {
            gpu.set_conv_algo(algo);
            for p in [Precision::Fp32, Precision::Tf32, Precision::Bf16] {
                gpu.set_precision(p).unwrap();
                let tol = tolerance(p);
                // (label, dx?, dw?, dbias?)
                let cases = [
                    ("all", true, true, true),
                    ("dx", true, false, false),
                    ("dw", false, true, false),
                ];
                for (label, want_dx, want_dw, want_db) in cases {
                    let mut runs = Vec::new();
                    for _ in 0..2 {
                        for (t, v) in [(dxg, &dx0), (dwg, &dw0), (dbg, &db0)] {
                            gpu.upload(t, v).unwrap();
                        }
                        gpu.conv2d_backward(
                            &s,
                            xg,
                            wg,
                            dyg,
                            want_dx.then_some(dxg),
                            want_dw.then_some(dwg),
                            want_db.then_some(dbg),
                        )
                        .unwrap();
                        runs.push([dxg, dwg, dbg].map(|t| {
                            let mut v = vec![0.0; t.len];
                            gpu.download(t, &mut v).unwrap();
                            v
                        }));
                    }
                    let asked = [want_dx, want_dw, want_db];
                    let initial = [&dx0, &dw0, &db0];
                    for (i, what) in ["dx", "dw", "dbias"].iter().enumerate() {
                        let got = &runs[0][i];
                        // Not asked for: must be left exactly as it was.
                        let (err, ok_val) = if asked[i] {
                            let e = common::rel_l2(got, &want[i]);
                            (e, e <= tol)
                        } else {
                            let same = got
                                .iter()
                                .zip(initial[i].iter())
                                .all(|(a, b)| a.to_bits() == b.to_bits());
                            (if same { 0.0 } else { f64::INFINITY }, same)
                        };
                        let same = got
                            .iter()
                            .zip(&runs[1][i])
                            .all(|(a, b)| a.to_bits() == b.to_bits());
                        let finite = got.iter().all(|v| v.is_finite());
                        let ok = ok_val && same && finite;
                        eprintln!(
                            "{} {name:26} {algo:8} {p} {label:3} {what:5} rel err {err:.2e}{}{}",
                            if ok { "ok  " } else { "FAIL" },
                            if finite { "" } else { " (non-finite)" },
                            if same { "" } else { " (not deterministic)" },
                        );
                        if !ok {
                            failures.push(format!(
                                "{name} {algo} {p} {label} {what}: rel err {err:.2e} (tol {tol:.0e}), \
                                 finite {finite}, deterministic {same}"
                            ));
                        }
                    }
                }
            }
        }
    }
    finish(&gpu, &failures);
}
