//! Joining a room this server is not in yet (the joining side of `make_join`/`send_join` v2):
//! ask a resident server for a join template, fill in our user's content, sign it, send it, and
//! check every PDU of the state and auth chain that comes back before the core takes the room in.

use hearth_core::rooms::RemoteJoin;
use hearth_core::rooms::version::SUPPORTED_ROOM_VERSIONS;
use hearth_core::rooms::version::VersionRules as _;
use http::Method;
use ruma::room_version_rules::RoomVersionRules;
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

/// The membership a `make_*` template is asked for.
#[derive(Clone, Copy)]
enum Membership {
    Join,
    Leave,
    Knock,
}

impl Membership {
    fn as_str(self) -> &'static str {
        match self {
            Membership::Join => "join",
            Membership::Leave => "leave",
            Membership::Knock => "knock",
        }
    }
}

/// A membership event of ours, made from a resident's template and signed.
struct SignedMember {
    version: RoomVersionId,
    rules: RoomVersionRules,
    event: CanonicalJsonObject,
    event_id: OwnedEventId,
}

/// Tries `attempt` through each server in turn; the first success wins. The last failure
/// becomes the core's error.
pub(crate) async fn through_servers<T, Fut>(
    servers: &[OwnedServerName],
    what: &str,
    room_id: &RoomId,
    mut attempt: impl FnMut(OwnedServerName) -> Fut,
) -> Result<T, hearth_core::Error>
where
    Fut: std::future::Future<Output = Result<T, FedError>>,
{
    let mut last = None;
    for server in servers {
        match attempt(server.clone()).await {
            Ok(done) => return Ok(done),
            Err(e) => {
                tracing::warn!(%room_id, %server, error = %e.message, "{what} through a server failed");
                last = Some(e);
            }
        }
    }
    let Some(e) = last else {
        return Err(hearth_core::Error::not_found(
            "No known servers for this room",
        ));
    };
    // A server's own refusal reaches the client as it came (its errcode, message and room
    // version), as Synapse passes it on.
    if let Some((status, body)) = &e.remote
        && status.is_client_error()
        && let Some(errcode) = body.get("errcode").and_then(Value::as_str)
    {
        return Err(hearth_core::Error::Remote {
            status: status.as_u16(),
            errcode: errcode.to_owned(),
            message: body
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("The remote server refused the request")
                .to_owned(),
            room_version: body
                .get("room_version")
                .and_then(Value::as_str)
                .map(str::to_owned),
        });
    }
    Err(match e.errcode {
        "M_FORBIDDEN" => hearth_core::Error::Forbidden(e.message),
        "M_NOT_FOUND" => hearth_core::Error::NotFound(e.message),
        "M_INCOMPATIBLE_ROOM_VERSION" | "M_UNSUPPORTED_ROOM_VERSION" => {
            hearth_core::Error::UnsupportedRoomVersion(e.message)
        }
        "M_BAD_JSON" => hearth_core::Error::BadJson(e.message),
        _ => hearth_core::Error::Unknown(e.message),
    })
}

impl Federation {
    pub(crate) async fn join_remote_room(
        &self,
        room_id: &RoomId,
        user: &UserId,
        servers: &[OwnedServerName],
        content: Value,
    ) -> Result<RemoteJoin, hearth_core::Error> {
        through_servers(servers, "joining", room_id, |server| {
            let content = &content;
            async move { self.join_via(&server, room_id, user, content).await }
        })
        .await
    }

