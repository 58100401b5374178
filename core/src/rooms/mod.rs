//! Rooms: the per-room event graph, its state, and the operations that append to it.
//!
//! Each room has a [`RoomHead`] in memory: forward extremities, depth, current state and
//! membership. Appending an event locks the head, builds and signs the PDU, runs the room
//! version's auth rules against the current state, updates the head, and queues the write batch
//! *while still holding the lock* — so batches of one room reach the writer in graph order —
//! then waits for durability outside the lock. Readers learn of the event only after it is
//! durable (see `Rooms::finish`).

mod build;
pub mod create;
mod federated;
mod forks;
mod gap_edge;
pub mod history;
pub mod invites;
mod state_res_v1;
pub use federated::{Received, RemoteJoin, StateAndAuthChain};
pub use gap_edge::GapEdge;
pub mod membership;
pub mod pdu;
pub mod peer_reads;
pub mod redaction;
pub mod relations;
pub mod state;
pub mod timeline;
pub mod upgrade;
pub mod version;
pub mod visibility;

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hearth_storage::{
    ChangeKey, MembershipRecord, RoomRecord, StateGroupRecord, Store, StreamPos, WriteOp,
};
use lru::LruCache;
use parking_lot::Mutex;
use ruma::room_version_rules::RoomVersionRules;
use ruma::{EventId, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, RoomVersionId, UserId};

pub use build::NewEvent;
pub use hearth_storage::TxnRef;
pub use pdu::{ClientFormat, Pdu, PduRef};
pub use state::{SharedState, StateMap};

use crate::keys::ServerKeys;
use crate::notifier::Notifier;
use crate::{CoreConfig, Error, Result};

const STATE_GROUP_COUNTER: &str = "state_group";

/// `(room id, membership)` for each room a user has a membership in.
pub type UserMemberships = Arc<Vec<(String, MembershipRecord)>>;

/// The in-memory head of one room's graph. A clone is a scratch copy to build on: a room
/// upgrade prepares its events on one and swaps it in only when everything succeeded.
#[derive(Clone)]
pub struct RoomHead {
    pub room_id: OwnedRoomId,
    pub version: RoomVersionId,
    pub rules: RoomVersionRules,
    pub extremities: Vec<OwnedEventId>,
    pub depth: u64,
    pub state_group: u64,
    pub state_group_rec: StateGroupRecord,
    pub state: SharedState,
    /// user → membership, for every user with a member event in the current state. Change it
    /// through [`RoomHead::set_membership`], which keeps `joined` in step.
    pub members: HashMap<OwnedUserId, String>,
    /// How many members are joined: asked on every sync and receipt, so not counted each time.
    joined: usize,
    pub is_public: bool,
}

impl RoomHead {
    pub fn membership_of(&self, user: &UserId) -> Option<&str> {
        self.members.get(user).map(String::as_str)
    }

    pub fn joined_count(&self) -> usize {
        self.joined
    }

    pub fn set_membership(&mut self, user: OwnedUserId, membership: String) {
        let now_joined = membership == "join";
        let was_joined = self.members.insert(user, membership).as_deref() == Some("join");
        match (was_joined, now_joined) {
            (false, true) => self.joined += 1,
            (true, false) => self.joined -= 1,
            _ => {}
        }
    }

    /// Empties the joined count, before the member map is rebuilt.
    pub(crate) fn reset_joined(&mut self) {
        self.joined = 0;
    }

    /// The servers with a member joined to the room.
    pub fn joined_servers(&self) -> std::collections::BTreeSet<&ruma::ServerName> {
        self.members
            .iter()
            .filter(|(_, m)| *m == "join")
            .map(|(u, _)| u.server_name())
            .collect()
    }

    /// Users a new event must wake: everyone joined or invited.
    pub fn interested_users(&self) -> impl Iterator<Item = &OwnedUserId> {
        self.members
            .iter()
            .filter(|(_, m)| *m == "join" || *m == "invite")
            .map(|(u, _)| u)
    }

