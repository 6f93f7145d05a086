//! A lossless model of systemd unit files and podman quadlet files.
//!
//! Every physical line is kept with its exact bytes, so printing a parsed
//! file gives back the same bytes, whatever they are (non-UTF-8 too).
//! Queries see the logical content the way the program that reads the file
//! does, and the two differ ([`Dialect`]):
//!
//! - systemd (`.socket`, `.service`, ... and their drop-ins): a line ending
//!   in an odd number of backslashes goes on, the backslash becoming a space
//!   and the next line joined as it is; comment lines inside are skipped, a
//!   blank line ends it. A BOM, an assignment before any section, a line
//!   without `=` are warnings (systemd logs them and goes on); a broken
//!   section header is an error (the unit does not load).
//! - quadlet (`.container`, `.pod`, `.kube`, ... and their drop-ins, read by
//!   podman's `pkg/systemd/parser`): every line trimmed, a line ending in
//!   `\` goes on with the backslash removed and nothing put in its place;
//!   blank and comment lines inside are skipped; a line that is neither
//!   comment, group nor `key=value` and an assignment before any group make
//!   quadlet reject the file, so they are errors. A single value is read
//!   with its surrounding double quotes removed ([`Entry::single`]).
//!
//! Bytes that are not UTF-8 are warnings with their line; the value reads
//! them as U+FFFD.

mod dropins;
mod specifiers;
mod words;

pub use dropins::{dropin_dirs, resolve_dropins};
pub use specifiers::expand_system_specifiers;
pub use words::{split_words, split_words_checked, SplitError};

use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct ParseError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// Which program's reading of the file applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// systemd's own unit files.
    Systemd,
    /// podman's quadlet files.
    Quadlet,
}

/// The quadlet file types (podman 5).
pub const QUADLET_EXTENSIONS: &[&str] = &[
    "container",
    "pod",
    "kube",
    "volume",
    "network",
    "image",
    "build",
    "artifact",
];

impl Dialect {
    /// The dialect of a file by its name: a quadlet extension, or a `.conf`
    /// in a quadlet's drop-in directory (`foo.container.d/`, `container.d/`).
    pub fn of(path: &Path) -> Self {
        let ext = |p: &Path| {
            p.extension()
                .and_then(|e| e.to_str())
                .map(str::to_owned)
                .unwrap_or_default()
        };
        let own = ext(path);
        if QUADLET_EXTENSIONS.contains(&own.as_str()) {
            return Self::Quadlet;
        }
        if own == "conf" {
            let dir = path
                .parent()
                .and_then(|p| p.file_name())
                .and_then(|n| n.to_str())
                .unwrap_or("");
            if let Some(unit) = dir.strip_suffix(".d") {
                let unit_ext = unit.rsplit('.').next().unwrap_or(unit);
                if QUADLET_EXTENSIONS.contains(&unit_ext) {
                    return Self::Quadlet;
                }
            }
        }
        Self::Systemd
    }
}

/// One logical element of a unit file with the raw bytes it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Element {
    /// Blank lines, comments, and lines the reader ignores, verbatim.
    Trivia {
        raw: Vec<u8>,
    },
    Section {
        name: String,
        raw: Vec<u8>,
        line: usize,
    },
    Entry(Entry),
}

/// One `Key=Value` assignment, possibly spread over continuation lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    /// The logical value as a list-valued key reads it: continuations
    /// joined as the dialect joins them, surrounding whitespace trimmed.
    pub value: String,
    /// First physical line, 1-based.
    pub line: usize,
    pub dialect: Dialect,
    raw: Vec<u8>,
}

impl Entry {
    /// The value as a single-valued key reads it: quadlet removes one pair
    /// of surrounding double quotes (`SecurityLabelType="ipc_t"` is
    /// `ipc_t`); systemd keeps them.
    pub fn single(&self) -> &str {
        let v = self.value.as_str();
        match self.dialect {
            Dialect::Quadlet if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') => {
                &v[1..v.len() - 1]
            }
            _ => v,
        }
    }
}

