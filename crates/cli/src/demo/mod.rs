//! The qm IPC example's demo: the ASIL side's demo service
//! (`qm-ipc demo-service`: a varlink service behind the gateway and a
//! publisher on its provider socket), the built-in provider of `serve
//! --demo`, a QM-side client, and `qm-ipc demo`, which runs gateway, demo
//! service and client on temporary sockets.

pub mod client;
pub mod provider;
pub mod service;

use clap::Args;
use qm_ipc_deploy::generate::{demo_service_entry, DEMO_POLICY};
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
    let provider_path = dir.path().join("provider.socket");
    let service_path = dir.path().join("io.qmipc.Demo.socket");
    let listeners = vec![
        Listener::bind(CONSUMER, &consumer_path).map_err(qm_ipc_server::StartError::from)?,
        Listener::bind(PROVIDER, &provider_path).map_err(qm_ipc_server::StartError::from)?,
    ];
    // The deployment's own files, as `qm-ipc generate --demo` writes them,
    // with the service's socket in the temporary directory.
    let policy_path = dir.path().join("policy.toml");
    std::fs::write(&policy_path, DEMO_POLICY)?;
    let services_path = dir.path().join("services.toml");
    std::fs::write(
        &services_path,
        demo_service_entry(&service_path.display().to_string()),
    )?;
    let mut gateway = Gateway::new(listeners, Limits::default(), Notifier::disabled());
    gateway.load_policy(&policy_path)?;
    gateway.load_services(&services_path)?;
    let service_listener = tokio::net::UnixListener::bind(&service_path)?;
    println!(
        "qm-ipc demo: the qm IPC example's ASIL-to-QM system on temporary sockets in {}",
        dir.path().display()
    );
    println!(
        "  ASIL side: gateway; demo service {} on its own socket behind it, which publishes {} at 10 Hz and logs the client's time",
        service::INTERFACE,
        provider::SPEED_TOPIC
    );
    println!(
        "  QM side:   client (calls {}.Echo through the gateway, publishes the time to {} every {} ms, reads {})",
        service::INTERFACE,
        provider::TIME_TOPIC,
        args.interval_ms,
        provider::SPEED_TOPIC
    );
    tokio::spawn(async move {
        if let Err(e) = service::run_on(service_listener, &provider_path).await {
            println!("demo service stopped: {e}");
        }
    });
    let client_args = client::ClientArgs {
        count: args.count,
        interval_ms: args.interval_ms,
        max_backoff_ms: 1000,
    };
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let client = tokio::spawn(async move {
        let result = async {
            echo_through_gateway(&consumer_path).await?;
            client::run(&consumer_path, &client_args).await
        }
        .await;
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

/// The QM side calls the ASIL service through the gateway, as
/// `qm-ipc call io.qmipc.Demo.Echo '{"text": "hello from QM"}'` does.
async fn echo_through_gateway(consumer: &std::path::Path) -> Result<(), CommandError> {
    let session = qm_ipc_client::Session::new(consumer);
    let method = format!("{}.Echo", service::INTERFACE);
    let parameters = serde_json::json!({ "text": "hello from QM" });
    let reply: serde_json::Value = session.call(&method, &parameters).await?;
    println!("client: {method} {parameters} -> {reply}");
    Ok(())
}
