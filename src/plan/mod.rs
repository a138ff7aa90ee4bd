//! The planner: pure functions from (desired, recorded, observed) to an ordered plan. No I/O here.
//!
//! Every change of encryption config O → N runs the same HA-safe sequence (docs/design.md):
//! prepare (all servers read what N writes) → rotate (all write as N, still read O) → reencrypt → verify →
//! finish (exactly N). [`plan`] computes it for a reconcile, [`stepwise`] for K3s-style single verbs,
//! and [`render`] shows a plan as text (keys redacted) or JSON.

pub mod render;
mod sequence;
pub mod stage;
mod stepwise;
mod types;
pub mod units;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
pub(crate) mod sim;
#[cfg(test)]
mod tests;

pub use sequence::reads_all;
pub use stepwise::{StepwiseInput, StepwiseVerb, stepwise};
pub use types::*;

use crate::config::encryption::EncryptionConfiguration;
use sequence::{Sequence, check_census, check_key_reuse, done_phases, sequence};
use stage::{Phase, Stage};

type Config = Option<EncryptionConfiguration>;

/// Plans the steps that take the cluster from what is deployed (or recorded in progress) to `input.desired`.
///
/// - A recorded transition is continued from where it stopped (phases in `done` are left out). If the desired
///   config differs from that transition's target, the plan first finishes it and then plans the new change
///   (two [`TransitionSpec`]s; a note says so).
/// - Nodes whose observed config hash matches neither the expected config nor (mid-rollout) the next one get
///   a note and a redeploy of the expected config first.
/// - Refuses key names reused with a different secret, and (given a census) stored data no config can read.
pub fn plan(input: &PlanInput) -> Result<Plan, PlanError> {
    if input.controlplanes.is_empty() {
        return Err(PlanError::NoControlplanes);
    }
    let multi = input.controlplanes.len() > 1;
    let desired = input.desired.config().cloned();
    let mut involved: Vec<Config> = vec![input.current.config().cloned(), desired.clone()];
    let mut draft = Draft::at_current(input);
    let mut abandons = None;
    if let Some(record) = input
        .transition
        .as_ref()
        .filter(|r| changed_nothing(input, r))
    {
        draft.notes.push(format!(
            "the recorded {} transition stopped before any node or stored object changed, and the desired config is \
             another one: it is dropped, not finished",
            record.kind
        ));
        abandons = Some(record.kind.clone());
        involved.push(record.to.clone());
        check_key_reuse(&involved.iter().collect::<Vec<_>>())?;
    } else if let Some(record) = &input.transition {
        involved.push(record.from.clone());
        involved.push(record.to.clone());
        check_key_reuse(&involved.iter().collect::<Vec<_>>())?;
        draft.resume(input, record, multi)?;
    } else {
        check_key_reuse(&involved.iter().collect::<Vec<_>>())?;
    }
    if let Some(census) = &input.observed.census {
        check_census(census, &involved.iter().collect::<Vec<_>>())?;
    }
    draft.change_to(input, &desired, multi)?;
    add_drift_repair(
        input,
        &draft.expected,
        draft.current_stage,
        draft.drift_phase,
        &mut draft.transitions,
        &mut draft.steps,
        &mut draft.notes,
    );
    assign_deploy_modes(
        &input.observed.reloading,
        input.reload_wanted,
        &mut draft.steps,
        &mut draft.notes,
    );
    Ok(draft.into_plan(input, abandons))
}

/// A plan being built: the transitions and steps so far, with what the nodes may hold meanwhile.
struct Draft {
    transitions: Vec<TransitionSpec>,
    steps: Vec<Step>,
    notes: Vec<String>,
    /// The config the next transition starts from, and whether it is the managed or a custom one.
    base: Config,
    base_source: Option<ConfigSource>,
    /// Configs a node may legitimately have right now, and the one to put back on a drifted node.
    expected: Expected,
    current_stage: Stage,
    /// The phase a drift repair belongs to: the first one the plan runs.
    drift_phase: Phase,
}

impl Draft {
    /// Nothing planned yet; the nodes are expected on the deployed config.
    fn at_current(input: &PlanInput) -> Draft {
        let base: Config = input.current.config().cloned();
        Draft {
            transitions: Vec::new(),
            steps: Vec::new(),
            notes: Vec::new(),
            expected: Expected {
                now: vec![base.clone()],
                restore: base.clone(),
            },
            base,
            base_source: input.current.source(),
            current_stage: Stage::Start,
            drift_phase: Phase::Finish,
        }
    }

