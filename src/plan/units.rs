//! The planner's model of an EncryptionConfiguration: per resource *rule*, an ordered list of *units*.
//!
//! A unit is the smallest thing that can write or read stored data: `identity` (plaintext), one key of an
//! aescbc/aesgcm/secretbox provider, or one kms provider. Flattening `[aescbc{keys: [a, b]}, identity]` gives
//! `[aescbc:a, aescbc:b, identity]`; the first unit writes, every unit reads (kube-apiserver's prefix dispatch,
//! reference k8s-encryption.md §1.1).

use crate::config::encryption::{
    API_VERSION, EncryptionConfiguration, IdentityConfiguration, KIND, Key, KeysConfiguration,
    KmsConfiguration, ProviderConfiguration, ResourceConfiguration,
};
use crate::secret::SecretString;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The providers that hold a list of named keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyProvider {
    Aescbc,
    Aesgcm,
    Secretbox,
}

impl KeyProvider {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyProvider::Aescbc => "aescbc",
            KeyProvider::Aesgcm => "aesgcm",
            KeyProvider::Secretbox => "secretbox",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "aescbc" => Some(KeyProvider::Aescbc),
            "aesgcm" => Some(KeyProvider::Aesgcm),
            "secretbox" => Some(KeyProvider::Secretbox),
            _ => None,
        }
    }
}

/// What stored data says about the unit that wrote it (its prefix), without key material.
///
/// Labels (used by censuses): `identity`, `aescbc:<name>`, `aesgcm:<name>`, `secretbox:<name>`,
/// `kms:<v1|v2>:<name>` (a census may append `:<key id>` for kms v2; it is ignored here).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum UnitId {
    Identity,
    Key { provider: KeyProvider, name: String },
    Kms { api_version: String, name: String },
}

impl UnitId {
    pub fn label(&self) -> String {
        self.to_string()
    }

    /// Parses a census label; `None` for anything that names no known unit.
    pub fn parse_label(label: &str) -> Option<UnitId> {
        if label == "identity" {
            return Some(UnitId::Identity);
        }
        let (kind, rest) = label.split_once(':')?;
        if kind == "kms" {
            let (version, rest) = rest.split_once(':')?;
            if version != "v1" && version != "v2" {
                return None;
            }
            // kms names cannot contain ':' (validation), so anything after the next ':' is a key id.
            let name = rest.split(':').next().unwrap_or_default();
            if name.is_empty() {
                return None;
            }
            return Some(UnitId::Kms {
                api_version: version.to_string(),
                name: name.to_string(),
            });
        }
        let provider = KeyProvider::parse(kind)?;
        if rest.is_empty() {
            return None;
        }
        Some(UnitId::Key {
            provider,
            name: rest.to_string(),
        })
    }

    pub fn is_identity(&self) -> bool {
        matches!(self, UnitId::Identity)
    }
}

impl fmt::Display for UnitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnitId::Identity => f.write_str("identity"),
            UnitId::Key { provider, name } => write!(f, "{}:{name}", provider.as_str()),
            UnitId::Kms { api_version, name } => write!(f, "kms:{api_version}:{name}"),
        }
    }
}

/// One unit with its material (key secret or kms settings), as it appears in a config.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Unit {
    Identity,
    Key {
        provider: KeyProvider,
        name: String,
        secret: SecretString,
    },
    Kms(KmsConfiguration),
}

impl Unit {
    pub fn id(&self) -> UnitId {
        match self {
            Unit::Identity => UnitId::Identity,
            Unit::Key { provider, name, .. } => UnitId::Key {
                provider: *provider,
                name: name.clone(),
            },
            Unit::Kms(k) => UnitId::Kms {
                api_version: kms_version(k).to_string(),
                name: k.name.clone(),
            },
        }
    }

    /// Same id but different material: the same name would mean two different keys.
    pub fn conflicts_with(&self, other: &Unit) -> bool {
        if self.id() != other.id() {
            return false;
        }
        match (self, other) {
            (Unit::Key { secret: a, .. }, Unit::Key { secret: b, .. }) => a != b,
            (Unit::Kms(a), Unit::Kms(b)) => a.endpoint != b.endpoint,
            _ => false,
        }
    }

    /// Units worth archiving when retired (they hold or name key material).
    pub fn is_key(&self) -> bool {
        !matches!(self, Unit::Identity)
    }
}

fn kms_version(k: &KmsConfiguration) -> &str {
    k.api_version.as_deref().unwrap_or("v1")
}

/// A resource rule of a config, ordered from most to least specific (the derived `Ord`):
/// exact `resource.group` → `*.group` → `*.*`. Entries must be rendered in this order (an earlier wildcard
/// masks a later specific entry, reference §3.5).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum RuleKey {
    Exact { group: String, resource: String },
    Group(String),
    All,
}

