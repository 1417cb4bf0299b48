//! The datagram format, version 1. `docs/wire-format.md` is the byte-layout reference; this
//! module is its one implementation.
//!
//! Parsing never panics and never allocates: it checks the version, the type and the exact
//! or minimum length, and hands back typed views into the caller's buffer. It knows nothing
//! of keys or sessions; authenticating a message is the session's job.
//!
//! Every message starts `[version][type]`. Multi-byte integers are little-endian.

use crate::types::NetworkId;

/// The only version this code speaks. A datagram of any other version is rejected.
pub const VERSION: u8 = 1;

/// Length of the clear header of data, keepalive and fragment messages. The whole header
/// is authenticated as associated data.
pub const DATA_HEADER_LEN: usize = 16;
/// Length of the AEAD tag that ends every sealed message.
pub const TAG_LEN: usize = 16;
/// Bytes a data message adds to the frame it carries.
pub const DATA_OVERHEAD: usize = DATA_HEADER_LEN + TAG_LEN;

/// Length of the Noise IK first message with an 8-byte timestamp payload:
/// e (32) + encrypted s (32 + 16) + encrypted payload (8 + 16).
pub const NOISE_INIT_LEN: usize = 104;
/// Length of the Noise IK second message with an empty payload: e (32) + tag (16).
pub const NOISE_RESPONSE_LEN: usize = 48;
pub const MAC_LEN: usize = 16;

pub const INIT_LEN: usize = 12 + NOISE_INIT_LEN + 2 * MAC_LEN;
pub const RESPONSE_LEN: usize = 12 + NOISE_RESPONSE_LEN + 2 * MAC_LEN;
pub const COOKIE_NONCE_LEN: usize = 12;
pub const COOKIE_LEN: usize = 16;
pub const COOKIE_REPLY_LEN: usize = 8 + COOKIE_NONCE_LEN + COOKIE_LEN + TAG_LEN;

/// The largest Ethernet frame (without FCS) the overlay carries: 1500 bytes of payload,
/// the 14-byte header and two 802.1Q tags (QinQ). A data message never carries more.
pub const MAX_FRAME_LEN: usize = 1522;

/// Fragments carry at most this many pieces (the count is a 4-bit field).
pub const MAX_FRAGMENTS: usize = 15;
/// Fragment offsets are counted in units of this many bytes (an 8-bit field).
pub const FRAGMENT_UNIT: usize = 8;

/// Message types (the second byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    HandshakeInit = 1,
    HandshakeResponse = 2,
    CookieReply = 3,
    Data = 4,
    Keepalive = 5,
    Fragment = 6,
}

impl MessageType {
    fn from_byte(b: u8) -> Option<MessageType> {
        Some(match b {
            1 => MessageType::HandshakeInit,
            2 => MessageType::HandshakeResponse,
            3 => MessageType::CookieReply,
            4 => MessageType::Data,
            5 => MessageType::Keepalive,
            6 => MessageType::Fragment,
            _ => return None,
        })
    }
}

/// Why a datagram was not accepted as a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("empty datagram")]
    Empty,
    #[error("unsupported protocol version {0} (this is version {VERSION})")]
    Version(u8),
    #[error("unknown message type {0}")]
    UnknownType(u8),
    #[error("{kind:?} message of {len} bytes, expected {expected}")]
    Length {
        kind: MessageType,
        len: usize,
        expected: usize,
    },
    #[error("{kind:?} message of {len} bytes is shorter than its minimum {min}")]
    TooShort {
        kind: MessageType,
        len: usize,
        min: usize,
    },
    #[error("{kind:?} message of {len} bytes is longer than its maximum {max}")]
    TooLong {
        kind: MessageType,
        len: usize,
        max: usize,
    },
    #[error("reserved bytes of a {0:?} message are not zero")]
    Reserved(MessageType),
    #[error("fragment {index} of {count} at offset {offset} is not a valid fragment header")]
    Fragment { index: u8, count: u8, offset: u16 },
}

/// Where a daemon serving several networks on one socket must route a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// A handshake initiation, addressed by the network id in clear.
    Network(NetworkId),
    /// Any other message, addressed by the receiver's session index.
    Index(u32),
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// Reads the version and type bytes.
pub fn message_type(datagram: &[u8]) -> Result<MessageType, WireError> {
    match datagram {
        [] => Err(WireError::Empty),
        [v, ..] if *v != VERSION => Err(WireError::Version(*v)),
        [_] => Err(WireError::TooShort {
            kind: MessageType::Data,
            len: 1,
            min: 2,
        }),
        [_, t, ..] => MessageType::from_byte(*t).ok_or(WireError::UnknownType(*t)),
    }
}

