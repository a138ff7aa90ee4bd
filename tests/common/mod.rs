//! Real processes for the rewrite/census tests and the benchmark: a TLS etcd on a private loopback address.
#![allow(dead_code)]

use anyhow::{Context, Result, bail};
use atrest::exec::etcd::{Etcd, EtcdTarget, EtcdTls};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// A CA plus one server and one client certificate, as PEM.
pub struct Pki {
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
}

impl Pki {
    /// The server certificate names only `server_name` (no IP), as etcd nodes reached through a tunnel.
    pub fn new(server_names: &[&str]) -> Result<Self> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;
        let server_key = KeyPair::generate()?;
        let mut server_params = CertificateParams::new(
            server_names
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )?;
        server_params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let server = server_params.signed_by(&server_key, &ca)?;
        let client_key = KeyPair::generate()?;
        let mut client_params = CertificateParams::new(vec!["atrest-test".to_string()])?;
        client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client = client_params.signed_by(&client_key, &ca)?;
        Ok(Self {
            ca_pem: ca.pem(),
            server_cert_pem: server.pem(),
            server_key_pem: server_key.serialize_pem(),
            client_cert_pem: client.pem(),
            client_key_pem: client_key.serialize_pem(),
        })
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        for (name, body) in [
            ("ca.pem", &self.ca_pem),
            ("server.pem", &self.server_cert_pem),
            ("server-key.pem", &self.server_key_pem),
            ("client.pem", &self.client_cert_pem),
            ("client-key.pem", &self.client_key_pem),
        ] {
            std::fs::write(dir.join(name), body)?;
        }
        Ok(())
    }
}

/// A free port on `ip` (bound then released; good enough on a private loopback address).
pub fn free_port(ip: IpAddr) -> Result<u16> {
    Ok(TcpListener::bind(SocketAddr::new(ip, 0))?
        .local_addr()?
        .port())
}

/// A loopback address private to this process, so parallel tests and other agents do not collide.
pub fn private_loopback(third_octet: u8) -> IpAddr {
    let id = std::process::id();
    IpAddr::from([
        127,
        third_octet,
        ((id >> 8) % 250) as u8 + 2,
        (id % 250) as u8 + 2,
    ])
}

pub const ETCD_SERVER_NAME: &str = "etcd-node1";

/// A single-member etcd with TLS client auth, killed on drop.
pub struct EtcdProcess {
    child: Child,
    pub dir: PathBuf,
    pub client_url: String,
    pub pki: Pki,
    _tmp: Option<tempfile::TempDir>,
}

impl EtcdProcess {
    pub fn start(third_octet: u8) -> Result<Self> {
        let tmp = tempfile::tempdir()?;
        let mut etcd = Self::start_in(tmp.path(), private_loopback(third_octet))?;
        etcd._tmp = Some(tmp);
        Ok(etcd)
    }

    pub fn start_in(dir: &Path, ip: IpAddr) -> Result<Self> {
        let pki = Pki::new(&[ETCD_SERVER_NAME])?;
        pki.write(dir)?;
        let client_port = free_port(ip)?;
        let peer_port = free_port(ip)?;
        let client_url = format!("https://{ip}:{client_port}");
        let peer_url = format!("http://{ip}:{peer_port}");
        let log = std::fs::File::create(dir.join("etcd.log"))?;
        let child = Command::new("etcd")
            .args(["--name", "node1", "--data-dir"])
            .arg(dir.join("data"))
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("node1={peer_url}")])
            .arg("--cert-file")
            .arg(dir.join("server.pem"))
            .arg("--key-file")
            .arg(dir.join("server-key.pem"))
            .arg("--trusted-ca-file")
            .arg(dir.join("ca.pem"))
            .args([
                "--client-cert-auth",
                "--heartbeat-interval=10",
                "--election-timeout=100",
            ])
            .args(["--quota-backend-bytes", "8589934592", "--logger", "zap"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn etcd")?;
        let process = Self {
            child,
            dir: dir.to_path_buf(),
            client_url,
            pki,
            _tmp: None,
        };
        Ok(process)
    }

    pub fn target(&self, server_name: Option<&str>) -> EtcdTarget {
        EtcdTarget {
            endpoints: vec![self.client_url.clone()],
            tls: Some(EtcdTls {
                ca_pem: self.pki.ca_pem.clone().into_bytes(),
                cert_pem: self.pki.client_cert_pem.clone().into_bytes(),
                key_pem: Zeroizing::new(self.pki.client_key_pem.clone().into_bytes()),
                server_name: server_name.map(str::to_string),
            }),
        }
    }

    /// Connect (verifying the server as `etcd-node1`) once etcd answers.
    pub async fn ready(&self) -> Result<Etcd> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(etcd) = Etcd::connect(&self.target(Some(ETCD_SERVER_NAME))).await {
                let mut client = etcd.client().clone();
                if client.status().await.is_ok() {
                    return Ok(etcd);
                }
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default();
                bail!(
                    "etcd at {} not ready after 20 s; log:\n{log}",
                    self.client_url
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `etcdctl` arguments for this member (TLS, server name not checked against the IP).
    pub fn etcdctl(&self) -> Command {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.client_url))
            .arg(format!("--cacert={}", self.dir.join("ca.pem").display()))
            .arg(format!("--cert={}", self.dir.join("client.pem").display()))
            .arg(format!(
                "--key={}",
                self.dir.join("client-key.pem").display()
            ))
            .arg("--insecure-skip-tls-verify");
        cmd
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
