//! Brings up and tears down the local RKE-style test cluster: per node an sshd and a dockerd (sharing a private
//! mount namespace in which `/opt/atrest-prefix` is that node's own tree), an etcd member (TLS), and a
//! `kube-apiserver` container. See docs/testbed.md.

pub mod faults;
pub mod files;
pub mod health;
pub mod image;
pub mod kms;
pub mod local;
pub mod pki;
pub mod procs;
pub mod restore;
pub mod rke_encrypted;
pub mod seed;
pub mod slot;
pub mod upstream;
pub mod users;

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub use image::Apiserver;
use procs::{ContainerRecord, Manifest, NodeRecord, ProcRecord};

/// The cluster-wide prefix path in cluster.yml. Each node's sshd and dockerd see their own node tree there.
pub const PREFIX_PATH: &str = "/opt/atrest-prefix";
pub const APISERVER_PORT: u16 = 6443;
/// RKE's `--initial-cluster-token` for its etcd members.
pub const ETCD_CLUSTER_TOKEN: &str = "etcd-cluster-1";

/// RKE's etcd member name for a node: `etcd-<address with dashes>`.
pub fn etcd_member_name(ip: Ipv4Addr) -> String {
    format!("etcd-{}", ip.to_string().replace('.', "-"))
}

/// `--initial-cluster` for members at `ips`: `etcd-<ip>=https://<ip>:2380,…`.
pub fn etcd_initial_cluster(ips: &[Ipv4Addr]) -> String {
    ips.iter()
        .map(|ip| format!("{}=https://{ip}:2380", etcd_member_name(*ip)))
        .collect::<Vec<_>>()
        .join(",")
}

#[derive(Debug, Clone)]
pub struct Options {
    pub nodes: usize,
    /// Where the testbed's files go; must be absent or empty. Default: a fresh dir under the temp dir.
    pub dir: Option<PathBuf>,
    pub apiserver: Apiserver,
    /// Start an N-member etcd cluster (required by the real kube-apiserver).
    pub etcd: bool,
    /// The SSH user: root, or user `atrest` (member of `docker`, with or without passwordless sudo) created on
    /// every node and named in cluster.yml.
    pub user: users::NodeUser,
    /// Run a `kms-plugin` on every node at `/var/run/kmsplugin/socket.sock` (see [`kms`]).
    pub kms: bool,
    /// Extra kube-apiserver flags (as RKE's `services.kube-api.extra_args` would add), e.g.
    /// `--feature-gates=KMSv1=true`.
    pub apiserver_args: Vec<String>,
    /// Start as a cluster RKE encrypted: its managed config in both states, `enabled: true` in cluster.yml, the
    /// file on every controlplane and the flag on every kube-apiserver ([`rke_encrypted`]). Needs the real server.
    pub rke_encrypted: bool,
    /// How long to wait for a free slot.
    pub slot_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            nodes: 3,
            dir: None,
            apiserver: Apiserver::Placeholder,
            etcd: true,
            user: users::NodeUser::Root,
            kms: false,
            apiserver_args: Vec::new(),
            rke_encrypted: false,
            slot_timeout: Duration::from_secs(600),
        }
    }
}

/// One node of the testbed.
#[derive(Debug, Clone)]
pub struct Node {
    /// 1-based.
    pub index: usize,
    pub name: String,
    pub address: Ipv4Addr,
    pub ssh_port: u16,
    /// `DIR/nodeN`.
    pub dir: PathBuf,
    /// The node's prefix tree as seen from the host (`DIR/nodeN/prefix`); on the node it is [`PREFIX_PATH`].
    pub prefix: PathBuf,
    pub docker_socket: PathBuf,
}

impl Node {
    /// `<prefix>/etc/kubernetes` on the host.
    pub fn kubernetes_dir(&self) -> PathBuf {
        self.prefix.join("etc/kubernetes")
    }
}

