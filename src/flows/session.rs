//! One run's connections and observations: SSH to every controlplane (pre-flight checked), an etcd client
//! through an SSH tunnel, a Kubernetes API client, and what they show (config hashes, a census).

use super::options::{GlobalOpts, RewriteServers};
use crate::config::cluster::{ClusterConfig, Node};
use crate::exec::cluster_lock::{ClusterLock, LockOwner, lock_key};
use crate::exec::docker::{APISERVER, OLD_APISERVER};
use crate::exec::docker::{Leftover, NodeDocker};
use crate::exec::etcd::{Census, CensusOptions, Etcd, EtcdResource, EtcdTarget, EtcdTls};
use crate::exec::files;
use crate::exec::health::{HealthProbe, wait_ready};
use crate::exec::kube as kube_client;
use crate::exec::prefix;
use crate::exec::preflight::preflight_with;
use crate::exec::rewrite::{self, Target as RewriteTarget};
use crate::exec::ssh::{Host, SshOptions, connect_all};
use crate::exec::tunnel::Tunnel;
use crate::plan::NodeObservation;
use crate::state::RkeState;
use crate::state::atrest::AtrestState;
use crate::state::records::RecordsFile;
use anyhow::{Context, anyhow, bail};
use std::collections::BTreeMap;
use std::sync::Arc;
use zeroize::Zeroizing;

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
    /// kube-apiserver runs with `--encryption-provider-config-automatic-reload` on.
    pub reload: bool,
    /// Why the node could not be observed whole (its file or its kube-apiserver container could not be read,
    /// e.g. no container while another run recreates it); the fields above are then not facts.
    pub unobserved: Option<String>,
}

pub struct Session {
    pub global: GlobalOpts,
    pub cluster: ClusterConfig,
    /// Controlplanes, in the order of cluster.yml (the rolling-restart order).
    pub hosts: Vec<Arc<Host>>,
    /// RKE's prefix on each controlplane, by address (see [`crate::exec::prefix`]).
    prefixes: BTreeMap<String, String>,
    etcd: Option<(Etcd, Tunnel)>,
    kube: Option<ApiConnection>,
    /// The other controlplanes' API servers that answered, once a rewrite asked for them ([`Session::api_servers`]).
    other_apis: Option<Vec<ApiConnection>>,
    /// Why no API server answered, once that is known (so later calls do not probe every server again).
    kube_unreachable: Option<String>,
    /// atrest's records as the run last saved them: the census needs the archived and in-transition key names.
    pub records: AtrestState,
    /// sha256 of each controlplane's config file (by node name) as this run last saw or wrote it: a file found
    /// otherwise just before a write was changed by someone else, and is not overwritten.
    pub files_seen: BTreeMap<String, Option<String>>,
    /// What interrupted recreates left, by node address (nodes with a leftover only): a changing run settles them
    /// first, once confirmed ([`Session::recover_leftovers`]); a plan shows them.
    leftovers: BTreeMap<String, Leftover>,
    /// The cluster-wide lock, once a changing run took it ([`Session::lock_cluster`]); released by `close`.
    cluster_lock: std::sync::Mutex<Option<ClusterLock>>,
}

/// Why no API server could be used ([`Session::try_reach_api`]).
struct Unreached {
    /// One of them answered, not ready: worth waiting for.
    answered: bool,
    why: String,
}

/// What a run does with the cluster, which decides what [`Session::connect`] checks first.
pub enum Access<'a> {
    /// Changes it: the cluster lock is taken, another tool's half-done recreate refused, every node pre-flight
    /// checked; atrest's own leftovers wait for [`Session::recover_leftovers`] (after the operator confirms).
    Change(LockRequest<'a>),
    /// Plans a change: every node pre-flight checked, as the change would be.
    Plan,
    /// Only reads (status, verify): no pre-flight, since an operator asks exactly when a node is half-way
    /// through a change or down; what cannot be read is reported, not fatal.
    Observe,
}

/// A changing run's request for the cluster lock ([`Session::connect`]).
pub struct LockRequest<'a> {
    pub state: &'a RkeState,
    /// The state file the run works from: with the host, it tells a rerun of the same checkout from another run.
    pub state_path: &'a std::path::Path,
    /// The verb, named to whoever finds the lock held.
    pub command: &'a str,
}

