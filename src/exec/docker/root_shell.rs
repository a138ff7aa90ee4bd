//! A root shell on a node through its Docker engine, for an SSH user without passwordless sudo.
//!
//! RKE never uses sudo: its user is in group `docker`, and every file RKE puts on a node is written by a
//! short-lived container. Such a user can do no more over plain SSH than read what is world-readable, so atrest
//! does the same: it runs the very script the sudo route would run, in a container that sees the host's root at
//! `/host` and `chroot`s into it. The host's own `sh`, `mktemp`, `sha256sum` and `sync` run it, so the atomic
//! write, its checksum and its fsyncs are those of the sudo route, byte for byte.
//!
//! The container is created from an image already on the node (RKE's `service-sidekick` image, rke-tools, else
//! kube-apiserver's), with no network, no environment and log driver `none`: secret bytes reach it only on the
//! attached stdin and leave only on the attached stdout, never in `docker inspect` or a log file. It is removed
//! whatever happens, and carries atrest's label so that a leftover one is recognisable.

use super::{CREATED_BY_LABEL, DockerError, NodeDocker};
use crate::exec::ssh::{Output, STDERR_CAP, STDOUT_CAP, push_capped};
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, StartContainerOptions, WaitContainerOptions,
};
use futures::StreamExt;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// How long output may still arrive after the shell exited (frames already on their way).
const OUTPUT_GRACE: Duration = Duration::from_secs(2);
/// RKE's sidecar, created from the rke-tools image on every node and never started.
pub const SIDEKICK: &str = "service-sidekick";
/// Where the container sees the host's root.
const HOST_ROOT: &str = "/host";

