//! The node's Docker Engine over SSH: each request opens a `direct-streamlocal@openssh.com` channel to the node's
//! `docker_socket` and speaks HTTP/1 on it (bollard's custom transport). API version pinned to 1.41 (Docker 20.10,
//! what RKE nodes run; newer engines accept it too).
//!
//! kube-apiserver changes follow RKE's recreate order: rename the running container to `old-kube-apiserver`, stop
//! it (host networking: the new one cannot bind :6443 while the old one runs), create `kube-apiserver` with the old
//! config plus the change, start it; the caller health-checks and then commits (remove old) or rolls back.

pub mod diagnosis;
mod root_shell;
pub use root_shell::root_shell_body;

use crate::exec::ssh::{Host, RootRoute, SshError, shell_quote};
use crate::kill_points;
use bollard::models::{ContainerCreateBody, ContainerInspectResponse};
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, RemoveContainerOptions,
    RenameContainerOptions, RestartContainerOptions, StartContainerOptions, StopContainerOptions,
};
use bollard::{BollardRequest, ClientVersion, Docker};
use std::sync::Arc;

pub const APISERVER: &str = "kube-apiserver";
pub const OLD_APISERVER: &str = "old-kube-apiserver";
/// The label atrest puts on every container it creates (value: `atrest <version>`). RKE compares image,
/// Entrypoint, Cmd, Env, Binds and SecurityOpt, never labels, so the label changes nothing for `rke up`; it tells
/// an `old-kube-apiserver` that atrest's interrupted recreate left from one an interrupted `rke up` left.
pub const CREATED_BY_LABEL: &str = "io.atrest.created-by";
pub const ENCRYPTION_FLAG: &str = "--encryption-provider-config";
/// kube-apiserver 1.26+: reload the encryption config file when it changes (checked once a minute).
pub const RELOAD_FLAG: &str = "--encryption-provider-config-automatic-reload";
/// Where RKE mounts the encryption config inside the container (`/etc/kubernetes` is bound from the host).
pub const ENCRYPTION_CONFIG_IN_CONTAINER: &str = "/etc/kubernetes/ssl/encryption.yaml";
pub const API_VERSION: ClientVersion = ClientVersion {
    major_version: 1,
    minor_version: 41,
};
/// Seconds Docker waits after SIGTERM before SIGKILL (RKE uses the default 10).
const STOP_TIMEOUT_S: i32 = 10;

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error("{node}: Docker at {socket}: {what}: {detail}")]
    Api {
        node: String,
        socket: String,
        what: String,
        detail: String,
    },
    #[error("{node}: {detail}")]
    State { node: String, detail: String },
}

/// Whether the encryption flag should be present after the change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FlagChange {
    Keep,
    Add,
    Remove,
}

/// The change to kube-apiserver's container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerChange {
    pub flag: FlagChange,
    /// Binds to make sure exist (e.g. a KMS plugin socket dir), Docker `src:dst[:opts]` form.
    pub extra_binds: Vec<String>,
    /// `Some(true)`: make sure `--encryption-provider-config-automatic-reload=true` is on the command line (cluster.yml
    /// asks for it in `extra_args`, as `rke up` would put it); `Some(false)`: make sure it is not (it needs the
    /// config flag); `None`: leave it as it is.
    pub reload: Option<bool>,
}

/// What we need to know about kube-apiserver to decide and to roll back.
#[derive(Clone, Debug)]
pub struct ApiserverInfo {
    pub id: String,
    pub image: String,
    /// Docker's Entrypoint (RKE: the whole kube-apiserver command line).
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub binds: Vec<String>,
    pub running: bool,
    pub restarting: bool,
    pub has_encryption_flag: bool,
    /// Runs with `--encryption-provider-config-automatic-reload` on (`=true`, or the bare flag).
    pub has_reload_flag: bool,
    /// atrest created this container ([`CREATED_BY_LABEL`]).
    pub created_by_atrest: bool,
}

/// What to do about an `old-kube-apiserver` found on a node: a recreate (atrest's or RKE's, both rename the old
/// container to that name first) was interrupted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leftover {
    /// No leftover.
    Nothing,
    /// Killed after the rename and before the new container existed: the old one goes back, whoever left it.
    PutBackOld,
    /// atrest's own recreate got as far as creating the new container: keep it if it becomes ready, else put the
    /// old one back (what the interrupted run would have done).
    FinishOurs,
    /// The new container is not atrest's (an interrupted `rke up`?): atrest does not decide for another tool.
    NotOurs,
}

impl Leftover {
    /// `old_exists`: `old-kube-apiserver` is there; `new_created_by_atrest`: whether a `kube-apiserver` exists
    /// and, if so, whether atrest created it.
    pub fn decide(old_exists: bool, new_created_by_atrest: Option<bool>) -> Leftover {
        match (old_exists, new_created_by_atrest) {
            (false, _) => Leftover::Nothing,
            (true, None) => Leftover::PutBackOld,
            (true, Some(true)) => Leftover::FinishOurs,
            (true, Some(false)) => Leftover::NotOurs,
        }
    }

