//! The one TOML configuration file, its defaults and its validation.
//!
//! Every setting has a default so the daemon runs with no file at all. Unknown keys
//! and bad values are errors that name the key (`broker.listen: ...`), because a typo
//! in a config file that is silently ignored is a support call later. Secrets never
//! print: [`Secret`] redacts itself in `Debug` and in the effective config that
//! `check-config` shows, and may come from the environment, systemd credentials or
//! files under `keys/` instead of the file (see [`Config::resolve_secrets`]).
//!
//! One file per section holds its struct, its defaults and its checks; this one
//! loads, parses and checks across sections.

mod broker;
mod mqtt;
mod processor;
mod schedule;
mod secrets;
mod slack;
mod store;
mod supervisor;
mod weather;

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use broker::{
    AccessPolicy, AclAccess, AclPermission, AclRule, Anonymous, BrokerConfig, BrokerUser, INTERNAL_MQTT_USER,
};
pub use mqtt::MqttConfig;
pub use processor::{HomeAssistantConfig, Language, ProcessorConfig, Rules};
pub use schedule::ScheduleConfig;
pub use secrets::{SECRET_SOURCES, Secret, SecretEnv, SecretsConfig};
pub use slack::SlackConfig;
pub use store::{Backend, FIREBASE_KEY_FILE, FirebaseConfig, StoreConfig};
pub use supervisor::{MetricsConfig, SupervisorConfig};
pub use weather::WeatherConfig;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {key}: {message}")]
    Parse { path: PathBuf, key: String, message: String },
    #[error("{key}: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("cannot read secret {name} from {path}: {source}")]
    SecretFile { name: &'static str, path: PathBuf, source: std::io::Error },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, reason: reason.into() }
}

/// A numeric setting: its key, its value and the range it must fall in, so that no
/// value check-config accepts can overflow a duration, a capacity or an allocation at
/// run time.
type Bound = (&'static str, u64, RangeInclusive<u64>);

const MIB: u64 = 1024 * 1024;
const HOUR_MS: u64 = 3_600_000;
const DAY_SECS: u64 = 86_400;

fn count(value: usize) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub broker: BrokerConfig,
    pub mqtt: MqttConfig,
    pub slack: SlackConfig,
    pub store: StoreConfig,
    pub firebase: FirebaseConfig,
    pub processor: ProcessorConfig,
    pub schedule: ScheduleConfig,
    pub weather: WeatherConfig,
    pub supervisor: SupervisorConfig,
    pub secrets: SecretsConfig,
    pub homeassistant: HomeAssistantConfig,
    pub metrics: MetricsConfig,
}

impl Config {
    /// Reads `path`, or returns the defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let deserializer = toml::Deserializer::parse(text).map_err(|err| ConfigError::Parse {
            path: origin.to_owned(),
            key: String::new(),
            message: err.to_string().trim().to_owned(),
        })?;
        let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|err| ConfigError::Parse {
            path: origin.to_owned(),
            key: err.path().to_string(),
            message: err.into_inner().to_string().trim().to_owned(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Every numeric setting, section by section.
    fn bounded_settings(&self) -> Vec<Bound> {
        [
            self.broker.bounds(),
            self.mqtt.bounds(),
            self.slack.bounds(),
            self.firebase.bounds(),
            self.processor.bounds(),
            self.weather.bounds(),
            self.schedule.bounds(),
            self.supervisor.bounds(),
        ]
        .concat()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (key, value, range) in self.bounded_settings() {
            if !range.contains(&value) {
                return Err(invalid(key, format!("must be from {} to {}", range.start(), range.end())));
            }
        }
        self.supervisor.validate()?;
        self.metrics.validate()?;
        self.homeassistant.validate()?;
        self.processor.validate()?;
        self.schedule.validate()?;
        self.firebase.validate(self.store.backend)?;
        self.weather.validate()?;
        self.slack.validate()?;
        self.broker.validate()?;
        self.mqtt.validate(self.broker.embedded)
    }

    /// The effective config as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|err| format!("# cannot render: {err}\n"))
    }

    /// The keys (`section.key`) whose values differ in `other`, secrets included
    /// (named, never shown).
    pub fn changed_keys(&self, other: &Config) -> Vec<String> {
        let table = |config: &Config| match toml::Value::try_from(config) {
            Ok(toml::Value::Table(table)) => table,
            _ => toml::map::Map::new(),
        };
        let (old, new) = (table(self), table(other));
        let mut changed = Vec::new();
        for (section, old_section) in &old {
            let Some(new_section) = new.get(section) else { continue };
            match (old_section, new_section) {
                (toml::Value::Table(old_keys), toml::Value::Table(new_keys)) => {
                    let keys: std::collections::BTreeSet<&String> = old_keys.keys().chain(new_keys.keys()).collect();
                    for key in keys {
                        if old_keys.get(key) != new_keys.get(key) {
                            changed.push(format!("{section}.{key}"));
                        }
                    }
                }
                (old_value, new_value) if old_value != new_value => changed.push(section.clone()),
                _ => {}
            }
        }
        for (same, key) in [
            (self.slack.token == other.slack.token, "slack.token"),
            (self.mqtt.password == other.mqtt.password, "mqtt.password"),
            (self.weather.api_key == other.weather.api_key, "weather.api_key"),
        ] {
            if !same && !changed.iter().any(|changed| changed == key) {
                changed.push(key.to_owned());
            }
        }
        changed
    }
}

