//! The sink task: receives deltas, writes batches, retries, never loses.
//!
//! State is one *pending* batch (immutable once attempted: an attempt may have
//! landed without us knowing, and only an identical retry is safe; a large
//! one is split into parts, written in parallel on their own connections,
//! each in one transaction with its own ledger rows, and a part that landed
//! is not retried with the others) and one *queued* delta that everything
//! arriving meanwhile merges into. So a slow or absent database never piles
//! up batches: at most two exist, and the queued one is bounded by
//! `max_pending_rows` through the same folding as the aggregator's.
//!
//! The coarse tables' delta logs are consumed by a [`Consumer`] task of its
//! own (`consumer.rs`), on its own connection, at each table's interval; a graceful stop
//! consumes them once more after the last batch.

use super::batch::Batch;
use super::consumer::Consumer;
use super::flush::{write_batch, BatchId, KnownBoundaries, Writer, Written, PRUNE_LEDGER};
use super::marks::{self, Fence, Loaded, Previous, Watermark};
use super::SinkConfig;
use crate::assignment::{Assignment, Handover};
use crate::db::maintenance::{self, Maintenance, MaintenanceConfig, RangeBook};
use crate::db::ranges::{self, Parent};
use crate::db::DbError;
use crate::telemetry as t;
use bid_logger_core::aggregate::Delta;
use bid_logger_core::marks::SeqMarks;
use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};

/// Retry delays grow from this …
pub(super) const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// … to this.
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(5);
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
    /// Events the previous run of this instance received but did not write
    /// (a crash), counted as lost at start.
    pub lost_before_start: u64,
}

struct SinkMetrics {
    duration: Histogram,
    /// Per table, in the order of the configured tables.
    expired: Vec<Counter>,
    events: Counter,
    failures: Counter,
    pending_batches: Gauge,
    pending_events: Gauge,
    last_flush: Gauge,
    folded: Counter,
    raw_written: Counter,
    raw_dropped_full: Counter,
    raw_dropped_expired: Counter,
    live_keys: Gauge,
    published_live_keys: usize,
}

/// One part of the pending batch.
struct Part {
    id: BatchId,
    batch: Batch,
    /// The marks recorded with it (every part of a batch records the same).
    mark: Arc<Watermark>,
    /// The `seq` gaps found up to these marks: counted when the first part
    /// of the batch lands (its marks are committed then), shared by the
    /// parts.
    lost: Arc<AtomicU64>,
    /// Its transaction has committed.
    landed: bool,
}

/// A fleet member's sink: what it follows and answers.
pub struct SinkFleet {
    /// The group.
    pub group: String,
    /// The coordinator's assignment: the leases every batch fences with.
    pub assignment: watch::Receiver<Arc<Assignment>>,
    /// Handovers: write everything received so far, then pass the leases.
    pub handover: mpsc::Receiver<Handover>,
    /// Tells the coordinator a flush found a lease taken.
    pub fenced: mpsc::UnboundedSender<u64>,
    /// Times fenced so far: deltas gathered before the last fence are
    /// dropped.
    pub fences: u64,
    /// See [`crate::assignment::idle_timeout`].
    pub idle_timeout: String,
    /// How long a lease pass may wait (see [`crate::fleet::sql::Bounds`]).
    pub bounds: crate::fleet::sql::Bounds,
}

/// The sink: owns the pool, the pending batch and the queued delta.
pub struct Sink {
    config: SinkConfig,
    pool: deadpool_postgres::Pool,
    rx: mpsc::Receiver<Delta>,
    run_id: i64,
    next_batch: i64,
    /// The batch being written, as parts written in parallel (each its own
    /// transaction and ledger rows); a part leaves once it has landed.
    pending: Vec<Part>,
    queued: Delta,
    backoff: Duration,
    retry_at: Option<Instant>,
    /// The failed attempts since the last that succeeded: when the first
    /// failed, how many, and the last error.
    failing: Option<(Instant, u64, String)>,
    /// Whether the sink is writing what is left before it stops.
    stopping: bool,
    /// Whether the schema is known to be up to date (shared with the consumer).
    migrated: Arc<AtomicBool>,
    /// The tables' boundaries as known (shared with the consumer), and
    /// whether they have been read since the start.
    known: Arc<KnownBoundaries>,
    known_read: bool,
    /// The ranges known to exist (kept by the maintenance task too).
    book: Arc<RangeBook>,
    /// The committed marks and those received since (see [`marks`]).
    marks: SeqMarks,
    /// Whether what the previous run left is read and settled.
    loaded: bool,
    /// Where the marks read late go for the ingest threads.
    late: Option<crate::assignment::LateMarks>,
    /// Deltas received (the generation of the marks).
    generation: i64,
    /// Events received.
    drained: i64,
    /// `seq` gaps received, not in a batch yet (see [`Delta::lost`]).
    lost: u64,
    /// The same, per (publisher, topic): `bid_logger_lost`'s rows.
    gaps: rustc_hash::FxHashMap<(Arc<str>, u32), u64>,
    /// A fleet member's links to its coordinator.
    fleet: Option<SinkFleet>,
    /// What was received before a handover's request (the cut): written
    /// before anything received after it.
    cut: Delta,
    /// A batch is still to be formed from `cut` (one is, even when it is
    /// empty, to record the marks that moved).
    cut_due: bool,
    /// Handovers whose leases pass once the cut has landed, before any
    /// other batch is formed.
    handovers: Vec<Handover>,
    /// Leases passed, (partition, epoch), that the assignment still lists:
    /// no batch fences with them.
    passed: BTreeSet<(u32, i64)>,
    summary: SinkSummary,
    metrics: SinkMetrics,
    progress: Arc<t::Progress>,
    /// When this sink started (the first batch says how long it took).
    started: Instant,
}

