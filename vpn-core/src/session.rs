//! One transport session with a peer: the two AEAD keys a Noise handshake split out, the
//! send counter and the receive replay window.
//!
//! Data messages are sealed and opened in place in the caller's buffer with ring's AEAD and
//! an explicit 64-bit counter as the nonce (encoded as the Noise spec encodes transport
//! nonces for the chosen cipher); the 16-byte clear header is the associated data, so
//! nothing in a data message can be changed undetected. Nothing here allocates.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};

use crate::replay::{Replay, ReplayWindow};
use crate::wire::{DATA_HEADER_LEN, TAG_LEN};

/// The AEAD of a network: both the handshake's and the data path's.
///
/// AES-256-GCM is the default: on CPUs with AES instructions (every x86-64 server of the
/// last decade) ring seals about 2.4x faster with it than with ChaCha20-Poly1305. Pick
/// ChaCha20-Poly1305 for CPUs without AES instructions (small ARM boards), where it is the
/// faster and the constant-time choice. Every host of a network must use the same cipher:
/// it is part of the Noise protocol name, so a mismatch fails the handshake.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Cipher {
    #[default]
    Aes256Gcm,
    ChaCha20Poly1305,
}

impl Cipher {
    /// The Noise protocol name of this network's handshakes.
    pub(crate) fn noise_pattern(self) -> &'static str {
        match self {
            Cipher::Aes256Gcm => "Noise_IKpsk2_25519_AESGCM_BLAKE2s",
            Cipher::ChaCha20Poly1305 => "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s",
        }
    }

    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            Cipher::Aes256Gcm => &aead::AES_256_GCM,
            Cipher::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }

    /// Noise's transport nonce: 32 zero bits, then the counter, big-endian for AES-GCM and
    /// little-endian for ChaChaPoly.
    fn nonce(self, counter: u64) -> Nonce {
        let mut n = [0u8; 12];
        match self {
            Cipher::Aes256Gcm => n[4..].copy_from_slice(&counter.to_be_bytes()),
            Cipher::ChaCha20Poly1305 => n[4..].copy_from_slice(&counter.to_le_bytes()),
        }
        Nonce::assume_unique_for_key(n)
    }

    pub fn name(self) -> &'static str {
        match self {
            Cipher::Aes256Gcm => "aes-256-gcm",
            Cipher::ChaCha20Poly1305 => "chacha20-poly1305",
        }
    }
}

impl fmt::Display for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown cipher {0:?}: expected \"aes-256-gcm\" or \"chacha20-poly1305\"")]
pub struct UnknownCipher(pub String);

impl FromStr for Cipher {
    type Err = UnknownCipher;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "aes-256-gcm" | "aes256gcm" | "aesgcm" => Ok(Cipher::Aes256Gcm),
            "chacha20-poly1305" | "chacha20poly1305" | "chachapoly" => Ok(Cipher::ChaCha20Poly1305),
            _ => Err(UnknownCipher(s.to_string())),
        }
    }
}

/// One direction's key.
pub(crate) struct AeadKey {
    key: LessSafeKey,
    cipher: Cipher,
}

impl AeadKey {
    pub(crate) fn new(cipher: Cipher, bytes: &[u8; 32]) -> AeadKey {
        let unbound = UnboundKey::new(cipher.algorithm(), bytes).expect("32-byte key");
        AeadKey {
            key: LessSafeKey::new(unbound),
            cipher,
        }
    }

    /// Seals `payload` in place and returns the tag to append.
    pub(crate) fn seal(&self, counter: u64, aad: &[u8], payload: &mut [u8]) -> [u8; TAG_LEN] {
        let tag = self
            .key
            .seal_in_place_separate_tag(self.cipher.nonce(counter), Aad::from(aad), payload)
            .expect("payload within AEAD limits");
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Opens `sealed` (ciphertext then tag) in place; returns the plaintext length.
    pub(crate) fn open(&self, counter: u64, aad: &[u8], sealed: &mut [u8]) -> Option<usize> {
        self.key
            .open_in_place(self.cipher.nonce(counter), Aad::from(aad), sealed)
            .ok()
            .map(|plain| plain.len())
    }
}

/// Why a data message did not open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenError {
    Replay(Replay),
    /// The tag did not verify: wrong key, forged or garbled.
    Auth,
    /// The session has received as many messages as it may.
    Exhausted,
}

