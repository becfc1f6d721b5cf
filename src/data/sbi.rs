//! Self-blended images (SBI; Shiohara & Yamasaki, "Detecting Deepfakes with Self-Blended
//! Images", CVPR 2022): a fake made from one real image by blending a slightly altered copy of
//! it into itself through a soft mask. The mask is the exact localisation label.
//!
//! Pipeline of [`blend_parts`] on an RGB `[S, S, 3]` image in [0, 1]:
//! 1. source = target = the image; with probability ½ the *source* gets the quality transform,
//!    otherwise the *target* does: a per-channel RGB shift (with probability
//!    `rgb_shift_prob`), a hue rotation and saturation change, brightness and contrast
//!    (`x·(1+c) + b`), clamped to [0, 1]; then either nearest down-sampling by a factor from
//!    `downscale_factors` followed by bilinear up-sampling, or a 3×3 sharpen (albumentations'
//!    `Sharpen` kernel with `alpha`, `lightness`), with equal probability;
//! 2. affine jitter of the source (shift up to `shift_x`, `shift_y` of the side, scale in
//!    `scale`, about the centre);
//! 3. a hard region in the central face area: an ellipse, or the convex hull of 6–12 random
//!    points in that area (probability `hull_prob`);
//! 4. the region moved with the source's affine jitter and elastically deformed (a smooth random
//!    displacement field of relative amplitude `elastic_amp` and correlation length
//!    `elastic_scale`);
//! 5. blur 1 (kernel half-width in `blur_radius` × S, OpenCV's default σ for that kernel),
//!    normalised to max 1, everything below 1 set to 0 (an erosion, as in the SBI code; skipped
//!    when it would remove more than ¾ of a thin region), blur 2 (half-width in
//!    `blur_radius` × S, σ in `blur2_sigma` × S), normalised to max 1;
//! 6. the mask multiplied by a blend ratio drawn from `blend_ratios`;
//! 7. `fake = mask·source + (1 − mask)·target` per pixel and channel;
//! 8. ([`self_blend`] only) JPEG re-compression with probability `jpeg_prob`, quality in
//!    `jpeg_quality`.

use crate::rng::Rng;

/// Ranges of the self-blending transforms. `sbi()` holds the published SBI ranges (for real
/// face crops); `builtin()` stronger artifacts for the procedural built-in dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct SbiParams {
    /// Probability of the per-channel RGB shift.
    pub rgb_shift_prob: f32,
    /// Per-channel additive shift, uniform in ±this (fraction of full scale).
    pub rgb_shift: f32,
    /// Hue rotation, uniform in ±this, in degrees.
    pub hue_deg: f32,
    /// Saturation (chroma) scale change, uniform in ±this.
    pub saturation: f32,
    /// Brightness offset, uniform in ±this.
    pub brightness: f32,
    /// Contrast gain change, uniform in ±this.
    pub contrast: f32,
    /// Down-up-sampling factors (one drawn uniformly).
    pub downscale_factors: Vec<u32>,
    /// Sharpen `alpha` range.
    pub sharpen_alpha: (f32, f32),
    /// Sharpen `lightness` range.
    pub sharpen_lightness: (f32, f32),
    /// Source shift, uniform in ±this fraction of the side (x, y).
    pub shift_x: f32,
    pub shift_y: f32,
    /// Source scale range.
    pub scale: (f32, f32),
    /// Probability that the region is a convex hull of random points (else an ellipse).
    pub hull_prob: f32,
    /// Face area: centre jitter (fraction of the side) and radius range (fraction of the side).
    pub face_jitter: f32,
    pub face_radius: (f32, f32),
    /// Elastic deformation of the mask: displacement std and correlation length, both as
    /// fractions of the side.
    pub elastic_amp: f32,
    pub elastic_scale: f32,
    /// Kernel half-width range of both mask blurs, as a fraction of the side (blur 1 uses
    /// OpenCV's default σ for its kernel, `0.3·(half-width − 1) + 0.8` pixels).
    pub blur_radius: (f32, f32),
    /// σ range of the second blur, as a fraction of the side (the kernel truncates it).
    pub blur2_sigma: (f32, f32),
    /// Blend ratios (one drawn uniformly) multiplying the mask.
    pub blend_ratios: Vec<f32>,
    /// JPEG re-compression probability and quality range (inclusive).
    pub jpeg_prob: f32,
    pub jpeg_quality: (u8, u8),
}