impl Config {
    /// This config with what a reload applies ([`reloadable`]) taken from `new`; the
    /// rest stays as it was, so the next reload names it again.
    pub fn with_reloaded(&self, new: &Config) -> Config {
        let mut kept = self.clone();
        kept.slack = SlackConfig {
            queue_capacity: self.slack.queue_capacity,
            coalesce_window_secs: self.slack.coalesce_window_secs,
            ..new.slack.clone()
        };
        kept.schedule = new.schedule.clone();
        kept.weather = new.weather.clone();
        kept.broker.users = new.broker.users.clone();
        kept
    }
}

/// Whether a changed key takes effect on SIGHUP, without a restart: Slack (the
/// supervisor), the accounts (the broker), the schedules' settings (the processor's
/// engine starts over) and the weather (the syncer's fetcher starts over).
pub fn reloadable(key: &str) -> bool {
    let fixed_at_start = ["slack.queue_capacity", "slack.coalesce_window_secs"];
    ["slack.", "schedule.", "weather."].iter().any(|section| key.starts_with(section)) && !fixed_at_start.contains(&key)
        || key == "broker.users"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    fn error_of(text: &str) -> String {
        parse(text).expect_err("config should be rejected").to_string()
    }

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.broker.listen, "127.0.0.1:1883".parse().unwrap());
        assert_eq!(config.broker.ws_listen, "127.0.0.1:8083".parse().unwrap());
        assert_eq!(config.slack.channel, "#server");
        assert_eq!(config.slack.api_url, "https://slack.com/api");
        assert!(config.slack.token.is_empty());
        assert_eq!(config.store.dir, PathBuf::from("data"));
        assert!(config.broker.embedded);
    }

    #[test]
    fn unknown_keys_are_named_with_their_section() {
        let err = error_of("[broker]\nlisen = \"127.0.0.1:1\"\n");
        assert!(err.contains("broker.lisen"), "{err}");
        let err = error_of("[brokr]\n");
        assert!(err.contains("brokr"), "{err}");
        let err = error_of("[slack]\nchanel = \"#x\"\n");
        assert!(err.contains("slack.chanel"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, key) in [
            ("[broker]\nlisten = \"not an address\"", "broker.listen"),
            ("[broker]\nws_listen = 8083", "broker.ws_listen"),
            ("[slack]\nchannel = 5", "slack.channel"),
            ("[store]\ndir = []", "store.dir"),
            ("[supervisor]\nrestart_limit = -1", "supervisor.restart_limit"),
            ("[broker]\nanonymous = \"sometimes\"", "broker.anonymous"),
        ] {
            let err = error_of(text);
            assert!(err.contains(key), "{text:?} gave {err}");
        }
    }

    #[test]
    fn semantic_errors_name_the_key() {
        for (text, key) in [
            ("[supervisor]\nrestart_limit = 0", "supervisor.restart_limit"),
            ("[supervisor]\nbackoff_initial_ms = 10\nbackoff_max_ms = 5", "supervisor.backoff_max_ms"),
            ("[slack]\napi_url = \"ftp://x\"", "slack.api_url"),
            ("[slack]\napi_url = \"not a url\"", "slack.api_url"),
            ("[slack]\nchannel = \" \"", "slack.channel"),
            ("[broker]\nembedded = false", "mqtt.url"),
            ("[schedule]\ntimezone = \"Mars/Olympus\"", "schedule.timezone"),
            ("[weather]\nlat = 37.5", "weather.lon"),
            ("[weather]\nlat = 137.5\nlon = 1.0", "weather.lat"),
            ("[weather]\ninterval_secs = 5", "weather.interval_secs"),
            ("[weather]\napi_url = \"ftp://x\"", "weather.api_url"),
            ("[mqtt]\nurl = \"http://x\"", "mqtt.url"),
            ("[mqtt]\nurl = \"mqtt://u:p@host\"", "mqtt.url"),
            ("[broker]\nlisten = \"0.0.0.0:1883\"", "broker.listen"),
            ("[broker]\nanonymous = \"never\"", "broker.listen"),
            ("[broker]\nws_listen = \"127.0.0.1:1883\"", "broker.ws_listen"),
            ("[broker]\ntls_listen = \"127.0.0.1:8083\"", "broker.tls_listen"),
            ("[broker]\nwss_listen = \"127.0.0.1:8884\"", "broker.tls_cert_file"),
            ("[broker]\ntls_listen = \"127.0.0.1:8883\"\ntls_cert_file = \"c.pem\"", "broker.tls_key_file"),
            (
                "[broker]\ntls_listen = \"0.0.0.0:8883\"\ntls_cert_file = \"c\"\ntls_key_file = \"k\"",
                "broker.tls_listen",
            ),
            ("[mqtt]\nca_file = \"ca.pem\"", "mqtt.ca_file"),
            ("[mqtt]\nurl = \"mqtt://host\"\nca_file = \"ca.pem\"", "mqtt.ca_file"),
            (
                "[broker]\nanonymous = \"always\"\n[[broker.users]]\nname = \"a\"\npassword_hash = \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$Z2l2ZW5oYXNoZ2l2ZW5oYXNo\"",
                "broker.anonymous",
            ),
            ("[[broker.users]]\nname = \"a\"\npassword_hash = \"plain\"", "broker.users.password_hash"),
            ("[[broker.users]]\nname = \"smarthomed\"\npassword_hash = \"x\"", "broker.users.name"),
        ] {
            let err = error_of(text);
            assert!(err.starts_with(key) || err.contains(&format!(": {key}")), "{text:?} gave {err}");
        }
    }

    #[test]
    fn changed_keys_name_every_difference_and_secrets_without_their_value() {
        let old = parse("[slack]\nchannel = \"#a\"\ntoken = \"old-token\"\n").unwrap();
        let new =
            parse("[slack]\nchannel = \"#b\"\ntoken = \"new-token\"\n[broker]\nlisten = \"127.0.0.1:1999\"\n").unwrap();
        assert_eq!(old.changed_keys(&new), ["broker.listen", "slack.channel", "slack.token"]);
        assert!(old.changed_keys(&old.clone()).is_empty());
        assert!(reloadable("slack.token") && reloadable("broker.users") && reloadable("schedule.timezone"));
        assert!(!reloadable("broker.listen") && !reloadable("store.dir") && !reloadable("broker.users_x"));
        assert!(!reloadable("slack.queue_capacity"));

        // What a reload applies and what `reloadable` says agree.
        let everything = parse(
            "[slack]\nchannel = \"#b\"\nqueue_capacity = 7\n[schedule]\ntimezone = \"UTC\"\n[weather]\ncity = \"Busan\"\n\
             [store]\ndir = \"elsewhere\"\n",
        )
        .unwrap();
        let applied = old.with_reloaded(&everything);
        let left = applied.changed_keys(&everything);
        assert_eq!(left, ["slack.queue_capacity", "store.dir"]);
        assert!(left.iter().all(|key| !reloadable(key)));
        assert!(old.changed_keys(&applied).iter().all(|key| reloadable(key)));
    }

    #[test]
    fn every_number_has_an_upper_bound() {
        for (text, key) in [
            ("[supervisor]\nlog_tail_lines = 4600000000000000000", "supervisor.log_tail_lines"),
            ("[slack]\nqueue_capacity = 9223372036854775807", "slack.queue_capacity"),
            ("[processor]\nqueue_capacity = 10000000000", "processor.queue_capacity"),
            ("[processor]\nmax_concurrent_handlers = 10000000000", "processor.max_concurrent_handlers"),
            ("[broker]\nmax_connections = 10000000000", "broker.max_connections"),
            ("[schedule]\ngrace_secs = 9223372036854775807", "schedule.grace_secs"),
            ("[slack]\ncoalesce_window_secs = 9223372036854775807", "slack.coalesce_window_secs"),
            ("[supervisor]\nheartbeat_timeout_secs = 1", "supervisor.heartbeat_timeout_secs"),
        ] {
            let err = error_of(text);
            assert!(err.contains(key) && err.contains("must be from"), "{text}: {err}");
        }
        let defaults = Config::default();
        assert_eq!(
            defaults.bounded_settings().iter().map(|(key, ..)| *key).collect::<std::collections::HashSet<_>>().len(),
            39
        );
    }

    #[test]
    fn acl_rules_with_a_misplaced_wildcard_are_refused() {
        for topic in ["a/#/b", "a/b+", ""] {
            let rule = format!(
                "[[broker.acl]]\nwho = \"*\"\ntopic = \"{topic}\"\naccess = \"read\"\npermission = \"allow\"\n"
            );
            let err = error_of(&rule);
            assert!(err.contains("broker.acl.topic"), "{topic}: {err}");
        }
        let fine = "[[broker.acl]]\nwho = \"*\"\ntopic = \"a/+/#\"\naccess = \"read\"\npermission = \"allow\"\n";
        assert!(parse(fine).is_ok());
    }

    #[test]
    fn a_non_loopback_listener_is_fine_with_accounts() {
        let hash = crate::password::hash("secret").unwrap();
        let text = format!(
            "[broker]\nlisten = \"0.0.0.0:1883\"\n[[broker.users]]\nname = \"esp32\"\npassword_hash = \"{hash}\"\n"
        );
        parse(&text).unwrap();
    }

    #[test]
    fn secrets_are_redacted_in_effective_config_and_debug() {
        let mut config = parse("[slack]\ntoken = \"fake-slack-token-very-secret\"\n").unwrap();
        config.mqtt.password = Secret::new("hunter2");
        let shown = format!("{}{:?}", config.to_redacted_toml(), config);
        assert!(!shown.contains("very-secret"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn effective_config_parses_back() {
        let config = parse("").unwrap();
        parse(&config.to_redacted_toml()).unwrap();
    }

    #[test]
    fn secrets_come_from_env_then_credentials_then_keys_then_file() {
        let creds = tempfile::tempdir().unwrap();
        let keys = tempfile::tempdir().unwrap();
        std::fs::write(keys.path().join("slack_token"), "from-keys\n").unwrap();
        std::fs::write(keys.path().join("mqtt_password"), "pw-from-keys").unwrap();
        let text = format!("[slack]\ntoken = \"from-file\"\n[secrets]\nkeys_dir = {:?}\n", keys.path());

        let mut config = parse(&text).unwrap();
        config.resolve_secrets(&SecretEnv::default()).unwrap();
        assert_eq!(config.slack.token.expose(), "from-keys");
        assert_eq!(config.mqtt.password.expose(), "pw-from-keys");

        std::fs::write(creds.path().join("slack_token"), "from-credentials").unwrap();
        let env = SecretEnv { credentials_dir: Some(creds.path().to_owned()), ..SecretEnv::default() };
        let mut config = parse(&text).unwrap();
        config.resolve_secrets(&env).unwrap();
        assert_eq!(config.slack.token.expose(), "from-credentials");

        let env = SecretEnv {
            vars: vec![("SMARTHOMED_SLACK_TOKEN".into(), "from-env".into())],
            credentials_dir: Some(creds.path().to_owned()),
            ..SecretEnv::default()
        };
        let mut config = parse(&text).unwrap();
        config.resolve_secrets(&env).unwrap();
        assert_eq!(config.slack.token.expose(), "from-env");
    }

    #[test]
    fn the_firebase_key_and_emulator_are_found_as_googles_tools_find_them() {
        let keys = Path::new("/srv/keys");
        let text = format!("[secrets]\nkeys_dir = {keys:?}\n");
        let resolved = |env: &SecretEnv, extra: &str| {
            let mut config = parse(&format!("{text}{extra}")).unwrap();
            config.resolve_secrets(env).unwrap();
            config.firebase
        };
        let nothing = resolved(&SecretEnv::default(), "");
        assert_eq!(nothing.credentials, keys.join(FIREBASE_KEY_FILE));
        assert_eq!(nothing.firestore_emulator_host, "");

        let creds = tempfile::tempdir().unwrap();
        let with_credential = SecretEnv { credentials_dir: Some(creds.path().to_owned()), ..SecretEnv::default() };
        assert_eq!(resolved(&with_credential, "").credentials, keys.join(FIREBASE_KEY_FILE), "absent credential");
        std::fs::write(creds.path().join(FIREBASE_KEY_FILE), "").unwrap();
        assert_eq!(resolved(&with_credential, "").credentials, keys.join(FIREBASE_KEY_FILE), "empty credential");
        std::fs::write(creds.path().join(FIREBASE_KEY_FILE), "{}").unwrap();
        assert_eq!(resolved(&with_credential, "").credentials, creds.path().join(FIREBASE_KEY_FILE));

        let google = SecretEnv {
            credentials_dir: Some(creds.path().to_owned()),
            google_application_credentials: Some("/etc/gcp/key.json".into()),
            firestore_emulator_host: Some("127.0.0.1:8080".into()),
            ..SecretEnv::default()
        };
        let from_env = resolved(&google, "");
        assert_eq!(from_env.credentials, Path::new("/etc/gcp/key.json"));
        assert_eq!(from_env.firestore_emulator_host, "127.0.0.1:8080");
        let mut config = parse(&text).unwrap();
        let bad_env = SecretEnv { firestore_emulator_host: Some("localhost".into()), ..SecretEnv::default() };
        let err = config.resolve_secrets(&bad_env).unwrap_err().to_string();
        assert!(err.contains("firebase.firestore_emulator_host") && err.contains("FIRESTORE_EMULATOR_HOST"), "{err}");
        let from_file = resolved(
            &google,
            "[firebase]\ncredentials = \"/opt/key.json\"\nfirestore_emulator_host = \"[::1]:9000\"\n",
        );
        assert_eq!(from_file.credentials, Path::new("/opt/key.json"), "the config file wins");
        assert_eq!(from_file.firestore_emulator_host, "[::1]:9000");
    }

    #[test]
    fn config_file_secret_stays_when_nothing_overrides_it() {
        let keys = tempfile::tempdir().unwrap();
        let text = format!("[slack]\ntoken = \"from-file\"\n[secrets]\nkeys_dir = {:?}\n", keys.path());
        let mut config = parse(&text).unwrap();
        config.resolve_secrets(&SecretEnv::default()).unwrap();
        assert_eq!(config.slack.token.expose(), "from-file");
    }

    #[test]
    fn unreadable_secret_file_is_an_error_without_its_content() {
        let keys = tempfile::tempdir().unwrap();
        std::fs::create_dir(keys.path().join("slack_token")).unwrap();
        let text = format!("[secrets]\nkeys_dir = {:?}\n", keys.path());
        let mut config = parse(&text).unwrap();
        let err = config.resolve_secrets(&SecretEnv::default()).unwrap_err().to_string();
        assert!(err.contains("slack_token"), "{err}");
    }

    #[test]
    fn missing_config_file_is_a_clear_error() {
        let err = Config::load(Some(Path::new("/nonexistent/smarthomed.toml"))).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/smarthomed.toml"), "{err}");
    }
}
