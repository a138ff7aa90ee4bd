//! K3s/RKE2-style single verbs (`encrypt prepare|rotate|reencrypt`), with K3s's stage preconditions.
//!
//! A stepwise rotation is the same O → N transition as [`super::plan`] plans (always with the prepare phase,
//! as K3s), cut at the verbs: prepare = the prepare phase, rotate = the rotate phase, reencrypt = rewrite,
//! verify and finish (which removes the oldest key, as K3s does) — or with `skip`, the rewrite only.

use super::sequence::{check_key_reuse, done_phases, sequence};
use super::stage::{Phase, Stage};
use super::types::*;
use super::units::{Rules, Unit};
use crate::config::encryption::EncryptionConfiguration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepwiseVerb {
    Prepare { force: bool },
    Rotate { force: bool },
    Reencrypt { force: bool, skip: bool },
}

#[derive(Clone, Debug)]
pub struct StepwiseInput {
    /// What the state says is deployed (used when no transition is recorded).
    pub current: Target,
    pub transition: Option<InProgress>,
    pub controlplanes: Vec<String>,
    /// For prepare: the freshly generated key (a [`Unit::Key`]); its provider type must be the one that writes.
    pub new_key: Option<Unit>,
    pub options: PlanOptions,
    /// As [`Observed::reloading`]: controlplanes whose kube-apiserver reloads the file by itself.
    pub reloading: Vec<String>,
    /// As [`PlanInput::reload_wanted`].
    pub reload_wanted: bool,
}

/// The plan for just one verb, or a precondition error naming the current stage. Deploys reload on the servers
/// that can (docs/reload.md), as in [`super::plan`].
pub fn stepwise(verb: StepwiseVerb, input: &StepwiseInput) -> Result<Plan, PlanError> {
    let mut plan = stepwise_steps(verb, input)?;
    super::assign_deploy_modes(
        &input.reloading,
        input.reload_wanted,
        &mut plan.steps,
        &mut plan.notes,
    );
    Ok(plan)
}

fn stepwise_steps(verb: StepwiseVerb, input: &StepwiseInput) -> Result<Plan, PlanError> {
    if input.controlplanes.is_empty() {
        return Err(PlanError::NoControlplanes);
    }
    let stage = input.transition.as_ref().map_or(Stage::Start, |t| t.stage);
    match verb {
        StepwiseVerb::Prepare { force } => {
            if !force && !matches!(stage, Stage::Start | Stage::ReencryptFinished) {
                return Err(PlanError::Precondition {
                    verb: "prepare",
                    stage,
                    hint: "prepare starts a rotation only from stage start or reencrypt_finished; finish the current \
                           one (rotate, reencrypt) or use --force"
                        .into(),
                });
            }
            prepare(input)
        }
        StepwiseVerb::Rotate { force } => {
            let record = recorded(input, "rotate", stage)?;
            if !force && stage != Stage::Prepare {
                return Err(PlanError::Precondition {
                    verb: "rotate",
                    stage,
                    hint: "rotate follows prepare; use --force to run it anyway".into(),
                });
            }
            cut(
                input,
                record,
                &[Phase::Rotate],
                Some((Stage::Rotate, false)),
            )
        }
        StepwiseVerb::Reencrypt { force, skip } => {
            let record = recorded(input, "reencrypt", stage)?;
            if !force && stage != Stage::Rotate {
                return Err(PlanError::Precondition {
                    verb: "reencrypt",
                    stage,
                    hint: "reencrypt follows rotate; use --force to run it anyway".into(),
                });
            }
            if skip {
                cut(
                    input,
                    record,
                    &[Phase::Reencrypt],
                    Some((Stage::Rotate, false)),
                )
            } else {
                cut(
                    input,
                    record,
                    &[Phase::Reencrypt, Phase::Verify, Phase::Finish],
                    Some((Stage::ReencryptFinished, true)),
                )
            }
        }
    }
}

