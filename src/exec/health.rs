//! kube-apiserver readiness: `GET /readyz` on the node's own apiserver, reached through an SSH direct-tcpip
//! channel, over HTTPS. Container state is not a health signal (a crash-looping container with
//! `--restart=always` reports `Running=true`); only an HTTP 200 from `/readyz` is.
//!
//! TLS: with `kube-ca` given, the serving certificate is verified against it for the address dialled (what
//! kubectl does), and a client certificate is presented when given (RKE disables anonymous auth, so an anonymous
//! `/readyz` gets 401). [`HealthProbe::from_node_certs`] takes both from the node's own `ssl/` dir. Without a CA, the certificate is not checked — the channel itself is already authenticated by
//! SSH host-key verification and ends on the node, so this only trusts "whatever listens on the node's :6443".

use crate::exec::files::{FileError, read_files};
use crate::exec::ssh::Host;
use crate::exec::tunnel::open_stream;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use std::sync::Arc;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// How to reach and trust one node's apiserver. `Debug` leaves out the client key.
#[derive(Clone)]
pub struct HealthProbe {
    /// Host name or IP as seen from the node (usually the node's address).
    pub target: String,
    pub port: u16,
    /// PEM of kube-ca; `None` skips certificate verification (see the module docs).
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate and key (PEM) to present: RKE runs kube-apiserver with `--anonymous-auth=false`, so
    /// `/readyz` answers 401 to anonymous callers. Any certificate signed by kube-ca will do.
    pub client_cert_pem: Option<Vec<u8>>,
    pub client_key_pem: Option<Zeroizing<Vec<u8>>>,
    /// Plain HTTP instead of HTTPS (only for the testbed's placeholder server, which has no TLS).
    pub plain_http: bool,
}

impl std::fmt::Debug for HealthProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthProbe")
            .field("target", &self.target)
            .field("port", &self.port)
            .field(
                "ca_pem",
                &crate::secret::Withheld::of(self.ca_pem.as_deref()),
            )
            .field(
                "client_cert_pem",
                &crate::secret::Withheld::of(self.client_cert_pem.as_deref()),
            )
            .field(
                "client_key_pem",
                &crate::secret::Withheld::of(self.client_key_pem.as_deref().map(Vec::as_slice)),
            )
            .field("plain_http", &self.plain_http)
            .finish()
    }
}

