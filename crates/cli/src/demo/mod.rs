//! The qm IPC example's demo: an ASIL-side provider inside the gateway, a QM-side
//! client, and `qm-ipc demo`, which runs both with a gateway on temporary
//! sockets.

pub mod client;
pub mod provider;

use clap::Args;
use qm_ipc_server::config::{CONSUMER, PROVIDER};
use qm_ipc_server::{Gateway, Limits, Listener, Notifier};
use serde::{Deserialize, Serialize};

use crate::commands::{termination, CommandError};

/// A `vehicle.speed` value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Speed {
    pub kmh: f64,
}

/// A `demo.time` value: the client's wall-clock time, HH:MM:SS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Time {
    pub time: String,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Stop after N round trips; 0 runs until interrupted.
    #[arg(long, default_value_t = 10, value_name = "N")]
    count: u64,
    /// Milliseconds between two round trips.
    #[arg(long, default_value_t = 1000, value_name = "MS", value_parser = crate::commands::range::<u64>(1, 3_600_000))]
    interval_ms: u64,
}

pub async fn run(args: DemoArgs) -> Result<(), CommandError> {
    let dir = tempfile::Builder::new().prefix("qm-ipc-demo.").tempdir()?;
    let consumer_path = dir.path().join("ipc.socket");
    let listeners = vec![
        Listener::bind(CONSUMER, &consumer_path).map_err(qm_ipc_server::StartError::from)?,
        Listener::bind(PROVIDER, &dir.path().join("provider.socket"))
            .map_err(qm_ipc_server::StartError::from)?,
    ];
    let gateway = Gateway::new(listeners, Limits::default(), Notifier::disabled());
    println!(
        "qm-ipc demo: the qm IPC example's ASIL-to-QM system on temporary sockets in {}",
        dir.path().display()
    );
    println!(
        "  ASIL side: gateway + demo provider (publishes {} at 10 Hz, logs the client's time)",
        provider::SPEED_TOPIC
    );
    println!(
        "  QM side:   client (publishes the time to {} every {} ms, reads {})",
        provider::TIME_TOPIC,
        args.interval_ms,
        provider::SPEED_TOPIC
    );
    let handle = gateway.handle();
    tokio::spawn(async move {
        if let Err(e) = provider::run(handle, PROVIDER).await {
            tracing::debug!("demo provider stopped: {e}");
        }
    });
    let client_args = client::ClientArgs {
        count: args.count,
        interval_ms: args.interval_ms,
        max_backoff_ms: 1000,
    };
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let client = tokio::spawn(async move {
        let result = client::run(&consumer_path, &client_args).await;
        let _ = done_tx.send(());
        result
    });
    gateway
        .run(async {
            tokio::select! {
                _ = done_rx => {}
                _ = termination() => {}
            }
        })
        .await?;
    if client.is_finished() {
        if let Ok(result) = client.await {
            result?;
        }
    } else {
        client.abort();
    }
    Ok(())
}
