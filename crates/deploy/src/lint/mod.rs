//! `qm-ipc lint`: checks deployment files against the rules the qm IPC example, the qm
//! SELinux policy and podman's semantics imply.
//!
//! Every rule has a stable id (`QM001`...), a severity, and for every
//! finding the place (`file:line`), what is wrong, why it matters and the
//! fix. Rules that relate files to each other (a client to its server, the
//! QM partition's drop-in to the socket) run when the linted set contains
//! both sides; a single file gets only the checks that concern it alone.

mod deep;
mod model;
mod rules;
mod tree;

pub use tree::Deployment;

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Warning => "warning",
            Self::Error => "error",
        })
    }
}

/// A rule of the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub id: &'static str,
    pub name: &'static str,
    pub severity: Severity,
    /// What the rule finds.
    pub what: &'static str,
    pub why: &'static str,
    /// The fix in general (each finding says it for its file).
    pub fix: &'static str,
    /// The right form, as it looks in the file.
    pub example: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub rule: &'static str,
    pub name: &'static str,
    pub severity: Severity,
    pub file: String,
    pub line: usize,
    pub message: String,
    pub why: &'static str,
    pub fix: String,
}

impl Finding {
    pub fn new(
        rule: &Rule,
        at: (String, usize),
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            rule: rule.id,
            name: rule.name,
            severity: rule.severity,
            file: at.0,
            line: at.1,
            message: message.into(),
            why: rule.why,
            fix: fix.into(),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}:{}: {}[{} {}]: {}",
            self.file, self.line, self.severity, self.rule, self.name, self.message
        )?;
        writeln!(f, "  why: {}", self.why)?;
        write!(f, "  fix: {}", self.fix)
    }
}

/// The catalogue, in id order.
pub fn catalogue() -> &'static [Rule] {
    rules::CATALOGUE
}

/// The catalogue as `docs/lint-rules.md` has it.
pub fn catalogue_markdown() -> String {
    let mut out = String::from(
        "# qm-ipc lint rules\n\n\
         Generated from the code (`qm_ipc_deploy::lint::catalogue_markdown`); a test fails when this file\n\
         differs, so edit the rules in `crates/deploy/src/lint/rules/mod.rs`, then run\n\
         `UPDATE_SNAPSHOTS=1 cargo test -p qm-ipc-deploy --test lint_rules catalogue`.\n\n\
         Lint looks only at the IPC deployment it can identify: the sockets the QM partition's\n\
         `qm.container.d` drop-in mounts (or that lie in `/run/ipc`, or carry the gateway's fd names\n\
         `consumer`/`provider`), the containers that serve or mount them, QM containers that share a\n\
         socket with each other, and the units that name them. Files are found as systemd and quadlet\n\
         find them (a name in an earlier directory, `/etc` before `/usr`, masks the same name in\n\
         later ones; quadlet reads sub-directories and `/run/containers/systemd`), and read as they\n\
         read them. See [deploy.md](deploy.md#lint) for how.\n\n\
         | id | name | severity |\n|---|---|---|\n",
    );
    for r in catalogue() {
        out.push_str(&format!(
            "| [{0}](#{1}) | {2} | {3} |\n",
            r.id,
            r.id.to_lowercase(),
            r.name,
            r.severity
        ));
    }
    for r in catalogue() {
        out.push_str(&format!(
            "\n## {}\n\n**{}**, {}.\n\n- What: {}\n- Why: {}.\n- Fix: {}.\n\nExample of the right form:\n\n```ini\n{}\n```\n",
            r.id, r.name, r.severity, r.what, r.why, r.fix, r.example
        ));
    }
    out
}

/// The outcome of a lint run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub files: Vec<PathBuf>,
    /// What could not be checked, and why (`--deep` without its tools).
    pub notes: Vec<String>,
    /// The IPC socket paths the checked files define or use.
    pub ipc_sockets: Vec<String>,
}

impl Report {
    pub fn errors(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .count()
    }

    pub fn warnings(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Warning)
            .count()
    }

    /// 2 with errors; 1 with warnings under `strict`; 0 otherwise.
    pub fn exit_code(&self, strict: bool) -> u8 {
        if self.errors() > 0 {
            2
        } else if strict && self.warnings() > 0 {
            1
        } else {
            0
        }
    }

    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for finding in &self.findings {
            out.push_str(&finding.to_string());
            out.push('\n');
        }
        for note in &self.notes {
            out.push_str(&format!("note: {note}\n"));
        }
        out.push_str(&format!(
            "{} files checked: {} errors, {} warnings\n",
            self.files.len(),
            self.errors(),
            self.warnings()
        ));
        if self.ipc_sockets.is_empty() && self.findings.is_empty() {
            // "0 errors" must not read as "the IPC setup is right" where
            // there is none.
            out.push_str(
                "note: none of them defines or uses an IPC socket (a socket unit under /run/ipc, \
                 or one served by or mounted into a container); there was no IPC deployment to check\n",
            );
        }
        out
    }

    pub fn to_json(&self) -> String {
        serde_json::json!({
            "findings": self.findings,
            "files": self.files,
            "notes": self.notes,
            "ipc_sockets": self.ipc_sockets,
            "errors": self.errors(),
            "warnings": self.warnings(),
        })
        .to_string()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LintError {
    #[error("{0}: no such file or directory")]
    Missing(PathBuf),
    #[error("{path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("no unit files found in {0:?}")]
    Empty(Vec<PathBuf>),
}

/// Lints files and roots.
pub fn lint_paths(paths: &[PathBuf]) -> Result<Report, LintError> {
    let deployment = Deployment::load(paths)?;
    Ok(lint(&deployment))
}

/// Lints files and roots, and with `deep` runs the deployment's files
/// through podman's quadlet and `systemd-analyze verify` where they are
/// installed (a note says which was not).
pub fn lint_paths_deep(paths: &[PathBuf], deep: bool) -> Result<Report, LintError> {
    let deployment = Deployment::load(paths)?;
    let mut report = lint(&deployment);
    if deep {
        deep::check(&model::Ipc::identify(&deployment), &mut report);
        sort(&mut report.findings);
    }
    Ok(report)
}

fn sort(findings: &mut Vec<Finding>) {
    findings.sort_by(|a, b| (&a.file, a.line, a.rule).cmp(&(&b.file, b.line, b.rule)));
    findings.dedup();
}

/// The IPC socket paths a deployment defines or uses: its IPC sockets,
/// and the sockets its client containers are told to use. None: the files
/// are no IPC deployment, and a clean report says so.
fn ipc_sockets(d: &Deployment) -> Vec<String> {
    let ipc = model::Ipc::identify(d);
    let mut paths: Vec<String> = ipc.sockets.iter().map(|s| s.path.clone()).collect();
    for unit in ipc.clients.iter().chain(&ipc.qm_servers) {
        if let Some((path, _)) = model::socket_env(unit) {
            paths.push(path);
        }
    }
    paths.sort();
    paths.dedup();
    paths
}

/// Lints a loaded deployment.
pub fn lint(deployment: &Deployment) -> Report {
    let mut findings = rules::check(deployment);
    sort(&mut findings);
    Report {
        findings,
        files: deployment.files.clone(),
        notes: Vec::new(),
        ipc_sockets: ipc_sockets(deployment),
    }
}
