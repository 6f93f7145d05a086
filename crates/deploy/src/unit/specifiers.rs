//! systemd specifiers, as they expand for system units (the qm IPC example's units are
//! system units: `%t` is `/run`).

/// Expands the specifiers that name fixed directories and the unit's name.
/// Unknown specifiers are left as they are.
pub fn expand_system_specifiers(value: &str, unit_name: &str) -> String {
    let stem = unit_name.rsplit_once('.').map_or(unit_name, |(s, _)| s);
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some('t') => out.push_str("/run"),
            Some('S') => out.push_str("/var/lib"),
            Some('C') => out.push_str("/var/cache"),
            Some('L') => out.push_str("/var/log"),
            Some('E') => out.push_str("/etc"),
            Some('T') => out.push_str("/tmp"),
            Some('V') => out.push_str("/var/tmp"),
            Some('h') => out.push_str("/root"),
            Some('n') => out.push_str(unit_name),
            Some('N') | Some('p') => out.push_str(stem),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_runtime_dir_and_names() {
        assert_eq!(
            expand_system_specifiers("%t/ipc/ipc.socket", "ipc_server.socket"),
            "/run/ipc/ipc.socket"
        );
        assert_eq!(
            expand_system_specifiers("%N-%n 100%%", "a.socket"),
            "a-a.socket 100%"
        );
        assert_eq!(expand_system_specifiers("%Z%", "a.socket"), "%Z%");
    }
}
