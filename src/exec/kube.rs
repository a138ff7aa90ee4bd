//! A Kubernetes API client built from a kubeconfig file (TLS with CA and client certificates, or a token), and
//! the probe that tells whether the server behind it answers.
//!
//! Read-only verbs must work while one controlplane's kube-apiserver is down or restarting (a rotation restarts
//! them one by one, and that is exactly when an operator asks for the status). So a caller builds a client for
//! the kubeconfig's server, probes it, and if it does not answer builds the same client again with
//! [`ClientOptions::server_override`] pointing at another controlplane's server through an SSH tunnel: the
//! kubeconfig's credentials and certificate checks stay the same, only the address changes.

use kube::config::{KubeConfigOptions, Kubeconfig};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum KubeClientError {
    #[error("kubeconfig {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("kubeconfig {path}: invalid server URL {url:?}: {source}")]
    ServerUrl {
        path: PathBuf,
        url: String,
        #[source]
        source: http::uri::InvalidUri,
    },
    #[error("kubeconfig {path}: cannot build a client: {source}")]
    Build {
        path: PathBuf,
        #[source]
        source: kube::Error,
    },
}

/// Options beyond what the kubeconfig says.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Use this context instead of the kubeconfig's current one.
    pub context: Option<String>,
    /// Talk to this URL instead of the cluster's `server:` (e.g. a local SSH tunnel); the certificate is still
    /// checked against the kubeconfig's `tls-server-name` or the original server host.
    pub server_override: Option<String>,
}

/// How long a server may take to answer the readiness probe before the next one is tried.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The server URL the kubeconfig's current context names (what [`client`] talks to without an override).
pub async fn server_url(path: &Path) -> Result<http::Uri, KubeClientError> {
    let kubeconfig = Kubeconfig::read_from(path).map_err(|source| KubeClientError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|source| KubeClientError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(config.cluster_url)
}

/// Why a server is not ready ([`probe`]).
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct NotReady {
    /// The server answered, with an error: it runs but is not ready (its etcd unreachable, say), which may pass.
    pub answered: bool,
    pub reason: String,
}

/// Whether the server behind `client` is ready: `GET /readyz` answered 200 within [`PROBE_TIMEOUT`]. The error
/// says why not (connection refused, a timeout, a server still starting or shutting down, the checks that
/// failed).
pub async fn probe(client: &kube::Client) -> Result<(), NotReady> {
    let request = http::Request::get("/readyz")
        .body(Vec::new())
        .map_err(|e| NotReady {
            answered: false,
            reason: e.to_string(),
        })?;
    match tokio::time::timeout(PROBE_TIMEOUT, client.request_text(request)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(NotReady {
            answered: matches!(e, kube::Error::Api(_)),
            reason: failed_checks(&one_line(&e)).unwrap_or_else(|| one_line(&e)),
        }),
        Err(_) => Err(NotReady {
            answered: false,
            reason: format!("no answer within {} s", PROBE_TIMEOUT.as_secs()),
        }),
    }
}

/// The checks a `/readyz` answer lists as failed (`[-]etcd failed: reason withheld` …), as one line, instead of
/// the whole list of checks (some 40 lines).
fn failed_checks(answer: &str) -> Option<String> {
    let mut names: Vec<&str> = Vec::new();
    for item in answer.split("[-]").skip(1) {
        let name = item.split(" failed").next().unwrap_or_default().trim();
        if !name.is_empty() && !name.contains(char::is_whitespace) && !names.contains(&name) {
            names.push(name);
        }
    }
    (!names.is_empty())
        .then(|| format!("not ready: its /readyz checks {} failed", names.join(", ")))
}

/// An error and its causes on one line (`a: b: c`), for "server X does not answer (…)" messages.
fn one_line(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A client for the current context of the kubeconfig at `path`.
pub async fn client(path: &Path) -> Result<kube::Client, KubeClientError> {
    client_with(path, &ClientOptions::default()).await
}

pub async fn client_with(
    path: &Path,
    options: &ClientOptions,
) -> Result<kube::Client, KubeClientError> {
    let kubeconfig = Kubeconfig::read_from(path).map_err(|source| KubeClientError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let config_options = KubeConfigOptions {
        context: options.context.clone(),
        ..Default::default()
    };
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &config_options)
        .await
        .map_err(|source| KubeClientError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    if let Some(url) = &options.server_override {
        let original_host = config.cluster_url.host().map(str::to_string);
        config.cluster_url = url.parse().map_err(|source| KubeClientError::ServerUrl {
            path: path.to_path_buf(),
            url: url.clone(),
            source,
        })?;
        if config.tls_server_name.is_none() {
            config.tls_server_name = original_host;
        }
    }
    // Writes are small; a stuck connection should fail and be retried rather than hang the whole rewrite.
    config.connect_timeout = Some(Duration::from_secs(10));
    config.read_timeout = Some(Duration::from_secs(60));
    config.write_timeout = Some(Duration::from_secs(60));
    // Retries are ours (bounded, counted in the report); kube's own would double them.
    config.default_retry = false;
    let builder =
        kube::client::ClientBuilder::try_from(config).map_err(|source| KubeClientError::Build {
            path: path.to_path_buf(),
            source,
        })?;
    // A plain-text 429 keeps its Retry-After (see exec::retry_after).
    let retry_after = tower::util::MapFutureLayer::new(super::retry_after::status_for_plain_429);
    Ok(builder.with_layer(&retry_after).build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_readyz_answer_is_summed_up_by_its_failed_checks() {
        // As kube-apiserver answers while its etcd is unreachable: every check listed, the failed ones with [-],
        // and kube's error repeating the body in its Debug form (escaped newlines).
        let body = "[+]ping ok\n[+]log ok\n[-]etcd failed: reason withheld\n[-]etcd-readiness failed: reason \
                    withheld\n[+]informer-sync ok\nreadyz check failed";
        let answer = format!(
            "ApiError: {body}: Failed to parse error data (Status {{ message: {body:?} }})"
        );
        assert_eq!(
            failed_checks(&answer).as_deref(),
            Some("not ready: its /readyz checks etcd, etcd-readiness failed")
        );
    }

    #[test]
    fn an_answer_without_failed_checks_is_left_as_it_is() {
        assert_eq!(failed_checks("connection refused"), None);
        assert_eq!(failed_checks("[+]ping ok\nreadyz check passed"), None);
    }
}
