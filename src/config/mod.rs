//! Configuration: what the user asked for (`cluster.yml`) and the EncryptionConfiguration model.
//!
//! Everything here is parsing and validation only; nothing touches a host.

pub mod cluster;
pub mod encryption;
pub mod error;
pub(crate) mod gofmt;
pub mod keys;
pub mod render;
pub mod yaml_pos;

pub use error::{ConfigError, Diagnostic, Position};

use encryption::EncryptionConfiguration;

/// What cluster.yml asks for, as far as encryption at rest goes.
#[derive(Clone, Debug, PartialEq)]
pub enum Desired {
    /// `enabled: false` (or no `secrets_encryption_config`). A `custom_config` given anyway is ignored;
    /// see [`cluster::ClusterConfig::custom_config_ignored`].
    Disabled,
    /// `enabled: true` without `custom_config`: atrest generates and rotates the keys (RKE's shape:
    /// `secrets` with `[aescbc, identity]`).
    Managed,
    /// `enabled: true` with `custom_config`: used as written (validated like kube-apiserver does).
    Custom(EncryptionConfiguration),
}

/// The desired encryption state of `cluster`. A custom config is validated again (it may have been
/// built in code); errors point into cluster.yml when the config came from a file.
pub fn desired(cluster: &cluster::ClusterConfig) -> Result<Desired, ConfigError> {
    let Some(sec) = &cluster.services.kube_api.secrets_encryption_config else {
        return Ok(Desired::Disabled);
    };
    if !sec.enabled {
        return Ok(Desired::Disabled);
    }
    match &sec.custom_config {
        None => Ok(Desired::Managed),
        Some(custom) => {
            let diags = cluster::custom_config_diagnostics(custom, cluster);
            if diags.is_empty() {
                Ok(Desired::Custom(custom.clone()))
            } else {
                Err(ConfigError::Invalid(diags))
            }
        }
    }
}
