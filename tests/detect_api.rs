//! The inference library (`prrnet::detect::Detector`): results equal a plain forward pass of
//! the network, do not depend on how images are batched (padding does not leak), the threshold
//! decides the verdict, any colour type works, bare state dicts need a preset, non-fp32
//! precision is a clear error, and one detector serves several threads.

mod common;

use common::{noise, rgb_image, tiny_checkpoint, tmp_dir};
use std::path::Path;
use std::sync::Arc;

use image::{DynamicImage, ImageBuffer, Luma, LumaA, Rgb, Rgba};
use prrnet::backend::cpu::CpuBackend;
use prrnet::detect::{Detection, Detector, DetectorOptions, Precision};
use prrnet::io::{checkpoint, tensors::TensorFile};
use prrnet::model::{Batch, Mode, PrrNet};
use prrnet::{Config, DeviceRequest};

fn five_images() -> Vec<DynamicImage> {
    vec![
        rgb_image(1, 64, 64),
        rgb_image(2, 90, 70),
        DynamicImage::ImageLuma8(ImageBuffer::from_fn(50, 41, |x, y| {
            Luma([noise(3, x, y, 0)])
        })),
        DynamicImage::ImageRgba8(ImageBuffer::from_fn(33, 77, |x, y| {
            Rgba([noise(4, x, y, 0), noise(4, x, y, 1), noise(4, x, y, 2), 200])
        })),
        DynamicImage::ImageRgb16(ImageBuffer::from_fn(64, 48, |x, y| {
            Rgb([
                noise(5, x, y, 0) as u16 * 257,
                noise(5, x, y, 1) as u16 * 251,
                noise(5, x, y, 2) as u16 * 129,
            ])
        })),
    ]
}

fn open(weights: &Path, batch: usize) -> Detector {
    Detector::open(
        weights,
        DeviceRequest::Cpu,
        DetectorOptions {
            batch,
            ..DetectorOptions::default()
        },
    )
    .unwrap()
}

fn assert_same(a: &[Detection], b: &[Detection], tol: f32) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x.score - y.score).abs() <= tol,
            "image {i}: score {} vs {}",
            x.score,
            y.score
        );
        assert_eq!(x.mask_side, y.mask_side);
        let md = x
            .mask
            .iter()
            .zip(&y.mask)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        assert!(md <= tol, "image {i}: masks differ by {md}");
        assert_eq!(x.fake, y.fake, "image {i}");
    }
}