/// A transport session.
pub(crate) struct Session {
    pub local_index: u32,
    pub remote_index: u32,
    send_key: AeadKey,
    recv_key: AeadKey,
    /// The next counter to send with.
    pub send_counter: u64,
    replay: ReplayWindow,
    /// When the handshake that made it completed.
    pub established: Instant,
    /// `established + reject_after_time`, the instant from which it is never sent on
    /// (`None`: an instant too far to represent). Worked out once, so the per-frame check
    /// compares two instants instead of subtracting them.
    usable_until: Option<Instant>,
    /// Whether this side sent the initiation.
    pub initiator: bool,
    /// When it last opened an authenticated message (responders start using a session
    /// only once the initiator has sent on it).
    pub last_received: Option<Instant>,
}

/// Never send with a counter this high; a session must be replaced long before.
pub(crate) const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);

impl Session {
    pub(crate) fn new(
        cipher: Cipher,
        keys: ([u8; 32], [u8; 32]),
        initiator: bool,
        local_index: u32,
        remote_index: u32,
        now: Instant,
        reject_after: Duration,
    ) -> Session {
        // Noise's split: the first key protects initiator-to-responder traffic.
        let (send, recv) = if initiator {
            (keys.0, keys.1)
        } else {
            (keys.1, keys.0)
        };
        Session {
            local_index,
            remote_index,
            send_key: AeadKey::new(cipher, &send),
            recv_key: AeadKey::new(cipher, &recv),
            send_counter: 0,
            replay: ReplayWindow::default(),
            established: now,
            usable_until: now.checked_add(reject_after),
            initiator,
            last_received: None,
        }
    }

    /// Whether it may still be sent on at `now`: less than `reject_after` (never zero: the
    /// configuration requires it to exceed the rekey time) since it was established.
    #[inline]
    pub(crate) fn usable_at(&self, now: Instant) -> bool {
        self.usable_until.is_none_or(|until| now < until)
    }

    /// Takes `n` consecutive counters for sending, or `None` if the session is used up.
    #[inline]
    pub(crate) fn take_counters(&mut self, n: u64) -> Option<u64> {
        let first = self.send_counter;
        if first.checked_add(n)? >= REJECT_AFTER_MESSAGES {
            return None;
        }
        self.send_counter += n;
        Some(first)
    }

    /// Seals `message[DATA_HEADER_LEN..len - TAG_LEN]` in place behind the header already
    /// written at the front of `message`, and writes the tag at its end.
    #[inline]
    pub(crate) fn seal(&self, counter: u64, message: &mut [u8]) {
        let tag_at = message.len() - TAG_LEN;
        let (header, rest) = message.split_at_mut(DATA_HEADER_LEN);
        let (payload, tag) = rest.split_at_mut(tag_at - DATA_HEADER_LEN);
        tag.copy_from_slice(&self.send_key.seal(counter, header, payload));
    }