/// Tells which network (initiations) or session index (everything else) a datagram is for,
/// after the same checks [`parse`] makes.
pub fn route(datagram: &[u8]) -> Result<Route, WireError> {
    Ok(match parse(datagram)? {
        Message::HandshakeInit(m) => Route::Network(m.network_id()),
        Message::HandshakeResponse(m) => Route::Index(m.receiver_index()),
        Message::CookieReply(m) => Route::Index(m.receiver_index()),
        Message::Data(h) => Route::Index(h.receiver),
    })
}

/// A parsed datagram: a view into the caller's buffer.
#[derive(Clone, Copy, Debug)]
pub enum Message<'a> {
    HandshakeInit(HandshakeInit<'a>),
    HandshakeResponse(HandshakeResponse<'a>),
    CookieReply(CookieReply<'a>),
    /// Data, keepalive and fragment messages share one header.
    Data(DataHeader),
}

/// Parses a datagram. Never panics, whatever the input.
#[inline]
pub fn parse(datagram: &[u8]) -> Result<Message<'_>, WireError> {
    let kind = message_type(datagram)?;
    let len = datagram.len();
    let exact = |expected: usize| {
        if len == expected {
            Ok(())
        } else {
            Err(WireError::Length {
                kind,
                len,
                expected,
            })
        }
    };
    match kind {
        MessageType::HandshakeInit => {
            exact(INIT_LEN)?;
            if datagram[2..4] != [0, 0] {
                return Err(WireError::Reserved(kind));
            }
            Ok(Message::HandshakeInit(HandshakeInit(datagram)))
        }
        MessageType::HandshakeResponse => {
            exact(RESPONSE_LEN)?;
            if datagram[2..4] != [0, 0] {
                return Err(WireError::Reserved(kind));
            }
            Ok(Message::HandshakeResponse(HandshakeResponse(datagram)))
        }
        MessageType::CookieReply => {
            exact(COOKIE_REPLY_LEN)?;
            if datagram[2..4] != [0, 0] {
                return Err(WireError::Reserved(kind));
            }
            Ok(Message::CookieReply(CookieReply(datagram)))
        }
        MessageType::Data | MessageType::Keepalive | MessageType::Fragment => {
            parse_data_header(kind, datagram).map(Message::Data)
        }
    }
}

#[inline]
fn parse_data_header(kind: MessageType, datagram: &[u8]) -> Result<DataHeader, WireError> {
    let len = datagram.len();
    let payload = len.saturating_sub(DATA_OVERHEAD);
    let min = match kind {
        MessageType::Data | MessageType::Fragment => DATA_OVERHEAD + 1,
        _ => DATA_OVERHEAD,
    };
    if len < min {
        return Err(WireError::TooShort { kind, len, min });
    }
    let body = match kind {
        MessageType::Keepalive => {
            if len != DATA_OVERHEAD {
                return Err(WireError::Length {
                    kind,
                    len,
                    expected: DATA_OVERHEAD,
                });
            }
            if datagram[2..4] != [0, 0] {
                return Err(WireError::Reserved(kind));
            }
            DataKind::Keepalive
        }
        MessageType::Data => {
            if datagram[2..4] != [0, 0] {
                return Err(WireError::Reserved(kind));
            }
            if payload > MAX_FRAME_LEN {
                return Err(WireError::TooLong {
                    kind,
                    len,
                    max: MAX_FRAME_LEN + DATA_OVERHEAD,
                });
            }
            DataKind::Frame
        }
        _ => {
            let index = datagram[2] >> 4;
            let count = datagram[2] & 0x0f;
            let offset = u16::from(datagram[3]);
            let fragment = FragmentInfo {
                index,
                count,
                offset_units: datagram[3],
            };
            let end = usize::from(offset) * FRAGMENT_UNIT + payload;
            let valid = count >= 2
                && index < count
                && (index == 0) == (offset == 0)
                && end <= MAX_FRAME_LEN;
            if !valid {
                return Err(WireError::Fragment {
                    index,
                    count,
                    offset,
                });
            }
            DataKind::Fragment(fragment)
        }
    };
    Ok(DataHeader {
        kind: body,
        receiver: u32_at(datagram, 4),
        counter: u64_at(datagram, 8),
    })
}

/// The header of a data, keepalive or fragment message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataHeader {
    pub kind: DataKind,
    pub receiver: u32,
    pub counter: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataKind {
    /// A whole Ethernet frame.
    Frame,
    /// No payload: proves liveness and confirms a new session.
    Keepalive,
    /// A piece of a frame too large for the path.
    Fragment(FragmentInfo),
}

/// Where a fragment's piece goes. Fragments of one frame are sealed with consecutive
/// counters, so `counter - index` names the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragmentInfo {
    pub index: u8,
    pub count: u8,
    /// Offset of the piece in the frame, in [`FRAGMENT_UNIT`]s.
    pub offset_units: u8,
}

