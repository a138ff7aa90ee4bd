//! `rke etcd snapshot-restore` on the testbed: the operators' guide restores an etcd snapshot taken before a
//! rotation, and the end-to-end test of that runbook needs the restore itself done as RKE does it.
//!
//! RKE stops the control plane and etcd, restores the snapshot into every member's data directory with etcd's
//! own tool (a new cluster made from the snapshot's contents, the members named and addressed as before),
//! starts etcd again, then the control plane. Here the tool is upstream's `etcdutl` at the testbed's etcd version
//! (`scripts/build-upstream.sh`), run on the host against each node's tree.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::{
    APISERVER_PORT, Apiserver, ETCD_CLUSTER_TOKEN, Testbed, etcd_initial_cluster, etcd_member_name,
    health, image, upstream,
};

impl Testbed {
    /// Restores `snapshot` (an etcd snapshot file) on every member, as `rke etcd snapshot-restore` does, and
    /// waits until etcd is healthy and every kube-apiserver answers `/readyz`. Returns how long it took.
    pub fn restore_etcd_snapshot(&self, snapshot: &Path) -> Result<Duration> {
        let Apiserver::Upstream(_) = &self.apiserver else {
            bail!("restoring a snapshot needs the real etcd and kube-apiserver");
        };
        let started = Instant::now();
        let etcdutl = upstream::etcdutl_binary()?;
        self.on_every_node_docker(&["stop", "kube-apiserver"])?;
        self.on_every_node_docker(&["stop", "etcd"])?;
        let ips: Vec<_> = self.nodes.iter().map(|n| n.address).collect();
        let cluster = etcd_initial_cluster(&ips);
        for n in &self.nodes {
            let restored = n.dir.join("etcd-restored");
            let _ = fs::remove_dir_all(&restored);
            image::run_ok(
                Command::new(&etcdutl)
                    .args(["snapshot", "restore"])
                    .arg(snapshot)
                    .arg(format!("--name={}", etcd_member_name(n.address)))
                    .arg(format!("--initial-cluster={cluster}"))
                    .arg(format!("--initial-cluster-token={ETCD_CLUSTER_TOKEN}"))
                    .arg(format!(
                        "--initial-advertise-peer-urls=https://{}:2380",
                        n.address
                    ))
                    .arg("--data-dir")
                    .arg(&restored)
                    .stdin(Stdio::null()),
                &format!("etcdutl snapshot restore for {}", n.name),
            )?;
            let member = n.prefix.join("var/lib/etcd/member");
            fs::remove_dir_all(&member)
                .with_context(|| format!("removing {}", member.display()))?;
            fs::rename(restored.join("member"), &member)
                .with_context(|| format!("moving the restored member into {}", member.display()))?;
            fs::remove_dir_all(&restored).ok();
        }
        self.on_every_node_docker(&["start", "etcd"])?;
        health::wait_for(
            "etcd cluster health after the restore",
            Duration::from_secs(60),
            Duration::from_millis(200),
            || {
                self.etcdctl()
                    .args(["endpoint", "health"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            },
        )?;
        self.on_every_node_docker(&["start", "kube-apiserver"])?;
        let probe = self.admin_probe()?;
        for n in &self.nodes {
            let addr = SocketAddr::new(n.address.into(), APISERVER_PORT);
            health::wait_for(
                &format!("kube-apiserver on {} after the restore", n.name),
                Duration::from_secs(180),
                Duration::from_millis(100),
                || {
                    probe
                        .get(addr, "/readyz")
                        .is_ok_and(|(code, _)| code == 200)
                },
            )?;
        }
        Ok(started.elapsed())
    }

    /// `docker <args>` on every node, in node order; the first failure stops.
    fn on_every_node_docker(&self, args: &[&str]) -> Result<()> {
        for n in &self.nodes {
            image::run_ok(
                self.docker(n).args(args),
                &format!("docker {} on {}", args.join(" "), n.name),
            )?;
        }
        Ok(())
    }
}
