//! The KMS v1 and v2 storage envelopes as pure functions, byte-compatible with kube-apiserver
//! (`apiserver:pkg/storage/value/encrypt/envelope/envelope.go`, `…/envelope/kmsv2/envelope.go`, `…/encrypt/aes/`).
//!
//! Layouts (after the provider prefix `k8s:enc:kms:v1:<name>:` / `k8s:enc:kms:v2:<name>:`):
//! - v1: `u16be(len E) ‖ E ‖ nonce(12) ‖ AES-GCM_DEK(P, AAD = etcd key)`; 1.24 wrote `IV(16) ‖ AES-CBC_DEK(PKCS7(P))`.
//! - v2: protobuf `EncryptedObject`; with a seed, `encryptedData = info(32) ‖ nonce(12) ‖ AES-GCM_K(P, AAD)` where
//!   `K = HKDF-Expand(SHA-256, PRK = seed, info, 32)`; with a plain key, `encryptedData = nonce(12) ‖ AES-GCM_key(P, AAD)`.
//!
//! Error texts follow upstream's where they are known, so the stand-in reports what kube-apiserver would.

use std::collections::BTreeMap;

use aes_gcm::aead::consts::U12;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{AesGcm, Nonce};
use prost::Message;
use rand::RngCore;
use zeroize::Zeroizing;

use super::proto::v2::{EncryptedDekSourceType, EncryptedObject};

/// Prefix of every KMS v1 value, followed by `<provider name>:`.
pub const KMS_V1_PREFIX: &str = "k8s:enc:kms:v1:";
/// Prefix of every KMS v2 value, followed by `<provider name>:`.
pub const KMS_V2_PREFIX: &str = "k8s:enc:kms:v2:";

/// GCM nonce size (Go's `cipher.NewGCM` standard size).
pub const GCM_NONCE_SIZE: usize = 12;
/// Size of the per-write HKDF `info` in the extended-nonce layout (`infoSizeExtendedNonceGCM`).
pub const XNONCE_INFO_SIZE: usize = 32;
/// Size of the DEKs and seeds kube-apiserver generates.
pub const DEK_SIZE: usize = 32;
/// Limits from `kmsv2/envelope.go`.
pub const KEY_ID_MAX_SIZE: usize = 1024;
pub const ENCRYPTED_DEK_SOURCE_MAX_SIZE: usize = 1024;
pub const ANNOTATIONS_MAX_SIZE: usize = 32 * 1024;

const AES_BLOCK: usize = 16;

/// Everything that can go wrong decoding or (de)crypting an envelope, with upstream's texts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("the stored data was shorter than the required size")]
    ShortData,
    #[error("cipher: message authentication failed")]
    Authentication,
    #[error("the stored data is not a multiple of the block size")]
    NotBlockMultiple,
    #[error("invalid PKCS7 data (empty or not padded)")]
    InvalidPkcs7,
    #[error("invalid padding on input")]
    InvalidPadding,
    #[error("crypto/aes: invalid key size {0}")]
    InvalidKeySize(usize),
    #[error("invalid seed length {0} used for key generation")]
    InvalidSeedSize(usize),
    #[error(
        "invalid data encountered by envelope transformer: failed to read uint16 length prefixed data"
    )]
    V1Malformed,
    #[error("encrypted DEK of {0} bytes does not fit a uint16 length prefix")]
    V1DekTooLong(usize),
    /// Several attempts failed (Go's `utilerrors.NewAggregate` prints `[e1, e2]`).
    #[error("[{}]", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(", "))]
    Aggregate(Vec<EnvelopeError>),
    #[error("proto: {0}")]
    Proto(String),
    #[error("unknown encryptedDEKSourceType: {0}")]
    UnknownSourceType(i32),
    #[error("encrypted data is empty")]
    EmptyEncryptedData,
    #[error("failed to validate encrypted DEK source: {0}")]
    DekSource(String),
    #[error("failed to validate key id: {0}")]
    KeyId(String),
    #[error("failed to validate annotations: {0}")]
    Annotations(String),
    #[error("failed to derive read key from KDF: {0}")]
    Kdf(String),
}

/// `k8s:enc:kms:v1:<name>:`
pub fn v1_prefix(provider_name: &str) -> Vec<u8> {
    format!("{KMS_V1_PREFIX}{provider_name}:").into_bytes()
}

