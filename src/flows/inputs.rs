//! What every verb reads first: the cluster config, the state and atrest's records, so bad input is reported
//! before anything touches a host; right after the config, the check that no file holding keys can reach git;
//! and, for verbs that change anything, both files locked and joined.

use super::options::GlobalOpts;
use crate::config::cluster::ClusterConfig;
use crate::gitcheck::{self, Sensitive};
use crate::state::atrest::AtrestState;
use crate::state::records::{self, RecordsFile};
use crate::state::{RkeState, StateFile, store};
use anyhow::{Context, bail};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The config, state and records a verb starts from.
#[derive(Debug)]
pub struct Inputs {
    pub config_path: PathBuf,
    pub config: ClusterConfig,
    pub state_path: PathBuf,
    /// Read without the lock; verbs that change anything take it through [`Inputs::lock`].
    pub state: RkeState,
    /// atrest's records file (`<config stem>.atreststate`, or `--records`).
    pub records_path: PathBuf,
    /// The records joined with the state (see [`records::reconcile`]); nothing is written.
    pub records: AtrestState,
    /// What joining them found worth saying (said by read-only verbs; a locked run joins again and says it).
    pub notices: Vec<String>,
}

/// Both files locked for one run, and their content joined.
pub struct Locked {
    pub state_file: StateFile,
    pub records_file: RecordsFile,
    pub state: RkeState,
    pub records: AtrestState,
}

impl Inputs {
    pub fn load(global: &GlobalOpts) -> anyhow::Result<Inputs> {
        let mut config = load_cluster_config(&global.config)?;
        // As RKE's flag: it turns agent authentication on for the whole cluster; it never turns it off.
        if global.ssh_agent_auth {
            config.ssh_agent_auth = true;
        }
        check_git(global, &config)?;
        let state_path = global.state_path();
        let mut state = store::read(&state_path)?;
        let records_path = global.records_path();
        let from_file = records::read(&records_path)?;
        let joined =
            records::reconcile(&mut state, from_file, &records_path, &super::execute::now())?;
        Ok(Inputs {
            config_path: global.config.clone(),
            config,
            state_path,
            state,
            records_path,
            records: joined.records,
            notices: joined.notices,
        })
    }

    /// Says what joining the state and the records found (for verbs that do not lock).
    pub fn say_notices(&self) {
        for n in &self.notices {
            tracing::warn!("{n}");
        }
    }

    /// Locks the state and the records file (in that order) for the whole run, reads both again and joins
    /// them; a migration or repair is saved at once, records first (so a crash between the two writes loses
    /// nothing: the next run finds the records file and drops the state's leftover key).
    pub fn lock(&self) -> anyhow::Result<Locked> {
        let state_file = StateFile::open_locked(&self.state_path)?;
        let records_file = RecordsFile::open_locked(&self.records_path)?;
        let mut state = state_file.load()?;
        let joined = records::reconcile(
            &mut state,
            records_file.load()?,
            records_file.path(),
            &super::execute::now(),
        )?;
        for n in &joined.notices {
            tracing::warn!("{n}");
        }
        if joined.records_changed {
            records_file.save(&joined.records)?;
        }
        if state.is_changed() {
            state_file.save(&state).with_context(|| {
                format!(
                    "saving {} after joining it with atrest's records",
                    self.state_path.display()
                )
            })?;
        }
        Ok(Locked {
            state_file,
            records_file,
            state,
            records: joined.records,
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
    // atrest's own records (the archive of retired keys): where this run keeps them, and beside the state.
    let records = global.records_path();
    for path in [records, state.with_extension("atreststate")] {
        if files.iter().any(|f| f.path == path) {
            continue;
        }
        files.push(Sensitive::file(path, "atrest records: retired keys"));
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
