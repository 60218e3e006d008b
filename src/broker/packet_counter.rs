//! Counts MQTT packets in a byte stream, for the broker's message metrics.
//!
//! rumqttd keeps no counters we can read, but every client's bytes pass through the
//! front door. [`PacketCounter`] follows the packet framing (a type byte, a variable
//! length, a body) across reads of any size and counts the PUBLISH packets, without
//! copying or decoding anything else. A stream that breaks the framing is not the
//! counter's business: rumqttd closes such a connection.

/// MQTT control packet type 3.
const PUBLISH: u8 = 3;

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
}

impl PacketCounter {
    /// Follows `bytes`, the next part of the stream; returns the PUBLISH packets that
    /// begin in it.
    pub fn publishes_in(&mut self, mut bytes: &[u8]) -> u64 {
        let mut publishes = 0;
        while let Some((&byte, rest)) = bytes.split_first() {
            match self.position {
                Position::Header => {
                    if byte >> 4 == PUBLISH {
                        publishes += 1;
                    }
                    self.position = Position::Length { value: 0, shift: 0 };
                    bytes = rest;
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
                    bytes = rest;
                }
                Position::Body(left) => {
                    let skipped = left.min(bytes.len());
                    self.position = if skipped == left { Position::Header } else { Position::Body(left - skipped) };
                    bytes = &bytes[skipped..];
                }
            }
        }
        publishes
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
        assert_eq!(PacketCounter::default().publishes_in(&stream()), 2);
    }

    #[test]
    fn counts_the_same_whatever_the_reads_are_cut_into() {
        let bytes = stream();
        for chunk in [1, 2, 3, 7, 64, 200] {
            let mut counter = PacketCounter::default();
            let total: u64 = bytes.chunks(chunk).map(|part| counter.publishes_in(part)).sum();
            assert_eq!(total, 2, "reads of {chunk} bytes");
        }
    }

    #[test]
    fn a_broken_length_does_not_loop_or_panic() {
        let mut counter = PacketCounter::default();
        counter.publishes_in(&[0x30, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        counter.publishes_in(&[0u8; 64]);
    }
}
