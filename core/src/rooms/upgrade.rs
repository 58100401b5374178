//! Room upgrades (spec: "Room Upgrades"), made as Synapse makes them
//! (`RoomCreationHandler.upgrade_room`): a room of the new version names the old one its
//! predecessor and copies its settings and bans; the old room gets a tombstone pointing at the
//! new one, its local aliases and directory listing move over, and its power levels rise so that
//! ordinary members can no longer talk or invite there.
//!
//! Both rooms' events are prepared under the old room's lock, the old room's on a scratch copy of
//! its head, and queued back to back only once all of them passed the auth rules: a refused
//! upgrade leaves nothing behind, and no event can slip into the old room between the state
//! that was copied and the tombstone.

use hearth_storage::WriteOp;
use hearth_storage::directory::DirectoryOp;
use ruma::room_version_rules::RoomVersionRules;
use ruma::{OwnedRoomId, OwnedUserId, RoomAliasId, RoomId, RoomVersionId, UserId};
use serde_json::{Map, Value, json};

use super::build::NewEvent;
use super::create::{CreateRoom, MemberProfile, Preset};
use super::version::{VersionRules, power_level, supported_rules};
use super::{Batch, RoomHead, Rooms};
use crate::{Error, Result};

/// State the new room takes over as it is (Synapse's `types_to_copy`; the power levels are
/// handled on their own, and a space's children too).
const COPIED_STATE: [&str; 8] = [
    "m.room.join_rules",
    "m.room.name",
    "m.room.topic",
    "m.room.history_visibility",
    "m.room.guest_access",
    "m.room.avatar",
    "m.room.encryption",
    "m.room.server_acl",
];

pub struct Upgrade {
    pub new_version: RoomVersionId,
    /// Further creators of the new room (room version 12 on; ignored before).
    pub additional_creators: Vec<OwnedUserId>,
}

/// What the old room's state says, read once under its lock.
struct OldRoom {
    create: Value,
    power_levels: Option<Map<String, Value>>,
    canonical_alias: Option<Value>,
    /// `(type, state key, content)` for the new room's initial state.
    copied: Vec<(String, String, Value)>,
}

impl Rooms {
    /// Replaces `old_room` by a new room of another version, made by `user`; answers the new
    /// room's id.
    pub async fn upgrade_room(
        &self,
        user: &UserId,
        profile: MemberProfile,
        old_room: &RoomId,
        upgrade: Upgrade,
    ) -> Result<OwnedRoomId> {
        // An unknown room is 404 whatever version was asked for, as Synapse answers.
        let head = self.head(old_room)?;
        let rules = supported_rules(&upgrade.new_version)?;
        let (new_room, queued_new, queued_old) = {
            let mut guard = head.lock();
            let mut scratch = guard.clone();
            let mut old_batch = Batch::default();
            let prepared = self.prepare_upgrade(
                &mut scratch,
                &mut old_batch,
                user,
                profile,
                &upgrade,
                &rules,
            );
            let (new_head, new_batch) = match prepared {
                Ok(p) => p,
                Err(e) => {
                    self.clear_pending(&old_batch);
                    return Err(e);
                }
            };
            *guard = scratch;
            let new_room = new_head.room_id.clone();
            // The new room first: once the tombstone is durable, so is the room it points at.
            let queued_new = self.publish_room(new_head, new_batch);
            let queued_old = self.enqueue(&guard, old_batch);
            (new_room, queued_new, queued_old)
        };
        // Both batches must be waited for, so that neither stays in the pending maps.
        let created = self.finish(queued_new).await;
        let closed = self.finish(queued_old).await;
        created?;
        closed?;
        Ok(new_room)
    }

