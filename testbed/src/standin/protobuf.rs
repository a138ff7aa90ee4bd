//! Decodes `application/vnd.kubernetes.protobuf` request bodies for Secret, ConfigMap and Namespace
//! into the JSON shape the rest of the stand-in works with. kubectl's typed client (`kubectl create
//! secret …`) sends protobuf; responses are always JSON, which client-go accepts by Content-Type.
//!
//! Wire layout (`apimachinery:pkg/runtime/serializer/protobuf`): magic `k8s\0`, then `runtime.Unknown`
//! {1 typeMeta{1 apiVersion, 2 kind}, 2 raw, 3 contentEncoding, 4 contentType}; `raw` is the object's
//! own message (field numbers from `k8s.io/api/core/v1/generated.proto`).

use base64::Engine;
use serde_json::{Map, Value, json};

use super::objects::Kind;

const MAGIC: &[u8] = b"k8s\x00";

/// One decoded field: number and payload.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut out = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        out |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(out);
        }
    }
    Err("varint too long".into())
}

fn fields(buf: &[u8]) -> Result<Vec<(u64, Field<'_>)>, String> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < buf.len() {
        let tag = read_varint(buf, &mut pos)?;
        let (num, wire) = (tag >> 3, tag & 7);
        match wire {
            0 => out.push((num, Field::Varint(read_varint(buf, &mut pos)?))),
            2 => {
                let len =
                    usize::try_from(read_varint(buf, &mut pos)?).map_err(|_| "length overflow")?;
                let end = pos
                    .checked_add(len)
                    .filter(|e| *e <= buf.len())
                    .ok_or("truncated field")?;
                out.push((num, Field::Bytes(&buf[pos..end])));
                pos = end;
            }
            1 => pos += 8,
            5 => pos += 4,
            w => return Err(format!("unsupported wire type {w}")),
        }
    }
    Ok(out)
}

fn text(b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| "invalid UTF-8 in string field".to_string())
}

/// A `map<string, X>` entry: {1 key, 2 value}.
fn map_entry(b: &[u8]) -> Result<(String, &[u8]), String> {
    let mut key = String::new();
    let mut value: &[u8] = &[];
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(k)) => key = text(k)?,
            (2, Field::Bytes(v)) => value = v,
            _ => {}
        }
    }
    Ok((key, value))
}

fn time(b: &[u8]) -> Result<Value, String> {
    let mut secs = 0i64;
    for (n, f) in fields(b)? {
        if let (1, Field::Varint(v)) = (n, f) {
            secs = v as i64;
        }
    }
    let t = time::OffsetDateTime::from_unix_timestamp(secs).map_err(|e| e.to_string())?;
    Ok(json!(
        t.format(&time::format_description::well_known::Rfc3339)
            .map_err(|e| e.to_string())?
    ))
}

