//! cluster.rkestate: round trips against RKE-shaped files, the lock, atomic saves, backups and modes.

use atrest::state::atrest::{AtrestState, SnapshotRecord};
use atrest::state::paths::{default_kubeconfig_path, default_state_path};
use atrest::state::rkestate::etcd_certificate_name;
use atrest::state::{RkeState, StateError, StateFile};
use serde_json::Value;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/state");

fn fixture(name: &str) -> (PathBuf, Vec<u8>) {
    let path = Path::new(FIXTURES).join(name);
    let bytes = fs::read(&path).unwrap();
    (path, bytes)
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Key paths of every value in document order, with the values (for "everything else kept" comparisons).
fn flatten(v: &Value, prefix: &str, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                flatten(v, &format!("{prefix}/{k}"), out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                flatten(v, &format!("{prefix}/{i}"), out);
            }
        }
        leaf => out.push((prefix.to_string(), leaf.clone())),
    }
}

fn leaves(bytes: &[u8]) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    flatten(&serde_json::from_slice(bytes).unwrap(), "", &mut out);
    out
}

fn sample_atrest() -> AtrestState {
    AtrestState {
        snapshots: vec![SnapshotRecord {
            name: "atrest-2026-11-23T22-00-00Z".into(),
            node: "node-1".into(),
            path: "/opt/rke/etcd-snapshots/atrest-2026-11-23T22-00-00Z.zip".into(),
            taken_at: "2026-11-23T22:00:00Z".into(),
            config_sha256: Some("ab".repeat(32)),
        }],
        ..Default::default()
    }
}

/// A change atrest makes to the state (any value will do for the file tests).
const SAMPLE_CONFIG: &str =
    "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n";

#[test]
fn unchanged_state_round_trips_byte_for_byte() {
    for name in ["rke-v1.5.rkestate", "rke-with-unknown-keys.rkestate"] {
        let (path, bytes) = fixture(name);
        let state = RkeState::parse(&bytes, &path).unwrap();
        assert!(!state.is_changed());
        assert_eq!(*state.to_bytes().unwrap(), bytes, "{name}");
    }
}

#[test]
fn reformatting_matches_rke_go_output_exactly() {
    // Change a value and change it back: the state is re-serialized, not copied, and must equal RKE's bytes.
    for name in ["rke-v1.5.rkestate", "rke-with-unknown-keys.rkestate"] {
        let (path, bytes) = fixture(name);
        let mut state = RkeState::parse(&bytes, &path).unwrap();
        let original = state.desired_encryption_config().unwrap().to_string();
        state.set_desired_encryption_config(Some("changed"));
        state.set_desired_encryption_config(Some(&original));
        assert!(state.is_changed());
        let out = state.to_bytes().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&bytes),
            "{name}"
        );
    }
}

/// What a deploy recorded ahead of its nodes is put back byte for byte when its first node is rolled back: the
/// config texts and RKE's `secretsEncryptionConfig` in both states, whatever a re-rendering would give.
#[test]
fn an_encryption_view_put_back_restores_the_state_byte_for_byte() {
    for name in ["rke-with-unknown-keys.rkestate", "rke-v1.5.rkestate"] {
        let (path, bytes) = fixture(name);
        let mut state = RkeState::parse(&bytes, &path).unwrap();
        let view = state.encryption_view();
        state.set_current_encryption_config(Some("apiVersion: x\n"));
        state.set_desired_encryption_config(None);
        state.set_rke_secrets_encryption(true, Some(&serde_json::json!({"resources": []})));
        assert_ne!(
            state.to_bytes().unwrap().to_vec(),
            bytes,
            "{name}: nothing changed"
        );
        state.restore_encryption_view(&view);
        assert_eq!(
            String::from_utf8_lossy(&state.to_bytes().unwrap()),
            String::from_utf8_lossy(&bytes),
            "{name}"
        );
    }
}

