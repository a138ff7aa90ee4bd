//! Execution: everything that touches a host, Docker, the Kubernetes API or etcd, behind small interfaces.
