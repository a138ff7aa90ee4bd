//! cluster.yml in version control, through the `atrest` binary: the exit codes a pipeline branches on
//! (`--detailed-exitcode`), the check that no file holding keys can be committed (in real temporary git
//! repositories: tracked, untracked and not ignored, ignored; cluster.yml with raw keys or not; `--strict`), the
//! versioned JSON of `plan -o json`, and the example GitHub Actions pipeline: valid YAML of the expected shape
//! whose `atrest plan --offline` commands run against cluster.yml.example.

use assert_cmd::Command;
use predicates::prelude::*;
use std::fs;
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn bin() -> PathBuf {
    // ATREST_BIN pins a binary: several worktrees share one target dir and overwrite target/debug/atrest.
    std::env::var_os("ATREST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| assert_cmd::cargo::cargo_bin("atrest"))
}

/// `atrest` run in `dir`, with nothing from the environment leaking in (git reads no user or system config).
fn atrest(dir: &Path) -> Command {
    let mut cmd = Command::new(bin());
    cmd.current_dir(dir)
        .env_remove("RKE_CONFIG")
        .env_remove("RUST_LOG")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env("HOME", dir)
        .env("GIT_CONFIG_NOSYSTEM", "1");
    cmd
}

fn git(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("HOME", dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("run git");
    assert!(out.status.success(), "git {args:?}: {out:?}");
}

fn example(name: &str) -> String {
    fs::read_to_string(Path::new(ROOT).join("examples").join(name)).unwrap()
}

/// A fresh git work tree holding `cluster.yml` (not added).
fn repo(config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "-q"]);
    fs::write(dir.path().join("cluster.yml"), config).unwrap();
    dir
}

fn stderr_of(out: &assert_cmd::assert::Assert) -> String {
    String::from_utf8(out.get_output().stderr.clone()).unwrap()
}

/// The `.gitignore` lines a warning asks for, in order.
fn asked_lines(stderr: &str) -> Vec<String> {
    let Some((_, rest)) = stderr.split_once(".gitignore:\n") else {
        return Vec::new();
    };
    rest.lines()
        .take_while(|l| l.starts_with("  /"))
        .map(|l| l.trim().to_string())
        .collect()
}

const ALL_LINES: [&str; 5] = [
    "/cluster.rkestate",
    "/cluster.rkestate.bak",
    "/cluster.atreststate",
    "/cluster.snapshots/",
    "/kube_config_cluster.yml",
];

