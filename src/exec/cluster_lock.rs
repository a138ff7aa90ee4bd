//! One atrest run per cluster: a lock held in the cluster's own etcd.
//!
//! The state file's flock only keeps out runs on the same machine and checkout. Two checkouts (a laptop and a
//! CI job) reach the same nodes with their own state files, and interleaved they can undo each other's key
//! changes. etcd is the one thing every run already talks to and that stays up while kube-apiserver restarts, so
//! the lock is a key there, outside Kubernetes' prefix, attached to an etcd lease: a run that dies loses the
//! lock when the lease expires ([`TTL_SECONDS`]), and a live run keeps it alive in the background.
//!
//! The same checkout on the same machine (host and state path) may take over its own lock at once: it is
//! already serialised by the state file's flock, and so a rerun after `kill -9` need not wait for the lease.

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long the lock outlives a run that stopped renewing it.
pub const TTL_SECONDS: i64 = 60;
/// How often a holder renews its lease.
const RENEW_EVERY: Duration = Duration::from_secs(10);

/// Who holds the lock, as stored in etcd (JSON) and named in the refusal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockOwner {
    /// `user@host` of the run.
    pub holder: String,
    /// The state file the run works from (absolute).
    pub state: String,
    pub pid: u32,
    /// The verb, e.g. `up` or `encrypt rotate-key`.
    pub command: String,
    /// RFC 3339, when the lock was taken.
    pub since: String,
}

impl LockOwner {
    /// This process, working from `state` for `command`.
    pub fn this_run(state: &std::path::Path, command: &str, since: String) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "unknown-host".to_string());
        let user = std::env::var("USER").unwrap_or_else(|_| "unknown-user".to_string());
        let state = std::fs::canonicalize(state).unwrap_or_else(|_| state.to_path_buf());
        LockOwner {
            holder: format!("{user}@{host}"),
            state: state.display().to_string(),
            pid: std::process::id(),
            command: command.to_string(),
            since,
        }
    }

    /// The same checkout on the same machine: its runs are already one at a time (the state file's flock).
    fn same_checkout(&self, other: &LockOwner) -> bool {
        host_of(&self.holder) == host_of(&other.holder) && self.state == other.state
    }
}

fn host_of(holder: &str) -> &str {
    holder.rsplit_once('@').map_or(holder, |(_, host)| host)
}

/// What to do about the lock as found in etcd.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it.
    Take,
    /// Held by an earlier run of this checkout (killed, or its lease not yet expired): take it over.
    TakeOver,
    /// Another run holds it.
    Refuse,
}

/// Pure: given the stored holder (if any, and whether it parses), what this run may do.
pub fn decide(me: &LockOwner, found: Option<Result<LockOwner, String>>) -> Decision {
    match found {
        None => Decision::Take,
        Some(Ok(owner)) if owner.same_checkout(me) => Decision::TakeOver,
        // An unreadable value is someone's lock all the same: never take it silently.
        Some(_) => Decision::Refuse,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another atrest run holds the cluster lock: {holder} (pid {pid}, `atrest {command}` from {state}, since \
         {since}); it expires {expiry} unless that run is still alive. Nothing was changed. Wait for it to end, \
         or if it is gone for good, wait for the lock to expire (or delete the etcd key {key})"
    )]
    Held {
        holder: String,
        pid: u32,
        command: String,
        state: String,
        since: String,
        expiry: String,
        key: String,
    },
    #[error(
        "the cluster lock {key} holds a value atrest cannot read ({why}); nothing was changed. Delete the key once \
         no other run is going"
    )]
    Unreadable { key: String, why: String },
    #[error("taking the cluster lock {key} in etcd failed: {source}; nothing was changed")]
    Etcd {
        key: String,
        source: etcd_client::Error,
    },
    #[error(
        "the cluster lock {key} changed hands while it was being taken; nothing was changed, try again"
    )]
    Raced { key: String },
}

/// A held lock: renewed in the background until [`ClusterLock::release`] (or the process ends).
pub struct ClusterLock {
    client: Client,
    key: String,
    lease: i64,
    lost: Arc<AtomicBool>,
    renewer: tokio::task::JoinHandle<()>,
}

/// The etcd key of the lock for a cluster whose Kubernetes objects live under `etcd_prefix` (e.g. `/registry`):
/// outside that prefix, so that kube-apiserver never sees it, and distinct per prefix on a shared etcd.
pub fn lock_key(etcd_prefix: &str) -> String {
    format!("/atrest{}/lock", etcd_prefix.trim_end_matches('/'))
}

