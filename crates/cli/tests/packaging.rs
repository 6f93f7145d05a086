//! What a distribution packages: the manual pages and completions the
//! binary generates, the RPM that packaging/qm-ipc.spec builds from it,
//! and the tmt plan qm's CI would run.
//!
//! The fast tier checks what the binary writes; the packaging tier (rpm,
//! rpmlint, man-db and tmt, installed by scripts/install-test-deps.sh)
//! renders the pages with `man -l`, builds the RPM with `rpmbuild -bb` and
//! checks it with rpmlint, and validates the plan with `tmt lint`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{bin, run_cli, tier_enabled};

const NEEDS: &str = "rpm, rpmlint, man-db and tmt (scripts/install-test-deps.sh)";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every visible command has its page; the main page has the sections a
/// packaged tool is expected to have.
#[test]
fn man_pages_cover_every_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (status, _, err) = run_cli(&["man", "--dir", dir.path().to_str().expect("utf-8")]);
    assert!(status.success(), "{err}");
    let mut pages: Vec<String> = std::fs::read_dir(dir.path())
        .expect("read man dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    for page in [
        "qm-ipc.1",
        "qm-ipc-serve.1",
        "qm-ipc-get.1",
        "qm-ipc-subscribe.1",
        "qm-ipc-policy.1",
        "qm-ipc-policy-explain.1",
        "qm-ipc-completions.1",
    ] {
        assert!(pages.iter().any(|p| p == page), "{page} in {pages:?}");
    }
    // The hidden `man` command documents itself nowhere.
    assert!(!pages.iter().any(|p| p == "qm-ipc-man.1"), "{pages:?}");
    let main = std::fs::read_to_string(dir.path().join("qm-ipc.1")).expect("qm-ipc.1");
    for section in [
        ".SH NAME",
        ".SH SYNOPSIS",
        ".SH \"EXIT STATUS\"",
        ".SH ENVIRONMENT",
        ".SH FILES",
        "\\fB77\\fR (denied)",
        "QM_IPC_LOG",
        "RUST_LOG",
    ] {
        assert!(main.contains(section), "qm-ipc.1 has {section:?}");
    }
    let serve = std::fs::read_to_string(dir.path().join("qm-ipc-serve.1")).expect("serve page");
    assert!(
        serve.contains("max\\-frame"),
        "serve's page lists its flags"
    );
}

#[test]
fn completions_know_the_commands() {
    let (status, out, err) = run_cli(&["completions", "bash"]);
    assert!(status.success(), "{err}");
    // bash parses it and registers the completion.
    let check = run(Command::new("bash").arg("-c").arg(format!(
        "set -e; source /dev/stdin <<'QM_IPC_EOF'\n{out}\nQM_IPC_EOF\ncomplete -p qm-ipc"
    )));
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("qm-ipc"),
        "complete -p qm-ipc"
    );
    for command in ["serve", "subscribe", "policy", "completions"] {
        assert!(out.contains(command), "bash completion offers {command}");
    }
    for shell in ["zsh", "fish"] {
        let (status, out, err) = run_cli(&["completions", shell]);
        assert!(
            status.success() && out.contains("subscribe"),
            "{shell}: {err}"
        );
    }
    let (status, _, err) = run_cli(&["completions", "tcsh"]);
    assert_eq!(status.code(), Some(64), "{err}");
}

/// The text without terminal overstriking (`N\bN` for bold, `_\bx` for
/// underlined), as `col -b` would give it.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\u{8}' {
            out.pop();
        } else {
            out.push(c);
        }
    }
    out
}

