//! Key material in memory: zeroed on drop, never printed.

use std::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// A secret string (for example the base64 text of an encryption key).
///
/// `Debug` and `Display` print `REDACTED`; the bytes are zeroed when the value is dropped.
/// Use [`SecretString::expose`] only at the point where the material must be written out.
#[derive(Clone, Default, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The secret text itself. Callers must not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("REDACTED")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("REDACTED")
    }
}

impl serde::Serialize for SecretString {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for SecretString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(SecretString)
    }
}

/// Stands in for bytes or text that may hold key material in a hand-written `Debug`: prints only the length,
/// e.g. `<1234 bytes, not shown>`.
pub struct Withheld(pub usize);

impl Withheld {
    /// `Some(Withheld(len))` for `Some(bytes)`.
    pub fn of(bytes: Option<&[u8]>) -> Option<Withheld> {
        bytes.map(|b| Withheld(b.len()))
    }
}

impl fmt::Debug for Withheld {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes, not shown>", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_secret() {
        let s = SecretString::new("c2VjcmV0IGlzIHNlY3VyZQ==".into());
        assert_eq!(format!("{s:?}"), "REDACTED");
        assert_eq!(format!("{s}"), "REDACTED");
        assert_eq!(s.expose(), "c2VjcmV0IGlzIHNlY3VyZQ==");
    }
}
