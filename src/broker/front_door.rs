//! The broker's public listeners.
//!
//! rumqttd serves MQTT 3.1.1 and MQTT 5 on separate listeners, and a listener that
//! fails to bind only logs. The front door binds the configured addresses itself (so
//! a taken port is a startup error), reads each connection's CONNECT whole (within the
//! connect timeout), admits or refuses it ([`connect`], [`login`](super::login)), and
//! splices the connection to rumqttd's internal loopback listener for its version. It
//! also enforces the connection limit before a connection costs the router anything,
//! logs each connect and refusal with the client's real address, gives a WebSocket
//! upgrade the same connect timeout, and terminates TLS for the `tls_listen` and
//! `wss_listen` doors, so rumqttd only ever sees plain loopback connections and the
//! certificate can change without a restart.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::certificates::Certificates;
use super::connect::{self, Connect, Refusal};
use super::login::{LoginGate, Verdict};
use super::packet_counter::PacketCounter;
use crate::config::INTERNAL_MQTT_USER;
use crate::log_limit::{LogLimiter, Verdict as LogVerdict};

/// Client ids of the daemon's own processes, which nobody else may take (a persistent
/// session under `smarthomed-processor` holds the commands queued for the processor).
pub const RESERVED_CLIENT_PREFIX: &str = "smarthomed-";

/// Where accepted connections go.
#[derive(Debug, Clone, Copy)]
pub enum Route {
    /// Plain MQTT: by protocol level, 5 to `v5`, anything else to `v4` (which answers
    /// unsupported levels with a refusal).
    ByVersion { v4: SocketAddr, v5: SocketAddr },
    /// MQTT over WebSocket: everything to one backend.
    Fixed(SocketAddr),
}

pub struct FrontDoor {
    pub name: &'static str,
    pub listener: TcpListener,
    pub route: Route,
    pub connections: Arc<Semaphore>,
    /// Both the TLS handshake and the CONNECT must arrive within this.
    pub sniff_timeout: Duration,
    /// Terminate TLS with these before routing.
    pub tls: Option<Arc<Certificates>>,
    pub logins: Arc<LoginGate>,
    /// Whether every client must log in (once accounts exist).
    pub authenticate: bool,
}

impl FrontDoor {
    /// Accepts until `shutdown`; each connection lives in `tracker`.
    pub async fn serve(self, tracker: TaskTracker, shutdown: CancellationToken) {
        // A flood of connections past the limit must not become a flood of log lines.
        let mut refusals_logged = LogLimiter::default();
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = self.listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    warn!(listener = self.name, "accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                metrics::counter!("smarthomed_broker_refused_total", "listener" => self.name).increment(1);
                if let LogVerdict::Log { suppressed_before } = refusals_logged.check("limit", std::time::Instant::now())
                {
                    warn!(listener = self.name, %peer, suppressed_before, "connection limit reached, refusing");
                }
                continue;
            };
            let route = self.route;
            let sniff_timeout = self.sniff_timeout;
            let name = self.name;
            let tls = self.tls.as_ref().map(|certificates| certificates.acceptor());
            let admission =
                Admission { logins: self.logins.clone(), authenticate: self.authenticate, peer, listener: name };
            let shutdown = shutdown.clone();
            metrics::counter!("smarthomed_broker_connections_total", "listener" => name).increment(1);
            let open = metrics::gauge!("smarthomed_broker_connections", "listener" => name);
            open.increment(1.0);
            tracker.spawn(async move {
                let _permit = permit;
                let _counted = OpenConnection(open);
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    result = accept(stream, admission, tls, route, sniff_timeout) => {
                        if let Err(err) = result {
                            debug!(listener = name, %peer, "connection ended: {err}");
                        }
                    }
                }
            });
        }
    }
}

