//! `qm-ipc generate` and `qm-ipc lint`: the files around the gateway.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use qm_ipc_deploy::generate::{self, Options, Topology};
use qm_ipc_deploy::lint;

use super::CommandError;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Which of the qm IPC example's file sets to generate.
    #[arg(value_enum)]
    topology: Topology,
    #[command(flatten)]
    options: Options,
    /// Write the files below DIR (e.g. / or a staging tree) instead of
    /// printing them.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// With --root: replace files whose content differs.
    #[arg(long, requires = "root")]
    force: bool,
}

pub fn generate(args: GenerateArgs) -> Result<(), CommandError> {
    let files = generate::generate(args.topology, &args.options)?;
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
    /// Also run the deployment's files through podman's quadlet generator
    /// and systemd-analyze verify, where they are installed (QM020, QM021).
    #[arg(long)]
    deep: bool,
}

pub fn lint(args: LintArgs) -> Result<(), CommandError> {
    let report = lint::lint_paths_deep(&args.paths, args.deep)?;
    match args.format {
        Format::Text => print!("{}", report.to_text()),
        Format::Json => println!("{}", report.to_json()),
    }
    match report.exit_code(args.strict) {
        0 => Ok(()),
        code => Err(CommandError::Findings(code)),
    }
}
