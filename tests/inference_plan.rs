//! The inference plan (`PrrNet::new_inference`): BatchNorm folded into the backbone
//! convolutions, conv outputs sharing memory with unit outputs, dead backbone activations'
//! memory reused. It must compute what the ordinary eval-mode network computes, within f32
//! rounding (relative L2 ≤ 1e-5 per output).

mod common;

use prrnet::backend::cpu::CpuBackend;
use prrnet::config::Config;
use prrnet::model::prrnet::NamedArray;
use prrnet::model::{Batch, Mode, PrrNet};
use prrnet::rng::Rng;

fn run(net: &mut PrrNet, image: &[f32]) -> Vec<NamedArray> {
    net.set_input(&Batch {
        image,
        mask: None,
        label: None,
        mask_weight: None,
    })
    .unwrap();
    net.forward(Mode::EVAL).unwrap();
    net.dump_outputs().unwrap()
}

fn assert_same(folded: &[NamedArray], plain: &[NamedArray], what: &str) {
    assert_eq!(folded.len(), plain.len());
    for ((name, shape, a), (name2, shape2, b)) in folded.iter().zip(plain) {
        assert_eq!((name, shape), (name2, shape2));
        assert!(a.iter().all(|v| v.is_finite()), "{what}: {name} not finite");
        let e = common::rel_l2(a, b);
        assert!(e <= 1e-5, "{what}: {name} differs, relative L2 {e:.3e}");
    }
}

/// `max_ratio`: the largest allowed inference/plain activation-arena ratio.
fn check_preset(preset: &str, size: usize, batch: usize, max_ratio: f64) {
    let mut cfg = Config::preset(preset).unwrap();
    cfg.size = size;
    let mut plain = PrrNet::new(&cfg, Box::new(CpuBackend::new()), batch, false).unwrap();
    common::randomise_with_bn(&mut plain, 7);
    let mut folded = PrrNet::new_inference(&cfg, Box::new(CpuBackend::new()), batch).unwrap();
    assert!(folded.is_inference() && !plain.is_inference());
    common::copy_params(&plain, &folded);
    let image = Rng::new(3).vec(batch * 3 * size * size, |r| r.normal());
    let want = run(&mut plain, &image);
    let got = run(&mut folded, &image);
    assert_same(&got, &want, preset);
    // The inference plan keeps fewer activations: conv outputs share the unit outputs, and the
    // backbone reuses the memory of dead activations (model::memplan).
    let (_, _, acts_plain) = plain.arena_sizes();
    let (_, _, acts_folded) = folded.arena_sizes();
    let ratio = acts_folded as f64 / acts_plain as f64;
    assert!(
        ratio <= max_ratio,
        "{preset}: inference activations {acts_folded} vs {acts_plain} (ratio {ratio:.2})"
    );
}

#[test]
fn folded_equals_unfolded_tiny() {
    // The relation map and heads dominate tiny's activations; the backbone share is small.
    check_preset("tiny", 64, 2, 0.8);
}

#[test]
fn folded_equals_unfolded_w30() {
    // Every HRNet unit kind: bottlenecks with projection, transitions, up and down fuse terms.
    check_preset("w30", 64, 1, 0.3);
}

#[test]
fn refolds_after_a_parameter_changes() {
    let cfg = Config::preset("tiny").unwrap();
    let mut plain = PrrNet::new(&cfg, Box::new(CpuBackend::new()), 1, false).unwrap();
    common::randomise_with_bn(&mut plain, 11);
    let mut folded = PrrNet::new_inference(&cfg, Box::new(CpuBackend::new()), 1).unwrap();
    common::copy_params(&plain, &folded);
    let image = Rng::new(5).vec(3 * 64 * 64, |r| r.normal());
    let before = run(&mut folded, &image);
    // Change one running mean on both: the folded network must notice and refold.
    let e = plain
        .entries()
        .iter()
        .find(|e| e.name == "backbone.bn1.running_mean")
        .unwrap()
        .clone();
    let shifted: Vec<f32> = plain
        .read(e.tensor)
        .unwrap()
        .iter()
        .map(|v| v + 0.5)
        .collect();
    plain.write(e.tensor, &shifted).unwrap();
    folded.write(e.tensor, &shifted).unwrap();
    let after = run(&mut folded, &image);
    let want = run(&mut plain, &image);
    assert_same(&after, &want, "after refolding");
    let score = |o: &[NamedArray]| o.iter().find(|a| a.0 == "features").unwrap().2.clone();
    assert!(
        common::rel_l2(&score(&before), &score(&after)) > 1e-4,
        "changing a running mean must change the output"
    );
}

