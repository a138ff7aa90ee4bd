//! `encrypt status` and `encrypt verify`: what is deployed, where a rotation stands, and what etcd holds.

use super::Inputs;
use super::execute::now;
use super::session::Session;
use super::targets;
use crate::cli::{GlobalOpts, StatusFormat};
use crate::config::encryption::EncryptionConfiguration;
use crate::plan::stage::Stage;
use crate::plan::units::{Rules, Unit};
use crate::state::atrest::CensusRecord;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::process::ExitCode;

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

/// Census of every rule of `config`: resource → label → count, and the objects not on their write label.
async fn census_of(
    session: &mut Session,
    state: &crate::state::RkeState,
    config: Option<&EncryptionConfiguration>,
) -> anyhow::Result<(
    BTreeMap<String, BTreeMap<String, u64>>,
    BTreeMap<String, (String, u64, u64)>,
)> {
    let mut counts = BTreeMap::new();
    let mut off = BTreeMap::new();
    for (resource, write) in verify_rules(config) {
        let (_, census) = session
            .census(state, std::slice::from_ref(&resource), Some(&write))
            .await?;
        for (name, rc) in census.resources {
            off.insert(name.clone(), (write.clone(), rc.total, rc.off_target_count));
            counts.insert(name, rc.by_label);
        }
    }
    Ok((counts, off))
}

/// `encrypt status` exit code when part of the report could not be read (e.g. no API server answered for the
/// census); everything it could read is printed, and what is missing is named under `unavailable`.
pub const PARTIAL: u8 = 3;

pub async fn status(
    global: &GlobalOpts,
    inputs: Inputs,
    format: StatusFormat,
) -> anyhow::Result<ExitCode> {
    inputs.say_notices();
    // A run in progress changes what this shows while it is read.
    let running = crate::state::store::lock_holder(&inputs.state_path);
    let atrest = inputs.records.clone();
    let state = inputs.state;
    let deployed = targets::deployed(&state)?;
    let mut session = Session::connect(global, &inputs.config, false).await?;
    session.records = atrest.clone();
    let views = session.observe_nodes().await?;
    // Everything else above needs no API server; the census may (discovery of wildcard resources). Without it,
    // status still reports the rest and says what is missing (exit code PARTIAL).
    let mut unavailable: Vec<String> = Vec::new();
    let counts = match census_of(&mut session, &state, deployed.as_ref()).await {
        Ok((counts, _)) => counts,
        Err(e) => {
            unavailable.push(format!("census: {e:#}"));
            BTreeMap::new()
        }
    };
    let kms_lines = match deployed.as_ref() {
        Some(c) => super::kms::status_lines(&session, c).await,
        None => Vec::new(),
    };
    session.close().await;

    let stage = atrest.transition.as_ref().map_or(Stage::Start, |t| t.stage);
    // A file `rke up` wrote for the deployed config is that config, not drift.
    let mut views = views;
    if let Some(config) = deployed.as_ref() {
        let same = targets::equivalent_hashes(config, state.current_encryption_config());
        for v in &mut views {
            if v.config_sha256.as_ref().is_some_and(|h| same.contains(h)) {
                v.config_sha256 = targets::deployed_hash(Some(config));
            }
        }
    }
    let hashes: Vec<Option<String>> = views.iter().map(|v| v.config_sha256.clone()).collect();
    let all_match = hashes.windows(2).all(|w| w[0] == w[1]);
    let expected = targets::deployed_hash(deployed.as_ref());
    let flags = views.iter().filter(|v| v.has_flag).count();
    let enabled = match (deployed.is_some(), flags) {
        (true, n) if n == views.len() => "Enabled",
        (false, 0) => "Disabled",
        _ => "Partially enabled (a transition has not finished)",
    };
    let rows = key_rows(deployed.as_ref());
    let plaintext: Option<u64> = unavailable.is_empty().then(|| {
        counts
            .values()
            .map(|l| l.get("identity").copied().unwrap_or(0))
            .sum()
    });

    match format {
        StatusFormat::Json => {
            let value = json!({
                "encryptionStatus": enabled,
                "stage": stage.to_string(),
                "runInProgress": running,
                "transition": atrest.transition.as_ref().map(|t| json!({
                    "id": t.id, "kind": t.kind, "stage": t.stage.to_string(),
                    "done": t.done.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                    "startedAt": t.started_at, "updatedAt": t.updated_at,
                    "deploying": t.deploying.as_ref().map(|d| json!({
                        "phase": d.phase.to_string(), "sha256": d.config_sha256, "nodesDone": d.nodes,
                    })),
                })),
                "hashesMatch": all_match,
                "nodes": views.iter().map(|v| json!({
                    "node": v.name,
                    "sha256": v.config_sha256,
                    "flag": v.has_flag,
                    "matchesState": v.config_sha256 == expected,
                })).collect::<Vec<_>>(),
                "keys": rows.iter().map(|r| json!({
                    "active": r.active, "type": r.key_type, "name": r.name, "resources": r.resources,
                })).collect::<Vec<_>>(),
                "census": if unavailable.is_empty() { json!(counts) } else { Value::Null },
                "unavailable": unavailable,
                "kms": kms_lines,
                "plaintext": plaintext,
                "archivedKeys": atrest.archive.iter().map(|k| json!({
                    "provider": k.provider, "name": k.name, "retiredAt": k.retired_at,
                })).collect::<Vec<_>>(),
                "snapshots": atrest.snapshots.iter().map(|s| json!({
                    "name": s.name, "path": s.path, "takenAt": s.taken_at,
                })).collect::<Vec<_>>(),
            });
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        StatusFormat::Table => {
            println!("Encryption Status: {enabled}");
            if let Some(pid) = running {
                println!(
                    "Run in progress: atrest pid {pid} holds the state lock (what follows may change meanwhile)"
                );
            }
            println!("Current Rotation Stage: {stage}");
            if let Some(t) = &atrest.transition {
                let done: Vec<String> = t.done.iter().map(|p| p.to_string()).collect();
                println!(
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
                    println!(
                        "Deploy of the {} config done on: {} (a rerun continues with the other nodes)",
                        d.phase,
                        d.nodes.join(", ")
                    );
                }
            }
            if all_match {
                println!("Server Encryption Hashes: All hashes match");
            } else {
                println!("Server Encryption Hashes: hashes differ between nodes");
            }
            for v in &views {
                let hash = v.config_sha256.as_deref().unwrap_or("(no file)");
                let note = if v.config_sha256 == expected {
                    ""
                } else {
                    "  <- differs from the config the state records"
                };
                println!(
                    "  {:<16} {hash}  flag: {}{note}",
                    v.name,
                    if v.has_flag { "yes" } else { "no" }
                );
            }
            println!();
            println!("Active  Key Type   Name                              Resources");
            println!("------  ---------  --------------------------------  ---------");
            for r in &rows {
                println!(
                    " {:<6} {:<10} {:<33} {}",
                    if r.active { "*" } else { "" },
                    r.key_type,
                    r.name,
                    r.resources
                );
            }
            if rows.is_empty() {
                println!(" (no encryption config deployed)");
            }
            if !kms_lines.is_empty() {
                println!();
                println!("KMS plugins:");
                for l in &kms_lines {
                    println!("  {l}");
                }
            }
            println!();
            println!("Census (etcd):");
            for why in &unavailable {
                println!("  not available: {why}");
            }
            for (resource, labels) in &counts {
                let total: u64 = labels.values().sum();
                let list: Vec<String> = labels.iter().map(|(l, n)| format!("{l}: {n}")).collect();
                println!("  {resource}: {total} objects ({})", list.join(", "));
            }
            if let Some(plaintext) = plaintext {
                println!("  plaintext objects: {plaintext}");
            }
            if !atrest.archive.is_empty() {
                println!();
                println!(
                    "Archived keys (kept for older snapshots): {}",
                    atrest.archive.len()
                );
                for k in &atrest.archive {
                    println!("  {}:{} retired {}", k.provider, k.name, k.retired_at);
                }
            }
        }
    }
    if unavailable.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::from(PARTIAL))
    }
}

