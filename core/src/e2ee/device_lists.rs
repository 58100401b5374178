//! Device list tracking: who must hear that a user's devices or keys changed, and what a sync or
//! `/keys/changes` reports as changed and left.
//!
//! A change is a position in the store's stream (`E2eeOp::DeviceListChanged`), so sync tokens
//! cover it like any other stream. Users learn of the changes of everyone they share a joined
//! room with; starting to share a room counts as a change (the client must fetch the newcomer's
//! devices), and ceasing to share any room is reported in `left`.

use std::collections::BTreeSet;
use std::sync::Arc;

use hearth_storage::e2ee::E2eeOp;
use hearth_storage::{ChangeKey, Store, StreamPos, WriteOp};
use ruma::{OwnedRoomId, OwnedServerName, OwnedUserId, RoomId, UserId};
use serde_json::json;

use crate::notifier::Notifier;
use crate::remote::Remote;
use crate::rooms::Rooms;
use crate::{Error, Result};

/// Past this many events since a sync token, a room's membership changes are not walked one by
/// one: all its members count as changed, which costs the client a key query, not correctness.
const MEMBERSHIP_WALK_LIMIT: usize = 500;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct DeviceListChanges {
    pub changed: Vec<OwnedUserId>,
    pub left: Vec<OwnedUserId>,
}

impl DeviceListChanges {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.left.is_empty()
    }
}

/// One device's part of a change, for the `m.device_list_update` EDU.
pub struct DeviceUpdate {
    pub device_id: String,
    pub display_name: Option<String>,
    pub deleted: bool,
    pub keys: Option<serde_json::Value>,
}

pub struct DeviceLists {
    server_name: OwnedServerName,
    store: Arc<dyn Store>,
    rooms: Arc<Rooms>,
    notifier: Arc<Notifier>,
    remote: Arc<dyn Remote>,
}

impl DeviceLists {
    pub fn new(
        server_name: OwnedServerName,
        store: Arc<dyn Store>,
        rooms: Arc<Rooms>,
        notifier: Arc<Notifier>,
        remote: Arc<dyn Remote>,
    ) -> Self {
        Self {
            server_name,
            store,
            rooms,
            notifier,
            remote,
        }
    }

    /// Commits `ops` together with a device list change of `user`, then wakes the local users
    /// who share a room with them and tells the servers of the remote ones.
    pub async fn commit_change(
        &self,
        user: &UserId,
        mut ops: Vec<WriteOp>,
        devices: Vec<DeviceUpdate>,
    ) -> Result<()> {
        ops.push(WriteOp::E2ee(E2eeOp::DeviceListChanged(user.to_string())));
        let positions = self.store.submit(ops).await?;
        let stream_id = positions.last().copied().unwrap_or_default();
        let sharing = self.sharing_users(user)?;
        self.notifier.notify(
            sharing
                .iter()
                .filter(|u| u.server_name() == self.server_name)
                .map(|u| &**u),
        );
        if user.server_name() != self.server_name {
            return Ok(());
        }
        let servers = self.servers_of(&sharing);
        if !servers.is_empty() {
            for d in devices {
                let mut content = json!({
                    "user_id": user,
                    "device_id": d.device_id,
                    "stream_id": stream_id,
                    "prev_id": [],
                    "deleted": d.deleted,
                });
                if let Some(name) = d.display_name {
                    content["device_display_name"] = json!(name);
                }
                if let Some(keys) = d.keys {
                    content["keys"] = keys;
                }
                self.remote.send_edu(
                    &servers,
                    json!({ "edu_type": "m.device_list_update", "content": content }),
                );
            }
        }
        Ok(())
    }

    /// Commits `ops` together with changes of `targets`' keys that only `viewer` hears of (in
    /// their `device_lists.changed`), as Synapse's user signature stream: `viewer`'s own
    /// user-signing key, or `viewer`'s signatures on the targets' master keys. Nobody else
    /// needs to query again, and other servers are not told.
    pub async fn commit_private_change(
        &self,
        viewer: &UserId,
        targets: impl IntoIterator<Item = OwnedUserId>,
        mut ops: Vec<WriteOp>,
    ) -> Result<()> {
        ops.extend(targets.into_iter().map(|target| {
            WriteOp::E2ee(E2eeOp::UserSignatureChanged {
                viewer: viewer.to_string(),
                target: target.to_string(),
            })
        }));
        self.store.submit(ops).await?;
        self.notifier.notify([viewer]);
        Ok(())
    }

    /// Another server says one of its users' devices or cross-signing keys changed: the local
    /// users who share a room with them must query their keys again.
    pub async fn remote_changed(&self, user: &UserId) -> Result<()> {
        self.commit_change(user, Vec::new(), Vec::new()).await
    }

    /// Tells the servers that share a room with a local user that their cross-signing keys
    /// changed (`m.signing_key_update`).
    pub fn announce_signing_keys(
        &self,
        user: &UserId,
        master: Option<serde_json::Value>,
        self_signing: Option<serde_json::Value>,
    ) -> Result<()> {
        let servers = self.servers_of(&self.sharing_users(user)?);
        if servers.is_empty() {
            return Ok(());
        }
        let mut content = json!({ "user_id": user });
        if let Some(m) = master {
            content["master_key"] = m;
        }
        if let Some(s) = self_signing {
            content["self_signing_key"] = s;
        }
        self.remote.send_edu(
            &servers,
            json!({ "edu_type": "m.signing_key_update", "content": content }),
        );
        Ok(())
    }

