//! Event relations (`m.relates_to`: threads, edits, reactions, references), the thread list of
//! each room, and redaction (pruning a stored event's content in place).
//!
//! A relation is indexed by the writer in the commit that appends its event, so the index never
//! disagrees with the timeline; the core reads it to answer `/relations` and `/threads` and to
//! bundle aggregations into events.

use redb::{ReadableDatabase, Table, WriteTransaction};

use crate::tables::*;
use crate::{RedbStore, StorageResult, StreamPos};

/// What an appended event says about another event (its `content["m.relates_to"]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    pub rel_type: String,
    /// The event related to.
    pub parent: String,
    /// An annotation's key (the reaction's emoji); empty otherwise.
    pub key: String,
}

/// One row of the relations index: a child event of some parent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelatedEvent {
    pub pos: StreamPos,
    pub event_id: String,
    pub rel_type: String,
    pub event_type: String,
    pub sender: String,
    pub key: String,
}

#[derive(Clone, Debug)]
pub enum RelationOp {
    /// Replaces an event's stored JSON with its redacted form and records which event redacted
    /// it; its own relation (if it had one) leaves the index, since redaction strips it.
    Redact {
        event_id: String,
        json: Vec<u8>,
        redacted_by: String,
        /// The parent the redacted event related to, if any.
        parent: Option<String>,
    },
}

/// Reads of the relations index; part of [`crate::Store`].
pub trait RelationsStore {
    /// Events relating to `parent` with positions in `[from, to]`, oldest first or (with
    /// `backwards`) newest first, at most `limit`.
    fn relations(
        &self,
        parent: &str,
        from: StreamPos,
        to: StreamPos,
        backwards: bool,
        limit: usize,
    ) -> StorageResult<Vec<RelatedEvent>>;
    /// Thread roots of a room by latest activity (position of the newest reply) at or before
    /// `before`, newest first, at most `limit`: `(latest position, root event id)`.
    fn threads(
        &self,
        room_id: &str,
        before: StreamPos,
        limit: usize,
    ) -> StorageResult<Vec<(StreamPos, String)>>;
}

impl RelationsStore for RedbStore {
    fn relations(
        &self,
        parent: &str,
        from: StreamPos,
        to: StreamPos,
        backwards: bool,
        limit: usize,
    ) -> StorageResult<Vec<RelatedEvent>> {
        if from > to || limit == 0 {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_read()?;
        let t = txn.open_table(RELATIONS)?;
        let range = t.range((parent, from)..=(parent, to))?;
        let rows: Box<dyn Iterator<Item = _>> = if backwards {
            Box::new(range.rev())
        } else {
            Box::new(range)
        };
        let mut out = Vec::new();
        for row in rows.take(limit) {
            let (k, v) = row?;
            let (event_id, rel_type, event_type, sender, key) = v.value();
            out.push(RelatedEvent {
                pos: k.value().1,
                event_id: event_id.to_owned(),
                rel_type: rel_type.to_owned(),
                event_type: event_type.to_owned(),
                sender: sender.to_owned(),
                key: key.to_owned(),
            });
        }
        Ok(out)
    }

    fn threads(
        &self,
        room_id: &str,
        before: StreamPos,
        limit: usize,
    ) -> StorageResult<Vec<(StreamPos, String)>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(THREADS_BY_ACTIVITY)?;
        let mut out = Vec::new();
        for row in t.range((room_id, 0)..=(room_id, before))?.rev().take(limit) {
            let (k, v) = row?;
            out.push((k.value().1, v.value().to_owned()));
        }
        Ok(out)
    }
}

pub(crate) struct RelationTables<'t> {
    relations: Table<'t, (&'static str, u64), RelationValue>,
    threads: Table<'t, (&'static str, &'static str), u64>,
    threads_by_activity: Table<'t, (&'static str, u64), &'static str>,
}

impl<'t> RelationTables<'t> {
    pub(crate) fn open(txn: &'t WriteTransaction) -> StorageResult<Self> {
        Ok(Self {
            relations: txn.open_table(RELATIONS)?,
            threads: txn.open_table(THREADS)?,
            threads_by_activity: txn.open_table(THREADS_BY_ACTIVITY)?,
        })
    }

    /// Indexes the relation of an event appended at `pos`; a thread reply also moves its thread
    /// to the top of the room's thread list.
    pub(crate) fn index(
        &mut self,
        rel: &Relation,
        pos: StreamPos,
        event_id: &str,
        event_type: &str,
        sender: &str,
        room_id: &str,
    ) -> StorageResult<()> {
        self.relations.insert(
            (rel.parent.as_str(), pos),
            (
                event_id,
                rel.rel_type.as_str(),
                event_type,
                sender,
                rel.key.as_str(),
            ),
        )?;
        if rel.rel_type == "m.thread" {
            let old = self
                .threads
                .insert((room_id, rel.parent.as_str()), pos)?
                .map(|v| v.value());
            if let Some(old) = old {
                self.threads_by_activity.remove((room_id, old))?;
            }
            self.threads_by_activity
                .insert((room_id, pos), rel.parent.as_str())?;
        }
        Ok(())
    }

    /// Drops the index row of the event at `pos` relating to `parent`.
    pub(crate) fn unindex(&mut self, parent: &str, pos: StreamPos) -> StorageResult<()> {
        self.relations.remove((parent, pos))?;
        Ok(())
    }
}
