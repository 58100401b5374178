//! Push rules (spec: "Push Rules: API"): `/pushrules/` and each rule's `enabled` and `actions`.

use ruma::api::client::push::{
    PushRule, delete_pushrule, get_pushrule, get_pushrule_actions, get_pushrule_enabled,
    get_pushrules_all, get_pushrules_global_scope, set_pushrule, set_pushrule_actions,
    set_pushrule_enabled,
};
use ruma::push::{RuleKind, Ruleset};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::Ruma;

fn unknown_rule() -> ApiError {
    ApiError::not_found("Unknown rule")
}

fn rule(ruleset: &Ruleset, kind: RuleKind, rule_id: &str) -> ApiResult<PushRule> {
    ruleset
        .get(kind, rule_id)
        .map(|r| r.to_owned().into())
        .ok_or_else(unknown_rule)
}

pub async fn all(
    state: AppState,
    req: Ruma<get_pushrules_all::v3::Request>,
) -> ApiResult<get_pushrules_all::v3::Response> {
    let ruleset = state.core.push.rules.ruleset(&req.session().user_id);
    Ok(get_pushrules_all::v3::Response::new((*ruleset).clone()))
}

pub async fn global(
    state: AppState,
    req: Ruma<get_pushrules_global_scope::v3::Request>,
) -> ApiResult<get_pushrules_global_scope::v3::Response> {
    let ruleset = state.core.push.rules.ruleset(&req.session().user_id);
    Ok(get_pushrules_global_scope::v3::Response::new(
        (*ruleset).clone(),
    ))
}

pub async fn get(
    state: AppState,
    req: Ruma<get_pushrule::v3::Request>,
) -> ApiResult<get_pushrule::v3::Response> {
    let ruleset = state.core.push.rules.ruleset(&req.session().user_id);
    let b = req.body;
    Ok(get_pushrule::v3::Response::new(rule(
        &ruleset, b.kind, &b.rule_id,
    )?))
}

pub async fn put(
    state: AppState,
    req: Ruma<set_pushrule::v3::Request>,
) -> ApiResult<set_pushrule::v3::Response> {
    let user = req.session().user_id.clone();
    let b = req.body;
    state
        .core
        .push
        .rules
        .update(&user, |r| {
            Ok(r.insert(b.rule, b.after.as_deref(), b.before.as_deref())?)
        })
        .await?;
    Ok(set_pushrule::v3::Response::new())
}

pub async fn delete(
    state: AppState,
    req: Ruma<delete_pushrule::v3::Request>,
) -> ApiResult<delete_pushrule::v3::Response> {
    let user = req.session().user_id.clone();
    let b = req.body;
    state
        .core
        .push
        .rules
        .update(&user, |r| Ok(r.remove(b.kind, &b.rule_id)?))
        .await?;
    Ok(delete_pushrule::v3::Response::new())
}

pub async fn enabled(
    state: AppState,
    req: Ruma<get_pushrule_enabled::v3::Request>,
) -> ApiResult<get_pushrule_enabled::v3::Response> {
    let ruleset = state.core.push.rules.ruleset(&req.session().user_id);
    let b = req.body;
    let enabled = ruleset
        .get(b.kind, &b.rule_id)
        .ok_or_else(unknown_rule)?
        .enabled();
    Ok(get_pushrule_enabled::v3::Response::new(enabled))
}

pub async fn set_enabled(
    state: AppState,
    req: Ruma<set_pushrule_enabled::v3::Request>,
) -> ApiResult<set_pushrule_enabled::v3::Response> {
    let user = req.session().user_id.clone();
    let b = req.body;
    state
        .core
        .push
        .rules
        .update(&user, |r| Ok(r.set_enabled(b.kind, &b.rule_id, b.enabled)?))
        .await?;
    Ok(set_pushrule_enabled::v3::Response::new())
}

pub async fn actions(
    state: AppState,
    req: Ruma<get_pushrule_actions::v3::Request>,
) -> ApiResult<get_pushrule_actions::v3::Response> {
    let ruleset = state.core.push.rules.ruleset(&req.session().user_id);
    let b = req.body;
    let actions = ruleset
        .get(b.kind, &b.rule_id)
        .ok_or_else(unknown_rule)?
        .actions()
        .to_vec();
    Ok(get_pushrule_actions::v3::Response::new(actions))
}

pub async fn set_actions(
    state: AppState,
    req: Ruma<set_pushrule_actions::v3::Request>,
) -> ApiResult<set_pushrule_actions::v3::Response> {
    let user = req.session().user_id.clone();
    let b = req.body;
    state
        .core
        .push
        .rules
        .update(&user, |r| Ok(r.set_actions(b.kind, &b.rule_id, b.actions)?))
        .await?;
    Ok(set_pushrule_actions::v3::Response::new())
}
