//! Storage transformers, byte-compatible with `k8s.io/apiserver/pkg/storage/value`.
//!
//! Layouts, error texts and the prefix/stale rules follow `transformer.go`, `identity.go`, `aes.go`
//! and `secretbox.go` (reference §1). A KMS transformer plugs in as one more [`Transformer`] behind its
//! `k8s:enc:kms:v{1,2}:<name>:` prefix; see [`super::encryption`] for where providers are built.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit, block_padding::NoPadding};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use rand::RngCore;
use zeroize::Zeroizing;

pub const AESCBC_PREFIX: &str = "k8s:enc:aescbc:v1:";
pub const AESGCM_PREFIX: &str = "k8s:enc:aesgcm:v1:";
pub const SECRETBOX_PREFIX: &str = "k8s:enc:secretbox:v1:";
pub const KMS_V1_PREFIX: &str = "k8s:enc:kms:v1:";
pub const KMS_V2_PREFIX: &str = "k8s:enc:kms:v2:";

/// Upstream's error values (exact texts matter: clients and atrest match on them).
pub const ERR_SHORT_DATA: &str = "the stored data was shorter than the required size";
pub const ERR_NOT_BLOCK_MULTIPLE: &str = "the stored data is not a multiple of the block size";
pub const ERR_PKCS7_DATA: &str = "invalid PKCS7 data (empty or not padded)";
pub const ERR_PKCS7_PADDING: &str = "invalid padding on input";
pub const ERR_GCM_AUTH: &str = "cipher: message authentication failed";
pub const ERR_SECRETBOX_OPEN: &str = "output array was not large enough for encryption";
pub const ERR_IDENTITY_ENCRYPTED: &str = "identity transformer tried to read encrypted data";
pub const ERR_NO_MATCHING_PREFIX: &str = "no matching prefix found";
pub const ERR_NO_AES_KEY: &str = "no matching key was found for the provided AES transformer";
pub const ERR_NO_SECRETBOX_KEY: &str =
    "no matching key was found for the provided Secretbox transformer";

/// A transformation error. Several errors from one prefix walk aggregate like Go's `errors.NewAggregate`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransformError(String);

impl TransformError {
    pub fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }

    /// `utilerrors.Reduce(NewAggregate(errs))`: one error stays itself; several print as `[e1, e2]`
    /// with duplicate messages dropped (and no brackets when only one distinct message remains).
    fn aggregate(errs: Vec<TransformError>) -> Option<TransformError> {
        match errs.len() {
            0 => None,
            1 => errs.into_iter().next(),
            _ => {
                let mut seen: Vec<String> = Vec::new();
                for e in errs {
                    if !seen.contains(&e.0) {
                        seen.push(e.0);
                    }
                }
                if seen.len() == 1 {
                    Some(TransformError(seen.remove(0)))
                } else {
                    Some(TransformError(format!("[{}]", seen.join(", "))))
                }
            }
        }
    }
}

impl fmt::Display for TransformError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TransformError {}

/// A boxed future, so transformers can be trait objects (KMS providers call a plugin over gRPC).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// `value.Transformer`. `ctx` is the authenticated data: the full etcd key.
///
/// Extension point for KMS v1/v2: implement this for an envelope transformer and register it in
/// [`super::encryption`] behind its `k8s:enc:kms:v{1,2}:<name>:` prefix.
pub trait Transformer: Send + Sync {
    /// Returns the plaintext and whether the value is stale (should be rewritten).
    fn transform_from_storage<'a>(
        &'a self,
        data: &'a [u8],
        ctx: &'a [u8],
    ) -> BoxFuture<'a, Result<(Vec<u8>, bool), TransformError>>;
    fn transform_to_storage<'a>(
        &'a self,
        data: &'a [u8],
        ctx: &'a [u8],
    ) -> BoxFuture<'a, Result<Vec<u8>, TransformError>>;
}

/// A transformer whose work is local computation (identity, AES, secretbox).
pub trait SyncTransformer: Send + Sync {
    fn open(&self, data: &[u8], ctx: &[u8]) -> Result<(Vec<u8>, bool), TransformError>;
    fn seal(&self, data: &[u8], ctx: &[u8]) -> Result<Vec<u8>, TransformError>;
}

