//! The client library's `Session` against the real gateway binary: typed
//! values, decode errors as items, per-call timeouts, many subscriptions on
//! one session, reconnecting after the gateway was killed and started
//! again, and the code of each documented example.

mod common;

use std::time::Duration;

use common::{within, Gateway};
use futures_util::StreamExt;
use qm_ipc_client::{ClientError, ErrorReply, Session};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

const WATCHDOG: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Speed {
    kmh: f64,
}

#[derive(Debug, Deserialize)]
struct Time {
    #[allow(dead_code)]
    time: String,
}

/// The next item of a stream, within the test deadline.
async fn next<T: serde::de::DeserializeOwned + Send + 'static>(
    sub: &mut qm_ipc_client::Subscription<T>,
) -> Result<qm_ipc_proto::Sample<T>, ClientError> {
    tokio::time::timeout(common::DEADLINE, sub.next())
        .await
        .expect("an item within the deadline")
        .expect("the stream goes on")
}

#[test]
fn a_session_connects_on_first_use_and_speaks_typed_values() {
    let dir = tempfile::tempdir().unwrap();
    let consumer = dir.path().join("run/ipc/ipc.socket");
    within(WATCHDOG, async {
        // Made before the gateway exists: nothing happens until a call.
        let session = Session::new(&consumer);
        match session.get::<Speed>("vehicle.speed").await {
            Err(e @ ClientError::Connect { .. }) => assert!(e.is_disconnect()),
            other => panic!("no gateway yet: {other:?}"),
        }
    });
    let gw = Gateway::start_in(dir, &[]);
    within(WATCHDOG, async {
        let session = Session::new(&gw.consumer);
        let seq = session
            .publish("vehicle.speed", &Speed { kmh: 86.4 })
            .await
            .unwrap();
        assert_eq!(seq, 1);
        let got = session.get::<Speed>("vehicle.speed").await.unwrap();
        assert_eq!((got.value, got.seq), (Speed { kmh: 86.4 }, 1));
        let instance = got.instance.clone().expect("Get carries the instance");
        assert_eq!(session.instance().await.unwrap(), instance);
        assert_eq!(session.last_instance(), Some(instance));
        // A value that does not fit the asked type is an error naming the
        // topic, not a panic, and the session goes on.
        match session.get::<Time>("vehicle.speed").await {
            Err(ClientError::Decode { what, .. }) => assert_eq!(what, "vehicle.speed seq 1"),
            other => panic!("{other:?}"),
        }
        match session.get::<Value>("never.published").await {
            Err(ClientError::Remote(ErrorReply::NoSuchTopic { topic })) => {
                assert_eq!(topic, "never.published")
            }
            other => panic!("{other:?}"),
        }
        // Typed replies of the gateway's own methods.
        let info = session.info().await.unwrap();
        assert!(info.interfaces.contains(&"io.qmipc.Gateway".to_owned()));
        let stats = session.stats().await.unwrap();
        assert_eq!(stats.published, 1);
        assert!(session
            .interface_description("io.qmipc.Gateway")
            .await
            .unwrap()
            .contains("method Instance"));
        // Any method by name, typed both ways.
        #[derive(Deserialize)]
        struct Described {
            description: String,
        }
        let d: Described = session
            .call(
                "org.varlink.service.GetInterfaceDescription",
                &json!({"interface": "org.varlink.service"}),
            )
            .await
            .unwrap();
        assert!(d.description.contains("interface org.varlink.service"));
        match session.call::<Value>("io.qmipc.Gateway.Get", &42).await {
            Err(ClientError::Encode { what, .. }) => assert_eq!(what, "io.qmipc.Gateway.Get"),
            other => panic!("parameters must be an object: {other:?}"),
        }
    });
}

