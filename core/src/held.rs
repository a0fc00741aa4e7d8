//! Messages of partitions a fleet member is about to take over, held until
//! the lease is passed to it.
//!
//! A lossless handover needs the taker to receive a partition *before* the
//! giver stops: the taker subscribes first and holds that partition's
//! messages here, the giver writes up to its cut (its committed marks) and
//! passes the lease, and the taker then replays what it held through the
//! hot path, dropping what lies at or below the marks (the giver counted
//! it). What did not fit is not held; the gap it leaves is counted as lost
//! by the `seq` tracker, like any other gap.
//!
//! Messages are kept as they arrived (topic and payload bytes, one arena
//! per partition): holding costs a copy, and decoding is done again at the
//! replay, off the hot path.

use crate::wire::{EventType, MAX_PARTITIONS};
use std::collections::BTreeMap;

/// An entry's kind: a whole message, or only the `seq` of one too large to
/// keep (it counts for the sequence, as it does when owned).
const MESSAGE: u8 = 0;
const SEQ_ONLY: u8 = 1;

/// What the held messages of one partition turned out to be at the replay.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HeldStats {
    /// Replayed through the hot path (above the committed marks).
    pub replayed: u64,
    /// At or below the committed marks: the giver counted them.
    pub duplicates: u64,
    /// Without `pub`/`seq`: cut by arrival time, so the giver's (it owned
    /// the partition when they arrived).
    pub unsequenced: u64,
    /// Not held because the limit was reached: the gap they leave is
    /// counted as lost at the replay.
    pub overflowed: u64,
}

/// One held entry, borrowed from its arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldEntry<'a> {
    /// A whole message.
    Message {
        /// Its topic frame.
        topic: &'a [u8],
        /// Its payload frame.
        payload: &'a [u8],
    },
    /// The `seq` of a message over the size limit.
    Seq {
        /// `pub`.
        publisher: &'a str,
        /// Its event type.
        event_type: EventType,
        /// Its partition.
        partition: u32,
        /// Its `seq`.
        seq: u64,
    },
}

/// The messages held per partition, within a byte limit.
#[derive(Debug)]
pub struct Held {
    holding: Box<[bool]>,
    arenas: BTreeMap<u32, Vec<u8>>,
    bytes: usize,
    limit: usize,
    /// Counts since the last take.
    pub stats: HeldStats,
}

impl Held {
    /// Holds at most `limit` bytes of messages, over `partition_count` partitions.
    pub fn new(partition_count: u32, limit: usize) -> Held {
        Held {
            holding: vec![false; partition_count.min(MAX_PARTITIONS) as usize].into_boxed_slice(),
            arenas: BTreeMap::new(),
            bytes: 0,
            limit,
            stats: HeldStats::default(),
        }
    }

    /// Whether messages of `partition` are held.
    #[inline]
    pub fn holds(&self, partition: u32) -> bool {
        self.holding.get(partition as usize).copied().unwrap_or(false)
    }

    /// Starts holding `partition`'s messages.
    pub fn start(&mut self, partition: u32) {
        if let Some(h) = self.holding.get_mut(partition as usize) {
            *h = true;
        }
    }

