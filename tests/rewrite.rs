//! The rewrite against real processes: etcd (TLS) + the real kube-apiserver as host processes (testbed's
//! `harness::local`), aescbc keys rotated from [old] to [new, old], verified in etcd with the census.
//!
//! Needs the upstream builds (`scripts/build-upstream.sh`; `scripts/test` runs it).

mod common;

use atrest::exec::etcd::{CensusOptions, Etcd, EtcdResource};
use atrest::exec::rewrite::{
    self, Concurrency, Outcome, ProgressMode, ResourceSelector, RewriteOptions, RewriteReport,
    Target, rewrite_keys, rewrite_object,
};
use common::{LocalApiserver, LocalEtcd, aescbc_config, private_loopback, random_key};
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::api::flowcontrol::v1::{FlowSchema, PriorityLevelConfiguration};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, DynamicObject, ObjectMeta, PostParams};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const NAMESPACES: [&str; 4] = ["rw-a", "rw-b", "rw-c", "default"];

struct Cluster {
    etcd_process: LocalEtcd,
    etcd: Etcd,
    apiserver: LocalApiserver,
    client: kube::Client,
    old: String,
    new: String,
    resources: Vec<&'static str>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// etcd + kube-apiserver writing with `old`, seeded with `secrets` secrets and `configmaps` configmaps.
    async fn seeded(
        octet: u8,
        resources: Vec<&'static str>,
        secrets: usize,
        configmaps: usize,
    ) -> Self {
        Self::seeded_with_flags(octet, resources, secrets, configmaps, &[]).await
    }

    /// [`seeded`](Self::seeded) with `flags` added to the kube-apiserver's command line.
    async fn seeded_with_flags(
        octet: u8,
        resources: Vec<&'static str>,
        secrets: usize,
        configmaps: usize,
        flags: &[&str],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ip = private_loopback(octet);
        let etcd_dir = dir.path().join("etcd");
        let etcd_process = LocalEtcd::start_in(&etcd_dir, ip.into(), true).unwrap();
        let etcd = etcd_process.ready().await.unwrap();
        let (old, new) = (random_key(), random_key());
        let config = aescbc_config(&resources, &[("old", &old)]);
        let apiserver = LocalApiserver::start_with_flags(
            &etcd_process,
            &dir.path().join("apiserver"),
            &config,
            flags,
        )
        .unwrap();
        let client = apiserver.ready().await.unwrap();
        let cluster = Self {
            etcd_process,
            etcd,
            apiserver,
            client,
            old,
            new,
            resources,
            _dir: dir,
        };
        cluster.seed(secrets, configmaps).await;
        cluster
    }

    async fn seed(&self, secrets: usize, configmaps: usize) {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        for ns in &NAMESPACES[..3] {
            let object = Namespace {
                metadata: ObjectMeta {
                    name: Some(ns.to_string()),
                    ..Default::default()
                },
                ..Default::default()
            };
            namespaces
                .create(&PostParams::default(), &object)
                .await
                .unwrap();
        }
        futures::stream::iter(0..secrets)
            .for_each_concurrent(32, |i| async move {
                let ns = NAMESPACES[i % NAMESPACES.len()];
                let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
                api.create(&PostParams::default(), &secret(i))
                    .await
                    .unwrap();
            })
            .await;
        futures::stream::iter(0..configmaps)
            .for_each_concurrent(32, |i| async move {
                let ns = NAMESPACES[i % NAMESPACES.len()];
                let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
                let cm = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(format!("cm-{i:05}")),
                        ..Default::default()
                    },
                    data: Some(BTreeMap::from([(
                        "value".to_string(),
                        format!("configmap {i}"),
                    )])),
                    ..Default::default()
                };
                api.create(&PostParams::default(), &cm).await.unwrap();
            })
            .await;
    }

    /// Restart the kube-apiserver with [new, old]: new writes use `new`, old values still read (and are stale).
    async fn rotate(&mut self) {
        let config = aescbc_config(&self.resources, &[("new", &self.new), ("old", &self.old)]);
        self.apiserver.restart_with(&config).unwrap();
        self.client = self.apiserver.ready().await.unwrap();
    }

    async fn census(&self, resources: &[EtcdResource]) -> atrest::exec::etcd::Census {
        self.etcd
            .census(resources, Some("aescbc:new"), &CensusOptions::default())
            .await
            .unwrap()
    }
}

