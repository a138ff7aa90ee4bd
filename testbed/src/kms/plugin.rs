//! The testbed KMS plugin: serves `v1beta1.KeyManagementService` and/or `v2.KeyManagementService` on one unix
//! socket and wraps DEKs/seeds with AES-256-GCM under local KEKs from a key file (see [`super::keyfile`]).
//!
//! - Socket: mode 0600; a stale socket (nobody accepting) is removed at start; a live one is an error.
//! - Rotation: the key file is re-read on SIGHUP and whenever its size/mtime/inode changes (checked on each call),
//!   so `kms-plugin rotate` takes effect even without the signal.
//! - Health toggle: while `<socket>.unhealthy` exists, Status reports `healthz` ≠ "ok" and Encrypt fails
//!   (Decrypt keeps working: reads of existing data stay possible, as with a real KMS that only lost write access).
//! - SIGTERM/SIGINT: stop accepting, remove the socket and pid file, exit 0.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use anyhow::{Context, bail};
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

use super::client::V1_API_VERSION;
use super::keyfile::{KeyFileError, KeyRing};
use super::proto::{v1beta1, v2};

/// Reported as the v1 runtime name.
pub const RUNTIME_NAME: &str = "atrest-testbed-kms-plugin";

/// Which plugin APIs to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ApiSelection {
    V1,
    V2,
    Both,
}

/// Everything the plugin needs to run.
#[derive(Debug, Clone)]
pub struct PluginConfig {
    pub socket: PathBuf,
    pub key_file: PathBuf,
    pub api: ApiSelection,
    pub pid_file: PathBuf,
    pub unhealthy_file: PathBuf,
}

impl PluginConfig {
    /// Defaults: pid file `<key-file>.pid`, health toggle `<socket>.unhealthy`.
    pub fn new(socket: PathBuf, key_file: PathBuf, api: ApiSelection) -> Self {
        let pid_file = super::keyfile::default_pid_file(&key_file);
        let mut unhealthy = socket.as_os_str().to_owned();
        unhealthy.push(".unhealthy");
        Self {
            socket,
            key_file,
            api,
            pid_file,
            unhealthy_file: PathBuf::from(unhealthy),
        }
    }
}

type FileStamp = (u64, u64, i64, i64);

