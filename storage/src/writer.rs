//! The single writer thread: group commit.
//!
//! Requests queue batches on a channel. The thread takes every batch that is waiting, applies
//! them all in one redb write transaction and commits it once (one fsync), then answers each
//! request. Under load many requests share a commit; alone, a request pays one fsync.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, mpsc};

use redb::{Database, ReadableTable, Table, WriteTransaction};
use tokio::sync::oneshot;

use crate::directory::DirectoryTables;
use crate::e2ee::{E2eeOp, E2eeTables};
use crate::push::PushTables;
use crate::relations::{RelationOp, RelationTables};
use crate::reports::ReportsTables;
use crate::tables::*;
use crate::{AppendEvent, ChangeKey, StorageError, StorageResult, StreamPos, WriteOp};

pub(crate) struct Job {
    pub ops: Vec<WriteOp>,
    pub reply: oneshot::Sender<StorageResult<Vec<StreamPos>>>,
}

/// Upper bound on batches folded into one commit, so that one commit's latency stays bounded.
const MAX_JOBS_PER_COMMIT: usize = 4096;

/// The latest position at which each [`ChangeKey`] changed since the store was opened. The
/// writer updates it after each commit and *before* publishing the new persisted position, so a
/// reader that sees a position also sees every change up to it.
pub(crate) type Changes = Arc<RwLock<HashMap<ChangeKey, StreamPos>>>;

pub(crate) fn run(
    db: Arc<Database>,
    rx: mpsc::Receiver<Job>,
    persisted: Arc<AtomicU64>,
    changes: Changes,
) {
    let mut next_pos = persisted.load(Ordering::Acquire);
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_JOBS_PER_COMMIT {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let start_pos = next_pos;
        let mut touched = HashMap::new();
        match commit(&db, &mut jobs, &mut next_pos, &mut touched) {
            Ok(positions) => {
                tracing::trace!(batches = jobs.len(), position = next_pos, "committed");
                {
                    let mut changes = changes.write().unwrap_or_else(|e| e.into_inner());
                    for (key, pos) in touched {
                        let e = changes.entry(key).or_insert(pos);
                        *e = (*e).max(pos);
                    }
                }
                persisted.store(next_pos, Ordering::Release);
                for (job, pos) in jobs.into_iter().zip(positions) {
                    let _ = job.reply.send(Ok(pos));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, batches = jobs.len(), "commit failed");
                next_pos = start_pos;
                for job in jobs {
                    let _ = job.reply.send(Err(StorageError::Database(e.to_string())));
                }
            }
        }
    }
}

fn commit(
    db: &Database,
    jobs: &mut [Job],
    next_pos: &mut StreamPos,
    touched: &mut HashMap<ChangeKey, StreamPos>,
) -> StorageResult<Vec<Vec<StreamPos>>> {
    let txn = db.begin_write()?;
    // Every table is opened once per commit: opening and closing one per operation updated
    // redb's table tree each time, which cost as much as the writes themselves.
    let mut t = Tables::open(&txn)?;
    let mut all = Vec::with_capacity(jobs.len());
    for job in jobs.iter_mut() {
        let mut positions = Vec::new();
        for op in job.ops.drain(..) {
            let keys = change_keys(&op);
            let pos = apply(&mut t, op, next_pos)?;
            // Changes without a position of their own (forgetting a room) count at the commit's
            // latest position, which the next sync token covers.
            for key in keys {
                touched.insert(key, pos.unwrap_or(*next_pos));
            }
            positions.extend(pos);
        }
        all.push(positions);
    }
    t.counters.insert(STREAM_POS, *next_pos)?;
    drop(t);
    txn.commit()?;
    Ok(all)
}

