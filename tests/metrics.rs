//! Metrics against values computed independently with scikit-learn 1.9.1 / SciPy 1.17.1
//! (Python, float64 after casting the scores to float32), by this script:
//!
//! ```python
//! from sklearn.metrics import roc_auc_score, average_precision_score, roc_curve, accuracy_score, jaccard_score
//! from scipy.optimize import brentq; from scipy.interpolate import interp1d
//! s = np.asarray(scores, np.float32).astype(np.float64)
//! roc_auc_score(y, s); average_precision_score(y, s)
//! fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
//! eer = brentq(lambda x: 1. - x - interp1d(fpr, tpr)(x), 0., 1.)
//! accuracy_score(y, s >= np.float32(t))
//! # video: per-video mean score, label = mean label >= 0.5, then roc_auc_score
//! # pixel AUC: roc_auc_score over the pixels of samples with weight 1, gt >= 0.5
//! # IoU: mean of jaccard_score(gt >= 0.5, pred >= 0.5) over those samples with a non-empty union
//! ```
//! Both fixed arrays contain tied scores across the classes.

use prrnet::metrics::*;

const LA: [f32; 12] = [0., 0., 1., 1., 0., 1., 0., 1., 1., 0., 1., 0.];
const SA: [f32; 12] = [
    0.1, 0.4, 0.35, 0.8, 0.4, 0.9, 0.2, 0.4, 0.65, 0.7, 0.1, 0.55,
];

// np.random.RandomState(7): lb = rand(40) < 0.45, sb = round(clip(0.3·lb + 0.7·rand(40)), 1).
const LB: [f32; 40] = [
    1., 0., 1., 0., 0., 0., 0., 1., 1., 0., 0., 0., 1., 1., 1., 0., 1., 0., 0., 1., 0., 0., 1., 0.,
    0., 1., 0., 0., 0., 0., 1., 0., 1., 0., 1., 0., 0., 1., 0., 1.,
];
const SB: [f32; 40] = [
    0.6, 0.2, 0.8, 0.3, 0.3, 0.5, 0.3, 0.9, 0.4, 0.5, 0.3, 0.3, 0.7, 0.7, 0.6, 0.0, 0.4, 0.5, 0.4,
    0.8, 0.7, 0.5, 0.3, 0.2, 0.4, 0.5, 0.7, 0.7, 0.6, 0.3, 0.9, 0.1, 0.5, 0.3, 0.8, 0.3, 0.1, 0.5,
    0.2, 0.5,
];

fn close(a: f64, b: f64, tol: f64) {
    assert!((a - b).abs() <= tol, "{a} != {b} (tol {tol})");
}

#[test]
fn roc_auc_matches_sklearn() {
    close(roc_auc(&SA, &LA), 0.625, 1e-12);
    close(roc_auc(&SB, &LB), 0.828125, 1e-12);
}

#[test]
fn average_precision_matches_sklearn() {
    close(average_precision(&SA, &LA), 0.7175925925925926, 1e-12);
    close(average_precision(&SB, &LB), 0.7457121310062487, 1e-12);
}

#[test]
fn roc_curve_matches_sklearn() {
    let (fpr, tpr, thr) = roc_curve(&SA, &LA);
    let f = [
        0.0,
        0.0,
        0.0,
        1. / 6.,
        1. / 6.,
        1. / 3.,
        2. / 3.,
        2. / 3.,
        5. / 6.,
        1.0,
    ];
    let t = [
        0.0,
        1. / 6.,
        1. / 3.,
        1. / 3.,
        0.5,
        0.5,
        2. / 3.,
        5. / 6.,
        5. / 6.,
        1.0,
    ];
    let th = [
        f32::INFINITY,
        0.9,
        0.8,
        0.7,
        0.65,
        0.55,
        0.4,
        0.35,
        0.2,
        0.1,
    ];
    assert_eq!(fpr.len(), f.len());
    for i in 0..f.len() {
        close(fpr[i], f[i], 1e-12);
        close(tpr[i], t[i], 1e-12);
        assert_eq!(thr[i], th[i]);
    }
    let (fpr, tpr, thr) = roc_curve(&SB, &LB);
    let f = [
        0.0,
        0.0,
        0.0,
        0.125,
        1. / 6.,
        1. / 3.,
        0.4166666666666667,
        0.75,
        0.875,
        0.9583333333333334,
        1.0,
    ];
    let t = [
        0.0, 0.125, 0.3125, 0.4375, 0.5625, 0.8125, 0.9375, 1.0, 1.0, 1.0, 1.0,
    ];
    assert_eq!(fpr.len(), f.len());
    for i in 0..f.len() {
        close(fpr[i], f[i], 1e-12);
        close(tpr[i], t[i], 1e-12);
    }
    assert_eq!(thr[10], 0.0);
}

