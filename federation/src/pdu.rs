//! The first checks on a PDU from another server, in the spec's order: its format for the room
//! version, the signatures of every server that must sign it (keys fetched as needed), and its
//! content hash. A PDU whose hash does not match is redacted, not dropped. The auth rules come
//! after, against room state, in the core.

use hearth_core::rooms::version::VersionRules as _;
use ruma::signatures::{
    PublicKeyMap, Verified, required_server_signatures_to_verify_event, verify_event,
};
use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, RoomVersionId};

use crate::Federation;
use crate::error::FedError;

/// A PDU that passed the checks: its event id, and the JSON to keep (redacted where its content
/// hash failed).
pub struct CheckedPdu {
    pub event_id: OwnedEventId,
    pub json: CanonicalJsonObject,
    pub redacted: bool,
}

pub async fn check_signed_pdu(
    federation: &Federation,
    room_version: &RoomVersionId,
    pdu: CanonicalJsonObject,
) -> Result<CheckedPdu, FedError> {
    let rules = room_version
        .rules()
        .ok_or_else(|| FedError::bad_json(format!("unsupported room version {room_version}")))?;
    ruma::state_res::check_pdu_format(&pdu, &rules.event_format).map_err(|e| {
        // ruma 0.16 forgot to format its size limit into this message.
        FedError::bad_json(e.replace("{MAX_PDU_BYTES}", "65535"))
    })?;
    let event_id = rules
        .event_id_of(&pdu)
        .map_err(|e| FedError::bad_json(e.to_string()))?;

    let servers = required_server_signatures_to_verify_event(&pdu, &rules.signatures)
        .map_err(|e| FedError::bad_json(e.to_string()))?;
    let mut keys = PublicKeyMap::new();
    for server in servers {
        // A key id the cached document lacks (the server rotated its key) has it fetched again,
        // as for a request's signature.
        let key_id = match pdu.get("signatures") {
            Some(CanonicalJsonValue::Object(by_server)) => match by_server.get(server.as_str()) {
                Some(CanonicalJsonValue::Object(sigs)) => sigs.keys().next().cloned(),
                _ => None,
            },
            _ => None,
        };
        let set = match key_id {
            Some(id) => federation
                .key_cache
                .key_map_with(&federation.client, &federation.keys, &server, &id)
                .await?
                .remove(server.as_str())
                .unwrap_or_default(),
            None => {
                federation
                    .key_cache
                    .keys(&federation.client, &federation.keys, &server)
                    .await?
            }
        };
        keys.insert(server.to_string(), set);
    }
    match verify_event(&keys, &pdu, &rules) {
        Ok(Verified::All) => Ok(CheckedPdu {
            event_id,
            json: pdu,
            redacted: false,
        }),
        Ok(Verified::Signatures) => {
            let json = ruma::canonical_json::redact(pdu, &rules.redaction, None)
                .map_err(|e| FedError::bad_json(e.to_string()))?;
            Ok(CheckedPdu {
                event_id,
                json,
                redacted: true,
            })
        }
        Err(e) => Err(FedError::new(
            axum::http::StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
            format!("{event_id}: bad signature: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use hearth_core::Core;
    use hearth_core::rooms::NewEvent;
    use hearth_core::rooms::create::{CreateRoom, MemberProfile};
    use ruma::{CanonicalJsonValue, UserId};
    use serde_json::json;

    use super::*;
    use crate::FederationConfig;

    /// A signed event of a fresh room, and a `Federation` holding the key that signed it.
    async fn signed_event(version: RoomVersionId) -> (Arc<Federation>, CanonicalJsonObject) {
        let core = Core::in_memory("hearth.test".try_into().unwrap()).unwrap();
        let alice = UserId::parse("@alice:hearth.test").unwrap();
        let req = CreateRoom {
            room_version: Some(version),
            ..Default::default()
        };
        let room = core
            .rooms
            .create_room(&alice, MemberProfile::default(), req)
            .await
            .unwrap();
        let content = json!({ "msgtype": "m.text", "body": "hello" });
        let pdu = core
            .rooms
            .send(&room, &alice, NewEvent::message("m.room.message", content))
            .await
            .unwrap();
        let json = core
            .store
            .event_json(pdu.event_id.as_str())
            .unwrap()
            .unwrap();
        let obj = serde_json::from_slice(&json).unwrap();
        (
            Federation::new(core.keys.clone(), &FederationConfig::default()).unwrap(),
            obj,
        )
    }

    #[tokio::test]
    async fn genuine_events_pass_and_tampered_ones_do_not() {
        for version in hearth_core::rooms::version::SUPPORTED_ROOM_VERSIONS {
            let (fed, obj) = signed_event(version.clone()).await;
            let ok = check_signed_pdu(&fed, &version, obj.clone()).await.unwrap();
            assert!(!ok.redacted, "v{version}");

            // Changed content: the signature (over the redacted form) still holds, the content
            // hash does not, so the event is kept in redacted form.
            let mut changed = obj.clone();
            let content =
                CanonicalJsonValue::try_from(json!({ "msgtype": "m.text", "body": "evil" }))
                    .unwrap();
            changed.insert("content".into(), content);
            let redacted = check_signed_pdu(&fed, &version, changed).await.unwrap();
            assert!(redacted.redacted, "v{version}");
            assert!(
                redacted.json["content"].as_object().unwrap().is_empty(),
                "v{version}"
            );

            // A changed field that the signature covers: refused.
            let mut forged = obj.clone();
            forged.insert(
                "origin_server_ts".into(),
                CanonicalJsonValue::Integer(1u32.into()),
            );
            assert!(
                check_signed_pdu(&fed, &version, forged).await.is_err(),
                "v{version}"
            );

            // Versions 1 and 2: an event renamed as another server's, unsigned by it, is refused.
            if matches!(version, RoomVersionId::V1 | RoomVersionId::V2) {
                let mut renamed = obj.clone();
                renamed.insert("event_id".into(), "$other:elsewhere.test".to_owned().into());
                assert!(
                    check_signed_pdu(&fed, &version, renamed).await.is_err(),
                    "v{version}"
                );
            }

            // Malformed for the room version: refused.
            let mut malformed = obj;
            malformed.remove("auth_events");
            assert!(
                check_signed_pdu(&fed, &version, malformed).await.is_err(),
                "v{version}"
            );
        }
    }
}
