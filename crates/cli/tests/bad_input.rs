//! Everything a peer can get wrong: each gets its varlink error, or (for
//! framing violations) that one connection is closed. The gateway goes on
//! serving everyone else.

mod common;

use common::{Gateway, Raw};
use serde_json::{json, Value};

/// A connection that stays open across all the abuse, and must still work.
fn assert_still_serving(witness: &mut Raw) {
    witness.call(json!({"method": "io.qmipc.Gateway.Publish", "parameters": {"topic": "alive", "value": {"alive": true}}}));
    let reply = witness.recv().expect("gateway still serves the witness");
    assert!(reply["parameters"]["seq"].as_u64().is_some(), "{reply}");
}

fn error_of(gw: &Gateway, call: Value) -> Value {
    let mut raw = Raw::connect(&gw.consumer);
    raw.call(call);
    let reply = raw.recv().expect("an error reply");
    // The connection stays usable after an error reply.
    raw.call(json!({"method": "org.varlink.service.GetInfo"}));
    assert!(raw.recv().unwrap()["parameters"]["interfaces"].is_array());
    reply
}

#[test]
fn protocol_errors_get_the_standard_varlink_errors() {
    let gw = Gateway::start(&[]);
    let mut witness = Raw::connect(&gw.consumer);
    let cases = [
        (
            json!({"method": "com.example.Nope.Do"}),
            "org.varlink.service.InterfaceNotFound",
            json!({"interface": "com.example.Nope"}),
        ),
        (
            json!({"method": "io.qmipc.Gateway.Nope"}),
            "org.varlink.service.MethodNotFound",
            json!({"method": "io.qmipc.Gateway.Nope"}),
        ),
        (
            json!({"method": "io.qmipc.Gateway.Get", "parameters": {"topic": 42}}),
            "org.varlink.service.InvalidParameter",
            json!({"parameter": "topic"}),
        ),
        (
            json!({"method": "io.qmipc.Gateway.Get", "parameters": {}}),
            "org.varlink.service.InvalidParameter",
            json!({"parameter": "topic"}),
        ),
        (
            json!({"method": "io.qmipc.Gateway.Get", "parameters": {"topic": "a", "tpoic": "b"}}),
            "org.varlink.service.InvalidParameter",
            json!({"parameter": "tpoic"}),
        ),
        (
            json!({"method": "io.qmipc.Gateway.Subscribe", "parameters": {"topics": ["a"]}}),
            "org.varlink.service.ExpectedMore",
            json!({}),
        ),
        (
            json!({"method": "io.qmipc.Gateway.Subscribe", "parameters": {"topics": "a"}, "more": true}),
            "org.varlink.service.InvalidParameter",
            json!({"parameter": "topics"}),
        ),
        (
            json!({"method": "io.qmipc.Gateway.Describe", "parameters": {"topic": 1}}),
            "org.varlink.service.InvalidParameter",
            json!({"parameter": "topic"}),
        ),
        (
            json!({"method": "org.varlink.service.GetInterfaceDescription", "parameters": {"interface": "x.Y"}}),
            "org.varlink.service.InterfaceNotFound",
            json!({"interface": "x.Y"}),
        ),
        (
            json!({"method": "io.qmipc.Gateway.Reply", "parameters": {"id": 99, "result": {}}}),
            "org.varlink.service.MethodNotFound",
            json!({"method": "io.qmipc.Gateway.Reply"}),
        ),
    ];
    for (call, name, parameters) in cases {
        let reply = error_of(&gw, call.clone());
        assert_eq!(reply["error"], name, "for {call}");
        assert_eq!(reply["parameters"], parameters, "for {call}");
    }
    assert_still_serving(&mut witness);
}

#[test]
fn framing_violations_close_only_that_connection() {
    let gw = Gateway::start(&["--max-frame", "1024"]);
    let mut witness = Raw::connect(&gw.consumer);

    let mut not_json = Raw::connect(&gw.consumer);
    not_json.send(b"{this is not json\0");
    not_json.expect_closed();

    let mut not_an_object = Raw::connect(&gw.consumer);
    not_an_object.send(b"[1,2,3]\0");
    not_an_object.expect_closed();

    let mut no_method = Raw::connect(&gw.consumer);
    no_method.send(b"{\"parameters\":{}}\0");
    no_method.expect_closed();

    // A frame without its NUL, then end of stream.
    let mut unterminated = Raw::connect(&gw.consumer);
    unterminated.send(br#"{"method":"org.varlink.service.GetInfo"}"#);
    unterminated
        .stream
        .shutdown(std::net::Shutdown::Write)
        .unwrap();
    unterminated.expect_closed();

    // Over the maximum frame size: closed as soon as the bound is crossed,
    // without waiting for the NUL.
    let mut oversized = Raw::connect(&gw.consumer);
    let big = format!(
        r#"{{"method":"io.qmipc.Gateway.Publish","parameters":{{"topic":"a","value":"{}"}}}}"#,
        "x".repeat(2048)
    );
    let _ = std::io::Write::write_all(&mut oversized.stream, big.as_bytes());
    oversized.expect_closed();

    // Non-UTF-8 and binary garbage.
    let mut garbage = Raw::connect(&gw.consumer);
    garbage.send(&[0xff, 0xfe, 0x00]);
    garbage.expect_closed();

    assert_still_serving(&mut witness);
    assert!(gw.proc.child.id() > 0);
}

#[test]
fn calls_on_a_streaming_connection_close_it_but_oneway_calls_are_served() {
    let gw = Gateway::start(&[]);
    let mut witness = Raw::connect(&gw.consumer);
    let mut sub = Raw::connect(&gw.consumer);
    sub.call(json!({"method": "io.qmipc.Gateway.Subscribe", "parameters": {"topics": ["t"]}, "more": true}));
    // A oneway publish on the streaming connection is carried out, and the
    // subscription delivers it.
    sub.call(json!({"method": "io.qmipc.Gateway.Publish", "parameters": {"topic": "t", "value": {"v": 7}}, "oneway": true}));
    let sample = sub.recv().unwrap();
    assert_eq!(sample["parameters"]["sample"]["value"]["v"], 7);
    assert_eq!(sample["continues"], true);
    // A call that expects a reply would interleave with the stream.
    sub.call(json!({"method": "org.varlink.service.GetInfo"}));
    sub.expect_closed();
    assert_still_serving(&mut witness);
}

#[test]
fn upgrade_is_refused() {
    let gw = Gateway::start(&[]);
    let reply = error_of(
        &gw,
        json!({"method": "org.varlink.service.GetInfo", "upgrade": true}),
    );
    assert_eq!(reply["error"], "org.varlink.service.InvalidParameter");
    assert_eq!(reply["parameters"]["parameter"], "upgrade");
}