    async fn join_via(
        &self,
        server: &ServerName,
        room_id: &RoomId,
        user: &UserId,
        content: &Value,
    ) -> Result<RemoteJoin, FedError> {
        let signed = self
            .signed_template(server, Membership::Join, room_id, user, content)
            .await?;
        let resp = match self
            .send_member_event(server, "v2/send_join", room_id, &signed)
            .await
        {
            Err(e) if crate::client::Client::is_unknown_endpoint(&e) => {
                // A server without v2: v1 answers `[200, {...}]`.
                let v1 = self
                    .send_member_event(server, "v1/send_join", room_id, &signed)
                    .await?;
                unwrap_v1(v1, "send_join")?
            }
            other => other?,
        };
        if !resp.is_object() {
            return Err(FedError::bad_json("the send_join answer is not an object"));
        }
        let SignedMember {
            version,
            rules,
            event: mut obj,
            event_id,
        } = signed;
        // The resident may have countersigned our event (restricted joins): take its copy when
        // it is still the same event.
        if let Some(Ok(CanonicalJsonValue::Object(theirs))) =
            resp.get("event").cloned().map(CanonicalJsonValue::try_from)
            && hearth_core::rooms::version::same_event(&theirs, &obj, &rules)
        {
            obj = theirs;
        }
        let state = self.checked_pdus(&version, &resp["state"]).await;
        let auth_chain = self.checked_pdus(&version, &resp["auth_chain"]).await;
        // The room's state must have its create event, and of the version agreed on.
        let create = state.iter().find(|(_, e)| {
            e.get("type").and_then(|t| t.as_str()) == Some("m.room.create")
                && e.get("state_key").and_then(|k| k.as_str()) == Some("")
        });
        let Some((_, create)) = create else {
            return Err(FedError::peer(format!(
                "{server}'s send_join answer has no m.room.create event in the room's state"
            )));
        };
        let create_version = match create.get("content") {
            Some(CanonicalJsonValue::Object(c)) => match c.get("room_version") {
                Some(CanonicalJsonValue::String(v)) => v.clone(),
                Some(_) => String::new(),
                None => "1".to_owned(),
            },
            _ => String::new(),
        };
        if create_version != version.as_str() {
            return Err(FedError::peer(format!(
                "{server}'s send_join answer has a create event of another room version"
            )));
        }
        Ok(RemoteJoin {
            room_version: version,
            event_id,
            event: obj,
            state,
            auth_chain,
        })
    }

