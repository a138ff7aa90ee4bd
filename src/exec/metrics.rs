//! What a kube-apiserver says about its encryption config, from its own `/metrics` (Prometheus text format),
//! read through the node's tunnel like the health probe. With `--encryption-provider-config-automatic-reload`
//! the server loads a changed file by itself; only the server can say that it did (a file hash only says what
//! was written). docs/reload.md lists the metrics per version:
//!
//! - `apiserver_encryption_config_controller_automatic_reloads_total{status="success|failure"}` (1.30+; before:
//!   `…_automatic_reload_success_total` / `…_automatic_reload_failures_total`, 1.28–1.33);
//! - `apiserver_encryption_config_controller_last_config_info{hash="sha256:<hex of the file bytes>"}` (1.34+):
//!   the exact config in use. Without it (v1.32 has none), "loaded" means: a successful reload counted after the
//!   file was written, and the file still holds those bytes.
//!
//! The parser is a few lines for the subset kube-apiserver emits (no crate: see docs/dependencies.md).

use crate::exec::health::{HealthProbe, get};
use crate::exec::ssh::Host;
use std::collections::BTreeMap;

const RELOADS: &str = "apiserver_encryption_config_controller_automatic_reloads_total";
const OLD_SUCCESSES: &str = "apiserver_encryption_config_controller_automatic_reload_success_total";
const OLD_FAILURES: &str = "apiserver_encryption_config_controller_automatic_reload_failures_total";
const CONFIG_INFO: &str = "apiserver_encryption_config_controller_last_config_info";

/// One sample of a metrics page.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses Prometheus text exposition format (comments and malformed lines skipped).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = line[..name_end].to_string();
    if name.is_empty() {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices();
        let mut key = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '}' => {
                    end = Some(i + 1);
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    if chars.next().map(|(_, c)| c) != Some('"') {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            '"' => break,
                            other => value.push(other),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                other => key.push(other),
            }
        }
        rest = &after[end?..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// The encryption-config controller's view, from one metrics page.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReloadStatus {
    pub successes: f64,
    pub failures: f64,
    /// `sha256:<hex>` of the config in use, where the version reports it (1.34+).
    pub loaded_hash: Option<String>,
}

impl ReloadStatus {
    pub fn from_samples(samples: &[Sample]) -> ReloadStatus {
        let sum = |name: &str, status: Option<&str>| -> (bool, f64) {
            let mut seen = false;
            let mut total = 0.0;
            for s in samples.iter().filter(|s| s.name == name) {
                if status.is_none_or(|st| s.labels.get("status").map(String::as_str) == Some(st)) {
                    seen = true;
                    total += s.value;
                }
            }
            (seen, total)
        };
        let (new_seen, _) = sum(RELOADS, None);
        let (successes, failures) = if new_seen {
            (
                sum(RELOADS, Some("success")).1,
                sum(RELOADS, Some("failure")).1,
            )
        } else {
            (sum(OLD_SUCCESSES, None).1, sum(OLD_FAILURES, None).1)
        };
        let loaded_hash = samples
            .iter()
            .filter(|s| s.name == CONFIG_INFO && s.value == 1.0)
            .find_map(|s| s.labels.get("hash").cloned());
        ReloadStatus {
            successes,
            failures,
            loaded_hash,
        }
    }
}

/// kube-apiserver's hash of a config file: `sha256:` + hex of the file bytes (`GetEncryptionConfigHash`).
pub fn server_config_hash(bytes: &[u8]) -> String {
    format!("sha256:{}", crate::exec::files::sha256_hex(bytes))
}

/// Whether a server loaded a file written after `before` was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Loaded {
    Yes,
    /// The server counted a failed reload: it still runs its previous config.
    Failed,
    NotYet,
}

/// Judges `now` against `before` (read just before the file was written) for a file whose server hash is
/// `expected`. With the config-info metric the hash decides; without it, a success counted after the write.
pub fn judge(before: &ReloadStatus, now: &ReloadStatus, expected: &str) -> Loaded {
    if now.loaded_hash.as_deref() == Some(expected) {
        return Loaded::Yes;
    }
    if now.failures > before.failures {
        return Loaded::Failed;
    }
    if now.loaded_hash.is_none() && now.successes > before.successes {
        return Loaded::Yes;
    }
    Loaded::NotYet
}

