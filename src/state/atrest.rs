//! atrest's bookkeeping: the transition in progress, the archive of retired keys, the snapshot list, the last
//! census, and what atrest last recorded as deployed. It lives in atrest's own file beside cluster.yml
//! (`<stem>.atreststate`, see [`crate::state::records`]) because every RKE write replaces cluster.rkestate whole
//! and drops any key RKE does not know; older atrest versions kept it under the `"atrest"` key of
//! cluster.rkestate, from where it is moved once.

use crate::plan::stage::{Phase, Stage};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The top-level key of cluster.rkestate where atrest before the records file kept [`AtrestState`].
pub const LEGACY_STATE_KEY: &str = "atrest";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AtrestState {
    /// The transition in progress, if any. A rerun resumes it before anything else.
    pub transition: Option<TransitionRecord>,
    /// Keys no longer deployed but kept because snapshots may still need them.
    pub archive: Vec<ArchivedKey>,
    /// Snapshots atrest took, newest last.
    pub snapshots: Vec<SnapshotRecord>,
    /// The last census of etcd.
    pub last_census: Option<CensusRecord>,
    /// The encryption config atrest last wrote to cluster.rkestate's `currentState.encryptionConfig`
    /// (`None`: atrest has not recorded one yet). Lets atrest notice when an RKE write replaced or removed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployed: Option<DeployedRecord>,
    /// Nodes (by name) where a run put the previous kube-apiserver back after an interrupted recreate, and which
    /// no change has reached since. That container may not start until the change is made (a disable's finish
    /// had removed the file its flag names), so no run asks such a node to be healthy before changing it. Kept
    /// here, not only in the run, because the run that put it back may itself be killed before it gets there.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub put_back: Vec<String>,
}

impl AtrestState {
    /// Archives a retired key with the names of the snapshots taken so far, unless the archive already holds it;
    /// returns whether it was added. A key is the same only when its material is too: a drifted file or another
    /// tool may reuse a name for another secret, and data or a snapshot written with either still needs it.
    pub fn archive_key(
        &mut self,
        provider: String,
        name: String,
        secret: Option<crate::secret::SecretString>,
        retired_at: &str,
    ) -> bool {
        let material = secret.as_ref().map(crate::secret::SecretString::expose);
        if self.archive.iter().any(|a| {
            a.provider == provider
                && a.name == name
                && a.secret.as_ref().map(crate::secret::SecretString::expose) == material
        }) {
            return false;
        }
        let snapshots = self.snapshots.iter().map(|s| s.name.clone()).collect();
        self.archive.push(ArchivedKey {
            provider,
            name,
            secret,
            retired_at: retired_at.to_string(),
            snapshots,
        });
        true
    }
}

/// What atrest last recorded as deployed on every controlplane.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeployedRecord {
    /// The config text as written to the state (`None`: encryption off, no config deployed).
    pub config: Option<crate::secret::SecretString>,
    pub recorded_at: String,
}

/// A transition from the config `from` to the config `to` (rendered EncryptionConfiguration YAML;
/// `None` = no encryption config deployed at all). `Debug` shows only their length: they hold the keys.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransitionRecord {
    /// Unique id (RFC 3339 start time plus a short random suffix).
    pub id: String,
    /// Why: "enable", "disable", "rotate-key", "custom-edit", …
    pub kind: String,
    pub from: Option<String>,
    pub to: Option<String>,
    pub stage: Stage,
    /// Phases completed so far, in order.
    pub done: Vec<Phase>,
    pub started_at: String,
    pub updated_at: String,
    /// The rolling deploy under way, if one was interrupted part way: a rerun leaves alone the nodes it
    /// already finished (when they still hold its config) instead of restarting them again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploying: Option<DeployProgress>,
}

impl std::fmt::Debug for TransitionRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let withheld =
            |t: &Option<String>| crate::secret::Withheld::of(t.as_deref().map(str::as_bytes));
        f.debug_struct("TransitionRecord")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("from", &withheld(&self.from))
            .field("to", &withheld(&self.to))
            .field("stage", &self.stage)
            .field("done", &self.done)
            .field("started_at", &self.started_at)
            .field("updated_at", &self.updated_at)
            .field("deploying", &self.deploying)
            .finish()
    }
}

