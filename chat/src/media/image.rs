//! What an uploaded image gives its object: dimensions, a placeholder
//! (ThumbHash) and thumbnails, made once when the upload finishes.
//!
//! Decoding untrusted images is bounded before any pixel is decoded: the
//! header's dimensions must be at most [`MAX_SIDE`] on each side and
//! [`MAX_PIXELS`] in all (a PNG that claims 100 000 × 100 000 is refused
//! from its first 33 bytes), and the decoder's allocations are capped at
//! [`MAX_ALLOC`]. Those bound the time too: decoding is linear in pixels
//! (≈ 1 s for the largest allowed image on one core). Only JPEG, PNG,
//! WebP and GIF (its first frame) are decoded; other files get no image
//! information, and that is not an error.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};
use serde::{Deserialize, Serialize};

/// Longest side decoded (pixels).
pub const MAX_SIDE: u32 = 16_384;
/// Most pixels decoded (50 megapixels: a phone camera's largest photos).
pub const MAX_PIXELS: u64 = 50_000_000;
/// Most bytes the decoder may allocate.
pub const MAX_ALLOC: u64 = 512 << 20;
/// Longest file decoded for thumbnails (bytes); larger images are stored
/// without them.
pub const MAX_IMAGE_FILE: u64 = 64 << 20;
/// The thumbnail sizes (longest side, pixels), made when the image is
/// larger.
pub const THUMB_SIZES: [u16; 3] = [96, 320, 800];
/// Most bytes of thumbnails per image: they ride in the object's Raft
/// entry, which stays under a chunk's size. A larger one is not kept
/// (nor the larger sizes after it).
pub const MAX_THUMB_BYTES: usize = 768 << 10;
/// JPEG quality of opaque thumbnails.
const JPEG_QUALITY: u8 = 80;

/// Whether `mime` is a type whose thumbnails are made.
pub fn is_thumbnailed(mime: &str) -> bool {
    matches!(
        mime,
        "image/jpeg" | "image/png" | "image/webp" | "image/gif"
    )
}

/// An image's description, kept in its object record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// Width as shown (after the EXIF orientation), pixels.
    pub width: u32,
    /// Height as shown, pixels.
    pub height: u32,
    /// ThumbHash of the image (≈ 25 bytes): a client draws a blurred
    /// preview from it before any thumbnail arrives.
    #[serde(with = "serde_bytes")]
    pub placeholder: Vec<u8>,
    /// The thumbnails stored, smallest first.
    pub thumbs: Vec<ThumbInfo>,
}

/// One stored thumbnail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThumbInfo {
    /// The size asked for (longest side at most this), pixels.
    pub size: u16,
    /// Its width, pixels.
    pub width: u16,
    /// Its height, pixels.
    pub height: u16,
    /// `image/jpeg`, or `image/png` where the image has transparency.
    pub mime: String,
}

/// A thumbnail made: its description and its encoded bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thumb {
    /// What the object record says of it.
    pub info: ThumbInfo,
    /// The encoded image.
    pub bytes: Vec<u8>,
}

/// Why an image was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// Its dimensions pass the limits (a decompression bomb, or just too
    /// large).
    #[error("the image is {width}×{height} pixels; at most {MAX_SIDE} a side and {MAX_PIXELS} pixels are accepted")]
    TooLarge {
        /// Claimed width.
        width: u32,
        /// Claimed height.
        height: u32,
    },
    /// It does not decode as the type it claims.
    #[error("the file is not a valid {mime} image: {reason}")]
    Malformed {
        /// The declared type.
        mime: String,
        /// What the decoder said.
        reason: String,
    },
}

fn format_of(mime: &str) -> Option<ImageFormat> {
    Some(match mime {
        "image/jpeg" => ImageFormat::Jpeg,
        "image/png" => ImageFormat::Png,
        "image/webp" => ImageFormat::WebP,
        "image/gif" => ImageFormat::Gif,
        _ => return None,
    })
}

fn limits() -> Limits {
    let mut l = Limits::default();
    l.max_image_width = Some(MAX_SIDE);
    l.max_image_height = Some(MAX_SIDE);
    l.max_alloc = Some(MAX_ALLOC);
    l
}

