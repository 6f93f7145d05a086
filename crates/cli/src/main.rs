//! `qm-ipc`: the gateway, its client and the demo in one binary.

mod commands;
mod demo;
mod logging;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// qm-ipc: IPC between the ASIL (safety) and QM partitions over varlink.
///
/// The gateway (`serve`) runs in the ASIL partition, usually socket-activated
/// by systemd on /run/ipc/ipc.socket. QM applications connect to that socket
/// to read topics (`get`, `subscribe`), publish where allowed (`publish`) and
/// call services (`call`). Try `qm-ipc demo` to see it all working.
#[derive(Debug, Parser)]
#[command(name = "qm-ipc", version, propagate_version = true)]
struct Cli {
    /// The gateway's consumer socket [default: /run/ipc/ipc.socket as root,
    /// $XDG_RUNTIME_DIR/ipc/ipc.socket otherwise]
    #[arg(long, global = true, env = "SOCKET_PATH", value_name = "PATH")]
    socket: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (socket-activated, or binding the sockets itself).
    Serve(commands::serve::ServeArgs),
    /// Run the qm IPC example's demo client: publish the time every second, print
    /// vehicle.speed, reconnect whenever the gateway goes away.
    Client(demo::client::ClientArgs),
    /// Run gateway, demo provider and demo client together on temporary
    /// sockets and show both directions flowing.
    Demo(demo::DemoArgs),
    /// Run the demo's ASIL service: io.qmipc.Demo on its own socket (behind
    /// the gateway), publishing vehicle.speed and logging the client's time
    /// through the provider socket.
    DemoService(demo::service::DemoServiceArgs),
    /// Print the current value of a topic.
    Get(commands::oneshot::GetArgs),
    /// Print samples of topics as they arrive (patterns like `vehicle.*`).
    Subscribe(commands::oneshot::SubscribeArgs),
    /// Publish a JSON value to a topic.
    Publish(commands::oneshot::PublishArgs),
    /// Call a service method and print its result.
    Call(commands::oneshot::CallArgs),
    /// Show what the gateway is and which interfaces it serves.
    Info(commands::oneshot::InfoArgs),
    /// Show the gateway's counters.
    Stats(commands::oneshot::StatsArgs),
    /// Write the systemd, quadlet and drop-in files of a topology.
    Generate(commands::deploy::GenerateArgs),
    /// Check systemd, quadlet and drop-in files (or a whole root) for
    /// mistakes; exit 0 clean, 1 warnings with --strict, 2 errors.
    Lint(commands::deploy::LintArgs),
    /// Check an access policy file, or explain which rule decides.
    Policy(commands::policy::PolicyArgs),
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    // generate and lint refuse a --socket given on their command line
    // (SOCKET_PATH in the environment is a client's, and not for them).
    let socket_flag =
        matches.value_source("socket") == Some(clap::parser::ValueSource::CommandLine);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    logging::init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the event loop: {e}");
            return ExitCode::FAILURE;
        }
    };
    let socket = cli.socket;
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => commands::serve::run(socket, args).await,
            Command::Client(args) => demo::client::run_command(socket, args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::DemoService(args) => demo::service::run_command(args).await,
            Command::Get(args) => commands::oneshot::get(socket, args).await,
            Command::Subscribe(args) => commands::oneshot::subscribe(socket, args).await,
            Command::Publish(args) => commands::oneshot::publish(socket, args).await,
            Command::Call(args) => commands::oneshot::call(socket, args).await,
            Command::Info(args) => commands::oneshot::info(socket, args).await,
            Command::Stats(args) => commands::oneshot::stats(socket, args).await,
            Command::Generate(args) => commands::deploy::generate(socket_flag, args),
            Command::Lint(args) => commands::deploy::lint(socket_flag, args),
            Command::Policy(args) => commands::policy::run(args),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(commands::CommandError::Findings(code)) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
