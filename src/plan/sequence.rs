//! The transition algorithm: from O (deployed) and N (desired) derive P (prepare), R (rotate), what to rewrite,
//! what to verify and what to retire. See docs/design.md for why each phase exists.

use super::stage::{Phase, Stage};
use super::types::{Action, Flag, PlanError, RewriteTarget, Step, VerifyRule};
use super::units::{RuleKey, Rules, Unit, UnitId, effective, merge};
use crate::config::encryption::EncryptionConfiguration;
use std::collections::{BTreeMap, BTreeSet};

type Config = Option<EncryptionConfiguration>;

/// Everything one O → N transition needs, before it is cut into steps.
#[derive(Clone, Debug)]
pub(crate) struct Sequence {
    pub from: Config,
    pub to: Config,
    /// The config of the prepare deploy (`== from` when there is none).
    pub prepare: Config,
    /// The config of the rotate deploy (`== prepare` when there is none).
    pub rotate: Config,
    pub rewrite: Vec<RewriteTarget>,
    pub verify: Vec<VerifyRule>,
    pub retired: Vec<Unit>,
    /// Why phases were left out, for the plan's notes.
    pub notes: Vec<String>,
}

fn rules_of(config: &Config) -> Option<Rules> {
    config.as_ref().map(Rules::from_config)
}

fn union_keys(a: &Option<Rules>, b: &Option<Rules>) -> Vec<RuleKey> {
    let mut keys = BTreeSet::new();
    for rules in [a, b].into_iter().flatten() {
        keys.extend(rules.0.keys().cloned());
    }
    keys.into_iter().collect()
}

/// Whether `wider` reads everything `narrower` reads, for every resource (a config that adds keys, or a
/// prepare/rotate config over the one before it; not a finish config, which drops keys).
pub fn reads_all(wider: &Config, narrower: &Config) -> bool {
    let (w, n) = (rules_of(wider), rules_of(narrower));
    union_keys(&w, &n).iter().all(|key| {
        let readable: BTreeSet<UnitId> =
            effective(w.as_ref(), key).iter().map(|u| u.id()).collect();
        effective(n.as_ref(), key)
            .iter()
            .all(|u| readable.contains(&u.id()))
    })
}

/// The effective unit list of every key: two configs with equal semantics read and write alike.
fn semantics(rules: Option<&Rules>, keys: &[RuleKey]) -> Vec<Vec<Unit>> {
    keys.iter().map(|k| effective(rules, k)).collect()
}

/// Refuses a plan in which one unit id stands for two different keys (or kms endpoints).
pub(crate) fn check_key_reuse(configs: &[&Config]) -> Result<(), PlanError> {
    let mut seen: BTreeMap<UnitId, Unit> = BTreeMap::new();
    for config in configs {
        if let Some(rules) = rules_of(config) {
            for unit in rules.all_units() {
                match seen.get(&unit.id()) {
                    Some(prior) if prior.conflicts_with(unit) => {
                        let (provider, name) = match unit.id() {
                            UnitId::Key { provider, name } => (provider.as_str().to_string(), name),
                            UnitId::Kms { api_version, name } => {
                                (format!("kms {api_version}"), name)
                            }
                            UnitId::Identity => ("identity".to_string(), String::new()),
                        };
                        return Err(PlanError::KeyNameReused { provider, name });
                    }
                    Some(_) => {}
                    None => {
                        seen.insert(unit.id(), unit.clone());
                    }
                }
            }
        }
    }
    Ok(())
}

/// Refuses when a census shows objects no involved config can read.
pub(crate) fn check_census(
    census: &BTreeMap<String, BTreeMap<String, u64>>,
    configs: &[&Config],
) -> Result<(), PlanError> {
    let rules: Vec<Option<Rules>> = configs.iter().map(|c| rules_of(c)).collect();
    let mut findings = Vec::new();
    for (resource, labels) in census {
        let key = RuleKey::parse(resource);
        let readable: BTreeSet<UnitId> = rules
            .iter()
            .flat_map(|r| effective(r.as_ref(), &key))
            .map(|u| u.id())
            .collect();
        for (label, count) in labels {
            if *count == 0 {
                continue;
            }
            match UnitId::parse_label(label) {
                None => findings.push(format!("{resource}: {count} object(s) stored with unknown `{label}`")),
                Some(id) if !readable.contains(&id) => findings.push(format!(
                    "{resource}: {count} object(s) stored with `{label}`, which neither the deployed nor the \
                     desired config has"
                )),
                Some(_) => {}
            }
        }
    }
    if findings.is_empty() {
        Ok(())
    } else {
        Err(PlanError::StoredDataUnreadable { findings })
    }
}

