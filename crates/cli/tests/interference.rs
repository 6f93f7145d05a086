//! Freedom from interference: hostile clients against the real gateway, one
//! test per guarantee. Small limits and short deadlines keep them fast; no
//! assertion is about how long anything took.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{gateway_with_service, within, Gateway, Raw, DEADLINE};
use qm_ipc_client::{ErrorReply, GatewayClient};
use serde_json::{json, Value};

const WATCHDOG: Duration = Duration::from_secs(60);

fn stats(gw: &Gateway) -> Value {
    gw.stats()
}

fn wait_stats(gw: &Gateway, what: &str, condition: impl Fn(&Value) -> bool) -> Value {
    gw.wait_stats(what, condition)
}

fn served_connections(gw: &Gateway, n: usize) -> Vec<Raw> {
    gw.served_connections(n)
}

/// Calls the test service's Echo through the gateway.
async fn echo(c: &mut GatewayClient, text: &str) -> Result<String, qm_ipc_client::ClientError> {
    let reply = c
        .connection()
        .call("com.example.Test.Echo", json!({ "text": text }))
        .await?;
    Ok(reply["text"].as_str().unwrap_or_default().to_owned())
}

fn limit_of(err: &qm_ipc_client::ClientError) -> Option<String> {
    match err.remote() {
        Some(ErrorReply::LimitExceeded { limit, .. }) => Some(limit.clone()),
        _ => None,
    }
}

#[test]
fn stalled_subscriber_queue_stays_bounded_while_publishing_never_waits() {
    let gw = Gateway::start(&[
        "--subscription-queue",
        "16",
        "--max-queued-bytes",
        "65536",
        "--write-timeout-ms",
        "120000",
    ]);
    let mut stalled = Raw::connect(&gw.consumer);
    stalled.call(json!({"method": "io.qmipc.Gateway.Subscribe", "parameters": {"topics": ["*"]}, "more": true}));
    within(WATCHDOG, async {
        let mut publisher = GatewayClient::connect(&gw.provider).await.unwrap();
        let pad = "p".repeat(2000);
        for i in 0..5000u64 {
            // Every publish is acknowledged: the stalled subscriber never
            // makes the publisher wait.
            publisher
                .publish(&format!("t{}", i % 8), json!({"i": i, "pad": pad}))
                .await
                .unwrap();
        }
    });
    let s = stats(&gw);
    let conn = s["per_connection"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["queued_samples"].as_u64().unwrap() > 0 || c["dropped"].as_u64().unwrap() > 0)
        .expect("the stalled subscriber's connection")
        .clone();
    assert!(conn["queued_samples"].as_u64().unwrap() <= 16, "{conn}");
    assert!(
        conn["queued_bytes"].as_u64().unwrap() <= 2 * 65536,
        "{conn}"
    );
    assert!(conn["dropped"].as_u64().unwrap() > 0, "{conn}");
    assert!(s["dropped"].as_u64().unwrap() > 0);
    assert_eq!(s["published"], 5000);
}

#[test]
fn slow_loris_frame_is_closed_at_the_deadline() {
    let gw = Gateway::start(&["--frame-timeout-ms", "300"]);
    let mut witness = Raw::connect(&gw.consumer);
    let mut loris = Raw::connect(&gw.consumer);
    let frame = br#"{"method":"org.varlink.service.GetInfo","parameters":{"padding":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}"#;
    // One byte every 50 ms: the trickle is the behaviour under test. The
    // whole frame would take 7 s; the gateway must cut it off long before.
    let mut sent = 0;
    let mut cut_off = false;
    for byte in frame.iter() {
        if loris.stream.write_all(&[*byte]).is_err() {
            cut_off = true;
            break;
        }
        sent += 1;
        std::thread::sleep(Duration::from_millis(50));
        if stats(&gw)["disconnects"]["frame_timeout"].as_u64() == Some(1) {
            cut_off = true;
            break;
        }
    }
    assert!(cut_off, "the trickled frame was never cut off");
    assert!(sent < frame.len(), "closed before the frame could complete");
    loris.expect_closed();
    witness.call(json!({"method": "org.varlink.service.GetInfo"}));
    assert!(witness.recv().is_some(), "others are still served");
}