impl<T: SyncTransformer> Transformer for T {
    fn transform_from_storage<'a>(
        &'a self,
        data: &'a [u8],
        ctx: &'a [u8],
    ) -> BoxFuture<'a, Result<(Vec<u8>, bool), TransformError>> {
        Box::pin(std::future::ready(self.open(data, ctx)))
    }

    fn transform_to_storage<'a>(
        &'a self,
        data: &'a [u8],
        ctx: &'a [u8],
    ) -> BoxFuture<'a, Result<Vec<u8>, TransformError>> {
        Box::pin(std::future::ready(self.seal(data, ctx)))
    }
}

/// `identity.NewEncryptCheckTransformer()`: passes data through, refuses encrypted data on read.
pub struct Identity;

impl SyncTransformer for Identity {
    fn open(&self, data: &[u8], _ctx: &[u8]) -> Result<(Vec<u8>, bool), TransformError> {
        if data.starts_with(b"k8s:enc:") {
            return Err(TransformError::new(ERR_IDENTITY_ENCRYPTED));
        }
        Ok((data.to_vec(), false))
    }

    fn seal(&self, data: &[u8], _ctx: &[u8]) -> Result<Vec<u8>, TransformError> {
        Ok(data.to_vec())
    }
}

/// An AES key of one of the sizes upstream's validation accepts (16, 24, 32 bytes).
enum AesKey {
    K128(Zeroizing<[u8; 16]>),
    K192(Zeroizing<[u8; 24]>),
    K256(Zeroizing<[u8; 32]>),
}

impl AesKey {
    fn new(key: &[u8]) -> Result<Self, TransformError> {
        let bad = || TransformError::new(format!("crypto/aes: invalid key size {}", key.len()));
        Ok(match key.len() {
            16 => AesKey::K128(Zeroizing::new(key.try_into().map_err(|_| bad())?)),
            24 => AesKey::K192(Zeroizing::new(key.try_into().map_err(|_| bad())?)),
            32 => AesKey::K256(Zeroizing::new(key.try_into().map_err(|_| bad())?)),
            _ => return Err(bad()),
        })
    }
}

/// `aes.NewCBCTransformer`: `IV(16) ‖ AES-CBC(PKCS#7(P))`, no authenticated data.
pub struct AesCbc {
    key: AesKey,
}

impl AesCbc {
    pub fn new(key: &[u8]) -> Result<Self, TransformError> {
        Ok(Self {
            key: AesKey::new(key)?,
        })
    }

    /// Encrypts with a caller-chosen IV; [`SyncTransformer::seal`] uses a random one.
    pub fn seal_with_iv(&self, iv: &[u8; 16], data: &[u8]) -> Vec<u8> {
        let pad = 16 - data.len() % 16;
        let mut buf = Zeroizing::new(Vec::with_capacity(data.len() + pad));
        buf.extend_from_slice(data);
        buf.extend(std::iter::repeat_n(pad as u8, pad));
        let len = buf.len();
        let ct: &[u8] = match &self.key {
            AesKey::K128(k) => cbc::Encryptor::<aes::Aes128>::new(k.as_ref().into(), iv.into())
                .encrypt_padded_mut::<NoPadding>(&mut buf, len)
                .unwrap_or_default(),
            AesKey::K192(k) => cbc::Encryptor::<aes::Aes192>::new(k.as_ref().into(), iv.into())
                .encrypt_padded_mut::<NoPadding>(&mut buf, len)
                .unwrap_or_default(),
            AesKey::K256(k) => cbc::Encryptor::<aes::Aes256>::new(k.as_ref().into(), iv.into())
                .encrypt_padded_mut::<NoPadding>(&mut buf, len)
                .unwrap_or_default(),
        };
        let mut out = Vec::with_capacity(16 + ct.len());
        out.extend_from_slice(iv);
        out.extend_from_slice(ct);
        out
    }
}