#[test]
fn clones_share_one_session_and_calls_from_many_tasks_all_land() {
    let gw = Gateway::start(&[]);
    within(WATCHDOG, async {
        let session = Session::new(&gw.consumer);
        let mut tasks = Vec::new();
        for task in 0..8u64 {
            let session = session.clone();
            tasks.push(tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..25u64 {
                    seqs.push(
                        session
                            .publish("load.counter", &json!({"task": task, "i": i}))
                            .await
                            .unwrap(),
                    );
                }
                seqs
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all.sort_unstable();
        assert_eq!(all, (1..=200).collect::<Vec<u64>>());
    });
}

#[test]
fn a_call_that_gets_no_answer_times_out_and_the_next_call_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("silent.socket");
    within(WATCHDOG, async {
        // A peer that accepts and never answers: what a hung gateway is to
        // a client.
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let accepted = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
                if held.len() == 2 {
                    break;
                }
            }
            held
        });
        let session = Session::builder(&path)
            .timeout(Duration::from_millis(300))
            .build();
        match session.get::<Value>("vehicle.speed").await {
            Err(ClientError::Timeout(t)) => assert_eq!(t, Duration::from_millis(300)),
            other => panic!("{other:?}"),
        }
        // The per-call timeout overrides the session's.
        match session
            .call_within::<Value>(
                "io.qmipc.Gateway.Stats",
                &json!({}),
                Duration::from_millis(50),
            )
            .await
        {
            Err(ClientError::Timeout(t)) => assert_eq!(t, Duration::from_millis(50)),
            other => panic!("{other:?}"),
        }
        // Each timed-out call's connection was dropped: the second call
        // connected again.
        let held = tokio::time::timeout(common::DEADLINE, accepted)
            .await
            .expect("two connections")
            .unwrap();
        assert_eq!(held.len(), 2);
    });
}

#[test]
fn many_subscriptions_on_one_session_each_get_their_topics() {
    let gw = Gateway::start(&[]);
    within(WATCHDOG, async {
        let session = Session::new(&gw.consumer);
        let mut subs = Vec::new();
        for i in 0..16 {
            subs.push(
                session
                    .subscribe::<Speed>([format!("fleet.car{i}")])
                    .unwrap(),
            );
        }
        let publisher = Session::new(&gw.provider);
        for i in 0..16 {
            publisher
                .publish(&format!("fleet.car{i}"), &Speed { kmh: i as f64 })
                .await
                .unwrap();
        }
        for (i, sub) in subs.iter_mut().enumerate() {
            let s = next(sub).await.unwrap();
            assert_eq!((s.topic, s.value.kmh), (format!("fleet.car{i}"), i as f64));
        }
    });
}

#[test]
fn a_value_of_the_wrong_shape_is_an_error_item_and_the_stream_goes_on() {
    let gw = Gateway::start(&[]);
    within(WATCHDOG, async {
        let session = Session::new(&gw.consumer);
        let mut speeds = session.subscribe::<Speed>(["vehicle.speed"]).unwrap();
        let publisher = Session::new(&gw.provider);
        // Subscribed once the first value arrived (as the current value or
        // as an update).
        publisher
            .publish("vehicle.speed", &Speed { kmh: 10.0 })
            .await
            .unwrap();
        assert_eq!(next(&mut speeds).await.unwrap().seq, 1);
        publisher
            .publish("vehicle.speed", &json!({"mph": 50}))
            .await
            .unwrap();
        publisher
            .publish("vehicle.speed", &Speed { kmh: 80.0 })
            .await
            .unwrap();
        match next(&mut speeds).await {
            Err(ClientError::Decode { what, .. }) => assert_eq!(what, "vehicle.speed seq 2"),
            other => panic!("{other:?}"),
        }
        let good = next(&mut speeds).await.unwrap();
        assert_eq!((good.seq, good.value.kmh), (3, 80.0));
    });
}

#[test]
fn a_refused_subscription_says_why_and_ends() {
    let gw = Gateway::start(&[]);
    within(WATCHDOG, async {
        let session = Session::new(&gw.consumer);
        // A bad pattern is refused before anything is sent.
        assert!(matches!(
            session.subscribe::<Value>(["bad pattern"]),
            Err(ClientError::Remote(ErrorReply::InvalidValue { .. }))
        ));
        assert!(session.subscribe::<Value>(Vec::<String>::new()).is_err());
    });
    // The built-in policy does not let QM read ASIL-internal topics.
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[rule]]\nname = \"qm\"\nsocket = \"consumer\"\nallow = { subscribe = [\"vehicle.*\"] }\n",
    )
    .unwrap();
    let gw = Gateway::start(&["--policy", policy.to_str().unwrap()]);
    within(WATCHDOG, async {
        let session = Session::new(&gw.consumer);
        let mut secret = session.subscribe::<Value>(["asil.internal"]).unwrap();
        match next(&mut secret).await {
            Err(ClientError::Remote(ErrorReply::AccessDenied { object, .. })) => {
                assert_eq!(object, "asil.internal")
            }
            other => panic!("{other:?}"),
        }
        let end = tokio::time::timeout(common::DEADLINE, secret.next())
            .await
            .unwrap();
        assert!(end.is_none(), "a refusal ends the stream: {end:?}");
    });
}

