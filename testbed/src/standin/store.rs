//! etcd storage with upstream's semantics (`apiserver:pkg/storage/etcd3/store.go`): transformed values,
//! resourceVersion = mod_revision, conditional writes, the no-op-write skip of `GuaranteedUpdate`,
//! consistent paginated lists with `continue` tokens (`storage/continue.go`).

use std::sync::Arc;

use base64::Engine;
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use serde_json::{Value, json};

use super::encryption::{GroupResource, ResourceTransformers};
use super::objects::{self, Kind};
use super::status::ApiError;
use super::transform::Transformer;

#[derive(Clone)]
pub struct Store {
    client: Client,
    /// `path.Join("/", --etcd-prefix)`, without a trailing slash.
    prefix: String,
    transformers: Arc<ResourceTransformers>,
}

/// An object as read from etcd.
pub struct Current {
    pub obj: Value,
    pub mod_revision: i64,
    /// The plaintext (untransformed) bytes, compared with the new bytes to skip no-op writes.
    pub plain: Vec<u8>,
    pub stale: bool,
}

/// What a list request asks for.
#[derive(Default)]
pub struct ListOptions {
    pub limit: i64,
    pub continue_token: String,
    pub resource_version: String,
    pub resource_version_match: String,
    pub field_selector: Vec<Requirement>,
    pub label_selector: Vec<Requirement>,
}

/// One selector requirement (`k=v`, `k!=v`, `k`, `!k`).
#[derive(Clone, Debug)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

pub struct ListResult {
    pub items: Vec<Value>,
    pub resource_version: i64,
    pub continue_token: String,
    pub remaining_item_count: Option<i64>,
}

const COMPACTED: &str = "required revision has been compacted";
const FUTURE_REV: &str = "required revision is a future revision";

fn etcd_err(e: etcd_client::Error) -> ApiError {
    ApiError::internal(&format!("etcd: {e}"))
}

