//! User-interactive authentication: sessions that remember which stages a client completed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use hearth_core::util::random_string;
use parking_lot::Mutex;
use ruma::UserId;
use ruma::api::client::uiaa::{AuthData, UserIdentifier};
use serde_json::json;

use crate::AppState;
use crate::error::{ApiError, ApiResult};

const SESSION_TTL: Duration = Duration::from_secs(30 * 60);

#[derive(Default)]
pub struct UiaSessions {
    sessions: Mutex<HashMap<String, (Instant, Vec<String>)>>,
}

/// Who is being authenticated: nobody yet (registration) or a logged-in user.
pub enum Subject<'a> {
    Registration,
    User(&'a UserId),
}

impl UiaSessions {
    /// Completes the stage in `auth` if it checks out; succeeds once some flow is complete,
    /// otherwise answers 401 with the flows and what is done so far.
    pub async fn check(
        &self,
        state: &AppState,
        auth: Option<&AuthData>,
        flows: &[&[&str]],
        subject: Subject<'_>,
    ) -> ApiResult<()> {
        let session_id = auth
            .and_then(|a| a.session())
            .map(str::to_owned)
            .filter(|s| self.sessions.lock().contains_key(s))
            .unwrap_or_else(|| {
                let id = random_string(24);
                let mut map = self.sessions.lock();
                map.retain(|_, (t, _)| t.elapsed() < SESSION_TTL);
                map.insert(id.clone(), (Instant::now(), Vec::new()));
                id
            });
        let mut failure = None;
        // `{"session": ...}` with no type is a client polling where the session stands (Element
        // does, while the user is elsewhere in the flow): it completes nothing and fails nothing.
        let attempt = auth.filter(|a| !matches!(a, AuthData::FallbackAcknowledgement(_)));
        if let Some(auth) = attempt {
            match self.complete_stage(state, auth, &subject).await {
                Ok(stage) => {
                    if let Some((_, done)) = self.sessions.lock().get_mut(&session_id)
                        && !done.contains(&stage)
                    {
                        done.push(stage);
                    }
                }
                Err(e) => failure = Some(e),
            }
        }
        let done = self
            .sessions
            .lock()
            .get(&session_id)
            .map(|(_, d)| d.clone())
            .unwrap_or_default();
        if failure.is_none()
            && flows
                .iter()
                .any(|f| f.iter().all(|s| done.iter().any(|d| d == s)))
        {
            self.sessions.lock().remove(&session_id);
            return Ok(());
        }
        let body = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "M_FORBIDDEN",
            "Authentication required",
        )
        .with(
            "flows",
            json!(
                flows
                    .iter()
                    .map(|f| json!({ "stages": f }))
                    .collect::<Vec<_>>()
            ),
        )
        .with("params", json!({}))
        .with("session", json!(session_id))
        .with("completed", json!(done));
        Err(match failure {
            Some(e) => ApiError {
                errcode: e.errcode,
                message: e.message,
                ..body
            },
            // No stage failed: the bare UIA body, without an errcode (as Synapse answers).
            None => ApiError {
                errcode: "",
                ..body
            },
        })
    }

    /// The check sensitive account operations make: the user confirms their password.
    pub async fn confirm_password(
        &self,
        state: &AppState,
        auth: Option<&AuthData>,
        user: &UserId,
    ) -> ApiResult<()> {
        self.check(state, auth, &[&["m.login.password"]], Subject::User(user))
            .await
    }

    async fn complete_stage(
        &self,
        state: &AppState,
        auth: &AuthData,
        subject: &Subject<'_>,
    ) -> ApiResult<String> {
        match auth {
            AuthData::Dummy(_) => Ok("m.login.dummy".into()),
            AuthData::RegistrationToken(t) => {
                if state.config.registration_token.as_deref() == Some(t.token.as_str()) {
                    Ok("m.login.registration_token".into())
                } else {
                    Err(ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "M_FORBIDDEN",
                        "Invalid registration token",
                    ))
                }
            }
            AuthData::Password(p) => {
                let Subject::User(user) = subject else {
                    return Err(ApiError::forbidden("Password authentication needs a user"));
                };
                let claimed = match &p.identifier {
                    UserIdentifier::Matrix(m) => state.core.accounts.resolve_login_user(&m.user)?,
                    _ => return Err(ApiError::forbidden("Unsupported identifier")),
                };
                if claimed != *user {
                    return Err(ApiError::forbidden("Invalid username or password"));
                }
                state
                    .core
                    .accounts
                    .check_password(user, &p.password)
                    .await
                    .map_err(|_| {
                        ApiError::new(StatusCode::UNAUTHORIZED, "M_FORBIDDEN", "Invalid password")
                    })?;
                Ok("m.login.password".into())
            }
            _ => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "M_UNRECOGNIZED",
                "Unsupported authentication type",
            )),
        }
    }
}
