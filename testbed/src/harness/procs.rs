//! Daemons the testbed starts, the manifest that records them (`DIR/testbed.json`), and teardown.
//!
//! Teardown only ever kills PIDs it recorded, after re-checking `/proc/PID/cmdline` (PIDs get reused), treats a
//! zombie as gone, reaps its own children, and removes cgroup dirs, mounts, runtime files and the testbed dir.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

pub const MANIFEST: &str = "testbed.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcRecord {
    pub pid: u32,
    /// `sshd`, `dockerd` or `etcd`.
    pub kind: String,
    /// 1-based node number.
    pub node: usize,
    /// A string the process's command line must contain for it to still be ours.
    pub tag: String,
    pub cmdline: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRecord {
    pub ip: std::net::Ipv4Addr,
    pub dir: PathBuf,
    pub run_dir: PathBuf,
    pub docker_socket: PathBuf,
    pub cgroup_parent: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub node: usize,
    pub id: String,
    pub name: String,
}

/// What `up` started; enough for `down` in another process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub slot: usize,
    pub dir: PathBuf,
    pub run_dir: PathBuf,
    pub nodes: Vec<NodeRecord>,
    pub procs: Vec<ProcRecord>,
    pub containers: Vec<ContainerRecord>,
    /// Measured bring-up time, milliseconds (0 until `up` finished).
    pub up_ms: u64,
    /// Milestones of `up`: (step, milliseconds since `up` began).
    #[serde(default)]
    pub steps: Vec<(String, u64)>,
}

impl Manifest {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(MANIFEST)
    }
    pub fn load(dir: &Path) -> Result<Manifest> {
        let path = Self::path(dir);
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
    pub fn save(&self) -> Result<()> {
        let path = Self::path(&self.dir);
        let text = serde_json::to_string_pretty(self)?;
        let tmp = path.with_extension("json.tmp");
        fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("renaming into {}", path.display()))
    }
    /// Does any recorded daemon still run?
    pub fn any_alive(&self) -> bool {
        self.procs.iter().any(|p| alive(p.pid, &p.tag))
    }
}

/// Running, not a zombie, and its command line still names `tag`.
pub fn alive(pid: u32, tag: &str) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the last ')' (the comm may contain spaces or parens).
    let state = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.trim_start().chars().next())
        .unwrap_or(None);
    if matches!(state, Some('Z') | Some('X') | None) {
        return false;
    }
    cmdline(pid).is_some_and(|c| c.contains(tag))
}

pub fn cmdline(pid: u32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        String::from_utf8_lossy(&raw)
            .replace('\0', " ")
            .trim_end()
            .to_string(),
    )
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a PID we recorded and re-checked just before; no memory is involved.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Spawns a daemon with all stdio redirected (a daemon holding our pipes would hang callers).
pub fn spawn_daemon(cmd: &mut Command, log: &Path) -> Result<Child> {
    let out = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    cmd.spawn()
        .with_context(|| format!("spawning {:?}", cmd.get_program()))
}

/// SIGTERM, wait up to `grace`, then SIGKILL; reaps it when it is our child.
pub fn stop(rec: &ProcRecord, grace: Duration) {
    if !alive(rec.pid, &rec.tag) {
        return;
    }
    signal(rec.pid, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while alive(rec.pid, &rec.tag) {
        reap(rec.pid);
        if Instant::now() >= deadline {
            signal(rec.pid, libc::SIGKILL);
            let hard = Instant::now() + Duration::from_secs(5);
            while alive(rec.pid, &rec.tag) && Instant::now() < hard {
                reap(rec.pid);
                std::thread::sleep(Duration::from_millis(20));
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    reap(rec.pid);
}

/// Non-blocking waitpid: collects the zombie if `pid` is a child of this process (no-op otherwise).
fn reap(pid: u32) {
    let mut status = 0;
    // SAFETY: waitpid on one specific PID with WNOHANG; `status` is a valid out pointer.
    unsafe {
        libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG);
    }
}

fn cgroup_dirs(parent: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(ctrls) = fs::read_dir("/sys/fs/cgroup") {
        for c in ctrls.flatten() {
            let d = c.path().join(parent.trim_start_matches('/'));
            if d.is_dir() {
                dirs.push(d);
            }
        }
    }
    dirs
}

/// Everything a finished teardown must not leave behind; empty when clean.
pub fn leftovers(m: &Manifest) -> Vec<String> {
    let mut out = Vec::new();
    for p in &m.procs {
        if alive(p.pid, &p.tag) {
            out.push(format!(
                "process {} ({}) still runs: {}",
                p.pid,
                p.kind,
                cmdline(p.pid).unwrap_or_default()
            ));
        }
    }
    for p in processes_naming(&m.run_dir)
        .into_iter()
        .chain(processes_naming(&m.dir))
    {
        out.push(format!(
            "process {p} names the testbed: {}",
            cmdline(p).unwrap_or_default()
        ));
    }
    for n in &m.nodes {
        for d in cgroup_dirs(&n.cgroup_parent) {
            out.push(format!("cgroup dir {}", d.display()));
        }
    }
    for mnt in mounts_under(&[&m.dir, &m.run_dir]) {
        out.push(format!("mount {mnt}"));
    }
    for d in [&m.dir, &m.run_dir] {
        if d.exists() {
            out.push(format!("directory {}", d.display()));
        }
    }
    out
}

/// PIDs (other than ours) whose command line mentions `path`.
fn processes_naming(path: &Path) -> Vec<u32> {
    let needle = path.to_string_lossy().to_string();
    let me = std::process::id();
    let mut pids = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for e in entries.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok())
                && pid != me
                && alive(pid, &needle)
            {
                pids.push(pid);
            }
        }
    }
    pids
}

