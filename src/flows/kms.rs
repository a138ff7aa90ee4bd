//! KMS in the flows: the pre-flight run on every controlplane before a plan that reads or writes through a
//! `kms` provider (see [`crate::exec::kms`]), and the plugin view `encrypt status` prints.

use anyhow::bail;

use std::sync::Arc;

use crate::config::encryption::{EncryptionConfiguration, KmsConfiguration};
use crate::exec::docker::{NodeDocker, changed_binds};
use crate::exec::kms::{self, PluginStatus};
use crate::exec::ssh::Host;

use super::session::Session;

/// The binds atrest makes sure kube-apiserver has: cluster.yml's `services.kube-api.extra_binds`.
pub fn apiserver_extra_binds(session: &Session) -> Vec<String> {
    session.cluster.services.kube_api.extra_binds.clone()
}

/// The binds a node's kube-apiserver has after atrest's deploy: its container's binds as they are (`docker
/// inspect`), plus the extra binds whose container path is still free — what a recreate does. A KMS socket is
/// found on the host through these, not through cluster.yml alone: the container may mount the socket's
/// directory from elsewhere, and that mount is the one kube-apiserver dials through.
pub fn deployed_binds(container_binds: &[String], extra_binds: &[String]) -> Vec<String> {
    changed_binds(container_binds, extra_binds)
}

/// [`deployed_binds`] of one node (`extra = false`: the binds it has now).
async fn node_binds(
    session: &Session,
    host: &Arc<Host>,
    extra: bool,
) -> Result<Vec<String>, String> {
    let unreadable =
        |e: crate::exec::docker::DockerError| format!("cannot read kube-apiserver's binds: {e}");
    let docker = NodeDocker::new(host.clone()).map_err(unreadable)?;
    let info = docker.inspect_apiserver().await.map_err(unreadable)?;
    Ok(if extra {
        deployed_binds(&info.binds, &apiserver_extra_binds(session))
    } else {
        info.binds
    })
}

