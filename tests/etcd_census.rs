//! Census and snapshot against a real etcd (TLS with client certificates, server name override).

mod common;

use atrest::exec::etcd::{CensusOptions, Etcd, EtcdResource};
use common::{ETCD_SERVER_NAME, LocalEtcd};
use sha2::{Digest, Sha256};
use std::os::unix::fs::PermissionsExt;

fn kms_v2_upstream_value() -> Vec<u8> {
    let vectors = include_str!("../src/exec/kms_v2_upstream_vectors.hex");
    hex::decode(vectors.lines().next().unwrap().trim()).unwrap()
}

async fn put(etcd: &Etcd, key: &str, value: Vec<u8>) {
    etcd.client().clone().put(key, value, None).await.unwrap();
}

/// 40 secrets: 10 plaintext, 12 on aescbc:old, 15 on aescbc:new, 3 on kms v2; 7 configmaps plaintext,
/// 1 widget on secretbox; plus keys just outside the prefixes that must not be counted.
async fn seed(etcd: &Etcd) {
    for i in 0..10 {
        put(
            etcd,
            &format!("/registry/secrets/ns{}/plain-{i}", i % 3),
            b"k8s\x00\x0a\x0c\x0a\x02v1".to_vec(),
        )
        .await;
    }
    for i in 0..12 {
        let mut v = b"k8s:enc:aescbc:v1:old:".to_vec();
        v.extend([b':'; 48]);
        put(etcd, &format!("/registry/secrets/default/old-{i:02}"), v).await;
    }
    for i in 0..15 {
        put(
            etcd,
            &format!("/registry/secrets/default/new-{i:02}"),
            b"k8s:enc:aescbc:v1:new:0123456789abcdef".to_vec(),
        )
        .await;
    }
    for i in 0..3 {
        put(
            etcd,
            &format!("/registry/secrets/kms/k{i}"),
            kms_v2_upstream_value(),
        )
        .await;
    }
    for i in 0..7 {
        put(
            etcd,
            &format!("/registry/configmaps/default/cm{i}"),
            b"{\"kind\":\"ConfigMap\"}\n".to_vec(),
        )
        .await;
    }
    put(
        etcd,
        "/registry/example.com/widgets/default/w1",
        b"k8s:enc:secretbox:v1:sb:xxxx".to_vec(),
    )
    .await;
    // Neighbours of the prefixes.
    put(
        etcd,
        "/registry/secrets0",
        b"k8s:enc:aescbc:v1:old:x".to_vec(),
    )
    .await;
    put(
        etcd,
        "/registry/secretsx/default/a",
        b"k8s:enc:aescbc:v1:old:x".to_vec(),
    )
    .await;
    put(
        etcd,
        "/registry/secret/default/a",
        b"k8s:enc:aescbc:v1:old:x".to_vec(),
    )
    .await;
}