/// A parsed unit file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitFile {
    /// Where the file came from (for messages); may be a display name.
    pub path: PathBuf,
    pub dialect: Dialect,
    elements: Vec<Element>,
    /// What the reader warns about and goes on.
    pub warnings: Vec<ParseError>,
}

/// An entry together with its file and section, as queries return it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Located<'a> {
    pub file: &'a Path,
    pub section: &'a str,
    pub entry: &'a Entry,
}

impl Located<'_> {
    /// `file:line`, for messages.
    pub fn at(&self) -> String {
        format!("{}:{}", self.file.display(), self.entry.line)
    }

    /// The value as a single-valued key reads it ([`Entry::single`]).
    pub fn single(&self) -> &str {
        self.entry.single()
    }
}

fn strip_eol(line: &[u8]) -> &[u8] {
    let mut end = line.len();
    while end > 0 && matches!(line[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    &line[..end]
}

fn is_comment(trimmed: &str) -> bool {
    trimmed.starts_with('#') || trimmed.starts_with(';')
}

/// systemd's WHITESPACE (`strstrip`).
fn systemd_trim(s: &str) -> &str {
    s.trim_matches([' ', '\t', '\n', '\r'])
}

/// Does the text end in an odd run of backslashes (systemd's test for a
/// continuation: `foo\\` is an escaped backslash, not a continuation)?
fn ends_escaped(s: &str) -> bool {
    s.bytes().rev().take_while(|b| *b == b'\\').count() % 2 == 1
}

const BOM: char = '\u{feff}';

/// One physical line: its bytes (with terminator) and its text (without).
struct Physical<'a> {
    raw: &'a [u8],
    text: String,
}

impl UnitFile {
    /// An empty file, to be filled with [`UnitFile::push_section`] and
    /// [`UnitFile::push_entry`]; its dialect follows from its name.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        Self {
            dialect: Dialect::of(&path),
            path,
            elements: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Self, ParseError> {
        let bytes = std::fs::read(path).map_err(|e| ParseError {
            file: path.display().to_string(),
            line: 0,
            message: format!("cannot read: {e}"),
        })?;
        Self::parse_bytes(path, &bytes)
    }

    /// Parses `text`, read as its name's dialect. `path` is only used in
    /// messages, queries and to choose the dialect.
    pub fn parse(path: impl Into<PathBuf>, text: &str) -> Result<Self, ParseError> {
        Self::parse_bytes(path, text.as_bytes())
    }

    /// Parses bytes, read as its name's dialect.
    pub fn parse_bytes(path: impl Into<PathBuf>, bytes: &[u8]) -> Result<Self, ParseError> {
        let path = path.into();
        let dialect = Dialect::of(&path);
        Self::parse_as(path, bytes, dialect)
    }

    /// Parses bytes with the given dialect.
    pub fn parse_as(
        path: impl Into<PathBuf>,
        bytes: &[u8],
        dialect: Dialect,
    ) -> Result<Self, ParseError> {
        let path = path.into();
        let file = path.display().to_string();
        let issue = |line: usize, message: String| ParseError {
            file: file.clone(),
            line,
            message,
        };
        let mut warnings = Vec::new();
        let mut lines: Vec<Physical<'_>> = Vec::new();
        for (index, raw) in bytes.split_inclusive(|b| *b == b'\n').enumerate() {
            let content = strip_eol(raw);
            let text = match std::str::from_utf8(content) {
                Ok(t) => t.to_owned(),
                Err(e) => {
                    warnings.push(issue(
                        index + 1,
                        format!(
                            "not valid UTF-8 (byte 0x{:02x} at column {}); read as U+FFFD",
                            content[e.valid_up_to()],
                            e.valid_up_to() + 1
                        ),
                    ));
                    String::from_utf8_lossy(content).into_owned()
                }
            };
            lines.push(Physical { raw, text });
        }
        if let Some(first) = lines.first_mut() {
            if let Some(rest) = first.text.strip_prefix(BOM) {
                match dialect {
                    Dialect::Systemd => {
                        warnings.push(issue(
                            1,
                            "starts with a UTF-8 byte order mark (systemd skips it)".into(),
                        ));
                        first.text = rest.to_owned();
                    }
                    Dialect::Quadlet => {
                        return Err(issue(
                            1,
                            "starts with a UTF-8 byte order mark, which quadlet does not skip: the line is then neither a group nor a key=value pair and quadlet rejects the file".into(),
                        ));
                    }
                }
            }
        }

        let mut elements = Vec::new();
        let mut in_section = false;
        let n = lines.len();
        let mut i = 0;
        while i < n {
            let start = i;
            let first = lines[i].text.as_str();
            let trimmed = match dialect {
                Dialect::Systemd => systemd_trim(first),
                Dialect::Quadlet => first.trim(),
            };
            if trimmed.is_empty() || is_comment(trimmed) {
                elements.push(Element::Trivia {
                    raw: lines[i].raw.to_vec(),
                });
                i += 1;
                continue;
            }
            // Gather the logical line; None when it never ends (quadlet
            // drops it).
            let logical: Option<String> = match dialect {
                Dialect::Quadlet => {
                    let mut acc = String::new();
                    let mut current = trimmed.to_owned();
                    loop {
                        let Some(head) = current.strip_suffix('\\') else {
                            acc.push_str(&current);
                            i += 1;
                            break Some(acc);
                        };
                        acc.push_str(head);
                        if i + 1 == n {
                            // The last line's backslash is dropped.
                            i += 1;
                            break Some(acc);
                        }
                        i += 1;
                        // Blank and comment lines inside are skipped.
                        while i < n {
                            let t = lines[i].text.trim();
                            if t.is_empty() || is_comment(t) {
                                i += 1;
                            } else {
                                break;
                            }
                        }
                        if i == n {
                            break None;
                        }
                        current = lines[i].text.trim().to_owned();
                    }
                }
                Dialect::Systemd => {
                    let mut acc = first.to_owned();
                    i += 1;
                    while ends_escaped(&acc) {
                        acc.pop();
                        acc.push(' ');
                        // Comment lines inside are skipped; a blank line is
                        // joined, and ends it.
                        while i < n {
                            let t = lines[i].text.trim_start_matches([' ', '\t', '\n', '\r']);
                            if !t.is_empty() && is_comment(t) {
                                i += 1;
                            } else {
                                break;
                            }
                        }
                        if i == n {
                            break;
                        }
                        acc.push_str(&lines[i].text);
                        i += 1;
                    }
                    Some(systemd_trim(&acc).to_owned())
                }
            };
            let raw: Vec<u8> = lines[start..i]
                .iter()
                .flat_map(|l| l.raw.to_vec())
                .collect();
            let line_no = start + 1;
            let Some(logical) = logical else {
                warnings.push(issue(
                    line_no,
                    "the continuation runs to the end of the file; quadlet drops the assignment"
                        .into(),
                ));
                elements.push(Element::Trivia { raw });
                continue;
            };
            let ignored = |elements: &mut Vec<Element>, raw: Vec<u8>| {
                elements.push(Element::Trivia { raw });
            };
            if logical.is_empty() || is_comment(&logical) {
                ignored(&mut elements, raw);
                continue;
            }
            // Section headers.
            if logical.starts_with('[') {
                let header = match dialect {
                    Dialect::Systemd => match logical.strip_suffix(']') {
                        Some(inner) => Some(inner[1..].to_owned()),
                        None => {
                            return Err(issue(
                                line_no,
                                format!("invalid section header {logical:?}: systemd does not load the unit"),
                            ))
                        }
                    },
                    Dialect::Quadlet => logical.find(']').and_then(|end| {
                        logical[end + 1..]
                            .chars()
                            .all(|c| c == ' ' || c == '\t')
                            .then(|| logical[1..end].to_owned())
                    }),
                };
                if let Some(name) = header {
                    let valid = !name.is_empty()
                        && !name.contains(['[', ']'])
                        && !name.chars().any(char::is_control);
                    if !valid {
                        return Err(issue(line_no, format!("invalid section name {name:?}")));
                    }
                    in_section = true;
                    elements.push(Element::Section {
                        name,
                        raw,
                        line: line_no,
                    });
                    continue;
                }
            }
            // Assignments.
            let split = logical.split_once('=');
            match dialect {
                Dialect::Quadlet => {
                    let Some((key, value)) = split.filter(|(k, _)| !k.is_empty()) else {
                        return Err(issue(
                            line_no,
                            format!("{logical:?} is not a key=value pair, group or comment: quadlet rejects the file"),
                        ));
                    };
                    if !in_section {
                        return Err(issue(
                            line_no,
                            format!("assignment {logical:?} before any [group]: quadlet rejects the file"),
                        ));
                    }
                    elements.push(Element::Entry(Entry {
                        key: key.trim_end().to_owned(),
                        value: value.trim().to_owned(),
                        line: line_no,
                        dialect,
                        raw,
                    }));
                }
                Dialect::Systemd => {
                    let warning = if !in_section {
                        Some(format!(
                            "assignment {logical:?} outside of any section; systemd ignores it"
                        ))
                    } else {
                        match split {
                            None => Some(format!(
                                "missing '=' in {logical:?}; systemd ignores the line"
                            )),
                            Some((k, _)) if systemd_trim(k).is_empty() => Some(format!(
                                "no key before '=' in {logical:?}; systemd ignores the line"
                            )),
                            _ => None,
                        }
                    };
                    if let Some(message) = warning {
                        warnings.push(issue(line_no, message));
                        ignored(&mut elements, raw);
                        continue;
                    }
                    let Some((key, value)) = split else {
                        continue;
                    };
                    elements.push(Element::Entry(Entry {
                        key: systemd_trim(key).to_owned(),
                        value: systemd_trim(value).to_owned(),
                        line: line_no,
                        dialect,
                        raw,
                    }));
                }
            }
        }
        Ok(Self {
            path,
            dialect,
            elements,
            warnings,
        })
    }

    pub fn elements(&self) -> &[Element] {
        &self.elements
    }

    /// Section names in order of first appearance.
    pub fn sections(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for e in &self.elements {
            if let Element::Section { name, .. } = e {
                if !names.contains(&name.as_str()) {
                    names.push(name);
                }
            }
        }
        names
    }

    /// Every entry with its section, in file order.
    pub fn entries(&self) -> impl Iterator<Item = Located<'_>> {
        let mut section = "";
        self.elements.iter().filter_map(move |e| match e {
            Element::Section { name, .. } => {
                section = name;
                None
            }
            Element::Entry(entry) => Some(Located {
                file: &self.path,
                section,
                entry,
            }),
            Element::Trivia { .. } => None,
        })
    }

    /// Appends a section header.
    pub fn push_section(&mut self, name: &str) -> &mut Self {
        let needs_gap = !self.elements.is_empty();
        if needs_gap {
            self.elements.push(Element::Trivia {
                raw: b"\n".to_vec(),
            });
        }
        self.elements.push(Element::Section {
            name: name.to_owned(),
            raw: format!("[{name}]\n").into_bytes(),
            line: 0,
        });
        self.renumber();
        self
    }

    /// Appends `key=value` to the last section.
    pub fn push_entry(&mut self, key: &str, value: &str) -> &mut Self {
        self.elements.push(Element::Entry(Entry {
            key: key.to_owned(),
            value: value.to_owned(),
            line: 0,
            dialect: self.dialect,
            raw: format!("{key}={value}\n").into_bytes(),
        }));
        self.renumber();
        self
    }

    /// Appends a comment line.
    pub fn push_comment(&mut self, text: &str) -> &mut Self {
        self.elements.push(Element::Trivia {
            raw: format!("# {text}\n").into_bytes(),
        });
        self
    }

    /// Recomputes line numbers after edits.
    fn renumber(&mut self) {
        let mut line = 1;
        for e in &mut self.elements {
            let raw = match e {
                Element::Trivia { raw } => raw,
                Element::Section { raw, line: l, .. } => {
                    *l = line;
                    raw
                }
                Element::Entry(entry) => {
                    entry.line = line;
                    &entry.raw
                }
            };
            line += raw.iter().filter(|b| **b == b'\n').count();
        }
    }
}

