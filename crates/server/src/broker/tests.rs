//! The broker's guarantees as deterministic tests: no sockets, no threads,
//! time paused or passed in. Each names the bound or breach it covers (the
//! hostile-client tests in `crates/cli/tests/breaches.rs` cover the same
//! over real sockets).

use qm_ipc_proto::interface::TopicPattern;
use qm_ipc_proto::raw::RawJson;
use qm_ipc_proto::ErrorReply;
use serde_json::Value;

use super::*;
use crate::policy::Policy;

const ASIL_AND_QM: &str = r#"
[[rule]]
name = "asil"
socket = "provider"
allow = { publish = ["*"], subscribe = ["*"], call = ["*"], stats = true }

[[rule]]
name = "qm"
socket = "consumer"
allow = { subscribe = ["*"], publish = ["qm.*"], call = ["*"] }
"#;

fn policy(text: &str) -> Policy {
    Policy::parse("test", text, &["consumer", "provider"]).expect("test policy parses")
}

fn broker(limits: Limits) -> Broker {
    Broker::new(limits, policy(ASIL_AND_QM), "test-instance")
}

fn now() -> Now {
    Now {
        mono: Instant::now(),
        wall_us: 1,
    }
}

/// A QM container: its own cgroup, on the consumer socket.
fn qm(cgroup: u64) -> Peer {
    Peer::synthetic("consumer", 1000, Some(cgroup))
}

fn asil() -> Peer {
    Peer::synthetic("provider", 0, Some(1))
}

fn json(text: &str) -> RawJson {
    RawJson::from_value(&serde_json::from_str(text).expect("test JSON"))
}

fn connect(broker: &mut Broker, peer: &Peer) -> (ConnId, Arc<Outbox>) {
    let (id, outbox, _account) = broker.connect(peer).expect("connection admitted");
    (id, outbox)
}

/// Every frame queued for a connection, parsed.
fn drain(outbox: &Outbox) -> Vec<Value> {
    let mut bytes = Vec::new();
    outbox.take(&mut bytes, usize::MAX);
    bytes
        .split(|b| *b == 0)
        .filter(|f| !f.is_empty())
        .map(|f| serde_json::from_slice(f).expect("a JSON frame"))
        .collect()
}

fn limit_of(error: ErrorReply) -> String {
    match error {
        ErrorReply::LimitExceeded { limit, .. } => limit,
        other => panic!("expected LimitExceeded, got {other:?}"),
    }
}

#[test]
fn a_second_subscribe_on_a_streaming_connection_is_refused_not_duplicated() {
    // Breach 1: a repeated Subscribe used to add the connection to every
    // topic again, so one publish arrived once per Subscribe.
    let mut broker = broker(Limits::default());
    let (provider, _) = connect(&mut broker, &asil());
    let (conn, outbox) = connect(&mut broker, &qm(10));
    broker
        .subscribe(conn, vec![TopicPattern::parse("*").unwrap()], 8)
        .unwrap();
    let again = broker.subscribe(conn, vec![TopicPattern::parse("*").unwrap()], 8);
    assert!(
        matches!(again, Err(ErrorReply::InvalidValue { .. })),
        "{again:?}"
    );
    assert_eq!(broker.state(conn), Some("streaming"));
    broker
        .publish(provider, "vehicle.speed", json("{\"kmh\":1}"), now())
        .unwrap();
    assert_eq!(drain(&outbox).len(), 1, "one publish, one sample");
}

#[test]
fn the_connection_quota_is_per_container_and_never_the_asil_sides() {
    // Breach 2: QM's connections used to share one pool with the ASIL side.
    let limits = Limits {
        max_connections_per_peer: 2,
        ..Limits::default()
    };
    let mut broker = broker(limits);
    let held: Vec<_> = (0..2).map(|_| connect(&mut broker, &qm(10))).collect();
    let refused = broker.connect(&qm(10)).map(|_| ()).unwrap_err();
    assert_eq!(limit_of(refused), "max_connections_per_peer");
    // Another container with the same uid has a quota of its own.
    connect(&mut broker, &qm(11));
    // The provider socket is outside every QM quota.
    for _ in 0..5 {
        connect(&mut broker, &asil());
    }
    // A connection that ends gives its slot back.
    broker.disconnect(held[0].0, "peer_closed");
    connect(&mut broker, &qm(10));
}