impl SyncTransformer for AesCbc {
    fn open(&self, data: &[u8], _ctx: &[u8]) -> Result<(Vec<u8>, bool), TransformError> {
        if data.len() < 16 {
            return Err(TransformError::new(ERR_SHORT_DATA));
        }
        let (iv, body) = data.split_at(16);
        if body.len() % 16 != 0 {
            return Err(TransformError::new(ERR_NOT_BLOCK_MULTIPLE));
        }
        // Upstream indexes result[-1] (a panic) for an IV-only value; report it as unpadded instead.
        if body.is_empty() {
            return Err(TransformError::new(ERR_PKCS7_DATA));
        }
        let iv: &[u8; 16] = iv
            .try_into()
            .map_err(|_| TransformError::new(ERR_SHORT_DATA))?;
        let mut buf = body.to_vec();
        let fail = |_| TransformError::new(ERR_NOT_BLOCK_MULTIPLE);
        let plain_len = match &self.key {
            AesKey::K128(k) => cbc::Decryptor::<aes::Aes128>::new(k.as_ref().into(), iv.into())
                .decrypt_padded_mut::<NoPadding>(&mut buf)
                .map_err(fail)?
                .len(),
            AesKey::K192(k) => cbc::Decryptor::<aes::Aes192>::new(k.as_ref().into(), iv.into())
                .decrypt_padded_mut::<NoPadding>(&mut buf)
                .map_err(fail)?
                .len(),
            AesKey::K256(k) => cbc::Decryptor::<aes::Aes256>::new(k.as_ref().into(), iv.into())
                .decrypt_padded_mut::<NoPadding>(&mut buf)
                .map_err(fail)?
                .len(),
        };
        buf.truncate(plain_len);
        let c = buf.len();
        let pad = buf[c - 1] as usize;
        if pad == 0 || pad > c {
            return Err(TransformError::new(ERR_PKCS7_DATA));
        }
        if buf[c - pad..].iter().any(|&b| b != buf[c - 1]) {
            return Err(TransformError::new(ERR_PKCS7_PADDING));
        }
        buf.truncate(c - pad);
        Ok((buf, false))
    }

    fn seal(&self, data: &[u8], _ctx: &[u8]) -> Result<Vec<u8>, TransformError> {
        let mut iv = [0u8; 16];
        rand::rng().fill_bytes(&mut iv);
        Ok(self.seal_with_iv(&iv, data))
    }
}

type Aes192Gcm = aes_gcm::AesGcm<aes::Aes192, aes_gcm::aead::consts::U12>;

enum GcmCipher {
    K128(Box<aes_gcm::Aes128Gcm>),
    K192(Box<Aes192Gcm>),
    K256(Box<aes_gcm::Aes256Gcm>),
}

/// `aes.NewGCMTransformer`: `nonce(12) ‖ AES-GCM(P, AAD = etcd key)`.
pub struct AesGcm {
    cipher: GcmCipher,
}

impl AesGcm {
    pub fn new(key: &[u8]) -> Result<Self, TransformError> {
        let bad = |_| TransformError::new(format!("crypto/aes: invalid key size {}", key.len()));
        let cipher = match key.len() {
            16 => GcmCipher::K128(Box::new(
                aes_gcm::Aes128Gcm::new_from_slice(key).map_err(bad)?,
            )),
            24 => GcmCipher::K192(Box::new(Aes192Gcm::new_from_slice(key).map_err(bad)?)),
            32 => GcmCipher::K256(Box::new(
                aes_gcm::Aes256Gcm::new_from_slice(key).map_err(bad)?,
            )),
            n => {
                return Err(TransformError::new(format!(
                    "crypto/aes: invalid key size {n}"
                )));
            }
        };
        Ok(Self { cipher })
    }

    pub fn seal_with_nonce(
        &self,
        nonce: &[u8; 12],
        data: &[u8],
        ctx: &[u8],
    ) -> Result<Vec<u8>, TransformError> {
        let n = aes_gcm::Nonce::from_slice(nonce);
        let payload = Payload {
            msg: data,
            aad: ctx,
        };
        let fail = |_| TransformError::new("cipher: encryption failed");
        let ct = match &self.cipher {
            GcmCipher::K128(c) => c.encrypt(n, payload).map_err(fail)?,
            GcmCipher::K192(c) => c.encrypt(n, payload).map_err(fail)?,
            GcmCipher::K256(c) => c.encrypt(n, payload).map_err(fail)?,
        };
        let mut out = Vec::with_capacity(12 + ct.len());
        out.extend_from_slice(nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }
}

impl SyncTransformer for AesGcm {
    fn open(&self, data: &[u8], ctx: &[u8]) -> Result<(Vec<u8>, bool), TransformError> {
        if data.len() < 12 {
            return Err(TransformError::new(ERR_SHORT_DATA));
        }
        let (nonce, body) = data.split_at(12);
        let n = aes_gcm::Nonce::from_slice(nonce);
        let payload = Payload {
            msg: body,
            aad: ctx,
        };
        let fail = |_| TransformError::new(ERR_GCM_AUTH);
        let plain = match &self.cipher {
            GcmCipher::K128(c) => c.decrypt(n, payload).map_err(fail)?,
            GcmCipher::K192(c) => c.decrypt(n, payload).map_err(fail)?,
            GcmCipher::K256(c) => c.decrypt(n, payload).map_err(fail)?,
        };
        Ok((plain, false))
    }

