//! Log output: plain text for a terminal, or the journal's own form when
//! systemd (or a container under systemd) collects stderr.
//!
//! In the journal form a line carries no timestamp of ours (the journal
//! stamps every line) and starts with the syslog priority as `<N>`, which
//! journald reads (`SyslogLevelPrefix=yes`, the default), so
//! `journalctl -p warning` finds our warnings and errors.
//!
//! The journal form is chosen by `QM_IPC_LOG_FORMAT=journal`, or, with
//! `auto` (the default), when `JOURNAL_STREAM` names our stderr or
//! `INVOCATION_ID` says systemd started us. A container sees neither
//! variable, so the generated quadlets set `QM_IPC_LOG_FORMAT=journal`.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// The variables holding the log filter (`info`, `qm_ipc_server=debug`,
/// ...): the first one set wins, so `QM_IPC_LOG` can override a
/// `RUST_LOG` meant for other programs.
pub const FILTER_VARS: [&str; 2] = ["QM_IPC_LOG", "RUST_LOG"];
/// The variable choosing the output form: `auto`, `journal` or `text`.
pub const FORMAT_VAR: &str = "QM_IPC_LOG_FORMAT";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Journal,
}

/// The syslog priority of a tracing level (sd-daemon(3)'s `SD_ERR` ...).
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// Does `JOURNAL_STREAM` (`DEVICE:INODE`) name the file open as stderr?
fn stderr_is_journal(journal_stream: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some((dev, ino)) = journal_stream.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    // fstat on fd 2 through /proc/self/fd/2 (following the link gives the
    // open file's own device and inode, also for a socket).
    std::fs::metadata("/proc/self/fd/2").is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

/// Picks the form from the environment; an unknown `QM_IPC_LOG_FORMAT` is
/// an error naming the accepted values.
pub fn choose_format(
    format: Option<&str>,
    journal_stream: Option<&str>,
    invocation_id: Option<&str>,
) -> Result<Format, String> {
    match format.unwrap_or("auto") {
        "journal" => Ok(Format::Journal),
        "text" => Ok(Format::Text),
        "auto" | "" => Ok(
            if journal_stream.is_some_and(stderr_is_journal) || invocation_id.is_some() {
                Format::Journal
            } else {
                Format::Text
            },
        ),
        other => Err(format!(
            "{FORMAT_VAR}={other:?} is not a log format; use auto, journal or text"
        )),
    }
}

/// One event as journald reads it: `<PRIORITY>message fields`.
struct JournalLine;

impl<S, N> FormatEvent<S, N> for JournalLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// The level of `-v`/`-q`: `verbosity` is the number of `-v` minus the
/// number of `-q`.
pub fn level(verbosity: i16) -> &'static str {
    match verbosity {
        i16::MIN..=-2 => "error",
        -1 => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    }
}

/// The filter: the first of [`FILTER_VARS`] that is set and not empty,
/// else the level of `-v`/`-q`. A bad value gives the default and a
/// warning naming the variable.
pub fn choose_filter(
    var: impl Fn(&str) -> Option<String>,
    verbosity: i16,
) -> (EnvFilter, Option<String>) {
    let default = level(verbosity);
    let chosen = FILTER_VARS.iter().find_map(|name| {
        var(name)
            .filter(|v| !v.trim().is_empty())
            .map(|v| (*name, v))
    });
    match chosen {
        None => (EnvFilter::new(default), None),
        Some((name, text)) => match EnvFilter::try_new(&text) {
            Ok(filter) => (filter, None),
            Err(e) => (
                EnvFilter::new(default),
                Some(format!(
                    "{name}={text:?} is not a log filter ({e}); using {default}"
                )),
            ),
        },
    }
}

/// Installs the subscriber. Bad values of the variables are reported on
/// stderr and replaced by the defaults (logging must never stop the
/// gateway).
pub fn init(verbosity: i16) {
    let var = |key: &str| std::env::var(key).ok();
    let format = match choose_format(
        var(FORMAT_VAR).as_deref(),
        var("JOURNAL_STREAM").as_deref(),
        var("INVOCATION_ID").as_deref(),
    ) {
        Ok(format) => format,
        Err(e) => {
            eprintln!("warning: {e}; using text");
            Format::Text
        }
    };
    let (filter, warning) = choose_filter(var, verbosity);
    if let Some(warning) = warning {
        eprintln!("warning: {warning}");
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        Format::Journal => builder.with_ansi(false).event_format(JournalLine).init(),
        Format::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(priority(&Level::ERROR), 3);
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::INFO), 6);
        assert_eq!(priority(&Level::DEBUG), 7);
    }

    #[test]
    fn format_follows_the_variables() {
        assert_eq!(choose_format(None, None, None), Ok(Format::Text));
        assert_eq!(
            choose_format(Some("auto"), None, Some("0123abcd")),
            Ok(Format::Journal)
        );
        assert_eq!(
            choose_format(Some("journal"), None, None),
            Ok(Format::Journal)
        );
        assert_eq!(
            choose_format(Some("text"), None, Some("0123abcd")),
            Ok(Format::Text)
        );
        // A JOURNAL_STREAM for some other file (inherited) is not ours.
        assert_eq!(choose_format(None, Some("1:1"), None), Ok(Format::Text));
        assert_eq!(choose_format(None, Some("garbage"), None), Ok(Format::Text));
        let e = choose_format(Some("json"), None, None).unwrap_err();
        assert!(e.contains("auto, journal or text"), "{e}");
    }
}