/// `k8s:enc:kms:v2:<name>:`
pub fn v2_prefix(provider_name: &str) -> Vec<u8> {
    format!("{KMS_V2_PREFIX}{provider_name}:").into_bytes()
}

/// Fresh random bytes from the OS CSPRNG (DEKs, seeds, nonces, infos).
pub fn random_bytes<const N: usize>() -> Zeroizing<[u8; N]> {
    let mut b = Zeroizing::new([0u8; N]);
    rand::rng().fill_bytes(b.as_mut());
    b
}

// ---------------------------------------------------------------------------------------------------------------
// AES-GCM (standard 12-byte nonce) — `aes.go` `gcm`

fn gcm_seal_raw(
    key: &[u8],
    nonce: &[u8; GCM_NONCE_SIZE],
    aad: &[u8],
    pt: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    let payload = Payload { msg: pt, aad };
    let nonce = Nonce::<U12>::from_slice(nonce);
    let ct = match key.len() {
        16 => AesGcm::<aes::Aes128, U12>::new_from_slice(key).map(|c| c.encrypt(nonce, payload)),
        24 => AesGcm::<aes::Aes192, U12>::new_from_slice(key).map(|c| c.encrypt(nonce, payload)),
        32 => AesGcm::<aes::Aes256, U12>::new_from_slice(key).map(|c| c.encrypt(nonce, payload)),
        n => return Err(EnvelopeError::InvalidKeySize(n)),
    };
    // Key length is checked above and encryption of in-memory data cannot fail for sane sizes.
    ct.map_err(|_| EnvelopeError::InvalidKeySize(key.len()))?
        .map_err(|_| EnvelopeError::Authentication)
}

fn gcm_open_raw(key: &[u8], nonce: &[u8], aad: &[u8], ct: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    let payload = Payload { msg: ct, aad };
    let nonce = Nonce::<U12>::from_slice(nonce);
    let pt = match key.len() {
        16 => AesGcm::<aes::Aes128, U12>::new_from_slice(key).map(|c| c.decrypt(nonce, payload)),
        24 => AesGcm::<aes::Aes192, U12>::new_from_slice(key).map(|c| c.decrypt(nonce, payload)),
        32 => AesGcm::<aes::Aes256, U12>::new_from_slice(key).map(|c| c.decrypt(nonce, payload)),
        n => return Err(EnvelopeError::InvalidKeySize(n)),
    };
    pt.map_err(|_| EnvelopeError::InvalidKeySize(key.len()))?
        .map_err(|_| EnvelopeError::Authentication)
}

/// `nonce ‖ AES-GCM_key(plaintext, aad)` with the given nonce (tests and fixed vectors).
pub fn gcm_seal_with_nonce(
    key: &[u8],
    nonce: &[u8; GCM_NONCE_SIZE],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    let mut out = nonce.to_vec();
    out.extend(gcm_seal_raw(key, nonce, aad, plaintext)?);
    Ok(out)
}

/// `nonce ‖ AES-GCM_key(plaintext, aad)` with a random nonce (upstream `gcm.TransformToStorage`).
pub fn gcm_seal(key: &[u8], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    gcm_seal_with_nonce(key, &random_bytes::<GCM_NONCE_SIZE>(), aad, plaintext)
}

/// Opens `nonce ‖ ct ‖ tag` (upstream `gcm.TransformFromStorage`).
pub fn gcm_open(key: &[u8], aad: &[u8], data: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    if ![16, 24, 32].contains(&key.len()) {
        return Err(EnvelopeError::InvalidKeySize(key.len()));
    }
    if data.len() < GCM_NONCE_SIZE {
        return Err(EnvelopeError::ShortData);
    }
    gcm_open_raw(key, &data[..GCM_NONCE_SIZE], aad, &data[GCM_NONCE_SIZE..])
}

// ---------------------------------------------------------------------------------------------------------------
// AES-CBC — only as the KMS v1 inner form written by Kubernetes 1.24 (read-only in the transformer).

