//! Configuration: what the user asked for (`cluster.yml`) and the EncryptionConfiguration model.
//!
//! Everything here is parsing and validation only; nothing touches a host.

pub mod cluster;
pub mod encryption;
pub mod error;
pub(crate) mod gofmt;
pub mod keys;
pub mod render;
pub mod rke_render;
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

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = "nodes:\n  - address: 10.0.0.1\n    role: [controlplane]\n    user: rke\n";

    #[test]
    fn desired_follows_enabled_and_custom_config() {
        let c = cluster::parse(NODES, "cluster.yml").unwrap();
        assert_eq!(desired(&c).unwrap(), Desired::Disabled);
        let managed = format!(
            "{NODES}services:\n  kube-api:\n    secrets_encryption_config:\n      enabled: true\n"
        );
        assert_eq!(
            desired(&cluster::parse(&managed, "cluster.yml").unwrap()).unwrap(),
            Desired::Managed
        );
        let custom = format!(
            "{NODES}services:\n  kube-api:\n    secrets_encryption_config:\n      enabled: true\n      custom_config:\n        apiVersion: apiserver.config.k8s.io/v1\n        kind: EncryptionConfiguration\n        resources:\n          - resources: [secrets]\n            providers: [identity: {{}}]\n"
        );
        match desired(&cluster::parse(&custom, "cluster.yml").unwrap()).unwrap() {
            Desired::Custom(c) => assert_eq!(c.resources[0].resources, ["secrets"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn desired_revalidates_a_config_changed_in_code_with_positions_from_the_file() {
        let custom = format!(
            "{NODES}services:\n  kube-api:\n    secrets_encryption_config:\n      enabled: true\n      custom_config:\n        apiVersion: apiserver.config.k8s.io/v1\n        kind: EncryptionConfiguration\n        resources:\n          - resources: [secrets]\n            providers: [identity: {{}}]\n"
        );
        let mut c = cluster::parse(&custom, "cluster.yml").unwrap();
        let sec = c
            .services
            .kube_api
            .secrets_encryption_config
            .as_mut()
            .unwrap();
        sec.custom_config.as_mut().unwrap().resources[0].resources[0] = "Secrets".into();
        assert_eq!(
            desired(&c).unwrap_err().to_string(),
            "cluster.yml:13:25: custom_config: resources[0].resources[0]: Invalid value: \"Secrets\": resource name should not contain capital letters"
        );
    }
}
