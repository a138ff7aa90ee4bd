//! One run's connections and observations: SSH to every controlplane (pre-flight checked), an etcd client
//! through an SSH tunnel, a Kubernetes API client, and what they show (config hashes, a census).

use super::options::GlobalOpts;
use crate::config::cluster::{ClusterConfig, Node};
use crate::exec::docker::NodeDocker;
use crate::exec::docker::{APISERVER, OLD_APISERVER};
use crate::exec::etcd::{Census, CensusOptions, Etcd, EtcdResource, EtcdTarget, EtcdTls};
use crate::exec::files;
use crate::exec::health::{HealthProbe, wait_ready};
use crate::exec::preflight::{connect_and_preflight, preflight};
use crate::exec::rewrite::{self, Target as RewriteTarget};
use crate::exec::ssh::{Host, SshOptions, connect_all};
use crate::exec::tunnel::Tunnel;
use crate::plan::NodeObservation;
use crate::state::RkeState;
use anyhow::{Context, anyhow};
use std::collections::BTreeMap;
use std::sync::Arc;
use zeroize::Zeroizing;

/// Where kube-apiserver keeps its objects in etcd (RKE does not change `--etcd-prefix`).
pub const ETCD_PREFIX: &str = "/registry";
/// etcd's client port on the etcd nodes.
const ETCD_CLIENT_PORT: u16 = 2379;
/// Nodes connected at once.
const MAX_PARALLEL: usize = 8;

/// What one controlplane looks like right now.
#[derive(Clone, Debug)]
pub struct NodeView {
    pub name: String,
    /// sha256 of `<prefix>/etc/kubernetes/ssl/encryption.yaml` (`None`: no file).
    pub config_sha256: Option<String>,
    pub has_flag: bool,
}

pub struct Session {
    pub global: GlobalOpts,
    pub cluster: ClusterConfig,
    /// Controlplanes, in the order of cluster.yml (the rolling-restart order).
    pub hosts: Vec<Arc<Host>>,
    etcd: Option<(Etcd, Tunnel)>,
    kube: Option<kube::Client>,
}

/// The name a node goes by in plans and progress lines: its address.
pub fn node_name(node: &Node) -> String {
    node.address.clone()
}

impl Session {
    /// Connects to every controlplane and runs the pre-flight checks (reachable, Docker answering, a
    /// kube-apiserver container, the prefix directory writable). Changes nothing.
    pub async fn connect(
        global: &GlobalOpts,
        cluster: &ClusterConfig,
        recover: bool,
    ) -> anyhow::Result<Session> {
        let controlplanes: Vec<Node> = cluster.controlplanes().into_iter().cloned().collect();
        if controlplanes.is_empty() {
            return Err(anyhow!(
                "{}: no node has the role controlplane",
                cluster.origin()
            ));
        }
        let dir = kubernetes_dir(cluster);
        let hosts = if recover {
            let hosts = connect_all(cluster, &controlplanes, &ssh_options(global), MAX_PARALLEL)
                .await
                .map_err(|e| anyhow!("{e}; nothing was changed"))?;
            for host in &hosts {
                recover_interrupted_recreate(host, &dir).await?;
            }
            preflight(&hosts, |_| dir.clone()).await?;
            hosts
        } else {
            connect_and_preflight(
                cluster,
                &controlplanes,
                &ssh_options(global),
                MAX_PARALLEL,
                &dir,
            )
            .await?
        };
        Ok(Session {
            global: global.clone(),
            cluster: cluster.clone(),
            hosts,
            etcd: None,
            kube: None,
        })
    }

    pub fn node_names(&self) -> Vec<String> {
        self.hosts.iter().map(|h| node_name(h.node())).collect()
    }

    pub fn config_path(&self) -> String {
        format!("{}/ssl/encryption.yaml", kubernetes_dir(&self.cluster))
    }

    pub fn kubernetes_dir(&self) -> String {
        kubernetes_dir(&self.cluster)
    }

