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

fn assert_complete_and_intact(b: &Bench) {
    let state = b.state();
    assert!(
        state["atrest"]["transition"].is_null(),
        "transition finished: {}",
        state["atrest"]
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
            let after = b.state();
            assert_eq!(
                after["atrest"]["transition"]["kind"], "rotate-key",
                "the interrupted rotation is recorded"
            );
            // The rerun says it resumes and generates no other key.
            let plan = b.ok(&["plan"]);
            assert!(plan.contains("resum"), "{plan}");
            b.ok(&["up", "--yes"]);
            let done = b.state();
            assert_eq!(
                done["currentState"]["encryptionConfig"], after["atrest"]["transition"]["to"],
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
    b.ok(&["up", "--yes"]);

    // Out of order: refused, naming the stage.
    let refused = b.run(&["encrypt", "rotate", "--yes"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("stage start"));

    b.ok(&["encrypt", "prepare", "--yes"]);
    assert_eq!(b.status()["stage"], "prepare");
    assert_eq!(b.status()["hashesMatch"], true);
    b.verify_seed();
    b.ok(&["encrypt", "rotate", "--yes"]);
    assert_eq!(b.status()["stage"], "rotate");
    b.verify_seed();
    b.ok(&["encrypt", "reencrypt", "--yes"]);
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
