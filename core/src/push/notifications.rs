//! The push evaluator and `GET /notifications`.
//!
//! The evaluator follows the global event stream from a durable cursor. For every new timeline
//! event it runs the push rules of each local member it concerns (the joined members, and the
//! target of an invite) and stores a notification for those it notifies, in the same commit
//! that advances the cursor; then it wakes their pushers. A crash between a commit of events and
//! their evaluation only delays it: the cursor is behind, and the next start evaluates them.
//! The evaluation is off the send path, so a message to a room of hundreds is acknowledged as
//! fast as one to a room of two.

use std::collections::BTreeSet;
use std::sync::Arc;

use hearth_storage::push::{NotificationRecord, PUSH_CURSOR, PushOp};
use hearth_storage::{Store, StreamPos, WriteOp};
use ruma::{EventId, OwnedServerName, OwnedUserId, UserId};

use super::pushers::Pushers;
use super::rules::{PushRules, notify_and_highlight};
use crate::Result;
use crate::notifier::Notifier;
use crate::receipts::Receipts;
use crate::rooms::Rooms;
use crate::rooms::timeline::TimelineEvent;
use crate::util::now_ms;

/// Set once the cursor was first written: a database from before push evaluation starts at its
/// current position instead of evaluating its whole history.
const CURSOR_INITIALISED: &str = "push_cursor_initialised";
/// Events one evaluation round reads.
const BATCH: usize = 500;

/// A notification as `GET /notifications` lists it.
pub struct Listed {
    pub event: TimelineEvent,
    pub actions: Vec<ruma::push::Action>,
    pub read: bool,
    pub ts: u64,
}

pub struct Notifications {
    server_name: OwnedServerName,
    store: Arc<dyn Store>,
    rooms: Arc<Rooms>,
    receipts: Arc<Receipts>,
    rules: Arc<PushRules>,
    pushers: Arc<Pushers>,
    notifier: Arc<Notifier>,
}

impl Notifications {
    pub fn new(
        server_name: OwnedServerName,
        store: Arc<dyn Store>,
        rooms: Arc<Rooms>,
        receipts: Arc<Receipts>,
        rules: Arc<PushRules>,
        pushers: Arc<Pushers>,
        notifier: Arc<Notifier>,
    ) -> Self {
        Self {
            server_name,
            store,
            rooms,
            receipts,
            rules,
            pushers,
            notifier,
        }
    }

    /// Starts the evaluator.
    pub(super) async fn start(self: &Arc<Self>) -> Result<()> {
        if self.store.counter(CURSOR_INITIALISED)? == 0 {
            let now = self.store.persisted_pos();
            self.store
                .submit(vec![
                    WriteOp::SetCounter(PUSH_CURSOR.into(), now),
                    WriteOp::SetCounter(CURSOR_INITIALISED.into(), 1),
                ])
                .await?;
        }
        let this = self.clone();
        tokio::spawn(async move { this.run().await });
        Ok(())
    }

    async fn run(self: Arc<Self>) {
        let mut events = self.notifier.subscribe_events();
        loop {
            // Subscribed before reading the position, so a commit cannot slip between.
            events.borrow_and_update();
            match self.round().await {
                Ok(true) => continue,
                Ok(false) => {
                    if events.changed().await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "push evaluation failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Evaluates the next events. Answers whether there may be more right away.
    async fn round(&self) -> Result<bool> {
        let cursor = self.store.counter(PUSH_CURSOR)?;
        let upto = self.store.persisted_pos();
        if upto <= cursor {
            return Ok(false);
        }
        let events = self.store.timeline_events(cursor, upto, BATCH)?;
        let full = events.len() == BATCH;
        let next = match events.last() {
            Some(e) if full => e.pos,
            _ => upto,
        };
        let mut rows = Vec::new();
        let mut woken = BTreeSet::new();
        for e in events {
            let Some(ev) = EventId::parse(&e.event_id)
                .ok()
                .map(|id| self.rooms.timeline_event(&id))
                .transpose()?
                .flatten()
            else {
                continue;
            };
            for user in self.audience(&ev)? {
                let actions = self.rules.actions(&user, &ev).await?;
                let (notify, highlight) = notify_and_highlight(&actions);
                if !notify {
                    continue;
                }
                rows.push((
                    user.to_string(),
                    e.pos,
                    NotificationRecord {
                        room_id: e.room_id.clone(),
                        event_id: ev.pdu.event_id.to_string(),
                        actions: serde_json::to_string(&actions)?,
                        highlight,
                        ts: now_ms(),
                    },
                ));
                woken.insert(user);
            }
        }
        let mut ops = Vec::new();
        if !rows.is_empty() {
            ops.push(WriteOp::Push(PushOp::PutNotifications(rows)));
        }
        ops.push(WriteOp::SetCounter(PUSH_CURSOR.into(), next));
        self.store.submit(ops).await?;
        let woken: Vec<_> = woken.into_iter().collect();
        self.pushers.wake(&woken);
        Ok(full)
    }

    /// The local users whose push rules see an event: the room's joined members, and an
    /// invite's target.
    fn audience(&self, ev: &TimelineEvent) -> Result<Vec<OwnedUserId>> {
        let head = self.rooms.head(&ev.pdu.room_id)?;
        let h = head.lock();
        let mut users: Vec<OwnedUserId> = h
            .members
            .iter()
            .filter(|(u, m)| *m == "join" && u.server_name() == self.server_name)
            .map(|(u, _)| u.clone())
            .collect();
        if ev.pdu.membership().as_deref() == Some("invite")
            && let Some(target) = ev.pdu.state_key.as_deref()
            && let Ok(target) = UserId::parse(target)
            && target.server_name() == self.server_name
            && !users.contains(&target)
        {
            users.push(target);
        }
        Ok(users)
    }

    /// `GET /notifications`: newest first, from before the position `from` (a previous answer's
    /// `next_token`), with the next token if there may be more.
    pub fn list(
        &self,
        user: &UserId,
        from: Option<StreamPos>,
        limit: usize,
        only_highlight: bool,
    ) -> Result<(Vec<Listed>, Option<StreamPos>)> {
        let mut out = Vec::new();
        let mut before = from.unwrap_or(u64::MAX);
        let mut next = None;
        'pages: loop {
            let page = self
                .store
                .notifications(user.as_str(), 0, before, true, limit.max(1))?;
            let exhausted = page.len() < limit.max(1);
            for (pos, n) in page {
                before = pos;
                if only_highlight && !n.highlight {
                    continue;
                }
                let Some(event) = EventId::parse(&n.event_id)
                    .ok()
                    .map(|id| self.rooms.timeline_event(&id))
                    .transpose()?
                    .flatten()
                else {
                    continue;
                };
                let (read, threads) = self.receipts.read_positions(&event.pdu.room_id, user)?;
                let thread = super::rules::thread_of(&event);
                let read = read >= pos || threads.get(&thread).is_some_and(|p| *p >= pos);
                out.push(Listed {
                    event,
                    actions: serde_json::from_str(&n.actions).unwrap_or_default(),
                    read,
                    ts: n.ts,
                });
                if out.len() >= limit {
                    next = Some(pos);
                    break 'pages;
                }
            }
            if exhausted {
                break;
            }
        }
        Ok((out, next))
    }
}
