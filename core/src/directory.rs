//! Room aliases, the public room directory and the user directory (spec: "Room aliases",
//! "Listing rooms", "User directory").
//!
//! Aliases are made on this server (`#name:ourserver`); another server's aliases and room list
//! are asked of it through [`Remote`]. The room list shows rooms whose
//! visibility is `public`, largest first, as Synapse orders it. The user directory finds users
//! who share a room with the searcher or sit in a public room, by user id or display name.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use hearth_storage::directory::DirectoryOp;
use hearth_storage::{Store, WriteOp};
use ruma::{OwnedRoomId, OwnedServerName, OwnedUserId, RoomAliasId, RoomId, ServerName, UserId};
use serde_json::Value;

use crate::remote::Remote;
use crate::rooms::Rooms;
use crate::{Error, Result};

/// A room as the public room directory shows it.
#[derive(Clone, Debug)]
pub struct PublicRoom {
    pub room_id: OwnedRoomId,
    pub name: Option<String>,
    pub topic: Option<String>,
    pub canonical_alias: Option<String>,
    pub avatar_url: Option<String>,
    pub joined_members: u64,
    pub world_readable: bool,
    pub guest_can_join: bool,
    pub join_rule: Option<String>,
    pub room_type: Option<String>,
}

pub struct PublicRoomsPage {
    pub chunk: Vec<PublicRoom>,
    pub next_batch: Option<String>,
    pub prev_batch: Option<String>,
    pub total: usize,
}

pub struct FoundUser {
    pub user_id: OwnedUserId,
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
}

pub struct Directory {
    server_name: OwnedServerName,
    store: Arc<dyn Store>,
    rooms: Arc<Rooms>,
    remote: Arc<dyn Remote>,
    /// Serialises alias check-then-create.
    aliases: tokio::sync::Mutex<()>,
}

