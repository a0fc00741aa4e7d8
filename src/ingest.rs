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
use crate::decode::{decode, DecodeError};
use crate::sample::{PartitionShare, Rate, Sampler};
use crate::telemetry as t;
use crate::wire::{topic, EventType};
use metrics::{counter, gauge, Counter, Gauge};
use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// ZMQ_MAXMSGSIZE.
    pub max_message_size: i64,
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

/// Publishers tracked for `seq` gaps; more are not tracked (bounded memory).
const MAX_TRACKED_PUBLISHERS: usize = 10_000;

/// The topics thread `index` of `threads` subscribes to: its share of this
/// instance's partitions (round robin), minus partitions that none of the
/// samplers (rollup, raw) needs, for each configured event type.
pub fn subscriptions(config: &IngestConfig, samplers: &[&Sampler], index: usize, threads: usize) -> Vec<String> {
    let mut out = Vec::new();
    for &et in &config.event_types {
        for (i, &p) in config.partitions.iter().enumerate() {
            let wanted = samplers.iter().any(|s| s.share(p) != PartitionShare::Nothing);
            if i % threads == index && wanted {
                out.push(topic(et, p));
            }
        }
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

/// Detects messages lost between publishers and us from `seq` gaps, per
/// publisher and topic. A `seq` that does not go up is a publisher restart.
#[derive(Debug, Default)]
pub struct SeqTracker {
    last: FxHashMap<Box<[u8]>, FxHashMap<u32, u64>>,
    /// Messages lost since the last take.
    pub lost: u64,
    /// Restarts seen since the last take.
    pub restarts: u64,
}

impl SeqTracker {
    /// Records `seq` from `publisher` on topic `(event_type, partition)`.
    #[inline]
    pub fn observe(&mut self, publisher: &str, event_type: EventType, partition: u32, seq: u64) {
        let topic_id = event_type as u32 * 10_000 + partition;
        let per_topic = match self.last.get_mut(publisher.as_bytes()) {
            Some(m) => m,
            None => {
                if self.last.len() >= MAX_TRACKED_PUBLISHERS {
                    return;
                }
                self.last.entry(publisher.as_bytes().into()).or_default()
            }
        };
        match per_topic.insert(topic_id, seq) {
            Some(prev) if seq > prev => self.lost += seq - prev - 1,
            Some(_) => self.restarts += 1,
            None => {}
        }
    }
}

/// Metric handles of one ingest thread; counts are kept locally per message
/// and added here in batches (a few times per second).
struct IngestMetrics {
    received: Counter,
    accepted: [Counter; 8],
    invalid: [Counter; 9],
    sampled_out: Counter,
    late: Counter,
    future: Counter,
    lost: Counter,
    restarts: Counter,
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

/// What happens to one message once its frames are in: decode, `seq`
/// tracking, sampling, the lateness check and aggregation, with counts kept
/// locally. No socket and no I/O, so benchmarks and profiles run exactly
/// the code the ingest threads run.
pub struct HotPath {
    partition_count: u32,
    sampler: Sampler,
    /// The rollup sample keeps every transaction (no per-event hashing).
    everything: bool,
    /// `None` when the raw sample is off.
    raw_sampler: Option<Sampler>,
    /// The rollups being built.
    pub aggregator: Aggregator,
    /// `seq` gaps and restarts.
    pub seqs: SeqTracker,
    /// Invalid messages per [`DecodeError::index`] since the last publish.
    pub invalid: [u64; 9],
    /// Events sampled out since the last publish.
    pub sampled_out: u64,
}

impl HotPath {
    /// A hot path for `partition_count` partitions and the given samples.
    pub fn new(partition_count: u32, sample: Rate, raw_sample: Rate, aggregate: AggregateConfig) -> HotPath {
        let sampler = Sampler::new(sample, partition_count);
        HotPath {
            partition_count,
            everything: sampler.keeps_everything(),
            sampler,
            raw_sampler: (raw_sample != Rate::NONE).then(|| Sampler::new(raw_sample, partition_count)),
            aggregator: Aggregator::new(aggregate),
            seqs: SeqTracker::default(),
            invalid: [0; 9],
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

    /// Decodes, samples and aggregates one message received at `now_ms`.
    #[inline]
    pub fn process(&mut self, topic: &[u8], payload: &[u8], now_ms: i64) {
        let ev = match decode(topic, payload, self.partition_count) {
            Ok(ev) => ev,
            Err(e) => {
                self.invalid[e.index()] += 1;
                return;
            }
        };
        if let (Some(publisher), Some(seq)) = (ev.publisher, ev.seq) {
            self.seqs.observe(publisher, ev.event_type, ev.partition, seq);
        }
        // The topic's partition is the publishers' fnv1a64(txn) mod P (the
        // wire contract), so partitions kept whole or not at all decide
        // without hashing; only a refined partition hashes the txn.
        let rollup = self.everything || self.sampler.keep_in(ev.partition, ev.txn);
        let raw = self.raw_sampler.as_ref().is_some_and(|s| s.keep_in(ev.partition, ev.txn));
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
    ) -> Result<Ingest, IngestError> {
        let hot = HotPath::new(config.partition_count, config.sample, config.raw_sample, aggregate);
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
        })
    }

    /// Receives until `stop` is set, then hands the last delta to the sink
    /// (waiting for room, since nothing else is left to do) and returns.
    pub fn run(mut self, stop: &AtomicBool) -> IngestSummary {
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
                if now >= next_flush {
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
        let s = &mut self.summary;
        s.received += self.received;
        s.invalid += hot.invalid.iter().sum::<u64>();
        s.sampled_out += hot.sampled_out;
        s.accepted += accepted.iter().sum::<u64>();
        s.rejected += late + future;
        s.lost += hot.seqs.lost;
        hot.invalid = [0; 9];
        hot.sampled_out = 0;
        hot.seqs.lost = 0;
        hot.seqs.restarts = 0;
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
        let ingest = Ingest::new(&ctx, config, aggregate.clone(), index, flush_interval, sink.clone())?;
        let stop = stop.clone();
        let handle = std::thread::Builder::new()
            .name(format!("ingest-{index}"))
            .spawn(move || ingest.run(&stop))
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
        let mut s = SeqTracker::default();
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

    #[test]
    fn subscriptions_follow_partitions_types_threads_and_sample() {
        let config = IngestConfig {
            connect: vec![],
            bind: vec![],
            partition_count: 64,
            partitions: (0..16).collect(),
            event_types: vec![EventType::Bid, EventType::Win],
            sample: Rate::ALL,
            raw_sample: Rate::NONE,
            receive_hwm: 0,
            max_message_size: 1024,
            threads: 2,
            allow: vec![],
        };
        let all = Sampler::new(Rate::ALL, 64);
        let t0 = subscriptions(&config, &[&all], 0, 2);
        let t1 = subscriptions(&config, &[&all], 1, 2);
        assert_eq!(t0.len() + t1.len(), 32);
        assert!(t0.contains(&"bid.0000".to_string()) && t1.contains(&"win.0015".to_string()));
        let eighth = Sampler::new("1/8".parse().unwrap(), 64);
        let mut sampled = subscriptions(&config, &[&eighth], 0, 1);
        sampled.sort();
        assert_eq!(sampled, vec!["bid.0000", "bid.0008", "win.0000", "win.0008"]);
        // a raw sample at a lower rate needs no extra partition (samples nest)
        let raw = Sampler::new("1/1000".parse().unwrap(), 64);
        assert_eq!(subscriptions(&config, &[&eighth, &raw], 0, 1).len(), 4);
        // at a higher rate it does
        let half = Sampler::new("1/2".parse().unwrap(), 64);
        assert_eq!(subscriptions(&config, &[&eighth, &half], 0, 1).len(), 16);
    }
}
