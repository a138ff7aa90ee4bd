//! `apiserver.config.k8s.io/v1` `EncryptionConfiguration` (and the legacy `v1` `EncryptionConfig`).
//!
//! The serde types mirror the upstream Go types field for field, with strict decoding (unknown fields are
//! rejected, as kube-apiserver does since 1.31). Validation lives beside them and reports upstream's texts.

use crate::config::error::{
    ConfigError, Diagnostic, Position, redact_decode_message, sort_diagnostics,
};
use crate::config::gofmt;
use crate::config::yaml_pos::{self, Node, NodeKind, SourceMap};
use crate::secret::SecretString;
use serde::{Deserialize, Deserializer, Serialize};

mod validation;
pub use validation::{
    FieldError, MaskingError, ValidationErrors, check_key_conflicts, check_masking, validate,
    validate_optional, validate_with_reload,
};

pub const API_VERSION: &str = "apiserver.config.k8s.io/v1";
pub const KIND: &str = "EncryptionConfiguration";
pub const LEGACY_API_VERSION: &str = "v1";
pub const LEGACY_KIND: &str = "EncryptionConfig";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EncryptionConfiguration {
    #[serde(default, deserialize_with = "null_as_default")]
    pub api_version: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub kind: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub resources: Vec<ResourceConfiguration>,
}

/// One entry of `resources:`: which resources, and the ordered providers for them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceConfiguration {
    #[serde(default, deserialize_with = "null_as_default")]
    pub resources: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub providers: Vec<ProviderConfiguration>,
}

/// Exactly one field must be set (checked by validation, as upstream does).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderConfiguration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aesgcm: Option<KeysConfiguration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aescbc: Option<KeysConfiguration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secretbox: Option<KeysConfiguration>,
    /// `identity: {}`. A null `identity:` deserializes to `None` and so counts as "no provider", as upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityConfiguration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms: Option<KmsConfiguration>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfiguration {}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfiguration {
    #[serde(default, deserialize_with = "null_as_default")]
    pub keys: Vec<Key>,
}

/// A named key; `secret` is the base64 text of the raw key bytes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Key {
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub secret: SecretString,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KmsConfiguration {
    /// `v1` (the default when absent) or `v2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub endpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cachesize: Option<i32>,
    /// A Go duration string such as `3s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// Go's decoders leave a field at its zero value when the input says `null`; serde would refuse.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl ProviderConfiguration {
    /// The provider type name as written in the file (`aescbc`, `kms`, …), first set field wins.
    pub fn type_name(&self) -> Option<&'static str> {
        if self.kms.is_some() {
            Some("kms")
        } else if self.aesgcm.is_some() {
            Some("aesgcm")
        } else if self.aescbc.is_some() {
            Some("aescbc")
        } else if self.secretbox.is_some() {
            Some("secretbox")
        } else if self.identity.is_some() {
            Some("identity")
        } else {
            None
        }
    }

    /// The keys of an aescbc/aesgcm/secretbox provider, with the type name.
    pub fn keyed(&self) -> Option<(&'static str, &KeysConfiguration)> {
        if let Some(k) = &self.aesgcm {
            Some(("aesgcm", k))
        } else if let Some(k) = &self.aescbc {
            Some(("aescbc", k))
        } else {
            self.secretbox.as_ref().map(|k| ("secretbox", k))
        }
    }
}

/// RKE's managed shape: one entry for `secrets` only, `[aescbc{keys}, identity{}]`.
pub fn is_managed_shape(config: &EncryptionConfiguration) -> bool {
    let [entry] = config.resources.as_slice() else {
        return false;
    };
    let [first, second] = entry.providers.as_slice() else {
        return false;
    };
    entry.resources == ["secrets"]
        && first.aescbc.as_ref().is_some_and(|k| !k.keys.is_empty())
        && first.aesgcm.is_none()
        && first.secretbox.is_none()
        && first.identity.is_none()
        && first.kms.is_none()
        && second.identity.is_some()
        && second.aescbc.is_none()
        && second.kms.is_none()
}

