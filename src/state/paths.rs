//! Where RKE (and atrest) keep their files relative to the cluster config, so atrest finds them without flags.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The state file RKE uses for `config`: same directory, extension replaced by `.rkestate`
/// (`/x/cluster.yml` → `/x/cluster.rkestate`, as RKE's `GetStateFilePath`).
pub fn default_state_path(config: &Path) -> PathBuf {
    config.with_extension("rkestate")
}

/// atrest's records file for `config`: same directory, extension replaced by `.atreststate`
/// (`/x/cluster.yml` → `/x/cluster.atreststate`), named like the state so the two sort together.
pub fn default_records_path(config: &Path) -> PathBuf {
    config.with_extension("atreststate")
}

/// The admin kubeconfig RKE writes for `config`: `kube_config_` + the config's whole file name, same directory
/// (`/x/cluster.yml` → `/x/kube_config_cluster.yml`, as RKE's `GetLocalKubeConfig`).
pub fn default_kubeconfig_path(config: &Path) -> PathBuf {
    let mut name = OsString::from("kube_config_");
    name.push(config.file_name().unwrap_or(config.as_os_str()));
    config.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_path_replaces_the_extension_in_the_same_directory() {
        assert_eq!(
            default_state_path(Path::new("cluster.yml")),
            Path::new("cluster.rkestate")
        );
        assert_eq!(
            default_state_path(Path::new("/etc/rke/prod.yaml")),
            Path::new("/etc/rke/prod.rkestate")
        );
        assert_eq!(
            default_state_path(Path::new("dir/my.cluster.yml")),
            Path::new("dir/my.cluster.rkestate")
        );
        assert_eq!(
            default_state_path(Path::new("dir/cluster")),
            Path::new("dir/cluster.rkestate")
        );
    }

    #[test]
    fn records_path_is_the_config_stem_with_atreststate() {
        for (config, records) in [
            ("cluster.yml", "cluster.atreststate"),
            ("/etc/rke/prod.yaml", "/etc/rke/prod.atreststate"),
            ("dir/my.cluster.yml", "dir/my.cluster.atreststate"),
            ("dir/cluster", "dir/cluster.atreststate"),
        ] {
            assert_eq!(default_records_path(Path::new(config)), Path::new(records));
        }
    }

    #[test]
    fn kubeconfig_path_prefixes_the_whole_file_name() {
        assert_eq!(
            default_kubeconfig_path(Path::new("cluster.yml")),
            Path::new("kube_config_cluster.yml")
        );
        assert_eq!(
            default_kubeconfig_path(Path::new("/etc/rke/prod.yaml")),
            Path::new("/etc/rke/kube_config_prod.yaml")
        );
    }
}
