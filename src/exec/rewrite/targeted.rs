//! The targeted rewrite: only the objects a census found off the write key, by their etcd keys.
//!
//! After a rotation every object is stale, but after an interrupted run, a failover to another API server or
//! a census that found leftovers, only some are; writing back the rest would cost the servers a request each
//! for nothing. The census's keys say which objects to write. They are found in one of two ways
//! ([`Lookup`]): a GET per key (cheapest when few are stale) or a listing of the resource that skips every
//! object not among them (one request per object plus the pages instead of two per object, cheaper once a
//! fair share is stale). Either way a write is the same conditional PUT as the full rewrite's ([`super::writer`]).

use super::report::{ObjectError, RewriteReport};
use super::{Pass, ResourceRun, RewriteOptions, Servers, Target};
use futures::StreamExt;
use kube::api::DynamicObject;
use std::collections::HashSet;
use std::sync::Arc;

/// The objects of one resource a census found off the write key, by etcd key.
pub(super) struct Wanted {
    /// The resource's etcd key prefix, ending in `/`.
    key_prefix: String,
    pub(super) keys: HashSet<String>,
}

impl Wanted {
    pub(super) fn wants(&self, object: &DynamicObject) -> bool {
        let meta = &object.metadata;
        let name = meta.name.as_deref().unwrap_or_default();
        let key = match meta.namespace.as_deref() {
            Some(namespace) => format!("{}{namespace}/{name}", self.key_prefix),
            None => format!("{}{name}", self.key_prefix),
        };
        self.keys.contains(&key)
    }
}

/// How a targeted rewrite finds the objects stored at the census's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// A GET per key, then its PUT: two requests per object, nothing read that is not stale.
    EachKey,
    /// List each resource and PUT only the objects at the keys: one request per object plus the pages.
    Listing,
}

impl Lookup {
    /// [`Lookup::Listing`] when a quarter or more of the `total` objects counted are among the `off_target`
    /// stale ones: a page of 500 costs the server about what a few dozen GETs do. A GET per object wins when
    /// only a few are stale, above all among large objects.
    pub fn for_census(off_target: u64, total: u64) -> Self {
        if off_target > 0 && off_target.saturating_mul(4) >= total {
            Self::Listing
        } else {
            Self::EachKey
        }
    }
}

/// Rewrite only the objects stored at `etcd_keys` (from a census: keys not on the write key), through one
/// API server, a GET and a PUT each.
pub async fn rewrite_keys(
    client: &kube::Client,
    targets: &[Target],
    etcd_prefix: &str,
    etcd_keys: &[String],
    options: &RewriteOptions,
) -> RewriteReport {
    let servers = Arc::new(Servers::one(client));
    rewrite_keys_through(
        &servers,
        targets,
        etcd_prefix,
        etcd_keys,
        Lookup::EachKey,
        options,
    )
    .await
}

/// Rewrite only the objects stored at `etcd_keys`, one resource after another, through all of `servers`.
///
/// Each key goes to the target whose etcd prefix it starts with (the longest); a key that matches none is an
/// error in the report (it would otherwise stay on an old key unnoticed). A key whose object is gone by the
/// time it is read or listed counts as gone.
pub async fn rewrite_keys_through(
    servers: &Arc<Servers>,
    targets: &[Target],
    etcd_prefix: &str,
    etcd_keys: &[String],
    lookup: Lookup,
    options: &RewriteOptions,
) -> RewriteReport {
    let pass = Pass::begin(options, etcd_keys.len() as u64);
    let (wanted, strays) = wanted_by_target(targets, etcd_prefix, etcd_keys);
    for key in strays {
        pass.stats.error(
            options.max_reported_errors,
            ObjectError {
                resource: String::new(),
                object: key.clone(),
                error: "etcd key belongs to no resource being rewritten".into(),
            },
        );
    }
    for (target, wanted) in targets.iter().zip(&wanted) {
        if options.cancel.is_cancelled() {
            break;
        }
        if wanted.keys.is_empty() {
            continue;
        }
        let run = pass.resource(servers, target, options, Some(wanted));
        match lookup {
            Lookup::Listing => run.rewrite().await,
            Lookup::EachKey => run.rewrite_each_key().await,
        }
    }
    pass.end(servers, options, &format!("targeted rewrite ({lookup:?})"))
}

