//! etcd access for verification: a census of how every stored object is encrypted, and snapshots.
//!
//! The census reads values straight from etcd (never through kube-apiserver), so it shows what is really on
//! disk. It pages through each resource's key range at one fixed revision and classifies every value by its
//! `k8s:enc:` prefix as it goes; only counts and a capped list of off-target keys are kept, so memory is bounded
//! by one page whatever the cluster size.

use crate::exec::sizes::{StoredSizes, blind_page_limit, next_page_limit};
use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, Identity, TlsOptions};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd at {endpoints}: {source}")]
    Client {
        endpoints: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("etcd at {endpoints}: census of {prefix}: {source}")]
    Range {
        endpoints: String,
        prefix: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("etcd at {endpoints}: snapshot: {source}")]
    Snapshot {
        endpoints: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("snapshot file {path}: {source}")]
    SnapshotFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "etcd at {endpoints}: the census of {prefix} was compacted away {attempts} times in a row"
    )]
    CompactedTooOften {
        endpoints: String,
        prefix: String,
        attempts: u32,
    },
}

/// TLS material for etcd's client port, as PEM bytes (read from the node, never written to our disk).
pub struct EtcdTls {
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Zeroizing<Vec<u8>>,
    /// Name to verify the server certificate against, when the endpoint URL does not carry it (for example
    /// `https://127.0.0.1:23790` through an SSH tunnel to the node `etcd-node1`/`10.0.0.5`).
    pub server_name: Option<String>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls")
            .field("server_name", &self.server_name)
            .field("key_pem", &"REDACTED")
            .finish_non_exhaustive()
    }
}

/// How to reach etcd: endpoint URLs (`https://…` with `tls`, `http://…` without).
#[derive(Debug)]
pub struct EtcdTarget {
    pub endpoints: Vec<String>,
    pub tls: Option<EtcdTls>,
}

/// A connected etcd client that remembers its endpoints for error messages.
#[derive(Clone)]
pub struct Etcd {
    client: Client,
    endpoints: String,
}

/// Largest gRPC response we accept: a page of big objects (etcd caps one value at ~1.5 MiB by default).
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

