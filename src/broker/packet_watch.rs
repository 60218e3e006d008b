//! Follows the MQTT packets in a client's byte stream: counts them for the broker's
//! message metrics, spots a DISCONNECT, and on MQTT 5 spots a PUBLISH that carries a
//! topic alias.
//!
//! Every client's bytes pass through the front door. [`PacketWatch`] follows the
//! packet framing (a type byte, a variable length, a body) across reads of any size
//! and counts the PUBLISH packets. It tells where a DISCONNECT ends: the engine leaves
//! a connection open after one, and clients that wait for the server to close it (as
//! the MQTT specification lets them) would wait forever.
//!
//! Topic aliases: the engine announces none (its CONNACK carries no Topic Alias
//! Maximum, which means 0), so an MQTT 5 client that sends one must be disconnected
//! with reason 0x94, Topic Alias invalid (MQTT 5, 3.3.2.3.4). rmqtt 0.24 sends no
//! DISCONNECT for it (the Paho suite's client_topic_alias test fails there), so the
//! watch reads the head of each MQTT 5 PUBLISH (topic name, packet identifier and
//! properties, at most [`MAX_PUBLISH_HEAD_BYTES`]) and tells where an offending packet
//! begins. A payload is never copied, so no full MQTT decoder is used here.
//!
//! A stream that breaks the framing or the properties' encoding is not the watch's
//! business: the engine closes such a connection.

/// MQTT control packet types.
const PUBLISH: u8 = 3;
const DISCONNECT: u8 = 14;

/// The MQTT 5 property that carries a topic alias.
const TOPIC_ALIAS: u8 = 0x23;

/// A PUBLISH head (topic name, packet identifier, properties) longer than this is let
/// through unread: only user properties could make one so long, and the engine then
/// ignores an alias behind them, which loses nothing.
pub const MAX_PUBLISH_HEAD_BYTES: usize = 64 * 1024;

/// The DISCONNECT an MQTT 5 client gets for a topic alias: reason 0x94, Topic Alias
/// invalid, no properties.
pub const TOPIC_ALIAS_INVALID: [u8; 3] = [0xe0, 0x01, 0x94];

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// The next byte starts a packet.
    #[default]
    Header,
    /// Reading the remaining length: the value so far and its next multiplier.
    Length { value: usize, shift: u32 },
    /// Skipping this many body bytes.
    Body(usize),
    /// Reading the head of an MQTT 5 PUBLISH, with this many body bytes still to come.
    PublishHead { left: usize },
}

#[derive(Debug, Default)]
pub struct PacketWatch {
    position: Position,
    /// The type of the packet being read.
    packet_type: u8,
    /// The low nibble of its first byte (a PUBLISH's QoS is in it).
    flags: u8,
    /// Whether PUBLISH heads are read for a topic alias (an MQTT 5 client's stream).
    refuse_topic_aliases: bool,
    /// The head of the PUBLISH being read, so far.
    head: Vec<u8>,
}

/// What one part of the stream held.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// PUBLISH packets that begin in it.
    pub publishes: u64,
    /// Where the watch stopped, if it did.
    pub stop: Option<Stop>,
}

/// Why the watch stopped, and where in the part it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// A DISCONNECT ends here: it goes to the engine, nothing after it does.
    Disconnect { end: usize },
    /// A PUBLISH with a topic alias begins here (0 when it began in an earlier part):
    /// neither it nor anything after it goes to the engine.
    TopicAlias { start: usize },
}

impl PacketWatch {
    /// A watch for an MQTT 5 client's stream, which also stops at a topic alias.
    pub fn refusing_topic_aliases() -> Self {
        Self { refuse_topic_aliases: true, ..Self::default() }
    }