impl Sink {
    /// A sink writing what arrives on `rx`; `migrated` says whether the
    /// schema is known to be up to date (otherwise the first flush migrates).
    /// `previous` is what the previous run left ([`marks::load`], already
    /// counted), or says that the first flush reads it.
    pub fn new(
        config: SinkConfig,
        pool: deadpool_postgres::Pool,
        rx: mpsc::Receiver<Delta>,
        migrated: bool,
        previous: Previous,
        fleet: Option<SinkFleet>,
        progress: Arc<t::Progress>,
    ) -> Sink {
        let run_id = new_run_id();
        let metrics = SinkMetrics {
            duration: histogram!(t::FLUSH_DURATION),
            expired: config
                .tables
                .iter()
                .map(|tb| counter!(t::ROLLUP_EVENTS_EXPIRED, "table" => tb.name.clone()))
                .collect(),
            events: counter!(t::EVENTS_FLUSHED),
            failures: counter!(t::FLUSH_FAILURES),
            pending_batches: gauge!(t::PENDING_BATCHES),
            pending_events: gauge!(t::PENDING_EVENTS),
            last_flush: gauge!(t::LAST_FLUSH),
            folded: counter!(t::OVERFLOW_FOLDED),
            raw_written: counter!(t::RAW_ROWS_WRITTEN),
            raw_dropped_full: counter!(t::RAW_ROWS_DROPPED, "reason" => "buffer_full"),
            raw_dropped_expired: counter!(t::RAW_ROWS_DROPPED, "reason" => "expired"),
            live_keys: gauge!(t::LIVE_KEYS),
            published_live_keys: 0,
        };
        // Shown from the start, at 0 (see `t::count_lost`).
        counter!(t::MESSAGES_LOST).increment(0);
        let (loaded, late) = match previous {
            Previous::Loaded(l) => (Some(l), None),
            Previous::Unread(late) => (None, late),
        };
        let summary =
            SinkSummary { lost_before_start: loaded.as_ref().map_or(0, |l| l.lost), ..SinkSummary::default() };
        let known = KnownBoundaries::new(config.tables.len());
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
            failing: None,
            stopping: false,
            migrated: Arc::new(AtomicBool::new(migrated)),
            known: Arc::new(known),
            known_read: false,
            book: Arc::new(RangeBook::default()),
            loaded: loaded.is_some(),
            late,
            marks: loaded.map(|l| l.marks).unwrap_or_default(),
            generation: 0,
            drained: 0,
            lost: 0,
            gaps: Default::default(),
            fleet,
            cut: Delta::default(),
            cut_due: false,
            handovers: Vec::new(),
            passed: BTreeSet::new(),
            summary,
            metrics,
            progress,
            started: Instant::now(),
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
        // The consumer learns the shutdown's deadline: the sink's last
        // batches and the logs' last consumption share one
        // `shutdown-timeout`, not one each.
        let (stop_consumer, consumer_stop) = watch::channel(None);
        let consumer = Consumer::new(&self.config, self.run_id, self.migrated.clone(), self.known.clone())
            .map(|c| tokio::spawn(c.run(consumer_stop)));
        let (stop_maintenance, maintenance_stop) = watch::channel(false);
        let maintenance = self.maintenance().map(|m| tokio::spawn(m.run(maintenance_stop)));
        loop {
            let retry_at = self.retry_at.map(tokio::time::Instant::from_std);
            let following = self.fleet.is_some();
            let fleet = self.fleet.as_mut();
            tokio::select! {
                msg = self.rx.recv() => match msg {
                    Some(delta) => self.enqueue(delta),
                    None => break,
                },
                _ = sleep_until_some(retry_at) => {}
                Some(handover) = recv_some(fleet.map(|f| &mut f.handover)) => {
                    // What the threads handed over came before the request.
                    while let Ok(delta) = self.rx.try_recv() {
                        self.enqueue(delta);
                    }
                    self.seal(handover);
                }
                _ = tokio::time::sleep(FOLLOW_EVERY), if following => {}
            }
            self.follow_assignment();
            while let Ok(delta) = self.rx.try_recv() {
                self.enqueue(delta);
            }
            // Write until nothing is left or an attempt fails: what merged
            // while a batch was in flight goes out right after it.
            // What the previous run left is read (and the schema migrated)
            // as soon as the database answers, work or not: a fleet member
            // joins only once the schema is there.
            while self.retry_at.is_none_or(|at| Instant::now() >= at) && (self.has_work() || !self.loaded) {
                if !self.flush_once().await {
                    break;
                }
                while let Ok(delta) = self.rx.try_recv() {
                    self.enqueue(delta);
                }
                // A handover is taken up between batches too: under load
                // this loop may not end for long.
                if let Some(handover) = self.fleet.as_mut().and_then(|f| f.handover.try_recv().ok()) {
                    while let Ok(delta) = self.rx.try_recv() {
                        self.enqueue(delta);
                    }
                    self.seal(handover);
                }
            }
        }
        let deadline = Instant::now() + self.config.shutdown_timeout;
        let _ = stop_maintenance.send(true);
        let summary = self.drain_on_shutdown(deadline).await;
        // The logs hold the last batches' coarse rows: consume them once more.
        let _ = stop_consumer.send(Some(deadline));
        if let Some(consumer) = consumer {
            let _ = consumer.await;
        }
        if let Some(maintenance) = maintenance {
            let _ = maintenance.await;
        }
        summary
    }

