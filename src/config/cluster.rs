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
/// Where kube-apiserver keeps its objects in etcd unless told otherwise (RKE's `EtcdPathPrefix`).
pub const DEFAULT_ETCD_PREFIX: &str = "/registry";
/// The encryption config path inside the kube-apiserver container (RKE's `EncryptionProviderFilePath`).
pub const DEFAULT_ENCRYPTION_CONFIG_IN_CONTAINER: &str = "/etc/kubernetes/ssl/encryption.yaml";
/// The kube-apiserver flag (as an `extra_args` key) that makes it reload the encryption config by itself.
pub const RELOAD_ARG: &str = "encryption-provider-config-automatic-reload";

/// The kube-apiserver flags (as `extra_args` keys) that move where atrest looks.
pub const ETCD_PREFIX_ARG: &str = "etcd-prefix";
pub const ENCRYPTION_CONFIG_ARG: &str = "encryption-provider-config";
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
    #[serde(deserialize_with = "yaml11_bool")]
    pub ssh_agent_auth: bool,
    pub bastion_host: Option<BastionHost>,
    pub prefix_path: Option<String>,
    /// RKE's `rotate_encryption_key: true`: `rke up` (and so `atrest up`) rotates the managed key on every run
    /// while it is set.
    #[serde(deserialize_with = "yaml11_bool")]
    pub rotate_encryption_key: bool,
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
    #[serde(deserialize_with = "yaml11_opt_bool")]
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
    #[serde(deserialize_with = "yaml11_opt_bool")]
    pub ssh_agent_auth: Option<bool>,
    pub ssh_key: Option<crate::secret::SecretString>,
    pub ssh_key_path: Option<String>,
    pub ssh_cert: Option<String>,
    pub ssh_cert_path: Option<String>,
    #[serde(deserialize_with = "yaml11_opt_bool")]
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
    #[serde(deserialize_with = "yaml11_bool")]
    pub enabled: bool,
    pub custom_config: Option<EncryptionConfiguration>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Etcd {
    /// Kept as raw YAML: atrest reads only what snapshots need from it.
    pub backup_config: Option<serde_yaml_ng::Value>,
    /// External etcd (no etcd nodes): its client URLs. kube-apiserver then stores under `path`.
    #[serde(deserialize_with = "null_as_default")]
    pub external_urls: Vec<String>,
    /// The etcd prefix of an external etcd (RKE requires it with `external_urls`).
    pub path: Option<String>,
    /// External etcd's CA, client certificate and key (PEM), as RKE reads them.
    pub ca_cert: Option<String>,
    pub cert: Option<String>,
    pub key: Option<crate::secret::SecretString>,
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

    /// Whether etcd is external (`services.etcd.external_urls`), so no node has the etcd role.
    pub fn external_etcd(&self) -> bool {
        !self.services.etcd.external_urls.is_empty()
    }

    /// Where kube-apiserver keeps its objects in etcd, as RKE builds `--etcd-prefix`: `extra_args.etcd-prefix`,
    /// else `services.etcd.path` with external etcd, else `/registry`.
    pub fn etcd_prefix(&self) -> String {
        if let Some(p) = self.services.kube_api.extra_args.get(ETCD_PREFIX_ARG) {
            return p.clone();
        }
        match &self.services.etcd.path {
            Some(p) if self.external_etcd() => p.clone(),
            _ => DEFAULT_ETCD_PREFIX.to_string(),
        }
    }

    /// `extra_args.encryption-provider-config`, when cluster.yml pins the flag itself: RKE then puts it on
    /// kube-apiserver's command line whatever `enabled` says, so atrest neither adds nor removes it.
    pub fn pinned_encryption_config(&self) -> Option<&str> {
        self.services
            .kube_api
            .extra_args
            .get(ENCRYPTION_CONFIG_ARG)
            .map(String::as_str)
    }

    /// cluster.yml asks kube-apiserver to reload its encryption config by itself:
    /// `extra_args.encryption-provider-config-automatic-reload` is a true value (Go's bool syntax).
    pub fn reload_wanted(&self) -> bool {
        self.services
            .kube_api
            .extra_args
            .get(RELOAD_ARG)
            .is_some_and(|v| matches!(v.as_str(), "1" | "t" | "T" | "true" | "TRUE" | "True"))
    }

    /// The encryption config's path inside the kube-apiserver container.
    pub fn encryption_config_in_container(&self) -> &str {
        self.pinned_encryption_config()
            .unwrap_or(DEFAULT_ENCRYPTION_CONFIG_IN_CONTAINER)
    }

    /// The host path of the encryption config on a node whose `/etc/kubernetes` is `kubernetes_dir` on the
    /// host: the container path mapped through kube-apiserver's binds (`<prefix>/etc/kubernetes:/etc/kubernetes`
    /// and `extra_binds`, the deepest match wins). `Err` says why it cannot be mapped.
    pub fn encryption_config_host_path(&self, kubernetes_dir: &str) -> Result<String, String> {
        host_path(
            self.encryption_config_in_container(),
            kubernetes_dir,
            &self.services.kube_api.extra_binds,
        )
    }

    /// The file name used in messages (`cluster.yml` when not loaded from a file).
    pub fn origin(&self) -> &str {
        self.source
            .as_ref()
            .map_or("cluster.yml", |s| s.origin.as_str())
    }
}