impl RuleKey {
    /// `schema.ParseGroupResource`: split at the first `.` (`secrets` and `secrets.` are core).
    pub fn parse(s: &str) -> RuleKey {
        match s.split_once('.') {
            None => RuleKey::Exact {
                group: String::new(),
                resource: s.to_string(),
            },
            Some(("*", "*")) => RuleKey::All,
            Some(("*", group)) => RuleKey::Group(group.to_string()),
            Some((resource, group)) => RuleKey::Exact {
                group: group.to_string(),
                resource: resource.to_string(),
            },
        }
    }

    /// Rules consulted for this key, most specific first (kube-apiserver's lookup order).
    pub fn lookup_chain(&self) -> Vec<RuleKey> {
        match self {
            RuleKey::Exact { group, .. } => {
                vec![self.clone(), RuleKey::Group(group.clone()), RuleKey::All]
            }
            RuleKey::Group(_) => vec![self.clone(), RuleKey::All],
            RuleKey::All => vec![RuleKey::All],
        }
    }

    /// Whether everything `other` matches is also matched by `self`.
    pub fn covers(&self, other: &RuleKey) -> bool {
        match (self, other) {
            (RuleKey::All, _) => true,
            (RuleKey::Group(g), RuleKey::Group(h)) => g == h,
            (RuleKey::Group(g), RuleKey::Exact { group, .. }) => g == group,
            (a, b) => a == b,
        }
    }

    fn level(&self) -> u8 {
        match self {
            RuleKey::Exact { .. } => 0,
            RuleKey::Group(_) => 1,
            RuleKey::All => 2,
        }
    }
}

impl fmt::Display for RuleKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleKey::Exact { group, resource } if group.is_empty() => f.write_str(resource),
            RuleKey::Exact { group, resource } => write!(f, "{resource}.{group}"),
            RuleKey::Group(group) => write!(f, "*.{group}"),
            RuleKey::All => f.write_str("*.*"),
        }
    }
}

/// A config flattened: rule → ordered units.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rules(pub BTreeMap<RuleKey, Vec<Unit>>);

impl Rules {
    pub fn from_config(config: &EncryptionConfiguration) -> Rules {
        let mut rules: BTreeMap<RuleKey, Vec<Unit>> = BTreeMap::new();
        for entry in &config.resources {
            let units = units_of(&entry.providers);
            for resource in &entry.resources {
                // The same resource in two entries gets both provider lists, in entry order (as upstream).
                rules
                    .entry(RuleKey::parse(resource))
                    .or_default()
                    .extend(units.iter().cloned());
            }
        }
        Rules(rules)
    }

    /// Renders entries specific → wildcard, grouping rules of one level that have identical unit lists.
    pub fn to_config(&self) -> EncryptionConfiguration {
        let mut entries: Vec<(u8, Vec<Unit>, Vec<String>)> = Vec::new();
        for (key, units) in &self.0 {
            let level = key.level();
            match entries
                .iter_mut()
                .find(|(l, u, _)| *l == level && u == units)
            {
                Some((_, _, names)) => names.push(key.to_string()),
                None => entries.push((level, units.clone(), vec![key.to_string()])),
            }
        }
        EncryptionConfiguration {
            api_version: API_VERSION.to_string(),
            kind: KIND.to_string(),
            resources: entries
                .into_iter()
                .map(|(_, units, resources)| ResourceConfiguration {
                    resources,
                    providers: providers_of(&units),
                })
                .collect(),
        }
    }

    pub fn all_units(&self) -> impl Iterator<Item = &Unit> {
        self.0.values().flatten()
    }
}

/// The units a node's file holds that `next` does not (identity aside): replacing the file forgets them, so
/// they are archived first. A unit counts as kept only with the same material (a drifted file may reuse a name
/// with another secret).
pub fn units_dropped(
    previous: &EncryptionConfiguration,
    next: Option<&EncryptionConfiguration>,
) -> Vec<Unit> {
    let kept: Vec<Unit> = next
        .map(|n| Rules::from_config(n).all_units().cloned().collect())
        .unwrap_or_default();
    let mut dropped: Vec<Unit> = Vec::new();
    for unit in Rules::from_config(previous).all_units() {
        if *unit != Unit::Identity && !kept.contains(unit) && !dropped.contains(unit) {
            dropped.push(unit.clone());
        }
    }
    dropped
}