    /// The recorded transition's remaining steps (the nodes an interrupted deploy finished skipped); the next
    /// transition then starts from its target.
    fn resume(
        &mut self,
        input: &PlanInput,
        record: &InProgress,
        multi: bool,
    ) -> Result<(), PlanError> {
        let seq = sequence(&record.from, &record.to, multi)?;
        let done = done_phases(&record.done, record.stage);
        let all = seq.steps(0, &input.controlplanes);
        let (done_steps, mut remaining): (Vec<Step>, Vec<Step>) =
            all.into_iter().partition(|s| done.contains(&s.phase));
        skip_finished_nodes(input, record, &mut remaining, &mut self.notes);
        let last_deployed = done_steps
            .iter()
            .rev()
            .find_map(deploy_config)
            .unwrap_or_else(|| record.from.clone());
        let next_deploy = remaining.iter().find_map(deploy_config);
        // When the next step is a rolling deploy, it may already have reached the drifted node, which may have
        // written with its writer (on one node, nothing before it can read that): that deploy's config, put on the
        // node first, is only a reordering of it. Otherwise (a rewrite comes first, say) the config deployed.
        self.expected.restore = match remaining.first().and_then(deploy_config) {
            Some(under_way) => under_way,
            None => last_deployed.clone(),
        };
        self.expected.now = vec![last_deployed];
        self.expected.now.extend(next_deploy);
        self.current_stage = record.stage;
        let resumed = TransitionSpec {
            kind: kind_from_record(&record.kind),
            from: record.from.clone(),
            to: record.to.clone(),
            resumed_at: Some(record.stage),
        };
        if let Some(first) = remaining.first() {
            self.drift_phase = first.phase;
            self.notes.push(format!(
                "resuming the recorded {} transition at stage {} (done: {})",
                record.kind,
                record.stage,
                list_phases(&done)
            ));
            self.transitions.push(resumed);
            self.steps.extend(remaining);
        } else if !done.contains(&Phase::Finish) {
            // Nothing left to do, yet never recorded complete: a drift repair (its config is its `from`, so it
            // has no phases of its own) stopped after its deploy. Close it, or it would stay recorded for good.
            self.notes.push(format!(
                "the recorded {} transition has nothing left to do: it is recorded as complete",
                record.kind
            ));
            self.transitions.push(resumed);
            self.steps.push(Step {
                transition: 0,
                phase: Phase::Finish,
                stage: Stage::Start,
                action: Action::PersistStage { complete: true },
            });
        }
        self.base = record.to.clone();
        self.base_source = record.to_source().or_else(|| {
            if input.current.config() == record.to.as_ref() {
                input.current.source()
            } else {
                None
            }
        });
        if record.to != input.desired.config().cloned() && !self.transitions.is_empty() {
            self.notes.push(format!(
                "the desired config differs from the target of the unfinished {} transition: that transition is \
                 finished first, then the change to the desired config follows",
                record.kind
            ));
        }
        Ok(())
    }

    /// The transition from the base to `desired` (none when they are the same), a snapshot first unless the
    /// options say otherwise.
    fn change_to(
        &mut self,
        input: &PlanInput,
        desired: &Config,
        multi: bool,
    ) -> Result<(), PlanError> {
        let seq = sequence(&self.base, desired, multi)?;
        let index = self.transitions.len();
        let mut new_steps = seq.steps(index, &input.controlplanes);
        if new_steps.is_empty() {
            return Ok(());
        }
        let kind = classify(
            &self.base,
            self.base_source,
            &input.desired,
            input.intent,
            &seq,
        );
        self.notes.extend(seq.notes.iter().cloned());
        if !input.options.no_snapshot {
            let first = new_steps[0].phase;
            new_steps.insert(
                0,
                Step {
                    transition: index,
                    phase: first,
                    stage: Stage::Start,
                    action: Action::Snapshot,
                },
            );
        }
        if self.transitions.is_empty() {
            self.drift_phase = new_steps[0].phase;
        }
        self.transitions.push(TransitionSpec {
            kind,
            from: self.base.clone(),
            to: desired.clone(),
            resumed_at: None,
        });
        self.steps.extend(new_steps);
        Ok(())
    }

    fn into_plan(self, input: &PlanInput, abandons: Option<String>) -> Plan {
        let kind = match self.transitions.first() {
            None => PlanKind::Noop,
            Some(t) if t.resumed_at.is_some() => PlanKind::Resume,
            Some(t) => t.kind,
        };
        Plan {
            kind,
            from: self
                .transitions
                .first()
                .map_or_else(|| self.base.clone(), |t| t.from.clone()),
            to: self.transitions.last().map_or(self.base, |t| t.to.clone()),
            controlplanes: input.controlplanes.clone(),
            transitions: self.transitions,
            steps: self.steps,
            notes: self.notes,
            abandons,
        }
    }
}