/// `IV ‖ AES-CBC_key(PKCS7(plaintext))` (upstream `cbc.TransformToStorage`); used to build 1.24-style values.
pub fn cbc_seal_with_iv(
    key: &[u8],
    iv: &[u8; AES_BLOCK],
    plaintext: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    use cbc::cipher::{BlockEncryptMut, KeyIvInit, block_padding::Pkcs7};
    let ct = match key.len() {
        16 => cbc::Encryptor::<aes::Aes128>::new_from_slices(key, iv)
            .map(|c| c.encrypt_padded_vec_mut::<Pkcs7>(plaintext)),
        24 => cbc::Encryptor::<aes::Aes192>::new_from_slices(key, iv)
            .map(|c| c.encrypt_padded_vec_mut::<Pkcs7>(plaintext)),
        32 => cbc::Encryptor::<aes::Aes256>::new_from_slices(key, iv)
            .map(|c| c.encrypt_padded_vec_mut::<Pkcs7>(plaintext)),
        n => return Err(EnvelopeError::InvalidKeySize(n)),
    }
    .map_err(|_| EnvelopeError::InvalidKeySize(key.len()))?;
    let mut out = iv.to_vec();
    out.extend(ct);
    Ok(out)
}

/// Opens `IV ‖ CBC(PKCS7(P))` with upstream's checks and error texts (`aes.go` `cbc.TransformFromStorage`).
pub fn cbc_open(key: &[u8], data: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    use cbc::cipher::{BlockDecryptMut, KeyIvInit, block_padding::NoPadding};
    if ![16, 24, 32].contains(&key.len()) {
        return Err(EnvelopeError::InvalidKeySize(key.len()));
    }
    if data.len() < AES_BLOCK {
        return Err(EnvelopeError::ShortData);
    }
    let (iv, ct) = data.split_at(AES_BLOCK);
    if ct.len() % AES_BLOCK != 0 {
        return Err(EnvelopeError::NotBlockMultiple);
    }
    // Upstream would index result[-1] for an IV-only value; we refuse it explicitly.
    if ct.is_empty() {
        return Err(EnvelopeError::InvalidPkcs7);
    }
    let pt = match key.len() {
        16 => cbc::Decryptor::<aes::Aes128>::new_from_slices(key, iv)
            .map(|c| c.decrypt_padded_vec_mut::<NoPadding>(ct)),
        24 => cbc::Decryptor::<aes::Aes192>::new_from_slices(key, iv)
            .map(|c| c.decrypt_padded_vec_mut::<NoPadding>(ct)),
        _ => cbc::Decryptor::<aes::Aes256>::new_from_slices(key, iv)
            .map(|c| c.decrypt_padded_vec_mut::<NoPadding>(ct)),
    }
    .map_err(|_| EnvelopeError::InvalidKeySize(key.len()))?
    .map_err(|_| EnvelopeError::NotBlockMultiple)?;
    let pad = usize::from(pt[pt.len() - 1]);
    if pad == 0 || pad > pt.len() {
        return Err(EnvelopeError::InvalidPkcs7);
    }
    if pt[pt.len() - pad..].iter().any(|&b| usize::from(b) != pad) {
        return Err(EnvelopeError::InvalidPadding);
    }
    Ok(pt[..pt.len() - pad].to_vec())
}

// ---------------------------------------------------------------------------------------------------------------
// HKDF extended-nonce AES-GCM — `aes_extended_nonce.go`

struct Len32;
impl ring::hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        DEK_SIZE
    }
}

/// The per-write DEK: HKDF-**Expand only** (no Extract) with SHA-256, PRK = seed, info, 32 bytes.
pub fn hkdf_expand_dek(
    seed: &[u8],
    info: &[u8],
) -> Result<Zeroizing<[u8; DEK_SIZE]>, EnvelopeError> {
    if seed.len() < DEK_SIZE {
        return Err(EnvelopeError::InvalidSeedSize(seed.len()));
    }
    let prk = ring::hkdf::Prk::new_less_safe(ring::hkdf::HKDF_SHA256, seed);
    let infos = [info];
    let okm = prk
        .expand(&infos, Len32)
        .map_err(|_| EnvelopeError::Kdf("HKDF expand failed".into()))?;
    let mut out = Zeroizing::new([0u8; DEK_SIZE]);
    okm.fill(out.as_mut())
        .map_err(|_| EnvelopeError::Kdf("HKDF expand failed".into()))?;
    Ok(out)
}

