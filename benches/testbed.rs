//! The rewrite benchmark on the 3-node testbed (3 sshd + dockerd nodes, a 3-member etcd cluster, the real
//! kube-apiserver in an RKE-shaped container per node), the shape of a real HA cluster: the `atrest` binary does
//! the whole job (deploys, rolling restarts, rewrite, census), and each rate is measured on stale data.
//!
//! Run: `scripts/build-upstream.sh && cargo bench --bench testbed` (as root; see docs/benchmarks.md).
//!
//! Knobs:
//! - `ATREST_BENCH_OBJECTS` (10000): secrets of ~2 KiB.
//! - `ATREST_BENCH_CONCURRENCY` (64,128,256): the fixed sweep, one rotate-key with `--rewrite-concurrency N`
//!   per value and round.
//! - `ATREST_BENCH_ROUNDS` (2): every rotate-key setting (default, `--rewrite-servers one`, the sweep) runs once
//!   per round; each round runs them in the reverse order of the one before, and the rows show the means.
//! - `ATREST_BENCH_SKIP_RKE` (unset): skip the sample of the real `rke encrypt rotate-key` (it needs `rke` from
//!   `scripts/build-upstream.sh`).
//! - `ATREST_BENCH_SKIP_KUBECTL` (unset): skip both kubectl runs.
//! - `ATREST_BENCH_SKIP_RELOAD` (unset: after the restart-path rotations, cluster.yml asks for automatic reload,
//!   one rotate-key brings the flag and the next is timed on the reload path).
//! - `ATREST_BENCH_STATUS_NODES` (1,7; empty skips): after the rest, one testbed per count, encrypted by
//!   `atrest up`, on which `atrest encrypt status` is timed [`STATUS_RUNS`] times.
//!
//! Rows of the final table, in order:
//! - atrest's rewrite rate during `up` (enable), default settings.
//! - rotate-key with default settings (adaptive concurrency: no `--rewrite-concurrency`; writes through every
//!   controlplane's API server), the same with `--rewrite-servers one`, then one per fixed concurrency of the
//!   sweep, each with its rate per round and their mean; the default's mean as a share of the sweep's best mean
//!   (target ≥ 90 %).
//! - CPU during the first default rotate-key, the whole command (restarts and census included, not only the rewrite):
//!   atrest (its `/proc/self/stat` cutime + cstime, what `getrusage(RUSAGE_CHILDREN)` gives) / this testbed's
//!   kube-apiservers / its etcd members (`/proc/<pid>/stat` utime + stime, polled while the command runs, so a
//!   server restarted mid-way counts up to its last poll); atrest's CPU per object; atrest / (servers + etcd)
//!   (target ≤ 10 %).
//! - The reload-path rotate-key and the one that brings the reload flag (unless skipped).
//! - kubectl on the same stale data (unless skipped): the documentation's `kubectl get | kubectl replace`, and
//!   what a practised operator scripts: one list, split into 16 shards, 16 `kubectl replace` in parallel; atrest
//!   default / 16 shards (target ≥ 1.5×), atrest default / documentation pipeline (target ≥ 5×), atrest best /
//!   pipeline (target ≥ 20×). Before them, the same stale data rewritten by `atrest encrypt reencrypt` (stepwise:
//!   no restarts). For each of the three the log shows the servers' CPU during the rewrite alone, per object.
//! - The ceilings on the same 3-member etcd: raw puts, raw get + conditional put, and atrest's best against them.
//! - The real `rke encrypt rotate-key` on the same cluster (unless skipped), sampled: its rewrite's rate over
//!   [`RKE_SAMPLE`], counted in etcd, and atrest's default against it. `rke` is stopped after the sample.
//! - `atrest encrypt status` on 1 and on 7 nodes: median, least and most of [`STATUS_RUNS`] runs, and the ratio
//!   (target: 7 nodes within 1.5× of 1). The log shows the CPU every command name used per run (a profile of
//!   where the machine's time goes) and the machine's busy CPU in as long a time right after, with no command.

use anyhow::{Context, Result, anyhow, bail, ensure};
use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, Identity, TlsOptions};
use serde_json::Value;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use testbed::harness::{Apiserver, Options, Testbed};

#[path = "shared/etcd_rates.rs"]
mod etcd_rates;
use etcd_rates::{put_rate, read_then_put_rate};

const SIZE: usize = 2048;

/// Parallel `kubectl replace` processes of the sharded kubectl run.
const SHARDS: usize = 16;

/// Timed `atrest encrypt status` runs per node count.
const STATUS_RUNS: usize = 5;

/// How often /proc is read for the servers' CPU while a command runs.
const CPU_POLL: Duration = Duration::from_millis(250);