/// The end of the range of keys starting with `prefix` (`clientv3.GetPrefixRangeEnd`).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Store {
    pub async fn new(
        client: Client,
        etcd_prefix: &str,
        transformers: Arc<ResourceTransformers>,
    ) -> Self {
        let trimmed = etcd_prefix.trim_matches('/');
        let prefix = if trimmed.is_empty() {
            String::new()
        } else {
            format!("/{trimmed}")
        };
        Self {
            client,
            prefix,
            transformers,
        }
    }

    pub fn key(&self, kind: Kind, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) if kind.namespaced() => {
                format!("{}/{}/{ns}/{name}", self.prefix, kind.resource())
            }
            _ => format!("{}/{}/{name}", self.prefix, kind.resource()),
        }
    }

    fn transformer(&self, kind: Kind) -> Arc<dyn Transformer> {
        self.transformers
            .for_resource(&GroupResource::core(kind.resource()))
    }

    /// A cheap etcd round trip for /readyz and /healthz.
    pub async fn ping(&self) -> Result<(), String> {
        let mut kv = self.client.kv_client();
        let fut = kv.get(
            format!("{}/health-probe", self.prefix),
            Some(GetOptions::new().with_count_only()),
        );
        match tokio::time::timeout(std::time::Duration::from_secs(2), fut).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".into()),
        }
    }

    pub async fn current_revision(&self) -> Result<i64, ApiError> {
        let mut kv = self.client.kv_client();
        let resp = kv
            .get(
                format!("{}/", self.prefix),
                Some(GetOptions::new().with_count_only()),
            )
            .await
            .map_err(etcd_err)?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
    }

    /// GET: 404 if absent, 500 InternalError if the value cannot be transformed or decoded.
    pub async fn get(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<Current>, ApiError> {
        let key = self.key(kind, namespace, name);
        let mut kv = self.client.kv_client();
        let resp = kv.get(key.as_bytes(), None).await.map_err(etcd_err)?;
        let Some(item) = resp.kvs().first() else {
            return Ok(None);
        };
        let (plain, stale) = self
            .transformer(kind)
            .transform_from_storage(item.value(), key.as_bytes())
            .await
            .map_err(|e| ApiError::internal(&e.to_string()))?;
        let obj = objects::decode_storage(kind, &plain, item.mod_revision())
            .map_err(|e| ApiError::internal(&e))?;
        Ok(Some(Current {
            obj,
            mod_revision: item.mod_revision(),
            plain,
            stale,
        }))
    }

    /// Create: fails with AlreadyExists when the key exists. Returns the object with its resourceVersion.
    pub async fn create(&self, kind: Kind, obj: Value, dry_run: bool) -> Result<Value, ApiError> {
        let name = objects::meta_str(&obj, "name").to_string();
        let ns = objects::meta_str(&obj, "namespace").to_string();
        let key = self.key(kind, Some(&ns), &name);
        let plain = objects::encode_storage(&obj);
        let value = self
            .transformer(kind)
            .transform_to_storage(&plain, key.as_bytes())
            .await
            .map_err(|e| ApiError::internal(&e.to_string()))?;
        let mut kv = self.client.kv_client();
        if dry_run {
            let exists = kv
                .get(key.as_bytes(), Some(GetOptions::new().with_count_only()))
                .await
                .map_err(etcd_err)?;
            if exists.count() > 0 {
                return Err(ApiError::already_exists(kind.resource(), &name));
            }
            return Ok(obj);
        }
        let txn = Txn::new()
            .when(vec![Compare::mod_revision(
                key.as_bytes(),
                CompareOp::Equal,
                0,
            )])
            .and_then(vec![TxnOp::put(key.as_bytes(), value, None)]);
        let resp = kv.txn(txn).await.map_err(etcd_err)?;
        if !resp.succeeded() {
            return Err(ApiError::already_exists(kind.resource(), &name));
        }
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        Ok(with_rv(obj, rev))
    }

    /// PUT, like `GuaranteedUpdate`: `update` maps the current object to the new one (it may fail,
    /// e.g. with a 409 on a resourceVersion mismatch). No etcd write when the new bytes equal the
    /// stored plaintext and the value is not stale; otherwise a write conditioned on mod_revision,
    /// retried on a concurrent change.
    pub async fn update<F>(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
        dry_run: bool,
        update: F,
    ) -> Result<Value, ApiError>
    where
        F: Fn(&Current) -> Result<Value, ApiError>,
    {
        let key = self.key(kind, namespace, name);
        let mut kv = self.client.kv_client();
        loop {
            let Some(cur) = self.get(kind, namespace, name).await? else {
                return Err(ApiError::not_found(kind.resource(), name));
            };
            let new = update(&cur)?;
            let plain = objects::encode_storage(&new);
            if !cur.stale && plain == cur.plain {
                return Ok(with_rv(new, cur.mod_revision));
            }
            if dry_run {
                return Ok(with_rv(new, cur.mod_revision));
            }
            let value = self
                .transformer(kind)
                .transform_to_storage(&plain, key.as_bytes())
                .await
                .map_err(|e| ApiError::internal(&e.to_string()))?;
            let txn = Txn::new()
                .when(vec![Compare::mod_revision(
                    key.as_bytes(),
                    CompareOp::Equal,
                    cur.mod_revision,
                )])
                .and_then(vec![TxnOp::put(key.as_bytes(), value, None)]);
            let resp = kv.txn(txn).await.map_err(etcd_err)?;
            if resp.succeeded() {
                let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
                return Ok(with_rv(new, rev));
            }
            tracing::debug!(%key, "concurrent modification, retrying update");
        }
    }

    /// DELETE with optional preconditions; returns the deleted object.
    pub async fn delete(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
        precondition_uid: Option<&str>,
        precondition_rv: Option<&str>,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let key = self.key(kind, namespace, name);
        let mut kv = self.client.kv_client();
        loop {
            let Some(cur) = self.get(kind, namespace, name).await? else {
                return Err(ApiError::not_found(kind.resource(), name));
            };
            if let Some(uid) = precondition_uid.filter(|u| !u.is_empty()) {
                let have = objects::meta_str(&cur.obj, "uid");
                if uid != have {
                    return Err(ApiError::conflict(
                        kind.resource(),
                        name,
                        &format!(
                            "Precondition failed: UID in precondition: {uid}, UID in object meta: {have}"
                        ),
                    ));
                }
            }
            if let Some(rv) = precondition_rv.filter(|r| !r.is_empty()) {
                let have = cur.mod_revision.to_string();
                if rv != have {
                    return Err(ApiError::conflict(
                        kind.resource(),
                        name,
                        &format!(
                            "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {have}"
                        ),
                    ));
                }
            }
            if dry_run {
                return Ok(cur.obj);
            }
            let txn = Txn::new()
                .when(vec![Compare::mod_revision(
                    key.as_bytes(),
                    CompareOp::Equal,
                    cur.mod_revision,
                )])
                .and_then(vec![TxnOp::delete(key.as_bytes(), None)]);
            let resp = kv.txn(txn).await.map_err(etcd_err)?;
            if resp.succeeded() {
                return Ok(cur.obj);
            }
        }
    }

    /// LIST (all namespaces when `namespace` is None) with upstream's paging, snapshot and expiry rules.
    pub async fn list(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        opts: &ListOptions,
    ) -> Result<ListResult, ApiError> {
        let key_prefix = match namespace {
            Some(ns) if kind.namespaced() => format!("{}/{}/{ns}/", self.prefix, kind.resource()),
            _ => format!("{}/{}/", self.prefix, kind.resource()),
        };
        // resourceVersion=0 without continue is served from the watch cache upstream, which ignores limit.
        let paging =
            opts.limit > 0 && !(opts.resource_version == "0" && opts.continue_token.is_empty());
        let (from_key, mut revision) = if !opts.continue_token.is_empty() {
            if !opts.resource_version.is_empty() && opts.resource_version != "0" {
                return Err(ApiError::bad_request(
                    "specifying resource version is not allowed when using continue",
                ));
            }
            let (from, rv) = decode_continue(&opts.continue_token, &key_prefix)
                .map_err(|e| ApiError::bad_request(&format!("invalid continue token: {e}")))?;
            (from, rv.max(0))
        } else {
            let rev = match opts.resource_version.as_str() {
                "" | "0" => 0,
                rv => {
                    let n: i64 = rv.parse().map_err(|_| {
                        ApiError::bad_request(&format!("invalid resource version: {rv}"))
                    })?;
                    if opts.resource_version_match == "Exact" {
                        n
                    } else {
                        let cur = self.current_revision().await?;
                        if n > cur {
                            return Err(ApiError::too_large_resource_version(n, cur));
                        }
                        0
                    }
                }
            };
            (key_prefix.clone(), rev)
        };
        let has_selectors = !opts.field_selector.is_empty() || !opts.label_selector.is_empty();
        let end = prefix_end(&key_prefix);
        let transformer = self.transformer(kind);
        let mut kv = self.client.kv_client();
        let mut items = Vec::new();
        let mut start = from_key.clone().into_bytes();
        let mut last_key: Option<Vec<u8>> = None;
        let mut more;
        let mut remaining = None;
        loop {
            let mut get = GetOptions::new().with_range(end.clone());
            if paging {
                get = get.with_limit(opts.limit);
            }
            if revision > 0 {
                get = get.with_revision(revision);
            }
            let resp = match kv.get(start.clone(), Some(get)).await {
                Ok(r) => r,
                Err(e) if e.to_string().contains(FUTURE_REV) => {
                    let current = self.current_revision().await?;
                    return Err(ApiError::too_large_resource_version(revision, current));
                }
                Err(e) => {
                    return Err(self.interpret_list_error(
                        e,
                        &opts.continue_token,
                        &from_key,
                        &key_prefix,
                    ));
                }
            };
            if revision == 0 {
                revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            }
            more = resp.more();
            for item in resp.kvs() {
                let key_text = String::from_utf8_lossy(item.key()).to_string();
                let (plain, _) = transformer
                    .transform_from_storage(item.value(), item.key())
                    .await
                    .map_err(|e| {
                        ApiError::internal(&format!("unable to transform key \"{key_text}\": {e}"))
                    })?;
                let mut obj =
                    objects::decode_storage(kind, &plain, item.mod_revision()).map_err(|e| {
                        ApiError::internal(&format!("unable to decode key \"{key_text}\": {e}"))
                    })?;
                last_key = Some(item.key().to_vec());
                if !matches(&obj, &opts.field_selector, &opts.label_selector) {
                    continue;
                }
                if let Value::Object(m) = &mut obj {
                    m.remove("kind");
                    m.remove("apiVersion");
                }
                items.push(obj);
                if paging && items.len() as i64 >= opts.limit {
                    break;
                }
            }
            if !has_selectors && more {
                remaining = Some(resp.count() - resp.kvs().len() as i64);
            }
            let filled = !paging || items.len() as i64 >= opts.limit;
            if filled || !more {
                break;
            }
            // Selectors filtered items out: fetch the next chunk after the last examined key.
            let mut next = last_key.clone().unwrap_or_default();
            next.push(0);
            start = next;
        }
        // With selectors, "more" must mean more keys after the last examined one.
        if paging
            && has_selectors
            && let Some(lk) = &last_key
        {
            let mut next = lk.clone();
            next.push(0);
            let resp = kv
                .get(
                    next,
                    Some(
                        GetOptions::new()
                            .with_range(end.clone())
                            .with_revision(revision)
                            .with_count_only(),
                    ),
                )
                .await
                .map_err(etcd_err)?;
            more = resp.count() > 0;
        }
        let continue_token = match (&last_key, paging && more) {
            (Some(lk), true) => {
                let mut next = String::from_utf8_lossy(lk).to_string();
                next.push('\0');
                encode_continue(&next, &key_prefix, revision).map_err(|e| ApiError::internal(&e))?
            }
            _ => String::new(),
        };
        Ok(ListResult {
            items,
            resource_version: revision,
            continue_token,
            remaining_item_count: if continue_token_is_set(paging, more) {
                remaining
            } else {
                None
            },
        })
    }

    fn interpret_list_error(
        &self,
        e: etcd_client::Error,
        token: &str,
        from_key: &str,
        key_prefix: &str,
    ) -> ApiError {
        let text = e.to_string();
        if text.contains(COMPACTED) {
            if !token.is_empty() {
                // `handleCompactedErrorForPaging`: a fresh token at rv -1 ("continue at latest").
                return match encode_continue(from_key, key_prefix, -1) {
                    Ok(t) => ApiError::expired(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
                        Some(&t),
                    ),
                    Err(_) => ApiError::expired(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                        None,
                    ),
                };
            }
            return ApiError::expired(
                "The resourceVersion for the provided list is too old.",
                None,
            );
        }
        etcd_err(e)
    }

    /// Creates the namespaces a fresh cluster has (upstream's system namespaces controller).
    pub async fn ensure_system_namespaces(&self) -> Result<(), ApiError> {
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            if self.get(Kind::Namespace, None, ns).await?.is_some() {
                continue;
            }
            let body = json!({"metadata": {"name": ns}});
            let Value::Object(m) = body else { continue };
            let obj = objects::prepare_create(Kind::Namespace, m, None)?;
            match self.create(Kind::Namespace, obj, false).await {
                Ok(_) => {}
                Err(e) if e.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

fn continue_token_is_set(paging: bool, more: bool) -> bool {
    paging && more
}

fn with_rv(mut obj: Value, rev: i64) -> Value {
    if let Some(Value::Object(m)) = obj.get_mut("metadata") {
        m.insert("resourceVersion".into(), json!(rev.to_string()));
    }
    objects::canonical(kind_of(&obj), obj.clone()).unwrap_or(obj)
}

fn kind_of(obj: &Value) -> Kind {
    match obj.get("kind").and_then(Value::as_str) {
        Some("ConfigMap") => Kind::ConfigMap,
        Some("Namespace") => Kind::Namespace,
        _ => Kind::Secret,
    }
}

fn matches(obj: &Value, fields: &[Requirement], labels: &[Requirement]) -> bool {
    let field = |k: &str| -> Option<String> {
        match k {
            "metadata.name" => Some(objects::meta_str(obj, "name").to_string()),
            "metadata.namespace" => Some(objects::meta_str(obj, "namespace").to_string()),
            "type" => obj.get("type").and_then(Value::as_str).map(String::from),
            "status.phase" => obj
                .get("status")
                .and_then(|s| s.get("phase"))
                .and_then(Value::as_str)
                .map(String::from),
            _ => None,
        }
    };
    let label = |k: &str| -> Option<String> {
        obj.get("metadata")
            .and_then(|m| m.get("labels"))
            .and_then(|l| l.get(k))
            .and_then(Value::as_str)
            .map(String::from)
    };
    let check = |reqs: &[Requirement], get: &dyn Fn(&str) -> Option<String>| {
        reqs.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k).as_deref() == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k).as_deref() != Some(v.as_str()),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
        })
    };
    check(fields, &field) && check(labels, &label)
}

