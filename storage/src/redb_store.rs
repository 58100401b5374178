use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use crate::tables::*;
use crate::writer::{self, Job};
use crate::*;

/// The embedded store: one redb file in the data directory.
pub struct RedbStore {
    pub(crate) db: Arc<Database>,
    tx: mpsc::Sender<Job>,
    persisted: Arc<AtomicU64>,
    /// The change index, filled by the writer as it commits.
    changes: writer::Changes,
    opened_at: StreamPos,
}

impl RedbStore {
    /// Opens (or creates) the database file and starts the writer thread. `cache_bytes` bounds
    /// redb's page cache (its own default is 1 GiB, too much for a small server).
    pub fn open(path: &Path, cache_bytes: usize) -> StorageResult<Self> {
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)?;
        Self::from_database(db)
    }

    /// Event ids of a per-room index keyed by `(room id, number)`, between two numbers (both
    /// inclusive), descending or ascending, at most `limit`.
    fn room_index(
        &self,
        table: TableDefinition<(&str, u64), &str>,
        room_id: &str,
        from: u64,
        to: u64,
        descending: bool,
        limit: usize,
    ) -> StorageResult<Vec<(u64, String)>> {
        if from > to || limit == 0 {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_read()?;
        let table = txn.open_table(table)?;
        let range = table.range((room_id, from)..=(room_id, to))?;
        let rows: Box<dyn Iterator<Item = _>> = if descending {
            Box::new(range.rev())
        } else {
            Box::new(range)
        };
        let mut out = Vec::new();
        for row in rows.take(limit) {
            let (k, v) = row?;
            out.push((k.value().1, v.value().to_owned()));
        }
        Ok(out)
    }

    /// A store that lives in memory only, for unit tests of the layers above.
    pub fn in_memory() -> StorageResult<Self> {
        let db = Database::builder().create_with_backend(redb::backends::InMemoryBackend::new())?;
        Self::from_database(db)
    }

    fn from_database(db: Database) -> StorageResult<Self> {
        // Create every table up front so that readers never see a missing table.
        let txn = db.begin_write()?;
        txn.open_table(USERS)?;
        txn.open_table(DEVICES)?;
        txn.open_table(TOKENS)?;
        txn.open_table(FILTERS)?;
        txn.open_table(TXNS)?;
        txn.open_table(EVENT_IDS)?;
        txn.open_table(EVENTS)?;
        txn.open_table(EVENT_META)?;
        txn.open_table(ROOM_TIMELINE)?;
        txn.open_table(ROOM_HISTORY)?;
        txn.open_table(STATE_GROUPS)?;
        txn.open_table(ROOMS)?;
        txn.open_table(MEMBERSHIPS)?;
        txn.open_table(ACCOUNT_DATA)?;
        txn.open_table(ACCOUNT_DATA_STREAM)?;
        txn.open_table(RECEIPTS)?;
        txn.open_table(RECEIPT_STREAM)?;
        txn.open_table(TO_DEVICE)?;
        txn.open_table(OUTBOX)?;
        txn.open_table(MEDIA)?;
        txn.open_table(MEDIA_BY_USER)?;
        crate::e2ee::E2eeTables::open(&txn)?;
        crate::push::PushTables::open(&txn)?;
        crate::directory::DirectoryTables::open(&txn)?;
        crate::reports::ReportsTables::open(&txn)?;
        let pos = {
            let counters = txn.open_table(COUNTERS)?;
            counters.get(STREAM_POS)?.map(|v| v.value()).unwrap_or(0)
        };
        txn.commit()?;

        let db = Arc::new(db);
        let persisted = Arc::new(AtomicU64::new(pos));
        let (tx, rx) = mpsc::channel();
        let changes = writer::Changes::default();
        let (wdb, wpersisted, wchanges) = (db.clone(), persisted.clone(), changes.clone());
        std::thread::Builder::new()
            .name("hearth-writer".into())
            .spawn(move || writer::run(wdb, rx, wpersisted, wchanges))
            .map_err(|e| StorageError::Database(e.to_string()))?;
        Ok(Self {
            db,
            tx,
            persisted,
            changes,
            opened_at: pos,
        })
    }

    fn get_json<K: redb::Key + 'static, T: DeserializeOwned>(
        &self,
        table: TableDefinition<K, &[u8]>,
        key: K::SelfType<'_>,
    ) -> StorageResult<Option<T>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(table)?;
        match table.get(key)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value())?)),
            None => Ok(None),
        }
    }

    /// Every row of a `(user, key) → JSON` table that belongs to one user, as `(key, record)`.
    fn json_rows_of_user<T: DeserializeOwned>(
        &self,
        table: TableDefinition<(&str, &str), &[u8]>,
        user_id: &str,
    ) -> StorageResult<Vec<(String, T)>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(table)?;
        let mut out = Vec::new();
        for row in table.range((user_id, "")..)? {
            let (k, v) = row?;
            let (user, key) = k.value();
            if user != user_id {
                break;
            }
            out.push((key.to_owned(), serde_json::from_slice(v.value())?));
        }
        Ok(out)
    }
}

