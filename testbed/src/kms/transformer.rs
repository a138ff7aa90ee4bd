//! [`KmsTransformer`]: the `kms` provider of the kube-apiserver stand-in (KMS v1 and v2 envelope transformers,
//! `apiserver:pkg/storage/value/encrypt/envelope/{envelope.go,kmsv2/envelope.go}` and the KMS v2 state machine of
//! `encryptionconfig/config.go`).
//!
//! KMS v2 state: a 32-byte seed is generated and wrapped by the plugin at the first use and whenever plugin
//! `Status` reports a new `key_id`; each good Status moves the write deadline to now + 3 min (writes fail after it,
//! reads never do). Status is polled every 60 s (10 s while failing) by [`KmsTransformer::spawn_status_poller`],
//! and, without a poller, lazily before a write when the last check is older than 60 s.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use lru::LruCache;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::client::{KmsClientError, KmsV1Client, KmsV2Client};
use super::envelope::{self, DEK_SIZE, EnvelopeError};
use super::proto::v2::{self, EncryptedDekSourceType, EncryptedObject};

/// `kmsv2PluginHealthzPositiveInterval`
pub const STATUS_POLL_INTERVAL: Duration = Duration::from_secs(60);
/// `kmsv2PluginHealthzNegativeInterval`
pub const STATUS_RETRY_INTERVAL: Duration = Duration::from_secs(10);
/// `kmsv2PluginWriteDEKSourceMaxTTL`
pub const WRITE_DEK_SOURCE_MAX_TTL: Duration = Duration::from_secs(3 * 60);
/// KMS v2 decrypted DEK/seed cache TTL (`cacheTTL`).
pub const V2_CACHE_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default KMS v1 `cachesize`.
pub const DEFAULT_V1_CACHE_SIZE: i32 = 1000;

/// A boxed future, so the plugin services can be trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the v1 envelope needs from a plugin (implemented by [`KmsV1Client`]; tests use an in-process mock).
pub trait KmsV1Service: Send + Sync {
    fn encrypt<'a>(&'a self, plain: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, KmsClientError>>;
    fn decrypt<'a>(
        &'a self,
        cipher: &'a [u8],
    ) -> BoxFuture<'a, Result<Zeroizing<Vec<u8>>, KmsClientError>>;
}

/// What the v2 envelope needs from a plugin (implemented by [`KmsV2Client`]; tests use an in-process mock).
pub trait KmsV2Service: Send + Sync {
    fn status(&self) -> BoxFuture<'_, Result<v2::StatusResponse, KmsClientError>>;
    fn encrypt<'a>(
        &'a self,
        plaintext: &'a [u8],
        uid: &'a str,
    ) -> BoxFuture<'a, Result<v2::EncryptResponse, KmsClientError>>;
    fn decrypt<'a>(
        &'a self,
        ciphertext: &'a [u8],
        uid: &'a str,
        key_id: &'a str,
        annotations: &'a BTreeMap<String, Vec<u8>>,
    ) -> BoxFuture<'a, Result<Zeroizing<Vec<u8>>, KmsClientError>>;
}

impl KmsV1Service for KmsV1Client {
    fn encrypt<'a>(&'a self, plain: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, KmsClientError>> {
        Box::pin(KmsV1Client::encrypt(self, plain))
    }
    fn decrypt<'a>(
        &'a self,
        cipher: &'a [u8],
    ) -> BoxFuture<'a, Result<Zeroizing<Vec<u8>>, KmsClientError>> {
        Box::pin(KmsV1Client::decrypt(self, cipher))
    }
}