/// Computes the transition O → N. `multi`: more than one controlplane (single: P is skipped, R deployed
/// directly, which is safe because one server flips atomically).
pub(crate) fn sequence(from: &Config, to: &Config, multi: bool) -> Result<Sequence, PlanError> {
    let o = rules_of(from);
    let n = rules_of(to);
    let keys = union_keys(&o, &n);
    let mut p_rules = Rules::default();
    let mut r_rules = Rules::default();
    let mut rewrite = Vec::new();
    let mut verify = Vec::new();
    for key in &keys {
        let ok = effective(o.as_ref(), key);
        let nk = effective(n.as_ref(), key);
        p_rules.0.insert(key.clone(), merge(&ok, &nk));
        r_rules.0.insert(key.clone(), merge(&nk, &ok));
        let n_ids: Vec<UnitId> = dedup(nk.iter().map(Unit::id));
        let write = n_ids[0].clone();
        let loses_a_unit = ok.iter().any(|u| !n_ids.contains(&u.id()));
        if ok[0].id() != write || loses_a_unit {
            rewrite.push(RewriteTarget {
                resource: key.to_string(),
                write: write.clone(),
            });
        }
        verify.push(VerifyRule {
            resource: key.to_string(),
            allowed: n_ids,
            write,
        });
    }
    if rewrite.is_empty() {
        verify.clear();
    }

    let o_sem = semantics(o.as_ref(), &keys);
    let n_sem = semantics(n.as_ref(), &keys);
    let p_sem = semantics(Some(&p_rules), &keys);
    let r_sem = semantics(Some(&r_rules), &keys);
    let mut notes = Vec::new();
    // Prefer the user's own text whenever a phase config means the same as O or N.
    let prepare = if !multi {
        if p_sem != o_sem {
            notes
                .push("one controlplane: prepare and rotate collapse into one restart".to_string());
        }
        from.clone()
    } else if p_sem == o_sem {
        from.clone()
    } else if p_sem == n_sem {
        to.clone()
    } else {
        Some(p_rules.to_config())
    };
    let prepare_sem = semantics(rules_of(&prepare).as_ref(), &keys);
    let rotate = if r_sem == n_sem {
        to.clone()
    } else if r_sem == prepare_sem {
        prepare.clone()
    } else {
        Some(r_rules.to_config())
    };

    let n_all: BTreeSet<UnitId> = n.iter().flat_map(|r| r.all_units()).map(Unit::id).collect();
    let mut retired: Vec<Unit> = Vec::new();
    for unit in o.iter().flat_map(|r| r.all_units()) {
        if unit.is_key()
            && !n_all.contains(&unit.id())
            && !retired.iter().any(|u| u.id() == unit.id())
        {
            retired.push(unit.clone());
        }
    }
    for (phase, config) in [("prepare", &prepare), ("rotate", &rotate)] {
        if config != from && config != to {
            check_kms_v2_once(phase, config)?;
        }
    }
    Ok(Sequence {
        from: from.clone(),
        to: to.clone(),
        prepare,
        rotate,
        rewrite,
        verify,
        retired,
        notes,
    })
}

/// kube-apiserver rejects a kms v2 provider name that occurs in more than one provider of a config. A phase
/// config needs that when resources that must read the kms provider differ in what they write.
fn check_kms_v2_once(phase: &str, config: &Config) -> Result<(), PlanError> {
    let Some(config) = config else { return Ok(()) };
    let mut seen = BTreeSet::new();
    for entry in &config.resources {
        for provider in &entry.providers {
            if let Some(kms) = &provider.kms
                && kms.api_version.as_deref() == Some("v2")
                && !seen.insert(kms.name.clone())
            {
                return Err(PlanError::Unsupported(format!(
                    "the {phase} config of this change would need kms provider `{}` in more than one resource \
                     entry (resources that must read it write with different providers), which kube-apiserver \
                     rejects; change it in two steps: first give those resources the same providers, then \
                     switch them to kms together",
                    kms.name
                )));
            }
        }
    }
    Ok(())
}

