//! `testbed` CLI: bring the local RKE-style cluster up, seed it, show it, tear it down.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use testbed::harness::procs::{Manifest, alive};
use testbed::harness::users::NodeUser;
use testbed::harness::{Apiserver, Options, Testbed, seed};

#[derive(Parser)]
#[command(
    name = "testbed",
    about = "Local RKE-style HA test cluster for atrest (needs root)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum ApiserverKind {
    /// The real kube-apiserver and etcd built by scripts/build-upstream.sh, in RKE-shaped containers.
    Upstream,
    /// busybox httpd on :6443 (no API).
    Placeholder,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start sshd + dockerd + etcd + kube-apiserver per node; leaves it running.
    Up {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, value_enum, default_value_t = ApiserverKind::Upstream)]
        apiserver: ApiserverKind,
        /// Do not start etcd (placeholder only).
        #[arg(long)]
        no_etcd: bool,
        /// Also create user `atrest` (passwordless sudo, docker group) on every node; cluster.yml names it.
        #[arg(long, conflicts_with = "docker_group_user")]
        sudo_user: bool,
        /// Also create user `atrest` (docker group, no sudo: RKE's usual user) on every node; cluster.yml names it.
        #[arg(long)]
        docker_group_user: bool,
        /// Run a kms-plugin on every node at /var/run/kmsplugin/socket.sock (shared KEK file DIR/kms/kek).
        #[arg(long)]
        kms: bool,
    },
    /// Stop everything `up` recorded in DIR/testbed.json and remove DIR. Safe to repeat.
    Down {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Write Secrets/ConfigMaps through the apiserver (content derived from names), then verify them.
    Seed {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 1000)]
        secrets: usize,
        #[arg(long, default_value_t = 0)]
        configmaps: usize,
        #[arg(long, default_value_t = 2048)]
        size: usize,
    },
    /// Show the recorded daemons and whether they run.
    Status {
        #[arg(long)]
        dir: PathBuf,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Up {
            nodes,
            dir,
            apiserver,
            no_etcd,
            sudo_user,
            docker_group_user,
            kms,
        } => {
            let apiserver = match apiserver {
                ApiserverKind::Upstream => Apiserver::upstream()?,
                ApiserverKind::Placeholder => Apiserver::Placeholder,
            };
            let mut tb = Testbed::up(Options {
                nodes,
                dir: Some(dir),
                apiserver,
                etcd: !no_etcd,
                user: match (sudo_user, docker_group_user) {
                    (true, _) => NodeUser::Sudo,
                    (false, true) => NodeUser::DockerGroup,
                    (false, false) => NodeUser::Root,
                },
                kms,
                ..Options::default()
            })?;
            tb.keep_running();
            println!(
                "testbed up in {:.2} s (slot {})",
                tb.bring_up_time().as_secs_f64(),
                tb.slot()
            );
            for (step, at) in tb.bring_up_steps() {
                println!("  {:>6} ms  {step}", at.as_millis());
            }
            for n in tb.nodes() {
                println!(
                    "  {}  {}  ssh :{}  docker {}",
                    n.name,
                    n.address,
                    n.ssh_port,
                    n.docker_socket.display()
                );
            }
            println!("  cluster.yml  {}", tb.cluster_yml().display());
            println!("  kubeconfig   {}", tb.kubeconfig().display());
            println!(
                "  ssh          ssh -F {} {}",
                tb.ssh_config_path().display(),
                tb.nodes()[0].address
            );
            println!("  down         testbed down --dir {}", tb.dir().display());
        }
        Cmd::Down { dir } => {
            Testbed::down_dir(&dir)?;
            println!("testbed down: {}", dir.display());
        }
        Cmd::Seed {
            dir,
            secrets,
            configmaps,
            size,
        } => {
            let kc = dir.join("kube_config_cluster.yml");
            let spec = seed::SeedSpec {
                secrets,
                configmaps,
                size_bytes: size,
            };
            let t = std::time::Instant::now();
            let report = seed::block_on(async {
                let client = seed::client(&kc).await?;
                seed::seed(&client, spec).await?;
                let written = t.elapsed();
                let r = seed::verify(&client, spec).await?;
                println!(
                    "seeded {secrets} secrets + {configmaps} configmaps in {:.2} s; verified {} + {} in {:.2} s",
                    written.as_secs_f64(),
                    r.secrets,
                    r.configmaps,
                    (t.elapsed() - written).as_secs_f64()
                );
                Ok(r)
            })
            .with_context(|| format!("seeding the testbed in {}", dir.display()))?;
            let _ = report;
        }
        Cmd::Status { dir } => {
            let m = Manifest::load(&dir)?;
            println!(
                "slot {}  dir {}  up in {} ms",
                m.slot,
                m.dir.display(),
                m.up_ms
            );
            for p in &m.procs {
                let state = if alive(p.pid, &p.tag) {
                    "running"
                } else {
                    "gone"
                };
                println!("  node{} {:8} pid {:>7}  {state}", p.node, p.kind, p.pid);
            }
            for c in &m.containers {
                println!(
                    "  node{} container {} {}",
                    c.node,
                    c.name,
                    &c.id[..c.id.len().min(12)]
                );
            }
        }
    }
    Ok(())
}