    /// Per controlplane: the hash of its encryption config file and whether kube-apiserver has the flag.
    pub async fn observe_nodes(&self) -> anyhow::Result<Vec<NodeView>> {
        let path = self.config_path();
        let views = self.hosts.iter().map(|host| {
            let path = path.clone();
            async move {
                let sha = files::file_sha256(host, &path).await?;
                let docker = NodeDocker::new(host.clone())?;
                let info = docker.inspect_apiserver().await?;
                Ok::<_, anyhow::Error>(NodeView {
                    name: node_name(host.node()),
                    config_sha256: sha,
                    has_flag: info.has_encryption_flag,
                })
            }
        });
        futures::future::join_all(views).await.into_iter().collect()
    }

    /// The etcd client, connected on first use through a tunnel to the first etcd node, with the etcd client
    /// certificate RKE keeps in the state (`kube-node`, trusted through `kube-ca`).
    pub async fn etcd(&mut self, state: &RkeState) -> anyhow::Result<&Etcd> {
        if self.etcd.is_none() {
            let node = self
                .cluster
                .etcd_nodes()
                .into_iter()
                .next()
                .cloned()
                .ok_or_else(|| anyhow!("{}: no node has the role etcd", self.cluster.origin()))?;
            let host = match self.hosts.iter().find(|h| h.node().address == node.address) {
                Some(h) => h.clone(),
                None => connect_all(
                    &self.cluster,
                    std::slice::from_ref(&node),
                    &ssh_options(&self.global),
                    1,
                )
                .await?
                .remove(0),
            };
            let address = node
                .internal_address
                .clone()
                .filter(|a| !a.is_empty())
                .unwrap_or_else(|| node.address.clone());
            let cert = |name: &str| {
                state
                    .certificate(name)?
                    .ok_or_else(|| {
                        anyhow!(
                            "the state file has no `{name}` certificate in currentState.certificatesBundle \
                             (needed to reach etcd)"
                        )
                    })
            };
            let ca = cert("kube-ca")?;
            let client = cert("kube-node")?;
            let tunnel = Tunnel::open(host, &address, ETCD_CLIENT_PORT).await?;
            let target = EtcdTarget {
                endpoints: vec![format!("https://{}", tunnel.local_addr())],
                tls: Some(EtcdTls {
                    ca_pem: ca.cert_pem.into_bytes(),
                    cert_pem: client.cert_pem.into_bytes(),
                    key_pem: Zeroizing::new(client.key_pem.expose().as_bytes().to_vec()),
                    server_name: Some(address.clone()),
                }),
            };
            let etcd = Etcd::connect(&target)
                .await
                .with_context(|| format!("connecting to etcd on {address} through SSH"))?;
            self.etcd = Some((etcd, tunnel));
        }
        self.etcd
            .as_ref()
            .map(|(e, _)| e)
            .ok_or_else(|| anyhow!("etcd is not connected"))
    }

    /// The Kubernetes API client from the kubeconfig beside cluster.yml (or `--kubeconfig`).
    pub async fn kube(&mut self) -> anyhow::Result<&kube::Client> {
        if self.kube.is_none() {
            let path = self.global.kubeconfig_path();
            self.kube = Some(crate::exec::kube::client(&path).await?);
        }
        self.kube
            .as_ref()
            .ok_or_else(|| anyhow!("no Kubernetes client"))
    }

    /// Served resources matching config resource strings (`secrets`, `*.apps`, `*.*`). Named resources the API
    /// does not serve are reported as a warning (they cannot hold objects written through this API).
    pub async fn resolve(&mut self, resources: &[String]) -> anyhow::Result<Vec<RewriteTarget>> {
        let kube = self.kube().await?.clone();
        let resolution = rewrite::resolve(&kube, resources).await?;
        for u in resolution.unusable.iter().filter(|u| !u.from_wildcard) {
            tracing::warn!("{}: {}", u.resource, u.reason);
        }
        Ok(resolution.targets)
    }

    /// A census of etcd for the resources the given config resource strings cover.
    pub async fn census(
        &mut self,
        state: &RkeState,
        resources: &[String],
        write_label: Option<&str>,
    ) -> anyhow::Result<(Vec<RewriteTarget>, Census)> {
        let targets = self.resolve(resources).await?;
        let etcd_resources: Vec<EtcdResource> =
            targets.iter().map(|t| t.etcd(ETCD_PREFIX)).collect();
        let options = CensusOptions {
            key_names: known_key_names(state, write_label),
            ..CensusOptions::default()
        };
        let census = self
            .etcd(state)
            .await?
            .census(&etcd_resources, write_label, &options)
            .await?;
        Ok((targets, census))
    }

