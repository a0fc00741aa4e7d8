//! The receive loop: SUB sockets on dedicated OS threads.
//!
//! libzmq sockets are blocking and not thread-safe, so each ingest thread owns
//! one SUB socket outright and runs the whole hot path (decode → sample →
//! aggregate) on it, outside the async runtime: a tokio worker blocked in
//! `zmq_recv` would stall every task scheduled on it, and moving each message
//! across threads would cost more than processing it. The only boundary to
//! tokio is a bounded channel of [`Delta`]s, used with `try_reserve`: when the
//! sink is behind, the thread simply keeps aggregating into the same table
//! (which merges the pending interval into the next one) instead of waiting,
//! so nothing the database does can block the receive loop.

use crate::aggregate::{AggregateConfig, AggregateStats, Aggregator, Delta, Outcome};
use crate::decode::{decode, DecodeError, Event};
use crate::sample::{PartitionShare, Rate, Sampler};
use crate::telemetry as t;
use crate::wire::{fnv1a64, topic, EventType, MAX_PARTITIONS};
use metrics::{counter, gauge, Counter, Gauge};
use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Settings of the ingest stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestConfig {
    /// Endpoints to connect to.
    pub connect: Vec<String>,
    /// Endpoints to bind.
    pub bind: Vec<String>,
    /// Fleet-wide partition count.
    pub partition_count: u32,
    /// This instance's partitions, sorted.
    pub partitions: Vec<u32>,
    /// Event types subscribed to.
    pub event_types: Vec<EventType>,
    /// Rollup sampling rate.
    pub sample: Rate,
    /// Raw-event sampling rate (`events_sample`).
    pub raw_sample: Rate,
    /// ZMQ_RCVHWM.
    pub receive_hwm: i32,
    /// ZMQ_MAXMSGSIZE: the hard limit, a guard against hostile peers (libzmq
    /// drops the connection of a peer that exceeds it).
    pub max_message_size: i64,
    /// Payloads larger than this are counted as `too_large` and dropped,
    /// costing no other message.
    pub max_event_size: usize,
    /// A forward `seq` jump larger than this is a sequence reset, not a loss.
    pub max_seq_jump: u64,
    /// Number of receive threads.
    pub threads: usize,
    /// Peers allowed to connect to bound endpoints (empty = no check).
    pub allow: Vec<crate::zap::Allowed>,
}

/// Failure to set up a socket.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A libzmq call failed.
    #[error("zeromq {what} failed: {source}")]
    Zmq {
        /// The call, with its argument.
        what: String,
        /// libzmq's error.
        source: zmq::Error,
    },
}

/// How long one `recv` waits before the loop looks at the clock and the stop flag.
const RECV_TIMEOUT_MS: i32 = 50;
/// How often (at most) the loop refreshes its event-time clock, checks the
/// stop flag and the flush deadline, in milliseconds of the coarse clock.
const HOUSEKEEPING_MS: u64 = 10;
/// How often local counts are added to the exported metrics.
const PUBLISH_EVERY: Duration = Duration::from_millis(200);
/// How long a receive loop that found its socket empty sleeps before looking
/// again, and how many such naps in a row before it blocks in `recv`.
const NAP: Duration = Duration::from_millis(1);
const NAPS_BEFORE_BLOCKING: u32 = 4;

/// Coalesces wake-ups when the stream is thinner than what the thread can take.
///
/// A thread blocked in `recv` is woken by libzmq's I/O thread for every few
/// messages that arrive: two context switches and a mailbox signal each time,
/// which costs more than processing the messages when they trickle in (a
/// sampled stream, or a publisher slower than the logger). So once the
/// socket is empty the loop sleeps [`NAP`] and then takes everything that
/// queued meanwhile in one go, at most one wake-up per millisecond. A stream
/// that stays empty over [`NAPS_BEFORE_BLOCKING`] naps is idle: the loop then
/// blocks in `recv` again (with its timeout), so an idle logger costs nothing.
/// Messages wait at most one nap longer; the receive high-water mark and the
/// kernel's socket buffers hold what arrives meanwhile.
#[derive(Debug, Default)]
pub struct Pacer {
    naps: u32,
}

impl Pacer {
    /// The flags for the next `recv`: non-blocking while the stream is busy.
    #[inline]
    pub fn flags(&self) -> i32 {
        if self.naps < NAPS_BEFORE_BLOCKING {
            zmq::DONTWAIT
        } else {
            0
        }
    }

    /// A message was received.
    #[inline]
    pub fn received(&mut self) {
        self.naps = 0;
    }

    /// `recv` found nothing: naps, unless the stream has been idle long
    /// enough to block instead. Returns whether it napped.
    pub fn empty(&mut self) -> bool {
        if self.naps < NAPS_BEFORE_BLOCKING {
            self.naps += 1;
            std::thread::sleep(NAP);
            return true;
        }
        false
    }
}

impl IngestConfig {
    /// Whether this instance takes every transaction of every partition
    /// (all partitions, rollup rate 1). Then it subscribes by type prefix
    /// and a publisher's partition number cannot make it miss an event.
    pub fn takes_everything(&self) -> bool {
        self.sample == Rate::ALL && self.partitions.len() == self.partition_count as usize
    }

    /// The hot path's settings.
    pub fn hot_path(&self, aggregate: AggregateConfig) -> HotPathConfig {
        HotPathConfig {
            partition_count: self.partition_count,
            sample: self.sample,
            raw_sample: self.raw_sample,
            takes_everything: self.takes_everything(),
            max_event_size: self.max_event_size,
            max_seq_jump: self.max_seq_jump,
            aggregate,
        }
    }
}

