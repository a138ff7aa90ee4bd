//! The `atrest` binary: help, completions, usage errors (exit 2), input errors (exit 1, `error: …` with the
//! file and position), and verbs refusing with nothing changed when no node answers.

use assert_cmd::Command;
use predicates::prelude::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const GOOD_CONFIG: &str = "\
cluster_name: test
nodes:
  - address: 127.0.0.1
    port: \"22\"
    user: rke
    role: [controlplane, etcd, worker]
services:
  kube-api:
    secrets_encryption_config:
      enabled: true
network:
  plugin: canal
";

/// `atrest` run in `dir`, with no RKE_CONFIG leaking in from the environment.
fn atrest(dir: &Path) -> Command {
    // ATREST_BIN pins a binary: several worktrees share one target dir and overwrite target/debug/atrest.
    let mut cmd = match std::env::var_os("ATREST_BIN") {
        Some(bin) => Command::new(bin),
        None => Command::cargo_bin("atrest").unwrap(),
    };
    cmd.current_dir(dir)
        .env_remove("RKE_CONFIG")
        .env_remove("RUST_LOG");
    cmd
}

/// Every verb, with the words its help must contain (what it does and what it changes).
const VERBS: &[(&[&str], &[&str])] = &[
    (
        &[],
        &[
            "up",
            "plan",
            "encrypt",
            "completions",
            "--config",
            "RKE_CONFIG",
            "--state",
            "--kubeconfig",
        ],
    ),
    (&["up"], &["--dry-run", "Changes:", "resumes"]),
    (
        &["plan"],
        &["--output", "text", "json", "Changes nothing", "--offline"],
    ),
    (
        &["encrypt"],
        &[
            "rotate-key",
            "status",
            "verify",
            "prepare",
            "rotate",
            "reencrypt",
            "rotate-keys",
        ],
    ),
    (&["encrypt", "rotate-key"], &["new 32-byte key", "Changes:"]),
    (
        &["encrypt", "status"],
        &[
            "--output",
            "table",
            "json",
            "never printed",
            "Changes nothing",
        ],
    ),
    (&["encrypt", "verify"], &["etcd", "exit 1"]),
    (
        &["encrypt", "prepare"],
        &["--force", "read-only", "Changes:"],
    ),
    (
        &["encrypt", "rotate"],
        &["--force", "write key", "Changes:"],
    ),
    (
        &["encrypt", "reencrypt"],
        &["--force", "--skip", "Changes:"],
    ),
    (
        &["encrypt", "rotate-keys"],
        &["rotate and reencrypt in one go"],
    ),
    (&["completions"], &["bash", "zsh", "fish"]),
];

#[test]
fn every_verb_has_help_saying_what_it_does_and_changes() {
    let dir = tempfile::tempdir().unwrap();
    for (verb, words) in VERBS {
        let out = atrest(dir.path())
            .args(*verb)
            .arg("--help")
            .assert()
            .success();
        let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
        for word in *words {
            assert!(
                text.contains(word),
                "`atrest {} --help` lacks {word:?}:\n{text}",
                verb.join(" ")
            );
        }
        // Global options are accepted after the verb too, so they are listed in every verb's help.
        assert!(
            text.contains("--known-hosts") && text.contains("--yes"),
            "{verb:?}"
        );
    }
}

#[test]
fn version_is_printed() {
    let dir = tempfile::tempdir().unwrap();
    atrest(dir.path())
        .arg("--version")
        .assert()
        .success()
        .stdout(predicate::str::starts_with("atrest "));
}

#[test]
fn bash_completions_cover_the_verbs() {
    let dir = tempfile::tempdir().unwrap();
    atrest(dir.path())
        .args(["completions", "bash"])
        .assert()
        .success()
        .stdout(predicate::str::contains("_atrest()"))
        .stdout(predicate::str::contains("rotate-keys"))
        .stdout(predicate::str::contains("--accept-new-host-keys"));
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    atrest(dir.path())
        .arg("frobnicate")
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "unrecognized subcommand 'frobnicate'",
        ));
    atrest(dir.path())
        .assert()
        .code(2)
        .stderr(predicate::str::contains("Usage:"));
    atrest(dir.path())
        .args(["plan", "-o", "yaml"])
        .assert()
        .code(2);
    atrest(dir.path())
        .args(["-q", "-v", "plan"])
        .assert()
        .code(2);
    atrest(dir.path())
        .args(["encrypt", "rotate", "--skip"])
        .assert()
        .code(2);
    for bad in ["0", "1025", "many"] {
        atrest(dir.path())
            .args(["up", "--rewrite-concurrency", bad])
            .assert()
            .code(2)
            .stderr(predicate::str::contains(format!(
                "invalid value '{bad}' for '--rewrite-concurrency <N>'"
            )));
    }
}

#[test]
fn missing_config_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    atrest(dir.path())
        .arg("plan")
        .assert()
        .code(1)
        .stderr(predicate::str::starts_with(
            "error: cannot read cluster config cluster.yml (choose the file with --config FILE or RKE_CONFIG)\n",
        ))
        .stderr(predicate::str::contains("caused by: No such file or directory"));
}

#[test]
fn bad_config_reports_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("cluster.yml"),
        "cluster_name: x\nnodes:\n  - address: [1\n",
    )
    .unwrap();
    atrest(dir.path())
        .args(["up", "--dry-run"])
        .assert()
        .code(1)
        .stderr(predicate::str::is_match(r"^error: cluster\.yml:\d+:\d+: ").unwrap());

    // A wrong type is reported at its position too.
    fs::write(
        dir.path().join("other.yml"),
        "cluster_name: x\nssh_agent_auth: maybe\n",
    )
    .unwrap();
    atrest(dir.path())
        .args(["--config", "other.yml", "encrypt", "status"])
        .assert()
        .code(1)
        .stderr(predicate::str::starts_with("error: other.yml:2:17: "));
}

