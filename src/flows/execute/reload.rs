//! The reload deploy (docs/reload.md): servers that run with automatic reload get the new file without a
//! restart, and each server's own `/metrics` says when it loaded exactly that file. Kept apart from the rolling
//! restart in the parent module because it is a different protocol: write everywhere first, then watch, with a
//! per-node fallback to the restart path and a put-back of the previous file when a server refuses it.

use super::Executor;
use super::interrupt::{self, Interrupted};
use super::say;
use crate::exec::files;
use crate::exec::health::{self, HealthProbe};
use crate::exec::metrics::{self, Loaded};
use crate::exec::restart::RolloutTarget;
use crate::plan::stage::Phase;
use anyhow::{anyhow, bail};
use std::time::Instant;
use zeroize::Zeroizing;

/// How often a reload deploy reads each server's `/metrics`.
const RELOAD_POLL: std::time::Duration = std::time::Duration::from_secs(2);
/// How long a server may be unhealthy before a reload deploy gives up on it.
const RELOAD_HEALTH_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// How long a reload deploy waits for a server to report the new file: kube-apiserver checks the file once a
/// minute, so 150 s by default; `ATREST_RELOAD_TIMEOUT` (seconds) overrides it.
fn reload_timeout() -> std::time::Duration {
    std::env::var("ATREST_RELOAD_TIMEOUT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(
            std::time::Duration::from_secs(150),
            std::time::Duration::from_secs,
        )
}

/// Why kube-apiserver refused a reload: its log line `error processing encryption config file …` since the file
/// was written (the metrics only count failures). Key material never appears in it (upstream redacts).
async fn reload_failure_reason(target: &RolloutTarget, since: i64) -> String {
    let docker = match crate::exec::docker::NodeDocker::new(target.host.clone()) {
        Ok(d) => d,
        Err(e) => return format!("the server counted a failed reload; its log is unreadable: {e}"),
    };
    match docker
        .logs_since(crate::exec::docker::APISERVER, since - 1, 500)
        .await
    {
        Ok(log) => reload_error_line(&log).unwrap_or_else(|| {
            "the server counted a failed reload (no reason found in its log)".to_string()
        }),
        Err(e) => format!("the server counted a failed reload; its log is unreadable: {e}"),
    }
}

/// The last `error processing encryption config file …` line of a kube-apiserver log, from that phrase on (klog's
/// prefix with time and source file dropped).
fn reload_error_line(log: &str) -> Option<String> {
    log.lines().rev().find_map(|l| {
        let message = &l[l.find("error processing encryption config file")?..];
        // A structured klog line ends with `" logger="UnhandledError"`: the message is what precedes it.
        let message = message.split_once("\" logger=").map_or(message, |(m, _)| m);
        Some(message.trim().to_string())
    })
}

/// A node that has the new file and is being watched for its report.
struct Pending {
    name: String,
    target: RolloutTarget,
    /// The health probe with RKE's kube-admin client certificate, allowed to read `/metrics`.
    probe: HealthProbe,
    before: metrics::ReloadStatus,
    previous: Option<Zeroizing<Vec<u8>>>,
    written_at: i64,
}

/// What one node's reload deploy needs: the file, the hash its server will report, the client for `/metrics`.
struct Delivery<'b> {
    bytes: &'b Zeroizing<Vec<u8>>,
    server_hash: String,
    admin: Option<crate::state::rkestate::CertificatePem>,
}

