//! The kube-apiserver image, made without a registry: a rootfs tar imported into one engine, saved once and
//! loaded into the others (so every node has the same image ID).

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

pub const IMAGE: &str = "testbed/kube-apiserver:dev";

/// What runs as kube-apiserver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standin {
    /// busybox httpd serving plain HTTP on :6443 (a prototype; ignores SIGTERM so it runs with `--init`).
    Placeholder,
    /// The kube-apiserver stand-in binary (handles SIGTERM; runs without `--init`, as RKE does).
    Binary(PathBuf),
    /// The real kube-apiserver and etcd built from upstream's Go modules ([`super::upstream`]), in RKE-shaped
    /// containers: `etcd`, `service-sidekick` and `kube-apiserver` from `rancher/…` images.
    Upstream(super::upstream::Upstream),
}

impl Standin {
    /// The stand-in binary found by [`standin_binary`].
    pub fn locate() -> Result<Standin> {
        Ok(Standin::Binary(standin_binary()?))
    }

    /// The real kube-apiserver and etcd built by `scripts/build-upstream.sh`.
    pub fn upstream() -> Result<Standin> {
        Ok(Standin::Upstream(super::upstream::Upstream::locate()?))
    }

    /// Whether an API server answers (everything but the placeholder).
    pub fn serves_api(&self) -> bool {
        !matches!(self, Standin::Placeholder)
    }
}

/// The kube-apiserver stand-in binary: `ATREST_STANDIN_BIN`, else `kube-apiserver` in the cargo target dir of the
/// running executable (`target/debug/deps/x` → `target/debug/kube-apiserver`), else in the other profile's dir
/// (a benchmark in `release` may use a `debug` stand-in). `cargo test --workspace` builds it (testbed's own
/// integration tests need it); `cargo test -p atrest` alone does not.
pub fn standin_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("ATREST_STANDIN_BIN") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("ATREST_STANDIN_BIN={} is not a file", p.display());
        }
        return Ok(p);
    }
    let exe = std::env::current_exe().context("locating the current executable")?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let own = dir.join("kube-apiserver");
    let other = ["debug", "release"]
        .iter()
        .filter(|profile| dir.file_name().is_some_and(|n| n != **profile))
        .filter_map(|profile| Some(dir.parent()?.join(profile).join("kube-apiserver")));
    if let Some(found) = std::iter::once(own.clone())
        .chain(other)
        .find(|p| p.is_file())
    {
        return Ok(found);
    }
    bail!(
        "kube-apiserver stand-in not found at {}: run `cargo build -p testbed --bin kube-apiserver` (or set \
         ATREST_STANDIN_BIN)",
        own.display()
    )
}

fn copy_with_parents(src: &Path, root: &Path) -> Result<()> {
    let rel = src.strip_prefix("/").unwrap_or(src);
    let dst = root.join(rel);
    if let Some(p) = dst.parent() {
        fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
    }
    fs::copy(src, &dst)
        .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
    Ok(())
}

/// Builds `work/standin.tar`: busybox (+ `sh`, `httpd`) and, for a binary, it and the libraries `ldd` names.
pub fn build_rootfs_tar(standin: &Standin, work: &Path) -> Result<PathBuf> {
    let root = work.join("rootfs");
    for d in ["bin", "usr/local/bin", "etc/kubernetes", "tmp"] {
        fs::create_dir_all(root.join(d))
            .with_context(|| format!("creating {}", root.join(d).display()))?;
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file());
    let Some(busybox) = busybox else {
        bail!("static busybox not found: run scripts/prereqs.sh")
    };
    fs::copy(busybox, root.join("bin/busybox")).context("copying busybox")?;
    for applet in ["sh", "httpd", "ls", "cat"] {
        symlink("busybox", root.join("bin").join(applet))?;
    }
    if let Standin::Binary(bin) = standin {
        let dst = root.join("usr/local/bin/kube-apiserver");
        fs::copy(bin, &dst).with_context(|| format!("copying {}", bin.display()))?;
        // A debug build is ~10× larger with its debug info, which import/save/load would copy around.
        let _ = Command::new("strip")
            .arg("--strip-debug")
            .arg(&dst)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let out = Command::new("ldd")
            .arg(bin)
            .stdin(Stdio::null())
            .output()
            .context("running ldd")?;
        // A static binary makes ldd fail with "not a dynamic executable": nothing to copy then.
        if out.status.success() {
            for tok in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if tok.starts_with('/') {
                    copy_with_parents(Path::new(tok), &root)?;
                }
            }
        }
    }
    let tar = work.join("standin.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .stdin(Stdio::null())
        .status()
        .context("running tar")?;
    if !status.success() {
        bail!("tar of {} failed: {status}", root.display());
    }
    Ok(tar)
}

pub fn docker(sock: &Path) -> Command {
    let mut c = Command::new("docker");
    c.arg("-H")
        .arg(format!("unix://{}", sock.display()))
        .env_remove("DOCKER_HOST")
        .stdin(Stdio::null());
    c
}

pub fn run_ok(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: spawning {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Imports the rootfs into the first engine, then `save` once and `load` into the rest in parallel.
pub fn install(tar: &Path, work: &Path, sockets: &[PathBuf]) -> Result<()> {
    install_all(
        &[(
            tar.to_path_buf(),
            IMAGE.to_string(),
            vec!["ENV PATH=/usr/local/bin:/usr/bin:/bin".to_string()],
        )],
        work,
        sockets,
    )
}

/// Imports each `(rootfs tar, image name, docker import -c changes)` into the first engine, then `save`s them all
/// once and `load`s the archive into the rest in parallel (same image IDs everywhere).
pub fn install_all(
    images: &[(PathBuf, String, Vec<String>)],
    work: &Path,
    sockets: &[PathBuf],
) -> Result<()> {
    let Some((first, rest)) = sockets.split_first() else {
        return Ok(());
    };
    for (tar, name, changes) in images {
        let mut cmd = docker(first);
        cmd.arg("import");
        for c in changes {
            cmd.arg("-c").arg(c);
        }
        run_ok(
            cmd.arg(tar).arg(name),
            &format!("docker import {name} into {}", first.display()),
        )?;
    }
    if rest.is_empty() {
        return Ok(());
    }
    let saved = work.join("image.tar");
    run_ok(
        docker(first)
            .args(["save", "-o"])
            .arg(&saved)
            .args(images.iter().map(|(_, name, _)| name)),
        "docker save",
    )?;
    std::thread::scope(|s| {
        let handles: Vec<_> = rest
            .iter()
            .map(|sock| {
                let saved = &saved;
                s.spawn(move || {
                    run_ok(
                        docker(sock).args(["load", "-q", "-i"]).arg(saved),
                        &format!("docker load into {}", sock.display()),
                    )
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("docker load thread panicked"))??;
        }
        Ok(())
    })
}
