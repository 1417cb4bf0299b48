//! `wire::parse` and `wire::route` on any bytes: no panic, the two agree, and whatever
//! parses as a data header is written back to exactly the bytes it was read from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vpn_core::wire::{
    self, DATA_HEADER_LEN, DATA_OVERHEAD, DataHeader, DataKind, MAX_FRAGMENTS, MAX_FRAME_LEN,
    Message, Route,
};

fuzz_target!(|data: &[u8]| {
    let parsed = wire::parse(data);
    let routed = wire::route(data);
    match (parsed, routed) {
        (Err(a), Err(b)) => assert_eq!(a, b),
        (Ok(message), Ok(route)) => check(data, message, route),
        (p, r) => panic!("parse {p:?} and route {r:?} disagree"),
    }
});

fn check(data: &[u8], message: Message<'_>, route: Route) {
    assert!(wire::message_type(data).is_ok());
    match message {
        Message::HandshakeInit(m) => {
            assert_eq!(route, Route::Network(m.network_id()));
            assert_eq!(m.bytes(), data);
        }
        Message::HandshakeResponse(m) => assert_eq!(route, Route::Index(m.receiver_index())),
        Message::CookieReply(m) => assert_eq!(route, Route::Index(m.receiver_index())),
        Message::Data(header) => {
            assert_eq!(route, Route::Index(header.receiver));
            let payload = data.len() - DATA_OVERHEAD;
            assert!(payload <= MAX_FRAME_LEN);
            match header.kind {
                DataKind::Keepalive => assert_eq!(payload, 0),
                DataKind::Frame => assert!(payload > 0),
                DataKind::Fragment(f) => {
                    assert!(payload > 0);
                    assert!(f.count >= 2 && usize::from(f.count) <= MAX_FRAGMENTS);
                    assert!(f.index < f.count);
                    assert_eq!(f.index == 0, f.offset() == 0);
                    assert!(f.offset() + payload <= MAX_FRAME_LEN);
                }
            }
            let mut written = [0u8; DATA_HEADER_LEN];
            DataHeader::write(&header, &mut written);
            assert_eq!(written, data[..DATA_HEADER_LEN]);
        }
    }
}
