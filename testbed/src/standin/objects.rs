//! The three core/v1 kinds the stand-in serves, their validation and their storage encoding
//! (Go `json.Encoder` style: struct field order, sorted map keys, HTML-escaped, trailing newline).

use base64::Engine;
use rand::Rng;
use serde_json::{Map, Value, json};

use super::status::{ApiError, FieldError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Secret,
    ConfigMap,
    Namespace,
}

impl Kind {
    pub fn from_resource(resource: &str) -> Option<Kind> {
        match resource {
            "secrets" => Some(Kind::Secret),
            "configmaps" => Some(Kind::ConfigMap),
            "namespaces" => Some(Kind::Namespace),
            _ => None,
        }
    }

    pub fn resource(self) -> &'static str {
        match self {
            Kind::Secret => "secrets",
            Kind::ConfigMap => "configmaps",
            Kind::Namespace => "namespaces",
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            Kind::Secret => "Secret",
            Kind::ConfigMap => "ConfigMap",
            Kind::Namespace => "Namespace",
        }
    }

    pub fn list_kind(self) -> String {
        format!("{}List", self.kind())
    }

    pub fn namespaced(self) -> bool {
        self != Kind::Namespace
    }

    /// Top-level fields of the v1 type besides kind/apiVersion/metadata.
    fn fields(self) -> &'static [&'static str] {
        match self {
            Kind::Secret => &["immutable", "data", "stringData", "type"],
            Kind::ConfigMap => &["immutable", "data", "binaryData"],
            Kind::Namespace => &["spec", "status"],
        }
    }
}

const META_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

/// `?fieldValidation=`; upstream's default for an absent value is Warn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn parse(v: Option<&str>) -> Result<Self, ApiError> {
        match v.unwrap_or("") {
            "" | "Warn" => Ok(FieldValidation::Warn),
            "Ignore" => Ok(FieldValidation::Ignore),
            "Strict" => Ok(FieldValidation::Strict),
            other => Err(ApiError::bad_request(&format!(
                "fieldValidation parameter unsupported: {other:?}. Supported values are: Ignore, Warn, Strict"
            ))),
        }
    }
}

/// Parses a request body into an object of `kind`, checking apiVersion/kind and unknown fields.
/// Returns the object and warnings (for `Warning:` headers).
pub fn decode_body(
    kind: Kind,
    body: &[u8],
    fv: FieldValidation,
) -> Result<(Map<String, Value>, Vec<String>), ApiError> {
    let cannot = |e: &str| {
        ApiError::bad_request(&format!(
            "{k} in version \"v1\" cannot be handled as a {k}: {e}",
            k = kind.kind()
        ))
    };
    let value: Value = if body.starts_with(b"k8s\x00") {
        super::protobuf::decode(kind, body).map_err(|e| cannot(&e))?
    } else {
        serde_json::from_slice(body).map_err(|e| cannot(&e.to_string()))?
    };
    let Value::Object(obj) = value else {
        return Err(cannot("json: cannot unmarshal non-object into Go value"));
    };
    if let Some(v) = obj.get("apiVersion").and_then(Value::as_str)
        && v != "v1"
    {
        return Err(ApiError::bad_request(&format!(
            "the API version in the data ({v}) does not match the expected API version (v1)"
        )));
    }
    if let Some(k) = obj.get("kind").and_then(Value::as_str)
        && k != kind.kind()
    {
        return Err(ApiError::bad_request(&format!(
            "the object provided is unrecognized (must be of type {}): kind {k:?}",
            kind.kind()
        )));
    }
    let mut unknown = Vec::new();
    for k in obj.keys() {
        if !["kind", "apiVersion", "metadata"].contains(&k.as_str())
            && !kind.fields().contains(&k.as_str())
        {
            unknown.push(format!("unknown field \"{k}\""));
        }
    }
    if let Some(Value::Object(meta)) = obj.get("metadata") {
        for k in meta.keys() {
            if !META_FIELDS.contains(&k.as_str()) {
                unknown.push(format!("unknown field \"metadata.{k}\""));
            }
        }
    }
    match fv {
        FieldValidation::Strict if !unknown.is_empty() => Err(ApiError::bad_request(&format!(
            "strict decoding error: {}",
            unknown.join(", ")
        ))),
        FieldValidation::Warn => Ok((obj, unknown)),
        _ => Ok((obj, Vec::new())),
    }
}

