//! `encrypt status` and `encrypt verify`: what is deployed, where a rotation stands, and what etcd holds; and
//! the JSON documents a pipeline reads (`plan -o json`, `encrypt status -o json`, `encrypt verify -o json`).
//!
//! Every JSON document starts with `apiVersion` ([`API_VERSION`]) and `kind`, so a CI job can tell which shape
//! it got; docs/cli.md lists the fields. Fields may be added within a version; renaming or removing one, or
//! changing its meaning, takes a new `apiVersion`.

use super::Inputs;
use super::execute::now;
use super::options::{GlobalOpts, StatusFormat, VerifyFormat};
use super::session::{Access, NodeView, Session};
use super::targets;
use crate::config::encryption::EncryptionConfiguration;
use crate::exec::cluster_lock::LockView;
use crate::exec::health::HealthProbe;
use crate::plan::Plan;
use crate::plan::stage::Stage;
use crate::plan::units::{Rules, Unit};
use crate::state::atrest::{AtrestState, CensusRecord};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::process::ExitCode;

/// `apiVersion` of every JSON document atrest prints.
pub const API_VERSION: &str = "atrest/v1";

/// Exit status of `encrypt status --detailed-exitcode` when something needs attention, and of
/// `encrypt verify --detailed-exitcode` when objects are not on their active key.
pub const EXIT_ATTENTION: u8 = 2;

/// `plan -o json`: the plan (secrets `REDACTED`) in the versioned envelope.
pub fn plan_json(plan: &Plan, offline: bool) -> Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": "Plan",
        "offline": offline,
        "hasChanges": !plan.is_noop(),
        "plan": crate::plan::render::to_json(plan),
    })
}

/// A kms-rewrap as a plan document: the no-op `plan` (the config is unchanged) with `kind: kms-rewrap`, the
/// objects to re-wrap per resource in `rewrap`, and `hasChanges` true.
pub fn rewrap_plan_json(plan: &Plan, work: &[super::kms::Rewrap]) -> Value {
    let mut doc = plan_json(plan, false);
    doc["hasChanges"] = json!(true);
    doc["plan"]["kind"] = json!("kms-rewrap");
    doc["plan"]["rewrap"] = work
        .iter()
        .map(|w| {
            json!({
                "resource": w.resource,
                "target": w.target,
                "objects": w.objects,
                "stored": w.stored.iter().cloned().collect::<BTreeMap<String, u64>>(),
            })
        })
        .collect();
    doc
}

/// Something `encrypt status` found that a pipeline should look at.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// `drift`, `stageInProgress`, `runInProgress` or `notOnActiveKey`.
    pub reason: &'static str,
    pub message: String,
}

/// What needs attention: nodes whose file differs from what the state records, a transition or rotation stage
/// not finished (`reencrypt_finished` is a resting stage, as in K3s), nodes whose previous container a recovery
/// put back (the interrupted change is still to be made there), another run holding the lock, objects not on the
/// write key of their resource.
fn attention(
    atrest: &AtrestState,
    running: Option<u32>,
    views: &[NodeView],
    expected: Option<&str>,
    off: &BTreeMap<String, (String, u64, u64)>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let drifted: Vec<&str> = views
        .iter()
        .filter(|v| v.config_sha256.as_deref() != expected)
        .map(|v| v.name.as_str())
        .collect();
    if !drifted.is_empty() {
        out.push(Finding {
            reason: "drift",
            message: format!(
                "the encryption config on {} differs from the one the state records",
                drifted.join(", ")
            ),
        });
    }
    if let Some(t) = &atrest.transition
        && t.stage != Stage::Start
        && t.stage != Stage::ReencryptFinished
    {
        out.push(Finding {
            reason: "stageInProgress",
            message: format!(
                "transition {} is at stage {}: rerun the command that started it, or `atrest up`",
                t.kind, t.stage
            ),
        });
    }
    if !atrest.put_back.is_empty() {
        out.push(Finding {
            reason: "putBack",
            message: format!(
                "the previous kube-apiserver container was put back on {} after an interrupted recreate; the \
                 change is still to be made there: rerun `atrest up`",
                atrest.put_back.join(", ")
            ),
        });
    }
    if let Some(pid) = running {
        out.push(Finding {
            reason: "runInProgress",
            message: format!("atrest pid {pid} holds the state lock"),
        });
    }
    for (resource, (write, total, off_count)) in off {
        if *off_count > 0 {
            out.push(Finding {
                reason: "notOnActiveKey",
                message: format!(
                    "{resource}: {off_count} of {total} objects not on the write {write}"
                ),
            });
        }
    }
    out
}

/// `encryptionStatus`: from the state (a config deployed or not) and the kube-apiserver flag on the nodes
/// observed whole; with none observed, nothing can be said of the servers.
fn encryption_status(deployed: bool, observed: &[NodeView]) -> &'static str {
    if observed.is_empty() {
        return "Unknown (no controlplane could be observed)";
    }
    let flags = observed.iter().filter(|v| v.has_flag).count();
    match (deployed, flags) {
        (true, n) if n == observed.len() => "Enabled",
        (false, 0) => "Disabled",
        _ => "Partially enabled (a transition has not finished)",
    }
}

fn attention_code(detailed: bool, findings: &[Finding]) -> ExitCode {
    if detailed && !findings.is_empty() {
        ExitCode::from(EXIT_ATTENTION)
    } else {
        ExitCode::SUCCESS
    }
}

/// One row of the key table.
struct KeyRow {
    active: bool,
    key_type: String,
    name: String,
    resources: String,
}

fn key_type(unit: &Unit) -> (String, String) {
    match unit {
        Unit::Identity => ("Identity".into(), "-".into()),
        Unit::Key { provider, name, .. } => (
            match provider.as_str() {
                "aescbc" => "AES-CBC",
                "aesgcm" => "AES-GCM",
                _ => "SecretBox",
            }
            .into(),
            name.clone(),
        ),
        Unit::Kms(k) => (
            format!("KMS {}", k.api_version.as_deref().unwrap_or("v1")),
            k.name.clone(),
        ),
    }
}

