//! The built-in demo provider (`qm-ipc serve --demo`): the ASIL side of the
//! seed's demo. It publishes `vehicle.speed` at 10 Hz, serves `demo.echo`,
//! and logs every time value the QM client publishes, with the exact line
//! the seed's server prints.

use std::time::Duration;

use qm_ipc_client::{ClientError, GatewayClient};
use qm_ipc_server::GatewayHandle;
use serde_json::{json, Value};

pub const SPEED_TOPIC: &str = "vehicle.speed";
pub const TIME_TOPIC: &str = "demo.time";
pub const ECHO_SERVICE: &str = "demo.echo";
const SPEED_PERIOD: Duration = Duration::from_millis(100);

/// A simulated speed in km/h: a slow wave between 20 and 100.
fn speed_at(tick: u64) -> f64 {
    let kmh = 60.0 + 40.0 * (tick as f64 / 50.0).sin();
    (kmh * 10.0).round() / 10.0
}

/// Serves until the gateway closes the provider's connections.
pub async fn run(gateway: GatewayHandle, listener: &str) -> Result<(), ClientError> {
    let mut publisher = GatewayClient::from_stream(gateway.connect_local(listener)?);
    let mut times = GatewayClient::from_stream(gateway.connect_local(listener)?)
        .subscribe(&[TIME_TOPIC])
        .await?;
    let mut echo = GatewayClient::from_stream(gateway.connect_local(listener)?)
        .register(&[ECHO_SERVICE])
        .await?;
    tracing::info!("demo provider: publishing {SPEED_TOPIC} at 10 Hz, serving {ECHO_SERVICE}");
    let mut ticker = tokio::time::interval(SPEED_PERIOD);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut tick = 0u64;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                publisher.publish(SPEED_TOPIC, json!(speed_at(tick))).await?;
                tick += 1;
            }
            sample = times.next() => {
                let sample = sample?;
                let time = match &sample.value {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                println!("Current time received from client is: {time}");
            }
            request = echo.next_request() => {
                let request = request?;
                match request.method.as_str() {
                    "Echo" => echo.reply(request.id, request.parameters).await?,
                    other => {
                        echo.reply_error(
                            request.id,
                            "io.qmipc.demo.UnknownMethod",
                            json!({ "method": other }),
                        )
                        .await?
                    }
                }
            }
        }
    }
}
