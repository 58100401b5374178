//! media: the content repository under a large file and under thumbnailing. A `--media-mib` file
//! is uploaded and downloaded (authenticated media) `--media-rounds` times while the server's RSS
//! is sampled per phase: a server that holds a whole file in memory shows it as a peak that
//! grows with the file. Then `--thumbnail-images` distinct 1600x1200 PNGs are uploaded and each
//! is thumbnailed once (first time) and again (cached).

use std::collections::BTreeSet;
use std::io::Cursor;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use image::{ImageFormat, ImageReader, Rgb, RgbImage};
use reqwest::Method;
use serde_json::{Value, json};

use super::Ctx;
use crate::BoxError;
use crate::api::{ApiError, Mxc};
use crate::stats::{Summary, ms, percentile, rate, round2, round3};
use crate::users::User;

const MIB: u64 = 1024 * 1024;
/// A 100 MiB transfer on a slow disk or a busy machine takes far longer than the 60 s default.
const MIN_MEDIA_TIMEOUT: Duration = Duration::from_secs(300);
/// Two megapixels, a modest photo: large enough that decoding it is most of a thumbnail's cost.
const IMAGE_W: u32 = 1600;
const IMAGE_H: u32 = 1200;
/// One of the spec's suggested sizes: a server that makes its thumbnails at upload has it ready.
const THUMB_QUERY: &str = "width=320&height=240&method=scale";
const THUMB_CONCURRENCY: usize = 4;

pub async fn run(ctx: &Ctx) -> Result<Value, BoxError> {
    let a = &ctx.args;
    let user = ctx.pool.take(&ctx.api, 1).await?.pop().expect("one user");
    let size = a.media_mib.max(1) * MIB;
    let timeout = MIN_MEDIA_TIMEOUT.max(Duration::from_secs_f64(a.request_timeout));
    let limit = upload_limit(ctx, &user).await;
    if limit.is_some_and(|l| size > l) {
        crate::log!(
            "media: warning: {} MiB is past the server's m.upload.size of {limit:?} bytes",
            a.media_mib
        );
    }
    crate::log!(
        "media: generating a {} MiB file and {} PNGs of {IMAGE_W}x{IMAGE_H}",
        a.media_mib.max(1),
        a.thumbnail_images
    );
    let (n_images, run_id) = (a.thumbnail_images, ctx.run_id.clone());
    let file = tokio::task::spawn_blocking(move || pattern(size)).await?;
    let pngs = tokio::task::spawn_blocking(move || pngs(n_images, &run_id)).await??;
    let rss_before = super::idle::settled_rss(ctx).await;
    ctx.mark_measured();

    let (mxc, upload) = upload_phase(ctx, &user, file, limit, timeout).await?;
    let download = download_phase(ctx, &user, &mxc, size, timeout).await;
    let thumbnails = if pngs.is_empty() {
        super::skipped("--thumbnail-images 0")
    } else {
        thumbnail_phase(ctx, &user, pngs, timeout)
            .await
            .unwrap_or_else(|e| json!({ "error": e.to_string() }))
    };
    enter(ctx, "media");
    let phases = [
        "media",
        "media_upload",
        "media_download",
        "media_thumbnails",
    ];
    Ok(json!({
        "file_bytes": size,
        "rounds": a.media_rounds.max(1),
        "media_timeout_s": timeout.as_secs_f64(),
        "server_upload_limit_bytes": limit,
        "rss_before_kb": rss_before,
        "rss_peak_kb": phases.iter().filter_map(|p| peak(ctx, p)).max(),
        "upload": upload,
        "download": download,
        "thumbnails": thumbnails,
    }))
}

/// The server's `m.upload.size`, when it tells.
async fn upload_limit(ctx: &Ctx, user: &User) -> Option<u64> {
    let r = ctx
        .api
        .get("/_matrix/client/v1/media/config", Some(&user.auth))
        .await
        .ok()?;
    r.json::<Value>("GET /media/config")
        .ok()?
        .get("m.upload.size")?
        .as_u64()
}

