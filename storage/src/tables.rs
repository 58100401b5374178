//! The redb table layout. Values are JSON-encoded records from `model`, except where noted.

use redb::TableDefinition;

pub const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
/// (user id, device id) → DeviceRecord
pub const DEVICES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("devices");
/// sha256(access token) → TokenRecord
pub const TOKENS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tokens");
/// (user id, filter id) → filter JSON
pub const FILTERS: TableDefinition<(&str, u64), &str> = TableDefinition::new("filters");
/// (user id, device id, txn id) → event id
pub const TXNS: TableDefinition<(&str, &str, &str), &str> = TableDefinition::new("txns");
/// event id → stream position: the one index keyed by (random) event ids. Events themselves are
/// keyed by position, so appending writes sequential pages instead of dirtying a random leaf of
/// a large tree per event: the writer's cost stays flat as the database grows.
pub const EVENT_IDS: TableDefinition<&str, u64> = TableDefinition::new("event_ids");
/// stream position → the PDU as canonical JSON bytes
pub const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events_by_pos");
/// stream position → EventMeta
pub const EVENT_META: TableDefinition<u64, &[u8]> = TableDefinition::new("event_meta_by_pos");
/// (room id, stream position) → event id: each room's timeline in stream order
pub const ROOM_TIMELINE: TableDefinition<(&str, u64), &str> = TableDefinition::new("room_timeline");
/// (room id, history sequence) → event id: the history this server backfilled from its peers,
/// before the room's first event in `room_timeline`. Sequence 1 is the newest; it grows into the
/// past, so each backfill appends at the end.
pub const ROOM_HISTORY: TableDefinition<(&str, u64), &str> = TableDefinition::new("room_history");
/// state group id → StateGroupRecord
pub const STATE_GROUPS: TableDefinition<u64, &[u8]> = TableDefinition::new("state_groups");
/// room id → RoomRecord
pub const ROOMS: TableDefinition<&str, &[u8]> = TableDefinition::new("rooms");
/// (user id, room id) → MembershipRecord: the user's latest membership of each room
pub const MEMBERSHIPS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("memberships");
/// (user id, room id or "", type) → (stream position, content JSON)
pub const ACCOUNT_DATA: TableDefinition<(&str, &str, &str), (u64, &str)> =
    TableDefinition::new("account_data");
/// (user id, stream position) → (room id or "", type): the user's account data changes in
/// stream order; only the latest position of each entry is kept.
pub const ACCOUNT_DATA_STREAM: TableDefinition<(&str, u64), (&str, &str)> =
    TableDefinition::new("account_data_stream");
/// (room id, user id, receipt type, thread id or "") → (stream position, event id, ts): each
/// user's latest receipt of each kind in a room
pub const RECEIPTS: TableDefinition<ReceiptKey, (u64, &str, u64)> =
    TableDefinition::new("receipts");
pub(crate) type ReceiptKey = (&'static str, &'static str, &'static str, &'static str);
/// (room id, stream position) → (user id, receipt type, thread id): a room's receipt changes in
/// stream order; only the latest position of each receipt is kept.
pub const RECEIPT_STREAM: TableDefinition<(&str, u64), (&str, &str, &str)> =
    TableDefinition::new("receipt_stream");
/// (user id, device id, stream position) → to-device message JSON (`sender`, `type`, `content`),
/// deleted once the device's next sync acknowledges it
pub const TO_DEVICE: TableDefinition<(&str, &str, u64), &str> = TableDefinition::new("to_device");
/// (destination server, stream position) → event id: local events waiting to be sent to a
/// server, deleted once it accepted them
pub const OUTBOX: TableDefinition<(&str, u64), &str> = TableDefinition::new("outbox");
/// (user id, device id) → the device's signed keys JSON, with the signatures its owner added
pub const DEVICE_KEYS: TableDefinition<(&str, &str), &str> = TableDefinition::new("device_keys");
/// (user id, device id, "algorithm:key id") → one-time key JSON, deleted when claimed
pub const ONE_TIME_KEYS: TableDefinition<(&str, &str, &str), &str> =
    TableDefinition::new("one_time_keys");
/// (user id, device id, algorithm) → FallbackKeyRecord
pub const FALLBACK_KEYS: TableDefinition<(&str, &str, &str), &[u8]> =
    TableDefinition::new("fallback_keys");