fn recorded<'a>(
    input: &'a StepwiseInput,
    verb: &'static str,
    stage: Stage,
) -> Result<&'a InProgress, PlanError> {
    input.transition.as_ref().ok_or(PlanError::Precondition {
        verb,
        stage,
        hint: "no rotation is in progress; run prepare first".into(),
    })
}

/// The config deployed now: `current`, or for a recorded transition the last config its done phases deployed.
fn deployed_now(input: &StepwiseInput) -> Result<Option<EncryptionConfiguration>, PlanError> {
    let Some(record) = &input.transition else {
        return Ok(input.current.config().cloned());
    };
    let done = done_phases(&record.done, record.stage);
    let seq = sequence(&record.from, &record.to, true)?;
    Ok(seq
        .steps(0, &input.controlplanes)
        .iter()
        .filter(|s| done.contains(&s.phase))
        .filter_map(|s| match &s.action {
            Action::Deploy { config, .. } => Some(config.clone()),
            _ => None,
        })
        .next_back()
        .unwrap_or_else(|| record.from.clone()))
}

fn prepare(input: &StepwiseInput) -> Result<Plan, PlanError> {
    let from = deployed_now(input)?;
    let Some(from_config) = &from else {
        return Err(PlanError::Unsupported(
            "encryption is disabled: enable it before rotating keys stepwise".into(),
        ));
    };
    let Some(new_key @ Unit::Key { provider, .. }) = &input.new_key else {
        return Err(PlanError::Unsupported(
            "prepare needs a freshly generated key".into(),
        ));
    };
    let mut rules = Rules::from_config(from_config);
    let mut rotated = false;
    for units in rules.0.values_mut() {
        let run = units
            .iter()
            .take_while(|u| matches!(u, Unit::Key { provider: p, .. } if p == provider))
            .count();
        if run == 0 {
            continue;
        }
        // K3s: the new key goes first, the oldest (last) key of the writing provider leaves at the end.
        units.remove(run - 1);
        units.insert(0, new_key.clone());
        rotated = true;
    }
    if !rotated {
        return Err(PlanError::Unsupported(format!(
            "no resource in the deployed config is written by {}; a stepwise rotation replaces the writing key",
            provider.as_str()
        )));
    }
    let to = Some(rules.to_config());
    check_key_reuse(&[&from, &to])?;
    let record = InProgress {
        kind: PlanKind::Rotate.as_str().into(),
        from,
        to,
        stage: Stage::Start,
        done: vec![],
        deploying: None,
    };
    let mut plan = cut(
        input,
        &record,
        &[Phase::Prepare],
        Some((Stage::Prepare, false)),
    )?;
    plan.transitions[0].resumed_at = None;
    if !input.options.no_snapshot {
        plan.steps.insert(
            0,
            Step {
                transition: 0,
                phase: Phase::Prepare,
                stage: Stage::Start,
                action: Action::Snapshot,
            },
        );
    }
    Ok(plan)
}

/// The steps of `phases` of the recorded transition (always planned with a prepare phase), closed by
/// a PersistStage of `close`.
fn cut(
    input: &StepwiseInput,
    record: &InProgress,
    phases: &[Phase],
    close: Option<(Stage, bool)>,
) -> Result<Plan, PlanError> {
    let seq = sequence(&record.from, &record.to, true)?;
    let mut steps: Vec<Step> = seq
        .steps(0, &input.controlplanes)
        .into_iter()
        .filter(|s| {
            phases.contains(&s.phase)
                && !matches!(s.action, Action::PersistStage { complete: true })
        })
        .collect();
    if let Some((stage, complete)) = close {
        let phase = phases[phases.len() - 1];
        steps.push(Step {
            transition: 0,
            phase,
            stage,
            action: Action::PersistStage { complete },
        });
    }
    let kind = super::kind_from_record(&record.kind);
    Ok(Plan {
        kind,
        from: record.from.clone(),
        to: record.to.clone(),
        controlplanes: input.controlplanes.clone(),
        transitions: vec![TransitionSpec {
            kind,
            from: record.from.clone(),
            to: record.to.clone(),
            resumed_at: Some(record.stage),
        }],
        steps,
        notes: seq.notes,
        abandons: None,
    })
}
