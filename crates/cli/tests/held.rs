//! QM containers held back by a bound are served on the held thread (see
//! the server's `standing` module): their connections move there between
//! two frames with everything they have, come back when the hold ends,
//! and a client cannot tell but by the time its replies take. Another
//! container stays on the QM thread all along (root tier: containers of
//! their own need a cgroup).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{bin, within, Gateway, Raw};
use qm_ipc_client::GatewayClient;
use serde_json::{json, Value};

const WATCHDOG: Duration = Duration::from_secs(60);

fn stats(gw: &Gateway) -> Value {
    gw.stats()
}

fn wait_stats(gw: &Gateway, what: &str, condition: impl Fn(&Value) -> bool) -> Value {
    gw.wait_stats(what, condition)
}

fn get(raw: &mut Raw, topic: &str) -> Value {
    raw.call(json!({"method": "io.qmipc.Gateway.Get", "parameters": {"topic": topic}}));
    raw.recv().expect("Get reply")
}

/// The bad request that holds this test's container: a value no strict
/// JSON parser reads (refused with InvalidValue).
fn misbehave(raw: &mut Raw) {
    raw.send(b"{\"method\":\"io.qmipc.Gateway.Publish\",\"parameters\":{\"topic\":\"x\",\"value\":{\"v\":1e999}}}\0");
    let reply = raw.recv().expect("error reply");
    assert_eq!(reply["error"], "io.qmipc.Gateway.InvalidValue", "{reply}");
}

/// The move itself: a subscriber whose socket is full (the writer holds
/// the rest of a batch) and an idle requester, both of the container a
/// bound just held back, go to the held thread; nothing is lost or cut on
/// the way (every frame parses, the samples' seq only grows, the last
/// value arrives), and both are served there.
#[test]
fn a_held_containers_connections_move_with_all_they_have() {
    let gw = Gateway::start(&[
        "--qm-held-ms",
        "60000",
        "--write-timeout-ms",
        "60000",
        "--max-queued-bytes",
        "1048576",
    ]);
    let mut requester = Raw::connect(&gw.consumer);
    let mut subscriber = Raw::connect(&gw.consumer);
    subscriber.call(json!({"method": "io.qmipc.Gateway.Subscribe", "parameters": {"topics": ["big"]}, "more": true}));
    let pad = "p".repeat(16 * 1024);
    let mut last = 0u64;
    within(WATCHDOG, async {
        let mut publisher = GatewayClient::connect(&gw.provider).await.unwrap();
        // Until the subscriber's socket is full and samples queue behind it.
        loop {
            last += 1;
            publisher
                .publish("big", json!({"i": last, "pad": pad}))
                .await
                .unwrap();
            let s = stats(&gw);
            let queued = s["per_connection"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["queued_samples"].as_u64().unwrap_or(0) > 0);
            if queued {
                break;
            }
            assert!(last < 10_000, "the subscriber's socket never filled: {s}");
        }
    });
    assert_eq!(stats(&gw)["held_connections"], 0, "nobody held yet");
    let mut bad = Raw::connect(&gw.consumer);
    misbehave(&mut bad);
    let s = wait_stats(
        &gw,
        "the container's three connections on the held thread",
        |s| s["held_connections"] == 3,
    );
    assert_eq!(s["held_accounts"], 1, "{s}");
    assert_eq!(s["holds"], 1, "{s}");
    // Served there: a Get, and the subscriber's stream, intact.
    assert_eq!(
        get(&mut requester, "big")["parameters"]["sample"]["value"]["i"],
        last
    );
    let mut seq = 0;
    loop {
        let frame = subscriber.recv().expect("the stream goes on");
        let sample = &frame["parameters"]["sample"];
        let Some(next) = sample["seq"].as_u64() else {
            continue;
        };
        assert!(next > seq, "seq {next} after {seq}");
        seq = next;
        if sample["value"]["i"] == last {
            break;
        }
    }
    // Nothing ended on the way but this test's own Stats connections, and
    // the three are still on the held thread.
    let s = stats(&gw);
    let disconnects = s["disconnects"].as_object().expect("disconnects");
    assert!(disconnects.keys().all(|k| k == "peer_closed"), "{s}");
    assert_eq!(s["dropped"], 0, "{s}");
    assert_eq!(s["held_connections"], 3, "{s}");
}

