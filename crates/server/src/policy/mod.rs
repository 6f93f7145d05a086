//! Access policy: who may publish, subscribe and call what.
//!
//! A policy is an ordered list of rules. A rule matches a connection by the
//! listener that accepted it, its SELinux type and MCS level, its uid and
//! gid; every condition a rule names must hold. **The first matching rule
//! decides** (file order, like a firewall): it grants actions on name
//! patterns and may tighten limits. A connection no rule matches may do
//! nothing but introspect (`GetInfo`, `GetInterfaceDescription`). A rule
//! that names an SELinux type or level never matches a peer without a label
//! (SELinux off): it fails closed.

mod file;
mod label;

pub use file::{PolicyError, DEFAULT_POLICY};
pub use label::Label;

use std::fmt;

use qm_ipc_proto::interface::TopicPattern;

use crate::config::RateLimit;

/// What a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Publish,
    /// Read a topic: `Get` and `Subscribe`.
    Subscribe,
    Call,
    Stats,
    /// See which topics and services there are (`List`).
    List,
    /// Watch what happens (`Monitor`).
    Monitor,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Subscribe => "subscribe",
            Self::Call => "call",
            Self::Stats => "stats",
            Self::List => "list",
            Self::Monitor => "monitor",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "publish" => Self::Publish,
            "subscribe" | "get" => Self::Subscribe,
            "call" => Self::Call,
            "stats" => Self::Stats,
            "list" => Self::List,
            "monitor" => Self::Monitor,
            _ => return None,
        })
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Who is asking, as policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    pub listener: &'a str,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub label: Option<&'a Label>,
}

/// Limits a rule tightens (the stricter of the rule's and the gateway's
/// applies).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleLimits {
    pub rate: Option<RateLimit>,
    pub max_subscription_patterns: Option<usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    pub publish: Vec<TopicPattern>,
    pub subscribe: Vec<TopicPattern>,
    pub call: Vec<TopicPattern>,
    pub stats: bool,
    /// `List`: which topics there are (those the peer may read) and which
    /// services (those it may call). A grant of its own: what exists is
    /// information too.
    pub list: bool,
    /// `Monitor`: every publish, call, reply and error, of the topics the
    /// peer may read and the services it may call.
    pub monitor: bool,
}

impl Grants {
    fn patterns(&self, action: Action) -> &[TopicPattern] {
        match action {
            Action::Publish => &self.publish,
            Action::Subscribe => &self.subscribe,
            Action::Call => &self.call,
            Action::Stats | Action::List | Action::Monitor => &[],
        }
    }

    pub fn allows(&self, action: Action, name: &str) -> bool {
        match action {
            Action::Stats => self.stats,
            Action::List => self.list,
            Action::Monitor => self.monitor,
            _ => self.patterns(action).iter().any(|p| p.matches(name)),
        }
    }

    /// Could this action be granted on some name that `pattern` matches?
    pub fn overlaps(&self, action: Action, pattern: &TopicPattern) -> bool {
        self.patterns(action).iter().any(|p| p.overlaps(pattern))
    }