impl Etcd {
    pub async fn connect(target: &EtcdTarget) -> Result<Self, EtcdError> {
        let endpoints = target.endpoints.join(",");
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(10))
            .with_timeout(Duration::from_secs(60))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(10));
        if let Some(tls) = &target.tls {
            let mut config = TlsOptions::new()
                .ca_certificate(Certificate::from_pem(&tls.ca_pem))
                .identity(Identity::from_pem(&tls.cert_pem, &*tls.key_pem));
            if let Some(name) = &tls.server_name {
                config = config.domain_name(name.clone());
            }
            options = options.with_tls(config);
        }
        let client = Client::connect(&target.endpoints, Some(options))
            .await
            .map_err(|source| EtcdError::Client {
                endpoints: endpoints.clone(),
                source,
            })?;
        Ok(Self { client, endpoints })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    /// Count how every value under each resource's key range is stored.
    ///
    /// `write_label` is the label new writes get (e.g. `aescbc:key2`); keys under any other label are listed in
    /// [`ResourceCensus::off_target`] (at most `options.max_off_target` per resource) for a targeted rewrite.
    pub async fn census(
        &self,
        resources: &[EtcdResource],
        write_label: Option<&str>,
        options: &CensusOptions,
    ) -> Result<Census, EtcdError> {
        let mut census = Census::default();
        for resource in resources {
            let counted = self.census_one(resource, write_label, options).await?;
            census.revision = census.revision.max(counted.revision);
            census.resources.insert(resource.name.clone(), counted);
        }
        Ok(census)
    }

    async fn census_one(
        &self,
        resource: &EtcdResource,
        write_label: Option<&str>,
        options: &CensusOptions,
    ) -> Result<ResourceCensus, EtcdError> {
        const MAX_ATTEMPTS: u32 = 5;
        for _ in 0..MAX_ATTEMPTS {
            match self
                .census_at_one_revision(resource, write_label, options)
                .await
            {
                Ok(counted) => return Ok(counted),
                // The pinned revision was compacted while we paged: start again at the newest revision.
                Err(EtcdError::Range { source, .. }) if is_compacted(&source) => {
                    tracing::info!(prefix = %resource.key_prefix, "census revision compacted, starting again");
                }
                Err(other) => return Err(other),
            }
        }
        Err(EtcdError::CompactedTooOften {
            endpoints: self.endpoints.clone(),
            prefix: resource.key_prefix.clone(),
            attempts: MAX_ATTEMPTS,
        })
    }

    async fn census_at_one_revision(
        &self,
        resource: &EtcdResource,
        write_label: Option<&str>,
        options: &CensusOptions,
    ) -> Result<ResourceCensus, EtcdError> {
        let range_error = |source| EtcdError::Range {
            endpoints: self.endpoints.clone(),
            prefix: resource.key_prefix.clone(),
            source,
        };
        let mut kv = self
            .client
            .kv_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES);
        let prefix = resource.key_prefix.as_bytes().to_vec();
        let end = prefix_range_end(&prefix);
        let mut counted = ResourceCensus {
            key_prefix: resource.key_prefix.clone(),
            ..Default::default()
        };
        let mut start = prefix.clone();
        let mut revision = 0i64;
        let max_page = census_max_page(options);
        // Start small and adapt to the value sizes, so a page stays near `page_bytes` even with 1 MiB objects.
        let mut limit = max_page.min(16);
        loop {
            let mut get = GetOptions::new().with_range(end.clone()).with_limit(limit);
            if revision > 0 {
                get = get.with_revision(revision);
            }
            let mut page = kv
                .get(start.clone(), Some(get))
                .await
                .map_err(range_error)?;
            if revision == 0 {
                revision = page.header().map(|h| h.revision()).unwrap_or_default();
            }
            let more = page.more();
            let kvs = page.take_kvs();
            let Some(last) = kvs.last().map(|kv| kv.key().to_vec()) else {
                break;
            };
            let bytes: usize = kvs.iter().map(|kv| kv.key().len() + kv.value().len()).sum();
            limit = next_limit(limit, max_page, bytes, kvs.len(), options.page_bytes);
            for item in &kvs {
                let label = classify_with(item.value(), &options.key_names);
                if write_label.is_some_and(|w| w != label) {
                    counted.off_target_count += 1;
                    if counted.off_target.len() < options.max_off_target {
                        counted
                            .off_target
                            .push(String::from_utf8_lossy(item.key()).into_owned());
                    }
                }
                counted
                    .sizes
                    .record(counted.total as usize, item.value().len());
                counted.total += 1;
                *counted.by_label.entry(label).or_default() += 1;
            }
            if !more {
                break;
            }
            // Next page starts just after the last key of this one.
            start = last;
            start.push(0);
        }
        counted.revision = revision;
        Ok(counted)
    }

    /// Stream a snapshot of the member we are connected to into `dest` (0600, written to a temporary file
    /// in the same directory, fsynced, then renamed so a partial snapshot never has the final name).
    pub async fn snapshot(&self, dest: &Path) -> Result<SnapshotInfo, EtcdError> {
        let file_error = |path: &Path, source| EtcdError::SnapshotFile {
            path: path.to_path_buf(),
            source,
        };
        let dir = match dest.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let file_name = dest.file_name().ok_or_else(|| {
            file_error(dest, std::io::Error::other("destination has no file name"))
        })?;
        let tmp = dir.join(format!(
            ".{}.partial-{}",
            file_name.to_string_lossy(),
            std::process::id()
        ));
        let mut file = open_private(&tmp).map_err(|e| file_error(&tmp, e))?;
        let result = async {
            let mut maintenance = self.client.maintenance_client();
            let snapshot_error = |source| EtcdError::Snapshot {
                endpoints: self.endpoints.clone(),
                source,
            };
            let mut stream = maintenance.snapshot().await.map_err(snapshot_error)?;
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            while let Some(chunk) = stream.message().await.map_err(snapshot_error)? {
                hasher.update(chunk.blob());
                size += chunk.blob().len() as u64;
                file.write_all(chunk.blob())
                    .map_err(|e| file_error(&tmp, e))?;
            }
            file.sync_all().map_err(|e| file_error(&tmp, e))?;
            Ok::<_, EtcdError>((size, hex::encode(hasher.finalize())))
        }
        .await;
        let (size, sha256) = match result {
            Ok(done) => done,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        if size == 0 {
            let _ = std::fs::remove_file(&tmp);
            return Err(file_error(
                dest,
                std::io::Error::other("etcd sent an empty snapshot"),
            ));
        }
        std::fs::rename(&tmp, dest).map_err(|e| file_error(dest, e))?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(SnapshotInfo {
            path: dest.to_path_buf(),
            size,
            sha256,
        })
    }
}

