//! `createRoom`: the events of a new room, committed as one batch so that a room is either
//! fully there or not at all.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;
use ruma::{OwnedRoomId, OwnedUserId, RoomVersionId, UserId};
use serde_json::{Map, Value, json};

use super::build::{NewEvent, to_canonical};
use super::pdu::{Pdu, derived_room_id};
use super::version::{VersionRules, supported_rules};
use super::{Batch, Queued, RoomHead, Rooms};
use crate::util::{now_ms, random_string};
use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    PrivateChat,
    TrustedPrivateChat,
    PublicChat,
}

/// A member event's profile fields.
#[derive(Clone, Debug, Default)]
pub struct MemberProfile {
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct CreateRoom {
    pub preset: Option<Preset>,
    pub public: bool,
    pub name: Option<String>,
    pub topic: Option<String>,
    /// `(type, state_key, content)`
    pub initial_state: Vec<(String, String, Value)>,
    pub invite: Vec<OwnedUserId>,
    pub is_direct: bool,
    pub power_level_content_override: Option<Map<String, Value>>,
    pub creation_content: Option<Map<String, Value>>,
    pub room_version: Option<RoomVersionId>,
    /// The whole content of the first power levels event, instead of the defaults (a room
    /// upgrade copies the old room's); `power_level_content_override` still goes on top.
    pub power_levels: Option<Map<String, Value>>,
}

impl Rooms {
    pub async fn create_room(
        &self,
        creator: &UserId,
        profile: MemberProfile,
        req: CreateRoom,
    ) -> Result<OwnedRoomId> {
        let remote: Vec<OwnedUserId> = req
            .invite
            .iter()
            .filter(|u| u.server_name() != self.server_name())
            .cloned()
            .collect();
        let is_direct = req.is_direct;
        let (head, batch) = self.prepare_room(None, creator, profile, req)?;
        let room_id = head.room_id.clone();
        let queued = self.publish_room(head, batch);
        self.finish(queued).await?;
        for invitee in remote {
            let mut content = json!({ "membership": "invite" });
            if is_direct {
                content["is_direct"] = json!(true);
            }
            // The room exists whatever another server says; as in Synapse, a failed invite
            // does not undo it.
            if let Err(e) = self
                .invite_remote(&room_id, creator, &invitee, content)
                .await
            {
                tracing::warn!(%room_id, %invitee, error = %e, "inviting a remote user failed");
            }
        }
        Ok(room_id)
    }

    /// A random room id of this server, for versions before 12 (which name rooms by their
    /// create event).
    pub(super) fn random_room_id(&self) -> Result<OwnedRoomId> {
        OwnedRoomId::try_from(format!(
            "!{}:{}",
            random_string(18),
            self.config.server_name
        ))
        .map_err(Error::internal)
    }

