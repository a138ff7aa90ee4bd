//! The API servers a rewrite writes through.
//!
//! Every controlplane runs its own kube-apiserver, and on a real cluster each has its own CPUs. A rewrite's
//! cost is the servers' and etcd's work per object (decode, admission, transformer, encode), so sending every
//! write to the kubeconfig's server leaves the others idle. The writers take a server per request, round robin
//! over the healthy ones. It does not matter which server writes an object: a rewrite runs only once every
//! controlplane has the deploy's config, and a write's precondition is the object's `resourceVersion` (an etcd
//! revision), which every server checks against etcd the same way. Lists stay on one server (the first healthy
//! one), so that a page's continue token goes back to the server that issued it.
//!
//! [`Servers::watch`] probes each server's `/readyz`; one that fails [`WATCH_FAILURES`] probes in a row is
//! dropped from the rotation, and the writes it failed are retried on the others within their retry budget.
//! The last server is never dropped: when it stops answering too, `watch` returns and the caller stops the
//! rewrite and finds a server again.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// One API server: a name for messages (a node, or the kubeconfig's server) and a client for it.
#[derive(Clone)]
pub struct ApiServer {
    pub name: String,
    pub client: kube::Client,
}

/// How often [`Servers::watch`] probes, and how many failed probes in a row drop a server.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);
pub const WATCH_FAILURES: u32 = 2;

/// The servers of one rewrite, with which of them are still in the rotation.
pub struct Servers {
    members: Vec<Member>,
    next: AtomicUsize,
}

struct Member {
    server: ApiServer,
    healthy: AtomicBool,
    answered: AtomicU64,
}

impl Servers {
    /// The first server is the one lists go to while it is healthy.
    pub fn new(first: ApiServer, others: Vec<ApiServer>) -> Self {
        let members = std::iter::once(first)
            .chain(others)
            .map(|server| Member {
                server,
                healthy: AtomicBool::new(true),
                answered: AtomicU64::new(0),
            })
            .collect();
        Self {
            members,
            next: AtomicUsize::new(0),
        }
    }

    /// Only this client (tests, benchmarks, a single API server).
    pub fn one(client: &kube::Client) -> Self {
        Self::new(
            ApiServer {
                name: "the API server".into(),
                client: client.clone(),
            },
            Vec::new(),
        )
    }

    /// The next healthy server for a write (round robin). With none healthy, the first (requests then fail
    /// and are retried until the caller stops the rewrite).
    pub(super) fn pick(&self) -> Pick<'_> {
        let healthy: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.members[i].healthy.load(Ordering::Relaxed))
            .collect();
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let index = match healthy.len() {
            0 => 0,
            count => healthy[turn % count],
        };
        Pick {
            member: &self.members[index],
        }
    }

    /// The first healthy server: where lists go.
    pub(super) fn lister(&self) -> &kube::Client {
        &self
            .members
            .iter()
            .find(|m| m.healthy.load(Ordering::Relaxed))
            .unwrap_or(&self.members[0])
            .server
            .client
    }

    /// Successful requests per server, in the order given.
    pub fn answered(&self) -> Vec<(String, u64)> {
        self.members
            .iter()
            .map(|m| (m.server.name.clone(), m.answered.load(Ordering::Relaxed)))
            .collect()
    }

    fn healthy_count(&self) -> usize {
        self.members
            .iter()
            .filter(|m| m.healthy.load(Ordering::Relaxed))
            .count()
    }

    /// Takes a server out of the rotation unless it is the last one in it; whether it was taken out.
    fn drop_member(&self, index: usize, why: &str) -> bool {
        if self.healthy_count() <= 1 {
            return false;
        }
        let member = &self.members[index];
        if member.healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                "{} stopped answering during the rewrite ({why}); its writes go to the other API servers",
                member.server.name
            );
        }
        true
    }

    /// Probes every server in the rotation each [`WATCH_INTERVAL`] and drops one that fails [`WATCH_FAILURES`]
    /// probes in a row. Returns (with the last probe's error) only when the last server in the rotation fails
    /// too; never returns while one answers.
    pub async fn watch(&self) -> String {
        self.watch_every(WATCH_INTERVAL).await
    }

    async fn watch_every(&self, interval: Duration) -> String {
        let mut failures = vec![0u32; self.members.len()];
        loop {
            tokio::time::sleep(interval).await;
            for (index, member) in self.members.iter().enumerate() {
                if !member.healthy.load(Ordering::Relaxed) {
                    continue;
                }
                match crate::exec::kube::probe(&member.server.client).await {
                    Ok(()) => failures[index] = 0,
                    Err(e) => {
                        failures[index] += 1;
                        if failures[index] >= WATCH_FAILURES && !self.drop_member(index, &e.reason)
                        {
                            return format!("{}: {e}", member.server.name);
                        }
                    }
                }
            }
        }
    }
}

