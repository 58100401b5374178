//! Per-user account data, global and per room (room tags are the `m.tag` entry). Each write gets
//! a stream position, so `/sync` hands out exactly the entries changed since a token.

use std::sync::Arc;

use hearth_storage::{AccountDataEntry, ChangeKey, Store, StreamPos, WriteOp};
use ruma::{RoomId, UserId};
use serde_json::{Value, json};

use crate::notifier::Notifier;
use crate::{Error, Result};

pub struct AccountData {
    store: Arc<dyn Store>,
    notifier: Arc<Notifier>,
    /// Bumped whenever anyone's push rules change, so parsed rule sets can be cached.
    push_rules_version: std::sync::atomic::AtomicU64,
    /// Serialises read-modify-write of one entry (tags).
    tags: tokio::sync::Mutex<()>,
    /// Each user's ignore list as last read: push evaluation asks it for every member of every
    /// event's room, and every sync asks it too. Dropped on a write of the list; `ignored_gen`
    /// keeps a read that raced a write from caching the old list.
    ignored: parking_lot::Mutex<lru::LruCache<ruma::OwnedUserId, Arc<Vec<String>>>>,
    ignored_gen: std::sync::atomic::AtomicU64,
}

/// Users whose ignore lists are kept in memory.
const IGNORED_CACHED: usize = 10_000;

fn room_key(room: Option<&RoomId>) -> &str {
    room.map_or("", |r| r.as_str())
}

impl AccountData {
    pub fn new(store: Arc<dyn Store>, notifier: Arc<Notifier>) -> Self {
        Self {
            store,
            notifier,
            push_rules_version: Default::default(),
            tags: tokio::sync::Mutex::new(()),
            ignored: parking_lot::Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(IGNORED_CACHED).expect("non-zero"),
            )),
            ignored_gen: Default::default(),
        }
    }

    pub fn get(&self, user: &UserId, room: Option<&RoomId>, kind: &str) -> Result<Option<Value>> {
        match self
            .store
            .account_data(user.as_str(), room_key(room), kind)?
        {
            Some(s) => Ok(Some(serde_json::from_str(&s)?)),
            None => Ok(None),
        }
    }

    pub async fn set(
        &self,
        user: &UserId,
        room: Option<&RoomId>,
        kind: &str,
        content: Value,
    ) -> Result<()> {
        if !content.is_object() {
            return Err(Error::BadJson(
                "account data content must be a JSON object".into(),
            ));
        }
        let op = WriteOp::PutAccountData {
            user_id: user.to_string(),
            room_id: room_key(room).to_owned(),
            kind: kind.to_owned(),
            content: content.to_string(),
        };
        self.store.submit(vec![op]).await?;
        if kind == "m.ignored_user_list" {
            self.ignored_gen
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.ignored.lock().pop(user);
        }
        if kind == "m.push_rules" {
            self.push_rules_version
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        self.notifier.notify([user]);
        Ok(())
    }

    /// The users `user` ignores (`m.ignored_user_list`): their messages and invites do not
    /// reach them.
    pub fn ignored_users(&self, user: &UserId) -> Result<Vec<String>> {
        if let Some(list) = self.ignored.lock().get(user) {
            return Ok(list.to_vec());
        }
        let generation = self.ignored_gen.load(std::sync::atomic::Ordering::SeqCst);
        let list: Vec<String> = self
            .get(user, None, "m.ignored_user_list")?
            .and_then(|v| {
                v["ignored_users"]
                    .as_object()
                    .map(|o| o.keys().cloned().collect())
            })
            .unwrap_or_default();
        let mut cache = self.ignored.lock();
        if self.ignored_gen.load(std::sync::atomic::Ordering::SeqCst) == generation {
            cache.put(user.to_owned(), Arc::new(list.clone()));
        }
        Ok(list)
    }

    pub fn push_rules_version(&self) -> u64 {
        self.push_rules_version
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Entries changed in `(since, upto]`, or all of them up to `upto` for a first sync.
    pub fn changes(
        &self,
        user: &UserId,
        since: Option<StreamPos>,
        upto: StreamPos,
    ) -> Result<Vec<AccountDataEntry>> {
        Ok(match since {
            Some(s)
                if !self
                    .store
                    .changed_after(&ChangeKey::AccountData(user.to_string()), s) =>
            {
                Vec::new()
            }
            Some(s) => self.store.account_data_changes(user.as_str(), s, upto)?,
            None => {
                let mut all = self.store.all_account_data(user.as_str())?;
                all.retain(|e| e.pos <= upto);
                // Clients read their push rules from here (as Synapse serves them): a user who
                // never changed a rule has the server defaults.
                if !all
                    .iter()
                    .any(|e| e.room_id.is_empty() && e.kind == "m.push_rules")
                {
                    let rules = crate::push::ruleset::RuleSet::server_default(user);
                    all.push(AccountDataEntry {
                        room_id: String::new(),
                        kind: "m.push_rules".into(),
                        content: json!({ "global": rules }).to_string(),
                        pos: 0,
                    });
                }
                all
            }
        })
    }

    /// The room's tags: the `tags` map of its `m.tag` account data.
    pub fn tags(&self, user: &UserId, room: &RoomId) -> Result<Value> {
        Ok(self
            .get(user, Some(room), "m.tag")?
            .map(|c| c["tags"].clone())
            .filter(Value::is_object)
            .unwrap_or(json!({})))
    }

    pub async fn set_tag(
        &self,
        user: &UserId,
        room: &RoomId,
        tag: &str,
        info: Option<Value>,
    ) -> Result<()> {
        let _guard = self.tags.lock().await;
        let mut tags = self.tags(user, room)?;
        match info {
            Some(i) => tags[tag] = i,
            None => {
                tags.as_object_mut().map(|t| t.remove(tag));
            }
        }
        self.set(user, Some(room), "m.tag", json!({ "tags": tags }))
            .await
    }
}

impl AccountData {
    /// A room `user` is in was upgraded: its tags go to the new room, and a direct chat stays
    /// one (`m.direct` lists the new room beside the old), as Synapse carries them over.
    pub async fn room_upgraded_for(&self, user: &UserId, old: &RoomId, new: &RoomId) -> Result<()> {
        let tags = self.get(user, Some(old), "m.tag")?;
        if let Some(tags) = tags
            && self.get(user, Some(new), "m.tag")?.is_none()
        {
            self.set(user, Some(new), "m.tag", tags).await?;
        }
        if let Some(mut direct) = self.get(user, None, "m.direct")?
            && let Some(by_user) = direct.as_object_mut()
        {
            let mut changed = false;
            for rooms in by_user.values_mut() {
                if let Some(list) = rooms.as_array_mut()
                    && list.iter().any(|r| r == old.as_str())
                    && !list.iter().any(|r| r == new.as_str())
                {
                    list.push(json!(new));
                    changed = true;
                }
            }
            if changed {
                self.set(user, None, "m.direct", direct).await?;
            }
        }
        Ok(())
    }
}

/// An account data entry as a sync event: `{"type": ..., "content": ...}`.
pub fn to_event(e: &AccountDataEntry) -> Box<serde_json::value::RawValue> {
    let content: Box<serde_json::value::RawValue> =
        serde_json::value::RawValue::from_string(e.content.clone())
            .unwrap_or_else(|_| serde_json::value::to_raw_value(&json!({})).expect("empty object"));
    serde_json::value::to_raw_value(&json!({ "type": e.kind, "content": content }))
        .expect("account data serialises")
}
