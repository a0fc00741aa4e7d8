//! Range maintenance, apart from any flush: at start-up and then every
//! [`MAINTENANCE_EVERY`], idle or not, on a connection of its own, it drops
//! the ranges past each table's retention and creates the ranges from the
//! oldest accepted event time to two days ahead, nearest to now first.
//!
//! A flush never waits for it. What it knows to exist goes into the
//! [`RangeBook`] the sink reads: a batch creates, inside its own
//! transaction, only the ranges its rows need that the book does not list
//! (on a fresh warehouse, before the first maintenance has got there).
//! Failures are retried with a backoff, logged, counted
//! (`bid_logger_maintenance_failures_total`) and alerted on through
//! `bid_logger_last_maintenance_timestamp_seconds`.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics::{counter, gauge};
use tokio::sync::watch;

use super::ranges::{self, Parent};
use super::tables::RollupTable;
use super::DbError;
use crate::telemetry as t;

/// Maintenance runs this often once it has succeeded.
pub const MAINTENANCE_EVERY: Duration = Duration::from_secs(15 * 60);

/// Ranges created in one transaction at most: what is created stays
/// created when a later chunk fails, and the range lock (which a batch
/// needing a range of its own waits for) is held for a few creations only
/// (each takes 0.1–0.5 s on a loaded server).
const RANGES_PER_TRANSACTION: usize = 6;

/// Ranges are created this far ahead of the clock.
const AHEAD_S: i64 = 2 * 86_400;

/// First and longest wait before retrying a failed maintenance.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// The ranges known to exist, per table (starts, seconds since the epoch),
/// shared by the maintenance task and the sink.
#[derive(Debug, Default)]
pub struct RangeBook {
    known: Mutex<HashMap<String, BTreeSet<i64>>>,
}

impl RangeBook {
    /// The starts of the ranges of `parent` holding `times_s` that are not
    /// known to exist, sorted.
    pub fn missing(&self, parent: Parent<'_>, times_s: impl Iterator<Item = i64>) -> Vec<i64> {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let have = known.get(parent.table);
        let mut starts: Vec<i64> =
            times_s.map(|t| parent.span.start(t)).filter(|s| have.is_none_or(|h| !h.contains(s))).collect();
        starts.sort_unstable();
        starts.dedup();
        starts
    }