/// `info ‖ nonce ‖ AES-GCM_{HKDF(seed, info)}(plaintext, aad)` with the given info and nonce.
pub fn xnonce_seal_with(
    seed: &[u8],
    info: &[u8; XNONCE_INFO_SIZE],
    nonce: &[u8; GCM_NONCE_SIZE],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    let dek = hkdf_expand_dek(seed, info)?;
    let mut out = info.to_vec();
    out.extend(gcm_seal_with_nonce(dek.as_ref(), nonce, aad, plaintext)?);
    Ok(out)
}

/// Extended-nonce write with a random info and nonce (what kube-apiserver ≥ 1.29 writes).
pub fn xnonce_seal(seed: &[u8], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    xnonce_seal_with(
        seed,
        &random_bytes::<XNONCE_INFO_SIZE>(),
        &random_bytes::<GCM_NONCE_SIZE>(),
        aad,
        plaintext,
    )
}

/// Opens an extended-nonce body.
pub fn xnonce_open(seed: &[u8], aad: &[u8], data: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    if data.len() < XNONCE_INFO_SIZE {
        return Err(EnvelopeError::ShortData);
    }
    let (info, rest) = data.split_at(XNONCE_INFO_SIZE);
    let dek = hkdf_expand_dek(seed, info)?;
    gcm_open(dek.as_ref(), aad, rest)
}

// ---------------------------------------------------------------------------------------------------------------
// KMS v1

/// The two parts of a KMS v1 body: the plugin-wrapped DEK `E` and the DEK-encrypted payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct V1Parts<'a> {
    pub encrypted_dek: &'a [u8],
    pub payload: &'a [u8],
}

/// Splits `u16be(len E) ‖ E ‖ payload` (cryptobyte `ReadUint16LengthPrefixed`).
pub fn v1_split(body: &[u8]) -> Result<V1Parts<'_>, EnvelopeError> {
    if body.len() < 2 {
        return Err(EnvelopeError::V1Malformed);
    }
    let n = usize::from(u16::from_be_bytes([body[0], body[1]]));
    if body.len() < 2 + n {
        return Err(EnvelopeError::V1Malformed);
    }
    Ok(V1Parts {
        encrypted_dek: &body[2..2 + n],
        payload: &body[2 + n..],
    })
}

/// Builds `u16be(len E) ‖ E ‖ payload` (cryptobyte `AddUint16LengthPrefixed`).
pub fn v1_join(encrypted_dek: &[u8], payload: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    let n = u16::try_from(encrypted_dek.len())
        .map_err(|_| EnvelopeError::V1DekTooLong(encrypted_dek.len()))?;
    let mut out = Vec::with_capacity(2 + encrypted_dek.len() + payload.len());
    out.extend(n.to_be_bytes());
    out.extend(encrypted_dek);
    out.extend(payload);
    Ok(out)
}