/// The units in effect for `key` under `rules` (`None` = no config file: identity for everything).
pub fn effective(rules: Option<&Rules>, key: &RuleKey) -> Vec<Unit> {
    if let Some(rules) = rules {
        for candidate in key.lookup_chain() {
            if let Some(units) = rules.0.get(&candidate)
                && !units.is_empty()
            {
                return units.clone();
            }
        }
    }
    vec![Unit::Identity]
}

/// `base` followed by the units of `extra` it lacks. A key joins the key list of its provider when `base`
/// already has that provider (so a managed rotation reads `[aescbc{old, new}, identity]`, as K3s does).
pub fn merge(base: &[Unit], extra: &[Unit]) -> Vec<Unit> {
    let mut out = base.to_vec();
    for unit in extra {
        let id = unit.id();
        if out.iter().any(|u| u.id() == id) {
            continue;
        }
        let position = match unit {
            Unit::Key { provider, .. } => last_of_first_run(&out, *provider),
            _ => None,
        };
        match position {
            Some(i) => out.insert(i + 1, unit.clone()),
            None => out.push(unit.clone()),
        }
    }
    out
}

fn is_key_of(unit: &Unit, provider: KeyProvider) -> bool {
    matches!(unit, Unit::Key { provider: p, .. } if *p == provider)
}

fn last_of_first_run(units: &[Unit], provider: KeyProvider) -> Option<usize> {
    let start = units.iter().position(|u| is_key_of(u, provider))?;
    let len = units[start..]
        .iter()
        .take_while(|u| is_key_of(u, provider))
        .count();
    Some(start + len - 1)
}

/// Flattens a provider list into units, in order.
pub fn units_of(providers: &[ProviderConfiguration]) -> Vec<Unit> {
    let mut units = Vec::new();
    for p in providers {
        let keyed = [
            (KeyProvider::Aesgcm, &p.aesgcm),
            (KeyProvider::Aescbc, &p.aescbc),
            (KeyProvider::Secretbox, &p.secretbox),
        ];
        if let Some((provider, Some(keys))) = keyed.into_iter().find(|(_, k)| k.is_some()) {
            units.extend(keys.keys.iter().map(|k| Unit::Key {
                provider,
                name: k.name.clone(),
                secret: k.secret.clone(),
            }));
        } else if p.identity.is_some() {
            units.push(Unit::Identity);
        } else if let Some(kms) = &p.kms {
            units.push(Unit::Kms(kms.clone()));
        }
    }
    units
}

/// Units back to providers: consecutive keys of one provider type share one provider entry.
pub fn providers_of(units: &[Unit]) -> Vec<ProviderConfiguration> {
    let mut providers: Vec<ProviderConfiguration> = Vec::new();
    let mut current: Option<(KeyProvider, Vec<Key>)> = None;
    let flush = |current: &mut Option<(KeyProvider, Vec<Key>)>,
                 providers: &mut Vec<ProviderConfiguration>| {
        if let Some((provider, keys)) = current.take() {
            let keys = Some(KeysConfiguration { keys });
            providers.push(match provider {
                KeyProvider::Aescbc => ProviderConfiguration {
                    aescbc: keys,
                    ..Default::default()
                },
                KeyProvider::Aesgcm => ProviderConfiguration {
                    aesgcm: keys,
                    ..Default::default()
                },
                KeyProvider::Secretbox => ProviderConfiguration {
                    secretbox: keys,
                    ..Default::default()
                },
            });
        }
    };
    for unit in units {
        match unit {
            Unit::Key {
                provider,
                name,
                secret,
            } => {
                let key = Key {
                    name: name.clone(),
                    secret: secret.clone(),
                };
                match &mut current {
                    Some((p, keys)) if p == provider => keys.push(key),
                    _ => {
                        flush(&mut current, &mut providers);
                        current = Some((*provider, vec![key]));
                    }
                }
            }
            Unit::Identity => {
                flush(&mut current, &mut providers);
                providers.push(ProviderConfiguration {
                    identity: Some(IdentityConfiguration {}),
                    ..Default::default()
                });
            }
            Unit::Kms(kms) => {
                flush(&mut current, &mut providers);
                providers.push(ProviderConfiguration {
                    kms: Some(kms.clone()),
                    ..Default::default()
                });
            }
        }
    }
    flush(&mut current, &mut providers);
    providers
}