    /// Asks `server` for a template (`make_join`, `make_leave` or `make_knock`) and makes it our
    /// event: it must be `user`'s member event in a room version this server supports; `content`
    /// goes under what the resident filled in (a restricted join's authorising user); then it is
    /// dated and signed.
    async fn signed_template(
        &self,
        server: &ServerName,
        membership: Membership,
        room_id: &RoomId,
        user: &UserId,
        content: &Value,
    ) -> Result<SignedMember, FedError> {
        let m = membership.as_str();
        let mut path = format!(
            "/_matrix/federation/v1/make_{m}/{}/{}",
            seg(room_id.as_str()),
            seg(user.as_str()),
        );
        // `make_leave` takes no versions: the leaving server is already in the room.
        if !matches!(membership, Membership::Leave) {
            let versions: Vec<String> = SUPPORTED_ROOM_VERSIONS
                .iter()
                .map(|v| format!("ver={v}"))
                .collect();
            path = format!("{path}?{}", versions.join("&"));
        }
        let template = self
            .client
            .request(server, Method::GET, &path, None)
            .await?;
        // A server from before room versions (MSC1813) names none: the room is of version 1.
        let version = template
            .get("room_version")
            .map_or(Some("1"), Value::as_str)
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
        let mut event = template["event"].clone();
        if !event.is_object()
            || event["type"] != "m.room.member"
            || event["sender"] != user.as_str()
            || event["state_key"] != user.as_str()
        {
            return Err(FedError::bad_json(format!(
                "make_{m} returned a template for something else"
            )));
        }
        if let (Some(ours), Some(theirs)) = (content.as_object(), event["content"].as_object_mut())
        {
            for (k, v) in ours {
                theirs.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        event["content"]["membership"] = m.into();
        event["origin_server_ts"] = hearth_core::util::now_ms().into();
        if event.get("origin").is_some() {
            event["origin"] = self.keys.server_name.as_str().into();
        }

        let mut obj = match CanonicalJsonValue::try_from(event) {
            Ok(CanonicalJsonValue::Object(o)) => o,
            _ => {
                return Err(FedError::bad_json(format!(
                    "make_{m} template is not canonical JSON"
                )));
            }
        };
        for k in ["event_id", "hashes", "signatures", "unsigned"] {
            obj.remove(k);
        }
        let event_id = rules
            .sign_event(
                self.keys.server_name.as_str(),
                &self.keys.key_pair,
                &mut obj,
            )
            .map_err(|e| FedError::bad_json(e.to_string()))?;
        Ok(SignedMember {
            version,
            rules,
            event: obj,
            event_id,
        })
    }

    /// Turns down an invite through one of `servers`: `make_leave`, sign, `send_leave` (v2).
    pub(crate) async fn leave_remote_room(
        &self,
        room_id: &RoomId,
        user: &UserId,
        servers: &[OwnedServerName],
    ) -> Result<(OwnedEventId, CanonicalJsonObject), hearth_core::Error> {
        through_servers(servers, "leaving", room_id, |server| async move {
            let signed = self
                .signed_template(&server, Membership::Leave, room_id, user, &Value::Null)
                .await?;
            let sent = match self
                .send_member_event(&server, "v2/send_leave", room_id, &signed)
                .await
            {
                Err(e) if crate::client::Client::is_unknown_endpoint(&e) => self
                    .send_member_event(&server, "v1/send_leave", room_id, &signed)
                    .await
                    .map(drop),
                other => other.map(drop),
            };
            sent.map(|()| (signed.event_id, signed.event))
        })
        .await
    }

    /// Knocks through one of `servers`: `make_knock`, sign, `send_knock`.
    pub(crate) async fn knock_remote_room(
        &self,
        room_id: &RoomId,
        user: &UserId,
        servers: &[OwnedServerName],
        content: Value,
    ) -> Result<hearth_core::remote::RemoteKnock, hearth_core::Error> {
        through_servers(servers, "knocking", room_id, |server| {
            let content = &content;
            async move {
                let signed = self
                    .signed_template(&server, Membership::Knock, room_id, user, content)
                    .await?;
                let answer = self
                    .send_member_event(&server, "v1/send_knock", room_id, &signed)
                    .await?;
                let room_state = answer["knock_room_state"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                Ok(hearth_core::remote::RemoteKnock {
                    event_id: signed.event_id,
                    event: signed.event,
                    room_state,
                })
            }
        })
        .await
    }

    /// `PUT /_matrix/federation/{endpoint}/{roomId}/{eventId}` with our signed event.
    async fn send_member_event(
        &self,
        server: &ServerName,
        endpoint: &str,
        room_id: &RoomId,
        signed: &SignedMember,
    ) -> Result<Value, FedError> {
        let path = format!(
            "/_matrix/federation/{endpoint}/{}/{}",
            seg(room_id.as_str()),
            seg(signed.event_id.as_str())
        );
        let body =
            serde_json::to_value(&signed.event).map_err(|e| FedError::bad_json(e.to_string()))?;
        self.client
            .request(server, Method::PUT, &path, Some(&body))
            .await
    }

    /// The PDUs of a list whose signatures and hashes check out. One that does not is left
    /// out and the join goes on, as Synapse does: the core then takes in only what the auth
    /// rules allow of what is left, and a room whose state lacks what it needs is refused.
    async fn checked_pdus(
        &self,
        version: &RoomVersionId,
        list: &Value,
    ) -> Vec<(OwnedEventId, CanonicalJsonObject)> {
        let mut out = Vec::new();
        for pdu in list.as_array().into_iter().flatten() {
            let Ok(CanonicalJsonValue::Object(obj)) = CanonicalJsonValue::try_from(pdu.clone())
            else {
                tracing::info!("a PDU of a send_join answer is not canonical JSON; left out");
                continue;
            };
            match check_signed_pdu(self, version, obj).await {
                Ok(checked) => out.push((checked.event_id, checked.json)),
                Err(e) => {
                    tracing::info!(error = %e, "a PDU of a send_join answer does not check out; left out");
                }
            }
        }
        out
    }
}

/// The body of a v1 membership answer, `[200, {...}]` (MSC1802 dropped the wrapper in v2).
pub(crate) fn unwrap_v1(answer: Value, what: &str) -> Result<Value, FedError> {
    match answer {
        Value::Array(mut a) if a.len() == 2 && a[0] == 200 && a[1].is_object() => Ok(a.remove(1)),
        _ => Err(FedError::bad_json(format!(
            "the v1 {what} answer is not [200, {{...}}]"
        ))),
    }
}
