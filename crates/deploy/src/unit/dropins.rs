//! Drop-in resolution as systemd and quadlet do it.
//!
//! For a unit `foo-bar.container`, drop-ins come from the directories
//! `container.d/` (every unit of the type), `foo-.container.d/` (every unit
//! with that dash prefix) and `foo-bar.container.d/`, in every search
//! directory. Only `*.conf` files count. A file name seen in an earlier
//! search directory masks the same name in later ones, and within one search
//! directory the more specific directory wins. The survivors apply in
//! lexical order of their file names.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The drop-in directory names for `unit_name`, least specific first.
pub fn dropin_dirs(unit_name: &str) -> Vec<String> {
    let Some((stem, unit_type)) = unit_name.rsplit_once('.') else {
        return vec![format!("{unit_name}.d")];
    };
    let mut dirs = vec![format!("{unit_type}.d")];
    for (i, c) in stem.char_indices() {
        if c == '-' && i + 1 < stem.len() {
            dirs.push(format!("{}.{unit_type}.d", &stem[..=i]));
        }
    }
    dirs.push(format!("{unit_name}.d"));
    dirs
}

/// The drop-in files that apply to `unit_name`, in the order they apply.
/// `search_dirs` are in priority order (first wins).
pub fn resolve_dropins(search_dirs: &[PathBuf], unit_name: &str) -> Vec<PathBuf> {
    let names = dropin_dirs(unit_name);
    let mut chosen: BTreeMap<String, PathBuf> = BTreeMap::new();
    for search in search_dirs {
        let mut here: BTreeMap<String, PathBuf> = BTreeMap::new();
        // Least specific first, so more specific directories overwrite.
        for dir_name in &names {
            for file in conf_files(&search.join(dir_name)) {
                if let Some(name) = file.file_name().and_then(|n| n.to_str()) {
                    here.insert(name.to_owned(), file.clone());
                }
            }
        }
        for (name, file) in here {
            chosen.entry(name).or_insert(file);
        }
    }
    chosen.into_values().collect()
}

fn conf_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = read
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "conf") && p.is_file())
        .collect();
    files.sort();
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropin_directory_names() {
        assert_eq!(
            dropin_dirs("foo-bar-baz.container"),
            vec![
                "container.d",
                "foo-.container.d",
                "foo-bar-.container.d",
                "foo-bar-baz.container.d"
            ]
        );
        assert_eq!(
            dropin_dirs("qm.container"),
            vec!["container.d", "qm.container.d"]
        );
    }

    #[test]
    fn lexical_order_masking_and_priority() {
        let etc = tempfile::tempdir().unwrap();
        let usr = tempfile::tempdir().unwrap();
        let write = |root: &Path, rel: &str| {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, "[Container]\n").unwrap();
        };
        write(usr.path(), "qm.container.d/10-a.conf");
        write(usr.path(), "qm.container.d/30-c.conf");
        write(etc.path(), "qm.container.d/10-a.conf");
        write(etc.path(), "container.d/20-b.conf");
        write(etc.path(), "qm.container.d/notes.txt");
        let found = resolve_dropins(
            &[etc.path().to_owned(), usr.path().to_owned()],
            "qm.container",
        );
        assert_eq!(
            found,
            vec![
                etc.path().join("qm.container.d/10-a.conf"),
                etc.path().join("container.d/20-b.conf"),
                usr.path().join("qm.container.d/30-c.conf"),
            ]
        );
    }
}