    /// Stops holding `partition` and returns what was held (empty when
    /// nothing was).
    pub fn stop(&mut self, partition: u32) -> Vec<u8> {
        if let Some(h) = self.holding.get_mut(partition as usize) {
            *h = false;
        }
        let arena = self.arenas.remove(&partition).unwrap_or_default();
        self.bytes -= arena.len();
        arena
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Holds one message of `partition` (which must be held).
    pub fn push_message(&mut self, partition: u32, topic: &[u8], payload: &[u8]) {
        let (Ok(t), Ok(p)) = (u16::try_from(topic.len()), u32::try_from(payload.len())) else {
            self.stats.overflowed += 1;
            return;
        };
        let size = 1 + 2 + 4 + topic.len() + payload.len();
        let Some(arena) = self.room(partition, size) else { return };
        arena.push(MESSAGE);
        arena.extend_from_slice(&t.to_le_bytes());
        arena.extend_from_slice(&p.to_le_bytes());
        arena.extend_from_slice(topic);
        arena.extend_from_slice(payload);
    }

    /// Holds the `seq` of a message of `partition` too large to keep.
    pub fn push_seq(&mut self, partition: u32, publisher: &str, event_type: EventType, seq: u64) {
        let Ok(n) = u16::try_from(publisher.len()) else {
            self.stats.overflowed += 1;
            return;
        };
        let size = 1 + 2 + 1 + 4 + 8 + publisher.len();
        let Some(arena) = self.room(partition, size) else { return };
        arena.push(SEQ_ONLY);
        arena.extend_from_slice(&n.to_le_bytes());
        arena.push(event_type as u8);
        arena.extend_from_slice(&partition.to_le_bytes());
        arena.extend_from_slice(&seq.to_le_bytes());
        arena.extend_from_slice(publisher.as_bytes());
    }

    fn room(&mut self, partition: u32, size: usize) -> Option<&mut Vec<u8>> {
        if self.bytes + size > self.limit {
            self.stats.overflowed += 1;
            return None;
        }
        self.bytes += size;
        Some(self.arenas.entry(partition).or_default())
    }
}

/// The entries of an arena returned by [`Held::stop`], in arrival order.
pub fn entries(arena: &[u8]) -> impl Iterator<Item = HeldEntry<'_>> {
    let mut rest = arena;
    std::iter::from_fn(move || {
        let (&kind, tail) = rest.split_first()?;
        let le16 = |b: &[u8]| u16::from_le_bytes([b[0], b[1]]) as usize;
        let le32 = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        match kind {
            MESSAGE => {
                let (t, p) = (le16(tail), le32(&tail[2..]) as usize);
                let body = &tail[6..];
                rest = &body[t + p..];
                Some(HeldEntry::Message { topic: &body[..t], payload: &body[t..t + p] })
            }
            _ => {
                let n = le16(tail);
                let event_type = EventType::ALL[tail[2] as usize];
                let partition = le32(&tail[3..]);
                let seq = u64::from_le_bytes(tail[7..15].try_into().expect("8 bytes"));
                let publisher = std::str::from_utf8(&tail[15..15 + n]).expect("held from a &str");
                rest = &tail[15 + n..];
                Some(HeldEntry::Seq { publisher, event_type, partition, seq })
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_entries_come_back_in_arrival_order_per_partition() {
        let mut h = Held::new(64, 1 << 20);
        h.start(3);
        h.start(5);
        h.push_message(3, b"bid.0003", b"one");
        h.push_seq(3, "pub-a", EventType::Click, 42);
        h.push_message(5, b"bid.0005", b"other");
        h.push_message(3, b"bid.0003", b"");
        assert!(h.holds(3) && h.holds(5) && !h.holds(4));
        let three = h.stop(3);
        let got: Vec<HeldEntry<'_>> = entries(&three).collect();
        assert_eq!(
            got,
            vec![
                HeldEntry::Message { topic: b"bid.0003", payload: b"one" },
                HeldEntry::Seq { publisher: "pub-a", event_type: EventType::Click, partition: 3, seq: 42 },
                HeldEntry::Message { topic: b"bid.0003", payload: b"" },
            ]
        );
        assert!(!h.holds(3));
        assert_eq!(entries(&h.stop(5)).count(), 1);
        assert_eq!(h.bytes(), 0);
    }

    #[test]
    fn what_does_not_fit_is_counted_not_held() {
        let mut h = Held::new(8, 40);
        h.start(1);
        for _ in 0..5 {
            h.push_message(1, b"bid.0001", b"0123456789");
        }
        // 25 bytes an entry: one fits.
        assert_eq!(h.stats.overflowed, 4);
        assert_eq!(entries(&h.stop(1)).count(), 1);
    }
}