fn main() -> Result<()> {
    // `cargo test --all-targets` builds and runs bench targets without `--bench`: skip, it takes minutes.
    if !std::env::args().any(|a| a == "--bench") {
        println!("testbed benchmark: skipped (run it with `cargo bench --bench testbed`)");
        return Ok(());
    }
    let objects: usize = std::env::var("ATREST_BENCH_OBJECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let concurrencies: Vec<usize> = std::env::var("ATREST_BENCH_CONCURRENCY")
        .unwrap_or_else(|_| "64,128,256".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    println!("# atrest rewrite benchmark on the 3-node testbed ({objects} secrets of ~2 KiB)");
    println!("load average at start: {}", load_average()?);
    // Asked now: `getconf` is a child, and children's CPU is measured around the default rotate-key.
    println!("clock ticks per second: {}", ticks_per_second());
    let tb = seeded_testbed(objects)?;
    let atrest = Atrest { tb: &tb };

    // Enable (identity → aescbc): prepare, recreate with the flag, rewrite, verify, finish.
    set_encryption(&tb.cluster_yml(), true)?;
    let (out, enable_seconds) = atrest.timed(&["up", "--yes"])?;
    let enable = rewrite_rate(&out)?;
    println!("atrest up (enable): {}", enable.line);
    ensure!(
        enable.rewritten == objects as u64,
        "enable rewrote {}",
        enable.rewritten
    );

    let rounds: usize = std::env::var("ATREST_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let rotations = rotations(&tb, &atrest, objects, &concurrencies, rounds)?;
    let reload = if std::env::var_os("ATREST_BENCH_SKIP_RELOAD").is_some() {
        None
    } else {
        Some(reload_rotation(&tb, &atrest, objects)?)
    };
    let kubectl = if std::env::var_os("ATREST_BENCH_SKIP_KUBECTL").is_some() {
        None
    } else {
        Some(kubectl_runs(&tb, &atrest, objects)?)
    };
    let ceilings = etcd_ceilings(&tb, objects)?;
    // Last on this testbed: the sample stops `rke` half-way through its rewrite.
    let rke = if std::env::var_os("ATREST_BENCH_SKIP_RKE").is_some() {
        None
    } else {
        Some(rke_rewrite(&tb)?)
    };

    drop(tb);
    let status = status_times()?;
    print_table(&Report {
        objects,
        enable_seconds,
        status,
        enable_rate: enable.rate,
        rotations,
        reload,
        kubectl,
        ceilings,
        rke,
    });
    println!("load average at end: {}", load_average()?);
    Ok(())
}

fn load_average() -> Result<String> {
    Ok(std::fs::read_to_string("/proc/loadavg")?.trim().to_string())
}

/// Brings the testbed up with the real kube-apiserver and creates `objects` secrets of [`SIZE`] bytes.
fn seeded_testbed(objects: usize) -> Result<Testbed> {
    let apiserver = Apiserver::upstream()?;
    println!("servers: {apiserver:?}");
    let started = Instant::now();
    let tb = Testbed::up(Options {
        nodes: 3,
        apiserver,
        ..Options::default()
    })?;
    println!(
        "testbed up in {:.1} s at {}",
        started.elapsed().as_secs_f64(),
        tb.dir().display()
    );
    let started = Instant::now();
    tb.seed(objects, 0, SIZE)?;
    println!(
        "seeded {objects} secrets in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(tb)
}

/// Everything the final table shows.
struct Report {
    objects: usize,
    /// Wall time of the `atrest up` that enables encryption.
    enable_seconds: f64,
    /// Per node count: `atrest encrypt status` runs, by wall time.
    status: Vec<(usize, Vec<StatusRun>)>,
    enable_rate: f64,
    rotations: Rotations,
    reload: Option<ReloadRotation>,
    kubectl: Option<KubectlRates>,
    ceilings: Ceilings,
    rke: Option<RkeSample>,
}

/// One timed restart-path rotate-key.
struct Rotation {
    /// The rewrite phase's own rate (objects/s).
    rate: f64,
    /// The whole command's wall time.
    seconds: f64,
}

/// One setting of the restart-path rotate-key rows.
#[derive(Clone, Copy, PartialEq)]
enum Setting {
    /// No flag: adaptive concurrency, writes through every controlplane's API server.
    Default,
    /// The default but `--rewrite-servers one`: the writes through the kubeconfig's server alone.
    OneServer,
    /// `--rewrite-concurrency N`.
    Fixed(usize),
}

impl Setting {
    fn label(self) -> String {
        match self {
            Setting::Default => "default (adaptive)".into(),
            Setting::OneServer => "default but `--rewrite-servers one`".into(),
            Setting::Fixed(c) => format!("{c} writers"),
        }
    }
}

/// The restart-path rotate-keys: every setting once per round, each round in the reverse order of the one
/// before (default first, then last, …), so that neither order nor drift favours a setting.
struct Rotations {
    /// Per setting, its runs in round order.
    runs: Vec<(Setting, Vec<Rotation>)>,
    /// Around the first round's default run.
    cpu: CpuSplit,
}

impl Rotations {
    fn runs_of(&self, setting: Setting) -> &[Rotation] {
        self.runs
            .iter()
            .find(|(s, _)| *s == setting)
            .map_or(&[], |(_, runs)| runs.as_slice())
    }

    /// The mean rewrite rate of a setting over its rounds.
    fn mean_rate(&self, setting: Setting) -> f64 {
        let runs = self.runs_of(setting);
        runs.iter().map(|r| r.rate).sum::<f64>() / runs.len().max(1) as f64
    }

    /// The fixed concurrency with the best mean rate, if any.
    fn best_fixed(&self) -> Option<(usize, f64)> {
        self.runs
            .iter()
            .filter_map(|(s, _)| match s {
                Setting::Fixed(c) => Some((*c, self.mean_rate(*s))),
                _ => None,
            })
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }
}

/// `rounds` rounds of key rotations with atrest over every setting; the CPU split around the first default.
fn rotations(
    tb: &Testbed,
    atrest: &Atrest,
    objects: usize,
    concurrencies: &[usize],
    rounds: usize,
) -> Result<Rotations> {
    let mut order = vec![Setting::Default, Setting::OneServer];
    order.extend(concurrencies.iter().map(|&c| Setting::Fixed(c)));
    let mut runs: Vec<(Setting, Vec<Rotation>)> = order.iter().map(|&s| (s, Vec::new())).collect();
    let mut cpu = None;
    for round in 0..rounds {
        println!("round {} of {rounds}", round + 1);
        for &setting in &order {
            let rotation = if cpu.is_none() && setting == Setting::Default {
                let (rotation, split) = measured_rotation(tb, atrest, objects)?;
                cpu = Some(split);
                rotation
            } else {
                rotate_key(atrest, objects, setting)?
            };
            if let Some((_, list)) = runs.iter_mut().find(|(s, _)| *s == setting) {
                list.push(rotation);
            }
        }
        order.reverse();
    }
    let cpu = cpu.context("no default rotate-key ran (ATREST_BENCH_ROUNDS=0?)")?;
    Ok(Rotations { runs, cpu })
}

/// A default rotate-key with the CPU split around it.
fn measured_rotation(
    tb: &Testbed,
    atrest: &Atrest,
    objects: usize,
) -> Result<(Rotation, CpuSplit)> {
    let ((rotation, atrest_cpu), servers) = ServerCpu::during(tb, || {
        let before = children_cpu_seconds()?;
        let rotation = rotate_key(atrest, objects, Setting::Default)?;
        Ok((rotation, children_cpu_seconds()? - before))
    })?;
    let cpu = CpuSplit {
        atrest: atrest_cpu,
        apiservers: servers.apiservers,
        etcd: servers.etcd,
    };
    println!(
        "CPU during the default rotate-key: atrest {:.1} s, kube-apiservers {:.1} s, etcd {:.1} s",
        cpu.atrest, cpu.apiservers, cpu.etcd
    );
    Ok((rotation, cpu))
}

/// One `encrypt rotate-key` on the restart path with `setting`'s flags.
fn rotate_key(atrest: &Atrest, objects: usize, setting: Setting) -> Result<Rotation> {
    let concurrency;
    let mut args = vec!["encrypt", "rotate-key", "--yes"];
    match setting {
        Setting::Default => {}
        Setting::OneServer => args.extend(["--rewrite-servers", "one"]),
        Setting::Fixed(c) => {
            concurrency = c.to_string();
            args.extend(["--rewrite-concurrency", concurrency.as_str()]);
        }
    }
    let (out, seconds) = atrest.timed(&args)?;
    let rotate = rewrite_rate(&out)?;
    ensure!(
        rotate.rewritten == objects as u64,
        "{} rewrote {}",
        args.join(" "),
        rotate.rewritten
    );
    println!("atrest {}: {}", args.join(" "), rotate.line);
    // The line after it: which API servers took the writes, how many were in flight at the end.
    if let Some(spread) = out
        .lines()
        .rfind(|l| l.contains("secrets → ") && l.contains("writes in flight"))
    {
        println!("  {}", spread.trim());
    }
    Ok(Rotation {
        rate: rotate.rate,
        seconds,
    })
}

/// rotate-key on the reload path, after the restart-path rotations on the same data.
struct ReloadRotation {
    /// The first rotate-key after cluster.yml asks for reload: its first phase recreates each server with the flag
    /// (atrest adds it only to a server it restarts anyway), the later phases already reload.
    switch_seconds: f64,
    rotate_seconds: f64,
    rate: f64,
}

/// Turns automatic reload on in cluster.yml; the next rotate-key brings the flag to every server; then times a
/// rotate-key that restarts nothing (each phase waits for the servers' own once-a-minute poll of the file).
fn reload_rotation(tb: &Testbed, atrest: &Atrest, objects: usize) -> Result<ReloadRotation> {
    set_extra_arg(
        &tb.cluster_yml(),
        "encryption-provider-config-automatic-reload",
        "true",
    )?;
    let (_, switch_seconds) = atrest.timed(&["encrypt", "rotate-key", "--yes"])?;
    let (out, rotate_seconds) = atrest.timed(&["encrypt", "rotate-key", "--yes"])?;
    ensure!(
        out.contains("reloaded the new config")
            && !out.contains("restarted,")
            && !out.contains("recreated,"),
        "rotate-key did not take the reload path:\n{out}"
    );
    let rotate = rewrite_rate(&out)?;
    ensure!(
        rotate.rewritten == objects as u64,
        "rotate-key (reload) rewrote {}",
        rotate.rewritten
    );
    println!("atrest encrypt rotate-key (reload): {}", rotate.line);
    Ok(ReloadRotation {
        switch_seconds,
        rotate_seconds,
        rate: rotate.rate,
    })
}

/// The kubectl rates (objects/s) on the same kind of data.
struct KubectlRates {
    /// The Kubernetes documentation's `kubectl get | kubectl replace`.
    pipeline: f64,
    /// One list, [`SHARDS`] `kubectl replace` in parallel.
    shards: f64,
}

/// The documentation's pipeline, then the sharded run; each on its own stale data (through node 1).
fn kubectl_runs(tb: &Testbed, atrest: &Atrest, objects: usize) -> Result<KubectlRates> {
    let kubeconfig = tb.kubeconfig();
    atrest_stepwise_rewrite(tb, atrest, objects)?;
    let pipeline = on_stale_data(tb, atrest, "kubectl get | kubectl replace", || {
        documentation_pipeline(&kubeconfig, objects)
    })?;
    let shards = on_stale_data(
        tb,
        atrest,
        &format!("kubectl get, {SHARDS} parallel kubectl replace"),
        || sharded_replace(&kubeconfig),
    )?;
    Ok(KubectlRates { pipeline, shards })
}

/// For the servers' CPU per object of atrest's rewrite alone (a rotate-key's also counts the restarts): the
/// stepwise verbs make every secret stale, and `atrest encrypt reencrypt` (census, rewrite, census) is measured.
fn atrest_stepwise_rewrite(tb: &Testbed, atrest: &Atrest, objects: usize) -> Result<()> {
    atrest.run(&["encrypt", "prepare", "--yes"])?;
    atrest.run(&["encrypt", "rotate", "--yes"])?;
    let ((out, seconds), servers) =
        ServerCpu::during(tb, || atrest.timed(&["encrypt", "reencrypt", "--yes"]))?;
    let rewrite = rewrite_rate(&out)?;
    ensure!(
        rewrite.rewritten == objects as u64,
        "encrypt reencrypt rewrote {}",
        rewrite.rewritten
    );
    println!(
        "atrest encrypt reencrypt ({seconds:.1} s): {}\n  CPU of the servers during it: kube-apiservers {:.1} s, \
         etcd {:.1} s: {:.2} ms per object",
        rewrite.line,
        servers.apiservers,
        servers.etcd,
        1000.0 * (servers.apiservers + servers.etcd) / objects.max(1) as f64
    );
    Ok(())
}

/// The stepwise verbs make every secret stale (prepare + rotate), `rewrite` rewrites them (it returns how many
/// objects it wrote and its seconds), and `reencrypt` finishes the stage: its census must find nothing left, so
/// `rewrite` did the whole job. Returns `rewrite`'s rate, and prints the servers' CPU during `rewrite` alone.
fn on_stale_data(
    tb: &Testbed,
    atrest: &Atrest,
    what: &str,
    rewrite: impl FnOnce() -> Result<(usize, f64)>,
) -> Result<f64> {
    atrest.run(&["encrypt", "prepare", "--yes"])?;
    atrest.run(&["encrypt", "rotate", "--yes"])?;
    let ((count, seconds), servers) = ServerCpu::during(tb, rewrite)?;
    println!(
        "  CPU of the servers during it: kube-apiservers {:.1} s, etcd {:.1} s: {:.2} ms per object",
        servers.apiservers,
        servers.etcd,
        1000.0 * (servers.apiservers + servers.etcd) / count.max(1) as f64
    );
    let out = atrest.run(&["encrypt", "reencrypt", "--yes"])?;
    ensure!(
        out.contains("secrets → ") && out.contains(": nothing to rewrite"),
        "{what} left secrets stale:\n{out}"
    );
    let rate = count as f64 / seconds;
    println!("{what}: {count} in {seconds:.1} s ({rate:.0} objects/s)");
    Ok(rate)
}

/// `kubectl get secrets -A -o json | kubectl replace -f -`, timed; `objects` and its seconds.
fn documentation_pipeline(kubeconfig: &Path, objects: usize) -> Result<(usize, f64)> {
    let kubeconfig = kubeconfig.display();
    let started = Instant::now();
    let status = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; kubectl --kubeconfig {kubeconfig} get secrets -A -o json | \
             kubectl --kubeconfig {kubeconfig} replace -f - > /dev/null"
        ))
        .stdin(Stdio::null())
        .status()
        .context("running the kubectl pipeline")?;
    let seconds = started.elapsed().as_secs_f64();
    ensure!(status.success(), "kubectl pipeline failed: {status}");
    Ok((objects, seconds))
}

/// What a practised operator scripts: list every secret once, split the list into [`SHARDS`] files, run one
/// `kubectl replace` per file in parallel. Timed from the start of the list to the end of the last replace.
fn sharded_replace(kubeconfig: &Path) -> Result<(usize, f64)> {
    let dir = tempfile::tempdir()?;
    let list = dir.path().join("secrets.json");
    let started = Instant::now();
    let status = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["get", "secrets", "-A", "-o", "json"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&list)?)
        .status()
        .context("running kubectl get")?;
    ensure!(status.success(), "kubectl get secrets failed: {status}");
    let (count, shards) = write_shards(&list, dir.path())?;
    let children = shards
        .iter()
        .map(|shard| {
            Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(kubeconfig)
                .arg("replace")
                .arg("-f")
                .arg(shard)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .context("running kubectl replace")
        })
        .collect::<Result<Vec<_>>>()?;
    let statuses = children
        .into_iter()
        .map(|mut child| child.wait())
        .collect::<std::io::Result<Vec<_>>>()?;
    let seconds = started.elapsed().as_secs_f64();
    for (shard, status) in shards.iter().zip(statuses) {
        ensure!(
            status.success(),
            "kubectl replace -f {} failed: {status}",
            shard.display()
        );
    }
    Ok((count, seconds))
}

/// Splits the `kubectl get -o json` list at `list` into up to [`SHARDS`] `v1 List` files of consecutive items in
/// `dir`; the number of items and the files.
fn write_shards(list: &Path, dir: &Path) -> Result<(usize, Vec<PathBuf>)> {
    let mut doc: Value = serde_json::from_slice(&std::fs::read(list)?)
        .context("parsing the output of kubectl get secrets")?;
    let items = doc
        .get_mut("items")
        .and_then(Value::as_array_mut)
        .map(std::mem::take)
        .context("no items in the output of kubectl get secrets")?;
    ensure!(!items.is_empty(), "kubectl get secrets listed none");
    let count = items.len();
    let per_shard = count.div_ceil(SHARDS);
    let mut shards: Vec<Vec<Value>> = vec![Vec::new(); SHARDS];
    for (i, item) in items.into_iter().enumerate() {
        shards[i / per_shard].push(item);
    }
    let files = shards
        .into_iter()
        .filter(|items| !items.is_empty())
        .enumerate()
        .map(|(i, items)| {
            let path = dir.join(format!("shard{i}.json"));
            let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
            let shard = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
            serde_json::to_writer(&mut out, &shard)?;
            out.flush()?;
            Ok(path)
        })
        .collect::<Result<_>>()?;
    Ok((count, files))
}

/// Row 4: the real `rke encrypt rotate-key`'s rewrite, sampled.
struct RkeSample {
    /// Secrets moved off the key atrest left per second, over the sample.
    rate: f64,
    /// Secrets moved during the sample, and its seconds.
    moved: usize,
    seconds: f64,
}

/// How long `rke`'s rewrite is watched once it has started. Its client is throttled to a fixed rate (client-go's
/// default 5 requests/s), so a sample gives the rate that 10 000 objects would take over half an hour to show.
const RKE_SAMPLE: Duration = Duration::from_secs(120);

/// How often etcd is read while `rke` runs.
const RKE_POLL: Duration = Duration::from_secs(5);

/// How long `rke` may take to deploy its new key to every server before its rewrite starts.
const RKE_DEPLOY_LIMIT: Duration = Duration::from_secs(600);

/// Runs the real `rke encrypt rotate-key` on the testbed (it deploys a new key first on every server, then
/// rewrites every secret with RKE's client), counts in etcd the secrets no longer on the key atrest left, and
/// stops `rke` once [`RKE_SAMPLE`] of its rewrite has been seen. Its log is `rke-rotate-key.log` in the testbed.
fn rke_rewrite(tb: &Testbed) -> Result<RkeSample> {
    let bin = testbed::harness::upstream::rke_binary()
        .context("rke (built by scripts/build-upstream.sh; ATREST_BENCH_SKIP_RKE=1 skips row 4)")?;
    let runtime = tokio::runtime::Runtime::new()?;
    let mut etcd = runtime.block_on(etcd_client(tb))?;
    let before = runtime.block_on(secret_labels(&mut etcd))?;
    let (old, total) = before
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(label, n)| (label.clone(), *n))
        .context("no secret in etcd")?;
    println!("rke encrypt rotate-key: {total} secrets on {old} before");
    let log_path = tb.dir().join("rke-rotate-key.log");
    let log = std::fs::File::create(&log_path)?;
    let mut child = Command::new(bin)
        .args(["encrypt", "rotate-key", "--config"])
        .arg(tb.cluster_yml())
        .current_dir(tb.dir())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting rke")?;
    let sampled = sample_rke(&runtime, &mut etcd, &mut child, &old);
    if child.try_wait()?.is_none() {
        child.kill()?;
        child.wait()?;
    }
    let (moved, seconds) =
        sampled.with_context(|| format!("rke's rewrite (its log: {})", log_path.display()))?;
    let rate = moved as f64 / seconds;
    println!(
        "rke encrypt rotate-key: {moved} secrets rewritten in {seconds:.1} s ({rate:.1} objects/s)"
    );
    Ok(RkeSample {
        rate,
        moved,
        seconds,
    })
}

