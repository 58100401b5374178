//! Device keys, one-time keys and fallback keys: `/keys/upload`, `/keys/query`, `/keys/claim`.

use std::collections::BTreeMap;

use hearth_storage::WriteOp;
use hearth_storage::e2ee::{E2eeOp, FallbackKeyRecord};
use ruma::{OwnedServerName, OwnedUserId, UserId};
use serde_json::json;

use super::signing::{merge_signatures, signed_part, single_key};
use super::{DeviceUpdate, E2ee, Json};
use crate::{Error, Result};

/// What `/keys/upload` carries, keyed as the spec keys it (`algorithm:key id`).
#[derive(Default)]
pub struct KeyUpload {
    pub device_keys: Option<Json>,
    pub one_time_keys: BTreeMap<String, Json>,
    pub fallback_keys: BTreeMap<String, Json>,
}

pub struct KeyQuery<'a> {
    /// The local user asking, who also sees their own user-signing key and the signatures
    /// they made on others' master keys; `None` for another server.
    pub requester: Option<&'a UserId>,
    /// Users and the devices wanted of each (none: all).
    pub users: BTreeMap<OwnedUserId, Vec<String>>,
}

#[derive(Default)]
pub struct QueriedKeys {
    pub device_keys: BTreeMap<OwnedUserId, BTreeMap<String, Json>>,
    pub master_keys: BTreeMap<OwnedUserId, Json>,
    pub self_signing_keys: BTreeMap<OwnedUserId, Json>,
    pub user_signing_keys: BTreeMap<OwnedUserId, Json>,
    pub failures: BTreeMap<String, Json>,
}

#[derive(Default)]
pub struct ClaimedKeys {
    /// user → device → `algorithm:key id` → key.
    pub one_time_keys: BTreeMap<OwnedUserId, BTreeMap<String, BTreeMap<String, Json>>>,
    pub failures: BTreeMap<String, Json>,
}

/// How long a key query or claim waits for another server; past it, that server is listed in
/// `failures` and the rest of the answer goes out.
const REMOTE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A query fetches at most this many remote device lists whole; the other users are asked of
/// their servers with `/user/keys/query`.
const MAX_RESYNCS_PER_QUERY: usize = 20;

/// The algorithm every client counts; reported even at zero, as Synapse does, so that clients
/// top it up.
const SIGNED_CURVE25519: &str = "signed_curve25519";

fn algorithm_of(key_id: &str) -> Result<&str> {
    match key_id.split_once(':') {
        Some((alg, id)) if !alg.is_empty() && !id.is_empty() && !id.contains(':') => Ok(alg),
        _ => Err(Error::BadJson(format!(
            "Key id {key_id:?} is not algorithm:id"
        ))),
    }
}

/// The shape the spec gives device keys (`DeviceKeys`): `user_id` and `device_id` strings (the
/// uploader's), `algorithms` a list of strings, `keys` a map of strings, `signatures` a map of
/// maps of strings. Anything else is `M_BAD_JSON`, as Synapse answers.
fn check_device_keys(keys: &Json, user: &str, device: &str) -> Result<()> {
    let bad = |what: &str| Err(Error::BadJson(format!("device_keys: {what}")));
    let Some(obj) = keys.as_object() else {
        return bad("must be an object");
    };
    let is_str_map = |v: &Json| {
        v.as_object()
            .is_some_and(|m| m.values().all(Json::is_string))
    };
    match obj.get("user_id").map(Json::as_str) {
        Some(Some(u)) if u == user => {}
        Some(Some(_)) => return bad("user_id does not match the authenticated user"),
        _ => return bad("user_id must be a string"),
    }
    match obj.get("device_id").map(Json::as_str) {
        Some(Some(d)) if d == device => {}
        Some(Some(_)) => return bad("device_id does not match the authenticated device"),
        _ => return bad("device_id must be a string"),
    }
    let algorithms = obj.get("algorithms").and_then(Json::as_array);
    if !algorithms.is_some_and(|a| a.iter().all(Json::is_string)) {
        return bad("algorithms must be a list of strings");
    }
    if !obj.get("keys").is_some_and(is_str_map) {
        return bad("keys must be a map of strings");
    }
    let signatures = obj.get("signatures").and_then(Json::as_object);
    if !signatures.is_some_and(|s| s.values().all(is_str_map)) {
        return bad("signatures must be a map of maps of strings");
    }
    Ok(())
}

