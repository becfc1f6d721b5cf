//! Validation metrics on scores (higher = more likely fake) and 0/1 labels (1 = fake), defined
//! as scikit-learn defines them. Undefined cases (one class only, no samples) give NaN, never a
//! panic. Labels are read as `label >= 0.5`; NaN scores sort below every other score.

use std::collections::BTreeMap;

/// Fraction of samples with `(score >= threshold) == (label >= 0.5)`. NaN when empty.
pub fn accuracy(scores: &[f32], labels: &[f32], threshold: f32) -> f64 {
    let n = scores.len().min(labels.len());
    if n == 0 {
        return f64::NAN;
    }
    let ok = (0..n)
        .filter(|&i| (scores[i] >= threshold) == (labels[i] >= 0.5))
        .count();
    ok as f64 / n as f64
}

/// Cumulative (false positives, true positives) and the score at each distinct threshold,
/// thresholds decreasing.
fn counts(scores: &[f32], labels: &[f32]) -> (Vec<f64>, Vec<f64>, Vec<f32>) {
    let n = scores.len().min(labels.len());
    let mut idx: Vec<usize> = (0..n).collect();
    let key = |i: usize| {
        if scores[i].is_nan() {
            f32::NEG_INFINITY
        } else {
            scores[i]
        }
    };
    idx.sort_by(|&a, &b| key(b).total_cmp(&key(a)));
    let (mut fps, mut tps, mut thr) = (Vec::new(), Vec::new(), Vec::new());
    let (mut fp, mut tp) = (0.0, 0.0);
    for (k, &i) in idx.iter().enumerate() {
        if labels[i] >= 0.5 {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        if k + 1 == idx.len() || key(idx[k + 1]) != key(i) {
            fps.push(fp);
            tps.push(tp);
            thr.push(key(i));
        }
    }
    (fps, tps, thr)
}

/// ROC curve as `sklearn.metrics.roc_curve(labels, scores, drop_intermediate=False)`:
/// (fpr, tpr, thresholds), one point per distinct score, decreasing thresholds, starting at
/// (0, 0) with threshold +∞. A class that is absent gives NaN rates for its axis.
pub fn roc_curve(scores: &[f32], labels: &[f32]) -> (Vec<f64>, Vec<f64>, Vec<f32>) {
    let (fps, tps, thr) = counts(scores, labels);
    let (nf, nt) = (
        fps.last().copied().unwrap_or(0.0),
        tps.last().copied().unwrap_or(0.0),
    );
    let mut fpr = vec![0.0];
    let mut tpr = vec![0.0];
    let mut th = vec![f32::INFINITY];
    for i in 0..fps.len() {
        fpr.push(if nf > 0.0 { fps[i] / nf } else { f64::NAN });
        tpr.push(if nt > 0.0 { tps[i] / nt } else { f64::NAN });
        th.push(thr[i]);
    }
    if nf == 0.0 {
        fpr[0] = f64::NAN;
    }
    if nt == 0.0 {
        tpr[0] = f64::NAN;
    }
    (fpr, tpr, th)
}

/// Area under the ROC curve (trapezoid over distinct thresholds, so ties count ½), as
/// `sklearn.metrics.roc_auc_score`. NaN when only one class is present.
pub fn roc_auc(scores: &[f32], labels: &[f32]) -> f64 {
    let (fpr, tpr, _) = roc_curve(scores, labels);
    if fpr.iter().chain(&tpr).any(|v| v.is_nan()) || fpr.len() < 2 {
        return f64::NAN;
    }
    let mut area = 0.0;
    for i in 1..fpr.len() {
        area += (fpr[i] - fpr[i - 1]) * (tpr[i] + tpr[i - 1]) * 0.5;
    }
    area
}

/// Average precision as `sklearn.metrics.average_precision_score`: Σₙ (Rₙ − Rₙ₋₁)·Pₙ over
/// distinct thresholds, decreasing. NaN when there is no positive (fake) sample.
pub fn average_precision(scores: &[f32], labels: &[f32]) -> f64 {
    let (fps, tps, _) = counts(scores, labels);
    let nt = tps.last().copied().unwrap_or(0.0);
    if nt == 0.0 {
        return f64::NAN;
    }
    let mut ap = 0.0;
    let mut prev_r = 0.0;
    for i in 0..tps.len() {
        let r = tps[i] / nt;
        let p = tps[i] / (tps[i] + fps[i]);
        ap += (r - prev_r) * p;
        prev_r = r;
    }
    ap
}

/// Equal error rate: the point where the false positive rate equals the false negative rate
/// (1 − TPR), linearly interpolated between the two ROC points where FPR − FNR changes sign
/// (the usual `brentq(lambda x: 1 - x - interp1d(fpr, tpr)(x), 0, 1)`). NaN with one class.
pub fn eer(scores: &[f32], labels: &[f32]) -> f64 {
    let (fpr, tpr, _) = roc_curve(scores, labels);
    if fpr.iter().chain(&tpr).any(|v| v.is_nan()) {
        return f64::NAN;
    }
    // d = FPR − FNR rises from −1 at (0, 0) to +1 at (1, 1).
    let d = |i: usize| fpr[i] - (1.0 - tpr[i]);
    for i in 1..fpr.len() {
        let (d0, d1) = (d(i - 1), d(i));
        if d1 >= 0.0 {
            if d1 == d0 {
                return fpr[i];
            }
            let t = -d0 / (d1 - d0);
            return fpr[i - 1] + t * (fpr[i] - fpr[i - 1]);
        }
    }
    f64::NAN
}

/// Video-level ROC AUC: each video's score is the mean of its frames' scores, its label the
/// majority of its frames' labels (ties → fake). NaN with one class.
pub fn video_auc<S: AsRef<str>>(scores: &[f32], labels: &[f32], videos: &[S]) -> f64 {
    let (vs, vl) = video_scores(scores, labels, videos);
    roc_auc(&vs, &vl)
}

/// Per-video (mean score, majority label), in video-id order.
pub fn video_scores<S: AsRef<str>>(
    scores: &[f32],
    labels: &[f32],
    videos: &[S],
) -> (Vec<f32>, Vec<f32>) {
    let n = scores.len().min(labels.len()).min(videos.len());
    let mut acc: BTreeMap<&str, (f64, f64, usize)> = BTreeMap::new();
    for i in 0..n {
        let e = acc.entry(videos[i].as_ref()).or_default();
        e.0 += scores[i] as f64;
        e.1 += (labels[i] >= 0.5) as u8 as f64;
        e.2 += 1;
    }
    acc.values()
        .map(|&(s, l, c)| {
            (
                (s / c as f64) as f32,
                if 2.0 * l >= c as f64 { 1.0 } else { 0.0 },
            )
        })
        .unzip()
}

/// Samples included in the mask metrics: `weight[b] > 0`; `pred` and `gt` hold
/// `weight.len()` equal-sized maps each.
fn mask_samples<'a>(pred: &'a [f32], gt: &'a [f32], weight: &[f32]) -> Vec<(&'a [f32], &'a [f32])> {
    let b = weight.len();
    if b == 0 || pred.len() != gt.len() || !pred.len().is_multiple_of(b) || pred.is_empty() {
        return Vec::new();
    }
    let p = pred.len() / b;
    (0..b)
        .filter(|&i| weight[i] > 0.0)
        .map(|i| (&pred[i * p..(i + 1) * p], &gt[i * p..(i + 1) * p]))
        .collect()
}