    /// The range maintenance task, on a connection of its own.
    fn maintenance(&self) -> Option<Maintenance> {
        let c = &self.config;
        let config = MaintenanceConfig {
            database_url: c.database_url.clone(),
            tables: c.tables.clone(),
            raw_sample: c.raw_sample_ppm > 0,
            raw_retention_days: c.raw_retention_days,
            max_lateness_ms: c.max_lateness_ms,
            timeout: c.flush_timeout,
        };
        match Maintenance::new(config, self.book.clone(), self.migrated.clone()) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::error!(error = %e, "range maintenance cannot start: flushes create the ranges they need");
                None
            }
        }
    }

    async fn drain_on_shutdown(mut self, deadline: Instant) -> SinkSummary {
        self.stopping = true;
        while self.has_work() {
            if Instant::now() >= deadline {
                let unwritten = self.unwritten_events();
                let (since, attempts, last_error) = self.failing.clone().unwrap_or((Instant::now(), 0, String::new()));
                tracing::error!(
                    events_unwritten = unwritten,
                    attempts,
                    failing_for = ?since.elapsed(),
                    last_error = %last_error,
                    timeout = ?self.config.shutdown_timeout,
                    "giving up at shutdown: {attempts} flush attempts failed over {:.1} s (last error: {last_error}); \
                     these accepted events were NOT written",
                    since.elapsed().as_secs_f64()
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

    /// Whether something waits to be written: rows, marks that moved, or
    /// leases to pass.
    fn has_work(&self) -> bool {
        !self.pending.is_empty()
            || !self.queued.is_empty()
            || self.marks.has_moved()
            || self.lost > 0
            || self.cut_due
            || !self.handovers.is_empty()
    }

    /// Cuts for `handover`: everything received so far is written first
    /// (what arrives later waits in `queued`), then the leases pass.
    fn seal(&mut self, handover: Handover) {
        let received = std::mem::take(&mut self.queued);
        if self.cut.is_empty() {
            self.cut = received;
        } else {
            let loss = self.cut.merge(received, self.config.max_pending_rows, self.config.max_raw_rows);
            self.metrics.folded.increment(loss.folded_events);
        }
        self.cut_due = true;
        self.handovers.push(handover);
    }

    /// Passes the handed-over leases (the cut has landed, and no batch was
    /// formed since), and tells the coordinator.
    async fn pass_leases(&mut self) -> Result<(), DbError> {
        let Some(f) = &self.fleet else { return Ok(()) };
        let leases: Vec<(u32, i64)> = self.handovers.iter().flat_map(|h| h.leases.iter().copied()).collect();
        let (bounds, group) = (f.bounds, f.group.clone());
        let mut client = self.pool.get().await?;
        let pass = crate::fleet::sql::pass(&mut client, &bounds, &group, &self.config.instance_id, &leases);
        let to = match crate::fleet::sql::within("passing leases", &bounds, pass).await {
            Ok(to) => to,
            Err(e) => {
                // Its state is unknown after a timeout: not back to the pool.
                let _ = deadpool_postgres::Object::take(client);
                return Err(match e {
                    crate::fleet::sql::FleetError::Database(e) => e,
                    crate::fleet::sql::FleetError::TimedOut { after, .. } => DbError::Timeout(after),
                });
            }
        };
        self.passed.extend(leases.iter().copied());
        for h in self.handovers.drain(..) {
            let mine = to.iter().filter(|(p, _)| h.leases.iter().any(|(l, _)| l == p)).cloned().collect();
            let _ = h.passed.send(mine);
        }
        Ok(())
    }

    /// A fleet member's sink: follows the coordinator's assignment. A new
    /// fence (the member was fenced) drops everything held. (What the
    /// threads gathered before they saw it is dropped as it arrives, by
    /// [`Delta::fences`]; the partitions taken start from their committed
    /// marks when a thread says so, in order with its deltas: see
    /// [`Delta::restart`].)
    fn follow_assignment(&mut self) {
        let Some(f) = &mut self.fleet else { return };
        if f.assignment.has_changed().unwrap_or(false) {
            let a = f.assignment.borrow_and_update().clone();
            self.passed.retain(|held| a.held.contains(held));
            self.apply_fences(a.fences);
        }
    }

    /// Fenced `fences` times so far: when that is new, drops everything
    /// held.
    fn apply_fences(&mut self, fences: u64) {
        if let Some(f) = self.fleet.as_mut().filter(|f| fences > f.fences) {
            f.fences = fences;
            self.fence_out();
        }
    }

    /// Drops every batch and delta held (this member's leases were taken:
    /// the new owners count these events from the committed marks) and
    /// starts a new run, so that what the coordinator settles of the old
    /// one is not counted again.
    fn fence_out(&mut self) {
        let events = self.unwritten_events();
        tracing::error!(
            events,
            "fenced: dropping the batches held; the new owners count them from the committed marks"
        );
        self.pending.clear();
        self.queued = Delta::default();
        self.cut = Delta::default();
        self.cut_due = false;
        self.handovers.clear();
        self.passed.clear();
        self.marks.clear_moved();
        self.lost = 0;
        self.gaps.clear();
        self.run_id = new_run_id();
        self.next_batch = 1;
        self.generation = 0;
        self.drained = 0;
        self.retry_at = None;
        self.backoff = BACKOFF_MIN;
        self.publish_pending();
    }

    fn enqueue(&mut self, mut delta: Delta) {
        if let Some(f) = &self.fleet {
            if delta.fences < f.fences {
                if delta.events > 0 {
                    tracing::warn!(events = delta.events, "fenced: dropped what an ingest thread gathered before");
                }
                return;
            }
            // A thread saw the fence first.
            self.apply_fences(delta.fences);
        }
        let now_ms = bid_logger_core::clock::now_ms();
        if !delta.restart.is_empty() {
            self.marks.restart(&std::mem::take(&mut delta.restart), std::mem::take(&mut delta.seeds), now_ms);
        }
        self.marks.apply(std::mem::take(&mut delta.marks), now_ms);
        self.lost += std::mem::take(&mut delta.lost);
        for g in std::mem::take(&mut delta.gaps) {
            *self.gaps.entry((g.publisher, g.topic)).or_default() += g.messages;
        }
        self.generation += 1;
        self.drained += delta.events as i64;
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
        if !self.loaded {
            if let Err(e) = self.load().await {
                return self.failed(e);
            }
        }
        // The leases a new batch fences with, read once. A fence the
        // coordinator published and no delta has brought yet is applied
        // first: what was gathered before it (a batch waiting for a retry
        // included) must not be written with the leases held after it
        // (none, right after a fence, which every flush would pass).
        let assignment = self.fleet.as_ref().map(|f| f.assignment.borrow().clone());
        if let Some(a) = &assignment {
            self.apply_fences(a.fences);
        }
        if self.pending.is_empty() && !self.cut_due && !self.handovers.is_empty() {
            return match self.pass_leases().await {
                Ok(()) => true,
                Err(e) => self.failed(e),
            };
        }
        if self.pending.is_empty() {
            if !self.cut_due && self.queued.is_empty() && !self.marks.has_moved() && self.lost == 0 {
                return true;
            }
            // A handover's cut goes first, alone.
            let source = if self.cut_due { &mut self.cut } else { &mut self.queued };
            // Raw rows whose day is already past the retention would land in
            // a day table about to be dropped (or re-create a dropped one).
            let oldest_kept = ranges::today() - self.config.raw_retention_days;
            let before = source.raw.len();
            source.raw.retain(|r| r.day() >= oldest_kept);
            let expired = (before - source.raw.len()) as u64;
            if expired > 0 {
                self.metrics.raw_dropped_expired.increment(expired);
            }
            // A backlog (after an outage) is written in bounded transactions,
            // each its own batch, so that none outgrows the flush timeout.
            let batch = source.split_off(MAX_BATCH_ROWS, MAX_BATCH_RAW_ROWS);
            if self.cut_due && self.cut.is_empty() {
                self.cut_due = false;
            }
            let parts = if batch.rows.len() >= MIN_PARALLEL_ROWS { self.config.pool_size } else { 1 };
            let now_ms = bid_logger_core::clock::now_ms();
            let mut moved = self.marks.take_moved(now_ms);
            // The leases this batch fences with: those held, but those passed.
            let fenced: Option<Vec<(u32, i64)>> =
                assignment.as_ref().map(|a| a.held.iter().copied().filter(|h| !self.passed.contains(h)).collect());
            if let Some(fenced) = &fenced {
                // A partition's marks are its owner's to record: only those
                // of leases this batch fences with.
                moved.retain(|(p, _)| fenced.iter().any(|(h, _)| h == p));
            }
            let mark = Arc::new(Watermark {
                partitions: moved.iter().map(|(p, _)| *p as i32).collect(),
                values: moved.into_iter().map(|(_, v)| v).collect(),
                generation: self.generation,
                drained: self.drained,
                fence: self.fleet.as_ref().zip(assignment.as_ref()).zip(fenced).map(|((f, a), fenced)| Fence {
                    group: f.group.clone(),
                    partitions: fenced.iter().map(|&(p, _)| p as i32).collect(),
                    epochs: fenced.iter().map(|&(_, e)| e).collect(),
                    generation: a.generation,
                    idle_timeout: f.idle_timeout.clone(),
                }),
                gaps: marks::Gaps::of(&std::mem::take(&mut self.gaps)),
            });
            let lost = Arc::new(AtomicU64::new(std::mem::take(&mut self.lost)));
            let mut batches = Batch::parts(batch, parts, &self.config.tables, now_ms);
            if batches.is_empty() {
                // Only marks moved (every event sampled out, say): they are
                // recorded all the same.
                batches.push(Batch::empty(&self.config.tables, now_ms));
            }
            for batch in batches {
                for (counter, &expired) in self.metrics.expired.iter().zip(&batch.expired) {
                    counter.increment(expired);
                }
                let id = BatchId { run_id: self.run_id, batch: self.next_batch };
                self.next_batch += 1;
                self.pending.push(Part { id, batch, mark: mark.clone(), lost: lost.clone(), landed: false });
            }
        }
        let started = Instant::now();
        let mut failure = migrate_once(&self.pool, &self.config, &self.migrated).await.err();
        if failure.is_none() && !self.known_read {
            // Before the first batch: which rows of it the views would not
            // show (then the consumptions keep it up to date). Unknown, a
            // batch writes every row of a direct table as a live row.
            let read =
                async { self.known.read(&**self.pool.get().await?, &self.config.tables).await.map_err(DbError::Db) };
            match read.await {
                Ok(()) => self.known_read = true,
                Err(e) => tracing::debug!(error = %e, "cannot read the tables' boundaries yet"),
            }
        }
        if failure.is_none() {
            let (pool, config, book, known) = (&self.pool, &self.config, &self.book, &*self.known);
            let attempts = self.pending.iter().enumerate().filter(|(_, p)| !p.landed).map(|(i, p)| async move {
                let needed = needed_ranges(config, book, &p.batch);
                let result = attempt(pool, config, known, p.id, &p.batch, &p.mark, &needed).await;
                if let Ok(written) = &result {
                    let created = match written {
                        Written::Now { ranges_created, .. } => ranges_created.as_slice(),
                        Written::Already => &[],
                    };
                    for (i, (parent, starts)) in needed.iter().enumerate() {
                        book.add(parent.table, starts);
                        maintenance::count_created(*parent, created.get(i).copied().unwrap_or(0));
                    }
                }
                (i, result)
            });
            for (i, result) in futures_util::future::join_all(attempts).await {
                match result {
                    Ok(written) => self.record_written(i, written),
                    Err(e) => failure = failure.or(Some(e)),
                }
            }
        }
        let elapsed = started.elapsed();
        let landed: Vec<Part> = self.pending.extract_if(.., |p| p.landed).collect();
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
                self.failing = None;
                self.publish_pending();
                true
            }
            Some(e) => self.failed(e),
        }
    }

    /// Accounts for a failed attempt: retry after the backoff; a fleet
    /// member whose fence failed drops what it holds instead.
    fn failed(&mut self, e: DbError) -> bool {
        if e.is_fenced() {
            let generation = self.pending.first().and_then(|p| p.mark.fence.as_ref()).map_or(0, |f| f.generation);
            if let Some(f) = &self.fleet {
                let _ = f.fenced.send(generation);
            }
            self.fence_out();
            return false;
        }
        self.metrics.failures.increment(1);
        let failing = self.failing.get_or_insert_with(|| (Instant::now(), 0, String::new()));
        failing.1 += 1;
        failing.2 = e.to_string();
        if e.is_missing_range() {
            // A range was dropped under us (by another instance's
            // retention, or by hand): read the catalog again.
            self.book.forget_all();
        }
        let batch = self.pending.first().map_or(0, |p| p.id.batch);
        if self.stopping && failing.1 > 1 {
            // At stop, retries go on until `shutdown-timeout` without a
            // line each: the first says why, the last what was not written.
            tracing::debug!(error = %e, batch, "flush at stop failed; will retry");
        } else if e.is_transient() {
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

    /// Reads what the previous run left (when the database was not
    /// reachable at start): the committed marks, and the events it did not
    /// write, counted as lost. A static instance's ingest threads get the
    /// marks through `late`, and count the gap across the restart then.
    async fn load(&mut self) -> Result<(), DbError> {
        let mut client = self.pool.get().await?;
        let config = &self.config;
        let work = async {
            if !self.migrated.load(Ordering::Relaxed) {
                crate::db::migrate(&mut client, &config.tables).await?;
                self.migrated.store(true, Ordering::Relaxed);
            }
            marks::load(&mut client, config.scope(), &config.instance_id).await
        };
        let outcome = tokio::time::timeout(config.flush_timeout, work).await;
        let loaded = settle(client, outcome, config.flush_timeout)?;
        match self.late.take() {
            Some(late) => {
                tracing::info!(
                    marks = loaded.marks.len(),
                    lost = loaded.lost,
                    "committed sequence marks read late (the database was not reachable at start): the gap \
                     across the restart is counted from the first seq each sequence had here"
                );
                // Set once: this is the only place, and `late` is taken.
                let _ = late.set(loaded.marks.clone());
            }
            // A fleet member: its threads are seeded per partition as it
            // takes leases, which it does only once the database answers.
            None => {
                tracing::info!(marks = loaded.marks.len(), lost = loaded.lost, "what the previous run left is read")
            }
        }
        self.account_loaded(&loaded);
        self.marks.add_committed(loaded.marks);
        self.loaded = true;
        Ok(())
    }

    fn account_loaded(&mut self, loaded: &Loaded) {
        account_loaded(loaded);
        self.summary.lost_before_start = loaded.lost;
    }

    /// Accounts for part `i` having landed.
    fn record_written(&mut self, i: usize, written: Written) {
        let part = &mut self.pending[i];
        part.landed = true;
        t::count_lost(part.lost.swap(0, Ordering::Relaxed));
        let (batch, events) = (part.id.batch, part.batch.events);
        match written {
            Written::Now { raw_rows, .. } => {
                self.metrics.raw_written.increment(raw_rows);
                tracing::trace!(batch, events, raw_rows, "written");
            }
            Written::Already => {
                tracing::info!(batch, events, "rows had already landed (found in the ledger); not written again")
            }
        }
    }

    /// Accounts for one part that has landed.
    async fn record_landed(&mut self, part: &Part, elapsed: Duration) {
        let events = part.batch.events;
        self.metrics.events.increment(events);
        tracing::debug!(batch = part.id.batch, events, ?elapsed, "flushed");
        if part.id.batch % PRUNE_EVERY == 0 {
            self.prune_ledger().await;
        }
        self.summary.events_written += events;
        self.progress.written(events);
        if self.summary.batches == 0 {
            tracing::info!(after = ?self.started.elapsed(), events, "first batch landed");
        }
        self.summary.batches += 1;
    }

    async fn prune_ledger(&self) {
        if let Ok(client) = self.pool.get().await {
            for prune in [PRUNE_LEDGER, crate::db::lost::PRUNE_LOST_BATCHES] {
                if let Err(e) = client.execute(prune, &[]).await {
                    tracing::warn!(error = %e, "ledger pruning failed");
                }
            }
        }
    }

    /// Events accepted and not written yet.
    fn unwritten_events(&self) -> u64 {
        self.pending.iter().map(|p| p.batch.events).sum::<u64>() + self.queued.events + self.cut.events
    }

    fn publish_pending(&mut self) {
        let pending_events = self.unwritten_events();
        let batches = usize::from(!self.pending.is_empty())
            + usize::from(!self.queued.is_empty())
            + usize::from(!self.cut.is_empty())
            + self.rx.len();
        self.metrics.pending_batches.set(batches as f64);
        self.metrics.pending_events.set(pending_events as f64);
        let keys =
            self.pending.iter().map(|p| p.batch.rows()).sum::<usize>() + self.queued.rows.len() + self.cut.rows.len();
        let m = &mut self.metrics;
        m.live_keys.increment(keys as f64 - m.published_live_keys as f64);
        m.published_live_keys = keys;
    }
}

/// A run id: random per process start (and per fencing), so batch numbers
/// never collide across runs.
fn new_run_id() -> i64 {
    (SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0) as i64)
        ^ (i64::from(std::process::id()) << 40)
        ^ rand::random::<i64>()
}

/// How often a fleet member's sink looks at its assignment when nothing
/// else wakes it.
const FOLLOW_EVERY: Duration = Duration::from_millis(100);

/// The next item of `rx`, or never when there is none.
async fn recv_some<T>(rx: Option<&mut mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Counts (and logs) what the previous run left unwritten.
pub fn account_loaded(loaded: &Loaded) {
    if loaded.lost > 0 {
        t::count_lost(loaded.lost);
        tracing::warn!(
            events = loaded.lost,
            "the previous run of this instance received events it did not write (it was killed): counted as lost"
        );
    }
    if !loaded.malformed.is_empty() {
        tracing::warn!(partitions = ?loaded.malformed, "committed sequence marks that cannot be read were left out");
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
/// database that is down at start-up is simply retried like any flush).
async fn migrate_once(
    pool: &deadpool_postgres::Pool,
    config: &SinkConfig,
    migrated: &AtomicBool,
) -> Result<(), DbError> {
    if migrated.load(Ordering::Relaxed) {
        return Ok(());
    }
    let mut client = pool.get().await?;
    let work = async {
        crate::db::migrate(&mut client, &config.tables).await?;
        migrated.store(true, Ordering::Relaxed);
        Ok(())
    };
    let outcome = tokio::time::timeout(config.flush_timeout, work).await;
    settle(client, outcome, config.flush_timeout)
}

/// The ranges `batch`'s rows go to that `book` does not know to exist: per
/// range table, the starts (the batch's transaction creates them).
fn needed_ranges<'a>(config: &'a SinkConfig, book: &RangeBook, batch: &Batch) -> Vec<(Parent<'a>, Vec<i64>)> {
    let mut needed = Vec::new();
    let raw_days: BTreeSet<i64> = batch.raw.iter().map(|r| r.day()).collect();
    let missing = book.missing(Parent::RAW, raw_days.into_iter().map(|d| d * 86_400));
    if !missing.is_empty() {
        needed.push((Parent::RAW, missing));
    }
    let now_ms = bid_logger_core::clock::now_ms();
    for (t, table) in config.tables.iter().enumerate() {
        // A fed table's rows reach it later, from its chain's first table's rows.
        let oldest_hour = table.oldest_minute(now_ms).div_euclid(60);
        let hours = table_hours(batch, crate::db::tables::batch_source(&config.tables, t));
        let parent = Parent::rollup(table);
        let missing = book.missing(parent, hours.into_iter().filter(|&h| h >= oldest_hour).map(|h| h * 3600));
        if !missing.is_empty() {
            needed.push((parent, missing));
        }
    }
    needed
}

/// The hours (since the epoch) of table `t`'s rows in `batch`.
fn table_hours(batch: &Batch, t: usize) -> BTreeSet<i64> {
    // A batch's rows are in a few hours (interleaved: rows are in day,
    // then dimension order): a short list beats a set per row.
    let mut hours: Vec<i64> = Vec::new();
    let mut last = None;
    for (key, _) in &batch.tables[t] {
        let hour = key.minute.div_euclid(60);
        if last.replace(hour) != Some(hour) && !hours.contains(&hour) {
            hours.push(hour);
        }
    }
    hours.into_iter().collect()
}

/// One attempt at one part, bounded by `flush_timeout`, on a connection of
/// its own.
async fn attempt(
    pool: &deadpool_postgres::Pool,
    config: &SinkConfig,
    known: &KnownBoundaries,
    id: BatchId,
    batch: &Batch,
    mark: &Watermark,
    ranges: &[(Parent<'_>, Vec<i64>)],
) -> Result<Written, DbError> {
    let mut client = pool.get().await?;
    let to = Writer {
        instance: &config.instance_id,
        scope: config.scope(),
        tables: &config.tables,
        sample_ppm: config.sample_ppm,
        raw_sample_ppm: config.raw_sample_ppm,
        known,
    };
    let work = async { write_batch(&mut client, &to, id, batch, mark, ranges).await.map_err(DbError::Db) };
    let outcome = tokio::time::timeout(config.flush_timeout, work).await;
    settle(client, outcome, config.flush_timeout)
}

/// The result of work on `client` that was bounded by `timeout`. A
/// connection that saw any error (or a timeout, after which its state is
/// unknown) is discarded rather than returned to the pool.
pub(super) fn settle<T>(
    client: deadpool_postgres::Object,
    outcome: Result<Result<T, DbError>, tokio::time::error::Elapsed>,
    timeout: Duration,
) -> Result<T, DbError> {
    match outcome {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(e)) => {
            drop(deadpool_postgres::Object::take(client));
            Err(e)
        }
        Err(_) => {
            drop(deadpool_postgres::Object::take(client));
            Err(DbError::Timeout(timeout))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bid_logger_core::seq::{topic_id, Mark};

    /// A fleet member's sink with no database behind it (nothing here
    /// flushes) and the sender of its assignment.
    fn member_sink() -> (Sink, watch::Sender<Arc<Assignment>>) {
        let config = SinkConfig {
            database_url: "postgres://nobody@127.0.0.1:1/none".into(),
            instance_id: "m".into(),
            flush_interval: Duration::from_secs(1),
            flush_timeout: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(1),
            pool_size: 1,
            max_pending_rows: 1000,
            sample_ppm: [1_000_000; bid_logger_core::wire::EventType::ALL.len()],
            raw_sample_ppm: 0,
            raw_retention_days: 1,
            max_raw_rows: 1000,
            max_lateness_ms: 60_000,
            tables: Vec::new(),
            group: Some("g".into()),
        };
        let pool = crate::db::pool(&config.database_url, 1).unwrap();
        let (_deltas, rx) = mpsc::channel(1);
        let (assignment, assignment_rx) = watch::channel(Arc::default());
        let (_handovers, handover) = mpsc::channel(1);
        let (fenced, _) = mpsc::unbounded_channel();
        let fleet = SinkFleet {
            group: "g".into(),
            assignment: assignment_rx,
            handover,
            fenced,
            fences: 0,
            idle_timeout: String::new(),
            bounds: crate::fleet::sql::Bounds::new(Duration::from_secs(3)),
        };
        let previous = Previous::Loaded(Loaded::default());
        (Sink::new(config, pool, rx, true, previous, Some(fleet), Arc::default()), assignment)
    }

    fn delta(events: u64, fences: u64, marks: &[(u32, u64)]) -> Delta {
        let marks = marks.iter().map(|&(p, seq)| Mark { publisher: "bidder".into(), topic: topic_id(1, p), seq });
        // A gap per event here: what matters is where the count goes.
        Delta { events, fences, marks: marks.collect(), lost: events, ..Delta::default() }
    }

    /// What a thread gathered before a fence is the new owners' to count
    /// (they start from the committed marks): the sink drops it, however
    /// late it arrives and whether or not the sink has seen the fence in
    /// the assignment yet, and keeps what was gathered after. The `seq`
    /// gaps it found go with it: the new owners count them too (from the
    /// marks), so counting them here as well would count them twice.
    #[tokio::test]
    async fn what_a_thread_gathered_before_a_fence_is_dropped_and_what_it_gathered_after_is_kept() {
        let (mut sink, assignment) = member_sink();
        sink.enqueue(delta(10, 0, &[(3, 100)]));
        assert_eq!((sink.drained, sink.lost), (10, 10));
        // One thread saw the fence before the sink did.
        sink.enqueue(delta(5, 1, &[]));
        assert_eq!(sink.drained, 5, "the 10 gathered before the fence are dropped, the 5 after kept");
        assert_eq!(sink.lost, 5, "the gaps found before the fence are the new owners' to count");
        assert!(!sink.marks.has_moved(), "the marks gathered before the fence are not written");
        // Another thread's delta from before the fence, arriving late.
        sink.enqueue(delta(7, 0, &[(3, 120)]));
        assert_eq!((sink.drained, sink.lost), (5, 5));
        assert!(!sink.marks.has_moved());
        // The sink sees the fence in the assignment now: nothing more to drop.
        assignment.send_replace(Arc::new(Assignment { generation: 9, fences: 1, ..Assignment::default() }));
        sink.follow_assignment();
        assert_eq!(sink.drained, 5);
        sink.enqueue(delta(2, 1, &[(3, 130)]));
        assert_eq!((sink.drained, sink.lost), (7, 7));
        let moved = sink.marks.take_moved(bid_logger_core::clock::now_ms());
        assert_eq!(moved.iter().map(|(p, _)| *p).collect::<Vec<_>>(), [3]);
    }

    /// A batch formed after the coordinator published a fence, before any
    /// delta or the sink's loop brought it, writes nothing gathered before
    /// it: right after a fence the member holds no lease, so a batch fenced
    /// with what it holds then would pass its fence with the old rows.
    #[tokio::test]
    async fn a_batch_formed_after_a_fence_the_sink_has_not_followed_yet_writes_nothing_from_before() {
        let (mut sink, assignment) = member_sink();
        assignment.send_replace(Arc::new(Assignment { generation: 1, held: vec![(3, 1)], ..Assignment::default() }));
        sink.follow_assignment();
        sink.enqueue(delta(10, 0, &[(3, 100)]));
        assignment.send_replace(Arc::new(Assignment { generation: 2, fences: 1, ..Assignment::default() }));
        assert!(sink.flush_once().await, "nothing left to write");
        assert!(sink.pending.is_empty(), "no batch formed");
        assert_eq!((sink.drained, sink.lost), (0, 0));
        // The same for a batch formed before the fence, waiting for a retry.
        assignment.send_replace(Arc::new(Assignment {
            generation: 3,
            held: vec![(3, 2)],
            fences: 1,
            ..Assignment::default()
        }));
        sink.enqueue(delta(4, 1, &[(3, 200)]));
        assert!(!sink.flush_once().await, "nothing listens at the database address");
        assert_eq!(sink.pending.len(), 1, "the batch waits for a retry");
        assignment.send_replace(Arc::new(Assignment { generation: 4, fences: 2, ..Assignment::default() }));
        assert!(sink.flush_once().await, "nothing left to write");
        assert!(sink.pending.is_empty(), "the batch from before the fence is dropped");
    }

    /// Only the marks of partitions the batch fences with are recorded: a
    /// partition's marks are its owner's.
    #[tokio::test]
    async fn a_batch_records_the_marks_of_held_partitions_only() {
        let (mut sink, assignment) = member_sink();
        assignment.send_replace(Arc::new(Assignment { generation: 1, held: vec![(3, 1)], ..Assignment::default() }));
        sink.follow_assignment();
        sink.enqueue(delta(10, 0, &[(3, 100), (5, 100)]));
        assert!(!sink.flush_once().await, "nothing listens at the database address");
        let part = sink.pending.first().expect("the batch waits for a retry");
        assert_eq!(part.mark.partitions, [3]);
        assert_eq!(part.mark.fence.as_ref().map(|f| f.partitions.clone()), Some(vec![3]));
    }
}
