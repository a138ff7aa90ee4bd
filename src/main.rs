use atrest::cli::{init_logging, parse, run};
use std::process::ExitCode;

fn main() -> ExitCode {
    atrest::memory::return_large_blocks();
    // Usage errors exit 2 from here (clap; 1 with --detailed-exitcode); everything else is exit 1 below.
    let cli = parse();
    // Test builds only: the kill points FAILPOINTS names (a no-op otherwise).
    let _kill_points = atrest::kill_points::setup();
    init_logging(&cli.global);
    match run(&cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            if atrest::flows::interrupt::is_interrupted(&err) {
                return ExitCode::from(atrest::flows::interrupt::EXIT_INTERRUPTED);
            }
            ExitCode::FAILURE
        }
    }
}
