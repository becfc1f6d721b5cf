//! Small PNG plots drawn with the `image` crate: line plots (loss curves) and ROC curves, with
//! axes, tick marks, tick labels, a title and a legend in a built-in 5×7 bitmap font
//! (upper-case letters, digits and common punctuation; lower case is drawn as upper case).
//! Files are written atomically.

use std::path::Path;

use image::{Rgb, RgbImage};

use crate::error::{Error, Result};

const W: u32 = 720;
const H: u32 = 480;
const LEFT: i32 = 70;
const RIGHT: i32 = 180;
const TOP: i32 = 36;
const BOTTOM: i32 = 50;

/// Series colours (distinct, colour-blind friendly first).
const PALETTE: [[u8; 3]; 8] = [
    [0, 114, 178],
    [213, 94, 0],
    [0, 158, 115],
    [204, 121, 167],
    [230, 159, 0],
    [86, 180, 233],
    [120, 120, 120],
    [0, 0, 0],
];

/// 5×7 glyph: seven rows, bit 4 the leftmost column.
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '.' => [0, 0, 0, 0, 0, 0x0C, 0x0C],
        ',' => [0, 0, 0, 0, 0x0C, 0x04, 0x08],
        '-' => [0, 0, 0, 0x1F, 0, 0, 0],
        '+' => [0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0],
        ':' => [0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0],
        '=' => [0, 0, 0x1F, 0, 0x1F, 0, 0],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '/' => [0, 0x01, 0x02, 0x04, 0x08, 0x10, 0],
        '_' => [0, 0, 0, 0, 0, 0, 0x1F],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '\'' => [0x04, 0x04, 0x08, 0, 0, 0, 0],
        '<' => [0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02],
        '>' => [0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08],
        '[' => [0x0E, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0E],
        ']' => [0x0E, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0E],
        '#' => [0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A],
        ' ' => [0; 7],
        _ => [0x1F, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1F],
    }
}

struct Canvas {
    img: RgbImage,
}

impl Canvas {
    fn new() -> Canvas {
        Canvas {
            img: RgbImage::from_pixel(W, H, Rgb([255, 255, 255])),
        }
    }
    fn put(&mut self, x: i32, y: i32, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as u32) < W && (y as u32) < H {
            self.img.put_pixel(x as u32, y as u32, Rgb(c));
        }
    }
    fn rect(&mut self, x0: i32, y0: i32, x1: i32, y1: i32, c: [u8; 3]) {
        for y in y0..=y1 {
            for x in x0..=x1 {
                self.put(x, y, c);
            }
        }
    }
    /// A line of thickness `t` (Bresenham with a square pen).
    fn line(&mut self, (x0, y0): (i32, i32), (x1, y1): (i32, i32), t: i32, c: [u8; 3]) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        let lo = -(t - 1) / 2;
        let hi = t / 2;
        loop {
            self.rect(x + lo, y + lo, x + hi, y + hi, c);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }
    /// Text with its top-left corner at (x, y), `scale` pixels per font dot.
    fn text(&mut self, x: i32, y: i32, s: &str, scale: i32, c: [u8; 3]) {
        for (k, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            let ox = x + k as i32 * 6 * scale;
            for (r, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        self.rect(
                            ox + col * scale,
                            y + r as i32 * scale,
                            ox + col * scale + scale - 1,
                            y + r as i32 * scale + scale - 1,
                            c,
                        );
                    }
                }
            }
        }
    }
    fn text_width(s: &str, scale: i32) -> i32 {
        s.chars().count() as i32 * 6 * scale - scale
    }
    fn save(self, path: &Path) -> Result<()> {
        let mut png = Vec::new();
        self.img
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .map_err(|e| Error::file(path, e))?;
        crate::io::tensors::write_atomic(path, &png)
    }
}

/// "Nice" tick positions (steps of 1, 2 or 5 × 10ᵏ) covering [lo, hi].
fn ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    let span = hi - lo;
    if span.is_nan() || span <= 0.0 || !span.is_finite() {
        return vec![lo];
    }
    let raw = span / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

fn tick_label(v: f64, step: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) {
        return format!("{v:.1e}");
    }
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    format!("{v:.decimals$}")
}

/// Data range with a margin; degenerate ranges widened.
fn range_of(vals: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in vals.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        let d = if lo.abs() > 1e-12 {
            lo.abs() * 0.1
        } else {
            1.0
        };
        return (lo - d, hi + d);
    }
    let m = (hi - lo) * 0.05;
    (lo - m, hi + m)
}

