//! Redactions (spec: "Redactions"): who may redact what, and pruning the redacted event's
//! stored content by its room version's redaction algorithm.
//!
//! The redaction event and the pruning of its target commit together. The target stays in the
//! graph (its hashes and signatures still verify: they cover the redacted form), but what was
//! cut is gone from the events table, the relations index and, through the search indexer
//! following the event stream, the search index.

use std::sync::Arc;

use hearth_storage::WriteOp;
use hearth_storage::relations::RelationOp;
use ruma::canonical_json::redact;
use ruma::{CanonicalJsonObject, EventId, OwnedEventId, UserId};

use super::relations::relation_of;
use super::version::power_level;
use super::{Batch, Pdu, PduRef, RoomHead, Rooms};
use crate::{Error, Result};

impl Rooms {
    /// The room's `redact` power level (50 without a power levels event).
    fn redact_level(&self, head: &RoomHead) -> Result<i64> {
        let pl = head
            .state
            .get(&("m.room.power_levels".into(), String::new()))
            .and_then(|id| self.pdu(id).ok().flatten())
            .map(|p| p.content_value());
        Ok(pl.and_then(|pl| power_level(&pl["redact"])).unwrap_or(50))
    }

    /// What Synapse checks before a local user's redaction is built: the target is known and in
    /// this room, is no server ACL, and is the user's own unless their power level reaches the
    /// room's `redact` level.
    pub(crate) fn check_redaction(
        &self,
        head: &RoomHead,
        sender: &UserId,
        target: &EventId,
    ) -> Result<()> {
        let Some(original) = self.pdu(target)? else {
            return Err(Error::not_found("Event not found."));
        };
        if original.room_id != head.room_id {
            return Err(Error::Unknown(
                "Cannot redact event from a different room".into(),
            ));
        }
        if original.kind.to_string() == "m.room.server_acl" {
            return Err(Error::forbidden(
                "Redacting server ACL events is not permitted",
            ));
        }
        if original.sender != sender && self.power_of(head, sender)? < self.redact_level(head)? {
            return Err(Error::forbidden(
                "You don't have permission to redact events",
            ));
        }
        Ok(())
    }

    /// For an authorised redaction about to be appended (local or from another server): prunes
    /// its target in the same batch, if the redaction takes effect. It does when its sender's
    /// power level reaches the `redact` level or it comes from the target sender's own server
    /// (room versions 3 and later apply this check here, not in the auth rules).
    pub(crate) fn queue_redaction(
        &self,
        head: &RoomHead,
        redaction: &Pdu,
        batch: &mut Batch,
    ) -> Result<()> {
        use ruma::state_res::Event as _;
        let Some(target) = redaction.redacts() else {
            return Ok(());
        };
        // A target that is not durable yet is left as it is: a client cannot have been shown it.
        let Some(meta) = self.store.event_meta(target.as_str())? else {
            return Ok(());
        };
        if meta.room_id != head.room_id.as_str() || meta.redacted_by.is_some() {
            return Ok(());
        }
        let Some(original) = self.pdu(target)? else {
            return Ok(());
        };
        let allowed = original.sender.server_name() == redaction.sender.server_name()
            || self.power_of(head, &redaction.sender)? >= self.redact_level(head)?;
        if !allowed {
            return Ok(());
        }
        let Some(json) = self.store.event_json(target.as_str())? else {
            return Ok(());
        };
        let obj: CanonicalJsonObject = serde_json::from_slice(&json)?;
        let pruned = redact(obj, &head.rules.redaction, None)
            .map_err(|e| Error::internal(format!("redacting {target}: {e}")))?;
        let json = serde_json::to_vec(&pruned)?;
        let pruned = Pdu::parse(target.clone(), &json, Some(&head.room_id))?;
        batch.ops.push(WriteOp::Relations(RelationOp::Redact {
            event_id: target.to_string(),
            json,
            redacted_by: redaction.event_id.to_string(),
            parent: relation_of(original.content.get()).map(|r| r.parent),
        }));
        batch.redacted.push(Arc::new(pruned));
        Ok(())
    }

    /// Once a batch with redactions is durable: readers must not find the pruned events' old
    /// form in a cache.
    pub(crate) fn forget_redacted(&self, redacted: &[PduRef]) {
        if redacted.is_empty() {
            return;
        }
        self.redaction_gen
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut events = self.events.lock();
        let mut metas = self.metas.lock();
        let mut aggregations = self.aggregations.lock();
        for pdu in redacted {
            events.put(pdu.event_id.clone(), pdu.clone());
            metas.pop(&pdu.event_id);
            aggregations.pop(&pdu.event_id);
        }
    }

    /// Drops cached metas of events whose meta was rewritten (outliers that found their place
    /// in the room's history), so that no reader keeps the old one.
    pub(crate) fn forget_metas(&self, ids: &[OwnedEventId]) {
        if ids.is_empty() {
            return;
        }
        self.redaction_gen
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut metas = self.metas.lock();
        for id in ids {
            metas.pop(id);
        }
    }
}