/// Deterministic and incompressible (xorshift64): no layer between us and the disk can make the
/// file smaller than it is.
fn pattern(len: u64) -> Bytes {
    let len = usize::try_from(len).expect("the file fits in memory");
    let mut v = Vec::with_capacity(len + 8);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

/// Smooth gradients under fine noise, so that it compresses as a photo does (megabytes as PNG)
/// and decoding it costs what decoding a photo costs.
fn base_image() -> RgbImage {
    RgbImage::from_fn(IMAGE_W, IMAGE_H, |x, y| {
        let h =
            (x.wrapping_mul(0x9E37_79B1) ^ y.wrapping_mul(0x85EB_CA77)).wrapping_mul(0xC2B2_AE3D);
        let noise = |shift: u32| ((h >> shift) & 15) as u8;
        Rgb([
            (x * 239 / IMAGE_W) as u8 + noise(4),
            (y * 239 / IMAGE_H) as u8 + noise(12),
            ((x + y) * 239 / (IMAGE_W + IMAGE_H)) as u8 + noise(20),
        ])
    })
}

/// `n` PNGs that differ in a few pixels each, by index and by run: Hearth stores identical bytes
/// once and keys its thumbnails by content, so copies of one file, or a rerun's files, would get
/// a thumbnail made earlier.
fn pngs(n: usize, run_id: &str) -> Result<Vec<Bytes>, image::ImageError> {
    let base = base_image();
    let run = run_id
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31) ^ u32::from(b));
    (0..n)
        .map(|i| {
            let mut img = base.clone();
            for (k, tag) in [i as u32, run].into_iter().enumerate() {
                let [a, b, c, d] = tag.to_le_bytes();
                img.put_pixel(k as u32, 0, Rgb([a, b, c]));
                img.put_pixel(k as u32, 1, Rgb([d, a, b]));
            }
            let mut out = Vec::new();
            img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png)?;
            Ok(Bytes::from(out))
        })
        .collect()
}

/// Starts a phase of the sampler (its RSS peak is kept apart); answers the RSS at its start.
pub(super) fn enter(ctx: &Ctx, phase: &str) -> Option<u64> {
    let s = ctx.sampler.as_ref()?;
    s.set_phase(phase);
    s.sample()
}

/// The RSS peak of one phase of the sampler.
pub(super) fn peak(ctx: &Ctx, phase: &str) -> Option<u64> {
    ctx.sampler
        .as_ref()?
        .phase_report(phase)
        .get("rss_peak_kb")?
        .as_u64()
}

async fn upload_phase(
    ctx: &Ctx,
    user: &User,
    file: Bytes,
    limit: Option<u64>,
    timeout: Duration,
) -> Result<(Mxc, Value), BoxError> {
    let rounds = ctx.args.media_rounds.max(1);
    let size = file.len() as u64;
    let rss_start = enter(ctx, "media_upload");
    let (mut secs, mut first) = (Vec::new(), None);
    for r in 1..=rounds {
        let t0 = Instant::now();
        let (mxc, at) = ctx
            .api
            .upload(
                &user.auth,
                "application/octet-stream",
                file.clone(),
                timeout,
            )
            .await
            .map_err(|e| upload_error(&e, limit))?;
        let s = at.duration_since(t0).as_secs_f64();
        log_round("upload", r, rounds, size, s, ctx);
        secs.push(s);
        first.get_or_insert(mxc);
    }
    let v = transfer_report(
        "upload",
        size,
        &mut secs,
        rss_start,
        peak(ctx, "media_upload"),
    );
    Ok((first.expect("at least one round"), v))
}

/// A 413 says which flag to change.
fn upload_error(e: &ApiError, limit: Option<u64>) -> BoxError {
    if e.status() == Some(413) {
        return format!("{e} (m.upload.size {limit:?}: rerun with a smaller --media-mib)").into();
    }
    e.to_string().into()
}

