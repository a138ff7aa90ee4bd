//! How many requests a rewrite keeps in flight, and when it must wait.
//!
//! A rewrite shares the API servers with the cluster's own clients, and how many writes they can take at once
//! depends on the cluster: its CPUs, its etcd, how many API servers share the work, what else runs. No fixed
//! number is right for all of them: 32 leaves a large cluster idle, 256 queues on a small one. So by default
//! ([`Concurrency::Adaptive`]) the writers share one [`Pace`] that finds the number as TCP finds a link's rate:
//!
//! - It starts at [`START`] and doubles per measuring window (slow start), up to [`ADAPTIVE_CEILING`].
//! - It measures what the growth buys. A measuring window is two rounds of answers (`2 × limit`) and at least
//!   [`WINDOW`] ([`SLOW_START_WINDOW`] in slow start, where each step doubles the load and stands out of the
//!   noise); the round after a change mixes two limits and is not judged. Each window gives a rate, a mean
//!   latency and a load (rate × latency: requests really in flight, Little's law). Once the load is [`GROWTH`]
//!   above the reference window's, the growth is judged by its efficiency, `ln(rate ratio) / ln(load ratio)`:
//!   about 1 while the servers have room, about 0 once more writes only queue (the same rate, the latency up
//!   as much as the load). At [`EFFICIENT`] or more the window becomes the reference; below, the limit goes
//!   back to the reference's (never below [`FLOOR`]), slow start ends, and from there it grows by an eighth per
//!   window, so it keeps probing and is pushed back when the probe buys nothing.
//! - Overload answers: API Priority and Fairness (and `--max-requests-inflight`) answer 429 with a
//!   `Retry-After`, an overloaded server answers 5xx. Each halves the limit (once per [`Pace::cut_spacing`], so a
//!   burst of refusals from one moment counts once) and ends slow start. The refused request itself waits its
//!   `Retry-After` before it is sent again (as client-go does); the others go on under the lower limit. (Holding
//!   every request for the `Retry-After` was tried first: on a one-seat priority level each refusal stopped the
//!   whole rewrite for a second. Retrying each on its own timer, as if it were a lost packet, kept the same number
//!   knocking until an unlucky object ran out of attempts, as a one-seat priority level once showed.)
//! - A 429 means the server did not run the request, so retrying it is always safe and it does not use up the
//!   per-request retry budget; what ends the retries is [`Pace::stalled`]: no request at all has succeeded for
//!   the rewrite's patience.
//!
//! `--rewrite-concurrency N` pins it instead ([`Concurrency::Pinned`]): N from the first request, no growth
//! probing; only the servers' own overload answers lower it, since a refused request was not run anyway.

use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;
// tokio's clock, so tests can run it paused.
use tokio::time::Instant;

/// Requests in flight before the first answer (slow start doubles it each round trip).
pub(super) const START: usize = 4;

/// The most requests an adaptive rewrite keeps in flight (and so the number of writer tasks).
pub const ADAPTIVE_CEILING: usize = 256;

/// A measuring window lasts at least this long (and at least two rounds: `2 × limit` answers); a settling
/// window, one round (`limit` answers). In slow start, where each step doubles the load and so its effect
/// stands out of the noise, [`SLOW_START_WINDOW`].
pub(super) const WINDOW: Duration = Duration::from_secs(1);
pub(super) const SLOW_START_WINDOW: Duration = Duration::from_millis(250);

/// Load this far above the reference's has grown enough to judge what it bought (40 %).
const GROWTH: f64 = 1.4;

/// Growth that raised throughput by at least this share of what it raised the load (in log terms: rate
/// ×1.11 for load ×1.4, ×1.23 for load ×2) paid off; below it, it mostly raised latency.
const EFFICIENT: f64 = 0.3;

