//! `qm-ipc monitor [PATTERN]...`: every publish, call, reply and service
//! error the caller's policy lets it see, as they happen, with when and
//! who. Bounded at the gateway: a monitor that reads too slowly loses
//! events and each event says how many were lost just before it.

use std::path::PathBuf;

use clap::Args;
use qm_ipc_client::{ClientError, Connection};
use qm_ipc_proto::GATEWAY_INTERFACE;
use serde_json::{json, Value};

use super::{range, socket_or_default, termination, CommandError};

#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// Topic and service names or patterns (`vehicle.*`) [default: *]
    patterns: Vec<String>,
    /// Print each event as one JSON object per line.
    #[arg(long)]
    json: bool,
    /// Stop after this many events (default: run until interrupted).
    #[arg(long, value_name = "N", value_parser = range::<u64>(1, u64::MAX))]
    count: Option<u64>,
}

pub async fn monitor(socket: Option<PathBuf>, args: MonitorArgs) -> Result<(), CommandError> {
    let path = socket_or_default(socket);
    let patterns = match args.patterns.is_empty() {
        true => vec!["*".to_owned()],
        false => args.patterns.clone(),
    };
    let mut connection = Connection::connect(&path).await?;
    connection
        .call_more(
            &format!("{GATEWAY_INTERFACE}.Monitor"),
            json!({ "patterns": patterns }),
        )
        .await?;
    let mut seen = 0u64;
    let stop = termination();
    tokio::pin!(stop);
    while args.count.is_none_or(|count| seen < count) {
        let reply = tokio::select! {
            reply = connection.recv() => reply?,
            _ = &mut stop => return Ok(()),
        };
        let mut parameters = reply.into_result().map_err(ClientError::Remote)?;
        let event = parameters.remove("event").unwrap_or(Value::Null);
        match args.json {
            true => println!("{event}"),
            false => println!("{}", render(&event)),
        }
        seen += 1;
    }
    Ok(())
}

/// `2026-11-29T03:12:08.277469Z publish vehicle.speed seq 42 by provider
/// pid=7 uid=0: {"kmh":50}`, and a note of the events lost before it.
fn render(event: &Value) -> String {
    let text = |key: &str| event[key].as_str().unwrap_or("");
    let mut line = format!(
        "{} {} {} ",
        utc(event["timestamp_us"].as_u64().unwrap_or(0)),
        text("kind"),
        text("name"),
    );
    match text("kind") {
        "publish" => line.push_str(&format!("seq {}", event["seq"])),
        "call" => line.push_str(&format!("{} call {}", text("method"), event["seq"])),
        "error" => line.push_str(&format!("call {} {}", event["seq"], text("error"))),
        _ => line.push_str(&format!("call {}", event["seq"])),
    }
    line.push_str(&format!(" by {}", text("peer")));
    if let Some(value) = event.get("value").filter(|v| !v.is_null()) {
        line.push_str(&format!(": {value}"));
    }
    if let Some(dropped) = event["dropped"].as_u64().filter(|d| *d > 0) {
        line.push_str(&format!(" ({dropped} events lost before this one)"));
    }
    line
}

/// Microseconds since the epoch as RFC 3339 UTC (proleptic Gregorian).
fn utc(us: u64) -> String {
    let (secs, micros) = (us / 1_000_000, us % 1_000_000);
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(utc(951_782_400_000_001), "2000-02-29T00:00:00.000001Z");
        assert_eq!(utc(1_795_923_128_277_469), "2026-11-29T03:32:08.277469Z");
    }

    #[test]
    fn an_event_is_one_line_with_who_and_what_was_lost() {
        let event = json!({
            "kind": "publish", "timestamp_us": 0, "peer": "provider pid=7 uid=0",
            "name": "vehicle.speed", "seq": 42, "value": {"kmh": 50}, "dropped": 3,
        });
        assert_eq!(
            render(&event),
            "1970-01-01T00:00:00.000000Z publish vehicle.speed seq 42 by provider pid=7 uid=0: \
             {\"kmh\":50} (3 events lost before this one)"
        );
        let event = json!({
            "kind": "call", "timestamp_us": 0, "peer": "consumer uid=1000",
            "name": "io.qmipc.Demo", "seq": 5, "method": "Echo", "dropped": 0,
        });
        assert_eq!(
            render(&event),
            "1970-01-01T00:00:00.000000Z call io.qmipc.Demo Echo call 5 by consumer uid=1000"
        );
    }
}
