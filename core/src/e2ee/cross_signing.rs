//! Cross-signing: `/keys/device_signing/upload` and `/keys/signatures/upload`.

use std::collections::{BTreeMap, BTreeSet};

use hearth_storage::WriteOp;
use hearth_storage::e2ee::E2eeOp;
use ruma::{OwnedUserId, UserId};
use serde_json::json;

use super::signing::{merge_signatures, signed_part, single_key, verify};
use super::{E2ee, Json};
use crate::{Error, Result};

#[derive(Default)]
pub struct SigningKeys {
    pub master: Option<Json>,
    pub self_signing: Option<Json>,
    pub user_signing: Option<Json>,
}

impl SigningKeys {
    fn by_usage(&self) -> [(&'static str, Option<&Json>); 3] {
        [
            ("master", self.master.as_ref()),
            ("self_signing", self.self_signing.as_ref()),
            ("user_signing", self.user_signing.as_ref()),
        ]
    }
}

/// Per user and key id, why a signature was refused: `{errcode, error}`.
pub type SignatureFailures = BTreeMap<OwnedUserId, BTreeMap<String, Json>>;

fn failure(errcode: &str, error: &str) -> Json {
    json!({ "errcode": errcode, "error": error })
}

impl E2ee {
    fn stored_signing_keys(&self, user: &UserId) -> Result<BTreeMap<String, Json>> {
        self.store
            .cross_signing_keys(user.as_str())?
            .into_iter()
            .map(|(usage, json)| Ok((usage, serde_json::from_str(&json)?)))
            .collect()
    }

    /// Whether an upload needs user-interactive auth. The spec exempts the first upload (no
    /// master key yet), and, as Synapse does, an upload of exactly the stored keys, which
    /// clients repeat when they retry.
    pub fn signing_upload_needs_auth(&self, user: &UserId, keys: &SigningKeys) -> Result<bool> {
        let stored = self.stored_signing_keys(user)?;
        if !stored.contains_key("master") {
            return Ok(false);
        }
        Ok(keys.by_usage().into_iter().any(|(usage, key)| {
            key.is_some_and(|k| stored.get(usage).map(signed_part) != Some(signed_part(k)))
        }))
    }

    pub async fn upload_signing_keys(&self, user: &UserId, keys: SigningKeys) -> Result<()> {
        let stored = self.stored_signing_keys(user)?;
        for (usage, key) in keys.by_usage() {
            if let Some(key) = key {
                check_cross_signing_key(user, usage, key)?;
            }
        }
        let master = keys
            .master
            .as_ref()
            .or(stored.get("master"))
            .ok_or_else(|| Error::MissingParam("A master key must be uploaded first".into()))?;
        let (master_id, master_public) =
            single_key(master).ok_or_else(|| Error::InvalidParam("Bad master key".into()))?;
        let mut ops = Vec::new();
        // Whether a key others see changed (master, self-signing), not only the user-signing key.
        let mut public_change = false;
        for (usage, key) in keys.by_usage() {
            let Some(key) = key else { continue };
            if usage != "master" && !verify(key, user.as_str(), &master_id, &master_public) {
                return Err(Error::InvalidSignature(format!(
                    "The {usage} key is not signed by the master key"
                )));
            }
            if stored.get(usage).map(signed_part) == Some(signed_part(key)) {
                continue;
            }
            public_change |= usage != "user_signing";
            ops.push(WriteOp::E2ee(E2eeOp::PutCrossSigningKey {
                user_id: user.to_string(),
                usage: usage.into(),
                json: key.to_string(),
            }));
        }
        if ops.is_empty() {
            return Ok(());
        }
        if public_change {
            self.device_lists
                .commit_change(user, ops, Vec::new())
                .await?;
        } else {
            // A new user-signing key is news to the user's own devices alone, as in Synapse.
            self.device_lists
                .commit_private_change(user, [user.to_owned()], ops)
                .await?;
        }
        // Only the keys others may see travel: the user-signing key stays home.
        if keys.master.is_some() || keys.self_signing.is_some() {
            self.device_lists
                .announce_signing_keys(user, keys.master, keys.self_signing)?;
        }
        Ok(())
    }

    /// `/keys/signatures/upload`: each signature is checked against the signer's keys and kept
    /// or refused on its own.
    pub async fn upload_signatures(
        &self,
        signer: &UserId,
        signed: BTreeMap<OwnedUserId, BTreeMap<String, Json>>,
    ) -> Result<SignatureFailures> {
        let own = self.stored_signing_keys(signer)?;
        let mut failures = SignatureFailures::new();
        let mut own_ops = Vec::new();
        let mut other_ops = Vec::new();
        let mut others = BTreeSet::new();
        for (target, objects) in signed {
            for (key_id, object) in objects {
                let outcome = if target == signer {
                    self.sign_own(signer, &own, &key_id, &object)
                } else {
                    self.sign_other(signer, &own, &target, &key_id, &object)
                };
                match outcome {
                    Ok(op) if target == signer => own_ops.push(op),
                    Ok(op) => {
                        other_ops.push(op);
                        others.insert(target.clone());
                    }
                    Err(f) => {
                        failures
                            .entry(target.clone())
                            .or_default()
                            .insert(key_id, f);
                    }
                }
            }
        }
        // Signatures on one's own devices and master key are seen by all who share a room;
        // those on others' master keys by the signer alone, who hears that those users changed
        // (as Synapse notifies them).
        if !own_ops.is_empty() {
            self.device_lists
                .commit_change(signer, own_ops, Vec::new())
                .await?;
        }
        if !other_ops.is_empty() {
            self.device_lists
                .commit_private_change(signer, others, other_ops)
                .await?;
        }
        Ok(failures)
    }

