//! The rooms a sliding sync list covers: the user's rooms, filtered, sorted by recency.
//!
//! Recency is the `bump_stamp`: the stream position of the room's newest event of a type that
//! should move a room up (messages, encrypted events, stickers, calls, polls, the creation; not
//! reactions, receipts or state), as Synapse and Element X count it. For a room the user is not
//! joined to, it is their membership event. Stamps are cached per room with the newest event
//! they were computed at, so a sync reads only the events that arrived since.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::Arc;

use hearth_storage::{MembershipRecord, Store, StreamPos};
use lru::LruCache;
use parking_lot::Mutex;
use ruma::{EventId, OwnedRoomId, RoomId, UserId};

use super::types::ListFilters;
use crate::account_data::AccountData;
use crate::rooms::Rooms;
use crate::{Error, Result};

/// Event types that bump a room (Synapse's `DEFAULT_BUMP_EVENT_TYPES`).
const BUMP_TYPES: [&str; 7] = [
    "m.room.create",
    "m.room.message",
    "m.room.encrypted",
    "m.sticker",
    "m.call.invite",
    "m.poll.start",
    "m.beacon_info",
];

#[derive(Clone, Copy)]
struct Bump {
    seen: StreamPos,
    stamp: StreamPos,
    /// `Store::last_change` of the room when this was computed: while it stays the same,
    /// nothing was appended and the stamp holds without a read.
    marker: Option<StreamPos>,
}

/// A room of the user's, with what sorting and filtering need.
#[derive(Clone, Debug)]
pub(super) struct Candidate {
    pub room_id: OwnedRoomId,
    pub membership: MembershipRecord,
    pub bump: StreamPos,
}

pub(super) struct RoomLists {
    store: Arc<dyn Store>,
    rooms: Arc<Rooms>,
    account_data: Arc<AccountData>,
    /// room → (newest event position looked at, bump stamp, the room's change marker then).
    bumps: Mutex<LruCache<OwnedRoomId, Bump>>,
}

impl RoomLists {
    pub fn new(store: Arc<dyn Store>, rooms: Arc<Rooms>, account_data: Arc<AccountData>) -> Self {
        Self {
            store,
            rooms,
            account_data,
            bumps: Mutex::new(LruCache::new(NonZeroUsize::new(100_000).expect("non-zero"))),
        }
    }

    /// The user's joined, invited and knocked rooms as of `upto`, newest first.
    pub fn candidates(&self, user: &UserId, upto: StreamPos) -> Result<Vec<Candidate>> {
        let mut out = Vec::new();
        for (room, m) in self.rooms.memberships_of(user)?.iter() {
            if m.pos > upto || !matches!(m.membership.as_str(), "join" | "invite" | "knock") {
                continue;
            }
            let room_id = RoomId::parse(room).map_err(Error::internal)?;
            let bump = if m.membership == "join" {
                self.bump_stamp(&room_id, upto)?.unwrap_or(m.pos)
            } else {
                m.pos
            };
            out.push(Candidate {
                room_id,
                membership: m.clone(),
                bump,
            });
        }
        out.sort_by(|a, b| b.bump.cmp(&a.bump).then_with(|| a.room_id.cmp(&b.room_id)));
        Ok(out)
    }