/// Polls etcd until `rke` has rewritten its first secrets, then for [`RKE_SAMPLE`] (or until `rke` exits):
/// the secrets moved off `old` in between and the seconds.
fn sample_rke(
    runtime: &tokio::runtime::Runtime,
    etcd: &mut Client,
    child: &mut std::process::Child,
    old: &str,
) -> Result<(usize, f64)> {
    let started = Instant::now();
    let mut first: Option<(Instant, usize)> = None;
    loop {
        std::thread::sleep(RKE_POLL);
        let exited = child.try_wait()?;
        let labels = runtime.block_on(secret_labels(etcd))?;
        let now = Instant::now();
        let moved: usize = labels
            .iter()
            .filter(|(label, _)| label.as_str() != old)
            .map(|(_, n)| n)
            .sum();
        match first {
            None if moved > 0 => first = Some((now, moved)),
            None if exited.is_some() || started.elapsed() > RKE_DEPLOY_LIMIT => {
                bail!(
                    "rke rewrote nothing in {:.0} s (exit: {exited:?})",
                    started.elapsed().as_secs_f64()
                )
            }
            Some((since, at_first)) if exited.is_some() || now - since >= RKE_SAMPLE => {
                ensure!(
                    moved > at_first,
                    "rke rewrote nothing during the sample (exit: {exited:?})"
                );
                return Ok((moved - at_first, (now - since).as_secs_f64()));
            }
            _ => {}
        }
    }
}

