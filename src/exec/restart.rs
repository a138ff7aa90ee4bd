//! Rolling apply over the control plane: one node at a time, deliver the file, restart or recreate
//! kube-apiserver, wait for `/readyz`; on failure restore that node (file and container), check it is healthy
//! again, and stop. Nothing is ever changed on two nodes at once.

use crate::exec::docker::{ContainerChange, DockerError, FlagChange, NodeDocker, needs_recreate};
use crate::exec::files::{self, FileError};
use crate::exec::health::{HealthProbe, NotReady, wait_ready};
use crate::exec::ssh::{Host, NodeLabel};
use crate::kill_points;
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

/// What to change on each controlplane. `Debug` leaves out the file content (it holds keys).
#[derive(Clone)]
pub struct NodeChange {
    /// New content, or `None` to remove the file.
    pub file: Option<Zeroizing<Vec<u8>>>,
    pub flag: FlagChange,
    pub extra_binds: Vec<String>,
    /// The reload flag, as [`crate::exec::docker::ContainerChange::reload`].
    pub reload: Option<bool>,
}

impl std::fmt::Debug for NodeChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeChange")
            .field(
                "file",
                &crate::secret::Withheld::of(self.file.as_deref().map(Vec::as_slice)),
            )
            .field("flag", &self.flag)
            .field("extra_binds", &self.extra_binds)
            .field("reload", &self.reload)
            .finish()
    }
}

/// One node's target: its connection, where its encryption config lives, how to probe its apiserver.
#[derive(Clone)]
pub struct RolloutTarget {
    pub host: Arc<Host>,
    /// Path of the encryption config on the node (prefix applied), e.g.
    /// `/opt/rke/etc/kubernetes/ssl/encryption.yaml`.
    pub config_path: String,
    pub probe: HealthProbe,
    /// sha256 of the file the caller last saw on the node (`Some(None)`: no file). A node whose file is
    /// otherwise just before the change was written to by someone else: it is left alone and the rollout stops.
    /// `None`: not checked.
    pub expected_sha256: Option<Option<String>>,
    /// A run killed in the middle of this node's recreate left it half-changed, and its previous container was put
    /// back ([`crate::flows`]' leftover recovery). That container may not start without the change (a disable
    /// killed after the file was removed leaves one whose flag names a missing file), so the "healthy before the
    /// change" gate is not asked of it: the change is what makes the node whole again.
    pub resumes_interrupted: bool,
}

#[derive(Clone, Debug)]
pub struct RolloutOptions {
    /// How long a restarted apiserver may take to answer `/readyz` 200.
    pub ready_timeout: Duration,
}

impl Default for RolloutOptions {
    fn default() -> Self {
        Self {
            ready_timeout: Duration::from_secs(180),
        }
    }
}

/// How the container was changed on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerAction {
    Restarted,
    Recreated,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeOutcome {
    pub node: NodeLabel,
    pub action: ContainerAction,
    /// sha256 of the file now on the node (`None`: removed).
    pub file_sha256: Option<String>,
}

