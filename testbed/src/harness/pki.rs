//! The testbed's PKI, named like RKE's: `kube-ca`, `kube-node` (etcd client), `kube-etcd-<ip-with-dashes>`
//! (etcd serving + peer), `kube-apiserver` (serving), `kube-admin` (kubectl client) and
//! `kube-service-account-token` (service-account token keys). RSA 2048 keys as RKE's (see `new_key`), signed in
//! memory.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use zeroize::Zeroizing;

/// One certificate with its private key, both PEM. The key is zeroed on drop.
pub struct CertPair {
    /// RKE's bundle name (`kube-ca`, `kube-etcd-127-0-20-11`, …).
    pub name: String,
    pub common_name: String,
    pub cert_pem: String,
    pub key_pem: Zeroizing<String>,
}

/// Every certificate the testbed needs.
pub struct Pki {
    pub ca: CertPair,
    /// Client certificate used by kube-apiserver (and by tests/atrest) to reach etcd.
    pub kube_node: CertPair,
    /// Cluster admin client certificate (CN kube-admin, O system:masters) for the kubeconfig.
    pub kube_admin: CertPair,
    /// Per node: etcd serving + peer certificate.
    pub etcd: Vec<CertPair>,
    /// kube-apiserver serving certificate (every node address in its SANs, as RKE does).
    pub apiserver: CertPair,
    /// `kube-service-account-token`: its key signs and verifies service-account tokens
    /// (`--service-account-key-file` and `--service-account-signing-key-file`, as RKE sets them).
    pub service_account: CertPair,
}

/// RKE names etcd certificates after the node address with dots replaced by dashes.
pub fn etcd_cert_name(ip: Ipv4Addr) -> String {
    format!("kube-etcd-{}", ip.to_string().replace('.', "-"))
}

/// A fresh RSA 2048 key, as RKE makes every key of its bundle: RKE reads the bundle back as RSA keys only (its
/// state loader converts each key to `*rsa.PrivateKey` and panics on anything else), so a testbed with EC keys
/// would not be a cluster `rke` can work on. rcgen (on ring) cannot generate RSA keys; `openssl genpkey` does,
/// in PKCS#8, which rcgen and RKE both read.
fn new_key() -> Result<KeyPair> {
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .context("running openssl genpkey (scripts/prereqs.sh installs openssl)")?;
    anyhow::ensure!(
        out.status.success(),
        "openssl genpkey failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pem = Zeroizing::new(String::from_utf8(out.stdout).context("openssl's key is not text")?);
    KeyPair::from_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256).context("reading the RSA key")
}

fn leaf_params(
    cn: &str,
    org: Option<&str>,
    eku: &[ExtendedKeyUsagePurpose],
    sans: Vec<SanType>,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    if let Some(o) = org {
        dn.push(DnType::OrganizationName, o);
    }
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = eku.to_vec();
    params.subject_alt_names = sans;
    params
}

fn dns(name: &str) -> Result<SanType> {
    Ok(SanType::DnsName(
        name.try_into()
            .with_context(|| format!("DNS name {name}"))?,
    ))
}

/// A self-signed CA that signs leaf certificates in memory.
pub struct Ca {
    pub cert: CertPair,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// A new CA named `name` (also its common name).
    pub fn generate(name: &str) -> Result<Ca> {
        let ca_key = new_key()?;
        let mut ca_params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        ca_params.distinguished_name = dn;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .with_context(|| format!("self-signing {name}"))?;
        let cert = CertPair {
            name: name.into(),
            common_name: name.into(),
            cert_pem: ca_cert.pem(),
            key_pem: Zeroizing::new(ca_key.serialize_pem()),
        };
        Ok(Ca {
            cert,
            issuer: Issuer::new(ca_params, ca_key),
        })
    }

    /// Signs a leaf certificate `name` (bundle name) with a fresh key.
    pub fn sign(
        &self,
        name: &str,
        cn: &str,
        org: Option<&str>,
        eku: &[ExtendedKeyUsagePurpose],
        sans: Vec<SanType>,
    ) -> Result<CertPair> {
        let key = new_key()?;
        let cert = leaf_params(cn, org, eku, sans)
            .signed_by(&key, &self.issuer)
            .with_context(|| format!("signing {name}"))?;
        Ok(CertPair {
            name: name.into(),
            common_name: cn.into(),
            cert_pem: cert.pem(),
            key_pem: Zeroizing::new(key.serialize_pem()),
        })
    }
}

/// A subject alternative name: an IP address if `name` parses as one, else a DNS name.
pub fn san(name: &str) -> Result<SanType> {
    match name.parse::<IpAddr>() {
        Ok(ip) => Ok(SanType::IpAddress(ip)),
        Err(_) => dns(name),
    }
}

impl Pki {
    /// Generates the whole PKI for nodes at `ips`.
    pub fn generate(ips: &[Ipv4Addr]) -> Result<Pki> {
        use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        let ca = Ca::generate("kube-ca")?;
        let kube_node = ca.sign(
            "kube-node",
            "system:node:kube-node",
            Some("system:nodes"),
            &[ClientAuth],
            vec![],
        )?;
        let kube_admin = ca.sign(
            "kube-admin",
            "kube-admin",
            Some("system:masters"),
            &[ClientAuth],
            vec![],
        )?;
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let mut etcd = Vec::new();
        let mut api_sans = vec![
            SanType::IpAddress(loopback),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::new(10, 43, 0, 1))),
            dns("localhost")?,
        ];
        for name in [
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ] {
            api_sans.push(dns(name)?);
        }
        for ip in ips {
            let sans = vec![
                SanType::IpAddress(IpAddr::V4(*ip)),
                SanType::IpAddress(loopback),
                dns("localhost")?,
            ];
            etcd.push(ca.sign(
                &etcd_cert_name(*ip),
                "kube-etcd",
                None,
                &[ServerAuth, ClientAuth],
                sans,
            )?);
            api_sans.push(SanType::IpAddress(IpAddr::V4(*ip)));
        }
        let apiserver = ca.sign(
            "kube-apiserver",
            "kube-apiserver",
            None,
            // RKE gives every certificate ClientAuth and its server certificates ServerAuth too; `rke` presents
            // this one as a client certificate in its kube-apiserver health check.
            &[ServerAuth, ClientAuth],
            api_sans,
        )?;
        let mut service_account = ca.sign(
            "kube-service-account-token",
            "kube-service-account-token",
            None,
            &[ClientAuth],
            vec![],
        )?;
        // kube-apiserver reads `--service-account-key-file` for public keys and does not derive one from a PKCS#8
        // EC private key: the key file carries the public key too (the signing key file's private key is found
        // by block type).
        let public = KeyPair::from_pem(&service_account.key_pem)
            .context("re-reading the service-account key")?
            .public_key_pem();
        service_account.key_pem.push_str(&public);
        Ok(Pki {
            service_account,
            ca: ca.cert,
            kube_node,
            kube_admin,
            etcd,
            apiserver,
        })
    }
}