    pub(crate) fn record(&self) -> RoomRecord {
        RoomRecord {
            room_version: self.version.to_string(),
            forward_extremities: self.extremities.iter().map(|e| e.to_string()).collect(),
            depth: self.depth,
            state_group: self.state_group,
            is_public: self.is_public,
        }
    }
}

/// Writes prepared for one commit, and what to tell whom once it is durable.
#[derive(Default)]
pub struct Batch {
    pub ops: Vec<WriteOp>,
    pub events: Vec<PduRef>,
    groups: Vec<(u64, StateGroupRecord)>,
    txns: Vec<TxnRef>,
    notify: HashSet<OwnedUserId>,
    /// Servers that events of this batch were queued for.
    outbound: HashSet<ruma::OwnedServerName>,
    room_id: Option<OwnedRoomId>,
    /// Events this batch's redactions pruned, in their pruned form.
    redacted: Vec<PduRef>,
    /// Events whose meta this batch rewrites (outliers placed in the room's history).
    rewritten_metas: Vec<OwnedEventId>,
}

pub struct Rooms {
    /// This object, for the work that must outlive a caller who stops waiting (see `finish`).
    this: std::sync::Weak<Rooms>,
    pub(crate) config: Arc<CoreConfig>,
    pub(crate) store: Arc<dyn Store>,
    keys: Arc<ServerKeys>,
    notifier: Arc<Notifier>,
    /// Told when events were queued for other servers; carries ephemeral updates to them.
    pub(crate) remote: Arc<dyn crate::remote::Remote>,
    heads: Mutex<HashMap<OwnedRoomId, Arc<Mutex<RoomHead>>>>,
    /// Parsed PDUs. Events change only when redacted: see `redaction_gen`.
    events: Mutex<LruCache<OwnedEventId, PduRef>>,
    /// Bumped when a redaction is durable. A reader caches what it read from the store only
    /// if no redaction landed meanwhile, so an event's unpruned form cannot return to a cache.
    redaction_gen: AtomicU64,
    /// Each user's memberships, with the change-index position they were read at.
    user_memberships: Mutex<LruCache<OwnedUserId, (StreamPos, UserMemberships)>>,
    /// Where durable events sit (position, state groups): immutable too once durable.
    metas: Mutex<LruCache<OwnedEventId, hearth_storage::EventMeta>>,
    /// Events queued but not yet durable, visible to auth checks of the events that follow.
    pending_events: Mutex<HashMap<OwnedEventId, PduRef>>,
    /// The state group after each queued event, for state resolution over extremities that
    /// are not durable yet.
    pending_state_after: Mutex<HashMap<OwnedEventId, u64>>,
    state_cache: Mutex<LruCache<u64, SharedState>>,
    /// Each event's aggregated children, with the room change position they were read at.
    aggregations: Mutex<LruCache<OwnedEventId, relations::CachedAggregations>>,
    pending_groups: Mutex<HashMap<u64, StateGroupRecord>>,
    /// Transaction ids of queued events, so a retried request finds its event before it is
    /// durable too.
    pending_txns: Mutex<HashMap<TxnRef, OwnedEventId>>,
    next_group: AtomicU64,
    /// The `origin_server_ts` of the last version-12 create event made here: each gets a later
    /// one, so that two rooms a user creates in the same millisecond (with the same content)
    /// are not one event, and one room id.
    last_create_ts: AtomicU64,
    /// Per room, one backfill at a time (see `history.rs`).
    history_gates: Mutex<HashMap<OwnedRoomId, Arc<tokio::sync::Mutex<history::HistoryGate>>>>,
}

