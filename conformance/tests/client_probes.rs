//! What Element Web asks a fresh server right after sign-up, besides sync and keys: TURN
//! credentials for calls and the third-party protocols of bridges. A server with no TURN server
//! configured and no application services answers both with `200 {}`, as Synapse does, so that
//! the client knows there is nothing to use (it retried `/thirdparty/protocols` on the 404
//! `M_UNRECOGNIZED` of an unknown endpoint, and logged the TURN failure as an error).

use hearth_conformance::{TestServer, assert_matrix_error, json};

#[tokio::test]
async fn turn_server_without_turn_is_an_empty_object() {
    let server = TestServer::start().await;
    let (_, token, _) = server.register("alice", "pw-alice-1").await;
    for version in ["v3", "r0"] {
        let (status, body) = server
            .get(
                &format!("/_matrix/client/{version}/voip/turnServer"),
                &token,
            )
            .await;
        assert_eq!(status, 200, "{version}: {body}");
        assert_eq!(body, json!({}), "{version}");
    }
    let resp = server
        .get("/_matrix/client/v3/voip/turnServer", "no-such-token")
        .await;
    assert_matrix_error(&resp, 401, "M_UNKNOWN_TOKEN");
}

#[tokio::test]
async fn third_party_protocols_without_application_services() {
    let server = TestServer::start().await;
    let (_, token, _) = server.register("alice", "pw-alice-1").await;
    for version in ["v3", "r0"] {
        let (status, body) = server
            .get(
                &format!("/_matrix/client/{version}/thirdparty/protocols"),
                &token,
            )
            .await;
        assert_eq!(status, 200, "{version}: {body}");
        assert_eq!(body, json!({}), "{version}");
    }
    // No bridge offers the protocol: Synapse's 404 M_NOT_FOUND, not an unknown endpoint.
    let resp = server
        .get("/_matrix/client/v3/thirdparty/protocol/irc", &token)
        .await;
    assert_matrix_error(&resp, 404, "M_NOT_FOUND");
    let resp = server
        .get("/_matrix/client/v3/thirdparty/protocols", "no-such-token")
        .await;
    assert_matrix_error(&resp, 401, "M_UNKNOWN_TOKEN");
}
