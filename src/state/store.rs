//! The state file on disk: one atrest run at a time (an exclusive lock on a sibling `<state>.lock`), atomic
//! replacement (temp file, fsync, rename, fsync of the directory), the previous version kept as `<state>.bak`,
//! and mode 0600 on everything written, whatever the umask.

use crate::state::error::StateError;
use crate::state::rkestate::RkeState;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use zeroize::Zeroizing;

/// State files hold private keys and encryption keys: owner read/write only.
const FILE_MODE: u32 = 0o600;

/// An open, locked state file. The lock is released when this value is dropped (or the process ends).
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    lock_path: PathBuf,
    /// Holds the exclusive lock for as long as it is open.
    _lock: File,
    /// sha256 of the content this handle last read or wrote (`None`: the file was absent, or not read yet).
    /// RKE does not take atrest's lock, so a save first checks the file is still what atrest started from.
    seen: Mutex<Option<[u8; 32]>>,
}

impl StateFile {
    /// Takes the exclusive lock for the state file at `path` (which need not exist yet). Fails at once, without
    /// waiting, if another run holds it, naming that run's pid.
    pub fn open_locked(path: impl Into<PathBuf>) -> Result<StateFile, StateError> {
        let path = path.into();
        let (lock, lock_path) = lock_sibling(&path)?;
        Ok(StateFile {
            path,
            lock_path,
            _lock: lock,
            seen: Mutex::new(None),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn lock_path(&self) -> &Path {
        &self.lock_path
    }

    /// Where [`StateFile::save`] keeps the version it replaced.
    pub fn backup_path(&self) -> PathBuf {
        sibling(&self.path, ".bak")
    }

    /// Reads the state (see [`read`]) and remembers what it read, for [`StateFile::save`]'s check.
    pub fn load(&self) -> Result<RkeState, StateError> {
        let bytes = read_bytes(&self.path)?;
        *self.seen() = bytes.as_deref().map(|b| digest(b));
        parse(&self.path, bytes)
    }

    /// Writes `state` atomically. If the content differs from the file on disk, the old file is first kept as
    /// `<state>.bak`; identical content is not rewritten (only its mode is corrected to 0600).
    ///
    /// Refuses (and writes nothing) if the file on disk is no longer what this handle last loaded or saved, e.g.
    /// because `rke up` rewrote it meanwhile: writing would silently drop RKE's changes.
    pub fn save(&self, state: &RkeState) -> Result<(), StateError> {
        let new = state.to_bytes()?;
        let mut seen = self.seen();
        let old = read_bytes(&self.path)?;
        if old.as_deref().map(|b| digest(b)) != *seen {
            return Err(StateError::ChangedOnDisk {
                path: self.path.clone(),
            });
        }
        match old {
            Some(old) if *old == *new => {
                fs::set_permissions(&self.path, Permissions::from_mode(FILE_MODE))
                    .map_err(|e| StateError::io("set the mode of", &self.path, e))?;
                return Ok(());
            }
            Some(old) => write_atomic(&self.backup_path(), &old)?,
            None => {}
        }
        write_atomic(&self.path, &new)?;
        *seen = Some(digest(&new));
        Ok(())
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Option<[u8; 32]>> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Takes the exclusive lock on `<path>.lock` (created 0600 if missing) and writes this process's pid into it.
/// Fails at once, without waiting, if another run holds it, naming that run's pid.
pub(crate) fn lock_sibling(path: &Path) -> Result<(File, PathBuf), StateError> {
    let lock_path = sibling(path, ".lock");
    let mut lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(&lock_path)
        .map_err(|e| StateError::io("open the lock file", &lock_path, e))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            // The holder writes its pid right after locking; an empty file means it has not done so yet.
            let _ = lock.read_to_string(&mut pid);
            let pid = pid.trim();
            let holder = if pid.is_empty() {
                "pid unknown".to_string()
            } else {
                format!("pid {pid}")
            };
            return Err(StateError::Locked {
                path: path.to_path_buf(),
                lock_path,
                holder,
            });
        }
        Err(fs::TryLockError::Error(e)) => return Err(StateError::io("lock", &lock_path, e)),
    }
    // Record who holds the lock, for the error message of the next run.
    let record = (|| {
        lock.set_len(0)?;
        lock.rewind()?;
        writeln!(lock, "{}", std::process::id())?;
        lock.sync_all()
    })();
    record.map_err(|e| StateError::io("write the lock file", &lock_path, e))?;
    Ok((lock, lock_path))
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// The file's bytes, or `None` if it does not exist.
pub(crate) fn read_bytes(path: &Path) -> Result<Option<Zeroizing<Vec<u8>>>, StateError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(Zeroizing::new(bytes))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StateError::io("read state file", path, e)),
    }
}

/// Reads the state file at `path` without taking the lock (for read-only verbs; saves replace the file
/// atomically, so a concurrent writer is never seen half-done). A missing file is an empty state (RKE has not
/// run yet); anything else that cannot be read or parsed is an error naming the file (and line:column for
/// content errors).
pub fn read(path: &Path) -> Result<RkeState, StateError> {
    parse(path, read_bytes(path)?)
}

fn parse(path: &Path, bytes: Option<Zeroizing<Vec<u8>>>) -> Result<RkeState, StateError> {
    let Some(bytes) = bytes else {
        tracing::debug!(path = %path.display(), "no state file yet; starting from an empty state");
        return Ok(RkeState::empty());
    };
    if let Ok(meta) = fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            "state file {} has mode {:o}: it holds private keys, only its owner should read it (atrest saves it \
             as 0600)",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
    RkeState::parse(&bytes, path)
}

/// The pid of the process holding the lock of the state file at `path` right now, if any. Read from
/// `/proc/locks` (Linux; elsewhere `None`) instead of probing the lock, so a read-only verb can never make a
/// run that starts at the same moment fail.
pub fn lock_holder(path: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(sibling(path, ".lock")).ok()?;
    let locks = fs::read_to_string("/proc/locks").ok()?;
    holder_in(&locks, meta.dev(), meta.ino())
}

/// The pid of a granted FLOCK WRITE lock on (device, inode) in the text of `/proc/locks`
/// (`1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF`; waiters are marked `->`).
fn holder_in(locks: &str, dev: u64, ino: u64) -> Option<u32> {
    // Linux's dev_t layout (glibc `gnu_dev_major`/`gnu_dev_minor`); /proc/locks prints them in hex.
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) != Some(&"FLOCK") || fields.get(3) != Some(&"WRITE") {
            return None;
        }
        let mut id = fields.get(5)?.split(':');
        let (maj, min, inode) = (id.next()?, id.next()?, id.next()?);
        let matches = u64::from_str_radix(maj, 16).ok()? == major
            && u64::from_str_radix(min, 16).ok()? == minor
            && inode.parse::<u64>().ok()? == ino;
        matches.then(|| fields.get(4)?.parse().ok()).flatten()
    })
}

