//! SELinux security contexts, `user:role:type:level` (the level may itself
//! contain colons: `s0:c1,c2`).

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub context: String,
    pub selinux_type: String,
    /// The MLS/MCS level, if the context has one.
    pub level: Option<String>,
}

impl Label {
    /// Parses a context as `SO_PEERSEC` returns it (a trailing NUL and
    /// whitespace are ignored). `None` for text that is not a context.
    pub fn parse(raw: &str) -> Option<Self> {
        let context = raw.trim_end_matches('\0').trim();
        let mut parts = context.splitn(4, ':');
        let (user, role, selinux_type) = (parts.next()?, parts.next()?, parts.next()?);
        if [user, role, selinux_type].iter().any(|p| p.is_empty()) {
            return None;
        }
        let level = parts.next().filter(|l| !l.is_empty()).map(str::to_owned);
        Some(Self {
            context: context.to_owned(),
            selinux_type: selinux_type.to_owned(),
            level,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_type_and_level() {
        let l = Label::parse("system_u:system_r:qm_container_ipc_t:s0:c1,c2\0").unwrap();
        assert_eq!(l.selinux_type, "qm_container_ipc_t");
        assert_eq!(l.level.as_deref(), Some("s0:c1,c2"));
        assert_eq!(l.context, "system_u:system_r:qm_container_ipc_t:s0:c1,c2");
        let l = Label::parse("u:r:ipc_t").unwrap();
        assert_eq!((l.selinux_type.as_str(), l.level), ("ipc_t", None));
        assert_eq!(Label::parse("unconfined"), None);
        assert_eq!(Label::parse("u::t:s0"), None);
    }
}
