//! `seq` tracking: messages lost between publishers and the logger.

use crate::wire::{EventType, MAX_PARTITIONS};
use rustc_hash::FxHashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

/// Publishers tracked for `seq` gaps at most, and (publisher, topic)
/// sequences at most: the bounds on the tracker's memory, whatever the
/// publishers send (a few MiB at the limits).
const MAX_TRACKED_PUBLISHERS: usize = 10_000;
const MAX_TRACKED_SEQUENCES: usize = 200_000;

/// The highest `seq` received from one publisher on one topic since the
/// last [`SeqTracker::take_marks`]: what a flush records as committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// The publisher (`pub`).
    pub publisher: Arc<str>,
    /// `event_type * MAX_PARTITIONS + partition`.
    pub topic: u32,
    /// The last `seq` received.
    pub seq: u64,
}

/// Counts a sequence going from `prev` to `seq` into (lost, resets,
/// restarts): the messages between are lost, unless it jumped further than
/// `max_jump` (a reset) or went back (a publisher restart). Returns the
/// messages counted lost.
#[inline(always)]
fn step(max_jump: u64, (lost, resets, restarts): (&mut u64, &mut u64, &mut u64), prev: u64, seq: u64) -> u64 {
    if seq > prev {
        let gap = seq - prev - 1;
        if gap > max_jump {
            *resets += 1;
        } else {
            *lost += gap;
            return gap;
        }
    } else {
        *restarts += 1;
    }
    0
}

/// Messages lost on one publisher's topic: a `seq` gap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// The publisher (`pub`).
    pub publisher: Arc<str>,
    /// `event_type * MAX_PARTITIONS + partition`.
    pub topic: u32,
    /// Messages lost.
    pub messages: u64,
}

impl Mark {
    /// The topic's partition.
    pub fn partition(&self) -> u32 {
        self.topic % MAX_PARTITIONS
    }

    /// The topic's event type, as [`EventType::index`].
    pub fn event_type_index(&self) -> u8 {
        (self.topic / MAX_PARTITIONS) as u8
    }
}

/// The topic id of `(event_type index, partition)`.
pub fn topic_id(event_type_index: u8, partition: u32) -> u32 {
    u32::from(event_type_index) * MAX_PARTITIONS + partition
}

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
///
/// It also keeps what a flush commits ([`SeqTracker::take_marks`]): every
/// sequence that moved since the last take, without allocating per message
/// (a sequence is stamped with the take's generation). Sequences committed
/// by an earlier run are [`SeqTracker::seed`]ed, so that the first `seq`
/// after a restart counts the gap across it.
#[derive(Debug)]
pub struct SeqTracker {
    publishers: FxHashMap<Box<[u8]>, Tracked>,
    sequences: usize,
    max_jump: u64,
    /// Stamps sequences that moved since the last take (never 0: seeds).
    generation: u32,
    /// Sequences stamped with `generation`.
    moved: usize,
    /// Marks of evicted publishers not taken yet.
    evicted_marks: Vec<Mark>,
    /// While the marks an earlier run committed are not known yet (see
    /// [`SeqTracker::await_seeds`]): the first `seq` of every sequence
    /// begun since, in order.
    firsts: Option<Vec<(Arc<str>, u32, u64)>>,
    /// Observations so far: the clock of `Tracked::last_seen`.
    tick: u64,
    /// Messages lost since the last take.
    pub lost: u64,
    /// The same, per publisher and topic, as [`SeqTracker::take_marks`]
    /// collected them from the sequences (each counts its own gap in
    /// `Sequence::gap`), plus those of evicted sequences and of late seeds:
    /// taken with [`SeqTracker::take_gaps`], what the warehouse's loss
    /// table records.
    gaps: Vec<Gap>,
    /// Restarts seen since the last take.
    pub restarts: u64,
    /// Sequence resets (jumps over `max_jump`) since the last take.
    pub resets: u64,
    /// Publishers evicted since the last take.
    pub evicted: u64,
    /// Sequences begun (their first `seq` seen, none seeded) since the last
    /// take: a mark just below each first `seq` (see
    /// [`SeqTracker::take_begun`]).
    begun: Vec<Mark>,
    /// Whether publishers were evicted since the last take: a sequence
    /// tracked again after its eviction may have events not handed over
    /// yet below its new first `seq`, so no mark is taken for it early.
    evicted_since_take: bool,
    /// Whether a sequence began since the last take that no early mark can
    /// stand for (see [`SeqTracker::begun_needs_rows`]).
    needs_rows: bool,
}

