//! kube-apiserver's validation of an EncryptionConfiguration, with its exact texts
//! (`k8s.io/apiserver/pkg/apis/apiserver/validation/validation_encryption.go`), run on the defaulted
//! values as upstream does (KMS `apiVersion` v1, `cachesize` 1000 for v1, `timeout` 3s).
//!
//! One deliberate difference: where upstream dumps a whole provider as JSON (key secrets included),
//! secrets are printed as `REDACTED`.

use super::{EncryptionConfiguration, Key, KmsConfiguration, ProviderConfiguration};
use crate::config::gofmt;
use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use std::collections::BTreeMap;
use std::fmt;
use zeroize::Zeroizing;

const AES_KEY_SIZES: &[usize] = &[16, 24, 32];
const SECRETBOX_KEY_SIZES: &[usize] = &[32];
const DEFAULT_TIMEOUT_NANOS: i64 = 3_000_000_000;
const DEFAULT_CACHE_SIZE: i32 = 1000;

/// Go's `base64.StdEncoding`: padding required, non-zero trailing bits tolerated.
const GO_STD_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical)
        .with_decode_allow_trailing_bits(true),
);

/// One field error; `Display` is upstream's `field.Error.Error()`: `<path>: <message>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Upstream field path, e.g. `resources[0].providers[1].aescbc.keys[0].secret`.
    pub path: String,
    /// Everything after `<path>: `, e.g. `Invalid value: "REDACTED": secrets must be base64 encoded`.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// The aggregate kube-apiserver prints: one error plain, several as `[e1, e2]`, duplicates dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidationErrors {
    pub errors: Vec<FieldError>,
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.errors.as_slice() {
            [one] => write!(f, "{one}"),
            many => {
                f.write_str("[")?;
                for (i, e) in many.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{e}")?;
                }
                f.write_str("]")
            }
        }
    }
}

impl std::error::Error for ValidationErrors {}

impl ValidationErrors {
    fn from_list(list: Vec<FieldError>) -> Result<(), ValidationErrors> {
        let mut errors: Vec<FieldError> = Vec::new();
        for e in list {
            if !errors.iter().any(|x| x.to_string() == e.to_string()) {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors { errors })
        }
    }
}

/// A build-time masking error (`resource "secrets" is masked by earlier rule "*."`); `Display` is the
/// upstream text, `path` says which resource string caused it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaskingError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for MaskingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for MaskingError {}

fn required(path: String, detail: &str) -> FieldError {
    FieldError {
        path,
        message: format!("Required value: {detail}"),
    }
}

/// `Invalid value: <value>: <detail>` where `value` is already rendered the Go way.
fn invalid(path: String, value: &str, detail: &str) -> FieldError {
    FieldError {
        path,
        message: format!("Invalid value: {value}: {detail}"),
    }
}

/// Upstream's entry point takes a pointer; `None` is its "nil" case.
pub fn validate_optional(
    config: Option<&EncryptionConfiguration>,
    reload: bool,
) -> Result<(), ValidationErrors> {
    match config {
        Some(c) => validate_with_reload(c, reload),
        None => ValidationErrors::from_list(vec![required(
            "resources".into(),
            "EncryptionConfiguration can't be nil",
        )]),
    }
}

/// kube-apiserver's validation at startup (automatic reload off).
pub fn validate(config: &EncryptionConfiguration) -> Result<(), ValidationErrors> {
    validate_with_reload(config, false)
}

