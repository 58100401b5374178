use hearth_core::rooms::create::{CreateRoom, Preset};
use ruma::api::client::room::{Visibility, create_room};
use serde_json::{Map, Value};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::Ruma;
use crate::rate_limit::{Action, Key};

fn object(raw: &impl serde::Serialize, what: &str) -> ApiResult<Map<String, Value>> {
    match serde_json::to_value(raw) {
        Ok(Value::Object(o)) => Ok(o),
        _ => Err(ApiError::bad_json(format!("{what} must be a JSON object"))),
    }
}

pub async fn create_room(
    state: AppState,
    req: Ruma<create_room::v3::Request>,
) -> ApiResult<create_room::v3::Response> {
    let user = req.session().user_id.clone();
    state.limit(Action::RoomCreation, [Key::User(user.to_string())])?;
    let b = req.body;
    let preset = b.preset.as_ref().map(|p| match p.as_str() {
        "public_chat" => Ok(Preset::PublicChat),
        "trusted_private_chat" => Ok(Preset::TrustedPrivateChat),
        "private_chat" => Ok(Preset::PrivateChat),
        other => Err(ApiError::bad_json(format!("Unknown preset {other}"))),
    });
    let preset = preset.transpose()?;
    let mut initial_state = Vec::new();
    for ev in &b.initial_state {
        let v: Value = ev
            .deserialize_as()
            .map_err(|e| ApiError::bad_json(e.to_string()))?;
        let kind = v["type"]
            .as_str()
            .ok_or_else(|| ApiError::bad_json("initial_state event without type"))?;
        let key = v["state_key"].as_str().unwrap_or_default();
        if !v["content"].is_object() {
            return Err(ApiError::bad_json(
                "initial_state event content must be an object",
            ));
        }
        initial_state.push((kind.to_owned(), key.to_owned(), v["content"].clone()));
    }
    // `room_alias_name`: `#name:ourserver`, taken before the room is made, as Synapse checks.
    let alias = match &b.room_alias_name {
        Some(name) => {
            let alias = ruma::OwnedRoomAliasId::try_from(format!(
                "#{name}:{}",
                state.core.config.server_name
            ))
            .map_err(|_| ApiError::invalid_param("Invalid room_alias_name"))?;
            if state.core.directory.resolve_local(&alias).is_ok() {
                return Err(ApiError::new(
                    axum::http::StatusCode::BAD_REQUEST,
                    "M_ROOM_IN_USE",
                    "Room alias already taken",
                ));
            }
            initial_state.push((
                "m.room.canonical_alias".into(),
                String::new(),
                serde_json::json!({ "alias": alias }),
            ));
            Some(alias)
        }
        None => None,
    };
    let creation_content = match &b.creation_content {
        Some(c) => Some(object(c, "creation_content")?),
        None => None,
    };
    let request = CreateRoom {
        preset,
        public: b.visibility == Visibility::Public,
        name: b.name.clone(),
        topic: b.topic.clone(),
        initial_state,
        invite: b.invite.clone(),
        is_direct: b.is_direct,
        power_level_content_override: match &b.power_level_content_override {
            Some(p) => Some(object(p, "power_level_content_override")?),
            None => None,
        },
        creation_content,
        room_version: b.room_version.clone(),
        power_levels: None,
    };
    let profile = state.core.profiles.get(&user)?;
    let room_id = state
        .core
        .rooms
        .create_room(&user, profile, request)
        .await?;
    if let Some(alias) = alias {
        state
            .core
            .directory
            .put_alias(&user, &alias, &room_id)
            .await?;
    }
    tracing::info!(%room_id, "room created");
    Ok(create_room::v3::Response::new(room_id))
}
