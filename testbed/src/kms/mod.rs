//! KMS for the testbed: upstream's KMS plugin gRPC APIs, a local-KEK plugin (`kms-plugin` binary), a unix-socket
//! client, the KMS v1/v2 storage envelopes, and [`KmsTransformer`], which the kube-apiserver stand-in plugs in for
//! `kms` providers.

pub mod client;
pub mod envelope;
pub mod keyfile;
pub mod plugin;
pub mod proto;
pub mod testing;
pub mod transformer;

pub use client::{KmsClientError, KmsV1Client, KmsV2Client};
pub use envelope::EnvelopeError;
pub use transformer::{KmsApiVersion, KmsError, KmsProviderConfig, KmsTransformer};