impl E2ee {
    /// `/keys/upload` for one device; answers the one-time key counts after it.
    pub async fn upload_keys(
        &self,
        user: &UserId,
        device: &str,
        upload: KeyUpload,
    ) -> Result<BTreeMap<String, u64>> {
        let (u, d) = (user.as_str(), device);
        let mut ops = Vec::new();
        let mut announce = None;
        // The whole upload is checked before any of it is kept.
        if let Some(keys) = &upload.device_keys {
            check_device_keys(keys, u, d)?;
        }
        for id in upload
            .one_time_keys
            .keys()
            .chain(upload.fallback_keys.keys())
        {
            algorithm_of(id)?;
        }
        if let Some(keys) = upload.device_keys {
            let stored = self
                .store
                .device_keys(u)?
                .into_iter()
                .find(|(id, _)| id == d)
                .and_then(|(_, j)| serde_json::from_str::<Json>(&j).ok());
            // Clients upload their device keys again and again; only a real change is news.
            if stored.as_ref().map(signed_part) != Some(signed_part(&keys)) {
                let keys = without_unsigned(&keys);
                ops.push(WriteOp::E2ee(E2eeOp::PutDeviceKeys {
                    user_id: u.into(),
                    device_id: d.into(),
                    json: keys.to_string(),
                }));
                announce = Some(keys);
            }
        }
        if !upload.one_time_keys.is_empty() {
            let existing: BTreeMap<String, String> =
                self.store.one_time_keys(u, d)?.into_iter().collect();
            let mut new = Vec::new();
            for (id, key) in upload.one_time_keys {
                algorithm_of(&id)?;
                match existing.get(&id) {
                    Some(old) if serde_json::from_str::<Json>(old).ok().as_ref() == Some(&key) => {}
                    Some(_) => {
                        return Err(Error::InvalidParam(format!(
                            "One time key {id} already exists"
                        )));
                    }
                    None => new.push((id, key.to_string())),
                }
            }
            if !new.is_empty() {
                ops.push(WriteOp::E2ee(E2eeOp::PutOneTimeKeys {
                    user_id: u.into(),
                    device_id: d.into(),
                    keys: new,
                }));
            }
        }
        if !upload.fallback_keys.is_empty() {
            let existing: BTreeMap<String, FallbackKeyRecord> =
                self.store.fallback_keys(u, d)?.into_iter().collect();
            for (id, key) in upload.fallback_keys {
                let algorithm = algorithm_of(&id)?.to_owned();
                let json = key.to_string();
                // The same key again keeps its "used" state.
                if existing
                    .get(&algorithm)
                    .is_some_and(|r| r.key_id == id && r.json == json)
                {
                    continue;
                }
                ops.push(WriteOp::E2ee(E2eeOp::PutFallbackKey {
                    user_id: u.into(),
                    device_id: d.into(),
                    algorithm,
                    record: FallbackKeyRecord {
                        key_id: id,
                        json,
                        used: false,
                    },
                }));
            }
        }
        match announce {
            Some(keys) => {
                let display_name = self.store.device(u, d)?.and_then(|r| r.display_name);
                let update = DeviceUpdate {
                    device_id: d.into(),
                    display_name,
                    deleted: false,
                    keys: Some(keys),
                };
                self.device_lists
                    .commit_change(user, ops, vec![update])
                    .await?;
            }
            None if !ops.is_empty() => {
                self.store.submit(ops).await?;
            }
            None => {}
        }
        self.one_time_key_counts(user, device)
    }

    pub fn one_time_key_counts(
        &self,
        user: &UserId,
        device: &str,
    ) -> Result<BTreeMap<String, u64>> {
        let mut counts = BTreeMap::from([(SIGNED_CURVE25519.to_owned(), 0)]);
        for (id, _) in self.store.one_time_keys(user.as_str(), device)? {
            if let Ok(alg) = algorithm_of(&id) {
                *counts.entry(alg.to_owned()).or_default() += 1;
            }
        }
        Ok(counts)
    }

    pub fn unused_fallback_key_types(&self, user: &UserId, device: &str) -> Result<Vec<String>> {
        Ok(self
            .store
            .fallback_keys(user.as_str(), device)?
            .into_iter()
            .filter(|(_, r)| !r.used)
            .map(|(alg, _)| alg)
            .collect())
    }