fn secret_value(i: usize) -> Vec<u8> {
    format!("secret number {i} {}", "x".repeat(200)).into_bytes()
}

fn secret(i: usize) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(format!("s-{i:05}")),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "value".to_string(),
            ByteString(secret_value(i)),
        )])),
        ..Default::default()
    }
}

fn secret_index(name: &str) -> usize {
    name.trim_start_matches("s-").parse().unwrap()
}

fn quiet(concurrency: usize, page_size: u32) -> RewriteOptions {
    RewriteOptions {
        concurrency: Concurrency::Pinned(concurrency),
        page_size,
        progress: ProgressMode::Quiet,
        ..Default::default()
    }
}

fn core(resource: &str) -> EtcdResource {
    EtcdResource::new("/registry", "", resource)
}

/// Every secret still holds its seeded value, plus the last counter a concurrent writer managed to store.
async fn assert_secrets_intact(
    client: &kube::Client,
    expected_total: usize,
    counters: &HashMap<String, u64>,
) {
    let api: Api<Secret> = Api::all(client.clone());
    let list = api.list(&Default::default()).await.unwrap();
    assert_eq!(list.items.len(), expected_total);
    for s in list.items {
        let name = s.metadata.name.clone().unwrap();
        let data = s.data.unwrap();
        assert_eq!(
            data["value"].0,
            secret_value(secret_index(&name)),
            "{name}: data changed"
        );
        let key = format!("{}/{name}", s.metadata.namespace.unwrap());
        let stored = data.get("counter").map(|c| {
            String::from_utf8(c.0.clone())
                .unwrap()
                .parse::<u64>()
                .unwrap()
        });
        assert_eq!(
            stored,
            counters.get(&key).copied(),
            "{key}: a concurrent update was lost"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rewrite_moves_everything_to_the_new_key_without_losing_concurrent_updates() {
    let mut cluster = Cluster::seeded(91, vec!["secrets", "configmaps"], 1200, 300).await;
    let resources = [core("secrets"), core("configmaps")];
    let before = cluster.census(&resources).await;
    assert_eq!(
        before.resources["secrets"].by_label,
        BTreeMap::from([("aescbc:old".to_string(), 1200)])
    );
    // The server keeps configmaps of its own (kube-system's `extension-apiserver-authentication`, …), written
    // with the same key, and may still be creating some: the seeded ones and those, counted by the list.
    let configmaps = before.resources["configmaps"].by_label["aescbc:old"];
    assert!(configmaps >= 300, "{:?}", before.by_label());
    assert_eq!(
        before.resources["configmaps"].by_label,
        BTreeMap::from([("aescbc:old".to_string(), configmaps)])
    );

    cluster.rotate().await;
    let resolution = rewrite::resolve(
        &cluster.client,
        &["secrets".to_string(), "configmaps".to_string()],
    )
    .await
    .unwrap();
    assert!(resolution.unusable.is_empty(), "{:?}", resolution.unusable);
    assert_eq!(
        resolution
            .targets
            .iter()
            .map(Target::name)
            .collect::<Vec<_>>(),
        ["configmaps", "secrets"]
    );

    // A concurrent writer keeps updating secrets while the rewrite runs, and remembers what it stored.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(concurrent_writer(cluster.client.clone(), stop.clone()));
    let report = rewrite::rewrite(&cluster.client, &resolution.targets, &quiet(16, 100)).await;
    stop.store(true, Ordering::Relaxed);
    let counters = writer.await.unwrap();
    assert!(
        counters.len() > 20,
        "the concurrent writer did work: {}",
        counters.len()
    );

    assert!(report.is_success(), "{report}: {:?}", report.errors);
    let total = report.expected;
    assert!(total >= 1200 + configmaps, "{report}");
    assert_eq!(report.processed(), total, "{report}");
    // Objects the writer touched before we listed them are already on the new key: unchanged.
    assert_eq!(
        report.rewritten + report.skipped_newer + report.unchanged,
        total,
        "{report}"
    );
    assert!(
        report.unchanged + report.skipped_newer <= counters.len() as u64,
        "{report}"
    );
    let after = cluster.census(&resources).await;
    assert_eq!(
        after.resources["secrets"].by_label,
        BTreeMap::from([("aescbc:new".to_string(), 1200)])
    );
    assert_eq!(
        after.resources["configmaps"].by_label,
        BTreeMap::from([("aescbc:new".to_string(), total - 1200)])
    );
    assert_eq!(after.off_target_total(), 0);
    assert_secrets_intact(&cluster.client, 1200, &counters).await;

    // A second run writes nothing: every value is on the write key already (reference §1.8).
    let again = rewrite::rewrite(&cluster.client, &resolution.targets, &quiet(16, 500)).await;
    assert!(again.is_success(), "{again}");
    assert_eq!((again.rewritten, again.unchanged), (0, total), "{again}");
    drop(cluster.etcd_process);
}

/// Updates random secrets (GET + PUT with resourceVersion, retry on 409) until stopped; returns the counter
/// each secret last stored successfully.
async fn concurrent_writer(client: kube::Client, stop: Arc<AtomicBool>) -> HashMap<String, u64> {
    let mut stored = HashMap::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let i = (n as usize * 7919) % 1200;
        let ns = NAMESPACES[i % NAMESPACES.len()];
        let api: Api<Secret> = Api::namespaced(client.clone(), ns);
        let name = format!("s-{i:05}");
        loop {
            let mut s = api.get(&name).await.unwrap();
            s.data
                .get_or_insert_default()
                .insert("counter".into(), ByteString(n.to_string().into_bytes()));
            match api.replace(&name, &PostParams::default(), &s).await {
                Ok(_) => {
                    stored.insert(format!("{ns}/{name}"), n);
                    break;
                }
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(e) => panic!("concurrent writer: {e}"),
            }
        }
    }
    stored
}

/// R4 of docs/reliability.md: while the rewrite runs, one writer creates secrets and another deletes seeded ones,
/// each at a steady rate. No create is lost, no delete is undone (a rewrite that PUT a listed object back after
/// its delete would resurrect it), every other secret keeps its value, and everything ends on the new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_and_deletes_are_neither_lost_nor_resurrected() {
    let mut cluster = Cluster::seeded(97, vec!["secrets"], 1000, 0).await;
    cluster.rotate().await;
    let stop = Arc::new(AtomicBool::new(false));
    let creator = tokio::spawn(create_until(cluster.client.clone(), stop.clone()));
    let deleter = tokio::spawn(delete_until(cluster.client.clone(), stop.clone()));
    let report = rewrite::rewrite(&cluster.client, &[Target::secrets()], &quiet(16, 100)).await;
    stop.store(true, Ordering::Relaxed);
    let created = creator.await.unwrap();
    let deleted = deleter.await.unwrap();
    eprintln!(
        "during the rewrite: {} created, {} deleted; {report}",
        created.len(),
        deleted.len()
    );
    assert!(report.is_success(), "{report}: {:?}", report.errors);
    assert!(
        created.len() >= 10 && deleted.len() >= 10,
        "the writers did work: {} created, {} deleted",
        created.len(),
        deleted.len()
    );

    let api: Api<Secret> = Api::all(cluster.client.clone());
    let listed = api.list(&Default::default()).await.unwrap();
    let names: std::collections::BTreeSet<String> = listed
        .items
        .iter()
        .map(|s| s.metadata.name.clone().unwrap())
        .collect();
    let resurrected: Vec<&String> = deleted.iter().filter(|n| names.contains(*n)).collect();
    assert!(
        resurrected.is_empty(),
        "deleted, then back: {resurrected:?}"
    );
    let lost: Vec<&String> = created.iter().filter(|n| !names.contains(*n)).collect();
    assert!(lost.is_empty(), "created, then gone: {lost:?}");
    assert_eq!(names.len(), 1000 - deleted.len() + created.len());
    for s in &listed.items {
        let name = s.metadata.name.as_deref().unwrap();
        let value = &s.data.as_ref().unwrap()["value"].0;
        match name.strip_prefix("created-") {
            Some(n) => assert_eq!(value, &created_value(n), "{name}"),
            None => assert_eq!(value, &secret_value(secret_index(name)), "{name}"),
        }
    }
    let after = cluster.census(&[core("secrets")]).await;
    assert_eq!(
        after.resources["secrets"].by_label,
        BTreeMap::from([("aescbc:new".to_string(), names.len() as u64)])
    );
    drop(cluster.etcd_process);
}

fn created_value(n: &str) -> Vec<u8> {
    format!("created during the rewrite {n}").into_bytes()
}

/// Creates `created-<n>` secrets one after another until stopped; returns the names created.
async fn create_until(client: kube::Client, stop: Arc<AtomicBool>) -> Vec<String> {
    let api: Api<Secret> = Api::namespaced(client, NAMESPACES[0]);
    let mut created = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let n = created.len().to_string();
        let name = format!("created-{n}");
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            data: Some([("value".to_string(), ByteString(created_value(&n)))].into()),
            ..Default::default()
        };
        api.create(&PostParams::default(), &secret).await.unwrap();
        created.push(name);
    }
    created
}

