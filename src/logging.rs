//! Log output on stderr, and the rule that keeps secrets out of it at every verbosity.
//!
//! atrest's own events never carry key material or Secret data. Some libraries it uses do, at levels a user
//! can turn on with `-vv` or `RUST_LOG=trace`: kube-client logs whole response bodies (a Secret's data) at WARN
//! when they do not decode and at DEBUG/TRACE otherwise; bollard logs request bodies (a container's env) at
//! DEBUG and TRACE. So every filter (the `-v` levels and any `RUST_LOG`) is combined with a ceiling per library
//! that `RUST_LOG` cannot lift ([`ceiling`]). The rule: a library that sees Secret data, key material or KMS
//! plaintext gets a ceiling below the first level at which it prints payloads; one without such a level
//! stays at DEBUG at most, unless checked.

use tracing::Level;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The most each library may log, whatever the filter asks for (see the module docs).
pub const CEILINGS: &[(&str, LevelFilter)] = &[
    // Response bodies at WARN (decode errors), DEBUG and TRACE.
    ("kube_client", LevelFilter::ERROR),
    ("kube_core", LevelFilter::ERROR),
    ("kube", LevelFilter::ERROR),
    // Request bodies (container create: env, cmd) at DEBUG and TRACE.
    ("bollard", LevelFilter::WARN),
    // Transports of Secret data, keys (SSH stdin) and KMS plaintext: frame/buffer details at TRACE.
    ("hyper", LevelFilter::DEBUG),
    ("hyper_util", LevelFilter::DEBUG),
    ("h2", LevelFilter::DEBUG),
    ("tonic", LevelFilter::DEBUG),
    ("tower", LevelFilter::DEBUG),
    ("etcd_client", LevelFilter::DEBUG),
    ("rustls", LevelFilter::DEBUG),
    ("russh", LevelFilter::DEBUG),
];

/// [`CEILINGS`] as a filter: everything else passes (the user's filter decides).
pub fn ceiling() -> Targets {
    Targets::new()
        .with_default(Level::TRACE)
        .with_targets(CEILINGS.iter().copied())
}

/// Installs the stderr logger: `filter` (from `-v`/`--quiet` or `RUST_LOG`) under the [`ceiling`].
pub fn init(filter: EnvFilter, verbose: bool) {
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(verbose);
    let registry = tracing_subscriber::registry().with(filter).with(ceiling());
    // Timestamps only help when debugging; a normal run reads better without them.
    let _ = if verbose {
        registry.with(fmt).try_init()
    } else {
        registry.with(fmt.without_time()).try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("buffer").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What a `RUST_LOG=<directives>` run prints for a few library events.
    fn printed(directives: &str) -> String {
        let buf = Buffer::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::registry()
            .with(EnvFilter::new(directives))
            .with(ceiling())
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(move || out.clone())
                    .with_ansi(false),
            );
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(target: "kube_client::client", "BODY-kube-warn");
            tracing::trace!(target: "kube_client::client", "BODY-kube-trace");
            tracing::debug!(target: "bollard::docker", "BODY-bollard-debug");
            tracing::trace!(target: "hyper::proto::h1::io", "BODY-hyper-trace");
            tracing::error!(target: "kube_client::client", "kube-error-passes");
            tracing::warn!(target: "bollard::docker", "bollard-warn-passes");
            tracing::trace!(target: "atrest::exec", "atrest-trace-passes");
        });
        String::from_utf8(buf.0.lock().expect("buffer").clone()).expect("utf-8")
    }

    #[test]
    fn no_filter_lifts_the_ceiling_of_libraries_that_print_payloads() {
        for directives in [
            "trace",
            "kube_client=trace,bollard=trace,hyper=trace,atrest=trace",
            "kube_client::client=trace,bollard::docker=trace,atrest=trace",
        ] {
            let text = printed(directives);
            assert!(!text.contains("BODY"), "{directives}: {text}");
            for passes in [
                "kube-error-passes",
                "bollard-warn-passes",
                "atrest-trace-passes",
            ] {
                assert!(text.contains(passes), "{directives}: {text}");
            }
        }
    }
}