/// Secrets per storage label in etcd (`aescbc:v1:<key>`, or `identity` for plain data), read in pages.
async fn secret_labels(etcd: &mut Client) -> Result<HashMap<String, usize>> {
    const PREFIX: &[u8] = b"/registry/secrets/";
    const END: &[u8] = b"/registry/secrets0";
    let mut labels = HashMap::new();
    let mut start = PREFIX.to_vec();
    loop {
        let options = GetOptions::new().with_range(END).with_limit(500);
        let page = etcd.get(start.clone(), Some(options)).await?;
        for kv in page.kvs() {
            *labels.entry(storage_label(kv.value())).or_insert(0) += 1;
        }
        match page.kvs().last() {
            Some(kv) if page.more() => {
                start = kv.key().to_vec();
                start.push(0);
            }
            _ => return Ok(labels),
        }
    }
}

/// `k8s:enc:aescbc:v1:<key>:…` → `aescbc:v1:<key>`; anything else is plain (`identity`).
fn storage_label(value: &[u8]) -> String {
    let Some(rest) = value.strip_prefix(b"k8s:enc:") else {
        return "identity".into();
    };
    let fields: Vec<&[u8]> = rest.splitn(4, |b| *b == b':').take(3).collect();
    String::from_utf8_lossy(&fields.join(&b':')).into_owned()
}

