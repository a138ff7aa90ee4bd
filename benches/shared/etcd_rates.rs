//! The etcd ceilings both benchmarks measure: raw puts, and the read + conditional put an API server does for
//! each update of a stale object (reference `k8s-encryption.md` §1.8).

use anyhow::{Result, ensure};
use etcd_client::Client;
use futures::StreamExt;
use std::time::Instant;

/// Value size of the raw puts: like the benchmarks' ~2 KiB secrets with their metadata.
const VALUE_SIZE: usize = 2048 + 200;

/// `count` puts of ~2 KiB values under `/bench/raw/c<concurrency>/`, `concurrency` at a time; puts per second.
pub async fn put_rate(etcd: &Client, count: usize, concurrency: usize) -> Result<f64> {
    let value = vec![b'x'; VALUE_SIZE];
    let started = Instant::now();
    let failures = futures::stream::iter(0..count)
        .map(|i| {
            let mut kv = etcd.kv_client();
            let value = value.clone();
            async move {
                kv.put(format!("/bench/raw/c{concurrency}/{i:07}"), value, None)
                    .await
                    .is_err()
            }
        })
        .buffer_unordered(concurrency)
        .filter(|failed| std::future::ready(*failed))
        .count()
        .await;
    ensure!(failures == 0, "{failures} raw puts failed");
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

/// Per key written by `put_rate(…, 32)`: GET, then a put conditioned on its mod_revision (what an API server
/// does for each update of a stale object).
pub async fn read_then_put_rate(etcd: &Client, count: usize, concurrency: usize) -> Result<f64> {
    use etcd_client::{Compare, CompareOp, Txn, TxnOp};
    let started = Instant::now();
    let failures = futures::stream::iter(0..count)
        .map(|i| {
            let mut kv = etcd.kv_client();
            async move {
                let key = format!("/bench/raw/c32/{i:07}");
                let Ok(current) = kv.get(key.as_str(), None).await else {
                    return true;
                };
                let Some(item) = current.kvs().first() else {
                    return true;
                };
                let txn = Txn::new()
                    .when(vec![Compare::mod_revision(
                        key.as_str(),
                        CompareOp::Equal,
                        item.mod_revision(),
                    )])
                    .and_then(vec![TxnOp::put(key.as_str(), item.value().to_vec(), None)]);
                !matches!(kv.txn(txn).await, Ok(r) if r.succeeded())
            }
        })
        .buffer_unordered(concurrency)
        .filter(|failed| std::future::ready(*failed))
        .count()
        .await;
    ensure!(failures == 0, "{failures} read-modify-writes failed");
    Ok(count as f64 / started.elapsed().as_secs_f64())
}
