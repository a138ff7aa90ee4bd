//! Flows: one function per CLI verb, tying config, plan, exec and state together.
//!
//! Every verb first loads and checks the config and the state ([`Inputs::load`]), so bad input gets its error
//! before anything else. Verbs that change anything hold the state lock for the whole run, connect to every
//! controlplane and pass the pre-flight checks, observe (config hashes, an etcd census), plan, ask, and then
//! carry the plan out with [`execute::Executor`], which saves progress so a rerun resumes.

mod execute;
mod inputs;
pub mod interrupt;
mod kms;
pub mod options;
mod report;
mod session;
mod targets;

pub use crate::config::encryption::is_managed_shape;
pub use execute::snapshot_dir;
pub use inputs::{Inputs, load_cluster_config};

use crate::config::encryption::EncryptionConfiguration;
use crate::config::{self, Desired};
use crate::plan::InProgress;
use crate::plan::stage::Stage;
use crate::plan::units::{KeyProvider, key_unit};
use crate::plan::{
    self, Intent, Observed, Plan, PlanInput, PlanKind, PlanOptions, StepwiseInput, StepwiseVerb,
    Target,
};
use crate::state::atrest::AtrestState;
use crate::state::records::RecordsFile;
use anyhow::{Context, anyhow, bail};
use execute::{Executor, say};
use options::{GlobalOpts, PlanFormat, StatusFormat, VerifyFormat};
use session::{Access, LockRequest, Session};
use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Instant;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// What a planning verb does with the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Print it (text or JSON) and change nothing.
    Show(PlanOutput),
    /// Print it from cluster.yml and the state alone, reaching no node or etcd.
    ShowOffline(PlanOutput),
    /// Print it, ask, and carry it out.
    Apply,
}

/// How a shown plan is reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanOutput {
    pub format: PlanFormat,
    /// Exit 2 when the plan has steps (terraform's `-detailed-exitcode`); 0 then means nothing would change.
    pub detailed_exitcode: bool,
}

/// Exit status of `plan --detailed-exitcode` when the plan has steps (terraform's value).
pub const EXIT_CHANGES: u8 = 2;

impl PlanOutput {
    /// The exit code for a plan that is shown: 0, or [`EXIT_CHANGES`] when asked for and there is work to do.
    fn code(self, has_steps: bool) -> ExitCode {
        if self.detailed_exitcode && has_steps {
            ExitCode::from(EXIT_CHANGES)
        } else {
            ExitCode::SUCCESS
        }
    }
}

/// `atrest up [--dry-run]`.
pub fn up(global: &GlobalOpts, dry_run: bool) -> anyhow::Result<ExitCode> {
    let inputs = Inputs::load(global)?;
    let mode = if dry_run {
        Mode::Show(PlanOutput {
            format: PlanFormat::Text,
            detailed_exitcode: false,
        })
    } else {
        Mode::Apply
    };
    runtime()?.block_on(reconcile(global, inputs, mode, Intent::Reconcile))
}

/// `atrest plan [-o text|json] [--offline] [--detailed-exitcode]`.
pub fn plan(global: &GlobalOpts, output: PlanOutput, offline: bool) -> anyhow::Result<ExitCode> {
    let inputs = Inputs::load(global)?;
    let mode = if offline {
        Mode::ShowOffline(output)
    } else {
        Mode::Show(output)
    };
    runtime()?.block_on(reconcile(global, inputs, mode, Intent::Reconcile))
}

/// `atrest encrypt rotate-key`.
pub fn encrypt_rotate_key(global: &GlobalOpts) -> anyhow::Result<ExitCode> {
    let inputs = Inputs::load(global)?;
    runtime()?.block_on(reconcile(global, inputs, Mode::Apply, Intent::RotateKey))
}

/// `atrest encrypt rotate-keys` (RKE2's name for the same thing).
pub fn encrypt_rotate_keys(global: &GlobalOpts) -> anyhow::Result<ExitCode> {
    encrypt_rotate_key(global)
}

/// `atrest encrypt status [-o table|json] [--detailed-exitcode]`.
pub fn encrypt_status(
    global: &GlobalOpts,
    format: StatusFormat,
    detailed_exitcode: bool,
) -> anyhow::Result<ExitCode> {
    let inputs = Inputs::load(global)?;
    runtime()?.block_on(report::status(global, inputs, format, detailed_exitcode))
}

