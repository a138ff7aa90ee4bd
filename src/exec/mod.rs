//! Execution: everything that touches a host, Docker, the Kubernetes API or etcd, behind small interfaces.
pub mod etcd;
pub mod kube;
pub mod rewrite;
