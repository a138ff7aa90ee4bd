//! State: `cluster.rkestate` (RKE's JSON) with atrest's own bookkeeping under one namespaced key.

pub mod atrest;