/// The gateway killed and started again: the subscription reports the
/// lost connection once, reconnects by itself, reports the restart, and
/// goes on with the new instance's samples (seq from 1 again).
#[test]
fn a_subscription_follows_the_gateway_across_a_kill_and_restart() {
    let mut gw = Gateway::start(&[]);
    let consumer = gw.consumer.clone();
    let provider = gw.provider.clone();
    let rt = common::runtime();
    let session = Session::builder(&consumer)
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .build();
    let mut speeds = rt.block_on(async {
        let mut speeds = session.subscribe::<Speed>(["vehicle.speed"]).unwrap();
        let publisher = Session::new(&provider);
        for kmh in [10.0, 20.0, 30.0] {
            publisher
                .publish("vehicle.speed", &Speed { kmh })
                .await
                .unwrap();
        }
        for seq in 1..=3 {
            // The subscription may start after the first publishes: it
            // then begins with the current value.
            let s = next(&mut speeds).await.unwrap();
            if s.seq == 3 {
                break;
            }
            assert!(s.seq >= seq);
        }
        speeds
    });
    let old_instance = rt.block_on(session.instance()).unwrap();
    gw.proc.signal(libc::SIGKILL);
    gw.proc.wait_exit();
    let dir = std::mem::replace(&mut gw.dir, tempfile::tempdir().unwrap());
    let gw2 = Gateway::start_in(dir, &[]);
    rt.block_on(async {
        tokio::time::timeout(WATCHDOG, async {
            match next(&mut speeds).await {
                Err(e) => assert!(e.is_disconnect(), "first the lost connection: {e}"),
                Ok(s) => panic!("{s:?}"),
            }
            let publisher = Session::new(&gw2.provider);
            // Published until the subscription is back (it reconnects with
            // backoff, on its own time).
            let mut restarted = false;
            loop {
                publisher
                    .publish("vehicle.speed", &Speed { kmh: 99.0 })
                    .await
                    .unwrap();
                match tokio::time::timeout(Duration::from_millis(100), speeds.next()).await {
                    Err(_) => continue,
                    Ok(None) => panic!("the stream ended"),
                    Ok(Some(Err(ClientError::Restarted { previous, current }))) => {
                        assert_eq!(previous, old_instance);
                        assert_ne!(current, old_instance);
                        restarted = true;
                    }
                    Ok(Some(Ok(s))) => {
                        assert!(restarted, "the restart is reported before new samples");
                        assert_eq!(s.value.kmh, 99.0);
                        assert!(
                            s.instance.is_none() || s.instance.as_deref() != Some(&old_instance)
                        );
                        break;
                    }
                    Ok(Some(Err(e))) => panic!("{e}"),
                }
            }
        })
        .await
        .expect("the subscription came back within the watchdog")
    });
    drop(gw2);
}

/// The code of the crate-level and `Session` examples, run.
#[test]
fn the_documented_examples_run() {
    let gw = Gateway::start(&[]);
    std::env::set_var("SOCKET_PATH", &gw.consumer);
    within(WATCHDOG, async {
        let publisher = Session::new(&gw.provider);
        publisher
            .publish("vehicle.speed", &json!({"kmh": 42.0}))
            .await
            .unwrap();
        // Session (and lib.rs): from_env, get.
        let session = Session::from_env();
        assert_eq!(session.path(), gw.consumer.as_path());
        let speed = session.get::<Speed>("vehicle.speed").await.unwrap();
        println!("{} km/h (seq {})", speed.value.kmh, speed.seq);
        // publish
        #[derive(serde::Serialize)]
        struct TimeOut {
            time: String,
        }
        let seq = session
            .publish(
                "demo.time",
                &TimeOut {
                    time: "12:00:00".into(),
                },
            )
            .await
            .unwrap();
        assert_eq!(seq, 1);
        let time = session.get::<Value>("demo.time").await.unwrap();
        assert_eq!(time.value, json!({"time": "12:00:00"}));
        // subscribe, read as a Stream (StreamExt's next, not the
        // inherent one).
        let mut speeds = session.subscribe::<Speed>(["vehicle.speed"]).unwrap();
        if let Some(item) = StreamExt::next(&mut speeds).await {
            match item {
                Ok(s) => assert_eq!(s.value.kmh, 42.0),
                Err(e) => panic!("{e}"),
            }
        }
        publisher
            .publish("vehicle.speed", &json!({"kmh": 43.0}))
            .await
            .unwrap();
        let more: Vec<f64> = speeds
            .by_ref()
            .take(1)
            .map(|item| item.map(|s| s.value.kmh).unwrap_or(f64::NAN))
            .collect()
            .await;
        assert_eq!(more, vec![43.0]);
    });
}

