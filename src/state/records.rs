//! atrest's records file, `<config stem>.atreststate` beside cluster.yml: the transition in progress, the
//! archive of retired keys, the snapshot list, the last census, and what atrest last recorded as deployed.
//!
//! Why a file of its own: every RKE command that writes cluster.rkestate (`rke up`, `rke encrypt rotate-key`,
//! `rke cert rotate`, `rke etcd snapshot-restore`) rewrites it whole from its own types and drops any key it does
//! not know, so records kept there (above all the archive of retired keys, without which snapshots taken before
//! a rotation cannot be read) would be lost on RKE's next write. The file is JSON, written like the state:
//! locked (`<records>.lock`), atomically, previous version kept as `<records>.bak`, mode 0600 (it holds keys).
//!
//! [`reconcile`] joins the two files when a run starts: it moves an `atrest` key left in cluster.rkestate by an
//! older atrest into this file (written first, then removed from the state), and compares the state's
//! `currentState.encryptionConfig` with what atrest last recorded there, saying so when an RKE write removed or
//! replaced it.

use crate::secret::SecretString;
use crate::state::atrest::{AtrestState, DeployedRecord};
use crate::state::error::StateError;
use crate::state::rkestate::RkeState;
use crate::state::store::{lock_sibling, read_bytes, sibling, write_atomic};
use std::fs::File;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The records file, locked for one run. The lock is released when this value is dropped.
#[derive(Debug)]
pub struct RecordsFile {
    path: PathBuf,
    /// Holds the exclusive lock for as long as it is open.
    _lock: File,
}

impl RecordsFile {
    /// Takes the exclusive lock on `<path>.lock`. Fails at once if another run holds it.
    pub fn open_locked(path: impl Into<PathBuf>) -> Result<RecordsFile, StateError> {
        let path = path.into();
        let (lock, _) = lock_sibling(&path)?;
        Ok(RecordsFile { path, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The records on disk (`None`: no records file yet).
    pub fn load(&self) -> Result<Option<AtrestState>, StateError> {
        read(&self.path)
    }

    /// Writes the records atomically (0600), keeping the replaced version as `<records>.bak`. Identical content
    /// is not rewritten.
    pub fn save(&self, records: &AtrestState) -> Result<(), StateError> {
        let new = to_bytes(records)?;
        match read_bytes(&self.path)? {
            Some(old) if *old == *new => return Ok(()),
            Some(old) => write_atomic(&sibling(&self.path, ".bak"), &old)?,
            None => {}
        }
        write_atomic(&self.path, &new)
    }
}

/// Reads the records file without the lock (saves are atomic). `None` when it does not exist.
pub fn read(path: &Path) -> Result<Option<AtrestState>, StateError> {
    let Some(bytes) = read_bytes(path)? else {
        return Ok(None);
    };
    parse(&bytes, path).map(Some)
}

/// Parses the records file's text; errors carry the file, line and column.
pub fn parse(bytes: &[u8], path: &Path) -> Result<AtrestState, StateError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(StateError::EmptyRecords {
            path: path.to_path_buf(),
        });
    }
    let located = |e: &serde_json::Error, at: Option<String>| StateError::MalformedRecords {
        path: path.to_path_buf(),
        line: e.line(),
        column: e.column(),
        at,
        message: strip_position(&e.to_string()),
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let records: AtrestState = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let at = e
            .path()
            .iter()
            .next()
            .is_some()
            .then(|| e.path().to_string());
        located(e.inner(), at)
    })?;
    de.end().map_err(|e| located(&e, None))?;
    Ok(records)
}

fn strip_position(text: &str) -> String {
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text.to_string(),
    }
}

/// The file's text: pretty JSON (two spaces) and a final newline.
pub fn to_bytes(records: &AtrestState) -> Result<Zeroizing<Vec<u8>>, StateError> {
    let mut out =
        Zeroizing::new(serde_json::to_vec_pretty(records).map_err(StateError::Serialize)?);
    out.push(b'\n');
    Ok(out)
}

/// The result of joining the records with the state at the start of a run.
#[derive(Debug, Default)]
pub struct Joined {
    pub records: AtrestState,
    /// Things the user should hear about (migration, RKE writes noticed), one sentence each.
    pub notices: Vec<String>,
    /// The records differ from the file's (or there was no file): save them before the state.
    pub records_changed: bool,
}

