//! Ctrl-C during a run. The first one asks the run to stop at the next safe point: writes in flight
//! finish, a rolling restart finishes the node it is on, and the progress so far is saved. The second one
//! exits at once, which is as safe as a crash (every step is resumable from the state file). Either way,
//! running the same command again resumes.
//!
//! The handler is installed for the whole run, not only around the rewrite: once tokio has taken SIGINT, the
//! default action (terminate) no longer happens, so a handler that went away would leave Ctrl-C ignored.

use std::fmt;
use std::sync::OnceLock;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Exit status of a run stopped by Ctrl-C (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: u8 = 130;

static REQUESTED: OnceLock<CancellationToken> = OnceLock::new();

/// The process-wide token that the first Ctrl-C cancels.
pub fn token() -> CancellationToken {
    REQUESTED.get_or_init(CancellationToken::new).clone()
}

/// Whether Ctrl-C has been pressed.
pub fn requested() -> bool {
    REQUESTED.get().is_some_and(CancellationToken::is_cancelled)
}

/// Starts listening for Ctrl-C on the current tokio runtime. Idempotent.
pub fn install() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    if INSTALLED.set(()).is_err() {
        return;
    }
    // Registered here, synchronously, so a Ctrl-C right after this call is already ours.
    let Ok(mut sigint) = signal(SignalKind::interrupt()) else {
        return; // no signal handling: Ctrl-C keeps its default action (stop at once, also resumable)
    };
    let token = token();
    tokio::spawn(async move {
        if sigint.recv().await.is_none() {
            return;
        }
        eprintln!(
            "interrupted: finishing the step in progress and saving where the run got to \
             (press Ctrl-C again to stop at once; it is safe, and rerunning resumes)"
        );
        token.cancel();
        if sigint.recv().await.is_some() {
            eprintln!(
                "stopped at once; rerun the same command to resume (`atrest encrypt status` shows where)"
            );
            std::process::exit(i32::from(EXIT_INTERRUPTED));
        }
    });
}

/// The error a run returns when it stopped for Ctrl-C at a safe point; the CLI exits with
/// [`EXIT_INTERRUPTED`] for it.
#[derive(Debug)]
pub struct Interrupted {
    /// Where the run stopped, for the message.
    pub at: String,
}

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "interrupted by Ctrl-C {}; nothing was lost and the progress is saved",
            self.at
        )
    }
}

impl std::error::Error for Interrupted {}

/// Whether `err` (or anything in its chain) is an [`Interrupted`].
pub fn is_interrupted(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<Interrupted>())
}