/// A topic declared with a varlink type takes only values of that type;
/// the refusal names the field and the value is neither stored nor sent.
/// Readers learn the type with Describe.
#[test]
fn a_typed_topic_refuses_other_shapes_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let topics = dir.path().join("topics.toml");
    std::fs::write(
        &topics,
        "[[topic]]\nname = \"vehicle.speed\"\ntype = \"com.example.Vehicle.Speed\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("com.example.Vehicle.varlink"),
        "# What the vehicle publishes.\ninterface com.example.Vehicle\n\ntype Speed (kmh: float)\n\nmethod Nop() -> ()\n",
    )
    .unwrap();
    let gw = Gateway::start_in(dir, &["--topics", topics.to_str().unwrap()]);
    within(WATCHDOG, async {
        let session = Session::new(&gw.consumer);
        let mut speeds = session.subscribe::<Speed>(["vehicle.speed"]).unwrap();
        let publisher = Session::new(&gw.provider);
        for (bad, parameter) in [
            (json!({"kmh": "fast"}), "value.kmh"),
            (json!({}), "value.kmh"),
            (json!({"kmh": 1.0, "mph": 1.0}), "value.mph"),
            (json!({"kmh": [1.0]}), "value.kmh"),
        ] {
            match publisher.publish("vehicle.speed", &bad).await {
                Err(ClientError::Remote(ErrorReply::InvalidValue {
                    parameter: p,
                    reason,
                })) => {
                    assert_eq!(p, parameter, "{bad}");
                    assert!(reason.contains("com.example.Vehicle.Speed"), "{reason}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(matches!(
            session.get::<Value>("vehicle.speed").await,
            Err(ClientError::Remote(ErrorReply::NoSuchTopic { .. }))
        ));
        assert_eq!(
            publisher
                .publish("vehicle.speed", &Speed { kmh: 50.0 })
                .await
                .unwrap(),
            1
        );
        // The first thing the subscriber sees is the one good value.
        let s = next(&mut speeds).await.unwrap();
        assert_eq!((s.seq, s.value.kmh), (1, 50.0));
        let described = session.describe("vehicle.speed").await.unwrap();
        assert_eq!(
            described.type_name.as_deref(),
            Some("com.example.Vehicle.Speed")
        );
        assert!(described
            .description
            .unwrap()
            .contains("type Speed (kmh: float)"));
        // Undeclared topics take any value and have no type.
        assert_eq!(
            session.describe("demo.time").await.unwrap(),
            Default::default()
        );
    });
}

/// As systemd runs it: the gateway socket-activated (named fds), killed,
/// and activated again on the same sockets. The subscription made through
/// the library resumes by itself and reports the restart before the new
/// instance's samples.
#[test]
fn a_subscription_resumes_when_a_socket_activated_gateway_is_activated_again() {
    use common::{socket_activated, NotifyReceiver};
    let dir = tempfile::tempdir().unwrap();
    let consumer = dir.path().join("ipc.socket");
    let provider = dir.path().join("provider.socket");
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, common::ALLOW_ALL_POLICY).unwrap();
    let notify = NotifyReceiver::new(dir.path());
    // systemd-socket-activate starts the gateway at the first connection,
    // as systemd does.
    let activate = || {
        socket_activated(
            &[&consumer, &provider],
            Some("consumer:provider"),
            &notify,
            Some(&policy),
        )
    };
    let mut first = activate();
    common::wait_until("the sockets", || consumer.exists() && provider.exists());
    let rt = common::runtime();
    let session = Session::builder(&consumer)
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .build();
    let publisher = Session::new(&provider);
    let mut speeds = rt.block_on(async {
        let mut speeds = session.subscribe::<Speed>(["vehicle.speed"]).unwrap();
        publisher
            .publish("vehicle.speed", &Speed { kmh: 10.0 })
            .await
            .unwrap();
        assert_eq!(next(&mut speeds).await.unwrap().value.kmh, 10.0);
        speeds
    });
    first.signal(libc::SIGKILL);
    first.wait_exit();
    let _second = activate();
    rt.block_on(async {
        tokio::time::timeout(WATCHDOG, async {
            let mut events = Vec::new();
            loop {
                // Refused until the activator has bound the sockets again.
                let _ = publisher
                    .publish("vehicle.speed", &Speed { kmh: 20.0 })
                    .await;
                match tokio::time::timeout(Duration::from_millis(100), speeds.next()).await {
                    Err(_) => continue,
                    Ok(None) => panic!("the stream ended"),
                    Ok(Some(Ok(s))) => {
                        assert_eq!(s.value.kmh, 20.0);
                        break;
                    }
                    Ok(Some(Err(e))) => events.push(e),
                }
            }
            assert!(
                matches!(events.as_slice(), [lost, ClientError::Restarted { .. }] if lost.is_disconnect()),
                "first the lost connection, then the restart: {events:?}"
            );
        })
        .await
        .expect("the subscription resumed within the watchdog")
    });
}