impl UnitFile {
    /// The file's exact bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for e in &self.elements {
            match e {
                Element::Trivia { raw } | Element::Section { raw, .. } => out.extend(raw),
                Element::Entry(entry) => out.extend(&entry.raw),
            }
        }
        out
    }
}

/// The file as text (bytes that are not UTF-8 shown as U+FFFD; see
/// [`UnitFile::to_bytes`] for the exact bytes).
impl fmt::Display for UnitFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.to_bytes()))
    }
}

/// A unit with its drop-ins applied, queried the way systemd and quadlet
/// merge them: the base file first, then each drop-in in lexical order.
#[derive(Debug, Clone)]
pub struct Unit {
    pub name: String,
    pub files: Vec<UnitFile>,
}

impl Unit {
    pub fn new(name: impl Into<String>, base: UnitFile, dropins: Vec<UnitFile>) -> Self {
        let mut files = vec![base];
        files.extend(dropins);
        Self {
            name: name.into(),
            files,
        }
    }

    pub fn base(&self) -> &UnitFile {
        &self.files[0]
    }

    /// Every assignment of `key` in `section`, across the base and its
    /// drop-ins, after the last empty assignment (which resets a list).
    pub fn values(&self, section: &str, key: &str) -> Vec<Located<'_>> {
        let mut found = Vec::new();
        for file in &self.files {
            for located in file.entries() {
                if located.section == section && located.entry.key == key {
                    if located.entry.value.is_empty() {
                        found.clear();
                    } else {
                        found.push(located);
                    }
                }
            }
        }
        found
    }

    /// The effective single value of `key` (the last assignment wins).
    pub fn value(&self, section: &str, key: &str) -> Option<Located<'_>> {
        let mut last = None;
        for file in &self.files {
            for located in file.entries() {
                if located.section == section && located.entry.key == key {
                    last = Some(located);
                }
            }
        }
        last.filter(|l| !l.entry.value.is_empty())
    }

    /// True when a boolean key is set to a true value.
    pub fn flag(&self, section: &str, key: &str) -> bool {
        self.value(section, key)
            .is_some_and(|l| match l.entry.dialect {
                Dialect::Systemd => parse_bool(l.single()) == Some(true),
                Dialect::Quadlet => quadlet_bool(l.single()),
            })
    }

    /// Where the unit is defined, for messages that concern it as a whole.
    pub fn at(&self) -> String {
        format!("{}:1", self.base().path.display())
    }
}