/// Maps a path inside the kube-apiserver container to the host through its binds (`host:container[:opts]`).
fn host_path(
    container: &str,
    kubernetes_dir: &str,
    extra_binds: &[String],
) -> Result<String, String> {
    if !container.starts_with('/') {
        return Err(format!(
            "{} is not an absolute path",
            gofmt::quote(container)
        ));
    }
    let mut binds: Vec<(String, String)> =
        vec![(kubernetes_dir.to_string(), "/etc/kubernetes".to_string())];
    for b in extra_binds {
        let mut parts = b.split(':');
        if let (Some(h), Some(c)) = (parts.next(), parts.next()) {
            binds.push((
                h.trim_end_matches('/').to_string(),
                c.trim_end_matches('/').to_string(),
            ));
        }
    }
    binds
        .iter()
        .filter(|(_, c)| !c.is_empty() && (container == c || container.starts_with(&format!("{c}/"))))
        .max_by_key(|(_, c)| c.len())
        .map(|(h, c)| format!("{h}{}", &container[c.len()..]))
        .ok_or_else(|| {
            format!(
                "{} is not inside a directory kube-apiserver gets from the host (/etc/kubernetes or an \
                 extra_binds entry), so atrest cannot deliver the file there",
                gofmt::quote(container)
            )
        })
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `port: 22` and `port: "22"` both give `Some("22")`; anything else is a type error that
/// serde_yaml_ng reports with its position.
fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct PortVisitor;
    impl<'de> serde::de::Visitor<'de> for PortVisitor {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a port number or a string")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(PortVisitor)
}

/// RKE decodes cluster.yml with Go's YAML 1.1 rules, where `yes`/`no`/`on`/`off`/`y`/`n` are booleans.
fn yaml11_opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    struct BoolVisitor;
    impl<'de> serde::de::Visitor<'de> for BoolVisitor {
        type Value = Option<bool>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a boolean (true/false, yes/no, on/off)")
        }
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            match v {
                "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" | "true" | "True"
                | "TRUE" => Ok(Some(true)),
                "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" | "false" | "False"
                | "FALSE" => Ok(Some(false)),
                _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
            }
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(BoolVisitor)
}

fn yaml11_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(yaml11_opt_bool(d)?.unwrap_or(false))
}