const CLIMATE_IDL: &str = "# The cabin climate.
interface com.example.Climate

method SetTemperature(zone: string, celsius: float) -> (celsius: float)
method Reset() -> ()

error ZoneUnknown (zone: string)
";

/// An ASIL service written with the library's `Service`, behind the real
/// gateway: a QM client calls it with a typed `Session::call`; the
/// service's own errors come through by name; parameters that do not fit
/// the interface are refused at the gateway and never reach the service;
/// a method the service does not implement says so.
#[test]
fn a_rust_service_serves_qm_clients_through_the_gateway() {
    use qm_ipc_client::service::{MethodError, Service};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    #[derive(Deserialize)]
    struct SetTemperature {
        zone: String,
        celsius: f64,
    }
    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Applied {
        celsius: f64,
    }

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("asil/climate.socket");
    let services = dir.path().join("services.toml");
    std::fs::write(
        &services,
        format!(
            "[[service]]\ninterface = \"com.example.Climate\"\nsocket = \"{}\"\n",
            socket.display()
        ),
    )
    .unwrap();
    let gw = Gateway::start_in(dir, &["--services", services.to_str().unwrap()]);
    within(WATCHDOG, async {
        let calls = Arc::new(AtomicU64::new(0));
        let seen = calls.clone();
        let service = Service::new(CLIMATE_IDL).unwrap().method(
            "SetTemperature",
            move |p: SetTemperature| {
                seen.fetch_add(1, Ordering::SeqCst);
                async move {
                    match p.zone.as_str() {
                        "driver" => Ok(Applied {
                            celsius: p.celsius.clamp(16.0, 28.0),
                        }),
                        _ => Err(MethodError::new("ZoneUnknown", json!({"zone": p.zone}))),
                    }
                }
            },
        );
        std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let serving = tokio::spawn(service.serve(listener));

        let qm = Session::new(&gw.consumer);
        let applied: Applied = qm
            .call(
                "com.example.Climate.SetTemperature",
                &json!({"zone": "driver", "celsius": 35.0}),
            )
            .await
            .unwrap();
        assert_eq!(applied, Applied { celsius: 28.0 });
        match qm
            .call::<Applied>(
                "com.example.Climate.SetTemperature",
                &json!({"zone": "roof", "celsius": 20.0}),
            )
            .await
        {
            Err(ClientError::Remote(e)) => {
                assert_eq!(e.name(), "com.example.Climate.ZoneUnknown");
                assert_eq!(e.parameters(), json!({"zone": "roof"}));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // Refused at the gateway, against the service's own description.
        for bad in [
            json!({"zone": "driver", "celsius": "warm"}),
            json!({"zone": "driver"}),
            json!({"zone": "driver", "celsius": 20.0, "fan": 3}),
        ] {
            match qm
                .call::<Value>("com.example.Climate.SetTemperature", &bad)
                .await
            {
                Err(ClientError::Remote(ErrorReply::VarlinkInvalidParameter { .. })) => {}
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "the service never saw them"
        );
        match qm
            .call::<Value>("com.example.Climate.Reset", &json!({}))
            .await
        {
            Err(ClientError::Remote(ErrorReply::MethodNotImplemented { method })) => {
                assert_eq!(method, "com.example.Climate.Reset")
            }
            other => panic!("{other:?}"),
        }
        // GetInfo on the gateway lists the service for this client.
        let info = qm.info().await.unwrap();
        assert!(info.interfaces.contains(&"com.example.Climate".to_owned()));
        serving.abort();
    });
}

/// The service's own answers, without the gateway: what any varlink
/// client (and the gateway's description fetch) sees.
#[test]
fn a_rust_service_answers_the_varlink_service_interface() {
    use qm_ipc_client::service::Service;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("climate.socket");
    within(WATCHDOG, async {
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let serving = tokio::spawn(Service::new(CLIMATE_IDL).unwrap().serve(listener));
        let direct = Session::new(&socket);
        let info = direct.info().await.unwrap();
        assert_eq!(
            info.interfaces,
            vec!["org.varlink.service", "com.example.Climate"]
        );
        assert_eq!(
            direct
                .interface_description("com.example.Climate")
                .await
                .unwrap(),
            CLIMATE_IDL
        );
        match direct
            .call::<Value>("com.example.Climate.Nope", &json!({}))
            .await
        {
            Err(ClientError::Remote(ErrorReply::MethodNotFound { .. })) => {}
            other => panic!("{other:?}"),
        }
        match direct
            .call::<Value>("com.example.Other.X", &json!({}))
            .await
        {
            Err(ClientError::Remote(ErrorReply::InterfaceNotFound { interface })) => {
                assert_eq!(interface, "com.example.Other")
            }
            other => panic!("{other:?}"),
        }
        serving.abort();
        // A method the interface does not declare is refused at start.
        let undeclared = Service::new(CLIMATE_IDL)
            .unwrap()
            .method("Nope", |_: Value| async { Ok(json!({})) })
            .serve_at(dir.path().join("other.socket"))
            .await;
        assert!(
            matches!(&undeclared, Err(qm_ipc_client::service::ServiceError::UndeclaredMethod(m)) if m == "Nope"),
            "{undeclared:?}"
        );
    });
}

#[test]
fn a_subscription_to_a_gateway_that_never_answers_says_so_and_tries_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("silent.socket");
    within(WATCHDOG, async {
        // A peer that accepts and never answers (a hung gateway, or a
        // socket whose service is stuck): the subscription's connect must
        // be bounded by the session's timeout like every call, report the
        // outage, and connect again, never wait silently for ever.
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let (seen, mut accepts) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
                let _ = seen.send(held.len());
            }
        });
        let session = Session::builder(&path)
            .timeout(Duration::from_millis(200))
            .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(20))
            .build();
        let mut sub = session.subscribe::<Value>(["vehicle.speed"]).unwrap();
        match tokio::time::timeout(common::DEADLINE, sub.next()).await {
            Ok(Some(Err(ClientError::Timeout(t)))) => assert_eq!(t, Duration::from_millis(200)),
            other => panic!("expected a timeout item, got {other:?}"),
        }
        // Polled on, it tries again on a new connection (reporting nothing
        // more: the outage was reported once).
        let retried = async {
            while let Some(n) = accepts.recv().await {
                if n >= 2 {
                    return;
                }
            }
        };
        tokio::select! {
            done = tokio::time::timeout(common::DEADLINE, retried) => {
                done.expect("a second connection within the deadline")
            }
            item = sub.next() => panic!("one outage, one item: got {item:?}"),
        }
    });
}

