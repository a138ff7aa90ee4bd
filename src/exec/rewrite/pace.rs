//! How many requests a rewrite keeps in flight, and when it must wait.
//!
//! A rewrite shares the API servers with the cluster's own clients. When a server is overloaded it says so: API
//! Priority and Fairness (and `--max-requests-inflight`) answer 429 with a `Retry-After`, an overloaded server
//! answers 5xx. Retrying each such request on its own timer, as if it were a lost packet, keeps the same number
//! of requests knocking, so the server keeps refusing and an unlucky object runs out of attempts (this is how a
//! one-seat priority level once failed a rewrite). So the writers share one [`Pace`]: an additive-increase,
//! multiplicative-decrease limit on requests in flight, the way TCP shares a link.
//!
//! - It starts at [`START`] (or the ceiling if lower) and grows by one per success until the first sign of
//!   overload (slow start), then by one per `limit` successes, never above the ceiling (`--rewrite-concurrency`).
//! - An overload answer halves the limit (once per [`Pace::cut_spacing`], so a burst of refusals from one moment
//!   counts once). The refused request itself waits its `Retry-After` before it is sent again (as client-go
//!   does); the others go on under the lower limit. (Holding every request for the `Retry-After` was tried
//!   first: on a one-seat priority level each refusal stopped the whole rewrite for a second.)
//! - A 429 means the server did not run the request, so retrying it is always safe and it does not use up the
//!   per-request retry budget; what ends the retries is [`Pace::stalled`]: no request at all has succeeded for
//!   the rewrite's patience.

use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;
// tokio's clock, so tests can run it paused.
use tokio::time::Instant;

/// Requests in flight before the first answer (slow start doubles it each round trip).
pub(super) const START: usize = 4;

/// The wait after a 429 that names none; upstream's API Priority and Fairness asks for 1 s.
pub(super) const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// A server's `Retry-After` is honoured up to this; a longer one is taken as this and retried.
pub(super) const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

pub(super) struct Pace {
    ceiling: usize,
    state: Mutex<State>,
    room: Notify,
}

#[derive(Debug)]
struct State {
    limit: usize,
    in_flight: usize,
    slow_start: bool,
    successes_at_limit: usize,
    last_cut: Option<Instant>,
    last_success: Instant,
}

/// What the server said to one request, as far as pacing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Answer {
    /// Done (whatever the outcome for the object: 404 and 409 are answers, not overload).
    Served,
    /// 429: not run; wait this long before sending more.
    Throttled(Duration),
    /// 5xx: the server is struggling.
    Overloaded,
    /// No answer (connection refused or reset, timeout): says nothing about load.
    Lost,
}

impl Pace {
    pub(super) fn new(ceiling: usize) -> Self {
        let ceiling = ceiling.max(1);
        Self {
            ceiling,
            state: Mutex::new(State {
                limit: START.min(ceiling),
                in_flight: 0,
                slow_start: true,
                successes_at_limit: 0,
                last_cut: None,
                last_success: Instant::now(),
            }),
            room: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current limit on requests in flight (for progress and tests).
    pub(super) fn limit(&self) -> usize {
        self.lock().limit
    }

    /// Wait for room under the limit; the slot is given back on drop.
    pub(super) async fn slot(&self) -> Slot<'_> {
        loop {
            let notified = self.room.notified();
            {
                let mut state = self.lock();
                if state.in_flight < state.limit {
                    state.in_flight += 1;
                    return Slot {
                        pace: self,
                        answered: false,
                    };
                }
            }
            notified.await;
        }
    }

    /// Whether no request has succeeded for `patience`: the server keeps refusing, give up.
    pub(super) fn stalled(&self, patience: Duration) -> bool {
        self.lock().last_success.elapsed() >= patience
    }

    /// Space between two cuts: one round of requests answered in the same moment is one overload event.
    fn cut_spacing(hold: Duration) -> Duration {
        hold.max(Duration::from_millis(500))
    }

    fn answer(&self, answer: Answer) {
        let mut state = self.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
        let now = Instant::now();
        match answer {
            Answer::Served => {
                state.last_success = now;
                if state.slow_start {
                    state.limit += 1;
                } else {
                    state.successes_at_limit += 1;
                    if state.successes_at_limit >= state.limit {
                        state.limit += 1;
                        state.successes_at_limit = 0;
                    }
                }
                state.limit = state.limit.min(self.ceiling);
            }
            Answer::Throttled(retry_after) => {
                cut(
                    &mut state,
                    now,
                    Self::cut_spacing(retry_after.min(MAX_RETRY_AFTER)),
                );
            }
            Answer::Overloaded => cut(&mut state, now, Self::cut_spacing(Duration::ZERO)),
            Answer::Lost => {}
        }
        drop(state);
        self.room.notify_waiters();
    }
}

fn cut(state: &mut State, now: Instant, spacing: Duration) {
    state.slow_start = false;
    state.successes_at_limit = 0;
    if state.last_cut.is_some_and(|last| now < last + spacing) {
        return;
    }
    state.last_cut = Some(now);
    state.limit = (state.limit / 2).max(1);
}

/// Room for one request. Report how it went with [`Slot::answered`]; dropped unanswered (cancelled) it only
/// gives the room back.
pub(super) struct Slot<'a> {
    pace: &'a Pace,
    answered: bool,
}