/// When the hold ends, the container's connections come back to the QM
/// thread, including one that was opened on the held thread, and are
/// served there.
#[test]
fn a_held_containers_connections_come_back_when_the_hold_ends() {
    let gw = Gateway::start(&["--qm-held-ms", "5000"]);
    let mut bad = Raw::connect(&gw.consumer);
    misbehave(&mut bad);
    // Opened while held: served on the held thread from the start.
    let mut opened_held = Raw::connect(&gw.consumer);
    opened_held.call(json!({"method": "org.varlink.service.GetInfo"}));
    assert!(opened_held.recv().is_some());
    wait_stats(&gw, "both connections on the held thread", |s| {
        s["held_connections"] == 2
    });
    wait_stats(&gw, "the hold to end and both to come back", |s| {
        s["held_connections"] == 0 && s["held_accounts"] == 0
    });
    for raw in [&mut bad, &mut opened_held] {
        raw.call(json!({"method": "org.varlink.service.GetInfo"}));
        assert_eq!(raw.recv().unwrap()["parameters"]["vendor"], "qm-ipc");
    }
    assert_eq!(stats(&gw)["holds"], 1);
}

/// Frames already read when the hold begins move with the connection and
/// are answered in order on the held thread, and a frame whose first half
/// was read before the move is completed after it.
#[test]
fn frames_read_before_the_move_are_answered_after_it_in_order() {
    let gw = Gateway::start(&["--qm-held-ms", "60000"]);
    let mut raw = Raw::connect(&gw.consumer);
    // One write: the bad call, a whole one, and half of a third.
    let mut bytes = b"{\"method\":\"io.qmipc.Gateway.Publish\",\"parameters\":{\"topic\":\"x\",\"value\":{\"v\":1e999}}}\0".to_vec();
    let get = json!({"method": "io.qmipc.Gateway.Get", "parameters": {"topic": "nothing.yet"}});
    bytes.extend_from_slice(get.to_string().as_bytes());
    bytes.push(0);
    let mut info = json!({"method": "org.varlink.service.GetInfo"})
        .to_string()
        .into_bytes();
    info.push(0);
    let (first_half, second_half) = info.split_at(info.len() / 2);
    bytes.extend_from_slice(first_half);
    raw.send(&bytes);
    assert_eq!(
        raw.recv().unwrap()["error"],
        "io.qmipc.Gateway.InvalidValue"
    );
    assert_eq!(raw.recv().unwrap()["error"], "io.qmipc.Gateway.NoSuchTopic");
    wait_stats(&gw, "the connection on the held thread", |s| {
        s["held_connections"] == 1
    });
    raw.send(second_half);
    assert_eq!(raw.recv().unwrap()["parameters"]["vendor"], "qm-ipc");
}

/// A connection refused for its container's connection count holds the
/// container: its next connections are refused on the held thread.
#[test]
fn a_container_past_its_connections_is_held() {
    let gw = Gateway::start(&["--max-connections-per-peer", "2", "--qm-held-ms", "60000"]);
    let _kept = gw.served_connections(2);
    assert_eq!(stats(&gw)["holds"], 0);
    // Refused at once, in one write, before it asks anything.
    let mut refused = Raw::connect(&gw.consumer);
    let reply = refused.recv().expect("the refusal");
    assert_eq!(
        reply["parameters"]["limit"], "max_connections_per_peer",
        "{reply}"
    );
    let s = wait_stats(&gw, "the container held, its two connections moved", |s| {
        s["held_connections"] == 2
    });
    assert_eq!(s["holds"], 1, "{s}");
}