/// Opens a v1 payload: AES-GCM first, then the 1.24 AES-CBC form (`unionTransformers{GCM, CBC}`); a CBC read is
/// stale (index ≠ 0). Returns `(plaintext, stale)`.
pub fn v1_open_payload(
    dek: &[u8],
    aad: &[u8],
    payload: &[u8],
) -> Result<(Vec<u8>, bool), EnvelopeError> {
    let gcm_err = match gcm_open(dek, aad, payload) {
        Ok(pt) => return Ok((pt, false)),
        Err(e) => e,
    };
    match cbc_open(dek, payload) {
        Ok(pt) => Ok((pt, true)),
        Err(cbc_err) => Err(EnvelopeError::Aggregate(vec![gcm_err, cbc_err])),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// KMS v2

/// Upstream `ValidateKeyID`.
pub fn validate_key_id(key_id: &str) -> Result<(), String> {
    if key_id.is_empty() {
        return Err("keyID is empty".into());
    }
    if key_id.len() > KEY_ID_MAX_SIZE {
        return Err(format!(
            "keyID is {} bytes, which exceeds the max size of {KEY_ID_MAX_SIZE}",
            key_id.len()
        ));
    }
    Ok(())
}

fn validate_encrypted_dek_source(source: &[u8]) -> Result<(), String> {
    if source.is_empty() {
        return Err("encrypted DEK source is empty".into());
    }
    if source.len() > ENCRYPTED_DEK_SOURCE_MAX_SIZE {
        return Err(format!(
            "encrypted DEK source is {} bytes, which exceeds the max size of {ENCRYPTED_DEK_SOURCE_MAX_SIZE}",
            source.len()
        ));
    }
    Ok(())
}

/// apimachinery `IsFullyQualifiedDomainName` (texts as in `validation.go`, field path `annotations`).
fn fqdn_error(name: &str) -> Option<String> {
    const RFC1123: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
    if name.is_empty() {
        return Some("annotations: Required value".into());
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    let label_ok = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    };
    if name.len() > 253 {
        return Some(format!(
            "annotations: Invalid value: {name:?}: must be no more than 253 characters"
        ));
    }
    if !name.split('.').all(label_ok) {
        return Some(format!("annotations: Invalid value: {name:?}: {RFC1123}"));
    }
    if name.split('.').count() < 2 {
        return Some(format!(
            "annotations: Invalid value: {name:?}: should be a domain with at least two segments separated by dots"
        ));
    }
    None
}

fn validate_annotations(annotations: &BTreeMap<String, Vec<u8>>) -> Result<(), String> {
    let mut errs: Vec<String> = annotations.keys().filter_map(|k| fqdn_error(k)).collect();
    let total: usize = annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > ANNOTATIONS_MAX_SIZE {
        errs.push(format!(
            "total size of annotations is {total}, which exceeds the max size of {ANNOTATIONS_MAX_SIZE}"
        ));
    }
    match errs.len() {
        0 => Ok(()),
        1 => Err(errs.remove(0)),
        _ => Err(format!("[{}]", errs.join(", "))),
    }
}

/// Upstream `ValidateEncryptedObject`, same order and texts.
pub fn validate_encrypted_object(o: &EncryptedObject) -> Result<(), EnvelopeError> {
    if EncryptedDekSourceType::try_from(o.encrypted_dek_source_type).is_err() {
        return Err(EnvelopeError::UnknownSourceType(
            o.encrypted_dek_source_type,
        ));
    }
    if o.encrypted_data.is_empty() {
        return Err(EnvelopeError::EmptyEncryptedData);
    }
    validate_encrypted_dek_source(&o.encrypted_dek_source).map_err(EnvelopeError::DekSource)?;
    validate_key_id(&o.key_id).map_err(EnvelopeError::KeyId)?;
    validate_annotations(&o.annotations).map_err(EnvelopeError::Annotations)?;
    Ok(())
}

/// Validates and encodes (fields in number order, like Go's marshaller).
pub fn encode_encrypted_object(o: &EncryptedObject) -> Result<Vec<u8>, EnvelopeError> {
    validate_encrypted_object(o)?;
    Ok(o.encode_to_vec())
}

/// Decodes and validates the bytes after the `k8s:enc:kms:v2:<name>:` prefix.
pub fn decode_encrypted_object(body: &[u8]) -> Result<EncryptedObject, EnvelopeError> {
    let o = EncryptedObject::decode(body).map_err(|e| EnvelopeError::Proto(e.to_string()))?;
    validate_encrypted_object(&o)?;
    Ok(o)
}

/// Upstream `generateCacheKey`: `u32(type) ‖ u16-prefixed source ‖ u16-prefixed keyID [‖ u32(n) ‖ sorted (u16 k, u16 v)…]`.
pub fn v2_cache_key(
    source_type: i32,
    encrypted_dek_source: &[u8],
    key_id: &str,
    annotations: &BTreeMap<String, Vec<u8>>,
) -> Vec<u8> {
    fn push16(out: &mut Vec<u8>, b: &[u8]) {
        // Validation bounds every part below 64 KiB; clamp defensively rather than wrap.
        let n = u16::try_from(b.len()).unwrap_or(u16::MAX);
        out.extend(n.to_be_bytes());
        out.extend(&b[..usize::from(n)]);
    }
    let mut out = Vec::new();
    out.extend((source_type as u32).to_be_bytes());
    push16(&mut out, encrypted_dek_source);
    push16(&mut out, key_id.as_bytes());
    if annotations.is_empty() {
        return out;
    }
    out.extend((annotations.len() as u32).to_be_bytes());
    for (k, v) in annotations {
        push16(&mut out, k.as_bytes());
        push16(&mut out, v);
    }
    out
}

/// Opens `encryptedData` of a decoded object with the unwrapped DEK or seed.
pub fn v2_open_data(
    source_type: EncryptedDekSourceType,
    dek_or_seed: &[u8],
    aad: &[u8],
    encrypted_data: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    match source_type {
        EncryptedDekSourceType::HkdfSha256XnonceAesGcmSeed => {
            xnonce_open(dek_or_seed, aad, encrypted_data)
        }
        EncryptedDekSourceType::AesGcmKey => gcm_open(dek_or_seed, aad, encrypted_data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    #[test]
    fn upstream_gcm_vector_6_1() {
        let body = h(
            "9f27c8fcea8a58c467d8e437dbf2d85955f9b4bd912f4ef967d788a0cb07797dac0a3f0a0845605ca85ac8562b4ae1",
        );
        let pt = gcm_open(b"snorlax_awesomes", b"bamboo", &body).unwrap();
        assert_eq!(pt, b"pandas are the best");
        assert_eq!(
            gcm_open(b"snorlax_awesomes", b"bamboo2", &body),
            Err(EnvelopeError::Authentication)
        );
    }

    #[test]
    fn upstream_hkdf_vector_6_2() {
        let seed = h("5d40323a820ff95561675e3b95e81867c5fdd561d35a88a2d08b08aa9d4fcf5c");
        let body = h(
            "2442759e33945fbad709db577a0f037fd8a709fc76979b8942209debcecb9d57efe3d6ff6a1ef6ee9a5003b9833b3043cec1e47b35175b151107a8d2416b0e296bbf66b5d102fcefdf9a78f293d271",
        );
        let dek = hkdf_expand_dek(&seed, &body[..32]).unwrap();
        assert_eq!(
            hex::encode(dek.as_ref()),
            "6e58b7659c304b0c382f42f16bd700465def1dead80bf6f1bf1d52073bdb0c00"
        );
        assert_eq!(
            xnonce_open(&seed, b"bamboo", &body).unwrap(),
            b"pandas are the best"
        );
        assert_eq!(
            xnonce_open(&seed, b"panda", &body),
            Err(EnvelopeError::Authentication)
        );
        // Re-sealing with the recorded info and nonce reproduces upstream's bytes exactly.
        let info: [u8; 32] = body[..32].try_into().unwrap();
        let nonce: [u8; 12] = body[32..44].try_into().unwrap();
        assert_eq!(
            xnonce_seal_with(&seed, &info, &nonce, b"bamboo", b"pandas are the best").unwrap(),
            body
        );
    }

    #[test]
    fn self_computed_gcm_vector_6_6_matches() {
        let key = b"secret is secure";
        let nonce: [u8; 12] = core::array::from_fn(|i| i as u8);
        let got = gcm_seal_with_nonce(
            key,
            &nonce,
            b"/registry/secrets/default/s1",
            b"pandas are the best",
        )
        .unwrap();
        let want = h(
            "000102030405060708090a0b9292c680fad916d667c24a8900ba69291d64d1da4c1e727cf3c1714ffd6770ae02e990",
        );
        assert_eq!(got, want);
    }

    #[test]
    fn cbc_round_trip_and_upstream_errors() {
        let key = [7u8; 32];
        let iv = [1u8; 16];
        let v = cbc_seal_with_iv(&key, &iv, b"hello").unwrap();
        assert_eq!(cbc_open(&key, &v).unwrap(), b"hello");
        assert_eq!(cbc_open(&key, &v[..10]), Err(EnvelopeError::ShortData));
        assert_eq!(
            cbc_open(&key, &v[..20]),
            Err(EnvelopeError::NotBlockMultiple)
        );
        assert_eq!(cbc_open(&key, &v[..16]), Err(EnvelopeError::InvalidPkcs7));
        // The 6.6 self-computed aescbc vector (key "secret is secure", IV 00..0f).
        let iv: [u8; 16] = core::array::from_fn(|i| i as u8);
        let got = cbc_seal_with_iv(b"secret is secure", &iv, b"pandas are the best").unwrap();
        assert_eq!(
            hex::encode(got),
            "000102030405060708090a0b0c0d0e0faa013ef9f648bd2fb53d613341113280f00fd30286871e9abb4b617e815ddf4c"
        );
    }

    #[test]
    fn v1_split_join() {
        let body = v1_join(b"EEE", b"payload").unwrap();
        assert_eq!(&body[..2], &[0, 3]);
        let p = v1_split(&body).unwrap();
        assert_eq!((p.encrypted_dek, p.payload), (&b"EEE"[..], &b"payload"[..]));
        assert_eq!(v1_split(&[0]), Err(EnvelopeError::V1Malformed));
        assert_eq!(v1_split(&[0, 9, 1]), Err(EnvelopeError::V1Malformed));
        assert!(
            EnvelopeError::V1Malformed
                .to_string()
                .ends_with("failed to read uint16 length prefixed data")
        );
        assert_eq!(
            v1_join(&vec![0; 70000], b""),
            Err(EnvelopeError::V1DekTooLong(70000))
        );
    }

    #[test]
    fn v1_payload_gcm_fresh_cbc_stale() {
        let dek = [9u8; 32];
        let aad = b"/registry/secrets/a/b";
        let g = gcm_seal(&dek, aad, b"x").unwrap();
        assert_eq!(
            v1_open_payload(&dek, aad, &g).unwrap(),
            (b"x".to_vec(), false)
        );
        let c = cbc_seal_with_iv(&dek, &[3u8; 16], b"x").unwrap();
        assert_eq!(
            v1_open_payload(&dek, aad, &c).unwrap(),
            (b"x".to_vec(), true)
        );
        // GCM under another key fails both ways and reports both errors.
        let e = v1_open_payload(&[8u8; 32], aad, &g).unwrap_err();
        assert!(
            matches!(e, EnvelopeError::Aggregate(ref v) if v.len() == 2),
            "{e}"
        );
        assert!(
            e.to_string()
                .starts_with("[cipher: message authentication failed, "),
            "{e}"
        );
    }

    #[test]
    fn encrypted_object_validation_texts() {
        let mut o = EncryptedObject {
            encrypted_data: vec![1],
            key_id: "k".into(),
            encrypted_dek_source: vec![2],
            annotations: BTreeMap::new(),
            encrypted_dek_source_type: 1,
        };
        assert!(validate_encrypted_object(&o).is_ok());
        o.encrypted_dek_source_type = 7;
        assert_eq!(
            validate_encrypted_object(&o).unwrap_err().to_string(),
            "unknown encryptedDEKSourceType: 7"
        );
        o.encrypted_dek_source_type = 0;
        o.encrypted_data.clear();
        assert_eq!(
            validate_encrypted_object(&o).unwrap_err().to_string(),
            "encrypted data is empty"
        );
        o.encrypted_data = vec![1];
        o.encrypted_dek_source = vec![0; 1025];
        assert_eq!(
            validate_encrypted_object(&o).unwrap_err().to_string(),
            "failed to validate encrypted DEK source: encrypted DEK source is 1025 bytes, which exceeds the max size of 1024"
        );
        o.encrypted_dek_source = vec![1];
        o.key_id.clear();
        assert_eq!(
            validate_encrypted_object(&o).unwrap_err().to_string(),
            "failed to validate key id: keyID is empty"
        );
        o.key_id = "k".into();
        o.annotations.insert("nodots".into(), vec![]);
        let e = validate_encrypted_object(&o).unwrap_err().to_string();
        assert!(
            e.contains("should be a domain with at least two segments separated by dots"),
            "{e}"
        );
        o.annotations.clear();
        o.annotations
            .insert("a.example.com".into(), vec![0; 33 * 1024]);
        let e = validate_encrypted_object(&o).unwrap_err().to_string();
        assert!(e.contains("which exceeds the max size of 32768"), "{e}");
        assert!(decode_encrypted_object(&[0xff, 0xff]).is_err());
    }

    #[test]
    fn cache_key_layout() {
        let mut a = BTreeMap::new();
        assert_eq!(
            v2_cache_key(1, b"S", "k", &a),
            vec![0, 0, 0, 1, 0, 1, b'S', 0, 1, b'k']
        );
        a.insert("b.io".to_string(), b"2".to_vec());
        a.insert("a.io".to_string(), b"1".to_vec());
        let k = v2_cache_key(0, b"S", "k", &a);
        assert_eq!(&k[10..14], &[0, 0, 0, 2]);
        assert_eq!(&k[14..20], b"\0\x04a.io");
    }
}