/// RKE's managed shape: `secrets` only, `[aescbc{keys}, identity{}]`. The first key writes.
pub fn managed(keys: Vec<Key>) -> EncryptionConfiguration {
    EncryptionConfiguration {
        api_version: API_VERSION.to_string(),
        kind: KIND.to_string(),
        resources: vec![ResourceConfiguration {
            resources: vec!["secrets".to_string()],
            providers: vec![
                ProviderConfiguration {
                    aescbc: Some(KeysConfiguration { keys }),
                    ..Default::default()
                },
                ProviderConfiguration {
                    identity: Some(IdentityConfiguration {}),
                    ..Default::default()
                },
            ],
        }],
    }
}

/// Parses an EncryptionConfiguration file (YAML or JSON) the way kube-apiserver decodes it: the
/// kind/apiVersion must name a registered type, and unknown or duplicate fields are refused
/// (strict decoding, kube-apiserver ≥ 1.31). Does not validate; see [`validate`] and [`check`].
pub fn parse(text: &str, origin: &str) -> Result<EncryptionConfiguration, ConfigError> {
    parse_with_source(text, origin).map(|(c, _)| c)
}

/// [`parse`], also returning the positions of every field for later messages.
pub fn parse_with_source(
    text: &str,
    origin: &str,
) -> Result<(EncryptionConfiguration, SourceMap), ConfigError> {
    if text.is_empty() {
        return Err(ConfigError::one(
            origin,
            None,
            format!(
                "encryption provider configuration file {} is empty",
                gofmt::quote(origin)
            ),
        ));
    }
    let looks_like_json = text.trim_start().starts_with('{');
    let root = match yaml_pos::parse(text) {
        Ok(root) => root,
        // Some valid JSON (tabs as indentation) is not valid YAML; serde_json reports real JSON errors below.
        Err(_) if looks_like_json => None,
        Err(e) => {
            return Err(ConfigError::Invalid(vec![syntax_diagnostic(
                text, origin, e,
            )]));
        }
    };
    let map = SourceMap::new(origin, root.as_ref());
    let root_pos = root.as_ref().map(|r| r.pos);
    let diag = |position: Option<Position>, message: String| Diagnostic {
        origin: origin.to_string(),
        position,
        message,
    };

    if !looks_like_json || root.is_some() {
        if let Err(message) = check_type_meta(root.as_ref()) {
            return Err(ConfigError::Invalid(vec![diag(root_pos, message)]));
        }
        let mut strict = Vec::new();
        if let Some(root) = &root {
            strict_fields(root, "", Schema::Config, &mut strict);
        }
        if !strict.is_empty() {
            let diags = strict
                .into_iter()
                .map(|(pos, m)| diag(Some(pos), m))
                .collect();
            return Err(ConfigError::Invalid(diags));
        }
    }

    let config: EncryptionConfiguration = if looks_like_json {
        serde_json::from_str(text).map_err(|e| {
            let pos = (e.line() > 0).then(|| Position {
                line: e.line(),
                column: e.column(),
            });
            ConfigError::Invalid(vec![diag(
                pos,
                redact_decode_message(&strip_json_location(&e.to_string())),
            )])
        })?
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| {
            let (pos, msg) = yaml_error(&e);
            ConfigError::Invalid(vec![diag(pos, msg)])
        })?
    };
    if looks_like_json && root.is_none() {
        check_type_meta_values(&config).map_err(|m| ConfigError::Invalid(vec![diag(None, m)]))?;
    }
    let timeouts = timeout_errors(&config, "", &map);
    if !timeouts.is_empty() {
        return Err(ConfigError::Invalid(timeouts));
    }
    Ok((config, map))
}