impl KmsV2Service for KmsV2Client {
    fn status(&self) -> BoxFuture<'_, Result<v2::StatusResponse, KmsClientError>> {
        Box::pin(KmsV2Client::status(self))
    }
    fn encrypt<'a>(
        &'a self,
        plaintext: &'a [u8],
        uid: &'a str,
    ) -> BoxFuture<'a, Result<v2::EncryptResponse, KmsClientError>> {
        Box::pin(KmsV2Client::encrypt(self, plaintext, uid))
    }
    fn decrypt<'a>(
        &'a self,
        ciphertext: &'a [u8],
        uid: &'a str,
        key_id: &'a str,
        annotations: &'a BTreeMap<String, Vec<u8>>,
    ) -> BoxFuture<'a, Result<Zeroizing<Vec<u8>>, KmsClientError>> {
        Box::pin(KmsV2Client::decrypt(
            self,
            ciphertext,
            uid,
            key_id,
            annotations,
        ))
    }
}

/// `kms.apiVersion` of the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KmsApiVersion {
    V1,
    V2,
}

/// The `kms` provider fields of an EncryptionConfiguration.
#[derive(Debug, Clone)]
pub struct KmsProviderConfig {
    pub name: String,
    /// `unix:///path/to/socket`
    pub endpoint: String,
    pub api_version: KmsApiVersion,
    /// v1 only: LRU size of decrypted DEKs; `None` = 1000; negative disables.
    pub cache_size: Option<i32>,
    /// Per-call timeout (`kms.timeout`, default 3 s).
    pub timeout: Duration,
}

/// Errors of the KMS transformer, worded like kube-apiserver's where known.
#[derive(Debug, thiserror::Error)]
pub enum KmsError {
    #[error("invalid KMS provider configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Endpoint(KmsClientError),
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error("value does not start with the provider prefix {0:?}")]
    WrongPrefix(String),
    #[error("failed to encrypt DEK, error: {0}")]
    EncryptDek(KmsClientError),
    #[error("failed to decrypt DEK, error: {0}")]
    DecryptDek(KmsClientError),
    /// KMS v1 passes plugin errors through unwrapped.
    #[error(transparent)]
    V1Rpc(KmsClientError),
    #[error("got unexpected nil transformer")]
    NoState,
    #[error(
        "encryptedDEKSource with keyID hash {key_id_hash:?} expired at {expired_at} (current time is {now})"
    )]
    Expired {
        key_id_hash: String,
        expired_at: String,
        now: String,
    },
    #[error("kmsv2 Provider {name} is not healthy, error: {detail}")]
    Unhealthy { name: String, detail: String },
    #[error(
        "failed to rotate DEK uid={uid:?}, errGen={err_gen}, statusKeyIDHash={status_hash:?}, encryptKeyIDHash={encrypt_hash:?}"
    )]
    Rotate {
        uid: String,
        err_gen: String,
        status_hash: String,
        encrypt_hash: String,
    },
    #[error(
        "failed to perform {section} section of the healthz check for KMS Provider {name}, error: {detail}"
    )]
    V1Health {
        section: &'static str,
        name: String,
        detail: String,
    },
}

/// `sha256:<hex>` of a non-empty string (upstream `GetHashIfNotEmpty`), used instead of raw key ids in messages.
pub fn hash_if_not_empty(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!("sha256:{}", hex::encode(Sha256::digest(s.as_bytes())))
    }
}

fn new_uid() -> String {
    let b = envelope::random_bytes::<16>();
    let h = hex::encode(b.as_ref());
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{t:?}"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The `kms` provider transformer. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct KmsTransformer {
    name: String,
    prefix: Vec<u8>,
    inner: Inner,
}

impl std::fmt::Debug for KmsTransformer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmsTransformer")
            .field("name", &self.name)
            .field("api_version", &self.api_version())
            .finish()
    }
}

enum Inner {
    V1(V1Envelope),
    V2(V2Envelope),
}

/// A decrypted DEK or seed, shared between the cache and in-flight reads.
type PlainKey = Arc<Zeroizing<Vec<u8>>>;

struct V1Envelope {
    service: Arc<dyn KmsV1Service>,
    /// base64(E) → DEK
    cache: Option<Mutex<LruCache<String, PlainKey>>>,
}

