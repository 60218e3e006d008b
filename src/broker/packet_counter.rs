//! Follows the MQTT packets in a byte stream: counts them for the broker's message
//! metrics and spots a client's DISCONNECT.
//!
//! Every client's bytes pass through the front door. [`PacketCounter`] follows the
//! packet framing (a type byte, a variable length, a body) across reads of any size,
//! counts the PUBLISH packets and tells where a DISCONNECT ends, without copying or
//! decoding anything else: the engine leaves a connection open after a DISCONNECT,
//! and clients that wait for the server to close it (as the MQTT specification lets
//! them) would wait forever. A stream that breaks the framing is not the counter's
//! business: the engine closes such a connection.

/// MQTT control packet types.
const PUBLISH: u8 = 3;
const DISCONNECT: u8 = 14;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// The next byte starts a packet.
    #[default]
    Header,
    /// Reading the remaining length: the value so far and its next multiplier.
    Length { value: usize, shift: u32 },
    /// Skipping this many body bytes.
    Body(usize),
}

#[derive(Debug, Default)]
pub struct PacketCounter {
    position: Position,
    /// The type of the packet being read.
    packet_type: u8,
}

/// What one part of the stream held.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// PUBLISH packets that begin in it.
    pub publishes: u64,
    /// Where a DISCONNECT ends in it, if one does; the counter stops there.
    pub disconnect_end: Option<usize>,
}

impl PacketCounter {
    /// Follows `bytes`, the next part of the stream.
    pub fn follow(&mut self, bytes: &[u8]) -> Seen {
        let mut seen = Seen::default();
        let mut rest = bytes;
        while let Some((&byte, tail)) = rest.split_first() {
            match self.position {
                Position::Header => {
                    self.packet_type = byte >> 4;
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
            }
            if self.position == Position::Header && self.packet_type == DISCONNECT {
                seen.disconnect_end = Some(bytes.len() - rest.len());
                return seen;
            }
        }
        seen
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
        let seen = PacketCounter::default().follow(&stream);
        assert_eq!(seen, Seen { publishes: 2, disconnect_end: Some(stream.len()) });
    }

    #[test]
    fn stops_where_a_disconnect_with_properties_ends() {
        let mut bytes = vec![0xc0, 0x00, 0xe0, 0x02, 0x00, 0x00];
        bytes.extend_from_slice(&[0x30, 0x04, 0x00, 0x01, b'x', b'!']);
        let seen = PacketCounter::default().follow(&bytes);
        assert_eq!(seen, Seen { publishes: 0, disconnect_end: Some(6) });
    }

    #[test]
    fn counts_the_same_whatever_the_reads_are_cut_into() {
        let bytes = stream();
        for chunk in [1, 2, 3, 7, 64, 200] {
            let mut counter = PacketCounter::default();
            let seen: Vec<Seen> = bytes.chunks(chunk).map(|part| counter.follow(part)).collect();
            assert_eq!(seen.iter().map(|seen| seen.publishes).sum::<u64>(), 2, "reads of {chunk} bytes");
            let last = seen.last().unwrap();
            assert_eq!(last.disconnect_end, Some(bytes.len() - (bytes.len() - 1) / chunk * chunk), "{chunk}");
        }
    }

    #[test]
    fn a_broken_length_does_not_loop_or_panic() {
        let mut counter = PacketCounter::default();
        counter.follow(&[0x30, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        counter.follow(&[0u8; 64]);
    }
}
