//! A user's push rules as clients read and change them (spec: "Push Rules", "Push Rules: API").
//!
//! Hearth keeps its own rule set rather than ruma's `Ruleset`, whose room and sender rules must
//! carry valid room and user ids: the spec lets a rule id be any string, and Synapse takes any
//! (`#spam:example.com` is a room rule SyTest sets). Evaluation still is ruma's:
//! [`RuleSet::evaluable`] is ruma's rule set, less the room and sender rules whose ids no event
//! can match.
//!
//! The server's default rules sit in the same lists as the user's, as clients see them: a new
//! rule goes first among its kind (after `.m.rule.master` for overrides), unless `before` or
//! `after` places it.

use ruma::push::{
    Action, ConditionalPushRule, ConditionalPushRuleInit, PatternedPushRule, PatternedPushRuleInit,
    PushCondition, Ruleset, SimplePushRule, SimplePushRuleInit,
};
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::{Error, Result};

/// The five kinds of rules, in the order they are evaluated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Override,
    Content,
    Room,
    Sender,
    Underride,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Override,
        Kind::Content,
        Kind::Room,
        Kind::Sender,
        Kind::Underride,
    ];

    /// The kind a path names (`override`, `room`, ...).
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Override => "override",
            Kind::Content => "content",
            Kind::Room => "room",
            Kind::Sender => "sender",
            Kind::Underride => "underride",
        }
    }
}

/// One rule, in the shape the spec gives it (`conditions` for overrides and underrides,
/// `pattern` for content rules, neither for room and sender rules).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Rule {
    pub rule_id: String,
    #[serde(default)]
    pub default: bool,
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    pub actions: Vec<Action>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<PushCondition>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
}

fn enabled_by_default() -> bool {
    true
}

/// The `global` scope of a user's push rules. Every kind is listed, empty or not, as Synapse
/// lists them.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RuleSet {
    #[serde(rename = "override", default, deserialize_with = "lenient")]
    override_: Vec<Rule>,
    #[serde(default, deserialize_with = "lenient")]
    content: Vec<Rule>,
    #[serde(default, deserialize_with = "lenient")]
    room: Vec<Rule>,
    #[serde(default, deserialize_with = "lenient")]
    sender: Vec<Rule>,
    #[serde(default, deserialize_with = "lenient")]
    underride: Vec<Rule>,
}

/// A list of rules with any rule that does not read left out, rather than the whole set lost.
fn lenient<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<Rule>, D::Error> {
    let values = Vec::<Value>::deserialize(d)?;
    Ok(values
        .into_iter()
        .filter_map(|v| match serde_json::from_value(v) {
            Ok(rule) => Some(rule),
            Err(e) => {
                tracing::warn!(error = %e, "a stored push rule does not read; left out");
                None
            }
        })
        .collect())
}

impl RuleSet {
    /// The spec's server-default rules for `user`.
    pub fn server_default(user: &UserId) -> RuleSet {
        let defaults = serde_json::to_value(Ruleset::server_default(user))
            .expect("ruma's rule set serialises");
        serde_json::from_value(defaults).expect("ruma's default rules read")
    }

    pub fn rules(&self, kind: Kind) -> &[Rule] {
        match kind {
            Kind::Override => &self.override_,
            Kind::Content => &self.content,
            Kind::Room => &self.room,
            Kind::Sender => &self.sender,
            Kind::Underride => &self.underride,
        }
    }

    fn rules_mut(&mut self, kind: Kind) -> &mut Vec<Rule> {
        match kind {
            Kind::Override => &mut self.override_,
            Kind::Content => &mut self.content,
            Kind::Room => &mut self.room,
            Kind::Sender => &mut self.sender,
            Kind::Underride => &mut self.underride,
        }
    }

    pub fn get(&self, kind: Kind, rule_id: &str) -> Option<&Rule> {
        self.rules(kind).iter().find(|r| r.rule_id == rule_id)
    }

    fn get_mut(&mut self, kind: Kind, rule_id: &str) -> Result<&mut Rule> {
        self.rules_mut(kind)
            .iter_mut()
            .find(|r| r.rule_id == rule_id)
            .ok_or_else(unknown_rule)
    }

