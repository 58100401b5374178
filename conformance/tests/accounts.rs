//! Account management over raw HTTP: registration, login, logout, devices,
//! password change.

use hearth_conformance::{
    Method, TestServer, Value, assert_matrix_error, enc, flows_offer_stage, json,
};

const PW: &str = "s3cret-password";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_login_whoami_logout() {
    let server = TestServer::start().await;
    let (user_id, reg_token, reg_device) = server.register("alice", PW).await;
    assert_eq!(user_id, "@alice:localhost");
    assert!(!reg_token.is_empty() && !reg_device.is_empty());

    let (status, who) = server.get("/account/whoami", &reg_token).await;
    assert_eq!(status, 200, "{who}");
    assert_eq!(who["user_id"], user_id.as_str());
    assert_eq!(who["device_id"], reg_device.as_str());

    // A password login creates a new device with a new token.
    let (login_user, login_token, login_device) = server.login("alice", PW).await;
    assert_eq!(login_user, user_id);
    assert_ne!(login_token, reg_token);
    assert_ne!(login_device, reg_device);
    let (status, who) = server.get("/account/whoami", &login_token).await;
    assert_eq!(status, 200, "{who}");
    assert_eq!(who["user_id"], user_id.as_str());
    assert_eq!(who["device_id"], login_device.as_str());

    // Logging in with the full user id works too.
    let (status, body) = server.try_login("@alice:localhost", PW).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], user_id.as_str());

    // Logout invalidates exactly that token.
    let (status, body) = server.post("/logout", &login_token, &json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_matrix_error(
        &server.get("/account/whoami", &login_token).await,
        401,
        "M_UNKNOWN_TOKEN",
    );
    let (status, _) = server.get("/account/whoami", &reg_token).await;
    assert_eq!(status, 200, "other tokens stay valid after /logout");

    // /logout/all invalidates every token of the user.
    let (_, third_token, _) = server.login("alice", PW).await;
    let (status, body) = server.post("/logout/all", &reg_token, &json!({})).await;
    assert_eq!(status, 200, "{body}");
    for t in [&reg_token, &third_token] {
        assert_matrix_error(
            &server.get("/account/whoami", t).await,
            401,
            "M_UNKNOWN_TOKEN",
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_uia_and_username_rules() {
    let server = TestServer::start().await;

    // The first stage is a 401 UIA response offering m.login.dummy.
    let (status, body) = server
        .post_anon("/register", &json!({ "username": "uia", "password": PW }))
        .await;
    assert_eq!(status, 401, "{body}");
    assert!(body["session"].is_string(), "{body}");
    assert!(flows_offer_stage(&body, "m.login.dummy"), "{body}");

    let (status, body) = server.get_anon("/register/available?username=bob").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["available"], true);

    server.register("bob", PW).await;

    // Taken now: /register/available answers 400 M_USER_IN_USE.
    assert_matrix_error(
        &server.get_anon("/register/available?username=bob").await,
        400,
        "M_USER_IN_USE",
    );
    // Registering again fails, whichever UIA stage the server checks it at.
    assert_matrix_error(
        &server.try_register("bob", "another-password").await,
        400,
        "M_USER_IN_USE",
    );
    // The original password still works; the second one does not.
    let (status, _) = server.try_login("bob", PW).await;
    assert_eq!(status, 200);
    assert_matrix_error(
        &server.try_login("bob", "another-password").await,
        403,
        "M_FORBIDDEN",
    );

    // Invalid localparts.
    assert_matrix_error(
        &server.try_register("Bad User!", PW).await,
        400,
        "M_INVALID_USERNAME",
    );
    assert_matrix_error(
        &server
            .get_anon(&format!(
                "/register/available?username={}",
                enc("Bad User!")
            ))
            .await,
        400,
        "M_INVALID_USERNAME",
    );
    let (status, _) = server.try_login("Bad User!", PW).await;
    assert_ne!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_flows_and_wrong_password() {
    let server = TestServer::start().await;
    let (status, body) = server.get_anon("/login").await;
    assert_eq!(status, 200, "{body}");
    let flows = body["flows"].as_array().expect("flows array");
    assert!(
        flows.iter().any(|f| f["type"] == "m.login.password"),
        "{body}"
    );

    server.register("carol", PW).await;
    assert_matrix_error(
        &server.try_login("carol", "wrong password").await,
        403,
        "M_FORBIDDEN",
    );
    // Unknown user: also 403 M_FORBIDDEN (no user enumeration).
    assert_matrix_error(&server.try_login("nobody", PW).await, 403, "M_FORBIDDEN");
    let (status, body) = server.try_login("carol", PW).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_are_listed() {
    let server = TestServer::start().await;
    let (_, token, device) = server.register("dave", PW).await;
    let (_, _, device2) = server.login("dave", PW).await;

    let (status, body) = server.get("/devices", &token).await;
    assert_eq!(status, 200, "{body}");
    let mut ids: Vec<&str> = body["devices"]
        .as_array()
        .expect("devices array")
        .iter()
        .map(|d| d["device_id"].as_str().expect("device_id"))
        .collect();
    ids.sort();
    let mut expected = vec![device.as_str(), device2.as_str()];
    expected.sort();
    assert_eq!(ids, expected);

    let (status, body) = server
        .get(&format!("/devices/{}", enc(&device)), &token)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["device_id"], device.as_str());

    // Rename a device.
    let (status, body) = server
        .put(
            &format!("/devices/{}", enc(&device)),
            &token,
            &json!({ "display_name": "laptop" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = server
        .get(&format!("/devices/{}", enc(&device)), &token)
        .await;
    assert_eq!(body["display_name"], "laptop");

    assert_matrix_error(
        &server.get("/devices/NOSUCHDEVICE", &token).await,
        404,
        "M_NOT_FOUND",
    );
}

/// Complete a UIA-protected request: the first attempt without `auth` must
/// be a 401 with flows; then authenticate with m.login.password (or
/// m.login.dummy if that is all the flow needs).
async fn with_uia(
    server: &TestServer,
    method: Method,
    path: &str,
    token: &str,
    mut body: Value,
    user: &str,
    password: &str,
) -> (u16, Value) {
    let (status, first) = server
        .request(method.clone(), path, Some(token), Some(&body))
        .await;
    assert_eq!(
        status, 401,
        "{path} must be protected by user-interactive auth: {first}"
    );
    let session = first["session"].clone();
    let auth = if flows_offer_stage(&first, "m.login.password") {
        json!({
            "type": "m.login.password",
            "identifier": { "type": "m.id.user", "user": user },
            "password": password,
            "session": session,
        })
    } else {
        assert!(flows_offer_stage(&first, "m.login.dummy"), "{first}");
        json!({ "type": "m.login.dummy", "session": session })
    };
    body["auth"] = auth;
    server.request(method, path, Some(token), Some(&body)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_password() {
    let server = TestServer::start().await;
    let (user_id, token, _) = server.register("erin", PW).await;
    let (_, other_token, _) = server.login("erin", PW).await;

    let (status, body) = with_uia(
        &server,
        Method::POST,
        "/account/password",
        &token,
        json!({ "new_password": "brand-new-password" }),
        "erin",
        PW,
    )
    .await;
    assert_eq!(status, 200, "{body}");

    assert_matrix_error(&server.try_login("erin", PW).await, 403, "M_FORBIDDEN");
    let (new_user, _, _) = server.login("erin", "brand-new-password").await;
    assert_eq!(new_user, user_id);

    // logout_devices defaults to true: other devices are logged out, the
    // requesting one stays.
    let (status, _) = server.get("/account/whoami", &token).await;
    assert_eq!(status, 200);
    assert_matrix_error(
        &server.get("/account/whoami", &other_token).await,
        401,
        "M_UNKNOWN_TOKEN",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_only_registration() {
    let server = TestServer::builder()
        .env("HEARTH_REGISTRATION", "token")
        .env("HEARTH_REGISTRATION_TOKEN", "let-me-in")
        .start()
        .await;
    let validity = "/_matrix/client/v1/register/m.login.registration_token/validity";
    let (status, body) = server
        .get_anon(&format!("{validity}?token=let-me-in"))
        .await;
    assert_eq!(
        (status, body["valid"].clone()),
        (200, json!(true)),
        "{body}"
    );
    let (_, body) = server.get_anon(&format!("{validity}?token=wrong")).await;
    assert_eq!(body["valid"], json!(false), "{body}");

    // The dummy stage alone does not complete any flow.
    let (status, body) = server
        .post_anon(
            "/register",
            &json!({ "username": "tok", "password": PW, "auth": { "type": "m.login.dummy" } }),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    assert!(
        flows_offer_stage(&body, "m.login.registration_token"),
        "{body}"
    );
    assert!(!flows_offer_stage(&body, "m.login.dummy"), "{body}");

    let auth = |token: &str| {
        json!({ "username": "tok", "password": PW,
                "auth": { "type": "m.login.registration_token", "token": token } })
    };
    let (status, body) = server.post_anon("/register", &auth("wrong")).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN", "{body}");
    let (status, body) = server.post_anon("/register", &auth("let-me-in")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], "@tok:localhost");
}

#[tokio::test]
async fn an_openid_token_tells_a_third_party_who_the_user_is() {
    let server = TestServer::start().await;
    let (alice, token, _) = server.register("alice", "pw-alice-1").await;
    let (bob, _, _) = server.register("bob", "pw-bob-1").await;
    let path = |user: &str| format!("/user/{}/openid/request_token", enc(user));
    let (status, issued) = server.post(&path(&alice), &token, &json!({})).await;
    assert_eq!(status, 200, "{issued}");
    assert_eq!(issued["token_type"], "Bearer");
    assert_eq!(issued["matrix_server_name"], server.server_name());
    assert_eq!(issued["expires_in"], 3600);
    let openid = issued["access_token"].as_str().unwrap();

    // The third party asks the user's server (its federation API; no request signature).
    let userinfo = |t: &str| {
        format!(
            "/_matrix/federation/v1/openid/userinfo?access_token={}",
            enc(t)
        )
    };
    let (status, info) = server.get_anon(&userinfo(openid)).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["sub"], alice.as_str());
    let resp = server.get_anon(&userinfo("forged")).await;
    assert_matrix_error(&resp, 401, "M_UNKNOWN_TOKEN");
    // Nobody asks for another user's token, and the client's access token is no OpenID token.
    let resp = server.post(&path(&bob), &token, &json!({})).await;
    assert_matrix_error(&resp, 403, "M_FORBIDDEN");
    let resp = server.get_anon(&userinfo(&token)).await;
    assert_matrix_error(&resp, 401, "M_UNKNOWN_TOKEN");
}

/// Open registration offers the dummy flow alone, as Synapse does (offered a token flow too,
/// Element Web picks it and asks for a token nobody has), and a session poll with no auth type
/// (Element sends one) gets the flows back, not an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_registration_offers_the_dummy_flow_alone_and_answers_session_polls() {
    let server = TestServer::start().await;
    let start = json!({ "username": "el", "password": PW });
    let (status, body) = server.post_anon("/register", &start).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        body["flows"],
        json!([{ "stages": ["m.login.dummy"] }]),
        "{body}"
    );
    let session = body["session"].as_str().expect("session").to_owned();

    let poll = json!({ "username": "el", "password": PW, "auth": { "session": session } });
    let (status, body) = server.post_anon("/register", &poll).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body.get("errcode").is_none(),
        "a poll is not an error: {body}"
    );
    assert_eq!(body["session"], json!(session), "{body}");
    assert_eq!(body["completed"], json!([]), "{body}");

    let done = json!({ "username": "el", "password": PW,
                       "auth": { "type": "m.login.dummy", "session": session } });
    let (status, body) = server.post_anon("/register", &done).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], "@el:localhost");
}

/// User-interactive auth as Synapse runs it: a registration session remembers what its first
/// request said and answers a retry as the first time; a session is good for the operation it
/// began with only; authenticating as another user is refused outright.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uia_sessions_remember_their_request_and_are_bound_to_it() {
    let server = TestServer::start().await;
    let first = json!({ "username": "MiXed", "password": PW, "device_id": "DEV1",
                        "initial_device_display_name": "my phone" });
    let (status, body) = server.post_anon("/register", &first).await;
    assert_eq!(status, 401, "{body}");
    let session = body["session"].as_str().expect("session").to_owned();
    let finish = json!({ "auth": { "type": "m.login.dummy", "session": session } });
    let (status, done) = server.post_anon("/register", &finish).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(
        done["user_id"], "@mixed:localhost",
        "names are folded: {done}"
    );
    assert_eq!(done["device_id"], "DEV1", "{done}");
    let token = done["access_token"].as_str().expect("token").to_owned();
    let (_, device) = server.get("/devices/DEV1", &token).await;
    assert_eq!(device["display_name"], "my phone", "{device}");
    // The password came from the first request too.
    let (status, _) = server.try_login("mixed", PW).await;
    assert_eq!(status, 200);
    // A retry of the finished session: the same answer, not "user in use".
    let (status, again) = server.post_anon("/register", &finish).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["user_id"], done["user_id"]);

    // A session begun for deleting one device does not delete another.
    let (_, other_token, _) = server.login("mixed", PW).await;
    let (status, body) = server
        .request(
            Method::DELETE,
            "/devices/DEV1",
            Some(&other_token),
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    let session = body["session"].as_str().expect("session").to_owned();
    let password = |user: &str| {
        json!({ "auth": { "type": "m.login.password", "password": PW, "session": session,
                          "identifier": { "type": "m.id.user", "user": user } } })
    };
    let (status, body) = server
        .post(
            "/delete_devices",
            &other_token,
            &json!({ "devices": ["DEV1"] }),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    let mut wrong_operation = password("mixed");
    wrong_operation["devices"] = json!(["DEV1"]);
    let (status, body) = server
        .post("/delete_devices", &other_token, &wrong_operation)
        .await;
    assert_eq!(status, 403, "{body}");
    // Another user's password is refused outright.
    server.register("someone", PW).await;
    let (status, body) = server
        .request(
            Method::DELETE,
            "/devices/DEV1",
            Some(&other_token),
            Some(&password("someone")),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = server.get("/devices/DEV1", &token).await;
    assert_eq!(status, 200, "the device is still there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inhibit_login_registers_without_a_device_or_token() {
    let server = TestServer::start().await;
    // `inhibit_login` in the first request of the session holds for its last one (SyTest).
    let first = json!({ "username": "quiet", "password": PW, "inhibit_login": true });
    let (status, body) = server.post_anon("/register", &first).await;
    assert_eq!(status, 401, "{body}");
    let finish = json!({ "auth": { "type": "m.login.dummy", "session": body["session"] } });
    let (status, done) = server.post_anon("/register", &finish).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["user_id"], "@quiet:localhost", "{done}");
    // Absent, not null: the spec leaves them out, and clients test for the key.
    for key in [
        "access_token",
        "device_id",
        "refresh_token",
        "expires_in_ms",
    ] {
        assert!(done.get(key).is_none(), "{key} in {done}");
    }
    // The retry of the finished session answers the same.
    let (status, again) = server.post_anon("/register", &finish).await;
    assert_eq!(status, 200, "{again}");
    assert!(again.get("device_id").is_none(), "{again}");
    // The account exists: its password logs in, and that login is its first device.
    let (_, token, _) = server.login("quiet", PW).await;
    let (status, devices) = server.get("/devices", &token).await;
    assert_eq!(status, 200);
    assert_eq!(
        devices["devices"].as_array().map(Vec::len),
        Some(1),
        "{devices}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_auth_accepts_the_legacy_user_field_as_synapse_does() {
    let server = TestServer::start().await;
    let (alice, token, _) = server.register("alice", PW).await;
    let (_, _, other_device) = server.login("alice", PW).await;
    let path = format!("/devices/{other_device}");
    // `{type, user, password}`: the identifier of the r0 days, which SyTest still sends and
    // Synapse still reads (a localpart or a full user id).
    for user in ["alice", alice.as_str()] {
        let (_, _, device) = server.login("alice", PW).await;
        let body = json!({ "auth": { "type": "m.login.password", "user": user, "password": PW } });
        let (status, body) = server
            .request(
                Method::DELETE,
                &format!("/devices/{device}"),
                Some(&token),
                Some(&body),
            )
            .await;
        assert_eq!(status, 200, "{user}: {body}");
    }
    // The legacy field names the user like the identifier does: someone else is refused, and a
    // wrong password is a stage to try again.
    server.register("bob", PW).await;
    let as_bob = json!({ "auth": { "type": "m.login.password", "user": "bob", "password": PW } });
    let (status, body) = server
        .request(Method::DELETE, &path, Some(&token), Some(&as_bob))
        .await;
    assert_eq!(status, 403, "{body}");
    let wrong =
        json!({ "auth": { "type": "m.login.password", "user": "alice", "password": "no" } });
    let (status, body) = server
        .request(Method::DELETE, &path, Some(&token), Some(&wrong))
        .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN", "{body}");
    // Naming nobody at all is a malformed submission (as Synapse answers it), not a 500.
    let nobody = json!({ "auth": { "type": "m.login.password", "password": PW } });
    let resp = server
        .request(Method::DELETE, &path, Some(&token), Some(&nobody))
        .await;
    assert_matrix_error(&resp, 400, "M_INVALID_PARAM");
    let (status, _) = server.get(&path, &token).await;
    assert_eq!(status, 200, "the device is still there");
}
