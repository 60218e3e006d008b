//! `smarthomed user add|passwd|remove`: edits the broker's accounts (`[[broker.users]]`)
//! in the config file as an operator would by hand, keeping its comments and layout. The
//! result is checked as the daemon will read it before it replaces the file, so an edit
//! never leaves a config the daemon refuses; the daemon takes it on SIGHUP.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use toml_edit::{ArrayOfTables, DocumentMut, Item, Table, value};

use crate::config::{Config, INTERNAL_MQTT_USER};

#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    #[error("cannot read {path}: {source}")]
    Read { path: std::path::PathBuf, source: std::io::Error },
    #[error("{path} is not valid TOML: {message}")]
    Parse { path: std::path::PathBuf, message: String },
    #[error("[broker] users in {0} is not an array of tables ([[broker.users]])")]
    Shape(std::path::PathBuf),
    #[error("an account named {0:?} exists already (use `smarthomed user passwd`)")]
    Exists(String),
    #[error("no account is named {0:?}")]
    Missing(String),
    #[error(
        "account names must be 1 to 64 characters without spaces or control characters, and not {INTERNAL_MQTT_USER:?}"
    )]
    BadName,
    #[error("the edited config would not be accepted, so it was not written: {0}")]
    Invalid(String),
    #[error("cannot write {path}: {source}")]
    Write { path: std::path::PathBuf, source: std::io::Error },
}

/// What to do to the account `name`.
pub enum Edit<'a> {
    Add { name: &'a str, password_hash: &'a str },
    SetPassword { name: &'a str, password_hash: &'a str },
    Remove { name: &'a str },
}

/// Applies `edit` to the config text; returns the new text.
pub fn edit_text(text: &str, edit: &Edit<'_>, origin: &Path) -> Result<String, AccountsError> {
    let mut document: DocumentMut = text.parse().map_err(|err: toml_edit::TomlError| AccountsError::Parse {
        path: origin.to_owned(),
        message: err.to_string(),
    })?;
    let broker = document.entry("broker").or_insert(Item::Table(Table::new()));
    let broker = broker.as_table_mut().ok_or_else(|| AccountsError::Shape(origin.to_owned()))?;
    let users = broker.entry("users").or_insert(Item::ArrayOfTables(ArrayOfTables::new()));
    let users = users.as_array_of_tables_mut().ok_or_else(|| AccountsError::Shape(origin.to_owned()))?;
    let position = |users: &ArrayOfTables, name: &str| {
        users.iter().position(|user| user.get("name").and_then(Item::as_str) == Some(name))
    };
    match *edit {
        Edit::Add { name, password_hash } => {
            if name.is_empty()
                || name.chars().count() > 64
                || name == INTERNAL_MQTT_USER
                || name.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(AccountsError::BadName);
            }
            if position(users, name).is_some() {
                return Err(AccountsError::Exists(name.to_owned()));
            }
            let mut user = Table::new();
            user.insert("name", value(name));
            user.insert("password_hash", value(password_hash));
            users.push(user);
        }
        Edit::SetPassword { name, password_hash } => {
            let at = position(users, name).ok_or_else(|| AccountsError::Missing(name.to_owned()))?;
            if let Some(user) = users.get_mut(at) {
                user.insert("password_hash", value(password_hash));
            }
        }
        Edit::Remove { name } => {
            let at = position(users, name).ok_or_else(|| AccountsError::Missing(name.to_owned()))?;
            users.remove(at);
        }
    }
    let edited = document.to_string();
    Config::parse(&edited, origin).map_err(|err| AccountsError::Invalid(err.to_string()))?;
    Ok(edited)
}

/// Applies `edit` to the file at `path`, replacing it atomically with its permissions kept.
pub fn edit_file(path: &Path, edit: &Edit<'_>) -> Result<(), AccountsError> {
    let text = std::fs::read_to_string(path).map_err(|source| AccountsError::Read { path: path.to_owned(), source })?;
    let edited = edit_text(&text, edit, path)?;
    let write_error = |source| AccountsError::Write { path: path.to_owned(), source };
    let permissions = std::fs::metadata(path).map_err(write_error)?.permissions();
    let mut staged = path.as_os_str().to_owned();
    staged.push(".edit");
    let staged = std::path::PathBuf::from(staged);
    // Owner-only until it has the original's permissions: the file may hold secrets.
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&staged)
        .and_then(|mut file| file.write_all(edited.as_bytes()).and_then(|()| file.sync_all()))
        .map_err(write_error)?;
    std::fs::set_permissions(&staged, permissions).map_err(write_error)?;
    // Ownership too, where we may (root editing /etc/smarthomed/smarthomed.toml).
    if let Ok(metadata) = std::fs::metadata(path) {
        use std::os::unix::fs::MetadataExt;
        let _ = std::os::unix::fs::chown(&staged, Some(metadata.uid()), Some(metadata.gid()));
    }
    std::fs::rename(&staged, path).map_err(write_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$hPQ3E2XEsIm3XvT9hOwBz7Sm4F3hx7T4SUp3Fx3N5H4";

    #[test]
    fn accounts_are_added_changed_and_removed_keeping_comments() {
        let origin = Path::new("test.toml");
        let text = "# my home\n[broker]\n# the LAN\nlisten = \"127.0.0.1:1883\"\n";
        let added = edit_text(text, &Edit::Add { name: "alice", password_hash: HASH }, origin).unwrap();
        assert!(added.starts_with("# my home\n[broker]\n# the LAN\n"), "{added}");
        assert!(added.contains("[[broker.users]]\nname = \"alice\""), "{added}");
        assert!(matches!(
            edit_text(&added, &Edit::Add { name: "alice", password_hash: HASH }, origin),
            Err(AccountsError::Exists(_))
        ));
        let other = HASH.replace("hPQ3", "xPQ3");
        let changed = edit_text(&added, &Edit::SetPassword { name: "alice", password_hash: &other }, origin).unwrap();
        assert!(changed.contains(&other) && !changed.contains(HASH));
        let removed = edit_text(&changed, &Edit::Remove { name: "alice" }, origin).unwrap();
        assert!(!removed.contains("alice"));
        assert!(matches!(edit_text(&removed, &Edit::Remove { name: "bob" }, origin), Err(AccountsError::Missing(_))));

        // The last account of a LAN listener cannot go: no one could log in.
        let lan = added.replace("127.0.0.1:1883", "0.0.0.0:1883");
        let err = edit_text(&lan, &Edit::Remove { name: "alice" }, origin).unwrap_err();
        assert!(matches!(err, AccountsError::Invalid(_)), "{err}");
    }

    #[test]
    fn reserved_or_odd_names_and_edits_the_daemon_would_refuse_are_not_written() {
        let origin = Path::new("test.toml");
        for name in ["", "smarthomed", "two words", "tab\tname"] {
            assert!(matches!(
                edit_text("", &Edit::Add { name, password_hash: HASH }, origin),
                Err(AccountsError::BadName)
            ));
        }
        let err = edit_text("", &Edit::Add { name: "alice", password_hash: "plain" }, origin).unwrap_err();
        assert!(matches!(err, AccountsError::Invalid(_)), "{err}");
    }
}