#[test]
fn changing_encryption_config_keeps_every_other_key_and_its_order() {
    let (path, bytes) = fixture("rke-with-unknown-keys.rkestate");
    let mut state = RkeState::parse(&bytes, &path).unwrap();
    state.set_current_encryption_config(Some(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n",
    ));
    state.set_desired_encryption_config(None);
    let out = state.to_bytes().unwrap();

    let touched = |k: &str| {
        k.starts_with("/atrest")
            || k == "/currentState/encryptionConfig"
            || k == "/desiredState/encryptionConfig"
    };
    let before: Vec<_> = leaves(&bytes)
        .into_iter()
        .filter(|(k, _)| !touched(k))
        .collect();
    let after: Vec<_> = leaves(&out)
        .into_iter()
        .filter(|(k, _)| !touched(k))
        .collect();
    assert_eq!(before.len(), after.len());
    assert_eq!(before, after);

    let reread = RkeState::parse(&out, &path).unwrap();
    assert_eq!(reread.legacy_atrest().unwrap(), None);
    assert_eq!(reread.desired_encryption_config(), None);
    assert!(
        reread
            .current_encryption_config()
            .unwrap()
            .starts_with("apiVersion")
    );
    let top: Vec<String> = reread
        .as_value()
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(top, ["desiredState", "currentState", "zz_otherTool"]);
    // encryptionConfig is RKE's last State field: it stays last.
    let current: Vec<&String> = reread.as_value()["currentState"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(
        current,
        ["rkeConfig", "certificatesBundle", "encryptionConfig"]
    );
}

#[test]
fn a_legacy_atrest_key_is_read_and_removed_keeping_every_other_key() {
    let (path, bytes) = fixture("rke-with-unknown-keys.rkestate");
    let mut v: Value = serde_json::from_slice(&bytes).unwrap();
    v["atrest"] = serde_json::to_value(sample_atrest()).unwrap();
    let with_key = serde_json::to_vec_pretty(&v).unwrap();
    let mut state = RkeState::parse(&with_key, &path).unwrap();
    assert_eq!(state.legacy_atrest().unwrap(), Some(sample_atrest()));
    assert!(state.remove_legacy_atrest());
    assert!(!state.remove_legacy_atrest(), "removed once");
    let out = state.to_bytes().unwrap();
    assert_eq!(
        leaves(&out),
        leaves(&bytes),
        "only the atrest key went away"
    );
    // A key that does not hold atrest's records is an error naming it, never dropped silently.
    v["atrest"] = serde_json::json!({"archive": 3});
    let bad = RkeState::parse(&serde_json::to_vec(&v).unwrap(), &path);
    assert!(bad.is_err(), "the shape check refuses it when reading");
}

#[test]
fn records_path_defaults_beside_the_config() {
    assert_eq!(
        atrest::state::paths::default_records_path(Path::new("/a/cluster.yml")),
        Path::new("/a/cluster.atreststate")
    );
}

#[test]
fn reads_encryption_configs_certificates_and_names() {
    let (path, bytes) = fixture("rke-v1.5.rkestate");
    let state = RkeState::parse(&bytes, &path).unwrap();
    assert!(
        state
            .current_encryption_config()
            .unwrap()
            .contains("name: k-fw5hn")
    );
    assert_eq!(
        state.current_encryption_config(),
        state.desired_encryption_config()
    );

    let etcd = etcd_certificate_name("172.16.0.2");
    assert_eq!(etcd, "kube-etcd-172-16-0-2");
    for name in ["kube-ca", "kube-node", etcd.as_str()] {
        let cert = state
            .certificate(name)
            .unwrap()
            .unwrap_or_else(|| panic!("{name} missing"));
        assert!(
            cert.cert_pem.starts_with("-----BEGIN CERTIFICATE-----\n"),
            "{name}"
        );
        assert!(
            cert.key_pem
                .expose()
                .starts_with("-----BEGIN RSA PRIVATE KEY-----\n"),
            "{name}"
        );
        assert!(
            !format!("{cert:?}").contains("PRIVATE KEY"),
            "Debug must not print the key"
        );
    }
    assert!(state.certificate("kube-etcd-10-9-9-9").unwrap().is_none());
    let names: Vec<&str> = state.certificate_names().collect();
    assert_eq!(
        names.iter().filter(|n| n.starts_with("kube-etcd-")).count(),
        3
    );
    assert_eq!(state.current_rke_config().unwrap()["clusterName"], "prod");
    assert_eq!(state.legacy_atrest().unwrap(), None);
    assert!(!format!("{state:?}").contains("PRIVATE"));
}

#[test]
fn certificate_without_key_is_an_error_naming_it() {
    let text = r#"{"currentState": {"certificatesBundle": {"kube-ca": {"certificatePEM": "x", "keyPEM": ""}}}}"#;
    let state = RkeState::parse(text.as_bytes(), Path::new("s.rkestate")).unwrap();
    let err = state.certificate("kube-ca").unwrap_err().to_string();
    assert!(err.contains("kube-ca") && err.contains("keyPEM"), "{err}");
}

#[test]
fn empty_state_gets_sections_in_rke_order() {
    let mut state = RkeState::empty();
    assert!(state.is_empty());
    state.set_current_encryption_config(Some("c"));
    state.set_desired_encryption_config(Some("d"));
    let out = String::from_utf8(state.to_bytes().unwrap().to_vec()).unwrap();
    assert!(out.starts_with(
        "{\n  \"desiredState\": {\n    \"encryptionConfig\": \"d\"\n  },\n  \"currentState\""
    ));
    assert!(!out.ends_with('\n'), "RKE writes no trailing newline");
    assert!(!state.is_empty());
}

#[test]
fn paths_default_like_rke() {
    assert_eq!(
        default_state_path(Path::new("/a/cluster.yml")),
        Path::new("/a/cluster.rkestate")
    );
    assert_eq!(
        default_kubeconfig_path(Path::new("/a/cluster.yml")),
        Path::new("/a/kube_config_cluster.yml")
    );
}

// ---- the file on disk ----

#[test]
fn missing_file_is_an_empty_state_and_first_save_is_0600() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.rkestate");
    let file = StateFile::open_locked(&path).unwrap();
    let mut state = file.load().unwrap();
    assert!(state.is_empty());
    state.set_current_encryption_config(Some(SAMPLE_CONFIG));
    // A lax umask must not widen the file's mode.
    let old = unsafe_umask(0o000);
    let saved = file.save(&state);
    unsafe_umask(old);
    saved.unwrap();
    assert_eq!(mode(&path), 0o600);
    assert!(
        !file.backup_path().exists(),
        "nothing to back up on the first save"
    );
    assert_eq!(
        file.load().unwrap().current_encryption_config(),
        Some(SAMPLE_CONFIG)
    );
}

