//! Membership changes of local users: join, leave, invite, kick, ban, unban, forget.
//! Whether a change is allowed is decided by the room version's auth rules, not here; this module
//! only shapes the member events and the few cases the API treats specially.

use hearth_storage::WriteOp;
use ruma::{OwnedRoomId, RoomId, UserId};
use serde_json::{Value, json};

use super::create::MemberProfile;
use super::version::{VersionRules, power_level};
use super::{NewEvent, Rooms, StateMap};
use crate::{Error, Result};

fn member_content(
    membership: &str,
    profile: Option<&MemberProfile>,
    reason: Option<&str>,
) -> Value {
    let mut c = json!({ "membership": membership });
    if let Some(p) = profile {
        if let Some(d) = &p.displayname {
            c["displayname"] = json!(d);
        }
        if let Some(a) = &p.avatar_url {
            c["avatar_url"] = json!(a);
        }
    }
    if let Some(r) = reason {
        c["reason"] = json!(r);
    }
    c
}

impl Rooms {
    async fn send_member(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        content: Value,
    ) -> Result<()> {
        self.send(
            room_id,
            sender,
            NewEvent::state("m.room.member", target.as_str(), content),
        )
        .await?;
        Ok(())
    }

    /// Joins a room: locally when this server is in it, otherwise through one of `via` (or the
    /// server in the room id) over federation.
    /// Joins `user` to the room. `requested` is what the client asked to have in its member
    /// event (a `reason`, or content of its own, which Synapse keeps too); the membership and
    /// the profile take precedence over it.
    pub async fn join(
        &self,
        room_id: &RoomId,
        user: &UserId,
        profile: &MemberProfile,
        requested: &serde_json::Map<String, Value>,
        via: &[ruma::OwnedServerName],
    ) -> Result<OwnedRoomId> {
        let mut content = member_content("join", Some(profile), None);
        for (key, value) in requested {
            if content.get(key).is_none() {
                content[key] = value.clone();
            }
        }
        if !self.exists(room_id)? {
            // The inviting server first: it is in the room for sure.
            let first = self.inviting_server(room_id, user)?;
            let servers = self.remote_servers(room_id, first, via);
            if servers.is_empty() || user.server_name() != self.server_name() {
                return Err(Error::not_found("No known servers for this room"));
            }
            let joined = self
                .remote
                .join_remote(room_id, user, &servers, content)
                .await?;
            self.ingest_remote_join(room_id, joined).await?;
            return Ok(room_id.to_owned());
        }
        let (state, current, anyone_joined) = {
            let head = self.head(room_id)?;
            let h = head.lock();
            (
                h.state.clone(),
                h.membership_of(user).map(str::to_owned),
                h.members.values().any(|m| m == "join"),
            )
        };
        // A room everyone left has no server to vouch for the join: Synapse answers 404 (and
        // matrix-sdk relies on it), where this server could otherwise revive it alone.
        if !anyone_joined {
            return Err(Error::not_found("No known servers for this room"));
        }
        // Joining again changes nothing (as in Synapse); the profile travels by its own route.
        if current.as_deref() == Some("join") {
            return Ok(room_id.to_owned());
        }
        if current.as_deref() != Some("invite")
            && let Some(via) = self.restricted_join_authoriser(room_id, &state, user)?
        {
            content["join_authorised_via_users_server"] = json!(via);
        }
        self.send_member(room_id, user, user, content).await?;
        Ok(room_id.to_owned())
    }