fn stamp(path: &Path) -> Option<FileStamp> {
    let m = fs::metadata(path).ok()?;
    Some((m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

/// Shared state of the running plugin.
#[derive(Debug)]
pub struct PluginState {
    key_file: PathBuf,
    unhealthy_file: PathBuf,
    ring: RwLock<Arc<KeyRing>>,
    loaded: Mutex<Option<FileStamp>>,
    /// Last reload failure; reported through Status so a broken key file is visible.
    reload_error: Mutex<Option<String>>,
}

impl PluginState {
    /// Loads (or creates) the key file.
    pub fn open(key_file: &Path, unhealthy_file: &Path) -> Result<Self, KeyFileError> {
        let ring = KeyRing::load_or_create(key_file)?;
        Ok(Self {
            key_file: key_file.to_path_buf(),
            unhealthy_file: unhealthy_file.to_path_buf(),
            ring: RwLock::new(Arc::new(ring)),
            loaded: Mutex::new(stamp(key_file)),
            reload_error: Mutex::new(None),
        })
    }

    /// Re-reads the key file; on failure keeps the old keys and remembers the error.
    pub fn reload(&self) {
        let now = stamp(&self.key_file);
        match KeyRing::load(&self.key_file) {
            Ok(ring) => {
                tracing::info!(key_file = %self.key_file.display(), current = ring.current().id(), keys = ring.ids().len(), "key file loaded");
                *self.ring.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ring);
                *self.reload_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
            Err(e) => {
                tracing::error!("{e}; keeping the previous keys");
                *self.reload_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
            }
        }
        *self.loaded.lock().unwrap_or_else(|p| p.into_inner()) = now;
    }

    fn reload_if_changed(&self) {
        let now = stamp(&self.key_file);
        let changed = *self.loaded.lock().unwrap_or_else(|p| p.into_inner()) != now;
        if changed {
            self.reload();
        }
    }

    fn ring(&self) -> Arc<KeyRing> {
        self.reload_if_changed();
        self.ring.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// `Ok` when healthy, else the reason (toggle file present or key file unreadable).
    pub fn health(&self) -> Result<(), String> {
        self.reload_if_changed();
        if self.unhealthy_file.exists() {
            let note = fs::read_to_string(&self.unhealthy_file).unwrap_or_default();
            let note = note.trim();
            return Err(if note.is_empty() {
                format!("unhealthy: {} exists", self.unhealthy_file.display())
            } else {
                format!("unhealthy: {note}")
            });
        }
        if let Some(e) = self
            .reload_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Err(format!("unhealthy: {e}"));
        }
        Ok(())
    }

    fn wrap(&self, plaintext: &[u8]) -> Result<(Vec<u8>, String), Status> {
        self.health().map_err(Status::unavailable)?;
        self.ring()
            .wrap(plaintext)
            .map_err(|e| Status::internal(e.to_string()))
    }

    fn unwrap(&self, blob: &[u8], key_id: Option<&str>) -> Result<Vec<u8>, Status> {
        match self.ring().unwrap(blob, key_id) {
            Ok((pt, _)) => Ok(pt.to_vec()),
            Err(e @ KeyFileError::UnknownKeyId(_)) => Err(Status::not_found(e.to_string())),
            Err(e) => Err(Status::invalid_argument(e.to_string())),
        }
    }
}

fn check_v1_version(v: &str) -> Result<(), Status> {
    if !v.is_empty() && v != V1_API_VERSION {
        return Err(Status::invalid_argument(format!(
            "unsupported KMS API version {v:?}, only {V1_API_VERSION} is supported"
        )));
    }
    Ok(())
}

/// The v1beta1 service.
#[derive(Debug, Clone)]
pub struct V1Service(pub Arc<PluginState>);

#[tonic::async_trait]
impl v1beta1::key_management_service_server::KeyManagementService for V1Service {
    async fn version(
        &self,
        req: Request<v1beta1::VersionRequest>,
    ) -> Result<Response<v1beta1::VersionResponse>, Status> {
        check_v1_version(&req.get_ref().version)?;
        Ok(Response::new(v1beta1::VersionResponse {
            version: V1_API_VERSION.into(),
            runtime_name: RUNTIME_NAME.into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
        }))
    }

    async fn decrypt(
        &self,
        req: Request<v1beta1::DecryptRequest>,
    ) -> Result<Response<v1beta1::DecryptResponse>, Status> {
        check_v1_version(&req.get_ref().version)?;
        let plain = self.0.unwrap(&req.get_ref().cipher, None)?;
        Ok(Response::new(v1beta1::DecryptResponse { plain }))
    }

    async fn encrypt(
        &self,
        req: Request<v1beta1::EncryptRequest>,
    ) -> Result<Response<v1beta1::EncryptResponse>, Status> {
        check_v1_version(&req.get_ref().version)?;
        let (cipher, _) = self.0.wrap(&req.get_ref().plain)?;
        Ok(Response::new(v1beta1::EncryptResponse { cipher }))
    }
}

/// The v2 service.
#[derive(Debug, Clone)]
pub struct V2Service(pub Arc<PluginState>);

#[tonic::async_trait]
impl v2::key_management_service_server::KeyManagementService for V2Service {
    async fn status(
        &self,
        _req: Request<v2::StatusRequest>,
    ) -> Result<Response<v2::StatusResponse>, Status> {
        let healthz = match self.0.health() {
            Ok(()) => "ok".to_string(),
            Err(reason) => reason,
        };
        let key_id = self.0.ring().current().id().to_string();
        Ok(Response::new(v2::StatusResponse {
            version: "v2".into(),
            healthz,
            key_id,
        }))
    }

    async fn decrypt(
        &self,
        req: Request<v2::DecryptRequest>,
    ) -> Result<Response<v2::DecryptResponse>, Status> {
        let r = req.get_ref();
        let key_id = (!r.key_id.is_empty()).then_some(r.key_id.as_str());
        let plaintext = self.0.unwrap(&r.ciphertext, key_id)?;
        Ok(Response::new(v2::DecryptResponse { plaintext }))
    }

    async fn encrypt(
        &self,
        req: Request<v2::EncryptRequest>,
    ) -> Result<Response<v2::EncryptResponse>, Status> {
        let (ciphertext, key_id) = self.0.wrap(&req.get_ref().plaintext)?;
        Ok(Response::new(v2::EncryptResponse {
            ciphertext,
            key_id,
            annotations: Default::default(),
        }))
    }
}

/// Binds the socket: removes a stale one, refuses a live one, sets mode 0600.
pub async fn bind_socket(path: &Path) -> anyhow::Result<UnixListener> {
    if let Ok(meta) = fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            );
        }
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            bail!("{} is in use by a running process", path.display());
        }
        fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 600 {}", path.display()))?;
    Ok(listener)
}

