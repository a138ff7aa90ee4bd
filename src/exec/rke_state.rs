//! RKE's copy of cluster.rkestate inside the cluster, `full-cluster-state` in kube-system: a Secret since RKE
//! 1.4 (data key `full-cluster-state`), a ConfigMap before. `rke util get-state-file` restores the local file from
//! it, so after atrest changed the state the copy must say the same, or a restored state would name a config the
//! nodes no longer have. atrest only updates a copy RKE made; it never creates one (RKE does on its next `up`).

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, PostParams};

/// The name of the Secret (and of the older ConfigMap) and of its data key.
pub const NAME: &str = "full-cluster-state";
const NAMESPACE: &str = "kube-system";

/// Which copy was updated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Updated {
    Secret,
    ConfigMap,
    /// Neither exists (a cluster RKE did not set up, or a test bed).
    None,
}

/// Replaces the in-cluster copy's content with `state_json` (the whole cluster.rkestate). Holds key material:
/// the bytes go only into the object.
pub async fn update(client: &kube::Client, state_json: &[u8]) -> Result<Updated, kube::Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    if let Some(mut secret) = secrets.get_opt(NAME).await? {
        secret
            .data
            .get_or_insert_with(Default::default)
            .insert(NAME.to_string(), ByteString(state_json.to_vec()));
        secrets
            .replace(NAME, &PostParams::default(), &secret)
            .await?;
        return Ok(Updated::Secret);
    }
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    if let Some(mut map) = maps.get_opt(NAME).await? {
        map.data.get_or_insert_with(Default::default).insert(
            NAME.to_string(),
            String::from_utf8_lossy(state_json).into_owned(),
        );
        maps.replace(NAME, &PostParams::default(), &map).await?;
        return Ok(Updated::ConfigMap);
    }
    Ok(Updated::None)
}