    /// Adds `rule`, or changes the rule of that id (which keeps its place and whether it is
    /// enabled unless `before` or `after` moves it). A new rule goes first among the user's rules
    /// of its kind; `before` places it just ahead of that rule, else `after` just behind that
    /// one (Synapse's precedence when both are given). Both name user rules of the same kind.
    pub fn insert(
        &mut self,
        kind: Kind,
        mut rule: Rule,
        before: Option<&str>,
        after: Option<&str>,
    ) -> Result<()> {
        if [before, after]
            .into_iter()
            .flatten()
            .any(|id| id.starts_with('.'))
        {
            return Err(Error::Unknown(
                "A rule cannot be placed relative to a server-default rule".into(),
            ));
        }
        let rules = self.rules_mut(kind);
        let existing = rules.iter().position(|r| r.rule_id == rule.rule_id);
        if let Some(i) = existing {
            rule.enabled = rules[i].enabled;
        }
        let Some(anchor) = before.or(after) else {
            match existing {
                Some(i) => rules[i] = rule,
                None => rules.insert(first_user_position(kind, rules), rule),
            }
            return Ok(());
        };
        if let Some(i) = existing {
            rules.remove(i);
        }
        let Some(i) = rules.iter().position(|r| r.rule_id == anchor) else {
            return Err(Error::Unknown(format!(
                "before/after rule not found: {anchor}"
            )));
        };
        rules.insert(if before.is_some() { i } else { i + 1 }, rule);
        Ok(())
    }

    /// Removes a rule of the user's; the server's own rules stay.
    pub fn remove(&mut self, kind: Kind, rule_id: &str) -> Result<()> {
        let rules = self.rules_mut(kind);
        let i = rules
            .iter()
            .position(|r| r.rule_id == rule_id)
            .ok_or_else(unknown_rule)?;
        if rules[i].default {
            return Err(Error::Unknown(
                "Server-default rules cannot be removed".into(),
            ));
        }
        rules.remove(i);
        Ok(())
    }

    pub fn set_enabled(&mut self, kind: Kind, rule_id: &str, enabled: bool) -> Result<()> {
        self.get_mut(kind, rule_id)?.enabled = enabled;
        Ok(())
    }

    pub fn set_actions(&mut self, kind: Kind, rule_id: &str, actions: Vec<Action>) -> Result<()> {
        self.get_mut(kind, rule_id)?.actions = actions;
        Ok(())
    }

    /// Whether an enabled rule of the user's concerns `room` (see [`RuleSet::copy_room_rules`]).
    pub fn has_room_rules(&self, room: &RoomId) -> bool {
        Kind::ALL
            .into_iter()
            .any(|k| self.rules(k).iter().any(|r| concerns_room(k, r, room)))
    }

    /// After an upgrade of `old` to `new`: each enabled rule of the user's about `old` (a room
    /// rule for it, or a rule with a condition on its `room_id`) gets a copy about `new`, with
    /// `new` as its id, first among its kind. Synapse's
    /// `copy_push_rules_from_room_to_room_for_user`, which keeps a muted room muted.
    pub fn copy_room_rules(&mut self, old: &RoomId, new: &RoomId) {
        let mut copies = Vec::new();
        for kind in Kind::ALL {
            for rule in self.rules(kind) {
                if !concerns_room(kind, rule, old) {
                    continue;
                }
                let mut copy = rule.clone();
                copy.rule_id = new.to_string();
                for c in copy.conditions.iter_mut().flatten() {
                    if let PushCondition::EventMatch(m) = c
                        && m.key == "room_id"
                        && m.pattern == old.as_str()
                    {
                        m.pattern = new.to_string();
                    }
                }
                copies.push((kind, copy));
            }
        }
        // Backwards, each first in turn: the copies keep their order.
        for (kind, copy) in copies.into_iter().rev() {
            let rules = self.rules_mut(kind);
            rules.retain(|r| r.rule_id != copy.rule_id || r.default);
            rules.insert(first_user_position(kind, rules), copy);
        }
    }

    /// The rules as ruma evaluates them. Room and sender rules whose ids are no room or user id
    /// are left out: they match no event.
    pub fn evaluable(&self) -> Ruleset {
        let mut set = Ruleset::new();
        for r in &self.override_ {
            if let Some(c) = conditional(r) {
                set.override_.insert(c);
            }
        }
        for r in &self.content {
            if let Some(pattern) = &r.pattern {
                set.content
                    .insert(PatternedPushRule::from(PatternedPushRuleInit {
                        actions: r.actions.clone(),
                        default: r.default,
                        enabled: r.enabled,
                        rule_id: r.rule_id.clone(),
                        pattern: pattern.clone(),
                    }));
            }
        }
        for r in &self.room {
            if let Ok(id) = OwnedRoomId::try_from(r.rule_id.as_str()) {
                set.room.insert(simple(r, id));
            }
        }
        for r in &self.sender {
            if let Ok(id) = OwnedUserId::try_from(r.rule_id.as_str()) {
                set.sender.insert(simple(r, id));
            }
        }
        for r in &self.underride {
            if let Some(c) = conditional(r) {
                set.underride.insert(c);
            }
        }
        set
    }
}

