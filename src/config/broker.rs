//! `[broker]`: the embedded broker's listeners, accounts, limits and access rules.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Bound, ConfigError, DAY_SECS, MIB, Secret, count, invalid};

/// The username the daemon's own processes use on the embedded broker.
pub const INTERNAL_MQTT_USER: &str = "smarthomed";

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
    /// Who may publish and subscribe where, before `acl`'s rules: "car2home" (the
    /// default, README "Access control") or "open" (anyone, anywhere).
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
            access: AccessPolicy::Car2home,
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

    /// Each numeric setting with its value and the range it must fall in.
    pub(super) fn bounds(&self) -> Vec<Bound> {
        vec![
            ("broker.max_payload_bytes", count(self.max_payload_bytes), 1..=256 * MIB),
            ("broker.max_connections", count(self.max_connections), 1..=100_000),
            ("broker.max_inflight_messages", count(self.max_inflight_messages), 1..=65_535),
            ("broker.connect_timeout_ms", self.connect_timeout_ms.into(), 1..=60_000),
            ("broker.max_queued_messages", count(self.max_queued_messages), 1..=1_000_000),
            ("broker.max_subscriptions_per_client", count(self.max_subscriptions_per_client), 0..=100_000),
            ("broker.max_retained_messages", count(self.max_retained_messages), 0..=10_000_000),
            ("broker.session_expiry_secs", self.session_expiry_secs, 0..=u64::from(u32::MAX)),
            ("broker.sys_interval_secs", self.sys_interval_secs, 0..=DAY_SECS),
        ]
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !self.embedded {
            return Ok(());
        }
        let listeners = self.listeners();
        for (i, (key, addr)) in listeners.iter().enumerate() {
            if let Some((other, _)) = listeners[..i].iter().find(|(_, earlier)| earlier == addr) {
                return Err(invalid(key, format!("must differ from {other}")));
            }
        }
        if (self.tls_listen.is_some() || self.wss_listen.is_some())
            && (self.tls_cert_file.is_none() || self.tls_key_file.is_none())
        {
            let key = if self.tls_cert_file.is_none() { "broker.tls_cert_file" } else { "broker.tls_key_file" };
            return Err(invalid(key, "must be set for broker.tls_listen and broker.wss_listen"));
        }
        for rule in &self.acl {
            rule.check().map_err(|err| invalid("broker.acl.topic", err))?;
        }
        let mut names = HashSet::new();
        for user in &self.users {
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
            crate::password::check_hash_format(user.password_hash.expose()).map_err(|err| {
                invalid(
                    "broker.users.password_hash",
                    format!("user \"{}\": {err}; make one with `smarthomed hash-password`", user.name),
                )
            })?;
        }
        if self.anonymous == Anonymous::Always && !self.users.is_empty() {
            return Err(invalid(
                "broker.anonymous",
                "\"always\" cannot be combined with broker.users: once accounts exist the \
                 embedded broker asks every client for credentials",
            ));
        }
        if self.users.is_empty() && self.anonymous != Anonymous::Always {
            for (key, addr) in listeners {
                if !addr.ip().is_loopback() || self.anonymous == Anonymous::Never {
                    return Err(invalid(
                        key,
                        format!(
                            "no client could connect to {addr}: anonymous access is \"{}\" and \
                             self.users is empty; add self.users or set self.anonymous",
                            serde_variant(self.anonymous)
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A broker account; the password is stored as a PHC hash (`smarthomed hash-password`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerUser {
    pub name: String,
    pub password_hash: Secret,
}

fn serde_variant(anonymous: Anonymous) -> &'static str {
    match anonymous {
        Anonymous::Loopback => "loopback",
        Anonymous::Always => "always",
        Anonymous::Never => "never",
    }
}