/// Parse, validate exactly as kube-apiserver does, apply its build-time masking check, and atrest's
/// own key-name rule. Every problem is reported with its position in `origin`.
pub fn check(text: &str, origin: &str) -> Result<EncryptionConfiguration, ConfigError> {
    let (config, map) = parse_with_source(text, origin)?;
    let diags = semantic_diagnostics(&config, &map, "");
    if diags.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid(diags))
    }
}

/// All validation problems of `config` (upstream rules, masking, atrest's key rule), positioned via
/// `map`; `prefix` is where the config sits inside its file (empty for a standalone file).
pub(crate) fn semantic_diagnostics(
    config: &EncryptionConfiguration,
    map: &SourceMap,
    prefix: &str,
) -> Vec<Diagnostic> {
    let at = |path: &str| map.position(&yaml_pos::join(prefix, path));
    let lead = if prefix.is_empty() {
        String::new()
    } else {
        "custom_config: ".to_string()
    };
    let mut diags: Vec<Diagnostic> = Vec::new();
    let mut push = |path: &str, message: String| {
        diags.push(Diagnostic {
            origin: map.origin.clone(),
            position: at(path),
            message: format!("{lead}{message}"),
        })
    };
    if let Err(errs) = validate(config) {
        for e in &errs.errors {
            push(&e.path, e.to_string());
        }
    }
    if let Err(e) = check_masking(config) {
        push(&e.path, e.message.clone());
    }
    if let Err(errs) = check_key_conflicts(config) {
        for e in &errs.errors {
            push(&e.path, e.to_string());
        }
    }
    sort_diagnostics(&mut diags);
    diags
}

/// kind/apiVersion as kube-apiserver's universal decoder checks them.
fn check_type_meta(root: Option<&Node>) -> Result<(), String> {
    let field = |k: &str| {
        root.and_then(|r| r.get(k))
            .filter(|n| !n.is_null())
            .and_then(|n| n.scalar())
            .unwrap_or("")
    };
    if let Some(r) = root
        && !matches!(r.kind, NodeKind::Map(_))
        && !r.is_null()
    {
        return Err(
            "couldn't get version/kind; json parse error: the document is not a mapping".into(),
        );
    }
    type_meta_error(field("apiVersion"), field("kind"))
}

fn check_type_meta_values(c: &EncryptionConfiguration) -> Result<(), String> {
    type_meta_error(&c.api_version, &c.kind)
}

pub(crate) fn type_meta_error(api_version: &str, kind: &str) -> Result<(), String> {
    // The whole file would follow in upstream's text; it may hold keys, so it is not repeated.
    if kind.is_empty() {
        return Err("Object 'Kind' is missing in 'REDACTED'".into());
    }
    if api_version.is_empty() {
        return Err("Object 'apiVersion' is missing in 'REDACTED'".into());
    }
    if api_version.matches('/').count() > 1 {
        return Err(format!("unexpected GroupVersion string: {api_version}"));
    }
    let registered = (api_version == API_VERSION && kind == KIND)
        || (api_version == LEGACY_API_VERSION && kind == LEGACY_KIND);
    if !registered {
        return Err(format!(
            "no kind {} is registered for version {}",
            gofmt::quote(kind),
            gofmt::quote(api_version)
        ));
    }
    Ok(())
}

/// Which fields each level of the document may hold.
#[derive(Clone, Copy)]
enum Schema {
    Config,
    Entry,
    Provider,
    Keys,
    Key,
    Identity,
    Kms,
    Leaf,
}

