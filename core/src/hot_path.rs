//! The per-message work, with no socket and no I/O.

use crate::aggregate::{AggregateConfig, Aggregator, Outcome};
use crate::buffer::{BufferStats, ClaimBuffer};
use crate::decode::{decode, DecodeError, Event};
use crate::sample::{PartitionShare, Rate, Sampler, TypeRates};
use crate::seq::SeqTracker;
use crate::wire::{fnv1a64, parse_topic, EventType, MAX_PARTITIONS};
use rustc_hash::FxHashMap;

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
    pub unlogged: u64,
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
    /// Rollup sampling rate of each event type.
    pub sample: TypeRates,
    /// Raw-event sampling rate.
    pub raw_sample: Rate,
    /// Whether this instance takes every partition (all of them, or a fleet
    /// member: its group takes them all). Then an event of a type at rate 1
    /// on a mismatching partition is still kept: nothing can be missed.
    pub takes_every_partition: bool,
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
            sample: Rate::ALL.into(),
            raw_sample: Rate::from_ppm(1_000),
            takes_every_partition: true,
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

/// What happens to one message once its frames are in: the size limit,
/// decode, `seq` tracking, the partition check, sampling, the lateness check
/// and aggregation, with counts kept locally. No socket and no I/O, so
/// benchmarks, profiles and the fuzz target run exactly the code the ingest
/// threads run.
pub struct HotPath {
    /// Fleet-wide partition count P.
    pub partition_count: u32,
    /// `partition_count - 1` when it is a power of two (64, 256: the usual
    /// counts), so that `h mod P` is a mask instead of a 64-bit division.
    partition_mask: Option<u64>,
    max_event_size: usize,
    /// Whether this instance takes every partition (see
    /// [`HotPathConfig::takes_every_partition`]).
    pub takes_every_partition: bool,
    /// Each event type's rollup sampler, by [`EventType::index`].
    samplers: [Sampler; EventType::ALL.len()],
    /// Per type, whether its rollup sample keeps every transaction (no
    /// per-event decision).
    everything: [bool; EventType::ALL.len()],
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
    /// Per partition, whether this instance owns it now (`None`: every
    /// partition it subscribes to). A fleet member's partitions move; a
    /// message of a partition it no longer owns (in flight when it
    /// unsubscribed) is the new owner's, which counts it from the committed
    /// marks.
    pub owned: Option<Box<[bool]>>,
    /// Messages of partitions not owned, since the last publish.
    pub unowned: u64,
    /// A fleet member's: messages of partitions it is about to take over,
    /// buffered until the lease is passed to it ([`HotPath::replay`]).
    pub buffer: Option<ClaimBuffer>,
}

impl HotPath {
    /// A hot path with the given settings.
    pub fn new(config: HotPathConfig) -> HotPath {
        let samplers = EventType::ALL.map(|t| Sampler::new(config.sample.of(t), config.partition_count));
        HotPath {
            partition_count: config.partition_count,
            partition_mask: config.partition_count.is_power_of_two().then(|| u64::from(config.partition_count) - 1),
            max_event_size: config.max_event_size,
            takes_every_partition: config.takes_every_partition,
            everything: samplers.each_ref().map(Sampler::keeps_everything),
            samplers,
            raw_sampler: (config.raw_sample != Rate::NONE)
                .then(|| Sampler::new(config.raw_sample, config.partition_count)),
            aggregator: Aggregator::new(config.aggregate),
            seqs: SeqTracker::new(config.max_seq_jump),
            partitions: PartitionCheck::default(),
            invalid: [0; DecodeError::COUNT],
            sampled_out: 0,
            owned: None,
            unowned: 0,
            buffer: None,
        }
    }

    /// The samplers that decide which partitions of `event_type` are
    /// subscribed to: the type's rollup sampler, and the raw one (whose
    /// transactions are kept whole in `events_sample`).
    pub fn samplers(&self, event_type: EventType) -> Vec<&Sampler> {
        let mut out = vec![&self.samplers[event_type.index()]];
        out.extend(self.raw_sampler.as_ref());
        out
    }

    /// Whether any sampler of `event_type` needs partition `p` at all.
    pub fn wants(&self, event_type: EventType, p: u32) -> bool {
        self.samplers(event_type).iter().any(|s| s.share(p) != PartitionShare::Nothing)
    }

    /// Whether `partition` is this instance's now.
    #[inline]
    fn owns(&self, partition: u32) -> bool {
        self.owned.as_ref().is_none_or(|o| o.get(partition as usize).copied().unwrap_or(false))
    }

    /// A message of a partition not owned: buffered when the partition is
    /// about to be taken over (or this member is a standby), otherwise
    /// counted (the owner's).
    #[cold]
    fn not_owned(&mut self, partition: u32, topic: &[u8], payload: &[u8], now_ms: i64) {
        match self.buffer.as_mut().filter(|h| h.buffers(partition)) {
            Some(buffer) => buffer.push(partition, topic, payload, now_ms),
            None => self.unowned += 1,
        }
    }

