//! The qm IPC example's demo client (`qm-ipc client`), the QM side: once a second it
//! publishes the current time to `demo.time` and prints the latest
//! `vehicle.speed`. When the gateway goes away it reconnects with capped
//! exponential backoff and jitter, and subscribes again; it never exits
//! because of a lost connection.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use qm_ipc_client::{Backoff, ClientError, GatewayClient, Sample};
use serde_json::json;

use super::provider::{SPEED_TOPIC, TIME_TOPIC};
use crate::commands::{socket_or_default, termination, CommandError};

/// Longest wait for the gateway to acknowledge one publish.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Args, Clone)]
pub struct ClientArgs {
    /// Stop after N round trips (acknowledged publishes); 0 runs until
    /// interrupted.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub count: u64,
    /// Milliseconds between two publishes.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub interval_ms: u64,
    /// Longest wait between two reconnection attempts, in milliseconds.
    #[arg(long, default_value_t = 5000, value_name = "MS")]
    pub max_backoff_ms: u64,
}

/// The local wall-clock time as HH:MM:SS.
fn clock_time() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as libc::time_t)
        .unwrap_or(0);
    // SAFETY: localtime_r writes only into the provided tm.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = !unsafe { libc::localtime_r(&now, &mut tm) }.is_null();
    if ok {
        format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
    } else {
        let secs = now.rem_euclid(86_400);
        format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
    }
}

pub async fn run_command(socket: Option<PathBuf>, args: ClientArgs) -> Result<(), CommandError> {
    let path = socket_or_default(socket);
    tokio::select! {
        r = run(&path, &args) => r,
        _ = termination() => Ok(()),
    }
}

/// Runs until `count` round trips are done (forever for 0).
pub async fn run(path: &Path, args: &ClientArgs) -> Result<(), CommandError> {
    let mut backoff = Backoff::new(
        Duration::from_millis(100),
        Duration::from_millis(args.max_backoff_ms.max(100)),
    );
    let mut done = 0u64;
    loop {
        match session(path, args, &mut done, &mut backoff).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                let delay = backoff.next_delay();
                println!(
                    "client: connection to {} lost ({e}); reconnecting in {} ms",
                    path.display(),
                    delay.as_millis()
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// One connected period: returns Ok when the round trips are done, Err when
/// the connection is lost.
async fn session(
    path: &Path,
    args: &ClientArgs,
    done: &mut u64,
    backoff: &mut Backoff,
) -> Result<(), ClientError> {
    let mut publisher = GatewayClient::connect(path).await?;
    let mut speeds = GatewayClient::connect(path)
        .await?
        .subscribe(&[SPEED_TOPIC])
        .await?;
    println!(
        "client: connected to {}, subscribed to {SPEED_TOPIC}",
        path.display()
    );
    backoff.reset();
    let mut latest: Option<Sample> = None;
    // The first publish comes one interval after connecting, by when the
    // subscription has delivered the current speed.
    let period = Duration::from_millis(args.interval_ms.max(1));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            sample = speeds.next() => latest = Some(sample?),
            _ = ticker.tick() => {
                let time = clock_time();
                let seq = tokio::time::timeout(ACK_TIMEOUT, publisher.publish(TIME_TOPIC, json!(time)))
                    .await
                    .map_err(|_| ClientError::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no acknowledgement from the gateway",
                    )))??;
                *done += 1;
                match &latest {
                    Some(s) => println!(
                        "client: sent time {time} (seq {seq}); {SPEED_TOPIC} = {} km/h (seq {})",
                        s.value, s.seq
                    ),
                    None => println!("client: sent time {time} (seq {seq}); no {SPEED_TOPIC} yet"),
                }
                if args.count != 0 && *done >= args.count {
                    return Ok(());
                }
            }
        }
    }
}