impl ClusterLock {
    /// Takes the lock at `key` for `me`, or says who holds it.
    pub async fn acquire(client: &Client, key: &str, me: &LockOwner) -> Result<Self, LockError> {
        let mut client = client.clone();
        let etcd = |source| LockError::Etcd {
            key: key.to_string(),
            source,
        };
        let value = serde_json::to_vec(me).map_err(|e| LockError::Unreadable {
            key: key.to_string(),
            why: e.to_string(),
        })?;
        let lease = client
            .lease_grant(TTL_SECONDS, None)
            .await
            .map_err(etcd)?
            .id();
        let put = TxnOp::put(
            key,
            value.clone(),
            Some(PutOptions::new().with_lease(lease)),
        );
        let create = Txn::new()
            .when([Compare::version(key, CompareOp::Equal, 0)])
            .and_then([put.clone()])
            .or_else([TxnOp::get(key, None)]);
        let response = client.txn(create).await.map_err(etcd)?;
        if !response.succeeded() {
            let Some((stored, mod_revision, holder_lease)) = first_kv(&response.op_responses())
            else {
                let _ = client.lease_revoke(lease).await;
                return Err(LockError::Raced {
                    key: key.to_string(),
                });
            };
            let found = serde_json::from_slice::<LockOwner>(&stored).map_err(|e| e.to_string());
            match decide(me, Some(found.clone())) {
                Decision::TakeOver => {
                    let take_over = Txn::new()
                        .when([Compare::mod_revision(key, CompareOp::Equal, mod_revision)])
                        .and_then([put]);
                    if !client.txn(take_over).await.map_err(etcd)?.succeeded() {
                        let _ = client.lease_revoke(lease).await;
                        return Err(LockError::Raced {
                            key: key.to_string(),
                        });
                    }
                    tracing::info!(
                        "took over the cluster lock left by an earlier run of this checkout"
                    );
                }
                Decision::Take | Decision::Refuse => {
                    let _ = client.lease_revoke(lease).await;
                    return Err(held_error(&mut client, key, found, holder_lease).await);
                }
            }
        }
        let lost = Arc::new(AtomicBool::new(false));
        let renewer = tokio::spawn(renew(client.clone(), lease, lost.clone()));
        Ok(ClusterLock {
            client,
            key: key.to_string(),
            lease,
            lost,
            renewer,
        })
    }

    /// The lease could not be renewed for longer than it lasts: another run may have the lock now.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Gives the lock up: deletes the key if it is still this run's, and revokes the lease.
    pub async fn release(mut self) {
        self.renewer.abort();
        let ours = Txn::new()
            .when([Compare::lease(
                self.key.as_str(),
                CompareOp::Equal,
                self.lease,
            )])
            .and_then([TxnOp::delete(self.key.as_str(), None)]);
        if let Err(e) = self.client.txn(ours).await {
            tracing::warn!(
                "releasing the cluster lock failed ({e}); it expires within {TTL_SECONDS} s"
            );
        }
        let _ = self.client.lease_revoke(self.lease).await;
    }
}

impl Drop for ClusterLock {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

/// The lock as `status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockView {
    /// The holder, or why its value is unreadable.
    pub owner: Result<LockOwner, String>,
    /// Seconds left on the holder's lease (`None`: no lease, or unknown).
    pub expires_in: Option<i64>,
}

impl LockView {
    /// One line: who holds it and for how long.
    pub fn text(&self) -> String {
        let expiry = self.expires_in.map_or_else(
            || "no expiry known".to_string(),
            |s| format!("expires in {s} s unless renewed"),
        );
        match &self.owner {
            Ok(o) => format!(
                "held by {} (pid {}, `atrest {}` from {}, since {}; {expiry})",
                o.holder, o.pid, o.command, o.state, o.since
            ),
            Err(why) => format!("held, by a value atrest cannot read ({why}; {expiry})"),
        }
    }
}

/// Who holds the lock at `key` now, if anyone. Reads only.
pub async fn inspect(client: &Client, key: &str) -> Result<Option<LockView>, etcd_client::Error> {
    let mut client = client.clone();
    let response = client.get(key, None).await?;
    let Some(kv) = response.kvs().first() else {
        return Ok(None);
    };
    let owner = serde_json::from_slice::<LockOwner>(kv.value()).map_err(|e| e.to_string());
    let expires_in = match kv.lease() {
        0 => None,
        id => client
            .lease_time_to_live(id, None)
            .await
            .ok()
            .map(|t| t.ttl())
            .filter(|ttl| *ttl >= 0),
    };
    Ok(Some(LockView { owner, expires_in }))
}

/// The stored value, its mod revision and its lease, from a failed create's `get`.
fn first_kv(responses: &[TxnOpResponse]) -> Option<(Vec<u8>, i64, i64)> {
    responses.iter().find_map(|r| match r {
        TxnOpResponse::Get(get) => get
            .kvs()
            .first()
            .map(|kv| (kv.value().to_vec(), kv.mod_revision(), kv.lease())),
        _ => None,
    })
}