fn key_rows(config: Option<&EncryptionConfiguration>) -> Vec<KeyRow> {
    let Some(config) = config else {
        return Vec::new();
    };
    let rules = Rules::from_config(config);
    let mut rows: Vec<KeyRow> = Vec::new();
    for (rule, units) in &rules.0 {
        for (i, unit) in units.iter().enumerate() {
            let (key_type, name) = key_type(unit);
            if let Some(row) = rows
                .iter_mut()
                .find(|r| r.key_type == key_type && r.name == name && r.active == (i == 0))
            {
                row.resources.push_str(&format!(", {rule}"));
                continue;
            }
            rows.push(KeyRow {
                active: i == 0,
                key_type,
                name,
                resources: rule.to_string(),
            });
        }
    }
    rows
}

/// Resources a config covers, with each one's write label (`secrets` → identity when there is no config).
fn verify_rules(config: Option<&EncryptionConfiguration>) -> Vec<(String, String)> {
    match config {
        None => vec![("secrets".to_string(), "identity".to_string())],
        Some(c) => Rules::from_config(c)
            .0
            .iter()
            .map(|(rule, units)| {
                (
                    rule.to_string(),
                    units
                        .first()
                        .map_or("identity".to_string(), |u| u.id().label()),
                )
            })
            .collect(),
    }
}

/// What a census found: resource → label → count; resource → (write label, objects, objects not on it); and
/// resource → the first keys not on the write label (at most [`SAMPLE_KEYS`]).
type CensusFound = (
    BTreeMap<String, BTreeMap<String, u64>>,
    BTreeMap<String, (String, u64, u64)>,
    BTreeMap<String, Vec<String>>,
);

/// How many etcd keys `encrypt verify` names per resource whose objects are not on the write label.
const SAMPLE_KEYS: usize = 10;

/// Census of every rule of `config`: resource → label → count, and the objects not on their write label.
async fn census_of(
    session: &mut Session,
    state: &crate::state::RkeState,
    config: Option<&EncryptionConfiguration>,
) -> anyhow::Result<CensusFound> {
    let mut counts = BTreeMap::new();
    let mut off = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for (resource, write) in verify_rules(config) {
        let (_, census) = session
            .census(state, std::slice::from_ref(&resource), Some(&write))
            .await?;
        for (name, rc) in census.resources {
            off.insert(name.clone(), (write.clone(), rc.total, rc.off_target_count));
            let sample: Vec<String> = rc.off_target.into_iter().take(SAMPLE_KEYS).collect();
            samples.insert(name.clone(), sample);
            counts.insert(name, rc.by_label);
        }
    }
    Ok((counts, off, samples))
}

/// `encrypt verify`'s rule: verified only with a census of at least one resource, and for every resource one
/// whose counts are there, add up to its total, and put every object on the resource's write label (so
/// plaintext under an encrypting config, an old key, or a prefix atrest cannot read all fail).
fn verified(
    counts: &BTreeMap<String, BTreeMap<String, u64>>,
    off: &BTreeMap<String, (String, u64, u64)>,
) -> bool {
    !off.is_empty()
        && off.iter().all(|(resource, (write, total, off_count))| {
            *off_count == 0
                && counts.get(resource).is_some_and(|labels| {
                    labels.iter().all(|(l, n)| *n == 0 || l == write)
                        && labels.values().sum::<u64>() == *total
                })
        })
}

/// The text report of `encrypt verify`: one line per resource (`ok` or `FAIL` with where its objects are),
/// the keys of objects not on the write label, and the total.
fn verify_lines(
    counts: &BTreeMap<String, BTreeMap<String, u64>>,
    off: &BTreeMap<String, (String, u64, u64)>,
    samples: &BTreeMap<String, Vec<String>>,
    seconds: f64,
) -> Vec<String> {
    let mut lines = Vec::new();
    let mut total = 0u64;
    if off.is_empty() {
        lines.push("FAIL  no census: no resource was counted".to_string());
    }
    for (resource, (write, n, off_count)) in off {
        total += n;
        let labels = counts.get(resource);
        let single = BTreeMap::from([(resource.clone(), (write.clone(), *n, *off_count))]);
        if verified(counts, &single) {
            lines.push(format!("ok    {resource}: all {n} objects on {write}"));
            continue;
        }
        let Some(labels) = labels else {
            lines.push(format!("FAIL  {resource}: no census of its objects"));
            continue;
        };
        let elsewhere: Vec<String> = labels
            .iter()
            .filter(|(l, c)| *l != write && **c > 0)
            .map(|(l, c)| format!("{c} on {l}"))
            .collect();
        lines.push(format!(
            "FAIL  {resource}: {off_count} of {n} objects not on the write {write} ({})",
            elsewhere.join(", ")
        ));
        let sample = samples.get(resource).map(Vec::as_slice).unwrap_or_default();
        if !sample.is_empty() {
            let more = off_count.saturating_sub(sample.len() as u64);
            lines.push(format!(
                "      not on {write}: {}{}",
                sample.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            ));
        }
    }
    lines.push(format!("census: {total} objects in {seconds:.1} s"));
    lines
}