/// Draw series on axes with explicit ranges.
#[allow(clippy::too_many_arguments)]
fn draw(
    path: &Path,
    title: &str,
    series: &[(&str, &[(f64, f64)])],
    colours: &[[u8; 3]],
    x_label: &str,
    y_label: &str,
    (x0, x1): (f64, f64),
    (y0, y1): (f64, f64),
) -> Result<()> {
    let mut c = Canvas::new();
    let (pl, pr, pt, pb) = (LEFT, W as i32 - RIGHT, TOP, H as i32 - BOTTOM);
    let px = |x: f64| pl as f64 + (x - x0) / (x1 - x0) * (pr - pl) as f64;
    let py = |y: f64| pb as f64 - (y - y0) / (y1 - y0) * (pb - pt) as f64;
    let axis = [0, 0, 0];
    let grey = [225, 225, 225];
    let xt = ticks(x0, x1, 6);
    let yt = ticks(y0, y1, 6);
    let xstep = if xt.len() > 1 { xt[1] - xt[0] } else { 1.0 };
    let ystep = if yt.len() > 1 { yt[1] - yt[0] } else { 1.0 };
    for &t in &xt {
        let x = px(t).round() as i32;
        c.line((x, pt), (x, pb), 1, grey);
        c.line((x, pb), (x, pb + 5), 1, axis);
        let s = tick_label(t, xstep);
        c.text(x - Canvas::text_width(&s, 1) / 2, pb + 9, &s, 1, axis);
    }
    for &t in &yt {
        let y = py(t).round() as i32;
        c.line((pl, y), (pr, y), 1, grey);
        c.line((pl - 5, y), (pl, y), 1, axis);
        let s = tick_label(t, ystep);
        c.text(pl - 8 - Canvas::text_width(&s, 1), y - 3, &s, 1, axis);
    }
    c.line((pl, pt), (pl, pb), 1, axis);
    c.line((pl, pb), (pr, pb), 1, axis);
    c.line((pl, pt), (pr, pt), 1, axis);
    c.line((pr, pt), (pr, pb), 1, axis);
    c.text(
        (pl + pr) / 2 - Canvas::text_width(title, 2) / 2,
        10,
        title,
        2,
        axis,
    );
    c.text(
        (pl + pr) / 2 - Canvas::text_width(x_label, 1) / 2,
        pb + 26,
        x_label,
        1,
        axis,
    );
    c.text(6, pt - 14, y_label, 1, axis);

    for (k, (name, pts)) in series.iter().enumerate() {
        let col = colours[k % colours.len()];
        let mut prev: Option<(i32, i32)> = None;
        for &(x, y) in pts.iter() {
            if !(x.is_finite() && y.is_finite()) {
                prev = None;
                continue;
            }
            let p = (
                px(x).clamp(-1e4, 1e4).round() as i32,
                py(y).clamp(-1e4, 1e4).round() as i32,
            );
            if let Some(q) = prev {
                c.line(q, p, 2, col);
            } else if pts.len() == 1 {
                c.rect(p.0 - 2, p.1 - 2, p.0 + 2, p.1 + 2, col);
            }
            prev = Some(p);
        }
        // Legend: a coloured box and the name, right of the plot.
        let ly = pt + 4 + k as i32 * 16;
        c.rect(pr + 12, ly, pr + 22, ly + 8, col);
        let name: String = name.chars().take(25).collect();
        c.text(pr + 28, ly + 1, &name, 1, axis);
    }
    c.save(path)
}

/// A line plot of `series` (name, points), axes fitted to the finite data.
pub fn line_plot(
    path: &Path,
    title: &str,
    series: &[(&str, &[(f64, f64)])],
    x_label: &str,
    y_label: &str,
) -> Result<()> {
    let xr = range_of(series.iter().flat_map(|(_, p)| p.iter().map(|q| q.0)));
    let yr = range_of(series.iter().flat_map(|(_, p)| p.iter().map(|q| q.1)));
    draw(path, title, series, &PALETTE, x_label, y_label, xr, yr)
}

/// A ROC curve with the chance diagonal, on [0, 1]², titled with the AUC.
pub fn roc_plot(path: &Path, fpr: &[f64], tpr: &[f64], auc: f64) -> Result<()> {
    let curve: Vec<(f64, f64)> = fpr.iter().copied().zip(tpr.iter().copied()).collect();
    let diag = [(0.0, 0.0), (1.0, 1.0)];
    let name = format!("AUC {auc:.4}");
    draw(
        path,
        &format!("ROC  AUC = {auc:.4}"),
        &[(&name, &curve), ("chance", &diag)],
        &[PALETTE[0], [160, 160, 160]],
        "false positive rate",
        "true positive rate",
        (0.0, 1.0),
        (0.0, 1.0),
    )
}
