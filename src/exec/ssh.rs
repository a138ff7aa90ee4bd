//! SSH connections to cluster nodes (optionally through the bastion), one reused connection per host.
//!
//! Host keys are always verified ([`crate::exec::known_hosts`]). Commands run through `sh -c` as the SSH user,
//! prefixed with `sudo -n` when that user is not root. Secret bytes only ever travel on a channel's stdin;
//! what comes back is capped in bytes ([`STDOUT_CAP`], [`STDERR_CAP`]). A user with no passwordless sudo (RKE's
//! usual docker-group user) gets root rights another way: [`Host::root_route`] says which, and
//! [`crate::exec::root`] takes it.

use crate::config::cluster::{ClusterConfig, Node};
use crate::exec::auth::{self, AuthError, Credentials};
use crate::exec::known_hosts::{HostKeyError, KnownHosts};
use russh::ChannelMsg;
use russh::client::{self, Handle};
use russh::keys::{Algorithm, PublicKeyOrCertificate};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Docker's default socket, used when a node sets no `docker_socket` (RKE's default too).
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// How to connect. `known_hosts = None` means `~/.ssh/known_hosts`.
#[derive(Clone, Debug)]
pub struct SshOptions {
    pub known_hosts: Option<PathBuf>,
    /// Trust-on-first-use: record unknown host keys instead of refusing them (`--accept-new-host-keys`).
    pub accept_new_host_keys: bool,
    /// Per host: TCP connect + key exchange + authentication.
    pub connect_timeout: Duration,
    /// Per remote command.
    pub command_timeout: Duration,
    /// The ssh-agent's socket, for logins with `ssh_agent_auth` (the CLI reads `$SSH_AUTH_SOCK`).
    pub agent_socket: Option<PathBuf>,
    /// The passphrase of encrypted private keys (the CLI reads [`auth::PASSPHRASE_ENV`]).
    pub key_passphrase: Option<crate::secret::SecretString>,
}

impl Default for SshOptions {
    fn default() -> Self {
        Self {
            known_hosts: None,
            accept_new_host_keys: false,
            connect_timeout: Duration::from_secs(20),
            command_timeout: Duration::from_secs(120),
            agent_socket: None,
            key_passphrase: None,
        }
    }
}

/// How commands on a node get root rights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootRoute {
    /// The SSH user is root.
    Root,
    /// The SSH user has passwordless sudo: `sudo -n sh -c …`.
    Sudo,
    /// No passwordless sudo: a short-lived container on the node's Docker engine, as RKE itself does everything
    /// (the user is in group `docker`).
    Container,
}

/// Which node an error is about: address plus `hostname_override` when set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeLabel {
    pub address: String,
    pub hostname: Option<String>,
}

impl NodeLabel {
    pub fn of(node: &Node) -> Self {
        Self {
            address: node.address.clone(),
            hostname: node.hostname_override.clone().filter(|h| !h.is_empty()),
        }
    }
}

impl fmt::Display for NodeLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.hostname {
            Some(h) => write!(f, "node {} ({h})", self.address),
            None => write!(f, "node {}", self.address),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("{node}: cannot reach {target}: {detail}")]
    Connect {
        node: NodeLabel,
        target: String,
        detail: String,
    },
    #[error("{node}: {source}")]
    HostKey {
        node: NodeLabel,
        #[source]
        source: Box<HostKeyError>,
    },
    #[error("{node}: {source}")]
    Auth {
        node: NodeLabel,
        #[source]
        source: Box<AuthError>,
    },
    #[error("{node}: timed out after {secs}s while {what}")]
    Timeout {
        node: NodeLabel,
        what: String,
        secs: u64,
    },
    #[error("{node}: SSH channel error while {what}: {detail}")]
    Channel {
        node: NodeLabel,
        what: String,
        detail: String,
    },
    #[error("{node}: invalid configuration: {detail}")]
    Config { node: NodeLabel, detail: String },
    /// The connection itself is gone (the node's sshd ended it, or the network did).
    #[error(
        "{node}: the SSH connection to it was lost (while {what}); rerun once the node answers SSH again"
    )]
    Lost { node: NodeLabel, what: String },
}

