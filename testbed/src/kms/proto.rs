//! Generated gRPC/protobuf code: one copy, in `atrest::exec::kms::proto` (root `build.rs`, `proto/`).

pub use atrest::exec::kms::proto::{v1beta1, v2};
