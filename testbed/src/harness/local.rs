//! A single-node etcd (TLS with client-certificate auth) and a kube-apiserver as host processes on a private
//! loopback address, for tests and benchmarks that do not need the full testbed (no SSH, no Docker); torn down on
//! drop. Both are the real ones built from upstream's modules (`scripts/build-upstream.sh`); etcd falls back to
//! the distribution's `etcd` when the upstream build is absent (the census tests need no kube-apiserver).
//!
//! One CA (the harness's [`pki::Ca`]) signs etcd's serving certificate, the API server's serving certificate
//! (`kubernetes`, `localhost` and the address) and one client certificate (`admin`, group `system:masters`) that
//! both etcd and the API server accept. The API server's serving key also signs service-account tokens.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use atrest::exec::etcd::{Etcd, EtcdTarget, EtcdTls};
use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
use zeroize::Zeroizing;

use super::files::{kubeconfig_with_cert, write_mode};
use super::health;
use super::pki::{Ca, CertPair, san};
use super::procs;
use super::upstream::Upstream;

/// The name etcd's certificate always carries (clients reaching it by address override the name).
pub const ETCD_SERVER_NAME: &str = "etcd-node1";

/// The bearer token in the API server's `tokens.csv` (user `admin`, group `system:masters`).
pub const TEST_TOKEN: &str = "atrest-test-token-0123456789";
/// A second token in the token file: user [`LIMITED_USER`], in no group the server exempts from API Priority and
/// Fairness (as `system:masters` is), and with no rights until a test binds some.
pub const LIMITED_TOKEN: &str = "atrest-limited-token-9876543210";
pub const LIMITED_USER: &str = "atrest-limited";

/// A loopback address private to this process, so test binaries running side by side (scripts/test-lanes) and
/// other agents do not collide: `127.<third_octet>.x.y`, claimed by an exclusive lock on a file named after it
/// (held until the process exits). The first candidate derives from the PID; a claimed one moves to the next.
pub fn private_loopback(third_octet: u8) -> Ipv4Addr {
    static CLAIMED: std::sync::Mutex<Vec<(Ipv4Addr, fs::File)>> = std::sync::Mutex::new(Vec::new());
    let mut claimed = CLAIMED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((ip, _)) = claimed.iter().find(|(ip, _)| ip.octets()[1] == third_octet) {
        return *ip;
    }
    let dir = std::env::temp_dir().join("atrest-loopback");
    let _ = fs::create_dir_all(&dir);
    let start = std::process::id() % (250 * 250);
    for step in 0..250 * 250 {
        let n = (start + step) % (250 * 250);
        let ip = Ipv4Addr::new(127, third_octet, (n / 250) as u8 + 2, (n % 250) as u8 + 2);
        let Ok(file) = fs::File::create(dir.join(ip.to_string())) else {
            break;
        };
        if file.try_lock().is_ok() {
            claimed.push((ip, file));
            return ip;
        }
    }
    // No lock directory (or every address taken): the PID's address, as before locks.
    Ipv4Addr::new(
        127,
        third_octet,
        ((start / 250) as u8) + 2,
        ((start % 250) as u8) + 2,
    )
}

/// A free port on `ip` (bound then released; good enough on a private loopback address).
pub fn free_port(ip: IpAddr) -> Result<u16> {
    Ok(TcpListener::bind(SocketAddr::new(ip, 0))
        .with_context(|| format!("binding a port on {ip}"))?
        .local_addr()?
        .port())
}

/// The certificates of one local etcd + kube-apiserver, as PEM and as files in `dir`.
pub struct LocalPki {
    dir: PathBuf,
    pub ca: CertPair,
    pub etcd: CertPair,
    pub apiserver: CertPair,
    pub client: CertPair,
}

impl LocalPki {
    /// Generates and writes `ca.pem`, `etcd.pem`, `apiserver.pem`, `client.pem` (keys `*-key.pem`, 0600).
    pub fn create(dir: &Path, etcd_names: &[&str], apiserver_names: &[&str]) -> Result<LocalPki> {
        let sans = |names: &[&str]| names.iter().map(|n| san(n)).collect::<Result<Vec<_>>>();
        let ca = Ca::generate("ca")?;
        let pki = LocalPki {
            dir: dir.to_path_buf(),
            etcd: ca.sign(
                "etcd",
                ETCD_SERVER_NAME,
                None,
                &[ServerAuth, ClientAuth],
                sans(etcd_names)?,
            )?,
            apiserver: ca.sign(
                "apiserver",
                "kube-apiserver",
                None,
                &[ServerAuth],
                sans(apiserver_names)?,
            )?,
            client: ca.sign(
                "client",
                "admin",
                Some("system:masters"),
                &[ClientAuth],
                vec![],
            )?,
            ca: ca.cert,
        };
        for c in [&pki.ca, &pki.etcd, &pki.apiserver, &pki.client] {
            write_mode(&pki.cert_file(&c.name), c.cert_pem.as_bytes(), 0o644)?;
            write_mode(&pki.key_file(&c.name), c.key_pem.as_bytes(), 0o600)?;
        }
        Ok(pki)
    }