impl SshError {
    pub fn node(&self) -> &NodeLabel {
        match self {
            SshError::Connect { node, .. }
            | SshError::HostKey { node, .. }
            | SshError::Auth { node, .. }
            | SshError::Timeout { node, .. }
            | SshError::Channel { node, .. }
            | SshError::Config { node, .. }
            | SshError::Lost { node, .. } => node,
        }
    }
}

/// Errors from connecting to several nodes: every failing node is listed.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to {} node(s):\n{}", .0.len(), list(.0))]
pub struct ConnectErrors(pub Vec<SshError>);

fn list(errors: &[SshError]) -> String {
    errors
        .iter()
        .map(|e| format!("  - {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A remote command's result. `Debug` shows only the lengths: stdout may be a node's encryption config.
#[derive(Clone, Default)]
pub struct Output {
    /// Exit status; 255 when the command was killed by a signal or gave none.
    pub status: u32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Output")
            .field("status", &self.status)
            .field("stdout", &crate::secret::Withheld(self.stdout.len()))
            .field("stderr", &crate::secret::Withheld(self.stderr.len()))
            .finish()
    }
}

impl Output {
    pub fn success(&self) -> bool {
        self.status == 0
    }
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_string()
    }
}

/// Quote one word for a POSIX shell.
pub fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-=:,@+%".contains(&b))
    {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The command line actually sent: `sh -c '…'` for root, `sudo -n sh -c '…'` otherwise. sshd hands the line to
/// the user's login shell, which may not be a POSIX shell (fish, csh, a restricted shell): the script itself
/// is always run by `sh`, the login shell only starts it.
pub fn privileged_command(user: &str, script: &str) -> String {
    if user == "root" {
        format!("sh -c {}", shell_quote(script))
    } else {
        format!("sudo -n sh -c {}", shell_quote(script))
    }
}

/// The russh handler: verifies the server's host key against known_hosts.
pub struct ClientHandler {
    known_hosts: KnownHosts,
    host: String,
    port: u16,
    /// Why the key was refused, read back after the handshake fails.
    refusal: Arc<Mutex<Option<HostKeyError>>>,
}

impl client::Handler for ClientHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let result = match server_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                self.known_hosts.check(&self.host, self.port, key)
            }
            PublicKeyOrCertificate::Certificate(cert) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                self.known_hosts
                    .check_certificate(&self.host, self.port, cert, now)
            }
        };
        match result {
            Ok(()) => Ok(true),
            Err(e) => {
                if let Ok(mut slot) = self.refusal.lock() {
                    *slot = Some(e);
                }
                Ok(false)
            }
        }
    }
}

/// An authenticated connection to one node.
pub struct Host {
    label: NodeLabel,
    node: Node,
    user: String,
    handle: Handle<ClientHandler>,
    /// Keeps the bastion connection open while this host uses it.
    _bastion: Option<Arc<Handle<ClientHandler>>>,
    opts: SshOptions,
    /// Found out once, on first need ([`Host::root_route`]).
    root_route: tokio::sync::OnceCell<RootRoute>,
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Host")
            .field("node", &self.label.to_string())
            .field("user", &self.user)
            .finish()
    }
}

pub(crate) fn port_of(label: &NodeLabel, port: &Option<String>) -> Result<u16, SshError> {
    match port.as_deref().map(str::trim) {
        None | Some("") => Ok(22),
        Some(p) => p.parse::<u16>().map_err(|_| SshError::Config {
            node: label.clone(),
            detail: format!("port {p:?} is not a TCP port number"),
        }),
    }
}

