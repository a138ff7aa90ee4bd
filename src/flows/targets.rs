//! Turning cluster.yml and cluster.rkestate into the planner's targets: what is deployed, what is wanted
//! (a managed config keeps its keys; a fresh key only when there is no managed config to keep), and the
//! hash a deployed config has on the nodes.

use crate::config::encryption::{self, EncryptionConfiguration, Key, is_managed_shape};
use crate::config::keys::{self, KeyKind};
use crate::config::{Desired, render, rke_render};
use crate::plan::{InProgress, Target};
use crate::state::RkeState;
use crate::state::atrest::AtrestState;
use anyhow::Context;

/// Where the deployed config is read from, for messages.
const CURRENT_ORIGIN: &str = "cluster.rkestate currentState.encryptionConfig";

/// The config RKE's state records as deployed (`None`: encryption off).
/// The transition recorded in the state, parsed (`None` when no run is under way).
pub fn recorded(atrest: &AtrestState) -> anyhow::Result<Option<InProgress>> {
    Ok(atrest
        .transition
        .as_ref()
        .map(InProgress::from_record)
        .transpose()?)
}

pub fn deployed(state: &RkeState) -> anyhow::Result<Option<EncryptionConfiguration>> {
    match state.current_encryption_config() {
        None => Ok(None),
        Some(text) if text.trim().is_empty() => Ok(None),
        Some(text) => render::parse_state_config(text)
            .map(Some)
            .with_context(|| format!("cannot read {CURRENT_ORIGIN}")),
    }
}

/// The desired target. `base` is the config the cluster has or is moving to (a recorded transition's
/// target, else the deployed one): a managed desire keeps base's keys when base is managed, so reruns and
/// resumed runs never invent a new key.
pub fn desired_target(
    desired: &Desired,
    base: Option<&EncryptionConfiguration>,
    atrest: &AtrestState,
) -> anyhow::Result<Target> {
    Ok(match desired {
        Desired::Disabled => Target::Disabled,
        Desired::Custom(c) => Target::Custom(c.clone()),
        Desired::Managed => match base {
            Some(b) if is_managed_shape(b) => Target::Managed(b.clone()),
            _ => Target::Managed(encryption::managed(vec![fresh_key(base, atrest)?])),
        },
    })
}

/// A managed config with one new key (the write key after a rotation).
pub fn rotated(
    base: Option<&EncryptionConfiguration>,
    atrest: &AtrestState,
) -> anyhow::Result<EncryptionConfiguration> {
    Ok(encryption::managed(vec![fresh_key(base, atrest)?]))
}

/// A new aescbc key whose name is used by no key deployed or archived.
pub fn fresh_key(
    base: Option<&EncryptionConfiguration>,
    atrest: &AtrestState,
) -> anyhow::Result<Key> {
    let mut names: Vec<String> = atrest.archive.iter().map(|k| k.name.clone()).collect();
    if let Some(c) = base {
        for entry in &c.resources {
            for p in &entry.providers {
                if let Some((_, keys)) = p.keyed() {
                    names.extend(keys.keys.iter().map(|k| k.name.clone()));
                }
            }
        }
    }
    // K3s's name, `aescbckey-<RFC 3339>`; the census matches known names whole, so the ':' in them is fine.
    let now = time::OffsetDateTime::now_utc();
    let base = keys::key_name(KeyKind::Aescbc, now);
    let mut key = keys::new_key(KeyKind::Aescbc, now)?;
    key.name = keys::unique_key_name(&base, &names);
    Ok(key)
}

/// What RKE keeps in `rkeConfig.services.kubeApi.secretsEncryptionConfig` for the deployed config: `enabled`
/// when any config is deployed, and a `customConfig` (its JSON form, as RKE's `json` tags name the fields) when
/// the deployed config is not RKE's managed shape, or is exactly the custom_config cluster.yml asks for. Then
/// RKE's own reading of the state agrees with its `encryptionConfig`: after a disable it sees encryption off
/// (and no config), instead of failing every later `rke up` on an empty config.
pub fn rke_view(
    desired: &Desired,
    deployed: Option<&EncryptionConfiguration>,
) -> (bool, Option<serde_json::Value>) {
    let Some(config) = deployed else {
        return (false, None);
    };
    let custom =
        origin(desired, config) == rke_render::Origin::CustomConfig || !is_managed_shape(config);
    (
        true,
        custom.then(|| serde_json::to_value(config).unwrap_or_default()),
    )
}

/// The bytes atrest deploys for a config: what `rke up` writes for it (see [`rke_render`]).
pub fn file_bytes(config: &EncryptionConfiguration) -> zeroize::Zeroizing<String> {
    rke_render::node_file(config)
}