    fn cert_file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }
    fn key_file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}-key.pem"))
    }
    pub fn ca_file(&self) -> PathBuf {
        self.cert_file(&self.ca.name)
    }
    pub fn client_cert_file(&self) -> PathBuf {
        self.cert_file(&self.client.name)
    }
    pub fn client_key_file(&self) -> PathBuf {
        self.key_file(&self.client.name)
    }
    pub fn etcd_cert_file(&self) -> PathBuf {
        self.cert_file(&self.etcd.name)
    }
    pub fn etcd_key_file(&self) -> PathBuf {
        self.key_file(&self.etcd.name)
    }
    pub fn apiserver_cert_file(&self) -> PathBuf {
        self.cert_file(&self.apiserver.name)
    }
    pub fn apiserver_key_file(&self) -> PathBuf {
        self.key_file(&self.apiserver.name)
    }
}

/// A single-member etcd with TLS client auth, killed on drop.
pub struct LocalEtcd {
    child: Child,
    pub dir: PathBuf,
    pub ip: IpAddr,
    pub client_url: String,
    pub pki: LocalPki,
    /// Does etcd's certificate name the address (else clients must verify it as [`ETCD_SERVER_NAME`])?
    ip_in_cert: bool,
    _tmp: Option<tempfile::TempDir>,
}

impl LocalEtcd {
    /// In a temp dir of its own, at [`private_loopback`]`(third_octet)`; the certificate names only
    /// [`ETCD_SERVER_NAME`], not the address, as etcd nodes reached through a tunnel.
    pub fn start(third_octet: u8) -> Result<Self> {
        let tmp = tempfile::tempdir().context("creating a temp dir for etcd")?;
        let mut etcd = Self::start_in(tmp.path(), private_loopback(third_octet).into(), false)?;
        etcd._tmp = Some(tmp);
        Ok(etcd)
    }

