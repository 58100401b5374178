//! Each user's push rules and their evaluation (spec: "Push Rules").
//!
//! A user's rule set is their `m.push_rules` account data (its `global` scope), as Synapse shows
//! it to clients; until they change a rule it is the spec's server defaults. The rule set is
//! Hearth's own ([`RuleSet`]: rule ids are any string); evaluation is ruma's, on the rule set as
//! [`RuleSet::evaluable`] gives it: the same rules decide the unread counts of `/sync`, the
//! notifications of `GET /notifications` and what reaches push gateways.
//!
//! An event is flattened once for every member who evaluates it, and each member's room context
//! (member count, display name, power levels) is cached until the room's state changes: a
//! message in a room of hundreds costs one flattening and a walk of the rules per member.

use std::num::NonZeroUsize;
use std::sync::Arc;

use lru::LruCache;
use parking_lot::Mutex;
use ruma::events::room::power_levels::{
    RoomPowerLevels, RoomPowerLevelsEventContent, RoomPowerLevelsSource,
};
use ruma::push::{
    Action, FlattenedJson, PushConditionPowerLevelsCtx, PushConditionRoomCtx, Ruleset,
};
use ruma::serde::Raw;
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UInt, UserId};
use serde_json::{Value, json};

use super::ruleset::RuleSet;
use crate::Result;
use crate::account_data::AccountData;
use crate::rooms::Rooms;
use crate::rooms::timeline::TimelineEvent;

pub const ACCOUNT_DATA_TYPE: &str = "m.push_rules";

type VersionedContext = (u64, Arc<PushConditionRoomCtx>);
type CachedRules = (u64, Arc<RuleSet>, Arc<Ruleset>);

pub struct PushRules {
    account_data: Arc<AccountData>,
    rooms: Arc<Rooms>,
    /// Parsed rule sets and what ruma evaluates of them, with the push rules version they were
    /// read at.
    rulesets: Mutex<LruCache<OwnedUserId, CachedRules>>,
    /// Events flattened for the push rule conditions: the same for every member.
    flattened: Mutex<LruCache<OwnedEventId, Arc<FlattenedJson>>>,
    /// Push rule contexts with the state group they were made at.
    contexts: Mutex<LruCache<(OwnedRoomId, OwnedUserId), VersionedContext>>,
    /// Serialises read-modify-writes of rule sets (rare enough for one lock for everyone).
    writes: tokio::sync::Mutex<()>,
}

fn lru<K: std::hash::Hash + Eq, V>(n: usize) -> Mutex<LruCache<K, V>> {
    Mutex::new(LruCache::new(NonZeroUsize::new(n).expect("non-zero")))
}

impl PushRules {
    pub fn new(account_data: Arc<AccountData>, rooms: Arc<Rooms>) -> Self {
        Self {
            account_data,
            rooms,
            rulesets: lru(10_000),
            flattened: lru(10_000),
            contexts: lru(100_000),
            writes: tokio::sync::Mutex::new(()),
        }
    }

    /// The user's rule set: what they stored, or the server defaults.
    pub fn ruleset(&self, user: &UserId) -> Arc<RuleSet> {
        self.cached(user).1
    }

    /// The rule set and what ruma evaluates of it, read once per change.
    fn cached(&self, user: &UserId) -> CachedRules {
        let version = self.account_data.push_rules_version();
        if let Some(cached) = self.rulesets.lock().get(user)
            && cached.0 == version
        {
            return cached.clone();
        }
        let stored = self
            .account_data
            .get(user, None, ACCOUNT_DATA_TYPE)
            .ok()
            .flatten()
            .and_then(|c| serde_json::from_value(c["global"].clone()).ok());
        let ruleset = Arc::new(stored.unwrap_or_else(|| RuleSet::server_default(user)));
        let cached = (version, ruleset.clone(), Arc::new(ruleset.evaluable()));
        self.rulesets.lock().put(user.to_owned(), cached.clone());
        cached
    }

    /// Changes the user's rule set and stores it; `change` says what went wrong, if anything.
    pub async fn update(
        &self,
        user: &UserId,
        change: impl FnOnce(&mut RuleSet) -> Result<()>,
    ) -> Result<()> {
        let _guard = self.writes.lock().await;
        let mut ruleset = (*self.ruleset(user)).clone();
        change(&mut ruleset)?;
        self.account_data
            .set(user, None, ACCOUNT_DATA_TYPE, json!({ "global": ruleset }))
            .await
    }

    /// After `old` was upgraded to `new`: every local member of `old` gets copies of their rules
    /// about it for `new` ([`RuleSet::copy_room_rules`]; Synapse's
    /// `transfer_room_state_on_room_upgrade`). The upgrade itself is done: a user whose rules
    /// cannot be written is passed over, as in Synapse, and only logged.
    pub async fn room_upgraded(&self, old: &RoomId, new: &RoomId) {
        let members = match self.rooms.local_members(old) {
            Ok(members) => members,
            Err(e) => {
                tracing::warn!(%old, error = %e, "push rules not copied to the upgraded room");
                return;
            }
        };
        for user in members {
            if !self.ruleset(&user).has_room_rules(old) {
                continue;
            }
            let copied = self
                .update(&user, |r| {
                    r.copy_room_rules(old, new);
                    Ok(())
                })
                .await;
            if let Err(e) = copied {
                tracing::warn!(%user, %old, %new, error = %e, "push rules not copied to the upgraded room");
            }
        }
    }

