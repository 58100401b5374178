//! Building, signing and authorising a locally made event.

use std::sync::Arc;

use hearth_storage::{AppendEvent, EventMeta, MembershipRecord, TxnRef, WriteOp};
use ruma::events::TimelineEventType;
use ruma::room_version_rules::RoomVersionRules;
use ruma::state_res::{check_state_dependent_auth_rules, check_state_independent_auth_rules};
use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, UserId};
use serde_json::{Value, json};

use super::pdu::{Pdu, PduRef};
use super::state::{StateMap, next_group};
use super::version::VersionRules;
use super::{Batch, RoomHead, Rooms};
use crate::util::now_ms;
use crate::{Error, Result};

/// What a local user (or the server on their behalf) wants to add to a room.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub kind: String,
    pub state_key: Option<String>,
    pub content: Value,
    pub redacts: Option<OwnedEventId>,
    pub txn: Option<TxnRef>,
}

impl NewEvent {
    pub fn state(kind: &str, state_key: &str, content: Value) -> Self {
        Self {
            kind: kind.into(),
            state_key: Some(state_key.into()),
            content,
            redacts: None,
            txn: None,
        }
    }
    pub fn message(kind: &str, content: Value) -> Self {
        Self {
            kind: kind.into(),
            state_key: None,
            content,
            redacts: None,
            txn: None,
        }
    }
}

impl Rooms {
    /// Names, hashes and signs a PDU as its room version does; its event id.
    pub(crate) fn sign(
        &self,
        rules: &RoomVersionRules,
        obj: &mut CanonicalJsonObject,
    ) -> Result<OwnedEventId> {
        rules.sign_event(self.config.server_name.as_str(), &self.keys.key_pair, obj)
    }

    /// Builds the next event of the room on top of `head`, checks it against the auth rules and
    /// the current state, and advances `head`. The writes land in `batch`.
    pub(crate) fn prepare(
        &self,
        head: &mut RoomHead,
        sender: &UserId,
        ev: NewEvent,
        batch: &mut Batch,
    ) -> Result<PduRef> {
        let txn = ev.txn.clone();
        let (pdu, obj) = self.build(head, sender, ev)?;
        self.append_to_head(head, pdu.clone(), obj, txn, batch)?;
        self.queue_outbound(head, &pdu, batch);
        Ok(pdu)
    }

    /// Builds, signs and authorises the next event of the room on top of `head`, without
    /// touching the head.
    pub(crate) fn build(
        &self,
        head: &RoomHead,
        sender: &UserId,
        ev: NewEvent,
    ) -> Result<(PduRef, CanonicalJsonObject)> {
        if !ev.content.is_object() {
            return Err(Error::BadJson("event content must be a JSON object".into()));
        }
        self.check_relation(head, sender, &ev)?;
        let redacts = ev.redacts.clone().or_else(|| {
            (ev.kind == "m.room.redaction")
                .then(|| ev.content["redacts"].as_str())
                .flatten()
                .and_then(|r| OwnedEventId::try_from(r).ok())
        });
        if let Some(target) = &redacts {
            self.check_redaction(head, sender, target)?;
        }
        let kind = TimelineEventType::from(ev.kind.as_str());
        let content_raw = serde_json::value::to_raw_value(&ev.content)?;
        let auth_types = ruma::state_res::auth_types_for_event(
            &kind,
            sender,
            ev.state_key.as_deref(),
            &content_raw,
            &head.rules.authorization,
        )
        .map_err(Error::BadJson)?;
        let mut auth_events: Vec<OwnedEventId> = auth_types
            .iter()
            .filter_map(|(t, k)| head.state.get(&(t.to_string(), k.clone())).cloned())
            .collect();
        auth_events.sort();
        auth_events.dedup();

        let depth = head.depth + 1;
        let mut pdu = json!({
            "auth_events": self.event_refs(&head.rules, &auth_events)?,
            "prev_events": self.event_refs(&head.rules, &head.extremities)?,
            "content": ev.content,
            "depth": depth,
            "origin_server_ts": now_ms(),
            "room_id": head.room_id,
            "sender": sender,
            "type": ev.kind,
        });
        if let Some(k) = &ev.state_key {
            pdu["state_key"] = json!(k);
        }
        if let Some(r) = &ev.redacts {
            if head.rules.redacts_in_content() {
                pdu["content"]["redacts"] = json!(r);
            } else {
                pdu["redacts"] = json!(r);
            }
        }
        let mut obj = to_canonical(pdu)?;
        let event_id = self.sign(&head.rules, &mut obj)?;
        let pdu = Arc::new(Pdu::from_canonical(event_id.clone(), &obj)?);

        self.authorize(&head.rules, &pdu, &head.state)?;
        Ok((pdu, obj))
    }

