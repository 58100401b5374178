//! What a sliding sync asks and answers, in the core's terms (the API layer maps ruma's
//! MSC4186 types onto these).

use std::collections::BTreeMap;
use std::time::Duration;

use ruma::{OwnedRoomId, OwnedUserId};
use serde_json::value::RawValue as RawJsonValue;

use crate::e2ee::DeviceListChanges;
use crate::presence;
use crate::unread::Counts;

/// How much of a room a client wants: the state entries and the timeline's length.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoomConfig {
    /// `(event type, state key)`; `*` matches any, `$LAZY` (state key of members) asks for the
    /// members who sent the timeline's events, `$ME` for the user.
    pub required_state: Vec<(String, String)>,
    pub timeline_limit: usize,
}

impl RoomConfig {
    /// What two lists (or a list and a subscription) ask of the same room together.
    pub fn merge(&mut self, other: &RoomConfig) {
        for entry in &other.required_state {
            if !self.required_state.contains(entry) {
                self.required_state.push(entry.clone());
            }
        }
        self.timeline_limit = self.timeline_limit.max(other.timeline_limit);
    }
}

#[derive(Clone, Debug, Default)]
pub struct ListFilters {
    pub is_dm: Option<bool>,
    pub is_encrypted: Option<bool>,
    pub is_invite: Option<bool>,
    /// Room types to keep (`None` is a plain room); empty keeps all.
    pub room_types: Vec<Option<String>>,
    pub not_room_types: Vec<Option<String>>,
}

#[derive(Clone, Debug, Default)]
pub struct ListRequest {
    /// Inclusive index ranges into the list sorted by recency.
    pub ranges: Vec<(usize, usize)>,
    pub config: RoomConfig,
    pub filters: ListFilters,
}

/// Which rooms an extension covers: `None` for a field means "all" (lists: every list's rooms;
/// rooms: every subscribed room).
#[derive(Clone, Debug, Default)]
pub struct ExtensionScope {
    pub enabled: bool,
    pub lists: Option<Vec<String>>,
    pub rooms: Option<Vec<ScopeRoom>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScopeRoom {
    AllSubscribed,
    Room(OwnedRoomId),
}

#[derive(Clone, Debug, Default)]
pub struct ToDeviceRequest {
    pub enabled: bool,
    /// The extension's own token: messages after it are handed out, those up to it deleted.
    pub since: Option<String>,
    pub limit: Option<usize>,
}

pub struct SlidingRequest {
    pub user_id: OwnedUserId,
    pub device_id: String,
    pub conn_id: Option<String>,
    pub pos: Option<String>,
    pub timeout: Duration,
    pub set_presence: Option<presence::State>,
    pub lists: BTreeMap<String, ListRequest>,
    pub subscriptions: BTreeMap<OwnedRoomId, RoomConfig>,
    pub to_device: ToDeviceRequest,
    pub e2ee: bool,
    pub account_data: ExtensionScope,
    pub receipts: ExtensionScope,
    pub typing: ExtensionScope,
}

#[derive(Clone, Debug)]
pub struct Hero {
    pub user_id: OwnedUserId,
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
}

#[derive(Default)]
pub struct SlidingRoom {
    pub name: Option<String>,
    /// `Some(None)`: the avatar was removed.
    pub avatar: Option<Option<String>>,
    pub initial: bool,
    pub is_dm: bool,
    pub invite_state: Option<Vec<Box<RawJsonValue>>>,
    pub counts: Option<Counts>,
    pub timeline: Vec<Box<RawJsonValue>>,
    pub required_state: Vec<Box<RawJsonValue>>,
    pub prev_batch: Option<String>,
    pub limited: bool,
    pub joined_count: Option<u64>,
    pub invited_count: Option<u64>,
    pub num_live: Option<u64>,
    pub bump_stamp: Option<u64>,
    pub heroes: Option<Vec<Hero>>,
}

#[derive(Default)]
pub struct SlidingResponse {
    pub pos: String,
    /// Each list's room count.
    pub lists: BTreeMap<String, usize>,
    pub rooms: BTreeMap<OwnedRoomId, SlidingRoom>,
    /// `(next_batch, events)` when the to-device extension is on.
    pub to_device: Option<(String, Vec<Box<RawJsonValue>>)>,
    pub device_lists: DeviceListChanges,
    pub one_time_keys_count: Option<BTreeMap<String, u64>>,
    pub unused_fallback_key_types: Option<Vec<String>>,
    pub account_data_global: Vec<Box<RawJsonValue>>,
    pub account_data_rooms: BTreeMap<OwnedRoomId, Vec<Box<RawJsonValue>>>,
    pub receipts: BTreeMap<OwnedRoomId, Box<RawJsonValue>>,
    pub typing: BTreeMap<OwnedRoomId, Box<RawJsonValue>>,
}

impl SlidingResponse {
    /// Nothing a long poll should return for (the key counts are always there).
    pub(super) fn is_empty(&self) -> bool {
        self.rooms.is_empty()
            && self.to_device.as_ref().is_none_or(|(_, e)| e.is_empty())
            && self.device_lists.is_empty()
            && self.account_data_global.is_empty()
            && self.account_data_rooms.is_empty()
            && self.receipts.is_empty()
            && self.typing.is_empty()
    }
}
