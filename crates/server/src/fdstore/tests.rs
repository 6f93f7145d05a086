//! The store's encoding and validation: what one instance writes the next
//! reads back, and a store that is corrupt, truncated, foreign, oversized
//! or out of the limits is refused with the reason.

use super::*;
use proptest::prelude::*;

fn account(listener: &str) -> AccountState {
    AccountState {
        listener: listener.into(),
        container: ContainerState::Cgroup(7),
    }
}

fn sample_state() -> State {
    State {
        instance: "0123456789abcdef0123456789abcdef".into(),
        topics: vec![
            TopicState {
                topic: "vehicle.speed".into(),
                seq: 42,
                timestamp_us: 1_700_000_000_000_000,
                value: Some(r#"{"kmh":50}"#.into()),
                origin: Some("a3e10123456789abcdef0123456789ab".into()),
                creator: account("provider"),
                retainer: Some(account("provider")),
            },
            TopicState {
                topic: "cabin.temp".into(),
                seq: 3,
                timestamp_us: 0,
                value: None,
                origin: None,
                creator: AccountState {
                    listener: "consumer".into(),
                    container: ContainerState::Label("system_u:system_r:qm_t:s0".into()),
                },
                retainer: None,
            },
        ],
        connections: vec![
            ConnState {
                id: 1,
                listener: "consumer".into(),
                unread: to_hex(b"{\"method\":\"io.qmipc.Gateway.Get\""),
                carried: Carried::Idle,
            },
            ConnState {
                id: 9,
                listener: "consumer".into(),
                unread: String::new(),
                carried: Carried::Streaming {
                    patterns: vec!["vehicle.*".into(), "cabin.temp".into()],
                },
            },
            ConnState {
                id: 12,
                listener: "provider".into(),
                unread: String::new(),
                carried: Carried::Idle,
            },
        ],
    }
}

#[test]
fn a_store_reads_back_as_written() {
    let limits = Limits::default();
    let state = sample_state();
    let bytes = encode(&state);
    assert_eq!(decode(&bytes, &limits), Ok(state.clone()));
    assert_eq!(
        state.connections[0].unread_bytes(),
        b"{\"method\":\"io.qmipc.Gateway.Get\""
    );
}

#[test]
fn a_sealed_memfd_carries_the_store_and_an_unsealed_one_is_refused() {
    let limits = Limits::default();
    let bytes = encode(&sample_state());
    let fd = write_sealed(&bytes).expect("memfd");
    let read = read_sealed(&fd, max_store_bytes(&limits)).expect("sealed memfd reads");
    assert_eq!(read, bytes);
    // Writing to it fails: it is sealed.
    let mut file = std::fs::File::from(fd.try_clone().unwrap());
    assert!(std::io::Write::write_all(&mut file, b"x").is_err());
    // A store that is too large for the limits is refused before it is
    // read.
    assert!(matches!(
        read_sealed(&fd, 10),
        Err(StoreError::TooLarge { max: 10, .. })
    ));
    // A plain file (anyone could have changed it) is not a store.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    std::fs::write(&path, &bytes).unwrap();
    let plain = OwnedFd::from(std::fs::File::open(&path).unwrap());
    assert_eq!(
        read_sealed(&plain, max_store_bytes(&limits)),
        Err(StoreError::NotSealed)
    );
}

#[test]
fn corrupt_truncated_foreign_and_other_versions_are_refused() {
    let limits = Limits::default();
    let bytes = encode(&sample_state());
    // A flipped byte in the body.
    let mut corrupt = bytes.clone();
    let last = corrupt.len() - 5;
    corrupt[last] ^= 0x20;
    assert_eq!(decode(&corrupt, &limits), Err(StoreError::Checksum));
    // Cut short, in the header and in the body.
    assert!(matches!(
        decode(&bytes[..20], &limits),
        Err(StoreError::Truncated { .. })
    ));
    assert!(matches!(
        decode(&bytes[..bytes.len() - 1], &limits),
        Err(StoreError::Truncated { .. })
    ));
    // Something else's data.
    assert_eq!(
        decode(b"\x7fELF\x02\x01\x01\0whatever it is", &limits),
        Err(StoreError::Foreign)
    );
    assert_eq!(decode(b"", &limits), Err(StoreError::Foreign));
    // A version this gateway does not read: a newer one, or version 1,
    // whose connections could carry a provider's services and whose values
    // carry no origin.
    for other in [1, VERSION + 1] {
        let mut stored = bytes.clone();
        stored[8..12].copy_from_slice(&other.to_le_bytes());
        assert_eq!(
            decode(&stored, &limits),
            Err(StoreError::Version { found: other })
        );
    }
    // A body that is not the state, with a right checksum.
    let mut forged = Vec::new();
    let body = br#"{"instance":"x","topics":[],"connections":[],"extra":1}"#;
    forged.extend_from_slice(MAGIC);
    forged.extend_from_slice(&VERSION.to_le_bytes());
    forged.extend_from_slice(&(body.len() as u64).to_le_bytes());
    forged.extend_from_slice(&checksum(body).to_le_bytes());
    forged.extend_from_slice(body);
    assert!(matches!(
        decode(&forged, &limits),
        Err(StoreError::Syntax(_))
    ));
}

#[test]
fn a_store_larger_than_the_limits_allow_is_refused() {
    let limits = Limits {
        max_topics: 1,
        max_retained_bytes: 16,
        max_connections: 1,
        max_provider_connections: 1,
        ..Limits::default()
    };
    let mut bytes = encode(&sample_state());
    bytes.resize(max_store_bytes(&limits) + 1, b' ');
    assert!(matches!(
        decode(&bytes, &limits),
        Err(StoreError::TooLarge { .. })
    ));
}

/// Each field is checked against the limits in force: a valid store of a
/// gateway with larger limits, or a state with a bad field, is refused.
#[test]
fn every_field_is_checked() {
    let limits = Limits::default();
    let refused = |change: &dyn Fn(&mut State), needle: &str| {
        let mut state = sample_state();
        change(&mut state);
        match decode(&encode(&state), &limits) {
            Err(StoreError::Invalid(why)) => {
                assert!(why.contains(needle), "{why:?} does not say {needle:?}")
            }
            other => panic!("expected a refusal naming {needle:?}, got {other:?}"),
        }
    };
    refused(&|s| s.instance = "not hex".into(), "instance");
    refused(&|s| s.topics[0].topic = "".into(), "topic");
    refused(&|s| s.topics[1].topic = "vehicle.speed".into(), "twice");
    refused(&|s| s.topics[0].value = Some("[1,2]".into()), "JSON object");
    refused(
        &|s| s.topics[0].value = Some("{broken".into()),
        "JSON object",
    );
    refused(&|s| s.topics[0].seq = 0, "seq 0");
    refused(&|s| s.topics[0].origin = Some("5f0c".into()), "origin");
    refused(&|s| s.topics[0].origin = Some("z".repeat(32)), "origin");
    refused(
        &|s| s.topics[0].origin = Some("a".repeat(1 << 20)),
        "origin",
    );
    refused(
        &|s| s.topics[1].origin = Some("a3e10123456789abcdef0123456789ab".into()),
        "origin but no value",
    );
    refused(
        &|s| {
            s.topics[0].value = Some(format!(
                r#"{{"x":"{}"}}"#,
                "a".repeat(limits.max_retained_bytes)
            ))
        },
        "max_retained_bytes",
    );
    refused(
        &|s| {
            s.topics = (0..=limits.max_topics)
                .map(|i| TopicState {
                    topic: format!("t{i}"),
                    ..s.topics[1].clone()
                })
                .collect()
        },
        "max_topics",
    );
    refused(&|s| s.connections[1].id = 1, "twice");
    refused(&|s| s.connections[0].listener = "".into(), "listener");
    refused(&|s| s.connections[0].unread = "zz".into(), "hex");
    refused(
        &|s| s.connections[0].unread = "00".repeat(limits.max_frame + 64 * 1024),
        "unread",
    );
    refused(
        &|s| {
            s.connections[1].carried = Carried::Streaming {
                patterns: vec!["bad pattern!".into()],
            }
        },
        "pattern",
    );
    refused(
        &|s| {
            s.connections[1].carried = Carried::Streaming {
                patterns: vec!["a".into(); limits.max_subscription_patterns + 1],
            }
        },
        "patterns",
    );
    refused(
        &|s| {
            s.connections = (0..=(limits.max_connections + limits.max_provider_connections) as u64)
                .map(|id| ConnState {
                    id,
                    ..s.connections[0].clone()
                })
                .collect()
        },
        "connections",
    );
}

fn arb_name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_]{0,8}(\\.[a-z][a-z0-9_]{0,8}){0,2}"
}

