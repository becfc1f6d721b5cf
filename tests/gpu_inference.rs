//! The GPU inference path: the folded inference plan against the CPU reference, CUDA-graph
//! replay against the plain forward, and the TF32/BF16 paths against fp32 on the verdicts of a
//! trained network.
//!
//! Without a usable GPU each test prints a skip message and passes; with
//! `PRRNET_REQUIRE_GPU=1` it fails instead.

mod common;

use std::sync::Arc;

use prrnet::backend::cpu::CpuBackend;
use prrnet::backend::Precision;
use prrnet::config::Config;
use prrnet::data::dataset;
use prrnet::data::loader::{Loader, LoaderOptions};
use prrnet::data::sbi::SbiParams;
use prrnet::model::prrnet::NamedArray;
use prrnet::model::{Batch, Mode, PrrNet};
use prrnet::rng::Rng;
use prrnet::train::{self, LoaderSource, Schedule, TrainOptions};

fn set_image(net: &mut PrrNet, image: &[f32]) {
    net.set_input(&Batch {
        image,
        mask: None,
        label: None,
        mask_weight: None,
    })
    .unwrap();
}

fn outputs(net: &PrrNet) -> Vec<NamedArray> {
    net.dump_outputs().unwrap()
}

fn compare(a: &[NamedArray], b: &[NamedArray], tol: f64, what: &str) {
    for ((name, _, x), (_, _, y)) in a.iter().zip(b) {
        assert!(x.iter().all(|v| v.is_finite()), "{what}: {name} not finite");
        let e = common::rel_l2(x, y);
        eprintln!("{what}: {name} relative L2 {e:.2e}");
        assert!(e <= tol, "{what}: {name} relative L2 {e:.3e} > {tol:e}");
    }
}

/// Folded inference plan on the GPU (plain and graph forwards) against the CPU eval forward.
fn folded_case(test: &str, preset: &str, size: usize, batch: usize) {
    let Some(gpu) = common::open_gpu(test) else {
        return;
    };
    let mut cfg = Config::preset(preset).unwrap();
    cfg.size = size;
    let mut cpu = PrrNet::new(&cfg, Box::new(CpuBackend::new()), batch, false).unwrap();
    common::randomise_with_bn(&mut cpu, 5);
    let mut net = PrrNet::new_inference(&cfg, gpu, batch).unwrap();
    common::copy_params(&cpu, &net);
    let image = Rng::new(9).vec(batch * 3 * size * size, |r| r.normal());
    set_image(&mut cpu, &image);
    cpu.forward(Mode::EVAL).unwrap();
    let want = outputs(&cpu);
    set_image(&mut net, &image);
    net.forward(Mode::EVAL).unwrap();
    let plain = outputs(&net);
    compare(&plain, &want, 1e-4, &format!("{preset} folded GPU vs CPU"));
    // Graph replay of the same input: the same kernels on the same data.
    net.forward_graph().unwrap();
    let replay = outputs(&net);
    compare(&replay, &plain, 1e-6, &format!("{preset} graph vs plain"));
    // A new input through the recorded graph, against a plain forward of it.
    let image2 = Rng::new(10).vec(batch * 3 * size * size, |r| r.normal());
    set_image(&mut net, &image2);
    net.forward_graph().unwrap();
    let replay2 = outputs(&net);
    net.forward(Mode::EVAL).unwrap();
    let plain2 = outputs(&net);
    compare(
        &replay2,
        &plain2,
        1e-6,
        &format!("{preset} graph vs plain, new input"),
    );
    let score = |o: &[NamedArray]| o.iter().find(|a| a.0 == "features").unwrap().2.clone();
    assert!(
        common::rel_l2(&score(&replay2), &score(&replay)) > 1e-3,
        "the replayed graph must read the new input"
    );
}

#[test]
fn folded_and_graph_tiny() {
    folded_case("folded_and_graph_tiny", "tiny", 64, 3);
}

#[test]
fn folded_and_graph_w30_299() {
    folded_case("folded_and_graph_w30_299", "w30", 299, 2);
}

