//! Services: Register, Call, Reply, timeouts and provider loss.

mod common;

use std::time::Duration;

use common::{within, Gateway};
use qm_ipc_client::{ErrorReply, GatewayClient, Provider};
use serde_json::json;

const WATCHDOG: Duration = Duration::from_secs(30);

/// A provider of `service` on the provider socket and a caller on the
/// consumer socket.
async fn provider_and_caller(gw: &Gateway, service: &str) -> (Provider, GatewayClient) {
    let provider = GatewayClient::connect(&gw.provider)
        .await
        .unwrap()
        .register(&[service])
        .await
        .unwrap();
    let caller = GatewayClient::connect(&gw.consumer).await.unwrap();
    (provider, caller)
}

#[test]
fn call_round_trip_and_provider_errors() {
    let gw = Gateway::start(&[]);
    within(WATCHDOG, async {
        let mut provider = GatewayClient::connect(&gw.provider)
            .await
            .unwrap()
            .register(&["calc"])
            .await
            .unwrap();
        let serve = async {
            for _ in 0..2 {
                let req = provider.next_request().await.unwrap();
                match req.method.as_str() {
                    "Double" => {
                        let x = req.parameters["x"].as_i64().unwrap();
                        provider.reply(req.id, json!({"y": 2 * x})).await.unwrap();
                    }
                    _ => provider
                        .reply_error(
                            req.id,
                            "com.example.Calc.NoSuchMethod",
                            json!({"m": req.method}),
                        )
                        .await
                        .unwrap(),
                }
            }
        };
        let client = async {
            let mut c = GatewayClient::connect(&gw.consumer).await.unwrap();
            assert_eq!(
                c.call("calc", "Double", json!({"x": 21}), None)
                    .await
                    .unwrap(),
                json!({"y": 42})
            );
            let err = c.call("calc", "Triple", json!({}), None).await.unwrap_err();
            assert_eq!(
                err.remote(),
                Some(&ErrorReply::ServiceError {
                    service: "calc".into(),
                    method: "Triple".into(),
                    error: "com.example.Calc.NoSuchMethod".into(),
                    parameters: json!({"m": "Triple"}),
                })
            );
            let err = c.call("nobody", "X", json!({}), None).await.unwrap_err();
            assert_eq!(
                err.remote(),
                Some(&ErrorReply::ServiceUnavailable {
                    service: "nobody".into()
                })
            );
        };
        tokio::join!(serve, client);
    });
}

#[test]
fn a_second_provider_for_the_same_service_is_refused() {
    let gw = Gateway::start(&[]);
    within(WATCHDOG, async {
        let _first = GatewayClient::connect(&gw.provider)
            .await
            .unwrap()
            .register(&["svc"])
            .await
            .unwrap();
        let err = GatewayClient::connect(&gw.provider)
            .await
            .unwrap()
            .register(&["other", "svc"])
            .await
            .unwrap_err();
        assert_eq!(
            err.remote(),
            Some(&ErrorReply::AlreadyRegistered {
                service: "svc".into()
            })
        );
    });
}

#[test]
fn provider_that_disconnects_fails_in_flight_calls_at_once() {
    let gw = Gateway::start(&[]);
    within(WATCHDOG, async {
        let (mut provider, mut c) = provider_and_caller(&gw, "svc").await;
        // The call waits up to 60 s; the watchdog is 30 s, so only the
        // immediate failure lets this test pass.
        let call = c.call("svc", "Slow", json!({}), Some(60_000));
        let drop_provider = async {
            provider.next_request().await.unwrap();
            drop(provider);
        };
        let (result, ()) = tokio::join!(call, drop_provider);
        assert_eq!(
            result.unwrap_err().remote(),
            Some(&ErrorReply::ServiceUnavailable {
                service: "svc".into()
            })
        );
    });
}

#[test]
fn silent_provider_gives_timeout_and_its_late_reply_is_discarded() {
    let gw = Gateway::start(&[]);
    within(WATCHDOG, async {
        let (mut provider, mut c) = provider_and_caller(&gw, "svc").await;
        let (result, request) = tokio::join!(
            c.call("svc", "Never", json!({}), Some(200)),
            provider.next_request()
        );
        assert_eq!(
            result.unwrap_err().remote(),
            Some(&ErrorReply::Timeout {
                service: "svc".into(),
                timeout_ms: 200
            })
        );
        let request = request.unwrap();
        assert_eq!(request.timeout_ms, 200);
        // The late reply is dropped; the provider and the caller both go on.
        provider.reply(request.id, json!("late")).await.unwrap();
        let (result, next) = tokio::join!(c.call("svc", "Now", json!({}), None), async {
            let next = provider.next_request().await.unwrap();
            provider.reply(next.id, json!("on time")).await.unwrap();
            next
        });
        assert_eq!(next.method, "Now");
        assert_eq!(result.unwrap(), json!("on time"));
        let err = c
            .call("svc", "X", json!({}), Some(120_000))
            .await
            .unwrap_err();
        assert!(
            matches!(err.remote(), Some(ErrorReply::InvalidValue { parameter, .. }) if parameter == "timeout_ms")
        );
    });
}

#[test]
fn demo_echo_service_answers() {
    let gw = Gateway::start(&["--demo"]);
    within(WATCHDOG, async {
        let mut c = GatewayClient::connect(&gw.consumer).await.unwrap();
        let echoed = c
            .call("demo.echo", "Echo", json!({"text": "hello"}), None)
            .await
            .unwrap();
        assert_eq!(echoed, json!({"text": "hello"}));
        let err = c
            .call("demo.echo", "Shout", json!({}), None)
            .await
            .unwrap_err();
        assert!(
            matches!(err.remote(), Some(ErrorReply::ServiceError { error, .. }) if error == "io.qmipc.demo.UnknownMethod")
        );
    });
}
