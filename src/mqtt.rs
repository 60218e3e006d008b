//! The MQTT link of the processor and the syncer: one long-lived rumqttc connection
//! per process, to the embedded broker or to an external one (`mqtt.url`).
//!
//! [`Link::run`] drives the connection until shutdown: it reconnects with backoff,
//! logs state changes once (not every retry), re-subscribes after every reconnect,
//! keeps a retained availability message (`smarthomed/<role>/availability`: "online"
//! once its subscriptions are acknowledged, or "offline" by last will or on a clean
//! stop), raises an alert when the broker has been gone too long, and hands every
//! incoming publish to a bounded queue. The event
//! loop is never left unpolled, since acknowledgements and replies travel through it:
//! when the queue is full, messages wait beside it. For QoS 1 the broker's in-flight
//! window bounds that wait (messages are acknowledged only once handled); QoS 0
//! messages beyond [`MAX_WAITING`] are dropped and logged as overload.
//!
//! On shutdown the link stops handing out messages but keeps the connection until
//! the consumer drops its queue (in-flight handlers may still publish replies), then
//! says goodbye. With [`Link::persistent`], messages are acknowledged by the consumer
//! ([`Acker`]) once taken on, so a message received but not taken on before a stop is
//! delivered again by the broker on the next connect.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, Publish, QoS,
    TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::alert::{Alert, Alerter};
use crate::backoff::Backoff;
use crate::config::{Config, INTERNAL_MQTT_USER, Secret};
use crate::outage::OutageState;

/// Room for requests (publishes, acknowledgements) queued by handlers.
const CLIENT_QUEUE: usize = 256;
/// Messages that may wait beside a full incoming queue before QoS 0 ones are dropped.
pub const MAX_WAITING: usize = 1024;
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How long in-flight work may keep the connection after shutdown began.
const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("mqtt.url: {0}")]
    Url(String),
    #[error("mqtt.ca_file {path}: {reason}")]
    CaFile { path: std::path::PathBuf, reason: String },
}

pub fn availability_topic(role: &str) -> String {
    format!("smarthomed/{role}/availability")
}

/// The MQTT client id of the daemon's process `role`.
pub fn client_id(role: &str) -> String {
    format!("smarthomed-{role}")
}

/// Client options for `role` ("processor", "syncer", "supervisor-probe", ...).
pub fn client_options(
    config: &Config,
    role: &str,
    internal_password: Option<&Secret>,
) -> Result<MqttOptions, MqttError> {
    let client_id = client_id(role);
    let mut options = if config.mqtt.url.is_empty() {
        let listen = config.broker.listen;
        let host = match listen.ip() {
            ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_string(),
            ip if ip.is_unspecified() => "::1".to_string(),
            ip => ip.to_string(),
        };
        MqttOptions::new(client_id, host, listen.port())
    } else {
        let tls = config.mqtt.ca_file.as_deref().map(private_ca).transpose()?;
        external_options(&config.mqtt.url, client_id, tls)?
    };
    options.set_keep_alive(Duration::from_secs(config.mqtt.keep_alive_secs));
    let payload_limit = config.broker.max_packet_bytes();
    options.set_max_packet_size(payload_limit, payload_limit);
    match internal_password {
        Some(password) if config.mqtt.url.is_empty() => {
            options.set_credentials(INTERNAL_MQTT_USER, password.expose());
        }
        _ if !config.mqtt.username.is_empty() => {
            options.set_credentials(config.mqtt.username.clone(), config.mqtt.password.expose());
        }
        _ => {}
    }
    Ok(options)
}

/// TLS that trusts only the authorities in `path` (a private CA, a self-signed broker).
fn private_ca(path: &std::path::Path) -> Result<TlsConfiguration, MqttError> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let fail = |reason: String| MqttError::CaFile { path: path.to_owned(), reason };
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(path).map_err(|err| fail(err.to_string()))? {
        roots.add(certificate.map_err(|err| fail(err.to_string()))?).map_err(|err| fail(err.to_string()))?;
    }
    if roots.is_empty() {
        return Err(fail("holds no PEM certificate".into()));
    }
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    Ok(TlsConfiguration::Rustls(std::sync::Arc::new(config)))
}