/// The API server this run talks to: the kubeconfig's, or another controlplane's through an SSH tunnel (kept
/// open as long as the client is used).
struct ApiConnection {
    client: kube::Client,
    _tunnel: Option<Tunnel>,
    /// For messages: the kubeconfig's server, or the node whose server this is.
    name: String,
    /// The host this server runs on (the kubeconfig's server host, or the node's address).
    host: String,
}

/// The port RKE's kube-apiserver serves on, on every controlplane (`--secure-port=6443`).
const APISERVER_PORT: u16 = 6443;

/// The name a node goes by in plans and progress lines: its address.
pub fn node_name(node: &Node) -> String {
    node.address.clone()
}

impl Session {
    /// Connects to every controlplane and, unless `access` only observes, finds what interrupted recreates
    /// left and runs the pre-flight checks (reachable, Docker answering, a kube-apiserver container, the prefix
    /// directory writable). A run that will change the cluster takes the cluster lock first. Changes nothing.
    pub async fn connect(
        global: &GlobalOpts,
        cluster: &ClusterConfig,
        access: Access<'_>,
    ) -> anyhow::Result<Session> {
        let controlplanes: Vec<Node> = cluster.controlplanes().into_iter().cloned().collect();
        if controlplanes.is_empty() {
            return Err(anyhow!(
                "{}: no node has the role controlplane",
                cluster.origin()
            ));
        }
        let hosts = connect_all(cluster, &controlplanes, &ssh_options(global), MAX_PARALLEL)
            .await
            .map_err(|e| anyhow!("{e}; nothing was changed"))?;
        // RKE's per-host prefix (from the OS Docker reports) when cluster.yml leaves it unset.
        let prefixes = prefix::detect(&hosts, cluster.prefix_path.as_deref()).await;
        let mut session = Session {
            global: global.clone(),
            cluster: cluster.clone(),
            hosts,
            prefixes,
            etcd: None,
            kube: None,
            other_apis: None,
            kube_unreachable: None,
            records: AtrestState::default(),
            cluster_lock: std::sync::Mutex::new(None),
            files_seen: BTreeMap::new(),
            leftovers: BTreeMap::new(),
        };
        if let Err(e) = session.prepare(access).await {
            session.close().await;
            return Err(e);
        }
        Ok(session)
    }

    /// The lock (for a changing run), what interrupted recreates left, then the pre-flight checks. Another
    /// tool's half-done recreate stops a changing run here, with nothing changed.
    async fn prepare(&mut self, access: Access<'_>) -> anyhow::Result<()> {
        let changing = match access {
            Access::Observe => return Ok(()),
            Access::Plan => false,
            Access::Change(request) => {
                self.lock_cluster(request.state, request.state_path, request.command)
                    .await?;
                true
            }
        };
        for host in &self.hosts {
            let leftover = find_leftover(host).await?;
            if leftover != Leftover::Nothing {
                self.leftovers.insert(host.node().address.clone(), leftover);
            }
        }
        if changing {
            for host in &self.hosts {
                if self.leftover(host) == Some(&Leftover::NotOurs) {
                    bail!(
                        "{}",
                        Leftover::NotOurs
                            .describe(&host.label().to_string())
                            .unwrap_or_default()
                    );
                }
            }
        }
        self.preflight().await
    }

    fn leftover(&self, host: &Host) -> Option<&Leftover> {
        self.leftovers.get(&host.node().address)
    }

    /// The pre-flight checks; a node whose old container is to be put back needs no `kube-apiserver` yet.
    async fn preflight(&self) -> anyhow::Result<()> {
        preflight_with(
            &self.hosts,
            |h| self.kubernetes_dir(h),
            |h| self.leftover(h) != Some(&Leftover::PutBackOld),
        )
        .await?;
        Ok(())
    }

    /// Takes `records` as [`Session::records`], the one copy a run keeps and changes.
    pub fn adopt_records(&mut self, records: AtrestState) {
        self.records = records;
    }

    /// Whether an interrupted recreate on `node` was undone by putting the previous container back, in this run
    /// or an earlier one ([`AtrestState::put_back`]): the interrupted change is still to be made there, and until
    /// it is that container may not start (see [`crate::exec::restart::RolloutTarget::resumes_interrupted`]).
    pub fn was_put_back(&self, node: &str) -> bool {
        self.records.put_back.iter().any(|name| name == node)
    }

