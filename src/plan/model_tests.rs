//! The model check: random config changes and interruptions on a simulated cluster of k API servers, with
//! clients writing, updating and deleting objects between any two moments, servers that reload their file on
//! their own schedule, nodes that fail their health gate (rolled back, the run stops), crashes after a node's
//! change but before its record, files edited by someone else between runs (drift), and RKE between runs:
//! `rke up` adding a controlplane (it starts with the config RKE's state names) or removing one, and
//! `rke encrypt rotate-key` (a fresh key on every server, every secret rewritten). The simulator keeps RKE's
//! state as the executor does: a deploy's config is recorded as deployed before its first node when it reads
//! all the deployed one does, else once every node has it; a rewrite walks what it listed (or, targeted,
//! counted) when it started, so what is written after that is left to verify.
//!
//! Invariant at every moment: every server can read every stored object. At the end of a completed plan:
//! every server has exactly N, every object is on N's write unit, no transition is left recorded, and planning
//! again is a no-op. The `the_checker_bites_*` tests prove the checker catches a dropped, swapped or early phase,
//! a reload deploy that does not wait, a drift repair that puts back the wrong config, and a deploy recorded
//! only after its nodes.

use super::sim::{Chaos, Cluster, Outcome, Rng};
use super::stage::Phase;
use super::units::{KeyProvider, RuleKey, Rules, Unit, key_unit};
use super::*;
use crate::config::encryption::KmsConfiguration;
use proptest::prelude::*;
use std::collections::BTreeMap;

/// The unit pool. A name always comes with the same secret, so generated configs never reuse a name.
fn pool() -> Vec<Unit> {
    vec![
        Unit::Identity,
        key_unit(KeyProvider::Aescbc, "a", "YWFhYQ=="),
        key_unit(KeyProvider::Aescbc, "b", "YmJiYg=="),
        key_unit(KeyProvider::Aesgcm, "c", "Y2NjYw=="),
        key_unit(KeyProvider::Secretbox, "d", "ZGRkZA=="),
        Unit::Kms(KmsConfiguration {
            api_version: Some("v2".into()),
            name: "vault".into(),
            endpoint: "unix:///run/kms.sock".into(),
            ..Default::default()
        }),
    ]
}

const RULES: [&str; 6] = [
    "secrets",
    "configmaps",
    "deployments.apps",
    "*.apps",
    "*.",
    "*.*",
];

/// A random provider list; a kms provider at most once per config (kube-apiserver rejects a kms v2 name twice).
fn random_units(rng: &mut Rng, kms_used: &mut bool) -> Vec<Unit> {
    let mut pool = pool();
    if *kms_used {
        pool.retain(|u| !matches!(u, Unit::Kms(_)));
    }
    let len = 1 + rng.below(3);
    let mut units = Vec::new();
    for _ in 0..len {
        let unit = pool.remove(rng.below(pool.len()));
        *kms_used |= matches!(unit, Unit::Kms(_));
        units.push(unit);
    }
    units
}

fn random_target(rng: &mut Rng) -> Target {
    match rng.below(10) {
        0 | 1 => Target::Disabled,
        2..=4 => {
            let key = pool().remove(1 + rng.below(2));
            let mut rules = BTreeMap::new();
            rules.insert(RuleKey::parse("secrets"), vec![key, Unit::Identity]);
            Target::Managed(Rules(rules).to_config())
        }
        _ => {
            let mut rules = BTreeMap::new();
            let mut kms_used = false;
            for _ in 0..1 + rng.below(3) {
                let key = RuleKey::parse(RULES[rng.below(RULES.len())]);
                rules
                    .entry(key)
                    .or_insert_with(|| random_units(rng, &mut kms_used));
            }
            Target::Custom(Rules(rules).to_config())
        }
    }
}

fn input(cluster: &Cluster, desired: &Target, rng: &mut Rng, observe_nodes: bool) -> PlanInput {
    let mut input = PlanInput::new(desired.clone(), cluster.current.clone(), cluster.names());
    input.transition = cluster.record.clone();
    if rng.chance(50) {
        input.observed.census = Some(cluster.census());
    }
    // Observed node configs let a resumed deploy skip the nodes it finished, and show drift.
    if observe_nodes || rng.chance(50) {
        input.config_hash = Some(json_config_hash);
        input.observed.nodes = cluster
            .servers
            .iter()
            .map(|s| NodeObservation {
                node: s.name.clone(),
                config_sha256: json_config_hash(s.config.as_ref()),
            })
            .collect();
    }
    input.options.no_snapshot = rng.chance(30);
    // The containers' reload flag is always observed (docker inspect), like the executor does.
    input.observed.reloading = cluster.reloading();
    input.reload_wanted = cluster.reload_wanted;
    input
}

