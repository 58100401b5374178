//! Room versions: which ones this server speaks, and every way they differ.
//!
//! A room's version fixes its event id format, the shape of its PDUs, its redaction algorithm,
//! its auth rules and its state resolution algorithm. ruma's [`RoomVersionRules`] (one value per
//! version, held by each room's head) carries those differences, and ruma's algorithms (reference
//! hash, redaction, auth rules, state resolution v2) take it as a parameter. What ruma leaves to
//! the server (how a local event is shaped, what a create event holds, who ranks as a creator)
//! is read from the same value through [`VersionRules`] here, so that no code elsewhere asks
//! "which version is this?": it asks the rules a question.

use ruma::room_version_rules::{
    EventIdFormatVersion, EventsReferenceFormatVersion, RoomIdFormatVersion, RoomVersionRules,
};
use ruma::signatures::{Ed25519KeyPair, JsonError};
use ruma::{CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, RoomVersionId};
use serde_json::{Value, json};

use crate::{Error, Result};

/// Room versions this server can create, join and serve: every stable version.
pub const SUPPORTED_ROOM_VERSIONS: [RoomVersionId; 12] = [
    RoomVersionId::V1,
    RoomVersionId::V2,
    RoomVersionId::V3,
    RoomVersionId::V4,
    RoomVersionId::V5,
    RoomVersionId::V6,
    RoomVersionId::V7,
    RoomVersionId::V8,
    RoomVersionId::V9,
    RoomVersionId::V10,
    RoomVersionId::V11,
    RoomVersionId::V12,
];

pub fn is_supported(version: &RoomVersionId) -> bool {
    SUPPORTED_ROOM_VERSIONS.contains(version)
}

/// The rules of a version this server speaks; `M_UNSUPPORTED_ROOM_VERSION` for any other.
pub fn supported_rules(version: &RoomVersionId) -> Result<RoomVersionRules> {
    if !is_supported(version) {
        return Err(Error::UnsupportedRoomVersion(format!(
            "This server does not support room version {version}"
        )));
    }
    version
        .rules()
        .ok_or_else(|| Error::internal("supported versions have rules"))
}

/// What a room's version means for the events this server makes and reads, beyond what ruma's
/// algorithms apply by themselves.
pub trait VersionRules {
    /// A redaction names its target in `content.redacts` (v11 on) rather than at the top level.
    fn redacts_in_content(&self) -> bool;
    /// The create event names its `creator` (before v11, where the sender is the creator).
    fn creator_in_create(&self) -> bool;
    /// The room's creators (the create event's sender and `additional_creators`) rank above
    /// every power level and are left out of the power levels event (v12 on).
    fn creators_privileged(&self) -> bool;
    /// The room id is the create event's reference hash, and the create event has no `room_id`
    /// (v12 on).
    fn room_named_by_create(&self) -> bool;
    /// Events are named by their origin server (`$opaque:server`, carried in the PDU's
    /// `event_id`) rather than by their reference hash (v1 and v2).
    fn origin_names_events(&self) -> bool;
    /// `prev_events` and `auth_events` are `[event id, {"sha256": content hash}]` pairs
    /// rather than bare event ids (v1 and v2).
    fn references_carry_hashes(&self) -> bool;
    /// The id of a signed event: the PDU's own `event_id` (v1, v2), else `$` and its reference
    /// hash, in standard base64 (v3) or URL-safe base64 (v4 on).
    fn event_id_of(&self, signed: &CanonicalJsonObject) -> Result<OwnedEventId>;
    /// `prev_events` or `auth_events` as the version writes them, from each event's id and
    /// content hash (`hashes.sha256`, when known).
    fn event_refs(&self, refs: &[(OwnedEventId, Option<String>)]) -> Value;
    /// Names (v1, v2: a fresh `$opaque:server_name` id in `event_id`), hashes and signs an
    /// event of this version as `server_name`; its id.
    fn sign_event(
        &self,
        server_name: &str,
        key_pair: &Ed25519KeyPair,
        obj: &mut CanonicalJsonObject,
    ) -> Result<OwnedEventId>;
}

