//! `qm-ipc-bridge`: carries the configured topics and services between
//! this machine's qm-ipc gateway and other machines over Zenoh.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use qm_ipc_bridge::config::Config;

/// Bridges topics and services between qm-ipc gateways on different
/// machines over Zenoh. Nothing crosses unless the configuration routes it.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The bridge configuration (TOML; see docs/bridge.md).
    #[arg(long, env = "QM_IPC_BRIDGE_CONFIG")]
    config: PathBuf,
    /// Check the configuration (and the Zenoh file it names) and exit.
    #[arg(long)]
    check: bool,
    /// Messages a second taken from the network, samples and calls
    /// together (overrides limits.inbound_rate).
    #[arg(long, value_name = "PER_SECOND", value_parser = clap::value_parser!(u32).range(1..))]
    inbound_rate: Option<u32>,
    /// How many of them at once (overrides limits.inbound_burst).
    #[arg(long, value_name = "MESSAGES", value_parser = clap::value_parser!(u32).range(1..))]
    inbound_burst: Option<u32>,
}

/// A configuration error, as `qm-ipc` says it (sysexits' EX_CONFIG).
const EX_CONFIG: u8 = 78;
/// Zenoh or a socket could not be opened (EX_UNAVAILABLE).
const EX_UNAVAILABLE: u8 = 69;

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("QM_IPC_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,zenoh=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::env::var_os("NO_COLOR").is_none())
        .init();
    let mut config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("qm-ipc-bridge: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    if let Some(rate) = args.inbound_rate {
        config.limits.inbound_rate = rate;
    }
    if let Some(burst) = args.inbound_burst {
        config.limits.inbound_burst = burst;
    }
    if args.check {
        if let Err(e) = zenoh::Config::from_file(&config.zenoh_config) {
            eprintln!(
                "qm-ipc-bridge: {}: {e} (Zenoh's own JSON5 configuration)",
                config.zenoh_config.display()
            );
            return ExitCode::from(EX_CONFIG);
        }
        println!("{}: ok", args.config.display());
        return ExitCode::SUCCESS;
    }
    // Zenoh needs a multi-threaded runtime; two workers are plenty for a
    // bridge, which mostly waits.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("qm-ipc-bridge: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(qm_ipc_bridge::run::run(config, async {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            std::future::pending::<()>().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }));
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qm-ipc-bridge: {e}");
            ExitCode::from(match e {
                qm_ipc_bridge::run::StartError::ZenohConfig { .. } => EX_CONFIG,
                _ => EX_UNAVAILABLE,
            })
        }
    }
}