#[test]
fn bad_state_is_reported_before_anything_else() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("cluster.yml"), GOOD_CONFIG).unwrap();
    fs::write(
        dir.path().join("cluster.rkestate"),
        "{\n  \"currentState\": {\n    \"encryptionConfig\": 7\n",
    )
    .unwrap();
    fs::set_permissions(
        dir.path().join("cluster.rkestate"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    atrest(dir.path())
        .arg("plan")
        .assert()
        .code(1)
        .stderr(predicate::str::starts_with(
            "error: cluster.rkestate:3:25: currentState.encryptionConfig: invalid type: integer `7`, expected a string",
        ));
    assert!(!dir.path().join("cluster.rkestate.bak").exists());
}

#[test]
fn rke_config_env_and_state_flag_are_honoured() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("prod.yml"), GOOD_CONFIG).unwrap();
    // Default state for prod.yml is prod.rkestate: a broken one proves it was read.
    fs::write(dir.path().join("prod.rkestate"), "").unwrap();
    fs::set_permissions(
        dir.path().join("prod.rkestate"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    atrest(dir.path())
        .env("RKE_CONFIG", "prod.yml")
        .arg("plan")
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "state file prod.rkestate is empty",
        ));
    // --state points elsewhere (missing = first run), so the verb gets as far as connecting to the nodes.
    atrest(dir.path())
        .env("RKE_CONFIG", "prod.yml")
        .args(["plan", "--state", "elsewhere.rkestate"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "pre-flight failed; nothing was changed",
        ));
}

#[test]
fn verbs_refuse_with_nothing_changed_when_the_nodes_are_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("cluster.yml"), GOOD_CONFIG).unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["up", "--yes"], "nothing was changed"),
        (&["up", "--dry-run"], "nothing was changed"),
        (&["plan", "-o", "json"], "nothing was changed"),
        // No managed config is deployed yet: refused before any connection.
        (&["encrypt", "rotate-key", "--yes"], "run `atrest up` first"),
        (&["encrypt", "status", "-o", "json"], "nothing was changed"),
        (&["encrypt", "verify"], "nothing was changed"),
        (
            &["encrypt", "prepare", "--force", "--yes"],
            "nothing was changed",
        ),
        (&["encrypt", "rotate", "--yes"], "nothing was changed"),
        (
            &["encrypt", "reencrypt", "--force", "--skip", "--yes"],
            "nothing was changed",
        ),
        (
            &["encrypt", "rotate-keys", "--yes"],
            "run `atrest up` first",
        ),
    ];
    for (args, says) in cases {
        atrest(dir.path())
            .args(*args)
            .env("HOME", dir.path())
            .assert()
            .code(1)
            .stderr(predicate::str::starts_with("error: "))
            .stderr(predicate::str::contains(*says));
    }
    // Nothing was written next to the config.
    let files: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let mut files: Vec<String> = files
        .into_iter()
        .map(|f| f.to_string_lossy().into_owned())
        .collect();
    files.sort();
    // The lock file of the verbs that take the state lock; no state, no snapshot.
    assert_eq!(
        files,
        [
            "cluster.atreststate.lock",
            "cluster.rkestate.lock",
            "cluster.yml"
        ]
    );
}

/// `atrest plan --offline` plans from the files alone: the examples get the plans their configs call for, key
/// material never appears, and no host is contacted (the example addresses are unroutable documentation ones).
#[test]
fn offline_plans_of_the_examples() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let dir = tempfile::tempdir().unwrap();
    let plan = |name: &str, format: &str| {
        let out = atrest(dir.path())
            .args(["plan", "--offline", "-o", format, "--config"])
            .arg(examples.join(name))
            .arg("--state")
            .arg(dir.path().join(format!("{name}.rkestate")))
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };

    let managed = plan("managed.yml", "text");
    assert!(
        managed.starts_with("Plan: enable on 3 controlplane(s)"),
        "{managed}"
    );
    for phase in [
        "[prepare]",
        "[rotate]",
        "[reencrypt]",
        "[verify]",
        "[finish]",
    ] {
        assert!(managed.contains(phase), "{phase} missing:\n{managed}");
    }
    assert!(managed.contains("recreate kube-apiserver with --encryption-provider-config"));
    assert!(managed.contains("offline:"));

    let custom = plan("custom-aes-secretbox.yml", "text");
    let text = fs::read_to_string(examples.join("custom-aes-secretbox.yml")).unwrap();
    for line in text
        .lines()
        .filter(|l| l.trim_start().starts_with("secret:"))
    {
        let secret = line.trim_start().trim_start_matches("secret:").trim();
        assert!(
            !custom.contains(secret),
            "key material in the plan:\n{custom}"
        );
    }
    assert!(custom.contains("REDACTED"));
    let json: serde_json::Value =
        serde_json::from_str(&plan("custom-aes-secretbox.yml", "json")).unwrap();
    assert!(
        !json
            .to_string()
            .contains("/xWUV4CFCerSSaxhMOhJQgzaObcu4CXdRD3j9753wGs=")
    );

    let disabled = plan("disabled.yml", "text");
    assert!(disabled.contains("Nothing to do"), "{disabled}");
}