#[test]
fn save_keeps_the_previous_version_as_bak_0600_and_fixes_a_lax_mode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.rkestate");
    let (_, bytes) = fixture("rke-v1.5.rkestate");
    fs::write(&path, &bytes).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();

    let file = StateFile::open_locked(&path).unwrap();
    let mut state = file.load().unwrap();
    // Unchanged: not rewritten (no backup), but the mode is tightened.
    file.save(&state).unwrap();
    assert_eq!(fs::read(&path).unwrap(), bytes);
    assert_eq!(mode(&path), 0o600);
    assert!(!file.backup_path().exists());

    state.set_current_encryption_config(Some(SAMPLE_CONFIG));
    file.save(&state).unwrap();
    assert_eq!(fs::read(file.backup_path()).unwrap(), bytes);
    assert_eq!(mode(&file.backup_path()), 0o600);
    assert_eq!(mode(&path), 0o600);
    let saved = fs::read(&path).unwrap();
    assert_ne!(saved, bytes);

    // A second change moves the backup along to the version it replaced.
    state.set_desired_encryption_config(None);
    file.save(&state).unwrap();
    assert_eq!(fs::read(file.backup_path()).unwrap(), saved);
    let leftovers: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}

#[test]
fn a_second_run_is_refused_with_the_holders_pid_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.rkestate");
    let first = StateFile::open_locked(&path).unwrap();
    assert_eq!(mode(first.lock_path()), 0o600);
    let err = StateFile::open_locked(&path).unwrap_err();
    assert!(matches!(err, StateError::Locked { .. }));
    let text = err.to_string();
    let expected = format!(
        "another atrest run holds the lock on {} (pid {})",
        path.display(),
        std::process::id()
    );
    assert!(text.starts_with(&expected), "{text}");

    // Another process (flock is per open file, but check across processes too, like a real second run).
    let status = std::process::Command::new("flock")
        .args(["--nonblock", "--exclusive"])
        .arg(first.lock_path())
        .arg("true")
        .status();
    if let Ok(status) = status {
        assert!(
            !status.success(),
            "another process got the lock while we hold it"
        );
    }

    // A read-only verb sees who holds the lock without touching it.
    assert_eq!(
        atrest::state::store::lock_holder(&path),
        Some(std::process::id())
    );

    drop(first);
    assert_eq!(atrest::state::store::lock_holder(&path), None);
    StateFile::open_locked(&path).expect("lock is free again once the holder is gone");
}

