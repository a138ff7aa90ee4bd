//! The kube-apiserver stand-in: storage transformers, etcd storage and the HTTP API.
//!
//! No kube-apiserver binary is available to the testbed, so this reimplements the parts atrest depends
//! on, byte- and message-compatible with upstream (see docs/standin.md for what differs).

pub mod api;
pub mod auth;
pub mod encryption;
pub mod flags;
pub mod objects;
pub mod protobuf;
pub mod server;
pub mod status;
pub mod store;
pub mod transform;
