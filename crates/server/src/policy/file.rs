//! The policy file: TOML, checked strictly. Unknown keys, malformed
//! patterns and unknown socket names are refused with `file:line` and what
//! is wrong.

use std::ops::Range;
use std::path::Path;

use qm_ipc_proto::interface::TopicPattern;
use serde::Deserialize;
use toml::Spanned;

use super::{Grants, Policy, Rule, RuleLimits};
use crate::config::{RateLimit, CONSUMER, PROVIDER};

/// The built-in policy (see `default-policy.toml`).
pub const DEFAULT_POLICY: &str = include_str!("../../default-policy.toml");

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct PolicyError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    /// Listener names beyond consumer and provider (from LISTEN_FDNAMES).
    #[serde(default)]
    sockets: Vec<Spanned<String>>,
    #[serde(default, rename = "rule")]
    rules: Vec<Spanned<RuleFile>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    name: String,
    socket: Option<Spanned<String>>,
    selinux_type: Option<String>,
    level: Option<String>,
    uid: Option<u32>,
    gid: Option<u32>,
    #[serde(default)]
    allow: AllowFile,
    #[serde(default)]
    limits: LimitsFile,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AllowFile {
    #[serde(default)]
    publish: Vec<Spanned<String>>,
    #[serde(default)]
    subscribe: Vec<Spanned<String>>,
    #[serde(default)]
    call: Vec<Spanned<String>>,
    /// Gone with Register: read only to say so, with the line.
    register: Option<Spanned<toml::Value>>,
    #[serde(default)]
    stats: bool,
    #[serde(default)]
    list: bool,
    #[serde(default)]
    monitor: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    rate: Option<u32>,
    rate_burst: Option<u32>,
    max_subscription_patterns: Option<usize>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

impl Policy {
    /// Reads a policy file. `sockets` are the listener names the gateway
    /// has (beyond consumer and provider), which rules may name.
    pub fn load(path: &Path, sockets: &[&str]) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
            file: path.display().to_string(),
            line: 0,
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&path.display().to_string(), &text, sockets)
    }

    /// The built-in policy.
    pub fn builtin() -> Self {
        match Self::parse("<built-in policy>", DEFAULT_POLICY, &[]) {
            Ok(policy) => policy,
            // The built-in text is tested; this cannot happen.
            Err(e) => panic!("built-in policy is invalid: {e}"),
        }
    }

    pub fn parse(source: &str, text: &str, sockets: &[&str]) -> Result<Self, PolicyError> {
        let error = |span: Option<Range<usize>>, message: String| PolicyError {
            file: source.to_owned(),
            line: span.map_or(0, |s| line_of(text, s.start)),
            message,
        };
        let file: PolicyFile =
            toml::from_str(text).map_err(|e| error(e.span(), e.message().to_owned()))?;
        // Each name once: the listeners passed in name consumer and
        // provider too.
        let mut known: Vec<String> = vec![CONSUMER.into(), PROVIDER.into()];
        let more = sockets
            .iter()
            .map(|s| s.to_string())
            .chain(file.sockets.iter().map(|s| s.get_ref().clone()));
        for name in more {
            if !known.contains(&name) {
                known.push(name);
            }
        }
        for declared in &file.sockets {
            if crate::listen::is_default_fd_name(declared.get_ref()) {
                return Err(error(
                    Some(declared.span()),
                    format!(
                        "socket name {:?} is what systemd passes for an unnamed fd; name the fd with FileDescriptorName= in the socket unit and declare that name",
                        declared.get_ref()
                    ),
                ));
            }
        }
        let mut rules = Vec::new();
        for spanned in file.rules {
            let line = line_of(text, spanned.span().start);
            let r = spanned.into_inner();
            if let Some(socket) = &r.socket {
                if !known.contains(socket.get_ref()) {
                    return Err(error(
                        Some(socket.span()),
                        format!(
                            "unknown socket {:?}; known: {} (declare others with sockets = [...])",
                            socket.get_ref(),
                            known.join(", ")
                        ),
                    ));
                }
            }
            if rules.iter().any(|other: &Rule| other.name == r.name) {
                return Err(error(
                    Some(spanned_start(line, text)),
                    format!("a second rule named {:?}", r.name),
                ));
            }
            let patterns = |list: Vec<Spanned<String>>,
                            what: &str|
             -> Result<Vec<TopicPattern>, PolicyError> {
                list.into_iter()
                    .map(|p| {
                        TopicPattern::parse(p.get_ref()).map_err(|e| {
                            // The reason alone: the parser speaks of a
                            // request's parameter, which a policy has not.
                            let why = match e {
                                qm_ipc_proto::ErrorReply::InvalidValue { reason, .. } => reason,
                                other => other.to_string(),
                            };
                            error(
                                Some(p.span()),
                                format!(
                                    "bad {what} pattern {:?}: {why} (a pattern is a name, a name.* prefix, or * alone)",
                                    p.get_ref()
                                ),
                            )
                        })
                    })
                    .collect()
            };
            if let Some(register) = &r.allow.register {
                return Err(error(
                    Some(register.span()),
                    format!(
                        "rule {:?}: the register grant is gone: providers no longer register services on the gateway. Serve the interface as a varlink service on a socket of its own, declare it in the services file (serve --services; [[service]] with interface and socket), and grant callers call on its methods, e.g. call = [\"com.example.Climate.*\"] (see docs/policy.md); then remove register from this rule",
                        r.name
                    ),
                ));
            }
            let rate = match (r.limits.rate, r.limits.rate_burst) {
                (None, None) => None,
                (rate, burst) => {
                    let per_second = rate.unwrap_or(u32::MAX);
                    Some(RateLimit {
                        per_second: per_second.max(1),
                        burst: burst.unwrap_or(per_second.min(1000)).max(1),
                    })
                }
            };
            rules.push(Rule {
                name: r.name,
                line,
                socket: r.socket.map(Spanned::into_inner),
                selinux_type: r.selinux_type,
                level: r.level,
                uid: r.uid,
                gid: r.gid,
                grants: Grants {
                    publish: patterns(r.allow.publish, "publish")?,
                    subscribe: patterns(r.allow.subscribe, "subscribe")?,
                    call: patterns(r.allow.call, "call")?,
                    stats: r.allow.stats,
                    list: r.allow.list,
                    monitor: r.allow.monitor,
                },
                limits: RuleLimits {
                    rate,
                    max_subscription_patterns: r.limits.max_subscription_patterns,
                },
            });
        }
        Ok(Self {
            source: source.to_owned(),
            rules,
            declared_sockets: file.sockets.into_iter().map(|s| s.into_inner()).collect(),
        })
    }
}