pub async fn status(
    global: &GlobalOpts,
    inputs: Inputs,
    format: StatusFormat,
    detailed_exitcode: bool,
) -> anyhow::Result<ExitCode> {
    inputs.say_notices();
    // A run in progress changes what this shows while it is read.
    let running = crate::state::store::lock_holder(&inputs.state_path);
    let atrest = inputs.records.clone();
    let state = inputs.state;
    let deployed = targets::deployed(&state)?;
    let mut session = Session::connect(global, &inputs.config, Access::Observe).await?;
    session.records = atrest.clone();
    // A node half-way through another run's recreate (or with Docker down) is reported, not fatal.
    let mut views = session.observe_each_node().await;
    let mut unavailable = super::session::unobserved(&views);
    // Everything else above needs no API server; the census may (discovery of wildcard resources). Without it,
    // status still reports the rest and says what is missing (exit code PARTIAL).
    let (counts, off, census_read) = match census_of(&mut session, &state, deployed.as_ref()).await
    {
        Ok((counts, off, _)) => (counts, off, true),
        Err(e) => {
            unavailable.push(format!("census: {e:#}"));
            (Default::default(), Default::default(), false)
        }
    };
    let kms_lines = match deployed.as_ref() {
        Some(c) => super::kms::status_lines(&session, c).await,
        None => Vec::new(),
    };
    let raw: Vec<Option<String>> = views.iter().map(|v| v.config_sha256.clone()).collect();
    let loaded = loaded_configs(&session, &state, &raw).await;
    let cluster_lock = session
        .cluster_lock_holder(&state)
        .await
        .map_err(|e| format!("{e:#}"));
    session.close().await;
    // A file `rke up` wrote for the deployed config is that config, not drift.
    if let Some(config) = deployed.as_ref() {
        let same = targets::equivalent_hashes(config, state.current_encryption_config());
        for v in &mut views {
            if v.config_sha256.as_ref().is_some_and(|h| same.contains(h)) {
                v.config_sha256 = targets::deployed_hash(Some(config));
            }
        }
    }

    let stage = atrest.transition.as_ref().map_or(Stage::Start, |t| t.stage);
    // What is known of the nodes comes from those observed whole; the others are named under `unavailable`.
    let observed: Vec<NodeView> = views
        .iter()
        .filter(|v| v.unobserved.is_none())
        .cloned()
        .collect();
    let hashes: Vec<Option<String>> = observed.iter().map(|v| v.config_sha256.clone()).collect();
    let all_match = hashes.windows(2).all(|w| w[0] == w[1]);
    let expected = targets::deployed_hash(deployed.as_ref());
    let enabled = encryption_status(deployed.is_some(), &observed);
    let rows = key_rows(deployed.as_ref());
    let plaintext: Option<u64> = census_read.then(|| {
        counts
            .values()
            .map(|l| l.get("identity").copied().unwrap_or(0))
            .sum()
    });

    let findings = attention(&atrest, running, &observed, expected.as_deref(), &off);

    let facts = StatusFacts {
        enabled,
        stage,
        running,
        atrest: &atrest,
        all_match,
        views: &views,
        expected: expected.as_deref(),
        rows: &rows,
        counts: &counts,
        kms_lines: &kms_lines,
        plaintext,
        findings: &findings,
        census_read,
        unavailable: &unavailable,
        loaded: &loaded,
        cluster_lock: &cluster_lock,
    };
    match format {
        StatusFormat::Json => println!("{}", serde_json::to_string_pretty(&status_json(&facts))?),
        StatusFormat::Table => print!("{}", status_table(&facts)),
    }
    if unavailable.is_empty() {
        Ok(attention_code(detailed_exitcode, &findings))
    } else {
        Ok(ExitCode::from(PARTIAL))
    }
}

/// `encrypt status`'s table, as text.
fn status_table(f: &StatusFacts) -> String {
    let mut out = String::new();
    status_head(&mut out, f);
    status_nodes(&mut out, f);
    status_keys(&mut out, f);
    status_data(&mut out, f);
    out
}

/// A line of text onto a `String` (which cannot fail to take it).
macro_rules! put {
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($out, $($arg)*);
    }};
}

/// The table's head: whether encryption is on, who is running or holds the lock, the stage and transition.
fn status_head(out: &mut String, f: &StatusFacts) {
    put!(out, "Encryption Status: {}", f.enabled);
    if let Some(pid) = f.running {
        put!(
            out,
            "Run in progress: atrest pid {pid} holds the state lock (what follows may change meanwhile)"
        );
    }
    match f.cluster_lock {
        Ok(Some(view)) => put!(out, "Cluster lock: {}", view.text()),
        Ok(None) => put!(out, "Cluster lock: free"),
        Err(e) => put!(out, "Cluster lock: unknown ({e})"),
    }
    put!(out, "Current Rotation Stage: {}", f.stage);
    if let Some(t) = &f.atrest.transition {
        let done: Vec<String> = t.done.iter().map(|p| p.to_string()).collect();
        put!(
            out,
            "Transition: {} (done: {}; updated {})",
            t.kind,
            if done.is_empty() {
                "nothing".to_string()
            } else {
                done.join(", ")
            },
            t.updated_at
        );
        if let Some(d) = &t.deploying {
            put!(
                out,
                "Deploy of the {} config done on: {} (a rerun continues with the other nodes)",
                d.phase,
                d.nodes.join(", ")
            );
        }
    }
}

/// The table's nodes: each one's config hash, flag, reload and what its server says it loaded.
fn status_nodes(out: &mut String, f: &StatusFacts) {
    if f.all_match {
        put!(out, "Server Encryption Hashes: All hashes match");
    } else {
        put!(out, "Server Encryption Hashes: hashes differ between nodes");
    }
    for (i, v) in f.views.iter().enumerate() {
        if let Some(why) = &v.unobserved {
            put!(out, "  {:<16} unknown: {why}", v.name);
            continue;
        }
        let hash = v.config_sha256.as_deref().unwrap_or("(no file)");
        let note = if v.config_sha256.as_deref() == f.expected {
            ""
        } else {
            "  <- differs from the config the state records"
        };
        put!(
            out,
            "  {:<16} {hash}  flag: {}  reload: {}{note}",
            v.name,
            if v.has_flag { "yes" } else { "no" },
            if v.reload { "on" } else { "off" }
        );
        if let Some(l) = f.loaded.get(i) {
            put!(out, "  {:<16} loaded: {}", "", l.text());
        }
    }
}

