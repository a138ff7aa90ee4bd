//! Re-encrypt stored objects by writing them back unchanged through the Kubernetes API.
//!
//! kube-apiserver re-encrypts an object with the current write key when it is written and the stored value
//! was read through a non-first key or provider ("stale", reference §1.8). So a rewrite is: list each resource
//! in pages and PUT every object back with the `resourceVersion` it was listed with. The precondition means a
//! concurrent writer is never overwritten: a 409 tells us someone else wrote the object after our list, and
//! since the rewrite runs only after every API server writes with the new key, their write already
//! re-encrypted it.
//!
//! Memory is bounded: a lister task holds one page, a bounded queue holds at most one more, and a fixed pool
//! of writers works through the queue while the next page is fetched. Only a compact set of object ids (16
//! bytes each) is kept, to skip finished objects if an expired continue token (410) forces a fresh list.

use crate::exec::etcd::EtcdResource;
use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, PostParams, TypeMeta};
use kube::discovery::{self, ApiCapabilities, Scope, verbs};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::fmt;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------------------------
// Which resources

/// One entry of an EncryptionConfiguration's `resources:` list, parsed as upstream does
/// (`schema.ParseGroupResource`: split at the first `.`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceSelector {
    /// `secrets`, `configmaps.` (core), `widgets.example.com`.
    Exact { group: String, resource: String },
    /// `*.` (all core) or `*.apps`.
    Group(String),
    /// `*.*`.
    All,
}

impl ResourceSelector {
    pub fn parse(text: &str) -> Self {
        let (resource, group) = text.split_once('.').unwrap_or((text, ""));
        match (resource, group) {
            ("*", "*") => Self::All,
            ("*", g) => Self::Group(g.to_string()),
            (r, g) => Self::Exact {
                group: g.to_string(),
                resource: r.to_string(),
            },
        }
    }
}

/// A concrete, served resource to rewrite.
#[derive(Debug, Clone)]
pub struct Target {
    pub api: ApiResource,
    pub namespaced: bool,
}

impl Target {
    /// `secrets`, `deployments.apps`, `widgets.example.com`.
    pub fn name(&self) -> String {
        if self.api.group.is_empty() {
            self.api.plural.clone()
        } else {
            format!("{}.{}", self.api.plural, self.api.group)
        }
    }

    /// Where kube-apiserver keeps this resource in etcd.
    pub fn etcd(&self, etcd_prefix: &str) -> EtcdResource {
        EtcdResource::new(etcd_prefix, &self.api.group, &self.api.plural)
    }

    /// The well-known core `secrets` resource, for callers that need no discovery.
    pub fn secrets() -> Self {
        Self::core("Secret", "secrets")
    }

    pub fn configmaps() -> Self {
        Self::core("ConfigMap", "configmaps")
    }

    fn core(kind: &str, plural: &str) -> Self {
        Self {
            api: ApiResource {
                group: String::new(),
                version: "v1".into(),
                api_version: "v1".into(),
                kind: kind.into(),
                plural: plural.into(),
            },
            namespaced: true,
        }
    }
}

/// A resource named (or matched) by the configuration that atrest cannot rewrite, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unusable {
    pub resource: String,
    pub reason: String,
    /// Matched only through a wildcard (e.g. `tokenreviews` under `*.*`, which is never stored): usually
    /// harmless, whereas a resource named explicitly and unusable is a configuration problem.
    pub from_wildcard: bool,
}

#[derive(Debug, Default)]
pub struct Resolution {
    pub targets: Vec<Target>,
    pub unusable: Vec<Unusable>,
}

#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    #[error("API discovery of group {group:?} failed: {source}")]
    Discovery {
        group: String,
        #[source]
        source: kube::Error,
    },
}