impl FragmentInfo {
    pub fn offset(&self) -> usize {
        usize::from(self.offset_units) * FRAGMENT_UNIT
    }
}

impl DataHeader {
    /// Writes the 16-byte header into `out`.
    #[inline]
    pub fn write(&self, out: &mut [u8; DATA_HEADER_LEN]) {
        out[0] = VERSION;
        let (kind, b2, b3) = match self.kind {
            DataKind::Frame => (MessageType::Data, 0, 0),
            DataKind::Keepalive => (MessageType::Keepalive, 0, 0),
            DataKind::Fragment(f) => (
                MessageType::Fragment,
                (f.index << 4) | (f.count & 0x0f),
                f.offset_units,
            ),
        };
        out[1] = kind as u8;
        out[2] = b2;
        out[3] = b3;
        out[4..8].copy_from_slice(&self.receiver.to_le_bytes());
        out[8..16].copy_from_slice(&self.counter.to_le_bytes());
    }
}

/// Handshake initiation: `[1][1][0 0][network id][sender index][noise 104][mac1][mac2]`.
#[derive(Clone, Copy, Debug)]
pub struct HandshakeInit<'a>(&'a [u8]);

impl<'a> HandshakeInit<'a> {
    pub const NOISE_AT: usize = 12;
    pub const MAC1_AT: usize = Self::NOISE_AT + NOISE_INIT_LEN;
    pub const MAC2_AT: usize = Self::MAC1_AT + MAC_LEN;

    pub fn network_id(&self) -> NetworkId {
        NetworkId(u32_at(self.0, 4))
    }
    pub fn sender_index(&self) -> u32 {
        u32_at(self.0, 8)
    }
    pub fn noise(&self) -> &'a [u8] {
        &self.0[Self::NOISE_AT..Self::MAC1_AT]
    }
    pub fn mac1(&self) -> &'a [u8] {
        &self.0[Self::MAC1_AT..Self::MAC2_AT]
    }
    pub fn mac2(&self) -> &'a [u8] {
        &self.0[Self::MAC2_AT..]
    }
    pub fn bytes(&self) -> &'a [u8] {
        self.0
    }

    /// Writes the fixed part; the caller fills noise and MACs afterwards.
    pub fn write_header(out: &mut [u8], network: NetworkId, sender_index: u32) {
        out[0] = VERSION;
        out[1] = MessageType::HandshakeInit as u8;
        out[2..4].fill(0);
        out[4..8].copy_from_slice(&network.0.to_le_bytes());
        out[8..12].copy_from_slice(&sender_index.to_le_bytes());
    }
}

/// Handshake response: `[1][2][0 0][sender index][receiver index][noise 48][mac1][mac2]`.
#[derive(Clone, Copy, Debug)]
pub struct HandshakeResponse<'a>(&'a [u8]);

impl<'a> HandshakeResponse<'a> {
    pub const NOISE_AT: usize = 12;
    pub const MAC1_AT: usize = Self::NOISE_AT + NOISE_RESPONSE_LEN;
    pub const MAC2_AT: usize = Self::MAC1_AT + MAC_LEN;

    pub fn sender_index(&self) -> u32 {
        u32_at(self.0, 4)
    }
    pub fn receiver_index(&self) -> u32 {
        u32_at(self.0, 8)
    }
    pub fn noise(&self) -> &'a [u8] {
        &self.0[Self::NOISE_AT..Self::MAC1_AT]
    }
    pub fn mac1(&self) -> &'a [u8] {
        &self.0[Self::MAC1_AT..Self::MAC2_AT]
    }
    pub fn mac2(&self) -> &'a [u8] {
        &self.0[Self::MAC2_AT..]
    }
    pub fn bytes(&self) -> &'a [u8] {
        self.0
    }

    pub fn write_header(out: &mut [u8], sender_index: u32, receiver_index: u32) {
        out[0] = VERSION;
        out[1] = MessageType::HandshakeResponse as u8;
        out[2..4].fill(0);
        out[4..8].copy_from_slice(&sender_index.to_le_bytes());
        out[8..12].copy_from_slice(&receiver_index.to_le_bytes());
    }
}

/// Cookie reply: `[1][3][0 0][receiver index][nonce 12][sealed cookie 16 + tag 16]`.
#[derive(Clone, Copy, Debug)]
pub struct CookieReply<'a>(&'a [u8]);