impl HealthProbe {
    /// `https://<internal_address or address>:6443`.
    pub fn for_host(host: &Host, ca_pem: Option<Vec<u8>>) -> Self {
        let node = host.node();
        let target = node
            .internal_address
            .clone()
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| node.address.clone());
        Self {
            target,
            port: 6443,
            ca_pem,
            client_cert_pem: None,
            client_key_pem: None,
            plain_http: false,
        }
    }

    /// Like [`HealthProbe::for_host`], trusting the node's own `kube-ca.pem` and presenting its `kube-node`
    /// certificate, read with root rights from `<kubernetes_dir>/ssl/` (RKE puts both on every controlplane).
    pub async fn from_node_certs(
        host: &Arc<Host>,
        kubernetes_dir: &str,
    ) -> Result<Self, FileError> {
        let ssl = format!("{kubernetes_dir}/ssl");
        let missing = |what: &str| FileError::Other {
            node: host.label().to_string(),
            what: "reading",
            path: format!("{ssl}/{what}"),
            status: 1,
            stderr: "file not found".into(),
        };
        let names = ["kube-ca.pem", "kube-node.pem", "kube-node-key.pem"];
        let paths = names.map(|name| format!("{ssl}/{name}"));
        let files = read_files(host, &paths.each_ref().map(String::as_str)).await?;
        let [ca, cert, key]: [_; 3] = files
            .try_into()
            .map_err(|_| missing("kube-ca.pem, kube-node.pem, kube-node-key.pem"))?;
        let ca = ca.ok_or_else(|| missing(names[0]))?;
        let cert = cert.ok_or_else(|| missing(names[1]))?;
        let key = key.ok_or_else(|| missing(names[2]))?;
        let mut probe = Self::for_host(host, Some(ca.to_vec()));
        probe.client_cert_pem = Some(cert.to_vec());
        probe.client_key_pem = Some(key);
        Ok(probe)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{node}: kube-apiserver at {target}:{port} not ready after {secs}s (last: {last}){}", server_suffix(.server))]
pub struct NotReady {
    pub node: String,
    pub target: String,
    pub port: u16,
    pub secs: u64,
    pub last: String,
    /// Why, as the node's Docker tells it (`NodeDocker::why_not_serving`), when the caller could ask.
    pub server: Option<String>,
}

fn server_suffix(server: &Option<String>) -> String {
    server
        .as_ref()
        .map(|s| format!("; {s}"))
        .unwrap_or_default()
}

/// One probe: `Ok(())` on HTTP 200, else a description of what was seen, naming the checks `/readyz` says
/// failed (an operator's first question when a server never becomes ready: etcd? a KMS plugin?).
pub async fn probe_once(host: &Host, probe: &HealthProbe) -> Result<(), String> {
    let (status, body) = get(host, probe, "/readyz").await?;
    if status == 200 {
        return Ok(());
    }
    let failing = failing_checks(&body);
    if failing.is_empty() {
        Err(format!("HTTP {status}"))
    } else {
        Err(format!("HTTP {status}, failing: {}", failing.join(", ")))
    }
}

/// The names of the checks a `/readyz` body marks `[-]` (`[-]etcd failed: reason withheld` → `etcd`). The
/// server withholds the reasons from the body; its log has them.
fn failing_checks(body: &str) -> Vec<&str> {
    body.lines()
        .filter_map(|line| line.trim().strip_prefix("[-]"))
        .map(|rest| rest.split_once(' ').map_or(rest, |(name, _)| name))
        .take(8)
        .collect()
}

/// Longest a [`get`] may take, from opening the tunnel to the last byte of the body. A connection through the
/// SSH tunnel has been seen to stall with no byte and no close (a server that refused the client certificate,
/// under load): without a deadline the caller would wait forever.
pub const GET_DEADLINE: Duration = Duration::from_secs(15);

/// `GET path` on the node's own apiserver, through the same channel and TLS as the probe: status and body
/// (also what [`crate::exec::metrics`] reads `/metrics` with), within [`GET_DEADLINE`].
pub async fn get(host: &Host, probe: &HealthProbe, path: &str) -> Result<(u16, String), String> {
    match tokio::time::timeout(GET_DEADLINE, get_unbounded(host, probe, path)).await {
        Ok(answer) => answer,
        Err(_) => Err(format!(
            "GET {path}: no answer within {} s (the connection through the SSH tunnel stalled)",
            GET_DEADLINE.as_secs()
        )),
    }
}

async fn get_unbounded(
    host: &Host,
    probe: &HealthProbe,
    path: &str,
) -> Result<(u16, String), String> {
    let stream = open_stream(host, &probe.target, probe.port)
        .await
        .map_err(|e| e.to_string())?;
    if probe.plain_http {
        get_over(hyper_util::rt::TokioIo::new(stream), &probe.target, path).await
    } else {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config(probe)?));
        let name = ServerName::try_from(probe.target.clone())
            .map_err(|e| format!("bad server name: {e}"))?;
        let tls = connector
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        get_over(hyper_util::rt::TokioIo::new(tls), &probe.target, path).await
    }
}

/// An error with its sources (hyper's "connection error" alone hides the TLS alert that caused it).
fn with_sources(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

/// Why a request failed. Under TLS 1.3 the server checks the client certificate only after the handshake, so a
/// refusal (`CertificateRequired`) reaches the connection task, and the request itself may only learn that the
/// connection went away ("connection was not ready"): the connection's own error names the cause.
async fn why_refused(
    request_error: hyper::Error,
    connection: tokio::task::JoinHandle<hyper::Result<()>>,
) -> String {
    match tokio::time::timeout(Duration::from_secs(1), connection).await {
        Ok(Ok(Err(connection_error))) => with_sources(&connection_error),
        _ => with_sources(&request_error),
    }
}

async fn get_over<IO>(io: IO, authority: &str, path: &str) -> Result<(u16, String), String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(io)
        .await
        .map_err(|e| format!("HTTP handshake: {}", with_sources(&e)))?;
    let connection = tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, authority)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = match sender.send_request(req).await {
        Ok(resp) => resp,
        Err(e) => return Err(format!("GET {path}: {}", why_refused(e, connection).await)),
    };
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    Ok((status, body))
}