/// Joins atrest's records (`from_file`: the records file's content, `None` when there is none) with the state:
///
/// - an `atrest` key in the state (older atrest) is moved out: it becomes the records when there is no records
///   file, and is dropped (the file is newer) when there is one; the key is removed from `state`, so the caller
///   must save the records before the state;
/// - the state's `currentState.encryptionConfig` is compared with what atrest last recorded there. Vanished
///   (RKE wrote a state without it): said, and put back into `state` from the records, since the nodes still hold
///   it. Replaced (e.g. `rke encrypt rotate-key`): said, the state is taken as the truth, and every key of the old
///   config that the new one lacks is archived, so snapshots taken before stay restorable.
pub fn reconcile(
    state: &mut RkeState,
    from_file: Option<AtrestState>,
    records_path: &Path,
    now: &str,
) -> Result<Joined, StateError> {
    let mut joined = Joined::default();
    joined.records = take_legacy(state, from_file, records_path, &mut joined)?;
    let current = state.current_encryption_config().map(str::to_string);
    let records = &mut joined.records;
    match records
        .deployed
        .as_ref()
        .map(|d| d.config.as_ref().map(|c| c.expose().to_string()))
    {
        // Nothing recorded yet: adopt what the state says.
        None => {}
        Some(recorded) if recorded == current => {}
        Some(Some(recorded)) if current.is_none() => {
            joined.notices.push(format!(
                "cluster.rkestate no longer holds the encryption config atrest recorded as deployed \
                 (currentState.encryptionConfig is gone: was the state rewritten by RKE, or restored from an \
                 old copy?); carrying on from {}, which still has it",
                records_path.display()
            ));
            state.set_current_encryption_config(Some(&recorded));
            if state.desired_encryption_config().is_none() {
                state.set_desired_encryption_config(Some(&recorded));
            }
        }
        Some(recorded) => {
            let archived = archive_retired(records, recorded.as_deref(), current.as_deref(), now);
            let mut notice = "cluster.rkestate's currentState.encryptionConfig is not the config atrest recorded \
                              as deployed: another tool (e.g. `rke up` or `rke encrypt rotate-key`) changed it; \
                              atrest takes the state as the truth"
                .to_string();
            if !archived.is_empty() {
                notice.push_str(&format!(
                    "; archived the key(s) it dropped ({}) in {} so older snapshots stay restorable",
                    archived.join(", "),
                    records_path.display()
                ));
            }
            joined.notices.push(notice);
        }
    }
    let now_deployed = state.current_encryption_config().map(str::to_string);
    let unchanged = records
        .deployed
        .as_ref()
        .is_some_and(|d| d.config.as_ref().map(SecretString::expose) == now_deployed.as_deref());
    if !unchanged {
        // Adopting what the state says is saved with the next real save (no file is created just for it).
        let adopting = records.deployed.is_none();
        records.deployed = Some(DeployedRecord {
            config: now_deployed.map(SecretString::new),
            recorded_at: now.to_string(),
        });
        joined.records_changed |= !adopting;
    }
    Ok(joined)
}

/// The records, with an `atrest` key left in the state by an older atrest moved out of it: it becomes the records
/// when there is no records file, and is dropped (the file is newer) when there is one. Says which in `joined`.
fn take_legacy(
    state: &mut RkeState,
    from_file: Option<AtrestState>,
    records_path: &Path,
    joined: &mut Joined,
) -> Result<AtrestState, StateError> {
    Ok(match (from_file, state.legacy_atrest()?) {
        (Some(records), Some(_)) => {
            state.remove_legacy_atrest();
            joined.notices.push(format!(
                "cluster.rkestate still had atrest's old `atrest` key; {} is newer and is kept, the key is removed",
                records_path.display()
            ));
            records
        }
        (None, Some(legacy)) => {
            state.remove_legacy_atrest();
            joined.notices.push(format!(
                "moved atrest's records (transition, archive of retired keys, snapshots) from cluster.rkestate to \
                 {}: RKE drops unknown keys when it writes its state. Back that file up with cluster.yml and \
                 cluster.rkestate",
                records_path.display()
            ));
            joined.records_changed = true;
            legacy
        }
        (Some(records), None) => records,
        (None, None) => AtrestState::default(),
    })
}

/// Archives every key of `recorded` that `current` lacks (unless already archived), with the snapshots taken so
/// far; returns them as `provider:name`.
fn archive_retired(
    records: &mut AtrestState,
    recorded: Option<&str>,
    current: Option<&str>,
    now: &str,
) -> Vec<String> {
    let mut archived = Vec::new();
    for (provider, name, secret) in retired_keys(recorded, current) {
        let label = format!("{provider}:{name}");
        if records.archive_key(provider, name, secret, now) {
            archived.push(label);
        }
    }
    archived
}

