//! Committed sequence marks: per partition, the highest `seq` written to the
//! warehouse for every (publisher, event type), as one compact value.
//!
//! The sink keeps [`SeqMarks`] up to date from the [`Mark`]s each delta
//! brings, and writes the partitions that moved with every batch
//! ([`SeqMarks::take_moved`]). Whoever next receives a partition (this
//! instance after a restart, or another one) seeds its
//! [`SeqTracker`](crate::seq::SeqTracker) from them, so that the first `seq`
//! it receives counts what was lost in between.
//!
//! # Encoding
//!
//! One value per partition, so that 200 publishers × 8 types × 64
//! partitions are 64 values, not 100 000 rows:
//!
//! ```text
//! version:u8 (1)  { publisher_len:varint publisher:bytes  n:varint  { type:u8  seq_delta:varint }ⁿ }*
//! ```
//!
//! Publishers are sorted, and within a publisher the types; each `seq` is
//! stored as the zigzag-encoded difference from the publisher's previous
//! one (the first from 0), since a publisher's topics move together.

use crate::seq::{topic_id, Mark};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

const VERSION: u8 = 1;

/// Marks not moved for this long are forgotten (a publisher gone that
/// long has restarted with a new sequence, if it comes back at all), so the
/// values do not grow with every publisher ever seen.
pub const FORGET_AFTER_MS: i64 = 24 * 3600 * 1000;

/// A value that is not an encoding of marks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed sequence marks at byte {at}")]
pub struct MarksError {
    /// Where decoding stopped.
    pub at: usize,
}

/// One partition's marks: (publisher, event type index) → last `seq`.
pub type PartitionMarks = BTreeMap<(Arc<str>, u8), u64>;

/// Encodes one partition's marks.
pub fn encode(marks: &PartitionMarks) -> Vec<u8> {
    encode_from(marks.iter().map(|(k, &seq)| (k, seq)), marks.len())
}

/// Encodes `n` marks given in (publisher, type) order.
fn encode_from<'a>(marks: impl Iterator<Item = (&'a (Arc<str>, u8), u64)>, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + n * 4);
    out.push(VERSION);
    let mut iter = marks.peekable();
    while let Some(((publisher, _), _)) = iter.peek() {
        let publisher: &str = publisher;
        put_varint(&mut out, publisher.len() as u64);
        out.extend_from_slice(publisher.as_bytes());
        let count_at = out.len();
        out.push(0); // the group's size, patched below (a varint of one byte while < 128)
        let mut count = 0u64;
        let mut prev = 0u64;
        while let Some(((_, t), seq)) = iter.next_if(|((p, _), _)| &**p == publisher) {
            out.push(*t);
            put_varint(&mut out, zigzag(seq.wrapping_sub(prev) as i64));
            prev = seq;
            count += 1;
        }
        if count < 128 {
            out[count_at] = count as u8;
        } else {
            let mut len = Vec::new();
            put_varint(&mut len, count);
            out.splice(count_at..=count_at, len);
        }
    }
    out
}

/// Decodes one partition's marks.
pub fn decode(bytes: &[u8]) -> Result<PartitionMarks, MarksError> {
    let mut r = Reader { bytes, at: 0 };
    if r.byte()? != VERSION {
        return Err(MarksError { at: 0 });
    }
    let mut out = PartitionMarks::new();
    while r.at < bytes.len() {
        let len = r.varint()? as usize;
        let start = r.at;
        let name = bytes.get(start..start.checked_add(len).ok_or(MarksError { at: start })?);
        let name = name.and_then(|b| std::str::from_utf8(b).ok()).ok_or(MarksError { at: start })?;
        r.at += len;
        let publisher: Arc<str> = name.into();
        let n = r.varint()?;
        let mut prev = 0u64;
        for _ in 0..n {
            let t = r.byte()?;
            let seq = prev.wrapping_add(unzigzag(r.varint()?) as u64);
            out.insert((publisher.clone(), t), seq);
            prev = seq;
        }
    }
    Ok(out)
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, MarksError> {
        let b = *self.bytes.get(self.at).ok_or(MarksError { at: self.at })?;
        self.at += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, MarksError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(MarksError { at: self.at })
    }
}

/// One partition's marks as held: (publisher, type) → (seq, when it last
/// moved, ms).
type Held = BTreeMap<(Arc<str>, u8), (u64, i64)>;

/// Every partition's marks, as committed plus what moved since, with the
/// partitions that moved.
#[derive(Debug, Default, Clone)]
pub struct SeqMarks {
    partitions: BTreeMap<u32, Held>,
    moved: BTreeSet<u32>,
}

impl SeqMarks {
    /// Marks read back from the warehouse (as of `now_ms`): committed, so
    /// nothing has moved.
    pub fn committed(values: impl IntoIterator<Item = (u32, PartitionMarks)>, now_ms: i64) -> SeqMarks {
        let mut out = SeqMarks::default();
        for (partition, marks) in values {
            let entry = out.partitions.entry(partition).or_default();
            entry.extend(marks.into_iter().map(|(k, seq)| (k, (seq, now_ms))));
        }
        out
    }