/// Checks every controlplane for every `kms` provider of `configs`; refuses (changing nothing) with one line per
/// node and failure.
pub async fn preflight(
    session: &Session,
    configs: &[&EncryptionConfiguration],
) -> anyhow::Result<Vec<(String, String, PluginStatus)>> {
    let providers = kms::providers(configs.iter().copied());
    if providers.is_empty() {
        return Ok(Vec::new());
    }
    let checks = session.hosts.iter().map(|h| {
        let providers = providers.clone();
        async move {
            let (problems, healthy) = match node_binds(session, h, true).await {
                Ok(binds) => kms::preflight_node(h, &providers, &binds).await,
                Err(e) => (vec![e], Vec::new()),
            };
            (super::session::node_name(h.node()), problems, healthy)
        }
    });
    let results = futures::future::join_all(checks).await;
    let mut failures = Vec::new();
    let mut statuses = Vec::new();
    for (node, problems, healthy) in results {
        failures.extend(problems.into_iter().map(|p| format!("  node {node}: {p}")));
        statuses.extend(healthy.into_iter().map(|(name, s)| (node.clone(), name, s)));
    }
    if !failures.is_empty() {
        bail!(
            "pre-flight: KMS plugin checks failed on {} check(s); nothing was changed:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    Ok(statuses)
}

/// One line per provider and node for `encrypt status`: health and current key id, or what failed.
pub async fn status_lines(session: &Session, config: &EncryptionConfiguration) -> Vec<String> {
    let providers: Vec<KmsConfiguration> = kms::providers([config]);
    let mut lines = Vec::new();
    for k in &providers {
        for h in &session.hosts {
            let node = super::session::node_name(h.node());
            // The deployed config is served through the binds the container has now.
            let (problems, healthy) = match node_binds(session, h, false).await {
                Ok(binds) => kms::preflight_node(h, std::slice::from_ref(k), &binds).await,
                Err(e) => (vec![e], Vec::new()),
            };
            let line = match (healthy.first(), problems.first()) {
                (Some((_, s)), _) if s.key_id.is_empty() => format!(
                    "KMS {} {} on {node}: healthy ({})",
                    kms::api_version_of(k),
                    k.name,
                    s.version
                ),
                (Some((_, s)), _) => format!(
                    "KMS {} {} on {node}: healthy, key_id {}",
                    kms::api_version_of(k),
                    k.name,
                    s.key_id
                ),
                (None, Some(p)) => format!(
                    "KMS {} {} on {node}: UNHEALTHY: {p}",
                    kms::api_version_of(k),
                    k.name
                ),
                (None, None) => continue,
            };
            lines.push(line);
        }
    }
    lines
}

/// The current key id of each KMS v2 provider, when all controlplanes agree (HA plugins share one key).
pub fn current_key_ids(statuses: &[(String, String, PluginStatus)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (_, name, s) in statuses {
        if s.key_id.is_empty() {
            continue;
        }
        if let Some(e) = out.iter_mut().find(|(n, _)| n == name) {
            if e.1 != s.key_id {
                // Plugins disagree (a rotation is propagating): no single current key.
                e.1.clear();
            }
        } else {
            out.push((name.clone(), s.key_id.clone()));
        }
    }
    out.retain(|(_, id)| !id.is_empty());
    out
}

/// `(resource string, provider name)` for every rule of `config` whose writer is a KMS v2 provider.
pub fn kms_v2_writers(config: &EncryptionConfiguration) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for r in &config.resources {
        if let Some(k) = r.providers.first().and_then(|p| p.kms.as_ref())
            && kms::api_version_of(k) == "v2"
        {
            out.extend(r.resources.iter().map(|res| (res.clone(), k.name.clone())));
        }
    }
    out
}

/// How long to keep rewriting while kube-apiserver has not yet seen the plugin's new key id (it asks its plugin
/// every minute, §1.7), and the pause between attempts.
const REWRAP_DEADLINE: std::time::Duration = std::time::Duration::from_secs(240);
const REWRAP_PAUSE: std::time::Duration = std::time::Duration::from_secs(5);

/// Objects of one resource a kms-rewrap re-wraps: those not on `target` (`kms:v2:<name>:<current key id>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rewrap {
    pub resource: String,
    pub target: String,
    pub objects: u64,
    /// What the census found on other labels: label → objects.
    pub stored: Vec<(String, u64)>,
}

/// After a plugin-side key rotation the config is unchanged but stored objects still name the old key id: this
/// counts them (census label `kms:v2:<name>:<key id>`) per resource whose writer is a KMS v2 provider. Empty:
/// nothing to do (the caller goes on with its no-op plan).
pub async fn stale_key_ids(
    session: &mut Session,
    state: &crate::state::RkeState,
    config: &EncryptionConfiguration,
) -> anyhow::Result<Vec<Rewrap>> {
    let writers = kms_v2_writers(config);
    if writers.is_empty() {
        return Ok(Vec::new());
    }
    let statuses = preflight(session, &[config]).await?;
    let current = current_key_ids(&statuses);
    let mut work = Vec::new();
    for (resource, name) in &writers {
        let Some((_, key_id)) = current.iter().find(|(n, _)| n == name) else {
            bail!(
                "kms provider {name}: the controlplanes' plugins report different key ids (a key rotation is \
                 still propagating); rerun when they agree"
            );
        };
        let label = format!("kms:v2:{name}:{key_id}");
        let (_, census) = session
            .census(state, std::slice::from_ref(resource), Some(&label))
            .await?;
        let off: u64 = census.resources.values().map(|r| r.off_target_count).sum();
        if off > 0 {
            let stored = census
                .resources
                .values()
                .flat_map(|r| r.by_label.iter())
                .filter(|(l, n)| **n > 0 && l.as_str() != label)
                .map(|(l, n)| (l.clone(), *n))
                .collect();
            work.push(Rewrap {
                resource: resource.clone(),
                target: label,
                objects: off,
                stored,
            });
        }
    }
    Ok(work)
}

/// The kms-rewrap plan as text.
pub fn rewrap_text(work: &[Rewrap]) -> String {
    let mut out =
        "Plan: kms-rewrap (the config is unchanged; the KMS plugins' key id changed)\n".to_string();
    for w in work {
        let stored: Vec<String> = w.stored.iter().map(|(l, n)| format!("{l}: {n}")).collect();
        out.push_str(&format!(
            "  rewrite {}: {} object(s) not on {} ({}) — targeted\n",
            w.resource,
            w.objects,
            w.target,
            stored.join(", ")
        ));
    }
    out
}

/// Rewrites exactly the objects `work` names until the census shows only the plugins' current key id, after
/// the user's yes.
pub async fn apply_rewrap(
    global: &super::options::GlobalOpts,
    session: &mut Session,
    state: &crate::state::RkeState,
    work: &[Rewrap],
) -> anyhow::Result<std::process::ExitCode> {
    use super::execute::say;
    if !super::confirm(global)? {
        eprintln!("Cancelled; nothing was changed.");
        session.close().await;
        return Ok(std::process::ExitCode::FAILURE);
    }
    super::interrupt::install();
    let started = std::time::Instant::now();
    let mut total = 0u64;
    for Rewrap {
        resource,
        target: label,
        ..
    } in work
    {
        total += rewrap_resource(global, session, state, resource, label, started).await?;
    }
    session.close().await;
    say!(
        "done: kms-rewrap in {:.1} s ({total} objects rewritten)",
        started.elapsed().as_secs_f64()
    );
    Ok(std::process::ExitCode::SUCCESS)
}

/// Rewrites `resource`'s objects that the census finds off `label` until none is (or [`REWRAP_DEADLINE`] passes
/// since `started`); returns how many were rewritten.
async fn rewrap_resource(
    global: &super::options::GlobalOpts,
    session: &mut Session,
    state: &crate::state::RkeState,
    resource: &str,
    label: &str,
    started: std::time::Instant,
) -> anyhow::Result<u64> {
    use super::execute::say;
    let mut rewritten = 0u64;
    loop {
        let (targets, census) = session
            .census(state, &[resource.to_string()], Some(label))
            .await?;
        let keys = census.off_target_keys();
        if keys.is_empty() {
            say!("kms-rewrap: {resource}: census shows every object on {label}");
            return Ok(rewritten);
        }
        if started.elapsed() > REWRAP_DEADLINE {
            bail!(
                "kms-rewrap: {resource}: {} object(s) still not on {label} after {} s; kube-apiserver may not \
                 have picked up the plugin's new key id. Nothing was removed; rerun `atrest up`",
                keys.len(),
                started.elapsed().as_secs()
            );
        }
        let kube = session.kube().await?.clone();
        // kube-apiserver's KMS v2 health check asks the plugin for Status and switches to a new key id
        // (it also does so every minute on its own); asking for it first saves most of that wait.
        nudge_kms_health(&kube).await;
        let options = crate::exec::rewrite::RewriteOptions {
            concurrency: crate::exec::rewrite::Concurrency::from_flag(global.rewrite_concurrency),
            cancel: super::interrupt::token(),
            ..Default::default()
        };
        let report = crate::exec::rewrite::rewrite_keys(
            &kube,
            &targets,
            &session.etcd_prefix(),
            &keys,
            &options,
        )
        .await;
        if report.interrupted {
            return Err(super::interrupt::Interrupted {
                at: format!("during the kms-rewrap of {resource}"),
            }
            .into());
        }
        if !report.is_success() {
            let first: Vec<String> = report
                .errors
                .iter()
                .take(3)
                .map(|e| e.error.clone())
                .collect();
            bail!(
                "kms-rewrap: rewriting {resource} did not complete: {first:?}. Rerun `atrest up` to resume"
            );
        }
        rewritten += report.rewritten;
        say!(
            "kms-rewrap: {resource}: {} object(s) rewritten, {} unchanged",
            report.rewritten,
            report.unchanged
        );
        if report.rewritten == 0 {
            say!(
                "kms-rewrap: kube-apiserver still writes with the old key id (it asks its plugin every minute); \
                 waiting {} s",
                REWRAP_PAUSE.as_secs()
            );
            tokio::time::sleep(REWRAP_PAUSE).await;
        }
    }
}

/// `GET /readyz/kms-providers`: runs kube-apiserver's KMS v2 probe, which picks up a changed plugin key id. The
/// answer does not matter here (the census decides); errors are only logged.
async fn nudge_kms_health(kube: &kube::Client) {
    let req = match http::Request::get("/readyz/kms-providers").body(Vec::new()) {
        Ok(r) => r,
        Err(_) => return,
    };
    if let Err(e) = kube.request_text(req).await {
        tracing::debug!("GET /readyz/kms-providers: {e}");
    }
}

#[cfg(test)]
mod bind_tests {
    use super::*;

    #[test]
    fn the_socket_is_found_through_the_containers_own_binds() {
        let v = |b: &[&str]| b.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let socket = "/var/run/kmsplugin/socket.sock";
        // The container mounts the plugin directory from /srv/kms; cluster.yml names the usual path, which a
        // recreate does not add (the container path is taken).
        let container = v(&[
            "/etc/kubernetes:/etc/kubernetes:z",
            "/srv/kms:/var/run/kmsplugin",
        ]);
        let extra = v(&["/var/run/kmsplugin:/var/run/kmsplugin"]);
        let binds = deployed_binds(&container, &extra);
        assert_eq!(
            kms::host_path_through_binds(socket, &binds).as_deref(),
            Some("/srv/kms/socket.sock")
        );
        // Nothing mounted yet: cluster.yml's bind is the one the recreate adds.
        let binds = deployed_binds(&container[..1], &extra);
        assert_eq!(
            kms::host_path_through_binds(socket, &binds).as_deref(),
            Some(socket)
        );
        // Neither: not visible in the container.
        assert_eq!(
            kms::host_path_through_binds(socket, &deployed_binds(&container[..1], &[])),
            None
        );
    }
}