    /// Stops buffering `partition` (its lease was passed to this instance,
    /// which owns it now, its trackers seeded with the giver's committed
    /// marks) and runs what was buffered through the hot path: what lies at or
    /// below the marks is dropped (the giver counted it), what has no
    /// `pub`/`seq` or is invalid is dropped (cut by arrival time: it
    /// arrived while the giver owned the partition), the rest is processed
    /// as if it arrived now. Without `replay`, [`ClaimBuffer::stop`] alone drops
    /// what was buffered (a claim withdrawn: the owner keeps the partition).
    pub fn replay(&mut self, partition: u32, now_ms: i64) {
        let Some(buffer) = self.buffer.as_mut() else { return };
        let messages = buffer.stop(partition);
        // The previous owner wrote up to the buffered message at its mark: per
        // sequence, everything buffered up to the last one carrying the mark is
        // counted, whatever its `seq` (a publisher restart in the window
        // repeats low values, and what came before it is higher). Only a
        // restart after the cut that climbs back to the mark's value before
        // the lease is passed repeats it. A sequence whose mark was not
        // buffered is cut by value.
        let mut cut: FxHashMap<(&str, EventType, u32), usize> = FxHashMap::default();
        for (i, (topic, payload)) in messages.iter().enumerate() {
            if let Ok(Event { publisher: Some(publisher), seq: Some(seq), event_type, partition, .. }) =
                decode(topic, payload)
            {
                if self.seqs.is_mark(publisher, event_type, partition, seq) {
                    cut.insert((publisher, event_type, partition), i);
                }
            }
        }
        let mut stats = BufferStats::default();
        for (i, (topic, payload)) in messages.iter().enumerate() {
            match decode(topic, payload) {
                Ok(Event { publisher: Some(publisher), seq: Some(seq), event_type, partition, .. }) => {
                    let counted = match cut.get(&(publisher, event_type, partition)) {
                        Some(&last) => i <= last,
                        None => self.seqs.already_counted(publisher, event_type, partition, seq),
                    };
                    if counted {
                        stats.duplicates += 1;
                    } else {
                        stats.replayed += 1;
                        self.process(topic, payload, now_ms);
                    }
                }
                Ok(_) | Err(_) => stats.unsequenced += 1,
            }
        }
        if let Some(buffer) = self.buffer.as_mut() {
            buffer.stats.replayed += stats.replayed;
            buffer.stats.duplicates += stats.duplicates;
            buffer.stats.unsequenced += stats.unsequenced;
        }
    }

    /// Counts a message that does not have exactly two frames.
    pub fn bad_frames(&mut self) {
        self.invalid[DecodeError::Frames.index()] += 1;
    }