    /// Authenticates and decrypts `message` (a whole data message) in place. On success
    /// the plaintext is `message[DATA_HEADER_LEN..DATA_HEADER_LEN + len]`.
    #[inline]
    pub(crate) fn open(
        &mut self,
        now: Instant,
        counter: u64,
        message: &mut [u8],
    ) -> Result<usize, OpenError> {
        if counter >= REJECT_AFTER_MESSAGES {
            return Err(OpenError::Exhausted);
        }
        self.replay.check(counter).map_err(OpenError::Replay)?;
        let (header, sealed) = message.split_at_mut(DATA_HEADER_LEN);
        let len = self
            .recv_key
            .open(counter, header, sealed)
            .ok_or(OpenError::Auth)?;
        self.replay.mark(counter).map_err(OpenError::Replay)?;
        self.last_received = Some(now);
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{DataHeader, DataKind};

    fn pair(cipher: Cipher) -> (Session, Session) {
        let now = Instant::now();
        let keys = ([1u8; 32], [2u8; 32]);
        (
            Session::new(cipher, keys, true, 10, 20, now, Duration::from_secs(180)),
            Session::new(cipher, keys, false, 20, 10, now, Duration::from_secs(180)),
        )
    }

    fn message(receiver: u32, counter: u64, payload: &[u8]) -> Vec<u8> {
        let mut m = vec![0u8; DATA_HEADER_LEN + payload.len() + TAG_LEN];
        let mut h = [0u8; DATA_HEADER_LEN];
        DataHeader {
            kind: DataKind::Frame,
            receiver,
            counter,
        }
        .write(&mut h);
        m[..DATA_HEADER_LEN].copy_from_slice(&h);
        m[DATA_HEADER_LEN..DATA_HEADER_LEN + payload.len()].copy_from_slice(payload);
        m
    }

    #[test]
    fn sealed_message_opens_once_on_the_other_side() {
        for cipher in [Cipher::Aes256Gcm, Cipher::ChaCha20Poly1305] {
            let (a, mut b) = pair(cipher);
            let c = 0;
            let mut m = message(20, c, b"hello frame");
            a.seal(c, &mut m);
            assert_ne!(&m[16..27], b"hello frame");
            let mut replay = m.clone();
            let len = b.open(Instant::now(), c, &mut m).unwrap();
            assert_eq!(&m[16..16 + len], b"hello frame");
            assert_eq!(
                b.open(Instant::now(), c, &mut replay),
                Err(OpenError::Replay(Replay::Duplicate))
            );
        }
    }

    #[test]
    fn any_flipped_bit_fails_authentication_and_does_not_move_the_window() {
        let (a, mut b) = pair(Cipher::Aes256Gcm);
        let mut m = message(20, 5, &[0xab; 64]);
        a.seal(5, &mut m);
        for bit in [0usize, 8 * 3, 8 * 12, 8 * 20, 8 * (m.len() - 1)] {
            let mut bad = m.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(b.open(Instant::now(), 5, &mut bad), Err(OpenError::Auth));
        }
        // The genuine message still opens: failures marked nothing.
        assert!(b.open(Instant::now(), 5, &mut m).is_ok());
    }

    #[test]
    fn the_sender_cannot_open_its_own_messages() {
        let (mut a, b) = pair(Cipher::ChaCha20Poly1305);
        let mut m = message(10, 0, b"reflected");
        b.seal(0, &mut m);
        let mut reflected = m.clone();
        a.seal(0, &mut reflected);
        assert_eq!(
            a.open(Instant::now(), 0, &mut reflected),
            Err(OpenError::Auth)
        );
    }

    #[test]
    fn counters_run_out_before_the_nonce_space() {
        let (mut a, _) = pair(Cipher::Aes256Gcm);
        a.send_counter = REJECT_AFTER_MESSAGES - 2;
        assert_eq!(a.take_counters(1), Some(REJECT_AFTER_MESSAGES - 2));
        assert_eq!(a.take_counters(1), None);
    }

    #[test]
    fn cipher_names_parse() {
        assert_eq!("aes-256-gcm".parse::<Cipher>().unwrap(), Cipher::Aes256Gcm);
        assert_eq!(
            "chacha20-poly1305".parse::<Cipher>().unwrap(),
            Cipher::ChaCha20Poly1305
        );
        assert!(
            "rot13"
                .parse::<Cipher>()
                .unwrap_err()
                .to_string()
                .contains("rot13")
        );
    }
}
