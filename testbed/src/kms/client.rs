//! gRPC clients for KMS plugins on a unix socket (what kube-apiserver's `grpcService` does), with a per-call
//! timeout. Connections are lazy: creating a client never fails because the plugin is down; calls do.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use zeroize::Zeroizing;

use super::proto::{v1beta1, v2};

/// kube-apiserver's default KMS call timeout (`kms.timeout`, 3s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
/// The KMS v1 API version string both sides send.
pub const V1_API_VERSION: &str = "v1beta1";

/// A failed call or an unusable endpoint.
#[derive(Debug, thiserror::Error)]
pub enum KmsClientError {
    #[error(
        "invalid KMS endpoint {0:?}: only unix:///path (or an absolute socket path) is supported"
    )]
    InvalidEndpoint(String),
    /// Printed like Go's gRPC errors, which is what upstream's messages embed.
    #[error("rpc error: code = {code} desc = {message}", code = code_name(.status.code()), message = .status.message())]
    Rpc {
        socket: PathBuf,
        status: tonic::Status,
    },
}

impl KmsClientError {
    /// The gRPC status of a failed call.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            KmsClientError::Rpc { status, .. } => Some(status),
            KmsClientError::InvalidEndpoint(_) => None,
        }
    }
}

fn code_name(code: tonic::Code) -> String {
    format!("{code:?}")
}

/// `unix:///run/kms.sock` → `/run/kms.sock`; a bare absolute path is accepted too.
pub fn socket_path_from_endpoint(endpoint: &str) -> Result<PathBuf, KmsClientError> {
    let path = if let Some(rest) = endpoint.strip_prefix("unix://") {
        rest
    } else if endpoint.starts_with('/') {
        endpoint
    } else {
        return Err(KmsClientError::InvalidEndpoint(endpoint.to_string()));
    };
    if !path.starts_with('/') || path.len() < 2 {
        return Err(KmsClientError::InvalidEndpoint(endpoint.to_string()));
    }
    Ok(PathBuf::from(path))
}

fn unix_channel(socket: &Path, timeout: Duration) -> Channel {
    let socket = socket.to_path_buf();
    // The URI is required by tonic but ignored by the connector.
    Endpoint::from_static("http://kms-plugin.invalid")
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
}

/// Client for `v1beta1.KeyManagementService`.
#[derive(Debug, Clone)]
pub struct KmsV1Client {
    socket: PathBuf,
    inner: v1beta1::key_management_service_client::KeyManagementServiceClient<Channel>,
}

