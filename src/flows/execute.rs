//! Carrying out a plan, step by step, with the state saved around every step so a rerun resumes.
//!
//! Before the first step of a transition its record is written (kind, from, to); before each phase the record
//! is saved; after every node of a rolling deploy and after every step the stage is saved; after a phase's last
//! step the phase joins `done`. The records go to atrest's own file (RKE's writes would drop them from
//! cluster.rkestate); RKE's `currentState.encryptionConfig` follows every completed deploy, so RKE reads what is
//! on the nodes, and the records are always saved before the state.

mod reload;

use super::interrupt::{self, Interrupted};
use super::session::Session;
use super::targets::file_bytes;
use crate::config::encryption::EncryptionConfiguration;
use crate::exec::docker::FlagChange;
use crate::exec::health::HealthProbe;
use crate::exec::restart::{
    ContainerAction, NodeChange, RolloutError, RolloutOptions, RolloutReport, RolloutTarget,
    rolling_apply, short,
};
use crate::exec::rewrite::{self, Concurrency, RewriteOptions, RewriteReport, Servers};
use crate::kill_points;
use crate::plan::stage::{Phase, Stage};
use crate::plan::units::{Unit, UnitId, units_dropped};
use crate::plan::{Action, Flag, Plan, RewriteTarget, Step, TransitionSpec, VerifyRule};
use crate::state::atrest::{
    AtrestState, CensusRecord, DeployProgress, DeployedRecord, SnapshotRecord, TransitionRecord,
};
use crate::state::records::RecordsFile;
use crate::state::{RkeState, StateFile};
use anyhow::{Context, anyhow, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use zeroize::Zeroizing;

/// How many times verify retries a targeted rewrite of leftovers before it gives up.
const VERIFY_ATTEMPTS: usize = 3;

pub struct Executor<'a> {
    pub session: &'a mut Session,
    pub file: &'a StateFile,
    /// atrest's records file (transition, archive, snapshots), saved before the state whenever both change.
    pub records_file: &'a RecordsFile,
    pub state: RkeState,
    /// Steps carried out, for the summary.
    pub rewritten: Vec<RewriteReport>,
    /// Writes in flight during a rewrite: adaptive, or pinned by `--rewrite-concurrency`.
    pub rewrite_concurrency: Concurrency,
    /// How each node's change waits for its server (`--ready-timeout`).
    pub rollout: RolloutOptions,
    /// Second (and later) census passes: leftovers a census found and rewrote again, for the summary. Without
    /// a concurrent writer there should be none: a rewrite that misses objects shows up here.
    pub census_repasses: u32,
}

/// Starts the stderr line of every second census pass (tests look for it).
pub const REPASS: &str = "census needed another pass";

/// Now, RFC 3339 UTC.
pub fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// RKE's view and atrest's record of what was deployed before a deploy recorded its config ahead.
struct RecordedBefore {
    rke: crate::state::rkestate::EncryptionView,
    deployed: Option<DeployedRecord>,
}

/// Progress goes to stderr so stdout stays for plans and reports.
macro_rules! say {
    ($($arg:tt)*) => { eprintln!($($arg)*) };
}
pub(crate) use say;

impl<'a> Executor<'a> {
    fn atrest(&self) -> anyhow::Result<AtrestState> {
        Ok(self.session.records.clone())
    }

    /// Saves the records, then the state if a setter changed it (the records first: they must never be older
    /// than what the state says).
    fn save_atrest(&mut self, atrest: &AtrestState) -> anyhow::Result<()> {
        self.session.records = atrest.clone();
        self.records_file.save(atrest).with_context(|| {
            format!("saving progress to {}", self.records_file.path().display())
        })?;
        self.save_state()
    }

    fn save_state(&mut self) -> anyhow::Result<()> {
        if self.state.is_changed() {
            self.file
                .save(&self.state)
                .with_context(|| format!("saving {}", self.file.path().display()))?;
        }
        Ok(())
    }

    /// RKE's view of encryption in both states, as `rke up` would leave it with `config` on every node:
    /// `encryptionConfig` and `rkeConfig…secretsEncryptionConfig` in current AND desired. Every deployed config
    /// reads every stored object (the planner's invariant), so desiredState, from which an older RKE deploys,
    /// never names one that cannot.
    fn set_rke_view(
        &mut self,
        config: Option<&EncryptionConfiguration>,
        yaml: Option<&str>,
    ) -> anyhow::Result<()> {
        let desired = crate::config::desired(&self.session.cluster)?;
        let (enabled, custom) = super::targets::rke_view(&desired, config);
        self.state.set_current_encryption_config(yaml);
        self.state.set_desired_encryption_config(yaml);
        self.state
            .set_rke_secrets_encryption(enabled, custom.as_ref());
        Ok(())
    }

    /// The text RKE would keep in its state for `config` with this cluster.yml ([`super::targets::state_yaml`]).
    fn state_text(
        &self,
        config: Option<&EncryptionConfiguration>,
    ) -> anyhow::Result<Option<String>> {
        let desired = crate::config::desired(&self.session.cluster)?;
        Ok(super::targets::state_yaml(&desired, config))
    }

    /// Records `config` as deployed on every controlplane: in the records (what atrest last wrote) and in
    /// RKE's `currentState`, records first.
    pub(super) fn set_deployed(
        &mut self,
        config: Option<&EncryptionConfiguration>,
    ) -> anyhow::Result<()> {
        let yaml = self.state_text(config)?;
        self.set_rke_view(config, yaml.as_deref())?;
        let mut atrest = self.atrest()?;
        atrest.deployed = Some(DeployedRecord {
            config: yaml.map(crate::secret::SecretString::new),
            recorded_at: now(),
        });
        self.save_atrest(&atrest)
    }