/// `atrest encrypt verify [-o text|json] [--detailed-exitcode]`.
pub fn encrypt_verify(
    global: &GlobalOpts,
    format: VerifyFormat,
    detailed_exitcode: bool,
) -> anyhow::Result<ExitCode> {
    let inputs = Inputs::load(global)?;
    runtime()?.block_on(report::verify(global, inputs, format, detailed_exitcode))
}

/// `atrest encrypt prepare [--force]`.
pub fn encrypt_prepare(global: &GlobalOpts, force: bool) -> anyhow::Result<ExitCode> {
    let inputs = Inputs::load(global)?;
    runtime()?.block_on(stepwise_verb(
        global,
        inputs,
        StepwiseVerb::Prepare { force },
    ))
}

/// `atrest encrypt rotate [--force]`.
pub fn encrypt_rotate(global: &GlobalOpts, force: bool) -> anyhow::Result<ExitCode> {
    let inputs = Inputs::load(global)?;
    runtime()?.block_on(stepwise_verb(
        global,
        inputs,
        StepwiseVerb::Rotate { force },
    ))
}

/// `atrest encrypt reencrypt [--force] [--skip]`.
pub fn encrypt_reencrypt(global: &GlobalOpts, force: bool, skip: bool) -> anyhow::Result<ExitCode> {
    let inputs = Inputs::load(global)?;
    runtime()?.block_on(stepwise_verb(
        global,
        inputs,
        StepwiseVerb::Reencrypt { force, skip },
    ))
}

const CUSTOM_ROTATION_HINT: &str = "cluster.yml sets a custom_config: atrest does not invent keys for it. To \
     rotate, add a new key with a new name as the FIRST key of the provider in custom_config (keep the old one \
     after it) and run `atrest up`: the old key is kept for reading until every object is rewritten; remove it \
     from custom_config in a later edit (or right away: atrest verifies etcd before it is dropped)";

/// The desired config must be atrest-managed for key rotation.
fn require_managed(desired: &Desired, verb: &str) -> anyhow::Result<()> {
    match desired {
        Desired::Managed => Ok(()),
        Desired::Custom(_) => bail!("`atrest {verb}` refused: {CUSTOM_ROTATION_HINT}"),
        Desired::Disabled => bail!(
            "`atrest {verb}` refused: encryption is disabled in cluster.yml \
             (services.kube-api.secrets_encryption_config.enabled); enable it and run `atrest up` first"
        ),
    }
}

