//! The HTTP API: health, version, discovery and core/v1 namespaces, secrets, configmaps, with
//! upstream's paths, status codes and bodies. JSON only (a client that also accepts JSON gets JSON).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::auth::{PeerUser, TokenAuth, User};
use super::objects::{self, FieldValidation, Kind};
use super::status::ApiError;
use super::store::{self, ListOptions, Store};
use super::transform::Metrics;

pub const GIT_VERSION: &str = "v1.32.4-atrest-standin";

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub metrics: Metrics,
    pub tokens: Arc<TokenAuth>,
    pub anonymous_auth: bool,
    /// `host:port` advertised in `/api` `serverAddressByClientCIDRs`.
    pub advertise: String,
}

pub fn router(state: AppState) -> axum::Router {
    axum::Router::new()
        .fallback(handle)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ))
        .with_state(state)
}

/// A JSON response written like Go's `json.Encoder` (trailing newline).
pub fn json_response(code: StatusCode, body: &Value) -> Response {
    let mut text = serde_json::to_vec(body).unwrap_or_default();
    text.push(b'\n');
    let mut resp = Response::new(Body::from(text));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn text_response(code: StatusCode, text: String) -> Response {
    let mut resp = Response::new(Body::from(text));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Paths `system:public-info-viewer` lets anonymous users read.
fn public_path(path: &str) -> bool {
    ["/healthz", "/livez", "/readyz", "/version"]
        .iter()
        .any(|p| path == *p || path.starts_with(&format!("{p}/")))
}

async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<PeerUser>()
        .cloned()
        .unwrap_or_default();
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string());
    let user: Option<User> = match (peer.0, bearer) {
        (Some(u), _) => Some(u),
        (None, Some(token)) => match state.tokens.authenticate(&token) {
            Some(u) => Some(u),
            None => return ApiError::unauthorized().into_response(),
        },
        (None, None) => None,
    };
    match user {
        Some(u) => {
            req.extensions_mut().insert(u);
            next.run(req).await
        }
        None if !state.anonymous_auth => ApiError::unauthorized().into_response(),
        None if public_path(req.uri().path()) => next.run(req).await,
        None => {
            let verb = match *req.method() {
                Method::GET | Method::HEAD => "get",
                Method::POST => "post",
                Method::PUT => "put",
                Method::DELETE => "delete",
                _ => "patch",
            };
            ApiError::forbidden("system:anonymous", verb, req.uri().path()).into_response()
        }
    }
}