/// `extra_args` values are flags' text; numbers and booleans are kept as written.
fn scalar_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    use serde_yaml_ng::Value;
    let map = Option::<BTreeMap<String, Value>>::deserialize(d)?.unwrap_or_default();
    map.into_iter()
        .map(|(k, v)| {
            let text = match v {
                Value::String(s) => s,
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                Value::Null => String::new(),
                _ => {
                    return Err(serde::de::Error::custom(format!(
                        "extra_args.{k}: expected a string value"
                    )));
                }
            };
            Ok((k, text))
        })
        .collect()
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
        .map_err(|e| ConfigError::Invalid(vec![encryption::syntax_diagnostic(text, origin, e)]))?;
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
    check_nodes(config, &mut push);
    check_external_etcd(config, &mut push);
    check_kube_api_args(config, &mut push);
    check_rotate_request(config, &mut push);
    check_bastion(config, &mut push);
    diags
}

/// What [`cluster_diagnostics`]'s checks report through: a YAML path and the message for it.
type Report<'a> = dyn FnMut(&str, String) + 'a;

/// `nodes`: at least one controlplane; each node with a unique address, known roles, a valid port and a user.
fn check_nodes(config: &ClusterConfig, push: &mut Report) {
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
    for (i, node) in config.nodes.iter().enumerate() {
        if node.user.as_deref().is_none_or(|u| u.trim().is_empty()) {
            push(
                &format!("nodes[{i}].user"),
                format!(
                    "a node needs its SSH user (RKE refuses it too: \"User for host ({}) is not provided\")",
                    i + 1
                ),
            );
        }
    }
}

/// `services.etcd` with `external_urls`: no etcd nodes beside it, and its certificates and path given.
fn check_external_etcd(config: &ClusterConfig, push: &mut Report) {
    let etcd = &config.services.etcd;
    if config.external_etcd() {
        if config.nodes.iter().any(Node::is_etcd) {
            push(
                "services.etcd.external_urls",
                "a cluster can't have both internal and external etcd (nodes with the etcd role and external_urls)"
                    .into(),
            );
        }
        for (field, empty) in [
            ("ca_cert", etcd.ca_cert.as_deref().is_none_or(str::is_empty)),
            ("cert", etcd.cert.as_deref().is_none_or(str::is_empty)),
            (
                "key",
                etcd.key.as_ref().is_none_or(|k| k.expose().is_empty()),
            ),
            ("path", etcd.path.as_deref().is_none_or(str::is_empty)),
        ] {
            if empty {
                push(
                    &format!("services.etcd.{field}"),
                    "external etcd (services.etcd.external_urls) needs it; RKE refuses it too"
                        .into(),
                );
            }
        }
    }
}

/// `services.kube-api.extra_args` atrest depends on: a pinned encryption config path and the etcd prefix.
fn check_kube_api_args(config: &ClusterConfig, push: &mut Report) {
    let args = &config.services.kube_api.extra_args;
    if let Some(path) = args.get(ENCRYPTION_CONFIG_ARG) {
        let at = format!("services.kube-api.extra_args.{ENCRYPTION_CONFIG_ARG}");
        if let Err(why) = host_path(
            path,
            "/etc/kubernetes",
            &config.services.kube_api.extra_binds,
        ) {
            push(&at, why);
        } else if !config.encryption_enabled() {
            push(
                &at,
                "pins kube-apiserver's --encryption-provider-config while secrets_encryption_config.enabled is \
                 false: kube-apiserver would not start without the file; remove the extra arg or enable encryption"
                    .into(),
            );
        }
    }
    if let Some(prefix) = args.get(ETCD_PREFIX_ARG)
        && !prefix.starts_with('/')
    {
        push(
            &format!("services.kube-api.extra_args.{ETCD_PREFIX_ARG}"),
            format!(
                "{} must be an absolute etcd key prefix (like /registry)",
                gofmt::quote(prefix)
            ),
        );
    }
}

/// `rotate_encryption_key: true` needs managed encryption enabled.
fn check_rotate_request(config: &ClusterConfig, push: &mut Report) {
    if config.rotate_encryption_key {
        let sec = config.services.kube_api.secrets_encryption_config.as_ref();
        if !config.encryption_enabled() {
            push(
                "rotate_encryption_key",
                "needs secrets_encryption_config.enabled: true (there is no key to rotate)".into(),
            );
        } else if sec.is_some_and(|s| s.custom_config.is_some()) {
            push(
                "rotate_encryption_key",
                "key rotation is not supported with a custom_config (RKE refuses it too): rotate by editing \
                 custom_config"
                    .into(),
            );
        }
    }
}