/// Growth is never taken back below this many in flight (only overload answers go lower). etcd commits the
/// proposals that arrive together with one fsync, so below a few dozen in flight more writes buy throughput in
/// steps a window's noise hides: on the 3-node testbed 32 → 64 writers bought nothing and 64 → 128 bought 50 %;
/// on the real kube-apiserver alone, judging from 4 up took the limit back to 6 at 60 % of the rate of 32.
/// 64 is far below kube-apiserver's own `--max-requests-inflight` (400) and `--max-mutating-requests-inflight`
/// (200), and a server with fewer seats says so with 429s, which do go lower.
pub(super) const FLOOR: usize = 64;

/// How many writes a rewrite keeps in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concurrency {
    /// Grow while throughput rises, back off on overload and when latency climbs without gain.
    Adaptive,
    /// At most this many, from the start (`--rewrite-concurrency`); only overload answers lower it.
    Pinned(usize),
}

impl Concurrency {
    /// `--rewrite-concurrency`: pinned when given, adaptive when not.
    pub fn from_flag(flag: Option<u16>) -> Self {
        flag.map_or(Self::Adaptive, |n| Self::Pinned(usize::from(n)))
    }

    /// The most requests ever in flight.
    pub fn ceiling(self) -> usize {
        match self {
            Self::Adaptive => ADAPTIVE_CEILING,
            Self::Pinned(n) => n.max(1),
        }
    }
}

/// The wait after a 429 that names none; upstream's API Priority and Fairness asks for 1 s.
pub(super) const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// A server's `Retry-After` is honoured up to this; a longer one is taken as this and retried.
pub(super) const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

pub(super) struct Pace {
    ceiling: usize,
    adaptive: bool,
    state: Mutex<State>,
    room: Notify,
}

#[derive(Debug)]
struct State {
    limit: usize,
    in_flight: usize,
    slow_start: bool,
    /// The limit changed during the current window: its answers mix two limits, so it is not judged.
    settling: bool,
    last_cut: Option<Instant>,
    last_success: Instant,
    window: Window,
    reference: Option<Sample>,
    saturations: u64,
}

/// Answers counted since the window opened.
#[derive(Debug)]
struct Window {
    opened: Instant,
    served: u32,
    latency: Duration,
}

impl Window {
    fn open(now: Instant) -> Self {
        Self {
            opened: now,
            served: 0,
            latency: Duration::ZERO,
        }
    }
}

/// What one closed window measured.
#[derive(Debug, Clone, Copy)]
struct Sample {
    limit: usize,
    rate: f64,
    latency: Duration,
}

impl Sample {
    /// Requests actually in flight on average (Little's law: rate × latency). Lower than the limit when the
    /// writers have nothing to send, higher for a while after the limit went down.
    fn load(&self) -> f64 {
        self.rate * self.latency.as_secs_f64()
    }
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
    pub(super) fn new(concurrency: Concurrency) -> Self {
        Self::build(concurrency.ceiling(), concurrency == Concurrency::Adaptive)
    }