fn arb_state() -> impl Strategy<Value = State> {
    let topic = (
        arb_name(),
        1u64..,
        any::<u64>(),
        proptest::option::of(("[a-z]{0,12}", proptest::option::of("[0-9a-f]{32}"))),
    )
        .prop_map(|(topic, seq, timestamp_us, value)| TopicState {
            topic,
            seq,
            timestamp_us,
            origin: value.as_ref().and_then(|(_, origin)| origin.clone()),
            value: value.map(|(v, _)| serde_json::json!({ "v": v }).to_string()),
            creator: account("consumer"),
            retainer: Some(account("provider")),
        });
    let carried = prop_oneof![
        Just(Carried::Idle),
        proptest::collection::vec(arb_name(), 1..4)
            .prop_map(|patterns| Carried::Streaming { patterns }),
    ];
    let conn = (
        any::<u64>(),
        proptest::collection::vec(any::<u8>(), 0..64),
        carried,
    )
        .prop_map(|(id, unread, carried)| ConnState {
            id,
            listener: "consumer".into(),
            unread: to_hex(&unread),
            carried,
        });
    (
        "[0-9a-f]{32}",
        proptest::collection::vec(topic, 0..8),
        proptest::collection::vec(conn, 0..8),
    )
        .prop_map(|(instance, mut topics, mut connections)| {
            topics.sort_by(|a, b| a.topic.cmp(&b.topic));
            topics.dedup_by(|a, b| a.topic == b.topic);
            connections.sort_by_key(|c| c.id);
            connections.dedup_by_key(|c| c.id);
            State {
                instance,
                topics,
                connections,
            }
        })
}

proptest! {
    /// Every valid state reads back as it was written.
    #[test]
    fn valid_states_round_trip(state in arb_state()) {
        let limits = Limits::default();
        prop_assert_eq!(decode(&encode(&state), &limits), Ok(state));
    }

    /// Any change of any byte, and any cut, is refused: never read as a
    /// different state.
    #[test]
    fn damaged_stores_are_refused(
        state in arb_state(),
        at in any::<prop::sample::Index>(),
        flip in 1u8..,
        cut in any::<prop::sample::Index>(),
    ) {
        let limits = Limits::default();
        let bytes = encode(&state);
        let mut damaged = bytes.clone();
        let i = at.index(damaged.len());
        damaged[i] ^= flip;
        if let Ok(read) = decode(&damaged, &limits) {
            prop_assert!(false, "byte {} changed and still read: {:?}", i, read);
        }
        let short = &bytes[..cut.index(bytes.len())];
        prop_assert!(decode(short, &limits).is_err());
    }

    /// Arbitrary bytes never panic and never read as a store.
    #[test]
    fn arbitrary_bytes_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        prop_assert!(decode(&bytes, &Limits::default()).is_err());
    }
}