fn meta(obj: &Map<String, Value>) -> Map<String, Value> {
    obj.get("metadata")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

pub fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Fills in server-set fields for a create and validates. `namespace` is the URL namespace.
pub fn prepare_create(
    kind: Kind,
    mut obj: Map<String, Value>,
    namespace: Option<&str>,
) -> Result<Value, ApiError> {
    let mut m = meta(&obj);
    if let Some(ns) = namespace {
        match m.get("namespace").and_then(Value::as_str) {
            None | Some("") => {
                m.insert("namespace".into(), json!(ns));
            }
            Some(body_ns) if body_ns != ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            Some(_) => {}
        }
    } else {
        m.remove("namespace");
    }
    let name = m
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let generate = m
        .get("generateName")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if name.is_empty() && !generate.is_empty() {
        m.insert(
            "name".into(),
            json!(format!("{generate}{}", random_suffix())),
        );
    }
    m.insert("uid".into(), json!(new_uid()));
    m.insert("creationTimestamp".into(), json!(now_rfc3339()));
    for f in [
        "resourceVersion",
        "selfLink",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
    ] {
        m.remove(f);
    }
    if kind == Kind::Namespace {
        let final_name = m
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let labels = m.entry("labels").or_insert_with(|| json!({}));
        if let Value::Object(l) = labels {
            l.insert("kubernetes.io/metadata.name".into(), json!(final_name));
        }
        obj.insert("spec".into(), json!({"finalizers": ["kubernetes"]}));
        obj.insert("status".into(), json!({"phase": "Active"}));
    }
    obj.insert("metadata".into(), Value::Object(m));
    let obj = canonical(kind, Value::Object(obj))?;
    validate(kind, &obj, None)?;
    Ok(obj)
}

/// Carries server-owned fields over from the stored object and validates the update.
pub fn prepare_update(
    kind: Kind,
    mut obj: Map<String, Value>,
    old: &Value,
    url_ns: Option<&str>,
    url_name: &str,
) -> Result<Value, ApiError> {
    let mut m = meta(&obj);
    let name = m.get("name").and_then(Value::as_str).unwrap_or("");
    if name != url_name {
        return Err(ApiError::bad_request(&format!(
            "the name of the object ({name}) does not match the name on the URL ({url_name})"
        )));
    }
    if let Some(ns) = url_ns {
        match m.get("namespace").and_then(Value::as_str) {
            None | Some("") => {
                m.insert("namespace".into(), json!(ns));
            }
            Some(b) if b != ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            Some(_) => {}
        }
    }
    let old_uid = meta_str(old, "uid");
    let uid = m.get("uid").and_then(Value::as_str).unwrap_or("");
    if !uid.is_empty() && uid != old_uid {
        return Err(ApiError::conflict(
            kind.resource(),
            url_name,
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {old_uid}"
            ),
        ));
    }
    for f in [
        "uid",
        "creationTimestamp",
        "generateName",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        match old.get("metadata").and_then(|om| om.get(f)) {
            Some(v) => {
                m.insert(f.into(), v.clone());
            }
            None => {
                m.remove(f);
            }
        }
    }
    m.remove("resourceVersion");
    m.remove("selfLink");
    if kind == Kind::Namespace {
        // Status is owned by the status subresource; spec.finalizers keep their stored value.
        if let Some(s) = old.get("status") {
            obj.insert("status".into(), s.clone());
        }
        let labels = m.entry("labels").or_insert_with(|| json!({}));
        if let Value::Object(l) = labels {
            l.insert("kubernetes.io/metadata.name".into(), json!(url_name));
        }
    }
    obj.insert("metadata".into(), Value::Object(m));
    let obj = canonical(kind, Value::Object(obj))?;
    validate(kind, &obj, Some(old))?;
    Ok(obj)
}

