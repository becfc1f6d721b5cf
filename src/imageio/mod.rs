//! Image files in and out, for untrusted inputs: decoding under dimension and allocation limits
//! (a decompression bomb or a 100k×100k header is an error, not an out-of-memory abort), any
//! colour type or bit depth converted to RGB, resizing to the network's input side, ImageNet
//! normalisation, 8-bit PNG output of masks, and the search of folders for image files.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader, Limits};

use crate::error::{Error, Result};

mod resize;
mod walk;

pub use walk::{image_files, is_image_path, ImageTree, IMAGE_EXTENSIONS};

/// ImageNet normalisation (SPEC §1).
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Bounds on what one decode may allocate.
#[derive(Clone, Copy, Debug)]
pub struct DecodeLimits {
    pub max_width: u32,
    pub max_height: u32,
    /// The most bytes a decoded image may take, and the largest file [`decode_file`] reads.
    pub max_alloc_bytes: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_width: 16384,
            max_height: 16384,
            max_alloc_bytes: 512 << 20,
        }
    }
}

impl DecodeLimits {
    fn to_image(self) -> Limits {
        let mut l = Limits::default();
        l.max_image_width = Some(self.max_width);
        l.max_image_height = Some(self.max_height);
        l.max_alloc = Some(self.max_alloc_bytes);
        l
    }
}

/// Decode an image file (format guessed from its content) under `limits`.
pub fn decode_file(path: &Path, limits: DecodeLimits) -> Result<DynamicImage> {
    let bytes = read_image_file(path, limits.max_alloc_bytes)?;
    decode_bytes(&bytes, limits).map_err(|msg| Error::file(path, msg))
}

/// The bytes of an untrusted image file: a regular file of at most `max` bytes. A device, a
/// pipe or a socket (a manifest line `/dev/zero`, a FIFO that blocks) is refused before it is
/// opened, and a file larger than what its decoded pixels may take is refused before it is
/// read, so that neither hangs the run nor fills its memory (several files are read at once).
fn read_image_file(path: &Path, max: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::file(path, "not a regular file"));
    }
    let too_large = |len: u64| {
        Error::file(
            path,
            format!("the file has {len} bytes, over the limit of {max} for an image"),
        )
    };
    if meta.len() > max {
        return Err(too_large(meta.len()));
    }
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // A file that grows while it is read stops at the limit.
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > max {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Decode image bytes under `limits`; the error is a message. A decoder that panics on a
/// hostile file fails that file, not the program (detect, training and eval all read here).
pub fn decode_bytes(
    bytes: &[u8],
    limits: DecodeLimits,
) -> std::result::Result<DynamicImage, String> {
    std::panic::catch_unwind(|| decode_unguarded(bytes, limits))
        .unwrap_or_else(|_| Err("the decoder failed on this file (panic)".into()))
}

fn decode_unguarded(
    bytes: &[u8],
    limits: DecodeLimits,
) -> std::result::Result<DynamicImage, String> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("cannot read image: {}", e.to_string().trim_end()))?;
    if reader.format().is_none() {
        return Err("not an image (unknown format)".into());
    }
    reader.limits(limits.to_image());
    // Some decoders end their messages with a newline; a record holds one line.
    let failed =
        |e: image::ImageError| format!("cannot decode image: {}", e.to_string().trim_end());
    let mut decoder = reader.into_decoder().map_err(failed)?;
    // `into_decoder` checks the dimensions against the limits; the buffer is checked here, as
    // `ImageReader::decode` would.
    if decoder.total_bytes() > limits.max_alloc_bytes {
        return Err(format!(
            "cannot decode image: {} bytes of pixels exceed the limit of {}",
            decoder.total_bytes(),
            limits.max_alloc_bytes
        ));
    }
    // The EXIF orientation, as a photo viewer shows the image (and as OpenCV's imread reads
    // it): a phone photo taken upright reaches the network upright, and masks and overlays
    // match what the user sees. A damaged EXIF block only loses the orientation.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(failed)?;
    img.apply_orientation(orientation);
    if img.width() == 0 || img.height() == 0 {
        return Err("empty image".into());
    }
    Ok(img)
}

/// Any image → RGB `[size, size, 3]` in [0, 1] (grey is replicated, alpha dropped, 16-bit and
/// float images scaled), resized with a triangle (bilinear, antialiased) filter, reading the
/// image in strips so that no f32 copy of a large one is made (`resize.rs`).
pub fn rgb_resized(img: &DynamicImage, size: usize) -> Vec<f32> {
    resize::rgb_triangle_resized(img, size)
        .into_iter()
        .map(|v| v.clamp(0.0, 1.0))
        .collect()
}

/// RGB `[S, S, 3]` in [0, 1] → the network's input `[3, S, S]`, ImageNet-normalised.
pub fn normalise_chw(rgb: &[f32], size: usize) -> Vec<f32> {
    let np = size * size;
    assert_eq!(rgb.len(), np * 3);
    let mut out = vec![0f32; 3 * np];
    for p in 0..np {
        for c in 0..3 {
            out[c * np + p] = (rgb[p * 3 + c] - MEAN[c]) / STD[c];
        }
    }
    out
}

/// Decoded image → network input `[3, S, S]`.
pub fn preprocess(img: &DynamicImage, size: usize) -> Vec<f32> {
    normalise_chw(&rgb_resized(img, size), size)
}