/// A running testbed. Dropping it tears it down (best effort); call [`Testbed::down`] to see errors.
pub struct Testbed {
    manifest: Manifest,
    nodes: Vec<Node>,
    children: Vec<Child>,
    slot: Option<slot::Slot>,
    apiserver: Apiserver,
    etcd: bool,
    user: users::NodeUser,
    kms: bool,
    apiserver_args: Vec<String>,
    /// The config RKE's `rke up` would have deployed (`Options::rke_encrypted`).
    rke_encryption: Option<zeroize::Zeroizing<String>>,
    down_done: bool,
    /// Leave everything running on drop (CLI `up`).
    keep: bool,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn ssh_keygen(path: &Path, comment: &str) -> Result<()> {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .context("running ssh-keygen")?;
    if !out.status.success() {
        bail!(
            "ssh-keygen for {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn mkdir(p: &Path) -> Result<()> {
    fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))
}

/// Where root's shell start-up file is, and what a node has there instead: sshd runs each command through
/// root's login shell, and Debian's bash reads `~/.bashrc` for it. The build machine's may run tools no node has
/// (a `pyenv init` hook: some 170 processes and 0.15 s of CPU per command), which would make every remote
/// command on the testbed cost what it does on no RKE node. Each node's sshd gets a Debian root's plain file in
/// its mount namespace; none when the machine has no `/root/.bashrc` (there is nothing to shadow).
fn node_root_bashrc(node_dir: &Path) -> Result<Option<(PathBuf, PathBuf)>> {
    let machine = PathBuf::from("/root/.bashrc");
    if !machine.exists() {
        return Ok(None);
    }
    let plain = node_dir.join("root.bashrc");
    files::write_mode(
        &plain,
        b"# ~/.bashrc of a testbed node's root: nothing runs here (the build machine's file is not the node's)\n",
        0o644,
    )?;
    Ok(Some((plain, machine)))
}

/// The mount namespace of `pid`, as `readlink /proc/PID/ns/mnt` names it.
fn mnt_ns(pid: u32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()
}

impl Testbed {
    /// Brings the testbed up; on failure everything started so far is torn down.
    pub fn up(opts: Options) -> Result<Testbed> {
        if !is_root() {
            bail!(
                "the testbed needs root (it starts sshd, dockerd and etcd and binds 127.0.2x.x:22); run as root"
            );
        }
        if opts.nodes == 0 || opts.nodes > 9 {
            bail!("nodes must be 1..=9, got {}", opts.nodes);
        }
        if opts.rke_encrypted && !matches!(opts.apiserver, Apiserver::Upstream(_)) {
            bail!("rke_encrypted needs the real kube-apiserver (Apiserver::Upstream)");
        }
        if opts.apiserver.serves_api() && !opts.etcd {
            bail!("the real kube-apiserver needs etcd: set etcd = true");
        }
        let t0 = Instant::now();
        let slot = slot::acquire(
            opts.slot_timeout,
            &|dir| Manifest::load(dir).map(|m| m.any_alive()).unwrap_or(false),
            &|dir| {
                if let Ok(m) = Manifest::load(dir) {
                    let _ = procs::teardown(&m);
                }
            },
        )?;
        let dir = match &opts.dir {
            Some(d) => {
                if d.exists()
                    && fs::read_dir(d)
                        .map(|mut r| r.next().is_some())
                        .unwrap_or(true)
                {
                    bail!("testbed dir {} exists and is not empty", d.display());
                }
                d.clone()
            }
            None => std::env::temp_dir().join(format!(
                "atrest-testbed-s{}-{}-{}",
                slot.index,
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or(0)
            )),
        };
        mkdir(&dir)?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("resolving {}", dir.display()))?;
        // 0711: the sudo user's sshd session must traverse DIR to its home; files with secrets are 0600.
        let mode = if opts.user == users::NodeUser::Root {
            0o700
        } else {
            0o711
        };
        fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        let run_dir = slot.run_dir();
        if run_dir.exists() {
            // A previous owner was reclaimed or crashed before writing its owner file.
            let _ = fs::remove_dir_all(&run_dir);
        }
        mkdir(&run_dir)?;
        let mut nodes = Vec::new();
        let mut node_recs = Vec::new();
        for i in 1..=opts.nodes {
            let ndir = dir.join(format!("node{i}"));
            let nrun = run_dir.join(format!("node{i}"));
            let node = Node {
                index: i,
                name: format!("node{i}"),
                address: slot.node_ip(i - 1),
                ssh_port: 22,
                prefix: ndir.join("prefix"),
                docker_socket: nrun.join("docker.sock"),
                dir: ndir,
            };
            node_recs.push(NodeRecord {
                ip: node.address,
                dir: node.dir.clone(),
                run_dir: nrun,
                docker_socket: node.docker_socket.clone(),
                cgroup_parent: format!("/atrest-testbed-{}-node{i}", slot.index),
            });
            nodes.push(node);
        }
        let manifest = Manifest {
            slot: slot.index,
            dir: dir.clone(),
            run_dir,
            nodes: node_recs,
            procs: Vec::new(),
            containers: Vec::new(),
            up_ms: 0,
            steps: Vec::new(),
        };
        manifest.save()?;
        slot.write_owner(&dir)?;
        let mut tb = Testbed {
            manifest,
            nodes,
            children: Vec::new(),
            slot: Some(slot),
            apiserver: opts.apiserver.clone(),
            etcd: opts.etcd,
            user: opts.user,
            kms: opts.kms,
            apiserver_args: opts.apiserver_args.clone(),
            rke_encryption: opts.rke_encrypted.then(rke_encrypted::managed_config),
            down_done: false,
            keep: false,
        };
        match tb.bring_up(t0) {
            Ok(()) => {
                tb.manifest.up_ms = t0.elapsed().as_millis() as u64;
                tb.manifest.save()?;
                Ok(tb)
            }
            Err(e) => {
                let log_hint = format!("(logs under {})", tb.manifest.dir.display());
                if std::env::var_os("ATREST_TESTBED_KEEP_ON_FAILURE").is_some() {
                    tb.keep = true;
                    return Err(
                        e.context(format!("testbed bring-up failed; left running {log_hint}"))
                    );
                }
                let _ = tb.down();
                Err(e.context("testbed bring-up failed; torn down"))
            }
        }
    }

    fn record(&mut self, child: Child, kind: &str, node: usize, tag: &Path) -> Result<u32> {
        let pid = child.id();
        self.children.push(child);
        self.manifest.procs.push(ProcRecord {
            pid,
            kind: kind.into(),
            node,
            tag: tag.to_string_lossy().into_owned(),
            cmdline: procs::cmdline(pid).unwrap_or_default(),
        });
        self.manifest.save()?;
        Ok(pid)
    }

    fn mark(&mut self, t0: Instant, step: &str) {
        self.manifest
            .steps
            .push((step.to_string(), t0.elapsed().as_millis() as u64));
    }

    /// Milestones of `up` (step, time since `up` began).
    pub fn bring_up_steps(&self) -> Vec<(String, Duration)> {
        self.manifest
            .steps
            .iter()
            .map(|(s, ms)| (s.clone(), Duration::from_millis(*ms)))
            .collect()
    }

