//! Test fixture: the nodes the transport tests talk to.

use atrest::config::cluster::Node as ConfigNode;
use atrest::exec::health::HealthProbe;
use atrest::exec::ssh::Host;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

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
    _guard: Option<std::sync::MutexGuard<'static, ()>>,
}

static SCRATCH: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Bed {
    /// The scratch bed from `/tmp/tp/up.sh` (`ATREST_TP_BED`), one test at a time.
    pub fn up() -> Bed {
        let dir =
            PathBuf::from(std::env::var("ATREST_TP_BED").unwrap_or_else(|_| "/tmp/tp/bed".into()));
        let guard = SCRATCH.lock().unwrap_or_else(|p| p.into_inner());
        let nodes = (1..=2)
            .map(|i| {
                let kdir = dir.join(format!("node{i}/prefix/etc/kubernetes"));
                let sock = format!("/run/tp-transport/node{i}/docker.sock");
                BedNode {
                    address: format!("127.0.77.{}", 10 + i),
                    port: 2222,
                    kdir_node: kdir.display().to_string(),
                    kdir_host: kdir,
                    docker_socket_node: sock.clone(),
                    docker_socket_host: PathBuf::from(sock),
                    sshd_pid: std::fs::read_to_string(dir.join(format!("pids/sshd{i}")))
                        .expect("scratch bed is up")
                        .trim()
                        .parse()
                        .expect("pid"),
                }
            })
            .collect();
        Bed {
            nodes,
            key_ed25519: dir.join("id_ed25519"),
            key_rsa: dir.join("id_rsa"),
            known_hosts: dir.join("known_hosts"),
            _guard: Some(guard),
        }
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

    pub fn node_of(&self, h: &Host) -> &BedNode {
        self.nodes
            .iter()
            .find(|n| n.address == h.node().address)
            .expect("host belongs to this bed")
    }

    /// An address in the bed's block where nothing listens.
    pub fn unreachable_address(&self) -> String {
        "127.0.77.99".into()
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

    /// Kill every SSH session process of node `i` (children of its listening sshd). Returns how many.
    pub fn kill_ssh_sessions(&self, i: usize) -> usize {
        let listener = self.nodes[i].sshd_pid;
        let mut killed = 0;
        for pid in children_of(listener) {
            // SAFETY: plain kill(2) on a PID we just read as a child of the sshd this bed started.
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

fn docker(sock: &Path) -> Command {
    let mut c = Command::new("docker");
    c.arg("-H")
        .arg(format!("unix://{}", sock.display()))
        .stdin(Stdio::null());
    c
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
