//! Errors from reading, checking, locking and writing cluster.rkestate and atrest's records file.

use std::io;
use std::path::PathBuf;

/// What the user can do about a state file atrest refuses to read; added to every content error because atrest
/// never replaces a broken state file on its own (it holds the cluster's certificates and keys).
const RESTORE_HINT: &str = "atrest does not overwrite a broken state file: repair it, or restore the last good copy \
                            (<file>.bak, or the full-cluster-state ConfigMap in kube-system)";

/// What to do about a broken records file: it holds the archive of retired keys, so atrest never replaces it.
const RECORDS_HINT: &str = "atrest does not overwrite it (it holds the archive of retired keys): repair it, or \
                            restore the last good copy (<file>.bak, or your backup)";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file system operation failed; `action` says which, e.g. "read state file".
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("state file {} is empty (no JSON in it); {RESTORE_HINT}", path.display())]
    Empty { path: PathBuf },

    /// Not JSON, truncated, or a known key holds the wrong type. `at` is the key path, if known.
    #[error("{}:{line}:{column}: {at}{message}; {RESTORE_HINT}", path.display(), at = at.as_deref().map(|p| format!("{p}: ")).unwrap_or_default())]
    Malformed {
        path: PathBuf,
        line: usize,
        column: usize,
        at: Option<String>,
        message: String,
    },

    /// Valid JSON with the wrong structure where no position is available (checked on the parsed tree).
    #[error("{}: {at}: {message}; {RESTORE_HINT}", path.display())]
    Shape {
        path: PathBuf,
        at: String,
        message: String,
    },

    #[error("another atrest run holds the lock on {} ({holder}); wait for it to finish (lock file: {})", path.display(), lock_path.display())]
    Locked {
        path: PathBuf,
        lock_path: PathBuf,
        /// "pid N", or "pid unknown" when the holder has not written its pid yet.
        holder: String,
    },

    /// The state file changed on disk after atrest read it (RKE does not take atrest's lock).
    #[error("{} was changed by another program since atrest read it (did `rke up` run meanwhile?); nothing was \
             written: run atrest again so it starts from the current file", path.display())]
    ChangedOnDisk { path: PathBuf },

    /// A certificate in `currentState.certificatesBundle` lacks its PEM text.
    #[error("certificate {name} in the state's currentState.certificatesBundle has no {field}")]
    IncompleteCertificate { name: String, field: &'static str },

    /// The `atrest` key an older atrest left in the state does not hold its bookkeeping.
    #[error("the state's \"atrest\" key (left by an older atrest) does not hold atrest's records")]
    Atrest(#[source] serde_json::Error),

    #[error("atrest's records file {} is empty; {RECORDS_HINT}", path.display())]
    EmptyRecords { path: PathBuf },

    /// atrest's records file is not JSON or a key holds the wrong type.
    #[error("{}:{line}:{column}: {at}{message}; {RECORDS_HINT}", path.display(), at = at.as_deref().map(|p| format!("{p}: ")).unwrap_or_default())]
    MalformedRecords {
        path: PathBuf,
        line: usize,
        column: usize,
        at: Option<String>,
        message: String,
    },

    #[error("cannot serialize the state as JSON")]
    Serialize(#[source] serde_json::Error),
}

impl StateError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StateError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