/// The table's keys (never their secrets) and KMS plugins.
fn status_keys(out: &mut String, f: &StatusFacts) {
    put!(out, "");
    put!(
        out,
        "Active  Key Type   Name                              Resources"
    );
    put!(
        out,
        "------  ---------  --------------------------------  ---------"
    );
    for r in f.rows {
        put!(
            out,
            " {:<6} {:<10} {:<33} {}",
            if r.active { "*" } else { "" },
            r.key_type,
            r.name,
            r.resources
        );
    }
    if f.rows.is_empty() {
        put!(out, " (no encryption config deployed)");
    }
    if !f.kms_lines.is_empty() {
        put!(out, "");
        put!(out, "KMS plugins:");
        for l in f.kms_lines {
            put!(out, "  {l}");
        }
    }
}

/// The table's stored data: the census, the archive, what could not be read and what needs attention.
fn status_data(out: &mut String, f: &StatusFacts) {
    put!(out, "");
    put!(out, "Census (etcd):");
    for (resource, labels) in f.counts {
        let total: u64 = labels.values().sum();
        let list: Vec<String> = labels.iter().map(|(l, n)| format!("{l}: {n}")).collect();
        put!(out, "  {resource}: {total} objects ({})", list.join(", "));
    }
    if let Some(plaintext) = f.plaintext {
        put!(out, "  plaintext objects: {plaintext}");
    }
    if !f.atrest.archive.is_empty() {
        put!(out, "");
        put!(
            out,
            "Archived keys (kept for older snapshots): {}",
            f.atrest.archive.len()
        );
        for k in &f.atrest.archive {
            put!(out, "  {}:{} retired {}", k.provider, k.name, k.retired_at);
        }
    }
    put!(out, "");
    for why in f.unavailable {
        put!(out, "not available: {why}");
    }
    if f.findings.is_empty() {
        put!(out, "Needs attention: nothing");
    } else {
        put!(out, "Needs attention:");
        for finding in f.findings {
            put!(out, "  {}: {}", finding.reason, finding.message);
        }
    }
}

/// `encrypt status` exit code when part of the report could not be read (e.g. no API server answered for the
/// census of a wildcard resource); everything it could read is printed, and what is missing is named under
/// `unavailable`. It wins over the "needs attention" code 2: a partial report cannot say that all is well.
pub const PARTIAL: u8 = 3;

/// Everything `encrypt status` reports, gathered before it is printed.
struct StatusFacts<'a> {
    enabled: &'a str,
    stage: Stage,
    running: Option<u32>,
    atrest: &'a AtrestState,
    all_match: bool,
    views: &'a [NodeView],
    expected: Option<&'a str>,
    rows: &'a [KeyRow],
    counts: &'a BTreeMap<String, BTreeMap<String, u64>>,
    kms_lines: &'a [String],
    plaintext: Option<u64>,
    findings: &'a [Finding],
    /// The etcd census was read (`counts` holds it).
    census_read: bool,
    /// Parts of the report that could not be read, with why (the census without any API server, for a wildcard).
    unavailable: &'a [String],
    /// Per node (as `views`), what its kube-apiserver says it loaded.
    loaded: &'a [ServerLoaded],
    /// Who holds the cluster lock (`Ok(None)`: nobody), or why that could not be read.
    cluster_lock: &'a Result<Option<LockView>, String>,
}

/// What one kube-apiserver reports through its `/metrics` about its encryption config (docs/reload.md).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServerLoaded {
    /// `sha256:<hex>` of the config the server uses (kube-apiserver 1.34+), and whether it is the file's.
    pub hash: Option<String>,
    pub matches_file: Option<bool>,
    pub reloads_ok: Option<f64>,
    pub reloads_failed: Option<f64>,
    /// Why nothing could be read.
    pub error: Option<String>,
}

impl ServerLoaded {
    fn text(&self) -> String {
        if let Some(e) = &self.error {
            return format!("unknown ({e})");
        }
        let counts = format!(
            "reloads: {} ok, {} failed",
            self.reloads_ok.unwrap_or(0.0),
            self.reloads_failed.unwrap_or(0.0)
        );
        match (&self.hash, self.matches_file) {
            (Some(h), Some(true)) => format!("{h} (the file's); {counts}"),
            (Some(h), _) => {
                format!("{h} (NOT the file's: the server runs another config); {counts}")
            }
            (None, _) => format!("not reported (kube-apiserver before 1.34); {counts}"),
        }
    }
}

/// Per controlplane, in `session.hosts` order: the server's own report, read with RKE's kube-admin certificate
/// through the node's tunnel; `raw` is each node's file sha256 (hex of the bytes, as read).
async fn loaded_configs(
    session: &Session,
    state: &crate::state::RkeState,
    raw: &[Option<String>],
) -> Vec<ServerLoaded> {
    let admin = state.certificate("kube-admin").ok().flatten();
    let ca = state.certificate("kube-ca").ok().flatten();
    let reads = session.hosts.iter().enumerate().map(|(i, host)| {
        let admin = admin.clone();
        let ca = ca.clone();
        let dir = session.kubernetes_dir(host);
        async move {
            let probe = match server_probe(host, &dir, ca.as_ref(), admin.as_ref()).await {
                Ok(p) => p,
                Err(e) => {
                    return ServerLoaded {
                        error: Some(e.to_string()),
                        ..Default::default()
                    };
                }
            };
            match crate::exec::metrics::read_reload_status(host, &probe).await {
                Ok(status) => ServerLoaded {
                    matches_file: status.loaded_hash.as_ref().map(|h| {
                        raw.get(i)
                            .and_then(|r| r.as_deref())
                            .is_some_and(|r| h.strip_prefix("sha256:") == Some(r))
                    }),
                    hash: status.loaded_hash,
                    reloads_ok: Some(status.successes),
                    reloads_failed: Some(status.failures),
                    error: None,
                },
                Err(e) => ServerLoaded {
                    error: Some(e),
                    ..Default::default()
                },
            }
        }
    });
    futures::future::join_all(reads).await
}