    fn build(ceiling: usize, adaptive: bool) -> Self {
        let ceiling = ceiling.max(1);
        let now = Instant::now();
        Self {
            ceiling,
            adaptive,
            state: Mutex::new(State {
                limit: if adaptive {
                    START.min(ceiling)
                } else {
                    ceiling
                },
                in_flight: 0,
                slow_start: adaptive,
                settling: false,
                last_cut: None,
                last_success: now,
                window: Window::open(now),
                reference: None,
                saturations: 0,
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

    /// How often latency climbed without a throughput gain and the limit went back (for the report).
    pub(super) fn saturations(&self) -> u64 {
        self.lock().saturations
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
                        sent: Instant::now(),
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

    fn answer(&self, answer: Answer, latency: Duration) {
        let mut state = self.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
        let now = Instant::now();
        match answer {
            Answer::Served => {
                state.last_success = now;
                if let Some(sample) = measure(&mut state, now, latency)
                    && !std::mem::take(&mut state.settling)
                {
                    let before = state.limit;
                    let took_back = self.adaptive && judge(&mut state, sample);
                    if !took_back {
                        grow(&mut state);
                    }
                    state.limit = state.limit.min(self.ceiling);
                    state.settling = state.limit != before;
                }
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

/// Counts one served answer in the window; when the window is full, closes it and returns what it measured.
fn measure(state: &mut State, now: Instant, latency: Duration) -> Option<Sample> {
    let window = &mut state.window;
    window.served += 1;
    window.latency += latency;
    let elapsed = now.saturating_duration_since(window.opened);
    let full = if state.settling {
        window.served as usize >= state.limit
    } else {
        let least = if state.slow_start {
            SLOW_START_WINDOW
        } else {
            WINDOW
        };
        window.served as usize >= 2 * state.limit && elapsed >= least
    };
    if !full {
        return None;
    }
    let sample = Sample {
        limit: state.limit,
        rate: f64::from(window.served) / elapsed.as_secs_f64(),
        latency: window.latency / window.served,
    };
    state.window = Window::open(now);
    Some(sample)
}

/// After a full window: double in slow start, else one eighth more (at least one).
fn grow(state: &mut State) {
    state.limit += if state.slow_start {
        state.limit
    } else {
        (state.limit / 8).max(1)
    };
}

/// Keeps growth that raised throughput; takes back growth that only raised latency (and says so).
///
/// Judged only once the load has grown by [`GROWTH`] over the reference's, so that one noisy window between
/// small steps decides nothing; and by the efficiency `ln(rate ratio) / ln(load ratio)`: about 1 while the
/// servers have room (twice the load, twice the rate), about 0 once they are saturated (twice the load, the
/// same rate, twice the latency: Little's law).
fn judge(state: &mut State, sample: Sample) -> bool {
    let Some(reference) = state.reference else {
        state.reference = Some(sample);
        return false;
    };
    let load_ratio = sample.load() / reference.load();
    if sample.limit <= reference.limit || !load_ratio.is_finite() {
        // The limit is back at or below the reference's (after a cut or a take-back): measure from here.
        state.reference = Some(sample);
        return false;
    }
    if load_ratio < GROWTH {
        return false;
    }
    let efficiency = (sample.rate / reference.rate).ln() / load_ratio.ln();
    if efficiency >= EFFICIENT || efficiency.is_nan() {
        state.reference = Some(sample);
        return false;
    }
    state.limit = reference.limit.max(FLOOR);
    state.slow_start = false;
    state.saturations += 1;
    state.reference = None;
    tracing::debug!(
        limit = reference.limit,
        reference_rate = format_args!("{:.0}/s", reference.rate),
        rate = format_args!("{:.0}/s at {}", sample.rate, sample.limit),
        "more writes in flight only raised latency; back to the reference"
    );
    true
}

fn cut(state: &mut State, now: Instant, spacing: Duration) {
    state.slow_start = false;
    if state.last_cut.is_some_and(|last| now < last + spacing) {
        return;
    }
    state.last_cut = Some(now);
    state.limit = (state.limit / 2).max(1);
    state.settling = true;
}

/// Room for one request. Report how it went with [`Slot::answered`]; dropped unanswered (cancelled) it only
/// gives the room back.
pub(super) struct Slot<'a> {
    pace: &'a Pace,
    sent: Instant,
    answered: bool,
}

impl Slot<'_> {
    pub(super) fn answered(mut self, answer: Answer) {
        self.answered = true;
        self.pace.answer(answer, self.sent.elapsed());
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.pace.answer(Answer::Lost, self.sent.elapsed());
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

    /// One full window: a settling one is a round of `limit` answers; a measuring one is [`WINDOW`], then
    /// two rounds of answers at once.
    async fn full_window(pace: &Pace) {
        let rounds = if pace.lock().settling {
            1
        } else {
            tokio::time::advance(WINDOW).await;
            2
        };
        for _ in 0..rounds * pace.limit() {
            serve(pace, Answer::Served).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn slow_start_doubles_per_window_up_to_the_ceiling() {
        let pace = Pace::build(40, true);
        assert_eq!(pace.limit(), START);
        // The window after each change mixes two limits and is not judged.
        for expected in [8, 8, 16, 16, 32, 32, 40, 40, 40] {
            full_window(&pace).await;
            assert_eq!(pace.limit(), expected, "never above the ceiling");
        }
        assert_eq!(
            Pace::build(2, true).limit(),
            2,
            "starts at the ceiling when it is lower"
        );
        assert_eq!(Pace::build(0, true).limit(), 1, "at least one request");
    }

    #[tokio::test(start_paused = true)]
    async fn a_measuring_window_is_two_rounds_and_its_duration_a_settling_one_one_round() {
        let pace = Pace::build(64, true);
        for _ in 0..100 {
            serve(&pace, Answer::Served).await;
        }
        assert_eq!(pace.limit(), START, "answers alone do not close a window");
        tokio::time::advance(WINDOW).await;
        serve(&pace, Answer::Served).await;
        assert_eq!(pace.limit(), 2 * START);
        for _ in 0..2 * START - 1 {
            serve(&pace, Answer::Served).await;
        }
        assert!(pace.lock().settling, "one answer short of a round");
        serve(&pace, Answer::Served).await;
        assert!(!pace.lock().settling, "a round settles, without waiting");
        assert_eq!(pace.limit(), 2 * START, "a settling window is not judged");
        tokio::time::advance(WINDOW).await;
        for _ in 0..2 * 2 * START - 1 {
            serve(&pace, Answer::Served).await;
        }
        assert_eq!(pace.limit(), 2 * START, "one answer short of two rounds");
        serve(&pace, Answer::Served).await;
        assert_eq!(pace.limit(), 4 * START);
    }

    #[tokio::test(start_paused = true)]
    async fn overload_halves_once_per_event_then_growth_is_an_eighth_per_window() {
        let pace = Pace::build(64, true);
        for _ in 0..4 {
            full_window(&pace).await;
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
        full_window(&pace).await;
        assert_eq!(pace.limit(), 8, "the window after the cut is not judged");
        full_window(&pace).await;
        assert_eq!(pace.limit(), 9, "after a cut, at least one more per window");
        tokio::time::advance(Duration::from_secs(1)).await;
        serve(&pace, Answer::Overloaded).await;
        assert_eq!(pace.limit(), 4, "a later 5xx is a new event");
    }

    #[tokio::test]
    async fn lost_answers_and_404s_say_nothing_about_load() {
        let pace = Pace::build(8, true);
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
        let pace = Pace::build(8, true);
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
        let pace = Pace::build(2, true);
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

    /// A simulated server: it runs `capacity` requests at once in `service` each; more share it, so a request
    /// sent while `n` are in flight takes `service × max(1, n / capacity)`. Its best rate is
    /// `capacity / service`, reached at `capacity` in flight. With `jitter`, its speed changes every 100 ms by
    /// a pseudo-random factor in `1 ± jitter` (garbage collection, a neighbour taking the CPU).
    #[derive(Clone, Copy)]
    struct Server {
        capacity: usize,
        service: Duration,
        jitter: f64,
    }

    impl Server {
        fn best_rate(&self) -> f64 {
            self.capacity as f64 / self.service.as_secs_f64()
        }

        fn latency(&self, in_flight: usize, since_start: Duration) -> Duration {
            let queued = (in_flight as f64 / self.capacity as f64).max(1.0);
            let slot = since_start.as_millis() as u64 / 100;
            // splitmix64 of the 100 ms slot: the same noise for every request sent in it.
            let mut z = slot.wrapping_add(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            let unit = (z ^ (z >> 31)) as f64 / u64::MAX as f64;
            let noise = 1.0 + self.jitter * (2.0 * unit - 1.0);
            self.service.mul_f64(queued * noise)
        }
    }

    /// Writers as many as the pace's ceiling send requests to `server` for `run`; the rate it served.
    async fn drive(pace: Arc<Pace>, server: Server, run: Duration) -> f64 {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let served = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let writers: Vec<_> = (0..pace.ceiling)
            .map(|_| {
                let (pace, in_flight, served) = (pace.clone(), in_flight.clone(), served.clone());
                tokio::spawn(async move {
                    while started.elapsed() < run {
                        let slot = pace.slot().await;
                        let n = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                        tokio::time::sleep(server.latency(n, started.elapsed())).await;
                        in_flight.fetch_sub(1, Ordering::SeqCst);
                        served.fetch_add(1, Ordering::SeqCst);
                        slot.answered(Answer::Served);
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.expect("writer");
        }
        served.load(Ordering::SeqCst) as f64 / started.elapsed().as_secs_f64()
    }

    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn adaptive_settles_near_the_servers_capacity_instead_of_the_ceiling() {
        for (capacity, service_ms, jitter) in [
            (8, 10, 0.0),
            (40, 50, 0.0),
            (120, 20, 0.0),
            (8, 10, 0.3),
            (40, 50, 0.3),
            (120, 20, 0.3),
        ] {
            let server = Server {
                capacity,
                service: Duration::from_millis(service_ms),
                jitter,
            };
            let pace = Arc::new(Pace::new(Concurrency::Adaptive));
            let rate = drive(pace.clone(), server, Duration::from_secs(60)).await;
            let (limit, best) = (pace.limit(), server.best_rate());
            eprintln!(
                "capacity {capacity}, jitter {jitter}: limit {limit}, {rate:.0}/s of {best:.0}/s"
            );
            // A snapshot of a sawtooth: with noise the probes get pushed back later, so it ends higher.
            let least = capacity.max(FLOOR);
            let near = least..=least * if jitter > 0.0 { 3 } else { 2 };
            assert!(
                near.contains(&limit),
                "limit {limit}: should stay near the {capacity} the server runs at once ({near:?})"
            );
            assert!(pace.saturations() >= 1, "saturation was never seen");
            assert!(
                rate >= 0.9 * best,
                "{rate:.0}/s is under 90 % of the best {best:.0}/s"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn adaptive_grows_to_the_ceiling_while_throughput_keeps_rising() {
        let pace = Arc::new(Pace::new(Concurrency::Adaptive));
        let server = Server {
            capacity: 10_000,
            service: Duration::from_millis(20),
            jitter: 0.0,
        };
        drive(pace.clone(), server, Duration::from_secs(20)).await;
        assert_eq!(pace.limit(), ADAPTIVE_CEILING);
        assert_eq!(pace.saturations(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn pinned_starts_at_its_number_never_probes_and_still_yields_to_overload() {
        let pace = Arc::new(Pace::new(Concurrency::Pinned(64)));
        assert_eq!(pace.limit(), 64, "no slow start");
        let server = Server {
            capacity: 8,
            service: Duration::from_millis(20),
            jitter: 0.0,
        };
        drive(pace.clone(), server, Duration::from_secs(20)).await;
        assert_eq!(
            pace.limit(),
            64,
            "latency alone does not move a pinned limit"
        );
        assert_eq!(pace.saturations(), 0);
        serve(&pace, Answer::Throttled(Duration::from_secs(1))).await;
        assert_eq!(pace.limit(), 32, "a 429 still halves it");
        assert_eq!(Concurrency::from_flag(None), Concurrency::Adaptive);
        assert_eq!(Concurrency::from_flag(Some(5)), Concurrency::Pinned(5));
        assert_eq!(Concurrency::Pinned(0).ceiling(), 1);
    }

    #[tokio::test]
    async fn stalled_counts_from_the_last_success() {
        let pace = Pace::build(4, true);
        assert!(!pace.stalled(Duration::from_secs(60)));
        assert!(pace.stalled(Duration::ZERO));
        serve(&pace, Answer::Served).await;
        assert!(!pace.stalled(Duration::from_secs(60)));
    }
}
