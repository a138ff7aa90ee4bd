//! Keeps key material out of git: teams keep `cluster.yml` in a repository and change encryption through pull
//! requests, but the files beside it hold keys and credentials — `cluster.rkestate` (the deployed encryption keys,
//! the cluster's CA and client certificates), its `.bak`, atrest's records file (`<config stem>.atreststate`: the
//! archive of retired keys), the etcd snapshots (every secret, encrypted with keys that are in the state), the
//! admin kubeconfig, and a `cluster.yml` whose `custom_config` holds raw aescbc/aesgcm/secretbox secrets.
//! One `git add -A` and they are in the history for good.
//!
//! So before a verb does anything, when the config's directory is in a git work tree, [`check`] asks git which
//! of those paths are tracked, or are neither tracked nor ignored (a path that does not exist yet counts: RKE or
//! atrest will write it), and the caller warns with the exact `.gitignore` lines to add, or refuses under
//! `--strict`. A managed config (`enabled: true` without `custom_config`: the keys live in the state) or a
//! KMS-only `custom_config` keeps cluster.yml itself free of keys, so it is never flagged and may be committed.
//!
//! It runs the `git` binary (`rev-parse`, `ls-files`, `check-ignore`) rather than linking a git library:
//! whoever keeps cluster.yml in git has git installed, git itself is the authority on its ignore rules (nested
//! `.gitignore` files, `core.excludesFile`, `info/exclude`), and no C library or large crate is added. Without
//! git, or outside a work tree, there is nothing to check.

use crate::config::cluster::ClusterConfig;
use crate::config::encryption::EncryptionConfiguration;
use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

/// A path beside the config that must not reach the repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sensitive {
    pub path: PathBuf,
    /// What it is and why it matters, for the warning.
    pub what: String,
    /// A directory (its `.gitignore` line ends in `/`).
    pub dir: bool,
}

impl Sensitive {
    pub fn file(path: impl Into<PathBuf>, what: impl Into<String>) -> Sensitive {
        Sensitive {
            path: path.into(),
            what: what.into(),
            dir: false,
        }
    }

    pub fn dir(path: impl Into<PathBuf>, what: impl Into<String>) -> Sensitive {
        Sensitive {
            path: path.into(),
            what: what.into(),
            dir: true,
        }
    }
}

/// How a sensitive path is exposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exposure {
    /// In git's index: committed already, or about to be.
    Tracked,
    /// Neither tracked nor ignored: the next `git add -A` commits it.
    NotIgnored,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// Relative to the repository's top level, with `/` separators.
    pub rel: String,
    pub what: String,
    pub exposure: Exposure,
    /// The line for the top-level `.gitignore` (`None` when an ignore rule already matches: the path is
    /// tracked regardless of it).
    pub ignore_line: Option<String>,
}

/// What git said about the sensitive paths in one work tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub toplevel: PathBuf,
    pub findings: Vec<Finding>,
    /// cluster.yml holds raw key material (it is among the findings when exposed).
    pub config_has_raw_keys: bool,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }

    /// The warning: each exposed path, the `.gitignore` lines to add, how to untrack, and where keys belong.
    pub fn message(&self) -> String {
        let mut out = format!(
            "files that hold keys or credentials could be committed to the git repository at {}:",
            self.toplevel.display()
        );
        for f in &self.findings {
            let how = match f.exposure {
                Exposure::Tracked => "is TRACKED by git",
                Exposure::NotIgnored => "is not ignored",
            };
            let _ = write!(out, "\n  {} ({}) {how}", f.rel, f.what);
        }
        let lines: Vec<&str> = self
            .findings
            .iter()
            .filter_map(|f| f.ignore_line.as_deref())
            .collect();
        if !lines.is_empty() {
            let _ = write!(
                out,
                "\nadd these lines to {}:",
                self.toplevel.join(".gitignore").display()
            );
            for l in &lines {
                let _ = write!(out, "\n  {l}");
            }
        }
        let tracked: Vec<&str> = self
            .findings
            .iter()
            .filter(|f| f.exposure == Exposure::Tracked)
            .map(|f| f.rel.as_str())
            .collect();
        if !tracked.is_empty() {
            let _ = write!(
                out,
                "\nand stop tracking them with: git rm -r --cached -- {} (if they were ever committed, the history still holds them: treat the \
                 keys in them as leaked and rotate them)",
                tracked.join(" ")
            );
        }
        if self.config_has_raw_keys {
            out.push_str(
                "\ncluster.yml holds raw keys (aescbc/aesgcm/secretbox secrets in custom_config): keep it out of \
                 git, or switch to the managed config (enabled: true without custom_config; atrest keeps the keys \
                 in the state) or a KMS-only custom_config, which keep cluster.yml free of keys",
            );
        } else {
            out.push_str(
                "\ncluster.yml itself holds no key material (managed, KMS-only or disabled config) and can be \
                 committed; keep the files above in a secret store",
            );
        }
        out
    }
}