/// Parses `a=b,c!=d,e,!f` (labels) / `a=b,c!=d` (fields).
pub fn parse_selector(
    s: &str,
    allowed_fields: Option<&[&str]>,
) -> Result<Vec<Requirement>, ApiError> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let req = if let Some((k, v)) = part.split_once("!=") {
            Requirement::NotEquals(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = part.split_once("==") {
            Requirement::Equals(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = part.split_once('=') {
            Requirement::Equals(k.trim().into(), v.trim().into())
        } else if allowed_fields.is_some() {
            return Err(ApiError::bad_request(&format!(
                "invalid selector: '{s}'; can't understand '{part}'"
            )));
        } else if let Some(k) = part.strip_prefix('!') {
            Requirement::NotExists(k.trim().into())
        } else {
            Requirement::Exists(part.into())
        };
        if let Some(allowed) = allowed_fields {
            let key = match &req {
                Requirement::Equals(k, _) | Requirement::NotEquals(k, _) => k.as_str(),
                Requirement::Exists(k) | Requirement::NotExists(k) => k.as_str(),
            };
            if !allowed.contains(&key) {
                return Err(ApiError::bad_request(&format!(
                    "field label not supported: {key}"
                )));
            }
        }
        out.push(req);
    }
    Ok(out)
}

/// `storage.EncodeContinue`: base64url (no padding) JSON `{"v":"meta.k8s.io/v1","rv":N,"start":"<key after prefix>"}`.
pub fn encode_continue(key: &str, key_prefix: &str, rv: i64) -> Result<String, String> {
    let Some(next) = key.strip_prefix(key_prefix) else {
        return Err("unable to encode next field: the key and key prefix do not match".to_string());
    };
    let body = serde_json::to_vec(&json!({"v": "meta.k8s.io/v1", "rv": rv, "start": next}))
        .map_err(|e| e.to_string())?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(body))
}

/// `storage.DecodeContinue`: returns the full key to start from and the token's resourceVersion.
pub fn decode_continue(token: &str, key_prefix: &str) -> Result<(String, i64), String> {
    let data = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|e| format!("continue key is not valid: {e}"))?;
    let v: Value =
        serde_json::from_slice(&data).map_err(|e| format!("continue key is not valid: {e}"))?;
    if v.get("v").and_then(Value::as_str) != Some("meta.k8s.io/v1") {
        return Err("continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)".into());
    }
    let rv = v.get("rv").and_then(Value::as_i64).unwrap_or(0);
    let start = v.get("start").and_then(Value::as_str).unwrap_or("");
    if start.is_empty() {
        return Err("continue key is not valid: encoded start key empty".into());
    }
    let key = if start.starts_with('/') {
        start.to_string()
    } else {
        format!("/{start}")
    };
    if clean_path(&key) != key {
        return Err(format!("continue key is not valid: {}", start));
    }
    Ok((format!("{key_prefix}{}", &key[1..]), rv))
}

/// Go's `path.Clean` for absolute paths (enough to reject `..`, `.`, `//` and trailing slashes).
fn clean_path(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_token_round_trip_matches_upstream_format() {
        let t =
            encode_continue("/registry/secrets/default/s1\0", "/registry/secrets/", 42).unwrap();
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&t)
            .unwrap();
        assert_eq!(
            String::from_utf8(raw).unwrap(),
            "{\"v\":\"meta.k8s.io/v1\",\"rv\":42,\"start\":\"default/s1\\u0000\"}"
        );
        let (from, rv) = decode_continue(&t, "/registry/secrets/").unwrap();
        assert_eq!((from.as_str(), rv), ("/registry/secrets/default/s1\0", 42));
        let bad = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"v":"meta.k8s.io/v1","rv":1,"start":"../x"}"#);
        assert!(decode_continue(&bad, "/registry/secrets/").is_err());
    }

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(
            prefix_end("/registry/secrets/"),
            b"/registry/secrets0".to_vec()
        );
    }
}
