//! Which resources a rewrite covers: an EncryptionConfiguration's `resources:` strings resolved through API
//! discovery to served resources that can be listed and updated.

use crate::exec::etcd::EtcdResource;
use crate::exec::sizes::StoredSizes;
use kube::api::ApiResource;
use kube::discovery::{self, ApiCapabilities, Scope, verbs};
use std::collections::HashSet;
use std::sync::Arc;

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
    /// Stored sizes from a census taken just before, if any: list pages are then sized before they are fetched.
    pub sizes: Option<Arc<StoredSizes>>,
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
            sizes: None,
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
    let mut resolution = Resolution::default();
    let mut seen = HashSet::new();
    for group in groups_to_discover(client, &selectors).await? {
        let resources = match discovery::group(client, &group).await {
            Ok(api_group) => api_group.recommended_resources(),
            Err(kube::Error::Discovery(_)) => Vec::new(),
            Err(source) => return Err(RewriteError::Discovery { group, source }),
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
            let target = Target {
                namespaced: caps.scope == Scope::Namespaced,
                api,
                sizes: None,
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
    resolution.unusable.extend(not_served(&selectors, &seen));
    resolution.targets.sort_by_key(Target::name);
    resolution
        .unusable
        .sort_by(|a, b| a.resource.cmp(&b.resource));
    Ok(resolution)
}

/// The API groups the selectors reach: every served group for `*`, else each one named, once.
async fn groups_to_discover(
    client: &kube::Client,
    selectors: &[ResourceSelector],
) -> Result<Vec<String>, RewriteError> {
    if selectors.contains(&ResourceSelector::All) {
        let all = kube::discovery::Discovery::new(client.clone())
            .run()
            .await
            .map_err(|source| RewriteError::Discovery {
                group: "*".into(),
                source,
            })?;
        return Ok(all.groups().map(|g| g.name().to_string()).collect());
    }
    let mut groups: Vec<String> = Vec::new();
    for selector in selectors {
        let group = match selector {
            ResourceSelector::Exact { group, .. } | ResourceSelector::Group(group) => group,
            ResourceSelector::All => continue,
        };
        if !groups.contains(group) {
            groups.push(group.clone());
        }
    }
    Ok(groups)
}

/// The resources named exactly that discovery did not find (`found`: group and plural of each it did).
fn not_served(selectors: &[ResourceSelector], found: &HashSet<(String, String)>) -> Vec<Unusable> {
    let mut unusable = Vec::new();
    for selector in selectors {
        if let ResourceSelector::Exact { group, resource } = selector
            && !found.contains(&(group.clone(), resource.clone()))
        {
            let name = if group.is_empty() {
                resource.clone()
            } else {
                format!("{resource}.{group}")
            };
            unusable.push(Unusable {
                resource: name,
                reason: "not served by the API server".into(),
                from_wildcard: false,
            });
        }
    }
    unusable
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
            sizes: None,
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
