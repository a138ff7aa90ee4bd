//! The real upstream parts: kube-apiserver and etcd built from upstream's Go modules by
//! `scripts/build-upstream.sh`, and the RKE-shaped images made from them without a registry.
//!
//! The versions live in one file, `testbed/upstream/versions.env`, read both by the build script and here; the
//! binaries are found in the script's cache (`<cache>/kube-apiserver-<version>-<go version>/kube-apiserver`), so
//! changing a version there and running the script is all it takes to try another Kubernetes release.
//! Images are named as RKE names them, so a cluster.yml's `system_images` could point at them:
//! `rancher/hyperkube:<k8s><suffix>` (kube-apiserver), `rancher/rke-tools:<v>` (bash and
//! `/opt/rke-tools/entrypoint.sh`, the `service-sidekick` image) and `rancher/mirrored-coreos-etcd:<v>`.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// The versions file, shared with `scripts/build-upstream.sh`.
pub fn versions_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("upstream/versions.env")
}

/// The settings of `versions.env`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versions {
    pub kubernetes: String,
    pub etcd: String,
    pub hyperkube_suffix: String,
    pub rke_tools: String,
    /// The `rke` release the interop tests run (`RKE_VERSION`).
    pub rke: String,
}

impl Versions {
    pub fn load() -> Result<Versions> {
        let path = versions_file();
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// `KEY=value` lines; `#` comments and blank lines ignored.
    pub fn parse(text: &str) -> Result<Versions> {
        let get = |key: &str| -> Result<String> {
            text.lines()
                .map(str::trim)
                .filter(|l| !l.starts_with('#'))
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(|v| v.trim().trim_matches('"').to_string())
                .with_context(|| format!("{key} not set"))
        };
        Ok(Versions {
            kubernetes: get("KUBERNETES_VERSION")?,
            etcd: get("ETCD_VERSION")?,
            hyperkube_suffix: get("HYPERKUBE_SUFFIX").unwrap_or_default(),
            rke_tools: get("RKE_TOOLS_VERSION")?,
            rke: get("RKE_VERSION")?,
        })
    }

    /// The `k8s.io/kms` module version of this Kubernetes release (`v1.32.13` → `v0.32.13`).
    pub fn kms_module(&self) -> String {
        format!("v0.{}", self.kubernetes.trim_start_matches("v1."))
    }

    /// `rancher/hyperkube:v1.32.13-rancher1`: RKE's `system_images.kubernetes`.
    pub fn hyperkube_image(&self) -> String {
        format!(
            "rancher/hyperkube:{}{}",
            self.kubernetes, self.hyperkube_suffix
        )
    }

    /// `rancher/rke-tools:v0.1.114`: RKE's `system_images.kubernetes_services_sidecar`.
    pub fn rke_tools_image(&self) -> String {
        format!("rancher/rke-tools:{}", self.rke_tools)
    }

    /// `rancher/mirrored-coreos-etcd:v3.5.35`: RKE's `system_images.etcd`.
    pub fn etcd_image(&self) -> String {
        format!("rancher/mirrored-coreos-etcd:{}", self.etcd)
    }
}

/// The cache `scripts/build-upstream.sh` builds into: `ATREST_UPSTREAM_CACHE`, else `/var/cache/atrest-upstream`
/// for root, else `~/.cache/atrest-upstream`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("ATREST_UPSTREAM_CACHE") {
        return PathBuf::from(d);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/cache/atrest-upstream");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".cache/atrest-upstream")
}

/// The newest build of `name` at `version` in the cache (any Go version), or the file `env` names.
fn find(name: &str, version: &str, env: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("{env}={} is not a file", p.display());
        }
        return Ok(p);
    }
    let cache = cache_dir();
    let prefix = format!("{name}-{version}-");
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(&cache)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path().join(name))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .collect();
    found.sort();
    match found.pop() {
        Some((_, p)) => Ok(p),
        None => bail!(
            "{name} {version} not built: run scripts/build-upstream.sh (looked in {}; or set {env})",
            cache.display()
        ),
    }
}

/// The real binaries and their versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub versions: Versions,
    pub apiserver: PathBuf,
    pub etcd: PathBuf,
}