impl VersionRules for RoomVersionRules {
    fn redacts_in_content(&self) -> bool {
        self.redaction.content_field_redacts
    }
    fn creator_in_create(&self) -> bool {
        !self.authorization.use_room_create_sender
    }
    fn creators_privileged(&self) -> bool {
        self.authorization.explicitly_privilege_room_creators
    }
    fn room_named_by_create(&self) -> bool {
        matches!(self.room_id_format, RoomIdFormatVersion::V2)
    }
    fn origin_names_events(&self) -> bool {
        matches!(self.event_id_format, EventIdFormatVersion::V1)
    }
    fn references_carry_hashes(&self) -> bool {
        matches!(
            self.events_reference_format,
            EventsReferenceFormatVersion::V1
        )
    }
    fn event_id_of(&self, signed: &CanonicalJsonObject) -> Result<OwnedEventId> {
        if self.origin_names_events() {
            return match signed.get("event_id") {
                Some(CanonicalJsonValue::String(id)) => OwnedEventId::try_from(id.as_str())
                    .map_err(|e| Error::BadJson(format!("event_id: {e}"))),
                _ => Err(Error::BadJson("the event has no event_id".into())),
            };
        }
        let hash = ruma::signatures::reference_hash(signed, self).map_err(json_error)?;
        OwnedEventId::try_from(format!("${hash}")).map_err(Error::internal)
    }
    fn event_refs(&self, refs: &[(OwnedEventId, Option<String>)]) -> Value {
        if self.references_carry_hashes() {
            refs.iter()
                .map(|(id, hash)| match hash {
                    Some(h) => json!([id, { "sha256": h }]),
                    None => json!([id, {}]),
                })
                .collect()
        } else {
            refs.iter().map(|(id, _)| json!(id)).collect()
        }
    }
    fn sign_event(
        &self,
        server_name: &str,
        key_pair: &Ed25519KeyPair,
        obj: &mut CanonicalJsonObject,
    ) -> Result<OwnedEventId> {
        if self.origin_names_events() {
            let id = format!("${}:{server_name}", crate::util::random_string(18));
            obj.insert("event_id".into(), CanonicalJsonValue::String(id));
        } else {
            obj.remove("event_id");
        }
        ruma::signatures::hash_and_sign_event(server_name, key_pair, obj, &self.redaction)
            .map_err(json_error)?;
        self.event_id_of(obj)
    }
}

fn json_error(e: JsonError) -> Error {
    match e {
        JsonError::PduTooLarge => Error::TooLarge("event is larger than 65536 bytes".into()),
        other => Error::BadJson(other.to_string()),
    }
}

/// The event ids of a PDU's `prev_events` or `auth_events`, in either version's form (bare ids,
/// or `[id, hashes]` pairs); entries of neither form are left out.
pub fn referenced_ids(refs: Option<&CanonicalJsonValue>) -> Vec<OwnedEventId> {
    let Some(CanonicalJsonValue::Array(refs)) = refs else {
        return Vec::new();
    };
    refs.iter()
        .filter_map(|r| match r {
            CanonicalJsonValue::String(id) => Some(id.as_str()),
            CanonicalJsonValue::Array(pair) => match pair.first() {
                Some(CanonicalJsonValue::String(id)) => Some(id.as_str()),
                _ => None,
            },
            _ => None,
        })
        .filter_map(|id| <&EventId>::try_from(id).ok().map(ToOwned::to_owned))
        .collect()
}