/// `bastion_host.port`, when given, is a port.
fn check_bastion(config: &ClusterConfig, push: &mut Report) {
    if let Some(port) = config
        .bastion_host
        .as_ref()
        .and_then(|b| b.port.as_deref())
        .filter(|p| !p.is_empty())
        && parse_port(port).is_none()
    {
        push("bastion_host.port", bad_port(port));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str =
        "nodes:\n  - address: 10.0.0.1\n    role: [controlplane]\n    user: rke\n";

    #[test]
    fn defaults_are_rke_defaults() {
        let c = parse(MINIMAL, "cluster.yml").unwrap();
        let n = &c.nodes[0];
        assert_eq!(n.ssh_port(), Ok(22));
        assert_eq!(n.docker_socket(), "/var/run/docker.sock");
        assert_eq!(n.user.as_deref(), Some("rke"));
        assert_eq!(c.ssh_key_path(), "~/.ssh/id_rsa");
        assert_eq!(n.ssh_key_path(&c), "~/.ssh/id_rsa");
        assert_eq!(c.prefix_path(), "");
        assert_eq!(n.display_name(), "10.0.0.1");
        assert!(!c.encryption_enabled());
    }

    #[test]
    fn port_accepts_string_or_number() {
        for port in ["2222", "\"2222\"", "'2222'"] {
            let text = format!(
                "nodes:\n  - address: a\n    port: {port}\n    role: [controlplane]\n    user: rke\n"
            );
            let c = parse(&text, "cluster.yml").unwrap();
            assert_eq!(c.nodes[0].port.as_deref(), Some("2222"));
            assert_eq!(c.nodes[0].ssh_port(), Ok(2222));
        }
    }

    #[test]
    fn unknown_fields_are_ignored_everywhere() {
        let text = "kubernetes_version: v1.27.16\naddons: |\n  ---\n  kind: Namespace\nnodes:\n  - address: a\n    role: [controlplane, etcd, worker]\n    user: rke\n    labels: {x: y}\n    taints: [{key: k, value: v, effect: NoSchedule}]\nservices:\n  kube-api:\n    pod_security_policy: false\n    secrets_encryption_config:\n      enabled: true\n  kubelet:\n    extra_args: {max-pods: 250}\nnetwork: {plugin: canal}\n";
        let c = parse(text, "cluster.yml").unwrap();
        assert!(c.encryption_enabled());
        assert_eq!(c.etcd_nodes().len(), 1);
    }

    #[test]
    fn helpers_pick_roles_names_and_paths() {
        let text = "ssh_key_path: /keys/default\nprefix_path: /opt/rke/\nnodes:\n  - address: 10.0.0.1\n    hostname_override: cp-1\n    role: [controlplane, etcd]\n    user: rke\n    docker_socket: /run/docker.sock\n  - address: 10.0.0.2\n    role: [etcd]\n    user: rke\n    ssh_key_path: /keys/etcd\n  - address: 10.0.0.3\n    role: [worker]\n    user: rke\n";
        let c = parse(text, "cluster.yml").unwrap();
        let names: Vec<&str> = c.controlplanes().iter().map(|n| n.display_name()).collect();
        assert_eq!(names, ["cp-1"]);
        let etcd: Vec<&str> = c.etcd_nodes().iter().map(|n| n.address.as_str()).collect();
        assert_eq!(etcd, ["10.0.0.1", "10.0.0.2"]);
        assert_eq!(c.prefix_path(), "/opt/rke");
        assert_eq!(c.nodes[0].docker_socket(), "/run/docker.sock");
        assert_eq!(c.nodes[0].ssh_key_path(&c), "/keys/default");
        assert_eq!(c.nodes[1].ssh_key_path(&c), "/keys/etcd");
        assert!(c.nodes[2].is_worker() && !c.nodes[2].is_controlplane());
    }

    #[test]
    fn booleans_follow_yaml_1_1_like_rke() {
        for (word, value) in [
            ("yes", true),
            ("on", true),
            ("true", true),
            ("no", false),
            ("Off", false),
            ("false", false),
        ] {
            let text = format!(
                "ssh_agent_auth: {word}\n{MINIMAL}services:\n  kube-api:\n    secrets_encryption_config:\n      enabled: {word}\n"
            );
            let c = parse(&text, "cluster.yml").unwrap();
            assert_eq!(
                (c.ssh_agent_auth, c.encryption_enabled()),
                (value, value),
                "{word}"
            );
        }
    }

    #[test]
    fn extra_args_keep_scalars_as_text() {
        let text = format!(
            "{MINIMAL}services:\n  kube-api:\n    extra_args:\n      v: 2\n      profiling: false\n      audit-log-path: /var/log/audit.log\n"
        );
        let c = parse(&text, "cluster.yml").unwrap();
        let args = &c.services.kube_api.extra_args;
        assert_eq!(args["v"], "2");
        assert_eq!(args["profiling"], "false");
        assert_eq!(args["audit-log-path"], "/var/log/audit.log");
    }

    #[test]
    fn ssh_port_error_names_the_node() {
        let node = Node {
            address: "10.0.0.9".into(),
            port: Some("x".into()),
            ..Default::default()
        };
        assert_eq!(
            node.ssh_port().unwrap_err().to_string(),
            "node 10.0.0.9: invalid SSH port \"x\": expected a number from 1 to 65535"
        );
    }

    #[test]
    fn custom_config_is_ignored_while_disabled() {
        // Even an invalid custom config is not an error while disabled, only a warning flag.
        let text = format!(
            "{MINIMAL}services:\n  kube-api:\n    secrets_encryption_config:\n      enabled: false\n      custom_config:\n        apiVersion: apiserver.config.k8s.io/v1\n        kind: EncryptionConfiguration\n        resources: []\n"
        );
        let c = parse(&text, "cluster.yml").unwrap();
        assert!(c.custom_config_ignored());
        assert_eq!(
            crate::config::desired(&c).unwrap(),
            crate::config::Desired::Disabled
        );
    }

    #[test]
    fn read_errors_name_the_file() {
        let e = load(Path::new("/nonexistent/cluster.yml")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot read /nonexistent/cluster.yml: "),
            "{e}"
        );
    }

    #[test]
    fn a_node_without_user_is_refused_like_rke() {
        let text = "nodes:\n  - address: 10.0.0.1\n    role: [controlplane]\n  - address: 10.0.0.2\n    user: \"\"\n    role: [etcd]\n";
        let e = parse(text, "cluster.yml").unwrap_err().to_string();
        assert!(
            e.contains("cluster.yml:2:5: nodes[0].user: a node needs its SSH user (RKE refuses it too: \"User for host (1) is not provided\")"),
            "{e}"
        );
        assert!(e.contains("cluster.yml:5:11: nodes[1].user:"), "{e}");
    }

    #[test]
    fn etcd_prefix_follows_extra_args_then_external_path() {
        let c = parse(MINIMAL, "cluster.yml").unwrap();
        assert_eq!(c.etcd_prefix(), "/registry");
        assert!(!c.external_etcd());
        let ext = "nodes:\n  - address: 10.0.0.1\n    role: [controlplane, worker]\n    user: rke\nservices:\n  etcd:\n    external_urls: [https://10.0.0.9:2379]\n    path: /prod\n    ca_cert: CA\n    cert: CERT\n    key: KEY\n".to_string();
        let c = parse(&ext, "cluster.yml").unwrap();
        assert!(c.external_etcd());
        assert_eq!(c.etcd_prefix(), "/prod");
        let pinned = format!("{ext}  kube-api:\n    extra_args:\n      etcd-prefix: /other\n");
        assert_eq!(
            parse(&pinned, "cluster.yml").unwrap().etcd_prefix(),
            "/other"
        );
    }

    #[test]
    fn external_etcd_needs_what_rke_needs() {
        let text = "nodes:\n  - address: 10.0.0.1\n    role: [controlplane, etcd]\n    user: rke\nservices:\n  etcd:\n    external_urls: [https://10.0.0.9:2379]\n    cert: CERT\n";
        let e = parse(text, "cluster.yml").unwrap_err().to_string();
        assert!(e.contains("cluster.yml:7:20: services.etcd.external_urls: a cluster can't have both internal and external etcd"), "{e}");
        assert!(e.contains("services.etcd.path: external etcd"), "{e}");
        assert!(e.contains("services.etcd.key: external etcd"), "{e}");
        assert!(!e.contains("services.etcd.cert:"), "{e}");
    }

    #[test]
    fn encryption_provider_config_extra_arg_moves_the_file_through_the_binds() {
        let base = "nodes:\n  - address: 10.0.0.1\n    role: [controlplane]\n    user: rke\nservices:\n  kube-api:\n    secrets_encryption_config: {enabled: true}\n";
        let c = parse(base, "cluster.yml").unwrap();
        assert_eq!(c.pinned_encryption_config(), None);
        assert_eq!(
            c.encryption_config_host_path("/opt/rke/etc/kubernetes")
                .unwrap(),
            "/opt/rke/etc/kubernetes/ssl/encryption.yaml"
        );
        let inside = format!(
            "{base}    extra_args:\n      encryption-provider-config: /etc/kubernetes/enc/config.yaml\n"
        );
        let c = parse(&inside, "cluster.yml").unwrap();
        assert_eq!(
            c.encryption_config_in_container(),
            "/etc/kubernetes/enc/config.yaml"
        );
        assert_eq!(
            c.encryption_config_host_path("/etc/kubernetes").unwrap(),
            "/etc/kubernetes/enc/config.yaml"
        );
        let bound = format!(
            "{base}    extra_binds: [\"/srv/enc:/enc:ro\"]\n    extra_args:\n      encryption-provider-config: /enc/x.yaml\n"
        );
        let c = parse(&bound, "cluster.yml").unwrap();
        assert_eq!(
            c.encryption_config_host_path("/etc/kubernetes").unwrap(),
            "/srv/enc/x.yaml"
        );
        let outside =
            format!("{base}    extra_args:\n      encryption-provider-config: /var/enc.yaml\n");
        let e = parse(&outside, "cluster.yml").unwrap_err().to_string();
        assert!(
            e.starts_with("cluster.yml:9:35: services.kube-api.extra_args.encryption-provider-config: \"/var/enc.yaml\" is not inside"),
            "{e}"
        );
        let disabled = inside.replace("{enabled: true}", "{enabled: false}");
        let e = parse(&disabled, "cluster.yml").unwrap_err().to_string();
        assert!(
            e.contains("pins kube-apiserver's --encryption-provider-config"),
            "{e}"
        );
    }

    #[test]
    fn rotate_encryption_key_is_read_and_refused_where_rke_cannot_rotate() {
        let managed = format!(
            "rotate_encryption_key: true\n{MINIMAL}services:\n  kube-api:\n    secrets_encryption_config:\n      enabled: true\n"
        );
        assert!(
            parse(&managed, "cluster.yml")
                .unwrap()
                .rotate_encryption_key
        );
        assert!(!parse(MINIMAL, "cluster.yml").unwrap().rotate_encryption_key);
        let e = parse(
            &format!("rotate_encryption_key: yes\n{MINIMAL}"),
            "cluster.yml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with(
                "cluster.yml:1:24: rotate_encryption_key: needs secrets_encryption_config.enabled"
            ),
            "{e}"
        );
        let custom = format!(
            "{managed}      custom_config:\n        apiVersion: apiserver.config.k8s.io/v1\n        kind: EncryptionConfiguration\n        resources:\n          - resources: [secrets]\n            providers: [identity: {{}}]\n"
        );
        let e = parse(&custom, "cluster.yml").unwrap_err().to_string();
        assert!(
            e.contains("rotate_encryption_key: key rotation is not supported with a custom_config"),
            "{e}"
        );
    }
}