/// Why the check could not run although the directory may be in a work tree (e.g. git's "dubious ownership").
#[derive(Debug, thiserror::Error)]
#[error("cannot check whether key files are kept out of git: `git {args}` failed: {stderr}")]
pub struct GitError {
    args: String,
    stderr: String,
}

/// Whether `config` holds raw key material: any aescbc, aesgcm or secretbox key in any resource.
pub fn has_raw_keys(config: &EncryptionConfiguration) -> bool {
    config
        .resources
        .iter()
        .flat_map(|r| &r.providers)
        .flat_map(|p| [&p.aescbc, &p.aesgcm, &p.secretbox])
        .any(|k| k.as_ref().is_some_and(|k| !k.keys.is_empty()))
}

/// Whether cluster.yml holds raw key material, enabled or not (a disabled `custom_config` is still in the file).
pub fn cluster_has_raw_keys(cluster: &ClusterConfig) -> bool {
    cluster
        .services
        .kube_api
        .secrets_encryption_config
        .as_ref()
        .and_then(|s| s.custom_config.as_ref())
        .is_some_and(has_raw_keys)
}

/// Runs git on the paths. `Ok(None)`: git is not installed or `dir` is not in a work tree (nothing to check).
/// `config` is checked too when `config_has_raw_keys`. Paths outside the work tree are left alone.
pub fn check(
    dir: &Path,
    config: &Path,
    config_has_raw_keys: bool,
    sensitive: &[Sensitive],
) -> Result<Option<Report>, GitError> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Some(toplevel) = toplevel(dir)? else {
        return Ok(None);
    };
    let mut all: Vec<Sensitive> = Vec::new();
    if config_has_raw_keys {
        all.push(Sensitive::file(
            config,
            "cluster config with raw keys in custom_config",
        ));
    }
    all.extend(sensitive.iter().cloned());
    // Relative to the top level; paths outside the work tree, and repeats, are dropped.
    let mut rels: Vec<(String, Sensitive)> = Vec::new();
    for s in all {
        if let Some(rel) = relative_to(&toplevel, &s.path)
            && !rel.is_empty()
            && !rels.iter().any(|(r, _)| *r == rel)
        {
            rels.push((rel, s));
        }
    }
    if rels.is_empty() {
        return Ok(Some(Report {
            toplevel,
            findings: Vec::new(),
            config_has_raw_keys,
        }));
    }
    let tracked_files = tracked(&toplevel, &rels)?;
    // A directory is asked with a trailing `/` so that directory-only rules (`name/`) match it before it exists.
    let queries: Vec<String> = rels
        .iter()
        .map(|(r, s)| if s.dir { format!("{r}/") } else { r.clone() })
        .collect();
    let ignored = ignored(&toplevel, &queries)?;
    let mut findings = Vec::new();
    for ((rel, s), query) in rels.iter().zip(&queries) {
        let is_tracked = tracked_files.iter().any(|t| {
            *t == *rel
                || t.strip_prefix(rel.as_str())
                    .is_some_and(|r| r.starts_with('/'))
        });
        let is_ignored = ignored
            .iter()
            .any(|i| i == query || i.trim_end_matches('/') == rel);
        let exposure = match (is_tracked, is_ignored) {
            (true, _) => Exposure::Tracked,
            (false, false) => Exposure::NotIgnored,
            (false, true) => continue,
        };
        findings.push(Finding {
            rel: rel.clone(),
            what: s.what.clone(),
            exposure,
            ignore_line: (!is_ignored).then(|| {
                if s.dir {
                    format!("/{rel}/")
                } else {
                    format!("/{rel}")
                }
            }),
        });
    }
    Ok(Some(Report {
        toplevel,
        findings,
        config_has_raw_keys,
    }))
}

/// The files git tracks among `rels` (and under those that are directories).
fn tracked(toplevel: &Path, rels: &[(String, Sensitive)]) -> Result<Vec<String>, GitError> {
    // File names are names, not patterns (`[`, `*` in a path match only themselves).
    let mut ls = vec!["--literal-pathspecs", "ls-files", "-z", "--cached", "--"];
    ls.extend(rels.iter().map(|(r, _)| r.as_str()));
    let listed = git_ok(toplevel, &ls)?;
    Ok(nul_separated(&listed))
}