impl Slot<'_> {
    pub(super) fn answered(mut self, answer: Answer) {
        self.answered = true;
        self.pace.answer(answer);
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.pace.answer(Answer::Lost);
        }
    }
}

/// How pacing reads a client error.
pub(super) fn answer_of(error: &kube::Error) -> Answer {
    match error {
        kube::Error::Api(status) if status.code == 429 => Answer::Throttled(
            status
                .details
                .as_ref()
                .map(|d| Duration::from_secs(u64::from(d.retry_after_seconds)))
                .filter(|wait| !wait.is_zero())
                .unwrap_or(DEFAULT_RETRY_AFTER),
        ),
        kube::Error::Api(status) if status.code >= 500 => Answer::Overloaded,
        kube::Error::Api(_) => Answer::Served,
        _ => Answer::Lost,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn serve(pace: &Pace, answer: Answer) {
        pace.slot().await.answered(answer);
    }

    #[tokio::test]
    async fn slow_start_grows_by_one_per_success_up_to_the_ceiling() {
        let pace = Pace::new(10);
        assert_eq!(pace.limit(), START);
        for expected in START + 1..=10 {
            serve(&pace, Answer::Served).await;
            assert_eq!(pace.limit(), expected);
        }
        serve(&pace, Answer::Served).await;
        assert_eq!(pace.limit(), 10, "never above the ceiling");
        assert_eq!(
            Pace::new(2).limit(),
            2,
            "starts at the ceiling when it is lower"
        );
        assert_eq!(Pace::new(0).limit(), 1, "at least one request");
    }

    #[tokio::test]
    async fn overload_halves_once_per_event_then_growth_is_additive() {
        let pace = Pace::new(64);
        for _ in 0..12 {
            serve(&pace, Answer::Served).await;
        }
        assert_eq!(pace.limit(), 16);
        serve(&pace, Answer::Overloaded).await;
        assert_eq!(pace.limit(), 8);
        serve(&pace, Answer::Overloaded).await;
        assert_eq!(
            pace.limit(),
            8,
            "a second 5xx of the same moment is the same event"
        );
        for _ in 0..7 {
            serve(&pace, Answer::Served).await;
        }
        assert_eq!(
            pace.limit(),
            8,
            "after a cut, one more per `limit` successes"
        );
        serve(&pace, Answer::Served).await;
        assert_eq!(pace.limit(), 9);
    }

    #[tokio::test]
    async fn lost_answers_and_404s_say_nothing_about_load() {
        let pace = Pace::new(8);
        serve(&pace, Answer::Lost).await;
        assert_eq!(pace.limit(), START);
        let not_found = kube::Error::Api(
            kube::core::Status::failure("gone", "NotFound")
                .with_code(404)
                .boxed(),
        );
        assert_eq!(answer_of(&not_found), Answer::Served);
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_cuts_once_per_retry_after_and_other_requests_go_on() {
        let pace = Pace::new(8);
        serve(&pace, Answer::Throttled(Duration::from_secs(3))).await;
        assert_eq!(pace.limit(), START / 2);
        let before = Instant::now();
        drop(pace.slot().await);
        assert_eq!(before.elapsed(), Duration::ZERO, "no request is held");
        serve(&pace, Answer::Throttled(Duration::from_secs(3))).await;
        assert_eq!(pace.limit(), START / 2, "the same overload event");
        tokio::time::advance(Duration::from_secs(3)).await;
        serve(&pace, Answer::Throttled(Duration::from_secs(3))).await;
        assert_eq!(
            pace.limit(),
            START / 4,
            "a refusal after the Retry-After is a new event"
        );
    }

    #[tokio::test]
    async fn the_limit_bounds_requests_in_flight() {
        let pace = Pace::new(2);
        let first = pace.slot().await;
        let _second = pace.slot().await;
        let third = tokio::time::timeout(Duration::from_millis(50), pace.slot()).await;
        assert!(
            third.is_err(),
            "a third request waits while two are in flight"
        );
        first.answered(Answer::Served);
        let third = tokio::time::timeout(Duration::from_secs(5), pace.slot()).await;
        assert!(third.is_ok(), "an answer makes room");
    }

    #[test]
    fn a_429_without_details_waits_the_default_and_one_with_details_waits_that() {
        let plain = kube::core::Status::failure("Too many requests", "").with_code(429);
        assert_eq!(
            answer_of(&kube::Error::Api(plain.clone().boxed())),
            Answer::Throttled(DEFAULT_RETRY_AFTER)
        );
        let mut detailed = plain;
        detailed.details = serde_json::from_value(serde_json::json!({"retryAfterSeconds": 7})).ok();
        assert!(detailed.details.is_some());
        assert_eq!(
            answer_of(&kube::Error::Api(detailed.boxed())),
            Answer::Throttled(Duration::from_secs(7))
        );
        let unavailable = kube::core::Status::failure("down", "").with_code(503);
        assert_eq!(
            answer_of(&kube::Error::Api(unavailable.boxed())),
            Answer::Overloaded
        );
    }

    #[tokio::test]
    async fn stalled_counts_from_the_last_success() {
        let pace = Pace::new(4);
        assert!(!pace.stalled(Duration::from_secs(60)));
        assert!(pace.stalled(Duration::ZERO));
        serve(&pace, Answer::Served).await;
        assert!(!pace.stalled(Duration::from_secs(60)));
    }
}