    /// What a plan or an error says about it on `node`.
    pub fn describe(&self, node: &str) -> Option<String> {
        match self {
            Leftover::Nothing => None,
            Leftover::PutBackOld => Some(format!(
                "{node}: an interrupted recreate left {OLD_APISERVER} and no {APISERVER}: the old container is \
                 renamed back and started first"
            )),
            Leftover::FinishOurs => Some(format!(
                "{node}: an interrupted atrest run left {OLD_APISERVER} beside the {APISERVER} it created: the \
                 new one is kept if it becomes ready, else the old one is put back, first"
            )),
            Leftover::NotOurs => Some(format!(
                "{node}: {OLD_APISERVER} is there beside a {APISERVER} atrest did not create (an interrupted `rke \
                 up`?). atrest leaves both alone and changes nothing: rerun `rke up`, or once {APISERVER} is \
                 healthy remove the old one (docker rm {OLD_APISERVER})"
            )),
        }
    }
}

/// A Docker client for one node.
#[derive(Clone)]
pub struct NodeDocker {
    host: Arc<Host>,
    docker: Docker,
}

fn is_reload_flag(arg: &str) -> bool {
    arg == RELOAD_FLAG || arg.starts_with(&format!("{RELOAD_FLAG}="))
}

/// Whether a command-line argument turns automatic reload on (Go's bool flag values: 1, t, T, true, TRUE, True).
pub fn turns_reload_on(arg: &str) -> bool {
    arg == RELOAD_FLAG
        || arg
            .strip_prefix(&format!("{RELOAD_FLAG}="))
            .is_some_and(|v| matches!(v, "1" | "t" | "T" | "true" | "TRUE" | "True"))
}

/// [`changed_command`], then the reload flag made present (`Some(true)`, as `--…-automatic-reload=true`) or absent
/// (`Some(false)`), rewritten in place when it is there with another value, appended like the config flag.
pub fn changed_command_with_reload(
    entrypoint: &[String],
    cmd: &[String],
    flag: FlagChange,
    reload: Option<bool>,
) -> (Vec<String>, Vec<String>) {
    let (mut entrypoint, mut cmd) = changed_command(entrypoint, cmd, flag);
    let Some(want) = reload else {
        return (entrypoint, cmd);
    };
    let ours = format!("{RELOAD_FLAG}=true");
    let mut placed = false;
    for list in [&mut entrypoint, &mut cmd] {
        let mut out = Vec::with_capacity(list.len() + 1);
        for arg in list.iter() {
            if is_reload_flag(arg) {
                if want && !placed {
                    out.push(ours.clone());
                    placed = true;
                }
                continue;
            }
            out.push(arg.clone());
        }
        *list = out;
    }
    if want && !placed {
        if cmd.is_empty() && !entrypoint.is_empty() {
            entrypoint.push(ours);
        } else {
            cmd.push(ours);
        }
    }
    (entrypoint, cmd)
}

fn is_encryption_flag(arg: &str) -> bool {
    arg == ENCRYPTION_FLAG || arg.starts_with(&format!("{ENCRYPTION_FLAG}="))
}

/// Apply `flag` to a container's command line, Docker's Entrypoint followed by Cmd. RKE puts the whole
/// kube-apiserver command line in Entrypoint (`/opt/rke-tools/entrypoint.sh kube-apiserver --f=v …`, Cmd empty);
/// other setups put it in Cmd. The flag is changed where it is: `Remove` drops it (both `--f=v` and `--f v`
/// forms) from both; `Add` rewrites the first occurrence in place to our path and drops any further one (never a
/// second flag), or, when absent, appends it to the list that holds the arguments (Cmd, or Entrypoint when Cmd
/// is empty). Everything else, order included, stays as it was: RKE compares Entrypoint and Cmd and would
/// recreate the container on any other difference.
pub fn changed_command(
    entrypoint: &[String],
    cmd: &[String],
    flag: FlagChange,
) -> (Vec<String>, Vec<String>) {
    if flag == FlagChange::Keep {
        return (entrypoint.to_vec(), cmd.to_vec());
    }
    let ours = format!("{ENCRYPTION_FLAG}={ENCRYPTION_CONFIG_IN_CONTAINER}");
    let mut placed = false;
    let mut edit = |args: &[String]| {
        let mut out = Vec::with_capacity(args.len() + 1);
        let mut skip_value = false;
        for arg in args {
            if skip_value {
                skip_value = false;
                continue;
            }
            if is_encryption_flag(arg) {
                skip_value = arg == ENCRYPTION_FLAG;
                if flag == FlagChange::Add && !placed {
                    out.push(ours.clone());
                    placed = true;
                }
                continue;
            }
            out.push(arg.clone());
        }
        out
    };
    let mut new_entrypoint = edit(entrypoint);
    let mut new_cmd = edit(cmd);
    if flag == FlagChange::Add && !placed {
        if new_cmd.is_empty() && !new_entrypoint.is_empty() {
            new_entrypoint.push(ours);
        } else {
            new_cmd.push(ours);
        }
    }
    (new_entrypoint, new_cmd)
}

/// [`changed_command`] for a command line held in one list (Cmd with no Entrypoint).
pub fn changed_cmd(cmd: &[String], flag: FlagChange) -> Vec<String> {
    changed_command(&[], cmd, flag).1
}

/// Binds with `extra` added where no bind targets the same container path yet.
pub fn changed_binds(binds: &[String], extra: &[String]) -> Vec<String> {
    let target = |b: &str| b.split(':').nth(1).unwrap_or("").to_string();
    let mut out = binds.to_vec();
    for e in extra {
        if !out.iter().any(|b| target(b) == target(e)) {
            out.push(e.clone());
        }
    }
    out
}

/// Whether applying `change` needs a new container (else a restart suffices to reload the file).
pub fn needs_recreate(info: &ApiserverInfo, change: &ContainerChange) -> bool {
    changed_command_with_reload(&info.entrypoint, &info.cmd, change.flag, change.reload)
        != (info.entrypoint.clone(), info.cmd.clone())
        || changed_binds(&info.binds, &change.extra_binds) != info.binds
}