#[test]
fn accounts_vanish_when_they_hold_nothing() {
    // Breach 5: maps keyed by uid never shrank.
    let mut broker = broker(Limits::default());
    for cgroup in 0..10_000 {
        let (conn, _) = connect(&mut broker, &qm(100 + cgroup));
        broker.disconnect(conn, "peer_closed");
    }
    assert!(broker.snapshot().accounts.is_empty());
    assert!(
        broker.accounting.entries() <= 16,
        "{}",
        broker.accounting.entries()
    );
}

#[test]
fn denials_are_counted_for_at_most_64_identities() {
    let mut broker = broker(Limits::default());
    for uid in 0..1000 {
        broker.record_denial(format!("consumer uid={uid}"));
    }
    let denials = broker.snapshot().denials;
    assert_eq!(denials.len(), counters::MAX_DENIAL_ENTRIES + 1);
    assert_eq!(denials[counters::OTHER_IDENTITIES], 1000 - 64);
}

#[test]
fn one_container_cannot_take_every_topic_from_the_asil_side() {
    let limits = Limits {
        max_topics: 4,
        max_topics_per_peer: 2,
        ..Limits::default()
    };
    let mut broker = broker(limits);
    let (noisy, _) = connect(&mut broker, &qm(10));
    broker.publish(noisy, "qm.a", json("1"), now()).unwrap();
    broker.publish(noisy, "qm.b", json("1"), now()).unwrap();
    let refused = broker.publish(noisy, "qm.c", json("1"), now()).unwrap_err();
    assert_eq!(limit_of(refused), "max_topics_per_peer");
    // Updating a topic it created costs no new slot.
    broker.publish(noisy, "qm.a", json("2"), now()).unwrap();
    let (provider, _) = connect(&mut broker, &asil());
    broker
        .publish(provider, "vehicle.speed", json("{}"), now())
        .expect("the ASIL side still creates topics");
}

/// Regression: QM containers at their quotas filled the gateway-wide
/// topic and byte bounds, and the ASIL provider's next new topic (or a
/// value one byte larger) was refused.
#[test]
fn qm_together_never_takes_the_asil_sides_share_of_topics_and_bytes() {
    let limits = Limits {
        max_topics: 8,
        max_topics_per_peer: 8,
        max_retained_bytes: 400,
        max_retained_bytes_per_peer: 400,
        ..Limits::default()
    };
    let mut broker = broker(limits);
    let (asil_publisher, _) = connect(&mut broker, &asil());
    broker
        .publish(
            asil_publisher,
            "vehicle.speed",
            json("{\"kmh\":9.8}"),
            now(),
        )
        .unwrap();
    for container in 0..4u64 {
        let (conn, _) = connect(&mut broker, &qm(100 + container));
        for i in 0..8 {
            let _ = broker.publish(
                conn,
                &format!("qm.{container}.{i}"),
                json("\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\""),
                now(),
            );
        }
    }
    let snapshot = broker.snapshot();
    let share_hits = ["qm_topics", "qm_retained_bytes"]
        .iter()
        .filter_map(|l| snapshot.limit_hits.get(l))
        .sum::<u64>();
    assert!(share_hits > 0, "{:?}", snapshot.limit_hits);
    let qm_topics: usize = snapshot
        .accounts
        .iter()
        .filter(|a| a.account.starts_with("consumer"))
        .map(|a| a.topics)
        .sum();
    assert!(qm_topics <= 6, "QM holds {qm_topics} of 8 topics");
    broker
        .publish(asil_publisher, "vehicle.rpm", json("{\"rpm\":800}"), now())
        .expect("the ASIL side still creates a topic");
    broker
        .publish(
            asil_publisher,
            "vehicle.speed",
            json("{\"kmh\":10.25}"),
            now(),
        )
        .expect("and its value may grow");
}