    /// Before the first node of a deploy changes: a config that reads everything the deployed one reads is
    /// recorded as deployed at once, not only once every node has it. RKE's state then never names a config
    /// that cannot read what a changed node writes, even when atrest stops between a node's change and its
    /// record; `rke up` starts a new controlplane with the state's config (the model check found this). A
    /// config that drops a key (finish) is still recorded after: until then the state keeps the wider one.
    /// Returns what was recorded before, when it recorded this one ([`Executor::record_back`] puts it back).
    fn record_ahead(
        &mut self,
        config: Option<&EncryptionConfiguration>,
    ) -> anyhow::Result<Option<RecordedBefore>> {
        let deployed = super::targets::deployed(&self.state)?;
        let config = config.cloned();
        if deployed == config || !crate::plan::reads_all(&config, &deployed) {
            return Ok(None);
        }
        let before = RecordedBefore {
            rke: self.state.encryption_view(),
            deployed: self.session.records.deployed.clone(),
        };
        self.set_deployed(config.as_ref())?;
        Ok(Some(before))
    }

    /// Puts back, verbatim, what [`Executor::record_ahead`] replaced.
    fn record_back(&mut self, before: RecordedBefore) -> anyhow::Result<()> {
        self.state.restore_encryption_view(&before.rke);
        let mut atrest = self.atrest()?;
        atrest.deployed = before.deployed;
        self.save_atrest(&atrest)
    }

    /// Drops the recorded transition the plan abandons (it changed nothing; see `Plan::abandons`).
    fn drop_record(&mut self, kind: &str) -> anyhow::Result<()> {
        let mut atrest = self.atrest()?;
        if atrest.transition.take().is_some() {
            self.save_atrest(&atrest)?;
            say!("dropped the recorded {kind} transition: it had changed nothing");
        }
        Ok(())
    }

    fn update_record(&mut self, f: impl FnOnce(&mut TransitionRecord)) -> anyhow::Result<()> {
        let mut atrest = self.atrest()?;
        let record = atrest
            .transition
            .as_mut()
            .ok_or_else(|| anyhow!("no transition is recorded in the state"))?;
        f(record);
        record.updated_at = now();
        self.save_atrest(&atrest)
    }

    /// Brings RKE's in-cluster copy of the state (`full-cluster-state` in kube-system) in step with the file, so
    /// `rke util get-state-file` restores what is deployed. A failure is a warning: the file is the record.
    pub async fn sync_in_cluster_state(&mut self) {
        let result = async {
            let bytes = self.file_bytes()?;
            let kube = self.session.kube().await?.clone();
            Ok::<_, anyhow::Error>(crate::exec::rke_state::update(&kube, &bytes).await?)
        }
        .await;
        match result {
            Ok(crate::exec::rke_state::Updated::Secret) => {
                say!("updated RKE's copy of the state (Secret kube-system/full-cluster-state)")
            }
            Ok(crate::exec::rke_state::Updated::ConfigMap) => {
                say!("updated RKE's copy of the state (ConfigMap kube-system/full-cluster-state)")
            }
            Ok(crate::exec::rke_state::Updated::None) => {}
            Err(e) => tracing::warn!(
                "could not update RKE's copy of the state in kube-system/full-cluster-state: {e:#}; the next \
                 `rke up` writes it again (do not use `rke util get-state-file` before that)"
            ),
        }
    }

    fn file_bytes(&self) -> anyhow::Result<Zeroizing<Vec<u8>>> {
        Ok(self.state.to_bytes()?)
    }

    /// Runs every step of `plan`.
    pub async fn run(&mut self, plan: &Plan) -> anyhow::Result<()> {
        if let Some(kind) = &plan.abandons {
            self.drop_record(kind)?;
        }
        let groups = phase_groups(plan).len();
        let mut started: Option<usize> = None;
        let mut group_index = 0usize;
        let mut deployed: Option<EncryptionConfiguration> = plan.from.clone();
        for (i, step) in plan.steps.iter().enumerate() {
            let spec = &plan.transitions[step.transition];
            self.may_go_on(i, plan)?;
            if started != Some(step.transition) {
                started = Some(step.transition);
                deployed = spec.from.clone();
                self.begin_transition(plan, step.transition)?;
            }
            let same_phase =
                |other: &Step| (other.transition, other.phase) == (step.transition, step.phase);
            if i == 0 || !same_phase(&plan.steps[i - 1]) {
                group_index += 1;
                say!(
                    "[{group_index}/{groups}] {} ({}{})",
                    step.phase,
                    spec.kind,
                    spec.resumed_at
                        .map(|s| format!(", resumed at stage {s}"))
                        .unwrap_or_default()
                );
                // Saved before the phase starts, so the state shows the run is under way.
                self.update_record(|_| {})?;
            }
            let label = format!("[{group_index}/{groups}] {}", step.phase);
            if self.act(&label, step, spec, &mut deployed).await? == Recorded::Complete {
                kill_points::here(&step_kill_point(step));
                continue;
            }
            let last_of_phase = plan.steps.get(i + 1).is_none_or(|next| !same_phase(next));
            let (stage, phase) = (step.stage, step.phase);
            self.update_record(|r| {
                r.stage = stage;
                r.deploying = None;
                if last_of_phase && !r.done.contains(&phase) {
                    r.done.push(phase);
                }
            })?;
            kill_points::here(&step_kill_point(step));
        }
        Ok(())
    }

