//! Progress of a rewrite on stderr: a bar on a terminal, a log line every few seconds otherwise.

use super::ProgressMode;
use super::pace::Pace;
use super::report::Stats;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub(super) struct Progress {
    bar: Option<indicatif::ProgressBar>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    pub(super) fn start(
        mode: ProgressMode,
        stats: Arc<Stats>,
        pace: Arc<Pace>,
        started: Instant,
    ) -> Self {
        let tty = std::io::stderr().is_terminal();
        match mode {
            ProgressMode::Auto if tty => {
                let bar = indicatif::ProgressBar::new(0);
                let style = indicatif::ProgressStyle::with_template(
                    "{prefix:>12} [{bar:40}] {pos}/{len} {per_sec} {msg} ETA {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> ");
                bar.set_style(style);
                bar.enable_steady_tick(Duration::from_millis(200));
                let ticker_bar = bar.clone();
                let ticker = tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        ticker_bar.set_length(
                            stats
                                .expected
                                .load(Ordering::Relaxed)
                                .max(stats.processed()),
                        );
                        ticker_bar.set_position(stats.processed());
                        ticker_bar.set_message(format!("{} in flight", pace.limit()));
                    }
                });
                Self {
                    bar: Some(bar),
                    ticker: Some(ticker),
                }
            }
            ProgressMode::Auto | ProgressMode::Log => {
                let ticker = tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        let done = stats.processed();
                        let rate = done as f64 / started.elapsed().as_secs_f64().max(0.001);
                        tracing::info!(
                            done,
                            expected = stats.expected.load(Ordering::Relaxed),
                            rate = format_args!("{rate:.0}/s"),
                            in_flight = pace.limit(),
                            throttled = stats.throttled.load(Ordering::Relaxed),
                            "rewrite progress"
                        );
                    }
                });
                Self {
                    bar: None,
                    ticker: Some(ticker),
                }
            }
            ProgressMode::Quiet => Self {
                bar: None,
                ticker: None,
            },
        }
    }

    pub(super) fn resource(&self, name: &str) {
        if let Some(bar) = &self.bar {
            bar.set_prefix(name.to_string());
        } else {
            tracing::info!(resource = name, "rewriting");
        }
    }

    pub(super) fn finish(self) {
        if let Some(t) = self.ticker {
            t.abort();
        }
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
