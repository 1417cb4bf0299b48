//! The Noise IKpsk2 handshake of one network, through `snow`.
//!
//! IK fits an overlay whose peers are configured by public key: the initiator knows the
//! responder's static key in advance, so one round trip authenticates both sides and
//! yields transport keys. `psk2` mixes the network's pre-shared key (all zeros when none is
//! configured) into the second message: a host that lacks it can send an initiation but
//! can never complete a session. The prologue binds every handshake to the protocol
//! version and the network id, so an initiation cannot be replayed into another network.
//!
//! Randomness (ephemeral keys) comes from a ChaCha20 stream the caller seeds, never from
//! the operating system, so simulations are reproducible. This module only runs the Noise
//! state machine; deciding whether to answer (rate limits, known peers, replayed
//! timestamps) is the network's job.

use std::sync::Mutex;

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use snow::params::{CipherChoice, DHChoice, HashChoice, NoiseParams};
use snow::resolvers::{BoxedCryptoResolver, CryptoResolver, DefaultResolver, FallbackResolver};
use snow::types::{Cipher as SnowCipher, Dh, Hash, Random};
use snow::{Builder, HandshakeState};

use crate::key::{KEY_LEN, PresharedKey, PrivateKey, PublicKey};
use crate::session::Cipher;
use crate::types::NetworkId;
use crate::wire::{NOISE_INIT_LEN, NOISE_RESPONSE_LEN};

/// The X25519 public key of a private key.
pub(crate) fn x25519_public(private: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    let mut dh = DefaultResolver
        .resolve_dh(&DHChoice::Curve25519)
        .expect("curve25519 in snow's default resolver");
    dh.set(private);
    let mut out = [0u8; KEY_LEN];
    out.copy_from_slice(dh.pubkey());
    out
}

/// Why a handshake message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("handshake message did not decrypt (wrong keys, wrong network or garbled)")]
    Decrypt,
    #[error("handshake payload is malformed")]
    Payload,
    #[error("noise: {0}")]
    Noise(String),
}

impl From<snow::Error> for HandshakeError {
    fn from(e: snow::Error) -> Self {
        match e {
            snow::Error::Decrypt => HandshakeError::Decrypt,
            other => HandshakeError::Noise(other.to_string()),
        }
    }
}

/// Transport keys split from a finished handshake: (initiator to responder, responder to
/// initiator).
pub(crate) type SplitKeys = ([u8; 32], [u8; 32]);

/// A network's handshake identity: its static key, pre-shared key, cipher and prologue.
pub(crate) struct Noise {
    params: NoiseParams,
    private: PrivateKey,
    public: PublicKey,
    psk: [u8; KEY_LEN],
    prologue: [u8; 20],
}

/// An initiation read by the responder, waiting for the decision to answer it.
pub(crate) struct ReadInitiation {
    pub remote: PublicKey,
    /// The initiator's clock (Unix nanoseconds) when it sent the message.
    pub timestamp: u64,
    state: HandshakeState,
}

impl Noise {
    pub(crate) fn new(
        network: NetworkId,
        cipher: Cipher,
        private: PrivateKey,
        psk: Option<&PresharedKey>,
    ) -> Noise {
        let params: NoiseParams = cipher.noise_pattern().parse().expect("valid pattern");
        let mut prologue = [0u8; 20];
        prologue[..16].copy_from_slice(b"vcluster-overlay");
        prologue[16..].copy_from_slice(&network.0.to_le_bytes());
        Noise {
            params,
            public: private.public_key(),
            private,
            psk: psk.map(|k| *k.as_bytes()).unwrap_or([0; KEY_LEN]),
            prologue,
        }
    }

    pub(crate) fn public_key(&self) -> &PublicKey {
        &self.public
    }