/// Counts a connection as open until dropped, on every way out of its task.
struct OpenConnection(metrics::Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

#[derive(Debug, thiserror::Error)]
enum SpliceError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("no CONNECT within the connect timeout")]
    Timeout,
    #[error("no TLS handshake within the connect timeout")]
    HandshakeTimeout,
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
    #[error("the WebSocket upgrade request is larger than 8 KiB")]
    HeadTooLarge,
    #[error(transparent)]
    Connect(#[from] connect::ConnectError),
}

async fn accept(
    client: TcpStream,
    admission: Admission,
    tls: Option<tokio_rustls::TlsAcceptor>,
    route: Route,
    sniff_timeout: Duration,
) -> Result<(), SpliceError> {
    client.set_nodelay(true)?;
    let Some(acceptor) = tls else {
        return splice(client, admission, route, sniff_timeout).await;
    };
    let client = tokio::time::timeout(sniff_timeout, acceptor.accept(client))
        .await
        .map_err(|_| SpliceError::HandshakeTimeout)?
        .map_err(SpliceError::Handshake)?;
    splice(client, admission, route, sniff_timeout).await
}

/// What decides whether a CONNECT goes on to rumqttd.
struct Admission {
    logins: Arc<LoginGate>,
    authenticate: bool,
    peer: SocketAddr,
    listener: &'static str,
}

impl Admission {
    /// The CONNECT to forward, or why the client is refused. The daemon's client ids
    /// (`smarthomed-...`) are for its own processes, which must log in as such; a
    /// checked password is replaced by the gate's token; keep alive 0 (off), which
    /// rumqttd does not take, becomes the longest keep alive there is.
    async fn admit(&self, mut connect: Connect) -> Result<Connect, Refusal> {
        let internal = connect.username.as_deref() == Some(INTERNAL_MQTT_USER);
        if connect.client_id.starts_with(RESERVED_CLIENT_PREFIX) && !internal {
            return Err(Refusal::NotAuthorized);
        }
        if self.authenticate || internal {
            let Some(user) = connect.username.as_deref() else { return Err(Refusal::NotAuthorized) };
            let password = connect.password.as_deref().unwrap_or_default();
            match self.logins.verify(user, password, Some(self.peer.ip())).await {
                Verdict::Accepted => connect.password = Some(self.logins.token().as_bytes().to_vec()),
                Verdict::BadCredentials => return Err(Refusal::BadCredentials),
                Verdict::Busy => return Err(Refusal::ServerBusy),
            }
        }
        if connect.keep_alive == 0 {
            connect.keep_alive = u16::MAX;
        }
        Ok(connect)
    }
}

async fn splice<S>(
    mut client: S,
    admission: Admission,
    route: Route,
    sniff_timeout: Duration,
) -> Result<(), SpliceError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let listener = admission.listener;
    let (backend_addr, prefix) = match route {
        Route::Fixed(addr) => {
            // The WebSocket upgrade request must come within the connect timeout too.
            let head = tokio::time::timeout(sniff_timeout, read_http_head(&mut client))
                .await
                .map_err(|_| SpliceError::Timeout)??;
            (addr, head)
        }
        Route::ByVersion { v4, v5 } => {
            let packet = tokio::time::timeout(sniff_timeout, read_connect(&mut client))
                .await
                .map_err(|_| SpliceError::Timeout)??;
            let connect = connect::parse(&packet)?;
            let (level, client_id, user) = (connect.level, connect.client_id.clone(), connect.username.clone());
            let peer = admission.peer;
            match admission.admit(connect).await {
                Ok(connect) => {
                    info!(listener, %peer, client_id, user, protocol_level = level, "MQTT client connecting");
                    (if level == 5 { v5 } else { v4 }, connect.encode())
                }
                Err(refusal) => {
                    info!(listener, %peer, client_id, user, "refused MQTT connection: {}", refusal.describe());
                    metrics::counter!("smarthomed_broker_refused_total", "listener" => listener).increment(1);
                    client.write_all(&connect::connack(level, refusal)).await?;
                    client.flush().await?;
                    return client.shutdown().await.map_err(SpliceError::Io);
                }
            }
        }
    };
    let mut backend = TcpStream::connect(backend_addr).await?;
    backend.set_nodelay(true)?;
    backend.write_all(&prefix).await?;
    // Only plain MQTT is framed as packets here; WebSocket carries them in its frames.
    let packets = matches!(route, Route::ByVersion { .. });
    let mut received = Tally::new(listener, "received", packets);
    received.saw(&prefix);
    let sent = Tally::new(listener, "sent", packets);
    let (mut client_in, mut client_out) = tokio::io::split(client);
    let (backend_in, mut backend_out) = backend.into_split();
    let requests = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let read = client_in.read(&mut buf).await?;
            if read == 0 {
                return backend_out.shutdown().await;
            }
            received.saw(&buf[..read]);
            backend_out.write_all(&buf[..read]).await?;
        }
    };
    tokio::try_join!(requests, forward_replies(backend_in, &mut client_out, sent))?;
    Ok(())
}