fn query_map(query: Option<&str>) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.insert(percent_decode(k), percent_decode(v));
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(b)) => {
                out.push(b);
                i += 2;
            }
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(State(state): State<AppState>, method: Method, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let query = query_map(req.uri().query());
    let headers = req.headers().clone();
    let body = match axum::body::to_bytes(req.into_body(), 3 * 1024 * 1024).await {
        Ok(b) => b,
        Err(e) => {
            return ApiError::bad_request(&format!("reading request body: {e}")).into_response();
        }
    };
    match route(&state, &method, &path, &query, &headers, body).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn route(
    state: &AppState,
    method: &Method,
    path: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let segs: Vec<&str> = if segs == [""] { Vec::new() } else { segs };
    match segs.as_slice() {
        ["healthz", rest @ ..] | ["readyz", rest @ ..] => {
            return health(state, segs[0], rest, query).await;
        }
        ["livez", ..] => return Ok(text_response(StatusCode::OK, "ok".into())),
        ["version"] => return Ok(json_response(StatusCode::OK, &version())),
        ["metrics"] => return Ok(text_response(StatusCode::OK, state.metrics.render())),
        ["api"] => {
            return Ok(json_response(
                StatusCode::OK,
                &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": state.advertise}]}),
            ));
        }
        ["apis"] => {
            return Ok(json_response(
                StatusCode::OK,
                &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []}),
            ));
        }
        ["api", "v1"] => return Ok(json_response(StatusCode::OK, &resource_list())),
        // kubectl's client-side validation downloads /openapi/v2 and fails on 404. An empty protobuf
        // document is a valid OpenAPI v2 `Document` with no schemas, so kubectl validates nothing
        // client-side and relies on the server (fieldValidation).
        ["openapi", "v2"] => {
            let mut resp = Response::new(Body::empty());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
                ),
            );
            return Ok(resp);
        }
        ["openapi", ..] => return Err(ApiError::path_not_found()),
        _ => {}
    }
    let dry_run = query.get("dryRun").is_some_and(|v| !v.is_empty());
    let fv = FieldValidation::parse(query.get("fieldValidation").map(String::as_str))?;
    if query.get("watch").is_some_and(|v| v == "true" || v == "1") {
        return Err(ApiError::bad_request(
            "watch is not supported by the atrest kube-apiserver stand-in",
        ));
    }
    // (kind, namespace, name)
    let (kind, ns, name): (Kind, Option<&str>, Option<&str>) = match segs.as_slice() {
        ["api", "v1", "namespaces"] => (Kind::Namespace, None, None),
        ["api", "v1", "namespaces", name] => (Kind::Namespace, None, Some(*name)),
        ["api", "v1", "namespaces", ns, res] => (resource(res)?, Some(*ns), None),
        ["api", "v1", "namespaces", ns, res, name] => (resource(res)?, Some(*ns), Some(*name)),
        ["api", "v1", res] => {
            let k = resource(res)?;
            if *method != Method::GET {
                return Err(ApiError::method_not_allowed());
            }
            (k, None, None)
        }
        _ => return Err(ApiError::path_not_found()),
    };
    if kind == Kind::Namespace && ns.is_some() {
        return Err(ApiError::path_not_found());
    }
    match (method.clone(), name) {
        (Method::GET, None) => list(state, kind, ns, query).await,
        (Method::GET, Some(name)) => {
            let cur = state
                .store
                .get(kind, ns, name)
                .await?
                .ok_or_else(|| ApiError::not_found(kind.resource(), name))?;
            Ok(json_response(StatusCode::OK, &cur.obj))
        }
        (Method::POST, None) => {
            check_content_type(headers)?;
            let (obj, warnings) = objects::decode_body(kind, &body, fv)?;
            if let Some(ns) = ns
                && state.store.get(Kind::Namespace, None, ns).await?.is_none()
            {
                return Err(ApiError::not_found("namespaces", ns));
            }
            let obj = objects::prepare_create(kind, obj, ns)?;
            let created = state.store.create(kind, obj, dry_run).await?;
            Ok(with_warnings(
                json_response(StatusCode::CREATED, &created),
                &warnings,
            ))
        }
        (Method::PUT, Some(name)) => {
            check_content_type(headers)?;
            let (obj, warnings) = objects::decode_body(kind, &body, fv)?;
            let body_rv = obj
                .get("metadata")
                .and_then(|m| m.get("resourceVersion"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            // Secrets, ConfigMaps and Namespaces all allow unconditional update (empty resourceVersion).
            let updated = state
                .store
                .update(kind, ns, name, dry_run, |cur| {
                    if !body_rv.is_empty() && body_rv != cur.mod_revision.to_string() {
                        return Err(ApiError::modified(kind.resource(), name));
                    }
                    objects::prepare_update(kind, obj.clone(), &cur.obj, ns, name)
                })
                .await?;
            Ok(with_warnings(
                json_response(StatusCode::OK, &updated),
                &warnings,
            ))
        }
        (Method::DELETE, Some(name)) => delete(state, kind, ns, name, query, &body, dry_run).await,
        (Method::PATCH, Some(name)) => {
            patch(state, kind, ns, name, headers, &body, dry_run, fv).await
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// PATCH with `application/merge-patch+json` (RFC 7386) or `application/strategic-merge-patch+json`
/// (for these kinds every patched field is a map or scalar, where strategic merge equals merge patch).
#[allow(clippy::too_many_arguments)]
async fn patch(
    state: &AppState,
    kind: Kind,
    ns: Option<&str>,
    name: &str,
    headers: &HeaderMap,
    body: &[u8],
    dry_run: bool,
    fv: FieldValidation,
) -> Result<Response, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let base = ct.split(';').next().unwrap_or("").trim();
    if base != "application/merge-patch+json" && base != "application/strategic-merge-patch+json" {
        return Err(ApiError::unsupported_media_type_patch(ct));
    }
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(&format!("error decoding patch: {e}")))?;
    let patch_rv = patch
        .get("metadata")
        .and_then(|m| m.get("resourceVersion"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let warnings = std::sync::Mutex::new(Vec::new());
    let updated = state
        .store
        .update(kind, ns, name, dry_run, |cur| {
            if !patch_rv.is_empty() && patch_rv != cur.mod_revision.to_string() {
                return Err(ApiError::modified(kind.resource(), name));
            }
            let mut merged = cur.obj.clone();
            merge_patch(&mut merged, &patch);
            let text = serde_json::to_vec(&merged).unwrap_or_default();
            let (obj, w) = objects::decode_body(kind, &text, fv)?;
            if let Ok(mut all) = warnings.lock() {
                *all = w;
            }
            objects::prepare_update(kind, obj, &cur.obj, ns, name)
        })
        .await?;
    let warnings = warnings.into_inner().unwrap_or_default();
    Ok(with_warnings(
        json_response(StatusCode::OK, &updated),
        &warnings,
    ))
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

fn resource(res: &str) -> Result<Kind, ApiError> {
    match Kind::from_resource(res) {
        Some(k) if k != Kind::Namespace => Ok(k),
        Some(_) => Ok(Kind::Namespace),
        None => Err(ApiError::path_not_found()),
    }
}

fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let base = ct.split(';').next().unwrap_or("").trim();
    if base == "application/json"
        || base == "application/vnd.kubernetes.protobuf"
        || base.is_empty()
    {
        Ok(())
    } else {
        Err(ApiError::unsupported_media_type(ct))
    }
}

fn with_warnings(mut resp: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let text = format!("299 - {}", serde_json::to_string(w).unwrap_or_default());
        if let Ok(v) = HeaderValue::from_str(&text) {
            resp.headers_mut().append("warning", v);
        }
    }
    resp
}

async fn list(
    state: &AppState,
    kind: Kind,
    ns: Option<&str>,
    q: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let limit = match q.get("limit").map(String::as_str) {
        None | Some("") => 0,
        Some(l) => l
            .parse::<i64>()
            .map_err(|_| ApiError::bad_request(&format!("invalid limit: {l}")))?
            .max(0),
    };
    let fields: &[&str] = match kind {
        Kind::Secret => &["metadata.name", "metadata.namespace", "type"],
        Kind::ConfigMap => &["metadata.name", "metadata.namespace"],
        Kind::Namespace => &["metadata.name", "status.phase"],
    };
    let opts = ListOptions {
        limit,
        continue_token: q.get("continue").cloned().unwrap_or_default(),
        resource_version: q.get("resourceVersion").cloned().unwrap_or_default(),
        resource_version_match: q.get("resourceVersionMatch").cloned().unwrap_or_default(),
        field_selector: store::parse_selector(
            q.get("fieldSelector").map(String::as_str).unwrap_or(""),
            Some(fields),
        )?,
        label_selector: store::parse_selector(
            q.get("labelSelector").map(String::as_str).unwrap_or(""),
            None,
        )?,
    };
    let result = state.store.list(kind, ns, &opts).await?;
    let mut meta = Map::new();
    meta.insert(
        "resourceVersion".into(),
        json!(result.resource_version.to_string()),
    );
    if !result.continue_token.is_empty() {
        meta.insert("continue".into(), json!(result.continue_token));
    }
    if let Some(n) = result.remaining_item_count {
        meta.insert("remainingItemCount".into(), json!(n));
    }
    let body = json!({"kind": kind.list_kind(), "apiVersion": "v1", "metadata": meta, "items": result.items});
    Ok(json_response(StatusCode::OK, &body))
}

async fn delete(
    state: &AppState,
    kind: Kind,
    ns: Option<&str>,
    name: &str,
    q: &HashMap<String, String>,
    body: &[u8],
    mut dry_run: bool,
) -> Result<Response, ApiError> {
    let opts: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(&format!("invalid DeleteOptions: {e}")))?
    };
    if opts
        .get("dryRun")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
    {
        dry_run = true;
    }
    let uid = opts
        .get("preconditions")
        .and_then(|p| p.get("uid"))
        .and_then(Value::as_str);
    let rv = opts
        .get("preconditions")
        .and_then(|p| p.get("resourceVersion"))
        .and_then(Value::as_str);
    let _ = q;
    if kind == Kind::Namespace {
        if ["default", "kube-system", "kube-public"].contains(&name) {
            return Err(forbidden_namespace(name));
        }
        if state
            .store
            .get(Kind::Namespace, None, name)
            .await?
            .is_none()
        {
            return Err(ApiError::not_found("namespaces", name));
        }
        // Stands in for the namespace controller: remove the contents, then the namespace.
        if !dry_run {
            for inner in [Kind::Secret, Kind::ConfigMap] {
                let items = state
                    .store
                    .list(inner, Some(name), &ListOptions::default())
                    .await?
                    .items;
                for item in items {
                    let n = objects::meta_str(&item, "name").to_string();
                    match state
                        .store
                        .delete(inner, Some(name), &n, None, None, false)
                        .await
                    {
                        Ok(_) => {}
                        Err(e) if e.code == 404 => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        let mut deleted = state
            .store
            .delete(kind, None, name, uid, rv, dry_run)
            .await?;
        if let Some(Value::Object(m)) = deleted.get_mut("metadata") {
            m.insert("deletionTimestamp".into(), json!(objects::now_rfc3339()));
        }
        if let Some(Value::Object(s)) = deleted.get_mut("status") {
            s.insert("phase".into(), json!("Terminating"));
        }
        let deleted = objects::canonical(kind, deleted)?;
        return Ok(json_response(StatusCode::OK, &deleted));
    }
    let deleted = state.store.delete(kind, ns, name, uid, rv, dry_run).await?;
    // `finalizeDelete` for stores without ReturnDeletedObject: a Success Status naming the object.
    let status = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {"name": name, "kind": kind.resource(), "uid": objects::meta_str(&deleted, "uid")}
    });
    Ok(json_response(StatusCode::OK, &status))
}

fn forbidden_namespace(name: &str) -> ApiError {
    let mut e = ApiError::forbidden("", "", "");
    e.body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("namespaces \"{name}\" is forbidden: this namespace may not be deleted"),
        "reason": "Forbidden", "details": {"name": name, "kind": "namespaces"}, "code": 403
    });
    e
}

async fn health(
    state: &AppState,
    which: &str,
    rest: &[&str],
    q: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let etcd = state.store.ping().await;
    if let [check] = rest {
        return Ok(match (*check, &etcd) {
            ("ping" | "log", _) | ("etcd", Ok(())) => text_response(StatusCode::OK, "ok".into()),
            ("etcd", Err(_)) => text_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal server error: etcd client connection not yet established\n".into(),
            ),
            _ => text_response(StatusCode::NOT_FOUND, "404 page not found\n".into()),
        });
    }
    let verbose = q.contains_key("verbose");
    let etcd_line = match &etcd {
        Ok(()) => "[+]etcd ok".to_string(),
        Err(_) => "[-]etcd failed: reason withheld".to_string(),
    };
    let code = if etcd.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    if etcd.is_ok() && !verbose {
        return Ok(text_response(code, "ok".into()));
    }
    let outcome = if etcd.is_ok() { "passed" } else { "failed" };
    Ok(text_response(
        code,
        format!("[+]ping ok\n[+]log ok\n{etcd_line}\n{which} check {outcome}\n"),
    ))
}

fn version() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": GIT_VERSION,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.23.8",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}

fn resource_list() -> Value {
    let verbs = ["create", "delete", "get", "list", "patch", "update"];
    json!({
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            {"name": "configmaps", "singularName": "configmap", "namespaced": true, "kind": "ConfigMap", "verbs": verbs, "shortNames": ["cm"]},
            {"name": "namespaces", "singularName": "namespace", "namespaced": false, "kind": "Namespace", "verbs": verbs, "shortNames": ["ns"]},
            {"name": "secrets", "singularName": "secret", "namespaced": true, "kind": "Secret", "verbs": verbs}
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc7386() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut t, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}}));
    }

    #[test]
    fn query_decoding() {
        let q = query_map(Some(
            "limit=2&continue=eyJ2%3D&fieldSelector=metadata.name%3Ds1",
        ));
        assert_eq!(q["limit"], "2");
        assert_eq!(q["continue"], "eyJ2=");
        assert_eq!(q["fieldSelector"], "metadata.name=s1");
    }
}