    /// For a restricted room: a local member able to invite, if the joiner is in one of the
    /// rooms the join rule allows. `None` lets the auth rules refuse the join.
    fn restricted_join_authoriser(
        &self,
        room_id: &RoomId,
        state: &StateMap,
        user: &UserId,
    ) -> Result<Option<String>> {
        let Some(jr) = state.get(&("m.room.join_rules".into(), String::new())) else {
            return Ok(None);
        };
        let Some(jr) = self.pdu(jr)? else {
            return Ok(None);
        };
        let content = jr.content_value();
        let rule = content["join_rule"].as_str().unwrap_or_default();
        if rule != "restricted" && rule != "knock_restricted" {
            return Ok(None);
        }
        let allowed = content["allow"].as_array().cloned().unwrap_or_default();
        let in_allowed_room = allowed.iter().any(|a| {
            a["type"] == "m.room_membership"
                && a["room_id"]
                    .as_str()
                    .and_then(|r| RoomId::parse(r).ok())
                    .is_some_and(|r| {
                        self.membership(&r, user).ok().flatten().as_deref() == Some("join")
                    })
        });
        if !in_allowed_room {
            return Ok(None);
        }
        let head = self.head(room_id)?;
        let h = head.lock();
        let invite_level = self
            .power_levels(&h.state)?
            .map(|pl| power_level(&pl["invite"]).unwrap_or(0))
            .unwrap_or(0);
        for (member, m) in &h.members {
            if m == "join"
                && member.server_name() == self.config.server_name
                && self.power_of(&h, member)? >= invite_level
            {
                return Ok(Some(member.to_string()));
            }
        }
        Ok(None)
    }

    fn power_levels(&self, state: &StateMap) -> Result<Option<Value>> {
        match state.get(&("m.room.power_levels".into(), String::new())) {
            Some(id) => Ok(self.pdu(id)?.map(|p| p.content_value())),
            None => Ok(None),
        }
    }

    /// A user's power level in the current state (creators of v12 rooms rank above all).
    pub(crate) fn power_of(&self, head: &super::RoomHead, user: &UserId) -> Result<i64> {
        if head.rules.creators_privileged()
            && let Some(create) = head.state.get(&("m.room.create".into(), String::new()))
            && let Some(create) = self.pdu(create)?
        {
            let extra = create.content_value()["additional_creators"].clone();
            let is_creator = create.sender == user
                || extra
                    .as_array()
                    .is_some_and(|a| a.iter().any(|u| u.as_str() == Some(user.as_str())));
            if is_creator {
                return Ok(i64::MAX);
            }
        }
        match self.power_levels(&head.state)? {
            Some(pl) => Ok(power_level(&pl["users"][user.as_str()])
                .unwrap_or_else(|| power_level(&pl["users_default"]).unwrap_or(0))),
            // Without a power levels event the creator has 100, everyone else 0.
            None => {
                let creator = head
                    .state
                    .get(&("m.room.create".into(), String::new()))
                    .and_then(|id| self.pdu(id).ok().flatten())
                    .map(|p| p.sender.clone());
                Ok(if creator.as_deref() == Some(user) {
                    100
                } else {
                    0
                })
            }
        }
    }

    /// Whether the user's power level reaches what sending a state event of `kind` takes (its
    /// entry in `events`, else `state_default`, 50 without a power levels event).
    pub fn can_send_state(&self, room_id: &RoomId, user: &UserId, kind: &str) -> Result<bool> {
        let head = self.head(room_id)?;
        let h = head.lock();
        let needed = match self.power_levels(&h.state)? {
            Some(pl) => power_level(&pl["events"][kind])
                .or_else(|| power_level(&pl["state_default"]))
                .unwrap_or(50),
            None => 50,
        };
        Ok(self.power_of(&h, user)? >= needed)
    }

    /// Asks to be let into a room whose join rule is `knock`.
    pub async fn knock(
        &self,
        room_id: &RoomId,
        user: &UserId,
        profile: &MemberProfile,
        reason: Option<&str>,
        via: &[ruma::OwnedServerName],
    ) -> Result<()> {
        let content = member_content("knock", Some(profile), reason);
        if !self.exists(room_id)? {
            let servers = self.remote_servers(room_id, None, via);
            if servers.is_empty() {
                return Err(Error::not_found("No known servers for this room"));
            }
            return self.knock_remote(room_id, user, &servers, content).await;
        }
        self.send_member(room_id, user, user, content).await
    }