/// How status reaches one node's server: with RKE's `kube-ca` and `kube-admin` from the state when it has both
/// (nothing to read on the node: each command there costs a login shell), else with the node's own `ssl/`
/// files, presenting `kube-admin` when the state has it.
async fn server_probe(
    host: &std::sync::Arc<crate::exec::ssh::Host>,
    kubernetes_dir: &str,
    ca: Option<&crate::state::CertificatePem>,
    admin: Option<&crate::state::CertificatePem>,
) -> Result<HealthProbe, crate::exec::files::FileError> {
    let mut probe = match ca {
        Some(ca) if admin.is_some() => {
            HealthProbe::for_host(host, Some(ca.cert_pem.as_bytes().to_vec()))
        }
        _ => HealthProbe::from_node_certs(host, kubernetes_dir).await?,
    };
    if let Some(a) = admin {
        probe.client_cert_pem = Some(a.cert_pem.as_bytes().to_vec());
        probe.client_key_pem = Some(zeroize::Zeroizing::new(
            a.key_pem.expose().as_bytes().to_vec(),
        ));
    }
    Ok(probe)
}

/// `encrypt status -o json` (kind `EncryptionStatus`). No key material: keys by provider and name only.
fn status_json(f: &StatusFacts) -> Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": "EncryptionStatus",
        "encryptionStatus": f.enabled,
        "stage": f.stage.to_string(),
        "runInProgress": f.running,
        "clusterLock": match f.cluster_lock {
            Ok(Some(view)) => match &view.owner {
                Ok(o) => json!({
                    "held": true, "holder": o.holder, "pid": o.pid, "command": o.command, "state": o.state,
                    "since": o.since, "expiresInSeconds": view.expires_in,
                }),
                Err(why) => json!({"held": true, "unreadable": why, "expiresInSeconds": view.expires_in}),
            },
            Ok(None) => json!({"held": false}),
            Err(e) => json!({"error": e}),
        },
        "transition": f.atrest.transition.as_ref().map(|t| json!({
            "id": t.id, "kind": t.kind, "stage": t.stage.to_string(),
            "done": t.done.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            "startedAt": t.started_at, "updatedAt": t.updated_at,
            "deploying": t.deploying.as_ref().map(|d| json!({
                "phase": d.phase.to_string(), "sha256": d.config_sha256, "nodesDone": d.nodes,
            })),
        })),
        "putBack": f.atrest.put_back,
        "hashesMatch": f.all_match,
        "nodes": f.views.iter().enumerate().map(|(i, v)| {
            let l = f.loaded.get(i).cloned().unwrap_or_default();
            json!({
                "node": v.name,
                "unobserved": v.unobserved,
                "sha256": v.config_sha256,
                "flag": v.has_flag,
                "reload": v.reload,
                "matchesState": v.config_sha256.as_deref() == f.expected,
                "loaded": {
                    "hash": l.hash, "matchesFile": l.matches_file,
                    "reloadsOk": l.reloads_ok, "reloadsFailed": l.reloads_failed, "error": l.error,
                },
            })
        }).collect::<Vec<_>>(),
        "keys": f.rows.iter().map(|r| json!({
            "active": r.active, "type": r.key_type, "name": r.name, "resources": r.resources,
        })).collect::<Vec<_>>(),
        "census": if f.census_read { json!(f.counts) } else { Value::Null },
        "unavailable": f.unavailable,
        "kms": f.kms_lines,
        "plaintext": f.plaintext,
        "archivedKeys": f.atrest.archive.iter().map(|k| json!({
            "provider": k.provider, "name": k.name, "retiredAt": k.retired_at,
        })).collect::<Vec<_>>(),
        "snapshots": f.atrest.snapshots.iter().map(|s| json!({
            "name": s.name, "path": s.path, "takenAt": s.taken_at,
        })).collect::<Vec<_>>(),
        "needsAttention": !f.findings.is_empty(),
        "attention": f.findings,
    })
}

pub async fn verify(
    global: &GlobalOpts,
    inputs: Inputs,
    format: VerifyFormat,
    detailed_exitcode: bool,
) -> anyhow::Result<ExitCode> {
    inputs.say_notices();
    let state = inputs.state.clone();
    let deployed = targets::deployed(&state)?;
    let mut session = Session::connect(global, &inputs.config, Access::Observe).await?;
    session.records = inputs.records.clone();
    let started = std::time::Instant::now();
    let (counts, off, samples) = census_of(&mut session, &state, deployed.as_ref()).await?;
    session.close().await;
    let seconds = started.elapsed().as_secs_f64();
    let ok = verified(&counts, &off);
    match format {
        VerifyFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&verify_json(&counts, &off, seconds))?
        ),
        VerifyFormat::Text => {
            for line in verify_lines(&counts, &off, &samples, seconds) {
                println!("{line}");
            }
        }
    }
    // Recorded when no other run holds the state (a running `up` records its own census).
    match inputs.lock() {
        Ok(locked) => {
            let mut atrest = locked.records;
            atrest.last_census = Some(CensusRecord {
                taken_at: now(),
                counts,
                repasses: 0,
            });
            locked.records_file.save(&atrest)?;
        }
        Err(e) => tracing::warn!("census not recorded: {e:#}"),
    }
    let text = format == VerifyFormat::Text;
    if ok {
        if text {
            println!("verified: every object is on its active write provider/key");
        }
        Ok(ExitCode::SUCCESS)
    } else {
        if text {
            println!(
                "NOT verified: run `atrest up` (it rewrites what is left) or see `atrest encrypt status`"
            );
        }
        Ok(if detailed_exitcode {
            ExitCode::from(EXIT_ATTENTION)
        } else {
            ExitCode::FAILURE
        })
    }
}

