//! State: `cluster.rkestate` (RKE's JSON) and atrest's own records file beside it (`<stem>.atreststate`).
//!
//! [`rkestate::RkeState`] is RKE's document (every unknown key kept, in order); [`store::StateFile`] is that file
//! on disk (locked, written atomically, 0600); [`records`] is atrest's file (same guarantees), kept apart because
//! RKE's writes drop keys it does not know; [`paths`] finds the files next to the cluster config.

pub mod atrest;
pub mod error;
pub mod paths;
pub mod records;
pub mod rkestate;
pub mod store;

pub use error::StateError;
pub use rkestate::{CertificatePem, RkeState};
pub use store::StateFile;
