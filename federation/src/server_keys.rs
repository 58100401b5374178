//! Other servers' signing keys: fetched from their `/_matrix/key/v2/server`, checked against
//! their own signature, and cached until `valid_until_ts`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::RwLock;
use ruma::serde::Base64;
use ruma::signatures::PublicKeyMap;
use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedServerName, ServerName};
use serde_json::Value;

use crate::client::Client;
use crate::error::FedError;
use hearth_core::keys::ServerKeys;
use hearth_core::util::now_ms;

type KeySet = BTreeMap<String, Base64>;

struct Cached {
    valid_until: u64,
    keys: KeySet,
    /// The document as the server signed it, for answering notary queries.
    document: Value,
}

/// How often a server's keys may be fetched again for a key id its cached document lacks. A
/// request may claim any origin and key id, so without a bound anyone could make this server
/// fetch a third server's keys on every request.
const REFETCH_EVERY_MS: u64 = 30_000;

/// After a failed fetch, a server's keys are not asked for again for this long, doubling with
/// each failure up to [`MAX_BACKOFF_MS`]: a request may name any origin, and each must not make
/// this server dial out again.
const FIRST_BACKOFF_MS: u64 = 60_000;
const MAX_BACKOFF_MS: u64 = 3_600_000;
/// Servers whose failures are remembered; the oldest are forgotten past this.
const MAX_FAILURES_KEPT: usize = 10_000;

/// A server's entry in `KeyCache::fetching`, removed when its fetch ends.
struct GateEntry<'a> {
    cache: &'a KeyCache,
    server: &'a ServerName,
}

impl Drop for GateEntry<'_> {
    fn drop(&mut self) {
        self.cache.fetching.lock().remove(self.server);
    }
}

/// A server whose key document could not be had: when it may be tried again, and the backoff
/// that led there.
struct Failed {
    retry_at: u64,
    backoff: u64,
    reason: String,
}

pub struct KeyCache {
    servers: RwLock<HashMap<OwnedServerName, Cached>>,
    /// When each server's keys were last fetched again for an unknown key id.
    refetched: parking_lot::Mutex<HashMap<OwnedServerName, u64>>,
    failed: parking_lot::Mutex<lru::LruCache<OwnedServerName, Failed>>,
    /// One fetch per server at a time: requests that arrive meanwhile wait for its result.
    fetching: parking_lot::Mutex<HashMap<OwnedServerName, Arc<tokio::sync::Mutex<()>>>>,
    /// What this server answers as a notary: for each server, per key id the document valid
    /// longest that held that key, expired ones too. A later fetch never loses a key the origin
    /// stopped listing (a spurious answer cannot make the notary forget it).
    notary: parking_lot::Mutex<lru::LruCache<OwnedServerName, BTreeMap<String, NotaryDoc>>>,
}

#[derive(Clone)]
struct NotaryDoc {
    valid_until: u64,
    document: Arc<Value>,
}

/// Servers whose documents the notary keeps; the least recently asked for go first.
const NOTARY_SERVERS_KEPT: usize = 10_000;
/// Key ids kept per server: a server could list any number.
const NOTARY_KEYS_PER_SERVER: usize = 32;

impl Default for KeyCache {
    fn default() -> Self {
        Self {
            servers: Default::default(),
            refetched: Default::default(),
            failed: parking_lot::Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(MAX_FAILURES_KEPT).expect("non-zero"),
            )),
            fetching: Default::default(),
            notary: parking_lot::Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(NOTARY_SERVERS_KEPT).expect("non-zero"),
            )),
        }
    }
}

impl KeyCache {
    /// The verify keys of `server`, fetched if not cached or expired.
    pub async fn keys(
        &self,
        client: &Client,
        ours: &ServerKeys,
        server: &ServerName,
    ) -> Result<KeySet, FedError> {
        if server == ours.server_name {
            // Our retired keys too: what we signed before a rotation still verifies.
            let mut set = BTreeMap::new();
            for (id, key) in std::iter::once((ours.key_id(), ours.public_key_base64())).chain(
                ours.old_keys
                    .iter()
                    .map(|k| (k.key_id.clone(), k.public_key.clone())),
            ) {
                let key = Base64::parse(key).map_err(|e| FedError::bad_json(e.to_string()))?;
                set.insert(id, key);
            }
            return Ok(set);
        }
        Ok(self.fetch(client, server).await?.1)
    }

