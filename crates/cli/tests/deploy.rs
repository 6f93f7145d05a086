//! `qm-ipc generate` and `qm-ipc lint` as users run them.

mod common;

use common::run_cli;
use serde_json::Value;

#[test]
fn generate_prints_each_file_with_its_target_path() {
    let (status, out, err) = run_cli(&[
        "generate",
        "asil-to-qm",
        "--server-image",
        "registry.example/gw:1",
    ]);
    assert!(status.success(), "{err}");
    for path in [
        "### /etc/systemd/system/ipc_server.socket",
        "### /etc/containers/systemd/ipc_server.container",
        "### /etc/qm/containers/systemd/ipc_client.container",
        "### /etc/containers/systemd/qm.container.d/10-extra-volume.conf",
    ] {
        assert!(out.contains(path), "{path} missing from:\n{out}");
    }
    assert!(out.contains("Image=registry.example/gw:1\n"));
}

#[test]
fn generate_root_writes_reports_and_refuses_to_overwrite() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path().to_str().unwrap();
    let (status, out, _) = run_cli(&["generate", "qm-to-qm", "--root", r]);
    assert!(status.success());
    assert_eq!(out.matches("created").count(), 2, "{out}");

    let (status, _, err) = run_cli(&["generate", "qm-to-qm", "--root", r, "--level", "s0:c7,c8"]);
    assert!(!status.success());
    assert!(
        err.contains("exists with different content; use --force"),
        "{err}"
    );

    let (status, out, _) = run_cli(&[
        "generate", "qm-to-qm", "--root", r, "--level", "s0:c7,c8", "--force",
    ]);
    assert!(status.success());
    assert_eq!(out.matches("replaced").count(), 2, "{out}");

    let (status, _, err) = run_cli(&[
        "generate",
        "asil-to-qm",
        "--socket-path",
        "/run/app/app.socket",
    ]);
    assert!(!status.success());
    assert!(
        err.contains("--socket-path") && err.contains("/run/ipc"),
        "{err}"
    );
}

#[test]
fn lint_exit_codes_and_json() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path().to_str().unwrap();
    assert!(run_cli(&["generate", "asil-to-qm", "--root", r])
        .0
        .success());
    let (status, out, _) = run_cli(&["lint", r]);
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(out.contains("0 errors, 0 warnings"));

    // A warning: exit 0, or 1 with --strict.
    let client = root
        .path()
        .join("etc/qm/containers/systemd/ipc_client.container");
    let text = std::fs::read_to_string(&client).unwrap();
    std::fs::write(&client, text.replace("Network=none", "Network=host")).unwrap();
    assert_eq!(run_cli(&["lint", r]).0.code(), Some(0));
    assert_eq!(run_cli(&["lint", r, "--strict"]).0.code(), Some(1));

    // An error: exit 2, and JSON a script can read.
    let server = root
        .path()
        .join("etc/containers/systemd/ipc_server.container");
    let text = std::fs::read_to_string(&server).unwrap();
    std::fs::write(
        &server,
        text.replace("SecurityLabelType=ipc_t", "SecurityLabelType=spc_t"),
    )
    .unwrap();
    let (status, out, _) = run_cli(&["lint", r, "--format", "json"]);
    assert_eq!(status.code(), Some(2));
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["errors"], 1);
    assert_eq!(report["warnings"], 1);
    let finding = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["rule"] == "QM006")
        .expect("the label finding");
    assert_eq!(finding["severity"], "error");
    assert!(finding["file"]
        .as_str()
        .unwrap()
        .ends_with("ipc_server.container"));
    assert!(finding["line"].as_u64().unwrap() > 1);
    for key in ["message", "why", "fix"] {
        assert!(!finding[key].as_str().unwrap().is_empty());
    }

    let (status, _, err) = run_cli(&["lint", "/nonexistent/unit.container"]);
    assert_eq!(status.code(), Some(2));
    assert!(
        err.contains("/nonexistent/unit.container: no such file"),
        "{err}"
    );
}

/// The global --socket is the client commands' (they connect to it);
/// generate and lint refuse it rather than ignore it, and SOCKET_PATH in
/// the environment (a client container's) does not disturb them.
#[test]
fn generate_and_lint_refuse_the_global_socket_flag() {
    for args in [
        &["--socket", "/run/x.socket", "generate", "asil-to-qm"][..],
        &["generate", "asil-to-qm", "--socket=/run/x.socket"][..],
        &["lint", "--socket", "/run/x.socket", "/"][..],
    ] {
        let (status, _, err) = run_cli(args);
        // A usage error (64): the flag is not one of theirs.
        assert_eq!(status.code(), Some(64), "{args:?}: {err}");
        assert!(err.contains("--socket"), "{err}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_qm-ipc"))
        .args(["generate", "asil-to-qm"])
        .env("SOCKET_PATH", "/run/x.socket")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A newline in --server-exec cannot open a section of its own.
#[test]
fn generate_refuses_an_exec_value_that_would_rewrite_the_file() {
    let (status, _, err) = run_cli(&[
        "generate",
        "asil-to-qm",
        "--server-exec",
        "serve\n[Service]\nExecStartPre=/bin/sh -c evil",
    ]);
    assert_eq!(status.code(), Some(65), "bad input: {err}");
    assert!(err.contains("--server-exec"), "{err}");
    assert!(err.contains("control character"), "{err}");
}

/// `lint --deep` where quadlet is not installed says so and lints the rest.
#[test]
fn lint_deep_without_quadlet_says_what_it_skipped() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path().to_str().unwrap();
    let (status, _, err) = run_cli(&["generate", "asil-to-qm", "--root", r]);
    assert!(status.success(), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_qm-ipc"))
        .args(["lint", "--deep", r])
        .env("QUADLET", "/nonexistent/quadlet")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    if std::path::Path::new("/usr/libexec/podman/quadlet").exists() {
        return; // podman's own generator is found instead
    }
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("note: --deep: podman's quadlet generator is not installed"),
        "{text}"
    );
}

#[test]
fn lint_says_when_there_is_no_ipc_deployment_to_check() {
    // A root with unit files, none of them about IPC: clean, but it says
    // there was nothing to check rather than only "0 errors".
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("etc/systemd/system");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("sshd.socket"),
        "[Socket]\nListenStream=22\nAccept=yes\n\n[Install]\nWantedBy=sockets.target\n",
    )
    .unwrap();
    let r = root.path().to_str().unwrap();
    let (status, out, _) = run_cli(&["lint", r]);
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(
        out.contains("none of them defines or uses an IPC socket"),
        "{out}"
    );
    let (_, out, _) = run_cli(&["lint", r, "--format", "json"]);
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["ipc_sockets"], serde_json::json!([]));

    // The generated deployment names its sockets and gets no such note.
    let root = tempfile::tempdir().unwrap();
    let r = root.path().to_str().unwrap();
    assert!(run_cli(&["generate", "asil-to-qm", "--root", r])
        .0
        .success());
    let (_, out, _) = run_cli(&["lint", r]);
    assert!(!out.contains("none of them"), "{out}");
    let (_, out, _) = run_cli(&["lint", r, "--format", "json"]);
    let report: Value = serde_json::from_str(&out).unwrap();
    assert!(
        report["ipc_sockets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "/run/ipc/ipc.socket"),
        "{report}"
    );
}
