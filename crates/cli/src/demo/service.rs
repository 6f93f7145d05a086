//! The demo's ASIL side as a real deployment runs it (`qm-ipc
//! demo-service`): a varlink service `io.qmipc.Demo` on its own socket,
//! written with the client library's [`Service`] and served to QM by the
//! gateway behind its policy, and an ordinary client of the gateway's
//! provider socket (a [`Session`]) that publishes `vehicle.speed` at 10 Hz
//! and prints the time the QM client publishes to `demo.time`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use qm_ipc_client::service::{Service, ServiceError};
use qm_ipc_client::Session;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::UnixListener;

use super::provider::{speed_at, TimeLog, SPEED_PERIOD, SPEED_TOPIC, TIME_TOPIC};
use super::Speed;
use crate::commands::{termination, CommandError};

/// The interface the demo service serves, as `GetInterfaceDescription`
/// returns it.
pub const IDL: &str = include_str!("io.qmipc.Demo.varlink");
/// Its name.
pub const INTERFACE: &str = "io.qmipc.Demo";
/// Where the generated deployment puts its socket (ASIL side only).
pub const DEFAULT_SOCKET: &str = "/run/asil/io.qmipc.Demo.socket";

/// Longest wait for the gateway to acknowledge one publish.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Args)]
pub struct DemoServiceArgs {
    /// The service's own socket, used when systemd passes none (socket
    /// activation). The gateway's services file names it.
    #[arg(long, default_value = DEFAULT_SOCKET, value_name = "PATH")]
    service_socket: PathBuf,
    /// The gateway's ASIL-side socket, where the speed is published and
    /// the QM client's time is read [default: /run/qm-ipc/provider.socket
    /// as root].
    #[arg(long, value_name = "PATH")]
    provider_socket: Option<PathBuf>,
}

#[derive(Deserialize)]
struct Echo {
    text: String,
}

#[derive(Serialize)]
struct Echoed {
    text: String,
}

/// The speed last published, as f64 bits (the Speed method reads it).
#[derive(Clone, Default)]
pub struct CurrentSpeed(Arc<AtomicU64>);

impl CurrentSpeed {
    fn set(&self, kmh: f64) {
        self.0.store(kmh.to_bits(), Ordering::Relaxed);
    }
    fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// The `io.qmipc.Demo` service.
pub fn service(speed: CurrentSpeed) -> Result<Service, ServiceError> {
    Ok(Service::new(IDL)?
        .method("Echo", |p: Echo| async move { Ok(Echoed { text: p.text }) })
        .method("Speed", move |_: Value| {
            let kmh = speed.get();
            async move { Ok(Speed { kmh }) }
        }))
}

fn service_error(e: ServiceError) -> CommandError {
    CommandError::Usage(format!("the demo service: {e}"))
}

pub async fn run_command(args: DemoServiceArgs) -> Result<(), CommandError> {
    let provider = args
        .provider_socket
        .unwrap_or_else(qm_ipc_server::config::default_provider_path);
    let speed = CurrentSpeed::default();
    let service = service(speed.clone()).map_err(service_error)?;
    println!(
        "demo service: serving {INTERFACE} (socket-activated, or on {}); publishing {SPEED_TOPIC} through {}",
        args.service_socket.display(),
        provider.display()
    );
    // systemd's socket (activated) or one bound here: callers queue on it
    // from now on, before READY=1.
    let listener = qm_ipc_client::service::listener(&args.service_socket)
        .await
        .map_err(service_error)?;
    let serving = service.serve(listener);
    let notifier = qm_ipc_server::Notifier::from_env()?;
    tokio::select! {
        r = serving => r.map_err(service_error),
        r = publish_and_log(&provider, speed, Some(notifier)) => r,
        _ = termination() => Ok(()),
    }
}

/// Serves the demo service on `listener` (`qm-ipc demo`, which binds it
/// itself) and publishes through `provider`, until either fails.
pub async fn run_on(listener: UnixListener, provider: &Path) -> Result<(), CommandError> {
    let speed = CurrentSpeed::default();
    let service = service(speed.clone()).map_err(service_error)?;
    tokio::select! {
        r = service.serve(listener) => r.map_err(service_error),
        r = publish_and_log(provider, speed, None) => r,
    }
}

/// Publishes `vehicle.speed` at 10 Hz and prints each `demo.time` the QM
/// client publishes, through the gateway's provider socket. A lost gateway
/// is said once and waited for: the session reconnects by itself. The
/// first acknowledged publish sends READY=1 through `notifier`.
async fn publish_and_log(
    provider: &Path,
    speed: CurrentSpeed,
    mut notifier: Option<qm_ipc_server::Notifier>,
) -> Result<(), CommandError> {
    let session = Session::builder(provider)
        .timeout(ACK_TIMEOUT)
        .reconnect_backoff(Duration::from_millis(100), Duration::from_secs(2))
        .build();
    let mut times = session.subscribe::<Value>([TIME_TOPIC])?;
    let mut ticker = tokio::time::interval(SPEED_PERIOD);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut tick = 0u64;
    let mut time_log = TimeLog::default();
    let mut connected = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let kmh = speed_at(tick);
                match session.publish(SPEED_TOPIC, &Speed { kmh }).await {
                    Ok(_) => {
                        speed.set(kmh);
                        tick += 1;
                        if !std::mem::replace(&mut connected, true) {
                            println!("demo service: publishing {SPEED_TOPIC} at 10 Hz");
                        }
                        if let Some(notifier) = notifier.take() {
                            notifier.notify(&[qm_ipc_server::notify::NotifyState::Ready]);
                        }
                    }
                    Err(e) if e.is_disconnect() || matches!(e, qm_ipc_client::ClientError::Timeout(_)) => {
                        if std::mem::take(&mut connected) {
                            println!("demo service: the gateway went away ({e}); reconnecting");
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            sample = times.next() => match sample {
                Some(Ok(sample)) => {
                    if let Some(line) = time_log.line(&sample.value) {
                        println!("{line}");
                    }
                }
                // Restarts and gaps of the subscription; it goes on.
                Some(Err(e)) => tracing::debug!("demo service: {TIME_TOPIC}: {e}"),
                None => return Err(CommandError::Usage(format!(
                    "the gateway ended the subscription to {TIME_TOPIC}"
                ))),
            },
        }
    }
}