impl Store for RedbStore {
    fn submit(&self, ops: Vec<WriteOp>) -> PendingCommit {
        let (reply, rx) = oneshot::channel();
        let sent = self.tx.send(Job { ops, reply }).is_ok();
        Box::pin(async move {
            if !sent {
                return Err(StorageError::WriterGone);
            }
            rx.await.map_err(|_| StorageError::WriterGone)?
        })
    }

    fn persisted_pos(&self) -> StreamPos {
        self.persisted.load(Ordering::Acquire)
    }

    fn counter(&self, name: &str) -> StorageResult<u64> {
        let txn = self.db.begin_read()?;
        Ok(txn
            .open_table(COUNTERS)?
            .get(name)?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    fn user(&self, user_id: &str) -> StorageResult<Option<UserRecord>> {
        self.get_json(USERS, user_id)
    }

    fn device(&self, user_id: &str, device_id: &str) -> StorageResult<Option<DeviceRecord>> {
        self.get_json(DEVICES, (user_id, device_id))
    }

    fn devices(&self, user_id: &str) -> StorageResult<Vec<(String, DeviceRecord)>> {
        self.json_rows_of_user(DEVICES, user_id)
    }

    fn token(&self, token_hash: &[u8]) -> StorageResult<Option<TokenRecord>> {
        self.get_json(TOKENS, token_hash)
    }

    fn filter(&self, user_id: &str, filter_id: u64) -> StorageResult<Option<String>> {
        let txn = self.db.begin_read()?;
        Ok(txn
            .open_table(FILTERS)?
            .get((user_id, filter_id))?
            .map(|v| v.value().to_owned()))
    }

    fn txn_event(
        &self,
        user_id: &str,
        device_id: &str,
        txn_id: &str,
    ) -> StorageResult<Option<String>> {
        let txn = self.db.begin_read()?;
        Ok(txn
            .open_table(TXNS)?
            .get((user_id, device_id, txn_id))?
            .map(|v| v.value().to_owned()))
    }

    fn event_json(&self, event_id: &str) -> StorageResult<Option<Vec<u8>>> {
        let txn = self.db.begin_read()?;
        let Some(pos) = txn.open_table(EVENT_IDS)?.get(event_id)?.map(|v| v.value()) else {
            return Ok(None);
        };
        Ok(txn
            .open_table(EVENTS)?
            .get(pos)?
            .map(|v| v.value().to_vec()))
    }

    fn event_meta(&self, event_id: &str) -> StorageResult<Option<EventMeta>> {
        let txn = self.db.begin_read()?;
        let Some(pos) = txn.open_table(EVENT_IDS)?.get(event_id)?.map(|v| v.value()) else {
            return Ok(None);
        };
        match txn.open_table(EVENT_META)?.get(pos)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value())?)),
            None => Ok(None),
        }
    }

    fn room_events(
        &self,
        room_id: &str,
        from: StreamPos,
        to: StreamPos,
        backwards: bool,
        limit: usize,
    ) -> StorageResult<Vec<(StreamPos, String)>> {
        self.room_index(ROOM_TIMELINE, room_id, from, to, backwards, limit)
    }

    fn room_history(
        &self,
        room_id: &str,
        from: u64,
        to: u64,
        into_past: bool,
        limit: usize,
    ) -> StorageResult<Vec<(u64, String)>> {
        // Sequences count into the past: into it is ascending.
        self.room_index(ROOM_HISTORY, room_id, from, to, !into_past, limit)
    }

    fn state_group(&self, id: u64) -> StorageResult<Option<StateGroupRecord>> {
        self.get_json(STATE_GROUPS, id)
    }

    fn room(&self, room_id: &str) -> StorageResult<Option<RoomRecord>> {
        self.get_json(ROOMS, room_id)
    }

    fn rooms(&self) -> StorageResult<Vec<(String, RoomRecord)>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ROOMS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            out.push((k.value().to_owned(), serde_json::from_slice(v.value())?));
        }
        Ok(out)
    }

    fn memberships_of_user(&self, user_id: &str) -> StorageResult<Vec<(String, MembershipRecord)>> {
        self.json_rows_of_user(MEMBERSHIPS, user_id)
    }

    fn membership(&self, user_id: &str, room_id: &str) -> StorageResult<Option<MembershipRecord>> {
        self.get_json(MEMBERSHIPS, (user_id, room_id))
    }

    fn account_data(
        &self,
        user_id: &str,
        room_id: &str,
        kind: &str,
    ) -> StorageResult<Option<String>> {
        let txn = self.db.begin_read()?;
        Ok(txn
            .open_table(ACCOUNT_DATA)?
            .get((user_id, room_id, kind))?
            .map(|v| v.value().1.to_owned()))
    }

    fn account_data_changes(
        &self,
        user_id: &str,
        after: StreamPos,
        upto: StreamPos,
    ) -> StorageResult<Vec<AccountDataEntry>> {
        if after >= upto {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_read()?;
        let stream = txn.open_table(ACCOUNT_DATA_STREAM)?;
        let data = txn.open_table(ACCOUNT_DATA)?;
        let mut out = Vec::new();
        for row in stream.range((user_id, after + 1)..=(user_id, upto))? {
            let (_, v) = row?;
            let (room_id, kind) = v.value();
            if let Some(d) = data.get((user_id, room_id, kind))? {
                let (pos, content) = d.value();
                out.push(AccountDataEntry {
                    room_id: room_id.into(),
                    kind: kind.into(),
                    content: content.into(),
                    pos,
                });
            }
        }
        Ok(out)
    }

    fn all_account_data(&self, user_id: &str) -> StorageResult<Vec<AccountDataEntry>> {
        let txn = self.db.begin_read()?;
        let data = txn.open_table(ACCOUNT_DATA)?;
        let mut out = Vec::new();
        for row in data.range((user_id, "", "")..)? {
            let (k, v) = row?;
            let (user, room_id, kind) = k.value();
            if user != user_id {
                break;
            }
            let (pos, content) = v.value();
            out.push(AccountDataEntry {
                room_id: room_id.into(),
                kind: kind.into(),
                content: content.into(),
                pos,
            });
        }
        Ok(out)
    }

    fn last_change(&self, key: &ChangeKey) -> Option<StreamPos> {
        self.changes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied()
    }

    fn opened_at(&self) -> StreamPos {
        self.opened_at
    }

    fn receipts(
        &self,
        room_id: &str,
        after: Option<StreamPos>,
        upto: StreamPos,
    ) -> StorageResult<Vec<ReceiptRecord>> {
        let txn = self.db.begin_read()?;
        let receipts = txn.open_table(RECEIPTS)?;
        let mut out = Vec::new();
        let mut push = |user: &str, kind: &str, thread: &str, v: (u64, &str, u64)| {
            out.push(ReceiptRecord {
                room_id: room_id.to_owned(),
                user_id: user.to_owned(),
                receipt_type: kind.to_owned(),
                thread_id: thread.to_owned(),
                event_id: v.1.to_owned(),
                ts: v.2,
                pos: v.0,
            })
        };
        match after {
            Some(after) => {
                if after >= upto {
                    return Ok(out);
                }
                let stream = txn.open_table(RECEIPT_STREAM)?;
                for row in stream.range((room_id, after + 1)..=(room_id, upto))? {
                    let (_, v) = row?;
                    let (user, kind, thread) = v.value();
                    if let Some(r) = receipts.get((room_id, user, kind, thread))? {
                        push(user, kind, thread, r.value());
                    }
                }
            }
            None => {
                for row in receipts.range((room_id, "", "", "")..)? {
                    let (k, v) = row?;
                    let (room, user, kind, thread) = k.value();
                    if room != room_id {
                        break;
                    }
                    let v = v.value();
                    if v.0 <= upto {
                        push(user, kind, thread, v);
                    }
                }
            }
        }
        Ok(out)
    }

    fn user_receipts(&self, room_id: &str, user_id: &str) -> StorageResult<Vec<ReceiptRecord>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(RECEIPTS)?;
        let mut out = Vec::new();
        for row in table.range((room_id, user_id, "", "")..)? {
            let (k, v) = row?;
            let (room, user, kind, thread) = k.value();
            if room != room_id || user != user_id {
                break;
            }
            let (pos, event_id, ts) = v.value();
            out.push(ReceiptRecord {
                room_id: room_id.to_owned(),
                user_id: user_id.to_owned(),
                receipt_type: kind.to_owned(),
                thread_id: thread.to_owned(),
                event_id: event_id.to_owned(),
                ts,
                pos,
            });
        }
        Ok(out)
    }

    fn receipt(
        &self,
        room_id: &str,
        user_id: &str,
        receipt_type: &str,
        thread_id: &str,
    ) -> StorageResult<Option<ReceiptRecord>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(RECEIPTS)?;
        Ok(table
            .get((room_id, user_id, receipt_type, thread_id))?
            .map(|v| {
                let (pos, event_id, ts) = v.value();
                ReceiptRecord {
                    room_id: room_id.to_owned(),
                    user_id: user_id.to_owned(),
                    receipt_type: receipt_type.to_owned(),
                    thread_id: thread_id.to_owned(),
                    event_id: event_id.to_owned(),
                    ts,
                    pos,
                }
            }))
    }

    fn media(&self, server_name: &str, media_id: &str) -> StorageResult<Option<MediaRecord>> {
        self.get_json(MEDIA, (server_name, media_id))
    }

    fn media_of_user(&self, user_id: &str) -> StorageResult<Vec<(String, String, u64)>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(MEDIA_BY_USER)?;
        let end = format!("{user_id}\0");
        table
            .range((user_id, "", "")..(end.as_str(), "", ""))?
            .map(|row| {
                let (k, v) = row?;
                let (_, server, id) = k.value();
                Ok((server.to_owned(), id.to_owned(), v.value()))
            })
            .collect()
    }

    fn outbound(&self, destination: &str, limit: usize) -> StorageResult<Vec<(StreamPos, String)>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(OUTBOX)?;
        let mut out = Vec::new();
        for row in table
            .range((destination, 0)..=(destination, u64::MAX))?
            .take(limit)
        {
            let (k, v) = row?;
            out.push((k.value().1, v.value().to_owned()));
        }
        Ok(out)
    }

    fn outbound_destinations(&self) -> StorageResult<Vec<String>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(OUTBOX)?;
        let mut out: Vec<String> = Vec::new();
        let mut next: Option<String> = Some(String::new());
        // Skip from one destination to the next instead of reading every queued row.
        while let Some(from) = next.take() {
            if let Some(row) = table.range((from.as_str(), 0)..)?.next() {
                let (k, _) = row?;
                let dest = k.value().0.to_owned();
                next = Some(format!("{dest}\0"));
                out.push(dest);
            }
        }
        Ok(out)
    }

    fn to_device(
        &self,
        user_id: &str,
        device_id: &str,
        after: StreamPos,
        upto: StreamPos,
        limit: usize,
    ) -> StorageResult<Vec<ToDeviceMessage>> {
        if after >= upto {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TO_DEVICE)?;
        let mut out = Vec::new();
        for row in table
            .range((user_id, device_id, after + 1)..=(user_id, device_id, upto))?
            .take(limit)
        {
            let (k, v) = row?;
            out.push(ToDeviceMessage {
                pos: k.value().2,
                json: v.value().to_owned(),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(room: &str, id: &str) -> WriteOp {
        WriteOp::AppendEvent(Box::new(AppendEvent {
            event_id: id.into(),
            json: b"{}".to_vec(),
            meta: EventMeta {
                room_id: room.into(),
                pos: 0,
                state_before: 0,
                state_after: 0,
                txn: None,
                replaces_state: None,
                redacted_by: None,
                history_seq: None,
                refused: None,
            },
            room: RoomRecord {
                room_version: "11".into(),
                forward_extremities: vec![id.into()],
                depth: 1,
                state_group: 0,
                is_public: false,
            },
            membership: None,
            relation: None,
            event_type: "m.room.message".into(),
            sender: "@u:x".into(),
        }))
    }

    #[tokio::test]
    async fn positions_are_assigned_in_order_and_ranges_read_back() {
        let store = RedbStore::in_memory().unwrap();
        let a = store.submit(vec![append("!a", "$1"), append("!b", "$2")]);
        let b = store.submit(vec![append("!a", "$3")]);
        assert_eq!(a.await.unwrap(), vec![1, 2]);
        assert_eq!(b.await.unwrap(), vec![3]);
        assert_eq!(store.persisted_pos(), 3);
        let fwd = store.room_events("!a", 0, 10, false, 10).unwrap();
        assert_eq!(fwd, vec![(1, "$1".to_string()), (3, "$3".to_string())]);
        let back = store.room_events("!a", 0, 10, true, 1).unwrap();
        assert_eq!(back, vec![(3, "$3".to_string())]);
        assert_eq!(
            store.room("!a").unwrap().unwrap().forward_extremities,
            vec!["$3".to_string()]
        );
        assert_eq!(store.event_meta("$2").unwrap().unwrap().pos, 2);
    }

    #[tokio::test]
    async fn history_takes_outliers_in_place_and_reads_back_both_ways() {
        let store = RedbStore::in_memory().unwrap();
        let meta = |seq| EventMeta {
            room_id: "!a".into(),
            pos: 0,
            state_before: 1,
            state_after: 2,
            txn: None,
            replaces_state: None,
            redacted_by: None,
            history_seq: seq,
            refused: None,
        };
        store
            .submit(vec![
                append("!a", "$live"),
                WriteOp::PutOutlier {
                    event_id: "$old".into(),
                    json: br#"{"content":{"name":"kept"}}"#.to_vec(),
                    meta: EventMeta {
                        state_before: 0,
                        state_after: 0,
                        ..meta(None)
                    },
                    membership: None,
                },
            ])
            .await
            .unwrap();
        let outlier_pos = store.event_meta("$old").unwrap().unwrap().pos;
        store
            .submit(
                [(1, "$old"), (2, "$older")]
                    .into_iter()
                    .map(|(seq, id)| WriteOp::PutHistory {
                        seq,
                        event_id: id.into(),
                        json: b"{}".to_vec(),
                        meta: meta(None),
                    })
                    .collect(),
            )
            .await
            .unwrap();
        let old = store.event_meta("$old").unwrap().unwrap();
        assert_eq!(
            (old.pos, old.history_seq, old.state_after),
            (outlier_pos, Some(1), 2),
            "the outlier keeps its place in storage and gains its history sequence and state"
        );
        assert_eq!(
            store.event_json("$old").unwrap().unwrap(),
            br#"{"content":{"name":"kept"}}"#,
            "and keeps its JSON, which a peer may have sent pruned"
        );
        assert_eq!(
            store.event_meta("$older").unwrap().unwrap().history_seq,
            Some(2)
        );
        let into_past = store.room_history("!a", 1, u64::MAX, true, 10).unwrap();
        assert_eq!(into_past, vec![(1, "$old".into()), (2, "$older".into())]);
        let oldest = store.room_history("!a", 1, u64::MAX, false, 1).unwrap();
        assert_eq!(
            oldest,
            vec![(2, "$older".into())],
            "towards the present from the far end"
        );
        assert!(
            store
                .room_history("!b", 1, u64::MAX, true, 10)
                .unwrap()
                .is_empty()
        );
        // The live timeline is untouched.
        assert_eq!(
            store.room_events("!a", 0, u64::MAX, false, 10).unwrap(),
            vec![(1, "$live".into())]
        );
    }

    #[tokio::test]
    async fn reopening_keeps_the_stream_position() {
        let dir = std::env::temp_dir().join(format!("hearth-storage-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("db.redb");
        {
            let store = RedbStore::open(&path, 1 << 20).unwrap();
            store.submit(vec![append("!a", "$1")]).await.unwrap();
        }
        // The writer thread still holds the database; wait for it to let go.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let store = loop {
            match RedbStore::open(&path, 1 << 20) {
                Ok(s) => break s,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
        };
        assert_eq!(store.persisted_pos(), 1);
        assert_eq!(
            store.submit(vec![append("!a", "$2")]).await.unwrap(),
            vec![2]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn reports_are_numbered_in_the_order_received() {
        use crate::reports::{ReportOp, ReportRecord, ReportsStore};
        let store = RedbStore::in_memory().unwrap();
        let report = |reason: &str| {
            WriteOp::Reports(ReportOp::Add(ReportRecord {
                received_ts: 1,
                room_id: "!a".into(),
                event_id: None,
                user_id: "@u:x".into(),
                reason: Some(reason.into()),
                score: None,
            }))
        };
        let a = store.submit(vec![report("one"), report("two")]);
        let b = store.submit(vec![report("three")]);
        a.await.unwrap();
        b.await.unwrap();
        let reasons: Vec<(u64, String)> = store
            .reports()
            .unwrap()
            .into_iter()
            .map(|(id, r)| (id, r.reason.unwrap()))
            .collect();
        assert_eq!(
            reasons,
            [(1, "one".into()), (2, "two".into()), (3, "three".into())]
        );
        assert_eq!(
            store.report(2).unwrap().unwrap().reason.as_deref(),
            Some("two")
        );
        assert!(store.report(4).unwrap().is_none());
    }
}
