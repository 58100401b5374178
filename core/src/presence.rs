//! Presence: online, unavailable, offline, with a status message and last activity.
//!
//! Presence lives in memory. A user is online while a client syncs (long-poll or WebSocket);
//! when every client has stopped, the user turns unavailable after `unavailable_after` and
//! offline after `offline_after`. Each change takes a serial of the ephemeral stream and wakes
//! the users who share a room with the user, who alone see it in `/sync`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use hearth_storage::Store;
use parking_lot::RwLock;
use ruma::{OwnedUserId, UserId};
use serde_json::json;
use serde_json::value::RawValue as RawJsonValue;
use tokio::time::Instant;

use crate::notifier::Notifier;
use crate::rooms::Rooms;
use crate::streams::EphemeralSerial;
use crate::util::now_ms;
use crate::{Error, Result};

/// A remote user of whom their server said nothing for this long is shown offline.
const REMOTE_SILENCE: Duration = Duration::from_secs(30 * 60);

/// Activity within this window counts as "currently active", as in Synapse.
const CURRENTLY_ACTIVE: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct PresenceConfig {
    pub enabled: bool,
    pub unavailable_after: Duration,
    pub offline_after: Duration,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            unavailable_after: Duration::from_secs(30),
            offline_after: Duration::from_secs(300),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Online,
    Unavailable,
    Offline,
}

impl State {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "online" => Some(State::Online),
            "unavailable" => Some(State::Unavailable),
            "offline" => Some(State::Offline),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Online => "online",
            State::Unavailable => "unavailable",
            State::Offline => "offline",
        }
    }
}

#[derive(Clone, Debug)]
struct Entry {
    state: State,
    status_msg: Option<String>,
    /// Wall-clock time of the user's last activity (ms since the epoch).
    last_active_ts: u64,
    /// When a client last synced, and how many are syncing right now.
    last_sync: Instant,
    syncing: usize,
    serial: u64,
}

impl Entry {
    fn new(state: State) -> Self {
        Self {
            state,
            status_msg: None,
            last_active_ts: 0,
            last_sync: Instant::now(),
            syncing: 0,
            serial: 0,
        }
    }
}

/// What `GET /presence/{user}/status` and `m.presence` events carry.
#[derive(Clone, Debug)]
pub struct PresenceView {
    pub user_id: OwnedUserId,
    pub state: State,
    pub status_msg: Option<String>,
    pub last_active_ago: Option<u64>,
    pub currently_active: bool,
}

impl PresenceView {
    pub fn to_event(&self) -> Box<RawJsonValue> {
        let mut content = json!({
            "presence": self.state.as_str(),
            "currently_active": self.currently_active,
        });
        if let Some(ago) = self.last_active_ago {
            content["last_active_ago"] = json!(ago);
        }
        if let Some(msg) = &self.status_msg {
            content["status_msg"] = json!(msg);
        }
        serde_json::value::to_raw_value(
            &json!({ "type": "m.presence", "sender": self.user_id, "content": content }),
        )
        .expect("presence serialises")
    }

    /// The event of the legacy endpoints (`/events`, `/initialSync`): the user named in the
    /// content, with no `sender`, as Synapse sends it there.
    pub fn to_legacy_event(&self) -> Box<RawJsonValue> {
        let mut content = json!({
            "user_id": self.user_id,
            "presence": self.state.as_str(),
            "currently_active": self.currently_active,
        });
        if let Some(ago) = self.last_active_ago {
            content["last_active_ago"] = json!(ago);
        }
        if let Some(msg) = &self.status_msg {
            content["status_msg"] = json!(msg);
        }
        serde_json::value::to_raw_value(&json!({ "type": "m.presence", "content": content }))
            .expect("presence serialises")
    }
}

pub struct Presence {
    config: PresenceConfig,
    store: Arc<dyn Store>,
    rooms: Arc<Rooms>,
    notifier: Arc<Notifier>,
    serial: Arc<EphemeralSerial>,
    users: RwLock<Users>,
}

#[derive(Default)]
struct Users {
    entries: HashMap<OwnedUserId, Entry>,
    /// serial → user, one row per user at their latest change: what changed since a token, without
    /// a scan of everyone.
    changes: std::collections::BTreeMap<u64, OwnedUserId>,
}

impl Users {
    /// Gives the user's entry a new serial.
    fn bump(&mut self, user: &UserId, serial: u64) {
        if let Some(e) = self.entries.get_mut(user) {
            self.changes.remove(&e.serial);
            e.serial = serial;
            self.changes.insert(serial, user.to_owned());
        }
    }
}