fn mounts_under(roots: &[&Path]) -> Vec<String> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|mp| roots.iter().any(|r| Path::new(mp).starts_with(r)))
        .map(str::to_string)
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.len()));
    found
}

/// Tears down everything in `m`. Safe to repeat; each step is best effort and errors are collected.
pub fn teardown(m: &Manifest) -> Result<()> {
    let mut problems = Vec::new();
    // 1. Containers first, while each engine still runs (a container would otherwise keep its shim alive).
    std::thread::scope(|s| {
        for n in &m.nodes {
            s.spawn(move || {
                if !n.docker_socket.exists() {
                    return;
                }
                let ids = super::image::docker(&n.docker_socket)
                    .args(["ps", "-aq"])
                    .stderr(Stdio::null())
                    .output();
                if let Ok(out) = ids {
                    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                        .split_whitespace()
                        .map(str::to_string)
                        .collect();
                    if !ids.is_empty() {
                        let _ = super::image::docker(&n.docker_socket)
                            .args(["rm", "-f"])
                            .args(&ids)
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .status();
                    }
                }
            });
        }
    });
    // 2. Daemons. etcd members one after another (all at once makes the last one hang ~5 s).
    std::thread::scope(|s| {
        s.spawn(|| {
            for p in m.procs.iter().filter(|p| p.kind == "etcd") {
                stop(p, Duration::from_secs(15));
            }
        });
        for p in m.procs.iter().filter(|p| p.kind != "etcd") {
            s.spawn(move || stop(p, Duration::from_secs(15)));
        }
    });
    // 3. After a hard dockerd crash its shims and containers survive: kill them by cgroup membership or by the
    //    containerd socket in their command line (both ours only).
    for n in &m.nodes {
        let sock = n
            .run_dir
            .join("exec/containerd/containerd.sock")
            .to_string_lossy()
            .to_string();
        let mut orphans: Vec<u32> = processes_naming(Path::new(&sock));
        for d in cgroup_dirs(&n.cgroup_parent)
            .iter()
            .filter(|d| d.starts_with("/sys/fs/cgroup/pids"))
        {
            if let Ok(walk) = walk_dirs(d) {
                for sub in walk {
                    if let Ok(procs) = fs::read_to_string(sub.join("cgroup.procs")) {
                        orphans.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
                    }
                }
            }
        }
        for pid in orphans {
            signal(pid, libc::SIGKILL);
            reap(pid);
        }
        if !orphans_gone_wait(n) {
            problems.push(format!("processes remain in cgroup {}", n.cgroup_parent));
        }
        for d in cgroup_dirs(&n.cgroup_parent) {
            if let Ok(mut subs) = walk_dirs(&d) {
                subs.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
                for sub in subs {
                    let _ = fs::remove_dir(&sub);
                }
            }
            if let Err(e) = fs::remove_dir(&d)
                && d.exists()
            {
                problems.push(format!("removing cgroup dir {}: {e}", d.display()));
            }
        }
    }
    // 4. Mounts left under our paths (dockerd's nsfs mount, if it ran in the host namespace), deepest first.
    for mp in mounts_under(&[&m.dir, &m.run_dir]) {
        if let Ok(c) = std::ffi::CString::new(mp.clone()) {
            // SAFETY: umount2 with a valid NUL-terminated path; MNT_DETACH makes it lazy.
            unsafe {
                libc::umount2(c.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
    // 5. Files: run dir, testbed dir, slot owner; the shared shim socket dir only if empty.
    for d in [&m.run_dir, &m.dir] {
        if d.exists()
            && let Err(e) = fs::remove_dir_all(d)
        {
            problems.push(format!("removing {}: {e}", d.display()));
        }
    }
    let owner = m
        .run_dir
        .with_file_name(format!("slot-{}", m.slot))
        .join("owner");
    let _ = fs::remove_file(owner);
    let _ = fs::remove_dir("/run/containerd/s");
    if problems.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("teardown incomplete: {}", problems.join("; "))
    }
}

fn orphans_gone_wait(n: &NodeRecord) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let busy = cgroup_dirs(&n.cgroup_parent).iter().any(|d| {
            walk_dirs(d).unwrap_or_default().iter().any(|sub| {
                fs::read_to_string(sub.join("cgroup.procs"))
                    .map(|s| !s.trim().is_empty())
                    .unwrap_or(false)
            })
        });
        if !busy {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `d` and every directory below it.
fn walk_dirs(d: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = vec![d.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(rd) = fs::read_dir(&out[i]) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    out.push(e.path());
                }
            }
        }
        i += 1;
    }
    Ok(out)
}
