//! State: `cluster.rkestate` (RKE's JSON) with atrest's own bookkeeping under one namespaced key.
//!
//! [`rkestate::RkeState`] is the document (every unknown key kept, in order); [`store::StateFile`] is the file on
//! disk (locked, written atomically, 0600); [`paths`] finds both files next to the cluster config like RKE does.

pub mod atrest;
pub mod error;
pub mod paths;
pub mod rkestate;
pub mod store;

pub use error::StateError;
pub use rkestate::{CertificatePem, RkeState};
pub use store::StateFile;
