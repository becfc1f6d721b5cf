//! Weighted binary cross-entropy on logits (SPEC §7), in the numerically stable form
//! `BCE(x, t) = max(x, 0) − x·t + ln(1 + exp(−|x|))`. x, target: [rows, cols], weight: [rows].

use super::{check_len, disjoint, CpuBackend};
use crate::tensor::Tensor;

pub fn bce_scalar(x: f64, t: f64) -> f64 {
    x.max(0.0) - x * t + (-x.abs()).exp().ln_1p()
}

#[allow(clippy::too_many_arguments)]
pub fn bce_with_logits(
    be: &CpuBackend,
    rows: usize,
    cols: usize,
    x: Tensor,
    target: Tensor,
    weight: Tensor,
    scale: f32,
    loss: Tensor,
) {
    check_len("bce x", x, rows * cols);
    check_len("bce target", target, rows * cols);
    check_len("bce weight", weight, rows);
    check_len("bce loss", loss, 1);
    disjoint(&[loss], &[x, target, weight]);
    let (xs, ts, ws) = (be.r(x), be.r(target), be.r(weight));
    let mut total = 0f64;
    for r in 0..rows {
        if ws[r] == 0.0 {
            continue;
        }
        let s: f64 = (0..cols)
            .map(|c| bce_scalar(xs[r * cols + c] as f64, ts[r * cols + c] as f64))
            .sum();
        total += ws[r] as f64 * s;
    }
    be.w(loss)[0] = (total * scale as f64) as f32;
}

#[allow(clippy::too_many_arguments)]
pub fn bce_with_logits_backward(
    be: &CpuBackend,
    rows: usize,
    cols: usize,
    x: Tensor,
    target: Tensor,
    weight: Tensor,
    scale: f32,
    dx: Tensor,
) {
    check_len("bce dx", dx, rows * cols);
    disjoint(&[dx], &[x, target, weight]);
    let (xs, ts, ws, d) = (be.r(x), be.r(target), be.r(weight), be.w(dx));
    for (r, w) in ws.iter().enumerate().take(rows) {
        let k = scale * w;
        if k == 0.0 {
            continue;
        }
        for c in 0..cols {
            let i = r * cols + c;
            let sig = 1.0 / (1.0 + (-xs[i]).exp());
            d[i] += k * (sig - ts[i]);
        }
    }
}
