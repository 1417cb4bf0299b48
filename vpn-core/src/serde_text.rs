//! Serde for the value types that config files and the control API carry, written the way
//! people write them (`docs/config.md`): a network id as a number, a MAC address as
//! `52:54:00:12:34:56`, keys in WireGuard's base64, a cipher by its name.
//!
//! Behind the `serde` feature: the protocol itself never serialises anything. A value that
//! does not parse is named in the error, except a pre-shared key, which is a secret.

use std::fmt;
use std::str::FromStr;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Cipher, MacAddr, NetworkId, PresharedKey, PublicKey};

impl Serialize for NetworkId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.0)
    }
}

impl<'de> Deserialize<'de> for NetworkId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u32::deserialize(d).map(NetworkId)
    }
}

/// Parses a string field; the error quotes the value after `what`.
fn parse_text<'de, D, T>(d: D, what: &str) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    let text = String::deserialize(d)?;
    text.parse()
        .map_err(|e| D::Error::custom(format!("invalid {what} {text:?}: {e}")))
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // ParseMacError already quotes the input and shows the expected form.
        let text = String::deserialize(d)?;
        text.parse().map_err(D::Error::custom)
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_text(d, "public key")
    }
}

impl Serialize for PresharedKey {
    /// The key itself, in base64: whoever serialises a network spec is sending it to the
    /// daemon that needs it. `Debug` still never shows it.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> Deserialize<'de> for PresharedKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse()
            .map_err(|e| D::Error::custom(format!("invalid pre-shared key: {e}")))
    }
}

impl Serialize for Cipher {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Cipher {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // UnknownCipher already quotes the input and lists the names.
        let text = String::deserialize(d)?;
        text.parse().map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

    #[test]
    fn values_are_written_as_people_write_them() {
        let json = serde_json::to_string(&(
            NetworkId(7),
            MacAddr([0x02, 0, 0, 0, 0xff, 0xfe]),
            KEY.parse::<PublicKey>().unwrap(),
            Cipher::ChaCha20Poly1305,
        ))
        .unwrap();
        assert_eq!(
            json,
            format!(r#"[7,"02:00:00:00:ff:fe","{KEY}","chacha20-poly1305"]"#)
        );
        let back: (NetworkId, MacAddr, PublicKey, Cipher) = serde_json::from_str(&json).unwrap();
        assert_eq!(back.0, NetworkId(7));
        assert_eq!(back.2.to_string(), KEY);
    }

    #[test]
    fn a_url_safe_key_is_read_and_written_back_standard() {
        let url_safe = KEY.parse::<PublicKey>().unwrap().to_url_safe();
        let key: PublicKey = serde_json::from_str(&format!("{url_safe:?}")).unwrap();
        assert_eq!(serde_json::to_string(&key).unwrap(), format!("{KEY:?}"));
    }

    #[test]
    fn bad_values_are_named_but_secrets_are_not() {
        let e = serde_json::from_str::<PublicKey>(r#""not-a-key""#).unwrap_err();
        assert!(e.to_string().contains("public key \"not-a-key\""), "{e}");
        let e = serde_json::from_str::<MacAddr>(r#""02:00:00""#).unwrap_err();
        assert!(e.to_string().contains("\"02:00:00\""), "{e}");
        let e = serde_json::from_str::<Cipher>(r#""rot13""#).unwrap_err();
        assert!(e.to_string().contains("rot13"), "{e}");
        let broken = &KEY[..40];
        let e = serde_json::from_str::<PresharedKey>(&format!("{broken:?}")).unwrap_err();
        assert!(e.to_string().contains("pre-shared key"), "{e}");
        assert!(!e.to_string().contains(broken), "the secret is echoed: {e}");
    }

    #[test]
    fn a_preshared_key_round_trips() {
        let psk = PresharedKey::from_bytes([7; 32]);
        let json = serde_json::to_string(&psk).unwrap();
        assert_eq!(serde_json::from_str::<PresharedKey>(&json).unwrap(), psk);
    }
}