/// A bound all of QM shares (here QM's part of the topics) says nothing of
/// the container that meets it: another container may have filled it. It
/// holds nobody.
#[test]
fn a_shared_bound_holds_nobody() {
    let gw = Gateway::start(&["--max-topics", "4", "--qm-held-ms", "60000"]);
    let mut raw = Raw::connect(&gw.consumer);
    for n in 0..3 {
        raw.call(json!({"method": "io.qmipc.Gateway.Publish", "parameters": {"topic": format!("t{n}"), "value": {"n": n}}}));
        assert!(raw.recv().unwrap().get("error").is_none());
    }
    raw.call(json!({"method": "io.qmipc.Gateway.Publish", "parameters": {"topic": "t3", "value": {"n": 3}}}));
    let reply = raw.recv().unwrap();
    assert_eq!(reply["parameters"]["limit"], "qm_topics", "{reply}");
    let s = stats(&gw);
    assert_eq!(s["holds"], 0, "{s}");
    assert_eq!(s["held_connections"], 0, "{s}");
}

/// An idle connection whose container keeps being held and let go (so it
/// moves back and forth) is still closed at its idle timeout: a move, or
/// another container's hold, does not start its idle time again.
#[test]
fn moving_back_and_forth_does_not_keep_an_idle_connection_open() {
    let gw = Gateway::start(&["--qm-held-ms", "200", "--idle-timeout-ms", "2000"]);
    let mut idle = Raw::connect(&gw.consumer);
    idle.call(json!({"method": "org.varlink.service.GetInfo"}));
    assert!(idle.recv().is_some());
    let mut bad = Raw::connect(&gw.consumer);
    let deadline = std::time::Instant::now() + common::DEADLINE;
    while stats(&gw)["disconnects"]["idle_timeout"] != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the idle connection was never closed: {}",
            stats(&gw)
        );
        misbehave(&mut bad);
        // Each hold ends before the next begins, so the idle connection
        // moves both ways each time: to the held thread, and back.
        wait_stats(&gw, "the held container's connections moved", |s| {
            s["held_connections"].as_u64() >= Some(1)
        });
        wait_stats(&gw, "the hold to end", |s| s["held_connections"] == 0);
    }
    idle.expect_closed();
    assert!(stats(&gw)["holds"].as_u64().unwrap() >= 2);
}

/// A container that reconnects is still held: its new connection is
/// served on the held thread from the start.
#[test]
fn a_held_container_that_reconnects_is_still_held() {
    let gw = Gateway::start(&["--qm-held-ms", "60000"]);
    let mut bad = Raw::connect(&gw.consumer);
    misbehave(&mut bad);
    drop(bad);
    wait_stats(&gw, "the misbehaving connection gone", |s| {
        s["connections"] == 1 && s["held_accounts"] == 1
    });
    let mut again = Raw::connect(&gw.consumer);
    again.call(json!({"method": "org.varlink.service.GetInfo"}));
    assert_eq!(again.recv().unwrap()["parameters"]["vendor"], "qm-ipc");
    assert_eq!(stats(&gw)["held_connections"], 1);
}

/// Without a hold time (`--qm-held-ms 0`), one thread serves all of QM.
#[test]
fn without_a_hold_time_nobody_moves() {
    let gw = Gateway::start(&["--qm-held-ms", "0"]);
    let mut bad = Raw::connect(&gw.consumer);
    misbehave(&mut bad);
    let mut other = Raw::connect(&gw.consumer);
    other.call(json!({"method": "org.varlink.service.GetInfo"}));
    assert!(other.recv().is_some());
    let s = stats(&gw);
    assert_eq!(s["held_accounts"], 0, "{s}");
    assert_eq!(s["held_connections"], 0, "{s}");
}

