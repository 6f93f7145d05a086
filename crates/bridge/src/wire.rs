//! What crosses the network, as JSON: a topic's sample with its origin
//! seq and gateway instance, and a service call with its answer. Both
//! bridges of a pair must speak the same version of it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One sample of a gateway topic, as it left its origin gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub topic: String,
    /// The seq the origin gateway gave the value.
    pub seq: u64,
    /// The origin gateway's instance (new at every gateway start), when
    /// the bridge knew it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Updates the sending bridge's own subscription missed just before
    /// this one (already visible as the gap in seq; for the record).
    #[serde(default)]
    pub dropped: u64,
    #[serde(default)]
    pub timestamp_us: u64,
    pub value: Value,
}

/// A service call across: the parameters and how long the caller waits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRequest {
    pub parameters: Map<String, Value>,
    pub timeout_ms: u64,
}

/// The answer: the reply's parameters, or a varlink error by its name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallAnswer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub parameters: Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trip_and_defaults() {
        let e = Envelope {
            topic: "vehicle.speed".into(),
            seq: 7,
            instance: Some("ab".into()),
            dropped: 2,
            timestamp_us: 1,
            value: serde_json::json!({"kmh": 3.5}),
        };
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<Envelope>(&text).unwrap(), e);
        let minimal: Envelope =
            serde_json::from_str(r#"{"topic":"a","seq":1,"value":null}"#).unwrap();
        assert_eq!(minimal.instance, None);
        assert!(serde_json::from_str::<Envelope>(r#"{"topic":"a","value":1}"#).is_err());
    }
}