/// kube-apiserver's validation; `reload` = `--encryption-provider-config-automatic-reload`, which makes
/// KMS v1 names subject to the uniqueness rule too.
pub fn validate_with_reload(
    config: &EncryptionConfiguration,
    reload: bool,
) -> Result<(), ValidationErrors> {
    let root = "resources";
    let mut errs = Vec::new();
    if config.resources.is_empty() {
        errs.push(required(
            root.into(),
            &format!("at least one {root} is required"),
        ));
        return ValidationErrors::from_list(errs);
    }
    let mut kms_names: Vec<String> = Vec::new();
    for (i, conf) in config.resources.iter().enumerate() {
        let r = format!("{root}[{i}].resources");
        let p = format!("{root}[{i}].providers");
        if conf.resources.is_empty() {
            errs.push(required(
                r.clone(),
                &format!("at least one {r} is required"),
            ));
        }
        errs.extend(resource_overlap(&conf.resources, &r));
        errs.extend(resource_names(&conf.resources, &r));
        if conf.providers.is_empty() {
            errs.push(required(
                p.clone(),
                &format!("at least one {p} is required"),
            ));
        }
        for (j, provider) in conf.providers.iter().enumerate() {
            let path = format!("{p}[{j}]");
            errs.extend(single_provider(provider, &path));
            if let Some(kms) = &provider.kms {
                errs.extend(kms_errors(kms, &format!("{path}.kms"), &kms_names, reload));
                kms_names.push(kms.name.clone());
            } else if let Some(c) = &provider.aesgcm {
                errs.extend(keys_errors(
                    &c.keys,
                    &format!("{path}.aesgcm.keys"),
                    AES_KEY_SIZES,
                ));
            } else if let Some(c) = &provider.aescbc {
                errs.extend(keys_errors(
                    &c.keys,
                    &format!("{path}.aescbc.keys"),
                    AES_KEY_SIZES,
                ));
            } else if let Some(c) = &provider.secretbox {
                errs.extend(keys_errors(
                    &c.keys,
                    &format!("{path}.secretbox.keys"),
                    SECRETBOX_KEY_SIZES,
                ));
            }
        }
    }
    ValidationErrors::from_list(errs)
}

/// `schema.ParseGroupResource`: split at the first dot into (group, resource).
fn group_resource(s: &str) -> (&str, &str) {
    match s.split_once('.') {
        Some((resource, group)) => (group, resource),
        None => ("", s),
    }
}

fn json_list(items: &[String]) -> String {
    let inner: Vec<String> = items.iter().map(|s| gofmt::json_string(s)).collect();
    format!("[{}]", inner.join(","))
}

fn resource_overlap(resources: &[String], path: &str) -> Vec<FieldError> {
    if resources.len() < 2 {
        return Vec::new();
    }
    let parsed: Vec<(&str, &str)> = resources.iter().map(|r| group_resource(r)).collect();
    let (mut has_overlap, mut has_duplicate) = (false, false);
    // Same loop as upstream, including its order of checks (a duplicate pair is not also an overlap).
    for (i, r1) in parsed.iter().enumerate() {
        for (j, r2) in parsed.iter().enumerate() {
            if i == j {
                continue;
            }
            if r1 == r2 && !has_duplicate {
                has_duplicate = true;
                continue;
            }
            if has_overlap {
                continue;
            }
            if *r1 == ("*", "*") {
                has_overlap = true;
                continue;
            }
            if r1.0 != r2.0 {
                continue;
            }
            if r1.1 == "*" || r2.1 == "*" {
                has_overlap = true;
                continue;
            }
        }
    }
    let mut errs = Vec::new();
    let value = json_list(resources);
    if has_duplicate {
        errs.push(invalid(
            path.into(),
            &value,
            "the same resource cannot be specified multiple times",
        ));
    }
    if has_overlap {
        errs.push(invalid(
            path.into(),
            &value,
            "using overlapping resources such as 'secrets' and '*.' in the same resource list is not allowed as they will be masked",
        ));
    }
    errs
}

