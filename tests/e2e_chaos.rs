//! The reliability suite's random-moment parts (docs/reliability.md), on the 3-node RKE-shaped testbed.
//!
//! R1 at random moments: atrest killed with SIGKILL from outside, at a moment drawn at random, during every kind of
//! change (enable, rotate-key, managed → custom, a custom edit, custom → managed, disable); each rerun may be
//! killed again; then a rerun finishes. After every change: the transition is closed, every node's file matches,
//! every object is on the final key in etcd and reads back byte-identical, and no key that ever encrypted data is
//! missing from the state or the archive. The kill-point test (`e2e_resume.rs`) hits every named point once; this
//! one lands where no point is (in the middle of an SSH exchange, a Docker call, a write to the state file).
//!
//! R2 at random moments: a node lost during a run, for good (its sshd killed, its Docker engine killed, or its
//! address cut off so that every packet to it is dropped): the run ends with an error naming that node, nothing
//! is unreadable, and once the node is back the rerun completes.
//!
//!     ATREST_RANDOM_KILL_CYCLES=5 ATREST_RANDOM_KILLS=10 ATREST_HOST_LOSS_TRIALS=10 \
//!         cargo test --test e2e_chaos -- --nocapture
//!
//! ATREST_RANDOM_KILL_CYCLES (default 1): passes through the six changes. ATREST_RANDOM_KILLS (default 1): kills
//! per change at most (a run that ends before its moment ends the change). ATREST_HOST_LOSS_TRIALS (default 1):
//! trials of each kind of loss. ATREST_CHAOS_SEED replays a run (the seed is printed); ATREST_CHAOS_FAILPOINTS
//! (kill points, e.g. a stall) goes to the runs a node is lost in, and ATREST_CHAOS_LOSS_AT (seconds) fixes the
//! moment of the loss.

mod flows_common;

use flows_common::*;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The count `name` in the environment, or `default`.
fn count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v}: not a count"))
        })
        .unwrap_or(default)
}

/// The random moments' source: seeded from ATREST_CHAOS_SEED, or at random (printed, to replay).
fn seeded_rng() -> rand::rngs::StdRng {
    let seed = std::env::var("ATREST_CHAOS_SEED")
        .ok()
        .map(|v| v.parse::<u64>().expect("ATREST_CHAOS_SEED: a number"))
        .unwrap_or_else(rand::random);
    eprintln!("chaos: seed {seed} (ATREST_CHAOS_SEED={seed} replays the moments)");
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// A kind of change the test drives, in the order of one cycle (each starts where the one before ended).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Change {
    Enable,
    RotateKey,
    ManagedToCustom,
    CustomEdit,
    CustomToManaged,
    Disable,
}

const CYCLE: [Change; 6] = [
    Change::Enable,
    Change::RotateKey,
    Change::ManagedToCustom,
    Change::CustomEdit,
    Change::CustomToManaged,
    Change::Disable,
];

/// How long a run of a change is before any measurement: the span the first kill moment is drawn from.
const FIRST_SPAN: Duration = Duration::from_secs(45);

/// What every run spends before it changes anything (connecting, pre-flight): a rerun repeats it, so it does not
/// count as work a killed run got done.
const RUN_SETUP: Duration = Duration::from_secs(2);

/// The shortest span a rerun's moment is drawn from, however much its killed predecessors got done.
const MIN_SPAN: Duration = Duration::from_secs(5);

/// The span the next run's kill moment is drawn from: what is left of the change's span once the killed runs'
/// work (each one's moment past its setup) is done. A rerun resumes, so drawing from the whole span would let
/// most reruns end before their moment, and the changes with more kills per span would get fewer.
fn span_left(span: Duration, killed_at: &[Duration]) -> Duration {
    let done: Duration = killed_at.iter().map(|m| m.saturating_sub(RUN_SETUP)).sum();
    span.saturating_sub(done).max(MIN_SPAN)
}

/// Per change: kills that landed, runs that ended before their moment, and the last unkilled run's duration.
#[derive(Default)]
struct Tally {
    kills: usize,
    ended_first: usize,
    changes: usize,
    span: Option<Duration>,
}

/// How a run started by [`run_until`] ended.
enum Ended {
    Killed,
    Exited(ExitStatus),
}

