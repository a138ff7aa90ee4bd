//! Where a transition stands. Users see K3s/RKE2's stage names; the planner works in phases.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The rotation stage as K3s and RKE2 name it (`encrypt status` shows these).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Start,
    Prepare,
    Rotate,
    ReencryptRequest,
    ReencryptActive,
    ReencryptFinished,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Start => "start",
            Stage::Prepare => "prepare",
            Stage::Rotate => "rotate",
            Stage::ReencryptRequest => "reencrypt_request",
            Stage::ReencryptActive => "reencrypt_active",
            Stage::ReencryptFinished => "reencrypt_finished",
        })
    }
}

/// The phases of every transition O → N, in order (see docs/design.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Every server can still write as O but can already read everything N writes.
    Prepare,
    /// Every server writes as N and can still read everything O wrote.
    Rotate,
    /// Rewrite every stored object whose write provider changed.
    Reencrypt,
    /// Census of etcd: every object is on its write unit (nothing needs a provider or key that N lacks).
    Verify,
    /// Every server gets exactly N (or no config at all, for disable).
    Finish,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Prepare => "prepare",
            Phase::Rotate => "rotate",
            Phase::Reencrypt => "reencrypt",
            Phase::Verify => "verify",
            Phase::Finish => "finish",
        })
    }
}
