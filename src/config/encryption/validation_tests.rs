//! One test per upstream validation rule; expected texts are kube-apiserver's.

use super::*;
use crate::config::encryption::parse;

const HEAD: &str = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n";
const K16: &str = "c2VjcmV0IGlzIHNlY3VyZQ=="; // "secret is secure"
const K32: &str = "YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXoxMjM0NTY=";

fn cfg(body: &str) -> EncryptionConfiguration {
    let text = format!("{HEAD}{body}");
    match parse(&text, "t.yaml") {
        Ok(c) => c,
        Err(e) => panic!("test input does not parse: {e}\n{text}"),
    }
}

fn err(body: &str) -> String {
    match validate(&cfg(body)) {
        Ok(()) => panic!("expected a validation error for:\n{body}"),
        Err(e) => e.to_string(),
    }
}

fn ok(body: &str) {
    if let Err(e) = validate(&cfg(body)) {
        panic!("unexpected validation error {e} for:\n{body}");
    }
}

fn one(resources: &str, provider: &str) -> String {
    format!("resources:\n- resources: {resources}\n  providers:\n  - {provider}\n")
}

#[test]
fn nil_config() {
    assert_eq!(
        validate_optional(None, false).unwrap_err().to_string(),
        "resources: Required value: EncryptionConfiguration can't be nil"
    );
}

#[test]
fn no_entries() {
    assert_eq!(
        err("resources: []\n"),
        "resources: Required value: at least one resources is required"
    );
    assert_eq!(
        err(""),
        "resources: Required value: at least one resources is required"
    );
}

#[test]
fn entry_without_resources_or_providers() {
    assert_eq!(
        err("resources:\n- resources: []\n  providers: [identity: {}]\n"),
        "resources[0].resources: Required value: at least one resources[0].resources is required"
    );
    assert_eq!(
        err("resources:\n- resources: [secrets]\n"),
        "resources[0].providers: Required value: at least one resources[0].providers is required"
    );
}

#[test]
fn duplicates_and_overlaps() {
    assert_eq!(
        err(&one("[secrets, secrets]", "identity: {}")),
        r#"resources[0].resources: Invalid value: ["secrets","secrets"]: the same resource cannot be specified multiple times"#
    );
    assert_eq!(
        err(&one("[secrets, '*.']", "identity: {}")),
        r#"resources[0].resources: Invalid value: ["secrets","*."]: using overlapping resources such as 'secrets' and '*.' in the same resource list is not allowed as they will be masked"#
    );
    assert_eq!(
        err(&one("['*.*', configmaps]", "identity: {}")),
        r#"resources[0].resources: Invalid value: ["*.*","configmaps"]: using overlapping resources such as 'secrets' and '*.' in the same resource list is not allowed as they will be masked"#
    );
    assert_eq!(
        err(&one("['*.apps', deployments.apps]", "identity: {}")),
        r#"resources[0].resources: Invalid value: ["*.apps","deployments.apps"]: using overlapping resources such as 'secrets' and '*.' in the same resource list is not allowed as they will be masked"#
    );
    // Different groups do not overlap; `configmaps.` is the core group.
    ok(&one("['*.apps', secrets, configmaps.]", "identity: {}"));
}

#[test]
fn resource_name_rules() {
    let cases = [
        (
            "Secrets",
            "resource name should not contain capital letters",
        ),
        (
            "*",
            "use '*.' to encrypt all the resources from core API group or *.* to encrypt all resources",
        ),
        (
            "serviceipallocations",
            "resources which do not have REST API/s cannot be encrypted",
        ),
        (
            "apiserveripinfo",
            "resources which do not have REST API/s cannot be encrypted",
        ),
        (
            "servicenodeportallocations",
            "resources which do not have REST API/s cannot be encrypted",
        ),
        (
            "events.events.k8s.io",
            "'*.events.k8s.io' objects are stored using the 'events' API group in etcd. Use 'events' instead in the config file",
        ),
        (
            "deployments.extensions",
            "'extensions' group has been removed and cannot be used for encryption",
        ),
        (
            "secrets.*",
            "encrypting the same resource across groups is not supported",
        ),
    ];
    for (res, detail) in cases {
        assert_eq!(
            err(&one(&format!("['{res}']"), "identity: {}")),
            format!("resources[0].resources[0]: Invalid value: \"{res}\": {detail}")
        );
    }
    ok(&one(
        "['*.', '*.apps', pandas.awesome.bears.example]",
        "identity: {}",
    ));
    ok(&one("['*.*']", "identity: {}"));
}

