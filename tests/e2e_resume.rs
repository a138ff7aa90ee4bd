//! `kill -9` of atrest at every stage of a transition, then a rerun: it resumes from the recorded stage and
//! completes, with every object readable and verified in etcd. 3-node testbed, 1,000 secrets.
//!
//!     cargo build -p testbed && cargo test --test e2e_resume -- --nocapture      (as root)

mod flows_common;

use flows_common::*;
use std::time::{Duration, Instant};

/// Starts `args`, waits until the state records `stage` (then `delay` more), and SIGKILLs it. Returns whether
/// the kill happened before the run finished on its own.
fn kill_at(b: &Bench, args: &[&str], stage: &str, delay: Duration) -> bool {
    let mut child = b
        .command(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn atrest");
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            eprintln!(
                "atrest {} ended ({status}) before stage {stage} was seen",
                args.join(" ")
            );
            return false;
        }
        if b.stage().as_deref() == Some(stage) {
            std::thread::sleep(delay);
            let finished = child.try_wait().expect("wait").is_some();
            child.kill().expect("SIGKILL");
            let _ = child.wait();
            eprintln!(
                "killed atrest {} at stage {stage} (+{delay:?}) after {:.1} s",
                args.join(" "),
                started.elapsed().as_secs_f64()
            );
            return !finished;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "stage {stage} never came"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The exit status of `atrest args`.
fn code(b: &Bench, args: &[&str]) -> i32 {
    b.run(args).status.code().expect("exit status")
}

/// The reasons `encrypt status` gives for needing attention.
fn reasons(status: &serde_json::Value) -> Vec<String> {
    status["attention"]
        .as_array()
        .expect("attention")
        .iter()
        .map(|f| f["reason"].as_str().expect("reason").to_string())
        .collect()
}

fn assert_complete_and_intact(b: &Bench) {
    let state = b.state();
    let records = b.records();
    assert!(
        records["transition"].is_null(),
        "transition finished: {}",
        records["transition"]
    );
    assert_eq!(
        state["currentState"]["encryptionConfig"],
        state["desiredState"]["encryptionConfig"]
    );
    let status = b.status();
    assert_eq!(status["hashesMatch"], true);
    assert_eq!(status["stage"], "start");
    b.ok(&["encrypt", "verify"]);
    b.verify_seed();
}

#[test]
fn killed_runs_resume_from_their_stage_and_lose_nothing() {
    let Some(b) = bench() else { return };

    // Enable, killed while the first node is being recreated with the flag; the rerun finishes or undoes
    // that recreate and completes.
    b.set_encryption(true, None);
    assert!(kill_at(
        &b,
        &["up", "--yes"],
        "start",
        Duration::from_millis(1500)
    ));
    let status = b.run(&["encrypt", "status"]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("Transition: enable"));
    b.ok(&["up", "--yes"]);
    assert_complete_and_intact(&b);

    // A rotation killed at each later stage, each time resumed by `up`.
    let mut killed = Vec::new();
    for (stage, delay) in [
        ("prepare", Duration::from_millis(800)),
        ("rotate", Duration::ZERO),
        ("reencrypt_request", Duration::from_millis(1000)),
        ("reencrypt_active", Duration::ZERO),
        ("reencrypt_finished", Duration::from_millis(300)),
    ] {
        let before = b.state();
        if kill_at(&b, &["encrypt", "rotate-key", "--yes"], stage, delay) {
            killed.push(stage);
            let after = b.records();
            assert_eq!(
                after["transition"]["kind"], "rotate-key",
                "the interrupted rotation is recorded"
            );
            // The rerun says it resumes and generates no other key.
            let plan = b.ok(&["plan"]);
            assert!(plan.contains("resum"), "{plan}");
            b.ok(&["up", "--yes"]);
            let done = b.state();
            assert_eq!(
                done["currentState"]["encryptionConfig"], after["transition"]["to"],
                "the resumed run finished the recorded rotation"
            );
        } else {
            assert_ne!(before["currentState"], b.state()["currentState"]);
        }
        assert_complete_and_intact(&b);
    }
    eprintln!("killed at: {killed:?}");
    // `rotate` and `reencrypt_active` are recorded for moments only (the next step starts at once), so a kill
    // there is best effort; the long stages must all have been interrupted.
    assert!(
        ["prepare", "reencrypt_request"]
            .iter()
            .all(|s| killed.contains(s)),
        "the long stages were all interrupted: {killed:?}"
    );

    // A different desire queued behind an unfinished rotation (killed during its rotate deploy, which runs
    // while the recorded stage is still `prepare`): the rotation is finished first, then disable.
    assert!(kill_at(
        &b,
        &["encrypt", "rotate-key", "--yes"],
        "prepare",
        Duration::from_millis(800)
    ));
    b.set_encryption(false, None);
    let plan = b.ok(&["plan"]);
    assert!(plan.contains("finished first"), "{plan}");
    assert!(plan.contains("Transition 2 (disable)"), "{plan}");
    b.ok(&["up", "--yes"]);
    let status = b.status();
    assert_eq!(status["encryptionStatus"], "Disabled");
    all_on(&b.census(), "secrets", "identity", SECRETS);
    b.ok(&["encrypt", "verify"]);
    b.verify_seed();
}

#[test]
fn stepwise_rotation_follows_k3s_stages() {
    let Some(b) = bench() else { return };
    b.set_encryption(true, None);
    assert_eq!(code(&b, &["plan", "--detailed-exitcode"]), 2);
    // Enabling is pending: `plan` and `up --dry-run` change no node file, container, state or snapshot.
    b.changes_nothing(&["plan"]);
    b.changes_nothing(&["up", "--dry-run", "--yes"]);
    b.ok(&["up", "--yes"]);
    // In sync: the exit codes a pipeline branches on are all 0.
    assert_eq!(code(&b, &["plan", "--detailed-exitcode"]), 0);
    assert_eq!(code(&b, &["encrypt", "status", "--detailed-exitcode"]), 0);
    assert_eq!(code(&b, &["encrypt", "verify", "--detailed-exitcode"]), 0);
    assert_eq!(b.status()["needsAttention"], false);

    // Out of order: refused, naming the stage.
    let refused = b.run(&["encrypt", "rotate", "--yes"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("stage start"));

    b.ok(&["encrypt", "prepare", "--yes"]);
    assert_eq!(b.status()["stage"], "prepare");
    assert_eq!(b.status()["hashesMatch"], true);
    // A stage in progress needs attention; every object is still on the write key.
    assert_eq!(code(&b, &["encrypt", "status", "--detailed-exitcode"]), 2);
    assert_eq!(reasons(&b.status()), ["stageInProgress"]);
    assert_eq!(code(&b, &["encrypt", "verify", "--detailed-exitcode"]), 0);
    b.verify_seed();
    b.ok(&["encrypt", "rotate", "--yes"]);
    assert_eq!(b.status()["stage"], "rotate");
    // The new key writes, the objects are on the old one: verify says so with 2 (1 without the flag).
    assert_eq!(reasons(&b.status()), ["stageInProgress", "notOnActiveKey"]);
    assert_eq!(code(&b, &["encrypt", "verify", "--detailed-exitcode"]), 2);
    assert_eq!(code(&b, &["encrypt", "verify"]), 1);
    let verify: serde_json::Value =
        serde_json::from_slice(&b.run(&["encrypt", "verify", "-o", "json"]).stdout).unwrap();
    assert_eq!(verify["kind"], "VerifyReport");
    assert_eq!(verify["verified"], false);
    assert_eq!(verify["resources"][0]["notOnWrite"], SECRETS as u64);
    b.verify_seed();
    b.ok(&["encrypt", "reencrypt", "--yes"]);
    assert_eq!(code(&b, &["encrypt", "status", "--detailed-exitcode"]), 0);
    assert_eq!(code(&b, &["encrypt", "verify", "--detailed-exitcode"]), 0);
    let status = b.status();
    assert_eq!(status["stage"], "reencrypt_finished");
    assert_eq!(
        status["keys"].as_array().unwrap().len(),
        2,
        "one aescbc key plus identity: {status}"
    );
    b.ok(&["encrypt", "verify"]);
    b.verify_seed();
    // `up` has nothing left to do; a new rotation starts from reencrypt_finished.
    assert!(b.ok(&["up", "--yes"]).contains("Nothing to do"));
    b.ok(&["encrypt", "rotate-keys", "--yes"]);
    assert_eq!(b.status()["stage"], "start");
    b.ok(&["encrypt", "verify"]);
    b.verify_seed();
}

/// Starts `args`, and when a stderr line contains `trigger` (and `ready` returns for that line) sends SIGINT;
/// with `presses` > 1, the others once atrest has said it was interrupted. Returns the exit status, the whole
/// stderr, and how long the run took to end after the first SIGINT.
fn interrupt_at(
    b: &Bench,
    args: &[&str],
    trigger: &str,
    ready: impl Fn(&str),
    presses: usize,
) -> (std::process::ExitStatus, String, Duration) {
    use std::io::{BufRead, BufReader};
    let mut child = b
        .command(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn atrest");
    let pid = child.id().to_string();
    let stderr = child.stderr.take().expect("stderr");
    let mut text = String::new();
    let mut signalled: Option<Instant> = None;
    let mut presses_left = presses;
    let press = || {
        let sent = std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .expect("kill -INT");
        assert!(sent.success(), "kill -INT {pid}");
    };
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("stderr line");
        eprintln!("  | {line}");
        text.push_str(&line);
        text.push('\n');
        if signalled.is_none() && line.contains(trigger) {
            ready(&line);
            press();
            presses_left -= 1;
            signalled = Some(Instant::now());
        }
        // Further presses once the first was seen, as a person would: signals sent back to back may be
        // delivered as one.
        if presses_left > 0 && line.starts_with("interrupted: finishing") {
            press();
            presses_left -= 1;
        }
    }
    let status = child.wait().expect("wait");
    let signalled = signalled.unwrap_or_else(|| panic!("{trigger:?} never appeared:\n{text}"));
    (status, text, signalled.elapsed())
}

#[test]
fn ctrl_c_stops_at_a_safe_point_and_the_rerun_finishes() {
    let Some(b) = bench() else { return };
    b.set_encryption(true, None);
    b.ok(&["up", "--yes"]);
    let rotate = ["encrypt", "rotate-key", "--yes"];

    // During the rewrite, once the first secret is on the new key: the writes in flight finish, the run says
    // how far it got and exits 130.
    let first_secret = first_key(&b, "/registry/secrets/");
    let on_new_key = |line: &str| {
        let key_name = line
            .split_once("→ aescbc:")
            .map(|(_, k)| k.trim())
            .unwrap_or_else(|| panic!("no aescbc key in {line:?}"));
        let started = Instant::now();
        while !b.etcd_prefix(&first_secret).contains(key_name) {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{first_secret} never on {key_name}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let (status, text, after) = interrupt_at(&b, &rotate, ": rewriting secrets", on_new_key, 1);
    assert_eq!(status.code(), Some(130), "{text}");
    let done: u64 = text
        .split_once("interrupted by Ctrl-C during the rewrite of secrets (")
        .and_then(|(_, rest)| rest.split_once(' '))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no rewrite interruption in:\n{text}"));
    assert!(
        done > 0 && done < SECRETS as u64,
        "stopped part way: {done} of {SECRETS}"
    );
    // Stopped at a safe point, not after finishing the rewrite: `done` < SECRETS above, and verify (below)
    // finds secrets still on the old key. No clock: how long the writes in flight take is the machine's business.
    eprintln!("stopped {:.1} s after Ctrl-C", after.as_secs_f64());
    assert!(!b.records()["transition"].is_null());
    verify_fails_half_way(&b, done);
    // A transition is pending (the interrupted rotation): `plan` and `up --dry-run` show it and change nothing.
    let plan = b.changes_nothing(&["plan"]);
    assert!(plan.contains("resum"), "{plan}");
    let dry = b.changes_nothing(&["up", "--dry-run"]);
    assert!(dry.contains("resum"), "{dry}");
    // The check bites: `encrypt verify` records its census in the records file, and the fingerprint sees it.
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        b.changes_nothing(&["encrypt", "verify", "--detailed-exitcode"])
    }));
    assert!(
        caught.is_err(),
        "the fingerprint missed the census verify recorded"
    );
    b.verify_seed();
    b.ok(&["up", "--yes"]);
    assert_complete_and_intact(&b);

    // During a rolling restart: the node being restarted is finished, the others are left for the rerun.
    let (status, text, after) = interrupt_at(&b, &rotate, ": deploying", |_| {}, 1);
    assert_eq!(status.code(), Some(130), "{text}");
    assert!(
        text.contains("interrupted by Ctrl-C during the rolling restart, after 1 of 3 node(s)"),
        "{text}"
    );
    // Stopped after the node being restarted (the message above), whatever that took.
    eprintln!("stopped {:.1} s after Ctrl-C", after.as_secs_f64());
    let status = b.status();
    assert!(status["runInProgress"].is_null(), "{status}");
    let done = &status["transition"]["deploying"]["nodesDone"];
    assert_eq!(done.as_array().map(Vec::len), Some(1), "{status}");
    b.verify_seed();
    // The rerun leaves the finished node alone and continues with the other two.
    let rerun = b.ok(&["up", "--yes"]);
    let first = done[0].as_str().unwrap_or_default();
    assert!(
        rerun.contains(&format!(
            "deploy already finished on {first}; it continues on "
        )),
        "{rerun}"
    );
    assert_complete_and_intact(&b);

    // Twice: out at once, as after a crash; the rerun still finishes.
    let (status, text, _) = interrupt_at(
        &b,
        &rotate,
        ": deploying",
        |_| {
            // While the run holds the lock, status says so (and does not disturb it).
            let running = b.status()["runInProgress"].as_u64();
            assert!(running.is_some_and(|pid| pid > 0), "{running:?}");
        },
        2,
    );
    assert_eq!(status.code(), Some(130), "{text}");
    assert!(text.contains("stopped at once"), "{text}");
    b.ok(&["up", "--yes"]);
    assert_complete_and_intact(&b);
}

/// The first etcd key under `prefix`.
fn first_key(b: &Bench, prefix: &str) -> String {
    let out =
        b.tb.etcdctl()
            .args(["get", prefix, "--prefix", "--keys-only", "--limit=1"])
            .output()
            .expect("etcdctl");
    assert!(out.status.success(), "etcdctl get {prefix}");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .next()
        .filter(|k| k.starts_with(prefix))
        .unwrap_or_else(|| panic!("no key under {prefix}"))
        .to_string()
}

/// After a rewrite stopped half-way (`done` objects rewritten): `encrypt verify` exits 1 (2 with
/// `--detailed-exitcode`), says how many secrets are on which key and names the ones not on the write key.
fn verify_fails_half_way(b: &Bench, done: u64) {
    let out = b.run(&["encrypt", "verify"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "verify after a half-way rewrite"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let report = b.run(&["encrypt", "verify", "-o", "json", "--detailed-exitcode"]);
    assert_eq!(report.status.code(), Some(2));
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).expect("verify JSON");
    assert_eq!(report["verified"], false, "{report}");
    let secrets = &report["resources"][0];
    assert_eq!(secrets["resource"], "secrets", "{report}");
    let write = secrets["write"].as_str().expect("write label").to_string();
    let by_key: std::collections::BTreeMap<String, u64> =
        serde_json::from_value(secrets["byKey"].clone()).expect("byKey");
    let on_write = by_key.get(&write).copied().unwrap_or(0);
    let (old, on_old) = by_key
        .iter()
        .find(|(l, _)| **l != write)
        .map(|(l, n)| (l.clone(), *n))
        .unwrap_or_else(|| panic!("no secrets left on the old key: {by_key:?}"));
    assert_eq!(by_key.len(), 2, "the old and the new key only: {by_key:?}");
    assert!(
        old.starts_with("aescbc:") && write.starts_with("aescbc:"),
        "{by_key:?}"
    );
    assert_eq!(on_write + on_old, SECRETS as u64, "{by_key:?}");
    assert!(
        on_write >= done && on_old > 0,
        "{done} rewritten: {by_key:?}"
    );
    assert_eq!(secrets["notOnWrite"], on_old, "{report}");
    assert!(
        text.contains(&format!(
            "FAIL  secrets: {on_old} of {SECRETS} objects not on the write {write} ({on_old} on {old})"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("      not on {write}: /registry/secrets/")),
        "{text}"
    );
    assert!(text.contains("NOT verified"), "{text}");
}

/// A second checkout of the same cluster (cluster.yml, state and records copied elsewhere), as a CI job beside an
/// operator's laptop.
fn second_checkout(b: &Bench) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let from = b.tb.cluster_yml();
    let from_dir = from.parent().expect("cluster.yml's dir");
    for name in [
        "cluster.yml",
        "cluster.rkestate",
        "cluster.atreststate",
        "kube_config_cluster.yml",
    ] {
        let source = from_dir.join(name);
        if source.exists() {
            std::fs::copy(&source, dir.path().join(name)).expect("copy the checkout");
        }
    }
    dir
}

#[test]
fn two_runs_never_interleave_and_a_node_file_written_meanwhile_is_never_overwritten() {
    use std::io::{BufRead, BufReader};
    let Some(b) = bench_seeded(200, 20) else {
        return;
    };
    b.set_encryption(true, None);
    let node_file = |i: usize| b.tb.nodes()[i].kubernetes_dir().join("ssl/encryption.yaml");
    // Another tool's file, with a key of its own that atrest has never seen.
    let theirs_key = random_key();
    let theirs = format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources:\n  - \
         secrets\n  providers:\n  - aescbc:\n      keys:\n      - name: theirs\n        secret: {theirs_key}\n  - \
         identity: {{}}\n"
    );
    let checkout = second_checkout(&b);

    // Run A enables encryption. Once it is deploying: the third node's file is written by someone else, and a
    // run from the second checkout is refused, naming A.
    let mut a = b
        .command(&["up", "--yes"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn atrest");
    let a_pid = a.id();
    let mut a_text = String::new();
    let mut refused = None;
    for line in BufReader::new(a.stderr.take().expect("stderr")).lines() {
        let line = line.expect("stderr line");
        eprintln!("  A| {line}");
        a_text.push_str(&line);
        a_text.push('\n');
        if refused.is_none() && line.contains(": deploying") {
            std::fs::write(node_file(2), &theirs).expect("the other writer");
            let before = std::fs::read(checkout.path().join("cluster.rkestate")).expect("state");
            let out = std::process::Command::new(&b.bin)
                .arg("--config")
                .arg(checkout.path().join("cluster.yml"))
                .arg("--known-hosts")
                .arg(b.tb.known_hosts())
                .args(["up", "--yes"])
                .env_remove("RKE_CONFIG")
                .stdin(std::process::Stdio::null())
                .output()
                .expect("run B");
            let after = std::fs::read(checkout.path().join("cluster.rkestate")).expect("state");
            assert_eq!(before, after, "the refused run changed its state");
            refused = Some(out);
            // status names the holder too (PARTIAL, exit 3, while A has a node's container half-way recreated).
            let out = b.run(&["encrypt", "status", "-o", "json"]);
            assert!(
                matches!(out.status.code(), Some(0 | 3)),
                "status during A's run: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let status: serde_json::Value =
                serde_json::from_slice(&out.stdout).expect("status JSON");
            let lock = status["clusterLock"].clone();
            assert_eq!(lock["held"], true, "{lock}");
            assert_eq!(lock["pid"], a_pid, "{lock}");
            assert_eq!(lock["command"], "up", "{lock}");
        }
    }
    let a_status = a.wait().expect("wait A");
    let b_out = refused.unwrap_or_else(|| panic!("A never deployed:\n{a_text}"));
    let b_err = String::from_utf8_lossy(&b_out.stderr);
    assert_eq!(b_out.status.code(), Some(1), "B: {b_err}");
    let a_state = std::fs::canonicalize(b.tb.rkestate()).expect("state path");
    for part in [
        "another atrest run holds the cluster lock".to_string(),
        format!("pid {a_pid}"),
        a_state.display().to_string(),
        "Nothing was changed".to_string(),
    ] {
        assert!(
            b_err.contains(&part),
            "{part:?} not in B's refusal:\n{b_err}"
        );
    }

    // A stopped at the third node and left the other writer's file as it was.
    assert_eq!(a_status.code(), Some(1), "{a_text}");
    assert!(
        a_text.contains("changed since this run read it"),
        "A did not name the changed file:\n{a_text}"
    );
    assert_eq!(
        std::fs::read_to_string(node_file(2)).expect("node 3's file"),
        theirs,
        "A overwrote the other writer's file"
    );
    assert!(
        b.etcd_prefix(&format!("/atrest{}/lock", "/registry"))
            .is_empty(),
        "A left its lock behind"
    );

    // The rerun sees the file as drift: it archives the key that file held, then replaces it and finishes.
    let out = b.run(&["up", "--yes"]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("archived aescbc:theirs"), "{text}");
    let archive = b.records()["archive"].clone();
    let kept = archive
        .as_array()
        .expect("archive")
        .iter()
        .find(|k| k["name"] == "theirs")
        .unwrap_or_else(|| panic!("the other writer's key is not archived: {archive}"));
    assert_eq!(kept["secret"].as_str(), Some(theirs_key.as_str()));
    assert_eq!(b.status()["clusterLock"]["held"], false);
    let write = format!("aescbc:{}", write_key_name(&b.state()));
    all_on(&b.census(), "secrets", &write, b.secrets);
    b.ok(&["encrypt", "verify"]);
    b.verify_seed();
}
