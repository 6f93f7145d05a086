//! `qm-ipc`: the gateway, its client and the demo in one binary.

mod commands;
mod demo;
mod logging;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

/// qm-ipc: IPC between the ASIL (safety) and QM partitions over varlink.
///
/// The gateway (`serve`) runs in the ASIL partition, usually socket-activated
/// by systemd on /run/ipc/ipc.socket. QM applications connect to that socket
/// to read topics (`get`, `subscribe`), publish where allowed (`publish`) and
/// call services (`call`). Try `qm-ipc demo` to see it all working.
#[derive(Debug, Parser)]
#[command(name = "qm-ipc", version, propagate_version = true)]
struct Cli {
    /// The gateway's consumer socket, for the commands that talk to the
    /// gateway or serve it (also accepted after the command name).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,

    /// More log output: -v debug, -vv trace (QM_IPC_LOG or RUST_LOG
    /// overrides).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    verbose: u8,

    /// Less log output: -q warnings and errors only, -qq errors only.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    quiet: u8,

    #[command(subcommand)]
    command: Command,
}

/// The `--socket` of the commands it acts on; other commands do not show it.
#[derive(Debug, Args)]
struct SocketArg {
    /// The gateway's consumer socket [default: /run/ipc/ipc.socket as root;
    /// otherwise $XDG_RUNTIME_DIR/ipc/ipc.socket, or /tmp/ipc/ipc.socket
    /// without XDG_RUNTIME_DIR]
    #[arg(long, env = "SOCKET_PATH", value_name = "PATH")]
    socket: Option<PathBuf>,
}

/// A command's own arguments with `--socket`.
#[derive(Debug, Args)]
struct WithSocket<T: Args> {
    #[command(flatten)]
    socket: SocketArg,
    #[command(flatten)]
    args: T,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (socket-activated, or binding the sockets itself).
    Serve(WithSocket<commands::serve::ServeArgs>),
    /// Run the qm IPC example's demo client: publish the time every second, print
    /// vehicle.speed, reconnect whenever the gateway goes away.
    Client(WithSocket<demo::client::ClientArgs>),
    /// Run gateway, demo provider and demo client together on temporary
    /// sockets and show both directions flowing.
    Demo(demo::DemoArgs),
    /// Run the demo's ASIL service: io.qmipc.Demo on its own socket (behind
    /// the gateway), publishing vehicle.speed and logging the client's time
    /// through the provider socket.
    DemoService(demo::service::DemoServiceArgs),
    /// Print the current value of a topic.
    Get(WithSocket<commands::oneshot::GetArgs>),
    /// Print samples of topics as they arrive (patterns like `vehicle.*`).
    Subscribe(WithSocket<commands::oneshot::SubscribeArgs>),
    /// Publish a JSON value to a topic.
    Publish(WithSocket<commands::oneshot::PublishArgs>),
    /// Call a service method and print its result.
    Call(WithSocket<commands::oneshot::CallArgs>),
    /// Show what the gateway is and which interfaces it serves.
    Info(WithSocket<commands::oneshot::InfoArgs>),
    /// Show the gateway's counters.
    Stats(WithSocket<commands::oneshot::StatsArgs>),
    /// Write the systemd, quadlet and drop-in files of a topology.
    Generate(commands::deploy::GenerateArgs),
    /// Check systemd, quadlet and drop-in files (or a whole root) for
    /// mistakes; exit 0 clean, 1 warnings with --strict, 2 errors.
    Lint(commands::deploy::LintArgs),
    /// Check an access policy file, or explain which rule decides.
    Policy(commands::policy::PolicyArgs),
    /// List the topics and services the policy lets you see (needs its
    /// list grant).
    List(WithSocket<commands::list::ListArgs>),
    /// Watch every publish, call, reply and service error the policy lets
    /// you see, with time and peer (needs its monitor grant).
    Monitor(WithSocket<commands::monitor::MonitorArgs>),
    /// Print a shell completion script (bash, zsh, fish, elvish,
    /// powershell) to stdout.
    Completions(commands::docs::CompletionsArgs),
    /// Print the manual page, or write all of them into a directory (for
    /// packaging).
    #[command(hide = true)]
    Man(commands::docs::ManArgs),
}

