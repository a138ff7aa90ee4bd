//! RKE's `cluster.yml`: the fields atrest uses; every other field is accepted and ignored.

use crate::config::encryption::{self, EncryptionConfiguration};
use crate::config::error::{ConfigError, Diagnostic, Position, sort_diagnostics};
use crate::config::gofmt;
use crate::config::yaml_pos::{self, NodeKind, SourceMap};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// RKE's default SSH port.
pub const DEFAULT_SSH_PORT: &str = "22";
/// RKE's default Docker socket on a node.
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";
/// RKE's default top-level `ssh_key_path`.
pub const DEFAULT_SSH_KEY_PATH: &str = "~/.ssh/id_rsa";
/// The roles RKE knows.
pub const ROLES: [&str; 3] = ["controlplane", "etcd", "worker"];
/// Where the custom EncryptionConfiguration sits in cluster.yml.
pub const CUSTOM_CONFIG_PATH: &str = "services.kube-api.secrets_encryption_config.custom_config";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterConfig {
    #[serde(deserialize_with = "null_as_default")]
    pub cluster_name: String,
    #[serde(deserialize_with = "null_as_default")]
    pub nodes: Vec<Node>,
    pub ssh_key_path: Option<String>,
    pub ssh_cert_path: Option<String>,
    pub ssh_agent_auth: bool,
    pub bastion_host: Option<BastionHost>,
    pub prefix_path: Option<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub services: Services,
    /// Positions of every field in the file this came from (set by [`load`]/[`parse`]).
    #[serde(skip)]
    pub source: Option<Arc<SourceMap>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Node {
    #[serde(deserialize_with = "null_as_default")]
    pub address: String,
    /// RKE types the port as a string; a number is accepted too.
    #[serde(deserialize_with = "string_or_number")]
    pub port: Option<String>,
    pub internal_address: Option<String>,
    pub user: Option<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub role: Vec<String>,
    pub hostname_override: Option<String>,
    pub ssh_key: Option<crate::secret::SecretString>,
    pub ssh_key_path: Option<String>,
    pub ssh_cert: Option<String>,
    pub ssh_cert_path: Option<String>,
    pub ssh_agent_auth: Option<bool>,
    pub docker_socket: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BastionHost {
    #[serde(deserialize_with = "null_as_default")]
    pub address: String,
    #[serde(deserialize_with = "string_or_number")]
    pub port: Option<String>,
    pub user: Option<String>,
    pub ssh_agent_auth: Option<bool>,
    pub ssh_key: Option<crate::secret::SecretString>,
    pub ssh_key_path: Option<String>,
    pub ssh_cert: Option<String>,
    pub ssh_cert_path: Option<String>,
    pub ignore_proxy_env_vars: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Services {
    #[serde(rename = "kube-api", deserialize_with = "null_as_default")]
    pub kube_api: KubeApi,
    #[serde(deserialize_with = "null_as_default")]
    pub etcd: Etcd,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct KubeApi {
    /// Values may be written as numbers or booleans; they are kept as text.
    #[serde(deserialize_with = "scalar_map")]
    pub extra_args: BTreeMap<String, String>,
    #[serde(deserialize_with = "null_as_default")]
    pub extra_binds: Vec<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub extra_env: Vec<String>,
    pub secrets_encryption_config: Option<SecretsEncryptionConfig>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SecretsEncryptionConfig {
    pub enabled: bool,
    pub custom_config: Option<EncryptionConfiguration>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Etcd {
    /// Kept as raw YAML: atrest reads only what snapshots need from it.
    pub backup_config: Option<serde_yaml_ng::Value>,
}

/// A node's `port` is not a usable TCP port.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("node {node}: invalid SSH port {value:?}: expected a number from 1 to 65535")]
pub struct InvalidPort {
    pub node: String,
    pub value: String,
}

fn bad_port(value: &str) -> String {
    format!(
        "invalid port {}: expected a number from 1 to 65535",
        gofmt::quote(value)
    )
}

fn parse_port(value: &str) -> Option<u16> {
    value.trim().parse::<u16>().ok().filter(|p| *p != 0)
}

impl Node {
    /// The SSH port (`port`, default 22).
    pub fn ssh_port(&self) -> Result<u16, InvalidPort> {
        let value = self
            .port
            .as_deref()
            .filter(|p| !p.is_empty())
            .unwrap_or(DEFAULT_SSH_PORT);
        parse_port(value).ok_or_else(|| InvalidPort {
            node: self.display_name().to_string(),
            value: value.to_string(),
        })
    }

    /// The Docker socket path on the node (`docker_socket`, default `/var/run/docker.sock`).
    pub fn docker_socket(&self) -> &str {
        self.docker_socket
            .as_deref()
            .filter(|s| !s.is_empty())
            .unwrap_or(DEFAULT_DOCKER_SOCKET)
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.role.iter().any(|r| r == role)
    }

    pub fn is_controlplane(&self) -> bool {
        self.has_role("controlplane")
    }

    pub fn is_etcd(&self) -> bool {
        self.has_role("etcd")
    }

    pub fn is_worker(&self) -> bool {
        self.has_role("worker")
    }

    /// `hostname_override` when set, else `address`: the name RKE shows for the node.
    pub fn display_name(&self) -> &str {
        self.hostname_override
            .as_deref()
            .filter(|h| !h.is_empty())
            .unwrap_or(&self.address)
    }

    /// The private key file to use for this node: its own `ssh_key_path`, else the cluster's.
    pub fn ssh_key_path<'a>(&'a self, cluster: &'a ClusterConfig) -> &'a str {
        self.ssh_key_path
            .as_deref()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| cluster.ssh_key_path())
    }
}

impl ClusterConfig {
    /// `prefix_path` without a trailing `/` (empty when unset or `/`); RKE's files live under
    /// `<prefix_path>/etc/kubernetes`.
    pub fn prefix_path(&self) -> &str {
        self.prefix_path
            .as_deref()
            .unwrap_or("")
            .trim_end_matches('/')
    }

    /// Top-level `ssh_key_path` (default `~/.ssh/id_rsa`).
    pub fn ssh_key_path(&self) -> &str {
        self.ssh_key_path
            .as_deref()
            .filter(|p| !p.is_empty())
            .unwrap_or(DEFAULT_SSH_KEY_PATH)
    }

    pub fn controlplanes(&self) -> Vec<&Node> {
        self.nodes.iter().filter(|n| n.is_controlplane()).collect()
    }

    pub fn etcd_nodes(&self) -> Vec<&Node> {
        self.nodes.iter().filter(|n| n.is_etcd()).collect()
    }

    /// `services.kube-api.secrets_encryption_config.enabled`.
    pub fn encryption_enabled(&self) -> bool {
        self.services
            .kube_api
            .secrets_encryption_config
            .as_ref()
            .is_some_and(|s| s.enabled)
    }

    /// A `custom_config` is present but `enabled` is false, so it has no effect (worth a warning).
    pub fn custom_config_ignored(&self) -> bool {
        self.services
            .kube_api
            .secrets_encryption_config
            .as_ref()
            .is_some_and(|s| !s.enabled && s.custom_config.is_some())
    }

    /// The file name used in messages (`cluster.yml` when not loaded from a file).
    pub fn origin(&self) -> &str {
        self.source
            .as_ref()
            .map_or("cluster.yml", |s| s.origin.as_str())
    }
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A scalar kept as its text: `22` and `"22"` both give `"22"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Str(String),
    Int(i64),
    Uint(u64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    fn into_text(self) -> String {
        match self {
            Scalar::Str(s) => s,
            Scalar::Int(n) => n.to_string(),
            Scalar::Uint(n) => n.to_string(),
            Scalar::Float(n) => n.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Port {
        Str(String),
        Int(i64),
    }
    Ok(Option::<Port>::deserialize(d)
        .map_err(|_| serde::de::Error::custom("invalid type: expected a port number or a string"))?
        .map(|p| match p {
            Port::Str(s) => s,
            Port::Int(n) => n.to_string(),
        }))
}

fn scalar_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let map = Option::<BTreeMap<String, Option<Scalar>>>::deserialize(d)
        .map_err(|_| {
            serde::de::Error::custom("invalid type: expected a map of flag names to values")
        })?
        .unwrap_or_default();
    Ok(map
        .into_iter()
        .map(|(k, v)| (k, v.map(Scalar::into_text).unwrap_or_default()))
        .collect())
}

/// Reads and checks an RKE cluster.yml. Unknown fields are ignored; problems are reported all at once,
/// each with `file:line:column`.
pub fn load(path: &Path) -> Result<ClusterConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

/// [`load`] for text already in memory; `origin` names it in messages.
pub fn parse(text: &str, origin: &str) -> Result<ClusterConfig, ConfigError> {
    let diag = |position: Option<Position>, message: String| Diagnostic {
        origin: origin.to_string(),
        position,
        message,
    };
    let root = yaml_pos::parse(text)
        .map_err(|e| ConfigError::Invalid(vec![diag(Some(e.pos), e.message)]))?;
    let root = match root {
        Some(r) if matches!(r.kind, NodeKind::Map(_)) => r,
        Some(r) if !r.is_null() => {
            return Err(ConfigError::Invalid(vec![diag(
                Some(r.pos),
                "expected a mapping of cluster settings (nodes:, services:, …) at the top level"
                    .into(),
            )]));
        }
        _ => {
            return Err(ConfigError::Invalid(vec![diag(
                None,
                "the file holds no cluster configuration".into(),
            )]));
        }
    };
    let map = SourceMap::new(origin, Some(&root));

    // The custom config is decoded strictly, as kube-apiserver will decode the file made from it.
    let custom = [
        "services",
        "kube-api",
        "secrets_encryption_config",
        "custom_config",
    ]
    .iter()
    .try_fold(&root, |node, key| node.get(key))
    .filter(|n| !n.is_null());
    if let Some(custom) = custom {
        if let Some(d) = encryption::type_meta_diagnostic(custom, origin) {
            return Err(ConfigError::Invalid(vec![d]));
        }
        let strict = encryption::strict_diagnostics(custom, origin);
        if !strict.is_empty() {
            return Err(ConfigError::Invalid(strict));
        }
    }

    let mut config: ClusterConfig = serde_yaml_ng::from_str(text).map_err(|e| {
        let (pos, msg) = encryption::yaml_error(&e);
        ConfigError::Invalid(vec![diag(pos, msg)])
    })?;
    config.source = Some(Arc::new(map));

    let mut diags = cluster_diagnostics(&config);
    if let Some(sec) = &config.services.kube_api.secrets_encryption_config
        && let (true, Some(custom)) = (sec.enabled, &sec.custom_config)
    {
        diags.extend(custom_config_diagnostics(custom, &config));
    }
    sort_diagnostics(&mut diags);
    if diags.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid(diags))
    }
}

/// Decode-time and validation problems of the custom config, positioned in cluster.yml.
pub(crate) fn custom_config_diagnostics(
    custom: &EncryptionConfiguration,
    config: &ClusterConfig,
) -> Vec<Diagnostic> {
    let fallback = SourceMap::new(config.origin(), None);
    let map = config.source.as_deref().unwrap_or(&fallback);
    if let Err(message) = encryption::type_meta_error(&custom.api_version, &custom.kind) {
        return vec![Diagnostic {
            origin: map.origin.clone(),
            position: map.position(CUSTOM_CONFIG_PATH),
            message: format!("custom_config: {message}"),
        }];
    }
    let timeouts = encryption::timeout_errors(custom, CUSTOM_CONFIG_PATH, map);
    if !timeouts.is_empty() {
        return timeouts;
    }
    encryption::semantic_diagnostics(custom, map, CUSTOM_CONFIG_PATH)
}

/// The cluster-level rules atrest needs before it can connect anywhere.
fn cluster_diagnostics(config: &ClusterConfig) -> Vec<Diagnostic> {
    let fallback = SourceMap::new(config.origin(), None);
    let map = config.source.as_deref().unwrap_or(&fallback);
    let mut diags = Vec::new();
    let mut push = |path: &str, message: String| {
        diags.push(Diagnostic {
            origin: map.origin.clone(),
            position: map.position(path),
            message: format!("{path}: {message}"),
        })
    };
    if config.nodes.is_empty() {
        push("nodes", "at least one node is required".into());
    } else if !config.nodes.iter().any(Node::is_controlplane) {
        push(
            "nodes",
            "at least one node must have the controlplane role".into(),
        );
    }
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, node) in config.nodes.iter().enumerate() {
        let at = |f: &str| format!("nodes[{i}].{f}");
        if node.address.trim().is_empty() {
            push(&at("address"), "a node needs an address".into());
        } else if let Some(first) = seen.get(node.address.as_str()) {
            push(
                &at("address"),
                format!(
                    "address {} is already used by nodes[{first}]",
                    gofmt::quote(&node.address)
                ),
            );
        } else {
            seen.insert(&node.address, i);
        }
        for (j, role) in node.role.iter().enumerate() {
            if !ROLES.contains(&role.as_str()) {
                push(
                    &format!("nodes[{i}].role[{j}]"),
                    format!(
                        "unknown role {}; expected controlplane, etcd or worker",
                        gofmt::quote(role)
                    ),
                );
            }
        }
        if let Some(port) = node.port.as_deref().filter(|p| !p.is_empty())
            && parse_port(port).is_none()
        {
            push(&at("port"), bad_port(port));
        }
    }
    if let Some(port) = config
        .bastion_host
        .as_ref()
        .and_then(|b| b.port.as_deref())
        .filter(|p| !p.is_empty())
        && parse_port(port).is_none()
    {
        push("bastion_host.port", bad_port(port));
    }
    diags
}
