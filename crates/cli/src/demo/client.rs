//! The qm IPC example's demo client (`qm-ipc client`), the QM side: once a second it
//! publishes the current time to `demo.time` and prints the latest
//! `vehicle.speed`. Written with the client library's `Session`, which
//! reconnects with capped exponential backoff and jitter and subscribes
//! again; it never exits because of a lost connection.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use qm_ipc_client::{Backoff, ClientError, Sample, Session};

use super::provider::{SPEED_TOPIC, TIME_TOPIC};
use super::{Speed, Time};
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
    #[arg(long, default_value_t = 1000, value_name = "MS", value_parser = crate::commands::range::<u64>(1, 3_600_000))]
    pub interval_ms: u64,
    /// Longest wait between two reconnection attempts, in milliseconds.
    #[arg(long, default_value_t = 5000, value_name = "MS", value_parser = crate::commands::range::<u64>(100, 3_600_000))]
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

/// Runs until `count` round trips are done (forever for 0). The session
/// reconnects by itself; this loop only says what happened.
pub async fn run(path: &Path, args: &ClientArgs) -> Result<(), CommandError> {
    let max_backoff = Duration::from_millis(args.max_backoff_ms.max(100));
    let session = Session::builder(path)
        .timeout(ACK_TIMEOUT)
        .reconnect_backoff(Duration::from_millis(100), max_backoff)
        .build();
    let mut speeds = session.subscribe::<Speed>([SPEED_TOPIC])?;
    let mut backoff = Backoff::new(Duration::from_millis(100), max_backoff);
    let mut connected = false;
    let announce = |connected: &mut bool| {
        if !*connected {
            *connected = true;
            println!(
                "client: connected to {}, subscribed to {SPEED_TOPIC}",
                path.display()
            );
        }
    };
    let mut latest: Option<Sample<Speed>> = None;
    let mut done = 0u64;
    // The first publish comes one interval after starting, by when the
    // subscription has delivered the current speed.
    let period = Duration::from_millis(args.interval_ms.max(1));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            item = speeds.next() => match item {
                Some(Ok(sample)) => {
                    announce(&mut connected);
                    latest = Some(sample);
                }
                Some(Err(e)) if e.is_disconnect() => {
                    latest = None;
                    if std::mem::take(&mut connected) {
                        println!("client: connection to {} lost ({e}); reconnecting", path.display());
                    }
                }
                Some(Err(e)) => println!("client: {e}"),
                None => return Err(CommandError::Usage(format!(
                    "the gateway ended the subscription to {SPEED_TOPIC}"
                ))),
            },
            _ = ticker.tick() => {
                let time = clock_time();
                match session.publish(TIME_TOPIC, &Time { time: time.clone() }).await {
                    Ok(seq) => {
                        announce(&mut connected);
                        backoff.reset();
                        done += 1;
                        match &latest {
                            Some(s) => println!(
                                "client: sent time {time} (seq {seq}); {SPEED_TOPIC} = {} km/h (seq {})",
                                s.value.kmh, s.seq
                            ),
                            None => println!("client: sent time {time} (seq {seq}); no {SPEED_TOPIC} yet"),
                        }
                        if args.count != 0 && done >= args.count {
                            return Ok(());
                        }
                    }
                    Err(e) if e.is_disconnect() || matches!(e, ClientError::Timeout(_)) => {
                        connected = false;
                        latest = None;
                        let delay = backoff.next_delay();
                        println!(
                            "client: connection to {} lost ({e}); reconnecting in {} ms",
                            path.display(),
                            delay.as_millis()
                        );
                        tokio::time::sleep(delay).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
}