async fn download_phase(ctx: &Ctx, user: &User, mxc: &Mxc, size: u64, timeout: Duration) -> Value {
    let rounds = ctx.args.media_rounds.max(1);
    let rss_start = enter(ctx, "media_download");
    let path = format!("/_matrix/client/v1/media/download/{}", mxc.path());
    let (mut secs, mut errors) = (Vec::new(), Vec::new());
    for r in 1..=rounds {
        match download_once(ctx, user, &path, size, timeout).await {
            Ok(s) => {
                log_round("download", r, rounds, size, s, ctx);
                secs.push(s);
            }
            Err(e) => {
                crate::log!("media: download {r}/{rounds}: FAILED: {e}");
                errors.push(format!("round {r}: {e}"));
            }
        }
    }
    let mut v = transfer_report(
        "download",
        size,
        &mut secs,
        rss_start,
        peak(ctx, "media_download"),
    );
    if let Some(e) = errors.first() {
        v["error"] = json!(e);
        v["failed_rounds"] = json!(errors.len());
    }
    v
}

/// Seconds until the last byte, when all of them came.
async fn download_once(
    ctx: &Ctx,
    user: &User,
    path: &str,
    size: u64,
    timeout: Duration,
) -> Result<f64, String> {
    let t0 = Instant::now();
    let c = ctx
        .api
        .get_counted(path, &user.auth, timeout)
        .await
        .map_err(|e| e.to_string())?;
    if c.bytes != size {
        return Err(format!("{} bytes, expected {size}", c.bytes));
    }
    Ok(c.at.duration_since(t0).as_secs_f64())
}

fn log_round(kind: &str, r: usize, rounds: usize, size: u64, secs: f64, ctx: &Ctx) {
    let rss = ctx.sampler.as_ref().and_then(|s| s.rss_kb());
    crate::log!(
        "media: {kind} {r}/{rounds}: {} MiB in {secs:.2} s = {:.1} MiB/s (server RSS {} MiB)",
        size / MIB,
        size as f64 / MIB as f64 / secs,
        rss.map_or_else(|| "-".into(), |kb| (kb / 1024).to_string())
    );
}

/// Median and best over the rounds that completed, for the rate and for the time.
fn transfer_report(
    kind: &str,
    size: u64,
    secs: &mut [f64],
    rss_start: Option<u64>,
    rss_peak: Option<u64>,
) -> Value {
    let mut rates: Vec<f64> = secs
        .iter()
        .map(|s| round2(size as f64 / MIB as f64 / s))
        .collect();
    let rounds_rates = rates.clone();
    let rounds_secs: Vec<f64> = secs.iter().copied().map(round3).collect();
    rates.sort_by(f64::total_cmp);
    secs.sort_by(f64::total_cmp);
    let mut v = json!({
        "elapsed_s": {
            "median": percentile(secs, 50.0).map(round3),
            "best": secs.first().copied().map(round3),
            "rounds": rounds_secs,
        },
        "rss_start_kb": rss_start,
        "rss_peak_kb": rss_peak,
        "rss_growth_kb": rss_start.zip(rss_peak).map(|(a, b)| b.saturating_sub(a)),
    });
    v[format!("{kind}_mib_per_s")] = json!({
        "median": percentile(&rates, 50.0).map(round2),
        "best": rates.last(),
        "rounds": rounds_rates,
    });
    v
}

async fn thumbnail_phase(
    ctx: &Ctx,
    user: &User,
    pngs: Vec<Bytes>,
    timeout: Duration,
) -> Result<Value, BoxError> {
    let rss_start = enter(ctx, "media_thumbnails");
    let image_bytes = pngs.first().map(Bytes::len);
    crate::log!(
        "media: uploading {} PNGs of {} KiB",
        pngs.len(),
        image_bytes.unwrap_or(0) / 1024
    );
    // One at a time, so that each upload's time is its own: a server that makes its thumbnails
    // ahead (Synapse) spends that work here.
    let (mut upload_ms, mut ids) = (Vec::new(), Vec::new());
    for png in pngs {
        let t0 = Instant::now();
        let (mxc, at) = ctx
            .api
            .upload(&user.auth, "image/png", png, timeout)
            .await?;
        upload_ms.push(ms(at.duration_since(t0)));
        ids.push(mxc);
    }
    let upload_ms = Summary::of(&mut upload_ms);
    crate::log!("media: image upload {}", upload_ms.brief());
    let first = thumbnail_pass(ctx, user, &ids, timeout, "first").await;
    let cached = thumbnail_pass(ctx, user, &ids, timeout, "cached").await;
    Ok(json!({
        "images": ids.len(),
        "image_size": format!("{IMAGE_W}x{IMAGE_H}"),
        "image_bytes": image_bytes,
        "request": THUMB_QUERY,
        "concurrency": THUMB_CONCURRENCY,
        "image_upload_ms": upload_ms,
        "first": first,
        "cached": cached,
        "rss_start_kb": rss_start,
        "rss_peak_kb": peak(ctx, "media_thumbnails"),
    }))
}

