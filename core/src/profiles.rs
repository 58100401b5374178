//! Profiles: display name and avatar, mirrored into the member events of the user's rooms.

use std::sync::Arc;

use ruma::UserId;
use serde_json::json;

use crate::accounts::Accounts;
use crate::remote::Remote;
use crate::rooms::create::MemberProfile;
use crate::rooms::{NewEvent, Rooms};
use crate::{Error, Result};

pub struct Profiles {
    accounts: Arc<Accounts>,
    rooms: Arc<Rooms>,
    remote: Arc<dyn Remote>,
}

impl Profiles {
    pub fn new(accounts: Arc<Accounts>, rooms: Arc<Rooms>, remote: Arc<dyn Remote>) -> Self {
        Self {
            accounts,
            rooms,
            remote,
        }
    }

    /// Any user's profile: ours from the store, others' from their server.
    pub async fn lookup(&self, user: &UserId) -> Result<MemberProfile> {
        if user.server_name() == self.rooms.server_name() {
            self.get(user)
        } else {
            self.remote.profile(user).await
        }
    }

    pub fn get(&self, user: &UserId) -> Result<MemberProfile> {
        let rec = self
            .accounts
            .user(user)?
            .ok_or_else(|| Error::not_found("Profile was not found"))?;
        Ok(MemberProfile {
            displayname: rec.displayname,
            avatar_url: rec.avatar_url,
        })
    }

    pub async fn set_displayname(&self, user: &UserId, name: Option<String>) -> Result<()> {
        self.accounts
            .update_user(user, |u| u.displayname = name)
            .await?;
        self.reflect_into_rooms(user).await
    }

    pub async fn set_avatar_url(&self, user: &UserId, url: Option<String>) -> Result<()> {
        self.accounts
            .update_user(user, |u| u.avatar_url = url)
            .await?;
        self.reflect_into_rooms(user).await
    }

    /// Sends a fresh join event with the new profile into every room the user is joined to.
    async fn reflect_into_rooms(&self, user: &UserId) -> Result<()> {
        let profile = self.get(user)?;
        for room_id in self.rooms.joined_rooms(user)? {
            let Some(current) = self
                .rooms
                .state_event(&room_id, "m.room.member", user.as_str())?
            else {
                continue;
            };
            let mut content = current.content_value();
            content["membership"] = json!("join");
            for (key, value) in [
                ("displayname", &profile.displayname),
                ("avatar_url", &profile.avatar_url),
            ] {
                match value {
                    Some(v) => content[key] = json!(v),
                    None => {
                        content.as_object_mut().map(|o| o.remove(key));
                    }
                }
            }
            if let Err(e) = self
                .rooms
                .send(
                    &room_id,
                    user,
                    NewEvent::state("m.room.member", user.as_str(), content),
                )
                .await
            {
                tracing::warn!(%room_id, error = %e, "could not update member event with new profile");
            }
        }
        Ok(())
    }
}
