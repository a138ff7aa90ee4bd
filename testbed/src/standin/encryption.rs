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
    let shown = path.display().to_string();
    let data = std::fs::read(path).map_err(|e| {
        format!(
            "error opening encryption provider configuration file \"{shown}\": open {shown}: {}",
            go_io_error(&e)
        )
    })?;
    if data.is_empty() {
        return Err(format!(
            "encryption provider configuration file \"{shown}\" is empty"
        ));
    }
    let text = String::from_utf8(data).map_err(|e| {
        format!(
            "error decoding encryption provider configuration file \"{shown}\": invalid UTF-8: {e}"
        )
    })?;
    // Decoding (kind/apiVersion, strict fields) and validation are atrest's own, shared with the tool.
    let config = atrest::config::encryption::parse(&text, &shown).map_err(|e| {
        format!(
            "error decoding encryption provider configuration file \"{shown}\": {}",
            decode_message(&e)
        )
    })?;
    atrest::config::encryption::validate(&config).map_err(|e| e.to_string())?;
    Ok(config)
}

/// One upstream-style decode error from atrest's per-field diagnostics.
fn decode_message(e: &atrest::config::ConfigError) -> String {
    const STRICT: &str = "strict decoding error: ";
    let msgs: Vec<&str> = e.diagnostics().iter().map(|d| d.message.as_str()).collect();
    if msgs.is_empty() {
        return e.to_string();
    }
    if msgs.len() > 1 && msgs.iter().all(|m| m.starts_with(STRICT)) {
        let parts: Vec<&str> = msgs.iter().map(|m| &m[STRICT.len()..]).collect();
        return format!("{STRICT}{}", parts.join(", "));
    }
    msgs.join(", ")
}

/// The OS part of Go's `*PathError` text (Rust appends `(os error N)`, Go does not).
fn go_io_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// Builds the per-resource prefix lists, rejecting rules masked by an earlier wildcard.
pub fn build(config: &EncryptionConfiguration) -> Result<ResourceTransformers, String> {
    atrest::config::encryption::check_masking(config).map_err(|e| e.to_string())?;
    let metrics = Metrics::default();
    let mut lists: HashMap<GroupResource, Vec<PrefixTransformer>> = HashMap::new();
    for entry in &config.resources {
        let providers = entry
            .providers
            .iter()
            .map(build_provider)
            .collect::<Result<Vec<_>, _>>()?;
        for resource in &entry.resources {
            let gr = GroupResource::parse(resource);
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
        let s = super::super::transform::tests::block_on(
            rt.for_resource(&GroupResource::core("secrets"))
                .transform_to_storage(b"x", b""),
        )
        .unwrap();
        assert!(s.starts_with(b"k8s:enc:aescbc:v1:k1:"));
        let c = super::super::transform::tests::block_on(
            rt.for_resource(&GroupResource::core("configmaps"))
                .transform_to_storage(b"x", b""),
        )
        .unwrap();
        assert_eq!(c, b"x");
        let none = ResourceTransformers::identity_only();
        let err = super::super::transform::tests::block_on(
            none.for_resource(&GroupResource::core("secrets"))
                .transform_from_storage(&s, b""),
        )
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
