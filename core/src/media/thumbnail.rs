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
/// Memory the decoder may take.
const MAX_DECODE_BYTES: u64 = 512 * 1024 * 1024;

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
    let file = std::fs::File::open(source).map_err(io)?;
    let mut reader = ImageReader::new(std::io::BufReader::new(file))
        .with_guessed_format()
        .map_err(io)?;
    let format = reader
        .format()
        .ok_or_else(|| not_an_image("unknown format"))?;
    if !matches!(
        format,
        ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::Gif | ImageFormat::WebP
    ) {
        return Err(not_an_image(format!("{format:?} is not thumbnailed")));
    }
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