impl Default for SbiParams {
    fn default() -> Self {
        SbiParams::sbi()
    }
}

impl SbiParams {
    /// The SBI paper's ranges (albumentations settings of the official code, in [0, 1] units):
    /// RGB shift ±20/255 with p 0.3, brightness ±0.1, contrast ±0.1, hue/saturation changes
    /// that are negligible on 8-bit images (±0.3°, ±0.3/255), down-scale ×2 or ×4 or sharpen
    /// (alpha 0.2–0.5, lightness 0.5–1), shift ±3 % / ±1.5 %, scale 0.95–1/0.95, elastic
    /// (alpha 50, σ 7 px at 256 px ≈ 0.5 % amplitude, 3 % length), blur kernels 5–25 px and
    /// blur-2 σ 5–45 px at 256 px, ratios {0.25, 0.5, 0.75, 1, 1, 1}, JPEG quality 40–100 with p 0.5.
    pub fn sbi() -> SbiParams {
        SbiParams {
            rgb_shift_prob: 0.3,
            rgb_shift: 20.0 / 255.0,
            hue_deg: 0.3,
            saturation: 0.3 / 255.0,
            brightness: 0.1,
            contrast: 0.1,
            downscale_factors: vec![2, 4],
            sharpen_alpha: (0.2, 0.5),
            sharpen_lightness: (0.5, 1.0),
            shift_x: 0.03,
            shift_y: 0.015,
            scale: (0.95, 1.0 / 0.95),
            hull_prob: 0.5,
            face_jitter: 0.04,
            face_radius: (0.2, 0.38),
            elastic_amp: 0.005,
            elastic_scale: 0.03,
            blur_radius: (2.0 / 256.0, 12.0 / 256.0),
            blur2_sigma: (5.0 / 256.0, 45.0 / 256.0),
            blend_ratios: vec![0.25, 0.5, 0.75, 1.0, 1.0, 1.0],
            jpeg_prob: 0.5,
            jpeg_quality: (40, 100),
        }
    }

    /// Stronger artifacts for the built-in procedural dataset (not meant for real faces): the
    /// colour transforms at 3× the SBI ranges and always on (RGB shift ±60/255, brightness and
    /// contrast ±0.3, hue ±10°, saturation ±0.15); everything else as in [`SbiParams::sbi`].
    pub fn builtin() -> SbiParams {
        SbiParams {
            rgb_shift_prob: 1.0,
            rgb_shift: 60.0 / 255.0,
            hue_deg: 10.0,
            saturation: 0.15,
            brightness: 0.3,
            contrast: 0.3,
            ..SbiParams::sbi()
        }
    }
}

/// Everything one blend used, before JPEG: `fake = mask·source + (1 − mask)·target` exactly.
#[derive(Clone, Debug)]
pub struct Blend {
    /// The (transformed, shifted) source `[S, S, 3]`.
    pub source: Vec<f32>,
    /// The target `[S, S, 3]` (the input, transformed when `source_transformed` is false).
    pub target: Vec<f32>,
    /// Blend weights `[S, S]` in [0, 1].
    pub mask: Vec<f32>,
    /// The blended image before JPEG.
    pub fake: Vec<f32>,
    /// Whether the quality transform went to the source (else to the target).
    pub source_transformed: bool,
    /// The JPEG quality [`self_blend`] applies, if any.
    pub jpeg_quality: Option<u8>,
}

/// Self-blend `img` (`[S, S, 3]` in [0, 1]): the fake image (JPEG re-compressed when drawn) and
/// its mask `[S, S]`, exactly the blend weights used.
pub fn self_blend(img: &[f32], size: usize, rng: &mut Rng, p: &SbiParams) -> (Vec<f32>, Vec<f32>) {
    let b = blend_parts(img, size, rng, p);
    let fake = match b.jpeg_quality {
        Some(q) => jpeg_roundtrip(&b.fake, size, q),
        None => b.fake,
    };
    (fake, b.mask)
}

