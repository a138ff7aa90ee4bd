//! Process wiring: flags → encryption config → etcd → TLS listener, with graceful shutdown on
//! SIGTERM/SIGINT (the stand-in runs as PID 1 in a container without `--init`).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use axum::Extension;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::api::{self, AppState};
use super::auth::{PeerUser, TokenAuth, user_from_cert};
use super::encryption::{self, ResourceTransformers};
use super::flags::{self, Flags};
use super::store::Store;

/// Formats a fatal error the way kube-apiserver's `cli.Run` logs it through klog, so scripts that
/// grep upstream's output match ours.
pub fn klog_fatal(err: &str) -> String {
    let now = time::OffsetDateTime::now_utc();
    let quoted = serde_json::to_string(err).unwrap_or_default();
    format!(
        "E{:02}{:02} {:02}:{:02}:{:02}.{:06} {:>7} run.go:72] \"command failed\" err={quoted}",
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.microsecond(),
        std::process::id()
    )
}

/// Runs the stand-in until a shutdown signal. Returns the process exit code.
pub async fn main(args: Vec<String>) -> i32 {
    let flags = match flags::parse(args) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("Error: {e}");
            return 1;
        }
    };
    if !flags.ignored.is_empty() {
        tracing::info!(flags = ?flags.ignored, "accepted and ignored flags the stand-in does not implement");
    }
    match run(flags).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{}", klog_fatal(&format!("{e:#}")));
            1
        }
    }
}

async fn run(flags: Flags) -> anyhow::Result<()> {
    // Read once at start, as with --encryption-provider-config-automatic-reload=false.
    let transformers = match &flags.encryption_provider_config {
        Some(path) => encryption::load(path).map_err(|e| anyhow!(e))?,
        None => ResourceTransformers::identity_only(),
    };
    let transformers = Arc::new(transformers);
    let tokens = match &flags.token_auth_file {
        Some(p) => TokenAuth::load(p).map_err(|e| anyhow!(e))?,
        None => TokenAuth::default(),
    };
    let tls = tls_config(&flags)?;
    let mut shutdown = Box::pin(shutdown_signal());

    let store = tokio::select! {
        s = connect_store(&flags, transformers.clone()) => s,
        _ = &mut shutdown => return Ok(()),
    };

    let addr: SocketAddr = format!("{}:{}", bracket(&flags.bind_address), flags.secure_port)
        .parse()
        .with_context(|| format!("invalid --bind-address {:?}", flags.bind_address))?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("failed to listen on {addr}"))?;
    let advertise = if addr.ip().is_unspecified() {
        format!("127.0.0.1:{}", addr.port())
    } else {
        addr.to_string()
    };
    let state = AppState {
        store,
        metrics: transformers.metrics.clone(),
        tokens: Arc::new(tokens),
        anonymous_auth: flags.anonymous_auth,
        advertise,
    };
    let app = api::router(state);
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tracing::info!(%addr, "Serving securely");
    loop {
        tokio::select! {
            conn = listener.accept() => {
                let (tcp, peer_addr) = match conn {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let app = app.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer_addr, "TLS handshake failed: {e}");
                            return;
                        }
                        Err(_) => return,
                    };
                    let peer = PeerUser(
                        tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| user_from_cert(c)),
                    );
                    let svc = TowerToHyperService::new(app.layer(Extension(peer)));
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection(TokioIo::new(tls), svc);
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(%peer_addr, "connection ended: {e}");
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down: draining connections");
    if tokio::time::timeout(Duration::from_secs(5), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after 5s; exiting anyway");
    }
    Ok(())
}

fn bracket(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Connects to etcd and creates the system namespaces, retrying until etcd answers (kube-apiserver
/// also waits for its storage before serving).
async fn connect_store(flags: &Flags, transformers: Arc<ResourceTransformers>) -> Store {
    let mut delay = Duration::from_millis(200);
    loop {
        match try_connect(flags, transformers.clone()).await {
            Ok(store) => return store,
            Err(e) => {
                tracing::warn!(
                    "waiting for etcd at {}: {e:#}",
                    flags.etcd_servers.join(",")
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(3));
            }
        }
    }
}

async fn try_connect(
    flags: &Flags,
    transformers: Arc<ResourceTransformers>,
) -> anyhow::Result<Store> {
    let mut opts = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(10));
    let tls_wanted = flags.etcd_cafile.is_some() || flags.etcd_certfile.is_some();
    if tls_wanted {
        let mut tls = etcd_client::TlsOptions::new();
        if let Some(ca) = &flags.etcd_cafile {
            let pem = std::fs::read(ca)
                .with_context(|| format!("reading --etcd-cafile {}", ca.display()))?;
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(pem));
        }
        if let (Some(cert), Some(key)) = (&flags.etcd_certfile, &flags.etcd_keyfile) {
            let c = std::fs::read(cert)
                .with_context(|| format!("reading --etcd-certfile {}", cert.display()))?;
            let k = zeroize::Zeroizing::new(
                std::fs::read(key)
                    .with_context(|| format!("reading --etcd-keyfile {}", key.display()))?,
            );
            tls = tls.identity(etcd_client::Identity::from_pem(c, k.as_slice()));
        }
        opts = opts.with_tls(tls);
    }
    let endpoints: Vec<String> = flags
        .etcd_servers
        .iter()
        .map(|e| {
            if e.contains("://") {
                e.clone()
            } else if tls_wanted {
                format!("https://{e}")
            } else {
                format!("http://{e}")
            }
        })
        .collect();
    let client = etcd_client::Client::connect(&endpoints, Some(opts))
        .await
        .context("connecting to etcd")?;
    let store = Store::new(client, &flags.etcd_prefix, transformers).await;
    store
        .ensure_system_namespaces()
        .await
        .map_err(|e| anyhow!("creating system namespaces: {}", e.body))?;
    Ok(store)
}

fn tls_config(flags: &Flags) -> anyhow::Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match &flags.client_ca_file {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca)
                .with_context(|| format!("reading --client-ca-file {}", ca.display()))?
            {
                roots.add(
                    cert.with_context(|| format!("parsing --client-ca-file {}", ca.display()))?,
                )?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .context("building the client certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let (certs, key) = match (&flags.tls_cert_file, &flags.tls_private_key_file) {
        (Some(c), Some(k)) => load_cert_pair(c, k)?,
        (None, None) => self_signed()?,
        _ => {
            return Err(anyhow!(
                "--tls-cert-file and --tls-private-key-file must be given together"
            ));
        }
    };
    let mut cfg = builder
        .with_single_cert(certs, key)
        .context("loading the serving certificate")?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

fn load_cert_pair(
    cert: &Path,
    key: &Path,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading --tls-cert-file {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing --tls-cert-file {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading --tls-private-key-file {}", key.display()))?;
    Ok((certs, key))
}

/// Without serving certificates kube-apiserver generates a self-signed pair; so do we (in memory).
fn self_signed() -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "kubernetes".to_string(),
    ];
    let ck = rcgen::generate_simple_self_signed(names)
        .context("generating a self-signed serving certificate")?;
    let key = PrivateKeyDer::try_from(ck.signing_key.serialize_der())
        .map_err(|e| anyhow!("serving key: {e}"))?;
    Ok((vec![ck.cert.der().clone()], key))
}
