//! Reload instead of restart (docs/reload.md) on the 3-node testbed with the real kube-apiserver (v1.32): with
//! `extra_args.encryption-provider-config-automatic-reload: "true"` in cluster.yml, enable recreates each
//! kube-apiserver once (config flag and reload flag together); rotate-key and a custom-config change then restart
//! nothing — every container keeps its Id and StartedAt — and every seeded object stays readable and verified; a
//! client listing every secret through each server during rotate-key sees no error. A server whose reload metrics
//! are switched off is restarted instead, after the reload timeout.
//! Each phase waits for the servers' own poll (once a minute), so this test takes several minutes.
//!
//!     cargo build -p testbed && cargo test --test e2e_reload -- --nocapture      (as root)

mod flows_common;

use flows_common::*;

const RELOAD_FLAG: &str = "--encryption-provider-config-automatic-reload=true";

/// Per node: container Id, StartedAt and its command line (JSON), from `docker inspect`.
fn containers(b: &Bench) -> Vec<(String, String, String)> {
    b.tb.nodes()
        .iter()
        .map(|n| {
            let out =
                b.tb.docker(n)
                    .args([
                        "inspect",
                        "-f",
                        "{{.Id}}\n{{.State.StartedAt}}\n{{json .Config.Entrypoint}}{{json .Args}}",
                        "kube-apiserver",
                    ])
                    .output()
                    .expect("docker inspect");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let mut lines = text.lines();
            (
                lines.next().unwrap_or_default().to_string(),
                lines.next().unwrap_or_default().to_string(),
                lines.collect::<Vec<_>>().join("\n"),
            )
        })
        .collect()
}

/// Adds `services.kube-api.extra_args.encryption-provider-config-automatic-reload: "true"` to cluster.yml.
fn ask_for_reload(b: &Bench) {
    set_extra_args(
        b,
        &[("encryption-provider-config-automatic-reload", "true")],
    );
}

/// Sets `services.kube-api.extra_args` in cluster.yml to `args`.
fn set_extra_args(b: &Bench, args: &[(&str, &str)]) {
    let path = b.tb.cluster_yml();
    let text = std::fs::read_to_string(&path).expect("read cluster.yml");
    let mut doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("parse");
    let api = doc
        .get_mut("services")
        .and_then(|s| s.get_mut("kube-api"))
        .and_then(|k| k.as_mapping_mut())
        .expect("services.kube-api");
    let mapping: serde_yaml_ng::Mapping = args
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect();
    api.insert("extra_args".into(), serde_yaml_ng::Value::Mapping(mapping));
    std::fs::write(&path, serde_yaml_ng::to_string(&doc).expect("render")).expect("write");
}

fn up_without_restarts(b: &Bench, args: &[&str], before: &[(String, String, String)]) {
    let out = b.run(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "atrest {args:?} failed");
    assert!(
        stderr.contains("reloaded the new config"),
        "{args:?}: no server reported a reload"
    );
    for word in ["restarted,", "recreated,", "restarting it instead"] {
        assert!(!stderr.contains(word), "{args:?}: {word}");
    }
    assert_eq!(
        containers(b),
        before,
        "{args:?}: every kube-apiserver keeps its container and start time"
    );
}

