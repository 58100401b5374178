//! The room side of federation: the join template a remote user signs (`make_join`), appending
//! a PDU made on another server (`send_join`, `/send`), the state and auth chain a joining server
//! needs, and taking in a room this server joined elsewhere ([`RemoteJoin`]).

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use ruma::events::TimelineEventType;
use ruma::{CanonicalJsonObject, EventId, OwnedEventId, RoomId, RoomVersionId, UserId};
use serde_json::value::RawValue as RawJsonValue;
use serde_json::{Value, json};

use super::pdu::{Pdu, PduRef};
use super::{Batch, Rooms};
use crate::util::now_ms;
use crate::{Error, Result};

/// What joining a room on another server brought back: our signed join event, and the room's
/// state before it with its auth chain, all checked (signatures, hashes) by the federation crate.
pub struct RemoteJoin {
    pub room_version: RoomVersionId,
    pub event_id: OwnedEventId,
    pub event: CanonicalJsonObject,
    pub state: Vec<(OwnedEventId, CanonicalJsonObject)>,
    pub auth_chain: Vec<(OwnedEventId, CanonicalJsonObject)>,
}

/// What became of a PDU another server sent (see [`Rooms::receive_remote`]).
pub enum Received {
    /// In the timeline and, for a state event, the room state.
    Appended(PduRef),
    /// Allowed by the state before it but not by the current state: kept in the graph only.
    SoftFailed(PduRef),
    /// Refused by the auth rules against the state before it: kept as rejected, with why.
    Rejected(PduRef, String),
}

/// A room's state and the auth chain behind it, as PDU JSON.
pub struct StateAndAuthChain {
    pub state: Vec<Box<RawJsonValue>>,
    pub auth_chain: Vec<Box<RawJsonValue>>,
}

impl Rooms {
    /// Takes a room this server has just joined over federation: stores the state and auth
    /// events the resident server sent (outside the timeline), makes a head with that state, and
    /// appends our join on top of it, all in one commit.
    pub async fn ingest_remote_join(&self, room_id: &RoomId, join: RemoteJoin) -> Result<PduRef> {
        let rules = join.room_version.rules().ok_or_else(|| {
            Error::UnsupportedRoomVersion(format!("room version {}", join.room_version))
        })?;
        let room = room_id.to_string();
        let mut batch = Batch::default();
        let mut state = super::StateMap::new();
        let mut members = std::collections::HashMap::new();
        let mut seen = std::collections::HashSet::new();
        // The state before our join; a resident that counted the join in it is not followed,
        // or the join would replace itself.
        let in_state: std::collections::HashSet<&OwnedEventId> = join
            .state
            .iter()
            .map(|(id, _)| id)
            .filter(|id| **id != join.event_id)
            .collect();
        for (id, obj) in join.auth_chain.iter().chain(join.state.iter()) {
            if *id == join.event_id || !seen.insert(id.clone()) {
                continue;
            }
            let pdu = Arc::new(Pdu::from_canonical(id.clone(), obj)?);
            if in_state.contains(id)
                && let Some(key) = &pdu.state_key
            {
                state.insert((pdu.kind.to_string(), key.clone()), id.clone());
                if let (Some(m), Ok(user)) = (pdu.membership(), UserId::parse(key.as_str())) {
                    members.insert(user, m);
                }
            }
            if self.pdu(id)?.is_some() {
                continue;
            }
            self.pending_events.lock().insert(id.clone(), pdu.clone());
            self.put_outlier(room_id, &pdu, obj.clone(), 0, &mut batch)?;
        }
        let join_pdu = Arc::new(Pdu::from_canonical(join.event_id.clone(), &join.event)?);
        let group = self.allocate_group();
        let rec = super::state::next_group(&room, None, &state, &[]);
        self.pending_groups.lock().insert(group, rec.clone());
        batch
            .ops
            .push(hearth_storage::WriteOp::PutStateGroup(group, rec.clone()));
        batch.groups.push((group, rec.clone()));
        let joined = members.values().filter(|m| *m == "join").count();
        let mut head = super::RoomHead {
            room_id: room_id.to_owned(),
            version: join.room_version.clone(),
            rules: rules.clone(),
            extremities: join_pdu.prev_events.clone(),
            depth: join_pdu.depth.saturating_sub(1),
            state_group: group,
            state_group_rec: rec,
            state: Arc::new(state),
            members,
            joined,
            is_public: false,
        };
        let queued = {
            self.authorize(&rules, &join_pdu, &head.state)?;
            self.append_to_head(&mut head, join_pdu, join.event, None, &mut batch)?;
            let head = Arc::new(parking_lot::Mutex::new(head));
            let queued = {
                let h = head.lock();
                self.enqueue(&h, batch)
            };
            self.heads.lock().insert(room_id.to_owned(), head);
            queued
        };
        let mut events = self.finish(queued).await?;
        Ok(events.pop().expect("the join was appended"))
    }

