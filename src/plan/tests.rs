//! Unit tests: one per kind of transition, each resume point, single vs. multiple controlplanes, stepwise
//! verbs, rendering. The model check lives in `model_tests.rs`.

use super::sim::{Chaos, Cluster, Outcome};
use super::stage::{Phase, Stage};
use super::units::{KeyProvider, RuleKey, Rules, UnitId, effective, key_unit};
use super::*;
use crate::config::encryption::EncryptionConfiguration;
use crate::state::atrest::{DeployProgress, TransitionRecord};
use std::collections::BTreeMap;

fn yaml(text: &str) -> EncryptionConfiguration {
    serde_yaml_ng::from_str(text).expect("test config parses")
}

/// The managed config: secrets only, `[aescbc{keys}, identity]`.
fn managed(keys: &[&str]) -> Target {
    let keys: Vec<String> = keys
        .iter()
        .map(|k| format!("{{name: {k}, secret: c2VjcmV0LXtrfQ=={k}}}"))
        .collect();
    Target::Managed(yaml(&format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  \
         providers:\n  - aescbc: {{keys: [{}]}}\n  - identity: {{}}\n",
        keys.join(", ")
    )))
}

fn custom(text: &str) -> Target {
    Target::Custom(yaml(text))
}

fn nodes(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("cp{i}")).collect()
}