#[test]
fn batches_of_two_equal_one_at_a_time() {
    let dir = tmp_dir("detect-api-batch");
    let w = tiny_checkpoint(&dir, 7);
    let images = five_images();
    let det2 = open(&w, 2);
    let all = det2.detect(&images).unwrap();
    assert_eq!(all.len(), 5);
    // The test means something only when the images score differently.
    let mut scores: Vec<f32> = all.iter().map(|d| d.score).collect();
    scores.sort_by(f32::total_cmp);
    scores.dedup();
    assert_eq!(
        scores.len(),
        5,
        "images should get distinct scores: {all:?}"
    );
    // One at a time through the same batch-2 plan (each call padded) and through a batch-1 plan.
    let single: Vec<Detection> = images
        .iter()
        .map(|im| det2.detect(std::slice::from_ref(im)).unwrap().remove(0))
        .collect();
    assert_same(&all, &single, 1e-6);
    let det1 = open(&w, 1);
    let single1: Vec<Detection> = images
        .iter()
        .map(|im| det1.detect(std::slice::from_ref(im)).unwrap().remove(0))
        .collect();
    // A different plan may accumulate in another order (GEMM blocking follows the row count).
    assert_same(&all, &single1, 1e-4);
    // Reversed order gives the reversed results (nothing depends on the position in a batch).
    let rev: Vec<DynamicImage> = images.iter().rev().cloned().collect();
    let mut back = det2.detect(&rev).unwrap();
    back.reverse();
    assert_same(&all, &back, 1e-6);
    assert!(det2.detect(&[]).unwrap().is_empty());
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn equals_a_plain_forward_pass() {
    let dir = tmp_dir("detect-api-plain");
    let w = tiny_checkpoint(&dir, 11);
    let cfg = Config::preset("tiny").unwrap();
    let img = rgb_image(9, 120, 100);
    let det = open(&w, 3);
    let d = det.detect(std::slice::from_ref(&img)).unwrap().remove(0);

    let mut net = PrrNet::new(&cfg, Box::new(CpuBackend::new()), 1, false).unwrap();
    checkpoint::load(&net, &w).unwrap();
    let x = prrnet::imageio::preprocess(&img, cfg.size);
    net.set_input(&Batch {
        image: &x,
        mask: None,
        label: None,
        mask_weight: None,
    })
    .unwrap();
    net.forward(Mode::EVAL).unwrap();
    let score = net.read(net.rr.score).unwrap()[0];
    let mask = net.read(net.pr.mask_prob).unwrap();

    let side = cfg.feature_side();
    assert_eq!(d.mask_side, side);
    assert_eq!(det.mask_side(), side);
    assert_eq!(d.mask.len(), side * side);
    assert!((d.score - score).abs() <= 1e-5, "{} vs {score}", d.score);
    for (a, b) in d.mask.iter().zip(&mask) {
        assert!((a - b).abs() <= 1e-4, "{a} vs {b}");
    }
    let on = mask.iter().filter(|&&m| m >= 0.5).count() as f32 / (side * side) as f32;
    assert!((d.mask_fraction - on).abs() < 1e-6);
    assert_eq!(d.fake, d.score >= 0.5);
    assert!(d.score > 0.0 && d.score < 1.0);
    assert_eq!(det.config(), &cfg);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn threshold_decides_the_verdict() {
    let dir = tmp_dir("detect-api-thr");
    let w = tiny_checkpoint(&dir, 3);
    let img = rgb_image(21, 64, 64);
    let with = |t: f32| {
        let det = Detector::open(
            &w,
            DeviceRequest::Cpu,
            DetectorOptions {
                batch: 1,
                threshold: t,
                ..DetectorOptions::default()
            },
        )
        .unwrap();
        det.detect(std::slice::from_ref(&img)).unwrap().remove(0)
    };
    let s = with(0.5).score;
    let at = with(s);
    assert_eq!(at.score, s);
    assert!(at.fake, "score == threshold is fake");
    assert!(
        !with(s.next_up()).fake,
        "score just below the threshold is real"
    );
    assert!(with(0.0).fake);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn every_colour_type_is_converted() {
    let dir = tmp_dir("detect-api-colour");
    let w = tiny_checkpoint(&dir, 5);
    let det = open(&w, 4);
    let grey: ImageBuffer<Luma<u8>, Vec<u8>> =
        ImageBuffer::from_fn(64, 64, |x, y| Luma([noise(8, x, y, 0)]));
    let as_rgb = DynamicImage::ImageRgb8(ImageBuffer::from_fn(64, 64, |x, y| {
        let v = grey.get_pixel(x, y)[0];
        Rgb([v, v, v])
    }));
    let images = vec![
        DynamicImage::ImageLuma8(grey.clone()),
        as_rgb,
        DynamicImage::ImageLumaA8(ImageBuffer::from_fn(64, 64, |x, y| {
            LumaA([grey.get_pixel(x, y)[0], 17])
        })),
        DynamicImage::ImageLuma16(ImageBuffer::from_fn(64, 64, |x, y| {
            Luma([grey.get_pixel(x, y)[0] as u16 * 257])
        })),
        DynamicImage::ImageRgb32F(ImageBuffer::from_fn(64, 64, |x, y| {
            let v = grey.get_pixel(x, y)[0] as f32 / 255.0;
            Rgb([v, v, v])
        })),
    ];
    let d = det.detect(&images).unwrap();
    // The same grey picture in five representations: one result.
    for k in 1..5 {
        assert!(
            (d[k].score - d[0].score).abs() < 1e-5,
            "representation {k}: {} vs {}",
            d[k].score,
            d[0].score
        );
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn bare_state_dict_needs_a_preset() {
    let dir = tmp_dir("detect-api-bare");
    let w = tiny_checkpoint(&dir, 13);
    let mut f = TensorFile::read(&w).unwrap();
    f.metadata.clear();
    let bare = dir.join("bare.safetensors");
    f.write(&bare).unwrap();
    let err = Detector::open(&bare, DeviceRequest::Cpu, DetectorOptions::default())
        .err()
        .expect("no metadata and no preset must fail");
    assert!(err.to_string().contains("--preset"), "{err}");
    let det_bare = Detector::open(
        &bare,
        DeviceRequest::Cpu,
        DetectorOptions {
            batch: 2,
            preset: Some("tiny".into()),
            ..DetectorOptions::default()
        },
    )
    .unwrap();
    let images = five_images();
    assert_same(
        &det_bare.detect(&images).unwrap(),
        &open(&w, 2).detect(&images).unwrap(),
        0.0,
    );
    // A size override re-plans the network (64 → 48: a 12×12 mask).
    let det48 = Detector::open(
        &w,
        DeviceRequest::Cpu,
        DetectorOptions {
            batch: 2,
            size: Some(48),
            ..DetectorOptions::default()
        },
    )
    .unwrap();
    assert_eq!(det48.detect(&images[..1]).unwrap()[0].mask.len(), 12 * 12);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn cpu_refuses_reduced_precision() {
    let dir = tmp_dir("detect-api-prec");
    let w = tiny_checkpoint(&dir, 1);
    for p in ["bf16", "tf32"] {
        let precision: Precision = p.parse().unwrap();
        let err = Detector::open(
            &w,
            DeviceRequest::Cpu,
            DetectorOptions {
                precision,
                ..DetectorOptions::default()
            },
        )
        .err()
        .expect("non-fp32 precision must be refused");
        let msg = err.to_string();
        assert!(msg.contains(p) && msg.contains("fp32"), "{msg}");
    }
    assert!("fp16".parse::<Precision>().is_err());
    let err = Detector::open(
        &w,
        DeviceRequest::Cpu,
        DetectorOptions {
            batch: 0,
            ..DetectorOptions::default()
        },
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("batch"), "{err}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn one_detector_serves_several_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Detector>();
    let dir = tmp_dir("detect-api-threads");
    let w = tiny_checkpoint(&dir, 17);
    let det = Arc::new(open(&w, 2));
    let images = five_images();
    let expected = det.detect(&images).unwrap();
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let det = Arc::clone(&det);
            let images = images.clone();
            std::thread::spawn(move || {
                // Different threads, different batch compositions, several rounds.
                let mut out = Vec::new();
                for round in 0..3 {
                    let k = (t + round) % images.len();
                    out.push((k, det.detect(&images[k..k + 1]).unwrap().remove(0)));
                }
                out
            })
        })
        .collect();
    for h in handles {
        for (k, d) in h.join().unwrap() {
            assert_same(std::slice::from_ref(&d), &expected[k..k + 1], 1e-6);
        }
    }
    std::fs::remove_dir_all(dir).ok();
}