/// `up`, `plan`, `up --dry-run`, `encrypt rotate-key`.
async fn reconcile(
    global: &GlobalOpts,
    inputs: Inputs,
    mode: Mode,
    intent: Intent,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let desired = config::desired(&inputs.config)?;
    if inputs.config.custom_config_ignored() {
        tracing::warn!(
            "cluster.yml has a custom_config but secrets_encryption_config.enabled is false: encryption is \
             disabled and the custom_config is ignored"
        );
    }
    if intent == Intent::RotateKey {
        require_managed(&desired, "encrypt rotate-key")?;
    }
    let mut notes = Vec::new();
    // The locks are taken before the files are read and held until the run ends.
    let lock = match mode {
        Mode::Apply => Some(inputs.lock()?),
        Mode::Show(_) | Mode::ShowOffline(_) => {
            inputs.say_notices();
            None
        }
    };
    let (state, atrest) = match &lock {
        Some(l) => (l.state.clone(), l.records.clone()),
        None => (inputs.state.clone(), inputs.records.clone()),
    };
    let record = targets::recorded(&atrest)?;
    let deployed = targets::deployed(&state)?;
    let base = record.as_ref().map_or(deployed.clone(), |r| r.to.clone());
    let intent = if inputs.config.rotate_encryption_key {
        with_rotate_request(intent, &desired, base.as_ref(), record.as_ref(), &mut notes)
    } else {
        intent
    };
    let goal = Goal {
        target: target_for(
            intent,
            &desired,
            base.as_ref(),
            record.as_ref(),
            &atrest,
            &mut notes,
        )?,
        deployed,
        record,
        intent,
    };
    if let Mode::ShowOffline(output) = mode {
        return plan_offline(global, &inputs, goal, notes, output);
    }
    let access = if mode == Mode::Apply {
        Access::Change(LockRequest {
            state: &state,
            state_path: &inputs.state_path,
            command: match intent {
                Intent::RotateKey => "encrypt rotate-key",
                Intent::Reconcile => "up",
            },
        })
    } else {
        Access::Plan
    };
    let mut session = Session::connect(global, &inputs.config, access)
        .await
        .context("pre-flight failed; nothing was changed")?;
    // Every way out of here closes the session: the cluster lock is released at once, not after its lease.
    let outcome = async {
        session.adopt_records(atrest);
        if let Some(lock) = &lock
            && !settle_leftovers(global, &mut session, &lock.records_file).await?
        {
            return Ok(ExitCode::FAILURE);
        }
        let state_text_repair = targets::template_text_for_custom(
            &desired,
            goal.deployed.as_ref(),
            state.current_encryption_config(),
        );
        let deployed = goal.deployed.clone();
        let kms_configs = goal.configs();
        let mut plan = plan_observed(global, &mut session, &state, goal).await?;
        plan.notes.extend(notes);
        plan.notes.extend(session.leftover_notes());
        if !plan.is_noop() {
            plan.notes.push(backup_note(&inputs));
        }
        if state_text_repair.is_some() {
            plan.notes.push(STATE_TEXT_REPAIR_NOTE.to_string());
        }
        // KMS: every plugin is checked before anything changes; with an unchanged config, objects still on an old
        // plugin key id are re-wrapped.
        if plan.is_noop() {
            if let Some(code) =
                rewrap_stale(global, &mut session, &state, deployed.as_ref(), &plan, mode).await
            {
                return code;
            }
        } else if mode == Mode::Apply {
            kms::preflight(&session, &kms_configs.iter().collect::<Vec<_>>()).await?;
        }
        match mode {
            Mode::Show(output) | Mode::ShowOffline(output) => {
                print_plan(&plan, output.format, matches!(mode, Mode::ShowOffline(_)));
                session.close().await;
                // A leftover of an interrupted recreate is a change `up` makes first; so is a state text repair.
                Ok(output.code(
                    !plan.is_noop()
                        || !session.leftover_notes().is_empty()
                        || state_text_repair.is_some(),
                ))
            }
            Mode::Apply => {
                let lock = lock.ok_or_else(|| anyhow!("the state lock is not held"))?;
                apply(
                    global,
                    &mut session,
                    &lock,
                    &plan,
                    started,
                    state_text_repair,
                )
                .await
            }
        }
    }
    .await;
    session.close().await;
    outcome
}

/// What a run of `up` or `encrypt rotate-key` moves the cluster to, and from where.
struct Goal {
    target: Target,
    /// The config RKE's state says is deployed.
    deployed: Option<EncryptionConfiguration>,
    /// The transition an earlier run recorded and did not finish.
    record: Option<InProgress>,
    intent: Intent,
}