    /// Records that `table`'s ranges starting at `starts` exist.
    pub fn add(&self, table: &str, starts: &[i64]) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.entry(table.to_string()).or_default().extend(starts);
    }

    /// Forgets what is known of `table` (ranges were dropped).
    pub fn forget(&self, table: &str) {
        self.known.lock().unwrap_or_else(|e| e.into_inner()).remove(table);
    }

    /// Forgets everything: a write found no range for its rows (one was
    /// dropped by someone else), so the catalog is read again.
    pub fn forget_all(&self) {
        self.known.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// What maintenance keeps.
#[derive(Debug, Clone)]
pub struct MaintenanceConfig {
    /// The PostgreSQL URL (a pool of one connection is made from it).
    pub database_url: String,
    /// The rollup tables.
    pub tables: Vec<RollupTable>,
    /// Whether `events_sample` is written (its day ranges are kept then).
    pub raw_sample: bool,
    /// Days of `events_sample` kept.
    pub raw_retention_days: i64,
    /// Oldest accepted event time relative to now, ms.
    pub max_lateness_ms: i64,
    /// Longest one round may take (what it created stays created).
    pub timeout: Duration,
}

/// The maintenance task.
pub struct Maintenance {
    config: MaintenanceConfig,
    pool: deadpool_postgres::Pool,
    book: Arc<RangeBook>,
    /// Whether the schema is known to be up to date (shared with the sink).
    migrated: Arc<AtomicBool>,
}

impl Maintenance {
    /// A task keeping the ranges of `config`'s tables, recording them in `book`.
    pub fn new(
        config: MaintenanceConfig,
        book: Arc<RangeBook>,
        migrated: Arc<AtomicBool>,
    ) -> Result<Maintenance, DbError> {
        let pool = super::pool(&config.database_url, 1)?;
        Ok(Maintenance { config, pool, book, migrated })
    }

    /// Runs a round now, then every [`MAINTENANCE_EVERY`] (after a failure,
    /// after a backoff), until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        counter!(t::MAINTENANCE_FAILURES).increment(0);
        let mut retry = RETRY_MIN;
        let mut failures = 0u32;
        loop {
            let wait = match self.round().await {
                Ok(()) => {
                    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
                    gauge!(t::LAST_MAINTENANCE).set(now);
                    if failures > 0 {
                        tracing::info!(failures, "range maintenance succeeded again");
                    }
                    (retry, failures) = (RETRY_MIN, 0);
                    MAINTENANCE_EVERY
                }
                Err(e) => {
                    counter!(t::MAINTENANCE_FAILURES).increment(1);
                    failures += 1;
                    if e.is_transient() {
                        tracing::warn!(error = %e, retry_in = ?retry, "range maintenance failed; will retry");
                    } else {
                        tracing::error!(
                            error = %e,
                            retry_in = ?retry,
                            "range maintenance failed and needs attention; will retry (flushes create the ranges \
                             they need meanwhile)"
                        );
                    }
                    let wait = retry;
                    retry = (retry * 2).min(RETRY_MAX);
                    wait
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
        }
    }

    /// One round on one connection, bounded by the timeout; a connection
    /// that saw an error or the timeout is discarded.
    async fn round(&self) -> Result<(), DbError> {
        let mut client = self.pool.get().await?;
        let timeout = self.config.timeout;
        let outcome =
            tokio::time::timeout(timeout, self.round_on(&mut client)).await.unwrap_or(Err(DbError::Timeout(timeout)));
        if outcome.is_err() {
            drop(deadpool_postgres::Object::take(client));
        }
        outcome
    }

    async fn round_on(&self, client: &mut tokio_postgres::Client) -> Result<(), DbError> {
        if !self.migrated.load(Ordering::Relaxed) {
            super::migrate(client, &self.config.tables).await?;
            self.migrated.store(true, Ordering::Relaxed);
        }
        let config = &self.config;
        let now_ms = bid_logger_core::clock::now_ms();
        let now_s = now_ms.div_euclid(1000);
        let oldest_accepted_s = (now_ms - config.max_lateness_ms).div_euclid(1000);
        // Creation first, retention after: a drop stuck behind a reader
        // must not keep the ranges ahead from being made.
        let mut retention = Vec::new();
        if config.raw_sample {
            let oldest = (ranges::today() - config.raw_retention_days) * 86_400;
            self.ensure(client, Parent::RAW, (now_s - 86_400).max(oldest), now_s).await?;
            retention.push((Parent::RAW, oldest));
        }
        for table in &config.tables {
            let parent = Parent::rollup(table);
            let mut from_s = oldest_accepted_s;
            if let Some(r) = table.retention {
                let cutoff_s = (now_ms - r.as_millis() as i64).div_euclid(1000);
                retention.push((parent, cutoff_s));
                from_s = from_s.max(cutoff_s);
            }
            self.ensure(client, parent, from_s, now_s).await?;
        }
        for (parent, cutoff_s) in retention {
            self.retain(client, parent, cutoff_s).await?;
        }
        Ok(())
    }

    /// Drops `parent`'s ranges that end by `cutoff_s`.
    async fn retain(
        &self,
        client: &mut tokio_postgres::Client,
        parent: Parent<'_>,
        cutoff_s: i64,
    ) -> Result<(), DbError> {
        let dropped = ranges::drop_ending_by(client, parent.table, cutoff_s).await?;
        if !dropped.is_empty() {
            self.book.forget(parent.table);
            let n = dropped.len() as u64;
            if parent.rollup {
                // labelled with the table's own name, not its merged table's
                let table = parent.table.strip_suffix("_merged").unwrap_or(parent.table);
                counter!(t::ROLLUP_PARTITIONS_DROPPED, "table" => table.to_string()).increment(n);
            } else {
                counter!(t::RAW_PARTITIONS_DROPPED).increment(n);
            }
        }
        Ok(())
    }

    /// Creates `parent`'s missing ranges from `from_s` to two days past
    /// `now_s`, nearest to now first (a fresh warehouse gets the ranges of
    /// the current traffic before those of days back).
    async fn ensure(
        &self,
        client: &mut tokio_postgres::Client,
        parent: Parent<'_>,
        from_s: i64,
        now_s: i64,
    ) -> Result<(), DbError> {
        let wanted = self.book.missing(parent, parent.span.starts(from_s, now_s + AHEAD_S));
        if wanted.is_empty() {
            return Ok(());
        }
        // What the catalog has is known at once (one query, no lock): a
        // process starting on a warehouse with history creates nothing.
        let existing = ranges::list(&*client, parent.table).await?;
        let (there, mut missing): (Vec<i64>, Vec<i64>) =
            wanted.into_iter().partition(|&s| ranges::covered(&existing, s, parent.span.end(s)));
        self.book.add(parent.table, &there);
        missing.sort_by_key(|&s| (s - now_s).abs());
        for chunk in missing.chunks(RANGES_PER_TRANSACTION) {
            let created = ranges::ensure(client, parent, chunk).await?;
            self.book.add(parent.table, chunk);
            count_created(parent, created.len() as u64);
        }
        Ok(())
    }
}

/// Counts ranges created for `parent`.
pub fn count_created(parent: Parent<'_>, n: u64) {
    if n == 0 {
        return;
    }
    if parent.rollup {
        counter!(t::ROLLUP_PARTITIONS_CREATED, "table" => parent.table.to_string()).increment(n);
    } else {
        counter!(t::RAW_PARTITIONS_CREATED).increment(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::ranges::Span;

    #[test]
    fn the_book_lists_what_is_missing_once_per_range() {
        let book = RangeBook::default();
        let parent = Parent { table: "rollup_minute", span: Span::Hour, rollup: true };
        let t = 1_764_180_000;
        let hour = Span::Hour.start(t);
        assert_eq!(book.missing(parent, [t, t + 1, t + 3600].into_iter()), [hour, hour + 3600]);
        book.add("rollup_minute", &[hour]);
        assert_eq!(book.missing(parent, [t, t + 3600].into_iter()), [hour + 3600]);
        book.forget_all();
        assert_eq!(book.missing(parent, [t].into_iter()), [hour]);
    }
}