    /// Between steps the record is saved and consistent: the safe point to honour a Ctrl-C, and to stop when the
    /// cluster lock may have passed to another run.
    fn may_go_on(&self, i: usize, plan: &Plan) -> anyhow::Result<()> {
        let step = &plan.steps[i];
        if interrupt::requested() {
            return Err(Interrupted {
                at: format!(
                    "before step {} of {} ({})",
                    i + 1,
                    plan.steps.len(),
                    step.phase
                ),
            }
            .into());
        }
        if self.session.cluster_lock_lost() {
            bail!(
                "stopped before step {} of {}: the cluster lock's lease could not be renewed for {} s (etcd \
                 unreachable), so another run may hold the lock now; the progress is saved, rerun once etcd \
                 answers",
                i + 1,
                plan.steps.len(),
                crate::exec::cluster_lock::TTL_SECONDS
            );
        }
        Ok(())
    }

    /// Carries out one step's action; `deployed` follows the config every node runs.
    async fn act(
        &mut self,
        label: &str,
        step: &Step,
        spec: &TransitionSpec,
        deployed: &mut Option<EncryptionConfiguration>,
    ) -> anyhow::Result<Recorded> {
        match &step.action {
            Action::Snapshot => self.snapshot(label, spec.kind.as_str(), deployed).await?,
            Action::Deploy {
                config,
                flag,
                nodes,
                reload,
            } => {
                self.deploy(label, step.phase, config.as_ref(), *flag, nodes, reload)
                    .await?;
                deployed.clone_from(config);
            }
            Action::Rewrite {
                resources,
                targeted,
            } => self.rewrite(label, resources, *targeted).await?,
            Action::Verify { rules } => self.verify(label, rules).await?,
            Action::Archive { units } => self.archive(label, units)?,
            Action::PersistStage { complete: true } => {
                self.complete(step.stage, spec.to.as_ref())?;
                return Ok(Recorded::Complete);
            }
            Action::PersistStage { complete: false } => {}
        }
        Ok(Recorded::StepToRecord)
    }

    /// Writes the record of a new transition (a resumed one is already there).
    fn begin_transition(&mut self, plan: &Plan, index: usize) -> anyhow::Result<()> {
        let spec = &plan.transitions[index];
        let mut atrest = self.atrest()?;
        if spec.resumed_at.is_some() {
            if atrest.transition.is_none() {
                bail!("the plan resumes a transition the state does not record");
            }
            return Ok(());
        }
        let started_at = now();
        let suffix: u32 = rand::random::<u32>() & 0xffff;
        atrest.transition = Some(TransitionRecord {
            id: format!("{started_at}-{suffix:04x}"),
            kind: spec.kind.as_str().to_string(),
            from: self.state_text(spec.from.as_ref())?,
            to: self.state_text(spec.to.as_ref())?,
            stage: Stage::Start,
            done: Vec::new(),
            started_at: started_at.clone(),
            updated_at: started_at,
            deploying: None,
        });
        // RKE's desiredState is left alone: it names the deployed config until a deploy changes that (a
        // transition's target may not read what is stored yet).
        self.save_atrest(&atrest)?;
        say!("recorded transition {} ({})", index + 1, spec.kind);
        Ok(())
    }

    /// The transition is over: drop the record (stage start) or keep it at `reencrypt_finished` (stepwise).
    fn complete(
        &mut self,
        stage: Stage,
        to: Option<&EncryptionConfiguration>,
    ) -> anyhow::Result<()> {
        let yaml = self.state_text(to)?;
        self.set_rke_view(to, yaml.as_deref())?;
        let mut atrest = self.atrest()?;
        atrest.deployed = Some(DeployedRecord {
            config: yaml.map(crate::secret::SecretString::new),
            recorded_at: now(),
        });
        if stage == Stage::Start {
            atrest.transition = None;
        } else if let Some(r) = atrest.transition.as_mut() {
            r.stage = stage;
            for p in [Phase::Reencrypt, Phase::Verify, Phase::Finish] {
                if !r.done.contains(&p) {
                    r.done.push(p);
                }
            }
            r.updated_at = now();
        }
        self.save_atrest(&atrest)?;
        say!("transition complete (stage {stage})");
        Ok(())
    }

    async fn snapshot(
        &mut self,
        label: &str,
        kind: &str,
        deployed: &Option<EncryptionConfiguration>,
    ) -> anyhow::Result<()> {
        let dir = snapshot_dir(self.file.path());
        create_private_dir(&dir)?;
        let stamp = now().replace(':', "");
        let name = format!("atrest-{stamp}-{kind}");
        let path = dir.join(format!("{name}.db"));
        let started = Instant::now();
        let state = self.state.clone();
        let etcd = self.session.etcd(&state).await?;
        let node = etcd.endpoints().to_string();
        let info = etcd
            .snapshot(&path)
            .await
            .with_context(|| format!("taking an etcd snapshot into {}", path.display()))?;
        say!(
            "{label}: etcd snapshot {} ({} bytes, sha256 {}) in {:.1} s",
            path.display(),
            info.size,
            &info.sha256[..16],
            started.elapsed().as_secs_f64()
        );
        let mut atrest = self.atrest()?;
        atrest.snapshots.push(SnapshotRecord {
            name,
            node: self
                .session
                .cluster
                .etcd_nodes()
                .first()
                .map_or(node, |n| n.address.clone()),
            path: path.display().to_string(),
            taken_at: now(),
            config_sha256: super::targets::deployed_hash(deployed.as_ref()),
        });
        self.save_atrest(&atrest)
    }

