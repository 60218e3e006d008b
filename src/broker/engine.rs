//! The MQTT engine: rmqtt, embedded in the broker process behind the front door.
//!
//! rmqtt serves MQTT 3.1.1 and 5 on one loopback listener and MQTT over WebSocket on
//! another; only the front door connects to them, each connection prefixed with a PROXY
//! v1 header that carries the client's real address. Persistent sessions (subscriptions,
//! queued and in-flight messages) live in rmqtt's sled database and retained messages in
//! our own store ([`super::retained`]), both under `<store.dir>/broker/`, so they
//! outlive a restart. The settings whose rmqtt defaults
//! lose data or hold memory without bound are set here from `[broker]` (README, "The
//! broker engine"). Logins and topic access are decided by [`Gatekeeper`], a hook;
//! other hooks mend what rmqtt leaves out: [`QueueKeeper`] stores what is queued for a
//! persistent client when it leaves, [`ClientPacketLimit`] honours an MQTT 5 client's
//! Maximum Packet Size, [`DropWatch`] counts and reports dropped messages, and
//! [`ProcessorWatch`] tells when the processor is subscribed. [`SharedGroups`] gives
//! each message of a `$share/<group>/...` subscription to one member of the group.

use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroU16;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rmqtt::codec::types::{Publish as CodecPublish, QoS};
use rmqtt::codec::v5::{PublishAckReason, SubscribeAckReason};
use rmqtt::context::ServerContext;
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType, Type};
use rmqtt::net::{Builder, Listener};
use rmqtt::server::MqttServer;
use rmqtt::session::SessionState;
use rmqtt::subscribe::SharedSubscription;
use rmqtt::types::{
    AuthResult, ClientId, ConnectInfo, Disconnect, From, Id, IsOnline, NodeId, Publish, PublishAclResult,
    PublishResult, Reason, SharedGroup, SubscribeAclResult, SubscriptionIdentifier, SubscriptionOptions, TopicName,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::acl::{Access, Identity, Policy};
use super::front_door::RESERVED_CLIENT_PREFIX;
use super::login::{LoginGate, Verdict};
use super::packet_size;
use super::retained::{RetainedError, RetainedMessages, Writer};
use crate::config::{BrokerConfig, INTERNAL_MQTT_USER};
use crate::log_limit::{LogLimiter, Verdict as LogVerdict};
use crate::protocol::role::Role;

/// How often sled writes what it holds in memory to its files; the stop waits this long
/// (and a little more) after the last client has gone.
pub const STORAGE_FLUSH: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot open the broker's loopback listener: {0}")]
    Listener(String),
    #[error("cannot start the broker's storage under {dir}: {reason}")]
    Storage { dir: PathBuf, reason: String },
    #[error(transparent)]
    Retained(#[from] RetainedError),
}

/// Where the front door hands connections on.
#[derive(Debug, Clone, Copy)]
pub struct Backends {
    pub mqtt: SocketAddr,
    pub websocket: SocketAddr,
}

/// A configured engine, its listeners bound, not yet serving.
pub struct Engine {
    server: MqttServer,
    pub backends: Backends,
    pub publisher: SystemPublisher,
}

/// Publishes the broker's own messages (`$SYS`) straight into the engine.
#[derive(Clone)]
pub struct SystemPublisher {
    scx: ServerContext,
    id: Id,
}

impl SystemPublisher {
    /// Publishes at QoS 0, not retained.
    pub async fn publish(&self, topic: &str, payload: String) -> Result<(), String> {
        let publish = Publish::from(CodecPublish {
            dup: false,
            retain: false,
            qos: QoS::AtMostOnce,
            topic: topic.into(),
            packet_id: None,
            payload: payload.into(),
            properties: None,
        })
        .create_time(chrono::Utc::now().timestamp_millis());
        SessionState::forwards(&self.scx, From::from_system(self.id.clone()), publish, false, None)
            .await
            .map_err(|err| err.to_string())
    }
}

impl Engine {
    /// Opens the storage under `data_dir` and binds the loopback listeners. Anonymous
    /// clients are let in on a backend whose public door allows them. The writer of
    /// the retained messages must run until the engine is done with them. With
    /// `processor_subscribed`, it is cancelled once the daemon's processor is subscribed.
    pub async fn new(
        config: &BrokerConfig,
        data_dir: &Path,
        logins: Arc<LoginGate>,
        policy: Arc<Policy>,
        anonymous: AnonymousAt,
        processor_subscribed: Option<CancellationToken>,
    ) -> Result<(Self, Writer), EngineError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|err| EngineError::Storage { dir: data_dir.to_owned(), reason: err.to_string() })?;
        let sled = |name: &str| {
            let path = data_dir.join(name);
            format!(
                "storage.type = \"sled\"\nstorage.sled.path = {:?}\nstorage.sled.cache_capacity = \"8M\"\n",
                path.display().to_string()
            )
        };
        let scx = ServerContext::new()
            // rmqtt would refuse every CONNECT while the host's CPU is above 90 % (a
            // Raspberry Pi running the face recognizer, a backup, a build), and samples
            // the CPU every 2 s to know; the front door already bounds connections
            // and logins.
            .busy_check_enable(false)
            .plugins_config_map_add(SESSIONS, sled("sessions"))
            .build()
            .await;
        let storage = |err: rmqtt::Error| EngineError::Storage { dir: data_dir.to_owned(), reason: err.to_string() };
        rmqtt_session_storage::register_named(&scx, SESSIONS, true, true).await.map_err(storage)?;
        let (retained, retained_writer) =
            RetainedMessages::open(&data_dir.join("retained.redb"), config.max_retained_messages).await?;
        *scx.extends.retain_mut().await = Box::new(retained);
        *scx.extends.shared_subscription_mut().await = Box::new(SharedGroups::default());
        let register = scx.extends.hook_mgr().register();
        let refusals_logged = Arc::new(Mutex::new(LogLimiter::default()));
        let gatekeeper = || {
            Box::new(Gatekeeper {
                logins: logins.clone(),
                policy: policy.clone(),
                anonymous,
                refusals_logged: refusals_logged.clone(),
            })
        };
        register.add(Type::ClientAuthenticate, gatekeeper()).await;
        register.add(Type::MessagePublishCheckAcl, gatekeeper()).await;
        register.add(Type::ClientSubscribeCheckAcl, gatekeeper()).await;
        register.add(Type::MessageExpiryCheck, Box::new(ClientPacketLimit)).await;
        register.add(Type::ClientDisconnected, Box::new(QueueKeeper { scx: scx.clone() })).await;
        let drops_logged = Mutex::new(LogLimiter::new(1, crate::log_limit::WINDOW));
        register.add(Type::MessageDropped, Box::new(DropWatch { logged: drops_logged })).await;
        // Only while it is awaited: the hook runs for every publish.
        if let Some(subscribed) = processor_subscribed {
            let watch = ProcessorWatch { awaited: Mutex::new(AWAITED_ROLES.to_vec()), subscribed };
            register.add(Type::MessagePublish, Box::new(watch)).await;
        }
        register.start().await;

        let mqtt = listener(config, "mqtt")?.tcp().map_err(listener_error)?;
        let websocket = listener(config, "websocket")?.ws().map_err(listener_error)?;
        let backends = Backends {
            mqtt: mqtt.local_addr().map_err(listener_error)?,
            websocket: websocket.local_addr().map_err(listener_error)?,
        };
        let publisher = SystemPublisher {
            id: Id::new(scx.node.id(), 0, None, None, "smarthomed-broker".into(), Some(INTERNAL_MQTT_USER.into())),
            scx: scx.clone(),
        };
        let server = MqttServer::new(scx)
            .listener_by_id(mqtt, MQTT_LISTENER_ID)
            .listener_by_id(websocket, WEBSOCKET_LISTENER_ID)
            .build();
        Ok((Self { server, backends, publisher }, retained_writer))
    }

    /// Serves until the process ends (rmqtt has no way to stop its listeners), or why
    /// it could not.
    pub async fn serve(self) -> Result<(), String> {
        self.server.run().await.map_err(|err| err.to_string())
    }
}

