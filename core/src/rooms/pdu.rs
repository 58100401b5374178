//! A persistent data unit: one signed event of a room's graph, parsed once and shared.

use std::sync::Arc;

use ruma::events::TimelineEventType;
use ruma::{
    CanonicalJsonObject, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId,
    OwnedUserId, RoomId, UInt, UserId,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue as RawJsonValue;

use crate::{Error, Result};

#[derive(Clone, Debug)]
pub struct Pdu {
    pub event_id: OwnedEventId,
    /// The room, also for a v12 create event whose JSON carries none (its id derives from it).
    pub room_id: OwnedRoomId,
    room_id_in_json: bool,
    pub sender: OwnedUserId,
    pub kind: TimelineEventType,
    pub state_key: Option<String>,
    pub content: Box<RawJsonValue>,
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    pub prev_events: Vec<OwnedEventId>,
    pub auth_events: Vec<OwnedEventId>,
    pub depth: u64,
    redacts: Option<OwnedEventId>,
    /// `hashes.sha256`: what room versions 1 and 2 write beside a reference to this event.
    pub content_hash: Option<String>,
}

#[derive(Deserialize)]
struct Fields {
    room_id: Option<OwnedRoomId>,
    sender: OwnedUserId,
    #[serde(rename = "type")]
    kind: TimelineEventType,
    state_key: Option<String>,
    content: Box<RawJsonValue>,
    origin_server_ts: MilliSecondsSinceUnixEpoch,
    #[serde(default)]
    prev_events: Vec<EventRef>,
    #[serde(default)]
    auth_events: Vec<EventRef>,
    depth: UInt,
    redacts: Option<OwnedEventId>,
    hashes: Option<Hashes>,
}

/// A reference to another event: its id (v3 on) or `[id, hashes]` (v1, v2).
#[derive(Deserialize)]
#[serde(untagged)]
enum EventRef {
    Id(OwnedEventId),
    WithHashes(OwnedEventId, serde::de::IgnoredAny),
}

impl EventRef {
    fn id(self) -> OwnedEventId {
        match self {
            Self::Id(id) | Self::WithHashes(id, _) => id,
        }
    }
}

#[derive(Deserialize)]
struct Hashes {
    sha256: Option<String>,
}

#[derive(Deserialize)]
struct RedactsInContent {
    redacts: Option<OwnedEventId>,
}

impl Pdu {
    /// Parses a PDU from its JSON; `room_id` is used where the JSON has none (v12 create).
    pub fn parse(event_id: OwnedEventId, json: &[u8], room_id: Option<&RoomId>) -> Result<Self> {
        let f: Fields = serde_json::from_slice(json).map_err(|e| Error::BadJson(e.to_string()))?;
        let room_id_in_json = f.room_id.is_some();
        let room_id = match (f.room_id, room_id) {
            (Some(r), _) => r,
            (None, Some(r)) => r.to_owned(),
            (None, None) => derived_room_id(&event_id)?,
        };
        let redacts = match f.redacts {
            Some(r) => Some(r),
            None if f.kind == TimelineEventType::RoomRedaction => {
                serde_json::from_str::<RedactsInContent>(f.content.get())
                    .ok()
                    .and_then(|c| c.redacts)
            }
            None => None,
        };
        Ok(Self {
            event_id,
            room_id,
            room_id_in_json,
            sender: f.sender,
            kind: f.kind,
            state_key: f.state_key,
            content: f.content,
            origin_server_ts: f.origin_server_ts,
            prev_events: f.prev_events.into_iter().map(EventRef::id).collect(),
            auth_events: f.auth_events.into_iter().map(EventRef::id).collect(),
            depth: f.depth.into(),
            redacts,
            content_hash: f.hashes.and_then(|h| h.sha256),
        })
    }

    pub fn from_canonical(event_id: OwnedEventId, obj: &CanonicalJsonObject) -> Result<Self> {
        let bytes = serde_json::to_vec(obj)?;
        Self::parse(event_id, &bytes, None)
    }

    pub fn is_state(&self) -> bool {
        self.state_key.is_some()
    }

    pub fn content_value(&self) -> serde_json::Value {
        serde_json::from_str(self.content.get()).unwrap_or_default()
    }

    /// `content.membership` of a member event.
    pub fn membership(&self) -> Option<String> {
        #[derive(Deserialize)]
        struct M {
            membership: String,
        }
        if self.kind != TimelineEventType::RoomMember {
            return None;
        }
        serde_json::from_str::<M>(self.content.get())
            .ok()
            .map(|m| m.membership)
    }

    /// The event as clients see it (the "ClientEvent" format).
    pub fn to_client(&self, opts: &ClientFormat<'_>) -> Box<RawJsonValue> {
        #[derive(Serialize)]
        struct Unsigned<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            age: Option<i64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            transaction_id: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            prev_content: Option<&'a RawJsonValue>,
            #[serde(skip_serializing_if = "Option::is_none")]
            replaces_state: Option<&'a str>,
            #[serde(rename = "m.relations", skip_serializing_if = "Option::is_none")]
            relations: Option<&'a RawJsonValue>,
            #[serde(skip_serializing_if = "Option::is_none")]
            redacted_because: Option<&'a RawJsonValue>,
            /// The id of `redacted_because`, as Synapse writes beside it.
            #[serde(skip_serializing_if = "Option::is_none")]
            redacted_by: Option<OwnedEventId>,
            #[serde(skip_serializing_if = "Option::is_none")]
            membership: Option<&'a str>,
        }
        #[derive(serde::Deserialize)]
        struct IdOnly {
            event_id: OwnedEventId,
        }
        #[derive(Serialize)]
        struct ClientEvent<'a> {
            content: &'a RawJsonValue,
            event_id: &'a EventId,
            origin_server_ts: MilliSecondsSinceUnixEpoch,
            #[serde(skip_serializing_if = "Option::is_none")]
            room_id: Option<&'a RoomId>,
            sender: &'a UserId,
            #[serde(skip_serializing_if = "Option::is_none")]
            state_key: Option<&'a str>,
            #[serde(rename = "type")]
            kind: &'a TimelineEventType,
            #[serde(skip_serializing_if = "Option::is_none")]
            redacts: Option<&'a EventId>,
            unsigned: Unsigned<'a>,
        }
        let now = crate::util::now_ms() as i64;
        let ev = ClientEvent {
            content: &self.content,
            event_id: &self.event_id,
            origin_server_ts: self.origin_server_ts,
            room_id: opts.with_room_id.then_some(&*self.room_id),
            sender: &self.sender,
            state_key: self.state_key.as_deref(),
            kind: &self.kind,
            redacts: self.redacts.as_deref(),
            unsigned: Unsigned {
                age: Some((now - i64::from(self.origin_server_ts.0)).max(0)),
                transaction_id: opts.transaction_id,
                prev_content: opts.prev_content,
                replaces_state: opts.replaces_state,
                relations: opts.relations,
                redacted_because: opts.redacted_because,
                redacted_by: opts
                    .redacted_because
                    .and_then(|r| serde_json::from_str::<IdOnly>(r.get()).ok())
                    .map(|r| r.event_id),
                membership: opts.membership,
            },
        };
        serde_json::value::to_raw_value(&ev).expect("client events serialise")
    }
}

