//! Deterministic YAML for an EncryptionConfiguration: fixed field order (apiVersion, kind first),
//! every string double-quoted, two-space indentation. The same config always gives the same bytes, so
//! [`fingerprint`] can tell whether a node's file is the one we planned.

use crate::config::encryption::{
    EncryptionConfiguration, KeysConfiguration, ProviderConfiguration,
};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use zeroize::Zeroizing;

/// The file content to deploy. Holds key material: keep it in `Zeroizing` and never log it.
pub fn to_yaml(config: &EncryptionConfiguration) -> Zeroizing<String> {
    Zeroizing::new(render(config, false))
}

/// The same layout with every secret replaced by `REDACTED`, for plans, diffs and logs.
pub fn to_yaml_redacted(config: &EncryptionConfiguration) -> String {
    render(config, true)
}

/// The header RKE's custom-config template puts before the rendered `custom_config`.
pub const RKE_CUSTOM_HEADER: &str =
    "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n";

/// Where state strings are said to come from in errors.
pub const STATE_ORIGIN: &str = "cluster.rkestate encryptionConfig";

/// Parses an encryption config as RKE keeps it in its state. RKE renders a `custom_config` that names its own
/// apiVersion and kind after a fixed header with the same two keys; the duplicate header is skipped here so the
/// strict parser (which refuses duplicate fields, as kube-apiserver ≥ 1.31) reads what RKE meant.
pub fn parse_state_config(
    text: &str,
) -> Result<EncryptionConfiguration, crate::config::ConfigError> {
    crate::config::encryption::parse(strip_rke_custom_header(text), STATE_ORIGIN)
}

/// `text` without RKE's custom-config header when the rest names apiVersion/kind again (pure text; see
/// [`parse_state_config`]).
pub fn strip_rke_custom_header(text: &str) -> &str {
    text.strip_prefix(RKE_CUSTOM_HEADER)
        .filter(|rest| rest.starts_with("apiVersion:") || rest.starts_with("kind:"))
        .unwrap_or(text)
}