/// `encrypt verify -o json` (kind `VerifyReport`): per resource, its write provider/key, how many objects and
/// how many are not on it, and the count per provider/key.
fn verify_json(
    counts: &BTreeMap<String, BTreeMap<String, u64>>,
    off: &BTreeMap<String, (String, u64, u64)>,
    seconds: f64,
) -> Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": "VerifyReport",
        "verified": verified(counts, off),
        "objects": off.values().map(|(_, n, _)| n).sum::<u64>(),
        "seconds": (seconds * 10.0).round() / 10.0,
        "resources": off.iter().map(|(resource, (write, total, off_count))| json!({
            "resource": resource,
            "write": write,
            "objects": total,
            "notOnWrite": off_count,
            "byKey": counts.get(resource).cloned().unwrap_or_default(),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::atrest::TransitionRecord;

    fn view(name: &str, sha: Option<&str>) -> NodeView {
        NodeView {
            name: name.into(),
            config_sha256: sha.map(str::to_string),
            has_flag: sha.is_some(),
            reload: false,
            unobserved: None,
        }
    }

    /// The table names what an operator acts on: each node with its hash (a drifted one marked, one not observed
    /// said so), the keys without their secrets, the census, the archive and every finding. No key text appears.
    #[test]
    fn the_status_table_shows_nodes_keys_census_archive_and_findings_and_no_secret() {
        let views = [
            view("cp-1", Some("a")),
            view("cp-2", Some("b")),
            NodeView {
                unobserved: Some("ssh: connection refused".into()),
                ..view("cp-3", None)
            },
        ];
        let archived_secret = "QVJDSElWRUQtS0VZLVRFWFQtMDAwMDAwMDAwMDAwMDA=";
        let atrest = AtrestState {
            transition: Some(transition(Stage::Rotate)),
            put_back: vec!["cp-2".into()],
            archive: vec![crate::state::atrest::ArchivedKey {
                provider: "aescbc".into(),
                name: "k1".into(),
                secret: Some(crate::secret::SecretString::new(archived_secret.into())),
                retired_at: "2026-12-01T00:00:00Z".into(),
                snapshots: Vec::new(),
            }],
            ..AtrestState::default()
        };
        let counts = BTreeMap::from([(
            "secrets".to_string(),
            BTreeMap::from([
                ("aescbc:k1".to_string(), 3u64),
                ("aescbc:k2".to_string(), 7),
            ]),
        )]);
        let observed = &views[..2];
        let findings = attention(&atrest, None, observed, Some("a"), &off(3));
        let rows = [KeyRow {
            active: true,
            key_type: "AES-CBC".into(),
            name: "k2".into(),
            resources: "secrets".into(),
        }];
        let unavailable = ["node 10.0.0.3: ssh: connection refused".to_string()];
        let table = status_table(&StatusFacts {
            enabled: "Enabled",
            stage: Stage::Rotate,
            running: Some(7),
            atrest: &atrest,
            all_match: false,
            views: &views,
            expected: Some("a"),
            rows: &rows,
            counts: &counts,
            kms_lines: &[],
            plaintext: Some(0),
            findings: &findings,
            census_read: true,
            unavailable: &unavailable,
            loaded: &[],
            cluster_lock: &Ok(None),
        });
        for expected in [
            "Encryption Status: Enabled",
            "Run in progress: atrest pid 7",
            "Cluster lock: free",
            "Current Rotation Stage: rotate",
            "hashes differ between nodes",
            "cp-2             b  flag: yes  reload: off  <- differs from the config the state records",
            "cp-3             unknown: ssh: connection refused",
            " *      AES-CBC    k2",
            "secrets: 10 objects (aescbc:k1: 3, aescbc:k2: 7)",
            "plaintext objects: 0",
            "aescbc:k1 retired 2026-12-01T00:00:00Z",
            "not available: node 10.0.0.3",
            "drift: ",
            "putBack: the previous kube-apiserver container was put back on cp-2",
            "notOnActiveKey: secrets: 3 of 10",
        ] {
            assert!(
                table.contains(expected),
                "{expected:?} missing from:\n{table}"
            );
        }
        assert!(
            !table.contains("cp-1             a  flag: yes  reload: off  <-"),
            "{table}"
        );
        assert!(
            !table.contains(archived_secret),
            "a key's text in the table:\n{table}"
        );
    }

    #[test]
    fn a_kms_rewrap_is_a_plan_document_with_changes_and_the_objects_to_rewrap() {
        let noop = crate::plan::plan(&crate::plan::PlanInput::new(
            crate::plan::Target::Disabled,
            crate::plan::Target::Disabled,
            vec!["cp1".into()],
        ))
        .expect("plan");
        let work = vec![crate::flows::kms::Rewrap {
            resource: "secrets".into(),
            target: "kms:v2:vault:k2".into(),
            objects: 3,
            stored: vec![("kms:v2:vault:k1".into(), 3)],
        }];
        let doc = rewrap_plan_json(&noop, &work);
        assert_eq!(doc["kind"], "Plan");
        assert_eq!(doc["hasChanges"], true);
        assert_eq!(doc["plan"]["kind"], "kms-rewrap");
        assert_eq!(doc["plan"]["steps"], json!([]));
        assert_eq!(doc["plan"]["rewrap"][0]["target"], "kms:v2:vault:k2");
        assert_eq!(doc["plan"]["rewrap"][0]["stored"]["kms:v2:vault:k1"], 3);
        let text = crate::flows::kms::rewrap_text(&work);
        assert!(text.starts_with("Plan: kms-rewrap"), "{text}");
        assert!(
            text.contains("rewrite secrets: 3 object(s) not on kms:v2:vault:k2 (kms:v2:vault:k1: 3) — targeted"),
            "{text}"
        );
    }

    #[test]
    fn encryption_status_comes_from_the_nodes_observed_and_is_unknown_without_any() {
        let on = view("a", Some("h"));
        let off = view("b", None);
        assert_eq!(
            encryption_status(true, &[on.clone(), on.clone()]),
            "Enabled"
        );
        assert_eq!(
            encryption_status(false, std::slice::from_ref(&off)),
            "Disabled"
        );
        assert!(encryption_status(true, &[on.clone(), off.clone()]).starts_with("Partially"));
        assert!(encryption_status(false, &[on]).starts_with("Partially"));
        assert!(encryption_status(true, &[]).starts_with("Unknown"));
        assert!(encryption_status(false, &[]).starts_with("Unknown"));
    }

    fn transition(stage: Stage) -> TransitionRecord {
        TransitionRecord {
            id: "t1".into(),
            kind: "rotate-key".into(),
            from: None,
            to: None,
            stage,
            done: Vec::new(),
            started_at: "2026-01-01T00:00:00Z".into(),
            updated_at: "2026-01-01T00:00:00Z".into(),
            deploying: None,
        }
    }

    fn off(n: u64) -> BTreeMap<String, (String, u64, u64)> {
        BTreeMap::from([("secrets".to_string(), ("aescbc:k2".to_string(), 10, n))])
    }

    fn reasons(f: &[Finding]) -> Vec<&str> {
        f.iter().map(|f| f.reason).collect()
    }

    #[test]
    fn attention_names_drift_stages_runs_and_objects_off_their_key() {
        let views = [view("cp-1", Some("a")), view("cp-2", Some("a"))];
        let mut atrest = AtrestState::default();
        let quiet = attention(&atrest, None, &views, Some("a"), &off(0));
        assert!(quiet.is_empty());
        assert_eq!(attention_code(true, &quiet), ExitCode::SUCCESS);

        let drift = [view("cp-1", Some("a")), view("cp-2", None)];
        let f = attention(&atrest, None, &drift, Some("a"), &off(0));
        assert_eq!(reasons(&f), ["drift"]);
        assert!(f[0].message.contains("cp-2") && !f[0].message.contains("cp-1"));
        assert_eq!(attention_code(true, &f), ExitCode::from(EXIT_ATTENTION));
        assert_eq!(attention_code(false, &f), ExitCode::SUCCESS);

        // reencrypt_finished is where a stepwise rotation rests; the stages before it are in progress.
        for (stage, busy) in [
            (Stage::Prepare, true),
            (Stage::Rotate, true),
            (Stage::ReencryptRequest, true),
            (Stage::ReencryptActive, true),
            (Stage::ReencryptFinished, false),
        ] {
            atrest.transition = Some(transition(stage));
            let f = attention(&atrest, None, &views, Some("a"), &off(0));
            assert_eq!(f.is_empty(), !busy, "{stage}");
        }
        atrest.transition = Some(transition(Stage::Rotate));
        atrest.put_back = vec!["cp-2".to_string()];
        let f = attention(&atrest, Some(42), &views, Some("a"), &off(3));
        assert_eq!(
            reasons(&f),
            [
                "stageInProgress",
                "putBack",
                "runInProgress",
                "notOnActiveKey"
            ]
        );
        assert!(
            f[1].message.contains("put back on cp-2"),
            "{}",
            f[1].message
        );
        assert_eq!(
            f[3].message,
            "secrets: 3 of 10 objects not on the write aescbc:k2"
        );
    }

    /// A census of `secrets` under the write `aescbc:k2`: the counts per label, and what the census counted as
    /// not on the write label (as the etcd census does: every label but the write one).
    fn census(labels: &[(&str, u64)]) -> CensusFound {
        let counts: BTreeMap<String, u64> =
            labels.iter().map(|(l, n)| (l.to_string(), *n)).collect();
        let total = counts.values().sum();
        let off_count = counts
            .iter()
            .filter(|(l, _)| *l != "aescbc:k2")
            .map(|(_, n)| n)
            .sum::<u64>();
        let sample: Vec<String> = (0..off_count.min(SAMPLE_KEYS as u64))
            .map(|i| format!("/registry/secrets/default/s{i}"))
            .collect();
        (
            BTreeMap::from([("secrets".to_string(), counts)]),
            BTreeMap::from([(
                "secrets".to_string(),
                ("aescbc:k2".to_string(), total, off_count),
            )]),
            BTreeMap::from([("secrets".to_string(), sample)]),
        )
    }

    #[test]
    fn verify_passes_only_when_every_object_is_on_the_write_key() {
        let (counts, off, samples) = census(&[("aescbc:k2", 10)]);
        assert!(verified(&counts, &off));
        assert_eq!(verify_json(&counts, &off, 0.0)["verified"], true);
        assert_eq!(
            verify_lines(&counts, &off, &samples, 0.04),
            [
                "ok    secrets: all 10 objects on aescbc:k2",
                "census: 10 objects in 0.0 s"
            ]
        );
        // No objects at all is verified (nothing is off its key).
        let (counts, off, samples) = census(&[]);
        assert!(verified(&counts, &off));
        assert_eq!(
            verify_lines(&counts, &off, &samples, 0.0)[0],
            "ok    secrets: all 0 objects on aescbc:k2"
        );
    }

    #[test]
    fn verify_fails_on_plaintext_old_keys_and_unknown_prefixes_and_names_them() {
        for (labels, line) in [
            (
                &[("aescbc:k2", 7), ("identity", 3)][..],
                "FAIL  secrets: 3 of 10 objects not on the write aescbc:k2 (3 on identity)",
            ),
            (
                &[("aescbc:k1", 4), ("aescbc:k2", 6)][..],
                "FAIL  secrets: 4 of 10 objects not on the write aescbc:k2 (4 on aescbc:k1)",
            ),
            (
                &[("aescbc:k2", 9), ("unknown:rot13:v1:x", 1)][..],
                "FAIL  secrets: 1 of 10 objects not on the write aescbc:k2 (1 on unknown:rot13:v1:x)",
            ),
            (
                &[("aescbc:k1", 12), ("identity", 3)][..],
                "FAIL  secrets: 15 of 15 objects not on the write aescbc:k2 (12 on aescbc:k1, 3 on identity)",
            ),
        ] {
            let (counts, off, samples) = census(labels);
            assert!(!verified(&counts, &off), "{labels:?}");
            let json = verify_json(&counts, &off, 0.0);
            assert_eq!(json["verified"], false, "{labels:?}");
            let lines = verify_lines(&counts, &off, &samples, 0.0);
            assert_eq!(lines[0], line);
            // The objects not on the write key are named, up to SAMPLE_KEYS, with how many more there are.
            let off_count = off["secrets"].2;
            assert!(
                lines[1].starts_with("      not on aescbc:k2: /registry/secrets/default/s0"),
                "{lines:?}"
            );
            assert_eq!(
                lines[1].ends_with(&format!(" and {} more", off_count.saturating_sub(10))),
                off_count > 10,
                "{lines:?}"
            );
        }
    }

    #[test]
    fn verify_fails_without_a_census_or_with_counts_that_do_not_add_up() {
        // No resource counted at all: nothing was proven.
        let none = BTreeMap::new();
        assert!(!verified(&none, &none_off()));
        assert_eq!(verify_json(&none, &none_off(), 0.0)["verified"], false);
        assert_eq!(
            verify_lines(&none, &none_off(), &BTreeMap::new(), 0.0)[0],
            "FAIL  no census: no resource was counted"
        );
        // A resource with a total but no counts per label.
        let (_, off, samples) = census(&[("aescbc:k2", 10)]);
        assert!(!verified(&none, &off));
        assert_eq!(
            verify_lines(&none, &off, &samples, 0.0)[0],
            "FAIL  secrets: no census of its objects"
        );
        // Counts that contradict the census's own tally (an object on another label not counted as off, or
        // counts that do not add up to the total) are not a pass either.
        let (counts, mut off, _) = census(&[("aescbc:k2", 9), ("identity", 1)]);
        off.get_mut("secrets").unwrap().2 = 0;
        assert!(!verified(&counts, &off));
        let (counts, mut off, _) = census(&[("aescbc:k2", 10)]);
        off.get_mut("secrets").unwrap().1 = 11;
        assert!(!verified(&counts, &off));
    }

    fn none_off() -> BTreeMap<String, (String, u64, u64)> {
        BTreeMap::new()
    }

    /// One resource failing fails the whole verify, whatever the others say.
    #[test]
    fn verify_fails_when_any_one_resource_fails() {
        let (mut counts, mut off, _) = census(&[("aescbc:k2", 10)]);
        counts.insert(
            "configmaps".into(),
            BTreeMap::from([("identity".to_string(), 2u64)]),
        );
        off.insert("configmaps".into(), ("aescbc:k2".to_string(), 2, 2));
        assert!(!verified(&counts, &off));
        let lines = verify_lines(&counts, &off, &BTreeMap::new(), 0.0);
        assert_eq!(
            lines,
            [
                "FAIL  configmaps: 2 of 2 objects not on the write aescbc:k2 (2 on identity)",
                "ok    secrets: all 10 objects on aescbc:k2",
                "census: 12 objects in 0.0 s",
            ]
        );
    }

    /// The documented fields of `status -o json` and `verify -o json`, in order, and docs/cli.md names each.
    #[test]
    fn status_and_verify_json_have_the_documented_shape() {
        let views = [view("cp-1", Some("a"))];
        let atrest = AtrestState {
            transition: Some(transition(Stage::Prepare)),
            ..AtrestState::default()
        };
        let counts = BTreeMap::from([(
            "secrets".to_string(),
            BTreeMap::from([("aescbc:k1".to_string(), 10u64)]),
        )]);
        let findings = attention(&atrest, None, &views, Some("a"), &off(10));
        let rows = [KeyRow {
            active: true,
            key_type: "AES-CBC".into(),
            name: "k2".into(),
            resources: "secrets".into(),
        }];
        let status = status_json(&StatusFacts {
            enabled: "Enabled",
            stage: Stage::Prepare,
            running: None,
            atrest: &atrest,
            all_match: true,
            views: &views,
            expected: Some("a"),
            rows: &rows,
            counts: &counts,
            kms_lines: &[],
            plaintext: Some(0),
            findings: &findings,
            census_read: true,
            unavailable: &[],
            loaded: &[],
            cluster_lock: &Ok(Some(LockView {
                owner: Ok(crate::exec::cluster_lock::LockOwner {
                    holder: "ci@b".into(),
                    state: "/other/cluster.rkestate".into(),
                    pid: 9,
                    command: "up".into(),
                    since: "2026-12-02T01:00:00Z".into(),
                }),
                expires_in: Some(41),
            })),
        });
        let keys: Vec<&str> = status
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "apiVersion",
                "kind",
                "encryptionStatus",
                "stage",
                "runInProgress",
                "clusterLock",
                "transition",
                "putBack",
                "hashesMatch",
                "nodes",
                "keys",
                "census",
                "unavailable",
                "kms",
                "plaintext",
                "archivedKeys",
                "snapshots",
                "needsAttention",
                "attention",
            ]
        );
        assert_eq!(status["apiVersion"], API_VERSION);
        assert_eq!(status["kind"], "EncryptionStatus");
        assert_eq!(status["needsAttention"], true);
        assert_eq!(status["attention"][0]["reason"], "stageInProgress");
        assert_eq!(status["attention"][1]["reason"], "notOnActiveKey");
        assert_eq!(status["nodes"][0]["matchesState"], true);
        assert_eq!(status["clusterLock"]["holder"], "ci@b");
        assert_eq!(status["clusterLock"]["expiresInSeconds"], 41);

        let verify = verify_json(&counts, &off(10), 1.234);
        let vkeys: Vec<&str> = verify
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            vkeys,
            [
                "apiVersion",
                "kind",
                "verified",
                "objects",
                "seconds",
                "resources"
            ]
        );
        assert_eq!(verify["kind"], "VerifyReport");
        assert_eq!(verify["verified"], false);
        assert_eq!(verify["seconds"], 1.2);
        let resource = &verify["resources"][0];
        assert_eq!(resource["resource"], "secrets");
        assert_eq!(resource["write"], "aescbc:k2");
        assert_eq!(resource["objects"], 10);
        assert_eq!(resource["notOnWrite"], 10);
        assert_eq!(resource["byKey"]["aescbc:k1"], 10);

        let docs = include_str!("../../docs/cli.md");
        let rkeys: Vec<&str> = resource
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for field in keys.iter().chain(&vkeys).chain(&rkeys) {
            assert!(
                docs.contains(&format!("`{field}`")),
                "docs/cli.md does not document `{field}`"
            );
        }
    }
}