/// `host_certificates`: also offer the OpenSSH host certificate algorithms, so a server that has a certificate
/// presents it (only when known_hosts trusts a CA for the host). `recorded`: the key types known_hosts records
/// for the host; when there are any, only those are offered as plain host keys, so a server with several host
/// keys presents a recorded one and a key of any other type can only be a changed key (see
/// [`crate::exec::known_hosts`]).
fn ssh_config(host_certificates: bool, recorded: &[Algorithm]) -> Arc<client::Config> {
    let mut preferred = russh::Preferred::default();
    if host_certificates {
        // The plain host key algorithms minus ssh-rsa (SHA-1), as certificate variants.
        preferred.host_key_certificates = preferred
            .key
            .iter()
            .filter(|a| !matches!(a, Algorithm::Rsa { hash: None }))
            .cloned()
            .collect::<Vec<_>>()
            .into();
    }
    let offered = offered_host_key_algorithms(&preferred.key, recorded);
    if !offered.is_empty() {
        preferred.key = offered.into();
    }
    Arc::new(client::Config {
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(15)),
        keepalive_max: 4,
        nodelay: true,
        preferred,
        ..Default::default()
    })
}

/// The host key algorithms of `all` (in its order) that verify keys of a `recorded` type; an RSA key serves
/// all three RSA signature algorithms. Empty when nothing is recorded (every type is offered then).
fn offered_host_key_algorithms(all: &[Algorithm], recorded: &[Algorithm]) -> Vec<Algorithm> {
    all.iter()
        .filter(|a| {
            recorded.iter().any(|r| match (a, r) {
                (Algorithm::Rsa { .. }, Algorithm::Rsa { .. }) => true,
                (a, r) => *a == r,
            })
        })
        .cloned()
        .collect()
}

/// Handshake + authentication over any stream, with host-key refusal turned into a readable error.
async fn handshake<S>(
    stream: S,
    label: &NodeLabel,
    host: &str,
    port: u16,
    creds: &Credentials,
    opts: &SshOptions,
) -> Result<Handle<ClientHandler>, SshError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let refusal = Arc::new(Mutex::new(None));
    let known_hosts = KnownHosts::new(opts.known_hosts.clone(), opts.accept_new_host_keys);
    let recorded = known_hosts.recorded_algorithms(host, port);
    let config = ssh_config(known_hosts.has_authorities(host, port), &recorded);
    let handler = ClientHandler {
        known_hosts: known_hosts.clone(),
        host: host.to_string(),
        port,
        refusal: refusal.clone(),
    };
    let mut handle = match client::connect_stream(config, stream, handler).await {
        Ok(h) => h,
        Err(e) => {
            if let Some(source) = refusal.lock().ok().and_then(|mut s| s.take()) {
                return Err(SshError::HostKey {
                    node: label.clone(),
                    source: Box::new(source),
                });
            }
            // A known host without a key of any recorded type: a changed key, not a transport problem.
            if let russh::Error::NoCommonAlgo {
                kind: russh::AlgorithmKind::Key,
                theirs,
                ..
            } = &e
                && !recorded.is_empty()
            {
                return Err(SshError::HostKey {
                    node: label.clone(),
                    source: Box::new(known_hosts.other_key_types(host, port, theirs)),
                });
            }
            return Err(SshError::Connect {
                node: label.clone(),
                target: crate::exec::known_hosts::host_pattern(host, port),
                detail: format!("SSH handshake failed: {e}"),
            });
        }
    };
    let secrets = auth::AuthSecrets {
        agent_socket: opts.agent_socket.as_deref(),
        key_passphrase: opts.key_passphrase.as_ref(),
    };
    auth::authenticate(&mut handle, creds, &secrets)
        .await
        .map_err(|source| SshError::Auth {
            node: label.clone(),
            source: Box::new(source),
        })?;
    Ok(handle)
}