    /// The join event `user` (of another server) would send, unsigned, and the room version.
    /// Refused early when the auth rules would refuse the join.
    pub fn join_template(&self, room_id: &RoomId, user: &UserId) -> Result<(RoomVersionId, Value)> {
        self.member_template(room_id, user, "join")
    }

    /// A `make_leave` template: the member event of a remote user turning an invite down (or
    /// leaving), checked against the current state.
    pub fn leave_template(
        &self,
        room_id: &RoomId,
        user: &UserId,
    ) -> Result<(RoomVersionId, Value)> {
        self.member_template(room_id, user, "leave")
    }

    /// A `make_knock` template: the member event of a remote user asking to be let in.
    pub fn knock_template(
        &self,
        room_id: &RoomId,
        user: &UserId,
    ) -> Result<(RoomVersionId, Value)> {
        self.member_template(room_id, user, "knock")
    }

    fn member_template(
        &self,
        room_id: &RoomId,
        user: &UserId,
        membership: &str,
    ) -> Result<(RoomVersionId, Value)> {
        let head = self.head(room_id)?;
        let h = head.lock();
        let content = json!({ "membership": membership });
        let kind = TimelineEventType::RoomMember;
        let raw = serde_json::value::to_raw_value(&content)?;
        let auth_types = ruma::state_res::auth_types_for_event(
            &kind,
            user,
            Some(user.as_str()),
            &raw,
            &h.rules.authorization,
        )
        .map_err(Error::BadJson)?;
        let mut auth_events: Vec<OwnedEventId> = auth_types
            .iter()
            .filter_map(|(t, k)| h.state.get(&(t.to_string(), k.clone())).cloned())
            .collect();
        auth_events.sort();
        auth_events.dedup();
        let template = json!({
            "room_id": room_id,
            "sender": user,
            "type": "m.room.member",
            "state_key": user,
            "content": content,
            "origin_server_ts": now_ms(),
            "depth": h.depth + 1,
            "prev_events": self.event_refs(&h.rules, &h.extremities)?,
            "auth_events": self.event_refs(&h.rules, &auth_events)?,
        });
        // Try the event against the current state before the other server signs anything.
        let probe_id = OwnedEventId::try_from("$make_member_probe").map_err(Error::internal)?;
        let probe = Arc::new(Pdu::parse(
            probe_id,
            &serde_json::to_vec(&template)?,
            Some(room_id),
        )?);
        self.authorize(&h.rules, &probe, &h.state)?;
        Ok((h.version.clone(), template))
    }

    /// Appends a PDU made on another server that passed the signature checks, if the auth
    /// rules allow it against the current state. Appending the same event twice is a no-op.
    pub async fn append_remote(
        &self,
        room_id: &RoomId,
        event_id: OwnedEventId,
        obj: CanonicalJsonObject,
    ) -> Result<PduRef> {
        self.append_signed(room_id, event_id, obj, false).await
    }

    /// Takes a PDU of a transaction (`/send`) or of a gap that passed the signature checks.
    /// One the auth rules refuse against the state before it is not an error here, as Synapse
    /// treats it: it is kept as a rejected event (outside the timeline and the state, with the
    /// state before it as its state after, so that what builds on it sees the room unchanged);
    /// one that passes there but not against the current state is soft-failed.
    pub async fn receive_remote(
        &self,
        room_id: &RoomId,
        event_id: OwnedEventId,
        obj: CanonicalJsonObject,
    ) -> Result<Received> {
        self.append_checked(room_id, event_id, obj, false, true)
            .await
    }