impl Goal {
    /// Every config the run may meet: deployed, desired, and the recorded transition's two ends.
    fn configs(&self) -> Vec<EncryptionConfiguration> {
        let record = self.record.as_ref();
        [
            self.deployed.as_ref(),
            self.target.config(),
            record.and_then(|r| r.from.as_ref()),
            record.and_then(|r| r.to.as_ref()),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
    }

    /// The planner's input for these controlplanes, nothing observed yet.
    fn plan_input(self, global: &GlobalOpts, controlplanes: Vec<String>) -> PlanInput {
        let mut input = PlanInput::new(self.target, Target::deployed(self.deployed), controlplanes);
        input.transition = self.record;
        input.intent = self.intent;
        input.options = PlanOptions {
            no_snapshot: global.no_snapshot,
        };
        input.config_hash = Some(targets::deployed_hash);
        input
    }
}

/// RKE's `rotate_encryption_key: true` asks `up` for a rotation of the managed key (so can a pull request): what
/// `up` does about it, said in `notes`.
fn with_rotate_request(
    intent: Intent,
    desired: &Desired,
    base: Option<&EncryptionConfiguration>,
    record: Option<&InProgress>,
    notes: &mut Vec<String>,
) -> Intent {
    if intent != Intent::Reconcile {
        return intent;
    }
    let (intent, note) = match (desired, base) {
        (Desired::Managed, _) if record.is_some_and(|r| r.kind != PlanKind::Rotate.as_str()) => (
            Intent::Reconcile,
            "rotate_encryption_key: true in cluster.yml: a transition is in progress; it is finished first, and \
             the next run rotates the managed key"
                .to_string(),
        ),
        (Desired::Managed, Some(b)) if is_managed_shape(b) => (
            Intent::RotateKey,
            "rotate_encryption_key: true in cluster.yml: the managed key is replaced (on every run while it is \
             set, as `rke up` does; set it back to false once rotated)"
                .to_string(),
        ),
        (Desired::Managed, _) => (
            Intent::Reconcile,
            "rotate_encryption_key: true in cluster.yml: no managed config is deployed yet, so there is nothing \
             to rotate; the config deployed now gets a new key"
                .to_string(),
        ),
        _ => (
            Intent::Reconcile,
            format!(
                "rotate_encryption_key: true in cluster.yml is ignored: it rotates the managed config only. \
                 {CUSTOM_ROTATION_HINT}"
            ),
        ),
    };
    notes.push(note);
    intent
}

/// The config the run moves to: cluster.yml's, or for a rotation the managed config with a new key (the recorded
/// one when a rotation is already under way, said in `notes`).
fn target_for(
    intent: Intent,
    desired: &Desired,
    base: Option<&EncryptionConfiguration>,
    record: Option<&InProgress>,
    atrest: &AtrestState,
    notes: &mut Vec<String>,
) -> anyhow::Result<Target> {
    if intent == Intent::Reconcile {
        return targets::desired_target(desired, base, atrest);
    }
    match record {
        // A stepwise rotation left at reencrypt_finished is over; only an unfinished one is resumed.
        Some(r) if r.kind == PlanKind::Rotate.as_str() && r.stage != Stage::ReencryptFinished => {
            notes.push(
                "a key rotation is already in progress: it is finished first and no other key is generated"
                    .to_string(),
            );
            Ok(Target::Managed(r.to.clone().ok_or_else(|| {
                anyhow!("the recorded rotation has no target config")
            })?))
        }
        _ => match base {
            Some(b) if is_managed_shape(b) => {
                Ok(Target::Managed(targets::rotated(Some(b), atrest)?))
            }
            _ => bail!(
                "`atrest encrypt rotate-key` refused: the deployed config is not the managed one (run `atrest up` \
                 first to deploy what cluster.yml asks for)"
            ),
        },
    }
}

/// `plan --offline`: the plan from cluster.yml and the state alone, printed.
fn plan_offline(
    global: &GlobalOpts,
    inputs: &Inputs,
    goal: Goal,
    notes: Vec<String>,
    output: PlanOutput,
) -> anyhow::Result<ExitCode> {
    let controlplanes = inputs
        .config
        .controlplanes()
        .into_iter()
        .map(session::node_name)
        .collect();
    let mut plan = plan::plan(&goal.plan_input(global, controlplanes))?;
    plan.notes.extend(notes);
    if !plan.is_noop() {
        plan.notes.push(backup_note(inputs));
    }
    plan.notes.push(
        "offline: planned from cluster.yml and cluster.rkestate only; no node's deployed file and no etcd census \
         were read, so drift and stored data are not taken into account"
            .to_string(),
    );
    print_plan(&plan, output.format, true);
    Ok(output.code(!plan.is_noop()))
}

/// The plan from what the nodes hold and what etcd stores (a census of every resource the goal involves).
async fn plan_observed(
    global: &GlobalOpts,
    session: &mut Session,
    state: &crate::state::RkeState,
    goal: Goal,
) -> anyhow::Result<Plan> {
    let views = session.observe_nodes().await?;
    let mut observed_nodes = session::observations(&views);
    // A file `rke up` wrote from the state (state string + "\n"), or atrest's earlier layout, holds the deployed
    // config too: count it as the deployed config, not as drift to repair with a restart (unless no
    // kube-apiserver could start with it: `targets::equivalent_hashes`).
    if let Some(config) = goal.deployed.as_ref() {
        let same = targets::equivalent_hashes(config, state.current_encryption_config());
        for n in &mut observed_nodes {
            if n.config_sha256.as_ref().is_some_and(|h| same.contains(h)) {
                n.config_sha256 = targets::deployed_hash(Some(config));
            }
        }
    }
    let configs = goal.configs();
    let resources = involved_resources(&configs.iter().map(Some).collect::<Vec<_>>());
    let (_, census) = session
        .census(state, &resources, None)
        .await
        .context("pre-flight: the etcd census failed; nothing was changed")?;
    let mut input = goal.plan_input(global, session.node_names());
    input.observed = Observed {
        nodes: observed_nodes,
        census: Some(session::census_counts(&census)),
        reloading: views
            .iter()
            .filter(|v| v.reload && v.has_flag)
            .map(|v| v.name.clone())
            .collect(),
    };
    input.reload_wanted = session.cluster.reload_wanted();
    Ok(plan::plan(&input)?)
}

/// With nothing to change: objects still on an old KMS plugin key id are re-wrapped (`up`) or shown as the changes
/// they are (`plan`). `None` when there are none.
async fn rewrap_stale(
    global: &GlobalOpts,
    session: &mut Session,
    state: &crate::state::RkeState,
    deployed: Option<&EncryptionConfiguration>,
    plan: &Plan,
    mode: Mode,
) -> Option<anyhow::Result<ExitCode>> {
    let work = match deployed {
        Some(c) => match kms::stale_key_ids(session, state, c).await {
            Ok(work) => work,
            Err(e) => return Some(Err(e)),
        },
        None => Vec::new(),
    };
    if work.is_empty() {
        return None;
    }
    Some(match mode {
        // Shown, not applied: objects to re-wrap are changes a pipeline must see.
        Mode::Show(output) | Mode::ShowOffline(output) => {
            match output.format {
                PlanFormat::Text => print!("{}", kms::rewrap_text(&work)),
                PlanFormat::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&report::rewrap_plan_json(plan, &work))
                        .unwrap_or_default()
                ),
            }
            session.close().await;
            Ok(output.code(true))
        }
        Mode::Apply => {
            print!("{}", kms::rewrap_text(&work));
            kms::apply_rewrap(global, session, state, &work).await
        }
    })
}