    async fn deploy(
        &mut self,
        label: &str,
        phase: Phase,
        config: Option<&EncryptionConfiguration>,
        flag: Flag,
        nodes: &[String],
        reload: &[String],
    ) -> anyhow::Result<()> {
        let all_targets = self.rollout_targets(nodes).await?;
        self.guard_node_files(label, &all_targets, config).await?;
        let recorded_before = self.record_ahead(config)?;
        let change = self.node_change(config, flag);
        let config_sha256 = super::targets::deployed_hash(config);
        // Servers that reload by themselves get the file first; those that cannot say they did are restarted.
        let mut fallback = Vec::new();
        if let (false, Some(bytes), Flag::Keep) = (reload.is_empty(), &change.file, flag) {
            let reloading: Vec<(String, RolloutTarget)> = all_targets
                .iter()
                .filter(|(n, _)| reload.contains(n))
                .cloned()
                .collect();
            fallback = self
                .reload_nodes(label, phase, &reloading, bytes, &config_sha256)
                .await?;
        }
        let (names, targets): (Vec<String>, Vec<RolloutTarget>) = all_targets
            .into_iter()
            .filter(|(n, _)| !reload.contains(n) || fallback.contains(n))
            .unzip();
        if targets.is_empty() {
            return self.set_deployed(config);
        }
        let what = match config {
            Some(c) => format!("config with write unit {}", write_unit(c)),
            None => "no config".to_string(),
        };
        say!(
            "{label}: deploying {what} to {} node(s), one at a time",
            names.len()
        );
        let restart = Restart {
            label,
            phase,
            names: &names,
            targets: &targets,
            change: &change,
            config_sha256: &config_sha256,
        };
        let (result, nodes_done) = self.restart_one_at_a_time(&restart).await;
        // Stopped before any node of this deploy changed (none reloads it either), each on its previous config
        // for certain (a rollback, say): RKE's state names what they run again, so an unchanged transition can
        // still be dropped.
        if let (Err(e), Some(before)) = (&result, recorded_before)
            && reload.is_empty()
            && e.changed().is_empty()
            && e.failed_node_unchanged()
        {
            self.record_back(before)?;
        }
        if matches!(
            &result,
            Err(RolloutError::HookFailed { error, .. }) if error == INTERRUPTED_BETWEEN_NODES
        ) {
            return Err(Interrupted {
                at: format!(
                    "during the rolling restart, after {nodes_done} of {} node(s)",
                    targets.len()
                ),
            }
            .into());
        }
        result?;
        // Every node now has `config`: that is what RKE should see as deployed.
        self.set_deployed(config)
    }

    /// Restarts (or recreates) `restart`'s nodes one at a time, recording each node as it comes back ready so a
    /// rerun need not restart it again, and noting the file each changed node now holds. Returns the rollout's
    /// result and how many nodes it finished.
    async fn restart_one_at_a_time(
        &mut self,
        restart: &Restart<'_>,
    ) -> (Result<RolloutReport, RolloutError>, usize) {
        let Restart {
            label,
            phase,
            names,
            targets,
            change,
            config_sha256,
        } = *restart;
        let records_file = self.records_file;
        let mut records = self.session.records.clone();
        let mut clock = Instant::now();
        let mut nodes_done = 0usize;
        let result = rolling_apply(targets, change, &self.rollout, |outcome| {
            nodes_done += 1;
            let action = match outcome.action {
                ContainerAction::Restarted => "restarted",
                ContainerAction::Recreated => "recreated",
            };
            say!(
                "{label}: {} {action}, ready in {:.1} s",
                outcome.node,
                clock.elapsed().as_secs_f64()
            );
            clock = Instant::now();
            // Progress after each node: a rerun need not restart the nodes already done.
            if let Some(name) = names.get(nodes_done - 1) {
                record_node_deployed(&mut records, phase, config_sha256, name);
            }
            records_file.save(&records).map_err(|e| e.to_string())?;
            kill_points::here(&format!("deploy-node:{phase}"));
            // Ctrl-C: stop between nodes; the record says which nodes are done, so a rerun continues with the rest.
            if interrupt::requested() && nodes_done < targets.len() {
                return Err(INTERRUPTED_BETWEEN_NODES.to_string());
            }
            Ok(())
        })
        .await;
        self.session.records = records;
        // The nodes changed now hold the new file: what a later deploy of this run expects to find there.
        let changed = match &result {
            Ok(report) => report.changed.len(),
            Err(e) => e.changed().len(),
        };
        for name in &names[..changed.min(names.len())] {
            self.session
                .files_seen
                .insert(name.clone(), config_sha256_of(change));
        }
        (result, nodes_done)
    }

    /// Each node's rollout target (by name): its host, config path, health probe, the file this run last saw there,
    /// and whether its container was put back after an interrupted recreate.
    async fn rollout_targets(
        &self,
        nodes: &[String],
    ) -> anyhow::Result<Vec<(String, RolloutTarget)>> {
        let mut targets = Vec::new();
        for name in nodes {
            let host = self
                .session
                .hosts
                .iter()
                .find(|h| super::session::node_name(h.node()) == *name)
                .ok_or_else(|| anyhow!("node {name} is not among the connected controlplanes"))?
                .clone();
            let kubernetes_dir = self.session.kubernetes_dir(&host);
            let config_path = self.session.config_path(&host)?;
            let probe = HealthProbe::from_node_certs(&host, &kubernetes_dir).await?;
            targets.push((
                name.clone(),
                RolloutTarget {
                    host,
                    config_path,
                    probe,
                    expected_sha256: self.session.files_seen.get(name).cloned(),
                    resumes_interrupted: self.session.was_put_back(name),
                },
            ));
        }
        Ok(targets)
    }