/// The tables of one write transaction, open for all of its operations.
struct Tables<'t> {
    users: Table<'t, &'static str, &'static [u8]>,
    devices: Table<'t, (&'static str, &'static str), &'static [u8]>,
    tokens: Table<'t, &'static [u8], &'static [u8]>,
    filters: Table<'t, (&'static str, u64), &'static str>,
    txns: Table<'t, (&'static str, &'static str, &'static str), &'static str>,
    event_ids: Table<'t, &'static str, u64>,
    events: Table<'t, u64, &'static [u8]>,
    event_meta: Table<'t, u64, &'static [u8]>,
    room_timeline: Table<'t, (&'static str, u64), &'static str>,
    room_history: Table<'t, (&'static str, u64), &'static str>,
    state_groups: Table<'t, u64, &'static [u8]>,
    rooms: Table<'t, &'static str, &'static [u8]>,
    memberships: Table<'t, (&'static str, &'static str), &'static [u8]>,
    account_data: Table<'t, (&'static str, &'static str, &'static str), (u64, &'static str)>,
    account_data_stream: Table<'t, (&'static str, u64), (&'static str, &'static str)>,
    receipts: Table<'t, ReceiptKey, (u64, &'static str, u64)>,
    receipt_stream: Table<'t, (&'static str, u64), (&'static str, &'static str, &'static str)>,
    to_device: Table<'t, (&'static str, &'static str, u64), &'static str>,
    outbox: Table<'t, (&'static str, u64), &'static str>,
    counters: Table<'t, &'static str, u64>,
    media: Table<'t, (&'static str, &'static str), &'static [u8]>,
    media_by_user: Table<'t, (&'static str, &'static str, &'static str), u64>,
    e2ee: E2eeTables<'t>,
    push: PushTables<'t>,
    directory: DirectoryTables<'t>,
    relations: RelationTables<'t>,
    reports: ReportsTables<'t>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction) -> StorageResult<Self> {
        Ok(Self {
            users: txn.open_table(USERS)?,
            devices: txn.open_table(DEVICES)?,
            tokens: txn.open_table(TOKENS)?,
            filters: txn.open_table(FILTERS)?,
            txns: txn.open_table(TXNS)?,
            event_ids: txn.open_table(EVENT_IDS)?,
            events: txn.open_table(EVENTS)?,
            event_meta: txn.open_table(EVENT_META)?,
            room_timeline: txn.open_table(ROOM_TIMELINE)?,
            room_history: txn.open_table(ROOM_HISTORY)?,
            state_groups: txn.open_table(STATE_GROUPS)?,
            rooms: txn.open_table(ROOMS)?,
            memberships: txn.open_table(MEMBERSHIPS)?,
            account_data: txn.open_table(ACCOUNT_DATA)?,
            account_data_stream: txn.open_table(ACCOUNT_DATA_STREAM)?,
            receipts: txn.open_table(RECEIPTS)?,
            receipt_stream: txn.open_table(RECEIPT_STREAM)?,
            to_device: txn.open_table(TO_DEVICE)?,
            outbox: txn.open_table(OUTBOX)?,
            counters: txn.open_table(COUNTERS)?,
            media: txn.open_table(MEDIA)?,
            media_by_user: txn.open_table(MEDIA_BY_USER)?,
            e2ee: E2eeTables::open(txn)?,
            push: PushTables::open(txn)?,
            directory: DirectoryTables::open(txn)?,
            relations: RelationTables::open(txn)?,
            reports: ReportsTables::open(txn)?,
        })
    }
}

/// What an operation changes, for the change index.
fn change_keys(op: &WriteOp) -> Vec<ChangeKey> {
    match op {
        WriteOp::AppendEvent(a) => {
            let mut keys = vec![ChangeKey::Room(a.meta.room_id.clone())];
            if let Some((user, _)) = &a.membership {
                keys.push(ChangeKey::Memberships(user.clone()));
                keys.push(ChangeKey::RoomMembers(a.meta.room_id.clone()));
            }
            keys
        }
        WriteOp::PutMembership(user, _, _) | WriteOp::PutMembershipAtNext(user, _, _) => {
            vec![ChangeKey::Memberships(user.clone())]
        }
        WriteOp::PutOutlier {
            membership: Some((user, _)),
            ..
        } => vec![ChangeKey::Memberships(user.clone())],
        WriteOp::PutReceipt(r) => vec![ChangeKey::Room(r.room_id.clone())],
        WriteOp::PutToDevice {
            user_id, device_id, ..
        } => vec![ChangeKey::ToDevice(user_id.clone(), device_id.clone())],
        WriteOp::PutAccountData { user_id, .. } => vec![ChangeKey::AccountData(user_id.clone())],
        WriteOp::E2ee(E2eeOp::DeviceListChanged(_) | E2eeOp::UserSignatureChanged { .. }) => {
            vec![ChangeKey::DeviceLists]
        }
        _ => Vec::new(),
    }
}