/// Runs one scenario; returns a description of the first failure.
fn scenario(seed: u64, servers: usize, rounds: usize) -> Result<(), String> {
    scenario_mutated(seed, servers, rounds, |_| {})
}

/// [`scenario`] on a cluster `mutate` changed first (the `the_checker_bites_*` tests).
fn scenario_mutated(
    seed: u64,
    servers: usize,
    rounds: usize,
    mutate: impl Fn(&mut Cluster),
) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let mut chaos = Chaos::Random(Rng::new(seed.rotate_left(17)));
    let mut cluster = Cluster::new(servers, random_target(&mut rng));
    cluster.faults = Some(Rng::new(seed.rotate_left(29)));
    mutate(&mut cluster);
    let mut drifted = false;
    // Some servers already reload (only possible with a config); cluster.yml may ask for reload or not.
    let has_config = cluster.current.config().is_some();
    for server in &mut cluster.servers {
        server.reload = has_config && rng.chance(50);
    }
    cluster.reload_wanted = rng.chance(50);
    let mut desired = random_target(&mut rng);
    for round in 0..=rounds {
        if round > 0 && rng.chance(60) {
            desired = random_target(&mut rng);
        }
        // RKE between runs: `rke up` with a controlplane added or removed, `rke encrypt rotate-key`.
        if round > 0 {
            if rng.chance(8) && cluster.servers.len() < 5 {
                cluster.add_controlplane();
            }
            if rng.chance(8) {
                let server = rng.below(cluster.servers.len());
                cluster.remove_controlplane(server);
            }
            // A managed cluster.yml keeps the deployed managed config's keys (flows::targets::desired_target).
            if rng.chance(8) && cluster.rke_rotate_key() && matches!(desired, Target::Managed(_)) {
                desired = cluster.current.clone();
            }
        }
        // Someone edits a server's file between runs (the executor always observes the nodes then).
        if rng.chance(15) {
            let server = rng.below(cluster.servers.len());
            cluster.drift(server);
            drifted = true;
        }
        let mut attempt = plan(&input(&cluster, &desired, &mut rng, drifted));
        // A change that would need one kms provider in two entries is refused by design: pick another.
        for _ in 0..50 {
            let Err(PlanError::Unsupported(why)) = &attempt else {
                break;
            };
            if !why.contains("kms provider") {
                break;
            }
            desired = random_target(&mut rng);
            attempt = plan(&input(&cluster, &desired, &mut rng, drifted));
        }
        let p = attempt.map_err(|e| format!("round {round}: refused: {e}"))?;
        let last = round == rounds;
        let stop = if last || rng.chance(30) {
            None
        } else {
            Some(1 + rng.below(3 * p.steps.len() + 4))
        };
        match cluster.run(&p, stop, &mut chaos) {
            Outcome::Completed => {
                drifted = false;
                cluster
                    .check_final(&desired.config().cloned())
                    .map_err(|e| format!("round {round}: {e}"))?;
                if cluster.record.is_some() {
                    return Err(format!(
                        "round {round}: transition still recorded after completion"
                    ));
                }
                let again =
                    plan(&input(&cluster, &desired, &mut rng, true)).map_err(|e| e.to_string())?;
                if !again.is_noop() {
                    return Err(format!(
                        "round {round}: replanning after completion is not a noop: {again:?}"
                    ));
                }
            }
            Outcome::Interrupted => {}
            Outcome::VerifyFailed(e) => return Err(format!("round {round}: verify failed: {e}")),
            Outcome::Violation(e) => {
                return Err(format!(
                    "round {round}: invariant broken: {e}\nplan:\n{}",
                    render::to_text(&p)
                ));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn every_server_can_always_read_every_object(seed in any::<u64>(), servers in 1usize..5, rounds in 0usize..5) {
        if let Err(e) = scenario(seed, servers, rounds) {
            prop_assert!(false, "seed {seed}, {servers} server(s), {rounds} round(s): {e}");
        }
    }
}

/// Found by the wider model (RKE between runs): a change on one controlplane stops after the node changed but
/// before its record; then `rke up` replaces that controlplane. The new one runs what RKE's state names, which
/// could not read what the old node wrote. Now the executor records a config that reads more as deployed before
/// its first node changes. (The same case made the plan drop the record as "changed nothing", and with it the
/// only copy of the new key: plan/tests.rs `a_transition_that_changed_nothing_is_dropped_…` keeps that.)
#[test]
fn a_controlplane_added_after_an_unrecorded_change_can_read_everything() {
    assert_eq!(scenario(2_686_388_945_625_491_334, 1, 1), Ok(()));
}

#[test]
fn the_checker_bites_when_a_deploy_is_recorded_only_after_its_nodes() {
    let late = scenario_mutated(2_686_388_945_625_491_334, 1, 1, |c| {
        c.record_deploys_late = true;
    });
    assert!(
        late.as_ref()
            .is_err_and(|e| e.contains("invariant broken") && e.contains("cannot read")),
        "{late:?}"
    );
}

/// A found case (seed from a CI run): a disable interrupted before it changed anything, then cluster.yml goes
/// back to the deployed config. The plan only drops the record, and a completed run must leave none.
#[test]
fn an_abandoned_transition_leaves_no_record() {
    assert_eq!(scenario(4_573_551_652_452_764_198, 3, 1), Ok(()));
}

/// Runs `plan` after applying `mutate`, with every server writing at every moment.
fn run_mutated(o: &Target, n: &Target, servers: usize, mutate: impl Fn(&mut Plan)) -> Outcome {
    let mut cluster = Cluster::new(servers, o.clone());
    let mut p = plan(&PlanInput::new(n.clone(), o.clone(), cluster.names())).expect("plan");
    mutate(&mut p);
    cluster.run(&p, None, &mut Chaos::EveryServerWrites)
}

fn transitions_that_change_the_writer() -> Vec<(Target, Target)> {
    let managed = |unit: Unit| {
        let mut rules = BTreeMap::new();
        rules.insert(RuleKey::parse("secrets"), vec![unit, Unit::Identity]);
        Target::Managed(Rules(rules).to_config())
    };
    let (a, b) = (pool().remove(1), pool().remove(2));
    vec![
        (Target::Disabled, managed(a.clone())),
        (managed(a.clone()), managed(b)),
        (managed(a), Target::Disabled),
    ]
}

#[test]
fn the_checker_bites_when_prepare_is_dropped_or_swapped() {
    for (o, n) in transitions_that_change_the_writer() {
        // The unmutated plan is fine on 3 servers.
        assert_eq!(run_mutated(&o, &n, 3, |_| {}), Outcome::Completed);
        let has_prepare = plan(&PlanInput::new(
            n.clone(),
            o.clone(),
            vec!["a".into(), "b".into()],
        ))
        .expect("plan")
        .steps
        .iter()
        .any(|s| s.phase == Phase::Prepare && matches!(s.action, Action::Deploy { .. }));
        if has_prepare {
            // RKE's flaw: skipping prepare makes the first restarted server write what the others cannot read.
            let dropped = run_mutated(&o, &n, 3, |p| {
                p.steps.retain(|s| {
                    !(s.phase == Phase::Prepare && matches!(s.action, Action::Deploy { .. }))
                })
            });
            assert!(
                matches!(dropped, Outcome::Violation(_)),
                "{o:?} → {n:?}: dropping prepare went unnoticed"
            );
            let swapped = run_mutated(&o, &n, 3, |p| {
                let i = p.steps.iter().position(|s| {
                    s.phase == Phase::Prepare && matches!(s.action, Action::Deploy { .. })
                });
                let j = p.steps.iter().position(|s| {
                    s.phase == Phase::Rotate && matches!(s.action, Action::Deploy { .. })
                });
                if let (Some(i), Some(j)) = (i, j) {
                    p.steps.swap(i, j);
                }
            });
            assert!(
                matches!(swapped, Outcome::Violation(_)),
                "{o:?} → {n:?}: swapping prepare/rotate went unnoticed"
            );
        } else {
            // Disable: R ([identity, aescbc]) needs no prepare; dropping the rotate phase instead must bite.
            let dropped = run_mutated(&o, &n, 3, |p| {
                p.steps.retain(|s| {
                    !(s.phase == Phase::Rotate && matches!(s.action, Action::Deploy { .. }))
                })
            });
            assert!(
                !matches!(dropped, Outcome::Completed),
                "{o:?} → {n:?}: dropping rotate went unnoticed"
            );
        }
        // A single server never mixes configs, so the collapsed plan is safe there.
        assert_eq!(run_mutated(&o, &n, 1, |_| {}), Outcome::Completed);
    }
}

#[test]
fn the_checker_bites_when_finish_comes_before_the_rewrite() {
    for (o, n) in transitions_that_change_the_writer() {
        let outcome = run_mutated(&o, &n, 2, |p| {
            let finish = p.steps.iter().position(|s| {
                s.phase == Phase::Finish && matches!(s.action, Action::Deploy { .. })
            });
            let rewrite = p
                .steps
                .iter()
                .position(|s| matches!(s.action, Action::Rewrite { .. }));
            if let (Some(f), Some(r)) = (finish, rewrite) {
                let step = p.steps.remove(f);
                p.steps.insert(r, step);
            }
        });
        let has_finish_deploy = plan(&PlanInput::new(
            n.clone(),
            o.clone(),
            vec!["a".into(), "b".into()],
        ))
        .expect("plan")
        .steps
        .iter()
        .any(|s| s.phase == Phase::Finish && matches!(s.action, Action::Deploy { .. }));
        if has_finish_deploy {
            assert!(
                !matches!(outcome, Outcome::Completed),
                "{o:?} → {n:?}: early finish went unnoticed"
            );
        }
    }
}

/// Reload deploys keep the HA-safety only because the executor waits until every server loaded a phase's file
/// before the next phase: without the wait, a fast server loads the rotate file while a slow one still runs O.
#[test]
fn the_checker_bites_when_a_reload_deploy_does_not_wait() {
    let (o, n) = transitions_that_change_the_writer().remove(1);
    let run = |skip_wait: bool| {
        let mut cluster = Cluster::new(3, o.clone());
        for server in &mut cluster.servers {
            server.reload = true;
        }
        cluster.reload_wanted = true;
        cluster.reload_without_wait = skip_wait;
        let mut input = PlanInput::new(n.clone(), o.clone(), cluster.names());
        input.observed.reloading = cluster.reloading();
        input.reload_wanted = true;
        let p = plan(&input).expect("plan");
        let reloads = p
            .steps
            .iter()
            .filter(|s| matches!(&s.action, Action::Deploy { reload, .. } if reload.len() == 3))
            .count();
        assert_eq!(reloads, 3, "prepare, rotate and finish all reload");
        let outcome = cluster.run(&p, None, &mut Chaos::EveryServerWrites);
        if outcome == Outcome::Completed {
            cluster
                .check_final(&n.config().cloned())
                .map_err(|e| e.to_string())
        } else {
            Err(format!("{outcome:?}"))
        }
    };
    assert_eq!(run(false), Ok(()));
    let broken = run(true).expect_err("a reload without the wait must break the invariant");
    assert!(
        broken.contains("Violation") && broken.contains("cannot read"),
        "{broken}"
    );
}

/// Found by the wider model (drift between runs): a drift repair interrupted after its deploy, before it was
/// recorded complete. Its config is its `from`, so it has no phase of its own left: the next plan used to be a
/// no-op that left it recorded for good; now it closes it.
#[test]
fn an_interrupted_drift_repair_is_closed_by_the_next_run() {
    assert_eq!(scenario(4_772_735_131_560_617_008, 3, 2), Ok(()));
}

/// Drift repair mid-transition: an enable on one server stops right after its deploy (the server now writes with
/// the new key), then someone edits its file. The plan puts the config of the deploy under way back on it; a
/// plan that put back the last completed config (none) would make what the server wrote unreadable.
#[test]
fn the_checker_bites_when_a_drift_repair_puts_back_the_last_completed_config() {
    let (o, n) = transitions_that_change_the_writer().remove(0);
    let run = |mutate: bool| {
        let mut cluster = Cluster::new(1, o.clone());
        let first = plan(&PlanInput::new(n.clone(), o.clone(), cluster.names())).expect("plan");
        // Snapshot, the deploy to the one server, then interrupted.
        assert_eq!(
            cluster.run(&first, Some(2), &mut Chaos::EveryServerWrites),
            Outcome::Interrupted
        );
        cluster.drift(0);
        let mut input = PlanInput::new(n.clone(), cluster.current.clone(), cluster.names());
        input.transition = cluster.record.clone();
        input.config_hash = Some(json_config_hash);
        input.observed.nodes = vec![NodeObservation {
            node: "cp1".into(),
            config_sha256: json_config_hash(cluster.servers[0].config.as_ref()),
        }];
        let mut p = plan(&input).expect("plan");
        assert!(
            p.notes.iter().any(|note| note.contains("differs")),
            "{:?}",
            p.notes
        );
        if mutate
            && let Some(Action::Deploy { config, .. }) = p.steps.first_mut().map(|s| &mut s.action)
        {
            *config = o.config().cloned();
        }
        cluster.run(&p, None, &mut Chaos::EveryServerWrites)
    };
    assert_eq!(run(false), Outcome::Completed);
    assert!(
        matches!(run(true), Outcome::Violation(ref e) if e.contains("cannot read")),
        "putting back the last completed config went unnoticed"
    );
}
