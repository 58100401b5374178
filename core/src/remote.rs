//! What the core asks of other homeservers. The federation crate implements [`Remote`]; the
//! binary wires it in, so the core never depends on HTTP or on the federation crate.

use std::future::Future;
use std::pin::Pin;

use ruma::{OwnedRoomId, OwnedServerName, RoomAliasId, RoomId, ServerName, UserId};

use crate::rooms::RemoteJoin;
use crate::rooms::create::MemberProfile;
use crate::{Error, Result};

/// Media of another server as it streams in.
pub struct RemoteMedia {
    pub content_type: Option<String>,
    pub filename: Option<String>,
    pub body: Pin<Box<dyn tokio::io::AsyncRead + Send>>,
}

/// A knock made through another server: the signed event and the room's stripped state.
pub struct RemoteKnock {
    pub event_id: ruma::OwnedEventId,
    pub event: ruma::CanonicalJsonObject,
    pub room_state: Vec<serde_json::Value>,
}

pub type RemoteFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

pub trait Remote: Send + Sync + 'static {
    /// The profile of a user of another server, asked of that server.
    fn profile<'a>(&'a self, user: &'a UserId) -> RemoteFuture<'a, MemberProfile>;

    /// Joins `user` to a room this server is not in, through one of `servers` (`make_join`, sign,
    /// `send_join`), with `content` as the member event's content. Returns what the core needs
    /// to take the room in, every PDU of it checked.
    fn join_remote<'a>(
        &'a self,
        room_id: &'a RoomId,
        user: &'a UserId,
        servers: &'a [OwnedServerName],
        content: serde_json::Value,
    ) -> RemoteFuture<'a, RemoteJoin>;

    /// Turns down an invite to a room this server is not in, through one of `servers`
    /// (`make_leave`, sign, `send_leave`).
    /// Returns the leave event, as signed and sent.
    fn leave_remote<'a>(
        &'a self,
        _room_id: &'a RoomId,
        _user: &'a UserId,
        _servers: &'a [OwnedServerName],
    ) -> RemoteFuture<'a, (ruma::OwnedEventId, ruma::CanonicalJsonObject)> {
        Box::pin(async { Err(Error::not_found("Federation is disabled")) })
    }

    /// Knocks on a room this server is not in, through one of `servers` (`make_knock`, sign,
    /// `send_knock`).
    fn knock_remote<'a>(
        &'a self,
        _room_id: &'a RoomId,
        _user: &'a UserId,
        _servers: &'a [OwnedServerName],
        _content: serde_json::Value,
    ) -> RemoteFuture<'a, RemoteKnock> {
        Box::pin(async { Err(Error::not_found("Federation is disabled")) })
    }

    /// `GET /backfill` on the first of `servers` that answers: the events before (and
    /// including) `from`, at most `limit`, each checked (signatures, hashes), with the state at
    /// the prev events of theirs this server has no state for.
    fn backfill<'a>(
        &'a self,
        _room_id: &'a RoomId,
        _servers: &'a [OwnedServerName],
        _from: &'a [ruma::OwnedEventId],
        _limit: usize,
    ) -> RemoteFuture<'a, crate::rooms::history::Backfilled> {
        Box::pin(async { Err(Error::not_found("Federation is disabled")) })
    }

    /// Events for these servers were queued durably in the outbox (see [`crate::outbox`]): send
    /// them. Called after the commit; whatever is queued is also sent after a restart.
    fn outbound_ready(&self, _destinations: &[OwnedServerName]) {}

    /// Sends an ephemeral update (typing, a receipt) to these servers with their next
    /// transaction. Not durable: a restart may lose it, as it may lose typing itself.
    fn send_edu(&self, _destinations: &[OwnedServerName], _edu: serde_json::Value) {}

    /// `POST /user/keys/query` on `server` with `{"device_keys": …}`: its answer as JSON.
    fn query_keys<'a>(
        &'a self,
        _server: &'a ServerName,
        _body: serde_json::Value,
    ) -> RemoteFuture<'a, serde_json::Value> {
        Box::pin(async { Err(Error::not_found("Federation is disabled")) })
    }

    /// `GET /user/devices/{userId}` on the user's server: its answer as JSON.
    fn user_devices<'a>(&'a self, _user: &'a UserId) -> RemoteFuture<'a, serde_json::Value> {
        Box::pin(async { Err(Error::not_found("Federation is disabled")) })
    }

    /// `GET /media/download/{mediaId}` on the media's origin server.
    fn fetch_media<'a>(
        &'a self,
        _server: &'a ServerName,
        _media_id: &'a str,
    ) -> RemoteFuture<'a, RemoteMedia> {
        Box::pin(async { Err(Error::not_found("Federation is disabled")) })
    }

    /// `PUT /invite` (v2) on the invitee's server: the invite as that server signed it, its
    /// signature checked and the event otherwise unchanged.
    fn send_invite<'a>(
        &'a self,
        _server: &'a ServerName,
        _room_version: &'a ruma::RoomVersionId,
        _event_id: &'a ruma::EventId,
        _event: ruma::CanonicalJsonObject,
        _invite_room_state: Vec<serde_json::Value>,
    ) -> RemoteFuture<'a, ruma::CanonicalJsonObject> {
        Box::pin(async { Err(Error::forbidden("Federation is disabled")) })
    }

    /// `GET /query/directory` on the alias's server: the room and the servers to join through.
    fn query_directory<'a>(
        &'a self,
        _alias: &'a RoomAliasId,
    ) -> RemoteFuture<'a, (OwnedRoomId, Vec<OwnedServerName>)> {
        Box::pin(async { Err(Error::not_found("Federation is disabled")) })
    }

    /// `POST /publicRooms` on `server` with the client's paging and filter: its answer as JSON.
    fn public_rooms<'a>(
        &'a self,
        _server: &'a ServerName,
        _body: serde_json::Value,
    ) -> RemoteFuture<'a, serde_json::Value> {
        Box::pin(async { Err(Error::not_found("Federation is disabled")) })
    }

    /// `POST /user/keys/claim` on `server` with `{"one_time_keys": …}`: its answer as JSON.
    fn claim_keys<'a>(
        &'a self,
        _server: &'a ServerName,
        _body: serde_json::Value,
    ) -> RemoteFuture<'a, serde_json::Value> {
        Box::pin(async { Err(Error::not_found("Federation is disabled")) })
    }
}

/// A server that does not federate: every remote lookup fails with `NotFound`.
pub struct NoFederation;

impl Remote for NoFederation {
    fn profile<'a>(&'a self, _: &'a UserId) -> RemoteFuture<'a, MemberProfile> {
        Box::pin(async { Err(Error::not_found("Federation is disabled")) })
    }

    fn join_remote<'a>(
        &'a self,
        _: &'a RoomId,
        _: &'a UserId,
        _: &'a [OwnedServerName],
        _: serde_json::Value,
    ) -> RemoteFuture<'a, RemoteJoin> {
        Box::pin(async { Err(Error::not_found("Federation is disabled")) })
    }
}
