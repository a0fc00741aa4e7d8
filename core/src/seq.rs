//! `seq` tracking: messages lost between publishers and the logger.

use crate::wire::{EventType, MAX_PARTITIONS};
use rustc_hash::FxHashMap;

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
}
