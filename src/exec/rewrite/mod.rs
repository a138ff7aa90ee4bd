//! Re-encrypt stored objects by writing them back unchanged through the Kubernetes API.
//!
//! kube-apiserver re-encrypts an object with the current write key when it is written and the stored value
//! was read through a non-first key or provider ("stale", reference §1.8). So a rewrite is: list each resource
//! in pages and PUT every object back with the `resourceVersion` it was listed with. The precondition means a
//! concurrent writer is never overwritten: a 409 tells us someone else wrote the object after our list, and
//! since the rewrite runs only after every API server writes with the new key, their write already
//! re-encrypted it.
//!
//! Memory is bounded in bytes, not objects (a Helm release Secret is up to 1 MiB): a lister task holds one
//! page of about `page_bytes`, and the objects it has queued or the writers are writing hold at most
//! `queue_bytes` together (see [`budget`]). A fixed pool of writers works through the queue while the next
//! page is fetched; how many of them have a request in flight is up to [`pace`], which grows it while
//! throughput rises and backs off when the servers are overloaded (429, 5xx) or only slower. The writes are
//! spread over every controlplane's API server ([`servers`]). Only a compact set of object ids (16 bytes each)
//! is kept, to skip finished objects if an expired continue token (410) forces a fresh list ([`lister`]).
//!
//! Split by concept: [`targets`] (which resources), [`targeted`] (only the objects a census found stale),
//! [`lister`] (paging through a resource, 410 restarts), [`budget`] (memory), [`writer`] (one object's write), [`pace`] (requests in flight), [`servers`] (which API
//! server), [`report`] (counters and the report), [`progress`] (what the user sees).

mod budget;
mod lister;
mod pace;
mod progress;
mod report;
mod servers;
mod targeted;
mod targets;
mod writer;

pub use pace::{ADAPTIVE_CEILING, Concurrency};
pub use servers::{ApiServer, Servers};

pub use report::{ObjectError, RewriteReport};
pub use targeted::{Lookup, rewrite_keys, rewrite_keys_through};
pub use targets::{
    Resolution, ResourceSelector, RewriteError, Target, Unusable, resolve, resolve_without_api,
};
pub use writer::Outcome;

use budget::{ByteBudget, Share};
use kube::api::DynamicObject;
use pace::Pace;
use progress::Progress;
use report::Stats;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use targeted::Wanted;
use tokio_util::sync::CancellationToken;
use writer::Writer;

#[derive(Debug, Clone)]
pub struct RewriteOptions {
    /// Most objects per list page (`limit`); pages are smaller when objects are large (`page_bytes`), and never
    /// more than `8 × page_bytes` of the largest objects etcd stores would need (see [`budget`]).
    pub page_size: u32,
    /// Aim for list pages of about this many bytes (the page size adapts between 1 and `page_size`).
    pub page_bytes: usize,
    /// Most bytes of objects listed but not yet written (queued or being written); the lister waits for room.
    pub queue_bytes: usize,
    /// Writes in flight: adaptive (the default) or pinned ([`pace`]).
    pub concurrency: Concurrency,
    /// Retries of one request after a 5xx or a transport error, with exponential backoff.
    pub max_retries: u32,
    /// 429s are retried (after the server's `Retry-After`) until no request at all has succeeded for this long.
    pub throttle_patience: Duration,
    /// First backoff delay; doubled per retry, capped at 5 s.
    pub initial_backoff: Duration,
    /// At most this many per-object errors are kept in the report (all are counted).
    pub max_reported_errors: usize,
    pub progress: ProgressMode,
    pub cancel: CancellationToken,
}

impl Default for RewriteOptions {
    fn default() -> Self {
        Self {
            page_size: 500,
            page_bytes: 8 << 20,
            queue_bytes: 32 << 20,
            concurrency: Concurrency::Adaptive,
            max_retries: 8,
            throttle_patience: Duration::from_secs(300),
            initial_backoff: Duration::from_millis(100),
            max_reported_errors: 1000,
            progress: ProgressMode::Auto,
            cancel: CancellationToken::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// A bar when stderr is a terminal, otherwise log lines every few seconds.
    Auto,
    /// Log lines only.
    Log,
    /// Nothing but the final summary log line.
    Quiet,
}

/// Rewrite every object of every target through one API server, one resource after another.
pub async fn rewrite(
    client: &kube::Client,
    targets: &[Target],
    options: &RewriteOptions,
) -> RewriteReport {
    rewrite_through(&Arc::new(Servers::one(client)), targets, options).await
}

/// Rewrite every object of every target, one resource after another, writing through all of `servers`.
pub async fn rewrite_through(
    servers: &Arc<Servers>,
    targets: &[Target],
    options: &RewriteOptions,
) -> RewriteReport {
    let pass = Pass::begin(options, 0);
    for target in targets {
        if options.cancel.is_cancelled() {
            break;
        }
        pass.resource(servers, target, options, None)
            .rewrite()
            .await;
    }
    pass.end(servers, options, "rewrite")
}

/// What one rewrite call shares across its resources: the counters, the pace and the progress shown.
struct Pass {
    started: Instant,
    stats: Arc<Stats>,
    pace: Arc<Pace>,
    progress: Progress,
}

impl Pass {
    /// `expected`: objects known to be coming (0: counted from the first list page of each resource).
    fn begin(options: &RewriteOptions, expected: u64) -> Self {
        let started = Instant::now();
        let stats = Arc::new(Stats::default());
        stats.expected.store(expected, Ordering::Relaxed);
        let pace = Arc::new(Pace::new(options.concurrency));
        let progress = Progress::start(options.progress, stats.clone(), pace.clone(), started);
        Self {
            started,
            stats,
            pace,
            progress,
        }
    }

    /// The next resource's run, shown in the progress.
    fn resource<'a>(
        &'a self,
        servers: &'a Arc<Servers>,
        target: &'a Target,
        options: &'a RewriteOptions,
        wanted: Option<&'a Wanted>,
    ) -> ResourceRun<'a> {
        self.progress.resource(&target.name());
        ResourceRun {
            servers,
            target,
            options,
            stats: &self.stats,
            pace: &self.pace,
            wanted,
        }
    }

