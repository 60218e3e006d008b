//! The size of an MQTT 5 PUBLISH on the wire, to honour a client's Maximum Packet Size.
//!
//! MQTT 5 (3.1.2.11.4) says a message too large for a client is discarded for that
//! client, as if sent. rmqtt 0.24 instead fails the write and closes the connection, so
//! the engine's delivery hook asks here first and drops what would not fit.

use rmqtt::codec::v5::PublishProperties;

/// Bytes a server-assigned topic alias may add (property id and a two-byte alias).
const TOPIC_ALIAS_BYTES: usize = 3;

/// The size of the whole packet (fixed header included) that carries a message with
/// this topic, payload and properties to an MQTT 5 client; `with_packet_id` for QoS 1
/// and 2. It may exceed the exact size by the few bytes of a topic alias (whether the
/// engine adds one is not known here) and never falls short of it.
pub fn v5_publish(topic: &str, payload: usize, with_packet_id: bool, properties: Option<&PublishProperties>) -> usize {
    let properties = TOPIC_ALIAS_BYTES + properties.map_or(0, properties_size);
    let remaining =
        2 + topic.len() + if with_packet_id { 2 } else { 0 } + variable_length_size(properties) + properties + payload;
    1 + variable_length_size(remaining) + remaining
}

/// The encoded size of the properties other than the topic alias.
fn properties_size(properties: &PublishProperties) -> usize {
    let string = |value: usize| 1 + 2 + value;
    let mut size = 0;
    if properties.is_utf8_payload {
        size += 2;
    }
    if properties.message_expiry_interval.is_some() {
        size += 5;
    }
    size += properties.content_type.as_ref().map_or(0, |value| string(value.len()));
    size += properties.response_topic.as_ref().map_or(0, |value| string(value.len()));
    size += properties.correlation_data.as_ref().map_or(0, |value| string(value.len()));
    size += properties.user_properties.iter().map(|(name, value)| 1 + 2 + name.len() + 2 + value.len()).sum::<usize>();
    size += properties.subscription_ids.iter().map(|id| 1 + variable_length_size(id.get() as usize)).sum::<usize>();
    size
}

/// Bytes of MQTT's variable byte integer for `value`.
fn variable_length_size(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use rmqtt::codec::types::{Publish, QoS};
    use rmqtt::codec::v5::{Codec, Packet};
    use std::num::{NonZeroU16, NonZeroU32};
    use tokio_util::codec::Encoder;

    fn encoded(topic: &str, payload: usize, qos: QoS, properties: PublishProperties) -> usize {
        let publish = Publish {
            dup: false,
            retain: false,
            qos,
            topic: topic.into(),
            packet_id: (qos != QoS::AtMostOnce).then_some(NonZeroU16::MIN),
            payload: Bytes::from(vec![b'x'; payload]),
            properties: Some(properties),
        };
        let mut buf = BytesMut::new();
        Codec::new(0, 0).encode(Packet::Publish(Box::new(publish)), &mut buf).expect("encodes");
        buf.len()
    }

    #[test]
    fn matches_the_engines_encoding_plus_a_possible_topic_alias() {
        let full = PublishProperties {
            correlation_data: Some(Bytes::from_static(b"corr")),
            message_expiry_interval: NonZeroU32::new(60),
            content_type: Some("text/plain".into()),
            user_properties: vec![("name".into(), "value".into()), ("a".into(), "".into())],
            is_utf8_payload: true,
            response_topic: Some("reply/here".into()),
            subscription_ids: vec![NonZeroU32::MIN, NonZeroU32::new(300).expect("non-zero")],
            ..PublishProperties::default()
        };
        let cases = [
            ("a/b", 0, QoS::AtMostOnce, PublishProperties::default()),
            ("sensor/kitchen", 100, QoS::AtLeastOnce, PublishProperties::default()),
            // Around the variable length's step at 128 bytes.
            ("t", 117, QoS::AtMostOnce, PublishProperties::default()),
            ("t", 125, QoS::ExactlyOnce, PublishProperties::default()),
            ("webos/android/info", 20_000, QoS::AtLeastOnce, full.clone()),
            ("x", 3, QoS::AtMostOnce, full),
        ];
        for (topic, payload, qos, properties) in cases {
            let exact = encoded(topic, payload, qos, properties.clone());
            let with_id = qos != QoS::AtMostOnce;
            let counted = v5_publish(topic, payload, with_id, Some(&properties));
            assert!((exact..=exact + TOPIC_ALIAS_BYTES).contains(&counted), "{topic} {payload}: {counted} for {exact}");
        }
    }

    #[test]
    fn variable_length_steps() {
        assert_eq!(variable_length_size(127), 1);
        assert_eq!(variable_length_size(128), 2);
        assert_eq!(variable_length_size(16_384), 3);
        assert_eq!(variable_length_size(2_097_152), 4);
    }
}
