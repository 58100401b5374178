//! Push rules (spec: "Push Rules: API"): `/pushrules/`, each rule, its `enabled` and `actions`.
//!
//! Hearth reads these paths itself, as Synapse does, rather than through ruma's request types:
//! a rule id is any string (`#spam:example.com`, `тест`), a scope or kind wants its trailing slash
//! (`GET /pushrules/global/room/` lists the room rules), and an unknown scope, kind or attribute
//! is a 400 `M_UNRECOGNIZED`. The rules themselves are `hearth_core::push::ruleset`'s.

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{StatusCode, Uri};
use hearth_core::push::ruleset::{self, Kind};
use serde_json::{Value, json};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, QueryParams, read_body};
use crate::rate_limit::Key;

/// What a path under `/pushrules/` names. The path is split at each `/` before each part is
/// percent-decoded, so an encoded `/` stays inside a rule id.
#[derive(Debug, PartialEq)]
enum Target {
    /// `pushrules/`
    All,
    /// `pushrules/global/`
    Global,
    /// `pushrules/global/{kind}/`
    Kind(Kind),
    /// `pushrules/global/{kind}/{ruleId}`
    Rule(Kind, String),
    /// `pushrules/global/{kind}/{ruleId}/{attr}`
    Attr(Kind, String, String),
}

fn unrecognized(m: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "M_UNRECOGNIZED", m)
}

fn trailing_slash() -> ApiError {
    unrecognized("Unrecognised request: You probably wanted a trailing slash")
}

fn target(path: &str) -> ApiResult<Target> {
    let Some((_, rest)) = path.split_once("/pushrules/") else {
        return Err(unrecognized("Unrecognised request"));
    };
    let parts = rest
        .split('/')
        .map(|p| {
            percent_encoding::percent_decode_str(p)
                .decode_utf8()
                .map(|p| p.into_owned())
                .map_err(|_| ApiError::invalid_param("The path is not UTF-8"))
        })
        .collect::<ApiResult<Vec<String>>>()?;
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    match parts.as_slice() {
        [""] => return Ok(Target::All),
        ["global"] => return Err(trailing_slash()),
        ["global", ""] => return Ok(Target::Global),
        ["global", ..] => {}
        _ => return Err(unrecognized("Unknown push rule scope")),
    }
    let kind = Kind::parse(parts[1]).ok_or_else(|| unrecognized("Unknown push rule kind"))?;
    Ok(match &parts[2..] {
        [] => return Err(trailing_slash()),
        [""] => Target::Kind(kind),
        [id] | [id, ""] if !id.is_empty() => Target::Rule(kind, (*id).to_owned()),
        [id, attr] if !id.is_empty() => Target::Attr(kind, (*id).to_owned(), (*attr).to_owned()),
        _ => return Err(unrecognized("Unrecognised request")),
    })
}

/// `GET /pushrules/...`: all rules, the global scope, a kind's list, a rule, or one of its
/// attributes (`{"enabled": ...}`, `{"actions": [...]}`, or any other field the rule shows, as
/// Synapse answers).
pub async fn get(
    State(state): State<AppState>,
    Auth(session): Auth,
    uri: Uri,
) -> ApiResult<Json<Value>> {
    let target = target(uri.path())?;
    let ruleset = state.core.push.rules.ruleset(&session.user_id);
    let rule = |kind, id: &str| ruleset.get(kind, id).ok_or_else(unknown_rule);
    Ok(Json(match target {
        Target::All => json!({ "global": &*ruleset }),
        Target::Global => json!(&*ruleset),
        Target::Kind(kind) => json!(ruleset.rules(kind)),
        Target::Rule(kind, id) => json!(rule(kind, &id)?),
        Target::Attr(kind, id, attr) => {
            let rule = json!(rule(kind, &id)?);
            match rule.get(&attr) {
                Some(v) => json!({ attr: v }),
                None => return Err(unrecognized("Unknown push rule attribute")),
            }
        }
    }))
}

#[derive(serde::Deserialize)]
pub struct Placement {
    before: Option<String>,
    after: Option<String>,
}