/// Localisation pixel AUC: ROC AUC over every pixel of the samples with a mask label
/// (`weight > 0`), ground truth binarised at 0.5. `pred` and `gt` are `[B, P]` maps of the same
/// resolution (pool or resize the ground truth to the prediction's first). NaN when the
/// pixels hold one class only (e.g. only reals) or the shapes disagree.
pub fn pixel_auc(pred: &[f32], gt: &[f32], weight: &[f32]) -> f64 {
    let sel = mask_samples(pred, gt, weight);
    let mut s = Vec::new();
    let mut l = Vec::new();
    for (p, g) in sel {
        s.extend_from_slice(p);
        l.extend(g.iter().map(|&v| if v >= 0.5 { 1.0f32 } else { 0.0 }));
    }
    roc_auc(&s, &l)
}

/// Mean IoU of prediction and ground truth, both binarised at 0.5, over the samples with a mask
/// label (`weight > 0`) whose union is non-empty. NaN when there is none.
pub fn iou_at_05(pred: &[f32], gt: &[f32], weight: &[f32]) -> f64 {
    let mut sum = 0.0;
    let mut n = 0usize;
    for (p, g) in mask_samples(pred, gt, weight) {
        let (mut inter, mut union) = (0usize, 0usize);
        for (&a, &b) in p.iter().zip(g) {
            let (a, b) = (a >= 0.5, b >= 0.5);
            inter += (a && b) as usize;
            union += (a || b) as usize;
        }
        if union > 0 {
            sum += inter as f64 / union as f64;
            n += 1;
        }
    }
    if n == 0 {
        f64::NAN
    } else {
        sum / n as f64
    }
}
