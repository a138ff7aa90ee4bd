//! Root rights on a node, whichever way its SSH user has them ([`RootRoute`]): directly as root, through
//! `sudo -n`, or — for RKE's usual user, in group `docker` without sudo — through a short-lived container on the
//! node's Docker engine ([`crate::exec::docker::root_shell_body`]). Everything that writes or reads a node's
//! protected files goes through here, so the same script runs the same way on every route.

use crate::exec::docker::{DockerError, NodeDocker};
use crate::exec::ssh::{Host, Output};
use std::sync::Arc;

pub use crate::exec::ssh::RootRoute;

/// Run `script` as root on `host`.
pub async fn exec(host: &Arc<Host>, script: &str) -> Result<Output, DockerError> {
    exec_with_stdin(host, script, &[]).await
}

/// Run `script` as root on `host`, feeding `stdin` (the only way secret bytes reach a node).
pub async fn exec_with_stdin(
    host: &Arc<Host>,
    script: &str,
    stdin: &[u8],
) -> Result<Output, DockerError> {
    NodeDocker::new(host.clone())?
        .exec_as_root(script, stdin)
        .await
}