#[test]
fn unwritable_connection_is_closed_after_the_write_deadline() {
    let gw = Gateway::start(&["--write-timeout-ms", "300"]);
    // Subscribes and never reads while big samples keep coming.
    let mut stalled = Raw::connect(&gw.consumer);
    stalled.call(json!({"method": "io.qmipc.Gateway.Subscribe", "parameters": {"topics": ["big"]}, "more": true}));
    within(WATCHDOG, async {
        let mut publisher = GatewayClient::connect(&gw.provider).await.unwrap();
        let pad = "b".repeat(32 * 1024);
        let mut i = 0u64;
        loop {
            publisher
                .publish("big", json!({"i": i, "pad": pad}))
                .await
                .unwrap();
            i += 1;
            if i % 50 == 0 && stats(&gw)["disconnects"]["write_timeout"].as_u64() == Some(1) {
                break;
            }
        }
    });
    let s = stats(&gw);
    assert_eq!(s["subscriptions"], 0, "the stalled subscription is gone");
}

#[test]
fn call_flood_is_throttled_and_others_are_unaffected() {
    let (gw, _service) = gateway_with_service(&["--rate", "200", "--rate-burst", "10"], "");
    within(WATCHDOG, async {
        let mut flooder = GatewayClient::connect(&gw.consumer).await.unwrap();
        let mut polite = GatewayClient::connect(&gw.consumer).await.unwrap();
        let flood = async {
            for i in 0..300 {
                // Throttled, not refused: every call is answered, slowly.
                let echoed = echo(&mut flooder, &i.to_string()).await.unwrap();
                assert_eq!(echoed, i.to_string());
            }
        };
        let calm = async {
            for i in 0..5 {
                let echoed = echo(&mut polite, &i.to_string()).await.unwrap();
                assert_eq!(
                    echoed,
                    i.to_string(),
                    "the polite client has its own budget"
                );
            }
        };
        tokio::join!(flood, calm);
    });
    let s = stats(&gw);
    assert!(
        s["limit_hits"]["rate"].as_u64().unwrap() > 0,
        "the flood was throttled: {s}"
    );
}

/// Regression: with one accept loop per listener, the idle provider
/// listener held a connection slot, and consumers got one fewer.
#[test]
fn connection_storm_waits_at_the_limit_and_is_served_when_a_slot_frees() {
    // Accepting on the QM thread (a slot taken before each accept) and on
    // the SCHED_IDLE thread (a slot taken after admission, polled for).
    for accept in ["normal", "idle"] {
        storm_waits_at_the_limit(accept);
    }
}

fn storm_waits_at_the_limit(accept: &str) {
    let gw = Gateway::start(&[
        "--max-connections",
        "6",
        "--max-connections-per-peer",
        "100",
        "--qm-accept",
        accept,
    ]);
    // Six connections, each proven served.
    let mut held = served_connections(&gw, 6);
    // A storm of more: connect succeeds (the kernel backlog), service waits.
    let mut waiting: Vec<Raw> = (0..20).map(|_| Raw::connect(&gw.consumer)).collect();
    for raw in &mut waiting {
        raw.call(json!({"method": "org.varlink.service.GetInfo"}));
    }
    held[0].call(json!({"method": "io.qmipc.Gateway.Stats"}));
    let s = held[0].recv().unwrap();
    assert_eq!(
        s["parameters"]["connections"], 6,
        "{accept}: never more than the limit at once"
    );
    // Free every slot: all waiting connections get served, in turn.
    drop(held);
    for raw in &mut waiting {
        let reply = raw.recv().expect("served once a slot is free");
        assert_eq!(reply["parameters"]["vendor"], "qm-ipc");
        drop(raw.stream.shutdown(std::net::Shutdown::Both));
    }
}

#[test]
fn per_peer_connection_limit_refuses_with_a_named_error() {
    let gw = Gateway::start(&["--max-connections-per-peer", "3"]);
    let held = served_connections(&gw, 3);
    // The refusal comes unasked, and the connection closes after it: a
    // request sent first could meet the closed socket (broken pipe) before
    // the refusal is read, as it once did on a loaded machine.
    let mut fourth = Raw::connect(&gw.consumer);
    let reply = fourth.recv().expect("an error reply");
    assert_eq!(reply["error"], "io.qmipc.Gateway.LimitExceeded");
    assert_eq!(
        reply["parameters"],
        json!({"limit": "max_connections_per_peer", "max": 3})
    );
    fourth.expect_closed();
    drop(held);
    // Slots come back when connections close.
    // The Stats connection itself is the one left.
    wait_stats(&gw, "connections to close", |s| s["connections"] == 1);
    let mut again = Raw::connect(&gw.consumer);
    again.call(json!({"method": "org.varlink.service.GetInfo"}));
    assert_eq!(again.recv().unwrap()["parameters"]["vendor"], "qm-ipc");
}