/// Deletes seeded secrets (every seventh, from the end of the list backwards) until stopped; returns their names.
async fn delete_until(client: kube::Client, stop: Arc<AtomicBool>) -> Vec<String> {
    let mut deleted = Vec::new();
    let mut i = 999usize;
    while !stop.load(Ordering::Relaxed) && i >= 7 {
        let ns = NAMESPACES[i % NAMESPACES.len()];
        let name = format!("s-{i:05}");
        let api: Api<Secret> = Api::namespaced(client.clone(), ns);
        api.delete(&name, &Default::default()).await.unwrap();
        deleted.push(name);
        i -= 7;
    }
    deleted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_continue_tokens_and_conflicts_are_handled() {
    let mut cluster = Cluster::seeded(92, vec!["secrets"], 1000, 0).await;
    cluster.rotate().await;
    let targets = [Target::secrets()];

    // Forced 409: the object we hold was written by someone else since we read it → skipped, not overwritten.
    let api: Api<Secret> = Api::namespaced(cluster.client.clone(), "rw-a");
    let dynamic: Api<DynamicObject> =
        Api::namespaced_with(cluster.client.clone(), "rw-a", &targets[0].api);
    let held = dynamic.get("s-00000").await.unwrap();
    let mut newer = api.get("s-00000").await.unwrap();
    newer
        .data
        .get_or_insert_default()
        .insert("counter".into(), ByteString(b"1".to_vec()));
    api.replace("s-00000", &PostParams::default(), &newer)
        .await
        .unwrap();
    let (outcome, report) = rewrite_object(&cluster.client, &targets[0], held, &quiet(1, 1)).await;
    assert_eq!(outcome, Outcome::SkippedNewer);
    assert_eq!((report.conflicts, report.skipped_newer), (1, 1));
    assert_eq!(
        api.get("s-00000").await.unwrap().data.unwrap()["counter"].0,
        b"1",
        "the newer write survives"
    );
    // Forced 404: deleted after we read it.
    let held = dynamic.get("s-00004").await.unwrap();
    api.delete("s-00004", &Default::default()).await.unwrap();
    let (outcome, _) = rewrite_object(&cluster.client, &targets[0], held, &quiet(1, 1)).await;
    assert_eq!(outcome, Outcome::Gone);

    // Forced 410: small pages, one writer, and etcd compacted under the list every 100 ms until done.
    let etcd = cluster.etcd.clone();
    let done = Arc::new(AtomicBool::new(false));
    let compactor_done = done.clone();
    let compactor = tokio::spawn(async move {
        let mut kv = etcd.client().kv_client();
        let mut compactions = 0u32;
        while !compactor_done.load(Ordering::Relaxed) && compactions < 100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let put = kv
                .put("/atrest-test/tick", b"x".to_vec(), None)
                .await
                .unwrap();
            kv.compact(put.header().unwrap().revision(), None)
                .await
                .unwrap();
            compactions += 1;
        }
    });
    let report = rewrite::rewrite(&cluster.client, &targets, &quiet(1, 5)).await;
    done.store(true, Ordering::Relaxed);
    compactor.await.unwrap();
    assert!(
        report.is_success(),
        "{report}: {:?} {:?}",
        report.errors,
        report.failed_resources
    );
    assert!(
        report.list_restarts >= 1,
        "no expired continue token was seen: {report}"
    );
    assert_eq!(report.processed(), 999, "{report}");
    let census = cluster.census(&[core("secrets")]).await;
    assert_eq!(
        census.resources["secrets"].by_label,
        BTreeMap::from([("aescbc:new".to_string(), 999)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wildcards_resolve_and_targeted_rewrite_uses_census_keys() {
    let mut cluster = Cluster::seeded(93, vec!["*.*"], 300, 100).await;
    let resources = [core("secrets"), core("configmaps"), core("namespaces")];
    let before = cluster.census(&resources).await;
    assert_eq!(before.resources["secrets"].by_label["aescbc:old"], 300);
    cluster.rotate().await;

    // `*.*`: every resource the server stores, once each, no subresource; `*.`: the core group's only.
    let all = rewrite::resolve(&cluster.client, &["*.*".to_string()])
        .await
        .unwrap();
    let all: Vec<_> = all.targets.iter().map(Target::name).collect();
    for expected in [
        "configmaps",
        "namespaces",
        "secrets",
        "clusterroles.rbac.authorization.k8s.io",
        "leases.coordination.k8s.io",
    ] {
        assert!(all.iter().any(|n| n == expected), "{expected}: {all:?}");
    }
    assert!(
        all.is_sorted() && all.windows(2).all(|w| w[0] != w[1]),
        "{all:?}"
    );
    assert!(!all.iter().any(|n| n.contains('/')), "{all:?}");
    let core = rewrite::resolve(&cluster.client, &["*.".to_string()])
        .await
        .unwrap();
    let core: Vec<_> = core.targets.iter().map(Target::name).collect();
    assert!(
        core.len() < all.len() && core.iter().all(|n| !n.contains('.')),
        "{core:?}"
    );
    assert!(
        ["configmaps", "namespaces", "secrets"]
            .iter()
            .all(|r| core.iter().any(|n| n == r))
    );
    // A named resource that is not served is reported, not skipped silently.
    let resolution = rewrite::resolve(
        &cluster.client,
        &["secrets".into(), "widgets.example.com".into()],
    )
    .await
    .unwrap();
    assert_eq!(resolution.targets.len(), 1);
    assert_eq!(resolution.unusable.len(), 1);
    assert_eq!(resolution.unusable[0].resource, "widgets.example.com");
    assert!(!resolution.unusable[0].from_wildcard);
    assert_eq!(
        ResourceSelector::parse("*."),
        ResourceSelector::Group(String::new())
    );

    // Targeted: only the keys the census lists as off target.
    let targets = rewrite::resolve(&cluster.client, &["*.*".into()])
        .await
        .unwrap()
        .targets;
    let off = cluster.census(&resources).await;
    let keys: Vec<String> = off
        .resources
        .values()
        .flat_map(|r| r.off_target.clone())
        .collect();
    assert_eq!(keys.len() as u64, off.off_target_total());
    let mut with_stray = keys.clone();
    // A key under no resource the server serves (`*.*` covers every served one).
    with_stray.push("/registry/widgets.example.com/default/w".into());
    let report: RewriteReport = rewrite_keys(
        &cluster.client,
        &targets,
        "/registry",
        &with_stray,
        &quiet(8, 500),
    )
    .await;
    assert_eq!(report.rewritten, keys.len() as u64, "{report}");
    assert_eq!(report.errors_total, 1, "the stray key is reported");
    assert!(
        report.errors[0]
            .object
            .contains("/registry/widgets.example.com/")
    );
    let after = cluster.census(&resources).await;
    assert_eq!(after.off_target_total(), 0, "{:?}", after.by_label());
    assert_secrets_intact(&cluster.client, 300, &HashMap::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listed_targeted_rewrite_writes_only_the_census_keys() {
    let mut cluster = Cluster::seeded(98, vec!["secrets", "configmaps"], 400, 60).await;
    let resources = [core("secrets"), core("configmaps")];
    cluster.rotate().await;
    let off = cluster.census(&resources).await;
    let secrets = &off.resources["secrets"].off_target;
    assert_eq!(secrets.len(), 400);
    // Every other secret and every configmap; three of the chosen secrets are deleted after the census.
    let mut chosen: Vec<String> = secrets.iter().step_by(2).cloned().collect();
    chosen.extend(off.resources["configmaps"].off_target.iter().cloned());
    let deleted: Vec<&String> = chosen.iter().take(3).collect();
    for key in &deleted {
        let (ns, name) = key
            .trim_start_matches("/registry/secrets/")
            .split_once('/')
            .unwrap();
        let api: Api<Secret> = Api::namespaced(cluster.client.clone(), ns);
        api.delete(name, &Default::default()).await.unwrap();
    }
    let mut with_stray = chosen.clone();
    with_stray.push("/registry/widgets.example.com/default/w".into());
    let targets = vec![Target::secrets(), Target::configmaps()];
    let servers = Arc::new(rewrite::Servers::one(&cluster.client));
    let report = rewrite::rewrite_keys_through(
        &servers,
        &targets,
        "/registry",
        &with_stray,
        rewrite::Lookup::Listing,
        &quiet(8, 50),
    )
    .await;
    assert_eq!(report.rewritten, chosen.len() as u64 - 3, "{report}");
    assert_eq!(report.gone, 3, "{report}");
    assert_eq!(report.expected, with_stray.len() as u64, "{report}");
    assert_eq!(
        report.errors_total, 1,
        "the stray key is reported: {report}"
    );
    assert!(report.errors[0].object.contains("/registry/widgets"));

    let after = cluster.census(&resources).await;
    let left = &after.resources["secrets"];
    assert_eq!(left.by_label["aescbc:new"], 200 - 3, "{:?}", left.by_label);
    assert_eq!(left.by_label["aescbc:old"], 200, "{:?}", left.by_label);
    assert!(
        left.off_target.iter().all(|key| !chosen.contains(key)),
        "a chosen secret was left on the old key"
    );
    assert_eq!(after.resources["configmaps"].off_target_count, 0);
    assert_secrets_intact(&cluster.client, 400 - 3, &HashMap::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancellation_stops_early_and_a_rerun_finishes() {
    let mut cluster = Cluster::seeded(94, vec!["secrets"], 1000, 0).await;
    cluster.rotate().await;
    let cancel = CancellationToken::new();
    let options = RewriteOptions {
        cancel: cancel.clone(),
        ..quiet(1, 20)
    };
    // Cancel once the census shows the rewrite under way (one writer, so it is far from done).
    let etcd = cluster.etcd.clone();
    let canceller = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let census = etcd
                .census(&[core("secrets")], None, &CensusOptions::default())
                .await
                .unwrap();
            if census.resources["secrets"]
                .by_label
                .get("aescbc:new")
                .copied()
                .unwrap_or(0)
                >= 50
            {
                cancel.cancel();
                return;
            }
        }
    });
    let report = rewrite::rewrite(&cluster.client, &[Target::secrets()], &options).await;
    canceller.await.unwrap();
    assert!(report.interrupted, "{report}");
    assert!(!report.is_success());
    assert!(report.processed() < 1000, "{report}");
    assert_eq!(report.errors_total, 0);
    let partial = cluster.census(&[core("secrets")]).await;
    assert_eq!(
        partial.resources["secrets"].by_label["aescbc:new"],
        report.rewritten
    );

    let rerun = rewrite::rewrite(&cluster.client, &[Target::secrets()], &quiet(16, 500)).await;
    assert!(rerun.is_success(), "{rerun}");
    assert_eq!(rerun.rewritten + report.rewritten, 1000);
    let done = cluster.census(&[core("secrets")]).await;
    assert_eq!(done.off_target_total(), 0);
}

/// Helm-release-sized Secrets (512 KiB each): list pages shrink to the byte target instead of holding 500
/// objects, and every object is still rewritten intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_secrets_are_listed_in_pages_bounded_in_bytes() {
    const LARGE: usize = 24;
    const MIB: usize = 1 << 20;
    let mut cluster = Cluster::seeded(95, vec!["secrets"], 0, 0).await;
    let value = |i: usize| -> Vec<u8> { (0..512 * 1024).map(|j| (j * 31 + i * 7) as u8).collect() };
    let api: Api<Secret> = Api::namespaced(cluster.client.clone(), "rw-a");
    for i in 0..LARGE {
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(format!("sh.helm.release.v1.r{i:02}.v1")),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                "release".to_string(),
                ByteString(value(i)),
            )])),
            ..Default::default()
        };
        api.create(&PostParams::default(), &secret).await.unwrap();
    }
    cluster.rotate().await;
    let options = RewriteOptions {
        page_bytes: MIB,
        queue_bytes: 2 * MIB,
        ..quiet(8, 500)
    };
    let report = rewrite::rewrite(&cluster.client, &[Target::secrets()], &options).await;
    assert!(report.is_success(), "{report}: {:?}", report.errors);
    assert_eq!(report.rewritten, LARGE as u64, "{report}");
    // All 24 in one page would be about 17 MB of JSON; the hard bound is 8 × page_bytes, and after the first
    // page the pages hold about page_bytes.
    assert!(
        report.largest_page_bytes <= 8 * MIB as u64,
        "largest page {} bytes",
        report.largest_page_bytes
    );
    assert!(
        report.largest_page_bytes >= 512 * 1024,
        "{}",
        report.largest_page_bytes
    );
    let census = cluster.census(&[core("secrets")]).await;
    assert_eq!(
        census.resources["secrets"].by_label,
        BTreeMap::from([("aescbc:new".to_string(), LARGE as u64)])
    );
    for i in 0..LARGE {
        let s = api
            .get(&format!("sh.helm.release.v1.r{i:02}.v1"))
            .await
            .unwrap();
        assert_eq!(
            s.data.unwrap()["release"].0,
            value(i),
            "release {i} changed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubeconfig_with_token_and_server_override() {
    use atrest::exec::kube::{ClientOptions, client, client_with};
    let cluster = Cluster::seeded(90, vec!["secrets"], 3, 0).await;
    let dir = &cluster.apiserver.dir;
    let ca = cluster.etcd_process.pki.ca.cert_pem.clone();
    let secrets = |c: kube::Client| async move {
        let api: Api<Secret> = Api::all(c);
        api.list(&Default::default()).await.map(|l| l.items.len())
    };

    // Token auth.
    let good = dir.join("kubeconfig-token");
    common::write_token_kubeconfig(&good, &cluster.apiserver.url, &ca, common::TEST_TOKEN).unwrap();
    assert_eq!(secrets(client(&good).await.unwrap()).await.unwrap(), 3);
    let bad = dir.join("kubeconfig-bad-token");
    common::write_token_kubeconfig(&bad, &cluster.apiserver.url, &ca, "wrong").unwrap();
    match secrets(client(&bad).await.unwrap()).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 401),
        other => panic!("a wrong token must be refused with 401, got {other:?}"),
    }

    // The kubeconfig names the server `kubernetes` (in the certificate, not resolvable); the override dials the
    // address, as through a tunnel, and the certificate is still checked against `kubernetes`.
    let port = cluster.apiserver.url.rsplit(':').next().unwrap();
    let named = dir.join("kubeconfig-named");
    common::write_token_kubeconfig(
        &named,
        &format!("https://kubernetes:{port}"),
        &ca,
        common::TEST_TOKEN,
    )
    .unwrap();
    let options = ClientOptions {
        server_override: Some(cluster.apiserver.url.clone()),
        ..Default::default()
    };
    assert_eq!(
        secrets(client_with(&named, &options).await.unwrap())
            .await
            .unwrap(),
        3
    );
    // A name the certificate does not carry fails verification.
    let wrong_name = dir.join("kubeconfig-wrong-name");
    common::write_token_kubeconfig(
        &wrong_name,
        &format!("https://etcd-node1:{port}"),
        &ca,
        common::TEST_TOKEN,
    )
    .unwrap();
    match secrets(client_with(&wrong_name, &options).await.unwrap()).await {
        Err(e) => {
            let chain = common::error_chain(&e);
            assert!(common::refused_for_name(&chain), "{chain}");
        }
        Ok(n) => panic!("a server name the certificate lacks must be refused, listed {n} secrets"),
    }

    // A missing kubeconfig names the file.
    let missing = dir.join("no-such-kubeconfig");
    let Err(error) = client(&missing).await else {
        panic!("a missing kubeconfig must fail")
    };
    let error = error.to_string();
    assert!(error.contains("no-such-kubeconfig"), "{error}");
}