#[test]
fn plan_detailed_exitcode_is_0_without_steps_2_with_steps_1_on_error() {
    let dir = tempfile::tempdir().unwrap();
    for (name, code) in [
        ("managed.yml", 2),
        ("custom-aes-secretbox.yml", 2),
        ("disabled.yml", 0),
    ] {
        for format in ["text", "json"] {
            atrest(dir.path())
                .args(["plan", "--offline", "--detailed-exitcode", "-o", format])
                .arg("--config")
                .arg(Path::new(ROOT).join("examples").join(name))
                .arg("--state")
                .arg(dir.path().join("none.rkestate"))
                .assert()
                .code(code);
        }
        // Without the flag a plan that was made exits 0 either way.
        atrest(dir.path())
            .args(["plan", "--offline", "--config"])
            .arg(Path::new(ROOT).join("examples").join(name))
            .arg("--state")
            .arg(dir.path().join("none.rkestate"))
            .assert()
            .code(0);
    }
    // Errors are 1: bad input, an unreachable cluster (online plan, status, verify), and usage errors, which
    // are 2 without the flag but must not pass for "changes" with it.
    fs::write(dir.path().join("bad.yml"), "cluster_name: [\n").unwrap();
    atrest(dir.path())
        .args([
            "plan",
            "--offline",
            "--detailed-exitcode",
            "--config",
            "bad.yml",
        ])
        .assert()
        .code(1);
    // 127.0.0.1 answers or refuses at once; its host key is in no known_hosts.
    fs::write(
        dir.path().join("cluster.yml"),
        "nodes:\n  - address: 127.0.0.1\n    user: rke\n    role: [controlplane, etcd]\nservices:\n  kube-api:\n    secrets_encryption_config:\n      enabled: true\n",
    )
    .unwrap();
    for args in [
        &["plan", "--detailed-exitcode"][..],
        &["encrypt", "status", "--detailed-exitcode"],
        &["encrypt", "verify", "--detailed-exitcode", "-o", "json"],
    ] {
        atrest(dir.path())
            .args(args)
            .args(["--known-hosts", "kh"])
            .assert()
            .code(1)
            .stderr(predicate::str::starts_with("error: "));
    }
    atrest(dir.path())
        .args(["plan", "--detailed-exitcode", "--frobnicate"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("--frobnicate"));
    atrest(dir.path())
        .args(["plan", "--frobnicate"])
        .assert()
        .code(2);
}

#[test]
fn plan_json_is_versioned_and_documented_and_holds_no_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = atrest(dir.path())
        .args(["plan", "--offline", "-o", "json", "--config"])
        .arg(Path::new(ROOT).join("examples/custom-aes-secretbox.yml"))
        .arg("--state")
        .arg(dir.path().join("none.rkestate"))
        .assert()
        .success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let keys: Vec<&str> = doc
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        ["apiVersion", "kind", "offline", "hasChanges", "plan"]
    );
    assert_eq!(doc["apiVersion"], "atrest/v1");
    assert_eq!(doc["kind"], "Plan");
    assert_eq!(doc["offline"], true);
    assert_eq!(doc["hasChanges"], true);
    let plan = doc["plan"].as_object().unwrap();
    let keys: Vec<&str> = plan.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "kind",
            "from",
            "to",
            "controlplanes",
            "transitions",
            "steps",
            "notes",
            "abandons"
        ]
    );
    assert_eq!(plan["kind"], "enable");
    assert_eq!(plan["abandons"], serde_json::Value::Null);
    let step = &plan["steps"][0];
    for field in ["transition", "phase", "stage", "action"] {
        assert!(step.get(field).is_some(), "step lacks {field}: {step}");
    }
    // No secret of the config appears; every one is REDACTED.
    let config = example("custom-aes-secretbox.yml");
    for line in config
        .lines()
        .filter(|l| l.trim_start().starts_with("secret:"))
    {
        let secret = line.trim_start().trim_start_matches("secret:").trim();
        assert!(!text.contains(secret), "key material in the plan JSON");
    }
    assert!(text.contains("\"REDACTED\""));

    // docs/cli.md names every field of the envelope and of the plan.
    let docs = fs::read_to_string(Path::new(ROOT).join("docs/cli.md")).unwrap();
    for field in doc.as_object().unwrap().keys() {
        assert!(
            docs.contains(&format!("`{field}`")),
            "docs/cli.md does not document `{field}`"
        );
    }
    for field in plan.keys() {
        assert!(
            docs.contains(&format!("`plan.{field}`")),
            "docs/cli.md does not document `plan.{field}`"
        );
    }
}

