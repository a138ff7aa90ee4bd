//! Loads `--encryption-provider-config` once at start and builds the per-resource transformers, as
//! `apiserver:pkg/server/options/encryptionconfig/config.go` does (`LoadEncryptionConfig`,
//! `getTransformerOverridesAndKMSPluginHealthzCheckers`, `transformerFromOverrides`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use atrest::config::encryption::{
    EncryptionConfiguration, KeysConfiguration, ProviderConfiguration,
};
use base64::Engine;
use zeroize::Zeroizing;

use super::transform::{
    AESCBC_PREFIX, AESGCM_PREFIX, AesCbc, AesGcm, ERR_NO_AES_KEY, ERR_NO_MATCHING_PREFIX,
    ERR_NO_SECRETBOX_KEY, Identity, Metrics, PrefixTransformer, PrefixTransformers,
    SECRETBOX_PREFIX, Secretbox, Transformer,
};

/// A group/resource as `schema.ParseGroupResource` splits it (at the first dot).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GroupResource {
    pub group: String,
    pub resource: String,
}

impl GroupResource {
    pub fn parse(s: &str) -> Self {
        match s.split_once('.') {
            Some((resource, group)) => Self {
                group: group.into(),
                resource: resource.into(),
            },
            None => Self {
                group: String::new(),
                resource: s.into(),
            },
        }
    }

    pub fn core(resource: &str) -> Self {
        Self {
            group: String::new(),
            resource: resource.into(),
        }
    }

    /// `grYAMLString`: the core wildcard prints as `*.`, everything else as `gr.String()`.
    fn yaml_string(&self) -> String {
        if self.group.is_empty() && self.resource == "*" {
            "*.".into()
        } else if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }
}

/// The transformers in effect, per resource; resources no rule covers use identity-with-check.
pub struct ResourceTransformers {
    by_resource: HashMap<GroupResource, Arc<PrefixTransformers>>,
    pub metrics: Metrics,
}

impl ResourceTransformers {
    /// No `--encryption-provider-config`: everything is stored as plaintext.
    pub fn identity_only() -> Self {
        Self {
            by_resource: HashMap::new(),
            metrics: Metrics::default(),
        }
    }

    /// Exact `group/resource`, then `group/*`, then `*/*`, else identity (`transformerFromOverrides`).
    pub fn for_resource(&self, gr: &GroupResource) -> Arc<dyn Transformer> {
        let candidates = [
            gr.clone(),
            GroupResource {
                group: gr.group.clone(),
                resource: "*".into(),
            },
            GroupResource {
                group: "*".into(),
                resource: "*".into(),
            },
        ];
        for c in candidates {
            if let Some(t) = self.by_resource.get(&c) {
                return t.clone();
            }
        }
        Arc::new(Identity)
    }
}

/// Reads, decodes and validates the file, then builds transformers. Errors carry upstream's wrapping
/// (`error while parsing file: …` / `error while building transformers: …`).
pub fn load(path: &Path) -> Result<ResourceTransformers, String> {
    let config = load_config(path).map_err(|e| format!("error while parsing file: {e}"))?;
    build(&config).map_err(|e| format!("error while building transformers: {e}"))
}

fn load_config(path: &Path) -> Result<EncryptionConfiguration, String> {
    let shown = path.display();
    let data = std::fs::read(path).map_err(|e| {
        format!(
            "error opening encryption provider configuration file \"{shown}\": {}",
            go_io_error(&e)
        )
    })?;
    if data.is_empty() {
        return Err(format!(
            "encryption provider configuration file \"{shown}\" is empty"
        ));
    }
    let config: EncryptionConfiguration = serde_yaml_ng::from_slice(&data).map_err(|e| {
        format!("error decoding encryption provider configuration file \"{shown}\": {e}")
    })?;
    check_kind(&config).map_err(|e| {
        format!("error decoding encryption provider configuration file \"{shown}\": {e}")
    })?;
    validate(&config)?;
    Ok(config)
}

/// The OS part of Go's `*PathError` text (Rust appends `(os error N)`, Go does not).
fn go_io_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

fn check_kind(config: &EncryptionConfiguration) -> Result<(), String> {
    use atrest::config::encryption::{API_VERSION, KIND, LEGACY_API_VERSION, LEGACY_KIND};
    let ok = (config.api_version == API_VERSION && config.kind == KIND)
        || (config.api_version == LEGACY_API_VERSION && config.kind == LEGACY_KIND);
    if ok {
        return Ok(());
    }
    if config.kind.is_empty() {
        return Err("Object 'Kind' is missing in the configuration".into());
    }
    Err(format!(
        "no kind \"{}\" is registered for version \"{}\" in scheme \"k8s.io/apiserver/pkg/server/options/encryptionconfig/config.go:82\"",
        config.kind, config.api_version
    ))
}