/// How one event is shown to one client.
#[derive(Default)]
pub struct ClientFormat<'a> {
    pub with_room_id: bool,
    /// Set when the viewing device sent the event.
    pub transaction_id: Option<&'a str>,
    pub prev_content: Option<&'a RawJsonValue>,
    pub replaces_state: Option<&'a str>,
    /// Bundled aggregations (`unsigned["m.relations"]`).
    pub relations: Option<&'a RawJsonValue>,
    /// The redaction that pruned the event, in client format.
    pub redacted_because: Option<&'a RawJsonValue>,
    /// The reader's membership of the room at the event (after it): `unsigned.membership`.
    pub membership: Option<&'a str>,
}

/// Room versions from 12 on name a room after the reference hash of its create event.
pub fn derived_room_id(create_event_id: &EventId) -> Result<OwnedRoomId> {
    let hash = create_event_id.as_str().trim_start_matches('$');
    RoomId::parse(format!("!{hash}")).map_err(Error::internal)
}

impl ruma::state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }
    fn room_id(&self) -> Option<&RoomId> {
        self.room_id_in_json.then_some(&*self.room_id)
    }
    fn sender(&self) -> &UserId {
        &self.sender
    }
    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }
    fn event_type(&self) -> &TimelineEventType {
        &self.kind
    }
    fn content(&self) -> &RawJsonValue {
        &self.content
    }
    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }
    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_events.iter())
    }
    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_events.iter())
    }
    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts.as_ref()
    }
    fn rejected(&self) -> bool {
        false
    }
}

pub type PduRef = Arc<Pdu>;

/// Fuzzing: a PDU from a peer is any JSON. The checks a peer's event goes through before the
/// auth rules (format, reference hash, redaction, parsing) end in a value or an error for any
/// object, in every supported room version, and never panic.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;
    use ruma::CanonicalJsonValue;
    use serde_json::{Value, json};

    use super::*;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| json!(f)),
            "[a-z$!@:._0-9]{0,24}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                prop::collection::btree_map("[a-z_]{1,10}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// An object with a PDU's keys, each holding anything.
    fn pdu_like() -> impl Strategy<Value = Value> {
        let keys = [
            "type",
            "room_id",
            "sender",
            "state_key",
            "content",
            "origin_server_ts",
            "prev_events",
            "auth_events",
            "depth",
            "hashes",
            "signatures",
            "redacts",
            "unsigned",
        ];
        prop::collection::vec(json_value(), keys.len()).prop_map(move |values| {
            Value::Object(
                keys.iter()
                    .zip(values)
                    .map(|(k, v)| ((*k).to_owned(), v))
                    .collect(),
            )
        })
    }

    fn check(value: Value) {
        let Ok(CanonicalJsonValue::Object(obj)) = CanonicalJsonValue::try_from(value) else {
            return;
        };
        for version in super::super::version::SUPPORTED_ROOM_VERSIONS {
            let rules = version.rules().expect("supported");
            let _ = ruma::state_res::check_pdu_format(&obj, &rules.event_format);
            if let Ok(hash) = ruma::signatures::reference_hash(&obj, &rules)
                && let Ok(id) = OwnedEventId::try_from(format!("${hash}"))
            {
                let _ = Pdu::from_canonical(id, &obj);
            }
            let _ = ruma::canonical_json::redact(obj.clone(), &rules.redaction, None);
        }
    }

    proptest! {
        #[test]
        fn any_object_is_checked_without_panic(value in json_value()) {
            check(value);
        }

        #[test]
        fn any_pdu_shaped_object_is_checked_without_panic(value in pdu_like()) {
            check(value);
        }

        #[test]
        fn any_bytes_parse_or_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let id = OwnedEventId::try_from("$fuzz").expect("event id");
            let _ = Pdu::parse(id, &bytes, None);
        }
    }
}
