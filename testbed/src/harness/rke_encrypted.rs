//! A testbed that starts as a cluster RKE encrypted (`Options::rke_encrypted`): the state, cluster.yml, node
//! files and kube-apiserver flag that `rke up` leaves after `secrets_encryption_config: {enabled: true}`, so the
//! interop tests can begin where an RKE user is — with encryption that RKE, not atrest, turned on.
//!
//! `rke up` itself cannot run here (it deploys every Kubernetes component from registry images), so the harness
//! writes what it would: one managed key in RKE's one-key layout (`k-` plus five characters from the alphabet
//! Kubernetes' random-string helper uses; the secret is the base64 URL encoding of 16 random bytes written as
//! upper-case hex), the same string in `encryptionConfig` of both states, and the file on each controlplane as RKE's
//! file deployer writes it (the string plus one newline, 0600). The tests then let the real `rke encrypt
//! rotate-key` replace that config with one RKE itself rendered.

use base64::Engine;
use rand::Rng;
use zeroize::Zeroizing;

/// Where RKE puts the provider config (on the node, under the prefix) and the flag that names it.
pub const NODE_FILE: &str = "/etc/kubernetes/ssl/encryption.yaml";

/// Characters of RKE's generated key names (Kubernetes' `util/rand.String`).
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// A new managed config in RKE's one-key layout. Holds a key: zeroized on drop, never printed.
pub fn managed_config() -> Zeroizing<String> {
    let mut rng = rand::rng();
    let suffix: String = (0..5)
        .map(|_| NAME_ALPHABET[rng.random_range(0..NAME_ALPHABET.len())] as char)
        .collect();
    let raw = Zeroizing::new(rand::random::<[u8; 16]>());
    let hex_upper = Zeroizing::new(hex::encode_upper(*raw));
    let secret =
        Zeroizing::new(base64::engine::general_purpose::URL_SAFE.encode(hex_upper.as_bytes()));
    render(&format!("k-{suffix}"), &secret)
}

fn render(name: &str, secret: &str) -> Zeroizing<String> {
    Zeroizing::new(format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources:\n  \
         - secrets\n  providers:\n  - aescbc:\n      keys:\n      - name: {name}\n        secret: {secret}\n  \
         - identity: {{}}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_key_layout_as_rke_renders_it() {
        let text = render("k-fw5hn", "NDFCMjlFMEQ3QzhBNDVGNjMzQjlFOTJFQzYwRkQ1OEU=");
        assert_eq!(
            text.as_str(),
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources:\n  - secrets\n  providers:\n  - aescbc:\n      keys:\n      - name: k-fw5hn\n        secret: NDFCMjlFMEQ3QzhBNDVGNjMzQjlFOTJFQzYwRkQ1OEU=\n  - identity: {}"
        );
    }

    #[test]
    fn a_new_key_is_named_and_sized_as_rkes() {
        let text = managed_config();
        let name = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("- name: "))
            .expect("a key name");
        assert_eq!(name.len(), 7, "{name}");
        assert!(name.starts_with("k-"));
        assert!(name[2..].bytes().all(|b| NAME_ALPHABET.contains(&b)));
        let secret = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("secret: "))
            .expect("a secret");
        let hex_text = base64::engine::general_purpose::URL_SAFE
            .decode(secret)
            .expect("base64");
        // 32 upper-case hex digits: kube-apiserver's aescbc provider takes these 32 characters as an AES-256 key.
        assert_eq!(hex_text.len(), 32);
        assert!(
            hex_text
                .iter()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b))
        );
        assert_ne!(
            managed_config().as_str(),
            text.as_str(),
            "a new key each time"
        );
    }
}
