//! What a rewrite did: the live counters the lister, the writers and the progress share, and the final report.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
    /// Requests retried after 5xx or a transport error.
    pub retries: u64,
    /// 429 answers (the server asked to slow down; each request was sent again after its `Retry-After`).
    pub throttled: u64,
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
    /// The largest list page, in bytes of JSON (bounded by `page_bytes`, see [`super::budget`]).
    pub largest_page_bytes: u64,
    /// The limit on writes in flight when the rewrite ended (see [`super::pace`]).
    pub final_concurrency: usize,
    /// How often more writes in flight only raised latency and the limit went back.
    pub saturations: u64,
    /// Successful requests per API server, in the rotation's order (see [`super::servers`]).
    pub servers: Vec<(String, u64)>,
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
             {} throttled, {} errors, {} failed resources in {:.1}s ({:.0} objects/s){}",
            self.rewritten,
            self.unchanged,
            self.gone + self.skipped_newer,
            self.gone,
            self.skipped_newer,
            self.conflicts,
            self.retries,
            self.throttled,
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
pub(super) struct Stats {
    pub(super) rewritten: AtomicU64,
    pub(super) unchanged: AtomicU64,
    pub(super) gone: AtomicU64,
    pub(super) skipped_newer: AtomicU64,
    pub(super) conflicts: AtomicU64,
    pub(super) retries: AtomicU64,
    pub(super) throttled: AtomicU64,
    pub(super) list_restarts: AtomicU64,
    pub(super) errors_total: AtomicU64,
    pub(super) expected: AtomicU64,
    pub(super) largest_page_bytes: AtomicU64,
    pub(super) errors: std::sync::Mutex<Vec<ObjectError>>,
    pub(super) failed_resources: std::sync::Mutex<Vec<ObjectError>>,
}

impl Stats {
    pub(super) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn saw_page(&self, bytes: usize) {
        self.largest_page_bytes
            .fetch_max(bytes as u64, Ordering::Relaxed);
    }

    pub(super) fn processed(&self) -> u64 {
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

    pub(super) fn error(&self, limit: usize, error: ObjectError) {
        Self::add(&self.errors_total);
        tracing::warn!(resource = %error.resource, object = %error.object, "rewrite failed: {}", error.error);
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if errors.len() < limit {
            errors.push(error);
        }
    }

    pub(super) fn report(&self, elapsed: Duration, interrupted: bool) -> RewriteReport {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RewriteReport {
            rewritten: get(&self.rewritten),
            unchanged: get(&self.unchanged),
            gone: get(&self.gone),
            skipped_newer: get(&self.skipped_newer),
            conflicts: get(&self.conflicts),
            retries: get(&self.retries),
            throttled: get(&self.throttled),
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
            largest_page_bytes: get(&self.largest_page_bytes),
            ..RewriteReport::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
