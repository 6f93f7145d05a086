//! `qm-ipc generate` and `qm-ipc lint`: the files around the gateway.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use qm_ipc_deploy::generate::{self, Options, Runtime, Topology};
use qm_ipc_deploy::lint;

use super::CommandError;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TopologyArg {
    /// A host socket unit, the ASIL server quadlet, the QM client quadlet and
    /// the drop-in that mounts /run/ipc into the QM partition.
    AsilToQm,
    /// A server and a client quadlet inside QM sharing a socket directory
    /// and an MCS level.
    QmToQm,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RuntimeArg {
    /// The server in a container, from a quadlet (the qm IPC example).
    Container,
    /// The server as a hardened systemd service running qm-ipc on the host
    /// (asil-to-qm only).
    Host,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Which of the qm IPC example's file sets to generate.
    topology: TopologyArg,
    /// Image of the server container (runs `qm-ipc` as its entrypoint).
    #[arg(long, default_value_t = Options::default().server_image)]
    server_image: String,
    /// Image of the client container.
    #[arg(long, default_value_t = Options::default().client_image)]
    client_image: String,
    /// Server name: NAME.container, NAME.service and (asil-to-qm) NAME.socket.
    #[arg(long, default_value_t = Options::default().server_name)]
    server_name: String,
    /// Client name: NAME.container.
    #[arg(long, default_value_t = Options::default().client_name)]
    client_name: String,
    /// The socket path [default: /run/ipc/ipc.socket for asil-to-qm,
    /// /run/ipc-qm/ipc.socket for qm-to-qm].
    #[arg(long, value_name = "PATH")]
    socket_path: Option<String>,
    /// SELinux type of the ASIL server.
    #[arg(long, default_value_t = Options::default().server_label)]
    server_label: String,
    /// SELinux type of the QM client (asil-to-qm).
    #[arg(long, default_value_t = Options::default().client_label)]
    client_label: String,
    /// MCS level shared by both containers (qm-to-qm).
    #[arg(long, default_value_t = Options::default().level)]
    level: String,
    /// Arguments for the server image's entrypoint.
    #[arg(long, default_value_t = Options::default().server_exec)]
    server_exec: String,
    /// Run the built-in demo provider in the gateway (serve --demo), to try
    /// the deployment out with the demo client.
    #[arg(long)]
    demo: bool,
    /// Arguments for the client image's entrypoint.
    #[arg(long, default_value_t = Options::default().client_exec)]
    client_exec: String,
    /// Where the server runs.
    #[arg(long, value_enum, default_value_t = RuntimeArg::Container)]
    runtime: RuntimeArg,
    /// The qm-ipc binary on the host (--runtime host).
    #[arg(long, default_value_t = Options::default().binary, value_name = "PATH")]
    binary: String,
    /// WatchdogSec= of the server: systemd restarts a gateway that stops
    /// answering for this long. 0: no watchdog.
    #[arg(long, default_value_t = Options::default().watchdog_sec, value_name = "SECONDS", value_parser = super::range::<u32>(0, 86_400))]
    watchdog_sec: u32,
    /// Write the files below DIR (e.g. / or a staging tree) instead of
    /// printing them.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// With --root: replace files whose content differs.
    #[arg(long, requires = "root")]
    force: bool,
}

pub fn generate(args: GenerateArgs) -> Result<(), CommandError> {
    let topology = match args.topology {
        TopologyArg::AsilToQm => Topology::AsilToQm,
        TopologyArg::QmToQm => Topology::QmToQm,
    };
    let options = Options {
        server_image: args.server_image,
        client_image: args.client_image,
        server_name: args.server_name,
        client_name: args.client_name,
        socket_path: args.socket_path,
        server_label: args.server_label,
        client_label: args.client_label,
        level: args.level,
        server_exec: args.server_exec,
        client_exec: args.client_exec,
        runtime: match args.runtime {
            RuntimeArg::Container => Runtime::Container,
            RuntimeArg::Host => Runtime::Host,
        },
        binary: args.binary,
        watchdog_sec: args.watchdog_sec,
        demo: args.demo,
        ..Options::default()
    };
    let files = generate::generate(topology, &options)?;
    match args.root {
        None => print!("{}", generate::render_listing(&files)),
        Some(root) => {
            for outcome in generate::write_root(&root, &files, args.force)? {
                println!("{outcome}");
            }
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct LintArgs {
    /// Unit files, or roots (/, a staging tree) in which etc/systemd/system,
    /// etc/containers/systemd, etc/qm/containers/systemd and their drop-ins
    /// are found.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Exit 1 on warnings too (errors always exit 2).
    #[arg(long)]
    strict: bool,
}

pub fn lint(args: LintArgs) -> Result<(), CommandError> {
    let report = lint::lint_paths(&args.paths)?;
    match args.format {
        Format::Text => print!("{}", report.to_text()),
        Format::Json => println!("{}", report.to_json()),
    }
    match report.exit_code(args.strict) {
        0 => Ok(()),
        code => Err(CommandError::Findings(code)),
    }
}