/// Resolve configuration resource strings to served resources through API discovery.
///
/// A named resource that is not served, or any matched resource that cannot be both listed and updated, is
/// returned in [`Resolution::unusable`] (never silently dropped); callers decide whether that is fatal.
pub async fn resolve(
    client: &kube::Client,
    resource_strings: &[String],
) -> Result<Resolution, RewriteError> {
    let selectors: Vec<ResourceSelector> = resource_strings
        .iter()
        .map(|s| ResourceSelector::parse(s))
        .collect();
    let mut groups: Vec<String> = Vec::new();
    if selectors.contains(&ResourceSelector::All) {
        let all = kube::discovery::Discovery::new(client.clone())
            .run()
            .await
            .map_err(|source| RewriteError::Discovery {
                group: "*".into(),
                source,
            })?;
        groups = all.groups().map(|g| g.name().to_string()).collect();
    } else {
        for selector in &selectors {
            let group = match selector {
                ResourceSelector::Exact { group, .. } | ResourceSelector::Group(group) => {
                    group.clone()
                }
                ResourceSelector::All => continue,
            };
            if !groups.contains(&group) {
                groups.push(group);
            }
        }
    }
    let mut resolution = Resolution::default();
    let mut seen = HashSet::new();
    let mut found_exact = HashSet::new();
    for group in &groups {
        let resources = match discovery::group(client, group).await {
            Ok(api_group) => api_group.recommended_resources(),
            Err(kube::Error::Discovery(_)) => Vec::new(),
            Err(source) => {
                return Err(RewriteError::Discovery {
                    group: group.clone(),
                    source,
                });
            }
        };
        for (api, caps) in resources {
            let named = selectors.iter().any(|s| {
                matches!(s, ResourceSelector::Exact { group: g, resource }
                    if *g == api.group && *resource == api.plural)
            });
            let covered = named
                || selectors.iter().any(|s| match s {
                    ResourceSelector::Exact { .. } => false,
                    ResourceSelector::Group(g) => *g == api.group,
                    ResourceSelector::All => true,
                });
            if !covered || !seen.insert((api.group.clone(), api.plural.clone())) {
                continue;
            }
            found_exact.insert((api.group.clone(), api.plural.clone()));
            let target = Target {
                namespaced: caps.scope == Scope::Namespaced,
                api,
            };
            match missing_verbs(&caps) {
                None => resolution.targets.push(target),
                Some(missing) => resolution.unusable.push(Unusable {
                    resource: target.name(),
                    reason: format!(
                        "the API does not allow {missing} on it, so it cannot be rewritten"
                    ),
                    from_wildcard: !named,
                }),
            }
        }
    }
    for selector in &selectors {
        if let ResourceSelector::Exact { group, resource } = selector
            && !found_exact.contains(&(group.clone(), resource.clone()))
        {
            let name = if group.is_empty() {
                resource.clone()
            } else {
                format!("{resource}.{group}")
            };
            resolution.unusable.push(Unusable {
                resource: name,
                reason: "not served by the API server".into(),
                from_wildcard: false,
            });
        }
    }
    resolution.targets.sort_by_key(Target::name);
    resolution
        .unusable
        .sort_by(|a, b| a.resource.cmp(&b.resource));
    Ok(resolution)
}

/// The targets of resource strings that name resources exactly (`secrets`, `deployments.apps`), without asking the
/// API: where they live in etcd follows from group and plural alone, so a census can still count them while no
/// API server answers. `None` when a wildcard needs discovery. The kind and scope are unknown (left empty and
/// namespaced): such targets serve an etcd census, never a rewrite.
pub fn resolve_without_api(resource_strings: &[String]) -> Option<Vec<Target>> {
    let mut targets: Vec<Target> = Vec::new();
    for text in resource_strings {
        let ResourceSelector::Exact { group, resource } = ResourceSelector::parse(text) else {
            return None;
        };
        if targets
            .iter()
            .any(|t| t.api.group == group && t.api.plural == resource)
        {
            continue;
        }
        targets.push(Target {
            api: ApiResource {
                group,
                version: String::new(),
                api_version: String::new(),
                kind: String::new(),
                plural: resource,
            },
            namespaced: true,
        });
    }
    targets.sort_by_key(Target::name);
    Some(targets)
}

