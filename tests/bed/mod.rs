//! Test fixture: the nodes the transport tests talk to.

use atrest::config::cluster::Node as ConfigNode;
use atrest::exec::health::HealthProbe;
use atrest::exec::ssh::Host;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use testbed::harness::image::{IMAGE, docker};
pub use testbed::harness::users::NodeUser;
use testbed::harness::{Apiserver, Options, PREFIX_PATH, Testbed};

/// `GET /readyz` answers 200 (plain HTTP placeholder), within 10 s.
fn wait_http_ok(address: &str) {
    use std::io::{Read, Write};
    for _ in 0..200 {
        if let Ok(mut s) = std::net::TcpStream::connect((address, 6443)) {
            let _ =
                s.write_all(format!("GET /readyz HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes());
            let mut buf = String::new();
            let _ = s.read_to_string(&mut buf);
            if buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("apiserver placeholder on {address}:6443 never answered 200");
}

pub struct BedNode {
    pub address: String,
    pub port: u16,
    /// `/etc/kubernetes` under the prefix, as the node (sshd, dockerd) sees it.
    pub kdir_node: String,
    /// The same directory as this test process sees it.
    pub kdir_host: PathBuf,
    /// Docker socket path (node view) and as seen here.
    pub docker_socket_node: String,
    pub docker_socket_host: PathBuf,
    /// PID of the node's listening sshd.
    pub sshd_pid: u32,
}

pub struct Bed {
    pub nodes: Vec<BedNode>,
    pub key_ed25519: PathBuf,
    pub key_rsa: PathBuf,
    pub known_hosts: PathBuf,
    tb: Testbed,
}

/// Placeholder apiserver that honours the flag like kube-apiserver does at start: it refuses to run when
/// `--encryption-provider-config` names a file that is not an EncryptionConfiguration (so a broken change makes
/// it exit and crash-loop under `--restart=always`, as the real one does). Extra arguments land in `$@`.
const FLAG_AWARE: &str = r#"for a; do case $a in --encryption-provider-config=*) busybox grep -q "^kind: EncryptionConfiguration" "${a#*=}" || { echo "bad encryption config" >&2; exit 1; };; esac; done; exec httpd -f -p "$ADDR:6443" -h /etc/kubernetes"#;

impl Bed {
    /// A fresh 2-node testbed (sshd + dockerd per node, placeholder apiserver without etcd), plus an RSA client
    /// key and a flag-aware apiserver command.
    pub fn up() -> Bed {
        Self::up_with(NodeUser::Root)
    }

    /// With `NodeUser::Sudo` or `DockerGroup`, every node also has user `atrest` (group `docker`).
    pub fn up_with(user: NodeUser) -> Bed {
        let tb = Testbed::up(Options {
            nodes: 2,
            etcd: false,
            apiserver: Apiserver::Placeholder,
            user,
            ..Default::default()
        })
        .expect("testbed up");
        let key_rsa = tb.dir().join("id_rsa");
        let st = Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "rsa",
                "-b",
                "3072",
                "-N",
                "",
                "-C",
                "transport-rsa",
                "-f",
            ])
            .arg(&key_rsa)
            .stdin(Stdio::null())
            .status()
            .expect("ssh-keygen");
        assert!(st.success());
        let rsa_pub = std::fs::read_to_string(key_rsa.with_extension("pub")).expect("rsa pub");
        let mut nodes = Vec::new();
        for n in tb.nodes() {
            let ak = n.dir.join("ssh/authorized_keys");
            let mut keys = std::fs::read_to_string(&ak).expect("authorized_keys");
            keys.push_str(&rsa_pub);
            std::fs::write(&ak, keys).expect("authorized_keys");
            std::fs::write(n.kubernetes_dir().join("readyz"), "ok\n").expect("readyz");
            let sock = n.docker_socket.clone();
            run(docker(&sock).args(["rm", "-f", "kube-apiserver"]));
            run(docker(&sock)
                .args([
                    "run",
                    "-d",
                    "--init",
                    "--name",
                    "kube-apiserver",
                    "--net=host",
                    "--restart=always",
                ])
                .arg("-e")
                .arg(format!("ADDR={}", n.address))
                .arg("-v")
                .arg(format!("{PREFIX_PATH}/etc/kubernetes:/etc/kubernetes:z"))
                .arg(IMAGE)
                .args(["sh", "-c", FLAG_AWARE, "sh"]));
            let sshd_pid = tb
                .manifest()
                .procs
                .iter()
                .find(|p| p.kind == "sshd" && p.node == n.index)
                .map(|p| p.pid)
                .expect("sshd recorded");
            nodes.push(BedNode {
                address: n.address.to_string(),
                port: n.ssh_port,
                kdir_node: format!("{PREFIX_PATH}/etc/kubernetes"),
                kdir_host: n.kubernetes_dir(),
                docker_socket_node: sock.display().to_string(),
                docker_socket_host: sock,
                sshd_pid,
            });
        }
        for n in &nodes {
            wait_http_ok(&n.address);
        }
        Bed {
            nodes,
            key_ed25519: tb.client_key(),
            key_rsa,
            known_hosts: tb.known_hosts(),
            tb,
        }
    }

    pub fn dir(&self) -> &Path {
        self.tb.dir()
    }

    pub fn config_nodes(&self) -> Vec<ConfigNode> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| ConfigNode {
                address: n.address.clone(),
                port: Some(n.port.to_string()),
                user: Some("root".into()),
                role: vec!["controlplane".into(), "etcd".into()],
                hostname_override: Some(format!("node{}", i + 1)),
                docker_socket: Some(n.docker_socket_node.clone()),
                ..Default::default()
            })
            .collect()
    }

    /// A cluster.yml for the atrest binary: every node as a controlplane, `extra` appended at the top level.
    pub fn cluster_yml(&self, extra: &str) -> String {
        let mut text = format!("prefix_path: {PREFIX_PATH}\nnodes:\n");
        for (i, n) in self.nodes.iter().enumerate() {
            text.push_str(&format!(
                "  - address: {}\n    port: \"{}\"\n    user: root\n    role: [controlplane, etcd]\n    hostname_override: node{}\n    docker_socket: {}\n",
                n.address,
                n.port,
                i + 1,
                n.docker_socket_node
            ));
        }
        text.push_str(extra);
        text
    }

    pub fn node_of(&self, h: &Host) -> &BedNode {
        self.nodes
            .iter()
            .find(|n| n.address == h.node().address)
            .expect("host belongs to this bed")
    }

    /// An address in the bed's block where nothing listens.
    pub fn unreachable_address(&self) -> String {
        let a = &self.nodes[0].address;
        format!("{}.99", &a[..a.rfind('.').unwrap_or(a.len())])
    }

    pub fn probe(&self, h: &Host) -> HealthProbe {
        let mut p = HealthProbe::for_host(h, None);
        p.plain_http = true;
        p
    }

    /// Every file under every node's prefix (path, content hash) plus every container name and ID.
    pub fn snapshot(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            walk(&n.kdir_host, &mut out);
            out.push(run(docker(&self.nodes[i].docker_socket_host).args([
                "ps",
                "-a",
                "--format",
                "{{.ID}} {{.Names}} {{.State}}",
            ])));
        }
        out
    }

    /// Cut every SSH connection of node `i`: kill the sshd processes below its listener (monitor and network
    /// child), so the TCP connection really closes; the remote shell is left to notice. Returns how many.
    pub fn kill_ssh_sessions(&self, i: usize) -> usize {
        let mut todo = vec![self.nodes[i].sshd_pid];
        let mut tree = Vec::new();
        while let Some(p) = todo.pop() {
            for c in children_of(p) {
                tree.push(c);
                todo.push(c);
            }
        }
        let mut killed = 0;
        for pid in tree {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() != "sshd" {
                continue;
            }
            // SAFETY: plain kill(2) on PIDs just read as descendants of the sshd this testbed started.
            if unsafe { libc_kill(pid as i32, 9) } == 0 {
                killed += 1;
            }
        }
        killed
    }

    pub fn docker_inspect(&self, i: usize, format: &str) -> String {
        run(docker(&self.nodes[i].docker_socket_host).args([
            "inspect",
            "--format",
            format,
            "kube-apiserver",
        ]))
    }

    /// Runs `docker args` against node `i`'s engine (which must succeed); its trimmed stdout.
    pub fn docker(&self, i: usize, args: &[&str]) -> String {
        run(docker(&self.nodes[i].docker_socket_host).args(args))
    }

    pub fn docker_inspect_name(&self, i: usize, name: &str) -> Option<String> {
        let out = docker(&self.nodes[i].docker_socket_host)
            .args(["inspect", "--format", "{{.Id}}", name])
            .output()
            .expect("docker runs");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc")
        .expect("proc")
        .filter_map(|e| e.ok())
    {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the `(comm)`: state, ppid.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r.to_string()) else {
            continue;
        };
        let ppid: u32 = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        if ppid == parent {
            out.push(pid);
        }
    }
    out
}

