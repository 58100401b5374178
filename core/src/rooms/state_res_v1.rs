//! State resolution v1 (room version 1; spec: rooms/v1, "State resolution"), which ruma does not
//! implement. As Synapse applies it (`synapse/state/v1.py`), which is what version 1 rooms on
//! the network converged on:
//!
//! - a key is conflicted when two of the states hold different events for it (a key missing
//!   from some states is not);
//! - the auth events for the checks are the unconflicted state's;
//! - power levels are resolved first, then join rules, then memberships, each with the result
//!   of the earlier steps among the auth events: the conflicting events, oldest first, each
//!   replacing the last one that passed its auth check on top of it, until one fails;
//! - every other key goes to the newest of its events that passes the auth check (the oldest
//!   when none does).
//!
//! Events are ordered by depth, then by the SHA-1 of their event id.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ruma::OwnedEventId;
use ruma::room_version_rules::RoomVersionRules;
use ruma::state_res::{auth_types_for_event, check_state_dependent_auth_rules};
use sha1::{Digest, Sha1};

use super::state::{SharedState, StateMap};
use super::{PduRef, Rooms};
use crate::Result;

type Key = (String, String);

impl Rooms {
    pub(super) fn resolve_v1(
        &self,
        rules: &RoomVersionRules,
        states: &[SharedState],
    ) -> Result<StateMap> {
        let Some((first, rest)) = states.split_first() else {
            return Ok(StateMap::new());
        };
        let mut unconflicted: StateMap = (**first).clone();
        let mut conflicted_ids: BTreeMap<Key, BTreeSet<OwnedEventId>> = BTreeMap::new();
        for state in rest {
            for (key, id) in state.iter() {
                if let Some(set) = conflicted_ids.get_mut(key) {
                    set.insert(id.clone());
                    continue;
                }
                match unconflicted.get(key) {
                    None => {
                        unconflicted.insert(key.clone(), id.clone());
                    }
                    Some(other) if other != id => {
                        let other = unconflicted.remove(key).expect("present");
                        conflicted_ids.insert(key.clone(), BTreeSet::from([other, id.clone()]));
                    }
                    Some(_) => {}
                }
            }
        }
        // Only the events this server has take part; a key left with one is unconflicted.
        let mut conflicted: BTreeMap<Key, Vec<PduRef>> = BTreeMap::new();
        for (key, ids) in conflicted_ids {
            let mut events = Vec::new();
            for id in ids {
                if let Some(p) = self.pdu(&id)? {
                    events.push(p);
                }
            }
            match events.len() {
                0 => {}
                1 => {
                    unconflicted.insert(key, events[0].event_id.clone());
                }
                _ => {
                    conflicted.insert(key, events);
                }
            }
        }
        let mut auth: HashMap<Key, PduRef> = HashMap::new();
        for ev in conflicted.values().flatten() {
            for key in auth_keys(rules, ev) {
                if auth.contains_key(&key) {
                    continue;
                }
                if let Some(id) = unconflicted.get(&key)
                    && let Some(p) = self.pdu(id)?
                {
                    auth.insert(key, p);
                }
            }
        }

        let mut resolved: HashMap<Key, PduRef> = HashMap::new();
        let power = ("m.room.power_levels".to_owned(), String::new());
        if let Some(events) = conflicted.get(&power) {
            resolved.insert(power.clone(), resolve_auth_events(rules, events, &auth));
        }
        auth.extend(resolved.iter().map(|(k, v)| (k.clone(), v.clone())));
        for kind in ["m.room.join_rules", "m.room.member"] {
            for (key, events) in conflicted.iter().filter(|(k, _)| k.0 == kind) {
                resolved.insert(key.clone(), resolve_auth_events(rules, events, &auth));
            }
            auth.extend(resolved.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        for (key, events) in &conflicted {
            if !resolved.contains_key(key) {
                resolved.insert(key.clone(), resolve_normal_events(rules, events, &auth));
            }
        }
        for (key, ev) in resolved {
            unconflicted.insert(key, ev.event_id.clone());
        }
        Ok(unconflicted)
    }
}

/// The state keys the auth rules look at for `ev`.
fn auth_keys(rules: &RoomVersionRules, ev: &PduRef) -> Vec<Key> {
    auth_types_for_event(
        &ev.kind,
        &ev.sender,
        ev.state_key.as_deref(),
        &ev.content,
        &rules.authorization,
    )
    .unwrap_or_default()
    .into_iter()
    .map(|(t, k)| (t.to_string(), k))
    .collect()
}

/// Whether `ev` passes the state-dependent auth rules against `auth` as the state.
fn passes(rules: &RoomVersionRules, ev: &PduRef, auth: &HashMap<Key, PduRef>) -> bool {
    check_state_dependent_auth_rules(&rules.authorization, &**ev, |t, k| {
        auth.get(&(t.to_string(), k.to_owned())).cloned()
    })
    .is_ok()
}

/// Newest first: by depth, descending, then by the SHA-1 of the event id, ascending.
fn ordered(events: &[PduRef]) -> Vec<PduRef> {
    let mut keyed: Vec<(std::cmp::Reverse<u64>, String, PduRef)> = events
        .iter()
        .map(|e| {
            let sha = Sha1::digest(e.event_id.as_str().as_bytes());
            let hex: String = sha.iter().map(|b| format!("{b:02x}")).collect();
            (std::cmp::Reverse(e.depth), hex, e.clone())
        })
        .collect();
    keyed.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    keyed.into_iter().map(|(_, _, e)| e).collect()
}

fn resolve_auth_events(
    rules: &RoomVersionRules,
    events: &[PduRef],
    auth: &HashMap<Key, PduRef>,
) -> PduRef {
    let mut oldest_first = ordered(events);
    oldest_first.reverse();
    let mut auth: HashMap<Key, PduRef> = events
        .iter()
        .flat_map(|e| auth_keys(rules, e))
        .filter_map(|k| auth.get(&k).map(|e| (k, e.clone())))
        .collect();
    let mut prev = oldest_first[0].clone();
    for ev in &oldest_first[1..] {
        let key = (
            prev.kind.to_string(),
            prev.state_key.clone().unwrap_or_default(),
        );
        auth.insert(key, prev.clone());
        if !passes(rules, ev, &auth) {
            return prev;
        }
        prev = ev.clone();
    }
    prev
}

fn resolve_normal_events(
    rules: &RoomVersionRules,
    events: &[PduRef],
    auth: &HashMap<Key, PduRef>,
) -> PduRef {
    let events = ordered(events);
    events
        .iter()
        .find(|e| passes(rules, e, auth))
        .unwrap_or_else(|| events.last().expect("conflicted keys hold two events"))
        .clone()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::rooms::Pdu;

    fn event(id: &str, depth: u64) -> PduRef {
        let json = serde_json::json!({
            "type": "m.room.name", "state_key": "", "content": { "name": id },
            "room_id": "!r:x", "sender": "@a:x", "origin_server_ts": 1, "depth": depth,
            "prev_events": [], "auth_events": [],
        });
        let id = OwnedEventId::try_from(id).unwrap();
        Arc::new(Pdu::parse(id, &serde_json::to_vec(&json).unwrap(), None).unwrap())
    }

    #[test]
    fn newest_first_then_by_the_sha1_of_the_event_id() {
        let hex = |s: &str| {
            Sha1::digest(s.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        let (a, b) = (hex("$a:x"), hex("$b:x"));
        let order = ordered(&[event("$a:x", 3), event("$b:x", 3), event("$c:x", 4)]);
        let ids: Vec<&str> = order.iter().map(|e| e.event_id.as_str()).collect();
        let tie = if a < b {
            ["$a:x", "$b:x"]
        } else {
            ["$b:x", "$a:x"]
        };
        assert_eq!(ids, vec!["$c:x", tie[0], tie[1]]);
    }
}
