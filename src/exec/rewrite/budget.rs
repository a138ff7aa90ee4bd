//! Memory of a rewrite, bounded in bytes rather than objects.
//!
//! Objects range from a few hundred bytes to about 1 MiB (Helm release Secrets, etcd's request limit is 1.5
//! MiB), so a count says nothing about memory: 500 objects per page plus 500 queued is half a kilobyte or a
//! gigabyte. Two bounds hold instead, as the census in [`crate::exec::etcd`] does for its pages:
//! - list pages adapt their `limit` so that a page holds about `page_bytes` ([`next_limit`]; the first page is
//!   small, since nothing is known yet). Sizes can jump from one page to the next (a namespace of small
//!   Secrets, then one of Helm releases), so the limit also never exceeds what keeps a page of the largest
//!   objects etcd stores ([`sizes::MAX_STORED_BYTES`]) under `8 × page_bytes` ([`max_limit`]). When a census has just
//!   recorded the stored sizes along the key order ([`crate::exec::sizes`]), each page is instead cut before it
//!   can reach more than `2 × page_bytes` ([`largest_page`]), and pages of small objects may hold `page_size`;
//! - objects between the lister and the end of their write (queued or being written) hold a share of a
//!   [`ByteBudget`] of `queue_bytes`: the lister waits for room before it queues one more.
//!
//! Sizes are the object's JSON length ([`json_size`]), counted without building the text.

use crate::exec::sizes;
use kube::api::DynamicObject;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The most objects a page may ask for without a census's sizes: `page_size`, but no more than
/// [`sizes::blind_page_limit`] (42 for the default 8 MiB).
pub(super) fn max_limit(page_size: u32, page_bytes: usize) -> u32 {
    u32::try_from(sizes::blind_page_limit(page_bytes))
        .unwrap_or(u32::MAX)
        .clamp(1, page_size.max(1))
}

/// The most JSON one page may bring when a census told the stored sizes ([`crate::exec::sizes`]): a page is
/// cut before it reaches more large objects than this holds.
pub(super) fn largest_page(page_bytes: usize) -> usize {
    page_bytes.saturating_mul(2)
}

/// What an object of `json_size` bytes takes from the budget: itself and, while it is written, the request
/// body serialized from it (its answer is another copy, for a shorter time).
pub(super) fn share_of(json_size: usize) -> usize {
    json_size.saturating_mul(2)
}

/// The budget is kept in units of this many bytes (a semaphore counts in `u32`).
const UNIT: usize = 1024;

/// Bytes shared by the objects queued and in flight. [`ByteBudget::take`] waits until the object fits; an
/// object larger than the whole budget takes all of it (it goes alone instead of never).
#[derive(Clone)]
pub(super) struct ByteBudget {
    units: Arc<Semaphore>,
    total: u32,
}

/// An object's share of the budget, given back when dropped (after its write).
pub(super) type Share = OwnedSemaphorePermit;

impl ByteBudget {
    pub(super) fn new(bytes: usize) -> Self {
        let total = u32::try_from(bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .clamp(1, 1 << 30);
        Self {
            units: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    fn units_for(&self, bytes: usize) -> u32 {
        u32::try_from(bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .clamp(1, self.total)
    }

    /// Waits until `bytes` fit, then holds them until the share is dropped.
    pub(super) async fn take(&self, bytes: usize) -> Share {
        self.units
            .clone()
            .acquire_many_owned(self.units_for(bytes))
            .await
            .expect("the budget's semaphore is never closed")
    }

    /// Bytes not held by anyone (in whole units).
    #[cfg(test)]
    fn available(&self) -> usize {
        self.units.available_permits() * UNIT
    }
}

/// The next list page size ([`sizes::next_page_limit`]) in the API's `u32`.
pub(super) fn next_limit(
    limit: u32,
    max_page: u32,
    page_bytes: usize,
    items: usize,
    target_bytes: usize,
) -> u32 {
    let next = sizes::next_page_limit(
        limit as usize,
        max_page as usize,
        page_bytes,
        items,
        target_bytes,
    );
    u32::try_from(next).unwrap_or(u32::MAX)
}

/// The first page's limit: small, as nothing is known about the sizes yet.
pub(super) fn first_limit(max_page: u32) -> u32 {
    max_page.clamp(1, 16)
}

/// The length of the object's JSON, counted without keeping the text.
pub(super) fn json_size(object: &DynamicObject) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Serializing a DynamicObject does not fail; an estimate of 0 would only make it count as one unit.
    let _ = serde_json::to_writer(&mut count, object);
    count.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MIB: usize = 1 << 20;

    #[test]
    fn pages_shrink_to_the_byte_target_and_grow_back_slowly() {
        // 16 Helm releases of 1 MiB against an 8 MiB target: the next page holds 8.
        assert_eq!(next_limit(16, 500, 16 * MIB, 16, 8 * MIB), 8);
        // Objects larger than the target: one per page.
        assert_eq!(next_limit(8, 500, 8 * 2 * MIB, 8, MIB), 1);
        // Small objects: at most doubling per page, up to the maximum.
        assert_eq!(next_limit(16, 500, 16 * 1000, 16, 8 * MIB), 32);
        assert_eq!(next_limit(400, 500, 400 * 1000, 400, 8 * MIB), 500);
        // An empty page says nothing about sizes.
        assert_eq!(next_limit(4, 500, 0, 0, 8 * MIB), 8);
        assert_eq!(first_limit(500), 16);
        assert_eq!(first_limit(5), 5);
        assert_eq!(first_limit(0), 1);
        // The hard ceiling: a page of the largest objects stays under 8 × page_bytes.
        assert_eq!(max_limit(500, 8 * MIB), 42);
        assert_eq!(max_limit(500, MIB), 5);
        assert_eq!(max_limit(5, 64 * MIB), 5);
        assert_eq!(max_limit(500, 1000), 1);
    }

    #[test]
    fn a_page_of_large_objects_stays_near_the_target() {
        // What the old fixed 500 meant for 1 MiB objects, and what the adaptive limit keeps per page.
        let (target, object) = (8 * MIB, MIB);
        let mut limit = first_limit(500);
        let mut largest = 0;
        for _ in 0..20 {
            largest = largest.max(limit as usize * object);
            limit = next_limit(limit, 500, limit as usize * object, limit as usize, target);
        }
        assert!(largest <= 16 * MIB, "{largest}");
        assert_eq!(limit as usize * object, target);
    }

    #[tokio::test]
    async fn the_budget_holds_back_the_object_that_does_not_fit() {
        let budget = ByteBudget::new(4 * MIB);
        let a = budget.take(3 * MIB).await;
        assert_eq!(budget.available(), MIB);
        // 2 MiB more does not fit until `a` is written.
        let waiting = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.take(2 * MIB).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        drop(a);
        let b = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("fits once the first is written")
            .expect("task");
        assert_eq!(budget.available(), 2 * MIB);
        drop(b);
        // Larger than the whole budget: takes all of it, alone.
        let huge = budget.take(64 * MIB).await;
        assert_eq!(budget.available(), 0);
        drop(huge);
        // Tiny objects still take one unit each.
        let tiny = budget.take(10).await;
        assert_eq!(budget.available(), 4 * MIB - UNIT);
        drop(tiny);
    }

    #[test]
    fn json_size_is_the_serialized_length() {
        let object: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "s", "namespace": "default"},
            "data": {"release": "x".repeat(100_000)}
        }))
        .expect("object");
        assert_eq!(
            json_size(&object),
            serde_json::to_vec(&object).expect("json").len()
        );
        assert!(json_size(&object) > 100_000);
    }
}
