//! Joining a room this server is not in yet (the joining side of `make_join`/`send_join` v2):
//! ask a resident server for a join template, fill in our user's content, sign it, send it, and
//! check every PDU of the state and auth chain that comes back before the core takes the room in.

use hearth_core::config::SUPPORTED_ROOM_VERSIONS;
use hearth_core::rooms::RemoteJoin;
use http::Method;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedServerName, RoomId, RoomVersionId,
    ServerName, UserId,
};
use serde_json::Value;

use crate::Federation;
use crate::error::FedError;
use crate::pdu::check_signed_pdu;

/// A path segment, percent-encoded.
pub(crate) fn seg(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

impl Federation {
    pub(crate) async fn join_remote_room(
        &self,
        room_id: &RoomId,
        user: &UserId,
        servers: &[OwnedServerName],
        content: Value,
    ) -> Result<RemoteJoin, hearth_core::Error> {
        let mut last = None;
        for server in servers {
            match self.join_via(server, room_id, user, content.clone()).await {
                Ok(joined) => return Ok(joined),
                Err(e) => {
                    tracing::warn!(%room_id, %server, error = %e.message, "joining through a server failed");
                    last = Some(e);
                }
            }
        }
        let Some(e) = last else {
            return Err(hearth_core::Error::not_found(
                "No known servers for this room",
            ));
        };
        Err(match e.errcode {
            "M_FORBIDDEN" => hearth_core::Error::Forbidden(e.message),
            "M_NOT_FOUND" => hearth_core::Error::NotFound(e.message),
            "M_INCOMPATIBLE_ROOM_VERSION" | "M_UNSUPPORTED_ROOM_VERSION" => {
                hearth_core::Error::UnsupportedRoomVersion(e.message)
            }
            _ => hearth_core::Error::Unknown(e.message),
        })
    }

    async fn join_via(
        &self,
        server: &ServerName,
        room_id: &RoomId,
        user: &UserId,
        content: Value,
    ) -> Result<RemoteJoin, FedError> {
        let versions: String = SUPPORTED_ROOM_VERSIONS
            .iter()
            .map(|v| format!("&ver={v}"))
            .collect();
        let path = format!(
            "/_matrix/federation/v1/make_join/{}/{}?{}",
            seg(room_id.as_str()),
            seg(user.as_str()),
            versions.trim_start_matches('&')
        );
        let template = self
            .client
            .request(server, Method::GET, &path, None)
            .await?;
        let version = template["room_version"]
            .as_str()
            .and_then(|v| RoomVersionId::try_from(v).ok())
            .filter(|v| SUPPORTED_ROOM_VERSIONS.contains(v))
            .ok_or_else(|| {
                FedError::new(
                    http::StatusCode::BAD_REQUEST,
                    "M_UNSUPPORTED_ROOM_VERSION",
                    format!("{server} offered a room version this server does not support"),
                )
            })?;
        let rules = version.rules().expect("supported versions have rules");

        // The template's content may carry what the resident filled in (a restricted join's
        // authorising user); ours adds the profile.
        let mut event = template["event"].clone();
        if !event.is_object()
            || event["sender"] != user.as_str()
            || event["state_key"] != user.as_str()
        {
            return Err(FedError::bad_json(
                "make_join returned a template for someone else",
            ));
        }
        if let (Some(ours), Some(theirs)) = (content.as_object(), event["content"].as_object_mut())
        {
            for (k, v) in ours {
                theirs.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        event["content"]["membership"] = "join".into();
        event["origin_server_ts"] = hearth_core::util::now_ms().into();
        if event.get("origin").is_some() {
            event["origin"] = self.keys.server_name.as_str().into();
        }
        let (mut obj, event_id) = self.sign_template(event, &rules)?;

        let path = format!(
            "/_matrix/federation/v2/send_join/{}/{}",
            seg(room_id.as_str()),
            seg(event_id.as_str())
        );
        let body = serde_json::to_value(&obj).map_err(|e| FedError::bad_json(e.to_string()))?;
        let resp = self
            .client
            .request(server, Method::PUT, &path, Some(&body))
            .await?;
        // The resident may have countersigned our event (restricted joins): take its copy when
        // it is still the same event.
        if let Some(Ok(CanonicalJsonValue::Object(theirs))) =
            resp.get("event").cloned().map(CanonicalJsonValue::try_from)
            && ruma::signatures::reference_hash(&theirs, &rules)
                .is_ok_and(|h| event_id.as_str() == format!("${h}"))
        {
            obj = theirs;
        }
        let state = self.checked_pdus(&version, &resp["state"]).await?;
        let auth_chain = self.checked_pdus(&version, &resp["auth_chain"]).await?;
        Ok(RemoteJoin {
            room_version: version,
            event_id,
            event: obj,
            state,
            auth_chain,
        })
    }

    /// Signs a `make_join`/`make_leave` template as this server's event: answers it with its
    /// event id.
    fn sign_template(
        &self,
        event: Value,
        rules: &ruma::room_version_rules::RoomVersionRules,
    ) -> Result<(ruma::CanonicalJsonObject, OwnedEventId), FedError> {
        let mut obj = match CanonicalJsonValue::try_from(event) {
            Ok(CanonicalJsonValue::Object(o)) => o,
            _ => {
                return Err(FedError::bad_json(
                    "make_join template is not canonical JSON",
                ));
            }
        };
        for k in ["event_id", "hashes", "signatures", "unsigned"] {
            obj.remove(k);
        }
        ruma::signatures::hash_and_sign_event(
            self.keys.server_name.as_str(),
            &self.keys.key_pair,
            &mut obj,
            &rules.redaction,
        )
        .map_err(|e| FedError::bad_json(e.to_string()))?;
        let event_id = ruma::signatures::reference_hash(&obj, rules)
            .map_err(|e| FedError::bad_json(e.to_string()))
            .and_then(|h| {
                OwnedEventId::try_from(format!("${h}"))
                    .map_err(|e| FedError::bad_json(e.to_string()))
            })?;

        Ok((obj, event_id))
    }

    /// Turns down an invite through one of `servers`: `make_leave`, sign, `send_leave` (v2).
    pub(crate) async fn leave_remote_room(
        &self,
        room_id: &RoomId,
        user: &UserId,
        servers: &[OwnedServerName],
    ) -> Result<(), hearth_core::Error> {
        let mut last = None;
        for server in servers {
            match self.leave_via(server, room_id, user).await {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(hearth_core::Error::Unknown(last.map_or_else(
            || "No known servers for this room".to_owned(),
            |e| e.message,
        )))
    }

    async fn leave_via(
        &self,
        server: &ServerName,
        room_id: &RoomId,
        user: &UserId,
    ) -> Result<(), FedError> {
        let path = format!(
            "/_matrix/federation/v1/make_leave/{}/{}",
            seg(room_id.as_str()),
            seg(user.as_str())
        );
        let template = self
            .client
            .request(server, Method::GET, &path, None)
            .await?;
        let version = template["room_version"]
            .as_str()
            .and_then(|v| RoomVersionId::try_from(v).ok())
            .and_then(|v| v.rules())
            .ok_or_else(|| FedError::bad_json("make_leave named no room version we know"))?;
        let mut event = template["event"].clone();
        if !event.is_object()
            || event["sender"] != user.as_str()
            || event["state_key"] != user.as_str()
            || event["content"]["membership"] != "leave"
        {
            return Err(FedError::bad_json(
                "make_leave returned a template for something else",
            ));
        }
        event["origin_server_ts"] = hearth_core::util::now_ms().into();
        let (obj, event_id) = self.sign_template(event, &version)?;
        let path = format!(
            "/_matrix/federation/v2/send_leave/{}/{}",
            seg(room_id.as_str()),
            seg(event_id.as_str())
        );
        let body = serde_json::to_value(&obj).map_err(|e| FedError::bad_json(e.to_string()))?;
        self.client
            .request(server, Method::PUT, &path, Some(&body))
            .await?;
        Ok(())
    }

    /// Knocks through one of `servers`: `make_knock`, sign, `send_knock`.
    pub(crate) async fn knock_remote_room(
        &self,
        room_id: &RoomId,
        user: &UserId,
        servers: &[OwnedServerName],
        content: Value,
    ) -> Result<hearth_core::remote::RemoteKnock, hearth_core::Error> {
        let mut last = None;
        for server in servers {
            match self.knock_via(server, room_id, user, content.clone()).await {
                Ok(k) => return Ok(k),
                Err(e) => last = Some(e),
            }
        }
        let Some(e) = last else {
            return Err(hearth_core::Error::not_found(
                "No known servers for this room",
            ));
        };
        Err(match e.errcode {
            "M_FORBIDDEN" => hearth_core::Error::Forbidden(e.message),
            "M_NOT_FOUND" => hearth_core::Error::NotFound(e.message),
            _ => hearth_core::Error::Unknown(e.message),
        })
    }

    async fn knock_via(
        &self,
        server: &ServerName,
        room_id: &RoomId,
        user: &UserId,
        content: Value,
    ) -> Result<hearth_core::remote::RemoteKnock, FedError> {
        let versions: String = SUPPORTED_ROOM_VERSIONS
            .iter()
            .map(|v| format!("&ver={v}"))
            .collect();
        let path = format!(
            "/_matrix/federation/v1/make_knock/{}/{}?{}",
            seg(room_id.as_str()),
            seg(user.as_str()),
            versions.trim_start_matches('&')
        );
        let template = self
            .client
            .request(server, Method::GET, &path, None)
            .await?;
        let rules = template["room_version"]
            .as_str()
            .and_then(|v| RoomVersionId::try_from(v).ok())
            .filter(|v| SUPPORTED_ROOM_VERSIONS.contains(v))
            .and_then(|v| v.rules())
            .ok_or_else(|| FedError::bad_json("make_knock named no room version we support"))?;
        let mut event = template["event"].clone();
        if !event.is_object()
            || event["sender"] != user.as_str()
            || event["state_key"] != user.as_str()
            || event["content"]["membership"] != "knock"
        {
            return Err(FedError::bad_json(
                "make_knock returned a template for something else",
            ));
        }
        if let (Some(ours), Some(theirs)) = (content.as_object(), event["content"].as_object_mut())
        {
            for (k, v) in ours {
                theirs.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        event["origin_server_ts"] = hearth_core::util::now_ms().into();
        let (obj, event_id) = self.sign_template(event, &rules)?;
        let path = format!(
            "/_matrix/federation/v1/send_knock/{}/{}",
            seg(room_id.as_str()),
            seg(event_id.as_str())
        );
        let body = serde_json::to_value(&obj).map_err(|e| FedError::bad_json(e.to_string()))?;
        let answer = self
            .client
            .request(server, Method::PUT, &path, Some(&body))
            .await?;
        let room_state = answer["knock_room_state"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        Ok(hearth_core::remote::RemoteKnock {
            event_id,
            event: obj,
            room_state,
        })
    }

    /// Every PDU of a list, with its signatures and hashes checked; one bad PDU fails the join
    /// (a room whose state cannot be trusted is not taken in).
    async fn checked_pdus(
        &self,
        version: &RoomVersionId,
        list: &Value,
    ) -> Result<Vec<(OwnedEventId, CanonicalJsonObject)>, FedError> {
        let mut out = Vec::new();
        for pdu in list.as_array().into_iter().flatten() {
            let Ok(CanonicalJsonValue::Object(obj)) = CanonicalJsonValue::try_from(pdu.clone())
            else {
                return Err(FedError::bad_json("a state PDU is not canonical JSON"));
            };
            let checked = check_signed_pdu(self, version, obj).await?;
            out.push((checked.event_id, checked.json));
        }
        Ok(out)
    }
}
