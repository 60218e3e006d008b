//! MQTT 5 clients for the broker tests: connect, then read every packet that arrives.

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{ConnAck, ConnAckProperties, Packet};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use tokio::sync::mpsc::UnboundedReceiver;

/// A client connected with `clean_start` and a session expiry; returns it, the packets
/// it receives, and whether the broker had a session for it.
pub async fn client(
    port: u16,
    id: &str,
    clean_start: bool,
    session_expiry_secs: Option<u32>,
) -> (AsyncClient, UnboundedReceiver<Packet>, bool) {
    let mut options = options(port, id);
    options.set_clean_start(clean_start);
    options.set_session_expiry_interval(session_expiry_secs);
    client_with(options).await
}

/// The options every test client starts from.
pub fn options(port: u16, id: &str) -> MqttOptions {
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(5));
    options
}

/// As [`client`], with the given options.
pub async fn client_with(options: MqttOptions) -> (AsyncClient, UnboundedReceiver<Packet>, bool) {
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let session_present = connack(&mut eventloop).await.session_present;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            if let Event::Incoming(packet) = event
                && tx.send(packet).is_err()
            {
                return;
            }
        }
    });
    (client, rx, session_present)
}

/// The first packet `pick` takes within `wait`, passing over the others; None when
/// none came.
pub async fn next_packet<T>(
    rx: &mut UnboundedReceiver<Packet>,
    wait: Duration,
    mut pick: impl FnMut(Packet) -> Option<T>,
) -> Option<T> {
    tokio::time::timeout(wait, async {
        while let Some(packet) = rx.recv().await {
            if let Some(found) = pick(packet) {
                return Some(found);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
}

/// The properties of the CONNACK a client connecting with `options` gets (None when it
/// carries none); the client then goes.
pub async fn connack_properties(options: MqttOptions) -> Option<ConnAckProperties> {
    let (_client, mut eventloop) = AsyncClient::new(options, 8);
    connack(&mut eventloop).await.properties
}

/// Polls a new client's event loop until its CONNACK (5 s at most).
async fn connack(eventloop: &mut EventLoop) -> ConnAck {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Event::Incoming(Packet::ConnAck(ack)) = eventloop.poll().await.expect("connect") {
                return ack;
            }
        }
    })
    .await
    .expect("CONNACK")
}