/// Draw a JPEG quality with probability `p.jpeg_prob` (the same rule as the blend's own).
pub fn draw_jpeg(rng: &mut Rng, p: &SbiParams) -> Option<u8> {
    let take = rng.uniform() < p.jpeg_prob as f64;
    let (lo, hi) = (
        p.jpeg_quality.0.min(p.jpeg_quality.1),
        p.jpeg_quality.0.max(p.jpeg_quality.1),
    );
    let q = lo as usize + rng.below(hi as usize - lo as usize + 1);
    take.then_some(q.clamp(1, 100) as u8)
}

/// All steps of the blend but the JPEG (see the module documentation).
pub fn blend_parts(img: &[f32], size: usize, rng: &mut Rng, p: &SbiParams) -> Blend {
    let np = size * size;
    assert_eq!(img.len(), np * 3, "image must be [S, S, 3]");
    let source_transformed = rng.uniform() < 0.5;
    let mut source = img.to_vec();
    let mut target = img.to_vec();
    quality_transform(
        if source_transformed {
            &mut source
        } else {
            &mut target
        },
        size,
        rng,
        p,
    );

    // Affine jitter: output pixel x samples the input at A⁻¹x (about the centre).
    let s = size as f32;
    let aff = Affine {
        tx: rng.range(-1.0, 1.0) as f32 * p.shift_x * s,
        ty: rng.range(-1.0, 1.0) as f32 * p.shift_y * s,
        scale: rng.range(p.scale.0 as f64, p.scale.1 as f64) as f32,
        c: s * 0.5,
    };
    let source = warp_rgb(&source, size, &aff);

    let region = region_mask(rng, size, p);
    let disp = displacement(rng, size, p.elastic_amp * s, p.elastic_scale);
    let mut mask = warp_map(&region, size, &aff, Some(&disp));

    // The two blurs as in the SBI code (OpenCV GaussianBlur): kernel half-widths drawn
    // relative to the side; blur 1 with OpenCV's default σ for its kernel, blur 2 with a drawn σ.
    let h1 = (rng.range(p.blur_radius.0 as f64, p.blur_radius.1 as f64) as f32 * s)
        .round()
        .max(1.0);
    let h2 = (rng.range(p.blur_radius.0 as f64, p.blur_radius.1 as f64) as f32 * s)
        .round()
        .max(1.0);
    let s1 = 0.3 * (h1 - 1.0) + 0.8;
    let s2 = rng.range(p.blur2_sigma.0 as f64, p.blur2_sigma.1 as f64) as f32 * s;
    let before = mask.clone();
    let area = |m: &[f32]| m.iter().filter(|&&v| v > 0.0).count();
    gaussian_blur(&mut mask, size, size, s1, h1 as usize);
    if normalise_max(&mut mask) {
        for v in mask.iter_mut() {
            *v = if *v >= 1.0 - 1e-4 { 1.0 } else { 0.0 };
        }
    }
    if area(&mask) * 4 < area(&before) {
        // Too thin to survive the erosion: keep the region as it was.
        mask = before;
    }
    gaussian_blur(&mut mask, size, size, s2, h2 as usize);
    normalise_max(&mut mask);
    let ratio = if p.blend_ratios.is_empty() {
        1.0
    } else {
        p.blend_ratios[rng.below(p.blend_ratios.len())]
    };
    for v in mask.iter_mut() {
        *v = (*v * ratio).clamp(0.0, 1.0);
    }

    let mut fake = vec![0f32; np * 3];
    for (i, &m) in mask.iter().enumerate() {
        for k in 0..3 {
            let j = i * 3 + k;
            fake[j] = m * source[j] + (1.0 - m) * target[j];
        }
    }
    let jpeg_quality = draw_jpeg(rng, p);
    Blend {
        source,
        target,
        mask,
        fake,
        source_transformed,
        jpeg_quality,
    }
}