/// Connect to the bastion host named in the cluster config, if any.
pub async fn connect_bastion(
    cluster: &ClusterConfig,
    opts: &SshOptions,
) -> Result<Option<Arc<Handle<ClientHandler>>>, SshError> {
    let Some(b) = cluster
        .bastion_host
        .as_ref()
        .filter(|b| !b.address.is_empty())
    else {
        return Ok(None);
    };
    let label = NodeLabel {
        address: b.address.clone(),
        hostname: Some("bastion".into()),
    };
    let port = port_of(&label, &b.port)?;
    let creds = Credentials::for_bastion(cluster, b);
    let fut = async {
        let tcp = tokio::net::TcpStream::connect((b.address.as_str(), port))
            .await
            .map_err(|e| SshError::Connect {
                node: label.clone(),
                target: crate::exec::known_hosts::host_pattern(&b.address, port),
                detail: e.to_string(),
            })?;
        let _ = tcp.set_nodelay(true);
        handshake(tcp, &label, &b.address, port, &creds, opts).await
    };
    let handle = tokio::time::timeout(opts.connect_timeout, fut)
        .await
        .map_err(|_| SshError::Timeout {
            node: label.clone(),
            what: "connecting to the bastion".into(),
            secs: opts.connect_timeout.as_secs(),
        })??;
    Ok(Some(Arc::new(handle)))
}

impl Host {
    /// Connect to `node`, through `bastion` when given.
    pub async fn connect(
        cluster: &ClusterConfig,
        node: &Node,
        bastion: Option<Arc<Handle<ClientHandler>>>,
        opts: &SshOptions,
    ) -> Result<Host, SshError> {
        let label = NodeLabel::of(node);
        let port = port_of(&label, &node.port)?;
        let creds = Credentials::for_node(cluster, node);
        let target = crate::exec::known_hosts::host_pattern(&node.address, port);
        let fut = async {
            match &bastion {
                Some(jump) => {
                    let channel = jump
                        .channel_open_direct_tcpip(
                            node.address.clone(),
                            port as u32,
                            "127.0.0.1",
                            0,
                        )
                        .await
                        .map_err(|e| SshError::Connect {
                            node: label.clone(),
                            target: format!("{target} via the bastion"),
                            detail: e.to_string(),
                        })?;
                    handshake(
                        channel.into_stream(),
                        &label,
                        &node.address,
                        port,
                        &creds,
                        opts,
                    )
                    .await
                }
                None => {
                    let tcp = tokio::net::TcpStream::connect((node.address.as_str(), port))
                        .await
                        .map_err(|e| SshError::Connect {
                            node: label.clone(),
                            target: target.clone(),
                            detail: e.to_string(),
                        })?;
                    let _ = tcp.set_nodelay(true);
                    handshake(tcp, &label, &node.address, port, &creds, opts).await
                }
            }
        };
        let handle = tokio::time::timeout(opts.connect_timeout, fut)
            .await
            .map_err(|_| SshError::Timeout {
                node: label.clone(),
                what: format!("connecting to {target}"),
                secs: opts.connect_timeout.as_secs(),
            })??;
        Ok(Host {
            label,
            node: node.clone(),
            user: creds.user,
            handle,
            _bastion: bastion,
            opts: opts.clone(),
            root_route: tokio::sync::OnceCell::new(),
        })
    }

    pub fn label(&self) -> &NodeLabel {
        &self.label
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn is_root(&self) -> bool {
        self.user == "root"
    }

    /// The node's Docker socket path on the node.
    pub fn docker_socket(&self) -> String {
        self.node
            .docker_socket
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_DOCKER_SOCKET.to_string())
    }

    pub(crate) fn handle(&self) -> &Handle<ClientHandler> {
        &self.handle
    }

    pub(crate) fn channel_error(&self, what: &str, e: impl fmt::Display) -> SshError {
        if self.handle.is_closed() {
            return SshError::Lost {
                node: self.label.clone(),
                what: what.to_string(),
            };
        }
        SshError::Channel {
            node: self.label.clone(),
            what: what.to_string(),
            detail: e.to_string(),
        }
    }

