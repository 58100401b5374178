//! Other servers' signing keys: fetched from their `/_matrix/key/v2/server`, checked against
//! their own signature, and cached until `valid_until_ts`.

use std::collections::{BTreeMap, HashMap};

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

#[derive(Default)]
pub struct KeyCache {
    servers: RwLock<HashMap<OwnedServerName, (u64, KeySet)>>,
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
            let key = Base64::parse(ours.public_key_base64())
                .map_err(|e| FedError::bad_json(e.to_string()))?;
            return Ok(BTreeMap::from([(ours.key_id(), key)]));
        }
        if let Some((valid_until, keys)) = self.servers.read().get(server)
            && *valid_until > now_ms()
        {
            return Ok(keys.clone());
        }
        let doc = client
            .get_unsigned(server, "/_matrix/key/v2/server")
            .await?;
        let (valid_until, keys) = verify_key_document(server, &doc)?;
        self.servers
            .write()
            .insert(server.to_owned(), (valid_until, keys.clone()));
        Ok(keys)
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
}

/// Checks a server's key document: it names the server, is signed by one of its own keys, and
/// has not expired. Returns the validity and the keys (current and old).
fn verify_key_document(server: &ServerName, doc: &Value) -> Result<(u64, KeySet), FedError> {
    let bad = |m: &str| FedError::peer(format!("{server}: key document {m}"));
    if doc["server_name"].as_str() != Some(server.as_str()) {
        return Err(bad("names another server"));
    }
    let valid_until = doc["valid_until_ts"]
        .as_u64()
        .ok_or_else(|| bad("has no valid_until_ts"))?;
    if valid_until <= now_ms() {
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
