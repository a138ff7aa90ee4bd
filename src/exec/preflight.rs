//! Checks before any change: every controlplane reachable, its Docker engine answering, the prefix directory
//! writable, a `kube-apiserver` container present. Read-only; all failing nodes are reported together.

use crate::config::cluster::{ClusterConfig, Node};
use crate::exec::docker::{APISERVER, NodeDocker, OLD_APISERVER};
use crate::exec::ssh::{Host, NodeLabel, SshOptions, connect_each, shell_quote};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
#[error("preflight failed on {} node(s); nothing was changed:\n{}", .0.len(), list(.0))]
pub struct PreflightError(pub Vec<(NodeLabel, String)>);

fn list(failures: &[(NodeLabel, String)]) -> String {
    failures
        .iter()
        // A Docker or SSH error names its node itself: the list names it once.
        .map(|(n, why)| format!("  - {n}: {}", why.replace(&format!("{n}: "), "")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Check one connected host. `kubernetes_dir` is the host path of `/etc/kubernetes` (prefix applied);
/// `expects_container`: a `kube-apiserver` container must be there (not while an interrupted recreate is to be
/// undone first).
pub async fn check_host(
    host: &Arc<Host>,
    kubernetes_dir: &str,
    expects_container: bool,
) -> Vec<String> {
    let mut problems = Vec::new();
    // Writable without writing anything that matters: create and remove a temp file in the target directory.
    let d = shell_quote(kubernetes_dir);
    let probe = format!(
        "[ -d {d} ] || {{ echo 'directory missing' >&2; exit 1; }}; t=$(mktemp {d}/.atrest-preflight.XXXXXX) && rm -f \"$t\""
    );
    match crate::exec::root::exec(host, &probe).await {
        Ok(out) if out.success() => {}
        Ok(out) => problems.push(format!(
            "{kubernetes_dir} is not writable as root (exit {}): {}",
            out.status,
            out.stderr_text()
        )),
        Err(e) => problems.push(e.to_string()),
    }
    match NodeDocker::new(host.clone()) {
        Err(e) => problems.push(e.to_string()),
        Ok(docker) => match docker.ping().await {
            Err(e) => problems.push(e.to_string()),
            Ok(()) if !expects_container => {}
            Ok(()) => match docker.inspect(APISERVER).await {
                Ok(Some(_)) => {}
                Ok(None) => problems.push(format!(
                    "no {APISERVER} container on {}{}",
                    host.docker_socket(),
                    match docker.inspect(OLD_APISERVER).await {
                        Ok(Some(_)) => format!(
                            " ({OLD_APISERVER} is there: an interrupted recreate, or one in progress; \
                             `atrest up` puts it back first when no other run holds the cluster lock)"
                        ),
                        _ => String::new(),
                    }
                )),
                Err(e) => problems.push(e.to_string()),
            },
        },
    }
    problems
}

/// Check every host; `Err` lists every failing node with every reason.
pub async fn preflight(
    hosts: &[Arc<Host>],
    kubernetes_dir: impl Fn(&Host) -> String,
) -> Result<(), PreflightError> {
    preflight_with(hosts, kubernetes_dir, |_| true).await
}

/// [`preflight`], with `expects_container` saying per host whether a `kube-apiserver` container must be there.
pub async fn preflight_with(
    hosts: &[Arc<Host>],
    kubernetes_dir: impl Fn(&Host) -> String,
    expects_container: impl Fn(&Host) -> bool,
) -> Result<(), PreflightError> {
    let checks = hosts.iter().map(|h| {
        let dir = kubernetes_dir(h);
        let expected = expects_container(h);
        async move { (h.label().clone(), check_host(h, &dir, expected).await) }
    });
    let results = futures::future::join_all(checks).await;
    let failures: Vec<(NodeLabel, String)> = results
        .into_iter()
        .flat_map(|(label, problems)| problems.into_iter().map(move |p| (label.clone(), p)))
        .collect();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(PreflightError(failures))
    }
}

/// Connect to every node and check each one; every unreachable or failing node is listed in one error.
/// `kubernetes_dir` is `<prefix_path>/etc/kubernetes` as the nodes see it. Read-only.
pub async fn connect_and_preflight(
    cluster: &ClusterConfig,
    nodes: &[Node],
    opts: &SshOptions,
    max_parallel: usize,
    kubernetes_dir: &str,
) -> Result<Vec<Arc<Host>>, PreflightError> {
    let results = connect_each(cluster, nodes, opts, max_parallel)
        .await
        .map_err(|e| PreflightError(vec![(e.node().clone(), e.to_string())]))?;
    let mut hosts = Vec::new();
    let mut failures = Vec::new();
    for r in results {
        match r {
            Ok(h) => hosts.push(h),
            Err(e) => failures.push((e.node().clone(), e.to_string())),
        }
    }
    if let Err(PreflightError(more)) = preflight(&hosts, |_| kubernetes_dir.to_string()).await {
        failures.extend(more);
    }
    if failures.is_empty() {
        Ok(hosts)
    } else {
        for h in &hosts {
            h.close().await;
        }
        Err(PreflightError(failures))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failing_node_is_named_once() {
        let node = NodeLabel {
            address: "10.0.0.13".into(),
            hostname: None,
        };
        let error = PreflightError(vec![(
            node.clone(),
            format!("{node}: Docker at /var/run/docker.sock: ping: refused"),
        )]);
        let text = error.to_string();
        assert_eq!(text.matches("10.0.0.13").count(), 1, "{text}");
        assert!(
            text.ends_with("\n  - node 10.0.0.13: Docker at /var/run/docker.sock: ping: refused"),
            "{text}"
        );
    }
}
