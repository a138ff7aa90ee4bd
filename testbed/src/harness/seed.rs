//! Seeding: many Secrets and ConfigMaps written through the apiserver (keep-alive HTTPS, ~32 in flight), with
//! content derived from each object's name so [`verify`] can check every byte read back.

use std::path::Path;

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use sha2::{Digest, Sha256};

pub const NAMESPACES: usize = 4;
pub const LABEL: &str = "atrest-testbed/seed";
const CONCURRENCY: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedSpec {
    pub secrets: usize,
    pub configmaps: usize,
    /// Payload bytes per object.
    pub size_bytes: usize,
}

impl Default for SeedSpec {
    fn default() -> Self {
        SeedSpec {
            secrets: 1000,
            configmaps: 0,
            size_bytes: 2048,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeedReport {
    pub secrets: usize,
    pub configmaps: usize,
}

pub fn namespace_of(i: usize) -> String {
    format!("seed-{}", i % NAMESPACES)
}

/// Deterministic printable payload for `name`: hex of a SHA-256 chain, `size` bytes long.
pub fn payload(name: &str, size: usize) -> String {
    let mut out = String::with_capacity(size + 64);
    let mut block = Sha256::digest(name.as_bytes());
    while out.len() < size {
        out.push_str(&hex::encode(block));
        block = Sha256::digest(block);
    }
    out.truncate(size);
    out
}

pub fn checksum(payload: &str) -> String {
    hex::encode(Sha256::digest(payload.as_bytes()))
}

fn meta(name: &str, ns: &str, size: usize) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(ns.into()),
        labels: Some([(LABEL.to_string(), "true".to_string())].into()),
        annotations: Some([("atrest-testbed/size".to_string(), size.to_string())].into()),
        ..Default::default()
    }
}

pub async fn client(kubeconfig: &Path) -> Result<Client> {
    client_through(kubeconfig, None).await
}

/// [`client`], talking to `server` (a URL) instead of the kubeconfig's own server.
pub async fn client_through(kubeconfig: &Path, server: Option<String>) -> Result<Client> {
    let mut kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading kubeconfig {}", kubeconfig.display()))?;
    if let Some(server) = server {
        for named in &mut kc.clusters {
            if let Some(cluster) = named.cluster.as_mut() {
                cluster.server = Some(server.clone());
            }
        }
    }
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading kubeconfig {}", kubeconfig.display()))?;
    Client::try_from(cfg).context("building the Kubernetes client")
}

fn already_exists(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// Errors a loaded test bed gives now and then and that a second try clears: etcd's "request timed out" (500),
/// a throttled or unavailable server (429, 503) and a dropped connection.
fn transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code == 429 || s.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// Waits before the next try of a create that failed transiently: 1, 2, 4, 8, 16 s, then no more tries.
const CREATE_BACKOFF_SECS: [u64; 5] = [1, 2, 4, 8, 16];

/// Creates one object, trying again after transient errors. An object that already exists counts as created:
/// a create whose answer was lost may have been stored, and seeding is idempotent anyway.
async fn create_retrying<K>(api: &Api<K>, object: &K) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut waits = CREATE_BACKOFF_SECS.iter();
    loop {
        match api.create(&PostParams::default(), object).await {
            Ok(_) => return Ok(()),
            Err(e) if already_exists(&e) => return Ok(()),
            Err(e) if transient(&e) => match waits.next() {
                Some(secs) => tokio::time::sleep(std::time::Duration::from_secs(*secs)).await,
                None => return Err(e),
            },
            Err(e) => return Err(e),
        }
    }
}

/// Creates the namespaces and objects; objects that already exist are left alone (re-seeding is idempotent).
pub async fn seed(client: &Client, spec: SeedSpec) -> Result<SeedReport> {
    let nss: Api<Namespace> = Api::all(client.clone());
    for k in 0..NAMESPACES.min(spec.secrets.max(spec.configmaps)) {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(namespace_of(k)),
                ..Default::default()
            },
            ..Default::default()
        };
        create_retrying(&nss, &ns)
            .await
            .with_context(|| format!("creating namespace {}", namespace_of(k)))?;
    }
    let size = spec.size_bytes;
    let secrets = stream::iter(0..spec.secrets)
        .map(|i| {
            let client = client.clone();
            async move {
                let (name, ns) = (format!("seed-secret-{i:06}"), namespace_of(i));
                let p = payload(&name, size);
                let s = Secret {
                    metadata: meta(&name, &ns, size),
                    data: Some(
                        [
                            (
                                "checksum".to_string(),
                                ByteString(checksum(&p).into_bytes()),
                            ),
                            ("payload".to_string(), ByteString(p.into_bytes())),
                        ]
                        .into(),
                    ),
                    type_: Some("Opaque".into()),
                    ..Default::default()
                };
                create_retrying(&Api::<Secret>::namespaced(client, &ns), &s)
                    .await
                    .with_context(|| format!("creating secret {ns}/{name}"))
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>();
    secrets.await?;
    let cms = stream::iter(0..spec.configmaps)
        .map(|i| {
            let client = client.clone();
            async move {
                let (name, ns) = (format!("seed-configmap-{i:06}"), namespace_of(i));
                let p = payload(&name, size);
                let cm = ConfigMap {
                    metadata: meta(&name, &ns, size),
                    data: Some(
                        [
                            ("checksum".to_string(), checksum(&p)),
                            ("payload".to_string(), p),
                        ]
                        .into(),
                    ),
                    ..Default::default()
                };
                create_retrying(&Api::<ConfigMap>::namespaced(client, &ns), &cm)
                    .await
                    .with_context(|| format!("creating configmap {ns}/{name}"))
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>();
    cms.await?;
    Ok(SeedReport {
        secrets: spec.secrets,
        configmaps: spec.configmaps,
    })
}

/// The payload size recorded at seeding time (an earlier seed may have used another size).
fn seeded_size(meta: &ObjectMeta, default: usize) -> usize {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get("atrest-testbed/size"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn check(
    kind: &str,
    ns: &str,
    name: &str,
    size: usize,
    payload_got: &[u8],
    checksum_got: &[u8],
) -> Result<()> {
    let want = payload(name, size);
    if payload_got != want.as_bytes() {
        bail!(
            "{kind} {ns}/{name}: payload differs from what was seeded ({} bytes read)",
            payload_got.len()
        );
    }
    if checksum_got != checksum(&want).as_bytes() {
        bail!("{kind} {ns}/{name}: checksum differs from what was seeded");
    }
    Ok(())
}

/// Reads every seeded object back (list per namespace) and checks its content; returns how many were found.
/// Fails on any object whose content differs, and when fewer objects than `spec` asks for are found.
pub async fn verify(client: &Client, spec: SeedSpec) -> Result<SeedReport> {
    let lp = ListParams::default().labels(&format!("{LABEL}=true"));
    let mut report = SeedReport::default();
    for k in 0..NAMESPACES {
        let ns = namespace_of(k);
        let secrets = Api::<Secret>::namespaced(client.clone(), &ns)
            .list(&lp)
            .await
            .with_context(|| format!("listing secrets in {ns}"))?;
        for s in secrets.items {
            let name = s.metadata.name.clone().unwrap_or_default();
            let size = seeded_size(&s.metadata, spec.size_bytes);
            let data = s.data.unwrap_or_default();
            let get = |k: &str| data.get(k).map(|b| b.0.clone()).unwrap_or_default();
            check(
                "secret",
                &ns,
                &name,
                size,
                &get("payload"),
                &get("checksum"),
            )?;
            report.secrets += 1;
        }
        let cms = Api::<ConfigMap>::namespaced(client.clone(), &ns)
            .list(&lp)
            .await
            .with_context(|| format!("listing configmaps in {ns}"))?;
        for c in cms.items {
            let name = c.metadata.name.clone().unwrap_or_default();
            let size = seeded_size(&c.metadata, spec.size_bytes);
            let data = c.data.unwrap_or_default();
            let get = |k: &str| data.get(k).cloned().unwrap_or_default().into_bytes();
            check(
                "configmap",
                &ns,
                &name,
                size,
                &get("payload"),
                &get("checksum"),
            )?;
            report.configmaps += 1;
        }
    }
    if report.secrets < spec.secrets || report.configmaps < spec.configmaps {
        bail!(
            "found {} secrets and {} configmaps, seeded {} and {}",
            report.secrets,
            report.configmaps,
            spec.secrets,
            spec.configmaps
        );
    }
    Ok(report)
}

/// Runs `fut` on a private runtime in its own thread, so blocking callers and async tests can both use it.
pub fn block_on<T: Send>(fut: impl std::future::Future<Output = Result<T>> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("building a tokio runtime")?
                .block_on(fut)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("seed thread panicked"))?
    })
}

impl super::Testbed {
    /// Seeds `secrets` Secrets and `configmaps` ConfigMaps of `size_bytes` payload each through the API.
    pub fn seed(&self, secrets: usize, configmaps: usize, size_bytes: usize) -> Result<SeedReport> {
        let kc = self.kubeconfig();
        block_on(async move {
            seed(
                &client(&kc).await?,
                SeedSpec {
                    secrets,
                    configmaps,
                    size_bytes,
                },
            )
            .await
        })
    }

    /// [`Testbed::verify_seed`] through node `n`'s kube-apiserver (another node's may be down).
    pub fn verify_seed_through(
        &self,
        n: &super::Node,
        secrets: usize,
        configmaps: usize,
        size_bytes: usize,
    ) -> Result<SeedReport> {
        let kc = self.kubeconfig();
        let server = self.apiserver_url(n);
        block_on(async move {
            verify(
                &client_through(&kc, Some(server)).await?,
                SeedSpec {
                    secrets,
                    configmaps,
                    size_bytes,
                },
            )
            .await
        })
    }

    /// Reads back what [`Testbed::seed`] wrote and checks every object.
    pub fn verify_seed(
        &self,
        secrets: usize,
        configmaps: usize,
        size_bytes: usize,
    ) -> Result<SeedReport> {
        let kc = self.kubeconfig();
        block_on(async move {
            verify(
                &client(&kc).await?,
                SeedSpec {
                    secrets,
                    configmaps,
                    size_bytes,
                },
            )
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_deterministic_sized_and_name_specific() {
        let a = payload("seed-secret-000001", 2048);
        assert_eq!(a.len(), 2048);
        assert_eq!(a, payload("seed-secret-000001", 2048));
        assert_ne!(a, payload("seed-secret-000002", 2048));
        assert_eq!(payload("x", 10), payload("x", 100)[..10]);
        assert_eq!(checksum(&a).len(), 64);
    }

    #[test]
    fn objects_spread_over_the_namespaces() {
        let nss: std::collections::BTreeSet<String> = (0..8).map(namespace_of).collect();
        assert_eq!(nss.len(), NAMESPACES);
    }

    fn api_error(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure(message, "")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn a_timed_out_etcd_request_is_tried_again_and_a_refused_object_is_not() {
        assert!(transient(&api_error(500, "etcdserver: request timed out")));
        assert!(transient(&api_error(429, "too many requests")));
        assert!(transient(&api_error(503, "unavailable")));
        assert!(!transient(&api_error(422, "invalid")));
        assert!(!transient(&api_error(403, "forbidden")));
        assert!(already_exists(&api_error(409, "exists")));
    }
}
