//! KMS providers on the controlplanes: the plugin gRPC API (generated from `proto/`, shared with the testbed) and
//! the pre-flight checks run before atrest deploys a config that reads or writes through a `kms` provider:
//! the socket exists on the host, `services.kube-api.extra_binds` make it visible inside the kube-apiserver
//! container at the endpoint path, and the plugin answers healthy (`Status` for v2; `Version` plus an
//! encrypt/decrypt round trip for v1) — gRPC through an SSH streamlocal channel to the socket.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Endpoint, Uri};

use crate::config::encryption::{EncryptionConfiguration, KmsConfiguration};
use crate::exec::ssh::{Host, shell_quote};

/// Generated gRPC/protobuf code (root `build.rs`).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    /// KMS plugin API v1beta1 (`v1beta1.KeyManagementService`).
    pub mod v1beta1 {
        tonic::include_proto!("v1beta1");
    }
    /// KMS plugin API v2 (`v2.KeyManagementService`) and the KMS v2 storage envelope `EncryptedObject`.
    pub mod v2 {
        tonic::include_proto!("v2");
    }
}

/// kube-apiserver's default `kms.timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

/// `kms.timeout` after defaulting (3 s), parsed as a Go duration.
pub fn timeout_of(k: &KmsConfiguration) -> Result<Duration, String> {
    match k.timeout.as_deref() {
        None => Ok(DEFAULT_TIMEOUT),
        Some(t) => {
            let nanos = crate::config::gofmt::parse_duration(t)?;
            if nanos <= 0 {
                return Err(format!(
                    "kms provider {:?}: timeout should be a positive value",
                    k.name
                ));
            }
            Ok(Duration::from_nanos(nanos as u64))
        }
    }
}

/// `kms.apiVersion` after defaulting (`v1`).
pub fn api_version_of(k: &KmsConfiguration) -> &str {
    match k.api_version.as_deref() {
        None | Some("") => "v1",
        Some(v) => v,
    }
}

/// The socket path of a `unix:///path` endpoint, as the kube-apiserver container sees it.
pub fn socket_path(endpoint: &str) -> Result<String, String> {
    match endpoint.strip_prefix("unix://") {
        Some(p) if p.starts_with('/') && p.len() > 1 => Ok(p.to_string()),
        _ => Err(format!(
            "endpoint {endpoint:?} is not unix:///<absolute path> (abstract sockets cannot be checked)"
        )),
    }
}

/// Every `kms` provider of the given configs, once per (name, endpoint), in order of appearance.
pub fn providers<'a>(
    configs: impl IntoIterator<Item = &'a EncryptionConfiguration>,
) -> Vec<KmsConfiguration> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for c in configs {
        for r in &c.resources {
            for p in &r.providers {
                if let Some(k) = &p.kms
                    && seen.insert((k.name.clone(), k.endpoint.clone()))
                {
                    out.push(k.clone());
                }
            }
        }
    }
    out
}

/// Where a container path comes from on the host, through docker binds `src:dst[:opts]` (longest `dst` wins).
/// `None`: no bind covers it, so the path inside the container is not the host's.
pub fn host_path_through_binds(container_path: &str, binds: &[String]) -> Option<String> {
    let mut best: Option<(usize, String)> = None;
    for b in binds {
        let mut parts = b.splitn(3, ':');
        let (Some(src), Some(dst)) = (parts.next(), parts.next()) else {
            continue;
        };
        let dst_trim = dst.trim_end_matches('/');
        let src_trim = src.trim_end_matches('/');
        let rest = if container_path == dst_trim {
            ""
        } else if let Some(r) = container_path.strip_prefix(&format!("{dst_trim}/")) {
            r
        } else {
            continue;
        };
        if best.as_ref().is_none_or(|(len, _)| dst_trim.len() > *len) {
            let host = if rest.is_empty() {
                src_trim.to_string()
            } else {
                format!("{src_trim}/{rest}")
            };
            best = Some((dst_trim.len(), host));
        }
    }
    best.map(|(_, p)| p)
}

/// What a healthy plugin reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginStatus {
    /// `v2` (or `v1beta1` for a v1 plugin).
    pub version: String,
    /// `ok` when healthy.
    pub healthz: String,
    /// The current key id (v2 only; empty for v1).
    pub key_id: String,
}

fn channel_over_ssh(
    host: &Arc<Host>,
    socket: &str,
    timeout: Duration,
) -> tonic::transport::Channel {
    let host = host.clone();
    let socket = socket.to_string();
    Endpoint::from_static("http://kms-plugin.invalid")
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let host = host.clone();
            let socket = socket.clone();
            async move {
                let channel = host
                    .handle()
                    .channel_open_direct_streamlocal(socket.clone())
                    .await
                    .map_err(|e| {
                        std::io::Error::other(format!(
                            "cannot open {socket} over SSH ({e}): nothing listens there (is the plugin \
                             running?), or the SSH user may not use the socket, or sshd has \
                             AllowStreamLocalForwarding off"
                        ))
                    })?;
                Ok::<_, std::io::Error>(TokioIo::new(channel.into_stream()))
            }
        }))
}

fn rpc_error(e: &tonic::Status) -> String {
    let mut msg = format!("rpc error: code = {:?} desc = {}", e.code(), e.message());
    // A transport failure hides its cause in the source chain.
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}