/// `path` with `suffix` appended to its file name (`cluster.rkestate` → `cluster.rkestate.lock`).
pub(crate) fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().map(OsString::from).unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

/// Replaces `path` with `content` so that a crash leaves either the old or the new file, never a mix: write a
/// temp file in the same directory, fsync it, rename it over `path`, fsync the directory.
pub(crate) fn write_atomic(path: &Path, content: &[u8]) -> Result<(), StateError> {
    // One fixed temp name per file: the caller holds the lock, and a leftover from a crash is simply replaced.
    let tmp = sibling(path, ".atrest-tmp");
    match fs::remove_file(&tmp) {
        Ok(()) => {
            tracing::debug!(path = %tmp.display(), "removed a temp file left by an interrupted run")
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(StateError::io("remove the stale temp file", &tmp, e)),
    }
    let write = || -> io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&tmp)?;
        // The umask may have taken bits away from FILE_MODE; set it exactly.
        file.set_permissions(Permissions::from_mode(FILE_MODE))?;
        file.write_all(content)?;
        file.sync_all()
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(StateError::io("write the temp file", &tmp, e));
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(StateError::io("replace", path, e));
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StateError::io("fsync the directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_holder_comes_from_a_granted_flock_write_line() {
        // dev 0xfe00 = 254:0 (as `stat -c %D` prints it), inode 246951.
        let locks = "1: POSIX  ADVISORY  WRITE 77 fe:00:246951 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 4242 fe:00:246951 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 4343 fe:00:246951 0 EOF\n\
                     3: FLOCK  ADVISORY  READ 99 fe:00:1 0 EOF\n";
        assert_eq!(holder_in(locks, 0xfe00, 246_951), Some(4242));
        assert_eq!(
            holder_in(locks, 0xfe00, 1),
            None,
            "a read lock is not a run"
        );
        assert_eq!(holder_in(locks, 0xfe01, 246_951), None, "another device");
        assert_eq!(holder_in("", 0xfe00, 246_951), None);
    }
}