// Stored sessions remember their listener by id, so the ids stay the same across starts.
const MQTT_LISTENER_ID: u16 = 1;
const WEBSOCKET_LISTENER_ID: u16 = 2;
const SESSIONS: &str = "rmqtt-session-storage";

/// Whether anonymous clients may use each backend (as their public door allows).
#[derive(Debug, Clone, Copy)]
pub struct AnonymousAt {
    pub mqtt: bool,
    pub websocket: bool,
}

fn listener_error(err: rmqtt::Error) -> EngineError {
    EngineError::Listener(err.to_string())
}

fn listener(config: &BrokerConfig, name: &str) -> Result<Listener, EngineError> {
    let max_inflight = u16::try_from(config.max_inflight_messages).unwrap_or(u16::MAX);
    Builder::new()
        .name(name)
        .laddr(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .nodelay(true)
        .proxy_protocol(true)
        // Anonymous clients are the Gatekeeper's to let in.
        .allow_anonymous(false)
        // The front door holds clients to broker.max_connections; the engine's own
        // count lags behind closed connections, and must not refuse what it let in.
        .max_packet_size(u32::try_from(config.max_packet_bytes()).unwrap_or(u32::MAX))
        .max_inflight(NonZeroU16::new(max_inflight).unwrap_or(NonZeroU16::MIN))
        .handshake_timeout(Duration::from_millis(u64::from(config.connect_timeout_ms)))
        .max_mqueue_len(config.max_queued_messages)
        // MQTT 3.1.1 persistent sessions; an MQTT 5 client sets its own expiry.
        .session_expiry_interval(Duration::from_secs(config.session_expiry_secs))
        // rmqtt's default of 300 s would drop a command queued for a device that is
        // offline for five minutes; messages expire only when their publisher says so.
        .message_expiry_interval(Duration::ZERO)
        .max_subscriptions(config.max_subscriptions_per_client)
        .bind()
        .map_err(listener_error)
}

/// Decides logins and topic access for the engine.
struct Gatekeeper {
    logins: Arc<LoginGate>,
    policy: Arc<Policy>,
    anonymous: AnonymousAt,
    refusals_logged: Arc<Mutex<LogLimiter>>,
}

#[async_trait::async_trait]
impl Handler for Gatekeeper {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        match param {
            Parameter::ClientAuthenticate(connect) => {
                (false, Some(HookResult::AuthResult(self.authenticate(connect).await)))
            }
            Parameter::MessagePublishCheckAcl(session, publish) => {
                if self.allowed(session, Request::Publish(&publish.payload), &publish.topic) {
                    return (true, acc);
                }
                // 0x87 alone: rmqtt's `rejected` adds a reason string, and a PUBACK with
                // properties is more than some small clients can read (the Paho test
                // client among them); the log line says why.
                let refused = PublishResult::reason_code(PublishAckReason::NotAuthorized, None, false);
                (false, Some(HookResult::PublishAclResult(PublishAclResult(refused))))
            }
            Parameter::ClientSubscribeCheckAcl(session, subscribe) => {
                if self.allowed(session, Request::Subscribe, &subscribe.topic_filter) {
                    return (true, acc);
                }
                let refused = SubscribeAclResult::new_failure(SubscribeAckReason::NotAuthorized);
                (false, Some(HookResult::SubscribeAclResult(refused)))
            }
            _ => (true, acc),
        }
    }
}