    /// How this node's commands get root rights: root, or `sudo -n true` succeeds (sudo), or neither (a
    /// container). Asked once per connection.
    pub async fn root_route(&self) -> Result<RootRoute, SshError> {
        self.root_route
            .get_or_try_init(|| async {
                if self.is_root() {
                    return Ok(RootRoute::Root);
                }
                let sudo = self.run("sudo -n true", "sudo -n true", &[]).await?;
                if sudo.success() {
                    return Ok(RootRoute::Sudo);
                }
                tracing::info!(
                    "{}: {} has no passwordless sudo; root rights through a container on the node's Docker engine",
                    self.label,
                    self.user
                );
                Ok(RootRoute::Container)
            })
            .await
            .copied()
    }

    /// Run `script` with root rights through SSH: as root, or with `sudo -n` for other users. For a user
    /// without sudo use [`crate::exec::root`], which works for every [`RootRoute`].
    pub async fn exec(&self, script: &str) -> Result<Output, SshError> {
        self.exec_with_stdin(script, &[]).await
    }

    /// [`Host::exec`], feeding `stdin` (the only way secret bytes reach a node).
    pub async fn exec_with_stdin(&self, script: &str, stdin: &[u8]) -> Result<Output, SshError> {
        let command = privileged_command(&self.user, script);
        self.run(&command, &first_words(script), stdin).await
    }

    /// The per-command timeout ([`SshOptions::command_timeout`]).
    pub fn command_timeout(&self) -> Duration {
        self.opts.command_timeout
    }

    /// Run `command` as sent (no sudo added), feeding `stdin`; `what` names it in errors.
    async fn run(&self, command: &str, what: &str, stdin: &[u8]) -> Result<Output, SshError> {
        // One line per command (its first words only: secrets go through stdin), so a test can count them.
        tracing::debug!(address = %self.label.address, "remote command `{what}` on {}", self.label);
        let fut = async {
            let mut channel =
                self.handle.channel_open_session().await.map_err(|e| {
                    self.channel_error(&format!("opening a session for `{what}`"), e)
                })?;
            channel
                .exec(true, command.as_bytes())
                .await
                .map_err(|e| self.channel_error(&format!("starting `{what}`"), e))?;
            if !stdin.is_empty() {
                // A sender waiting for window space is not woken when the connection dies; watch for that.
                tokio::select! {
                    sent = channel.data(stdin) => sent.map_err(|e| {
                        self.channel_error(&format!("sending input to `{what}`"), e)
                    })?,
                    () = self.closed() => {
                        return Err(self.channel_error(
                            &format!("sending input to `{what}`"),
                            "the connection closed",
                        ));
                    }
                }
            }
            channel
                .eof()
                .await
                .map_err(|e| self.channel_error(&format!("closing input of `{what}`"), e))?;
            let mut out = Output {
                status: 255,
                ..Default::default()
            };
            let mut got_status = false;
            let (mut stdout_cut, mut stderr_cut) = (false, false);
            while let Some(msg) = channel.wait().await {
                match msg {
                    ChannelMsg::Data { data } => {
                        stdout_cut |= !push_capped(&mut out.stdout, &data, STDOUT_CAP);
                    }
                    ChannelMsg::ExtendedData { data, ext: 1 } => {
                        stderr_cut |= !push_capped(&mut out.stderr, &data, STDERR_CAP);
                    }
                    ChannelMsg::ExitStatus { exit_status } => {
                        out.status = exit_status;
                        got_status = true;
                    }
                    ChannelMsg::ExitSignal { signal_name, .. } => {
                        out.stderr.extend_from_slice(
                            format!("killed by signal {signal_name:?}").as_bytes(),
                        );
                        got_status = true;
                    }
                    ChannelMsg::Failure => {
                        return Err(self.channel_error(
                            &format!("starting `{what}`"),
                            "the server refused exec",
                        ));
                    }
                    ChannelMsg::Close => break,
                    _ => {}
                }
            }
            if !got_status {
                return Err(self.channel_error(
                    &format!("running `{what}`"),
                    "the connection closed before the command finished",
                ));
            }
            if stdout_cut {
                return Err(self.channel_error(
                    &format!("running `{what}`"),
                    format!("its output exceeds {} MiB", STDOUT_CAP >> 20),
                ));
            }
            if stderr_cut {
                out.stderr.extend_from_slice(
                    format!(" [stderr cut at {} KiB]", STDERR_CAP >> 10).as_bytes(),
                );
            }
            Ok(out)
        };
        tokio::time::timeout(self.opts.command_timeout, fut)
            .await
            .map_err(|_| SshError::Timeout {
                node: self.label.clone(),
                what: format!("running `{what}`"),
                secs: self.opts.command_timeout.as_secs(),
            })?
    }