/// The create request for a root shell running `script` on the host from `image`. `with_stdin`: keep stdin open
/// for the caller's bytes (closed after them).
pub fn root_shell_body(image: &str, script: &str, with_stdin: bool) -> ContainerCreateBody {
    ContainerCreateBody {
        image: Some(image.to_string()),
        user: Some("0:0".into()),
        entrypoint: Some(vec![
            "chroot".into(),
            HOST_ROOT.into(),
            "/bin/sh".into(),
            "-c".into(),
            script.to_string(),
        ]),
        cmd: Some(Vec::new()),
        env: Some(Vec::new()),
        labels: Some(
            [(
                CREATED_BY_LABEL.to_string(),
                format!("atrest {}", env!("CARGO_PKG_VERSION")),
            )]
            .into(),
        ),
        tty: Some(false),
        attach_stdin: Some(with_stdin),
        open_stdin: Some(with_stdin),
        stdin_once: Some(with_stdin),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        network_disabled: Some(true),
        host_config: Some(HostConfig {
            // Docker binds recursively: the host's other mounts (its /etc/kubernetes, a KMS socket dir) are there.
            binds: Some(vec![format!("/:{HOST_ROOT}")]),
            network_mode: Some("none".into()),
            log_config: Some(HostConfigLogConfig {
                typ: Some("none".into()),
                config: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl NodeDocker {
    /// Run `script` as root on the host through a container, feeding `stdin`; what the SSH route returns.
    pub(super) async fn run_as_root(
        &self,
        script: &str,
        stdin: &[u8],
    ) -> Result<Output, DockerError> {
        let image = self.root_shell_image().await?;
        let name = format!(
            "atrest-root-shell-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        );
        let body = root_shell_body(&image, script, !stdin.is_empty());
        let opts = CreateContainerOptions {
            name: Some(name.clone()),
            platform: String::new(),
        };
        self.client()
            .create_container(Some(opts), body)
            .await
            .map_err(|e| self.api("creating a root shell container", e))?;
        let timeout = self.host().command_timeout();
        let ran = tokio::time::timeout(timeout, self.attach_start_wait(&name, stdin)).await;
        let removed = self.remove(&name).await;
        let out = ran.map_err(|_| {
            self.api(
                "running a root shell container",
                format!("no exit within {} s", timeout.as_secs()),
            )
        })??;
        removed?;
        Ok(out)
    }

    /// The image to run the shell from: the sidekick's, else kube-apiserver's (both by ID, both on the node).
    async fn root_shell_image(&self) -> Result<String, DockerError> {
        for name in [SIDEKICK, super::APISERVER, super::OLD_APISERVER] {
            if let Some(image) = self.inspect_raw(name).await?.and_then(|c| c.image) {
                return Ok(image);
            }
        }
        Err(self.api(
            "running a root shell",
            format!(
                "the SSH user has no passwordless sudo, and there is neither a {SIDEKICK} nor a {} container \
                 whose image could run one",
                super::APISERVER
            ),
        ))
    }

    async fn attach_start_wait(&self, name: &str, stdin: &[u8]) -> Result<Output, DockerError> {
        let attach = AttachContainerOptions {
            stdin: !stdin.is_empty(),
            stdout: true,
            stderr: true,
            stream: true,
            ..Default::default()
        };
        let attached = self
            .client()
            .attach_container(name, Some(attach))
            .await
            .map_err(|e| self.api("attaching to the root shell", e))?;
        self.client()
            .start_container(name, None::<StartContainerOptions>)
            .await
            .map_err(|e| self.api("starting the root shell", e))?;
        let bollard::container::AttachContainerResults {
            mut output,
            mut input,
        } = attached;
        // Input, output and the exit at once: a script that stops reading early (a write whose `mkdir` fails)
        // must still be heard, and Docker keeps the attached output open while input is pending, so the exit
        // (plus a short grace for the last frames) ends the run, not the end of the output.
        let send = async {
            if !stdin.is_empty() {
                input.write_all(stdin).await?;
            }
            // Closing our side closes the container's stdin (StdinOnce): the script's `cat` ends.
            input.shutdown().await
        };
        let mut send = std::pin::pin!(send);
        let mut exit = std::pin::pin!(self.exit_code(name));
        let mut out = Output::default();
        let (mut sending, mut reading) = (!stdin.is_empty(), true);
        let mut status = None;
        let grace = tokio::time::sleep(Duration::from_secs(3600));
        let mut grace = std::pin::pin!(grace);
        while reading || status.is_none() {
            tokio::select! {
                frame = output.next(), if reading => match frame {
                    Some(frame) => self.take_frame(&mut out, frame)?,
                    None => reading = false,
                },
                sent = &mut send, if sending => {
                    sending = false;
                    if let Err(e) = sent {
                        // The exit code and stderr say why; a write script also checks what arrived.
                        tracing::debug!("{}: the root shell took not all of its input: {e}", self.host().label());
                    }
                }
                code = &mut exit, if status.is_none() => {
                    status = Some(code?);
                    grace.as_mut().reset(tokio::time::Instant::now() + OUTPUT_GRACE);
                }
                () = &mut grace, if status.is_some() => reading = false,
            }
        }
        out.status = status.unwrap_or(255);
        Ok(out)
    }

    /// One frame of the shell's output into `out`, capped as on the SSH route.
    fn take_frame(
        &self,
        out: &mut Output,
        frame: Result<bollard::container::LogOutput, bollard::errors::Error>,
    ) -> Result<(), DockerError> {
        match frame.map_err(|e| self.api("reading the root shell's output", e))? {
            bollard::container::LogOutput::StdErr { message } => {
                push_capped(&mut out.stderr, &message, STDERR_CAP);
            }
            bollard::container::LogOutput::StdOut { message }
            | bollard::container::LogOutput::Console { message } => {
                if !push_capped(&mut out.stdout, &message, STDOUT_CAP) {
                    return Err(self.api(
                        "reading the root shell's output",
                        format!("it exceeds {} MiB", STDOUT_CAP >> 20),
                    ));
                }
            }
            bollard::container::LogOutput::StdIn { .. } => {}
        }
        Ok(())
    }

    /// The container's exit code (a non-zero exit is an answer here, not an error).
    async fn exit_code(&self, name: &str) -> Result<u32, DockerError> {
        let mut waits = self
            .client()
            .wait_container(name, None::<WaitContainerOptions>);
        match waits.next().await {
            Some(Ok(answer)) => Ok(u32::try_from(answer.status_code).unwrap_or(255)),
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => {
                Ok(u32::try_from(code).unwrap_or(255))
            }
            Some(Err(e)) => Err(self.api("waiting for the root shell", e)),
            None => Err(self.api("waiting for the root shell", "no answer")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shell_sees_the_host_root_and_keeps_secrets_out_of_logs_and_env() {
        let body = root_shell_body("sha256:abc", "cat > /etc/kubernetes/x", true);
        assert_eq!(
            body.entrypoint.as_deref(),
            Some(
                &[
                    "chroot".to_string(),
                    "/host".into(),
                    "/bin/sh".into(),
                    "-c".into(),
                    "cat > /etc/kubernetes/x".into()
                ][..]
            )
        );
        let host = body.host_config.as_ref().expect("host config");
        assert_eq!(host.binds.as_deref(), Some(&["/:/host".to_string()][..]));
        assert_eq!(
            host.log_config.as_ref().and_then(|l| l.typ.as_deref()),
            Some("none")
        );
        assert_eq!(host.network_mode.as_deref(), Some("none"));
        assert_eq!(body.env.as_deref(), Some(&[][..]));
        assert_eq!(body.user.as_deref(), Some("0:0"));
        assert!(
            body.labels
                .as_ref()
                .is_some_and(|l| l.contains_key(CREATED_BY_LABEL))
        );
        assert_eq!(
            (body.open_stdin, body.stdin_once, body.attach_stdin),
            (Some(true), Some(true), Some(true))
        );
        assert_eq!(body.tty, Some(false));
    }

    #[test]
    fn no_stdin_is_kept_open_when_there_is_none_to_send() {
        let body = root_shell_body("img", "true", false);
        assert_eq!(
            (body.open_stdin, body.stdin_once, body.attach_stdin),
            (Some(false), Some(false), Some(false))
        );
    }
}