impl Gatekeeper {
    /// Every login comes here, anonymous ones too (the engine's listeners take no
    /// anonymous client by themselves): the daemon's client ids are for the daemon's
    /// own user on every listener, WebSocket included, where the front door cannot see
    /// the CONNECT.
    async fn authenticate(&self, connect: &ConnectInfo) -> AuthResult {
        let id = connect.id();
        let reserved = id.client_id.starts_with(RESERVED_CLIENT_PREFIX);
        let Some(user) = connect.username() else {
            let anonymous_here =
                if id.lid == WEBSOCKET_LISTENER_ID { self.anonymous.websocket } else { self.anonymous.mqtt };
            return if anonymous_here && !reserved {
                AuthResult::Allow(false, None)
            } else {
                AuthResult::NotAuthorized
            };
        };
        let password = connect.password().map(|password| password.to_vec()).unwrap_or_default();
        // The front door put its token where it checked the password itself; logins
        // inside WebSocket frames are checked here.
        let verdict = if self.logins.is_token(&password) {
            Verdict::Accepted
        } else {
            self.logins.verify(user, &password, id.remote_addr.map(|addr| addr.ip())).await
        };
        let internal = &**user == INTERNAL_MQTT_USER;
        match verdict {
            Verdict::Accepted if reserved && !internal => AuthResult::NotAuthorized,
            Verdict::Accepted => AuthResult::Allow(internal, None),
            Verdict::BadCredentials => AuthResult::BadUsernameOrPassword,
            Verdict::Busy => AuthResult::NotAuthorized,
        }
    }