    fn builder(&self, seed: [u8; 32]) -> Builder<'_> {
        Builder::with_resolver(self.params.clone(), seeded_resolver(seed))
    }

    /// Writes the Noise part of an initiation to `peer` and returns the state that will
    /// read the response.
    pub(crate) fn initiate(
        &self,
        seed: [u8; 32],
        peer: &PublicKey,
        timestamp: u64,
        out: &mut [u8],
    ) -> Result<HandshakeState, HandshakeError> {
        let mut state = self
            .builder(seed)
            .local_private_key(self.private.as_bytes())?
            .remote_public_key(peer.as_bytes())?
            .psk(2, &self.psk)?
            .prologue(&self.prologue)?
            .build_initiator()?;
        let n = state.write_message(&timestamp.to_le_bytes(), &mut out[..NOISE_INIT_LEN])?;
        debug_assert_eq!(n, NOISE_INIT_LEN);
        Ok(state)
    }

    /// Reads the Noise part of an initiation: who sent it, and when.
    pub(crate) fn read_initiation(
        &self,
        seed: [u8; 32],
        message: &[u8],
    ) -> Result<ReadInitiation, HandshakeError> {
        let mut state = self
            .builder(seed)
            .local_private_key(self.private.as_bytes())?
            .psk(2, &self.psk)?
            .prologue(&self.prologue)?
            .build_responder()?;
        let mut payload = [0u8; 64];
        let n = state.read_message(message, &mut payload)?;
        if n != 8 {
            return Err(HandshakeError::Payload);
        }
        let remote = state
            .get_remote_static()
            .and_then(|k| <[u8; KEY_LEN]>::try_from(k).ok())
            .map(PublicKey)
            .ok_or(HandshakeError::Payload)?;
        let timestamp = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
        Ok(ReadInitiation {
            remote,
            timestamp,
            state,
        })
    }

    /// Writes the Noise part of the response and returns the transport keys.
    pub(crate) fn respond(
        &self,
        mut read: ReadInitiation,
        out: &mut [u8],
    ) -> Result<SplitKeys, HandshakeError> {
        let n = read
            .state
            .write_message(&[], &mut out[..NOISE_RESPONSE_LEN])?;
        debug_assert_eq!(n, NOISE_RESPONSE_LEN);
        Ok(read.state.dangerously_get_raw_split())
    }

    /// Reads a response with the state `initiate` returned. On failure the state is
    /// unchanged (snow rolls back), so a forged response cannot break a pending handshake.
    pub(crate) fn read_response(
        state: &mut HandshakeState,
        message: &[u8],
    ) -> Result<SplitKeys, HandshakeError> {
        let mut payload = [0u8; 16];
        let n = state.read_message(message, &mut payload)?;
        if n != 0 || !state.is_handshake_finished() {
            return Err(HandshakeError::Payload);
        }
        Ok(state.dangerously_get_raw_split())
    }
}

/// snow resolves primitives from a chain: our seeded RNG first, then ring (AES-GCM,
/// ChaCha20-Poly1305, SHA-2), then snow's default (X25519, BLAKE2s: ring has no BLAKE2s).
fn seeded_resolver(seed: [u8; 32]) -> BoxedCryptoResolver {
    let accelerated = FallbackResolver::new(
        Box::new(snow::resolvers::RingResolver),
        Box::new(DefaultResolver),
    );
    Box::new(FallbackResolver::new(
        Box::new(SeededResolver(Mutex::new(ChaCha20Rng::from_seed(seed)))),
        Box::new(accelerated),
    ))
}

struct SeededResolver(Mutex<ChaCha20Rng>);

struct SeededRandom(ChaCha20Rng);

