//! Invites across servers (Server-Server API: "Inviting to a room"). An invite of another
//! server's user goes to that server first (`/invite`), which signs it; only then is it appended
//! to the room. An invite of a local user to a room this server is not in arrives the same way:
//! it is signed here and kept, with the room's stripped state, as an outlier the user's `/sync`
//! shows; joining then goes through the inviting server.

use hearth_storage::{EventMeta, MembershipRecord, WriteOp};
use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, RoomId, RoomVersionId, UserId};
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue as RawJsonValue;

use super::build::NewEvent;
use super::version::is_supported;
use super::{Pdu, PduRef, RoomHead, Rooms};
use crate::{Error, Result};

/// Where the stripped state of a room this server is not in is kept, in the `unsigned` data of
/// the invite or knock it came with.
const KEPT_STATE: &str = "hearth.stripped_state";

/// Events an invitee sees of a room before joining it ("stripped state").
pub(crate) const INVITE_STATE_TYPES: [&str; 7] = [
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
];

/// An event as stripped state: type, state key, sender and content only.
pub(crate) fn stripped(p: &PduRef) -> Box<RawJsonValue> {
    #[derive(Serialize)]
    struct Stripped<'a> {
        content: &'a RawJsonValue,
        sender: &'a UserId,
        state_key: &'a str,
        #[serde(rename = "type")]
        kind: String,
    }
    serde_json::value::to_raw_value(&Stripped {
        content: &p.content,
        sender: &p.sender,
        state_key: p.state_key.as_deref().unwrap_or_default(),
        kind: p.kind.to_string(),
    })
    .expect("stripped events serialise")
}

