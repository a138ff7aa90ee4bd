//! atrest killed (SIGKILL) at every kill point of enable, rotate-key and disable (src/kill_points.rs: each step
//! boundary, each node of a rolling deploy, each step of a container recreate, half-way through a rewrite), then
//! a rerun: it resumes from what was saved and completes, with every object byte-identical and verified in etcd;
//! at `-vvv` and `RUST_LOG=trace` no key or Secret value is printed. Also Ctrl-C, the stepwise verbs and two runs at
//! once. 3-node testbed, 1,000 secrets.
//!
//!     cargo test --features atrest/kill-points --test e2e_resume -- --nocapture      (as root; scripts/test does)

mod flows_common;

use flows_common::*;
use std::time::{Duration, Instant};

/// One kill point of a run: its name (`kill_points`), and whether it comes right after a transition was recorded
/// as complete (no record is left there).
struct KillPoint {
    name: String,
    ends_transition: bool,
}

/// The kill points a run of `plan` passes, in order: inside every deploy (for the next node the rerun touches:
/// each step of a container recreate, or the file written and the server ready for a restart, then the node
/// recorded as done), half-way through every rewrite, and at the end of every step (`step:<phase>:<action>`).
fn kill_points_of(plan: &serde_json::Value) -> Vec<KillPoint> {
    let point = |name: String| KillPoint {
        name,
        ends_transition: false,
    };
    let mut points = Vec::new();
    for step in plan["steps"].as_array().expect("plan steps") {
        let phase = step["phase"].as_str().expect("phase");
        let action = &step["action"];
        let name = action["action"].as_str().expect("action");
        match name {
            "deploy" if action["reload"].as_array().is_some_and(|r| !r.is_empty()) => {
                panic!("reload deploys have no kill points yet: {step}")
            }
            "deploy" => {
                let inside: &[&str] = if action["flag"] == "keep" {
                    &["node:file-written", "node:ready"]
                } else {
                    &[
                        "recreate:renamed",
                        "recreate:stopped",
                        "recreate:created",
                        "node:ready",
                    ]
                };
                points.extend(inside.iter().map(|p| point(p.to_string())));
                points.push(point(format!("deploy-node:{phase}")));
            }
            "rewrite" => {
                for target in action["resources"].as_array().expect("rewrite resources") {
                    let resource = target["resource"].as_str().expect("resource");
                    points.push(point(format!("rewrite-object:{resource}")));
                }
            }
            _ => {}
        }
        points.push(KillPoint {
            name: format!("step:{phase}:{name}"),
            ends_transition: action["complete"] == true,
        });
    }
    points
}

/// Everything the runs of a test printed (for the check that no key or Secret value was among it).
#[derive(Default)]
struct Transcript(String);

impl Transcript {
    fn add(&mut self, out: &std::process::Output) {
        self.0.push_str(&String::from_utf8_lossy(&out.stdout));
        self.0.push_str(&String::from_utf8_lossy(&out.stderr));
    }
}

/// `atrest -vvv <args>` with `RUST_LOG=trace` (every log line a user can turn on), killed at the
/// `skip`+1-th pass through kill point `point`.
fn run_killed(b: &Bench, args: &[&str], point: &str, skip: usize) -> std::process::Output {
    use std::os::unix::process::ExitStatusExt;
    let action = if skip == 0 {
        "return".to_string()
    } else {
        format!("{skip}*off->return")
    };
    let verbose: Vec<&str> = std::iter::once("-vvv")
        .chain(args.iter().copied())
        .collect();
    let started = Instant::now();
    let out = b
        .command(&verbose)
        .env("RUST_LOG", "trace")
        .env("FAILPOINTS", format!("{point}={action}"))
        .output()
        .expect("run atrest");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(9), // SIGKILL
        "atrest {} was to die at kill point {point} but ended with {} (a binary without kill points? build with \
         --features atrest/kill-points, as scripts/test does):\n{}",
        args.join(" "),
        out.status,
        last_lines(&stderr, 30)
    );
    assert!(
        stderr.contains(&format!("kill point {point}: SIGKILL")),
        "killed, but not at {point}"
    );
    eprintln!(
        "killed atrest {} at {point} after {:.1} s",
        args.join(" "),
        started.elapsed().as_secs_f64()
    );
    out
}

/// The last `n` lines of `text`, in order.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Kills `first` (a command that starts a transition) right after its snapshot, then
/// [`kill_at_every_point_of_the_plan`]. Returns the points hit.
fn kill_through(b: &Bench, first: &[&str], transcript: &mut Transcript) -> Vec<String> {
    transcript.add(&run_killed(b, first, "step:prepare:snapshot", 0));
    let mut hit = vec!["step:prepare:snapshot".to_string()];
    hit.extend(kill_at_every_point_of_the_plan(b, transcript));
    hit
}