#[test]
fn git_check_warns_with_the_lines_to_add_and_strict_refuses() {
    let repo = repo(&example("managed.yml"));
    let dir = repo.path();

    // Nothing ignored yet: every file that holds keys is named, with its line; the plan still runs.
    let out = atrest(dir)
        .args(["plan", "--offline", "--detailed-exitcode"])
        .assert()
        .code(2);
    let stderr = stderr_of(&out);
    assert_eq!(asked_lines(&stderr), ALL_LINES, "{stderr}");
    assert!(
        stderr.contains("cluster.snapshots (etcd snapshots"),
        "{stderr}"
    );
    assert!(stderr.contains("is not ignored"), "{stderr}");
    assert!(!stderr.contains("TRACKED"), "{stderr}");
    assert!(
        stderr.contains("cluster.yml itself holds no key material"),
        "{stderr}"
    );
    assert!(!out.get_output().stdout.is_empty());

    // --strict: exit 1 before anything else, nothing printed on stdout, nothing written.
    let out = atrest(dir)
        .args(["--strict", "plan", "--offline", "--detailed-exitcode"])
        .assert()
        .code(1)
        .stdout("");
    let stderr = stderr_of(&out);
    assert!(
        stderr.starts_with("error: files that hold keys"),
        "{stderr}"
    );
    assert!(stderr.contains("--strict: refused; nothing was done"));
    assert_eq!(asked_lines(&stderr), ALL_LINES);

    // A tracked state is called out as tracked, with how to untrack it; the others keep their lines.
    fs::write(dir.join("cluster.rkestate"), "{}\n").unwrap();
    fs::set_permissions(
        dir.join("cluster.rkestate"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    git(dir, &["add", "cluster.rkestate", "cluster.yml"]);
    let stderr = stderr_of(
        &atrest(dir)
            .args(["--strict", "plan", "--offline"])
            .assert()
            .code(1),
    );
    assert!(
        stderr.contains("cluster.rkestate (RKE state: encryption keys, CA and client certificates) is TRACKED by git"),
        "{stderr}"
    );
    assert!(
        stderr.contains("git rm -r --cached -- cluster.rkestate "),
        "{stderr}"
    );
    assert_eq!(asked_lines(&stderr), ALL_LINES);

    // The lines added, the state still tracked: only that remains, with no line to add for it.
    fs::write(dir.join(".gitignore"), ALL_LINES.join("\n") + "\n").unwrap();
    let stderr = stderr_of(
        &atrest(dir)
            .args(["--strict", "plan", "--offline"])
            .assert()
            .code(1),
    );
    assert!(stderr.contains("cluster.rkestate (RKE state"), "{stderr}");
    assert!(asked_lines(&stderr).is_empty(), "{stderr}");
    assert!(!stderr.contains("kube_config"), "{stderr}");

    // Untracked and ignored: clean, --strict runs; a committed cluster.yml without keys is fine.
    git(dir, &["rm", "-q", "--cached", "cluster.rkestate"]);
    let out = atrest(dir)
        .args(["--strict", "plan", "--offline", "--detailed-exitcode"])
        .assert()
        .code(2);
    assert_eq!(stderr_of(&out), "", "no warning once all is ignored");

    // Snapshots: a tracked file inside the ignored directory is still tracked.
    fs::create_dir(dir.join("cluster.snapshots")).unwrap();
    fs::write(dir.join("cluster.snapshots/a.db"), "x").unwrap();
    git(dir, &["add", "-f", "cluster.snapshots/a.db"]);
    let stderr = stderr_of(
        &atrest(dir)
            .args(["--strict", "plan", "--offline"])
            .assert()
            .code(1),
    );
    assert!(
        stderr
            .contains("cluster.snapshots (etcd snapshots: every secret of the cluster) is TRACKED"),
        "{stderr}"
    );
    assert!(stderr.contains("git rm -r --cached -- cluster.snapshots "));
}

#[test]
fn git_check_flags_a_cluster_yml_with_raw_keys_but_not_a_kms_only_one() {
    let ignore_all = ALL_LINES.join("\n") + "\n";

    // Raw aescbc/secretbox keys in custom_config: cluster.yml itself must stay out of git.
    let repo_dir = repo(&example("custom-aes-secretbox.yml"));
    let dir = repo_dir.path();
    fs::write(dir.join(".gitignore"), &ignore_all).unwrap();
    let stderr = stderr_of(&atrest(dir).args(["plan", "--offline"]).assert().success());
    assert!(
        stderr
            .contains("cluster.yml (cluster config with raw keys in custom_config) is not ignored"),
        "{stderr}"
    );
    assert_eq!(asked_lines(&stderr), ["/cluster.yml"]);
    assert!(
        stderr.contains("switch to the managed config")
            && stderr.contains("KMS-only custom_config"),
        "{stderr}"
    );
    git(dir, &["add", "cluster.yml"]);
    let stderr = stderr_of(
        &atrest(dir)
            .args(["--strict", "plan", "--offline"])
            .assert()
            .code(1),
    );
    assert!(
        stderr.contains("cluster.yml (cluster config with raw keys in custom_config) is TRACKED")
    );
    // Ignored and untracked: clean.
    git(dir, &["rm", "-q", "--cached", "cluster.yml"]);
    fs::write(
        dir.join(".gitignore"),
        ignore_all.clone() + "/cluster.yml\n",
    )
    .unwrap();
    atrest(dir)
        .args(["--strict", "plan", "--offline"])
        .assert()
        .success()
        .stderr("");

    // A KMS-only custom_config holds no key: tracked cluster.yml is fine.
    let repo_dir = repo(&example("custom-kms-v2.yml"));
    let dir = repo_dir.path();
    fs::write(dir.join(".gitignore"), &ignore_all).unwrap();
    git(dir, &["add", "cluster.yml", ".gitignore"]);
    atrest(dir)
        .args(["--strict", "plan", "--offline"])
        .assert()
        .success()
        .stderr("");

    // Keys in a custom_config that is switched off are still in the file.
    let disabled_with_keys =
        example("custom-aes-secretbox.yml").replace("enabled: true", "enabled: false");
    assert_ne!(disabled_with_keys, example("custom-aes-secretbox.yml"));
    let repo_dir = repo(&disabled_with_keys);
    let dir = repo_dir.path();
    fs::write(dir.join(".gitignore"), &ignore_all).unwrap();
    atrest(dir)
        .args(["--strict", "plan", "--offline"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "cluster.yml (cluster config with raw keys",
        ));
}

#[test]
fn git_check_follows_the_config_directory_and_leaves_outside_paths_alone() {
    // Config in a subdirectory: lines from the top level.
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "-q"]);
    fs::create_dir_all(dir.path().join("clusters/prod")).unwrap();
    fs::write(
        dir.path().join("clusters/prod/cluster.yml"),
        example("managed.yml"),
    )
    .unwrap();
    let stderr = stderr_of(
        &atrest(dir.path())
            .args(["plan", "--offline", "--config", "clusters/prod/cluster.yml"])
            .assert()
            .success(),
    );
    let want: Vec<String> = ALL_LINES
        .iter()
        .map(|l| format!("/clusters/prod{l}"))
        .collect();
    assert_eq!(asked_lines(&stderr), want, "{stderr}");

    // State, snapshots and kubeconfig outside the work tree (as in CI): only the records file beside the
    // config is left to ignore.
    let outside = tempfile::tempdir().unwrap();
    let stderr = stderr_of(
        &atrest(dir.path())
            .args([
                "plan",
                "--offline",
                "--config",
                "clusters/prod/cluster.yml",
                "--state",
            ])
            .arg(outside.path().join("cluster.rkestate"))
            .arg("--kubeconfig")
            .arg(outside.path().join("kube_config"))
            .assert()
            .success(),
    );
    assert_eq!(
        asked_lines(&stderr),
        ["/clusters/prod/cluster.atreststate"],
        "{stderr}"
    );

    // Not a git work tree: no check at all, even with --strict.
    let plain = tempfile::tempdir().unwrap();
    fs::write(
        plain.path().join("cluster.yml"),
        example("custom-aes-secretbox.yml"),
    )
    .unwrap();
    atrest(plain.path())
        .args(["--strict", "plan", "--offline"])
        .assert()
        .success()
        .stderr("");
}