    /// Whether the session's client may do what it asks on `topic`; a refusal is
    /// logged with who asked (at a bounded rate: the input comes from the network).
    fn allowed(&self, session: &rmqtt::session::Session, request: Request<'_>, topic: &str) -> bool {
        let identity = identity(session);
        let (allowed, what) = match request {
            Request::Publish(payload) => (self.policy.allows_publish(&identity, topic, payload), "a publish"),
            Request::Subscribe => (self.policy.allows(&identity, Access::Subscribe, topic), "a subscription"),
        };
        if allowed {
            return true;
        }
        let verdict = self.refusals_logged.lock().unwrap_or_else(PoisonError::into_inner).check("acl", Instant::now());
        if let LogVerdict::Log { suppressed_before } = verdict {
            info!(
                user = identity.user,
                client_id = identity.client_id,
                peer = ?session.id.remote_addr,
                topic,
                suppressed_before,
                "refused {what}: not allowed by the broker's access rules"
            );
        }
        false
    }
}

/// What a client asks the [`Gatekeeper`] for.
#[derive(Clone, Copy)]
enum Request<'a> {
    /// To publish this payload.
    Publish(&'a [u8]),
    Subscribe,
}

/// Discards, for one client, a message larger than the Maximum Packet Size its MQTT 5
/// CONNECT asked for, as the protocol says (3.1.2.11.4): rmqtt would fail the write and
/// close the connection. Its delivery hook is the expiry check, which drops quietly.
struct ClientPacketLimit;

#[async_trait::async_trait]
impl Handler for ClientPacketLimit {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        if let Parameter::MessageExpiryCheck(session, _, publish) = param
            && let Ok(connect) = session.connect_info().await
            && let Some(limit) = connect.max_packet_size()
        {
            let size = packet_size::v5_publish(
                &publish.topic,
                publish.payload.len(),
                publish.qos != QoS::AtMostOnce,
                publish.properties.as_ref(),
            );
            if size > limit.get() as usize {
                let (client_id, topic) = (&session.id.client_id, &publish.topic);
                debug!(%client_id, %topic, size, limit, "not sent: larger than the client takes");
                return (false, Some(HookResult::MessageExpiry));
            }
        }
        (true, acc)
    }
}

/// Stores what is queued for a persistent client when it leaves. rmqtt's session
/// storage keeps the messages in flight to it and those that arrive while it is away,
/// but not those already waiting behind its in-flight window: a restart of the broker
/// lost them (measured: 300 of 500 commands queued for the processor at a SIGTERM).
/// They go the way of a message that arrives while it is away, and stay queued.
struct QueueKeeper {
    scx: ServerContext,
}

