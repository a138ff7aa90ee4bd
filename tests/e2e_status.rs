//! Read-only verbs while kube-apiserver is down: `encrypt status`, `encrypt verify` and `plan` must answer with
//! any one controlplane's server stopped (the kubeconfig's included: atrest then goes through another node's
//! server over SSH and says so), and even with every server stopped (the etcd census needs no API for resources
//! named exactly), and waiting while every server answers "not ready" (etcd without quorum). Root only: a
//! 3-node testbed.

mod flows_common;

use flows_common::{Bench, SECRETS, bench};
use std::process::Command;
use std::time::{Duration, Instant};
use testbed::harness::Node;

const APISERVER: &str = "kube-apiserver";
const READY_DEADLINE: Duration = Duration::from_secs(180);

fn docker(b: &Bench, node: &Node, verb: &str) {
    docker_on(b, node, verb, APISERVER);
}

/// `docker <verb> <container>` on the node, which must succeed.
fn docker_on(b: &Bench, node: &Node, verb: &str, container: &str) {
    let out =
        b.tb.docker(node)
            .args([verb, container])
            .output()
            .expect("docker");
    assert!(
        out.status.success(),
        "docker {verb} {container} on {}: {}",
        node.address,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls the node's `/readyz` (admin credentials of the kubeconfig) until it answers, up to a deadline.
fn wait_ready(b: &Bench, node: &Node) {
    poll_readyz(b, node, "not ready", |ready, _| ready);
}

/// Polls the node's `/readyz` until it answers and says it is not ready (HTTP 500, the etcd check failing).
fn wait_not_ready(b: &Bench, node: &Node) {
    poll_readyz(b, node, "still ready", |ready, text| {
        !ready && text.contains("etcd")
    });
}

/// Asks the node's `/readyz?verbose` every 250 ms until `done(answered 200, its text)`, for up to
/// [`READY_DEADLINE`]; `otherwise` says what the node still was when the deadline passed.
fn poll_readyz(b: &Bench, node: &Node, otherwise: &str, done: impl Fn(bool, &str) -> bool) {
    let started = Instant::now();
    loop {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(b.tb.kubeconfig())
            .arg("--server")
            .arg(b.tb.apiserver_url(node))
            .args([
                "get",
                "--raw",
                "/readyz?verbose",
                "--request-timeout",
                "10s",
            ])
            .output()
            .expect("kubectl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if done(out.status.success(), &text) {
            return;
        }
        assert!(
            started.elapsed() < READY_DEADLINE,
            "kube-apiserver on {} {otherwise} after {} s: {text}",
            node.address,
            READY_DEADLINE.as_secs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `encrypt status -o json` must succeed with the whole census of the enabled cluster; returns its stderr.
fn status_is_whole(b: &Bench, write_label: &str) -> String {
    let out = b.run(&["encrypt", "status", "-o", "json"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "status failed: {stderr}");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(status["unavailable"], serde_json::json!([]), "{status}");
    assert_eq!(
        status["census"]["secrets"][write_label].as_u64(),
        Some(SECRETS as u64),
        "every seeded secret counted on {write_label}: {status}"
    );
    assert_eq!(status["nodes"].as_array().map(Vec::len), Some(3));
    assert_eq!(status["hashesMatch"], true);
    stderr
}

/// `encrypt status` costs each node one remote command (each is a login shell there): the config file's
/// hash. The server's `/metrics` is reached with the state's certificates, not ones read from the node.
fn one_remote_command_per_node(b: &Bench, nodes: &[Node]) {
    let out = b
        .command(&["encrypt", "status"])
        .env("RUST_LOG", "atrest=debug,warn")
        .output()
        .expect("run atrest");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "status failed: {stderr}");
    for node in nodes {
        let field = format!("address={}", node.address);
        let commands = stderr
            .lines()
            .filter(|l| l.contains("remote command") && l.split_whitespace().any(|w| w == field))
            .count();
        assert_eq!(
            commands, 1,
            "status sent {} {commands} remote commands: {stderr}",
            node.address
        );
    }
}

/// Another run's recreate renames `kube-apiserver` to `old-kube-apiserver` before it creates the new one: for that
/// moment the node has no `kube-apiserver` container. status still reports everything else, names the node, and
/// exits PARTIAL (3); verify (etcd only) passes; plan shows that `up` puts the old container back first, and `up`
/// does nothing of it unconfirmed. Then an interrupted `rke up`'s new container beside it: `up` refuses, changing
/// nothing. Without that one, `up --yes` puts the old container back.
fn a_node_half_way_through_a_recreate_is_reported_not_fatal(b: &Bench, node: &Node, label: &str) {
    let rename = |from: &str, to: &str| {
        let out =
            b.tb.docker(node)
                .args(["rename", from, to])
                .output()
                .expect("docker");
        assert!(out.status.success(), "docker rename {from} {to}");
    };
    let address = node.address.to_string();
    rename(APISERVER, "old-kube-apiserver");
    let out = b.run(&["encrypt", "status", "-o", "json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "status must be PARTIAL: {stderr}"
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    let unavailable = status["unavailable"].to_string();
    assert!(
        unavailable.contains(&address) && unavailable.contains("no kube-apiserver container"),
        "the node half-way through a recreate is named: {status}"
    );
    let row = status["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|v| v["node"] == address.as_str()))
        .cloned()
        .unwrap_or_else(|| panic!("no row for {}: {status}", node.address));
    assert!(row["unobserved"].is_string(), "{row}");
    assert_eq!(
        status["census"]["secrets"][label].as_u64(),
        Some(SECRETS as u64),
        "the census is still whole: {status}"
    );
    assert_eq!(
        status["hashesMatch"], true,
        "the observed nodes agree: {status}"
    );
    assert_eq!(status["encryptionStatus"], "Enabled", "{status}");
    let verify = b.run(&["encrypt", "verify"]);
    assert!(verify.status.success(), "verify needs etcd only");
    let plan = b.run(&["plan", "--detailed-exitcode"]);
    let plan_out = String::from_utf8_lossy(&plan.stdout);
    assert_eq!(
        plan.status.code(),
        Some(2),
        "putting the old container back is a change: {plan_out}"
    );
    assert!(
        plan_out.contains(&address) && plan_out.contains("the old container is renamed back"),
        "plan names the node and what `up` does first: {plan_out}"
    );
    let unconfirmed = b.run(&["up"]);
    assert!(!unconfirmed.status.success());
    assert!(
        String::from_utf8_lossy(&unconfirmed.stderr).contains("pass --yes"),
        "up asks before it settles the leftover"
    );

    // An interrupted `rke up` got further: it created its new kube-apiserver (not started). That container is not
    // atrest's, so atrest decides nothing: plan names it, `up` refuses and changes nothing.
    let image =
        b.tb.docker(node)
            .args(["inspect", "-f", "{{.Config.Image}}", "old-kube-apiserver"])
            .output()
            .expect("docker inspect");
    let image = String::from_utf8_lossy(&image.stdout).trim().to_string();
    let created =
        b.tb.docker(node)
            .args([
                "create",
                "--name",
                APISERVER,
                "--entrypoint",
                APISERVER,
                &image,
            ])
            .output()
            .expect("docker create");
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let plan = b.run(&["plan"]);
    let plan_out = String::from_utf8_lossy(&plan.stdout);
    assert!(
        plan_out.contains("atrest did not create") && plan_out.contains(&address),
        "plan shows the other tool's leftover: {plan_out}"
    );
    let state_before = std::fs::read(b.tb.rkestate()).expect("state");
    let up = b.run(&["up", "--yes"]);
    let up_err = String::from_utf8_lossy(&up.stderr);
    assert!(!up.status.success(), "up must refuse: {up_err}");
    assert!(up_err.contains("changes nothing"), "{up_err}");
    assert_eq!(std::fs::read(b.tb.rkestate()).expect("state"), state_before);
    let names =
        b.tb.docker(node)
            .args(["ps", "-a", "--format", "{{.Names}}"])
            .output()
            .expect("docker ps");
    let names = String::from_utf8_lossy(&names.stdout);
    assert!(
        names.lines().any(|n| n == "old-kube-apiserver") && names.lines().any(|n| n == APISERVER),
        "both containers left alone: {names}"
    );
    let removed =
        b.tb.docker(node)
            .args(["rm", APISERVER])
            .output()
            .expect("docker rm");
    assert!(removed.status.success());

    // Only the old container is left (as after the unconfirmed `up` above): `up --yes` puts it back.
    let up = b.run(&["up", "--yes"]);
    let up_err = String::from_utf8_lossy(&up.stderr);
    assert!(up.status.success(), "{up_err}");
    assert!(
        up_err.contains("put back the previous kube-apiserver"),
        "{up_err}"
    );
    let names =
        b.tb.docker(node)
            .args(["ps", "--format", "{{.Names}}"])
            .output()
            .expect("docker ps");
    let names = String::from_utf8_lossy(&names.stdout);
    assert!(
        names.lines().any(|n| n == APISERVER) && !names.lines().any(|n| n == "old-kube-apiserver"),
        "kube-apiserver runs again, no leftover: {names}"
    );
    assert_eq!(
        std::fs::read(b.tb.rkestate()).expect("state"),
        state_before,
        "nothing else to do"
    );
}

#[test]
fn status_verify_and_plan_answer_with_any_apiserver_down() {
    let Some(b) = bench() else { return };
    b.set_encryption(true, None);
    b.ok(&["up", "--yes"]);
    let census = b.census();
    let label = census["secrets"]
        .keys()
        .find(|l| l.starts_with("aescbc:"))
        .cloned()
        .expect("secrets on an aescbc key after enable");
    let nodes: Vec<Node> = b.tb.nodes().to_vec();
    let kubeconfig_server = &nodes[0];
    one_remote_command_per_node(&b, &nodes);

    for node in &nodes {
        docker(&b, node, "stop");
        let stderr = status_is_whole(&b, &label);
        let detour = stderr.contains("through SSH instead");
        if node.address == kubeconfig_server.address {
            assert!(
                detour,
                "with the kubeconfig's server down, status must say which server it used: {stderr}"
            );
            let other = &nodes[1].address;
            assert!(
                stderr.contains(&format!("using {other}'s kube-apiserver")),
                "the first other controlplane ({other}) is used: {stderr}"
            );
        } else {
            assert!(
                !detour,
                "the kubeconfig's server answers, no detour: {stderr}"
            );
        }
        let verify = b.run(&["encrypt", "verify"]);
        assert!(verify.status.success(), "verify with {} down", node.address);
        let plan = b.run(&["plan"]);
        assert!(plan.status.success(), "plan with {} down", node.address);
        docker(&b, node, "start");
        wait_ready(&b, node);
    }

    a_node_half_way_through_a_recreate_is_reported_not_fatal(&b, &nodes[1], &label);

    for node in &nodes {
        docker(&b, node, "stop");
    }
    let stderr = status_is_whole(&b, &label);
    assert!(
        stderr.contains("no API server answers") && stderr.contains("without API discovery"),
        "with every server down the census comes from etcd alone, and status says so: {stderr}"
    );
    let verify = b.run(&["encrypt", "verify"]);
    assert!(verify.status.success(), "verify with every server down");
    for node in &nodes {
        docker(&b, node, "start");
    }
    for node in &nodes {
        wait_ready(&b, node);
    }
    b.verify_seed();

    servers_that_answer_not_ready_are_waited_for(&b, &nodes, &label);
}

/// etcd loses its quorum (two members stopped): every API server answers, not ready. `encrypt status` says it
/// waits, the members come back while it does, and it then answers with the whole census through the API.
fn servers_that_answer_not_ready_are_waited_for(b: &Bench, nodes: &[Node], label: &str) {
    use std::io::{BufRead, BufReader};
    let etcd = |node: &Node, verb: &str| docker_on(b, node, verb, "etcd");
    for node in &nodes[1..] {
        etcd(node, "stop");
    }
    wait_not_ready(b, &nodes[0]);
    let mut child = b
        .command(&["--api-wait", "600", "encrypt", "status", "-o", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn atrest");
    let stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut json = Vec::new();
        std::io::Read::read_to_end(&mut BufReader::new(stdout), &mut json).map(|_| json)
    });
    let mut text = String::new();
    let mut restarted = false;
    for line in BufReader::new(child.stderr.take().expect("stderr")).lines() {
        let line = line.expect("stderr line");
        eprintln!("  | {line}");
        text.push_str(&line);
        text.push('\n');
        if !restarted && line.contains("waiting up to 600 s for one to be ready") {
            for node in &nodes[1..] {
                etcd(node, "start");
            }
            restarted = true;
        }
    }
    let status = child.wait().expect("wait");
    let json = reader.join().expect("stdout reader").expect("stdout");
    if !restarted {
        for node in &nodes[1..] {
            etcd(node, "start");
        }
    }
    assert!(
        restarted,
        "status did not say it waits for the not-ready servers:\n{text}"
    );
    assert!(status.success(), "status failed after the wait:\n{text}");
    assert!(
        !text.contains("without API discovery"),
        "once ready, the servers' API is used, not etcd alone:\n{text}"
    );
    let status: serde_json::Value = serde_json::from_slice(&json).expect("status JSON");
    assert_eq!(status["unavailable"], serde_json::json!([]), "{status}");
    assert_eq!(
        status["census"]["secrets"][label].as_u64(),
        Some(SECRETS as u64),
        "every seeded secret counted on {label}: {status}"
    );
    for node in nodes {
        wait_ready(b, node);
    }
}

/// The kubeconfig's API server stops in the middle of the rewrite: the run notices, drops it from the servers
/// it writes through, goes on through the other controlplanes' servers, and completes; every object is on the
/// new key and reads back intact.
#[test]
fn a_rewrite_goes_on_when_its_api_server_stops() {
    use std::io::{BufRead, BufReader};
    let Some(b) = bench() else { return };
    b.set_encryption(true, None);
    let node1 = b.tb.nodes()[0].clone();
    // One write at a time keeps the rewrite of the seeded secrets going for seconds.
    let mut child = b
        .command(&["up", "--yes", "--rewrite-concurrency", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn atrest");
    let stderr = child.stderr.take().expect("stderr");
    let mut text = String::new();
    let (mut stopped, mut restarted) = (false, false);
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("stderr line");
        eprintln!("  | {line}");
        text.push_str(&line);
        text.push('\n');
        if !stopped && line.contains(": rewriting secrets") {
            docker(&b, &node1, "stop");
            stopped = true;
        }
        if stopped && !restarted && line.contains("its writes go to the other API servers") {
            docker(&b, &node1, "start");
            restarted = true;
        }
    }
    let status = child.wait().expect("wait");
    assert!(stopped, "the rewrite never started:\n{text}");
    assert!(
        restarted,
        "the lost server was not noticed during the rewrite:\n{text}"
    );
    assert!(status.success(), "up failed after the failover:\n{text}");
    let spread = text
        .lines()
        .find(|l| l.contains("secrets → ") && l.contains("through 3 API servers"))
        .unwrap_or_else(|| panic!("no line says where the writes went:\n{text}"));
    let answered = |name: &str| -> u64 {
        let after = spread
            .split_once(&format!("{name}'s kube-apiserver "))
            .map(|(_, a)| a);
        after
            .and_then(|a| a.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count for {name} in {spread}"))
    };
    for node in &b.tb.nodes()[1..] {
        assert!(
            answered(&node.address.to_string()) > 0,
            "{} wrote nothing after {} stopped: {spread}",
            node.address,
            node1.address
        );
    }
    wait_ready(&b, &node1);
    let verify = b.run(&["encrypt", "verify"]);
    assert!(verify.status.success(), "verify after the failover");
    b.verify_seed();
}
