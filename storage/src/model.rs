//! The records Hearth persists. They are plain data, serialised as JSON inside the store, so that
//! a field can be added with `#[serde(default)]` without a migration.

use serde::{Deserialize, Serialize};

use crate::StreamPos;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UserRecord {
    /// PHC string (argon2id); `None` for accounts that cannot log in with a password.
    pub password_hash: Option<String>,
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
    #[serde(default)]
    pub deactivated: bool,
    #[serde(default)]
    pub admin: bool,
    pub created_ts: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub display_name: Option<String>,
    pub last_seen_ts: Option<u64>,
    pub last_seen_ip: Option<String>,
    /// Hash of the device's current access token, so that deleting the device revokes it.
    pub token_hash: Option<Vec<u8>>,
    /// Hash of the device's refresh token, if it has one.
    #[serde(default)]
    pub refresh_hash: Option<Vec<u8>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenRecord {
    pub user_id: String,
    pub device_id: String,
    /// When an access token that came with a refresh token stops working, in milliseconds.
    #[serde(default)]
    pub expires_at: Option<u64>,
    /// A refresh token: it only buys new tokens at `/refresh`, never authenticates a request.
    #[serde(default)]
    pub refresh: bool,
}

/// Where an event sits: its room, stream position and the state around it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventMeta {
    pub room_id: String,
    /// Filled in by the writer when the event is appended.
    #[serde(default)]
    pub pos: StreamPos,
    /// State group of the room state before this event.
    pub state_before: u64,
    /// State group after it (differs from `state_before` only for state events).
    pub state_after: u64,
    /// The device transaction that created the event, echoed to that device only.
    #[serde(default)]
    pub txn: Option<TxnRef>,
    /// For state events: the event this one replaced in the room state.
    #[serde(default)]
    pub replaces_state: Option<String>,
    /// The redaction that pruned this event's content, once one did.
    #[serde(default)]
    pub redacted_by: Option<String>,
    /// For events backfilled from other servers: their place in the room's history before its
    /// first event on this server (`ROOM_HISTORY`; 1 is the newest). `pos` is then only where
    /// the event is stored, not a place in any timeline.
    #[serde(default)]
    pub history_seq: Option<u64>,
    /// For an event kept outside the timeline though it is not an outlier: it failed the auth
    /// rules (rejected) or passed them only at its place in the graph (soft-failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<Refused>,
}

/// Why a remote event is in the graph but not in the timeline or the state.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Refused {
    /// The auth rules refuse it against the state before it.
    Rejected,
    /// The auth rules allow it against the state before it, not against the current state.
    SoftFailed,
}

/// A client transaction: what makes a retried request return the event its first try made.
/// The spec scopes a transaction id to the device *and* the request path, so the same id sent to
/// two rooms (or as a message and as a redaction) is two transactions.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct TxnRef {
    pub user_id: String,
    pub device_id: String,
    pub txn_id: String,
    /// The request path the id belongs to; empty for transactions stored before it was kept.
    #[serde(default)]
    pub scope: String,
}

impl TxnRef {
    /// `PUT /rooms/{room_id}/send/{event_type}/{txn_id}` (and the WebSocket's send).
    pub fn send(user: &str, device: &str, room_id: &str, event_type: &str, txn_id: &str) -> Self {
        Self::scoped(user, device, txn_id, format!("send/{room_id}/{event_type}"))
    }

    /// `PUT /rooms/{room_id}/redact/{event_id}/{txn_id}`.
    pub fn redact(user: &str, device: &str, room_id: &str, event_id: &str, txn_id: &str) -> Self {
        Self::scoped(user, device, txn_id, format!("redact/{room_id}/{event_id}"))
    }

    fn scoped(user: &str, device: &str, txn_id: &str, scope: String) -> Self {
        Self {
            user_id: user.to_owned(),
            device_id: device.to_owned(),
            txn_id: txn_id.to_owned(),
            scope,
        }
    }

    /// The transaction table's key for it: the id within its scope (NUL cannot occur in a path
    /// segment a client sends, so two scopes never share a key).
    pub fn key(&self) -> String {
        if self.scope.is_empty() {
            self.txn_id.clone()
        } else {
            format!("{}\0{}", self.scope, self.txn_id)
        }
    }
}

/// A room state snapshot stored as a delta over a previous group; every so often a group is a
/// full snapshot so that resolving one never walks a long chain.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StateGroupRecord {
    pub room_id: String,
    pub prev: Option<u64>,
    /// How many deltas lie between this group and the last full snapshot.
    pub chain_len: u32,
    /// `(event type, state key, event id)` entries this group adds or replaces.
    pub delta: Vec<(String, String, String)>,
}

/// The mutable head of a room's event graph.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RoomRecord {
    pub room_version: String,
    pub forward_extremities: Vec<String>,
    pub depth: u64,
    pub state_group: u64,
    #[serde(default)]
    pub is_public: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MembershipRecord {
    pub membership: String,
    pub event_id: String,
    /// Stream position of the membership event (filled in by the writer).
    #[serde(default)]
    pub pos: StreamPos,
    #[serde(default)]
    pub forgotten: bool,
}