impl KmsV1Client {
    /// `endpoint` is `unix:///path` (as in EncryptionConfiguration) or an absolute socket path.
    pub fn connect(endpoint: &str, timeout: Duration) -> Result<Self, KmsClientError> {
        let socket = socket_path_from_endpoint(endpoint)?;
        let inner = v1beta1::key_management_service_client::KeyManagementServiceClient::new(
            unix_channel(&socket, timeout),
        );
        Ok(Self { socket, inner })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn rpc_err(&self, status: tonic::Status) -> KmsClientError {
        KmsClientError::Rpc {
            socket: self.socket.clone(),
            status,
        }
    }

    pub async fn version(&self) -> Result<v1beta1::VersionResponse, KmsClientError> {
        let req = v1beta1::VersionRequest {
            version: V1_API_VERSION.into(),
        };
        let resp = self
            .inner
            .clone()
            .version(req)
            .await
            .map_err(|s| self.rpc_err(s))?;
        Ok(resp.into_inner())
    }

    /// Wraps a DEK; returns the plugin's ciphertext (`E` in the v1 envelope).
    pub async fn encrypt(&self, plain: &[u8]) -> Result<Vec<u8>, KmsClientError> {
        let req = v1beta1::EncryptRequest {
            version: V1_API_VERSION.into(),
            plain: plain.to_vec(),
        };
        let resp = self.inner.clone().encrypt(req).await;
        Ok(resp.map_err(|s| self.rpc_err(s))?.into_inner().cipher)
    }

    pub async fn decrypt(&self, cipher: &[u8]) -> Result<Zeroizing<Vec<u8>>, KmsClientError> {
        let req = v1beta1::DecryptRequest {
            version: V1_API_VERSION.into(),
            cipher: cipher.to_vec(),
        };
        let resp = self
            .inner
            .clone()
            .decrypt(req)
            .await
            .map_err(|s| self.rpc_err(s))?;
        Ok(Zeroizing::new(resp.into_inner().plain))
    }
}

/// Client for `v2.KeyManagementService`.
#[derive(Debug, Clone)]
pub struct KmsV2Client {
    socket: PathBuf,
    inner: v2::key_management_service_client::KeyManagementServiceClient<Channel>,
}

impl KmsV2Client {
    /// `endpoint` is `unix:///path` (as in EncryptionConfiguration) or an absolute socket path.
    pub fn connect(endpoint: &str, timeout: Duration) -> Result<Self, KmsClientError> {
        let socket = socket_path_from_endpoint(endpoint)?;
        let inner = v2::key_management_service_client::KeyManagementServiceClient::new(
            unix_channel(&socket, timeout),
        );
        Ok(Self { socket, inner })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn rpc_err(&self, status: tonic::Status) -> KmsClientError {
        KmsClientError::Rpc {
            socket: self.socket.clone(),
            status,
        }
    }

    pub async fn status(&self) -> Result<v2::StatusResponse, KmsClientError> {
        let resp = self
            .inner
            .clone()
            .status(v2::StatusRequest {})
            .await
            .map_err(|s| self.rpc_err(s))?;
        Ok(resp.into_inner())
    }

    /// Wraps a DEK/seed; the response carries the ciphertext, key_id and annotations to store.
    pub async fn encrypt(
        &self,
        plaintext: &[u8],
        uid: &str,
    ) -> Result<v2::EncryptResponse, KmsClientError> {
        let req = v2::EncryptRequest {
            plaintext: plaintext.to_vec(),
            uid: uid.to_string(),
        };
        let resp = self
            .inner
            .clone()
            .encrypt(req)
            .await
            .map_err(|s| self.rpc_err(s))?;
        Ok(resp.into_inner())
    }

    pub async fn decrypt(
        &self,
        ciphertext: &[u8],
        uid: &str,
        key_id: &str,
        annotations: &BTreeMap<String, Vec<u8>>,
    ) -> Result<Zeroizing<Vec<u8>>, KmsClientError> {
        let req = v2::DecryptRequest {
            ciphertext: ciphertext.to_vec(),
            uid: uid.to_string(),
            key_id: key_id.to_string(),
            annotations: annotations.clone(),
        };
        let resp = self
            .inner
            .clone()
            .decrypt(req)
            .await
            .map_err(|s| self.rpc_err(s))?;
        Ok(Zeroizing::new(resp.into_inner().plaintext))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            socket_path_from_endpoint("unix:///var/run/kmsplugin/socket.sock").unwrap(),
            PathBuf::from("/var/run/kmsplugin/socket.sock")
        );
        assert_eq!(
            socket_path_from_endpoint("/tmp/k.sock").unwrap(),
            PathBuf::from("/tmp/k.sock")
        );
        assert!(socket_path_from_endpoint("https://x").is_err());
        assert!(socket_path_from_endpoint("unix://relative").is_err());
    }

    #[tokio::test]
    async fn missing_socket_is_an_rpc_error_not_a_panic() {
        let c = KmsV2Client::connect("unix:///nonexistent/kms.sock", Duration::from_millis(300))
            .unwrap();
        let e = c.status().await.unwrap_err();
        assert!(
            e.to_string().starts_with("rpc error: code = Unavailable"),
            "{e}"
        );
    }
}
