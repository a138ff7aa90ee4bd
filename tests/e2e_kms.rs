//! KMS end to end on a 3-node testbed with a `kms-plugin` per node (real sshd, dockerd, the real kube-apiserver and etcd):
//! aescbc → kms v2 with the socket bind added from `extra_binds`, a plugin key rotation finished by a targeted
//! re-wrap, kms → aescbc, KMS v1 with the Go plugin the real server can use and back to aescbc, a KMS v1 provider
//! the server cannot use (rolled back, naming the failing check; with automatic reload, put back with the server's
//! reason), and a refused run when one node's plugin is down.
//! Needs root.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_yaml_ng::Value;
use testbed::harness::kms::KMS_ENDPOINT;
use testbed::harness::{Apiserver, Options, Testbed};

const SECRETS: usize = 60;
const SIZE: usize = 256;
const PROVIDER: &str = "testbed-kms";

/// True when the test may run (`testbed::skip`: always as root; a visible, counted skip otherwise).
fn may_run() -> bool {
    testbed::skip::may_run(std::thread::current().name().unwrap_or("testbed"))
}

fn bed() -> Testbed {
    bed_with(
        Apiserver::upstream()
            .expect("the real kube-apiserver and etcd (scripts/build-upstream.sh)"),
        Vec::new(),
    )
}

/// A testbed on `apiserver` whose kube-apiservers also get `apiserver_args`.
fn bed_with(apiserver: Apiserver, apiserver_args: Vec<String>) -> Testbed {
    let tb = Testbed::up(Options {
        apiserver,
        kms: true,
        apiserver_args,
        ..Options::default()
    })
    .expect("testbed up");
    tb.seed(SECRETS, 0, SIZE).expect("seed");
    tb
}

/// A testbed whose kube-apiservers run with KMS v1 enabled (`--feature-gates=KMSv1=true`, deprecated since 1.29).
fn kms_v1_bed() -> Testbed {
    bed_with(
        Apiserver::upstream()
            .expect("the real kube-apiserver and etcd (scripts/build-upstream.sh)"),
        vec!["--feature-gates=KMSv1=true".into()],
    )
}

/// `up` to the cluster.yml as it is (an aescbc config); every secret ends on `aescbc:k1`. Returns the census.
fn up_to_aescbc(tb: &Testbed) -> BTreeMap<String, u64> {
    let (ok, out) = atrest(tb, &["up"]);
    assert!(ok, "up to aescbc failed:\n{out}");
    let census = census(tb);
    assert!(only_label_prefix(&census, "aescbc:k1"), "{census:?}");
    census
}

fn aescbc_config() -> Value {
    serde_yaml_ng::from_str(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aescbc:\n      keys:\n      - name: k1\n        secret: c2VjcmV0IGlzIHNlY3VyZSwgaXMgaXQgbm90PyEhISE=\n  - identity: {}\n",
    )
    .expect("yaml")
}

fn kms_config() -> Value {
    serde_yaml_ng::from_str(&format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - kms:\n      apiVersion: v2\n      name: {PROVIDER}\n      endpoint: {KMS_ENDPOINT}\n      timeout: 3s\n  - identity: {{}}\n"
    ))
    .expect("yaml")
}

/// KMS v1 (deprecated; kube-apiserver needs `--feature-gates=KMSv1=true` since 1.29): a DEK per write, cached.
fn kms_v1_config() -> Value {
    serde_yaml_ng::from_str(&format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - kms:\n      apiVersion: v1\n      name: {PROVIDER}\n      endpoint: {KMS_ENDPOINT}\n      cachesize: 100\n      timeout: 3s\n  - aescbc:\n      keys:\n      - name: k1\n        secret: c2VjcmV0IGlzIHNlY3VyZSwgaXMgaXQgbm90PyEhISE=\n  - identity: {{}}\n"
    ))
    .expect("yaml")
}

