//! End-to-end tests of the kube-apiserver stand-in against a real etcd (TLS, own data dir) with
//! kubectl 1.32, etcdctl and curl as clients.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;
use testbed::harness::local::{LocalEtcd, LocalStandin};

const KEY_A: &str = "c2VjcmV0IGlzIHNlY3VyZQ=="; // "secret is secure", 16 bytes
const KEY_B: &str = "YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXoxMjM0NTY="; // 32 bytes

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A loopback address of our own so parallel tests and other agents do not collide.
fn fresh_ip() -> Ipv4Addr {
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let x = (std::process::id().wrapping_mul(31).wrapping_add(n * 17) % 240) + 10;
    Ipv4Addr::new(127, 0, 99, x as u8)
}

/// Everything one test needs: tempdir, etcd (with the PKI) and the stand-in's command line and kubeconfig.
struct Env {
    dir: tempfile::TempDir,
    etcd: LocalEtcd,
    api: LocalStandin,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let mut etcd =
            LocalEtcd::start_in(&dir.path().join("etcd"), fresh_ip().into(), true).unwrap();
        etcd.wait_listening().unwrap();
        let api = LocalStandin::prepare(&etcd, &dir.path().join("apiserver")).unwrap();
        Env { dir, etcd, api }
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn apiserver_command(&self, extra: &[String]) -> Command {
        // RKE passes many flags the stand-in ignores.
        let mut flags: Vec<String> = [
            "--allow-privileged=true",
            "--service-cluster-ip-range",
            "10.43.0.0/16",
            "--profiling=false",
        ]
        .map(String::from)
        .to_vec();
        flags.extend_from_slice(extra);
        self.api.command(&flags)
    }

