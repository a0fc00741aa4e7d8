//! One ingest thread: its socket, its hot path, its counters, and the loop
//! that runs them; [`spawn`] starts them all.

use super::pacer::Pacer;
use super::socket::{open_sources, set_subscribed, EndpointActivity, Source};
use super::topics::subscriptions;
use super::{IngestConfig, IngestError};
use crate::assignment::{Assignment, LateMarks};
use crate::telemetry as t;
use bid_logger_core::aggregate::{AggregateConfig, AggregateStats, ClickUnpaired, Delta, Unpaired};
use bid_logger_core::buffer::{BufferStats, ClaimBuffer};
use bid_logger_core::clock::{coarse_monotonic_ms, now_ms};
use bid_logger_core::decode::DecodeError;
use bid_logger_core::hot_path::HotPath;
use bid_logger_core::marks::SeqMarks;
use bid_logger_core::seq::Mark;
use bid_logger_core::wire::topic;
use bid_logger_core::wire::{EventType, MAX_PARTITIONS};
use metrics::{counter, gauge, Counter, Gauge};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// How many bytes of claimed partitions' messages a fleet member buffers at
/// most until their leases are passed, over all its ingest threads (about
/// five seconds of a third of a 200 000 events/s stream). What does not fit
/// is counted as lost at the replay.
pub const BUFFER_LIMIT_BYTES: usize = 256 << 20;

/// How often (at most) the loop refreshes its event-time clock, checks the
/// stop flag and the flush deadline, in milliseconds of the coarse clock.
const HOUSEKEEPING_MS: u64 = 10;
/// How often local counts are added to the exported metrics.
const PUBLISH_EVERY: Duration = Duration::from_millis(200);
/// With several endpoints, how many messages in a row one source gives
/// before the next is read: each gets its turn under any load, and a busy
/// one is read in runs long enough that switching costs nothing.
const SOURCE_RUN: u32 = 256;

/// Metric handles of one ingest thread; counts are kept locally per message
/// and added here in batches (a few times per second).
struct IngestMetrics {
    received: Counter,
    accepted: [Counter; 8],
    invalid: [Counter; DecodeError::COUNT],
    sampled_out: Counter,
    late: Counter,
    future: Counter,
    restarts: Counter,
    resets: Counter,
    evicted: Counter,
    mismatches: Counter,
    folded: Counter,
    paired: Counter,
    /// Per [`Unpaired`], then `stopped`.
    unpaired: [Counter; 5],
    waiting: Gauge,
    published_waiting: usize,
    clicks_paired: Counter,
    /// Per [`ClickUnpaired`], then `stopped`.
    clicks_unpaired: [Counter; 4],
    impressions_unkept: Counter,
    clicks_waiting: Gauge,
    published_clicks_waiting: usize,
    raw_dropped: Counter,
    live_keys: Gauge,
    published_live_keys: usize,
    /// By outcome: replayed, duplicate, unsequenced, overflowed.
    handover: [Counter; 4],
    buffered_bytes: Gauge,
    published_buffered_bytes: usize,
}

impl IngestMetrics {
    fn new() -> IngestMetrics {
        IngestMetrics {
            received: counter!(t::MESSAGES_RECEIVED),
            accepted: EventType::ALL.map(|et| counter!(t::EVENTS_ACCEPTED, "event_type" => et.as_str())),
            invalid: DecodeError::ALL.map(|r| counter!(t::MESSAGES_INVALID, "reason" => r.reason())),
            sampled_out: counter!(t::EVENTS_SAMPLED_OUT),
            late: counter!(t::EVENTS_REJECTED, "reason" => "late"),
            future: counter!(t::EVENTS_REJECTED, "reason" => "future"),
            restarts: counter!(t::PUBLISHER_RESTARTS),
            resets: counter!(t::SEQ_RESETS),
            evicted: counter!(t::SEQ_PUBLISHERS_EVICTED),
            mismatches: counter!(t::PARTITION_MISMATCH),
            folded: counter!(t::OVERFLOW_FOLDED),
            paired: counter!(t::LANDSCAPE_PAIRED),
            unpaired: [
                Unpaired::NoOutcome.as_str(),
                Unpaired::NoBid.as_str(),
                Unpaired::Full.as_str(),
                Unpaired::Handover.as_str(),
                "stopped",
            ]
            .map(|reason| counter!(t::LANDSCAPE_UNPAIRED, "reason" => reason)),
            waiting: gauge!(t::LANDSCAPE_WAITING),
            published_waiting: 0,
            clicks_paired: counter!(t::CLICKS_PAIRED),
            clicks_unpaired: [
                ClickUnpaired::NoImpression.as_str(),
                ClickUnpaired::Full.as_str(),
                ClickUnpaired::Handover.as_str(),
                "stopped",
            ]
            .map(|reason| counter!(t::CLICKS_UNPAIRED, "reason" => reason)),
            impressions_unkept: counter!(t::IMPRESSIONS_UNKEPT),
            clicks_waiting: gauge!(t::CLICKS_WAITING),
            published_clicks_waiting: 0,
            raw_dropped: counter!(t::RAW_ROWS_DROPPED, "reason" => "buffer_full"),
            live_keys: gauge!(t::LIVE_KEYS),
            published_live_keys: 0,
            handover: ["replayed", "duplicate", "unsequenced", "overflowed"]
                .map(|outcome| counter!(t::HANDOVER_MESSAGES, "outcome" => outcome)),
            buffered_bytes: gauge!(t::BUFFERED_BYTES),
            published_buffered_bytes: 0,
        }
    }
}