/// Did the recorded transition stop before changing anything, with the desired config another one? No phase
/// done, no node recorded as holding a deploy, every node observed on the transition's `from` config, and a
/// desired config other than its `to`. Such a transition can be dropped: finishing it first would push a change
/// the operator has taken back (and that may be one no server can load).
fn changed_nothing(input: &PlanInput, record: &InProgress) -> bool {
    let Some(hash) = input.config_hash else {
        return false;
    };
    let from = hash(record.from.as_ref());
    record.to.as_ref() != input.desired.config()
        && done_phases(&record.done, record.stage).is_empty()
        && record
            .deploying
            .as_ref()
            .is_none_or(|progress| progress.nodes.is_empty())
        && !input.observed.nodes.is_empty()
        && input.observed.nodes.iter().all(|n| n.config_sha256 == from)
        && input.current.config() == record.from.as_ref()
        && stored_data_reads_with(input, &record.from)
}

/// Whether a census was taken and `config` alone reads everything it found. A node that ran the transition's
/// config may be gone since (a controlplane removed from cluster.yml), so the nodes alone cannot show that
/// nothing was written with the transition's keys: dropping the record then would drop the only copy of them.
fn stored_data_reads_with(input: &PlanInput, config: &Config) -> bool {
    input
        .observed
        .census
        .as_ref()
        .is_some_and(|census| check_census(census, &[config]).is_ok())
}

/// An interrupted rolling deploy: nodes it finished (recorded) that still hold its config (observed) are not
/// restarted again. Without an observation of the nodes every node is redone, as after a crash.
fn skip_finished_nodes(
    input: &PlanInput,
    record: &InProgress,
    remaining: &mut [Step],
    notes: &mut Vec<String>,
) {
    let (Some(progress), Some(hash)) = (&record.deploying, input.config_hash) else {
        return;
    };
    // The recorded deploy can only be the first deploy of the first remaining phase (usually its first step; the
    // finish phase archives the retired keys before it).
    let Some(first_phase) = remaining.first().map(|s| s.phase) else {
        return;
    };
    let Some(Step {
        phase,
        action: Action::Deploy { config, nodes, .. },
        ..
    }) = remaining
        .iter_mut()
        .take_while(|s| s.phase == first_phase)
        .find(|s| matches!(s.action, Action::Deploy { .. }))
    else {
        return;
    };
    let phase = *phase;
    if phase != progress.phase || hash(config.as_ref()) != progress.config_sha256 {
        return;
    }
    let holds_it = |node: &String| {
        progress.nodes.contains(node)
            && input
                .observed
                .nodes
                .iter()
                .any(|o| &o.node == node && o.config_sha256 == progress.config_sha256)
    };
    let (finished, left): (Vec<String>, Vec<String>) = nodes.iter().cloned().partition(holds_it);
    if finished.is_empty() {
        return;
    }
    notes.push(format!(
        "the interrupted {phase} deploy already finished on {}; it continues on {}",
        finished.join(", "),
        if left.is_empty() {
            "no other node".to_string()
        } else {
            left.join(", ")
        }
    ));
    *nodes = left;
}

fn deploy_config(step: &Step) -> Option<Config> {
    match &step.action {
        Action::Deploy { config, .. } => Some(config.clone()),
        _ => None,
    }
}