async fn held_error(
    client: &mut Client,
    key: &str,
    found: Result<LockOwner, String>,
    holder_lease: i64,
) -> LockError {
    let owner = match found {
        Ok(owner) => owner,
        Err(why) => {
            return LockError::Unreadable {
                key: key.to_string(),
                why,
            };
        }
    };
    let expiry = match holder_lease {
        0 => "never (it has no lease)".to_string(),
        id => match client.lease_time_to_live(id, None).await {
            Ok(ttl) if ttl.ttl() >= 0 => format!("in {} s", ttl.ttl()),
            _ => "soon".to_string(),
        },
    };
    LockError::Held {
        holder: owner.holder,
        pid: owner.pid,
        command: owner.command,
        state: owner.state,
        since: owner.since,
        expiry,
        key: key.to_string(),
    }
}

/// Renews the lease every [`RENEW_EVERY`]; marks the lock lost once renewals have failed for a whole TTL or
/// etcd says the lease is gone.
async fn renew(mut client: Client, lease: i64, lost: Arc<AtomicBool>) {
    let mut last_renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        match renew_once(&mut client, lease).await {
            Ok(ttl) if ttl > 0 => last_renewed = tokio::time::Instant::now(),
            Ok(_) => {
                tracing::warn!("the cluster lock's lease expired; another run may take the lock");
                lost.store(true, Ordering::SeqCst);
                return;
            }
            Err(e) => {
                tracing::warn!("renewing the cluster lock failed: {e}");
                if last_renewed.elapsed() >= Duration::from_secs(TTL_SECONDS as u64) {
                    lost.store(true, Ordering::SeqCst);
                    return;
                }
            }
        }
    }
}

async fn renew_once(client: &mut Client, lease: i64) -> Result<i64, etcd_client::Error> {
    let (mut keeper, mut stream) = client.lease_keep_alive(lease).await?;
    keeper.keep_alive().await?;
    match stream.message().await? {
        Some(response) => Ok(response.ttl()),
        None => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(holder: &str, state: &str) -> LockOwner {
        LockOwner {
            holder: holder.to_string(),
            state: state.to_string(),
            pid: 42,
            command: "up".to_string(),
            since: "2026-12-02T01:00:00Z".to_string(),
        }
    }

    #[test]
    fn a_free_lock_is_taken() {
        assert_eq!(decide(&owner("ci@a", "/s"), None), Decision::Take);
    }

    #[test]
    fn the_same_checkout_takes_its_own_lock_over() {
        let me = owner("ci@a", "/repo/cluster.rkestate");
        let earlier = LockOwner {
            pid: 7,
            ..owner("root@a", "/repo/cluster.rkestate")
        };
        assert_eq!(decide(&me, Some(Ok(earlier))), Decision::TakeOver);
    }

    #[test]
    fn another_checkout_or_machine_is_refused() {
        let me = owner("ci@a", "/repo/cluster.rkestate");
        let other_checkout = owner("ci@a", "/other/cluster.rkestate");
        let other_machine = owner("ci@b", "/repo/cluster.rkestate");
        assert_eq!(decide(&me, Some(Ok(other_checkout))), Decision::Refuse);
        assert_eq!(decide(&me, Some(Ok(other_machine))), Decision::Refuse);
    }

    #[test]
    fn an_unreadable_lock_is_refused() {
        let me = owner("ci@a", "/s");
        assert_eq!(decide(&me, Some(Err("garbage".into()))), Decision::Refuse);
    }

    #[test]
    fn the_key_is_outside_kubernetes_prefix_and_per_prefix() {
        assert_eq!(lock_key("/registry"), "/atrest/registry/lock");
        assert_eq!(lock_key("/registry/"), "/atrest/registry/lock");
        assert_eq!(lock_key("/cluster-b"), "/atrest/cluster-b/lock");
        assert!(!lock_key("/registry").starts_with("/registry"));
    }

    #[test]
    fn the_refusal_names_the_holder_and_how_long_it_lasts() {
        let e = LockError::Held {
            holder: "ci@b".into(),
            pid: 9,
            command: "encrypt rotate-key".into(),
            state: "/other/cluster.rkestate".into(),
            since: "2026-12-02T01:00:00Z".into(),
            expiry: "in 41 s".into(),
            key: lock_key("/registry"),
        };
        let text = e.to_string();
        for part in [
            "ci@b",
            "pid 9",
            "encrypt rotate-key",
            "/other/cluster.rkestate",
            "in 41 s",
            "Nothing was changed",
        ] {
            assert!(text.contains(part), "{part:?} not in {text}");
        }
    }
}