fn missing_verbs(caps: &ApiCapabilities) -> Option<String> {
    let missing: Vec<&str> = [verbs::LIST, verbs::GET, verbs::UPDATE]
        .into_iter()
        .filter(|v| !caps.supports_operation(v))
        .collect();
    (!missing.is_empty()).then(|| missing.join("/"))
}

// ---------------------------------------------------------------------------------------------------------
// Options, report

#[derive(Debug, Clone)]
pub struct RewriteOptions {
    /// Objects per list page (`limit`).
    pub page_size: u32,
    /// Concurrent writes.
    pub concurrency: usize,
    /// Retries of one request after 429, 5xx or a transport error, with exponential backoff.
    pub max_retries: u32,
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
            concurrency: 32,
            max_retries: 8,
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

/// One object that could not be rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectError {
    pub resource: String,
    /// `namespace/name` or `name`.
    pub object: String,
    pub error: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RewriteReport {
    /// Objects the server actually wrote (new resourceVersion).
    pub rewritten: u64,
    /// PUT succeeded but nothing was written: the value was already on the write key (reference §1.8).
    pub unchanged: u64,
    /// Deleted before we got to them.
    pub gone: u64,
    /// Written by someone else after our list, hence already re-encrypted.
    pub skipped_newer: u64,
    /// 409 answers seen (each is followed by a re-read).
    pub conflicts: u64,
    /// Requests retried after 429, 5xx or a transport error.
    pub retries: u64,
    /// Lists started again after an expired continue token.
    pub list_restarts: u64,
    pub errors_total: u64,
    pub errors: Vec<ObjectError>,
    /// Resources whose listing failed (the rewrite of that resource is incomplete).
    pub failed_resources: Vec<ObjectError>,
    /// Expected objects (from `remainingItemCount`), for progress.
    pub expected: u64,
    pub elapsed: Duration,
    /// Stopped early on request; a rerun finishes the job.
    pub interrupted: bool,
}

impl RewriteReport {
    pub fn processed(&self) -> u64 {
        self.rewritten + self.unchanged + self.gone + self.skipped_newer + self.errors_total
    }

    pub fn objects_per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.processed() as f64 / secs
        } else {
            0.0
        }
    }

    /// Complete and without errors.
    pub fn is_success(&self) -> bool {
        !self.interrupted && self.errors_total == 0 && self.failed_resources.is_empty()
    }
}

impl fmt::Display for RewriteReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} rewritten, {} unchanged, {} skipped (gone {}, written meanwhile {}), {} conflicts, {} retries, \
             {} errors, {} failed resources in {:.1}s ({:.0} objects/s){}",
            self.rewritten,
            self.unchanged,
            self.gone + self.skipped_newer,
            self.gone,
            self.skipped_newer,
            self.conflicts,
            self.retries,
            self.errors_total,
            self.failed_resources.len(),
            self.elapsed.as_secs_f64(),
            self.objects_per_second(),
            if self.interrupted {
                " — INTERRUPTED, run again to finish"
            } else {
                ""
            }
        )
    }
}

/// Live counters shared by the lister, the writers and the progress reporter.
#[derive(Default)]
struct Stats {
    rewritten: AtomicU64,
    unchanged: AtomicU64,
    gone: AtomicU64,
    skipped_newer: AtomicU64,
    conflicts: AtomicU64,
    retries: AtomicU64,
    list_restarts: AtomicU64,
    errors_total: AtomicU64,
    expected: AtomicU64,
    errors: std::sync::Mutex<Vec<ObjectError>>,
    failed_resources: std::sync::Mutex<Vec<ObjectError>>,
}

impl Stats {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn processed(&self) -> u64 {
        [
            &self.rewritten,
            &self.unchanged,
            &self.gone,
            &self.skipped_newer,
            &self.errors_total,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }

    fn error(&self, limit: usize, error: ObjectError) {
        Self::add(&self.errors_total);
        tracing::warn!(resource = %error.resource, object = %error.object, "rewrite failed: {}", error.error);
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if errors.len() < limit {
            errors.push(error);
        }
    }