    pub async fn close(&self) {
        for h in &self.hosts {
            h.close().await;
        }
    }
}

/// Every key name stored data may name: the configs RKE's state and atrest's record hold (deployed, desired,
/// transition from/to), the archive, and the write key being checked. The census needs them whole because
/// names may contain `:`.
fn known_key_names(state: &RkeState, write_label: Option<&str>) -> Vec<String> {
    let mut texts: Vec<String> = Vec::new();
    texts.extend(state.current_encryption_config().map(str::to_string));
    texts.extend(state.desired_encryption_config().map(str::to_string));
    let mut names: Vec<String> = Vec::new();
    if let Ok(atrest) = state.atrest() {
        if let Some(t) = &atrest.transition {
            texts.extend(t.from.iter().chain(t.to.iter()).cloned());
        }
        names.extend(atrest.archive.iter().map(|k| k.name.clone()));
    }
    for text in &texts {
        if let Ok(config) = crate::config::encryption::parse(text, "cluster.rkestate") {
            for entry in &config.resources {
                for provider in &entry.providers {
                    if let Some((_, keys)) = provider.keyed() {
                        names.extend(keys.keys.iter().map(|k| k.name.clone()));
                    }
                    if let Some(kms) = &provider.kms {
                        names.push(kms.name.clone());
                    }
                }
            }
        }
    }
    if let Some(name) = write_label.and_then(|l| l.split_once(':')).map(|(_, n)| n) {
        names.push(name.to_string());
    }
    names.sort();
    names.dedup();
    names
}

pub fn ssh_options(global: &GlobalOpts) -> SshOptions {
    SshOptions {
        known_hosts: global.known_hosts.clone(),
        accept_new_host_keys: global.accept_new_host_keys,
        ..SshOptions::default()
    }
}

pub fn kubernetes_dir(cluster: &ClusterConfig) -> String {
    format!("{}/etc/kubernetes", cluster.prefix_path())
}

/// Census counts in the planner's form: resource → label → count.
pub fn census_counts(census: &Census) -> BTreeMap<String, BTreeMap<String, u64>> {
    census
        .resources
        .iter()
        .map(|(name, r)| (name.clone(), r.by_label.clone()))
        .collect()
}

pub fn observations(views: &[NodeView]) -> Vec<NodeObservation> {
    views
        .iter()
        .map(|v| NodeObservation {
            node: v.name.clone(),
            config_sha256: v.config_sha256.clone(),
        })
        .collect()
}

/// A run killed in the middle of recreating kube-apiserver leaves `old-kube-apiserver` behind (and maybe no
/// `kube-apiserver`). Finish or undo that recreate as the executor would have: keep the new container if it
/// becomes ready, else put the old one back.
async fn recover_interrupted_recreate(
    host: &Arc<Host>,
    kubernetes_dir: &str,
) -> anyhow::Result<()> {
    let docker = NodeDocker::new(host.clone())?;
    if docker.inspect(OLD_APISERVER).await?.is_none() {
        return Ok(());
    }
    tracing::warn!(
        "{}: found {OLD_APISERVER} from an interrupted recreate; finishing it",
        host.label()
    );
    let new_ready = match docker.inspect(APISERVER).await? {
        Some(info) if info.running => {
            let probe = HealthProbe::from_node_certs(host, kubernetes_dir).await?;
            wait_ready(host, &probe, std::time::Duration::from_secs(60))
                .await
                .is_ok()
        }
        _ => false,
    };
    if new_ready {
        docker.commit_recreate().await?;
        eprintln!(
            "{}: the new {APISERVER} from the interrupted run is ready; removed {OLD_APISERVER}",
            host.label()
        );
    } else {
        docker.rollback_recreate().await?;
        eprintln!(
            "{}: put back the previous {APISERVER} (the interrupted run had not finished replacing it)",
            host.label()
        );
    }
    Ok(())
}
