//! The local test cluster (harness) and the kube-apiserver stand-in.

pub mod harness;
pub mod kms;
pub mod skip;
pub mod standin;