/// The example pipeline: GitHub Actions YAML with a plan job on pull requests that comments the plan, an
/// approved apply on main, a scheduled verify; its `atrest plan --offline` lines run against
/// cluster.yml.example in a checkout laid out as the docs say.
#[test]
fn example_pipeline_is_valid_and_its_offline_plan_runs() {
    let text = fs::read_to_string(Path::new(ROOT).join("examples/ci/github-actions.yml")).unwrap();
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("valid YAML");
    let on = &doc["on"];
    assert!(on["pull_request"].is_mapping(), "runs on pull requests");
    assert_eq!(on["push"]["branches"][0], "main");
    assert!(on["schedule"][0]["cron"].is_string());
    let jobs = doc["jobs"].as_mapping().expect("jobs");
    assert_eq!(jobs.len(), 3);
    let run_of = |job: &str| -> String {
        doc["jobs"][job]["steps"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{job} has steps"))
            .iter()
            .filter_map(|s| s["run"].as_str())
            .collect::<Vec<_>>()
            .join("\n")
    };
    for job in ["plan", "apply", "verify"] {
        let job_doc = &doc["jobs"][job];
        assert!(job_doc["runs-on"].is_string() || job_doc["runs-on"].is_sequence());
        for step in job_doc["steps"].as_sequence().unwrap() {
            assert!(
                step["run"].is_string() ^ step["uses"].is_string(),
                "a step runs or uses: {step:?}"
            );
        }
        // Every atrest call is --strict.
        for line in run_of(job)
            .lines()
            .filter(|l| l.trim_start().starts_with("atrest "))
        {
            assert!(line.contains(" --strict "), "{job}: {line}");
        }
    }
    let plan = &doc["jobs"]["plan"];
    assert!(plan["if"].as_str().unwrap().contains("pull_request"));
    assert_eq!(plan["permissions"]["pull-requests"], "write");
    assert!(run_of("plan").contains("gh pr comment"));
    assert!(run_of("plan").contains("--detailed-exitcode"));
    let apply = &doc["jobs"]["apply"];
    assert!(apply["if"].as_str().unwrap().contains("refs/heads/main"));
    assert!(
        apply["environment"].is_string(),
        "apply waits for an approval"
    );
    assert!(run_of("apply").contains(" up --yes"));
    let verify = &doc["jobs"]["verify"];
    assert!(verify["if"].as_str().unwrap().contains("schedule"));
    assert!(run_of("verify").contains("encrypt verify --detailed-exitcode"));

    // The checkout: cluster.yml.example as cluster.yml, committed with the documented .gitignore; the state
    // copy in RUNNER_TEMP (none yet: first run).
    let checkout = tempfile::tempdir().unwrap();
    let runner_temp = tempfile::tempdir().unwrap();
    git(checkout.path(), &["init", "-q"]);
    fs::copy(
        Path::new(ROOT).join("cluster.yml.example"),
        checkout.path().join("cluster.yml"),
    )
    .unwrap();
    fs::copy(
        Path::new(ROOT).join("examples/ci/gitignore"),
        checkout.path().join(".gitignore"),
    )
    .unwrap();
    git(checkout.path(), &["add", "cluster.yml", ".gitignore"]);
    let bin_dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(bin(), bin_dir.path().join("atrest")).unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let plan_script = run_of("plan");
    let lines: Vec<&str> = plan_script
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("atrest ") && l.contains(" plan --offline"))
        .collect();
    assert_eq!(lines.len(), 2, "a text and a JSON plan");
    for line in lines {
        let out = std::process::Command::new("sh")
            .args(["-c", line])
            .current_dir(checkout.path())
            .env("PATH", &path)
            .env("RUNNER_TEMP", runner_temp.path())
            .env("HOME", checkout.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env_remove("RKE_CONFIG")
            .output()
            .unwrap();
        let expected = if line.contains("--detailed-exitcode") {
            2
        } else {
            0
        };
        assert_eq!(out.status.code(), Some(expected), "{line}: {out:?}");
        assert!(out.stderr.is_empty(), "{line}: no warning: {out:?}");
    }
    let plan_txt = fs::read_to_string(checkout.path().join("plan.txt")).unwrap();
    assert!(
        plan_txt.starts_with("Plan: enable on 1 controlplane(s)"),
        "{plan_txt}"
    );
    let plan_json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(checkout.path().join("plan.json")).unwrap())
            .unwrap();
    assert_eq!(plan_json["kind"], "Plan");
    assert_eq!(plan_json["hasChanges"], true);
    // Nothing but the plans was written to the checkout or beside the state.
    let mut files: Vec<String> = fs::read_dir(checkout.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [".git", ".gitignore", "cluster.yml", "plan.json", "plan.txt"]
    );
    assert_eq!(fs::read_dir(runner_temp.path()).unwrap().count(), 0);
}