fn external_options(url: &str, client_id: String, tls: Option<TlsConfiguration>) -> Result<MqttOptions, MqttError> {
    let parsed = url::Url::parse(url).map_err(|err| MqttError::Url(err.to_string()))?;
    let host = parsed.host_str().ok_or_else(|| MqttError::Url("no host".into()))?.trim_matches(['[', ']']).to_owned();
    let (transport, default_port) = match (parsed.scheme(), tls) {
        ("mqtt", _) => (Transport::Tcp, 1883),
        ("mqtts", Some(tls)) => (Transport::tls_with_config(tls), 8883),
        ("mqtts", None) => (Transport::tls_with_default_config(), 8883),
        ("ws", _) => (Transport::Ws, 80),
        ("wss", Some(tls)) => (Transport::wss_with_config(tls), 443),
        ("wss", None) => (Transport::wss_with_default_config(), 443),
        (other, _) => return Err(MqttError::Url(format!("unsupported scheme {other}"))),
    };
    let port = parsed.port().unwrap_or(default_port);
    // rumqttc wants the whole URL as the host of a WebSocket connection.
    let host = if matches!(parsed.scheme(), "ws" | "wss") { url.to_owned() } else { host };
    let mut options = MqttOptions::new(client_id, host, port);
    options.set_transport(transport);
    Ok(options)
}

/// A configured but not yet running connection.
pub struct Link {
    role: &'static str,
    client: AsyncClient,
    eventloop: EventLoop,
    subscriptions: Vec<(String, QoS)>,
    reconnect: Backoff,
    /// Being cut off from the broker: alerted once it lasts `mqtt.lost_alert_after_secs`.
    lost: OutageState,
    drain_grace: Duration,
    alerter: Alerter,
    /// Counts the connections made (CONNACKs), for consumers that must act on each.
    connects: tokio::sync::watch::Sender<u64>,
}

/// Acknowledges received QoS 1 messages of a [`Link::persistent`] link.
#[derive(Clone)]
pub struct Acker(AsyncClient);

impl Acker {
    /// Call in the order messages were received, once each is handled.
    pub async fn ack(&self, publish: &Publish) {
        if let Err(err) = self.0.ack(publish).await {
            warn!(topic = publish.topic, "cannot queue acknowledgement: {err}");
        }
    }
}

impl Link {
    pub fn new(role: &'static str, mut options: MqttOptions, config: &Config, alerter: Alerter) -> Self {
        options.set_last_will(LastWill::new(availability_topic(role), "offline", QoS::AtLeastOnce, true));
        let (client, mut eventloop) = AsyncClient::new(options, CLIENT_QUEUE);
        // A reply is an acknowledgement followed by a publish: with Nagle the second
        // small write waits for a delayed ACK, some 40 ms per message.
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        Self {
            role,
            client,
            eventloop,
            subscriptions: Vec::new(),
            reconnect: Backoff::new(
                Duration::from_millis(config.mqtt.reconnect_initial_ms),
                Duration::from_millis(config.mqtt.reconnect_max_ms),
            ),
            lost: OutageState::after(Duration::from_secs(config.mqtt.lost_alert_after_secs)),
            drain_grace: DEFAULT_DRAIN_GRACE,
            alerter,
            connects: tokio::sync::watch::channel(0).0,
        }
    }

    /// Changes at every connect and reconnect to the broker: what a consumer keeps
    /// retained there (which a restarted broker may have lost) is published again.
    pub fn connects(&self) -> tokio::sync::watch::Receiver<u64> {
        self.connects.subscribe()
    }

    /// A link whose broker session outlives the process (clean session off) and whose
    /// messages the consumer acknowledges: what was published for it while it was
    /// away, or received but not taken on, arrives when it is back.
    pub fn persistent(
        role: &'static str,
        mut options: MqttOptions,
        config: &Config,
        alerter: Alerter,
    ) -> (Self, Acker) {
        options.set_clean_session(false);
        options.set_manual_acks(true);
        let link = Self::new(role, options, config, alerter);
        let acker = Acker(link.client.clone());
        (link, acker)
    }

    /// How long after shutdown in-flight work may still use the connection.
    pub fn set_drain_grace(&mut self, grace: Duration) {
        self.drain_grace = grace;
    }