fn resources() -> Vec<EtcdResource> {
    vec![
        EtcdResource::new("/registry", "", "secrets"),
        EtcdResource::new("/registry", "", "configmaps"),
        EtcdResource::new("/registry", "example.com", "widgets"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn census_counts_every_label_in_small_pages() {
    let process = LocalEtcd::start(98).unwrap();
    let etcd = process.ready().await.unwrap();
    seed(&etcd).await;

    let options = CensusOptions {
        page_size: 4,
        max_off_target: 5,
        ..Default::default()
    };
    let census = etcd
        .census(&resources(), Some("aescbc:new"), &options)
        .await
        .unwrap();

    let secrets = &census.resources["secrets"];
    assert_eq!(secrets.total, 40);
    assert_eq!(secrets.by_label["identity"], 10);
    assert_eq!(secrets.by_label["aescbc:old"], 12);
    assert_eq!(secrets.by_label["aescbc:new"], 15);
    assert_eq!(secrets.by_label["kms:v2:kms-provider:1"], 3);
    assert_eq!(secrets.off_target_count, 25);
    assert_eq!(secrets.off_target.len(), 5, "capped list");
    assert!(secrets.off_target_truncated());
    assert!(
        secrets
            .off_target
            .iter()
            .all(|k| k.starts_with("/registry/secrets/") && !k.contains("/new-"))
    );

    let configmaps = &census.resources["configmaps"];
    assert_eq!((configmaps.total, configmaps.by_label["identity"]), (7, 7));
    let widgets = &census.resources["widgets.example.com"];
    assert_eq!(widgets.by_label["secretbox:sb"], 1);
    assert_eq!(census.off_target_total(), 25 + 7 + 1);
    assert_eq!(census.by_label()["identity"], 17);

    // Without a write label nothing is off target; a page size of 1 gives the same counts.
    let one = CensusOptions {
        page_size: 1,
        max_off_target: 100,
        ..Default::default()
    };
    let again = etcd.census(&resources(), None, &one).await.unwrap();
    assert_eq!(again.off_target_total(), 0);
    assert_eq!(again.resources["secrets"].by_label, secrets.by_label);

    // The full list of off-target secrets when the cap allows it, in key order.
    let full = etcd
        .census(&resources()[..1], Some("aescbc:new"), &one)
        .await
        .unwrap();
    let keys = &full.resources["secrets"].off_target;
    assert_eq!(keys.len(), 25);
    assert!(keys.windows(2).all(|w| w[0] < w[1]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn census_survives_compaction_while_paging() {
    let process = LocalEtcd::start(97).unwrap();
    let etcd = process.ready().await.unwrap();
    let mut kv = etcd.client().kv_client();
    for i in 0..1500 {
        kv.put(
            format!("/registry/secrets/default/s{i:05}"),
            b"k8s:enc:aescbc:v1:old:x".to_vec(),
            None,
        )
        .await
        .unwrap();
    }
    // Progress signal: the census logs each restart. The census runs in this task (not spawned) so the
    // thread-local log capture sees it; the compactor moves the revision on and compacts until the census
    // says it restarted (no guess at how long paging takes).
    let log = Capture::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let done = std::sync::atomic::AtomicBool::new(false);
    let census = async {
        let options = CensusOptions {
            page_size: 1,
            max_off_target: 10,
            ..Default::default()
        };
        let census = etcd
            .census(&resources()[..1], Some("aescbc:new"), &options)
            .await;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        census
    };
    let compactor = async {
        let started = std::time::Instant::now();
        let mut first = None;
        while !log
            .text()
            .contains("census revision compacted, starting again")
            && !done.load(std::sync::atomic::Ordering::SeqCst)
        {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(120),
                "the census never restarted"
            );
            let rev = kv
                .put("/registry/other", b"x".to_vec(), None)
                .await
                .unwrap()
                .header()
                .unwrap()
                .revision();
            kv.compact(rev, None).await.unwrap();
            first.get_or_insert(rev);
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        first
    };
    let (census, first) = tokio::join!(census, compactor);
    let census = census.unwrap();
    let log = log.text();
    assert!(
        log.contains("census revision compacted, starting again"),
        "the census finished before a compaction caught it: {log}"
    );
    let rev = first.expect("compacted at least once");
    assert_eq!(census.resources["secrets"].total, 1500);
    assert_eq!(census.resources["secrets"].by_label["aescbc:old"], 1500);
    assert!(
        census.resources["secrets"].revision >= rev,
        "census restarted at a revision after the compaction"
    );
}

/// Log lines captured in memory.
#[derive(Clone, Default)]
struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_server_name_must_match_the_certificate() {
    let process = LocalEtcd::start(96).unwrap();
    let _ready = process.ready().await.unwrap();
    // The certificate names only `etcd-node1`; dialling the IP without the override must fail verification.
    // The connection may be lazy: the refusal comes at connect or at the first request, and it must be the
    // certificate's name that is refused (not, say, a wrong port or a closed server).
    let chain = match Etcd::connect(&process.target(None)).await {
        Err(e @ atrest::exec::etcd::EtcdError::Client { .. }) => common::error_chain(&e),
        Err(other) => panic!("expected a client error, got {other:?}"),
        Ok(etcd) => match etcd.client().clone().status().await {
            Err(e) => common::error_chain(&e),
            Ok(status) => panic!(
                "connecting by IP without a server-name override must fail certificate verification: {status:?}"
            ),
        },
    };
    assert!(common::refused_for_name(&chain), "{chain}");
    let right = Etcd::connect(&process.target(Some(ETCD_SERVER_NAME)))
        .await
        .unwrap();
    assert!(right.client().clone().status().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_is_private_complete_and_hashed() {
    let process = LocalEtcd::start(95).unwrap();
    let etcd = process.ready().await.unwrap();
    seed(&etcd).await;
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("before-rewrite.db");
    let info = etcd.snapshot(&dest).await.unwrap();

    let bytes = std::fs::read(&dest).unwrap();
    assert_eq!(info.size, bytes.len() as u64);
    assert!(info.size > 4096);
    assert_eq!(info.sha256, hex::encode(Sha256::digest(&bytes)));
    assert_eq!(
        std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let names: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("before-rewrite.db")],
        "no partial file left behind"
    );

    // etcdctl can read it and sees our keys.
    let status = process
        .etcdctl()
        .args(["snapshot", "status", "-w", "json"])
        .arg(&dest)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(json["totalKey"].as_u64().unwrap() >= 51, "{json}");
    assert!(json["revision"].as_u64().unwrap() >= 52, "{json}");

    // A destination in a missing directory fails cleanly.
    let missing = out.path().join("no/such/dir/x.db");
    match etcd.snapshot(&missing).await {
        Err(atrest::exec::etcd::EtcdError::SnapshotFile { path, source }) => {
            assert!(path.starts_with(out.path().join("no/such/dir")), "{path:?}");
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound, "{source}");
        }
        other => panic!("a missing directory must fail on the snapshot file, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn census_pages_large_values_by_bytes() {
    let process = LocalEtcd::start(94).unwrap();
    let etcd = process.ready().await.unwrap();
    // 24 values of 1 MiB: with pages of 500 keys this would be one 24 MiB response; by bytes it is ~2 MiB pages.
    for i in 0..24 {
        let mut value = b"k8s:enc:aesgcm:v1:big:".to_vec();
        value.resize(1024 * 1024, 0x5a);
        put(&etcd, &format!("/registry/secrets/big/s{i:02}"), value).await;
    }
    let options = CensusOptions {
        page_bytes: 2 * 1024 * 1024,
        ..Default::default()
    };
    let census = etcd
        .census(&resources()[..1], Some("aesgcm:big"), &options)
        .await
        .unwrap();
    assert_eq!(census.resources["secrets"].total, 24);
    assert_eq!(census.resources["secrets"].by_label["aesgcm:big"], 24);
    assert_eq!(census.off_target_total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn census_records_the_largest_value_along_the_key_order() {
    let process = LocalEtcd::start(95).unwrap();
    let etcd = process.ready().await.unwrap();
    // 300 small values, 5 of 200 KiB, 400 small: in key order (the order the API lists in).
    let value = |bytes: usize| {
        let mut v = b"k8s:enc:aescbc:v1:k:".to_vec();
        v.resize(bytes, 0x5a);
        v
    };
    for i in 0..705 {
        let (group, bytes) = match i {
            0..300 => ("a", 100),
            300..305 => ("b", 200 * 1024),
            _ => ("c", 100),
        };
        put(
            &etcd,
            &format!("/registry/secrets/{group}/s{i:03}"),
            value(bytes),
        )
        .await;
    }
    let census = etcd
        .census(&resources()[..1], None, &CensusOptions::default())
        .await
        .unwrap();
    let sizes = &census.resources["secrets"].sizes;
    assert_eq!(census.resources["secrets"].total, 705);
    assert_eq!(
        sizes.largest_near(0, 50),
        100,
        "the first segments are small"
    );
    assert_eq!(
        sizes.largest_near(250, 20),
        200 * 1024,
        "the page reaching the large ones"
    );
    assert_eq!(
        sizes.largest_near(560, 20),
        100,
        "small again two segments on"
    );
    // 500 objects would be 100 MiB of JSON if all were as large: a page there is cut to what fits 16 MiB.
    assert!(sizes.page_limit(250, 500, 16 << 20) < 100);
    assert_eq!(sizes.page_limit(0, 100, 16 << 20), 100);
}
