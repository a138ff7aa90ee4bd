//! OpenSSH `known_hosts` checking: every SSH connection atrest makes goes through [`KnownHosts::check`].
//!
//! Policy: a recorded matching key passes; a different key for the same host is refused loudly (possible
//! man-in-the-middle); an unknown host is refused with its SHA256 fingerprint and how to trust it, unless the
//! caller opted in to trust-on-first-use (`accept_new`), in which case the key is appended to the file.
//!
//! "Known" is per host, not per key type: a host recorded with (say) an RSA key that presents an ed25519 key
//! is a changed key, never a new one — otherwise an attacker with a key of another type would be trusted on
//! first use. So that an honest server with several host keys presents a recorded one, the connection offers
//! only the key types recorded for a known host ([`KnownHosts::recorded_algorithms`]), as OpenSSH does.
//! Lines with a marker other than `@cert-authority` and `@revoked` are ignored (OpenSSH skips them too): an
//! unknown marker must never make a line count as a trusted key.
//!
//! Host certificates (OpenSSH `@cert-authority` lines): a certificate passes when a CA trusted for the host
//! signed it, it is a host certificate, it is valid now, it names the address we connected to among its
//! principals, it carries no critical option, and neither it nor its CA is `@revoked`. A certificate from a CA
//! that is not trusted for the host is checked like the plain key inside it, as OpenSSH does.

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use russh::keys::ssh_key::certificate::CertType;
use russh::keys::ssh_key::public::KeyData;
use russh::keys::{Algorithm, Certificate, HashAlg, PublicKey};
use sha1::Sha1;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What the file says about a host's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyStatus {
    /// A line for this host holds exactly this key.
    Known,
    /// The host is recorded, but with other keys (of this or another type), or this key is `@revoked`.
    Changed { lines: Vec<usize> },
    /// No line holds a key for this host.
    Unknown,
}

/// Why a host key was refused. The texts are meant for the operator.
#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    #[error(
        "host key for {host_port} is not known ({algorithm} key {fingerprint}); refusing to connect.\n\
         To trust it, check the fingerprint out of band, then either run again with --accept-new-host-keys \
         or add it with: ssh-keyscan -p {port} {host} >> {file}"
    )]
    Unknown {
        host: String,
        port: u16,
        host_port: String,
        algorithm: String,
        fingerprint: String,
        file: String,
    },
    #[error(
        "HOST KEY FOR {host_port} HAS CHANGED ({algorithm} key {fingerprint} does not match {file} line(s) {lines:?}); \
         refusing to connect. Someone may be intercepting the connection, or the host was reinstalled. \
         Verify the new key out of band and fix {file} by hand (ssh-keygen -R '{host_port}' -f {file})."
    )]
    Changed {
        host_port: String,
        algorithm: String,
        fingerprint: String,
        file: String,
        lines: Vec<usize>,
    },
    #[error(
        "HOST KEY FOR {host_port} HAS CHANGED: {file} line(s) {lines:?} record it with {recorded} key(s), but it \
         offers only {offered}; refusing to connect. Someone may be intercepting the connection, or the host was \
         reinstalled. Verify its keys out of band and fix {file} by hand (ssh-keygen -R '{host_port}' -f {file})."
    )]
    OtherKeyTypes {
        host_port: String,
        recorded: String,
        offered: String,
        file: String,
        lines: Vec<usize>,
    },
    #[error("cannot read known_hosts file {file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("cannot record host key for {host_port} in {file}: {source}")]
    Write {
        host_port: String,
        file: String,
        source: std::io::Error,
    },
    #[error(
        "host certificate of {host_port} refused ({reason}; certificate key {fingerprint}, CA {ca}); refusing to \
         connect. Check the host's certificate and the @cert-authority lines of {file}"
    )]
    Certificate {
        host_port: String,
        reason: String,
        fingerprint: String,
        ca: String,
        file: String,
    },
}