#[test]
fn provider_none_or_several() {
    assert_eq!(
        err("resources:\n- resources: [secrets]\n  providers:\n  - identity:\n"),
        r#"resources[0].providers[0]: Invalid value: {"AESGCM":null,"AESCBC":null,"Secretbox":null,"Identity":null,"KMS":null}: provider does not contain any of the expected providers: KMS, AESGCM, AESCBC, Secretbox, Identity"#
    );
    let body = format!(
        "resources:\n- resources: [secrets]\n  providers:\n  - identity: {{}}\n    aescbc:\n      keys: [{{name: k1, secret: {K16}}}]\n"
    );
    assert_eq!(
        err(&body),
        r#"resources[0].providers[0]: Invalid value: {"AESGCM":null,"AESCBC":{"Keys":[{"Name":"k1","Secret":"REDACTED"}]},"Secretbox":null,"Identity":{},"KMS":null}: more than one provider specified in a single element, should split into different list elements"#
    );
}

#[test]
fn keys_required_and_well_formed() {
    assert_eq!(
        err(&one("[secrets]", "aescbc: {keys: []}")),
        "resources[0].providers[0].aescbc.keys: Required value: at least one keys is required"
    );
    assert_eq!(
        err(&one(
            "[secrets]",
            &format!("aesgcm: {{keys: [{{secret: {K16}}}]}}")
        )),
        "resources[0].providers[0].aesgcm.keys[0].name: Required value: name is a mandatory field for a key"
    );
    assert_eq!(
        err(&one("[secrets]", "secretbox: {keys: [{name: k}]}")),
        "resources[0].providers[0].secretbox.keys[0].secret: Required value: secret is a mandatory field for a key"
    );
    // Name and secret both missing: two errors, aggregated.
    assert_eq!(
        err(&one("[secrets]", "aescbc: {keys: [{}]}")),
        "[resources[0].providers[0].aescbc.keys[0].name: Required value: name is a mandatory field for a key, resources[0].providers[0].aescbc.keys[0].secret: Required value: secret is a mandatory field for a key]"
    );
}

#[test]
fn base64_is_the_standard_padded_alphabet() {
    let bad = "resources[0].providers[0].aescbc.keys[0].secret: Invalid value: \"REDACTED\": secrets must be base64 encoded";
    for secret in [
        "not*base64",
        "c2VjcmV0IGlzIHNlY3VyZQ",
        "YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXoxMjM0NTY_",
    ] {
        assert_eq!(
            err(&one(
                "[secrets]",
                &format!("aescbc: {{keys: [{{name: k, secret: '{secret}'}}]}}")
            )),
            bad
        );
    }
    // URL-alphabet characters are refused even when the length would fit.
    assert_eq!(
        err(&one(
            "[secrets]",
            "aescbc: {keys: [{name: k, secret: 'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA-_'}]}"
        )),
        bad
    );
}

#[test]
fn key_lengths() {
    for (provider, secret, len, sizes) in [
        ("aescbc", "c2hvcnQ=", 5, "[16 24 32]"),
        ("aesgcm", "c2hvcnQ=", 5, "[16 24 32]"),
        ("secretbox", K16, 16, "[32]"),
    ] {
        assert_eq!(
            err(&one(
                "[secrets]",
                &format!("{provider}: {{keys: [{{name: k, secret: '{secret}'}}]}}")
            )),
            format!(
                "resources[0].providers[0].{provider}.keys[0].secret: Invalid value: \"REDACTED\": secret is not of the expected length, got {len}, expected one of {sizes}"
            )
        );
    }
    for secret in [K16, "MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0", K32] {
        ok(&one(
            "[secrets]",
            &format!("aesgcm: {{keys: [{{name: k, secret: '{secret}'}}]}}"),
        ));
        ok(&one(
            "[secrets]",
            &format!("aescbc: {{keys: [{{name: k, secret: '{secret}'}}]}}"),
        ));
    }
    ok(&one(
        "[secrets]",
        &format!("secretbox: {{keys: [{{name: k, secret: '{K32}'}}]}}"),
    ));
}

