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
pub enum Apiserver {
    /// busybox httpd serving plain HTTP on :6443 (no API: for the tests of SSH and Docker transport only;
    /// ignores SIGTERM, so it runs with `--init`).
    Placeholder,
    /// The real kube-apiserver and etcd built from upstream's Go modules ([`super::upstream`]), in RKE-shaped
    /// containers: `etcd`, `service-sidekick` and `kube-apiserver` from `rancher/…` images.
    Upstream(super::upstream::Upstream),
}

impl Apiserver {
    /// The real kube-apiserver and etcd built by `scripts/build-upstream.sh`.
    pub fn upstream() -> Result<Apiserver> {
        Ok(Apiserver::Upstream(super::upstream::Upstream::locate()?))
    }

    /// Whether an API server answers (everything but the placeholder).
    pub fn serves_api(&self) -> bool {
        !matches!(self, Apiserver::Placeholder)
    }
}

/// Builds `work/placeholder.tar`: busybox (+ `sh`, `httpd`), the placeholder's root filesystem.
pub fn build_rootfs_tar(work: &Path) -> Result<PathBuf> {
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
    // chroot: atrest's root shell for a user without sudo runs from the kube-apiserver image when there is no sidekick.
    for applet in ["sh", "httpd", "ls", "cat", "chroot"] {
        symlink("busybox", root.join("bin").join(applet))?;
    }
    let tar = work.join("placeholder.tar");
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