#[test]
fn inference_plan_refuses_training() {
    let cfg = Config::preset("tiny").unwrap();
    let mut net = PrrNet::new_inference(&cfg, Box::new(CpuBackend::new()), 1).unwrap();
    net.init_weights(1).unwrap();
    let image = Rng::new(5).vec(3 * 64 * 64, |r| r.normal());
    let label = [1.0f32];
    let mask = vec![0.5f32; 64 * 64];
    net.set_input(&Batch {
        image: &image,
        mask: Some(&mask),
        label: Some(&label),
        mask_weight: None,
    })
    .unwrap();
    let e = net.forward(Mode::TRAIN).unwrap_err().to_string();
    assert!(e.contains("running statistics"), "{e}");
    net.forward(Mode::EVAL).unwrap();
    let e = net.backward(Mode::EVAL, false).unwrap_err().to_string();
    assert!(e.contains("without gradients"), "{e}");
}

/// The CPU backend's fused `conv2d_bias_act` (the epilogue applied by each convolution path
/// to the output it has just written) gives exactly the bits of a convolution followed by
/// the separate bias pass, on every path: the direct kernel (rows of ≥ 12 outputs), the
/// short-column kernel over several tasks, im2col + GEMM over several epilogue parts, and
/// the plain GEMMs (1×1, window = map); with and without a residual and a ReLU.
#[test]
fn fused_bias_act_equals_the_separate_pass() {
    use prrnet::backend::ConvShape;
    use prrnet::Backend;
    let mut rng = Rng::new(11);
    for s in [
        ConvShape::new(2, 14, 13, 5, 20, 3, 1, 1),
        ConvShape::new(300, 5, 5, 1, 32, 3, 1, 0),
        ConvShape::new(8, 20, 20, 3, 40, 3, 2, 1),
        ConvShape::new(2, 5, 5, 6, 3, 1, 1, 0),
        ConvShape::new(6, 3, 3, 4, 5, 3, 1, 0),
    ] {
        for (with_residual, relu) in [(false, false), (false, true), (true, false), (true, true)] {
            let mut be = CpuBackend::new();
            let x = common::put(&mut be, &common::randn(&mut rng, s.x_len(), 1.0));
            let w = common::put(&mut be, &common::randn(&mut rng, s.w_len(), 0.3));
            let b = common::put(&mut be, &common::randn(&mut rng, s.cout, 1.0));
            let r = common::put(&mut be, &common::randn(&mut rng, s.y_len(), 1.0));
            let residual = with_residual.then_some(r);
            let fused = common::put(&mut be, &vec![f32::NAN; s.y_len()]);
            let plain = common::put(&mut be, &vec![f32::NAN; s.y_len()]);
            be.conv2d_bias_act(&s, x, w, b, residual, relu, fused)
                .unwrap();
            be.conv2d(&s, x, w, None, plain).unwrap();
            be.bias_act_inplace(s.b * s.ho * s.wo, s.cout, plain, b, residual, relu)
                .unwrap();
            let (f, p) = (common::get(&be, fused), common::get(&be, plain));
            assert!(p.iter().all(|v| v.is_finite()) && p.iter().any(|&v| v < 0.0) != relu);
            for (i, (a, e)) in f.iter().zip(&p).enumerate() {
                assert_eq!(
                    a.to_bits(),
                    e.to_bits(),
                    "{s:?} residual {with_residual} relu {relu}: y[{i}] = {a}, want {e}"
                );
            }
        }
    }
}