    /// Like [`Host::exec`], but a non-zero exit is an error carrying stderr.
    pub async fn exec_ok(&self, script: &str) -> Result<Output, SshError> {
        let out = self.exec(script).await?;
        if !out.success() {
            return Err(self.channel_error(
                &format!("running `{}`", first_words(script)),
                format!("exit status {}: {}", out.status, out.stderr_text()),
            ));
        }
        Ok(out)
    }

    /// Whether the SSH connection is gone (the node's sshd ended it, or the network did).
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Resolves once the SSH connection is gone.
    async fn closed(&self) {
        while !self.handle.is_closed() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Close the connection politely.
    pub async fn close(&self) {
        let _ = self
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
}

/// Most stdout a remote command may return: atrest reads small files (configs, certificates) this way, so
/// more means something is wrong, and memory must not grow with whatever a host sends.
pub const STDOUT_CAP: usize = 16 << 20;
/// Most stderr kept from a remote command (it only goes into error messages); the rest is dropped.
pub const STDERR_CAP: usize = 64 << 10;

/// Appends what fits of `data` to `buf` without letting it grow past `cap` bytes; false when some was dropped.
pub(crate) fn push_capped(buf: &mut Vec<u8>, data: &[u8], cap: usize) -> bool {
    let room = cap.saturating_sub(buf.len());
    buf.extend_from_slice(&data[..data.len().min(room)]);
    data.len() <= room
}

/// A short description of a script for error messages (never its stdin).
fn first_words(script: &str) -> String {
    let s: String = script
        .split_whitespace()
        .take(6)
        .collect::<Vec<_>>()
        .join(" ");
    if s.chars().count() > 80 {
        format!("{}…", s.chars().take(80).collect::<String>())
    } else {
        s
    }
}

/// Connect to every node, at most `max_parallel` at a time. Fails listing every node that failed.
pub async fn connect_all(
    cluster: &ClusterConfig,
    nodes: &[Node],
    opts: &SshOptions,
    max_parallel: usize,
) -> Result<Vec<Arc<Host>>, ConnectErrors> {
    let results = connect_each(cluster, nodes, opts, max_parallel)
        .await
        .map_err(|e| ConnectErrors(vec![e]))?;
    let mut hosts = Vec::new();
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(h) => hosts.push(h),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(hosts)
    } else {
        for h in &hosts {
            h.close().await;
        }
        Err(ConnectErrors(errors))
    }
}

/// Connect to every node (through the bastion if configured), at most `max_parallel` at a time; one result
/// per node, in order. `Err` only when the bastion itself cannot be reached.
pub async fn connect_each(
    cluster: &ClusterConfig,
    nodes: &[Node],
    opts: &SshOptions,
    max_parallel: usize,
) -> Result<Vec<Result<Arc<Host>, SshError>>, SshError> {
    use futures::StreamExt;
    let bastion = connect_bastion(cluster, opts).await?;
    Ok(futures::stream::iter(nodes.iter())
        .map(|node| {
            let bastion = bastion.clone();
            async move {
                Host::connect(cluster, node, bastion, opts)
                    .await
                    .map(Arc::new)
            }
        })
        .buffered(max_parallel.max(1))
        .collect()
        .await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_the_shell() {
        for word in [
            "plain",
            "",
            "it's",
            "a b",
            "$(rm -rf /)",
            "`x`",
            "back\\slash",
            "new\nline",
            "--flag=/a/b",
        ] {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", shell_quote(word)))
                .output()
                .expect("sh runs");
            assert_eq!(String::from_utf8_lossy(&out.stdout), word, "word {word:?}");
        }
    }

    #[test]
    fn sudo_only_for_non_root_and_sh_always() {
        assert_eq!(privileged_command("root", "id -u"), "sh -c 'id -u'");
        assert_eq!(
            privileged_command("ubuntu", "id -u"),
            "sudo -n sh -c 'id -u'"
        );
        let nested = privileged_command("ubuntu", "echo 'x'");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(nested.replace("sudo -n ", ""))
            .output()
            .expect("sh runs");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "x\n");
        // Root's line is for the login shell too: it must be one `sh -c` word whatever the script holds.
        let script = "a=1; for i in 1 2; do a=$((a+i)); done; echo \"$a\" 'q'";
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(privileged_command("root", script))
            .output()
            .expect("sh runs");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "4 q\n");
    }

