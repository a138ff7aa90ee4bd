//! Every file under tests/bad_input/{cluster,encryption} must be refused with exactly the text in its
//! sibling `.expected` file (positions included). Files under tests/valid_input, examples/ and
//! cluster.yml.example must load. (tests/bad_input/state belongs to the state module's tests.)
//!
//! After an intentional message change, regenerate with `ATREST_BLESS=1 cargo test --test bad_input`
//! and review the diff.

use atrest::config::{self, cluster, encryption};
use std::fs;
use std::path::{Path, PathBuf};

fn inputs(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {dir}: {e}"))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x != "expected"))
        .collect();
    files.sort();
    files
}

fn check_corpus(dir: &str, run: impl Fn(&Path) -> Result<(), String>) -> usize {
    let bless = std::env::var_os("ATREST_BLESS").is_some();
    let mut failures = Vec::new();
    let files = inputs(dir);
    for input in &files {
        let expected_path = PathBuf::from(format!("{}.expected", input.display()));
        let got = match run(input) {
            Ok(()) => {
                failures.push(format!(
                    "{}: accepted, but it is malformed",
                    input.display()
                ));
                continue;
            }
            Err(e) => e,
        };
        if bless {
            fs::write(&expected_path, format!("{got}\n")).expect("write .expected");
            continue;
        }
        let expected = fs::read_to_string(&expected_path)
            .unwrap_or_else(|e| panic!("{}: {e}", expected_path.display()));
        if got != expected.trim_end_matches('\n') {
            failures.push(format!(
                "{}:\n  expected: {}\n  got:      {}",
                input.display(),
                expected.trim_end(),
                got
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    files.len()
}

#[test]
fn malformed_cluster_files_are_refused_with_exact_positions() {
    let n = check_corpus("tests/bad_input/cluster", |p| {
        cluster::load(p).map(|_| ()).map_err(|e| e.to_string())
    });
    assert!(n >= 25, "only {n} cluster.yml cases");
}

#[test]
fn malformed_encryption_configs_are_refused_with_exact_positions() {
    let n = check_corpus("tests/bad_input/encryption", |p| {
        let text = fs::read_to_string(p).map_err(|e| e.to_string())?;
        encryption::check(&text, &p.display().to_string())
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    assert!(n >= 15, "only {n} EncryptionConfiguration cases");
}

#[test]
fn upstream_shaped_valid_configs_pass_every_check() {
    let files = inputs("tests/valid_input/encryption");
    assert!(files.len() >= 10);
    for p in files {
        let text = fs::read_to_string(&p).expect("read fixture");
        let c =
            encryption::check(&text, &p.display().to_string()).unwrap_or_else(|e| panic!("{e}"));
        assert!(!c.resources.is_empty());
    }
}

#[test]
fn examples_load_and_give_the_desired_state() {
    let mut files = inputs("examples");
    files.push(PathBuf::from("cluster.yml.example"));
    let mut seen = Vec::new();
    for p in &files {
        if p.extension().is_some_and(|x| x != "yml" && x != "example") {
            continue;
        }
        let c = cluster::load(p).unwrap_or_else(|e| panic!("{e}"));
        let d = config::desired(&c).unwrap_or_else(|e| panic!("{e}"));
        seen.push(match d {
            config::Desired::Disabled => "disabled",
            config::Desired::Managed => "managed",
            config::Desired::Custom(_) => "custom",
        });
    }
    for kind in ["disabled", "managed", "custom"] {
        assert!(seen.contains(&kind), "no example gives {kind}: {seen:?}");
    }
}

/// A key put where the schema wants an object must not be echoed by the decode error (serde quotes the value).
#[test]
fn decode_errors_never_quote_a_key_from_the_file() {
    const KEY: &str = "c2VjcmV0LWtleS1tYXRlcmlhbC0zMi1ieXRlcyEhIQ==";
    let cluster = cluster::load(Path::new("tests/bad_input/cluster/key-as-string.yml"))
        .expect_err("a string where a key object belongs")
        .to_string();
    assert!(cluster.contains(":17:23: "), "{cluster}");
    assert!(
        cluster.contains("keys[0]: invalid type: string (value not shown)"),
        "{cluster}"
    );
    for file in ["key-as-string.yaml", "key-as-string.json"] {
        let path = format!("tests/bad_input/encryption/{file}");
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains(KEY));
        let e = encryption::check(&text, &path).expect_err(file).to_string();
        assert!(e.contains("(value not shown)"), "{e}");
        assert!(!e.contains(KEY), "{e}");
    }
    assert!(!cluster.contains(KEY), "{cluster}");
}