impl Rooms {
    pub fn new(
        config: Arc<CoreConfig>,
        store: Arc<dyn Store>,
        keys: Arc<ServerKeys>,
        notifier: Arc<Notifier>,
        remote: Arc<dyn crate::remote::Remote>,
    ) -> Result<Arc<Self>> {
        let next_group = store.counter(STATE_GROUP_COUNTER)?;
        let cap = |n| NonZeroUsize::new(n).expect("non-zero");
        Ok(Arc::new_cyclic(|this| Self {
            this: this.clone(),
            config,
            store,
            keys,
            notifier,
            remote,
            heads: Mutex::new(HashMap::new()),
            events: Mutex::new(LruCache::new(cap(50_000))),
            redaction_gen: AtomicU64::new(0),
            metas: Mutex::new(LruCache::new(cap(50_000))),
            user_memberships: Mutex::new(LruCache::new(cap(20_000))),
            pending_events: Mutex::new(HashMap::new()),
            pending_state_after: Mutex::new(HashMap::new()),
            state_cache: Mutex::new(LruCache::new(cap(2_000))),
            aggregations: Mutex::new(LruCache::new(cap(50_000))),
            pending_groups: Mutex::new(HashMap::new()),
            pending_txns: Mutex::new(HashMap::new()),
            next_group: AtomicU64::new(next_group),
            last_create_ts: AtomicU64::new(0),
            history_gates: Mutex::new(HashMap::new()),
        }))
    }

    pub fn server_name(&self) -> &ruma::ServerName {
        &self.config.server_name
    }

    /// The head of a room this server knows, loading it on first use.
    pub fn head(&self, room_id: &RoomId) -> Result<Arc<Mutex<RoomHead>>> {
        if let Some(h) = self.heads.lock().get(room_id) {
            return Ok(h.clone());
        }
        let rec = self
            .store
            .room(room_id.as_str())?
            .ok_or_else(|| Error::not_found("Room not found"))?;
        let head = Arc::new(Mutex::new(self.load_head(room_id, rec)?));
        Ok(self
            .heads
            .lock()
            .entry(room_id.to_owned())
            .or_insert(head)
            .clone())
    }

    pub fn exists(&self, room_id: &RoomId) -> Result<bool> {
        Ok(self.heads.lock().contains_key(room_id) || self.store.room(room_id.as_str())?.is_some())
    }

    fn load_head(&self, room_id: &RoomId, rec: RoomRecord) -> Result<RoomHead> {
        let version =
            RoomVersionId::try_from(rec.room_version.as_str()).map_err(Error::internal)?;
        let rules = version
            .rules()
            .ok_or_else(|| Error::UnsupportedRoomVersion(format!("room version {version}")))?;
        let state = self.state_at_group(rec.state_group)?;
        let state_group_rec = self
            .store
            .state_group(rec.state_group)?
            .ok_or_else(|| Error::Internal(format!("missing state group {}", rec.state_group)))?;
        let mut members = HashMap::new();
        for ((t, k), id) in state.iter() {
            if t == "m.room.member"
                && let Ok(user) = UserId::parse(k.as_str())
                && let Some(m) = self.pdu(id)?.and_then(|p| p.membership())
            {
                members.insert(user, m);
            }
        }
        Ok(RoomHead {
            room_id: room_id.to_owned(),
            version,
            rules,
            extremities: rec
                .forward_extremities
                .iter()
                .map(|e| OwnedEventId::try_from(e.as_str()).map_err(Error::internal))
                .collect::<Result<_>>()?,
            depth: rec.depth,
            state_group: rec.state_group,
            state_group_rec,
            state,
            joined: members.values().filter(|m| *m == "join").count(),
            members,
            is_public: rec.is_public,
        })
    }

    /// A PDU by id: queued, cached or stored.
    pub fn pdu(&self, event_id: &EventId) -> Result<Option<PduRef>> {
        if let Some(p) = self.pending_events.lock().get(event_id) {
            return Ok(Some(p.clone()));
        }
        if let Some(p) = self.events.lock().get(event_id) {
            return Ok(Some(p.clone()));
        }
        let generation = self.redaction_gen.load(Ordering::SeqCst);
        let Some(json) = self.store.event_json(event_id.as_str())? else {
            return Ok(None);
        };
        let room = self.store.event_meta(event_id.as_str())?.map(|m| m.room_id);
        let room = room.as_deref().and_then(|r| RoomId::parse(r).ok());
        let pdu = Arc::new(Pdu::parse(event_id.to_owned(), &json, room.as_deref())?);
        let mut cache = self.events.lock();
        if self.redaction_gen.load(Ordering::SeqCst) == generation {
            cache.put(event_id.to_owned(), pdu.clone());
        }
        Ok(Some(pdu))
    }

