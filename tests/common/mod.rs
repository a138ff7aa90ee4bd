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
    /// The server certificate names only `etcd-node1`, not the address: clients must override the name.
    pub fn start(third_octet: u8) -> Result<Self> {
        let tmp = tempfile::tempdir()?;
        let mut etcd = Self::start_in(tmp.path(), private_loopback(third_octet), false)?;
        etcd._tmp = Some(tmp);
        Ok(etcd)
    }

    /// `ip_in_cert`: also name the address (kube-apiserver dials etcd by URL, without a name override).
    pub fn start_in(dir: &Path, ip: IpAddr, ip_in_cert: bool) -> Result<Self> {
        let ip_text = ip.to_string();
        let names: Vec<&str> = if ip_in_cert {
            vec![ETCD_SERVER_NAME, &ip_text]
        } else {
            vec![ETCD_SERVER_NAME]
        };
        let pki = Pki::new(&names)?;
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

    pub fn pid(&self) -> u32 {
        self.child.id()
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

/// Where the kube-apiserver stand-in binary is (`cargo build -p testbed --bin kube-apiserver [--release]`).
pub fn standin_binary() -> Result<PathBuf> {
    if let Ok(path) = std::env::var("ATREST_STANDIN_BIN") {
        return Ok(PathBuf::from(path));
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| format!("{}/target", env!("CARGO_MANIFEST_DIR")));
    // The most recently built of the release and debug binaries.
    let newest = ["release", "debug"]
        .iter()
        .map(|profile| Path::new(&target).join(profile).join("kube-apiserver"))
        .filter_map(|path| Some((std::fs::metadata(&path).ok()?.modified().ok()?, path)))
        .max();
    if let Some((_, path)) = newest {
        return Ok(path);
    }
    bail!(
        "kube-apiserver stand-in not built: run `cargo build -p testbed --bin kube-apiserver` (or set ATREST_STANDIN_BIN)"
    )
}

/// The kube-apiserver stand-in serving TLS with client-certificate auth, talking to `etcd`; killed on drop.
pub struct StandIn {
    child: Option<Child>,
    pub dir: PathBuf,
    pub url: String,
    pub kubeconfig: PathBuf,
    args: Vec<String>,
}

impl StandIn {
    /// Start with `encryption_config` (YAML) written to `dir/encryption.yaml`.
    pub fn start(
        etcd: &EtcdProcess,
        dir: &Path,
        ip: IpAddr,
        encryption_config: &str,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let pki = Pki::new(&[&ip.to_string(), "kubernetes"])?;
        std::fs::write(dir.join("apiserver.pem"), &pki.server_cert_pem)?;
        std::fs::write(dir.join("apiserver-key.pem"), &pki.server_key_pem)?;
        std::fs::write(dir.join("client-ca.pem"), &pki.ca_pem)?;
        let port = free_port(ip)?;
        let url = format!("https://{ip}:{port}");
        std::fs::write(dir.join("ca.pem"), &pki.ca_pem)?;
        let kubeconfig = dir.join("kubeconfig");
        write_kubeconfig(&kubeconfig, &url, &pki)?;
        std::fs::write(
            dir.join("tokens.csv"),
            format!("{TEST_TOKEN},admin,1,\"system:masters\"\n"),
        )?;
        let encryption = dir.join("encryption.yaml");
        std::fs::write(&encryption, encryption_config)?;
        let p = |name: &str| etcd.dir.join(name).display().to_string();
        let args = vec![
            format!("--etcd-servers={}", etcd.client_url),
            format!("--etcd-cafile={}", p("ca.pem")),
            format!("--etcd-certfile={}", p("client.pem")),
            format!("--etcd-keyfile={}", p("client-key.pem")),
            format!("--encryption-provider-config={}", encryption.display()),
            format!("--bind-address={ip}"),
            format!("--secure-port={port}"),
            format!("--tls-cert-file={}", dir.join("apiserver.pem").display()),
            format!(
                "--tls-private-key-file={}",
                dir.join("apiserver-key.pem").display()
            ),
            format!("--client-ca-file={}", dir.join("client-ca.pem").display()),
            format!("--token-auth-file={}", dir.join("tokens.csv").display()),
            "--anonymous-auth=false".to_string(),
        ];
        let mut standin = Self {
            child: None,
            dir: dir.to_path_buf(),
            url,
            kubeconfig,
            args,
        };
        standin.spawn()?;
        Ok(standin)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("kube-apiserver.log"))?;
        let child = Command::new(standin_binary()?)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn kube-apiserver stand-in")?;
        self.child = Some(child);
        Ok(())
    }

    /// Stop, write a new encryption config, start again (what an RKE rolling restart does per node).
    pub fn restart_with(&mut self, encryption_config: &str) -> Result<()> {
        self.stop();
        std::fs::write(self.dir.join("encryption.yaml"), encryption_config)?;
        self.spawn()
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A client from the kubeconfig, once the server answers.
    pub async fn ready(&self) -> Result<kube::Client> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(client) = atrest::exec::kube::client(&self.kubeconfig).await
                && client.apiserver_version().await.is_ok()
            {
                return Ok(client);
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join("kube-apiserver.log"))
                    .unwrap_or_default();
                bail!("stand-in at {} not ready after 30 s; log:\n{log}", self.url);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The bearer token the stand-in accepts (`--token-auth-file`).
pub const TEST_TOKEN: &str = "atrest-test-token-0123456789";

/// A kubeconfig that authenticates with a bearer token and names the server `server_url`.
pub fn write_token_kubeconfig(
    path: &Path,
    server_url: &str,
    ca_pem: &str,
    token: &str,
) -> Result<()> {
    use base64::Engine as _;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: {server_url}\n    certificate-authority-data: {ca}\n\
         users:\n- name: u\n  user:\n    token: {token}\n\
         contexts:\n- name: t\n  context:\n    cluster: t\n    user: u\ncurrent-context: t\n"
    );
    std::fs::write(path, yaml)?;
    Ok(())
}

fn write_kubeconfig(path: &Path, url: &str, pki: &Pki) -> Result<()> {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {url}\n    certificate-authority-data: {}\n\
         users:\n- name: admin\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n\
         contexts:\n- name: test\n  context:\n    cluster: test\n    user: admin\ncurrent-context: test\n",
        b64(&pki.ca_pem),
        b64(&pki.client_cert_pem),
        b64(&pki.client_key_pem)
    );
    std::fs::write(path, yaml)?;
    Ok(())
}

/// A random 32-byte AES key, base64.
pub fn random_key() -> String {
    use base64::Engine as _;
    let key: [u8; 32] = rand::random();
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// An aescbc EncryptionConfiguration for `resources` with the keys in order (first = write key).
pub fn aescbc_config(resources: &[&str], keys: &[(&str, &str)]) -> String {
    let mut yaml = String::from(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources:\n",
    );
    for r in resources {
        yaml.push_str(&format!("  - \"{r}\"\n"));
    }
    yaml.push_str("  providers:\n  - aescbc:\n      keys:\n");
    for (name, secret) in keys {
        yaml.push_str(&format!("      - name: {name}\n        secret: {secret}\n"));
    }
    yaml.push_str("  - identity: {}\n");
    yaml
}
