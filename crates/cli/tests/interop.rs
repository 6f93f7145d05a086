//! An independent varlink implementation (the reference Python `varlink`
//! package, installed by the test command) introspects the gateway, parses
//! its IDL and calls it.

mod common;

use std::process::Command;

use common::{Gateway, Proc};

#[test]
fn reference_python_varlink_introspects_and_calls_the_gateway() {
    if !common::tier_enabled("python", "the Python varlink package (pip install varlink)") {
        return;
    }
    let gw = Gateway::start(&["--demo"]);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/varlink_client.py"
    );
    let mut python = Proc::spawn({
        let mut c = Command::new("python3");
        c.arg(script).arg(&gw.consumer);
        c
    });
    let status = python.wait_exit();
    assert!(
        status.success(),
        "python varlink client failed (is the `varlink` package installed? the README's test command installs it):\n{}",
        python.output.join("\n")
    );
    assert!(python.output.iter().any(|l| l == "interop ok"));
}