/// A container's calls in flight are bounded across services and
/// connections (max_calls_per_peer); a service that hangs holds only its
/// own callers: the ASIL side's calls and every topic go on, and when the
/// service goes away its calls end at once and give their slots back.
#[test]
fn calls_per_peer_patterns_and_retained_bytes_are_bounded() {
    let (gw, mut service) = gateway_with_service(
        &[
            "--max-calls-per-peer",
            "2",
            "--max-subscription-patterns",
            "2",
            "--max-retained-bytes",
            "1000",
            "--call-timeout-ms",
            "120000",
        ],
        "connections = 8",
    );
    // Two calls the service never answers, on two connections of one
    // container; the service's own share for one peer (4 of 8) is not
    // reached, the container's is.
    let mut hung: Vec<Raw> = (0..2).map(|_| Raw::connect(&gw.consumer)).collect();
    for raw in &mut hung {
        raw.call(json!({"method": "com.example.Test.Hang"}));
    }
    service.wait_hung(2);
    let mut third = Raw::connect(&gw.consumer);
    third.call(json!({"method": "com.example.Test.Echo", "parameters": {"text": "x"}}));
    let refused = third.recv().expect("an answer");
    assert_eq!(
        refused["error"], "io.qmipc.Gateway.LimitExceeded",
        "{refused}"
    );
    assert_eq!(
        refused["parameters"],
        json!({"limit": "max_calls_per_peer", "max": 2})
    );
    let s = stats(&gw);
    assert_eq!(s["calls_in_flight"], 2, "{s}");
    assert_eq!(s["limit_hits"]["max_calls_per_peer"], 1, "{s}");
    // The ASIL side is not under QM's quota, and topics never wait.
    let mut asil = Raw::connect(&gw.provider);
    asil.call(json!({"method": "com.example.Test.Echo", "parameters": {"text": "asil"}}));
    assert_eq!(
        asil.recv().expect("an answer")["parameters"]["text"],
        "asil"
    );
    asil.call(json!({"method": "io.qmipc.Gateway.Publish", "parameters": {"topic": "t", "value": {"v": 1}}}));
    assert_eq!(asil.recv().expect("an answer")["parameters"]["seq"], 1);
    // The service goes away: its calls end now, not at their deadline.
    service.stop();
    for raw in &mut hung {
        let reply = raw.recv().expect("an answer");
        assert_eq!(
            reply["error"], "io.qmipc.Gateway.ServiceUnavailable",
            "{reply}"
        );
    }
    wait_stats(&gw, "the calls' slots to come back", |s| {
        s["calls_in_flight"] == 0
            && s["accounts"]
                .as_array()
                .is_some_and(|a| a.iter().all(|a| a["calls"] == 0))
    });

    within(WATCHDOG, async {
        let err = GatewayClient::connect(&gw.consumer)
            .await
            .unwrap()
            .subscribe(&["a", "b", "c"])
            .await
            .unwrap()
            .next()
            .await
            .unwrap_err();
        assert_eq!(
            limit_of(&err).as_deref(),
            Some("max_subscription_patterns"),
            "{err}"
        );

        let mut publisher = GatewayClient::connect(&gw.provider).await.unwrap();
        publisher
            .publish("small", json!({"v": "x".repeat(400)}))
            .await
            .unwrap();
        let err = publisher
            .publish("large", json!({"v": "y".repeat(700)}))
            .await
            .unwrap_err();
        assert_eq!(
            limit_of(&err).as_deref(),
            Some("max_retained_bytes"),
            "{err}"
        );
        // Replacing a value counts only the difference.
        publisher
            .publish("small", json!({"v": "z".repeat(900)}))
            .await
            .unwrap();
    });
}