fn unknown_rule() -> Error {
    Error::not_found("Unknown rule")
}

/// Where a new rule of the user's goes when nothing places it: first, but after
/// `.m.rule.master`, which stays above everything (Synapse's `BASE_PREPEND_OVERRIDE_RULES`).
fn first_user_position(kind: Kind, rules: &[Rule]) -> usize {
    match rules.first() {
        Some(r) if kind == Kind::Override && r.default && r.rule_id == ".m.rule.master" => 1,
        _ => 0,
    }
}

fn concerns_room(kind: Kind, rule: &Rule, room: &RoomId) -> bool {
    if !rule.enabled || rule.default {
        return false;
    }
    if kind == Kind::Room {
        return rule.rule_id == room.as_str();
    }
    rule.conditions.iter().flatten().any(|c| {
        matches!(c, PushCondition::EventMatch(m) if m.key == "room_id" && m.pattern == room.as_str())
    })
}

fn conditional(r: &Rule) -> Option<ConditionalPushRule> {
    Some(ConditionalPushRule::from(ConditionalPushRuleInit {
        actions: r.actions.clone(),
        default: r.default,
        enabled: r.enabled,
        rule_id: r.rule_id.clone(),
        conditions: r.conditions.clone()?,
    }))
}

fn simple<T>(r: &Rule, id: T) -> SimplePushRule<T> {
    SimplePushRule::from(SimplePushRuleInit {
        actions: r.actions.clone(),
        default: r.default,
        enabled: r.enabled,
        rule_id: id,
    })
}

/// A rule as a client's `PUT /pushrules/global/{kind}/{ruleId}` asks for it, checked as Synapse
/// checks it: an id of the user's (no slashes, no leading `.`), `conditions` for overrides and
/// underrides (each with a `kind`), a `pattern` for content rules, and valid `actions`.
pub fn new_rule(kind: Kind, rule_id: &str, body: &Value) -> Result<Rule> {
    if rule_id.is_empty() {
        return Err(Error::InvalidParam("The rule id is empty".into()));
    }
    if rule_id.contains('/') || rule_id.contains('\\') {
        return Err(Error::InvalidParam(
            "rule_id may not contain slashes".into(),
        ));
    }
    if rule_id.starts_with('.') {
        return Err(Error::InvalidParam(
            "Rule ids starting with '.' are reserved for the server's rules".into(),
        ));
    }
    let Some(body) = body.as_object() else {
        return Err(Error::BadJson("A push rule is a JSON object".into()));
    };
    let (conditions, pattern) = match kind {
        Kind::Override | Kind::Underride => {
            let Some(c) = body.get("conditions") else {
                return Err(Error::BadJson("Missing 'conditions'".into()));
            };
            let c = serde_json::from_value(c.clone())
                .map_err(|e| Error::BadJson(format!("Invalid 'conditions': {e}")))?;
            (Some(c), None)
        }
        Kind::Content => match body.get("pattern") {
            Some(Value::String(p)) => (None, Some(p.clone())),
            Some(_) => return Err(Error::BadJson("'pattern' must be a string".into())),
            None => return Err(Error::BadJson("Content rule missing 'pattern'".into())),
        },
        Kind::Room | Kind::Sender => (None, None),
    };
    let Some(actions) = body.get("actions") else {
        return Err(Error::BadJson("No actions found".into()));
    };
    Ok(Rule {
        rule_id: rule_id.to_owned(),
        default: false,
        enabled: true,
        actions: actions_from(actions)?,
        conditions,
        pattern,
    })
}

