//! Brings up and tears down the local test cluster.