/// The etcd ceilings on the same 3-member cluster.
struct Ceilings {
    /// Best raw put rate (puts/s).
    put: f64,
    /// Best raw get + conditional put rate (objects/s).
    read_then_put: f64,
}

fn etcd_ceilings(tb: &Testbed, objects: usize) -> Result<Ceilings> {
    let runtime = tokio::runtime::Runtime::new()?;
    let etcd = runtime.block_on(etcd_client(tb))?;
    let mut ceilings = Ceilings {
        put: 0.0,
        read_then_put: 0.0,
    };
    for c in [32usize, 64, 128] {
        let rate = runtime.block_on(put_rate(&etcd, objects, c))?;
        ceilings.put = ceilings.put.max(rate);
        println!("raw etcd put, concurrency {c}: {rate:.0} puts/s");
    }
    for c in [64usize, 128, 256] {
        let rate = runtime.block_on(read_then_put_rate(&etcd, objects, c))?;
        ceilings.read_then_put = ceilings.read_then_put.max(rate);
        println!("raw etcd get + conditional put, concurrency {c}: {rate:.0} objects/s");
    }
    Ok(ceilings)
}

/// One testbed per node count of `ATREST_BENCH_STATUS_NODES`, encrypted by `atrest up` (a census then has keys
/// to name), and [`STATUS_RUNS`] timed `atrest encrypt status` runs on it.
fn status_times() -> Result<Vec<(usize, Vec<StatusRun>)>> {
    let counts: Vec<usize> = std::env::var("ATREST_BENCH_STATUS_NODES")
        .unwrap_or_else(|_| "1,7".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let mut times = Vec::new();
    for nodes in counts {
        let started = Instant::now();
        let tb = Testbed::up(Options {
            nodes,
            apiserver: Apiserver::upstream()?,
            ..Options::default()
        })?;
        println!(
            "{nodes}-node testbed up in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        tb.seed(100, 0, SIZE)?;
        set_encryption(&tb.cluster_yml(), true)?;
        let atrest = Atrest { tb: &tb };
        atrest.run(&["up", "--yes"])?;
        let mut runs = Vec::new();
        let mut by_command = BTreeMap::new();
        for _ in 0..STATUS_RUNS {
            let (busy_before, atrest_before) = (machine_busy_seconds()?, children_cpu_seconds()?);
            let commands_before = cpu_by_process();
            let (_, seconds) = atrest.timed(&["encrypt", "status"])?;
            let busy = machine_busy_seconds()? - busy_before;
            let own = children_cpu_seconds()? - atrest_before;
            for (command, ticks) in cpu_since(&commands_before, &cpu_by_process()) {
                *by_command.entry(command).or_insert(0u64) += ticks;
            }
            // The same time with no command: what the testbed's idle servers and daemons cost on their own.
            let idle_before = machine_busy_seconds()?;
            std::thread::sleep(Duration::from_secs_f64(seconds));
            let idle = machine_busy_seconds()? - idle_before;
            println!(
                "  CPU: atrest {own:.2} s; the whole machine {busy:.2} s busy of {:.2} s ({:.0} % of its cores); \
                 {idle:.2} s busy in as long without a command",
                seconds * cores() as f64,
                100.0 * busy / (seconds * cores() as f64)
            );
            runs.push(StatusRun {
                seconds,
                own,
                busy,
                idle,
            });
        }
        print_cpu_by_command(nodes, &by_command);
        runs.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
        times.push((nodes, runs));
    }
    Ok(times)
}

/// One timed `atrest encrypt status`: wall seconds, atrest's own CPU seconds and the whole machine's busy CPU
/// seconds (every process: the nodes' sshd sessions and login shells, Docker, the API servers, etcd).
struct StatusRun {
    seconds: f64,
    own: f64,
    busy: f64,
    /// Busy CPU seconds of the machine in as long a time right after, with no command running.
    idle: f64,
}

/// CPU ticks of every process now, by (pid, start time): its own and its waited-for children's (a finished
/// sshd session's CPU shows up in the sshd that waited for it), with its command name.
fn cpu_by_process() -> BTreeMap<(u32, u64), (String, u64)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return BTreeMap::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = read_stat(&format!("/proc/{pid}/stat"))?;
            let ticks = stat.utime + stat.stime + stat.cutime + stat.cstime;
            Some(((pid, stat.starttime), (stat.comm, ticks)))
        })
        .collect()
}

