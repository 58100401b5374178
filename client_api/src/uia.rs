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
    sessions: Mutex<HashMap<String, Session>>,
}

struct Session {
    started: Instant,
    /// The stages completed so far.
    done: Vec<String>,
    /// What the session authenticates, set by the request that began it: a session completed
    /// for deleting one device must not delete another (Synapse compares the request too).
    operation: String,
    /// The parameters of the request that began it: registration fills in what a later request
    /// of the same session leaves out (a device id, `inhibit_login`), as Synapse does.
    params: serde_json::Value,
    /// The answer of the operation the session completed, for a retry of the same session
    /// (registration is idempotent).
    outcome: Option<serde_json::Value>,
}

/// Who is being authenticated: nobody yet (registration) or a logged-in user.
pub enum Subject<'a> {
    Registration,
    User(&'a UserId),
}

impl UiaSessions {
    /// Completes the stage in `auth` if it checks out; succeeds once some flow is complete,
    /// otherwise answers 401 with the flows and what is done so far. `operation` names what is
    /// being authenticated (and its target); a session is good for that operation alone.
    /// `params` are the request's parameters, kept by the session that this request begins.
    pub async fn check(
        &self,
        state: &AppState,
        auth: Option<&AuthData>,
        flows: &[&[&str]],
        subject: Subject<'_>,
        operation: &str,
        params: serde_json::Value,
    ) -> ApiResult<()> {
        let known = auth.and_then(|a| a.session()).and_then(|s| {
            let sessions = self.sessions.lock();
            sessions
                .get(s)
                .map(|session| (s.to_owned(), session.operation.clone()))
        });
        let session_id = match known {
            Some((_, started_for)) if started_for != operation => {
                return Err(ApiError::forbidden(
                    "This authentication session was started for another operation",
                ));
            }
            Some((id, _)) => id,
            None => {
                let id = random_string(24);
                let mut map = self.sessions.lock();
                map.retain(|_, s| s.started.elapsed() < SESSION_TTL);
                map.insert(
                    id.clone(),
                    Session {
                        started: Instant::now(),
                        done: Vec::new(),
                        operation: operation.to_owned(),
                        params,
                        outcome: None,
                    },
                );
                id
            }
        };
        let mut failure = None;
        // `{"session": ...}` with no type is a client polling where the session stands (Element
        // does, while the user is elsewhere in the flow): it completes nothing and fails nothing.
        let attempt = auth.filter(|a| !matches!(a, AuthData::FallbackAcknowledgement(_)));
        if let Some(auth) = attempt {
            match self.complete_stage(state, auth, &subject).await {
                Ok(stage) => {
                    if let Some(session) = self.sessions.lock().get_mut(&session_id)
                        && !session.done.contains(&stage)
                    {
                        session.done.push(stage);
                    }
                }
                // Authenticating as someone else is refused outright, not a stage to retry.
                Err(e) if e.status == StatusCode::FORBIDDEN => return Err(e),
                Err(e) => failure = Some(e),
            }
        }
        let done = self
            .sessions
            .lock()
            .get(&session_id)
            .map(|s| s.done.clone())
            .unwrap_or_default();
        if failure.is_none()
            && flows
                .iter()
                .any(|f| f.iter().all(|s| done.iter().any(|d| d == s)))
        {
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

    /// The parameters the session in `auth` began with, if it is one of ours.
    pub fn params(&self, auth: Option<&AuthData>) -> Option<serde_json::Value> {
        let id = auth?.session()?;
        self.sessions.lock().get(id).map(|s| s.params.clone())
    }

    /// What the operation of the session in `auth` answered, if it completed before.
    pub fn outcome(&self, auth: Option<&AuthData>) -> Option<serde_json::Value> {
        let id = auth?.session()?;
        self.sessions.lock().get(id).and_then(|s| s.outcome.clone())
    }

    /// The operation of the session in `auth` completed with `outcome`; the session stays, for
    /// a client that retries it.
    pub fn completed(&self, auth: Option<&AuthData>, outcome: serde_json::Value) {
        if let Some(id) = auth.and_then(AuthData::session)
            && let Some(session) = self.sessions.lock().get_mut(id)
        {
            session.outcome = Some(outcome);
            // The password it kept for later stages is no longer needed.
            session.params = serde_json::Value::Null;
        }
    }

    /// A session that did its work (other than registration's) can do no more.
    fn close(&self, auth: Option<&AuthData>) {
        if let Some(id) = auth.and_then(AuthData::session) {
            self.sessions.lock().remove(id);
        }
    }

    /// The check sensitive account operations make: the user confirms their password for
    /// `operation`.
    pub async fn confirm_password(
        &self,
        state: &AppState,
        auth: Option<&AuthData>,
        user: &UserId,
        operation: &str,
    ) -> ApiResult<()> {
        let operation = format!("{operation} by {user}");
        self.check(
            state,
            auth,
            &[&["m.login.password"]],
            Subject::User(user),
            &operation,
            serde_json::Value::Null,
        )
        .await?;
        self.close(auth);
        Ok(())
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