    fn seal(&self, data: &[u8], ctx: &[u8]) -> Result<Vec<u8>, TransformError> {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        self.seal_with_nonce(&nonce, data, ctx)
    }
}

/// `secretbox.NewSecretboxTransformer`: `nonce(24) ‖ tag(16) ‖ XSalsa20(P)`, no authenticated data.
pub struct Secretbox {
    cipher: xsalsa20poly1305::XSalsa20Poly1305,
}

impl Secretbox {
    pub fn new(key: &[u8]) -> Result<Self, TransformError> {
        if key.len() != 32 {
            return Err(TransformError::new(format!(
                "expected key size 32 for secretbox provider, got {}",
                key.len()
            )));
        }
        let cipher = xsalsa20poly1305::XSalsa20Poly1305::new_from_slice(key)
            .map_err(|_| TransformError::new("invalid secretbox key"))?;
        Ok(Self { cipher })
    }

    pub fn seal_with_nonce(
        &self,
        nonce: &[u8; 24],
        data: &[u8],
    ) -> Result<Vec<u8>, TransformError> {
        // The crate's combined form is tag ‖ ciphertext, exactly NaCl's secretbox.Seal output.
        let sealed = self
            .cipher
            .encrypt(xsalsa20poly1305::Nonce::from_slice(nonce), data)
            .map_err(|_| TransformError::new("secretbox: encryption failed"))?;
        let mut out = Vec::with_capacity(24 + sealed.len());
        out.extend_from_slice(nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }
}

impl SyncTransformer for Secretbox {
    fn open(&self, data: &[u8], _ctx: &[u8]) -> Result<(Vec<u8>, bool), TransformError> {
        if data.len() < 24 + 16 {
            return Err(TransformError::new(ERR_SHORT_DATA));
        }
        let (nonce, body) = data.split_at(24);
        let plain = self
            .cipher
            .decrypt(xsalsa20poly1305::Nonce::from_slice(nonce), body)
            .map_err(|_| TransformError::new(ERR_SECRETBOX_OPEN))?;
        Ok((plain, false))
    }

    fn seal(&self, data: &[u8], _ctx: &[u8]) -> Result<Vec<u8>, TransformError> {
        let mut nonce = [0u8; 24];
        rand::rng().fill_bytes(&mut nonce);
        self.seal_with_nonce(&nonce, data)
    }
}

/// One `(prefix, transformer)` entry of a [`PrefixTransformers`] list.
pub struct PrefixTransformer {
    pub prefix: Vec<u8>,
    pub transformer: Arc<dyn Transformer>,
}

/// `value.NewPrefixTransformers`: write with the first entry, read with the first matching entry that
/// succeeds; `stale` when the reading entry is not the first one.
pub struct PrefixTransformers {
    entries: Vec<PrefixTransformer>,
    no_match: &'static str,
    metrics: Option<(Metrics, String)>,
}

impl PrefixTransformers {
    pub fn new(no_match: &'static str, entries: Vec<PrefixTransformer>) -> Self {
        Self {
            entries,
            no_match,
            metrics: None,
        }
    }

    /// Records `apiserver_storage_transformation_operations_total` for this (outer, per-resource) list.
    pub fn with_metrics(mut self, metrics: Metrics, resource: String) -> Self {
        self.metrics = Some((metrics, resource));
        self
    }