impl Executor<'_> {
    /// The reload deploy: reads each server's reload counters, writes the file to every node, then polls each
    /// server's `/metrics` until it reports it loaded that file. No container is touched. Returns the nodes to
    /// restart instead (metrics unreadable, the file already there, or no report before the timeout), each with
    /// its previous file put back first so the restart path can restore it. A server that reports a failed
    /// reload gets its previous file back and the run stops with the server's reason.
    pub(super) async fn reload_nodes(
        &mut self,
        label: &str,
        phase: Phase,
        targets: &[(String, RolloutTarget)],
        bytes: &Zeroizing<Vec<u8>>,
        config_sha256: &Option<String>,
    ) -> anyhow::Result<Vec<String>> {
        let delivery = Delivery {
            bytes,
            server_hash: metrics::server_config_hash(bytes),
            admin: self.state.certificate("kube-admin")?,
        };
        let mut fallback = Vec::new();
        let mut pending: Vec<Pending> = Vec::new();
        for (name, target) in targets {
            match self.deliver(label, name, target, &delivery).await? {
                Some(p) => pending.push(p),
                None => fallback.push(name.clone()),
            }
        }
        if !pending.is_empty() {
            say!(
                "{label}: file written to {}; waiting for each kube-apiserver to report it reloaded it (no restart; \
                 the server checks the file once a minute)",
                names(&pending)
            );
        }
        let late = self
            .await_reloads(label, phase, config_sha256, pending, &delivery.server_hash)
            .await?;
        fallback.extend(late);
        Ok(fallback)
    }

    /// Writes the file to one node after reading its server's reload counters. `None`: restart that node
    /// instead (its metrics are unreadable, or it already has the file and cannot say it loaded it).
    async fn deliver(
        &mut self,
        label: &str,
        name: &str,
        target: &RolloutTarget,
        delivery: &Delivery<'_>,
    ) -> anyhow::Result<Option<Pending>> {
        // /metrics needs a client allowed to read it: RKE's kube-admin (system:masters), as kubectl uses.
        let mut probe = target.probe.clone();
        if let Some(admin) = &delivery.admin {
            probe.client_cert_pem = Some(admin.cert_pem.as_bytes().to_vec());
            probe.client_key_pem = Some(Zeroizing::new(admin.key_pem.expose().as_bytes().to_vec()));
        }
        if let Err(e) = health::wait_ready(&target.host, &target.probe, RELOAD_HEALTH_WAIT).await {
            bail!(
                "{name}: kube-apiserver is not healthy before the change; nothing was done to it ({e})"
            );
        }
        let before = match metrics::read_reload_status(&target.host, &probe).await {
            Ok(b) => b,
            Err(e) => {
                say!(
                    "{label}: {name}: its reload metrics cannot be read ({e}); restarting it instead"
                );
                return Ok(None);
            }
        };
        let previous = files::read_file(&target.host, &target.config_path).await?;
        self.check_unchanged(name, previous.as_deref())?;
        if previous.as_deref().map(|p| p.as_slice()) == Some(delivery.bytes.as_slice())
            && before.loaded_hash.as_deref() != Some(delivery.server_hash.as_str())
        {
            say!(
                "{label}: {name} already has this file and cannot say whether it loaded it; restarting it instead"
            );
            return Ok(None);
        }
        let written_at = time::OffsetDateTime::now_utc().unix_timestamp();
        files::write_file_atomic(&target.host, &target.config_path, delivery.bytes, 0o600).await?;
        self.session
            .files_seen
            .insert(name.to_string(), Some(files::sha256_hex(delivery.bytes)));
        Ok(Some(Pending {
            name: name.to_string(),
            target: target.clone(),
            probe,
            before,
            previous,
            written_at,
        }))
    }

    /// Polls the pending servers until each reports the new config. Returns those that did not within the
    /// timeout (their previous file put back, to be restarted); stops the run on a refused reload or Ctrl-C.
    async fn await_reloads(
        &mut self,
        label: &str,
        phase: Phase,
        config_sha256: &Option<String>,
        mut pending: Vec<Pending>,
        server_hash: &str,
    ) -> anyhow::Result<Vec<String>> {
        let timeout = reload_timeout();
        let started = Instant::now();
        while !pending.is_empty() {
            let mut still = Vec::new();
            let mut unread = pending.into_iter();
            while let Some(p) = unread.next() {
                let now = match metrics::read_reload_status(&p.target.host, &p.probe).await {
                    Ok(now) => now,
                    Err(e) => {
                        tracing::debug!("{}: reading /metrics: {e}", p.name);
                        still.push(p);
                        continue;
                    }
                };
                match metrics::judge(&p.before, &now, server_hash) {
                    Loaded::Yes => {
                        say!(
                            "{label}: {} reloaded the new config after {:.1} s (no restart)",
                            p.name,
                            started.elapsed().as_secs_f64()
                        );
                        self.note_node_done(phase, config_sha256, &p.name)?;
                    }
                    Loaded::Failed => {
                        let waiting: Vec<Pending> = still.into_iter().chain(unread).collect();
                        return Err(self.refused(&p, waiting).await);
                    }
                    Loaded::NotYet => still.push(p),
                }
            }
            pending = still;
            if pending.is_empty() {
                break;
            }
            if started.elapsed() >= timeout {
                return self.give_up(label, pending, timeout).await;
            }
            // Ctrl-C: stop while waiting; the servers that reported are recorded, the others have the file and
            // a rerun restarts them (it cannot tell whether they loaded it).
            if interrupt::requested() {
                return Err(Interrupted {
                    at: format!(
                        "while waiting for {} to report the reloaded config",
                        names(&pending)
                    ),
                }
                .into());
            }
            tokio::time::sleep(RELOAD_POLL).await;
        }
        Ok(Vec::new())
    }

    /// A server counted a failed reload: its previous file goes back, and the error carries its reason. So do the
    /// files of the servers still `waiting` in this phase: they hold the same refused config, which would stop
    /// them the next time they restart; each still runs its previous config, or reloads it back at its next poll.
    async fn refused(&mut self, p: &Pending, waiting: Vec<Pending>) -> anyhow::Error {
        let reason = reload_failure_reason(&p.target, p.written_at).await;
        let put_back = match self.put_back(p).await {
            Ok(()) => {
                "its previous file was put back; it still runs its previous config".to_string()
            }
            Err(e) => {
                format!("putting its previous file back FAILED ({e}): it needs manual attention")
            }
        };
        let mut others = Vec::new();
        for w in &waiting {
            match self.put_back(w).await {
                Ok(()) => others.push(format!("{}: previous file put back", w.name)),
                Err(e) => others.push(format!(
                    "{}: putting its previous file back FAILED ({e}): it needs manual attention",
                    w.name
                )),
            }
        }
        let others = if others.is_empty() {
            String::new()
        } else {
            format!(
                " The other servers of this phase got the same file: {}.",
                others.join("; ")
            )
        };
        anyhow!(
            "{}: kube-apiserver refused the new encryption config ({reason}); {put_back}.{others} The run \
             stopped; a rerun continues from this phase",
            p.name
        )
    }

    /// The servers that did not report in time get their previous file back and are restarted instead.
    async fn give_up(
        &mut self,
        label: &str,
        pending: Vec<Pending>,
        timeout: std::time::Duration,
    ) -> anyhow::Result<Vec<String>> {
        let mut fallback = Vec::new();
        for p in pending {
            say!(
                "{label}: {} did not report a reload within {} s; restarting it instead",
                p.name,
                timeout.as_secs()
            );
            self.put_back(&p).await?;
            fallback.push(p.name);
        }
        Ok(fallback)
    }

    /// Puts a node's previous file back (or removes the file when it had none), 0600 as every node file.
    async fn put_back(&mut self, p: &Pending) -> Result<(), files::FileError> {
        match &p.previous {
            Some(prev) => {
                files::write_file_atomic(&p.target.host, &p.target.config_path, prev, 0o600).await?
            }
            None => files::remove_file(&p.target.host, &p.target.config_path).await?,
        }
        self.session.files_seen.insert(
            p.name.clone(),
            p.previous.as_deref().map(|b| files::sha256_hex(b)),
        );
        Ok(())
    }
}