/// A container over its own quota is told so, even when QM's part of the
/// bound is full too: a refusal for QM's part says nothing of who filled
/// it, and is not held against the container (see crate::standing), so
/// containers at their own quotas could otherwise fill QM's part and never
/// be held back.
#[test]
fn a_containers_own_quota_is_checked_before_qms_share() {
    let limits = Limits {
        max_topics: 8,
        max_topics_per_peer: 2,
        max_retained_bytes: 1000,
        max_retained_bytes_per_peer: 100,
        ..Limits::default()
    };
    let mut broker = broker(limits);
    let mut conns = Vec::new();
    for container in 0..3u64 {
        let (conn, _) = connect(&mut broker, &qm(200 + container));
        for i in 0..2 {
            broker
                .publish(conn, &format!("q{container}.{i}"), json("1"), now())
                .unwrap();
        }
        conns.push(conn);
    }
    // QM holds its share (6 of 8 topics), each container its quota.
    let refused = broker
        .publish(conns[0], "q0.new", json("1"), now())
        .unwrap_err();
    assert_eq!(limit_of(refused), "max_topics_per_peer");
    let (newcomer, _) = connect(&mut broker, &qm(300));
    let refused = broker
        .publish(newcomer, "q3.new", json("1"), now())
        .unwrap_err();
    assert_eq!(limit_of(refused), "qm_topics");
    // And bytes: over its own 100 bytes, whatever QM's part holds.
    let big = format!("\"{}\"", "x".repeat(150));
    let refused = broker
        .publish(conns[1], "q1.0", json(&big), now())
        .unwrap_err();
    assert_eq!(limit_of(refused), "max_retained_bytes_per_peer");
}

#[test]
fn retained_bytes_are_charged_to_the_last_publisher() {
    let limits = Limits {
        max_retained_bytes_per_peer: 100,
        ..Limits::default()
    };
    let mut broker = broker(limits);
    let (qm_a, _) = connect(&mut broker, &qm(10));
    let big = format!("\"{}\"", "x".repeat(78)); // 80 bytes
    broker.publish(qm_a, "qm.big", json(&big), now()).unwrap();
    // Replacing its own 80 bytes by 80 more fits; a second 80 does not.
    broker.publish(qm_a, "qm.big", json(&big), now()).unwrap();
    let refused = broker
        .publish(qm_a, "qm.other", json(&big), now())
        .unwrap_err();
    assert_eq!(limit_of(refused), "max_retained_bytes_per_peer");
    // Another container overwriting the value takes the charge over.
    let (qm_b, _) = connect(&mut broker, &qm(11));
    broker.publish(qm_b, "qm.big", json("1"), now()).unwrap();
    broker
        .publish(qm_a, "qm.other", json(&big), now())
        .expect("qm_a's bytes went with its overwritten value");
    let accounts = broker.snapshot().accounts;
    let held: Vec<usize> = accounts.iter().map(|a| a.retained_bytes).collect();
    assert_eq!(held, vec![80, 1]);
}

#[test]
fn a_reload_that_withdraws_a_grant_ends_the_stream_with_access_denied() {
    // Breach 8: a withdrawn grant used to leave the live subscription
    // running.
    let mut broker = broker(Limits::default());
    let (provider, _) = connect(&mut broker, &asil());
    let (subscriber, sub_out) = connect(&mut broker, &qm(10));
    broker
        .subscribe(subscriber, vec![TopicPattern::parse("*").unwrap()], 8)
        .unwrap();
    broker.set_policy(policy(
        r#"
[[rule]]
name = "asil"
socket = "provider"
allow = { publish = ["*"], subscribe = ["*"] }

[[rule]]
name = "qm"
socket = "consumer"
allow = { publish = ["qm.status"] }
"#,
    ));
    assert_eq!(broker.state(subscriber), Some("closing"));
    let frames = drain(&sub_out);
    let last = frames.last().expect("a last reply");
    assert_eq!(last["error"], "io.qmipc.Gateway.AccessDenied", "{last}");
    broker
        .publish(provider, "vehicle.speed", json("1"), now())
        .unwrap();
    assert!(
        drain(&sub_out).is_empty(),
        "a closing stream gets no samples"
    );
}

