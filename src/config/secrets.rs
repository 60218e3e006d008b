//! Secrets: the [`Secret`] type that never shows its value, and where secrets come from
//! besides the config file (the environment, systemd credentials, files under
//! `secrets.keys_dir`), including Firebase's service-account key and emulator.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize, Serializer};

use super::store::check_emulator_host;
use super::{Config, ConfigError, FIREBASE_KEY_FILE};

/// A secret value: never shown in logs, errors or `check-config` output.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "<redacted>" })
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(if self.0.is_empty() { "" } else { "<redacted>" })
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsConfig {
    /// Directory of secret files, one secret per file, named as in [`SECRET_SOURCES`].
    pub keys_dir: PathBuf,
}

impl Default for SecretsConfig {
    fn default() -> Self {
        Self { keys_dir: "keys".into() }
    }
}

/// Where each secret may come from besides the config file: (file name under
/// `keys_dir` and `$CREDENTIALS_DIRECTORY`, environment variable).
pub const SECRET_SOURCES: [(&str, &str); 3] = [
    ("slack_token", "SMARTHOMED_SLACK_TOKEN"),
    ("mqtt_password", "SMARTHOMED_MQTT_PASSWORD"),
    ("weather_api_key", "SMARTHOMED_WEATHER_API_KEY"),
];

/// The parts of the process environment that secrets may come from, passed in
/// explicitly so that tests do not depend on the caller's environment.
#[derive(Debug, Clone, Default)]
pub struct SecretEnv {
    pub vars: Vec<(String, String)>,
    pub credentials_dir: Option<PathBuf>,
    /// $GOOGLE_APPLICATION_CREDENTIALS, Google's usual place for a key's path.
    pub google_application_credentials: Option<PathBuf>,
    /// $FIRESTORE_EMULATOR_HOST, Google's usual way to point clients at the emulator.
    pub firestore_emulator_host: Option<String>,
}

impl SecretEnv {
    pub fn from_process() -> Self {
        Self {
            vars: SECRET_SOURCES
                .iter()
                .filter_map(|(_, var)| std::env::var(var).ok().map(|v| (var.to_string(), v)))
                .collect(),
            credentials_dir: std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
            google_application_credentials: std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS")
                .filter(|path| !path.is_empty())
                .map(PathBuf::from),
            firestore_emulator_host: std::env::var("FIRESTORE_EMULATOR_HOST").ok().filter(|host| !host.is_empty()),
        }
    }

    fn var(&self, name: &str) -> Option<&str> {
        self.vars.iter().find(|(key, value)| key == name && !value.is_empty()).map(|(_, value)| value.as_str())
    }
}

impl Config {
    /// Fills empty secrets from, in order: the environment variable, the systemd
    /// credential, the file under `secrets.keys_dir`. A secret set in the config file
    /// is overridden by any of these.
    pub fn resolve_secrets(&mut self, env: &SecretEnv) -> Result<(), ConfigError> {
        for (name, var) in SECRET_SOURCES {
            let found = match env.var(var) {
                Some(value) => Some(value.to_owned()),
                None => {
                    let mut dirs: Vec<&Path> = Vec::new();
                    if let Some(dir) = &env.credentials_dir {
                        dirs.push(dir);
                    }
                    dirs.push(&self.secrets.keys_dir);
                    read_secret_file(name, &dirs)?
                }
            };
            if let Some(value) = found {
                *self.secret_mut(name) = Secret::new(value);
            }
        }
        self.resolve_firebase(env)
    }

    /// Finds the service-account key and the emulator (see [`FirebaseConfig`](super::FirebaseConfig));
    /// whether the key can be used is checked with the other named files, before any
    /// child starts (`supervisor::check_named_files`).
    fn resolve_firebase(&mut self, env: &SecretEnv) -> Result<(), ConfigError> {
        let firebase = &mut self.firebase;
        if firebase.firestore_emulator_host.is_empty()
            && let Some(host) = &env.firestore_emulator_host
        {
            check_emulator_host(host)?;
            firebase.firestore_emulator_host = host.clone();
        }
        if firebase.credentials.as_os_str().is_empty() {
            let from_credentials = env.credentials_dir.as_ref().map(|dir| dir.join(FIREBASE_KEY_FILE));
            firebase.credentials = env
                .google_application_credentials
                .clone()
                // An empty credential file counts as unset, as for every secret.
                .or(from_credentials.filter(|path| path.metadata().is_ok_and(|meta| meta.len() > 0)))
                .unwrap_or_else(|| self.secrets.keys_dir.join(FIREBASE_KEY_FILE));
        }
        Ok(())
    }

    fn secret_mut(&mut self, name: &str) -> &mut Secret {
        match name {
            "slack_token" => &mut self.slack.token,
            "mqtt_password" => &mut self.mqtt.password,
            "weather_api_key" => &mut self.weather.api_key,
            other => unreachable!("SECRET_SOURCES names unknown secret {other}"),
        }
    }
}

fn read_secret_file(name: &'static str, dirs: &[&Path]) -> Result<Option<String>, ConfigError> {
    for dir in dirs {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let value = text.trim();
                if !value.is_empty() {
                    return Ok(Some(value.to_owned()));
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(ConfigError::SecretFile { name, path, source }),
        }
    }
    Ok(None)
}
