//! Command-line interface (clap derive): the verbs, their flags and help, logging setup, and dispatch to
//! [`crate::flows`].

use crate::flows;
pub use crate::flows::options::{GlobalOpts, PlanFormat, StatusFormat, VerifyFormat};
use clap::{CommandFactory, Parser, Subcommand};
use std::io::Write;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "atrest",
    version,
    about = "Encryption at rest for RKE clusters: plan, apply, rotate and verify, resumably",
    long_about = "Encryption at rest for RKE clusters, as a declarative reconciler over SSH.\n\n\
        atrest reads RKE's cluster.yml (services.kube-api.secrets_encryption_config), compares it with what \
        cluster.rkestate records as deployed, and moves every controlplane to the desired EncryptionConfiguration \
        in HA-safe phases (prepare -> rotate -> reencrypt -> verify -> finish). Each step is saved in \
        atrest's records file (cluster.atreststate) before the next begins, so an interrupted run resumes where it stopped, and nothing \
        that could still be needed to read stored data is removed until etcd has been checked.",
    after_help = "Files: cluster.rkestate and kube_config_<config file name> are found beside the config file, \
        as RKE names them, and atrest's records file <config stem>.atreststate beside them; --state, --records and \
        --kubeconfig override that. Back up cluster.yml, cluster.rkestate and cluster.atreststate together."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Bring the cluster's encryption at rest to what cluster.yml asks for.
    #[command(
        long_about = "Bring the cluster's encryption at rest to what cluster.yml asks for.\n\n\
        Compares services.kube-api.secrets_encryption_config in cluster.yml with the config cluster.rkestate \
        records as deployed, plans the transition, and carries it out: takes an etcd snapshot, deploys \
        intermediate encryption configs to every controlplane and restarts kube-apiserver one node at a time, \
        rewrites the stored resources, checks in etcd that nothing still needs a key that is going away, then \
        deploys the final config. Changes: the encryption config file on every controlplane, the kube-apiserver \
        containers, the stored resources (rewritten), cluster.rkestate and atrest's records file. If a transition was interrupted, \
        `up` resumes it first."
    )]
    Up {
        /// Print the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
    },

    /// Show the steps `atrest up` would take, and change nothing.
    #[command(
        long_about = "Show the steps `atrest up` would take, and change nothing.\n\n\
        Reads cluster.yml and cluster.rkestate (and a transition in progress, if any), each controlplane's \
        deployed config and an etcd census, and prints the phases and the config each controlplane would get at \
        each step. Changes nothing on any host and writes no file; with --offline it contacts no host at all."
    )]
    Plan {
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = PlanFormat::Text)]
        output: PlanFormat,
        /// Plan from cluster.yml and cluster.rkestate alone: connect to no node and read no etcd census
        /// (per-node drift and stored data are then not taken into account; the plan says so).
        #[arg(long)]
        offline: bool,
        /// Exit 0 when nothing would change, 2 when the plan has steps, 1 on error (as terraform).
        #[arg(long)]
        detailed_exitcode: bool,
    },

    /// Key rotation, status and verification (K3s/RKE2-style `secrets-encrypt` verbs).
    Encrypt {
        #[command(subcommand)]
        command: EncryptCommand,
    },

    /// Print a shell completion script to stdout.
    #[command(long_about = "Print a shell completion script to stdout.\n\n\
        For example: `atrest completions bash > /etc/bash_completion.d/atrest`. Changes nothing.")]
    Completions {
        /// The shell to generate completions for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum EncryptCommand {
    /// Replace the active encryption key with a new one, HA-safely, in one command.
    #[command(
        long_about = "Replace the active encryption key with a new one, HA-safely, in one command.\n\n\
        Generates a new 32-byte key from the OS random source, adds it as a read-only key on every \
        controlplane, then makes it the write key everywhere, rewrites all encrypted resources, checks in etcd \
        that nothing is still encrypted with the old key, and only then removes the old key (kept in \
        the archive of atrest's records file for snapshots taken before). Changes: the encryption config on every \
        controlplane, kube-apiserver (restarted one node at a time), the stored resources, cluster.rkestate and the records file. \
        Works with the config atrest manages; a custom_config in cluster.yml is rotated by editing it and \
        running `atrest up`."
    )]
    RotateKey,

    /// Show whether encryption is on, the rotation stage, per-server config agreement and the keys.
    #[command(
        long_about = "Show whether encryption is on, the rotation stage, per-server config agreement and \
        the keys.\n\n\
        Reads cluster.rkestate and the encryption config file on every controlplane (over SSH), and prints the \
        stage (start, prepare, rotate, reencrypt_request, reencrypt_active, reencrypt_finished), whether every \
        server has the same config, and each key's provider, name and whether it is the active (write) key. \
        Key material is never printed. Changes nothing.\n\n\
        Exit status: 0 when the status was read (with --detailed-exitcode: and nothing needs attention), 1 on \
        error, 2 with --detailed-exitcode when something needs attention: a node's config differs from the \
        state (drift), a transition or rotation stage is in progress, another run holds the state lock, or \
        objects are not on their active key."
    )]
    Status {
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = StatusFormat::Table)]
        output: StatusFormat,
        /// Exit 2 when something needs attention (drift, a stage in progress, objects not on the active key).
        #[arg(long)]
        detailed_exitcode: bool,
    },

    /// Check in etcd which provider and key every stored resource is encrypted with.
    #[command(
        long_about = "Check in etcd which provider and key every stored resource is encrypted with.\n\n\
        Reads every key under /registry for the resources the encryption config covers (through the etcd client \
        certificates in cluster.rkestate) and counts them by provider and key. Fails (exit 1) if any object \
        needs a key or provider the deployed config lacks, or is stored in plain text where encryption is \
        configured. Records the census in atrest's records file; changes nothing on the cluster.\n\n\
        Exit status: 0 verified, 1 on error or (without --detailed-exitcode) when not verified, 2 with \
        --detailed-exitcode when objects are not on their active key (so 1 is then an error only)."
    )]
    Verify {
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = VerifyFormat::Text)]
        output: VerifyFormat,
        /// Exit 2 (not 1) when objects are not on their active key, so that 1 means an error.
        #[arg(long)]
        detailed_exitcode: bool,
    },

    /// Stage 1 of a stepwise rotation: add a new key as a read-only (second) key on every controlplane.
    #[command(
        long_about = "Stage 1 of a stepwise rotation: add a new key as a read-only (second) key on every \
        controlplane.\n\n\
        Every server can then read data written with the new key, but still writes with the current one. \
        Allowed from stage start or reencrypt_finished. Changes: the encryption config on every controlplane, \
        kube-apiserver (restarted one node at a time), the records file (stage -> prepare). \
        Next: `atrest encrypt rotate`."
    )]
    Prepare {
        /// Run even if the current stage does not allow it.
        #[arg(long)]
        force: bool,
    },

    /// Stage 2: make the new key the write key on every controlplane (the old key stays for reading).
    #[command(
        long_about = "Stage 2: make the new key the write key on every controlplane (the old key stays \
        for reading).\n\n\
        Allowed from stage prepare. Changes: the encryption config on every controlplane, kube-apiserver \
        (restarted one node at a time), the records file (stage -> rotate). Next: `atrest encrypt reencrypt`."
    )]
    Rotate {
        /// Run even if the current stage does not allow it.
        #[arg(long)]
        force: bool,
    },

    /// Stage 3: rewrite every stored resource with the new key, verify etcd, then remove the old key.
    #[command(
        long_about = "Stage 3: rewrite every stored resource with the new key, verify etcd, then remove \
        the old key.\n\n\
        Allowed from stage rotate. Rewrites every resource the encryption config covers through the Kubernetes \
        API (resumable: progress is saved), checks in etcd that nothing still needs the old key, then deploys \
        the config without it. Changes: the stored resources, the encryption config on every controlplane, \
        kube-apiserver, the records file (stage -> reencrypt_active -> reencrypt_finished)."
    )]
    Reencrypt {
        /// Run even if the current stage does not allow it.
        #[arg(long)]
        force: bool,
        /// Keep the old key in the config after rewriting (do not remove it), as K3s's --skip.
        #[arg(long)]
        skip: bool,
    },

    /// Prepare, rotate and reencrypt in one go (K3s's rotate-keys); the same as `atrest encrypt rotate-key`.
    #[command(
        long_about = "Prepare, rotate and reencrypt in one go (K3s's rotate-keys); the same as `atrest \
        encrypt rotate-key`.\n\n\
        Runs the three stages back to back with every check of the stepwise verbs. Changes what prepare, \
        rotate and reencrypt change."
    )]
    RotateKeys,
}

