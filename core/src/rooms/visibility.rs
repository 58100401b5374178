//! History visibility: which events of a room a user may read.

use ruma::UserId;

use super::{PduRef, Rooms};
use crate::Result;

impl Rooms {
    fn content_field(
        &self,
        state: &super::StateMap,
        kind: &str,
        key: &str,
        field: &str,
    ) -> Result<Option<String>> {
        let Some(id) = state.get(&(kind.to_owned(), key.to_owned())) else {
            return Ok(None);
        };
        Ok(self
            .pdu(id)?
            .and_then(|p| p.content_value()[field].as_str().map(str::to_owned)))
    }

    /// Whether `user` may see `pdu`, given the state group before it and whether the user has
    /// any membership in the room now (a user who never had one is peeking).
    pub fn may_see(
        &self,
        user: &UserId,
        pdu: &PduRef,
        state_before: u64,
        ever_member: bool,
    ) -> Result<bool> {
        let state = self.state_at_group(state_before)?;
        let mut visibility = self
            .content_field(
                &state,
                "m.room.history_visibility",
                "",
                "history_visibility",
            )?
            .unwrap_or_else(|| "shared".into());
        // A change of visibility is seen by whoever could see the room on either side of it
        // (the less restrictive of the two), as Synapse shows it: members learn that history
        // closed, and those let in by an opening see the change that let them in.
        if pdu.kind.to_string() == "m.room.history_visibility"
            && pdu.state_key.as_deref() == Some("")
            && let Some(new) = pdu.content_value()["history_visibility"].as_str()
            && openness(new) > openness(&visibility)
        {
            visibility = new.to_owned();
        }
        if visibility == "world_readable" {
            return Ok(true);
        }
        // A user's own member event counts with the membership it sets.
        let membership_at =
            if pdu.state_key.as_deref() == Some(user.as_str()) && pdu.membership().is_some() {
                pdu.membership()
            } else {
                self.content_field(&state, "m.room.member", user.as_str(), "membership")?
            };
        Ok(match membership_at.as_deref() {
            Some("join") => true,
            Some("invite") if visibility == "invited" || visibility == "shared" => true,
            _ => visibility == "shared" && ever_member,
        })
    }

    /// Whether a room is world readable now (lets non-members read it).
    pub fn is_world_readable(&self, state: &super::StateMap) -> Result<bool> {
        Ok(self
            .content_field(state, "m.room.history_visibility", "", "history_visibility")?
            .as_deref()
            == Some("world_readable"))
    }
}

/// How much of a room's history a visibility opens, least first.
fn openness(visibility: &str) -> u8 {
    match visibility {
        "world_readable" => 3,
        "shared" => 2,
        "invited" => 1,
        _ => 0,
    }
}
