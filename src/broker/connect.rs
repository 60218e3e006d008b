//! The MQTT CONNECT packet (3.1, 3.1.1 and 5), as the front door reads and rewrites
//! it, and the CONNACK it answers a refusal with. Plain functions over bytes.
//!
//! The front door reads each client's CONNECT whole before the engine sees it: to check
//! the login itself at a bounded cost (answering a refusal with the protocol's reason
//! code and a log line naming the client's address) and to keep the daemon's client
//! ids for the daemon.

/// A CONNECT larger than this is refused: credentials and a will fit easily.
pub const MAX_CONNECT_BYTES: usize = 64 * 1024;

const USERNAME_FLAG: u8 = 0x80;
const PASSWORD_FLAG: u8 = 0x40;
const WILL_FLAG: u8 = 0x04;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error("the first packet is not a CONNECT")]
    NotConnect,
    #[error("the CONNECT is larger than {MAX_CONNECT_BYTES} bytes")]
    TooLarge,
    #[error("malformed CONNECT: {0}")]
    Malformed(&'static str),
}

/// The whole length of the packet that starts `bytes` (fixed header included), once
/// enough of it is there to tell.
pub fn packet_len(bytes: &[u8]) -> Result<Option<usize>, ConnectError> {
    let Some(&header) = bytes.first() else { return Ok(None) };
    if header != 0x10 {
        return Err(ConnectError::NotConnect);
    }
    let mut remaining = 0usize;
    for (i, byte) in bytes[1..].iter().enumerate().take(4) {
        remaining |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let total = 1 + i + 1 + remaining;
            return if total > MAX_CONNECT_BYTES { Err(ConnectError::TooLarge) } else { Ok(Some(total)) };
        }
    }
    if bytes.len() > 4 { Err(ConnectError::Malformed("remaining length")) } else { Ok(None) }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// MQTT 5 only, kept as sent.
    pub properties: Vec<u8>,
    pub topic: Vec<u8>,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub protocol_name: Vec<u8>,
    /// 3 (MQTT 3.1), 4 (3.1.1) or 5.
    pub level: u8,
    pub flags: u8,
    pub keep_alive: u16,
    /// MQTT 5 only, kept as sent.
    pub properties: Vec<u8>,
    pub client_id: String,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ConnectError> {
        if self.bytes.len() < n {
            return Err(ConnectError::Malformed(what));
        }
        let (taken, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(taken)
    }

    fn byte(&mut self, what: &'static str) -> Result<u8, ConnectError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, ConnectError> {
        let bytes = self.take(2, what)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    fn binary(&mut self, what: &'static str) -> Result<&'a [u8], ConnectError> {
        let len = self.u16(what)?;
        self.take(usize::from(len), what)
    }

    fn text(&mut self, what: &'static str) -> Result<String, ConnectError> {
        String::from_utf8(self.binary(what)?.to_vec()).map_err(|_| ConnectError::Malformed(what))
    }

    fn varint(&mut self, what: &'static str) -> Result<usize, ConnectError> {
        let mut value = 0usize;
        for i in 0..4 {
            let byte = self.byte(what)?;
            value |= usize::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ConnectError::Malformed(what))
    }

    fn properties(&mut self, what: &'static str) -> Result<Vec<u8>, ConnectError> {
        let len = self.varint(what)?;
        Ok(self.take(len, what)?.to_vec())
    }
}

/// Reads a whole CONNECT packet (as [`packet_len`] measured it).
pub fn parse(packet: &[u8]) -> Result<Connect, ConnectError> {
    let total = packet_len(packet)?.ok_or(ConnectError::Malformed("truncated"))?;
    if packet.len() != total {
        return Err(ConnectError::Malformed("length"));
    }
    let header_len = packet[1..].iter().position(|byte| byte & 0x80 == 0).map_or(1, |i| i + 2);
    let mut reader = Reader { bytes: &packet[header_len..] };
    let protocol_name = reader.binary("protocol name")?.to_vec();
    let level = reader.byte("protocol level")?;
    let flags = reader.byte("connect flags")?;
    let keep_alive = reader.u16("keep alive")?;
    let properties = if level == 5 { reader.properties("properties")? } else { Vec::new() };
    let client_id = reader.text("client id")?;
    let will = if flags & WILL_FLAG != 0 {
        let properties = if level == 5 { reader.properties("will properties")? } else { Vec::new() };
        let topic = reader.binary("will topic")?.to_vec();
        let payload = reader.binary("will payload")?.to_vec();
        Some(Will { properties, topic, payload })
    } else {
        None
    };
    let username = if flags & USERNAME_FLAG != 0 { Some(reader.text("user name")?) } else { None };
    let password = if flags & PASSWORD_FLAG != 0 { Some(reader.binary("password")?.to_vec()) } else { None };
    if !reader.bytes.is_empty() {
        return Err(ConnectError::Malformed("bytes after the payload"));
    }
    Ok(Connect { protocol_name, level, flags, keep_alive, properties, client_id, will, username, password })
}

fn put_binary(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
    out.extend_from_slice(&bytes[..bytes.len().min(usize::from(u16::MAX))]);
}

fn put_varint(out: &mut Vec<u8>, mut value: usize) {
    loop {
        let byte = (value % 128) as u8;
        value /= 128;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

impl Connect {
    /// The packet again, with whatever was changed.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        put_binary(&mut body, &self.protocol_name);
        body.push(self.level);
        let mut flags = self.flags & !(USERNAME_FLAG | PASSWORD_FLAG);
        if self.username.is_some() {
            flags |= USERNAME_FLAG;
        }
        if self.password.is_some() {
            flags |= PASSWORD_FLAG;
        }
        body.push(flags);
        body.extend_from_slice(&self.keep_alive.to_be_bytes());
        if self.level == 5 {
            put_varint(&mut body, self.properties.len());
            body.extend_from_slice(&self.properties);
        }
        put_binary(&mut body, self.client_id.as_bytes());
        if let Some(will) = &self.will {
            if self.level == 5 {
                put_varint(&mut body, will.properties.len());
                body.extend_from_slice(&will.properties);
            }
            put_binary(&mut body, &will.topic);
            put_binary(&mut body, &will.payload);
        }
        if let Some(username) = &self.username {
            put_binary(&mut body, username.as_bytes());
        }
        if let Some(password) = &self.password {
            put_binary(&mut body, password);
        }
        let mut packet = vec![0x10];
        put_varint(&mut packet, body.len());
        packet.extend_from_slice(&body);
        packet
    }
}

/// Why a CONNECT is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    BadCredentials,
    NotAuthorized,
    ServerBusy,
}

impl Refusal {
    pub fn describe(self) -> &'static str {
        match self {
            Refusal::BadCredentials => "bad user name or password",
            Refusal::NotAuthorized => "not authorized",
            Refusal::ServerBusy => "too many failed logins, try later",
        }
    }
}

/// The CONNACK that tells a client of `level` why it is refused.
pub fn connack(level: u8, refusal: Refusal) -> Vec<u8> {
    if level == 5 {
        let reason = match refusal {
            Refusal::BadCredentials => 0x86,
            Refusal::NotAuthorized => 0x87,
            Refusal::ServerBusy => 0x89,
        };
        vec![0x20, 0x03, 0x00, reason, 0x00]
    } else {
        let code = match refusal {
            Refusal::BadCredentials => 0x04,
            Refusal::NotAuthorized => 0x05,
            Refusal::ServerBusy => 0x03,
        };
        vec![0x20, 0x02, 0x00, code]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(level: u8) -> Connect {
        Connect {
            protocol_name: if level == 3 { b"MQIsdp".to_vec() } else { b"MQTT".to_vec() },
            level,
            flags: 0x02 | WILL_FLAG | 0x08,
            keep_alive: 0,
            properties: if level == 5 { vec![0x11, 0, 0, 0, 60] } else { Vec::new() },
            client_id: "esp32-kitchen".into(),
            will: Some(Will {
                properties: if level == 5 { vec![0x01, 1] } else { Vec::new() },
                topic: b"home/esp32/status".to_vec(),
                payload: b"offline".to_vec(),
            }),
            username: Some("esp32".into()),
            password: Some(b"s3cret".to_vec()),
        }
    }

    #[test]
    fn every_version_reads_back_what_was_written() {
        for level in [3, 4, 5] {
            let connect = sample(level);
            let packet = connect.encode();
            assert_eq!(packet_len(&packet), Ok(Some(packet.len())));
            let read = parse(&packet).unwrap();
            assert_eq!(read, Connect { flags: connect.flags | USERNAME_FLAG | PASSWORD_FLAG, ..connect });
        }
    }

    #[test]
    fn reads_what_a_real_client_sends() {
        // mosquitto_pub -V mqttv311 -i pub -u u -P p: clean session, keep alive 60.
        let packet = [
            0x10, 0x15, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0xc2, 0x00, 0x3c, 0x00, 0x03, b'p', b'u', b'b', 0x00,
            0x01, b'u', 0x00, 0x01, b'p',
        ];
        let connect = parse(&packet).unwrap();
        assert_eq!((connect.level, connect.keep_alive, connect.client_id.as_str()), (4, 60, "pub"));
        assert_eq!((connect.username.as_deref(), connect.password.as_deref()), (Some("u"), Some(&b"p"[..])));
        assert_eq!(connect.encode(), packet);
    }

    #[test]
    fn a_new_password_and_keep_alive_are_written_with_the_lengths_right() {
        let mut connect = sample(5);
        connect.password = Some(vec![b'x'; 200]);
        connect.keep_alive = u16::MAX;
        let packet = connect.encode();
        assert_eq!(packet_len(&packet), Ok(Some(packet.len())));
        let read = parse(&packet).unwrap();
        assert_eq!((read.keep_alive, read.password.map(|p| p.len())), (u16::MAX, Some(200)));
    }

    #[test]
    fn lengths_are_known_only_once_the_header_is_there_and_are_bounded() {
        assert_eq!(packet_len(&[]), Ok(None));
        assert_eq!(packet_len(&[0x10]), Ok(None));
        assert_eq!(packet_len(&[0x10, 0x80]), Ok(None));
        assert_eq!(packet_len(&[0x10, 0x80, 0x01]), Ok(Some(131)));
        assert_eq!(packet_len(&[0x10, 0xff, 0xff, 0x7f]), Err(ConnectError::TooLarge));
        assert_eq!(packet_len(b"GET /"), Err(ConnectError::NotConnect));
        assert_eq!(packet_len(&[0x10, 0xff, 0xff, 0xff, 0xff]), Err(ConnectError::Malformed("remaining length")));
    }

    #[test]
    fn damaged_packets_are_errors_not_panics() {
        let packet = sample(5).encode();
        for cut in 0..packet.len() {
            let mut damaged = packet[..cut].to_vec();
            damaged.resize(packet.len(), 0xff);
            let _ = parse(&damaged);
            let _ = parse(&packet[..cut]);
        }
        let mut garbage = vec![0x10, 0x05, 0x00, 0x09, b'M', b'Q', b'T'];
        garbage.truncate(7);
        assert!(parse(&garbage).is_err());
    }

    #[test]
    fn refusals_carry_each_versions_code() {
        assert_eq!(connack(4, Refusal::BadCredentials), [0x20, 0x02, 0x00, 0x04]);
        assert_eq!(connack(3, Refusal::NotAuthorized), [0x20, 0x02, 0x00, 0x05]);
        assert_eq!(connack(5, Refusal::BadCredentials), [0x20, 0x03, 0x00, 0x86, 0x00]);
        assert_eq!(connack(5, Refusal::ServerBusy), [0x20, 0x03, 0x00, 0x89, 0x00]);
    }
}