    /// The actions of the first rule that applies to `ev` for `user` (`Ruleset::get_actions`, on
    /// an event flattened once for all members). Nothing for the user's own events.
    pub async fn actions(&self, user: &UserId, ev: &TimelineEvent) -> Result<Vec<Action>> {
        if ev.pdu.sender == user {
            return Ok(Vec::new());
        }
        // What an ignored user sends neither notifies nor counts, as in Synapse.
        if self
            .account_data
            .ignored_users(user)?
            .iter()
            .any(|u| u == ev.pdu.sender.as_str())
        {
            return Ok(Vec::new());
        }
        let (_, _, ruleset) = self.cached(user);
        let ctx = self.context(&ev.pdu.room_id, user)?;
        let flat = self.flattened(ev);
        for rule in &*ruleset {
            if rule.applies(&flat, &ctx).await {
                return Ok(rule.actions().to_vec());
            }
        }
        Ok(Vec::new())
    }

    fn flattened(&self, ev: &TimelineEvent) -> Arc<FlattenedJson> {
        if let Some(f) = self.flattened.lock().get(&ev.pdu.event_id) {
            return f.clone();
        }
        let raw: Raw<ruma::events::AnySyncTimelineEvent> =
            Raw::from_json(self.rooms.format(ev, None, false));
        let flat = Arc::new(FlattenedJson::from_raw(&raw));
        self.flattened
            .lock()
            .put(ev.pdu.event_id.clone(), flat.clone());
        flat
    }

    /// The room context the push rules see, cached per (room, user) until the room's state
    /// changes (member count, display names and power levels are state).
    fn context(&self, room_id: &RoomId, user: &UserId) -> Result<Arc<PushConditionRoomCtx>> {
        let head = self.rooms.head(room_id)?;
        let group = head.lock().state_group;
        let key = (room_id.to_owned(), user.to_owned());
        if let Some((g, ctx)) = self.contexts.lock().get(&key)
            && *g == group
        {
            return Ok(ctx.clone());
        }
        let (joined, state, rules) = {
            let h = head.lock();
            (
                h.joined_count(),
                h.state.clone(),
                h.rules.authorization.clone(),
            )
        };
        let content = |kind: &str| -> Result<Option<Value>> {
            match state.get(&(kind.into(), String::new())) {
                Some(id) => Ok(self.rooms.pdu(id)?.map(|p| p.content_value())),
                None => Ok(None),
            }
        };
        let display_name = self
            .rooms
            .state_event(room_id, "m.room.member", user.as_str())?
            .and_then(|p| p.content_value()["displayname"].as_str().map(str::to_owned))
            .unwrap_or_else(|| user.localpart().to_owned());
        let creators = self
            .rooms
            .state_event(room_id, "m.room.create", "")?
            .map(|create| {
                let mut c = vec![create.sender.clone()];
                if let Some(extra) = create.content_value()["additional_creators"].as_array() {
                    c.extend(extra.iter().filter_map(|u| UserId::parse(u.as_str()?).ok()));
                }
                c
            })
            .unwrap_or_default();
        let source = match content("m.room.power_levels")? {
            Some(pl) => match serde_json::from_value::<RoomPowerLevelsEventContent>(pl) {
                Ok(c) => RoomPowerLevelsSource::Original(c),
                Err(_) => RoomPowerLevelsSource::None,
            },
            None => RoomPowerLevelsSource::None,
        };
        let power_levels: PushConditionPowerLevelsCtx =
            RoomPowerLevels::new(source, &rules, creators).into();
        let ctx = Arc::new(
            PushConditionRoomCtx::new(
                room_id.to_owned(),
                UInt::new(joined as u64).unwrap_or_default(),
                user.to_owned(),
                display_name,
            )
            .with_power_levels(power_levels),
        );
        self.contexts.lock().put(key, (group, ctx.clone()));
        Ok(ctx)
    }
}

/// Whether the actions notify, and whether they highlight.
pub fn notify_and_highlight(actions: &[Action]) -> (bool, bool) {
    (
        actions.iter().any(Action::should_notify),
        actions.iter().any(Action::is_highlight),
    )
}

/// The tweaks of a rule's actions as the Push Gateway API's `tweaks` object.
pub fn tweaks(actions: &[Action]) -> Value {
    let mut out = serde_json::Map::new();
    for a in actions {
        if let Action::SetTweak(t) = a
            && let Ok(Value::Object(o)) = serde_json::to_value(t)
            && let (Some(Value::String(name)), value) = (o.get("set_tweak"), o.get("value"))
        {
            // `highlight` without a value means true (spec: "Tweaks").
            let v = value.cloned().unwrap_or(Value::Bool(true));
            out.insert(name.clone(), v);
        }
    }
    Value::Object(out)
}

/// Thread of an event for counting: `"main"` or the thread root's id.
pub fn thread_of(ev: &TimelineEvent) -> String {
    ev.pdu
        .content_value()
        .pointer("/m.relates_to")
        .filter(|r| r["rel_type"] == "m.thread")
        .and_then(|r| r["event_id"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "main".to_owned())
}
