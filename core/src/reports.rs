//! Reports of events and rooms (spec: "Reporting content"), kept for the server's admins, who
//! read them through Synapse's admin API (`event_reports`).
//!
//! As in Synapse, an event the reporter cannot see is "not found", so that reporting does not
//! tell whether an event exists; a room is reported only if this server knows it.

use std::sync::Arc;

use hearth_storage::reports::{ReportOp, ReportRecord};
use hearth_storage::{Store, WriteOp};
use ruma::{EventId, RoomId, UserId};
use serde_json::Value;

use crate::rooms::Rooms;
use crate::util::now_ms;
use crate::{Error, Result};

pub struct Reports {
    store: Arc<dyn Store>,
    rooms: Arc<Rooms>,
}

/// Which reports an admin asks for, and which page of them.
#[derive(Clone, Debug, Default)]
pub struct ReportQuery {
    /// How many matching reports to skip.
    pub from: usize,
    pub limit: usize,
    pub newest_first: bool,
    /// Reporters whose user id contains this (Synapse matches with `LIKE '%…%'`).
    pub user_id: Option<String>,
    /// Rooms whose id contains this.
    pub room_id: Option<String>,
    /// Reports of events this user sent (exact).
    pub event_sender: Option<String>,
}

/// A report as admins see it: the record, and what the server knows of its event and room now.
#[derive(Clone, Debug)]
pub struct Report {
    pub id: u64,
    pub record: ReportRecord,
    /// The reported event's sender.
    pub sender: Option<String>,
    pub canonical_alias: Option<String>,
    pub name: Option<String>,
}

pub struct ReportPage {
    pub reports: Vec<Report>,
    /// How many reports match, over all pages.
    pub total: usize,
    /// The `from` of the next page, if there is one.
    pub next_token: Option<usize>,
}

impl Reports {
    pub fn new(store: Arc<dyn Store>, rooms: Arc<Rooms>) -> Self {
        Self { store, rooms }
    }

    pub async fn report_event(
        &self,
        user: &UserId,
        room: &RoomId,
        event: &EventId,
        reason: Option<String>,
        score: Option<i64>,
    ) -> Result<()> {
        match self.rooms.visible_event(room, user, event) {
            Ok(_) => {}
            Err(Error::NotFound(_) | Error::Forbidden(_)) => {
                return Err(Error::not_found(
                    "Unable to report event: it does not exist or you aren't able to see it.",
                ));
            }
            Err(e) => return Err(e),
        }
        self.add(ReportRecord {
            received_ts: now_ms(),
            room_id: room.to_string(),
            event_id: Some(event.to_string()),
            user_id: user.to_string(),
            reason,
            score,
        })
        .await
    }

    pub async fn report_room(&self, user: &UserId, room: &RoomId, reason: String) -> Result<()> {
        if !self.rooms.exists(room)? {
            return Err(Error::not_found("Room does not exist"));
        }
        self.add(ReportRecord {
            received_ts: now_ms(),
            room_id: room.to_string(),
            event_id: None,
            user_id: user.to_string(),
            reason: Some(reason),
            score: None,
        })
        .await
    }

    async fn add(&self, record: ReportRecord) -> Result<()> {
        tracing::info!(
            reporter = %record.user_id,
            room = %record.room_id,
            event = record.event_id.as_deref().unwrap_or("-"),
            "content reported"
        );
        self.store
            .submit(vec![WriteOp::Reports(ReportOp::Add(record))])
            .await?;
        Ok(())
    }

    /// Reports of events that match `query`.
    pub fn event_reports(&self, query: &ReportQuery) -> Result<ReportPage> {
        self.page(query, true)
    }

    /// Reports of whole rooms that match `query` (`event_sender` matches none of them).
    pub fn room_reports(&self, query: &ReportQuery) -> Result<ReportPage> {
        self.page(query, false)
    }

    /// One event report with the reported event as stored, or `None` if there is no event
    /// report of that id.
    pub fn event_report(&self, id: u64) -> Result<Option<(Report, Option<Value>)>> {
        let Some(record) = self.store.report(id)? else {
            return Ok(None);
        };
        let Some(event_id) = record.event_id.clone() else {
            return Ok(None);
        };
        let json = self
            .store
            .event_json(&event_id)?
            .and_then(|b| serde_json::from_slice(&b).ok());
        Ok(Some((self.describe(id, record)?, json)))
    }

    fn page(&self, q: &ReportQuery, events: bool) -> Result<ReportPage> {
        let mut matching = Vec::new();
        for (id, record) in self.store.reports()? {
            if record.event_id.is_some() != events
                || q.user_id
                    .as_ref()
                    .is_some_and(|u| !record.user_id.contains(u.as_str()))
                || q.room_id
                    .as_ref()
                    .is_some_and(|r| !record.room_id.contains(r.as_str()))
            {
                continue;
            }
            let report = self.describe(id, record)?;
            if q.event_sender.is_some() && report.sender != q.event_sender {
                continue;
            }
            matching.push(report);
        }
        if q.newest_first {
            matching.reverse();
        }
        let total = matching.len();
        let reports: Vec<Report> = matching.into_iter().skip(q.from).take(q.limit).collect();
        let next_token = (q.from.saturating_add(q.limit) < total).then(|| q.from + reports.len());
        Ok(ReportPage {
            reports,
            total,
            next_token,
        })
    }

    fn describe(&self, id: u64, record: ReportRecord) -> Result<Report> {
        let sender = match record.event_id.as_deref().map(EventId::parse) {
            Some(Ok(e)) => self.rooms.pdu(&e)?.map(|p| p.sender.to_string()),
            _ => None,
        };
        let (mut canonical_alias, mut name) = (None, None);
        if let Ok(room) = RoomId::parse(&record.room_id)
            && self.rooms.exists(&room)?
        {
            let field = |kind: &str, field: &str| -> Result<Option<String>> {
                Ok(self
                    .rooms
                    .state_event(&room, kind, "")?
                    .and_then(|p| p.content_value()[field].as_str().map(str::to_owned)))
            };
            canonical_alias = field("m.room.canonical_alias", "alias")?;
            name = field("m.room.name", "name")?;
        }
        Ok(Report {
            id,
            record,
            sender,
            canonical_alias,
            name,
        })
    }
}