/// What one ingest thread counted over its life.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IngestSummary {
    /// Messages received.
    pub received: u64,
    /// Invalid messages.
    pub invalid: u64,
    /// Sampled out.
    pub sampled_out: u64,
    /// Accepted into the rollups.
    pub accepted: u64,
    /// Rejected late or future.
    pub rejected: u64,
}

/// One ingest thread's state: sockets, hot path and local counters.
pub struct Ingest {
    /// One per endpoint.
    sources: Vec<Source>,
    activity: Arc<EndpointActivity>,
    hot: HotPath,
    sink: mpsc::Sender<Delta>,
    flush_interval: Duration,
    // local counters, published in batches (messages received: each
    // source's)
    summary: IngestSummary,
    metrics: IngestMetrics,
    /// When the last partition-mismatch warning was logged.
    mismatch_logged: Option<Instant>,
    /// What that warning says becomes of the mismatching events.
    mismatch_action: String,
    progress: Arc<t::Progress>,
    /// A fleet member's: the partitions it follows.
    fleet: Option<Follower>,
    /// Until the sink has read the committed marks (the database did not
    /// answer at start): where they will be, and which of them are this
    /// thread's.
    late: Option<(LateMarks, SeedScope)>,
}

/// The partitions whose committed marks seed a static instance's thread:
/// its share of the configured partitions, and every partition outside
/// them (which any thread may receive from a publisher with another
/// partition count).
struct SeedScope {
    mine: Vec<u32>,
    configured: Vec<u32>,
}

impl SeedScope {
    fn new(config: &IngestConfig, index: usize) -> SeedScope {
        let mine = config.partitions.iter().skip(index).step_by(config.threads).copied().collect();
        SeedScope { mine, configured: config.partitions.clone() }
    }

    fn seeds<'a>(&'a self, marks: &'a SeqMarks) -> impl Iterator<Item = (&'a str, u32, u64)> + 'a {
        marks.iter().filter(move |&(_, topic, _)| {
            let partition = topic % MAX_PARTITIONS;
            self.mine.binary_search(&partition).is_ok() || self.configured.binary_search(&partition).is_err()
        })
    }
}

/// How a fleet member's thread follows its assignment.
struct Follower {
    rx: watch::Receiver<Arc<Assignment>>,
    acks: Arc<[AtomicU64]>,
    index: usize,
    threads: usize,
    /// Per partition, the event types whose samplers need it (empty: the
    /// partition is never subscribed to).
    types_of: Vec<Vec<EventType>>,
    /// Partitions received now (this thread's share), sorted.
    receiving: Vec<u32>,
    /// Partitions buffered now (claimed, not passed yet; or every partition not
    /// received, for a standby; this thread's share), sorted.
    buffering: Vec<u32>,
    /// A standby's: every partition of this thread's share it may receive.
    standby: Option<Vec<u32>>,
    unowned: Counter,
    /// Times fenced, as of the last assignment applied.
    fences: u64,
    /// Partitions taken since the last delta, and their committed marks:
    /// the sink starts their marks again from these (see [`Delta::restart`]).
    restart: Vec<u32>,
    seeds: Vec<Mark>,
}

/// How often at most a thread hands over the marks of sequences begun since
/// the last hand-over ahead of the interval: a tenth of the flush
/// interval, and no more often than this (a flood of new publisher ids
/// costs at most ten small batches of marks per interval).
const NEW_SEQUENCES_EVERY: Duration = Duration::from_millis(20);

/// How often at most a thread logs partition mismatches.
const MISMATCH_LOG_EVERY: Duration = Duration::from_secs(10);

/// Asks the ingest threads to hand what they have gathered to the sink now, instead
/// of at the end of the flush interval (SIGHUP). Each request is a new
/// generation; a thread acts once per generation it has not seen.
#[derive(Debug, Default)]
pub struct FlushRequests(AtomicU64);