    /// Starts the stand-in and waits for /readyz.
    fn start(&self, extra: &[String]) -> ApiServer {
        let stderr = std::fs::File::create(self.dir.path().join("apiserver.log")).unwrap();
        let child = self
            .apiserver_command(extra)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut api = ApiServer { child: Some(child) };
        let start = Instant::now();
        loop {
            if let Some(status) = api.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("stand-in exited with {status}: {}", self.log());
            }
            let (code, body) = self.curl("GET", "/readyz", None);
            if code == 200 && body == "ok" {
                return api;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "stand-in not ready: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("apiserver.log")).unwrap_or_default()
    }

    fn encryption_config(&self, name: &str, providers: &str) -> String {
        let text = format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets]\n    providers:\n{providers}"
        );
        let p = self.write(name, &text);
        format!("--encryption-provider-config={}", p.display())
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new("kubectl")
            .arg(format!("--kubeconfig={}", self.api.kubeconfig.display()))
            .arg(format!(
                "--cache-dir={}",
                self.dir.path().join("kube-cache").display()
            ))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
        drop(input);
        child.wait_with_output().unwrap()
    }

    fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn get_json(&self, args: &[&str]) -> Value {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.kubectl_ok(&a, None)).unwrap()
    }

    /// A raw request with the admin client certificate: (HTTP code, body).
    fn curl(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        self.curl_as(
            method,
            path,
            body,
            &[
                "--cert",
                &s(&self.etcd.pki.client_cert_file()),
                "--key",
                &s(&self.etcd.pki.client_key_file()),
            ],
        )
    }

    fn curl_as(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        auth: &[&str],
    ) -> (u16, String) {
        let url = format!("{}{path}", self.api.url);
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "--cacert",
            &s(&self.etcd.pki.ca_file()),
            "-X",
            method,
        ])
        .args(auth)
        .args(["-H", "Content-Type: application/json"]);
        if body.is_some() {
            cmd.args(["--data-binary", "@-"]);
        }
        let mut child = cmd
            .arg(url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        input.write_all(body.unwrap_or("").as_bytes()).unwrap();
        drop(input);
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (
            code.trim().parse().unwrap_or(0),
            body.trim_end_matches('\n').to_string(),
        )
    }

    fn etcdctl(&self, args: &[&str]) -> Output {
        self.etcd.etcdctl().args(args).output().unwrap()
    }

    /// The raw stored value of an etcd key.
    fn etcd_value(&self, key: &str) -> Vec<u8> {
        let out = self.etcdctl(&["get", key, "-w", "json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let b64 = v["kvs"][0]["value"]
            .as_str()
            .unwrap_or_else(|| panic!("no etcd key {key}"));
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap()
    }

    fn etcd_put(&self, key: &str, value: &[u8]) {
        let mut child = self
            .etcd
            .etcdctl()
            .args(["put", key])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        input.write_all(value).unwrap();
        drop(input);
        assert!(child.wait().unwrap().success());
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// The stand-in process; killed if a test fails before stopping it.
struct ApiServer {
    child: Option<Child>,
}

impl ApiServer {
    /// SIGTERM, as `docker stop` sends to PID 1; returns how long the exit took and its status.
    fn terminate(mut self) -> (Duration, std::process::ExitStatus) {
        let mut child = self.child.take().unwrap();
        let start = Instant::now();
        let pid = child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let status = child.wait().unwrap();
        (start.elapsed(), status)
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn rv(obj: &Value) -> String {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string()
}

fn providers_aescbc(name: &str, key: &str) -> String {
    format!(
        "      - aescbc:\n          keys:\n            - name: {name}\n              secret: {key}\n"
    )
}

const IDENTITY: &str = "      - identity: {}\n";

#[test]
fn kubectl_round_trips_and_upstream_errors() {
    let env = Env::new();
    let enc = env.encryption_config(
        "enc.yaml",
        &format!("{}{IDENTITY}", providers_aescbc("key1", KEY_A)),
    );
    let api = env.start(&[enc]);

    let out = env.kubectl_ok(
        &[
            "create",
            "secret",
            "generic",
            "s1",
            "--from-literal=user=admin",
        ],
        None,
    );
    assert_eq!(out.trim(), "secret/s1 created");
    let stored = env.etcd_value("/registry/secrets/default/s1");
    assert!(
        stored.starts_with(b"k8s:enc:aescbc:v1:key1:"),
        "{}",
        String::from_utf8_lossy(&stored)
    );

    let s1 = env.get_json(&["secret", "s1"]);
    assert_eq!(s1["data"]["user"], "YWRtaW4=");
    assert_eq!(s1["type"], "Opaque");
    assert!(!s1["metadata"]["uid"].as_str().unwrap().is_empty());
    assert!(
        s1["metadata"]["creationTimestamp"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );

    // A no-op replace writes nothing: same resourceVersion, same stored bytes (fresh IV would differ).
    let text = serde_json::to_string(&s1).unwrap();
    env.kubectl_ok(&["replace", "-f", "-"], Some(&text));
    assert_eq!(rv(&env.get_json(&["secret", "s1"])), rv(&s1));
    assert_eq!(env.etcd_value("/registry/secrets/default/s1"), stored);

    // A real change writes and bumps the resourceVersion.
    let mut changed = s1.clone();
    changed["data"]["user"] = Value::String("cm9vdA==".into());
    env.kubectl_ok(&["replace", "-f", "-"], Some(&changed.to_string()));
    let s1b = env.get_json(&["secret", "s1"]);
    assert_ne!(rv(&s1b), rv(&s1));
    assert_eq!(s1b["data"]["user"], "cm9vdA==");

    // Replacing with the old resourceVersion is a 409 Conflict with upstream's body.
    let (code, body) = env.curl(
        "PUT",
        "/api/v1/namespaces/default/secrets/s1",
        Some(&s1.to_string()),
    );
    assert_eq!(code, 409, "{body}");
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        status,
        serde_json::json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Operation cannot be fulfilled on secrets \"s1\": the object has been modified; please apply your changes to the latest version and try again","reason":"Conflict","details":{"name":"s1","kind":"secrets"},"code":409})
    );
    // …and kubectl reports it the way it reports upstream's.
    let out = env.kubectl(&["replace", "-f", "-"], Some(&s1.to_string()));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("Operation cannot be fulfilled on secrets \"s1\"")
    );

    // Unconditional update (empty resourceVersion) is allowed for secrets.
    let mut uncond = s1b.clone();
    uncond["metadata"]["resourceVersion"] = Value::String(String::new());
    uncond["data"]["user"] = Value::String("eA==".into());
    let (code, body) = env.curl(
        "PUT",
        "/api/v1/namespaces/default/secrets/s1",
        Some(&uncond.to_string()),
    );
    assert_eq!(code, 200, "{body}");

    let (code, body) = env.curl("GET", "/api/v1/namespaces/default/secrets/nope", None);
    assert_eq!(code, 404);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        serde_json::json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"secrets \"nope\" not found","reason":"NotFound","details":{"name":"nope","kind":"secrets"},"code":404})
    );
    let out = env.kubectl(
        &["create", "secret", "generic", "s1", "--from-literal=a=b"],
        None,
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("secrets \"s1\" already exists"));
    let out = env.kubectl(
        &[
            "-n",
            "missing",
            "create",
            "secret",
            "generic",
            "x",
            "--from-literal=a=b",
        ],
        None,
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("namespaces \"missing\" not found"));
    let (code, body) = env.curl(
        "POST",
        "/api/v1/namespaces/default/secrets",
        Some(r#"{"metadata":{"name":"Bad_Name"}}"#),
    );
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("\"reason\":\"Invalid\""));

    // Other kinds and all-namespace lists.
    env.kubectl_ok(&["create", "namespace", "team-a"], None);
    env.kubectl_ok(
        &[
            "-n",
            "team-a",
            "create",
            "configmap",
            "c1",
            "--from-literal=k=v",
        ],
        None,
    );
    env.kubectl_ok(
        &[
            "-n",
            "team-a",
            "create",
            "secret",
            "generic",
            "s2",
            "--from-literal=k=v",
        ],
        None,
    );
    let all = env.get_json(&["secrets", "-A"]);
    let names: Vec<&str> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["s1", "s2"]);
    let cm = env.etcd_value("/registry/configmaps/team-a/c1");
    assert!(
        cm.starts_with(b"{\"kind\":\"ConfigMap\",\"apiVersion\":\"v1\""),
        "configmaps are not covered: identity"
    );
    assert!(cm.ends_with(b"}\n"));

    // The documented rewrite command works as is.
    let all_json = env.kubectl_ok(&["get", "secrets", "--all-namespaces", "-o", "json"], None);
    let out = env.kubectl_ok(&["replace", "-f", "-"], Some(&all_json));
    assert!(
        out.contains("secret/s1 replaced") && out.contains("secret/s2 replaced"),
        "{out}"
    );

    // kubectl label sends a strategic merge patch.
    env.kubectl_ok(&["label", "secret", "s1", "team=blue"], None);
    let labelled = env.get_json(&["secret", "s1"]);
    assert_eq!(labelled["metadata"]["labels"]["team"], "blue");
    assert_eq!(labelled["data"]["user"], "eA==");
    assert!(
        env.etcd_value("/registry/secrets/default/s1")
            .starts_with(b"k8s:enc:aescbc:v1:key1:")
    );

    let out = env.kubectl_ok(&["delete", "secret", "s1"], None);
    assert_eq!(out.trim(), "secret \"s1\" deleted");
    assert_eq!(
        env.curl("GET", "/api/v1/namespaces/default/secrets/s1", None)
            .0,
        404
    );

    // Metrics count the transformations.
    let (_, metrics) = env.curl("GET", "/metrics", None);
    assert!(
        metrics.contains(
            "transformation_type=\"to_storage\",transformer_prefix=\"k8s:enc:aescbc:v1:\""
        ),
        "{metrics}"
    );

    let (took, status) = api.terminate();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert!(took < Duration::from_secs(3), "SIGTERM took {took:?}");
}

