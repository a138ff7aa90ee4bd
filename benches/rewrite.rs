//! Rewrite benchmark: atrest vs the `kubectl get | kubectl replace` pipeline vs the raw etcd put ceiling, plus
//! the peak RSS of a large rewrite. Run: `scripts/build-upstream.sh && cargo bench --bench rewrite`
//! (the real etcd and kube-apiserver as host processes) (see docs/benchmarks.md). Environment knobs:
//! `ATREST_BENCH_OBJECTS` (10000), `ATREST_BENCH_RSS_OBJECTS` (100000, 0 to skip),
//! `ATREST_BENCH_LARGE_OBJECTS` (2000 secrets of 1 MiB on a second etcd and server, 0 to skip),
//! `ATREST_BENCH_MIXED_SMALL` and `ATREST_BENCH_MIXED_LARGE` (10000 secrets of ~2 KiB and 1000 of 0.5–1 MiB on
//! a third etcd and server for the mixed row, 0 to skip),
//! `ATREST_BENCH_CONCURRENCY` (adaptive,16,32,64,128,256: `adaptive` is the default setting, a number pins it),
//! `ATREST_BENCH_SKIP_KUBECTL` (unset).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "shared/etcd_rates.rs"]
mod etcd_rates;

use anyhow::{Context, Result, bail, ensure};
use atrest::exec::etcd::{CensusOptions, Etcd, EtcdResource, EtcdTarget, EtcdTls};
use atrest::exec::rewrite::{self, Concurrency, ProgressMode, RewriteOptions, Target};
use atrest::exec::sizes::StoredSizes;
use common::{
    ETCD_SERVER_NAME, LocalApiserver, LocalEtcd, aescbc_config, private_loopback, random_key,
};
use etcd_rates::{put_rate, read_then_put_rate};
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, ObjectMeta, PostParams};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

const CHILD_ENV: &str = "ATREST_BENCH_CHILD_KUBECONFIG";
/// The child's etcd: `<client url> <ca file> <client cert file> <client key file>`, for the census that sizes
/// its list pages, as `atrest` takes one before each rewrite.
const CHILD_ETCD_ENV: &str = "ATREST_BENCH_CHILD_ETCD";
const NAMESPACES: usize = 10;
/// The payload of a seeded secret: ~2 KiB, or a Helm-release-sized 1 MiB in the large-object run.
const SMALL: usize = 2048;
const LARGE: usize = 1 << 20;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; the child mode is selected by environment.
    if let Ok(kubeconfig) = std::env::var(CHILD_ENV) {
        return rss_child(Path::new(&kubeconfig));
    }
    // `cargo test --all-targets` runs bench targets too, without `--bench`: the benchmark takes minutes and is
    // meaningless in a debug build, so it only runs under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!("rewrite benchmark: skipped (run it with `cargo bench --bench rewrite`)");
        return Ok(());
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

/// Only the rewrite, in its own process, so VmHWM is the rewrite's peak and nothing else's.
fn rss_child(kubeconfig: &Path) -> Result<()> {
    // As `atrest`'s main does.
    atrest::memory::return_large_blocks();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(async {
        let client = atrest::exec::kube::client(kubeconfig).await?;
        let options = RewriteOptions {
            progress: ProgressMode::Quiet,
            ..Default::default()
        };
        let target = secrets_sized(&child_etcd().await?).await?;
        anyhow::Ok(rewrite::rewrite(&client, &[target], &options).await)
    })?;
    let status = std::fs::read_to_string("/proc/self/status")?;
    let hwm_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmHWM missing from /proc/self/status")?;
    println!(
        "{}",
        serde_json::json!({
            "vmhwm_kib": hwm_kib,
            "processed": report.processed(),
            "rewritten": report.rewritten,
            "unchanged": report.unchanged,
            "errors": report.errors_total,
            "first_errors": report.errors.iter().take(3).map(|e| e.error.clone()).collect::<Vec<_>>(),
            "seconds": report.elapsed.as_secs_f64(),
        })
    );
    Ok(())
}