/// Encode `rgb` (`[S, S, 3]` in [0, 1]) as JPEG at `quality` in memory and decode it back.
pub fn jpeg_roundtrip(rgb: &[f32], size: usize, quality: u8) -> Vec<f32> {
    let bytes: Vec<u8> = rgb
        .iter()
        .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect();
    let mut buf = Vec::new();
    let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, quality.clamp(1, 100));
    let ok = image::ImageEncoder::write_image(
        enc,
        &bytes,
        size as u32,
        size as u32,
        image::ExtendedColorType::Rgb8,
    )
    .is_ok();
    let decoded = ok
        .then(|| image::load_from_memory_with_format(&buf, image::ImageFormat::Jpeg).ok())
        .flatten();
    match decoded {
        Some(img) if img.width() as usize == size && img.height() as usize == size => img
            .to_rgb8()
            .into_raw()
            .into_iter()
            .map(|v| v as f32 / 255.0)
            .collect(),
        // Encoding an in-memory RGB buffer does not fail in practice; keep the input if it does.
        _ => rgb.to_vec(),
    }
}

/// The hard blending region `[S, S]` (0/1): an ellipse or the convex hull of random points
/// inside the central face area.
pub fn region_mask(rng: &mut Rng, size: usize, p: &SbiParams) -> Vec<f32> {
    let s = size as f32;
    let cx = (0.5 + rng.range(-1.0, 1.0) as f32 * p.face_jitter) * s;
    let cy = (0.5 + rng.range(-1.0, 1.0) as f32 * p.face_jitter) * s;
    let (r0, r1) = (p.face_radius.0 as f64, p.face_radius.1 as f64);
    let rx = rng.range(r0, r1) as f32 * s;
    let ry = rng.range(r0, r1) as f32 * s;
    let mut out = vec![0f32; size * size];
    if rng.uniform() < p.hull_prob as f64 {
        let n = 6 + rng.below(7);
        let pts: Vec<(f32, f32)> = (0..n)
            .map(|_| {
                let a = rng.range(0.0, 2.0 * std::f64::consts::PI) as f32;
                // Biased outwards so that the hull covers a fair part of the area.
                let r = rng.uniform().powf(0.3) as f32;
                (cx + r * rx * a.cos(), cy + r * ry * a.sin())
            })
            .collect();
        let hull = convex_hull(pts);
        if hull.len() >= 3 {
            for y in 0..size {
                for x in 0..size {
                    if inside_convex(&hull, x as f32 + 0.5, y as f32 + 0.5) {
                        out[y * size + x] = 1.0;
                    }
                }
            }
            return out;
        }
    }
    let a = rng.range(-0.26, 0.26) as f32; // about ±15°
    let (ca, sa) = (a.cos(), a.sin());
    for y in 0..size {
        for x in 0..size {
            let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
            let u = (dx * ca + dy * sa) / rx;
            let v = (-dx * sa + dy * ca) / ry;
            if u * u + v * v <= 1.0 {
                out[y * size + x] = 1.0;
            }
        }
    }
    out
}

/// Convex hull (Andrew's monotone chain), counter-clockwise in image coordinates.
fn convex_hull(mut pts: Vec<(f32, f32)>) -> Vec<(f32, f32)> {
    pts.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    pts.dedup();
    if pts.len() < 3 {
        return pts;
    }
    let cross = |o: (f32, f32), a: (f32, f32), b: (f32, f32)| {
        (a.0 - o.0) * (b.1 - o.1) - (a.1 - o.1) * (b.0 - o.0)
    };
    let mut hull: Vec<(f32, f32)> = Vec::with_capacity(pts.len() * 2);
    for pass in 0..2 {
        let start = hull.len();
        let iter: Box<dyn Iterator<Item = &(f32, f32)>> = if pass == 0 {
            Box::new(pts.iter())
        } else {
            Box::new(pts.iter().rev())
        };
        for &p in iter {
            while hull.len() >= start + 2
                && cross(hull[hull.len() - 2], hull[hull.len() - 1], p) <= 0.0
            {
                hull.pop();
            }
            hull.push(p);
        }
        hull.pop();
    }
    hull
}

fn inside_convex(hull: &[(f32, f32)], x: f32, y: f32) -> bool {
    let n = hull.len();
    (0..n).all(|i| {
        let (a, b) = (hull[i], hull[(i + 1) % n]);
        (b.0 - a.0) * (y - a.1) - (b.1 - a.1) * (x - a.0) >= 0.0
    })
}

