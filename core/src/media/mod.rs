//! The media repository: uploads streamed to disk, stored once per content, served by id.
//!
//! A body streams into a temporary file while its size is checked and its SHA-256 computed; past
//! the limit the file is removed and the upload refused, so no partial file stays behind. The
//! finished file is fsynced and renamed to `<dir>/<first two hex digits>/<sha256>` (an atomic
//! rename: readers see a whole file or none), and only then is the media id recorded, so an
//! acknowledged upload survives a crash.

mod disposition;
mod thumbnail;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hearth_storage::{MediaRecord, Store, WriteOp};
use ruma::UserId;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::remote::Remote;
use crate::util::{now_ms, random_string};
use crate::{Error, Result};

pub use disposition::content_disposition;
pub use thumbnail::{Method, Thumbnail};

/// 100 MiB, the size the seeds ask for.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 100 * 1024 * 1024;

#[derive(Clone, Debug)]
pub struct MediaConfig {
    /// Where files live; `None` for a throwaway directory (tests of the layers above).
    pub dir: Option<PathBuf>,
    pub max_upload_bytes: u64,
    /// Bytes each user may store in all; 0 for no quota.
    pub quota_bytes: u64,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            dir: None,
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            quota_bytes: 0,
        }
    }
}

/// How long a media id from `/media/v1/create` waits for its bytes.
pub const PENDING_TTL_MS: u64 = 24 * 60 * 60 * 1000;

pub struct Media {
    server_name: ruma::OwnedServerName,
    store: Arc<dyn Store>,
    /// Other servers' media is fetched from them once and kept.
    remote: Arc<dyn Remote>,
    dir: PathBuf,
    max_upload_bytes: u64,
    quota_bytes: u64,
    /// Created media ids whose bytes are arriving now: a second upload to one of them is refused
    /// instead of racing the first.
    filling: parking_lot::Mutex<std::collections::HashSet<String>>,
    /// Thumbnailing is CPU-bound: a few at a time, so that it cannot take every core.
    thumbnailers: tokio::sync::Semaphore,
}

/// Removes a temporary file unless the upload got through.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A created media id being filled; released when the upload ends, also when a client that
/// went away drops the request halfway.
struct Filling<'a> {
    set: &'a parking_lot::Mutex<std::collections::HashSet<String>>,
    id: String,
}

impl<'a> Filling<'a> {
    fn claim(
        set: &'a parking_lot::Mutex<std::collections::HashSet<String>>,
        id: &str,
    ) -> Result<Self> {
        if !set.lock().insert(id.to_owned()) {
            return Err(Error::CannotOverwriteMedia);
        }
        Ok(Self {
            set,
            id: id.to_owned(),
        })
    }
}

impl Drop for Filling<'_> {
    fn drop(&mut self) {
        self.set.lock().remove(&self.id);
    }
}

fn io(e: std::io::Error) -> Error {
    Error::internal(format!("media store: {e}"))
}

impl Media {
    pub fn new(
        server_name: ruma::OwnedServerName,
        store: Arc<dyn Store>,
        remote: Arc<dyn Remote>,
        config: &MediaConfig,
    ) -> Result<Self> {
        let dir = match &config.dir {
            Some(d) => d.clone(),
            None => std::env::temp_dir().join(format!("hearth-media-{}", random_string(12))),
        };
        std::fs::create_dir_all(dir.join("tmp")).map_err(io)?;
        Ok(Self {
            server_name,
            store,
            remote,
            dir,
            max_upload_bytes: config.max_upload_bytes,
            quota_bytes: config.quota_bytes,
            filling: Default::default(),
            thumbnailers: tokio::sync::Semaphore::new(2),
        })
    }

    pub fn max_upload_bytes(&self) -> u64 {
        self.max_upload_bytes
    }

    fn too_large(&self) -> Error {
        Error::TooLarge(format!(
            "Media larger than {} bytes is not accepted",
            self.max_upload_bytes
        ))
    }

    /// Streams `body` into the store; answers the new media id (of `mxc://<server>/<id>`).
    pub async fn upload(
        &self,
        uploader: &UserId,
        content_type: Option<String>,
        filename: Option<String>,
        body: impl AsyncRead + Unpin,
    ) -> Result<String> {
        let media_id = random_string(24);
        self.store_upload(uploader, &media_id, content_type, filename, body)
            .await?;
        Ok(media_id)
    }