/// Keys (provider, name, secret) of `old` that `new` no longer has.
fn retired_keys(
    old: Option<&str>,
    new: Option<&str>,
) -> Vec<(String, String, Option<SecretString>)> {
    let keys = |text: Option<&str>| -> Vec<(String, String, Option<SecretString>)> {
        let Some(config) = text.and_then(|t| crate::config::render::parse_state_config(t).ok())
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for entry in &config.resources {
            for p in &entry.providers {
                if let Some((provider, keys)) = p.keyed() {
                    for k in &keys.keys {
                        out.push((provider.to_string(), k.name.clone(), Some(k.secret.clone())));
                    }
                }
                if let Some(kms) = &p.kms {
                    out.push(("kms".to_string(), kms.name.clone(), None));
                }
            }
        }
        out
    };
    let new_keys = keys(new);
    let mut retired = keys(old);
    retired.retain(|(p, n, _)| !new_keys.iter().any(|(np, nn, _)| np == p && nn == n));
    retired.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    retired
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::atrest::{SnapshotRecord, TransitionRecord};

    const NOW: &str = "2026-12-01T15:00:00Z";
    const K1: &str = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources:\n  - secrets\n  providers:\n  - aescbc:\n      keys:\n      - name: k-aaaaa\n        secret: MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n  - identity: {}";
    const K2: &str = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources:\n  - secrets\n  providers:\n  - aescbc:\n      keys:\n      - name: k-bbbbb\n        secret: ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=\n  - identity: {}";

    fn state(current: Option<&str>, legacy: Option<&AtrestState>) -> RkeState {
        let mut v = serde_json::json!({"desiredState": {}, "currentState": {}});
        if let Some(c) = current {
            v["currentState"]["encryptionConfig"] = c.into();
            v["desiredState"]["encryptionConfig"] = c.into();
        }
        if let Some(l) = legacy {
            v["atrest"] = serde_json::to_value(l).unwrap();
        }
        RkeState::parse(
            &serde_json::to_vec(&v).unwrap(),
            Path::new("cluster.rkestate"),
        )
        .unwrap()
    }

    fn sample() -> AtrestState {
        AtrestState {
            snapshots: vec![SnapshotRecord {
                name: "atrest-1".into(),
                node: "n1".into(),
                path: "/x/cluster.snapshots/atrest-1.db".into(),
                taken_at: NOW.into(),
                config_sha256: None,
            }],
            ..Default::default()
        }
    }

    /// The sample records, with K1 recorded as deployed by an earlier run.
    fn k1_recorded_earlier() -> AtrestState {
        let mut records = sample();
        records.deployed = Some(DeployedRecord {
            config: Some(SecretString::new(K1.into())),
            recorded_at: "earlier".into(),
        });
        records
    }

    #[test]
    fn a_legacy_key_moves_out_of_the_state_once() {
        let mut s = state(Some(K1), Some(&sample()));
        let j = reconcile(&mut s, None, Path::new("cluster.atreststate"), NOW).unwrap();
        assert_eq!(j.records.snapshots, sample().snapshots);
        assert!(j.records_changed);
        assert!(s.is_changed() && s.legacy_atrest().unwrap().is_none());
        assert!(!s.as_value().as_object().unwrap().contains_key("atrest"));
        assert!(
            j.notices[0].starts_with("moved atrest's records"),
            "{:?}",
            j.notices
        );
        // Next run: the file exists, the state has no key: nothing to say, nothing to write.
        let mut s = state(Some(K1), None);
        let j2 = reconcile(
            &mut s,
            Some(j.records.clone()),
            Path::new("cluster.atreststate"),
            NOW,
        )
        .unwrap();
        assert!(j2.notices.is_empty() && !j2.records_changed && !s.is_changed());
    }

    #[test]
    fn with_both_the_file_wins_and_the_key_is_dropped() {
        let mut older = sample();
        older.snapshots.clear();
        let mut s = state(Some(K1), Some(&older));
        let mut file = sample();
        file.deployed = Some(DeployedRecord {
            config: Some(SecretString::new(K1.into())),
            recorded_at: NOW.into(),
        });
        let j = reconcile(&mut s, Some(file.clone()), Path::new("c.atreststate"), NOW).unwrap();
        assert_eq!(j.records, file);
        assert!(s.legacy_atrest().unwrap().is_none());
        assert!(
            j.notices[0].contains("is newer and is kept"),
            "{:?}",
            j.notices
        );
    }

    #[test]
    fn a_vanished_config_is_said_and_put_back_from_the_records() {
        let mut records = sample();
        records.deployed = Some(DeployedRecord {
            config: Some(SecretString::new(K1.into())),
            recorded_at: NOW.into(),
        });
        let mut s = state(None, None);
        let j = reconcile(&mut s, Some(records), Path::new("c.atreststate"), NOW).unwrap();
        assert_eq!(s.current_encryption_config(), Some(K1));
        assert_eq!(s.desired_encryption_config(), Some(K1));
        assert!(j.notices[0].contains("no longer holds"), "{:?}", j.notices);
        assert!(!j.notices[0].contains("MDEy"), "no key material in notices");
    }

    #[test]
    fn a_dropped_key_is_archived_even_when_an_older_key_of_its_name_is() {
        let mut records = k1_recorded_earlier();
        // An earlier key reused the name with other material (a drifted file archived by a deploy, say).
        records.archive_key(
            "aescbc".into(),
            "k-aaaaa".into(),
            Some(SecretString::new(
                "b3RoZXIta2V5LW1hdGVyaWFsLTAxMjM0NTY3ODk=".into(),
            )),
            "earlier",
        );
        let mut s = state(Some(K2), None);
        let j = reconcile(&mut s, Some(records), Path::new("c.atreststate"), NOW).unwrap();
        let secrets: Vec<Option<&str>> = j
            .records
            .archive
            .iter()
            .map(|a| a.secret.as_ref().map(SecretString::expose))
            .collect();
        assert_eq!(
            secrets,
            [
                Some("b3RoZXIta2V5LW1hdGVyaWFsLTAxMjM0NTY3ODk="),
                Some("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=")
            ],
            "both keys named k-aaaaa stay archived"
        );
        assert!(
            j.notices[0].contains("archived the key(s) it dropped (aescbc:k-aaaaa)"),
            "{:?}",
            j.notices
        );
    }

    #[test]
    fn a_config_rke_replaced_is_taken_and_its_dropped_key_archived() {
        let mut records = k1_recorded_earlier();
        records.transition = None::<TransitionRecord>;
        let mut s = state(Some(K2), None);
        let j = reconcile(&mut s, Some(records), Path::new("c.atreststate"), NOW).unwrap();
        assert_eq!(
            s.current_encryption_config(),
            Some(K2),
            "the state is the truth"
        );
        assert_eq!(j.records.archive.len(), 1);
        let a = &j.records.archive[0];
        assert_eq!(
            (a.provider.as_str(), a.name.as_str()),
            ("aescbc", "k-aaaaa")
        );
        assert_eq!(
            a.secret.as_ref().map(SecretString::expose),
            Some("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=")
        );
        assert_eq!(a.snapshots, ["atrest-1"]);
        assert_eq!(
            j.records
                .deployed
                .as_ref()
                .unwrap()
                .config
                .as_ref()
                .map(SecretString::expose),
            Some(K2)
        );
        assert!(j.records_changed);
        assert!(
            j.notices[0].contains("archived the key(s) it dropped (aescbc:k-aaaaa)"),
            "{:?}",
            j.notices
        );
    }

    #[test]
    fn records_file_is_0600_atomic_and_keeps_a_backup() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.atreststate");
        let file = RecordsFile::open_locked(&path).unwrap();
        assert!(file.load().unwrap().is_none());
        file.save(&sample()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(file.load().unwrap(), Some(sample()));
        let mut more = sample();
        more.snapshots.push(more.snapshots[0].clone());
        file.save(&more).unwrap();
        assert_eq!(
            read(&dir.path().join("cluster.atreststate.bak")).unwrap(),
            Some(sample())
        );
        // A second run cannot take the lock.
        let err = RecordsFile::open_locked(&path).unwrap_err();
        assert!(matches!(err, StateError::Locked { .. }), "{err}");
        drop(file);
        assert!(RecordsFile::open_locked(&path).is_ok());
    }

    #[test]
    fn a_broken_records_file_is_a_located_error() {
        let p = Path::new("/x/cluster.atreststate");
        let e = parse(b"{\n  \"archive\": 3\n}", p).unwrap_err().to_string();
        assert!(
            e.starts_with("/x/cluster.atreststate:2:14: archive: invalid type"),
            "{e}"
        );
        let e = parse(b"  \n", p).unwrap_err().to_string();
        assert!(e.contains("is empty"), "{e}");
    }
}