/// The topics thread `index` of `threads` subscribes to.
///
/// * With one thread taking every transaction: one prefix per event type
///   (`bid.`), so that whatever partition count the publishers use, no
///   event is filtered out at the sender.
/// * Otherwise, for each configured event type: the thread's share of this
///   instance's partitions (round robin), minus partitions that none of the
///   samplers (rollup, raw) needs, plus its share of the prefixes that
///   cover every partition number from `partition-count` to 9999. A
///   publisher whose partition count agrees sends nothing there; one that
///   uses a larger count is seen (its events counted as partition
///   mismatches) instead of being silently filtered out.
pub fn subscriptions(config: &IngestConfig, samplers: &[&Sampler], index: usize, threads: usize) -> Vec<String> {
    if threads == 1 && config.takes_everything() {
        return config.event_types.iter().map(|et| format!("{}.", et.as_str())).collect();
    }
    let beyond = prefixes_from(config.partition_count);
    let mut out = Vec::new();
    for &et in &config.event_types {
        for (i, &p) in config.partitions.iter().enumerate() {
            let wanted = samplers.iter().any(|s| s.share(p) != PartitionShare::Nothing);
            if i % threads == index && wanted {
                out.push(topic(et, p));
            }
        }
        for (i, prefix) in beyond.iter().enumerate() {
            if i % threads == index {
                out.push(format!("{}.{prefix}", et.as_str()));
            }
        }
    }
    out
}