/// The actions of a rule: `notify`, the legacy `dont_notify` and `coalesce` (which do nothing),
/// and tweaks; anything else is refused, as Synapse refuses it.
pub fn actions_from(value: &Value) -> Result<Vec<Action>> {
    let Some(list) = value.as_array() else {
        return Err(Error::BadJson("'actions' must be a list".into()));
    };
    for a in list {
        let known = match a {
            Value::String(s) => matches!(s.as_str(), "notify" | "dont_notify" | "coalesce"),
            Value::Object(o) => o.contains_key("set_tweak"),
            _ => false,
        };
        if !known {
            return Err(Error::BadJson(format!("Unrecognised action {a}")));
        }
    }
    serde_json::from_value(value.clone())
        .map_err(|e| Error::BadJson(format!("Invalid 'actions': {e}")))
}

/// The body of `PUT .../actions`: `{"actions": [...]}`.
pub fn actions_body(body: &Value) -> Result<Vec<Action>> {
    match body.get("actions") {
        Some(actions) if body.is_object() => actions_from(actions),
        _ => Err(Error::BadJson("Missing 'actions'".into())),
    }
}

/// The body of `PUT .../enabled`: `{"enabled": bool}`, or a bare boolean, which Synapse takes
/// from older clients.
pub fn enabled_body(body: &Value) -> Result<bool> {
    let value = match body {
        Value::Object(o) => o.get("enabled"),
        other => Some(other),
    };
    value
        .and_then(Value::as_bool)
        .ok_or_else(|| Error::BadJson("Value for 'enabled' must be boolean".into()))
}

#[cfg(test)]
mod tests {
    use ruma::{room_id, user_id};
    use serde_json::json;

    use super::*;

    fn simple_rule(id: &str) -> Rule {
        new_rule(Kind::Room, id, &json!({ "actions": ["notify"] })).unwrap()
    }

    fn ids(set: &RuleSet, kind: Kind) -> Vec<&str> {
        set.rules(kind).iter().map(|r| r.rule_id.as_str()).collect()
    }

    #[test]
    fn defaults_read_back_as_ruma_writes_them() {
        let user = user_id!("@bob:example.org");
        let set = RuleSet::server_default(user);
        assert_eq!(ids(&set, Kind::Override)[0], ".m.rule.master");
        let round = serde_json::to_value(&set).unwrap();
        assert_eq!(round["room"], json!([]), "every kind is listed");
        // The spec's kinds, that is: ruma's unstable ones (`postcontent`, which a build of the
        // whole workspace switches on for matrix-sdk) are not Hearth's.
        let evaluable = serde_json::to_value(set.evaluable()).unwrap();
        let ruma = serde_json::to_value(Ruleset::server_default(user)).unwrap();
        for kind in Kind::ALL {
            assert_eq!(evaluable[kind.as_str()], ruma[kind.as_str()], "{kind:?}");
        }
    }

    #[test]
    fn new_rules_come_first_and_before_and_after_place_them() {
        let mut set = RuleSet::server_default(user_id!("@bob:example.org"));
        set.insert(Kind::Room, simple_rule("#a:x"), None, None)
            .unwrap();
        set.insert(Kind::Room, simple_rule("#b:x"), None, None)
            .unwrap();
        set.insert(Kind::Room, simple_rule("#c:x"), Some("#a:x"), None)
            .unwrap();
        set.insert(Kind::Room, simple_rule("#d:x"), None, Some("#b:x"))
            .unwrap();
        assert_eq!(ids(&set, Kind::Room), ["#b:x", "#d:x", "#c:x", "#a:x"]);
        // `before` wins over `after`, as in Synapse.
        set.insert(Kind::Room, simple_rule("#a:x"), Some("#b:x"), Some("#c:x"))
            .unwrap();
        assert_eq!(ids(&set, Kind::Room), ["#a:x", "#b:x", "#d:x", "#c:x"]);
        let err = set.insert(Kind::Room, simple_rule("#e:x"), Some("#zz:x"), None);
        assert!(matches!(err, Err(Error::Unknown(_))));

        let cond = json!({ "conditions": [], "actions": [] });
        let rule = new_rule(Kind::Override, "mine", &cond).unwrap();
        set.insert(Kind::Override, rule, None, None).unwrap();
        assert_eq!(ids(&set, Kind::Override)[..2], [".m.rule.master", "mine"]);
        let rule = new_rule(Kind::Override, "x", &cond).unwrap();
        let err = set.insert(Kind::Override, rule, Some(".m.rule.master"), None);
        assert!(matches!(err, Err(Error::Unknown(_))));
    }