/// The nodes changed, in order.
#[derive(Clone, Debug, Default)]
pub struct RolloutReport {
    pub changed: Vec<NodeOutcome>,
}

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    NotReady(#[from] NotReady),
}

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// The node was not ready after the change; it was restored and is healthy again.
    #[error(
        "{node}: the change failed ({}); the node was restored to its previous file and container and is \
         healthy again. Nodes changed before it: {}", unprefixed(.node, .cause), names(.changed)
    )]
    RolledBack {
        node: NodeLabel,
        cause: StepError,
        changed: Vec<NodeOutcome>,
    },
    /// The change failed and so did the restore: the node needs a human.
    #[error(
        "{node}: the change failed ({}) AND restoring the node failed ({}); it needs manual \
         attention. Nodes changed before it: {}", unprefixed(.node, .cause), unprefixed(.node, .restore),
        names(.changed)
    )]
    RestoreFailed {
        node: NodeLabel,
        cause: StepError,
        restore: StepError,
        changed: Vec<NodeOutcome>,
    },
    /// The node was changed and is ready, but the caller's hook failed: the rollout stopped after it.
    #[error(
        "{node} was changed and is ready, but recording progress failed ({error}); stopped. Nodes changed: {}",
        names(.changed)
    )]
    HookFailed {
        node: NodeLabel,
        error: String,
        changed: Vec<NodeOutcome>,
    },
    /// A check on the node before its change failed (e.g. its image tag moved); nothing was done to it.
    #[error(
        "{node}: {}. Nothing was done to this node; stopped. Nodes changed before it: {}",
        unprefixed(.node, .cause), names(.changed)
    )]
    NotStarted {
        node: NodeLabel,
        cause: StepError,
        changed: Vec<NodeOutcome>,
    },
    /// A node's file was not what the caller last saw: someone else wrote it. Nothing was done to the node.
    #[error(
        "{node}: its encryption config changed since this run read it (expected {}, found {}): another run or \
         tool wrote it. Nothing was done to this node; stopped. Nodes changed before it: {}",
        short(.expected), short(.found), names(.changed)
    )]
    ChangedUnderfoot {
        node: NodeLabel,
        expected: Option<String>,
        found: Option<String>,
        changed: Vec<NodeOutcome>,
    },
    /// The SSH connection to a node was lost before anything was done to it.
    #[error(
        "{node}: the SSH connection to it was lost; nothing was done to it. Rerun once the node answers SSH again. \
         Nodes changed before it: {}",
        names(.changed)
    )]
    Unreachable {
        node: NodeLabel,
        changed: Vec<NodeOutcome>,
    },
    /// The SSH connection to a node was lost in the middle of its change: it could not be restored.
    #[error(
        "{node}: the SSH connection to it was lost during its change ({}), so it could not be restored. It \
         runs the new config or the previous one (each reads every stored object), or no kube-apiserver if the \
         loss came in the middle of a container recreate. Rerun once the node answers SSH again: the rerun takes \
         the node as it finds it and finishes the change. Nodes changed before it: {}",
        unprefixed(.node, .cause), names(.changed)
    )]
    LostMidChange {
        node: NodeLabel,
        cause: StepError,
        changed: Vec<NodeOutcome>,
    },
    /// A node was not healthy before anything was done to it.
    #[error(
        "{node}: kube-apiserver is not healthy before the change; nothing was done to it ({}). Nodes changed \
         before it: {}",
        unprefixed(.node, .cause), names(.changed)
    )]
    UnhealthyBefore {
        node: NodeLabel,
        cause: StepError,
        changed: Vec<NodeOutcome>,
    },
}

impl RolloutError {
    /// Whether the node the rollout stopped at runs its previous config for certain: it was put back, or nothing
    /// was done to it. Not so when its restore failed, the connection was lost mid-change, or it was changed
    /// and only the record after it failed.
    pub fn failed_node_unchanged(&self) -> bool {
        matches!(
            self,
            RolloutError::RolledBack { .. }
                | RolloutError::NotStarted { .. }
                | RolloutError::ChangedUnderfoot { .. }
                | RolloutError::Unreachable { .. }
                | RolloutError::UnhealthyBefore { .. }
        )
    }

    /// Nodes that were changed successfully before the failure.
    pub fn changed(&self) -> &[NodeOutcome] {
        match self {
            RolloutError::RolledBack { changed, .. }
            | RolloutError::RestoreFailed { changed, .. }
            | RolloutError::HookFailed { changed, .. }
            | RolloutError::UnhealthyBefore { changed, .. }
            | RolloutError::Unreachable { changed, .. }
            | RolloutError::LostMidChange { changed, .. }
            | RolloutError::ChangedUnderfoot { changed, .. }
            | RolloutError::NotStarted { changed, .. } => changed,
        }
    }
}

/// A file hash for messages: its first 12 hex digits, or "no file".
pub fn short(sha256: &Option<String>) -> String {
    match sha256 {
        Some(h) => format!("sha256 {}", &h[..h.len().min(12)]),
        None => "no file".to_string(),
    }
}

/// `cause` without the `<node>: ` its parts put before their text: the rollout error names the node once, first.
fn unprefixed(node: &NodeLabel, cause: &StepError) -> String {
    cause.to_string().replace(&format!("{node}: "), "")
}

