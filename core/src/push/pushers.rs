//! Pushers (spec: `GET /pushers`, `POST /pushers/set`): where a user's notifications go.

use std::sync::{Arc, OnceLock};

use hearth_storage::push::{PushOp, PusherRecord};
use hearth_storage::{Store, WriteOp};
use ruma::{OwnedUserId, UserId};
use serde_json::Value;

use super::delivery::Delivery;
use crate::util::now_ms;
use crate::{Error, Result};

/// The path every HTTP pusher's URL must have (spec: Push Gateway API), as Synapse checks.
pub const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";

/// `POST /pushers/set` with a kind: create or replace a pusher.
#[derive(Clone, Debug)]
pub struct NewPusher {
    pub kind: String,
    pub app_id: String,
    pub pushkey: String,
    pub app_display_name: String,
    pub device_display_name: String,
    pub profile_tag: Option<String>,
    pub lang: String,
    pub data: Value,
    pub append: bool,
}

/// A pusher as `GET /pushers` lists it.
#[derive(Clone, Debug)]
pub struct PusherView {
    pub app_id: String,
    pub pushkey: String,
    pub record: PusherRecord,
}

pub struct Pushers {
    store: Arc<dyn Store>,
    /// Set once delivery starts; pushers set before that are picked up when it does.
    delivery: OnceLock<Arc<Delivery>>,
}

impl Pushers {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            delivery: OnceLock::new(),
        }
    }

    /// Starts a delivery task for every stored pusher.
    pub(super) fn start(&self, delivery: Arc<Delivery>) -> Result<()> {
        let delivery = self.delivery.get_or_init(|| delivery).clone();
        for (user, app, key) in self.store.all_pushers()? {
            if let Ok(user) = UserId::parse(user) {
                delivery.ensure(&user, &app, &key);
            }
        }
        Ok(())
    }

    /// Wakes the delivery of these users' pushers: they have new notifications.
    pub(super) fn wake(&self, users: &[OwnedUserId]) {
        if let Some(d) = self.delivery.get() {
            d.wake(users);
        }
    }

    /// The user read something (a read receipt): their pushers send the badge if it changed.
    pub fn read(&self, user: &UserId) {
        if let Some(d) = self.delivery.get() {
            d.read(user);
        }
    }

    pub fn list(&self, user: &UserId) -> Result<Vec<PusherView>> {
        Ok(self
            .store
            .pushers(user.as_str())?
            .into_iter()
            .map(|(app_id, pushkey, record)| PusherView {
                app_id,
                pushkey,
                record,
            })
            .collect())
    }

    /// `POST /pushers/set` with `kind: null`.
    pub async fn delete(&self, user: &UserId, app_id: &str, pushkey: &str) -> Result<()> {
        self.store
            .submit(vec![WriteOp::Push(PushOp::DeletePusher {
                user_id: user.to_string(),
                app_id: app_id.to_owned(),
                pushkey: pushkey.to_owned(),
            })])
            .await?;
        Ok(())
    }

    /// `POST /pushers/set`: creates or updates the pusher of `(app_id, pushkey)` for the user,
    /// owned by the device whose access token set it.
    pub async fn set(&self, user: &UserId, device_id: &str, p: NewPusher) -> Result<()> {
        validate(&p)?;
        let mut ops = Vec::new();
        if !p.append {
            // Without `append` a pushkey belongs to one user: the device changed hands.
            for other in self.store.pusher_users(&p.app_id, &p.pushkey)? {
                if other != user.as_str() {
                    ops.push(WriteOp::Push(PushOp::DeletePusher {
                        user_id: other,
                        app_id: p.app_id.clone(),
                        pushkey: p.pushkey.clone(),
                    }));
                }
            }
        }
        // An update keeps its delivery position; a new pusher starts with what comes next.
        let sent_upto = match self.store.pusher(user.as_str(), &p.app_id, &p.pushkey)? {
            Some(old) => old.sent_upto,
            None => self.store.persisted_pos(),
        };
        ops.push(WriteOp::Push(PushOp::PutPusher {
            user_id: user.to_string(),
            app_id: p.app_id.clone(),
            pushkey: p.pushkey.clone(),
            record: PusherRecord {
                kind: p.kind,
                app_display_name: p.app_display_name,
                device_display_name: p.device_display_name,
                profile_tag: p.profile_tag,
                lang: p.lang,
                data: p.data.to_string(),
                device_id: Some(device_id.to_owned()),
                pushkey_ts: now_ms(),
                sent_upto,
            },
        }));
        self.store.submit(ops).await?;
        if let Some(d) = self.delivery.get() {
            d.ensure(user, &p.app_id, &p.pushkey);
        }
        Ok(())
    }
}

fn validate(p: &NewPusher) -> Result<()> {
    if p.kind != "http" {
        // Email pushers need an email sender, which Hearth does not have.
        return Err(Error::InvalidParam(format!(
            "Unsupported pusher kind {:?}",
            p.kind
        )));
    }
    // Limits from the spec's description of the fields.
    if p.app_id.is_empty() || p.app_id.chars().count() > 64 {
        return Err(Error::InvalidParam(
            "app_id must be 1 to 64 characters".into(),
        ));
    }
    if p.pushkey.is_empty() || p.pushkey.len() > 512 {
        return Err(Error::InvalidParam("pushkey must be 1 to 512 bytes".into()));
    }
    // Synapse's checks and wording, with its errcode.
    let Some(data) = p.data.as_object() else {
        return Err(Error::MissingParam(
            "Config Error: 'data' key can not be null for HTTP pusher".into(),
        ));
    };
    let Some(url) = data.get("url") else {
        return Err(Error::MissingParam(
            "Config Error: 'url' required in data for HTTP pusher".into(),
        ));
    };
    let path_ok = url
        .as_str()
        .and_then(|u| u.split_once("://"))
        .is_some_and(|(scheme, rest)| {
            let path = rest.find('/').map_or("", |i| &rest[i..]);
            let path = path.split(['?', '#']).next().unwrap_or("");
            matches!(scheme, "http" | "https") && path == NOTIFY_PATH
        });
    if !path_ok {
        return Err(Error::MissingParam(format!(
            "Config Error: 'url' must have a path of '{NOTIFY_PATH}'"
        )));
    }
    // Any other `format` means the full format, as with Synapse.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pusher(data: Value) -> NewPusher {
        NewPusher {
            kind: "http".into(),
            app_id: "org.example.app".into(),
            pushkey: "key".into(),
            app_display_name: "App".into(),
            device_display_name: "Phone".into(),
            profile_tag: None,
            lang: "en".into(),
            data,
            append: false,
        }
    }

    #[test]
    fn urls_must_point_at_the_notify_endpoint() {
        let ok = |u: &str| validate(&pusher(json!({ "url": u }))).is_ok();
        assert!(ok("https://push.example.org/_matrix/push/v1/notify"));
        assert!(ok("http://127.0.0.1:8080/_matrix/push/v1/notify"));
        assert!(!ok("https://push.example.org/notify"));
        assert!(!ok("https://push.example.org"));
        assert!(!ok("ftp://push.example.org/_matrix/push/v1/notify"));
        assert!(validate(&pusher(json!({}))).is_err());
        assert!(validate(&pusher(Value::Null)).is_err());
    }
}