/// Validation needed to build transformers, with upstream's field-path texts. The full rule set lives in
/// `atrest::config::encryption` (config branch); this covers what the stand-in cannot run without.
fn validate(config: &EncryptionConfiguration) -> Result<(), String> {
    let mut errs: Vec<String> = Vec::new();
    if config.resources.is_empty() {
        errs.push("resources: Required value: at least one resources is required".into());
    }
    for (i, entry) in config.resources.iter().enumerate() {
        if entry.resources.is_empty() {
            errs.push(format!(
                "resources[{i}].resources: Required value: at least one resources[{i}].resources is required"
            ));
        }
        if entry.providers.is_empty() {
            errs.push(format!(
                "resources[{i}].providers: Required value: at least one resources[{i}].providers is required"
            ));
        }
        for (j, p) in entry.providers.iter().enumerate() {
            let path = format!("resources[{i}].providers[{j}]");
            let set = [
                p.aesgcm.is_some(),
                p.aescbc.is_some(),
                p.secretbox.is_some(),
                p.identity.is_some(),
                p.kms.is_some(),
            ]
            .iter()
            .filter(|x| **x)
            .count();
            if set == 0 {
                errs.push(format!(
                    "{path}: Invalid value: {}: provider does not contain any of the expected providers: KMS, AESGCM, AESCBC, Secretbox, Identity",
                    serde_json::to_string(p).unwrap_or_default()
                ));
            } else if set > 1 {
                errs.push(format!(
                    "{path}: Invalid value: {}: more than one provider specified in a single element, should split into different list elements",
                    serde_json::to_string(p).unwrap_or_default()
                ));
                continue;
            }
            let keyed = [
                ("aesgcm", &p.aesgcm, &[16usize, 24, 32][..]),
                ("aescbc", &p.aescbc, &[16, 24, 32]),
                ("secretbox", &p.secretbox, &[32]),
            ];
            for (name, keys, sizes) in keyed {
                if let Some(keys) = keys {
                    validate_keys(&format!("{path}.{name}"), keys, sizes, &mut errs);
                }
            }
        }
    }
    match errs.len() {
        0 => Ok(()),
        1 => Err(errs.remove(0)),
        _ => {
            errs.dedup();
            Err(format!("[{}]", errs.join(", ")))
        }
    }
}

fn validate_keys(path: &str, keys: &KeysConfiguration, sizes: &[usize], errs: &mut Vec<String>) {
    if keys.keys.is_empty() {
        errs.push(format!(
            "{path}.keys: Required value: at least one keys is required"
        ));
    }
    for (k, key) in keys.keys.iter().enumerate() {
        if key.name.is_empty() {
            errs.push(format!(
                "{path}.keys[{k}].name: Required value: name is a mandatory field for a key"
            ));
        }
        let secret = key.secret.expose();
        if secret.is_empty() {
            errs.push(format!(
                "{path}.keys[{k}].secret: Required value: secret is a mandatory field for a key"
            ));
            continue;
        }
        match base64::engine::general_purpose::STANDARD.decode(secret) {
            Err(_) => errs.push(format!(
                "{path}.keys[{k}].secret: Invalid value: \"REDACTED\": secrets must be base64 encoded"
            )),
            Ok(raw) => {
                let raw = Zeroizing::new(raw);
                if !sizes.contains(&raw.len()) {
                    let sizes = sizes.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(" ");
                    errs.push(format!(
                        "{path}.keys[{k}].secret: Invalid value: \"REDACTED\": secret is not of the expected length, got {}, expected one of [{sizes}]",
                        raw.len()
                    ));
                }
            }
        }
    }
}

/// Builds the per-resource prefix lists, rejecting rules masked by an earlier wildcard.
pub fn build(config: &EncryptionConfiguration) -> Result<ResourceTransformers, String> {
    let metrics = Metrics::default();
    let mut lists: HashMap<GroupResource, Vec<PrefixTransformer>> = HashMap::new();
    let any = GroupResource {
        group: "*".into(),
        resource: "*".into(),
    };
    for entry in &config.resources {
        let providers = entry
            .providers
            .iter()
            .map(build_provider)
            .collect::<Result<Vec<_>, _>>()?;
        for resource in &entry.resources {
            let gr = GroupResource::parse(resource);
            let any_in_group = GroupResource {
                group: gr.group.clone(),
                resource: "*".into(),
            };
            for earlier in [&any_in_group, &any] {
                if lists.contains_key(earlier) {
                    return Err(format!(
                        "resource \"{}\" is masked by earlier rule \"{}\"",
                        gr.yaml_string(),
                        earlier.yaml_string()
                    ));
                }
            }
            let list = lists.entry(gr).or_default();
            list.extend(providers.iter().map(|p| PrefixTransformer {
                prefix: p.prefix.clone(),
                transformer: p.transformer.clone(),
            }));
        }
    }
    let by_resource = lists
        .into_iter()
        .map(|(gr, entries)| {
            let label = gr.yaml_string();
            let t = PrefixTransformers::new(ERR_NO_MATCHING_PREFIX, entries)
                .with_metrics(metrics.clone(), label);
            (gr, Arc::new(t))
        })
        .collect();
    Ok(ResourceTransformers {
        by_resource,
        metrics,
    })
}

