//! The encryption config text exactly as RKE renders it, so the two tools agree byte for byte.
//!
//! `rke up` compares `currentState.encryptionConfig` with what it renders from cluster.yml as text, and rewrites
//! the node file from the state on every run: any layout difference makes each tool see the other's work as a
//! change (restarts, secret rewrites). What RKE does (rancher/rke `templates/encryption_provider.go`,
//! `cluster/encryption.go`, `cluster/file-deployer.go`):
//!
//! - a managed config (`secrets`: `[aescbc{keys…}, identity]`) comes from a Go text template: a fixed layout,
//!   values unquoted, **no** trailing newline; the "disabled" config `[identity, aescbc{one key}]` from a second
//!   template of the same style;
//! - a `custom_config` is marshalled to JSON (k8s `json` tags), turned into YAML by `sigs.k8s.io/yaml` (yaml.v2:
//!   keys sorted, sequences not indented under their key, strings quoted only where YAML needs it), and placed
//!   after a fixed `apiVersion`/`kind` header, followed by one newline. A custom_config that names its own
//!   apiVersion and kind (atrest requires them) thus repeats both keys;
//! - the node file is written with `echo -e "$FILE_DEPLOY"`: the state string plus one newline.
//!
//! atrest uses the state strings as RKE would hold them, and deploys the node file RKE would write for the
//! template shapes. For other configs the node file is the sigs.k8s.io/yaml text alone (without RKE's repeated
//! header, which kube-apiserver ≥ 1.31 refuses as duplicate fields); a file RKE wrote is still recognised (see
//! [`rke_file`]).
//!
//! Not reproduced: yaml.v2 folds plain and double-quoted strings that contain spaces at column 80, and `echo -e`
//! interprets backslash escapes in the content; neither occurs in keys, names, resources or endpoints in practice.

use crate::config::encryption::{
    EncryptionConfiguration, KeysConfiguration, ProviderConfiguration,
};
use crate::config::gofmt;
use std::fmt::Write as _;
use zeroize::Zeroizing;

pub use crate::config::render::RKE_CUSTOM_HEADER;

/// Where RKE takes a config from, which decides how it renders it: its own templates (no `custom_config` in
/// cluster.yml: the managed config and its "disabled" step), or the `custom_config` cluster.yml holds — rendered
/// as a custom config even when its providers have a template's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Template,
    CustomConfig,
}

/// The text RKE keeps in `encryptionConfig` for `config` taken from `origin`. Holds key material.
pub fn state_string(config: &EncryptionConfiguration, origin: Origin) -> Zeroizing<String> {
    if let (Origin::Template, Some(text)) = (origin, template(config)) {
        return text;
    }
    let mut out = Zeroizing::new(String::from(RKE_CUSTOM_HEADER));
    out.push_str(&sigs_yaml(config));
    out.push('\n');
    out
}

/// The file atrest deploys on every controlplane for `config`: what `rke up` writes for the template shapes
/// (state string + "\n"); otherwise the sigs.k8s.io/yaml text.
pub fn node_file(config: &EncryptionConfiguration) -> Zeroizing<String> {
    match template(config) {
        Some(mut text) => {
            text.push('\n');
            text
        }
        None => sigs_yaml(config),
    }
}

/// The file `rke up` writes for a state string: the string and one newline (`echo -e`).
pub fn rke_file(state_string: &str) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(state_string.len() + 1));
    out.push_str(state_string);
    out.push('\n');
    out
}

