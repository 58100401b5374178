//! The parts of the spec's response shapes that the scenarios read. Unknown fields are ignored
//! and missing sections default to empty, since servers omit empty ones.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Default, Deserialize)]
pub struct SyncResponse {
    pub next_batch: String,
    #[serde(default)]
    pub rooms: Rooms,
}

#[derive(Debug, Default, Deserialize)]
pub struct Rooms {
    #[serde(default)]
    pub join: HashMap<String, JoinedRoom>,
}

#[derive(Debug, Default, Deserialize)]
pub struct JoinedRoom {
    #[serde(default)]
    pub timeline: Events,
    #[serde(default)]
    pub ephemeral: Events,
}

#[derive(Debug, Default, Deserialize)]
pub struct Events {
    #[serde(default)]
    pub events: Vec<Event>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Event {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub content: Value,
}

impl Event {
    pub fn body(&self) -> Option<&str> {
        self.content.get("body").and_then(Value::as_str)
    }

    /// Whether an `m.typing` event lists `user_id`.
    pub fn typing_has(&self, user_id: &str) -> bool {
        self.content
            .get("user_ids")
            .and_then(Value::as_array)
            .is_some_and(|ids| ids.iter().any(|u| u.as_str() == Some(user_id)))
    }
}

impl SyncResponse {
    /// The `m.room.message` bodies of one room's timeline.
    pub fn message_bodies<'a>(&'a self, room_id: &str) -> impl Iterator<Item = &'a str> {
        self.rooms
            .join
            .get(room_id)
            .into_iter()
            .flat_map(|r| r.timeline.events.iter())
            .filter(|e| e.kind == "m.room.message")
            .filter_map(Event::body)
    }

    /// The last `m.typing` event of one room, if this response carries one.
    pub fn typing<'a>(&'a self, room_id: &str) -> Option<&'a Event> {
        self.rooms
            .join
            .get(room_id)?
            .ephemeral
            .events
            .iter()
            .rfind(|e| e.kind == "m.typing")
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct MessagesPage {
    #[serde(default)]
    pub chunk: Vec<Event>,
    #[serde(default)]
    pub end: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_sync_response() {
        let js = r#"{"next_batch":"s9","account_data":{"events":[]},"rooms":{"join":{"!r:x":{
            "timeline":{"events":[
                {"type":"m.room.message","event_id":"$1","content":{"msgtype":"m.text","body":"hi"}},
                {"type":"m.room.member","content":{"membership":"join"}},
                {"type":"m.room.message","content":{"body":5}}],"limited":false},
            "ephemeral":{"events":[{"type":"m.typing","content":{"user_ids":["@a:x"]}}]}}}}}"#;
        let s: SyncResponse = serde_json::from_str(js).unwrap();
        assert_eq!(s.next_batch, "s9");
        assert_eq!(s.message_bodies("!r:x").collect::<Vec<_>>(), ["hi"]);
        assert_eq!(s.message_bodies("!other:x").count(), 0);
        let t = s.typing("!r:x").unwrap();
        assert!(t.typing_has("@a:x"));
        assert!(!t.typing_has("@b:x"));
    }

    #[test]
    fn empty_sections_may_be_missing() {
        let s: SyncResponse = serde_json::from_str(r#"{"next_batch":"x"}"#).unwrap();
        assert!(s.rooms.join.is_empty());
        let p: MessagesPage = serde_json::from_str(r#"{"chunk":[],"start":"a"}"#).unwrap();
        assert!(p.end.is_none());
    }
}
