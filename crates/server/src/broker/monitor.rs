//! `Monitor`: a connection that sees every publish, call, reply and
//! provider error that its policy lets it see, as they happen, with the
//! peer that did it. Bounded like everything else: an event goes to a
//! monitor with one non-blocking append to its outbox; when the outbox is
//! full the event is lost and counted, and the next event that fits says
//! how many were lost. A monitor never slows the broker.

use qm_ipc_proto::interface::TopicPattern;
use serde_json::{json, Value};

/// A monitoring connection's state.
#[derive(Debug)]
pub struct Monitor {
    pub patterns: Vec<TopicPattern>,
    /// Events lost since the last one queued.
    pub dropped: u64,
}

/// What happened, without the values a monitor does not need to own.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    Publish {
        topic: &'a str,
        seq: u64,
        value_json: &'a str,
    },
    Call {
        service: &'a str,
        method: &'a str,
        id: u64,
    },
    Reply {
        service: &'a str,
        id: u64,
    },
    Error {
        service: &'a str,
        id: u64,
        error: &'a str,
    },
}

impl Event<'_> {
    /// The topic or service the event is about (what patterns match).
    pub fn name(&self) -> &str {
        match self {
            Self::Publish { topic, .. } => topic,
            Self::Call { service, .. }
            | Self::Reply { service, .. }
            | Self::Error { service, .. } => service,
        }
    }

    /// Is it about a topic (else a service)?
    pub fn is_topic(&self) -> bool {
        matches!(self, Self::Publish { .. })
    }

    /// The event as the IDL's `MonitorEvent`.
    pub fn to_json(&self, peer: &str, timestamp_us: u64, dropped: u64) -> Value {
        let mut event = json!({
            "timestamp_us": timestamp_us,
            "peer": peer,
            "name": self.name(),
            "dropped": dropped,
        });
        match *self {
            Self::Publish {
                seq, value_json, ..
            } => {
                event["kind"] = "publish".into();
                event["seq"] = seq.into();
                // The value as it was stored: strict JSON text, an object.
                if let Ok(value) = serde_json::from_str::<Value>(value_json) {
                    event["value"] = value;
                }
            }
            Self::Call { method, id, .. } => {
                event["kind"] = "call".into();
                event["seq"] = id.into();
                event["method"] = method.into();
            }
            Self::Reply { id, .. } => {
                event["kind"] = "reply".into();
                event["seq"] = id.into();
            }
            Self::Error { id, error, .. } => {
                event["kind"] = "error".into();
                event["seq"] = id.into();
                event["error"] = error.into();
            }
        }
        event
    }
}

/// One streamed reply frame carrying `event`, NUL-terminated.
pub fn encode_frame(event: &Value, out: &mut Vec<u8>) {
    let reply = json!({ "parameters": { "event": event }, "continues": true });
    // Serialising a Value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &reply);
    out.push(0);
}