fn walk(dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.filter_map(|e| e.ok()).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            let bytes = std::fs::read(&p).unwrap_or_default();
            out.push(format!(
                "{} {}",
                p.display(),
                atrest::exec::files::sha256_hex(&bytes)
            ));
        }
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("command runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A private ssh-agent holding one key; killed on drop.
pub struct Agent {
    pub socket: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Agent {
    pub fn start(key: &Path) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ssh-agent starts");
        for _ in 0..200 {
            if socket.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let st = Command::new("ssh-add")
            .arg(key)
            .env("SSH_AUTH_SOCK", &socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("ssh-add runs");
        assert!(st.success(), "ssh-add failed");
        Agent {
            socket,
            child,
            _dir: dir,
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kills and reaps a helper process when the test ends.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Bed {
    /// A CA certificate that did not sign anything in this testbed.
    pub fn other_ca_pem(&self) -> Vec<u8> {
        let dir = self.dir().join("other-ca");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let st = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "1",
            ])
            .args(["-subj", "/CN=kube-ca"])
            .arg("-keyout")
            .arg(dir.join("ca-key.pem"))
            .arg("-out")
            .arg(dir.join("ca.pem"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl");
        assert!(st.success());
        std::fs::read(dir.join("ca.pem")).expect("ca pem")
    }
}

/// `ssh-keygen -t TYPE -N PASSPHRASE -f PATH`.
pub fn keygen(path: &Path, kind: &str, passphrase: &str) {
    let st = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            kind,
            "-N",
            passphrase,
            "-C",
            "transport-test",
            "-f",
        ])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .expect("ssh-keygen");
    assert!(st.success(), "ssh-keygen {kind}");
}

/// Sign `user_pub` with the CA key at `ca` for `principal`; writes `<user>-cert.pub`.
pub fn sign_user_cert(ca: &Path, user_pub: &Path, principal: &str) {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(ca)
        .args(["-I", "transport-test", "-n", principal, "-V", "-5m:+1h"])
        .arg(user_pub)
        .stdin(Stdio::null())
        .status()
        .expect("ssh-keygen -s");
    assert!(st.success(), "signing the user certificate");
}

impl Bed {
    /// Append a public key to node `i`'s authorized_keys.
    pub fn authorize(&self, i: usize, pubkey: &Path) {
        let n = &self.tb.nodes()[i];
        let ak = n.dir.join("ssh/authorized_keys");
        let mut keys = std::fs::read_to_string(&ak).expect("authorized_keys");
        keys.push_str(&std::fs::read_to_string(pubkey).expect("pub key"));
        std::fs::write(&ak, keys).expect("authorized_keys");
    }

    /// Make node `i`'s sshd trust user certificates signed by `ca_pub` (config + SIGHUP, which re-execs sshd
    /// under the same PID).
    pub fn trust_user_ca(&self, i: usize, ca_pub: &Path) {
        let n = &self.tb.nodes()[i];
        let cfg = n.dir.join("ssh/sshd_config");
        let mut text = std::fs::read_to_string(&cfg).expect("sshd_config");
        text.push_str(&format!("TrustedUserCAKeys {}\n", ca_pub.display()));
        std::fs::write(&cfg, text).expect("sshd_config");
        self.reload_sshd(i);
    }

    /// Give node `i`'s sshd a host certificate for its host key, signed by the CA key at `ca` for `principal`
    /// and valid for `validity` (`ssh-keygen -V`), and reload it.
    pub fn set_host_certificate(&self, i: usize, ca: &Path, principal: &str, validity: &str) {
        let n = &self.tb.nodes()[i];
        let host_key = n.dir.join("ssh/host_ed25519_key");
        let st = Command::new("ssh-keygen")
            .args(["-q", "-s"])
            .arg(ca)
            .args([
                "-I",
                "transport-test-host",
                "-h",
                "-n",
                principal,
                "-V",
                validity,
            ])
            .arg(host_key.with_extension("pub"))
            .stdin(Stdio::null())
            .status()
            .expect("ssh-keygen -s -h");
        assert!(st.success(), "signing the host certificate");
        let cfg = n.dir.join("ssh/sshd_config");
        let mut text = std::fs::read_to_string(&cfg).expect("sshd_config");
        let line = format!("HostCertificate {}-cert.pub\n", host_key.display());
        if !text.contains(&line) {
            text.push_str(&line);
            std::fs::write(&cfg, text).expect("sshd_config");
        }
        self.reload_sshd(i);
    }

    /// Give node `i`'s sshd a second host key of type `kind` (`ssh-keygen -t`), beside its ed25519 key, and
    /// reload it. Returns the public key as `algorithm base64`.
    pub fn add_host_key(&self, i: usize, kind: &str) -> String {
        let n = &self.tb.nodes()[i];
        let key = n.dir.join(format!("ssh/host_{kind}_key"));
        keygen(&key, kind, "");
        let public = std::fs::read_to_string(key.with_extension("pub")).expect("host key pub");
        let cfg = n.dir.join("ssh/sshd_config");
        let mut text = std::fs::read_to_string(&cfg).expect("sshd_config");
        text.push_str(&format!("HostKey {}\n", key.display()));
        std::fs::write(&cfg, text).expect("sshd_config");
        self.reload_sshd(i);
        public
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn reload_sshd(&self, i: usize) {
        let n = &self.nodes[i];
        let before = listening_inode(&n.address, n.port).expect("sshd listens before the reload");
        // SAFETY: kill(2) with SIGHUP on the sshd PID this testbed recorded.
        assert_eq!(unsafe { libc_kill(n.sshd_pid as i32, 1) }, 0);
        // sshd re-execs under the same PID, closing its listening socket and opening a new one that serves the
        // new config: wait for that new socket (a connection to the old one would race the re-exec).
        let started = std::time::Instant::now();
        loop {
            if listening_inode(&n.address, n.port).is_some_and(|inode| inode != before) {
                return;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(30),
                "sshd on {}:{} did not listen again after SIGHUP",
                n.address,
                n.port
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// The inode of the socket listening on `address:port` (IPv4, or any address), from /proc/net/tcp.
fn listening_inode(address: &str, port: u16) -> Option<u64> {
    let ip: std::net::Ipv4Addr = address.parse().expect("an IPv4 node address");
    let wanted = [
        format!("{:08X}:{port:04X}", u32::from_ne_bytes(ip.octets())),
        format!("00000000:{port:04X}"),
    ];
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
        (fields.len() > 9 && wanted.contains(&fields[1].to_string()) && fields[3] == "0A")
            .then(|| fields[9].parse().ok())
            .flatten()
    })
}
