//! What every verb reads first: the cluster config and the state, so bad input is reported before anything
//! touches a host; and, right after the config, the check that no file holding keys can reach git.

use super::options::GlobalOpts;
use crate::config::cluster::ClusterConfig;
use crate::gitcheck::{self, Sensitive};
use crate::state::{RkeState, store};
use anyhow::{Context, bail};
use std::ffi::OsString;
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
        let config = load_cluster_config(&global.config)?;
        check_git(global, &config)?;
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

/// Files beside the config that hold keys or credentials (see [`crate::gitcheck`]).
pub fn sensitive_files(global: &GlobalOpts) -> Vec<Sensitive> {
    let state = global.state_path();
    let with_suffix = |path: &Path, suffix: &str| {
        let mut name = path.file_name().map(OsString::from).unwrap_or_default();
        name.push(suffix);
        path.with_file_name(name)
    };
    let mut files = vec![
        Sensitive::file(
            &state,
            "RKE state: encryption keys, CA and client certificates",
        ),
        Sensitive::file(
            with_suffix(&state, ".bak"),
            "previous RKE state, as secret as the state",
        ),
    ];
    // atrest's own records (the archive of retired keys), beside the config and beside the state.
    for beside in [&global.config, &state] {
        files.push(Sensitive::file(
            beside.with_extension("atreststate"),
            "atrest records: retired keys",
        ));
    }
    files.push(Sensitive::dir(
        super::snapshot_dir(&state),
        "etcd snapshots: every secret of the cluster",
    ));
    files.push(Sensitive::file(
        global.kubeconfig_path(),
        "admin kubeconfig: cluster-admin credentials",
    ));
    files
}

/// Warns (refuses with `--strict`) when files holding keys are tracked by, or not ignored in, the git work
/// tree the config is in.
fn check_git(global: &GlobalOpts, config: &ClusterConfig) -> anyhow::Result<()> {
    let dir = global.config.parent().unwrap_or(Path::new("."));
    let raw = gitcheck::cluster_has_raw_keys(config);
    let report = match gitcheck::check(dir, &global.config, raw, &sensitive_files(global)) {
        Ok(Some(r)) => r,
        Ok(None) => return Ok(()),
        Err(e) if global.strict => {
            return Err(anyhow::anyhow!(e).context("--strict: refused; nothing was done"));
        }
        Err(e) => {
            tracing::warn!("{e}");
            return Ok(());
        }
    };
    if report.is_clean() {
        return Ok(());
    }
    if global.strict {
        bail!("{}\n--strict: refused; nothing was done", report.message());
    }
    tracing::warn!("{}", report.message());
    Ok(())
}