/// (user id, usage: master | self_signing | user_signing) → cross-signing key JSON
pub const CROSS_SIGNING_KEYS: TableDefinition<(&str, &str), &str> =
    TableDefinition::new("cross_signing_keys");
/// (target user, target key id or device id, signing user) → `{signer: {key id: signature}}`:
/// signatures a user made on another user's keys, shown only to the signer
pub const KEY_SIGNATURES: TableDefinition<(&str, &str, &str), &str> =
    TableDefinition::new("key_signatures");
/// stream position → user id: device list changes in stream order; only each user's latest
/// change is kept
pub const DEVICE_LIST_STREAM: TableDefinition<u64, &str> = TableDefinition::new("device_lists");
/// user id → position of the user's latest entry in DEVICE_LIST_STREAM
pub const DEVICE_LIST_LATEST: TableDefinition<&str, u64> =
    TableDefinition::new("device_list_latest");
/// remote user id → the device list their server last told this one of (JSON: `stream_id`,
/// `devices`, `master_key`, `self_signing_key`), kept while a local user shares a room with them
pub const REMOTE_DEVICE_CACHE: TableDefinition<&str, &str> =
    TableDefinition::new("remote_device_cache");
/// stream position → (viewer, target): changes that only the viewer hears of, in stream order:
/// their own user-signing key changed (target = viewer), or they signed the target's master key
/// (Synapse's user signature stream); only each pair's latest change is kept
pub const USER_SIGNATURE_STREAM: TableDefinition<u64, (&str, &str)> =
    TableDefinition::new("user_signature_stream");
/// (viewer, target) → position of the pair's latest entry in USER_SIGNATURE_STREAM
pub const USER_SIGNATURE_LATEST: TableDefinition<(&str, &str), u64> =
    TableDefinition::new("user_signature_latest");
/// (user id, version) → BackupVersionRecord
pub const BACKUP_VERSIONS: TableDefinition<(&str, u64), &[u8]> =
    TableDefinition::new("backup_versions");
/// (user id, version, room id, session id) → KeyBackupData JSON
pub const BACKUP_KEYS: TableDefinition<(&str, u64, &str, &str), &str> =
    TableDefinition::new("backup_keys");
/// (origin server, media id) → MediaRecord
pub const MEDIA: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("media");
/// (uploader, origin server, media id) → size: each user's uploads, for quotas and takedowns
pub const MEDIA_BY_USER: TableDefinition<(&str, &str, &str), u64> =
    TableDefinition::new("media_by_user");
/// room alias → (room id, creator)
pub const ALIASES: TableDefinition<&str, (&str, &str)> = TableDefinition::new("aliases");
/// (room id, alias) → (): each room's aliases
pub const ROOM_ALIASES: TableDefinition<(&str, &str), ()> = TableDefinition::new("room_aliases");
/// (user id, app id, pushkey) → PusherRecord
pub const PUSHERS: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("pushers");
/// (app id, pushkey, user id) → (): who has a pusher of a pushkey
pub const PUSHERS_BY_KEY: TableDefinition<(&str, &str, &str), ()> =
    TableDefinition::new("pushers_by_key");
/// (user id, event position) → NotificationRecord: events that notify the user, in stream order
pub const NOTIFICATIONS: TableDefinition<(&str, u64), &[u8]> =
    TableDefinition::new("notifications");
/// (parent event id, stream position) → (event id, rel type, event type, sender, annotation key
/// or ""): the events relating to each event, in stream order
pub const RELATIONS: TableDefinition<(&str, u64), RelationValue> =
    TableDefinition::new("relations");
pub(crate) type RelationValue = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
);
/// (room id, thread root event id) → position of the thread's latest reply
pub const THREADS: TableDefinition<(&str, &str), u64> = TableDefinition::new("threads");
/// (room id, position of the latest reply) → thread root: each room's threads by activity
pub const THREADS_BY_ACTIVITY: TableDefinition<(&str, u64), &str> =
    TableDefinition::new("threads_by_activity");
/// report id → ReportRecord: users' reports of events and rooms, ids in the order received
pub const REPORTS: TableDefinition<u64, &[u8]> = TableDefinition::new("reports");
/// name → value: stream position, id allocators
pub const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

pub const STREAM_POS: &str = "stream_pos";
