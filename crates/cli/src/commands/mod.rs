//! The subcommands that are not the demo.

pub mod deploy;
pub mod docs;
pub mod list;
pub mod monitor;
pub mod oneshot;
pub mod policy;
pub mod serve;

use std::path::PathBuf;

use qm_ipc_proto::ErrorReply;

/// Any failure of a command, printed as `error: ...` (or, under `--json`,
/// as one JSON object on stderr) with the exit status of [`exit`].
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Client(#[from] qm_ipc_client::ClientError),
    #[error(transparent)]
    Start(#[from] qm_ipc_server::StartError),
    /// Input given on the command line or in a local file is malformed
    /// (bad JSON, a policy file with an error at file:line).
    #[error("{0}")]
    Usage(String),
    /// The command line is wrong in a way clap cannot see.
    #[error("{0}")]
    CommandLine(String),
    /// A file named on the command line does not exist or cannot be read.
    #[error("{0}")]
    NoInput(String),
    #[error("no answer from the gateway within {0} ms")]
    Timeout(u64),
    /// `subscribe --timeout-ms MS` got nothing in its time.
    #[error("no sample within {0} ms")]
    NoSample(u64),
    /// `subscribe --count N --timeout-ms MS` reached its time limit first.
    #[error("the time limit ({ms} ms) ran out after {seen} of {count} samples")]
    TimeLimit { ms: u64, seen: u64, count: u64 },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Generate(#[from] qm_ipc_deploy::generate::GenerateError),
    #[error(transparent)]
    Lint(#[from] qm_ipc_deploy::lint::LintError),
    /// Lint found problems, or the policy denies what was asked; the report
    /// is already printed.
    #[error("lint findings")]
    Findings(u8),
}

/// The exit statuses, sysexits(3)-style, so that scripts can branch.
/// `qm-ipc --help` and the man page list them (EXIT STATUS).
pub mod exit {
    /// lint: warnings with --strict; policy explain: the policy denies.
    pub const FINDINGS: u8 = 1;
    /// lint: errors in the checked files.
    pub const LINT_ERRORS: u8 = 2;
    /// The command line is wrong (EX_USAGE).
    pub const USAGE: u8 = 64;
    /// Local input or the request's parameters are malformed (EX_DATAERR).
    pub const DATAERR: u8 = 65;
    /// A file named on the command line is missing or unreadable
    /// (EX_NOINPUT).
    pub const NOINPUT: u8 = 66;
    /// The gateway has no such topic, interface, method or service
    /// (EX_NOUSER: the addressee is unknown).
    pub const NOTFOUND: u8 = 67;
    /// The gateway cannot be reached, or the service behind it is not
    /// available (EX_UNAVAILABLE).
    pub const UNAVAILABLE: u8 = 69;
    /// The gateway could not start: a socket, the notify socket, the ASIL
    /// thread (EX_OSERR).
    pub const OSERR: u8 = 71;
    /// The connection broke mid-way, or writing output failed (EX_IOERR).
    pub const IOERR: u8 = 74;
    /// No answer in time, or a limit of the gateway was reached: try
    /// again later (EX_TEMPFAIL).
    pub const TEMPFAIL: u8 = 75;
    /// The gateway sent something that is not varlink as we know it
    /// (EX_PROTOCOL).
    pub const PROTOCOL: u8 = 76;
    /// The gateway's policy denied the request (EX_NOPERM).
    pub const NOPERM: u8 = 77;
    /// A configuration file of the gateway (policy, services) is wrong
    /// (EX_CONFIG).
    pub const CONFIG: u8 = 78;
    /// The service behind the gateway answered with an error of its own
    /// (beyond sysexits: the call arrived and was answered).
    pub const SERVICE: u8 = 79;

    /// Every status with the word for it: the EXIT STATUS section of
    /// `--help` and of the man page, and the `class` of a JSON error.
    pub const TABLE: &[(u8, &str, &str)] = &[
        (0, "ok", "success"),
        (
            FINDINGS,
            "findings",
            "lint: warnings with --strict; policy explain: the policy denies",
        ),
        (
            LINT_ERRORS,
            "lint-errors",
            "lint: errors in the checked files",
        ),
        (USAGE, "usage", "the command line is wrong"),
        (
            DATAERR,
            "bad-input",
            "malformed input: a JSON argument, a policy file, or parameters the gateway refused",
        ),
        (
            NOINPUT,
            "no-input",
            "a file named on the command line is missing or unreadable",
        ),
        (
            NOTFOUND,
            "not-found",
            "no such topic, interface, method or service at the gateway",
        ),
        (
            UNAVAILABLE,
            "unavailable",
            "cannot connect to the gateway, or the service behind it is unavailable",
        ),
        (
            OSERR,
            "os-error",
            "serve: a socket or the ASIL thread cannot be set up",
        ),
        (IOERR, "io-error", "the connection broke mid-way"),
        (
            TEMPFAIL,
            "temporary",
            "no answer in time, or a limit of the gateway was reached: try again later",
        ),
        (
            PROTOCOL,
            "protocol",
            "the peer does not speak the gateway's varlink",
        ),
        (NOPERM, "denied", "the gateway's policy denied the request"),
        (
            CONFIG,
            "config",
            "serve: the policy or services file is wrong",
        ),
        (
            SERVICE,
            "service-error",
            "the service behind the gateway answered with an error of its own",
        ),
    ];

    /// The word for a status (`class` in JSON errors).
    pub fn class(code: u8) -> &'static str {
        TABLE
            .iter()
            .find(|(c, _, _)| *c == code)
            .map_or("error", |(_, class, _)| class)
    }

    /// The EXIT STATUS text of `--help`.
    pub fn help_text() -> String {
        let mut text = String::from("Exit status:\n");
        for (code, _, meaning) in TABLE {
            text.push_str(&format!("  {code:>3}  {meaning}\n"));
        }
        text
    }
}

/// The exit status of a varlink error the gateway (or a service behind it)
/// sent, by its class.
pub fn remote_exit_code(error: &ErrorReply) -> u8 {
    match error {
        ErrorReply::AccessDenied { .. } => exit::NOPERM,
        ErrorReply::NoSuchTopic { .. }
        | ErrorReply::InterfaceNotFound { .. }
        | ErrorReply::MethodNotFound { .. }
        | ErrorReply::MethodNotImplemented { .. } => exit::NOTFOUND,
        ErrorReply::ServiceUnavailable { .. } => exit::UNAVAILABLE,
        // Try again: the next gateway instance serves the same connection.
        ErrorReply::Timeout { .. }
        | ErrorReply::Restarting { .. }
        | ErrorReply::LimitExceeded { .. } => exit::TEMPFAIL,
        ErrorReply::InvalidValue { .. } | ErrorReply::VarlinkInvalidParameter { .. } => {
            exit::DATAERR
        }
        ErrorReply::ExpectedMore => exit::PROTOCOL,
        // A service's own error, relayed as the service sent it.
        ErrorReply::Other { .. } => exit::SERVICE,
    }
}

impl CommandError {
    /// The process exit status for this failure (see [`exit`]).
    pub fn exit_code(&self) -> u8 {
        use qm_ipc_client::ClientError as C;
        use qm_ipc_server::StartError as S;
        match self {
            Self::Findings(code) => *code,
            Self::Lint(_) => exit::LINT_ERRORS,
            Self::CommandLine(_) => exit::USAGE,
            Self::Usage(_) | Self::Generate(_) => exit::DATAERR,
            Self::NoInput(_) => exit::NOINPUT,
            Self::Timeout(_) | Self::NoSample(_) | Self::TimeLimit { .. } => exit::TEMPFAIL,
            Self::Io(_) => exit::IOERR,
            Self::Client(e) => match e {
                C::Connect { .. } => exit::UNAVAILABLE,
                C::Io(_) | C::Closed => exit::IOERR,
                C::Frame(_) | C::Message(_) | C::UnexpectedReply(_) => exit::PROTOCOL,
                C::Remote(reply) => remote_exit_code(reply),
                C::Timeout(_) => exit::TEMPFAIL,
                // A value of ours that cannot be sent, or one that came
                // back in a shape the command did not expect.
                C::Encode { .. } => exit::DATAERR,
                C::Decode { .. } => exit::PROTOCOL,
                // A subscription's report that the gateway restarted; it
                // goes on, so a command only sees it when it stops there.
                C::Restarted { .. } | C::OriginRestarted { .. } => exit::IOERR,
            },
            Self::Start(e) => match e {
                S::Policy(_) | S::Services(_) | S::UnknownListener { .. } => exit::CONFIG,
                S::NoListeners => exit::USAGE,
                _ => exit::OSERR,
            },
        }
    }

    /// The error as one JSON object, for stderr under `--json`: the exit
    /// status and its class, the message, and for a varlink error its name
    /// and parameters.
    pub fn to_json(&self) -> serde_json::Value {
        let code = self.exit_code();
        let mut out = serde_json::json!({
            "exit_code": code,
            "class": exit::class(code),
            "message": self.to_string(),
        });
        if let Self::Client(qm_ipc_client::ClientError::Remote(reply)) = self {
            out["error"] = reply.name().into();
            out["parameters"] = reply.parameters();
        }
        out
    }
}

/// A clap value parser for an integer from `min` to `max` whose error names
/// the range (clap adds the flag): `--max-frame 0` is refused at once
/// rather than making every request fail later.
pub fn range<T>(min: u64, max: u64) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync
where
    T: TryFrom<u64>,
{
    move |text: &str| {
        let out_of_range = || format!("must be an integer from {min} to {max}");
        let n: u64 = text.trim().parse().map_err(|_| out_of_range())?;
        if !(min..=max).contains(&n) {
            return Err(out_of_range());
        }
        T::try_from(n).map_err(|_| out_of_range())
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