struct Affine {
    tx: f32,
    ty: f32,
    scale: f32,
    c: f32,
}

impl Affine {
    /// Where output pixel centre `(x, y)` samples the input.
    fn inverse(&self, x: f32, y: f32) -> (f32, f32) {
        (
            (x - self.tx - self.c) / self.scale + self.c,
            (y - self.ty - self.c) / self.scale + self.c,
        )
    }
}

/// Bilinear sample weights at continuous pixel position `v` (pixel centres at `i + 0.5`),
/// clamped to the edge.
fn taps(v: f32, n: usize) -> (usize, usize, f32) {
    let t = (v - 0.5).clamp(0.0, (n - 1) as f32);
    let i0 = t.floor() as usize;
    let i1 = (i0 + 1).min(n - 1);
    (i0, i1, t - i0 as f32)
}

fn warp_rgb(img: &[f32], size: usize, a: &Affine) -> Vec<f32> {
    let mut out = vec![0f32; img.len()];
    for y in 0..size {
        for x in 0..size {
            let (sx, sy) = a.inverse(x as f32 + 0.5, y as f32 + 0.5);
            let (x0, x1, fx) = taps(sx, size);
            let (y0, y1, fy) = taps(sy, size);
            let o = (y * size + x) * 3;
            for k in 0..3 {
                let p = |yy: usize, xx: usize| img[(yy * size + xx) * 3 + k];
                let top = p(y0, x0) + (p(y0, x1) - p(y0, x0)) * fx;
                let bot = p(y1, x0) + (p(y1, x1) - p(y1, x0)) * fx;
                out[o + k] = top + (bot - top) * fy;
            }
        }
    }
    out
}

/// Warp a one-channel map: output `x` samples the map at `A⁻¹(x + d(x))`; outside is 0.
fn warp_map(map: &[f32], size: usize, a: &Affine, disp: Option<&(Vec<f32>, Vec<f32>)>) -> Vec<f32> {
    let mut out = vec![0f32; map.len()];
    let n = size as f32;
    for y in 0..size {
        for x in 0..size {
            let i = y * size + x;
            let (mut px, mut py) = (x as f32 + 0.5, y as f32 + 0.5);
            if let Some((dx, dy)) = disp {
                px += dx[i];
                py += dy[i];
            }
            let (sx, sy) = a.inverse(px, py);
            if sx < 0.0 || sy < 0.0 || sx > n || sy > n {
                continue;
            }
            let (x0, x1, fx) = taps(sx, size);
            let (y0, y1, fy) = taps(sy, size);
            let p = |yy: usize, xx: usize| map[yy * size + xx];
            let top = p(y0, x0) + (p(y0, x1) - p(y0, x0)) * fx;
            let bot = p(y1, x0) + (p(y1, x1) - p(y1, x0)) * fx;
            out[i] = top + (bot - top) * fy;
        }
    }
    out
}

/// A smooth random displacement field (dx, dy) in pixels: normal values of std `amp` on a
/// coarse lattice with spacing `scale` × side, bilinearly interpolated.
fn displacement(rng: &mut Rng, size: usize, amp: f32, scale: f32) -> (Vec<f32>, Vec<f32>) {
    let cells = ((1.0 / scale.max(1e-3)).ceil() as usize).clamp(1, size.max(1));
    let n = cells + 1;
    let field = |rng: &mut Rng| {
        let lat: Vec<f32> = (0..n * n).map(|_| rng.normal() as f32 * amp).collect();
        let mut out = vec![0f32; size * size];
        for y in 0..size {
            let v = (y as f32 + 0.5) / size as f32 * cells as f32;
            let y0 = (v.floor() as usize).min(cells - 1);
            let fy = v - y0 as f32;
            for x in 0..size {
                let u = (x as f32 + 0.5) / size as f32 * cells as f32;
                let x0 = (u.floor() as usize).min(cells - 1);
                let fx = u - x0 as f32;
                let l = |yy: usize, xx: usize| lat[yy * n + xx];
                let top = l(y0, x0) + (l(y0, x0 + 1) - l(y0, x0)) * fx;
                let bot = l(y0 + 1, x0) + (l(y0 + 1, x0 + 1) - l(y0 + 1, x0)) * fx;
                out[y * size + x] = top + (bot - top) * fy;
            }
        }
        out
    };
    let dx = field(rng);
    let dy = field(rng);
    (dx, dy)
}

