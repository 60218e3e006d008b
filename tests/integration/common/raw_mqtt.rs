//! MQTT byte by byte over a plain TCP connection, for what client libraries will not
//! send (keep alive 0, a topic alias the broker did not offer) and for reading replies
//! exactly as they arrive.

use std::time::Duration;

use smarthomed::broker::connect::Connect;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A CONNECT at protocol `level` (4: 3.1.1, 5) with a clean session and keep alive 0.
pub fn connect_packet(level: u8, client_id: &str, login: Option<(&str, &str)>) -> Connect {
    Connect {
        protocol_name: b"MQTT".to_vec(),
        level,
        flags: 0x02,
        keep_alive: 0,
        properties: Vec::new(),
        client_id: client_id.into(),
        will: None,
        username: login.map(|(user, _)| user.to_owned()),
        password: login.map(|(_, pass)| pass.as_bytes().to_vec()),
    }
}

/// Sends `connect` on a new connection to 127.0.0.1:`port`; returns the connection and
/// the whole CONNACK, or None when the connection failed or closed without one.
pub async fn connack(port: u16, connect: &Connect) -> Option<(TcpStream, Vec<u8>)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    stream.write_all(&connect.encode()).await.ok()?;
    let packet = next_packet(&mut stream).await?;
    assert_eq!(packet[0], 0x20, "not a CONNACK: {packet:?}");
    Some((stream, packet))
}

/// The next whole packet on `stream` (of fewer than 128 body bytes: replies to a
/// test's client), or None when the connection closed or nothing came within 10 s.
pub async fn next_packet(stream: &mut TcpStream) -> Option<Vec<u8>> {
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut packet = vec![0u8; 2];
        stream.read_exact(&mut packet).await.ok()?;
        assert_eq!(packet[1] & 0x80, 0, "a reply longer than a test expects: {packet:?}");
        let mut body = vec![0u8; usize::from(packet[1])];
        stream.read_exact(&mut body).await.ok()?;
        packet.extend(body);
        Some(packet)
    })
    .await
    .ok()
    .flatten()
}
