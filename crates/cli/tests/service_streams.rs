//! `more` streams from an ASIL service to QM through the gateway: relayed
//! in order with the last reply always delivered, bounded and conflated
//! for a slow QM reader without ever slowing the service, refused at the
//! gateway when their parameters do not fit, and ended with a named error
//! when the service dies mid-stream.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;

use common::{Gateway, Raw, DEADLINE};
use serde_json::{json, Value};

const FEED_IDL: &str = "interface com.example.Feed\n\n# Streams n = 1..count; the last reply is n = count (or, with fail, the error Broken after it).\nmethod Follow(count: int, die: ?bool, fail: ?bool) -> (n: int)\n\n# One reply, then quiet until the caller goes.\nmethod Watch() -> (n: int)\n\n# An error that claims more follow.\nmethod Fail() -> ()\n\nerror Broken ()\n";

/// A varlink service written by hand on a plain socket, so the test sees
/// exactly what it sends: it answers GetInterfaceDescription, and streams
/// Follow's replies as fast as the socket takes them. Reports each
/// finished stream (how many replies it wrote) on `done`.
struct FeedService {
    socket: PathBuf,
    calls: Arc<AtomicU64>,
    done: mpsc::Receiver<u64>,
}

impl FeedService {
    fn start(dir: &Path) -> Self {
        let socket = dir.join("feed.socket");
        let listener = UnixListener::bind(&socket).expect("bind the service");
        let calls = Arc::new(AtomicU64::new(0));
        let (tx, done) = mpsc::channel();
        let counter = calls.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (counter, tx) = (counter.clone(), tx.clone());
                thread::spawn(move || serve(stream, &counter, &tx));
            }
        });
        Self {
            socket,
            calls,
            done,
        }
    }
}

fn serve(stream: std::os::unix::net::UnixStream, calls: &AtomicU64, done: &mpsc::Sender<u64>) {
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    let mut frame = Vec::new();
    loop {
        frame.clear();
        match reader.read_until(0, &mut frame) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        frame.pop();
        let call: Value = serde_json::from_slice(&frame).expect("the gateway sends JSON");
        let reply = |writer: &mut std::os::unix::net::UnixStream, v: Value| {
            let mut bytes = v.to_string().into_bytes();
            bytes.push(0);
            writer.write_all(&bytes)
        };
        match call["method"].as_str() {
            Some("org.varlink.service.GetInterfaceDescription") => {
                let _ = reply(
                    &mut writer,
                    json!({"parameters": {"description": FEED_IDL}}),
                );
            }
            Some("com.example.Feed.Follow") => {
                calls.fetch_add(1, Ordering::SeqCst);
                let count = call["parameters"]["count"].as_u64().unwrap_or(0);
                let die = call["parameters"]["die"].as_bool() == Some(true);
                let fail = call["parameters"]["fail"].as_bool() == Some(true);
                let mut written = 0;
                for n in 1..=count {
                    let last = n == count && !die && !fail;
                    let v = match last {
                        true => json!({"parameters": {"n": n}}),
                        false => {
                            json!({"parameters": {"n": n, "pad": "x".repeat(64)}, "continues": true})
                        }
                    };
                    if reply(&mut writer, v).is_err() {
                        break;
                    }
                    written += 1;
                }
                if fail
                    && reply(
                        &mut writer,
                        json!({"error": "com.example.Feed.Broken", "parameters": {}}),
                    )
                    .is_ok()
                {
                    written += 1;
                }
                let _ = done.send(written);
                if die {
                    return; // closes mid-stream
                }
            }
            Some("com.example.Feed.Fail") => {
                let _ = reply(
                    &mut writer,
                    json!({"error": "com.example.Feed.Broken", "parameters": {}, "continues": true}),
                );
            }
            Some("com.example.Feed.Watch") => {
                calls.fetch_add(1, Ordering::SeqCst);
                let _ = reply(
                    &mut writer,
                    json!({"parameters": {"n": 1}, "continues": true}),
                );
                // Quiet, as an event stream is between events, until the
                // gateway closes the connection.
                let mut rest = Vec::new();
                let _ = std::io::Read::read_to_end(&mut reader, &mut rest);
                let _ = done.send(1);
                return;
            }
            _ => {
                let _ = reply(
                    &mut writer,
                    json!({"error": "org.varlink.service.MethodNotFound", "parameters": {"method": call["method"]}}),
                );
            }
        }
    }
}