/// RKE's template text for the two shapes it generates itself, `None` for any other config.
fn template(config: &EncryptionConfiguration) -> Option<Zeroizing<String>> {
    let [entry] = config.resources.as_slice() else {
        return None;
    };
    if config.api_version != crate::config::encryption::API_VERSION
        || config.kind != crate::config::encryption::KIND
        || entry.resources != ["secrets"]
    {
        return None;
    }
    let aescbc_only = |p: &ProviderConfiguration| -> Option<KeysConfiguration> {
        let only =
            p.aesgcm.is_none() && p.secretbox.is_none() && p.identity.is_none() && p.kms.is_none();
        p.aescbc.clone().filter(|k| only && !k.keys.is_empty())
    };
    let identity_only = |p: &ProviderConfiguration| {
        p.identity.is_some()
            && p.aescbc.is_none()
            && p.aesgcm.is_none()
            && p.secretbox.is_none()
            && p.kms.is_none()
    };
    let head = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources:\n  - secrets\n  providers:\n";
    let keys = |y: &mut String, k: &KeysConfiguration| {
        y.push_str("      keys:");
        for key in &k.keys {
            let _ = write!(
                y,
                "\n      - name: {}\n        secret: {}",
                key.name,
                key.secret.expose()
            );
        }
    };
    let mut y = Zeroizing::new(String::from(head));
    match entry.providers.as_slice() {
        // MultiKeyEncryptionProviderFile
        [first, second] if identity_only(second) => {
            let k = aescbc_only(first)?;
            y.push_str("  - aescbc:\n");
            keys(&mut y, &k);
            y.push_str("\n  - identity: {}");
        }
        // DisabledEncryptionProviderFile (one key only)
        [first, second] if identity_only(first) => {
            let k = aescbc_only(second).filter(|k| k.keys.len() == 1)?;
            y.push_str("  - identity: {}\n  - aescbc:\n");
            keys(&mut y, &k);
        }
        _ => return None,
    }
    Some(y)
}

/// `json.Marshal` of the k8s `EncryptionConfiguration` followed by `sigs.k8s.io/yaml.JSONToYAML`.
pub fn sigs_yaml(config: &EncryptionConfiguration) -> Zeroizing<String> {
    let mut y = Zeroizing::new(String::new());
    // Keys sorted: apiVersion, kind, resources (TypeMeta fields are omitempty).
    if !config.api_version.is_empty() {
        let _ = writeln!(y, "apiVersion: {}", scalar(&config.api_version));
    }
    if !config.kind.is_empty() {
        let _ = writeln!(y, "kind: {}", scalar(&config.kind));
    }
    if config.resources.is_empty() {
        y.push_str("resources: []\n");
        return y;
    }
    y.push_str("resources:\n");
    for entry in &config.resources {
        // providers before resources (sorted).
        if entry.providers.is_empty() {
            y.push_str("- providers: []\n");
        } else {
            y.push_str("- providers:\n");
            for p in &entry.providers {
                provider(&mut y, p);
            }
        }
        if entry.resources.is_empty() {
            y.push_str("  resources: []\n");
        } else {
            y.push_str("  resources:\n");
            for r in &entry.resources {
                let _ = writeln!(y, "  - {}", scalar(r));
            }
        }
    }
    y
}

/// One provider list item at indent 2; its fields sorted (aescbc, aesgcm, identity, kms, secretbox).
fn provider(y: &mut String, p: &ProviderConfiguration) {
    let mut lead = "  - ";
    let mut next = |y: &mut String| {
        y.push_str(lead);
        lead = "    ";
    };
    if let Some(k) = &p.aescbc {
        next(y);
        keyed(y, "aescbc", k);
    }
    if let Some(k) = &p.aesgcm {
        next(y);
        keyed(y, "aesgcm", k);
    }
    if p.identity.is_some() {
        next(y);
        y.push_str("identity: {}\n");
    }
    if let Some(k) = &p.kms {
        next(y);
        y.push_str("kms:\n");
        // apiVersion, name and endpoint have no omitempty in k8s's json tags.
        let api_version = k.api_version.as_deref().unwrap_or("");
        let _ = writeln!(y, "      apiVersion: {}", scalar(api_version));
        if let Some(c) = k.cachesize {
            let _ = writeln!(y, "      cachesize: {c}");
        }
        let _ = writeln!(y, "      endpoint: {}", scalar(&k.endpoint));
        let _ = writeln!(y, "      name: {}", scalar(&k.name));
        if let Some(t) = &k.timeout {
            // metav1.Duration marshals as Go's canonical duration text ("60s" → "1m0s").
            let text = gofmt::parse_duration(t)
                .map(gofmt::format_duration)
                .unwrap_or_else(|_| t.clone());
            let _ = writeln!(y, "      timeout: {}", scalar(&text));
        }
    }
    if let Some(k) = &p.secretbox {
        next(y);
        keyed(y, "secretbox", k);
    }
    if lead == "  - " {
        y.push_str("  - {}\n");
    }
}

