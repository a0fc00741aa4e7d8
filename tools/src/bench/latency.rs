//! Latency: from an event being published to it being visible in
//! `rollup_minute`, at a fixed rate below the maximum.
//!
//! The publisher sends the benchmark stream (looping over it) in 1 ms ticks
//! and records how many events it had sent at each tick. A poller reads the
//! flush ledger every 10 ms: a `rollup_minute` ledger row is committed in the same
//! transaction as its `rollup_minute` rows, so `sum(events)` over those rows
//! is exactly the number of events visible in `rollup_minute` (the
//! benchmark checks that at the end). Events are received, aggregated and
//! flushed in publish order, so the *k*-th published event is visible once that sum
//! reaches *k*. Each tick's events get the latency of the first poll that
//! saw all of them: an over-estimate by up to the poll interval and the
//! transport time (publish, not receipt, starts the clock).

use super::Stream;
use std::time::{Duration, Instant};

/// What the latency run measured.
#[derive(Debug, Clone)]
pub struct LatencyReport {
    /// Publish rate asked for, events/s.
    pub rate: f64,
    /// Events measured (after the warm-up).
    pub events: u64,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest.
    pub max: Duration,
}

/// Events the publisher had sent by each tick: (time, cumulative count).
pub type Timeline = Vec<(Instant, u64)>;

/// The share of the published events whose bucket was before
/// `rollup_minute`'s boundary when published, as a fold sets it
/// ([`bid_logger::db::tables::LIVE_MINUTES`] behind the clock's minute; the
/// real one, set at the last fold, may lag a `fold-interval` more and have
/// fewer events behind it, so this is an upper bound). The view
/// shows those at the next fold, not at their batch's commit, which is what
/// the latency run measures. `wall_ms` is the wall clock at `at` (an
/// instant before the first tick).
pub fn behind_boundary(stream: &Stream, timeline: &Timeline, at: Instant, wall_ms: i64) -> f64 {
    let minutes: Vec<Option<i64>> = stream
        .messages
        .iter()
        .map(|(topic, payload)| {
            bid_logger_core::decode::decode(topic, payload).ok().map(|e| e.ts_ms.div_euclid(60_000))
        })
        .collect();
    let (mut behind, mut prev) = (0u64, 0u64);
    for &(tick, cum) in timeline {
        let now_ms = wall_ms + tick.saturating_duration_since(at).as_millis() as i64;
        let boundary = now_ms.div_euclid(60_000) - bid_logger::db::tables::LIVE_MINUTES;
        behind +=
            (prev..cum).filter(|&i| minutes[i as usize % minutes.len()].is_some_and(|m| m < boundary)).count() as u64;
        prev = cum;
    }
    behind as f64 / prev.max(1) as f64
}

/// Publishes `stream` in a loop at `rate` events/s for `duration` on an XPUB
/// bound at `endpoint`, once `subscriptions` subscriptions have arrived.
pub fn paced_publish(
    stream: &Stream,
    endpoint: &str,
    subscriptions: usize,
    rate: f64,
    duration: Duration,
) -> (zmq::Socket, Timeline) {
    let s = super::xpub_waiting(endpoint, subscriptions);
    let tick = Duration::from_millis(1);
    let per_tick = rate / 1000.0;
    let mut timeline = Vec::with_capacity(duration.as_millis() as usize + 1);
    let start = Instant::now();
    let mut next = start;
    let mut sent = 0u64;
    let mut due = 0.0f64;
    let mut messages = stream.messages.iter().cycle();
    while next.duration_since(start) < duration {
        due += per_tick;
        while (sent as f64) < due {
            let (topic, payload) = messages.next().expect("a non-empty stream");
            super::send_message(&s, topic, payload);
            sent += 1;
        }
        timeline.push((Instant::now(), sent));
        next += tick;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    (s, timeline)
}

/// Events visible in `rollup_minute` over time: (time, ledger events).
pub type Visibility = Vec<(Instant, u64)>;

/// Weighted percentiles of `timeline` against `visible`, ignoring ticks
/// before `warm_up` (connections and tables are being set up then).
pub fn report(rate: f64, timeline: &Timeline, visible: &Visibility, warm_up: Duration) -> Option<LatencyReport> {
    let start = timeline.first()?.0;
    let mut samples: Vec<(Duration, u64)> = Vec::new();
    let mut prev = 0u64;
    let mut poll = 0usize;
    for &(at, cum) in timeline {
        let n = cum - prev;
        prev = cum;
        if n == 0 || at.duration_since(start) < warm_up {
            continue;
        }
        while poll < visible.len() && visible[poll].1 < cum {
            poll += 1;
        }
        // Polls are in time order, and so are ticks: the search only moves forward.
        let (seen_at, _) = *visible.get(poll)?;
        samples.push((seen_at.saturating_duration_since(at), n));
    }
    samples.sort();
    let total: u64 = samples.iter().map(|s| s.1).sum();
    let pick = |q: f64| {
        let target = (q * total as f64).ceil() as u64;
        let mut acc = 0;
        for &(d, n) in &samples {
            acc += n;
            if acc >= target {
                return d;
            }
        }
        samples.last().map(|s| s.0).unwrap_or_default()
    };
    Some(LatencyReport { rate, events: total, p50: pick(0.5), p99: pick(0.99), max: pick(1.0) })
}

/// Events visible in `rollup_minute`, from the ledger: its batches' rows
/// (a consumption of its log, folding live rows already visible, adds a
/// row of its own with a negative `batch_id`).
pub const VISIBLE: &str = "SELECT coalesce(sum(events), 0)::bigint FROM bid_logger_flush_ledger
    WHERE rollup IN ('rollup_minute', 'minute', 'both') AND batch_id >= 0";

/// Polls the ledger of `db_url` every 10 ms until `done()` and everything in
/// `expected()` is visible, or `timeout` passes.
pub async fn poll_visible(
    db_url: &str,
    expected: impl Fn() -> Option<u64>,
    timeout: Duration,
) -> anyhow::Result<Visibility> {
    let client = bid_logger::db::connect(db_url).await?;
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    loop {
        ticker.tick().await;
        // Before the logger's first migration the ledger does not exist yet.
        let v = match client.query_one(VISIBLE, &[]).await {
            Ok(row) => row.get::<_, i64>(0) as u64,
            Err(_) => 0,
        };
        out.push((Instant::now(), v));
        if expected().is_some_and(|n| v >= n) {
            return Ok(out);
        }
        anyhow::ensure!(Instant::now() < deadline, "latency run: only {v} events visible after {timeout:?}");
    }
}
