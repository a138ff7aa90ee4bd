//! Faults with a real cause, for the reliability suite (docs/reliability.md R2): a node's sshd or Docker engine
//! killed for good (and started again later, in the node's own mount namespace, as a host coming back does), a node's
//! address cut off (every packet to it dropped by the kernel, as a network partition does: no reset, no error,
//! only silence, so a client must notice by its own keepalives and deadlines), and a firewall that lets one user
//! reach the nodes only through a bastion (so a test can tell a jump from a direct connection).

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::{Node, ProcRecord, Testbed, health, procs};

/// The PIDs whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                // pid (comm) state ppid …: comm may hold spaces, so read after its closing parenthesis.
                .and_then(|stat| {
                    let (_, rest) = stat.rsplit_once(')')?;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

fn sigkill(pid: u32) {
    // SAFETY: kill(2) has no memory preconditions; a PID that is gone is an ESRCH we ignore.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

/// Every packet to a node's address dropped until this is dropped (an `iptables` rule on INPUT).
pub struct AddressCut {
    address: std::net::Ipv4Addr,
}

impl AddressCut {
    fn rule(&self, op: &str) -> Command {
        let mut c = Command::new("iptables");
        c.args([op, "INPUT", "-d", &self.address.to_string(), "-j", "DROP"]);
        c
    }
}

impl Drop for AddressCut {
    fn drop(&mut self) {
        let _ = self.rule("-D").status();
    }
}

impl Testbed {
    fn sshd_record(&self, n: &Node) -> Result<&ProcRecord> {
        self.manifest
            .procs
            .iter()
            .find(|p| p.kind == "sshd" && p.node == n.index)
            .with_context(|| format!("no sshd recorded for {}", n.name))
    }

    /// The PIDs of the SSH sessions node `n`'s sshd serves now (the children of its listener).
    pub fn ssh_sessions(&self, n: &Node) -> Result<Vec<u32>> {
        Ok(children_of(self.sshd_record(n)?.pid))
    }

    /// Kills node `n`'s sshd with SIGKILL, listener and every session it serves; returns how many sessions were
    /// cut. The node stays without SSH until [`Testbed::start_sshd`].
    pub fn kill_sshd(&mut self, n: &Node) -> Result<usize> {
        let listener = self.sshd_record(n)?.pid;
        let sessions = self.ssh_sessions(n)?;
        sigkill(listener);
        for pid in &sessions {
            sigkill(*pid);
        }
        health::wait_until(
            &format!("sshd of {} to die", n.name),
            Duration::from_secs(10),
            Duration::from_millis(20),
            || Ok(!procs::alive(listener, "")),
        )?;
        Ok(sessions.len())
    }

    /// Starts node `n`'s sshd again after [`Testbed::kill_sshd`], in the node's mount namespace (its dockerd's),
    /// and waits until it accepts connections.
    pub fn start_sshd(&mut self, n: &Node) -> Result<()> {
        let dockerd = self.dockerd_pid(n)?;
        let cfg = n.dir.join("ssh/sshd_config");
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--mount=/proc/{dockerd}/ns/mnt"))
            .arg("--")
            .arg("/usr/sbin/sshd")
            .arg("-D")
            .arg("-f")
            .arg(&cfg)
            .arg("-E")
            .arg(n.dir.join("sshd.log"));
        let child = procs::spawn_daemon(&mut cmd, &n.dir.join("sshd.stdio.log"))?;
        self.manifest
            .procs
            .retain(|p| !(p.kind == "sshd" && p.node == n.index));
        let pid = self.record(child, "sshd", n.index, &cfg)?;
        let addr = std::net::SocketAddr::new(n.address.into(), n.ssh_port);
        health::wait_until(
            &format!("sshd of {} to listen again", n.name),
            Duration::from_secs(10),
            Duration::from_millis(20),
            || {
                if !procs::alive(pid, "") {
                    bail!(
                        "sshd exited; {}",
                        health::log_tail(&n.dir.join("sshd.log"), 10)
                    );
                }
                Ok(health::tcp_open(addr))
            },
        )?;
        Ok(())
    }

    fn dockerd_pid(&self, n: &Node) -> Result<u32> {
        self.manifest
            .procs
            .iter()
            .find(|p| p.kind == "dockerd" && p.node == n.index)
            .map(|p| p.pid)
            .with_context(|| format!("no dockerd recorded for {}", n.name))
    }

    /// Kills node `n`'s Docker engine with SIGKILL, as a crash or the OOM killer does. Only dockerd dies: its
    /// containerd, the shims and the containers (etcd, kube-apiserver) run on, but nothing answers the Docker API
    /// until [`Testbed::start_dockerd`].
    pub fn kill_dockerd(&mut self, n: &Node) -> Result<()> {
        let pid = self.dockerd_pid(n)?;
        sigkill(pid);
        // Reap it if it is our child: a zombie keeps its PID in the engine's pid file alive, and the next engine
        // would refuse to start ("pid file found, ensure docker is not running").
        if let Some(i) = self.children.iter().position(|c| c.id() == pid) {
            let _ = self.children.swap_remove(i).wait();
        }
        health::wait_until(
            &format!("dockerd of {} to die", n.name),
            Duration::from_secs(10),
            Duration::from_millis(20),
            || Ok(!procs::alive(pid, "")),
        )?;
        Ok(())
    }

    /// Starts node `n`'s Docker engine again after [`Testbed::kill_dockerd`], with the same flags, in the node's
    /// mount namespace (its sshd's), and waits until it answers. As after any engine crash without live-restore,
    /// the new engine stops the containers the old one left and starts again those whose restart policy says so
    /// (RKE's `always`).
    ///
    /// The old engine's containerd runs on, and the new engine reconnects to it. Once (R2's full run, a loaded
    /// machine) it did not answer the new engine, which gave up ("timeout waiting for containerd to start"): then
    /// that containerd is killed too, as an operator would, and the engine started once more with a fresh one (the
    /// containers' shims outlive it, and the new containerd takes them over).
    pub fn start_dockerd(&mut self, n: &Node) -> Result<()> {
        match self.try_start_dockerd(n) {
            Err(e) if format!("{e:#}").contains("failed to start containerd") => {
                let record = self.node_record(n)?;
                let pid_file = record.run_dir.join("exec/containerd/containerd.pid");
                let pid = std::fs::read_to_string(&pid_file)
                    .ok()
                    .and_then(|t| t.trim().parse::<u32>().ok());
                eprintln!(
                    "testbed: {}'s engine could not reach its containerd ({e:#}); killing containerd {pid:?} and \
                     starting the engine again",
                    n.name
                );
                if let Some(pid) = pid {
                    sigkill(pid);
                }
                self.try_start_dockerd(n)
            }
            other => other,
        }
    }

    fn node_record(&self, n: &Node) -> Result<super::NodeRecord> {
        self.manifest
            .nodes
            .get(n.index - 1)
            .cloned()
            .with_context(|| format!("no record of {}", n.name))
    }

    fn try_start_dockerd(&mut self, n: &Node) -> Result<()> {
        let sshd = self.sshd_record(n)?.pid;
        let record = self.node_record(n)?;
        let log = n.dir.join("dockerd.log");
        let child = procs::spawn_daemon(&mut super::dockerd_command(n, &record, sshd), &log)?;
        self.manifest
            .procs
            .retain(|p| !(p.kind == "dockerd" && p.node == n.index));
        let pid = self.record(child, "dockerd", n.index, &n.dir.join("daemon.json"))?;
        health::wait_until(
            &format!("dockerd of {} to answer again", n.name),
            Duration::from_secs(60),
            Duration::from_millis(50),
            || {
                if !procs::alive(pid, "") {
                    bail!("dockerd exited; {}", health::log_tail(&log, 10));
                }
                Ok(health::docker_ping(&n.docker_socket))
            },
        )?;
        Ok(())
    }

    /// Drops every packet to node `n`'s address until the returned guard is dropped.
    pub fn cut_address(&self, n: &Node) -> Result<AddressCut> {
        let cut = AddressCut { address: n.address };
        let status = cut
            .rule("-I")
            .status()
            .context("running iptables (package iptables)")?;
        if !status.success() {
            bail!("iptables -I INPUT -d {} -j DROP: {status}", n.address);
        }
        Ok(cut)
    }
}

/// A firewall between the processes of one user and the nodes (`iptables` rules on OUTPUT, removed on drop):
/// that user reaches no node address, except one SSH port (a bastion's).
pub struct Firewall {
    rules: Vec<Vec<String>>,
}

impl Firewall {
    fn apply(&self, op: &str, rule: &[String]) -> Result<()> {
        let status = Command::new("iptables")
            .args([op, "OUTPUT"])
            .args(rule)
            .status()
            .context("running iptables (package iptables)")?;
        if !status.success() {
            bail!("iptables {op} OUTPUT {}: {status}", rule.join(" "));
        }
        Ok(())
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        for rule in &self.rules {
            let _ = self.apply("-D", rule);
        }
    }
}

impl Testbed {
    /// Cuts user `uid` off every node address (TCP reset on connect), except `bastion`'s SSH port: as a machine
    /// that reaches the cluster only through a bastion host.
    pub fn firewall_except_bastion(&self, uid: u32, bastion: &Node) -> Result<Firewall> {
        let mut fw = Firewall { rules: Vec::new() };
        for n in &self.nodes {
            let mut rule: Vec<String> = ["-p", "tcp", "-d", &n.address.to_string()]
                .map(String::from)
                .to_vec();
            if n.index == bastion.index {
                rule.extend(["!".into(), "--dport".into(), n.ssh_port.to_string()]);
            }
            rule.extend(
                [
                    "-m",
                    "owner",
                    "--uid-owner",
                    &uid.to_string(),
                    "-j",
                    "REJECT",
                    "--reject-with",
                    "tcp-reset",
                ]
                .map(String::from),
            );
            fw.apply("-I", &rule)?;
            fw.rules.push(rule);
        }
        Ok(fw)
    }
}

/// Deletes every iptables rule (INPUT, OUTPUT) that names one of `addresses`: what a test killed mid-fault left.
/// Best effort: without iptables there is nothing to remove.
pub fn remove_stale_rules(addresses: &[std::net::Ipv4Addr]) {
    let Ok(out) = Command::new("iptables").arg("-S").output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(rule) = line.strip_prefix("-A ") else {
            continue;
        };
        let named = addresses
            .iter()
            .any(|a| rule.contains(&format!(" {a}/32 ")));
        if named {
            let _ = Command::new("iptables")
                .arg("-D")
                .args(rule.split_whitespace())
                .status();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules_naming(address: &str) -> usize {
        let out = Command::new("iptables")
            .arg("-S")
            .output()
            .expect("iptables -S");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(address))
            .count()
    }

    #[test]
    fn a_stale_rule_for_a_slot_address_is_removed_and_others_kept() {
        if !crate::skip::may_run("a_stale_rule_for_a_slot_address_is_removed_and_others_kept") {
            return;
        }
        let add = |rule: &str| {
            let status = Command::new("iptables")
                .args(rule.split_whitespace())
                .status()
                .expect("iptables");
            assert!(status.success(), "iptables {rule}");
        };
        let ours: std::net::Ipv4Addr = "127.0.99.9".parse().expect("address");
        let other: std::net::Ipv4Addr = "127.0.99.10".parse().expect("address");
        remove_stale_rules(&[ours, other]); // what an earlier run killed mid-test left
        add("-I INPUT -d 127.0.99.9 -j DROP");
        add(
            "-I OUTPUT -p tcp -d 127.0.99.9 -m owner --uid-owner 2999 -j REJECT --reject-with tcp-reset",
        );
        add("-I INPUT -d 127.0.99.10 -j DROP");
        assert_eq!(rules_naming("127.0.99.9/32"), 2);
        remove_stale_rules(&[ours]);
        assert_eq!(rules_naming("127.0.99.9/32"), 0);
        assert_eq!(
            rules_naming("127.0.99.10/32"),
            1,
            "another address's rule stays"
        );
        add("-D INPUT -d 127.0.99.10 -j DROP");
    }
}