impl Rooms {
    /// The stripped state an invitee is shown: the room's description and the inviter's
    /// member event.
    fn invite_room_state(&self, head: &RoomHead, inviter: &UserId) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        let slots = INVITE_STATE_TYPES
            .iter()
            .map(|t| (t.to_string(), String::new()))
            .chain(std::iter::once((
                "m.room.member".to_owned(),
                inviter.to_string(),
            )));
        for slot in slots {
            if let Some(id) = head.state.get(&slot)
                && let Some(p) = self.pdu(id)?
            {
                out.push(serde_json::from_str(stripped(&p).get())?);
            }
        }
        Ok(out)
    }

    /// Invites a user of another server: their server signs the invite, then it is appended.
    pub(crate) async fn invite_remote(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        content: Value,
    ) -> Result<()> {
        let head = self.head(room_id)?;
        let (pdu, obj, version, room_state) = {
            let h = head.lock();
            let ev = NewEvent::state("m.room.member", target.as_str(), content);
            let (pdu, obj) = self.build(&h, sender, ev)?;
            let room_state = self.invite_room_state(&h, sender)?;
            (pdu, obj, h.version.clone(), room_state)
        };
        // The other server checks the invite and signs it; the federation layer verifies that
        // signature and that the event is otherwise unchanged.
        let signed = self
            .remote
            .send_invite(
                target.server_name(),
                &version,
                &pdu.event_id,
                obj,
                room_state,
            )
            .await?;
        self.append_signed(room_id, pdu.event_id.clone(), signed, true)
            .await?;
        Ok(())
    }

    /// An invite of a local user from another server, its format, signatures and hash checked:
    /// answers it signed by this server. For a room this server is not in, the invite is kept
    /// with its stripped state (the sending server's `invite_room_state`) for the user's /sync.
    pub async fn receive_invite(
        &self,
        version: &RoomVersionId,
        event_id: OwnedEventId,
        mut obj: CanonicalJsonObject,
        invite_room_state: Vec<Value>,
    ) -> Result<CanonicalJsonObject> {
        if !is_supported(version) {
            return Err(Error::IncompatibleRoomVersion(version.to_string()));
        }
        let rules = version
            .rules()
            .ok_or_else(|| Error::IncompatibleRoomVersion(version.to_string()))?;
        let pdu = Pdu::from_canonical(event_id.clone(), &obj)?;
        let target = pdu
            .state_key
            .as_deref()
            .and_then(|k| UserId::parse(k).ok())
            .filter(|_| pdu.kind.to_string() == "m.room.member")
            .filter(|_| pdu.membership().as_deref() == Some("invite"))
            .ok_or_else(|| Error::BadJson("not an invite event".into()))?;
        if target.server_name() != self.server_name() {
            return Err(Error::BadJson(
                "the invitee is not a user of this server".into(),
            ));
        }
        // Into a room this server is in, the invite is an event like any other (the auth rules
        // decide; Synapse asks no more); one to a room it is not in is kept for the invitee,
        // who must exist.
        let in_room = self.exists(&pdu.room_id)?;
        if !in_room && self.store.user(target.as_str())?.is_none() {
            return Err(Error::not_found("No such user"));
        }
        // Adds this server's signature (the hashes stay as they are: the content is unchanged).
        ruma::signatures::hash_and_sign_event(
            self.server_name().as_str(),
            &self.keys.key_pair,
            &mut obj,
            &rules.redaction,
        )
        .map_err(|e| Error::BadJson(e.to_string()))?;
        if in_room {
            // This server is in the room: the invite arrives in a transaction like any event.
            return Ok(obj);
        }
        self.keep_outlier_membership(&pdu, &obj, &target, "invite", invite_room_state)
            .await?;
        tracing::info!(room_id = %pdu.room_id, %target, sender = %pdu.sender, "invited from another server");
        Ok(obj)
    }

    /// Keeps a member event of a local user for a room this server is not in (an invite from
    /// another server, or a knock made through one), with the room's stripped state, and sets
    /// the user's membership from it.
    async fn keep_outlier_membership(
        &self,
        pdu: &Pdu,
        obj: &CanonicalJsonObject,
        target: &UserId,
        membership: &str,
        stripped_state: Vec<Value>,
    ) -> Result<()> {
        let event_id = &pdu.event_id;
        let mut kept = obj.clone();
        let unsigned = kept
            .entry("unsigned".to_owned())
            .or_insert_with(|| CanonicalJsonValue::Object(Default::default()));
        if let CanonicalJsonValue::Object(u) = unsigned {
            let state = CanonicalJsonValue::try_from(Value::Array(stripped_state))
                .map_err(|e| Error::BadJson(e.to_string()))?;
            u.insert(KEPT_STATE.to_owned(), state);
        }
        let commit = self.store.submit(vec![WriteOp::PutOutlier {
            event_id: event_id.to_string(),
            json: serde_json::to_vec(&kept)?,
            meta: EventMeta {
                room_id: pdu.room_id.to_string(),
                pos: 0,
                state_before: 0,
                state_after: 0,
                txn: None,
                replaces_state: None,
                redacted_by: None,
                history_seq: None,
                refused: None,
            },
            membership: Some((
                target.to_string(),
                MembershipRecord {
                    membership: membership.into(),
                    event_id: event_id.to_string(),
                    pos: 0,
                    forgotten: false,
                },
            )),
        }]);
        commit.await?;
        self.notifier.notify(std::iter::once(target));
        Ok(())
    }

    /// The stripped state of a room, as `send_knock` answers a knocking server.
    pub fn knock_room_state(&self, room_id: &RoomId, knocker: &UserId) -> Result<Vec<Value>> {
        let head = self.head(room_id)?;
        let h = head.lock();
        self.invite_room_state(&h, knocker)
    }

    /// Knocks on a room this server is not in, through one of `servers`, and keeps the knock.
    pub(crate) async fn knock_remote(
        &self,
        room_id: &RoomId,
        user: &UserId,
        servers: &[ruma::OwnedServerName],
        content: Value,
    ) -> Result<()> {
        let knock = self
            .remote
            .knock_remote(room_id, user, servers, content)
            .await?;
        let pdu = Pdu::parse(
            knock.event_id.clone(),
            &serde_json::to_vec(&knock.event)?,
            Some(room_id),
        )?;
        self.keep_outlier_membership(&pdu, &knock.event, user, "knock", knock.room_state)
            .await
    }

    /// The stripped state kept with an invite to (or a knock on) a room this server is not in,
    /// and the event itself.
    pub fn kept_stripped_state(&self, invite_id: &str) -> Result<Vec<Box<RawJsonValue>>> {
        let Some(json) = self.store.event_json(invite_id)? else {
            return Ok(Vec::new());
        };
        let value: Value = serde_json::from_slice(&json)?;
        // Kept under `invite_room_state` before knocks were kept too.
        let unsigned = &value["unsigned"];
        let kept = unsigned
            .get(KEPT_STATE)
            .or_else(|| unsigned.get("invite_room_state"));
        let mut out: Vec<Box<RawJsonValue>> = kept
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|e| serde_json::value::to_raw_value(e).ok())
                    .collect()
            })
            .unwrap_or_default();
        let id = OwnedEventId::try_from(invite_id).map_err(Error::internal)?;
        if let Some(invite) = self.pdu(&id)? {
            out.push(stripped(&invite));
        }
        Ok(out)
    }

    /// The server that invited `user` to a room this server is not in, if one did: a join goes
    /// through it.
    pub(crate) fn inviting_server(
        &self,
        room_id: &RoomId,
        user: &UserId,
    ) -> Result<Option<ruma::OwnedServerName>> {
        let Some(m) = self.store.membership(user.as_str(), room_id.as_str())? else {
            return Ok(None);
        };
        if m.membership != "invite" {
            return Ok(None);
        }
        let id = OwnedEventId::try_from(m.event_id.as_str()).map_err(Error::internal)?;
        Ok(self.pdu(&id)?.map(|p| p.sender.server_name().to_owned()))
    }

    /// Turns down an invite to a room this server is not in: through the inviting server
    /// (`make_leave`/`send_leave`), or, when it cannot be reached or refuses, here only with a
    /// leave event of this server's making (Synapse's "out-of-band" leave: after the invite,
    /// signed by this server, never sent). Either leave is kept like the invite, and the user's
    /// `/sync` shows it.
    pub(crate) async fn reject_kept_invite(&self, room_id: &RoomId, user: &UserId) -> Result<()> {
        let Some(m) = self.store.membership(user.as_str(), room_id.as_str())? else {
            return Err(Error::forbidden("You are not a member of this room"));
        };
        if m.membership == "invite"
            && let Some(server) = self.inviting_server(room_id, user)?
        {
            let (event_id, obj) = match self.remote.leave_remote(room_id, user, &[server]).await {
                Ok(sent) => sent,
                Err(e) => {
                    tracing::info!(%room_id, %user, error = %e, "the inviting server could not be told; turning the invite down here only");
                    self.out_of_band_leave(room_id, user, &m.event_id)?
                }
            };
            let pdu = Pdu::from_canonical(event_id, &obj)?;
            return self
                .keep_outlier_membership(&pdu, &obj, user, "leave", Vec::new())
                .await;
        }
        let rec = MembershipRecord {
            membership: "leave".into(),
            pos: 0,
            ..m
        };
        self.store
            .submit(vec![WriteOp::PutMembershipAtNext(
                user.to_string(),
                room_id.to_string(),
                rec,
            )])
            .await?;
        self.notifier.notify(std::iter::once(user));
        Ok(())
    }

    /// A leave of `user` after the kept invite `invite_id`, made and signed here. The room's
    /// version is the one its create event names in the kept stripped state; without one, the
    /// invite's own format tells (an `event_id` in it: version 1; else 10, whose event format
    /// all later versions share). The event stays on this server, so only its format matters.
    fn out_of_band_leave(
        &self,
        room_id: &RoomId,
        user: &UserId,
        invite_id: &str,
    ) -> Result<(OwnedEventId, CanonicalJsonObject)> {
        use super::version::VersionRules as _;
        let invite: Value = match self.store.event_json(invite_id)? {
            Some(json) => serde_json::from_slice(&json)?,
            None => return Err(Error::internal("the kept invite is missing")),
        };
        let unsigned = &invite["unsigned"];
        let named = unsigned
            .get(KEPT_STATE)
            .or_else(|| unsigned.get("invite_room_state"))
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|e| e["type"] == "m.room.create"))
            .map(|c| c["content"]["room_version"].as_str().unwrap_or("1"))
            .and_then(|v| RoomVersionId::try_from(v).ok())
            .filter(is_supported);
        let version = named.unwrap_or(if invite.get("event_id").is_some() {
            RoomVersionId::V1
        } else {
            RoomVersionId::V10
        });
        let rules = version
            .rules()
            .ok_or_else(|| Error::internal("a supported version without rules"))?;
        let id = OwnedEventId::try_from(invite_id).map_err(Error::internal)?;
        let hash = invite["hashes"]["sha256"].as_str().map(str::to_owned);
        let refs = rules.event_refs(&[(id, hash)]);
        let depth = invite["depth"].as_u64().unwrap_or(0) + 1;
        let mut event = serde_json::json!({
            "type": "m.room.member",
            "room_id": room_id,
            "sender": user,
            "state_key": user,
            "content": { "membership": "leave" },
            "prev_events": refs,
            "auth_events": refs,
            "depth": depth,
            "origin_server_ts": crate::util::now_ms(),
        });
        if invite.get("origin").is_some() {
            event["origin"] = self.server_name().as_str().into();
        }
        let Ok(CanonicalJsonValue::Object(mut obj)) = CanonicalJsonValue::try_from(event) else {
            return Err(Error::internal(
                "an out-of-band leave that is not canonical JSON",
            ));
        };
        let event_id =
            rules.sign_event(self.server_name().as_str(), &self.keys.key_pair, &mut obj)?;
        Ok((event_id, obj))
    }
}
