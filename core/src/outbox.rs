//! The outbox: local events waiting to be sent to other servers.
//!
//! A local event is queued for each server in its room in the same commit as the event itself
//! (see `Rooms::prepare`), so an acknowledged event is always sent, across crashes and restarts.
//! The federation crate drains the queue per destination and deletes what a server accepted.

use std::sync::Arc;

use hearth_storage::{Store, StreamPos, WriteOp};
use ruma::{EventId, ServerName};
use serde_json::value::RawValue as RawJsonValue;

use crate::{Error, Result};

pub struct Outbox {
    store: Arc<dyn Store>,
}

/// A queued event as its PDU JSON, with its queue position.
pub struct Outbound {
    pub pos: StreamPos,
    pub pdu: Box<RawJsonValue>,
}

impl Outbox {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// Servers with events waiting (after a restart: where to resume).
    pub fn destinations(&self) -> Result<Vec<String>> {
        Ok(self.store.outbound_destinations()?)
    }

    /// The oldest events waiting for a server, at most `limit` (a transaction's worth).
    pub fn pending(&self, destination: &ServerName, limit: usize) -> Result<Vec<Outbound>> {
        let mut out = Vec::new();
        for (pos, id) in self.store.outbound(destination.as_str(), limit)? {
            let json = EventId::parse(&id)
                .ok()
                .and_then(|_| self.store.event_json(&id).transpose())
                .transpose()?;
            match json {
                Some(bytes) => out.push(Outbound {
                    pos,
                    pdu: RawJsonValue::from_string(
                        String::from_utf8(bytes).map_err(Error::internal)?,
                    )?,
                }),
                None => tracing::warn!(event_id = %id, "queued event is gone; skipping it"),
            }
        }
        Ok(out)
    }

    /// The server accepted everything up to `upto`.
    pub async fn sent(&self, destination: &ServerName, upto: StreamPos) -> Result<()> {
        self.store
            .submit(vec![WriteOp::DeleteOutbound {
                destination: destination.to_string(),
                upto,
            }])
            .await?;
        Ok(())
    }
}
