//! `kms` providers in the stand-in: the KMS v1/v2 envelope transformer of [`crate::kms`] behind its
//! `k8s:enc:kms:v{1,2}:<name>:` prefix, the KMSv1 feature gate, and the plugin health checks on `/healthz` and
//! `/readyz` (`encryptionconfig/config.go`: `kmsPluginProbe`, `kmsv2PluginProbe`, `kmsHealthChecker`).
//!
//! The plugin is reached at the endpoint path exactly as written in the config, so inside an RKE container the
//! socket is visible only through the container's bind mounts, as with the real kube-apiserver.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atrest::config::encryption::KmsConfiguration;

use super::transform::{BoxFuture, TransformError, Transformer};
use crate::kms::{KmsApiVersion, KmsProviderConfig, KmsTransformer};

/// `KMSv1` gate off (the default since 1.29): a v1 provider fails startup with this text (§1.6).
pub const KMSV1_DISABLED: &str = "KMSv1 is deprecated and will only receive security updates going forward. Use KMSv2 instead.  Set --feature-gates=KMSv1=true to use the deprecated KMSv1 feature.";

/// `kmsPluginHealthzPositiveTTL` / `kmsPluginHealthzNegativeTTL`.
const HEALTHY_TTL: Duration = Duration::from_secs(20);
const UNHEALTHY_TTL: Duration = Duration::from_secs(3);

/// Feature gates the stand-in honours (`--feature-gates`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// `KMSv1=true`
    pub kms_v1: bool,
}

/// The provider's settings after upstream's defaulting (`apiVersion` v1, timeout 3 s).
pub fn provider_config(k: &KmsConfiguration) -> Result<KmsProviderConfig, String> {
    let api_version = match k.api_version.as_deref() {
        None | Some("") | Some("v1") => KmsApiVersion::V1,
        Some("v2") => KmsApiVersion::V2,
        Some(other) => {
            return Err(format!(
                "could not configure KMS plugin {:?}, unsupported KMS API version {other:?}",
                k.name
            ));
        }
    };
    let timeout = atrest::exec::kms::timeout_of(k)?;
    Ok(KmsProviderConfig {
        name: k.name.clone(),
        endpoint: k.endpoint.clone(),
        api_version,
        cache_size: k.cachesize,
        timeout,
    })
}

/// One provider's transformer and health probe.
pub struct KmsProvider {
    transformer: Arc<KmsTransformer>,
    /// The last probe result and when it was taken (the probe caches for 20 s / 3 s as upstream).
    last: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl KmsProvider {
    /// Builds the provider; refuses v1 without the gate. Connects lazily: a missing plugin shows in health and
    /// in reads/writes, not at startup (as upstream, whose gRPC dial is non-blocking).
    pub fn new(k: &KmsConfiguration, features: Features) -> Result<Arc<Self>, String> {
        let config = provider_config(k)?;
        if config.api_version == KmsApiVersion::V1 && !features.kms_v1 {
            return Err(KMSV1_DISABLED.into());
        }
        let probe_kind = match config.api_version {
            KmsApiVersion::V1 => "KMSv1",
            KmsApiVersion::V2 => "KMSv2",
        };
        let transformer = KmsTransformer::new(&config).map_err(|e| {
            format!(
                "could not configure {probe_kind}-Plugin's probe {:?}, error: {e}",
                k.name
            )
        })?;
        Ok(Arc::new(Self {
            transformer: Arc::new(transformer),
            last: Mutex::new(None),
        }))
    }

    pub fn transformer(&self) -> &Arc<KmsTransformer> {
        &self.transformer
    }

    /// The prefix transformer entry for the chain (the list strips/adds the prefix itself).
    pub fn prefix_entry(self: &Arc<Self>) -> super::transform::PrefixTransformer {
        super::transform::PrefixTransformer {
            prefix: self.transformer.prefix().to_vec(),
            transformer: Arc::new(KmsBody(self.transformer.clone())),
        }
    }

    /// The probe, cached for 20 s after success and 3 s after failure.
    pub async fn check(&self) -> Result<(), String> {
        if let Some((at, result)) = self.last.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let ttl = if result.is_ok() {
                HEALTHY_TTL
            } else {
                UNHEALTHY_TTL
            };
            if at.elapsed() < ttl {
                return result.clone();
            }
        }
        let result = self.transformer.health().await.map_err(|e| e.to_string());
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), result.clone()));
        result
    }
}

/// [`KmsTransformer`] as a chain entry: it sees the bytes after its prefix; the context is the etcd key.
struct KmsBody(Arc<KmsTransformer>);

impl Transformer for KmsBody {
    fn transform_from_storage<'a>(
        &'a self,
        data: &'a [u8],
        ctx: &'a [u8],
    ) -> BoxFuture<'a, Result<(Vec<u8>, bool), TransformError>> {
        Box::pin(async move {
            let key = String::from_utf8_lossy(ctx);
            self.0
                .decrypt_body(data, &key)
                .await
                .map_err(|e| TransformError::new(e.to_string()))
        })
    }

    fn transform_to_storage<'a>(
        &'a self,
        data: &'a [u8],
        ctx: &'a [u8],
    ) -> BoxFuture<'a, Result<Vec<u8>, TransformError>> {
        Box::pin(async move {
            let key = String::from_utf8_lossy(ctx);
            self.0
                .encrypt_body(data, &key)
                .await
                .map_err(|e| TransformError::new(e.to_string()))
        })
    }
}

/// The KMS health checks registered on `/healthz` and `/readyz`: one `kms-provider-<i>` per provider when a v1
/// provider is configured, else (only v2) the single aggregate `kms-providers`.
#[derive(Default)]
pub struct KmsChecks {
    providers: Vec<Arc<KmsProvider>>,
}

impl KmsChecks {
    pub fn new(providers: Vec<Arc<KmsProvider>>) -> Self {
        Self { providers }
    }

    pub fn providers(&self) -> &[Arc<KmsProvider>] {
        &self.providers
    }

    fn aggregate(&self) -> bool {
        self.providers
            .iter()
            .all(|p| p.transformer.api_version() == KmsApiVersion::V2)
    }

    /// Check names in registration order.
    pub fn names(&self) -> Vec<String> {
        if self.providers.is_empty() {
            Vec::new()
        } else if self.aggregate() {
            vec!["kms-providers".into()]
        } else {
            (0..self.providers.len())
                .map(|i| format!("kms-provider-{i}"))
                .collect()
        }
    }

    /// Runs the named check; `None` when no such check is registered.
    pub async fn run(&self, name: &str) -> Option<Result<(), String>> {
        if self.providers.is_empty() {
            return None;
        }
        if self.aggregate() {
            if name != "kms-providers" {
                return None;
            }
            let mut errs = Vec::new();
            for p in &self.providers {
                if let Err(e) = p.check().await {
                    errs.push(e);
                }
            }
            return Some(match errs.len() {
                0 => Ok(()),
                1 => Err(errs.remove(0)),
                _ => Err(format!("[{}]", errs.join(", "))),
            });
        }
        let i: usize = name.strip_prefix("kms-provider-")?.parse().ok()?;
        Some(self.providers.get(i)?.check().await)
    }

    /// Starts the KMS v2 Status pollers (seed rotation on a new key id), as upstream does at startup.
    pub fn spawn_pollers(&self) -> Vec<tokio::task::JoinHandle<()>> {
        self.providers
            .iter()
            .filter(|p| p.transformer.api_version() == KmsApiVersion::V2)
            .map(|p| p.transformer.spawn_status_poller())
            .collect()
    }
}
