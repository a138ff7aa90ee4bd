//! The product as a whole on a 3-node testbed with 1,000 secrets and 200 configmaps: enable, rotate, managed →
//! custom, custom edit, deploy-only edit, custom → managed, disable — each checked in etcd, through the API
//! (every byte of every seeded object), on the nodes (hashes, flag) and in the state file. Also a server that
//! cannot start again (R3 of docs/reliability.md).
//!
//!     cargo build -p testbed && cargo test --test e2e_lifecycle -- --nocapture      (as root)

mod flows_common;

use flows_common::*;

const SECRET_KEY: &str = "/registry/secrets/seed-0/seed-secret-000000";
/// An unencrypted stored object: protobuf (`k8s\0` + runtime.Unknown, the real server's default) or JSON (a
/// server with `--storage-media-type=application/json`).
fn plaintext(stored: &str) -> bool {
    stored.starts_with("k8s\u{0}") || stored.starts_with('{')
}

const CONFIGMAP_KEY: &str = "/registry/configmaps/seed-0/seed-configmap-000000";

#[test]
fn every_transition_keeps_every_object_readable_and_verified() {
    let Some(b) = bench() else { return };

    // Nothing asked for yet: nothing to do.
    let plan = b.ok(&["plan"]);
    assert!(plan.contains("Nothing to do"), "{plan}");

    // Enable: plan and dry run change nothing; without a TTY `up` needs --yes.
    b.set_encryption(true, None);
    let plan: serde_json::Value = serde_json::from_str(&b.ok(&["plan", "-o", "json"])).unwrap();
    assert_eq!(plan["plan"]["kind"], "enable");
    b.ok(&["up", "--dry-run"]);
    let refused = b.run(&["up"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--yes"));
    assert!(
        b.records()["transition"].is_null(),
        "dry run and refusal started nothing"
    );

    b.ok(&["up", "--yes"]);
    let state = b.state();
    let key1 = write_key_name(&state);
    assert_eq!(
        state["currentState"]["encryptionConfig"], state["desiredState"]["encryptionConfig"],
        "RKE's desired and current encryptionConfig agree"
    );
    let records = b.records();
    assert!(
        state.get("atrest").is_none(),
        "nothing of atrest's in RKE's state"
    );
    // RKE's view agrees: enabled, managed (no customConfig), the config in RKE's template layout, and every
    // node's file is what `rke up` writes (state string + "\n").
    for section in ["currentState", "desiredState"] {
        let sec = &state[section]["rkeConfig"]["services"]["kubeApi"]["secretsEncryptionConfig"];
        assert_eq!(sec["enabled"], true, "{section}: {sec}");
        assert!(sec.get("customConfig").is_none(), "{section}: {sec}");
    }
    let text = state["currentState"]["encryptionConfig"].as_str().unwrap();
    assert!(
        text.ends_with("  - identity: {}") && text.contains("\n      - name: "),
        "RKE's template layout"
    );
    let rke_file_sha = hex_sha256(format!("{text}\n").as_bytes());
    assert!(records["transition"].is_null());
    assert_eq!(records["snapshots"].as_array().unwrap().len(), 1);
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(b.records_path()).unwrap().permissions()
        ) & 0o777,
        0o600
    );
    let snapshot = records["snapshots"][0]["path"].as_str().unwrap();
    let meta = std::fs::metadata(snapshot).expect("snapshot file");
    assert!(meta.len() > 0);
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
    let status = b.status();
    assert_eq!(status["encryptionStatus"], "Enabled");
    assert_eq!(status["stage"], "start");
    assert_eq!(status["hashesMatch"], true);
    for n in status["nodes"].as_array().unwrap() {
        assert_eq!(
            n["sha256"],
            rke_file_sha.as_str(),
            "the node file is RKE's bytes: {n}"
        );
    }
    assert!(
        status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["flag"] == true)
    );
    all_on(&b.census(), "secrets", &format!("aescbc:{key1}"), SECRETS);
    let table = b.ok(&["encrypt", "status"]);
    assert!(
        table.contains("All hashes match") && table.contains(&key1),
        "{table}"
    );
    b.ok(&["encrypt", "verify"]);
    assert!(
        b.etcd_prefix(SECRET_KEY)
            .starts_with(&format!("k8s:enc:aescbc:v1:{key1}:"))
    );
    b.verify_seed();

    // A second `up` has nothing to do.
    assert!(b.ok(&["up", "--yes"]).contains("Nothing to do"));

    // Rotate the managed key.
    b.ok(&["encrypt", "rotate-key", "--yes"]);
    let state = b.state();
    let key2 = write_key_name(&state);
    assert_ne!(key1, key2);
    let records = b.records();
    let archive = records["archive"].as_array().unwrap();
    assert!(
        archive
            .iter()
            .any(|k| k["name"] == key1.as_str() && k["secret"].is_string())
    );
    all_on(&b.census(), "secrets", &format!("aescbc:{key2}"), SECRETS);
    b.ok(&["encrypt", "verify"]);
    b.verify_seed();

    // Managed → custom: secrets on aesgcm, configmaps on secretbox.
    let (g1, s1, s2, g3) = (random_key(), random_key(), random_key(), random_key());
    let custom_a = format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n\
         - resources: [secrets]\n  providers:\n  - aesgcm:\n      keys:\n      - {{name: g1, secret: \"{g1}\"}}\n  - identity: {{}}\n\
         - resources: [configmaps]\n  providers:\n  - secretbox:\n      keys:\n      - {{name: s1, secret: \"{s1}\"}}\n  - identity: {{}}\n"
    );
    b.set_encryption(true, Some(&custom_a));
    let plan: serde_json::Value = serde_json::from_str(&b.ok(&["plan", "-o", "json"])).unwrap();
    assert_eq!(plan["plan"]["kind"], "managed-to-custom");
    b.ok(&["up", "--yes"]);
    let census = b.census();
    all_on(&census, "secrets", "aesgcm:g1", SECRETS);
    // The real kube-apiserver keeps configmaps of its own in kube-system (extension-apiserver-authentication,
    // kube-apiserver-legacy-service-account-token-tracking): every configmap, seeded or not, must be on s1.
    let configmaps = census
        .get("configmaps")
        .map(|l| l.values().sum::<u64>() as usize)
        .unwrap_or(0);
    assert!(configmaps >= CONFIGMAPS, "{census:?}");
    all_on(&census, "configmaps", "secretbox:s1", configmaps);
    assert!(
        b.etcd_prefix(CONFIGMAP_KEY)
            .starts_with("k8s:enc:secretbox:v1:s1:")
    );
    b.ok(&["encrypt", "verify"]);
    b.verify_seed();
    // A custom config is rotated by editing it, not by rotate-key.
    let refused = b.run(&["encrypt", "rotate-key", "--yes"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("custom_config"));

    // Custom edit: secrets move to secretbox s2 (g1 stays readable).
    let custom_b = custom_a.replace(
        "  providers:\n  - aesgcm:",
        &format!("  providers:\n  - secretbox:\n      keys:\n      - {{name: s2, secret: \"{s2}\"}}\n  - aesgcm:"),
    );
    b.set_encryption(true, Some(&custom_b));
    b.ok(&["up", "--yes"]);
    all_on(&b.census(), "secrets", "secretbox:s2", SECRETS);
    b.ok(&["encrypt", "verify"]);
    b.verify_seed();

    // Deploy-only: a read-only key added; nothing is rewritten.
    let before = b.resource_versions();
    let custom_c = custom_b.replace(
        &format!("      - {{name: g1, secret: \"{g1}\"}}\n"),
        &format!(
            "      - {{name: g1, secret: \"{g1}\"}}\n      - {{name: g3, secret: \"{g3}\"}}\n"
        ),
    );
    assert_ne!(custom_b, custom_c);
    b.set_encryption(true, Some(&custom_c));
    let plan: serde_json::Value = serde_json::from_str(&b.ok(&["plan", "-o", "json"])).unwrap();
    assert_eq!(plan["plan"]["kind"], "deploy-only");
    assert!(!plan.to_string().contains("\"rewrite\""), "{plan}");
    b.ok(&["up", "--yes"]);
    assert_eq!(before, b.resource_versions(), "no object was written");
    assert_eq!(b.status()["hashesMatch"], true);
    b.verify_seed();

    // Custom → managed: a new managed key; configmaps back to plaintext.
    b.set_encryption(true, None);
    let plan: serde_json::Value = serde_json::from_str(&b.ok(&["plan", "-o", "json"])).unwrap();
    assert_eq!(plan["plan"]["kind"], "custom-to-managed");
    b.ok(&["up", "--yes"]);
    let key3 = write_key_name(&b.state());
    assert!(key3 != key1 && key3 != key2);
    all_on(&b.census(), "secrets", &format!("aescbc:{key3}"), SECRETS);
    assert!(
        plaintext(&b.etcd_prefix(CONFIGMAP_KEY)),
        "configmaps are plaintext again"
    );
    b.ok(&["encrypt", "verify"]);
    b.verify_seed();

    // Disable: everything plaintext, no file, no flag.
    b.set_encryption(false, None);
    b.ok(&["up", "--yes"]);
    let status = b.status();
    assert_eq!(status["encryptionStatus"], "Disabled");
    for n in status["nodes"].as_array().unwrap() {
        assert_eq!(n["flag"], false, "{n}");
        assert!(n["sha256"].is_null(), "{n}");
    }
    all_on(&b.census(), "secrets", "identity", SECRETS);
    assert!(plaintext(&b.etcd_prefix(SECRET_KEY)));
    // RKE reads "off" with no config (left enabled, every later `rke up` would fail with EOF).
    let state = b.state();
    for section in ["currentState", "desiredState"] {
        assert!(
            state[section].get("encryptionConfig").is_none(),
            "{section}"
        );
        let sec = &state[section]["rkeConfig"]["services"]["kubeApi"]["secretsEncryptionConfig"];
        assert_eq!(sec["enabled"], false, "{section}: {sec}");
    }
    let state = b.state();
    assert!(
        state["currentState"]
            .get("encryptionConfig")
            .is_none_or(|v| v.is_null() || v == "")
    );
    b.ok(&["encrypt", "verify"]);
    b.verify_seed();
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The kube-apiserver binary inside node `n`'s image, as its Docker stores it (the image's overlay2 layer).
fn image_binary(b: &Bench, n: &testbed::harness::Node) -> std::path::PathBuf {
    let docker = |args: &[&str]| {
        let out = b.tb.docker(n).args(args).output().expect("docker");
        assert!(out.status.success(), "docker {}", args.join(" "));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let image = docker(&["inspect", "-f", "{{.Image}}", "kube-apiserver"]);
    let layer = docker(&[
        "image",
        "inspect",
        "-f",
        "{{.GraphDriver.Data.UpperDir}}",
        &image,
    ]);
    let binary = std::path::Path::new(&layer).join("usr/local/bin/kube-apiserver");
    assert!(binary.is_file(), "{}", binary.display());
    binary
}

/// R3 of docs/reliability.md: a server that does not come back for a reason outside its config. Node 1's server
/// binary breaks in its container's filesystem (truncated, as a bad disk or a botched hand patch leaves it; the
/// image itself stays whole), then a rotation restarts it: the run stops at node 1 with an error that names it and quotes the server's own reason
/// (container state, exit code, last log line), nodes 2 and 3 are never touched, the cluster keeps serving every
/// object through them, and once the image is repaired the rerun completes.
#[test]
fn a_server_that_cannot_start_again_is_named_with_its_reason_and_the_others_are_untouched() {
    let Some(b) = bench_seeded(200, 20) else {
        return;
    };
    b.set_encryption(true, None);
    b.ok(&["up", "--yes"]);
    let [n1, n2, n3] = b.tb.nodes() else {
        panic!("three nodes")
    };
    let others = |lines: Vec<String>| -> Vec<String> {
        lines
            .into_iter()
            .filter(|l| {
                l.starts_with(&format!("{} ", n2.name)) || l.starts_with(&format!("{} ", n3.name))
            })
            .collect()
    };
    let before = others(b.fingerprint());

    // Damaged in the container's own filesystem (renamed over, as the running server keeps its open copy): the
    // next start of this container runs the first 64 KiB of the binary.
    let broken = b
        .tb
        .docker(n1)
        .args(["exec", "kube-apiserver", "/bin/busybox", "sh", "-c"])
        .arg(
            "busybox head -c 65536 /usr/local/bin/kube-apiserver > /tmp/broken && busybox chmod 755 /tmp/broken \
             && busybox mv /tmp/broken /usr/local/bin/kube-apiserver",
        )
        .status()
        .expect("docker exec");
    assert!(broken.success(), "broke the binary");

    let out = b.run(&["--ready-timeout", "20", "encrypt", "rotate-key", "--yes"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error = error_of(&stderr);
    assert!(
        error.contains(&format!("{} ({})", n1.address, n1.name)),
        "the error names node 1:\n{error}"
    );
    assert!(error.contains("not ready after 20s"), "{error}");
    assert!(
        error.contains("last exit code")
            && (error.contains("its last log lines since its last start: ")
                || error.contains("it logged nothing since its last start")),
        "the error quotes the server's reason:\n{error}"
    );
    assert_eq!(
        before,
        others(b.fingerprint()),
        "nodes 2 and 3 were not touched"
    );
    b.tb.verify_seed_through(n2, b.secrets, b.configmaps, SIZE)
        .expect("every object reads back through node 2");

    // Repaired the way an operator would: the binary copied back from the image, the container restarted.
    let good = image_binary(&b, n1);
    for args in [
        vec![
            "cp".to_string(),
            good.display().to_string(),
            "kube-apiserver:/usr/local/bin/kube-apiserver".into(),
        ],
        vec!["restart".into(), "kube-apiserver".into()],
    ] {
        let status = b.tb.docker(n1).args(&args).status().expect("docker");
        assert!(status.success(), "docker {}", args.join(" "));
    }
    b.wait_serving(n1);
    b.ok(&["up", "--yes"]);
    assert_complete_and_intact(&b);
}

/// The user atrest runs as behind the bastion firewall (no account needed: files are chowned to it).
const BEHIND_BASTION_UID: u32 = 2999;

/// A private copy of the testbed's cluster files, owned by [`BEHIND_BASTION_UID`]: cluster.yml (with `bastion`
/// as bastion_host when given, encryption on), cluster.rkestate, the kubeconfig, known_hosts, the SSH key and the
/// atrest binary.
fn files_behind_bastion(b: &Bench, bastion: Option<&testbed::harness::Node>) -> tempfile::TempDir {
    use std::os::unix::fs::{PermissionsExt, chown};
    let dir = tempfile::tempdir().expect("work dir");
    let d = dir.path();
    let tb_dir = b.tb.dir();
    for name in ["cluster.rkestate", "kube_config_cluster.yml", "known_hosts"] {
        std::fs::copy(tb_dir.join(name), d.join(name)).expect(name);
    }
    std::fs::copy(b.tb.client_key(), d.join("id")).expect("key");
    std::fs::copy(&b.bin, d.join("atrest")).expect("binary");
    let key = d.join("id").display().to_string();
    let text = std::fs::read_to_string(b.tb.cluster_yml()).expect("cluster.yml");
    let mut doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("cluster.yml");
    doc["ssh_key_path"] = key.clone().into();
    for node in doc["nodes"].as_sequence_mut().expect("nodes") {
        node["ssh_key_path"] = key.clone().into();
    }
    if let Some(n) = bastion {
        doc["bastion_host"] = serde_yaml_ng::from_str(&format!(
            "{{address: \"{}\", port: \"{}\", user: root, ssh_key_path: \"{key}\"}}",
            n.address, n.ssh_port
        ))
        .expect("bastion_host");
    }
    doc["services"]["kube-api"]["secrets_encryption_config"] =
        serde_yaml_ng::from_str("{enabled: true}").expect("yaml");
    std::fs::write(
        d.join("cluster.yml"),
        serde_yaml_ng::to_string(&doc).expect("yaml"),
    )
    .expect("cluster.yml");
    let uid = Some(BEHIND_BASTION_UID);
    for entry in std::fs::read_dir(d).expect("ls") {
        let path = entry.expect("entry").path();
        chown(&path, uid, uid).expect("chown");
    }
    chown(d, uid, uid).expect("chown");
    std::fs::set_permissions(d.join("id"), std::fs::Permissions::from_mode(0o600)).expect("chmod");
    dir
}

/// `atrest <args>` as [`BEHIND_BASTION_UID`], on the files in `dir`.
fn atrest_behind_bastion(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let out = std::process::Command::new(dir.join("atrest"))
        .arg("--config")
        .arg(dir.join("cluster.yml"))
        .arg("--known-hosts")
        .arg(dir.join("known_hosts"))
        .args(args)
        .uid(BEHIND_BASTION_UID)
        .gid(BEHIND_BASTION_UID)
        .env("HOME", dir)
        .env("RUST_LOG", "atrest=info,warn")
        .env_remove("RKE_CONFIG")
        .env_remove("SSH_AUTH_SOCK")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run atrest");
    eprintln!(
        "$ atrest {} (uid {BEHIND_BASTION_UID}) → {}\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// RKE's bastion_host, end to end, where the direct path is impossible: atrest runs as a user the firewall cuts
/// off every node address except the bastion's SSH port (node 1). Without bastion_host it cannot reach nodes 2
/// and 3; with it, enable, rotate-key, status and verify all work — SSH to every node, Docker, the health probes,
/// the etcd census and the API for the rewrite (the kubeconfig's server refused, so through a node's SSH tunnel),
/// all through the bastion.
#[test]
fn every_flow_works_through_a_bastion_when_the_nodes_are_unreachable_directly() {
    let Some(b) = bench_seeded(200, 20) else {
        return;
    };
    let nodes = b.tb.nodes();
    let _firewall =
        b.tb.firewall_except_bastion(BEHIND_BASTION_UID, &nodes[0])
            .expect("firewall");

    // The firewall bites: without the bastion, nodes 2 and 3 cannot be reached.
    let direct = files_behind_bastion(&b, None);
    let out = atrest_behind_bastion(direct.path(), &["plan"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot connect to 2 node(s)"), "{stderr}");
    for n in &nodes[1..] {
        assert!(stderr.contains(&n.name), "{} is named: {stderr}", n.name);
    }

    let dir = files_behind_bastion(&b, Some(&nodes[0]));
    let d = dir.path();
    let up = atrest_behind_bastion(d, &["up", "--yes"]);
    assert!(up.status.success(), "enable through the bastion");
    assert!(
        String::from_utf8_lossy(&up.stderr).contains("through SSH instead"),
        "the rewrite reached the API through a node's SSH tunnel"
    );
    let rotate = atrest_behind_bastion(d, &["encrypt", "rotate-key", "--yes"]);
    assert!(rotate.status.success(), "rotate-key through the bastion");
    let verify = atrest_behind_bastion(d, &["encrypt", "verify"]);
    assert!(verify.status.success(), "verify through the bastion");
    let status = atrest_behind_bastion(d, &["encrypt", "status", "-o", "json"]);
    assert!(status.status.success());
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    assert_eq!(status["encryptionStatus"], "Enabled");
    assert_eq!(status["hashesMatch"], true, "{status}");
    let census: std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>> =
        serde_json::from_value(status["census"].clone()).expect("census");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("cluster.rkestate")).expect("state"))
            .expect("state JSON");
    all_on(
        &census,
        "secrets",
        &format!("aescbc:{}", write_key_name(&state)),
        b.secrets,
    );
    b.verify_seed();
}