    /// Takes in the marks of a delta received at `now_ms`.
    pub fn apply(&mut self, marks: Vec<Mark>, now_ms: i64) {
        for m in marks {
            let (partition, t) = (m.partition(), m.event_type_index());
            self.partitions.entry(partition).or_default().insert((m.publisher, t), (m.seq, now_ms));
            self.moved.insert(partition);
        }
    }

    /// Adds committed marks of partitions read after this run began,
    /// keeping what this run already holds (it is newer).
    pub fn add_committed(&mut self, older: SeqMarks) {
        for (partition, marks) in older.partitions {
            let entry = self.partitions.entry(partition).or_default();
            for (k, v) in marks {
                entry.entry(k).or_insert(v);
            }
        }
    }

    /// Replaces the marks of `partitions` with those `committed` holds (they
    /// were just taken over: what this instance held of them is stale).
    pub fn replace(&mut self, partitions: &[u32], committed: &SeqMarks) {
        for p in partitions {
            self.moved.remove(p);
            match committed.partitions.get(p) {
                Some(marks) => self.partitions.insert(*p, marks.clone()),
                None => self.partitions.remove(p),
            };
        }
    }

    /// Forgets which partitions moved (what moved was dropped).
    pub fn clear_moved(&mut self) {
        self.moved.clear();
    }

    /// Whether a partition moved since the last take.
    pub fn has_moved(&self) -> bool {
        !self.moved.is_empty()
    }

    /// The encoded marks of every partition that moved since the last take,
    /// in partition order; marks not moved since `now_ms - FORGET_AFTER_MS`
    /// are forgotten first.
    pub fn take_moved(&mut self, now_ms: i64) -> Vec<(u32, Vec<u8>)> {
        let moved = std::mem::take(&mut self.moved);
        let mut out = Vec::with_capacity(moved.len());
        for partition in moved {
            let Some(marks) = self.partitions.get_mut(&partition) else { continue };
            marks.retain(|_, (_, at)| *at >= now_ms - FORGET_AFTER_MS);
            out.push((partition, encode_from(marks.iter().map(|(k, (seq, _))| (k, *seq)), marks.len())));
        }
        out
    }

    /// Every mark as (publisher, topic id, seq): what a tracker is seeded with.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u32, u64)> + '_ {
        self.partitions.iter().flat_map(|(&p, marks)| {
            marks.iter().map(move |((publisher, t), (seq, _))| (&**publisher, topic_id(*t, p), *seq))
        })
    }

    /// Marks held, over all partitions.
    pub fn len(&self) -> usize {
        self.partitions.values().map(Held::len).sum()
    }

    /// Whether no mark is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marks(entries: &[(&str, u8, u64)]) -> PartitionMarks {
        entries.iter().map(|&(p, t, s)| ((Arc::from(p), t), s)).collect()
    }

    #[test]
    fn marks_round_trip_compactly() {
        let m = marks(&[("bidder-1", 0, 884_213), ("bidder-1", 1, 884_100), ("bidder-1", 7, 3), ("b2", 2, u64::MAX)]);
        let bytes = encode(&m);
        assert_eq!(decode(&bytes).unwrap(), m);
        assert_eq!(decode(&encode(&PartitionMarks::new())).unwrap(), PartitionMarks::new());
        // 200 publishers × 8 types with neighbouring seqs: about 3 bytes a mark plus the names
        let mut big = PartitionMarks::new();
        for p in 0..200 {
            for t in 0..8u8 {
                big.insert((Arc::from(format!("bidder-{p:03}")), t), 1_000_000 + p * 97 + u64::from(t) * 13);
            }
        }
        let bytes = encode(&big);
        assert_eq!(decode(&bytes).unwrap(), big);
        assert!(bytes.len() < 200 * (11 + 8 * 3), "{} bytes", bytes.len());
    }

    #[test]
    fn malformed_values_are_errors_not_panics() {
        let good = encode(&marks(&[("p", 1, 5)]));
        for cut in 0..good.len() - 1 {
            let _ = decode(&good[..cut]); // never panics
        }
        assert!(decode(&[]).is_err());
        assert!(decode(&[2]).is_err(), "unknown version");
        assert!(decode(&[1, 200, 1]).is_err(), "name longer than the value");
        assert!(decode(&[1, 1, 0xff]).is_err(), "name not UTF-8");
        assert!(decode(&[1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]).is_err());
    }

    #[test]
    fn only_moved_partitions_are_taken_and_old_marks_are_forgotten() {
        let committed = SeqMarks::committed([(3, marks(&[("gone", 0, 9), ("p", 0, 10)]))], 0);
        let mut m = SeqMarks::default();
        m.apply(vec![Mark { publisher: "p".into(), topic: topic_id(0, 3), seq: 12 }], FORGET_AFTER_MS);
        m.add_committed(committed);
        assert_eq!(m.len(), 2, "the committed mark of p is older than this run's");
        assert!(m.iter().any(|(p, _, s)| p == "p" && s == 12));
        let taken = m.take_moved(FORGET_AFTER_MS + 1);
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].0, 3);
        assert_eq!(decode(&taken[0].1).unwrap(), marks(&[("p", 0, 12)]), "`gone` has not moved for a day");
        assert!(!m.has_moved());
        assert!(m.take_moved(FORGET_AFTER_MS + 2).is_empty());
    }
}