    /// The other servers among `users`'.
    fn servers_of(&self, users: &BTreeSet<OwnedUserId>) -> Vec<OwnedServerName> {
        users
            .iter()
            .map(|u| u.server_name().to_owned())
            .filter(|s| *s != self.server_name)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    fn joined_rooms(&self, user: &UserId) -> Result<Vec<OwnedRoomId>> {
        self.rooms
            .memberships_of(user)?
            .iter()
            .filter(|(_, m)| m.membership == "join")
            .map(|(r, _)| RoomId::parse(r).map_err(Error::internal))
            .collect()
    }

    /// Everyone who shares a joined room with `user`, `user` included.
    pub fn sharing_users(&self, user: &UserId) -> Result<BTreeSet<OwnedUserId>> {
        let mut out = BTreeSet::from([user.to_owned()]);
        for room in self.joined_rooms(user)? {
            let head = self.rooms.head(&room)?;
            let h = head.lock();
            out.extend(
                h.members
                    .iter()
                    .filter(|(_, m)| *m == "join")
                    .map(|(u, _)| u.clone()),
            );
        }
        Ok(out)
    }

    /// Whether `a` and `b` share a joined room now.
    pub fn share_a_room(&self, a: &UserId, b: &UserId) -> Result<bool> {
        for room in self.joined_rooms(a)? {
            if self.rooms.head(&room)?.lock().membership_of(b) == Some("join") {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// What `user` must hear about device lists for `(since, upto]`.
    pub fn changes(
        &self,
        user: &UserId,
        since: StreamPos,
        upto: StreamPos,
    ) -> Result<DeviceListChanges> {
        let mut changed = BTreeSet::new();
        let mut maybe_left = BTreeSet::new();
        for (room, m) in self.rooms.memberships_of(user)?.iter() {
            if m.pos > upto {
                continue;
            }
            let room_id = RoomId::parse(room).map_err(Error::internal)?;
            if m.membership != "join" && !self.rooms.exists(&room_id)? {
                // An invite to (or a turned-down invite of) a room this server is not in.
                continue;
            }
            if m.pos > since {
                // The user's own membership changed: everyone in the room is new to them, or
                // possibly gone.
                let joined = self.joined_members(&room_id)?;
                match m.membership.as_str() {
                    "join" => changed.extend(joined),
                    "leave" | "ban" => maybe_left.extend(joined),
                    _ => {}
                }
                continue;
            }
            // Only rooms whose member list moved are walked: a message alone changes nothing.
            if m.membership == "join"
                && self
                    .store
                    .changed_after(&ChangeKey::RoomMembers(room.clone()), since)
            {
                self.membership_changes(&room_id, since, upto, &mut changed, &mut maybe_left)?;
            }
        }
        // Joining a room does not make the user's own devices news to them.
        changed.remove(user);
        let mut left = Vec::new();
        for other in maybe_left {
            if *other != *user && !self.share_a_room(user, &other)? {
                changed.remove(&other);
                left.push(other);
            }
        }
        if self.store.changed_after(&ChangeKey::DeviceLists, since) {
            for (_, other) in self.store.device_list_changes(since, upto)? {
                let Ok(other) = UserId::parse(other) else {
                    continue;
                };
                // The user's own devices changing is news to their other devices.
                if other == user || self.share_a_room(user, &other)? {
                    changed.insert(other);
                }
            }
            for target in self
                .store
                .user_signature_changes(user.as_str(), since, upto)?
            {
                if let Ok(target) = UserId::parse(target) {
                    changed.insert(target);
                }
            }
        }
        Ok(DeviceListChanges {
            changed: changed.into_iter().collect(),
            left,
        })
    }

    fn joined_members(&self, room: &RoomId) -> Result<Vec<OwnedUserId>> {
        self.rooms.joined_members(room)
    }

    /// Other users who joined or left a room in `(since, upto]`.
    fn membership_changes(
        &self,
        room: &RoomId,
        since: StreamPos,
        upto: StreamPos,
        joined: &mut BTreeSet<OwnedUserId>,
        left: &mut BTreeSet<OwnedUserId>,
    ) -> Result<()> {
        let events =
            self.store
                .room_events(room.as_str(), since + 1, upto, false, MEMBERSHIP_WALK_LIMIT)?;
        if events.len() == MEMBERSHIP_WALK_LIMIT {
            joined.extend(self.joined_members(room)?);
            return Ok(());
        }
        for (_, id) in events {
            let id = ruma::EventId::parse(&id).map_err(Error::internal)?;
            let Some(pdu) = self.rooms.pdu(&id)? else {
                continue;
            };
            let (Some(membership), Some(key)) = (pdu.membership(), pdu.state_key.as_deref()) else {
                continue;
            };
            let Ok(member) = UserId::parse(key) else {
                continue;
            };
            match membership.as_str() {
                "join" => {
                    left.remove(&member);
                    joined.insert(member);
                }
                "leave" | "ban" => {
                    joined.remove(&member);
                    left.insert(member);
                }
                _ => {}
            }
        }
        Ok(())
    }
}