/// Which of `queries` an ignore rule matches (`--no-index`: also for tracked paths).
fn ignored(toplevel: &Path, queries: &[String]) -> Result<Vec<String>, GitError> {
    let ci = ["check-ignore", "-z", "--stdin", "--no-index"];
    let input: String = queries.iter().map(|q| format!("{q}\0")).collect();
    let out = git(toplevel, &ci, Some(input.as_bytes()))?;
    // check-ignore exits 1 when no path is ignored.
    if !matches!(out.code, Some(0) | Some(1)) {
        return Err(out.error(&ci));
    }
    Ok(nul_separated(&out.stdout))
}

fn nul_separated(text: &str) -> Vec<String> {
    text.split('\0')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// The work tree's top level, canonical; `None` without git or outside a work tree.
fn toplevel(dir: &Path) -> Result<Option<PathBuf>, GitError> {
    let args = ["rev-parse", "--show-toplevel"];
    let out = match Command::new("git").arg("-C").arg(dir).args(args).output() {
        Ok(out) => out,
        Err(e) => {
            tracing::debug!(
                "git not run ({e}): not checking whether key files are kept out of git"
            );
            return Ok(None);
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        // Outside a repository, or inside a bare one / a .git directory: no work tree to commit from.
        if stderr.contains("not a git repository") || stderr.contains("must be run in a work tree")
        {
            return Ok(None);
        }
        return Err(GitError {
            args: args.join(" "),
            stderr: stderr.trim().to_string(),
        });
    }
    let top = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if top.is_empty() {
        return Ok(None);
    }
    Ok(Some(
        std::fs::canonicalize(&top).unwrap_or_else(|_| PathBuf::from(top)),
    ))
}

struct GitOutput {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl GitOutput {
    fn error(&self, args: &[&str]) -> GitError {
        GitError {
            args: args.join(" "),
            stderr: self.stderr.trim().to_string(),
        }
    }
}

/// Runs `git -C toplevel args`, feeding `stdin` if given.
fn git(toplevel: &Path, args: &[&str], stdin: Option<&[u8]>) -> Result<GitOutput, GitError> {
    use std::io::Write as _;
    use std::process::Stdio;
    let failed = |e: std::io::Error| GitError {
        args: args.join(" "),
        stderr: e.to_string(),
    };
    let mut child = Command::new("git")
        .arg("-C")
        .arg(toplevel)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(failed)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A few short paths: they fit the pipe buffer, so writing before reading cannot deadlock.
        pipe.write_all(input).map_err(failed)?;
    }
    let out = child.wait_with_output().map_err(failed)?;
    Ok(GitOutput {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

fn git_ok(toplevel: &Path, args: &[&str]) -> Result<String, GitError> {
    let out = git(toplevel, args, None)?;
    if out.code == Some(0) {
        Ok(out.stdout)
    } else {
        Err(out.error(args))
    }
}

/// `path` relative to `toplevel` with `/` separators, resolving symlinks in the part of it that exists;
/// `None` when it lies outside.
fn relative_to(toplevel: &Path, path: &Path) -> Option<String> {
    let absolute = std::path::absolute(path).ok()?;
    // Canonicalize the longest existing ancestor, then append the rest.
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    let base = loop {
        if let Ok(c) = std::fs::canonicalize(existing) {
            break c;
        }
        rest.push(existing.file_name()?.to_owned());
        existing = existing.parent()?;
    };
    let mut full = base;
    for part in rest.iter().rev() {
        full.push(part);
    }
    let rel = full.strip_prefix(toplevel).ok()?;
    let parts: Vec<String> = rel
        .components()
        .map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect::<Option<_>>()?;
    Some(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_keys_are_aescbc_aesgcm_or_secretbox_keys() {
        let parse = |providers: &str| {
            crate::config::encryption::parse(
                &format!(
                    "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets]\n    providers:\n{providers}"
                ),
                "test",
            )
            .unwrap()
        };
        let key = "name: k1\n              secret: c2VjcmV0IGlzIHNlY3VyZSwgb3IgaXMgaXQ/Pz8/Pz8=";
        for p in ["aescbc", "aesgcm", "secretbox"] {
            let c = parse(&format!(
                "      - {p}:\n          keys:\n            - {key}\n      - identity: {{}}\n"
            ));
            assert!(has_raw_keys(&c), "{p}");
        }
        let kms = parse(
            "      - kms:\n          apiVersion: v2\n          name: vault\n          endpoint: unix:///run/kms.sock\n      - identity: {}\n",
        );
        assert!(!has_raw_keys(&kms));
        assert!(!has_raw_keys(&parse("      - identity: {}\n")));
    }
}