fn object_meta(b: &[u8]) -> Result<Value, String> {
    let mut m = Map::new();
    let mut labels = Map::new();
    let mut annotations = Map::new();
    let mut finalizers = Vec::new();
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(v)) => _ = m.insert("name".into(), json!(text(v)?)),
            (2, Field::Bytes(v)) => _ = m.insert("generateName".into(), json!(text(v)?)),
            (3, Field::Bytes(v)) => _ = m.insert("namespace".into(), json!(text(v)?)),
            (5, Field::Bytes(v)) => _ = m.insert("uid".into(), json!(text(v)?)),
            (6, Field::Bytes(v)) => _ = m.insert("resourceVersion".into(), json!(text(v)?)),
            (8, Field::Bytes(v)) if !v.is_empty() => {
                _ = m.insert("creationTimestamp".into(), time(v)?)
            }
            (11, Field::Bytes(v)) => {
                let (k, val) = map_entry(v)?;
                labels.insert(k, json!(text(val)?));
            }
            (12, Field::Bytes(v)) => {
                let (k, val) = map_entry(v)?;
                annotations.insert(k, json!(text(val)?));
            }
            (14, Field::Bytes(v)) => finalizers.push(json!(text(v)?)),
            _ => {}
        }
    }
    if !labels.is_empty() {
        m.insert("labels".into(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        m.insert("annotations".into(), Value::Object(annotations));
    }
    if !finalizers.is_empty() {
        m.insert("finalizers".into(), Value::Array(finalizers));
    }
    Ok(Value::Object(m))
}

fn b64(b: &[u8]) -> Value {
    json!(base64::engine::general_purpose::STANDARD.encode(b))
}

/// Decodes a protobuf request body into a JSON object of `kind`.
pub fn decode(kind: Kind, body: &[u8]) -> Result<Value, String> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or("missing protobuf magic \"k8s\\x00\"")?;
    let mut raw: &[u8] = &[];
    let mut got_kind = String::new();
    for (n, f) in fields(rest)? {
        match (n, f) {
            (1, Field::Bytes(tm)) => {
                for (n2, f2) in fields(tm)? {
                    if let (2, Field::Bytes(k)) = (n2, f2) {
                        got_kind = text(k)?;
                    }
                }
            }
            (2, Field::Bytes(r)) => raw = r,
            _ => {}
        }
    }
    if got_kind != kind.kind() {
        return Err(format!(
            "the object provided is unrecognized (must be of type {}): kind {got_kind:?}",
            kind.kind()
        ));
    }
    let mut obj = Map::new();
    obj.insert("kind".into(), json!(kind.kind()));
    obj.insert("apiVersion".into(), json!("v1"));
    let mut data = Map::new();
    let mut other = Map::new();
    for (n, f) in fields(raw)? {
        match (kind, n, f) {
            (_, 1, Field::Bytes(v)) => _ = obj.insert("metadata".into(), object_meta(v)?),
            (Kind::Secret, 2, Field::Bytes(v)) => {
                let (k, val) = map_entry(v)?;
                data.insert(k, b64(val));
            }
            (Kind::Secret, 3, Field::Bytes(v)) => _ = obj.insert("type".into(), json!(text(v)?)),
            (Kind::Secret, 4, Field::Bytes(v)) => {
                let (k, val) = map_entry(v)?;
                other.insert(k, json!(text(val)?));
            }
            (Kind::Secret, 5, Field::Varint(v)) | (Kind::ConfigMap, 4, Field::Varint(v)) => {
                _ = obj.insert("immutable".into(), json!(v != 0))
            }
            (Kind::ConfigMap, 2, Field::Bytes(v)) => {
                let (k, val) = map_entry(v)?;
                data.insert(k, json!(text(val)?));
            }
            (Kind::ConfigMap, 3, Field::Bytes(v)) => {
                let (k, val) = map_entry(v)?;
                other.insert(k, b64(val));
            }
            (Kind::Namespace, 2, Field::Bytes(v)) => {
                let mut fin = Vec::new();
                for (n2, f2) in fields(v)? {
                    if let (1, Field::Bytes(s)) = (n2, f2) {
                        fin.push(json!(text(s)?));
                    }
                }
                obj.insert("spec".into(), json!({"finalizers": fin}));
            }
            _ => {}
        }
    }
    if !data.is_empty() {
        obj.insert("data".into(), Value::Object(data));
    }
    if !other.is_empty() {
        let name = if kind == Kind::Secret {
            "stringData"
        } else {
            "binaryData"
        };
        obj.insert(name.into(), Value::Object(other));
    }
    Ok(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The upstream integration-test Secret (reference §6.4), stored by a real kube-apiserver.
    #[test]
    fn decodes_upstream_secret() {
        let b = base64::engine::general_purpose::STANDARD
            .decode("azhzAAoMCgJ2MRIGU2VjcmV0En4KXwoLdGVzdC1zZWNyZXQSABoWc2VjcmV0LWVuY3J5cHRpb24tdGVzdCIAKiQ3MmRmZTVjNC0xNDU2LTQyMzktYjFlZC1hZGZmYTJmMWY3YmEyADgAQggI5Jy/7wUQAHoAEhMKB2FwaV9rZXkSCPCfpJfwn5C8GgZPcGFxdWUaACIA")
            .unwrap();
        let v = decode(Kind::Secret, &b).unwrap();
        assert_eq!(v["metadata"]["name"], "test-secret");
        assert_eq!(v["metadata"]["namespace"], "secret-encryption-test");
        assert_eq!(v["metadata"]["uid"], "72dfe5c4-1456-4239-b1ed-adffa2f1f7ba");
        assert_eq!(v["type"], "Opaque");
        let data = base64::engine::general_purpose::STANDARD
            .decode(v["data"]["api_key"].as_str().unwrap())
            .unwrap();
        assert_eq!(String::from_utf8(data).unwrap(), "🤗🐼");
        assert!(decode(Kind::ConfigMap, &b).is_err());
    }
}