    /// The cached (or freshly fetched) key document of another server, and its keys.
    async fn fetch(
        &self,
        client: &Client,
        server: &ServerName,
    ) -> Result<(Value, KeySet), FedError> {
        let cached = || {
            self.servers
                .read()
                .get(server)
                .filter(|c| c.valid_until > now_ms())
                .map(|c| (c.document.clone(), c.keys.clone()))
        };
        if let Some(hit) = cached() {
            return Ok(hit);
        }
        let gate = self
            .fetching
            .lock()
            .entry(server.to_owned())
            .or_default()
            .clone();
        let _one_fetch = gate.lock().await;
        // The gate goes when this fetch ends, however it ends (a caller that hangs up too).
        let _gate_entry = GateEntry {
            cache: self,
            server,
        };
        // Whoever held the gate before may have fetched it, or failed.
        if let Some(hit) = cached() {
            return Ok(hit);
        }
        if let Some(f) = self.failed.lock().get(server)
            && f.retry_at > now_ms()
        {
            return Err(FedError::unauthorized(format!(
                "{server}: its keys could not be fetched ({}); not retried for {} s",
                f.reason,
                (f.retry_at - now_ms()).div_ceil(1000)
            )));
        }
        let fetched = match client.get_unsigned(server, "/_matrix/key/v2/server").await {
            Ok(document) => check_key_document(server, &document, false).map(|v| (document, v)),
            Err(e) => Err(e),
        };
        let (document, (valid_until, keys)) = match fetched {
            Ok(f) => f,
            Err(e) => {
                let mut failed = self.failed.lock();
                let backoff = failed
                    .get(server)
                    .map_or(FIRST_BACKOFF_MS, |f| (f.backoff * 2).min(MAX_BACKOFF_MS));
                failed.put(
                    server.to_owned(),
                    Failed {
                        retry_at: now_ms() + backoff,
                        backoff,
                        reason: e.message.clone(),
                    },
                );
                drop(failed);
                tracing::info!(%server, error = %e.message, backoff_ms = backoff, "could not fetch a server's keys");
                return Err(FedError::unauthorized(format!(
                    "{server}: its keys could not be fetched: {}",
                    e.message
                )));
            }
        };
        self.failed.lock().pop(server);
        self.keep_notarised(server, valid_until, document.clone());
        let cached = Cached {
            valid_until,
            keys: keys.clone(),
            document: document.clone(),
        };
        self.servers.write().insert(server.to_owned(), cached);
        Ok((document, keys))
    }

    /// Another server's key documents countersigned by this server, for
    /// `/_matrix/key/v2/query`: those holding `key_ids` (all it knows when empty), fetched from
    /// the origin when what it keeps is not valid until `min_valid_until`; when the origin
    /// cannot be had, the ones it kept, expired or not, as Synapse answers.
    pub async fn notarised(
        &self,
        client: &Client,
        ours: &ServerKeys,
        server: &ServerName,
        key_ids: &[String],
        min_valid_until: u64,
    ) -> Result<Vec<Value>, FedError> {
        if server == ours.server_name {
            return Ok(vec![countersigned(ours, &own_key_document(ours))?]);
        }
        if !self.notary_has(server, key_ids, min_valid_until) {
            match client.get_unsigned(server, "/_matrix/key/v2/server").await {
                Ok(document) => match check_key_document(server, &document, true) {
                    Ok((valid_until, _)) => self.keep_notarised(server, valid_until, document),
                    Err(e) => tracing::debug!(%server, error = %e.message, "notary: bad document"),
                },
                Err(e) => tracing::debug!(%server, error = %e.message, "notary: fetch failed"),
            }
        }
        let kept = self.notary.lock().get(server).cloned().unwrap_or_default();
        let mut docs: Vec<Arc<Value>> = Vec::new();
        for (id, doc) in &kept {
            if (key_ids.is_empty() || key_ids.contains(id))
                && !docs.iter().any(|d| Arc::ptr_eq(d, &doc.document))
            {
                docs.push(doc.document.clone());
            }
        }
        docs.iter().map(|d| countersigned(ours, d)).collect()
    }

    /// Whether the notary keeps, for each of `key_ids` (for some key when empty), a document
    /// valid until `min_valid_until`.
    fn notary_has(&self, server: &ServerName, key_ids: &[String], min_valid_until: u64) -> bool {
        let mut notary = self.notary.lock();
        let Some(kept) = notary.get(server) else {
            return false;
        };
        let fresh = |d: &NotaryDoc| d.valid_until >= min_valid_until;
        if key_ids.is_empty() {
            kept.values().any(fresh)
        } else {
            key_ids.iter().all(|id| kept.get(id).is_some_and(fresh))
        }
    }