/// Whether two copies of an event are the same event (signatures and unsigned data aside):
/// their reference hashes agree, in every version (in v1 and v2 the id alone proves nothing).
pub fn same_event(
    a: &CanonicalJsonObject,
    b: &CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> bool {
    match (
        ruma::signatures::reference_hash(a, rules),
        ruma::signatures::reference_hash(b, rules),
    ) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// A power level as a number. Before version 10 a level may also be a string holding an
/// integer (`"50"`); from 10 on the auth rules refuse those, so reading them everywhere is safe.
pub fn power_level(value: &Value) -> Option<i64> {
    value
        .as_i64()
        .or_else(|| value.as_str()?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stable_version_from_3_is_supported_with_its_rules() {
        for v in ["3", "4", "5", "6", "7", "8", "9", "10", "11", "12"] {
            let id = RoomVersionId::try_from(v).unwrap();
            assert!(supported_rules(&id).is_ok(), "version {v}");
        }
        for v in ["0", "13", "org.matrix.msc2870"] {
            let id = RoomVersionId::try_from(v).unwrap();
            assert!(
                matches!(supported_rules(&id), Err(Error::UnsupportedRoomVersion(_))),
                "version {v}"
            );
        }
    }

    #[test]
    fn the_rules_answer_per_version() {
        let rules = |v: &str| RoomVersionId::try_from(v).unwrap().rules().unwrap();
        for v in ["3", "9", "10"] {
            assert!(!rules(v).redacts_in_content(), "{v}");
            assert!(rules(v).creator_in_create(), "{v}");
        }
        for v in ["11", "12"] {
            assert!(rules(v).redacts_in_content(), "{v}");
            assert!(!rules(v).creator_in_create(), "{v}");
        }
        assert!(!rules("11").creators_privileged() && rules("12").creators_privileged());
        assert!(!rules("11").room_named_by_create() && rules("12").room_named_by_create());
    }

    #[test]
    fn string_power_levels_read_as_numbers() {
        assert_eq!(power_level(&serde_json::json!(50)), Some(50));
        assert_eq!(power_level(&serde_json::json!("50")), Some(50));
        assert_eq!(power_level(&serde_json::json!(" -1 ")), Some(-1));
        assert_eq!(power_level(&serde_json::json!("fifty")), None);
        assert_eq!(power_level(&serde_json::json!(null)), None);
    }

    /// The spec's minimal event (Appendices, "Signing events"): its content hash is the same in
    /// every version; its reference hash is unpadded base64, standard in v3, URL-safe from v4.
    #[test]
    fn content_and_reference_hashes_of_the_spec_example() {
        let event = serde_json::json!({
            "room_id": "!x:domain",
            "sender": "@a:domain",
            "origin": "domain",
            "origin_server_ts": 1000000,
            "signatures": {},
            "hashes": {},
            "type": "X",
            "content": {},
            "prev_events": [],
            "auth_events": [],
            "depth": 3,
            "unsigned": { "age_ts": 1000000 }
        });
        let mut obj: CanonicalJsonObject = serde_json::from_value(event).unwrap();
        assert_eq!(
            ruma::signatures::content_hash(&obj).unwrap().encode(),
            "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"
        );
        let mut ids = std::collections::HashSet::new();
        for v in &SUPPORTED_ROOM_VERSIONS {
            let rules = v.rules().unwrap();
            if rules.origin_names_events() {
                // Versions 1 and 2: the id is the one the event carries.
                assert!(rules.event_id_of(&obj).is_err(), "{v}");
                let mut named = obj.clone();
                named.insert("event_id".into(), "$0:domain".to_owned().into());
                assert_eq!(rules.event_id_of(&named).unwrap(), "$0:domain", "{v}");
                continue;
            }
            let id = rules.event_id_of(&obj).unwrap();
            let hash = id.as_str().strip_prefix('$').unwrap();
            assert_eq!(hash.len(), 43, "{v}");
            let alphabet = if *v == RoomVersionId::V3 { "+/" } else { "-_" };
            assert!(
                hash.chars()
                    .all(|c| c.is_ascii_alphanumeric() || alphabet.contains(c)),
                "{v}: {id}"
            );
            ids.insert(hash.replace(['+', '-'], "x").replace(['/', '_'], "y"));
        }
        // `origin` goes in the redaction of v11 on, which changes the hash: two hashes in all.
        assert_eq!(ids.len(), 2, "{ids:?}");
        // A v3+ event carries no `event_id`; one that does is named by its hash all the same.
        obj.insert("event_id".into(), "$0:domain".to_owned().into());
        let v4 = RoomVersionId::V4.rules().unwrap();
        assert_ne!(v4.event_id_of(&obj).unwrap(), "$0:domain");
    }

    /// Versions 1 and 2 name an event `$opaque:origin` inside the signed event and reference
    /// others as `[id, hashes]` pairs; later versions by bare ids. Either form reads back.
    #[test]
    fn version_1_and_2_events_carry_their_ids_and_hashed_references() {
        let key = ruma::signatures::Ed25519KeyPair::generate();
        let key = Ed25519KeyPair::from_der(&key, "1".into()).unwrap();
        let refs = [
            (
                OwnedEventId::try_from("$a:x").unwrap(),
                Some("h".to_owned()),
            ),
            (OwnedEventId::try_from("$b:x").unwrap(), None),
        ];
        for v in &SUPPORTED_ROOM_VERSIONS {
            let rules = v.rules().unwrap();
            let written = rules.event_refs(&refs);
            let old = matches!(v, RoomVersionId::V1 | RoomVersionId::V2);
            let expected = if old {
                json!([["$a:x", { "sha256": "h" }], ["$b:x", {}]])
            } else {
                json!(["$a:x", "$b:x"])
            };
            assert_eq!(written, expected, "{v}");
            let read = referenced_ids(Some(&CanonicalJsonValue::try_from(written).unwrap()));
            assert_eq!(read, vec![refs[0].0.clone(), refs[1].0.clone()], "{v}");

            let mut obj: CanonicalJsonObject = serde_json::from_value(json!({
                "type": "m.room.message", "room_id": "!r:hs", "sender": "@a:hs",
                "content": { "body": "hi" }, "depth": 2, "origin_server_ts": 5,
                "prev_events": rules.event_refs(&refs[..1]),
                "auth_events": rules.event_refs(&refs[1..]),
                "event_id": "$stale:elsewhere",
            }))
            .unwrap();
            let id = rules.sign_event("hs", &key, &mut obj).unwrap();
            assert_eq!(rules.event_id_of(&obj).unwrap(), id, "{v}");
            assert_eq!(obj.contains_key("event_id"), old, "{v}");
            assert_eq!(id.as_str().ends_with(":hs"), old, "{v}: {id}");
            let mut keys = ruma::signatures::PublicKeyMap::new();
            let mut set = ruma::signatures::PublicKeySet::new();
            set.insert(
                "ed25519:1".into(),
                ruma::serde::Base64::new(key.public_key().to_vec()),
            );
            keys.insert("hs".into(), set);
            assert_eq!(
                ruma::signatures::verify_event(&keys, &obj, &rules).unwrap(),
                ruma::signatures::Verified::All,
                "{v}"
            );
        }
    }

    /// What each version's redaction algorithm keeps (the spec's room version pages).
    #[test]
    fn redaction_keeps_what_each_version_says() {
        let redact = |v: &RoomVersionId, ev: Value| -> Value {
            let obj: CanonicalJsonObject = serde_json::from_value(ev).unwrap();
            let rules = v.rules().unwrap();
            let out = ruma::canonical_json::redact(obj, &rules.redaction, None).unwrap();
            serde_json::to_value(out).unwrap()
        };
        let ev = |kind: &str, content: Value| {
            serde_json::json!({
                "type": kind, "state_key": "", "content": content, "sender": "@a:x",
                "room_id": "!r:x", "origin": "x", "membership": "join", "prev_state": [],
                "origin_server_ts": 1, "depth": 1, "prev_events": [], "auth_events": [],
                "hashes": {"sha256": "h"}, "signatures": {},
            })
        };
        for v in &SUPPORTED_ROOM_VERSIONS {
            let n: u32 = v.as_str().parse().unwrap();
            let create = redact(
                v,
                ev(
                    "m.room.create",
                    serde_json::json!({"creator": "@a:x", "m.federate": false}),
                ),
            );
            let kept_create = if n >= 11 {
                serde_json::json!({"creator": "@a:x", "m.federate": false})
            } else {
                serde_json::json!({"creator": "@a:x"})
            };
            assert_eq!(create["content"], kept_create, "{v}");
            assert_eq!(create.get("origin").is_some(), n < 11, "{v}");
            assert_eq!(create.get("membership").is_some(), n < 11, "{v}");

            let pl = redact(
                v,
                ev(
                    "m.room.power_levels",
                    serde_json::json!({"ban": 50, "invite": 0, "other": 1}),
                ),
            );
            assert_eq!(pl["content"].get("invite").is_some(), n >= 11, "{v}");
            assert!(pl["content"].get("other").is_none(), "{v}");

            let jr = redact(
                v,
                ev(
                    "m.room.join_rules",
                    serde_json::json!({"join_rule": "restricted", "allow": []}),
                ),
            );
            assert_eq!(jr["content"].get("allow").is_some(), n >= 8, "{v}");

            let member = redact(
                v,
                ev(
                    "m.room.member",
                    serde_json::json!({
                        "membership": "join", "join_authorised_via_users_server": "@b:x", "displayname": "A",
                    }),
                ),
            );
            assert_eq!(
                member["content"]
                    .get("join_authorised_via_users_server")
                    .is_some(),
                n >= 9,
                "{v}"
            );
            assert!(member["content"].get("displayname").is_none(), "{v}");

            let aliases = redact(
                v,
                ev("m.room.aliases", serde_json::json!({"aliases": ["#a:x"]})),
            );
            assert_eq!(aliases["content"].get("aliases").is_some(), n < 6, "{v}");

            let mut redaction = ev(
                "m.room.redaction",
                serde_json::json!({"redacts": "$e", "reason": "r"}),
            );
            redaction.as_object_mut().unwrap().remove("state_key");
            let redaction = redact(v, redaction);
            assert_eq!(
                redaction["content"].get("redacts").is_some(),
                n >= 11,
                "{v}"
            );
            assert!(redaction["content"].get("reason").is_none(), "{v}");
        }
    }
}