/// Starts `atrest args` and SIGKILLs it at `moment` unless it ends before; its output goes to `log`.
fn run_until(b: &Bench, args: &[&str], moment: Duration, log: &std::path::Path) -> Ended {
    let out = std::fs::File::create(log).expect("log file");
    let err = out.try_clone().expect("log file");
    let mut child = b
        .command(args)
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .expect("spawn atrest");
    let deadline = Instant::now() + moment;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return Ended::Exited(status);
        }
        if Instant::now() >= deadline {
            child.kill().expect("SIGKILL atrest");
            child.wait().expect("reap atrest");
            return Ended::Killed;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The test's own record of the custom keys it wrote into cluster.yml, per cycle.
struct CustomKeys {
    g1: String,
    s1: String,
    s2: String,
}

/// The custom config of the managed → custom change: secrets on aesgcm `g<cycle>`, configmaps on secretbox.
fn custom_config(k: &CustomKeys, cycle: usize, edited: bool) -> String {
    let first = if edited {
        format!(
            "  - secretbox:\n      keys:\n      - {{name: s2c{cycle}, secret: \"{}\"}}\n",
            k.s2
        )
    } else {
        String::new()
    };
    format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n\
         - resources: [secrets]\n  providers:\n{first}  - aesgcm:\n      keys:\n      - {{name: g1c{cycle}, secret: \"{}\"}}\n  - identity: {{}}\n\
         - resources: [configmaps]\n  providers:\n  - secretbox:\n      keys:\n      - {{name: s1c{cycle}, secret: \"{}\"}}\n  - identity: {{}}\n",
        k.g1, k.s1
    )
}

/// Writes the desire of `change` into cluster.yml (nothing for rotate-key: it is a command, not a desire).
fn desire(b: &Bench, change: Change, keys: &CustomKeys, cycle: usize) {
    match change {
        Change::Enable | Change::CustomToManaged => b.set_encryption(true, None),
        Change::RotateKey => {}
        Change::ManagedToCustom => b.set_encryption(true, Some(&custom_config(keys, cycle, false))),
        Change::CustomEdit => b.set_encryption(true, Some(&custom_config(keys, cycle, true))),
        Change::Disable => b.set_encryption(false, None),
    }
}

/// The command that (re)starts `change`: `up` converges on cluster.yml and resumes a recorded transition; a
/// rotation killed before it was recorded is asked for again, one recorded or finished is not.
fn command_for(b: &Bench, change: Change, key_before: Option<&str>) -> Vec<&'static str> {
    let rotation_pending = change == Change::RotateKey
        && b.records()["transition"].is_null()
        && key_before == current_write_key(b).as_deref();
    if rotation_pending {
        vec!["encrypt", "rotate-key", "--yes"]
    } else {
        vec!["up", "--yes"]
    }
}

/// The name of the managed write key the state records, if the current config is a managed one.
fn current_write_key(b: &Bench) -> Option<String> {
    let state = b.state();
    let yaml = state["currentState"]["encryptionConfig"].as_str()?;
    let config: serde_yaml_ng::Value = serde_yaml_ng::from_str(yaml).ok()?;
    let name = config["resources"][0]["providers"][0]["aescbc"]["keys"][0]["name"].as_str()?;
    Some(name.to_string())
}

/// Where every secret (and configmap) must be once `change` is complete.
fn assert_on_final_keys(b: &Bench, change: Change, cycle: usize) {
    let census = b.census();
    let secrets = b.secrets;
    match change {
        Change::Enable | Change::RotateKey | Change::CustomToManaged => {
            let key = write_key_name(&b.state());
            all_on(&census, "secrets", &format!("aescbc:{key}"), secrets);
        }
        Change::ManagedToCustom => {
            all_on(&census, "secrets", &format!("aesgcm:g1c{cycle}"), secrets)
        }
        Change::CustomEdit => all_on(
            &census,
            "secrets",
            &format!("secretbox:s2c{cycle}"),
            secrets,
        ),
        Change::Disable => all_on(&census, "secrets", "identity", secrets),
    }
}

#[test]
fn a_rerun_draws_its_moment_from_what_its_killed_runs_left() {
    let span = Duration::from_secs(40);
    assert_eq!(span_left(span, &[]), span);
    let killed = [Duration::from_secs(12), Duration::from_secs(1)];
    assert_eq!(span_left(span, &killed), Duration::from_secs(30));
    assert_eq!(span_left(span, &[Duration::from_secs(60)]), MIN_SPAN);
}

/// Kills the runs of `change` at random moments (at most `kills` times), then lets a run finish; counts the kills
/// that landed and the runs that ended before their moment in `tally`.
fn drive(
    b: &Bench,
    change: Change,
    kills: usize,
    rng: &mut rand::rngs::StdRng,
    tally: &mut Tally,
    logs: &std::path::Path,
) {
    let key_before = current_write_key(b);
    let span = tally.span.unwrap_or(FIRST_SPAN);
    let mut killed_at = Vec::new();
    let mut run = 0;
    loop {
        run += 1;
        let args = command_for(b, change, key_before.as_deref());
        let log = logs.join(format!("{change:?}-{}-{run}.log", tally.changes));
        let killing = killed_at.len() < kills;
        let moment = if killing {
            span_left(span, &killed_at).mul_f64(rng.random::<f64>())
        } else {
            Duration::from_secs(1800)
        };
        let started = Instant::now();
        match run_until(b, &args, moment, &log) {
            Ended::Killed => {
                killed_at.push(moment);
                eprintln!(
                    "{change:?}: killed atrest {} at {:.2} s",
                    args.join(" "),
                    moment.as_secs_f64()
                );
            }
            Ended::Exited(status) => {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                assert!(
                    status.success(),
                    "{change:?}: atrest {} ended with {status}:\n{text}",
                    args.join(" ")
                );
                no_census_repass(&text);
                if killing {
                    tally.ended_first += 1;
                }
                // A rotation whose first run was killed before it was recorded needs its command again.
                if command_for(b, change, key_before.as_deref())[0] == "up" {
                    if !killing {
                        tally.span = Some(started.elapsed());
                    }
                    eprintln!(
                        "{change:?}: complete after {} kill(s), last run {:.1} s",
                        killed_at.len(),
                        started.elapsed().as_secs_f64()
                    );
                    break;
                }
            }
        }
    }
    tally.kills += killed_at.len();
    tally.changes += 1;
}

#[test]
fn random_kills_during_every_kind_of_change_lose_nothing() {
    let Some(b) = bench() else { return };
    let cycles = count("ATREST_RANDOM_KILL_CYCLES", 1);
    let kills = count("ATREST_RANDOM_KILLS", 1);
    let mut rng = seeded_rng();
    let logs = tempfile::tempdir().expect("log dir");
    let mut tallies: BTreeMap<Change, Tally> = BTreeMap::new();
    let mut every_key: BTreeSet<String> = BTreeSet::new();

    for cycle in 1..=cycles {
        let keys = CustomKeys {
            g1: random_key(),
            s1: random_key(),
            s2: random_key(),
        };
        for change in CYCLE {
            desire(&b, change, &keys, cycle);
            let tally = tallies.entry(change).or_default();
            drive(&b, change, kills, &mut rng, tally, logs.path());
            assert_complete_and_intact(&b);
            assert_on_final_keys(&b, change, cycle);
            // No key that ever encrypted data is lost: each is still in the state or the archive.
            let now: BTreeSet<String> = keys_of(&b).into_iter().collect();
            every_key.extend(now.iter().cloned());
            let lost = every_key.difference(&now).count();
            assert_eq!(
                lost, 0,
                "{change:?}: {lost} key(s) gone from the state and the archive"
            );
        }
    }

    let objects = b.secrets + b.configmaps;
    for (change, t) in &tallies {
        eprintln!(
            "random kills: {change:?}: {} kills in {} change(s), {} run(s) ended before their moment",
            t.kills, t.changes, t.ended_first
        );
    }
    let total: usize = tallies.values().map(|t| t.kills).sum();
    eprintln!(
        "random kills hit: {total} kills in {} changes of {} kinds, {objects} seeded objects checked after each, {} keys kept",
        tallies.values().map(|t| t.changes).sum::<usize>(),
        tallies.len(),
        every_key.len()
    );
    assert!(
        total > 0,
        "no kill landed (every run ended before its moment)"
    );
}

/// How a node is lost in [`a_node_lost_at_a_random_moment_stops_the_run_naming_it_and_the_rerun_completes`].
#[derive(Clone, Copy, Debug)]
enum Loss {
    /// Its sshd killed with SIGKILL, listener and sessions: connections reset, new ones refused.
    SshdKilled,
    /// Every packet to its address dropped: no reset, no refusal, silence.
    AddressCut,
    /// Its Docker engine killed with SIGKILL: SSH still answers, the Docker API does not; the containers run on
    /// until the engine comes back and (without live-restore) restarts them.
    DockerdKilled,
}

/// What a loss left to undo.
enum Lost {
    Sshd,
    Cut(testbed::harness::faults::AddressCut),
    Dockerd,
}

/// Whether node `n` has a running `kube-apiserver` and no `old-kube-apiserver` (an interrupted recreate's).
fn serves_unless_mid_recreate(b: &Bench, n: &testbed::harness::Node) -> bool {
    let text = b.containers(n);
    let mid_recreate = text.lines().any(|l| l.starts_with("old-kube-apiserver "))
        || !text.lines().any(|l| l == "kube-apiserver running");
    if mid_recreate {
        eprintln!(
            "node 2 was left mid-recreate ({}): the rerun puts it back",
            text.trim().replace('\n', ", ")
        );
    }
    !mid_recreate
}

/// Waits (up to 2 min) until node `n`'s restarted Docker engine has put its containers back: the engine answers
/// before it has restarted the containers its predecessor left, and a `kube-apiserver` caught between the two
/// would read as "mid-recreate". Done when `kube-apiserver` runs, or an `old-kube-apiserver` (a recreate the loss
/// interrupted, the rerun's job) is there.
fn engine_settled(b: &Bench, n: &testbed::harness::Node) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = b.containers(n);
        if text.lines().any(|l| l.starts_with("old-kube-apiserver "))
            || text.lines().any(|l| l == "kube-apiserver running")
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}'s containers after its engine came back: {}",
            n.name,
            text.trim()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every seeded object reads back byte-identical through node `n`'s kube-apiserver. While an address is cut off,