    /// `POST /media/v1/create`: a media id whose bytes come later; answers it and when it
    /// expires (ms since the epoch).
    pub async fn create_pending(&self, uploader: &UserId) -> Result<(String, u64)> {
        let media_id = random_string(24);
        let now = now_ms();
        let record = MediaRecord {
            sha256: String::new(),
            size: 0,
            content_type: None,
            filename: None,
            uploader: uploader.to_string(),
            created_ts: now,
            quarantined: false,
            pending: true,
        };
        self.put(&media_id, record).await?;
        Ok((media_id, now + PENDING_TTL_MS))
    }

    /// `PUT /media/v3/upload/{serverName}/{mediaId}`: the bytes of a created media id, by its
    /// creator, once.
    pub async fn upload_pending(
        &self,
        uploader: &UserId,
        server_name: &str,
        media_id: &str,
        content_type: Option<String>,
        filename: Option<String>,
        body: impl AsyncRead + Unpin,
    ) -> Result<()> {
        let record = (server_name == self.server_name.as_str())
            .then(|| self.store.media(server_name, media_id))
            .transpose()?
            .flatten()
            .ok_or_else(|| Error::not_found("Unknown media ID"))?;
        if record.uploader != uploader.as_str() {
            return Err(Error::forbidden(
                "This media ID was created by another user",
            ));
        }
        if !record.pending {
            return Err(Error::CannotOverwriteMedia);
        }
        if now_ms() > record.created_ts + PENDING_TTL_MS {
            return Err(Error::not_found("The media ID expired"));
        }
        let _filling = Filling::claim(&self.filling, media_id)?;
        self.store_upload(uploader, media_id, content_type, filename, body)
            .await
    }

    /// How many more bytes `user` may upload now.
    fn allowance(&self, user: &UserId) -> Result<u64> {
        if self.quota_bytes == 0 {
            return Ok(self.max_upload_bytes);
        }
        let used: u64 = self
            .store
            .media_of_user(user.as_str())?
            .iter()
            .map(|(_, _, size)| size)
            .sum();
        let left = self.quota_bytes.saturating_sub(used);
        if left == 0 {
            return Err(self.over_quota());
        }
        Ok(left.min(self.max_upload_bytes))
    }

    fn over_quota(&self) -> Error {
        Error::QuotaExceeded(format!(
            "This upload would pass your media storage quota of {} bytes",
            self.quota_bytes
        ))
    }

    async fn put(&self, media_id: &str, record: MediaRecord) -> Result<()> {
        self.store
            .submit(vec![WriteOp::PutMedia(
                self.server_name.to_string(),
                media_id.to_owned(),
                record,
            )])
            .await?;
        Ok(())
    }

    async fn store_upload(
        &self,
        uploader: &UserId,
        media_id: &str,
        content_type: Option<String>,
        filename: Option<String>,
        body: impl AsyncRead + Unpin,
    ) -> Result<()> {
        let allowance = self.allowance(uploader)?;
        let record = self
            .store_bytes(allowance, content_type, filename, uploader.as_str(), body)
            .await?;
        self.put(media_id, record).await
    }

    /// Streams `body` into the content store; answers the record for it (to be put under an id).
    async fn store_bytes(
        &self,
        allowance: u64,
        content_type: Option<String>,
        filename: Option<String>,
        uploader: &str,
        mut body: impl AsyncRead + Unpin,
    ) -> Result<MediaRecord> {
        let tmp = TempFile(Some(self.dir.join("tmp").join(random_string(24))));
        let tmp_path = tmp.0.clone().expect("set above");
        let mut file = tokio::fs::File::create(&tmp_path).await.map_err(io)?;
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = body
                .read(&mut buf)
                .await
                .map_err(|e| Error::Unknown(format!("The upload was interrupted: {e}")))?;
            if n == 0 {
                break;
            }
            size += n as u64;
            if size > self.max_upload_bytes {
                return Err(self.too_large());
            }
            if size > allowance {
                return Err(self.over_quota());
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).await.map_err(io)?;
        }
        file.sync_all().await.map_err(io)?;
        drop(file);