/// Sets up logging to stderr: warnings and progress by default, more with -v/-vv, errors only with --quiet.
/// `RUST_LOG` overrides the flags (e.g. `RUST_LOG=atrest=trace,russh=debug`), under the per-library ceilings
/// that keep secrets out of the log ([`crate::logging`]).
pub fn init_logging(global: &GlobalOpts) {
    use tracing_subscriber::EnvFilter;
    let level = match (global.quiet, global.verbose) {
        (true, _) => "error",
        (false, 0) => "atrest=info,warn",
        (false, 1) => "atrest=debug,info",
        (false, _) => "atrest=trace,debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    crate::logging::init(filter, global.verbose > 0);
}

/// Writes the completion script for `shell` to `out`.
pub fn write_completions(shell: clap_complete::Shell, out: &mut dyn Write) -> std::io::Result<()> {
    // Generated into memory first: clap_complete panics on a write error (e.g. a closed pipe).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "atrest", &mut script);
    match out.write_all(&script).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Parses the command line, exiting on `--help`, `--version` and usage errors. A usage error exits 2, except
/// when `--detailed-exitcode` is on the command line: 2 then means "the plan has steps", so it exits 1.
pub fn parse() -> Cli {
    match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            if e.use_stderr() && std::env::args_os().any(|a| a == "--detailed-exitcode") {
                let _ = e.print();
                std::process::exit(1);
            }
            e.exit()
        }
    }
}

