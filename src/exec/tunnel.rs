//! Port forwarding through a node: direct-tcpip channels, either as a stream or behind a local listener.

use crate::exec::ssh::{Host, SshError};
use std::net::SocketAddr;
use std::sync::Arc;

/// One TCP connection from the node to `target_host:port`, as an in-process stream.
pub async fn open_stream(
    host: &Host,
    target_host: &str,
    port: u16,
) -> Result<russh::ChannelStream<russh::client::Msg>, SshError> {
    let channel = host
        .handle()
        .channel_open_direct_tcpip(target_host.to_string(), port as u32, "127.0.0.1", 0)
        .await
        .map_err(|e| host.channel_error(&format!("opening a tunnel to {target_host}:{port}"), e))?;
    Ok(channel.into_stream())
}

/// A local listener on 127.0.0.1 whose every connection is forwarded through the node to `target_host:port`.
/// Dropping it stops accepting; connections already open finish on their own.
pub struct Tunnel {
    local: SocketAddr,
    accept_task: tokio::task::JoinHandle<()>,
}

impl Tunnel {
    pub async fn open(host: Arc<Host>, target_host: &str, port: u16) -> Result<Tunnel, SshError> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| host.channel_error("binding a local tunnel port", e))?;
        let local = listener
            .local_addr()
            .map_err(|e| host.channel_error("binding a local tunnel port", e))?;
        let target_host = target_host.to_string();
        let accept_task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    break;
                };
                let host = host.clone();
                let target_host = target_host.clone();
                tokio::spawn(async move {
                    match open_stream(&host, &target_host, port).await {
                        Ok(mut remote) => {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut remote).await;
                        }
                        Err(e) => tracing::warn!("{e}"),
                    }
                });
            }
        });
        Ok(Tunnel { local, accept_task })
    }

    /// Where to connect locally.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}
