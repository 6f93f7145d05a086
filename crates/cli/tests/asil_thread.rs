//! The ASIL side's own thread: the provider socket is served on a thread
//! of its own, with the scheduling the deployment asks for, and a setting
//! the kernel refuses stops the start with what is missing. The QM
//! listeners are accepted on the QM thread, or on a thread of their own
//! at SCHED_IDLE when asked.

mod common;

use common::{Gateway, Raw};
use serde_json::json;

/// The gateway's thread named `qm-ipc-asil`, as `/proc/PID/task/TID`.
fn asil_task(pid: u32) -> std::path::PathBuf {
    task_named(pid, "qm-ipc-asil")
}

/// The gateway's threads, as `/proc/PID/task/TID`.
fn tasks(pid: u32) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the gateway's tasks")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect()
}

/// A thread's name.
fn comm(task: &std::path::Path) -> String {
    std::fs::read_to_string(task.join("comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// The gateway's thread named `name`, as `/proc/PID/task/TID`.
fn task_named(pid: u32, name: &str) -> std::path::PathBuf {
    tasks(pid)
        .into_iter()
        .find(|task| comm(task) == name)
        .unwrap_or_else(|| panic!("a thread named {name}"))
}

/// Field `n` (1-based, as proc(5) numbers them) of a task's `stat`.
fn stat_field(task: &std::path::Path, n: usize) -> i64 {
    let stat = std::fs::read_to_string(task.join("stat")).unwrap();
    // The command name (field 2) ends with the last ')'.
    let after_name = stat.rsplit_once(')').unwrap().1;
    after_name
        .split_whitespace()
        .nth(n - 3)
        .unwrap()
        .parse()
        .unwrap()
}

/// `SCHED_IDLE` as the kernel numbers scheduling policies.
const SCHED_IDLE: i64 = 5;
/// The `policy` field of proc(5)'s stat.
const POLICY_FIELD: usize = 41;

#[test]
fn qm_connections_are_accepted_at_sched_idle_when_asked() {
    for (args, idle_thread) in [(&[][..], false), (&["--qm-accept", "idle"][..], true)] {
        let gw = Gateway::start(args);
        // A QM connection accepted either way is served.
        let mut qm = Raw::connect(&gw.consumer);
        qm.call(json!({"method": "org.varlink.service.GetInfo"}));
        assert_eq!(qm.recv().unwrap()["parameters"]["vendor"], "qm-ipc");
        let pid = gw.proc.child.id();
        let accept = tasks(pid).into_iter().find(|t| comm(t) == "qm-ipc-accept");
        match (idle_thread, accept) {
            (true, Some(task)) => assert_eq!(stat_field(&task, POLICY_FIELD), SCHED_IDLE),
            (false, None) => {}
            (_, found) => panic!("{args:?}: accept thread {found:?}"),
        }
        // The threads that serve keep the normal policy.
        let main = std::path::PathBuf::from(format!("/proc/{pid}"));
        assert_eq!(stat_field(&main, POLICY_FIELD), 0);
        assert_eq!(stat_field(&asil_task(pid), POLICY_FIELD), 0);
    }
}

#[test]
fn the_provider_socket_is_served_on_its_own_thread_with_its_scheduling() {
    let gw = Gateway::start(&["--provider-nice", "5", "--provider-cpus", "0"]);
    let mut provider = Raw::connect(&gw.provider);
    provider.call(json!({"method": "org.varlink.service.GetInfo"}));
    assert_eq!(provider.recv().unwrap()["parameters"]["vendor"], "qm-ipc");

    let task = asil_task(gw.proc.child.id());
    // Field 19 of proc(5)'s stat: the nice value.
    assert_eq!(stat_field(&task, 19), 5);
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
