//! The binary's own answers to its configuration: a bad file is refused
//! with file:line and what to write instead, before anything starts; a good
//! one passes `--check`, Zenoh's file read by Zenoh's own loader.

use std::process::Command;

fn bridge(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_qm-ipc-bridge"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run qm-ipc-bridge");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const GOOD: &str = r#"
[gateway]
socket = "/run/ipc/ipc.socket"
side = "consumer"

[zenoh]
config = "zenoh.json5"

[[topics.out]]
topics = ["vehicle.*"]
key = "car/zone1/topic"
"#;

#[test]
fn a_good_file_passes_check() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bridge.toml"), GOOD).unwrap();
    std::fs::write(
        dir.path().join("zenoh.json5"),
        "{ mode: \"peer\", scouting: { multicast: { enabled: false } } }",
    )
    .unwrap();
    let path = dir.path().join("bridge.toml");
    let (code, out, err) = bridge(&["--config", path.to_str().unwrap(), "--check"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(": ok"), "{out}");
}

#[test]
fn a_bad_field_is_refused_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bridge.toml");
    std::fs::write(
        &path,
        GOOD.replace("key = \"car/zone1/topic\"", "key = \"car/**\""),
    )
    .unwrap();
    let (code, _, err) = bridge(&["--config", path.to_str().unwrap()]);
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains(&format!("{}:9:", path.display())),
        "no file:line in {err}"
    );
    assert!(err.contains("plain Zenoh key prefix"), "{err}");
}

#[test]
fn a_bad_zenoh_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bridge.toml");
    std::fs::write(&path, GOOD).unwrap();
    std::fs::write(dir.path().join("zenoh.json5"), "{ mode: \"satellite\" }").unwrap();
    let (code, _, err) = bridge(&["--config", path.to_str().unwrap(), "--check"]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("zenoh.json5"), "{err}");
}

#[test]
fn a_missing_file_is_named() {
    let (code, _, err) = bridge(&["--config", "/nonexistent/bridge.toml"]);
    assert_eq!(code, 78);
    assert!(err.contains("/nonexistent/bridge.toml"), "{err}");
}