/// SHA-256 of the text, lower-case hex. (kube-apiserver ≥ 1.34 reports `sha256:` + this same value
/// for the file it loaded.)
pub fn fingerprint(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// A YAML double-quoted scalar; escapes anything that is not printable.
fn q(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            // Outside YAML's printable set (and the line/paragraph separators, BOM): escape.
            c if !yaml_printable(c) => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn yaml_printable(c: char) -> bool {
    matches!(c as u32, 0x20..=0x7e | 0xa0..=0x2027 | 0x202a..=0xd7ff | 0xe000..=0xfefe | 0xff00..=0xfffd | 0x10000..)
}

fn render(config: &EncryptionConfiguration, redact: bool) -> String {
    let mut y = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(y, "apiVersion: {}", q(&config.api_version));
    let _ = writeln!(y, "kind: {}", q(&config.kind));
    if config.resources.is_empty() {
        y.push_str("resources: []\n");
        return y;
    }
    y.push_str("resources:\n");
    for entry in &config.resources {
        if entry.resources.is_empty() {
            y.push_str("  - resources: []\n");
        } else {
            y.push_str("  - resources:\n");
            for r in &entry.resources {
                let _ = writeln!(y, "      - {}", q(r));
            }
        }
        if entry.providers.is_empty() {
            y.push_str("    providers: []\n");
            continue;
        }
        y.push_str("    providers:\n");
        for p in &entry.providers {
            provider(&mut y, p, redact);
        }
    }
    y
}

fn provider(y: &mut String, p: &ProviderConfiguration, redact: bool) {
    // Each set field becomes one key of the list item; the first gets the `- `.
    let mut lead = "      - ";
    let mut next = |y: &mut String| {
        let l = lead;
        lead = "        ";
        y.push_str(l);
    };
    for (name, keys) in [
        ("aesgcm", &p.aesgcm),
        ("aescbc", &p.aescbc),
        ("secretbox", &p.secretbox),
    ] {
        if let Some(k) = keys {
            next(y);
            keyed(y, name, k, redact);
        }
    }
    if p.identity.is_some() {
        next(y);
        y.push_str("identity: {}\n");
    }
    if let Some(k) = &p.kms {
        next(y);
        y.push_str("kms:\n");
        let ind = "          ";
        if let Some(v) = &k.api_version {
            let _ = writeln!(y, "{ind}apiVersion: {}", q(v));
        }
        let _ = writeln!(y, "{ind}name: {}", q(&k.name));
        let _ = writeln!(y, "{ind}endpoint: {}", q(&k.endpoint));
        if let Some(c) = k.cachesize {
            let _ = writeln!(y, "{ind}cachesize: {c}");
        }
        if let Some(t) = &k.timeout {
            let _ = writeln!(y, "{ind}timeout: {}", q(t));
        }
    }
    if lead.starts_with("      - ") {
        y.push_str("      - {}\n"); // no provider set (invalid, but rendered faithfully)
    }
}

fn keyed(y: &mut String, name: &str, k: &KeysConfiguration, redact: bool) {
    if k.keys.is_empty() {
        let _ = writeln!(y, "{name}:\n          keys: []");
        return;
    }
    let _ = writeln!(y, "{name}:\n          keys:");
    for key in &k.keys {
        let secret = if redact {
            "REDACTED"
        } else {
            key.secret.expose()
        };
        let _ = writeln!(y, "            - name: {}", q(&key.name));
        let _ = writeln!(y, "              secret: {}", q(secret));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::encryption::{self, Key, KmsConfiguration};
    use crate::secret::SecretString;

    fn key(name: &str, secret: &str) -> Key {
        Key {
            name: name.into(),
            secret: SecretString::new(secret.into()),
        }
    }

    fn sample() -> EncryptionConfiguration {
        let mut c = encryption::managed(vec![
            key(
                "aescbckey-2026-11-23T22:40:05Z",
                "dGhpcyBpcyBhIDMyIGJ5dGUga2V5IGZvciB0ZXN0cyE=",
            ),
            key("k\"2", "c2VjcmV0IGlzIHNlY3VyZQ=="),
        ]);
        c.resources.push(encryption::ResourceConfiguration {
            resources: vec!["configmaps".into(), "*.apps".into()],
            providers: vec![
                ProviderConfiguration {
                    kms: Some(KmsConfiguration {
                        api_version: Some("v2".into()),
                        name: "vault".into(),
                        endpoint: "unix:///var/run/kms/vault.sock".into(),
                        cachesize: None,
                        timeout: Some("10s".into()),
                    }),
                    ..Default::default()
                },
                ProviderConfiguration {
                    secretbox: Some(KeysConfiguration {
                        keys: vec![key("sb", "YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXoxMjM0NTY=")],
                    }),
                    ..Default::default()
                },
            ],
        });
        c
    }

    #[test]
    fn renders_in_a_fixed_layout() {
        let text = to_yaml(&encryption::managed(vec![key(
            "k1",
            "c2VjcmV0IGlzIHNlY3VyZQ==",
        )]));
        assert_eq!(
            text.as_str(),
            "apiVersion: \"apiserver.config.k8s.io/v1\"\nkind: \"EncryptionConfiguration\"\nresources:\n  - resources:\n      - \"secrets\"\n    providers:\n      - aescbc:\n          keys:\n            - name: \"k1\"\n              secret: \"c2VjcmV0IGlzIHNlY3VyZQ==\"\n      - identity: {}\n"
        );
    }

    #[test]
    fn parse_of_render_gives_the_same_config() {
        let c = sample();
        let text = to_yaml(&c);
        let back = encryption::parse(&text, "rendered.yaml").unwrap();
        assert_eq!(back, c);
        assert_eq!(to_yaml(&back).as_str(), text.as_str());
    }

    proptest::proptest! {
        #[test]
        fn any_strings_survive_render_and_parse(
            names in proptest::collection::vec("\\PC*|[\\x00-\\x7f]*", 1..4),
            resource in "\\PC*",
            endpoint in "\\PC*",
        ) {
            let keys = names.iter().map(|n| key(n, n)).collect();
            let mut c = encryption::managed(keys);
            c.resources[0].resources.push(resource);
            c.resources[0].providers.push(ProviderConfiguration {
                kms: Some(KmsConfiguration { api_version: Some("v2".into()), name: names[0].clone(), endpoint, cachesize: Some(-1), timeout: None }),
                ..Default::default()
            });
            let text = to_yaml(&c);
            let back = encryption::parse(&text, "p.yaml").map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
            proptest::prop_assert_eq!(back, c);
        }
    }

    #[test]
    fn fingerprint_is_stable_and_sensitive() {
        let a = to_yaml(&sample());
        assert_eq!(fingerprint(&a), fingerprint(&to_yaml(&sample())));
        assert_eq!(fingerprint(&a).len(), 64);
        let mut other = sample();
        other.resources[0].resources.push("configmaps".into());
        assert_ne!(fingerprint(&a), fingerprint(&to_yaml(&other)));
        // Known vector: sha256("") .
        assert_eq!(
            fingerprint(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn redacted_rendering_hides_every_secret() {
        let c = sample();
        let red = to_yaml_redacted(&c);
        for entry in &c.resources {
            for p in &entry.providers {
                if let Some((_, k)) = p.keyed() {
                    for key in &k.keys {
                        assert!(!red.contains(key.secret.expose()));
                    }
                }
            }
        }
        assert_eq!(red.matches("REDACTED").count(), 3);
    }
}
