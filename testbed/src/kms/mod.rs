//! KMS for the testbed: upstream's KMS plugin gRPC APIs, a local-KEK plugin (`kms-plugin` binary) that the real
//! kube-apiserver of the testbed's nodes uses, and a unix-socket client for the plugin's own tests.

pub mod client;
pub mod keyfile;
pub mod plugin;
pub mod proto;
pub mod seal;

pub use client::{KmsClientError, KmsV1Client, KmsV2Client};
