//! Flows: one function per CLI verb, tying config, plan, exec and state together.
//!
//! Every verb first loads and checks the config and the state ([`Inputs::load`]), so bad input gets its error
//! before anything else. The verbs themselves arrive with the flows work; until then each says so and fails.

mod inputs;

pub use inputs::{Inputs, load_cluster_config};

use crate::cli::{GlobalOpts, PlanFormat, StatusFormat};
use std::process::ExitCode;

/// The tracker issue that brings the verbs (flows: prepare/rotate/reencrypt/verify/finish over SSH and etcd).
const FLOWS_ISSUE: u32 = 6;

fn not_implemented(verb: &str) -> anyhow::Error {
    anyhow::anyhow!("`atrest {verb}` is not implemented yet (arrives with issue #{FLOWS_ISSUE})")
}

/// `atrest up [--dry-run]`.
pub fn up(global: &GlobalOpts, dry_run: bool) -> anyhow::Result<ExitCode> {
    let _inputs = Inputs::load(global)?;
    Err(not_implemented(if dry_run { "up --dry-run" } else { "up" }))
}

/// `atrest plan [-o text|json]`.
pub fn plan(global: &GlobalOpts, _format: PlanFormat) -> anyhow::Result<ExitCode> {
    let _inputs = Inputs::load(global)?;
    Err(not_implemented("plan"))
}

/// `atrest encrypt rotate-key`.
pub fn encrypt_rotate_key(global: &GlobalOpts) -> anyhow::Result<ExitCode> {
    let _inputs = Inputs::load(global)?;
    Err(not_implemented("encrypt rotate-key"))
}

/// `atrest encrypt status [-o table|json]`.
pub fn encrypt_status(global: &GlobalOpts, _format: StatusFormat) -> anyhow::Result<ExitCode> {
    let _inputs = Inputs::load(global)?;
    Err(not_implemented("encrypt status"))
}

/// `atrest encrypt verify`.
pub fn encrypt_verify(global: &GlobalOpts) -> anyhow::Result<ExitCode> {
    let _inputs = Inputs::load(global)?;
    Err(not_implemented("encrypt verify"))
}

/// `atrest encrypt prepare [--force]`.
pub fn encrypt_prepare(global: &GlobalOpts, _force: bool) -> anyhow::Result<ExitCode> {
    let _inputs = Inputs::load(global)?;
    Err(not_implemented("encrypt prepare"))
}

/// `atrest encrypt rotate [--force]`.
pub fn encrypt_rotate(global: &GlobalOpts, _force: bool) -> anyhow::Result<ExitCode> {
    let _inputs = Inputs::load(global)?;
    Err(not_implemented("encrypt rotate"))
}

/// `atrest encrypt reencrypt [--force] [--skip]`.
pub fn encrypt_reencrypt(
    global: &GlobalOpts,
    _force: bool,
    _skip: bool,
) -> anyhow::Result<ExitCode> {
    let _inputs = Inputs::load(global)?;
    Err(not_implemented("encrypt reencrypt"))
}

/// `atrest encrypt rotate-keys`.
pub fn encrypt_rotate_keys(global: &GlobalOpts) -> anyhow::Result<ExitCode> {
    let _inputs = Inputs::load(global)?;
    Err(not_implemented("encrypt rotate-keys"))
}
