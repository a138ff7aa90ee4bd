//! The optional non-root SSH user, in group `docker` (as RKE requires), with passwordless sudo or — RKE's usual
//! setup — without. It exists only inside each node's mount namespace: private copies of /etc/passwd,
//! /etc/group, /etc/shadow and /etc/sudoers.d are bind-mounted there, so the host's user database is never
//! touched.

use std::fs;
use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::files::write_mode;

pub const SUDO_USER: &str = "atrest";
pub const SUDO_UID: u32 = 2000;

/// The SSH user cluster.yml names on every node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NodeUser {
    #[default]
    Root,
    /// [`SUDO_USER`], in group `docker`, with passwordless sudo.
    Sudo,
    /// [`SUDO_USER`], in group `docker`, without sudo (RKE's usual user).
    DockerGroup,
}

fn read(path: &str) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading {path}"))
}

/// Writes the node's private user database under `node_dir/etc` and the user's home; returns the
/// (source, target) bind mounts to make in the node's namespace.
pub fn prepare(
    node_dir: &Path,
    authorized_keys: &str,
    user: NodeUser,
) -> Result<Vec<(PathBuf, PathBuf)>> {
    if !Path::new("/usr/bin/sudo").exists() || !Path::new("/etc/sudoers.d").is_dir() {
        bail!(
            "sudo_user needs sudo installed (/usr/bin/sudo, /etc/sudoers.d): run scripts/prereqs.sh"
        );
    }
    let etc = node_dir.join("etc");
    let sudoers = etc.join("sudoers.d");
    fs::create_dir_all(&sudoers).with_context(|| format!("creating {}", sudoers.display()))?;
    let home = node_dir.join("home");
    let ssh = home.join(".ssh");
    fs::create_dir_all(&ssh).with_context(|| format!("creating {}", ssh.display()))?;
    write_mode(
        &ssh.join("authorized_keys"),
        authorized_keys.as_bytes(),
        0o600,
    )?;
    for p in [&home, &ssh, &ssh.join("authorized_keys")] {
        chown(p, Some(SUDO_UID), Some(SUDO_UID))
            .with_context(|| format!("chown {}", p.display()))?;
    }
    let passwd = format!(
        "{}{SUDO_USER}:x:{SUDO_UID}:{SUDO_UID}:atrest testbed:{}:/bin/sh\n",
        read("/etc/passwd")?,
        home.display()
    );
    // The user may use the node's Docker engine (dockerd gives its socket to group `docker`), as RKE requires.
    let mut group = String::new();
    for line in read("/etc/group")?.lines() {
        if line.starts_with("docker:") {
            let sep = if line.ends_with(':') { "" } else { "," };
            group.push_str(&format!("{line}{sep}{SUDO_USER}\n"));
        } else {
            group.push_str(line);
            group.push('\n');
        }
    }
    group.push_str(&format!("{SUDO_USER}:x:{SUDO_UID}:\n"));
    // `*`: no password, yet not locked (sshd refuses locked accounts).
    let shadow = format!("{}{SUDO_USER}:*:19000:0:99999:7:::\n", read("/etc/shadow")?);
    write_mode(&etc.join("passwd"), passwd.as_bytes(), 0o644)?;
    write_mode(&etc.join("group"), group.as_bytes(), 0o644)?;
    write_mode(&etc.join("shadow"), shadow.as_bytes(), 0o640)?;
    // Without sudo the node's sudoers.d is empty: `sudo -n` then asks for a password, which there is none of.
    if user == NodeUser::Sudo {
        write_mode(
            &sudoers.join(SUDO_USER),
            format!("{SUDO_USER} ALL=(ALL) NOPASSWD:ALL\n").as_bytes(),
            0o440,
        )?;
    }
    Ok(["passwd", "group", "shadow", "sudoers.d"]
        .iter()
        .map(|f| (etc.join(f), Path::new("/etc").join(f)))
        .collect())
}