#[test]
fn peer_that_never_reads_its_replies_is_closed_not_buffered() {
    let gw = Gateway::start(&[
        "--max-queued-bytes",
        "65536",
        "--write-timeout-ms",
        "120000",
    ]);
    within(WATCHDOG, async {
        let mut publisher = GatewayClient::connect(&gw.provider).await.unwrap();
        publisher
            .publish("big", json!({"v": "v".repeat(30_000)}))
            .await
            .unwrap();
    });
    // Pipeline Gets of a 30 KB value and never read: the replies fill the
    // socket, then the bounded queue, and the connection is closed.
    let mut greedy = Raw::connect(&gw.consumer);
    greedy.stream.set_write_timeout(Some(DEADLINE)).unwrap();
    let mut frame = json!({"method": "io.qmipc.Gateway.Get", "parameters": {"topic": "big"}})
        .to_string()
        .into_bytes();
    frame.push(0);
    for _ in 0..2000 {
        if greedy.stream.write_all(&frame).is_err() {
            break;
        }
        if stats(&gw)["disconnects"]["send_queue_full"].as_u64() == Some(1) {
            break;
        }
    }
    wait_stats(&gw, "the greedy connection to be closed", |s| {
        s["disconnects"]["send_queue_full"] == 1
    });
}

/// Peak resident memory of a process, from /proc.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc status")
}

#[test]
fn memory_stays_under_64_mib_with_the_defaults_whatever_clients_do() {
    // The defaults, except that all peers here share uid 0 (allow one uid
    // what many QM applications together may hold), and the deadlines are
    // lifted so that every hostile connection stays for the whole attack:
    // memory must be bounded by the limits, not by timeouts.
    let gw = Gateway::start(&[
        "--max-connections-per-peer",
        "64",
        "--frame-timeout-ms",
        "600000",
        "--write-timeout-ms",
        "600000",
    ]);
    let big = "m".repeat(60 * 1024);
    // All but two of the connections the defaults allow (the publisher and
    // the final Stats need one each), each doing something hostile: stalled
    // subscribers to every topic, and half-sent maximal frames.
    let mut hostile = Vec::new();
    for i in 0..31 {
        let mut raw = Raw::connect(&gw.consumer);
        raw.call(json!({"method": "io.qmipc.Gateway.Subscribe", "parameters": {"topics": ["*"]}, "more": true}));
        hostile.push(raw);
        let mut half = Raw::connect(&gw.consumer);
        let text = format!("{{\"method\":\"io.qmipc.Gateway.Publish\",\"parameters\":{{\"topic\":\"h{i}\",\"value\":\"{}", &big[..60_000]);
        half.send(text.as_bytes());
        hostile.push(half);
    }
    within(WATCHDOG, async {
        let mut publisher = GatewayClient::connect(&gw.provider).await.unwrap();
        // Fill the retained-value budget with large values, again and again.
        for round in 0..20 {
            for t in 0..120 {
                match publisher
                    .publish(&format!("topic{t}"), json!({"v": format!("{round}{big}")}))
                    .await
                {
                    Ok(_) => {}
                    Err(e) => {
                        assert_eq!(limit_of(&e).as_deref(), Some("max_retained_bytes"), "{e}")
                    }
                }
            }
        }
    });
    let s = stats(&gw);
    assert_eq!(
        s["connections"], 63,
        "all 62 hostile connections lasted (and the Stats one)"
    );
    let peak = peak_rss_kib(gw.proc.child.id());
    eprintln!("gateway peak RSS under attack: {peak} KiB");
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB exceeds 64 MiB");
    drop(hostile);
}

#[test]
fn connection_storm_of_one_peer_is_refused_past_its_connection_rate() {
    // Accepting on the QM thread (the default) and on the SCHED_IDLE
    // accept thread: the same admission, the same refusal, counted alike.
    for accept in ["normal", "idle"] {
        refused_past_the_connection_rate(accept);
    }
}

fn refused_past_the_connection_rate(accept: &str) {
    let gw = Gateway::start(&[
        "--connection-rate",
        "1",
        "--connection-burst",
        "3",
        "--qm-accept",
        accept,
    ]);
    // Three connections are the burst; the fourth, a moment later, is
    // refused with the limit's name (a token takes a second to return).
    let held = served_connections(&gw, 3);
    let mut fourth = Raw::connect(&gw.consumer);
    let reply = fourth.recv().expect("an error reply");
    assert_eq!(reply["error"], "io.qmipc.Gateway.LimitExceeded");
    assert_eq!(reply["parameters"]["limit"], "connection_rate");
    fourth.expect_closed();
    // The provider socket is not subject to it.
    let s = stats(&gw);
    assert_eq!(s["limit_hits"]["connection_rate"], 1, "{accept}: {s}");
    assert_eq!(s["disconnects"]["refused"], 1, "{accept}: {s}");
    drop(held);
}