/// Asks the plugin at `socket` (a path on the node) whether it is healthy, over SSH.
pub async fn plugin_status(
    host: &Arc<Host>,
    socket: &str,
    k: &KmsConfiguration,
) -> Result<PluginStatus, String> {
    let timeout = timeout_of(k)?;
    let channel = channel_over_ssh(host, socket, timeout);
    match api_version_of(k) {
        "v2" => {
            let mut client =
                proto::v2::key_management_service_client::KeyManagementServiceClient::new(channel);
            let resp = client
                .status(proto::v2::StatusRequest {})
                .await
                .map_err(|e| format!("Status failed: {}", rpc_error(&e)))?
                .into_inner();
            if resp.healthz != "ok" {
                return Err(format!("plugin reports healthz {:?}", resp.healthz));
            }
            if resp.version != "v2" && resp.version != "v2beta1" {
                return Err(format!(
                    "plugin reports version {:?}, expected v2",
                    resp.version
                ));
            }
            if resp.key_id.is_empty() {
                return Err("plugin reports an empty key_id".into());
            }
            Ok(PluginStatus {
                version: resp.version,
                healthz: resp.healthz,
                key_id: resp.key_id,
            })
        }
        _ => {
            let mut client =
                proto::v1beta1::key_management_service_client::KeyManagementServiceClient::new(
                    channel,
                );
            let version = client
                .version(proto::v1beta1::VersionRequest {
                    version: "v1beta1".into(),
                })
                .await
                .map_err(|e| format!("Version failed: {}", rpc_error(&e)))?
                .into_inner();
            // kube-apiserver's v1 health probe: encrypt and decrypt "ping".
            let cipher = client
                .encrypt(proto::v1beta1::EncryptRequest {
                    version: "v1beta1".into(),
                    plain: b"ping".to_vec(),
                })
                .await
                .map_err(|e| format!("Encrypt failed: {}", rpc_error(&e)))?
                .into_inner()
                .cipher;
            let plain = client
                .decrypt(proto::v1beta1::DecryptRequest {
                    version: "v1beta1".into(),
                    cipher,
                })
                .await
                .map_err(|e| format!("Decrypt failed: {}", rpc_error(&e)))?
                .into_inner()
                .plain;
            if plain != b"ping" {
                return Err("Decrypt did not return what Encrypt was given".into());
            }
            Ok(PluginStatus {
                version: version.version,
                healthz: "ok".into(),
                key_id: String::new(),
            })
        }
    }
}

/// The pre-flight of one controlplane for the `kms` providers of a config it is about to run. `binds` are the
/// kube-apiserver binds the node will have (`services.kube-api.extra_binds`, which atrest adds when it recreates
/// the container). Returns what failed (empty: every provider is usable) and the healthy plugins' status.
pub async fn preflight_node(
    host: &Arc<Host>,
    providers: &[KmsConfiguration],
    binds: &[String],
) -> (Vec<String>, Vec<(String, PluginStatus)>) {
    let mut problems = Vec::new();
    let mut healthy = Vec::new();
    for k in providers {
        let name = &k.name;
        let socket = match socket_path(&k.endpoint) {
            Ok(s) => s,
            Err(e) => {
                problems.push(format!("kms provider {name}: {e}"));
                continue;
            }
        };
        let Some(host_socket) = host_path_through_binds(&socket, binds) else {
            problems.push(format!(
                "kms provider {name}: {socket} is not visible inside the kube-apiserver container: no \
                 services.kube-api.extra_binds entry mounts its directory (e.g. \"{dir}:{dir}\")",
                dir = std::path::Path::new(&socket)
                    .parent()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "/".into())
            ));
            continue;
        };
        match crate::exec::root::exec(host, &format!("test -S {}", shell_quote(&host_socket))).await
        {
            Ok(out) if out.success() => {}
            Ok(_) => {
                problems.push(format!(
                    "kms provider {name}: no plugin socket at {host_socket} on the host (is the KMS plugin \
                     running on this node?)"
                ));
                continue;
            }
            Err(e) => {
                problems.push(format!("kms provider {name}: checking {host_socket}: {e}"));
                continue;
            }
        }
        match plugin_status(host, &host_socket, k).await {
            Ok(s) => healthy.push((name.clone(), s)),
            Err(e) => problems.push(format!(
                "kms provider {name}: the plugin at {host_socket} is not healthy: {e}"
            )),
        }
    }
    (problems, healthy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_map_container_paths_to_host_paths() {
        let binds = vec![
            "/var/run/kmsplugin/:/var/run/kmsplugin/".to_string(),
            "/opt/x:/var/run/kmsplugin/deep:ro".to_string(),
        ];
        assert_eq!(
            host_path_through_binds("/var/run/kmsplugin/socket.sock", &binds).as_deref(),
            Some("/var/run/kmsplugin/socket.sock")
        );
        assert_eq!(
            host_path_through_binds("/var/run/kmsplugin/deep/s.sock", &binds).as_deref(),
            Some("/opt/x/s.sock")
        );
        assert_eq!(
            host_path_through_binds("/var/run/kmspluginx/s", &binds),
            None
        );
        assert_eq!(host_path_through_binds("/run/s.sock", &[]), None);
    }

    #[test]
    fn endpoint_and_defaults() {
        assert_eq!(
            socket_path("unix:///var/run/kmsplugin/socket.sock").as_deref(),
            Ok("/var/run/kmsplugin/socket.sock")
        );
        assert!(socket_path("unix:///@abstract").is_ok());
        assert!(socket_path("tcp://1.2.3.4:5").is_err());
        let k = KmsConfiguration {
            api_version: None,
            name: "p".into(),
            endpoint: "unix:///s".into(),
            cachesize: None,
            timeout: Some("500ms".into()),
        };
        assert_eq!(api_version_of(&k), "v1");
        assert_eq!(timeout_of(&k), Ok(Duration::from_millis(500)));
    }
}
