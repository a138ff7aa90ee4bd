//! Broken cluster.rkestate files: each `tests/bad_input/state/NAME.rkestate` must be refused with the error text in
//! `NAME.expected` (`{file}` stands for the file's path). A broken state is never replaced by an empty one.

use atrest::state::StateFile;
use std::fs;
use std::path::Path;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/bad_input/state");

#[test]
fn every_broken_state_file_is_refused_with_its_expected_error() {
    let mut cases: Vec<_> = fs::read_dir(DIR)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rkestate"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 5, "only {} cases in {DIR}", cases.len());

    let mut failures = Vec::new();
    for case in &cases {
        // Work on a copy: loading must not touch the file, and the lock file goes beside the copy.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(case.file_name().unwrap());
        let original = fs::read(case).unwrap();
        fs::write(&path, &original).unwrap();

        let expected_file = case.with_extension("expected");
        let expected = fs::read_to_string(&expected_file)
            .unwrap_or_else(|_| panic!("missing {}", expected_file.display()))
            .trim_end()
            .replace("{file}", &path.display().to_string());

        let file = StateFile::open_locked(&path).unwrap();
        match file.load() {
            Ok(_) => failures.push(format!("{}: loaded without error", name(case))),
            Err(e) => {
                let actual = e.to_string();
                if !actual.starts_with(&expected) {
                    failures.push(format!(
                        "{}:\n  expected: {expected}\n  actual:   {actual}",
                        name(case)
                    ));
                }
            }
        }
        assert_eq!(
            fs::read(&path).unwrap(),
            original,
            "{}: file was modified",
            name(case)
        );
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn every_content_error_says_how_to_recover() {
    let path = Path::new(DIR).join("truncated.rkestate");
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("cluster.rkestate");
    fs::copy(&path, &copy).unwrap();
    let err = StateFile::open_locked(&copy)
        .unwrap()
        .load()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(".bak") && err.contains("full-cluster-state"),
        "{err}"
    );
}

#[test]
fn an_unreadable_state_file_is_an_error_not_an_empty_state() {
    // A directory where the file should be: reading fails with something other than "not found".
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.rkestate");
    fs::create_dir(&path).unwrap();
    let err = StateFile::open_locked(&path).unwrap().load().unwrap_err();
    let text = format!("{:#}", anyhow::Error::from(err));
    assert!(
        text.starts_with(&format!("cannot read state file {}", path.display())),
        "{text}"
    );
}

fn name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

/// Keys and private keys in the wrong place are not repeated by the error (serde quotes the value it rejects).
#[test]
fn a_state_decode_error_never_quotes_the_value() {
    for (case, secret) in [
        ("bundle-entry-key-string", "PRIVATE KEY"),
        (
            "atrest-key-in-stage",
            "c2VjcmV0LWtleS1tYXRlcmlhbC0zMi1ieXRlcyEhIQ==",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.rkestate");
        fs::copy(Path::new(DIR).join(format!("{case}.rkestate")), &path).unwrap();
        assert!(fs::read_to_string(&path).unwrap().contains(secret));
        let e = StateFile::open_locked(&path)
            .unwrap()
            .load()
            .err()
            .map(|e| e.to_string());
        let e = e.unwrap_or_else(|| panic!("{case}: loaded"));
        assert!(!e.contains(secret), "{case}: {e}");
        assert!(e.contains("(value not shown)"), "{case}: {e}");
    }
}
