//! Files on a node: atomic delivery, checksums, removal. Contents travel on the channel's stdin, never on a
//! command line, and are never logged.

use crate::exec::docker::DockerError;
use crate::exec::root;
use crate::exec::ssh::{Host, shell_quote};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The command could not run (SSH, or the container that gives a user without sudo root rights).
    #[error(transparent)]
    Run(#[from] DockerError),
    #[error("{node}: writing {path} failed (exit {status}): {stderr}")]
    Write {
        node: String,
        path: String,
        status: u32,
        stderr: String,
    },
    #[error("{node}: {path} reads back with sha256 {found}, expected {expected}")]
    Verify {
        node: String,
        path: String,
        expected: String,
        found: String,
    },
    #[error("{node}: {what} {path} failed (exit {status}): {stderr}")]
    Other {
        node: String,
        what: &'static str,
        path: String,
        status: u32,
        stderr: String,
    },
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn parent_dir(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) => "/",
        Some(i) => &path[..i],
        None => ".",
    }
}

/// The remote script for [`write_file_atomic`]: temp file in the target directory, content from stdin, checked
/// against the expected sha256 *before* the rename (a cut connection leaves a short temp file that is deleted,
/// never a truncated target), fsync, rename over the target, fsync the directory. Temp files left by a write
/// whose shell was killed outright (no trap ran) are removed first: atrest writes one file per node at a time.
pub fn atomic_write_script(path: &str, mode: u32, expected_sha256: &str) -> String {
    let dir = parent_dir(path);
    format!(
        "set -eu; umask 077; d={dir}; p={path}; mkdir -p \"$d\"; \
         rm -f \"$d\"/.atrest-tmp.*; t=$(mktemp \"$d/.atrest-tmp.XXXXXX\"); trap 'rm -f \"$t\"' EXIT HUP INT TERM PIPE; \
         cat > \"$t\"; \
         echo \"{sha}  $t\" | sha256sum -c --status - || {{ echo 'content arrived incomplete or altered; target left unchanged' >&2; exit 3; }}; \
         chown 0:0 \"$t\"; chmod {mode:o} \"$t\"; sync \"$t\" 2>/dev/null || sync; \
         mv -f \"$t\" \"$p\"; trap - EXIT HUP INT TERM PIPE; sync \"$d\" 2>/dev/null || sync",
        dir = shell_quote(dir),
        path = shell_quote(path),
        sha = expected_sha256,
        mode = mode,
    )
}

/// Write `bytes` to `path` on the node atomically (owner root, `mode`, parent dirs created), then read the sha256
/// back and compare.
pub async fn write_file_atomic(
    host: &Arc<Host>,
    path: &str,
    bytes: &[u8],
    mode: u32,
) -> Result<(), FileError> {
    let expected = sha256_hex(bytes);
    let out =
        root::exec_with_stdin(host, &atomic_write_script(path, mode, &expected), bytes).await?;
    if !out.success() {
        return Err(FileError::Write {
            node: host.label().to_string(),
            path: path.to_string(),
            status: out.status,
            stderr: out.stderr_text(),
        });
    }
    let found = file_sha256(host, path)
        .await?
        .unwrap_or_else(|| "(missing)".into());
    if found != expected {
        return Err(FileError::Verify {
            node: host.label().to_string(),
            path: path.to_string(),
            expected,
            found,
        });
    }
    tracing::info!(
        "{}: wrote {path} ({} bytes, sha256 {})",
        host.label(),
        bytes.len(),
        &expected[..12]
    );
    Ok(())
}

/// sha256 of a file on the node, `None` when it does not exist.
pub async fn file_sha256(host: &Arc<Host>, path: &str) -> Result<Option<String>, FileError> {
    let p = shell_quote(path);
    let out = root::exec(
        host,
        &format!("if [ -e {p} ]; then sha256sum < {p}; else echo absent; fi"),
    )
    .await?;
    if !out.success() {
        return Err(other(host, "hashing", path, &out));
    }
    let text = out.stdout_text();
    let first = text.split_whitespace().next().unwrap_or("");
    if first == "absent" {
        return Ok(None);
    }
    if first.len() == 64 && first.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(Some(first.to_ascii_lowercase()))
    } else {
        Err(FileError::Other {
            node: host.label().to_string(),
            what: "hashing",
            path: path.to_string(),
            status: out.status,
            stderr: format!("unexpected sha256sum output {text:?}"),
        })
    }
}

/// Read a (possibly secret) file from the node; `None` when it does not exist. The caller keeps it zeroized.
pub async fn read_file(
    host: &Arc<Host>,
    path: &str,
) -> Result<Option<Zeroizing<Vec<u8>>>, FileError> {
    Ok(read_files(host, &[path]).await?.pop().flatten())
}

