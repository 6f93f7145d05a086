//! `qm-ipc policy`: check a policy file, explain a decision, show the
//! built-in policy.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use qm_ipc_server::policy::{Action, Identity, Label, Policy, DEFAULT_POLICY};

use super::CommandError;

#[derive(Debug, Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    command: PolicyCommand,
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Validate a policy file; exit 65 with file:line and what is wrong, 66
    /// when it cannot be read.
    Check {
        file: PathBuf,
        /// Listener names the gateway will have beyond consumer and
        /// provider (from LISTEN_FDNAMES).
        #[arg(long = "socket-name", value_name = "NAME")]
        socket_names: Vec<String>,
    },
    /// Say which rule decides whether a peer may do an action on a name;
    /// exit 0 when allowed, 1 when denied (65, 66: a bad or missing file).
    Explain(ExplainArgs),
    /// Print the built-in policy.
    Default,
}

#[derive(Debug, Args)]
struct ExplainArgs {
    /// The policy file ("-" for the built-in policy).
    file: PathBuf,
    /// The action: publish, subscribe (or get), call, stats, list, monitor.
    action: String,
    /// The topic or service (for stats: anything).
    name: String,
    /// The listener the peer connected to.
    #[arg(long, default_value = "consumer", value_name = "NAME")]
    listener: String,
    /// The peer's user id (4294967295, (uid_t)-1, is no user).
    #[arg(long, value_parser = super::range::<u32>(0, u32::MAX as u64 - 1))]
    uid: Option<u32>,
    /// The peer's group id.
    #[arg(long, value_parser = super::range::<u32>(0, u32::MAX as u64 - 1))]
    gid: Option<u32>,
    /// The peer's SELinux context, e.g. system_u:system_r:qm_container_ipc_t:s0:c1,c2
    #[arg(long, value_name = "CONTEXT")]
    label: Option<String>,
}

fn load(file: &std::path::Path, names: &[String]) -> Result<Policy, CommandError> {
    if file.as_os_str() == "-" {
        return Ok(Policy::builtin());
    }
    // A file that cannot be read is not a policy with an error in it:
    // scripts tell the two apart by the exit status (66 and 65).
    let text = std::fs::read_to_string(file)
        .map_err(|e| CommandError::NoInput(format!("cannot read {}: {e}", file.display())))?;
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    Policy::parse(&file.display().to_string(), &text, &names)
        .map_err(|e| CommandError::Usage(e.to_string()))
}

pub fn run(args: PolicyArgs) -> Result<(), CommandError> {
    match args.command {
        PolicyCommand::Check { file, socket_names } => {
            let policy = load(&file, &socket_names)?;
            println!("{}: ok, {} rules", file.display(), policy.rules.len());
            if policy.label_rules() > 0 && !std::path::Path::new("/sys/fs/selinux/enforce").exists()
            {
                println!(
                    "note: SELinux is not enabled here; {} rules that need a label would match nobody",
                    policy.label_rules()
                );
            }
            Ok(())
        }
        PolicyCommand::Explain(a) => {
            let policy = load(&a.file, std::slice::from_ref(&a.listener))?;
            let action = Action::parse(&a.action).ok_or_else(|| {
                CommandError::CommandLine(format!(
                    "unknown action {:?}; use publish, subscribe, call, stats, list or monitor",
                    a.action
                ))
            })?;
            let label = match &a.label {
                None => None,
                Some(text) => Some(Label::parse(text).ok_or_else(|| {
                    CommandError::Usage(format!(
                        "{text:?} is not an SELinux context (user:role:type[:level])"
                    ))
                })?),
            };
            let id = Identity {
                listener: &a.listener,
                uid: a.uid,
                gid: a.gid,
                label: label.as_ref(),
            };
            let explanation = policy.explain(&id, action, &a.name);
            println!("{explanation}");
            match policy.check(&id, action, &a.name).allowed() {
                true => Ok(()),
                false => Err(CommandError::Findings(super::exit::FINDINGS)),
            }
        }
        PolicyCommand::Default => {
            print!("{DEFAULT_POLICY}");
            Ok(())
        }
    }
}
