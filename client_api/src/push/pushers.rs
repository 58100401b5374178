//! `GET /pushers` and `POST /pushers/set`.

use hearth_core::push::pushers::NewPusher;
use ruma::api::client::push::set_pusher::v3::PusherAction;
use ruma::api::client::push::{Pusher, PusherIds, PusherInit, PusherKind, get_pushers, set_pusher};
use ruma::push::HttpPusherData;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::Ruma;

pub async fn list(
    state: AppState,
    req: Ruma<get_pushers::v3::Request>,
) -> ApiResult<get_pushers::v3::Response> {
    let user = &req.session().user_id;
    let pushers = state
        .core
        .push
        .pushers
        .list(user)?
        .into_iter()
        .filter_map(|p| {
            // Only HTTP pushers are ever stored.
            let data: HttpPusherData = serde_json::from_str(&p.record.data).ok()?;
            Some(Pusher::from(PusherInit {
                ids: PusherIds::new(p.pushkey, p.app_id),
                kind: PusherKind::Http(data),
                app_display_name: p.record.app_display_name,
                device_display_name: p.record.device_display_name,
                profile_tag: p.record.profile_tag,
                lang: p.record.lang,
            }))
        })
        .collect();
    Ok(get_pushers::v3::Response::new(pushers))
}

pub async fn set(
    state: AppState,
    req: Ruma<set_pusher::v3::Request>,
) -> ApiResult<set_pusher::v3::Response> {
    let session = req.session().clone();
    let pushers = &state.core.push.pushers;
    match req.body.action {
        PusherAction::Delete(ids) => {
            pushers
                .delete(&session.user_id, &ids.app_id, &ids.pushkey)
                .await?
        }
        PusherAction::Post(post) => {
            let p = post.pusher;
            let (kind, data) = match p.kind {
                PusherKind::Http(data) => (
                    "http",
                    serde_json::to_value(data).map_err(hearth_core::Error::internal)?,
                ),
                PusherKind::Email(_) => ("email", serde_json::Value::Null),
                _ => return Err(ApiError::invalid_param("Unsupported pusher kind")),
            };
            let new = NewPusher {
                kind: kind.to_owned(),
                app_id: p.ids.app_id,
                pushkey: p.ids.pushkey,
                app_display_name: p.app_display_name,
                device_display_name: p.device_display_name,
                profile_tag: p.profile_tag,
                lang: p.lang,
                data,
                append: post.append,
            };
            pushers
                .set(&session.user_id, session.device_id.as_str(), new)
                .await?
        }
        _ => return Err(ApiError::bad_json("Unknown pusher action")),
    }
    Ok(set_pusher::v3::Response::new())
}