    #[test]
    fn labels_name_address_and_hostname() {
        let n = Node {
            address: "10.0.0.1".into(),
            hostname_override: Some("cp-1".into()),
            ..Default::default()
        };
        assert_eq!(NodeLabel::of(&n).to_string(), "node 10.0.0.1 (cp-1)");
        let label = NodeLabel::of(&n);
        assert_eq!(port_of(&label, &Some("2222".into())).ok(), Some(2222));
        assert_eq!(port_of(&label, &None).ok(), Some(22));
        let err = port_of(&label, &Some("ssh".into())).expect_err("bad port");
        assert!(err.to_string().contains("node 10.0.0.1 (cp-1)"), "{err}");
    }

    #[test]
    fn a_known_host_is_offered_only_its_recorded_key_types() {
        use russh::keys::EcdsaCurve;
        let all = russh::Preferred::default().key.to_vec();
        assert_eq!(offered_host_key_algorithms(&all, &[]), vec![]);
        let p256 = Algorithm::Ecdsa {
            curve: EcdsaCurve::NistP256,
        };
        assert_eq!(
            offered_host_key_algorithms(&all, std::slice::from_ref(&p256)),
            vec![p256]
        );
        let rsa = offered_host_key_algorithms(&all, &[Algorithm::Rsa { hash: None }]);
        assert_eq!(rsa.len(), 3);
        assert!(rsa.iter().all(|a| matches!(a, Algorithm::Rsa { .. })));
        assert_eq!(
            offered_host_key_algorithms(&all, &[Algorithm::Ed25519, Algorithm::Rsa { hash: None }])
                .first(),
            Some(&Algorithm::Ed25519)
        );
        let config = ssh_config(false, &[Algorithm::Ed25519]);
        assert_eq!(config.preferred.key.to_vec(), vec![Algorithm::Ed25519]);
        assert_eq!(ssh_config(false, &[]).preferred.key.len(), all.len());
    }

    #[test]
    fn debug_of_output_shows_lengths_only() {
        let out = Output {
            status: 0,
            stdout: b"secret: c2VjcmV0LWtleQ==".to_vec(),
            stderr: vec![],
        };
        let text = format!("{out:?}");
        assert!(
            !text.contains("c2VjcmV0") && !text.contains("115, 101"),
            "{text}"
        );
        assert!(text.contains("stdout: <24 bytes, not shown>"), "{text}");
    }

    #[test]
    fn remote_output_is_capped_in_bytes() {
        let mut buf = Vec::new();
        assert!(push_capped(&mut buf, &[1; 6], 10));
        assert!(push_capped(&mut buf, &[2; 4], 10));
        assert!(!push_capped(&mut buf, &[3; 1], 10));
        assert_eq!(buf.len(), 10);
        let mut buf = vec![0; 8];
        assert!(!push_capped(&mut buf, &[9; 5], 10));
        assert_eq!(buf, [0, 0, 0, 0, 0, 0, 0, 0, 9, 9]);
        const { assert!(STDOUT_CAP >= 1 << 20 && STDERR_CAP <= 1 << 20) };
    }
}