impl Presence {
    pub fn new(
        config: PresenceConfig,
        store: Arc<dyn Store>,
        rooms: Arc<Rooms>,
        notifier: Arc<Notifier>,
        serial: Arc<EphemeralSerial>,
    ) -> Self {
        Self {
            config,
            store,
            rooms,
            notifier,
            serial,
            users: RwLock::new(Users::default()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    /// Starts the timer that moves users who stopped syncing to unavailable, then offline.
    pub fn start_reaper(self: &Arc<Self>) {
        if !self.config.enabled {
            return;
        }
        let this = self.clone();
        let tick = (self.config.unavailable_after / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(5));
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(tick);
            loop {
                interval.tick().await;
                this.reap();
            }
        });
    }

    fn reap(&self) {
        let now = Instant::now();
        let mut changed = Vec::new();
        let ours = self.rooms.server_name().to_owned();
        {
            let mut users = self.users.write();
            for (user, e) in users.entries.iter_mut() {
                if e.syncing > 0 {
                    continue;
                }
                let idle = now.duration_since(e.last_sync);
                // A remote user's server reports their changes; only a long silence from it
                // turns them offline here (as Synapse does).
                let remote = user.server_name() != ours;
                let next = if remote {
                    if idle >= REMOTE_SILENCE && e.state != State::Offline {
                        State::Offline
                    } else {
                        e.state
                    }
                } else if idle >= self.config.offline_after {
                    State::Offline
                } else if idle >= self.config.unavailable_after && e.state == State::Online {
                    State::Unavailable
                } else {
                    e.state
                };
                if next != e.state {
                    e.state = next;
                    changed.push(user.clone());
                }
            }
            for user in &changed {
                users.bump(user, self.serial.next());
            }
        }
        for user in changed {
            self.wake_for(&user);
        }
    }

    /// A client of `user` starts a sync with `set_presence` (default online). Returns a guard
    /// that marks the end of the sync when dropped.
    pub fn sync_started(self: &Arc<Self>, user: &UserId, set: Option<State>) -> SyncGuard {
        if !self.config.enabled {
            return SyncGuard(None);
        }
        let set = set.unwrap_or(State::Online);
        let changed = {
            let mut users = self.users.write();
            let e = users
                .entries
                .entry(user.to_owned())
                .or_insert_with(|| Entry::new(State::Offline));
            e.syncing += 1;
            e.last_sync = Instant::now();
            // "offline" on a sync means "do not change my presence by syncing".
            if set == State::Offline || e.state == set {
                false
            } else {
                e.state = set;
                if set == State::Online {
                    e.last_active_ts = now_ms();
                }
                users.bump(user, self.serial.next());
                true
            }
        };
        if changed {
            self.wake_for(user);
        }
        SyncGuard(Some((self.clone(), user.to_owned())))
    }

    fn sync_ended(&self, user: &UserId) {
        if let Some(e) = self.users.write().entries.get_mut(user) {
            e.syncing = e.syncing.saturating_sub(1);
            e.last_sync = Instant::now();
        }
    }

    /// Whether a client of the user is syncing now (or was a moment ago: between two long
    /// polls). Without presence nobody is tracked, and nobody counts as connected.
    pub fn connected(&self, user: &UserId) -> bool {
        self.users
            .read()
            .entries
            .get(user)
            .is_some_and(|e| e.syncing > 0 || e.last_sync.elapsed() < Duration::from_secs(5))
    }

    /// The user did something (sent a message): they are active now.
    pub fn touch(&self, user: &UserId) {
        if !self.config.enabled {
            return;
        }
        let mut users = self.users.write();
        if let Some(e) = users.entries.get_mut(user) {
            e.last_active_ts = now_ms();
            e.last_sync = Instant::now();
        }
    }

    /// `PUT /presence/{user}/status`.
    pub fn set(&self, user: &UserId, state: State, status_msg: Option<String>) {
        if !self.config.enabled {
            return;
        }
        {
            let mut users = self.users.write();
            let e = users
                .entries
                .entry(user.to_owned())
                .or_insert_with(|| Entry::new(state));
            e.state = state;
            e.status_msg = status_msg;
            if state == State::Online {
                e.last_active_ts = now_ms();
                e.last_sync = Instant::now();
            }
            users.bump(user, self.serial.next());
        }
        self.wake_for(user);
    }

    fn view(&self, user: &UserId, e: &Entry) -> PresenceView {
        let now = now_ms();
        let ago = (e.last_active_ts > 0).then(|| now.saturating_sub(e.last_active_ts));
        PresenceView {
            user_id: user.to_owned(),
            state: e.state,
            status_msg: e.status_msg.clone(),
            last_active_ago: ago,
            currently_active: e.state == State::Online
                && ago.is_some_and(|a| a < CURRENTLY_ACTIVE.as_millis() as u64),
        }
    }

    /// `GET /presence/{user}/status`: the user themselves, or someone sharing a room with them.
    pub fn get(&self, viewer: &UserId, user: &UserId) -> Result<PresenceView> {
        if self.store.user(user.as_str())?.is_none()
            && user.server_name() == self.rooms.server_name()
        {
            return Err(Error::not_found("Unknown user"));
        }
        if viewer != user && !self.co_members(viewer)?.contains(user) {
            return Err(Error::forbidden(
                "You are not allowed to see their presence",
            ));
        }
        let users = self.users.read();
        Ok(match users.entries.get(user) {
            Some(e) if self.config.enabled => self.view(user, e),
            _ => PresenceView {
                user_id: user.to_owned(),
                state: State::Offline,
                status_msg: None,
                last_active_ago: None,
                currently_active: false,
            },
        })
    }

    /// Users who share a joined room with `user`, and the user.
    fn co_members(&self, user: &UserId) -> Result<HashSet<OwnedUserId>> {
        let mut out = HashSet::from([user.to_owned()]);
        for (room, m) in self.rooms.memberships_of(user)?.iter() {
            if m.membership != "join" {
                continue;
            }
            let Ok(room_id) = ruma::RoomId::parse(room) else {
                continue;
            };
            let head = self.rooms.head(&room_id)?;
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

    /// Wakes the users who see `user`'s presence, and for a local user tells the other servers
    /// that share a room with them.
    fn wake_for(&self, user: &UserId) {
        let users = match self.co_members(user) {
            Ok(users) => users,
            Err(e) => {
                tracing::warn!(error = %e, "presence wake-up failed");
                return;
            }
        };
        self.notifier.notify(users.iter().map(|u| &**u));
        let ours = self.rooms.server_name();
        if user.server_name() != ours {
            return;
        }
        let servers: std::collections::BTreeSet<ruma::OwnedServerName> = users
            .iter()
            .map(|u| u.server_name())
            .filter(|s| *s != ours)
            .map(ToOwned::to_owned)
            .collect();
        let view = self
            .users
            .read()
            .entries
            .get(user)
            .map(|e| self.view(user, e));
        if let Some(view) = view
            && !servers.is_empty()
        {
            let servers: Vec<_> = servers.into_iter().collect();
            let mut push = json!({
                "user_id": user,
                "presence": view.state.as_str(),
                "currently_active": view.currently_active,
            });
            if let Some(ago) = view.last_active_ago {
                push["last_active_ago"] = json!(ago);
            }
            if let Some(msg) = &view.status_msg {
                push["status_msg"] = json!(msg);
            }
            self.rooms.remote.send_edu(
                &servers,
                json!({ "edu_type": "m.presence", "content": { "push": [push] } }),
            );
        }
    }

    /// An `m.presence` update from a user's own server.
    pub fn set_remote(
        &self,
        user: &UserId,
        state: State,
        status_msg: Option<String>,
        last_active_ago: Option<u64>,
    ) {
        if !self.config.enabled || user.server_name() == self.rooms.server_name() {
            return;
        }
        {
            let mut users = self.users.write();
            let e = users
                .entries
                .entry(user.to_owned())
                .or_insert_with(|| Entry::new(state));
            e.state = state;
            e.status_msg = status_msg;
            e.last_sync = Instant::now();
            if let Some(ago) = last_active_ago {
                e.last_active_ts = now_ms().saturating_sub(ago);
            }
            users.bump(user, self.serial.next());
        }
        self.wake_for(user);
    }

    /// `m.presence` events for `viewer`: changes after serial `since` (or everyone not offline
    /// on a first sync) of users who share a room with the viewer.
    pub fn for_sync(&self, viewer: &UserId, since: Option<u64>) -> Result<Vec<Box<RawJsonValue>>> {
        Ok(self
            .visible_to(viewer, since)?
            .iter()
            .map(PresenceView::to_event)
            .collect())
    }

    /// The presence of the users who share a room with `viewer`, as [`Self::for_sync`]
    /// selects them.
    pub fn visible_to(&self, viewer: &UserId, since: Option<u64>) -> Result<Vec<PresenceView>> {
        let candidates = self.changed_since(since);
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let visible = self.co_members(viewer)?;
        Ok(candidates
            .into_iter()
            .filter(|v| visible.contains(&v.user_id))
            .collect())
    }

    /// Users whose presence changed after serial `since`, or everyone not offline without one.
    pub fn changed_since(&self, since: Option<u64>) -> Vec<PresenceView> {
        if !self.config.enabled {
            return Vec::new();
        }
        let users = self.users.read();
        match since {
            Some(s) => users
                .changes
                .range(s + 1..)
                .filter_map(|(_, u)| users.entries.get(u).map(|e| self.view(u, e)))
                .collect(),
            None => users
                .entries
                .iter()
                .filter(|(_, e)| e.state != State::Offline)
                .map(|(u, e)| self.view(u, e))
                .collect(),
        }
    }

    /// The presence of each of `users` (offline for those never seen), for who may see it
    /// already (the members of a room the viewer reads).
    pub fn of_users<'a>(&self, users: impl IntoIterator<Item = &'a UserId>) -> Vec<PresenceView> {
        if !self.config.enabled {
            return Vec::new();
        }
        let all = self.users.read();
        users
            .into_iter()
            .map(|u| match all.entries.get(u) {
                Some(e) => self.view(u, e),
                None => PresenceView {
                    user_id: u.to_owned(),
                    state: State::Offline,
                    status_msg: None,
                    last_active_ago: None,
                    currently_active: false,
                },
            })
            .collect()
    }
}

/// Marks the end of a sync when dropped (also when the request is cancelled).
pub struct SyncGuard(Option<(Arc<Presence>, OwnedUserId)>);

impl Drop for SyncGuard {
    fn drop(&mut self) {
        if let Some((p, user)) = self.0.take() {
            p.sync_ended(&user);
        }
    }
}