/// that server's etcd client may still be on the lost member until its gRPC keepalive gives up (then it moves to
/// another), and etcd settles when it comes back: such answers ([`transient`]) are waited out (up to 2 min), any
/// other failure fails at once.
fn reads_back_through(b: &Bench, n: &testbed::harness::Node) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match b.tb.verify_seed_through(n, b.secrets, b.configmaps, SIZE) {
            Ok(_) => return,
            Err(e) if transient(&format!("{e:#}")) && Instant::now() < deadline => {
                eprintln!("reading through {}: {e:#}; again", n.name);
                std::thread::sleep(Duration::from_secs(2));
            }
            Err(e) => panic!("every object reads back through {}: {e:#}", n.name),
        }
    }
}

/// An answer of a server whose etcd is moving off a lost member, or settling once it is back: `Unavailable`
/// from its etcd client, or etcd's own "request timed out" (seen once the cut was healed, while the member
/// rejoined).
fn transient(error: &str) -> bool {
    error.contains("Unavailable") || error.contains("etcdserver: request timed out")
}

/// How long a run may take to end once its node is lost: the SSH keepalives (4 × 15 s) plus a deploy's
/// health deadline, with room for a loaded machine.
const LOST_RUN_DEADLINE: Duration = Duration::from_secs(420);

