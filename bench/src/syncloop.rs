//! Receivers: one task per user that long-polls /sync and hands every response, stamped with
//! the moment it arrived, to the scenario over a channel.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::BoxError;
use crate::api::{Api, ApiError};
use crate::matrix::SyncResponse;
use crate::users::User;

/// Only for each receiver's first /sync: a big room's full member list would make setup slow
/// and is not what the scenarios measure.
pub const INITIAL_SYNC_FILTER: &str =
    r#"{"room":{"timeline":{"limit":1},"state":{"lazy_load_members":true}}}"#;

/// One /sync response (or WebSocket sync frame) of receiver `idx`.
pub struct Update {
    pub idx: usize,
    pub at: Instant,
    pub sync: SyncResponse,
}

#[derive(Clone)]
pub struct SyncOpts {
    pub timeout_ms: u64,
    pub set_presence: String,
}

/// The token to long-poll from. Falls back to no filter for servers that reject inline ones.
pub async fn initial_sync(api: &Api, user: &User, set_presence: &str) -> Result<String, ApiError> {
    let r = api
        .sync(&user.auth, None, 0, Some(INITIAL_SYNC_FILTER), set_presence)
        .await;
    let r = match r {
        Err(e) if e.status() == Some(400) => {
            api.sync(&user.auth, None, 0, None, set_presence).await
        }
        r => r,
    };
    Ok(r?.0.next_batch)
}

/// Running receivers; dropping them stops them.
pub struct Pollers {
    tasks: Vec<JoinHandle<()>>,
    errors: Arc<AtomicU64>,
}

impl Pollers {
    pub fn errors(&self) -> u64 {
        self.errors.load(Relaxed)
    }
}

impl Drop for Pollers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Initial syncs (bounded), then one long-poll loop per user, then a pause so the long-polls are
/// parked on the server before anything is sent.
pub async fn start(
    api: &Arc<Api>,
    users: &[User],
    opts: &SyncOpts,
    concurrency: usize,
    tx: mpsc::UnboundedSender<Update>,
) -> Result<Pollers, BoxError> {
    let sinces: Vec<Result<String, ApiError>> = futures_util::stream::iter(users)
        .map(|u| initial_sync(api, u, &opts.set_presence))
        .buffered(concurrency.max(1))
        .collect()
        .await;
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(users.len());
    for (idx, (user, since)) in users.iter().zip(sinces).enumerate() {
        tasks.push(tokio::spawn(poll(
            Arc::clone(api),
            user.clone(),
            idx,
            since?,
            opts.clone(),
            tx.clone(),
            Arc::clone(&errors),
        )));
    }
    tokio::time::sleep(Duration::from_millis(300 + 2 * users.len() as u64)).await;
    Ok(Pollers { tasks, errors })
}

async fn poll(
    api: Arc<Api>,
    user: User,
    idx: usize,
    mut since: String,
    opts: SyncOpts,
    tx: mpsc::UnboundedSender<Update>,
    errors: Arc<AtomicU64>,
) {
    loop {
        match api
            .sync(
                &user.auth,
                Some(&since),
                opts.timeout_ms,
                None,
                &opts.set_presence,
            )
            .await
        {
            Ok((sync, at)) => {
                since.clone_from(&sync.next_batch);
                if tx.send(Update { idx, at, sync }).is_err() {
                    return;
                }
            }
            Err(e) => {
                if errors.fetch_add(1, Relaxed) < 3 {
                    crate::log!("sync error for {}: {e}", user.user_id);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}
