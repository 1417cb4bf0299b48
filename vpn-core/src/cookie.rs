//! Denial-of-service protection for handshakes, after WireGuard's mac1/mac2/cookie design.
//!
//! - `mac1`: every handshake message carries a MAC keyed by a hash of the *receiver's*
//!   public key. Checking it costs one HMAC, so datagrams from anyone who does not even
//!   know whom they address are dropped before any Diffie-Hellman work.
//! - Under load (the initiation's source, or the network, has spent its handshake budget:
//!   `Limits` in `config.rs`), an initiation is answered with a cookie reply instead of
//!   being processed: an encrypted value bound to the sender's address and a secret that
//!   rotates every two minutes. The initiator puts the cookie's MAC (`mac2`) in its next
//!   initiation, proving it can receive at that address; such initiations are then
//!   processed within budgets of their own, per source and overall. Spoofed floods thus
//!   cost one HMAC each and never reach the Diffie-Hellman operations.
//!
//! HMAC-SHA256 (truncated to 16 bytes) and ChaCha20-Poly1305 come from ring. This module
//! holds keys and computes MACs; it never decides what to do with a message.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::digest::{SHA256, digest};
use ring::hmac;

use crate::key::PublicKey;
use crate::wire::{COOKIE_LEN, COOKIE_NONCE_LEN, COOKIE_REPLY_LEN, CookieReply, MAC_LEN, TAG_LEN};

/// How long a cookie secret lives, and how long an initiator uses a cookie.
pub(crate) const COOKIE_LIFETIME: Duration = Duration::from_secs(120);

pub(crate) type Mac = [u8; MAC_LEN];
pub(crate) type Cookie = [u8; COOKIE_LEN];

/// The keys derived from one host's public key: to MAC messages addressed to it, and to
/// seal the cookies it sends.
pub(crate) struct MacKeys {
    mac1: hmac::Key,
    cookie: LessSafeKey,
}

impl MacKeys {
    pub(crate) fn of(receiver: &PublicKey) -> MacKeys {
        let derive = |label: &[u8]| {
            let mut input = [0u8; 40];
            input[..8].copy_from_slice(label);
            input[8..].copy_from_slice(receiver.as_bytes());
            digest(&SHA256, &input)
        };
        let mac1 = derive(b"mac1----");
        let cookie = derive(b"cookie--");
        MacKeys {
            mac1: hmac::Key::new(hmac::HMAC_SHA256, mac1.as_ref()),
            cookie: LessSafeKey::new(
                UnboundKey::new(&aead::CHACHA20_POLY1305, cookie.as_ref()).expect("32 bytes"),
            ),
        }
    }

    /// mac1 over everything that precedes it in the message.
    pub(crate) fn mac1(&self, covered: &[u8]) -> Mac {
        truncate(hmac::sign(&self.mac1, covered))
    }

    pub(crate) fn verify_mac1(&self, covered: &[u8], mac: &[u8]) -> bool {
        constant_time_eq(&self.mac1(covered), mac)
    }

    /// Seals `cookie` into a reply to the initiation whose mac1 was `init_mac1`.
    pub(crate) fn seal_cookie_reply(
        &self,
        receiver_index: u32,
        nonce: [u8; COOKIE_NONCE_LEN],
        init_mac1: &[u8],
        cookie: &Cookie,
        out: &mut [u8; COOKIE_REPLY_LEN],
    ) {
        CookieReply::write_header(out, receiver_index);
        out[CookieReply::NONCE_AT..CookieReply::SEALED_AT].copy_from_slice(&nonce);
        let (sealed, tag_out) = out[CookieReply::SEALED_AT..].split_at_mut(COOKIE_LEN);
        sealed.copy_from_slice(cookie);
        let tag = self
            .cookie
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(init_mac1),
                sealed,
            )
            .expect("cookie within AEAD limits");
        tag_out.copy_from_slice(tag.as_ref());
    }

    /// Opens a cookie reply sent by the owner of these keys in answer to our initiation
    /// whose mac1 was `init_mac1`.
    pub(crate) fn open_cookie_reply(
        &self,
        reply: &CookieReply<'_>,
        init_mac1: &[u8],
    ) -> Option<Cookie> {
        let mut sealed = [0u8; COOKIE_LEN + TAG_LEN];
        sealed.copy_from_slice(reply.sealed_cookie());
        let nonce = Nonce::try_assume_unique_for_key(reply.nonce()).ok()?;
        let plain = self
            .cookie
            .open_in_place(nonce, Aad::from(init_mac1), &mut sealed)
            .ok()?;
        plain.try_into().ok()
    }
}

