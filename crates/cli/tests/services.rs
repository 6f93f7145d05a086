//! Calls to an ASIL service behind the gateway, in the fast tier: the
//! round trip and the service's own errors, a service that goes away or
//! never answers, and the old provider methods, which are gone.

mod common;

use std::time::Duration;

use common::{gateway_with_service, within, Raw};
use qm_ipc_client::{ErrorReply, Session};
use serde_json::{json, Value};

const WATCHDOG: Duration = Duration::from_secs(30);

fn session(gw: &common::Gateway) -> Session {
    Session::builder(&gw.consumer)
        .timeout(Duration::from_secs(20))
        .build()
}

#[test]
fn call_round_trip_and_service_errors() {
    let (gw, _service) = gateway_with_service(&[], "");
    within(WATCHDOG, async {
        let s = session(&gw);
        let echoed: Value = s
            .call("com.example.Test.Echo", &json!({"text": "hi"}))
            .await
            .unwrap();
        assert_eq!(echoed, json!({"text": "hi"}));
        let err = s
            .call::<Value>("com.example.Test.Echo", &json!({"text": "refuse"}))
            .await
            .unwrap_err();
        assert_eq!(
            err.remote().map(ErrorReply::name).as_deref(),
            Some("com.example.Test.Refused"),
            "{err}"
        );
        let err = s
            .call::<Value>("com.example.Nobody.X", &json!({}))
            .await
            .unwrap_err();
        assert!(
            matches!(err.remote(), Some(ErrorReply::InterfaceNotFound { interface }) if interface == "com.example.Nobody"),
            "{err}"
        );
    });
}

/// A service that goes away mid-call fails the call at once, with
/// ServiceUnavailable, not at the call's deadline.
#[test]
fn a_service_that_goes_away_fails_its_calls_in_flight_at_once() {
    // The call's deadline is beyond the watchdog: only the immediate
    // failure lets this test pass.
    let (gw, mut service) = gateway_with_service(&["--call-timeout-ms", "120000"], "");
    let mut caller = Raw::connect(&gw.consumer);
    caller.call(json!({"method": "com.example.Test.Hang"}));
    service.wait_hung(1);
    service.stop();
    let reply = caller.recv().expect("an answer");
    assert_eq!(
        reply["error"], "io.qmipc.Gateway.ServiceUnavailable",
        "{reply}"
    );
    assert_eq!(reply["parameters"]["service"], "com.example.Test");
}

/// A service that never answers costs its caller the call's deadline and
/// a Timeout; the connection it hung on is not reused, so the next call
/// gets its own answer and never the late one.
#[test]
fn a_silent_service_gives_timeout_and_the_next_call_its_own_answer() {
    let (gw, service) = gateway_with_service(&["--call-timeout-ms", "200"], "");
    let mut caller = Raw::connect(&gw.consumer);
    caller.call(json!({"method": "com.example.Test.Hang"}));
    let reply = caller.recv().expect("an answer");
    assert_eq!(reply["error"], "io.qmipc.Gateway.Timeout", "{reply}");
    assert_eq!(
        reply["parameters"],
        json!({"service": "com.example.Test", "timeout_ms": 200})
    );
    assert_eq!(service.hung.load(std::sync::atomic::Ordering::SeqCst), 1);
    caller.call(json!({"method": "com.example.Test.Echo", "parameters": {"text": "now"}}));
    let reply = caller.recv().expect("an answer");
    assert_eq!(reply["parameters"], json!({"text": "now"}), "{reply}");
}

/// Register, Reply and Call were the gateway's own way to serve: a
/// provider connection streamed requests and answered them. They are
/// gone: an ASIL service is a varlink server of its own behind the
/// gateway. Each is answered MethodNotFound, on either socket, and the
/// connection goes on.
#[test]
fn the_old_provider_methods_are_not_found() {
    let (gw, _service) = gateway_with_service(&[], "");
    for socket in [&gw.consumer, &gw.provider] {
        let mut raw = Raw::connect(socket);
        for (method, parameters, more) in [
            ("Register", json!({"services": ["com.example.Test"]}), true),
            ("Reply", json!({"id": 1, "result": {}}), false),
            (
                "Call",
                json!({"service": "com.example.Test", "method": "Echo", "parameters": {"text": "x"}}),
                false,
            ),
        ] {
            let method = format!("io.qmipc.Gateway.{method}");
            raw.call(json!({"method": method, "parameters": parameters, "more": more}));
            let reply = raw.recv().expect("an answer");
            assert_eq!(
                reply["error"], "org.varlink.service.MethodNotFound",
                "{reply}"
            );
            assert_eq!(reply["parameters"]["method"], method.as_str());
        }
        raw.call(json!({"method": "com.example.Test.Echo", "parameters": {"text": "still here"}}));
        assert_eq!(
            raw.recv().expect("an answer")["parameters"]["text"],
            "still here"
        );
    }
}