    /// Builds the new room and the old room's events (on `old`, into `old_batch`). On error the
    /// new room's batch is cleared; the caller clears `old_batch`.
    fn prepare_upgrade(
        &self,
        old: &mut RoomHead,
        old_batch: &mut Batch,
        user: &UserId,
        profile: MemberProfile,
        upgrade: &Upgrade,
        rules: &RoomVersionRules,
    ) -> Result<(RoomHead, Batch)> {
        let privileged = rules.creators_privileged();
        let state = self.read_old_room(old)?;

        let mut creation = Map::new();
        creation.insert("predecessor".into(), json!({ "room_id": old.room_id }));
        if state.create["m.federate"] == json!(false) {
            creation.insert("m.federate".into(), json!(false));
        }
        if !state.create["type"].is_null() {
            creation.insert("type".into(), state.create["type"].clone());
        }
        if privileged && !upgrade.additional_creators.is_empty() {
            creation.insert(
                "additional_creators".into(),
                json!(upgrade.additional_creators),
            );
        }

        // The new room's power levels are the old room's. Before version 12 the upgrader gets
        // whatever level copying the state and bans takes, in the first power levels event, and
        // their own level back in a last one; from version 12 creators are above all levels and
        // may not be listed.
        let mut first_pl = state.power_levels.clone();
        let mut final_pl = None;
        if let Some(pl) = &mut first_pl {
            if privileged {
                let users = pl.get_mut("users").and_then(Value::as_object_mut);
                if let Some(users) = users {
                    users.remove(user.as_str());
                    for c in &upgrade.additional_creators {
                        users.remove(c.as_str());
                    }
                }
            } else {
                let original = pl.clone();
                raise_to_copy_state(pl, user);
                if *pl != original {
                    final_pl = Some(original);
                }
            }
        }

        let (new_alias, old_alias) = match &state.canonical_alias {
            Some(c) => {
                let (n, o) = self.split_canonical_alias(c);
                (Some(n), Some(o))
            }
            None => (None, None),
        };
        let mut initial_state = state.copied;
        for (banned, membership) in sorted_members(old) {
            if membership == "ban"
                && let Some(id) = old.state.get(&("m.room.member".into(), banned.clone()))
                && let Some(ban) = self.pdu(id)?
            {
                initial_state.push(("m.room.member".into(), banned, ban.content_value()));
            }
        }
        if let Some(c) = new_alias {
            initial_state.push(("m.room.canonical_alias".into(), String::new(), c));
        }
        if let Some(pl) = final_pl {
            initial_state.push(("m.room.power_levels".into(), String::new(), pl.into()));
        }

        let mut request = CreateRoom {
            // Synapse's choice: the copied state overrides what the preset would set.
            preset: Some(Preset::PrivateChat),
            public: old.is_public,
            initial_state,
            room_version: Some(upgrade.new_version.clone()),
            power_levels: first_pl,
            ..Default::default()
        };
        // The old room's events carry its room record: unlisted from here on.
        old.is_public = false;
        let (new_head, new_batch) = if rules.room_named_by_create() {
            // The room id derives from the create event, so the tombstone comes second and the
            // predecessor names no event.
            request.creation_content = Some(creation);
            let (head, batch) = self.prepare_room(None, user, profile, request)?;
            if let Err(e) = self.tombstone(old, old_batch, user, &head.room_id) {
                self.clear_pending(&batch);
                return Err(e);
            }
            (head, batch)
        } else {
            let new_room = self.random_room_id()?;
            let tombstone = self.tombstone(old, old_batch, user, &new_room)?;
            creation.insert(
                "predecessor".into(),
                json!({ "room_id": old.room_id, "event_id": tombstone.event_id }),
            );
            request.creation_content = Some(creation);
            self.prepare_room(Some(new_room), user, profile, request)?
        };
        if let Err(e) = self.close_old_room(old, old_batch, user, old_alias, &state.power_levels) {
            self.clear_pending(&new_batch);
            return Err(e);
        }
        old_batch
            .ops
            .push(WriteOp::Directory(DirectoryOp::MoveAliases {
                from: old.room_id.to_string(),
                to: new_head.room_id.to_string(),
            }));
        Ok((new_head, new_batch))
    }

    fn read_old_room(&self, old: &RoomHead) -> Result<OldRoom> {
        let content = |kind: &str| -> Result<Option<Value>> {
            match old.state.get(&(kind.to_owned(), String::new())) {
                Some(id) => Ok(self.pdu(id)?.map(|p| p.content_value())),
                None => Ok(None),
            }
        };
        let create = content("m.room.create")?.unwrap_or_else(|| json!({}));
        let space = create["type"] == "m.space";
        let mut copied = Vec::new();
        for ((kind, key), id) in old.state.iter() {
            let copy = (key.is_empty() && COPIED_STATE.contains(&kind.as_str()))
                || (space && kind == "m.space.child");
            if !copy {
                continue;
            }
            let Some(pdu) = self.pdu(id)? else {
                continue;
            };
            let c = pdu.content_value();
            // A space child with empty content was taken out of the space.
            if kind == "m.space.child" && c.as_object().is_none_or(Map::is_empty) {
                continue;
            }
            copied.push((kind.clone(), key.clone(), c));
        }
        Ok(OldRoom {
            power_levels: content("m.room.power_levels")?
                .as_ref()
                .map(integer_power_levels),
            canonical_alias: content("m.room.canonical_alias")?,
            create,
            copied,
        })
    }

