//! Generated gRPC/protobuf code (see `testbed/build.rs` and `testbed/proto/`).

/// KMS plugin API v1beta1 (`v1beta1.KeyManagementService`).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1beta1 {
    tonic::include_proto!("v1beta1");
}

/// KMS plugin API v2 (`v2.KeyManagementService`) and the KMS v2 storage envelope `EncryptedObject`
/// (both live in proto package `v2` upstream).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v2 {
    tonic::include_proto!("v2");
}
