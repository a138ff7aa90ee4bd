//! The writers: PUT one object back with its `resourceVersion` as precondition, with the conflict, retry and
//! skip rules every rewrite shares.

use super::RewriteOptions;
use super::report::{ObjectError, Stats};
use super::targets::Target;
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
    client: kube::Client,
    pub(super) target: Target,
    pub(super) options: RewriteOptions,
    stats: Arc<Stats>,
}

impl Writer {
    pub(super) fn new(
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

    pub(super) async fn rewrite_listed(&self, object: DynamicObject) {
        let label = display_name(&object);
        let outcome = self.put_back(object).await;
        self.record(label, outcome);
    }

    pub(super) fn record(&self, object: String, outcome: Outcome) {
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
    pub(super) async fn rewrite_named(&self, namespace: Option<&str>, name: &str) {
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
}