    /// The other servers to reach a room this server is not in through: `first` (when known),
    /// then the client's `via` list, then the server in the room id (before room version 12).
    fn remote_servers(
        &self,
        room_id: &RoomId,
        first: Option<ruma::OwnedServerName>,
        via: &[ruma::OwnedServerName],
    ) -> Vec<ruma::OwnedServerName> {
        let mut servers: Vec<ruma::OwnedServerName> = Vec::new();
        let candidates = first
            .into_iter()
            .chain(via.iter().cloned())
            .chain(room_id.server_name().map(ToOwned::to_owned));
        for s in candidates {
            if s != self.server_name() && !servers.contains(&s) {
                servers.push(s);
            }
        }
        servers
    }

    pub async fn leave(&self, room_id: &RoomId, user: &UserId, reason: Option<&str>) -> Result<()> {
        if !self.exists(room_id)? {
            return self.reject_kept_invite(room_id, user).await;
        }
        match self.membership(room_id, user)?.as_deref() {
            Some("leave") => Ok(()),
            None => Err(Error::forbidden("You are not a member of this room")),
            Some(_) => {
                self.send_member(room_id, user, user, member_content("leave", None, reason))
                    .await
            }
        }
    }

    pub async fn invite(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        target_profile: Option<&MemberProfile>,
        reason: Option<&str>,
    ) -> Result<()> {
        match self.membership(room_id, target)?.as_deref() {
            Some("join") => {
                return Err(Error::forbidden(format!(
                    "{target} is already in the room."
                )));
            }
            Some("ban") => {
                return Err(Error::forbidden(format!(
                    "{target} is banned from the room"
                )));
            }
            _ => {}
        }
        let content = member_content("invite", target_profile, reason);
        if target.server_name() != self.server_name() {
            return self.invite_remote(room_id, sender, target, content).await;
        }
        self.send_member(room_id, sender, target, content).await
    }

    pub async fn kick(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        reason: Option<&str>,
    ) -> Result<()> {
        match self.membership(room_id, target)?.as_deref() {
            Some("join" | "invite" | "knock") => {}
            _ => return Err(Error::forbidden("The target user is not in the room")),
        }
        self.send_member(
            room_id,
            sender,
            target,
            member_content("leave", None, reason),
        )
        .await
    }

    pub async fn ban(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        reason: Option<&str>,
    ) -> Result<()> {
        self.send_member(room_id, sender, target, member_content("ban", None, reason))
            .await
    }

    pub async fn unban(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        reason: Option<&str>,
    ) -> Result<()> {
        if self.membership(room_id, target)?.as_deref() != Some("ban") {
            return Err(Error::forbidden("The target user is not banned"));
        }
        self.send_member(
            room_id,
            sender,
            target,
            member_content("leave", None, reason),
        )
        .await
    }

    pub async fn forget(&self, room_id: &RoomId, user: &UserId) -> Result<()> {
        let Some(mut rec) = self.store.membership(user.as_str(), room_id.as_str())? else {
            return Err(Error::not_found("Room not found"));
        };
        if rec.membership == "join" || rec.membership == "invite" || rec.membership == "knock" {
            return Err(Error::Unknown("The user has not left the room".into()));
        }
        rec.forgotten = true;
        self.store
            .submit(vec![WriteOp::PutMembership(
                user.to_string(),
                room_id.to_string(),
                rec,
            )])
            .await?;
        Ok(())
    }

    /// Rooms the user is joined to.
    pub fn joined_rooms(&self, user: &UserId) -> Result<Vec<OwnedRoomId>> {
        Ok(self
            .memberships_of(user)?
            .iter()
            .filter(|(_, m)| m.membership == "join")
            .filter_map(|(r, _)| OwnedRoomId::try_from(r.as_str()).ok())
            .collect())
    }
}