fn gateway_with_feed() -> (Gateway, FeedService) {
    gateway_with_feed_and(&[])
}

/// The feed behind a gateway started with `more` options too.
fn gateway_with_feed_and(more: &[&str]) -> (Gateway, FeedService) {
    let dir = tempfile::tempdir().unwrap();
    let feed = FeedService::start(dir.path());
    let services = dir.path().join("services.toml");
    std::fs::write(
        &services,
        format!(
            "[[service]]\ninterface = \"com.example.Feed\"\nsocket = \"{}\"\n",
            feed.socket.display()
        ),
    )
    .unwrap();
    let mut args = vec!["--services", services.to_str().unwrap()];
    args.extend_from_slice(more);
    let gw = Gateway::start_in(dir, &args);
    (gw, feed)
}

fn follow(client: &mut Raw, count: u64, die: bool) {
    client.call(json!({"method": "com.example.Feed.Follow", "parameters": {"count": count, "die": die}, "more": true}));
}

/// Reads a stream to its end: the values of n, and the last reply.
fn read_to_end(client: &mut Raw) -> (Vec<u64>, Value) {
    let mut seen = Vec::new();
    loop {
        let reply = client.recv().expect("a reply");
        if reply["continues"] == true {
            seen.push(reply["parameters"]["n"].as_u64().expect("n"));
        } else {
            return (seen, reply);
        }
    }
}

#[test]
fn a_service_stream_reaches_qm_in_order_with_its_last_reply() {
    let (gw, _feed) = gateway_with_feed();
    let mut client = Raw::connect(&gw.consumer);
    follow(&mut client, 50, false);
    let (seen, last) = read_to_end(&mut client);
    assert_eq!(last["parameters"]["n"], 50, "{last}");
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "in order, never repeated: {seen:?}"
    );
    // The connection takes ordinary calls again after the stream.
    client.call(json!({"method": "org.varlink.service.GetInfo"}));
    assert_eq!(client.recv().unwrap()["parameters"]["vendor"], "qm-ipc");
}

