//! End-to-end encryption (spec: "End-to-End Encryption", "Key management API"): device keys,
//! one-time and fallback keys, key changes, cross-signing and server-side key backup.

pub mod backup;
pub mod cross_signing;

use std::collections::BTreeMap;

use hearth_core::e2ee::{Json, KeyQuery, KeyUpload};
use ruma::api::client::keys::{claim_keys, get_key_changes, get_keys, upload_keys};
use ruma::serde::Raw;
use ruma::{OneTimeKeyAlgorithm, OwnedDeviceId, OwnedOneTimeKeyId, UInt};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Patched, Ruma};

pub(crate) fn to_json<T>(raw: &Raw<T>) -> ApiResult<Json> {
    raw.deserialize_as::<Json>()
        .map_err(|e| ApiError::bad_json(e.to_string()))
}

pub(crate) fn to_raw<T>(json: &Json) -> Raw<T> {
    Raw::from_json(serde_json::value::to_raw_value(json).expect("JSON values serialise"))
}

fn key_map<T>(keys: &BTreeMap<OwnedOneTimeKeyId, Raw<T>>) -> ApiResult<BTreeMap<String, Json>> {
    keys.iter()
        .map(|(id, k)| Ok((id.to_string(), to_json(k)?)))
        .collect()
}

/// Clients keep about 50 one-time keys on the server and top them up a few at a time; a
/// thousand in one request is already far past need, and each is a row to store.
const MAX_KEYS_PER_UPLOAD: usize = 1000;

pub async fn upload(
    state: AppState,
    req: Ruma<upload_keys::v3::Request>,
) -> ApiResult<upload_keys::v3::Response> {
    let s = req.session();
    let b = &req.body;
    if b.one_time_keys.len() + b.fallback_keys.len() > MAX_KEYS_PER_UPLOAD {
        return Err(ApiError::invalid_param(format!(
            "At most {MAX_KEYS_PER_UPLOAD} one-time and fallback keys per upload"
        )));
    }
    let upload = KeyUpload {
        device_keys: b.device_keys.as_ref().map(to_json).transpose()?,
        one_time_keys: key_map(&b.one_time_keys)?,
        fallback_keys: key_map(&b.fallback_keys)?,
    };
    let counts = state
        .core
        .e2ee
        .upload_keys(&s.user_id, s.device_id.as_str(), upload)
        .await?;
    Ok(upload_keys::v3::Response::new(
        counts
            .into_iter()
            .map(|(alg, n)| {
                (
                    OneTimeKeyAlgorithm::from(alg.as_str()),
                    UInt::new_saturating(n),
                )
            })
            .collect(),
    ))
}

pub async fn query(
    state: AppState,
    req: Ruma<get_keys::v3::Request>,
) -> ApiResult<Patched<get_keys::v3::Response>> {
    let s = req.session();
    let query = KeyQuery {
        requester: Some(&s.user_id),
        users: req
            .body
            .device_keys
            .iter()
            .map(|(u, ds)| (u.clone(), ds.iter().map(|d| d.to_string()).collect()))
            .collect(),
    };
    let keys = state.core.e2ee.query_keys(&query).await?;
    let mut resp = get_keys::v3::Response::new();
    resp.failures = keys.failures;
    resp.device_keys = keys
        .device_keys
        .into_iter()
        .map(|(u, ds)| {
            let ds = ds
                .into_iter()
                .map(|(d, k)| (OwnedDeviceId::from(d), to_raw(&k)))
                .collect();
            (u, ds)
        })
        .collect();
    let raw_map = |m: BTreeMap<_, Json>| m.into_iter().map(|(u, k)| (u, to_raw(&k))).collect();
    resp.master_keys = raw_map(keys.master_keys);
    resp.self_signing_keys = raw_map(keys.self_signing_keys);
    resp.user_signing_keys = raw_map(keys.user_signing_keys);
    // `failures` is always there, empty when every server answered, as Synapse sends it.
    Ok(Patched {
        resp,
        patch: Box::new(|v| {
            if v.get("failures").is_none() {
                v["failures"] = serde_json::json!({});
            }
        }),
    })
}

pub async fn claim(
    state: AppState,
    req: Ruma<claim_keys::v3::Request>,
) -> ApiResult<claim_keys::v3::Response> {
    let requests = req
        .body
        .one_time_keys
        .iter()
        .map(|(u, ds)| {
            let ds = ds
                .iter()
                .map(|(d, alg)| (d.to_string(), alg.to_string()))
                .collect();
            (u.clone(), ds)
        })
        .collect();
    let claimed = state.core.e2ee.claim_keys(&requests).await?;
    let mut one_time_keys = BTreeMap::new();
    for (user, devices) in claimed.one_time_keys {
        let mut by_device = BTreeMap::new();
        for (device, keys) in devices {
            let mut map = BTreeMap::new();
            // A peer's malformed key id costs that one key, not the whole claim.
            for (id, key) in keys {
                if let Ok(id) = OwnedOneTimeKeyId::try_from(id.as_str()) {
                    map.insert(id, to_raw(&key));
                }
            }
            // A device with no key left is not in the answer, nor a user with no such device
            // (as Synapse answers, and clients read an empty map as a key).
            if !map.is_empty() {
                by_device.insert(OwnedDeviceId::from(device), map);
            }
        }
        if !by_device.is_empty() {
            one_time_keys.insert(user, by_device);
        }
    }
    let mut resp = claim_keys::v3::Response::new(one_time_keys);
    resp.failures = claimed.failures;
    Ok(resp)
}

pub async fn changes(
    state: AppState,
    req: Ruma<get_key_changes::v3::Request>,
) -> ApiResult<get_key_changes::v3::Response> {
    let from = crate::sync::parse_sync_token(&req.body.from)?.pos;
    // `to` must be a token, but the answer runs to now, as Synapse's does: the stream keeps
    // each user's latest change only, so a change before `to` that a later one replaced would
    // otherwise be lost. A client hears a change twice at worst.
    crate::sync::parse_sync_token(&req.body.to)?;
    let now = state.core.store.persisted_pos();
    let c = state
        .core
        .e2ee
        .device_lists()
        .changes(&req.session().user_id, from.min(now), now)?;
    Ok(get_key_changes::v3::Response::new(c.changed, c.left))
}