    /// The full state map of a state group.
    pub fn state_at_group(&self, id: u64) -> Result<SharedState> {
        // Group 0 is the empty state before a room's create event.
        if id == 0 {
            return Ok(Arc::default());
        }
        if let Some(s) = self.state_cache.lock().get(&id) {
            return Ok(s.clone());
        }
        let pending = |g: u64| self.pending_groups.lock().get(&g).cloned();
        let map = Arc::new(state::resolve(&*self.store, &pending, id)?);
        self.state_cache.lock().put(id, map.clone());
        Ok(map)
    }

    /// A user's latest membership of every room they have one in, as durable: from memory
    /// unless the store's change index says it changed since it was read.
    pub fn memberships_of(&self, user: &UserId) -> Result<UserMemberships> {
        let key = ChangeKey::Memberships(user.to_string());
        // Read the index before the store: a change landing between the two is then seen as
        // newer than the cached copy next time, never missed.
        let version = self.store.last_change(&key).unwrap_or(0);
        if let Some((v, m)) = self.user_memberships.lock().get(user)
            && *v == version
        {
            return Ok(m.clone());
        }
        let list = Arc::new(self.store.memberships_of_user(user.as_str())?);
        self.user_memberships
            .lock()
            .put(user.to_owned(), (version, list.clone()));
        Ok(list)
    }

    pub fn current_state(&self, room_id: &RoomId) -> Result<SharedState> {
        Ok(self.head(room_id)?.lock().state.clone())
    }

    /// The users joined to a room now.
    pub fn joined_members(&self, room_id: &RoomId) -> Result<Vec<OwnedUserId>> {
        let head = self.head(room_id)?;
        let h = head.lock();
        Ok(h.members
            .iter()
            .filter(|(_, m)| *m == "join")
            .map(|(u, _)| u.clone())
            .collect())
    }

    /// This server's users joined to a room now.
    pub fn local_members(&self, room_id: &RoomId) -> Result<Vec<OwnedUserId>> {
        let mut members = self.joined_members(room_id)?;
        members.retain(|u| u.server_name() == self.server_name());
        Ok(members)
    }

    pub fn membership(&self, room_id: &RoomId, user: &UserId) -> Result<Option<String>> {
        Ok(self
            .head(room_id)?
            .lock()
            .membership_of(user)
            .map(str::to_owned))
    }

    pub fn room_version(&self, room_id: &RoomId) -> Result<RoomVersionId> {
        Ok(self.head(room_id)?.lock().version.clone())
    }

    /// The current state event of a type and key, if any.
    pub fn state_event(
        &self,
        room_id: &RoomId,
        kind: &str,
        state_key: &str,
    ) -> Result<Option<PduRef>> {
        let state = self.current_state(room_id)?;
        match state.get(&(kind.to_owned(), state_key.to_owned())) {
            Some(id) => self.pdu(id),
            None => Ok(None),
        }
    }

    /// Appends one locally made event and waits until it is durable.
    pub async fn send(&self, room_id: &RoomId, sender: &UserId, event: NewEvent) -> Result<PduRef> {
        let head = self.head(room_id)?;
        let queued = {
            let mut head = head.lock();
            if let Some(txn) = &event.txn
                && let Some(existing) = self.txn_event(txn)?
            {
                return self
                    .pdu(&existing)?
                    .ok_or_else(|| Error::internal("transaction event vanished"));
            }
            let mut batch = Batch::default();
            self.prepare(&mut head, sender, event, &mut batch)?;
            self.enqueue(&head, batch)
        };
        let mut events = self.finish(queued).await?;
        Ok(events.pop().expect("one event was sent"))
    }