    /// Checks, decodes, samples and aggregates one message received at `now_ms`.
    #[inline]
    pub fn process(&mut self, topic: &[u8], payload: &[u8], now_ms: i64) {
        // A fleet member's: a message of a partition it does not own is not
        // its own to count (not even as invalid): buffered or left to the owner.
        if self.owned.is_some() {
            if let Some((_, partition)) = parse_topic(topic) {
                if partition >= self.partition_count {
                    self.beyond_partitions(partition, topic, payload, now_ms);
                    return;
                }
                if !self.owns(partition) {
                    self.not_owned(partition, topic, payload, now_ms);
                    return;
                }
            }
        }
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
        let ev = match decode(topic, payload) {
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
        let owner = self.owner_of(hash);
        if owner != ev.partition && !self.mismatched(&ev, hash) {
            return;
        }
        self.keep(ev, hash, owner, now_ms);
    }

    /// The partition the wire contract routes a transaction of `hash` to.
    #[inline]
    fn owner_of(&self, hash: u64) -> u32 {
        (match self.partition_mask {
            Some(mask) => hash & mask,
            None => hash % u64::from(self.partition_count),
        }) as u32
    }

    /// Whether an event of `event_type` on a mismatching partition is kept:
    /// when every partition is taken and the type is at rate 1, so that
    /// whichever partition it comes on, it is counted once.
    pub fn keeps_mismatched(&self, event_type: EventType) -> bool {
        self.takes_every_partition && self.everything[event_type.index()]
    }

    /// An event on another partition than its transaction's:
    /// counted; kept when its type takes everything (see
    /// [`HotPath::keeps_mismatched`]), otherwise dropped as invalid.
    /// Returns whether it is kept.
    #[inline]
    fn mismatched(&mut self, ev: &Event<'_>, hash: u64) -> bool {
        self.partitions.record(ev.partition, hash);
        if !self.keeps_mismatched(ev.event_type) {
            // Only part of this transaction's events reach the topics this
            // instance subscribes to: it cannot be sampled whole.
            self.invalid[DecodeError::PartitionMismatch.index()] += 1;
            return false;
        }
        // Everything is taken anyway: keep it (sampled and raw-sampled as
        // its transaction's partition, `owner`; its pairing halves go with
        // the topic it came on).
        true
    }

    /// A fleet member's message on a topic at or above `partition-count`
    /// (publishers with more partitions than the group): no lease covers
    /// its topic, so the member that owns its transaction's partition
    /// takes it, and it is counted as a partition mismatch there (alerted:
    /// never left to nobody as "unowned"). When everything is taken, it is
    /// kept under that partition, as a single instance keeps it; its `seq`
    /// is not tracked, since the topic's events are split among members
    /// and each would see gaps that are not losses.
    #[cold]
    fn beyond_partitions(&mut self, partition: u32, topic: &[u8], payload: &[u8], now_ms: i64) {
        // Whoever owns the topic's partition modulo the count answers for
        // what has no transaction to go by.
        let fallback = partition % self.partition_count;
        if payload.len() > self.max_event_size {
            if self.owns(fallback) {
                self.invalid[DecodeError::TooLarge.index()] += 1;
            }
            return;
        }
        let mut ev = match decode(topic, payload) {
            Ok(ev) => ev,
            Err(e) => {
                if self.owns(fallback) {
                    self.invalid[e.index()] += 1;
                }
                return;
            }
        };
        let hash = fnv1a64(ev.txn);
        let owner = self.owner_of(hash);
        if !self.owns(owner) {
            self.unowned += 1;
            return;
        }
        if self.mismatched(&ev, hash) {
            // (the member owning `owner` answers for it, its halves too)
            ev.partition = owner;
            self.keep(ev, hash, owner, now_ms);
        }
    }

    /// Samples, admits and aggregates a decoded event of partition `owner`
    /// (its transaction's), which came on the topic of `ev.partition`.
    #[inline]
    fn keep(&mut self, ev: Event<'_>, hash: u64, owner: u32, now_ms: i64) {
        let t = ev.event_type.index();
        let rollup = self.everything[t] || self.samplers[t].keep_owned(owner, hash);
        let raw = self.raw_sampler.as_ref().is_some_and(|s| s.keep_owned(owner, hash));
        if !rollup && !raw {
            self.sampled_out += 1;
            return;
        }
        if self.aggregator.admit(ev.ts_ms, now_ms) != Outcome::Accepted {
            return;
        }
        if raw {
            if ev.partition == owner {
                self.aggregator.push_raw(&ev, now_ms);
            } else {
                // the raw sample's partition is the transaction's
                self.aggregator.push_raw(&Event { partition: owner, ..ev.clone() }, now_ms);
            }
        }
        if rollup {
            self.aggregator.record_admitted(&ev);
        } else {
            self.sampled_out += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::now_ms;
    use crate::wire::{topic, EventType};
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

    fn hot(takes_every_partition: bool, sample: &str) -> HotPath {
        HotPath::new(HotPathConfig {
            partition_count: 16,
            sample: sample.parse::<Rate>().unwrap().into(),
            raw_sample: Rate::NONE,
            takes_every_partition,
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

    /// Publishers with twice the group's partitions: each event on a topic
    /// at or above `partition-count` is taken by exactly one of the two
    /// members (the one owning its transaction's partition), counted as a
    /// mismatch there, and kept when everything is taken; the other leaves
    /// it as not its own.
    #[test]
    fn a_fleet_member_takes_the_events_beyond_the_partition_count_that_are_its_own() {
        let now = now_ms();
        let halves = |take_everything: bool| {
            [0, 1].map(|half| {
                let mut hot = hot(take_everything, if take_everything { "1" } else { "1/2" });
                hot.owned = Some((0..16).map(|p| p % 2 == half).collect());
                hot
            })
        };
        for everything in [true, false] {
            let mut members = halves(everything);
            let mut beyond = 0;
            for i in 0..200 {
                let txn = format!("b-{i}");
                let p32 = crate::wire::partition_of(txn.as_bytes(), 32);
                if p32 < 16 {
                    continue;
                }
                beyond += 1;
                for m in &mut members {
                    m.process(topic(EventType::Bid, p32).as_bytes(), &payload(&txn, 0), now);
                }
            }
            assert!(beyond > 50);
            let mismatches: u64 = members.iter().map(|m| m.partitions.mismatches).sum();
            assert_eq!(mismatches, beyond, "each counted once, by its owner");
            let unowned: u64 = members.iter().map(|m| m.unowned).sum();
            assert_eq!(unowned, beyond, "and left by the other");
            let accepted: u64 =
                members.iter_mut().map(|m| m.aggregator.take_stats().accepted.iter().sum::<u64>()).sum();
            let dropped: u64 = members.iter().map(|m| m.invalid[DecodeError::PartitionMismatch.index()]).sum();
            if everything {
                assert_eq!((accepted, dropped), (beyond, 0), "kept when everything is taken");
            } else {
                assert_eq!((accepted, dropped), (0, beyond), "dropped as invalid when sampled");
            }
            assert_eq!(members.iter().map(|m| m.seqs.lost).sum::<u64>(), 0);
        }
    }

    #[test]
    fn buffered_messages_replay_above_the_marks_only() {
        let mut hot = hot(false, "1");
        hot.owned = Some(vec![false; 16].into_boxed_slice());
        hot.buffer = Some(ClaimBuffer::new(16, 1 << 20));
        let now = now_ms();
        let txn = "held-1";
        let p = crate::wire::partition_of(txn.as_bytes(), 16);
        let t = topic(EventType::Bid, p);
        let msg = |seq: Option<u64>, pad: usize| {
            let mut m = serde_json::json!({"txn": txn, "ts": now, "pad": "x".repeat(pad)});
            if let Some(seq) = seq {
                m["pub"] = "pub-a".into();
                m["seq"] = seq.into();
            }
            rmp_serde::to_vec_named(&m).unwrap()
        };
        hot.buffer.as_mut().unwrap().start(p);
        // Received while the giver still owns the partition: 1..=5, one
        // without seq, one too large (seq 6), then 8 (7 never arrived).
        for seq in 1..=5 {
            hot.process(t.as_bytes(), &msg(Some(seq), 0), now);
        }
        hot.process(t.as_bytes(), &msg(None, 0), now);
        hot.process(t.as_bytes(), &msg(Some(6), 2000), now);
        hot.process(t.as_bytes(), &msg(Some(8), 0), now);
        assert_eq!(hot.aggregator.take_stats().accepted.iter().sum::<u64>(), 0, "buffered, not counted");
        assert_eq!(hot.unowned, 0);
        // The giver committed up to seq 3.
        hot.seqs.seed("pub-a", crate::seq::topic_id(EventType::Bid as u8, p), 3);
        hot.owned.as_mut().unwrap()[p as usize] = true;
        hot.replay(p, now);
        let buffer = hot.buffer.as_ref().unwrap();
        assert_eq!(buffer.stats, BufferStats { replayed: 4, duplicates: 3, unsequenced: 1, overflowed: 0 });
        assert_eq!(hot.aggregator.take_stats().accepted.iter().sum::<u64>(), 3, "seq 4, 5 and 8");
        assert_eq!(
            hot.invalid[DecodeError::TooLarge.index()],
            1,
            "seq 6, counted once: at the replay, when it became ours"
        );
        assert_eq!(hot.seqs.lost, 1, "seq 7");
        assert!(!buffer.buffers(p));
        // Live again: a later message is aggregated, a gap counted.
        hot.process(t.as_bytes(), &msg(Some(10), 0), now);
        assert_eq!(hot.seqs.lost, 2);
    }

    #[test]
    fn a_publisher_restart_inside_the_buffer_is_cut_where_the_previous_owner_stopped() {
        let now = now_ms();
        let txn = "held-2";
        let p = crate::wire::partition_of(txn.as_bytes(), 16);
        let t = topic(EventType::Bid, p);
        let msg = |seq: u64| {
            rmp_serde::to_vec_named(&serde_json::json!({"txn": txn, "ts": now, "pub": "pub-a", "seq": seq})).unwrap()
        };
        // ClaimBuffer: 98, 99, 100, then the publisher restarted: 0, 1, 2, 3. The
        // previous owner stopped after the restart (its mark is 1), or
        // before it (its mark is 100).
        for (mark, duplicates, replayed, restarts) in [(1, 5, 2, 0), (100, 3, 4, 1)] {
            let mut hot = hot(false, "1");
            hot.owned = Some(vec![false; 16].into_boxed_slice());
            hot.buffer = Some(ClaimBuffer::new(16, 1 << 20));
            hot.buffer.as_mut().unwrap().start(p);
            for seq in [98, 99, 100, 0, 1, 2, 3] {
                hot.process(t.as_bytes(), &msg(seq), now);
            }
            hot.seqs.seed("pub-a", crate::seq::topic_id(EventType::Bid as u8, p), mark);
            hot.owned.as_mut().unwrap()[p as usize] = true;
            hot.replay(p, now);
            let stats = hot.buffer.as_ref().unwrap().stats;
            assert_eq!((stats.duplicates, stats.replayed), (duplicates, replayed), "mark {mark}");
            assert_eq!(hot.aggregator.take_stats().accepted.iter().sum::<u64>(), replayed, "mark {mark}");
            assert_eq!((hot.seqs.lost, hot.seqs.restarts), (0, restarts), "mark {mark}");
        }
    }
}