        let sha256: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let dest = self.path_of(&sha256);
        let parent = dest.parent().expect("content paths have a parent");
        tokio::fs::create_dir_all(parent).await.map_err(io)?;
        if tokio::fs::try_exists(&dest).await.map_err(io)? {
            // Stored already: the temporary copy goes (dropping `tmp`).
        } else {
            tokio::fs::rename(&tmp_path, &dest).await.map_err(io)?;
            let mut tmp = tmp;
            tmp.0 = None;
            sync_dir(parent).await?;
        }
        Ok(MediaRecord {
            sha256,
            size,
            content_type,
            filename,
            uploader: uploader.to_owned(),
            created_ts: now_ms(),
            quarantined: false,
            pending: false,
        })
    }

    /// Media of another server: from the local copy, or fetched from its origin and kept.
    async fn remote_media(
        &self,
        server_name: &str,
        media_id: &str,
    ) -> Result<(MediaRecord, PathBuf)> {
        if let Some(record) = self.store.media(server_name, media_id)? {
            if record.quarantined {
                return Err(Error::not_found("Media not found"));
            }
            let path = self.path_of(&record.sha256);
            return Ok((record, path));
        }
        let server = ruma::ServerName::parse(server_name)
            .map_err(|_| Error::not_found("Media not found"))?;
        let fetched = self.remote.fetch_media(&server, media_id).await?;
        // Remote media counts against no local user's quota, only against the size limit.
        let record = self
            .store_bytes(
                self.max_upload_bytes,
                fetched.content_type,
                fetched.filename,
                "",
                fetched.body,
            )
            .await?;
        self.store
            .submit(vec![WriteOp::PutMedia(
                server_name.to_owned(),
                media_id.to_owned(),
                record.clone(),
            )])
            .await?;
        let path = self.path_of(&record.sha256);
        Ok((record, path))
    }

    /// Takes media down: it is no longer served (the bytes stay for other ids with the same
    /// content). Answers whether it existed.
    pub async fn quarantine(&self, server_name: &str, media_id: &str) -> Result<bool> {
        let Some(mut record) = self.store.media(server_name, media_id)? else {
            return Ok(false);
        };
        record.quarantined = true;
        self.store
            .submit(vec![WriteOp::PutMedia(
                server_name.to_owned(),
                media_id.to_owned(),
                record,
            )])
            .await?;
        Ok(true)
    }

    /// Takes down everything a user uploaded; answers how many items.
    pub async fn quarantine_user(&self, user: &UserId) -> Result<usize> {
        let mut n = 0;
        for (server, id, _) in self.store.media_of_user(user.as_str())? {
            if self.quarantine(&server, &id).await? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Like [`Self::get`], but waits up to `wait` for the bytes of a created media id.
    pub async fn get_waiting(
        &self,
        server_name: &str,
        media_id: &str,
        wait: std::time::Duration,
    ) -> Result<(MediaRecord, PathBuf)> {
        if server_name != self.server_name.as_str() {
            return self.remote_media(server_name, media_id).await;
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self.get(server_name, media_id) {
                Err(Error::NotYetUploaded) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    }

    /// A piece of media of this server, with the file that holds it.
    pub fn get(&self, server_name: &str, media_id: &str) -> Result<(MediaRecord, PathBuf)> {
        if server_name != self.server_name.as_str() {
            return Err(Error::not_found("Remote media is not available yet"));
        }
        let record = self
            .store
            .media(server_name, media_id)?
            .filter(|r| !r.quarantined)
            .ok_or_else(|| Error::not_found("Media not found"))?;
        if record.pending {
            return Err(Error::NotYetUploaded);
        }
        let path = self.path_of(&record.sha256);
        Ok((record, path))
    }

    fn path_of(&self, sha256: &str) -> PathBuf {
        self.dir.join(&sha256[..2]).join(sha256)
    }
}

/// Makes a rename into `dir` durable.
async fn sync_dir(dir: &Path) -> Result<()> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || std::fs::File::open(&dir).and_then(|d| d.sync_all()))
        .await
        .map_err(Error::internal)?
        .map_err(io)
}