    fn bring_up(&mut self, t0: Instant) -> Result<()> {
        self.mark(t0, "slot acquired");
        // A test killed while it cut a node off (faults.rs) leaves its firewall rule: this slot's addresses are
        // ours again now.
        let addresses: Vec<Ipv4Addr> = self.nodes.iter().map(|n| n.address).collect();
        faults::remove_stale_rules(&addresses);
        let dir = self.manifest.dir.clone();
        mkdir(Path::new("/run/sshd"))?;
        mkdir(Path::new(PREFIX_PATH))?;
        // Client key, host keys, known_hosts, ssh_config.
        let key = self.client_key();
        ssh_keygen(&key, "atrest-testbed")?;
        let client_pub = fs::read_to_string(key.with_extension("pub"))
            .context("reading the client public key")?;
        let mut known_hosts = String::new();
        let ips: Vec<Ipv4Addr> = self.nodes.iter().map(|n| n.address).collect();
        let pki = pki::Pki::generate(&ips)?;
        let pki_dir = dir.join("pki");
        mkdir(&pki_dir)?;
        for c in [&pki.ca, &pki.kube_node, &pki.kube_admin] {
            files::write_mode(
                &pki_dir.join(format!("{}.pem", c.name)),
                c.cert_pem.as_bytes(),
                0o644,
            )?;
            files::write_mode(
                &pki_dir.join(format!("{}-key.pem", c.name)),
                c.key_pem.as_bytes(),
                0o600,
            )?;
        }
        let token = hex::encode(rand::random::<[u8; 16]>());
        for (n, rec) in self.nodes.iter().zip(&self.manifest.nodes) {
            let ssh_dir = n.dir.join("ssh");
            let ssl = n.kubernetes_dir().join("ssl");
            for d in [&ssh_dir, &ssl, &n.dir.join("docker"), &rec.run_dir] {
                mkdir(d)?;
            }
            let host_key = ssh_dir.join("host_ed25519_key");
            ssh_keygen(&host_key, &n.name)?;
            let host_pub =
                fs::read_to_string(host_key.with_extension("pub")).context("reading a host key")?;
            let mut parts = host_pub.split_whitespace();
            let (Some(kt), Some(kb)) = (parts.next(), parts.next()) else {
                bail!("unexpected host key format in {}", host_key.display())
            };
            let host = atrest::exec::known_hosts::host_pattern(&n.address.to_string(), n.ssh_port);
            known_hosts.push_str(&format!("{host} {kt} {kb}\n"));
            files::write_mode(
                &ssh_dir.join("authorized_keys"),
                client_pub.as_bytes(),
                0o600,
            )?;
            files::write_mode(
                &ssh_dir.join("sshd_config"),
                format!(
                    "ListenAddress {ip}:{port}\nHostKey {hk}\nPidFile none\nAuthorizedKeysFile {ak}\nStrictModes no\n\
                     PermitRootLogin prohibit-password\nPubkeyAuthentication yes\nPasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\nUsePAM no\nAllowTcpForwarding yes\nAllowStreamLocalForwarding yes\n\
                     StreamLocalBindUnlink yes\nSetEnv DOCKER_HOST=unix://{sock}\nSubsystem sftp /usr/lib/openssh/sftp-server\n\
                     LogLevel VERBOSE\n{sudo}",
                    sudo = if self.user != users::NodeUser::Root {
                        // The user's own file (readable by it); root keeps the file above only.
                        format!("Match User {}\n  AuthorizedKeysFile .ssh/authorized_keys\n", users::SUDO_USER)
                    } else {
                        String::new()
                    },
                    ip = n.address,
                    port = n.ssh_port,
                    hk = host_key.display(),
                    ak = ssh_dir.join("authorized_keys").display(),
                    sock = n.docker_socket.display(),
                )
                .as_bytes(),
                0o644,
            )?;
            // The node's prefix tree, as RKE lays it out under <prefix>/etc/kubernetes/ssl.
            let ca = &pki.ca;
            files::write_mode(&ssl.join("kube-ca.pem"), ca.cert_pem.as_bytes(), 0o644)?;
            for c in [
                &pki.kube_node,
                &pki.apiserver,
                &pki.etcd[n.index - 1],
                &pki.service_account,
            ] {
                files::write_mode(
                    &ssl.join(format!("{}.pem", c.name)),
                    c.cert_pem.as_bytes(),
                    0o644,
                )?;
                files::write_mode(
                    &ssl.join(format!("{}-key.pem", c.name)),
                    c.key_pem.as_bytes(),
                    0o600,
                )?;
            }
            files::write_mode(
                &ssl.join("kube-api-tokens.csv"),
                format!("{token},kube-admin,kube-admin,\"system:masters\"\n").as_bytes(),
                0o600,
            )?;
            if let Some(config) = &self.rke_encryption {
                // As RKE's file deployer leaves it: the state string plus one newline, 0600.
                let file = zeroize::Zeroizing::new(format!("{}\n", config.as_str()));
                files::write_mode(&ssl.join("encryption.yaml"), file.as_bytes(), 0o600)?;
            }
            files::write_mode(&n.dir.join("daemon.json"), b"{}", 0o644)?;
        }
        files::write_mode(&self.known_hosts(), known_hosts.as_bytes(), 0o644)?;
        files::write_mode(
            &self.ssh_config_path(),
            files::ssh_config(&ips, &key, &self.known_hosts()).as_bytes(),
            0o644,
        )?;

        self.mark(t0, "keys, pki and node files written");
        // sshd in a fresh mount namespace where PREFIX_PATH is the node's tree; dockerd joins that namespace.
        let nodes = self.nodes.clone();
        let kms_binds = if self.kms {
            kms::prepare(&self.manifest.dir, &nodes)?
        } else {
            Vec::new()
        };
        for (i, (n, rec)) in nodes.iter().zip(self.manifest.nodes.clone()).enumerate() {
            let cfg = n.dir.join("ssh/sshd_config");
            let mut binds = vec![
                (n.prefix.clone(), PathBuf::from(PREFIX_PATH)),
                (node_hosts_file(n)?, PathBuf::from("/etc/hosts")),
            ];
            binds.extend(kms_binds.get(i).cloned());
            binds.extend(node_root_bashrc(&n.dir)?);
            if self.user != users::NodeUser::Root {
                binds.extend(users::prepare(&n.dir, &client_pub, self.user)?);
            }
            let mut cmd = Command::new("unshare");
            cmd.args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
                .arg(r#"while [ "$1" != -- ]; do mount --bind -- "$1" "$2" || exit 1; shift 2; done; shift; exec "$@""#)
                .arg("sh");
            for (src, dst) in &binds {
                cmd.arg(src).arg(dst);
            }
            cmd.arg("--")
                .arg("/usr/sbin/sshd")
                .arg("-D")
                .arg("-f")
                .arg(&cfg)
                .arg("-E")
                .arg(n.dir.join("sshd.log"));
            let child = procs::spawn_daemon(&mut cmd, &n.dir.join("sshd.stdio.log"))?;
            let sshd_pid = self.record(child, "sshd", n.index, &cfg)?;
            let host_ns = mnt_ns(std::process::id());
            // Wait until sh has mounted and exec'd sshd, so nsenter joins the finished namespace.
            let logs = [n.dir.join("sshd.stdio.log"), n.dir.join("sshd.log")];
            health::wait_until(
                &format!("sshd of {} to start", n.name),
                Duration::from_secs(10),
                Duration::from_millis(5),
                || {
                    if !procs::alive(sshd_pid, "") {
                        bail!(
                            "sshd (pid {sshd_pid}) exited; {}",
                            logs.iter()
                                .map(|l| health::log_tail(l, 10))
                                .collect::<Vec<_>>()
                                .join("\n")
                        );
                    }
                    Ok(fs::read_link(format!("/proc/{sshd_pid}/exe"))
                        .is_ok_and(|e| e == Path::new("/usr/sbin/sshd"))
                        && mnt_ns(sshd_pid) != host_ns)
                },
            )
            .map_err(|e| {
                let c = procs::cmdline(sshd_pid).unwrap_or_default();
                e.context(format!(
                    "sshd pid {sshd_pid} cmdline {c:?}, mount ns {:?} (host {:?})",
                    mnt_ns(sshd_pid),
                    host_ns
                ))
            })?;
            if let Some(p) = self.manifest.procs.last_mut() {
                p.cmdline = procs::cmdline(sshd_pid).unwrap_or_default();
            }
            let mut cmd = dockerd_command(n, &rec, sshd_pid);
            let child = procs::spawn_daemon(&mut cmd, &n.dir.join("dockerd.log"))?;
            self.record(child, "dockerd", n.index, &n.dir.join("daemon.json"))?;
        }
        let etcd_cluster = etcd_initial_cluster(&ips);
        let upstream = match &self.apiserver {
            Apiserver::Upstream(u) => Some(u.clone()),
            _ => None,
        };
        if self.etcd && upstream.is_none() {
            let cluster: Vec<String> = ips
                .iter()
                .map(|ip| {
                    format!(
                        "etcd-{}=https://{ip}:2380",
                        ip.to_string().replace('.', "-")
                    )
                })
                .collect();
            let cluster = cluster.join(",");
            for n in &nodes {
                let ssl = n.kubernetes_dir().join("ssl");
                let name = pki::etcd_cert_name(n.address);
                let data = n.dir.join("etcd");
                let ip = n.address;
                let mut cmd = Command::new("etcd");
                cmd.arg("--name")
                    .arg(format!("etcd-{}", ip.to_string().replace('.', "-")))
                    .arg("--data-dir")
                    .arg(&data)
                    .args(["--heartbeat-interval=50", "--election-timeout=500"])
                    .arg(format!("--listen-client-urls=https://{ip}:2379"))
                    .arg(format!("--advertise-client-urls=https://{ip}:2379"))
                    .arg(format!("--listen-peer-urls=https://{ip}:2380"))
                    .arg(format!("--initial-advertise-peer-urls=https://{ip}:2380"))
                    .arg(format!("--initial-cluster={cluster}"))
                    .args([
                        "--initial-cluster-state=new",
                        "--initial-cluster-token=atrest-testbed",
                    ])
                    .arg("--client-cert-auth")
                    .arg("--trusted-ca-file")
                    .arg(ssl.join("kube-ca.pem"))
                    .arg("--cert-file")
                    .arg(ssl.join(format!("{name}.pem")))
                    .arg("--key-file")
                    .arg(ssl.join(format!("{name}-key.pem")))
                    .arg("--peer-client-cert-auth")
                    .arg("--peer-trusted-ca-file")
                    .arg(ssl.join("kube-ca.pem"))
                    .arg("--peer-cert-file")
                    .arg(ssl.join(format!("{name}.pem")))
                    .arg("--peer-key-file")
                    .arg(ssl.join(format!("{name}-key.pem")))
                    .arg("--logger=zap")
                    .arg(format!(
                        "--log-outputs={}",
                        n.dir.join("etcd.log").display()
                    ));
                let child = procs::spawn_daemon(&mut cmd, &n.dir.join("etcd.stdio.log"))?;
                self.record(child, "etcd", n.index, &data)?;
            }
        }
        if self.kms {
            for n in &nodes {
                self.kms_start(n)?;
            }
        }
        self.mark(t0, "daemons spawned");
        // Image: build while the engines start.
        let work = dir.join("image");
        mkdir(&work)?;
        let images: Vec<(PathBuf, String, Vec<String>)> = match &upstream {
            Some(u) => upstream::build_image_tars(u, &work)?
                .into_iter()
                .map(|i| (i.tar, i.name, i.changes))
                .collect(),
            None => vec![(
                image::build_rootfs_tar(&work)?,
                image::IMAGE.to_string(),
                vec!["ENV PATH=/usr/local/bin:/usr/bin:/bin".to_string()],
            )],
        };
        for n in &nodes {
            let pid = self
                .manifest
                .procs
                .iter()
                .find(|p| p.kind == "dockerd" && p.node == n.index)
                .map(|p| p.pid);
            let log = n.dir.join("dockerd.log");
            health::wait_until(
                &format!("dockerd of {}", n.name),
                Duration::from_secs(30),
                Duration::from_millis(20),
                || {
                    if pid.is_some_and(|p| !procs::alive(p, "")) {
                        bail!("dockerd exited; {}", health::log_tail(&log, 10));
                    }
                    Ok(health::docker_ping(&n.docker_socket))
                },
            )?;
        }
        self.mark(t0, "engines ready");
        let sockets: Vec<PathBuf> = nodes.iter().map(|n| n.docker_socket.clone()).collect();
        image::install_all(&images, &work, &sockets)?;
        self.mark(t0, "image installed");
        if self.etcd && upstream.is_some() {
            // RKE's etcd containers, all nodes at once.
            let runs = self.on_all_nodes(&nodes, |this, n| {
                image::run_ok(
                    &mut this.etcd_run(n, &etcd_cluster),
                    &format!("docker run etcd on {}", n.name),
                )
            });
            self.record_containers(&nodes, runs, "etcd")?;
        }
        if self.etcd {
            let etcds: Vec<(u32, PathBuf)> = self
                .manifest
                .procs
                .iter()
                .filter(|p| p.kind == "etcd")
                .map(|p| (p.pid, self.manifest.nodes[p.node - 1].dir.join("etcd.log")))
                .collect();
            health::wait_until(
                "etcd cluster health",
                Duration::from_secs(60),
                Duration::from_millis(100),
                || {
                    if let Some((pid, log)) = etcds.iter().find(|(pid, _)| !procs::alive(*pid, ""))
                    {
                        bail!("etcd (pid {pid}) exited; {}", health::log_tail(log, 5));
                    }
                    Ok(self
                        .etcdctl()
                        .args(["endpoint", "health"])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .is_ok_and(|s| s.success()))
                },
            )?;
        }
        self.mark(t0, "etcd healthy");
        // kube-apiserver per node, RKE-style, all nodes at once (after its service-sidekick for the real one).
        if upstream.is_some() {
            let runs = self.on_all_nodes(&nodes, |this, n| {
                image::run_ok(
                    &mut this.sidekick_create(n),
                    &format!("docker create service-sidekick on {}", n.name),
                )
            });
            self.record_containers(&nodes, runs, "service-sidekick")?;
            let runs = self.on_all_nodes(&nodes, |this, n| this.apiserver_create_rke(n));
            self.record_containers(&nodes, runs, "kube-apiserver")?;
        } else {
            let runs = self.on_all_nodes(&nodes, |this, n| {
                image::run_ok(
                    &mut this.apiserver_run(n),
                    &format!("docker run kube-apiserver on {}", n.name),
                )
            });
            self.record_containers(&nodes, runs, "kube-apiserver")?;
        }
        // Cluster files.
        let spec = files::ClusterSpec {
            cluster_name: format!("atrest-testbed-slot-{}", self.manifest.slot),
            ssh_key_path: &key,
            prefix_path: PREFIX_PATH,
            user: self.ssh_user(),
            encryption_config: self.rke_encryption.as_ref().map(|c| c.as_str()),
            nodes: nodes
                .iter()
                .map(|n| files::NodeSpec {
                    name: n.name.clone(),
                    ip: n.address,
                    port: n.ssh_port,
                    docker_socket: &n.docker_socket,
                })
                .collect(),
        };
        let kubeconfig = files::kubeconfig(&self.apiserver_url(&nodes[0]), &pki);
        files::write_mode(&self.kubeconfig(), kubeconfig.as_bytes(), 0o600)?;
        files::write_mode(
            &self.cluster_yml(),
            files::cluster_yml(&spec)?.as_bytes(),
            0o644,
        )?;
        let state = files::rkestate(&spec, &pki, &kubeconfig);
        files::write_mode(
            &self.rkestate(),
            serde_json::to_string_pretty(&state)?.as_bytes(),
            0o600,
        )?;
        self.mark(t0, "containers started, cluster files written");
        // Health: the API (not the container state: a crash-looping container looks "Up").
        let probe = health::HttpsProbe::new(
            &pki.ca.cert_pem,
            &pki.kube_admin.cert_pem,
            &pki.kube_admin.key_pem,
        )?;
        for n in &nodes {
            let addr = SocketAddr::new(n.address.into(), APISERVER_PORT);
            health::wait_for(
                &format!("kube-apiserver on {} ({addr})", n.name),
                // The real server's first start (RBAC bootstrap, CRD and APF setup) takes tens of seconds on a
                // loaded machine.
                Duration::from_secs(if upstream.is_some() { 180 } else { 60 }),
                Duration::from_millis(50),
                || match self.apiserver {
                    Apiserver::Placeholder => health::tcp_open(addr),
                    Apiserver::Upstream(_) => probe
                        .get(addr, "/readyz")
                        .is_ok_and(|(code, _)| code == 200),
                },
            )
            .map_err(|e| e.context(self.container_diagnostics(n)))?;
        }
        self.mark(t0, "apiservers ready");
        // SSH with host-key checking, all nodes at once.
        let this = &*self;
        std::thread::scope(|s| {
            let hs: Vec<_> = nodes
                .iter()
                .map(|n| {
                    s.spawn(move || {
                        image::run_ok(this.ssh(n).arg("true"), &format!("ssh to {}", n.name))
                    })
                })
                .collect();
            for h in hs {
                h.join()
                    .map_err(|_| anyhow::anyhow!("ssh check panicked"))??;
            }
            anyhow::Ok(())
        })?;
        self.mark(t0, "ssh verified");
        Ok(())
    }

    /// Runs `f` for every node at once; results in node order.
    fn on_all_nodes(
        &self,
        nodes: &[Node],
        f: impl Fn(&Testbed, &Node) -> Result<String> + Sync,
    ) -> Vec<Result<String>> {
        std::thread::scope(|s| {
            let f = &f;
            let hs: Vec<_> = nodes.iter().map(|n| s.spawn(move || f(self, n))).collect();
            hs.into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("container thread panicked")))
                })
                .collect()
        })
    }

    /// Records the created containers in the manifest (saved), then fails with the first error.
    fn record_containers(
        &mut self,
        nodes: &[Node],
        runs: Vec<Result<String>>,
        name: &str,
    ) -> Result<()> {
        let mut first_err = None;
        for (n, r) in nodes.iter().zip(runs) {
            match r {
                Ok(id) => self.manifest.containers.push(ContainerRecord {
                    node: n.index,
                    id,
                    name: name.into(),
                }),
                Err(e) => first_err = first_err.or(Some(e)),
            }
        }
        self.manifest.save()?;
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// RKE's `etcd` container: Cmd `/usr/local/bin/etcd --name=etcd-<host> …`, no Entrypoint, binds
    /// `<prefix>/var/lib/etcd:/var/lib/rancher/etcd/` and `<prefix>/etc/kubernetes:/etc/kubernetes`, host
    /// network, restart always. The testbed adds short heartbeat/election timeouts (many members on one loaded
    /// machine) and binds each member to its node address.
    pub fn etcd_run(&self, n: &Node, cluster: &str) -> Command {
        let ip = n.address;
        let name = pki::etcd_cert_name(ip);
        let ssl = "/etc/kubernetes/ssl";
        let mut cmd = self.docker(n);
        cmd.args(["run", "-d", "--name", "etcd", "--net=host", "--restart=always"])
            .args(["--label", "io.rancher.rke.container.name=etcd"])
            .arg("-v")
            .arg(format!("{PREFIX_PATH}/var/lib/etcd:/var/lib/rancher/etcd/:z"))
            .arg("-v")
            .arg(format!("{PREFIX_PATH}/etc/kubernetes:/etc/kubernetes:z"))
            .arg("-e")
            .arg("ETCDCTL_API=3")
            .arg(self.upstream_versions().map(|v| v.etcd_image()).unwrap_or_default())
            .arg("/usr/local/bin/etcd")
            .arg(format!("--name={}", etcd_member_name(ip)))
            .arg("--data-dir=/var/lib/rancher/etcd/")
            .args(["--heartbeat-interval=50", "--election-timeout=500"])
            .arg(format!("--listen-client-urls=https://{ip}:2379"))
            .arg(format!("--advertise-client-urls=https://{ip}:2379"))
            .arg(format!("--listen-peer-urls=https://{ip}:2380"))
            .arg(format!("--initial-advertise-peer-urls=https://{ip}:2380"))
            .arg(format!("--initial-cluster={cluster}"))
            .args([
                "--initial-cluster-state=new",
                &format!("--initial-cluster-token={ETCD_CLUSTER_TOKEN}"),
                "--client-cert-auth=true",
                "--peer-client-cert-auth=true",
            ])
            .arg(format!("--trusted-ca-file={ssl}/kube-ca.pem"))
            .arg(format!("--peer-trusted-ca-file={ssl}/kube-ca.pem"))
            .arg(format!("--cert-file={ssl}/{name}.pem"))
            .arg(format!("--key-file={ssl}/{name}-key.pem"))
            .arg(format!("--peer-cert-file={ssl}/{name}.pem"))
            .arg(format!("--peer-key-file={ssl}/{name}-key.pem"))
            .arg("--cipher-suites=TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384");
        cmd
    }

    fn upstream_versions(&self) -> Option<&upstream::Versions> {
        match &self.apiserver {
            Apiserver::Upstream(u) => Some(&u.versions),
            _ => None,
        }
    }

    /// RKE's `service-sidekick`: the rke-tools image with Entrypoint `/bin/bash`, network none, created and never
    /// started; kube-apiserver takes `/opt/rke-tools` (entrypoint.sh) from it with VolumesFrom.
    pub fn sidekick_create(&self, n: &Node) -> Command {
        let mut cmd = self.docker(n);
        cmd.args([
            "create",
            "--name",
            "service-sidekick",
            "--net=none",
            "--entrypoint",
            "/bin/bash",
        ])
        .args(["--label", "io.rancher.rke.container.name=service-sidekick"])
        .arg(
            self.upstream_versions()
                .map(|v| v.rke_tools_image())
                .unwrap_or_default(),
        );
        cmd
    }

    /// The Docker create request RKE sends for kube-apiserver: the whole command line in Entrypoint
    /// (`/opt/rke-tools/entrypoint.sh kube-apiserver --flag=value …`), no Cmd, VolumesFrom `service-sidekick`,
    /// RKE's binds, env, label, host network and restart policy. (The docker CLI cannot set a multi-word
    /// Entrypoint, so this goes to the Engine API directly.)
    pub fn apiserver_create_body(&self, n: &Node) -> serde_json::Value {
        let image = self
            .upstream_versions()
            .map(|v| v.hyperkube_image())
            .unwrap_or_default();
        let mut entrypoint = vec![
            "/opt/rke-tools/entrypoint.sh".to_string(),
            "kube-apiserver".to_string(),
        ];
        entrypoint.extend(self.apiserver_flags(n));
        let empty = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(b""))
        };
        serde_json::json!({
            "Image": image,
            "Entrypoint": entrypoint,
            // RKE's checksums of its admission and audit configs (none here: the digest of an empty file).
            "Env": [
                format!("RKE_ADMISSION_CONFIG_CHECKSUM={empty}"),
                format!("RKE_AUDITLOG_CONFIG_CHECKSUM={empty}"),
            ],
            "Labels": {"io.rancher.rke.container.name": "kube-apiserver"},
            "HostConfig": {
                "Binds": [
                    format!("{PREFIX_PATH}/etc/kubernetes:/etc/kubernetes:z"),
                    format!("{PREFIX_PATH}/var/log/kube-audit:/var/log/kube-audit:z"),
                ],
                "VolumesFrom": ["service-sidekick"],
                "NetworkMode": "host",
                "RestartPolicy": {"Name": "always"},
            },
        })
    }

    /// Creates and starts kube-apiserver from [`Testbed::apiserver_create_body`]; returns the container ID.
    fn apiserver_create_rke(&self, n: &Node) -> Result<String> {
        let body = serde_json::to_string(&self.apiserver_create_body(n))?;
        let out = Command::new("curl")
            .args(["-sS", "--fail-with-body", "--unix-socket"])
            .arg(&n.docker_socket)
            .args(["-H", "Content-Type: application/json", "-X", "POST"])
            .arg("http://docker/v1.41/containers/create?name=kube-apiserver")
            .args(["--data-binary", "@-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                if let Some(mut i) = c.stdin.take() {
                    i.write_all(body.as_bytes())?;
                }
                c.wait_with_output()
            })
            .context("creating kube-apiserver through the Engine API (curl)")?;
        if !out.status.success() {
            bail!(
                "creating kube-apiserver on {}: {}{}",
                n.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("the create response")?;
        let id = v["Id"].as_str().unwrap_or_default().to_string();
        image::run_ok(
            self.docker(n).args(["start", "kube-apiserver"]),
            &format!("docker start kube-apiserver on {}", n.name),
        )?;
        Ok(id)
    }

    /// Container state and its last log lines, for errors about a node's kube-apiserver.
    fn container_diagnostics(&self, n: &Node) -> String {
        let state = self
            .docker(n)
            .args([
                "inspect",
                "-f",
                "status={{.State.Status}} restarts={{.RestartCount}} exit={{.State.ExitCode}}",
                "kube-apiserver",
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let logs = self
            .docker(n)
            .args(["logs", "--tail", "5", "kube-apiserver"])
            .output()
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_default();
        format!(
            "kube-apiserver container on {}: {state}; last log lines:\n{}",
            n.name,
            logs.trim_end()
        )
    }

    /// `docker run` for a node's kube-apiserver container, as RKE creates it.
    pub fn apiserver_run(&self, n: &Node) -> Command {
        let mut cmd = self.docker(n);
        cmd.args([
            "run",
            "-d",
            "--name",
            "kube-apiserver",
            "--net=host",
            "--restart=always",
        ]);
        // busybox httpd as PID 1 ignores SIGTERM.
        cmd.arg("--init");
        cmd.arg("-v")
            .arg(format!("{PREFIX_PATH}/etc/kubernetes:/etc/kubernetes:z"))
            .arg(image::IMAGE);
        cmd.args(self.apiserver_command(n));
        cmd
    }

    /// RKE's kube-apiserver flags for the real server (RKE's order comes from a Go map; this one is sorted), plus
    /// `Options::apiserver_args`. Differences from RKE, for the testbed's sake: `--bind-address` is the node
    /// address (several nodes and testbeds share one machine's :6443), not `0.0.0.0`.
    pub fn apiserver_flags(&self, n: &Node) -> Vec<String> {
        let ip = n.address;
        let ssl = "/etc/kubernetes/ssl";
        vec![
            format!("--advertise-address={ip}"),
            "--allow-privileged=true".into(),
            "--anonymous-auth=false".into(),
            "--api-audiences=unknown".into(),
            "--authorization-mode=Node,RBAC".into(),
            format!("--bind-address={ip}"),
            format!("--client-ca-file={ssl}/kube-ca.pem"),
            "--enable-admission-plugins=NamespaceLifecycle,LimitRanger,ServiceAccount,DefaultStorageClass,DefaultTolerationSeconds,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ResourceQuota,NodeRestriction,Priority,PersistentVolumeClaimResize".into(),
            format!("--etcd-cafile={ssl}/kube-ca.pem"),
            format!("--etcd-certfile={ssl}/kube-node.pem"),
            format!("--etcd-keyfile={ssl}/kube-node-key.pem"),
            "--etcd-prefix=/registry".into(),
            format!("--etcd-servers={}", self.etcd_endpoints().join(",")),
            "--profiling=false".into(),
            format!("--secure-port={APISERVER_PORT}"),
            "--service-account-issuer=rke".into(),
            format!("--service-account-key-file={ssl}/kube-service-account-token-key.pem"),
            "--service-account-lookup=true".into(),
            format!("--service-account-signing-key-file={ssl}/kube-service-account-token-key.pem"),
            "--service-cluster-ip-range=10.43.0.0/16".into(),
            "--service-node-port-range=30000-32767".into(),
            "--storage-backend=etcd3".into(),
            format!("--tls-cert-file={ssl}/kube-apiserver.pem"),
            format!("--tls-private-key-file={ssl}/kube-apiserver-key.pem"),
        ]
        .into_iter()
        .chain(
            self.rke_encryption
                .is_some()
                .then(|| format!("--encryption-provider-config={}", rke_encrypted::NODE_FILE)),
        )
        .chain(self.apiserver_args.iter().cloned())
        .collect()
    }

    /// The container command line: for the real server, the Entrypoint RKE gives it (RKE's flags); for the
    /// placeholder, busybox httpd on the node's :6443.
    pub fn apiserver_command(&self, n: &Node) -> Vec<String> {
        match &self.apiserver {
            Apiserver::Upstream(_) => ["/opt/rke-tools/entrypoint.sh", "kube-apiserver"]
                .into_iter()
                .map(String::from)
                .chain(self.apiserver_flags(n))
                .collect(),
            Apiserver::Placeholder => vec![
                "httpd".into(),
                "-f".into(),
                "-p".into(),
                format!("{}:{APISERVER_PORT}", n.address),
                "-h".into(),
                "/etc/kubernetes".into(),
            ],
        }
    }

    /// Stops everything and removes what `up` created. Idempotent.
    pub fn down(&mut self) -> Result<()> {
        if self.down_done {
            return Ok(());
        }
        let res = procs::teardown(&self.manifest);
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
        self.slot.take();
        self.down_done = true;
        res
    }

    /// Tears down a testbed started by another process (CLI), from its `DIR/testbed.json`. Idempotent: a
    /// missing dir or manifest means there is nothing left to do.
    pub fn down_dir(dir: &Path) -> Result<()> {
        if !Manifest::path(dir).exists() {
            return Ok(());
        }
        procs::teardown(&Manifest::load(dir)?)
    }

    /// What a teardown left behind (processes, mounts, cgroup dirs, directories); empty when clean.
    pub fn leftovers(&self) -> Vec<String> {
        procs::leftovers(&self.manifest)
    }

    /// Keeps the testbed running when this value is dropped (for the CLI's `up`).
    pub fn keep_running(&mut self) {
        self.keep = true;
        self.children.clear();
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    pub fn bring_up_time(&self) -> Duration {
        Duration::from_millis(self.manifest.up_ms)
    }
    pub fn dir(&self) -> &Path {
        &self.manifest.dir
    }
    pub fn slot(&self) -> usize {
        self.manifest.slot
    }
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }
    pub fn client_key(&self) -> PathBuf {
        self.dir().join("id_ed25519")
    }
    pub fn known_hosts(&self) -> PathBuf {
        self.dir().join("known_hosts")
    }
    pub fn ssh_config_path(&self) -> PathBuf {
        self.dir().join("ssh_config")
    }
    pub fn cluster_yml(&self) -> PathBuf {
        self.dir().join("cluster.yml")
    }
    pub fn rkestate(&self) -> PathBuf {
        self.dir().join("cluster.rkestate")
    }
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir().join("kube_config_cluster.yml")
    }
    pub fn etcd_endpoints(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("https://{}:2379", n.address))
            .collect()
    }
    pub fn etcd_ca(&self) -> PathBuf {
        self.dir().join("pki/kube-ca.pem")
    }
    pub fn etcd_client_cert(&self) -> PathBuf {
        self.dir().join("pki/kube-node.pem")
    }
    pub fn etcd_client_key(&self) -> PathBuf {
        self.dir().join("pki/kube-node-key.pem")
    }
    pub fn admin_cert(&self) -> PathBuf {
        self.dir().join("pki/kube-admin.pem")
    }
    pub fn admin_key(&self) -> PathBuf {
        self.dir().join("pki/kube-admin-key.pem")
    }
    /// An HTTPS client for the nodes' kube-apiservers: trusts `kube-ca`, presents RKE's `kube-admin` certificate
    /// (allowed to read `/readyz`, `/metrics` and every object).
    pub fn admin_probe(&self) -> Result<health::HttpsProbe> {
        let read = |p: PathBuf| {
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
        };
        health::HttpsProbe::new(
            &read(self.etcd_ca())?,
            &read(self.admin_cert())?,
            &read(self.admin_key())?,
        )
    }
    pub fn apiserver_url(&self, n: &Node) -> String {
        format!("https://{}:{APISERVER_PORT}", n.address)
    }
    /// `etcdctl` (v3 API) against every member with the client certificate.
    pub fn etcdctl(&self) -> Command {
        let mut c = Command::new("etcdctl");
        c.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.etcd_endpoints().join(",")))
            .arg(format!("--cacert={}", self.etcd_ca().display()))
            .arg(format!("--cert={}", self.etcd_client_cert().display()))
            .arg(format!("--key={}", self.etcd_client_key().display()))
            .stdin(Stdio::null());
        c
    }
    /// `docker -H unix://<node socket>` (directly, not over SSH).
    pub fn docker(&self, n: &Node) -> Command {
        image::docker(&n.docker_socket)
    }

    /// The SSH user named in cluster.yml: `root`, or [`users::SUDO_USER`].
    pub fn ssh_user(&self) -> &'static str {
        if self.user != users::NodeUser::Root {
            users::SUDO_USER
        } else {
            "root"
        }
    }

    /// `ssh -F DIR/ssh_config USER@IP` with strict host-key checking; append the remote command.
    pub fn ssh_as(&self, n: &Node, user: &str) -> Command {
        let mut c = Command::new("ssh");
        c.arg("-F")
            .arg(self.ssh_config_path())
            .arg("-p")
            .arg(n.ssh_port.to_string());
        c.arg(format!("{user}@{}", n.address)).stdin(Stdio::null());
        c
    }

    /// `ssh -F DIR/ssh_config root@IP` with strict host-key checking; append the remote command.
    pub fn ssh(&self, n: &Node) -> Command {
        self.ssh_as(n, "root")
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Err(e) = self.down() {
            eprintln!(
                "testbed: teardown of {}: {e:#}",
                self.manifest.dir.display()
            );
        }
    }
}