/// The child's etcd client: the census `atrest` takes before a rewrite runs in this process, so its memory counts.
async fn child_etcd() -> Result<Etcd> {
    let spec = std::env::var(CHILD_ETCD_ENV).context("the child's etcd")?;
    let [url, ca, cert, key] = spec.split(' ').collect::<Vec<_>>()[..] else {
        bail!("{CHILD_ETCD_ENV}: four fields expected");
    };
    let etcd = Etcd::connect(&EtcdTarget {
        endpoints: vec![url.to_string()],
        tls: Some(EtcdTls {
            ca_pem: std::fs::read(ca)?,
            cert_pem: std::fs::read(cert)?,
            key_pem: Zeroizing::new(std::fs::read(key)?),
            server_name: Some(ETCD_SERVER_NAME.to_string()),
        }),
    })
    .await?;
    Ok(etcd)
}

async fn census_sizes(etcd: &Etcd) -> Result<StoredSizes> {
    let census = etcd
        .census(
            &[EtcdResource::new("/registry", "", "secrets")],
            None,
            &CensusOptions::default(),
        )
        .await?;
    Ok(census.resources["secrets"].sizes.clone())
}

/// The secrets, with the stored sizes a census taken now finds (what `atrest` knows when it rewrites).
async fn secrets_sized(etcd: &Etcd) -> Result<Target> {
    Ok(Target {
        sizes: Some(Arc::new(census_sizes(etcd).await?)),
        ..Target::secrets()
    })
}

struct Bench {
    etcd_process: LocalEtcd,
    etcd: Etcd,
    apiserver: LocalApiserver,
    client: kube::Client,
    keys: [(String, String); 2],
    /// Index into `keys` of the current write key.
    write: usize,
    _dir: tempfile::TempDir,
}

