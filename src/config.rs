//! The one TOML configuration file, its defaults and its validation.
//!
//! Every setting has a default so the daemon runs with no file at all. Unknown keys
//! and bad values are errors that name the key (`broker.listen: ...`), because a typo
//! in a config file that is silently ignored is a support call later. Secrets never
//! print: [`Secret`] redacts itself in `Debug` and in the effective config that
//! `check-config` shows, and may come from the environment, systemd credentials or
//! files under `keys/` instead of the file (see [`Config::resolve_secrets`]).

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

use crate::processor::recommendation::Rules;
use crate::processor::texts::Language;

/// The username the daemon's own processes use on the embedded broker.
pub const INTERNAL_MQTT_USER: &str = "smarthomed";

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

/// Who may connect to the embedded broker without a username.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Anonymous {
    /// Only on listeners bound to a loopback address (the default).
    Loopback,
    Always,
    Never,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// false: no broker child; the processor and syncer use `mqtt.url`.
    pub embedded: bool,
    /// MQTT 3.1.1 and 5 over TCP.
    pub listen: SocketAddr,
    /// MQTT over WebSocket, for browser and webOS clients.
    pub ws_listen: SocketAddr,
    /// MQTT 3.1.1 and 5 over TLS (mqtts://, usually port 8883); off when absent.
    pub tls_listen: Option<SocketAddr>,
    /// MQTT over secure WebSocket (wss://); off when absent.
    pub wss_listen: Option<SocketAddr>,
    /// PEM certificate chain and private key of `tls_listen` and `wss_listen`; read
    /// again on a reload and whenever they change on disk (certificate renewals).
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub anonymous: Anonymous,
    pub users: Vec<BrokerUser>,
    pub max_payload_bytes: usize,
    pub max_connections: usize,
    pub max_inflight_messages: usize,
    pub connect_timeout_ms: u16,
    /// Messages queued per client (offline persistent sessions, slow subscribers);
    /// past it the oldest are dropped, counted and logged.
    pub max_queued_messages: usize,
    /// Subscriptions one client may hold (0: no limit).
    pub max_subscriptions_per_client: usize,
    /// Retained topics the broker keeps (0: no limit); past it new ones are not kept.
    pub max_retained_messages: usize,
    /// How long an MQTT 3.1.1 persistent session (clean session off) outlives its
    /// client; MQTT 5 clients ask for their own session expiry.
    pub session_expiry_secs: u64,
    /// Who may publish and subscribe where, before `acl`'s rules: "open" (anyone,
    /// anywhere) or "car2home" (README, "Access control").
    pub access: AccessPolicy,
    /// Access rules, first match wins, checked before `access`.
    pub acl: Vec<AclRule>,
    /// How often the `$SYS/broker/...` topics are published (0: never).
    pub sys_interval_secs: u64,
    /// No longer used (the engine before rmqtt kept a log per filter); accepted so
    /// that an older config still loads, with a warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_segment_bytes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_segment_count: Option<usize>,
}

/// The broker's access policy underneath `[[broker.acl]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessPolicy {
    Open,
    Car2home,
}

/// One access rule of `[[broker.acl]]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AclRule {
    /// A user name, "$anonymous" (clients without one), "$accounts" (any account) or "*".
    pub who: String,
    /// Client ids the rule is limited to (an exact id); absent: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// A topic filter; `%u` stands for the user name, `%c` for the client id.
    pub topic: String,
    pub access: AclAccess,
    pub permission: AclPermission,
}