    /// `prev_events` or `auth_events` of a new event, as its room version writes them.
    pub(crate) fn event_refs(
        &self,
        rules: &RoomVersionRules,
        ids: &[OwnedEventId],
    ) -> Result<Value> {
        let mut refs = Vec::with_capacity(ids.len());
        for id in ids {
            let hash = match rules.references_carry_hashes() {
                true => self.pdu(id)?.and_then(|p| p.content_hash.clone()),
                false => None,
            };
            refs.push((id.clone(), hash));
        }
        Ok(rules.event_refs(&refs))
    }

    /// Queues a local event for every other server with a member joined to the room (after the
    /// event: a remote user's leave still reaches their server), in the event's own batch, so
    /// that an event is durable if and only if its sending is.
    pub(crate) fn queue_outbound(&self, head: &RoomHead, pdu: &PduRef, batch: &mut Batch) {
        let ours = self.server_name();
        let mut servers: std::collections::BTreeSet<ruma::OwnedServerName> = head
            .joined_servers()
            .into_iter()
            .filter(|s| *s != ours)
            .map(ToOwned::to_owned)
            .collect();
        // Invites go through the invitee's server first (`/invite`), not through the outbox.
        let leaves = matches!(pdu.membership().as_deref(), Some("leave" | "ban"));
        if let Some(target) = pdu.state_key.as_deref().filter(|_| leaves)
            && let Ok(user) = UserId::parse(target)
            && user.server_name() != ours
        {
            servers.insert(user.server_name().to_owned());
        }
        for server in servers {
            batch.ops.push(WriteOp::PutOutbound {
                destination: server.to_string(),
                event_id: pdu.event_id.to_string(),
            });
            batch.outbound.insert(server);
        }
    }

    /// Runs the room version's auth rules for `pdu` against `state` (the state before it).
    pub(crate) fn authorize(
        &self,
        rules: &RoomVersionRules,
        pdu: &PduRef,
        state: &StateMap,
    ) -> Result<()> {
        let fetch_event = |id: &ruma::EventId| self.pdu(id).ok().flatten();
        // An auth event of a type the selection algorithm would not pick (SyTest's peer lists
        // the join rules under a message) is ignored, as Synapse ignores it; the state decides.
        let trimmed = self.without_unexpected_auth_events(rules, pdu)?;
        check_state_independent_auth_rules(
            &rules.authorization,
            trimmed.as_deref().unwrap_or(&**pdu),
            fetch_event,
        )
        .map_err(|e| Error::Forbidden(format!("auth check failed: {e}")))?;
        let fetch_state = |t: &ruma::events::StateEventType, k: &str| {
            state
                .get(&(t.to_string(), k.to_owned()))
                .and_then(|id| self.pdu(id).ok().flatten())
        };
        check_state_dependent_auth_rules(&rules.authorization, &**pdu, fetch_state)
            .map_err(|e| Error::Forbidden(format!("auth check failed: {e}")))
    }

    /// The PDU without the auth events the auth events selection algorithm would not pick for
    /// it, or `None` when it has none such. Auth events this server lacks, or of another room,
    /// stay: the auth rules refuse them.
    fn without_unexpected_auth_events(
        &self,
        rules: &RoomVersionRules,
        pdu: &Pdu,
    ) -> Result<Option<Box<Pdu>>> {
        if pdu.kind == ruma::events::TimelineEventType::RoomCreate {
            return Ok(None);
        }
        let Ok(expected) = ruma::state_res::auth_types_for_event(
            &pdu.kind,
            &pdu.sender,
            pdu.state_key.as_deref(),
            &pdu.content,
            &rules.authorization,
        ) else {
            return Ok(None);
        };
        let mut keep = Vec::with_capacity(pdu.auth_events.len());
        for id in &pdu.auth_events {
            let unexpected = match self.pdu(id)? {
                Some(a) if a.room_id == pdu.room_id => a.state_key.as_ref().is_some_and(|k| {
                    !expected
                        .iter()
                        .any(|(t, ek)| t.to_string() == a.kind.to_string() && ek == k)
                }),
                _ => false,
            };
            if !unexpected {
                keep.push(id.clone());
            }
        }
        if keep.len() == pdu.auth_events.len() {
            return Ok(None);
        }
        let mut trimmed = pdu.clone();
        trimmed.auth_events = keep;
        Ok(Some(Box::new(trimmed)))
    }