    /// What interrupted recreates left and what settling them does, one line per node (cluster.yml order).
    pub fn leftover_notes(&self) -> Vec<String> {
        self.hosts
            .iter()
            .filter_map(|h| self.leftover(h)?.describe(&h.label().to_string()))
            .collect()
    }

    /// Settles every leftover as the interrupted run would have (the operator confirmed), then checks every node
    /// again: from here on each has its `kube-apiserver`. The nodes whose old container may be put back are
    /// recorded in `records_file` first ([`AtrestState::put_back`]): this run may be killed before it changes
    /// them again, and the next one must know. A node whose new container the recovery kept has its change and
    /// is dropped from that list again.
    pub async fn recover_leftovers(&mut self, records_file: &RecordsFile) -> anyhow::Result<()> {
        let recovering: Vec<String> = self
            .hosts
            .iter()
            .filter(|h| {
                matches!(
                    self.leftover(h),
                    Some(Leftover::PutBackOld | Leftover::FinishOurs)
                )
            })
            .map(|h| node_name(h.node()))
            .collect();
        let mut marked = self.records.put_back.clone();
        for name in recovering {
            if !marked.contains(&name) {
                marked.push(name);
            }
        }
        self.save_put_back(records_file, marked)?;
        let mut kept_new = Vec::new();
        for host in &self.hosts {
            if let Some(leftover) = self.leftover(host)
                && !recover_interrupted_recreate(host, &self.kubernetes_dir(host), leftover).await?
            {
                kept_new.push(node_name(host.node()));
            }
        }
        let mut marked = self.records.put_back.clone();
        marked.retain(|name| !kept_new.contains(name));
        self.save_put_back(records_file, marked)?;
        self.leftovers.clear();
        self.preflight().await
    }

    /// Records `put_back` as the nodes whose container was put back, saving the records if that changes them.
    fn save_put_back(
        &mut self,
        records_file: &RecordsFile,
        put_back: Vec<String>,
    ) -> anyhow::Result<()> {
        if put_back == self.records.put_back {
            return Ok(());
        }
        self.records.put_back = put_back;
        records_file
            .save(&self.records)
            .with_context(|| format!("saving progress to {}", records_file.path().display()))
    }

    pub fn node_names(&self) -> Vec<String> {
        self.hosts.iter().map(|h| node_name(h.node())).collect()
    }

    /// The host path of `/etc/kubernetes` on `host` (RKE's prefix applied).
    pub fn kubernetes_dir(&self, host: &Host) -> String {
        kubernetes_dir_in(
            self.prefixes
                .get(&host.node().address)
                .map_or("", String::as_str),
        )
    }

    /// The host path of the encryption config on `host`: RKE's `/etc/kubernetes/ssl/encryption.yaml`, or where
    /// `extra_args.encryption-provider-config` points, through kube-apiserver's binds.
    pub fn config_path(&self, host: &Host) -> anyhow::Result<String> {
        self.cluster
            .encryption_config_host_path(&self.kubernetes_dir(host))
            .map_err(|why| {
                anyhow!("services.kube-api.extra_args.encryption-provider-config: {why}")
            })
    }

    /// Where kube-apiserver keeps its objects in etcd (`--etcd-prefix` as RKE builds it).
    pub fn etcd_prefix(&self) -> String {
        self.cluster.etcd_prefix()
    }

    /// Takes the cluster-wide lock in etcd ([`crate::exec::cluster_lock`]) for a run that changes the cluster,
    /// from the state file at `state_path`; refuses, naming the holder, while another run has it.
    async fn lock_cluster(
        &mut self,
        state: &RkeState,
        state_path: &std::path::Path,
        command: &str,
    ) -> anyhow::Result<()> {
        let key = lock_key(&self.etcd_prefix());
        let me = LockOwner::this_run(state_path, command, super::execute::now());
        let client = self
            .etcd(state)
            .await
            .context("reaching etcd for the cluster lock; nothing was changed")?
            .client()
            .clone();
        let lock = ClusterLock::acquire(&client, &key, &me).await?;
        *self
            .cluster_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(lock);
        Ok(())
    }

    /// Who holds the cluster lock now (for `status`); reads only.
    pub async fn cluster_lock_holder(
        &mut self,
        state: &RkeState,
    ) -> anyhow::Result<Option<crate::exec::cluster_lock::LockView>> {
        let key = lock_key(&self.etcd_prefix());
        let client = self.etcd(state).await?.client().clone();
        Ok(crate::exec::cluster_lock::inspect(&client, &key).await?)
    }