    /// Follows `bytes`, the next part of the stream. After a DISCONNECT it goes on with
    /// the next packet; after a topic alias it is inside that packet, and the front
    /// door ends the connection there.
    pub fn follow(&mut self, bytes: &[u8]) -> Seen {
        let mut seen = Seen::default();
        // Where the packet being read began in `bytes`; 0 for one begun earlier.
        let mut packet_start = 0;
        let mut rest = bytes;
        while let Some((&byte, tail)) = rest.split_first() {
            match self.position {
                Position::Header => {
                    packet_start = bytes.len() - rest.len();
                    self.packet_type = byte >> 4;
                    self.flags = byte & 0x0f;
                    if self.packet_type == PUBLISH {
                        seen.publishes += 1;
                    }
                    self.position = Position::Length { value: 0, shift: 0 };
                    rest = tail;
                    continue;
                }
                Position::Length { value, shift } => {
                    let value = value | usize::from(byte & 0x7f) << shift;
                    self.position = if byte & 0x80 != 0 && shift < 21 {
                        Position::Length { value, shift: shift + 7 }
                    } else if value == 0 {
                        Position::Header
                    } else if self.refuse_topic_aliases && self.packet_type == PUBLISH {
                        self.head.clear();
                        Position::PublishHead { left: value }
                    } else {
                        Position::Body(value)
                    };
                    rest = tail;
                }
                Position::Body(left) => {
                    let skipped = left.min(rest.len());
                    self.position = if skipped == left { Position::Header } else { Position::Body(left - skipped) };
                    rest = &rest[skipped..];
                }
                Position::PublishHead { left } => {
                    let room = MAX_PUBLISH_HEAD_BYTES.saturating_sub(self.head.len());
                    let taken = left.min(rest.len()).min(room);
                    self.head.extend_from_slice(&rest[..taken]);
                    rest = &rest[taken..];
                    let left = left - taken;
                    let qos = (self.flags >> 1) & 0x03;
                    match read_publish_head(&self.head, qos) {
                        Head::TopicAlias => {
                            self.head = Vec::new();
                            seen.stop = Some(Stop::TopicAlias { start: packet_start });
                            return seen;
                        }
                        Head::Incomplete if left > 0 && self.head.len() < MAX_PUBLISH_HEAD_BYTES => {
                            self.position = Position::PublishHead { left };
                        }
                        Head::Incomplete | Head::NoTopicAlias => {
                            // A long head's buffer is not kept for the next packet.
                            if self.head.capacity() > 1024 {
                                self.head = Vec::new();
                            }
                            self.position = if left == 0 { Position::Header } else { Position::Body(left) };
                        }
                    }
                }
            }
            if self.position == Position::Header && self.packet_type == DISCONNECT {
                seen.stop = Some(Stop::Disconnect { end: bytes.len() - rest.len() });
                return seen;
            }
        }
        seen
    }
}

/// What the head of an MQTT 5 PUBLISH, read so far, says about a topic alias.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    /// More bytes are needed to tell.
    Incomplete,
    TopicAlias,
    /// No topic alias, or a head too broken to tell (the engine refuses it).
    NoTopicAlias,
}

/// Reads a PUBLISH head (MQTT 5, 3.3.2): topic name, packet identifier when `qos` > 0,
/// property length, properties.
fn read_publish_head(head: &[u8], qos: u8) -> Head {
    let mut reader = Reader(head);
    let Some(topic_len) = reader.two_byte_integer() else { return Head::Incomplete };
    if reader.skip(usize::from(topic_len)).is_none() || (qos > 0 && reader.skip(2).is_none()) {
        return Head::Incomplete;
    }
    let properties_len = match reader.variable_byte_integer() {
        Ok(Some(len)) => len,
        Ok(None) => return Head::Incomplete,
        Err(Malformed) => return Head::NoTopicAlias,
    };
    let available = reader.0.len();
    let mut properties = Reader(&reader.0[..available.min(properties_len)]);
    let mut read = 0;
    while read < properties_len {
        let before = properties.0.len();
        let Some(id) = properties.byte() else { return Head::Incomplete };
        if id == TOPIC_ALIAS {
            return Head::TopicAlias;
        }
        let Some(value) = property_value(id) else { return Head::NoTopicAlias };
        let skipped = match value {
            Value::Fixed(len) => properties.skip(len),
            Value::VariableByteInteger => match properties.variable_byte_integer() {
                Ok(value) => value.map(drop),
                Err(Malformed) => return Head::NoTopicAlias,
            },
            Value::Prefixed => properties.prefixed(),
            Value::Pair => properties.prefixed().and_then(|()| properties.prefixed()),
        };
        if skipped.is_none() {
            // Cut short by what has arrived so far, or by the property length itself.
            return if available < properties_len { Head::Incomplete } else { Head::NoTopicAlias };
        }
        read += before - properties.0.len();
    }
    Head::NoTopicAlias
}

/// How an MQTT 5 property's value is encoded (2.2.2.2).
enum Value {
    Fixed(usize),
    VariableByteInteger,
    /// A two-byte length, then that many bytes (UTF-8 string, binary data).
    Prefixed,
    /// Two prefixed strings (a user property).
    Pair,
}

