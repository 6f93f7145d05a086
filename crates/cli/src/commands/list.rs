//! `qm-ipc list`: the topics and services there are, as far as the
//! caller's policy lets it see them (its `list` grant, then its subscribe
//! and call grants name by name).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use qm_ipc_client::Connection;
use qm_ipc_proto::GATEWAY_INTERFACE;
use serde_json::{json, Value};

use super::{range, socket_or_default, CommandError};

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print the gateway's reply as JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Give up when the gateway has not answered within this many
    /// milliseconds.
    #[arg(long, default_value_t = 10_000, value_name = "MS", value_parser = range::<u64>(1, 3_600_000))]
    timeout_ms: u64,
}

pub async fn list(socket: Option<PathBuf>, args: ListArgs) -> Result<(), CommandError> {
    let path = socket_or_default(socket);
    let work = async move {
        let mut connection = Connection::connect(&path).await?;
        connection
            .call(&format!("{GATEWAY_INTERFACE}.List"), json!({}))
            .await
    };
    let reply = tokio::time::timeout(Duration::from_millis(args.timeout_ms), work)
        .await
        .map_err(|_| CommandError::Timeout(args.timeout_ms))??;
    let reply = Value::Object(reply);
    if args.json {
        println!("{reply}");
    } else {
        print!("{}", render(&reply));
    }
    Ok(())
}

/// The reply as text: one line per topic and per service.
fn render(reply: &Value) -> String {
    let items = |key: &str| reply[key].as_array().cloned().unwrap_or_default();
    let (topics, services) = (items("topics"), items("services"));
    let total = |key: &str, shown: usize| reply[key].as_u64().unwrap_or(shown as u64);
    let mut out = format!(
        "topics ({} of {}):\n",
        topics.len(),
        total("topics_total", topics.len())
    );
    let width = topics
        .iter()
        .filter_map(|t| t["topic"].as_str())
        .map(str::len)
        .max()
        .unwrap_or(0);
    for t in &topics {
        out.push_str(&format!(
            "  {:width$}  seq {}  {} B  {} subscribers\n",
            t["topic"].as_str().unwrap_or("?"),
            t["seq"],
            t["bytes"],
            t["subscribers"],
        ));
    }
    out.push_str(&format!(
        "services ({} of {}):\n",
        services.len(),
        total("services_total", services.len())
    ));
    for s in &services {
        out.push_str(&format!(
            "  {} ({})\n",
            s["service"].as_str().unwrap_or("?"),
            s["kind"].as_str().unwrap_or("?")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_names_every_topic_and_service_with_the_totals() {
        let reply = json!({
            "topics": [{"topic": "vehicle.speed", "seq": 7, "bytes": 4, "subscribers": 2}],
            "topics_total": 1,
            "services": [{"service": "io.qmipc.Demo", "kind": "interface"}],
            "services_total": 3,
        });
        assert_eq!(
            render(&reply),
            "topics (1 of 1):\n  vehicle.speed  seq 7  4 B  2 subscribers\n\
             services (1 of 3):\n  io.qmipc.Demo (interface)\n"
        );
    }
}
