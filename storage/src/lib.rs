//! Hearth's storage layer.
//!
//! The rest of the server sees storage through [`Store`]: synchronous point and range reads, and
//! one asynchronous write path, [`Store::submit`], which takes a batch of [`WriteOp`]s and
//! resolves once the batch is durable on disk. Every write in the server goes through that one
//! path, so a crash (even `kill -9`) can only lose writes that were never acknowledged.
//!
//! The embedded backend is [`RedbStore`]. It commits concurrent batches together (group commit):
//! one fsync makes many requests durable, so durability does not cap throughput at one fsync per
//! message. A PostgreSQL backend would implement the same trait.

pub mod directory;
pub mod e2ee;
mod error;
mod model;
pub mod push;
mod redb_store;
pub mod relations;
pub mod reports;
mod tables;
mod writer;

pub use error::{StorageError, StorageResult};
pub use model::*;
pub use redb_store::RedbStore;

use std::future::Future;
use std::pin::Pin;

/// Something whose changes readers poll: the change index answers "did it change since this
/// token?" without a disk read.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ChangeKey {
    /// A room's events and receipts.
    Room(String),
    /// A user's memberships (any room).
    Memberships(String),
    /// A room's member list (someone's membership in it changed).
    RoomMembers(String),
    /// A device's to-device queue.
    ToDevice(String, String),
    /// A user's account data (global or per room).
    AccountData(String),
    /// Any user's device list (devices, device keys, cross-signing keys).
    DeviceLists,
}

/// A position in the server's global stream. Every appended event gets the next one; `/sync`
/// tokens encode them. Position 0 means "before everything".
pub type StreamPos = u64;

/// Resolves once a submitted batch is durable, with the stream positions given to its
/// [`WriteOp::AppendEvent`]s, in order.
pub type PendingCommit = Pin<Box<dyn Future<Output = StorageResult<Vec<StreamPos>>> + Send>>;

/// Everything Hearth persists. Reads see only committed data.
pub trait Store:
    e2ee::E2eeStore
    + push::PushStore
    + directory::DirectoryStore
    + relations::RelationsStore
    + reports::ReportsStore
    + Send
    + Sync
    + 'static
{
    /// Queues a batch; all of its operations become durable atomically, or none do.
    fn submit(&self, ops: Vec<WriteOp>) -> PendingCommit;
    /// The highest stream position that is durable and visible to readers.
    fn persisted_pos(&self) -> StreamPos;

    fn counter(&self, name: &str) -> StorageResult<u64>;

    fn user(&self, user_id: &str) -> StorageResult<Option<UserRecord>>;
    fn device(&self, user_id: &str, device_id: &str) -> StorageResult<Option<DeviceRecord>>;
    fn devices(&self, user_id: &str) -> StorageResult<Vec<(String, DeviceRecord)>>;
    fn token(&self, token_hash: &[u8]) -> StorageResult<Option<TokenRecord>>;
    fn filter(&self, user_id: &str, filter_id: u64) -> StorageResult<Option<String>>;
    fn txn_event(
        &self,
        user_id: &str,
        device_id: &str,
        txn_id: &str,
    ) -> StorageResult<Option<String>>;

    fn event_json(&self, event_id: &str) -> StorageResult<Option<Vec<u8>>>;
    fn event_meta(&self, event_id: &str) -> StorageResult<Option<EventMeta>>;
    /// Event ids of a room in stream order between two positions (both inclusive), walking
    /// forwards or backwards, at most `limit` of them.
    fn room_events(
        &self,
        room_id: &str,
        from: StreamPos,
        to: StreamPos,
        backwards: bool,
        limit: usize,
    ) -> StorageResult<Vec<(StreamPos, String)>>;
    /// A room's backfilled history (`ROOM_HISTORY`) between two sequences (both inclusive):
    /// into the past (sequence ascending) or towards the present, at most `limit`.
    fn room_history(
        &self,
        room_id: &str,
        from: u64,
        to: u64,
        into_past: bool,
        limit: usize,
    ) -> StorageResult<Vec<(u64, String)>>;
    fn state_group(&self, id: u64) -> StorageResult<Option<StateGroupRecord>>;
    fn room(&self, room_id: &str) -> StorageResult<Option<RoomRecord>>;
    fn rooms(&self) -> StorageResult<Vec<(String, RoomRecord)>>;
    fn memberships_of_user(&self, user_id: &str) -> StorageResult<Vec<(String, MembershipRecord)>>;
    fn membership(&self, user_id: &str, room_id: &str) -> StorageResult<Option<MembershipRecord>>;
    fn account_data(
        &self,
        user_id: &str,
        room_id: &str,
        kind: &str,
    ) -> StorageResult<Option<String>>;
    /// The user's account data entries last changed in `(after, upto]`, in stream order.
    fn account_data_changes(
        &self,
        user_id: &str,
        after: StreamPos,
        upto: StreamPos,
    ) -> StorageResult<Vec<AccountDataEntry>>;
    fn all_account_data(&self, user_id: &str) -> StorageResult<Vec<AccountDataEntry>>;

    /// The latest position at which `key` changed since the store was opened, if it did.
    fn last_change(&self, key: &ChangeKey) -> Option<StreamPos>;
    /// The persisted position when the store was opened: changes before it are not indexed.
    fn opened_at(&self) -> StreamPos;

    /// Whether `key` changed after a position, answered from memory. May answer `true` for a
    /// commit that `persisted_pos` does not cover yet, never `false` for one it covers; for a
    /// position from before the store was opened it answers `true`, and the caller reads.
    fn changed_after(&self, key: &ChangeKey, after: StreamPos) -> bool {
        match self.last_change(key) {
            Some(last) => last > after,
            None => after < self.opened_at(),
        }
    }

    /// The room's receipts changed in `(after, upto]`, or all of them with `after == None`.
    fn receipts(
        &self,
        room_id: &str,
        after: Option<StreamPos>,
        upto: StreamPos,
    ) -> StorageResult<Vec<ReceiptRecord>>;
    /// One user's receipts in a room, of every type and thread.
    fn user_receipts(&self, room_id: &str, user_id: &str) -> StorageResult<Vec<ReceiptRecord>>;
    fn receipt(
        &self,
        room_id: &str,
        user_id: &str,
        receipt_type: &str,
        thread_id: &str,
    ) -> StorageResult<Option<ReceiptRecord>>;
    fn media(&self, server_name: &str, media_id: &str) -> StorageResult<Option<MediaRecord>>;
    /// A user's uploads: `(server name, media id, size)`.
    fn media_of_user(&self, user_id: &str) -> StorageResult<Vec<(String, String, u64)>>;
    /// Events queued for a server, oldest first, at most `limit`: `(position, event id)`.
    fn outbound(&self, destination: &str, limit: usize) -> StorageResult<Vec<(StreamPos, String)>>;
    /// Servers with queued events.
    fn outbound_destinations(&self) -> StorageResult<Vec<String>>;
    /// A device's to-device messages in `(after, upto]`, oldest first, at most `limit`.
    fn to_device(
        &self,
        user_id: &str,
        device_id: &str,
        after: StreamPos,
        upto: StreamPos,
        limit: usize,
    ) -> StorageResult<Vec<ToDeviceMessage>>;
}