#[async_trait::async_trait]
impl Handler for QueueKeeper {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        // A session taken over goes on in the new connection, which has its queue; one
        // its client ended has nothing to keep.
        if let Parameter::ClientDisconnected(session, reason) = param
            && !matches!(reason, Reason::ConnectKicked(_))
            && !ends_session(reason)
            && !session.deliver_queue().is_empty()
            && let Ok(connect) = session.connect_info().await
            && persistent(&connect)
        {
            let queue = session.deliver_queue();
            let waiting: Vec<_> = std::iter::from_fn(|| queue.pop()).collect();
            if !waiting.is_empty() {
                let hook = self.scx.extends.hook_mgr().hook((*session).clone());
                for (from, publish) in &waiting {
                    hook.offline_message(from.clone(), publish).await;
                }
                let client_id = &session.id.client_id;
                debug!(%client_id, queued = waiting.len(), "queued messages stored with the session");
            }
            // The queue had room for these a moment ago, and only its session adds to it.
            let lost = waiting.into_iter().map(|item| queue.push(item)).filter(Result::is_err).count();
            if lost > 0 {
                warn!(client_id = %session.id.client_id, lost, "queued messages did not fit back in the queue");
            }
        }
        (true, acc)
    }
}

/// Chooses which member of a shared subscription group (`$share/<group>/<filter>`, MQTT
/// 5 and 3.1.1 alike) gets a message: the connected members in turn, or, when none is
/// connected, the next member's session, which keeps it until its client returns.
/// rmqtt only routes to a group through such a chooser; its own refuses every `$share`.
#[derive(Default)]
struct SharedGroups {
    turn: AtomicUsize,
}

#[async_trait::async_trait]
impl SharedSubscription for SharedGroups {
    fn is_supported(&self) -> bool {
        true
    }

    async fn choice(
        &self,
        _scx: &ServerContext,
        _group: &SharedGroup,
        _publisher: &Id,
        _topic: &TopicName,
        members: &[(NodeId, ClientId, SubscriptionOptions, Option<Vec<SubscriptionIdentifier>>, Option<IsOnline>)],
    ) -> Option<(usize, IsOnline)> {
        let online = |index: usize| members[index].4.unwrap_or(false);
        pick_member(members.len(), self.turn.fetch_add(1, Ordering::Relaxed), online)
    }
}

/// Of `count` members, the first connected one from `turn` on (wrapping), or the one at
/// `turn` when none is connected; with whether it is connected.
fn pick_member(count: usize, turn: usize, online: impl Fn(usize) -> bool) -> Option<(usize, bool)> {
    if count == 0 {
        return None;
    }
    let start = turn % count;
    (0..count)
        .map(|offset| (start + offset) % count)
        .find(|&index| online(index))
        .map(|index| (index, true))
        .or(Some((start, false)))
}

/// Counts every message the engine drops, by why, and says when a client does not keep
/// up: once per client and minute, with how many went unlogged in the minute before.
struct DropWatch {
    logged: Mutex<LogLimiter>,
}

#[async_trait::async_trait]
impl Handler for DropWatch {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        if let Parameter::MessageDropped(to, _, publish, reason) = param {
            let why = drop_reason(reason);
            metrics::counter!("smarthomed_broker_messages_dropped_total", "reason" => why).increment(1);
            if let (Reason::MessageQueueFull, Some(to)) = (reason, to) {
                let client_id = &to.client_id;
                let verdict =
                    self.logged.lock().unwrap_or_else(PoisonError::into_inner).check(client_id, Instant::now());
                if let LogVerdict::Log { suppressed_before } = verdict {
                    warn!(
                        %client_id,
                        topic = %publish.topic,
                        qos = publish.qos as u8,
                        suppressed_before,
                        "a client does not keep up: its queue is full and messages to it are dropped \
                         (broker.max_queued_messages)"
                    );
                }
            }
        }
        (true, acc)
    }
}

/// The `reason` label of a dropped message.
fn drop_reason(reason: &Reason) -> &'static str {
    match reason {
        Reason::MessageQueueFull => "queue_full",
        Reason::MessageExpiration => "expired",
        Reason::PublishResult(_) => "refused",
        Reason::InflightWindowFull => "inflight_full",
        Reason::SessionExpiration
        | Reason::ConnectDisconnect(_)
        | Reason::ConnectRemoteClose
        | Reason::ConnectKeepaliveTimeout
        | Reason::ConnectReadWriteTimeout
        | Reason::ConnectReadWriteError
        | Reason::ConnectKicked(_) => "session_ended",
        Reason::Reasons(reasons) => reasons.first().map_or("other", drop_reason),
        _ => "other",
    }
}