/// The current write state (upstream `kmsv2.State`).
struct WriteState {
    seed: Zeroizing<[u8; DEK_SIZE]>,
    /// keyID, encryptedDEKSource, annotations and type; encryptedData is filled per write.
    object: EncryptedObject,
    cache_key: Vec<u8>,
    expires: SystemTime,
}

struct CachedKey {
    key: PlainKey,
    inserted: Instant,
}

struct V2Envelope {
    service: Arc<dyn KmsV2Service>,
    state: RwLock<Option<Arc<WriteState>>>,
    last_check: Mutex<Option<Instant>>,
    refresh_lock: tokio::sync::Mutex<()>,
    cache: Mutex<HashMap<Vec<u8>, CachedKey>>,
}

impl KmsTransformer {
    /// Builds the transformer for one `kms` provider; connects lazily (a missing plugin shows up on first use).
    pub fn new(config: &KmsProviderConfig) -> Result<Self, KmsError> {
        match config.api_version {
            KmsApiVersion::V1 => {
                let client = KmsV1Client::connect(&config.endpoint, config.timeout)
                    .map_err(KmsError::Endpoint)?;
                Self::with_v1_service(
                    &config.name,
                    config.cache_size.unwrap_or(DEFAULT_V1_CACHE_SIZE),
                    Arc::new(client),
                )
            }
            KmsApiVersion::V2 => {
                if config.cache_size.is_some() {
                    return Err(KmsError::Config("cachesize is not supported in v2".into()));
                }
                let client = KmsV2Client::connect(&config.endpoint, config.timeout)
                    .map_err(KmsError::Endpoint)?;
                Self::with_v2_service(&config.name, Arc::new(client))
            }
        }
    }

    fn check_name(name: &str, v2: bool) -> Result<(), KmsError> {
        if name.is_empty() {
            return Err(KmsError::Config(
                "name is a mandatory field for a provider".into(),
            ));
        }
        if v2 && name.contains(':') {
            return Err(KmsError::Config(format!(
                "invalid KMS provider name {name}, must not contain ':'"
            )));
        }
        Ok(())
    }

    /// A KMS v1 transformer over any [`KmsV1Service`]. `cache_size` < 0 disables the DEK cache; 0 is invalid.
    pub fn with_v1_service(
        name: &str,
        cache_size: i32,
        service: Arc<dyn KmsV1Service>,
    ) -> Result<Self, KmsError> {
        Self::check_name(name, false)?;
        let cache = match cache_size {
            0 => {
                return Err(KmsError::Config(
                    "cachesize should be a positive value, or negative to disable".into(),
                ));
            }
            n if n < 0 => None,
            n => NonZeroUsize::new(n as usize).map(|n| Mutex::new(LruCache::new(n))),
        };
        Ok(Self {
            name: name.to_string(),
            prefix: envelope::v1_prefix(name),
            inner: Inner::V1(V1Envelope { service, cache }),
        })
    }

