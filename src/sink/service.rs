//! The sink task: receives deltas, writes batches, retries, never loses.
//!
//! State is one *pending* batch (immutable once attempted: an attempt may have
//! landed without us knowing, and only an identical retry is safe; a large
//! one is split into parts with disjoint keys, written in parallel on their
//! own connections, each with its own ledger rows, and a part that landed is
//! not retried with the others; each part's minute rows are written first,
//! then its hour rows, in a transaction each) and one
//! *queued* delta that everything arriving meanwhile merges into. So a slow
//! or absent database never piles up batches: at most two exist, and the
//! queued one is bounded by `max_pending_rows` through the same folding as
//! the aggregator's.

use super::batch::Batch;
use super::flush::{write_rollup, BatchId, Rollup, Written, PRUNE_LEDGER};
use super::raw_days;
use super::{SinkConfig, SinkError};
use crate::telemetry as t;
use bid_logger_core::aggregate::Delta;
use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Retry delays grow from this …
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// … to this.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Rows (rollup keys) written in one transaction at most.
pub const MAX_BATCH_ROWS: usize = 50_000;
/// A batch this large is written as `db-pool-size` parts in parallel.
const MIN_PARALLEL_ROWS: usize = 10_000;
/// Raw rows written in one transaction at most.
const MAX_BATCH_RAW_ROWS: usize = 100_000;
/// Prune the ledger every this many batches.
const PRUNE_EVERY: i64 = 3600;

/// How the sink ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SinkSummary {
    /// Events written over the run.
    pub events_written: u64,
    /// Batches written.
    pub batches: u64,
    /// Events accepted but not written when the sink gave up (0 on a clean stop).
    pub events_unwritten: u64,
}

struct SinkMetrics {
    duration: Histogram,
    minute_rows: Counter,
    hour_rows: Counter,
    events: Counter,
    failures: Counter,
    pending_batches: Gauge,
    pending_events: Gauge,
    last_flush: Gauge,
    folded: Counter,
    raw_written: Counter,
    raw_dropped_full: Counter,
    raw_dropped_expired: Counter,
    day_tables_created: Counter,
    day_tables_dropped: Counter,
    live_keys: Gauge,
    published_live_keys: usize,
}

/// One part of the pending batch.
struct Part {
    id: BatchId,
    batch: Batch,
    /// Its minute rows (and raw rows) have landed.
    minute_landed: bool,
    /// Its hour rows have landed (always after the minute rows).
    hour_landed: bool,
}

impl Part {
    /// The table this part's next transaction writes, if any is left.
    fn next(&self) -> Option<Rollup> {
        match (self.minute_landed, self.hour_landed) {
            (false, _) => Some(Rollup::Minute),
            (true, false) => Some(Rollup::Hour),
            (true, true) => None,
        }
    }
}

/// The sink: owns the pool, the pending batch and the queued delta.
pub struct Sink {
    config: SinkConfig,
    pool: deadpool_postgres::Pool,
    rx: mpsc::Receiver<Delta>,
    run_id: i64,
    next_batch: i64,
    /// The batch being written, as parts written in parallel (each its own
    /// transactions and ledger rows); a part leaves once it has landed in
    /// both tables.
    pending: Vec<Part>,
    queued: Delta,
    backoff: Duration,
    retry_at: Option<Instant>,
    migrated: bool,
    raw_days: RawDays,
    summary: SinkSummary,
    metrics: SinkMetrics,
    progress: std::sync::Arc<t::Progress>,
}

