//! The local test cluster (harness), the test KMS plugin, and the visible skips of root-only tests.

pub mod harness;
pub mod kms;
pub mod skip;