    /// What a deploy of `config` does on each node: the file, the flag, the binds and the reload flag.
    fn node_change(&self, config: Option<&EncryptionConfiguration>, flag: Flag) -> NodeChange {
        let cluster = &self.session.cluster;
        NodeChange {
            file: config.map(|c| Zeroizing::new(file_bytes(c).as_bytes().to_vec())),
            flag: match flag {
                // cluster.yml pins the flag in extra_args: RKE keeps it on the command line whatever `enabled`
                // says, so atrest leaves it as RKE builds it.
                _ if cluster.pinned_encryption_config().is_some() => FlagChange::Keep,
                Flag::Keep => FlagChange::Keep,
                Flag::Add => FlagChange::Add,
                Flag::Remove => FlagChange::Remove,
            },
            // cluster.yml's kube-api binds (e.g. a KMS plugin socket dir): the container is recreated to get them.
            extra_binds: super::kms::apiserver_extra_binds(self.session),
            // The reload flag follows cluster.yml as `rke up` would put it (never added unasked), and goes with
            // the config flag (kube-apiserver refuses it alone).
            reload: match flag {
                Flag::Remove => Some(false),
                Flag::Keep | Flag::Add if cluster.reload_wanted() => Some(true),
                Flag::Keep | Flag::Add => None,
            },
        }
    }

    /// Before a deploy touches any node: every node's file must still be what this run saw (else another run
    /// or tool is writing to the cluster: stop with nothing written), and the keys each file would lose are
    /// archived first, so that replacing a drifted file never forgets a key its server may have written with.
    async fn guard_node_files(
        &mut self,
        label: &str,
        targets: &[(String, RolloutTarget)],
        next: Option<&EncryptionConfiguration>,
    ) -> anyhow::Result<()> {
        use crate::exec::files;
        let mut dropped: Vec<Unit> = Vec::new();
        for (name, target) in targets {
            let current = files::read_file(&target.host, &target.config_path).await?;
            self.check_unchanged(name, current.as_deref())?;
            let Some(previous) = current.as_deref().and_then(|b| parse_node_file(name, b)) else {
                continue;
            };
            for unit in units_dropped(&previous, next) {
                if !dropped.contains(&unit) {
                    dropped.push(unit);
                }
            }
        }
        if dropped.is_empty() {
            return Ok(());
        }
        self.archive(label, &dropped)
    }

    /// `current` (a node's file now) must be what this run read there or last wrote; else another run or tool
    /// wrote it, and nothing more is written to the cluster.
    fn check_unchanged(&self, name: &str, current: Option<&Vec<u8>>) -> anyhow::Result<()> {
        let found = current.map(|b| crate::exec::files::sha256_hex(b));
        match self.session.files_seen.get(name) {
            Some(seen) if seen != &found => bail!(
                "{name}: its encryption config changed since this run read it (expected {}, found {}): another \
                 run or tool wrote it. Nothing more was written; stopped. Rerun to plan from what the nodes hold \
                 now",
                short(seen),
                short(&found)
            ),
            _ => Ok(()),
        }
    }

    /// Records that `name` runs the deploy's config (a rerun leaves it out) and saves the records.
    fn note_node_done(
        &mut self,
        phase: Phase,
        config_sha256: &Option<String>,
        name: &str,
    ) -> anyhow::Result<()> {
        let mut atrest = self.atrest()?;
        record_node_deployed(&mut atrest, phase, config_sha256, name);
        self.session.records = atrest;
        self.records_file
            .save(&self.session.records)
            .with_context(|| format!("saving progress to {}", self.records_file.path().display()))
    }

    async fn rewrite(
        &mut self,
        label: &str,
        resources: &[RewriteTarget],
        targeted: bool,
    ) -> anyhow::Result<()> {
        for rt in resources {
            say!("{label}: rewriting {} → {}", rt.resource, rt.write);
            let report = self.rewrite_one(&rt.resource, &rt.write, targeted).await?;
            if let Some(report) = report {
                say!(
                    "{label}: {} → {}: {} objects ({} rewritten, {} already on target, {} gone, {} newer) in {:.1} s, {:.0} objects/s",
                    rt.resource,
                    rt.write,
                    report.processed(),
                    report.rewritten,
                    report.unchanged,
                    report.gone,
                    report.skipped_newer,
                    report.elapsed.as_secs_f64(),
                    report.objects_per_second()
                );
                say!(
                    "{label}: {} → {}: {}",
                    rt.resource,
                    rt.write,
                    spread(&report)
                );
                check_report(&rt.resource, &report)?;
                self.rewritten.push(report);
            } else {
                say!(
                    "{label}: {} → {}: nothing to rewrite",
                    rt.resource,
                    rt.write
                );
            }
        }
        Ok(())
    }

    /// Rewrites the objects of one resource string; targeted: only those etcd shows off `write`. When the API
    /// server stops answering mid-way, goes on through another controlplane's (targeted: what is done stays done).
    async fn rewrite_one(
        &mut self,
        resource: &str,
        write: &UnitId,
        targeted: bool,
    ) -> anyhow::Result<Option<RewriteReport>> {
        let mut watched = self.rewrite_once(resource, write, targeted).await?;
        let mut failovers = 0;
        while watched.as_ref().is_some_and(|w| w.server_lost)
            && failovers < self.session.hosts.len()
        {
            failovers += 1;
            self.session.forget_api();
            say!(
                "rewriting {resource}: the API server stopped answering; going on through another controlplane's \
                 server (objects already rewritten are left as they are)"
            );
            watched = self.rewrite_once(resource, write, true).await?;
        }
        if watched.as_ref().is_some_and(|w| w.server_lost) {
            bail!(
                "rewriting {resource}: the API servers stopped answering ({} tried). Nothing was removed; rerun \
                 `atrest up` to resume once one answers",
                failovers + 1
            );
        }
        Ok(watched.map(|w| w.report))
    }

