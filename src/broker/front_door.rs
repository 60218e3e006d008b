//! The broker's public listeners.
//!
//! The front door binds the configured addresses itself (so a taken port is a startup
//! error), reads each connection's CONNECT whole (within the connect timeout), admits
//! or refuses it ([`connect`], [`login`](super::login)) with the protocol's reason code
//! and a log line naming the client's real address, and splices the connection to the
//! engine's loopback listener behind a PROXY v1 header, so the engine sees that address
//! too. It follows the packets each client sends ([`packet_watch`]): it counts them,
//! ends the connection after a DISCONNECT, and refuses an MQTT 5 topic alias with the
//! DISCONNECT the engine does not send. It also enforces the connection limit before a
//! connection costs the engine anything, gives a WebSocket upgrade the same connect
//! timeout, and terminates TLS for the `tls_listen` and `wss_listen` doors, so the
//! certificate can change without a restart. On a stop, each admitted connection's
//! input ends as if its client had gone, and the engine's output is read until it
//! closes: a write that fails inside the engine would lose the message it carried.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
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
use super::packet_watch::{self, PacketWatch, Stop};
use super::sys::Counters;
use crate::config::INTERNAL_MQTT_USER;
use crate::log_limit::{LogLimiter, Verdict as LogVerdict};

/// Client ids of the daemon's own processes, which nobody else may take (a persistent
/// session under `smarthomed-processor` holds the commands queued for the processor).
pub const RESERVED_CLIENT_PREFIX: &str = "smarthomed-";

/// Where accepted connections go.
#[derive(Debug, Clone, Copy)]
pub enum Route {
    /// Plain MQTT (3.1, 3.1.1 and 5): the CONNECT is read and checked here.
    Mqtt(SocketAddr),
    /// MQTT over WebSocket: the CONNECT travels inside frames; the engine checks it.
    WebSocket(SocketAddr),
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
    /// What `$SYS` reports.
    pub counters: Arc<Counters>,
    /// Cancelled once the public may come in; until then only the daemon's own
    /// processes are let through (see [`super::run`]).
    pub open_to_public: CancellationToken,
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
            let admission = Admission {
                logins: self.logins.clone(),
                authenticate: self.authenticate,
                peer,
                listener: name,
                open_to_public: self.open_to_public.clone(),
                stop: shutdown.clone(),
            };
            let counters = self.counters.clone();
            metrics::counter!("smarthomed_broker_connections_total", "listener" => name).increment(1);
            let open = metrics::gauge!("smarthomed_broker_connections", "listener" => name);
            open.increment(1.0);
            tracker.spawn(async move {
                let _counted = OpenConnection(open);
                let slot = Slot { _permit: permit };
                // A stop ends the connection from within: an admitted client's is
                // closed so that the engine finishes its writes (see `splice`).
                if let Err(err) = accept(stream, admission, tls, route, sniff_timeout, counters, slot).await {
                    debug!(listener = name, %peer, "connection ended: {err}");
                }
            });
        }
    }
}

/// A place under `broker.max_connections`, held while the client is connected.
struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
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
    counters: Arc<Counters>,
    slot: Slot,
) -> Result<(), SpliceError> {
    client.set_nodelay(true)?;
    let Some(acceptor) = tls else {
        return splice(client, admission, route, sniff_timeout, counters, slot).await;
    };
    let Some(handshake) = admission.unless_stopping(tokio::time::timeout(sniff_timeout, acceptor.accept(client))).await
    else {
        return Ok(());
    };
    let client = handshake.map_err(|_| SpliceError::HandshakeTimeout)?.map_err(SpliceError::Handshake)?;
    splice(client, admission, route, sniff_timeout, counters, slot).await
}

/// What decides whether a CONNECT goes on to the engine.
struct Admission {
    logins: Arc<LoginGate>,
    authenticate: bool,
    peer: SocketAddr,
    listener: &'static str,
    open_to_public: CancellationToken,
    /// Cancelled when the broker stops.
    stop: CancellationToken,
}

impl Admission {
    /// `work`, or None once the broker stops.
    async fn unless_stopping<T>(&self, work: impl std::future::Future<Output = T>) -> Option<T> {
        tokio::select! {
            () = self.stop.cancelled() => None,
            done = work => Some(done),
        }
    }

    /// The CONNECT to forward, or why the client is refused. The daemon's client ids
    /// (`smarthomed-...`) are for its own processes, which must log in as such; a
    /// checked password is replaced by the gate's token.
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
        Ok(connect)
    }
}