    /// Appends a PDU whose signatures were checked, if the auth rules allow it against the
    /// state before it (see `forks.rs`); one they allow there but not against the current state
    /// is soft-failed. `ours` marks an event this server made (an invite another server
    /// countersigned): it is queued for the other servers in the room like any local event.
    pub(crate) async fn append_signed(
        &self,
        room_id: &RoomId,
        event_id: OwnedEventId,
        obj: CanonicalJsonObject,
        ours: bool,
    ) -> Result<PduRef> {
        match self
            .append_checked(room_id, event_id, obj, ours, false)
            .await?
        {
            Received::Appended(pdu) | Received::SoftFailed(pdu) => Ok(pdu),
            Received::Rejected(_, reason) => Err(Error::Forbidden(reason)),
        }
    }

    async fn append_checked(
        &self,
        room_id: &RoomId,
        event_id: OwnedEventId,
        obj: CanonicalJsonObject,
        ours: bool,
        keep_rejected: bool,
    ) -> Result<Received> {
        let head = self.head(room_id)?;
        let (queued, outcome) = {
            let mut h = head.lock();
            if let Some(existing) = self.pdu(&event_id)? {
                return Ok(Received::Appended(existing));
            }
            let pdu = Arc::new(Pdu::from_canonical(event_id, &obj)?);
            if pdu.room_id != room_id {
                return Err(Error::BadJson("event is for another room".into()));
            }
            for prev in &pdu.prev_events {
                if self.pdu(prev)?.is_none() {
                    return Err(Error::Unknown(format!("unknown prev event {prev}")));
                }
            }
            // Against the state before it (resolved where it joins branches)...
            let state_before = self.state_before_remote(&h, &pdu)?;
            let mut batch = Batch::default();
            let checked = self
                .authorize(&h.rules, &pdu, &state_before)
                .and_then(|()| self.check_redaction_target(&pdu));
            if let Err(e) = checked {
                let (true, Error::Forbidden(reason)) = (keep_rejected, &e) else {
                    return Err(e);
                };
                tracing::info!(room_id = %h.room_id, event_id = %pdu.event_id, error = %reason, "rejected a remote event");
                let reason = reason.clone();
                self.keep_refused(
                    &h,
                    &pdu,
                    obj,
                    &state_before,
                    hearth_storage::Refused::Rejected,
                    &mut batch,
                )?;
                (self.enqueue(&h, batch), Received::Rejected(pdu, reason))
            } else {
                let forked = !Arc::ptr_eq(&state_before, &h.state);
                // ...and against the current state: an event that passes the first check but
                // not this one is soft-failed, kept in the graph but not in the timeline or the
                // state.
                if forked && let Err(e) = self.authorize(&h.rules, &pdu, &h.state) {
                    tracing::info!(room_id = %h.room_id, event_id = %pdu.event_id, error = %e, "soft-failed a remote event");
                    self.keep_refused(
                        &h,
                        &pdu,
                        obj,
                        &state_before,
                        hearth_storage::Refused::SoftFailed,
                        &mut batch,
                    )?;
                    (self.enqueue(&h, batch), Received::SoftFailed(pdu))
                } else {
                    if forked {
                        self.set_head_state(&mut h, (*state_before).clone(), &mut batch)?;
                        self.refresh_members(&mut h)?;
                    }
                    let behind_refused = self.prevs_before_refused(&pdu)?;
                    h.extremities.retain(|e| !behind_refused.contains(e));
                    self.append_to_head(&mut h, pdu.clone(), obj, None, &mut batch)?;
                    if ours {
                        self.queue_outbound(&h, &pdu, &mut batch);
                    }
                    if self.resolve_current(&mut h, &mut batch)? {
                        self.refresh_members(&mut h)?;
                        batch.ops.push(hearth_storage::WriteOp::PutRoom(
                            h.room_id.to_string(),
                            h.record(),
                        ));
                    }
                    (self.enqueue(&h, batch), Received::Appended(pdu))
                }
            }
        };
        let mut events = self.finish(queued).await?;
        Ok(match outcome {
            Received::Appended(_) => {
                Received::Appended(events.pop().expect("one event was appended"))
            }
            other => other,
        })
    }

