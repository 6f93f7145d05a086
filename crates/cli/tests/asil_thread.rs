//! The ASIL side's own thread: the provider socket is served on a thread
//! of its own, with the scheduling the deployment asks for, and a setting
//! the kernel refuses stops the start with what is missing.

mod common;

use common::{Gateway, Raw};
use serde_json::json;

/// The gateway's thread named `qm-ipc-asil`, as `/proc/PID/task/TID`.
fn asil_task(pid: u32) -> std::path::PathBuf {
    let tasks = std::path::PathBuf::from(format!("/proc/{pid}/task"));
    std::fs::read_dir(&tasks)
        .expect("the gateway's tasks")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|task| {
            std::fs::read_to_string(task.join("comm")).is_ok_and(|c| c.trim() == "qm-ipc-asil")
        })
        .expect("a thread named qm-ipc-asil")
}

#[test]
fn the_provider_socket_is_served_on_its_own_thread_with_its_scheduling() {
    let gw = Gateway::start(&["--provider-nice", "5", "--provider-cpus", "0"]);
    let mut provider = Raw::connect(&gw.provider);
    provider.call(json!({"method": "org.varlink.service.GetInfo"}));
    assert_eq!(provider.recv().unwrap()["parameters"]["vendor"], "qm-ipc");

    let task = asil_task(gw.proc.child.id());
    let stat = std::fs::read_to_string(task.join("stat")).unwrap();
    // Fields after the command name (which ends with ')'): nice is the 19th
    // field of the line, the 17th after the name.
    let after_name = stat.rsplit_once(')').unwrap().1;
    let nice: i32 = after_name
        .split_whitespace()
        .nth(16)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(nice, 5, "{stat}");
    let status = std::fs::read_to_string(task.join("status")).unwrap();
    assert!(
        status.lines().any(|l| l == "Cpus_allowed_list:\t0"),
        "{status}"
    );
    // The QM side runs elsewhere: the main thread keeps every CPU.
    let main = std::fs::read_to_string(format!("/proc/{}/status", gw.proc.child.id())).unwrap();
    assert!(
        !main.lines().any(|l| l == "Cpus_allowed_list:\t0") || num_cpus() == 1,
        "{main}"
    );
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[test]
fn a_placement_the_kernel_refuses_stops_the_start_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let (status, _, err) = common::run_cli(&[
        "serve",
        "--socket",
        dir.path().join("ipc.socket").to_str().unwrap(),
        "--provider-socket",
        dir.path().join("provider.socket").to_str().unwrap(),
        "--provider-cpus",
        "1000",
    ]);
    assert!(!status.success());
    assert!(
        err.contains("cannot pin the ASIL thread to CPUs [1000]"),
        "{err}"
    );
    let (status, _, err) = common::run_cli(&["serve", "--provider-cpus", "3-1"]);
    assert!(!status.success());
    assert!(err.contains("--provider-cpus \"3-1\""), "{err}");
}
