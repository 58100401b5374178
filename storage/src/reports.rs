//! Reports that users file against events and rooms (spec: "Reporting content"), kept for the
//! server's admins, who read them through the admin API.

use redb::{ReadableDatabase, ReadableTable, Table, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::tables::*;
use crate::{RedbStore, StorageResult};

/// One report. A report of a whole room has no `event_id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportRecord {
    /// When the server received it, in milliseconds.
    pub received_ts: u64,
    pub room_id: String,
    #[serde(default)]
    pub event_id: Option<String>,
    /// Who reported.
    pub user_id: String,
    #[serde(default)]
    pub reason: Option<String>,
    /// The reporter's score (-100 to 0); event reports of older clients only.
    #[serde(default)]
    pub score: Option<i64>,
}

#[derive(Clone, Debug)]
pub enum ReportOp {
    /// Stores a report under the next id: one more than the highest so far, given by the
    /// writer so that concurrent reports never share an id.
    Add(ReportRecord),
}

/// Reads of reports; part of [`crate::Store`].
pub trait ReportsStore {
    fn report(&self, id: u64) -> StorageResult<Option<ReportRecord>>;
    /// Every report, oldest first. Admins read them rarely and there are few, so the admin
    /// API filters and pages in memory.
    fn reports(&self) -> StorageResult<Vec<(u64, ReportRecord)>>;
}

impl ReportsStore for RedbStore {
    fn report(&self, id: u64) -> StorageResult<Option<ReportRecord>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(REPORTS)?;
        match t.get(id)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value())?)),
            None => Ok(None),
        }
    }

    fn reports(&self) -> StorageResult<Vec<(u64, ReportRecord)>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(REPORTS)?;
        t.iter()?
            .map(|row| {
                let (k, v) = row?;
                Ok((k.value(), serde_json::from_slice(v.value())?))
            })
            .collect()
    }
}

pub(crate) struct ReportsTables<'t> {
    reports: Table<'t, u64, &'static [u8]>,
}

impl<'t> ReportsTables<'t> {
    pub(crate) fn open(txn: &'t WriteTransaction) -> StorageResult<Self> {
        Ok(Self {
            reports: txn.open_table(REPORTS)?,
        })
    }

    pub(crate) fn apply(&mut self, op: ReportOp) -> StorageResult<()> {
        match op {
            ReportOp::Add(rec) => {
                let last = self.reports.last()?.map(|(k, _)| k.value());
                // Ids start at 1, as Synapse's do.
                let id = last.map_or(1, |l| l + 1);
                self.reports
                    .insert(id, serde_json::to_vec(&rec)?.as_slice())?;
            }
        }
        Ok(())
    }
}