impl FlushRequests {
    /// Asks every thread to flush at its next housekeeping (within ~10 ms).
    pub fn request(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn generation(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Ingest {
    /// Prepares thread `index` of `config.threads`: opens its socket and
    /// subscribes. Deltas go to `sink` every `flush_interval`.
    pub fn new(
        ctx: &zmq::Context,
        config: &IngestConfig,
        aggregate: AggregateConfig,
        index: usize,
        flush_interval: Duration,
        links: &Links,
    ) -> Result<Ingest, IngestError> {
        let Links { sink, progress, committed, late, fleet, endpoints } = links;
        let mut hot_config = config.hot_path(aggregate);
        // A fleet member's group takes every partition: at rate 1 a
        // mismatching event is kept by the member that receives it, as by a
        // single instance taking everything.
        hot_config.takes_every_partition |= fleet.is_some();
        let mut hot = HotPath::new(hot_config);
        // The marks committed by an earlier run of this thread's partitions:
        // the first `seq` received counts the gap from them.
        let scope = SeedScope::new(config, index);
        for (publisher, topic, seq) in scope.seeds(committed) {
            hot.seqs.seed(publisher, topic, seq);
        }
        let late = late.clone().map(|cell| {
            hot.seqs.await_seeds();
            (cell, scope)
        });
        let topics = subscriptions(config, &|et, p| hot.wants(et, p), index, config.threads);
        let sources = open_sources(ctx, config, &topics, index, endpoints)?;
        tracing::info!(thread = index, topics = topics.len(), "subscribed");
        let fleet = fleet.as_ref().map(|f| {
            hot.owned = Some(vec![false; config.partition_count as usize].into_boxed_slice());
            let threads = config.threads.max(1);
            hot.buffer = Some(match f.standby {
                Some((memory, window)) => {
                    ClaimBuffer::standby(config.partition_count, memory / threads, window.as_millis() as i64)
                }
                None => ClaimBuffer::new(config.partition_count, BUFFER_LIMIT_BYTES / threads),
            });
            let types_of: Vec<Vec<EventType>> = (0..config.partition_count)
                .map(|p| config.event_types.iter().copied().filter(|&et| hot.wants(et, p)).collect())
                .collect();
            let mut rx = f.assignment.clone();
            if f.standby.is_some() {
                // A standby subscribes to everything at once, owning nothing yet.
                rx.mark_changed();
            }
            Follower {
                rx,
                acks: f.acks.clone(),
                index,
                threads: config.threads,
                receiving: Vec::new(),
                buffering: Vec::new(),
                standby: f.standby.map(|_| {
                    (0..config.partition_count)
                        .filter(|&p| p as usize % config.threads == index)
                        .filter(|&p| !types_of[p as usize].is_empty())
                        .collect()
                }),
                types_of,
                unowned: counter!(t::MESSAGES_UNOWNED),
                fences: 0,
                restart: Vec::new(),
                seeds: Vec::new(),
            }
        });
        let mismatch_action = mismatch_action(&hot, &config.event_types);
        Ok(Ingest {
            sources,
            activity: endpoints.clone(),
            hot,
            sink: sink.clone(),
            flush_interval,
            summary: IngestSummary::default(),
            metrics: IngestMetrics::new(),
            mismatch_logged: None,
            mismatch_action,
            progress: progress.clone(),
            fleet,
            late,
        })
    }

    /// Receives until `stop` is set, then hands the last delta to the sink
    /// (waiting for room, since nothing else is left to do) and returns.
    /// Hands the current interval over early when `flush` asks for it.
    pub fn run(mut self, stop: &AtomicBool, flush: &FlushRequests) -> IngestSummary {
        let mut flush_seen = flush.generation();
        let mut topic = zmq::Message::new();
        let mut payload = zmq::Message::new();
        let mut now_ms = now_ms();
        let mut next_flush = Instant::now() + self.flush_interval;
        let mut handed_over = Instant::now();
        let mut next_publish = Instant::now() + PUBLISH_EVERY;
        let mut next_housekeeping = coarse_monotonic_ms() + HOUSEKEEPING_MS;
        self.hot.aggregator.expire_waiting(coarse_monotonic_ms() as i64);
        let mut pacer = Pacer::default();
        // The source being read, how many messages in a row it gave, and
        // how many sources in a row were empty.
        let (mut current, mut run, mut empty) = (0usize, 0u32, 0usize);
        let sources = self.sources.len();
        loop {
            // One source: block in its `recv` once the stream is idle.
            // Several: read each without blocking, up to SOURCE_RUN
            // messages in turn, and wait on all of them once idle.
            let flags = if sources == 1 { pacer.flags() } else { zmq::DONTWAIT };
            let got = self.sources[current].socket.recv(&mut topic, flags);
            let housekeeping = match got {
                Ok(()) => {
                    pacer.received();
                    self.sources[current].received += 1;
                    self.handle(current, &topic, &mut payload, now_ms);
                    empty = 0;
                    run += 1;
                    if run == SOURCE_RUN && sources > 1 {
                        run = 0;
                        current = (current + 1) % sources;
                    }
                    // The coarse clock costs a few ns (no syscall, no TSC read),
                    // cheap enough to look at after every message.
                    coarse_monotonic_ms() >= next_housekeeping
                }
                Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) if sources > 1 => {
                    run = 0;
                    current = (current + 1) % sources;
                    empty += 1;
                    if empty < sources {
                        continue;
                    }
                    empty = 0;
                    if !pacer.empty() {
                        self.wait_for_any();
                    }
                    true
                }
                Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => {
                    pacer.empty();
                    true
                }
                Err(e) => {
                    tracing::error!(error = %e, "receive failed; stopping this ingest thread");
                    break;
                }
            };
            if housekeeping {
                next_housekeeping = coarse_monotonic_ms() + HOUSEKEEPING_MS;
                now_ms = self::now_ms();
                // The pairings' halves that waited past the window leave
                // (their clock is monotonic: a step of the wall clock moves
                // no window).
                self.hot.aggregator.expire_waiting(coarse_monotonic_ms() as i64);
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                for source in &mut self.sources {
                    if let Some(r) = &mut source.reconnector {
                        r.poll(&source.socket);
                    }
                }
                self.follow();
                self.seed_late();
                let now = Instant::now();
                if now >= next_publish {
                    self.publish_counts();
                    next_publish = now + PUBLISH_EVERY;
                }
                let requested = flush.generation();
                if now >= next_flush || requested != flush_seen {
                    flush_seen = requested;
                    self.hand_over();
                    handed_over = now;
                    next_flush = now + self.flush_interval;
                } else if self.hot.seqs.has_begun()
                    && now >= handed_over + (self.flush_interval / 10).max(NEW_SEQUENCES_EVERY)
                {
                    // A sequence's events are accounted for once a batch
                    // commits a mark of it: a sequence begun goes to the
                    // sink at once (at most every tenth of the interval)
                    // with a mark just below its first `seq`, so that a
                    // crash in a run's first seconds leaves its events
                    // counted by whoever takes over. Its rows wait for the
                    // interval, unless no such mark can stand for it.
                    if self.hot.seqs.begun_needs_rows() {
                        self.hand_over();
                    } else {
                        self.hand_over_begun();
                    }
                    handed_over = now;
                }
            }
        }
        self.publish_counts();
        let last = drain(&mut self.hot, self.fleet.as_mut());
        // What still waits for its other half leaves with the stop, counted.
        self.metrics.unpaired[4].increment(self.hot.aggregator.waiting() as u64);
        self.metrics.clicks_unpaired[3].increment(self.hot.aggregator.clicks_unpaired_now() as u64);
        if !last.is_empty() && self.sink.blocking_send(last).is_err() {
            tracing::error!("sink is gone; the last interval could not be handed over");
        }
        self.summary
    }

    /// A fleet member's thread: applies a new assignment, if there is one.
    ///
    /// * Partitions no longer received are unsubscribed, and what this
    ///   thread holds is handed to the sink at once (so their last rows go
    ///   out with the flush that passes them on).
    /// * Partitions claimed are subscribed, their messages buffered.
    /// * Partitions taken are tracked from their committed marks, then
    ///   subscribed (a claimed one replays what it buffered above the marks); the
    ///   marks go to the sink with the next delta, ahead of its own.
    /// * A new fence drops everything this thread gathered or buffered.
    ///
    /// Then the thread acknowledges the assignment's generation. Each
    /// generation carries the whole state, so one skipped costs nothing.
    fn follow(&mut self) {
        let Some(f) = &mut self.fleet else { return };
        if !f.rx.has_changed().unwrap_or(false) {
            return;
        }
        let a = f.rx.borrow_and_update().clone();
        let ours = |list: &[u32]| -> Vec<u32> {
            list.iter()
                .copied()
                .filter(|&p| {
                    p as usize % f.threads == f.index && f.types_of.get(p as usize).is_some_and(|t| !t.is_empty())
                })
                .collect()
        };
        let receive = ours(&a.receive);
        let buffer = f.standby.as_deref().unwrap_or(&a.buffer);
        let buffer: Vec<u32> = ours(buffer).into_iter().filter(|p| receive.binary_search(p).is_err()).collect();
        let was: Vec<u32> = union(&f.receiving, &f.buffering);
        let now: Vec<u32> = union(&receive, &buffer);
        let fenced = a.fences > f.fences;
        if fenced {
            // Fenced (in this generation or one skipped): what this thread
            // held is the new owners' to count, and what it receives now is
            // taken anew, from the marks committed since.
            f.fences = a.fences;
            let dropped = drain(&mut self.hot, Some(f));
            tracing::warn!(events = dropped.events, "fenced: dropping what this thread held (the new owners count it)");
            self.hot.seqs.forget(|_| true);
            let owned = self.hot.owned.get_or_insert_with(Default::default);
            for &p in &f.receiving {
                owned[p as usize] = false;
            }
            f.receiving.clear();
        }
        let removed: Vec<u32> = f.receiving.iter().copied().filter(|p| receive.binary_search(p).is_err()).collect();
        let added: Vec<u32> = receive.iter().copied().filter(|p| f.receiving.binary_search(p).is_err()).collect();
        for p in was.iter().filter(|p| now.binary_search(p).is_err()) {
            for &et in &f.types_of[*p as usize] {
                set_subscribed(&self.sources, &topic(et, *p), false);
            }
        }
        let owned = self.hot.owned.get_or_insert_with(Default::default);
        for &p in &removed {
            owned[p as usize] = false;
        }
        if fenced || !removed.is_empty() {
            // The pairings' halves that came on a partition no longer this
            // thread's leave with it, counted: their other half, if it
            // comes, goes to the new owner.
            let owned = self.hot.owned.as_deref().unwrap_or(&[]);
            self.hot.aggregator.release_waiting(|p| !owned.get(p as usize).copied().unwrap_or(false));
        }
        let claims = self.hot.buffer.get_or_insert_with(|| ClaimBuffer::new(0, 0));
        // Claims withdrawn (or taken by another member): what was buffered is the owner's.
        for p in f.buffering.iter().filter(|p| buffer.binary_search(p).is_err() && added.binary_search(p).is_err()) {
            claims.stop(*p);
        }
        if !removed.is_empty() {
            let last = drain(&mut self.hot, Some(f));
            if !last.is_empty() && self.sink.blocking_send(last).is_err() {
                tracing::error!("sink is gone; the released partitions' last rows could not be handed over");
            }
        }
        let (gone, new) = (removed.clone(), added.clone());
        self.hot.seqs.forget(|p| gone.binary_search(&p).is_ok() || new.binary_search(&p).is_ok());
        let seeded = f.seeds.len();
        for m in a.seeds.marks_of(&added) {
            self.hot.seqs.seed(&m.publisher, m.topic, m.seq);
            f.seeds.push(m);
        }
        let seeded = f.seeds.len() - seeded;
        f.restart.extend_from_slice(&added);
        let owned = self.hot.owned.get_or_insert_with(Default::default);
        for &p in &added {
            owned[p as usize] = true;
        }
        let claims = self.hot.buffer.get_or_insert_with(|| ClaimBuffer::new(0, 0));
        for &p in &buffer {
            claims.start(p);
        }
        let now_ms = now_ms();
        // (handing rows to the sink may have waited: the pairings' clock
        // first moves, so no half the replay pairs had already expired)
        self.hot.aggregator.expire_waiting(coarse_monotonic_ms() as i64);
        for &p in added.iter().filter(|p| f.buffering.binary_search(p).is_ok()) {
            self.hot.replay(p, now_ms);
        }
        for p in now.iter().filter(|p| was.binary_search(p).is_err()) {
            for &et in &f.types_of[*p as usize] {
                set_subscribed(&self.sources, &topic(et, *p), true);
            }
        }
        if !removed.is_empty() || !added.is_empty() || buffer != f.buffering {
            tracing::debug!(thread = f.index, ?added, ?removed, ?buffer, seeded, "subscriptions follow the leases");
        }
        f.receiving = receive;
        f.buffering = buffer;
        f.acks[f.index].store(a.generation, Ordering::Release);
    }

    /// Waits until some source has a message, or the receive timeout.
    fn wait_for_any(&self) {
        let mut items: Vec<zmq::PollItem<'_>> =
            self.sources.iter().map(|s| s.socket.as_poll_item(zmq::POLLIN)).collect();
        let _ = zmq::poll(&mut items, i64::from(super::socket::RECV_TIMEOUT_MS));
    }

    /// Receives the rest of a message whose topic frame has just been
    /// received from source `from`, and runs it through the hot path.
    #[inline]
    fn handle(&mut self, from: usize, topic: &zmq::Message, payload: &mut zmq::Message, now_ms: i64) {
        if !topic.get_more() {
            self.hot.bad_frames();
            return;
        }
        let socket = &self.sources[from].socket;
        // ZeroMQ delivers all frames of a message atomically: the second is here.
        if socket.recv(payload, 0).is_err() {
            self.hot.bad_frames();
            return;
        }
        if payload.get_more() {
            // Swallow the rest of the message so the next recv starts a new one.
            while payload.get_more() && socket.recv(payload, 0).is_ok() {}
            self.hot.bad_frames();
            return;
        }
        self.hot.process(&topic[..], &payload[..], now_ms);
    }

    /// Counts the gap across the restart once the sink has read the
    /// committed marks late (see
    /// [`bid_logger_core::seq::SeqTracker::seed_late`]).
    fn seed_late(&mut self) {
        let Some((cell, scope)) = &self.late else { return };
        let Some(marks) = cell.get() else { return };
        let lost = self.hot.seqs.lost;
        self.hot.seqs.seed_late(scope.seeds(marks));
        tracing::info!(lost = self.hot.seqs.lost - lost, "the gap across the restart counted from the marks read late");
        self.late = None;
    }

    /// Gives the accumulated delta to the sink if the channel has room;
    /// otherwise keeps it (the next interval merges into it).
    fn hand_over(&mut self) {
        let restart = self.fleet.as_ref().is_some_and(|f| !f.restart.is_empty());
        // Loss counted with nothing else (the gap across a restart, counted
        // once the earlier run's marks are read) is handed over too: a
        // stream that ended before the database answered has no next event
        // to carry it.
        if self.hot.aggregator.is_empty() && !self.hot.seqs.has_marks() && !restart && self.hot.seqs.lost == 0 {
            return;
        }
        // The counts of what the delta holds are published before it can
        // land: once a batch's events show as flushed, so does every
        // counter about the messages before them.
        self.publish_counts();
        match self.sink.try_reserve() {
            Ok(permit) => permit.send(drain(&mut self.hot, self.fleet.as_mut())),
            Err(mpsc::error::TrySendError::Full(())) => {
                tracing::debug!(keys = self.hot.aggregator.live_keys(), "sink busy; merging into the next interval")
            }
            Err(mpsc::error::TrySendError::Closed(())) => {
                tracing::error!("sink is gone; dropping nothing yet, keeping the delta in memory")
            }
        }
        self.publish_live_keys();
    }

    /// Hands the sink the marks of the sequences begun since the last
    /// hand-over (see [`bid_logger_core::seq::SeqTracker::take_begun`]),
    /// without the rows gathered: a delta of marks alone. Skipped when the
    /// sink is busy (the next hand-over carries the sequences' real marks).
    fn hand_over_begun(&mut self) {
        let Ok(permit) = self.sink.try_reserve() else { return };
        let mut delta = Delta { marks: self.hot.seqs.take_begun(), ..Delta::default() };
        with_fleet_state(&mut delta, self.fleet.as_mut());
        permit.send(delta);
    }

    /// Warns about partition mismatches, at most every [`MISMATCH_LOG_EVERY`]:
    /// a misconfigured fleet sends them with every message.
    fn log_mismatches(&mut self) {
        let check = &mut self.hot.partitions;
        if check.unlogged == 0 || self.mismatch_logged.is_some_and(|at| at.elapsed() < MISMATCH_LOG_EVERY) {
            return;
        }
        self.mismatch_logged = Some(Instant::now());
        let action = self.mismatch_action.as_str();
        tracing::warn!(
            events = check.unlogged,
            partition_count = self.hot.partition_count,
            publishers_partition_count = %check.apparent_partition_count().map_or("unknown".into(), |c| c.to_string()),
            action,
            "events on a topic partition that is not fnv1a64(txn) mod partition-count: the publishers use another partition count"
        );
        check.unlogged = 0;
    }

    fn publish_buffered_bytes(&mut self) {
        let now = self.hot.buffer.as_ref().map_or(0, |h| h.bytes());
        let m = &mut self.metrics;
        m.buffered_bytes.increment(now as f64 - m.published_buffered_bytes as f64);
        m.published_buffered_bytes = now;
    }

    fn publish_waiting(&mut self) {
        let now = self.hot.aggregator.waiting();
        let m = &mut self.metrics;
        m.waiting.increment(now as f64 - m.published_waiting as f64);
        m.published_waiting = now;
        let now = self.hot.aggregator.clicks_waiting();
        m.clicks_waiting.increment(now as f64 - m.published_clicks_waiting as f64);
        m.published_clicks_waiting = now;
    }

    fn publish_live_keys(&mut self) {
        let now = self.hot.aggregator.live_keys();
        let m = &mut self.metrics;
        m.live_keys.increment(now as f64 - m.published_live_keys as f64);
        m.published_live_keys = now;
    }

    fn publish_counts(&mut self) {
        let m = &self.metrics;
        let AggregateStats {
            accepted,
            late,
            future,
            folded,
            raw: _,
            raw_dropped,
            paired,
            unpaired,
            clicks_paired,
            clicks_unpaired,
            impressions_unkept,
        } = self.hot.aggregator.take_stats();
        let received: u64 = self.sources.iter_mut().map(|s| s.publish(&self.activity)).sum();
        let hot = &mut self.hot;
        m.received.increment(received);
        for (c, n) in m.accepted.iter().zip(accepted) {
            if n > 0 {
                c.increment(n);
            }
        }
        for (c, n) in m.invalid.iter().zip(hot.invalid) {
            if n > 0 {
                c.increment(n);
            }
        }
        m.sampled_out.increment(hot.sampled_out);
        m.late.increment(late);
        m.future.increment(future);
        m.folded.increment(folded);
        m.paired.increment(paired);
        for (c, n) in m.unpaired.iter().zip(unpaired) {
            c.increment(n);
        }
        m.clicks_paired.increment(clicks_paired);
        for (c, n) in m.clicks_unpaired.iter().zip(clicks_unpaired) {
            c.increment(n);
        }
        m.impressions_unkept.increment(impressions_unkept);
        m.raw_dropped.increment(raw_dropped);
        m.restarts.increment(hot.seqs.restarts);
        m.resets.increment(hot.seqs.resets);
        m.evicted.increment(hot.seqs.evicted);
        m.mismatches.increment(hot.partitions.mismatches);
        if let Some(f) = &self.fleet {
            f.unowned.increment(hot.unowned);
        }
        if let Some(buffer) = &mut hot.buffer {
            let BufferStats { replayed, duplicates, unsequenced, overflowed } = std::mem::take(&mut buffer.stats);
            for (c, n) in m.handover.iter().zip([replayed, duplicates, unsequenced, overflowed]) {
                c.increment(n);
            }
        }
        hot.unowned = 0;
        let s = &mut self.summary;
        s.received += received;
        s.invalid += hot.invalid.iter().sum::<u64>();
        s.sampled_out += hot.sampled_out;
        s.accepted += accepted.iter().sum::<u64>();
        self.progress.received(received);
        self.progress.accepted(accepted.iter().sum());
        s.rejected += late + future;
        self.log_mismatches();
        let hot = &mut self.hot;
        hot.invalid = [0; DecodeError::COUNT];
        hot.sampled_out = 0;
        hot.seqs.restarts = 0;
        hot.seqs.resets = 0;
        hot.seqs.evicted = 0;
        hot.partitions.mismatches = 0;
        self.publish_live_keys();
        self.publish_buffered_bytes();
        self.publish_waiting();
    }
}

/// The sorted union of two sorted lists.
/// What the partition-mismatch warning says becomes of those events: kept
/// for the types taken whole (every partition, rate 1), dropped for the
/// sampled ones (only part of a transaction reaches the topics subscribed).
fn mismatch_action(hot: &HotPath, types: &[EventType]) -> String {
    let kept: Vec<&str> = types.iter().filter(|&&t| hot.keeps_mismatched(t)).map(|t| t.as_str()).collect();
    if kept.len() == types.len() {
        "kept: this instance takes every partition at rate 1".into()
    } else if kept.is_empty() {
        "dropped (counted as invalid, reason partition_mismatch): they cannot be sampled consistently".into()
    } else {
        format!(
            "kept for {} (every partition at rate 1); dropped for the sampled types (counted as invalid, reason \
             partition_mismatch): they cannot be sampled consistently",
            kept.join(", ")
        )
    }
}

fn union(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut out: Vec<u32> = a.iter().chain(b).copied().collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// What a thread hands to the sink: its rows, the last `seq` of every
/// sequence that moved while they were gathered and the gaps it found
/// (counted when the marks commit); a fleet member's, also
/// the partitions it took since the last delta (their marks come first).
fn drain(hot: &mut HotPath, fleet: Option<&mut Follower>) -> Delta {
    let mut delta = hot.aggregator.drain();
    delta.marks = hot.seqs.take_marks();
    delta.lost = std::mem::take(&mut hot.seqs.lost);
    delta.gaps = hot.seqs.take_gaps();
    with_fleet_state(&mut delta, fleet);
    delta
}

/// What every delta of a fleet member carries: the partitions it took since
/// the last delta with their committed marks, and the fences it has seen.
fn with_fleet_state(delta: &mut Delta, fleet: Option<&mut Follower>) {
    if let Some(f) = fleet {
        delta.restart = std::mem::take(&mut f.restart);
        delta.seeds = std::mem::take(&mut f.seeds);
        delta.fences = f.fences;
    }
}

/// A fleet member's threads: the assignment they follow, and where each
/// acknowledges the generation it applied.
#[derive(Clone)]
pub struct FleetLinks {
    /// The coordinator's current assignment.
    pub assignment: watch::Receiver<Arc<Assignment>>,
    /// One per thread.
    pub acks: Arc<[AtomicU64]>,
    /// A hot standby's memory (over all threads) and window: it receives
    /// every partition and keeps what it does not own.
    pub standby: Option<(usize, Duration)>,
}

/// What the ingest threads are linked to.
pub struct Links {
    /// Where deltas go.
    pub sink: mpsc::Sender<Delta>,
    /// The run's progress.
    pub progress: Arc<t::Progress>,
    /// The sequence marks an earlier run committed: each thread's trackers
    /// are seeded with those of its partitions.
    pub committed: SeqMarks,
    /// When the database did not answer at start: where the sink puts the
    /// marks once it has read them.
    pub late: Option<LateMarks>,
    /// For a fleet member.
    pub fleet: Option<FleetLinks>,
    /// Messages and connections per endpoint, over all threads.
    pub endpoints: Arc<EndpointActivity>,
}

/// Starts `config.threads` ingest threads sharing one ZeroMQ context.
/// Sockets are opened before this returns, so set-up errors surface here.
pub fn spawn(
    config: &IngestConfig,
    aggregate: &AggregateConfig,
    flush_interval: Duration,
    links: Links,
    stop: Arc<AtomicBool>,
    flush: Arc<FlushRequests>,
) -> Result<Vec<std::thread::JoinHandle<IngestSummary>>, IngestError> {
    let ctx = zmq::Context::new();
    ctx.set_io_threads(config.threads.min(4) as i32)
        .map_err(|source| IngestError::Zmq { what: "set io threads".into(), source })?;
    let mut workers = Vec::new();
    if !config.allow.is_empty() {
        let zap = crate::zap::spawn(&ctx, config.allow.clone(), stop.clone())
            .map_err(|source| IngestError::Zmq { what: "ZAP handler".into(), source })?;
        // The ZAP thread ends with the stop flag; it holds no data to hand over.
        drop(zap);
    }
    for index in 0..config.threads {
        let ingest = Ingest::new(&ctx, config, aggregate.clone(), index, flush_interval, &links)?;
        let (stop, flush) = (stop.clone(), flush.clone());
        let handle = std::thread::Builder::new()
            .name(format!("ingest-{index}"))
            .spawn(move || ingest.run(&stop, &flush))
            .expect("spawning an OS thread");
        workers.push(handle);
    }
    Ok(workers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::IngestConfig;
    use bid_logger_core::marks::PartitionMarks;
    use bid_logger_core::sample::Rate;
    use bid_logger_core::seq::topic_id;

    fn member(name: &str, assignment: watch::Receiver<Arc<Assignment>>) -> (Ingest, mpsc::Receiver<Delta>) {
        let config = IngestConfig {
            connect: vec![],
            bind: vec![format!("inproc://{name}")],
            partition_count: 8,
            partitions: (0..8).collect(),
            event_types: vec![EventType::Bid],
            sample: Rate::ALL.into(),
            raw_sample: Rate::NONE,
            receive_hwm: 0,
            quiet_after: crate::ingest::DEFAULT_QUIET_AFTER,
            max_message_size: 1024,
            max_event_size: 1024,
            max_seq_jump: 1000,
            threads: 1,
            allow: vec![],
        };
        let (sink, deltas) = mpsc::channel(4);
        let links = Links {
            sink,
            progress: Arc::default(),
            committed: SeqMarks::default(),
            late: None,
            fleet: Some(FleetLinks { assignment, acks: Arc::new([AtomicU64::new(0)]), standby: None }),
            endpoints: Arc::new(EndpointActivity::new(&config)),
        };
        let ingest =
            Ingest::new(&zmq::Context::new(), &config, AggregateConfig::default(), 0, Duration::from_secs(1), &links)
                .unwrap();
        (ingest, deltas)
    }

    fn committed(entries: &[(u32, u64)]) -> Arc<SeqMarks> {
        let values = entries.iter().map(|&(p, seq)| (p, PartitionMarks::from([((Arc::from("bidder"), 1), seq)])));
        Arc::new(SeqMarks::committed(values, 0))
    }

    /// The coordinator publishes a take and, a heartbeat later, another
    /// before the thread looks: it sees the second only, and must still
    /// track the first's partition from its committed mark and hand that
    /// mark to the sink ahead of its own (the sink would otherwise write
    /// back what it held of the partition from an earlier ownership).
    #[test]
    fn a_thread_that_skips_a_generation_still_starts_its_partitions_from_their_committed_marks() {
        let (tx, rx) = watch::channel(Arc::new(Assignment::default()));
        let (mut ingest, _deltas) = member("skip", rx);
        let take = |generation, partitions: &[u32], seeds| {
            let held = partitions.iter().map(|&p| (p, 1)).collect();
            Arc::new(Assignment { generation, receive: partitions.to_vec(), held, seeds, ..Assignment::default() })
        };
        tx.send_replace(take(1, &[3], committed(&[(3, 41)])));
        tx.send_replace(take(2, &[3, 5], committed(&[(3, 41), (5, 7)])));
        ingest.follow();
        let f = ingest.fleet.as_ref().unwrap();
        assert_eq!(f.acks[0].load(Ordering::Acquire), 2);
        ingest.hot.seqs.observe("bidder", EventType::Bid, 3, 45);
        assert_eq!(ingest.hot.seqs.lost, 3, "42–44 lost since the committed mark 41");
        let delta = drain(&mut ingest.hot, ingest.fleet.as_mut());
        assert_eq!(delta.restart, [3, 5]);
        let seed = |p, seq| Mark { publisher: "bidder".into(), topic: topic_id(1, p), seq };
        assert_eq!(delta.seeds, [seed(3, 41), seed(5, 7)]);
        assert_eq!(delta.marks, [seed(3, 45)]);
        let again = drain(&mut ingest.hot, ingest.fleet.as_mut());
        assert!(again.restart.is_empty() && again.seeds.is_empty(), "handed over once");
    }

    /// A fence the thread did not see (the next generation took the same
    /// partition again) still drops what it held and starts the partition
    /// from the marks committed since.
    #[test]
    fn a_fence_seen_late_still_starts_the_partitions_again() {
        let (tx, rx) = watch::channel(Arc::new(Assignment::default()));
        let (mut ingest, _deltas) = member("fence", rx);
        let a = |generation, seeds, fences| {
            Arc::new(Assignment {
                generation,
                receive: vec![3],
                held: vec![(3, 1)],
                seeds,
                fences,
                ..Assignment::default()
            })
        };
        tx.send_replace(a(1, committed(&[(3, 41)]), 0));
        ingest.follow();
        ingest.hot.seqs.observe("bidder", EventType::Bid, 3, 42);
        let _ = drain(&mut ingest.hot, ingest.fleet.as_mut());
        ingest.hot.seqs.observe("bidder", EventType::Bid, 3, 43);
        // Fenced (generation 2, not seen), then taken again at 60.
        tx.send_replace(a(3, committed(&[(3, 60)]), 1));
        ingest.follow();
        let delta = drain(&mut ingest.hot, ingest.fleet.as_mut());
        assert!(delta.marks.is_empty(), "what was held before the fence is dropped: {:?}", delta.marks);
        assert_eq!(delta.restart, [3]);
        ingest.hot.seqs.observe("bidder", EventType::Bid, 3, 62);
        assert_eq!(ingest.hot.seqs.lost, 1, "61 lost since the mark committed by the new owner");
    }
}