/// The next page size ([`next_page_limit`]) in etcd's `i64`.
fn next_limit(
    limit: i64,
    max_page: i64,
    page_bytes: usize,
    items: usize,
    target_bytes: usize,
) -> i64 {
    let as_usize = |n: i64| usize::try_from(n).unwrap_or(0);
    let next = next_page_limit(
        as_usize(limit),
        as_usize(max_page),
        page_bytes,
        items,
        target_bytes,
    );
    i64::try_from(next).unwrap_or(i64::MAX)
}

/// The most keys a census page asks for: `page_size`, but never more than [`blind_page_limit`] of `page_bytes`,
/// since a value's size is not known before it is read and sizes can jump (2 KiB Secrets, then a namespace of
/// 1 MiB Helm releases).
fn census_max_page(options: &CensusOptions) -> i64 {
    let blind = i64::try_from(blind_page_limit(options.page_bytes)).unwrap_or(i64::MAX);
    options.page_size.clamp(1, blind)
}

fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

fn is_compacted(error: &etcd_client::Error) -> bool {
    matches!(error, etcd_client::Error::GRpcStatus(status)
        if status.message().contains("required revision has been compacted"))
}

/// The key just past every key starting with `prefix` (etcd's "range end" for a prefix).
fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[derive(Debug, Clone)]
pub struct CensusOptions {
    /// Most keys per range request; never more than [`blind_page_limit`] of `page_bytes` (42 for 8 MiB).
    pub page_size: i64,
    /// Aim for pages of about this many bytes (the page size adapts between 1 and `page_size`); memory is
    /// about one page.
    pub page_bytes: usize,
    /// At most this many off-target keys are remembered per resource (all are counted).
    pub max_off_target: usize,
    /// Key names the configs involved use. A stored value names its key only as `<name>:` followed by binary
    /// data, and names may contain `:` (K3s's `aescbckey-<RFC 3339>` do), so the longest known name that
    /// matches wins; unknown names are read up to the first `:`.
    pub key_names: Vec<String>,
}

impl Default for CensusOptions {
    fn default() -> Self {
        Self {
            page_size: 500,
            page_bytes: 8 * 1024 * 1024,
            max_off_target: 100_000,
            key_names: Vec::new(),
        }
    }
}

/// A resource as stored in etcd: a display name (`secrets`, `widgets.example.com`) and its key prefix,
/// ending in `/` (e.g. `/registry/secrets/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdResource {
    pub name: String,
    pub key_prefix: String,
}

impl EtcdResource {
    /// Where kube-apiserver stores `resource` of `group` under `etcd_prefix` (default `/registry`).
    pub fn new(etcd_prefix: &str, group: &str, resource: &str) -> Self {
        let name = if group.is_empty() {
            resource.to_string()
        } else {
            format!("{resource}.{group}")
        };
        let base = format!("/{}", etcd_prefix.trim_matches('/'));
        let base = if base == "/" { String::new() } else { base };
        Self {
            name,
            key_prefix: format!("{base}/{}/", etcd_path(group, resource)),
        }
    }
}

/// Groups served by kube-apiserver itself; anything else (CRDs) is stored under `<group>/<plural>`.
const BUILT_IN_GROUPS: &[&str] = &[
    "",
    "apps",
    "batch",
    "autoscaling",
    "policy",
    "extensions",
    "admissionregistration.k8s.io",
    "authentication.k8s.io",
    "authorization.k8s.io",
    "certificates.k8s.io",
    "coordination.k8s.io",
    "discovery.k8s.io",
    "events.k8s.io",
    "flowcontrol.apiserver.k8s.io",
    "internal.apiserver.k8s.io",
    "networking.k8s.io",
    "node.k8s.io",
    "rbac.authorization.k8s.io",
    "resource.k8s.io",
    "scheduling.k8s.io",
    "storage.k8s.io",
    "storagemigration.k8s.io",
];

/// The resource's path under the etcd prefix (`k8s:test/integration/etcd/data.go`, reference §2.2).
pub fn etcd_path(group: &str, resource: &str) -> String {
    match (group, resource) {
        ("", "services") => "services/specs".into(),
        ("", "endpoints") => "services/endpoints".into(),
        ("", "nodes") => "minions".into(),
        ("", "replicationcontrollers") => "controllers".into(),
        ("networking.k8s.io" | "extensions", "ingresses") => "ingress".into(),
        // CRDs and APIServices are served by the embedded extension/aggregation servers, which keep the group.
        ("apiextensions.k8s.io" | "apiregistration.k8s.io", r) => format!("{group}/{r}"),
        (g, r) if BUILT_IN_GROUPS.contains(&g) => r.into(),
        (g, r) => format!("{g}/{r}"),
    }
}

