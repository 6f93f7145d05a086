//! Topics: publish, get, subscribe, ordering and conflation.

mod common;

use std::time::Duration;

use common::{within, Gateway, Raw};
use qm_ipc_client::{ErrorReply, GatewayClient};
use serde_json::json;

const WATCHDOG: Duration = Duration::from_secs(30);

#[test]
fn subscribe_sends_current_value_first_then_every_update_in_order() {
    let gw = Gateway::start(&[]);
    within(WATCHDOG, async {
        let mut publisher = GatewayClient::connect(&gw.provider).await.unwrap();
        assert_eq!(
            publisher
                .publish("vehicle.speed", json!({"v": 10}))
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            publisher
                .publish("vehicle.speed", json!({"v": 20}))
                .await
                .unwrap(),
            2
        );
        let mut sub = GatewayClient::connect(&gw.consumer)
            .await
            .unwrap()
            .subscribe(&["vehicle.*"])
            .await
            .unwrap();
        let first = sub.next().await.unwrap();
        assert_eq!(
            (first.seq, first.value.clone(), first.dropped),
            (2, json!({"v": 20}), 0)
        );
        for i in 3..=200u64 {
            publisher
                .publish("vehicle.speed", json!({"v": i}))
                .await
                .unwrap();
        }
        // A topic created after subscribing matches the pattern too.
        publisher
            .publish("vehicle.gear", json!({"v": "D"}))
            .await
            .unwrap();
        publisher
            .publish("other.topic", json!({"v": 0}))
            .await
            .unwrap();
        for i in 3..=200u64 {
            let s = sub.next().await.unwrap();
            assert_eq!(
                (s.topic.as_str(), s.seq, s.value, s.dropped),
                ("vehicle.speed", i, json!({"v": i}), 0)
            );
        }
        let gear = sub.next().await.unwrap();
        assert_eq!((gear.topic.as_str(), gear.seq), ("vehicle.gear", 1));

        let got = publisher.get("vehicle.speed").await.unwrap();
        assert_eq!((got.seq, got.value), (200, json!({"v": 200})));
        match publisher.get("never.published").await {
            Err(e) => assert_eq!(
                e.remote(),
                Some(&ErrorReply::NoSuchTopic {
                    topic: "never.published".into()
                })
            ),
            Ok(s) => panic!("unexpected sample {s:?}"),
        }
    });
}

#[test]
fn stalled_subscriber_is_conflated_while_a_reading_one_sees_every_update() {
    let gw = Gateway::start(&["--subscription-queue", "8", "--write-timeout-ms", "120000"]);
    // The stalled subscriber: subscribes, then does not read.
    let mut stalled = Raw::connect(&gw.consumer);
    stalled.call(json!({"method": "io.qmipc.Gateway.Subscribe", "parameters": {"topics": ["load"]}, "more": true}));
    const UPDATES: u64 = 20_000;
    within(WATCHDOG, async {
        let mut reader = GatewayClient::connect(&gw.consumer)
            .await
            .unwrap()
            .subscribe(&["load"])
            .await
            .unwrap();
        let mut publisher = GatewayClient::connect(&gw.provider).await.unwrap();
        // Payloads large enough that the stalled socket's kernel buffer fills.
        let pad = "x".repeat(512);
        let publishing = async {
            for i in 1..=UPDATES {
                publisher
                    .publish("load", json!({"i": i, "pad": pad}))
                    .await
                    .unwrap();
            }
        };
        // The publisher runs on the ASIL thread, so it can outpace even a
        // reading subscriber; what the reader sees is exact all the same:
        // in order, every gap counted in `dropped`, ending at the newest.
        // The first sample is the topic's current value, whatever its seq
        // (the publisher may have started before the subscription did).
        let reading = async {
            let mut previous = reader.next().await.unwrap().seq;
            while previous < UPDATES {
                let s = reader.next().await.unwrap();
                assert_eq!(
                    s.seq,
                    previous + 1 + s.dropped,
                    "every update the reader did not get is counted"
                );
                previous = s.seq;
            }
        };
        tokio::join!(publishing, reading);
    });
    // Now read what the stalled subscriber got: in order, every gap
    // accounted for in `dropped`, and the newest value last.
    // Its first sample is the current value when its subscription began.
    let mut previous: Option<u64> = None;
    let mut total_dropped = 0;
    loop {
        let frame = stalled.recv().expect("stalled subscriber still connected");
        let sample = &frame["parameters"]["sample"];
        let seq = sample["seq"].as_u64().unwrap();
        let dropped = sample["dropped"].as_u64().unwrap();
        if let Some(previous) = previous {
            assert_eq!(
                seq - previous - 1,
                dropped,
                "gap before seq {seq} equals dropped"
            );
        }
        total_dropped += dropped;
        previous = Some(seq);
        if seq == UPDATES {
            break;
        }
    }
    assert!(
        total_dropped > 0,
        "a stalled subscriber must have been conflated"
    );
}

#[test]
fn publish_rejects_bad_topic_names_and_the_topic_limit() {
    let gw = Gateway::start(&["--max-topics", "2"]);
    within(WATCHDOG, async {
        let mut c = GatewayClient::connect(&gw.provider).await.unwrap();
        let err = c.publish("bad topic", json!({"v": 1})).await.unwrap_err();
        assert!(
            matches!(err.remote(), Some(ErrorReply::InvalidParameter { parameter, .. }) if parameter == "topic")
        );
        c.publish("a", json!({"v": 1})).await.unwrap();
        c.publish("b", json!({"v": 1})).await.unwrap();
        let err = c.publish("c", json!({"v": 1})).await.unwrap_err();
        assert_eq!(
            err.remote(),
            Some(&ErrorReply::LimitExceeded {
                limit: "max_topics".into(),
                max: 2
            })
        );
        // Existing topics still take updates.
        assert_eq!(c.publish("a", json!({"v": 2})).await.unwrap(), 2);
    });
}

/// A restarted gateway is a new instance: its Get replies and the current
/// values a subscription starts with say so, so a client can tell that
/// retained values were lost and seq began again.
#[test]
fn each_gateway_start_is_a_new_instance() {
    let mut instances = Vec::new();
    for _ in 0..2 {
        let gw = Gateway::start(&[]);
        let mut provider = Raw::connect(&gw.provider);
        provider.call(json!({"method": "io.qmipc.Gateway.Publish", "parameters": {"topic": "t", "value": {"v": 1}}}));
        assert!(provider.recv().is_some());
        let mut get = Raw::connect(&gw.consumer);
        get.call(json!({"method": "io.qmipc.Gateway.Get", "parameters": {"topic": "t"}}));
        let got = get.recv().unwrap()["parameters"]["sample"]["instance"].clone();
        let mut sub = Raw::connect(&gw.consumer);
        sub.call(json!({"method": "io.qmipc.Gateway.Subscribe", "parameters": {"topics": ["t"]}, "more": true}));
        let first = sub.recv().unwrap()["parameters"]["sample"]["instance"].clone();
        assert_eq!(got, first, "one instance per gateway");
        let id = got.as_str().expect("an instance id").to_owned();
        assert_eq!(id.len(), 32, "{id}");
        instances.push(id);
    }
    assert_ne!(instances[0], instances[1], "a new instance at each start");
}