/// Train `tiny` briefly on the GPU, then score a held-out set in fp32, TF32 and BF16: the
/// verdicts (threshold 0.5) must agree with fp32 on at least 99.5% of the images.
#[test]
fn reduced_precision_verdicts() {
    let Some(gpu) = common::open_gpu("reduced_precision_verdicts") else {
        return;
    };
    let (size, batch) = (64usize, 32usize);
    let cfg = Config::preset("tiny").unwrap();
    let (tr, va) = dataset::builtin(2048, 1024, 17);
    let loader_opts = LoaderOptions {
        size,
        batch,
        seed: 17,
        workers: 8,
        sbi: Some(SbiParams::builtin()),
        drop_last: true,
        fresh_generated: true,
        ..LoaderOptions::default()
    };
    let eval_opts = LoaderOptions::eval(size, batch, Some(SbiParams::builtin()));
    let src = LoaderSource::new(tr, va.clone(), loader_opts, eval_opts.clone());
    let mut net = PrrNet::new(&cfg, gpu, batch, true).unwrap();
    net.init_weights(17).unwrap();
    let out = std::env::temp_dir().join(format!("prrnet-gpu-verdicts-{}", std::process::id()));
    std::fs::remove_dir_all(&out).ok();
    train::train(
        &mut net,
        &src,
        &TrainOptions {
            out: out.clone(),
            schedule: Schedule::from_scratch(6, 1e-3),
            seed: 17,
            resume: false,
            max_steps: None,
            profile_window: None,
        },
    )
    .unwrap();
    std::fs::remove_dir_all(&out).ok();

    let mut scores: Vec<Vec<f32>> = Vec::new();
    for p in [Precision::Fp32, Precision::Tf32, Precision::Bf16] {
        let be = prrnet::backend::cuda::open(0).unwrap();
        be.set_precision(p).unwrap();
        let mut inf = PrrNet::new_inference(&cfg, be, batch).unwrap();
        common::copy_params(&net, &inf);
        let mut s = Vec::new();
        for b in Loader::new(Arc::new(va.clone()), eval_opts.clone()).unwrap() {
            let b = b.unwrap();
            if b.label.len() != batch {
                continue;
            }
            set_image(&mut inf, &b.image);
            inf.forward_graph().unwrap();
            s.extend(inf.predictions().unwrap().0);
        }
        scores.push(s);
    }
    let fp32 = &scores[0];
    assert!(fp32.len() >= 960, "scored {} images", fp32.len());
    let fakes = fp32.iter().filter(|&&v| v >= 0.5).count();
    eprintln!(
        "fp32: {} images, {fakes} called fake, score range {:.3}..{:.3}",
        fp32.len(),
        fp32.iter().cloned().fold(f32::INFINITY, f32::min),
        fp32.iter().cloned().fold(f32::NEG_INFINITY, f32::max)
    );
    for (name, s) in [("tf32", &scores[1]), ("bf16", &scores[2])] {
        let agree = s
            .iter()
            .zip(fp32)
            .filter(|(a, b)| (**a >= 0.5) == (**b >= 0.5))
            .count();
        let rate = agree as f64 / fp32.len() as f64;
        let max_dev = s
            .iter()
            .zip(fp32)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        eprintln!(
            "{name}: verdict agreement {:.2}%, max |score − fp32| {max_dev:.2e}",
            100.0 * rate
        );
        assert!(
            rate >= 0.995,
            "{name}: verdicts agree on only {:.2}%",
            100.0 * rate
        );
    }
}

/// The pipelined batch stream on the GPU (the next batch uploaded while the previous forward
/// runs; graph replay; a partial last batch) gives the CPU detector's results, input by input.
#[test]
fn detect_batches_pipelined_match_cpu() {
    use prrnet::detect::{Detector, DetectorOptions};
    if common::open_gpu("detect_batches_pipelined_match_cpu").is_none() {
        return;
    }
    let root = common::tmp_dir("gpu-detect-pipelined");
    let cfg = Config::preset("tiny").unwrap();
    let mut cpu = PrrNet::new(&cfg, Box::new(CpuBackend::new()), 1, false).unwrap();
    common::randomise_with_bn(&mut cpu, 8);
    let weights = root.join("tiny.safetensors");
    prrnet::io::checkpoint::save(&cpu, &weights).unwrap();
    let one = 3 * cfg.size * cfg.size;
    // 11 inputs in batches of 4: two full batches in the pipeline, then a partial one.
    let inputs: Vec<Vec<f32>> = (0..11)
        .map(|i| Rng::new(100 + i).vec(one, |r| r.normal()))
        .collect();
    let open = |device| {
        let opts = DetectorOptions {
            batch: 4,
            ..DetectorOptions::default()
        };
        Detector::open(&weights, device, opts).unwrap()
    };
    let want = open(prrnet::backend::DeviceRequest::Cpu)
        .detect_preprocessed(&inputs)
        .unwrap();
    assert!(
        want.iter().any(|d| (d.score - want[0].score).abs() > 1e-6),
        "the inputs must score differently, or a batch mix-up could not show"
    );
    let gpu = open(prrnet::backend::DeviceRequest::Cuda(0));
    // Twice: the second run replays the graph recorded by the first.
    for run in 0..2 {
        let got = gpu.detect_preprocessed(&inputs).unwrap();
        assert_eq!(got.len(), inputs.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g.score - w.score).abs() <= 1e-4,
                "run {run}, input {i}: score {} vs CPU {}",
                g.score,
                w.score
            );
            let e = common::rel_l2(&g.mask, &w.mask);
            assert!(e <= 1e-4, "run {run}, input {i}: mask relative L2 {e:.2e}");
        }
    }
    std::fs::remove_dir_all(&root).ok();
}