    /// Filters to (re-)subscribe after every connect.
    pub fn subscribe(&mut self, filter: impl Into<String>, qos: QoS) {
        self.subscriptions.push((filter.into(), qos));
    }

    /// A handle for publishing; requests queue while the connection is down.
    pub fn client(&self) -> AsyncClient {
        self.client.clone()
    }

    /// Drives the connection until `shutdown`; then serves in-flight work until the
    /// consumer drops its queue (at most the drain grace), says "offline" and
    /// disconnects.
    pub async fn run(mut self, incoming: mpsc::Sender<Publish>, shutdown: CancellationToken) {
        let mut state = LinkState::default();
        let mut waiting: VecDeque<Publish> = VecDeque::new();
        loop {
            // Only while messages wait for room is the poll raced against that room.
            let event = if waiting.is_empty() {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    event = self.eventloop.poll() => event,
                }
            } else {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    room = incoming.reserve() => {
                        let (Ok(room), Some(publish)) = (room, waiting.pop_front()) else { break };
                        room.send(publish);
                        continue;
                    }
                    event = self.eventloop.poll() => event,
                }
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => self.on_connected(&mut state),
                // One SUBSCRIBE per connect, so its acknowledgement means subscribed.
                Ok(Event::Incoming(Packet::SubAck(_))) => state.to_announce = true,
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    if !self.hand_over(publish, &incoming, &mut waiting) {
                        debug!(role = self.role, "incoming queue closed");
                        break;
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    let wait = self.on_error(&mut state, &err);
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
            state.announce(&self.client, self.role, &self.subscriptions);
        }
        self.drain(&incoming).await;
        self.stop(state.connected_since.is_some()).await;
    }

    /// Queues `publish` for the consumer, or beside the queue when it is full; false
    /// when the consumer is gone.
    fn hand_over(&self, publish: Publish, incoming: &mpsc::Sender<Publish>, waiting: &mut VecDeque<Publish>) -> bool {
        if !waiting.is_empty() {
            waiting.push_back(publish);
        } else {
            match incoming.try_send(publish) {
                Ok(()) => return true,
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
                Err(mpsc::error::TrySendError::Full(publish)) => {
                    warn!(role = self.role, "overloaded: incoming queue full, messages wait");
                    waiting.push_back(publish);
                }
            }
        }
        if waiting.len() > MAX_WAITING
            && let Some(at) = waiting.iter().position(|p| p.qos == QoS::AtMostOnce)
            && let Some(dropped) = waiting.remove(at)
        {
            warn!(role = self.role, topic = dropped.topic, "overloaded: dropped a QoS 0 message");
        }
        true
    }

    fn on_connected(&mut self, state: &mut LinkState) {
        self.reconnect.reset();
        match self.lost.recovered(Instant::now()) {
            Some(ended) => {
                info!(role = self.role, after = ?ended.lasted, "reconnected to the MQTT broker");
                if ended.was_told {
                    self.alerter.announce(Alert::new(
                        self.role,
                        "reconnected to the MQTT broker",
                        format!("after {} s", ended.lasted.as_secs()),
                    ));
                }
            }
            None => info!(role = self.role, "connected to the MQTT broker"),
        }
        state.connected_since = Some(Instant::now());
        state.to_subscribe = !self.subscriptions.is_empty();
        // "online" means subscribed: the embedded broker lets the public in once the
        // processor says it, so no command is published before it has a session to wait in.
        state.to_announce = self.subscriptions.is_empty();
        self.connects.send_modify(|count| *count += 1);
    }