    /// In `dir` (certificates, `data/`, `etcd.log`). `ip_in_cert`: the certificate also names the address
    /// (kube-apiserver dials etcd by URL, without a name override).
    pub fn start_in(dir: &Path, ip: IpAddr, ip_in_cert: bool) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let ip_text = ip.to_string();
        let mut etcd_names = vec![ETCD_SERVER_NAME];
        if ip_in_cert {
            etcd_names.push(&ip_text);
        }
        let pki = LocalPki::create(dir, &etcd_names, &[&ip_text, "kubernetes", "localhost"])?;
        let client_url = format!("https://{ip}:{}", free_port(ip)?);
        let peer_url = format!("http://{ip}:{}", free_port(ip)?);
        let mut cmd = Command::new(etcd_binary());
        cmd.args(["--name", "node1", "--data-dir"])
            .arg(dir.join("data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("node1={peer_url}")])
            .arg("--cert-file")
            .arg(pki.etcd_cert_file())
            .arg("--key-file")
            .arg(pki.etcd_key_file())
            .arg("--trusted-ca-file")
            .arg(pki.ca_file())
            .args([
                "--client-cert-auth",
                "--heartbeat-interval=10",
                "--election-timeout=100",
            ])
            .args(["--quota-backend-bytes", "8589934592", "--logger", "zap"]);
        let child = procs::spawn_daemon(&mut cmd, &dir.join("etcd.log"))?;
        Ok(Self {
            child,
            dir: dir.to_path_buf(),
            ip,
            client_url,
            pki,
            ip_in_cert,
            _tmp: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        health::log_tail(&self.dir.join("etcd.log"), 20)
    }

    /// Blocks until etcd accepts TCP connections (or fails when it exited or 20 s passed).
    pub fn wait_listening(&mut self) -> Result<()> {
        let addr = SocketAddr::new(self.ip, port_of(&self.client_url)?);
        let child = &mut self.child;
        let log = self.dir.join("etcd.log");
        health::wait_until(
            &format!("etcd at {addr}"),
            Duration::from_secs(20),
            Duration::from_millis(50),
            || {
                if let Some(status) = child.try_wait()? {
                    bail!("etcd exited with {status}; {}", health::log_tail(&log, 20));
                }
                Ok(health::tcp_open(addr))
            },
        )?;
        Ok(())
    }

    /// Where atrest finds this member; `server_name` overrides the name the certificate is checked against.
    pub fn target(&self, server_name: Option<&str>) -> EtcdTarget {
        EtcdTarget {
            endpoints: vec![self.client_url.clone()],
            tls: Some(EtcdTls {
                ca_pem: self.pki.ca.cert_pem.clone().into_bytes(),
                cert_pem: self.pki.client.cert_pem.clone().into_bytes(),
                key_pem: Zeroizing::new(self.pki.client.key_pem.as_bytes().to_vec()),
                server_name: server_name.map(str::to_string),
            }),
        }
    }

    /// Connect (verifying the server as [`ETCD_SERVER_NAME`]) once etcd answers, within 20 s.
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
                bail!(
                    "etcd at {} not ready after 20 s; {}",
                    self.client_url,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `etcdctl` (v3 API) with the client certificate; append the command.
    pub fn etcdctl(&self) -> Command {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.client_url))
            .arg(format!("--cacert={}", self.pki.ca_file().display()))
            .arg(format!("--cert={}", self.pki.client_cert_file().display()))
            .arg(format!("--key={}", self.pki.client_key_file().display()));
        if !self.ip_in_cert {
            // etcdctl has no server-name override; the certificate does not name the address.
            cmd.arg("--insecure-skip-tls-verify");
        }
        cmd
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The upstream etcd build when there is one (the same etcd as the testbed's), else the distribution's `etcd`.
fn etcd_binary() -> PathBuf {
    Upstream::locate()
        .map(|up| up.etcd)
        .unwrap_or_else(|_| PathBuf::from("etcd"))
}

fn port_of(url: &str) -> Result<u16> {
    url.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no port in {url}"))
}

/// The real kube-apiserver serving TLS on `ip` in front of a [`LocalEtcd`]; killed on drop.
pub struct LocalApiserver {
    child: Option<Child>,
    bin: PathBuf,
    /// Flags every start passes: etcd, address, serving certificate, client CA.
    base_args: Vec<String>,
    /// Flags of the current start (after `base_args`).
    extra_args: Vec<String>,
    pub dir: PathBuf,
    pub ip: IpAddr,
    pub port: u16,
    pub url: String,
    /// Client-certificate kubeconfig (`dir/kubeconfig`).
    pub kubeconfig: PathBuf,
    /// `dir/tokens.csv` with [`TEST_TOKEN`] and [`LIMITED_TOKEN`]; passed only if a start names it.
    pub token_file: PathBuf,
}

impl LocalApiserver {
    /// Prepares `dir` (kubeconfig, token file, service-account key) and picks a port; starts nothing. The flags:
    /// etcd, address, serving certificate, client CA, a service-account key (the serving key) and issuer, the
    /// service range, RKE's authorization modes. It stores objects as protobuf (its default), as a user's
    /// cluster does.
    pub fn prepare(etcd: &LocalEtcd, dir: &Path) -> Result<Self> {
        let mut server = Self::prepare_paths(etcd, dir)?;
        let service_account = dir.join("service-account.pem");
        let pki = &etcd.pki;
        // The key file carries the public key too, as the testbed's (harness::pki) does.
        let public = rcgen::KeyPair::from_pem(&pki.apiserver.key_pem)
            .context("re-reading the serving key")?
            .public_key_pem();
        let both = Zeroizing::new(format!("{}{public}", *pki.apiserver.key_pem));
        write_mode(&service_account, both.as_bytes(), 0o600)?;
        let sa = service_account.display();
        server.base_args.extend([
            format!("--advertise-address={}", server.ip),
            "--authorization-mode=Node,RBAC".to_string(),
            "--service-account-issuer=rke".to_string(),
            format!("--service-account-key-file={sa}"),
            format!("--service-account-signing-key-file={sa}"),
            "--service-cluster-ip-range=10.43.0.0/16".to_string(),
            "--profiling=false".to_string(),
        ]);
        Ok(server)
    }

    /// The directory, the kubeconfig, the token file and the connection flags (etcd, address, serving
    /// certificate, client CA).
    fn prepare_paths(etcd: &LocalEtcd, dir: &Path) -> Result<Self> {
        let bin = Upstream::locate()?.apiserver;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let ip = etcd.ip;
        let port = free_port(ip)?;
        let url = format!("https://{ip}:{port}");
        let kubeconfig = dir.join("kubeconfig");
        let pki = &etcd.pki;
        write_mode(
            &kubeconfig,
            kubeconfig_with_cert(
                &url,
                &pki.ca.cert_pem,
                &pki.client.cert_pem,
                &pki.client.key_pem,
            )
            .as_bytes(),
            0o600,
        )?;
        let token_file = dir.join("tokens.csv");
        write_mode(
            &token_file,
            format!("{TEST_TOKEN},admin,1,\"system:masters\"\n{LIMITED_TOKEN},{LIMITED_USER},2\n")
                .as_bytes(),
            0o600,
        )?;
        let base_args = vec![
            format!("--etcd-servers={}", etcd.client_url),
            format!("--etcd-cafile={}", pki.ca_file().display()),
            format!("--etcd-certfile={}", pki.client_cert_file().display()),
            format!("--etcd-keyfile={}", pki.client_key_file().display()),
            format!("--bind-address={ip}"),
            format!("--secure-port={port}"),
            format!("--tls-cert-file={}", pki.apiserver_cert_file().display()),
            format!(
                "--tls-private-key-file={}",
                pki.apiserver_key_file().display()
            ),
            format!("--client-ca-file={}", pki.ca_file().display()),
        ];
        Ok(Self {
            child: None,
            bin,
            base_args,
            extra_args: Vec::new(),
            dir: dir.to_path_buf(),
            ip,
            port,
            url,
            kubeconfig,
            token_file,
        })
    }

    /// The real kube-apiserver started with `encryption_config` (YAML, written to `dir/encryption.yaml`), token
    /// auth and no anonymous access.
    pub fn start(etcd: &LocalEtcd, dir: &Path, encryption_config: &str) -> Result<Self> {
        Self::start_with_flags(etcd, dir, encryption_config, &[])
    }

    /// [`start`](Self::start) with `flags` added to the command line (e.g. the server's in-flight limits).
    pub fn start_with_flags(
        etcd: &LocalEtcd,
        dir: &Path,
        encryption_config: &str,
        flags: &[&str],
    ) -> Result<Self> {
        let mut server = Self::prepare(etcd, dir)?;
        let encryption = server.encryption_file();
        std::fs::write(&encryption, encryption_config)
            .with_context(|| format!("writing {}", encryption.display()))?;
        server.extra_args = vec![
            format!("--encryption-provider-config={}", encryption.display()),
            format!("--token-auth-file={}", server.token_file.display()),
            "--anonymous-auth=false".to_string(),
        ];
        server
            .extra_args
            .extend(flags.iter().map(|f| f.to_string()));
        server.spawn()?;
        Ok(server)
    }

    fn encryption_file(&self) -> PathBuf {
        self.dir.join("encryption.yaml")
    }

    /// The server's command line with `extra` flags after the base ones (not spawned).
    pub fn command(&self, extra: &[String]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.base_args).args(extra).stdin(Stdio::null());
        cmd
    }

    /// `dir/kube-apiserver.log` (appended to by every start).
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("kube-apiserver.log")
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file())
            .with_context(|| format!("opening {}", self.log_file().display()))?;
        let child = self
            .command(&self.extra_args)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Stop, write a new encryption config, start again (what an RKE rolling restart does per node).
    pub fn restart_with(&mut self, encryption_config: &str) -> Result<()> {
        self.stop();
        std::fs::write(self.encryption_file(), encryption_config)
            .with_context(|| format!("writing {}", self.encryption_file().display()))?;
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

    /// A client from the kubeconfig, once the server says it is ready (`/readyz`: its post-start hooks, such as
    /// the RBAC bootstrap, are done), within 60 s.
    pub async fn ready(&self) -> Result<kube::Client> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(client) = atrest::exec::kube::client(&self.kubeconfig).await
                && atrest::exec::kube::probe(&client).await.is_ok()
            {
                return Ok(client);
            }
            if Instant::now() > deadline {
                bail!(
                    "kube-apiserver at {} not ready after 60 s; {}",
                    self.url,
                    health::log_tail(&self.log_file(), 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for LocalApiserver {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loopback_address_another_process_claimed_is_never_handed_out() {
        // What another test binary holds: the address this PID would try first, for octet 251.
        let n = std::process::id() % (250 * 250);
        let first = Ipv4Addr::new(127, 251, (n / 250) as u8 + 2, (n % 250) as u8 + 2);
        let dir = std::env::temp_dir().join("atrest-loopback");
        fs::create_dir_all(&dir).expect("lock dir");
        let held = fs::File::create(dir.join(first.to_string())).expect("lock file");
        held.try_lock()
            .expect("the first candidate is free before the test");

        let ip = private_loopback(251);
        assert_ne!(ip, first, "a claimed address was handed out");
        assert_eq!(ip.octets()[1], 251);
        assert_eq!(
            private_loopback(251),
            ip,
            "the same octet keeps its address"
        );
        assert_ne!(private_loopback(252).octets()[1], 251);
    }
}