/// Runs the plugin until SIGTERM/SIGINT. Reloads keys on SIGHUP.
pub async fn run(config: PluginConfig) -> anyhow::Result<()> {
    let state = Arc::new(
        PluginState::open(&config.key_file, &config.unhealthy_file)
            .context("loading the key encryption keys")?,
    );
    let listener = bind_socket(&config.socket).await?;
    fs::write(&config.pid_file, format!("{}\n", std::process::id()))
        .with_context(|| format!("writing pid file {}", config.pid_file.display()))?;

    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;

    let reload_state = state.clone();
    let reloader = tokio::spawn(async move {
        while hup.recv().await.is_some() {
            reload_state.reload();
        }
    });

    let v1 = matches!(config.api, ApiSelection::V1 | ApiSelection::Both).then(|| {
        v1beta1::key_management_service_server::KeyManagementServiceServer::new(V1Service(
            state.clone(),
        ))
    });
    let v2 = matches!(config.api, ApiSelection::V2 | ApiSelection::Both).then(|| {
        v2::key_management_service_server::KeyManagementServiceServer::new(V2Service(state.clone()))
    });
    let router = tonic::transport::Server::builder()
        .add_optional_service(v1)
        .add_optional_service(v2);
    tracing::info!(socket = %config.socket.display(), api = ?config.api, key_id = state.ring().current().id(), "kms plugin serving");
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::info!("shutting down");
    };
    let served = router
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    reloader.abort();
    let _ = fs::remove_file(&config.socket);
    // Only remove the pid file if it is still ours (another plugin may have taken over the key file).
    if fs::read_to_string(&config.pid_file)
        .is_ok_and(|s| s.trim() == std::process::id().to_string())
    {
        let _ = fs::remove_file(&config.pid_file);
    }
    served.context("serving gRPC")?;
    Ok(())
}

/// Sends SIGHUP to the plugin recorded in `pid_file` (used after `rotate`). Returns the pid, or `None` when no
/// pid file exists (the plugin then picks the change up on its next call).
pub fn signal_reload(pid_file: &Path) -> anyhow::Result<Option<i32>> {
    let text = match fs::read_to_string(pid_file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(e).with_context(|| format!("reading pid file {}", pid_file.display()));
        }
    };
    let pid: i32 = text
        .trim()
        .parse()
        .with_context(|| format!("pid file {} does not hold a pid", pid_file.display()))?;
    match nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    ) {
        Ok(()) => Ok(Some(pid)),
        // A stale pid file: nothing to signal.
        Err(nix::errno::Errno::ESRCH) => Ok(None),
        Err(e) => Err(e)
            .with_context(|| format!("sending SIGHUP to pid {pid} from {}", pid_file.display())),
    }
}
