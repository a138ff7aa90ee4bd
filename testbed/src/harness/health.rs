//! Bounded readiness probes: Docker engine `/_ping`, TCP, and HTTPS `GET` with client-certificate auth.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Polls `probe` every `every` until it returns Ok(true) or `timeout` passes; the error names `what`.
pub fn wait_for(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut probe: impl FnMut() -> bool,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if probe() {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(every);
    }
}

/// Like [`wait_for`], but `probe` may give up early with an error (e.g. the daemon exited).
pub fn wait_until(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Result<bool>,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if probe().with_context(|| format!("waiting for {what}"))? {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(every);
    }
}

/// The last `lines` lines of a log file (for error messages).
pub fn log_tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    format!("{}:\n{tail}", path.display())
}

/// Docker Engine `GET /_ping` over its unix socket answers `OK`.
pub fn docker_ping(sock: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(sock) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.") && buf.contains(" 200 ") && buf.ends_with("OK")
}

pub fn tcp_open(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

/// A blocking HTTPS client for probes: trusts `ca_pem`, authenticates with a client certificate.
pub struct HttpsProbe {
    config: Arc<rustls::ClientConfig>,
}

impl HttpsProbe {
    pub fn new(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<HttpsProbe> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots
                .add(c.context("parsing the CA certificate")?)
                .context("adding the CA certificate")?;
        }
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .context("parsing the client certificate")?;
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("parsing the client key")?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .context("client certificate")?;
        Ok(HttpsProbe {
            config: Arc::new(config),
        })
    }

    /// `GET path` on `addr` (server name = its IP); returns status and body.
    pub fn get(&self, addr: SocketAddr, path: &str) -> Result<(u16, String)> {
        let name = ServerName::IpAddress(addr.ip().into());
        let conn =
            rustls::ClientConnection::new(self.config.clone(), name).context("TLS client")?;
        let sock = TcpStream::connect_timeout(&addr, Duration::from_millis(500))
            .with_context(|| format!("connecting to {addr}"))?;
        sock.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut tls = rustls::StreamOwned::new(conn, sock);
        write!(
            tls,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut raw = Vec::new();
        // A peer closing without close_notify still delivered the whole response.
        if let Err(e) = tls.read_to_end(&mut raw)
            && raw.is_empty()
        {
            return Err(anyhow!(e)).with_context(|| format!("reading from https://{addr}{path}"));
        }
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("no HTTP status from https://{addr}{path}"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    }
}