    #[test]
    fn a_changed_rule_keeps_its_place_and_its_switch() {
        let mut set = RuleSet::default();
        for id in ["#a:x", "#b:x"] {
            set.insert(Kind::Room, simple_rule(id), None, None).unwrap();
        }
        set.set_enabled(Kind::Room, "#a:x", false).unwrap();
        let quiet = new_rule(Kind::Room, "#a:x", &json!({ "actions": [] })).unwrap();
        set.insert(Kind::Room, quiet, None, None).unwrap();
        assert_eq!(ids(&set, Kind::Room), ["#b:x", "#a:x"]);
        let a = set.get(Kind::Room, "#a:x").unwrap();
        assert!(!a.enabled);
        assert!(a.actions.is_empty());
    }

    #[test]
    fn odd_ids_are_kept_but_not_evaluated() {
        let mut set = RuleSet::default();
        set.insert(Kind::Room, simple_rule("#spam:x"), None, None)
            .unwrap();
        set.insert(Kind::Room, simple_rule("!r:x"), None, None)
            .unwrap();
        let eval = set.evaluable();
        assert_eq!(eval.room.len(), 1);
        // A stored rule that does not read is dropped alone.
        let stored = json!({ "room": [{ "rule_id": "!r:x" }, serde_json::to_value(simple_rule("!s:x")).unwrap()] });
        let read: RuleSet = serde_json::from_value(stored).unwrap();
        assert_eq!(ids(&read, Kind::Room), ["!s:x"]);
    }

    #[test]
    fn bodies_are_checked_as_synapse_checks_them() {
        let bad = [
            (Kind::Room, "a/b", json!({ "actions": [] })),
            (Kind::Room, "a\\b", json!({ "actions": [] })),
            (Kind::Room, ".x", json!({ "actions": [] })),
            (Kind::Room, "x", json!({})),
            (Kind::Room, "x", json!({ "actions": ["not_an_action"] })),
            (Kind::Room, "x", json!({ "actions": [{ "value": 1 }] })),
            (Kind::Override, "x", json!({ "actions": [] })),
            (
                Kind::Underride,
                "x",
                json!({ "conditions": [{}], "actions": [] }),
            ),
            (Kind::Content, "x", json!({ "actions": [] })),
        ];
        for (kind, id, body) in bad {
            assert!(new_rule(kind, id, &body).is_err(), "{id} {body}");
        }
        let ok = json!({ "actions": ["notify", "dont_notify", "coalesce", { "set_tweak": "sound", "value": "x" }] });
        let rule = new_rule(Kind::Sender, "@a:x", &ok).unwrap();
        assert_eq!(serde_json::to_value(&rule.actions).unwrap(), ok["actions"]);
        assert!(matches!(
            enabled_body(&json!({ "enabled": false })),
            Ok(false)
        ));
        assert!(matches!(enabled_body(&json!(true)), Ok(true)));
        assert!(enabled_body(&json!({ "enabled": "yes" })).is_err());
        assert!(actions_body(&json!(["notify"])).is_err());
    }

    #[test]
    fn room_rules_follow_an_upgrade() {
        let (old, new) = (room_id!("!old:x"), room_id!("!new:x"));
        let mut set = RuleSet::server_default(user_id!("@bob:example.org"));
        set.insert(Kind::Room, simple_rule(old.as_str()), None, None)
            .unwrap();
        let mute = json!({
            "conditions": [{ "kind": "event_match", "key": "room_id", "pattern": old }],
            "actions": [],
        });
        let rule = new_rule(Kind::Override, old.as_str(), &mute).unwrap();
        set.insert(Kind::Override, rule, None, None).unwrap();
        let rule = new_rule(Kind::Underride, "off", &mute).unwrap();
        set.insert(Kind::Underride, rule, None, None).unwrap();
        set.set_enabled(Kind::Underride, "off", false).unwrap();
        assert!(set.has_room_rules(old));
        assert!(!set.has_room_rules(new));

        set.copy_room_rules(old, new);
        assert_eq!(ids(&set, Kind::Room), [new.as_str(), old.as_str()]);
        assert_eq!(
            ids(&set, Kind::Override)[..3],
            [".m.rule.master", new.as_str(), old.as_str()]
        );
        let copied = set.get(Kind::Override, new.as_str()).unwrap();
        assert_eq!(
            serde_json::to_value(&copied.conditions).unwrap(),
            json!([{ "kind": "event_match", "key": "room_id", "pattern": new }])
        );
        assert_eq!(ids(&set, Kind::Underride)[0], "off");
        assert!(set.get(Kind::Underride, new.as_str()).is_none());
    }
}
