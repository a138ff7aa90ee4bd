//! atrest: encryption at rest for RKE-style clusters, as a declarative reconciler.
//!
//! The pipeline is visible in the module layout:
//! `config` (read and validate what the user asked for) → `plan` (pure: decide the safe sequence of steps)
//! → `exec` (carry steps out over SSH, Docker, the Kubernetes API and etcd) → `state` (remember where we are).
//! `flows` ties them together for each CLI verb.

pub mod cli;
pub mod config;
pub mod exec;
pub mod flows;
pub mod gitcheck;
pub mod gojson;
pub mod kill_points;
pub mod logging;
pub mod memory;
pub mod plan;
pub mod secret;
pub mod state;