    /// The run held the cluster lock and could not renew it for a whole lease: it must stop at the next safe
    /// point, since another run may have taken the lock meanwhile.
    pub fn cluster_lock_lost(&self) -> bool {
        self.cluster_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .is_some_and(ClusterLock::is_lost)
    }

    /// Per controlplane: the hash of its encryption config file and whether kube-apiserver has the flag. The
    /// hashes become [`Session::files_seen`]. Fails when any node could not be observed whole.
    pub async fn observe_nodes(&mut self) -> anyhow::Result<Vec<NodeView>> {
        let views = self.observe_each_node().await;
        let unobserved = unobserved(&views);
        if !unobserved.is_empty() {
            bail!("{}", unobserved.join("; "));
        }
        Ok(views)
    }

    /// [`Session::observe_nodes`] for a run that only reads: a node that cannot be observed whole is marked
    /// ([`NodeView::unobserved`]), not fatal.
    pub async fn observe_each_node(&mut self) -> Vec<NodeView> {
        let this: &Session = self;
        let views = this.hosts.iter().map(|host| async move {
            let name = node_name(host.node());
            match this.observe_node(host).await {
                Ok(view) => view,
                Err(e) => NodeView {
                    name,
                    config_sha256: None,
                    has_flag: false,
                    reload: false,
                    unobserved: Some(format!("{e:#}")),
                },
            }
        });
        let views: Vec<NodeView> = futures::future::join_all(views).await;
        self.files_seen = views
            .iter()
            .filter(|v| v.unobserved.is_none())
            .map(|v| (v.name.clone(), v.config_sha256.clone()))
            .collect();
        views
    }

    async fn observe_node(&self, host: &Arc<Host>) -> anyhow::Result<NodeView> {
        let path = self.config_path(host)?;
        let sha = files::file_sha256(host, &path).await?;
        let docker = NodeDocker::new(host.clone())?;
        // A container to be put back is what the node will run.
        let name = match self.leftover(host) {
            Some(Leftover::PutBackOld) => OLD_APISERVER,
            _ => APISERVER,
        };
        let info = docker.inspect(name).await?.ok_or_else(|| {
            anyhow!(
                "no {APISERVER} container (another run may be recreating it: see `docker ps -a` on the node)"
            )
        })?;
        Ok(NodeView {
            name: node_name(host.node()),
            config_sha256: sha,
            has_flag: info.has_encryption_flag,
            reload: info.has_reload_flag,
            unobserved: None,
        })
    }

    /// The etcd client, connected on first use through a tunnel to the first etcd node, with the etcd client
    /// certificate RKE keeps in the state (`kube-node`, trusted through `kube-ca`).
    pub async fn etcd(&mut self, state: &RkeState) -> anyhow::Result<&Etcd> {
        if self.etcd.is_none() {
            let endpoint = if self.cluster.external_etcd() {
                self.external_etcd(state)?
            } else {
                self.rke_etcd(state).await?
            };
            let EtcdEndpoint {
                host,
                address,
                port,
                tls,
            } = endpoint;
            let tunnel = Tunnel::open(host, &address, port).await?;
            let scheme = if tls.is_some() { "https" } else { "http" };
            let target = EtcdTarget {
                endpoints: vec![format!("{scheme}://{}", tunnel.local_addr())],
                tls,
            };
            let etcd = Etcd::connect(&target)
                .await
                .with_context(|| format!("connecting to etcd on {address}:{port} through SSH"))?;
            self.etcd = Some((etcd, tunnel));
        }
        self.etcd
            .as_ref()
            .map(|(e, _)| e)
            .ok_or_else(|| anyhow!("etcd is not connected"))
    }