/// Counts for every resource, at (roughly) one etcd revision.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Census {
    /// Highest revision any resource was read at.
    pub revision: i64,
    pub resources: BTreeMap<String, ResourceCensus>,
}

impl Census {
    /// The etcd keys of the objects found off the write label, across all resources (as many as were kept).
    pub fn off_target_keys(&self) -> Vec<String> {
        self.resources
            .values()
            .flat_map(|r| r.off_target.iter().cloned())
            .collect()
    }

    /// Objects across all resources not on the write label.
    pub fn off_target_total(&self) -> u64 {
        self.resources.values().map(|r| r.off_target_count).sum()
    }

    /// Counts by label summed over all resources.
    pub fn by_label(&self) -> BTreeMap<String, u64> {
        let mut all = BTreeMap::new();
        for r in self.resources.values() {
            for (label, n) in &r.by_label {
                *all.entry(label.clone()).or_default() += n;
            }
        }
        all
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ResourceCensus {
    pub key_prefix: String,
    /// The revision every page was read at (one consistent view of this resource).
    pub revision: i64,
    pub total: u64,
    /// `identity`, `aescbc:<key>`, `aesgcm:<key>`, `secretbox:<key>`, `kms:v1:<provider>`,
    /// `kms:v2:<provider>:<keyID>`, or `unknown:<prefix>` for a `k8s:enc:` value we cannot parse.
    pub by_label: BTreeMap<String, u64>,
    /// Keys not on the write label, capped at [`CensusOptions::max_off_target`].
    pub off_target: Vec<String>,
    /// All keys not on the write label (may exceed `off_target.len()`).
    pub off_target_count: u64,
    /// How large the stored values are along the key order (the order the API lists in).
    #[serde(skip)]
    pub sizes: StoredSizes,
}

impl ResourceCensus {
    pub fn off_target_truncated(&self) -> bool {
        self.off_target_count > self.off_target.len() as u64
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
}

const ENC_PREFIX: &[u8] = b"k8s:enc:";

/// The label for one stored value (layouts: reference §0, §1.7), reading key names up to the first `:`.
pub fn classify(value: &[u8]) -> String {
    classify_with(value, &[])
}

/// The label for one stored value, preferring the longest of `key_names` that the stored prefix names.
pub fn classify_with(value: &[u8], key_names: &[String]) -> String {
    let Some(rest) = value.strip_prefix(ENC_PREFIX) else {
        return "identity".into();
    };
    let unknown = || {
        format!(
            "unknown:{}",
            String::from_utf8_lossy(&rest[..rest.len().min(32)])
        )
    };
    for provider in ["aescbc", "aesgcm", "secretbox"] {
        if let Some(after) = rest
            .strip_prefix(provider.as_bytes())
            .and_then(|r| r.strip_prefix(b":v1:"))
        {
            return match known_name(after, key_names).or_else(|| name_before_colon(after)) {
                Some((name, _)) => format!("{provider}:{name}"),
                None => unknown(),
            };
        }
    }
    if let Some(after) = rest.strip_prefix(b"kms:v1:") {
        return match known_name(after, key_names).or_else(|| name_before_colon(after)) {
            Some((name, _)) => format!("kms:v1:{name}"),
            None => unknown(),
        };
    }
    if let Some(after) = rest.strip_prefix(b"kms:v2:") {
        return match name_before_colon(after) {
            Some((name, proto)) => match kms_v2_key_id(proto) {
                Some(key_id) => format!("kms:v2:{name}:{key_id}"),
                None => format!("kms:v2:{name}:?"),
            },
            None => unknown(),
        };
    }
    unknown()
}

/// The longest `name` of `names` such that `bytes` starts with `name:`.
fn known_name<'a>(bytes: &'a [u8], names: &[String]) -> Option<(String, &'a [u8])> {
    names
        .iter()
        .filter(|n| !n.is_empty())
        .filter(|n| {
            bytes.len() > n.len() && bytes.starts_with(n.as_bytes()) && bytes[n.len()] == b':'
        })
        .max_by_key(|n| n.len())
        .map(|n| (n.clone(), &bytes[n.len() + 1..]))
}

/// Split `name:rest` at the first `:`; names are printable (validation forbids empty names).
fn name_before_colon(bytes: &[u8]) -> Option<(String, &[u8])> {
    let colon = bytes.iter().position(|&b| b == b':')?;
    if colon == 0 {
        return None;
    }
    let name = std::str::from_utf8(&bytes[..colon]).ok()?;
    Some((name.to_string(), &bytes[colon + 1..]))
}

/// Field 2 (`keyID`, string) of a KMS v2 `EncryptedObject`, read with a minimal protobuf walker.
pub fn kms_v2_key_id(mut proto: &[u8]) -> Option<String> {
    while !proto.is_empty() {
        let (tag, n) = read_varint(proto)?;
        proto = &proto[n..];
        let (field, wire) = (tag >> 3, tag & 7);
        match wire {
            0 => proto = &proto[read_varint(proto)?.1..],
            1 => proto = proto.get(8..)?,
            5 => proto = proto.get(4..)?,
            2 => {
                let (len, n) = read_varint(proto)?;
                let len = usize::try_from(len).ok()?;
                let body = proto.get(n..n.checked_add(len)?)?;
                if field == 2 {
                    return std::str::from_utf8(body).ok().map(str::to_string);
                }
                proto = &proto[n + len..];
            }
            _ => return None,
        }
    }
    None
}

fn read_varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return out;
            }
            out.push(b | 0x80);
        }
    }

    fn field(number: u64, body: &[u8]) -> Vec<u8> {
        let mut out = varint(number << 3 | 2);
        out.extend(varint(body.len() as u64));
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn plaintext_protobuf_and_json_are_identity() {
        assert_eq!(
            classify(b"k8s\x00\x0a\x0c\x0a\x02v1\x12\x06Secret"),
            "identity"
        );
        assert_eq!(classify(b"{\"kind\":\"Secret\"}\n"), "identity");
        assert_eq!(classify(b""), "identity");
    }

    #[test]
    fn local_providers_carry_the_key_name() {
        let mut cbc = b"k8s:enc:aescbc:v1:key1:".to_vec();
        cbc.extend([0x3a; 32]); // IV and ciphertext may contain ':' bytes
        assert_eq!(classify(&cbc), "aescbc:key1");
        assert_eq!(
            classify(b"k8s:enc:aesgcm:v1:rotated-2:\x00\x01"),
            "aesgcm:rotated-2"
        );
        assert_eq!(classify(b"k8s:enc:secretbox:v1:k:\xff\xfe"), "secretbox:k");
        // K3s-style names hold ':'; known names are matched whole, the longest first.
        let names = vec![
            "aescbckey-2026-11-23T23:10:39Z".to_string(),
            "aescbckey-2026-11-23T23:10:39Z-2".to_string(),
            "aescbckey-2026-11-23T23".to_string(),
        ];
        let stored = b"k8s:enc:aescbc:v1:aescbckey-2026-11-23T23:10:39Z:\x00\x3a\x01";
        assert_eq!(
            classify_with(stored, &names),
            "aescbc:aescbckey-2026-11-23T23:10:39Z"
        );
        assert_eq!(classify(stored), "aescbc:aescbckey-2026-11-23T23");
        assert_eq!(
            classify_with(
                b"k8s:enc:aescbc:v1:aescbckey-2026-11-23T23:10:39Z-2:\x00",
                &names
            ),
            "aescbc:aescbckey-2026-11-23T23:10:39Z-2"
        );
        assert_eq!(
            classify_with(b"k8s:enc:aescbc:v1:other:\x00", &names),
            "aescbc:other"
        );
    }

    #[test]
    fn kms_v1_carries_the_provider_name() {
        assert_eq!(
            classify(b"k8s:enc:kms:v1:vault:\x00\x04abcd..."),
            "kms:v1:vault"
        );
    }

    #[test]
    fn kms_v2_reads_key_id_from_field_2() {
        let mut proto = field(1, &[0xaa; 40]);
        proto.extend(field(2, b"key-7"));
        proto.extend(field(3, &[0xbb; 32]));
        proto.extend(varint(5 << 3)); // encryptedDEKSourceType = 1 (varint)
        proto.extend(varint(1));
        let mut value = b"k8s:enc:kms:v2:plugin:".to_vec();
        value.extend(&proto);
        assert_eq!(classify(&value), "kms:v2:plugin:key-7");
    }

    #[test]
    fn kms_v2_upstream_legacy_values() {
        // Reference Appendix A (upstream kmsv2_transformation_test.go): provider kms-provider, key ID "1",
        // (a) AES_GCM_KEY and (b) HKDF seed type.
        let vectors = include_str!("kms_v2_upstream_vectors.hex");
        let values: Vec<Vec<u8>> = vectors
            .lines()
            .map(|l| hex::decode(l.trim()).unwrap())
            .collect();
        assert_eq!(values.iter().map(Vec::len).collect::<Vec<_>>(), [526, 599]);
        for value in &values {
            assert_eq!(classify(value), "kms:v2:kms-provider:1");
        }
    }

    #[test]
    fn malformed_values_are_unknown_not_identity() {
        assert!(classify(b"k8s:enc:aescbc:v1:").starts_with("unknown:"));
        assert!(classify(b"k8s:enc:aescbc:v1::abc").starts_with("unknown:"));
        assert!(classify(b"k8s:enc:rot13:v1:k:abc").starts_with("unknown:"));
        // Truncated protobuf: key ID cannot be read.
        let mut value = b"k8s:enc:kms:v2:p:".to_vec();
        value.extend(&field(2, b"abc")[..3]);
        assert_eq!(classify(&value), "kms:v2:p:?");
        // A huge length must not overflow.
        let mut value = b"k8s:enc:kms:v2:p:".to_vec();
        value.push(0x12);
        value.extend(varint(u64::MAX));
        assert_eq!(classify(&value), "kms:v2:p:?");
    }

    #[test]
    fn etcd_paths_follow_upstream_layout() {
        assert_eq!(
            EtcdResource::new("/registry", "", "secrets").key_prefix,
            "/registry/secrets/"
        );
        assert_eq!(
            EtcdResource::new("registry", "", "configmaps").key_prefix,
            "/registry/configmaps/"
        );
        assert_eq!(
            EtcdResource::new("/registry", "", "services").key_prefix,
            "/registry/services/specs/"
        );
        assert_eq!(
            EtcdResource::new("/registry", "apps", "deployments").key_prefix,
            "/registry/deployments/"
        );
        assert_eq!(
            EtcdResource::new("/registry", "networking.k8s.io", "ingresses").key_prefix,
            "/registry/ingress/"
        );
        let crd = EtcdResource::new("/registry", "example.com", "widgets");
        assert_eq!(crd.key_prefix, "/registry/example.com/widgets/");
        assert_eq!(crd.name, "widgets.example.com");
        assert_eq!(
            EtcdResource::new("/", "", "secrets").key_prefix,
            "/secrets/"
        );
    }

    #[test]
    fn a_census_page_never_asks_for_more_than_a_page_of_the_largest_values_holds() {
        let options = |page_size, page_bytes| CensusOptions {
            page_size,
            page_bytes,
            ..CensusOptions::default()
        };
        // 500 keys of up to 1.5 MiB would be 750 MiB, over the 256 MiB a response may have.
        assert_eq!(census_max_page(&CensusOptions::default()), 42);
        assert_eq!(census_max_page(&options(20, 8 << 20)), 20);
        assert_eq!(census_max_page(&options(500, 1024)), 1);
        assert_eq!(census_max_page(&options(0, 8 << 20)), 1);
        const { assert!(42 * crate::exec::sizes::MAX_STORED_BYTES < MAX_RESPONSE_BYTES) };
    }

    #[test]
    fn page_size_adapts_to_value_sizes() {
        let mib = 1024 * 1024;
        // Small values: grow by doubling up to the maximum.
        assert_eq!(next_limit(16, 500, 16 * 2048, 16, 8 * mib), 32);
        assert_eq!(next_limit(400, 500, 400 * 2048, 400, 8 * mib), 500);
        // 1 MiB values: about 8 per page.
        assert_eq!(next_limit(16, 500, 16 * mib, 16, 8 * mib), 8);
        // Values larger than the target: one at a time.
        assert_eq!(next_limit(8, 500, 8 * 20 * mib, 8, 8 * mib), 1);
    }

    #[test]
    fn range_end_of_prefix() {
        assert_eq!(
            prefix_range_end(b"/registry/secrets/"),
            b"/registry/secrets0"
        );
        assert_eq!(prefix_range_end(b"a\xff"), b"b");
        assert_eq!(prefix_range_end(b"\xff"), vec![0]);
    }
}