/// A QM reader that does not read: the service still writes its whole
/// stream at its own pace, the gateway holds at most one reply for the
/// reader, and the reader later gets the newest and the last.
#[test]
fn a_slow_qm_reader_costs_the_service_nothing_and_the_gateway_one_reply() {
    let (gw, feed) = gateway_with_feed();
    // 1.4 MB, many times what the socket buffers hold; small enough to
    // stream well within the gateway's write timeout for a stalled reader.
    let count = 20_000u64;
    let mut client = Raw::connect(&gw.consumer);
    follow(&mut client, count, false);
    // Nothing read yet, and the service finished all its replies.
    let written = feed
        .done
        .recv_timeout(DEADLINE)
        .expect("the service was never slowed by the reader");
    assert_eq!(written, count);
    // What the gateway holds for this reader: one reply at most, beyond
    // what the socket buffers took.
    let mut asil = Raw::connect(&gw.provider);
    asil.call(json!({"method": "io.qmipc.Gateway.Stats"}));
    let stats = asil.recv().unwrap();
    let queued: u64 = stats["parameters"]["per_connection"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["queued_bytes"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(queued <= 1024, "queued {queued} bytes for the slow reader");
    let (seen, last) = read_to_end(&mut client);
    assert_eq!(last["parameters"]["n"], count);
    assert!(
        (seen.len() as u64) < count / 2,
        "most replies were conflated away: {} delivered",
        seen.len()
    );
    asil.call(json!({"method": "io.qmipc.Gateway.Stats"}));
    let dropped = asil.recv().unwrap()["parameters"]["dropped"]
        .as_u64()
        .unwrap();
    assert_eq!(
        dropped + seen.len() as u64 + 1,
        count,
        "every reply is delivered or counted"
    );
}

#[test]
fn a_stream_with_parameters_that_do_not_fit_never_reaches_the_service() {
    let (gw, feed) = gateway_with_feed();
    let mut client = Raw::connect(&gw.consumer);
    client.call(
        json!({"method": "com.example.Feed.Follow", "parameters": {"count": "many"}, "more": true}),
    );
    let reply = client.recv().unwrap();
    assert_eq!(reply["error"], "org.varlink.service.InvalidParameter");
    assert_eq!(reply["parameters"]["parameter"], "count");
    assert_eq!(feed.calls.load(Ordering::SeqCst), 0);
}

#[test]
fn a_service_that_dies_mid_stream_ends_it_with_a_named_error() {
    let (gw, feed) = gateway_with_feed();
    let mut client = Raw::connect(&gw.consumer);
    follow(&mut client, 10, true);
    let (seen, last) = read_to_end(&mut client);
    assert_eq!(feed.done.recv_timeout(DEADLINE).unwrap(), 10);
    assert!(seen.iter().all(|n| *n <= 10), "{seen:?}");
    assert_eq!(
        last["error"], "io.qmipc.Gateway.ServiceUnavailable",
        "{last}"
    );
    assert_eq!(last["parameters"]["service"], "com.example.Feed");
}

/// `oneway` says no reply may come: with `more` as well, a QM client must
/// not get a stream on its connection (ahead of the replies to its next
/// calls), nor hold a streaming connection of the service's pool.
#[test]
fn a_oneway_call_with_more_gets_no_stream() {
    let (gw, _feed) = gateway_with_feed();
    let mut client = Raw::connect(&gw.consumer);
    client.call(json!({"method": "com.example.Feed.Follow", "parameters": {"count": 3}, "oneway": true, "more": true}));
    client.call(json!({"method": "org.varlink.service.GetInfo"}));
    let reply = client.recv().expect("a reply");
    assert_eq!(
        reply["parameters"]["vendor"], "qm-ipc",
        "the first reply is GetInfo's, not a stream: {reply}"
    );
}

/// A QM client that pipelined a call behind its stream and then went away
/// must not keep the stream, its connection to the service and its share
/// of the pool for as long as the service stays quiet: nobody can read
/// its replies any more.
#[test]
fn a_stream_whose_reader_left_with_a_call_pipelined_ends_at_once() {
    let (gw, feed) = gateway_with_feed();
    let mut client = Raw::connect(&gw.consumer);
    client.call(json!({"method": "com.example.Feed.Watch", "more": true}));
    let first = client.recv().expect("the first reply");
    assert_eq!(first["parameters"]["n"], 1, "{first}");
    // Sent while the stream runs: it waits in the socket, unread, until
    // the stream ends.
    client.call(json!({"method": "org.varlink.service.GetInfo"}));
    drop(client);
    assert_eq!(
        feed.done.recv_timeout(DEADLINE),
        Ok(1),
        "the gateway closed the service's stream once its reader was gone"
    );
}

/// A call pipelined behind a running stream by a reader that stays is
/// answered once the stream ends.
#[test]
fn a_call_pipelined_behind_a_stream_is_answered_after_it() {
    let (gw, _feed) = gateway_with_feed();
    let mut client = Raw::connect(&gw.consumer);
    follow(&mut client, 20_000, false);
    let first = client.recv().expect("the first reply");
    assert_eq!(first["continues"], true, "{first}");
    client.call(json!({"method": "org.varlink.service.GetInfo"}));
    let (_, last) = read_to_end(&mut client);
    assert_eq!(last["parameters"]["n"], 20_000, "{last}");
    let info = client.recv().expect("GetInfo's reply");
    assert_eq!(info["parameters"]["vendor"], "qm-ipc", "{info}");
}

/// Streams hold their share of the service's pool while they run: one QM
/// container at most half of QM's share (2 of the default 4 connections'
/// 3), the ASIL side still reaches the service meanwhile, and a stream
/// that ends gives its share back.
#[test]
fn streams_are_bounded_per_container_and_leave_the_asil_side_a_connection() {
    let (gw, feed) = gateway_with_feed();
    let watch = |client: &mut Raw| {
        client.call(json!({"method": "com.example.Feed.Watch", "more": true}));
        client.recv().expect("a reply")
    };
    let mut held: Vec<Raw> = (0..2)
        .map(|_| {
            let mut client = Raw::connect(&gw.consumer);
            let first = watch(&mut client);
            assert_eq!(first["parameters"]["n"], 1, "{first}");
            client
        })
        .collect();
    let mut third = Raw::connect(&gw.consumer);
    let refused = watch(&mut third);
    assert_eq!(
        refused["error"], "io.qmipc.Gateway.LimitExceeded",
        "{refused}"
    );
    assert_eq!(refused["parameters"]["limit"], "service_calls_per_peer");
    // The ASIL side: a stream and a plain call, while QM holds its share.
    let mut asil = Raw::connect(&gw.provider);
    let first = watch(&mut asil);
    assert_eq!(first["parameters"]["n"], 1, "{first}");
    let mut asil_call = Raw::connect(&gw.provider);
    asil_call.call(json!({"method": "com.example.Feed.Follow", "parameters": {"count": 1}}));
    let reply = asil_call.recv().expect("a reply");
    assert_eq!(reply["parameters"]["n"], 1, "{reply}");
    assert_eq!(feed.done.recv_timeout(DEADLINE), Ok(1), "the call's report");
    // One QM stream ends: its share is given back (before the service
    // sees the stream's connection close).
    drop(held.pop());
    assert_eq!(feed.done.recv_timeout(DEADLINE), Ok(1));
    let again = watch(&mut third);
    assert_eq!(again["parameters"]["n"], 1, "{again}");
}

/// An error ends a stream, whatever else the service's reply says: the QM
/// client must never be told more follow on a stream the gateway ended, or
/// it would take the replies to its next calls for the stream's.
#[test]
fn an_error_that_claims_to_continue_ends_the_stream_for_the_client_too() {
    let (gw, _feed) = gateway_with_feed();
    let mut client = Raw::connect(&gw.consumer);
    client.call(json!({"method": "com.example.Feed.Fail", "more": true}));
    let last = client.recv().expect("a reply");
    assert!(last["error"].is_string(), "{last}");
    assert_ne!(
        last["continues"], true,
        "the stream's end says it ends: {last}"
    );
    client.call(json!({"method": "org.varlink.service.GetInfo"}));
    assert_eq!(client.recv().unwrap()["parameters"]["vendor"], "qm-ipc");
}

/// A stream the service ends with an error is shown to monitors as that
/// error. (Regression: the stream's end was shown as a reply, however it
/// ended.)
#[test]
fn a_stream_ended_by_a_service_error_is_shown_to_monitors_as_that_error() {
    let policy_dir = tempfile::tempdir().unwrap();
    let policy = policy_dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[rule]]\nname = \"all\"\nallow = { publish = [\"*\"], subscribe = [\"*\"], call = [\"*\"], monitor = true }\n",
    )
    .unwrap();
    let (gw, _feed) = gateway_with_feed_and(&["--policy", policy.to_str().unwrap()]);
    let mut monitor = common::monitor_in_place(&gw.provider, &["com.example.*"]);

    let mut client = Raw::connect(&gw.consumer);
    client.call(json!({"method": "com.example.Feed.Follow", "parameters": {"count": 3, "fail": true}, "more": true}));
    // (Replies the client had no time for are conflated; the last, the
    // error, is always delivered.)
    let (_, last) = read_to_end(&mut client);
    assert_eq!(last["error"], "com.example.Feed.Broken", "{last}");

    let mut ended = None;
    while ended.is_none() {
        let event = monitor.recv().expect("a monitor event")["parameters"]["event"].clone();
        if event["name"] == "com.example.Feed" && event["kind"] != "call" {
            ended = Some(event);
        }
    }
    let ended = ended.unwrap();
    assert_eq!(ended["kind"], "error", "{ended}");
    assert_eq!(ended["error"], "com.example.Feed.Broken", "{ended}");
}