/// Ticks each command name used between two [`cpu_by_process`] readings (processes gone by the second are left
/// out: their CPU is in the parent that waited for them).
fn cpu_since(
    before: &BTreeMap<(u32, u64), (String, u64)>,
    after: &BTreeMap<(u32, u64), (String, u64)>,
) -> BTreeMap<String, u64> {
    let mut used = BTreeMap::new();
    for (key, (command, ticks)) in after {
        let earlier = before.get(key).map_or(0, |(_, t)| *t);
        *used.entry(command.clone()).or_insert(0) += ticks.saturating_sub(earlier);
    }
    used
}

/// The commands that used the most CPU over the status runs, per run.
fn print_cpu_by_command(nodes: usize, by_command: &BTreeMap<String, u64>) {
    let mut top: Vec<(&String, &u64)> = by_command.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1));
    let per_run = |ticks: u64| ticks as f64 / ticks_per_second() / STATUS_RUNS as f64;
    let listed: Vec<String> = top
        .iter()
        .take(8)
        .map(|(command, ticks)| format!("{command} {:.2}", per_run(**ticks)))
        .collect();
    println!(
        "  CPU by command, {nodes} node(s), s per status run: {}",
        listed.join(", ")
    );
}

/// CPU seconds the machine has spent busy since boot, over all cores (`/proc/stat`'s `cpu` line less idle and
/// iowait).
fn machine_busy_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .context("no cpu line in /proc/stat")?
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    ensure!(fields.len() >= 5, "short cpu line in /proc/stat");
    let idle = fields[3] + fields[4];
    Ok((fields.iter().sum::<u64>() - idle) as f64 / ticks_per_second())
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn print_status(status: &[(usize, Vec<StatusRun>)]) {
    let median = |runs: &[StatusRun]| runs.get(runs.len() / 2).map_or(f64::NAN, |r| r.seconds);
    for (nodes, runs) in status {
        let mean =
            |f: fn(&StatusRun) -> f64| runs.iter().map(f).sum::<f64>() / runs.len().max(1) as f64;
        println!(
            "| `atrest encrypt status`, {nodes} node(s) | median {:.2} s (least {:.2}, most {:.2}; {} runs); CPU per run: atrest {:.2} s, whole machine {:.2} s busy of {} cores ({:.2} s in as long idle) |",
            median(runs),
            runs.first().map_or(f64::NAN, |r| r.seconds),
            runs.last().map_or(f64::NAN, |r| r.seconds),
            runs.len(),
            mean(|r| r.own),
            mean(|r| r.busy),
            cores(),
            mean(|r| r.idle)
        );
    }
    if let (Some((1, one)), Some((7, seven))) = (status.first(), status.last()) {
        println!(
            "| status on 7 nodes / on 1 | {:.2}× (target ≤ 1.5×) |",
            median(seven) / median(one)
        );
    }
}

fn print_table(r: &Report) {
    println!("\n| measure (3-node testbed) | value |\n|---|---|");
    println!(
        "| atrest up (enable), whole command | {:.1} s; rewrite {:.0} objects/s (default settings) |",
        r.enable_seconds, r.enable_rate
    );
    print_rotations(&r.rotations, r.objects);
    if let Some(reload) = &r.reload {
        println!(
            "| atrest encrypt rotate-key with automatic reload | {:.1} s (rewrite {:.0} objects/s) |",
            reload.rotate_seconds, reload.rate
        );
        println!(
            "| the rotate-key that brings the reload flag (phase 1 recreates) | {:.1} s |",
            reload.switch_seconds
        );
    }
    let best = r
        .rotations
        .runs
        .iter()
        .map(|(setting, _)| r.rotations.mean_rate(*setting))
        .fold(r.enable_rate, f64::max);
    if let Some(k) = &r.kubectl {
        let default = r.rotations.mean_rate(Setting::Default);
        println!(
            "| kubectl get \\| replace (documentation pipeline) | {:.0} objects/s |",
            k.pipeline
        );
        println!(
            "| kubectl get, {SHARDS} parallel kubectl replace | {:.0} objects/s |",
            k.shards
        );
        println!(
            "| atrest default / {SHARDS}-shard kubectl | {:.1}× (target ≥ 1.5×) |",
            default / k.shards
        );
        println!(
            "| atrest default / documentation pipeline | {:.1}× (target ≥ 5×) |",
            default / k.pipeline
        );
        println!(
            "| atrest best / documentation pipeline | {:.1}× (target ≥ 20×) |",
            best / k.pipeline
        );
    }
    let c = &r.ceilings;
    println!("| best raw etcd put | {:.0} puts/s |", c.put);
    println!(
        "| atrest / raw put | {:.0} % (target ≥ 50 %) |",
        100.0 * best / c.put
    );
    println!(
        "| best raw etcd get + conditional put | {:.0} objects/s |",
        c.read_then_put
    );
    println!(
        "| atrest / raw get + conditional put | {:.0} % |",
        100.0 * best / c.read_then_put
    );
    if let Some(rke) = &r.rke {
        println!(
            "| real `rke encrypt rotate-key` rewrite (sampled: {} secrets in {:.0} s) | {:.1} objects/s; atrest default / rke: {:.0}× |",
            rke.moved,
            rke.seconds,
            rke.rate,
            r.rotations.mean_rate(Setting::Default) / rke.rate
        );
    }
    print_status(&r.status);
}