#[test]
fn key_changes_reload_without_restarting_kube_apiserver() {
    let Some(b) = bench() else { return };

    // Without the setting: the plan counts its restarts and names the setting that would remove them.
    b.set_encryption(true, None);
    let plan = b.ok(&["plan"]);
    assert!(
        plan.contains("kube-apiserver restarts: 3, recreates: 3, reloads without restart: 0")
            && plan.contains("encryption-provider-config-automatic-reload"),
        "{plan}"
    );

    // With it: enable recreates each server once (both flags), the rotate phase already reloads.
    ask_for_reload(&b);
    let plan = b.ok(&["plan"]);
    assert!(
        plan.contains("kube-apiserver restarts: 0, recreates: 3, reloads without restart: 3"),
        "{plan}"
    );
    let before_enable = containers(&b);
    b.ok(&["up", "--yes"]);
    let enabled = containers(&b);
    for (i, c) in enabled.iter().enumerate() {
        assert_ne!(c.0, before_enable[i].0, "recreated");
        assert!(c.2.contains(RELOAD_FLAG), "{}", c.2);
        assert!(
            c.2.contains("--encryption-provider-config=/etc/kubernetes/ssl/encryption.yaml"),
            "{}",
            c.2
        );
    }
    b.ok(&["encrypt", "verify"]);
    b.verify_seed();
    let status = b.status();
    for node in status["nodes"].as_array().expect("nodes") {
        assert_eq!(node["reload"], true, "{node}");
        assert!(
            node["loaded"]["reloadsOk"].as_f64().unwrap_or(0.0) >= 1.0,
            "the server counted its reload: {node}"
        );
        assert_eq!(node["loaded"]["reloadsFailed"], 0.0, "{node}");
    }

    // rotate-key: prepare, rotate, finish — all reloads, no container touched; a client listing every secret
    // through each server in turn meanwhile sees no error.
    let plan = b.ok(&["plan"]);
    assert!(plan.contains("Nothing to do"), "{plan}");
    let reader = ConcurrentReader::start(&b);
    up_without_restarts(&b, &["encrypt", "rotate-key", "--yes"], &enabled);
    let tally = reader.stop();
    eprintln!("concurrent reader during rotate-key: {tally:?}");
    assert!(tally.lists >= 30, "the reader hardly ran: {tally:?}");
    assert_eq!(tally.failures, 0, "{tally:?}");
    b.ok(&["encrypt", "verify"]);
    b.verify_seed();
    let table = b.ok(&["encrypt", "status"]);
    assert!(
        table.contains("reload: on") && table.contains("not reported (kube-apiserver before 1.34)"),
        "{table}"
    );

    // A custom config: secrets move to secretbox, still without a restart.
    let s1 = random_key();
    let custom = format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n\
         - resources: [secrets]\n  providers:\n  - secretbox:\n      keys:\n      - {{name: s1, secret: \"{s1}\"}}\n  - identity: {{}}\n"
    );
    b.set_encryption(true, Some(&custom));
    up_without_restarts(&b, &["up", "--yes"], &enabled);
    all_on(&b.census(), "secrets", "secretbox:s1", SECRETS);
    b.ok(&["encrypt", "verify"]);
    b.verify_seed();
}

/// The reload metrics of kube-apiserver v1.32 (docs/reload.md), all switched off by the test below.
const RELOAD_METRICS: &str = "apiserver_encryption_config_controller_automatic_reloads_total,\
apiserver_encryption_config_controller_automatic_reload_success_total,\
apiserver_encryption_config_controller_automatic_reload_failures_total";

/// A server that reloads but cannot say so: its reload metrics are switched off (`--disabled-metrics`, a flag an
/// operator may set through `extra_args`, as this cluster.yml does). Its reload goes unconfirmed, so after the
/// reload timeout atrest puts the previous file back and restarts that server instead, saying so; the run
/// completes, verified.
///
/// kube-apiserver v1.32 does not always hide these metrics: in three runs of stop 28, with the flag on every
/// server's command line, one to three servers of a run still counted their reload (0.3–21 s after the write).
/// Such a server is rightly taken as reloaded. So the timeout is 1 s (a server's own poll comes once a
/// minute), which leaves at least one server unconfirmed, and each server must end either reloaded or restarted.
#[test]
fn a_server_that_cannot_report_its_reload_is_restarted_instead() {
    let disabled = format!("--disabled-metrics={RELOAD_METRICS}");
    // The servers start with the metrics off; enable's recreate adds the reload flag with the config flag
    // (kube-apiserver refuses the reload flag alone).
    let Some(b) = bench_with_apiserver_args(vec![disabled], 200, 0) else {
        return;
    };
    set_extra_args(
        &b,
        &[
            ("encryption-provider-config-automatic-reload", "true"),
            ("disabled-metrics", RELOAD_METRICS),
        ],
    );
    b.set_encryption(true, None);
    let plan = b.ok(&["plan"]);
    assert!(
        plan.contains("reloads without restart: 3"),
        "the plan expects reloads: {plan}"
    );
    let out = b
        .command(&["up", "--yes"])
        .env("ATREST_RELOAD_TIMEOUT", "1")
        .output()
        .expect("running atrest");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert!(out.status.success(), "up failed");
    // A server that reported a reload exported its reload metrics: the failure shows with what flags each runs.
    let flags: Vec<String> = containers(&b)
        .into_iter()
        .map(|(_, _, command)| {
            command
                .split('"')
                .filter(|a| a.contains("disabled-metrics") || a.contains("automatic-reload"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let restarted = stderr
        .matches("did not report a reload within 1 s; restarting it instead")
        .count();
    let reloaded = stderr.matches("reloaded the new config after").count();
    assert!(
        restarted >= 1 && restarted + reloaded == 3,
        "{restarted} server(s) restarted instead and {reloaded} reported a reload, of 3; the servers' flags: \
         {flags:#?}"
    );
    assert!(stderr.contains("restarted,"), "no restart reported");
    b.ok(&["encrypt", "verify"]);
    b.verify_seed();
    let plan = b.ok(&["plan"]);
    assert!(plan.contains("Nothing to do"), "{plan}");
}