/// The server chosen for one request; [`Pick::served`] counts an answer from it.
pub(super) struct Pick<'a> {
    member: &'a Member,
}

impl Pick<'_> {
    pub(super) fn client(&self) -> &kube::Client {
        &self.member.server.client
    }

    pub(super) fn served(&self) {
        self.member.answered.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client for `url` (nothing needs to listen there unless it is probed).
    fn client(url: &str) -> kube::Client {
        let config = kube::Config::new(url.parse().expect("url"));
        kube::Client::try_from(config).expect("client")
    }

    fn server(name: &str, url: &str) -> ApiServer {
        ApiServer {
            name: name.into(),
            client: client(url),
        }
    }

    /// A port that answers every request with 200 (a ready server), for as long as the test runs.
    async fn ready_server() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buffer = [0u8; 4096];
                    while let Ok(n) = stream.read(&mut buffer).await {
                        if n == 0 {
                            break;
                        }
                        let answer = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(answer.as_bytes()).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        format!("http://{address}")
    }

    /// A port nothing listens on (bound, then closed).
    fn dead_url() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        drop(listener);
        format!("http://{address}")
    }

    #[tokio::test]
    async fn writes_go_round_robin_over_the_servers_in_the_rotation() {
        let servers = Servers::new(
            server("a", "http://127.0.0.1:1"),
            vec![
                server("b", "http://127.0.0.1:2"),
                server("c", "http://127.0.0.1:3"),
            ],
        );
        for _ in 0..30 {
            servers.pick().served();
        }
        let counts: Vec<u64> = servers.answered().into_iter().map(|(_, n)| n).collect();
        assert_eq!(counts, [10, 10, 10]);
        assert!(servers.drop_member(1, "test"));
        for _ in 0..30 {
            servers.pick().served();
        }
        let counts: Vec<u64> = servers.answered().into_iter().map(|(_, n)| n).collect();
        assert_eq!(counts, [25, 10, 25], "b is out of the rotation");
        assert!(servers.drop_member(0, "test"));
        assert!(!servers.drop_member(2, "test"), "the last one stays");
        assert_eq!(servers.healthy_count(), 1);
    }

    #[tokio::test]
    async fn a_server_that_stops_answering_is_dropped_and_the_last_one_ends_the_watch() {
        let ready = ready_server().await;
        let servers = Servers::new(server("dead", &dead_url()), vec![server("ready", &ready)]);
        let watched = tokio::time::timeout(
            Duration::from_secs(3),
            servers.watch_every(Duration::from_millis(50)),
        )
        .await;
        assert!(watched.is_err(), "the watch ended while a server answers");
        assert_eq!(servers.healthy_count(), 1, "the dead server is out");
        for _ in 0..4 {
            assert_eq!(servers.pick().client().default_namespace(), "default");
            servers.pick().served();
        }
        assert_eq!(servers.answered()[0].1, 0, "nothing goes to the dead one");

        let alone = Servers::new(server("dead", &dead_url()), Vec::new());
        let why = tokio::time::timeout(
            Duration::from_secs(10),
            alone.watch_every(Duration::from_millis(50)),
        )
        .await
        .expect("the watch returns when the last server stops answering");
        assert!(why.starts_with("dead: "), "{why}");
    }
}