fn text(v: &Option<Value>, field: &str) -> Option<String> {
    v.as_ref()
        .and_then(|c| c[field].as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

impl Directory {
    pub fn new(
        server_name: OwnedServerName,
        store: Arc<dyn Store>,
        rooms: Arc<Rooms>,
        remote: Arc<dyn Remote>,
    ) -> Self {
        Self {
            server_name,
            store,
            rooms,
            remote,
            aliases: tokio::sync::Mutex::new(()),
        }
    }

    /// The room an alias names, with the servers to join it through; another server's alias is
    /// asked of that server.
    pub async fn resolve(
        &self,
        alias: &RoomAliasId,
    ) -> Result<(OwnedRoomId, Vec<OwnedServerName>)> {
        if alias.server_name() != self.server_name {
            return self.remote.query_directory(alias).await;
        }
        self.resolve_local(alias)
    }

    /// A local alias (what `/query/directory` answers other servers).
    pub fn resolve_local(
        &self,
        alias: &RoomAliasId,
    ) -> Result<(OwnedRoomId, Vec<OwnedServerName>)> {
        let not_found = || Error::not_found(format!("Room alias {alias} not found"));
        if alias.server_name() != self.server_name {
            return Err(not_found());
        }
        let (room, _) = self.store.alias(alias.as_str())?.ok_or_else(not_found)?;
        let room_id = RoomId::parse(room).map_err(Error::internal)?;
        let mut servers = self.rooms.servers_in_room(&room_id).unwrap_or_default();
        servers.retain(|s| s != self.server_name.as_str());
        let mut out = vec![self.server_name.clone()];
        out.extend(servers.into_iter().filter_map(|s| s.try_into().ok()));
        Ok((room_id, out))
    }

    pub async fn put_alias(&self, user: &UserId, alias: &RoomAliasId, room: &RoomId) -> Result<()> {
        if alias.server_name() != self.server_name {
            return Err(Error::InvalidParam("Room alias must be local".into()));
        }
        if !self.rooms.exists(room)? {
            return Err(Error::not_found("Room not found"));
        }
        let _guard = self.aliases.lock().await;
        if self.store.alias(alias.as_str())?.is_some() {
            return Err(Error::AliasInUse);
        }
        self.store
            .submit(vec![WriteOp::Directory(DirectoryOp::PutAlias {
                alias: alias.to_string(),
                room_id: room.to_string(),
                creator: user.to_string(),
            })])
            .await?;
        Ok(())
    }

    /// Whoever made the alias may delete it, and so may the room's moderators (those who may
    /// change its canonical alias) and server admins, as Synapse allows.
    pub async fn delete_alias(
        &self,
        user: &UserId,
        alias: &RoomAliasId,
        admin: bool,
    ) -> Result<()> {
        let (room, creator) = self
            .store
            .alias(alias.as_str())?
            .ok_or_else(|| Error::not_found("Room alias not found"))?;
        let room_id = RoomId::parse(room).map_err(Error::internal)?;
        let allowed = admin
            || creator == user.as_str()
            || (self.rooms.membership(&room_id, user)?.as_deref() == Some("join")
                && self
                    .rooms
                    .can_send_state(&room_id, user, "m.room.canonical_alias")?);
        if !allowed {
            return Err(Error::forbidden("You may not delete this alias"));
        }
        self.store
            .submit(vec![WriteOp::Directory(DirectoryOp::DeleteAlias {
                alias: alias.to_string(),
            })])
            .await?;
        self.forget_canonical_alias(user, &room_id, alias).await;
        Ok(())
    }

    /// A deleted alias leaves the room's canonical alias, as Synapse does it: the event is sent
    /// again without it, by the user who deleted it (if they may; otherwise it stays, stale).
    async fn forget_canonical_alias(&self, user: &UserId, room: &RoomId, alias: &RoomAliasId) {
        let Ok(Some(current)) = self.rooms.state_event(room, "m.room.canonical_alias", "") else {
            return;
        };
        let mut content = current.content_value();
        let mut changed = false;
        if content["alias"].as_str() == Some(alias.as_str()) {
            content.as_object_mut().map(|o| o.remove("alias"));
            changed = true;
        }
        if let Some(alt) = content["alt_aliases"].as_array_mut() {
            let before = alt.len();
            alt.retain(|a| a.as_str() != Some(alias.as_str()));
            changed |= alt.len() != before;
        }
        if !changed {
            return;
        }
        let event = crate::rooms::NewEvent::state("m.room.canonical_alias", "", content);
        if let Err(e) = self.rooms.send(room, user, event).await {
            tracing::info!(%room, error = %e, "a deleted alias stays in the canonical alias");
        }
    }

    /// A room's `m.room.canonical_alias` may name only aliases that point to it, as Synapse
    /// checks: a client cannot advertise an alias it does not hold.
    pub async fn check_canonical_alias(&self, room: &RoomId, content: &Value) -> Result<()> {
        let mut aliases = Vec::new();
        match &content["alias"] {
            Value::Null => {}
            Value::String(a) => aliases.push(a.as_str()),
            _ => return Err(Error::InvalidParam("alias must be a string".into())),
        }
        match &content["alt_aliases"] {
            Value::Null => {}
            Value::Array(list) => {
                for a in list {
                    aliases.push(a.as_str().ok_or_else(|| {
                        Error::InvalidParam("alt_aliases must be a list of strings".into())
                    })?);
                }
            }
            _ => return Err(Error::InvalidParam("alt_aliases must be a list".into())),
        }
        for alias in aliases {
            let parsed = RoomAliasId::parse(alias)
                .map_err(|_| Error::InvalidParam(format!("{alias} is not a room alias")))?;
            let points_here = match self.resolve(&parsed).await {
                Ok((target, _)) => target == room,
                Err(Error::NotFound(_)) => false,
                Err(e) => return Err(e),
            };
            if !points_here {
                return Err(Error::BadAlias(format!(
                    "Room alias {alias} does not point to the room"
                )));
            }
        }
        Ok(())
    }

    /// `GET /rooms/{roomId}/aliases`: for members (and anyone, in a world-readable room).
    pub fn room_aliases(&self, user: &UserId, room: &RoomId) -> Result<Vec<String>> {
        let member = self.rooms.membership(room, user)?.as_deref() == Some("join");
        let readable = self
            .rooms
            .state_event(room, "m.room.history_visibility", "")?
            .is_some_and(|p| p.content_value()["history_visibility"] == "world_readable");
        if !member && !readable {
            return Err(Error::forbidden("You are not in this room"));
        }
        Ok(self.store.room_aliases(room.as_str())?)
    }

    pub fn is_public(&self, room: &RoomId) -> Result<bool> {
        Ok(self
            .store
            .room(room.as_str())?
            .ok_or_else(|| Error::not_found("Room not found"))?
            .is_public)
    }

    /// `PUT /directory/list/room/{roomId}`: for those who may change the canonical alias.
    pub async fn set_public(&self, user: &UserId, room: &RoomId, public: bool) -> Result<()> {
        self.is_public(room)?;
        if self.rooms.membership(room, user)?.as_deref() != Some("join")
            || !self
                .rooms
                .can_send_state(room, user, "m.room.canonical_alias")?
        {
            return Err(Error::forbidden(
                "You may not change this room's directory visibility",
            ));
        }
        self.rooms.set_public(room, public).await
    }

    /// Another server's public room list, as it answers `/publicRooms` over federation.
    pub async fn remote_public_rooms(
        &self,
        server: &ServerName,
        body: serde_json::Value,
    ) -> Result<serde_json::Value> {
        self.remote.public_rooms(server, body).await
    }

    /// The public rooms whose name, topic or alias contains `term`, largest first, from the
    /// offset `since` (a previous page's `next_batch` or `prev_batch`).
    pub fn public_rooms(
        &self,
        term: Option<&str>,
        room_types: Option<&[Option<String>]>,
        limit: Option<usize>,
        since: Option<&str>,
    ) -> Result<PublicRoomsPage> {
        let term = term.map(str::to_lowercase).filter(|t| !t.is_empty());
        let mut all = Vec::new();
        for (room, rec) in self.store.rooms()? {
            if !rec.is_public {
                continue;
            }
            let Ok(room_id) = RoomId::parse(&room) else {
                continue;
            };
            let r = self.describe(&room_id)?;
            if let Some(types) = room_types
                && !types.is_empty()
                && !types.contains(&r.room_type)
            {
                continue;
            }
            if let Some(t) = &term {
                let hit = [&r.name, &r.topic, &r.canonical_alias]
                    .into_iter()
                    .flatten()
                    .any(|s| s.to_lowercase().contains(t.as_str()));
                if !hit {
                    continue;
                }
            }
            all.push(r);
        }
        all.sort_by(|a, b| {
            b.joined_members
                .cmp(&a.joined_members)
                .then_with(|| a.room_id.cmp(&b.room_id))
        });
        let total = all.len();
        let start = match since {
            Some(s) => s
                .strip_prefix('o')
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| Error::InvalidParam("Unknown pagination token".into()))?,
            None => 0,
        }
        .min(total);
        let limit = limit.unwrap_or(total).max(1);
        let end = (start + limit).min(total);
        Ok(PublicRoomsPage {
            chunk: all[start..end].to_vec(),
            next_batch: (end < total).then(|| format!("o{end}")),
            prev_batch: (start > 0).then(|| format!("o{}", start.saturating_sub(limit))),
            total,
        })
    }

    fn describe(&self, room: &RoomId) -> Result<PublicRoom> {
        let content = |kind: &str| -> Result<Option<Value>> {
            Ok(self
                .rooms
                .state_event(room, kind, "")?
                .map(|p| p.content_value()))
        };
        let joined = {
            let head = self.rooms.head(room)?;
            head.lock().joined_count() as u64
        };
        let visibility = text(&content("m.room.history_visibility")?, "history_visibility");
        Ok(PublicRoom {
            room_id: room.to_owned(),
            name: text(&content("m.room.name")?, "name"),
            topic: text(&content("m.room.topic")?, "topic"),
            canonical_alias: text(&content("m.room.canonical_alias")?, "alias"),
            avatar_url: text(&content("m.room.avatar")?, "url"),
            joined_members: joined,
            world_readable: visibility.as_deref() == Some("world_readable"),
            guest_can_join: text(&content("m.room.guest_access")?, "guest_access").as_deref()
                == Some("can_join"),
            join_rule: text(&content("m.room.join_rules")?, "join_rule"),
            room_type: text(&content("m.room.create")?, "type"),
        })
    }

    /// Whether a room puts its members in everyone's user directory: anyone may join it
    /// (`join_rule` public) or read its history (`world_readable`), as Synapse counts it.
    fn is_publicly_visible(&self, room: &RoomId) -> Result<bool> {
        let content = |kind: &str| -> Result<Option<Value>> {
            Ok(self
                .rooms
                .state_event(room, kind, "")?
                .map(|p| p.content_value()))
        };
        Ok(
            text(&content("m.room.join_rules")?, "join_rule").as_deref() == Some("public")
                || text(&content("m.room.history_visibility")?, "history_visibility").as_deref()
                    == Some("world_readable"),
        )
    }

    /// `POST /user_directory/search`: users who share a joined room with the searcher or are in
    /// a public room, whose user id or display name contains the term.
    pub fn search_users(
        &self,
        searcher: &UserId,
        term: &str,
        limit: usize,
    ) -> Result<(Vec<FoundUser>, bool)> {
        let term = term.to_lowercase();
        // As Synapse's directory (`search_all_users: false`): everyone in a public room (one
        // anyone may join or whose history anyone may read), and the others who share a room
        // with the searcher, the searcher not among them.
        let mine: BTreeSet<OwnedRoomId> = self.rooms.joined_rooms(searcher)?.into_iter().collect();
        let mut rooms: Vec<(OwnedRoomId, bool)> = Vec::new();
        for (room, _) in self.store.rooms()? {
            let Ok(id) = RoomId::parse(&room) else {
                continue;
            };
            let public = self.is_publicly_visible(&id)?;
            if public || mine.contains(&id) {
                rooms.push((id, public));
            }
        }
        let mut found: BTreeMap<OwnedUserId, (Option<String>, Option<String>)> = BTreeMap::new();
        for (room, public) in rooms {
            let joined: Vec<OwnedUserId> = {
                let head = self.rooms.head(&room)?;
                let h = head.lock();
                h.members
                    .iter()
                    .filter(|(_, m)| *m == "join")
                    .map(|(u, _)| u.clone())
                    .collect()
            };
            for user in joined {
                if found.contains_key(&user) || (!public && user == searcher) {
                    continue;
                }
                let member = self
                    .rooms
                    .state_event(&room, "m.room.member", user.as_str())?
                    .map(|p| p.content_value());
                let name = text(&member, "displayname");
                let hit = user.as_str().to_lowercase().contains(&term)
                    || name
                        .as_ref()
                        .is_some_and(|n| n.to_lowercase().contains(&term));
                if hit {
                    found.insert(user, (name, text(&member, "avatar_url")));
                }
            }
        }
        let limited = found.len() > limit;
        Ok((
            found
                .into_iter()
                .take(limit)
                .map(|(user_id, (display_name, avatar_url))| FoundUser {
                    user_id,
                    display_name,
                    avatar_url,
                })
                .collect(),
            limited,
        ))
    }
}