    fn record(&self, kind: &'static str, prefix: &[u8], ok: bool) {
        if let Some((m, resource)) = &self.metrics {
            m.record(resource, kind, &String::from_utf8_lossy(prefix), ok);
        }
    }
}

impl Transformer for PrefixTransformers {
    fn transform_from_storage<'a>(
        &'a self,
        data: &'a [u8],
        ctx: &'a [u8],
    ) -> BoxFuture<'a, Result<(Vec<u8>, bool), TransformError>> {
        Box::pin(async move {
            let mut errs = Vec::new();
            for (i, entry) in self.entries.iter().enumerate() {
                if !data.starts_with(&entry.prefix) {
                    continue;
                }
                let result = entry
                    .transformer
                    .transform_from_storage(&data[entry.prefix.len()..], ctx)
                    .await;
                // Identity (empty prefix) failing is how migration away from encryption works: skip silently.
                if entry.prefix.is_empty() && result.is_err() {
                    continue;
                }
                let label: &[u8] = if entry.prefix.is_empty() {
                    b"identity"
                } else {
                    &entry.prefix
                };
                self.record("from_storage", label, result.is_ok());
                match result {
                    Ok((plain, stale)) => return Ok((plain, stale || i != 0)),
                    Err(e) => errs.push(e),
                }
            }
            if let Some(e) = TransformError::aggregate(errs) {
                return Err(e);
            }
            self.record("from_storage", b"unknown", false);
            Err(TransformError::new(self.no_match))
        })
    }

    fn transform_to_storage<'a>(
        &'a self,
        data: &'a [u8],
        ctx: &'a [u8],
    ) -> BoxFuture<'a, Result<Vec<u8>, TransformError>> {
        Box::pin(async move {
            let Some(first) = self.entries.first() else {
                return Err(TransformError::new(self.no_match));
            };
            let result = first.transformer.transform_to_storage(data, ctx).await;
            self.record("to_storage", &first.prefix, result.is_ok());
            let body = result?;
            let mut out = Vec::with_capacity(first.prefix.len() + body.len());
            out.extend_from_slice(&first.prefix);
            out.extend_from_slice(&body);
            Ok(out)
        })
    }
}

/// Counters for `apiserver_storage_transformation_operations_total`, keyed by
/// `(resource, transformation_type, transformer_prefix, status)`.
/// `(resource, transformation_type, transformer_prefix, status)`.
type MetricKey = (String, &'static str, String, &'static str);

#[derive(Clone, Default)]
pub struct Metrics {
    counts: Arc<Mutex<BTreeMap<MetricKey, u64>>>,
}

impl Metrics {
    fn record(&self, resource: &str, kind: &'static str, prefix: &str, ok: bool) {
        // Upstream labels status with the gRPC code of the error: OK, or Unknown for plain errors.
        let status = if ok { "OK" } else { "Unknown" };
        if let Ok(mut counts) = self.counts.lock() {
            *counts
                .entry((resource.to_string(), kind, prefix.to_string(), status))
                .or_default() += 1;
        }
    }

    /// Prometheus text exposition of the counters.
    pub fn render(&self) -> String {
        let mut out = String::from(
            "# HELP apiserver_storage_transformation_operations_total [ALPHA] Total number of transformations. Successful transformation will have a status 'OK' and a varied status string when the transformation fails. This status and transformation_type fields may be used for alerting on encryption/decryption failure using transformation_type from_storage for decryption and to_storage for encryption\n# TYPE apiserver_storage_transformation_operations_total counter\n",
        );
        if let Ok(counts) = self.counts.lock() {
            for ((resource, kind, prefix, status), n) in counts.iter() {
                out.push_str(&format!(
                    "apiserver_storage_transformation_operations_total{{resource=\"{resource}\",status=\"{status}\",transformation_type=\"{kind}\",transformer_prefix=\"{prefix}\"}} {n}\n"
                ));
            }
        }
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use base64::Engine;

    /// Blocking calls for tests.
    trait Blocking {
        fn read(&self, data: &[u8], ctx: &[u8]) -> Result<(Vec<u8>, bool), TransformError>;
        fn write(&self, data: &[u8], ctx: &[u8]) -> Result<Vec<u8>, TransformError>;
    }

    impl<T: Transformer + ?Sized> Blocking for T {
        fn read(&self, data: &[u8], ctx: &[u8]) -> Result<(Vec<u8>, bool), TransformError> {
            block_on(self.transform_from_storage(data, ctx))
        }
        fn write(&self, data: &[u8], ctx: &[u8]) -> Result<Vec<u8>, TransformError> {
            block_on(self.transform_to_storage(data, ctx))
        }
    }

    pub(crate) fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn b64(s: &str) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD.decode(s).unwrap()
    }

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    fn seq<const N: usize>() -> [u8; N] {
        std::array::from_fn(|i| i as u8)
    }