    /// A KMS v2 transformer over any [`KmsV2Service`].
    pub fn with_v2_service(name: &str, service: Arc<dyn KmsV2Service>) -> Result<Self, KmsError> {
        Self::check_name(name, true)?;
        Ok(Self {
            name: name.to_string(),
            prefix: envelope::v2_prefix(name),
            inner: Inner::V2(V2Envelope {
                service,
                state: RwLock::new(None),
                last_check: Mutex::new(None),
                refresh_lock: tokio::sync::Mutex::new(()),
                cache: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn api_version(&self) -> KmsApiVersion {
        match self.inner {
            Inner::V1(_) => KmsApiVersion::V1,
            Inner::V2(_) => KmsApiVersion::V2,
        }
    }

    /// `k8s:enc:kms:v1:<name>:` or `k8s:enc:kms:v2:<name>:`.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// The key id new writes use (v2, after a successful Status); `None` for v1 or before the first Status.
    pub fn current_key_id(&self) -> Option<String> {
        match &self.inner {
            Inner::V2(e) => e.current().map(|s| s.object.key_id.clone()),
            Inner::V1(_) => None,
        }
    }

    /// Full stored value: `prefix ‖ body`. `etcd_key` is the AAD (the full etcd key, prefix included).
    pub async fn encrypt(&self, plaintext: &[u8], etcd_key: &str) -> Result<Vec<u8>, KmsError> {
        let mut out = self.prefix.clone();
        out.extend(self.encrypt_body(plaintext, etcd_key).await?);
        Ok(out)
    }

    /// Reads a full stored value (must start with [`KmsTransformer::prefix`]); returns `(plaintext, stale)`.
    pub async fn decrypt(&self, value: &[u8], etcd_key: &str) -> Result<(Vec<u8>, bool), KmsError> {
        let body = value.strip_prefix(self.prefix.as_slice()).ok_or_else(|| {
            KmsError::WrongPrefix(String::from_utf8_lossy(&self.prefix).into_owned())
        })?;
        self.decrypt_body(body, etcd_key).await
    }

    /// The bytes after the prefix (for a stand-in that strips/adds prefixes itself, as upstream's prefix list does).
    pub async fn encrypt_body(
        &self,
        plaintext: &[u8],
        etcd_key: &str,
    ) -> Result<Vec<u8>, KmsError> {
        match &self.inner {
            Inner::V1(e) => e.encrypt(plaintext, etcd_key.as_bytes()).await,
            Inner::V2(e) => e.encrypt(&self.name, plaintext, etcd_key.as_bytes()).await,
        }
    }

    /// Reads the bytes after the prefix; returns `(plaintext, stale)`.
    pub async fn decrypt_body(
        &self,
        body: &[u8],
        etcd_key: &str,
    ) -> Result<(Vec<u8>, bool), KmsError> {
        match &self.inner {
            Inner::V1(e) => e.decrypt(body, etcd_key.as_bytes()).await,
            Inner::V2(e) => e.decrypt(&self.name, body, etcd_key.as_bytes()).await,
        }
    }

    /// The provider health check (`/healthz/kms-provider-<i>` for v1: encrypt+decrypt "ping"; `kms-providers` for
    /// v2: Status, validated, then DEK/seed rotation if the key id changed).
    pub async fn health(&self) -> Result<(), KmsError> {
        match &self.inner {
            Inner::V1(e) => e.ping(&self.name).await,
            Inner::V2(e) => e.refresh(&self.name).await,
        }
    }

    /// Starts upstream's Status polling loop (60 s healthy, 10 s failing). Abort the handle to stop it.
    pub fn spawn_status_poller(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let wait = match this.health().await {
                    Ok(()) => STATUS_POLL_INTERVAL,
                    Err(e) => {
                        tracing::warn!(provider = %this.name, "kms health check failed: {e}");
                        STATUS_RETRY_INTERVAL
                    }
                };
                tokio::time::sleep(wait).await;
            }
        })
    }
}

impl V1Envelope {
    async fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, KmsError> {
        let dek = envelope::random_bytes::<DEK_SIZE>();
        let encrypted_dek = self
            .service
            .encrypt(dek.as_ref())
            .await
            .map_err(KmsError::V1Rpc)?;
        let payload = envelope::gcm_seal(dek.as_ref(), aad, plaintext)?;
        let out = envelope::v1_join(&encrypted_dek, &payload)?;
        if let Some(cache) = &self.cache {
            lock(cache).put(
                B64.encode(&encrypted_dek),
                Arc::new(Zeroizing::new(dek.to_vec())),
            );
        }
        Ok(out)
    }

    async fn decrypt(&self, body: &[u8], aad: &[u8]) -> Result<(Vec<u8>, bool), KmsError> {
        let parts = envelope::v1_split(body)?;
        let cache_key = B64.encode(parts.encrypted_dek);
        let cached = self
            .cache
            .as_ref()
            .and_then(|c| lock(c).get(&cache_key).cloned());
        let dek = match cached {
            Some(d) => d,
            None => {
                let d = Arc::new(
                    self.service
                        .decrypt(parts.encrypted_dek)
                        .await
                        .map_err(KmsError::V1Rpc)?,
                );
                if let Some(c) = &self.cache {
                    lock(c).put(cache_key, d.clone());
                }
                d
            }
        };
        Ok(envelope::v1_open_payload(
            dek.as_slice(),
            aad,
            parts.payload,
        )?)
    }

    async fn ping(&self, name: &str) -> Result<(), KmsError> {
        let health = |section, e: KmsClientError| KmsError::V1Health {
            section,
            name: name.to_string(),
            detail: e.to_string(),
        };
        let ct = self
            .service
            .encrypt(b"ping")
            .await
            .map_err(|e| health("encrypt", e))?;
        let pt = self
            .service
            .decrypt(&ct)
            .await
            .map_err(|e| health("decrypt", e))?;
        if pt.as_slice() != b"ping" {
            return Err(KmsError::V1Health {
                section: "decrypt",
                name: name.to_string(),
                detail: "plugin returned a different plaintext".into(),
            });
        }
        Ok(())
    }
}

impl V2Envelope {
    fn current(&self) -> Option<Arc<WriteState>> {
        self.state.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// One Status round: validate, then keep (extend) or rotate the seed.
    async fn refresh(&self, name: &str) -> Result<(), KmsError> {
        let _guard = self.refresh_lock.lock().await;
        *lock(&self.last_check) = Some(Instant::now());
        let status = self
            .service
            .status()
            .await
            .map_err(|e| KmsError::Unhealthy {
                name: name.to_string(),
                detail: e.to_string(),
            })?;
        let mut errs = Vec::new();
        if status.healthz != "ok" {
            errs.push(format!("got unexpected healthz status: {}", status.healthz));
        }
        if status.version != "v2" && status.version != "v2beta1" {
            errs.push(format!(
                "expected KMSv2 API version v2, got {}",
                status.version
            ));
        }
        if let Err(e) = envelope::validate_key_id(&status.key_id) {
            errs.push(format!(
                "got invalid KMSv2 KeyID hash {:?}: {e}",
                hash_if_not_empty(&status.key_id)
            ));
        }
        if !errs.is_empty() {
            let detail = if errs.len() == 1 {
                errs.remove(0)
            } else {
                format!("[{}]", errs.join(", "))
            };
            return Err(KmsError::Unhealthy {
                name: name.to_string(),
                detail,
            });
        }
        let expires = SystemTime::now() + WRITE_DEK_SOURCE_MAX_TTL;
        if let Some(cur) = self.current()
            && cur.object.key_id == status.key_id
        {
            let extended = WriteState {
                seed: cur.seed.clone(),
                object: cur.object.clone(),
                cache_key: cur.cache_key.clone(),
                expires,
            };
            *self.state.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(extended));
            return Ok(());
        }
        // New key id (or first use): new seed, wrapped by the plugin.
        let uid = new_uid();
        let seed = envelope::random_bytes::<DEK_SIZE>();
        let rotate_err = |err_gen: String, encrypt_key_id: &str| KmsError::Rotate {
            uid: uid.clone(),
            err_gen,
            status_hash: hash_if_not_empty(&status.key_id),
            encrypt_hash: hash_if_not_empty(encrypt_key_id),
        };
        let resp = self
            .service
            .encrypt(seed.as_ref(), &uid)
            .await
            .map_err(|e| rotate_err(KmsError::EncryptDek(e).to_string(), ""))?;
        let object = EncryptedObject {
            encrypted_data: vec![0], // any non-empty value to pass validation, as upstream
            key_id: resp.key_id.clone(),
            encrypted_dek_source: resp.ciphertext,
            annotations: resp.annotations,
            encrypted_dek_source_type: EncryptedDekSourceType::HkdfSha256XnonceAesGcmSeed as i32,
        };
        envelope::validate_encrypted_object(&object)
            .map_err(|e| rotate_err(e.to_string(), &resp.key_id))?;
        if resp.key_id != status.key_id {
            return Err(rotate_err("<nil>".into(), &resp.key_id));
        }
        let cache_key = envelope::v2_cache_key(
            object.encrypted_dek_source_type,
            &object.encrypted_dek_source,
            &object.key_id,
            &object.annotations,
        );
        lock(&self.cache).insert(
            cache_key.clone(),
            CachedKey {
                key: Arc::new(Zeroizing::new(seed.to_vec())),
                inserted: Instant::now(),
            },
        );
        tracing::info!(provider = name, key_id_hash = %hash_if_not_empty(&object.key_id), "kms v2: new DEK seed");
        let state = WriteState {
            seed,
            object,
            cache_key,
            expires,
        };
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(state));
        Ok(())
    }

    /// Without a poller, re-check Status lazily: at first use and when the last check is older than the poll interval.
    async fn refresh_if_due(&self, name: &str) {
        let due = lock(&self.last_check).is_none_or(|t| t.elapsed() >= STATUS_POLL_INTERVAL)
            || self.current().is_none();
        if due && let Err(e) = self.refresh(name).await {
            tracing::warn!(provider = name, "kms v2 status check failed: {e}");
        }
    }

    async fn encrypt(&self, name: &str, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, KmsError> {
        self.refresh_if_due(name).await;
        let state = self.current().ok_or(KmsError::NoState)?;
        let now = SystemTime::now();
        if now > state.expires {
            return Err(KmsError::Expired {
                key_id_hash: hash_if_not_empty(&state.object.key_id),
                expired_at: rfc3339(state.expires),
                now: rfc3339(now),
            });
        }
        let mut object = state.object.clone();
        object.encrypted_data = envelope::xnonce_seal(state.seed.as_ref(), aad, plaintext)?;
        Ok(envelope::encode_encrypted_object(&object)?)
    }

    fn cached(&self, key: &[u8]) -> Option<PlainKey> {
        let mut cache = lock(&self.cache);
        cache.retain(|_, v| v.inserted.elapsed() < V2_CACHE_TTL);
        cache.get(key).map(|v| v.key.clone())
    }

    async fn decrypt(
        &self,
        name: &str,
        body: &[u8],
        aad: &[u8],
    ) -> Result<(Vec<u8>, bool), KmsError> {
        let object = envelope::decode_encrypted_object(body)?;
        let source_type = EncryptedDekSourceType::try_from(object.encrypted_dek_source_type)
            .map_err(|_| EnvelopeError::UnknownSourceType(object.encrypted_dek_source_type))?;
        if self.current().is_none() {
            self.refresh_if_due(name).await;
        }
        // Reads need the current state too: staleness is relative to it.
        let state = self.current().ok_or(KmsError::NoState)?;
        let cache_key = envelope::v2_cache_key(
            object.encrypted_dek_source_type,
            &object.encrypted_dek_source,
            &object.key_id,
            &object.annotations,
        );
        let key = match self.cached(&cache_key) {
            Some(k) => k,
            None => {
                let uid = new_uid();
                let k = self
                    .service
                    .decrypt(
                        &object.encrypted_dek_source,
                        &uid,
                        &object.key_id,
                        &object.annotations,
                    )
                    .await
                    .map_err(KmsError::DecryptDek)?;
                let k = Arc::new(k);
                lock(&self.cache).insert(
                    cache_key,
                    CachedKey {
                        key: k.clone(),
                        inserted: Instant::now(),
                    },
                );
                k
            }
        };
        let plaintext =
            envelope::v2_open_data(source_type, key.as_slice(), aad, &object.encrypted_data)?;
        let stale = object.key_id != state.object.key_id
            || object.encrypted_dek_source_type != state.object.encrypted_dek_source_type;
        Ok((plaintext, stale))
    }
}

#[cfg(test)]
mod tests;
