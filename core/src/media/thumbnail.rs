//! Thumbnails: made once per (content, size, method) with the `image` crate off the async
//! runtime, kept on disk beside the content.
//!
//! Decoding runs with limits on dimensions and memory, so a malformed or hostile image gets an
//! error, never a crash or an unbounded allocation. Only JPEG, PNG, GIF and WebP are thumbnailed.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{ImageFormat, ImageReader, Limits};

use super::{Media, io};
use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Crop,
    Scale,
}

impl Method {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "crop" => Some(Self::Crop),
            "scale" => Some(Self::Scale),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Crop => "crop",
            Self::Scale => "scale",
        }
    }
}

/// The sizes the spec suggests servers make; a request gets the smallest one that is at least as
/// large as asked (or the largest), so a handful of files serve every client.
const SIZES: [(u32, u32, Method); 5] = [
    (32, 32, Method::Crop),
    (96, 96, Method::Crop),
    (320, 240, Method::Scale),
    (640, 480, Method::Scale),
    (800, 600, Method::Scale),
];

/// Pixels, both ways, past which an image is not decoded.
const MAX_DIMENSION: u32 = 12_000;
/// Pixels in all past which an image is not decoded (Synapse's `max_image_pixels`). Read from
/// the header first: a 514 KB PNG of 11,500 × 11,500 decodes to half a gigabyte.
pub const MAX_PIXELS: u64 = 32_000_000;
/// Memory the decoder may take: a full-size RGBA image of `MAX_PIXELS` and some room.
const MAX_DECODE_BYTES: u64 = MAX_PIXELS * 4 + 32 * 1024 * 1024;

fn pick_size(width: u32, height: u32, method: Method) -> (u32, u32, Method) {
    let fits = |(w, h, _): &&(u32, u32, Method)| *w >= width && *h >= height;
    let mut same_method = SIZES.iter().filter(|(_, _, m)| *m == method);
    same_method
        .clone()
        .find(fits)
        .or_else(|| same_method.next_back())
        .copied()
        .unwrap_or(SIZES[SIZES.len() - 1])
}

pub struct Thumbnail {
    pub path: PathBuf,
    pub content_type: &'static str,
    pub size: u64,
}

impl Media {
    /// A thumbnail of local media, made on first request.
    pub async fn thumbnail(
        &self,
        server_name: &str,
        media_id: &str,
        width: u32,
        height: u32,
        method: Method,
    ) -> Result<Thumbnail> {
        let (record, source) = self
            .get_waiting(server_name, media_id, std::time::Duration::ZERO)
            .await?;
        let (w, h, method) = pick_size(width, height, method);
        let dir = self.dir.join("thumbnails").join(&record.sha256);
        let base = format!("{w}x{h}-{}", method.name());
        for (ext, content_type) in [("png", "image/png"), ("jpg", "image/jpeg")] {
            let path = dir.join(format!("{base}.{ext}"));
            if let Ok(meta) = tokio::fs::metadata(&path).await {
                return Ok(Thumbnail {
                    path,
                    content_type,
                    size: meta.len(),
                });
            }
        }
        let _one_of_few = self.thumbnailers.acquire().await.map_err(Error::internal)?;
        let made = tokio::task::spawn_blocking(move || make(&source, &dir, &base, w, h, method))
            .await
            .map_err(Error::internal)??;
        Ok(made)
    }
}

fn not_an_image(detail: impl std::fmt::Display) -> Error {
    Error::Unknown(format!("Cannot make a thumbnail of this media: {detail}"))
}