    /// `/keys/query` for users of this server.
    pub async fn query_keys(&self, query: &KeyQuery<'_>) -> Result<QueriedKeys> {
        let mut out = QueriedKeys::default();
        for (user, wanted) in &query.users {
            if user.server_name() != self.server_name {
                continue;
            }
            let u = user.as_str();
            let names: BTreeMap<String, Option<String>> = self
                .store
                .devices(u)?
                .into_iter()
                .map(|(id, r)| (id, r.display_name))
                .collect();
            let mut devices = BTreeMap::new();
            for (device, json) in self.store.device_keys(u)? {
                if !wanted.is_empty() && !wanted.contains(&device) {
                    continue;
                }
                let Some(name) = names.get(&device) else {
                    continue;
                };
                let mut keys: Json = serde_json::from_str(&json)?;
                // Always there, as Synapse sends it; the display name when the device has one.
                keys["unsigned"] = match name {
                    Some(name) => json!({ "device_display_name": name }),
                    None => json!({}),
                };
                devices.insert(device, keys);
            }
            out.device_keys.insert(user.clone(), devices);

            let cross_signing = self.store.cross_signing_keys(u)?;
            for (usage, json) in cross_signing {
                let mut key: Json = serde_json::from_str(&json)?;
                match usage.as_str() {
                    "master" => {
                        if let Some(requester) = query.requester {
                            self.add_signatures_of(requester, user, &mut key)?;
                        }
                        out.master_keys.insert(user.clone(), key);
                    }
                    "self_signing" => {
                        out.self_signing_keys.insert(user.clone(), key);
                    }
                    "user_signing" if query.requester == Some(&**user) => {
                        out.user_signing_keys.insert(user.clone(), key);
                    }
                    _ => {}
                }
            }
        }
        if let Some(requester) = query.requester {
            self.query_remote_keys(requester, &query.users, &mut out)
                .await?;
        }
        Ok(out)
    }

