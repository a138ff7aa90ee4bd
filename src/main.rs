use atrest::cli::{Cli, init_logging, run};
use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // Usage errors exit 2 from here (clap); everything else is exit 1 below.
    let cli = Cli::parse();
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
