//! AES-256-GCM as the plugin seals data under its KEK: `nonce(12) ‖ ciphertext ‖ tag`, with the caller's AAD
//! (the key file binds the key id into it). The crate does the cipher; this module only fixes the layout.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use zeroize::Zeroizing;

/// GCM nonce size (the standard 12 bytes).
pub const GCM_NONCE_SIZE: usize = 12;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("a key of {0} bytes (AES-256 needs 32)")]
    KeySize(usize),
    #[error("the sealed data is shorter than its nonce")]
    ShortData,
    #[error("cipher: message authentication failed")]
    Authentication,
}

/// `N` random bytes, zeroed when dropped.
pub fn random_bytes<const N: usize>() -> Zeroizing<[u8; N]> {
    let mut b = Zeroizing::new([0u8; N]);
    rand::rng().fill_bytes(b.as_mut());
    b
}

fn cipher(key: &[u8]) -> Result<Aes256Gcm, SealError> {
    Aes256Gcm::new_from_slice(key).map_err(|_| SealError::KeySize(key.len()))
}

/// `nonce ‖ AES-256-GCM_key(plaintext, aad)` with a random nonce.
pub fn seal(key: &[u8], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
    let nonce = random_bytes::<GCM_NONCE_SIZE>();
    let sealed = cipher(key)?
        .encrypt(
            Nonce::from_slice(nonce.as_ref()),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| SealError::Authentication)?;
    let mut out = nonce.to_vec();
    out.extend(sealed);
    Ok(out)
}

/// Opens what [`seal`] made.
pub fn open(key: &[u8], aad: &[u8], data: &[u8]) -> Result<Vec<u8>, SealError> {
    let cipher = cipher(key)?;
    if data.len() < GCM_NONCE_SIZE {
        return Err(SealError::ShortData);
    }
    let (nonce, sealed) = data.split_at(GCM_NONCE_SIZE);
    cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad })
        .map_err(|_| SealError::Authentication)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_data_opens_only_with_its_key_and_aad() {
        let key = random_bytes::<32>();
        let sealed = seal(key.as_ref(), b"aad", b"plain").unwrap();
        assert_eq!(sealed.len(), GCM_NONCE_SIZE + 5 + 16);
        assert_eq!(open(key.as_ref(), b"aad", &sealed).unwrap(), b"plain");
        assert_eq!(
            open(key.as_ref(), b"other", &sealed),
            Err(SealError::Authentication)
        );
        let other = random_bytes::<32>();
        assert_eq!(
            open(other.as_ref(), b"aad", &sealed),
            Err(SealError::Authentication)
        );
        let mut flipped = sealed.clone();
        flipped[GCM_NONCE_SIZE] ^= 1;
        assert_eq!(
            open(key.as_ref(), b"aad", &flipped),
            Err(SealError::Authentication)
        );
        assert_eq!(
            open(key.as_ref(), b"aad", &sealed[..5]),
            Err(SealError::ShortData)
        );
        assert_eq!(seal(&[0; 16], b"", b""), Err(SealError::KeySize(16)));
    }
}