/// The guarantee: one container's misbehaviour holds that container only.
/// Another container (a cgroup of its own) subscribed meanwhile stays on
/// the QM thread and keeps receiving. Needs root (cgroups).
#[test]
fn another_container_is_not_held_for_ones_misbehaviour() {
    if !common::tier_enabled("root", "root, to give a peer a cgroup of its own") {
        return;
    }
    let gw = Gateway::start(&["--qm-held-ms", "60000"]);
    let other = common::TestCgroup::new("held-other-container");
    let mut cmd = Command::new(bin());
    cmd.args(["--socket", gw.consumer.to_str().unwrap(), "subscribe", "t"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    other.place(&mut cmd);
    let mut child = cmd.spawn().expect("spawn a subscriber in another cgroup");
    let stdout = child.stdout.take().expect("stdout");
    let (line_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    wait_stats(&gw, "the other container's subscription", |s| {
        s["subscriptions"] == 1
    });
    // This test's container misbehaves on two connections.
    let mut bad = Raw::connect(&gw.consumer);
    misbehave(&mut bad);
    let mut second = Raw::connect(&gw.consumer);
    second.call(json!({"method": "org.varlink.service.GetInfo"}));
    assert!(second.recv().is_some());
    let s = wait_stats(
        &gw,
        "this container's connections on the held thread",
        |s| s["held_connections"] == 2,
    );
    assert_eq!(s["held_accounts"], 1, "{s}");
    within(WATCHDOG, async {
        let mut publisher = GatewayClient::connect(&gw.provider).await.unwrap();
        publisher.publish("t", json!({"n": 7})).await.unwrap();
    });
    let line = lines
        .recv_timeout(common::DEADLINE)
        .expect("the other container's subscriber prints the sample");
    assert!(line.contains("7"), "{line}");
    // Still only this container's two connections are held.
    let s = stats(&gw);
    assert_eq!(s["held_connections"], 2, "{s}");
    assert_eq!(s["held_accounts"], 1, "{s}");
    let _ = child.kill();
    let _ = child.wait();
}

/// A field of a thread's `/proc/PID/task/TID/sched`, if the kernel shows it.
fn sched_field(sched: &str, name: &str) -> Option<i64> {
    sched
        .lines()
        .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.trim().parse().ok())
}

/// The threads as the gateway sets them: the held thread at nice 19 with
/// a slice longer than the kernel's default, so that a thread with the
/// default or a shorter one preempts it as soon as it wakes; the QM and
/// ASIL threads with the short slice (`--serving-slice-us`, on kernels
/// that show `se.slice`: 6.12 and later), which must stay below it.
#[test]
fn the_serving_threads_preempt_the_held_thread() {
    let gw = Gateway::start(&["--serving-slice-us", "200"]);
    let pid = gw.proc.child.id();
    let mut threads = std::collections::BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("the gateway's threads") {
        let task = task.expect("a thread").path();
        let name = std::fs::read_to_string(task.join("comm")).expect("comm");
        let sched = std::fs::read_to_string(task.join("sched")).expect("sched");
        threads.insert(name.trim().to_owned(), sched);
    }
    let held = threads.get("qm-ipc-held").expect("a held thread");
    assert_eq!(sched_field(held, "prio"), Some(139), "nice 19: {held}");
    let asil = threads.get("qm-ipc-asil").expect("an ASIL thread");
    let qm = threads.get("qm-ipc").expect("the QM thread");
    if let Some(slice) = sched_field(qm, "se.slice") {
        assert_eq!(slice, 200_000, "{qm}");
        assert_eq!(sched_field(asil, "se.slice"), Some(200_000), "{asil}");
        let held_slice = sched_field(held, "se.slice").expect("se.slice");
        let expected = qm_ipc_server::held_thread::HELD_SLICE.as_nanos() as i64;
        assert_eq!(held_slice, expected, "HELD_SLICE: {held}");
    }
    // Below what the kernel takes, and not below the held thread's slice.
    let held_us = qm_ipc_server::held_thread::HELD_SLICE.as_micros();
    for refused in ["50".to_owned(), held_us.to_string()] {
        let (status, _, stderr) = common::run_cli(&["serve", "--serving-slice-us", &refused]);
        assert!(!status.success(), "{refused} taken");
        assert!(
            stderr.contains(&format!("100 to {}", held_us - 1)),
            "{stderr}"
        );
    }
}