    fn report(&self, elapsed: Duration, interrupted: bool) -> RewriteReport {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RewriteReport {
            rewritten: get(&self.rewritten),
            unchanged: get(&self.unchanged),
            gone: get(&self.gone),
            skipped_newer: get(&self.skipped_newer),
            conflicts: get(&self.conflicts),
            retries: get(&self.retries),
            list_restarts: get(&self.list_restarts),
            errors_total: get(&self.errors_total),
            errors: self
                .errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            failed_resources: self
                .failed_resources
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            expected: get(&self.expected),
            elapsed,
            interrupted,
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Progress

struct Progress {
    bar: Option<indicatif::ProgressBar>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    fn start(mode: ProgressMode, stats: Arc<Stats>, started: Instant) -> Self {
        let tty = std::io::stderr().is_terminal();
        match mode {
            ProgressMode::Auto if tty => {
                let bar = indicatif::ProgressBar::new(0);
                let style = indicatif::ProgressStyle::with_template(
                    "{msg:>12} [{bar:40}] {pos}/{len} {per_sec} ETA {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> ");
                bar.set_style(style);
                bar.enable_steady_tick(Duration::from_millis(200));
                let ticker_bar = bar.clone();
                let ticker = tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        ticker_bar.set_length(
                            stats
                                .expected
                                .load(Ordering::Relaxed)
                                .max(stats.processed()),
                        );
                        ticker_bar.set_position(stats.processed());
                    }
                });
                Self {
                    bar: Some(bar),
                    ticker: Some(ticker),
                }
            }
            ProgressMode::Auto | ProgressMode::Log => {
                let ticker = tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        let done = stats.processed();
                        let rate = done as f64 / started.elapsed().as_secs_f64().max(0.001);
                        tracing::info!(
                            done,
                            expected = stats.expected.load(Ordering::Relaxed),
                            rate = format_args!("{rate:.0}/s"),
                            "rewrite progress"
                        );
                    }
                });
                Self {
                    bar: None,
                    ticker: Some(ticker),
                }
            }
            ProgressMode::Quiet => Self {
                bar: None,
                ticker: None,
            },
        }
    }

    fn resource(&self, name: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(name.to_string());
        } else {
            tracing::info!(resource = name, "rewriting");
        }
    }

    fn finish(self) {
        if let Some(t) = self.ticker {
            t.abort();
        }
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Full rewrite

/// Rewrite every object of every target, one resource after another.
pub async fn rewrite(
    client: &kube::Client,
    targets: &[Target],
    options: &RewriteOptions,
) -> RewriteReport {
    let started = Instant::now();
    let stats = Arc::new(Stats::default());
    let progress = Progress::start(options.progress, stats.clone(), started);
    for target in targets {
        if options.cancel.is_cancelled() {
            break;
        }
        progress.resource(&target.name());
        rewrite_resource(client, target, options, &stats).await;
    }
    progress.finish();
    let report = stats.report(started.elapsed(), options.cancel.is_cancelled());
    tracing::info!("rewrite finished: {report}");
    report
}

/// Objects handed from the lister to the writers. Bounded, so the lister stalls instead of buffering.
type WorkQueue = async_channel_like::Receiver;

/// A tiny multi-consumer queue over tokio's mpsc (a Mutex around the receiver is enough: writers spend their
/// time in HTTP, not in `recv`).
mod async_channel_like {
    use kube::api::DynamicObject;
    use std::sync::Arc;
    use tokio::sync::{Mutex, mpsc};

    #[derive(Clone)]
    pub struct Receiver(Arc<Mutex<mpsc::Receiver<DynamicObject>>>);

    pub fn bounded(capacity: usize) -> (mpsc::Sender<DynamicObject>, Receiver) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (tx, Receiver(Arc::new(Mutex::new(rx))))
    }

    impl Receiver {
        pub async fn recv(&self) -> Option<DynamicObject> {
            self.0.lock().await.recv().await
        }
    }
}