/// What to back up together before a change: RKE's files and atrest's records (the archive of retired keys).
fn backup_note(inputs: &Inputs) -> String {
    format!(
        "back up {}, {} and {} together before and after this run: the last holds the archive of retired keys \
         that older etcd snapshots need",
        inputs.config_path.display(),
        inputs.state_path.display(),
        inputs.records_path.display()
    )
}

/// K3s-style single verbs.
async fn stepwise_verb(
    global: &GlobalOpts,
    inputs: Inputs,
    verb: StepwiseVerb,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let name = match verb {
        StepwiseVerb::Prepare { .. } => "encrypt prepare",
        StepwiseVerb::Rotate { .. } => "encrypt rotate",
        StepwiseVerb::Reencrypt { .. } => "encrypt reencrypt",
    };
    let desired = config::desired(&inputs.config)?;
    require_managed(&desired, name)?;
    let lock = inputs.lock()?;
    let (state, atrest) = (lock.state.clone(), lock.records.clone());
    let record = targets::recorded(&atrest)?;
    let deployed = targets::deployed(&state)?;
    let new_key = match verb {
        StepwiseVerb::Prepare { .. } => {
            let base = record.as_ref().map_or(deployed.as_ref(), |r| r.to.as_ref());
            let key = targets::fresh_key(base, &atrest)?;
            Some(key_unit(
                KeyProvider::Aescbc,
                &key.name,
                key.secret.expose(),
            ))
        }
        _ => None,
    };
    let lock_request = LockRequest {
        state: &state,
        state_path: &inputs.state_path,
        command: name,
    };
    let mut session = Session::connect(global, &inputs.config, Access::Change(lock_request))
        .await
        .context("pre-flight failed; nothing was changed")?;
    session.adopt_records(atrest.clone());
    // Every way out of here closes the session: the cluster lock is released at once, not after its lease.
    let outcome = async {
        if !settle_leftovers(global, &mut session, &lock.records_file).await? {
            return Ok(ExitCode::FAILURE);
        }
        // Pre-flight: the census must be reachable, since reencrypt and finish depend on it.
        session
            .census(&state, &["secrets".to_string()], None)
            .await
            .context("pre-flight: the etcd census failed; nothing was changed")?;
        let reloading = session
            .observe_nodes()
            .await?
            .into_iter()
            .filter(|v| v.reload && v.has_flag)
            .map(|v| v.name)
            .collect();
        let input = StepwiseInput {
            current: Target::deployed(deployed),
            transition: record,
            controlplanes: session.node_names(),
            new_key,
            options: PlanOptions {
                no_snapshot: global.no_snapshot,
            },
            reloading,
            reload_wanted: session.cluster.reload_wanted(),
        };
        let plan = plan::stepwise(verb, &input)?;
        apply(global, &mut session, &lock, &plan, started, None).await
    }
    .await;
    session.close().await;
    outcome
}

