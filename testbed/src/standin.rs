//! The kube-apiserver stand-in: storage transformers, etcd storage and the HTTP API.