async fn rewrite_resource(
    client: &kube::Client,
    target: &Target,
    options: &RewriteOptions,
    stats: &Arc<Stats>,
) {
    let (sender, queue): (_, WorkQueue) = async_channel_like::bounded(options.page_size as usize);
    let writers: Vec<_> = (0..options.concurrency.max(1))
        .map(|_| {
            let queue = queue.clone();
            let writer = Writer::new(client, target, options, stats.clone());
            tokio::spawn(async move {
                while let Some(object) = queue.recv().await {
                    // Cancelled: leave queued objects alone, only in-flight writes finish.
                    if writer.options.cancel.is_cancelled() {
                        break;
                    }
                    writer.rewrite_listed(object).await;
                }
            })
        })
        .collect();
    drop(queue);
    list_into(client, target, options, stats, sender).await;
    for writer in writers {
        if let Err(e) = writer.await {
            tracing::error!("rewrite writer task failed: {e}");
        }
    }
}

/// Give up on a resource after this many expired-token restarts in a row that listed nothing new.
const MAX_STALLED_RESTARTS: u32 = 5;

/// Page through the resource and queue every object not yet handed out, starting again on a 410.
async fn list_into(
    client: &kube::Client,
    target: &Target,
    options: &RewriteOptions,
    stats: &Stats,
    sender: tokio::sync::mpsc::Sender<DynamicObject>,
) {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &target.api);
    let mut dispatched: HashSet<u128> = HashSet::new();
    let mut continue_token: Option<String> = None;
    let mut first_page = true;
    let mut restarted = false;
    let mut stalled_restarts = 0u32;
    let mut dispatched_at_last_restart = 0usize;
    let mut attempt = 0u32;
    loop {
        if options.cancel.is_cancelled() {
            return;
        }
        let mut params = ListParams::default().limit(options.page_size);
        if let Some(token) = &continue_token {
            params = params.continue_token(token);
        }
        let page = tokio::select! {
            page = api.list(&params) => page,
            () = options.cancel.cancelled() => return,
        };
        let page = match page {
            Ok(page) => {
                attempt = 0;
                page
            }
            Err(kube::Error::Api(status))
                if status.code == 410 && stalled_restarts < MAX_STALLED_RESTARTS =>
            {
                // The continue token expired (etcd compacted the list's revision). Upstream hands back a fresh
                // token that continues after the same key at the latest revision: every object not yet listed
                // is still ahead of it. Without one, list again from the start and skip what was handed out.
                Stats::add(&stats.list_restarts);
                if dispatched.len() == dispatched_at_last_restart {
                    stalled_restarts += 1;
                } else {
                    stalled_restarts = 0;
                }
                dispatched_at_last_restart = dispatched.len();
                continue_token = status
                    .metadata
                    .as_ref()
                    .and_then(|m| m.continue_.clone())
                    .filter(|t| !t.is_empty());
                tracing::info!(
                    resource = %target.name(),
                    resumed = continue_token.is_some(),
                    "continue token expired, listing again"
                );
                first_page = continue_token.is_none();
                restarted = true;
                continue;
            }
            Err(e) if is_transient(&e) && attempt < options.max_retries => {
                attempt += 1;
                Stats::add(&stats.retries);
                tokio::time::sleep(backoff(options, attempt)).await;
                continue;
            }
            Err(e) => {
                stats
                    .failed_resources
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(ObjectError {
                        resource: target.name(),
                        object: String::new(),
                        error: format!("list failed: {e}"),
                    });
                return;
            }
        };
        if first_page && !restarted {
            let remaining = page.metadata.remaining_item_count.unwrap_or(0).max(0) as u64;
            stats
                .expected
                .fetch_add(page.items.len() as u64 + remaining, Ordering::Relaxed);
        }
        first_page = false;
        continue_token = page.metadata.continue_.clone().filter(|t| !t.is_empty());
        for mut object in page.items {
            if !dispatched.insert(object_id(&object)) {
                continue;
            }
            object.types = Some(TypeMeta {
                api_version: target.api.api_version.clone(),
                kind: target.api.kind.clone(),
            });
            if sender.send(object).await.is_err() {
                return; // writers stopped (cancelled)
            }
        }
        if continue_token.is_none() {
            return;
        }
    }
}

