//! `kms-plugin`: the testbed's KMS plugin (KMS v1beta1 and v2 gRPC APIs on a unix socket, local KEKs).
//!
//! ```text
//! kms-plugin --listen unix:///run/kms/socket.sock --key-file /etc/kms/kek [--api v1|v2|both]
//! kms-plugin rotate --key-file /etc/kms/kek        # prepend a fresh KEK, SIGHUP the running plugin
//! ```
//! See docs/kms-plugin.md.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use testbed::kms::client::socket_path_from_endpoint;
use testbed::kms::keyfile;
use testbed::kms::plugin::{self, ApiSelection, PluginConfig};

#[derive(Parser, Debug)]
#[command(
    name = "kms-plugin",
    version,
    about = "Testbed KMS plugin (KMS v1beta1 + v2 over a unix socket)"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Socket to serve on: unix:///path/socket.sock (or an absolute path).
    #[arg(long)]
    listen: Option<String>,
    /// KEK file (`<id>:<base64>` per line, first is current); created with one fresh KEK if absent.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Which plugin APIs to serve.
    #[arg(long, value_enum, default_value = "both")]
    api: ApiSelection,
    /// Pid file for `rotate` to signal [default: <key-file>.pid].
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Health toggle: while this file exists the plugin reports unhealthy [default: <socket>.unhealthy].
    #[arg(long)]
    unhealthy_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Prepend a fresh KEK to the key file and tell the running plugin (SIGHUP via the pid file).
    Rotate {
        #[arg(long)]
        key_file: PathBuf,
        /// [default: <key-file>.pid]
        #[arg(long)]
        pid_file: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    if let Some(Command::Rotate { key_file, pid_file }) = cli.command {
        let id = keyfile::rotate(&key_file).context("rotating the KEK")?;
        let pid_file = pid_file.unwrap_or_else(|| keyfile::default_pid_file(&key_file));
        match plugin::signal_reload(&pid_file)? {
            Some(pid) => eprintln!("kms-plugin: new key {id}; sent SIGHUP to pid {pid}"),
            None => eprintln!(
                "kms-plugin: new key {id}; no running plugin found via {}",
                pid_file.display()
            ),
        }
        println!("{id}");
        return Ok(());
    }
    let (Some(listen), Some(key_file)) = (cli.listen, cli.key_file) else {
        bail!("--listen and --key-file are required (or use the `rotate` subcommand)");
    };
    let socket = socket_path_from_endpoint(&listen)?;
    let mut config = PluginConfig::new(socket, key_file, cli.api);
    if let Some(p) = cli.pid_file {
        config.pid_file = p;
    }
    if let Some(p) = cli.unhealthy_file {
        config.unhealthy_file = p;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(plugin::run(config))
}