fn dedup(ids: impl Iterator<Item = UnitId>) -> Vec<UnitId> {
    let mut out: Vec<UnitId> = Vec::new();
    for id in ids {
        if !out.contains(&id) {
            out.push(id);
        }
    }
    out
}

pub(crate) fn flag_for(previous: &Config, next: &Config) -> Flag {
    match (previous, next) {
        (None, Some(_)) => Flag::Add,
        (Some(_), None) => Flag::Remove,
        _ => Flag::Keep,
    }
}

impl Sequence {
    /// All steps of this transition, every phase, in order (without the snapshot).
    pub fn steps(&self, transition: usize, nodes: &[String]) -> Vec<Step> {
        let step = |phase, stage, action| Step {
            transition,
            phase,
            stage,
            action,
        };
        let deploy = |previous: &Config, config: &Config| Action::Deploy {
            config: config.clone(),
            flag: flag_for(previous, config),
            nodes: nodes.to_vec(),
            // Chosen per node once the whole plan is known (`assign_deploy_modes`).
            reload: Vec::new(),
        };
        let mut steps = Vec::new();
        if self.prepare != self.from {
            steps.push(step(
                Phase::Prepare,
                Stage::Prepare,
                deploy(&self.from, &self.prepare),
            ));
        }
        if self.rotate != self.prepare {
            steps.push(step(
                Phase::Rotate,
                Stage::Rotate,
                deploy(&self.prepare, &self.rotate),
            ));
        }
        if !self.rewrite.is_empty() {
            let targeted = !self
                .rewrite
                .iter()
                .any(|t| matches!(t.write, UnitId::Kms { .. }));
            steps.push(step(
                Phase::Reencrypt,
                Stage::ReencryptRequest,
                Action::PersistStage { complete: false },
            ));
            steps.push(step(
                Phase::Reencrypt,
                Stage::ReencryptActive,
                Action::Rewrite {
                    resources: self.rewrite.clone(),
                    targeted,
                },
            ));
        }
        if !self.verify.is_empty() {
            steps.push(step(
                Phase::Verify,
                Stage::ReencryptFinished,
                Action::Verify {
                    rules: self.verify.clone(),
                },
            ));
        }
        if !self.retired.is_empty() {
            steps.push(step(
                Phase::Finish,
                Stage::ReencryptFinished,
                Action::Archive {
                    units: self.retired.clone(),
                },
            ));
        }
        if self.to != self.rotate {
            steps.push(step(
                Phase::Finish,
                Stage::ReencryptFinished,
                deploy(&self.rotate, &self.to),
            ));
        }
        if !steps.is_empty() {
            steps.push(step(
                Phase::Finish,
                Stage::Start,
                Action::PersistStage { complete: true },
            ));
        }
        steps
    }
}

/// Phases a record counts as done: everything up to the furthest phase its `done` list or its stage shows
/// (a later phase done implies the earlier ones, even if a different controlplane count planned them away).
pub(crate) fn done_phases(done: &[Phase], stage: Stage) -> BTreeSet<Phase> {
    let by_stage = match stage {
        Stage::Start => None,
        Stage::Prepare => Some(Phase::Prepare),
        Stage::Rotate | Stage::ReencryptRequest | Stage::ReencryptActive => Some(Phase::Rotate),
        Stage::ReencryptFinished => Some(Phase::Verify),
    };
    let furthest = done.iter().copied().chain(by_stage).max();
    ALL_PHASES
        .iter()
        .copied()
        .filter(|p| furthest.is_some_and(|f| *p <= f))
        .collect()
}

pub(crate) const ALL_PHASES: [Phase; 5] = [
    Phase::Prepare,
    Phase::Rotate,
    Phase::Reencrypt,
    Phase::Verify,
    Phase::Finish,
];