#[test]
fn a_reload_refilters_running_subscriptions() {
    let mut broker = broker(Limits::default());
    let (provider, _) = connect(&mut broker, &asil());
    let (subscriber, outbox) = connect(&mut broker, &qm(10));
    broker
        .subscribe(
            subscriber,
            vec![TopicPattern::parse("vehicle.*").unwrap()],
            8,
        )
        .unwrap();
    broker
        .publish(provider, "vehicle.speed", json("1"), now())
        .unwrap();
    broker
        .publish(provider, "vehicle.vin", json("1"), now())
        .unwrap();
    assert_eq!(drain(&outbox).len(), 2);
    broker.set_policy(policy(
        r#"
[[rule]]
name = "asil"
socket = "provider"
allow = { publish = ["*"] }

[[rule]]
name = "qm"
socket = "consumer"
allow = { subscribe = ["vehicle.speed"] }
"#,
    ));
    broker
        .publish(provider, "vehicle.speed", json("2"), now())
        .unwrap();
    assert_eq!(drain(&outbox).len(), 1);
}

#[test]
fn refusals_at_admission_show_in_stats() {
    // The accept thread owns admission; its counts reach Stats through the
    // broker.
    let broker = broker(Limits::default());
    let mut admission = crate::admission::Admission::new(None, broker.admission_stats());
    let mut handed_on = qm(10);
    handed_on.gone = true;
    assert!(admission.admit(&handed_on, now().mono).is_err());
    assert_eq!(broker.snapshot().disconnects["peer_gone"], 1);
    assert_eq!(broker.snapshot().disconnects["refused"], 1);
}

#[test]
fn a_subscriber_gets_only_what_it_may_read() {
    let mut broker = Broker::new(
        Limits::default(),
        policy(
            r#"
[[rule]]
name = "asil"
socket = "provider"
allow = { publish = ["*"] }

[[rule]]
name = "qm"
socket = "consumer"
allow = { subscribe = ["vehicle.*"] }
"#,
        ),
        "test-instance",
    );
    let (provider, _) = connect(&mut broker, &asil());
    broker
        .publish(provider, "secret.key", json("1"), now())
        .unwrap();
    let (subscriber, outbox) = connect(&mut broker, &qm(10));
    broker
        .subscribe(subscriber, vec![TopicPattern::parse("*").unwrap()], 8)
        .unwrap();
    broker
        .publish(provider, "secret.key", json("2"), now())
        .unwrap();
    broker
        .publish(provider, "vehicle.speed", json("3"), now())
        .unwrap();
    let frames = drain(&outbox);
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["parameters"]["sample"]["topic"], "vehicle.speed");
}

#[test]
fn retained_values_are_bounded_in_total() {
    let limits = Limits {
        max_retained_bytes: 10,
        ..Limits::default()
    };
    let mut broker = broker(limits);
    let (provider, _) = connect(&mut broker, &asil());
    broker
        .publish(provider, "a", json("\"12345678\""), now())
        .unwrap();
    let refused = broker
        .publish(provider, "b", json("\"1\""), now())
        .unwrap_err();
    assert_eq!(limit_of(refused), "max_retained_bytes");
    assert_eq!(broker.snapshot().retained_bytes, 10);
    assert_eq!(
        broker.snapshot().topics,
        1,
        "a refused publish creates nothing"
    );
}

