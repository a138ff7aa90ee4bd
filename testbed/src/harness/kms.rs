//! The testbed's KMS plugins (`Options { kms: true }`): one `kms-plugin` per node, started inside the node's mount
//! namespace, where a per-node directory (`DIR/nodeN/kmsplugin`) is bind-mounted on [`KMS_DIR`]; so the node sees its
//! own socket at [`KMS_SOCKET`], like a plugin pod's hostPath socket. All nodes share one KEK file
//! (`DIR/kms/kek`, 0600), as an HA cluster's plugins share one KMS key. kube-apiserver containers get no bind for
//! [`KMS_DIR`]: atrest adds it from `services.kube-api.extra_binds`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::{Node, Testbed, health, procs};

/// Where every node sees its plugin's directory and socket (the RKE1 docs' example path).
pub const KMS_DIR: &str = "/var/run/kmsplugin";
pub const KMS_SOCKET: &str = "/var/run/kmsplugin/socket.sock";
/// `kms.endpoint` for [`KMS_SOCKET`].
pub const KMS_ENDPOINT: &str = "unix:///var/run/kmsplugin/socket.sock";
const PROC_KIND: &str = "kms-plugin";

/// `ATREST_KMS_PLUGIN_BIN`, else `kms-plugin` in the cargo target dir of the running executable
/// (`target/debug/deps/x` → `target/debug/kms-plugin`).
pub fn locate_plugin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("ATREST_KMS_PLUGIN_BIN") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("ATREST_KMS_PLUGIN_BIN={} is not a file", p.display());
        }
        return Ok(p);
    }
    let exe = std::env::current_exe().context("locating the current executable")?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let candidate = dir.join("kms-plugin");
    if candidate.is_file() {
        Ok(candidate)
    } else {
        bail!(
            "kms-plugin not found at {}: run `cargo build -p testbed` (or set ATREST_KMS_PLUGIN_BIN)",
            candidate.display()
        )
    }
}

/// The node directory bind-mounted on [`KMS_DIR`] in the node's namespace (host path).
pub fn node_dir(n: &Node) -> PathBuf {
    n.dir.join("kmsplugin")
}

/// Prepares the shared KEK file and the node directories; returns the `(host dir, KMS_DIR)` bind per node.
pub(super) fn prepare(dir: &Path, nodes: &[Node]) -> Result<Vec<(PathBuf, PathBuf)>> {
    let kek_dir = dir.join("kms");
    fs::create_dir_all(&kek_dir).with_context(|| format!("creating {}", kek_dir.display()))?;
    fs::set_permissions(
        &kek_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )?;
    crate::kms::keyfile::KeyRing::load_or_create(&kek_dir.join("kek"))
        .map_err(|e| anyhow::anyhow!("creating the shared KEK file: {e}"))?;
    // The mount point must exist in the host tree the namespaces are copied from; it stays empty on the host.
    fs::create_dir_all(KMS_DIR).with_context(|| format!("creating the mount point {KMS_DIR}"))?;
    let mut binds = Vec::new();
    for n in nodes {
        let d = node_dir(n);
        fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        binds.push((d, PathBuf::from(KMS_DIR)));
    }
    Ok(binds)
}

impl Testbed {
    /// The KEK file all plugins share (host path).
    pub fn kms_key_file(&self) -> PathBuf {
        self.manifest.dir.join("kms/kek")
    }

    /// Node `n`'s plugin socket as the host sees it.
    pub fn kms_socket_on_host(&self, n: &Node) -> PathBuf {
        node_dir(n).join("socket.sock")
    }

    fn kms_pid_file(n: &Node) -> PathBuf {
        n.dir.join("kmsplugin.pid")
    }

    /// Starts node `n`'s plugin in the node's mount namespace and waits for its socket.
    pub fn kms_start(&mut self, n: &Node) -> Result<()> {
        self.kms_start_with(n, &locate_plugin()?)
    }

    /// [`kms_start`](Self::kms_start) with another plugin binary that takes the same flags (`--listen`,
    /// `--key-file`, `--pid-file`): the Go KMS v1 plugin ([`super::upstream::kms_plugin_v1_binary`]).
    pub fn kms_start_with(&mut self, n: &Node, plugin: &Path) -> Result<()> {
        let sshd_pid = self
            .manifest
            .procs
            .iter()
            .find(|p| p.kind == "sshd" && p.node == n.index && procs::alive(p.pid, ""))
            .map(|p| p.pid)
            .with_context(|| format!("no running sshd (mount namespace) for {}", n.name))?;
        if self.kms_running(n) {
            bail!("the kms plugin of {} is already running", n.name);
        }
        let pid_file = Self::kms_pid_file(n);
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--mount=/proc/{sshd_pid}/ns/mnt"))
            .arg("--")
            .arg(plugin)
            .args(["--listen", KMS_ENDPOINT, "--key-file"])
            .arg(self.kms_key_file())
            .arg("--pid-file")
            .arg(&pid_file);
        let child = procs::spawn_daemon(&mut cmd, &n.dir.join("kms-plugin.log"))?;
        let pid = self.record(child, PROC_KIND, n.index, &pid_file)?;
        let socket = self.kms_socket_on_host(n);
        let log = n.dir.join("kms-plugin.log");
        health::wait_until(
            &format!("kms plugin of {}", n.name),
            Duration::from_secs(10),
            Duration::from_millis(10),
            || {
                if !procs::alive(pid, "") {
                    bail!("kms-plugin exited; {}", health::log_tail(&log, 10));
                }
                Ok(socket.exists())
            },
        )?;
        if let Some(p) = self.manifest.procs.last_mut() {
            p.cmdline = procs::cmdline(pid).unwrap_or_default();
        }
        self.manifest.save()
    }

    fn kms_proc(&self, n: &Node) -> Option<procs::ProcRecord> {
        self.manifest
            .procs
            .iter()
            .find(|p| p.kind == PROC_KIND && p.node == n.index && procs::alive(p.pid, &p.tag))
            .cloned()
    }

    pub fn kms_running(&self, n: &Node) -> bool {
        self.kms_proc(n).is_some()
    }

    /// Stops node `n`'s plugin (SIGTERM: it removes its socket).
    pub fn kms_stop(&mut self, n: &Node) -> Result<()> {
        let Some(rec) = self.kms_proc(n) else {
            bail!("the kms plugin of {} is not running", n.name);
        };
        procs::stop(&rec, Duration::from_secs(10));
        if let Some(i) = self.children.iter().position(|c| c.id() == rec.pid) {
            let mut c = self.children.remove(i);
            let _ = c.wait();
        }
        self.manifest.procs.retain(|p| p.pid != rec.pid);
        self.manifest.save()
    }

    /// Makes node `n`'s plugin report unhealthy (`Status.healthz`, `Encrypt` fails) until called with `false`.
    pub fn kms_set_unhealthy(&self, n: &Node, unhealthy: bool) -> Result<()> {
        let flag = node_dir(n).join("socket.sock.unhealthy");
        if unhealthy {
            fs::write(&flag, "testbed: made unhealthy\n")
                .with_context(|| format!("writing {}", flag.display()))
        } else {
            match fs::remove_file(&flag) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(e).with_context(|| format!("removing {}", flag.display()))
                }
                _ => Ok(()),
            }
        }
    }

    /// Rotates the shared KEK: a new current key id for every plugin (each re-reads the changed file on its next
    /// call). Returns the new key id.
    pub fn kms_rotate(&self) -> Result<String> {
        crate::kms::keyfile::rotate(&self.kms_key_file())
            .map_err(|e| anyhow::anyhow!("rotating the shared KEK: {e}"))
    }
}
