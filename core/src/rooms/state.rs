//! Room state snapshots ("state groups").
//!
//! Every event records the state group before and after it. A state event opens a new group
//! that stores only what changed since the previous group; every [`SNAPSHOT_EVERY`] deltas a
//! group stores the whole map, so resolving a group reads at most that many records.

use std::collections::BTreeMap;
use std::sync::Arc;

use hearth_storage::{StateGroupRecord, Store};
use ruma::OwnedEventId;

use crate::{Error, Result};

/// `(event type, state key) → event id`.
pub type StateMap = BTreeMap<(String, String), OwnedEventId>;

pub const SNAPSHOT_EVERY: u32 = 64;

/// Builds the record for a group that follows `prev` with the given changes.
pub fn next_group(
    room_id: &str,
    prev: Option<(u64, &StateGroupRecord)>,
    full_after: &StateMap,
    changes: &[((String, String), OwnedEventId)],
) -> StateGroupRecord {
    match prev {
        Some((prev_id, prev_rec)) if prev_rec.chain_len < SNAPSHOT_EVERY => StateGroupRecord {
            room_id: room_id.to_owned(),
            prev: Some(prev_id),
            chain_len: prev_rec.chain_len + 1,
            delta: changes
                .iter()
                .map(|((t, k), e)| (t.clone(), k.clone(), e.to_string()))
                .collect(),
        },
        _ => StateGroupRecord {
            room_id: room_id.to_owned(),
            prev: None,
            chain_len: 0,
            delta: full_after
                .iter()
                .map(|((t, k), e)| (t.clone(), k.clone(), e.to_string()))
                .collect(),
        },
    }
}

/// Resolves a group into its full map, reading the chain of deltas back to a snapshot.
pub fn resolve(
    store: &dyn Store,
    pending: &dyn Fn(u64) -> Option<StateGroupRecord>,
    id: u64,
) -> Result<StateMap> {
    let mut chain = Vec::new();
    let mut next = Some(id);
    while let Some(g) = next {
        let rec = match pending(g) {
            Some(r) => r,
            None => store
                .state_group(g)?
                .ok_or_else(|| Error::Internal(format!("missing state group {g}")))?,
        };
        next = rec.prev;
        chain.push(rec);
    }
    let mut map = StateMap::new();
    for rec in chain.into_iter().rev() {
        for (t, k, e) in rec.delta {
            map.insert((t, k), OwnedEventId::try_from(e).map_err(Error::internal)?);
        }
    }
    Ok(map)
}

pub type SharedState = Arc<StateMap>;