#[test]
fn the_first_sample_of_each_topic_names_the_gateway_instance() {
    let mut broker = broker(Limits::default());
    let (provider, _) = connect(&mut broker, &asil());
    broker.publish(provider, "a", json("1"), now()).unwrap();
    let (subscriber, outbox) = connect(&mut broker, &qm(10));
    broker
        .subscribe(subscriber, vec![TopicPattern::parse("*").unwrap()], 8)
        .unwrap();
    broker.publish(provider, "a", json("2"), now()).unwrap();
    broker.publish(provider, "b", json("3"), now()).unwrap();
    broker.publish(provider, "b", json("4"), now()).unwrap();
    let samples: Vec<Value> = drain(&outbox)
        .into_iter()
        .map(|f| f["parameters"]["sample"].clone())
        .collect();
    let instances: Vec<(&str, Option<&str>)> = samples
        .iter()
        .map(|s| (s["topic"].as_str().unwrap(), s["instance"].as_str()))
        .collect();
    assert_eq!(
        instances,
        vec![
            ("a", Some("test-instance")),
            ("a", None),
            ("b", None),
            ("b", None)
        ],
        "the current value carries it; updates do not"
    );
    assert_eq!(broker.snapshot().instance, "test-instance");
}

const MONITORED: &str = r#"
[[rule]]
name = "asil"
socket = "provider"
allow = { publish = ["*"], subscribe = ["*"], call = ["*"] }

[[rule]]
name = "qm"
socket = "consumer"
allow = { subscribe = ["vehicle.*"], call = ["svc"], monitor = true }
"#;