fn property_value(id: u8) -> Option<Value> {
    Some(match id {
        0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2a => Value::Fixed(1),
        0x13 | 0x21 | 0x22 | 0x23 => Value::Fixed(2),
        0x02 | 0x11 | 0x18 | 0x27 => Value::Fixed(4),
        0x0b => Value::VariableByteInteger,
        0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1a | 0x1c | 0x1f => Value::Prefixed,
        0x26 => Value::Pair,
        _ => return None,
    })
}

/// A variable byte integer longer than four bytes.
#[derive(Debug)]
struct Malformed;

/// Reads from the front of a byte slice; None when it is too short.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&byte, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(byte)
    }

    fn skip(&mut self, len: usize) -> Option<()> {
        self.0 = self.0.get(len..)?;
        Some(())
    }

    fn two_byte_integer(&mut self) -> Option<u16> {
        let value = u16::from_be_bytes([*self.0.first()?, *self.0.get(1)?]);
        self.0 = &self.0[2..];
        Some(value)
    }

    fn prefixed(&mut self) -> Option<()> {
        let len = self.two_byte_integer()?;
        self.skip(usize::from(len))
    }

    fn variable_byte_integer(&mut self) -> Result<Option<usize>, Malformed> {
        let mut value = 0;
        for (index, &byte) in self.0.iter().enumerate().take(4) {
            value |= usize::from(byte & 0x7f) << (7 * index);
            if byte & 0x80 == 0 {
                self.0 = &self.0[index + 1..];
                return Ok(Some(value));
            }
        }
        if self.0.len() >= 4 { Err(Malformed) } else { Ok(None) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CONNECT, PUBLISH (QoS 1, 300-byte payload: a two-byte length), PINGREQ,
    /// PUBLISH (QoS 0), DISCONNECT.
    fn stream() -> Vec<u8> {
        let mut bytes = vec![0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x00];
        let body_len = 2 + 3 + 2 + 300;
        bytes.extend_from_slice(&[0x32, (body_len % 128) as u8 | 0x80, (body_len / 128) as u8]);
        bytes.extend_from_slice(&[0x00, 0x03, b'a', b'/', b'b', 0x00, 0x01]);
        bytes.extend(std::iter::repeat_n(0x30, 300));
        bytes.extend_from_slice(&[0xc0, 0x00]);
        bytes.extend_from_slice(&[0x30, 0x04, 0x00, 0x01, b'x', b'!']);
        bytes.extend_from_slice(&[0xe0, 0x00]);
        bytes
    }

    #[test]
    fn counts_publishes_whole_and_not_payload_bytes_that_look_like_one() {
        let stream = stream();
        let seen = PacketWatch::default().follow(&stream);
        assert_eq!(seen, Seen { publishes: 2, stop: Some(Stop::Disconnect { end: stream.len() }) });
    }

    #[test]
    fn stops_where_a_disconnect_with_properties_ends() {
        let mut bytes = vec![0xc0, 0x00, 0xe0, 0x02, 0x00, 0x00];
        bytes.extend_from_slice(&[0x30, 0x04, 0x00, 0x01, b'x', b'!']);
        let seen = PacketWatch::default().follow(&bytes);
        assert_eq!(seen, Seen { publishes: 0, stop: Some(Stop::Disconnect { end: 6 }) });
    }

    #[test]
    fn counts_the_same_whatever_the_reads_are_cut_into() {
        let bytes = stream();
        for chunk in [1, 2, 3, 7, 64, 200] {
            let mut watch = PacketWatch::default();
            let seen: Vec<Seen> = bytes.chunks(chunk).map(|part| watch.follow(part)).collect();
            assert_eq!(seen.iter().map(|seen| seen.publishes).sum::<u64>(), 2, "reads of {chunk} bytes");
            let last = seen.last().unwrap();
            let end = bytes.len() - (bytes.len() - 1) / chunk * chunk;
            assert_eq!(last.stop, Some(Stop::Disconnect { end }), "{chunk}");
        }
    }

    #[test]
    fn a_broken_length_does_not_loop_or_panic() {
        let mut watch = PacketWatch::refusing_topic_aliases();
        watch.follow(&[0x30, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        watch.follow(&[0u8; 64]);
    }

    /// An MQTT 5 PUBLISH to `a/b` with `properties` and a 200-byte payload.
    fn v5_publish(qos: u8, properties: &[u8]) -> Vec<u8> {
        let mut body = vec![0x00, 0x03, b'a', b'/', b'b'];
        if qos > 0 {
            body.extend_from_slice(&[0x00, 0x07]);
        }
        body.push(u8::try_from(properties.len()).unwrap());
        body.extend_from_slice(properties);
        body.extend(std::iter::repeat_n(0x23, 200));
        let mut packet = vec![0x30 | qos << 1, (body.len() % 128) as u8 | 0x80, (body.len() / 128) as u8];
        packet.extend_from_slice(&body);
        packet
    }

    /// Message expiry, a user property, a content type: every kind of value but one.
    const OTHER_PROPERTIES: &[u8] =
        &[0x02, 0, 0, 0, 60, 0x26, 0, 1, b'k', 0, 2, b'v', b'v', 0x03, 0, 4, b'j', b's', b'o', b'n', 0x01, 1];

    #[test]
    fn an_mqtt_5_publish_without_a_topic_alias_goes_through_whatever_its_properties() {
        let mut bytes = vec![0xc0, 0x00];
        bytes.extend(v5_publish(1, OTHER_PROPERTIES));
        bytes.extend(v5_publish(0, &[]));
        bytes.extend(v5_publish(2, &[0x0b, 0x85, 0x01]));
        for chunk in [1, 5, 64, bytes.len()] {
            let mut watch = PacketWatch::refusing_topic_aliases();
            let seen: Vec<Seen> = bytes.chunks(chunk).map(|part| watch.follow(part)).collect();
            assert!(seen.iter().all(|seen| seen.stop.is_none()), "reads of {chunk} bytes: {seen:?}");
            assert_eq!(seen.iter().map(|seen| seen.publishes).sum::<u64>(), 3);
        }
    }

    #[test]
    fn an_mqtt_5_publish_with_a_topic_alias_stops_the_watch_where_it_begins() {
        for alias in [[0x23, 0, 0], [0x23, 0, 1]] {
            let mut properties = OTHER_PROPERTIES.to_vec();
            properties.extend_from_slice(&alias);
            let mut bytes = vec![0xc0, 0x00];
            bytes.extend(v5_publish(0, &[]));
            let start = bytes.len();
            bytes.extend(v5_publish(1, &properties));
            bytes.extend(v5_publish(0, &[]));
            let seen = PacketWatch::refusing_topic_aliases().follow(&bytes);
            assert_eq!(seen.stop, Some(Stop::TopicAlias { start }), "{alias:?}");

            // Cut into reads, the stop comes in the read that completes the alias, at
            // the packet's start when it is in that read, else at 0.
            let mut watch = PacketWatch::refusing_topic_aliases();
            let (first, second) = bytes.split_at(start + 30);
            assert_eq!(watch.follow(first).stop, None);
            assert_eq!(watch.follow(second).stop, Some(Stop::TopicAlias { start: 0 }));
        }
    }

    #[test]
    fn the_same_alias_from_an_mqtt_3_client_is_payload_and_goes_through() {
        let bytes = v5_publish(0, &[0x23, 0, 1]);
        assert_eq!(PacketWatch::default().follow(&bytes).stop, None);
    }

    #[test]
    fn a_head_that_breaks_the_property_encoding_is_left_to_the_engine() {
        // An unknown property id, then a property length longer than the packet.
        assert_eq!(read_publish_head(&[0, 1, b'a', 2, 0x7f, 0x23], 0), Head::NoTopicAlias);
        let mut bytes = vec![0x30, 0x06, 0x00, 0x01, b'a', 0x7f, 0x01, 0x00];
        bytes.extend(v5_publish(0, &[]));
        let seen = PacketWatch::refusing_topic_aliases().follow(&bytes);
        assert_eq!(seen, Seen { publishes: 2, stop: None });
        assert_eq!(read_publish_head(&[0, 1, b'a', 0xff, 0xff, 0xff, 0xff, 0x01], 0), Head::NoTopicAlias);
    }

    #[test]
    fn an_endless_head_is_read_no_further_than_its_limit() {
        let body_len = MAX_PUBLISH_HEAD_BYTES * 2;
        let mut bytes = vec![0x30];
        let mut len = body_len;
        while len > 0x7f {
            bytes.push((len & 0x7f) as u8 | 0x80);
            len >>= 7;
        }
        bytes.push(len as u8);
        // A topic name of 65,535 bytes, then more: the head never ends within the limit.
        bytes.extend_from_slice(&[0xff, 0xff]);
        let mut watch = PacketWatch::refusing_topic_aliases();
        watch.follow(&bytes);
        for _ in 0..(body_len / 4096) {
            assert_eq!(watch.follow(&[b'x'; 4096]).stop, None);
            assert!(watch.head.len() <= MAX_PUBLISH_HEAD_BYTES);
        }
    }
}