impl<'a> CookieReply<'a> {
    pub const NONCE_AT: usize = 8;
    pub const SEALED_AT: usize = Self::NONCE_AT + COOKIE_NONCE_LEN;

    pub fn receiver_index(&self) -> u32 {
        u32_at(self.0, 4)
    }
    pub fn nonce(&self) -> &'a [u8] {
        &self.0[Self::NONCE_AT..Self::SEALED_AT]
    }
    pub fn sealed_cookie(&self) -> &'a [u8] {
        &self.0[Self::SEALED_AT..]
    }

    pub fn write_header(out: &mut [u8], receiver_index: u32) {
        out[0] = VERSION;
        out[1] = MessageType::CookieReply as u8;
        out[2..4].fill(0);
        out[4..8].copy_from_slice(&receiver_index.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn data_message(kind: DataKind, payload: usize) -> Vec<u8> {
        let mut buf = vec![0u8; DATA_OVERHEAD + payload];
        let mut header = [0u8; DATA_HEADER_LEN];
        DataHeader {
            kind,
            receiver: 0xdead_beef,
            counter: 42,
        }
        .write(&mut header);
        buf[..DATA_HEADER_LEN].copy_from_slice(&header);
        buf
    }

    #[test]
    fn data_header_round_trips() {
        let fragment = DataKind::Fragment(FragmentInfo {
            index: 1,
            count: 2,
            offset_units: 95,
        });
        for kind in [DataKind::Frame, fragment] {
            let buf = data_message(kind, 100);
            let Ok(Message::Data(h)) = parse(&buf) else {
                panic!("not data: {:?}", parse(&buf));
            };
            assert_eq!(h.kind, kind);
            assert_eq!(h.receiver, 0xdead_beef);
            assert_eq!(h.counter, 42);
            assert_eq!(route(&buf), Ok(Route::Index(0xdead_beef)));
        }
        let keepalive = data_message(DataKind::Keepalive, 0);
        assert!(matches!(
            parse(&keepalive),
            Ok(Message::Data(DataHeader {
                kind: DataKind::Keepalive,
                ..
            }))
        ));
    }

    #[test]
    fn wrong_version_and_type_are_named() {
        let mut buf = data_message(DataKind::Frame, 10);
        buf[0] = 2;
        assert_eq!(parse(&buf).unwrap_err(), WireError::Version(2));
        buf[0] = VERSION;
        buf[1] = 99;
        assert_eq!(parse(&buf).unwrap_err(), WireError::UnknownType(99));
        assert_eq!(parse(&[]).unwrap_err(), WireError::Empty);
    }

    #[test]
    fn truncated_messages_are_rejected_not_read() {
        let buf = data_message(DataKind::Frame, 0);
        assert!(matches!(parse(&buf), Err(WireError::TooShort { .. })));
        let mut init = vec![0u8; INIT_LEN];
        HandshakeInit::write_header(&mut init, NetworkId(7), 1);
        assert_eq!(route(&init), Ok(Route::Network(NetworkId(7))));
        assert!(matches!(
            parse(&init[..INIT_LEN - 1]),
            Err(WireError::Length { .. })
        ));
    }

    #[test]
    fn inconsistent_fragment_headers_are_rejected() {
        for (index, count, offset) in [(0, 1, 0), (2, 2, 10), (0, 2, 5), (1, 2, 0)] {
            let buf = data_message(
                DataKind::Fragment(FragmentInfo {
                    index,
                    count,
                    offset_units: offset,
                }),
                10,
            );
            assert!(
                matches!(parse(&buf), Err(WireError::Fragment { .. })),
                "{index}/{count}@{offset}"
            );
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse(&bytes);
            let _ = route(&bytes);
        }

        #[test]
        fn parse_never_panics_on_valid_prefixes(kind in 1u8..=6, rest in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut bytes = vec![VERSION, kind];
            bytes.extend(rest);
            if let Ok(Message::Data(DataHeader { kind: DataKind::Fragment(f), .. })) = parse(&bytes) {
                prop_assert!(f.count >= 2 && f.index < f.count);
            }
        }

        #[test]
        fn data_header_write_then_parse_is_identity(receiver: u32, counter: u64, payload in 1usize..=MAX_FRAME_LEN) {
            let buf = data_message(DataKind::Frame, payload);
            let mut buf = buf;
            let mut header = [0u8; DATA_HEADER_LEN];
            DataHeader { kind: DataKind::Frame, receiver, counter }.write(&mut header);
            buf[..DATA_HEADER_LEN].copy_from_slice(&header);
            let Ok(Message::Data(h)) = parse(&buf) else { panic!() };
            prop_assert_eq!(h, DataHeader { kind: DataKind::Frame, receiver, counter });
        }
    }
}