#[test]
fn pagination_is_a_consistent_snapshot_and_expires_after_compaction() {
    let env = Env::new();
    let _api = env.start(&[]);
    for i in 1..=5 {
        env.kubectl_ok(
            &[
                "create",
                "secret",
                "generic",
                &format!("p{i}"),
                &format!("--from-literal=n={i}"),
            ],
            None,
        );
    }
    // resourceVersion=0 is a watch-cache read upstream: limit is ignored.
    let (_, body) = env.curl(
        "GET",
        "/api/v1/namespaces/default/secrets?limit=2&resourceVersion=0",
        None,
    );
    let unpaged: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(unpaged["items"].as_array().unwrap().len(), 5);
    assert!(unpaged["metadata"].get("continue").is_none());
    let (code, body) = env.curl("GET", "/api/v1/namespaces/default/secrets?limit=2", None);
    assert_eq!(code, 200);
    let page1: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page1["metadata"]["remainingItemCount"], 3);
    let list_rv = page1["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let token = page1["metadata"]["continue"].as_str().unwrap().to_string();
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&token)
        .unwrap();
    assert_eq!(
        String::from_utf8(raw).unwrap(),
        format!("{{\"v\":\"meta.k8s.io/v1\",\"rv\":{list_rv},\"start\":\"p2\\u0000\"}}")
    );

    // A change after the first page is not seen by the next pages (same snapshot).
    let mut p3 = env.get_json(&["secret", "p3"]);
    p3["data"]["n"] = Value::String("Y2hhbmdlZA==".into());
    env.kubectl_ok(&["replace", "-f", "-"], Some(&p3.to_string()));
    let (code, body) = env.curl(
        "GET",
        &format!("/api/v1/namespaces/default/secrets?limit=2&continue={token}"),
        None,
    );
    assert_eq!(code, 200, "{body}");
    let page2: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        page2["metadata"]["resourceVersion"].as_str().unwrap(),
        list_rv
    );
    assert_eq!(page2["items"][0]["metadata"]["name"], "p3");
    assert_eq!(
        page2["items"][0]["data"]["n"], "Mw==",
        "page 2 must come from the first page's snapshot"
    );
    assert_eq!(page2["metadata"]["remainingItemCount"], 1);
    let token2 = page2["metadata"]["continue"].as_str().unwrap().to_string();

    // Compact etcd past the snapshot: the token has expired.
    let out = env.etcdctl(&["endpoint", "status", "-w", "json"]);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let head = status[0]["Status"]["header"]["revision"].as_i64().unwrap();
    assert!(
        env.etcdctl(&["compact", &head.to_string()])
            .status
            .success()
    );
    let (code, body) = env.curl(
        "GET",
        &format!("/api/v1/namespaces/default/secrets?limit=2&continue={token2}"),
        None,
    );
    assert_eq!(code, 410, "{body}");
    let expired: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(expired["reason"], "Expired");
    assert!(expired["message"].as_str().unwrap().starts_with(
        "The provided continue parameter is too old to display a consistent list result."
    ));
    let fresh = expired["metadata"]["continue"].as_str().unwrap();
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(fresh)
        .unwrap();
    assert_eq!(
        String::from_utf8(raw).unwrap(),
        "{\"v\":\"meta.k8s.io/v1\",\"rv\":-1,\"start\":\"p4\\u0000\"}"
    );
    // The fresh token continues at the latest revision.
    let (code, body) = env.curl(
        "GET",
        &format!("/api/v1/namespaces/default/secrets?limit=2&continue={fresh}"),
        None,
    );
    assert_eq!(code, 200, "{body}");
    let page3: Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = page3["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["p5"], "p4 was the last item of page 2");
    assert!(page3["metadata"].get("continue").is_none());

    // An Exact resourceVersion beyond etcd's head is 504 Timeout (ResourceVersionTooLarge).
    let (code, body) = env.curl(
        "GET",
        "/api/v1/secrets?resourceVersion=999999&resourceVersionMatch=Exact",
        None,
    );
    assert_eq!(code, 504, "{body}");
    assert!(
        body.contains("Too large resource version: 999999, current: "),
        "{body}"
    );
    let (code, body) = env.curl(
        "GET",
        "/api/v1/namespaces/default/secrets?limit=2&continue=notatoken",
        None,
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("invalid continue token"));
    // Field selectors (kubectl delete --wait relies on metadata.name).
    let (_, body) = env.curl(
        "GET",
        "/api/v1/secrets?fieldSelector=metadata.name%3Dp2",
        None,
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
}

#[test]
fn enabling_and_disabling_encryption_rewrites_on_put() {
    let env = Env::new();
    let key = "/registry/secrets/default/s1";
    // 1. No config: plaintext JSON.
    let api = env.start(&[]);
    env.kubectl_ok(
        &["create", "secret", "generic", "s1", "--from-literal=a=b"],
        None,
    );
    let plain = env.etcd_value(key);
    assert!(plain.starts_with(b"{\"kind\":\"Secret\""));
    let _ = api.terminate();

    // 2. Enable: [aescbc, identity]. The plaintext value is read by identity at index 1 → stale → a
    // no-op replace encrypts it.
    let enable = env.encryption_config(
        "enable.yaml",
        &format!("{}{IDENTITY}", providers_aescbc("key1", KEY_A)),
    );
    let api = env.start(std::slice::from_ref(&enable));
    let before = env.get_json(&["secret", "s1"]);
    env.kubectl_ok(&["replace", "-f", "-"], Some(&before.to_string()));
    let after = env.get_json(&["secret", "s1"]);
    assert_ne!(rv(&after), rv(&before), "a stale value must be written");
    assert!(env.etcd_value(key).starts_with(b"k8s:enc:aescbc:v1:key1:"));
    // Now current: another no-op replace writes nothing.
    env.kubectl_ok(&["replace", "-f", "-"], Some(&after.to_string()));
    assert_eq!(rv(&env.get_json(&["secret", "s1"])), rv(&after));
    let _ = api.terminate();

    // 3. Rotate: new key first, old key second → rewritten with key2.
    let rotate = env.encryption_config(
        "rotate.yaml",
        "      - aescbc:\n          keys:\n            - name: key2\n              secret: YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXoxMjM0NTY=\n            - name: key1\n              secret: c2VjcmV0IGlzIHNlY3VyZQ==\n      - identity: {}\n",
    );
    let api = env.start(&[rotate]);
    let all = env.kubectl_ok(&["get", "secrets", "-A", "-o", "json"], None);
    env.kubectl_ok(&["replace", "-f", "-"], Some(&all));
    assert!(env.etcd_value(key).starts_with(b"k8s:enc:aescbc:v1:key2:"));
    let _ = api.terminate();

    // 4. Disable: [identity, aescbc] → read through aescbc at index 1 → stale → written as plaintext.
    let disable = env.encryption_config(
        "disable.yaml",
        &format!("{IDENTITY}{}", providers_aescbc("key2", KEY_B)),
    );
    let api = env.start(&[disable]);
    let cur = env.get_json(&["secret", "s1"]);
    assert_eq!(cur["data"]["a"], "Yg==");
    env.kubectl_ok(&["replace", "-f", "-"], Some(&cur.to_string()));
    let stored = env.etcd_value(key);
    assert!(
        stored.starts_with(b"{\"kind\":\"Secret\",\"apiVersion\":\"v1\""),
        "{}",
        String::from_utf8_lossy(&stored)
    );
    assert_ne!(rv(&env.get_json(&["secret", "s1"])), rv(&cur));
    drop(api);
}

#[test]
fn values_the_server_cannot_decrypt_fail_like_upstream() {
    let env = Env::new();
    let api = env.start(&[env.encryption_config("a.yaml", &providers_aescbc("key1", KEY_A))]);
    env.kubectl_ok(
        &["create", "secret", "generic", "s1", "--from-literal=a=b"],
        None,
    );
    env.kubectl_ok(
        &["create", "secret", "generic", "s2", "--from-literal=a=b"],
        None,
    );
    let _ = api.terminate();

    // Restart with a key of another name: the aescbc prefix matches, no key name does.
    let _api = env.start(&[env.encryption_config("b.yaml", &providers_aescbc("other", KEY_B))]);
    let (code, body) = env.curl("GET", "/api/v1/namespaces/default/secrets/s1", None);
    assert_eq!(code, 500);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        serde_json::json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Internal error occurred: no matching key was found for the provided AES transformer","reason":"InternalError","details":{"causes":[{"message":"no matching key was found for the provided AES transformer"}]},"code":500})
    );
    let (code, body) = env.curl("GET", "/api/v1/secrets", None);
    assert_eq!(code, 500);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["message"],
        "Internal error occurred: unable to transform key \"/registry/secrets/default/s1\": no matching key was found for the provided AES transformer"
    );
    let out = env.kubectl(&["get", "secrets"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unable to transform key"));
    drop(_api);

    // Identity only: identity's own error is silent, so "no matching prefix found".
    let api = env.start(&[env.encryption_config("c.yaml", IDENTITY)]);
    let (code, body) = env.curl("GET", "/api/v1/namespaces/default/secrets/s1", None);
    assert_eq!(code, 500);
    assert!(
        body.contains("\"message\":\"Internal error occurred: no matching prefix found\""),
        "{body}"
    );
    drop(api);

    // No config at all: the bare identity transformer reports encrypted data.
    let api = env.start(&[]);
    let (code, body) = env.curl("GET", "/api/v1/namespaces/default/secrets/s1", None);
    assert_eq!(code, 500);
    assert!(
        body.contains("identity transformer tried to read encrypted data"),
        "{body}"
    );
    // A corrupted value that still carries the right prefix and key name.
    drop(api);
    let api = env.start(&[env.encryption_config("a2.yaml", &providers_aescbc("key1", KEY_A))]);
    let mut bad = b"k8s:enc:aescbc:v1:key1:".to_vec();
    bad.extend_from_slice(&[0u8; 17]);
    env.etcd_put("/registry/secrets/default/s2", &bad);
    let (code, body) = env.curl("GET", "/api/v1/namespaces/default/secrets/s2", None);
    assert_eq!(code, 500);
    assert!(
        body.contains("the stored data is not a multiple of the block size"),
        "{body}"
    );
    drop(api);
}

#[test]
fn invalid_configs_fail_startup_with_upstream_messages() {
    let env = Env::new();
    let cases = [
        (
            "short.yaml",
            providers_aescbc("k", "c2VjcmV0"),
            "error while parsing file: resources[0].providers[0].aescbc.keys[0].secret: Invalid value: \\\"REDACTED\\\": secret is not of the expected length, got 6, expected one of [16 24 32]",
        ),
        (
            "kms.yaml",
            // KMS v1 (the default apiVersion) without --feature-gates=KMSv1=true (§1.6).
            "      - kms:\n          name: p\n          endpoint: unix:///tmp/kms.sock\n"
                .to_string(),
            "error while building transformers: KMSv1 is deprecated and will only receive security updates going forward.",
        ),
    ];
    for (name, providers, want) in cases {
        let flag = env.encryption_config(name, &providers);
        let out = env.apiserver_command(&[flag]).output().unwrap();
        assert!(!out.status.success(), "{name} must fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(want), "{name}: {stderr}");
        assert!(
            stderr.contains("run.go:72] \"command failed\" err="),
            "klog shape: {stderr}"
        );
    }
    let masked = env.write(
        "masked.yaml",
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: ['*.*']\n    providers: [{identity: {}}]\n  - resources: [secrets]\n    providers: [{identity: {}}]\n",
    );
    let out = env
        .apiserver_command(&[format!("--encryption-provider-config={}", masked.display())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("error while building transformers: resource \\\"secrets\\\" is masked by earlier rule \\\"*.*\\\"")
    );
    let missing = env.dir.path().join("nope.yaml");
    let out = env
        .apiserver_command(&[format!(
            "--encryption-provider-config={}",
            missing.display()
        )])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(
        "error while parsing file: error opening encryption provider configuration file"
    ));
}

#[test]
fn authentication_like_upstream() {
    let env = Env::new();
    let tokens = env.write("tokens.csv", "t0ken,alice,1,\"system:masters\"\n");
    let _api = env.start(&[format!("--token-auth-file={}", tokens.display())]);
    let (code, _) = env.curl_as(
        "GET",
        "/api/v1/secrets",
        None,
        &["-H", "Authorization: Bearer t0ken"],
    );
    assert_eq!(code, 200);
    let (code, body) = env.curl_as(
        "GET",
        "/api/v1/secrets",
        None,
        &["-H", "Authorization: Bearer wrong"],
    );
    assert_eq!(code, 401);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        serde_json::json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401})
    );
    // Anonymous: health and version are public, everything else is forbidden.
    assert_eq!(
        env.curl_as("GET", "/readyz", None, &[]),
        (200, "ok".to_string())
    );
    let (code, body) = env.curl_as("GET", "/version", None, &[]);
    assert_eq!(code, 200);
    assert!(body.contains("\"gitVersion\":\"v1.32"));
    assert_eq!(env.curl_as("GET", "/api/v1/secrets", None, &[]).0, 403);
    drop(_api);
    let _api = env.start(&["--anonymous-auth=false".to_string()]);
    assert_eq!(env.curl_as("GET", "/readyz", None, &[]).0, 401);
}