fn schema_fields(s: Schema) -> &'static [(&'static str, Schema, bool)] {
    // (field, schema of its value, value is a list)
    match s {
        Schema::Config => &[
            ("apiVersion", Schema::Leaf, false),
            ("kind", Schema::Leaf, false),
            ("resources", Schema::Entry, true),
        ],
        Schema::Entry => &[
            ("resources", Schema::Leaf, true),
            ("providers", Schema::Provider, true),
        ],
        Schema::Provider => &[
            ("aesgcm", Schema::Keys, false),
            ("aescbc", Schema::Keys, false),
            ("secretbox", Schema::Keys, false),
            ("identity", Schema::Identity, false),
            ("kms", Schema::Kms, false),
        ],
        Schema::Keys => &[("keys", Schema::Key, true)],
        Schema::Key => &[
            ("name", Schema::Leaf, false),
            ("secret", Schema::Leaf, false),
        ],
        Schema::Identity => &[],
        Schema::Kms => &[
            ("apiVersion", Schema::Leaf, false),
            ("name", Schema::Leaf, false),
            ("endpoint", Schema::Leaf, false),
            ("cachesize", Schema::Leaf, false),
            ("timeout", Schema::Leaf, false),
        ],
        Schema::Leaf => &[],
    }
}

/// Unknown and duplicate fields, as `sigs.k8s.io/json` strict decoding names them.
fn strict_fields(node: &Node, path: &str, schema: Schema, out: &mut Vec<(Position, String)>) {
    if matches!(schema, Schema::Leaf) {
        return;
    }
    let NodeKind::Map(entries) = &node.kind else {
        return; // a type error: serde reports it
    };
    let mut seen: Vec<&str> = Vec::new();
    for (k, v) in entries {
        let Some(key) = k.scalar() else { continue };
        let child = yaml_pos::join(path, key);
        if seen.contains(&key) {
            out.push((
                k.pos,
                format!(
                    "strict decoding error: duplicate field {}",
                    gofmt::json_string(&child)
                ),
            ));
            continue;
        }
        seen.push(key);
        match schema_fields(schema)
            .iter()
            .find(|(name, _, _)| *name == key)
        {
            None => out.push((
                k.pos,
                format!(
                    "strict decoding error: unknown field {}",
                    gofmt::json_string(&child)
                ),
            )),
            Some((_, sub, true)) => {
                if let NodeKind::Seq(items) = &v.kind {
                    for (i, item) in items.iter().enumerate() {
                        strict_fields(item, &format!("{child}[{i}]"), *sub, out);
                    }
                }
            }
            Some((_, sub, false)) => strict_fields(v, &child, *sub, out),
        }
    }
}

pub(crate) fn strict_diagnostics(node: &Node, origin: &str) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    strict_fields(node, "", Schema::Config, &mut out);
    out.into_iter()
        .map(|(pos, m)| Diagnostic {
            origin: origin.to_string(),
            position: Some(pos),
            message: format!("custom_config: {m}"),
        })
        .collect()
}

pub(crate) fn type_meta_diagnostic(node: &Node, origin: &str) -> Option<Diagnostic> {
    check_type_meta(Some(node)).err().map(|m| Diagnostic {
        origin: origin.to_string(),
        position: Some(node.pos),
        message: format!("custom_config: {m}"),
    })
}

/// `timeout` must parse as a Go duration at decode time (metav1.Duration).
pub(crate) fn timeout_errors(
    config: &EncryptionConfiguration,
    prefix: &str,
    map: &SourceMap,
) -> Vec<Diagnostic> {
    let lead = if prefix.is_empty() {
        ""
    } else {
        "custom_config: "
    };
    let mut out = Vec::new();
    for (i, entry) in config.resources.iter().enumerate() {
        for (j, p) in entry.providers.iter().enumerate() {
            if let Some(t) = p.kms.as_ref().and_then(|k| k.timeout.as_deref())
                && let Err(e) = gofmt::parse_duration(t)
            {
                let path = format!("resources[{i}].providers[{j}].kms.timeout");
                out.push(Diagnostic {
                    origin: map.origin.clone(),
                    position: map.position(&yaml_pos::join(prefix, &path)),
                    message: format!("{lead}{e}"),
                });
            }
        }
    }
    out
}