/// Decodes an image of type `mime` (bounded; see the module docs) and
/// makes its placeholder and thumbnails. `Ok(None)` for a type that is
/// not thumbnailed.
pub fn describe(mime: &str, bytes: &[u8]) -> Result<Option<(ImageInfo, Vec<Thumb>)>, ImageError> {
    let Some(format) = format_of(mime) else {
        return Ok(None);
    };
    let malformed = |e: &dyn std::fmt::Display| ImageError::Malformed {
        mime: mime.to_owned(),
        reason: e.to_string(),
    };
    // The header alone first: refuse a bomb before allocating for it.
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.no_limits();
    let (width, height) = reader.into_dimensions().map_err(|e| malformed(&e))?;
    if width > MAX_SIDE || height > MAX_SIDE || u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(ImageError::TooLarge { width, height });
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(limits());
    let mut decoder = reader.into_decoder().map_err(|e| malformed(&e))?;
    let orientation = decoder.orientation().map_err(|e| malformed(&e))?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| malformed(&e))?;
    img.apply_orientation(orientation);
    let (width, height) = (img.width(), img.height());
    let alpha = img.color().has_alpha();

    // ThumbHash takes at most 100×100 RGBA.
    let small = img.thumbnail(100, 100).to_rgba8();
    let placeholder = thumbhash::rgba_to_thumb_hash(
        small.width() as usize,
        small.height() as usize,
        small.as_raw(),
    );

    let mut thumbs = Vec::new();
    for size in THUMB_SIZES {
        if width.max(height) <= u32::from(size) {
            break;
        }
        let t = img.thumbnail(u32::from(size), u32::from(size));
        let mut out = Cursor::new(Vec::new());
        let mime = if alpha {
            t.write_to(&mut out, ImageFormat::Png)
                .map_err(|e| malformed(&e))?;
            "image/png"
        } else {
            let rgb = t.to_rgb8();
            let mut enc =
                image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY);
            enc.encode_image(&rgb).map_err(|e| malformed(&e))?;
            "image/jpeg"
        };
        let total: usize = thumbs.iter().map(|t: &Thumb| t.bytes.len()).sum();
        if total + out.get_ref().len() > MAX_THUMB_BYTES {
            break;
        }
        thumbs.push(Thumb {
            info: ThumbInfo {
                size,
                width: t.width() as u16,
                height: t.height() as u16,
                mime: mime.to_owned(),
            },
            bytes: out.into_inner(),
        });
    }
    let info = ImageInfo {
        width,
        height,
        placeholder,
        thumbs: thumbs.iter().map(|t| t.info.clone()).collect(),
    };
    Ok(Some((info, thumbs)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn png(w: u32, h: u32, alpha: bool) -> Vec<u8> {
        let img = if alpha {
            DynamicImage::ImageRgba8(image::RgbaImage::from_fn(w, h, |x, y| {
                image::Rgba([x as u8, y as u8, 7, (x % 255) as u8])
            }))
        } else {
            DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| {
                image::Rgb([x as u8, y as u8, 7])
            }))
        };
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn thumbnails_keep_the_aspect_and_stop_at_the_image_size() {
        let (info, thumbs) = describe("image/png", &png(1000, 500, false))
            .unwrap()
            .unwrap();
        assert_eq!((info.width, info.height), (1000, 500));
        let dims: Vec<_> = thumbs
            .iter()
            .map(|t| (t.info.size, t.info.width, t.info.height))
            .collect();
        assert_eq!(dims, [(96, 96, 48), (320, 320, 160), (800, 800, 400)]);
        assert!(thumbs.iter().all(|t| t.info.mime == "image/jpeg"));
        let back = image::load_from_memory(&thumbs[1].bytes).unwrap();
        assert_eq!((back.width(), back.height()), (320, 160));
        assert!(!info.placeholder.is_empty() && info.placeholder.len() < 40);
        // A small image with alpha: one PNG thumbnail.
        let (info, thumbs) = describe("image/png", &png(200, 100, true))
            .unwrap()
            .unwrap();
        assert_eq!(info.thumbs.len(), 1);
        assert_eq!(thumbs[0].info.mime, "image/png");
        assert_eq!(describe("application/pdf", b"%PDF").unwrap(), None);
    }

    #[test]
    fn a_bomb_and_a_lie_are_refused() {
        // A PNG whose header claims 100 000 × 100 000 pixels (CRC fixed).
        let mut bomb = png(1, 1, false);
        bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc32fast::hash(&bomb[12..29]);
        bomb[29..33].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(
            describe("image/png", &bomb).unwrap_err(),
            ImageError::TooLarge {
                width: 100_000,
                height: 100_000
            }
        );
        assert!(matches!(
            describe("image/jpeg", b"not a jpeg"),
            Err(ImageError::Malformed { .. })
        ));
    }
}