fn tls_config(probe: &HealthProbe) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match probe.ca_pem.as_deref() {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| format!("kube-ca PEM: {e}"))?;
                roots.add(cert).map_err(|e| format!("kube-ca: {e}"))?;
            }
            if roots.is_empty() {
                return Err("kube-ca PEM holds no certificate".into());
            }
            builder.with_root_certificates(roots)
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider))),
    };
    match (&probe.client_cert_pem, &probe.client_key_pem) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("client certificate PEM: {e}"))?;
            let key =
                PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("client key PEM: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate: {e}"))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// Accepts any certificate (signatures are still checked for protocol integrity). See the module docs.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Poll `/readyz` until it answers 200 `required_ok` times in a row, or `timeout` passes.
pub async fn wait_ready(
    host: &Host,
    probe: &HealthProbe,
    timeout: Duration,
) -> Result<(), NotReady> {
    let start = Instant::now();
    let mut last = "no answer yet".to_string();
    let mut consecutive = 0;
    // Two answers in a row: a container that starts and then crashes (e.g. a bad config read late) must not pass.
    let required_ok = 2;
    while start.elapsed() < timeout {
        // A lost connection never comes back within this run: waiting on would only delay the error.
        if host.is_closed() {
            last = "the SSH connection to the node was lost".into();
            break;
        }
        let attempt = tokio::time::timeout(Duration::from_secs(5), probe_once(host, probe)).await;
        match attempt {
            Ok(Ok(())) => {
                consecutive += 1;
                if consecutive >= required_ok {
                    return Ok(());
                }
            }
            Ok(Err(e)) => {
                consecutive = 0;
                last = e;
            }
            Err(_) => {
                consecutive = 0;
                last = "probe timed out".into();
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(NotReady {
        node: host.label().to_string(),
        target: probe.target.clone(),
        port: probe.port,
        secs: start.elapsed().as_secs().min(timeout.as_secs()),
        last,
        server: None,
    })
}

#[cfg(test)]
mod debug_tests {
    use super::*;

    #[test]
    fn debug_of_a_probe_leaves_out_the_client_key() {
        let probe = HealthProbe {
            target: "10.0.0.1".into(),
            port: 6443,
            ca_pem: None,
            client_cert_pem: Some(b"-----BEGIN CERTIFICATE-----".to_vec()),
            client_key_pem: Some(Zeroizing::new(b"-----BEGIN PRIVATE KEY-----".to_vec())),
            plain_http: false,
        };
        let text = format!("{probe:?}");
        assert!(
            !text.contains("PRIVATE") && !text.contains("45, 45"),
            "{text}"
        );
        assert!(
            text.contains("client_key_pem: Some(<27 bytes, not shown>)"),
            "{text}"
        );
        assert!(text.contains("10.0.0.1"), "{text}");
    }
}

#[cfg(test)]
mod tests {
    use super::failing_checks;

    #[test]
    fn readyz_bodies_name_their_failing_checks() {
        let body = "[+]ping ok\n[+]log ok\n[-]etcd failed: reason withheld\n[+]kms-providers ok\n\
                    [-]poststarthook/start-service-ip-repair-controllers failed: reason withheld\n\
                    readyz check failed\n";
        assert_eq!(
            failing_checks(body),
            ["etcd", "poststarthook/start-service-ip-repair-controllers"]
        );
        assert!(failing_checks("[+]ping ok\nok\n").is_empty());
        assert!(failing_checks("").is_empty());
        assert_eq!(failing_checks("[-]x"), ["x"]);
    }
}