/// Divide by the maximum (when positive); whether it was.
fn normalise_max(m: &mut [f32]) -> bool {
    let mx = m.iter().cloned().fold(0.0f32, f32::max);
    if mx > 0.0 {
        let inv = 1.0 / mx;
        m.iter_mut().for_each(|v| *v = (*v * inv).min(1.0));
        true
    } else {
        false
    }
}

/// Separable Gaussian blur of a `[h, w]` map with standard deviation `sigma` and kernel
/// half-width `radius` (the kernel renormalised to sum 1), edges clamped.
pub fn gaussian_blur(m: &mut [f32], w: usize, h: usize, sigma: f32, radius: usize) {
    if radius == 0 || sigma <= 0.0 {
        return;
    }
    let ri = radius as isize;
    let mut k: Vec<f32> = (-ri..=ri)
        .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f32 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= sum);
    let r = radius;
    let nonzero: Vec<bool> = m
        .chunks_exact(w)
        .map(|row| row.iter().any(|&v| v != 0.0))
        .collect();
    let mut tmp = vec![0f32; m.len()];
    let mut padded = vec![0f32; w + 2 * r];
    for y in 0..h {
        if !nonzero[y] {
            continue;
        }
        let row = &m[y * w..(y + 1) * w];
        padded[r..r + w].copy_from_slice(row);
        padded[..r].iter_mut().for_each(|v| *v = row[0]);
        padded[r + w..].iter_mut().for_each(|v| *v = row[w - 1]);
        let out = &mut tmp[y * w..(y + 1) * w];
        for (t, kv) in k.iter().enumerate() {
            out.iter_mut()
                .zip(&padded[t..t + w])
                .for_each(|(o, v)| *o += kv * v);
        }
    }
    m.iter_mut().for_each(|v| *v = 0.0);
    let lh = h as isize - 1;
    for y in 0..h as isize {
        let out = &mut m[y as usize * w..(y as usize + 1) * w];
        for (t, kv) in k.iter().enumerate() {
            let sy = (y + t as isize - r as isize).clamp(0, lh) as usize;
            if !nonzero[sy] {
                continue;
            }
            let src = &tmp[sy * w..(sy + 1) * w];
            out.iter_mut().zip(src).for_each(|(o, v)| *o += kv * v);
        }
    }
}

/// Colour, brightness/contrast and one of down-up-sampling or sharpening, in place.
fn quality_transform(img: &mut [f32], size: usize, rng: &mut Rng, p: &SbiParams) {
    let mut shift = [0f32; 3];
    if rng.uniform() < p.rgb_shift_prob as f64 {
        for s in shift.iter_mut() {
            *s = rng.range(-1.0, 1.0) as f32 * p.rgb_shift;
        }
    }
    // Hue rotation about the grey axis (Rodrigues), saturation as a chroma scale.
    let th = (rng.range(-1.0, 1.0) as f32 * p.hue_deg).to_radians();
    let sat = 1.0 + rng.range(-1.0, 1.0) as f32 * p.saturation;
    let (c, s) = (th.cos(), th.sin());
    let k = 1.0 / 3.0f32;
    let q = 1.0 / 3.0f32.sqrt();
    // R = c·I + s·[u]× + (1 − c)·u uᵀ with u = (1,1,1)/√3; then chroma scaled by `sat`:
    // M = P + sat·(R − P) with P = u uᵀ (R P = P).
    let rot = [
        [
            c + (1.0 - c) * k,
            (1.0 - c) * k - s * q,
            (1.0 - c) * k + s * q,
        ],
        [
            (1.0 - c) * k + s * q,
            c + (1.0 - c) * k,
            (1.0 - c) * k - s * q,
        ],
        [
            (1.0 - c) * k - s * q,
            (1.0 - c) * k + s * q,
            c + (1.0 - c) * k,
        ],
    ];
    let mut m = [[0f32; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            m[i][j] = k + sat * (rot[i][j] - k);
        }
    }
    let bright = rng.range(-1.0, 1.0) as f32 * p.brightness;
    let gain = 1.0 + rng.range(-1.0, 1.0) as f32 * p.contrast;
    for px in img.chunks_exact_mut(3) {
        let v = [px[0], px[1], px[2]];
        for i in 0..3 {
            let x = m[i][0] * v[0] + m[i][1] * v[1] + m[i][2] * v[2] + shift[i];
            px[i] = (x * gain + bright).clamp(0.0, 1.0);
        }
    }
    if rng.uniform() < 0.5 && !p.downscale_factors.is_empty() {
        let f = p.downscale_factors[rng.below(p.downscale_factors.len())].max(1) as usize;
        down_up(img, size, f);
    } else {
        let a = rng.range(p.sharpen_alpha.0 as f64, p.sharpen_alpha.1 as f64) as f32;
        let l = rng.range(p.sharpen_lightness.0 as f64, p.sharpen_lightness.1 as f64) as f32;
        sharpen(img, size, a, l);
    }
}

