//! The subcommands that are not the demo.

pub mod deploy;
pub mod oneshot;
pub mod policy;
pub mod serve;

use std::path::PathBuf;

/// Any failure of a command, printed as `error: ...` with exit status 1.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Client(#[from] qm_ipc_client::ClientError),
    #[error(transparent)]
    Start(#[from] qm_ipc_server::StartError),
    #[error("{0}")]
    Usage(String),
    #[error("no answer from the gateway within {0} ms")]
    Timeout(u64),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Generate(#[from] qm_ipc_deploy::generate::GenerateError),
    #[error(transparent)]
    Lint(#[from] qm_ipc_deploy::lint::LintError),
    /// Lint found problems; the report is already printed.
    #[error("lint findings")]
    Findings(u8),
}

impl CommandError {
    /// The process exit status for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Findings(code) => *code,
            Self::Lint(_) => 2,
            _ => 1,
        }
    }
}

/// The consumer socket to use: the flag or `SOCKET_PATH`, else the default.
pub fn socket_or_default(socket: Option<PathBuf>) -> PathBuf {
    socket.unwrap_or_else(qm_ipc_client::paths::consumer_socket)
}

/// Resolves on SIGTERM or SIGINT.
pub async fn termination() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            tracing::warn!("cannot install signal handlers; stop with SIGKILL");
            std::future::pending::<()>().await
        }
    }
}