/// A span covering the start of line `line` (for errors about a whole rule).
fn spanned_start(line: usize, text: &str) -> Range<usize> {
    let offset: usize = text
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum();
    offset..offset
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> PolicyError {
        Policy::parse("p.toml", text, &[]).unwrap_err()
    }

    #[test]
    fn builtin_policy_is_valid_and_matches_the_seed() {
        let p = Policy::builtin();
        assert_eq!(p.rules.len(), 2);
        assert!(p.rules[1]
            .grants
            .allows(super::super::Action::Publish, "demo.time"));
        assert!(!p.rules[1].grants.any(super::super::Action::Call));
    }

    /// A policy written for Register/Reply/Call is refused at its line,
    /// saying what to do instead, not read as if the grant were absent.
    #[test]
    fn the_register_grant_is_refused_with_what_to_do_instead() {
        let e = err("[[rule]]\nname = \"asil\"\nsocket = \"provider\"\nallow = { publish = [\"*\"], register = [\"*\"] }\n");
        assert_eq!((e.file.as_str(), e.line), ("p.toml", 4), "{e}");
        for needed in [
            "register grant is gone",
            "services file",
            "[[service]]",
            "call on its methods",
            "docs/policy.md",
        ] {
            assert!(e.message.contains(needed), "{needed}: {e}");
        }
    }

    #[test]
    fn list_is_a_grant_of_its_own() {
        use super::super::Action;
        let p = Policy::builtin();
        assert!(p.rules[0].grants.allows(Action::List, "gateway"));
        assert!(
            !p.rules[1].grants.any(Action::List),
            "QM may not list by default"
        );
        let p = Policy::parse(
            "p.toml",
            "[[rule]]\nname = \"a\"\nallow = { subscribe = [\"*\"], list = true }\n",
            &[],
        )
        .unwrap();
        assert!(p.rules[0].grants.allows(Action::List, "gateway"));
        assert!(!p.rules[0].grants.allows(Action::Stats, "gateway"));
        assert_eq!(Action::parse("list"), Some(Action::List));
    }

    #[test]
    fn unknown_keys_are_refused_with_their_line() {
        let e = err("[[rule]]\nname = \"a\"\nsoket = \"consumer\"\n");
        assert_eq!(e.line, 3, "{e}");
        assert!(e.message.contains("soket"), "{e}");
        let e = err("[[rule]]\nname = \"a\"\nallow = { publsh = [\"x\"] }\n");
        assert_eq!(e.line, 3, "{e}");
        assert!(e.message.contains("publsh"), "{e}");
    }

    #[test]
    fn bad_patterns_and_unknown_sockets_name_the_line() {
        let e =
            err("[[rule]]\nname = \"a\"\n\nallow = { subscribe = [\"ok.*\", \"bad topic\"] }\n");
        assert_eq!(e.line, 4, "{e}");
        assert!(
            e.message.contains("bad subscribe pattern \"bad topic\""),
            "{e}"
        );
        // The reason, and how a pattern is written; nothing of a request's
        // parameters, which a policy has not.
        let e = err("[[rule]]\nname = \"a\"\nallow = { call = [\"io.qmipc.Demo*\"] }\n");
        assert!(e.message.contains("contains '*'"), "{e}");
        assert!(e.message.contains("a name.* prefix"), "{e}");
        assert!(!e.message.contains("parameter"), "{e}");
        let e = err("[[rule]]\nname = \"a\"\nsocket = \"diag\"\n");
        assert_eq!(e.line, 3, "{e}");
        assert!(e.message.contains("unknown socket \"diag\""), "{e}");
        assert!(Policy::parse(
            "p.toml",
            "sockets = [\"diag\"]\n[[rule]]\nname = \"a\"\nsocket = \"diag\"\n",
            &[]
        )
        .is_ok());
        assert!(Policy::parse(
            "p.toml",
            "[[rule]]\nname = \"a\"\nsocket = \"diag\"\n",
            &["diag"]
        )
        .is_ok());
        // Every known name once, the listeners' names included.
        // (Regression: `serve` listed consumer and provider twice.)
        let e = Policy::parse(
            "p.toml",
            "sockets = [\"diag\", \"consumer\"]\n[[rule]]\nname = \"a\"\nsocket = \"consumr\"\n",
            &["consumer", "provider", "diag"],
        )
        .expect_err("an unknown socket");
        assert!(
            e.message
                .contains("known: consumer, provider, diag (declare"),
            "{e}"
        );
        let e = err("[[rule]]\nname = \"a\"\n[[rule]]\nname = \"a\"\n");
        assert!(e.message.contains("second rule"), "{e}");
        let e = err("[[rule]]\nname = \"a\"\nuid = -1\n");
        assert_eq!(e.line, 3, "{e}");
    }
}