    fn tombstone(
        &self,
        old: &mut RoomHead,
        batch: &mut Batch,
        user: &UserId,
        replacement: &RoomId,
    ) -> Result<super::PduRef> {
        let content = json!({
            "body": "This room has been replaced",
            "replacement_room": replacement,
        });
        self.prepare(
            old,
            user,
            NewEvent::state("m.room.tombstone", "", content),
            batch,
        )
    }

    /// After the tombstone: the old room's canonical alias loses what moved, and sending and
    /// inviting there take more than the default level (`_update_upgraded_room_pls`). The
    /// upgrader may lack the power for these; as in Synapse, the upgrade goes on without them.
    fn close_old_room(
        &self,
        old: &mut RoomHead,
        batch: &mut Batch,
        user: &UserId,
        alias: Option<Value>,
        power_levels: &Option<Map<String, Value>>,
    ) -> Result<()> {
        let mut events = Vec::new();
        if let Some(c) = alias {
            events.push(NewEvent::state("m.room.canonical_alias", "", c));
        }
        if let Some(pl) = power_levels {
            let restricted = (level(pl.get("users_default"), 0) + 1).max(50);
            let mut pl = pl.clone();
            let mut changed = false;
            for key in ["invite", "events_default"] {
                if level(pl.get(key), 0) < restricted {
                    pl.insert(key.into(), json!(restricted));
                    changed = true;
                }
            }
            if changed {
                events.push(NewEvent::state("m.room.power_levels", "", pl.into()));
            }
        }
        for ev in events {
            let kind = ev.kind.clone();
            match self.prepare(old, user, ev, batch) {
                Ok(_) => {}
                Err(Error::Forbidden(e)) => {
                    tracing::warn!(room = %old.room_id, %kind, error = %e, "not updated in the upgraded room");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The canonical alias content for the new room (this server's aliases, which move with the
    /// room) and what stays in the old one (the rest).
    fn split_canonical_alias(&self, content: &Value) -> (Value, Value) {
        let ours = |a: &Value| {
            a.as_str()
                .and_then(|a| RoomAliasId::parse(a).ok())
                .is_some_and(|a| a.server_name() == self.server_name())
        };
        let mut old = content.as_object().cloned().unwrap_or_default();
        let mut new = Map::new();
        if let Some(alias) = content.get("alias").filter(|a| ours(a)) {
            new.insert("alias".into(), alias.clone());
            old.remove("alias");
        }
        if let Some(alts) = content["alt_aliases"].as_array().filter(|a| !a.is_empty()) {
            let (moved, kept): (Vec<Value>, Vec<Value>) = alts.iter().cloned().partition(ours);
            new.insert("alt_aliases".into(), moved.into());
            if kept.is_empty() {
                old.remove("alt_aliases");
            } else {
                old.insert("alt_aliases".into(), kept.into());
            }
        }
        (new.into(), old.into())
    }
}

fn sorted_members(head: &RoomHead) -> Vec<(String, String)> {
    let mut members: Vec<(String, String)> = head
        .members
        .iter()
        .map(|(u, m)| (u.to_string(), m.clone()))
        .collect();
    members.sort();
    members
}

fn level(v: Option<&Value>, default: i64) -> i64 {
    v.and_then(power_level).unwrap_or(default)
}

/// Power levels with every level an integer: rooms before version 10 allowed strings such as
/// `"50"`, which later versions refuse (Synapse's `copy_and_fixup_power_levels_contents`). A value
/// that is no number at all is dropped, leaving the spec's default in its place.
fn integer_power_levels(content: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in content.as_object().into_iter().flatten() {
        match v {
            Value::Object(inner) => {
                let levels: Map<String, Value> = inner
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), json!(power_level(v)?))))
                    .collect();
                out.insert(k.clone(), levels.into());
            }
            other => {
                if let Some(n) = power_level(other) {
                    out.insert(k.clone(), json!(n));
                }
            }
        }
    }
    out
}

/// Gives `user` the level that sending every copied state event and ban takes, if they have
/// less.
fn raise_to_copy_state(pl: &mut Map<String, Value>, user: &UserId) {
    let events_max = pl
        .get("events")
        .and_then(Value::as_object)
        .map(|e| e.values().filter_map(power_level).max().unwrap_or(0))
        .unwrap_or(0);
    let needed = level(pl.get("state_default"), 50)
        .max(level(pl.get("ban"), 50))
        .max(events_max);
    let users_default = level(pl.get("users_default"), 0);
    let users = pl
        .entry("users")
        .or_insert_with(|| json!({}))
        .as_object_mut();
    if let Some(users) = users
        && level(users.get(user.as_str()), users_default) < needed
    {
        users.insert(user.to_string(), json!(needed));
    }
}