/// `detect` over a folder of JPEGs (decode, resize, forward, records) against the pure forward
/// rate of the same network, W30 at 299×299, batch 64: decoding must not be the bottleneck
/// (end to end ≥ 80% of the forward rate).
#[test]
fn detect_end_to_end_throughput() {
    use prrnet::detect::pipeline::{self, PictureDirs};
    use prrnet::detect::records::{Format, RecordWriter};
    use prrnet::detect::{inputs, Detector, DetectorOptions};
    use rayon::prelude::*;
    if common::open_gpu("detect_end_to_end_throughput").is_none() {
        return;
    }
    let (batch, count) = (64usize, 640usize);
    let root = common::tmp_dir("gpu-detect-speed");
    let cfg = Config::preset("w30").unwrap();
    let mut cpu = PrrNet::new(&cfg, Box::new(CpuBackend::new()), 1, false).unwrap();
    common::randomise_with_bn(&mut cpu, 3);
    let weights = root.join("w30.safetensors");
    prrnet::io::checkpoint::save(&cpu, &weights).unwrap();
    let imgs = root.join("jpegs");
    std::fs::create_dir_all(&imgs).unwrap();
    (0..count).into_par_iter().for_each(|i| {
        common::rgb_image(1000 + i as u32, 320, 320)
            .save_with_format(imgs.join(format!("{i:04}.jpg")), image::ImageFormat::Jpeg)
            .unwrap();
    });

    // The pure forward: the same plan, a fixed input, graph replay, synchronised.
    let mut net =
        PrrNet::new_inference(&cfg, prrnet::backend::cuda::open(0).unwrap(), batch).unwrap();
    common::copy_params(&cpu, &net);
    let image = Rng::new(4).vec(batch * 3 * 299 * 299, |r| r.normal());
    set_image(&mut net, &image);
    for _ in 0..2 {
        net.forward_graph().unwrap();
    }
    net.synchronize().unwrap();
    let iters = 10;
    let t = std::time::Instant::now();
    for _ in 0..iters {
        net.forward_graph().unwrap();
    }
    net.synchronize().unwrap();
    let forward_rate = (iters * batch) as f64 / t.elapsed().as_secs_f64();
    drop(net);

    let det = Detector::open(
        &weights,
        prrnet::backend::DeviceRequest::Cuda(0),
        DetectorOptions {
            batch,
            ..DetectorOptions::default()
        },
    )
    .unwrap();
    let mut rates = Vec::new();
    for _ in 0..2 {
        let mut sink = RecordWriter::new(Box::new(std::io::sink()), Format::Jsonl).unwrap();
        let sources = inputs::collect(std::slice::from_ref(&imgs));
        let summary =
            pipeline::run(&det, sources, &mut sink, &PictureDirs::default(), false).unwrap();
        assert_eq!(summary.succeeded, count, "{summary}");
        rates.push(summary.images_per_s());
    }
    std::fs::remove_dir_all(&root).ok();
    let e2e = rates[1];
    eprintln!(
        "W30 299 batch {batch}: pure forward {forward_rate:.0} images/s, detect end to end \
         {e2e:.0} images/s ({:.0}%; first run {:.0} images/s)",
        100.0 * e2e / forward_rate,
        rates[0]
    );
    assert!(
        e2e >= 0.8 * forward_rate,
        "detect reaches only {:.0}% of the forward rate",
        100.0 * e2e / forward_rate
    );
}
