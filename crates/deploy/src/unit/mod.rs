//! A lossless model of systemd unit files and podman quadlet files.
//!
//! Every physical line is kept with its exact bytes, so printing a parsed
//! file gives back the same bytes. Queries see the logical content the way
//! systemd does: comments (`#`, `;`) ignored, `\` continuations joined with
//! a space (comment lines inside a continuation skipped), whitespace around
//! keys and values trimmed, and for list-valued keys an empty assignment
//! resetting the list.

mod dropins;
mod specifiers;
mod words;

pub use dropins::{dropin_dirs, resolve_dropins};
pub use specifiers::expand_system_specifiers;
pub use words::split_words;

use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct ParseError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// One logical element of a unit file with the raw text it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Element {
    /// Blank lines and comments outside any entry, verbatim.
    Trivia {
        raw: String,
    },
    Section {
        name: String,
        raw: String,
        line: usize,
    },
    Entry(Entry),
}

/// One `Key=Value` assignment, possibly spread over continuation lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    /// The logical value: continuations joined, whitespace trimmed.
    pub value: String,
    /// First physical line, 1-based.
    pub line: usize,
    raw: String,
}

/// A parsed unit file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitFile {
    /// Where the file came from (for messages); may be a display name.
    pub path: PathBuf,
    elements: Vec<Element>,
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
}

/// Splits `text` into physical lines, each with its terminator.
fn physical_lines(text: &str) -> impl Iterator<Item = &str> {
    text.split_inclusive('\n')
}

fn strip_eol(line: &str) -> &str {
    line.trim_end_matches(['\n', '\r'])
}

fn is_comment(trimmed: &str) -> bool {
    trimmed.starts_with('#') || trimmed.starts_with(';')
}

impl UnitFile {
    /// An empty file, to be filled with [`UnitFile::push_section`] and
    /// [`UnitFile::push_entry`].
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            elements: Vec::new(),
        }
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Self, ParseError> {
        let text = std::fs::read_to_string(path).map_err(|e| ParseError {
            file: path.display().to_string(),
            line: 0,
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(path, &text)
    }

    /// Parses `text`. `path` is only used in error messages and queries.
    pub fn parse(path: impl Into<PathBuf>, text: &str) -> Result<Self, ParseError> {
        let path = path.into();
        let error = |line: usize, message: String| ParseError {
            file: path.display().to_string(),
            line,
            message,
        };
        let mut elements = Vec::new();
        let mut in_section = false;
        let mut lines = physical_lines(text).enumerate().peekable();
        while let Some((index, raw_line)) = lines.next() {
            let line_no = index + 1;
            let content = strip_eol(raw_line);
            let trimmed = content.trim();
            if trimmed.is_empty() || is_comment(trimmed) {
                elements.push(Element::Trivia {
                    raw: raw_line.to_owned(),
                });
                continue;
            }
            if trimmed.starts_with('[') {
                let Some(name) = trimmed.strip_prefix('[').and_then(|t| t.strip_suffix(']')) else {
                    return Err(error(
                        line_no,
                        format!("invalid section header {trimmed:?}"),
                    ));
                };
                if name.is_empty() || name.contains(['[', ']']) {
                    return Err(error(line_no, format!("invalid section name {name:?}")));
                }
                in_section = true;
                elements.push(Element::Section {
                    name: name.to_owned(),
                    raw: raw_line.to_owned(),
                    line: line_no,
                });
                continue;
            }
            if !in_section {
                return Err(error(
                    line_no,
                    format!("assignment outside of any section: {trimmed:?}"),
                ));
            }
            // Gather continuation lines: a line ending in '\' goes on.
            let mut raw = raw_line.to_owned();
            let mut logical = String::new();
            let mut current = trimmed.to_owned();
            loop {
                match current.strip_suffix('\\') {
                    Some(head) => {
                        logical.push_str(head);
                        logical.push(' ');
                        // Comment lines inside a continuation are skipped.
                        let mut next = None;
                        for (_, raw_next) in lines.by_ref() {
                            raw.push_str(raw_next);
                            let t = strip_eol(raw_next).trim();
                            if is_comment(t) {
                                continue;
                            }
                            next = Some(t.to_owned());
                            break;
                        }
                        match next {
                            Some(t) => current = t,
                            None => break,
                        }
                    }
                    None => {
                        logical.push_str(&current);
                        break;
                    }
                }
            }
            let Some((key, value)) = logical.split_once('=') else {
                return Err(error(line_no, format!("missing '=' in {trimmed:?}")));
            };
            let key = key.trim();
            if key.is_empty() || key.contains(char::is_whitespace) {
                return Err(error(line_no, format!("invalid key {key:?}")));
            }
            elements.push(Element::Entry(Entry {
                key: key.to_owned(),
                value: value.trim().to_owned(),
                line: line_no,
                raw,
            }));
        }
        Ok(Self { path, elements })
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
            self.elements.push(Element::Trivia { raw: "\n".into() });
        }
        self.elements.push(Element::Section {
            name: name.to_owned(),
            raw: format!("[{name}]\n"),
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
            raw: format!("{key}={value}\n"),
        }));
        self.renumber();
        self
    }

    /// Appends a comment line.
    pub fn push_comment(&mut self, text: &str) -> &mut Self {
        self.elements.push(Element::Trivia {
            raw: format!("# {text}\n"),
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
            line += raw.matches('\n').count();
        }
    }
}

impl fmt::Display for UnitFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.elements {
            match e {
                Element::Trivia { raw } | Element::Section { raw, .. } => f.write_str(raw)?,
                Element::Entry(entry) => f.write_str(&entry.raw)?,
            }
        }
        Ok(())
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
            .is_some_and(|l| parse_bool(&l.entry.value) == Some(true))
    }

    /// Where the unit is defined, for messages that concern it as a whole.
    pub fn at(&self) -> String {
        format!("{}:1", self.base().path.display())
    }
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
    }

    #[test]
    fn logical_view_matches_systemd() {
        let unit = Unit::new(
            "x.service",
            UnitFile::parse("x.service", SAMPLE).unwrap(),
            vec![],
        );
        let desc = unit.value("Unit", "Description").unwrap();
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
        assert_eq!(
            e.to_string(),
            "a.container:3: missing '=' in \"not an assignment\""
        );
        let e = UnitFile::parse("a.socket", "Key=value\n").unwrap_err();
        assert_eq!(e.line, 1);
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
            if let Ok(unit) = UnitFile::parse("p.service", &text) {
                prop_assert_eq!(unit.to_string(), text);
            }
        }

        /// Arbitrary text never panics the parser.
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = UnitFile::parse("p.service", &text);
        }
    }
}