impl Bench {
    async fn up(octet: u8) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let ip = private_loopback(octet);
        let etcd_dir = dir.path().join("etcd");
        let etcd_process = LocalEtcd::start_in(&etcd_dir, ip.into(), true)?;
        let etcd = etcd_process.ready().await?;
        let keys = [
            ("a".to_string(), random_key()),
            ("b".to_string(), random_key()),
        ];
        let config = aescbc_config(&["secrets"], &[(&keys[0].0, &keys[0].1)]);
        let apiserver =
            LocalApiserver::start(&etcd_process, &dir.path().join("apiserver"), &config)?;
        let client = apiserver.ready().await?;
        Ok(Self {
            etcd_process,
            etcd,
            apiserver,
            client,
            keys,
            write: 0,
            _dir: dir,
        })
    }

    fn write_label(&self) -> String {
        format!("aescbc:{}", self.keys[self.write].0)
    }

    /// Swap the key order so every stored secret becomes stale (read through the second key).
    async fn rotate(&mut self) -> Result<()> {
        self.write = 1 - self.write;
        let (w, r) = (&self.keys[self.write], &self.keys[1 - self.write]);
        let config = aescbc_config(&["secrets"], &[(&w.0, &w.1), (&r.0, &r.1)]);
        self.apiserver.restart_with(&config)?;
        self.client = self.apiserver.ready().await?;
        Ok(())
    }

    async fn seed(&self, count: usize, start: usize, size: usize) -> Result<Duration> {
        let started = Instant::now();
        self.seed_sized(count, start, |_| size).await?;
        Ok(started.elapsed())
    }

    /// Seeds secrets `start..start + count` (the `i`th of `size(i)` bytes) into the bench's namespaces, creating
    /// them first when `start` is 0; the bytes seeded in all.
    async fn seed_sized(
        &self,
        count: usize,
        start: usize,
        size: impl Fn(usize) -> usize + Copy,
    ) -> Result<usize> {
        if start == 0 {
            let namespaces: Api<Namespace> = Api::all(self.client.clone());
            for n in 0..NAMESPACES {
                let ns = Namespace {
                    metadata: ObjectMeta {
                        name: Some(format!("bench-{n}")),
                        ..Default::default()
                    },
                    ..Default::default()
                };
                namespaces.create(&PostParams::default(), &ns).await?;
            }
        }
        let failures = futures::stream::iter(start..start + count)
            .map(|i| async move {
                let api: Api<Secret> =
                    Api::namespaced(self.client.clone(), &format!("bench-{}", i % NAMESPACES));
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(format!("s-{i:07}")),
                        ..Default::default()
                    },
                    data: Some(BTreeMap::from([(
                        "payload".to_string(),
                        ByteString(vec![b'a' + (i % 26) as u8; size(i)]),
                    )])),
                    ..Default::default()
                };
                api.create(&PostParams::default(), &secret).await.is_err()
            })
            .buffer_unordered(if size(start) > SMALL { 16 } else { 64 })
            .filter(|failed| std::future::ready(*failed))
            .count()
            .await;
        ensure!(failures == 0, "{failures} secrets could not be created");
        Ok((start..start + count).map(size).sum())
    }

    /// All secrets on the current write key?
    async fn assert_all_on_write_key(&self, expected: u64) -> Result<()> {
        let census = self
            .etcd
            .census(
                &[EtcdResource::new("/registry", "", "secrets")],
                Some(&self.write_label()),
                &CensusOptions {
                    page_size: 1000,
                    max_off_target: 10,
                    ..Default::default()
                },
            )
            .await?;
        let secrets = &census.resources["secrets"];
        ensure!(
            secrets.by_label.get(&self.write_label()).copied() == Some(expected)
                && secrets.off_target_count == 0,
            "census after rewrite: {:?}",
            secrets.by_label
        );
        Ok(())
    }
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_comm = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    ticks / 100.0
}