    /// External etcd (RKE's services.etcd.external_urls): reached from the first controlplane, as kube-apiserver
    /// reaches it, with the external client certificate (RKE keeps it in the state as kube-etcd-client /
    /// kube-etcd-client-ca; else cluster.yml's ca_cert/cert/key).
    fn external_etcd(&self, state: &RkeState) -> anyhow::Result<EtcdEndpoint> {
        let url = &self.cluster.services.etcd.external_urls[0];
        let (address, port, https) =
            external_endpoint(url).map_err(|why| anyhow!("services.etcd.external_urls: {why}"))?;
        let host = self
            .hosts
            .first()
            .cloned()
            .ok_or_else(|| anyhow!("no controlplane is connected"))?;
        let etcd = &self.cluster.services.etcd;
        let tls = match (
            state.certificate("kube-etcd-client")?,
            state.certificate("kube-etcd-client-ca")?,
        ) {
            (Some(client), Some(ca)) => Some(EtcdTls {
                ca_pem: ca.cert_pem.into_bytes(),
                cert_pem: client.cert_pem.into_bytes(),
                key_pem: Zeroizing::new(client.key_pem.expose().as_bytes().to_vec()),
                server_name: Some(address.clone()),
            }),
            _ => match (&etcd.ca_cert, &etcd.cert, &etcd.key) {
                (Some(ca), Some(cert), Some(key)) => Some(EtcdTls {
                    ca_pem: ca.clone().into_bytes(),
                    cert_pem: cert.clone().into_bytes(),
                    key_pem: Zeroizing::new(key.expose().as_bytes().to_vec()),
                    server_name: Some(address.clone()),
                }),
                _ => None,
            },
        };
        if https && tls.is_none() {
            bail!(
                "external etcd {url}: no client certificate (neither kube-etcd-client in the state nor \
                 services.etcd.ca_cert/cert/key in cluster.yml)"
            );
        }
        Ok(EtcdEndpoint {
            host,
            address,
            port,
            tls,
        })
    }

    /// The cluster's own etcd: the first node with the etcd role (connected now if it is no controlplane), with
    /// RKE's `kube-node` client certificate, trusted through `kube-ca`.
    async fn rke_etcd(&self, state: &RkeState) -> anyhow::Result<EtcdEndpoint> {
        let cert = |name: &str| {
            state.certificate(name)?.ok_or_else(|| {
                anyhow!(
                    "the state file has no `{name}` certificate in currentState.certificatesBundle (needed to \
                     reach etcd)"
                )
            })
        };
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
        let address = node_internal_address(&node);
        let ca = cert("kube-ca")?;
        let client = cert("kube-node")?;
        let tls = Some(EtcdTls {
            ca_pem: ca.cert_pem.into_bytes(),
            cert_pem: client.cert_pem.into_bytes(),
            key_pem: Zeroizing::new(client.key_pem.expose().as_bytes().to_vec()),
            server_name: Some(address.clone()),
        });
        Ok(EtcdEndpoint {
            host,
            address,
            port: ETCD_CLIENT_PORT,
            tls,
        })
    }

    /// The Kubernetes API client from the kubeconfig beside cluster.yml (or `--kubeconfig`), talking to the
    /// kubeconfig's server if it is ready, else to the first other controlplane's server that is (through an
    /// SSH tunnel, same credentials and certificate checks). Says which one when it is not the kubeconfig's.
    pub async fn kube(&mut self) -> anyhow::Result<&kube::Client> {
        if let Some(why) = &self.kube_unreachable {
            return Err(anyhow!("{why}"));
        }
        if self.kube.is_none() {
            match self.reach_api().await {
                Ok(connection) => self.kube = Some(connection),
                Err(e) => {
                    self.kube_unreachable = Some(format!("{e:#}"));
                    return Err(e);
                }
            }
        }
        self.kube
            .as_ref()
            .map(|c| &c.client)
            .ok_or_else(|| anyhow!("no Kubernetes client"))
    }

    /// Drops the API server in use (it stopped answering), so the next [`Session::kube`] probes them again.
    pub fn forget_api(&mut self) {
        self.kube = None;
        self.other_apis = None;
        self.kube_unreachable = None;
    }

