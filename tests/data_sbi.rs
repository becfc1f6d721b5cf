//! Procedural scenes and the self-blending generator.

use prrnet::data::procedural::scene;
use prrnet::data::sbi::{blend_parts, jpeg_roundtrip, self_blend, SbiParams};
use prrnet::rng::Rng;

fn std_dev(v: &[f32]) -> f64 {
    let m = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
    (v.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
}

#[test]
fn scenes_are_in_range_varied_and_deterministic() {
    for size in [16usize, 64, 299] {
        for seed in 0..6u64 {
            let img = scene(&mut Rng::new(seed), size);
            assert_eq!(img.len(), size * size * 3);
            assert!(img.iter().all(|v| v.is_finite() && (0.0..=1.0).contains(v)));
            assert!(
                std_dev(&img) > 0.03,
                "scene {seed} at {size} is nearly constant"
            );
            // Every channel varies, and the picture is not just noise around a constant.
            for c in 0..3 {
                let ch: Vec<f32> = img.iter().skip(c).step_by(3).copied().collect();
                assert!(std_dev(&ch) > 0.01);
            }
        }
    }
    let a = scene(&mut Rng::new(3), 64);
    assert_eq!(a, scene(&mut Rng::new(3), 64));
    assert_ne!(a, scene(&mut Rng::new(4), 64));
}

#[test]
fn scenes_differ_between_seeds_in_mean_colour() {
    let means: Vec<[f64; 3]> = (0..8u64)
        .map(|s| {
            let img = scene(&mut Rng::new(s), 32);
            let mut m = [0.0; 3];
            for p in img.chunks_exact(3) {
                for c in 0..3 {
                    m[c] += p[c] as f64 / (32.0 * 32.0);
                }
            }
            m
        })
        .collect();
    let spread: f64 = (0..3)
        .map(|c| std_dev(&means.iter().map(|m| m[c] as f32).collect::<Vec<_>>()))
        .sum();
    assert!(spread > 0.05, "palettes do not vary: {spread}");
}

fn no_jpeg(mut p: SbiParams) -> SbiParams {
    p.jpeg_prob = 0.0;
    p
}

#[test]
fn mask_is_exactly_the_blend_weights() {
    for (pi, params) in [SbiParams::sbi(), SbiParams::builtin()]
        .into_iter()
        .enumerate()
    {
        for seed in 0..20u64 {
            let size = if seed % 3 == 0 { 96 } else { 64 };
            let img = scene(&mut Rng::new(100 + seed), size);
            let b = blend_parts(&img, size, &mut Rng::new(seed), &params);
            let np = size * size;
            assert_eq!(b.mask.len(), np);
            assert!(b.mask.iter().all(|m| (0.0..=1.0).contains(m)));
            let mx = b.mask.iter().cloned().fold(0.0f32, f32::max);
            let covered = b.mask.iter().filter(|&&m| m > 0.0).count();
            let zeros = b.mask.iter().filter(|&&m| m == 0.0).count();
            // Non-trivial: a real region with a peak at a blend ratio, and untouched background.
            assert!(
                [0.25f32, 0.5, 0.75, 1.0]
                    .iter()
                    .any(|r| (mx - r).abs() < 1e-5),
                "peak {mx} is not a blend ratio"
            );
            assert!(
                covered > np / 50,
                "params {pi} seed {seed}: region too small ({covered})"
            );
            assert!(
                zeros > np / 10,
                "params {pi} seed {seed}: no background left"
            );
            // Soft edge: intermediate values exist.
            assert!(b.mask.iter().any(|&m| m > 0.01 && m < mx - 0.01));
            for i in 0..np {
                let m = b.mask[i];
                for k in 0..3 {
                    let j = i * 3 + k;
                    let want = m * b.source[j] + (1.0 - m) * b.target[j];
                    assert!(
                        (b.fake[j] - want).abs() < 1e-6,
                        "pixel {i}: {} vs {want}",
                        b.fake[j]
                    );
                    if m == 0.0 {
                        assert_eq!(b.fake[j], b.target[j]);
                    }
                }
            }
            // Where the transformed copy shows through, the fake differs from the target;
            // and where the mask is zero it equals the input wherever the target was kept.
            let strong: Vec<usize> = (0..np).filter(|&i| b.mask[i] > 0.2).collect();
            let diff: f64 = strong
                .iter()
                .map(|&i| {
                    (0..3)
                        .map(|k| (b.fake[i * 3 + k] - b.target[i * 3 + k]).abs() as f64)
                        .sum::<f64>()
                })
                .sum::<f64>()
                / strong.len().max(1) as f64;
            assert!(
                diff > 1e-3,
                "params {pi} seed {seed}: blend invisible ({diff})"
            );
            if b.source_transformed {
                assert_eq!(b.target, img);
                for i in (0..np).filter(|&i| b.mask[i] == 0.0) {
                    assert_eq!(&b.fake[i * 3..i * 3 + 3], &img[i * 3..i * 3 + 3]);
                }
            } else {
                assert_ne!(b.target, img);
            }
        }
    }
}

#[test]
fn self_blend_returns_the_same_mask_and_fake_without_jpeg() {
    let p = no_jpeg(SbiParams::sbi());
    let img = scene(&mut Rng::new(9), 64);
    let parts = blend_parts(&img, 64, &mut Rng::new(5), &p);
    let (fake, mask) = self_blend(&img, 64, &mut Rng::new(5), &p);
    assert_eq!(mask, parts.mask);
    assert_eq!(fake, parts.fake);
    assert!(parts.jpeg_quality.is_none());
}

#[test]
fn jpeg_is_applied_when_drawn_and_keeps_the_mask() {
    let mut p = SbiParams::sbi();
    p.jpeg_prob = 1.0;
    p.jpeg_quality = (40, 40);
    let img = scene(&mut Rng::new(2), 64);
    let parts = blend_parts(&img, 64, &mut Rng::new(8), &p);
    assert_eq!(parts.jpeg_quality, Some(40));
    let (fake, mask) = self_blend(&img, 64, &mut Rng::new(8), &p);
    assert_eq!(mask, parts.mask);
    assert_ne!(fake, parts.fake);
    let err: f64 = fake
        .iter()
        .zip(&parts.fake)
        .map(|(a, b)| (a - b).abs() as f64)
        .sum::<f64>()
        / fake.len() as f64;
    assert!(err > 1e-3 && err < 0.1, "JPEG error {err}");
    let rt = jpeg_roundtrip(&img, 64, 95);
    assert!(rt.iter().all(|v| (0.0..=1.0).contains(v)));
}

#[test]
fn blends_vary_with_the_seed_and_repeat_with_it() {
    let p = SbiParams::sbi();
    let img = scene(&mut Rng::new(1), 64);
    let (a, ma) = self_blend(&img, 64, &mut Rng::new(1), &p);
    let (b, mb) = self_blend(&img, 64, &mut Rng::new(1), &p);
    assert_eq!((a, ma.clone()), (b, mb));
    let (_, mc) = self_blend(&img, 64, &mut Rng::new(2), &p);
    assert_ne!(ma, mc);
}

#[test]
fn builtin_params_are_stronger_than_sbi() {
    let (s, b) = (SbiParams::sbi(), SbiParams::builtin());
    assert!((b.rgb_shift / s.rgb_shift - 3.0).abs() < 1e-5);
    assert!((b.brightness / s.brightness - 3.0).abs() < 1e-5);
    assert!((b.contrast / s.contrast - 3.0).abs() < 1e-5);
    assert_eq!(s.blend_ratios, vec![0.25, 0.5, 0.75, 1.0, 1.0, 1.0]);
    assert_eq!(b.blend_ratios, s.blend_ratios);
}