/// Runs the verb the user asked for.
pub fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    let g = &cli.global;
    match &cli.command {
        Command::Up { dry_run } => flows::up(g, *dry_run),
        Command::Plan {
            output,
            offline,
            detailed_exitcode,
        } => flows::plan(
            g,
            flows::PlanOutput {
                format: *output,
                detailed_exitcode: *detailed_exitcode,
            },
            *offline,
        ),
        Command::Encrypt { command } => match command {
            EncryptCommand::RotateKey => flows::encrypt_rotate_key(g),
            EncryptCommand::Status {
                output,
                detailed_exitcode,
            } => flows::encrypt_status(g, *output, *detailed_exitcode),
            EncryptCommand::Verify {
                output,
                detailed_exitcode,
            } => flows::encrypt_verify(g, *output, *detailed_exitcode),
            EncryptCommand::Prepare { force } => flows::encrypt_prepare(g, *force),
            EncryptCommand::Rotate { force } => flows::encrypt_rotate(g, *force),
            EncryptCommand::Reencrypt { force, skip } => flows::encrypt_reencrypt(g, *force, *skip),
            EncryptCommand::RotateKeys => flows::encrypt_rotate_keys(g),
        },
        Command::Completions { shell } => {
            write_completions(*shell, &mut std::io::stdout().lock()).map_err(|e| {
                anyhow::anyhow!(e).context("cannot write the completion script to stdout")
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn default_paths_follow_the_config() {
        let cli = Cli::try_parse_from(["atrest", "--config", "/c/prod.yml", "plan"]).unwrap();
        assert_eq!(cli.global.state_path(), PathBuf::from("/c/prod.rkestate"));
        assert_eq!(
            cli.global.kubeconfig_path(),
            PathBuf::from("/c/kube_config_prod.yml")
        );
        let cli =
            Cli::try_parse_from(["atrest", "plan", "--state", "/s", "--kubeconfig", "/k"]).unwrap();
        assert_eq!(cli.global.state_path(), PathBuf::from("/s"));
        assert_eq!(cli.global.kubeconfig_path(), PathBuf::from("/k"));
    }

    #[test]
    fn quiet_and_verbose_conflict() {
        assert!(Cli::try_parse_from(["atrest", "-q", "-v", "plan"]).is_err());
        let cli =
            Cli::try_parse_from(["atrest", "-vv", "encrypt", "status", "-o", "json"]).unwrap();
        assert_eq!(cli.global.verbose, 2);
    }
}