/// The hash a node's file has when it holds `config` as atrest deploys it.
pub fn deployed_hash(config: Option<&EncryptionConfiguration>) -> Option<String> {
    config.map(|c| render::fingerprint(&rke_render::node_file(c)))
}

/// Hashes of other files that hold `config` too and that kube-apiserver can start with, so are no drift: the
/// file `rke up` writes from the state string (`state` + "\n"), and the layout atrest deployed before it
/// rendered like RKE.
///
/// Not among them: the file `rke up` writes for a custom config, which repeats `apiVersion`/`kind` after RKE's
/// own header. kube-apiserver ≥ 1.31 refuses it (`key "apiVersion" already set in map`) at its next start, so it
/// is drift, and atrest's repair puts back a file the server can read.
pub fn equivalent_hashes(config: &EncryptionConfiguration, state: Option<&str>) -> Vec<String> {
    let mut hashes = vec![render::fingerprint(&render::to_yaml(config))];
    let template = rke_render::state_string(config, rke_render::Origin::Template);
    let rke_files =
        std::iter::once(rke_render::rke_file(&template)).chain(state.map(rke_render::rke_file));
    for file in rke_files {
        if !repeats_rke_header(&file) {
            hashes.push(render::fingerprint(&file));
        }
    }
    hashes
}

/// RKE's custom-config header followed by the config's own `apiVersion`/`kind`: duplicate keys.
fn repeats_rke_header(file: &str) -> bool {
    render::strip_rke_custom_header(file).len() != file.len()
}

/// Where RKE would take `config` from when cluster.yml says `desired`: the custom_config, if it is that config;
/// otherwise RKE's templates (any other config of a template's shape is RKE's own, and no other is rendered from
/// a template anyway).
pub fn origin(desired: &Desired, config: &EncryptionConfiguration) -> rke_render::Origin {
    match desired {
        Desired::Custom(c) if c == config => rke_render::Origin::CustomConfig,
        _ => rke_render::Origin::Template,
    }
}

/// `Some(config)` when the state holds the custom_config cluster.yml asks for, deployed, in RKE's *template*
/// text: what atrest wrote for a custom_config with the managed config's providers until 86f19f8.
/// RKE renders a custom_config as one, so its next `rke up` would see a changed config, restart every server
/// and rewrite every secret; `up` rewrites the text ([`state_yaml`]). Only that exact mistake is repaired: a
/// text RKE wrote is never replaced with atrest's rendering of it.
pub fn template_text_for_custom(
    desired: &Desired,
    deployed: Option<&EncryptionConfiguration>,
    state_text: Option<&str>,
) -> Option<EncryptionConfiguration> {
    let (Desired::Custom(asked), Some(config), Some(text)) = (desired, deployed, state_text) else {
        return None;
    };
    let template = rke_render::state_string(config, rke_render::Origin::Template);
    let custom = rke_render::state_string(config, rke_render::Origin::CustomConfig);
    (asked == config && text == template.as_str() && text != custom.as_str())
        .then(|| config.clone())
}