/// Several (possibly secret) files from the node in one command: each `None` when it does not exist. One
/// command rather than one per file, since each costs the node a login shell (and whatever its rc files run).
/// Each file comes back as its length on a line, then that many bytes; a file that changes size while it is
/// read breaks the framing and is an error (read again).
pub async fn read_files(
    host: &Arc<Host>,
    paths: &[&str],
) -> Result<Vec<Option<Zeroizing<Vec<u8>>>>, FileError> {
    let quoted: Vec<String> = paths.iter().map(|p| shell_quote(p)).collect();
    let script = format!(
        "for f in {}; do if [ -e \"$f\" ]; then n=$(wc -c < \"$f\") || exit 1; n=$((n)); echo $n; \
         head -c \"$n\" \"$f\" || exit 1; else echo -; fi; done",
        quoted.join(" ")
    );
    let out = root::exec(host, &script).await?;
    let joined = paths.join(", ");
    if !out.success() {
        return Err(other(host, "reading", &joined, &out));
    }
    let stdout = Zeroizing::new(out.stdout);
    split_framed(&stdout, paths.len()).ok_or_else(|| FileError::Other {
        node: host.label().to_string(),
        what: "reading",
        path: joined,
        status: out.status,
        stderr: "the output does not frame the files (did one change while it was read?)".into(),
    })
}

/// [`read_files`]' output back into `count` files: per file a line with its length and that many bytes, or a
/// line `-` for a missing file; `None` unless it frames exactly `count` files with nothing left over.
fn split_framed(mut rest: &[u8], count: usize) -> Option<Vec<Option<Zeroizing<Vec<u8>>>>> {
    let mut files = Vec::with_capacity(count);
    for _ in 0..count {
        let newline = rest.iter().position(|b| *b == b'\n')?;
        let header = std::str::from_utf8(&rest[..newline]).ok()?.trim();
        rest = &rest[newline + 1..];
        if header == "-" {
            files.push(None);
            continue;
        }
        let len: usize = header.parse().ok()?;
        let body = rest.get(..len)?;
        files.push(Some(Zeroizing::new(body.to_vec())));
        rest = &rest[len..];
    }
    rest.is_empty().then_some(files)
}

/// Remove a file (no error when it is already gone), then fsync its directory.
pub async fn remove_file(host: &Arc<Host>, path: &str) -> Result<(), FileError> {
    let d = shell_quote(parent_dir(path));
    let p = shell_quote(path);
    let out = root::exec(
        host,
        &format!("rm -f {p} && {{ sync {d} 2>/dev/null || sync; }}"),
    )
    .await?;
    if !out.success() {
        return Err(other(host, "removing", path, &out));
    }
    tracing::info!("{}: removed {path}", host.label());
    Ok(())
}

fn other(host: &Host, what: &'static str, path: &str, out: &crate::exec::ssh::Output) -> FileError {
    FileError::Other {
        node: host.label().to_string(),
        what,
        path: path.to_string(),
        status: out.status,
        stderr: out.stderr_text(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framed_files_split_back_with_missing_ones_and_binary_bytes() {
        let out = b"3\nab\n-\n0\n4\n\x00\n9\xff";
        let files = split_framed(out, 4).expect("frames");
        let got: Vec<Option<Vec<u8>>> = files.into_iter().map(|f| f.map(|z| z.to_vec())).collect();
        assert_eq!(
            got,
            vec![
                Some(b"ab\n".to_vec()),
                None,
                Some(Vec::new()),
                Some(b"\x00\n9\xff".to_vec())
            ]
        );
    }

    #[test]
    fn framing_that_does_not_add_up_is_refused() {
        // A file that grew after its length was taken: bytes left over.
        assert!(split_framed(b"2\nabc", 1).is_none());
        // One that shrank: fewer bytes than announced.
        assert!(split_framed(b"5\nabc", 1).is_none());
        // Fewer files than asked for, and a header that is not a length.
        assert!(split_framed(b"-\n", 2).is_none());
        assert!(split_framed(b"x\nabc", 1).is_none());
    }

    fn run(script: &str, stdin: &[u8]) -> std::process::Output {
        use std::io::Write;
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("sh spawns");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin)
            .expect("write");
        child.wait_with_output().expect("sh finishes")
    }

    #[test]
    fn script_writes_atomically_and_refuses_short_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("a b/enc'ryption.yaml");
        let path = target.to_str().expect("utf8 path");
        let content = b"kind: EncryptionConfiguration\n";
        let out = run(
            &atomic_write_script(path, 0o600, &sha256_hex(content)),
            content,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(std::fs::read(&target).expect("written"), content);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&target)
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);

        // A cut stream: only half the bytes arrive. The old file must stay, and no temp file may remain.
        let new = b"kind: EncryptionConfiguration\nresources: []\n";
        let out = run(
            &atomic_write_script(path, 0o600, &sha256_hex(new)),
            &new[..10],
        );
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(std::fs::read(&target).expect("still there"), content);
        let leftovers: Vec<_> = std::fs::read_dir(target.parent().expect("dir"))
            .expect("list")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".atrest-tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    }
}