/// The create request for a container like `template` (an inspect response) with `change` applied: the
/// inspect `Config` plus `HostConfig` (same fields, same JSON names), with only the encryption flag (where it
/// is, [`changed_command`]) and the binds changed. Image, Env, Labels, VolumesFrom, network, restart policy,
/// SecurityOpt and the order of every list are carried over as they are.
pub fn create_body(
    template: &ContainerInspectResponse,
    change: &ContainerChange,
) -> Result<ContainerCreateBody, serde_json::Error> {
    let mut config = template.config.clone().unwrap_or_default();
    let mut host_config = template.host_config.clone().unwrap_or_default();
    let entrypoint = config.entrypoint.clone().unwrap_or_default();
    let cmd = config.cmd.clone().unwrap_or_default();
    let (new_entrypoint, new_cmd) =
        changed_command_with_reload(&entrypoint, &cmd, change.flag, change.reload);
    // Only what changed is set: an absent (null) Entrypoint or Cmd stays absent, as RKE created it.
    if new_entrypoint != entrypoint {
        config.entrypoint = Some(new_entrypoint);
    }
    if new_cmd != cmd {
        config.cmd = Some(new_cmd);
    }
    let binds = host_config.binds.clone().unwrap_or_default();
    let new_binds = changed_binds(&binds, &change.extra_binds);
    if new_binds != binds {
        host_config.binds = Some(new_binds);
    }
    config.labels.get_or_insert_default().insert(
        CREATED_BY_LABEL.to_string(),
        format!("atrest {}", env!("CARGO_PKG_VERSION")),
    );
    let mut body = serde_json::to_value(&config)?;
    let host_config = serde_json::to_value(&host_config)?;
    if let Some(obj) = body.as_object_mut() {
        obj.insert("HostConfig".into(), host_config);
    }
    serde_json::from_value(body)
}

/// Where RKE links every container's log (`hosts.RKELogsPath`), whatever the node's `prefix_path`.
pub const RKE_LOGS_DIR: &str = "/var/lib/rancher/rke/log";

/// The shell script that leaves RKE's log links as `rke up` leaves them after running container `name` (id
/// `id`, log file `log_path`): `<RKE_LOGS_DIR>/<name>_<id>.log` → the log file, and no dangling `<name>_*.log`
/// link (RKE's log cleaner removes dangling links at the end of `rke up`; here only this container's, since the
/// other containers are not atrest's). `None` when Docker keeps no log file (a log driver without one) or the
/// id is not a container id.
pub fn log_link_script(name: &str, id: &str, log_path: &str) -> Option<String> {
    if log_path.is_empty() || id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let dir = RKE_LOGS_DIR;
    let link = shell_quote(&format!("{dir}/{name}_{id}.log"));
    let pattern = shell_quote(&format!("{name}_*.log"));
    Some(format!(
        "mkdir -p {dir} && ln -sfn {target} {link} && \
         find {dir} -maxdepth 1 -type l -name {pattern} ! -exec test -e {{}} \\; -delete",
        target = shell_quote(log_path),
    ))
}

/// Whether recreating from `tag` keeps the image the container runs (`running`, an image ID), given what the
/// tag names on the node now (`tagged`; `None`: the tag is gone). Nothing is changed on a refusal.
pub fn same_image(tag: &str, running: &str, tagged: Option<&str>) -> Result<(), String> {
    match tagged {
        Some(id) if id == running => Ok(()),
        Some(id) => Err(format!(
            "the image tag {tag} now names {} while {APISERVER} runs {}: a recreate would change the \
             kube-apiserver version. Nothing was changed; let `rke up` move the server to the new image first, \
             or tag the running image back (docker tag {running} {tag})",
            short_id(id),
            short_id(running)
        )),
        None => Err(format!(
            "the image tag {tag} of {APISERVER} is no longer on the node (it runs {}); a recreate would have to \
             pull it. Nothing was changed; tag the running image back (docker tag {running} {tag})",
            short_id(running)
        )),
    }
}