impl Command {
    /// The `--socket` given after the command name (or by `SOCKET_PATH`),
    /// and whether the command acts on a socket at all.
    fn socket(&self) -> Option<Option<PathBuf>> {
        let s = |w: &SocketArg| Some(w.socket.clone());
        match self {
            Self::Serve(w) => s(&w.socket),
            Self::Client(w) => s(&w.socket),
            Self::Get(w) => s(&w.socket),
            Self::Subscribe(w) => s(&w.socket),
            Self::Publish(w) => s(&w.socket),
            Self::Call(w) => s(&w.socket),
            Self::Info(w) => s(&w.socket),
            Self::Stats(w) => s(&w.socket),
            Self::List(w) => s(&w.socket),
            Self::Monitor(w) => s(&w.socket),
            _ => None,
        }
    }
}

/// Did the command line ask for JSON (`--json`, `--format json`)? Read
/// from the raw arguments, so that also a command line clap refuses gets
/// its error as JSON.
fn wants_json(args: &[std::ffi::OsString]) -> bool {
    let args: Vec<&str> = args
        .iter()
        .skip(1)
        .map(|a| a.to_str().unwrap_or(""))
        .take_while(|a| *a != "--")
        .collect();
    args.iter().any(|a| *a == "--json" || *a == "--format=json")
        || args.windows(2).any(|w| w == ["--format", "json"])
}

/// Prints a failure: `error: ...` on stderr, or one JSON object there
/// under `--json`.
fn report(error: &commands::CommandError, json: bool) {
    if json {
        eprintln!("{}", error.to_json());
    } else {
        eprintln!("error: {error}");
    }
}

/// Parses the command line; a usage error exits 64 (EX_USAGE), not clap's
/// 2, which `lint` uses for errors in the files it checks.
fn parse(args: &[std::ffi::OsString], json: bool) -> Result<Cli, ExitCode> {
    let command = Cli::command().after_long_help(commands::exit::help_text());
    let parsed = command
        .try_get_matches_from(args)
        .and_then(|m| Cli::from_arg_matches(&m));
    match parsed {
        Ok(cli) => Ok(cli),
        Err(e) if !e.use_stderr() => {
            // --help and --version: their output, and success.
            let _ = e.print();
            Err(ExitCode::SUCCESS)
        }
        Err(e) if json => {
            let message = e.render().to_string();
            let message = message.trim().trim_start_matches("error: ");
            eprintln!(
                "{}",
                serde_json::json!({
                    "exit_code": commands::exit::USAGE,
                    "class": commands::exit::class(commands::exit::USAGE),
                    "message": message,
                })
            );
            Err(ExitCode::from(commands::exit::USAGE))
        }
        Err(e) => {
            let _ = e.print();
            Err(ExitCode::from(commands::exit::USAGE))
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let json = wants_json(&args);
    let cli = match parse(&args, json) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let socket = match (cli.command.socket(), cli.socket) {
        // The flag before the command name is explicit; the one after it
        // may come from SOCKET_PATH, which a flag overrides.
        (Some(after), before) => before.or(after),
        (None, None) => None,
        (None, Some(_)) => {
            let e = commands::CommandError::CommandLine(
                "--socket applies to serve, client, get, subscribe, publish, call, info, stats, list and monitor only".into(),
            );
            report(&e, json);
            return ExitCode::from(e.exit_code());
        }
    };
    logging::init(i16::from(cli.verbose) - i16::from(cli.quiet));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the event loop: {e}");
            return ExitCode::from(commands::exit::OSERR);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(w) => commands::serve::run(socket, w.args).await,
            Command::Client(w) => demo::client::run_command(socket, w.args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::DemoService(args) => demo::service::run_command(args).await,
            Command::Get(w) => commands::oneshot::get(socket, w.args).await,
            Command::Subscribe(w) => commands::oneshot::subscribe(socket, w.args).await,
            Command::Publish(w) => commands::oneshot::publish(socket, w.args).await,
            Command::Call(w) => commands::oneshot::call(socket, w.args).await,
            Command::Info(w) => commands::oneshot::info(socket, w.args).await,
            Command::Stats(w) => commands::oneshot::stats(socket, w.args).await,
            Command::Generate(args) => commands::deploy::generate(args),
            Command::Lint(args) => commands::deploy::lint(args),
            Command::Policy(args) => commands::policy::run(args),
            Command::List(w) => commands::list::list(socket, w.args).await,
            Command::Monitor(w) => commands::monitor::monitor(socket, w.args).await,
            Command::Completions(args) => commands::docs::completions(args),
            Command::Man(args) => commands::docs::man(args),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(commands::CommandError::Findings(code)) => ExitCode::from(code),
        Err(e) => {
            report(&e, json);
            ExitCode::from(e.exit_code())
        }
    }
}