/// A mask image (any type; its luminance) → `[S, S]` in [0, 1].
pub fn mask_resized(img: &DynamicImage, size: usize) -> Vec<f32> {
    let l = DynamicImage::ImageRgb32F(img.to_rgb32f()).to_luma32f();
    let l = if l.width() as usize == size && l.height() as usize == size {
        l
    } else {
        image::imageops::resize(
            &l,
            size as u32,
            size as u32,
            image::imageops::FilterType::Triangle,
        )
    };
    l.into_raw()
        .into_iter()
        .map(|v| v.clamp(0.0, 1.0))
        .collect()
}

/// Resize a single-channel map `[h, w]` (e.g. the predicted mask) to `width × height`.
pub fn resize_map(map: &[f32], w: usize, h: usize, width: u32, height: u32) -> Vec<f32> {
    let img = image::ImageBuffer::<image::Luma<f32>, Vec<f32>>::from_raw(
        w as u32,
        h as u32,
        map.to_vec(),
    )
    .expect("map size");
    image::imageops::resize(&img, width, height, image::imageops::FilterType::Triangle).into_raw()
}

/// Write a `[h, w]` map in [0, 1] as an 8-bit grey PNG (atomically).
pub fn save_gray_png(path: &Path, map: &[f32], w: usize, h: usize) -> Result<()> {
    let bytes: Vec<u8> = map
        .iter()
        .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect();
    let img = image::GrayImage::from_raw(w as u32, h as u32, bytes).expect("map size");
    let mut png = Vec::new();
    img.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| Error::file(path, e))?;
    crate::io::tensors::write_atomic(path, &png)
}

/// Write an RGB `[h, w, 3]` u8 image as PNG (atomically).
pub fn save_rgb_png(path: &Path, rgb: Vec<u8>, w: usize, h: usize) -> Result<()> {
    let img = image::RgbImage::from_raw(w as u32, h as u32, rgb).expect("image size");
    let mut png = Vec::new();
    img.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| Error::file(path, e))?;
    crate::io::tensors::write_atomic(path, &png)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::ImageEncoder;

    #[test]
    fn only_regular_files_within_the_limit_are_read() {
        let dir = std::env::temp_dir().join(format!("prrnet-imageio-read-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("photo.jpg");
        std::fs::write(&path, jpeg(None)).unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        let limits = |max_alloc_bytes| DecodeLimits {
            max_alloc_bytes,
            ..DecodeLimits::default()
        };
        assert_eq!(
            decode_file(&path, limits(len.max(2400))).unwrap().width(),
            40
        );
        // Refused for its size before its pixels (40×20×3 bytes) are looked at.
        let e = decode_file(&path, limits(len - 1)).unwrap_err().to_string();
        assert!(
            e.contains(&format!("has {len} bytes, over the limit of {}", len - 1)),
            "{e}"
        );
        // A device (which reads forever), a named pipe (whose opening blocks until a writer
        // comes) and a folder are not image files.
        let fifo = dir.join("pipe.jpg");
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        }
        for other in [Path::new("/dev/zero"), &fifo, &dir] {
            if other.exists() {
                let e = decode_file(other, DecodeLimits::default())
                    .unwrap_err()
                    .to_string();
                assert!(e.contains("not a regular file"), "{e}");
            }
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    /// A 40×20 JPEG, left half red and right half blue, with an EXIF orientation tag if given.
    fn jpeg(orientation: Option<u16>) -> Vec<u8> {
        let img = image::RgbImage::from_fn(40, 20, |x, _| {
            if x < 20 {
                image::Rgb([250, 0, 0])
            } else {
                image::Rgb([0, 0, 250])
            }
        });
        let mut out = Vec::new();
        let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95);
        if let Some(o) = orientation {
            // A little-endian TIFF header and one IFD entry: tag 0x0112 (orientation), SHORT.
            let mut exif = b"II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0".to_vec();
            exif.extend_from_slice(&o.to_le_bytes());
            exif.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
            enc.set_exif_metadata(exif).unwrap();
        }
        enc.write_image(img.as_raw(), 40, 20, image::ExtendedColorType::Rgb8)
            .unwrap();
        out
    }

    #[test]
    fn exif_orientation_is_applied() {
        let plain = decode_bytes(&jpeg(None), DecodeLimits::default()).unwrap();
        assert_eq!((plain.width(), plain.height()), (40, 20));
        // 6: the stored image is shown turned 90° clockwise, so its left half ends on top.
        let turned = decode_bytes(&jpeg(Some(6)), DecodeLimits::default())
            .unwrap()
            .to_rgb8();
        assert_eq!(turned.dimensions(), (20, 40));
        let (top, bottom) = (turned.get_pixel(10, 5), turned.get_pixel(10, 35));
        assert!(top[0] > 200 && top[2] < 50, "top {top:?}");
        assert!(bottom[2] > 200 && bottom[0] < 50, "bottom {bottom:?}");
    }

    #[test]
    fn pixel_buffer_limit_still_holds() {
        let limits = DecodeLimits {
            max_alloc_bytes: 40 * 20 * 3 - 1,
            ..DecodeLimits::default()
        };
        let e = decode_bytes(&jpeg(Some(6)), limits).unwrap_err();
        assert!(e.contains("exceed the limit"), "{e}");
        let limits = DecodeLimits {
            max_width: 39,
            ..DecodeLimits::default()
        };
        assert!(decode_bytes(&jpeg(None), limits).is_err());
    }
}