impl Sink {
    /// A sink writing what arrives on `rx`; `migrated` says whether the
    /// schema is known to be up to date (otherwise the first flush migrates).
    pub fn new(
        config: SinkConfig,
        pool: deadpool_postgres::Pool,
        rx: mpsc::Receiver<Delta>,
        migrated: bool,
        progress: std::sync::Arc<t::Progress>,
    ) -> Sink {
        let run_id = (SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0) as i64)
            ^ (i64::from(std::process::id()) << 40)
            ^ rand::random::<i64>();
        let metrics = SinkMetrics {
            duration: histogram!(t::FLUSH_DURATION),
            minute_rows: counter!(t::ROWS_UPSERTED, "table" => "rollup_minute"),
            hour_rows: counter!(t::ROWS_UPSERTED, "table" => "rollup_hour"),
            events: counter!(t::EVENTS_FLUSHED),
            failures: counter!(t::FLUSH_FAILURES),
            pending_batches: gauge!(t::PENDING_BATCHES),
            pending_events: gauge!(t::PENDING_EVENTS),
            last_flush: gauge!(t::LAST_FLUSH),
            folded: counter!(t::OVERFLOW_FOLDED),
            raw_written: counter!(t::RAW_ROWS_WRITTEN),
            raw_dropped_full: counter!(t::RAW_ROWS_DROPPED, "reason" => "buffer_full"),
            raw_dropped_expired: counter!(t::RAW_ROWS_DROPPED, "reason" => "expired"),
            day_tables_created: counter!(t::RAW_PARTITIONS_CREATED),
            day_tables_dropped: counter!(t::RAW_PARTITIONS_DROPPED),
            live_keys: gauge!(t::LIVE_KEYS),
            published_live_keys: 0,
        };
        Sink {
            config,
            pool,
            rx,
            run_id,
            next_batch: 1,
            pending: Vec::new(),
            queued: Delta::default(),
            backoff: BACKOFF_MIN,
            retry_at: None,
            migrated,
            raw_days: RawDays::default(),
            summary: SinkSummary::default(),
            metrics,
            progress,
        }
    }

    /// Runs until every sender is gone, then writes what is left, trying for
    /// at most `shutdown_timeout`.
    ///
    /// A delta is written as soon as it arrives (ingest already paces them
    /// at the flush interval), so an event is visible within one interval
    /// plus the flush's own time; after a failure, the next attempt waits
    /// for the backoff, and whatever arrives meanwhile merges.
    pub async fn run(mut self) -> SinkSummary {
        loop {
            let retry_at = self.retry_at.map(tokio::time::Instant::from_std);
            tokio::select! {
                msg = self.rx.recv() => match msg {
                    Some(delta) => self.enqueue(delta),
                    None => break,
                },
                _ = sleep_until_some(retry_at) => {}
            }
            while let Ok(delta) = self.rx.try_recv() {
                self.enqueue(delta);
            }
            // Write until nothing is left or an attempt fails: what merged
            // while a batch was in flight goes out right after it.
            while self.retry_at.is_none_or(|at| Instant::now() >= at)
                && (!self.pending.is_empty() || !self.queued.is_empty())
            {
                if !self.flush_once().await {
                    break;
                }
                while let Ok(delta) = self.rx.try_recv() {
                    self.enqueue(delta);
                }
            }
        }
        self.drain_on_shutdown().await
    }

    async fn drain_on_shutdown(mut self) -> SinkSummary {
        let deadline = Instant::now() + self.config.shutdown_timeout;
        while !self.pending.is_empty() || !self.queued.is_empty() {
            if Instant::now() >= deadline {
                let unwritten = self.pending.iter().map(|p| p.batch.events).sum::<u64>() + self.queued.events;
                tracing::error!(
                    events_unwritten = unwritten,
                    timeout = ?self.config.shutdown_timeout,
                    "giving up: the database stayed unreachable; these accepted events were NOT written"
                );
                self.summary.events_unwritten = unwritten;
                break;
            }
            if !self.flush_once().await {
                let wait = self.backoff.min(deadline.saturating_duration_since(Instant::now()));
                tokio::time::sleep(wait).await;
            }
        }
        self.publish_pending();
        self.summary
    }

    fn enqueue(&mut self, delta: Delta) {
        let loss = self.queued.merge(delta, self.config.max_pending_rows, self.config.max_raw_rows);
        self.metrics.folded.increment(loss.folded_events);
        if loss.raw_dropped > 0 {
            self.metrics.raw_dropped_full.increment(loss.raw_dropped);
            tracing::warn!(
                dropped = loss.raw_dropped,
                cap = self.config.max_raw_rows,
                "raw buffer full while the database is behind: raw rows dropped (rollups stay exact)"
            );
        }
        self.publish_pending();
    }

    /// One attempt at writing the pending batch (formed from the queued delta
    /// when there is none). Returns whether nothing is left failing.
    async fn flush_once(&mut self) -> bool {
        if self.pending.is_empty() {
            if self.queued.is_empty() {
                return true;
            }
            // Raw rows whose day is already past the retention would land in
            // a day table about to be dropped (or re-create a dropped one).
            let oldest_kept = self.raw_days.oldest_kept(self.config.raw_retention_days);
            let before = self.queued.raw.len();
            self.queued.raw.retain(|r| r.day() >= oldest_kept);
            let expired = (before - self.queued.raw.len()) as u64;
            if expired > 0 {
                self.metrics.raw_dropped_expired.increment(expired);
            }
            // A backlog (after an outage) is written in bounded transactions,
            // each its own batch, so that none outgrows the flush timeout.
            let batch = self.queued.split_off(MAX_BATCH_ROWS, MAX_BATCH_RAW_ROWS);
            let parts = if batch.rows.len() >= MIN_PARALLEL_ROWS { self.config.pool_size } else { 1 };
            for batch in Batch::parts(batch, parts) {
                let id = BatchId { run_id: self.run_id, batch: self.next_batch };
                self.next_batch += 1;
                self.pending.push(Part { id, batch, minute_landed: false, hour_landed: false });
            }
        }
        let started = Instant::now();
        let mut failure =
            prepare(&self.pool, &self.config, &self.pending, &mut self.migrated, &mut self.raw_days).await.err();
        if failure.is_none() {
            // Minute rows first, so that they are visible without waiting
            // for the hour rows; then the hour rows of every part whose
            // minute rows are in (including parts left from a failed attempt).
            for rollup in [Rollup::Minute, Rollup::Hour] {
                let (pool, config) = (&self.pool, &self.config);
                let attempts = self
                    .pending
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.next() == Some(rollup))
                    .map(|(i, p)| async move { (i, attempt(pool, config, p.id, &p.batch, rollup).await) });
                for (i, result) in futures_util::future::join_all(attempts).await {
                    match result {
                        Ok(written) => self.record_written(i, rollup, written),
                        Err(e) => failure = failure.or(Some(e)),
                    }
                }
            }
        }
        let elapsed = started.elapsed();
        let landed: Vec<Part> = self.pending.extract_if(.., |p| p.next().is_none()).collect();
        for part in landed {
            self.record_landed(&part, elapsed).await;
        }
        match failure {
            None => {
                self.metrics.duration.record(elapsed.as_secs_f64());
                self.metrics
                    .last_flush
                    .set(SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0));
                self.backoff = BACKOFF_MIN;
                self.retry_at = None;
                self.publish_pending();
                true
            }
            Some(e) => {
                self.metrics.failures.increment(1);
                // Re-check the day tables next time: one may have been dropped under us.
                self.raw_days.known.clear();
                let batch = self.pending.first().map_or(0, |p| p.id.batch);
                if e.is_transient() {
                    tracing::warn!(error = %e, batch, retry_in = ?self.backoff, "flush failed; will retry");
                } else {
                    // Never drop accepted data: keep retrying, loudly, so an
                    // operator can fix the schema or permissions.
                    tracing::error!(error = %e, batch, retry_in = ?self.backoff, "flush failed and needs attention; will retry");
                }
                self.retry_at = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                self.publish_pending();
                false
            }
        }
    }

    /// Accounts for one table's rows of part `i` having landed.
    fn record_written(&mut self, i: usize, rollup: Rollup, written: Written) {
        let part = &mut self.pending[i];
        match rollup {
            Rollup::Minute => part.minute_landed = true,
            Rollup::Hour => part.hour_landed = true,
        }
        let (batch, events) = (part.id.batch, part.batch.events);
        let table = rollup.ledger_name();
        match written {
            Written::Now { rows, raw_rows } => {
                let m = &self.metrics;
                match rollup {
                    Rollup::Minute => m.minute_rows.increment(rows),
                    Rollup::Hour => m.hour_rows.increment(rows),
                }
                m.raw_written.increment(raw_rows);
                tracing::trace!(batch, table, events, rows, raw_rows, "written");
            }
            Written::Already => {
                tracing::info!(batch, table, events, "rows had already landed (found in the ledger); not written again")
            }
        }
    }

    /// Accounts for one part that has landed in both tables.
    async fn record_landed(&mut self, part: &Part, elapsed: Duration) {
        let events = part.batch.events;
        self.metrics.events.increment(events);
        tracing::debug!(batch = part.id.batch, events, ?elapsed, "flushed");
        if part.id.batch % PRUNE_EVERY == 0 {
            self.prune_ledger().await;
        }
        let p = &mut self.raw_days;
        self.metrics.day_tables_created.increment(std::mem::take(&mut p.created));
        self.metrics.day_tables_dropped.increment(std::mem::take(&mut p.dropped));
        self.summary.events_written += events;
        self.progress.written(events);
        self.summary.batches += 1;
    }

    async fn prune_ledger(&self) {
        if let Ok(client) = self.pool.get().await {
            if let Err(e) = client.execute(PRUNE_LEDGER, &[]).await {
                tracing::warn!(error = %e, "ledger pruning failed");
            }
        }
    }

    fn publish_pending(&mut self) {
        let pending_events = self.pending.iter().map(|p| p.batch.events).sum::<u64>() + self.queued.events;
        let batches = usize::from(!self.pending.is_empty()) + usize::from(!self.queued.is_empty()) + self.rx.len();
        self.metrics.pending_batches.set(batches as f64);
        self.metrics.pending_events.set(pending_events as f64);
        let keys = self.pending.iter().map(|p| p.batch.minute.len()).sum::<usize>() + self.queued.rows.len();
        let m = &mut self.metrics;
        m.live_keys.increment(keys as f64 - m.published_live_keys as f64);
        m.published_live_keys = keys;
    }
}

