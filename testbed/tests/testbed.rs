//! End-to-end checks of the testbed harness with real sshd, dockerd, etcd and docker containers (needs root).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testbed::harness::{Apiserver, Options, Testbed};

/// True when the test may run (`testbed::skip`: always as root; a visible, counted skip otherwise).
fn may_run() -> bool {
    testbed::skip::may_run(std::thread::current().name().unwrap_or("testbed"))
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().expect("spawning a test command");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn print_steps(tb: &Testbed) {
    for (step, at) in tb.bring_up_steps() {
        println!("  {:>6} ms  {step}", at.as_millis());
    }
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
        apiserver: Apiserver::Placeholder,
        user: testbed::harness::users::NodeUser::Sudo,
        ..Options::default()
    })
    .expect("testbed up");
    println!(
        "bring-up (placeholder, 3 nodes, etcd): {:.2} s",
        tb.bring_up_time().as_secs_f64()
    );
    print_steps(&tb);
    assert_eq!(tb.nodes().len(), 3);
    // atrest reads the cluster file the testbed wrote.
    let cluster =
        atrest::config::cluster::load(&tb.cluster_yml()).expect("atrest parses cluster.yml");
    assert_eq!(cluster.nodes.len(), 3);
    assert_eq!(cluster.prefix_path(), testbed::harness::PREFIX_PATH);
    assert_eq!(cluster.controlplanes().len(), 3);
    assert_eq!(cluster.etcd_nodes().len(), 3);
    for (cn, n) in cluster.nodes.iter().zip(tb.nodes()) {
        assert_eq!(cn.address, n.address.to_string());
        assert_eq!(cn.user.as_deref(), Some("atrest"));
        assert_eq!(
            cn.docker_socket(),
            n.docker_socket.to_str().unwrap_or_default()
        );
    }
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tb.rkestate()).expect("reading cluster.rkestate"),
    )
    .expect("cluster.rkestate is JSON");
    let bundle = &state["currentState"]["certificatesBundle"];
    for name in ["kube-ca", "kube-node", "kube-etcd-127-0-2"] {
        let found = bundle
            .as_object()
            .is_some_and(|b| b.keys().any(|k| k.starts_with(name)));
        assert!(found, "certificatesBundle has {name}*");
    }
    assert!(state["currentState"].get("encryptionConfig").is_none());
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
        // The sudo user: not root, in group docker, passwordless sudo reaches root-only key files.
        let own_key = own_cert.replace(".pem", "-key.pem");
        let user_check = format!(
            "id -un; id -Gn; cat {own_key} >/dev/null 2>&1 && echo readable; sudo -n head -1 {own_key}"
        );
        let (ok, out, err) = run(tb.ssh_as(n, tb.ssh_user()).arg(&user_check));
        assert!(ok, "ssh as {} to {}: {err}", tb.ssh_user(), n.name);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.first(), Some(&"atrest"), "{out}");
        assert!(
            lines
                .get(1)
                .is_some_and(|g| g.split(' ').any(|g| g == "docker")),
            "{out}"
        );
        assert_eq!(
            lines.get(2),
            Some(&"-----BEGIN PRIVATE KEY-----"),
            "key must not be readable without sudo: {out}"
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
    // The harness's HTTPS probe (used for /readyz) against etcd's /health: CA trust + client certificate.
    let pem = |p: std::path::PathBuf| std::fs::read_to_string(p).expect("reading a PEM");
    let probe = testbed::harness::health::HttpsProbe::new(
        &pem(tb.etcd_ca()),
        &pem(tb.etcd_client_cert()),
        &pem(tb.etcd_client_key()),
    )
    .expect("HTTPS probe");
    let etcd1 = std::net::SocketAddr::new(tb.nodes()[0].address.into(), 2379);
    let (code, body) = probe.get(etcd1, "/health").expect("GET etcd /health");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("true"), "{body}");
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
fn seeded_secrets_read_back_with_kubectl() {
    if !may_run() {
        return;
    }
    let apiserver = Apiserver::upstream()
        .expect("the real kube-apiserver and etcd (scripts/build-upstream.sh)");
    let mut tb = Testbed::up(Options {
        apiserver,
        ..Options::default()
    })
    .expect("testbed up");
    println!(
        "bring-up (real kube-apiserver and etcd, 3 nodes): {:.2} s",
        tb.bring_up_time().as_secs_f64()
    );
    print_steps(&tb);
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
    // No --init, as RKE runs it: RKE's entrypoint hands over to kube-apiserver with `exec`, so the server is PID 1
    // and must stop on SIGTERM (else `docker restart` takes the 10 s timeout).
    let probe = tb.admin_probe().expect("HTTPS probe");
    let n2 = &tb.nodes()[1];
    let t = Instant::now();
    // Stop (SIGTERM, SIGKILL after 10 s) and read how PID 1 ended: 137 is the SIGKILL of a PID 1 that ignored
    // SIGTERM, whatever the time it took; then start again and wait for /readyz.
    let (ok, _, err) = run(tb.docker(n2).args(["stop", "-t", "10", "kube-apiserver"]));
    assert!(ok, "docker stop: {err}");
    let (ok, exit, err) =
        run(tb
            .docker(n2)
            .args(["inspect", "-f", "{{.State.ExitCode}}", "kube-apiserver"]));
    assert!(ok, "docker inspect: {err}");
    assert_ne!(
        exit.trim(),
        "137",
        "kube-apiserver was SIGKILLed after the stop timeout: SIGTERM not handled by PID 1?"
    );
    let (ok, _, err) = run(tb.docker(n2).args(["start", "kube-apiserver"]));
    assert!(ok, "docker start: {err}");
    let addr = std::net::SocketAddr::new(n2.address.into(), 6443);
    testbed::harness::health::wait_for(
        "readyz after restart",
        Duration::from_secs(60),
        Duration::from_millis(20),
        || probe.get(addr, "/readyz").is_ok_and(|(c, _)| c == 200),
    )
    .expect("ready again");
    let restart = t.elapsed();
    println!(
        "docker stop/start kube-apiserver (exit {}) → /readyz 200: {:.2} s",
        exit.trim(),
        restart.as_secs_f64()
    );
    assert_eq!(verified.secrets, 1000);
    assert_clean(&mut tb);
}

#[test]
fn a_kept_testbed_is_torn_down_from_its_manifest() {
    if !may_run() {
        return;
    }
    // What the CLI does: `up` leaves the daemons running, a later `down --dir` works from testbed.json alone.
    let mut tb = Testbed::up(Options {
        nodes: 1,
        etcd: false,
        apiserver: Apiserver::Placeholder,
        ..Options::default()
    })
    .expect("testbed up");
    tb.keep_running();
    let manifest = tb.manifest().clone();
    let dir = tb.dir().to_path_buf();
    drop(tb);
    assert!(
        manifest.any_alive(),
        "daemons must outlive the Testbed value after keep_running"
    );
    let owner = manifest.run_dir.join("owner");
    assert_eq!(
        std::fs::read_to_string(&owner).ok().as_deref(),
        dir.to_str(),
        "slot owner file names the testbed"
    );
    Testbed::down_dir(&dir).expect("down from the manifest");
    let left = testbed::harness::procs::leftovers(&manifest);
    assert!(left.is_empty(), "teardown left: {left:#?}");
    assert!(!owner.exists());
    Testbed::down_dir(&dir).expect("down again is a no-op");
}