/// 16 bytes per object: the uid if there is one (else namespace/name), hashed so every id has one size.
fn object_id(object: &DynamicObject) -> u128 {
    let meta = &object.metadata;
    let mut hasher = Sha256::new();
    match &meta.uid {
        Some(uid) => hasher.update(uid.as_bytes()),
        None => {
            hasher.update(meta.namespace.as_deref().unwrap_or_default().as_bytes());
            hasher.update(b"/");
            hasher.update(meta.name.as_deref().unwrap_or_default().as_bytes());
        }
    }
    let digest = hasher.finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    u128::from_le_bytes(id)
}

fn is_transient(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => status.code == 429 || status.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

fn backoff(options: &RewriteOptions, attempt: u32) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(10);
    options
        .initial_backoff
        .saturating_mul(factor)
        .min(Duration::from_secs(5))
}

fn display_name(object: &DynamicObject) -> String {
    let name = object.metadata.name.as_deref().unwrap_or("<unnamed>");
    match &object.metadata.namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

/// What happened to one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Rewritten,
    Unchanged,
    Gone,
    SkippedNewer,
    Failed(String),
}

struct Writer {
    client: kube::Client,
    target: Target,
    options: RewriteOptions,
    stats: Arc<Stats>,
}

impl Writer {
    fn new(
        client: &kube::Client,
        target: &Target,
        options: &RewriteOptions,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            client: client.clone(),
            target: target.clone(),
            options: options.clone(),
            stats,
        }
    }

    fn api(&self, namespace: Option<&str>) -> Api<DynamicObject> {
        match (self.target.namespaced, namespace) {
            (true, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, &self.target.api),
            _ => Api::all_with(self.client.clone(), &self.target.api),
        }
    }

    async fn rewrite_listed(&self, object: DynamicObject) {
        let label = display_name(&object);
        let outcome = self.put_back(object).await;
        self.record(label, outcome);
    }

    fn record(&self, object: String, outcome: Outcome) {
        let s = &self.stats;
        match outcome {
            Outcome::Rewritten => Stats::add(&s.rewritten),
            Outcome::Unchanged => Stats::add(&s.unchanged),
            Outcome::Gone => Stats::add(&s.gone),
            Outcome::SkippedNewer => Stats::add(&s.skipped_newer),
            Outcome::Failed(error) => s.error(
                self.options.max_reported_errors,
                ObjectError {
                    resource: self.target.name(),
                    object,
                    error,
                },
            ),
        }
    }

    /// PUT the object back as read. 409 → re-read: a different resourceVersion means someone wrote it after
    /// our read (already on the new key), the same one means retry with the fresh copy.
    async fn put_back(&self, mut object: DynamicObject) -> Outcome {
        let Some(name) = object.metadata.name.clone() else {
            return Outcome::Failed("object has no name".into());
        };
        let api = self.api(object.metadata.namespace.as_deref());
        let read_rv = object.metadata.resource_version.clone();
        if read_rv.is_none() {
            // Without a precondition a PUT could overwrite a concurrent write.
            return Outcome::Failed(
                "object has no resourceVersion; refusing an unconditional write".into(),
            );
        }
        let mut conflicts = 0u32;
        let mut attempt = 0u32;
        loop {
            match api.replace(&name, &PostParams::default(), &object).await {
                Ok(written) => {
                    return if written.metadata.resource_version == read_rv {
                        Outcome::Unchanged
                    } else {
                        Outcome::Rewritten
                    };
                }
                Err(kube::Error::Api(status)) if status.code == 404 => return Outcome::Gone,
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    Stats::add(&self.stats.conflicts);
                    conflicts += 1;
                    match self.get_retrying(&api, &name).await {
                        Ok(None) => return Outcome::Gone,
                        Ok(Some(current)) if current.metadata.resource_version != read_rv => {
                            return Outcome::SkippedNewer;
                        }
                        Ok(Some(current)) if conflicts < 3 => object = self.with_types(current),
                        Ok(Some(_)) => {
                            return Outcome::Failed(format!(
                                "conflict {conflicts} times although the resourceVersion did not change: {}",
                                status.message
                            ));
                        }
                        Err(e) => {
                            return Outcome::Failed(format!("re-read after conflict failed: {e}"));
                        }
                    }
                }
                Err(e) if is_transient(&e) && attempt < self.options.max_retries => {
                    attempt += 1;
                    Stats::add(&self.stats.retries);
                    tokio::time::sleep(backoff(&self.options, attempt)).await;
                }
                Err(e) => return Outcome::Failed(format!("update failed: {e}")),
            }
        }
    }

    fn with_types(&self, mut object: DynamicObject) -> DynamicObject {
        object.types = Some(TypeMeta {
            api_version: self.target.api.api_version.clone(),
            kind: self.target.api.kind.clone(),
        });
        object
    }

    /// GET with retries on transient errors; `None` if the object is gone.
    async fn get_retrying(
        &self,
        api: &Api<DynamicObject>,
        name: &str,
    ) -> Result<Option<DynamicObject>, kube::Error> {
        let mut attempt = 0u32;
        loop {
            match api.get(name).await {
                Ok(object) => return Ok(Some(object)),
                Err(kube::Error::Api(status)) if status.code == 404 => return Ok(None),
                Err(e) if is_transient(&e) && attempt < self.options.max_retries => {
                    attempt += 1;
                    Stats::add(&self.stats.retries);
                    tokio::time::sleep(backoff(&self.options, attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Targeted mode: GET the object fresh, then PUT it back (same conflict rules as a listed object).
    async fn rewrite_named(&self, namespace: Option<&str>, name: &str) {
        let label = match namespace {
            Some(ns) => format!("{ns}/{name}"),
            None => name.to_string(),
        };
        let api = self.api(namespace);
        let outcome = match self.get_retrying(&api, name).await {
            Ok(None) => Outcome::Gone,
            Ok(Some(object)) => self.put_back(self.with_types(object)).await,
            Err(e) => Outcome::Failed(format!("read failed: {e}")),
        };
        self.record(label, outcome);
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
    let writer = Writer::new(client, target, options, stats.clone());
    let outcome = writer.put_back(writer.with_types(object)).await;
    writer.record(String::new(), outcome.clone());
    (outcome, stats.report(started.elapsed(), false))
}

// ---------------------------------------------------------------------------------------------------------
// Targeted rewrite

/// Rewrite only the objects stored at `etcd_keys` (from a census: keys not on the write key), GET + PUT each.
///
/// Each key is matched to the target whose etcd prefix it starts with; a key that matches none is an error
/// in the report (it would otherwise stay on an old key unnoticed).
pub async fn rewrite_keys(
    client: &kube::Client,
    targets: &[Target],
    etcd_prefix: &str,
    etcd_keys: &[String],
    options: &RewriteOptions,
) -> RewriteReport {
    let started = Instant::now();
    let stats = Arc::new(Stats::default());
    stats
        .expected
        .store(etcd_keys.len() as u64, Ordering::Relaxed);
    let progress = Progress::start(options.progress, stats.clone(), started);
    // Longest prefix first so `/registry/services/endpoints/` wins over a hypothetical `/registry/services/`.
    let mut by_prefix: Vec<(String, Arc<Writer>)> = targets
        .iter()
        .map(|t| {
            (
                t.etcd(etcd_prefix).key_prefix,
                Arc::new(Writer::new(client, t, options, stats.clone())),
            )
        })
        .collect();
    by_prefix.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
    progress.resource("targeted");
    futures::stream::iter(etcd_keys)
        .take_while(|_| std::future::ready(!options.cancel.is_cancelled()))
        .for_each_concurrent(options.concurrency.max(1), |key| {
            let by_prefix = &by_prefix;
            let stats = &stats;
            async move {
                let found = by_prefix.iter().find_map(|(prefix, writer)| {
                    key.strip_prefix(prefix.as_str()).map(|rest| (writer, rest))
                });
                let Some((writer, rest)) = found else {
                    stats.error(
                        options.max_reported_errors,
                        ObjectError {
                            resource: String::new(),
                            object: key.clone(),
                            error: "etcd key belongs to no resource being rewritten".into(),
                        },
                    );
                    return;
                };
                match split_object_path(writer.target.namespaced, rest) {
                    Some((namespace, name)) => writer.rewrite_named(namespace, name).await,
                    None => stats.error(
                        options.max_reported_errors,
                        ObjectError {
                            resource: writer.target.name(),
                            object: key.clone(),
                            error: "cannot tell namespace and name from the etcd key".into(),
                        },
                    ),
                }
            }
        })
        .await;
    progress.finish();
    let report = stats.report(started.elapsed(), options.cancel.is_cancelled());
    tracing::info!("targeted rewrite finished: {report}");
    report
}

/// `ns/name` (namespaced) or `name` (cluster-scoped) after the resource's etcd prefix.
fn split_object_path(namespaced: bool, rest: &str) -> Option<(Option<&str>, &str)> {
    if namespaced {
        let (ns, name) = rest.split_once('/')?;
        (!ns.is_empty() && !name.is_empty() && !name.contains('/')).then_some((Some(ns), name))
    } else {
        (!rest.is_empty() && !rest.contains('/')).then_some((None, rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_strings_parse_like_upstream() {
        use ResourceSelector::*;
        assert_eq!(
            ResourceSelector::parse("secrets"),
            Exact {
                group: "".into(),
                resource: "secrets".into()
            }
        );
        assert_eq!(
            ResourceSelector::parse("configmaps."),
            Exact {
                group: "".into(),
                resource: "configmaps".into()
            }
        );
        assert_eq!(
            ResourceSelector::parse("pandas.awesome.bears.example"),
            Exact {
                group: "awesome.bears.example".into(),
                resource: "pandas".into()
            }
        );
        assert_eq!(ResourceSelector::parse("*."), Group("".into()));
        assert_eq!(ResourceSelector::parse("*.apps"), Group("apps".into()));
        assert_eq!(ResourceSelector::parse("*.*"), All);
    }

    #[test]
    fn exact_resources_resolve_without_the_api_and_wildcards_do_not() {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let targets = resolve_without_api(&strings(&["secrets", "deployments.apps", "secrets."]))
            .expect("exact names need no discovery");
        let names: Vec<String> = targets.iter().map(Target::name).collect();
        assert_eq!(names, ["deployments.apps", "secrets"]);
        assert_eq!(
            targets[1].etcd("/registry").key_prefix,
            Target::secrets().etcd("/registry").key_prefix
        );
        assert!(resolve_without_api(&strings(&["secrets", "*.apps"])).is_none());
        assert!(resolve_without_api(&strings(&["*.*"])).is_none());
    }

    #[test]
    fn object_paths_split_by_scope() {
        assert_eq!(
            split_object_path(true, "default/s1"),
            Some((Some("default"), "s1"))
        );
        assert_eq!(split_object_path(true, "s1"), None);
        assert_eq!(split_object_path(true, "a/b/c"), None);
        assert_eq!(
            split_object_path(false, "cluster-admin"),
            Some((None, "cluster-admin"))
        );
        assert_eq!(split_object_path(false, "a/b"), None);
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let options = RewriteOptions::default();
        assert_eq!(backoff(&options, 1), Duration::from_millis(100));
        assert_eq!(backoff(&options, 2), Duration::from_millis(200));
        assert_eq!(backoff(&options, 30), Duration::from_secs(5));
    }

    #[test]
    fn report_counts_and_success() {
        let mut report = RewriteReport {
            rewritten: 5,
            unchanged: 2,
            gone: 1,
            elapsed: Duration::from_secs(2),
            ..Default::default()
        };
        assert_eq!(report.processed(), 8);
        assert!((report.objects_per_second() - 4.0).abs() < 1e-9);
        assert!(report.is_success());
        report.interrupted = true;
        assert!(!report.is_success());
        assert!(report.to_string().contains("INTERRUPTED"));
    }
}
