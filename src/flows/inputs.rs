//! What every verb reads first: the cluster config and the state, so bad input is reported before anything
//! touches a host.

use crate::cli::GlobalOpts;
use crate::config::cluster::ClusterConfig;
use crate::state::{RkeState, store};
use anyhow::Context;
use std::path::{Path, PathBuf};

/// The config and state a verb starts from.
#[derive(Debug)]
pub struct Inputs {
    pub config_path: PathBuf,
    pub config: ClusterConfig,
    pub state_path: PathBuf,
    /// Read without the lock; verbs that change anything take it through [`crate::state::StateFile`].
    pub state: RkeState,
}

impl Inputs {
    pub fn load(global: &GlobalOpts) -> anyhow::Result<Inputs> {
        let mut config = load_cluster_config(&global.config)?;
        // As RKE's flag: it turns agent authentication on for the whole cluster; it never turns it off.
        if global.ssh_agent_auth {
            config.ssh_agent_auth = true;
        }
        let state_path = global.state_path();
        let state = store::read(&state_path)?;
        Ok(Inputs {
            config_path: global.config.clone(),
            config,
            state_path,
            state,
        })
    }
}

/// Reads, parses and validates cluster.yml, with errors as `file:line:column: what`.
pub fn load_cluster_config(path: &Path) -> anyhow::Result<ClusterConfig> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read cluster config {} (choose the file with --config FILE or RKE_CONFIG)",
            path.display()
        )
    })?;
    Ok(crate::config::cluster::parse(
        &text,
        &path.display().to_string(),
    )?)
}