fn kms(fields: &str) -> String {
    one("[secrets]", &format!("kms: {{{fields}}}"))
}

#[test]
fn kms_rules() {
    let p = "resources[0].providers[0].kms";
    assert_eq!(
        err(&kms("endpoint: 'unix:///k.sock'")),
        format!("{p}.name: Required value: name is a mandatory field for a provider")
    );
    assert_eq!(
        err(&kms(
            "apiVersion: v2, name: 'a:b', endpoint: 'unix:///k.sock'"
        )),
        format!(
            "{p}.name: Invalid value: \"a:b\": invalid KMS provider name a:b, must not contain ':'"
        )
    );
    // A colon is fine in a v1 name.
    ok(&kms("name: 'a:b', endpoint: 'unix:///k.sock'"));
    assert_eq!(
        err(&kms("name: k, endpoint: 'unix:///k.sock', timeout: 0s")),
        format!("{p}.timeout: Invalid value: \"0s\": timeout should be a positive value")
    );
    assert_eq!(
        err(&kms("name: k, endpoint: 'unix:///k.sock', timeout: -1m30s")),
        format!("{p}.timeout: Invalid value: \"-1m30s\": timeout should be a positive value")
    );
    assert_eq!(
        err(&kms("name: k")),
        format!("{p}.endpoint: Invalid value: \"\": endpoint is a mandatory field for a kms")
    );
    assert_eq!(
        err(&kms("name: k, endpoint: \"unix:///k\\x01.sock\"")),
        format!(
            "{p}.endpoint: Invalid value: \"unix:///k\\x01.sock\": invalid endpoint for kms provider, error: parse \"unix:///k\\x01.sock\": net/url: invalid control character in URL"
        )
    );
    assert_eq!(
        err(&kms("name: k, endpoint: 'https://kms.example'")),
        format!(
            "{p}.endpoint: Invalid value: \"https://kms.example\": unsupported scheme \"https\" for KMS provider, only unix is supported"
        )
    );
    assert_eq!(
        err(&kms(
            "apiVersion: v2, name: k, endpoint: 'unix:///k.sock', cachesize: 10"
        )),
        format!("{p}.cachesize: Invalid value: 10: cachesize is not supported in v2")
    );
    assert_eq!(
        err(&kms("name: k, endpoint: 'unix:///k.sock', cachesize: 0")),
        format!(
            "{p}.cachesize: Invalid value: 0: cachesize should be a positive value, or negative to disable"
        )
    );
    ok(&kms("name: k, endpoint: 'unix:///k.sock', cachesize: -1"));
    assert_eq!(
        err(&kms("apiVersion: v3, name: k, endpoint: 'unix:///k.sock'")),
        format!(
            "{p}.apiVersion: Invalid value: \"v3\": unsupported apiVersion apiVersion for KMS provider, only v1 and v2 are supported"
        )
    );
    ok(&kms(
        "apiVersion: v2, name: k, endpoint: 'unix:///@abstract', timeout: 15s",
    ));
}

#[test]
fn kms_name_uniqueness() {
    let two = |v1: &str, v2: &str| {
        format!(
            "resources:\n- resources: [secrets]\n  providers:\n  - kms: {{apiVersion: {v1}, name: foo, endpoint: 'unix:///a.sock'}}\n  - kms: {{apiVersion: {v2}, name: foo, endpoint: 'unix:///b.sock'}}\n"
        )
    };
    let dup = "resources[0].providers[1].kms.name: Invalid value: \"foo\": duplicate KMS provider name foo, names must be unique";
    assert_eq!(err(&two("v2", "v2")), dup);
    assert_eq!(err(&two("v1", "v2")), dup);
    // Two v1 providers may share a name unless automatic reload is on.
    ok(&two("v1", "v1"));
    let reload = validate_with_reload(&cfg(&two("v1", "v1")), true).unwrap_err();
    assert_eq!(reload.to_string(), dup);
}