/// One thumbnail of each image, `THUMB_CONCURRENCY` at a time.
async fn thumbnail_pass(
    ctx: &Ctx,
    user: &User,
    ids: &[Mxc],
    timeout: Duration,
    label: &str,
) -> Value {
    let t0 = Instant::now();
    let results: Vec<Result<(f64, Bytes), ApiError>> = futures_util::stream::iter(ids)
        .map(|mxc| async move {
            let path = format!(
                "/_matrix/client/v1/media/thumbnail/{}?{THUMB_QUERY}",
                mxc.path()
            );
            let t = Instant::now();
            let r = ctx
                .api
                .call(
                    Method::GET,
                    &path,
                    Some(&user.auth),
                    None,
                    Some(timeout),
                    &[200],
                )
                .await?;
            Ok((ms(r.at.duration_since(t)), r.body))
        })
        .buffer_unordered(THUMB_CONCURRENCY)
        .collect()
        .await;
    let el = t0.elapsed().as_secs_f64();
    let (mut lats, mut dims, mut errors) = (Vec::new(), BTreeSet::new(), Vec::new());
    for r in results {
        match r {
            Ok((lat, body)) => {
                lats.push(lat);
                dims.insert(dimensions(&body));
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    let latency = Summary::of(&mut lats);
    let per_s = rate(latency.n, el);
    crate::log!(
        "media: thumbnails ({label}): {} /s, {} errors; {}",
        per_s.unwrap_or(0.0),
        errors.len(),
        latency.brief()
    );
    json!({
        "elapsed_s": round3(el),
        "thumbnails_per_s": per_s,
        "latency_ms": latency,
        "dimensions": dims,
        "errors": errors.len(),
        "error_sample": errors.first(),
    })
}

/// "320x240", from the header alone: proves the answer is an image of the expected size.
fn dimensions(body: &[u8]) -> String {
    ImageReader::new(Cursor::new(body))
        .with_guessed_format()
        .ok()
        .and_then(|r| r.into_dimensions().ok())
        .map_or_else(|| "not an image".into(), |(w, h)| format!("{w}x{h}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_deterministic_and_not_blank() {
        let a = pattern(MIB + 3);
        assert_eq!(a.len() as u64, MIB + 3);
        assert_eq!(a, pattern(MIB + 3));
        assert!(a.iter().filter(|&&b| b == 0).count() < a.len() / 100);
    }

    #[test]
    fn images_are_distinct_pngs() {
        let p = pngs(2, "hb1").unwrap();
        assert_ne!(p[0], p[1]);
        assert_ne!(p[0], pngs(1, "hb2").unwrap()[0]);
        assert_eq!(dimensions(&p[0]), format!("{IMAGE_W}x{IMAGE_H}"));
        assert_eq!(dimensions(b"plain text"), "not an image");
    }

    #[test]
    fn reports_median_and_best() {
        let mut secs = vec![2.0, 1.0, 4.0];
        let v = transfer_report("upload", 100 * MIB, &mut secs, Some(1000), Some(1500));
        assert_eq!(v["upload_mib_per_s"]["median"], 50.0);
        assert_eq!(v["upload_mib_per_s"]["best"], 100.0);
        assert_eq!(v["upload_mib_per_s"]["rounds"], json!([50.0, 100.0, 25.0]));
        assert_eq!(v["elapsed_s"]["best"], 1.0);
        assert_eq!(v["rss_growth_kb"], 500);
    }
}