/// R2 of docs/reliability.md at random moments: during an enable or a disable, node 2 is lost for good (sshd
/// killed, dockerd killed, or its address cut off) at a moment drawn at random. The run must end (not hang) with
/// exit 1 and an error naming node 2, unless it no longer needed node 2 (then it completes); every object still
/// reads back through node 1; once node 2 is back (sshd or dockerd started, the address restored) the rerun
/// completes and verifies.
#[test]
fn a_node_lost_at_a_random_moment_stops_the_run_naming_it_and_the_rerun_completes() {
    let Some(mut b) = bench_seeded(200, 20) else {
        return;
    };
    let trials = count("ATREST_HOST_LOSS_TRIALS", 1);
    let mut rng = seeded_rng();
    let logs = tempfile::tempdir().expect("log dir");
    let node1 = b.tb.nodes()[0].clone();
    let node2 = b.tb.nodes()[1].clone();
    let named = format!("{} ({})", node2.address, node2.name);
    let span = Duration::from_secs(35);
    let mut stopped_naming_it = 0;
    let mut ended_first = 0;
    let mut completed_without_it = 0;
    let mut slowest_stop = 0f64;
    for trial in 1..=trials {
        for loss in [Loss::SshdKilled, Loss::AddressCut, Loss::DockerdKilled] {
            let enable = b.status()["encryptionStatus"] != "Enabled";
            b.set_encryption(enable, None);
            let drawn = span.mul_f64(rng.random::<f64>());
            let moment = std::env::var("ATREST_CHAOS_LOSS_AT")
                .ok()
                .and_then(|s| s.parse::<f64>().ok())
                .map_or(drawn, Duration::from_secs_f64);
            let log = logs.path().join(format!("{loss:?}-{trial}.log"));
            let file = std::fs::File::create(&log).expect("log file");
            let mut command = b.command(&["up", "--yes"]);
            // To replay a loss at an exact step: e.g. `recreate:stopped=1*off->return(40)` stalls node 2's
            // recreate with its old container stopped, for the moment to land in (kill points, test builds).
            if let Ok(points) = std::env::var("ATREST_CHAOS_FAILPOINTS") {
                command.env("FAILPOINTS", points);
            }
            let mut child = command
                .stdout(Stdio::from(file.try_clone().expect("log file")))
                .stderr(Stdio::from(file))
                .spawn()
                .expect("spawn atrest");
            let started = Instant::now();
            let mut lost = None;
            let status = loop {
                if let Some(status) = child.try_wait().expect("wait") {
                    break status;
                }
                if lost.is_none() && started.elapsed() >= moment {
                    lost = Some(match loss {
                        Loss::SshdKilled => {
                            let cut = b.tb.kill_sshd(&node2).expect("kill sshd");
                            eprintln!(
                                "{loss:?}: node 2's sshd killed at {:.2} s ({cut} session(s))",
                                moment.as_secs_f64()
                            );
                            Lost::Sshd
                        }
                        Loss::AddressCut => {
                            eprintln!(
                                "{loss:?}: node 2's address cut at {:.2} s",
                                moment.as_secs_f64()
                            );
                            Lost::Cut(b.tb.cut_address(&node2).expect("cut the address"))
                        }
                        Loss::DockerdKilled => {
                            b.tb.kill_dockerd(&node2).expect("kill dockerd");
                            eprintln!(
                                "{loss:?}: node 2's dockerd killed at {:.2} s",
                                moment.as_secs_f64()
                            );
                            Lost::Dockerd
                        }
                    });
                }
                if started.elapsed() > moment + LOST_RUN_DEADLINE {
                    child.kill().expect("kill the hung run");
                    panic!(
                        "{loss:?}: atrest still running {} s after node 2 was lost:\n{}",
                        LOST_RUN_DEADLINE.as_secs(),
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            };
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let after = started.elapsed().saturating_sub(moment).as_secs_f64();
            match (&lost, status.code()) {
                (None, _) => {
                    assert!(
                        status.success(),
                        "{loss:?}: ended before its moment, failing:\n{text}"
                    );
                    ended_first += 1;
                }
                (Some(_), Some(0)) => {
                    completed_without_it += 1;
                    eprintln!("{loss:?}: the run no longer needed node 2 and completed")
                }
                (Some(_), code) => {
                    assert_eq!(code, Some(1), "{loss:?}:\n{text}");
                    let error = error_of(&text);
                    assert!(
                        error.contains(&named),
                        "{loss:?}: the error does not name {named}:\n{text}"
                    );
                    stopped_naming_it += 1;
                    slowest_stop = slowest_stop.max(after);
                    eprintln!("{loss:?}: stopped {after:.1} s after the loss: {error}");
                }
            }
            // Nothing unreadable, while node 2 is still lost.
            reads_back_through(&b, &node1);
            match lost {
                Some(Lost::Sshd) => b.tb.start_sshd(&node2).expect("start sshd again"),
                Some(Lost::Cut(cut)) => drop(cut),
                Some(Lost::Dockerd) => {
                    b.tb.start_dockerd(&node2).expect("start dockerd again");
                    engine_settled(&b, &node2);
                }
                None => {}
            }
            // A loss in the middle of a recreate leaves node 2 with no running kube-apiserver (its old container
            // renamed, or stopped): putting it back is the rerun's job (and the error says so). Otherwise the
            // rerun's health gate wants node 2 serving first.
            if serves_unless_mid_recreate(&b, &node2) {
                b.wait_serving(&node2);
            }
            // etcd settles once node 2's member is back; reads wait that out before the checks.
            reads_back_through(&b, &node1);
            b.ok(&["up", "--yes"]);
            assert_complete_and_intact(&b);
        }
    }
    eprintln!(
        "host loss: {} trial(s): {stopped_naming_it} stopped naming node 2 (the slowest {slowest_stop:.1} s after \
         the loss), {completed_without_it} completed without it, {ended_first} ended before the loss",
        3 * trials
    );
}
