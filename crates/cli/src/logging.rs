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

/// The longest line an event is written as, in bytes; past it the line is
/// cut and says how much was left out (a peer's text must not flood the
/// journal, whatever field carries it).
pub const MAX_LINE: usize = 4096;

/// One event as one line: line breaks and other control characters inside
/// it escaped (`\n`, `\u{1b}`), so that a multi-line error or a peer's
/// text cannot start a line that looks like an event of its own; the
/// terminal's colour codes (`keep_escape`) stay. Cut at [`MAX_LINE`].
pub fn one_line(event: &str, keep_escape: bool) -> String {
    let body = event.strip_suffix('\n').unwrap_or(event);
    let mut out = String::with_capacity(body.len().min(MAX_LINE) + 1);
    for (i, c) in body.char_indices() {
        if out.len() >= MAX_LINE {
            out.push_str(&format!("... ({} bytes more)", body.len() - i));
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push('\t'),
            '\u{1b}' if keep_escape => out.push(c),
            c if c.is_control() => out.push_str(&c.escape_unicode().to_string()),
            c => out.push(c),
        }
    }
    out.push('\n');
    out
}

/// stderr, written one event at a time through [`one_line`].
struct OneLineWriter {
    keep_escape: bool,
}

impl std::io::Write for OneLineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    /// tracing-subscriber formats an event into one buffer and hands it
    /// over with one `write_all`.
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let line = one_line(&String::from_utf8_lossy(buf), self.keep_escape);
        std::io::stderr().lock().write_all(line.as_bytes())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
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
    let ansi = format == Format::Text && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(move || OneLineWriter { keep_escape: ansi })
        .with_target(false);
    match format {
        Format::Journal => builder.with_ansi(false).event_format(JournalLine).init(),
        Format::Text => builder.with_ansi(ansi).init(),
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
    fn an_event_is_one_bounded_line() {
        assert_eq!(one_line("plain\n", false), "plain\n");
        assert_eq!(
            one_line("policy reload failed: x.toml:3: bad\n  |\n3 | y\n", false),
            "policy reload failed: x.toml:3: bad\\n  |\\n3 | y\n"
        );
        // A peer's escape sequence is shown, not obeyed; ours are kept on a
        // terminal.
        assert_eq!(one_line("a\u{1b}[2Jb\n", false), "a\\u{1b}[2Jb\n");
        assert_eq!(one_line("a\u{1b}[1mb\n", true), "a\u{1b}[1mb\n");
        let long = one_line(&"x".repeat(10 * MAX_LINE), false);
        assert!(long.len() < MAX_LINE + 40, "{}", long.len());
        assert!(long.ends_with(&format!("... ({} bytes more)\n", 9 * MAX_LINE)));
        assert_eq!(long.matches('\n').count(), 1);
    }

    #[test]
    fn filter_from_the_variables_or_the_flags() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let shown = |f: EnvFilter| f.to_string();
        assert_eq!(shown(choose_filter(env(&[]), 0).0), "info");
        assert_eq!(shown(choose_filter(env(&[]), 2).0), "trace");
        assert_eq!(shown(choose_filter(env(&[]), -1).0), "warn");
        assert_eq!(shown(choose_filter(env(&[]), -5).0), "error");
        // RUST_LOG is honoured, and wins over -v; QM_IPC_LOG wins over it.
        assert_eq!(
            shown(choose_filter(env(&[("RUST_LOG", "debug")]), 0).0),
            "debug"
        );
        assert_eq!(
            shown(choose_filter(env(&[("RUST_LOG", "debug"), ("QM_IPC_LOG", "warn")]), 1).0),
            "warn"
        );
        // An empty value counts as unset.
        assert_eq!(
            shown(choose_filter(env(&[("QM_IPC_LOG", " ")]), 1).0),
            "debug"
        );
        // A bad value: the flags' level, and a warning naming the variable.
        let (filter, warning) = choose_filter(env(&[("RUST_LOG", "[[nope")]), 0);
        assert_eq!(shown(filter), "info");
        let warning = warning.expect("a warning");
        assert!(
            warning.starts_with("RUST_LOG=\"[[nope\" is not a log filter"),
            "{warning}"
        );
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
