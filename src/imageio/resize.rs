//! Resizing a decoded image of any colour type to the network's `S × S` RGB in f32 without an
//! f32 copy of the whole image: a 24-megapixel photo would need 288 MB for it (12 bytes a
//! pixel), per decoding thread, and an image at the decode limits about 2 GB.
//!
//! The result is bit for bit that of `image::imageops::resize(&img.to_rgb32f(), S, S,
//! FilterType::Triangle)` (image 0.25; tested): the same taps and weights, a vertical pass then
//! a horizontal one, every sum in the same order. Only the source is read differently: in
//! strips of rows, each converted to f32 RGB by the image crate on its own.

use image::DynamicImage;

/// Rows converted to f32 at a time: the copy holds `STRIP_ROWS × width` pixels.
const STRIP_ROWS: u32 = 64;

/// The triangle (bilinear, antialiased when shrinking) filter's taps for output position `o`
/// of `n_out` over `n_in` inputs, as the image crate computes them: the first input and the
/// normalised weights of the inputs from there on.
fn triangle_taps(o: u32, n_in: u32, n_out: u32) -> (u32, Vec<f32>) {
    let ratio = n_in as f32 / n_out as f32;
    // Shrinking widens the filter by the ratio; enlarging keeps it one input wide.
    let scale = if ratio < 1.0 { 1.0 } else { ratio };
    let centre = (o as f32 + 0.5) * ratio;
    let left = ((centre - scale).floor() as i64).clamp(0, n_in as i64 - 1);
    let right = ((centre + scale).ceil() as i64).clamp(left + 1, n_in as i64);
    // Pixel i's centre is at i + 0.5.
    let centre = centre - 0.5;
    let mut weights: Vec<f32> = (left..right)
        .map(|i| {
            let x = ((i as f32 - centre) / scale).abs();
            if x < 1.0 {
                1.0 - x
            } else {
                0.0
            }
        })
        .collect();
    let mut sum = 0.0f32;
    for w in &weights {
        sum += w;
    }
    for w in &mut weights {
        *w /= sum;
    }
    (left as u32, weights)
}

/// `img` → RGB `[size, size, 3]` in [0, 1], resized with the triangle filter.
pub fn rgb_triangle_resized(img: &DynamicImage, size: usize) -> Vec<f32> {
    let (w_in, h_in) = (img.width(), img.height());
    let s = size as u32;
    if (w_in, h_in) == (s, s) {
        return img.to_rgb32f().into_raw();
    }
    let row_len = w_in as usize * 3;
    // Vertical pass: `mid[oy]` = Σ_y weight(oy, y) · row y, y ascending, over strips of rows.
    let rows_taps: Vec<(u32, Vec<f32>)> = (0..s).map(|o| triangle_taps(o, h_in, s)).collect();
    let mut mid = vec![0f32; size * row_len];
    for y0 in (0..h_in).step_by(STRIP_ROWS as usize) {
        let rows = STRIP_ROWS.min(h_in - y0);
        let strip = img.crop_imm(0, y0, w_in, rows).to_rgb32f();
        let strip = strip.as_raw();
        for ((first, weights), out) in rows_taps.iter().zip(mid.chunks_mut(row_len)) {
            let (a, b) = (
                (*first).max(y0),
                (first + weights.len() as u32).min(y0 + rows),
            );
            for y in a..b {
                let w = weights[(y - first) as usize];
                let src = &strip[(y - y0) as usize * row_len..][..row_len];
                for (o, v) in out.iter_mut().zip(src) {
                    *o += v * w;
                }
            }
        }
    }
    // Horizontal pass, clamped to [0, 1] as the image crate does for f32 pixels.
    let mut out = vec![0f32; size * size * 3];
    for ox in 0..size {
        let (first, weights) = triangle_taps(ox as u32, w_in, s);
        for (mid_row, out_row) in mid.chunks(row_len).zip(out.chunks_mut(size * 3)) {
            let mut t = [0f32; 3];
            for (i, w) in weights.iter().enumerate() {
                let p = &mid_row[(first as usize + i) * 3..][..3];
                for c in 0..3 {
                    t[c] += p[c] * w;
                }
            }
            for c in 0..3 {
                out_row[ox * 3 + c] = t[c].clamp(0.0, 1.0);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::rgb_triangle_resized;
    use image::{DynamicImage, ImageBuffer};

    /// Deterministic non-constant sample values.
    fn noise(k: u32) -> u32 {
        let mut x = k.wrapping_mul(0x9E37_79B9) ^ 0x5bd1_e995;
        x ^= x >> 15;
        x = x.wrapping_mul(0x2c1b_3c6d);
        x ^ (x >> 12)
    }

    fn images(w: u32, h: u32) -> Vec<DynamicImage> {
        let v8 = |x: u32, y: u32, c: u32| (noise(x * 7 + y * 131 + c * 100_003) % 256) as u8;
        let v16 = |x: u32, y: u32, c: u32| (noise(x * 7 + y * 131 + c * 100_003) % 65536) as u16;
        vec![
            DynamicImage::ImageRgb8(ImageBuffer::from_fn(w, h, |x, y| {
                image::Rgb([v8(x, y, 0), v8(x, y, 1), v8(x, y, 2)])
            })),
            DynamicImage::ImageLumaA8(ImageBuffer::from_fn(w, h, |x, y| {
                image::LumaA([v8(x, y, 0), v8(x, y, 1)])
            })),
            DynamicImage::ImageRgba16(ImageBuffer::from_fn(w, h, |x, y| {
                image::Rgba([v16(x, y, 0), v16(x, y, 1), v16(x, y, 2), v16(x, y, 3)])
            })),
            DynamicImage::ImageLuma16(ImageBuffer::from_fn(w, h, |x, y| {
                image::Luma([v16(x, y, 0)])
            })),
            DynamicImage::ImageRgb32F(ImageBuffer::from_fn(w, h, |x, y| {
                image::Rgb([0, 1, 2].map(|c| v16(x, y, c) as f32 / 65535.0))
            })),
        ]
    }

    /// Bit for bit the image crate's resize of the whole image converted to f32, shrinking and
    /// enlarging, across strip boundaries, for every colour type.
    #[test]
    fn equals_the_image_crates_resize_of_the_f32_image() {
        for (w, h, s) in [
            (97, 61, 64),
            (23, 17, 64),
            (200, 150, 64),
            (10, 300, 32),
            (300, 10, 32),
            (64, 129, 64),
            (40, 40, 40),
        ] {
            for img in images(w, h) {
                let want = if (w, h) == (s, s) {
                    img.to_rgb32f().into_raw()
                } else {
                    image::imageops::resize(
                        &img.to_rgb32f(),
                        s,
                        s,
                        image::imageops::FilterType::Triangle,
                    )
                    .into_raw()
                };
                let got = rgb_triangle_resized(&img, s as usize);
                assert_eq!(got.len(), want.len());
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{w}×{h} → {s}, {:?}", img.color());
            }
        }
    }
}