fn names(changed: &[NodeOutcome]) -> String {
    if changed.is_empty() {
        "none".into()
    } else {
        changed
            .iter()
            .map(|o| o.node.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Apply `change` to every target in turn. After each node is changed and ready, `after_node` is called (the
/// caller persists progress there); an error from it stops the rollout after that node (the node stays changed).
pub async fn rolling_apply<F>(
    targets: &[RolloutTarget],
    change: &NodeChange,
    opts: &RolloutOptions,
    mut after_node: F,
) -> Result<RolloutReport, RolloutError>
where
    F: FnMut(&NodeOutcome) -> Result<(), String>,
{
    let mut report = RolloutReport::default();
    for target in targets {
        let node = target.host.label().clone();
        if target.host.is_closed() {
            return Err(RolloutError::Unreachable {
                node,
                changed: report.changed,
            });
        }
        // Never start on a node that is already broken: its failure would be blamed on us and rolled "back" to
        // a broken state. A node an interrupted run of ours left half-changed is ours to finish.
        if target.resumes_interrupted {
            tracing::info!(
                "{node}: finishing the change an interrupted run began here (no health gate before it)"
            );
        } else if let Err(e) =
            wait_ready(&target.host, &target.probe, Duration::from_secs(20)).await
        {
            return Err(RolloutError::UnhealthyBefore {
                node,
                cause: e.into(),
                changed: report.changed,
            });
        }
        match apply_one(target, change, opts).await {
            Ok(outcome) => {
                tracing::info!("{}: changed ({:?}) and ready", outcome.node, outcome.action);
                if let Err(e) = after_node(&outcome) {
                    report.changed.push(outcome);
                    return Err(RolloutError::HookFailed {
                        node,
                        error: e,
                        changed: report.changed,
                    });
                }
                report.changed.push(outcome);
            }
            Err(failure) => return Err(failure.stopped_at(node, report.changed)),
        }
    }
    Ok(report)
}

enum NodeFailure {
    /// A check before the first change failed; nothing was done.
    NotStarted(StepError),
    /// The node's file was not the expected one; nothing was done.
    Changed {
        expected: Option<String>,
        found: Option<String>,
    },
    RolledBack(StepError),
    RestoreFailed {
        cause: StepError,
        restore: StepError,
    },
    /// The SSH connection was lost during the change; no restore was possible.
    Lost(StepError),
}

impl NodeFailure {
    /// The rollout's error for a failure on `node`, after the nodes `changed`.
    fn stopped_at(self, node: NodeLabel, changed: Vec<NodeOutcome>) -> RolloutError {
        match self {
            NodeFailure::NotStarted(cause) => RolloutError::NotStarted {
                node,
                cause,
                changed,
            },
            NodeFailure::Changed { expected, found } => RolloutError::ChangedUnderfoot {
                node,
                expected,
                found,
                changed,
            },
            NodeFailure::RolledBack(cause) => RolloutError::RolledBack {
                node,
                cause,
                changed,
            },
            NodeFailure::Lost(cause) => RolloutError::LostMidChange {
                node,
                cause,
                changed,
            },
            NodeFailure::RestoreFailed { cause, restore } => RolloutError::RestoreFailed {
                node,
                cause,
                restore,
                changed,
            },
        }
    }
}

async fn apply_one(
    target: &RolloutTarget,
    change: &NodeChange,
    opts: &RolloutOptions,
) -> Result<NodeOutcome, NodeFailure> {
    let host = &target.host;
    let docker = NodeDocker::new(host.clone()).map_err(|e| NodeFailure::RolledBack(e.into()))?;
    // Everything needed to undo, captured before the first change.
    let info = docker
        .inspect_apiserver()
        .await
        .map_err(|e| NodeFailure::RolledBack(e.into()))?;
    let previous = files::read_file(host, &target.config_path)
        .await
        .map_err(|e| NodeFailure::RolledBack(e.into()))?;
    if let Some(expected) = &target.expected_sha256 {
        let found = previous.as_deref().map(|p| files::sha256_hex(p));
        if &found != expected {
            return Err(NodeFailure::Changed {
                expected: expected.clone(),
                found,
            });
        }
    }
    let container_change = ContainerChange {
        flag: change.flag,
        extra_binds: change.extra_binds.clone(),
        reload: change.reload,
    };
    let recreate = needs_recreate(&info, &container_change);
    if recreate {
        docker
            .check_recreate()
            .await
            .map_err(|e| NodeFailure::NotStarted(e.into()))?;
    }

    let changed_at = unix_now();
    let attempt = async {
        match &change.file {
            Some(bytes) => {
                files::write_file_atomic(host, &target.config_path, bytes, 0o600).await?
            }
            None => files::remove_file(host, &target.config_path).await?,
        }
        kill_points::here("node:file-written");
        if recreate {
            docker.begin_recreate(&container_change).await?;
        } else {
            docker.restart(crate::exec::docker::APISERVER).await?;
        }
        ready_or_why(host, &docker, &target.probe, opts.ready_timeout, changed_at).await?;
        kill_points::here("node:ready");
        if recreate {
            docker.commit_recreate().await?;
        }
        Ok::<_, StepError>(())
    };
    match attempt.await {
        Ok(()) => Ok(NodeOutcome {
            node: host.label().clone(),
            action: if recreate {
                ContainerAction::Recreated
            } else {
                ContainerAction::Restarted
            },
            file_sha256: change.file.as_ref().map(|b| files::sha256_hex(b)),
        }),
        Err(cause) if host.is_closed() => Err(NodeFailure::Lost(cause)),
        Err(cause) => {
            tracing::warn!(
                "{}: {cause}; restoring the previous file and container",
                host.label()
            );
            match restore(
                target,
                &docker,
                previous.as_deref().map(|v| v.as_slice()),
                recreate,
                opts,
            )
            .await
            {
                Ok(()) => Err(NodeFailure::RolledBack(cause)),
                Err(restore) => Err(NodeFailure::RestoreFailed { cause, restore }),
            }
        }
    }
}

async fn restore(
    target: &RolloutTarget,
    docker: &NodeDocker,
    previous: Option<&[u8]>,
    recreated: bool,
    opts: &RolloutOptions,
) -> Result<(), StepError> {
    let host = &target.host;
    match previous {
        Some(bytes) => files::write_file_atomic(host, &target.config_path, bytes, 0o600).await?,
        None => files::remove_file(host, &target.config_path).await?,
    }
    let old_exists = docker
        .inspect(crate::exec::docker::OLD_APISERVER)
        .await?
        .is_some();
    let restored_at = unix_now();
    if recreated && old_exists {
        docker.rollback_recreate().await?;
    } else {
        docker.restart(crate::exec::docker::APISERVER).await?;
    }
    ready_or_why(host, docker, &target.probe, opts.ready_timeout, restored_at).await?;
    Ok(())
}

/// [`wait_ready`], and when the server never answers, why (its container's state and last log lines since
/// `since`, Unix seconds), so the error names the server's reason and not only "connection refused".
async fn ready_or_why(
    host: &Host,
    docker: &NodeDocker,
    probe: &HealthProbe,
    timeout: Duration,
    since: i64,
) -> Result<(), NotReady> {
    match wait_ready(host, probe, timeout).await {
        Ok(()) => Ok(()),
        Err(mut not_ready) => {
            not_ready.server = docker.why_not_serving(since).await;
            Err(not_ready)
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rollout_error_names_its_node_once() {
        let node = NodeLabel {
            address: "10.0.0.12".into(),
            hostname: Some("cp2".into()),
        };
        let state = |detail: &str| {
            StepError::Docker(DockerError::State {
                node: node.to_string(),
                detail: detail.into(),
            })
        };
        let error = RolloutError::RestoreFailed {
            node: node.clone(),
            cause: state("recreate failed"),
            restore: state("no old-kube-apiserver"),
            changed: vec![],
        };
        let text = error.to_string();
        assert_eq!(text.matches("10.0.0.12").count(), 1, "{text}");
        assert!(
            text.contains("the change failed (recreate failed) AND restoring the node failed (no old-kube-apiserver)"),
            "{text}"
        );
    }

    #[test]
    fn debug_of_a_node_change_leaves_out_the_file() {
        let change = NodeChange {
            file: Some(Zeroizing::new(b"secret: c2VjcmV0LWtleQ==".to_vec())),
            flag: FlagChange::Add,
            extra_binds: vec![],
            reload: None,
        };
        let text = format!("{change:?}");
        assert!(
            !text.contains("c2VjcmV0") && !text.contains("115, 101"),
            "{text}"
        );
        assert!(
            text.contains("<24 bytes, not shown>") && text.contains("Add"),
            "{text}"
        );
    }
}
