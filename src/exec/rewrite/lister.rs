//! The lister side of one resource's rewrite: it pages through the resource and hands each object to the writers.
//!
//! Three things make this more than a loop over pages. Pages are sized in bytes, not objects (a Helm release
//! Secret is up to 1 MiB), so the page limit adapts to what the last page weighed ([`budget`]). Each handed-out
//! object takes its share of a byte budget first, so the lister waits instead of buffering. And a listing outlives
//! an expired continue token (410, etcd compacted the list's revision): upstream hands back a token that continues
//! after the same key at the latest revision, and without one the listing starts again from the beginning; either
//! way a compact set of object ids (16 bytes each) skips what was already handed out, and a listing that keeps
//! restarting without handing out anything new gives up.

use super::budget::{self, ByteBudget};
use super::report::{ObjectError, Stats};
use super::writer::{paced, retry_after_error};
use super::{Queued, ResourceRun, RewriteOptions};
use crate::exec::sizes::StoredSizes;
use kube::api::{Api, DynamicObject, ListParams, ObjectList, TypeMeta};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::mpsc::Sender;

/// Give up on a resource after this many expired-token restarts in a row that listed nothing new.
const MAX_STALLED_RESTARTS: u32 = 5;

/// Where the listing of one resource stands.
struct Cursor {
    /// Where the next page starts (`None` with `first_page`: at the beginning).
    token: Option<String>,
    /// The next page is the first of a listing from the beginning.
    first_page: bool,
    /// A 410 made the listing start again: its first page no longer tells how many objects there are.
    restarted: bool,
    stalled_restarts: u32,
    handed_out_at_last_restart: usize,
    /// Transient failures in a row of the current page request.
    attempt: u32,
    limit: u32,
    max_limit: u32,
    /// Objects listed since the listing (last) started from the beginning: where the next page starts in the
    /// key order a census recorded `sizes` in.
    position: usize,
    sizes: Option<Arc<StoredSizes>>,
}

/// What one page request came to.
enum Fetched {
    Page(ObjectList<DynamicObject>),
    /// Ask again (after a restart or a retryable failure).
    Again,
    /// Cancelled, or the resource failed (recorded).
    Stop,
}

impl Cursor {
    /// With `sizes` known, a page may hold up to `page_size` objects, as each page is cut before it reaches
    /// large ones; without, never more than a page of the largest objects etcd stores allows.
    fn new(options: &RewriteOptions, sizes: Option<Arc<StoredSizes>>) -> Self {
        let max_limit = match sizes {
            Some(_) => options.page_size.max(1),
            None => budget::max_limit(options.page_size, options.page_bytes),
        };
        let mut cursor = Self {
            token: None,
            first_page: true,
            restarted: false,
            stalled_restarts: 0,
            handed_out_at_last_restart: 0,
            attempt: 0,
            limit: budget::first_limit(max_limit),
            max_limit,
            position: 0,
            sizes,
        };
        cursor.cut_to_sizes(options.page_bytes);
        cursor
    }

    /// Lower the limit so that the next page stays under [`budget::largest_page`] even if every object it can
    /// reach is the largest the census saw near there.
    fn cut_to_sizes(&mut self, page_bytes: usize) {
        if let Some(sizes) = &self.sizes {
            let most = budget::largest_page(page_bytes);
            self.limit = sizes.page_limit(self.position, self.limit, most);
        }
    }

    fn params(&self) -> ListParams {
        let params = ListParams::default().limit(self.limit);
        match &self.token {
            Some(token) => params.continue_token(token),
            None => params,
        }
    }

    /// After a 410 with `handed_out` objects handed out so far: go on from upstream's fresh token, or from the
    /// beginning. `false` once restarts in a row have handed out nothing new too often.
    fn restart(&mut self, fresh_token: Option<String>, handed_out: usize) -> bool {
        if handed_out == self.handed_out_at_last_restart {
            self.stalled_restarts += 1;
        } else {
            self.stalled_restarts = 0;
        }
        if self.stalled_restarts > MAX_STALLED_RESTARTS {
            return false;
        }
        self.handed_out_at_last_restart = handed_out;
        if fresh_token.is_none() {
            self.position = 0;
        }
        self.first_page = fresh_token.is_none();
        self.token = fresh_token;
        self.restarted = true;
        true
    }