    const PANDAS: &[u8] = b"pandas are the best";

    fn keyed(
        prefix: &str,
        name: &str,
        t: Arc<dyn Transformer>,
        no_match: &'static str,
    ) -> PrefixTransformer {
        PrefixTransformer {
            prefix: prefix.as_bytes().to_vec(),
            transformer: Arc::new(PrefixTransformers::new(
                no_match,
                vec![PrefixTransformer {
                    prefix: format!("{name}:").into_bytes(),
                    transformer: t,
                }],
            )),
        }
    }

    #[test]
    fn aescbc_fixed_vector() {
        let cbc = AesCbc::new(&b64("c2VjcmV0IGlzIHNlY3VyZQ==")).unwrap();
        let mut full = b"k8s:enc:aescbc:v1:key1:".to_vec();
        full.extend(cbc.seal_with_iv(&seq::<16>(), PANDAS));
        let want = "6b38733a656e633a6165736362633a76313a6b6579313a000102030405060708090a0b0c0d0e0faa013ef9f648bd2fb53d613341113280f00fd30286871e9abb4b617e815ddf4c";
        assert_eq!(hex::encode(&full), want);
        let outer = PrefixTransformers::new(
            ERR_NO_MATCHING_PREFIX,
            vec![keyed(AESCBC_PREFIX, "key1", Arc::new(cbc), ERR_NO_AES_KEY)],
        );
        assert_eq!(
            outer.read(&unhex(want), b"any").unwrap(),
            (PANDAS.to_vec(), false)
        );
    }

    #[test]
    fn secretbox_fixed_vector() {
        let sb = Secretbox::new(&b64("YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXoxMjM0NTY=")).unwrap();
        let mut full = b"k8s:enc:secretbox:v1:key1:".to_vec();
        full.extend(sb.seal_with_nonce(&seq::<24>(), PANDAS).unwrap());
        let want = "6b38733a656e633a736563726574626f783a76313a6b6579313a000102030405060708090a0b0c0d0e0f1011121314151617c4b58e66504340882fb6987dd29468c96594e2c560104eba21fa993027fe912f2bd914";
        assert_eq!(hex::encode(&full), want);
        let body = &unhex(want)[b"k8s:enc:secretbox:v1:key1:".len()..];
        assert_eq!(sb.read(body, b"").unwrap().0, PANDAS);
    }

    #[test]
    fn aesgcm_fixed_vector_binds_the_etcd_key() {
        let gcm = AesGcm::new(&b64("c2VjcmV0IGlzIHNlY3VyZQ==")).unwrap();
        let aad = b"/registry/secrets/default/s1";
        let mut full = b"k8s:enc:aesgcm:v1:key1:".to_vec();
        full.extend(gcm.seal_with_nonce(&seq::<12>(), PANDAS, aad).unwrap());
        let want = "6b38733a656e633a61657367636d3a76313a6b6579313a000102030405060708090a0b9292c680fad916d667c24a8900ba69291d64d1da4c1e727cf3c1714ffd6770ae02e990";
        assert_eq!(hex::encode(&full), want);
        let body = &unhex(want)[b"k8s:enc:aesgcm:v1:key1:".len()..];
        assert_eq!(gcm.read(body, aad).unwrap().0, PANDAS);
        let moved = gcm.read(body, b"/registry/secrets/default/s2").unwrap_err();
        assert_eq!(moved.to_string(), ERR_GCM_AUTH);
    }

    #[test]
    fn aesgcm_upstream_legacy_vector() {
        let gcm = AesGcm::new(b"snorlax_awesomes").unwrap();
        let body = unhex(
            "9f27c8fcea8a58c467d8e437dbf2d85955f9b4bd912f4ef967d788a0cb07797dac0a3f0a0845605ca85ac8562b4ae1",
        );
        assert_eq!(
            gcm.read(&body, b"bamboo").unwrap(),
            (PANDAS.to_vec(), false)
        );
        assert_eq!(
            gcm.read(&body[..11], b"bamboo").unwrap_err().to_string(),
            ERR_SHORT_DATA
        );
    }

