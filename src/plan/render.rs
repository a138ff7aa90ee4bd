//! Showing a plan: readable text (numbered steps, configs as diffs) and JSON. Key material never appears:
//! keys are shown by name only, and the JSON form has every `secret` replaced by `REDACTED`.

use super::types::{Action, Flag, Plan, Step};
use super::units::{Unit, units_of};
use crate::config::encryption::EncryptionConfiguration;
use std::fmt::Write as _;

/// The plan as JSON with every key secret replaced by `REDACTED`.
pub fn to_json(plan: &Plan) -> serde_json::Value {
    let mut value = serde_json::to_value(plan).unwrap_or(serde_json::Value::Null);
    redact(&mut value);
    value
}

fn redact(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if key == "secret" && v.is_string() {
                    *v = serde_json::Value::String("REDACTED".into());
                } else {
                    redact(v);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// A compact, key-free rendering of a config, one line per provider.
pub fn config_lines(config: Option<&EncryptionConfiguration>) -> Vec<String> {
    let Some(config) = config else {
        return vec![
            "(no encryption config; kube-apiserver without --encryption-provider-config)".into(),
        ];
    };
    let mut lines = Vec::new();
    for entry in &config.resources {
        lines.push(format!("resources: {}", entry.resources.join(", ")));
        for (i, provider) in entry.providers.iter().enumerate() {
            let units = units_of(std::slice::from_ref(provider));
            let units: Vec<&Unit> = units.iter().collect();
            lines.push(format!("  {}. {}", i + 1, describe_provider(&units)));
        }
    }
    lines
}

fn describe_provider(units: &[&Unit]) -> String {
    match units.first() {
        None => "(empty provider)".into(),
        Some(Unit::Identity) => "identity".into(),
        Some(Unit::Kms(k)) => {
            format!(
                "kms {} {} at {}",
                k.api_version.as_deref().unwrap_or("v1"),
                k.name,
                k.endpoint
            )
        }
        Some(Unit::Key { provider, .. }) => {
            let names: Vec<String> = units
                .iter()
                .filter_map(|u| match u {
                    Unit::Key { name, .. } => Some(name.clone()),
                    _ => None,
                })
                .collect();
            format!(
                "{} keys: {} (secrets REDACTED)",
                provider.as_str(),
                names.join(", ")
            )
        }
    }
}

/// Line diff (longest common subsequence): unchanged lines start with two spaces, removed with `- `,
/// added with `+ ` (removals first).
pub fn diff_lines(old: &[String], new: &[String]) -> Vec<String> {
    let (n, m) = (old.len(), new.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if old[i] == new[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < n || j < m {
        if i < n && j < m && old[i] == new[j] {
            out.push(format!("  {}", old[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push(format!("- {}", old[i]));
            i += 1;
        } else {
            out.push(format!("+ {}", new[j]));
            j += 1;
        }
    }
    out
}

fn describe(step: &Step) -> String {
    match &step.action {
        Action::Snapshot => "take an etcd snapshot".into(),
        Action::Deploy {
            flag,
            nodes,
            config,
            reload,
        } => {
            let what = if config.is_none() {
                "remove the encryption config"
            } else {
                "deploy the config below"
            };
            let flag = match flag {
                Flag::Keep => "restart kube-apiserver",
                Flag::Add => "recreate kube-apiserver with --encryption-provider-config",
                Flag::Remove => "recreate kube-apiserver without --encryption-provider-config",
            };
            let restart: Vec<&str> = nodes
                .iter()
                .filter(|n| !reload.contains(n))
                .map(String::as_str)
                .collect();
            match (reload.is_empty(), restart.is_empty()) {
                (true, _) => format!(
                    "{what} and {flag}, one node at a time: {}",
                    nodes.join(", ")
                ),
                (false, true) => format!(
                    "{what} on every node and wait until each kube-apiserver reports it reloaded it (no \
                     restart): {}",
                    reload.join(", ")
                ),
                (false, false) => format!(
                    "{what}: reloaded (no restart) on {}; then {flag}, one node at a time: {}",
                    reload.join(", "),
                    restart.join(", ")
                ),
            }
        }
        Action::Rewrite {
            resources,
            targeted,
        } => {
            let list: Vec<String> = resources
                .iter()
                .map(|t| format!("{} → {}", t.resource, t.write))
                .collect();
            let how = if *targeted {
                "objects not yet on their target"
            } else {
                "every object"
            };
            format!("rewrite {how}: {}", list.join("; "))
        }
        Action::Verify { rules } => {
            let list: Vec<String> = rules
                .iter()
                .map(|r| format!("{} all on {}", r.resource, r.write.label()))
                .collect();
            format!("census of etcd: {}", list.join("; "))
        }
        Action::Archive { units } => {
            let list: Vec<String> = units.iter().map(|u| u.id().label()).collect();
            format!("archive retired key(s): {}", list.join(", "))
        }
        Action::PersistStage { complete: true } => "record the transition as complete".into(),
        Action::PersistStage { complete: false } => "record the stage".into(),
    }
}

/// The plan as numbered, human-readable steps.
pub fn to_text(plan: &Plan) -> String {
    let mut out = String::new();
    let dropped = match &plan.abandons {
        Some(kind) => format!(" (drop the recorded {kind} transition)"),
        None => String::new(),
    };
    let _ = writeln!(
        out,
        "Plan: {}{dropped} on {} controlplane(s): {}",
        plan.kind,
        plan.controlplanes.len(),
        plan.controlplanes.join(", ")
    );
    for note in &plan.notes {
        let _ = writeln!(out, "Note: {note}");
    }
    if plan.steps.is_empty() {
        let what = match &plan.abandons {
            Some(kind) => format!("Drop the recorded {kind} transition; then nothing to do"),
            None => "Nothing to do".to_string(),
        };
        let _ = writeln!(out, "{what}: the deployed config is the desired one.");
        return out;
    }
    let mut deployed = plan.from.clone();
    let mut shown_transition = None;
    for (i, step) in plan.steps.iter().enumerate() {
        if shown_transition != Some(step.transition) {
            shown_transition = Some(step.transition);
            if let Some(t) = plan.transitions.get(step.transition) {
                let resumed = t
                    .resumed_at
                    .map(|s| format!(", resumed at stage {s}"))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "Transition {} ({}{resumed}):",
                    step.transition + 1,
                    t.kind
                );
                if step.transition > 0 {
                    deployed = t.from.clone();
                }
            }
        }
        let _ = writeln!(
            out,
            "{:>3}. [{}] {} → stage {}",
            i + 1,
            step.phase,
            describe(step),
            step.stage
        );
        if let Action::Deploy { config, .. } = &step.action {
            for line in diff_lines(
                &config_lines(deployed.as_ref()),
                &config_lines(config.as_ref()),
            ) {
                let _ = writeln!(out, "       {line}");
            }
            deployed = config.clone();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &[&str]) -> Vec<String> {
        s.iter().map(|l| l.to_string()).collect()
    }

    #[test]
    fn diff_keeps_common_lines_and_shows_removals_first() {
        let d = diff_lines(&lines(&["a", "b", "c"]), &lines(&["a", "x", "c", "d"]));
        assert_eq!(d, ["  a", "- b", "+ x", "  c", "+ d"]);
        assert_eq!(diff_lines(&[], &lines(&["a"])), ["+ a"]);
    }
}