impl AclRule {
    /// Why a configured rule cannot work, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        let topic = &self.topic;
        if topic.is_empty() {
            return Err("a rule's topic must not be empty".into());
        }
        let levels: Vec<&str> = topic.split('/').collect();
        for (i, level) in levels.iter().enumerate() {
            if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
                return Err(format!("\"{topic}\": '#' must be a whole level and the last one"));
            }
            if level.contains('+') && *level != "+" {
                return Err(format!("\"{topic}\": '+' must be a whole level"));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AclAccess {
    /// Subscribe.
    Read,
    /// Publish.
    Write,
    ReadWrite,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AclPermission {
    Allow,
    Deny,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            embedded: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            ws_listen: SocketAddr::from(([127, 0, 0, 1], 8083)),
            tls_listen: None,
            wss_listen: None,
            tls_cert_file: None,
            tls_key_file: None,
            anonymous: Anonymous::Loopback,
            users: Vec::new(),
            max_payload_bytes: 256 * 1024,
            max_connections: 256,
            max_inflight_messages: 100,
            connect_timeout_ms: 5_000,
            max_queued_messages: 1_000,
            max_subscriptions_per_client: 100,
            max_retained_messages: 10_000,
            session_expiry_secs: 7 * 24 * 3600,
            access: AccessPolicy::Open,
            acl: Vec::new(),
            sys_interval_secs: 10,
            log_segment_bytes: None,
            log_segment_count: None,
        }
    }
}

impl BrokerConfig {
    /// The largest MQTT packet: a publish of `max_payload_bytes` with its topic and
    /// properties (the broker and the daemon's own clients allow the same).
    pub fn max_packet_bytes(&self) -> usize {
        self.max_payload_bytes.saturating_add(1024)
    }