    /// Lists or unlists the room in the public directory. Set under the head's lock, so the
    /// room records written with later events carry it too.
    pub async fn set_public(&self, room_id: &RoomId, public: bool) -> Result<()> {
        let head = self.head(room_id)?;
        let commit = {
            let mut h = head.lock();
            h.is_public = public;
            self.store.submit(vec![WriteOp::Directory(
                hearth_storage::directory::DirectoryOp::SetVisibility {
                    room_id: room_id.to_string(),
                    public,
                },
            )])
        };
        commit.await?;
        Ok(())
    }

    /// The event a device's transaction created, if it did.
    pub fn txn_event(&self, txn: &TxnRef) -> Result<Option<OwnedEventId>> {
        if let Some(id) = self.pending_txns.lock().get(txn) {
            return Ok(Some(id.clone()));
        }
        let stored = self
            .store
            .txn_event(&txn.user_id, &txn.device_id, &txn.key())?;
        stored
            .map(|id| OwnedEventId::try_from(id).map_err(Error::internal))
            .transpose()
    }

    fn allocate_group(&self) -> u64 {
        self.next_group.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Queues a prepared batch on the writer. Call with the room head still locked, so that
    /// batches of one room reach the writer in the order their events reference each other.
    fn enqueue(&self, head: &RoomHead, mut batch: Batch) -> Queued {
        batch.ops.push(WriteOp::SetCounter(
            STATE_GROUP_COUNTER.to_owned(),
            self.next_group.load(Ordering::SeqCst),
        ));
        batch.room_id = Some(head.room_id.clone());
        let commit = self.store.submit(std::mem::take(&mut batch.ops));
        Queued { batch, commit }
    }

    /// Drops a batch's entries from the pending maps: once it is durable, or when it will never
    /// be.
    fn clear_pending(&self, batch: &Batch) {
        let mut events = self.pending_events.lock();
        let mut state_after = self.pending_state_after.lock();
        for e in &batch.events {
            events.remove(&e.event_id);
            state_after.remove(&e.event_id);
        }
        let mut groups = self.pending_groups.lock();
        for (id, _) in &batch.groups {
            groups.remove(id);
        }
        let mut txns = self.pending_txns.lock();
        for t in &batch.txns {
            txns.remove(t);
        }
    }

    /// Waits for a queued batch to be durable, then makes it visible: caches, the room's
    /// position, and the wake-ups of the users it concerns. That runs in a task of its own, to
    /// the end even if the caller stops waiting (a client that hangs up mid-request drops its
    /// handler): the batch becomes durable regardless, and those waiting on the room must
    /// hear of it now, not at their next wake-up.
    async fn finish(&self, queued: Queued) -> Result<Vec<PduRef>> {
        let this = self
            .this
            .upgrade()
            .expect("Rooms is only ever used through its Arc");
        tokio::spawn(async move { this.complete(queued).await })
            .await
            .map_err(Error::internal)?
    }

    async fn complete(&self, queued: Queued) -> Result<Vec<PduRef>> {
        let Queued { batch, commit } = queued;
        let result = commit.await;
        if result.is_ok() {
            {
                let mut cache = self.events.lock();
                for e in &batch.events {
                    cache.put(e.event_id.clone(), e.clone());
                }
            }
            self.forget_redacted(&batch.redacted);
            self.forget_metas(&batch.rewritten_metas);
        }
        // Durable now (readable from the store) or never going to be.
        self.clear_pending(&batch);
        let room_id = batch.room_id.clone().expect("enqueue sets the room");
        match result {
            Ok(_) => {
                self.notifier.notify(batch.notify.iter().map(|u| &**u));
                self.notifier.events_committed();
                if !batch.outbound.is_empty() {
                    let servers: Vec<_> = batch.outbound.iter().cloned().collect();
                    self.remote.outbound_ready(&servers);
                }
                Ok(batch.events)
            }
            Err(e) => {
                // The in-memory head ran ahead of the disk; reload it from what is durable.
                tracing::error!(%room_id, error = %e, "room commit failed; reloading its head");
                self.heads.lock().remove(&room_id);
                Err(e.into())
            }
        }
    }
}

struct Queued {
    batch: Batch,
    commit: hearth_storage::PendingCommit,
}
