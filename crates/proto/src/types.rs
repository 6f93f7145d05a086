//! Structured values carried in replies.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One value of a topic (see `type Sample` in the IDL), its value as JSON
/// or decoded into the application's own type `V`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample<V = Value> {
    pub topic: String,
    pub seq: u64,
    pub value: V,
    pub timestamp_us: u64,
    pub dropped: u64,
    /// The gateway instance that holds the value, new at every gateway
    /// start: on `Get` replies and on the current values a subscription
    /// starts with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// For a value a relay (qm-ipc-bridge) brought from another gateway:
    /// the instance of the gateway where it was first published. `None`
    /// for a value published at this gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

impl Sample<Value> {
    /// Decodes the value into `V`, keeping the rest of the sample.
    pub fn decode<V: serde::de::DeserializeOwned>(self) -> Result<Sample<V>, serde_json::Error> {
        Ok(Sample {
            value: serde_json::from_value(self.value)?,
            topic: self.topic,
            seq: self.seq,
            timestamp_us: self.timestamp_us,
            dropped: self.dropped,
            instance: self.instance,
            origin: self.origin,
        })
    }
}

/// `org.varlink.service.GetInfo`'s reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    pub vendor: String,
    pub product: String,
    pub version: String,
    pub url: String,
    pub interfaces: Vec<String>,
}

/// The type a topic is declared with (`Describe`'s reply): the varlink
/// type's full name and the text of the interface that defines it; both
/// `None` for an undeclared topic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicDescription {
    #[serde(default, rename = "type")]
    pub type_name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

/// One connection in [`Stats`] (`type ConnectionStats` in the IDL).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionStats {
    pub id: u64,
    pub peer: String,
    pub state: String,
    pub queued_bytes: u64,
    pub queued_samples: u64,
    pub dropped: u64,
}

/// One account in [`Stats`] (`type AccountStats` in the IDL).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountStats {
    pub account: String,
    pub connections: u64,
    pub subscriptions: u64,
    pub calls: u64,
    pub topics: u64,
    pub retained_bytes: u64,
}

/// `Stats`' reply: the counters of the running gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub instance: String,
    pub connections: u64,
    pub topics: u64,
    pub retained_bytes: u64,
    pub services: Vec<String>,
    pub services_total: u64,
    pub subscriptions: u64,
    pub calls_in_flight: u64,
    pub published: u64,
    pub delivered: u64,
    pub dropped: u64,
    pub limit_hits: std::collections::BTreeMap<String, u64>,
    pub disconnects: std::collections::BTreeMap<String, u64>,
    pub denials: std::collections::BTreeMap<String, u64>,
    pub accounts: Vec<AccountStats>,
    pub accounts_total: u64,
    pub per_connection: Vec<ConnectionStats>,
    /// QM accounts held back by a bound now (served on the held thread).
    /// Zero from a gateway that does not send it (an older one).
    #[serde(default)]
    pub held_accounts: u64,
    /// Connections served on the held thread now.
    #[serde(default)]
    pub held_connections: u64,
    /// Times an account became held.
    #[serde(default)]
    pub holds: u64,
}

/// A sample whose topic and value are already JSON text, so that a gateway
/// can send one published value to many subscribers without serialising it
/// again for each.
#[derive(Debug, Clone, Copy)]
pub struct EncodedSample<'a> {
    /// The topic as a JSON string literal, quotes included.
    pub topic_json: &'a str,
    pub seq: u64,
    pub value_json: &'a str,
    pub timestamp_us: u64,
    pub dropped: u64,
    /// The gateway instance as a JSON string literal, quotes included;
    /// `None` leaves it out.
    pub instance_json: Option<&'a str>,
    /// The origin gateway's instance of a relayed value; `None` leaves it
    /// out.
    pub origin: Option<&'a str>,
}

impl EncodedSample<'_> {
    /// Appends the streaming reply frame `{"parameters":{"sample":{...}},"continues":true}`.
    pub fn encode_reply(&self, out: &mut Vec<u8>, continues: bool) {
        // Numbers with itoa: `write!` goes through the formatting machinery,
        // about 700 of a `Get`'s 11 800 instructions in the gateway.
        let mut number = itoa::Buffer::new();
        out.extend_from_slice(b"{\"parameters\":{\"sample\":{\"topic\":");
        out.extend_from_slice(self.topic_json.as_bytes());
        out.extend_from_slice(b",\"seq\":");
        out.extend_from_slice(number.format(self.seq).as_bytes());
        out.extend_from_slice(b",\"value\":");
        out.extend_from_slice(self.value_json.as_bytes());
        out.extend_from_slice(b",\"timestamp_us\":");
        out.extend_from_slice(number.format(self.timestamp_us).as_bytes());
        out.extend_from_slice(b",\"dropped\":");
        out.extend_from_slice(number.format(self.dropped).as_bytes());
        if let Some(instance) = self.instance_json {
            out.extend_from_slice(b",\"instance\":");
            out.extend_from_slice(instance.as_bytes());
        }
        if let Some(origin) = self.origin {
            out.extend_from_slice(b",\"origin\":");
            let _ = serde_json::to_writer(&mut *out, origin);
        }
        out.extend_from_slice(b"}}");
        if continues {
            out.extend_from_slice(b",\"continues\":true");
        }
        out.extend_from_slice(b"}\0");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Reply;
    use serde_json::json;

    #[test]
    fn encoded_sample_is_a_valid_streaming_reply() {
        let value = json!({"kmh": 42.5, "s": "a\"b"});
        let topic = serde_json::to_string("vehicle.speed").unwrap();
        let value_json = value.to_string();
        let mut out = Vec::new();
        EncodedSample {
            topic_json: &topic,
            seq: 7,
            value_json: &value_json,
            timestamp_us: 11,
            dropped: 2,
            instance_json: Some("\"4f1c\""),
            origin: Some("a3e1"),
        }
        .encode_reply(&mut out, true);
        assert_eq!(out.pop(), Some(0));
        let reply = Reply::parse(&out).unwrap();
        assert!(reply.continues);
        let sample: Sample = serde_json::from_value(reply.parameters["sample"].clone()).unwrap();
        assert_eq!(
            sample,
            Sample {
                topic: "vehicle.speed".into(),
                seq: 7,
                value,
                timestamp_us: 11,
                dropped: 2,
                instance: Some("4f1c".into()),
                origin: Some("a3e1".into()),
            }
        );
        // What the gateway sends is what its IDL declares.
        let idl = crate::idl::Interface::parse(crate::GATEWAY_IDL).unwrap();
        let parameters = Value::Object(reply.parameters);
        for method in ["Subscribe", "Get"] {
            assert_eq!(idl.check_output(method, &parameters), Ok(()), "{method}");
        }
    }
}