/// Gives [`common::LIMITED_USER`] the rights of `cluster-admin`, and puts it in a priority level of its own with
/// four seats that rejects rather than queues: API Priority and Fairness answers 429 to its fifth concurrent
/// request. (The server's seats are shared by nominal shares: on a server with 30 in-flight seats in all, the
/// built-in levels' 245 shares plus this level's 30 give it ceil(30 × 30 / 275) = 4 seats, and it may neither lend
/// nor borrow.) One seat was tried: an update keeps its seat a little after it answers (APF's estimate of the
/// watch notifications it causes), so even one request at a time meets a 429 every other request, and honouring
/// each `Retry-After` of 1 s leaves about 1 object/s.
async fn limit_to_four_seats(admin: &kube::Client) {
    let create = PostParams::default();
    let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "atrest-limited-admin"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": common::LIMITED_USER}],
    }))
    .unwrap();
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(&create, &binding)
        .await
        .unwrap();
    let level: PriorityLevelConfiguration = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "atrest-four-seats"},
        "spec": {"type": "Limited", "limited": {
            "nominalConcurrencyShares": 30,
            "lendablePercent": 0,
            "borrowingLimitPercent": 0,
            "limitResponse": {"type": "Reject"},
        }},
    }))
    .unwrap();
    Api::<PriorityLevelConfiguration>::all(admin.clone())
        .create(&create, &level)
        .await
        .unwrap();
    let schema: FlowSchema = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "atrest-limited"},
        "spec": {
            "priorityLevelConfiguration": {"name": "atrest-four-seats"},
            "matchingPrecedence": 50,
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [{
                "subjects": [{"kind": "User", "user": {"name": common::LIMITED_USER}}],
                "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"],
                                   "namespaces": ["*"], "clusterScope": true}],
                "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
            }],
        },
    }))
    .unwrap();
    Api::<FlowSchema>::all(admin.clone())
        .create(&create, &schema)
        .await
        .unwrap();
}