    /// A signature on one of the signer's own devices (by their self-signing key) or on their
    /// master key (by one of their devices).
    fn sign_own(
        &self,
        user: &UserId,
        own: &BTreeMap<String, Json>,
        key_id: &str,
        object: &Json,
    ) -> std::result::Result<WriteOp, Json> {
        let u = user.as_str();
        let devices = self.store.device_keys(u).map_err(internal)?;
        if let Some((device, json)) = devices.iter().find(|(d, _)| d == key_id) {
            let mut stored: Json = serde_json::from_str(json).map_err(internal)?;
            if signed_part(&stored) != signed_part(object) {
                return Err(failure(
                    "M_INVALID_SIGNATURE",
                    "The signed keys differ from the device's",
                ));
            }
            let (ssk_id, ssk_public) = own
                .get("self_signing")
                .and_then(single_key)
                .ok_or_else(|| failure("M_INVALID_SIGNATURE", "No self-signing key"))?;
            if !verify(object, u, &ssk_id, &ssk_public) {
                return Err(failure("M_INVALID_SIGNATURE", "Invalid signature"));
            }
            merge_signatures(&mut stored, &only_signature(object, u, &ssk_id));
            return Ok(WriteOp::E2ee(E2eeOp::PutDeviceKeys {
                user_id: u.into(),
                device_id: device.clone(),
                json: stored.to_string(),
            }));
        }
        let master = own
            .get("master")
            .filter(|m| single_key(m).is_some_and(|(id, _)| id == format!("ed25519:{key_id}")))
            .ok_or_else(|| failure("M_INVALID_PARAM", "Unknown key"))?;
        if signed_part(master) != signed_part(object) {
            return Err(failure(
                "M_INVALID_SIGNATURE",
                "The signed key differs from the master key",
            ));
        }
        // Signed by a device: find which, and check the signature with its ed25519 key.
        let signatures = object
            .get("signatures")
            .and_then(|s| s.get(u))
            .and_then(Json::as_object)
            .cloned()
            .unwrap_or_default();
        for (sig_key, _) in signatures {
            let Some(device) = sig_key.strip_prefix("ed25519:") else {
                continue;
            };
            let Some((_, json)) = devices.iter().find(|(d, _)| d == device) else {
                continue;
            };
            let device_keys: Json = serde_json::from_str(json).map_err(internal)?;
            let Some(public) = device_keys
                .pointer(&format!("/keys/ed25519:{device}"))
                .and_then(Json::as_str)
            else {
                continue;
            };
            if verify(object, u, &sig_key, public) {
                let mut stored = master.clone();
                merge_signatures(&mut stored, &only_signature(object, u, &sig_key));
                return Ok(WriteOp::E2ee(E2eeOp::PutCrossSigningKey {
                    user_id: u.into(),
                    usage: "master".into(),
                    json: stored.to_string(),
                }));
            }
        }
        Err(failure("M_INVALID_SIGNATURE", "Invalid signature"))
    }

    /// A signature on another user's master key, by the signer's user-signing key. It is kept
    /// apart and shown to the signer only.
    fn sign_other(
        &self,
        signer: &UserId,
        own: &BTreeMap<String, Json>,
        target: &UserId,
        key_id: &str,
        object: &Json,
    ) -> std::result::Result<WriteOp, Json> {
        let master = self
            .stored_signing_keys(target)
            .map_err(internal)?
            .remove("master")
            .filter(|m| single_key(m).is_some_and(|(id, _)| id == format!("ed25519:{key_id}")))
            .ok_or_else(|| failure("M_INVALID_PARAM", "Unknown key"))?;
        if signed_part(&master) != signed_part(object) {
            return Err(failure(
                "M_INVALID_SIGNATURE",
                "The signed key differs from the master key",
            ));
        }
        let (usk_id, usk_public) = own
            .get("user_signing")
            .and_then(single_key)
            .ok_or_else(|| failure("M_INVALID_SIGNATURE", "No user-signing key"))?;
        if !verify(object, signer.as_str(), &usk_id, &usk_public) {
            return Err(failure("M_INVALID_SIGNATURE", "Invalid signature"));
        }
        Ok(WriteOp::E2ee(E2eeOp::PutKeySignature {
            target_user: target.to_string(),
            key_id: key_id.into(),
            signer: signer.to_string(),
            json: only_signature(object, signer.as_str(), &usk_id).to_string(),
        }))
    }
}

fn internal(e: impl std::fmt::Display) -> Json {
    tracing::error!(error = %e, "reading keys failed");
    failure("M_UNKNOWN", "Internal error")
}

/// `{"signatures": {signer: {key id: signature}}}` with just that one signature.
fn only_signature(object: &Json, signer: &str, key_id: &str) -> Json {
    let sig = object
        .get("signatures")
        .and_then(|s| s.get(signer))
        .and_then(|s| s.get(key_id))
        .cloned()
        .unwrap_or(Json::Null);
    json!({ "signatures": { signer: { key_id: sig } } })
}

/// A cross-signing key must name its owner and usage and hold exactly one key.
fn check_cross_signing_key(user: &UserId, usage: &str, key: &Json) -> Result<()> {
    if key.get("user_id").and_then(Json::as_str) != Some(user.as_str()) {
        return Err(Error::InvalidParam(format!(
            "The {usage} key belongs to another user"
        )));
    }
    let has_usage = key
        .get("usage")
        .and_then(Json::as_array)
        .is_some_and(|u| u.iter().any(|x| x.as_str() == Some(usage)));
    if !has_usage {
        return Err(Error::InvalidParam(format!(
            "The {usage} key does not have usage {usage}"
        )));
    }
    if single_key(key).is_none() {
        return Err(Error::InvalidParam(format!(
            "The {usage} key must hold exactly one key"
        )));
    }
    Ok(())
}