fn list_phases(done: &std::collections::BTreeSet<Phase>) -> String {
    if done.is_empty() {
        return "nothing".to_string();
    }
    done.iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn kind_from_record(kind: &str) -> PlanKind {
    [
        PlanKind::Enable,
        PlanKind::Disable,
        PlanKind::Rotate,
        PlanKind::ManagedToCustom,
        PlanKind::CustomToManaged,
        PlanKind::CustomEdit,
        PlanKind::DeployOnly,
        PlanKind::Repair,
    ]
    .into_iter()
    .find(|k| k.as_str() == kind)
    .unwrap_or(PlanKind::CustomEdit)
}

fn classify(
    from: &Config,
    from_source: Option<ConfigSource>,
    desired: &Target,
    intent: Intent,
    seq: &Sequence,
) -> PlanKind {
    match (from, desired.config()) {
        (None, Some(_)) => return PlanKind::Enable,
        (Some(_), None) => return PlanKind::Disable,
        _ => {}
    }
    if intent == Intent::RotateKey {
        return PlanKind::Rotate;
    }
    if seq.rewrite.is_empty() {
        return PlanKind::DeployOnly;
    }
    match (from_source, desired.source()) {
        (Some(ConfigSource::Managed), Some(ConfigSource::Custom)) => PlanKind::ManagedToCustom,
        (Some(ConfigSource::Custom), Some(ConfigSource::Managed)) => PlanKind::CustomToManaged,
        (Some(ConfigSource::Managed), Some(ConfigSource::Managed)) => PlanKind::Rotate,
        _ => PlanKind::CustomEdit,
    }
}

/// The configs a node may legitimately have right now, and the one a drifted node gets back: the config deployed,
/// or the deploy about to run.
struct Expected {
    now: Vec<Config>,
    restore: Config,
}

/// Drifted nodes (observed hash not among the expected ones) get an expected config back before anything else.
fn add_drift_repair(
    input: &PlanInput,
    expected: &Expected,
    stage: Stage,
    phase: Phase,
    transitions: &mut Vec<TransitionSpec>,
    steps: &mut Vec<Step>,
    notes: &mut Vec<String>,
) {
    let Some(hash) = input.config_hash else {
        return;
    };
    if input.observed.nodes.is_empty() {
        return;
    }
    let restore = expected.restore.clone();
    let expected: Vec<Option<String>> = expected.now.iter().map(|c| hash(c.as_ref())).collect();
    let drifted: Vec<String> = input
        .observed
        .nodes
        .iter()
        .filter(|n| !expected.contains(&n.config_sha256))
        .map(|n| n.node.clone())
        .collect();
    if drifted.is_empty() {
        return;
    }
    notes.push(format!(
        "node(s) {} have an encryption config that differs from what the state says is deployed; it is \
         redeployed on them first (data a drifted server wrote with a unit atrest does not know would need a \
         census to find)",
        drifted.join(", ")
    ));
    if transitions.is_empty() {
        transitions.push(TransitionSpec {
            kind: PlanKind::Repair,
            from: restore.clone(),
            to: restore.clone(),
            resumed_at: None,
        });
        steps.push(Step {
            transition: 0,
            phase: Phase::Finish,
            stage: Stage::Start,
            action: Action::PersistStage { complete: true },
        });
    }
    let at = usize::from(matches!(
        steps.first().map(|s| &s.action),
        Some(Action::Snapshot)
    ));
    let flag = if restore.is_some() {
        Flag::Add
    } else {
        Flag::Remove
    };
    steps.insert(
        at,
        Step {
            transition: 0,
            phase,
            stage,
            action: Action::Deploy {
                config: restore,
                flag,
                nodes: drifted,
                reload: Vec::new(),
            },
        },
    );
}

/// Picks each node's [`DeployMode`], walking the steps in order. A node reloads a deploy that keeps the
/// `--encryption-provider-config` flag when its kube-apiserver runs with automatic reload by then: observed so, or
/// restarted/recreated earlier in this plan while cluster.yml asks for reload (the executor adds the flag to
/// every container it recreates or restarts then). Adding or removing the config flag always recreates the
/// container (and a removal drops the reload flag with it: kube-apiserver refuses it without a config).
/// The notes count the restarts left and, when cluster.yml does not ask for reload, say how to lose them.
pub(crate) fn assign_deploy_modes(
    reloading: &[String],
    reload_wanted: bool,
    steps: &mut [Step],
    notes: &mut Vec<String>,
) {
    let mut on: std::collections::BTreeSet<String> = reloading.iter().cloned().collect();
    let (mut restarts, mut recreates) = (0usize, 0usize);
    let mut reloads = 0usize;
    for step in steps.iter_mut() {
        let Action::Deploy {
            flag,
            nodes,
            reload,
            ..
        } = &mut step.action
        else {
            continue;
        };
        match flag {
            Flag::Keep => {
                *reload = nodes.iter().filter(|n| on.contains(*n)).cloned().collect();
                restarts += nodes.len() - reload.len();
                reloads += reload.len();
                if reload_wanted {
                    on.extend(nodes.iter().cloned());
                }
            }
            Flag::Add => {
                reload.clear();
                recreates += nodes.len();
                if reload_wanted {
                    on.extend(nodes.iter().cloned());
                }
            }
            Flag::Remove => {
                reload.clear();
                recreates += nodes.len();
                for n in nodes.iter() {
                    on.remove(n);
                }
            }
        }
    }
    if restarts + recreates + reloads == 0 {
        return;
    }
    let mut line = format!(
        "kube-apiserver restarts: {restarts}, recreates: {recreates}, reloads without restart: {reloads}"
    );
    if restarts > 0 && !reload_wanted {
        line.push_str(&format!(
            "; with `services.kube-api.extra_args: {{encryption-provider-config-automatic-reload: \"true\"}}` in \
             cluster.yml each kube-apiserver (1.26+) would load a new file itself: the {restarts} restart(s) \
             would become reloads (the first deploy recreates each server once to add the flag)"
        ));
    }
    notes.push(line);
}

/// A stable hash of a config for tests and for callers without a renderer: sha256 of its JSON form.
/// (The executor should hash the exact bytes it deploys instead.)
pub fn json_config_hash(config: Option<&EncryptionConfiguration>) -> Option<String> {
    use sha2::{Digest, Sha256};
    let config = config?;
    let json = serde_json::to_vec(config).unwrap_or_default();
    Some(hex::encode(Sha256::digest(json)))
}