/// A Docker answer with 404 (no such container or image) as `None`.
fn not_found_as_none<T>(
    answer: Result<T, bollard::errors::Error>,
) -> Result<Option<T>, bollard::errors::Error> {
    match answer {
        Ok(found) => Ok(Some(found)),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `sha256:0123456789ab`: enough of an image ID to tell two apart in a message.
fn short_id(id: &str) -> &str {
    &id[..id.len().min("sha256:".len() + 12)]
}

impl NodeDocker {
    pub fn new(host: Arc<Host>) -> Result<Self, DockerError> {
        let socket = host.docker_socket();
        let transport_host = host.clone();
        let transport = move |req: BollardRequest| {
            let host = transport_host.clone();
            let socket = socket.clone();
            Box::pin(async move {
                let channel = host
                    .handle()
                    .channel_open_direct_streamlocal(socket.clone())
                    .await
                    .map_err(|e| {
                        if host.is_closed() {
                            return std::io::Error::other(
                                host.channel_error(&format!("opening the Docker socket {socket}"), e),
                            );
                        }
                        // The node and the socket are named by the error this one ends up in.
                        std::io::Error::other(format!(
                            "cannot open the socket over SSH ({e}): no Docker engine answers there (is dockerd \
                             running?), or the SSH user may not use the socket, or sshd has \
                             AllowStreamLocalForwarding off"
                        ))
                    })?;
                // A raw HTTP/1 connection: send origin-form URIs and a Host header, as a pooled client would.
                let (mut parts, body) = req.into_parts();
                if let Some(pq) = parts.uri.path_and_query().cloned() {
                    parts.uri = hyper::Uri::from(pq);
                }
                parts
                    .headers
                    .entry(hyper::header::HOST)
                    .or_insert(hyper::header::HeaderValue::from_static("docker"));
                let req = BollardRequest::from_parts(parts, body);
                let io = hyper_util::rt::TokioIo::new(channel.into_stream());
                let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
                // With upgrades: `attach` turns the connection into the container's stdio (root_shell).
                tokio::spawn(async move {
                    let _ = conn.with_upgrades().await;
                });
                Ok(sender.send_request(req).await?)
            }) as std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>>
        };
        let docker = Docker::connect_with_custom_transport(
            transport,
            Some("http://docker"),
            120,
            &API_VERSION,
        )
        .map_err(|e| DockerError::Api {
            node: host.label().to_string(),
            socket: host.docker_socket(),
            what: "setting up the client".into(),
            detail: e.to_string(),
        })?;
        Ok(Self { host, docker })
    }

    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }

    /// The bollard client, for operations not wrapped here.
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    fn api(&self, what: &str, e: impl std::fmt::Display) -> DockerError {
        DockerError::Api {
            node: self.host.label().to_string(),
            socket: self.host.docker_socket(),
            what: what.to_string(),
            detail: e.to_string(),
        }
    }

    /// `GET /_ping`: the engine answers.
    pub async fn ping(&self) -> Result<(), DockerError> {
        self.docker
            .ping()
            .await
            .map(|_| ())
            .map_err(|e| self.api("ping", e))
    }

    async fn inspect_raw(
        &self,
        name: &str,
    ) -> Result<Option<ContainerInspectResponse>, DockerError> {
        not_found_as_none(
            self.docker
                .inspect_container(name, None::<InspectContainerOptions>)
                .await,
        )
        .map_err(|e| self.api(&format!("inspecting {name}"), e))
    }

    /// Inspect a container by name; `None` when it does not exist.
    pub async fn inspect(&self, name: &str) -> Result<Option<ApiserverInfo>, DockerError> {
        Ok(self.inspect_raw(name).await?.map(|c| {
            let cmd = c
                .config
                .as_ref()
                .and_then(|cfg| cfg.cmd.clone())
                .unwrap_or_default();
            let entrypoint = c
                .config
                .as_ref()
                .and_then(|cfg| cfg.entrypoint.clone())
                .unwrap_or_default();
            let state = c.state.clone().unwrap_or_default();
            ApiserverInfo {
                id: c.id.clone().unwrap_or_default(),
                image: c
                    .config
                    .as_ref()
                    .and_then(|cfg| cfg.image.clone())
                    .unwrap_or_default(),
                has_encryption_flag: entrypoint.iter().chain(&cmd).any(|a| is_encryption_flag(a)),
                has_reload_flag: entrypoint.iter().chain(&cmd).any(|a| turns_reload_on(a)),
                entrypoint,
                cmd,
                binds: c
                    .host_config
                    .as_ref()
                    .and_then(|h| h.binds.clone())
                    .unwrap_or_default(),
                running: state.running.unwrap_or(false),
                restarting: state.restarting.unwrap_or(false),
                created_by_atrest: c
                    .config
                    .as_ref()
                    .and_then(|cfg| cfg.labels.as_ref())
                    .is_some_and(|l| l.contains_key(CREATED_BY_LABEL)),
            }
        }))
    }

    pub async fn inspect_apiserver(&self) -> Result<ApiserverInfo, DockerError> {
        self.inspect(APISERVER)
            .await?
            .ok_or_else(|| DockerError::State {
                node: self.host.label().to_string(),
                detail: format!("no {APISERVER} container found"),
            })
    }

    /// The container's log lines (stdout and stderr) since `since` (Unix seconds), the last `tail` of them.
    pub async fn logs_since(
        &self,
        name: &str,
        since: i64,
        tail: usize,
    ) -> Result<String, DockerError> {
        self.logs(name, since, tail, false).await
    }

    /// [`NodeDocker::logs_since`], each line prefixed with Docker's RFC 3339 timestamp and a space.
    pub async fn timestamped_logs_since(
        &self,
        name: &str,
        since: i64,
        tail: usize,
    ) -> Result<String, DockerError> {
        self.logs(name, since, tail, true).await
    }

    async fn logs(
        &self,
        name: &str,
        since: i64,
        tail: usize,
        timestamps: bool,
    ) -> Result<String, DockerError> {
        use futures::StreamExt;
        let options = bollard::query_parameters::LogsOptions {
            stdout: true,
            stderr: true,
            since: i32::try_from(since).unwrap_or(0),
            tail: tail.to_string(),
            timestamps,
            ..Default::default()
        };
        let mut stream = self.docker.logs(name, Some(options));
        let mut text = String::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.api("logs", e))?;
            text.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        }
        Ok(text)
    }

    pub async fn restart(&self, name: &str) -> Result<(), DockerError> {
        let opts = RestartContainerOptions {
            t: Some(STOP_TIMEOUT_S),
            signal: None,
        };
        self.docker
            .restart_container(name, Some(opts))
            .await
            .map_err(|e| self.api(&format!("restarting {name}"), e))
    }

    pub async fn start(&self, name: &str) -> Result<(), DockerError> {
        match self
            .docker
            .start_container(name, None::<StartContainerOptions>)
            .await
        {
            Ok(()) => Ok(()),
            // 304: already running.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(self.api(&format!("starting {name}"), e)),
        }
    }

    pub async fn stop(&self, name: &str) -> Result<(), DockerError> {
        let opts = StopContainerOptions {
            t: Some(STOP_TIMEOUT_S),
            signal: None,
        };
        match self.docker.stop_container(name, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(self.api(&format!("stopping {name}"), e)),
        }
    }

    pub async fn rename(&self, from: &str, to: &str) -> Result<(), DockerError> {
        self.docker
            .rename_container(
                from,
                RenameContainerOptions {
                    name: to.to_string(),
                },
            )
            .await
            .map_err(|e| self.api(&format!("renaming {from} to {to}"), e))
    }

    pub async fn remove(&self, name: &str) -> Result<(), DockerError> {
        let opts = RemoveContainerOptions {
            force: true,
            v: false,
            link: false,
        };
        match self.docker.remove_container(name, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(self.api(&format!("removing {name}"), e)),
        }
    }

    /// Create `name` with `template`'s config and host config, changed by `change`.
    async fn create_from(
        &self,
        template: &ContainerInspectResponse,
        name: &str,
        change: &ContainerChange,
    ) -> Result<(), DockerError> {
        let body = create_body(template, change)
            .map_err(|e| self.api("building the create request", e))?;
        let opts = CreateContainerOptions {
            name: Some(name.to_string()),
            platform: String::new(),
        };
        self.docker
            .create_container(Some(opts), body)
            .await
            .map(|_| ())
            .map_err(|e| self.api(&format!("creating {name}"), e))
    }

    /// RKE's recreate up to the health gate: rename → stop old → create → start. On a failure before the new
    /// container is started, the old one is put back and started again before the error is returned. The
    /// caller checks first that the image stays the same ([`NodeDocker::check_recreate`]).
    pub async fn begin_recreate(&self, change: &ContainerChange) -> Result<(), DockerError> {
        if self.inspect_raw(OLD_APISERVER).await?.is_some() {
            return Err(DockerError::State {
                node: self.host.label().to_string(),
                detail: format!(
                    "a container named {OLD_APISERVER} already exists (left by an interrupted recreate?); \
                     inspect it and remove it (docker rm {OLD_APISERVER}) once {APISERVER} is healthy"
                ),
            });
        }
        let template = self
            .inspect_raw(APISERVER)
            .await?
            .ok_or_else(|| DockerError::State {
                node: self.host.label().to_string(),
                detail: format!("no {APISERVER} container found"),
            })?;
        // A container that is not serving (exited, or restarting in a loop: the one an interrupted recreate put
        // back may fail to start until the change is made) is stopped first: Docker cannot rename a container
        // whose restart loop has no network sandbox ("sandbox … not found"), and stopping it costs no service.
        if !serving(&template) {
            self.stop(APISERVER).await?;
        }
        self.rename(APISERVER, OLD_APISERVER).await?;
        kill_points::here("recreate:renamed");
        let steps = async {
            self.stop(OLD_APISERVER).await?;
            kill_points::here("recreate:stopped");
            self.create_from(&template, APISERVER, change).await?;
            kill_points::here("recreate:created");
            self.start(APISERVER).await
        };
        if let Err(e) = steps.await {
            tracing::warn!(
                "{}: recreate failed ({e}); putting the old {APISERVER} back",
                self.host.label()
            );
            if let Err(undo) = self.rollback_recreate().await {
                return Err(DockerError::State {
                    node: self.host.label().to_string(),
                    detail: format!(
                        "recreate failed ({e}) and so did putting the old container back ({undo})"
                    ),
                });
            }
            return Err(e);
        }
        Ok(())
    }

    /// Whether kube-apiserver can be recreated without changing its image ([`same_image`]); changes nothing.
    pub async fn check_recreate(&self) -> Result<(), DockerError> {
        match self.inspect_raw(APISERVER).await? {
            Some(template) => self.check_same_image(&template).await,
            None => Err(DockerError::State {
                node: self.host.label().to_string(),
                detail: format!("no {APISERVER} container found"),
            }),
        }
    }

    /// A recreate names the image as the container does (its tag: what RKE compares), so the tag must still
    /// name the image the container runs; else the new container would run another kube-apiserver version.
    async fn check_same_image(
        &self,
        template: &ContainerInspectResponse,
    ) -> Result<(), DockerError> {
        let tag = template
            .config
            .as_ref()
            .and_then(|c| c.image.clone())
            .unwrap_or_default();
        let running = template.image.clone().unwrap_or_default();
        let tagged = not_found_as_none(self.docker.inspect_image(&tag).await)
            .map_err(|e| self.api(&format!("inspecting the image {tag}"), e))?
            .and_then(|image| image.id);
        same_image(&tag, &running, tagged.as_deref()).map_err(|detail| DockerError::State {
            node: self.host.label().to_string(),
            detail,
        })
    }

    /// The new container is healthy: remove the old one, then link the new one's log where RKE keeps it
    /// ([`log_link_script`]).
    pub async fn commit_recreate(&self) -> Result<(), DockerError> {
        self.remove(OLD_APISERVER).await?;
        self.link_log(APISERVER).await;
        Ok(())
    }

    /// RKE's log link for `name` (after every container it runs), made with root rights. A failure is a
    /// warning: the server is already healthy and in use, and only the convenience link is missing.
    async fn link_log(&self, name: &str) {
        let container = match self.inspect_raw(name).await {
            Ok(Some(c)) => c,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!("{}: log link for {name} not made: {e}", self.host.label());
                return;
            }
        };
        let (Some(id), Some(log_path)) = (container.id, container.log_path) else {
            return;
        };
        let Some(script) = log_link_script(name, &id, &log_path) else {
            return;
        };
        match self.exec_as_root(&script, &[]).await {
            Ok(out) if out.success() => {}
            Ok(out) => tracing::warn!(
                "{}: log link for {name} not made (exit {}): {}",
                self.host.label(),
                out.status,
                out.stderr_text()
            ),
            Err(e) => tracing::warn!("{}: log link for {name} not made: {e}", self.host.label()),
        }
    }

    /// Run `script` as root on the node, feeding `stdin`, the way its SSH user can ([`RootRoute`]): over SSH
    /// as root or with sudo, else in a short-lived container ([`root_shell_body`]).
    pub async fn exec_as_root(
        &self,
        script: &str,
        stdin: &[u8],
    ) -> Result<crate::exec::ssh::Output, DockerError> {
        match self.host.root_route().await? {
            RootRoute::Root | RootRoute::Sudo => {
                Ok(self.host.exec_with_stdin(script, stdin).await?)
            }
            RootRoute::Container => self.run_as_root(script, stdin).await,
        }
    }

    /// Remove the new container, rename the old one back and start it.
    pub async fn rollback_recreate(&self) -> Result<(), DockerError> {
        if self.inspect_raw(OLD_APISERVER).await?.is_none() {
            return Err(DockerError::State {
                node: self.host.label().to_string(),
                detail: format!("cannot roll back: {OLD_APISERVER} is gone"),
            });
        }
        self.remove(APISERVER).await?;
        self.rename(OLD_APISERVER, APISERVER).await?;
        self.start(APISERVER).await
    }
}

