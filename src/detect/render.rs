//! Pictures of the manipulation mask at an image's original size: the mask as an 8-bit grey
//! PNG, and a heat-map of it blended over the image. Both are made row by row in 8 bits, so a
//! large original costs one or three bytes per pixel, not a float image.

use std::io::Cursor;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// Source coordinates of bilinear resampling along one axis (SPEC §6, `align_corners=False`):
/// for each output index, the two input indices and the weight of the second.
fn axis_taps(inp: usize, out: usize) -> Vec<(usize, usize, f32)> {
    let scale = inp as f32 / out as f32;
    (0..out)
        .map(|d| {
            let src = ((d as f32 + 0.5) * scale - 0.5).max(0.0);
            let x0 = (src.floor() as usize).min(inp - 1);
            let x1 = (x0 + 1).min(inp - 1);
            (x0, x1, src - x0 as f32)
        })
        .collect()
}

/// Upsample a `[side, side]` map in [0, 1] to `width × height` (bilinear, SPEC §6) as 8-bit
/// values, row-major.
pub fn mask_to_u8(map: &[f32], side: usize, width: u32, height: u32) -> Vec<u8> {
    assert_eq!(map.len(), side * side, "mask is not side × side");
    let (w, h) = (width as usize, height as usize);
    let xs = axis_taps(side, w);
    let ys = axis_taps(side, h);
    let mut out = vec![0u8; w * h];
    let mut row = vec![0f32; side];
    for (y, &(y0, y1, fy)) in ys.iter().enumerate() {
        for (x, r) in row.iter_mut().enumerate() {
            *r = map[y0 * side + x] * (1.0 - fy) + map[y1 * side + x] * fy;
        }
        for (o, &(x0, x1, fx)) in out[y * w..(y + 1) * w].iter_mut().zip(&xs) {
            let v = row[x0] * (1.0 - fx) + row[x1] * fx;
            *o = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
        }
    }
    out
}

/// The heat-map colour of an 8-bit mask value: dark blue (0) → cyan → yellow → red (255).
pub fn heat_color(v: u8) -> [u8; 3] {
    let t = v as f32 / 255.0;
    let ramp = |a: f32| (a.clamp(0.0, 1.0) * 255.0).round() as u8;
    [
        ramp(1.5 - (4.0 * t - 3.0).abs()),
        ramp(1.5 - (4.0 * t - 2.0).abs()),
        ramp(1.5 - (4.0 * t - 1.0).abs()),
    ]
}

/// Opacity of the heat-map over the image.
pub const OVERLAY_ALPHA: f32 = 0.5;

/// Blend the heat-map of `mask` (8-bit, one value per pixel) over an RGB8 image in place.
pub fn blend_heatmap(rgb: &mut [u8], mask: &[u8]) {
    assert_eq!(rgb.len(), mask.len() * 3, "image and mask sizes differ");
    let lut: Vec<[u8; 3]> = (0..=255u8).map(heat_color).collect();
    for (px, &m) in rgb.chunks_exact_mut(3).zip(mask) {
        let c = lut[m as usize];
        for k in 0..3 {
            let v = px[k] as f32 * (1.0 - OVERLAY_ALPHA) + c[k] as f32 * OVERLAY_ALPHA;
            px[k] = v.round() as u8;
        }
    }
}

fn encode_png(path: &Path, img: Option<image::DynamicImage>) -> Result<Vec<u8>> {
    let img = img.ok_or_else(|| Error::file(path, "image buffer has the wrong size"))?;
    let mut png = Vec::new();
    img.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| Error::file(path, e))?;
    Ok(png)
}

/// Write through a uniquely named temporary file in the same folder and a rename (several
/// threads may write into one folder at once).
fn write_replacing(path: &Path, bytes: &[u8]) -> Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| Error::file(path, "not a file path"))?;
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        std::fs::remove_file(&tmp).ok();
        Error::io(path, e)
    })
}

/// Save an 8-bit grey image as PNG.
pub fn save_gray(path: &Path, data: Vec<u8>, w: u32, h: u32) -> Result<()> {
    let img = image::GrayImage::from_raw(w, h, data).map(image::DynamicImage::ImageLuma8);
    let png = encode_png(path, img)?;
    write_replacing(path, &png)
}

/// Save an RGB8 image as PNG.
pub fn save_rgb(path: &Path, data: Vec<u8>, w: u32, h: u32) -> Result<()> {
    let img = image::RgbImage::from_raw(w, h, data).map(image::DynamicImage::ImageRgb8);
    let png = encode_png(path, img)?;
    write_replacing(path, &png)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsampling_keeps_constants_and_corners() {
        let m = vec![0.25f32; 4 * 4];
        let u = mask_to_u8(&m, 4, 37, 11);
        assert_eq!(u.len(), 37 * 11);
        assert!(u.iter().all(|&v| v == 64));
        // A single bright corner stays brightest in that corner.
        let mut m = vec![0f32; 4];
        m[0] = 1.0;
        let u = mask_to_u8(&m, 2, 8, 8);
        assert_eq!(u[0], 255);
        assert_eq!(u[63], 0);
    }

    #[test]
    fn heat_colours_run_blue_to_red() {
        assert!(heat_color(0)[2] > 100 && heat_color(0)[0] == 0);
        assert!(heat_color(255)[0] > 100 && heat_color(255)[2] == 0);
    }
}