fn build_provider(p: &ProviderConfiguration) -> Result<PrefixTransformer, String> {
    if let Some(keys) = &p.aesgcm {
        return keyed(AESGCM_PREFIX, keys, ERR_NO_AES_KEY, |k| {
            Ok(Arc::new(AesGcm::new(k).map_err(|e| e.to_string())?))
        });
    }
    if let Some(keys) = &p.aescbc {
        return keyed(AESCBC_PREFIX, keys, ERR_NO_AES_KEY, |k| {
            Ok(Arc::new(AesCbc::new(k).map_err(|e| e.to_string())?))
        });
    }
    if let Some(keys) = &p.secretbox {
        return keyed(SECRETBOX_PREFIX, keys, ERR_NO_SECRETBOX_KEY, |k| {
            Ok(Arc::new(Secretbox::new(k).map_err(|e| e.to_string())?))
        });
    }
    if p.identity.is_some() {
        return Ok(PrefixTransformer {
            prefix: Vec::new(),
            transformer: Arc::new(Identity),
        });
    }
    if let Some(kms) = &p.kms {
        // Extension point: a KMS v1/v2 transformer is one more PrefixTransformer with prefix
        // `k8s:enc:kms:v{1,2}:<name>:` talking gRPC to the plugin at `kms.endpoint`.
        return Err(format!(
            "KMS provider {:?} (apiVersion {}) is not supported by the atrest kube-apiserver stand-in yet",
            kms.name,
            kms.api_version.as_deref().unwrap_or("v1")
        ));
    }
    Err("provider does not contain any of the expected providers: KMS, AESGCM, AESCBC, Secretbox, Identity".into())
}

/// A provider prefix wrapping a nested list with one `name:` entry per key, in config order.
fn keyed(
    prefix: &str,
    keys: &KeysConfiguration,
    no_match: &'static str,
    make: impl Fn(&[u8]) -> Result<Arc<dyn Transformer>, String>,
) -> Result<PrefixTransformer, String> {
    let mut entries = Vec::with_capacity(keys.keys.len());
    for key in &keys.keys {
        let raw = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(key.secret.expose())
                .map_err(|_| {
                    format!(
                        "could not obtain secret for named key {}: illegal base64 data",
                        key.name
                    )
                })?,
        );
        entries.push(PrefixTransformer {
            prefix: format!("{}:", key.name).into_bytes(),
            transformer: make(&raw)?,
        });
    }
    Ok(PrefixTransformer {
        prefix: prefix.as_bytes().to_vec(),
        transformer: Arc::new(PrefixTransformers::new(no_match, entries)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> EncryptionConfiguration {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    const TWO: &str = r#"
apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets]
    providers:
      - aescbc: {keys: [{name: k1, secret: c2VjcmV0IGlzIHNlY3VyZQ==}]}
      - identity: {}
  - resources: ["*.*"]
    providers:
      - identity: {}
"#;

    #[test]
    fn lookup_exact_then_wildcards() {
        let rt = build(&parse(TWO)).unwrap();
        let s = rt
            .for_resource(&GroupResource::core("secrets"))
            .transform_to_storage(b"x", b"")
            .unwrap();
        assert!(s.starts_with(b"k8s:enc:aescbc:v1:k1:"));
        let c = rt
            .for_resource(&GroupResource::core("configmaps"))
            .transform_to_storage(b"x", b"")
            .unwrap();
        assert_eq!(c, b"x");
        let none = ResourceTransformers::identity_only();
        let err = none
            .for_resource(&GroupResource::core("secrets"))
            .transform_from_storage(&s, b"")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            super::super::transform::ERR_IDENTITY_ENCRYPTED
        );
    }

    #[test]
    fn masking_is_rejected_with_upstream_text() {
        let cfg = parse(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: ['*.']\n  providers: [{identity: {}}]\n- resources: [secrets]\n  providers: [{identity: {}}]\n",
        );
        assert_eq!(
            build(&cfg).err().unwrap(),
            "resource \"secrets\" is masked by earlier rule \"*.\""
        );
    }

    #[test]
    fn load_wraps_errors_like_upstream() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("enc.yaml");
        std::fs::write(&p, "").unwrap();
        let e = load(&p).err().unwrap();
        assert_eq!(
            e,
            format!(
                "error while parsing file: encryption provider configuration file \"{}\" is empty",
                p.display()
            )
        );
        std::fs::write(
            &p,
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers: [{aescbc: {keys: [{name: k, secret: c2VjcmV0}]}}]\n",
        )
        .unwrap();
        let e = load(&p).err().unwrap();
        assert_eq!(
            e,
            "error while parsing file: resources[0].providers[0].aescbc.keys[0].secret: Invalid value: \"REDACTED\": secret is not of the expected length, got 6, expected one of [16 24 32]"
        );
        std::fs::write(
            &p,
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers: [{kms: {apiVersion: v2, name: p, endpoint: 'unix:///k.sock'}}]\n",
        )
        .unwrap();
        assert!(
            load(&p)
                .err()
                .unwrap()
                .starts_with("error while building transformers: KMS provider")
        );
    }
}