    /// Does the rule grant this action on anything at all?
    pub fn any(&self, action: Action) -> bool {
        match action {
            Action::Stats => self.stats,
            Action::List => self.list,
            Action::Monitor => self.monitor,
            _ => !self.patterns(action).is_empty(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    /// Where the rule starts in its file (for explanations).
    pub line: usize,
    pub socket: Option<String>,
    pub selinux_type: Option<String>,
    pub level: Option<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub grants: Grants,
    pub limits: RuleLimits,
}

impl Rule {
    pub fn matches(&self, id: &Identity<'_>) -> bool {
        let label_ok = |want: &Option<String>, have: Option<&str>| match want {
            None => true,
            // Fail closed: a required label part never matches no label.
            Some(want) => have == Some(want.as_str()),
        };
        self.socket.as_deref().is_none_or(|s| s == id.listener)
            && self.uid.is_none_or(|u| Some(u) == id.uid)
            && self.gid.is_none_or(|g| Some(g) == id.gid)
            && label_ok(
                &self.selinux_type,
                id.label.map(|l| l.selinux_type.as_str()),
            )
            && label_ok(&self.level, id.label.and_then(|l| l.level.as_deref()))
    }

    /// Does the rule depend on SELinux labels?
    pub fn needs_label(&self) -> bool {
        self.selinux_type.is_some() || self.level.is_some()
    }
}

/// Why a request is allowed or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'a> {
    Allowed(&'a Rule),
    /// A rule matched but grants nothing for this action and name.
    NotGranted(&'a Rule),
    /// No rule matches the peer.
    NoRule,
}

impl Decision<'_> {
    pub fn allowed(&self) -> bool {
        matches!(self, Self::Allowed(_))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Where it came from, for messages (`<built-in>` for the default).
    pub source: String,
    pub rules: Vec<Rule>,
    /// Listener names the file declares beyond consumer and provider
    /// (`sockets = [...]`).
    pub declared_sockets: Vec<String>,
}

impl Policy {
    /// Does the policy know a listener of this name? Connections on a
    /// listener it does not know could only ever be denied, so the gateway
    /// refuses to start with one.
    pub fn knows_listener(&self, name: &str) -> bool {
        name == crate::config::CONSUMER
            || name == crate::config::PROVIDER
            || self.declared_sockets.iter().any(|s| s == name)
    }

    /// The first rule that matches the peer.
    pub fn rule_for(&self, id: &Identity<'_>) -> Option<&Rule> {
        self.rules.iter().find(|r| r.matches(id))
    }

    pub fn check(&self, id: &Identity<'_>, action: Action, name: &str) -> Decision<'_> {
        match self.rule_for(id) {
            None => Decision::NoRule,
            Some(rule) if rule.grants.allows(action, name) => Decision::Allowed(rule),
            Some(rule) => Decision::NotGranted(rule),
        }
    }

    /// May the peer keep a subscription with this pattern: an exact topic
    /// it may read, or a pattern under which it may read something?
    pub fn may_subscribe(&self, id: &Identity<'_>, pattern: &TopicPattern) -> bool {
        match pattern {
            TopicPattern::Exact(topic) => self.may_read(id, topic),
            TopicPattern::Prefix(_) => self
                .rule_for(id)
                .is_some_and(|r| r.grants.overlaps(Action::Subscribe, pattern)),
        }
    }

    /// May the peer read `topic`? (For filtering pattern subscriptions.)
    pub fn may_read(&self, id: &Identity<'_>, topic: &str) -> bool {
        self.check(id, Action::Subscribe, topic).allowed()
    }

    /// Rules that can never match on a system without SELinux labels.
    pub fn label_rules(&self) -> usize {
        self.rules.iter().filter(|r| r.needs_label()).count()
    }

    /// A human explanation of a decision.
    pub fn explain(&self, id: &Identity<'_>, action: Action, name: &str) -> String {
        let at = |r: &Rule| format!("{}:{}", self.source, r.line);
        match self.check(id, action, name) {
            Decision::Allowed(r) => format!(
                "allowed: rule {:?} ({}) grants {action} on {name}",
                r.name,
                at(r)
            ),
            Decision::NotGranted(r) => format!(
                "denied: rule {:?} ({}) matches first and does not grant {action} on {name}",
                r.name,
                at(r)
            ),
            Decision::NoRule => "denied: no rule matches this peer".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> Policy {
        Policy::parse("test.toml", text, &[]).unwrap()
    }

    const SAMPLE: &str = r#"
[[rule]]
name = "asil"
socket = "provider"
allow = { publish = ["*"], subscribe = ["*"], call = ["*"], stats = true }

[[rule]]
name = "infotainment"
socket = "consumer"
selinux_type = "qm_container_ipc_t"
level = "s0:c1,c2"
allow = { subscribe = ["vehicle.*"], publish = ["media.*"] }

[[rule]]
name = "uid-1000"
uid = 1000
allow = { subscribe = ["vehicle.speed"] }
"#;

    fn label(text: &str) -> Label {
        Label::parse(text).unwrap()
    }

    #[test]
    fn first_matching_rule_decides() {
        let p = policy(SAMPLE);
        let info = label("system_u:system_r:qm_container_ipc_t:s0:c1,c2");
        let id = Identity {
            listener: "consumer",
            uid: Some(1000),
            gid: None,
            label: Some(&info),
        };
        assert!(
            matches!(p.check(&id, Action::Subscribe, "vehicle.gear"), Decision::Allowed(r) if r.name == "infotainment")
        );
        assert!(
            matches!(p.check(&id, Action::Call, "demo.echo"), Decision::NotGranted(r) if r.name == "infotainment")
        );
        // Without a label the label rule cannot match: the uid rule does.
        let bare = Identity {
            listener: "consumer",
            uid: Some(1000),
            gid: None,
            label: None,
        };
        assert!(
            matches!(p.check(&bare, Action::Subscribe, "vehicle.gear"), Decision::NotGranted(r) if r.name == "uid-1000")
        );
        assert!(p.check(&bare, Action::Subscribe, "vehicle.speed").allowed());
        let stranger = Identity {
            listener: "consumer",
            uid: Some(7),
            gid: None,
            label: None,
        };
        assert_eq!(
            p.check(&stranger, Action::Subscribe, "vehicle.speed"),
            Decision::NoRule
        );
    }

    #[test]
    fn label_rules_fail_closed_and_levels_must_match() {
        let p = policy(SAMPLE);
        let other_level = label("system_u:system_r:qm_container_ipc_t:s0:c3,c4");
        let id = Identity {
            listener: "consumer",
            uid: Some(5),
            gid: None,
            label: Some(&other_level),
        };
        assert_eq!(
            p.check(&id, Action::Subscribe, "vehicle.speed"),
            Decision::NoRule
        );
        assert_eq!(p.label_rules(), 1);
    }

    #[test]
    fn provider_may_do_everything_in_the_sample() {
        let p = policy(SAMPLE);
        let id = Identity {
            listener: "provider",
            uid: Some(0),
            gid: Some(0),
            label: None,
        };
        for action in [
            Action::Publish,
            Action::Subscribe,
            Action::Call,
            Action::Stats,
        ] {
            assert!(p.check(&id, action, "x.y").allowed(), "{action}");
        }
        assert!(p.explain(&id, Action::Call, "x").contains("test.toml:2"));
    }
}
