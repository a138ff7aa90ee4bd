//! The plugin's key-encryption keys (KEKs): the key file format, wrapping of DEKs/seeds, and rotation.
//!
//! Key file (mode 0600): one KEK per line, `<id>:<base64 of 32 bytes>`; `#` lines and blank lines are ignored.
//! The first KEK is the current one (used to wrap); every listed KEK can unwrap. Rotation prepends a fresh KEK.
//!
//! Wrapped blob (what Encrypt returns and Decrypt takes):
//! `0x01 ‖ u8(len id) ‖ id ‖ nonce(12) ‖ AES-256-GCM_KEK(plaintext, AAD = 0x01 ‖ u8(len id) ‖ id)`.
//! The key id travels inside the blob (KMS v1 has no key id field) and is bound by the AAD.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::seal::{self, GCM_NONCE_SIZE};

/// KEK length: AES-256.
pub const KEK_SIZE: usize = 32;
const BLOB_VERSION: u8 = 1;
const HEADER: &str = "# atrest kms-plugin key file: one KEK per line, <id>:<base64 of 32 bytes>; the first is current.\n";

/// Errors reading, writing or using the key file.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("key file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "key file {path} has mode {mode:o}: it must not be accessible by group or others (chmod 600)"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("key file {path} line {line}: {reason}")]
    Parse {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("key file {path} holds no key")]
    Empty { path: PathBuf },
    #[error("unknown key_id {0:?}")]
    UnknownKeyId(String),
    #[error("wrapped key is malformed: {0}")]
    MalformedBlob(&'static str),
    #[error("key_id mismatch: request says {requested:?}, ciphertext was wrapped by {actual:?}")]
    KeyIdMismatch { requested: String, actual: String },
    #[error("unwrapping with key {key_id:?} failed: {source}")]
    Unwrap {
        key_id: String,
        source: seal::SealError,
    },
    #[error("wrapping failed: {0}")]
    Wrap(seal::SealError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One KEK. Debug never prints the key.
pub struct Kek {
    id: String,
    key: Zeroizing<[u8; KEK_SIZE]>,
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kek")
            .field("id", &self.id)
            .field("key", &"REDACTED")
            .finish()
    }
}

impl Kek {
    /// A fresh random KEK whose id is a short hash of the key (so ids stay unique across rotations).
    pub fn generate() -> Kek {
        let key = seal::random_bytes::<KEK_SIZE>();
        let digest = Sha256::new()
            .chain_update(b"atrest-kms-kek-id\0")
            .chain_update(key.as_ref())
            .finalize();
        Kek {
            id: hex::encode(&digest[..6]),
            key,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    fn line(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{}:{}\n", self.id, B64.encode(self.key.as_ref())))
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 255
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// The KEKs of one key file, current first.
#[derive(Debug)]
pub struct KeyRing {
    keks: Vec<Kek>,
}

impl KeyRing {
    /// Reads `path`; refuses a file readable by group/others.
    pub fn load(path: &Path) -> Result<KeyRing, KeyFileError> {
        let meta = fs::metadata(path).map_err(io_err(path))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = Zeroizing::new(fs::read_to_string(path).map_err(io_err(path))?);
        Self::parse(path, &text)
    }

    /// Reads `path`, or creates it (0600) with one fresh KEK when it does not exist.
    pub fn load_or_create(path: &Path) -> Result<KeyRing, KeyFileError> {
        if !path.exists() {
            let ring = KeyRing {
                keks: vec![Kek::generate()],
            };
            ring.write_new(path)?;
            return Ok(ring);
        }
        Self::load(path)
    }

    fn parse(path: &Path, text: &str) -> Result<KeyRing, KeyFileError> {
        let mut keks: Vec<Kek> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let perr = |reason: String| KeyFileError::Parse {
                path: path.to_path_buf(),
                line: i + 1,
                reason,
            };
            let (id, b64) = line
                .split_once(':')
                .ok_or_else(|| perr("expected <id>:<base64 key>".into()))?;
            if !valid_id(id) {
                return Err(perr(format!(
                    "invalid key id {id:?} (use letters, digits, '.', '_', '-')"
                )));
            }
            if keks.iter().any(|k| k.id == id) {
                return Err(perr(format!("duplicate key id {id:?}")));
            }
            let raw_key = Zeroizing::new(
                B64.decode(b64.trim())
                    .map_err(|e| perr(format!("key is not base64: {e}")))?,
            );
            let key: [u8; KEK_SIZE] = raw_key.as_slice().try_into().map_err(|_| {
                perr(format!(
                    "key must be {KEK_SIZE} bytes, got {}",
                    raw_key.len()
                ))
            })?;
            keks.push(Kek {
                id: id.to_string(),
                key: Zeroizing::new(key),
            });
        }
        if keks.is_empty() {
            return Err(KeyFileError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(KeyRing { keks })
    }

    fn contents(&self) -> Zeroizing<String> {
        let mut s = Zeroizing::new(HEADER.to_string());
        for k in &self.keks {
            s.push_str(&k.line());
        }
        s
    }

    /// Creates `path` exclusively with mode 0600.
    fn write_new(&self, path: &Path) -> Result<(), KeyFileError> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io_err(path))?;
        f.write_all(self.contents().as_bytes())
            .map_err(io_err(path))?;
        f.sync_all().map_err(io_err(path))
    }

    /// Replaces `path` atomically (0600 temp file in the same directory, fsync, rename).
    fn write_replace(&self, path: &Path) -> Result<(), KeyFileError> {
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        self.write_new(&tmp)?;
        fs::rename(&tmp, path).map_err(io_err(path))
    }

    /// The current (wrapping) KEK.
    pub fn current(&self) -> &Kek {
        &self.keks[0]
    }

    pub fn ids(&self) -> Vec<&str> {
        self.keks.iter().map(|k| k.id.as_str()).collect()
    }

    fn get(&self, id: &str) -> Option<&Kek> {
        self.keks.iter().find(|k| k.id == id)
    }

    fn blob_header(id: &str) -> Vec<u8> {
        let mut h = vec![BLOB_VERSION, id.len() as u8];
        h.extend(id.as_bytes());
        h
    }

    /// Wraps `plaintext` under the current KEK; returns `(blob, key_id)`.
    pub fn wrap(&self, plaintext: &[u8]) -> Result<(Vec<u8>, String), KeyFileError> {
        let kek = self.current();
        let mut blob = Self::blob_header(&kek.id);
        let sealed = seal::seal(kek.key.as_ref(), &blob, plaintext).map_err(KeyFileError::Wrap)?;
        blob.extend(sealed);
        Ok((blob, kek.id.clone()))
    }

    /// Unwraps a blob from [`KeyRing::wrap`]. With `requested_key_id` (KMS v2 passes the stored keyID), that id
    /// must be known and must be the one inside the blob.
    pub fn unwrap(
        &self,
        blob: &[u8],
        requested_key_id: Option<&str>,
    ) -> Result<(Zeroizing<Vec<u8>>, String), KeyFileError> {
        if let Some(req) = requested_key_id
            && self.get(req).is_none()
        {
            return Err(KeyFileError::UnknownKeyId(req.to_string()));
        }
        if blob.len() < 2 || blob[0] != BLOB_VERSION {
            return Err(KeyFileError::MalformedBlob("unknown version"));
        }
        let n = usize::from(blob[1]);
        if blob.len() < 2 + n + GCM_NONCE_SIZE {
            return Err(KeyFileError::MalformedBlob("too short"));
        }
        let id = std::str::from_utf8(&blob[2..2 + n])
            .map_err(|_| KeyFileError::MalformedBlob("key id is not UTF-8"))?;
        if let Some(req) = requested_key_id
            && req != id
        {
            return Err(KeyFileError::KeyIdMismatch {
                requested: req.to_string(),
                actual: id.to_string(),
            });
        }
        let kek = self
            .get(id)
            .ok_or_else(|| KeyFileError::UnknownKeyId(id.to_string()))?;
        let pt =
            seal::open(kek.key.as_ref(), &blob[..2 + n], &blob[2 + n..]).map_err(|source| {
                KeyFileError::Unwrap {
                    key_id: id.to_string(),
                    source,
                }
            })?;
        Ok((Zeroizing::new(pt), id.to_string()))
    }
}

/// Prepends a fresh KEK to the key file at `path` (atomically) and returns its id. Old KEKs stay for decryption.
pub fn rotate(path: &Path) -> Result<String, KeyFileError> {
    let mut ring = KeyRing::load(path)?;
    let kek = Kek::generate();
    let id = kek.id.clone();
    ring.keks.insert(0, kek);
    ring.write_replace(path)?;
    Ok(id)
}

/// Default pid file of a plugin using `key_file`: `<key-file>.pid`.
pub fn default_pid_file(key_file: &Path) -> PathBuf {
    let mut s = key_file.as_os_str().to_owned();
    s.push(".pid");
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_wrap_rotate_unwrap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        let ring = KeyRing::load_or_create(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (blob, id1) = ring.wrap(b"dek-bytes").unwrap();
        assert_eq!(id1, ring.current().id());
        let id2 = rotate(&path).unwrap();
        assert_ne!(id1, id2);
        let ring2 = KeyRing::load(&path).unwrap();
        assert_eq!(ring2.ids(), vec![id2.as_str(), id1.as_str()]);
        assert_eq!(
            ring2.unwrap(&blob, Some(&id1)).unwrap().0.as_slice(),
            b"dek-bytes"
        );
        assert_eq!(ring2.unwrap(&blob, None).unwrap().1, id1);
        assert!(matches!(
            ring2.unwrap(&blob, Some("nope")),
            Err(KeyFileError::UnknownKeyId(_))
        ));
        assert!(matches!(
            ring2.unwrap(&blob, Some(&id2)),
            Err(KeyFileError::KeyIdMismatch { .. })
        ));
        let mut bad = blob.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(
            ring2.unwrap(&bad, None),
            Err(KeyFileError::Unwrap { .. })
        ));
        // The old ring does not know the new key.
        let (blob2, _) = ring2.wrap(b"x").unwrap();
        assert!(matches!(
            ring.unwrap(&blob2, None),
            Err(KeyFileError::UnknownKeyId(_))
        ));
    }

    #[test]
    fn rejects_loose_permissions_and_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        KeyRing::load_or_create(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let e = KeyRing::load(&path).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, "a:c2hvcnQ=\n").unwrap();
        let e = KeyRing::load(&path).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("32 bytes"), "{e}");
        fs::write(&path, "# only a comment\n").unwrap();
        assert!(matches!(
            KeyRing::load(&path),
            Err(KeyFileError::Empty { .. })
        ));
        assert!(!format!("{:?}", Kek::generate()).contains('='));
    }
}