#[test]
fn a_reply_the_peer_sent_unasked_never_answers_the_next_call() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chatty.socket");
    within(WATCHDOG, async {
        // A buggy or hostile peer that answers every Get twice: the second
        // reply, seq 1000 + n, must not be taken as the answer to the
        // session's next call.
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
            let mut gets = 0u64;
            while let Ok((stream, _)) = listener.accept().await {
                let (read, mut write) = stream.into_split();
                let mut read = BufReader::new(read);
                loop {
                    let mut frame = Vec::new();
                    match read.read_until(0, &mut frame).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    frame.pop();
                    let call: Value = serde_json::from_slice(&frame).unwrap();
                    let mut out = Vec::new();
                    let mut reply = |v: Value| {
                        out.extend_from_slice(v.to_string().as_bytes());
                        out.push(0);
                    };
                    let sample = |seq: u64| json!({"parameters": {"sample": {"topic": "t", "seq": seq, "value": {"kmh": 1.0}, "timestamp_us": 0, "dropped": 0}}});
                    if call["method"] == "io.qmipc.Gateway.Instance" {
                        reply(json!({"parameters": {"instance": "one"}}));
                    } else {
                        gets += 1;
                        reply(sample(gets));
                        reply(sample(1000 + gets));
                    }
                    if write.write_all(&out).await.is_err() {
                        break;
                    }
                }
            }
        });
        let session = Session::builder(&path).build();
        let first = session.get::<Speed>("t").await.unwrap();
        assert_eq!(first.seq, 1);
        let second = session.get::<Speed>("t").await.unwrap();
        assert_eq!(second.seq, 2, "the second call got its own answer");
    });
}

