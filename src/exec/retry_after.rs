//! Keep a 429's `Retry-After` when the answer is plain text.
//!
//! kube-apiserver says "slow down" two ways. Its registry answers 429 with a JSON `Status` whose
//! `details.retryAfterSeconds` says how long to wait, and kube-client hands that `Status` to us. But API Priority
//! and Fairness and `--max-requests-inflight` refuse before any handler runs, with a plain-text body and the wait
//! only in the `Retry-After` header; kube-client cannot parse the body and keeps neither. This layer turns such
//! an answer into the JSON `Status` the API itself would have sent (same code, the server's text as message,
//! `retryAfterSeconds` from the header), so the rewrite's pacing ([`super::rewrite`]) can wait as long as the
//! server asked. Every other response passes through untouched.

use http::{HeaderMap, Response, StatusCode, header};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Bytes;

/// A plain-text refusal is one line; anything longer is cut to this.
const MAX_TEXT: usize = 4096;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Await `response` and, if it is a plain-text 429, give it a JSON `Status` body that carries its `Retry-After`.
pub async fn status_for_plain_429<B, F>(
    response: F,
) -> Result<Response<Either<B, Full<Bytes>>>, BoxError>
where
    F: Future<Output = Result<Response<B>, BoxError>>,
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let response = response.await?;
    if response.status() != StatusCode::TOO_MANY_REQUESTS || is_json(response.headers()) {
        return Ok(response.map(Either::Left));
    }
    let (mut parts, body) = response.into_parts();
    let text = match Limited::new(body, MAX_TEXT).collect().await {
        Ok(collected) => String::from_utf8_lossy(&collected.to_bytes())
            .trim()
            .to_string(),
        Err(_) => String::new(),
    };
    let seconds = retry_after_seconds(&parts.headers);
    parts.headers.insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = status_json(&text, seconds);
    Ok(Response::from_parts(parts, Either::Right(Full::new(body))))
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"))
}

/// `Retry-After` in seconds; the HTTP-date form (which kube-apiserver does not send) counts as absent.
fn retry_after_seconds(headers: &HeaderMap) -> Option<u32> {
    headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn status_json(text: &str, retry_after_seconds: Option<u32>) -> Bytes {
    let message = if text.is_empty() {
        "Too many requests"
    } else {
        text
    };
    let mut status = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "TooManyRequests",
        "code": 429,
    });
    if let Some(seconds) = retry_after_seconds {
        status["details"] = serde_json::json!({ "retryAfterSeconds": seconds });
    }
    Bytes::from(status.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn through_layer(response: Response<Full<Bytes>>) -> (Response<()>, String) {
        let answer = status_for_plain_429(async { Ok::<_, BoxError>(response) })
            .await
            .expect("the layer never fails on a well-formed response");
        let (parts, body) = answer.into_parts();
        let bytes = body.collect().await.expect("in-memory body").to_bytes();
        (
            Response::from_parts(parts, ()),
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    }

    fn plain_429(retry_after: Option<&str>) -> Response<Full<Bytes>> {
        let mut builder = Response::builder()
            .status(429)
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .header(header::CONTENT_LENGTH, "43");
        if let Some(value) = retry_after {
            builder = builder.header(header::RETRY_AFTER, value);
        }
        builder
            .body(Full::new(Bytes::from_static(
                b"Too many requests, please try again later.\n",
            )))
            .expect("valid response")
    }

    #[tokio::test]
    async fn a_plain_text_429_becomes_a_status_with_its_retry_after() {
        let (parts, body) = through_layer(plain_429(Some("3"))).await;
        assert_eq!(parts.status(), 429);
        assert!(is_json(parts.headers()));
        assert!(parts.headers().get(header::CONTENT_LENGTH).is_none());
        let status: kube::core::Status = serde_json::from_str(&body).expect("a Status");
        assert_eq!(status.code, 429);
        assert_eq!(status.message, "Too many requests, please try again later.");
        assert_eq!(status.details.map(|d| d.retry_after_seconds), Some(3));
    }

    #[tokio::test]
    async fn without_a_usable_retry_after_the_status_has_no_details() {
        for header in [None, Some("Wed, 21 Oct 2026 07:28:00 GMT"), Some("soon")] {
            let (_, body) = through_layer(plain_429(header)).await;
            let status: kube::core::Status = serde_json::from_str(&body).expect("a Status");
            assert!(status.details.is_none(), "{header:?}: {body}");
        }
    }

    #[tokio::test]
    async fn json_answers_and_other_codes_pass_through_unchanged() {
        let json = r#"{"kind":"Status","code":429,"details":{"retryAfterSeconds":9}}"#;
        let registry_429 = Response::builder()
            .status(429)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(json.as_bytes())))
            .expect("valid response");
        assert_eq!(through_layer(registry_429).await.1, json);
        let conflict = Response::builder()
            .status(409)
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Full::new(Bytes::from_static(b"conflict")))
            .expect("valid response");
        assert_eq!(through_layer(conflict).await.1, "conflict");
    }
}