    /// Keeps the connection going for the replies of in-flight work. Messages that
    /// arrive now are not handed out (and, on a persistent link, not acknowledged).
    async fn drain(&mut self, incoming: &mpsc::Sender<Publish>) {
        let grace = tokio::time::sleep(self.drain_grace);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                () = incoming.closed() => return,
                () = &mut grace => {
                    warn!(role = self.role, "in-flight work did not finish within {:?}", self.drain_grace);
                    return;
                }
                event = self.eventloop.poll() => {
                    if event.is_err() {
                        return;
                    }
                }
            }
        }
    }

    fn on_error(&mut self, state: &mut LinkState, err: &ConnectionError) -> Duration {
        if state.connected_since.take().is_some() || !self.lost.is_on() {
            warn!(role = self.role, "MQTT connection lost or refused: {err}; retrying with backoff");
        } else {
            debug!(role = self.role, "MQTT reconnect failed: {err}");
        }
        if let Some(began) = self.lost.failed(err, Instant::now()) {
            self.alerter.raise(Alert::new(
                self.role,
                "cannot reach the MQTT broker",
                format!("for {} s; last error: {err}", began.lasted.as_secs()),
            ));
        }
        self.reconnect.next_delay()
    }

    async fn stop(mut self, connected: bool) {
        if !connected {
            return;
        }
        // Queued without waiting: nothing polls the event loop until we do below, so
        // waiting for room in a full request queue would never end.
        let goodbye = self
            .client
            .try_publish(availability_topic(self.role), QoS::AtLeastOnce, true, "offline")
            .and_then(|()| self.client.try_disconnect());
        if let Err(err) = goodbye {
            debug!(role = self.role, "cannot queue goodbye: {err}");
            return;
        }
        let flushed = tokio::time::timeout(STOP_GRACE, async {
            loop {
                match self.eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        if flushed.is_err() {
            debug!(role = self.role, "broker did not take the goodbye in time");
        }
        info!(role = self.role, "disconnected from the MQTT broker");
    }
}

#[derive(Default)]
struct LinkState {
    connected_since: Option<Instant>,
    /// Subscriptions and the "online" message still to queue after a connect; queued
    /// without waiting (the loop must keep polling), retried until there is room.
    to_subscribe: bool,
    to_announce: bool,
}

impl LinkState {
    fn announce(&mut self, client: &AsyncClient, role: &str, subscriptions: &[(String, QoS)]) {
        if self.to_subscribe {
            let filters = subscriptions.iter().map(|(filter, qos)| rumqttc::SubscribeFilter::new(filter.clone(), *qos));
            match client.try_subscribe_many(filters) {
                Ok(()) => self.to_subscribe = false,
                Err(err) => debug!(role, "subscription not queued yet: {err}"),
            }
        }
        if self.to_announce {
            match client.try_publish(availability_topic(role), QoS::AtLeastOnce, true, "online") {
                Ok(()) => self.to_announce = false,
                Err(err) => debug!(role, "availability not queued yet: {err}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn login(options: &MqttOptions) -> Option<(String, String)> {
        options.credentials().map(|login| (login.username, login.password))
    }

    fn config(text: &str) -> Config {
        Config::parse(text, Path::new("test.toml")).unwrap()
    }

    #[test]
    fn embedded_broker_on_an_unspecified_address_is_reached_on_loopback() {
        let options =
            client_options(&config("[broker]\nlisten = \"0.0.0.0:1999\"\nanonymous = \"always\""), "processor", None)
                .unwrap();
        assert_eq!(options.broker_address(), ("127.0.0.1".to_string(), 1999));
        assert_eq!(options.client_id(), "smarthomed-processor");
    }

    #[test]
    fn internal_credentials_apply_to_the_embedded_broker_only() {
        let internal = Secret::new("pw");
        let options = client_options(&config(""), "syncer", Some(&internal)).unwrap();
        assert_eq!(login(&options), Some((INTERNAL_MQTT_USER.to_string(), "pw".to_string())));

        let external = config(
            "[broker]\nembedded = false\n[mqtt]\nurl = \"mqtt://10.0.0.2\"\nusername = \"home\"\npassword = \"x\"",
        );
        let options = client_options(&external, "syncer", Some(&internal)).unwrap();
        assert_eq!(options.broker_address(), ("10.0.0.2".to_string(), 1883));
        assert_eq!(login(&options), Some(("home".to_string(), "x".to_string())));
    }

    #[test]
    fn external_schemes_pick_default_ports() {
        for (url, port) in
            [("mqtt://h", 1883), ("mqtts://h", 8883), ("mqtt://h:2000", 2000), ("mqtt://[::1]:2001", 2001)]
        {
            let options = external_options(url, "id".into(), None).unwrap();
            assert_eq!(options.broker_address().1, port, "{url}");
        }
        assert_eq!(external_options("mqtt://[::1]:2001", "id".into(), None).unwrap().broker_address().0, "::1");
    }
}