fn resource_names(resources: &[String], path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (j, res) in resources.iter().enumerate() {
        let jj = format!("{path}[{j}]");
        let (group, resource) = group_resource(res);
        let detail = if res.to_lowercase() != *res {
            "resource name should not contain capital letters"
        } else if res == "*" {
            "use '*.' to encrypt all the resources from core API group or *.* to encrypt all resources"
        } else if matches!(
            res.as_str(),
            "apiserveripinfo" | "serviceipallocations" | "servicenodeportallocations"
        ) {
            "resources which do not have REST API/s cannot be encrypted"
        } else if group == "events.k8s.io" {
            "'*.events.k8s.io' objects are stored using the 'events' API group in etcd. Use 'events' instead in the config file"
        } else if group == "extensions" {
            "'extensions' group has been removed and cannot be used for encryption"
        } else if group == "*" && resource != "*" {
            "encrypting the same resource across groups is not supported"
        } else {
            continue;
        };
        errs.push(invalid(jj, &gofmt::quote(res), detail));
    }
    errs
}

fn single_provider(p: &ProviderConfiguration, path: &str) -> Vec<FieldError> {
    let found = [
        p.kms.is_some(),
        p.aesgcm.is_some(),
        p.aescbc.is_some(),
        p.secretbox.is_some(),
        p.identity.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    let detail = match found {
        0 => {
            "provider does not contain any of the expected providers: KMS, AESGCM, AESCBC, Secretbox, Identity"
        }
        1 => return Vec::new(),
        _ => {
            "more than one provider specified in a single element, should split into different list elements"
        }
    };
    vec![invalid(path.into(), &provider_json(p), detail)]
}

/// `json.Marshal` of upstream's internal (untagged, defaulted) ProviderConfiguration, secrets redacted.
fn provider_json(p: &ProviderConfiguration) -> String {
    let keys = |k: &Option<super::KeysConfiguration>| match k {
        None => "null".to_string(),
        Some(k) if k.keys.is_empty() => r#"{"Keys":null}"#.to_string(),
        Some(k) => {
            let items: Vec<String> = k
                .keys
                .iter()
                .map(|key: &Key| {
                    format!(
                        r#"{{"Name":{},"Secret":"REDACTED"}}"#,
                        gofmt::json_string(&key.name)
                    )
                })
                .collect();
            format!(r#"{{"Keys":[{}]}}"#, items.join(","))
        }
    };
    let identity = if p.identity.is_some() { "{}" } else { "null" };
    let kms = match &p.kms {
        None => "null".to_string(),
        Some(k) => {
            let d = Defaulted::of(k);
            let cache = d.cachesize.map_or("null".to_string(), |c| c.to_string());
            let timeout = match d.timeout {
                Ok(n) => gofmt::json_string(&gofmt::format_duration(n)),
                Err(_) => gofmt::json_string(k.timeout.as_deref().unwrap_or("")),
            };
            format!(
                r#"{{"APIVersion":{},"Name":{},"CacheSize":{},"Endpoint":{},"Timeout":{}}}"#,
                gofmt::json_string(d.api_version),
                gofmt::json_string(&k.name),
                cache,
                gofmt::json_string(&k.endpoint),
                timeout
            )
        }
    };
    format!(
        r#"{{"AESGCM":{},"AESCBC":{},"Secretbox":{},"Identity":{},"KMS":{}}}"#,
        keys(&p.aesgcm),
        keys(&p.aescbc),
        keys(&p.secretbox),
        identity,
        kms
    )
}

fn keys_errors(keys: &[Key], path: &str, sizes: &[usize]) -> Vec<FieldError> {
    if keys.is_empty() {
        return vec![required(path.into(), "at least one keys is required")];
    }
    let mut errs = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let kp = format!("{path}[{i}]");
        if key.name.is_empty() {
            errs.push(required(
                format!("{kp}.name"),
                "name is a mandatory field for a key",
            ));
        }
        let secret = key.secret.expose();
        if secret.is_empty() {
            errs.push(required(
                format!("{kp}.secret"),
                "secret is a mandatory field for a key",
            ));
            continue;
        }
        match decode_secret(secret) {
            None => errs.push(invalid(
                format!("{kp}.secret"),
                "\"REDACTED\"",
                "secrets must be base64 encoded",
            )),
            Some(bytes) if !sizes.contains(&bytes.len()) => {
                let expected: Vec<String> = sizes.iter().map(usize::to_string).collect();
                errs.push(invalid(
                    format!("{kp}.secret"),
                    "\"REDACTED\"",
                    &format!(
                        "secret is not of the expected length, got {}, expected one of [{}]",
                        bytes.len(),
                        expected.join(" ")
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    errs
}

/// Go's `base64.StdEncoding.DecodeString` (which skips `\r` and `\n`); the bytes are wiped on drop.
pub(crate) fn decode_secret(secret: &str) -> Option<Zeroizing<Vec<u8>>> {
    let cleaned: Zeroizing<String> = Zeroizing::new(
        secret
            .chars()
            .filter(|c| *c != '\r' && *c != '\n')
            .collect(),
    );
    GO_STD_BASE64
        .decode(cleaned.as_bytes())
        .ok()
        .map(Zeroizing::new)
}

/// A KMS provider after upstream's defaulting.
struct Defaulted<'a> {
    api_version: &'a str,
    cachesize: Option<i32>,
    timeout: Result<i64, String>,
}

impl<'a> Defaulted<'a> {
    fn of(k: &'a KmsConfiguration) -> Self {
        let api_version = match k.api_version.as_deref() {
            None | Some("") => "v1",
            Some(v) => v,
        };
        let cachesize = match k.cachesize {
            None if api_version == "v1" => Some(DEFAULT_CACHE_SIZE),
            c => c,
        };
        let timeout = match k.timeout.as_deref() {
            None => Ok(DEFAULT_TIMEOUT_NANOS),
            Some(t) => gofmt::parse_duration(t),
        };
        Defaulted {
            api_version,
            cachesize,
            timeout,
        }
    }
}

fn kms_errors(
    k: &KmsConfiguration,
    path: &str,
    earlier: &[String],
    reload: bool,
) -> Vec<FieldError> {
    let d = Defaulted::of(k);
    let mut errs = Vec::new();
    let name_path = format!("{path}.name");
    if k.name.is_empty() {
        errs.push(required(
            name_path.clone(),
            "name is a mandatory field for a provider",
        ));
    }
    if d.api_version != "v1" && k.name.contains(':') {
        errs.push(invalid(
            name_path.clone(),
            &gofmt::quote(&k.name),
            &format!("invalid KMS provider name {}, must not contain ':'", k.name),
        ));
    }
    if (reload || d.api_version != "v1") && earlier.contains(&k.name) {
        errs.push(invalid(
            name_path,
            &gofmt::quote(&k.name),
            &format!(
                "duplicate KMS provider name {}, names must be unique",
                k.name
            ),
        ));
    }
    match &d.timeout {
        Ok(n) if *n <= 0 => errs.push(invalid(
            format!("{path}.timeout"),
            &gofmt::json_string(&gofmt::format_duration(*n)),
            "timeout should be a positive value",
        )),
        Ok(_) => {}
        // Upstream cannot get here (decoding fails first); say the same thing the decoder would.
        Err(e) => errs.push(invalid(
            format!("{path}.timeout"),
            &gofmt::quote(k.timeout.as_deref().unwrap_or("")),
            e,
        )),
    }
    let endpoint_path = format!("{path}.endpoint");
    if k.endpoint.is_empty() {
        errs.push(invalid(
            endpoint_path,
            "\"\"",
            "endpoint is a mandatory field for a kms",
        ));
    } else {
        match gofmt::url_scheme(&k.endpoint) {
            Err(e) => errs.push(invalid(
                endpoint_path,
                &gofmt::quote(&k.endpoint),
                &format!("invalid endpoint for kms provider, error: {e}"),
            )),
            Ok(scheme) if scheme != "unix" => errs.push(invalid(
                endpoint_path,
                &gofmt::quote(&k.endpoint),
                &format!(
                    "unsupported scheme {} for KMS provider, only unix is supported",
                    gofmt::quote(&scheme)
                ),
            )),
            Ok(_) => {}
        }
    }
    let cache_path = format!("{path}.cachesize");
    if d.api_version != "v1"
        && let Some(c) = d.cachesize
    {
        errs.push(invalid(
            cache_path.clone(),
            &c.to_string(),
            "cachesize is not supported in v2",
        ));
    }
    if d.api_version == "v1" && d.cachesize == Some(0) {
        errs.push(invalid(
            cache_path,
            "0",
            "cachesize should be a positive value, or negative to disable",
        ));
    }
    if d.api_version != "v1" && d.api_version != "v2" {
        errs.push(invalid(
            format!("{path}.apiVersion"),
            &gofmt::quote(d.api_version),
            "unsupported apiVersion apiVersion for KMS provider, only v1 and v2 are supported",
        ));
    }
    errs
}

fn gr_string(group: &str, resource: &str) -> String {
    if group.is_empty() && resource == "*" {
        "*.".to_string()
    } else if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

/// The check kube-apiserver makes while building transformers, after validation: a resource listed
/// after a `*.group` or `*.*` rule that already covers it is refused (first offender only, as upstream).
pub fn check_masking(config: &EncryptionConfiguration) -> Result<(), MaskingError> {
    let mut configured: Vec<(String, String)> = Vec::new();
    for (i, entry) in config.resources.iter().enumerate() {
        for (j, res) in entry.resources.iter().enumerate() {
            let (group, resource) = group_resource(res);
            let masked_by = if configured.iter().any(|(g, r)| g == group && r == "*") {
                Some((group, "*"))
            } else if configured.iter().any(|(g, r)| g == "*" && r == "*") {
                Some(("*", "*"))
            } else {
                None
            };
            if let Some((g, r)) = masked_by {
                return Err(MaskingError {
                    path: format!("resources[{i}].resources[{j}]"),
                    message: format!(
                        "resource {} is masked by earlier rule {}",
                        gofmt::quote(&gr_string(group, resource)),
                        gofmt::quote(&gr_string(g, r))
                    ),
                });
            }
            configured.push((group.to_string(), resource.to_string()));
        }
    }
    Ok(())
}

/// atrest's own rule: one key name must not carry two different secrets for the same provider type
/// anywhere in the config. Upstream accepts it, but reads try keys by name prefix, so a value would be
/// tried with the wrong key (and aescbc can "succeed" with a wrong key about once in 256 reads).
pub fn check_key_conflicts(config: &EncryptionConfiguration) -> Result<(), ValidationErrors> {
    // (provider type, key name) → (path, secret) of the first occurrence
    let mut first: BTreeMap<(&str, &str), (String, &str)> = BTreeMap::new();
    let mut errs = Vec::new();
    for (i, entry) in config.resources.iter().enumerate() {
        for (j, p) in entry.providers.iter().enumerate() {
            let Some((kind, keys)) = p.keyed() else {
                continue;
            };
            for (k, key) in keys.keys.iter().enumerate() {
                if key.name.is_empty() {
                    continue;
                }
                let path = format!("resources[{i}].providers[{j}].{kind}.keys[{k}].name");
                match first.get(&(kind, key.name.as_str())) {
                    None => {
                        first.insert((kind, key.name.as_str()), (path, key.secret.expose()));
                    }
                    Some((earlier, secret)) if *secret != key.secret.expose() => errs.push(invalid(
                        path,
                        &gofmt::quote(&key.name),
                        &format!(
                            "{kind} key name {} is already used with a different secret at {earlier}; give each secret its own name",
                            gofmt::quote(&key.name)
                        ),
                    )),
                    Some(_) => {}
                }
            }
        }
    }
    ValidationErrors::from_list(errs)
}

#[cfg(test)]
#[path = "validation_tests.rs"]
mod tests;
