//! The end-to-end tests' bench: a 3-node testbed (sshd, dockerd, the real etcd and kube-apiserver), the real
//! `atrest` binary run against it, and ways to look at the result (state file, status JSON, etcd, kubectl).
#![allow(dead_code)]

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Instant;
use testbed::harness::{Apiserver, Options, Testbed};

pub const SECRETS: usize = 1000;
pub const CONFIGMAPS: usize = 200;
pub const SIZE: usize = 256;

pub struct Bench {
    pub tb: Testbed,
    /// A private copy of the atrest binary (target/debug/atrest may be replaced by another build meanwhile).
    pub bin: PathBuf,
    _bin_dir: tempfile::TempDir,
    /// How many secrets and configmaps were seeded (`SECRETS`/`CONFIGMAPS` unless `bench_seeded`).
    pub secrets: usize,
    pub configmaps: usize,
}

/// On the real kube-apiserver and etcd. `None` (test skipped, visibly: `testbed::skip`) when not root and
/// ATREST_SKIP_TESTBED is set.
#[allow(dead_code)]
pub fn bench() -> Option<Bench> {
    bench_seeded(SECRETS, CONFIGMAPS)
}

/// On the real kube-apiserver and etcd, seeded with `secrets` and `configmaps` objects (for flows whose cost
/// grows with the object count through a slow client, such as `rke`'s rewrite).
#[allow(dead_code)]
pub fn bench_seeded(secrets: usize, configmaps: usize) -> Option<Bench> {
    bench_on(
        || {
            Apiserver::upstream()
                .expect("the real kube-apiserver and etcd (scripts/build-upstream.sh)")
        },
        secrets,
        configmaps,
    )
}

/// On the real server, seeded, with RKE's usual SSH user on every node: `atrest`, in group `docker`, no sudo.
#[allow(dead_code)]
pub fn bench_docker_group_user(secrets: usize, configmaps: usize) -> Option<Bench> {
    bench_upstream(
        |o| Options {
            user: testbed::harness::users::NodeUser::DockerGroup,
            ..o
        },
        secrets,
        configmaps,
    )
}

/// A cluster RKE encrypted before atrest ever ran (`Options::rke_encrypted`), on the real server, seeded.
#[allow(dead_code)]
pub fn bench_rke_encrypted(secrets: usize, configmaps: usize) -> Option<Bench> {
    bench_upstream(
        |o| Options {
            rke_encrypted: true,
            ..o
        },
        secrets,
        configmaps,
    )
}

/// On the real kube-apiserver started with `apiserver_args` too (as `services.kube-api.extra_args` would have
/// RKE start it), seeded.
#[allow(dead_code)]
pub fn bench_with_apiserver_args(
    apiserver_args: Vec<String>,
    secrets: usize,
    configmaps: usize,
) -> Option<Bench> {
    bench_upstream(
        |o| Options {
            apiserver_args,
            ..o
        },
        secrets,
        configmaps,
    )
}

/// 3 nodes on the real kube-apiserver, with `options` changing the rest, seeded.
fn bench_upstream(
    options: impl FnOnce(Options) -> Options,
    secrets: usize,
    configmaps: usize,
) -> Option<Bench> {
    if !may_run() {
        return None;
    }
    let base = Options {
        nodes: 3,
        apiserver: Apiserver::upstream()
            .expect("the real kube-apiserver and etcd (scripts/build-upstream.sh)"),
        ..Options::default()
    };
    bench_with(options(base), secrets, configmaps)
}

fn bench_on(
    apiserver: impl FnOnce() -> Apiserver,
    secrets: usize,
    configmaps: usize,
) -> Option<Bench> {
    if !may_run() {
        return None;
    }
    bench_with(
        Options {
            nodes: 3,
            apiserver: apiserver(),
            ..Options::default()
        },
        secrets,
        configmaps,
    )
}

fn may_run() -> bool {
    let test = std::thread::current().name().unwrap_or("e2e").to_string();
    testbed::skip::may_run(&test)
}