#[test]
fn aesgcm_binds_the_etcd_key_and_secretbox_does_not() {
    let env = Env::new();
    let gcm = format!(
        "      - aesgcm:\n          keys:\n            - name: g1\n              secret: {KEY_A}\n"
    );
    let api = env.start(&[env.encryption_config("gcm.yaml", &gcm)]);
    env.kubectl_ok(
        &["create", "secret", "generic", "s1", "--from-literal=a=b"],
        None,
    );
    let value = env.etcd_value("/registry/secrets/default/s1");
    assert!(value.starts_with(b"k8s:enc:aesgcm:v1:g1:"));
    // The same bytes under another key fail authentication: the AAD is the full etcd key.
    env.etcd_put("/registry/secrets/default/copy", &value);
    let (code, body) = env.curl("GET", "/api/v1/namespaces/default/secrets/copy", None);
    assert_eq!(code, 500);
    assert!(
        body.contains("Internal error occurred: cipher: message authentication failed"),
        "{body}"
    );
    let _ = api.terminate();

    let sb = format!(
        "      - secretbox:\n          keys:\n            - name: b1\n              secret: {KEY_B}\n"
    );
    let _api = env.start(&[env.encryption_config("sb.yaml", &sb)]);
    env.kubectl_ok(
        &["create", "secret", "generic", "s2", "--from-literal=a=b"],
        None,
    );
    let value = env.etcd_value("/registry/secrets/default/s2");
    assert!(value.starts_with(b"k8s:enc:secretbox:v1:b1:"));
    // No AAD: a copy under another key still decrypts (and carries the original's metadata).
    env.etcd_put("/registry/secrets/default/copy2", &value);
    let (code, body) = env.curl("GET", "/api/v1/namespaces/default/secrets/copy2", None);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"name\":\"s2\""));
}