    /// The keys of other servers' users, asked of their servers (a local user's query only:
    /// a server never relays another server's).
    async fn query_remote_keys(
        &self,
        requester: &UserId,
        users: &BTreeMap<OwnedUserId, Vec<String>>,
        out: &mut QueriedKeys,
    ) -> Result<()> {
        let mut by_server: BTreeMap<OwnedServerName, serde_json::Map<String, Json>> =
            BTreeMap::new();
        let mut resyncs = 0;
        for (user, wanted) in users {
            if user.server_name() == self.server_name {
                continue;
            }
            // The users a local user shares a room with: their device lists as kept (the
            // updates of their server keep them current), fetched whole when none is kept.
            let lists = &self.device_lists;
            let mut kept = lists.cached(user)?;
            if kept.is_none() && resyncs < MAX_RESYNCS_PER_QUERY && lists.tracked(user)? {
                resyncs += 1;
                kept = lists.resync(user).await?;
            }
            if let Some(kept) = kept {
                out.device_keys
                    .insert(user.clone(), kept.query_keys(wanted));
                if let Some(mut key) = kept.master_key {
                    self.add_signatures_of(requester, user, &mut key)?;
                    out.master_keys.insert(user.clone(), key);
                }
                if let Some(key) = kept.self_signing_key {
                    out.self_signing_keys.insert(user.clone(), key);
                }
                continue;
            }
            {
                by_server
                    .entry(user.server_name().to_owned())
                    .or_default()
                    .insert(user.to_string(), json!(wanted));
            }
        }
        for (server, users) in by_server {
            let body = json!({ "device_keys": users });
            let answer =
                tokio::time::timeout(REMOTE_TIMEOUT, self.remote.query_keys(&server, body));
            let Ok(Ok(answer)) = answer.await else {
                out.failures.insert(server.to_string(), json!({}));
                continue;
            };
            let of_server = |field: &str| -> Vec<(OwnedUserId, Json)> {
                answer[field]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter_map(|(u, v)| Some((UserId::parse(u).ok()?, v.clone())))
                    .filter(|(u, _)| u.server_name() == server)
                    .collect()
            };
            for (user, devices) in of_server("device_keys") {
                let devices = devices
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(d, k)| (d.clone(), k.clone()))
                    .collect();
                out.device_keys.insert(user, devices);
            }
            for (user, mut key) in of_server("master_keys") {
                self.add_signatures_of(requester, &user, &mut key)?;
                out.master_keys.insert(user, key);
            }
            out.self_signing_keys.extend(of_server("self_signing_keys"));
        }
        Ok(())
    }

    /// Adds the signatures `signer` made on `target`'s key (visible to the signer only).
    fn add_signatures_of(&self, signer: &UserId, target: &UserId, key: &mut Json) -> Result<()> {
        let Some((key_id, _)) = single_key(key) else {
            return Ok(());
        };
        let public = key_id.trim_start_matches("ed25519:");
        for (id, by, json) in self.store.key_signatures(target.as_str())? {
            if by == signer.as_str() && id == public {
                merge_signatures(key, &serde_json::from_str(&json)?);
            }
        }
        Ok(())
    }

    /// `/keys/claim` for devices of this server: a one-time key of the algorithm if one is
    /// left (each handed out once), the fallback key otherwise.
    pub async fn claim_keys(
        &self,
        requests: &BTreeMap<OwnedUserId, BTreeMap<String, String>>,
    ) -> Result<ClaimedKeys> {
        let _one_at_a_time = self.claim_lock.lock().await;
        let mut out = ClaimedKeys::default();
        let mut ops = Vec::new();
        for (user, devices) in requests {
            if user.server_name() != self.server_name {
                continue;
            }
            let u = user.as_str();
            let mut claimed = BTreeMap::new();
            for (device, algorithm) in devices {
                let prefix = format!("{algorithm}:");
                let otk = self
                    .store
                    .one_time_keys(u, device)?
                    .into_iter()
                    .find(|(id, _)| id.starts_with(&prefix));
                if let Some((id, json)) = otk {
                    ops.push(WriteOp::E2ee(E2eeOp::DeleteOneTimeKey {
                        user_id: u.into(),
                        device_id: device.clone(),
                        key_id: id.clone(),
                    }));
                    claimed.insert(
                        device.clone(),
                        BTreeMap::from([(id, serde_json::from_str(&json)?)]),
                    );
                    continue;
                }
                let fallback = self
                    .store
                    .fallback_keys(u, device)?
                    .into_iter()
                    .find(|(alg, _)| alg == algorithm);
                if let Some((alg, mut record)) = fallback {
                    claimed.insert(
                        device.clone(),
                        BTreeMap::from([(
                            record.key_id.clone(),
                            serde_json::from_str(&record.json)?,
                        )]),
                    );
                    if !record.used {
                        record.used = true;
                        ops.push(WriteOp::E2ee(E2eeOp::PutFallbackKey {
                            user_id: u.into(),
                            device_id: device.clone(),
                            algorithm: alg,
                            record,
                        }));
                    }
                }
            }
            out.one_time_keys.insert(user.clone(), claimed);
        }
        if !ops.is_empty() {
            self.store.submit(ops).await?;
        }
        drop(_one_at_a_time);
        self.claim_remote_keys(requests, &mut out).await;
        Ok(out)
    }

    async fn claim_remote_keys(
        &self,
        requests: &BTreeMap<OwnedUserId, BTreeMap<String, String>>,
        out: &mut ClaimedKeys,
    ) {
        let mut by_server: BTreeMap<OwnedServerName, serde_json::Map<String, Json>> =
            BTreeMap::new();
        for (user, devices) in requests {
            if user.server_name() != self.server_name {
                by_server
                    .entry(user.server_name().to_owned())
                    .or_default()
                    .insert(user.to_string(), json!(devices));
            }
        }
        for (server, users) in by_server {
            let body = json!({ "one_time_keys": users });
            let answer =
                tokio::time::timeout(REMOTE_TIMEOUT, self.remote.claim_keys(&server, body));
            let Ok(Ok(answer)) = answer.await else {
                out.failures.insert(server.to_string(), json!({}));
                continue;
            };
            for (user, devices) in answer["one_time_keys"].as_object().into_iter().flatten() {
                let Ok(user) = UserId::parse(user) else {
                    continue;
                };
                if user.server_name() != server {
                    continue;
                }
                let Ok(devices) = serde_json::from_value(devices.clone()) else {
                    continue;
                };
                out.one_time_keys.insert(user, devices);
            }
        }
    }
}

/// Device keys as stored: without `unsigned`, which the server fills in per query.
fn without_unsigned(keys: &Json) -> Json {
    let mut k = keys.clone();
    if let Some(map) = k.as_object_mut() {
        map.remove("unsigned");
    }
    k
}
