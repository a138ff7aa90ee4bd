//! RKE's per-host `prefix_path`: when cluster.yml leaves it unset (or `/`), RKE picks a prefix from the
//! operating system Docker reports on each host (`docker info`'s OperatingSystem): `/opt/rke` on RancherOS,
//! CoreOS and Flatcar, `/mnt/sda1/rke` on Boot2Docker, none elsewhere (rancher/rke `hosts.SetPrefixPath`).
//! atrest must look where RKE put its files, so it asks each host's Docker the same question.

use crate::exec::docker::NodeDocker;
use crate::exec::ssh::Host;
use std::collections::BTreeMap;
use std::sync::Arc;

/// RKE's OS markers (matched as case-sensitive substrings, in this order) and their prefixes.
const OS_PREFIXES: [(&str, &str); 4] = [
    ("Boot2Docker", "/mnt/sda1/rke"),
    ("RancherOS", "/opt/rke"),
    ("CoreOS", "/opt/rke"),
    ("Flatcar", "/opt/rke"),
];

/// Whether RKE would pick the prefix per host: `prefix_path` unset, empty or `/`.
pub fn needs_detection(cluster_prefix: Option<&str>) -> bool {
    cluster_prefix.is_none_or(|p| p.is_empty() || p == "/")
}

/// The prefix RKE uses on a host whose Docker reports `operating_system` (without a trailing `/`; empty for
/// none). A configured prefix other than `/` wins, as in RKE.
pub fn rke_prefix(cluster_prefix: Option<&str>, operating_system: &str) -> String {
    if !needs_detection(cluster_prefix) {
        return cluster_prefix
            .unwrap_or("")
            .trim_end_matches('/')
            .to_string();
    }
    OS_PREFIXES
        .iter()
        .find(|(marker, _)| operating_system.contains(marker))
        .map_or_else(String::new, |(_, prefix)| prefix.to_string())
}

/// The prefix of every host, by node address. Asks Docker only when cluster.yml leaves the choice to RKE; a
/// host whose Docker does not answer gets no prefix here (the pre-flight check reports its Docker).
pub async fn detect(hosts: &[Arc<Host>], cluster_prefix: Option<&str>) -> BTreeMap<String, String> {
    let each = hosts.iter().map(|host| async move {
        let os = if needs_detection(cluster_prefix) {
            match NodeDocker::new(host.clone()) {
                Ok(docker) => match docker.client().info().await {
                    Ok(info) => info.operating_system.unwrap_or_default(),
                    Err(e) => {
                        tracing::debug!("{}: docker info failed: {e}", host.label());
                        String::new()
                    }
                },
                Err(_) => String::new(),
            }
        } else {
            String::new()
        };
        let prefix = rke_prefix(cluster_prefix, &os);
        if !prefix.is_empty() && needs_detection(cluster_prefix) {
            tracing::info!(
                "{}: Docker reports {os:?}: RKE's files are under {prefix} (RKE's prefix for that OS)",
                host.label()
            );
        }
        (host.node().address.clone(), prefix)
    });
    futures::future::join_all(each).await.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_follow_rkes_os_table() {
        for (os, want) in [
            (
                "Flatcar Container Linux by Kinvolk 3510.2.0 (Oklo)",
                "/opt/rke",
            ),
            ("Fedora CoreOS 38.20230806.3.0", "/opt/rke"),
            ("Container Linux by CoreOS 2345.3.0 (Rhyolite)", "/opt/rke"),
            ("RancherOS v1.5.8", "/opt/rke"),
            ("Boot2Docker 19.03.12 (TCL 10.1)", "/mnt/sda1/rke"),
            ("Ubuntu 22.04.4 LTS", ""),
            ("boot2docker", ""), // case-sensitive, as RKE's strings.Contains
            ("", ""),
        ] {
            for unset in [None, Some(""), Some("/")] {
                assert_eq!(rke_prefix(unset, os), want, "{os:?} with {unset:?}");
            }
        }
    }

    #[test]
    fn a_configured_prefix_wins() {
        assert!(!needs_detection(Some("/data/rke")));
        assert_eq!(
            rke_prefix(Some("/data/rke/"), "RancherOS v1.5.8"),
            "/data/rke"
        );
        assert_eq!(rke_prefix(Some("/data/rke"), "Ubuntu"), "/data/rke");
    }
}
