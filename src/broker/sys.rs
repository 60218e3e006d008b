//! Mosquitto's `$SYS/broker/...` topics, which dashboards and `mosquitto_sub -t
//! '$SYS/#'` users expect: clients connected, messages and bytes each way, uptime and
//! version, published every `broker.sys_interval_secs`.
//!
//! The figures are counted at the front door (every client's bytes pass it) in
//! [`Counters`]; [`messages`] turns a reading into topics and payloads; the engine
//! publishes them. Unlike Mosquitto's they are not retained: retained messages are
//! written to disk, and a Raspberry Pi's SD card should not take a write every few
//! seconds for figures that are stale by the next one.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// What the front door counts, for `$SYS` (the Prometheus metrics count the same).
#[derive(Debug, Default)]
pub struct Counters {
    pub clients_connected: AtomicI64,
    pub messages_received: AtomicU64,
    pub messages_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
}

/// One reading of [`Counters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reading {
    pub clients_connected: u64,
    pub messages_received: u64,
    pub messages_sent: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
}

impl Counters {
    pub fn read(&self) -> Reading {
        Reading {
            clients_connected: u64::try_from(self.clients_connected.load(Ordering::Relaxed)).unwrap_or(0),
            messages_received: self.messages_received.load(Ordering::Relaxed),
            messages_sent: self.messages_sent.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
        }
    }
}

/// The `$SYS` topics and payloads for a reading, in Mosquitto's names and formats.
pub fn messages(reading: &Reading, uptime: Duration) -> Vec<(&'static str, String)> {
    vec![
        ("$SYS/broker/version", format!("smarthomed {} (rmqtt 0.24)", env!("CARGO_PKG_VERSION"))),
        ("$SYS/broker/uptime", format!("{} seconds", uptime.as_secs())),
        ("$SYS/broker/clients/connected", reading.clients_connected.to_string()),
        ("$SYS/broker/messages/received", reading.messages_received.to_string()),
        ("$SYS/broker/messages/sent", reading.messages_sent.to_string()),
        ("$SYS/broker/bytes/received", reading.bytes_received.to_string()),
        ("$SYS/broker/bytes/sent", reading.bytes_sent.to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reading_becomes_mosquittos_topics() {
        let counters = Counters::default();
        counters.clients_connected.fetch_add(3, Ordering::Relaxed);
        counters.messages_received.fetch_add(10, Ordering::Relaxed);
        counters.bytes_sent.fetch_add(512, Ordering::Relaxed);
        let messages = messages(&counters.read(), Duration::from_secs(75));
        let get = |topic: &str| messages.iter().find(|(t, _)| *t == topic).map(|(_, p)| p.as_str());
        assert_eq!(get("$SYS/broker/uptime"), Some("75 seconds"));
        assert_eq!(get("$SYS/broker/clients/connected"), Some("3"));
        assert_eq!(get("$SYS/broker/messages/received"), Some("10"));
        assert_eq!(get("$SYS/broker/messages/sent"), Some("0"));
        assert_eq!(get("$SYS/broker/bytes/sent"), Some("512"));
        assert!(get("$SYS/broker/version").is_some_and(|v| v.starts_with("smarthomed ")));
    }

    #[test]
    fn a_count_that_dipped_below_zero_reads_as_zero() {
        let counters = Counters::default();
        counters.clients_connected.fetch_sub(1, Ordering::Relaxed);
        assert_eq!(counters.read().clients_connected, 0);
    }
}
