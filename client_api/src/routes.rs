//! The route table: every endpoint, registered under each path its spec history gives it.

use std::future::Future;

use axum::Router;
use axum::extract::State;
use axum::routing::{MethodFilter, get, on, post, put};
use ruma::api::{IncomingRequest, path_builder::PathBuilder};

use crate::error::{ApiError, ApiResult};
use crate::extract::{AuthPolicy, Ruma, RumaResponse};
use crate::{
    AppState, account, account_data, admin, directory, filter, keys, legacy, media, presence,
    profile, push, receipts, rooms, search, server, sliding_sync, sync, to_device, typing, voip,
    websocket,
};

/// Registers a handler for a ruma endpoint under all of its paths (r0, v3, unstable...). It
/// answers with the endpoint's response type, or one that amends it (`extract::Patched`).
fn add<R, O, F, Fut>(router: Router<AppState>, handler: F) -> Router<AppState>
where
    R: IncomingRequest + Send + 'static,
    R::Authentication: AuthPolicy,
    O: ruma::api::OutgoingResponse + Send + 'static,
    F: Fn(AppState, Ruma<R>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ApiResult<O>> + Send + 'static,
{
    let method = MethodFilter::try_from(R::METHOD).expect("ruma endpoints use standard methods");
    let h = move |State(state): State<AppState>, req: Ruma<R>| {
        let handler = handler.clone();
        async move { handler(state, req).await.map(RumaResponse) }
    };
    let mut router = router;
    for path in R::PATH_BUILDER.all_paths() {
        router = router.route(path, on(method, h.clone()));
        if path.ends_with("/state/{event_type}/{state_key}") {
            // An empty state key may leave the last segment out, with or without the slash.
            let short = path.trim_end_matches("/{state_key}");
            router = router.route(short, on(method, h.clone()));
            router = router.route(&format!("{short}/"), on(method, h.clone()));
        }
    }
    router
}

pub fn router(state: AppState) -> Router {
    use ruma::api::client as c;
    let mut r = Router::new();
    // Server discovery and capabilities
    r = add::<c::discovery::get_supported_versions::Request, _, _, _>(r, server::versions);
    r = add::<c::discovery::get_capabilities::v3::Request, _, _, _>(r, server::capabilities);
    r = r.route("/.well-known/matrix/client", get(server::well_known));
    // Accounts and sessions
    r = add::<c::account::register::v3::Request, _, _, _>(r, account::register::register);
    r = add::<c::account::check_registration_token_validity::v1::Request, _, _, _>(
        r,
        account::register::token_validity,
    );
    r = add::<c::account::get_username_availability::v3::Request, _, _, _>(
        r,
        account::register::available,
    );
    r = add::<c::session::get_login_types::v3::Request, _, _, _>(r, account::login::login_types);
    r = add::<c::session::login::v3::Request, _, _, _>(r, account::login::login);
    r = add::<c::session::refresh_token::v3::Request, _, _, _>(r, account::login::refresh);
    r = add::<c::session::get_login_token::v1::Request, _, _, _>(r, account::login::get_token);
    r = add::<c::session::logout::v3::Request, _, _, _>(r, account::login::logout);
    r = add::<c::session::logout_all::v3::Request, _, _, _>(r, account::login::logout_all);
    r = add::<c::account::whoami::v3::Request, _, _, _>(r, account::whoami);
    r = add::<c::account::request_openid_token::v3::Request, _, _, _>(
        r,
        account::openid::request_token,
    );
    r = add::<c::account::change_password::v3::Request, _, _, _>(
        r,
        account::password::change_password,
    );
    r = add::<c::account::deactivate::v3::Request, _, _, _>(r, account::password::deactivate);
    r = add::<c::device::get_devices::v3::Request, _, _, _>(r, account::devices::list);
    r = add::<c::device::get_device::v3::Request, _, _, _>(r, account::devices::get);
    r = add::<c::device::update_device::v3::Request, _, _, _>(r, account::devices::update);
    r = add::<c::device::delete_device::v3::Request, _, _, _>(r, account::devices::delete);
    r = add::<c::device::delete_devices::v3::Request, _, _, _>(r, account::devices::delete_many);
    // Profiles: plain JSON, since the spec's per-field shape is simpler than ruma's generic one.
    for v in ["r0", "v3"] {
        r = r
            .route(
                &format!("/_matrix/client/{v}/profile/{{user_id}}"),
                get(profile::get_profile),
            )
            .route(
                &format!("/_matrix/client/{v}/profile/{{user_id}}/{{field}}"),
                get(profile::get_field).merge(put(profile::set_field)),
            );
    }
    // Account data and tags
    r = add::<c::config::set_global_account_data::v3::Request, _, _, _>(
        r,
        account_data::set_global,
    );
    r = add::<c::config::get_global_account_data::v3::Request, _, _, _>(
        r,
        account_data::get_global,
    );
    r = add::<c::config::set_room_account_data::v3::Request, _, _, _>(r, account_data::set_room);
    r = add::<c::config::get_room_account_data::v3::Request, _, _, _>(r, account_data::get_room);
    r = add::<c::tag::get_tags::v3::Request, _, _, _>(r, account_data::tags);
    r = add::<c::tag::create_tag::v3::Request, _, _, _>(r, account_data::put_tag);
    r = add::<c::tag::delete_tag::v3::Request, _, _, _>(r, account_data::delete_tag);
    // Room aliases and the room and user directories
    r = add::<c::alias::create_alias::v3::Request, _, _, _>(r, directory::put_alias);
    r = add::<c::alias::get_alias::v3::Request, _, _, _>(r, directory::get_alias);
    r = add::<c::alias::delete_alias::v3::Request, _, _, _>(r, directory::delete_alias);
    r = add::<c::room::aliases::v3::Request, _, _, _>(r, directory::room_aliases);
    r = add::<c::directory::get_room_visibility::v3::Request, _, _, _>(r, directory::visibility);
    r = add::<c::directory::set_room_visibility::v3::Request, _, _, _>(
        r,
        directory::set_visibility,
    );
    r = add::<c::directory::get_public_rooms::v3::Request, _, _, _>(r, directory::public_rooms);
    r = add::<c::directory::get_public_rooms_filtered::v3::Request, _, _, _>(
        r,
        directory::public_rooms_filtered,
    );
    r = add::<c::user_directory::search_users::v3::Request, _, _, _>(r, directory::search_users);
    // Server-side search: a plain handler (the filter carries Hearth's date range).
    for v in ["r0", "v3"] {
        r = r.route(&format!("/_matrix/client/{v}/search"), post(search::search));
    }
    // Push notifications
    // Push rules: plain handlers, which read the path as Synapse does (rule ids are any string,
    // scopes and kinds want their trailing slash).
    for v in ["r0", "v3"] {
        let rules = get(push::rules::get)
            .put(push::rules::put)
            .delete(push::rules::delete);
        r = r
            .route(&format!("/_matrix/client/{v}/pushrules/"), rules.clone())
            .route(&format!("/_matrix/client/{v}/pushrules/{{*path}}"), rules);
    }
    r = add::<c::push::get_pushers::v3::Request, _, _, _>(r, push::pushers::list);
    r = add::<c::push::set_pusher::v3::Request, _, _, _>(r, push::pushers::set);
    r = add::<c::push::get_notifications::v3::Request, _, _, _>(r, push::notifications::list);
    // Filters
    r = add::<c::filter::create_filter::v3::Request, _, _, _>(r, filter::create);
    r = add::<c::filter::get_filter::v3::Request, _, _, _>(r, filter::get);
    // Rooms
    r = add::<c::room::create_room::v3::Request, _, _, _>(r, rooms::create::create_room);
    r = add::<c::membership::join_room_by_id::v3::Request, _, _, _>(
        r,
        rooms::membership::join_by_id,
    );
    r = add::<c::membership::join_room_by_id_or_alias::v3::Request, _, _, _>(
        r,
        rooms::membership::join_by_id_or_alias,
    );
    r = add::<c::membership::invite_user::v3::Request, _, _, _>(r, rooms::membership::invite);
    r = add::<c::knock::knock_room::v3::Request, _, _, _>(r, rooms::membership::knock);
    r = add::<c::membership::leave_room::v3::Request, _, _, _>(r, rooms::membership::leave);
    r = add::<c::membership::kick_user::v3::Request, _, _, _>(r, rooms::membership::kick);
    r = add::<c::membership::ban_user::v3::Request, _, _, _>(r, rooms::membership::ban);
    r = add::<c::membership::unban_user::v3::Request, _, _, _>(r, rooms::membership::unban);
    r = add::<c::membership::forget_room::v3::Request, _, _, _>(r, rooms::membership::forget);
    r = add::<c::membership::joined_rooms::v3::Request, _, _, _>(
        r,
        rooms::membership::joined_rooms,
    );
    r = add::<c::membership::get_member_events::v3::Request, _, _, _>(r, rooms::members::members);
    r = add::<c::membership::joined_members::v3::Request, _, _, _>(
        r,
        rooms::members::joined_members,
    );
    r = add::<c::message::send_message_event::v3::Request, _, _, _>(r, rooms::send::send_message);
    r = add::<c::state::send_state_event::v3::Request, _, _, _>(r, rooms::state::send_state);
    r = add::<c::state::get_state_event_for_key::v3::Request, _, _, _>(
        r,
        rooms::state::get_state_event,
    );
    r = add::<c::state::get_state_events::v3::Request, _, _, _>(r, rooms::state::get_state);
    r = add::<c::message::get_message_events::v3::Request, _, _, _>(r, rooms::messages::messages);
    r = add::<c::context::get_context::v3::Request, _, _, _>(r, rooms::messages::context);
    r = add::<c::room::get_room_event::v3::Request, _, _, _>(r, rooms::messages::event);
    r = add::<c::redact::redact_event::v3::Request, _, _, _>(r, rooms::redact::redact);
    r = add::<c::relations::get_relating_events::v1::Request, _, _, _>(r, rooms::relations::all);
    r = add::<c::relations::get_relating_events_with_rel_type::v1::Request, _, _, _>(
        r,
        rooms::relations::by_rel_type,
    );
    r = add::<c::relations::get_relating_events_with_rel_type_and_event_type::v1::Request, _, _, _>(
        r,
        rooms::relations::by_rel_and_event_type,
    );
    r = r.route(
        "/_matrix/client/v1/rooms/{room_id}/threads",
        get(rooms::relations::threads),
    );
    r = add::<c::room::upgrade_room::v3::Request, _, _, _>(r, rooms::upgrade::upgrade_room);
    r = add::<c::room::report_room::v3::Request, _, _, _>(r, rooms::report::report_room);
    // Reporting an event: a plain handler, to keep the `score` ruma's type has dropped.
    for v in ["r0", "v3"] {
        r = r.route(
            &format!("/_matrix/client/{v}/rooms/{{room_id}}/report/{{event_id}}"),
            post(rooms::report::report_event),
        );
    }
    // Sync
    r = add::<c::sync::sync_events::v3::Request, _, _, _>(r, sync::sync);
    r = add::<c::sync::sync_events::v5::Request, _, _, _>(r, sliding_sync::sync);
    // The legacy event stream and snapshots (spec r0.6.1): plain handlers, ruma has no types
    // for most of them.
    for v in ["r0", "v3"] {
        r = r
            .route(&format!("/_matrix/client/{v}/events"), get(legacy::events))
            .route(
                &format!("/_matrix/client/{v}/events/{{event_id}}"),
                get(legacy::event),
            )
            .route(
                &format!("/_matrix/client/{v}/initialSync"),
                get(legacy::initial_sync),
            )
            .route(
                &format!("/_matrix/client/{v}/rooms/{{room_id}}/initialSync"),
                get(legacy::room_initial_sync),
            );
    }
    // Typing, receipts, read markers, presence, to-device
    for v in ["r0", "v3"] {
        r = r
            .route(
                &format!("/_matrix/client/{v}/rooms/{{room_id}}/typing/{{user_id}}"),
                put(typing::set_typing),
            )
            .route(
                &format!("/_matrix/client/{v}/rooms/{{room_id}}/send/{{event_type}}"),
                post(rooms::send::send_message_without_txn),
            )
            .route(
                &format!("/_matrix/client/{v}/admin/whois/{{user_id}}"),
                get(admin::whois),
            );
    }
    r = add::<c::receipt::create_receipt::v3::Request, _, _, _>(r, receipts::create_receipt);
    r = add::<c::read_marker::set_read_marker::v3::Request, _, _, _>(r, receipts::set_read_marker);
    // Calls and bridges: none configured
    r = add::<c::voip::get_turn_server_info::v3::Request, _, _, _>(r, voip::turn_server);
    r = add::<c::thirdparty::get_protocols::v3::Request, _, _, _>(r, voip::protocols);
    r = add::<c::thirdparty::get_protocol::v3::Request, _, _, _>(r, voip::protocol);
    r = add::<c::presence::set_presence::v3::Request, _, _, _>(r, presence::set);
    r = add::<c::presence::get_presence::v3::Request, _, _, _>(r, presence::get);
    r = add::<c::to_device::send_event_to_device::v3::Request, _, _, _>(r, to_device::send);
    // End-to-end encryption: keys, cross-signing, key backup
    r = add::<c::keys::upload_keys::v3::Request, _, _, _>(r, keys::upload);
    r = add::<c::keys::get_keys::v3::Request, _, _, _>(r, keys::query);
    r = add::<c::keys::claim_keys::v3::Request, _, _, _>(r, keys::claim);
    r = add::<c::keys::get_key_changes::v3::Request, _, _, _>(r, keys::changes);
    r = add::<c::keys::upload_signing_keys::v3::Request, _, _, _>(
        r,
        keys::cross_signing::upload_signing_keys,
    );
    r = add::<c::keys::upload_signatures::v3::Request, _, _, _>(
        r,
        keys::cross_signing::upload_signatures,
    );
    {
        use c::backup as b;
        use keys::backup as h;
        r = add::<b::create_backup_version::v3::Request, _, _, _>(r, h::create_version);
        r = add::<b::get_latest_backup_info::v3::Request, _, _, _>(r, h::latest_version);
        r = add::<b::get_backup_info::v3::Request, _, _, _>(r, h::get_version);
        r = add::<b::update_backup_version::v3::Request, _, _, _>(r, h::update_version);
        r = add::<b::delete_backup_version::v3::Request, _, _, _>(r, h::delete_version);
        r = add::<b::add_backup_keys::v3::Request, _, _, _>(r, h::put_keys);
        r = add::<b::add_backup_keys_for_room::v3::Request, _, _, _>(r, h::put_room_keys);
        r = add::<b::add_backup_keys_for_session::v3::Request, _, _, _>(r, h::put_session_key);
        r = add::<b::get_backup_keys::v3::Request, _, _, _>(r, h::get_keys);
        r = add::<b::get_backup_keys_for_room::v3::Request, _, _, _>(r, h::get_room_keys);
        r = add::<b::get_backup_keys_for_session::v3::Request, _, _, _>(r, h::get_session_key);
        r = add::<b::delete_backup_keys::v3::Request, _, _, _>(r, h::delete_keys);
        r = add::<b::delete_backup_keys_for_room::v3::Request, _, _, _>(r, h::delete_room_keys);
        r = add::<b::delete_backup_keys_for_session::v3::Request, _, _, _>(
            r,
            h::delete_session_key,
        );
    }
    // Content repository: plain axum handlers, so that bodies stream instead of buffering.
    for v in ["r0", "v3"] {
        r = r
            .route(&format!("/_matrix/media/{v}/upload"), post(media::upload))
            .route(&format!("/_matrix/media/{v}/config"), get(media::config))
            .route(
                &format!("/_matrix/media/{v}/upload/{{server_name}}/{{media_id}}"),
                put(media::upload_created),
            )
            .route(
                &format!("/_matrix/media/{v}/download/{{server_name}}/{{media_id}}"),
                get(media::legacy_download),
            )
            .route(
                &format!("/_matrix/media/{v}/download/{{server_name}}/{{media_id}}/{{file_name}}"),
                get(media::legacy_download),
            )
            .route(
                &format!("/_matrix/media/{v}/thumbnail/{{server_name}}/{{media_id}}"),
                get(media::legacy_thumbnail),
            );
    }
    r = r
        .route("/_matrix/client/v1/media/config", get(media::config))
        .route(
            "/_matrix/client/v1/media/download/{server_name}/{media_id}",
            get(media::download),
        )
        .route(
            "/_matrix/client/v1/media/download/{server_name}/{media_id}/{file_name}",
            get(media::download),
        )
        .route("/_matrix/media/v1/create", post(media::create))
        .route(
            "/_matrix/client/v1/media/thumbnail/{server_name}/{media_id}",
            get(media::thumbnail),
        );
    // Admin API (Synapse's paths)
    r = r
        .route(
            "/_synapse/admin/v1/media/quarantine/{server_name}/{media_id}",
            post(admin::quarantine_media),
        )
        .route(
            "/_synapse/admin/v1/user/{user_id}/media/quarantine",
            post(admin::quarantine_user_media),
        )
        .route(
            "/_synapse/admin/v1/event_reports",
            get(admin::event_reports),
        )
        .route(
            "/_synapse/admin/v1/event_reports/{report_id}",
            get(admin::event_report),
        )
        .route("/_synapse/admin/v1/room_reports", get(admin::room_reports));
    // Hearth's WebSocket transport (docs/realtime.md)
    r = r.route(websocket::PATH, get(websocket::upgrade));

    r.fallback(|| async { ApiError::unrecognized() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        // A bug must still answer in Matrix's format, and must not take the connection down.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                tracing::error!("a request handler panicked");
                axum::response::IntoResponse::into_response(ApiError::from(
                    hearth_core::Error::internal("panic"),
                ))
            },
        ))
        .layer(
            tower_http::cors::CorsLayer::new()
                .allow_origin(tower_http::cors::Any)
                .allow_methods(tower_http::cors::Any)
                .allow_headers(tower_http::cors::Any),
        )
        .with_state(state)
}
