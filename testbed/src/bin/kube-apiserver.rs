//! `kube-apiserver` stand-in binary (testbed only). Same flags as upstream; see docs/standin.md.

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Error: starting the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(testbed::standin::server::main(
        std::env::args().skip(1).collect(),
    ));
    std::process::exit(code);
}