/// A managed config deployed: the offline plan has nothing to do (exit 0), and RKE's `rotate_encryption_key:
/// true` in a pull request makes it a key rotation (exit 2) that never shows the key.
#[test]
fn rotate_encryption_key_turns_the_plan_into_a_rotation() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let secret = "c2VjcmV0IGlzIHNlY3VyZSwgb3IgaXMgaXQ/Pz8/Pz8=";
    let deployed = format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources:\n  - secrets\n  providers:\n  - aescbc:\n      keys:\n      - name: aescbckey-1\n        secret: {secret}\n  - identity: {{}}\n"
    );
    let state = serde_json::json!({
        "currentState": {"encryptionConfig": deployed},
        "desiredState": {"encryptionConfig": deployed},
    });
    fs::write(
        dir.path().join("cluster.rkestate"),
        serde_json::to_string_pretty(&state).unwrap(),
    )
    .unwrap();
    fs::set_permissions(
        dir.path().join("cluster.rkestate"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let managed = example("managed.yml");
    fs::write(dir.path().join("cluster.yml"), &managed).unwrap();
    atrest(dir.path())
        .args(["plan", "--offline", "--detailed-exitcode"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("Nothing to do"));

    fs::write(
        dir.path().join("cluster.yml"),
        format!("rotate_encryption_key: true\n{managed}"),
    )
    .unwrap();
    for format in ["text", "json"] {
        let out = atrest(dir.path())
            .args(["plan", "--offline", "--detailed-exitcode", "-o", format])
            .assert()
            .code(2);
        let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
        assert!(stdout.contains("rotate-key"), "{stdout}");
        assert!(stdout.contains("rotate_encryption_key: true"), "{stdout}");
        assert!(!stdout.contains(secret), "key material in the plan");
    }

    // With a custom config RKE refuses it, and so does atrest: a located error saying how to rotate instead.
    fs::write(
        dir.path().join("cluster.yml"),
        format!(
            "rotate_encryption_key: true\n{}",
            example("custom-kms-v2.yml")
        ),
    )
    .unwrap();
    atrest(dir.path())
        .args(["plan", "--offline", "--detailed-exitcode"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "cluster.yml:1:24: rotate_encryption_key: key rotation is not supported with a custom_config",
        ))
        .stderr(predicate::str::contains("rotate by editing custom_config"));
}