#[test]
fn all_errors_are_collected_in_order_without_duplicates() {
    let body = "resources:\n- resources: [Secrets, '*']\n  providers:\n  - aescbc: {keys: []}\n- resources: []\n  providers: []\n";
    assert_eq!(
        err(body),
        "[resources[0].resources: Invalid value: [\"Secrets\",\"*\"]: using overlapping resources such as 'secrets' and '*.' in the same resource list is not allowed as they will be masked, \
resources[0].resources[0]: Invalid value: \"Secrets\": resource name should not contain capital letters, \
resources[0].resources[1]: Invalid value: \"*\": use '*.' to encrypt all the resources from core API group or *.* to encrypt all resources, \
resources[0].providers[0].aescbc.keys: Required value: at least one keys is required, \
resources[1].resources: Required value: at least one resources[1].resources is required, \
resources[1].providers: Required value: at least one resources[1].providers is required]"
    );
}

#[test]
fn masking_across_entries() {
    let m = |body: &str| check_masking(&cfg(body)).map_err(|e| e.to_string());
    let entry = |res: &str| format!("- resources: {res}\n  providers: [identity: {{}}]\n");
    assert_eq!(
        m(&format!(
            "resources:\n{}",
            entry("[configmaps, '*.', secrets]")
        )),
        Err("resource \"secrets\" is masked by earlier rule \"*.\"".into())
    );
    assert_eq!(
        m(&format!(
            "resources:\n{}{}",
            entry("['*.']"),
            entry("['*.']")
        )),
        Err("resource \"*.\" is masked by earlier rule \"*.\"".into())
    );
    assert_eq!(
        m(&format!(
            "resources:\n{}{}",
            entry("['*.foo']"),
            entry("['*.foo']")
        )),
        Err("resource \"*.foo\" is masked by earlier rule \"*.foo\"".into())
    );
    assert_eq!(
        m(&format!(
            "resources:\n{}{}",
            entry("['*.*']"),
            entry("['*.']")
        )),
        Err("resource \"*.\" is masked by earlier rule \"*.*\"".into())
    );
    assert_eq!(
        m(&format!(
            "resources:\n{}{}",
            entry("[configmaps]"),
            entry("['*.*', secrets]")
        )),
        Err("resource \"secrets\" is masked by earlier rule \"*.*\"".into())
    );
    // Specific before wildcard is the supported opt-out pattern.
    assert_eq!(
        m(&format!(
            "resources:\n{}{}",
            entry("[events]"),
            entry("['*.*']")
        )),
        Ok(())
    );
    assert_eq!(
        m(&format!(
            "resources:\n{}",
            entry("[configmaps, secrets, '*.*']")
        )),
        Ok(())
    );
    let e = check_masking(&cfg(&format!(
        "resources:\n{}{}",
        entry("['*.*']"),
        entry("[a, b]")
    )))
    .unwrap_err();
    assert_eq!(e.path, "resources[1].resources[0]");
}

#[test]
fn same_key_name_with_two_secrets_is_refused() {
    let body = format!(
        "resources:\n- resources: [secrets]\n  providers:\n  - aescbc: {{keys: [{{name: k1, secret: {K16}}}]}}\n- resources: [configmaps]\n  providers:\n  - aescbc: {{keys: [{{name: k1, secret: {K32}}}]}}\n  - secretbox: {{keys: [{{name: k1, secret: {K32}}}]}}\n"
    );
    let c = cfg(&body);
    assert_eq!(validate(&c), Ok(()), "upstream accepts it");
    assert_eq!(
        check_key_conflicts(&c).unwrap_err().to_string(),
        "resources[1].providers[0].aescbc.keys[0].name: Invalid value: \"k1\": aescbc key name \"k1\" is already used with a different secret at resources[0].providers[0].aescbc.keys[0].name; give each secret its own name"
    );
    // The same key shared by two entries is fine.
    let shared = format!(
        "resources:\n- resources: [secrets]\n  providers:\n  - aescbc: {{keys: [{{name: k1, secret: {K16}}}]}}\n- resources: [configmaps]\n  providers:\n  - aescbc: {{keys: [{{name: k1, secret: {K16}}}]}}\n"
    );
    assert_eq!(check_key_conflicts(&cfg(&shared)), Ok(()));
}

#[test]
fn secrets_never_appear_in_messages() {
    let body = format!(
        "resources:\n- resources: [secrets]\n  providers:\n  - identity: {{}}\n    aescbc: {{keys: [{{name: k1, secret: {K16}}}]}}\n  - aesgcm: {{keys: [{{name: k2, secret: 'c2hvcnQ='}}]}}\n"
    );
    let e = err(&body);
    assert!(!e.contains(K16) && !e.contains("c2hvcnQ="), "{e}");
}
