//! Media as matrix-sdk uses it: an image and a 100 MB file sent as messages, downloaded by the
//! other user byte-identical through authenticated media, and a thumbnail of the image.

mod common;

use std::time::{Duration, Instant};

use common::{create_and_join, event_json, sdk_register, sync};
use hearth_conformance::{TestServer, Value};
use matrix_sdk::attachment::AttachmentConfig;
use matrix_sdk::media::{MediaFormat, MediaRequestParameters, MediaThumbnailSettings};
use matrix_sdk::ruma::api::client::room::create_room::v3::Request as CreateRoomRequest;
use matrix_sdk::ruma::events::room::MediaSource;
use matrix_sdk::ruma::{OwnedMxcUri, UInt};

const PW: &str = "correct horse battery staple";

fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_and_a_100_mb_file_travel_through_matrix_sdk() {
    let server = TestServer::start().await;
    let alice = sdk_register(&server, "alice", PW).await;
    let bob = sdk_register(&server, "bob", PW).await;
    let room_id = create_and_join(&alice, &bob, CreateRoomRequest::new()).await;
    let room = alice.get_room(&room_id).unwrap();

    let image = png(640, 480);
    room.send_attachment(
        "cat.png",
        &mime::IMAGE_PNG,
        image.clone(),
        AttachmentConfig::new(),
    )
    .await
    .expect("send the image");
    let big: Vec<u8> = (0..100 * 1024 * 1024u32)
        .map(|i| (i ^ (i >> 11)) as u8)
        .collect();
    room.send_attachment(
        "archive.bin",
        &mime::APPLICATION_OCTET_STREAM,
        big.clone(),
        AttachmentConfig::new(),
    )
    .await
    .expect("send the 100 MB file");

    // Bob sees both messages and downloads what they point to.
    let mut urls: Vec<(String, OwnedMxcUri)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while urls.len() < 2 {
        let r = sync(&bob).await;
        if let Some(joined) = r.rooms.joined.get(&room_id) {
            for e in &joined.timeline.events {
                let json: Value = event_json(e);
                if let (Some(kind), Some(url)) = (
                    json["content"]["msgtype"].as_str(),
                    json["content"]["url"].as_str(),
                ) {
                    urls.push((kind.to_owned(), url.into()));
                }
            }
        }
        assert!(Instant::now() < deadline, "bob never saw both messages");
    }
    let url_of = |kind: &str| {
        urls.iter()
            .find(|(k, _)| k == kind)
            .map(|(_, u)| u.clone())
            .unwrap_or_else(|| panic!("no {kind} message: {urls:?}"))
    };
    let file = |uri: OwnedMxcUri| MediaRequestParameters {
        source: MediaSource::Plain(uri),
        format: MediaFormat::File,
    };
    let got = bob
        .media()
        .get_media_content(&file(url_of("m.file")), false)
        .await
        .expect("download the 100 MB file");
    assert!(
        got.len() == big.len() && got == big,
        "the 100 MB file is byte-identical"
    );
    drop((got, big));
    let got = bob
        .media()
        .get_media_content(&file(url_of("m.image")), false)
        .await
        .expect("download the image");
    assert!(got == image, "the image is byte-identical");

    let thumb = bob
        .media()
        .get_media_content(
            &MediaRequestParameters {
                source: MediaSource::Plain(url_of("m.image")),
                format: MediaFormat::Thumbnail(MediaThumbnailSettings::new(
                    UInt::new(96).unwrap(),
                    UInt::new(96).unwrap(),
                )),
            },
            false,
        )
        .await
        .expect("thumbnail");
    let decoded = image::load_from_memory(&thumb).expect("the thumbnail is an image");
    assert!(
        decoded.width() <= 320 && decoded.height() <= 240 && decoded.width() >= 96,
        "a scaled thumbnail: {}x{}",
        decoded.width(),
        decoded.height()
    );
}
