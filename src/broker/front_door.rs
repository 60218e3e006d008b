//! The broker's public listeners.
//!
//! rumqttd serves MQTT 3.1.1 and MQTT 5 on separate listeners, and a listener that
//! fails to bind only logs. The front door binds the configured addresses itself (so
//! a taken port is a startup error), reads the first bytes of each connection to learn
//! the protocol level from its CONNECT packet, and splices the connection to rumqttd's
//! internal loopback listener for that version. It also enforces the connection limit
//! before a connection costs the router anything, and terminates TLS for the
//! `tls_listen` and `wss_listen` doors, so rumqttd only ever sees plain loopback
//! connections and the certificate can change without a restart.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::certificates::Certificates;
use super::packet_counter::PacketCounter;

/// The longest prefix needed: fixed header (1), remaining length (up to 4), protocol
/// name length (2), "MQIsdp" (6), protocol level (1).
const MAX_SNIFF_BYTES: usize = 14;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniff {
    NeedMore,
    Level(u8),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SniffError {
    #[error("first packet is not CONNECT (header byte {0:#04x})")]
    NotConnect(u8),
    #[error("malformed remaining length")]
    BadLength,
    #[error("unknown protocol name")]
    BadProtocolName,
}

/// Reads the protocol level from the start of an MQTT CONNECT packet.
pub fn protocol_level(prefix: &[u8]) -> Result<Sniff, SniffError> {
    let Some(&header) = prefix.first() else {
        return Ok(Sniff::NeedMore);
    };
    if header != 0x10 {
        return Err(SniffError::NotConnect(header));
    }
    let mut pos = 1;
    loop {
        let Some(&byte) = prefix.get(pos) else {
            return Ok(Sniff::NeedMore);
        };
        pos += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if pos > 4 {
            return Err(SniffError::BadLength);
        }
    }
    let Some(name_len) = prefix.get(pos..pos + 2) else {
        return Ok(Sniff::NeedMore);
    };
    let name_len = usize::from(u16::from_be_bytes([name_len[0], name_len[1]]));
    pos += 2;
    let Some(name) = prefix.get(pos..pos + name_len) else {
        return if name_len > 6 { Err(SniffError::BadProtocolName) } else { Ok(Sniff::NeedMore) };
    };
    if name != b"MQTT" && name != b"MQIsdp" {
        return Err(SniffError::BadProtocolName);
    }
    match prefix.get(pos + name_len) {
        Some(&level) => Ok(Sniff::Level(level)),
        None => Ok(Sniff::NeedMore),
    }
}

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
}

impl FrontDoor {
    /// Accepts until `shutdown`; each connection lives in `tracker`.
    pub async fn serve(self, tracker: TaskTracker, shutdown: CancellationToken) {
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
                warn!(listener = self.name, %peer, "connection limit reached, refusing");
                continue;
            };
            let route = self.route;
            let sniff_timeout = self.sniff_timeout;
            let name = self.name;
            let tls = self.tls.as_ref().map(|certificates| certificates.acceptor());
            let shutdown = shutdown.clone();
            metrics::counter!("smarthomed_broker_connections_total", "listener" => name).increment(1);
            let open = metrics::gauge!("smarthomed_broker_connections", "listener" => name);
            open.increment(1.0);
            tracker.spawn(async move {
                let _permit = permit;
                let _counted = OpenConnection(open);
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    result = accept(stream, name, tls, route, sniff_timeout) => {
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
    #[error(transparent)]
    Sniff(#[from] SniffError),
}

async fn accept(
    client: TcpStream,
    listener: &'static str,
    tls: Option<tokio_rustls::TlsAcceptor>,
    route: Route,
    sniff_timeout: Duration,
) -> Result<(), SpliceError> {
    client.set_nodelay(true)?;
    let Some(acceptor) = tls else {
        return splice(client, listener, route, sniff_timeout).await;
    };
    let client = tokio::time::timeout(sniff_timeout, acceptor.accept(client))
        .await
        .map_err(|_| SpliceError::HandshakeTimeout)?
        .map_err(SpliceError::Handshake)?;
    splice(client, listener, route, sniff_timeout).await
}

async fn splice<S>(
    mut client: S,
    listener: &'static str,
    route: Route,
    sniff_timeout: Duration,
) -> Result<(), SpliceError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (backend_addr, prefix) = match route {
        Route::Fixed(addr) => (addr, Vec::new()),
        Route::ByVersion { v4, v5 } => {
            let (level, prefix) = tokio::time::timeout(sniff_timeout, read_level(&mut client))
                .await
                .map_err(|_| SpliceError::Timeout)??;
            (if level == 5 { v5 } else { v4 }, prefix)
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

async fn read_level(client: &mut (impl AsyncRead + Unpin)) -> Result<(u8, Vec<u8>), SpliceError> {
    let mut prefix = Vec::with_capacity(MAX_SNIFF_BYTES);
    let mut buf = [0u8; MAX_SNIFF_BYTES];
    loop {
        let wanted = MAX_SNIFF_BYTES - prefix.len();
        let read = client.read(&mut buf[..wanted]).await?;
        if read == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        prefix.extend_from_slice(&buf[..read]);
        if let Sniff::Level(level) = protocol_level(&prefix)? {
            return Ok((level, prefix));
        }
        if prefix.len() >= MAX_SNIFF_BYTES {
            return Err(SniffError::BadProtocolName.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect_prefix(name: &[u8], level: u8) -> Vec<u8> {
        let mut packet = vec![0x10, 0x20];
        packet.extend_from_slice(&(name.len() as u16).to_be_bytes());
        packet.extend_from_slice(name);
        packet.push(level);
        packet.extend_from_slice(&[0x02, 0x00, 0x3c]);
        packet
    }

    #[test]
    fn reads_the_level_of_mqtt_311_5_and_31() {
        assert_eq!(protocol_level(&connect_prefix(b"MQTT", 4)), Ok(Sniff::Level(4)));
        assert_eq!(protocol_level(&connect_prefix(b"MQTT", 5)), Ok(Sniff::Level(5)));
        assert_eq!(protocol_level(&connect_prefix(b"MQIsdp", 3)), Ok(Sniff::Level(3)));
    }

    #[test]
    fn every_truncation_asks_for_more() {
        let packet = connect_prefix(b"MQTT", 5);
        for len in 0..9 {
            assert_eq!(protocol_level(&packet[..len]), Ok(Sniff::NeedMore), "len {len}");
        }
    }

    #[test]
    fn multi_byte_remaining_length() {
        let mut packet = vec![0x10, 0x80, 0x01];
        packet.extend_from_slice(&[0x00, 0x04]);
        packet.extend_from_slice(b"MQTT");
        packet.push(5);
        assert_eq!(protocol_level(&packet), Ok(Sniff::Level(5)));
    }

    #[test]
    fn rejects_what_is_not_a_connect() {
        assert_eq!(protocol_level(b"GET / HTTP/1.1"), Err(SniffError::NotConnect(b'G')));
        assert_eq!(protocol_level(&[0x10, 0xff, 0xff, 0xff, 0xff, 0x01]), Err(SniffError::BadLength));
        assert_eq!(protocol_level(&connect_prefix(b"XQTT", 4)), Err(SniffError::BadProtocolName));
        let mut long_name = vec![0x10, 0x20, 0x00, 0x40];
        long_name.extend_from_slice(b"MQ");
        assert_eq!(protocol_level(&long_name), Err(SniffError::BadProtocolName));
    }
}