/// Reads a server's reload status from its `/metrics` (the probe must present a certificate allowed to read
/// `/metrics`, e.g. RKE's `kube-admin`).
pub async fn read_reload_status(host: &Host, probe: &HealthProbe) -> Result<ReloadStatus, String> {
    let (status, body) = get(host, probe, "/metrics").await?;
    if status != 200 {
        return Err(format!("GET /metrics: HTTP {status}"));
    }
    Ok(ReloadStatus::from_samples(&parse(&body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE_1_32: &str = r#"# HELP apiserver_encryption_config_controller_automatic_reload_success_total [ALPHA] (Deprecated since 1.30.0) Total number of successful automatic reloads of encryption configuration split by apiserver identity.
# TYPE apiserver_encryption_config_controller_automatic_reload_success_total counter
apiserver_encryption_config_controller_automatic_reload_success_total{apiserver_id_hash="sha256:3b5f"} 2
# TYPE apiserver_encryption_config_controller_automatic_reloads_total counter
apiserver_encryption_config_controller_automatic_reloads_total{apiserver_id_hash="sha256:3b5f",status="failure"} 1
apiserver_encryption_config_controller_automatic_reloads_total{apiserver_id_hash="sha256:3b5f",status="success"} 2
apiserver_encryption_config_controller_automatic_reload_last_timestamp_seconds{apiserver_id_hash="sha256:3b5f",status="success"} 1.7649e+09
apiserver_request_total{code="200",path="/a\"b\\c",verb="GET"} 12
"#;

    #[test]
    fn parses_labels_escapes_and_values() {
        let samples = parse(PAGE_1_32);
        assert_eq!(samples.len(), 5);
        let last = &samples[4];
        assert_eq!(last.name, "apiserver_request_total");
        assert_eq!(last.labels["path"], "/a\"b\\c");
        assert_eq!(last.value, 12.0);
        assert_eq!(samples[3].value, 1.7649e9);
        assert!(parse("bad{x=1} 2\n{} 3\nname{a=\"unterminated} 1").is_empty());
    }

    #[test]
    fn reload_counters_prefer_the_current_metric() {
        let status = ReloadStatus::from_samples(&parse(PAGE_1_32));
        assert_eq!(
            status,
            ReloadStatus {
                successes: 2.0,
                failures: 1.0,
                loaded_hash: None
            }
        );
        // 1.28/1.29: only the old counters.
        let old = "apiserver_encryption_config_controller_automatic_reload_failures_total{apiserver_id_hash=\"x\"} 3\n";
        assert_eq!(ReloadStatus::from_samples(&parse(old)).failures, 3.0);
    }

    #[test]
    fn judging_a_reload() {
        let before = ReloadStatus {
            successes: 2.0,
            failures: 1.0,
            loaded_hash: None,
        };
        let same = before.clone();
        assert_eq!(judge(&before, &same, "sha256:aa"), Loaded::NotYet);
        let ok = ReloadStatus {
            successes: 3.0,
            ..before.clone()
        };
        assert_eq!(judge(&before, &ok, "sha256:aa"), Loaded::Yes);
        let failed = ReloadStatus {
            failures: 2.0,
            ..before.clone()
        };
        assert_eq!(judge(&before, &failed, "sha256:aa"), Loaded::Failed);
        // 1.34+: the hash decides; a success for another file is not ours.
        let other = ReloadStatus {
            successes: 3.0,
            loaded_hash: Some("sha256:bb".into()),
            ..before.clone()
        };
        assert_eq!(judge(&before, &other, "sha256:aa"), Loaded::NotYet);
        let exact = ReloadStatus {
            loaded_hash: Some("sha256:aa".into()),
            ..before.clone()
        };
        assert_eq!(judge(&before, &exact, "sha256:aa"), Loaded::Yes);
    }

    #[test]
    fn server_hash_matches_upstream_test_vector_form() {
        assert_eq!(
            server_config_hash(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