impl Upstream {
    /// Finds the binaries built for `versions.env` (`ATREST_KUBE_APISERVER_BIN` / `ATREST_ETCD_BIN` override).
    pub fn locate() -> Result<Upstream> {
        let versions = Versions::load()?;
        Ok(Upstream {
            apiserver: find(
                "kube-apiserver",
                &versions.kubernetes,
                "ATREST_KUBE_APISERVER_BIN",
            )?,
            etcd: find("etcd", &versions.etcd, "ATREST_ETCD_BIN")?,
            versions,
        })
    }

    pub fn available() -> bool {
        Self::locate().is_ok()
    }
}

/// The real `rke` binary built for `versions.env` (`ATREST_RKE_BIN` overrides).
pub fn rke_binary() -> Result<PathBuf> {
    let versions = Versions::load()?;
    find("rke", &versions.rke, "ATREST_RKE_BIN")
}

/// Upstream's `etcdutl` at the etcd version (`ATREST_ETCDUTL_BIN` overrides): the testbed restores snapshots
/// with it ([`super::restore`]).
pub fn etcdutl_binary() -> Result<PathBuf> {
    let versions = Versions::load()?;
    find("etcdutl", &versions.etcd, "ATREST_ETCDUTL_BIN")
}

/// `rke-check` (testbed/upstream/rke/rkecheck): RKE's own code asked what the next `rke up` would do about
/// encryption. Built by `scripts/build-upstream.sh` under a key of the RKE version and its source's hash
/// (`ATREST_RKE_CHECK_BIN` overrides).
pub fn rke_check_binary() -> Result<PathBuf> {
    let versions = Versions::load()?;
    find_keyed_by_source(
        "rke-check",
        &versions.rke,
        "upstream/rke/rkecheck/main.go",
        "ATREST_RKE_CHECK_BIN",
    )
}

/// [`find`] for a binary of our own Go source: cached under `<version>-<first 12 hex of the source's sha256>`,
/// so an edit of `source` (relative to the testbed crate) needs a rebuild.
fn find_keyed_by_source(name: &str, version: &str, source: &str, env: &str) -> Result<PathBuf> {
    use sha2::{Digest, Sha256};
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(source);
    let text = fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
    let hash = hex::encode(Sha256::digest(&text));
    find(name, &format!("{version}-{}", &hash[..12]), env)
}

/// `kms-plugin-v1` (testbed/upstream/kms-plugin-v1): the KMS v1 plugin the real kube-apiserver can talk to (see
/// docs/kms-plugin.md). Built by `scripts/build-upstream.sh` under a key of the `k8s.io/kms` version and its
/// source's hash (`ATREST_KMS_PLUGIN_V1_BIN` overrides).
pub fn kms_plugin_v1_binary() -> Result<PathBuf> {
    let versions = Versions::load()?;
    find_keyed_by_source(
        "kms-plugin-v1",
        &versions.kms_module(),
        "upstream/kms-plugin-v1/main.go",
        "ATREST_KMS_PLUGIN_V1_BIN",
    )
}

/// RKE's `/opt/rke-tools/entrypoint.sh` for the control plane, reduced to what kube-apiserver needs: RKE's
/// script prepares kubelet and cloud-provider files first; for kube-apiserver it ends in `exec "$@"`.
pub const ENTRYPOINT_SH: &str = "#!/bin/bash\n\
# rke-tools-shaped entrypoint (atrest testbed). RKE's own script sets up kubelet/cloud-provider files for the\n\
# other components; for kube-apiserver it only hands over to the command line it was given.\n\
exec \"$@\"\n";

fn busybox() -> Result<&'static Path> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .context("static busybox not found: run scripts/prereqs.sh")
}

fn bash_static() -> Result<&'static Path> {
    ["/bin/bash-static", "/usr/bin/bash-static"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .context("bash-static not found: run scripts/prereqs.sh")
}

fn tar_dir(root: &Path, tar: &Path) -> Result<()> {
    let status = Command::new("tar")
        .arg("-C")
        .arg(root)
        .arg("-cf")
        .arg(tar)
        .arg(".")
        .stdin(Stdio::null())
        .status()
        .context("running tar")?;
    if !status.success() {
        bail!("tar of {} failed: {status}", root.display());
    }
    Ok(())
}