impl Random for SeededRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoResolver for SeededResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        // Each request gets its own stream, drawn from the parent.
        let mut seed = [0u8; 32];
        self.0.lock().expect("rng lock").fill_bytes(&mut seed);
        Some(Box::new(SeededRandom(ChaCha20Rng::from_seed(seed))))
    }
    fn resolve_dh(&self, _: &DHChoice) -> Option<Box<dyn Dh>> {
        None
    }
    fn resolve_hash(&self, _: &HashChoice) -> Option<Box<dyn Hash>> {
        None
    }
    fn resolve_cipher(&self, _: &CipherChoice) -> Option<Box<dyn SnowCipher>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{NOISE_INIT_LEN, NOISE_RESPONSE_LEN};

    fn noise(seed: u8, network: u32, psk: Option<[u8; 32]>) -> Noise {
        Noise::new(
            NetworkId(network),
            Cipher::Aes256Gcm,
            PrivateKey::from_bytes([seed; 32]),
            psk.map(PresharedKey::from_bytes).as_ref(),
        )
    }

    #[test]
    fn both_sides_derive_the_same_keys_in_one_round_trip() {
        let (a, b) = (noise(1, 7, None), noise(2, 7, None));
        let mut init = [0u8; NOISE_INIT_LEN];
        let mut state = a.initiate([3; 32], b.public_key(), 99, &mut init).unwrap();
        let read = b.read_initiation([4; 32], &init).unwrap();
        assert_eq!(read.remote, *a.public_key());
        assert_eq!(read.timestamp, 99);
        let mut resp = [0u8; NOISE_RESPONSE_LEN];
        let responder_keys = b.respond(read, &mut resp).unwrap();
        let initiator_keys = Noise::read_response(&mut state, &resp).unwrap();
        assert_eq!(initiator_keys, responder_keys);
        assert_ne!(initiator_keys.0, initiator_keys.1);
    }

    #[test]
    fn an_initiation_for_another_network_does_not_decrypt() {
        let (a, b_other_net) = (noise(1, 7, None), noise(2, 8, None));
        let mut init = [0u8; NOISE_INIT_LEN];
        a.initiate([3; 32], b_other_net.public_key(), 1, &mut init)
            .unwrap();
        assert_eq!(
            b_other_net.read_initiation([4; 32], &init).err(),
            Some(HandshakeError::Decrypt)
        );
    }

    #[test]
    fn an_initiator_without_the_psk_cannot_finish() {
        let (a_no_psk, b) = (noise(1, 7, None), noise(2, 7, Some([9; 32])));
        let mut init = [0u8; NOISE_INIT_LEN];
        let mut state = a_no_psk
            .initiate([3; 32], b.public_key(), 1, &mut init)
            .unwrap();
        // The first message carries no PSK, so the responder reads it...
        let read = b.read_initiation([4; 32], &init).unwrap();
        let mut resp = [0u8; NOISE_RESPONSE_LEN];
        b.respond(read, &mut resp).unwrap();
        // ...but the initiator can never open the response.
        assert_eq!(
            Noise::read_response(&mut state, &resp),
            Err(HandshakeError::Decrypt)
        );
    }

    #[test]
    fn a_forged_response_leaves_the_pending_handshake_usable() {
        let (a, b) = (noise(1, 7, None), noise(2, 7, None));
        let mut init = [0u8; NOISE_INIT_LEN];
        let mut state = a.initiate([3; 32], b.public_key(), 1, &mut init).unwrap();
        let read = b.read_initiation([4; 32], &init).unwrap();
        let mut resp = [0u8; NOISE_RESPONSE_LEN];
        let keys = b.respond(read, &mut resp).unwrap();
        let mut forged = resp;
        forged[40] ^= 1;
        assert!(Noise::read_response(&mut state, &forged).is_err());
        assert_eq!(Noise::read_response(&mut state, &resp).unwrap(), keys);
    }

    #[test]
    fn seeded_handshakes_are_reproducible() {
        let (a, b) = (noise(1, 7, None), noise(2, 7, None));
        let (mut m1, mut m2) = ([0u8; NOISE_INIT_LEN], [0u8; NOISE_INIT_LEN]);
        a.initiate([5; 32], b.public_key(), 1, &mut m1).unwrap();
        a.initiate([5; 32], b.public_key(), 1, &mut m2).unwrap();
        assert_eq!(m1, m2);
        a.initiate([6; 32], b.public_key(), 1, &mut m2).unwrap();
        assert_ne!(m1, m2);
    }
}
