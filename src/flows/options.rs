//! The options the verbs run with: the global flags and the output formats. They live here, below both `cli`
//! (which parses them with clap) and the flows (which read them), so the flows never reach back up into `cli`.

use crate::state::paths::{default_kubeconfig_path, default_records_path, default_state_path};
use clap::{ArgAction, Args, ValueEnum};
use std::path::PathBuf;

/// Options every verb accepts (before or after the verb).
#[derive(Clone, Debug, Args)]
pub struct GlobalOpts {
    /// RKE cluster config to read.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "RKE_CONFIG",
        default_value = "cluster.yml"
    )]
    pub config: PathBuf,

    /// RKE state file [default: the config's name with .rkestate, beside it].
    #[arg(long, global = true, value_name = "FILE")]
    pub state: Option<PathBuf>,

    /// atrest's records file (transition in progress, archive of retired keys, snapshots)
    /// [default: the config's name with .atreststate, beside it]. Back it up with cluster.yml and the state.
    #[arg(long, global = true, value_name = "FILE")]
    pub records: Option<PathBuf>,

    /// Kubeconfig for the cluster's API [default: kube_config_<config file name>, beside the config].
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// Authenticate SSH with the keys in ssh-agent ($SSH_AUTH_SOCK), as RKE's ssh_agent_auth.
    #[arg(long, global = true)]
    pub ssh_agent_auth: bool,

    /// The ssh-agent's socket.
    #[arg(long, global = true, value_name = "PATH", env = "SSH_AUTH_SOCK")]
    pub ssh_agent_socket: Option<PathBuf>,

    /// The passphrase of encrypted SSH private keys: from the environment only (a flag would show in `ps`).
    #[arg(skip = std::env::var(crate::exec::auth::PASSPHRASE_ENV).ok().map(crate::secret::SecretString::new))]
    pub ssh_key_passphrase: Option<crate::secret::SecretString>,

    /// known_hosts file that SSH host keys are checked against [default: ~/.ssh/known_hosts].
    #[arg(long, global = true, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,

    /// Trust and record the host key of a node that is not in known_hosts yet (a changed key is still refused).
    #[arg(long, global = true)]
    pub accept_new_host_keys: bool,

    /// Do not take an etcd snapshot before changing the cluster (by default one is taken and recorded).
    #[arg(long, global = true)]
    pub no_snapshot: bool,

    /// Pin the writes in flight while rewriting stored objects (1–1024). Unset, the rewrite finds the number
    /// itself: it grows while throughput rises (up to 256) and backs off when the API servers answer 429/5xx
    /// or only get slower. Pin a low number to go easier on a busy cluster.
    #[arg(long, global = true, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub rewrite_concurrency: Option<u16>,

    /// Which API servers a rewrite writes through: every controlplane's that answers (the others through SSH
    /// tunnels), or only the one the run talks to (the kubeconfig's, or the one it fell back to), e.g. when the
    /// kubeconfig names a load balancer that spreads the requests already.
    #[arg(long, global = true, value_enum, value_name = "WHICH", default_value_t = RewriteServers::All)]
    pub rewrite_servers: RewriteServers,

    /// How long each restarted or recreated kube-apiserver may take to answer `/readyz` 200 before the node is
    /// put back as it was and the run stops (10–3600). Raise it for servers that start slowly (many CRDs, a large
    /// etcd); lower it to give up sooner on a config a server cannot load.
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = 180,
          value_parser = clap::value_parser!(u16).range(10..=3600))]
    pub ready_timeout: u16,

    /// How long to keep asking when an API server answers but is not ready (its etcd member rejoining, say),
    /// every 2 s, before going on without the API (status, verify, plan) or stopping with nothing changed (0–3600;
    /// 0 asks once). A server that does not answer at all is not waited for.
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = 60,
          value_parser = clap::value_parser!(u16).range(0..=3600))]
    pub api_wait: u16,

    /// More log output on stderr: -v for debug, -vv for trace.
    #[arg(short = 'v', long = "debug", visible_alias = "verbose", global = true, action = ArgAction::Count)]
    pub verbose: u8,

    /// Only errors on stderr.
    #[arg(short = 'q', long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Answer yes to confirmation prompts (needed when stdin is not a terminal).
    #[arg(short = 'y', long, global = true)]
    pub yes: bool,

    /// Refuse (exit 1, nothing changed) instead of warning when files holding keys could be committed to the
    /// git repository the config is in (state, records, snapshots, kubeconfig, a cluster.yml with raw keys).
    /// Meant for CI.
    #[arg(long, global = true)]
    pub strict: bool,
}

impl GlobalOpts {
    /// `--records`, or `<config stem>.atreststate` beside the config.
    pub fn records_path(&self) -> PathBuf {
        self.records
            .clone()
            .unwrap_or_else(|| default_records_path(&self.config))
    }

    /// `--state`, or RKE's default beside the config.
    pub fn state_path(&self) -> PathBuf {
        self.state
            .clone()
            .unwrap_or_else(|| default_state_path(&self.config))
    }

    /// `--kubeconfig`, or RKE's default beside the config.
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.kubeconfig
            .clone()
            .unwrap_or_else(|| default_kubeconfig_path(&self.config))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PlanFormat {
    /// Human-readable steps.
    Text,
    /// Machine-readable JSON.
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StatusFormat {
    /// Human-readable table.
    Table,
    /// Machine-readable JSON.
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum VerifyFormat {
    /// One line per resource.
    Text,
    /// Machine-readable JSON.
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RewriteServers {
    /// Every controlplane's kube-apiserver that answers.
    All,
    /// Only the API server the run talks to.
    One,
}
