//! The content repository over raw HTTP: upload, authenticated download byte for byte, ranges,
//! safe headers, one stored copy per content, and the size limit enforced while streaming.

use std::path::Path;

use hearth_conformance::{Method, TestServer, Value, assert_matrix_error, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PW: &str = "correct horse battery staple";

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn media_id(uri: &str) -> String {
    uri.rsplit('/').next().unwrap().to_owned()
}

/// Files under the media directory, the temporary ones apart.
fn stored_files(media: &Path) -> (usize, usize) {
    let mut stored = 0;
    let mut temporary = 0;
    let Ok(entries) = std::fs::read_dir(media) else {
        return (0, 0);
    };
    for dir in entries.flatten() {
        let is_tmp = dir.file_name() == "tmp";
        for f in std::fs::read_dir(dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if f.path().is_file() {
                if is_tmp {
                    temporary += 1;
                } else {
                    stored += 1;
                }
            }
        }
    }
    (stored, temporary)
}

async fn upload(
    server: &TestServer,
    token: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    server
        .request_raw(
            Method::POST,
            "/_matrix/media/v3/upload?filename=report%20one.bin",
            Some(token),
            content_type,
            body,
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_come_back_byte_identical_with_auth_ranges_and_safe_headers() {
    let server = TestServer::start().await;
    let (_, token, _) = server.register("alice", PW).await;
    let data = pattern(3 * 1024 * 1024 + 17);
    let (status, body) = upload(&server, &token, "application/octet-stream", data.clone()).await;
    assert_eq!(status, 200, "{body}");
    let uri = body["content_uri"]
        .as_str()
        .expect("content_uri")
        .to_owned();
    assert!(
        uri.starts_with(&format!("mxc://{}/", server.server_name())),
        "{uri}"
    );
    let id = media_id(&uri);
    let url = format!(
        "{}/_matrix/client/v1/media/download/{}/{id}",
        server.base_url(),
        server.server_name()
    );
    let http = reqwest::Client::new();

    let resp = http.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["content-type"], "application/octet-stream");
    assert_eq!(
        h["content-disposition"],
        "attachment; filename*=utf-8''report%20one.bin"
    );
    assert!(
        h["content-security-policy"]
            .to_str()
            .unwrap()
            .starts_with("sandbox;")
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    let got = resp.bytes().await.unwrap();
    assert!(got[..] == data[..], "the download is byte-identical");

    // Authenticated media: no token, no bytes.
    let resp = server.get_anon(&url).await;
    assert_matrix_error(&resp, 401, "M_MISSING_TOKEN");

    // A range, as a video player seeks.
    let resp = http
        .get(&url)
        .bearer_auth(&token)
        .header("range", "bytes=1000000-1000099")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(
        resp.headers()["content-range"],
        format!("bytes 1000000-1000099/{}", data.len()).as_str()
    );
    assert!(resp.bytes().await.unwrap()[..] == data[1_000_000..1_000_100]);
    let resp = http
        .get(&url)
        .bearer_auth(&token)
        .header("range", format!("bytes={}-", data.len()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 416);

    // A filename in the path wins; an image may show inline.
    let (_, png) = upload(&server, &token, "image/png", b"\x89PNG not really".to_vec()).await;
    let png_id = media_id(png["content_uri"].as_str().unwrap());
    let resp = http
        .get(format!(
            "{}/_matrix/client/v1/media/download/{}/{png_id}/cat.png",
            server.base_url(),
            server.server_name()
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["content-disposition"],
        "inline; filename*=utf-8''cat.png"
    );

    // The same bytes again: a new id, the same stored file.
    let (status, again) = upload(&server, &token, "application/octet-stream", data.clone()).await;
    assert_eq!(status, 200);
    assert_ne!(again["content_uri"], body["content_uri"]);
    assert_eq!(stored_files(&server.data_dir().join("media")), (2, 0));

    let resp = server
        .get(
            &format!(
                "/_matrix/client/v1/media/download/{}/nosuchmedia",
                server.server_name()
            ),
            &token,
        )
        .await;
    assert_matrix_error(&resp, 404, "M_NOT_FOUND");
    let (status, config) = server.get("/_matrix/client/v1/media/config", &token).await;
    assert_eq!(status, 200);
    assert_eq!(config["m.upload.size"], json!(100 * 1024 * 1024));
}

/// A chunked upload (no Content-Length, so the limit can only be enforced while streaming):
/// the status and JSON body of the answer.
async fn chunked_upload(server: &TestServer, token: &str, len: usize) -> (u16, Value) {
    let addr = server.base_url().trim_start_matches("http://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /_matrix/media/v3/upload HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let data = pattern(len);
    for chunk in data.chunks(4096) {
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
        // The server may answer and close before the whole body is sent.
        if tcp.write_all(&framed).await.is_err() {
            break;
        }
    }
    let _ = tcp.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer);
    let status = text[9..12].parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    // The JSON may itself be chunk-framed: take what lies between the outer braces.
    let json_text = body
        .find('{')
        .zip(body.rfind('}'))
        .map(|(a, b)| &body[a..=b])
        .unwrap_or("null");
    (
        status,
        serde_json::from_str(json_text).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_size_limit_holds_while_streaming_and_leaves_nothing_behind() {
    let limit = 200_000;
    let server = TestServer::builder()
        .env("HEARTH_MAX_UPLOAD_SIZE", limit.to_string())
        .start()
        .await;
    let (_, token, _) = server.register("alice", PW).await;
    let media = server.data_dir().join("media");

    let (status, body) = chunked_upload(&server, &token, limit + 1).await;
    assert_eq!(
        (status, &body["errcode"]),
        (413, &json!("M_TOO_LARGE")),
        "{body}"
    );
    // A declared length past the limit is refused before any byte is read.
    let resp = upload(
        &server,
        &token,
        "application/octet-stream",
        pattern(limit + 1),
    )
    .await;
    assert_matrix_error(&resp, 413, "M_TOO_LARGE");
    assert_eq!(stored_files(&media), (0, 0), "no partial file is left");

    // Exactly the limit is fine, streamed or not, and the server goes on serving.
    let (status, body) = chunked_upload(&server, &token, limit).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = upload(&server, &token, "text/plain", b"small".to_vec()).await;
    assert_eq!(status, 200);
    assert_eq!(stored_files(&media), (2, 0));
}

fn encoded(width: u32, height: u32, format: image::ImageFormat) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, format)
        .unwrap();
    out.into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thumbnails_have_the_requested_size_and_bad_images_get_an_error() {
    let server = TestServer::start().await;
    let (_, token, _) = server.register("alice", PW).await;
    let http = reqwest::Client::new();
    let up = |content_type: &'static str, bytes: Vec<u8>| {
        let (server, token) = (&server, &token);
        async move {
            let (status, body) = upload(server, token, content_type, bytes).await;
            assert_eq!(status, 200, "{body}");
            media_id(body["content_uri"].as_str().unwrap())
        }
    };
    let thumb_url = |id: &str, query: &str| {
        format!(
            "{}/_matrix/client/v1/media/thumbnail/{}/{id}?{query}",
            server.base_url(),
            server.server_name()
        )
    };
    let fetch = |id: String, query: &'static str| {
        let (http, token, url) = (&http, &token, thumb_url(&id, query));
        async move { http.get(url).bearer_auth(token).send().await.unwrap() }
    };

    let png = up("image/png", encoded(1000, 600, image::ImageFormat::Png)).await;
    let resp = fetch(png.clone(), "width=96&height=96&method=crop").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "image/png");
    let img = image::load_from_memory(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!((img.width(), img.height()), (96, 96));
    let resp = fetch(png.clone(), "width=300&height=200&method=scale").await;
    let img = image::load_from_memory(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(
        (img.width(), img.height()),
        (320, 192),
        "scaled into 320x240, aspect kept"
    );
    // Served again from the stored copy.
    let resp = fetch(png.clone(), "width=300&height=200&method=scale").await;
    assert_eq!(resp.status(), 200);

    let jpeg = up("image/jpeg", encoded(400, 400, image::ImageFormat::Jpeg)).await;
    let resp = fetch(jpeg, "width=32&height=32&method=crop").await;
    assert_eq!(resp.headers()["content-type"], "image/jpeg");
    let img = image::load_from_memory(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!((img.width(), img.height()), (32, 32));

    // Not an image, or a broken one: a Matrix error, and the server goes on.
    let text = up("text/plain", b"just words".to_vec()).await;
    let resp = fetch(text, "width=32&height=32").await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["errcode"], "M_UNKNOWN", "{body}");
    let mut broken = encoded(500, 500, image::ImageFormat::Png);
    broken.truncate(broken.len() / 3);
    broken.extend_from_slice(&[0xde; 4000]);
    let broken = up("image/png", broken).await;
    let resp = fetch(broken, "width=96&height=96&method=crop").await;
    assert_eq!(resp.status(), 400);
    let resp = fetch(png.clone(), "width=32&height=32&method=crop").await;
    assert_eq!(resp.status(), 200, "the server still serves thumbnails");

    let resp = fetch(png.clone(), "height=32").await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["errcode"], "M_MISSING_PARAM");
    let resp = http
        .get(thumb_url(&png, "width=32&height=32"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

fn download_url(server: &TestServer, uri: &str) -> String {
    format!(
        "/_matrix/client/v1/media/download/{}/{}",
        server.server_name(),
        media_id(uri)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asynchronous_upload_reserves_an_id_its_creator_fills_once() {
    let server = TestServer::start().await;
    let (_, token, _) = server.register("alice", PW).await;
    let (_, bob_token, _) = server.register("bob", PW).await;
    let (status, created) = server
        .post("/_matrix/media/v1/create", &token, &json!({}))
        .await;
    assert_eq!(status, 200, "{created}");
    let uri = created["content_uri"].as_str().unwrap().to_owned();
    assert!(created["unused_expires_at"].as_u64().is_some());
    let put_path = format!(
        "/_matrix/media/v3/upload/{}/{}",
        server.server_name(),
        media_id(&uri)
    );

    // Not there yet: a download says so once its wait is over.
    let resp = server
        .get(
            &format!("{}?timeout_ms=0", download_url(&server, &uri)),
            &token,
        )
        .await;
    assert_matrix_error(&resp, 504, "M_NOT_YET_UPLOADED");
    let resp = server
        .get(
            &format!("{}?timeout_ms=soon", download_url(&server, &uri)),
            &token,
        )
        .await;
    assert_matrix_error(&resp, 400, "M_INVALID_PARAM");
    let resp = server
        .request_raw(
            Method::PUT,
            &put_path,
            Some(&bob_token),
            "text/plain",
            b"mine".to_vec(),
        )
        .await;
    assert_matrix_error(&resp, 403, "M_FORBIDDEN");
    // While one upload to the id is under way, a second one is refused, not raced.
    let addr = server.base_url().trim_start_matches("http://").to_owned();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "PUT {put_path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         5\r\nlate \r\n"
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let resp = server
        .request_raw(
            Method::PUT,
            &put_path,
            Some(&token),
            "text/plain",
            b"racer".to_vec(),
        )
        .await;
    assert_matrix_error(&resp, 409, "M_CANNOT_OVERWRITE_MEDIA");
    slow.write_all(b"5\r\nbytes\r\n0\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    slow.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let resp = server
        .request_raw(
            Method::PUT,
            &put_path,
            Some(&token),
            "text/plain",
            b"again".to_vec(),
        )
        .await;
    assert_matrix_error(&resp, 409, "M_CANNOT_OVERWRITE_MEDIA");
    let got = reqwest::Client::new()
        .get(format!(
            "{}{}",
            server.base_url(),
            download_url(&server, &uri)
        ))
        .bearer_auth(&bob_token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&got[..], b"late bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_endpoints_quotas_and_takedowns() {
    let server = TestServer::builder()
        .env("HEARTH_MEDIA_QUOTA_BYTES", "1000")
        .env("HEARTH_ADMIN_USERS", "@root:localhost")
        .start()
        .await;
    let (_, token, _) = server.register("alice", PW).await;
    let (_, root_token, _) = server.register("root", PW).await;
    let (status, body) = upload(&server, &token, "text/plain", pattern(600)).await;
    assert_eq!(status, 200, "{body}");
    let uri = body["content_uri"].as_str().unwrap().to_owned();

    // The pre-v1.11 unauthenticated download is frozen.
    let legacy = format!(
        "/_matrix/media/v3/download/{}/{}",
        server.server_name(),
        media_id(&uri)
    );
    let resp = server.get_anon(&legacy).await;
    assert_matrix_error(&resp, 404, "M_NOT_FOUND");

    // 600 of 1000 bytes used: 500 more would pass the quota.
    let resp = upload(&server, &token, "text/plain", pattern(500)).await;
    assert_matrix_error(&resp, 403, "M_RESOURCE_LIMIT_EXCEEDED");
    let (status, _) = upload(&server, &token, "text/plain", pattern(300)).await;
    assert_eq!(status, 200);

    // Only an admin takes media down; then it is gone for everyone.
    let path = format!(
        "{}/_synapse/admin/v1/media/quarantine/{}/{}",
        server.base_url(),
        server.server_name(),
        media_id(&uri)
    );
    let resp = server.post(&path, &token, &json!({})).await;
    assert_matrix_error(&resp, 403, "M_FORBIDDEN");
    let (status, _) = server.post(&path, &root_token, &json!({})).await;
    assert_eq!(status, 200);
    let resp = server.get(&download_url(&server, &uri), &token).await;
    assert_matrix_error(&resp, 404, "M_NOT_FOUND");
    let (status, body) = server
        .post(
            &format!(
                "{}/_synapse/admin/v1/user/{}/media/quarantine",
                server.base_url(),
                hearth_conformance::enc("@alice:localhost")
            ),
            &root_token,
            &json!({}),
        )
        .await;
    assert_eq!(
        (status, &body["num_quarantined"]),
        (200, &json!(2)),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_frozen_endpoints_can_be_turned_back_on() {
    let server = TestServer::builder()
        .env("HEARTH_LEGACY_UNAUTHENTICATED_MEDIA", "true")
        .start()
        .await;
    let (_, token, _) = server.register("alice", PW).await;
    let (_, body) = upload(&server, &token, "text/plain", b"old style".to_vec()).await;
    let uri = body["content_uri"].as_str().unwrap();
    let got = reqwest::Client::new()
        .get(format!(
            "{}/_matrix/media/v3/download/{}/{}",
            server.base_url(),
            server.server_name(),
            media_id(uri)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(&got.bytes().await.unwrap()[..], b"old style");
}