/// Brings up the testbed described by `options` and seeds it (the caller has checked [`may_run`]).
fn bench_with(options: Options, secrets: usize, configmaps: usize) -> Option<Bench> {
    let bin_dir = tempfile::tempdir().expect("temp dir");
    let source = std::env::var_os("ATREST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_atrest")));
    let bin = bin_dir.path().join("atrest");
    std::fs::copy(&source, &bin).expect("copy the atrest binary");
    let started = Instant::now();
    let tb = Testbed::up(options).expect("testbed up");
    eprintln!(
        "testbed up in {:.1} s at {}",
        started.elapsed().as_secs_f64(),
        tb.dir().display()
    );
    let started = Instant::now();
    tb.seed(secrets, configmaps, SIZE).expect("seed");
    eprintln!(
        "seeded {secrets} secrets + {configmaps} configmaps in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Some(Bench {
        tb,
        bin,
        _bin_dir: bin_dir,
        secrets,
        configmaps,
    })
}

impl Bench {
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--config")
            .arg(self.tb.cluster_yml())
            .arg("--known-hosts")
            .arg(self.tb.known_hosts())
            .args(args)
            .env_remove("RKE_CONFIG")
            .env("RUST_LOG", "atrest=info,warn")
            .stdin(Stdio::null());
        c
    }

    /// Runs atrest and returns its output, printing it (visible with --nocapture).
    pub fn run(&self, args: &[&str]) -> Output {
        let started = Instant::now();
        let out = self.command(args).output().expect("run atrest");
        eprintln!(
            "$ atrest {} → {} in {:.1} s\n{}{}",
            args.join(" "),
            out.status,
            started.elapsed().as_secs_f64(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        no_census_repass(&String::from_utf8_lossy(&out.stderr));
        if out.status.success() {
            let repasses = &self.records()["lastCensus"]["repasses"];
            assert!(
                repasses.is_null() || repasses == 0,
                "the last census needed {repasses} more pass(es)"
            );
        }
        out
    }

    /// The names and states of node `n`'s containers (`name state`, one per line).
    #[allow(dead_code)]
    pub fn containers(&self, n: &testbed::harness::Node) -> String {
        let out = self
            .tb
            .docker(n)
            .args(["ps", "-a", "--format", "{{.Names}} {{.State}}"])
            .output()
            .expect("docker ps");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Polls node `n`'s `/readyz` (the admin certificate, directly) until it answers 200, for up to 3 min.
    #[allow(dead_code)]
    pub fn wait_serving(&self, n: &testbed::harness::Node) {
        let probe = self.tb.admin_probe().expect("admin probe");
        let addr = std::net::SocketAddr::new(n.address.into(), 6443);
        testbed::harness::health::wait_until(
            &format!("kube-apiserver of {} to serve", n.name),
            std::time::Duration::from_secs(180),
            std::time::Duration::from_millis(250),
            || {
                Ok(probe
                    .get(addr, "/readyz")
                    .is_ok_and(|(code, _)| code == 200))
            },
        )
        .expect("the node's kube-apiserver serves");
    }

    /// Runs atrest and requires exit 0.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "atrest {} failed", args.join(" "));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Sets `services.kube-api.secrets_encryption_config` in cluster.yml (custom_config as YAML text).
    pub fn set_encryption(&self, enabled: bool, custom_config: Option<&str>) {
        let path = self.tb.cluster_yml();
        let text = std::fs::read_to_string(&path).expect("read cluster.yml");
        let mut doc: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&text).expect("parse cluster.yml");
        let mut sec = serde_yaml_ng::Mapping::new();
        sec.insert("enabled".into(), enabled.into());
        if let Some(custom) = custom_config {
            let c: serde_yaml_ng::Value = serde_yaml_ng::from_str(custom).expect("custom config");
            sec.insert("custom_config".into(), c);
        }
        let services = doc
            .get_mut("services")
            .and_then(|s| s.get_mut("kube-api"))
            .and_then(|k| k.as_mapping_mut())
            .expect("services.kube-api in cluster.yml");
        services.insert(
            "secrets_encryption_config".into(),
            serde_yaml_ng::Value::Mapping(sec),
        );
        std::fs::write(&path, serde_yaml_ng::to_string(&doc).expect("render")).expect("write");
    }

    pub fn state(&self) -> Value {
        let text = std::fs::read_to_string(self.tb.rkestate()).expect("read state");
        serde_json::from_str(&text).expect("state is JSON")
    }

    /// atrest's records file beside the state (`cluster.atreststate`); `Null` when there is none yet.
    pub fn records(&self) -> Value {
        match std::fs::read_to_string(self.records_path()) {
            Ok(text) => serde_json::from_str(&text).expect("records are JSON"),
            Err(_) => Value::Null,
        }
    }

    pub fn records_path(&self) -> std::path::PathBuf {
        self.tb.rkestate().with_extension("atreststate")
    }

    /// The recorded transition's stage, if one is recorded.
    pub fn stage(&self) -> Option<String> {
        self.records()["transition"]["stage"]
            .as_str()
            .map(str::to_string)
    }

    pub fn status(&self) -> Value {
        let out = self.ok(&["encrypt", "status", "-o", "json"]);
        serde_json::from_str(&out).expect("status JSON")
    }

    /// The census from status: resource → label → count.
    pub fn census(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        serde_json::from_value(self.status()["census"].clone()).expect("census")
    }

    /// Every seeded object's bytes read back through the API.
    pub fn verify_seed(&self) {
        let started = Instant::now();
        self.tb
            .verify_seed(self.secrets, self.configmaps, SIZE)
            .expect("every seeded object reads back with its original data");
        eprintln!(
            "verify_seed: {} + {} objects intact ({:.1} s)",
            self.secrets,
            self.configmaps,
            started.elapsed().as_secs_f64()
        );
    }

    /// namespace/name → resourceVersion of every secret and configmap.
    pub fn resource_versions(&self) -> BTreeMap<String, String> {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.tb.kubeconfig())
            .args(["get", "secrets,configmaps", "-A", "-o", "json"])
            .output()
            .expect("kubectl");
        assert!(
            out.status.success(),
            "kubectl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("kubectl JSON");
        v["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| {
                (
                    format!(
                        "{}/{}/{}",
                        i["kind"].as_str().unwrap_or_default(),
                        i["metadata"]["namespace"].as_str().unwrap_or_default(),
                        i["metadata"]["name"].as_str().unwrap_or_default()
                    ),
                    i["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect()
    }

    /// The first bytes of a value in etcd, as text (`k8s:enc:aescbc:v1:<key>:` …).
    pub fn etcd_prefix(&self, key: &str) -> String {
        let out = self
            .tb
            .etcdctl()
            .args(["get", key, "--print-value-only"])
            .output()
            .expect("etcdctl");
        assert!(
            out.status.success(),
            "etcdctl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout[..out.stdout.len().min(60)]).into_owned()
    }
}

impl Bench {
    /// Everything a run could change, as lines to compare: every file under each node's kubernetes dir (where
    /// the encryption config goes) with its mode and sha256; every container on each node (name, id, StartedAt,
    /// restart count, args, binds); and every file beside cluster.yml whose name starts with `cluster` (the
    /// state, the records file, the snapshots directory and its contents) with its sha256.
    pub fn fingerprint(&self) -> Vec<String> {
        let mut out = Vec::new();
        for n in self.tb.nodes() {
            let dir = n.kubernetes_dir();
            for (path, line) in files_under(&dir) {
                out.push(format!("{} file {path} {line}", n.name));
            }
            let ids = self
                .tb
                .docker(n)
                .args(["ps", "-aq", "--no-trunc"])
                .output()
                .expect("docker ps");
            assert!(ids.status.success(), "docker ps on {}", n.name);
            let ids: Vec<String> = String::from_utf8_lossy(&ids.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect();
            assert!(!ids.is_empty(), "no containers on {}", n.name);
            let inspect = self
                .tb
                .docker(n)
                .args([
                    "inspect",
                    "-f",
                    "{{.Name}} {{.Id}} {{.State.StartedAt}} {{.RestartCount}} {{json .Args}} {{json .HostConfig.Binds}}",
                ])
                .args(&ids)
                .output()
                .expect("docker inspect");
            assert!(inspect.status.success(), "docker inspect on {}", n.name);
            let mut containers: Vec<String> = String::from_utf8_lossy(&inspect.stdout)
                .lines()
                .map(|l| format!("{} container {l}", n.name))
                .collect();
            containers.sort();
            out.extend(containers);
        }
        let dir = self.tb.dir();
        for entry in std::fs::read_dir(dir).expect("read the testbed dir") {
            let entry = entry.expect("dir entry");
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with("cluster") {
                continue;
            }
            for (path, line) in files_under(&entry.path()) {
                out.push(format!("local {path} {line}"));
            }
        }
        out.sort();
        out
    }

    /// Runs `args` (which must succeed) and asserts it changed nothing [`Bench::fingerprint`] sees. Returns
    /// its stdout.
    pub fn changes_nothing(&self, args: &[&str]) -> String {
        let before = self.fingerprint();
        assert!(
            before
                .iter()
                .any(|l| l.contains("encryption.yaml") || l.contains("kube-apiserver")),
            "the fingerprint sees the nodes: {before:?}"
        );
        let out = self.run(args);
        assert!(
            out.status.code() == Some(0) || out.status.code() == Some(2),
            "atrest {} failed",
            args.join(" ")
        );
        let after = self.fingerprint();
        let gone: Vec<&String> = before.iter().filter(|l| !after.contains(l)).collect();
        let new: Vec<&String> = after.iter().filter(|l| !before.contains(l)).collect();
        assert!(
            gone.is_empty() && new.is_empty(),
            "atrest {} changed something:\nbefore: {gone:#?}\nafter: {new:#?}",
            args.join(" ")
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Every file under `path` (or `path` itself if it is a file): path → "mode sha256" (symlinks: their target).
fn files_under(path: &std::path::Path) -> Vec<(String, String)> {
    use std::os::unix::fs::PermissionsExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) => panic!("{}: {e}", path.display()),
    };
    let shown = path.display().to_string();
    if meta.is_dir() {
        let mut out = vec![(
            shown,
            format!("dir {:o}", meta.permissions().mode() & 0o7777),
        )];
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .expect("read dir")
            .map(|e| e.expect("dir entry").path())
            .collect();
        entries.sort();
        for e in entries {
            out.extend(files_under(&e));
        }
        out
    } else if meta.file_type().is_symlink() {
        let target = std::fs::read_link(path).expect("read link");
        vec![(shown, format!("link {}", target.display()))]
    } else if meta.is_file() {
        use sha2::Digest;
        let bytes = std::fs::read(path).expect("read file");
        vec![(
            shown,
            format!(
                "{:o} {}",
                meta.permissions().mode() & 0o7777,
                hex::encode(sha2::Sha256::digest(&bytes))
            ),
        )]
    } else {
        vec![(shown, "special".to_string())]
    }
}

/// No flow of the e2e tests has a concurrent writer, so a census that finds leftovers after the rewrite (and
/// rewrites them in another pass) means the rewrite missed objects: fail, even if the second pass repaired it.
pub fn no_census_repass(stderr: &str) {
    assert!(
        !stderr.contains("census needed another pass"),
        "the rewrite left objects behind and the census had to rewrite them again:\n{stderr}"
    );
}

/// Everything in `census[resource]` is on `label`, and there are `n` objects.
pub fn all_on(
    census: &BTreeMap<String, BTreeMap<String, u64>>,
    resource: &str,
    label: &str,
    n: usize,
) {
    let labels = census
        .get(resource)
        .unwrap_or_else(|| panic!("no census of {resource}: {census:?}"));
    assert_eq!(
        labels.get(label).copied().unwrap_or(0),
        n as u64,
        "{resource} should all be on {label}: {labels:?}"
    );
    assert_eq!(
        labels.values().sum::<u64>(),
        n as u64,
        "{resource}: {labels:?}"
    );
}

/// The name of the write key (the first aescbc key) of the config `cluster.rkestate` records as current.
pub fn write_key_name(state: &Value) -> String {
    let yaml = state["currentState"]["encryptionConfig"]
        .as_str()
        .expect("currentState.encryptionConfig");
    let config: serde_yaml_ng::Value = serde_yaml_ng::from_str(yaml).expect("yaml");
    config["resources"][0]["providers"][0]["aescbc"]["keys"][0]["name"]
        .as_str()
        .expect("write key name")
        .to_string()
}

/// A random 32-byte key, base64 (for custom configs).
pub fn random_key() -> String {
    use base64::Engine as _;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Lists every secret through each node's kube-apiserver in turn (a client reading while atrest works), until
/// stopped; counts the lists that did not answer 200 with a `SecretList` (a 500 is an object the server could
/// not decrypt; a refused connection is a server that was down).
pub struct ConcurrentReader {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<ReaderTally>,
}

/// What a [`ConcurrentReader`] saw.
#[derive(Debug, Default)]
pub struct ReaderTally {
    pub lists: u64,
    pub failures: u64,
    /// The first few failures: node, then the status or error.
    pub first_failures: Vec<String>,
}

impl ConcurrentReader {
    pub fn start(b: &Bench) -> Self {
        let probe = b.tb.admin_probe().expect("https probe");
        let nodes: Vec<(String, std::net::SocketAddr)> =
            b.tb.nodes()
                .iter()
                .map(|n| {
                    let addr = (n.address, testbed::harness::APISERVER_PORT);
                    (n.name.clone(), std::net::SocketAddr::from(addr))
                })
                .collect();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut tally = ReaderTally::default();
            for (name, addr) in nodes.iter().cycle() {
                if stopped.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                tally.lists += 1;
                let failure = match probe.get(*addr, "/api/v1/secrets") {
                    Ok((200, body)) if body.contains("\"kind\":\"SecretList\"") => None,
                    Ok((code, body)) => Some(format!(
                        "HTTP {code}: {}",
                        body.chars().take(200).collect::<String>()
                    )),
                    Err(e) => Some(format!("{e:#}")),
                };
                if let Some(failure) = failure {
                    tally.failures += 1;
                    if tally.first_failures.len() < 5 {
                        tally.first_failures.push(format!("{name}: {failure}"));
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            tally
        });
        Self { stop, thread }
    }

    pub fn stop(self) -> ReaderTally {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("reader thread")
    }
}

/// The transition is closed, the state's current config is the desired one, every node's file matches it,
/// `encrypt verify` passes and every seeded object reads back byte-identical.
#[allow(dead_code)]
pub fn assert_complete_and_intact(b: &Bench) {
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

/// Every key in the state (desired and current config) and the records (transition, archive): base64 as written.
#[allow(dead_code)]
pub fn keys_of(b: &Bench) -> Vec<String> {
    let mut keys = Vec::new();
    let state = b.state();
    let records = b.records();
    let texts = [
        &state["desiredState"]["encryptionConfig"],
        &state["currentState"]["encryptionConfig"],
        &records["transition"]["from"],
        &records["transition"]["to"],
    ];
    for text in texts.into_iter().filter_map(|t| t.as_str()) {
        for line in text.lines() {
            if let Some(secret) = line.trim().strip_prefix("secret: ") {
                keys.push(secret.trim_matches('"').to_string());
            }
        }
    }
    for kept in records["archive"].as_array().into_iter().flatten() {
        if let Some(secret) = kept["secret"].as_str() {
            keys.push(secret.to_string());
        }
    }
    keys
}

/// The error a run printed: from its `error: ` line to the end.
#[allow(dead_code)]
pub fn error_of(output: &str) -> String {
    output
        .lines()
        .skip_while(|l| !l.starts_with("error: "))
        .collect::<Vec<_>>()
        .join("\n")
}
