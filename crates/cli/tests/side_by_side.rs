//! docs/client.md shows the same QM application written with
//! qm-ipc-client, zbus and zenoh, with line counts: the code shown must be
//! the files (two of them compiled with the workspace) and the counts
//! theirs, so the comparison cannot drift.

use std::path::Path;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

#[test]
fn the_side_by_side_in_the_client_guide_is_the_example_files() {
    let guide = std::fs::read_to_string(root().join("docs/client.md")).expect("docs/client.md");
    for (heading, file) in [
        ("qm-ipc-client", "crates/client/examples/qm_app.rs"),
        ("zbus", "crates/cli/examples/qm_app_zbus.rs"),
        ("zenoh", "docs/side-by-side/qm_app_zenoh.rs"),
    ] {
        let code = std::fs::read_to_string(root().join(file)).expect(file);
        let lines = code.lines().count();
        let title = format!("### {heading} ({lines} lines)\n\n```rust\n");
        let at = guide.find(&title).unwrap_or_else(|| {
            panic!("docs/client.md has no {title:?} (the file has {lines} lines)")
        });
        let shown = &guide[at + title.len()..];
        let shown = &shown[..shown.find("```").expect("closing fence")];
        assert_eq!(shown, code, "docs/client.md shows {file} as it is");
    }
}