fn names(pending: &[Pending]) -> String {
    pending
        .iter()
        .map(|p| p.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_of_a_refused_reload_is_the_servers_last_error_line() {
        let log = "I1201 19:00:01.1 1 controller.go:100] Starting controller\n\
                   E1201 19:00:02.2 1 controller.go:182] error processing encryption config file /etc/kubernetes/ssl/encryption.yaml: old\n\
                   E1201 19:01:02.2 1 controller.go:182] error processing encryption config file /etc/kubernetes/ssl/encryption.yaml: resources[0].providers[0].secretbox.keys[0].secret: Invalid value: \"REDACTED\": secret is not of the expected length, got 16, expected 32 \n";
        assert_eq!(
            reload_error_line(log).as_deref(),
            Some(
                "error processing encryption config file /etc/kubernetes/ssl/encryption.yaml: \
                 resources[0].providers[0].secretbox.keys[0].secret: Invalid value: \"REDACTED\": secret is not of \
                 the expected length, got 16, expected 32"
            )
        );
        assert_eq!(reload_error_line("I1201 all fine\n"), None);
        // kube-apiserver v1.32 logs it as a structured line (KMS health check of a new provider, from a testbed run).
        let structured = "E1202 14:12:40.1 1 runtime.go:90] \"Unhandled Error\" err=\"error processing encryption \
                          config file /etc/kubernetes/ssl/encryption.yaml: health check for new transformers failed: \
                          kms-provider-0: failed get version\" logger=\"UnhandledError\"\n";
        assert_eq!(
            reload_error_line(structured).as_deref(),
            Some(
                "error processing encryption config file /etc/kubernetes/ssl/encryption.yaml: health check for new \
                 transformers failed: kms-provider-0: failed get version"
            )
        );
    }
}