/// Whether a container is running and not in a restart loop.
fn serving(container: &ContainerInspectResponse) -> bool {
    container
        .state
        .as_ref()
        .is_some_and(|st| st.running == Some(true) && st.restarting != Some(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recreate_keeps_the_image_the_container_runs() {
        let tag = "rancher/hyperkube:v1.32.13-rancher1";
        let running = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
        let moved = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
        assert_eq!(same_image(tag, running, Some(running)), Ok(()));
        let e = same_image(tag, running, Some(moved)).expect_err("the tag moved");
        assert!(
            e.contains("sha256:222222222222 while kube-apiserver runs sha256:111111111111")
                && e.contains("Nothing was changed"),
            "{e}"
        );
        let e = same_image(tag, running, None).expect_err("the tag is gone");
        assert!(
            e.contains("no longer on the node") && e.contains(tag),
            "{e}"
        );
    }

    fn v(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flag_added_once_and_removed_in_both_forms() {
        let base = v(&["kube-apiserver", "--secure-port=6443"]);
        let added = changed_cmd(&base, FlagChange::Add);
        assert_eq!(
            added,
            v(&[
                "kube-apiserver",
                "--secure-port=6443",
                "--encryption-provider-config=/etc/kubernetes/ssl/encryption.yaml"
            ])
        );
        assert_eq!(changed_cmd(&added, FlagChange::Add), added, "no duplicate");
        assert_eq!(changed_cmd(&added, FlagChange::Remove), base);
        let spaced = v(&[
            "kube-apiserver",
            "--encryption-provider-config",
            "/x.yaml",
            "--v=2",
        ]);
        assert_eq!(
            changed_cmd(&spaced, FlagChange::Remove),
            v(&["kube-apiserver", "--v=2"])
        );
        let reload = v(&["--encryption-provider-config-automatic-reload=true"]);
        assert_eq!(
            changed_cmd(&reload, FlagChange::Remove),
            reload,
            "a different flag"
        );
        assert_eq!(changed_cmd(&spaced, FlagChange::Keep), spaced);
    }

    #[test]
    fn reload_flag_added_rewritten_in_place_and_removed() {
        let rke = v(&["/e.sh", "kube-apiserver", "--a=1"]);
        let (e, c) = changed_command_with_reload(&rke, &[], FlagChange::Add, Some(true));
        assert_eq!(
            e,
            v(&[
                "/e.sh",
                "kube-apiserver",
                "--a=1",
                "--encryption-provider-config=/etc/kubernetes/ssl/encryption.yaml",
                "--encryption-provider-config-automatic-reload=true"
            ])
        );
        assert!(c.is_empty());
        assert!(e.iter().any(|a| turns_reload_on(a)));
        let off = v(&[
            "k",
            "--encryption-provider-config-automatic-reload=false",
            "--b",
        ]);
        let (e, _) = changed_command_with_reload(&off, &[], FlagChange::Keep, Some(true));
        assert_eq!(
            e,
            v(&[
                "k",
                "--encryption-provider-config-automatic-reload=true",
                "--b"
            ])
        );
        let (e, _) = changed_command_with_reload(&e, &[], FlagChange::Remove, Some(false));
        assert_eq!(e, v(&["k", "--b"]));
        // None leaves whatever is there.
        let (e, _) = changed_command_with_reload(&off, &[], FlagChange::Keep, None);
        assert_eq!(e, off);
        assert!(!turns_reload_on(
            "--encryption-provider-config-automatic-reload=false"
        ));
        assert!(turns_reload_on(
            "--encryption-provider-config-automatic-reload"
        ));
        assert!(!turns_reload_on("--encryption-provider-config=/x"));
    }

    #[test]
    fn binds_added_only_when_target_is_free() {
        let binds = v(&["/etc/kubernetes:/etc/kubernetes:z"]);
        let kms = v(&["/var/run/kmsplugin:/var/run/kmsplugin"]);
        assert_eq!(
            changed_binds(&binds, &kms),
            v(&[
                "/etc/kubernetes:/etc/kubernetes:z",
                "/var/run/kmsplugin:/var/run/kmsplugin"
            ])
        );
        assert_eq!(
            changed_binds(&binds, &v(&["/other:/etc/kubernetes"])),
            binds
        );
    }

    #[test]
    fn the_log_link_is_rkes_and_only_dangling_links_of_this_container_go() {
        let id = "0123abcd".repeat(8);
        let script = log_link_script(APISERVER, &id, "/var/lib/docker/containers/x/x-json.log")
            .expect("a script");
        assert!(
            script.starts_with(&format!(
                "mkdir -p /var/lib/rancher/rke/log && ln -sfn /var/lib/docker/containers/x/x-json.log \
                 /var/lib/rancher/rke/log/kube-apiserver_{id}.log && "
            )),
            "{script}"
        );
        assert!(
            script.ends_with("-type l -name 'kube-apiserver_*.log' ! -exec test -e {} \\; -delete"),
            "{script}"
        );
        assert_eq!(log_link_script(APISERVER, &id, ""), None, "no log file");
        assert_eq!(log_link_script(APISERVER, "x; rm -rf /", "/l"), None);
        assert_eq!(log_link_script(APISERVER, "", "/l"), None);
    }

    #[test]
    fn a_leftover_is_finished_only_when_atrest_created_the_new_container() {
        assert_eq!(Leftover::decide(false, None), Leftover::Nothing);
        assert_eq!(Leftover::decide(false, Some(false)), Leftover::Nothing);
        assert_eq!(Leftover::decide(false, Some(true)), Leftover::Nothing);
        assert_eq!(Leftover::decide(true, None), Leftover::PutBackOld);
        assert_eq!(Leftover::decide(true, Some(true)), Leftover::FinishOurs);
        assert_eq!(Leftover::decide(true, Some(false)), Leftover::NotOurs);
        assert_eq!(Leftover::Nothing.describe("n1"), None);
        let not_ours = Leftover::NotOurs.describe("n1").expect("described");
        assert!(
            not_ours.starts_with("n1: ") && not_ours.contains("changes nothing"),
            "{not_ours}"
        );
        for leftover in [
            Leftover::PutBackOld,
            Leftover::FinishOurs,
            Leftover::NotOurs,
        ] {
            let text = leftover.describe("n1").expect("described");
            assert!(!text.contains("  "), "one line, single spaces: {text}");
        }
    }

    #[test]
    fn recreate_decision() {
        let info = ApiserverInfo {
            id: "x".into(),
            image: "i".into(),
            entrypoint: vec![],
            cmd: v(&["kube-apiserver"]),
            binds: vec![],
            running: true,
            restarting: false,
            has_encryption_flag: false,
            has_reload_flag: false,
            created_by_atrest: false,
        };
        let keep = ContainerChange {
            flag: FlagChange::Keep,
            extra_binds: vec![],
            reload: None,
        };
        let add = ContainerChange {
            flag: FlagChange::Add,
            extra_binds: vec![],
            reload: None,
        };
        let remove = ContainerChange {
            flag: FlagChange::Remove,
            extra_binds: vec![],
            reload: None,
        };
        assert!(!needs_recreate(&info, &keep));
        assert!(needs_recreate(&info, &add));
        assert!(!needs_recreate(&info, &remove));
    }

    /// A `docker inspect kube-apiserver` as RKE creates it: the whole command line in Entrypoint, Cmd null.
    fn rke_inspect(with_flag: bool) -> ContainerInspectResponse {
        let mut entrypoint = vec![
            "/opt/rke-tools/entrypoint.sh",
            "kube-apiserver",
            "--etcd-prefix=/registry",
            "--anonymous-auth=false",
            "--service-account-issuer=rke",
        ];
        if with_flag {
            entrypoint.push("--encryption-provider-config=/etc/kubernetes/ssl/encryption.yaml");
        }
        serde_json::from_value(serde_json::json!({
            "Id": "abc",
            "Name": "/kube-apiserver",
            "Config": {
                "Image": "rancher/hyperkube:v1.32.13-rancher1",
                "Entrypoint": entrypoint,
                "Cmd": null,
                "Env": ["RKE_AUDITLOG_CONFIG_CHECKSUM=1", "RKE_ADMISSION_CONFIG_CHECKSUM=2",
                        "PATH=/usr/local/bin:/usr/bin:/bin"],
                "Labels": {"io.rancher.rke.container.name": "kube-apiserver"}
            },
            "HostConfig": {
                "Binds": ["/opt/p/etc/kubernetes:/etc/kubernetes:z", "/var/log/kube-audit:/var/log/kube-audit:z"],
                "VolumesFrom": ["service-sidekick"],
                "NetworkMode": "host",
                "RestartPolicy": {"Name": "always"},
                "SecurityOpt": ["label=disable"]
            },
            "State": {"Running": true}
        }))
        .expect("inspect-shaped JSON")
    }

    fn no_binds(flag: FlagChange) -> ContainerChange {
        ContainerChange {
            flag,
            extra_binds: vec![],
            reload: None,
        }
    }

    #[test]
    fn rke_shape_flag_added_to_entrypoint_and_nothing_else_changes() {
        let before = rke_inspect(false);
        let body = create_body(&before, &no_binds(FlagChange::Add)).expect("body");
        let after = rke_inspect(true);
        let cfg = after.config.as_ref().expect("config");
        assert_eq!(
            body.entrypoint, cfg.entrypoint,
            "flag appended to Entrypoint, order kept"
        );
        assert_eq!(body.cmd, None, "Cmd stays absent");
        assert_eq!(body.image, cfg.image);
        assert_eq!(body.env, cfg.env);
        let mut labels = cfg.labels.clone().expect("RKE's labels");
        labels.insert(
            CREATED_BY_LABEL.into(),
            format!("atrest {}", env!("CARGO_PKG_VERSION")),
        );
        assert_eq!(
            body.labels,
            Some(labels),
            "RKE's labels kept, atrest's added"
        );
        let (hc, want) = (
            body.host_config.expect("host config"),
            before.host_config.expect("host config"),
        );
        assert_eq!(hc.binds, want.binds);
        assert_eq!(hc.volumes_from, want.volumes_from);
        assert_eq!(hc.network_mode, want.network_mode);
        assert_eq!(hc.security_opt, want.security_opt);
        assert_eq!(hc.restart_policy, want.restart_policy);
    }

    #[test]
    fn rke_shape_flag_removed_from_entrypoint_and_never_duplicated() {
        let with = rke_inspect(true);
        let without = rke_inspect(false);
        let removed = create_body(&with, &no_binds(FlagChange::Remove)).expect("body");
        assert_eq!(
            removed.entrypoint,
            without.config.as_ref().and_then(|c| c.entrypoint.clone())
        );
        assert_eq!(removed.cmd, None);
        // Adding when present: the same Entrypoint, so no recreate is needed.
        let again = create_body(&with, &no_binds(FlagChange::Add)).expect("body");
        let entry = again.entrypoint.expect("entrypoint");
        assert_eq!(
            entry.iter().filter(|a| is_encryption_flag(a)).count(),
            1,
            "{entry:?}"
        );
        assert_eq!(
            Some(entry),
            with.config.as_ref().and_then(|c| c.entrypoint.clone())
        );
    }

    #[test]
    fn flag_found_where_it_is_and_rewritten_in_place() {
        // In the middle of RKE's Entrypoint (its flag order comes from a Go map): rewritten in place.
        let entry = v(&[
            "/opt/rke-tools/entrypoint.sh",
            "kube-apiserver",
            "--encryption-provider-config=/etc/kubernetes/ssl/encryption.yaml",
            "--v=2",
        ]);
        assert_eq!(
            changed_command(&entry, &[], FlagChange::Add),
            (entry.clone(), vec![])
        );
        assert_eq!(
            changed_command(&entry, &[], FlagChange::Remove).0,
            v(&["/opt/rke-tools/entrypoint.sh", "kube-apiserver", "--v=2"])
        );
        // In Cmd while the Entrypoint is the image's script: changed in Cmd, Entrypoint untouched.
        let entry = v(&["/opt/rke-tools/entrypoint.sh"]);
        let cmd = v(&[
            "kube-apiserver",
            "--encryption-provider-config",
            "/old.yaml",
            "--v=2",
        ]);
        let (e, c) = changed_command(&entry, &cmd, FlagChange::Add);
        assert_eq!(e, entry);
        assert_eq!(
            c,
            v(&[
                "kube-apiserver",
                "--encryption-provider-config=/etc/kubernetes/ssl/encryption.yaml",
                "--v=2"
            ])
        );
        // Absent, with arguments in Cmd: appended to Cmd, not to the Entrypoint.
        let (e, c) = changed_command(&entry, &v(&["kube-apiserver"]), FlagChange::Add);
        assert_eq!(e, entry);
        assert_eq!(c.len(), 2);
        // Present in both (a hand-edited container): one flag remains, at the first place.
        let entry = v(&["kube-apiserver", "--encryption-provider-config=/a.yaml"]);
        let cmd = v(&["--encryption-provider-config=/b.yaml", "--v=2"]);
        let (e, c) = changed_command(&entry, &cmd, FlagChange::Add);
        assert_eq!(
            e,
            v(&[
                "kube-apiserver",
                "--encryption-provider-config=/etc/kubernetes/ssl/encryption.yaml"
            ])
        );
        assert_eq!(c, v(&["--v=2"]));
        let (e, c) = changed_command(&entry, &cmd, FlagChange::Remove);
        assert_eq!((e, c), (v(&["kube-apiserver"]), v(&["--v=2"])));
    }

    #[test]
    fn rke_shape_recreate_decision_reads_the_entrypoint() {
        let info = |with| ApiserverInfo {
            id: "x".into(),
            image: "i".into(),
            entrypoint: rke_inspect(with)
                .config
                .and_then(|c| c.entrypoint)
                .unwrap_or_default(),
            cmd: vec![],
            binds: vec![],
            running: true,
            restarting: false,
            has_encryption_flag: with,
            has_reload_flag: false,
            created_by_atrest: false,
        };
        assert!(needs_recreate(&info(false), &no_binds(FlagChange::Add)));
        assert!(!needs_recreate(&info(true), &no_binds(FlagChange::Add)));
        assert!(needs_recreate(&info(true), &no_binds(FlagChange::Remove)));
        assert!(!needs_recreate(&info(false), &no_binds(FlagChange::Remove)));
    }
}
