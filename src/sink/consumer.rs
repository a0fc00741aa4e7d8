//! The coarse tables' delta-log consumer: a task of its own, on its own
//! connection, that moves each logged table's delta log into the table at
//! the table's interval; a graceful stop consumes every log once more after
//! the last batch.

use super::flush::{consume, KnownBoundaries, MoveBudget, Moved, MAX_CONSUME_ROWS};
use super::service::{settle, BACKOFF_MAX, BACKOFF_MIN};
use super::SinkConfig;
use crate::db::tables::RollupTable;
use crate::db::DbError;
use crate::telemetry as t;
use metrics::{counter, gauge};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// Passes at a stop, beyond the first, over the logs of tables fed after
/// they were consumed (by rows appended under other links than today's:
/// each link of a feed is between two different tables, and a chain of
/// them is a few tables long).
const MAX_STOP_PASSES: usize = 8;

/// Reads the coarse tables' delta logs into their tables, each at its own
/// interval, on a connection of its own (so a long consumption never delays
/// a batch).
pub struct Consumer {
    tables: Vec<RollupTable>,
    /// Every configured table (what a log row's `feeds` names).
    all: Vec<RollupTable>,
    pool: deadpool_postgres::Pool,
    instance: String,
    run_id: i64,
    seq: i64,
    flush_timeout: Duration,
    migrated: Arc<AtomicBool>,
    /// Per table: log rows taken per transaction (one after a timeout,
    /// doubled back after each success).
    limit: Vec<i64>,
    /// The boundaries as known (by the configured tables' order, shared
    /// with the batches), and each of `tables`' place in that order.
    known: Arc<KnownBoundaries>,
    configured: Vec<usize>,
}

/// What one attempt at a log found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogState {
    /// Consumed, nothing left; `fed`: the tables (bits of [`Consumer::all`])
    /// whose logs it passed sums on to.
    Empty { fed: u64 },
    /// Consumed, more left (`fed` as for `Empty`).
    More { fed: u64 },
    /// Another consumer holds the log's lock (another instance, or a
    /// timed-out attempt of ours whose transaction the server is still
    /// rolling back).
    Busy,
}