    /// Every public listener with its key, the optional ones only when set.
    pub fn listeners(&self) -> Vec<(&'static str, SocketAddr)> {
        let mut listeners = vec![("broker.listen", self.listen), ("broker.ws_listen", self.ws_listen)];
        listeners.extend(self.tls_listen.map(|addr| ("broker.tls_listen", addr)));
        listeners.extend(self.wss_listen.map(|addr| ("broker.wss_listen", addr)));
        listeners
    }
}

/// A broker account; the password is stored as a PHC hash (`smarthomed hash-password`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerUser {
    pub name: String,
    pub password_hash: Secret,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Empty: the embedded broker at `broker.listen`. Otherwise mqtt://, mqtts://,
    /// ws:// or wss:// URL of an external broker.
    pub url: String,
    pub username: String,
    pub password: Secret,
    /// PEM certificates of the authorities to trust for an mqtts:// or wss:// `url`
    /// (a private CA); absent: the system's trusted roots.
    pub ca_file: Option<PathBuf>,
    pub keep_alive_secs: u64,
    pub reconnect_initial_ms: u64,
    pub reconnect_max_ms: u64,
    /// A child alerts when it has been cut off from the broker this long.
    pub lost_alert_after_secs: u64,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            username: String::new(),
            password: Secret::default(),
            ca_file: None,
            keep_alive_secs: 30,
            reconnect_initial_ms: 500,
            reconnect_max_ms: 30_000,
            lost_alert_after_secs: 30,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlackConfig {
    /// Bot token (xoxb-...). Empty: alerts only go to the log.
    pub token: Secret,
    pub channel: String,
    pub api_url: String,
    pub queue_capacity: usize,
    /// Identical alerts within this window are sent once, then once more with a count.
    pub coalesce_window_secs: u64,
    pub max_attempts: u32,
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
}

impl Default for SlackConfig {
    fn default() -> Self {
        Self {
            token: Secret::default(),
            channel: "#server".into(),
            api_url: "https://slack.com/api".into(),
            queue_capacity: 64,
            coalesce_window_secs: 300,
            max_attempts: 6,
            retry_initial_ms: 1_000,
            retry_max_ms: 60_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub backend: Backend,
    /// The embedded backend's files.
    pub dir: PathBuf,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { backend: Backend::Embedded, dir: "data".into() }
    }
}

/// Where the data lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Files under `store.dir`, on this machine.
    Embedded,
    /// Firestore (documents) and the Realtime Database (the tree), as in `[firebase]`.
    Firebase,
}

/// The file name of the service-account key under `secrets.keys_dir` or
/// `$CREDENTIALS_DIRECTORY`.
pub const FIREBASE_KEY_FILE: &str = "firebase_service_account.json";

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FirebaseConfig {
    pub project_id: String,
    /// The service-account key (JSON). Empty: $GOOGLE_APPLICATION_CREDENTIALS, else
    /// [`FIREBASE_KEY_FILE`] from systemd's credentials, else from `secrets.keys_dir`.
    pub credentials: PathBuf,
    /// `https://<project>-default-rtdb.firebaseio.com` (or `.<region>.firebasedatabase.app`).
    pub database_url: String,
    /// `host:port` of a Cloud Firestore emulator; empty: $FIRESTORE_EMULATOR_HOST, else
    /// Google's service.
    pub firestore_emulator_host: String,
    pub timeout_secs: u64,
}

impl Default for FirebaseConfig {
    fn default() -> Self {
        Self {
            project_id: String::new(),
            credentials: PathBuf::new(),
            database_url: String::new(),
            firestore_emulator_host: String::new(),
            timeout_secs: 10,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessorConfig {
    /// Texts of alarms and recommendations: "ko" (as the old system) or "en".
    pub language: Language,
    /// Larger commands are refused with `payload_too_large`.
    pub max_command_bytes: usize,
    /// Messages received but not yet dispatched.
    pub queue_capacity: usize,
    /// Commands handled at once; more wait (and the wait is logged as overload).
    pub max_concurrent_handlers: usize,
    pub handler_timeout_ms: u64,
    /// The face recognizer (`start_facer`), as program and arguments; it prints the
    /// recognised UID, or "none", as its last line. Empty: the command is refused.
    pub facer_command: Vec<String>,
    pub facer_timeout_secs: u64,
    pub recommendation: Rules,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            language: Language::Ko,
            max_command_bytes: 16 * 1024,
            queue_capacity: 64,
            max_concurrent_handlers: 16,
            handler_timeout_ms: 10_000,
            facer_command: Vec::new(),
            facer_timeout_secs: 30,
            recommendation: Rules::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WeatherConfig {
    /// OpenWeatherMap API key; empty: the weather is off.
    pub api_key: Secret,
    /// Where, by name, unless `lat` and `lon` are given.
    pub city: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lat: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lon: Option<f64>,
    /// Language of the description ("kr" as the old system).
    pub lang: String,
    pub interval_secs: u64,
    pub api_url: String,
    pub timeout_secs: u64,
    /// After a failure, the next try comes after this, doubling up to `interval_secs`.
    pub retry_initial_ms: u64,
}

impl Default for WeatherConfig {
    fn default() -> Self {
        Self {
            api_key: Secret::default(),
            city: "Seoul".into(),
            lat: None,
            lon: None,
            lang: "kr".into(),
            interval_secs: 900,
            api_url: "https://api.openweathermap.org".into(),
            timeout_secs: 10,
            retry_initial_ms: 5_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// IANA time zone schedules run in, e.g. "Asia/Seoul"; empty: the system's zone.
    pub timezone: String,
    /// A run found due up to this long after its time still runs (reported as late);
    /// an older one is reported as missed.
    pub grace_secs: u64,
    /// The engine sleeps until the next due minute, but never longer than this, so a
    /// jump of the wall clock (an NTP sync after boot) is noticed.
    pub max_sleep_secs: u64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self { timezone: String::new(), grace_secs: 300, max_sleep_secs: 300 }
    }
}

impl ScheduleConfig {
    /// The configured zone, or the system's (UTC, with a warning, when unknown).
    pub fn zone(&self) -> chrono_tz::Tz {
        if let Ok(zone) = self.timezone.parse() {
            return zone;
        }
        match iana_time_zone::get_timezone().map(|name| name.parse::<chrono_tz::Tz>()) {
            Ok(Ok(zone)) => zone,
            _ => {
                tracing::warn!("cannot tell the system's time zone: schedules run in UTC; set schedule.timezone");
                chrono_tz::Tz::UTC
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorConfig {
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// A child up this long is healthy again: its backoff starts over.
    pub healthy_after_secs: u64,
    /// More than `restart_limit` restarts of one child within `restart_window_secs`
    /// stops the daemon with exit code 3 (see README, "Restarts").
    pub restart_limit: u32,
    pub restart_window_secs: u64,
    /// Time a child gets to finish in-flight work after SIGTERM before SIGKILL.
    pub stop_timeout_secs: u64,
    pub broker_ready_timeout_secs: u64,
    /// Lines of each child's output kept to show in an alert when it dies.
    pub log_tail_lines: usize,
    /// A child that sends no heartbeat for this long is hung: it is killed, restarted
    /// and alerted. Children send one every quarter of it.
    pub heartbeat_timeout_secs: u64,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            backoff_initial_ms: 1_000,
            backoff_max_ms: 60_000,
            healthy_after_secs: 60,
            restart_limit: 5,
            restart_window_secs: 120,
            stop_timeout_secs: 10,
            broker_ready_timeout_secs: 30,
            log_tail_lines: 20,
            heartbeat_timeout_secs: 30,
        }
    }
}

impl SupervisorConfig {
    pub fn backoff_initial(&self) -> Duration {
        Duration::from_millis(self.backoff_initial_ms)
    }
    pub fn backoff_max(&self) -> Duration {
        Duration::from_millis(self.backoff_max_ms)
    }
    pub fn healthy_after(&self) -> Duration {
        Duration::from_secs(self.healthy_after_secs)
    }
    pub fn restart_window(&self) -> Duration {
        Duration::from_secs(self.restart_window_secs)
    }
    pub fn stop_timeout(&self) -> Duration {
        Duration::from_secs(self.stop_timeout_secs)
    }
    pub fn broker_ready_timeout(&self) -> Duration {
        Duration::from_secs(self.broker_ready_timeout_secs)
    }
    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_secs(self.heartbeat_timeout_secs)
    }
}

/// The supervisor's Prometheus `/metrics` and `/healthz` endpoint (README, "Metrics").
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `host:port` to serve on; empty (the default): no endpoint, no metrics collected.
    pub listen: String,
}

impl MetricsConfig {
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen.parse().ok()
    }
}

/// Home Assistant MQTT discovery (see README, "Home Assistant").
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HomeAssistantConfig {
    /// Publish discovery configs and take Home Assistant's commands.
    pub enabled: bool,
    /// Home Assistant's `discovery_prefix` (its MQTT integration's setting).
    pub discovery_prefix: String,
}

impl Default for HomeAssistantConfig {
    fn default() -> Self {
        Self { enabled: true, discovery_prefix: crate::protocol::homeassistant::DEFAULT_PREFIX.into() }
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

    /// Finds the service-account key and the emulator (see [`FirebaseConfig`]) and, with
    /// `store.backend = "firebase"`, checks that the key is there and usable: better a
    /// clear error at startup than a child failing later.
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
        if self.store.backend != Backend::Firebase {
            return Ok(());
        }
        crate::store::service_account::check_key_file(&firebase.credentials).map_err(|err| {
            invalid(
                "firebase.credentials",
                format!(
                    "{err}; the Realtime Database needs a service-account key: put it there (see keys/README.md) \
                     or set GOOGLE_APPLICATION_CREDENTIALS"
                ),
            )
        })
    }

    fn secret_mut(&mut self, name: &str) -> &mut Secret {
        match name {
            "slack_token" => &mut self.slack.token,
            "mqtt_password" => &mut self.mqtt.password,
            "weather_api_key" => &mut self.weather.api_key,
            other => unreachable!("SECRET_SOURCES names unknown secret {other}"),
        }
    }

    /// Every numeric setting with its value and the range it must fall in, so that no
    /// value check-config accepts can overflow a duration, a capacity or an allocation
    /// at run time.
    fn bounded_settings(&self) -> [(&'static str, u64, RangeInclusive<u64>); 39] {
        const MIB: u64 = 1024 * 1024;
        const HOUR_MS: u64 = 3_600_000;
        const DAY_SECS: u64 = 86_400;
        let n = |value: usize| u64::try_from(value).unwrap_or(u64::MAX);
        let (broker, mqtt, slack, processor) = (&self.broker, &self.mqtt, &self.slack, &self.processor);
        let (weather, schedule, sup) = (&self.weather, &self.schedule, &self.supervisor);
        [
            ("broker.max_payload_bytes", n(broker.max_payload_bytes), 1..=256 * MIB),
            ("broker.max_connections", n(broker.max_connections), 1..=100_000),
            ("broker.max_inflight_messages", n(broker.max_inflight_messages), 1..=65_535),
            ("broker.connect_timeout_ms", broker.connect_timeout_ms.into(), 1..=60_000),
            ("broker.max_queued_messages", n(broker.max_queued_messages), 1..=1_000_000),
            ("broker.max_subscriptions_per_client", n(broker.max_subscriptions_per_client), 0..=100_000),
            ("broker.max_retained_messages", n(broker.max_retained_messages), 0..=10_000_000),
            ("broker.session_expiry_secs", broker.session_expiry_secs, 0..=u64::from(u32::MAX)),
            ("broker.sys_interval_secs", broker.sys_interval_secs, 0..=DAY_SECS),
            ("mqtt.keep_alive_secs", mqtt.keep_alive_secs, 1..=65_535),
            ("mqtt.reconnect_initial_ms", mqtt.reconnect_initial_ms, 1..=HOUR_MS),
            ("mqtt.reconnect_max_ms", mqtt.reconnect_max_ms, 1..=24 * HOUR_MS),
            ("mqtt.lost_alert_after_secs", mqtt.lost_alert_after_secs, 0..=DAY_SECS),
            ("slack.queue_capacity", n(slack.queue_capacity), 1..=100_000),
            ("slack.coalesce_window_secs", slack.coalesce_window_secs, 0..=DAY_SECS),
            ("slack.max_attempts", slack.max_attempts.into(), 1..=100),
            ("slack.retry_initial_ms", slack.retry_initial_ms, 1..=HOUR_MS),
            ("slack.retry_max_ms", slack.retry_max_ms, 1..=24 * HOUR_MS),
            ("firebase.timeout_secs", self.firebase.timeout_secs, 1..=3_600),
            ("processor.max_command_bytes", n(processor.max_command_bytes), 1..=16 * MIB),
            ("processor.queue_capacity", n(processor.queue_capacity), 1..=100_000),
            ("processor.max_concurrent_handlers", n(processor.max_concurrent_handlers), 1..=1_024),
            ("processor.handler_timeout_ms", processor.handler_timeout_ms, 1..=HOUR_MS),
            ("processor.facer_timeout_secs", processor.facer_timeout_secs, 1..=3_600),
            ("processor.recommendation.bad_air_level", processor.recommendation.bad_air_level.into(), 1..=5),
            ("weather.interval_secs", weather.interval_secs, 60..=DAY_SECS),
            ("weather.timeout_secs", weather.timeout_secs, 1..=600),
            ("weather.retry_initial_ms", weather.retry_initial_ms, 1..=HOUR_MS),
            ("schedule.grace_secs", schedule.grace_secs, 0..=7 * DAY_SECS),
            ("schedule.max_sleep_secs", schedule.max_sleep_secs, 1..=DAY_SECS),
            ("supervisor.backoff_initial_ms", sup.backoff_initial_ms, 1..=HOUR_MS),
            ("supervisor.backoff_max_ms", sup.backoff_max_ms, 1..=24 * HOUR_MS),
            ("supervisor.healthy_after_secs", sup.healthy_after_secs, 0..=DAY_SECS),
            ("supervisor.restart_limit", sup.restart_limit.into(), 1..=1_000),
            ("supervisor.restart_window_secs", sup.restart_window_secs, 1..=DAY_SECS),
            ("supervisor.stop_timeout_secs", sup.stop_timeout_secs, 1..=3_600),
            ("supervisor.broker_ready_timeout_secs", sup.broker_ready_timeout_secs, 1..=3_600),
            ("supervisor.log_tail_lines", n(sup.log_tail_lines), 1..=10_000),
            ("supervisor.heartbeat_timeout_secs", sup.heartbeat_timeout_secs, 2..=3_600),
        ]
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (key, value, range) in self.bounded_settings() {
            if !range.contains(&value) {
                return Err(invalid(key, format!("must be from {} to {}", range.start(), range.end())));
            }
        }
        let sup = &self.supervisor;
        if sup.backoff_max_ms < sup.backoff_initial_ms {
            return Err(invalid("supervisor.backoff_max_ms", "must not be below supervisor.backoff_initial_ms"));
        }
        if self.mqtt.reconnect_max_ms < self.mqtt.reconnect_initial_ms {
            return Err(invalid("mqtt.reconnect_max_ms", "must not be below mqtt.reconnect_initial_ms"));
        }
        if !self.metrics.listen.is_empty() && self.metrics.listen_addr().is_none() {
            return Err(invalid("metrics.listen", "must be host:port, such as \"127.0.0.1:9898\", or empty (off)"));
        }
        let prefix = &self.homeassistant.discovery_prefix;
        if prefix.is_empty() || prefix.starts_with('/') || prefix.ends_with('/') || prefix.contains(['+', '#']) {
            return Err(invalid(
                "homeassistant.discovery_prefix",
                "must be an MQTT topic without wildcards or a leading or trailing /",
            ));
        }
        let processor = &self.processor;
        if processor.facer_command.first().is_some_and(|program| program.trim().is_empty()) {
            return Err(invalid("processor.facer_command", "the program must not be empty"));
        }
        if !self.schedule.timezone.is_empty() && self.schedule.timezone.parse::<chrono_tz::Tz>().is_err() {
            return Err(invalid(
                "schedule.timezone",
                format!("{:?} is not an IANA time zone such as \"Asia/Seoul\"", self.schedule.timezone),
            ));
        }
        self.validate_firebase()?;
        self.validate_weather()?;
        self.validate_slack()?;
        self.validate_broker()?;
        self.validate_mqtt_url()
    }

    fn validate_firebase(&self) -> Result<(), ConfigError> {
        let firebase = &self.firebase;
        if !firebase.database_url.is_empty() {
            let url = url::Url::parse(&firebase.database_url)
                .map_err(|err| invalid("firebase.database_url", format!("not a URL: {err}")))?;
            if !matches!(url.scheme(), "https" | "http") {
                return Err(invalid("firebase.database_url", "must be an https:// (or http://) URL"));
            }
        }
        check_emulator_host(&firebase.firestore_emulator_host)?;
        if self.store.backend != Backend::Firebase {
            return Ok(());
        }
        if firebase.project_id.trim().is_empty() {
            return Err(invalid("firebase.project_id", "is needed with store.backend = \"firebase\""));
        }
        if firebase.database_url.is_empty() {
            return Err(invalid(
                "firebase.database_url",
                "is needed with store.backend = \"firebase\" (https://<project>-default-rtdb.firebaseio.com)",
            ));
        }
        Ok(())
    }

    fn validate_weather(&self) -> Result<(), ConfigError> {
        let weather = &self.weather;
        match (weather.lat, weather.lon) {
            (Some(lat), Some(lon)) => {
                if !(-90.0..=90.0).contains(&lat) {
                    return Err(invalid("weather.lat", "must be between -90 and 90"));
                }
                if !(-180.0..=180.0).contains(&lon) {
                    return Err(invalid("weather.lon", "must be between -180 and 180"));
                }
            }
            (None, None) if weather.city.trim().is_empty() => {
                return Err(invalid("weather.city", "must name a city unless weather.lat and weather.lon are set"));
            }
            (None, None) => {}
            (Some(_), None) => return Err(invalid("weather.lon", "is needed with weather.lat")),
            (None, Some(_)) => return Err(invalid("weather.lat", "is needed with weather.lon")),
        }
        let url =
            url::Url::parse(&weather.api_url).map_err(|err| invalid("weather.api_url", format!("not a URL: {err}")))?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err(invalid("weather.api_url", "must be an https:// (or http://) URL"));
        }
        Ok(())
    }

    fn validate_slack(&self) -> Result<(), ConfigError> {
        let slack = &self.slack;
        let url =
            url::Url::parse(&slack.api_url).map_err(|err| invalid("slack.api_url", format!("not a URL: {err}")))?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err(invalid("slack.api_url", "must be an https:// (or http://) URL"));
        }
        if slack.channel.trim().is_empty() {
            return Err(invalid("slack.channel", "must not be empty"));
        }
        if slack.retry_max_ms < slack.retry_initial_ms {
            return Err(invalid("slack.retry_max_ms", "must not be below slack.retry_initial_ms"));
        }
        Ok(())
    }

    fn validate_broker(&self) -> Result<(), ConfigError> {
        let broker = &self.broker;
        if !broker.embedded {
            return Ok(());
        }
        let listeners = broker.listeners();
        for (i, (key, addr)) in listeners.iter().enumerate() {
            if let Some((other, _)) = listeners[..i].iter().find(|(_, earlier)| earlier == addr) {
                return Err(invalid(key, format!("must differ from {other}")));
            }
        }
        if (broker.tls_listen.is_some() || broker.wss_listen.is_some())
            && (broker.tls_cert_file.is_none() || broker.tls_key_file.is_none())
        {
            let key = if broker.tls_cert_file.is_none() { "broker.tls_cert_file" } else { "broker.tls_key_file" };
            return Err(invalid(key, "must be set for broker.tls_listen and broker.wss_listen"));
        }
        for rule in &broker.acl {
            rule.check().map_err(|err| invalid("broker.acl.topic", err))?;
        }
        let mut names = HashSet::new();
        for user in &broker.users {
            if user.name.is_empty() {
                return Err(invalid("broker.users.name", "must not be empty"));
            }
            if user.name == INTERNAL_MQTT_USER {
                return Err(invalid(
                    "broker.users.name",
                    format!("\"{INTERNAL_MQTT_USER}\" is reserved for the daemon's own processes"),
                ));
            }
            if !names.insert(user.name.as_str()) {
                return Err(invalid("broker.users.name", format!("user \"{}\" is listed twice", user.name)));
            }
            crate::broker::password::check_hash_format(user.password_hash.expose()).map_err(|err| {
                invalid(
                    "broker.users.password_hash",
                    format!("user \"{}\": {err}; make one with `smarthomed hash-password`", user.name),
                )
            })?;
        }
        if broker.anonymous == Anonymous::Always && !broker.users.is_empty() {
            return Err(invalid(
                "broker.anonymous",
                "\"always\" cannot be combined with broker.users: once accounts exist the \
                 embedded broker asks every client for credentials",
            ));
        }
        if broker.users.is_empty() && broker.anonymous != Anonymous::Always {
            for (key, addr) in listeners {
                if !addr.ip().is_loopback() || broker.anonymous == Anonymous::Never {
                    return Err(invalid(
                        key,
                        format!(
                            "no client could connect to {addr}: anonymous access is \"{}\" and \
                             broker.users is empty; add broker.users or set broker.anonymous",
                            serde_variant(broker.anonymous)
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_mqtt_url(&self) -> Result<(), ConfigError> {
        if self.mqtt.url.is_empty() {
            if !self.broker.embedded {
                return Err(invalid("mqtt.url", "must name the external broker when broker.embedded = false"));
            }
            if self.mqtt.ca_file.is_some() {
                return Err(invalid("mqtt.ca_file", "is only used with an mqtts:// or wss:// mqtt.url"));
            }
            return Ok(());
        }
        let url = url::Url::parse(&self.mqtt.url).map_err(|err| invalid("mqtt.url", format!("not a URL: {err}")))?;
        if !matches!(url.scheme(), "mqtt" | "mqtts" | "ws" | "wss") {
            return Err(invalid("mqtt.url", "scheme must be mqtt, mqtts, ws or wss"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid("mqtt.url", "must not carry credentials; use mqtt.username and mqtt.password"));
        }
        if url.host_str().is_none() {
            return Err(invalid("mqtt.url", "has no host"));
        }
        if self.mqtt.ca_file.is_some() && !matches!(url.scheme(), "mqtts" | "wss") {
            return Err(invalid("mqtt.ca_file", "is only used with an mqtts:// or wss:// mqtt.url"));
        }
        Ok(())
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

fn serde_variant(anonymous: Anonymous) -> &'static str {
    match anonymous {
        Anonymous::Loopback => "loopback",
        Anonymous::Always => "always",
        Anonymous::Never => "never",
    }
}

/// A Firestore emulator is named `host:port` (as $FIRESTORE_EMULATOR_HOST); empty: none.
fn check_emulator_host(host: &str) -> Result<(), ConfigError> {
    if host.is_empty() {
        return Ok(());
    }
    let url = if host.contains("://") { host.to_owned() } else { format!("http://{host}") };
    match url::Url::parse(&url).ok().and_then(|url| url.port()) {
        Some(_) => Ok(()),
        None => Err(invalid(
            "firebase.firestore_emulator_host",
            format!("{host:?} (from the config or $FIRESTORE_EMULATOR_HOST) is not host:port"),
        )),
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
        assert_eq!(defaults.bounded_settings().iter().map(|(key, ..)| *key).collect::<HashSet<_>>().len(), 39);
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
        let hash = crate::broker::password::hash("secret").unwrap();
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