/// Monitor: what the policy lets the monitor see, with who did it; a slow
/// monitor loses events and is told how many, and the publisher never
/// waits for it.
#[test]
fn a_monitor_sees_what_it_may_and_counts_what_it_lost() {
    let limits = Limits {
        max_queued_bytes: 2048,
        ..Limits::default()
    };
    let mut b = Broker::new(limits, policy(MONITORED), "test-instance");
    let (watcher, events) = connect(&mut b, &qm(7));
    b.monitor(watcher, vec![TopicPattern::parse("*").unwrap()], 64)
        .unwrap();
    assert_eq!(b.state(watcher), Some("monitoring"));
    let (asil_conn, _) = connect(&mut b, &asil());

    // A topic the monitor may read, and one it may not.
    b.publish(asil_conn, "vehicle.speed", json(r#"{"kmh": 50}"#), now())
        .unwrap();
    b.publish(asil_conn, "cabin.secret", json("{}"), now())
        .unwrap();
    let seen = drain(&events);
    assert_eq!(seen.len(), 1, "{seen:?}");
    let event = &seen[0]["parameters"]["event"];
    assert_eq!(event["kind"], "publish");
    assert_eq!(event["name"], "vehicle.speed");
    assert_eq!(event["seq"], 1);
    assert_eq!(event["value"]["kmh"], 50);
    assert_eq!(event["dropped"], 0);
    assert!(
        event["peer"].as_str().unwrap().starts_with("provider"),
        "{event}"
    );
    assert_eq!(seen[0]["continues"], true);

    // Not read: the queue fills, later events are lost, every publish
    // still succeeds.
    let value = json(&format!(r#"{{"pad": "{}"}}"#, "x".repeat(200)));
    for _ in 0..100 {
        b.publish(asil_conn, "vehicle.speed", value.clone(), now())
            .unwrap();
    }
    let kept = drain(&events).len();
    assert!((1..100).contains(&kept), "{kept} of 100 queued");
    b.publish(asil_conn, "vehicle.speed", value, now()).unwrap();
    let next = drain(&events);
    assert_eq!(next.len(), 1);
    assert_eq!(
        next[0]["parameters"]["event"]["dropped"],
        (100 - kept) as u64,
        "the next event says how many were lost"
    );

    // A call to a service and its error reply, with the caller named.
    let (caller, _) = connect(&mut b, &qm(8));
    let id = 7;
    b.observe_proxied_call(caller, "svc", "M", id, None);
    let seen = drain(&events);
    let call = &seen[0]["parameters"]["event"];
    assert_eq!(call["kind"], "call");
    assert_eq!(call["name"], "svc");
    assert_eq!(call["method"], "M");
    assert_eq!(call["seq"], id);
    assert!(
        call["peer"].as_str().unwrap().starts_with("consumer"),
        "{call}"
    );
    b.observe_proxied_call(caller, "svc", "M", id, Some(Some("com.example.Broken")));
    let seen = drain(&events);
    let error = &seen[0]["parameters"]["event"];
    assert_eq!(error["kind"], "error");
    assert_eq!(error["error"], "com.example.Broken");
    assert_eq!(error["seq"], id);

    // A reload without the grant ends the monitor with AccessDenied.
    b.set_policy(policy(ASIL_AND_QM));
    assert_eq!(b.state(watcher), Some("closing"));
    let last = drain(&events);
    assert_eq!(
        last[0]["error"], "io.qmipc.Gateway.AccessDenied",
        "{last:?}"
    );
    assert_eq!(last[0]["parameters"]["action"], "monitor");
}

#[test]
fn updates_missed_upstream_move_seq_on_and_count_in_dropped() {
    // A bridge relays another gateway's topic; across a network cut it
    // publishes the next value with how many it never saw. Subscribers
    // here must see those in `dropped`, with seq and dropped adding up,
    // whether they keep up or are conflated.
    let limits = Limits {
        subscription_queue: 1,
        ..Limits::default()
    };
    let mut broker = broker(limits);
    let (bridge, _) = connect(&mut broker, &asil());
    let (reader, reading) = connect(&mut broker, &qm(10));
    let (stalled, stalled_box) = connect(&mut broker, &qm(11));
    for conn in [reader, stalled] {
        broker
            .subscribe(conn, vec![TopicPattern::parse("far.speed").unwrap()], 8)
            .unwrap();
    }
    let seq = |v: &Value| {
        let s = &v["parameters"]["sample"];
        (s["seq"].as_u64(), s["dropped"].as_u64())
    };
    assert_eq!(
        broker.publish(bridge, "far.speed", json("{\"kmh\":1}"), now()),
        Ok(1)
    );
    assert_eq!(
        drain(&reading).iter().map(seq).collect::<Vec<_>>(),
        [(Some(1), Some(0))]
    );
    assert_eq!(
        broker.publish_after(bridge, "far.speed", json("{\"kmh\":2}"), missed(3), now()),
        Ok(5),
        "seq moves past the 3 missed"
    );
    assert_eq!(
        drain(&reading).iter().map(seq).collect::<Vec<_>>(),
        [(Some(5), Some(3))]
    );
    // The stalled subscriber holds seq 1 unread; 5 replaced it (conflated),
    // then 6 after one more missed replaces that: 1 + 3 + 1 + 1 = 6 lost.
    assert_eq!(
        broker.publish_after(bridge, "far.speed", json("{\"kmh\":3}"), missed(1), now()),
        Ok(7)
    );
    let stalled_samples = drain(&stalled_box);
    assert_eq!(
        stalled_samples.iter().map(seq).collect::<Vec<_>>(),
        [(Some(7), Some(6))],
        "seq 7 after seq 0: all six before it counted"
    );
}

/// A QM container's connection (its cgroup `cgroup`) subscribed to
/// `pattern`; its outbox.
fn subscriber(broker: &mut Broker, cgroup: u64, pattern: &str) -> Arc<Outbox> {
    let (conn, outbox) = connect(broker, &qm(cgroup));
    broker
        .subscribe(conn, vec![TopicPattern::parse(pattern).unwrap()], 8)
        .unwrap();
    outbox
}

fn missed(missed: u64) -> Upstream {
    Upstream {
        missed,
        origin: None,
    }
}

fn from_origin(origin: &str) -> Upstream {
    Upstream {
        missed: 0,
        origin: Some(origin.into()),
    }
}

const ORIGIN_A: &str = "5f0c0123456789abcdef0123456789ab";
const ORIGIN_B: &str = "a3e10123456789abcdef0123456789ab";

#[test]
fn a_relayed_value_keeps_its_origin_for_subscribers_get_and_the_next_instance() {
    // A bridge relays another gateway's topic and names the gateway each
    // value came from. Every way a value leaves this gateway carries it:
    // live samples, the current value a new subscription starts with, Get,
    // and the store handed to the next instance; a value published here
    // has none, and a new origin replaces the old with the value.
    let mut broker = broker(Limits::default());
    let (bridge, _) = connect(&mut broker, &asil());
    let reading = subscriber(&mut broker, 10, "far.*");
    let origin_of = |v: &Value| {
        let s = &v["parameters"]["sample"];
        (s["seq"].as_u64(), s["origin"].as_str().map(str::to_owned))
    };
    // The second value comes after the origin gateway restarted: it names
    // the new instance; this gateway did not restart, so seq goes on.
    for (seq, origin) in [(1, ORIGIN_A), (2, ORIGIN_B)] {
        let value = json(&format!("{{\"kmh\":{seq}}}"));
        broker
            .publish_after(bridge, "far.speed", value, from_origin(origin), now())
            .unwrap();
        assert_eq!(
            drain(&reading).iter().map(origin_of).collect::<Vec<_>>(),
            [(Some(seq), Some(origin.to_owned()))]
        );
    }
    let (_, current) = broker.get("far.speed").unwrap();
    assert_eq!(current.origin.as_deref(), Some(ORIGIN_B));
    // A late subscriber's current value names it too.
    let late_box = subscriber(&mut broker, 11, "far.speed");
    assert_eq!(
        drain(&late_box).iter().map(origin_of).collect::<Vec<_>>(),
        [(Some(2), Some(ORIGIN_B.to_owned()))]
    );
    // Carried through the store to the next instance.
    let topics = broker.export_topics();
    assert_eq!(topics[0].origin.as_deref(), Some(ORIGIN_B));
    let mut next = self::broker(Limits::default());
    next.restore_topics(&topics);
    let (_, carried) = next.get("far.speed").unwrap();
    assert_eq!(carried.origin.as_deref(), Some(ORIGIN_B));
    // A value published here has no origin, and takes the old one's place.
    broker
        .publish(bridge, "far.speed", json("{\"kmh\":3}"), now())
        .unwrap();
    assert_eq!(
        drain(&reading).iter().map(origin_of).collect::<Vec<_>>(),
        [(Some(3), None)]
    );
    assert_eq!(broker.get("far.speed").unwrap().1.origin, None);
}

/// A restart through the file descriptor store: the next broker has the
/// topics with their values, seqs and charges, a carried subscription gets
/// the next value and not the current one again (it had it), and the next
/// publish goes on from the seq handed over.
#[test]
fn topics_and_subscriptions_carry_over_to_the_next_instance() {
    let mut first = broker(Limits::default());
    let (publisher, _) = connect(&mut first, &qm(7));
    for kmh in 1..=3 {
        first
            .publish(
                publisher,
                "qm.speed",
                json(&format!(r#"{{"kmh":{kmh}}}"#)),
                now(),
            )
            .unwrap();
    }
    let (asil_publisher, _) = connect(&mut first, &asil());
    first
        .publish(asil_publisher, "vehicle.gear", json(r#"{"gear":2}"#), now())
        .unwrap();
    let topics = first.export_topics();
    assert_eq!(topics.len(), 2);

    let mut next = broker(Limits::default());
    next.restore_topics(&topics);
    let (_, current) = next.get("qm.speed").unwrap();
    assert_eq!((current.seq, &*current.value_json), (3, r#"{"kmh":3}"#));
    // QM's charges came back with the values: its share counts them.
    assert_eq!(next.accounting.qm_held(Resource::Topics), 1);
    assert_eq!(
        next.accounting.qm_held(Resource::RetainedBytes),
        r#"{"kmh":3}"#.len()
    );

    let (subscriber, outbox) = connect(&mut next, &qm(8));
    next.resubscribe(subscriber, vec![TopicPattern::parse("qm.*").unwrap()])
        .unwrap();
    assert!(drain(&outbox).is_empty(), "no current value again");
    let (publisher, _) = connect(&mut next, &qm(7));
    let seq = next
        .publish(publisher, "qm.speed", json(r#"{"kmh":4}"#), now())
        .unwrap();
    assert_eq!(seq, 4, "seq goes on");
    let got = drain(&outbox);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["parameters"]["sample"]["seq"], 4);
    assert_eq!(
        next.carried_state(subscriber),
        Some(crate::fdstore::Carried::Streaming {
            patterns: vec!["qm.*".into()]
        })
    );
}
