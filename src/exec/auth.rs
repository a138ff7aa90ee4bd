//! SSH client authentication, RKE's way: per-node settings override the cluster's; agent, key, certificate.

use crate::config::cluster::{BastionHost, ClusterConfig, Node};
use crate::secret::SecretString;
use russh::client::Handle;
use russh::keys::{Certificate, PrivateKey, PrivateKeyWithHashAlg};
use std::path::PathBuf;
use std::sync::Arc;

/// Environment variable holding the passphrase of encrypted private keys (read by the CLI, not here: the library
/// takes what it needs from its callers, so no code path depends on the process environment).
pub const PASSPHRASE_ENV: &str = "ATREST_SSH_PASSPHRASE";

/// What authentication may need beyond a login's [`Credentials`]: where ssh-agent listens, and the passphrase of
/// encrypted keys.
#[derive(Clone, Copy, Default)]
pub struct AuthSecrets<'a> {
    pub agent_socket: Option<&'a std::path::Path>,
    pub key_passphrase: Option<&'a SecretString>,
}

/// Where a private key comes from.
#[derive(Clone, Debug)]
pub enum KeySource {
    Inline(SecretString),
    Path(PathBuf),
}

/// Where a certificate comes from.
#[derive(Clone, Debug)]
pub enum CertSource {
    Inline(String),
    Path(PathBuf),
}

/// The effective credentials for one SSH login (a node or the bastion).
#[derive(Clone, Debug)]
pub struct Credentials {
    pub user: String,
    pub use_agent: bool,
    pub key: Option<KeySource>,
    pub cert: Option<CertSource>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read private key {what}: {detail}")]
    Key { what: String, detail: String },
    #[error(
        "private key {what} is encrypted; set {PASSPHRASE_ENV} to its passphrase (or load it into ssh-agent and set ssh_agent_auth)"
    )]
    NeedPassphrase { what: String },
    #[error("cannot read SSH certificate {what}: {detail}")]
    Cert { what: String, detail: String },
    #[error("ssh-agent: {0}")]
    Agent(String),
    #[error("SSH authentication as {user} was rejected ({tried})")]
    Rejected { user: String, tried: String },
    #[error("SSH protocol error during authentication: {0}")]
    Protocol(#[from] russh::Error),
}

/// `~/…` → `$HOME/…`, as RKE does for `ssh_key_path`.
pub fn expand_home(path: &str) -> PathBuf {
    match path.strip_prefix("~/") {
        Some(rest) => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/root"))
            .join(rest),
        None => PathBuf::from(path),
    }
}

impl Credentials {
    /// A node's credentials: node fields first, then the cluster's; default key `~/.ssh/id_rsa` like RKE.
    pub fn for_node(cluster: &ClusterConfig, node: &Node) -> Self {
        let key = node
            .ssh_key
            .clone()
            .filter(|k| !k.expose().trim().is_empty())
            .map(KeySource::Inline)
            .or_else(|| {
                node.ssh_key_path
                    .as_deref()
                    .map(|p| KeySource::Path(expand_home(p)))
            })
            .or_else(|| {
                cluster
                    .ssh_key_path
                    .as_deref()
                    .map(|p| KeySource::Path(expand_home(p)))
            })
            .or_else(|| Some(KeySource::Path(expand_home("~/.ssh/id_rsa"))));
        let cert = node
            .ssh_cert
            .clone()
            .filter(|c| !c.trim().is_empty())
            .map(CertSource::Inline)
            .or_else(|| {
                node.ssh_cert_path
                    .as_deref()
                    .map(|p| CertSource::Path(expand_home(p)))
            })
            .or_else(|| {
                cluster
                    .ssh_cert_path
                    .as_deref()
                    .map(|p| CertSource::Path(expand_home(p)))
            });
        Self {
            user: node
                .user
                .clone()
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| "root".into()),
            // As RKE: the cluster's ssh_agent_auth (or --ssh-agent-auth) is forced onto every node and the
            // bastion; a node can only add it.
            use_agent: cluster.ssh_agent_auth || node.ssh_agent_auth.unwrap_or(false),
            key,
            cert,
        }
    }

    pub fn for_bastion(cluster: &ClusterConfig, bastion: &BastionHost) -> Self {
        let node = Node {
            address: bastion.address.clone(),
            user: bastion.user.clone(),
            ssh_key: bastion.ssh_key.clone(),
            ssh_key_path: bastion.ssh_key_path.clone(),
            ssh_cert: bastion.ssh_cert.clone(),
            ssh_cert_path: bastion.ssh_cert_path.clone(),
            ssh_agent_auth: bastion.ssh_agent_auth,
            ..Node::default()
        };
        Self::for_node(cluster, &node)
    }
}

fn load_private_key(
    source: &KeySource,
    passphrase: Option<&SecretString>,
) -> Result<PrivateKey, AuthError> {
    let (text, what) = match source {
        KeySource::Inline(secret) => (
            zeroize::Zeroizing::new(secret.expose().to_string()),
            "ssh_key (inline)".to_string(),
        ),
        KeySource::Path(path) => {
            let what = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|e| AuthError::Key {
                what: what.clone(),
                detail: e.to_string(),
            })?;
            (zeroize::Zeroizing::new(text), what)
        }
    };
    match russh::keys::decode_secret_key(&text, passphrase.map(SecretString::expose)) {
        Ok(key) => Ok(key),
        Err(russh::keys::Error::KeyIsEncrypted) => Err(AuthError::NeedPassphrase { what }),
        Err(e) => Err(AuthError::Key {
            what,
            detail: e.to_string(),
        }),
    }
}