    /// Every controlplane's API server that answers, for a rewrite to spread its writes over: the one
    /// [`Session::kube`] uses first, then the other controlplanes' through SSH tunnels (same credentials and
    /// certificate checks). One that does not answer is left out: the rewrite has fewer servers, nothing else.
    /// With `--rewrite-servers one`, only the first.
    pub async fn api_servers(&mut self) -> anyhow::Result<Arc<rewrite::Servers>> {
        self.kube().await?;
        let Some(first) = &self.kube else {
            bail!("no Kubernetes client");
        };
        let (first_server, first_host) = (server_of(first), first.host.clone());
        if self.global.rewrite_servers == RewriteServers::One {
            return Ok(Arc::new(rewrite::Servers::new(first_server, Vec::new())));
        }
        if self.other_apis.is_none() {
            let kubeconfig_host = kube_client::server_url(&self.global.kubeconfig_path())
                .await?
                .host()
                .unwrap_or_default()
                .to_string();
            let others = self
                .hosts
                .iter()
                .filter(|host| {
                    let node = host.node();
                    let address = node_internal_address(node);
                    ![&kubeconfig_host, &first_host]
                        .iter()
                        .any(|h| **h == address || **h == node.address)
                })
                .map(|host| self.node_api(host));
            let answered = futures::future::join_all(others).await;
            self.other_apis = Some(
                answered
                    .into_iter()
                    .filter_map(|reached| {
                        reached
                            .map_err(|e| tracing::info!("not rewriting through it: {e:#}"))
                            .ok()
                    })
                    .collect(),
            );
        }
        let others = self.other_apis.iter().flatten().map(server_of).collect();
        Ok(Arc::new(rewrite::Servers::new(first_server, others)))
    }

    /// A node's kube-apiserver through an SSH tunnel, if it answers its readiness probe.
    async fn node_api(&self, host: &Arc<Host>) -> anyhow::Result<ApiConnection> {
        let node = host.node();
        let address = node_internal_address(node);
        let name = format!("{}'s kube-apiserver", node_name(node));
        let tunnel = Tunnel::open(host.clone(), &address, APISERVER_PORT)
            .await
            .with_context(|| format!("{name} through SSH"))?;
        let options = kube_client::ClientOptions {
            server_override: Some(format!("https://{}", tunnel.local_addr())),
            ..Default::default()
        };
        let client = kube_client::client_with(&self.global.kubeconfig_path(), &options).await?;
        kube_client::probe(&client)
            .await
            .map_err(|e| anyhow::Error::new(e).context(format!("{name} through SSH")))?;
        Ok(ApiConnection {
            client,
            _tunnel: Some(tunnel),
            name,
            host: address,
        })
    }

    /// [`Session::try_reach_api`], again every 2 s for up to `--api-wait` seconds while a server answers but is not
    /// ready: right after a node came back, every server may report its etcd failed for a while.
    async fn reach_api(&self) -> anyhow::Result<ApiConnection> {
        let wait = std::time::Duration::from_secs(u64::from(self.global.api_wait));
        let deadline = std::time::Instant::now() + wait;
        let mut said = false;
        loop {
            match self.try_reach_api().await {
                Ok(connection) => return Ok(connection),
                Err(unreached) if unreached.answered && std::time::Instant::now() < deadline => {
                    if !said {
                        tracing::warn!(
                            "{}; waiting up to {} s for one to be ready",
                            unreached.why,
                            wait.as_secs()
                        );
                        said = true;
                    }
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                }
                Err(unreached) => return Err(anyhow!("{}", unreached.why)),
            }
        }
    }

    /// The kubeconfig's server if it is ready, else the first other controlplane's that is.
    async fn try_reach_api(&self) -> Result<ApiConnection, Unreached> {
        let unreached = |e: anyhow::Error| Unreached {
            answered: false,
            why: format!("{e:#}"),
        };
        let path = self.global.kubeconfig_path();
        let url = kube_client::server_url(&path)
            .await
            .map_err(|e| unreached(e.into()))?;
        let direct = kube_client::client(&path)
            .await
            .map_err(|e| unreached(e.into()))?;
        let mut failures = Vec::new();
        let mut answered = false;
        match kube_client::probe(&direct).await {
            Ok(()) => {
                return Ok(ApiConnection {
                    client: direct,
                    _tunnel: None,
                    name: format!("the kubeconfig's server {url}"),
                    host: url.host().unwrap_or_default().to_string(),
                });
            }
            Err(e) => {
                answered |= e.answered;
                failures.push(format!("the kubeconfig's server {url}: {e}"));
            }
        }
        let kubeconfig_host = url.host().unwrap_or_default().to_string();
        for host in &self.hosts {
            let node = host.node();
            if node_internal_address(node) == kubeconfig_host || node.address == kubeconfig_host {
                continue;
            }
            match self.node_api(host).await {
                Ok(connection) => {
                    tracing::warn!(
                        "{}; using {} ({}:{APISERVER_PORT}) through SSH instead",
                        failures.join("; "),
                        connection.name,
                        connection.host
                    );
                    return Ok(connection);
                }
                Err(e) => {
                    answered |= e.chain().any(|cause| {
                        cause
                            .downcast_ref::<kube_client::NotReady>()
                            .is_some_and(|n| n.answered)
                    });
                    failures.push(format!("{e:#}"));
                }
            }
        }
        Err(Unreached {
            answered,
            why: format!("no API server answers: {}", failures.join("; ")),
        })
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
        let targets = match self.resolve(resources).await {
            Ok(targets) => targets,
            Err(e) => {
                let Some(targets) = rewrite::resolve_without_api(resources) else {
                    return Err(e.context(format!(
                        "counting {} in etcd needs API discovery (a wildcard)",
                        resources.join(", ")
                    )));
                };
                tracing::warn!(
                    "{e:#}; counting {} in etcd without API discovery",
                    resources.join(", ")
                );
                targets
            }
        };
        let etcd_resources: Vec<EtcdResource> = targets
            .iter()
            .map(|t| t.etcd(&self.etcd_prefix()))
            .collect();
        let options = CensusOptions {
            key_names: known_key_names(state, &self.records, write_label),
            ..CensusOptions::default()
        };
        let census = self
            .etcd(state)
            .await?
            .census(&etcd_resources, write_label, &options)
            .await?;
        let targets = targets
            .into_iter()
            .zip(&etcd_resources)
            .map(|(target, stored)| RewriteTarget {
                sizes: (census.resources.get(&stored.name)).map(|r| Arc::new(r.sizes.clone())),
                ..target
            })
            .collect();
        Ok((targets, census))
    }