/// `PUT /pushrules/global/{kind}/{ruleId}` (with `before` or `after` to place a new rule), and
/// `PUT .../{ruleId}/enabled` or `.../actions`.
pub async fn put(
    State(state): State<AppState>,
    Auth(session): Auth,
    uri: Uri,
    QueryParams(placement): QueryParams<Placement>,
    req: Request,
) -> ApiResult<Json<Value>> {
    // The path is checked before the body, as Synapse checks them.
    let (kind, id, attr) = match target(uri.path())? {
        Target::Rule(kind, id) => (kind, id, None),
        Target::Attr(kind, id, attr) if attr == "enabled" || attr == "actions" => {
            (kind, id, Some(attr))
        }
        Target::Attr(..) => return Err(unrecognized("Unknown push rule attribute")),
        _ => {
            return Err(unrecognized(
                "A push rule is named by its scope, kind and id",
            ));
        }
    };
    if attr.is_none() {
        // The spec rate-limits making a rule (not switching one or changing its actions).
        state
            .limiter
            .check(Key::User(session.user_id.to_string()))?;
    }
    let (parts, body) = req.into_parts();
    let bytes = read_body(&parts.headers, body, state.config.max_request_bytes).await?;
    let body: Value = serde_json::from_slice(&bytes).map_err(|_| ApiError::not_json())?;
    let rules = &state.core.push.rules;
    let user = &session.user_id;
    match attr.as_deref() {
        None => {
            let rule = ruleset::new_rule(kind, &id, &body)?;
            let some = |s: Option<String>| s.filter(|s| !s.is_empty());
            let (before, after) = (some(placement.before), some(placement.after));
            rules
                .update(user, |r| {
                    r.insert(kind, rule, before.as_deref(), after.as_deref())
                })
                .await?;
        }
        Some("enabled") => {
            let enabled = ruleset::enabled_body(&body)?;
            rules
                .update(user, |r| r.set_enabled(kind, &id, enabled))
                .await?;
        }
        Some(_) => {
            let actions = ruleset::actions_body(&body)?;
            rules
                .update(user, |r| r.set_actions(kind, &id, actions))
                .await?;
        }
    }
    Ok(Json(json!({})))
}

/// `DELETE /pushrules/global/{kind}/{ruleId}`.
pub async fn delete(
    State(state): State<AppState>,
    Auth(session): Auth,
    uri: Uri,
) -> ApiResult<Json<Value>> {
    let Target::Rule(kind, id) = target(uri.path())? else {
        return Err(unrecognized(
            "A push rule is named by its scope, kind and id",
        ));
    };
    state
        .core
        .push
        .rules
        .update(&session.user_id, |r| r.remove(kind, &id))
        .await?;
    Ok(Json(json!({})))
}

fn unknown_rule() -> ApiError {
    ApiError::not_found("Unknown rule")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(rest: &str) -> Result<Target, &'static str> {
        target(&format!("/_matrix/client/v3/pushrules/{rest}")).map_err(|e| e.errcode)
    }

    #[test]
    fn paths_read_as_synapse_reads_them() {
        assert_eq!(parse(""), Ok(Target::All));
        assert_eq!(parse("global/"), Ok(Target::Global));
        assert_eq!(parse("global/room/"), Ok(Target::Kind(Kind::Room)));
        assert_eq!(
            parse("global/room/%23spam:example.com"),
            Ok(Target::Rule(Kind::Room, "#spam:example.com".into()))
        );
        assert_eq!(
            parse("global/content/%D1%82%D0%B5%D1%81%D1%82/"),
            Ok(Target::Rule(Kind::Content, "тест".into()))
        );
        assert_eq!(
            parse("global/room/a%2Fb/enabled"),
            Ok(Target::Attr(Kind::Room, "a/b".into(), "enabled".into()))
        );
        for bad in [
            "global",
            "global/room",
            "device/",
            "not_a_scope/room/x",
            "/global/",
            "global/not_a_kind/",
            "global/room//",
            "global/room/x/enabled/more",
        ] {
            assert_eq!(parse(bad), Err("M_UNRECOGNIZED"), "{bad}");
        }
        assert_eq!(parse("global/room/%FF"), Err("M_INVALID_PARAM"));
    }
}
