//! The writers: PUT one object back with its `resourceVersion` as precondition, with the conflict, retry and
//! skip rules every rewrite shares. Every request takes a slot from the rewrite's [`Pace`].

use super::RewriteOptions;
use super::pace::{Answer, MAX_RETRY_AFTER, Pace, answer_of};
use super::report::{ObjectError, Stats};
use super::servers::Servers;
use super::targets::Target;
use crate::kill_points;
use kube::api::{Api, DynamicObject, PostParams, TypeMeta};
use std::sync::Arc;
use std::time::Duration;

pub(super) fn is_transient(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => status.code == 429 || status.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// Send one request under the pace's limit and tell the pace how the server answered.
pub(super) async fn paced<T>(
    pace: &Pace,
    request: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, kube::Error> {
    let slot = pace.slot().await;
    let result = request.await;
    slot.answered(match &result {
        Ok(_) => Answer::Served,
        Err(error) => answer_of(error),
    });
    result
}

/// After a failed request: whether to send it again, having waited as long as needed. A 429 was not run, so it
/// is retried after the server's `Retry-After` until nothing at all has succeeded for `throttle_patience`;
/// 5xx and transport errors are retried `max_retries` times with backoff.
pub(super) async fn retry_after_error(
    error: &kube::Error,
    attempt: &mut u32,
    options: &RewriteOptions,
    stats: &Stats,
    pace: &Pace,
) -> bool {
    if let Answer::Throttled(retry_after) = answer_of(error) {
        Stats::add(&stats.throttled);
        tokio::time::sleep(retry_after.min(MAX_RETRY_AFTER)).await;
        return !pace.stalled(options.throttle_patience);
    }
    if is_transient(error) && *attempt < options.max_retries {
        *attempt += 1;
        Stats::add(&stats.retries);
        tokio::time::sleep(backoff(options, *attempt)).await;
        return true;
    }
    false
}

pub(super) fn backoff(options: &RewriteOptions, attempt: u32) -> Duration {
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

pub(super) struct Writer {
    servers: Arc<Servers>,
    pub(super) target: Target,
    pub(super) options: RewriteOptions,
    stats: Arc<Stats>,
    pace: Arc<Pace>,
}

impl Writer {
    pub(super) fn new(
        servers: &Arc<Servers>,
        target: &Target,
        options: &RewriteOptions,
        stats: Arc<Stats>,
        pace: Arc<Pace>,
    ) -> Self {
        Self {
            servers: servers.clone(),
            target: target.clone(),
            options: options.clone(),
            stats,
            pace,
        }
    }

    /// Sends one request through the next API server in the rotation, under the pace's limit.
    async fn send<T>(
        &self,
        namespace: Option<&str>,
        request: impl AsyncFnOnce(Api<DynamicObject>) -> Result<T, kube::Error>,
    ) -> Result<T, kube::Error> {
        let pick = self.servers.pick();
        let client = pick.client().clone();
        let api = match (self.target.namespaced, namespace) {
            (true, Some(ns)) => Api::namespaced_with(client, ns, &self.target.api),
            _ => Api::all_with(client, &self.target.api),
        };
        let result = paced(&self.pace, request(api)).await;
        if result.is_ok() {
            pick.served();
        }
        result
    }

    pub(super) async fn rewrite_listed(&self, object: DynamicObject) {
        let label = display_name(&object);
        let outcome = self.put_back(object).await;
        self.record(label, outcome);
    }

    pub(super) fn record(&self, object: String, outcome: Outcome) {
        kill_points::here_lazy(|| format!("rewrite-object:{}", self.target.name()));
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
    pub(super) async fn put_back(&self, mut object: DynamicObject) -> Outcome {
        let Some(name) = object.metadata.name.clone() else {
            return Outcome::Failed("object has no name".into());
        };
        let namespace = object.metadata.namespace.clone();
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
            let written = self
                .send(namespace.as_deref(), async |api| {
                    api.replace(&name, &PostParams::default(), &object).await
                })
                .await;
            match written {
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
                    match self.get_retrying(namespace.as_deref(), &name).await {
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
                Err(e) => {
                    if !self.retry_after_error(&e, &mut attempt).await {
                        return Outcome::Failed(format!("update failed: {e}"));
                    }
                }
            }
        }
    }

    async fn retry_after_error(&self, error: &kube::Error, attempt: &mut u32) -> bool {
        retry_after_error(error, attempt, &self.options, &self.stats, &self.pace).await
    }

    pub(super) fn with_types(&self, mut object: DynamicObject) -> DynamicObject {
        object.types = Some(TypeMeta {
            api_version: self.target.api.api_version.clone(),
            kind: self.target.api.kind.clone(),
        });
        object
    }

    /// GET with retries on transient errors; `None` if the object is gone.
    async fn get_retrying(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<DynamicObject>, kube::Error> {
        let mut attempt = 0u32;
        loop {
            match self.send(namespace, async |api| api.get(name).await).await {
                Ok(object) => return Ok(Some(object)),
                Err(kube::Error::Api(status)) if status.code == 404 => return Ok(None),
                Err(e) => {
                    if !self.retry_after_error(&e, &mut attempt).await {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Targeted mode: GET the object fresh, then PUT it back (same conflict rules as a listed object).
    pub(super) async fn rewrite_named(&self, namespace: Option<&str>, name: &str) {
        let label = match namespace {
            Some(ns) => format!("{ns}/{name}"),
            None => name.to_string(),
        };
        let outcome = match self.get_retrying(namespace, name).await {
            Ok(None) => Outcome::Gone,
            Ok(Some(object)) => self.put_back(self.with_types(object)).await,
            Err(e) => Outcome::Failed(format!("read failed: {e}")),
        };
        self.record(label, outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let options = RewriteOptions::default();
        assert_eq!(backoff(&options, 1), Duration::from_millis(100));
        assert_eq!(backoff(&options, 2), Duration::from_millis(200));
        assert_eq!(backoff(&options, 30), Duration::from_secs(5));
    }

    fn too_many_requests(retry_after_seconds: u32) -> kube::Error {
        let mut status = kube::core::Status::failure("Too many requests", "").with_code(429);
        status.details =
            serde_json::from_value(serde_json::json!({ "retryAfterSeconds": retry_after_seconds }))
                .ok();
        kube::Error::Api(status.boxed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_waits_its_retry_after_without_using_the_retry_budget() {
        let options = RewriteOptions::default();
        let (stats, pace) = (
            Stats::default(),
            Pace::new(super::super::Concurrency::Pinned(8)),
        );
        let mut attempt = 0;
        let before = tokio::time::Instant::now();
        let refused = too_many_requests(3);
        assert!(retry_after_error(&refused, &mut attempt, &options, &stats, &pace).await);
        assert_eq!(before.elapsed(), Duration::from_secs(3));
        assert_eq!(attempt, 0);
        assert_eq!(
            stats.throttled.load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        let before = tokio::time::Instant::now();
        let refused = too_many_requests(3600);
        assert!(retry_after_error(&refused, &mut attempt, &options, &stats, &pace).await);
        assert_eq!(
            before.elapsed(),
            MAX_RETRY_AFTER,
            "a long Retry-After is capped"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_stops_being_retried_once_nothing_has_succeeded_for_the_patience() {
        let options = RewriteOptions {
            throttle_patience: Duration::from_secs(10),
            ..Default::default()
        };
        let (stats, pace) = (
            Stats::default(),
            Pace::new(super::super::Concurrency::Pinned(8)),
        );
        let mut attempt = 0;
        let mut waits = 0;
        while retry_after_error(&too_many_requests(1), &mut attempt, &options, &stats, &pace).await
        {
            waits += 1;
            assert!(waits < 100, "429s are retried for ever");
        }
        assert_eq!(waits, 9, "1 s per refusal, for 10 s of patience");
    }

    #[tokio::test(start_paused = true)]
    async fn server_errors_use_the_retry_budget_and_a_client_error_is_final() {
        let options = RewriteOptions::default();
        let (stats, pace) = (
            Stats::default(),
            Pace::new(super::super::Concurrency::Pinned(8)),
        );
        let unavailable = kube::Error::Api(
            kube::core::Status::failure("down", "")
                .with_code(503)
                .boxed(),
        );
        let mut attempt = 0;
        while retry_after_error(&unavailable, &mut attempt, &options, &stats, &pace).await {}
        assert_eq!(attempt, options.max_retries);
        let forbidden =
            kube::Error::Api(kube::core::Status::failure("no", "").with_code(403).boxed());
        let mut attempt = 0;
        assert!(!retry_after_error(&forbidden, &mut attempt, &options, &stats, &pace).await);
    }
}