    async fn rewrite_once(
        &mut self,
        resource: &str,
        write: &UnitId,
        targeted: bool,
    ) -> anyhow::Result<Option<Watched>> {
        let resources = vec![resource.to_string()];
        if targeted {
            let state = self.state.clone();
            let (targets, census) = self
                .session
                .census(&state, &resources, Some(&write.label()))
                .await?;
            if targets.is_empty() {
                return Ok(None);
            }
            let truncated = census.resources.values().any(|r| r.off_target_truncated());
            if !truncated {
                let keys = census.off_target_keys();
                if keys.is_empty() {
                    return Ok(None);
                }
                let total = census.resources.values().map(|r| r.total).sum();
                return self.rewrite_keys(targets, keys, total).await.map(Some);
            }
            return self.rewrite_all(targets).await.map(Some);
        }
        let targets = self.session.resolve(&resources).await?;
        if targets.is_empty() {
            return Ok(None);
        }
        self.rewrite_all(targets).await.map(Some)
    }

    /// The objects stored at `keys` (a census found them off the write key, `total` objects counted), through
    /// every API server that answers: found by listing when many are stale, else read one by one.
    async fn rewrite_keys(
        &mut self,
        targets: Vec<rewrite::Target>,
        keys: Vec<String>,
        total: u64,
    ) -> anyhow::Result<Watched> {
        let servers = self.session.api_servers().await?;
        let etcd_prefix = self.session.etcd_prefix();
        let lookup = rewrite::Lookup::for_census(keys.len() as u64, total);
        tracing::info!(stale = keys.len(), total, ?lookup, "targeted rewrite");
        Ok(interruptible(
            self.rewrite_concurrency,
            servers.clone(),
            |options| async move {
                rewrite::rewrite_keys_through(
                    &servers,
                    &targets,
                    &etcd_prefix,
                    &keys,
                    lookup,
                    &options,
                )
                .await
            },
        )
        .await)
    }

    /// Every object of `targets`, through every API server that answers.
    async fn rewrite_all(&mut self, targets: Vec<rewrite::Target>) -> anyhow::Result<Watched> {
        let servers = self.session.api_servers().await?;
        Ok(interruptible(
            self.rewrite_concurrency,
            servers.clone(),
            |options| async move { rewrite::rewrite_through(&servers, &targets, &options).await },
        )
        .await)
    }

    /// Census; anything on a unit its rule does not allow is rewritten (targeted) and counted again.
    async fn verify(&mut self, label: &str, rules: &[VerifyRule]) -> anyhow::Result<()> {
        for attempt in 1..=VERIFY_ATTEMPTS {
            let started = Instant::now();
            let mut problems = Vec::new();
            let mut counts: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
            let mut leftovers: Vec<(String, UnitId)> = Vec::new();
            let mut total = 0u64;
            for rule in rules {
                let state = self.state.clone();
                let (_, census) = self
                    .session
                    .census(
                        &state,
                        std::slice::from_ref(&rule.resource),
                        Some(&rule.write.label()),
                    )
                    .await?;
                for (resource, rc) in &census.resources {
                    total += rc.total;
                    counts.insert(resource.clone(), rc.by_label.clone());
                    for m in rule.misplaced(&rc.by_label) {
                        let why = if m.unreadable_after {
                            "going away"
                        } else {
                            "not the write key"
                        };
                        problems.push(format!(
                            "{resource}: {} object(s) on {} ({why})",
                            m.count, m.label
                        ));
                        leftovers.push((rule.resource.clone(), rule.write.clone()));
                    }
                }
            }
            let repasses = u32::try_from(attempt - 1).unwrap_or(u32::MAX);
            self.record_census(counts, repasses)?;
            if problems.is_empty() {
                let passes = if attempt > 1 {
                    format!(" (after {attempt} passes)")
                } else {
                    String::new()
                };
                say!(
                    "{label}: census of {total} objects in {:.1} s: every object is on its write key{passes}",
                    started.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            if attempt == VERIFY_ATTEMPTS {
                bail!(
                    "verification failed after {attempt} attempts; stored objects are not on their write key: {}. \
                     Nothing was removed; rerun `atrest up` to try again",
                    problems.join("; ")
                );
            }
            self.census_repasses += 1;
            say!(
                "{label}: {REPASS} (pass {}): the census found leftovers ({}); rewriting them and counting again \
                 (the rewrite missed them, or something wrote with an old provider/key meanwhile)",
                attempt + 1,
                problems.join("; ")
            );
            leftovers.dedup();
            for (resource, write) in leftovers {
                if let Some(report) = self.rewrite_one(&resource, &write, true).await? {
                    check_report(&resource, &report)?;
                }
            }
        }
        Ok(())
    }

    fn record_census(
        &mut self,
        counts: BTreeMap<String, BTreeMap<String, u64>>,
        repasses: u32,
    ) -> anyhow::Result<()> {
        let mut atrest = self.atrest()?;
        atrest.last_census = Some(CensusRecord {
            taken_at: now(),
            counts,
            repasses,
        });
        self.save_atrest(&atrest)
    }

    fn archive(&mut self, label: &str, units: &[Unit]) -> anyhow::Result<()> {
        let mut atrest = self.atrest()?;
        let snapshots = atrest.snapshots.len();
        let retired_at = now();
        let mut names = Vec::new();
        for unit in units {
            let (provider, name, secret) = match unit {
                Unit::Identity => continue,
                Unit::Key {
                    provider,
                    name,
                    secret,
                } => (
                    provider.as_str().to_string(),
                    name.clone(),
                    Some(secret.clone()),
                ),
                Unit::Kms(k) => ("kms".to_string(), k.name.clone(), None),
            };
            let shown = format!("{provider}:{name}");
            if atrest.archive_key(provider, name, secret, &retired_at) {
                names.push(shown);
            }
        }
        self.save_atrest(&atrest)?;
        if !names.is_empty() {
            say!(
                "{label}: archived {} in {} (needed to restore the {} snapshot(s) taken before)",
                names.join(", "),
                self.records_file.path().display(),
                snapshots
            );
        }
        Ok(())
    }
}

/// What a step's action left to record: the transition completed (its record is gone), or the step to note.
#[derive(Debug, PartialEq)]
enum Recorded {
    Complete,
    StepToRecord,
}

/// The nodes one deploy restarts, by name and as rollout targets (in the same order), and what it puts there.
#[derive(Clone, Copy)]
struct Restart<'a> {
    label: &'a str,
    phase: Phase,
    names: &'a [String],
    targets: &'a [RolloutTarget],
    change: &'a NodeChange,
    config_sha256: &'a Option<String>,
}

/// The sha256 of the file a change puts on a node (`None`: it removes the file).
fn config_sha256_of(change: &NodeChange) -> Option<String> {
    change
        .file
        .as_deref()
        .map(|b| crate::exec::files::sha256_hex(b))
}

/// A node's current file as a config, to archive its keys before it is replaced; `None` (with a warning that
/// never quotes the file) when it is not one.
fn parse_node_file(name: &str, bytes: &[u8]) -> Option<EncryptionConfiguration> {
    let parsed = std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| crate::config::encryption::parse(text, name).ok());
    if parsed.is_none() {
        tracing::warn!(
            "{name}: its current encryption config is not a readable EncryptionConfiguration; no key can be \
             archived from it before it is replaced"
        );
    }
    parsed
}