    #[test]
    fn aescbc_error_texts() {
        let cbc = AesCbc::new(&[7u8; 32]).unwrap();
        let other = AesCbc::new(&[8u8; 32]).unwrap();
        let err = |d: &[u8]| cbc.read(d, b"").unwrap_err().to_string();
        assert_eq!(err(&[0u8; 15]), ERR_SHORT_DATA);
        assert_eq!(err(&[0u8; 17]), ERR_NOT_BLOCK_MULTIPLE);
        assert_eq!(err(&[0u8; 16]), ERR_PKCS7_DATA);
        // Find a wrong-key read that fails the padding check (about 255 in 256 do).
        let sealed = (0u8..=255)
            .map(|i| other.seal_with_iv(&[i; 16], PANDAS))
            .find(|s| cbc.read(s, b"").is_err())
            .unwrap();
        let e = err(&sealed);
        assert!(e == ERR_PKCS7_PADDING || e == ERR_PKCS7_DATA, "{e}");
        // Full padding block when the plaintext is block-aligned.
        let aligned = cbc.seal_with_iv(&[1; 16], &[9u8; 32]);
        assert_eq!(aligned.len(), 16 + 48);
        assert_eq!(cbc.read(&aligned, b"").unwrap().0, vec![9u8; 32]);
    }

    #[test]
    fn secretbox_error_texts() {
        let sb = Secretbox::new(&[1u8; 32]).unwrap();
        let other = Secretbox::new(&[2u8; 32]).unwrap();
        assert_eq!(
            sb.read(&[0u8; 39], b"").unwrap_err().to_string(),
            ERR_SHORT_DATA
        );
        let sealed = other.seal_with_nonce(&[3u8; 24], PANDAS).unwrap();
        assert_eq!(
            sb.read(&sealed, b"").unwrap_err().to_string(),
            ERR_SECRETBOX_OPEN
        );
    }

    /// Two aescbc providers whose keys share the name `key` (so both match the value's prefix): the
    /// first fails, the second reads, and the result is stale because it came from entry 1.
    #[test]
    fn overlapping_prefixes_fall_through_and_mark_stale() {
        let a = Arc::new(AesCbc::new(&[1u8; 32]).unwrap());
        let b = Arc::new(AesCbc::new(&[2u8; 32]).unwrap());
        let list = |first: Arc<AesCbc>, second: Arc<AesCbc>| {
            PrefixTransformers::new(
                ERR_NO_MATCHING_PREFIX,
                vec![
                    keyed(AESCBC_PREFIX, "key", first, ERR_NO_AES_KEY),
                    keyed(AESCBC_PREFIX, "key", second, ERR_NO_AES_KEY),
                ],
            )
        };
        let written_by_b = PrefixTransformers::new(
            ERR_NO_MATCHING_PREFIX,
            vec![keyed(AESCBC_PREFIX, "key", b.clone(), ERR_NO_AES_KEY)],
        );
        // A value whose wrong-key read fails on the padding check (most do).
        let value = (0..64)
            .map(|_| written_by_b.write(PANDAS, b"").unwrap())
            .find(|v| a.read(&v[AESCBC_PREFIX.len() + 4..], b"").is_err())
            .unwrap();
        assert_eq!(
            list(a.clone(), b.clone()).read(&value, b"").unwrap(),
            (PANDAS.to_vec(), true)
        );
        assert_eq!(
            list(b.clone(), a.clone()).read(&value, b"").unwrap(),
            (PANDAS.to_vec(), false)
        );
        // Neither key: each failing entry contributes its error; equal texts collapse to one.
        let c = Arc::new(AesCbc::new(&[3u8; 32]).unwrap());
        let err = list(c.clone(), a.clone())
            .read(&value, b"")
            .unwrap_err()
            .to_string();
        let single = [ERR_PKCS7_PADDING, ERR_PKCS7_DATA];
        let ok = single.contains(&err.as_str())
            || single
                .iter()
                .any(|x| single.iter().any(|y| err == format!("[{x}, {y}]")));
        assert!(ok, "{err}");
    }