fn apply(
    t: &mut Tables<'_>,
    op: WriteOp,
    next_pos: &mut StreamPos,
) -> StorageResult<Option<StreamPos>> {
    match op {
        WriteOp::PutUser(id, rec) => {
            t.users
                .insert(id.as_str(), serde_json::to_vec(&rec)?.as_slice())?;
        }
        WriteOp::PutDevice(user, device, rec) => {
            t.devices.insert(
                (user.as_str(), device.as_str()),
                serde_json::to_vec(&rec)?.as_slice(),
            )?;
        }
        WriteOp::DeleteDevice(user, device) => {
            t.devices.remove((user.as_str(), device.as_str()))?;
            t.e2ee.delete_device(&user, &device)?;
            t.push.delete_device(&user, &device)?;
        }
        WriteOp::E2ee(op) => return t.e2ee.apply(op, next_pos),
        WriteOp::Push(op) => t.push.apply(op)?,
        WriteOp::Directory(op) => t.directory.apply(op, &mut t.rooms)?,
        WriteOp::Relations(RelationOp::Redact {
            event_id,
            json,
            redacted_by,
            parent,
        }) => {
            let pos = t.event_ids.get(event_id.as_str())?.map(|v| v.value());
            if let Some(pos) = pos {
                t.events.insert(pos, json.as_slice())?;
                let meta = t.event_meta.get(pos)?.map(|v| v.value().to_vec());
                if let Some(meta) = meta {
                    let mut meta: crate::EventMeta = serde_json::from_slice(&meta)?;
                    meta.redacted_by = Some(redacted_by);
                    t.event_meta
                        .insert(pos, serde_json::to_vec(&meta)?.as_slice())?;
                }
                if let Some(parent) = parent {
                    t.relations.unindex(&parent, pos)?;
                }
            }
        }
        WriteOp::Reports(op) => t.reports.apply(op)?,
        WriteOp::PutMedia(server, id, rec) => {
            t.media.insert(
                (server.as_str(), id.as_str()),
                serde_json::to_vec(&rec)?.as_slice(),
            )?;
            t.media_by_user.insert(
                (rec.uploader.as_str(), server.as_str(), id.as_str()),
                rec.size,
            )?;
        }
        WriteOp::PutToken(hash, rec) => {
            t.tokens
                .insert(hash.as_slice(), serde_json::to_vec(&rec)?.as_slice())?;
        }
        WriteOp::DeleteToken(hash) => {
            t.tokens.remove(hash.as_slice())?;
        }
        WriteOp::PutFilter(user, id, json) => {
            t.filters.insert((user.as_str(), id), json.as_str())?;
        }
        WriteOp::SetCounter(name, value) => {
            t.counters.insert(name.as_str(), value)?;
        }
        WriteOp::PutAccountData {
            user_id,
            room_id,
            kind,
            content,
        } => {
            *next_pos += 1;
            let pos = *next_pos;
            let key = (user_id.as_str(), room_id.as_str(), kind.as_str());
            let data = &mut t.account_data;
            let stream = &mut t.account_data_stream;
            let old = data
                .insert(key, (pos, content.as_str()))?
                .map(|old| old.value().0);
            if let Some(old_pos) = old {
                stream.remove((user_id.as_str(), old_pos))?;
            }
            stream.insert((user_id.as_str(), pos), (room_id.as_str(), kind.as_str()))?;
            return Ok(Some(pos));
        }
        WriteOp::PutReceipt(r) => {
            *next_pos += 1;
            let pos = *next_pos;
            let key = (
                r.room_id.as_str(),
                r.user_id.as_str(),
                r.receipt_type.as_str(),
                r.thread_id.as_str(),
            );
            let receipts = &mut t.receipts;
            let stream = &mut t.receipt_stream;
            let old = receipts
                .insert(key, (pos, r.event_id.as_str(), r.ts))?
                .map(|old| old.value().0);
            if let Some(old_pos) = old {
                stream.remove((r.room_id.as_str(), old_pos))?;
            }
            stream.insert(
                (r.room_id.as_str(), pos),
                (
                    r.user_id.as_str(),
                    r.receipt_type.as_str(),
                    r.thread_id.as_str(),
                ),
            )?;
            return Ok(Some(pos));
        }
        WriteOp::PutToDevice {
            user_id,
            device_id,
            json,
        } => {
            *next_pos += 1;
            let pos = *next_pos;
            t.to_device
                .insert((user_id.as_str(), device_id.as_str(), pos), json.as_str())?;
            return Ok(Some(pos));
        }
        WriteOp::DeleteToDevice {
            user_id,
            device_id,
            upto,
        } => {
            let (u, d) = (user_id.as_str(), device_id.as_str());
            t.to_device
                .retain_in((u, d, 0)..=(u, d, upto), |_, _| false)?;
        }
        WriteOp::PutOutbound {
            destination,
            event_id,
        } => {
            *next_pos += 1;
            let pos = *next_pos;
            t.outbox
                .insert((destination.as_str(), pos), event_id.as_str())?;
            return Ok(Some(pos));
        }
        WriteOp::DeleteOutbound { destination, upto } => {
            let d = destination.as_str();
            t.outbox.retain_in((d, 0)..=(d, upto), |_, _| false)?;
        }
        WriteOp::PutTxn {
            user_id,
            device_id,
            txn_id,
            result,
        } => {
            t.txns.insert(
                (user_id.as_str(), device_id.as_str(), txn_id.as_str()),
                result.as_str(),
            )?;
        }
        WriteOp::PutStateGroup(id, rec) => {
            t.state_groups
                .insert(id, serde_json::to_vec(&rec)?.as_slice())?;
        }
        WriteOp::PutMembership(user, room, rec) => {
            t.memberships.insert(
                (user.as_str(), room.as_str()),
                serde_json::to_vec(&rec)?.as_slice(),
            )?;
        }
        WriteOp::PutRoom(room, rec) => {
            t.rooms
                .insert(room.as_str(), serde_json::to_vec(&rec)?.as_slice())?;
        }
        WriteOp::PutMembershipAtNext(user, room, mut rec) => {
            *next_pos += 1;
            rec.pos = *next_pos;
            t.memberships.insert(
                (user.as_str(), room.as_str()),
                serde_json::to_vec(&rec)?.as_slice(),
            )?;
            return Ok(Some(rec.pos));
        }
        WriteOp::PutOutlier {
            event_id,
            json,
            mut meta,
            membership,
        } => {
            *next_pos += 1;
            let pos = *next_pos;
            meta.pos = pos;
            if let Some((user, mut rec)) = membership {
                rec.pos = pos;
                t.memberships.insert(
                    (user.as_str(), meta.room_id.as_str()),
                    serde_json::to_vec(&rec)?.as_slice(),
                )?;
            }
            t.event_ids.insert(event_id.as_str(), pos)?;
            t.events.insert(pos, json.as_slice())?;
            t.event_meta
                .insert(pos, serde_json::to_vec(&meta)?.as_slice())?;
            return Ok(Some(pos));
        }
        WriteOp::PutHistory {
            seq,
            event_id,
            json,
            mut meta,
        } => {
            let known = t.event_ids.get(event_id.as_str())?.map(|v| v.value());
            // A known event keeps its JSON: a peer may have sent it pruned (what it lets this
            // server see of the room's past), and state held in full must stay so.
            let pos = match known {
                Some(pos) => pos,
                None => {
                    *next_pos += 1;
                    t.event_ids.insert(event_id.as_str(), *next_pos)?;
                    t.events.insert(*next_pos, json.as_slice())?;
                    *next_pos
                }
            };
            meta.pos = pos;
            meta.history_seq = Some(seq);
            t.event_meta
                .insert(pos, serde_json::to_vec(&meta)?.as_slice())?;
            t.room_history
                .insert((meta.room_id.as_str(), seq), event_id.as_str())?;
            return Ok(Some(pos));
        }
        WriteOp::AppendEvent(append) => {
            let AppendEvent {
                event_id,
                json,
                mut meta,
                room,
                membership,
                relation,
                event_type,
                sender,
            } = *append;
            *next_pos += 1;
            let pos = *next_pos;
            meta.pos = pos;
            let room_id = meta.room_id.clone();
            if let Some(txn_ref) = &meta.txn {
                t.txns.insert(
                    (
                        txn_ref.user_id.as_str(),
                        txn_ref.device_id.as_str(),
                        txn_ref.key().as_str(),
                    ),
                    event_id.as_str(),
                )?;
            }
            t.event_ids.insert(event_id.as_str(), pos)?;
            t.events.insert(pos, json.as_slice())?;
            t.event_meta
                .insert(pos, serde_json::to_vec(&meta)?.as_slice())?;
            t.room_timeline
                .insert((room_id.as_str(), pos), event_id.as_str())?;
            if let Some(rel) = &relation {
                t.relations
                    .index(rel, pos, &event_id, &event_type, &sender, &room_id)?;
            }
            t.rooms
                .insert(room_id.as_str(), serde_json::to_vec(&room)?.as_slice())?;
            if let Some((user, mut rec)) = membership {
                // A new membership event starts afresh: an earlier "forget" no longer applies.
                rec.pos = pos;
                rec.forgotten = false;
                t.memberships.insert(
                    (user.as_str(), room_id.as_str()),
                    serde_json::to_vec(&rec)?.as_slice(),
                )?;
            }
            return Ok(Some(pos));
        }
    }
    Ok(None)
}