impl Consumer {
    /// `None` when no table is logged.
    pub fn new(
        config: &SinkConfig,
        run_id: i64,
        migrated: Arc<AtomicBool>,
        known: Arc<KnownBoundaries>,
    ) -> Option<Consumer> {
        // A table feeding others comes before them, so that a pass over every
        // log (at the stop) carries the feeder's rows all the way.
        // Every table has a log: a coarse table's is its only way in, a
        // direct table's is folded (with its live rows) into its merged table.
        let mut logged: Vec<usize> = (0..config.tables.len()).collect();
        logged.sort_by_key(|&t| crate::db::tables::chain(&config.tables, t).count());
        let tables: Vec<RollupTable> = logged.iter().map(|&t| config.tables[t].clone()).collect();
        for table in &tables {
            // exported from the start, so that rates and alerts see a zero
            counter!(t::LOG_FAILURES, "table" => table.name.clone()).increment(0);
            counter!(t::ROWS_UPSERTED, "table" => table.name.clone()).increment(0);
        }
        if tables.is_empty() {
            return None;
        }
        let pool = match crate::db::pool(&config.database_url, 1) {
            Ok(pool) => pool,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the delta-log consumer's pool");
                return None;
            }
        };
        Some(Consumer {
            all: config.tables.clone(),
            tables,
            pool,
            instance: config.instance_id.clone(),
            run_id,
            seq: -1,
            flush_timeout: config.flush_timeout,
            migrated,
            limit: vec![MAX_CONSUME_ROWS; config.tables.len()],
            known,
            configured: logged,
        })
    }

    /// Consumes each log at its table's interval until `stop` carries the
    /// shutdown's deadline, then every log once more, trying until then.
    pub async fn run(mut self, mut stop: watch::Receiver<Option<Instant>>) {
        let start = tokio::time::Instant::now();
        let mut due: Vec<tokio::time::Instant> = self.tables.iter().map(|t| start + t.consume_interval()).collect();
        let mut backoff = vec![BACKOFF_MIN; self.tables.len()];
        loop {
            let next = due.iter().min().copied().unwrap_or(start);
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = stop.changed() => break,
            }
            let now = tokio::time::Instant::now();
            for i in 0..self.tables.len() {
                if due[i] > now {
                    continue;
                }
                if !self.migrated.load(Ordering::Relaxed) {
                    due[i] = now + BACKOFF_MIN;
                    continue;
                }
                match self.consume(i, None, true).await {
                    Ok(_) => {
                        backoff[i] = BACKOFF_MIN;
                        due[i] = tokio::time::Instant::now() + self.tables[i].consume_interval();
                    }
                    Err(e) => {
                        tracing::warn!(table = %self.tables[i].name, error = %e, retry_in = ?backoff[i],
                            "consuming the delta log failed; will retry (its rows stay in the log)");
                        due[i] = tokio::time::Instant::now() + backoff[i];
                        backoff[i] = (backoff[i] * 2).min(BACKOFF_MAX);
                    }
                }
            }
        }
        let deadline = stop.borrow().unwrap_or_else(Instant::now);
        let mut left: Vec<usize> = (0..self.tables.len()).collect();
        if !self.migrated.load(Ordering::Relaxed) {
            // The database never answered this run: nothing to consume.
            tracing::info!("stopping without consuming the delta logs: the database did not answer this run");
            return;
        }
        let mut last_error: Option<String> = None;
        let mut wait = BACKOFF_MIN;
        let mut passes = 0;
        let mut done: Vec<usize> = Vec::new();
        while !left.is_empty() && Instant::now() < deadline {
            let mut failed: Vec<usize> = Vec::new();
            let mut again: Vec<usize> = Vec::new();
            for i in left {
                // A table fed from a log still pending waits for it (feeders
                // come first in `tables`, so it is retried after it).
                let feeder = self.tables[i].fed_by.as_deref();
                if failed.iter().any(|&f| Some(self.tables[f].name.as_str()) == feeder) {
                    failed.push(i);
                    continue;
                }
                // (no boundary moves at the stop: the next run's folds move it)
                match self.consume(i, Some(deadline), false).await {
                    Ok(LogState::Empty { fed }) => {
                        done.push(i);
                        // A row appended under other links (an earlier
                        // run's or build's) may feed a table consumed
                        // before it: that one goes again.
                        for (j, t) in self.tables.iter().enumerate() {
                            let bit = crate::db::tables::bit_of(&self.all, &t.name);
                            if fed & bit != 0 && done.contains(&j) && !again.contains(&j) {
                                again.push(j);
                                done.retain(|&d| d != j);
                            }
                        }
                    }
                    Ok(LogState::More { .. }) => {
                        // the deadline came with rows left
                        last_error = Some("shutdown-timeout reached with rows left in the log".into());
                        failed.push(i);
                    }
                    Ok(LogState::Busy) => failed.push(i), // try again until the lock is ours
                    Err(e) => {
                        if last_error.is_none() {
                            tracing::warn!(table = %self.tables[i].name, error = %e,
                                "consuming the delta logs at stop failed; retrying until shutdown-timeout");
                        }
                        last_error = Some(e.to_string());
                        failed.push(i);
                    }
                }
            }
            let retry = !failed.is_empty();
            if !again.is_empty() && passes < MAX_STOP_PASSES {
                passes += 1;
                failed.extend(again);
                failed.sort_unstable(); // (the feeders first, as in the first pass)
                failed.dedup();
            }
            left = failed;
            if retry {
                tokio::time::sleep(wait.min(deadline.saturating_duration_since(Instant::now()))).await;
                wait = (wait * 2).min(BACKOFF_MAX);
            }
        }
        if !left.is_empty() {
            let tables: Vec<&str> = left.iter().map(|&i| self.tables[i].name.as_str()).collect();
            tracing::warn!(
                ?tables,
                last_error = last_error.as_deref().unwrap_or("busy: another instance was consuming them"),
                "stopping before these tables' delta logs were consumed: their rows are committed in the logs \
                 (nothing is lost), and the next consumer adds them to the tables"
            );
        }
    }

    /// Consumes table `i`'s log until it is empty (each transaction bounded)
    /// or busy, or `until` has passed.
    async fn consume(&mut self, i: usize, until: Option<Instant>, moving: bool) -> Result<LogState, DbError> {
        let mut fed_so_far = 0;
        loop {
            match self.consume_once(i, until, moving).await? {
                LogState::More { fed } if until.is_none_or(|t| Instant::now() < t) => fed_so_far |= fed,
                LogState::More { fed } => return Ok(LogState::More { fed: fed_so_far | fed }),
                LogState::Empty { fed } => return Ok(LogState::Empty { fed: fed_so_far | fed }),
                LogState::Busy => return Ok(LogState::Busy),
            }
        }
    }

    /// One transaction of consuming table `i`'s log, bounded by the flush
    /// timeout (and by `until`); moving its boundary when due and `moving`.
    async fn consume_once(&mut self, i: usize, until: Option<Instant>, moving: bool) -> Result<LogState, DbError> {
        let table = &self.tables[i];
        self.seq -= 1; // consumptions count down in the ledger, batches up
        let mut client = self.pool.get().await?;
        let (instance, id, limit) = (&self.instance, (self.run_id, self.seq), self.limit[i]);
        let now_ms = bid_logger_core::clock::now_ms();
        // A move fits inside the flush timeout: one cut by it would lose
        // the fold before it (the savepoint needs the connection).
        let move_within = moving.then(|| MoveBudget::within(self.flush_timeout));
        let work = async { consume(&mut client, instance, id, table, &self.all, limit, now_ms, move_within).await };
        let timeout = until.map_or(self.flush_timeout, |t| {
            self.flush_timeout.min(t.saturating_duration_since(Instant::now()).max(Duration::from_millis(100)))
        });
        let outcome = tokio::time::timeout(timeout, work).await;
        let done = settle(client, outcome, timeout);
        let labels = [("table", table.name.clone())];
        match done {
            Ok(c) if c.busy => Ok(LogState::Busy),
            Ok(c) => {
                if let Some(boundary) = c.boundary {
                    self.known.saw(self.configured[i], boundary);
                }
                self.limit[i] = (limit * 2).min(MAX_CONSUME_ROWS);
                counter!(t::LOG_EVENTS_CONSUMED, &labels).increment(c.events);
                counter!(t::ROWS_UPSERTED, &labels).increment(c.rows);
                counter!(t::ROLLUP_EVENTS_EXPIRED, &labels).increment(c.expired);
                let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
                gauge!(t::LOG_LAST_CONSUMED, &labels).set(now);
                if c.moved == Moved::OutOfTime {
                    let retry_in = Duration::from_secs(c.move_retry.unwrap_or_default().as_secs_f64().round() as u64);
                    tracing::warn!(table = %table.name, ?retry_in,
                        "moving the boundary ran out of time (a lock on its tables held it, or its work took half of flush-timeout); \
                         undone, the fold is kept");
                }
                tracing::trace!(table = %table.name, events = c.events, rows = c.rows, "delta log consumed");
                Ok(if c.more { LogState::More { fed: c.fed } } else { LogState::Empty { fed: c.fed } })
            }
            Err(e) => {
                if matches!(e, DbError::Timeout(_)) {
                    // One batch's rows per transaction until they fit again
                    // (halving would take six timeouts to get there).
                    self.limit[i] = 1;
                }
                counter!(t::LOG_FAILURES, &labels).increment(1);
                Err(e)
            }
        }
    }
}