/// What the sink knows of `events_sample`'s day tables.
#[derive(Debug, Default)]
struct RawDays {
    /// Days known to have a day table.
    known: BTreeSet<i64>,
    /// When creation ahead of time and retention run next.
    next_maintenance: Option<Instant>,
    /// Created / dropped since last published.
    created: u64,
    dropped: u64,
}

/// Creation ahead of time and retention run this often.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(3600);

impl RawDays {
    fn today() -> i64 {
        raw_days::day_of(bid_logger_core::clock::now_ms())
    }

    fn oldest_kept(&self, retention_days: i64) -> i64 {
        Self::today() - retention_days
    }

    /// Makes sure day tables exist for `days`.
    async fn ensure(
        &mut self,
        client: &mut tokio_postgres::Client,
        days: impl Iterator<Item = i64>,
    ) -> Result<(), SinkError> {
        let missing: BTreeSet<i64> = days.filter(|d| !self.known.contains(d)).collect();
        if !missing.is_empty() {
            self.created += raw_days::ensure(client, &missing).await?;
            self.known.extend(missing);
        }
        Ok(())
    }

    /// Hourly: day tables for yesterday to two days ahead, and retention.
    async fn maintain(&mut self, client: &mut tokio_postgres::Client, config: &SinkConfig) -> Result<(), SinkError> {
        if self.next_maintenance.is_some_and(|at| Instant::now() < at) {
            return Ok(());
        }
        let today = Self::today();
        let oldest = self.oldest_kept(config.raw_retention_days);
        let dropped = raw_days::drop_before(client, oldest).await?;
        self.dropped += dropped.len() as u64;
        self.known.retain(|d| *d >= oldest);
        self.ensure(client, (today - 1).max(oldest)..=today + 2).await?;
        self.next_maintenance = Some(Instant::now() + MAINTENANCE_EVERY);
        Ok(())
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Before writing: applies the migrations if they have not been yet (so a
/// database that is down at start-up is simply retried like any flush), and
/// makes sure `events_sample` has day tables for the raw rows.
async fn prepare(
    pool: &deadpool_postgres::Pool,
    config: &SinkConfig,
    parts: &[Part],
    migrated: &mut bool,
    days_known: &mut RawDays,
) -> Result<(), SinkError> {
    if *migrated && config.raw_sample_ppm == 0 {
        return Ok(());
    }
    let days: Vec<i64> = parts.iter().flat_map(|p| p.batch.raw.iter().map(|r| r.day())).collect();
    let mut client = pool.get().await?;
    let work = async {
        if !*migrated {
            super::migrate(&mut client).await?;
            *migrated = true;
        }
        if config.raw_sample_ppm > 0 {
            days_known.maintain(&mut client, config).await?;
            days_known.ensure(&mut client, days.into_iter()).await?;
        }
        Ok(())
    };
    let outcome = tokio::time::timeout(config.flush_timeout, work).await;
    settle(client, outcome, config.flush_timeout)
}

/// One attempt at one part's `rollup` rows, bounded by `flush_timeout`, on a
/// connection of its own.
async fn attempt(
    pool: &deadpool_postgres::Pool,
    config: &SinkConfig,
    id: BatchId,
    batch: &Batch,
    rollup: Rollup,
) -> Result<Written, SinkError> {
    let mut client = pool.get().await?;
    let (instance, ppm, raw_ppm) = (&config.instance_id, config.sample_ppm, config.raw_sample_ppm);
    let work =
        async { write_rollup(&mut client, instance, id, batch, rollup, ppm, raw_ppm).await.map_err(SinkError::Db) };
    let outcome = tokio::time::timeout(config.flush_timeout, work).await;
    settle(client, outcome, config.flush_timeout)
}

/// The result of work on `client` that was bounded by `timeout`. A
/// connection that saw any error (or a timeout, after which its state is
/// unknown) is discarded rather than returned to the pool.
fn settle<T>(
    client: deadpool_postgres::Object,
    outcome: Result<Result<T, SinkError>, tokio::time::error::Elapsed>,
    timeout: Duration,
) -> Result<T, SinkError> {
    match outcome {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(e)) => {
            drop(deadpool_postgres::Object::take(client));
            Err(e)
        }
        Err(_) => {
            drop(deadpool_postgres::Object::take(client));
            Err(SinkError::Timeout(timeout))
        }
    }
}