/// Plain constructors, handy for callers and tests.
pub fn key_unit(provider: KeyProvider, name: &str, secret: &str) -> Unit {
    Unit::Key {
        provider,
        name: name.to_string(),
        secret: SecretString::new(secret.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(keys: &[(&str, &str)]) -> EncryptionConfiguration {
        let keys: String = keys
            .iter()
            .map(|(n, s)| format!("          - name: {n}\n            secret: {s}\n"))
            .collect();
        let yaml = format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: \
             [secrets]\n    providers:\n    - aescbc:\n        keys:\n{keys}    - identity: {{}}\n"
        );
        crate::config::encryption::parse(&yaml, "test").expect("test config")
    }

    #[test]
    fn a_replaced_file_drops_the_keys_the_next_one_lacks_or_holds_with_another_secret() {
        let a = "YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE=";
        let b = "YmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmI=";
        let names = |units: Vec<Unit>| units.iter().map(|u| u.id().to_string()).collect::<Vec<_>>();
        let drifted = config(&[("unknown", b), ("k1", a)]);
        assert_eq!(
            names(units_dropped(&drifted, Some(&config(&[("k1", a)])))),
            ["aescbc:unknown"]
        );
        // Same name, other secret: the drifted one is still lost by the replacement.
        assert_eq!(
            names(units_dropped(
                &config(&[("k1", b)]),
                Some(&config(&[("k1", a)]))
            )),
            ["aescbc:k1"]
        );
        assert_eq!(
            names(units_dropped(&drifted, None)),
            ["aescbc:unknown", "aescbc:k1"]
        );
        assert!(units_dropped(&drifted, Some(&drifted)).is_empty());
    }

    #[test]
    fn rule_strings_parse_and_render_like_upstream() {
        for (s, rendered) in [
            ("secrets", "secrets"),
            ("configmaps.", "configmaps"),
            ("deployments.apps", "deployments.apps"),
            (
                "pandas.awesome.bears.example",
                "pandas.awesome.bears.example",
            ),
            ("*.", "*."),
            ("*.apps", "*.apps"),
            ("*.*", "*.*"),
        ] {
            assert_eq!(RuleKey::parse(s).to_string(), rendered);
        }
        assert!(RuleKey::parse("secrets") < RuleKey::parse("*."));
        assert!(RuleKey::parse("*.apps") < RuleKey::parse("*.*"));
        assert!(RuleKey::parse("*.apps").covers(&RuleKey::parse("deployments.apps")));
        assert!(!RuleKey::parse("*.apps").covers(&RuleKey::parse("secrets")));
    }

    #[test]
    fn labels_round_trip_and_reject_unknown() {
        for label in [
            "identity",
            "aescbc:k1",
            "aesgcm:a:b",
            "secretbox:s",
            "kms:v2:vault",
        ] {
            assert_eq!(
                UnitId::parse_label(label).map(|u| u.label()).as_deref(),
                Some(label)
            );
        }
        assert_eq!(
            UnitId::parse_label("kms:v2:vault:key-7"),
            Some(UnitId::Kms {
                api_version: "v2".into(),
                name: "vault".into()
            })
        );
        for bad in ["", "aescbc:", "rot13:x", "kms:v3:x", "k8s:enc:aescbc:v1:k"] {
            assert_eq!(UnitId::parse_label(bad), None, "{bad}");
        }
    }

    #[test]
    fn merge_joins_keys_into_the_existing_provider() {
        let old = key_unit(KeyProvider::Aescbc, "old", "b2xk");
        let new = key_unit(KeyProvider::Aescbc, "new", "bmV3");
        let merged = merge(
            &[old.clone(), Unit::Identity],
            &[new.clone(), Unit::Identity],
        );
        assert_eq!(merged, vec![old.clone(), new.clone(), Unit::Identity]);
        let providers = providers_of(&merged);
        assert_eq!(providers.len(), 2);
        assert_eq!(providers[0].aescbc.as_ref().map(|k| k.keys.len()), Some(2));
    }

    #[test]
    fn flatten_and_render_round_trip() {
        let a = key_unit(KeyProvider::Aesgcm, "g", "Zw==");
        let mut rules = BTreeMap::new();
        rules.insert(RuleKey::parse("*.*"), vec![Unit::Identity]);
        rules.insert(RuleKey::parse("secrets"), vec![a.clone(), Unit::Identity]);
        rules.insert(
            RuleKey::parse("configmaps"),
            vec![a.clone(), Unit::Identity],
        );
        let rules = Rules(rules);
        let config = rules.to_config();
        assert_eq!(config.resources.len(), 2);
        assert_eq!(config.resources[0].resources, vec!["configmaps", "secrets"]);
        assert_eq!(config.resources[1].resources, vec!["*.*"]);
        assert_eq!(Rules::from_config(&config), rules);
        assert_eq!(
            effective(Some(&rules), &RuleKey::parse("pods")),
            vec![Unit::Identity]
        );
        assert_eq!(
            effective(None, &RuleKey::parse("secrets")),
            vec![Unit::Identity]
        );
    }
}
