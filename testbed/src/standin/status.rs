//! `metav1.Status` error bodies shaped like `k8s.io/apimachinery/pkg/api/errors` builds them.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// An API error: the HTTP code and the Status object sent as the body.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub body: Value,
}

/// `details` of a Status, in Go's field order (name, group, kind, uid, causes).
fn details(name: &str, kind: &str, causes: Option<Value>) -> Value {
    let mut d = Map::new();
    if !name.is_empty() {
        d.insert("name".into(), json!(name));
    }
    if !kind.is_empty() {
        d.insert("kind".into(), json!(kind));
    }
    if let Some(c) = causes {
        d.insert("causes".into(), c);
    }
    Value::Object(d)
}

fn failure(
    code: u16,
    reason: &str,
    message: &str,
    details: Option<Value>,
    metadata: Value,
) -> ApiError {
    let mut body = Map::new();
    body.insert("kind".into(), json!("Status"));
    body.insert("apiVersion".into(), json!("v1"));
    body.insert("metadata".into(), metadata);
    body.insert("status".into(), json!("Failure"));
    if !message.is_empty() {
        body.insert("message".into(), json!(message));
    }
    if !reason.is_empty() {
        body.insert("reason".into(), json!(reason));
    }
    if let Some(d) = details {
        body.insert("details".into(), d);
    }
    body.insert("code".into(), json!(code));
    ApiError {
        code,
        body: Value::Object(body),
    }
}

impl ApiError {
    pub fn not_found(resource: &str, name: &str) -> Self {
        failure(
            404,
            "NotFound",
            &format!("{resource} \"{name}\" not found"),
            Some(details(name, resource, None)),
            json!({}),
        )
    }

    /// The 404 for a URL no route serves (upstream's NotFound handler body).
    pub fn path_not_found() -> Self {
        failure(
            404,
            "NotFound",
            "the server could not find the requested resource",
            Some(json!({})),
            json!({}),
        )
    }

    pub fn already_exists(resource: &str, name: &str) -> Self {
        failure(
            409,
            "AlreadyExists",
            &format!("{resource} \"{name}\" already exists"),
            Some(details(name, resource, None)),
            json!({}),
        )
    }

    pub fn conflict(resource: &str, name: &str, why: &str) -> Self {
        failure(
            409,
            "Conflict",
            &format!("Operation cannot be fulfilled on {resource} \"{name}\": {why}"),
            Some(details(name, resource, None)),
            json!({}),
        )
    }

    pub fn modified(resource: &str, name: &str) -> Self {
        Self::conflict(
            resource,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// `NewInternalError(err)`: `Internal error occurred: <err>` with the error as the only cause.
    pub fn internal(err: &str) -> Self {
        failure(
            500,
            "InternalError",
            &format!("Internal error occurred: {err}"),
            Some(json!({"causes": [{"message": err}]})),
            json!({}),
        )
    }

    pub fn bad_request(message: &str) -> Self {
        failure(400, "BadRequest", message, None, json!({}))
    }

    /// `NewInvalid(kind, name, errs)`: one cause per field error.
    pub fn invalid(kind: &str, name: &str, errs: &[FieldError]) -> Self {
        let texts: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        let joined = if texts.len() == 1 {
            texts[0].clone()
        } else {
            format!("[{}]", texts.join(", "))
        };
        let causes: Vec<Value> = errs
            .iter()
            .map(|e| json!({"reason": e.reason, "message": e.detail_message(), "field": e.field}))
            .collect();
        failure(
            422,
            "Invalid",
            &format!("{kind} \"{name}\" is invalid: {joined}"),
            Some(details(name, kind, Some(Value::Array(causes)))),
            json!({}),
        )
    }

    pub fn expired(message: &str, continue_token: Option<&str>) -> Self {
        let meta = match continue_token {
            Some(t) => json!({"continue": t}),
            None => json!({}),
        };
        failure(410, "Expired", message, None, meta)
    }

    /// `storage.NewTooLargeResourceVersionError`: 504 Timeout with a ResourceVersionTooLarge cause.
    pub fn too_large_resource_version(rv: i64, current: i64) -> Self {
        let msg = format!("Too large resource version: {rv}, current: {current}");
        let mut e = failure(
            504,
            "Timeout",
            &format!("Timeout: {msg}"),
            Some(
                json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": msg}], "retryAfterSeconds": 1}),
            ),
            json!({}),
        );
        e.code = 504;
        e
    }

    pub fn unauthorized() -> Self {
        failure(401, "Unauthorized", "Unauthorized", None, json!({}))
    }

    pub fn forbidden(user: &str, verb: &str, path: &str) -> Self {
        failure(
            403,
            "Forbidden",
            &format!("forbidden: User \"{user}\" cannot {verb} path \"{path}\""),
            Some(json!({})),
            json!({}),
        )
    }

    pub fn method_not_allowed() -> Self {
        failure(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
            Some(json!({})),
            json!({}),
        )
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        failure(
            415,
            "UnsupportedMediaType",
            &format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml; got {content_type}"
            ),
            None,
            json!({}),
        )
    }

    /// An unsupported PATCH content type (upstream lists the patch types it accepts).
    pub fn unsupported_media_type_patch(content_type: &str) -> Self {
        failure(
            415,
            "UnsupportedMediaType",
            &format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json; got {content_type:?} (the stand-in implements merge and strategic merge patches)"
            ),
            None,
            json!({}),
        )
    }

    pub fn service_unavailable(message: &str) -> Self {
        failure(503, "ServiceUnavailable", message, None, json!({}))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        super::api::json_response(code, &self.body)
    }
}

/// A `field.Error`: `<field>: <Type>[: <value>]: <detail>`.
#[derive(Debug, Clone)]
pub struct FieldError {
    pub field: String,
    /// `FieldValueRequired`, `FieldValueInvalid`, `FieldValueForbidden`, …
    pub reason: &'static str,
    /// Already rendered value (`"x"` for strings), or empty for Required/Forbidden.
    pub value: Option<String>,
    pub detail: String,
}

impl FieldError {
    pub fn required(field: &str, detail: &str) -> Self {
        Self {
            field: field.into(),
            reason: "FieldValueRequired",
            value: None,
            detail: detail.into(),
        }
    }

    pub fn invalid(field: &str, value: &str, detail: &str) -> Self {
        Self {
            field: field.into(),
            reason: "FieldValueInvalid",
            value: Some(serde_json::to_string(value).unwrap_or_default()),
            detail: detail.into(),
        }
    }

    pub fn forbidden(field: &str, detail: &str) -> Self {
        Self {
            field: field.into(),
            reason: "FieldValueForbidden",
            value: None,
            detail: detail.into(),
        }
    }

    fn type_text(&self) -> &'static str {
        match self.reason {
            "FieldValueRequired" => "Required value",
            "FieldValueForbidden" => "Forbidden",
            _ => "Invalid value",
        }
    }

    /// The cause message: the error without the field path.
    fn detail_message(&self) -> String {
        match &self.value {
            Some(v) => format!("{}: {}: {}", self.type_text(), v, self.detail),
            None => format!("{}: {}", self.type_text(), self.detail),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.detail_message())
    }
}