/// Whether the client ended its session as it left (MQTT 5: a DISCONNECT with a
/// session expiry of 0).
fn ends_session(reason: &Reason) -> bool {
    match reason {
        Reason::ConnectDisconnect(Some(Disconnect::V5(disconnect))) => {
            disconnect.session_expiry_interval_secs == Some(0)
        }
        Reason::Reasons(reasons) => reasons.iter().any(ends_session),
        _ => false,
    }
}

/// Whether the session outlives the connection (3.1.1 clean session off; MQTT 5 with a
/// session expiry).
fn persistent(connect: &ConnectInfo) -> bool {
    match connect {
        ConnectInfo::V3(_, connect) => !connect.clean_session,
        ConnectInfo::V5(_, connect) => connect.session_expiry_interval_secs > 0,
    }
}

/// The daemon's links whose persistent sessions hold the commands queued for them.
const AWAITED_ROLES: [&str; 2] = [Role::Processor.name(), crate::protocol::robot::DAEMON_LINK];

/// Tells when the daemon's processor is subscribed: each of its links says "online"
/// once its SUBSCRIBE is acknowledged (a superuser's publishes skip the ACL hooks, not
/// this one).
struct ProcessorWatch {
    /// The roles not yet online.
    awaited: Mutex<Vec<&'static str>>,
    subscribed: CancellationToken,
}

#[async_trait::async_trait]
impl Handler for ProcessorWatch {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        if let Parameter::MessagePublish(Some(session), _, publish) = param
            && !self.subscribed.is_cancelled()
            && publish.payload.as_ref() == b"online"
        {
            let mut awaited = self.awaited.lock().unwrap_or_else(PoisonError::into_inner);
            awaited.retain(|role| {
                session.id.client_id.as_ref() != crate::mqtt::client_id(role)
                    || publish.topic.as_ref() != crate::mqtt::availability_topic(role)
            });
            if awaited.is_empty() {
                self.subscribed.cancel();
            }
        }
        (true, acc)
    }
}

fn identity(session: &rmqtt::session::Session) -> Identity<'_> {
    Identity { user: session.id.username.as_deref(), client_id: &session.id.client_id }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_group_takes_its_connected_members_in_turn() {
        let connected = [true, false, true];
        let picks: Vec<_> = (0..4).map(|turn| pick_member(3, turn, |index| connected[index])).collect();
        assert_eq!(picks, [Some((0, true)), Some((2, true)), Some((2, true)), Some((0, true))]);
        assert_eq!(pick_member(3, 4, |_| false), Some((1, false)));
        assert_eq!(pick_member(0, 0, |_| true), None);
    }

    #[test]
    fn dropped_messages_are_labelled_by_why() {
        assert_eq!(drop_reason(&Reason::MessageQueueFull), "queue_full");
        assert_eq!(drop_reason(&Reason::MessageExpiration), "expired");
        assert_eq!(drop_reason(&Reason::Reasons(vec![Reason::SessionExpiration])), "session_ended");
        assert_eq!(drop_reason(&Reason::from_static("Tx is closed")), "other");
    }

    #[test]
    fn only_a_disconnect_with_expiry_zero_ends_the_session() {
        let disconnect = |expiry| {
            let packet = rmqtt::codec::v5::Disconnect { session_expiry_interval_secs: expiry, ..Default::default() };
            Reason::Reasons(vec![Reason::ConnectDisconnect(Some(Disconnect::V5(packet)))])
        };
        assert!(ends_session(&disconnect(Some(0))));
        assert!(!ends_session(&disconnect(Some(60))));
        assert!(!ends_session(&disconnect(None)));
        assert!(!ends_session(&Reason::ConnectRemoteClose));
    }
}
