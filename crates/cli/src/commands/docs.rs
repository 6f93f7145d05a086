//! `qm-ipc completions` and `qm-ipc man`: shell completions and manual
//! pages generated from the command-line definition itself, so they cannot
//! drift from `--help`. The packaging (packaging/qm-ipc.spec) installs both.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Command, CommandFactory};
use clap_complete::Shell;

use super::{exit, CommandError};

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    shell: Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write qm-ipc.1 and one page per subcommand (qm-ipc-serve.1, ...)
    /// into DIR instead of printing qm-ipc.1.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

pub fn completions(args: CompletionsArgs) -> Result<(), CommandError> {
    let mut command = crate::Cli::command();
    clap_complete::generate(args.shell, &mut command, "qm-ipc", &mut std::io::stdout());
    Ok(())
}

pub fn man(args: ManArgs) -> Result<(), CommandError> {
    let mut command = crate::Cli::command().disable_help_subcommand(true);
    command.build();
    match args.dir {
        None => {
            let mut out = std::io::stdout().lock();
            render(&command, true, &mut out)?;
            out.flush()?;
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            write_pages(&command, true, &dir)?;
        }
    }
    Ok(())
}

fn write_pages(command: &Command, top: bool, dir: &std::path::Path) -> std::io::Result<()> {
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, false, dir)?;
    }
    let page = clap_mangen::Man::new(command.clone());
    let mut file = std::fs::File::create(dir.join(page.get_filename()))?;
    render(command, top, &mut file)
}

/// One page: clap_mangen's sections, then for the main page the sections
/// a packaged tool is expected to have (EXIT STATUS, ENVIRONMENT, FILES).
fn render(command: &Command, top: bool, out: &mut dyn Write) -> std::io::Result<()> {
    let page = clap_mangen::Man::new(command.clone())
        .manual("qm-ipc manual")
        .source(format!("qm-ipc {}", env!("CARGO_PKG_VERSION")));
    page.render_title(out)?;
    page.render_name_section(out)?;
    page.render_synopsis_section(out)?;
    page.render_description_section(out)?;
    if command.get_arguments().any(|a| !a.is_hide_set()) {
        page.render_options_section(out)?;
    }
    if command.has_subcommands() {
        page.render_subcommands_section(out)?;
    }
    if top {
        out.write_all(extra_sections().as_bytes())?;
    }
    Ok(())
}

fn roff_escape(text: &str) -> String {
    text.replace('\\', "\\e").replace('-', "\\-")
}

fn extra_sections() -> String {
    let mut roff = String::from(".SH \"EXIT STATUS\"\n");
    for (code, class, meaning) in exit::TABLE {
        roff.push_str(&format!(
            ".TP\n\\fB{code}\\fR ({})\n{}\n",
            roff_escape(class),
            roff_escape(meaning)
        ));
    }
    roff.push_str(&format!(
        ".SH ENVIRONMENT\n{}",
        [
            ("SOCKET_PATH", "The gateway's consumer socket, for the commands that take \\-\\-socket."),
            ("QM_IPC_LOG", "The log filter (tracing's EnvFilter syntax: info, qm_ipc_server=debug, ...). Overrides \\-v and \\-q."),
            ("RUST_LOG", "The log filter when QM_IPC_LOG is not set."),
            ("QM_IPC_LOG_FORMAT", "auto, journal or text: journal writes <N> priority prefixes for journald and no timestamps; auto chooses it under systemd."),
        ]
        .iter()
        .map(|(name, what)| format!(".TP\n\\fB{name}\\fR\n{what}\n"))
        .collect::<String>()
    ));
    roff.push_str(concat!(
        ".SH FILES\n",
        ".TP\n\\fI/run/ipc/ipc.socket\\fR\n",
        "The consumer socket QM connects to (as root; otherwise $XDG_RUNTIME_DIR/ipc/ipc.socket, ",
        "or /tmp/ipc/ipc.socket without XDG_RUNTIME_DIR).\n",
        ".TP\n\\fI/run/qm\\-ipc/provider.socket\\fR\n",
        "The ASIL (provider) socket; never mounted into QM.\n",
        ".TP\n\\fI/etc/qm\\-ipc/policy.toml\\fR\n",
        "The access policy the packaged units pass with \\-\\-policy; reloaded on SIGHUP.\n",
        ".TP\n\\fI/etc/qm\\-ipc/services.toml\\fR\n",
        "The ASIL services served behind the gateway (\\-\\-services).\n",
        ".SH \"SEE ALSO\"\n",
        "\\fBvarlinkctl\\fR(1), \\fBsystemd.socket\\fR(5), \\fBpodman\\-systemd.unit\\fR(5); ",
        "/usr/share/doc/qm\\-ipc/README.md\n",
    ));
    roff
}