    #[test]
    fn stale_and_identity_semantics() {
        let cbc: Arc<dyn Transformer> = Arc::new(AesCbc::new(&[5u8; 16]).unwrap());
        let id: Arc<dyn Transformer> = Arc::new(Identity);
        let enc_first = PrefixTransformers::new(
            ERR_NO_MATCHING_PREFIX,
            vec![
                keyed(AESCBC_PREFIX, "k1", cbc.clone(), ERR_NO_AES_KEY),
                PrefixTransformer {
                    prefix: vec![],
                    transformer: id.clone(),
                },
            ],
        );
        let id_first = PrefixTransformers::new(
            ERR_NO_MATCHING_PREFIX,
            vec![
                PrefixTransformer {
                    prefix: vec![],
                    transformer: id.clone(),
                },
                keyed(AESCBC_PREFIX, "k1", cbc.clone(), ERR_NO_AES_KEY),
            ],
        );
        let plain = b"{\"kind\":\"Secret\"}\n";
        // Plaintext read through identity at index 1 is stale (enabling encryption rewrites it).
        assert_eq!(enc_first.read(plain, b"").unwrap(), (plain.to_vec(), true));
        assert_eq!(id_first.read(plain, b"").unwrap(), (plain.to_vec(), false));
        let enc = enc_first.write(plain, b"").unwrap();
        assert!(enc.starts_with(b"k8s:enc:aescbc:v1:k1:"));
        assert_eq!(enc_first.read(&enc, b"").unwrap(), (plain.to_vec(), false));
        // Identity first: the encrypted value is read by aescbc at index 1, so stale (disabling rewrites it).
        assert_eq!(id_first.read(&enc, b"").unwrap(), (plain.to_vec(), true));
        // Inner key index ≠ 0 is stale too.
        let two_keys = PrefixTransformers::new(
            ERR_NO_MATCHING_PREFIX,
            vec![PrefixTransformer {
                prefix: AESCBC_PREFIX.as_bytes().to_vec(),
                transformer: Arc::new(PrefixTransformers::new(
                    ERR_NO_AES_KEY,
                    vec![
                        PrefixTransformer {
                            prefix: b"k2:".to_vec(),
                            transformer: Arc::new(AesCbc::new(&[6u8; 16]).unwrap()),
                        },
                        PrefixTransformer {
                            prefix: b"k1:".to_vec(),
                            transformer: cbc.clone(),
                        },
                    ],
                )),
            }],
        );
        assert_eq!(two_keys.read(&enc, b"").unwrap(), (plain.to_vec(), true));
        // Unknown key name inside a matching provider prefix.
        let mut renamed = b"k8s:enc:aescbc:v1:k9:".to_vec();
        renamed.extend_from_slice(&enc[b"k8s:enc:aescbc:v1:k1:".len()..]);
        assert_eq!(
            two_keys.read(&renamed, b"").unwrap_err().to_string(),
            ERR_NO_AES_KEY
        );
        // Encrypted data with only identity configured: identity's error is silent → no matching prefix.
        let only_id = PrefixTransformers::new(
            ERR_NO_MATCHING_PREFIX,
            vec![PrefixTransformer {
                prefix: vec![],
                transformer: id.clone(),
            }],
        );
        assert_eq!(
            only_id.read(&enc, b"").unwrap_err().to_string(),
            ERR_NO_MATCHING_PREFIX
        );
        // The bare identity used for unconfigured resources reports its own text.
        assert_eq!(
            Identity.read(&enc, b"").unwrap_err().to_string(),
            ERR_IDENTITY_ENCRYPTED
        );
    }

    #[test]
    fn aggregate_formats_like_go() {
        let e = |s: &str| TransformError::new(s);
        assert_eq!(TransformError::aggregate(vec![]), None);
        assert_eq!(
            TransformError::aggregate(vec![e("a")]).unwrap().to_string(),
            "a"
        );
        assert_eq!(
            TransformError::aggregate(vec![e("a"), e("a")])
                .unwrap()
                .to_string(),
            "a"
        );
        assert_eq!(
            TransformError::aggregate(vec![e("a"), e("b"), e("a")])
                .unwrap()
                .to_string(),
            "[a, b]"
        );
    }
}
