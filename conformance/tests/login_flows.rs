//! The login flows today's clients probe: refresh tokens (matrix-sdk asks for them), and the
//! OAuth discovery endpoint, which a server without OAuth answers as the spec says.

use std::time::Duration;

use hearth_conformance::{TestServer, assert_matrix_error, json};

async fn login(server: &TestServer, refresh: bool) -> serde_json::Value {
    let (status, body) = server
        .post_anon(
            "/login",
            &json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": "alice" },
                "password": "pw-alice-1",
                "refresh_token": refresh,
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test]
async fn refresh_tokens_renew_expiring_access_tokens() {
    let server = TestServer::builder()
        .env("HEARTH_REFRESHABLE_ACCESS_TOKEN_LIFETIME_SECS", "1")
        .start()
        .await;
    server.register("alice", "pw-alice-1").await;

    let plain = login(&server, false).await;
    assert!(plain.get("refresh_token").is_none(), "{plain}");
    assert!(plain.get("expires_in_ms").is_none(), "{plain}");
    let session = login(&server, true).await;
    assert_eq!(session["expires_in_ms"], 1000, "{session}");
    let access = session["access_token"].as_str().unwrap().to_owned();
    let refresh = session["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(server.get("/account/whoami", &access).await.0, 200);
    let resp = server.get("/account/whoami", &refresh).await;
    assert_matrix_error(&resp, 401, "M_UNKNOWN_TOKEN");

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let resp = server.get("/account/whoami", &access).await;
    assert_matrix_error(&resp, 401, "M_UNKNOWN_TOKEN");
    assert_eq!(
        resp.1["soft_logout"], true,
        "an expired token is a soft logout"
    );
    let plain_token = plain["access_token"].as_str().unwrap();
    assert_eq!(
        server.get("/account/whoami", plain_token).await.0,
        200,
        "tokens without a refresh token do not expire"
    );

    let (status, renewed) = server
        .post_anon("/refresh", &json!({ "refresh_token": refresh }))
        .await;
    assert_eq!(status, 200, "{renewed}");
    let access2 = renewed["access_token"].as_str().unwrap().to_owned();
    let refresh2 = renewed["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(renewed["expires_in_ms"], 1000);
    let (status, me) = server.get("/account/whoami", &access2).await;
    assert_eq!(status, 200);
    assert_eq!(me["device_id"], session["device_id"], "the same device");
    let resp = server
        .post_anon("/refresh", &json!({ "refresh_token": refresh }))
        .await;
    assert_matrix_error(&resp, 401, "M_UNKNOWN_TOKEN");
    assert_eq!(resp.1["soft_logout"], false);

    // Logging out ends the refresh token too.
    assert_eq!(server.post("/logout", &access2, &json!({})).await.0, 200);
    let resp = server
        .post_anon("/refresh", &json!({ "refresh_token": refresh2 }))
        .await;
    assert_matrix_error(&resp, 401, "M_UNKNOWN_TOKEN");
}

#[tokio::test]
async fn matrix_sdk_refreshes_by_itself() {
    let server = TestServer::builder()
        .env("HEARTH_REFRESHABLE_ACCESS_TOKEN_LIFETIME_SECS", "1")
        .start()
        .await;
    server.register("alice", "pw-alice-1").await;
    let client = matrix_sdk::Client::builder()
        .homeserver_url(server.base_url())
        .handle_refresh_tokens()
        .build()
        .await
        .unwrap();
    client
        .matrix_auth()
        .login_username("alice", "pw-alice-1")
        .request_refresh_token()
        .send()
        .await
        .expect("login");
    let first = client.access_token().unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let me = client
        .whoami()
        .await
        .expect("whoami after the token expired");
    assert_eq!(me.user_id.as_str(), "@alice:localhost");
    assert_ne!(
        client.access_token().unwrap(),
        first,
        "the client refreshed"
    );
}

#[tokio::test]
async fn no_oauth_server_is_advertised() {
    let server = TestServer::start().await;
    let resp = server.get_anon("/_matrix/client/v1/auth_metadata").await;
    assert_matrix_error(&resp, 404, "M_UNRECOGNIZED");
}

#[tokio::test]
async fn a_signed_in_device_lets_another_sign_in_with_a_login_token() {
    let server = TestServer::start().await;
    let (_, token, _) = server.register("alice", "pw-alice-1").await;
    let (_, login_types) = server.get_anon("/login").await;
    let token_flow = login_types["flows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["type"] == "m.login.token")
        .cloned()
        .expect("m.login.token offered");
    assert_eq!(token_flow["get_login_token"], true);
    let (_, caps) = server.get("/capabilities", &token).await;
    assert_eq!(caps["capabilities"]["m.get_login_token"]["enabled"], true);

    // The password is confirmed first (user-interactive auth), as Synapse asks.
    let path = "/_matrix/client/v1/login/get_token";
    let (status, uia) = server.post(path, &token, &json!({})).await;
    assert_eq!(status, 401, "{uia}");
    let session = uia["session"].as_str().unwrap();
    let (status, issued) = server
        .post(
            path,
            &token,
            &json!({ "auth": {
                "type": "m.login.password", "session": session, "password": "pw-alice-1",
                "identifier": { "type": "m.id.user", "user": "alice" },
            } }),
        )
        .await;
    assert_eq!(status, 200, "{issued}");
    assert_eq!(issued["expires_in_ms"], 120_000);
    let login_token = issued["login_token"].as_str().unwrap();

    let with_token = json!({ "type": "m.login.token", "token": login_token });
    let (status, new) = server.post_anon("/login", &with_token).await;
    assert_eq!(status, 200, "{new}");
    assert_eq!(new["user_id"], "@alice:localhost");
    let (status, _) = server
        .get("/account/whoami", new["access_token"].as_str().unwrap())
        .await;
    assert_eq!(status, 200);
    let resp = server.post_anon("/login", &with_token).await;
    assert_matrix_error(&resp, 403, "M_FORBIDDEN");
    let resp = server
        .post_anon(
            "/login",
            &json!({ "type": "m.login.token", "token": "made-up" }),
        )
        .await;
    assert_matrix_error(&resp, 403, "M_FORBIDDEN");
}