/// The restart-path rotate-key rows: default settings, the fixed sweep, the default against the sweep's best,
/// and the default run's CPU split.
fn print_rotations(rotations: &Rotations, objects: usize) {
    for (setting, runs) in &rotations.runs {
        let rates: Vec<String> = runs.iter().map(|r| format!("{:.0}", r.rate)).collect();
        let seconds: Vec<String> = runs.iter().map(|r| format!("{:.1}", r.seconds)).collect();
        println!(
            "| atrest rewrite during rotate-key, {} | mean {:.0} objects/s (rounds: {}; command: {} s) |",
            setting.label(),
            rotations.mean_rate(*setting),
            rates.join(" / "),
            seconds.join(" / ")
        );
    }
    let default = rotations.mean_rate(Setting::Default);
    println!(
        "| all servers / one (means) | {:.2}× |",
        default / rotations.mean_rate(Setting::OneServer)
    );
    if let Some((c, best)) = rotations.best_fixed() {
        println!(
            "| atrest default / best fixed ({c} writers), means | {:.0} % (target ≥ 90 %) |",
            100.0 * default / best
        );
    }
    let cpu = &rotations.cpu;
    println!(
        "| CPU during the default rotate-key, whole command incl. restarts and census (atrest / kube-apiservers / etcd) | {:.1} s / {:.1} s / {:.1} s |",
        cpu.atrest, cpu.apiservers, cpu.etcd
    );
    println!(
        "| atrest CPU per object (whole default rotate-key incl. restarts and census) | {:.2} ms |",
        1000.0 * cpu.atrest / objects as f64
    );
    let servers = cpu.apiservers + cpu.etcd;
    let share = if servers > 0.0 {
        format!("{:.0} %", 100.0 * cpu.atrest / servers)
    } else {
        "n/a (no kube-apiserver or etcd process of this testbed found in /proc)".into()
    };
    println!(
        "| atrest CPU / (kube-apiservers + etcd), whole default rotate-key | {share} (target ≤ 10 %) |"
    );
}

/// CPU seconds during one command.
struct CpuSplit {
    atrest: f64,
    apiservers: f64,
    etcd: f64,
}

/// Clock ticks per second of `/proc/<pid>/stat` (`getconf CLK_TCK`; 100 if that fails).
fn ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// The fields of `/proc/<pid>/stat` used here (clock ticks; `starttime` tells a reused pid apart).
struct Stat {
    comm: String,
    utime: u64,
    stime: u64,
    cutime: u64,
    cstime: u64,
    starttime: u64,
}

/// Parses a `/proc/<pid>/stat` file; `None` if it is gone or malformed (a process may exit while it is read).
fn read_stat(path: &str) -> Option<Stat> {
    let text = std::fs::read_to_string(path).ok()?;
    let (head, rest) = text.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_string();
    // After `comm`: state is field 0, utime 11, stime 12, cutime 13, cstime 14, starttime 19 (proc(5)).
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    Some(Stat {
        comm,
        utime: field(11)?,
        stime: field(12)?,
        cutime: field(13)?,
        cstime: field(14)?,
        starttime: field(19)?,
    })
}

/// CPU seconds of this process's waited-for children (cutime + cstime: what `getrusage(RUSAGE_CHILDREN)` sums).
fn children_cpu_seconds() -> Result<f64> {
    let stat = read_stat("/proc/self/stat").context("reading /proc/self/stat")?;
    Ok((stat.cutime + stat.cstime) as f64 / ticks_per_second())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Server {
    Apiserver,
    Etcd,
}

/// A process seen by [`ServerCpu::poll`]: which server it is (`None`: another testbed's), its CPU ticks when it
/// was first seen (0 if it started during the command) and at the last poll.
struct Seen {
    server: Option<Server>,
    first: u64,
    last: u64,
}

/// CPU seconds of this testbed's kube-apiservers and etcd members.
#[derive(Default)]
struct ServerCpu {
    /// By (pid, starttime).
    seen: HashMap<(u32, u64), Seen>,
    apiservers: f64,
    etcd: f64,
}

impl ServerCpu {
    /// Runs `f`, polling /proc every [`CPU_POLL`] meanwhile: a server restarted during `f` counts up to its last
    /// poll, a server started during `f` counts all its CPU. Servers are the processes whose comm is
    /// `kube-apiserver` or `etcd` and whose command line names `//<address>:` of one of this testbed's nodes
    /// (other testbeds may run on the same machine).
    fn during<T>(tb: &Testbed, f: impl FnOnce() -> Result<T>) -> Result<(T, ServerCpu)> {
        let markers: Vec<String> = tb
            .nodes()
            .iter()
            .map(|n| format!("//{}:", n.address))
            .collect();
        let mut cpu = ServerCpu::default();
        cpu.poll(&markers, true)?;
        let done = AtomicBool::new(false);
        let (out, polled) = std::thread::scope(|scope| {
            let (markers, done) = (&markers, &done);
            let poller = scope.spawn(move || -> Result<ServerCpu> {
                while !done.load(Ordering::Relaxed) {
                    std::thread::sleep(CPU_POLL);
                    cpu.poll(markers, false)?;
                }
                Ok(cpu)
            });
            let out = f();
            done.store(true, Ordering::Relaxed);
            (out, poller.join())
        });
        let out = out?;
        let mut cpu = polled.map_err(|_| anyhow!("the CPU poller panicked"))??;
        cpu.poll(&markers, false)?;
        cpu.sum();
        Ok((out, cpu))
    }

    /// Reads the CPU of every server process now; `baseline`: the CPU it has used so far is not counted.
    fn poll(&mut self, markers: &[String], baseline: bool) -> Result<()> {
        for entry in std::fs::read_dir("/proc").context("listing /proc")? {
            // A process that exits while /proc is listed may leave an entry that cannot be read: skip it.
            let Some(pid) = entry
                .ok()
                .and_then(|e| e.file_name().to_str()?.parse::<u32>().ok())
            else {
                continue;
            };
            let Some(stat) = read_stat(&format!("/proc/{pid}/stat")) else {
                continue;
            };
            let server = match stat.comm.as_str() {
                "kube-apiserver" => Server::Apiserver,
                "etcd" => Server::Etcd,
                _ => continue,
            };
            let ticks = stat.utime + stat.stime;
            match self.seen.entry((pid, stat.starttime)) {
                Entry::Occupied(mut seen) => seen.get_mut().last = ticks,
                Entry::Vacant(slot) => {
                    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                        continue;
                    };
                    let cmdline = String::from_utf8_lossy(&cmdline);
                    let ours = markers.iter().any(|m| cmdline.contains(m.as_str()));
                    slot.insert(Seen {
                        server: ours.then_some(server),
                        first: if baseline { ticks } else { 0 },
                        last: ticks,
                    });
                }
            }
        }
        Ok(())
    }

    /// Totals the polled processes into `apiservers` and `etcd` (seconds).
    fn sum(&mut self) {
        let ticks = ticks_per_second();
        for seen in self.seen.values() {
            let used = seen.last.saturating_sub(seen.first) as f64 / ticks;
            match seen.server {
                Some(Server::Apiserver) => self.apiservers += used,
                Some(Server::Etcd) => self.etcd += used,
                None => {}
            }
        }
    }
}