fn keyed(y: &mut String, name: &str, k: &KeysConfiguration) {
    if k.keys.is_empty() {
        let _ = writeln!(y, "{name}:\n      keys: []");
        return;
    }
    let _ = writeln!(y, "{name}:\n      keys:");
    for key in &k.keys {
        let _ = writeln!(y, "      - name: {}", scalar(&key.name));
        let _ = writeln!(y, "        secret: {}", scalar(key.secret.expose()));
    }
}

/// A string as yaml.v2 writes it: plain when YAML would read it back as that string, else single-quoted when
/// that can hold it, else double-quoted.
fn scalar(s: &str) -> String {
    if s.contains('\n') {
        // Literal block style in yaml.v2; never seen in an encryption config: fall back to double quotes.
        return double_quoted(s);
    }
    if resolves_to_non_string(s) {
        return double_quoted(s);
    }
    let (plain, single) = analyze(s);
    if plain {
        s.to_string()
    } else if single {
        format!("'{}'", s.replace('\'', "''"))
    } else {
        double_quoted(s)
    }
}

/// What libyaml's emitter allows for a block-context scalar: (plain, single-quoted).
fn analyze(s: &str) -> (bool, bool) {
    if s.is_empty() {
        return (false, true);
    }
    if s.starts_with("---") || s.starts_with("...") {
        return (false, true);
    }
    let chars: Vec<char> = s.chars().collect();
    let mut block_indicators = false;
    let mut special = false;
    let ws = |c: Option<&char>| c.is_none_or(|c| *c == ' ' || *c == '\t');
    for (i, c) in chars.iter().enumerate() {
        let followed_by_ws = ws(chars.get(i + 1));
        let preceded_by_ws = i == 0 || ws(chars.get(i - 1));
        if i == 0 {
            match c {
                '#' | ',' | '[' | ']' | '{' | '}' | '&' | '*' | '!' | '|' | '>' | '\'' | '"'
                | '%' | '@' | '`' => block_indicators = true,
                '?' | ':' | '-' if followed_by_ws => block_indicators = true,
                _ => {}
            }
        } else {
            match c {
                ':' if followed_by_ws => block_indicators = true,
                '#' if preceded_by_ws => block_indicators = true,
                _ => {}
            }
        }
        if !printable(*c) {
            special = true;
        }
    }
    let leading_space = chars.first() == Some(&' ');
    let trailing_space = chars.last() == Some(&' ');
    let plain = !block_indicators && !special && !leading_space && !trailing_space;
    let single = !special;
    (plain, single)
}

/// libyaml's `is_printable` (the BOM excluded).
fn printable(c: char) -> bool {
    matches!(c as u32, 0x0a | 0x20..=0x7e | 0x85 | 0xa0..=0xd7ff | 0xe000..=0xfffd | 0x10000..=0x10ffff)
        && c != '\u{feff}'
}