    pub async fn close(&self) {
        let lock = self
            .cluster_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(lock) = lock {
            lock.release().await;
        }
        for h in &self.hosts {
            h.close().await;
        }
    }
}

/// Every key name stored data may name: the configs RKE's state and atrest's records hold (deployed, desired,
/// transition from/to), the archive, and the write key being checked. The census needs them whole because
/// names may contain `:`.
fn known_key_names(
    state: &RkeState,
    atrest: &AtrestState,
    write_label: Option<&str>,
) -> Vec<String> {
    let mut texts: Vec<String> = Vec::new();
    texts.extend(state.current_encryption_config().map(str::to_string));
    texts.extend(state.desired_encryption_config().map(str::to_string));
    let mut names: Vec<String> = Vec::new();
    if let Some(t) = &atrest.transition {
        texts.extend(t.from.iter().chain(t.to.iter()).cloned());
    }
    names.extend(atrest.archive.iter().map(|k| k.name.clone()));
    for text in &texts {
        if let Ok(config) = crate::config::render::parse_state_config(text) {
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

fn server_of(connection: &ApiConnection) -> rewrite::ApiServer {
    rewrite::ApiServer {
        name: connection.name.clone(),
        client: connection.client.clone(),
    }
}

/// The address a node's services listen on for the other nodes: RKE's `internal_address`, else `address`.
fn node_internal_address(node: &Node) -> String {
    node.internal_address
        .clone()
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| node.address.clone())
}

pub fn ssh_options(global: &GlobalOpts) -> SshOptions {
    SshOptions {
        known_hosts: global.known_hosts.clone(),
        accept_new_host_keys: global.accept_new_host_keys,
        agent_socket: global.ssh_agent_socket.clone(),
        key_passphrase: global.ssh_key_passphrase.clone(),
        ..SshOptions::default()
    }
}

/// Host, port and whether TLS is used, of an external etcd client URL (`https://10.0.0.5:2379`; port 2379
/// when none is given).
pub fn external_endpoint(url: &str) -> Result<(String, u16, bool), String> {
    let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!("{url:?} is not an http:// or https:// URL"));
    };
    let authority = rest.split('/').next().unwrap_or("");
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{url:?}: unclosed [ in the host"))?;
        (h.to_string(), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    let port = match port {
        None => ETCD_CLIENT_PORT,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{url:?}: invalid port {p:?}"))?,
    };
    Ok((host, port, https))
}

/// `<prefix>/etc/kubernetes`.
pub fn kubernetes_dir_in(prefix: &str) -> String {
    format!("{}/etc/kubernetes", prefix.trim_end_matches('/'))
}

/// Census counts in the planner's form: resource → label → count.
pub fn census_counts(census: &Census) -> BTreeMap<String, BTreeMap<String, u64>> {
    census
        .resources
        .iter()
        .map(|(name, r)| (name.clone(), r.by_label.clone()))
        .collect()
}

/// `node <name>: <why>` for every node not observed whole.
pub fn unobserved(views: &[NodeView]) -> Vec<String> {
    views
        .iter()
        .filter_map(|v| {
            v.unobserved
                .as_ref()
                .map(|why| format!("node {}: {why}", v.name))
        })
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

/// What an interrupted recreate left on `host` ([`Leftover`]); reads only.
pub async fn find_leftover(host: &Arc<Host>) -> anyhow::Result<Leftover> {
    let docker = NodeDocker::new(host.clone())?;
    if docker.inspect(OLD_APISERVER).await?.is_none() {
        return Ok(Leftover::Nothing);
    }
    let new = docker.inspect(APISERVER).await?;
    Ok(Leftover::decide(true, new.map(|n| n.created_by_atrest)))
}

/// A run killed in the middle of recreating kube-apiserver leaves `old-kube-apiserver` behind (and maybe no
/// `kube-apiserver`). Finish or undo that recreate as the executor would have: keep the new container if it
/// becomes ready, else put the old one back. A new container atrest did not create is another tool's half-done
/// recreate: refused, nothing changed. Returns whether the previous container was put back.
async fn recover_interrupted_recreate(
    host: &Arc<Host>,
    kubernetes_dir: &str,
    leftover: &Leftover,
) -> anyhow::Result<bool> {
    let node = host.label().to_string();
    match leftover {
        Leftover::Nothing => return Ok(false),
        Leftover::NotOurs => bail!("{}", leftover.describe(&node).unwrap_or_default()),
        Leftover::PutBackOld | Leftover::FinishOurs => {}
    }
    let docker = NodeDocker::new(host.clone())?;
    let new_ready = match docker.inspect(APISERVER).await? {
        Some(_) if *leftover == Leftover::FinishOurs => {
            new_container_serves(host, &docker, kubernetes_dir).await?
        }
        _ => false,
    };
    if new_ready {
        docker.commit_recreate().await?;
        eprintln!(
            "{node}: the new {APISERVER} from the interrupted run is ready; removed {OLD_APISERVER}"
        );
    } else {
        docker.rollback_recreate().await?;
        eprintln!(
            "{node}: put back the previous {APISERVER} (the interrupted run had not finished replacing it)"
        );
    }
    Ok(!new_ready)
}

/// Whether the `kube-apiserver` an interrupted recreate created becomes ready, with `old-kube-apiserver` stopped
/// first: both share the node's port 6443, and a Docker engine that came back starts both again (the one that
/// lost the race for the port restarts in a loop), so with the old one running a ready answer could be its own.
async fn new_container_serves(
    host: &Arc<Host>,
    docker: &NodeDocker,
    kubernetes_dir: &str,
) -> anyhow::Result<bool> {
    docker.stop(OLD_APISERVER).await?;
    // Started if it had exited; one in Docker's restart back-off (up to a minute) is left to it.
    docker.start(APISERVER).await?;
    let probe = HealthProbe::from_node_certs(host, kubernetes_dir).await?;
    Ok(wait_ready(host, &probe, std::time::Duration::from_secs(90))
        .await
        .is_ok())
}

/// Where atrest reaches etcd: through a tunnel from `host` to `address:port`, with `tls` unless it is plain http.
struct EtcdEndpoint {
    host: std::sync::Arc<Host>,
    address: String,
    port: u16,
    tls: Option<EtcdTls>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_etcd_urls_give_host_port_and_tls() {
        assert_eq!(
            external_endpoint("https://10.0.0.5:2379"),
            Ok(("10.0.0.5".into(), 2379, true))
        );
        assert_eq!(
            external_endpoint("http://etcd.example.com"),
            Ok(("etcd.example.com".into(), 2379, false))
        );
        assert_eq!(
            external_endpoint("https://[fd00::5]:12379/"),
            Ok(("fd00::5".into(), 12379, true))
        );
        assert!(external_endpoint("etcd:2379").is_err());
        assert!(external_endpoint("https://:2379").is_err());
        assert!(external_endpoint("https://h:0").is_err());
    }

    #[test]
    fn kubernetes_dir_takes_the_prefix() {
        assert_eq!(kubernetes_dir_in(""), "/etc/kubernetes");
        assert_eq!(kubernetes_dir_in("/opt/rke/"), "/opt/rke/etc/kubernetes");
    }
}