/// Node `n`'s Docker engine, started in the mount namespace of process `namespace_of` (the node's sshd), so that
/// both see the node's own tree at the cluster's prefix path.
pub(super) fn dockerd_command(n: &Node, rec: &NodeRecord, namespace_of: u32) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--mount=/proc/{namespace_of}/ns/mnt"))
        .arg("--")
        .arg("dockerd")
        .arg("--config-file")
        .arg(n.dir.join("daemon.json"))
        .arg("--data-root")
        .arg(n.dir.join("docker"))
        .arg("--exec-root")
        .arg(rec.run_dir.join("exec"))
        .arg("--pidfile")
        .arg(rec.run_dir.join("docker.pid"))
        .arg("-H")
        .arg(format!("unix://{}", n.docker_socket.display()))
        .args([
            "--bridge=none",
            "--iptables=false",
            "--ip-masq=false",
            "--ip-forward=false",
        ])
        .args(["--userland-proxy=false", "--log-level=warn"])
        .arg(format!("--cgroup-parent={}", rec.cgroup_parent));
    cmd
}

/// The node's own `/etc/hosts`, bound over the machine's in the node's mount namespace: `localhost` is the node's
/// address. On a real host a connection to `localhost:6443` reaches that host's kube-apiserver; here every node
/// shares the machine's network, so without this the name would reach nothing (each server listens on its node's
/// address). RKE's health check relies on it: it asks the node's sshd to connect to `localhost:6443`.
fn node_hosts_file(n: &Node) -> Result<PathBuf> {
    let path = n.dir.join("hosts");
    let text = format!(
        "# The testbed node {name}'s /etc/hosts (testbed/src/harness/mod.rs node_hosts_file).\n{ip} localhost {name}\n",
        name = n.name,
        ip = n.address
    );
    files::write_mode(&path, text.as_bytes(), 0o644)?;
    Ok(path)
}