/// The shortest list of decimal prefixes that match exactly the four-digit,
/// zero-padded partition numbers `from..=9999` (`64` → `0064` … `0069`,
/// `007` … `009`, `01` … `09`, `1` … `9`).
pub fn prefixes_from(from: u32) -> Vec<String> {
    let mut out = Vec::new();
    let mut n = from;
    while n < MAX_PARTITIONS {
        // The largest aligned block of 10^k numbers starting at n.
        let mut k = 0;
        while k < 4 && n.is_multiple_of(10u32.pow(k + 1)) && n + 10u32.pow(k + 1) <= MAX_PARTITIONS {
            k += 1;
        }
        out.push(format!("{n:04}")[..(4 - k) as usize].to_string());
        n += 10u32.pow(k);
    }
    out
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// `CLOCK_MONOTONIC_COARSE` in milliseconds: read from the vDSO without a
/// syscall or a TSC read, with the kernel tick's resolution (1–4 ms).
#[inline]
fn coarse_monotonic_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the timespec we pass it.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// Creates, configures, subscribes and connects/binds one SUB socket.
pub fn open_socket(ctx: &zmq::Context, config: &IngestConfig, topics: &[String]) -> Result<zmq::Socket, IngestError> {
    let z = |what: String| move |source| IngestError::Zmq { what, source };
    let socket = ctx.socket(zmq::SUB).map_err(z("socket(SUB)".into()))?;
    socket.set_rcvhwm(config.receive_hwm).map_err(z("setsockopt(RCVHWM)".into()))?;
    socket.set_maxmsgsize(config.max_message_size).map_err(z("setsockopt(MAXMSGSIZE)".into()))?;
    socket.set_rcvtimeo(RECV_TIMEOUT_MS).map_err(z("setsockopt(RCVTIMEO)".into()))?;
    socket.set_linger(0).map_err(z("setsockopt(LINGER)".into()))?;
    if !config.allow.is_empty() {
        socket.set_zap_domain(crate::zap::ZAP_DOMAIN).map_err(z("setsockopt(ZAP_DOMAIN)".into()))?;
    }
    for tpc in topics {
        socket.set_subscribe(tpc.as_bytes()).map_err(z(format!("subscribe({tpc})")))?;
    }
    for e in &config.bind {
        socket.bind(e).map_err(z(format!("bind({e})")))?;
    }
    for e in &config.connect {
        socket.connect(e).map_err(z(format!("connect({e})")))?;
    }
    Ok(socket)
}

/// Re-connects publishers that libzmq dropped for good.
///
/// libzmq reconnects a connecting socket after a lost connection, but not
/// after a *protocol* error: a publisher sending one message larger than
/// `ZMQ_MAXMSGSIZE` would otherwise be cut off until the logger restarts. A
/// socket monitor reports each disconnect, and an endpoint that libzmq is not
/// reconnecting [`RENEW_AFTER`] later (no retry or connect event for it) is
/// connected anew (libzmq re-sends the subscriptions).
///
/// Not at once, and not when libzmq reconnects by itself: renewing an
/// endpoint discards its connection's pipe, and with it the messages still
/// queued there (a publisher's last ones, when it exits right after sending).
/// libzmq schedules a reconnect (`CONNECT_RETRIED`) right after an ordinary
/// disconnect, so only a protocol error, or an endpoint whose events name
/// another address (a host name), waits out the delay and is renewed.
struct Reconnector {
    monitor: zmq::Socket,
    endpoints: Vec<String>,
    reconnects: Counter,
    /// Endpoints whose connection dropped, and when to renew each unless
    /// libzmq reports reconnecting it first.
    due: Vec<(String, Instant)>,
}

/// How long after a dropped connection an endpoint that libzmq is not
/// reconnecting is renewed.
const RENEW_AFTER: Duration = Duration::from_millis(250);

impl Reconnector {
    fn new(
        ctx: &zmq::Context,
        socket: &zmq::Socket,
        endpoints: &[String],
        index: usize,
    ) -> Result<Reconnector, IngestError> {
        let z = |what: &'static str| move |source| IngestError::Zmq { what: what.into(), source };
        let addr = format!("inproc://bid-logger-monitor-{}-{index}", std::process::id());
        let events = [
            zmq::SocketEvent::DISCONNECTED,
            zmq::SocketEvent::CONNECT_RETRIED,
            zmq::SocketEvent::CONNECT_DELAYED,
            zmq::SocketEvent::CONNECTED,
        ]
        .iter()
        .fold(0, |mask, e| mask | e.to_raw());
        socket.monitor(&addr, i32::from(events)).map_err(z("monitor"))?;
        let monitor = ctx.socket(zmq::PAIR).map_err(z("socket(PAIR)"))?;
        monitor.connect(&addr).map_err(z("connect(monitor)"))?;
        Ok(Reconnector { monitor, endpoints: endpoints.to_vec(), reconnects: counter!(t::RECONNECTS), due: Vec::new() })
    }

    /// Handles the events reported since the last call, and renews the
    /// endpoints that are due (never blocks).
    fn poll(&mut self, socket: &zmq::Socket) {
        let now = Instant::now();
        while let Ok(frames) = self.monitor.recv_multipart(zmq::DONTWAIT) {
            let event = frames.first().filter(|f| f.len() >= 2).map(|f| u16::from_le_bytes([f[0], f[1]]));
            let peer = frames.get(1).map(|f| String::from_utf8_lossy(f).into_owned()).unwrap_or_default();
            // The event names the resolved address; a configured host name
            // may not match it, in which case every endpoint is concerned.
            let matching: Vec<String> = self.endpoints.iter().filter(|e| **e == peer).cloned().collect();
            if event == Some(zmq::SocketEvent::DISCONNECTED.to_raw()) {
                let targets = if matching.is_empty() { self.endpoints.clone() } else { matching };
                for e in targets {
                    if !self.due.iter().any(|(d, _)| *d == e) {
                        self.due.push((e, now + RENEW_AFTER));
                    }
                }
            } else {
                // libzmq is reconnecting (or has reconnected) this endpoint.
                // Only an exact match is known; the others are renewed when
                // due, by which time their queued messages have been taken.
                self.due.retain(|(d, _)| *d != peer);
            }
        }
        let (renew, wait): (Vec<_>, Vec<_>) = self.due.drain(..).partition(|(_, at)| *at <= now);
        self.due = wait;
        for (e, _) in renew {
            tracing::warn!(endpoint = %e, "publisher connection dropped and not being restored (e.g. after an oversized message); connecting again");
            let _ = socket.disconnect(&e);
            if let Err(err) = socket.connect(&e) {
                tracing::error!(endpoint = %e, error = %err, "reconnect failed");
            }
            self.reconnects.increment(1);
        }
    }
}

/// Publishers tracked for `seq` gaps at most, and (publisher, topic)
/// sequences at most: the bounds on the tracker's memory, whatever the
/// publishers send (a few MiB at the limits).
const MAX_TRACKED_PUBLISHERS: usize = 10_000;
const MAX_TRACKED_SEQUENCES: usize = 200_000;

/// Detects messages lost between publishers and us from `seq` gaps, per
/// publisher and topic. A `seq` that does not go up is a publisher restart;
/// one that jumps further forward than `max_jump` is a sequence reset
/// (a publisher restarted with a new starting point, or a bogus value):
/// counted apart, so that one bad message cannot make the loss metric
/// meaningless.
///
/// Memory is bounded: when the publisher or sequence limit is reached, the
/// half of the publishers least worth keeping is evicted: first those seen
/// only once (a publisher that sends a new `pub` with every message), then
/// those seen least recently. Publishers that keep sending are never locked
/// out; an evicted publisher is tracked again from its next message, and a
/// gap across its eviction is not counted.
#[derive(Debug)]
pub struct SeqTracker {
    publishers: FxHashMap<Box<[u8]>, Tracked>,
    sequences: usize,
    max_jump: u64,
    /// Observations so far: the clock of `Tracked::last_seen`.
    tick: u64,
    /// Messages lost since the last take.
    pub lost: u64,
    /// Restarts seen since the last take.
    pub restarts: u64,
    /// Sequence resets (jumps over `max_jump`) since the last take.
    pub resets: u64,
    /// Publishers evicted since the last take.
    pub evicted: u64,
}

#[derive(Debug, Default)]
struct Tracked {
    /// Last `seq` per topic (`event_type * 10 000 + partition`).
    topics: FxHashMap<u32, u64>,
    last_seen: u64,
    seen_twice: bool,
}

impl SeqTracker {
    /// A tracker treating forward jumps over `max_jump` as resets.
    pub fn new(max_jump: u64) -> SeqTracker {
        SeqTracker {
            publishers: FxHashMap::default(),
            sequences: 0,
            max_jump,
            tick: 0,
            lost: 0,
            restarts: 0,
            resets: 0,
            evicted: 0,
        }
    }

    /// Publishers tracked now.
    pub fn tracked(&self) -> usize {
        self.publishers.len()
    }

    /// Records `seq` from `publisher` on topic `(event_type, partition)`.
    #[inline]
    pub fn observe(&mut self, publisher: &str, event_type: EventType, partition: u32, seq: u64) {
        self.tick += 1;
        let topic_id = event_type as u32 * MAX_PARTITIONS + partition;
        let tracked = match self.publishers.get_mut(publisher.as_bytes()) {
            Some(tracked) => tracked,
            None => {
                if self.publishers.len() >= MAX_TRACKED_PUBLISHERS || self.sequences >= MAX_TRACKED_SEQUENCES {
                    self.evict_half();
                }
                self.publishers.entry(publisher.as_bytes().into()).or_default()
            }
        };
        tracked.seen_twice |= tracked.last_seen != 0;
        tracked.last_seen = self.tick;
        if self.sequences >= MAX_TRACKED_SEQUENCES && !tracked.topics.contains_key(&topic_id) {
            // Only a publisher with 200 000 topics of its own gets here
            // (eviction keeps the busiest): stop adding its topics.
            return;
        }
        match tracked.topics.insert(topic_id, seq) {
            Some(prev) if seq > prev => {
                let gap = seq - prev - 1;
                if gap > self.max_jump {
                    self.resets += 1;
                } else {
                    self.lost += gap;
                }
            }
            Some(_) => self.restarts += 1,
            None => self.sequences += 1,
        }
    }

    /// Evicts the half of the publishers least worth keeping (see the type's docs).
    #[cold]
    fn evict_half(&mut self) {
        let mut rank: Vec<(bool, u64)> = self.publishers.values().map(|t| (t.seen_twice, t.last_seen)).collect();
        let half = rank.len() / 2;
        if half == 0 {
            return;
        }
        let (_, &mut cut, _) = rank.select_nth_unstable(half);
        let before = self.publishers.len();
        let mut freed = 0;
        self.publishers.retain(|_, t| {
            let keep = (t.seen_twice, t.last_seen) >= cut;
            if !keep {
                freed += t.topics.len();
            }
            keep
        });
        self.sequences -= freed;
        self.evicted += (before - self.publishers.len()) as u64;
    }
}

/// How many partition mismatches are kept to guess the publishers' count.
const MISMATCH_SAMPLES: usize = 8;

/// Messages whose topic partition is not `fnv1a64(txn) mod partition-count`:
/// the publishers use another partition count. Keeps a few of them to work
/// out which count they appear to use, for the log line.
#[derive(Debug, Default)]
pub struct PartitionCheck {
    /// Mismatches since the last take.
    pub mismatches: u64,
    /// Mismatches since the last log line.
    unlogged: u64,
    /// (topic partition, fnv1a64(txn)) of recent mismatches.
    samples: Vec<(u32, u64)>,
}

impl PartitionCheck {
    #[cold]
    fn record(&mut self, partition: u32, hash: u64) {
        self.mismatches += 1;
        self.unlogged += 1;
        if self.samples.len() == MISMATCH_SAMPLES {
            self.samples.remove(0);
        }
        self.samples.push((partition, hash));
    }

    /// The smallest partition count consistent with every kept mismatch,
    /// if any: what the publishers appear to use.
    pub fn apparent_partition_count(&self) -> Option<u32> {
        let lowest = self.samples.iter().map(|&(p, _)| p + 1).max()?;
        (lowest..=MAX_PARTITIONS).find(|&c| self.samples.iter().all(|&(p, h)| h % u64::from(c) == u64::from(p)))
    }
}

/// The hot path's settings.
#[derive(Debug, Clone)]
pub struct HotPathConfig {
    /// Fleet-wide partition count P.
    pub partition_count: u32,
    /// Rollup sampling rate.
    pub sample: Rate,
    /// Raw-event sampling rate.
    pub raw_sample: Rate,
    /// Whether this instance takes every partition at rate 1 (then an event
    /// on a mismatching partition is still kept: nothing can be missed).
    pub takes_everything: bool,
    /// Largest payload processed, in bytes.
    pub max_event_size: usize,
    /// Largest forward `seq` jump counted as a loss.
    pub max_seq_jump: u64,
    /// Aggregation settings.
    pub aggregate: AggregateConfig,
}

impl Default for HotPathConfig {
    /// The defaults of `bid-logger run`.
    fn default() -> HotPathConfig {
        HotPathConfig {
            partition_count: 64,
            sample: Rate::ALL,
            raw_sample: Rate::from_ppm(1_000),
            takes_everything: true,
            max_event_size: DEFAULT_MAX_EVENT_SIZE,
            max_seq_jump: DEFAULT_MAX_SEQ_JUMP,
            aggregate: AggregateConfig::default(),
        }
    }
}

/// Default `max-event-size`: 64 KiB.
pub const DEFAULT_MAX_EVENT_SIZE: usize = 64 * 1024;
/// Default `max-seq-jump`: ten million messages on one publisher's topic,
/// about an hour of a busy bidder's topic; a larger jump is a reset.
pub const DEFAULT_MAX_SEQ_JUMP: u64 = 10_000_000;

/// Metric handles of one ingest thread; counts are kept locally per message
/// and added here in batches (a few times per second).
struct IngestMetrics {
    received: Counter,
    accepted: [Counter; 8],
    invalid: [Counter; DecodeError::COUNT],
    sampled_out: Counter,
    late: Counter,
    future: Counter,
    lost: Counter,
    restarts: Counter,
    resets: Counter,
    evicted: Counter,
    mismatches: Counter,
    folded: Counter,
    raw_dropped: Counter,
    live_keys: Gauge,
    published_live_keys: usize,
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
            lost: counter!(t::MESSAGES_LOST),
            restarts: counter!(t::PUBLISHER_RESTARTS),
            resets: counter!(t::SEQ_RESETS),
            evicted: counter!(t::SEQ_PUBLISHERS_EVICTED),
            mismatches: counter!(t::PARTITION_MISMATCH),
            folded: counter!(t::OVERFLOW_FOLDED),
            raw_dropped: counter!(t::RAW_ROWS_DROPPED, "reason" => "buffer_full"),
            live_keys: gauge!(t::LIVE_KEYS),
            published_live_keys: 0,
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
    /// Lost per seq gaps.
    pub lost: u64,
}

/// What happens to one message once its frames are in: the size limit,
/// decode, `seq` tracking, the partition check, sampling, the lateness check
/// and aggregation, with counts kept locally. No socket and no I/O, so
/// benchmarks, profiles and the fuzz target run exactly the code the ingest
/// threads run.
pub struct HotPath {
    partition_count: u32,
    /// `partition_count - 1` when it is a power of two (64, 256: the usual
    /// counts), so that `h mod P` is a mask instead of a 64-bit division.
    partition_mask: Option<u64>,
    max_event_size: usize,
    /// Whether an event on a mismatching partition is still kept.
    takes_everything: bool,
    sampler: Sampler,
    /// The rollup sample keeps every transaction (no per-event decision).
    everything: bool,
    /// `None` when the raw sample is off.
    raw_sampler: Option<Sampler>,
    /// The rollups being built.
    pub aggregator: Aggregator,
    /// `seq` gaps and restarts.
    pub seqs: SeqTracker,
    /// Topic partitions that disagree with the transaction's hash.
    pub partitions: PartitionCheck,
    /// Invalid messages per [`DecodeError::index`] since the last publish.
    pub invalid: [u64; DecodeError::COUNT],
    /// Events sampled out since the last publish.
    pub sampled_out: u64,
}

impl HotPath {
    /// A hot path with the given settings.
    pub fn new(config: HotPathConfig) -> HotPath {
        let sampler = Sampler::new(config.sample, config.partition_count);
        HotPath {
            partition_count: config.partition_count,
            partition_mask: config.partition_count.is_power_of_two().then(|| u64::from(config.partition_count) - 1),
            max_event_size: config.max_event_size,
            takes_everything: config.takes_everything,
            everything: sampler.keeps_everything(),
            sampler,
            raw_sampler: (config.raw_sample != Rate::NONE)
                .then(|| Sampler::new(config.raw_sample, config.partition_count)),
            aggregator: Aggregator::new(config.aggregate),
            seqs: SeqTracker::new(config.max_seq_jump),
            partitions: PartitionCheck::default(),
            invalid: [0; DecodeError::COUNT],
            sampled_out: 0,
        }
    }

    /// The samplers in use (rollup, then raw), which decide the subscriptions.
    pub fn samplers(&self) -> Vec<&Sampler> {
        let mut out = vec![&self.sampler];
        out.extend(self.raw_sampler.as_ref());
        out
    }

    /// Counts a message that does not have exactly two frames.
    pub fn bad_frames(&mut self) {
        self.invalid[DecodeError::Frames.index()] += 1;
    }

    /// Checks, decodes, samples and aggregates one message received at `now_ms`.
    #[inline]
    pub fn process(&mut self, topic: &[u8], payload: &[u8], now_ms: i64) {
        if payload.len() > self.max_event_size {
            // Dropped, but its `seq` still counts: otherwise the next
            // message's gap would count it as lost as well. Decoding skips
            // a long value by its length, so this costs no more than a
            // small message.
            if let Ok(Event { publisher: Some(publisher), seq: Some(seq), event_type, partition, .. }) =
                decode(topic, payload)
            {
                self.seqs.observe(publisher, event_type, partition, seq);
            }
            self.invalid[DecodeError::TooLarge.index()] += 1;
            return;
        }
        let mut ev = match decode(topic, payload) {
            Ok(ev) => ev,
            Err(e) => {
                self.invalid[e.index()] += 1;
                return;
            }
        };
        if let (Some(publisher), Some(seq)) = (ev.publisher, ev.seq) {
            self.seqs.observe(publisher, ev.event_type, ev.partition, seq);
        }
        // The wire contract routes an event to fnv1a64(txn) mod P. One
        // hash per event (~1 ns per byte of txn) checks that and decides
        // both samples.
        let hash = fnv1a64(ev.txn);
        let owner = match self.partition_mask {
            Some(mask) => hash & mask,
            None => hash % u64::from(self.partition_count),
        } as u32;
        if owner != ev.partition {
            self.partitions.record(ev.partition, hash);
            if !self.takes_everything {
                // Only part of this transaction's events reach the topics
                // this instance subscribes to: it cannot be sampled whole.
                self.invalid[DecodeError::PartitionMismatch.index()] += 1;
                return;
            }
            // Everything is taken anyway: keep it, under its real partition.
            ev.partition = owner;
        }
        let rollup = self.everything || self.sampler.keep_owned(owner, hash);
        let raw = self.raw_sampler.as_ref().is_some_and(|s| s.keep_owned(owner, hash));
        if !rollup && !raw {
            self.sampled_out += 1;
            return;
        }
        if self.aggregator.admit(ev.ts_ms, now_ms) != Outcome::Accepted {
            return;
        }
        if raw {
            self.aggregator.push_raw(&ev, now_ms);
        }
        if rollup {
            self.aggregator.record_admitted(&ev);
        } else {
            self.sampled_out += 1;
        }
    }
}

/// One ingest thread's state: socket, hot path and local counters.
pub struct Ingest {
    socket: zmq::Socket,
    /// `None` when nothing is connected (bind only).
    reconnector: Option<Reconnector>,
    hot: HotPath,
    sink: mpsc::Sender<Delta>,
    flush_interval: Duration,
    // local counters, published in batches
    received: u64,
    summary: IngestSummary,
    metrics: IngestMetrics,
    /// When the last partition-mismatch warning was logged.
    mismatch_logged: Option<Instant>,
    progress: Arc<t::Progress>,
}

/// How often at most a thread logs partition mismatches.
const MISMATCH_LOG_EVERY: Duration = Duration::from_secs(10);

/// Asks the ingest threads to hand what they hold to the sink now, instead
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
        sink: mpsc::Sender<Delta>,
        progress: Arc<t::Progress>,
    ) -> Result<Ingest, IngestError> {
        let hot = HotPath::new(config.hot_path(aggregate));
        let topics = subscriptions(config, &hot.samplers(), index, config.threads);
        let socket = open_socket(ctx, config, &topics)?;
        let reconnector = if config.connect.is_empty() {
            None
        } else {
            Some(Reconnector::new(ctx, &socket, &config.connect, index)?)
        };
        tracing::info!(thread = index, topics = topics.len(), "subscribed");
        Ok(Ingest {
            socket,
            reconnector,
            hot,
            sink,
            flush_interval,
            received: 0,
            summary: IngestSummary::default(),
            metrics: IngestMetrics::new(),
            mismatch_logged: None,
            progress,
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
        let mut next_publish = Instant::now() + PUBLISH_EVERY;
        let mut next_housekeeping = coarse_monotonic_ms() + HOUSEKEEPING_MS;
        let mut pacer = Pacer::default();
        loop {
            let got = self.socket.recv(&mut topic, pacer.flags());
            let housekeeping = match got {
                Ok(()) => {
                    pacer.received();
                    self.received += 1;
                    self.handle(&topic, &mut payload, now_ms);
                    // The coarse clock costs a few ns (no syscall, no TSC read),
                    // cheap enough to look at after every message.
                    coarse_monotonic_ms() >= next_housekeeping
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
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if let Some(r) = &mut self.reconnector {
                    r.poll(&self.socket);
                }
                let now = Instant::now();
                if now >= next_publish {
                    self.publish_counts();
                    next_publish = now + PUBLISH_EVERY;
                }
                let requested = flush.generation();
                if now >= next_flush || requested != flush_seen {
                    flush_seen = requested;
                    self.hand_over();
                    next_flush = now + self.flush_interval;
                }
            }
        }
        self.publish_counts();
        let last = self.hot.aggregator.drain();
        if !last.is_empty() && self.sink.blocking_send(last).is_err() {
            tracing::error!("sink is gone; the last interval could not be handed over");
        }
        self.summary
    }

    /// Receives the rest of a message whose topic frame has just been
    /// received, and runs it through the hot path.
    #[inline]
    fn handle(&mut self, topic: &zmq::Message, payload: &mut zmq::Message, now_ms: i64) {
        if !topic.get_more() {
            self.hot.bad_frames();
            return;
        }
        // ZeroMQ delivers all frames of a message atomically: the second is here.
        if self.socket.recv(payload, 0).is_err() {
            self.hot.bad_frames();
            return;
        }
        if payload.get_more() {
            // Swallow the rest of the message so the next recv starts a new one.
            while payload.get_more() && self.socket.recv(payload, 0).is_ok() {}
            self.hot.bad_frames();
            return;
        }
        self.hot.process(&topic[..], &payload[..], now_ms);
    }

    /// Gives the accumulated delta to the sink if the channel has room;
    /// otherwise keeps it (the next interval merges into it).
    fn hand_over(&mut self) {
        if self.hot.aggregator.is_empty() {
            return;
        }
        match self.sink.try_reserve() {
            Ok(permit) => permit.send(self.hot.aggregator.drain()),
            Err(mpsc::error::TrySendError::Full(())) => {
                tracing::debug!(keys = self.hot.aggregator.live_keys(), "sink busy; merging into the next interval")
            }
            Err(mpsc::error::TrySendError::Closed(())) => {
                tracing::error!("sink is gone; dropping nothing yet, keeping the delta in memory")
            }
        }
        self.publish_live_keys();
    }

    /// Warns about partition mismatches, at most every [`MISMATCH_LOG_EVERY`]:
    /// a misconfigured fleet sends them with every message.
    fn log_mismatches(&mut self) {
        let check = &mut self.hot.partitions;
        if check.unlogged == 0 || self.mismatch_logged.is_some_and(|at| at.elapsed() < MISMATCH_LOG_EVERY) {
            return;
        }
        self.mismatch_logged = Some(Instant::now());
        let action = if self.hot.takes_everything {
            "kept: this instance takes every partition at rate 1"
        } else {
            "dropped (counted as invalid, reason partition_mismatch): they cannot be sampled consistently"
        };
        tracing::warn!(
            events = check.unlogged,
            partition_count = self.hot.partition_count,
            publishers_partition_count = %check.apparent_partition_count().map_or("unknown".into(), |c| c.to_string()),
            action,
            "events on a topic partition that is not fnv1a64(txn) mod partition-count: the publishers use another partition count"
        );
        check.unlogged = 0;
    }

    fn publish_live_keys(&mut self) {
        let now = self.hot.aggregator.live_keys();
        let m = &mut self.metrics;
        m.live_keys.increment(now as f64 - m.published_live_keys as f64);
        m.published_live_keys = now;
    }

    fn publish_counts(&mut self) {
        let m = &self.metrics;
        let AggregateStats { accepted, late, future, folded, raw: _, raw_dropped } = self.hot.aggregator.take_stats();
        let hot = &mut self.hot;
        m.received.increment(self.received);
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
        m.raw_dropped.increment(raw_dropped);
        m.lost.increment(hot.seqs.lost);
        m.restarts.increment(hot.seqs.restarts);
        m.resets.increment(hot.seqs.resets);
        m.evicted.increment(hot.seqs.evicted);
        m.mismatches.increment(hot.partitions.mismatches);
        let s = &mut self.summary;
        s.received += self.received;
        s.invalid += hot.invalid.iter().sum::<u64>();
        s.sampled_out += hot.sampled_out;
        s.accepted += accepted.iter().sum::<u64>();
        self.progress.accepted(accepted.iter().sum());
        s.rejected += late + future;
        s.lost += hot.seqs.lost;
        self.log_mismatches();
        let hot = &mut self.hot;
        hot.invalid = [0; DecodeError::COUNT];
        hot.sampled_out = 0;
        hot.seqs.lost = 0;
        hot.seqs.restarts = 0;
        hot.seqs.resets = 0;
        hot.seqs.evicted = 0;
        hot.partitions.mismatches = 0;
        self.received = 0;
        self.publish_live_keys();
    }
}

/// Starts `config.threads` ingest threads sharing one ZeroMQ context.
/// Sockets are opened before this returns, so set-up errors surface here.
pub fn spawn(
    config: &IngestConfig,
    aggregate: &AggregateConfig,
    flush_interval: Duration,
    sink: mpsc::Sender<Delta>,
    stop: Arc<AtomicBool>,
    flush: Arc<FlushRequests>,
    progress: Arc<t::Progress>,
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
        let ingest =
            Ingest::new(&ctx, config, aggregate.clone(), index, flush_interval, sink.clone(), progress.clone())?;
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

    #[test]
    fn the_pacer_naps_while_the_stream_is_busy_and_blocks_once_it_is_idle() {
        let mut p = Pacer::default();
        assert_eq!(p.flags(), zmq::DONTWAIT, "a busy stream is polled");
        let started = Instant::now();
        for _ in 0..NAPS_BEFORE_BLOCKING {
            assert_eq!(p.flags(), zmq::DONTWAIT);
            assert!(p.empty());
        }
        assert!(started.elapsed() >= NAP * NAPS_BEFORE_BLOCKING, "each empty poll naps");
        assert_eq!(p.flags(), 0, "an idle stream blocks in recv");
        assert!(!p.empty(), "no nap once blocking (recv already waited)");
        p.received();
        assert_eq!(p.flags(), zmq::DONTWAIT, "a message makes the stream busy again");
    }

    #[test]
    fn seq_gaps_count_losses_and_decreases_count_restarts() {
        let mut s = SeqTracker::new(1000);
        for seq in [41, 45, 46, 47] {
            s.observe("p1", EventType::Bid, 3, seq);
        }
        assert_eq!(s.lost, 3);
        s.observe("p1", EventType::Bid, 4, 100); // another topic: its own sequence
        s.observe("p2", EventType::Bid, 3, 1); // another publisher
        assert_eq!(s.lost, 3);
        s.observe("p1", EventType::Bid, 3, 0); // restart
        s.observe("p1", EventType::Bid, 3, 1);
        assert_eq!((s.lost, s.restarts), (3, 1));
    }

    fn config(partition_count: u32, partitions: std::ops::Range<u32>, threads: usize, sample: &str) -> IngestConfig {
        IngestConfig {
            connect: vec![],
            bind: vec![],
            partition_count,
            partitions: partitions.collect(),
            event_types: vec![EventType::Bid, EventType::Win],
            sample: sample.parse().unwrap(),
            raw_sample: Rate::NONE,
            receive_hwm: 0,
            max_message_size: 1024,
            max_event_size: 1024,
            max_seq_jump: 1000,
            threads,
            allow: vec![],
        }
    }

    #[test]
    fn prefixes_cover_exactly_the_partitions_from_the_count_up() {
        assert_eq!(prefixes_from(9998), ["9998", "9999"]);
        assert_eq!(prefixes_from(9000), ["9"]);
        let p64 = prefixes_from(64);
        assert_eq!(p64.len(), 6 + 3 + 9 + 9, "{p64:?}");
        assert_eq!(&p64[..7], ["0064", "0065", "0066", "0067", "0068", "0069", "007"]);
        for from in [1, 7, 16, 64, 100, 256, 999, 1000, 4321, 9999] {
            let prefixes = prefixes_from(from);
            for n in 0..MAX_PARTITIONS {
                let digits = format!("{n:04}");
                let matches = prefixes.iter().filter(|p| digits.starts_with(p.as_str())).count();
                assert_eq!(matches, usize::from(n >= from), "{digits} against the prefixes from {from}");
            }
        }
    }

    #[test]
    fn subscriptions_follow_partitions_types_threads_and_sample() {
        let all = Sampler::new(Rate::ALL, 64);
        // one thread taking everything: one prefix per type, whatever the publishers' count
        assert_eq!(subscriptions(&config(64, 0..64, 1, "1"), &[&all], 0, 1), vec!["bid.", "win."]);
        // a partition subset: exact topics, plus the partitions beyond the count
        let beyond = prefixes_from(64).len();
        let subset = config(64, 0..16, 2, "1");
        let t0 = subscriptions(&subset, &[&all], 0, 2);
        let t1 = subscriptions(&subset, &[&all], 1, 2);
        assert_eq!(t0.len() + t1.len(), 2 * (16 + beyond));
        assert!(t0.contains(&"bid.0000".to_string()) && t1.contains(&"win.0015".to_string()));
        assert!(!t0.contains(&"bid.0016".to_string()) && !t1.contains(&"bid.0016".to_string()));
        assert!(t0.iter().chain(&t1).any(|t| t == "bid.0064") && t0.iter().chain(&t1).any(|t| t == "win.1"));
        // several threads taking everything: no prefix is shared, all partitions are covered
        let threads = config(64, 0..64, 2, "1");
        let (a, b) = (subscriptions(&threads, &[&all], 0, 2), subscriptions(&threads, &[&all], 1, 2));
        assert_eq!(a.len() + b.len(), 2 * (64 + beyond));
        assert!(a.iter().all(|t| !b.contains(t)));
        // sampling: partitions outside every sample are not subscribed to
        let sampled = config(64, 0..16, 1, "1/8");
        let eighth = Sampler::new("1/8".parse().unwrap(), 64);
        let mut topics = subscriptions(&sampled, &[&eighth], 0, 1);
        topics.retain(|t| {
            t.len() == "bid.0000".len() && t.as_bytes()[4..].iter().all(u8::is_ascii_digit) && t[4..] < *"0064"
        });
        topics.sort();
        assert_eq!(topics, vec!["bid.0000", "bid.0008", "win.0000", "win.0008"]);
        // a raw sample at a lower rate needs no extra partition (samples nest)
        let raw = Sampler::new("1/1000".parse().unwrap(), 64);
        assert_eq!(subscriptions(&sampled, &[&eighth, &raw], 0, 1).len(), 2 * (2 + beyond));
        // at a higher rate it does
        let half = Sampler::new("1/2".parse().unwrap(), 64);
        assert_eq!(subscriptions(&sampled, &[&eighth, &half], 0, 1).len(), 2 * (8 + beyond));
    }

    #[test]
    fn a_bogus_seq_jump_is_a_reset_not_a_loss() {
        let mut s = SeqTracker::new(1000);
        for seq in [1, 2, 3, 1 << 63, (1 << 63) + 1, (1 << 63) + 5] {
            s.observe("p1", EventType::Bid, 3, seq);
        }
        assert_eq!((s.lost, s.resets, s.restarts), (3, 1, 0));
        s.observe("p1", EventType::Bid, 3, (1 << 63) + 1006); // 1000 missing: still a loss
        assert_eq!((s.lost, s.resets), (1003, 1));
    }

    #[test]
    fn a_flood_of_new_publishers_cannot_lock_out_later_ones() {
        let mut s = SeqTracker::new(1000);
        for seq in 1..=5 {
            s.observe("steady", EventType::Bid, 1, seq);
        }
        for i in 0..(5 * MAX_TRACKED_PUBLISHERS as u64) {
            s.observe(&format!("flood-{i}"), EventType::Bid, 1, 1);
            if i % 1000 == 0 {
                s.observe("steady", EventType::Bid, 1, 6 + i / 1000);
            }
            assert!(s.tracked() <= MAX_TRACKED_PUBLISHERS);
        }
        assert!(s.evicted > 0);
        // a publisher that appears after the flood is tracked: its gaps count
        s.observe("late", EventType::Win, 2, 10);
        s.observe("late", EventType::Win, 2, 15);
        assert_eq!(s.lost, 4, "the late publisher's gap, and none of the steady one's");
        // the steady publisher was never evicted: its next gap counts too
        s.observe("steady", EventType::Bid, 1, 6 + 49 + 3); // last was 6 + 49: 2 lost
        assert_eq!(s.lost, 4 + 2);
    }

    #[test]
    fn seq_sequences_are_bounded_too() {
        let mut s = SeqTracker::new(1000);
        for i in 0..(3 * MAX_TRACKED_SEQUENCES as u32) {
            s.observe(&format!("p{}", i / 5000), EventType::ALL[(i % 8) as usize], i % 9000, 1);
            assert!(s.sequences <= MAX_TRACKED_SEQUENCES);
        }
    }

    #[test]
    fn the_publishers_partition_count_is_worked_out_from_mismatches() {
        let mut check = PartitionCheck::default();
        for i in 0..20 {
            let txn = format!("txn-{i}");
            let h = fnv1a64(txn.as_bytes());
            if h % 16 != h % 64 {
                check.record((h % 64) as u32, h);
            }
        }
        assert!(check.mismatches > 0);
        assert_eq!(check.apparent_partition_count(), Some(64));
        assert_eq!(PartitionCheck::default().apparent_partition_count(), None);
    }

    fn payload(txn: &str, pad: usize) -> Vec<u8> {
        let ts = now_ms();
        rmp_serde::to_vec_named(&serde_json::json!({"txn": txn, "ts": ts, "pad": "x".repeat(pad)})).unwrap()
    }

    fn hot(takes_everything: bool, sample: &str) -> HotPath {
        HotPath::new(HotPathConfig {
            partition_count: 16,
            sample: sample.parse().unwrap(),
            raw_sample: Rate::NONE,
            takes_everything,
            max_event_size: 1000,
            ..HotPathConfig::default()
        })
    }

    #[test]
    fn a_payload_over_max_event_size_costs_only_itself() {
        let mut hot = hot(true, "1");
        let now = now_ms();
        let txn = "t-1";
        let topic = topic(EventType::Bid, crate::wire::partition_of(txn.as_bytes(), 16));
        let big = payload(txn, 2000);
        assert!(big.len() > 1000);
        for i in 0..10 {
            hot.process(topic.as_bytes(), &payload(txn, i), now);
            hot.process(topic.as_bytes(), &big, now);
        }
        assert_eq!(hot.invalid[DecodeError::TooLarge.index()], 10);
        assert_eq!(hot.aggregator.take_stats().accepted.iter().sum::<u64>(), 10);
    }

    /// A txn whose partition out of 64 is not its partition out of 16.
    fn mismatching_txn() -> (String, u32) {
        (0..)
            .map(|i| format!("m-{i}"))
            .map(|t| {
                let p = crate::wire::partition_of(t.as_bytes(), 64);
                (t, p)
            })
            .find(|(t, p)| crate::wire::partition_of(t.as_bytes(), 16) != *p)
            .unwrap()
    }

    #[test]
    fn a_mismatching_partition_is_kept_when_everything_is_taken_and_dropped_otherwise() {
        let (txn, p64) = mismatching_txn();
        let wrong = topic(EventType::Bid, p64);
        let now = now_ms();
        let mut all = hot(true, "1");
        all.process(wrong.as_bytes(), &payload(&txn, 0), now);
        assert_eq!(all.partitions.mismatches, 1);
        assert_eq!(all.aggregator.take_stats().accepted.iter().sum::<u64>(), 1, "kept");
        assert_eq!(all.invalid.iter().sum::<u64>(), 0);
        let mut sampled = hot(false, "1/2");
        sampled.process(wrong.as_bytes(), &payload(&txn, 0), now);
        assert_eq!(sampled.partitions.mismatches, 1);
        assert_eq!(sampled.invalid[DecodeError::PartitionMismatch.index()], 1, "dropped");
        assert_eq!(sampled.aggregator.take_stats().accepted.iter().sum::<u64>(), 0);
        // a matching event is not counted
        let ok = "ok-1";
        let right = topic(EventType::Bid, crate::wire::partition_of(ok.as_bytes(), 16));
        all.process(right.as_bytes(), &payload(ok, 0), now);
        assert_eq!(all.partitions.mismatches, 1);
    }
}