    fn keep_notarised(&self, server: &ServerName, valid_until: u64, document: Value) {
        let ids: Vec<String> = document["verify_keys"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        let doc = NotaryDoc {
            valid_until,
            document: Arc::new(document),
        };
        let mut notary = self.notary.lock();
        let kept = notary.get_or_insert_mut(server.to_owned(), BTreeMap::new);
        for id in ids {
            if kept.len() >= NOTARY_KEYS_PER_SERVER && !kept.contains_key(&id) {
                break;
            }
            let e = kept.entry(id).or_insert_with(|| doc.clone());
            if e.valid_until < doc.valid_until {
                *e = doc.clone();
            }
        }
    }

    pub async fn key_map(
        &self,
        client: &Client,
        ours: &ServerKeys,
        server: &ServerName,
    ) -> Result<PublicKeyMap, FedError> {
        let keys = self.keys(client, ours, server).await?;
        Ok(PublicKeyMap::from([(server.to_string(), keys)]))
    }

    /// The key map of a server that must hold `key_id`: a cached document without it (the
    /// server rotated its key since) is fetched again.
    pub async fn key_map_with(
        &self,
        client: &Client,
        ours: &ServerKeys,
        server: &ServerName,
        key_id: &str,
    ) -> Result<PublicKeyMap, FedError> {
        let map = self.key_map(client, ours, server).await?;
        let known = map
            .get(server.as_str())
            .is_some_and(|set| set.contains_key(key_id));
        if known || server == ours.server_name {
            return Ok(map);
        }
        {
            let now = now_ms();
            let mut refetched = self.refetched.lock();
            if refetched
                .get(server)
                .is_some_and(|at| now.saturating_sub(*at) < REFETCH_EVERY_MS)
            {
                return Ok(map);
            }
            refetched.insert(server.to_owned(), now);
        }
        self.servers.write().remove(server);
        self.key_map(client, ours, server).await
    }
}

/// How long peers may cache our key document.
const KEY_VALIDITY_MS: u64 = 7 * 24 * 3600 * 1000;

/// This server's key document, signed.
pub fn own_key_document(keys: &ServerKeys) -> Value {
    let body = serde_json::json!({
        "server_name": keys.server_name,
        "verify_keys": { keys.key_id(): { "key": keys.public_key_base64() } },
        "old_verify_keys": keys
            .old_keys
            .iter()
            .map(|k| (k.key_id.clone(), serde_json::json!({ "key": k.public_key, "expired_ts": k.expired_ts })))
            .collect::<serde_json::Map<_, _>>(),
        "valid_until_ts": now_ms() + KEY_VALIDITY_MS,
    });
    let Ok(CanonicalJsonValue::Object(mut obj)) = CanonicalJsonValue::try_from(body.clone()) else {
        return body;
    };
    match ruma::signatures::sign_json(keys.server_name.as_str(), &keys.key_pair, &mut obj) {
        Ok(()) => serde_json::to_value(&obj).unwrap_or(body),
        Err(e) => {
            tracing::error!(error = %e, "could not sign our key document");
            body
        }
    }
}

/// Checks a server's key document: it names the server, is signed by one of its own keys, and
/// has not expired. Returns the validity and the keys (current and old).
/// A key document's validity and keys, after checking it names `server` and carries its
/// signature; an expired one only when `allow_expired` (the notary keeps those).
fn check_key_document(
    server: &ServerName,
    doc: &Value,
    allow_expired: bool,
) -> Result<(u64, KeySet), FedError> {
    let bad = |m: &str| FedError::peer(format!("{server}: key document {m}"));
    if doc["server_name"].as_str() != Some(server.as_str()) {
        return Err(bad("names another server"));
    }
    let valid_until = doc["valid_until_ts"]
        .as_u64()
        .ok_or_else(|| bad("has no valid_until_ts"))?;
    if valid_until <= now_ms() && !allow_expired {
        return Err(bad("has expired"));
    }
    let mut keys = KeySet::new();
    for field in ["verify_keys", "old_verify_keys"] {
        if let Some(map) = doc[field].as_object() {
            for (id, k) in map {
                if let Some(b64) = k["key"].as_str()
                    && let Ok(key) = Base64::parse(b64)
                {
                    keys.insert(id.clone(), key);
                }
            }
        }
    }
    let current: KeySet = doc["verify_keys"]
        .as_object()
        .map(|m| {
            m.keys()
                .filter_map(|id| keys.get(id).map(|k| (id.clone(), k.clone())))
                .collect()
        })
        .unwrap_or_default();
    let Ok(CanonicalJsonValue::Object(obj)) = CanonicalJsonValue::try_from(doc.clone()) else {
        return Err(bad("is not canonical JSON"));
    };
    let obj: CanonicalJsonObject = obj;
    let map = PublicKeyMap::from([(server.to_string(), current)]);
    ruma::signatures::verify_json(&map, &obj).map_err(|e| bad(&format!("signature: {e}")))?;
    Ok((valid_until, keys))
}

/// A key document with this server's signature added.
fn countersigned(ours: &ServerKeys, document: &Value) -> Result<Value, FedError> {
    let Ok(CanonicalJsonValue::Object(mut obj)) = CanonicalJsonValue::try_from(document.clone())
    else {
        return Err(FedError::peer("key document is not canonical JSON"));
    };
    ruma::signatures::sign_json(ours.server_name.as_str(), &ours.key_pair, &mut obj)
        .map_err(|e| FedError::bad_json(e.to_string()))?;
    serde_json::to_value(&obj).map_err(|e| FedError::bad_json(e.to_string()))
}
