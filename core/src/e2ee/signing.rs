//! Checking the ed25519 signatures on uploaded keys, with ruma's signature code.

use base64::Engine;
use ruma::CanonicalJsonObject;
use ruma::signatures::{SigningKeyAlgorithm, to_canonical_json_string_for_signing};

use super::Json;

fn unpadded_base64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}

/// Whether `object` carries a valid signature by `signer`'s key `key_id` (`ed25519:...`), whose
/// public part is `public_key` (unpadded base64).
pub(super) fn verify(object: &Json, signer: &str, key_id: &str, public_key: &str) -> bool {
    let Some(signature) = object
        .pointer(&format!(
            "/signatures/{}/{}",
            escape(signer),
            escape(key_id)
        ))
        .and_then(Json::as_str)
    else {
        return false;
    };
    let (Some(signature), Some(public_key)) =
        (unpadded_base64(signature), unpadded_base64(public_key))
    else {
        return false;
    };
    let Ok(canonical) = serde_json::from_value::<CanonicalJsonObject>(object.clone()) else {
        return false;
    };
    let Ok(signed) = to_canonical_json_string_for_signing(&canonical) else {
        return false;
    };
    ruma::signatures::verify_canonical_json_bytes(
        &SigningKeyAlgorithm::Ed25519,
        &public_key,
        &signature,
        signed.as_bytes(),
    )
    .is_ok()
}

/// A JSON pointer segment for a map key.
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The single `ed25519:<id>` key of a cross-signing key object: `(key id, public key)`.
pub(super) fn single_key(object: &Json) -> Option<(String, String)> {
    let keys = object.get("keys")?.as_object()?;
    if keys.len() != 1 {
        return None;
    }
    let (id, key) = keys.iter().next()?;
    Some((id.clone(), key.as_str()?.to_owned()))
}

/// The object without `signatures` and `unsigned`: what two uploads must agree on to be the
/// same key.
pub(super) fn signed_part(object: &Json) -> Json {
    let mut o = object.clone();
    if let Some(map) = o.as_object_mut() {
        map.remove("signatures");
        map.remove("unsigned");
    }
    o
}

/// Adds `from`'s signatures to `into`'s, keeping the ones `into` has.
pub(super) fn merge_signatures(into: &mut Json, from: &Json) {
    let Some(sigs) = from.get("signatures").and_then(Json::as_object) else {
        return;
    };
    let Some(target) = into.as_object_mut() else {
        return;
    };
    let dst = target
        .entry("signatures")
        .or_insert_with(|| Json::Object(Default::default()));
    let Some(dst) = dst.as_object_mut() else {
        return;
    };
    for (signer, keys) in sigs {
        let Some(keys) = keys.as_object() else {
            continue;
        };
        let entry = dst
            .entry(signer.clone())
            .or_insert_with(|| Json::Object(Default::default()));
        if let Some(entry) = entry.as_object_mut() {
            for (k, v) in keys {
                entry.insert(k.clone(), v.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use ruma::signatures::{Ed25519KeyPair, KeyPair};
    use serde_json::json;

    use super::*;

    #[test]
    fn a_signature_verifies_and_a_changed_object_does_not() {
        let pair = Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), "K".into()).unwrap();
        let public = base64::engine::general_purpose::STANDARD_NO_PAD.encode(pair.public_key());
        let mut object = json!({ "user_id": "@a:x", "keys": { "ed25519:K": public } });
        let sig = pair.sign(
            to_canonical_json_string_for_signing(&serde_json::from_value(object.clone()).unwrap())
                .unwrap()
                .as_bytes(),
        );
        object["signatures"] = json!({ "@a:x": { "ed25519:K": sig.base64() } });
        assert!(verify(&object, "@a:x", "ed25519:K", &public));
        assert!(!verify(&object, "@b:x", "ed25519:K", &public));
        object["user_id"] = json!("@evil:x");
        assert!(!verify(&object, "@a:x", "ed25519:K", &public));
    }
}
