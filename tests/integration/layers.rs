//! The import layers of README's "Layout", kept: each module of `src/` may use only the
//! modules of lower layers (and, within the roles' layer, not another role), so that an
//! upward import fails here as it would in a crate of its own.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Each module of `src/` with what it may import (besides itself).
const ALLOWED: &[(&str, &[&[&str]])] = &[
    ("protocol", &[]),
    ("password", &[]),
    ("backoff", &[]),
    ("outage", &[]),
    ("log_limit", &[]),
    ("tls", &[]),
    ("panic_exit", &[]),
    ("memory", &[]),
    ("config", &[&["protocol", "password"]]),
    ("robot", &[&["protocol"]]),
    ("schedule", &[&["protocol"]]),
    ("accounts_file", &[&["config"]]),
    ("store", &[&["protocol", "backoff", "outage", "tls"]]),
    ("alert", &[&["config", "backoff", "outage", "tls"]]),
    ("control", &[&["alert"]]),
    ("telemetry", &[&["alert"]]),
    ("mqtt", &[&["protocol", "config", "alert", "backoff", "outage", "tls"]]),
    ("child_context", &[&["config", "alert", "control"]]),
    ("broker", &[&BELOW_THE_ROLES]),
    ("processor", &[&BELOW_THE_ROLES]),
    ("syncer", &[&BELOW_THE_ROLES]),
    // Above the roles: the supervisor checks the broker's certificates before it starts
    // anyone; `status` asks the supervisor and reads the processor's documents' names.
    ("supervisor", &[&BELOW_THE_ROLES, &["broker"]]),
    ("status_command", &[&BELOW_THE_ROLES, &["processor", "supervisor"]]),
];

/// What the roles may use: the layers below them, not one another.
const BELOW_THE_ROLES: [&str; 16] = [
    "protocol",
    "password",
    "backoff",
    "outage",
    "log_limit",
    "tls",
    "config",
    "robot",
    "schedule",
    "store",
    "alert",
    "control",
    "telemetry",
    "mqtt",
    "child_context",
    "accounts_file",
];

fn source_files(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_owned()];
    }
    let entries = std::fs::read_dir(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    entries.flatten().flat_map(|entry| source_files(&entry.path())).collect()
}

/// The top-level modules `file` names as `crate::<module>`, outside comments.
fn imports(file: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(file).unwrap_or_else(|err| panic!("{}: {err}", file.display()));
    let mut found = BTreeSet::new();
    for line in text.lines().filter(|line| !line.trim_start().starts_with("//")) {
        for (at, _) in line.match_indices("crate::") {
            let rest = &line[at + "crate::".len()..];
            let name: String = rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

#[test]
fn every_module_imports_only_from_the_layers_below() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut checked = BTreeSet::new();
    let mut upward = Vec::new();
    for (module, allowed) in ALLOWED {
        let dir = src.join(module);
        let path = if dir.is_dir() { dir } else { src.join(format!("{module}.rs")) };
        for file in source_files(&path) {
            for import in imports(&file) {
                if import != *module && !allowed.iter().any(|layer| layer.contains(&import.as_str())) {
                    upward.push(format!("{} uses crate::{import}", file.display()));
                }
            }
        }
        checked.insert(*module);
    }
    assert!(upward.is_empty(), "imports against the layers:\n{}", upward.join("\n"));

    // A new module takes its place in the list.
    let entries = std::fs::read_dir(&src).expect("src");
    let modules: BTreeSet<String> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str().map(|name| name.trim_end_matches(".rs").to_owned()))
        .filter(|name| !["lib", "main"].contains(&name.as_str()))
        .collect();
    let unlisted: Vec<&String> = modules.iter().filter(|module| !checked.contains(module.as_str())).collect();
    assert!(unlisted.is_empty(), "modules without a layer: {unlisted:?}");
}