/// A piece of a user's account data; `room_id` is empty for global data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountDataEntry {
    pub room_id: String,
    pub kind: String,
    pub content: String,
    pub pos: StreamPos,
}

/// A user's latest receipt of one type (and thread) in a room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiptRecord {
    pub room_id: String,
    pub user_id: String,
    pub receipt_type: String,
    /// Empty for an unthreaded receipt.
    pub thread_id: String,
    pub event_id: String,
    pub ts: u64,
    /// Filled in by the writer.
    pub pos: StreamPos,
}

/// A to-device message waiting for its device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToDeviceMessage {
    pub pos: StreamPos,
    /// `{"sender", "type", "content"}`.
    pub json: String,
}

/// A piece of uploaded media. The bytes live in the media directory under their SHA-256, so the
/// same file uploaded twice is stored once.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MediaRecord {
    /// Hex SHA-256 of the content.
    pub sha256: String,
    pub size: u64,
    pub content_type: Option<String>,
    pub filename: Option<String>,
    pub uploader: String,
    pub created_ts: u64,
    #[serde(default)]
    pub quarantined: bool,
    /// Created by `/media/v1/create`, its bytes not uploaded yet (`sha256` is empty).
    #[serde(default)]
    pub pending: bool,
}

/// One operation of a write batch. A batch is applied atomically.
#[derive(Clone, Debug)]
pub enum WriteOp {
    PutUser(String, UserRecord),
    PutDevice(String, String, DeviceRecord),
    /// Deletes a device together with its end-to-end encryption keys and its pushers.
    DeleteDevice(String, String),
    PutToken(Vec<u8>, TokenRecord),
    DeleteToken(Vec<u8>),
    PutFilter(String, u64, String),
    SetCounter(String, u64),
    /// Sets one piece of account data at the next stream position.
    PutAccountData {
        user_id: String,
        room_id: String,
        kind: String,
        content: String,
    },
    PutStateGroup(u64, StateGroupRecord),
    /// Sets a receipt at the next stream position, replacing the user's previous one of its kind.
    PutReceipt(ReceiptRecord),
    /// Queues a to-device message at the next stream position.
    PutToDevice {
        user_id: String,
        device_id: String,
        json: String,
    },
    /// Deletes a device's to-device messages up to a position: the device has acknowledged them.
    DeleteToDevice {
        user_id: String,
        device_id: String,
        upto: StreamPos,
    },
    /// Queues an event for a server at the next stream position.
    PutOutbound {
        destination: String,
        event_id: String,
    },
    /// The server accepted everything queued for it up to a position.
    DeleteOutbound {
        destination: String,
        upto: StreamPos,
    },
    /// Records a device transaction's result (for endpoints whose result is not an event).
    PutTxn {
        user_id: String,
        device_id: String,
        txn_id: String,
        result: String,
    },
    AppendEvent(Box<AppendEvent>),
    /// Stores an event that is not part of the room's timeline (state and auth events a join
    /// brought along), at the next stream position so that it can be looked up like any other.
    PutOutlier {
        event_id: String,
        json: Vec<u8>,
        meta: EventMeta,
        /// `(user id, record)` for an invite of a local user to a room this server is not in:
        /// the membership row takes the outlier's position.
        membership: Option<(String, MembershipRecord)>,
    },
    /// Places an event backfilled from another server in its room's history at `seq`. An event
    /// this server already kept as an outlier keeps its storage position and JSON and takes the
    /// new meta (its state is known now); any other is stored at the next position.
    PutHistory {
        seq: u64,
        event_id: String,
        json: Vec<u8>,
        meta: EventMeta,
    },
    /// Rewrites a room's head record (its current state changed by state resolution).
    PutRoom(String, RoomRecord),
    PutMembership(String, String, MembershipRecord),
    /// Sets a membership with no event of this server behind it (a turned-down invite to a room
    /// this server is not in) at the next stream position, so syncs see the change.
    PutMembershipAtNext(String, String, MembershipRecord),
    /// `(server name, media id, record)`.
    PutMedia(String, String, MediaRecord),
    /// End-to-end encryption keys (see [`crate::e2ee`]).
    E2ee(crate::e2ee::E2eeOp),
    /// Pushers and notifications (see [`crate::push`]).
    Push(crate::push::PushOp),
    /// Room aliases and directory visibility (see [`crate::directory`]).
    Directory(crate::directory::DirectoryOp),
    /// Redactions (see [`crate::relations`]).
    Relations(crate::relations::RelationOp),
    /// Users' reports of events and rooms (see [`crate::reports`]).
    Reports(crate::reports::ReportOp),
}

/// Appends an event to its room's timeline at the next stream position. The writer fills the
/// position into `meta.pos`, the room record's `last_pos` and the membership row's `pos`.
#[derive(Clone, Debug)]
pub struct AppendEvent {
    pub event_id: String,
    pub json: Vec<u8>,
    pub meta: EventMeta,
    /// The room's head after this event.
    pub room: RoomRecord,
    /// `(user id, record)` when the event is a member event.
    pub membership: Option<(String, MembershipRecord)>,
    /// What the event relates to, for the relations index.
    pub relation: Option<crate::relations::Relation>,
    /// The event's type and sender, kept in the relations index beside its relation.
    pub event_type: String,
    pub sender: String,
}