fn load_certificate(source: &CertSource) -> Result<Certificate, AuthError> {
    let (text, what) = match source {
        CertSource::Inline(t) => (t.clone(), "ssh_cert (inline)".to_string()),
        CertSource::Path(p) => (
            std::fs::read_to_string(p).map_err(|e| AuthError::Cert {
                what: p.display().to_string(),
                detail: e.to_string(),
            })?,
            p.display().to_string(),
        ),
    };
    Certificate::from_openssh(text.trim()).map_err(|e| AuthError::Cert {
        what,
        detail: e.to_string(),
    })
}

/// Authenticate `handle` with `creds`: agent identities when asked for, else the key (with its certificate).
pub async fn authenticate<H: russh::client::Handler>(
    handle: &mut Handle<H>,
    creds: &Credentials,
    secrets: &AuthSecrets<'_>,
) -> Result<(), AuthError> {
    let user = creds.user.clone();
    let mut tried = Vec::new();
    if creds.use_agent {
        let socket = secrets.agent_socket.ok_or_else(|| {
            AuthError::Agent("no agent socket: SSH_AUTH_SOCK is not set".to_string())
        })?;
        let mut agent = russh::keys::agent::client::AgentClient::connect_uds(socket)
            .await
            .map_err(|e| AuthError::Agent(format!("{}: {e}", socket.display())))?;
        let identities = agent
            .request_identities()
            .await
            .map_err(|e| AuthError::Agent(e.to_string()))?;
        let rsa_hash = rsa_hash(handle).await?;
        for identity in identities {
            let ok = match &identity {
                russh::keys::agent::AgentIdentity::PublicKey { key, .. } => {
                    let hash = if key.algorithm().is_rsa() {
                        rsa_hash
                    } else {
                        None
                    };
                    handle
                        .authenticate_publickey_with(&user, key.clone(), hash, &mut agent)
                        .await
                        .map_err(|e| AuthError::Agent(format!("{e:?}")))?
                }
                russh::keys::agent::AgentIdentity::Certificate { certificate, .. } => handle
                    .authenticate_certificate_with(&user, certificate.clone(), None, &mut agent)
                    .await
                    .map_err(|e| AuthError::Agent(format!("{e:?}")))?,
            };
            if ok.success() {
                return Ok(());
            }
        }
        tried.push("ssh-agent identities".to_string());
        // RKE uses the agent instead of the key when ssh_agent_auth is set.
        return Err(AuthError::Rejected {
            user,
            tried: tried.join(", "),
        });
    }
    let Some(source) = &creds.key else {
        return Err(AuthError::Rejected {
            user,
            tried: "no key configured".into(),
        });
    };
    let key = Arc::new(load_private_key(source, secrets.key_passphrase)?);
    if let Some(cert_source) = &creds.cert {
        let cert = load_certificate(cert_source)?;
        let result = handle
            .authenticate_openssh_cert(&user, key.clone(), cert)
            .await?;
        if result.success() {
            return Ok(());
        }
        tried.push("certificate".to_string());
    }
    let hash = if key.algorithm().is_rsa() {
        rsa_hash(handle).await?
    } else {
        None
    };
    let result = handle
        .authenticate_publickey(&user, PrivateKeyWithHashAlg::new(key, hash))
        .await?;
    if result.success() {
        return Ok(());
    }
    tried.push(format!("{} key", source_label(source)));
    Err(AuthError::Rejected {
        user,
        tried: tried.join(", "),
    })
}

fn source_label(source: &KeySource) -> String {
    match source {
        KeySource::Inline(_) => "inline".into(),
        KeySource::Path(p) => p.display().to_string(),
    }
}

/// rsa-sha2-512/256 when the server offers them (OpenSSH ≥ 8.8 refuses SHA-1 `ssh-rsa`).
async fn rsa_hash<H: russh::client::Handler>(
    handle: &Handle<H>,
) -> Result<Option<russh::keys::HashAlg>, AuthError> {
    Ok(match handle.best_supported_rsa_hash().await? {
        Some(best) => best,
        None => Some(russh::keys::HashAlg::Sha256),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_fields_override_cluster_and_defaults_apply() {
        let cluster = ClusterConfig {
            ssh_key_path: Some("/k/cluster".into()),
            ssh_agent_auth: true,
            ..Default::default()
        };
        let node = Node {
            address: "10.0.0.1".into(),
            ssh_key_path: Some("~/node_key".into()),
            ssh_agent_auth: Some(false),
            ..Default::default()
        };
        let c = Credentials::for_node(&cluster, &node);
        assert_eq!(c.user, "root");
        assert!(
            c.use_agent,
            "the cluster's ssh_agent_auth wins over a node's false, as in RKE"
        );
        let own = Credentials::for_node(
            &ClusterConfig::default(),
            &Node {
                ssh_agent_auth: Some(true),
                ..Default::default()
            },
        );
        assert!(own.use_agent);
        assert!(!Credentials::for_node(&ClusterConfig::default(), &node).use_agent);
        match c.key {
            Some(KeySource::Path(p)) => assert!(p.ends_with("node_key") && !p.starts_with("~")),
            other => panic!("unexpected {other:?}"),
        }
        let bare = Node::default();
        let c = Credentials::for_node(&cluster, &bare);
        assert!(c.use_agent);
        assert!(matches!(c.key, Some(KeySource::Path(ref p)) if p == &PathBuf::from("/k/cluster")));
    }

    #[test]
    fn encrypted_key_without_passphrase_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k");
        let st = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "pw", "-f"])
            .arg(&path)
            .status()
            .expect("ssh-keygen runs");
        assert!(st.success());
        let err = load_private_key(&KeySource::Path(path.clone()), None)
            .expect_err("must need a passphrase");
        assert!(matches!(err, AuthError::NeedPassphrase { .. }), "{err}");
        assert!(err.to_string().contains(PASSPHRASE_ENV));
    }
}