/// podman's `LookupBoolean`: 1, yes, true, on (any case) are true,
/// everything else false.
pub fn quadlet_bool(value: &str) -> bool {
    ["1", "yes", "true", "on"]
        .iter()
        .any(|t| value.eq_ignore_ascii_case(t))
}

/// systemd's boolean syntax.
pub fn parse_bool(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "yes" | "y" | "true" | "t" | "on" => Some(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SAMPLE: &str = "# leading comment\n\
        [Unit]\n\
        Description=Demo \\\n\
        # a comment inside a continuation\n\
          server\n\
        ; semicolon comment\n\
        \n\
        [Service]\n\
        Environment=A=1\n\
        Environment=\n\
        Environment=B=2\n\
        Environment=C=3\n\
        Type = notify\r\n\
        ExecStart=/bin/true";

    #[test]
    fn round_trips_bytes_exactly() {
        let unit = UnitFile::parse("x.service", SAMPLE).unwrap();
        assert_eq!(unit.to_string(), SAMPLE);
        let odd: &[u8] = b"\xef\xbb\xbf[Unit]\r\nDescription=caf\xe9 \\\n\n\xff\xfe\n[Socket]\nListenStream=/run/ipc/ipc.socket\\";
        let unit = UnitFile::parse_bytes("x.socket", odd).unwrap();
        assert_eq!(unit.to_bytes(), odd);
    }

    fn value_of(name: &str, text: &str, section: &str, key: &str) -> Option<String> {
        let file = UnitFile::parse(name, text).unwrap();
        Unit::new(name, file, vec![])
            .value(section, key)
            .map(|l| l.entry.value.clone())
    }

    #[test]
    fn quadlet_joins_continuations_without_a_space() {
        let text = "[Container]\nExec=serve \\\n  --demo\\\n-v\n";
        assert_eq!(
            value_of("a.container", text, "Container", "Exec").as_deref(),
            Some("serve --demo-v")
        );
    }

    #[test]
    fn quadlet_continues_over_blank_and_comment_lines() {
        // podman skips the blank line, so Image= is swallowed by Exec=.
        let text = "[Container]\nExec=serve \\\n\n# note\nImage=x\n";
        let file = UnitFile::parse("a.container", text).unwrap();
        let unit = Unit::new("a.container", file, vec![]);
        assert_eq!(
            unit.value("Container", "Exec").unwrap().entry.value,
            "serve Image=x"
        );
        assert!(unit.value("Container", "Image").is_none());
        assert_eq!(unit.base().to_string(), text);
    }

    #[test]
    fn systemd_ends_a_continuation_at_a_blank_line_and_skips_comments() {
        let text = "[Socket]\nListenStream=/run/a \\\n\nBacklog=5\n";
        let file = UnitFile::parse("a.socket", text).unwrap();
        let unit = Unit::new("a.socket", file, vec![]);
        assert_eq!(
            unit.value("Socket", "ListenStream").unwrap().entry.value,
            "/run/a"
        );
        assert_eq!(unit.value("Socket", "Backlog").unwrap().entry.value, "5");
        let text = "[Unit]\nDescription=a\\\n# c\nb\n";
        assert_eq!(
            value_of("a.socket", text, "Unit", "Description").as_deref(),
            Some("a b")
        );
    }

    #[test]
    fn escaped_backslash_and_backslash_space_are_not_continuations_for_systemd() {
        let text = "[Unit]\nDescription=foo\\\\\nDocumentation=x\nAfter=foo\\ \nBefore=y\n";
        let file = UnitFile::parse("a.service", text).unwrap();
        let unit = Unit::new("a.service", file, vec![]);
        assert_eq!(
            unit.value("Unit", "Description").unwrap().entry.value,
            "foo\\\\"
        );
        assert_eq!(
            unit.value("Unit", "Documentation").unwrap().entry.value,
            "x"
        );
        assert_eq!(unit.value("Unit", "After").unwrap().entry.value, "foo\\");
        assert_eq!(unit.value("Unit", "Before").unwrap().entry.value, "y");
        // podman trims first, so both are continuations in a quadlet.
        let text = "[Container]\nExec=foo\\ \nImage=y\n";
        assert_eq!(
            value_of("a.container", text, "Container", "Exec").as_deref(),
            Some("fooImage=y")
        );
    }

    #[test]
    fn systemd_warns_where_it_warns_and_goes_on() {
        let text = "\u{feff}Stray=1\n[Socket]\nno equals sign\n=novalue\nListenStream=/run/ipc/ipc.socket\n";
        let file = UnitFile::parse("a.socket", text).unwrap();
        let lines: Vec<usize> = file.warnings.iter().map(|w| w.line).collect();
        assert_eq!(lines, vec![1, 1, 3, 4], "{:?}", file.warnings);
        assert!(file.warnings[0].message.contains("byte order mark"));
        assert!(file.warnings[1].message.contains("outside of any section"));
        assert!(file.warnings[2].message.contains("missing '='"));
        let unit = Unit::new("a.socket", file, vec![]);
        assert_eq!(
            unit.value("Socket", "ListenStream").unwrap().entry.value,
            "/run/ipc/ipc.socket"
        );
        assert_eq!(unit.base().to_string(), text);
        // A broken section header is an error: the unit does not load.
        let e = UnitFile::parse("a.socket", "[Socket\n").unwrap_err();
        assert_eq!(e.line, 1);
    }

    #[test]
    fn quadlet_rejects_what_podman_rejects() {
        for (text, line, what) in [
            ("\u{feff}[Container]\nImage=x\n", 1, "byte order mark"),
            ("Image=x\n[Container]\n", 1, "before any [group]"),
            (
                "[Container]\nImage=x\nnot an assignment\n",
                3,
                "not a key=value pair",
            ),
            ("[Container]\n=x\n", 2, "not a key=value pair"),
        ] {
            let e = UnitFile::parse("a.container", text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.message.contains(what), "{text:?}: {e}");
        }
        // A group header may have blanks after it, as podman accepts.
        assert!(UnitFile::parse("a.container", "[Container] \t\nImage=x\n").is_ok());
    }

    #[test]
    fn quadlet_unquotes_single_values_only() {
        let text = "[Container]\nSecurityLabelType=\"ipc_t\"\nVolume=\"/a:/a\"\n";
        let file = UnitFile::parse("a.container", text).unwrap();
        let unit = Unit::new("a.container", file, vec![]);
        assert_eq!(
            unit.value("Container", "SecurityLabelType")
                .unwrap()
                .single(),
            "ipc_t"
        );
        assert_eq!(
            unit.values("Container", "Volume")[0].entry.value,
            "\"/a:/a\""
        );
        let file = UnitFile::parse("a.socket", "[Unit]\nDescription=\"x\"\n").unwrap();
        let unit = Unit::new("a.socket", file, vec![]);
        assert_eq!(unit.value("Unit", "Description").unwrap().single(), "\"x\"");
    }

    #[test]
    fn non_utf8_is_a_warning_with_its_line() {
        let bytes = b"[Container]\nImage=x\nEnvironment=A=\xff\n";
        let file = UnitFile::parse_bytes("a.container", bytes).unwrap();
        assert_eq!(file.warnings.len(), 1);
        assert_eq!(file.warnings[0].line, 3);
        assert!(
            file.warnings[0].message.contains("0xff"),
            "{:?}",
            file.warnings
        );
        assert_eq!(file.to_bytes(), bytes);
    }

    #[test]
    fn dialect_by_name() {
        assert_eq!(Dialect::of(Path::new("/x/a.container")), Dialect::Quadlet);
        assert_eq!(
            Dialect::of(Path::new("/x/qm.container.d/10.conf")),
            Dialect::Quadlet
        );
        assert_eq!(
            Dialect::of(Path::new("/x/container.d/10.conf")),
            Dialect::Quadlet
        );
        assert_eq!(
            Dialect::of(Path::new("/x/a.socket.d/10.conf")),
            Dialect::Systemd
        );
        assert_eq!(Dialect::of(Path::new("/x/a.service")), Dialect::Systemd);
    }

    #[test]
    fn logical_view_matches_systemd() {
        let unit = Unit::new(
            "x.service",
            UnitFile::parse("x.service", SAMPLE).unwrap(),
            vec![],
        );
        let desc = unit.value("Unit", "Description").unwrap();
        // systemd: the backslash becomes a space, the next line is joined
        // as it is, and the whole is trimmed.
        assert_eq!(desc.entry.value, "Demo  server");
        assert_eq!(desc.entry.line, 3);
        let env: Vec<_> = unit
            .values("Service", "Environment")
            .iter()
            .map(|l| l.entry.value.clone())
            .collect();
        assert_eq!(
            env,
            vec!["B=2", "C=3"],
            "an empty assignment resets the list"
        );
        assert_eq!(unit.value("Service", "Type").unwrap().entry.value, "notify");
        assert_eq!(unit.value("Service", "Type").unwrap().entry.line, 13);
    }

    #[test]
    fn errors_carry_file_and_line() {
        let e = UnitFile::parse("a.container", "[Container]\nImage=x\nnot an assignment\n")
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("a.container:3: \"not an assignment\""),
            "{e}"
        );
        let e = UnitFile::parse("a.socket", "[Socket\n").unwrap_err();
        assert!(e.message.contains("section header"));
    }

    #[test]
    fn dropins_override_and_reset() {
        let base =
            UnitFile::parse("q.container", "[Container]\nVolume=/a:/a\nNetwork=host\n").unwrap();
        let d1 = UnitFile::parse(
            "q.container.d/10.conf",
            "[Container]\nVolume=/b:/b\nNetwork=none\n",
        )
        .unwrap();
        let unit = Unit::new("q.container", base, vec![d1]);
        let vols: Vec<_> = unit
            .values("Container", "Volume")
            .iter()
            .map(|l| l.entry.value.as_str())
            .collect();
        assert_eq!(vols, vec!["/a:/a", "/b:/b"]);
        let net = unit.value("Container", "Network").unwrap();
        assert_eq!(
            (net.entry.value.as_str(), net.at()),
            ("none", "q.container.d/10.conf:3".to_string())
        );
    }

    #[test]
    fn built_files_print_and_parse_consistently() {
        let mut unit = UnitFile::new("x.socket");
        unit.push_section("Unit").push_entry("Description", "d");
        unit.push_section("Socket")
            .push_entry("ListenStream", "%t/ipc/ipc.socket");
        let text = unit.to_string();
        assert_eq!(
            text,
            "[Unit]\nDescription=d\n\n[Socket]\nListenStream=%t/ipc/ipc.socket\n"
        );
        let parsed = UnitFile::parse("x.socket", &text).unwrap();
        assert_eq!(parsed.to_string(), text);
        let entries: Vec<_> = parsed
            .entries()
            .map(|l| (l.section, l.entry.line))
            .collect();
        let built: Vec<_> = unit.entries().map(|l| (l.section, l.entry.line)).collect();
        assert_eq!(entries, built);
    }

    fn line_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[A-Za-z]{1,8}".prop_map(|s| format!("[{s}]")),
            "[#;][ -~]{0,20}",
            ("[A-Za-z]{1,8}", "[ -~]{0,20}").prop_map(|(k, v)| format!("{k}={v}")),
            ("[A-Za-z]{1,8}", "[ -~]{0,10}", "[ -~]{0,10}")
                .prop_map(|(k, a, b)| format!("{k}={a}\\\n{b}")),
            " +\t*".prop_map(|s| s.to_string()),
        ]
    }

    proptest! {
        /// Whatever parses prints back to the same bytes.
        #[test]
        fn parse_then_print_is_identity(
            lines in proptest::collection::vec(line_strategy(), 0..30),
            eol in prop_oneof![Just("\n"), Just("\r\n")],
            final_newline in any::<bool>(),
        ) {
            let mut text = String::from("[Start]\n");
            text.push_str(&lines.join(eol));
            if final_newline { text.push_str(eol); }
            for name in ["p.service", "p.container"] {
                if let Ok(unit) = UnitFile::parse(name, &text) {
                    prop_assert_eq!(unit.to_string(), text.clone());
                }
            }
        }

        /// Arbitrary text never panics the parser.
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = UnitFile::parse("p.service", &text);
            let _ = UnitFile::parse("p.container", &text);
        }

        /// Any bytes parse back to the same bytes, or give an error.
        #[test]
        fn arbitrary_bytes_round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut text = b"[Start]\n".to_vec();
            text.extend(&bytes);
            for name in ["p.service", "p.container"] {
                if let Ok(unit) = UnitFile::parse_bytes(name, &text) {
                    prop_assert_eq!(unit.to_bytes(), text.clone());
                }
            }
        }
    }
}