#[test]
fn eer_matches_brentq() {
    close(eer(&SA, &LA), 0.4444444444443009, 1e-9);
    close(eer(&SB, &LB), 0.275, 1e-9);
}

#[test]
fn accuracy_matches_sklearn() {
    close(accuracy(&SA, &LA, 0.5), 0.5833333333333334, 1e-12);
    close(accuracy(&SA, &LA, 0.4), 0.5, 1e-12);
    close(accuracy(&SB, &LB, 0.5), 0.725, 1e-12);
    close(accuracy(&SB, &LB, 0.4), 0.725, 1e-12);
}

#[test]
fn video_auc_matches_sklearn() {
    let vids = ["a", "a", "b", "b", "b", "c", "d", "d", "e", "e", "f", "g"];
    close(video_auc(&SA, &LA, &vids), 0.6000000000000001, 1e-12);
    let (s, l) = video_scores(&SA, &LA, &vids);
    assert_eq!(l, vec![0., 1., 1., 1., 1., 1., 0.]);
    close(s[1] as f64, 0.5166666706403097, 1e-6);
}

// np.random.RandomState(7) continued: three 4×4 maps, the middle one without a mask label.
const PM: [f32; 48] = [
    0.17, 0.41, 0.45, 0.77, 0.8, 0.52, 0.46, 0.78, 0.89, 0.67, 0.8, 0.94, 0.04, 0.88, 0.28, 0.48,
    0.8, 0.72, 0.15, 0.66, 0.07, 0.36, 0.81, 0.43, 0.6, 0.73, 0.82, 0.76, 0.01, 0.42, 0.46, 0.06,
    0.54, 0.61, 0.83, 0.94, 0.13, 0.23, 0.66, 0.13, 0.22, 0.57, 0.17, 0.78, 0.86, 0.03, 0.53, 0.8,
];
const GM: [f32; 48] = [
    0.05, 0.95, 0.95, 0.05, 0.05, 0.95, 0.05, 0.05, 0.05, 0.95, 0.05, 0.05, 0.05, 0.95, 0.95, 0.95,
    0.05, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.05, 0.05, 0.05, 0.95, 0.95, 0.05, 0.05, 0.05, 0.95,
    0.2, 0.2, 0.8, 0.2, 0.2, 0.2, 0.2, 0.8, 0.8, 0.2, 0.2, 0.8, 0.2, 0.2, 0.8, 0.2,
];

#[test]
fn pixel_auc_and_iou_match_sklearn() {
    let w = [1.0, 0.0, 1.0];
    close(pixel_auc(&PM, &GM, &w), 0.4291666666666667, 1e-12);
    close(iou_at_05(&PM, &GM, &w), 0.2403846153846154, 1e-12);
    // Including the middle sample changes both, so the weight is honoured.
    assert!((pixel_auc(&PM, &GM, &[1.0, 1.0, 1.0]) - 0.4291666666666667).abs() > 1e-6);
}

#[test]
fn iou_skips_empty_unions_and_counts_by_hand() {
    // Sample 0: pred {0,1}, gt {1,2} → 1/3. Sample 1: both empty → skipped. Sample 2: equal → 1.
    let pred = [0.9, 0.6, 0.1, 0.0, 0.0, 0.2, 0.4, 0.1, 0.7, 0.0, 0.0, 0.8];
    let gt = [0.0, 1.0, 0.5, 0.2, 0.0, 0.0, 0.49, 0.0, 1.0, 0.0, 0.1, 0.6];
    close(
        iou_at_05(&pred, &gt, &[1.0, 1.0, 1.0]),
        (1.0 / 3.0 + 1.0) / 2.0,
        1e-12,
    );
    assert!(iou_at_05(&pred[4..8], &gt[4..8], &[1.0]).is_nan());
}