/// The text for RKE's encryptionConfig (and atrest's transition record): what RKE would keep for the config
/// when cluster.yml says `desired`.
pub fn state_yaml(desired: &Desired, config: Option<&EncryptionConfiguration>) -> Option<String> {
    config.map(|c| rke_render::state_string(c, origin(desired, c)).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rkes_file_counts_as_deployed_only_when_kube_apiserver_can_start_with_it() {
        let key = fresh_key(None, &AtrestState::default()).unwrap();
        let managed = encryption::managed(vec![key]);
        let state = rke_render::state_string(&managed, rke_render::Origin::Template);
        let rke_file = render::fingerprint(&rke_render::rke_file(&state));
        assert!(equivalent_hashes(&managed, Some(&state)).contains(&rke_file));

        let mut custom = managed.clone();
        custom.resources[0].resources.push("configmaps".into());
        let state = rke_render::state_string(&custom, rke_render::Origin::Template);
        assert!(
            repeats_rke_header(&state),
            "RKE's custom layout repeats the header"
        );
        let rke_file = render::fingerprint(&rke_render::rke_file(&state));
        let same = equivalent_hashes(&custom, Some(&state));
        assert!(!same.contains(&rke_file), "RKE's custom file is drift");
        assert!(same.contains(&render::fingerprint(&render::to_yaml(&custom))));
    }

    #[test]
    fn the_custom_config_cluster_yml_names_is_kept_as_rke_renders_a_custom_config() {
        let key = fresh_key(None, &AtrestState::default()).unwrap();
        let managed = encryption::managed(vec![key]);
        let template = rke_render::state_string(&managed, rke_render::Origin::Template);
        assert_eq!(
            state_yaml(&Desired::Managed, Some(&managed)).as_deref(),
            Some(template.as_str())
        );
        // The same providers asked for as a custom_config: RKE renders them as one.
        let as_custom =
            state_yaml(&Desired::Custom(managed.clone()), Some(&managed)).expect("a config");
        assert!(repeats_rke_header(&as_custom), "{}", as_custom.len());
        // A deployed config cluster.yml does not ask for (e.g. a step on the way) keeps RKE's template text.
        let mut other = managed.clone();
        other.resources[0].resources.push("configmaps".into());
        assert_eq!(
            state_yaml(&Desired::Custom(other), Some(&managed)).as_deref(),
            Some(template.as_str())
        );
        assert_eq!(state_yaml(&Desired::Disabled, None), None);
    }

    #[test]
    fn only_atrests_old_template_text_for_a_custom_config_is_repaired() {
        let managed = encryption::managed(vec![fresh_key(None, &AtrestState::default()).unwrap()]);
        let template = rke_render::state_string(&managed, rke_render::Origin::Template);
        let custom = rke_render::state_string(&managed, rke_render::Origin::CustomConfig);
        let asked = Desired::Custom(managed.clone());
        assert_eq!(
            template_text_for_custom(&asked, Some(&managed), Some(&template)),
            Some(managed.clone())
        );
        // Already RKE's custom text, or the managed config cluster.yml asks for, or another custom_config (a
        // change `up` plans anyway), or nothing deployed: nothing to repair.
        assert_eq!(
            template_text_for_custom(&asked, Some(&managed), Some(&custom)),
            None
        );
        assert_eq!(
            template_text_for_custom(&Desired::Managed, Some(&managed), Some(&template)),
            None
        );
        let mut other = managed.clone();
        other.resources[0].resources.push("configmaps".into());
        assert_eq!(
            template_text_for_custom(&Desired::Custom(other), Some(&managed), Some(&template)),
            None
        );
        assert_eq!(template_text_for_custom(&asked, None, None), None);
    }

    #[test]
    fn managed_shape_is_recognised_and_custom_is_not() {
        let key = fresh_key(None, &AtrestState::default()).unwrap();
        let managed = encryption::managed(vec![key]);
        assert!(is_managed_shape(&managed));
        let mut custom = managed.clone();
        custom.resources[0].resources.push("configmaps".into());
        assert!(!is_managed_shape(&custom));
        assert!(matches!(Target::deployed(Some(custom)), Target::Custom(_)));
    }

    #[test]
    fn managed_desire_keeps_the_managed_base_and_generates_otherwise() {
        let atrest = AtrestState::default();
        let base = encryption::managed(vec![fresh_key(None, &atrest).unwrap()]);
        let kept = desired_target(&Desired::Managed, Some(&base), &atrest).unwrap();
        assert_eq!(kept, Target::Managed(base.clone()));
        let new = desired_target(&Desired::Managed, None, &atrest).unwrap();
        assert!(matches!(&new, Target::Managed(c) if c != &base && is_managed_shape(c)));
        let Target::Managed(c) = new else {
            unreachable!()
        };
        let name = &c.resources[0].providers[0].aescbc.as_ref().unwrap().keys[0].name;
        assert!(
            name.starts_with("aescbckey-") && name.ends_with('Z'),
            "{name}"
        );
    }

    #[test]
    fn rke_view_says_enabled_and_custom_like_rke() {
        let managed = encryption::managed(vec![fresh_key(None, &AtrestState::default()).unwrap()]);
        assert_eq!(rke_view(&Desired::Managed, None), (false, None));
        assert_eq!(rke_view(&Desired::Disabled, None), (false, None));
        assert_eq!(rke_view(&Desired::Managed, Some(&managed)), (true, None));
        let mut custom = managed.clone();
        custom.resources[0].resources.push("configmaps".into());
        let (enabled, json) = rke_view(&Desired::Managed, Some(&custom));
        assert!(enabled);
        let json = json.expect("a non-managed config is custom");
        assert_eq!(json["resources"][0]["resources"][1], "configmaps");
        assert_eq!(json["apiVersion"], "apiserver.config.k8s.io/v1");
        // A custom_config that happens to have the managed shape is still custom when it is what cluster.yml says.
        let (_, json) = rke_view(&Desired::Custom(managed.clone()), Some(&managed));
        assert!(json.is_some());
    }

    #[test]
    fn deployed_hash_is_the_fingerprint_of_the_rendered_file() {
        let c = encryption::managed(vec![fresh_key(None, &AtrestState::default()).unwrap()]);
        assert_eq!(
            deployed_hash(Some(&c)),
            Some(crate::exec::files::sha256_hex(file_bytes(&c).as_bytes()))
        );
        assert_eq!(deployed_hash(None), None);
    }
}
