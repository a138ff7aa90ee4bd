//! One rule for the tests that need root (sshd, dockerd, etcd, mount namespaces), so that none of them can
//! disappear silently: as root they always run, whatever `ATREST_SKIP_TESTBED` says; without root they fail with
//! the hint, unless `ATREST_SKIP_TESTBED` is set (to any value), in which case they skip visibly — a line on
//! stderr and a line appended to the file `ATREST_SKIP_LOG` names, which `scripts/test` counts and prints at the
//! end of the run.

use std::io::Write;

/// Whether the process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// True when the root-only test `test` may run; false (after recording the skip) when it may not and skipping
/// was asked for; panics with the hint otherwise.
pub fn may_run(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var_os("ATREST_SKIP_TESTBED").is_none() {
        panic!(
            "{test}: needs root and scripts/prereqs.sh (sshd, dockerd, etcd); run as root, or set \
             ATREST_SKIP_TESTBED=1 to skip it"
        );
    }
    eprintln!("SKIPPED {test}: not root and ATREST_SKIP_TESTBED is set");
    if let Some(log) = std::env::var_os("ATREST_SKIP_LOG")
        && let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
    {
        let _ = writeln!(file, "{test}");
    }
    false
}