/// A config as `rule=[unit, …]` per rule, for compact assertions.
fn sem(config: &Option<EncryptionConfiguration>) -> String {
    let Some(config) = config else {
        return "none".into();
    };
    let rules = Rules::from_config(config);
    rules
        .0
        .iter()
        .map(|(k, units)| {
            let ids: Vec<String> = units.iter().map(|u| u.id().label()).collect();
            format!("{k}=[{}]", ids.join(","))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The plan's steps, one short string each.
fn summary(plan: &Plan) -> Vec<String> {
    plan.steps
        .iter()
        .map(|s| {
            let what = match &s.action {
                Action::Snapshot => "snapshot".to_string(),
                Action::Deploy {
                    config,
                    flag,
                    nodes,
                    ..
                } => {
                    format!(
                        "deploy{}:{:?}:{}",
                        if nodes.len() < plan.controlplanes.len() {
                            format!("@{}", nodes.join(","))
                        } else {
                            String::new()
                        },
                        flag,
                        sem(config)
                    )
                }
                Action::Rewrite { resources, .. } => {
                    let list: Vec<String> = resources
                        .iter()
                        .map(|t| format!("{}->{}", t.resource, t.write))
                        .collect();
                    format!("rewrite:{}", list.join(","))
                }
                Action::Verify { .. } => "verify".into(),
                Action::Archive { units } => {
                    let list: Vec<String> = units.iter().map(|u| u.id().label()).collect();
                    format!("archive:{}", list.join(","))
                }
                Action::PersistStage { complete } => {
                    format!("persist{}", if *complete { ":complete" } else { "" })
                }
            };
            format!("{}/{}: {what}", s.phase, s.stage)
        })
        .collect()
}

fn run_plan(desired: Target, current: Target, cps: usize) -> Plan {
    plan(&PlanInput::new(desired, current, nodes(cps))).expect("plan")
}

/// Runs the plan on a simulated cluster with every server writing at every moment; asserts it ends exactly at N.
fn simulate(plan: &Plan, desired: &Target, current: &Target, cps: usize) {
    let mut cluster = Cluster::new(cps, current.clone());
    assert_eq!(
        cluster.run(plan, None, &mut Chaos::EveryServerWrites),
        Outcome::Completed
    );
    cluster
        .check_final(&desired.config().cloned())
        .expect("final state");
}

#[test]
fn enable_on_an_existing_cluster_with_three_controlplanes() {
    let n = managed(&["k1"]);
    let p = run_plan(n.clone(), Target::Disabled, 3);
    assert_eq!(p.kind, PlanKind::Enable);
    assert_eq!(
        summary(&p),
        [
            "prepare/start: snapshot",
            "prepare/prepare: deploy:Add:secrets=[identity,aescbc:k1]",
            "rotate/rotate: deploy:Keep:secrets=[aescbc:k1,identity]",
            "reencrypt/reencrypt_request: persist",
            "reencrypt/reencrypt_active: rewrite:secrets->aescbc:k1",
            "verify/reencrypt_finished: verify",
            "finish/start: persist:complete",
        ]
    );
    // R equals N, so the rotate deploy is the user's own config, and no finish restart is needed.
    assert!(
        matches!(&p.steps[2].action, Action::Deploy { config, .. } if config.as_ref() == n.config())
    );
    simulate(&p, &n, &Target::Disabled, 3);
}

#[test]
fn enable_with_one_controlplane_deploys_n_directly() {
    let n = managed(&["k1"]);
    let p = run_plan(n.clone(), Target::Disabled, 1);
    assert_eq!(
        summary(&p)[..3],
        [
            "rotate/start: snapshot",
            "rotate/rotate: deploy:Add:secrets=[aescbc:k1,identity]",
            "reencrypt/reencrypt_request: persist"
        ]
    );
    assert!(p.notes.iter().any(|n| n.contains("one controlplane")));
    simulate(&p, &n, &Target::Disabled, 1);
}

#[test]
fn enable_without_identity_fallback_needs_a_finish_restart() {
    let n = custom(
        "resources:\n- resources: [secrets]\n  providers:\n  - aesgcm: {keys: [{name: g1, secret: Zw==}]}\n",
    );
    let p = run_plan(n.clone(), Target::Disabled, 2);
    assert_eq!(
        summary(&p)[1..],
        [
            "prepare/prepare: deploy:Add:secrets=[identity,aesgcm:g1]",
            "rotate/rotate: deploy:Keep:secrets=[aesgcm:g1,identity]",
            "reencrypt/reencrypt_request: persist",
            "reencrypt/reencrypt_active: rewrite:secrets->aesgcm:g1",
            "verify/reencrypt_finished: verify",
            "finish/reencrypt_finished: deploy:Keep:secrets=[aesgcm:g1]",
            "finish/start: persist:complete",
        ]
    );
    simulate(&p, &n, &Target::Disabled, 2);
}

#[test]
fn disable_rewrites_to_plaintext_then_removes_file_and_flag() {
    let o = managed(&["k1"]);
    let p = run_plan(Target::Disabled, o.clone(), 3);
    assert_eq!(p.kind, PlanKind::Disable);
    assert_eq!(
        summary(&p),
        [
            "rotate/start: snapshot",
            "rotate/rotate: deploy:Keep:secrets=[identity,aescbc:k1]",
            "reencrypt/reencrypt_request: persist",
            "reencrypt/reencrypt_active: rewrite:secrets->identity",
            "verify/reencrypt_finished: verify",
            "finish/reencrypt_finished: archive:aescbc:k1",
            "finish/reencrypt_finished: deploy:Remove:none",
            "finish/start: persist:complete",
        ]
    );
    simulate(&p, &Target::Disabled, &o, 3);
}

#[test]
fn managed_rotation_matches_k3s_key_order() {
    let (o, n) = (managed(&["old"]), managed(&["new"]));
    let mut input = PlanInput::new(n.clone(), o.clone(), nodes(3));
    input.intent = Intent::RotateKey;
    let p = plan(&input).expect("plan");
    assert_eq!(p.kind, PlanKind::Rotate);
    assert_eq!(
        summary(&p)[1..],
        [
            "prepare/prepare: deploy:Keep:secrets=[aescbc:old,aescbc:new,identity]",
            "rotate/rotate: deploy:Keep:secrets=[aescbc:new,aescbc:old,identity]",
            "reencrypt/reencrypt_request: persist",
            "reencrypt/reencrypt_active: rewrite:secrets->aescbc:new",
            "verify/reencrypt_finished: verify",
            "finish/reencrypt_finished: archive:aescbc:old",
            "finish/reencrypt_finished: deploy:Keep:secrets=[aescbc:new,identity]",
            "finish/start: persist:complete",
        ]
    );
    // Both keys share one aescbc provider, as K3s writes it.
    let Action::Deploy {
        config: Some(prepare),
        ..
    } = &p.steps[1].action
    else {
        panic!("deploy")
    };
    assert_eq!(
        prepare.resources[0].providers[0]
            .aescbc
            .as_ref()
            .map(|k| k.keys.len()),
        Some(2)
    );
    // Without the intent, a managed → managed change with a new writer is still a rotation.
    assert_eq!(run_plan(n.clone(), o.clone(), 3).kind, PlanKind::Rotate);
    simulate(&p, &n, &o, 3);
}

#[test]
fn managed_rotation_with_one_controlplane_skips_prepare() {
    let (o, n) = (managed(&["old"]), managed(&["new"]));
    let p = run_plan(n.clone(), o.clone(), 1);
    assert_eq!(
        summary(&p)[1],
        "rotate/rotate: deploy:Keep:secrets=[aescbc:new,aescbc:old,identity]"
    );
    assert!(
        !p.steps
            .iter()
            .any(|s| s.phase == Phase::Prepare && matches!(s.action, Action::Deploy { .. }))
    );
    simulate(&p, &n, &o, 1);
}

const GCM_SECRETS_AND_CONFIGMAPS: &str = "resources:
- resources: [secrets, configmaps]
  providers:
  - aesgcm: {keys: [{name: g1, secret: Z2dn}]}
  - aescbc: {keys: [{name: k1, secret: c2VjcmV0LXtrfQ==k1}]}
  - identity: {}
";

#[test]
fn managed_to_custom_covers_a_new_resource() {
    let (o, n) = (managed(&["k1"]), custom(GCM_SECRETS_AND_CONFIGMAPS));
    let p = run_plan(n.clone(), o.clone(), 2);
    assert_eq!(p.kind, PlanKind::ManagedToCustom);
    assert_eq!(
        summary(&p)[1..5],
        [
            "prepare/prepare: deploy:Keep:configmaps=[identity,aesgcm:g1,aescbc:k1] secrets=[aescbc:k1,identity,aesgcm:g1]",
            "rotate/rotate: deploy:Keep:configmaps=[aesgcm:g1,aescbc:k1,identity] secrets=[aesgcm:g1,aescbc:k1,identity]",
            "reencrypt/reencrypt_request: persist",
            "reencrypt/reencrypt_active: rewrite:configmaps->aesgcm:g1,secrets->aesgcm:g1",
        ]
    );
    // k1 is still in N: nothing to archive.
    assert!(
        !p.steps
            .iter()
            .any(|s| matches!(s.action, Action::Archive { .. }))
    );
    simulate(&p, &n, &o, 2);
}

#[test]
fn custom_to_managed_and_custom_edit_are_named() {
    let (c, m) = (custom(GCM_SECRETS_AND_CONFIGMAPS), managed(&["k2"]));
    let p = run_plan(m.clone(), c.clone(), 3);
    assert_eq!(p.kind, PlanKind::CustomToManaged);
    assert!(
        summary(&p).contains(&"finish/reencrypt_finished: archive:aesgcm:g1,aescbc:k1".to_string())
    );
    simulate(&p, &m, &c, 3);

    let edited = custom(
        "resources:\n- resources: [secrets, configmaps]\n  providers:\n  - secretbox: {keys: [{name: s1, secret: czE=}]}\n  \
         - aesgcm: {keys: [{name: g1, secret: Z2dn}]}\n  - identity: {}\n",
    );
    let p = run_plan(edited.clone(), c.clone(), 3);
    assert_eq!(p.kind, PlanKind::CustomEdit);
    assert!(
        summary(&p).contains(
            &"reencrypt/reencrypt_active: rewrite:configmaps->secretbox:s1,secrets->secretbox:s1"
                .to_string()
        )
    );
    simulate(&p, &edited, &c, 3);
}

#[test]
fn reordering_read_only_keys_is_a_single_deploy() {
    let o = custom(
        "resources:\n- resources: [secrets]\n  providers:\n  - aescbc: {keys: [{name: a, secret: YQ==}, {name: b, secret: Yg==}, {name: c, secret: Yw==}]}\n",
    );
    let n = custom(
        "resources:\n- resources: [secrets]\n  providers:\n  - aescbc: {keys: [{name: a, secret: YQ==}, {name: c, secret: Yw==}, {name: b, secret: Yg==}]}\n",
    );
    let p = run_plan(n.clone(), o.clone(), 3);
    assert_eq!(p.kind, PlanKind::DeployOnly);
    assert_eq!(
        summary(&p),
        [
            "rotate/start: snapshot",
            "rotate/rotate: deploy:Keep:secrets=[aescbc:a,aescbc:c,aescbc:b]",
            "finish/start: persist:complete"
        ]
    );
    simulate(&p, &n, &o, 3);
}

#[test]
fn adding_a_read_only_key_is_a_single_deploy_of_n() {
    let o = managed(&["a"]);
    let n = custom(
        "resources:\n- resources: [secrets]\n  providers:\n  - aescbc: {keys: [{name: a, secret: c2VjcmV0LXtrfQ==a}, {name: b, secret: Yg==}]}\n  - identity: {}\n",
    );
    let p = run_plan(n.clone(), o.clone(), 2);
    assert_eq!(p.kind, PlanKind::DeployOnly);
    assert_eq!(
        summary(&p),
        [
            "prepare/start: snapshot",
            "prepare/prepare: deploy:Keep:secrets=[aescbc:a,aescbc:b,identity]",
            "finish/start: persist:complete"
        ]
    );
    assert!(
        matches!(&p.steps[1].action, Action::Deploy { config, .. } if config.as_ref() == n.config())
    );
    simulate(&p, &n, &o, 2);
}

#[test]
fn wildcard_everything_with_an_events_opt_out() {
    let n = custom(
        "resources:\n- resources: [events]\n  providers: [{identity: {}}]\n- resources: ['*.*']\n  providers:\n  \
         - aesgcm: {keys: [{name: g1, secret: Z2dn}]}\n  - identity: {}\n",
    );
    let p = run_plan(n.clone(), Target::Disabled, 3);
    assert_eq!(p.kind, PlanKind::Enable);
    assert_eq!(
        summary(&p)[1],
        "prepare/prepare: deploy:Add:events=[identity] *.*=[identity,aesgcm:g1]"
    );
    assert_eq!(
        summary(&p)[4],
        "reencrypt/reencrypt_active: rewrite:*.*->aesgcm:g1"
    );
    // The rendered P lists the specific rule before the wildcard (an earlier wildcard would mask it).
    let Action::Deploy {
        config: Some(prepare),
        ..
    } = &p.steps[1].action
    else {
        panic!("deploy")
    };
    assert_eq!(prepare.resources[0].resources, vec!["events"]);
    assert_eq!(prepare.resources[1].resources, vec!["*.*"]);
    simulate(&p, &n, &Target::Disabled, 3);
}

#[test]
fn group_wildcard_and_a_specific_resource_inside_it() {
    let o = custom(
        "resources:\n- resources: ['*.apps']\n  providers:\n  - aescbc: {keys: [{name: a, secret: YQ==}]}\n  - identity: {}\n",
    );
    let n = custom(
        "resources:\n- resources: [deployments.apps]\n  providers:\n  - aesgcm: {keys: [{name: g, secret: Zw==}]}\n  \
         - aescbc: {keys: [{name: a, secret: YQ==}]}\n- resources: ['*.apps']\n  providers:\n  \
         - aescbc: {keys: [{name: a, secret: YQ==}]}\n  - identity: {}\n",
    );
    let p = run_plan(n.clone(), o.clone(), 2);
    assert_eq!(p.kind, PlanKind::CustomEdit);
    // Only deployments change writer; other apps resources keep theirs and are not rewritten.
    assert_eq!(
        summary(&p)[4],
        "reencrypt/reencrypt_active: rewrite:deployments.apps->aesgcm:g"
    );
    simulate(&p, &n, &o, 2);
}

#[test]
fn resources_added_and_removed_between_o_and_n() {
    let o = custom(
        "resources:\n- resources: [secrets]\n  providers:\n  - aescbc: {keys: [{name: a, secret: YQ==}]}\n  - identity: {}\n",
    );
    let n = custom(
        "resources:\n- resources: [configmaps]\n  providers:\n  - aescbc: {keys: [{name: a, secret: YQ==}]}\n  - identity: {}\n",
    );
    let p = run_plan(n.clone(), o.clone(), 3);
    assert_eq!(
        summary(&p)[1..5],
        [
            "prepare/prepare: deploy:Keep:configmaps=[identity,aescbc:a] secrets=[aescbc:a,identity]",
            "rotate/rotate: deploy:Keep:configmaps=[aescbc:a,identity] secrets=[identity,aescbc:a]",
            "reencrypt/reencrypt_request: persist",
            "reencrypt/reencrypt_active: rewrite:configmaps->aescbc:a,secrets->identity",
        ]
    );
    let Some(Action::Verify { rules }) = p
        .steps
        .iter()
        .map(|s| &s.action)
        .find(|a| matches!(a, Action::Verify { .. }))
    else {
        panic!("verify step")
    };
    assert_eq!(
        rules
            .iter()
            .find(|r| r.resource == "secrets")
            .map(|r| r.allowed.clone()),
        Some(vec![UnitId::Identity])
    );
    simulate(&p, &n, &o, 3);
}

#[test]
fn unchanged_config_is_a_noop() {
    let o = managed(&["k1"]);
    let p = run_plan(o.clone(), o.clone(), 3);
    assert_eq!(p.kind, PlanKind::Noop);
    assert!(p.steps.is_empty() && p.transitions.is_empty());
    assert_eq!(
        run_plan(Target::Disabled, Target::Disabled, 1).kind,
        PlanKind::Noop
    );
}

#[test]
fn no_snapshot_option_and_no_controlplanes() {
    let mut input = PlanInput::new(managed(&["k1"]), Target::Disabled, nodes(2));
    input.options.no_snapshot = true;
    assert!(
        !plan(&input)
            .expect("plan")
            .steps
            .iter()
            .any(|s| s.action == Action::Snapshot)
    );
    input.controlplanes.clear();
    assert_eq!(plan(&input), Err(PlanError::NoControlplanes));
}

#[test]
fn a_key_name_reused_with_another_secret_is_refused() {
    let o = managed(&["k1"]);
    let n = custom(
        "resources:\n- resources: [secrets]\n  providers:\n  - aescbc: {keys: [{name: k1, secret: b3RoZXI=}]}\n",
    );
    let err = plan(&PlanInput::new(n, o, nodes(1))).expect_err("refused");
    assert_eq!(
        err,
        PlanError::KeyNameReused {
            provider: "aescbc".into(),
            name: "k1".into()
        }
    );
    assert!(err.to_string().contains("new name"));
}

/// A census from (resource, label, count) rows.
fn census(rows: &[(&str, &str, u64)]) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut census: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for (resource, label, count) in rows {
        census
            .entry(resource.to_string())
            .or_default()
            .insert(label.to_string(), *count);
    }
    census
}

#[test]
fn a_census_with_data_nobody_can_read_is_refused() {
    let mut input = PlanInput::new(managed(&["new"]), managed(&["old"]), nodes(3));
    let mut census = census(&[
        ("secrets", "aescbc:old", 5),
        ("secrets", "aescbc:lost", 2),
        ("configmaps", "identity", 9),
        ("configmaps", "rot13:x", 1),
    ]);
    input.observed.census = Some(census.clone());
    let Err(PlanError::StoredDataUnreadable { findings }) = plan(&input) else {
        panic!("refused")
    };
    assert_eq!(findings.len(), 2, "{findings:?}");
    assert!(
        findings
            .iter()
            .any(|f| f.contains("secrets: 2 object(s)") && f.contains("aescbc:lost"))
    );
    assert!(findings.iter().any(|f| f.contains("rot13:x")));
    // Data on N's key (an earlier interrupted attempt) is fine: P reads it.
    census.get_mut("secrets").map(|m| m.remove("aescbc:lost"));
    census
        .get_mut("secrets")
        .map(|m| m.insert("aescbc:new".into(), 1));
    census.get_mut("configmaps").map(|m| m.remove("rot13:x"));
    input.observed.census = Some(census);
    assert!(plan(&input).is_ok());
}

fn record(from: &Target, to: &Target, stage: Stage, done: &[Phase]) -> InProgress {
    InProgress {
        kind: "rotate-key".into(),
        from: from.config().cloned(),
        to: to.config().cloned(),
        stage,
        done: done.to_vec(),
        deploying: None,
    }
}

#[test]
fn an_interrupted_deploy_resumes_on_the_nodes_it_did_not_finish() {
    let (o, n) = (managed(&["old"]), managed(&["new"]));
    let hash = json_config_hash;
    let seq = super::sequence::sequence(&o.config().cloned(), &n.config().cloned(), true)
        .expect("sequence");
    let rotate_hash = hash(seq.rotate.as_ref());
    let observe = |hashes: [&Option<String>; 3]| {
        (1..=3)
            .zip(hashes)
            .map(|(i, h)| NodeObservation {
                node: format!("cp{i}"),
                config_sha256: h.clone(),
            })
            .collect::<Vec<_>>()
    };
    let prepare_hash = hash(seq.prepare.as_ref());
    let mut input = PlanInput::new(n.clone(), o.clone(), nodes(3));
    input.config_hash = Some(hash);
    let mut rec = record(&o, &n, Stage::Prepare, &[Phase::Prepare]);
    rec.deploying = Some(DeployProgress {
        phase: Phase::Rotate,
        config_sha256: rotate_hash.clone(),
        nodes: vec!["cp1".into(), "cp2".into()],
    });
    input.transition = Some(rec.clone());
    input.observed.nodes = observe([&rotate_hash, &rotate_hash, &prepare_hash]);
    let p = plan(&input).expect("plan");
    assert!(
        summary(&p)[0].starts_with("rotate/rotate: deploy@cp3:Keep:"),
        "{:?}",
        summary(&p)
    );
    assert!(
        p.notes
            .iter()
            .any(|n| n.contains("already finished on cp1, cp2; it continues on cp3")),
        "{:?}",
        p.notes
    );

    // A finished node that no longer holds the config (observed otherwise) is done again.
    input.observed.nodes = observe([&rotate_hash, &prepare_hash, &prepare_hash]);
    let p = plan(&input).expect("plan");
    assert!(summary(&p)[0].starts_with("rotate/rotate: deploy@cp2,cp3:Keep:"));

    // Without an observation of the nodes, or for another config or phase, every node is redone.
    input.observed.nodes.clear();
    let p = plan(&input).expect("plan");
    assert!(summary(&p)[0].starts_with("rotate/rotate: deploy:Keep:"));
    input.observed.nodes = observe([&rotate_hash, &rotate_hash, &prepare_hash]);
    for deploying in [
        DeployProgress {
            phase: Phase::Rotate,
            config_sha256: prepare_hash.clone(),
            nodes: vec!["cp1".into(), "cp2".into()],
        },
        DeployProgress {
            phase: Phase::Prepare,
            config_sha256: rotate_hash.clone(),
            nodes: vec!["cp1".into(), "cp2".into()],
        },
    ] {
        rec.deploying = Some(deploying);
        input.transition = Some(rec.clone());
        let p = plan(&input).expect("plan");
        assert!(summary(&p)[0].starts_with("rotate/rotate: deploy:Keep:"));
    }

    // Every node finished (interrupted before the step was recorded): the deploy remains, with no node.
    rec.deploying = Some(DeployProgress {
        phase: Phase::Rotate,
        config_sha256: rotate_hash.clone(),
        nodes: vec!["cp1".into(), "cp2".into(), "cp3".into()],
    });
    input.transition = Some(rec);
    input.observed.nodes = observe([&rotate_hash, &rotate_hash, &rotate_hash]);
    let p = plan(&input).expect("plan");
    assert!(
        summary(&p)[0].starts_with("rotate/rotate: deploy@:Keep:"),
        "{:?}",
        summary(&p)
    );
}

#[test]
fn an_interrupted_finish_deploy_resumes_on_the_nodes_it_did_not_finish_after_its_archive_step() {
    let (o, n) = (managed(&["old"]), managed(&["new"]));
    let hash = json_config_hash;
    let seq = super::sequence::sequence(&o.config().cloned(), &n.config().cloned(), true)
        .expect("sequence");
    let (rotate_hash, finish_hash) = (hash(seq.rotate.as_ref()), hash(n.config()));
    let mut input = PlanInput::new(n.clone(), o.clone(), nodes(3));
    input.config_hash = Some(hash);
    let mut rec = record(
        &o,
        &n,
        Stage::ReencryptFinished,
        &[
            Phase::Prepare,
            Phase::Rotate,
            Phase::Reencrypt,
            Phase::Verify,
        ],
    );
    rec.deploying = Some(DeployProgress {
        phase: Phase::Finish,
        config_sha256: finish_hash.clone(),
        nodes: vec!["cp1".into(), "cp2".into()],
    });
    input.transition = Some(rec);
    input.observed.nodes = [&finish_hash, &finish_hash, &rotate_hash]
        .iter()
        .zip(1..=3)
        .map(|(h, i)| NodeObservation {
            node: format!("cp{i}"),
            config_sha256: (*h).clone(),
        })
        .collect();
    let p = plan(&input).expect("plan");
    let steps = summary(&p);
    assert!(
        steps[0].starts_with("finish/reencrypt_finished: archive"),
        "{steps:?}"
    );
    assert!(
        steps[1].starts_with("finish/reencrypt_finished: deploy@cp3:"),
        "{steps:?}"
    );
    assert!(
        p.notes
            .iter()
            .any(|n| n.contains("already finished on cp1, cp2; it continues on cp3")),
        "{:?}",
        p.notes
    );
}

#[test]
fn resume_continues_from_each_point() {
    let (o, n) = (managed(&["old"]), managed(&["new"]));
    let cases: [(Stage, &[Phase], &str); 7] = [
        (Stage::Start, &[], "prepare/prepare: deploy"),
        (Stage::Prepare, &[Phase::Prepare], "rotate/rotate: deploy"),
        (
            Stage::Rotate,
            &[Phase::Prepare, Phase::Rotate],
            "reencrypt/reencrypt_request: persist",
        ),
        (
            Stage::ReencryptActive,
            &[Phase::Prepare, Phase::Rotate],
            "reencrypt/reencrypt_request: persist",
        ),
        (
            Stage::ReencryptActive,
            &[Phase::Prepare, Phase::Rotate, Phase::Reencrypt],
            "verify/reencrypt_finished: verify",
        ),
        (
            Stage::ReencryptFinished,
            &[
                Phase::Prepare,
                Phase::Rotate,
                Phase::Reencrypt,
                Phase::Verify,
            ],
            "finish/reencrypt_finished: archive",
        ),
        // The stage alone implies earlier phases (a record written with an empty done list).
        (Stage::Rotate, &[], "reencrypt/reencrypt_request: persist"),
    ];
    for (stage, done, first) in cases {
        let mut input = PlanInput::new(n.clone(), o.clone(), nodes(3));
        input.transition = Some(record(&o, &n, stage, done));
        let p = plan(&input).expect("plan");
        assert_eq!(p.kind, PlanKind::Resume, "{stage} {done:?}");
        assert_eq!(p.transitions.len(), 1);
        assert!(
            summary(&p)[0].starts_with(first),
            "{stage} {done:?}: {:?}",
            summary(&p)
        );
        assert!(
            !p.steps.iter().any(|s| s.action == Action::Snapshot),
            "no new snapshot when resuming"
        );
        assert!(p.notes.iter().any(|n| n.contains("resuming")));
        assert_eq!(
            summary(&p).last().map(String::as_str),
            Some("finish/start: persist:complete")
        );
    }
    // Everything done: nothing left.
    let mut input = PlanInput::new(n.clone(), o.clone(), nodes(3));
    input.transition = Some(record(
        &o,
        &n,
        Stage::ReencryptFinished,
        &super::sequence::ALL_PHASES,
    ));
    assert_eq!(plan(&input).expect("plan").kind, PlanKind::Noop);
}

#[test]
fn resume_after_rotate_on_one_controlplane_with_three_now_does_not_go_back_to_prepare() {
    let (o, n) = (managed(&["old"]), managed(&["new"]));
    let mut input = PlanInput::new(n.clone(), o.clone(), nodes(3));
    input.transition = Some(record(&o, &n, Stage::Rotate, &[Phase::Rotate]));
    let p = plan(&input).expect("plan");
    assert_eq!(summary(&p)[0], "reencrypt/reencrypt_request: persist");
}

#[test]
fn resume_with_a_different_desired_config_finishes_the_old_transition_first() {
    let (o, n, newer) = (managed(&["old"]), managed(&["new"]), managed(&["newer"]));
    let mut input = PlanInput::new(newer.clone(), o.clone(), nodes(3));
    input.transition = Some(record(&o, &n, Stage::Prepare, &[Phase::Prepare]));
    let p = plan(&input).expect("plan");
    assert_eq!(p.kind, PlanKind::Resume);
    assert_eq!(p.transitions.len(), 2);
    assert_eq!(p.transitions[0].to.as_ref(), n.config());
    assert_eq!(p.transitions[1].from.as_ref(), n.config());
    assert_eq!(p.transitions[1].to.as_ref(), newer.config());
    assert_eq!(p.transitions[1].kind, PlanKind::Rotate);
    assert!(p.notes.iter().any(|n| n.contains("finished first")));
    let first_of_second = p
        .steps
        .iter()
        .position(|s| s.transition == 1)
        .expect("second transition");
    assert_eq!(p.steps[first_of_second].action, Action::Snapshot);
    assert!(matches!(
        p.steps[first_of_second - 1].action,
        Action::PersistStage { complete: true }
    ));
    assert_eq!(p.to.as_ref(), newer.config());
}

#[test]
fn a_transition_that_changed_nothing_is_dropped_when_the_desired_config_moved_on() {
    let (o, n, newer) = (managed(&["old"]), managed(&["new"]), managed(&["newer"]));
    let hash = json_config_hash;
    let on = |config: &Target| -> Vec<NodeObservation> {
        (1..=3)
            .map(|i| NodeObservation {
                node: format!("cp{i}"),
                config_sha256: hash(config.config()),
            })
            .collect()
    };
    let stopped = |desired: &Target| {
        let mut input = PlanInput::new(desired.clone(), o.clone(), nodes(3));
        input.config_hash = Some(hash);
        input.observed.nodes = on(&o);
        input.observed.census = Some(census(&[
            ("secrets", "aescbc:old", 10),
            ("secrets", "identity", 2),
        ]));
        input.transition = Some(record(&o, &n, Stage::Start, &[]));
        input
    };

    // Reverted to the deployed config: the record is dropped, nothing else to do.
    let p = plan(&stopped(&o)).expect("plan");
    assert!(p.steps.is_empty() && !p.is_noop(), "{:?}", summary(&p));
    assert!(p.abandons.is_some());
    assert!(p.notes.iter().any(|n| n.contains("dropped, not finished")));
    assert!(!p.notes.iter().any(|n| n.contains("finished first")));
    let text = crate::plan::render::to_text(&p);
    assert!(text.contains("Drop the recorded"), "{text}");
    let first = text.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("Plan: noop (drop the recorded ") && first.contains(" transition) on 3 "),
        "{first}"
    );

    // Moved on to a third config: dropped, and one new transition from the deployed config (with its snapshot).
    let p = plan(&stopped(&newer)).expect("plan");
    assert!(p.abandons.is_some());
    assert_eq!(p.transitions.len(), 1);
    assert_eq!(p.transitions[0].resumed_at, None);
    assert_eq!(p.transitions[0].from.as_ref(), o.config());
    assert_eq!(p.transitions[0].to.as_ref(), newer.config());
    assert_eq!(p.steps[0].action, Action::Snapshot);

    // Kept and finished whenever anything may have changed, or the target is still wanted.
    let mut one_node_moved = stopped(&newer);
    one_node_moved.observed.nodes[1].config_sha256 = hash(n.config());
    let mut a_phase_done = stopped(&newer);
    a_phase_done.transition = Some(record(&o, &n, Stage::Prepare, &[Phase::Prepare]));
    let mut not_hashable = stopped(&newer);
    not_hashable.config_hash = None;
    let mut nothing_observed = stopped(&newer);
    nothing_observed.observed.nodes.clear();
    // The node that ran the new config may be gone (a controlplane removed): what it wrote is in etcd.
    let mut written_with_the_new_key = stopped(&newer);
    written_with_the_new_key.observed.census = Some(census(&[
        ("secrets", "aescbc:old", 10),
        ("secrets", "aescbc:new", 1),
    ]));
    let mut no_census = stopped(&newer);
    no_census.observed.census = None;
    // A node recorded as done with the deploy counts even if it is seen on the old config now (put back by hand).
    let mut a_node_recorded = stopped(&newer);
    if let Some(record) = a_node_recorded.transition.as_mut() {
        record.deploying = Some(crate::state::atrest::DeployProgress {
            phase: Phase::Prepare,
            config_sha256: hash(n.config()),
            nodes: vec!["cp1".into()],
        });
    }
    for (why, input) in [
        ("a node holds the new config", one_node_moved),
        ("a phase is done", a_phase_done),
        ("hashes unknown", not_hashable),
        ("no node observed", nothing_observed),
        ("data written with the new key", written_with_the_new_key),
        ("no census", no_census),
        ("a node is recorded as deployed", a_node_recorded),
        ("the target is still desired", stopped(&n)),
    ] {
        let p = plan(&input).expect("plan");
        assert_eq!(p.abandons, None, "{why}");
        assert_eq!(p.kind, PlanKind::Resume, "{why}");
    }
}

#[test]
fn a_drifted_node_gets_the_expected_config_back_first() {
    let (o, n) = (managed(&["old"]), managed(&["new"]));
    let hash = json_config_hash;
    let mut input = PlanInput::new(n.clone(), o.clone(), nodes(3));
    input.config_hash = Some(hash);
    input.observed.nodes = vec![
        NodeObservation {
            node: "cp1".into(),
            config_sha256: hash(o.config()),
        },
        NodeObservation {
            node: "cp2".into(),
            config_sha256: Some("deadbeef".into()),
        },
        NodeObservation {
            node: "cp3".into(),
            config_sha256: hash(o.config()),
        },
    ];
    let p = plan(&input).expect("plan");
    assert_eq!(
        summary(&p)[1],
        "prepare/start: deploy@cp2:Add:secrets=[aescbc:old,identity]"
    );
    assert!(p.notes.iter().any(|n| n.contains("cp2")));

    // Nothing else to do: a repair transition.
    input.desired = o.clone();
    let p = plan(&input).expect("plan");
    assert_eq!(p.kind, PlanKind::Repair);
    assert_eq!(
        summary(&p),
        [
            "finish/start: deploy@cp2:Add:secrets=[aescbc:old,identity]",
            "finish/start: persist:complete"
        ]
    );

    // Mid-rollout, a node on the next phase's config is not drifted.
    let seq = super::sequence::sequence(&o.config().cloned(), &n.config().cloned(), true)
        .expect("sequence");
    input.desired = n.clone();
    input.transition = Some(record(&o, &n, Stage::Prepare, &[Phase::Prepare]));
    input.observed.nodes[1].config_sha256 = hash(seq.rotate.as_ref());
    input.observed.nodes[0].config_sha256 = hash(seq.prepare.as_ref());
    input.observed.nodes[2].config_sha256 = hash(seq.prepare.as_ref());
    let p = plan(&input).expect("plan");
    assert!(
        !p.notes
            .iter()
            .any(|n| n.contains("differs from what the state says")),
        "{:?}",
        p.notes
    );
}

/// Found by the model check: an enable on one node stopped after its deploy (the server wrote with the new key),
/// then someone edited the node's file. Putting back the last completed config (none) would make that data
/// unreadable; the node gets the config of the deploy under way.
#[test]
fn a_node_drifted_mid_rollout_gets_the_config_of_the_deploy_under_way() {
    let (o, n) = (Target::Disabled, managed(&["new"]));
    let hash = json_config_hash;
    let mut input = PlanInput::new(n.clone(), o.clone(), nodes(1));
    input.config_hash = Some(hash);
    input.transition = Some(record(&o, &n, Stage::Start, &[]));
    input.observed.nodes = vec![NodeObservation {
        node: "cp1".into(),
        config_sha256: Some("deadbeef".into()),
    }];
    let p = plan(&input).expect("plan");
    assert!(p.notes.iter().any(|n| n.contains("cp1")), "{:?}", p.notes);
    // The repair (to the deploy under way), then that deploy itself (it was never recorded done on cp1).
    assert_eq!(
        summary(&p)[..2],
        [
            "rotate/start: deploy:Add:secrets=[aescbc:new,identity]",
            "rotate/rotate: deploy:Add:secrets=[aescbc:new,identity]"
        ],
        "{:?}",
        summary(&p)
    );
}

fn stepwise_input(current: Target, transition: Option<InProgress>) -> StepwiseInput {
    StepwiseInput {
        current,
        transition,
        controlplanes: nodes(3),
        new_key: Some(key_unit(KeyProvider::Aescbc, "new", "bmV3")),
        options: PlanOptions::default(),
        reloading: Vec::new(),
        reload_wanted: false,
    }
}

#[test]
fn stepwise_verbs_reload_on_servers_that_can() {
    let mut input = stepwise_input(managed(&["old"]), None);
    input.reloading = nodes(3);
    let p = stepwise(StepwiseVerb::Prepare { force: false }, &input).expect("prepare");
    assert_eq!(deploy_modes(&p), ["prepare:Keep:3/3"]);
    input.reloading = vec!["cp2".into()];
    let p = stepwise(StepwiseVerb::Prepare { force: false }, &input).expect("prepare");
    assert_eq!(deploy_modes(&p), ["prepare:Keep:1/3"]);
}

#[test]
fn stepwise_verbs_follow_k3s_preconditions() {
    let o = managed(&["old"]);
    let p = stepwise(
        StepwiseVerb::Prepare { force: false },
        &stepwise_input(o.clone(), None),
    )
    .expect("prepare");
    assert_eq!(
        summary(&p),
        [
            "prepare/start: snapshot",
            "prepare/prepare: deploy:Keep:secrets=[aescbc:old,aescbc:new,identity]",
            "prepare/prepare: persist",
        ]
    );
    assert_eq!(sem(&p.to), "secrets=[aescbc:new,identity]");
    let in_progress = |stage, done: &[Phase]| InProgress {
        kind: "rotate-key".into(),
        from: p.from.clone(),
        to: p.to.clone(),
        stage,
        done: done.to_vec(),
        deploying: None,
    };

    let err = stepwise(
        StepwiseVerb::Rotate { force: false },
        &stepwise_input(o.clone(), None),
    )
    .expect_err("no prepare");
    assert!(err.to_string().contains("stage start"), "{err}");
    let at_rotate = stepwise_input(
        o.clone(),
        Some(in_progress(Stage::Rotate, &[Phase::Prepare, Phase::Rotate])),
    );
    let err = stepwise(StepwiseVerb::Prepare { force: false }, &at_rotate).expect_err("busy");
    assert!(err.to_string().contains("stage rotate"), "{err}");
    let err =
        stepwise(StepwiseVerb::Rotate { force: false }, &at_rotate).expect_err("rotate twice");
    assert!(err.to_string().contains("stage rotate"), "{err}");

    let at_prepare = stepwise_input(
        o.clone(),
        Some(in_progress(Stage::Prepare, &[Phase::Prepare])),
    );
    let p2 = stepwise(StepwiseVerb::Rotate { force: false }, &at_prepare).expect("rotate");
    assert_eq!(
        summary(&p2),
        [
            "rotate/rotate: deploy:Keep:secrets=[aescbc:new,aescbc:old,identity]",
            "rotate/rotate: persist"
        ]
    );
    let err = stepwise(
        StepwiseVerb::Reencrypt {
            force: false,
            skip: false,
        },
        &at_prepare,
    )
    .expect_err("not rotated");
    assert!(err.to_string().contains("stage prepare"), "{err}");

    let p3 = stepwise(
        StepwiseVerb::Reencrypt {
            force: false,
            skip: false,
        },
        &at_rotate,
    )
    .expect("reencrypt");
    assert_eq!(
        summary(&p3),
        [
            "reencrypt/reencrypt_request: persist",
            "reencrypt/reencrypt_active: rewrite:secrets->aescbc:new",
            "verify/reencrypt_finished: verify",
            "finish/reencrypt_finished: archive:aescbc:old",
            "finish/reencrypt_finished: deploy:Keep:secrets=[aescbc:new,identity]",
            "finish/reencrypt_finished: persist:complete",
        ]
    );
    let skip = stepwise(
        StepwiseVerb::Reencrypt {
            force: false,
            skip: true,
        },
        &at_rotate,
    )
    .expect("skip");
    assert_eq!(
        summary(&skip),
        [
            "reencrypt/reencrypt_request: persist",
            "reencrypt/reencrypt_active: rewrite:secrets->aescbc:new",
            "reencrypt/rotate: persist"
        ]
    );
    // After reencrypt_finished a new prepare starts from what is deployed (N of the finished rotation).
    let finished = stepwise_input(
        o.clone(),
        Some(in_progress(
            Stage::ReencryptFinished,
            &super::sequence::ALL_PHASES,
        )),
    );
    let mut next = finished.clone();
    next.new_key = Some(key_unit(KeyProvider::Aescbc, "newer", "bmV3ZXI="));
    let p4 = stepwise(StepwiseVerb::Prepare { force: false }, &next).expect("prepare again");
    assert_eq!(sem(&p4.from), "secrets=[aescbc:new,identity]");
    assert_eq!(sem(&p4.to), "secrets=[aescbc:newer,identity]");
    // --force lets prepare start mid-rotation, from the config deployed now (R), which reads everything.
    let mut forced = at_rotate.clone();
    forced.new_key = next.new_key.clone();
    let p5 = stepwise(StepwiseVerb::Prepare { force: true }, &forced).expect("forced prepare");
    assert_eq!(sem(&p5.from), "secrets=[aescbc:new,aescbc:old,identity]");
}

#[test]
fn stepwise_rotation_end_to_end_in_the_simulator() {
    let o = managed(&["old"]);
    let mut cluster = Cluster::new(3, o.clone());
    let mut chaos = Chaos::EveryServerWrites;
    let input = |cluster: &Cluster| stepwise_input(cluster.current.clone(), cluster.record.clone());
    for verb in [
        StepwiseVerb::Prepare { force: false },
        StepwiseVerb::Rotate { force: false },
        StepwiseVerb::Reencrypt {
            force: false,
            skip: false,
        },
    ] {
        let p = stepwise(verb, &input(&cluster)).expect("verb");
        assert_eq!(
            cluster.run(&p, None, &mut chaos),
            Outcome::Completed,
            "{verb:?}"
        );
    }
    let record = cluster.record.clone().expect("kept at reencrypt_finished");
    assert_eq!(record.stage, Stage::ReencryptFinished);
    cluster.check_final(&record.to).expect("final");
}

#[test]
fn record_round_trip_and_bad_yaml() {
    let (o, n) = (managed(&["old"]), managed(&["new"]));
    let rec = TransitionRecord {
        id: "t1".into(),
        kind: "rotate-key".into(),
        from: o
            .config()
            .map(|c| serde_yaml_ng::to_string(c).expect("yaml")),
        to: n
            .config()
            .map(|c| serde_yaml_ng::to_string(c).expect("yaml")),
        stage: Stage::Rotate,
        done: vec![Phase::Prepare, Phase::Rotate],
        started_at: "2026-01-01T00:00:00Z".into(),
        updated_at: "2026-01-01T00:00:00Z".into(),
        deploying: None,
    };
    let typed = InProgress::from_record(&rec).expect("parses");
    assert_eq!(typed.from.as_ref(), o.config());
    assert_eq!(typed.to_source(), Some(ConfigSource::Managed));
    let bad = TransitionRecord {
        to: Some("resources: [{bogus: 1}]".into()),
        ..rec
    };
    let err = InProgress::from_record(&bad).expect_err("bad yaml");
    assert!(
        err.to_string().contains("t1") && err.to_string().contains("`to`"),
        "{err}"
    );
}

#[test]
fn text_and_json_never_show_key_material() {
    let (o, n) = (managed(&["old"]), managed(&["new"]));
    let p = run_plan(n, o, 3);
    let text = render::to_text(&p);
    let json = render::to_json(&p).to_string();
    for secret in ["c2VjcmV0LXtrfQ==old", "c2VjcmV0LXtrfQ==new"] {
        assert!(!text.contains(secret), "text leaks a key");
        assert!(!json.contains(secret), "json leaks a key");
    }
    assert!(json.contains("REDACTED"));
    assert!(text.contains("REDACTED"));
    assert!(
        text.contains("  1. [prepare] take an etcd snapshot"),
        "{text}"
    );
    assert!(
        text.contains("-   1. aescbc keys: old (secrets REDACTED)"),
        "{text}"
    );
    assert!(
        text.contains("+   1. aescbc keys: old, new (secrets REDACTED)"),
        "{text}"
    );
    assert!(
        text.contains("rewrite objects not yet on their target: secrets → aescbc:new"),
        "{text}"
    );
    let value = render::to_json(&p);
    assert_eq!(value["kind"], "rotate-key");
    assert_eq!(value["steps"][1]["action"]["action"], "deploy");
}

#[test]
fn effective_lists_follow_apiserver_precedence() {
    let c = yaml(
        "resources:\n- resources: [deployments.apps]\n  providers: [{identity: {}}]\n- resources: ['*.apps']\n  \
         providers: [{aescbc: {keys: [{name: a, secret: YQ==}]}}]\n- resources: ['*.*']\n  \
         providers: [{secretbox: {keys: [{name: s, secret: cw==}]}}]\n",
    );
    let rules = Rules::from_config(&c);
    let first = |r: &str| effective(Some(&rules), &RuleKey::parse(r))[0].id().label();
    assert_eq!(first("deployments.apps"), "identity");
    assert_eq!(first("statefulsets.apps"), "aescbc:a");
    assert_eq!(first("secrets"), "secretbox:s");
}

#[test]
fn a_kms_provider_needed_in_two_entries_is_refused_but_a_shared_entry_works() {
    let kms = "resources:\n- resources: [secrets, configmaps]\n  providers:\n  \
               - kms: {apiVersion: v2, name: vault, endpoint: 'unix:///run/kms.sock'}\n  - identity: {}\n";
    // secrets write aescbc and configmaps plaintext before: P would list vault in two entries.
    let err = plan(&PlanInput::new(custom(kms), managed(&["k1"]), nodes(3))).expect_err("refused");
    assert!(
        matches!(&err, PlanError::Unsupported(why) if why.contains("vault")),
        "{err}"
    );
    // From nothing, both resources read and write alike in every phase: one entry each time.
    let p = run_plan(custom(kms), Target::Disabled, 3);
    assert_eq!(
        summary(&p)[1],
        "prepare/prepare: deploy:Add:configmaps=[identity,kms:v2:vault] secrets=[identity,kms:v2:vault]"
    );
    let Action::Deploy {
        config: Some(prepare),
        ..
    } = &p.steps[1].action
    else {
        panic!("deploy")
    };
    assert_eq!(prepare.resources.len(), 1);
    assert_eq!(
        summary(&p)[4],
        "reencrypt/reencrypt_active: rewrite:configmaps->kms:v2:vault,secrets->kms:v2:vault"
    );
    let Action::Rewrite { targeted, .. } = &p.steps[4].action else {
        panic!("rewrite")
    };
    assert!(!targeted, "kms key ids are not visible in the prefix");
    simulate(&p, &custom(kms), &Target::Disabled, 3);
}

/// Interrupts a plan after every possible moment, then resumes (with the same or another desired config)
/// to completion; every server must read every object throughout.
#[test]
fn interrupting_at_every_moment_and_resuming_is_safe() {
    let cases = [
        (Target::Disabled, managed(&["k1"]), managed(&["k1"])),
        (managed(&["old"]), managed(&["new"]), managed(&["new"])),
        (managed(&["old"]), managed(&["new"]), managed(&["newer"])),
        (managed(&["old"]), managed(&["new"]), Target::Disabled),
        (
            managed(&["k1"]),
            custom(GCM_SECRETS_AND_CONFIGMAPS),
            managed(&["old"]),
        ),
    ];
    for (o, n, then) in cases {
        for cps in [1, 3] {
            let total = run_plan(n.clone(), o.clone(), cps).steps.len() + 3 * cps + 100;
            for stop in 1..total {
                let mut cluster = Cluster::new(cps, o.clone());
                let mut chaos = Chaos::Random(super::sim::Rng::new(stop as u64));
                let first =
                    plan(&PlanInput::new(n.clone(), o.clone(), cluster.names())).expect("plan");
                match cluster.run(&first, Some(stop), &mut chaos) {
                    Outcome::Interrupted | Outcome::Completed => {}
                    other => panic!("{cps} cp(s), stop {stop}: {other:?}"),
                }
                let mut input =
                    PlanInput::new(then.clone(), cluster.current.clone(), cluster.names());
                input.transition = cluster.record.clone();
                input.observed.census = Some(cluster.census());
                let second = plan(&input).expect("resume plan");
                assert_eq!(
                    cluster.run(&second, None, &mut chaos),
                    Outcome::Completed,
                    "{cps} cp(s), stop {stop}"
                );
                cluster.check_final(&then.config().cloned()).expect("final");
                assert!(cluster.record.is_none());
            }
        }
    }
}

fn deploy_modes(p: &Plan) -> Vec<String> {
    p.steps
        .iter()
        .filter_map(|s| match &s.action {
            Action::Deploy {
                flag,
                nodes,
                reload,
                ..
            } => Some(format!(
                "{}:{flag:?}:{}/{}",
                s.phase,
                reload.len(),
                nodes.len()
            )),
            _ => None,
        })
        .collect()
}

#[test]
fn servers_with_automatic_reload_reload_every_deploy_that_keeps_the_flag() {
    let (o, n) = (managed(&["k1"]), managed(&["k2"]));
    let mut input = PlanInput::new(n.clone(), o.clone(), nodes(3));
    input.observed.reloading = nodes(3);
    input.reload_wanted = true;
    let p = plan(&input).expect("plan");
    assert_eq!(
        deploy_modes(&p),
        ["prepare:Keep:3/3", "rotate:Keep:3/3", "finish:Keep:3/3"]
    );
    assert!(
        p.notes
            .iter()
            .any(|n| n == "kube-apiserver restarts: 0, recreates: 0, reloads without restart: 9"),
        "{:?}",
        p.notes
    );
    assert!(render::to_text(&p).contains("reports it reloaded it (no restart): cp1, cp2, cp3"));
    // One server without the flag is restarted (and, cluster.yml asking for it, comes back reloading).
    input.observed.reloading = vec!["cp1".into(), "cp3".into()];
    let p = plan(&input).expect("plan");
    assert_eq!(
        deploy_modes(&p),
        ["prepare:Keep:2/3", "rotate:Keep:3/3", "finish:Keep:3/3"]
    );
    let Action::Deploy { reload, .. } = &p.steps[1].action else {
        panic!("deploy")
    };
    assert_eq!(reload, &["cp1".to_string(), "cp3".to_string()]);
    let mut cluster = Cluster::new(3, o.clone());
    cluster.reload_wanted = true;
    for server in &mut cluster.servers {
        server.reload = server.name != "cp2";
    }
    assert_eq!(
        cluster.run(&p, None, &mut Chaos::EveryServerWrites),
        Outcome::Completed
    );
    cluster
        .check_final(&n.config().cloned())
        .expect("final state");
    assert!(
        cluster.servers.iter().all(|s| s.reload),
        "cp2 came back reloading"
    );
}

#[test]
fn enable_recreates_once_then_reloads_when_cluster_yml_asks_for_reload() {
    let n = managed(&["k1"]);
    let mut input = PlanInput::new(n.clone(), Target::Disabled, nodes(3));
    input.reload_wanted = true;
    let p = plan(&input).expect("plan");
    assert_eq!(deploy_modes(&p), ["prepare:Add:0/3", "rotate:Keep:3/3"]);
    assert!(
        p.notes
            .iter()
            .any(|n| n == "kube-apiserver restarts: 0, recreates: 3, reloads without restart: 3"),
        "{:?}",
        p.notes
    );
    // Disable drops the reload flag with the config flag: the finish recreates.
    let mut input = PlanInput::new(Target::Disabled, n.clone(), nodes(3));
    input.observed.reloading = nodes(3);
    input.reload_wanted = true;
    let p = plan(&input).expect("plan");
    assert_eq!(deploy_modes(&p), ["rotate:Keep:3/3", "finish:Remove:0/3"]);
}

#[test]
fn without_reload_the_plan_counts_restarts_and_suggests_the_setting() {
    let p = run_plan(managed(&["k2"]), managed(&["k1"]), 3);
    assert_eq!(
        deploy_modes(&p),
        ["prepare:Keep:0/3", "rotate:Keep:0/3", "finish:Keep:0/3"]
    );
    let note = p
        .notes
        .iter()
        .find(|n| {
            n.starts_with("kube-apiserver restarts: 9, recreates: 0, reloads without restart: 0")
        })
        .expect("restart count");
    assert!(
        note.contains("encryption-provider-config-automatic-reload: \"true\"")
            && note.contains("the 9 restart(s) would become reloads"),
        "{note}"
    );
    // Servers that reload although cluster.yml does not ask (set by hand): used, and nothing suggested.
    let mut input = PlanInput::new(managed(&["k2"]), managed(&["k1"]), nodes(3));
    input.observed.reloading = nodes(3);
    let p = plan(&input).expect("plan");
    assert!(p.notes.iter().all(|n| !n.contains("would become reloads")));
}

#[test]
fn verify_counts_everything_off_the_write_key_even_what_stays_readable() {
    // An enable: N = [aescbc:k1, identity]. Plaintext is still readable under N, but after the rewrite it means
    // the rewrite missed objects: `up` must not call that done.
    let rule = VerifyRule {
        resource: "secrets".into(),
        allowed: vec![
            UnitId::parse_label("aescbc:k1").expect("label"),
            UnitId::Identity,
        ],
        write: UnitId::parse_label("aescbc:k1").expect("label"),
    };
    let census = |pairs: &[(&str, u64)]| -> BTreeMap<String, u64> {
        pairs.iter().map(|(l, n)| (l.to_string(), *n)).collect()
    };
    assert_eq!(rule.misplaced(&census(&[("aescbc:k1", 1000)])), vec![]);
    assert_eq!(
        rule.misplaced(&census(&[
            ("aescbc:k1", 10),
            ("identity", 990),
            ("aescbc:old", 0)
        ])),
        vec![Misplaced {
            label: "identity".into(),
            count: 990,
            unreadable_after: false,
        }]
    );
    let gone = rule.misplaced(&census(&[("aescbc:old", 3), ("unknown-prefix", 1)]));
    assert_eq!(gone.len(), 2);
    assert!(gone.iter().all(|m| m.unreadable_after), "{gone:?}");
}