    /// Builds every event of a new room on a fresh head, without queueing anything: the room
    /// exists once [`Rooms::publish_room`] queues the batch. `room_id` is used before version
    /// 12 (a random one if `None`). On error nothing is left in the pending maps.
    pub(super) fn prepare_room(
        &self,
        room_id: Option<OwnedRoomId>,
        creator: &UserId,
        profile: MemberProfile,
        req: CreateRoom,
    ) -> Result<(RoomHead, Batch)> {
        let version = req
            .room_version
            .clone()
            .unwrap_or_else(|| self.config.default_room_version.clone());
        let rules = supported_rules(&version)?;
        let preset = req.preset.unwrap_or(if req.public {
            Preset::PublicChat
        } else {
            Preset::PrivateChat
        });
        let privileged = rules.creators_privileged();

        let mut head = RoomHead {
            room_id: match room_id {
                Some(id) => id,
                None => self.random_room_id()?,
            },
            version: version.clone(),
            rules: rules.clone(),
            extremities: vec![],
            depth: 0,
            state_group: 0,
            state_group_rec: super::state::next_group("", None, &Default::default(), &[]),
            state: Arc::new(Default::default()),
            members: HashMap::new(),
            joined: 0,
            is_public: req.public,
        };
        let mut batch = Batch::default();
        // Nothing of a room that fails half-way may stay behind in the pending maps.
        let prepared = (|| -> Result<()> {
            // m.room.create
            let mut create = req.creation_content.clone().unwrap_or_default();
            create.insert("room_version".into(), json!(version));
            if rules.creator_in_create() {
                create.insert("creator".into(), json!(creator));
            }
            if privileged && preset == Preset::TrustedPrivateChat && !req.invite.is_empty() {
                create.insert("additional_creators".into(), json!(req.invite));
            }
            let create = NewEvent::state("m.room.create", "", Value::Object(create));
            if rules.room_named_by_create() {
                self.prepare_v12_create(&mut head, creator, create, &mut batch)?;
            } else {
                self.prepare(&mut head, creator, create, &mut batch)?;
            }

            let member = |membership: &str, p: &MemberProfile| {
                let mut c = json!({ "membership": membership });
                if let Some(d) = &p.displayname {
                    c["displayname"] = json!(d);
                }
                if let Some(a) = &p.avatar_url {
                    c["avatar_url"] = json!(a);
                }
                c
            };
            self.prepare(
                &mut head,
                creator,
                NewEvent::state("m.room.member", creator.as_str(), member("join", &profile)),
                &mut batch,
            )?;

            // m.room.power_levels, as Synapse makes them, then the client's override on top.
            let mut users = Map::new();
            if !privileged {
                users.insert(creator.to_string(), json!(100));
                if preset == Preset::TrustedPrivateChat {
                    for u in &req.invite {
                        users.insert(u.to_string(), json!(100));
                    }
                }
            }
            let invite_level = if preset == Preset::PublicChat { 50 } else { 0 };
            let mut pl = match &req.power_levels {
                Some(p) => Value::Object(p.clone()),
                None => json!({
                    "users": users,
                    "users_default": 0,
                    "events": {
                        "m.room.name": 50,
                        "m.room.power_levels": 100,
                        "m.room.history_visibility": 100,
                        "m.room.canonical_alias": 50,
                        "m.room.avatar": 50,
                        "m.room.tombstone": 100,
                        "m.room.server_acl": 100,
                        "m.room.encryption": 100,
                    },
                    "events_default": 0,
                    "state_default": 50,
                    "ban": 50,
                    "kick": 50,
                    "redact": 50,
                    "invite": invite_level,
                    "historical": 100,
                }),
            };
            if let Some(o) = &req.power_level_content_override {
                for (k, v) in o {
                    pl[k] = v.clone();
                }
            }
            let overridden: HashSet<(&str, &str)> = req
                .initial_state
                .iter()
                .map(|(t, k, _)| (t.as_str(), k.as_str()))
                .collect();
            self.prepare(
                &mut head,
                creator,
                NewEvent::state("m.room.power_levels", "", pl),
                &mut batch,
            )?;

            let mut preset_events = vec![
                (
                    "m.room.join_rules",
                    json!({ "join_rule": if preset == Preset::PublicChat { "public" } else { "invite" } }),
                ),
                (
                    "m.room.history_visibility",
                    json!({ "history_visibility": "shared" }),
                ),
            ];
            if preset != Preset::PublicChat {
                preset_events.push(("m.room.guest_access", json!({ "guest_access": "can_join" })));
            }
            for (t, c) in preset_events {
                if !overridden.contains(&(t, "")) {
                    self.prepare(&mut head, creator, NewEvent::state(t, "", c), &mut batch)?;
                }
            }
            for (t, k, c) in req.initial_state {
                if (t == "m.room.name" && req.name.is_some())
                    || (t == "m.room.topic" && req.topic.is_some())
                {
                    continue;
                }
                self.prepare(&mut head, creator, NewEvent::state(&t, &k, c), &mut batch)?;
            }
            if let Some(name) = req.name {
                self.prepare(
                    &mut head,
                    creator,
                    NewEvent::state("m.room.name", "", json!({ "name": name })),
                    &mut batch,
                )?;
            }
            if let Some(topic) = req.topic {
                let content = json!({
                    "topic": topic,
                    "m.topic": [{ "body": topic, "mimetype": "text/plain" }],
                });
                self.prepare(
                    &mut head,
                    creator,
                    NewEvent::state("m.room.topic", "", content),
                    &mut batch,
                )?;
            }
            // Other servers' users are invited once the room exists: their servers sign first.
            for invitee in req
                .invite
                .iter()
                .filter(|u| u.server_name() == self.server_name())
            {
                let mut content = json!({ "membership": "invite" });
                if req.is_direct {
                    content["is_direct"] = json!(true);
                }
                self.prepare(
                    &mut head,
                    creator,
                    NewEvent::state("m.room.member", invitee.as_str(), content),
                    &mut batch,
                )?;
            }
            Ok(())
        })();
        if let Err(e) = prepared {
            self.clear_pending(&batch);
            return Err(e);
        }
        Ok((head, batch))
    }

    /// Queues a prepared room's batch; wait for it with [`Rooms::finish`].
    pub(super) fn publish_room(&self, head: RoomHead, batch: Batch) -> Queued {
        let room_id = head.room_id.clone();
        let head = Arc::new(Mutex::new(head));
        let head_guard = head.lock();
        // Publish the head before the commit so that the room's next event (which may come
        // from another request as soon as the id is known) queues behind this batch.
        self.heads.lock().insert(room_id, head.clone());
        self.enqueue(&head_guard, batch)
    }

    /// From room version 12 the create event has no `room_id`: the room is named after the
    /// event's reference hash.
    fn prepare_v12_create(
        &self,
        head: &mut RoomHead,
        creator: &UserId,
        ev: NewEvent,
        batch: &mut Batch,
    ) -> Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        let now = now_ms();
        let ts = self
            .last_create_ts
            .fetch_update(SeqCst, SeqCst, |last| Some(now.max(last + 1)))
            .map_or(now, |last| now.max(last + 1));
        let mut obj = to_canonical(json!({
            "auth_events": [],
            "prev_events": [],
            "content": ev.content,
            "depth": 1,
            "origin_server_ts": ts,
            "sender": creator,
            "type": "m.room.create",
            "state_key": "",
        }))?;
        let event_id = self.sign(&head.rules, &mut obj)?;
        let room_id = derived_room_id(&event_id)?;
        head.room_id = room_id.clone();
        let pdu = Arc::new(Pdu::parse(
            event_id,
            &serde_json::to_vec(&obj)?,
            Some(&room_id),
        )?);
        self.authorize(&head.rules, &pdu, &head.state)?;
        self.append_to_head(head, pdu, obj, None, batch)
    }
}