#[derive(Debug)]
struct Tracked {
    name: Arc<str>,
    /// Per topic (`event_type * 10 000 + partition`).
    topics: FxHashMap<u32, Sequence>,
    last_seen: u64,
    seen_twice: bool,
}

impl Tracked {
    fn new(publisher: &str) -> Tracked {
        Tracked { name: publisher.into(), topics: FxHashMap::default(), last_seen: 0, seen_twice: false }
    }
}

#[derive(Debug, Clone, Copy)]
struct Sequence {
    last: u64,
    /// The generation it last moved in.
    stamp: u32,
    /// Messages lost in it since the last take (in the padding: the
    /// struct stays 16 bytes; past `u32::MAX`, the rest goes to
    /// `SeqTracker::gaps` at once).
    gap: u32,
}

impl SeqTracker {
    /// A tracker treating forward jumps over `max_jump` as resets.
    pub fn new(max_jump: u64) -> SeqTracker {
        SeqTracker {
            publishers: FxHashMap::default(),
            sequences: 0,
            max_jump,
            generation: 1,
            moved: 0,
            evicted_marks: Vec::new(),
            firsts: None,
            tick: 0,
            lost: 0,
            gaps: Vec::new(),
            restarts: 0,
            resets: 0,
            evicted: 0,
            begun: Vec::new(),
            evicted_since_take: false,
            needs_rows: false,
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
        let full = self.sequences >= MAX_TRACKED_SEQUENCES;
        let generation = self.generation;
        let tracked = match self.publishers.get_mut(publisher.as_bytes()) {
            Some(tracked) => tracked,
            None => {
                self.make_room();
                self.publishers.entry(publisher.as_bytes().into()).or_insert_with(|| Tracked::new(publisher))
            }
        };
        tracked.seen_twice |= tracked.last_seen != 0;
        tracked.last_seen = self.tick;
        match tracked.topics.entry(topic_id) {
            Entry::Occupied(mut e) => {
                let s = e.get_mut();
                let prev = std::mem::replace(&mut s.last, seq);
                if s.stamp != generation {
                    s.stamp = generation;
                    self.moved += 1;
                }
                let counts = (&mut self.lost, &mut self.resets, &mut self.restarts);
                let gap = step(self.max_jump, counts, prev, seq);
                if gap > 0 {
                    match u32::try_from(u64::from(s.gap) + gap) {
                        Ok(sum) => s.gap = sum,
                        Err(_) => {
                            self.gaps.push(Gap { publisher: tracked.name.clone(), topic: topic_id, messages: gap })
                        }
                    }
                }
            }
            // Only a publisher with 200 000 topics of its own gets here
            // full (eviction keeps the busiest): stop adding its topics.
            Entry::Vacant(_) if full => {}
            Entry::Vacant(e) => {
                e.insert(Sequence { last: seq, stamp: generation, gap: 0 });
                self.sequences += 1;
                self.moved += 1;
                if let Some(firsts) = &mut self.firsts {
                    if firsts.len() < MAX_TRACKED_SEQUENCES {
                        firsts.push((tracked.name.clone(), topic_id, seq));
                    }
                }
                // A mark just below the first `seq` stands for "nothing of
                // it accounted yet" only when there is such a value, no
                // evicted events of it may be waiting, and no earlier run's
                // mark is still to be read; otherwise the rows go early.
                if seq == 0
                    || self.evicted_since_take
                    || self.firsts.is_some()
                    || self.begun.len() >= MAX_TRACKED_SEQUENCES
                {
                    self.needs_rows = true;
                } else {
                    self.begun.push(Mark { publisher: tracked.name.clone(), topic: topic_id, seq: seq - 1 });
                }
            }
        }
    }

    /// Counts a sequence going from `prev` to `seq`: the messages between
    /// are lost, unless it jumped too far (a reset) or went back (a
    /// publisher restart).
    /// Returns the messages counted lost.
    #[inline(always)]
    fn step(&mut self, prev: u64, seq: u64) -> u64 {
        step(self.max_jump, (&mut self.lost, &mut self.resets, &mut self.restarts), prev, seq)
    }

    /// The gaps found up to the last [`SeqTracker::take_marks`], per
    /// publisher and topic (their sum is what [`SeqTracker::lost`] counted
    /// until then; a topic may appear more than once).
    pub fn take_gaps(&mut self) -> Vec<Gap> {
        std::mem::take(&mut self.gaps)
    }

    /// The marks an earlier run committed are not known yet (the database
    /// did not answer at start): keeps the first `seq` of every sequence
    /// begun from now on, until [`SeqTracker::seed_late`].
    pub fn await_seeds(&mut self) {
        self.firsts = Some(Vec::new());
    }

    /// Whether [`SeqTracker::await_seeds`] was called and
    /// [`SeqTracker::seed_late`] not yet.
    pub fn awaits_seeds(&self) -> bool {
        self.firsts.is_some()
    }

    /// The marks an earlier run committed, known late: a sequence begun
    /// since [`SeqTracker::await_seeds`] counts the gap from its mark to
    /// its first `seq` here, as if it had been seeded at start; the others
    /// are [`SeqTracker::seed`]ed.
    pub fn seed_late<'a>(&mut self, seeds: impl IntoIterator<Item = (&'a str, u32, u64)>) {
        let firsts = self.firsts.take().unwrap_or_default();
        let mut first: FxHashMap<(&str, u32), u64> = FxHashMap::default();
        first.reserve(firsts.len());
        for (name, topic, seq) in &firsts {
            // After an eviction a sequence may begin twice: the earlier counts.
            first.entry((&**name, *topic)).or_insert(*seq);
        }
        for (publisher, topic, mark) in seeds {
            match first.get(&(publisher, topic)) {
                Some(&seq) => {
                    let gap = self.step(mark, seq);
                    if gap > 0 {
                        self.gaps.push(Gap { publisher: Arc::from(publisher), topic, messages: gap });
                    }
                }
                None if !self.tracks(publisher, topic) => self.seed(publisher, topic, mark),
                // Begun while the firsts were full: its gap cannot be known.
                None => {}
            }
        }
    }

    fn tracks(&self, publisher: &str, topic: u32) -> bool {
        self.publishers.get(publisher.as_bytes()).is_some_and(|t| t.topics.contains_key(&topic))
    }

    /// Makes room for a new publisher.
    #[cold]
    fn make_room(&mut self) {
        if self.publishers.len() >= MAX_TRACKED_PUBLISHERS || self.sequences >= MAX_TRACKED_SEQUENCES {
            self.evict_half();
        }
    }

    /// Records that `seq` is committed as the last of `publisher` on `topic`
    /// (see [`topic_id`]), by an earlier run or another owner of its
    /// partition: the next `seq` received there counts the gap from it.
    /// Replaces what is tracked; does nothing when the tracker is full.
    pub fn seed(&mut self, publisher: &str, topic: u32, seq: u64) {
        if !self.publishers.contains_key(publisher.as_bytes()) {
            if self.sequences >= MAX_TRACKED_SEQUENCES || self.publishers.len() >= MAX_TRACKED_PUBLISHERS {
                return;
            }
            self.make_room();
        }
        let tracked = self.publishers.entry(publisher.as_bytes().into()).or_insert_with(|| Tracked::new(publisher));
        match tracked.topics.entry(topic) {
            Entry::Vacant(e) => {
                e.insert(Sequence { last: seq, stamp: 0, gap: 0 });
                self.sequences += 1;
            }
            Entry::Occupied(mut e) => {
                if e.get().stamp == self.generation {
                    self.moved -= 1;
                }
                *e.get_mut() = Sequence { last: seq, stamp: 0, gap: 0 };
            }
        }
    }

    /// Whether `seq` from `publisher` on `(event_type, partition)` lies at
    /// or below a seeded mark no message has moved since: the previous
    /// owner counted it. Asked of the messages a taker held while the
    /// giver still received them (see [`crate::held`]); a live message is
    /// never asked, since nobody else receives it.
    pub fn already_counted(&self, publisher: &str, event_type: EventType, partition: u32, seq: u64) -> bool {
        self.seeded(publisher, event_type, partition).is_some_and(|mark| seq <= mark)
    }

    /// Whether `seq` from `publisher` on `(event_type, partition)` is the
    /// seeded mark itself, no message having moved the sequence since.
    pub fn is_mark(&self, publisher: &str, event_type: EventType, partition: u32, seq: u64) -> bool {
        self.seeded(publisher, event_type, partition) == Some(seq)
    }

    /// The seeded mark of `publisher` on `(event_type, partition)`, while no
    /// message has moved the sequence since.
    fn seeded(&self, publisher: &str, event_type: EventType, partition: u32) -> Option<u64> {
        let topic = event_type as u32 * MAX_PARTITIONS + partition;
        let s = self.publishers.get(publisher.as_bytes())?.topics.get(&topic)?;
        (s.stamp == 0).then_some(s.last)
    }

    /// Stops tracking the sequences of the partitions `gone` says (they
    /// moved to another owner: what is tracked of them would be stale when
    /// they come back).
    pub fn forget(&mut self, gone: impl Fn(u32) -> bool) {
        let generation = self.generation;
        let (mut freed, mut moved) = (0, 0);
        for t in self.publishers.values_mut() {
            t.topics.retain(|&topic, s| {
                let keep = !gone(topic % MAX_PARTITIONS);
                if !keep {
                    freed += 1;
                    moved += usize::from(s.stamp == generation);
                }
                keep
            });
        }
        self.sequences -= freed;
        self.moved -= moved;
        self.evicted_marks.retain(|m| !gone(m.partition()));
        self.begun.retain(|m| !gone(m.partition()));
    }

    /// Whether a sequence moved since the last [`SeqTracker::take_marks`].
    pub fn has_marks(&self) -> bool {
        self.moved > 0 || !self.evicted_marks.is_empty()
    }

    /// Whether a sequence began since the last take.
    pub fn has_begun(&self) -> bool {
        !self.begun.is_empty() || self.needs_rows
    }

    /// Whether a sequence began since the last take that no early mark can
    /// stand for: its first `seq` was 0 (no value below it), publishers
    /// were evicted since the last take (events of a sequence tracked again
    /// may be waiting), or an earlier run's marks are not read yet. Such a
    /// sequence is accounted for by handing over everything gathered early,
    /// rows and marks ([`SeqTracker::take_marks`]).
    pub fn begun_needs_rows(&self) -> bool {
        self.needs_rows
    }

    /// For every sequence begun since the last take, a mark just below its
    /// first `seq`: what a batch may commit at once, before any of the
    /// sequence's events is written (nothing at or below it was received
    /// here). Committed, it lets whoever takes over count the sequence's
    /// unwritten events from its very first one, should this process die
    /// before its first regular batch; it costs a few marks, not a batch
    /// of rows. None is kept while the seeds are awaited (a mark committed
    /// by an earlier run is not known yet, and must not be overwritten
    /// before the gap from it is counted), nor after an eviction until the
    /// next take, nor for a first `seq` of 0 (see
    /// [`SeqTracker::begun_needs_rows`]); [`SeqTracker::take_marks`]
    /// supersedes and clears them.
    pub fn take_begun(&mut self) -> Vec<Mark> {
        std::mem::take(&mut self.begun)
    }

    /// The last `seq` of every sequence that moved since the last take.
    /// Called once per flush interval; it walks every tracked sequence.
    pub fn take_marks(&mut self) -> Vec<Mark> {
        // The marks taken now are at or above those of the sequences begun.
        self.begun.clear();
        self.evicted_since_take = false;
        self.needs_rows = false;
        let mut out = std::mem::take(&mut self.evicted_marks);
        if self.moved > 0 {
            out.reserve(self.moved);
            for t in self.publishers.values_mut() {
                for (&topic, s) in &mut t.topics {
                    if s.stamp == self.generation {
                        out.push(Mark { publisher: t.name.clone(), topic, seq: s.last });
                        // A gap moves its sequence: every one is found here.
                        if s.gap > 0 {
                            let messages = u64::from(std::mem::take(&mut s.gap));
                            self.gaps.push(Gap { publisher: t.name.clone(), topic, messages });
                        }
                    }
                }
            }
        }
        self.generation = self.generation.checked_add(1).unwrap_or(1);
        self.moved = 0;
        out
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
        let (generation, marks, gaps) = (self.generation, &mut self.evicted_marks, &mut self.gaps);
        let mut moved = 0;
        self.publishers.retain(|_, t| {
            let keep = (t.seen_twice, t.last_seen) >= cut;
            if !keep {
                freed += t.topics.len();
                for (&topic, s) in t.topics.iter().filter(|(_, s)| s.stamp == generation) {
                    moved += 1;
                    // What moved is still committed by the next take (bounded:
                    // past the cap, a flood's marks are not worth memory).
                    if marks.len() < MAX_TRACKED_SEQUENCES {
                        marks.push(Mark { publisher: t.name.clone(), topic, seq: s.last });
                    }
                    if s.gap > 0 {
                        gaps.push(Gap { publisher: t.name.clone(), topic, messages: u64::from(s.gap) });
                    }
                }
            }
            keep
        });
        self.moved -= moved;
        self.sequences -= freed;
        self.evicted += (before - self.publishers.len()) as u64;
        self.evicted_since_take = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// The gaps per publisher and topic, taken with the marks, add up to
    /// the lost count, and a take empties them; a sequence reset is no gap.
    #[test]
    fn gaps_are_kept_per_publisher_and_topic() {
        let mut s = SeqTracker::new(1000);
        for (publisher, partition, seq) in [("p1", 3, 1), ("p1", 3, 4), ("p2", 3, 10), ("p2", 3, 12), ("p1", 5, 7)] {
            s.observe(publisher, EventType::Bid, partition, seq);
        }
        s.observe("p1", EventType::Bid, 5, 9);
        s.observe("p1", EventType::Bid, 5, 1_000_000); // a reset
        assert!(s.take_gaps().is_empty(), "taken with the marks");
        s.take_marks();
        let mut gaps = s.take_gaps();
        gaps.sort_by_key(|g| (g.publisher.clone(), g.topic));
        let topic = |p| topic_id(EventType::Bid as u8, p);
        assert_eq!(
            gaps,
            vec![
                Gap { publisher: "p1".into(), topic: topic(3), messages: 2 },
                Gap { publisher: "p1".into(), topic: topic(5), messages: 1 },
                Gap { publisher: "p2".into(), topic: topic(3), messages: 1 },
            ]
        );
        assert_eq!(gaps.iter().map(|g| g.messages).sum::<u64>(), s.lost);
        assert!(s.take_gaps().is_empty());
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

    fn sorted(mut marks: Vec<Mark>) -> Vec<(String, u32, u64)> {
        let mut out: Vec<_> = marks.drain(..).map(|m| (m.publisher.to_string(), m.topic, m.seq)).collect();
        out.sort();
        out
    }

    #[test]
    fn marks_are_what_moved_since_the_last_take() {
        let mut s = SeqTracker::new(1000);
        assert!(!s.has_marks());
        s.observe("p1", EventType::Bid, 3, 7);
        s.observe("p1", EventType::Bid, 3, 8);
        s.observe("p2", EventType::Win, 0, 1);
        assert!(s.has_marks());
        let bid3 = topic_id(EventType::Bid.index() as u8, 3);
        let win0 = topic_id(EventType::Win.index() as u8, 0);
        assert_eq!(sorted(s.take_marks()), vec![("p1".into(), bid3, 8), ("p2".into(), win0, 1)]);
        assert!(!s.has_marks());
        assert!(s.take_marks().is_empty(), "nothing moved since");
        s.observe("p2", EventType::Win, 0, 2);
        let marks = s.take_marks();
        assert_eq!(sorted(marks.clone()), vec![("p2".into(), win0, 2)]);
        assert_eq!((marks[0].partition(), marks[0].event_type_index()), (0, EventType::Win.index() as u8));
    }

    #[test]
    fn a_seeded_sequence_counts_the_gap_across_a_restart_and_is_not_a_mark() {
        let mut s = SeqTracker::new(1000);
        let bid3 = topic_id(EventType::Bid.index() as u8, 3);
        s.seed("p1", bid3, 50);
        s.seed("p1", bid3, 100); // replaces
        assert!(!s.has_marks(), "a seed is already committed");
        s.observe("p1", EventType::Bid, 3, 105);
        assert_eq!(s.lost, 4);
        s.seed("p2", bid3, 100);
        s.observe("p2", EventType::Bid, 3, 3); // the publisher restarted meanwhile
        assert_eq!((s.lost, s.restarts), (4, 1));
        assert_eq!(sorted(s.take_marks()), vec![("p1".into(), bid3, 105), ("p2".into(), bid3, 3)]);
    }

    #[test]
    fn marks_known_late_count_the_gap_to_the_first_seq_of_this_run() {
        let mut s = SeqTracker::new(1000);
        let [bid3, bid4, bid5] = [3, 4, 5].map(|p| topic_id(EventType::Bid.index() as u8, p));
        s.await_seeds();
        for seq in [50, 51, 53] {
            s.observe("p1", EventType::Bid, 3, seq);
        }
        s.observe("p1", EventType::Bid, 4, 7); // went back: a restart
        assert_eq!((s.lost, s.restarts), (1, 0));
        s.seed_late([("p1", bid3, 40), ("p1", bid4, 9), ("p2", bid3, 100), ("p1", bid5, 2_000)]);
        assert_eq!((s.lost, s.restarts), (1 + 9, 1), "41..=49 lost; 7 after 9 is a restart");
        assert!(!s.awaits_seeds());
        s.observe("p2", EventType::Bid, 3, 103); // seeded: counts from its mark
        s.observe("p1", EventType::Bid, 5, 2_001);
        assert_eq!(s.lost, 10 + 2);
        // Sequences begun after the late seeds are not kept as firsts.
        s.observe("p3", EventType::Bid, 3, 1);
        assert!(s.firsts.is_none());
        let marks = sorted(s.take_marks());
        assert!(marks.contains(&("p1".into(), bid3, 53)) && marks.contains(&("p2".into(), bid3, 103)), "{marks:?}");
    }

    #[test]
    fn forgotten_partitions_are_tracked_afresh() {
        let mut s = SeqTracker::new(1000);
        s.observe("p1", EventType::Bid, 3, 10);
        s.observe("p1", EventType::Bid, 4, 10);
        s.forget(|p| p == 3);
        assert_eq!(sorted(s.take_marks()).len(), 1, "only partition 4's mark is left");
        s.observe("p1", EventType::Bid, 3, 50); // tracked afresh: no gap
        assert_eq!(s.lost, 0);
    }

    #[test]
    fn a_sequence_begun_gives_a_mark_below_its_first_seq_until_the_marks_are_taken() {
        let mut s = SeqTracker::new(1000);
        s.observe("a", EventType::Bid, 3, 10);
        s.observe("a", EventType::Bid, 3, 11);
        s.observe("b", EventType::Win, 4, 1);
        let begun: Vec<(String, u32, u64)> =
            s.take_begun().into_iter().map(|m| (m.publisher.to_string(), m.topic, m.seq)).collect();
        let topic = |t: EventType, p: u32| topic_id(t.index() as u8, p);
        assert_eq!(begun, [("a".into(), topic(EventType::Bid, 3), 9), ("b".into(), topic(EventType::Win, 4), 0)]);
        assert!(!s.has_begun(), "taken once");
        // A first seq of 0 has no value below it: mark 0 would claim event 0
        // accounted. Its rows go early instead.
        s.observe("z", EventType::Bid, 7, 0);
        assert!(s.take_begun().is_empty());
        assert!(s.has_begun() && s.begun_needs_rows());
        let _ = s.take_marks();
        assert!(!s.has_begun() && !s.begun_needs_rows());
        // A sequence seeded from committed marks has not begun here.
        s.seed("c", topic(EventType::Bid, 5), 40);
        s.observe("c", EventType::Bid, 5, 41);
        assert!(!s.has_begun());
        // The regular take supersedes what was not taken early.
        s.observe("d", EventType::Bid, 6, 7);
        assert!(s.has_begun());
        let marks = s.take_marks();
        assert!(marks.iter().any(|m| &*m.publisher == "d" && m.seq == 7));
        assert!(!s.has_begun(), "a mark below the first seq never follows the sequence's real mark");
    }

    #[test]
    fn no_early_mark_for_a_sequence_tracked_again_after_an_eviction() {
        let mut s = SeqTracker::new(1000);
        s.observe("steady", EventType::Bid, 1, 1);
        let _ = s.take_marks();
        for i in 0..(MAX_TRACKED_PUBLISHERS as u64 + 1) {
            s.observe(&format!("flood-{i}"), EventType::Bid, 2, 1);
        }
        // Evicted with events not handed over yet: a mark below its next
        // seq would claim them committed.
        let _ = s.take_begun();
        s.observe("flood-0", EventType::Bid, 2, 5);
        assert!(s.take_begun().is_empty());
        assert!(s.begun_needs_rows(), "tracked again after an eviction: the rows go early");
        // A new publisher after an eviction is handed over early too.
        let _ = s.take_marks();
        for i in 0..(MAX_TRACKED_PUBLISHERS as u64) {
            s.observe(&format!("again-{i}"), EventType::Bid, 2, 1);
        }
        let _ = s.take_begun();
        s.observe("brand-new", EventType::Bid, 2, 3);
        assert!(s.begun_needs_rows());
        let _ = s.take_marks();
        s.observe("new", EventType::Bid, 2, 3);
        assert!(s.has_begun() && !s.begun_needs_rows(), "after the take, early marks again");
    }

    #[test]
    fn marks_of_evicted_publishers_are_still_taken() {
        let mut s = SeqTracker::new(1000);
        s.observe("early", EventType::Bid, 1, 9);
        for i in 0..(MAX_TRACKED_PUBLISHERS as u64 + 10) {
            s.observe(&format!("flood-{i}"), EventType::Bid, 1, 1);
        }
        assert!(s.evicted > 0);
        let marks = s.take_marks();
        assert_eq!(marks.len(), MAX_TRACKED_PUBLISHERS + 11, "one per sequence that moved, evicted or not");
        assert!(marks.iter().any(|m| &*m.publisher == "early" && m.seq == 9));
    }

    #[test]
    fn seq_sequences_are_bounded_too() {
        let mut s = SeqTracker::new(1000);
        for i in 0..(3 * MAX_TRACKED_SEQUENCES as u32) {
            s.observe(&format!("p{}", i / 5000), EventType::ALL[(i % 8) as usize], i % 9000, 1);
            assert!(s.sequences <= MAX_TRACKED_SEQUENCES);
        }
    }
}