fn make(
    source: &Path,
    dir: &Path,
    base: &str,
    w: u32,
    h: u32,
    method: Method,
) -> Result<Thumbnail> {
    let open = || -> Result<_> {
        let file = std::fs::File::open(source).map_err(io)?;
        ImageReader::new(std::io::BufReader::new(file))
            .with_guessed_format()
            .map_err(io)
    };
    let mut reader = open()?;
    let format = reader
        .format()
        .ok_or_else(|| not_an_image("unknown format"))?;
    if !matches!(
        format,
        ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::Gif | ImageFormat::WebP
    ) {
        return Err(not_an_image(format!("{format:?} is not thumbnailed")));
    }
    let (width, height) = reader.into_dimensions().map_err(not_an_image)?;
    if u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(not_an_image(format!(
            "{width} × {height} is more than {MAX_PIXELS} pixels"
        )));
    }
    reader = open()?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_DIMENSION);
    limits.max_image_height = Some(MAX_DIMENSION);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let image = reader.decode().map_err(not_an_image)?;
    // Never larger than the original. `thumbnail` is image's fast integer downscaler: the
    // general resize filters work in f32 and took several times the memory and time.
    let thumb = match method {
        Method::Crop if image.width() > w && image.height() > h => {
            // The largest centred region of the target's aspect ratio, then shrunk to it.
            let scale = f64::min(
                f64::from(image.width()) / f64::from(w),
                f64::from(image.height()) / f64::from(h),
            );
            let (cw, ch) = (
                (f64::from(w) * scale).round() as u32,
                (f64::from(h) * scale).round() as u32,
            );
            let (x, y) = ((image.width() - cw) / 2, (image.height() - ch) / 2);
            image.crop_imm(x, y, cw, ch).thumbnail_exact(w, h)
        }
        Method::Scale if image.width() > w || image.height() > h => image.thumbnail(w, h),
        _ => image,
    };
    // JPEG stays JPEG (small, photos); everything else becomes PNG (keeps transparency).
    let (ext, out_format, content_type) = if format == ImageFormat::Jpeg {
        ("jpg", ImageFormat::Jpeg, "image/jpeg")
    } else {
        ("png", ImageFormat::Png, "image/png")
    };
    let thumb = if out_format == ImageFormat::Jpeg {
        image::DynamicImage::ImageRgb8(thumb.to_rgb8())
    } else {
        thumb
    };
    let mut encoded = Vec::new();
    thumb
        .write_to(&mut Cursor::new(&mut encoded), out_format)
        .map_err(Error::internal)?;
    std::fs::create_dir_all(dir).map_err(io)?;
    let path = dir.join(format!("{base}.{ext}"));
    // Written aside and renamed: a concurrent reader never sees half a thumbnail.
    let tmp = dir.join(format!("{base}.{ext}.{}", crate::util::random_string(8)));
    std::fs::write(&tmp, &encoded).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok(Thumbnail {
        path,
        content_type,
        size: encoded.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_map_to_the_suggested_sizes() {
        assert_eq!(pick_size(32, 32, Method::Crop), (32, 32, Method::Crop));
        assert_eq!(pick_size(50, 40, Method::Crop), (96, 96, Method::Crop));
        assert_eq!(pick_size(500, 500, Method::Crop), (96, 96, Method::Crop));
        assert_eq!(
            pick_size(300, 200, Method::Scale),
            (320, 240, Method::Scale)
        );
        assert_eq!(
            pick_size(2000, 2000, Method::Scale),
            (800, 600, Method::Scale)
        );
    }
}

/// Fuzzing: an upload claiming to be an image is any bytes; decoding it ends in a thumbnail or
/// an error, never a panic, and within the pixel and memory limits.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    /// A small valid PNG, for mutations that keep most of the structure.
    fn png() -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image::RgbaImage::from_pixel(40, 30, image::Rgba([1, 2, 3, 255]))
            .write_to(&mut out, ImageFormat::Png)
            .expect("encode");
        out.into_inner()
    }

    fn try_make(bytes: &[u8]) {
        let dir = std::env::temp_dir().join(format!(
            "hearth-fuzz-{}-{}",
            std::process::id(),
            crate::util::random_string(8)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let source = dir.join("source");
        std::fs::write(&source, bytes).expect("write");
        let _ = make(&source, &dir.join("thumbs"), "t", 32, 32, Method::Crop);
        let _ = std::fs::remove_dir_all(&dir);
    }

    proptest! {
        // Each case writes and decodes a file: fewer by default (PROPTEST_CASES still rules).
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(64),
            ..ProptestConfig::default()
        })]

        #[test]
        fn any_bytes_behind_an_image_signature(
            magic in prop::sample::select(vec![
                &b"\x89PNG\r\n\x1a\n"[..], b"\xff\xd8\xff", b"GIF89a", b"RIFF\0\0\0\0WEBPVP8 ",
            ]),
            tail in prop::collection::vec(any::<u8>(), 0..2048),
        ) {
            try_make(&[magic, &tail].concat());
        }

        #[test]
        fn a_png_with_bytes_changed(edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16)) {
            let mut bytes = png();
            for (at, value) in edits {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            try_make(&bytes);
        }
    }
}