/// Edits `services.kube-api` of the testbed's cluster.yml with `edit`.
fn edit_kube_api(tb: &Testbed, edit: impl FnOnce(&mut serde_yaml_ng::Mapping)) {
    let path = tb.cluster_yml();
    let text = std::fs::read_to_string(&path).expect("cluster.yml");
    let mut doc: Value = serde_yaml_ng::from_str(&text).expect("cluster.yml parses");
    let api = doc
        .get_mut("services")
        .and_then(|s| s.get_mut("kube-api"))
        .and_then(Value::as_mapping_mut)
        .expect("services.kube-api");
    edit(api);
    std::fs::write(&path, serde_yaml_ng::to_string(&doc).expect("yaml"))
        .expect("write cluster.yml");
}

/// Rewrites the testbed's cluster.yml with `custom_config` and, when `bind`, the plugin socket dir in extra_binds.
fn set_cluster(tb: &Testbed, custom: Value, bind: bool) {
    edit_kube_api(tb, |api| {
        api.remove("extra_binds");
        if bind {
            api.insert(
                "extra_binds".into(),
                serde_yaml_ng::from_str("['/var/run/kmsplugin:/var/run/kmsplugin']").expect("yaml"),
            );
        }
        let mut sec = serde_yaml_ng::Mapping::new();
        sec.insert("enabled".into(), true.into());
        sec.insert("custom_config".into(), custom);
        api.insert("secrets_encryption_config".into(), Value::Mapping(sec));
    });
}

fn atrest(tb: &Testbed, args: &[&str]) -> (bool, String) {
    let started = Instant::now();
    let out = atrest_output(tb, args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "$ atrest {} ({:.1} s, {})\n{text}",
        args.join(" "),
        started.elapsed().as_secs_f64(),
        out.status
    );
    // No concurrent writer here: a census that had to rewrite leftovers again means the rewrite missed some.
    assert!(
        !text.contains("census needed another pass"),
        "the rewrite left objects behind and the census had to rewrite them again"
    );
    (out.status.success(), text)
}

/// Runs atrest on the testbed with `--yes --no-snapshot` and `args`.
fn atrest_output(tb: &Testbed, args: &[&str]) -> std::process::Output {
    // ATREST_BIN: a private copy, since the shared target dir's binary may be another branch's build.
    let bin = std::env::var_os("ATREST_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_atrest").into());
    Command::new(bin)
        .arg("--config")
        .arg(tb.cluster_yml())
        .arg("--known-hosts")
        .arg(tb.known_hosts())
        .args(["--yes", "--no-snapshot"])
        .args(args)
        .output()
        .expect("running atrest")
}

/// Census of `/registry/secrets/` straight from etcd: label → count (atrest's classifier).
fn census(tb: &Testbed) -> BTreeMap<String, u64> {
    let out = tb
        .etcdctl()
        .args(["get", "/registry/secrets/", "--prefix", "-w", "json"])
        .output()
        .expect("etcdctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("etcdctl json");
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut counts = BTreeMap::new();
    for kv in v["kvs"].as_array().cloned().unwrap_or_default() {
        let value = b64
            .decode(kv["value"].as_str().unwrap_or_default())
            .expect("base64 value");
        *counts
            .entry(atrest::exec::etcd::classify(&value))
            .or_insert(0) += 1;
    }
    // Every bed holds exactly the seeded secrets: a census of nothing (a wrong prefix, an emptied etcd) must
    // not pass the checks below vacuously.
    assert_eq!(
        counts.values().sum::<u64>(),
        SECRETS as u64,
        "census of /registry/secrets/: {counts:?}"
    );
    counts
}

/// Every counted secret is on a label starting with `prefix`, and there is at least one.
fn only_label_prefix(c: &BTreeMap<String, u64>, prefix: &str) -> bool {
    !c.is_empty() && c.keys().all(|l| l.starts_with(prefix))
}

fn sha_of(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(b) => atrest::exec::files::sha256_hex(&b),
        Err(_) => "(absent)".into(),
    }
}

/// What must not change when a run is refused: every node's encryption config and container, the state file.
fn fingerprint(tb: &Testbed) -> Vec<String> {
    let mut out = vec![format!("state {}", sha_of(&tb.rkestate()))];
    for n in tb.nodes() {
        out.push(format!(
            "{} config {}",
            n.name,
            sha_of(&n.kubernetes_dir().join("ssl/encryption.yaml"))
        ));
        let inspect = tb
            .docker(n)
            .args([
                "inspect",
                "-f",
                "{{.Id}} {{.State.StartedAt}} {{json .HostConfig.Binds}} {{json .Args}}",
                "kube-apiserver",
            ])
            .output()
            .expect("docker inspect");
        out.push(format!(
            "{} container {}",
            n.name,
            String::from_utf8_lossy(&inspect.stdout).trim()
        ));
    }
    out
}

