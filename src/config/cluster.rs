//! RKE's `cluster.yml`: the fields atrest uses; every other field is accepted and ignored.

use crate::config::encryption::EncryptionConfiguration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterConfig {
    pub cluster_name: String,
    pub nodes: Vec<Node>,
    pub ssh_key_path: Option<String>,
    pub ssh_cert_path: Option<String>,
    pub ssh_agent_auth: bool,
    pub bastion_host: Option<BastionHost>,
    pub prefix_path: Option<String>,
    pub services: Services,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Node {
    pub address: String,
    /// RKE types the port as a string; a number is accepted too.
    pub port: Option<String>,
    pub internal_address: Option<String>,
    pub user: Option<String>,
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
    pub address: String,
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
    #[serde(rename = "kube-api")]
    pub kube_api: KubeApi,
    pub etcd: Etcd,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct KubeApi {
    pub extra_args: BTreeMap<String, String>,
    pub extra_binds: Vec<String>,
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