/// A topic declared with a type by a reload must not go on serving a value
/// of another shape published before: an ASIL subscriber of the typed
/// topic would be fed exactly what the type exists to keep out.
#[test]
fn a_value_published_before_its_topic_was_typed_is_not_served_after_the_reload() {
    let dir = tempfile::tempdir().unwrap();
    let topics = dir.path().join("topics.toml");
    std::fs::write(&topics, "").unwrap();
    std::fs::write(
        dir.path().join("com.example.Vehicle.varlink"),
        "interface com.example.Vehicle\n\ntype Speed (kmh: float)\n\nmethod Nop() -> ()\n",
    )
    .unwrap();
    let mut gw = Gateway::start_in(dir, &["--topics", topics.to_str().unwrap()]);
    let qm = Session::new(&gw.consumer);
    let asil = Session::new(&gw.provider);
    within(WATCHDOG, async {
        qm.publish("vehicle.speed", &json!({"kmh": "fast"}))
            .await
            .unwrap();
    });
    std::fs::write(
        &topics,
        "[[topic]]\nname = \"vehicle.speed\"\ntype = \"com.example.Vehicle.Speed\"\n",
    )
    .unwrap();
    gw.proc.signal(libc::SIGHUP);
    gw.proc.wait_line("topic types reloaded");
    within(WATCHDOG, async {
        match asil.get::<Value>("vehicle.speed").await {
            Ok(s) => panic!("the untyped value is still served: {:?}", s.value),
            Err(ClientError::Remote(ErrorReply::NoSuchTopic { .. })) => {}
            Err(e) => panic!("{e:?}"),
        }
        let mut sub = asil.subscribe::<Value>(["vehicle.speed"]).unwrap();
        asil.publish("vehicle.speed", &Speed { kmh: 50.0 })
            .await
            .unwrap();
        let first = next(&mut sub).await.unwrap();
        assert_eq!(
            first.value,
            json!({"kmh": 50.0}),
            "the first value is the typed one"
        );
    });
}

/// A monitor sees calls to an ASIL service behind the gateway, and how
/// each ended, as far as its policy lets it call the service.
#[test]
fn a_monitor_sees_calls_to_services_behind_the_gateway() {
    use qm_ipc_client::service::{MethodError, Service};
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("climate.socket");
    std::fs::write(
        dir.path().join("services.toml"),
        format!(
            "[[service]]\ninterface = \"com.example.Climate\"\nsocket = \"{}\"\n",
            socket.display()
        ),
    )
    .unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[rule]]\nname = \"all\"\nallow = { publish = [\"*\"], subscribe = [\"*\"], call = [\"*\"], monitor = true }\n",
    )
    .unwrap();
    let services = dir.path().join("services.toml");
    let gw = Gateway::start_in(
        dir,
        &[
            "--services",
            services.to_str().unwrap(),
            "--policy",
            policy.to_str().unwrap(),
        ],
    );
    let mut monitor = common::monitor_in_place(&gw.provider, &["com.example.*"]);
    within(WATCHDOG, async {
        #[derive(Deserialize)]
        struct SetTemperature {
            zone: String,
        }
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let serving = tokio::spawn(
            Service::new(CLIMATE_IDL)
                .unwrap()
                .method("SetTemperature", |p: SetTemperature| async move {
                    match p.zone.as_str() {
                        "driver" => Ok(json!({"celsius": 21.0})),
                        _ => Err(MethodError::new("ZoneUnknown", json!({"zone": p.zone}))),
                    }
                })
                .serve(listener),
        );
        let qm = Session::new(&gw.consumer);
        let _ = qm
            .call::<Value>(
                "com.example.Climate.SetTemperature",
                &json!({"zone": "driver", "celsius": 21.0}),
            )
            .await
            .unwrap();
        let _ = qm
            .call::<Value>(
                "com.example.Climate.SetTemperature",
                &json!({"zone": "roof", "celsius": 21.0}),
            )
            .await;
        serving.abort();
    });
    let mut events = Vec::new();
    while events.len() < 4 {
        let frame = monitor.recv().expect("a monitor event");
        let event = frame["parameters"]["event"].clone();
        if event["name"] != common::MONITOR_MARKER {
            events.push(event);
        }
    }
    let kinds: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e["kind"].as_str().unwrap(), e["name"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("call", "com.example.Climate"),
            ("reply", "com.example.Climate"),
            ("call", "com.example.Climate"),
            ("error", "com.example.Climate"),
        ],
        "{events:?}"
    );
    assert_eq!(events[0]["method"], "SetTemperature");
    assert_eq!(
        events[0]["seq"], events[1]["seq"],
        "a call and its reply pair"
    );
    assert_eq!(events[3]["error"], "com.example.Climate.ZoneUnknown");
    assert!(events[0]["peer"].as_str().unwrap().starts_with("consumer"));
}