    /// A redaction of an event of another room is refused (Synapse ignores it): it would
    /// otherwise reach clients as if it had redacted something here. (One that redacts itself
    /// is taken and has no effect: its target is not stored before it.)
    fn check_redaction_target(&self, pdu: &Pdu) -> Result<()> {
        use ruma::state_res::Event as _;
        let Some(target) = pdu.redacts() else {
            return Ok(());
        };
        if let Some(original) = self.pdu(target)?
            && original.room_id != pdu.room_id
        {
            return Err(Error::Forbidden(
                "a redaction cannot redact an event of another room".into(),
            ));
        }
        Ok(())
    }

    /// What `send_join` answers: the room state before `event` (the current state when the
    /// event has no state of its own, as a soft-failed one), and the auth chain of that state
    /// and of the event, each as the PDUs' JSON.
    pub fn state_and_auth_chain(
        &self,
        room_id: &RoomId,
        event: &EventId,
    ) -> Result<StateAndAuthChain> {
        let before = self
            .timeline_event(event)?
            .map(|e| e.meta.state_before)
            .filter(|g| *g != 0);
        let state = match before {
            Some(group) => self.state_at_group(group)?,
            None => self.current_state(room_id)?,
        };
        let state_ids: Vec<OwnedEventId> = state.values().cloned().collect();
        let mut seen: BTreeSet<OwnedEventId> = BTreeSet::new();
        let mut queue: VecDeque<OwnedEventId> = VecDeque::new();
        for id in state_ids.iter().chain([&event.to_owned()]) {
            if let Some(p) = self.pdu(id)? {
                queue.extend(p.auth_events.iter().cloned());
            }
        }
        while let Some(id) = queue.pop_front() {
            if !seen.insert(id.clone()) {
                continue;
            }
            if let Some(p) = self.pdu(&id)? {
                queue.extend(p.auth_events.iter().filter(|a| !seen.contains(*a)).cloned());
            }
        }
        let json = |id: &EventId| -> Result<Option<Box<RawJsonValue>>> {
            match self.store.event_json(id.as_str())? {
                Some(bytes) => Ok(Some(serde_json::value::RawValue::from_string(
                    String::from_utf8(bytes).map_err(Error::internal)?,
                )?)),
                None => Ok(None),
            }
        };
        let state_json = state_ids
            .iter()
            .filter_map(|id| json(id).transpose())
            .collect::<Result<_>>()?;
        let chain_json = seen
            .iter()
            .filter_map(|id| json(id).transpose())
            .collect::<Result<_>>()?;
        Ok(StateAndAuthChain {
            state: state_json,
            auth_chain: chain_json,
        })
    }

    /// Whether the room's server ACL (`m.room.server_acl`) lets `server` take part; a room
    /// without one lets everyone.
    pub fn server_allowed(&self, room_id: &RoomId, server: &ruma::ServerName) -> Result<bool> {
        let Some(acl) = self.state_event(room_id, "m.room.server_acl", "")? else {
            return Ok(true);
        };
        // An ACL that does not parse lets nobody in, as Synapse treats it.
        Ok(
            serde_json::from_str::<ruma::events::room::server_acl::RoomServerAclEventContent>(
                acl.content.get(),
            )
            .is_ok_and(|c| c.is_allowed(server)),
        )
    }

    /// The other servers with members joined to the room: where its ephemeral updates go.
    pub fn other_servers(&self, room_id: &RoomId) -> Result<Vec<ruma::OwnedServerName>> {
        let ours = self.server_name();
        let head = self.head(room_id)?;
        let h = head.lock();
        Ok(h.joined_servers()
            .into_iter()
            .filter(|s| *s != ours)
            .map(ToOwned::to_owned)
            .collect())
    }

    /// The room's forward extremities: the newest events this server has of it.
    pub fn extremities(&self, room_id: &RoomId) -> Result<Vec<OwnedEventId>> {
        Ok(self.head(room_id)?.lock().extremities.clone())
    }

    /// The prev events of a PDU that this server does not have.
    pub fn missing_prevs(&self, obj: &CanonicalJsonObject) -> Result<Vec<OwnedEventId>> {
        let mut out = Vec::new();
        for id in super::version::referenced_ids(obj.get("prev_events")) {
            if self.pdu(&id)?.is_none() {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// The servers with joined members in a room, this one included.
    pub fn servers_in_room(&self, room_id: &RoomId) -> Result<Vec<String>> {
        let head = self.head(room_id)?;
        let h = head.lock();
        Ok(h.joined_servers().iter().map(|s| s.to_string()).collect())
    }
}