pub async fn verify(global: &GlobalOpts, inputs: Inputs) -> anyhow::Result<ExitCode> {
    inputs.say_notices();
    let state = inputs.state.clone();
    let deployed = targets::deployed(&state)?;
    let mut session = Session::connect(global, &inputs.config, false).await?;
    session.records = inputs.records.clone();
    let started = std::time::Instant::now();
    let (counts, off) = census_of(&mut session, &state, deployed.as_ref()).await?;
    session.close().await;
    let mut ok = true;
    let mut total = 0u64;
    for (resource, (write, n, off_count)) in &off {
        total += n;
        if *off_count == 0 {
            println!("ok    {resource}: all {n} objects on {write}");
        } else {
            ok = false;
            let labels: Vec<String> = counts
                .get(resource)
                .into_iter()
                .flatten()
                .filter(|(l, _)| *l != write)
                .map(|(l, c)| format!("{c} on {l}"))
                .collect();
            println!(
                "FAIL  {resource}: {off_count} of {n} objects not on the write {write} ({})",
                labels.join(", ")
            );
        }
    }
    println!(
        "census: {total} objects in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Recorded when no other run holds the state (a running `up` records its own census).
    match inputs.lock() {
        Ok(locked) => {
            let mut atrest = locked.records;
            atrest.last_census = Some(CensusRecord {
                taken_at: now(),
                counts,
            });
            locked.records_file.save(&atrest)?;
        }
        Err(e) => tracing::warn!("census not recorded: {e:#}"),
    }
    if ok {
        println!("verified: every object is on its active write provider/key");
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "NOT verified: run `atrest up` (it rewrites what is left) or see `atrest encrypt status`"
        );
        Ok(ExitCode::FAILURE)
    }
}