fn double_quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{b}' => out.push_str("\\v"),
            '\u{c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            '\u{1b}' => out.push_str("\\e"),
            '\u{85}' => out.push_str("\\N"),
            '\u{2028}' => out.push_str("\\L"),
            '\u{2029}' => out.push_str("\\P"),
            // libyaml escapes what it does not count as printable (and the BOM) by code point.
            c if !printable(c) => match c as u32 {
                n @ 0..=0xff => {
                    let _ = write!(out, "\\x{n:02X}");
                }
                n @ 0x100..=0xffff => {
                    let _ = write!(out, "\\u{n:04X}");
                }
                n => {
                    let _ = write!(out, "\\U{n:08X}");
                }
            },
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// yaml.v2's `resolve` for a plain scalar: would `s` read back as null, a bool, a number or a timestamp?
fn resolves_to_non_string(s: &str) -> bool {
    const WORDS: [&str; 34] = [
        "", "~", "null", "Null", "NULL", "y", "Y", "yes", "Yes", "YES", "on", "On", "ON", "true",
        "True", "TRUE", "n", "N", "no", "No", "NO", "off", "Off", "OFF", "false", "False", "FALSE",
        ".nan", ".NaN", ".NAN", ".inf", ".Inf", ".INF", "<<",
    ];
    if WORDS.contains(&s) {
        return true;
    }
    if let Some(rest) = s.strip_prefix(['+', '-'])
        && matches!(rest, ".inf" | ".Inf" | ".INF")
    {
        return true;
    }
    let first = s.chars().next().unwrap_or(' ');
    if !(first.is_ascii_digit() || matches!(first, '+' | '-' | '.')) {
        return false;
    }
    let plain: String = s.chars().filter(|c| *c != '_').collect();
    is_go_int(&plain)
        || is_yaml_float(&plain)
        || is_base60_float(s)
        || (first.is_ascii_digit() && is_timestamp(s))
}

/// `strconv.ParseInt(s, 0, 64)` / `ParseUint` acceptance (sign, 0x/0o/0b/0 prefixes; `_` already removed).
fn is_go_int(s: &str) -> bool {
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (digits, radix) =
        if let Some(r) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
            (r, 16)
        } else if let Some(r) = body.strip_prefix("0o").or_else(|| body.strip_prefix("0O")) {
            (r, 8)
        } else if let Some(r) = body.strip_prefix("0b").or_else(|| body.strip_prefix("0B")) {
            (r, 2)
        } else if body.len() > 1 && body.starts_with('0') {
            (&body[1..], 8)
        } else {
            (body, 10)
        };
    !digits.is_empty() && digits.chars().all(|c| c.is_digit(radix))
}

