//! Kill points: named places in a run where a test build can make atrest SIGKILL itself.
//!
//! A crash test that kills atrest from outside hits a moment by luck: steps recorded for a few milliseconds (the
//! stage `rotate`, the finish deploy that removes the old key) are rarely hit, and the test cannot say where the
//! kill landed. A kill point is exact: the test names the point (and which hit of it) in `FAILPOINTS`, and the run
//! dies there as it would under `kill -9` — no destructor, no flush, no saved progress beyond what was already on
//! disk. The points sit at every step boundary of a plan, after every node of a rolling deploy, in the middle of a
//! container recreate and in the middle of a rewrite.
//!
//! The mechanism is the `fail` crate's failpoints, configured from `FAILPOINTS` (`name=return`, or
//! `name=2*off->return` for the third hit; `name=return(10)` stalls there for 10 s instead of dying). It is
//! compiled in only with the `kill-points` feature, which the test builds turn on (`scripts/test`,
//! `scripts/chaos`); in any other build [`here`] is an empty inline function and `FAILPOINTS` means nothing.

/// Keeps the kill points `FAILPOINTS` configured for as long as it lives (holds nothing without the feature).
pub struct Guard {
    #[cfg(feature = "kill-points")]
    _scenario: fail::FailScenario<'static>,
}

/// Reads `FAILPOINTS` (test builds only); keep the guard for the life of the process.
pub fn setup() -> Guard {
    Guard {
        #[cfg(feature = "kill-points")]
        _scenario: fail::FailScenario::setup(),
    }
}

/// A kill point named `name`: when `FAILPOINTS` says `name=return` (for this hit), atrest SIGKILLs itself here;
/// `name=return(<seconds>)` stalls the run there instead, so that a test can break something (a node's SSH
/// connections, a server) at an exact moment and watch how the run meets it.
#[inline]
pub fn here(name: &str) {
    #[cfg(feature = "kill-points")]
    fail::eval(name, |stall| match stall.and_then(|s| s.parse().ok()) {
        Some(seconds) => stall_for(name, seconds),
        None => kill_self(name),
    });
    #[cfg(not(feature = "kill-points"))]
    let _ = name;
}

/// [`here`] with a name built only in builds that have kill points (for a point passed once per object).
#[inline]
pub fn here_lazy(name: impl FnOnce() -> String) {
    #[cfg(feature = "kill-points")]
    here(&name());
    #[cfg(not(feature = "kill-points"))]
    let _ = name;
}

/// Blocks the calling thread (with it the run's step in progress) for `seconds`, saying so first.
#[cfg(feature = "kill-points")]
fn stall_for(name: &str, seconds: u64) {
    eprintln!("kill point {name}: stalled for {seconds} s");
    std::thread::sleep(std::time::Duration::from_secs(seconds));
    eprintln!("kill point {name}: going on");
}

#[cfg(feature = "kill-points")]
fn kill_self(name: &str) {
    // stderr is unbuffered: the test sees where the run died.
    eprintln!("kill point {name}: SIGKILL");
    // SAFETY: kill(2) on our own pid has no memory-safety precondition.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    // SIGKILL cannot be caught; this is never reached.
    std::process::abort();
}