    /// After a page of `sizes` (bytes per object): where the next starts, and how many objects it may hold.
    fn advance(&mut self, page: &ObjectList<DynamicObject>, sizes: &[usize], page_bytes: usize) {
        self.first_page = false;
        self.token = page.metadata.continue_.clone().filter(|t| !t.is_empty());
        self.limit = budget::next_limit(
            self.limit,
            self.max_limit,
            sizes.iter().sum(),
            sizes.len(),
            page_bytes,
        );
        self.position += page.items.len();
        self.cut_to_sizes(page_bytes);
    }
}

impl ResourceRun<'_> {
    /// Page through the resource and queue every object not yet handed out (and wanted), starting again on a 410.
    pub(super) async fn list_into(&self, sender: Sender<Queued>, budget: &ByteBudget) {
        let mut cursor = Cursor::new(self.options, self.target.sizes.clone());
        let mut handed_out: HashSet<u128> = HashSet::new();
        let mut matched = 0usize;
        loop {
            let page = match self.fetch(&mut cursor, handed_out.len()).await {
                Fetched::Page(page) => page,
                Fetched::Again => continue,
                Fetched::Stop => return,
            };
            if cursor.first_page && !cursor.restarted && self.wanted.is_none() {
                let remaining = page.metadata.remaining_item_count.unwrap_or(0).max(0) as u64;
                (self.stats.expected)
                    .fetch_add(page.items.len() as u64 + remaining, Ordering::Relaxed);
            }
            let sizes: Vec<usize> = page.items.iter().map(budget::json_size).collect();
            self.stats.saw_page(sizes.iter().sum());
            cursor.advance(&page, &sizes, self.options.page_bytes);
            let queued = self.hand_out(page.items, sizes, &mut handed_out, &sender, budget);
            match queued.await {
                Some(count) => matched += count,
                None => return,
            }
            if cursor.token.is_none() {
                if let Some(wanted) = self.wanted {
                    // Stored when the census counted them, no longer listed: deleted since.
                    let gone = wanted.keys.len().saturating_sub(matched) as u64;
                    self.stats.gone.fetch_add(gone, Ordering::Relaxed);
                }
                return;
            }
        }
    }

    /// One page request, with a 410 turned into a restart and a retryable failure into a wait.
    async fn fetch(&self, cursor: &mut Cursor, handed_out: usize) -> Fetched {
        let cancel = &self.options.cancel;
        if cancel.is_cancelled() {
            return Fetched::Stop;
        }
        let api: Api<DynamicObject> =
            Api::all_with(self.servers.lister().clone(), &self.target.api);
        let params = cursor.params();
        let page = tokio::select! {
            page = paced(self.pace, api.list(&params)) => page,
            () = cancel.cancelled() => return Fetched::Stop,
        };
        let error = match page {
            Ok(page) => {
                cursor.attempt = 0;
                return Fetched::Page(page);
            }
            Err(error) => error,
        };
        if let kube::Error::Api(status) = &error
            && status.code == 410
        {
            let fresh = (status.metadata.as_ref())
                .and_then(|m| m.continue_.clone())
                .filter(|t| !t.is_empty());
            let resumed = fresh.is_some();
            if cursor.restart(fresh, handed_out) {
                Stats::add(&self.stats.list_restarts);
                tracing::info!(resource = %self.target.name(), resumed, "continue token expired, listing again");
                return Fetched::Again;
            }
        }
        let options = self.options;
        if retry_after_error(&error, &mut cursor.attempt, options, self.stats, self.pace).await {
            return Fetched::Again;
        }
        self.stats
            .failed_resources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ObjectError {
                resource: self.target.name(),
                object: String::new(),
                error: format!("list failed: {error}"),
            });
        Fetched::Stop
    }

    /// Queue the page's objects not yet handed out (and wanted), each once its bytes fit the budget. The number
    /// queued, or `None` when the run was cancelled or the writers stopped.
    async fn hand_out(
        &self,
        items: Vec<DynamicObject>,
        sizes: Vec<usize>,
        handed_out: &mut HashSet<u128>,
        sender: &Sender<Queued>,
        budget: &ByteBudget,
    ) -> Option<usize> {
        let mut queued = 0;
        for (mut object, size) in items.into_iter().zip(sizes) {
            if self.wanted.is_some_and(|w| !w.wants(&object))
                || !handed_out.insert(object_id(&object))
            {
                continue;
            }
            queued += 1;
            object.types = Some(TypeMeta {
                api_version: self.target.api.api_version.clone(),
                kind: self.target.api.kind.clone(),
            });
            let share = tokio::select! {
                share = budget.take(budget::share_of(size)) => share,
                () = self.options.cancel.cancelled() => return None,
            };
            if sender.send((object, share)).await.is_err() {
                return None; // writers stopped (cancelled)
            }
        }
        Some(queued)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor() -> Cursor {
        Cursor::new(&RewriteOptions::default(), None)
    }

    fn page(token: &str, objects: usize) -> ObjectList<DynamicObject> {
        serde_json::from_value(serde_json::json!({
            "metadata": {"continue": token},
            "items": (0..objects).map(|i| serde_json::json!({
                "metadata": {"name": format!("o{i}"), "namespace": "n"}
            })).collect::<Vec<_>>(),
        }))
        .expect("a list")
    }

    #[test]
    fn a_page_moves_the_cursor_on_and_the_last_page_ends_it() {
        let mut c = cursor();
        assert!(c.first_page && c.token.is_none());
        c.advance(&page("next", 2), &[10, 10], 1 << 20);
        assert!(!c.first_page);
        assert_eq!(c.token.as_deref(), Some("next"));
        assert_eq!(c.params().continue_token.as_deref(), Some("next"));
        c.advance(&page("", 1), &[10], 1 << 20);
        assert_eq!(c.token, None, "an empty continue token is the end");
    }

    /// Pages a cursor through 5 000 Secrets of 2 KiB followed by 200 of 1 MiB (1.33 MiB of JSON each):
    /// the largest page in JSON bytes, and the most objects in one page.
    fn walk_small_then_large(sizes: Option<Arc<StoredSizes>>) -> (usize, u32) {
        const MIB: usize = 1 << 20;
        let options = RewriteOptions::default();
        let json = |i: usize| if i < 5_000 { 2_800 } else { MIB * 4 / 3 };
        let mut c = Cursor::new(&options, sizes);
        let (mut at, mut largest_page, mut most) = (0, 0, 0);
        while at < 5_200 {
            let n = (c.limit as usize).min(5_200 - at);
            let bytes: Vec<usize> = (at..at + n).map(json).collect();
            largest_page = largest_page.max(bytes.iter().sum());
            most = most.max(c.limit);
            c.advance(&page("more", n), &bytes, options.page_bytes);
            at += n;
        }
        (largest_page, most)
    }

    #[test]
    fn with_the_census_sizes_a_page_is_cut_before_the_large_objects() {
        let mut sizes = StoredSizes::default();
        for i in 0..5_200 {
            sizes.record(i, if i < 5_000 { 2_100 } else { 1 << 20 });
        }
        let (largest, most) = walk_small_then_large(Some(Arc::new(sizes)));
        assert!(largest <= 16 << 20, "{largest} bytes in one page");
        assert_eq!(most, 500, "pages of small objects grow to page_size");
        // Without the sizes, the blind cap lets one page bring 42 of them (56 MiB).
        let (largest, most) = walk_small_then_large(None);
        assert!(largest > 50 << 20, "{largest}");
        assert_eq!(most, 42);
    }

    #[test]
    fn an_expired_token_goes_on_from_upstreams_token_or_from_the_beginning() {
        let mut c = cursor();
        c.advance(&page("t1", 1), &[10], 1 << 20);
        assert!(c.restart(Some("fresh".into()), 1));
        assert_eq!(c.token.as_deref(), Some("fresh"));
        assert!(
            !c.first_page,
            "continuing after the same key is not a first page"
        );
        assert!(c.restart(None, 2));
        assert_eq!(c.token, None);
        assert!(
            c.first_page && c.restarted,
            "from the beginning, but the total is no longer known"
        );
    }

    #[test]
    fn restarts_that_hand_out_nothing_new_give_up_and_progress_resets_the_count() {
        let mut c = cursor();
        for _ in 0..MAX_STALLED_RESTARTS {
            assert!(c.restart(None, 0));
        }
        assert!(!c.restart(None, 0), "one stalled restart too many");
        let mut c = cursor();
        for handed_out in 0..(3 * MAX_STALLED_RESTARTS as usize) {
            assert!(c.restart(None, handed_out), "each restart handed out more");
        }
    }

    #[test]
    fn an_object_id_is_its_uid_or_else_its_name() {
        let named = |ns: &str, name: &str, uid: Option<&str>| -> DynamicObject {
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": ns, "name": name, "uid": uid}
            }))
            .expect("an object")
        };
        assert_eq!(
            object_id(&named("a", "b", Some("u"))),
            object_id(&named("c", "d", Some("u")))
        );
        assert_ne!(
            object_id(&named("a", "b", None)),
            object_id(&named("a", "c", None))
        );
    }
}