/// yaml.v2's float pattern `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`.
fn is_yaml_float(s: &str) -> bool {
    let b = s.strip_prefix(['+', '-']).unwrap_or(s).as_bytes();
    let mut i = 0;
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    if b.first() == Some(&b'.') {
        i = 1;
        if digits(&mut i) == 0 {
            return false;
        }
    } else {
        if digits(&mut i) == 0 {
            return false;
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            digits(&mut i);
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// `^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$`.
fn is_base60_float(s: &str) -> bool {
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (main, frac) = match body.split_once('.') {
        Some((m, f)) => (m, Some(f)),
        None => (body, None),
    };
    if frac.is_some_and(|f| !f.chars().all(|c| c.is_ascii_digit() || c == '_')) {
        return false;
    }
    let mut parts = main.split(':');
    let head = parts.next().unwrap_or("");
    let head_ok = head.starts_with(|c: char| c.is_ascii_digit())
        && head.chars().all(|c| c.is_ascii_digit() || c == '_');
    let rest: Vec<&str> = parts.collect();
    head_ok
        && !rest.is_empty()
        && rest.iter().all(|p| {
            let b = p.as_bytes();
            match b {
                [d] => d.is_ascii_digit(),
                [a, d] => (b'0'..=b'5').contains(a) && d.is_ascii_digit(),
                _ => false,
            }
        })
}

/// A date (`2006-1-2`) or date-time as yaml.v2 accepts timestamps, checked loosely by its shape.
fn is_timestamp(s: &str) -> bool {
    let date_len = {
        let mut parts = s.splitn(3, '-');
        let y = parts.next().unwrap_or("");
        let m = parts.next().unwrap_or("");
        let rest = parts.next().unwrap_or("");
        let d: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let ok = y.len() == 4
            && y.chars().all(|c| c.is_ascii_digit())
            && (1..=2).contains(&m.len())
            && m.chars().all(|c| c.is_ascii_digit())
            && (1..=2).contains(&d.len());
        if !ok {
            return false;
        }
        y.len() + m.len() + d.len() + 2
    };
    let tail = &s[date_len..];
    tail.is_empty() || tail.starts_with(['T', 't', ' '])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::encryption::{self, Key, KmsConfiguration, ResourceConfiguration};
    use crate::secret::SecretString;

    fn key(name: &str, secret: &str) -> Key {
        Key {
            name: name.into(),
            secret: SecretString::new(secret.into()),
        }
    }

    /// What RKE's MultiKeyEncryptionProviderFile template gives for one key (and the fixture's key).
    const RKE_ONE_KEY: &str = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources:\n  - secrets\n  providers:\n  - aescbc:\n      keys:\n      - name: k-fw5hn\n        secret: NDFCMjlFMEQ3QzhBNDVGNjMzQjlFOTJFQzYwRkQ1OEU=\n  - identity: {}";

    #[test]
    fn managed_configs_render_like_rkes_template_without_a_final_newline() {
        let one = encryption::managed(vec![key(
            "k-fw5hn",
            "NDFCMjlFMEQ3QzhBNDVGNjMzQjlFOTJFQzYwRkQ1OEU=",
        )]);
        assert_eq!(state_string(&one, Origin::Template).as_str(), RKE_ONE_KEY);
        assert_eq!(node_file(&one).as_str(), format!("{RKE_ONE_KEY}\n"));
        assert_eq!(rke_file(RKE_ONE_KEY).as_str(), node_file(&one).as_str());
        let two = encryption::managed(vec![key("k-new01", "TkVX"), key("k-fw5hn", "T0xE")]);
        assert_eq!(
            state_string(&two, Origin::Template).as_str(),
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources:\n  - secrets\n  providers:\n  - aescbc:\n      keys:\n      - name: k-new01\n        secret: TkVX\n      - name: k-fw5hn\n        secret: T0xE\n  - identity: {}"
        );
        // The state string parses back to the same config.
        assert_eq!(
            encryption::parse(&state_string(&two, Origin::Template), "s").unwrap(),
            two
        );
    }

    /// A custom_config with the managed config's providers is still a custom config to RKE: its state string is
    /// the custom rendering, not the template (else the next `rke up` sees a changed config, restarts every
    /// server and rewrites every secret).
    #[test]
    fn a_custom_config_of_the_template_shape_renders_as_a_custom_config() {
        let c = encryption::managed(vec![key("k-fw5hn", "T0xE")]);
        let custom = state_string(&c, Origin::CustomConfig);
        assert_eq!(
            custom.as_str(),
            format!("{RKE_CUSTOM_HEADER}{}\n", sigs_yaml(&c).as_str())
        );
        assert_ne!(custom.as_str(), state_string(&c, Origin::Template).as_str());
        assert_eq!(
            crate::config::render::parse_state_config(&custom).unwrap(),
            c
        );
    }

    #[test]
    fn identity_first_with_one_key_is_rkes_disabled_template() {
        let mut c = encryption::managed(vec![key("k-fw5hn", "T0xE")]);
        c.resources[0].providers.reverse();
        assert_eq!(
            state_string(&c, Origin::Template).as_str(),
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources:\n  - secrets\n  providers:\n  - identity: {}\n  - aescbc:\n      keys:\n      - name: k-fw5hn\n        secret: T0xE"
        );
        assert_eq!(
            encryption::parse(&state_string(&c, Origin::Template), "s").unwrap(),
            c
        );
    }

    fn custom() -> EncryptionConfiguration {
        EncryptionConfiguration {
            api_version: encryption::API_VERSION.into(),
            kind: encryption::KIND.into(),
            resources: vec![
                ResourceConfiguration {
                    resources: vec!["secrets".into(), "configmaps".into()],
                    providers: vec![
                        ProviderConfiguration {
                            kms: Some(KmsConfiguration {
                                api_version: Some("v2".into()),
                                name: "vault".into(),
                                endpoint: "unix:///var/run/kms/vault.sock".into(),
                                cachesize: None,
                                timeout: Some("60s".into()),
                            }),
                            ..Default::default()
                        },
                        ProviderConfiguration {
                            aesgcm: Some(KeysConfiguration {
                                keys: vec![key("true", "c2VjcmV0IGlzIHNlY3VyZQ==")],
                            }),
                            ..Default::default()
                        },
                        ProviderConfiguration {
                            identity: Some(Default::default()),
                            ..Default::default()
                        },
                    ],
                },
                ResourceConfiguration {
                    resources: vec!["*.apps".into()],
                    providers: vec![ProviderConfiguration {
                        secretbox: Some(KeysConfiguration {
                            keys: vec![key("2024-01-02", "YWJj")],
                        }),
                        ..Default::default()
                    }],
                },
            ],
        }
    }

    /// What `sigs.k8s.io/yaml.JSONToYAML(json.Marshal(config))` gives: keys sorted, sequences flush with their
    /// key, `*.apps` single-quoted (an alias indicator), `true` and a date double-quoted (they would read back as
    /// a bool and a timestamp), the timeout in Go's canonical form, kms apiVersion kept.
    const SIGS: &str = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- providers:\n  - kms:\n      apiVersion: v2\n      endpoint: unix:///var/run/kms/vault.sock\n      name: vault\n      timeout: 1m0s\n  - aesgcm:\n      keys:\n      - name: \"true\"\n        secret: c2VjcmV0IGlzIHNlY3VyZQ==\n  - identity: {}\n  resources:\n  - secrets\n  - configmaps\n- providers:\n  - secretbox:\n      keys:\n      - name: \"2024-01-02\"\n        secret: YWJj\n  resources:\n  - '*.apps'\n";

    #[test]
    fn custom_configs_render_like_sigs_yaml_after_rkes_header() {
        let c = custom();
        assert_eq!(sigs_yaml(&c).as_str(), SIGS);
        assert_eq!(
            state_string(&c, Origin::Template).as_str(),
            format!("{RKE_CUSTOM_HEADER}{SIGS}\n")
        );
        // The node file is the sigs.k8s.io/yaml text alone: no duplicate apiVersion/kind for kube-apiserver.
        assert_eq!(node_file(&c).as_str(), SIGS);
        let mut back = encryption::parse(&node_file(&c), "n").unwrap();
        back.resources[0].providers[0].kms.as_mut().unwrap().timeout = Some("60s".into());
        assert_eq!(back, c);
        let mut from_state =
            crate::config::render::parse_state_config(&state_string(&c, Origin::Template)).unwrap();
        from_state.resources[0].providers[0]
            .kms
            .as_mut()
            .unwrap()
            .timeout = Some("60s".into());
        assert_eq!(from_state, c);
    }

    #[test]
    fn yaml_v2_quoting_rules() {
        for (s, want) in [
            ("secrets", "secrets"),
            ("*.*", "'*.*'"),
            ("it's", "it's"),
            ("#x", "'#x'"),
            ("a #b", "'a #b'"),
            ("a: b", "'a: b'"),
            ("a:b", "a:b"),
            ("- x", "'- x'"),
            ("-x", "-x"),
            ("", "\"\""),
            ("null", "\"null\""),
            ("on", "\"on\""),
            ("123", "\"123\""),
            ("0x1F", "\"0x1F\""),
            ("1_000", "\"1_000\""),
            ("1.5e3", "\"1.5e3\""),
            (".5", "\".5\""),
            ("1:30", "\"1:30\""),
            ("-.inf", "\"-.inf\""),
            ("2001-12-14T21:59:43Z", "\"2001-12-14T21:59:43Z\""),
            (
                "aescbckey-2026-11-23T22:40:05Z",
                "aescbckey-2026-11-23T22:40:05Z",
            ),
            (" lead", "' lead'"),
            ("tab\there", "\"tab\\there\""),
            ("del\u{7f}", "\"del\\x7F\""),
            ("nbsp\u{a0}x", "nbsp\u{a0}x"),
            ("+/ab==", "+/ab=="),
        ] {
            assert_eq!(scalar(s), want, "{s:?}");
        }
    }
}
