//! Files the testbed writes for its users: cluster.yml, cluster.rkestate, kube_config_cluster.yml, ssh_config.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result};
use base64::Engine as _;
use serde_json::{Value, json};

use super::pki::{CertPair, Pki};

/// Writes `contents` with `mode` (created with it, so a key is never briefly world-readable).
pub fn write_mode(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let _ = fs::remove_file(path);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents)
        .with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// One node as the cluster files describe it.
pub struct NodeSpec<'a> {
    pub name: String,
    pub ip: std::net::Ipv4Addr,
    pub port: u16,
    pub docker_socket: &'a Path,
}

pub struct ClusterSpec<'a> {
    pub cluster_name: String,
    pub ssh_key_path: &'a Path,
    pub prefix_path: &'a str,
    /// The SSH user of every node (`root`, or the sudo user).
    pub user: &'a str,
    /// A managed config RKE deployed (`Options::rke_encrypted`): `enabled: true` in cluster.yml and the config in
    /// both states.
    pub encryption_config: Option<&'a str>,
    pub nodes: Vec<NodeSpec<'a>>,
}

/// cluster.yml in RKE's format (snake_case keys).
pub fn cluster_yml(spec: &ClusterSpec) -> Result<String> {
    let nodes: Vec<Value> = spec
        .nodes
        .iter()
        .map(|n| {
            json!({
                "address": n.ip.to_string(),
                "port": n.port.to_string(),
                "hostname_override": n.name,
                "user": spec.user,
                "role": ["controlplane", "etcd", "worker"],
                "ssh_key_path": spec.ssh_key_path,
                "docker_socket": n.docker_socket,
            })
        })
        .collect();
    let mut kube_api = json!({ "service_cluster_ip_range": "10.43.0.0/16" });
    if spec.encryption_config.is_some() {
        kube_api["secrets_encryption_config"] = json!({ "enabled": true });
    }
    let doc = json!({
        "cluster_name": spec.cluster_name,
        "ssh_key_path": spec.ssh_key_path,
        "prefix_path": spec.prefix_path,
        "nodes": nodes,
        "services": { "etcd": {}, "kube-api": kube_api },
    });
    let header = "# Written by the atrest testbed. Host keys: known_hosts next to this file.\n";
    Ok(format!("{header}{}", serde_yaml_ng::to_string(&doc)?))
}

fn bundle_entry(c: &CertPair, env: &str, kubeconfig: Option<&str>) -> Value {
    let file = if c.name == "kube-ca" {
        "kube-ca".to_string()
    } else {
        c.name.clone()
    };
    json!({
        "certificatePEM": c.cert_pem,
        "keyPEM": c.key_pem.as_str(),
        "config": kubeconfig.unwrap_or(""),
        "name": c.name,
        "commonName": c.common_name,
        "ouName": "",
        "envName": env,
        "path": format!("/etc/kubernetes/ssl/{file}.pem"),
        "keyEnvName": format!("{env}_KEY"),
        "keyPath": format!("/etc/kubernetes/ssl/{file}-key.pem"),
        "configEnvName": "",
        "configPath": "",
    })
}

/// cluster.rkestate (RKE's JSON): desired and current state with the config and certificate bundle; no
/// encryption config unless the spec names one (a cluster RKE encrypted).
pub fn rkestate(spec: &ClusterSpec, pki: &Pki, admin_kubeconfig: &str) -> Value {
    let nodes: Vec<Value> = spec
        .nodes
        .iter()
        .map(|n| {
            json!({
                "address": n.ip.to_string(),
                "port": n.port.to_string(),
                "internalAddress": n.ip.to_string(),
                "role": ["controlplane", "etcd", "worker"],
                "hostnameOverride": n.name,
                "user": spec.user,
                "dockerSocket": n.docker_socket,
                "sshKeyPath": spec.ssh_key_path,
            })
        })
        .collect();
    let rke_config = json!({
        "nodes": nodes,
        "services": {
            "etcd": {},
            "kubeApi": {
                "serviceClusterIpRange": "10.43.0.0/16",
                "secretsEncryptionConfig": spec.encryption_config.map(|_| json!({ "enabled": true })),
            },
        },
        "sshKeyPath": spec.ssh_key_path,
        "prefixPath": spec.prefix_path,
        "clusterName": spec.cluster_name,
    });
    let mut bundle = serde_json::Map::new();
    bundle.insert("kube-ca".into(), bundle_entry(&pki.ca, "KUBE_CA", None));
    bundle.insert(
        "kube-node".into(),
        bundle_entry(&pki.kube_node, "KUBE_NODE", None),
    );
    bundle.insert(
        "kube-admin".into(),
        bundle_entry(&pki.kube_admin, "KUBE_ADMIN", Some(admin_kubeconfig)),
    );
    bundle.insert(
        "kube-apiserver".into(),
        bundle_entry(&pki.apiserver, "KUBE_APISERVER", None),
    );
    for e in &pki.etcd {
        let env = e.name.to_uppercase().replace('-', "_");
        bundle.insert(e.name.clone(), bundle_entry(e, &env, None));
    }
    let mut state = json!({ "rkeConfig": rke_config, "certificatesBundle": Value::Object(bundle) });
    if let Some(config) = spec.encryption_config {
        state["encryptionConfig"] = json!(config);
    }
    json!({ "desiredState": state.clone(), "currentState": state })
}

/// kube_config_cluster.yml: client-certificate auth against `server`.
pub fn kubeconfig(server: &str, pki: &Pki) -> String {
    kubeconfig_with_cert(
        server,
        &pki.ca.cert_pem,
        &pki.kube_admin.cert_pem,
        &pki.kube_admin.key_pem,
    )
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

/// A kubeconfig (RKE's layout) that trusts `ca_pem` and authenticates with a client certificate.
pub fn kubeconfig_with_cert(server: &str, ca_pem: &str, cert_pem: &str, key_pem: &str) -> String {
    kubeconfig_for_user(
        server,
        ca_pem,
        &format!(
            "    client-certificate-data: {}\n    client-key-data: {}\n",
            b64(cert_pem),
            b64(key_pem)
        ),
    )
}

/// A kubeconfig that trusts `ca_pem` and authenticates with a bearer token.
pub fn kubeconfig_with_token(server: &str, ca_pem: &str, token: &str) -> String {
    kubeconfig_for_user(server, ca_pem, &format!("    token: {token}\n"))
}

fn kubeconfig_for_user(server: &str, ca_pem: &str, user: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {ca}\n    server: \"{server}\"\n  name: local\ncontexts:\n- context:\n    cluster: local\n    user: kube-admin-local\n  name: local\ncurrent-context: local\nusers:\n- name: kube-admin-local\n  user:\n{user}",
        ca = b64(ca_pem),
    )
}

/// ssh_config for manual use: `ssh -F DIR/ssh_config 127.0.20.11`.
pub fn ssh_config(ips: &[std::net::Ipv4Addr], key: &Path, known_hosts: &Path) -> String {
    let hosts: Vec<String> = ips.iter().map(|i| i.to_string()).collect();
    format!(
        "Host {}\n  User root\n  IdentityFile {}\n  IdentitiesOnly yes\n  UserKnownHostsFile {}\n  StrictHostKeyChecking yes\n  BatchMode yes\n",
        hosts.join(" "),
        key.display(),
        known_hosts.display()
    )
}