async fn splice<S>(
    mut client: S,
    admission: Admission,
    route: Route,
    sniff_timeout: Duration,
    counters: Arc<Counters>,
    slot: Slot,
) -> Result<(), SpliceError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let listener = admission.listener;
    let (backend_addr, prefix, watch, client_id) = match route {
        Route::WebSocket(addr) => {
            // The WebSocket upgrade request must come within the connect timeout too.
            let Some(head) =
                admission.unless_stopping(tokio::time::timeout(sniff_timeout, read_http_head(&mut client))).await
            else {
                return Ok(());
            };
            let head = head.map_err(|_| SpliceError::Timeout)??;
            // The daemon's processes never use WebSocket.
            if admission.unless_stopping(admission.open_to_public.cancelled()).await.is_none() {
                return Ok(());
            }
            (addr, head, None, String::new())
        }
        Route::Mqtt(addr) => {
            let Some(packet) =
                admission.unless_stopping(tokio::time::timeout(sniff_timeout, read_connect(&mut client))).await
            else {
                return Ok(());
            };
            let packet = packet.map_err(|_| SpliceError::Timeout)??;
            let connect = connect::parse(&packet)?;
            let (level, client_id, user) = (connect.level, connect.client_id.clone(), connect.username.clone());
            let peer = admission.peer;
            match admission.admit(connect).await {
                Ok(connect) => {
                    info!(listener, %peer, client_id, user, protocol_level = level, "MQTT client connecting");
                    if !client_id.starts_with(RESERVED_CLIENT_PREFIX)
                        && admission.unless_stopping(admission.open_to_public.cancelled()).await.is_none()
                    {
                        return Ok(());
                    }
                    let watch = if level == 5 { PacketWatch::refusing_topic_aliases() } else { PacketWatch::default() };
                    (addr, connect.encode(), Some(watch), client_id)
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
    // One write: the engine reads the PROXY header from its first bytes.
    let mut first = proxy_header(admission.peer, backend.local_addr()?, backend_addr).into_bytes();
    first.extend_from_slice(&prefix);
    backend.write_all(&first).await?;
    // Only plain MQTT is framed as packets here; WebSocket carries them in its frames.
    let sent_watch = watch.is_some().then(PacketWatch::default);
    let _connected = Connected::count(&counters);
    let mut received = Tally::new(listener, Direction::Received, watch, counters.clone());
    // The CONNECT alone: nothing after it has been read.
    received.saw(&prefix);
    let sent = Tally::new(listener, Direction::Sent, sent_watch, counters);
    // What the client is told after the engine's last words, when the front door ends
    // the connection.
    let parting = OnceLock::new();
    let (mut client_in, mut client_out) = tokio::io::split(client);
    let (backend_in, mut backend_out) = backend.into_split();
    // Ends when the client said DISCONNECT or went away; the engine is then told with
    // the end of its input, never with a failed write.
    let requests = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            // A stop ends the client's input here, as if it had gone.
            let read = match admission.unless_stopping(client_in.read(&mut buf)).await {
                None | Some(Ok(0) | Err(_)) => break,
                Some(Ok(read)) => read,
            };
            // Nothing after a DISCONNECT goes on, and the connection ends with it; nor
            // does a topic alias, which ends the connection with the reason.
            let stop = received.saw(&buf[..read]);
            let forward = match stop {
                None => read,
                Some(Stop::Disconnect { end }) => end,
                Some(Stop::TopicAlias { start }) => start,
            };
            if backend_out.write_all(&buf[..forward]).await.is_err() {
                return;
            }
            if let Some(Stop::TopicAlias { .. }) = stop {
                info!(
                    listener,
                    peer = %admission.peer,
                    client_id,
                    "MQTT 5 client sent a topic alias, which this broker takes none of: disconnecting it (0x94)"
                );
                let _ = parting.set(&packet_watch::TOPIC_ALIAS_INVALID[..]);
            }
            if stop.is_some() {
                break;
            }
        }
        let _ = backend_out.shutdown().await;
    };
    let replies = forward_replies(backend_in, &mut client_out, sent, &parting);
    tokio::pin!(requests, replies);
    tokio::select! {
        () = &mut requests => {
            // The client is gone: its slot is free. The engine closes its side once it
            // has taken the end of its input; what it sends until then is read and dropped.
            drop(slot);
            let _ = tokio::time::timeout(ENGINE_CLOSE_GRACE, &mut replies).await;
        }
        done = &mut replies => done?,
    }
    Ok(())
}

/// How long the engine may take to close a connection whose client has gone.
const ENGINE_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Copies the engine's output to the client, acknowledging each read at once, so that
/// a second small write in a row (a publish right after an acknowledgement) never waits
/// for our delayed ACK. Once the client cannot take more, the rest is read and dropped
/// until the engine closes: a write that fails inside the engine loses the message it
/// carried (rmqtt 0.24 drops it), while a message written and never acknowledged is
/// delivered again when the client's session resumes. When the engine closes, the
/// client gets the `parting` packet, if one was set, before the end of its connection.
async fn forward_replies(
    mut from: tokio::net::tcp::OwnedReadHalf,
    to: &mut (impl AsyncWrite + Unpin),
    mut sent: Tally,
    parting: &OnceLock<&'static [u8]>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut client_gone = false;
    loop {
        let read = from.read(&mut buf).await?;
        if read == 0 {
            if client_gone {
                return Ok(());
            }
            if let Some(packet) = parting.get() {
                to.write_all(packet).await?;
            }
            return to.shutdown().await;
        }
        if client_gone {
            continue;
        }
        let _ = socket2::SockRef::from(from.as_ref()).set_tcp_quickack(true);
        sent.saw(&buf[..read]);
        // A TLS stream holds what it encrypted until flushed.
        if to.write_all(&buf[..read]).await.is_err() || to.flush().await.is_err() {
            client_gone = true;
        }
    }
}

/// Counts a client as connected, from its admission until dropped.
struct Connected(Arc<Counters>);

impl Connected {
    fn count(counters: &Arc<Counters>) -> Self {
        counters.clients_connected.fetch_add(1, Ordering::Relaxed);
        Self(counters.clone())
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.clients_connected.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy)]
enum Direction {
    /// From clients.
    Received,
    Sent,
}

/// The bytes, and on plain MQTT the messages (PUBLISH packets), one direction of a
/// connection carries, counted per listener for the metrics and in all for `$SYS`.
struct Tally {
    packets: Option<PacketWatch>,
    messages: metrics::Counter,
    bytes: metrics::Counter,
    direction: Direction,
    counters: Arc<Counters>,
}

impl Tally {
    /// `packets` follows the packets of a plain MQTT connection (WebSocket frames hide them).
    fn new(
        listener: &'static str,
        direction: Direction,
        packets: Option<PacketWatch>,
        counters: Arc<Counters>,
    ) -> Self {
        let name = match direction {
            Direction::Received => "received",
            Direction::Sent => "sent",
        };
        Self {
            packets,
            messages: metrics::counter!(format!("smarthomed_broker_messages_{name}_total"), "listener" => listener),
            bytes: metrics::counter!(format!("smarthomed_broker_bytes_{name}_total"), "listener" => listener),
            direction,
            counters,
        }
    }

    /// Counts `bytes`; returns where the watch on them stopped, if it did.
    fn saw(&mut self, bytes: &[u8]) -> Option<Stop> {
        let (total_messages, total_bytes) = match self.direction {
            Direction::Received => (&self.counters.messages_received, &self.counters.bytes_received),
            Direction::Sent => (&self.counters.messages_sent, &self.counters.bytes_sent),
        };
        self.bytes.increment(bytes.len() as u64);
        total_bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let packets = self.packets.as_mut()?;
        let seen = packets.follow(bytes);
        self.messages.increment(seen.publishes);
        total_messages.fetch_add(seen.publishes, Ordering::Relaxed);
        seen.stop
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

/// The PROXY protocol v1 header that tells the engine who the client is.
fn proxy_header(peer: SocketAddr, local: SocketAddr, backend: SocketAddr) -> String {
    // Both ends of the header must be of one family; the loopback side follows the peer's.
    match peer {
        SocketAddr::V4(peer) => {
            format!("PROXY TCP4 {} {} {} {}\r\n", peer.ip(), local.ip(), peer.port(), backend.port())
        }
        SocketAddr::V6(peer) => format!("PROXY TCP6 {} ::1 {} {}\r\n", peer.ip(), peer.port(), backend.port()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_header_names_the_client_in_its_own_family() {
        let local: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let backend: SocketAddr = "127.0.0.1:41000".parse().unwrap();
        let v4 = proxy_header("192.0.2.7:51000".parse().unwrap(), local, backend);
        assert_eq!(v4, "PROXY TCP4 192.0.2.7 127.0.0.1 51000 41000\r\n");
        let v6 = proxy_header("[2001:db8::7]:51000".parse().unwrap(), local, backend);
        assert_eq!(v6, "PROXY TCP6 2001:db8::7 ::1 51000 41000\r\n");
    }
}