fn apiserver_binds(tb: &Testbed, n: &testbed::harness::Node) -> String {
    let out = tb
        .docker(n)
        .args([
            "inspect",
            "-f",
            "{{json .HostConfig.Binds}}",
            "kube-apiserver",
        ])
        .output()
        .expect("docker inspect");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn https_probe(tb: &Testbed) -> testbed::harness::health::HttpsProbe {
    tb.admin_probe().expect("https probe")
}

fn apiserver_addr(n: &testbed::harness::Node) -> std::net::SocketAddr {
    std::net::SocketAddr::from((n.address, testbed::harness::APISERVER_PORT))
}

#[test]
fn aescbc_to_kms_v2_rotate_plugin_key_and_back_to_aescbc() {
    if !may_run() {
        return;
    }
    let mut tb = bed();
    for n in tb.nodes() {
        assert!(
            !apiserver_binds(&tb, n).contains("kmsplugin"),
            "the testbed must start without the kmsplugin bind"
        );
    }

    // 1. aescbc.
    set_cluster(&tb, aescbc_config(), true);
    let (ok, out) = atrest(&tb, &["up"]);
    assert!(ok, "up to aescbc failed:\n{out}");
    let c = census(&tb);
    assert_eq!(c.get("aescbc:k1").copied(), Some(c.values().sum()), "{c:?}");

    // 2. aescbc → kms v2: the container gets the socket bind, every secret ends on the plugin's key.
    let key1 = std::fs::read_to_string(tb.kms_key_file())
        .expect("kek")
        .lines()
        .find(|l| !l.starts_with('#') && !l.is_empty())
        .and_then(|l| l.split(':').next().map(str::to_string))
        .expect("kek id");
    set_cluster(&tb, kms_config(), true);
    let (ok, out) = atrest(&tb, &["up"]);
    assert!(ok, "up to kms failed:\n{out}");
    for n in tb.nodes() {
        assert!(
            apiserver_binds(&tb, n).contains("/var/run/kmsplugin:/var/run/kmsplugin"),
            "{}: {}",
            n.name,
            apiserver_binds(&tb, n)
        );
    }
    let c = census(&tb);
    let label1 = format!("kms:v2:{PROVIDER}:{key1}");
    assert_eq!(c.get(&label1).copied(), Some(c.values().sum()), "{c:?}");
    let report = tb
        .verify_seed(SECRETS, 0, SIZE)
        .expect("secrets readable after kms");
    println!("verified after kms: {report:?}");
    let (ok, status) = atrest(&tb, &["encrypt", "status"]);
    assert!(ok, "{status}");
    assert!(
        status.contains(&format!("KMS v2 {PROVIDER} on "))
            && status.contains(&format!("key_id {key1}")),
        "{status}"
    );

    // kube-apiserver's KMS v2 health check (§4) passes on every node; a plugin made unhealthy shows there.
    let probe = https_probe(&tb);
    for n in tb.nodes() {
        let (code, body) = probe
            .get(apiserver_addr(n), "/readyz/kms-providers")
            .expect("readyz");
        assert_eq!((code, body.as_str()), (200, "ok"), "{}", n.name);
        let (_, verbose) = probe
            .get(apiserver_addr(n), "/readyz?verbose")
            .expect("readyz");
        assert!(verbose.contains("[+]kms-providers ok"), "{verbose}");
    }
    let node3 = tb.nodes()[2].clone();
    tb.kms_set_unhealthy(&node3, true).expect("unhealthy");
    // kube-apiserver caches a good answer for 20 s: poll until the unhealthy plugin shows (well past the cache),
    // rather than sleeping past it and hoping.
    let healthz = |want: u16, within: Duration| -> String {
        let started = Instant::now();
        loop {
            let (code, body) = probe
                .get(apiserver_addr(&node3), "/healthz/kms-providers")
                .expect("healthz");
            if code == want {
                eprintln!(
                    "/healthz/kms-providers answered {code} after {:.1} s",
                    started.elapsed().as_secs_f64()
                );
                return body;
            }
            assert!(
                started.elapsed() < within,
                "/healthz/kms-providers still {code} after {within:?} (want {want}): {body}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    let body = healthz(500, Duration::from_secs(90));
    assert!(
        body.contains(&format!("kmsv2 Provider {PROVIDER} is not healthy")),
        "{body}"
    );
    tb.kms_set_unhealthy(&node3, false).expect("healthy again");
    // A failed check is not cached for long: healthy again within the cache's lifetime.
    healthz(200, Duration::from_secs(30));

    // 3. The plugin's key rotates: a targeted re-wrap moves every secret to the new key id.
    let key2 = tb.kms_rotate().expect("rotate");
    assert_ne!(key1, key2);
    let (ok, plan) = atrest(&tb, &["plan"]);
    assert!(ok, "{plan}");
    assert!(plan.contains("kms-rewrap"), "{plan}");
    // What a pipeline reads: the same plan as one JSON document on stdout, and exit 2 for "changes".
    let out = atrest_output(&tb, &["plan", "-o", "json", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan -o json is JSON");
    assert_eq!(doc["hasChanges"], true, "{doc:#}");
    assert_eq!(doc["plan"]["kind"], "kms-rewrap", "{doc:#}");
    let label1 = format!("kms:v2:{PROVIDER}:{key1}");
    let rewrap = &doc["plan"]["rewrap"][0];
    assert_eq!(rewrap["resource"], "secrets", "{doc:#}");
    assert_eq!(
        rewrap["target"],
        format!("kms:v2:{PROVIDER}:{key2}"),
        "{doc:#}"
    );
    assert!(rewrap["objects"].as_u64().is_some_and(|n| n > 0), "{doc:#}");
    assert_eq!(rewrap["stored"][&label1], rewrap["objects"], "{doc:#}");
    let (ok, out) = atrest(&tb, &["up"]);
    assert!(ok, "kms re-wrap failed:\n{out}");
    let c = census(&tb);
    let label2 = format!("kms:v2:{PROVIDER}:{key2}");
    assert_eq!(c.get(&label2).copied(), Some(c.values().sum()), "{c:?}");
    tb.verify_seed(SECRETS, 0, SIZE)
        .expect("secrets readable after re-wrap");
    let (ok, plan) = atrest(&tb, &["plan"]);
    assert!(ok && !plan.contains("kms-rewrap"), "{plan}");

    // 4. kms → aescbc.
    back_to_aescbc(&mut tb);
}

/// `up` to the aescbc config; every secret ends on `aescbc:k1` and reads back. Then the testbed goes down.
fn back_to_aescbc(tb: &mut Testbed) {
    set_cluster(tb, aescbc_config(), true);
    let (ok, out) = atrest(tb, &["up"]);
    assert!(ok, "up back to aescbc failed:\n{out}");
    let c = census(tb);
    assert!(only_label_prefix(&c, "aescbc:k1"), "{c:?}");
    tb.verify_seed(SECRETS, 0, SIZE)
        .expect("secrets readable after leaving kms");
    tb.down().expect("down");
}

/// The node parts of [`fingerprint`] (not the state file, where a stopped run records its transition), with the
/// container's start time left out for `restarted` (a node put back is the same container, started again).
fn node_fingerprint(tb: &Testbed, restarted: &str) -> Vec<String> {
    fingerprint(tb)
        .into_iter()
        .filter(|line| !line.starts_with("state "))
        .map(|line| {
            if line.starts_with(&format!("{restarted} container ")) {
                let mut words: Vec<&str> = line.split(' ').collect();
                words.remove(3); // "<node> container <id> <started> …"
                words.join(" ")
            } else {
                line
            }
        })
        .collect()
}

/// KMS v1 end to end with a plugin the real server can use (the Go one, testbed/upstream/kms-plugin-v1, on the
/// same shared KEK file): identity → kms v1 puts every secret on the v1 provider (the plugin wraps a DEK per
/// write), `encrypt status` reports the plugin healthy on every node, and kms v1 → aescbc reads every secret back
/// through the plugin and ends with all of them on the aescbc key.
#[test]
fn kms_v1_with_a_plugin_the_server_accepts_and_back_to_aescbc() {
    if !may_run() {
        return;
    }
    let mut tb = kms_v1_bed();
    let plugin = testbed::harness::upstream::kms_plugin_v1_binary()
        .expect("the Go KMS v1 plugin (scripts/build-upstream.sh)");
    for n in tb.nodes().to_vec() {
        tb.kms_stop(&n).expect("stopping the Rust plugin");
        tb.kms_start_with(&n, &plugin)
            .expect("starting the Go v1 plugin");
    }
    assert!(only_label_prefix(&census(&tb), "identity"));

    set_cluster(&tb, kms_v1_config(), true);
    let (ok, out) = atrest(&tb, &["up"]);
    assert!(ok, "up to kms v1 failed:\n{out}");
    let c = census(&tb);
    let label = format!("kms:v1:{PROVIDER}");
    assert_eq!(c.get(&label).copied(), Some(c.values().sum()), "{c:?}");
    tb.verify_seed(SECRETS, 0, SIZE)
        .expect("secrets readable on kms v1");
    let (ok, status) = atrest(&tb, &["encrypt", "status"]);
    assert!(ok, "{status}");
    for n in tb.nodes() {
        let line = format!("KMS v1 {PROVIDER} on {}: healthy (v1beta1)", n.address);
        assert!(status.contains(&line), "no {line:?} in:\n{status}");
    }

    back_to_aescbc(&mut tb);
}

/// A KMS v1 provider whose plugin the real server cannot use: kube-apiserver's v1 client (unlike its v2 one) sends
/// the socket path as the HTTP/2 `:authority`, which this project's plugin (Rust, h2) rejects as malformed, so
/// the server's `kms-provider-0` readiness check never passes. A real cause of the fault every KMS user fears: a
/// config the server cannot load. The first node is put back (file and container), the others are never
/// touched, every secret stays where it was, the error names the failing check, and a return to the old config
/// finishes cleanly. (The Go plugin is the v1 plugin the server accepts: the test above.)
#[test]
fn a_kms_v1_plugin_the_server_cannot_use_is_rolled_back_naming_the_check() {
    if !may_run() {
        return;
    }
    let mut tb = kms_v1_bed();
    set_cluster(&tb, aescbc_config(), true);
    let census_before = up_to_aescbc(&tb);
    let node1 = tb.nodes()[0].name.clone();
    let before = node_fingerprint(&tb, &node1);

    set_cluster(&tb, kms_v1_config(), true);
    let (ok, out) = atrest(&tb, &["--ready-timeout", "30", "up"]);
    assert!(!ok, "up to kms v1 must fail:\n{out}");
    assert!(out.contains("not ready after 30s"), "{out}");
    assert!(out.contains("failing: kms-provider-0"), "{out}");
    assert!(
        out.contains("restored to its previous file and container")
            && out.contains("Nodes changed before it: none"),
        "{out}"
    );
    assert_eq!(
        node_fingerprint(&tb, &node1),
        before,
        "a node was left changed"
    );
    assert_eq!(census(&tb), census_before);
    tb.verify_seed(SECRETS, 0, SIZE)
        .expect("secrets readable after the rollback");

    // The change reverted (as a reviewed revert in git would): the stopped transition, which changed nothing, is
    // dropped rather than forced through first, and nothing else is done.
    set_cluster(&tb, aescbc_config(), true);
    let (ok, out) = atrest(&tb, &["plan", "--detailed-exitcode"]);
    assert!(!ok && out.contains("it is dropped, not finished"), "{out}");
    let (ok, out) = atrest(&tb, &["up"]);
    assert!(ok, "up back to aescbc failed:\n{out}");
    assert!(
        out.contains("dropped the recorded managed-to-custom transition"),
        "{out}"
    );
    assert_eq!(node_fingerprint(&tb, &node1), before);
    let (ok, out) = atrest(&tb, &["plan", "--detailed-exitcode"]);
    assert!(ok && out.contains("Nothing to do"), "{out}");
    assert_eq!(census(&tb), census_before);
    tb.down().expect("down");
}

/// Adds `services.kube-api.extra_args.encryption-provider-config-automatic-reload: "true"` to cluster.yml: the next
/// recreate (enable) adds the flag with the config flag, and later key changes reload instead of restarting.
fn ask_for_reload(tb: &Testbed) {
    edit_kube_api(tb, |api| {
        api.insert(
            "extra_args".into(),
            serde_yaml_ng::from_str("{encryption-provider-config-automatic-reload: 'true'}")
                .expect("yaml"),
        );
    });
}

/// A config the servers refuse to reload: with automatic reload on, a KMS v1 provider on the Rust plugin (which the
/// server's v1 client cannot reach, see above; atrest's own pre-flight reaches it) is written to the first phase's
/// nodes. The server checks the new provider's health before it swaps configs, counts a failed reload and keeps
/// its previous config; atrest puts the previous file back, restarts nothing, and stops with the server's reason.
/// Every node, container and secret is as before.
#[test]
fn a_config_the_server_refuses_to_reload_is_put_back_with_its_reason() {
    if !may_run() {
        return;
    }
    let mut tb = kms_v1_bed();
    set_cluster(&tb, aescbc_config(), true);
    ask_for_reload(&tb);
    let census_before = up_to_aescbc(&tb);
    // No node is restarted from here on: the whole fingerprint, start times included, must stay.
    let before = node_fingerprint(&tb, "");
    for n in tb.nodes() {
        assert!(
            before
                .iter()
                .any(|l| l.starts_with(&format!("{} container ", n.name))
                    && l.contains("--encryption-provider-config-automatic-reload=true")),
            "{}: no reload flag",
            n.name
        );
    }

    set_cluster(&tb, kms_v1_config(), true);
    let (ok, out) = atrest(&tb, &["up"]);
    assert!(!ok, "up to kms v1 must fail:\n{out}");
    assert!(
        out.contains("kube-apiserver refused the new encryption config (")
            && out.contains("its previous file was put back"),
        "{out}"
    );
    assert!(
        !out.contains("restarted,") && !out.contains("recreated,"),
        "{out}"
    );
    assert_eq!(
        node_fingerprint(&tb, ""),
        before,
        "a node's file or container changed"
    );
    assert_eq!(census(&tb), census_before);
    tb.verify_seed(SECRETS, 0, SIZE)
        .expect("secrets readable after the refused reload");
    tb.down().expect("down");
}

#[test]
fn plugin_down_on_one_node_is_refused_before_any_change() {
    if !may_run() {
        return;
    }
    let mut tb = bed();
    let node2 = tb.nodes()[1].clone();
    tb.kms_stop(&node2).expect("stop node2's plugin");
    set_cluster(&tb, kms_config(), true);
    let before = fingerprint(&tb);
    let census_before = census(&tb);
    let (ok, out) = atrest(&tb, &["up"]);
    assert!(!ok, "up must be refused:\n{out}");
    assert!(out.contains("nothing was changed"), "{out}");
    assert!(
        out.contains(&format!("node {}", node2.address)) && out.contains("no plugin socket"),
        "{out}"
    );
    assert_eq!(fingerprint(&tb), before, "a refused run changed something");
    assert_eq!(census(&tb), census_before);

    // Unhealthy (socket present, Status not ok) is refused the same way.
    tb.kms_start(&node2).expect("start node2's plugin");
    tb.kms_set_unhealthy(&node2, true).expect("unhealthy");
    let (ok, out) = atrest(&tb, &["up"]);
    assert!(!ok, "up must be refused:\n{out}");
    assert!(
        out.contains(&format!("node {}", node2.address)) && out.contains("not healthy"),
        "{out}"
    );
    assert_eq!(fingerprint(&tb), before, "a refused run changed something");

    // No extra_binds: refused, naming the missing bind.
    tb.kms_set_unhealthy(&node2, false).expect("healthy");
    set_cluster(&tb, kms_config(), false);
    let before = fingerprint(&tb);
    let (ok, out) = atrest(&tb, &["up"]);
    assert!(!ok && out.contains("extra_binds"), "{out}");
    assert_eq!(fingerprint(&tb), before);
    tb.down().expect("down");
}