/// Sets `services.kube-api.extra_args.<flag>: <value>` in cluster.yml.
fn set_extra_arg(path: &Path, flag: &str, value: &str) -> Result<()> {
    edit_kube_api(path, |kube_api| {
        let args = kube_api
            .entry("extra_args".into())
            .or_insert_with(|| serde_yaml_ng::Value::Mapping(Default::default()));
        args.as_mapping_mut()
            .context("services.kube-api.extra_args is not a mapping")?
            .insert(flag.into(), value.into());
        Ok(())
    })
}

/// The release `atrest` binary run against the testbed.
struct Atrest<'a> {
    tb: &'a Testbed,
}

impl Atrest<'_> {
    /// Runs atrest; returns its stderr (progress and summary lines), failing on a non-zero exit.
    fn run(&self, args: &[&str]) -> Result<String> {
        Ok(self.timed(args)?.0)
    }

    /// [`run`](Self::run), also returning the command's wall time in seconds.
    fn timed(&self, args: &[&str]) -> Result<(String, f64)> {
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_atrest"))
            .arg("--config")
            .arg(self.tb.cluster_yml())
            .arg("--known-hosts")
            .arg(self.tb.known_hosts())
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .context("running atrest")?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            bail!(
                "atrest {} failed ({}):\n{stderr}",
                args.join(" "),
                out.status
            );
        }
        let seconds = started.elapsed().as_secs_f64();
        println!("$ atrest {} ({seconds:.1} s)", args.join(" "));
        Ok((stderr, seconds))
    }
}

struct RewriteLine {
    line: String,
    rewritten: u64,
    rate: f64,
}

/// The executor's summary line for secrets: `…: secrets → <unit>: N objects (R rewritten, …) in S s, X objects/s`,
/// possibly followed by more (the adaptive default may say how many writes it kept in flight): the count is the
/// number before the first ` rewritten`, the rate the number before the first ` objects/s`.
fn rewrite_rate(stderr: &str) -> Result<RewriteLine> {
    let line = stderr
        .lines()
        .rfind(|l| l.contains("secrets → ") && l.contains(" objects/s"))
        .with_context(|| format!("no rewrite summary in:\n{stderr}"))?;
    let rewritten = number_before(line, " rewritten")
        .with_context(|| format!("no rewritten count in {line:?}"))?;
    let rate = number_before(line, " objects/s").with_context(|| format!("no rate in {line:?}"))?;
    Ok(RewriteLine {
        line: line.trim().to_string(),
        rewritten,
        rate,
    })
}

/// The number just before the first `marker` in `line`: `(10000 rewritten` → 10000, `, 312 objects/s` → 312.
fn number_before<T: std::str::FromStr>(line: &str, marker: &str) -> Option<T> {
    let (head, _) = line.split_once(marker)?;
    head.rsplit(|c: char| c.is_whitespace() || matches!(c, '(' | ',' | ':'))
        .next()?
        .parse()
        .ok()
}

/// Edits `services.kube-api` of the cluster.yml at `path` with `edit`.
fn edit_kube_api(
    path: &Path,
    edit: impl FnOnce(&mut serde_yaml_ng::Mapping) -> Result<()>,
) -> Result<()> {
    let text = std::fs::read_to_string(path)?;
    let mut doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text)?;
    let kube_api = doc
        .get_mut("services")
        .and_then(|s| s.get_mut("kube-api"))
        .and_then(|k| k.as_mapping_mut())
        .context("services.kube-api in cluster.yml")?;
    edit(kube_api)?;
    std::fs::write(path, serde_yaml_ng::to_string(&doc)?)?;
    Ok(())
}

/// Sets `services.kube-api.secrets_encryption_config.enabled` in cluster.yml.
fn set_encryption(path: &Path, enabled: bool) -> Result<()> {
    edit_kube_api(path, |kube_api| {
        let mut sec = serde_yaml_ng::Mapping::new();
        sec.insert("enabled".into(), enabled.into());
        kube_api.insert(
            "secrets_encryption_config".into(),
            serde_yaml_ng::Value::Mapping(sec),
        );
        Ok(())
    })
}

async fn etcd_client(tb: &Testbed) -> Result<Client> {
    let tls = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(tb.etcd_ca())?))
        .identity(Identity::from_pem(
            std::fs::read(tb.etcd_client_cert())?,
            std::fs::read(tb.etcd_client_key())?,
        ));
    Ok(Client::connect(
        tb.etcd_endpoints(),
        Some(ConnectOptions::new().with_tls(tls)),
    )
    .await?)
}
