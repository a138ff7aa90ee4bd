//! Configuration: what the user asked for (`cluster.yml`) and the EncryptionConfiguration model.
//!
//! Everything here is parsing and validation only; nothing touches a host.

pub mod cluster;
pub mod encryption;