/// The (transition, phase) groups of a plan, in order.
/// The kill point at the end of `step`, once its progress is saved: `step:<phase>:<action>` (tests only:
/// [`kill_points`]).
pub fn step_kill_point(step: &crate::plan::Step) -> String {
    format!("step:{}:{}", step.phase, step.action.name())
}

pub fn phase_groups(plan: &Plan) -> Vec<(usize, Phase)> {
    let mut groups: Vec<(usize, Phase)> = Vec::new();
    for s in &plan.steps {
        if groups.last() != Some(&(s.transition, s.phase)) {
            groups.push((s.transition, s.phase));
        }
    }
    groups
}

fn check_report(resource: &str, report: &RewriteReport) -> anyhow::Result<()> {
    if report.is_success() {
        return Ok(());
    }
    if report.interrupted && report.errors_total == 0 && report.failed_resources.is_empty() {
        return Err(Interrupted {
            at: format!(
                "during the rewrite of {resource} ({} objects done)",
                report.processed()
            ),
        }
        .into());
    }
    let mut detail: Vec<String> = report
        .failed_resources
        .iter()
        .chain(report.errors.iter())
        .take(5)
        .map(|e| format!("{} {}: {}", e.resource, e.object, e.error))
        .collect();
    if report.interrupted {
        detail.push("interrupted".into());
    }
    bail!(
        "rewriting {resource} did not complete ({} error(s)): {}. Nothing was removed; rerun `atrest up` to resume",
        report.errors_total + report.failed_resources.len() as u64,
        detail.join("; ")
    )
}

/// The unit that writes `secrets` (or the first rule), for messages.
pub fn write_unit(config: &EncryptionConfiguration) -> String {
    let rules = crate::plan::units::Rules::from_config(config);
    rules
        .0
        .values()
        .next()
        .and_then(|u| u.first())
        .map_or_else(|| "identity".to_string(), |u| u.id().label())
}

/// `<dir>/<state stem>.snapshots`, beside the state file.
pub fn snapshot_dir(state_path: &Path) -> PathBuf {
    let stem = state_path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "cluster".into());
    state_path.with_file_name(format!("{stem}.snapshots"))
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("setting the mode of {}", dir.display()))
}

/// A rewrite's report, and whether it was stopped because the API server it talked to stopped answering.
struct Watched {
    report: RewriteReport,
    server_lost: bool,
}

/// Where a rewrite's requests went and how many it ended with in flight, for the operator:
/// `through 3 API servers (requests: a 3340, b 3330, c 3330); 96 writes in flight at the end`.
fn spread(report: &RewriteReport) -> String {
    let servers: Vec<String> = report
        .servers
        .iter()
        .map(|(name, answered)| format!("{name} {answered}"))
        .collect();
    let backed_off = match report.saturations {
        0 => String::new(),
        n => format!(", backed off {n}× when more only raised latency"),
    };
    format!(
        "through {} API server{} (requests: {}); {} writes in flight at the end{backed_off}",
        servers.len(),
        if servers.len() == 1 { "" } else { "s" },
        servers.join(", "),
        report.final_concurrency
    )
}