struct CpuProbe {
    pids: Vec<(&'static str, u32)>,
    start: Vec<f64>,
}

impl CpuProbe {
    fn start(pids: Vec<(&'static str, u32)>) -> Self {
        let start = pids.iter().map(|(_, p)| cpu_seconds(*p)).collect();
        Self { pids, start }
    }

    /// CPU seconds used by the `index`th process since `start`.
    fn used(&self, index: usize) -> f64 {
        cpu_seconds(self.pids[index].1) - self.start[index]
    }

    fn finish(&self) -> String {
        self.pids
            .iter()
            .zip(&self.start)
            .map(|((name, pid), s)| format!("{name} {:.1}s", cpu_seconds(*pid) - s))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

async fn run() -> Result<()> {
    let objects = env_usize("ATREST_BENCH_OBJECTS", 10_000);
    let rss_objects = env_usize("ATREST_BENCH_RSS_OBJECTS", 100_000);
    let large_objects = env_usize("ATREST_BENCH_LARGE_OBJECTS", 2_000);
    let concurrencies: Vec<Concurrency> = std::env::var("ATREST_BENCH_CONCURRENCY")
        .unwrap_or_else(|_| "adaptive,16,32,64,128,256".into())
        .split(',')
        .filter_map(|c| match c.trim() {
            "adaptive" => Some(Concurrency::Adaptive),
            n => n.parse().ok().map(Concurrency::Pinned),
        })
        .collect();
    println!(
        "# atrest rewrite benchmark ({} cores, {objects} secrets of ~2 KiB)",
        num_cpus()
    );
    println!(
        "load average at start: {}",
        std::fs::read_to_string("/proc/loadavg")?.trim()
    );

    let mut bench = Bench::up(89).await?;
    let seeded = bench.seed(objects, 0, SMALL).await?;
    println!(
        "seeded {objects} secrets in {:.1}s ({:.0}/s)",
        seeded.as_secs_f64(),
        objects as f64 / seeded.as_secs_f64()
    );

    // 1. atrest, at a few concurrencies (each run on freshly stale data: the key order is swapped first).
    let etcd_pid = bench.etcd_process.pid();
    let mut atrest_rate = 0f64;
    let mut atrest_runs = Vec::new();
    for concurrency in concurrencies {
        bench.rotate().await?;
        // Before the CPU probe: the census is not part of the rewrite's cost.
        let target = secrets_sized(&bench.etcd).await?;
        let apiserver_pid = bench
            .apiserver
            .pid()
            .context("kube-apiserver not running")?;
        let probe = CpuProbe::start(vec![
            ("atrest(bench process)", std::process::id()),
            ("kube-apiserver", apiserver_pid),
            ("etcd", etcd_pid),
        ]);
        let options = RewriteOptions {
            concurrency,
            progress: ProgressMode::Quiet,
            ..Default::default()
        };
        let name = setting_name(concurrency);
        let perf = perf_record(&name, &[apiserver_pid, etcd_pid, std::process::id()])?;
        let report = rewrite::rewrite(&bench.client, &[target], &options).await;
        perf_finish(perf)?;
        ensure!(
            report.is_success() && report.rewritten == objects as u64,
            "atrest rewrite: {report}"
        );
        bench.assert_all_on_write_key(objects as u64).await?;
        println!(
            "atrest rewrite ({name}, pages of 500): {report}; {} in flight at the end, {} back-offs",
            report.final_concurrency, report.saturations
        );
        println!("  CPU during the rewrite: {}", probe.finish());
        atrest_rate = atrest_rate.max(report.objects_per_second());
        atrest_runs.push((name, report.objects_per_second()));
    }

    // 2. The Kubernetes docs' pipeline on the same data.
    let kubectl_rate = if std::env::var_os("ATREST_BENCH_SKIP_KUBECTL").is_none() {
        bench.rotate().await?;
        let probe = CpuProbe::start(vec![
            ("kube-apiserver", bench.apiserver.pid().unwrap_or_default()),
            ("etcd", etcd_pid),
        ]);
        let started = Instant::now();
        let kubeconfig = bench.apiserver.kubeconfig.display().to_string();
        let status = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "set -o pipefail; kubectl --kubeconfig {kubeconfig} get secrets -A -o json | \
                 kubectl --kubeconfig {kubeconfig} replace -f - > /dev/null"
            ))
            .status()?;
        let elapsed = started.elapsed();
        if !status.success() {
            bail!("kubectl pipeline failed: {status}");
        }
        bench.assert_all_on_write_key(objects as u64).await?;
        let rate = objects as f64 / elapsed.as_secs_f64();
        println!(
            "kubectl get | kubectl replace: {objects} in {:.1}s ({rate:.0} objects/s)",
            elapsed.as_secs_f64()
        );
        println!("  CPU during the pipeline: {}", probe.finish());
        Some(rate)
    } else {
        None
    };

    // 3. The ceiling: raw etcd puts of 2 KiB values with one persistent client.
    let mut best_put = 0f64;
    for c in [1usize, 8, 32, 64, 128] {
        let probe = CpuProbe::start(vec![("etcd", etcd_pid)]);
        let rate = put_rate(bench.etcd.client(), objects, c).await?;
        best_put = best_put.max(rate);
        println!(
            "raw etcd put, concurrency {c}: {rate:.0} puts/s ({})",
            probe.finish()
        );
    }
    // What an API server does per update of a stale object (reference §1.8): read the key, then a put
    // conditioned on its mod_revision. The ceiling for any rewrite through the API on this etcd.
    let mut best_pair = 0f64;
    let mut least_etcd_cpu = f64::MAX;
    for c in [32usize, 64, 128, 256] {
        let probe = CpuProbe::start(vec![("etcd", etcd_pid)]);
        let rate = read_then_put_rate(bench.etcd.client(), objects, c).await?;
        best_pair = best_pair.max(rate);
        least_etcd_cpu = least_etcd_cpu.min(probe.used(0) / objects as f64);
        println!(
            "raw etcd get + conditional put, concurrency {c}: {rate:.0} objects/s ({})",
            probe.finish()
        );
    }

    println!("\n| measure | value |\n|---|---|");
    for (name, rate) in &atrest_runs {
        println!("| atrest rewrite, {name} | {rate:.0} objects/s |");
    }
    let best_pinned = atrest_runs
        .iter()
        .filter(|(name, _)| name.starts_with("--"))
        .map(|(_, rate)| *rate)
        .fold(0f64, f64::max);
    if let Some((_, adaptive)) = atrest_runs
        .iter()
        .find(|(name, _)| name.starts_with("adaptive"))
    {
        println!(
            "| adaptive / best pinned | {:.0} % (target ≥ 90 %) |",
            100.0 * adaptive / best_pinned.max(f64::MIN_POSITIVE)
        );
    }
    if let Some(k) = kubectl_rate {
        println!("| kubectl get \\| replace | {k:.0} objects/s |");
        println!(
            "| atrest / kubectl | {:.1}× (target ≥ 20×) |",
            atrest_rate / k
        );
    }
    println!("| best raw etcd put rate | {best_put:.0} puts/s |");
    println!(
        "| atrest / raw etcd puts | {:.0} % (target ≥ 50 %) |",
        100.0 * atrest_rate / best_put
    );
    println!("| best raw etcd get + conditional put | {best_pair:.0} objects/s |");
    println!(
        "| atrest / raw get + conditional put | {:.0} % |",
        100.0 * atrest_rate / best_pair
    );
    // Even with no API server and no client, etcd's own CPU for a read + conditional put bounds the rate.
    let etcd_bound = num_cpus() as f64 / least_etcd_cpu;
    println!(
        "| etcd CPU per read + conditional put (least) | {:.3} ms → at most {etcd_bound:.0} objects/s on {} cores, etcd alone |",
        least_etcd_cpu * 1000.0,
        num_cpus()
    );
    if let Some(k) = kubectl_rate {
        println!(
            "| needed for the targets | 20× kubectl = {:.0} objects/s; 50 % of raw put = {:.0} objects/s |",
            20.0 * k,
            best_put / 2.0
        );
    }

    // 4. Peak RSS of a large rewrite in a separate process.
    if rss_objects > 0 {
        let extra = rss_objects.saturating_sub(objects);
        let seeded = bench.seed(extra, objects, SMALL).await?;
        println!(
            "\nseeded {extra} more secrets in {:.1}s",
            seeded.as_secs_f64()
        );
        bench.rotate().await?;
        peak_rss(
            &bench,
            rss_objects,
            rss_objects * SMALL,
            "secrets of ~2 KiB",
        )
        .await?;
    }

    // 5. The same with Helm-release-sized secrets, on a second etcd and server (the first holds the small ones).
    drop(bench);
    if large_objects > 0 {
        let mut large = Bench::up(90).await?;
        let seeded = large.seed(large_objects, 0, LARGE).await?;
        println!(
            "\nseeded {large_objects} secrets of 1 MiB in {:.1}s",
            seeded.as_secs_f64()
        );
        large.rotate().await?;
        let large_bytes = large_objects * LARGE;
        peak_rss(&large, large_objects, large_bytes, "secrets of 1 MiB").await?;
    }
    // 6. The mix: Helm-release-sized secrets of 0.5 to 1 MiB, each namespace's before its many small ones, so
    // pages of small secrets run into large ones (a cluster with Helm releases). On a third etcd and server: with
    // 2 GB stored, the 1 MiB row's etcd and kube-apiserver hold about 10 GB each, and the two rows' together do
    // not fit on the 23 GiB machine.
    let (mixed_small, mixed_large) = (
        env_usize("ATREST_BENCH_MIXED_SMALL", 10_000),
        env_usize("ATREST_BENCH_MIXED_LARGE", 1_000),
    );
    if mixed_small > 0 && mixed_large > 0 {
        let mut mixed = Bench::up(91).await?;
        let large_bytes = mixed.seed_sized(mixed_large, 0, helm_release_size).await?;
        mixed.seed(mixed_small, mixed_large, SMALL).await?;
        mixed.rotate().await?;
        let what = format!("secrets: {mixed_small} of ~2 KiB and {mixed_large} of 0.5–1 MiB");
        let bytes = large_bytes + mixed_small * SMALL;
        peak_rss(&mixed, mixed_large + mixed_small, bytes, &what).await?;
    }
    println!(
        "load average at end: {}",
        std::fs::read_to_string("/proc/loadavg")?.trim()
    );
    Ok(())
}

/// A rewrite of every secret with the default settings, in a child process: its peak RSS and rate (objects/s,
/// and MiB/s of payload: `bytes` in all).
async fn peak_rss(bench: &Bench, expected: usize, bytes: usize, what: &str) -> Result<()> {
    let pki = &bench.etcd_process.pki;
    let etcd = [
        bench.etcd_process.client_url.clone(),
        pki.ca_file().display().to_string(),
        pki.client_cert_file().display().to_string(),
        pki.client_key_file().display().to_string(),
    ];
    let output = std::process::Command::new(std::env::current_exe()?)
        .env(CHILD_ENV, &bench.apiserver.kubeconfig)
        .env(CHILD_ETCD_ENV, etcd.join(" "))
        .output()?;
    ensure!(
        output.status.success(),
        "RSS child failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = String::from_utf8_lossy(&output.stdout);
    let result: serde_json::Value = serde_json::from_str(line.trim())?;
    bench
        .assert_all_on_write_key(expected as u64)
        .await
        .with_context(|| format!("the rewrite reported {result}"))?;
    let mib = result["vmhwm_kib"].as_f64().unwrap_or_default() / 1024.0;
    let seconds = result["seconds"].as_f64().unwrap_or(1.0);
    println!(
        "| peak RSS (VmHWM), rewrite of {} {what} (default settings) | {mib:.1} MiB (target < 100 MiB); {:.0} objects/s, {:.1} MiB/s of payload in {seconds:.1} s |",
        result["processed"],
        result["processed"].as_f64().unwrap_or_default() / seconds,
        bytes as f64 / (1024.0 * 1024.0) / seconds
    );
    Ok(())
}

/// A Helm release's size for the `i`th large secret: from 0.5 MiB to 1 MiB, in 1 KiB steps.
fn helm_release_size(i: usize) -> usize {
    LARGE / 2 + (i * 1024) % (LARGE / 2 + 1024)
}

fn setting_name(concurrency: Concurrency) -> String {
    match concurrency {
        Concurrency::Adaptive => "adaptive (default)".into(),
        Concurrency::Pinned(n) => format!("--rewrite-concurrency {n}"),
    }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// With `ATREST_BENCH_PERF_DIR` set: `perf record` the given processes during one run.
fn perf_record(name: &str, pids: &[u32]) -> Result<Option<std::process::Child>> {
    let Some(dir) = std::env::var_os("ATREST_BENCH_PERF_DIR") else {
        return Ok(None);
    };
    let pids = pids
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let out = Path::new(&dir).join(format!("perf-{name}.data"));
    let child = std::process::Command::new("perf")
        .args(["record", "-F", "499", "-g", "-p", &pids, "-o"])
        .arg(out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(Some(child))
}

fn perf_finish(child: Option<std::process::Child>) -> Result<()> {
    if let Some(mut child) = child {
        std::process::Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()?;
        child.wait()?;
    }
    Ok(())
}