/// One `known_hosts` file.
#[derive(Debug, Clone)]
pub struct KnownHosts {
    path: PathBuf,
    accept_new: bool,
}

/// The host pattern OpenSSH uses: `host` on port 22, `[host]:port` otherwise.
pub fn host_pattern(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// `SHA256:…` as printed by `ssh-keygen -l`.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

impl KnownHosts {
    /// `path = None` means `~/.ssh/known_hosts`.
    pub fn new(path: Option<PathBuf>, accept_new: bool) -> Self {
        let path = path.unwrap_or_else(default_path);
        Self { path, accept_new }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn text(&self) -> Result<String, HostKeyError> {
        match std::fs::read_to_string(&self.path) {
            Ok(t) => Ok(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(source) => Err(HostKeyError::Read {
                file: self.path.display().to_string(),
                source,
            }),
        }
    }

    /// Look the key up without changing anything.
    pub fn status(
        &self,
        host: &str,
        port: u16,
        key: &PublicKey,
    ) -> Result<HostKeyStatus, HostKeyError> {
        Ok(status_in(&self.text()?, &host_pattern(host, port), key))
    }

    /// The key types of the plain keys recorded for the host (empty for an unknown host), in file order without
    /// repeats: the only host key types a connection offers to a known host.
    pub fn recorded_algorithms(&self, host: &str, port: u16) -> Vec<Algorithm> {
        let text = self.text().unwrap_or_default();
        let mut out: Vec<Algorithm> = Vec::new();
        for key in plain_keys(&text, &host_pattern(host, port)).filter_map(|(_, k)| k) {
            if !out.contains(&key.algorithm()) {
                out.push(key.algorithm());
            }
        }
        out
    }

    /// The error for a known host whose server offered none of the recorded key types (the handshake found no
    /// common host key algorithm); `offered` is the server's list.
    pub fn other_key_types(&self, host: &str, port: u16, offered: &[String]) -> HostKeyError {
        let host_port = host_pattern(host, port);
        let text = self.text().unwrap_or_default();
        let recorded: Vec<(usize, Option<PublicKey>)> = plain_keys(&text, &host_port).collect();
        let mut names: Vec<String> = Vec::new();
        for name in recorded
            .iter()
            .filter_map(|(_, k)| k.as_ref().map(|k| k.algorithm().to_string()))
        {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        HostKeyError::OtherKeyTypes {
            host_port,
            recorded: names.join(", "),
            offered: if offered.is_empty() {
                "nothing".to_string()
            } else {
                offered.join(", ")
            },
            file: self.path.display().to_string(),
            lines: recorded.iter().map(|(n, _)| *n).collect(),
        }
    }

    /// Whether some `@cert-authority` line covers the host: only then does atrest ask servers for their host
    /// certificates (a certificate it cannot check would only be refused).
    pub fn has_authorities(&self, host: &str, port: u16) -> bool {
        self.text()
            .map(|t| !authorities_in(&t, &host_pattern(host, port)).is_empty())
            .unwrap_or(false)
    }

    /// Accept a host certificate signed by a CA trusted for the host; a certificate from any other CA is
    /// judged by the plain key inside it ([`KnownHosts::check`]).
    pub fn check_certificate(
        &self,
        host: &str,
        port: u16,
        cert: &Certificate,
        now_unix: u64,
    ) -> Result<(), HostKeyError> {
        let host_port = host_pattern(host, port);
        let text = self.text()?;
        let ca_key = PublicKey::from(cert.signature_key().clone());
        let refuse = |reason: String| HostKeyError::Certificate {
            host_port: host_port.clone(),
            reason,
            fingerprint: cert.public_key().fingerprint(HashAlg::Sha256).to_string(),
            ca: fingerprint(&ca_key),
            file: self.path.display().to_string(),
        };
        let trusted = authorities_in(&text, &host_port)
            .iter()
            .any(|ca| ca.key_data() == cert.signature_key());
        if !trusted {
            return self.check(host, port, &PublicKey::from(cert.public_key().clone()));
        }
        for (what, key) in [("its CA", cert.signature_key()), ("it", cert.public_key())] {
            if let Some(line) = revoked_in(&text, &host_port, key) {
                return Err(refuse(format!("{what} is @revoked on line {line}")));
            }
        }
        if cert.cert_type() != CertType::Host {
            return Err(refuse(
                "it is a user certificate, not a host certificate".into(),
            ));
        }
        if !cert.critical_options().is_empty() {
            return Err(refuse(format!(
                "it carries critical options ({}), which host certificates do not have",
                cert.critical_options()
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if cert.valid_after() > now_unix || now_unix >= cert.valid_before() {
            return Err(refuse(format!(
                "it is valid from {} to {}, not now ({})",
                utc(cert.valid_after()),
                utc(cert.valid_before()),
                utc(now_unix)
            )));
        }
        // Signature, CA and validity window; principals are ours to check.
        let ca_fingerprint = ca_key.fingerprint(HashAlg::Sha256);
        if cert.validate_at(now_unix, [&ca_fingerprint]).is_err() {
            return Err(refuse(
                "its signature does not verify with the CA key".into(),
            ));
        }
        // Stricter than OpenSSH, which takes an empty list as "any host": a certificate must name the host.
        if !cert
            .valid_principals()
            .iter()
            .any(|p| p.eq_ignore_ascii_case(host))
        {
            return Err(refuse(format!(
                "it is not valid for {host} (principals: {})",
                if cert.valid_principals().is_empty() {
                    "none".to_string()
                } else {
                    cert.valid_principals().join(", ")
                }
            )));
        }
        Ok(())
    }

    /// Accept a known key, record an unknown one if `accept_new`, refuse everything else.
    pub fn check(&self, host: &str, port: u16, key: &PublicKey) -> Result<(), HostKeyError> {
        let host_port = host_pattern(host, port);
        let file = self.path.display().to_string();
        match self.status(host, port, key)? {
            HostKeyStatus::Known => Ok(()),
            HostKeyStatus::Changed { lines } => Err(HostKeyError::Changed {
                host_port,
                algorithm: key.algorithm().to_string(),
                fingerprint: fingerprint(key),
                file,
                lines,
            }),
            HostKeyStatus::Unknown if self.accept_new => {
                self.record(&host_port, key)
                    .map_err(|source| HostKeyError::Write {
                        host_port: host_port.clone(),
                        file: file.clone(),
                        source,
                    })?;
                tracing::warn!(
                    "recorded new host key for {host_port} ({} {}) in {file}",
                    key.algorithm(),
                    fingerprint(key)
                );
                Ok(())
            }
            HostKeyStatus::Unknown => Err(HostKeyError::Unknown {
                host: host.to_string(),
                port,
                host_port,
                algorithm: key.algorithm().to_string(),
                fingerprint: fingerprint(key),
                file,
            }),
        }
    }

    fn record(&self, host_port: &str, key: &PublicKey) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let existing = std::fs::read(&self.path).unwrap_or_default();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        let key_text = key
            .to_openssh()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        // Drop the comment: known_hosts lines are `pattern algorithm base64`.
        let key_text = key_text
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        let sep = if existing.is_empty() || existing.ends_with(b"\n") {
            ""
        } else {
            "\n"
        };
        writeln!(f, "{sep}{host_port} {key_text}")?;
        f.sync_all()
    }
}

fn default_path() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
        .join(".ssh")
        .join("known_hosts")
}

/// Unix seconds as RFC 3339 UTC (`forever` past the year 9999, as OpenSSH's "valid forever").
fn utc(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "forever".to_string())
}

/// One parsed known_hosts line: its number, marker (`@cert-authority`, `@revoked`), host patterns and key.
struct Line<'a> {
    number: usize,
    marker: Option<&'a str>,
    patterns: &'a str,
    key: Option<PublicKey>,
}

fn lines(text: &str) -> impl Iterator<Item = Line<'_>> {
    text.lines().enumerate().filter_map(|(index, raw)| {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let mut fields = line.split_whitespace();
        let mut first = fields.next()?;
        let mut marker = None;
        if first.starts_with('@') {
            marker = Some(first);
            first = fields.next()?;
        }
        let (_algorithm, blob) = (fields.next()?, fields.next()?);
        Some(Line {
            number: index + 1,
            marker,
            patterns: first,
            key: russh::keys::parse_public_key_base64(blob).ok(),
        })
    })
}

/// The unmarked lines for `host_port`: line number and key (None when the key does not parse).
fn plain_keys<'a>(
    text: &'a str,
    host_port: &'a str,
) -> impl Iterator<Item = (usize, Option<PublicKey>)> + 'a {
    lines(text)
        .filter(move |l| l.marker.is_none() && patterns_match(l.patterns, host_port))
        .map(|l| (l.number, l.key))
}

/// The host CAs `@cert-authority` lines trust for `host_port`.
pub fn authorities_in(text: &str, host_port: &str) -> Vec<PublicKey> {
    lines(text)
        .filter(|l| l.marker == Some("@cert-authority") && patterns_match(l.patterns, host_port))
        .filter_map(|l| l.key)
        .collect()
}

/// The line that marks `key` `@revoked` for `host_port`, if any.
fn revoked_in(text: &str, host_port: &str, key: &KeyData) -> Option<usize> {
    lines(text)
        .find(|l| {
            l.marker == Some("@revoked")
                && patterns_match(l.patterns, host_port)
                && l.key.as_ref().is_some_and(|k| k.key_data() == key)
        })
        .map(|l| l.number)
}

/// The decision for `host_port` against the text of a known_hosts file.
pub fn status_in(text: &str, host_port: &str, key: &PublicKey) -> HostKeyStatus {
    let mut other_keys = Vec::new();
    let mut known = false;
    for line in lines(text) {
        if !patterns_match(line.patterns, host_port) {
            continue;
        }
        let Some(recorded) = line.key else { continue };
        let same_key = recorded.key_data() == key.key_data();
        match line.marker {
            None if same_key => known = true,
            None => other_keys.push(line.number),
            Some("@revoked") if same_key => {
                return HostKeyStatus::Changed {
                    lines: vec![line.number],
                };
            }
            // `@revoked` for another key; CA lines vouch for certificates, not plain keys; unknown markers are
            // ignored as OpenSSH does (never trusted).
            Some(_) => {}
        }
    }
    // As OpenSSH: one line with this exact key is enough (a host may have several keys recorded). Any other
    // recorded key, of this type or another, makes the host known: a key it does not list is a changed key.
    if known {
        HostKeyStatus::Known
    } else if !other_keys.is_empty() {
        HostKeyStatus::Changed { lines: other_keys }
    } else {
        HostKeyStatus::Unknown
    }
}

/// A comma-separated pattern list (`host1,[host2]:2222,|1|salt|hash`), with `!negation` and `*`/`?` wildcards.
fn patterns_match(list: &str, host_port: &str) -> bool {
    let mut matched = false;
    for pattern in list.split(',') {
        if let Some(negated) = pattern.strip_prefix('!') {
            if wildcard_match(negated, host_port) {
                return false;
            }
        } else if let Some(hashed) = pattern.strip_prefix("|1|") {
            matched |= hashed_match(hashed, host_port);
        } else {
            matched |= wildcard_match(pattern, host_port);
        }
    }
    matched
}

fn hashed_match(salt_and_hash: &str, host_port: &str) -> bool {
    let Some((salt, hash)) = salt_and_hash.split_once('|') else {
        return false;
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let (Ok(salt), Ok(hash)) = (b64.decode(salt), b64.decode(hash)) else {
        return false;
    };
    let Ok(mac) = <Hmac<Sha1> as KeyInit>::new_from_slice(&salt) else {
        return false;
    };
    mac.chain_update(host_port.as_bytes())
        .verify_slice(&hash)
        .is_ok()
}

fn wildcard_match(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], t) || (!t.is_empty() && go(p, &t[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a.eq_ignore_ascii_case(b) => go(&p[1..], &t[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Two real ed25519 keys (public halves only) and an ecdsa key.
    const K1: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";
    const K2: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIN+Wjn4+4Fcvl2JlKpggT+wCRxpSvtqqpVrQrKN1/A22";
    const EC: &str = "AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBONQRZ4rPmcw6cciZ41cAY+DivvfyZyfgZNzaHo6iHN8VcTmMufRd+fTUi0Ckd209cCB8UWrT2o0R9re7QcYVfI=";

    fn key(b: &str) -> PublicKey {
        russh::keys::parse_public_key_base64(b).expect("test key parses")
    }

    #[test]
    fn plain_and_bracketed_entries() {
        let text = format!("127.0.0.11 ssh-ed25519 {K1}\n[127.0.0.12]:2222 ssh-ed25519 {K2}\n");
        assert_eq!(
            status_in(&text, "127.0.0.11", &key(K1)),
            HostKeyStatus::Known
        );
        assert_eq!(
            status_in(&text, "127.0.0.11", &key(K2)),
            HostKeyStatus::Changed { lines: vec![1] }
        );
        assert_eq!(
            status_in(&text, "[127.0.0.12]:2222", &key(K2)),
            HostKeyStatus::Known
        );
        // Port 22 entry does not vouch for another port.
        assert_eq!(
            status_in(&text, "127.0.0.12", &key(K2)),
            HostKeyStatus::Unknown
        );
        assert_eq!(
            status_in(&text, "[127.0.0.11]:2222", &key(K1)),
            HostKeyStatus::Unknown
        );
    }

    #[test]
    fn hashed_entry_matches_only_its_host() {
        // `ssh-keygen -H` form for "127.0.0.11", computed with the same HMAC-SHA1 OpenSSH uses.
        let salt = [7u8; 20];
        let mac = <Hmac<Sha1> as KeyInit>::new_from_slice(&salt)
            .expect("hmac key")
            .chain_update(b"127.0.0.11")
            .finalize()
            .into_bytes();
        let b64 = base64::engine::general_purpose::STANDARD;
        let line = format!(
            "|1|{}|{} ssh-ed25519 {K1}\n",
            b64.encode(salt),
            b64.encode(mac)
        );
        assert_eq!(
            status_in(&line, "127.0.0.11", &key(K1)),
            HostKeyStatus::Known
        );
        assert_eq!(
            status_in(&line, "127.0.0.12", &key(K1)),
            HostKeyStatus::Unknown
        );
        assert_eq!(
            status_in(&line, "127.0.0.11", &key(K2)),
            HostKeyStatus::Changed { lines: vec![1] }
        );
    }

    #[test]
    fn comments_lists_wildcards_negation_revoked() {
        let text = format!(
            "# comment\n\nnode1,10.0.0.*,!10.0.0.9 ssh-ed25519 {K1} a comment\n@revoked * ssh-ed25519 {K2}\n"
        );
        assert_eq!(status_in(&text, "10.0.0.5", &key(K1)), HostKeyStatus::Known);
        assert_eq!(status_in(&text, "NODE1", &key(K1)), HostKeyStatus::Known);
        assert_eq!(
            status_in(&text, "10.0.0.9", &key(K1)),
            HostKeyStatus::Unknown
        );
        assert_eq!(
            status_in(&text, "node1", &key(K2)),
            HostKeyStatus::Changed { lines: vec![4] }
        );
    }

    #[test]
    fn unknown_refused_with_fingerprint_and_advice_and_tofu_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kh");
        let strict = KnownHosts::new(Some(path.clone()), false);
        let err = strict
            .check("127.0.0.11", 2222, &key(K1))
            .expect_err("unknown refused");
        let text = err.to_string();
        assert!(text.contains("SHA256:"), "{text}");
        assert!(text.contains(&fingerprint(&key(K1))), "{text}");
        assert!(text.contains("--accept-new-host-keys"), "{text}");
        assert!(text.contains("ssh-keyscan -p 2222 127.0.0.11"), "{text}");
        assert!(!path.exists());

        let tofu = KnownHosts::new(Some(path.clone()), true);
        tofu.check("127.0.0.11", 2222, &key(K1)).expect("recorded");
        let recorded = std::fs::read_to_string(&path).expect("file written");
        assert_eq!(recorded, format!("[127.0.0.11]:2222 ssh-ed25519 {K1}\n"));
        strict
            .check("127.0.0.11", 2222, &key(K1))
            .expect("now known");
        // TOFU never overrides a changed key.
        let err = tofu
            .check("127.0.0.11", 2222, &key(K2))
            .expect_err("changed refused");
        assert!(err.to_string().contains("HAS CHANGED"), "{err}");
    }

    #[test]
    fn fingerprint_matches_ssh_keygen_format() {
        let f = fingerprint(&key(K1));
        assert!(f.starts_with("SHA256:"));
        assert_eq!(f.len(), "SHA256:".len() + 43);
    }

    /// The test vectors of `known_hosts_vectors.txt`: name → `algorithm base64`.
    fn vector(name: &str) -> String {
        include_str!("known_hosts_vectors.txt")
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no vector {name}"))
            .to_string()
    }

    fn cert(name: &str) -> Certificate {
        Certificate::from_openssh(&vector(name)).expect("test certificate parses")
    }

    /// `check_certificate` against a known_hosts file holding `text`.
    fn check_cert(text: &str, host: &str, cert: &Certificate, now: u64) -> Result<(), String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("known_hosts");
        std::fs::write(&path, text).expect("write known_hosts");
        KnownHosts::new(Some(path), false)
            .check_certificate(host, 22, cert, now)
            .map_err(|e| e.to_string())
    }

    const VALID: u64 = 1_790_000_000; // 2026-09-21, inside 2026-01-01 .. 2027-01-01

    #[test]
    fn host_certificates_from_a_trusted_ca() {
        let ca = format!("@cert-authority 10.0.0.*,node1.example {}\n", vector("ca"));
        let host = cert("host-cert");
        assert_eq!(check_cert(&ca, "10.0.0.1", &host, VALID), Ok(()));
        assert_eq!(check_cert(&ca, "NODE1.example", &host, VALID), Ok(()));
        let expect = |r: Result<(), String>, text: &str| {
            let err = r.expect_err(text);
            assert!(err.contains(text), "{err}");
        };
        expect(
            check_cert(&ca, "10.0.0.2", &host, VALID),
            "it is not valid for 10.0.0.2",
        );
        expect(
            check_cert(&ca, "10.0.0.1", &host, 1_700_000_000),
            "it is valid from 2026-01-01T00:00:00Z to 2027-01-01T00:00:00Z, not now (2023-11-14T22:13:20Z)",
        );
        expect(check_cert(&ca, "10.0.0.1", &host, 1_800_000_000), "not now");
        expect(
            check_cert(&ca, "10.0.0.1", &cert("user-cert"), VALID),
            "it is a user certificate",
        );
        expect(
            check_cert(&ca, "10.0.0.1", &cert("noprinc-cert"), VALID),
            "(principals: none)",
        );
        let revoked = format!("{ca}@revoked * {}\n", vector("ca"));
        expect(
            check_cert(&revoked, "10.0.0.1", &host, VALID),
            "its CA is @revoked on line 2",
        );
        // The CA line covers other hosts only: here the certificate is judged by its plain key (unknown).
        expect(check_cert(&ca, "10.0.1.1", &host, VALID), "is not known");
    }

    #[test]
    fn authority_lines_are_not_plain_keys() {
        let text = format!("@cert-authority * ssh-ed25519 {K1}\n@revoked * ssh-ed25519 {K2}\n");
        assert_eq!(authorities_in(&text, "10.0.0.1"), vec![key(K1)]);
        assert!(authorities_in(&text, "[10.0.0.1]:2222").len() == 1);
        assert_eq!(
            status_in(&text, "10.0.0.1", &key(K1)),
            HostKeyStatus::Unknown,
            "a CA key is not a host key"
        );
        assert_eq!(revoked_in(&text, "10.0.0.1", key(K2).key_data()), Some(2));
        assert_eq!(revoked_in(&text, "10.0.0.1", key(K1).key_data()), None);
        let negated = format!("@cert-authority *,!10.0.0.9 ssh-ed25519 {K1}\n");
        assert!(authorities_in(&negated, "10.0.0.9").is_empty());
    }

    #[test]
    fn a_known_host_presenting_another_key_type_has_a_changed_key() {
        let text = format!("10.0.0.1 ecdsa-sha2-nistp256 {EC}\n10.0.0.2 ssh-ed25519 {K2}\n");
        assert_eq!(
            status_in(&text, "10.0.0.1", &key(K1)),
            HostKeyStatus::Changed { lines: vec![1] }
        );
        assert_eq!(status_in(&text, "10.0.0.1", &key(EC)), HostKeyStatus::Known);
        // Trust on first use does not record the new type either.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kh");
        std::fs::write(&path, &text).expect("write");
        let tofu = KnownHosts::new(Some(path.clone()), true);
        let err = tofu.check("10.0.0.1", 22, &key(K1)).expect_err("changed");
        assert!(err.to_string().contains("HAS CHANGED"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), text);
        // What a connection offers: the recorded types of a known host, nothing for an unknown one.
        assert_eq!(
            tofu.recorded_algorithms("10.0.0.1", 22),
            vec![key(EC).algorithm()]
        );
        assert_eq!(tofu.recorded_algorithms("10.0.0.3", 22), vec![]);
        let two = format!("{text}10.0.0.1 ssh-ed25519 {K1}\n10.0.0.1 ecdsa-sha2-nistp256 {EC}\n");
        std::fs::write(&path, &two).expect("write");
        assert_eq!(
            tofu.recorded_algorithms("10.0.0.1", 22),
            vec![key(EC).algorithm(), key(K1).algorithm()]
        );
        let offered = ["ssh-rsa".to_string()];
        let e = tofu.other_key_types("10.0.0.1", 22, &offered).to_string();
        assert!(
            e.contains("HAS CHANGED")
                && e.contains("line(s) [1, 3, 4]")
                && e.contains("ecdsa-sha2-nistp256, ssh-ed25519 key(s)")
                && e.contains("offers only ssh-rsa"),
            "{e}"
        );
    }

    #[test]
    fn unknown_markers_are_ignored_not_trusted() {
        for marker in ["@trusted", "@cert-authority-x", "@", "@REVOKED"] {
            let text = format!("{marker} 10.0.0.1 ssh-ed25519 {K1}\n");
            assert_eq!(
                status_in(&text, "10.0.0.1", &key(K1)),
                HostKeyStatus::Unknown,
                "{marker}"
            );
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("kh");
            std::fs::write(&path, &text).expect("write");
            let strict = KnownHosts::new(Some(path), false);
            assert!(strict.recorded_algorithms("10.0.0.1", 22).is_empty());
            let err = strict.check("10.0.0.1", 22, &key(K1)).expect_err(marker);
            assert!(err.to_string().contains("is not known"), "{err}");
        }
    }
}