/// What an interrupted recreate left is shown and, once confirmed, finished or undone before the cluster is
/// observed and planned: the plan is then made from the cluster as it is. `false`: the operator declined, and
/// nothing was changed.
async fn settle_leftovers(
    global: &GlobalOpts,
    session: &mut Session,
    records_file: &RecordsFile,
) -> anyhow::Result<bool> {
    let notes = session.leftover_notes();
    if notes.is_empty() {
        return Ok(true);
    }
    eprintln!("First, what an interrupted recreate left (then the plan is made):");
    for note in &notes {
        eprintln!("  {note}");
    }
    if !confirm(global)? {
        eprintln!("Cancelled; nothing was changed.");
        return Ok(false);
    }
    session.recover_leftovers(records_file).await?;
    Ok(true)
}

/// What a no-op `up` still changes: RKE's text for the deployed custom_config
/// ([`targets::template_text_for_custom`]).
const STATE_TEXT_REPAIR_NOTE: &str = "cluster.rkestate keeps the custom_config in RKE's template text (an earlier \
     atrest wrote it so); RKE renders a custom_config differently, so its next `rke up` would restart every \
     kube-apiserver and rewrite every secret: `up` rewrites the text as RKE renders it (no node or stored object \
     changes)";

/// Shows the plan, asks, runs it, and reports. `state_text_repair`: the deployed config whose text in the state
/// `up` rewrites as RKE renders it, when the plan changes no node (a no-op, or one that only drops a record).
async fn apply(
    global: &GlobalOpts,
    session: &mut Session,
    lock: &inputs::Locked,
    plan: &Plan,
    started: Instant,
    state_text_repair: Option<config::encryption::EncryptionConfiguration>,
) -> anyhow::Result<ExitCode> {
    print_plan(plan, PlanFormat::Text, false);
    if plan.is_noop() && state_text_repair.is_none() {
        session.close().await;
        return Ok(ExitCode::SUCCESS);
    }
    if !confirm(global)? {
        eprintln!("Cancelled; nothing was changed.");
        session.close().await;
        return Ok(ExitCode::FAILURE);
    }
    let mut executor = Executor {
        session,
        file: &lock.state_file,
        records_file: &lock.records_file,
        state: lock.state.clone(),
        rewritten: Vec::new(),
        rewrite_concurrency: crate::exec::rewrite::Concurrency::from_flag(
            global.rewrite_concurrency,
        ),
        rollout: crate::exec::restart::RolloutOptions {
            ready_timeout: std::time::Duration::from_secs(u64::from(global.ready_timeout)),
        },
        census_repasses: 0,
    };
    interrupt::install();
    // The text repair goes with a plan that changes no node: a no-op, or one that only drops a record.
    let repair = state_text_repair.filter(|_| plan.steps.is_empty());
    let mut result = match &repair {
        Some(_) if plan.is_noop() => Ok(()),
        _ => executor.run(plan).await,
    };
    if let (Ok(()), Some(config)) = (&result, &repair) {
        result = executor.set_deployed(Some(config)).map(|()| {
            say!("rewrote the custom_config's text in cluster.rkestate as RKE renders it");
        });
    }
    if result.is_ok() {
        executor.sync_in_cluster_state().await;
    }
    let objects: u64 = executor.rewritten.iter().map(|r| r.processed()).sum();
    let rewrite_secs: f64 = executor
        .rewritten
        .iter()
        .map(|r| r.elapsed.as_secs_f64())
        .sum();
    executor.session.close().await;
    match result {
        Ok(()) => {
            let rewrite = if objects > 0 && rewrite_secs > 0.0 {
                format!(
                    "; {objects} objects rewritten in {rewrite_secs:.1} s, {:.0} objects/s",
                    objects as f64 / rewrite_secs
                )
            } else {
                "; no object rewritten".to_string()
            };
            let repasses = match executor.census_repasses {
                0 => String::new(),
                n => format!("; {} {n} time(s)", execute::REPASS),
            };
            say!(
                "done: {} in {:.1} s{rewrite}{repasses}",
                plan.kind,
                started.elapsed().as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if interrupt::is_interrupted(&e) => {
            eprintln!(
                "{e}. Rerun the same command to resume; `atrest encrypt status` shows where the run is."
            );
            Ok(ExitCode::from(interrupt::EXIT_INTERRUPTED))
        }
        Err(e) => Err(e.context(
            "the run stopped; its progress is saved in the state file: `atrest encrypt status` shows where, \
             and rerunning the same command resumes",
        )),
    }
}

fn print_plan(plan: &Plan, format: PlanFormat, offline: bool) {
    match format {
        PlanFormat::Text => print!("{}", plan::render::to_text(plan)),
        PlanFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report::plan_json(plan, offline)).unwrap_or_default()
        ),
    }
}