/// Concurrent reads as `client` until the server rejects one with 429 (the priority level is in force), within
/// 30 s; returns the 429's status.
async fn first_429(client: &kube::Client) -> Box<kube::core::Status> {
    let api: Api<Secret> = Api::namespaced(client.clone(), "rw-a");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        let results: Vec<_> = futures::stream::iter(0..32)
            .map(|_| api.get("s-00000"))
            .buffer_unordered(32)
            .collect()
            .await;
        let rejected = results.into_iter().find_map(|result| match result {
            Err(kube::Error::Api(status)) if status.code == 429 => Some(status),
            _ => None,
        });
        if let Some(status) = rejected {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no 429 from API Priority and Fairness within 30 s");
}

/// A real 429: the rewrite runs as a user whom API Priority and Fairness gives four seats and no queue (see
/// [`limit_to_four_seats`]); it meets 429s, waits the server's `Retry-After` (API Priority and Fairness sends it
/// only as a header on a plain-text answer, which the client keeps: exec::retry_after), lowers its requests in
/// flight, and still moves every secret to the new key unchanged. (Before the pacing, 8 writers each retrying
/// on their own timer against one seat once left an object out of attempts.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_priority_and_fairness_429s_are_retried() {
    let in_flight = [
        "--max-requests-inflight=20",
        "--max-mutating-requests-inflight=10",
    ];
    let mut cluster = Cluster::seeded_with_flags(96, vec!["secrets"], 400, 0, &in_flight).await;
    cluster.rotate().await;
    limit_to_four_seats(&cluster.client).await;
    let kubeconfig = cluster.apiserver.dir.join("kubeconfig-limited");
    let ca = cluster.etcd_process.pki.ca.cert_pem.clone();
    common::write_token_kubeconfig(
        &kubeconfig,
        &cluster.apiserver.url,
        &ca,
        common::LIMITED_TOKEN,
    )
    .unwrap();
    let limited = atrest::exec::kube::client(&kubeconfig).await.unwrap();
    let status = first_429(&limited).await;
    assert!(
        status.message.to_lowercase().contains("too many requests"),
        "{status:?}"
    );
    assert_eq!(
        status.details.as_ref().map(|d| d.retry_after_seconds),
        Some(1),
        "API Priority and Fairness asks for 1 s: {status:?}"
    );

    let report = rewrite::rewrite(&limited, &[Target::secrets()], &quiet(32, 50)).await;
    eprintln!("as a four-seat user: {report}");
    assert!(
        report.is_success(),
        "{report}: {:?} {:?}",
        report.errors,
        report.failed_resources
    );
    assert!(report.throttled > 0, "no 429 was met: {report}");
    assert_eq!(report.processed(), 400, "{report}");
    let census = cluster.census(&[core("secrets")]).await;
    assert_eq!(
        census.resources["secrets"].by_label,
        BTreeMap::from([("aescbc:new".to_string(), 400)])
    );
    assert_secrets_intact(&cluster.client, 400, &HashMap::new()).await;
}