    /// The report, with how the pace and the servers ended; `what` names the rewrite in the log.
    fn end(self, servers: &Servers, options: &RewriteOptions, what: &str) -> RewriteReport {
        self.progress.finish();
        let mut report = self
            .stats
            .report(self.started.elapsed(), options.cancel.is_cancelled());
        report.final_concurrency = self.pace.limit();
        report.saturations = self.pace.saturations();
        report.servers = servers.answered();
        tracing::info!("{what} finished: {report}");
        report
    }
}

/// Objects handed from the lister to the writers, each with its share of the byte budget (given back when the
/// writer is done with it). Bounded in count too, so the lister stalls instead of buffering.
type WorkQueue = async_channel_like::Receiver;
type Queued = (DynamicObject, Share);

/// A tiny multi-consumer queue over tokio's mpsc (a Mutex around the receiver is enough: writers spend their
/// time in HTTP, not in `recv`).
mod async_channel_like {
    use super::Queued;
    use std::sync::Arc;
    use tokio::sync::{Mutex, mpsc};

    #[derive(Clone)]
    pub struct Receiver(Arc<Mutex<mpsc::Receiver<Queued>>>);

    pub fn bounded(capacity: usize) -> (mpsc::Sender<Queued>, Receiver) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (tx, Receiver(Arc::new(Mutex::new(rx))))
    }

    impl Receiver {
        pub async fn recv(&self) -> Option<Queued> {
            self.0.lock().await.recv().await
        }
    }
}

/// One resource's rewrite: a lister task paging through it and a pool of writers behind a bounded queue.
struct ResourceRun<'a> {
    servers: &'a Arc<Servers>,
    target: &'a Target,
    options: &'a RewriteOptions,
    stats: &'a Arc<Stats>,
    pace: &'a Arc<Pace>,
    /// `None`: every listed object is written back. `Some`: only those stored at these etcd keys.
    wanted: Option<&'a Wanted>,
}

impl ResourceRun<'_> {
    fn writer(&self) -> Writer {
        Writer::new(
            self.servers,
            self.target,
            self.options,
            self.stats.clone(),
            self.pace.clone(),
        )
    }

    /// List the resource and write back every listed object (or every wanted one).
    async fn rewrite(&self) {
        let (sender, queue): (_, WorkQueue) =
            async_channel_like::bounded(self.options.page_size as usize);
        let writers: Vec<_> = (0..self.options.concurrency.ceiling())
            .map(|_| {
                let queue = queue.clone();
                let writer = self.writer();
                tokio::spawn(async move {
                    while let Some((object, share)) = queue.recv().await {
                        // Cancelled: leave queued objects alone, only in-flight writes finish.
                        if writer.options.cancel.is_cancelled() {
                            break;
                        }
                        writer.rewrite_listed(object).await;
                        drop(share);
                    }
                })
            })
            .collect();
        drop(queue);
        let budget = ByteBudget::new(self.options.queue_bytes);
        self.list_into(sender, &budget).await;
        for writer in writers {
            if let Err(e) = writer.await {
                tracing::error!("rewrite writer task failed: {e}");
            }
        }
    }
}

/// Write back one object as it was read (its `resourceVersion` is the precondition), with the same conflict,
/// retry and skip rules as the full rewrite; the counts go to the returned report.
pub async fn rewrite_object(
    client: &kube::Client,
    target: &Target,
    object: DynamicObject,
    options: &RewriteOptions,
) -> (Outcome, RewriteReport) {
    let started = Instant::now();
    let stats = Arc::new(Stats::default());
    let pace = Arc::new(Pace::new(options.concurrency));
    let servers = Arc::new(Servers::one(client));
    let writer = Writer::new(&servers, target, options, stats.clone(), pace);
    let outcome = writer.put_back(writer.with_types(object)).await;
    writer.record(String::new(), outcome.clone());
    (outcome, stats.report(started.elapsed(), false))
}