/// A syntax error in the words of libyaml (via serde_yaml_ng), which most YAML users know, with
/// saphyr's report as the fallback should the two parsers disagree.
pub(crate) fn syntax_diagnostic(
    text: &str,
    origin: &str,
    fallback: yaml_pos::SyntaxError,
) -> Diagnostic {
    let (position, message) = match serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text) {
        Err(e) if e.location().is_some() => yaml_error(&e),
        _ => (Some(fallback.pos), fallback.message),
    };
    Diagnostic {
        origin: origin.to_string(),
        position,
        message,
    }
}

/// serde_yaml_ng's message without its trailing `at line L column C` and without the values it quotes
/// ([`redact_decode_message`]), and the position apart.
pub(crate) fn yaml_error(e: &serde_yaml_ng::Error) -> (Option<Position>, String) {
    let pos = e.location().map(|l| Position {
        line: l.line(),
        column: l.column(),
    });
    let mut msg = e.to_string();
    if let Some(l) = e.location() {
        let suffix = format!(" at line {} column {}", l.line(), l.column());
        if let Some(i) = msg.find(&suffix) {
            msg.replace_range(i..i + suffix.len(), "");
        }
    }
    (pos, redact_decode_message(&msg))
}

fn strip_json_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

#[cfg(test)]
pub(crate) mod validation_test_support {
    /// Length of a secret after Go-style base64 decoding.
    pub fn decoded_len(secret: &str) -> Option<usize> {
        super::validation::decode_secret(secret).map(|b| b.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn managed_is_rkes_shape() {
        let key = Key {
            name: "k".into(),
            secret: SecretString::new("c2VjcmV0IGlzIHNlY3VyZQ==".into()),
        };
        let c = managed(vec![key.clone()]);
        assert_eq!(
            (c.api_version.as_str(), c.kind.as_str()),
            (API_VERSION, KIND)
        );
        assert_eq!(c.resources.len(), 1);
        assert_eq!(c.resources[0].resources, ["secrets"]);
        let p = &c.resources[0].providers;
        assert_eq!(p.len(), 2);
        assert_eq!(
            p[0].aescbc.as_ref().map(|k| k.keys.clone()),
            Some(vec![key])
        );
        assert_eq!(p[0].type_name(), Some("aescbc"));
        assert_eq!(p[1].type_name(), Some("identity"));
        assert_eq!(validate(&c), Ok(()));
    }

    #[test]
    fn parse_accepts_legacy_json_and_nulls_without_validating() {
        let legacy = "apiVersion: v1\nkind: EncryptionConfig\nresources: []\n";
        assert!(parse(legacy, "l.yaml").unwrap().resources.is_empty());
        let json = r#"{"apiVersion":"apiserver.config.k8s.io/v1","kind":"EncryptionConfiguration","resources":[{"resources":["secrets"],"providers":[{"aescbc":{"keys":null}}]}]}"#;
        let c = parse(json, "c.json").unwrap();
        assert_eq!(
            c.resources[0].providers[0].aescbc,
            Some(KeysConfiguration { keys: vec![] })
        );
        assert_eq!(
            validate(&c).unwrap_err().to_string(),
            "resources[0].providers[0].aescbc.keys: Required value: at least one keys is required"
        );
    }

    #[test]
    fn strict_decoding_lists_every_unknown_field() {
        let text = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nmetadata: {name: x}\nresources:\n- resources: [secrets]\n  providers:\n  - identity: {extra: 1}\n";
        assert_eq!(
            parse(text, "s.yaml").unwrap_err().to_string(),
            "s.yaml:3:1: strict decoding error: unknown field \"metadata\"\ns.yaml:7:16: strict decoding error: unknown field \"resources[0].providers[0].identity.extra\""
        );
    }

    #[test]
    fn check_positions_validation_errors() {
        let text = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aescbc:\n      keys:\n      - name: k\n        secret: c2hvcnQ=\n";
        assert_eq!(
            check(text, "c.yaml").unwrap_err().to_string(),
            "c.yaml:9:17: resources[0].providers[0].aescbc.keys[0].secret: Invalid value: \"REDACTED\": secret is not of the expected length, got 5, expected one of [16 24 32]"
        );
    }
}
