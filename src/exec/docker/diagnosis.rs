//! Why a node's kube-apiserver does not serve, in words an operator can act on. The health probe only sees
//! "connection refused" or "HTTP 500"; the reason is in Docker's view of the container (exited or restarting, its
//! exit code, the runtime's own error such as an executable that cannot run) and in the server's last log lines
//! (a flag it rejects, a file it cannot load). A rollout that gives up on a node quotes both, so the error names
//! the server's reason instead of only the symptom.
//!
//! The log lines are the server's own, which never print key material; still, any long base64 run in them is
//! redacted and the quote is capped, because an error may end up in a CI log.

use super::{APISERVER, NodeDocker};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Log lines quoted, at most.
const LOG_LINES: usize = 3;
/// Bytes of log quoted, at most.
const LOG_BYTES: usize = 600;
/// A run of base64 characters this long is taken for key material and redacted.
const SECRET_RUN: usize = 40;

/// The container's state as Docker reports it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ContainerState {
    pub status: String,
    pub exit_code: i64,
    pub error: String,
    pub restarts: i64,
}

impl NodeDocker {
    /// The state of kube-apiserver's container and the last lines its current process logged (since its last
    /// start, and not before `since`, Unix seconds), as one line; `None` when Docker cannot be asked (the error
    /// the caller already has then says more).
    pub async fn why_not_serving(&self, since: i64) -> Option<String> {
        let container = self.inspect_raw(APISERVER).await.ok()??;
        let raw = container.state.unwrap_or_default();
        let state = ContainerState {
            status: raw.status.map(|s| s.to_string()).unwrap_or_default(),
            exit_code: raw.exit_code.unwrap_or(0),
            error: raw.error.unwrap_or_default(),
            restarts: container.restart_count.unwrap_or(0),
        };
        let changed =
            OffsetDateTime::from_unix_timestamp(since).unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let started = raw
            .started_at
            .and_then(|t| OffsetDateTime::parse(&t, &Rfc3339).ok())
            .unwrap_or(changed);
        let cutoff = changed.max(started);
        let log = self
            .timestamped_logs_since(APISERVER, cutoff.unix_timestamp() - 1, 50)
            .await
            .unwrap_or_default();
        Some(describe(&state, &lines_since(&log, cutoff)))
    }
}

/// The lines of a timestamped Docker log (`<RFC 3339 time> <line>`) written at or after `cutoff`, without their
/// timestamps. The previous process's last lines (its shutdown) share the second of the restart, so a cutoff
/// in whole seconds would quote them as the new process's reason.
fn lines_since(log: &str, cutoff: OffsetDateTime) -> String {
    log.lines()
        .filter_map(|line| {
            let (stamp, rest) = line.split_once(' ').unwrap_or((line, ""));
            let at = OffsetDateTime::parse(stamp, &Rfc3339).ok()?;
            (at >= cutoff).then_some(rest)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `container exited (exit code 126), Docker restarted it 3 times; its last log: …`.
pub fn describe(state: &ContainerState, log: &str) -> String {
    let mut text = format!("container {}", state.status);
    if state.status != "running" || state.exit_code != 0 {
        text.push_str(&format!(" (last exit code {})", state.exit_code));
    }
    if state.restarts > 0 {
        text.push_str(&format!(", Docker restarted it {} time(s)", state.restarts));
    }
    if !state.error.is_empty() {
        text.push_str(&format!("; Docker: {}", quote(&state.error)));
    }
    let log = quote(log);
    if log.is_empty() {
        text.push_str("; it logged nothing since its last start");
    } else {
        text.push_str(&format!("; its last log lines since its last start: {log}"));
    }
    text
}

/// The last [`LOG_LINES`] non-empty lines of `log`, joined with " | ", long base64 runs redacted, capped at
/// [`LOG_BYTES`] (keeping the end: the last line is the likeliest reason).
fn quote(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let joined = lines[lines.len().saturating_sub(LOG_LINES)..].join(" | ");
    let redacted = redact_base64_runs(&joined);
    if redacted.len() <= LOG_BYTES {
        return redacted;
    }
    let mut start = redacted.len() - LOG_BYTES;
    while !redacted.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &redacted[start..])
}

/// Replaces every run of at least [`SECRET_RUN`] base64 characters with `<redacted>`.
fn redact_base64_runs(text: &str) -> String {
    let is_b64 = |c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=');
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= SECRET_RUN {
            out.push_str("<redacted>");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if is_b64(c) {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(status: &str, exit_code: i64, restarts: i64, error: &str) -> ContainerState {
        ContainerState {
            status: status.into(),
            exit_code,
            error: error.into(),
            restarts,
        }
    }

    #[test]
    fn a_crash_loop_names_the_exit_code_the_restarts_and_the_last_lines() {
        let log = "I1203 starting\n\nE1203 first\nE1203 second\n/opt/rke-tools/entrypoint.sh: line 9: /usr/local/bin/kube-apiserver: cannot execute binary file: Exec format error\n";
        assert_eq!(
            describe(&state("restarting", 126, 4, ""), log),
            "container restarting (last exit code 126), Docker restarted it 4 time(s); its last log lines since its \
             last start: E1203 first | \
             E1203 second | /opt/rke-tools/entrypoint.sh: line 9: /usr/local/bin/kube-apiserver: cannot execute \
             binary file: Exec format error"
        );
    }

    #[test]
    fn a_running_server_that_logged_nothing_says_so() {
        assert_eq!(
            describe(&state("running", 0, 0, ""), ""),
            "container running; it logged nothing since its last start"
        );
    }

    #[test]
    fn dockers_own_error_is_quoted() {
        let text = describe(
            &state("created", 127, 0, "exec: \"/bin/missing\": no such file"),
            "",
        );
        assert!(
            text.starts_with("container created (last exit code 127); Docker: exec:"),
            "{text}"
        );
    }

    #[test]
    fn long_base64_runs_are_redacted_and_short_words_kept() {
        let key = "c2VjcmV0LWtleS1tYXRlcmlhbC10aGF0LWlzLTMyLWJ5dGVz";
        let text = describe(
            &state("exited", 1, 0, ""),
            &format!("E1203 bad key {key} in /etc/kubernetes/ssl/encryption.yaml"),
        );
        assert!(!text.contains(key), "{text}");
        assert!(
            text.ends_with("E1203 bad key <redacted> in /etc/kubernetes/ssl/encryption.yaml"),
            "{text}"
        );
    }

    #[test]
    fn only_the_lines_of_the_current_process_are_quoted() {
        let log = "2026-12-03T10:42:43.388525123Z I1203 old server shutting down\n\
                   2026-12-03T10:42:43.9Z E1203 new server: bad flag\n\
                   not a timestamped line\n\
                   2026-12-03T10:42:44Z E1203 exiting\n";
        let cutoff = OffsetDateTime::parse("2026-12-03T10:42:43.5Z", &Rfc3339).unwrap();
        assert_eq!(
            lines_since(log, cutoff),
            "E1203 new server: bad flag\nE1203 exiting"
        );
    }

    #[test]
    fn the_quote_is_capped_keeping_its_end() {
        let long = format!("{} the reason", "word ".repeat(400));
        let text = quote(&long);
        assert!(text.len() <= LOG_BYTES + '…'.len_utf8(), "{}", text.len());
        assert!(text.starts_with('…') && text.ends_with("the reason"));
        let wide = "é".repeat(700);
        assert!(quote(&wide).len() <= LOG_BYTES + '…'.len_utf8());
    }
}