#[test]
fn an_interrupted_save_leaves_a_temp_file_that_does_not_break_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.rkestate");
    let (_, bytes) = fixture("rke-v1.5.rkestate");
    fs::write(&path, &bytes).unwrap();
    // What a crash between "write temp" and "rename" leaves: a partial temp file beside the good state.
    let tmp = dir.path().join("cluster.rkestate.atrest-tmp");
    fs::write(&tmp, &bytes[..bytes.len() / 3]).unwrap();
    fs::write(
        dir.path().join("cluster.rkestate.bak.atrest-tmp"),
        b"{\"desi",
    )
    .unwrap();

    let file = StateFile::open_locked(&path).unwrap();
    let mut state = file.load().unwrap();
    assert!(state.current_encryption_config().is_some());
    state.set_current_encryption_config(Some(SAMPLE_CONFIG));
    file.save(&state).unwrap();
    assert!(!tmp.exists());
    assert_eq!(
        file.load().unwrap().current_encryption_config(),
        Some(SAMPLE_CONFIG)
    );
    assert_eq!(fs::read(file.backup_path()).unwrap(), bytes);
}

#[test]
fn a_state_rewritten_by_rke_meanwhile_is_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.rkestate");
    let (_, bytes) = fixture("rke-v1.5.rkestate");
    fs::write(&path, &bytes).unwrap();
    let file = StateFile::open_locked(&path).unwrap();
    let mut state = file.load().unwrap();
    state.set_current_encryption_config(Some(SAMPLE_CONFIG));
    file.save(&state).unwrap();

    // `rke up` does not take atrest's lock: it rewrites the file between two atrest saves.
    let rke_wrote = String::from_utf8(bytes.clone())
        .unwrap()
        .replace("k-fw5hn", "k-new01");
    fs::write(&path, &rke_wrote).unwrap();
    state.set_desired_encryption_config(None);
    let err = file.save(&state).unwrap_err();
    assert!(matches!(err, StateError::ChangedOnDisk { .. }), "{err}");
    assert!(
        err.to_string().contains("was changed by another program"),
        "{err}"
    );
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        rke_wrote,
        "RKE's version must survive"
    );

    // Saving without loading first, over an existing file, is refused the same way.
    drop(file);
    let file = StateFile::open_locked(&path).unwrap();
    assert!(matches!(
        file.save(&RkeState::empty()),
        Err(StateError::ChangedOnDisk { .. })
    ));
    // After loading, the handle saves again.
    let mut state = file.load().unwrap();
    state.set_current_encryption_config(Some(SAMPLE_CONFIG));
    file.save(&state).unwrap();
    assert_eq!(fs::read_to_string(file.backup_path()).unwrap(), rke_wrote);
}

#[test]
fn concurrent_savers_never_interleave() {
    // Several threads race for the lock and each holds what it got until all have tried: exactly one wins, the
    // others are refused with `Locked`, and the winner's file is complete and parses.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.rkestate");
    let (_, bytes) = fixture("rke-v1.5.rkestate");
    fs::write(&path, &bytes).unwrap();
    let start = std::sync::Arc::new(std::sync::Barrier::new(4));
    let tried = std::sync::Arc::new(std::sync::Barrier::new(4));
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let path = path.clone();
            let (start, tried) = (start.clone(), tried.clone());
            std::thread::spawn(move || {
                start.wait();
                let file = match StateFile::open_locked(&path) {
                    Ok(f) => f,
                    Err(StateError::Locked { .. }) => {
                        tried.wait();
                        return false;
                    }
                    Err(e) => panic!("{e}"),
                };
                let mut state = file.load().unwrap();
                state.set_current_encryption_config(Some(&format!("writer-{i}")));
                file.save(&state).unwrap();
                tried.wait();
                true
            })
        })
        .collect();
    let winners = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|w| *w)
        .count();
    assert_eq!(winners, 1, "exactly one run may hold the lock");
    let file = StateFile::open_locked(&path).unwrap();
    assert!(
        file.load()
            .unwrap()
            .current_encryption_config()
            .unwrap()
            .starts_with("writer-")
    );
}

/// Sets the process umask and returns the previous one.
fn unsafe_umask(mask: u32) -> u32 {
    unsafe extern "C" {
        fn umask(mask: u32) -> u32;
    }
    // SAFETY: umask has no preconditions; tests in this binary that create files tolerate either mask.
    unsafe { umask(mask) }
}