/// A base rootfs: busybox (sh, ls, cat, …) and a static bash as `/bin/bash`.
fn base_rootfs(root: &Path) -> Result<()> {
    for d in ["bin", "usr/local/bin", "etc", "tmp", "var/run"] {
        fs::create_dir_all(root.join(d))
            .with_context(|| format!("creating {}", root.join(d).display()))?;
    }
    fs::copy(busybox()?, root.join("bin/busybox")).context("copying busybox")?;
    // mktemp, mv and chmod: RKE's file deployer (`t=$(mktemp); echo -e "$FILE_DEPLOY" > $t && mv $t … && chmod 600 …`)
    // runs in the rke-tools image. chroot: atrest's root shell for a user without sudo (rke-tools, Alpine, has it).
    for applet in [
        "sh", "ls", "cat", "echo", "sleep", "mkdir", "rm", "cp", "mktemp", "mv", "chmod", "chroot",
    ] {
        symlink("busybox", root.join("bin").join(applet))?;
    }
    fs::copy(bash_static()?, root.join("bin/bash")).context("copying bash-static")?;
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    fs::write(root.join("etc/group"), "root:x:0:\n")?;
    Ok(())
}

/// One image to import: its rootfs tar, its name and `docker import -c` changes.
pub struct ImageTar {
    pub tar: PathBuf,
    pub name: String,
    pub changes: Vec<String>,
}

/// Builds the three rootfs tars in `work`: rke-tools, hyperkube (kube-apiserver) and etcd (etcd + etcdctl-free).
pub fn build_image_tars(up: &Upstream, work: &Path) -> Result<Vec<ImageTar>> {
    let path_env =
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string();
    let mut out = Vec::new();
    // rke-tools: bash + /opt/rke-tools/entrypoint.sh, VOLUME /opt/rke-tools (what service-sidekick shares).
    let root = work.join("rke-tools");
    base_rootfs(&root)?;
    let tools = root.join("opt/rke-tools");
    fs::create_dir_all(&tools)?;
    let entry = tools.join("entrypoint.sh");
    fs::write(&entry, ENTRYPOINT_SH)?;
    fs::set_permissions(&entry, fs::Permissions::from_mode(0o755))?;
    let tar = work.join("rke-tools.tar");
    tar_dir(&root, &tar)?;
    out.push(ImageTar {
        tar,
        name: up.versions.rke_tools_image(),
        changes: vec![
            path_env.clone(),
            "VOLUME [\"/opt/rke-tools\"]".into(),
            "CMD [\"/bin/bash\"]".into(),
        ],
    });
    // hyperkube: the control-plane binaries RKE runs from it; here kube-apiserver only.
    let root = work.join("hyperkube");
    base_rootfs(&root)?;
    fs::copy(&up.apiserver, root.join("usr/local/bin/kube-apiserver"))
        .with_context(|| format!("copying {}", up.apiserver.display()))?;
    let tar = work.join("hyperkube.tar");
    tar_dir(&root, &tar)?;
    out.push(ImageTar {
        tar,
        name: up.versions.hyperkube_image(),
        changes: vec![path_env.clone()],
    });
    // etcd: /usr/local/bin/etcd, as the coreos image has it.
    let root = work.join("etcd");
    base_rootfs(&root)?;
    fs::copy(&up.etcd, root.join("usr/local/bin/etcd"))
        .with_context(|| format!("copying {}", up.etcd.display()))?;
    let tar = work.join("etcd.tar");
    tar_dir(&root, &tar)?;
    out.push(ImageTar {
        tar,
        name: up.versions.etcd_image(),
        changes: vec![path_env],
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_file_parses_and_names_images_as_rke() {
        let v = Versions::parse(
            "# c\nKUBERNETES_VERSION=v1.32.13\nETCD_VERSION=v3.5.35\nHYPERKUBE_SUFFIX=-rancher1\n\
             RKE_TOOLS_VERSION=v0.1.114\nRKE_VERSION=v1.8.6\n",
        )
        .unwrap();
        assert_eq!(v.rke, "v1.8.6");
        assert_eq!(v.hyperkube_image(), "rancher/hyperkube:v1.32.13-rancher1");
        assert_eq!(v.etcd_image(), "rancher/mirrored-coreos-etcd:v3.5.35");
        assert_eq!(v.rke_tools_image(), "rancher/rke-tools:v0.1.114");
        assert!(Versions::parse("ETCD_VERSION=v3.5.35\n").is_err());
        // The committed file is what the build script reads too.
        let committed = Versions::load().unwrap();
        assert!(committed.kubernetes.starts_with("v1."), "{committed:?}");
    }

    #[test]
    fn entrypoint_hands_over_with_exec() {
        assert!(ENTRYPOINT_SH.starts_with("#!/bin/bash\n"));
        assert!(ENTRYPOINT_SH.trim_end().ends_with("exec \"$@\""));
    }
}
