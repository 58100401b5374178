//! Outgoing transactions: one task per destination drains that server's outbox.
//!
//! The outbox is durable (see `hearth_core::outbox`), so the task only has to send what is
//! queued, oldest first and in batches, delete what the server accepted, and back off
//! exponentially while the server cannot be reached. It sleeps until the core says something
//! new was queued; after a restart, [`Federation::start_sending`] resumes every non-empty queue.
//! Ephemeral updates (typing, receipts) ride along in the same transactions; they are kept in
//! memory only and dropped when a transaction fails, as typing would be stale by the retry.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hearth_core::Core;
use http::Method;
use ruma::{OwnedServerName, ServerName};
use serde_json::json;
use tokio::sync::Notify;

use crate::Federation;

/// The spec's limits per transaction.
const MAX_PDUS: usize = 50;
const MAX_EDUS: usize = 100;
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(600);

impl Federation {
    /// Starts sending: resumes every destination with queued events. Call once the core exists.
    pub fn start_sending(self: &Arc<Self>, core: Arc<Core>) {
        if self.core.set(core.clone()).is_err() {
            return;
        }
        match core.outbox.destinations() {
            Ok(dests) => {
                let dests: Vec<OwnedServerName> = dests
                    .iter()
                    .filter_map(|d| ServerName::parse(d).ok())
                    .collect();
                self.wake_senders(&dests);
            }
            Err(e) => tracing::error!(error = %e, "reading the federation outbox failed"),
        }
    }

    /// Wakes (starting where needed) the sender of each destination.
    pub(crate) fn wake_senders(&self, destinations: &[OwnedServerName]) {
        let Some(this) = self.this.upgrade() else {
            return;
        };
        let mut queues = self.queues.lock();
        for dest in destinations {
            let notify = queues.entry(dest.clone()).or_insert_with(|| {
                let notify = Arc::new(Notify::new());
                tokio::spawn(this.clone().send_loop(dest.clone(), notify.clone()));
                notify
            });
            // A permit is kept if the task is busy, so a wake-up is never lost.
            notify.notify_one();
        }
    }

    async fn send_loop(self: Arc<Self>, dest: OwnedServerName, wake: Arc<Notify>) {
        let Some(core) = self.core.get().cloned() else {
            return;
        };
        let mut backoff = MIN_BACKOFF;
        loop {
            let batch = match core.outbox.pending(&dest, MAX_PDUS) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(destination = %dest, error = %e, "reading the outbox failed");
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            };
            let edus: Vec<serde_json::Value> = {
                let mut all = self.edus.lock();
                let queue = all.entry(dest.clone()).or_default();
                let n = queue.len().min(MAX_EDUS);
                queue.drain(..n).collect()
            };
            if batch.is_empty() && edus.is_empty() {
                wake.notified().await;
                continue;
            }
            let last = batch.last().map(|o| o.pos);
            // Positions are unique and only grow: a retried batch of PDUs keeps its id, so the
            // peer recognises a transaction it already processed. EDU-only transactions take a
            // fresh id.
            let txn_id = match last {
                Some(l) => format!("{}-{l}", batch[0].pos),
                None => format!("e{}", self.edu_txns.fetch_add(1, Ordering::Relaxed)),
            };
            let body = json!({
                "origin": self.keys.server_name,
                "origin_server_ts": hearth_core::util::now_ms(),
                "pdus": batch.iter().map(|o| &o.pdu).collect::<Vec<_>>(),
                "edus": edus,
            });
            let path = format!("/_matrix/federation/v1/send/{txn_id}");
            match self
                .client
                .request(&dest, Method::PUT, &path, Some(&body))
                .await
            {
                Ok(resp) => {
                    for (id, result) in resp["pdus"].as_object().into_iter().flatten() {
                        if let Some(err) = result.get("error") {
                            tracing::warn!(destination = %dest, event_id = %id, error = %err, "peer rejected an event");
                        }
                    }
                    if let Some(last) = last
                        && let Err(e) = core.outbox.sent(&dest, last).await
                    {
                        tracing::error!(destination = %dest, error = %e, "clearing the outbox failed");
                    }
                    tracing::debug!(destination = %dest, pdus = batch.len(), "transaction sent");
                    backoff = MIN_BACKOFF;
                }
                Err(e) => {
                    tracing::warn!(destination = %dest, error = %e.message, retry_in = ?backoff, "transaction failed");
                    // Sleep, but wake early when more is queued: the peer may be back.
                    let _ = tokio::time::timeout(backoff, wake.notified()).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}
