//! End-to-end checks of the testbed harness with real sshd, dockerd, etcd and docker containers (needs root).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testbed::harness::{Options, Standin, Testbed};

/// True when the test may run; panics with a clear message when it cannot and skipping was not asked for.
fn may_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("ATREST_SKIP_TESTBED").as_deref() == Ok("1") {
        eprintln!("skipping: not root and ATREST_SKIP_TESTBED=1");
        return false;
    }
    panic!(
        "the testbed tests need root and scripts/prereqs.sh; set ATREST_SKIP_TESTBED=1 to skip them"
    );
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().expect("spawning a test command");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_clean(tb: &mut Testbed) {
    let t = Instant::now();
    tb.down().expect("teardown");
    println!("teardown: {:.2} s", t.elapsed().as_secs_f64());
    let left = tb.leftovers();
    assert!(left.is_empty(), "teardown left: {left:#?}");
    tb.down().expect("second teardown is a no-op");
}

#[test]
fn three_nodes_reachable_over_ssh_and_docker_then_clean_teardown() {
    if !may_run() {
        return;
    }
    let mut tb = Testbed::up(Options {
        standin: Standin::Placeholder,
        ..Options::default()
    })
    .expect("testbed up");
    println!(
        "bring-up (placeholder, 3 nodes, etcd): {:.2} s",
        tb.bring_up_time().as_secs_f64()
    );
    assert_eq!(tb.nodes().len(), 3);
    let key = tb.client_key();
    let known = tb.known_hosts();
    let empty_known = tb.dir().join("empty_known_hosts");
    std::fs::write(&empty_known, "").expect("writing an empty known_hosts");
    for n in tb.nodes() {
        let ssh = |known: &Path, remote: &str| {
            let mut c = Command::new("ssh");
            c.args([
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-i",
            ])
            .arg(&key)
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known.display()))
            .arg(format!("root@{}", n.address))
            .arg(remote)
            .stdin(Stdio::null());
            run(&mut c)
        };
        // Host key checked; the node sees its own prefix tree and its own engine.
        let own_cert = format!(
            "/opt/atrest-prefix/etc/kubernetes/ssl/kube-etcd-{}.pem",
            n.address.to_string().replace('.', "-")
        );
        let (ok, out, err) = ssh(
            &known,
            &format!(
                "echo $DOCKER_HOST; test -f {own_cert} && ls /opt/atrest-prefix/etc/kubernetes/ssl | grep -c kube-etcd"
            ),
        );
        assert!(ok, "ssh to {}: {err}", n.name);
        assert_eq!(
            out.lines().next(),
            Some(format!("unix://{}", n.docker_socket.display()).as_str())
        );
        assert_eq!(
            out.lines().nth(1),
            Some("2"),
            "{}: exactly its own etcd cert+key pair in its prefix",
            n.name
        );
        // Unknown host key: refused.
        let (ok, _, err) = ssh(&empty_known, "true");
        assert!(
            !ok && err.contains("host key"),
            "ssh without a known host key must fail: {err}"
        );

        // Docker engine through an SSH-forwarded unix socket.
        let fwd = tb.dir().join(format!("fwd-{}.sock", n.name));
        let mut forward = tb
            .ssh(n)
            .args(["-o", "ExitOnForwardFailure=yes", "-N", "-L"])
            .arg(format!("{}:{}", fwd.display(), n.docker_socket.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning ssh -L");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !fwd.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let (ok, out, err) = run(Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", fwd.display()))
            .args([
                "inspect",
                "-f",
                "{{.Name}} {{.HostConfig.NetworkMode}} {{.State.Running}}",
                "kube-apiserver",
            ]));
        let _ = forward.kill();
        let _ = forward.wait();
        let _ = std::fs::remove_file(&fwd);
        assert!(ok, "docker over the SSH forward to {}: {err}", n.name);
        assert_eq!(out.trim(), "/kube-apiserver host true");
    }
    // etcd: TLS cluster answering writes and reads with the client certificate.
    let (ok, _, err) = run(tb.etcdctl().args(["put", "/testbed/probe", "v1"]));
    assert!(ok, "etcdctl put: {err}");
    let (ok, out, err) = run(tb
        .etcdctl()
        .args(["get", "/testbed/probe", "--print-value-only"]));
    assert!(ok, "etcdctl get: {err}");
    assert_eq!(out.trim(), "v1");
    let manifest = tb.manifest().clone();
    assert_eq!(manifest.procs.len(), 9, "3 × (sshd, dockerd, etcd)");
    assert_clean(&mut tb);
    assert!(
        !manifest
            .procs
            .iter()
            .any(|p| Path::new(&format!("/proc/{}", p.pid)).exists()
                && testbed::harness::procs::alive(p.pid, &p.tag))
    );
}

#[test]
#[ignore = "needs the kube-apiserver stand-in binary (branch standin)"]
fn seeded_secrets_read_back_with_kubectl() {
    if !may_run() {
        return;
    }
    let standin = Standin::locate().expect("locating the stand-in");
    let mut tb = Testbed::up(Options {
        standin,
        ..Options::default()
    })
    .expect("testbed up");
    println!(
        "bring-up (stand-in, 3 nodes): {:.2} s",
        tb.bring_up_time().as_secs_f64()
    );
    let t = Instant::now();
    let report = tb.seed(1000, 0, 2048).expect("seeding");
    println!("seeded 1000 secrets in {:.2} s", t.elapsed().as_secs_f64());
    assert_eq!(report.secrets, 1000);
    let (ok, out, err) = run(Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(tb.kubeconfig())
        .args([
            "get",
            "secrets",
            "-A",
            "-l",
            "atrest-testbed/seed=true",
            "-o",
            "json",
        ]));
    assert!(ok, "kubectl: {err}");
    let list: serde_json::Value = serde_json::from_str(&out).expect("kubectl JSON");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1000));
    let verified = tb.verify_seed(1000, 0, 2048).expect("verifying");
    assert_eq!(verified.secrets, 1000);
    assert_clean(&mut tb);
}