/// How far a rolling deploy got.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeployProgress {
    pub phase: Phase,
    /// sha256 of the config file being deployed (`None`: the file is being removed).
    pub config_sha256: Option<String>,
    /// Nodes that have it and whose kube-apiserver came back ready, in order.
    pub nodes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchivedKey {
    /// Provider type: aescbc, aesgcm, secretbox, kms.
    pub provider: String,
    pub name: String,
    /// The base64 key text (absent for kms).
    pub secret: Option<crate::secret::SecretString>,
    pub retired_at: String,
    /// Names/paths of snapshots taken while this key was in use.
    pub snapshots: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotRecord {
    pub name: String,
    pub node: String,
    pub path: String,
    pub taken_at: String,
    /// sha256 of the encryption config deployed when the snapshot was taken.
    pub config_sha256: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CensusRecord {
    pub taken_at: String,
    /// resource → (provider/key label, e.g. "aescbc:aescbckey-2026-…", "identity", "kms:v2:name:keyid") → count
    pub counts: BTreeMap<String, BTreeMap<String, u64>>,
    /// How many times the census before this one found leftovers that were rewritten again (a second pass;
    /// 0 when the first census came out clean, and for `encrypt verify`, which rewrites nothing).
    #[serde(default)]
    pub repasses: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretString;

    fn key(
        provider: &str,
        name: &str,
        secret: Option<&str>,
    ) -> (String, String, Option<SecretString>) {
        (
            provider.into(),
            name.into(),
            secret.map(|s| SecretString::new(s.into())),
        )
    }

    #[test]
    fn a_key_is_archived_once_per_material_with_the_snapshots_taken_so_far() {
        let mut state = AtrestState {
            snapshots: vec![SnapshotRecord {
                name: "before-rotate".into(),
                node: "cp-1".into(),
                path: "/opt/rke/etcd-snapshots/before-rotate".into(),
                taken_at: "2026-12-01T00:00:00Z".into(),
                config_sha256: None,
            }],
            ..Default::default()
        };
        let archive = |state: &mut AtrestState,
                       (p, n, s): (String, String, Option<SecretString>)| {
            state.archive_key(p, n, s, "2026-12-02T00:00:00Z")
        };
        assert!(archive(
            &mut state,
            key("aescbc", "key1", Some("c2VjcmV0LUE="))
        ));
        assert!(!archive(
            &mut state,
            key("aescbc", "key1", Some("c2VjcmV0LUE="))
        ));
        // The same name with other material is another key: both are kept.
        assert!(archive(
            &mut state,
            key("aescbc", "key1", Some("c2VjcmV0LUI="))
        ));
        assert!(archive(
            &mut state,
            key("aesgcm", "key1", Some("c2VjcmV0LUE="))
        ));
        assert!(archive(&mut state, key("kms", "vault", None)));
        assert!(!archive(&mut state, key("kms", "vault", None)));
        let archived: Vec<(&str, &str, Option<&str>)> = state
            .archive
            .iter()
            .map(|a| {
                (
                    &a.provider[..],
                    &a.name[..],
                    a.secret.as_ref().map(SecretString::expose),
                )
            })
            .collect();
        assert_eq!(
            archived,
            [
                ("aescbc", "key1", Some("c2VjcmV0LUE=")),
                ("aescbc", "key1", Some("c2VjcmV0LUI=")),
                ("aesgcm", "key1", Some("c2VjcmV0LUE=")),
                ("kms", "vault", None),
            ]
        );
        assert!(state.archive.iter().all(|a| a.snapshots == ["before-rotate"]
            && a.retired_at == "2026-12-02T00:00:00Z"));
    }

    #[test]
    fn debug_of_a_transition_leaves_out_its_configs() {
        let record = TransitionRecord {
            id: "t1".into(),
            kind: "rotate-key".into(),
            from: Some("secret: c2VjcmV0LWtleQ==".into()),
            to: None,
            stage: Stage::Prepare,
            done: vec![],
            started_at: "2026-11-23T22:00:00Z".into(),
            updated_at: "2026-11-23T22:00:00Z".into(),
            deploying: None,
        };
        let text = format!(
            "{record:?} {:?}",
            AtrestState {
                transition: Some(record.clone()),
                ..Default::default()
            }
        );
        assert!(!text.contains("c2VjcmV0"), "{text}");
        assert!(
            text.contains("from: Some(<24 bytes, not shown>), to: None"),
            "{text}"
        );
        assert!(text.contains("rotate-key"), "{text}");
    }
}
