//! Keys atrest generates for the managed config.

use crate::config::encryption::Key;
use crate::secret::SecretString;
use base64::Engine as _;
use rand::TryRngCore as _;
use std::fmt;
use std::str::FromStr;
use time::OffsetDateTime;
use time::macros::format_description;
use zeroize::Zeroizing;

/// Length of every generated key: AES-256 for aescbc, the only size secretbox takes.
pub const KEY_BYTES: usize = 32;

/// Provider types atrest can generate keys for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyKind {
    Aescbc,
    Secretbox,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Aescbc => "aescbc",
            KeyKind::Secretbox => "secretbox",
        }
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "aescbc" => Ok(KeyKind::Aescbc),
            "secretbox" => Ok(KeyKind::Secretbox),
            other => Err(format!(
                "atrest generates aescbc or secretbox keys, not {other:?}"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read random bytes from the operating system: {0}")]
pub struct KeyGenError(String);

/// `<kind>key-<RFC 3339 UTC, whole seconds>`, e.g. `aescbckey-2026-11-23T22:40:05Z`.
pub fn key_name(kind: KeyKind, now: OffsetDateTime) -> String {
    let utc = now.to_offset(time::UtcOffset::UTC);
    let stamp = utc
        .format(format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
        ))
        .unwrap_or_else(|_| utc.unix_timestamp().to_string());
    format!("{kind}key-{stamp}")
}

/// `base`, or `base-2`, `base-3`, … whichever is not in `existing`.
pub fn unique_key_name<S: AsRef<str>>(base: &str, existing: &[S]) -> String {
    let taken = |n: &str| existing.iter().any(|e| e.as_ref() == n);
    if !taken(base) {
        return base.to_string();
    }
    (2..)
        .map(|i| format!("{base}-{i}"))
        .find(|n| !taken(n))
        .unwrap_or_else(|| base.to_string())
}

/// A fresh key: 32 bytes from the OS CSPRNG, standard base64, named after `now`.
pub fn new_key(kind: KeyKind, now: OffsetDateTime) -> Result<Key, KeyGenError> {
    new_key_unique::<&str>(kind, now, &[])
}

/// [`new_key`] whose name avoids every name in `existing`.
pub fn new_key_unique<S: AsRef<str>>(
    kind: KeyKind,
    now: OffsetDateTime,
    existing: &[S],
) -> Result<Key, KeyGenError> {
    let mut raw = Zeroizing::new([0u8; KEY_BYTES]);
    rand::rngs::OsRng
        .try_fill_bytes(raw.as_mut())
        .map_err(|e| KeyGenError(e.to_string()))?;
    let secret = SecretString::new(base64::engine::general_purpose::STANDARD.encode(raw.as_ref()));
    Ok(Key {
        name: unique_key_name(&key_name(kind, now), existing),
        secret,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::encryption::validation_test_support::decoded_len;
    use time::macros::datetime;

    #[test]
    fn names_are_rfc3339_utc_seconds() {
        let now = datetime!(2026-11-23 23:40:05.987 +01:00);
        assert_eq!(
            key_name(KeyKind::Aescbc, now),
            "aescbckey-2026-11-23T22:40:05Z"
        );
        assert_eq!(
            key_name(KeyKind::Secretbox, now),
            "secretboxkey-2026-11-23T22:40:05Z"
        );
    }

    #[test]
    fn unique_names_get_a_counter() {
        let base = "aescbckey-2026-11-23T22:40:05Z";
        assert_eq!(unique_key_name(base, &["other"]), base);
        assert_eq!(unique_key_name(base, &[base]), format!("{base}-2"));
        assert_eq!(
            unique_key_name(base, &[base.to_string(), format!("{base}-2")]),
            format!("{base}-3")
        );
    }

    #[test]
    fn keys_are_32_random_bytes_in_standard_base64() {
        let now = datetime!(2026-11-23 22:40:05 UTC);
        let a = new_key(KeyKind::Aescbc, now).unwrap();
        let b = new_key_unique(KeyKind::Aescbc, now, &[a.name.as_str()]).unwrap();
        assert_eq!(decoded_len(a.secret.expose()), Some(32));
        assert_ne!(a.secret, b.secret);
        assert_eq!(b.name, "aescbckey-2026-11-23T22:40:05Z-2");
        assert!(!format!("{a:?}").contains(a.secret.expose()));
    }

    #[test]
    fn kinds_parse() {
        assert_eq!("secretbox".parse::<KeyKind>(), Ok(KeyKind::Secretbox));
        assert!("aesgcm".parse::<KeyKind>().is_err());
    }
}