#[test]
fn perfect_and_inverted_scores() {
    let l = [0., 0., 1., 1.];
    close(roc_auc(&[0.1, 0.2, 0.8, 0.9], &l), 1.0, 0.0);
    close(roc_auc(&[0.9, 0.8, 0.2, 0.1], &l), 0.0, 0.0);
    close(roc_auc(&[0.5; 4], &l), 0.5, 0.0);
    close(eer(&[0.1, 0.2, 0.8, 0.9], &l), 0.0, 0.0);
    close(average_precision(&[0.1, 0.2, 0.8, 0.9], &l), 1.0, 0.0);
}

#[test]
fn one_class_and_empty_inputs_are_nan_not_panics() {
    assert!(roc_auc(&[0.1, 0.9], &[1., 1.]).is_nan());
    assert!(roc_auc(&[0.1, 0.9], &[0., 0.]).is_nan());
    assert!(roc_auc(&[], &[]).is_nan());
    assert!(eer(&[0.1, 0.9], &[0., 0.]).is_nan());
    assert!(average_precision(&[0.1, 0.9], &[0., 0.]).is_nan());
    close(average_precision(&[0.1, 0.9], &[1., 1.]), 1.0, 0.0);
    assert!(accuracy(&[], &[], 0.5).is_nan());
    assert!(video_auc::<&str>(&[], &[], &[]).is_nan());
    assert!(pixel_auc(&[0.5; 8], &[0.0; 8], &[1.0, 1.0]).is_nan());
    assert!(pixel_auc(&[0.5; 8], &[1.0; 8], &[0.0, 0.0]).is_nan());
    assert!(pixel_auc(&[0.5; 7], &[1.0; 8], &[1.0, 1.0]).is_nan());
    let (f, t, _) = roc_curve(&[0.3, 0.4], &[1., 1.]);
    assert!(f.iter().all(|v| v.is_nan()) && t.iter().all(|v| !v.is_nan()));
    // NaN scores do not panic and rank lowest.
    close(roc_auc(&[f32::NAN, 0.9], &[0., 1.]), 1.0, 0.0);
}

#[test]
fn plots_are_written_as_pngs_with_the_series_colours() {
    let d = std::env::temp_dir().join(format!("prrnet-plot-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let train: Vec<(f64, f64)> = (0..50)
        .map(|i| (i as f64, 1.0 / (1.0 + i as f64 * 0.1)))
        .collect();
    let val: Vec<(f64, f64)> = (0..10)
        .map(|i| (i as f64 * 5.0, 0.8 / (1.0 + i as f64 * 0.3)))
        .collect();
    let p = d.join("loss.png");
    prrnet::plot::line_plot(
        &p,
        "Loss",
        &[("train loss", &train), ("val loss", &val)],
        "step",
        "loss",
    )
    .unwrap();
    let img = image::open(&p).unwrap().to_rgb8();
    assert_eq!((img.width(), img.height()), (720, 480));
    let has = |c: [u8; 3]| img.pixels().filter(|px| px.0 == c).count();
    assert!(has([0, 114, 178]) > 200, "first series drawn");
    assert!(has([213, 94, 0]) > 100, "second series drawn");
    assert!(has([0, 0, 0]) > 500, "axes and text drawn");
    let (fpr, tpr, _) = roc_curve(&SB, &LB);
    let r = d.join("roc.png");
    prrnet::plot::roc_plot(&r, &fpr, &tpr, roc_auc(&SB, &LB)).unwrap();
    let img = image::open(&r).unwrap().to_rgb8();
    assert!(img.pixels().filter(|px| px.0 == [0, 114, 178]).count() > 200);
    // Degenerate inputs do not panic.
    prrnet::plot::line_plot(&d.join("empty.png"), "", &[("nothing", &[])], "", "").unwrap();
    prrnet::plot::line_plot(
        &d.join("one.png"),
        "x",
        &[("one", &[(1.0, f64::NAN), (2.0, 3.0)])],
        "",
        "",
    )
    .unwrap();
    // No temporary files left behind.
    let names: Vec<String> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains(".tmp")), "{names:?}");
    if std::env::var("PRRNET_KEEP_PLOTS").is_err() {
        let _ = std::fs::remove_dir_all(&d);
    }
}