/// `man -l` renders every page without a warning from groff.
#[test]
fn man_pages_render_with_man() {
    if !tier_enabled("packaging", NEEDS) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    run(Command::new(bin()).args(["man", "--dir"]).arg(dir.path()));
    let mut rendered = 0;
    for entry in std::fs::read_dir(dir.path()).expect("read man dir") {
        let page = entry.expect("entry").path();
        let out = run(Command::new("man")
            .arg("-l")
            .arg("--warnings=w")
            .arg(&page)
            .env("MANWIDTH", "80")
            .env("MAN_KEEP_FORMATTING", "0")
            .env("MANPAGER", "cat")
            .env("PAGER", "cat"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.trim().is_empty(), "{}: {stderr}", page.display());
        let text = plain(&String::from_utf8_lossy(&out.stdout));
        assert!(text.contains("NAME") && text.contains("qm-ipc"), "{text}");
        if page.ends_with("qm-ipc.1") {
            assert!(
                text.contains("EXIT STATUS") && text.contains("(denied)"),
                "{text}"
            );
        }
        rendered += 1;
    }
    assert!(rendered >= 10, "{rendered} pages");
}

/// The spec builds an RPM from the binary, with everything the spec
/// promises in it, and rpmlint finds no error in it.
#[test]
fn rpm_builds_from_the_spec() {
    if !tier_enabled("packaging", NEEDS) {
        return;
    }
    // The bridge's binary, beside qm-ipc's (built with the workspace).
    let bridge = std::path::Path::new(bin()).with_file_name("qm-ipc-bridge");
    assert!(
        bridge.exists(),
        "{} is missing: build it first (cargo build -p qm-ipc-bridge)",
        bridge.display()
    );
    let top = tempfile::tempdir().expect("tempdir");
    let sources = top.path().join("SOURCES");
    std::fs::create_dir_all(&sources).expect("SOURCES");
    // The source tarball: what the spec's %files take from the tree.
    run(Command::new("tar")
        .current_dir(repo())
        .arg("czf")
        .arg(sources.join("qm-ipc-0.1.0.tar.gz"))
        .args(["--transform", "s,^,qm-ipc-0.1.0/,"])
        .args(["LICENSE", "README.md", "CHANGELOG.md", "docs", "packaging"]));
    let out = run(Command::new("rpmbuild")
        .arg("-bb")
        .arg("--define")
        .arg(format!("_topdir {}", top.path().display()))
        .arg("--define")
        .arg(format!("qm_ipc_binary {}", bin()))
        // Fast compression: this checks the package, it ships nothing.
        .args(["--define", "_binary_payload w1.gzdio"])
        .arg(repo().join("packaging/qm-ipc.spec")));
    let log = String::from_utf8_lossy(&out.stdout);
    let written: Vec<&str> = log
        .lines()
        .filter_map(|l| l.strip_prefix("Wrote: "))
        .collect();
    let package = |name: &str| -> String {
        written
            .iter()
            .find(|p| {
                std::path::Path::new(p)
                    .file_name()
                    .and_then(|f| f.to_str())
                    .and_then(|f| f.strip_prefix(name))
                    .is_some_and(|rest| rest.starts_with("-0"))
            })
            .unwrap_or_else(|| panic!("rpmbuild wrote no {name} package:\n{log}"))
            .to_string()
    };
    let rpm = package("qm-ipc");
    let bridge_rpm = package("qm-ipc-bridge");
    let query = |flag: &str, package: &str| -> String {
        let out = run(Command::new("rpm").args([flag, package]));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let files = query("-qlp", &rpm);
    for file in [
        "/usr/bin/qm-ipc",
        "/usr/share/man/man1/qm-ipc.1",
        "/usr/share/man/man1/qm-ipc-serve.1",
        "/usr/share/bash-completion/completions/qm-ipc",
        "/usr/share/zsh/site-functions/_qm-ipc",
        "/usr/share/fish/vendor_completions.d/qm-ipc.fish",
        "/usr/lib/systemd/system/qm-ipc.socket",
        "/usr/lib/systemd/system/qm-ipc-provider.socket",
        "/usr/lib/systemd/system/qm-ipc.service",
        "/etc/qm-ipc/policy.toml",
        "/etc/qm-ipc/services.toml",
        "/etc/containers/systemd/qm.container.d/10-qm-ipc.conf",
    ] {
        assert!(
            files.lines().any(|l| l.starts_with(file)),
            "{file} in the package:\n{files}"
        );
    }
    // The gateway's package has nothing of the bridge (nor Zenoh).
    assert!(!files.contains("bridge"), "{files}");
    let bridge_files = query("-qlp", &bridge_rpm);
    for file in [
        "/usr/bin/qm-ipc-bridge",
        "/usr/lib/systemd/system/qm-ipc-bridge.service",
        "/usr/lib/sysusers.d/qm-ipc-bridge.conf",
        "/etc/qm-ipc/bridge.toml",
        "/etc/qm-ipc/zenoh.json5",
    ] {
        assert!(
            bridge_files.lines().any(|l| l == file),
            "{file} in the bridge package:\n{bridge_files}"
        );
    }
    assert!(
        query("-qRp", &bridge_rpm)
            .lines()
            .any(|l| l.starts_with("qm-ipc = 0.1.0")),
        "the bridge needs the gateway's package (its socket units)"
    );
    assert!(query("-qcp", &bridge_rpm).contains("/etc/qm-ipc/bridge.toml"));
    // %license (qm-ipc/ on Fedora, qm-ipc-VERSION/ with older macros).
    assert!(
        files
            .lines()
            .any(|l| l.starts_with("/usr/share/licenses/qm-ipc") && l.ends_with("/LICENSE")),
        "the license in the package:\n{files}"
    );
    // The policy is the administrator's: kept on upgrade.
    assert!(query("-qcp", &rpm).contains("/etc/qm-ipc/policy.toml"));
    // The packaged service runs the packaged binary with the packaged files.
    let extract = top.path().join("root");
    std::fs::create_dir_all(&extract).expect("root");
    for package in [&rpm, &bridge_rpm] {
        run(Command::new("sh")
            .current_dir(&extract)
            .arg("-c")
            .arg(format!("rpm2cpio '{package}' | cpio -id --quiet")));
    }
    let service = std::fs::read_to_string(extract.join("usr/lib/systemd/system/qm-ipc.service"))
        .expect("packaged service");
    assert!(
        service.contains(
            "ExecStart=/usr/bin/qm-ipc serve --qm-accept idle --policy /etc/qm-ipc/policy.toml --services /etc/qm-ipc/services.toml"
        ),
        "{service}"
    );
    let bridge_unit =
        std::fs::read_to_string(extract.join("usr/lib/systemd/system/qm-ipc-bridge.service"))
            .expect("packaged bridge service");
    for line in [
        "ExecStart=/usr/bin/qm-ipc-bridge --config /etc/qm-ipc/bridge.toml\n",
        "Requires=qm-ipc.socket\n",
        "User=qm-ipc-bridge\n",
    ] {
        assert!(bridge_unit.contains(line), "{line:?} in:\n{bridge_unit}");
    }
    let (status, out, err) = run_cli(&["lint", extract.to_str().expect("utf-8")]);
    assert!(status.success(), "lint of the packaged files: {out}{err}");
    // rpmlint: no errors but the two that belong to a distribution's build
    // system, not to the spec (it signs, and sets Packager:). Warnings are
    // not judged: this build takes the test's unoptimized binary.
    let lint = Command::new("rpmlint")
        .arg(&rpm)
        .arg(&bridge_rpm)
        .output()
        .expect("run rpmlint");
    let report = String::from_utf8_lossy(&lint.stdout);
    let errors: Vec<&str> = report
        .lines()
        .filter(|l| l.contains(": E: "))
        .filter(|l| !l.ends_with("E: no-signature") && !l.ends_with("E: no-packager-tag"))
        .collect();
    assert!(errors.is_empty(), "rpmlint errors:\n{report}");
}

/// The tmt plan and tests are valid fmf and pass tmt's own lint.
#[test]
fn tmt_plan_lints_clean() {
    if !tier_enabled("packaging", NEEDS) {
        return;
    }
    let out = run(Command::new("tmt").current_dir(repo()).arg("lint"));
    let report = String::from_utf8_lossy(&out.stdout);
    let problems: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("fail") || l.starts_with("warn"))
        .collect();
    assert!(problems.is_empty(), "tmt lint:\n{report}");
    let plans = run(Command::new("tmt")
        .current_dir(repo())
        .args(["plans", "ls"]));
    assert!(String::from_utf8_lossy(&plans.stdout).contains("/tmt/plans/e2e"));
    let tests = run(Command::new("tmt")
        .current_dir(repo())
        .args(["tests", "ls"]));
    let tests = String::from_utf8_lossy(&tests.stdout);
    for test in [
        "/tmt/tests/netns",
        "/tmt/tests/podman",
        "/tmt/tests/quadlet",
        "/tmt/tests/systemd",
    ] {
        assert!(tests.contains(test), "{test} in {tests}");
    }
}
