//! The built-in demo provider (`qm-ipc serve --demo`), inside the gateway:
//! the ASIL side of the qm IPC example's demo where there is no ASIL
//! partition to run a service in (QM-to-QM, the host runtime). The
//! ASIL-to-QM deployment runs the demo service instead
//! (`qm-ipc demo-service`, [`super::service`]), which also serves the
//! `io.qmipc.Demo` interface. This one publishes `vehicle.speed` at 10 Hz
//! and logs every time value the QM client publishes, with the exact line
//! the qm IPC example's server prints.

use std::time::Duration;

use qm_ipc_client::{ClientError, GatewayClient};
use qm_ipc_server::GatewayHandle;
use serde_json::{json, Value};

pub const SPEED_TOPIC: &str = "vehicle.speed";
pub const TIME_TOPIC: &str = "demo.time";
pub const SPEED_PERIOD: Duration = Duration::from_millis(100);

/// A simulated speed in km/h: a slow wave between 20 and 100.
pub fn speed_at(tick: u64) -> f64 {
    let kmh = 60.0 + 40.0 * (tick as f64 / 50.0).sin();
    (kmh * 10.0).round() / 10.0
}

/// Serves until the gateway closes the provider's connections.
pub async fn run(gateway: GatewayHandle, listener: &str) -> Result<(), ClientError> {
    let mut publisher = GatewayClient::from_stream(gateway.connect_local(listener)?);
    let mut times = GatewayClient::from_stream(gateway.connect_local(listener)?)
        .subscribe(&[TIME_TOPIC])
        .await?;
    tracing::info!("demo provider: publishing {SPEED_TOPIC} at 10 Hz");
    let mut ticker = tokio::time::interval(SPEED_PERIOD);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut tick = 0u64;
    let mut time_log = TimeLog::default();
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                publisher.publish(SPEED_TOPIC, json!({ "kmh": speed_at(tick) })).await?;
                tick += 1;
            }
            sample = times.next() => {
                let sample = sample?;
                if let Some(line) = time_log.line(&sample.value) {
                    println!("{line}");
                }
            }
        }
    }
}

/// The line the qm IPC example's server prints for each time it receives,
/// made safe for a log: the value comes from QM, so it is cut to
/// [`MAX_SHOWN`] characters with control characters escaped (no forged
/// lines, no `<0>` priority prefix, no terminal escapes), and at most
/// [`LINES_PER_SECOND`] lines a second are printed, with a count of those
/// left out.
#[derive(Default)]
pub struct TimeLog {
    window: Option<std::time::Instant>,
    printed: u32,
    suppressed: u64,
}

const MAX_SHOWN: usize = 64;
const LINES_PER_SECOND: u32 = 10;

impl TimeLog {
    pub fn line(&mut self, value: &Value) -> Option<String> {
        let now = std::time::Instant::now();
        if self
            .window
            .is_none_or(|start| now.duration_since(start) >= std::time::Duration::from_secs(1))
        {
            self.window = Some(now);
            self.printed = 0;
        }
        if self.printed >= LINES_PER_SECOND {
            self.suppressed += 1;
            return None;
        }
        self.printed += 1;
        // `{"time": "12:00:00"}`; anything else is shown as it came.
        let text = match value.get("time") {
            Some(Value::String(s)) => s.clone(),
            _ => value.to_string(),
        };
        let mut shown: String = text
            .chars()
            .take(MAX_SHOWN)
            .flat_map(char::escape_default)
            .collect();
        if text.chars().count() > MAX_SHOWN {
            shown.push_str("...");
        }
        let suppressed = std::mem::take(&mut self.suppressed);
        Some(match suppressed {
            0 => format!("Current time received from client is: {shown}"),
            n => format!("Current time received from client is: {shown} ({n} more not shown)"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: a QM client's value was printed as it came (forged
    /// lines, `<0>` prefixes, terminal escapes, 64 KB per line).
    #[test]
    fn the_time_line_is_escaped_cut_and_rate_limited() {
        let mut log = TimeLog::default();
        assert_eq!(
            log.line(&json!({"time": "12:00:00"})).unwrap(),
            "Current time received from client is: 12:00:00"
        );
        let hostile = log
            .line(&json!({
                "time": "12:00\n<0>EMERG\u{1b}[31m".to_owned() + &"x".repeat(70_000)
            }))
            .unwrap();
        assert!(
            !hostile.contains('\n') && !hostile.contains('\u{1b}'),
            "{hostile}"
        );
        assert!(hostile.contains("\\n<0>EMERG"), "{hostile}");
        assert!(hostile.len() < 400, "{} bytes", hostile.len());
        let printed = (0..100).filter(|_| log.line(&json!("t")).is_some()).count();
        assert_eq!(printed as u32, LINES_PER_SECOND - 2);
    }
}
