//! How large a resource's stored objects are along its key order, so a list page can be sized before it is fetched.
//!
//! The API asks for a page's `limit` in objects, and a page is read whole and then decoded, so a page's memory is
//! its objects' sizes, known only once it has arrived. Sizing the next page from the last one
//! ([`crate::exec::rewrite`]'s budget) fails where sizes jump: after pages of 2 KiB Secrets the limit has grown,
//! and the next namespace's Helm releases of 1 MiB then come 42 at a time (about 56 MiB of JSON, twice over
//! while it is decoded). The census already reads every stored value in the same key order the API lists in, so
//! it records the largest value of each run of [`SEGMENT`] keys here, and the lister caps each page by the
//! largest objects it can reach. With this known, pages of small objects no longer need the blind cap
//! ([`blind_page_limit`]) that assumes etcd's largest objects may come next.

/// The largest value etcd accepts by default (`--max-request-bytes`, 1.5 MiB): no stored object is larger.
pub const MAX_STORED_BYTES: usize = 3 << 19;

/// The most objects a page may hold when nothing is known of what comes next: a page of etcd's largest values
/// stays under `8 × page_bytes` (42 for 8 MiB). Used before any census (the census itself; a rewrite without one).
pub fn blind_page_limit(page_bytes: usize) -> usize {
    (page_bytes.saturating_mul(8) / MAX_STORED_BYTES).max(1)
}

/// The next page's limit from the last page (`page_bytes` over `items` objects, asked with `limit`): as many
/// objects as fit `target_bytes` at the last page's average size, at most doubling per page, between 1 and
/// `max_page`. An empty page says nothing of sizes: it doubles. The census's pages and the rewrite's lists both
/// adapt by it.
pub fn next_page_limit(
    limit: usize,
    max_page: usize,
    page_bytes: usize,
    items: usize,
    target_bytes: usize,
) -> usize {
    let max_page = max_page.max(1);
    if items == 0 || page_bytes == 0 {
        return limit.saturating_mul(2).clamp(1, max_page);
    }
    let average = (page_bytes / items).max(1);
    (target_bytes / average)
        .min(limit.saturating_mul(2))
        .clamp(1, max_page)
}

/// Keys per segment: a 100 000-object resource costs 4 KB.
pub const SEGMENT: usize = 100;

/// Segments either side of a page's reach that count too: objects created or deleted since the census shift
/// the listing's positions by a few.
const SLACK_SEGMENTS: usize = 1;

/// The largest stored value of each run of [`SEGMENT`] consecutive keys, in key order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredSizes {
    largest: Vec<u32>,
}

impl StoredSizes {
    /// The object at `index` (0-based, in key order) is stored in `bytes`.
    pub fn record(&mut self, index: usize, bytes: usize) {
        let segment = index / SEGMENT;
        if self.largest.len() <= segment {
            self.largest.resize(segment + 1, 0);
        }
        let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
        self.largest[segment] = self.largest[segment].max(bytes);
    }

    /// The largest stored value among the `count` objects from `position` on, with [`SLACK_SEGMENTS`] either
    /// side. Past the last segment (objects created since): the largest of all.
    pub fn largest_near(&self, position: usize, count: usize) -> usize {
        let first = (position / SEGMENT).saturating_sub(SLACK_SEGMENTS);
        let last = (position.saturating_add(count) / SEGMENT).saturating_add(SLACK_SEGMENTS);
        let near = self.largest.iter().skip(first).take(last - first + 1).max();
        let largest = match near {
            Some(&n) if last < self.largest.len() => n,
            _ => self.largest.iter().copied().max().unwrap_or(0),
        };
        largest as usize
    }

    /// The most objects a page starting at `position` may ask for, at most `limit`, so that even if all of them
    /// are the largest it can reach, the page stays under `max_page_bytes` of JSON.
    pub fn page_limit(&self, position: usize, limit: u32, max_page_bytes: usize) -> u32 {
        let mut limit = limit.max(1);
        loop {
            let largest = json_estimate(self.largest_near(position, limit as usize));
            let fit = u32::try_from(max_page_bytes / largest)
                .unwrap_or(u32::MAX)
                .max(1);
            if fit >= limit {
                return limit;
            }
            // Fewer objects reach fewer segments: the largest can only fall, so this ends.
            limit = fit;
        }
    }
}

/// An object's JSON from its stored size: Secret data is base64 in JSON (4/3 of the bytes etcd holds), plus the
/// envelope. Other kinds hold text, which this overestimates.
fn json_estimate(stored: usize) -> usize {
    (stored / 3).saturating_mul(4).saturating_add(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    /// 10 000 small objects, then 2 000 of 1 MiB, then 10 000 small again.
    fn mixed() -> StoredSizes {
        let mut sizes = StoredSizes::default();
        for i in 0..22_000 {
            let large = (10_000..12_000).contains(&i);
            sizes.record(i, if large { MIB } else { 2048 });
        }
        sizes
    }

    #[test]
    fn pages_of_small_objects_keep_their_limit() {
        let sizes = mixed();
        assert_eq!(sizes.page_limit(0, 500, 16 * MIB), 500);
        assert_eq!(sizes.page_limit(15_000, 500, 16 * MIB), 500);
    }

    #[test]
    fn a_page_that_reaches_large_objects_is_cut_before_it_is_fetched() {
        let sizes = mixed();
        // 9 700 + 500 reaches the first 1 MiB objects: only what fits if all were 1 MiB.
        let limit = sizes.page_limit(9_700, 500, 16 * MIB);
        assert_eq!(limit, 11);
        assert!(limit as usize * json_estimate(MIB) <= 16 * MIB);
        // Inside the large run.
        assert_eq!(sizes.page_limit(11_000, 500, 16 * MIB), 11);
        // Just before the run (within the slack) it is still cut.
        assert_eq!(sizes.page_limit(9_950, 8, 16 * MIB), 8);
        assert_eq!(sizes.page_limit(9_870, 40, 16 * MIB), 11);
        // Two segments away, it is not.
        assert_eq!(sizes.page_limit(9_750, 40, 16 * MIB), 40);
    }

    #[test]
    fn past_the_census_the_largest_of_all_counts() {
        let sizes = mixed();
        assert_eq!(sizes.largest_near(30_000, 10), MIB);
        assert_eq!(StoredSizes::default().largest_near(0, 500), 0);
        assert_eq!(StoredSizes::default().page_limit(0, 500, 16 * MIB), 500);
    }

    #[test]
    fn without_sizes_a_page_of_the_largest_values_stays_under_eight_targets() {
        assert_eq!(blind_page_limit(8 * MIB), 42);
        assert!(blind_page_limit(8 * MIB) * MAX_STORED_BYTES <= 64 * MIB);
        assert_eq!(blind_page_limit(MIB), 5);
        assert_eq!(blind_page_limit(1000), 1);
    }

    #[test]
    fn an_object_larger_than_a_page_goes_alone() {
        let mut sizes = StoredSizes::default();
        sizes.record(0, 40 * MIB);
        assert_eq!(sizes.page_limit(0, 500, 16 * MIB), 1);
        assert_eq!(sizes.page_limit(0, 0, 16 * MIB), 1);
    }
}