/// Nearest down-sampling by `f`, then bilinear (half-pixel centres) up-sampling back.
fn down_up(img: &mut [f32], size: usize, f: usize) {
    let small = (size / f).max(1);
    let mut lo = vec![0f32; small * small * 3];
    let src = |d: usize| ((d as f32 * size as f32 / small as f32) as usize).min(size - 1);
    for y in 0..small {
        for x in 0..small {
            let (sy, sx) = (src(y), src(x));
            for k in 0..3 {
                lo[(y * small + x) * 3 + k] = img[(sy * size + sx) * 3 + k];
            }
        }
    }
    let ratio = small as f32 / size as f32;
    let tap = |d: usize| {
        let v = ((d as f32 + 0.5) * ratio - 0.5).max(0.0);
        let i0 = (v.floor() as usize).min(small - 1);
        (i0, (i0 + 1).min(small - 1), v - i0 as f32)
    };
    for y in 0..size {
        let (y0, y1, fy) = tap(y);
        for x in 0..size {
            let (x0, x1, fx) = tap(x);
            for k in 0..3 {
                let p = |yy: usize, xx: usize| lo[(yy * small + xx) * 3 + k];
                let top = p(y0, x0) + (p(y0, x1) - p(y0, x0)) * fx;
                let bot = p(y1, x0) + (p(y1, x1) - p(y1, x0)) * fx;
                img[(y * size + x) * 3 + k] = top + (bot - top) * fy;
            }
        }
    }
}

/// albumentations' `Sharpen`: kernel `(1 − α)·δ + α·[[-1,-1,-1],[-1,8+L,-1],[-1,-1,-1]]`,
/// edges clamped, result clamped to [0, 1].
fn sharpen(img: &mut [f32], size: usize, alpha: f32, lightness: f32) {
    // 3×3 box sums through an edge-clamped padded copy: ring = box − centre.
    let p = size + 2;
    let at = |i: usize| i.saturating_sub(1).min(size - 1);
    let mut pad = vec![0f32; p * p * 3];
    for y in 0..p {
        for x in 0..p {
            let s = (at(y) * size + at(x)) * 3;
            pad[(y * p + x) * 3..(y * p + x) * 3 + 3].copy_from_slice(&img[s..s + 3]);
        }
    }
    // Horizontal 3-sums (per padded row, valid columns), then vertical.
    let mut hs = vec![0f32; p * size * 3];
    for y in 0..p {
        let src = &pad[y * p * 3..(y + 1) * p * 3];
        let dst = &mut hs[y * size * 3..(y + 1) * size * 3];
        for (i, d) in dst.iter_mut().enumerate() {
            *d = src[i] + src[i + 3] + src[i + 6];
        }
    }
    let centre = (1.0 - alpha) + alpha * (8.0 + lightness);
    let row = size * 3;
    for y in 0..size {
        let (a, b, c) = (&hs[y * row..], &hs[(y + 1) * row..], &hs[(y + 2) * row..]);
        let out = &mut img[y * row..(y + 1) * row];
        for i in 0..row {
            let v = out[i];
            let ring = a[i] + b[i] + c[i] - v;
            out[i] = (centre * v - alpha * ring).clamp(0.0, 1.0);
        }
    }
}