/// Runs a rewrite that Ctrl-C cancels (writes in flight finish, the report says it was interrupted, and the
/// recorded stage lets the next run finish the job), and that stops the same way when the last of its API
/// servers stops answering its readiness probe ([`Servers::watch`]; the others are dropped from the rotation on
/// the way), so that the caller can find a server again instead of letting every write in the queue exhaust
/// its retries against servers that are gone.
async fn interruptible<F, Fut>(
    concurrency: Concurrency,
    servers: Arc<Servers>,
    rewrite: F,
) -> Watched
where
    F: FnOnce(RewriteOptions) -> Fut,
    Fut: std::future::Future<Output = RewriteReport>,
{
    let cancel = interrupt::token().child_token();
    let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = tokio::spawn({
        let cancel = cancel.clone();
        let lost = lost.clone();
        async move {
            let why = servers.watch().await;
            tracing::warn!("the API servers stopped answering during the rewrite ({why})");
            lost.store(true, std::sync::atomic::Ordering::SeqCst);
            cancel.cancel();
        }
    });
    let report = rewrite(RewriteOptions {
        concurrency,
        cancel,
        ..RewriteOptions::default()
    })
    .await;
    watchdog.abort();
    Watched {
        report,
        server_lost: lost.load(std::sync::atomic::Ordering::SeqCst) && !interrupt::requested(),
    }
}

/// What the rolling-restart hook returns to stop between nodes on Ctrl-C.
const INTERRUPTED_BETWEEN_NODES: &str = "interrupted by Ctrl-C";

/// Records that `node` holds the deploy of `phase` (config `config_sha256`) so a rerun skips it, and that the
/// change a put-back container there waited for is made: from now on the node is gated as any other.
fn record_node_deployed(
    records: &mut AtrestState,
    phase: Phase,
    config_sha256: &Option<String>,
    node: &str,
) {
    if let Some(r) = records.transition.as_mut() {
        r.updated_at = now();
        let ours = |p: &DeployProgress| p.phase == phase && p.config_sha256 == *config_sha256;
        if !r.deploying.as_ref().is_some_and(ours) {
            r.deploying = Some(DeployProgress {
                phase,
                config_sha256: config_sha256.clone(),
                nodes: Vec::new(),
            });
        }
        if let Some(progress) = r.deploying.as_mut()
            && !progress.nodes.iter().any(|n| n == node)
        {
            progress.nodes.push(node.to_string());
        }
    }
    records.put_back.retain(|name| name != node);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::encryption::{Key, managed};
    use crate::plan::{PlanInput, Target};
    use crate::secret::SecretString;

    fn key(name: &str) -> Key {
        Key {
            name: name.into(),
            secret: SecretString::new("MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTI=".into()),
        }
    }

    #[test]
    fn snapshots_go_beside_the_state() {
        assert_eq!(
            snapshot_dir(Path::new("/x/cluster.rkestate")),
            Path::new("/x/cluster.snapshots")
        );
        assert_eq!(
            snapshot_dir(Path::new("prod.rkestate")),
            Path::new("prod.snapshots")
        );
    }

    /// Each node a deploy finishes is recorded once under that deploy (a deploy of another phase or config starts
    /// its own list), and leaves the put-back list; without a transition only the put-back list changes.
    #[test]
    fn a_deployed_node_is_recorded_once_under_its_deploy_and_leaves_the_put_back_list() {
        let mut records = AtrestState {
            transition: Some(crate::state::atrest::TransitionRecord {
                id: "t".into(),
                kind: "enable".into(),
                from: None,
                to: None,
                stage: Stage::Prepare,
                done: Vec::new(),
                started_at: "then".into(),
                updated_at: "then".into(),
                deploying: None,
            }),
            put_back: vec!["b".into(), "c".into()],
            ..AtrestState::default()
        };
        let first = Some("sha-1".to_string());
        record_node_deployed(&mut records, Phase::Prepare, &first, "a");
        record_node_deployed(&mut records, Phase::Prepare, &first, "b");
        record_node_deployed(&mut records, Phase::Prepare, &first, "b");
        let deploying = |r: &AtrestState| r.transition.as_ref().and_then(|t| t.deploying.clone());
        let progress = deploying(&records).expect("a deploy recorded");
        assert_eq!(
            (progress.phase, &progress.nodes),
            (Phase::Prepare, &vec!["a".to_string(), "b".to_string()])
        );
        assert_eq!(records.put_back, ["c"]);
        assert_ne!(
            records.transition.as_ref().map(|t| t.updated_at.as_str()),
            Some("then")
        );

        record_node_deployed(&mut records, Phase::Finish, &Some("sha-2".into()), "a");
        let progress = deploying(&records).expect("a deploy recorded");
        assert_eq!(
            (progress.phase, progress.nodes),
            (Phase::Finish, vec!["a".to_string()])
        );

        let mut idle = AtrestState {
            put_back: vec!["c".into()],
            ..AtrestState::default()
        };
        record_node_deployed(&mut idle, Phase::Prepare, &first, "c");
        assert!(idle.transition.is_none() && idle.put_back.is_empty());
    }

    #[test]
    fn an_enable_has_five_phase_headers_and_the_writer_is_named() {
        let n = managed(vec![key("k1")]);
        let input = PlanInput::new(
            Target::Managed(n.clone()),
            Target::Disabled,
            vec!["a".into(), "b".into()],
        );
        let plan = crate::plan::plan(&input).unwrap();
        let groups: Vec<Phase> = phase_groups(&plan).into_iter().map(|(_, p)| p).collect();
        assert_eq!(
            groups,
            [
                Phase::Prepare,
                Phase::Rotate,
                Phase::Reencrypt,
                Phase::Verify,
                Phase::Finish
            ]
        );
        assert_eq!(write_unit(&n), "aescbc:k1");
    }
}
