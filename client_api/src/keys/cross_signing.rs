//! Cross-signing (spec: "Cross-signing"): uploading the signing keys and signatures.

use std::collections::BTreeMap;

use hearth_core::e2ee::{Json, SigningKeys};
use ruma::api::client::keys::{upload_signatures, upload_signing_keys};

use super::to_json;
use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::Ruma;

pub async fn upload_signing_keys(
    state: AppState,
    req: Ruma<upload_signing_keys::v3::Request>,
) -> ApiResult<upload_signing_keys::v3::Response> {
    let user = req.session().user_id.clone();
    let b = &req.body;
    let keys = SigningKeys {
        master: b.master_key.as_ref().map(to_json).transpose()?,
        self_signing: b.self_signing_key.as_ref().map(to_json).transpose()?,
        user_signing: b.user_signing_key.as_ref().map(to_json).transpose()?,
    };
    if state.core.e2ee.signing_upload_needs_auth(&user, &keys)? {
        state
            .uia
            .confirm_password(&state, b.auth.as_ref(), &user, "cross-signing keys")
            .await?;
    }
    state.core.e2ee.upload_signing_keys(&user, keys).await?;
    Ok(upload_signing_keys::v3::Response::new())
}

pub async fn upload_signatures(
    state: AppState,
    req: Ruma<upload_signatures::v3::Request>,
) -> ApiResult<upload_signatures::v3::Response> {
    let signer = req.session().user_id.clone();
    let mut signed = BTreeMap::new();
    for (user, keys) in &req.body.signed_keys {
        let keys: BTreeMap<String, Json> = serde_json::to_value(keys)
            .and_then(serde_json::from_value)
            .map_err(|e| ApiError::bad_json(e.to_string()))?;
        signed.insert(user.clone(), keys);
    }
    let failures = state.core.e2ee.upload_signatures(&signer, signed).await?;
    let mut resp = upload_signatures::v3::Response::new();
    for (user, by_key) in failures {
        let by_key = by_key
            .into_iter()
            .filter_map(|(k, f)| Some((k, serde_json::from_value(f).ok()?)))
            .collect();
        resp.failures.insert(user, by_key);
    }
    Ok(resp)
}