/// mac2 over everything that precedes it, keyed by a cookie.
pub(crate) fn mac2(cookie: &Cookie, covered: &[u8]) -> Mac {
    truncate(hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, cookie),
        covered,
    ))
}

/// The responder's rotating secret, from which cookies for source addresses are derived.
pub(crate) struct CookieSecret {
    key: hmac::Key,
    born: Option<Instant>,
}

impl CookieSecret {
    pub(crate) fn new() -> CookieSecret {
        CookieSecret {
            key: hmac::Key::new(hmac::HMAC_SHA256, &[0; 32]),
            born: None,
        }
    }

    /// The cookie for `source`, rotating the secret first if it is too old.
    pub(crate) fn cookie_for(
        &mut self,
        now: Instant,
        fresh_secret: impl FnOnce() -> [u8; 32],
        source: SocketAddr,
    ) -> Cookie {
        let expired = self
            .born
            .is_none_or(|born| now.saturating_duration_since(born) >= COOKIE_LIFETIME);
        if expired {
            self.key = hmac::Key::new(hmac::HMAC_SHA256, &fresh_secret());
            self.born = Some(now);
        }
        let mut input = [0u8; 18];
        match source.ip() {
            IpAddr::V4(ip) => input[..4].copy_from_slice(&ip.octets()),
            IpAddr::V6(ip) => input[..16].copy_from_slice(&ip.octets()),
        }
        input[16..].copy_from_slice(&source.port().to_le_bytes());
        truncate(hmac::sign(&self.key, &input))
    }
}

fn truncate(tag: hmac::Tag) -> [u8; 16] {
    let mut out = [0u8; 16];
    out.copy_from_slice(&tag.as_ref()[..16]);
    out
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Message, parse};

    #[test]
    fn mac1_is_bound_to_the_receiver_key() {
        let a = MacKeys::of(&PublicKey([1; 32]));
        let b = MacKeys::of(&PublicKey([2; 32]));
        let mac = a.mac1(b"message");
        assert!(a.verify_mac1(b"message", &mac));
        assert!(!b.verify_mac1(b"message", &mac));
        assert!(!a.verify_mac1(b"messagf", &mac));
    }

    #[test]
    fn cookie_reply_opens_only_for_the_initiation_it_answers() {
        let responder = MacKeys::of(&PublicKey([3; 32]));
        let cookie = [7u8; COOKIE_LEN];
        let mut out = [0u8; COOKIE_REPLY_LEN];
        responder.seal_cookie_reply(42, [9; 12], &[1; 16], &cookie, &mut out);
        let Ok(Message::CookieReply(reply)) = parse(&out) else {
            panic!("not a cookie reply")
        };
        assert_eq!(reply.receiver_index(), 42);
        assert_eq!(responder.open_cookie_reply(&reply, &[1; 16]), Some(cookie));
        assert_eq!(responder.open_cookie_reply(&reply, &[2; 16]), None);
    }

    #[test]
    fn cookies_depend_on_source_and_rotate() {
        let t0 = Instant::now();
        let mut secret = CookieSecret::new();
        let a: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let b: SocketAddr = "192.0.2.1:5001".parse().unwrap();
        let ca = secret.cookie_for(t0, || [1; 32], a);
        assert_ne!(ca, secret.cookie_for(t0, || [1; 32], b));
        assert_eq!(
            ca,
            secret.cookie_for(t0 + Duration::from_secs(60), || [2; 32], a)
        );
        assert_ne!(ca, secret.cookie_for(t0 + COOKIE_LIFETIME, || [2; 32], a));
    }
}
