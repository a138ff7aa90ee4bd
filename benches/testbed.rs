//! The rewrite benchmark on the 3-node testbed (3 sshd + dockerd nodes, a 3-member etcd cluster, the real
//! kube-apiserver in an RKE-shaped container per node), the shape of a real HA cluster: the `atrest` binary does
//! the whole job (deploys, rolling restarts, rewrite, census), and each rate is measured on stale data.
//!
//! Run: `scripts/build-upstream.sh && cargo bench --bench testbed` (as root; see
//! docs/benchmarks.md). Knobs: `ATREST_BENCH_OBJECTS` (10000), `ATREST_BENCH_CONCURRENCY` (32,64,128: one
//! rotate-key per value), `ATREST_BENCH_SKIP_KUBECTL` (unset), `ATREST_BENCH_SKIP_RELOAD` (unset: after the
//! restart-path rotations, cluster.yml asks for automatic reload, one rotate-key brings the flag and the next is
//! timed on the reload path).

use anyhow::{Context, Result, bail, ensure};
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;
use testbed::harness::{Apiserver, Options, Testbed};

#[path = "shared/etcd_rates.rs"]
mod etcd_rates;
use etcd_rates::{put_rate, read_then_put_rate};

const SIZE: usize = 2048;

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
        .unwrap_or_else(|_| "32,64,128".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    println!("# atrest rewrite benchmark on the 3-node testbed ({objects} secrets of ~2 KiB)");
    println!(
        "load average at start: {}",
        std::fs::read_to_string("/proc/loadavg")?.trim()
    );
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
    let atrest = Atrest { tb: &tb };

    // Enable (identity → aescbc): prepare, recreate with the flag, rewrite, verify, finish.
    set_encryption(&tb.cluster_yml(), true)?;
    let out = atrest.run(&["up", "--yes"])?;
    let enable = rewrite_rate(&out)?;
    println!("atrest up (enable): {}", enable.line);

    ensure!(
        enable.rewritten == objects as u64,
        "enable rewrote {}",
        enable.rewritten
    );

    // Full key rotations with atrest, at a few rewrite concurrencies.
    let mut rotations = Vec::new();
    for concurrency in concurrencies {
        let c = concurrency.to_string();
        let (out, seconds) = atrest.timed(&[
            "encrypt",
            "rotate-key",
            "--yes",
            "--rewrite-concurrency",
            &c,
        ])?;
        let rotate = rewrite_rate(&out)?;
        ensure!(
            rotate.rewritten == objects as u64,
            "rotate-key rewrote {}",
            rotate.rewritten
        );
        println!(
            "atrest encrypt rotate-key --rewrite-concurrency {c}: {}",
            rotate.line
        );
        rotations.push((concurrency, rotate.rate, seconds));
    }
    let reload = if std::env::var_os("ATREST_BENCH_SKIP_RELOAD").is_some() {
        None
    } else {
        Some(reload_rotation(&tb, &atrest, objects)?)
    };

    // The kubectl pipeline on the same kind of data: the stepwise verbs make every secret stale (prepare +
    // rotate), kubectl rewrites them, and `reencrypt` finishes the stage (its census then finds nothing left).
    let skip_kubectl = std::env::var_os("ATREST_BENCH_SKIP_KUBECTL").is_some();
    let kubectl_rate = if skip_kubectl {
        None
    } else {
        atrest.run(&["encrypt", "prepare", "--yes"])?;
        atrest.run(&["encrypt", "rotate", "--yes"])?;
        let kubeconfig = tb.kubeconfig().display().to_string();
        let started = Instant::now();
        let status = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "set -o pipefail; kubectl --kubeconfig {kubeconfig} get secrets -A -o json | \
                 kubectl --kubeconfig {kubeconfig} replace -f - > /dev/null"
            ))
            .status()?;
        let seconds = started.elapsed().as_secs_f64();
        ensure!(status.success(), "kubectl pipeline failed: {status}");
        // kubectl must have done the job: the census before reencrypt's rewrite finds nothing stale.
        let out = atrest.run(&["encrypt", "reencrypt", "--yes"])?;
        ensure!(
            out.contains("secrets → ") && out.contains(": nothing to rewrite"),
            "kubectl left secrets stale:\n{out}"
        );
        let rate = objects as f64 / seconds;
        println!(
            "kubectl get | kubectl replace: {objects} in {seconds:.1} s ({rate:.0} objects/s)"
        );
        Some(rate)
    };

    // The ceilings on the same 3-member etcd.
    let runtime = tokio::runtime::Runtime::new()?;
    let etcd = runtime.block_on(etcd_client(&tb))?;
    let mut best_put = 0f64;
    let mut best_pair = 0f64;
    for c in [32usize, 64, 128] {
        let rate = runtime.block_on(put_rate(&etcd, objects, c))?;
        best_put = best_put.max(rate);
        println!("raw etcd put, concurrency {c}: {rate:.0} puts/s");
    }
    for c in [64usize, 128, 256] {
        let rate = runtime.block_on(read_then_put_rate(&etcd, objects, c))?;
        best_pair = best_pair.max(rate);
        println!("raw etcd get + conditional put, concurrency {c}: {rate:.0} objects/s");
    }

    let best = rotations
        .iter()
        .map(|(_, rate, _)| *rate)
        .fold(enable.rate, f64::max);
    println!("\n| measure (3-node testbed) | value |\n|---|---|");
    println!(
        "| atrest rewrite during enable (32 writers) | {:.0} objects/s |",
        enable.rate
    );
    for (c, rate, seconds) in &rotations {
        println!(
            "| atrest rewrite during rotate-key, {c} writers | {rate:.0} objects/s (command: {seconds:.1} s, restart path) |"
        );
    }
    if let Some(r) = &reload {
        println!(
            "| atrest encrypt rotate-key with automatic reload | {:.1} s (rewrite {:.0} objects/s) |",
            r.rotate_seconds, r.rate
        );
        println!(
            "| the rotate-key that brings the reload flag (phase 1 recreates) | {:.1} s |",
            r.switch_seconds
        );
    }
    if let Some(k) = kubectl_rate {
        println!("| kubectl get \\| replace | {k:.0} objects/s |");
        println!("| atrest / kubectl | {:.1}× (target ≥ 20×) |", best / k);
    }
    println!("| best raw etcd put | {best_put:.0} puts/s |");
    println!(
        "| atrest / raw put | {:.0} % (target ≥ 50 %) |",
        100.0 * best / best_put
    );
    println!("| best raw etcd get + conditional put | {best_pair:.0} objects/s |");
    println!(
        "| atrest / raw get + conditional put | {:.0} % |",
        100.0 * best / best_pair
    );
    println!(
        "load average at end: {}",
        std::fs::read_to_string("/proc/loadavg")?.trim()
    );
    Ok(())
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

/// The executor's summary line for secrets: `…: secrets → <unit>: N objects (R rewritten, …) in S s, X objects/s`.
fn rewrite_rate(stderr: &str) -> Result<RewriteLine> {
    let line = stderr
        .lines()
        .rfind(|l| l.contains("secrets → ") && l.ends_with("objects/s"))
        .with_context(|| format!("no rewrite summary in:\n{stderr}"))?;
    let rewritten = line
        .split_once(" objects (")
        .and_then(|(_, rest)| rest.split_once(' '))
        .and_then(|(n, _)| n.parse().ok())
        .with_context(|| format!("no rewritten count in {line:?}"))?;
    let rate = line
        .rsplit_once(", ")
        .and_then(|(_, rest)| rest.strip_suffix(" objects/s"))
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no rate in {line:?}"))?;
    Ok(RewriteLine {
        line: line.trim().to_string(),
        rewritten,
        rate,
    })
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
