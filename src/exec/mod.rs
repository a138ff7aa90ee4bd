//! Execution: everything that touches a host, Docker, the Kubernetes API or etcd, behind small interfaces.

pub mod auth;
pub mod cluster_lock;
pub mod docker;
pub mod etcd;
pub mod files;
pub mod health;
pub mod kms;
pub mod known_hosts;
pub mod kube;
pub mod metrics;
pub mod prefix;
pub mod preflight;
pub mod restart;
pub mod retry_after;
pub mod rewrite;
pub mod rke_state;
pub mod root;
pub mod sizes;
pub mod ssh;
pub mod tunnel;