fn validate(kind: Kind, obj: &Value, old: Option<&Value>) -> Result<(), ApiError> {
    let name = meta_str(obj, "name");
    let mut errs = Vec::new();
    if name.is_empty() {
        errs.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else if kind == Kind::Namespace {
        errs.extend(dns_label("metadata.name", name));
    } else {
        errs.extend(dns_subdomain("metadata.name", name));
    }
    if kind.namespaced() && meta_str(obj, "namespace").is_empty() {
        errs.push(FieldError::required("metadata.namespace", ""));
    }
    let key_err = "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')";
    for field in ["data", "binaryData"] {
        if kind == Kind::Namespace || (kind == Kind::Secret && field == "binaryData") {
            continue;
        }
        if let Some(Value::Object(d)) = obj.get(field) {
            for k in d.keys() {
                let ok = !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c));
                if !ok {
                    errs.push(FieldError::invalid(&format!("{field}[{k}]"), k, key_err));
                } else if k == "." || k == ".." {
                    errs.push(FieldError::invalid(
                        &format!("{field}[{k}]"),
                        k,
                        &format!("must not be '{k}'"),
                    ));
                }
            }
        }
    }
    if let Some(old) = old
        && kind != Kind::Namespace
        && old.get("immutable") == Some(&json!(true))
    {
        for field in ["data", "binaryData"] {
            if obj.get(field) != old.get(field) {
                errs.push(FieldError::forbidden(
                    field,
                    "field is immutable when `immutable` is set",
                ));
            }
        }
        if obj.get("immutable") != Some(&json!(true)) {
            errs.push(FieldError::forbidden(
                "immutable",
                "field is immutable when `immutable` is set",
            ));
        }
    }
    if let Some(old) = old
        && kind == Kind::Secret
    {
        let t = obj.get("type").and_then(Value::as_str).unwrap_or("");
        if Some(t) != old.get("type").and_then(Value::as_str) {
            errs.push(FieldError::invalid("type", t, "field is immutable"));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(kind.kind(), name, &errs))
    }
}

fn dns_label(field: &str, v: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if v.len() > 63 {
        errs.push(FieldError::invalid(
            field,
            v,
            "must be no more than 63 characters",
        ));
    }
    if !is_label(v) {
        errs.push(FieldError::invalid(field, v, "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"));
    }
    errs
}

fn dns_subdomain(field: &str, v: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if v.len() > 253 {
        errs.push(FieldError::invalid(
            field,
            v,
            "must be no more than 253 characters",
        ));
    }
    if !v.split('.').all(is_label) {
        errs.push(FieldError::invalid(field, v, "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"));
    }
    errs
}

fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Rebuilds `obj` in Go struct field order, dropping unknown fields, defaulting Secret `type`,
/// folding `stringData` into `data` and normalising base64 (as decoding into `[]byte` and back does).
pub fn canonical(kind: Kind, obj: Value) -> Result<Value, ApiError> {
    let Value::Object(mut src) = obj else {
        return Err(ApiError::bad_request("object is not a JSON object"));
    };
    let bad_b64 = |e: String| {
        ApiError::bad_request(&format!(
            "{k} in version \"v1\" cannot be handled as a {k}: {e}",
            k = kind.kind()
        ))
    };
    let mut out = Map::new();
    out.insert("kind".into(), json!(kind.kind()));
    out.insert("apiVersion".into(), json!("v1"));
    out.insert("metadata".into(), canonical_meta(src.remove("metadata")));
    match kind {
        Kind::Secret => {
            if let Some(v @ Value::Bool(_)) = src.remove("immutable") {
                out.insert("immutable".into(), v);
            }
            let mut data = bytes_map(src.remove("data")).map_err(bad_b64)?;
            if let Some(Value::Object(sd)) = src.remove("stringData") {
                for (k, v) in sd {
                    let s = v.as_str().unwrap_or("").to_string();
                    data.insert(k, base64::engine::general_purpose::STANDARD.encode(s));
                }
            }
            if !data.is_empty() {
                out.insert("data".into(), json!(data));
            }
            let t = src
                .remove("type")
                .and_then(|t| t.as_str().map(String::from))
                .unwrap_or_default();
            out.insert(
                "type".into(),
                json!(if t.is_empty() {
                    "Opaque".to_string()
                } else {
                    t
                }),
            );
        }
        Kind::ConfigMap => {
            if let Some(v @ Value::Bool(_)) = src.remove("immutable") {
                out.insert("immutable".into(), v);
            }
            if let Some(Value::Object(d)) = src.remove("data") {
                let sorted: std::collections::BTreeMap<String, Value> = d.into_iter().collect();
                if !sorted.is_empty() {
                    out.insert("data".into(), json!(sorted));
                }
            }
            let bin = bytes_map(src.remove("binaryData")).map_err(bad_b64)?;
            if !bin.is_empty() {
                out.insert("binaryData".into(), json!(bin));
            }
        }
        Kind::Namespace => {
            let spec = src
                .remove("spec")
                .and_then(|s| s.as_object().cloned())
                .unwrap_or_default();
            let mut spec_out = Map::new();
            if let Some(Value::Array(f)) = spec.get("finalizers")
                && !f.is_empty()
            {
                spec_out.insert("finalizers".into(), Value::Array(f.clone()));
            }
            out.insert("spec".into(), Value::Object(spec_out));
            let status = src
                .remove("status")
                .and_then(|s| s.as_object().cloned())
                .unwrap_or_default();
            let mut status_out = Map::new();
            for f in ["phase", "conditions"] {
                if let Some(v) = status.get(f)
                    && !v.is_null()
                    && v != &json!("")
                {
                    status_out.insert(f.into(), v.clone());
                }
            }
            out.insert("status".into(), Value::Object(status_out));
        }
    }
    Ok(Value::Object(out))
}

fn canonical_meta(meta: Option<Value>) -> Value {
    let src = meta
        .and_then(|m| m.as_object().cloned())
        .unwrap_or_default();
    let mut out = Map::new();
    for f in META_FIELDS {
        let Some(v) = src.get(*f) else {
            if *f == "creationTimestamp" {
                // metav1.Time is a struct without omitempty: Go always emits it (null when zero).
                out.insert((*f).into(), Value::Null);
            }
            continue;
        };
        let empty = match v {
            Value::Null => true,
            Value::String(s) => s.is_empty(),
            Value::Object(o) => o.is_empty(),
            Value::Array(a) => a.is_empty(),
            Value::Number(n) => n.as_i64() == Some(0),
            Value::Bool(_) => false,
        };
        if empty {
            if *f == "creationTimestamp" {
                out.insert((*f).into(), Value::Null);
            }
            continue;
        }
        let v = match v {
            Value::Object(o) if *f == "labels" || *f == "annotations" => {
                json!(o.iter().collect::<std::collections::BTreeMap<_, _>>())
            }
            other => other.clone(),
        };
        out.insert((*f).into(), v);
    }
    Value::Object(out)
}

/// A `map[string][]byte`: values must be standard base64; re-encoded canonically, keys sorted.
fn bytes_map(v: Option<Value>) -> Result<std::collections::BTreeMap<String, String>, String> {
    let mut out = std::collections::BTreeMap::new();
    let Some(Value::Object(m)) = v else {
        return Ok(out);
    };
    for (k, v) in m {
        let s = v.as_str().unwrap_or("");
        let cleaned: String = s.chars().filter(|c| *c != '\r' && *c != '\n').collect();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(cleaned.as_bytes())
            .map_err(|e| format!("illegal base64 data: {e}"))?;
        out.insert(k, base64::engine::general_purpose::STANDARD.encode(raw));
    }
    Ok(out)
}

