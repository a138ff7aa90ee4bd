//! Helpers shared by the rewrite/census tests and the benchmark. The processes (etcd, the real kube-apiserver)
//! are testbed's `harness::local`.
#![allow(dead_code, unused_imports)]

use anyhow::{Context, Result};
use std::path::Path;

pub use testbed::harness::local::{
    ETCD_SERVER_NAME, LIMITED_TOKEN, LIMITED_USER, LocalApiserver, LocalEtcd, TEST_TOKEN,
    private_loopback,
};

/// A kubeconfig that authenticates with a bearer token and names the server `server_url`.
pub fn write_token_kubeconfig(
    path: &Path,
    server_url: &str,
    ca_pem: &str,
    token: &str,
) -> Result<()> {
    let yaml = testbed::harness::files::kubeconfig_with_token(server_url, ca_pem, token);
    std::fs::write(path, yaml).with_context(|| format!("writing {}", path.display()))
}

/// A random 32-byte AES key, base64.
pub fn random_key() -> String {
    use base64::Engine as _;
    let key: [u8; 32] = rand::random();
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// An aescbc EncryptionConfiguration for `resources` with the keys in order (first = write key).
pub fn aescbc_config(resources: &[&str], keys: &[(&str, &str)]) -> String {
    let mut yaml = String::from(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources:\n",
    );
    for r in resources {
        yaml.push_str(&format!("  - \"{r}\"\n"));
    }
    yaml.push_str("  providers:\n  - aescbc:\n      keys:\n");
    for (name, secret) in keys {
        yaml.push_str(&format!("      - name: {name}\n        secret: {secret}\n"));
    }
    yaml.push_str("  - identity: {}\n");
    yaml
}

/// An error and all its sources, in Display and Debug form (to tell one failure from another in tests).
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = format!("{error} / {error:?}");
    let mut source = error.source();
    while let Some(e) = source {
        out.push_str(&format!(" / {e} / {e:?}"));
        source = e.source();
    }
    out
}

/// Whether `chain` says a TLS peer certificate was refused for its name (rustls `NotValidForName`).
pub fn refused_for_name(chain: &str) -> bool {
    chain.contains("NotValidForName")
}