    /// Queues an event outside the timeline; `state_after` is its state group, or 0 when none
    /// is known.
    pub(crate) fn put_outlier(
        &self,
        room_id: &ruma::RoomId,
        pdu: &PduRef,
        obj: CanonicalJsonObject,
        state_after: u64,
        batch: &mut Batch,
    ) -> Result<()> {
        self.put_outside_timeline(room_id, pdu, obj, state_after, None, batch)
    }

    /// Queues an event outside the timeline, marked as rejected or soft-failed when `refused`.
    pub(crate) fn put_outside_timeline(
        &self,
        room_id: &ruma::RoomId,
        pdu: &PduRef,
        obj: CanonicalJsonObject,
        state_after: u64,
        refused: Option<hearth_storage::Refused>,
        batch: &mut Batch,
    ) -> Result<()> {
        batch.ops.push(hearth_storage::WriteOp::PutOutlier {
            event_id: pdu.event_id.to_string(),
            json: serde_json::to_vec(&obj)?,
            meta: hearth_storage::EventMeta {
                room_id: room_id.to_string(),
                pos: 0,
                state_before: 0,
                state_after,
                txn: None,
                replaces_state: None,
                redacted_by: None,
                history_seq: None,
                refused,
            },
            membership: None,
        });
        batch.events.push(pdu.clone());
        Ok(())
    }

    /// Advances the head past an authorised event and queues its writes.
    pub(crate) fn append_to_head(
        &self,
        head: &mut RoomHead,
        pdu: PduRef,
        obj: CanonicalJsonObject,
        txn: Option<TxnRef>,
        batch: &mut Batch,
    ) -> Result<()> {
        let state_before = head.state_group;
        let mut replaces_state = None;
        let mut membership = None;
        if let Some(key) = &pdu.state_key {
            let slot = (pdu.kind.to_string(), key.clone());
            let mut map = (*head.state).clone();
            replaces_state = map
                .insert(slot.clone(), pdu.event_id.clone())
                .map(|e| e.to_string());
            let group_id = self.allocate_group();
            let prev = (head.state_group != 0).then_some((head.state_group, &head.state_group_rec));
            let rec = next_group(
                head.room_id.as_str(),
                prev,
                &map,
                &[(slot, pdu.event_id.clone())],
            );
            self.pending_groups.lock().insert(group_id, rec.clone());
            batch
                .ops
                .push(WriteOp::PutStateGroup(group_id, rec.clone()));
            batch.groups.push((group_id, rec.clone()));
            head.state_group = group_id;
            head.state_group_rec = rec;
            head.state = Arc::new(map);
            if let Some(m) = pdu.membership()
                && let Ok(user) = UserId::parse(key.as_str())
            {
                batch.notify.insert(user.clone());
                head.set_membership(user, m.clone());
                membership = Some((
                    key.clone(),
                    MembershipRecord {
                        membership: m,
                        event_id: pdu.event_id.to_string(),
                        pos: 0,
                        forgotten: false,
                    },
                ));
            }
        }
        self.queue_redaction(head, &pdu, batch)?;
        // A local event extends all extremities; a remote one may extend only some.
        head.extremities.retain(|e| !pdu.prev_events.contains(e));
        head.extremities.push(pdu.event_id.clone());
        head.depth = head.depth.max(pdu.depth);
        batch.notify.extend(head.interested_users().cloned());

        let meta = EventMeta {
            room_id: head.room_id.to_string(),
            pos: 0,
            state_before,
            state_after: head.state_group,
            txn: txn.clone(),
            replaces_state,
            redacted_by: None,
            history_seq: None,
            refused: None,
        };
        self.pending_events
            .lock()
            .insert(pdu.event_id.clone(), pdu.clone());
        self.pending_state_after
            .lock()
            .insert(pdu.event_id.clone(), head.state_group);
        if let Some(t) = &txn {
            self.pending_txns
                .lock()
                .insert(t.clone(), pdu.event_id.clone());
            batch.txns.push(t.clone());
        }
        batch.ops.push(WriteOp::AppendEvent(Box::new(AppendEvent {
            event_id: pdu.event_id.to_string(),
            json: serde_json::to_vec(&obj)?,
            meta,
            room: head.record(),
            membership,
            relation: super::relations::relation_of(pdu.content.get()),
            event_type: pdu.kind.to_string(),
            sender: pdu.sender.to_string(),
        })));
        batch.events.push(pdu);
        Ok(())
    }
}

pub(crate) fn to_canonical(v: Value) -> Result<CanonicalJsonObject> {
    match CanonicalJsonValue::try_from(v) {
        Ok(CanonicalJsonValue::Object(o)) => Ok(o),
        Ok(_) => Err(Error::BadJson("event must be a JSON object".into())),
        Err(e) => Err(Error::BadJson(format!("not canonical JSON: {e}"))),
    }
}