/// The bytes stored in etcd (before transformation): JSON with `resourceVersion` empty, escaped like
/// Go's encoder, newline-terminated.
pub fn encode_storage(obj: &Value) -> Vec<u8> {
    let mut obj = obj.clone();
    if let Some(Value::Object(m)) = obj.get_mut("metadata") {
        m.remove("resourceVersion");
    }
    let text = serde_json::to_string(&obj).unwrap_or_default();
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out.push('\n');
    out.into_bytes()
}

/// Decodes stored plaintext and sets `resourceVersion` from etcd's mod_revision.
pub fn decode_storage(kind: Kind, plain: &[u8], mod_revision: i64) -> Result<Value, String> {
    // Values a real kube-apiserver wrote are protobuf; read them too (as upstream reads JSON).
    let mut v: Value = if plain.starts_with(b"k8s\x00") {
        super::protobuf::decode(kind, plain)?
    } else {
        serde_json::from_slice(plain)
            .map_err(|e| format!("couldn't decode stored {}: {e}", kind.kind()))?
    };
    let Some(Value::Object(m)) = v.get_mut("metadata") else {
        return Err(format!("stored {} has no metadata", kind.kind()));
    };
    m.insert("resourceVersion".into(), json!(mod_revision.to_string()));
    // Keep Go's field order: resourceVersion sits after uid.
    canonical(kind, v).map_err(|e| e.body.to_string())
}

fn new_uid() -> String {
    let mut b = [0u8; 16];
    rand::rng().fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// `names.SimpleNameGenerator`: 5 characters from a vowel-free alphabet.
fn random_suffix() -> String {
    const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHA[rng.random_range(0..ALPHA.len())] as char)
        .collect()
}

pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_encoding_is_go_like() {
        let body = br#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"s1","namespace":"default","resourceVersion":"5","labels":{"b":"1","a":"<&>"}},"stringData":{"k":"v"},"data":{"z":"eA=="}}"#;
        let (obj, warnings) = decode_body(Kind::Secret, body, FieldValidation::Warn).unwrap();
        assert!(warnings.is_empty());
        let obj = prepare_create(Kind::Secret, obj, Some("default")).unwrap();
        let bytes = encode_storage(&obj);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.ends_with("}\n"));
        assert!(text.starts_with(r#"{"kind":"Secret","apiVersion":"v1","metadata":{"name":"s1","namespace":"default","uid":""#));
        assert!(text.contains(r#""labels":{"a":"\u003c\u0026\u003e","b":"1"}"#));
        assert!(text.contains(r#"},"data":{"k":"dg==","z":"eA=="},"type":"Opaque"}"#));
        assert!(!text.contains("resourceVersion"));
        let back = decode_storage(Kind::Secret, text.as_bytes(), 42).unwrap();
        assert_eq!(meta_str(&back, "resourceVersion"), "42");
    }

    #[test]
    fn strict_rejects_unknown_fields() {
        let body = br#"{"kind":"Secret","metadata":{"name":"s","foo":1},"bar":2}"#;
        let e = decode_body(Kind::Secret, body, FieldValidation::Strict).unwrap_err();
        assert_eq!(
            e.body["message"],
            r#"strict decoding error: unknown field "bar", unknown field "metadata.foo""#
        );
        let (_, w) = decode_body(Kind::Secret, body, FieldValidation::Warn).unwrap();
        assert_eq!(w.len(), 2);
    }

    #[test]
    fn invalid_name_is_422_with_causes() {
        let (obj, _) = decode_body(
            Kind::Secret,
            br#"{"metadata":{"name":"Bad_Name"}}"#,
            FieldValidation::Ignore,
        )
        .unwrap();
        let e = prepare_create(Kind::Secret, obj, Some("default")).unwrap_err();
        assert_eq!(e.code, 422);
        assert_eq!(e.body["reason"], "Invalid");
        assert_eq!(e.body["details"]["causes"][0]["field"], "metadata.name");
        assert!(e.body["message"].as_str().unwrap().starts_with("Secret \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"));
    }
}
