//! kube-apiserver's command line, spelled as upstream (`--flag=value` and `--flag value`). Flags the
//! stand-in does not implement are accepted and ignored, since RKE passes many of them.

use std::path::PathBuf;

#[derive(Clone, Debug)]
pub struct Flags {
    pub etcd_servers: Vec<String>,
    pub etcd_cafile: Option<PathBuf>,
    pub etcd_certfile: Option<PathBuf>,
    pub etcd_keyfile: Option<PathBuf>,
    pub etcd_prefix: String,
    pub encryption_provider_config: Option<PathBuf>,
    pub secure_port: u16,
    pub bind_address: String,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_private_key_file: Option<PathBuf>,
    pub client_ca_file: Option<PathBuf>,
    pub token_auth_file: Option<PathBuf>,
    pub storage_media_type: String,
    pub anonymous_auth: bool,
    /// Flags seen but not implemented (logged once at start).
    pub ignored: Vec<String>,
}

impl Default for Flags {
    fn default() -> Self {
        Self {
            etcd_servers: Vec::new(),
            etcd_cafile: None,
            etcd_certfile: None,
            etcd_keyfile: None,
            etcd_prefix: "/registry".into(),
            encryption_provider_config: None,
            secure_port: 6443,
            bind_address: "0.0.0.0".into(),
            tls_cert_file: None,
            tls_private_key_file: None,
            client_ca_file: None,
            token_auth_file: None,
            storage_media_type: "application/json".into(),
            anonymous_auth: true,
            ignored: Vec::new(),
        }
    }
}

/// Flags that take no value when written without `=` (pflag booleans RKE may pass bare).
const BOOL_FLAGS: &[&str] = &[
    "anonymous-auth",
    "allow-privileged",
    "profiling",
    "enable-aggregator-routing",
    "encryption-provider-config-automatic-reload",
    "enable-bootstrap-token-auth",
    "service-account-lookup",
    "v",
    "logtostderr",
    "alsologtostderr",
    "enable-admission-plugins-placeholder",
];

const STORAGE_MEDIA_TYPES: &[&str] = &[
    "application/json",
    "application/yaml",
    "application/vnd.kubernetes.protobuf",
];

pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Flags, String> {
    let mut f = Flags::default();
    let mut it = args.into_iter().peekable();
    while let Some(arg) = it.next() {
        let Some(body) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            return Err(format!(
                "unexpected argument {arg:?}: kube-apiserver takes only flags"
            ));
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (body.to_string(), None),
        };
        let is_bool = BOOL_FLAGS.contains(&name.as_str());
        let value = match inline {
            Some(v) => v,
            None if is_bool => "true".into(),
            None => match it.peek() {
                Some(next) if !next.starts_with("--") => it.next().unwrap_or_default(),
                _ => return Err(format!("flag needs an argument: --{name}")),
            },
        };
        match name.as_str() {
            "etcd-servers" => {
                f.etcd_servers = value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            }
            "etcd-cafile" => f.etcd_cafile = Some(value.into()),
            "etcd-certfile" => f.etcd_certfile = Some(value.into()),
            "etcd-keyfile" => f.etcd_keyfile = Some(value.into()),
            "etcd-prefix" => f.etcd_prefix = value,
            "encryption-provider-config" => f.encryption_provider_config = Some(value.into()),
            "secure-port" => {
                f.secure_port = value
                    .parse()
                    .map_err(|_| format!("invalid argument {value:?} for \"--secure-port\" flag"))?
            }
            "bind-address" => f.bind_address = value,
            "tls-cert-file" => f.tls_cert_file = Some(value.into()),
            "tls-private-key-file" => f.tls_private_key_file = Some(value.into()),
            "client-ca-file" => f.client_ca_file = Some(value.into()),
            "token-auth-file" => f.token_auth_file = Some(value.into()),
            "anonymous-auth" => f.anonymous_auth = value != "false",
            "storage-media-type" => {
                if !STORAGE_MEDIA_TYPES.contains(&value.as_str()) {
                    return Err(format!(
                        "--storage-media-type {value:?} invalid, allowed values: application/json, application/vnd.kubernetes.protobuf, application/yaml"
                    ));
                }
                if value != "application/json" {
                    return Err(format!(
                        "--storage-media-type {value:?} is not supported by the atrest stand-in: only application/json"
                    ));
                }
                f.storage_media_type = value;
            }
            other => f.ignored.push(other.to_string()),
        }
    }
    if f.etcd_servers.is_empty() {
        return Err("--etcd-servers must be specified".into());
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn both_spellings_and_ignored_flags() {
        let f = parse(args(&[
            "--etcd-servers=https://127.0.0.1:2379,https://127.0.0.2:2379",
            "--secure-port",
            "7443",
            "--allow-privileged",
            "--service-cluster-ip-range=10.43.0.0/16",
            "--etcd-prefix",
            "/custom",
        ]))
        .unwrap();
        assert_eq!(f.etcd_servers.len(), 2);
        assert_eq!(f.secure_port, 7443);
        assert_eq!(f.etcd_prefix, "/custom");
        assert_eq!(
            f.ignored,
            vec!["allow-privileged", "service-cluster-ip-range"]
        );
        let e = parse(args(&[
            "--etcd-servers=x",
            "--storage-media-type=application/vnd.kubernetes.protobuf",
        ]));
        assert!(e.unwrap_err().contains("only application/json"));
    }
}