    /// The position of the room's newest bumping event up to `upto`.
    pub fn bump_stamp(&self, room_id: &RoomId, upto: StreamPos) -> Result<Option<StreamPos>> {
        // Every wake-up of a long poll sorts all the user's rooms: answer unchanged rooms from
        // memory, without a read each.
        let marker = self
            .store
            .last_change(&hearth_storage::ChangeKey::Room(room_id.to_string()));
        let cached = self.bumps.lock().get(room_id).copied();
        if let Some(b) = cached
            && b.marker == marker
            && b.seen <= upto
        {
            return Ok(Some(b.stamp));
        }
        // A change the store indexed but `upto` does not cover yet is not in what is read
        // below: such an entry must not vouch for the stamp later.
        let marker = marker.filter(|m| *m <= upto);
        let Some((newest, _)) = self
            .store
            .room_events(room_id.as_str(), 0, upto, true, 1)?
            .into_iter()
            .next()
        else {
            return Ok(None);
        };
        if let Some(b) = cached
            && b.seen == newest
        {
            self.bumps
                .lock()
                .put(room_id.to_owned(), Bump { marker, ..b });
            return Ok(Some(b.stamp));
        }
        // Walk back from the newest event until a bumping one, or what the cache covers.
        let floor = cached.map_or(0, |b| b.seen.min(newest));
        let mut hi = newest;
        let mut found = None;
        'walk: while hi > floor {
            let page = self
                .store
                .room_events(room_id.as_str(), floor + 1, hi, true, 50)?;
            if page.is_empty() {
                break;
            }
            for (pos, id) in &page {
                let Ok(id) = EventId::parse(id) else { continue };
                if let Some(pdu) = self.rooms.pdu(&id)?
                    && BUMP_TYPES.contains(&pdu.kind.to_string().as_str())
                {
                    found = Some(*pos);
                    break 'walk;
                }
            }
            hi = page.last().map_or(0, |(p, _)| *p).saturating_sub(1);
        }
        let stamp = found.or(cached.filter(|b| b.seen <= newest).map(|b| b.stamp));
        if let Some(stamp) = stamp {
            self.bumps.lock().put(
                room_id.to_owned(),
                Bump {
                    seen: newest,
                    stamp,
                    marker,
                },
            );
        }
        Ok(stamp)
    }

    /// The rooms the user's `m.direct` account data names.
    pub fn direct_rooms(&self, user: &UserId) -> Result<HashSet<String>> {
        let direct = self.account_data.get(user, None, "m.direct")?;
        Ok(direct
            .as_ref()
            .and_then(|d| d.as_object())
            .into_iter()
            .flat_map(|m| m.values())
            .filter_map(|v| v.as_array())
            .flatten()
            .filter_map(|r| r.as_str().map(str::to_owned))
            .collect())
    }

    /// Whether a room passes a list's filters.
    pub fn matches(
        &self,
        c: &Candidate,
        f: &ListFilters,
        direct: &HashSet<String>,
        cache: &mut HashMap<OwnedRoomId, (bool, Option<String>)>,
    ) -> Result<bool> {
        if let Some(want) = f.is_invite
            && want != (c.membership.membership == "invite")
        {
            return Ok(false);
        }
        if let Some(want) = f.is_dm
            && want != direct.contains(c.room_id.as_str())
        {
            return Ok(false);
        }
        if f.is_encrypted.is_none() && f.room_types.is_empty() && f.not_room_types.is_empty() {
            return Ok(true);
        }
        let (encrypted, room_type) = match cache.get(&c.room_id) {
            Some(v) => v.clone(),
            None => {
                let v = self.room_facts(&c.room_id)?;
                cache.insert(c.room_id.clone(), v.clone());
                v
            }
        };
        if let Some(want) = f.is_encrypted
            && want != encrypted
        {
            return Ok(false);
        }
        if !f.room_types.is_empty() && !f.room_types.contains(&room_type) {
            return Ok(false);
        }
        Ok(!f.not_room_types.contains(&room_type))
    }

    /// Whether a room is encrypted, and its type. A room this server does not know (an invite
    /// over federation) is neither.
    fn room_facts(&self, room_id: &RoomId) -> Result<(bool, Option<String>)> {
        if !self.rooms.exists(room_id)? {
            return Ok((false, None));
        }
        let encrypted = self
            .rooms
            .state_event(room_id, "m.room.encryption", "")?
            .is_some();
        let room_type = self
            .rooms
            .state_event(room_id, "m.room.create", "")?
            .and_then(|c| c.content_value()["type"].as_str().map(str::to_owned));
        Ok((encrypted, room_type))
    }
}
