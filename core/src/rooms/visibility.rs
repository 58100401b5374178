//! History visibility: which events of a room a user may read.

use ruma::UserId;

use super::timeline::{Access, TimelineEvent};
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

    /// `user`'s membership of the room in the state group `group` ("leave" when they have
    /// none): what `unsigned.membership` (spec v1.11, MSC4115) reports for an event, given
    /// the state after it.
    pub(crate) fn membership_in_group(&self, user: &UserId, group: u64) -> Result<String> {
        let state = self.state_at_group(group)?;
        Ok(self
            .content_field(&state, "m.room.member", user.as_str(), "membership")?
            .unwrap_or_else(|| "leave".into()))
    }

    /// Whether the reader `user` with `access` may see `ev`: at once for what came after their
    /// current join, by the room's history visibility otherwise. Every read path asks this.
    pub fn sees(&self, user: &UserId, ev: &TimelineEvent, access: &Access) -> Result<bool> {
        // Live order only: an event backfilled later has a later commit position, not a later
        // place in the room.
        if access.joined_at.is_some_and(|j| ev.live_pos() > j) {
            return Ok(true);
        }
        if self.may_see(user, &ev.pdu, ev.meta.state_before, access.shared_history)? {
            return Ok(true);
        }
        Ok(access.current_state_in_timeline && self.in_current_state(&ev.pdu)?)
    }

    /// Whether `pdu` is part of its room's current state.
    fn in_current_state(&self, pdu: &PduRef) -> Result<bool> {
        let Some(key) = &pdu.state_key else {
            return Ok(false);
        };
        let state = self.current_state(&pdu.room_id)?;
        Ok(state.get(&(pdu.kind.to_string(), key.clone())) == Some(&pdu.event_id))
    }

    /// Whether `user` may see `pdu`, given the state group before it and whether the user is
    /// joined to the room now. The spec's rules, as Synapse applies them: what was sent while
    /// the user was joined, what `invited` history shows an invitee, and `shared` history to
    /// those who are joined now; an invitee, a knocker or a user who left does not read
    /// `shared` history they were not joined for.
    fn may_see(
        &self,
        user: &UserId,
        pdu: &PduRef,
        state_before: u64,
        joined_now: bool,
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
        let before = self.content_field(&state, "m.room.member", user.as_str(), "membership")?;
        // A user's own member event counts with the more joined of the memberships on either
        // side of it; and one's own leave is always seen, so that a left room or a declined
        // invite goes away in the client.
        let membership_at = match pdu.membership() {
            Some(new) if pdu.state_key.as_deref() == Some(user.as_str()) => {
                if new == "leave" && matches!(before.as_deref(), Some("join" | "invite")) {
                    return Ok(true);
                }
                if rank(before.as_deref()) < rank(Some(new.as_str())) {
                    before
                } else {
                    Some(new)
                }
            }
            _ => before,
        };
        Ok(match membership_at.as_deref() {
            Some("join") => true,
            Some("invite") if visibility == "invited" => true,
            _ => visibility == "shared" && joined_now,
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

/// Synapse's `MEMBERSHIP_PRIORITY`: the more joined a membership, the lower.
fn rank(membership: Option<&str>) -> u8 {
    match membership {
        Some("join") => 0,
        Some("invite") => 1,
        Some("knock") => 2,
        Some("ban") => 4,
        _ => 3,
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