/// Asks on a terminal; `--yes` answers for scripts, and without a terminal `--yes` is required.
fn confirm(global: &GlobalOpts) -> anyhow::Result<bool> {
    if global.yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "stdin is not a terminal: pass --yes to carry out the plan above (nothing was changed)"
        );
    }
    eprint!("Carry out this plan? [y/N] ");
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .context("reading the answer from stdin")?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "Yes" | "YES"))
}

/// Every resource string any of the configs names (`secrets` when none does).
fn involved_resources(
    configs: &[Option<&crate::config::encryption::EncryptionConfiguration>],
) -> Vec<String> {
    let mut set = BTreeSet::new();
    for c in configs.iter().flatten() {
        for entry in &c.resources {
            set.extend(entry.resources.iter().cloned());
        }
    }
    if set.is_empty() {
        set.insert("secrets".to_string());
    }
    set.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::encryption::{Key, managed};
    use crate::secret::SecretString;

    fn managed_config() -> EncryptionConfiguration {
        managed(vec![Key {
            name: "key-1".to_string(),
            secret: SecretString::new("c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTE=".to_string()),
        }])
    }

    fn in_progress(kind: PlanKind) -> InProgress {
        InProgress {
            kind: kind.as_str().to_string(),
            from: None,
            to: Some(managed_config()),
            stage: Stage::Prepare,
            done: Vec::new(),
            deploying: None,
        }
    }

    /// `rotate_encryption_key: true` rotates only a deployed managed config with no other transition under way,
    /// and every answer comes with a note saying what `up` does about the request.
    #[test]
    fn a_rotate_request_in_cluster_yml_rotates_only_a_deployed_managed_config() {
        let deployed = managed_config();
        let enabling = in_progress(PlanKind::Enable);
        let custom = Desired::Custom(managed_config());
        for (desired, base, record, want, says) in [
            (
                &Desired::Managed,
                Some(&deployed),
                None,
                Intent::RotateKey,
                "is replaced",
            ),
            (
                &Desired::Managed,
                Some(&deployed),
                Some(&enabling),
                Intent::Reconcile,
                "in progress",
            ),
            (
                &Desired::Managed,
                None,
                None,
                Intent::Reconcile,
                "nothing to rotate",
            ),
            (
                &custom,
                Some(&deployed),
                None,
                Intent::Reconcile,
                "is ignored",
            ),
        ] {
            let mut notes = Vec::new();
            let intent = with_rotate_request(Intent::Reconcile, desired, base, record, &mut notes);
            assert_eq!(intent, want, "{notes:?}");
            assert!(notes.len() == 1 && notes[0].contains(says), "{notes:?}");
        }
        let mut notes = Vec::new();
        let asked = with_rotate_request(Intent::RotateKey, &custom, None, None, &mut notes);
        assert_eq!(
            asked,
            Intent::RotateKey,
            "an explicit rotate-key is left as it is"
        );
        assert!(notes.is_empty());
    }
}