/// Copies rumqttd's output to the client, acknowledging each read at once. rumqttd
/// leaves Nagle's algorithm on, so its second small write in a row (a publish right
/// after an acknowledgement) would wait for our delayed ACK: 40 ms per message.
async fn forward_replies(
    mut from: tokio::net::tcp::OwnedReadHalf,
    to: &mut (impl AsyncWrite + Unpin),
    mut sent: Tally,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let read = from.read(&mut buf).await?;
        if read == 0 {
            return to.shutdown().await;
        }
        let _ = socket2::SockRef::from(from.as_ref()).set_tcp_quickack(true);
        sent.saw(&buf[..read]);
        to.write_all(&buf[..read]).await?;
        // A TLS stream holds what it encrypted until flushed.
        to.flush().await?;
    }
}

/// The bytes, and on plain MQTT the messages (PUBLISH packets), one direction of a
/// connection carries, counted per listener (`received`: from clients).
struct Tally {
    packets: Option<PacketCounter>,
    messages: metrics::Counter,
    bytes: metrics::Counter,
}

impl Tally {
    fn new(listener: &'static str, direction: &'static str, packets: bool) -> Self {
        Self {
            packets: packets.then(PacketCounter::default),
            messages: metrics::counter!(
                format!("smarthomed_broker_messages_{direction}_total"), "listener" => listener
            ),
            bytes: metrics::counter!(format!("smarthomed_broker_bytes_{direction}_total"), "listener" => listener),
        }
    }

    fn saw(&mut self, bytes: &[u8]) {
        self.bytes.increment(bytes.len() as u64);
        if let Some(packets) = &mut self.packets {
            self.messages.increment(packets.publishes_in(bytes));
        }
    }
}

/// Reads the first packet, which must be a whole CONNECT of at most
/// [`connect::MAX_CONNECT_BYTES`].
async fn read_connect(client: &mut (impl AsyncRead + Unpin)) -> Result<Vec<u8>, SpliceError> {
    let mut packet = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    loop {
        if let Some(total) = connect::packet_len(&packet)? {
            if packet.len() >= total {
                return Ok(packet);
            }
            // Never past the CONNECT: a client may send its next packets right behind it.
            let wanted = (total - packet.len()).min(buf.len());
            let read = client.read(&mut buf[..wanted]).await?;
            if read == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
            packet.extend_from_slice(&buf[..read]);
        } else {
            // Byte by byte until the length is known, so nothing past the CONNECT is read.
            let read = client.read(&mut buf[..1]).await?;
            if read == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
            packet.push(buf[0]);
        }
    }
}

/// Reads an HTTP request head (up to the blank line), at most 8 KiB.
async fn read_http_head(client: &mut (impl AsyncRead + Unpin)) -> Result<Vec<u8>, SpliceError> {
    const MAX_HEAD: usize = 8 * 1024;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    loop {
        let read = client.read(&mut buf).await?;
        if read == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        head.extend_from_slice(&buf[..read]);
        if head.windows(4).any(|window| window == b"\r\n\r\n") {
            return Ok(head);
        }
        if head.len() > MAX_HEAD {
            return Err(SpliceError::HeadTooLarge);
        }
    }
}