#[test]
fn a_next_given_up_half_way_loses_no_sample_and_repeats_none() {
    // A subscription read inside `select!` against a timer that often
    // wins: every cancelled `next()` must leave its half-read sample with
    // the subscription, so the seq numbers seen, with `dropped`, account
    // for every publish exactly once.
    let gw = Gateway::start(&[]);
    within(WATCHDOG, async {
        let session = Session::new(&gw.consumer);
        let mut sub = session.subscribe::<Speed>(["bench.cancel"]).unwrap();
        let publisher = Session::new(&gw.consumer);
        const PUBLISHES: u64 = 2000;
        // The first value, read before the rest are sent: the subscription
        // is in place, so every later publish is either read or counted.
        publisher
            .publish("bench.cancel", &Speed { kmh: 0.0 })
            .await
            .unwrap();
        let first = next(&mut sub).await.unwrap();
        assert_eq!(first.seq, 1);
        let publishing = tokio::spawn(async move {
            for i in 1..PUBLISHES {
                publisher
                    .publish("bench.cancel", &Speed { kmh: i as f64 })
                    .await
                    .unwrap();
                if i % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        });
        let (mut last, mut accounted, mut cancelled) = (1u64, 1u64, 0u64);
        while last < PUBLISHES {
            tokio::select! {
                item = sub.next() => {
                    let sample = item.expect("the stream goes on").expect("a sample");
                    assert!(sample.seq > last, "seq {} repeated after {last}", sample.seq);
                    assert_eq!(sample.seq - last - 1, sample.dropped, "a gap not counted at seq {}", sample.seq);
                    accounted += 1 + sample.dropped;
                    last = sample.seq;
                }
                _ = tokio::task::yield_now() => cancelled += 1,
            }
        }
        publishing.await.unwrap();
        assert_eq!(accounted, PUBLISHES);
        assert!(
            cancelled > 0,
            "the timer never won: the test proved nothing"
        );
    });
}

#[test]
fn peers_holding_a_services_slots_idle_or_half_sent_lose_them_and_the_next_caller_is_served() {
    // A Rust service with two slots, both taken by hostile peers: one
    // connects and sends nothing, one sends half a call and stops. Both
    // slots must come back (idle timeout, call timeout), so a caller
    // waiting in the backlog is served instead of waiting for ever.
    use qm_ipc_client::service::Service;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("climate.socket");
    within(WATCHDOG, async {
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let serving = tokio::spawn(
            Service::new(CLIMATE_IDL)
                .unwrap()
                .max_connections(2)
                .idle_timeout(Duration::from_millis(300))
                .io_timeout(Duration::from_millis(300))
                .serve(listener),
        );
        let mut idle = tokio::net::UnixStream::connect(&socket).await.unwrap();
        let mut half = tokio::net::UnixStream::connect(&socket).await.unwrap();
        half.write_all(br#"{"method": "org.varlink.service.GetI"#)
            .await
            .unwrap();
        // Both slots are theirs: the caller waits in the backlog...
        let caller = Session::builder(&socket)
            .timeout(Duration::from_secs(20))
            .build();
        let started = tokio::time::Instant::now();
        let info = caller
            .info()
            .await
            .expect("served once the slots came back");
        assert!(info.interfaces.contains(&"com.example.Climate".to_owned()));
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "served before a slot was freed: the hostile peers never held them"
        );
        // ...and the hostile peers were closed, not left half served.
        let mut buf = [0u8; 64];
        assert_eq!(idle.read(&mut buf).await.unwrap(), 0, "idle peer closed");
        assert_eq!(half.read(&mut buf).await.unwrap(), 0, "slow peer closed");
        serving.abort();
    });
}
