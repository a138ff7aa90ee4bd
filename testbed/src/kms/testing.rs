//! In-process plugin doubles with upstream's *test mock* semantics (`k8s.io/kms` testing plugins used by
//! `kmsv2_transformation_test.go`): the "KEK" is base64 — `Encrypt` returns base64(plaintext) and `Decrypt`
//! base64-decodes. They exist only to decrypt upstream's recorded etcd values (reference §6.3 / Appendix A) and
//! to exercise the envelope logic without a socket; never use them to protect data.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use zeroize::Zeroizing;

use super::client::KmsClientError;
use super::proto::v2;
use super::transformer::{BoxFuture, KmsV1Service, KmsV2Service};

fn mock_err(msg: String) -> KmsClientError {
    KmsClientError::Rpc {
        socket: PathBuf::from("<in-process mock>"),
        status: tonic::Status::internal(msg),
    }
}

fn b64_decode(cipher: &[u8]) -> Result<Zeroizing<Vec<u8>>, KmsClientError> {
    B64.decode(cipher)
        .map(Zeroizing::new)
        .map_err(|e| mock_err(format!("base64 decode: {e}")))
}

/// KMS v2 mock: base64 "KEK", settable key id and health, upstream's mock annotation.
#[derive(Debug)]
pub struct Base64V2Service {
    key_id: Mutex<String>,
    healthz: Mutex<String>,
    /// Number of Decrypt calls (to observe the DEK cache).
    pub decrypt_calls: AtomicUsize,
    /// Number of Encrypt calls (to observe seed rotation).
    pub encrypt_calls: AtomicUsize,
}

impl Base64V2Service {
    pub fn new(key_id: &str) -> Self {
        Self {
            key_id: Mutex::new(key_id.to_string()),
            healthz: Mutex::new("ok".into()),
            decrypt_calls: AtomicUsize::new(0),
            encrypt_calls: AtomicUsize::new(0),
        }
    }

    pub fn set_key_id(&self, key_id: &str) {
        *self.key_id.lock().unwrap_or_else(|p| p.into_inner()) = key_id.to_string();
    }

    pub fn set_healthz(&self, healthz: &str) {
        *self.healthz.lock().unwrap_or_else(|p| p.into_inner()) = healthz.to_string();
    }

    fn key_id(&self) -> String {
        self.key_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl KmsV2Service for Base64V2Service {
    fn status(&self) -> BoxFuture<'_, Result<v2::StatusResponse, KmsClientError>> {
        let resp = v2::StatusResponse {
            version: "v2".into(),
            healthz: self
                .healthz
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            key_id: self.key_id(),
        };
        Box::pin(async move { Ok(resp) })
    }

    fn encrypt<'a>(
        &'a self,
        plaintext: &'a [u8],
        _uid: &'a str,
    ) -> BoxFuture<'a, Result<v2::EncryptResponse, KmsClientError>> {
        self.encrypt_calls.fetch_add(1, Ordering::SeqCst);
        let mut annotations = BTreeMap::new();
        annotations.insert(
            "local-kek.kms.kubernetes.io".to_string(),
            b"encrypted-local-kek".to_vec(),
        );
        let resp = v2::EncryptResponse {
            ciphertext: B64.encode(plaintext).into_bytes(),
            key_id: self.key_id(),
            annotations,
        };
        Box::pin(async move { Ok(resp) })
    }

    fn decrypt<'a>(
        &'a self,
        ciphertext: &'a [u8],
        _uid: &'a str,
        _key_id: &'a str,
        _annotations: &'a BTreeMap<String, Vec<u8>>,
    ) -> BoxFuture<'a, Result<Zeroizing<Vec<u8>>, KmsClientError>> {
        self.decrypt_calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move { b64_decode(ciphertext) })
    }
}

/// KMS v1 mock: base64 "KEK".
#[derive(Debug, Default)]
pub struct Base64V1Service {
    /// Number of Decrypt calls (to observe the DEK cache).
    pub decrypt_calls: AtomicUsize,
}

impl KmsV1Service for Base64V1Service {
    fn encrypt<'a>(&'a self, plain: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, KmsClientError>> {
        Box::pin(async move { Ok(B64.encode(plain).into_bytes()) })
    }

    fn decrypt<'a>(
        &'a self,
        cipher: &'a [u8],
    ) -> BoxFuture<'a, Result<Zeroizing<Vec<u8>>, KmsClientError>> {
        self.decrypt_calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move { b64_decode(cipher) })
    }
}