impl ResourceRun<'_> {
    /// GET and PUT each wanted key, as many at once as the pace allows.
    async fn rewrite_each_key(&self) {
        let Some(wanted) = self.wanted else { return };
        let writer = &self.writer();
        futures::stream::iter(&wanted.keys)
            .take_while(|_| std::future::ready(!self.options.cancel.is_cancelled()))
            .for_each_concurrent(self.options.concurrency.ceiling(), |key| async move {
                let rest = key.strip_prefix(wanted.key_prefix.as_str()).unwrap_or(key);
                match split_object_path(self.target.namespaced, rest) {
                    Some((namespace, name)) => writer.rewrite_named(namespace, name).await,
                    None => self.stats.error(
                        self.options.max_reported_errors,
                        ObjectError {
                            resource: self.target.name(),
                            object: key.clone(),
                            error: "cannot tell namespace and name from the etcd key".into(),
                        },
                    ),
                }
            })
            .await;
    }
}

/// Each target's share of `etcd_keys` (the longest matching prefix wins), and the keys no target holds.
fn wanted_by_target<'k>(
    targets: &[Target],
    etcd_prefix: &str,
    etcd_keys: &'k [String],
) -> (Vec<Wanted>, Vec<&'k String>) {
    let mut wanted: Vec<Wanted> = targets
        .iter()
        .map(|t| Wanted {
            key_prefix: t.etcd(etcd_prefix).key_prefix,
            keys: HashSet::new(),
        })
        .collect();
    let mut strays = Vec::new();
    for key in etcd_keys {
        let owner = wanted
            .iter_mut()
            .filter(|w| key.starts_with(w.key_prefix.as_str()))
            .max_by_key(|w| w.key_prefix.len());
        match owner {
            Some(w) => {
                w.keys.insert(key.clone());
            }
            None => strays.push(key),
        }
    }
    (wanted, strays)
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
    fn listing_is_preferred_once_a_quarter_is_stale() {
        let listing = |off, total| Lookup::for_census(off, total) == Lookup::Listing;
        assert!(!listing(0, 0));
        assert!(!listing(0, 100));
        assert!(!listing(24, 100));
        assert!(listing(25, 100));
        assert!(listing(100, 100));
        assert!(listing(1, 1));
        assert!(!listing(1, 10_000));
    }

    fn object(namespace: Option<&str>, name: &str) -> DynamicObject {
        let mut object = DynamicObject::new(name, &Target::secrets().api);
        object.metadata.namespace = namespace.map(str::to_string);
        object
    }

    #[test]
    fn census_keys_go_to_the_longest_matching_target_and_strays_are_kept() {
        let targets = vec![Target::secrets(), Target::configmaps()];
        let keys: Vec<String> = [
            "/registry/secrets/default/a",
            "/registry/configmaps/kube-system/b",
            "/registry/secrets/x/c",
            "/registry/pods/default/d",
        ]
        .map(String::from)
        .to_vec();
        let (wanted, strays) = wanted_by_target(&targets, "/registry", &keys);
        assert_eq!(wanted[0].keys.len(), 2);
        assert_eq!(wanted[1].keys.len(), 1);
        assert_eq!(strays, vec![&keys[3]]);
        assert!(wanted[0].wants(&object(Some("default"), "a")));
        assert!(wanted[0].wants(&object(Some("x"), "c")));
        assert!(!wanted[0].wants(&object(Some("x"), "a")));
        assert!(!wanted[0].wants(&object(Some("default"), "b")));
        assert!(wanted[1].wants(&object(Some("kube-system"), "b")));
    }
}
