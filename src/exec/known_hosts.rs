//! OpenSSH `known_hosts` checking: every SSH connection atrest makes goes through [`KnownHosts::check`].
//!
//! Policy: a recorded matching key passes; a different key for the same host is refused loudly (possible
//! man-in-the-middle); an unknown host is refused with its SHA256 fingerprint and how to trust it, unless the
//! caller opted in to trust-on-first-use (`accept_new`), in which case the key is appended to the file.

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use russh::keys::{HashAlg, PublicKey};
use sha1::Sha1;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What the file says about a host's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyStatus {
    /// A line for this host holds exactly this key.
    Known,
    /// The host is recorded, but with other keys of the same algorithm (or it is `@revoked`).
    Changed { lines: Vec<usize> },
    /// No line for this host holds a key of this algorithm.
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
        "host {host_port} presented an OpenSSH host certificate; only plain host keys are supported"
    )]
    Certificate { host_port: String },
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

    /// Look the key up without changing anything.
    pub fn status(
        &self,
        host: &str,
        port: u16,
        key: &PublicKey,
    ) -> Result<HostKeyStatus, HostKeyError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(HostKeyError::Read {
                    file: self.path.display().to_string(),
                    source,
                });
            }
        };
        Ok(status_in(&text, &host_pattern(host, port), key))
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

/// The decision for `host_port` against the text of a known_hosts file.
pub fn status_in(text: &str, host_port: &str, key: &PublicKey) -> HostKeyStatus {
    let mut same_algorithm_other_key = Vec::new();
    let mut known = false;
    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let Some(mut first) = fields.next() else {
            continue;
        };
        let mut marker = None;
        if first.starts_with('@') {
            marker = Some(first);
            let Some(next) = fields.next() else { continue };
            first = next;
        }
        let (Some(_algorithm), Some(blob)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !patterns_match(first, host_port) {
            continue;
        }
        // Host CAs are not supported: ignore such lines rather than trust them.
        if marker == Some("@cert-authority") {
            continue;
        }
        let Ok(recorded) = russh::keys::parse_public_key_base64(blob) else {
            continue;
        };
        let same_key = recorded.key_data() == key.key_data();
        if marker == Some("@revoked") {
            if same_key {
                return HostKeyStatus::Changed {
                    lines: vec![line_no],
                };
            }
            continue;
        }
        if same_key {
            known = true;
        } else if recorded.algorithm() == key.algorithm() {
            same_algorithm_other_key.push(line_no);
        }
    }
    // As OpenSSH: one line with this exact key is enough (a host may have several keys of one type recorded).
    if known {
        HostKeyStatus::Known
    } else if !same_algorithm_other_key.is_empty() {
        HostKeyStatus::Changed {
            lines: same_algorithm_other_key,
        }
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
}