/// Reruns `up --yes` killed at every kill point of the pending plan in turn, then lets `up` finish. After each
/// kill a transition is still recorded (except right after one was recorded complete). Returns the points hit.
fn kill_at_every_point_of_the_plan(b: &Bench, transcript: &mut Transcript) -> Vec<String> {
    let out = b
        .command(&["plan", "--detailed-exitcode", "-o", "json"])
        .output()
        .expect("plan");
    assert_eq!(out.status.code(), Some(2), "a transition is pending");
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
    let mut hit = Vec::new();
    for point in kill_points_of(&plan["plan"]) {
        transcript.add(&run_killed(b, &["up", "--yes"], &point.name, 0));
        let recorded = !b.records()["transition"].is_null();
        assert_eq!(
            recorded, !point.ends_transition,
            "after a kill at {}: a transition recorded: {recorded}",
            point.name
        );
        hit.push(point.name);
    }
    let out = b.run(&["-vvv", "up", "--yes"]);
    transcript.add(&out);
    assert!(out.status.success(), "the last rerun finishes");
    hit
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

#[test]
fn every_kill_point_of_enable_rotate_and_disable_resumes_and_loses_nothing() {
    let Some(b) = bench() else { return };
    let mut transcript = Transcript::default();
    let mut keys = std::collections::BTreeSet::new();
    let mut hit = Vec::new();

    // Enable, then a rotation: each killed at every point of its plan, each kill followed by a rerun.
    b.set_encryption(true, None);
    hit.extend(kill_through(&b, &["up", "--yes"], &mut transcript));
    assert_complete_and_intact(&b);
    keys.extend(keys_of(&b));
    hit.extend(kill_through(
        &b,
        &["encrypt", "rotate-key", "--yes"],
        &mut transcript,
    ));
    assert_complete_and_intact(&b);
    keys.extend(keys_of(&b));

    // A different desire queued behind an unfinished rotation (killed in its rotate deploy, while the recorded
    // stage is still `prepare`): the rotation is finished first, then disabled, killed at every point of both.
    transcript.add(&run_killed(
        &b,
        &["encrypt", "rotate-key", "--yes"],
        "deploy-node:rotate",
        0,
    ));
    keys.extend(keys_of(&b));
    b.set_encryption(false, None);
    let plan = b.ok(&["plan"]);
    assert!(plan.contains("finished first"), "{plan}");
    assert!(plan.contains("Transition 2 (disable)"), "{plan}");
    hit.extend(kill_at_every_point_of_the_plan(&b, &mut transcript));
    let status = b.status();
    assert_eq!(status["encryptionStatus"], "Disabled");
    all_on(&b.census(), "secrets", "identity", SECRETS);
    b.ok(&["encrypt", "verify"]);
    b.verify_seed();
    keys.extend(keys_of(&b));

    let distinct: std::collections::BTreeSet<&String> = hit.iter().collect();
    eprintln!(
        "kill points hit: {} kills at {} distinct points: {distinct:?}",
        hit.len(),
        distinct.len()
    );
    // Every kind of kill point was hit at least once, in each of its phases.
    for expected in [
        "recreate:renamed",
        "recreate:stopped",
        "recreate:created",
        "node:file-written",
        "node:ready",
        "deploy-node:prepare",
        "deploy-node:rotate",
        "deploy-node:finish",
        "rewrite-object:secrets",
        "step:prepare:snapshot",
        "step:prepare:deploy",
        "step:rotate:deploy",
        "step:reencrypt:persist_stage",
        "step:reencrypt:rewrite",
        "step:verify:verify",
        "step:finish:deploy",
        "step:finish:archive",
        "step:finish:persist_stage",
    ] {
        assert!(
            hit.iter().any(|h| h == expected),
            "kill point {expected} never hit: {distinct:?}"
        );
    }

    // R6: at -vvv and RUST_LOG=trace, no key and no Secret value was printed, and atrest's files are private.
    no_secret_printed(&b, &transcript, &keys);
    files_are_private(&b);
}

/// No key (as base64 or as the hex of its bytes) and no seeded Secret value (as stored, or base64 as the API
/// carries it) appears in `transcript`.
fn no_secret_printed(
    b: &Bench,
    transcript: &Transcript,
    keys: &std::collections::BTreeSet<String>,
) {
    use base64::Engine;
    let text = &transcript.0;
    assert!(
        keys.len() >= 3,
        "keys seen: {} (enable, rotation, the queued rotation)",
        keys.len()
    );
    for key in keys {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(key)
            .expect("a key is base64");
        assert!(!text.contains(key.as_str()), "a key was printed");
        assert!(
            !text.contains(&hex::encode(&raw)),
            "a key was printed in hex"
        );
    }
    let sampled: Vec<usize> = (0..b.secrets).step_by(25).collect();
    for &i in &sampled {
        let value = testbed::harness::seed::payload(&format!("seed-secret-{i:06}"), SIZE);
        let encoded = base64::engine::general_purpose::STANDARD.encode(&value);
        assert!(
            !text.contains(&value[..48]),
            "Secret seed-secret-{i:06}'s value was printed"
        );
        assert!(
            !text.contains(&encoded[..48]),
            "Secret seed-secret-{i:06}'s value was printed (base64)"
        );
    }
    eprintln!(
        "no key ({}) and no Secret value ({} checked) in {} bytes of output",
        keys.len(),
        sampled.len(),
        text.len()
    );
}

/// atrest's own files are 0600 (its snapshot directory 0700), the node files 0600 and root's.
fn files_are_private(b: &Bench) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mode = |p: &std::path::Path| {
        std::fs::metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o777
    };
    let state = b.tb.rkestate();
    for file in [state.clone(), b.records_path()] {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    let snapshots = state.with_extension("snapshots");
    assert_eq!(mode(&snapshots), 0o700, "{}", snapshots.display());
    for entry in std::fs::read_dir(&snapshots).expect("snapshots") {
        let path = entry.expect("entry").path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
    for node in b.tb.nodes() {
        let file = node.kubernetes_dir().join("ssl/encryption.yaml");
        if let Ok(meta) = std::fs::metadata(&file) {
            assert_eq!(
                meta.permissions().mode() & 0o777,
                0o600,
                "{}",
                file.display()
            );
            assert_eq!(meta.uid(), 0, "{} is root's", file.display());
        }
    }
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

/// R2 of docs/reliability.md: a controlplane's SSH connections are cut in the middle of a rolling deploy (every
/// sshd session of node 2 killed while the run waits between node 1 and node 2). The run stops with an error
/// naming that node, every object stays readable, and the rerun completes.
#[test]
fn a_node_cut_off_mid_deploy_stops_the_run_naming_it_and_the_rerun_completes() {
    use std::io::{BufRead, BufReader};
    let Some(b) = bench_seeded(200, 20) else {
        return;
    };
    b.set_encryption(true, None);
    let mut run = b
        .command(&["up", "--yes"])
        .env("FAILPOINTS", "deploy-node:prepare=return(5)")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn atrest");
    let mut text = String::new();
    let mut cut = 0;
    for line in BufReader::new(run.stderr.take().expect("stderr")).lines() {
        let line = line.expect("stderr line");
        eprintln!("  | {line}");
        if line.contains("kill point deploy-node:prepare: stalled") {
            let sessions =
                b.tb.ssh_sessions(&b.tb.nodes()[1])
                    .expect("node 2's sessions");
            assert!(!sessions.is_empty(), "atrest holds a session to node 2");
            for pid in &sessions {
                let killed = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status()
                    .expect("kill");
                assert!(killed.success(), "kill -9 {pid}");
            }
            cut = sessions.len();
            eprintln!("cut {cut} SSH session(s) of node 2");
        }
        text.push_str(&line);
        text.push('\n');
    }
    let status = run.wait().expect("wait");
    assert!(cut > 0, "the stall never came:\n{text}");
    assert_eq!(status.code(), Some(1), "{text}");
    let node2 = b.tb.nodes()[1].address.to_string();
    let error = error_of(&text);
    assert!(
        error.contains(&format!(
            "{node2} (node2): the SSH connection to it was lost"
        )),
        "the error does not say that node 2 ({node2}) was cut off:\n{error}"
    );
    // Nothing unreadable: node 1 already runs the new config, nodes 2 and 3 the old one, all serve every object.
    b.verify_seed();
    let records = b.records();
    assert_eq!(records["transition"]["kind"], "enable", "{records}");
    b.ok(&["up", "--yes"]);
    assert_complete_and_intact(&b);
}

/// A disable killed in the middle of node 3's recreate in its finish deploy (the file already removed, the old
/// container renamed and stopped); the rerun puts that container back (its flag names the removed file: it
/// cannot start) and is itself killed before it changes node 3 again. The next rerun still knows node 3 is
/// half-changed by atrest (the records say so) and finishes it, instead of refusing it as "not healthy before
/// the change".
#[test]
fn a_container_put_back_that_cannot_start_is_finished_by_a_later_rerun() {
    let Some(b) = bench_seeded(200, 20) else {
        return;
    };
    b.set_encryption(true, None);
    b.ok(&["up", "--yes"]);
    b.set_encryption(false, None);
    // No deploy of a disable before its finish recreates a container: the third recreate is node 3's.
    run_killed(&b, &["up", "--yes"], "recreate:stopped", 2);
    let node3 = b.tb.nodes()[2].clone();
    let left = b.containers(&node3);
    assert!(
        left.lines().any(|l| l.starts_with("old-kube-apiserver ")),
        "node 3 is left mid-recreate: {left}"
    );
    let out = run_killed(&b, &["up", "--yes"], "node:file-written", 0);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("put back the previous"),
        "the rerun put node 3's container back:\n{}",
        last_lines(&stderr, 30)
    );
    assert_eq!(
        b.records()["putBack"],
        serde_json::json!([node3.address.to_string()]),
        "the records name the node put back"
    );
    let out = b.run(&["encrypt", "status", "-o", "json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(
        status["putBack"],
        serde_json::json!([node3.address.to_string()]),
        "status names the node put back: {status}"
    );
    assert!(
        status["attention"]
            .as_array()
            .is_some_and(|a| a.iter().any(|f| f["reason"] == "putBack")),
        "status says the node needs the rerun: {status}"
    );
    let out = b.run(&["up", "--yes"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the next rerun finishes node 3:\n{}",
        last_lines(&stderr, 30)
    );
    assert!(
        stderr.contains("finishing the change an interrupted run began here"),
        "{}",
        last_lines(&stderr, 30)
    );
    assert!(b.records()["putBack"].is_null(), "no node is left marked");
    assert_eq!(b.status()["encryptionStatus"], "Disabled");
    assert_complete_and_intact(&b);
}

/// `docker <args>` on node `n`, required to succeed; its stdout, trimmed.
fn docker_on(b: &Bench, n: &testbed::harness::Node, args: &[&str]) -> String {
    let out = b.tb.docker(n).args(args).output().expect("docker");
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A recreate interrupted once its new kube-apiserver was ready, and then both containers running, as a Docker
/// engine that was killed and came back leaves them (R2 found it): the old one holds port 6443 and the new one
/// restarts in a loop, unable to bind, with Docker's back-off growing. The recovery must not take the old one's
/// answer for the new one's: it stops the old one first and keeps the new one only once that one serves, and no
/// longer marks that node as put back; the rerun completes.
#[test]
fn a_leftover_whose_old_container_holds_the_port_is_judged_by_the_new_one() {
    let Some(b) = bench_seeded(200, 20) else {
        return;
    };
    b.set_encryption(true, None);
    // The enable's first deploy recreates each node; the first `node:ready` is node 1's, old container stopped.
    run_killed(&b, &["up", "--yes"], "node:ready", 0);
    let node1 = b.tb.nodes()[0].clone();
    docker_on(&b, &node1, &["stop", "kube-apiserver"]);
    docker_on(&b, &node1, &["start", "old-kube-apiserver"]);
    b.wait_serving(&node1);
    docker_on(&b, &node1, &["start", "kube-apiserver"]);
    // Until Docker waits half a minute or more between the new one's attempts (restart 9: 25.6 s, then 51.2 s).
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let restarts: u32 = docker_on(
            &b,
            &node1,
            &["inspect", "-f", "{{.RestartCount}}", "kube-apiserver"],
        )
        .parse()
        .expect("restart count");
        if restarts >= 9 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new kube-apiserver restarted only {restarts} times: {}",
            b.containers(&node1)
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    // The rerun keeps node 1's new container, then is killed as it writes node 1's file again, before its deploy
    // records node 1 (which would drop the mark anyway): node 1 has its change, so it must not stay marked as put
    // back, or the next run would take its healthy server for one still to be settled.
    let out = run_killed(&b, &["up", "--yes"], "node:file-written", 0);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the new kube-apiserver from the interrupted run is ready"),
        "the new container was kept:\n{}",
        last_lines(&stderr, 30)
    );
    assert!(
        b.records()["putBack"].is_null(),
        "a node whose new container was kept is not marked put back: putBack {}",
        b.records()["putBack"]
    );
    let out = b.run(&["up", "--yes"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the rerun completes:\n{}",
        last_lines(&stderr, 30)
    );
    assert_complete_and_intact(&b);
}
