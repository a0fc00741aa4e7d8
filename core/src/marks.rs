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
//! A publisher's marks are together, sorted by type (publishers in no
//! particular order: the logger keeps them by interned id); each `seq` is
//! stored as the zigzag-encoded difference from the publisher's previous
//! one (the first from 0), since a publisher's topics move together.

use crate::seq::{topic_id, Mark};
use rustc_hash::FxHashMap;
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
    encode_from(marks.iter().map(|((p, t), &seq)| (p, *t, seq)), marks.len())
}

/// Encodes `n` marks given as (publisher, type, seq), each publisher's
/// together.
fn encode_from<'a>(marks: impl Iterator<Item = (&'a Arc<str>, u8, u64)>, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + n * 4);
    out.push(VERSION);
    let mut iter = marks.peekable();
    while let Some(&(publisher, _, _)) = iter.peek() {
        put_varint(&mut out, publisher.len() as u64);
        out.extend_from_slice(publisher.as_bytes());
        let count_at = out.len();
        out.push(0); // the group's size, patched below (a varint of one byte while < 128)
        let mut count = 0u64;
        let mut prev = 0u64;
        while let Some((_, t, seq)) = iter.next_if(|(p, _, _)| Arc::ptr_eq(p, publisher) || p == &publisher) {
            out.push(t);
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

/// One mark as held: `key` is `publisher id << 8 | type` (ids are
/// [`Names`]'s), so that a partition's marks sort as integers.
#[derive(Debug, Clone, Copy)]
struct Stored {
    key: u64,
    seq: u64,
    /// When it last moved, ms.
    at: i64,
}

impl Stored {
    fn key(id: u32, t: u8) -> u64 {
        u64::from(id) << 8 | u64::from(t)
    }

    fn id(&self) -> u32 {
        (self.key >> 8) as u32
    }

    fn t(&self) -> u8 {
        self.key as u8
    }
}

/// Publisher names interned as small ids, so that the marks of a flush
/// (100 000 at 200 publishers × 8 types × 64 partitions) are kept and
/// encoded without comparing or hashing a string per mark.
#[derive(Debug, Default, Clone)]
struct Names {
    names: Vec<Arc<str>>,
    ids: FxHashMap<Arc<str>, u32>,
    /// Compact once this many names are held.
    next_check: usize,
}

impl Names {
    fn id(&mut self, name: &Arc<str>) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(name.clone());
        self.ids.insert(name.clone(), id);
        id
    }
}

/// Every partition's marks, as committed plus what moved since, with the
/// partitions that moved. Each partition's marks are one `Vec` sorted by
/// key: a delta's marks are bucketed per partition, sorted and merged in,
/// and encoding walks it in order.
#[derive(Debug, Default, Clone)]
pub struct SeqMarks {
    names: Names,
    partitions: BTreeMap<u32, Vec<Stored>>,
    moved: BTreeSet<u32>,
    /// A delta's marks per partition, while they are taken in (kept for
    /// their allocations).
    buckets: Vec<Vec<Stored>>,
    /// Marks forgotten since names were last compacted.
    forgotten: usize,
}

/// Merges `new` (sorted by key, the last of equal keys winning) into `old`.
fn merge(old: &[Stored], new: &[Stored]) -> Vec<Stored> {
    let mut out = Vec::with_capacity(old.len() + new.len());
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        let take_new = j < new.len() && (i == old.len() || new[j].key <= old[i].key);
        if take_new {
            let k = new[j].key;
            while j + 1 < new.len() && new[j + 1].key == k {
                j += 1;
            }
            out.push(new[j]);
            j += 1;
            if i < old.len() && old[i].key == k {
                i += 1;
            }
        } else {
            out.push(old[i]);
            i += 1;
        }
    }
    out
}

impl SeqMarks {
    /// Marks read back from the warehouse (as of `now_ms`): committed, so
    /// nothing has moved.
    pub fn committed(values: impl IntoIterator<Item = (u32, PartitionMarks)>, now_ms: i64) -> SeqMarks {
        let mut out = SeqMarks::default();
        for (partition, marks) in values {
            let mut held: Vec<Stored> = marks
                .into_iter()
                .map(|((publisher, t), seq)| Stored { key: Stored::key(out.names.id(&publisher), t), seq, at: now_ms })
                .collect();
            held.sort_by_key(|h| h.key);
            let old = out.partitions.remove(&partition).unwrap_or_default();
            out.partitions.insert(partition, merge(&old, &held));
        }
        out
    }

    /// Takes in the marks of a delta received at `now_ms`.
    pub fn apply(&mut self, marks: Vec<Mark>, now_ms: i64) {
        self.take_in(marks, now_ms, true);
    }

    /// Starts the marks of `partitions` again from `committed` (their
    /// committed marks, as of when a fleet member took them: what this set
    /// held of them is stale), as of `now_ms`. They have not moved: what
    /// is committed need not be written again.
    pub fn restart(&mut self, partitions: &[u32], committed: Vec<Mark>, now_ms: i64) {
        for p in partitions {
            self.moved.remove(p);
            self.partitions.remove(p);
        }
        self.take_in(committed, now_ms, false);
    }

    fn take_in(&mut self, marks: Vec<Mark>, now_ms: i64, moved: bool) {
        // A tracker hands its marks over publisher by publisher, each
        // sharing one `Arc`: one lookup per publisher, not per mark.
        let mut last: Option<(Arc<str>, u32)> = None;
        let mut touched = Vec::new();
        for m in marks {
            let (partition, t) = (m.partition(), m.event_type_index());
            let id = match &last {
                Some((name, id)) if Arc::ptr_eq(name, &m.publisher) => *id,
                _ => {
                    let id = self.names.id(&m.publisher);
                    last = Some((m.publisher, id));
                    id
                }
            };
            let p = partition as usize;
            if p >= self.buckets.len() {
                self.buckets.resize_with(p + 1, Vec::new);
            }
            if self.buckets[p].is_empty() {
                touched.push(partition);
            }
            self.buckets[p].push(Stored { key: Stored::key(id, t), seq: m.seq, at: now_ms });
        }
        for partition in touched {
            let new = &mut self.buckets[partition as usize];
            // Stable: of one sequence's marks in a delta, the later wins.
            new.sort_by_key(|h| h.key);
            let merged = merge(self.partitions.get(&partition).map_or(&[][..], Vec::as_slice), new);
            new.clear();
            self.partitions.insert(partition, merged);
            if moved {
                self.moved.insert(partition);
            }
        }
    }

    /// Adds committed marks of partitions read after this run began,
    /// keeping what this run already holds (it is newer).
    pub fn add_committed(&mut self, older: SeqMarks) {
        for (partition, marks) in older.partitions {
            let mut held = self.translate(&older.names, &marks);
            let ours = self.partitions.remove(&partition).unwrap_or_default();
            held.sort_by_key(|h| h.key);
            self.partitions.insert(partition, merge(&held, &ours));
        }
    }

    /// `marks` (with ids of `names`) with this set's ids, unsorted.
    fn translate(&mut self, names: &Names, marks: &[Stored]) -> Vec<Stored> {
        marks
            .iter()
            .map(|h| Stored { key: Stored::key(self.names.id(&names.names[h.id() as usize]), h.t()), ..*h })
            .collect()
    }

    /// Replaces the marks of `partitions` with those `committed` holds (they
    /// were just taken over: what this instance held of them is stale).
    pub fn replace(&mut self, partitions: &[u32], committed: &SeqMarks) {
        for p in partitions {
            self.moved.remove(p);
            match committed.partitions.get(p) {
                Some(marks) => {
                    let mut held = self.translate(&committed.names, marks);
                    held.sort_by_key(|h| h.key);
                    self.partitions.insert(*p, held)
                }
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
            let before = marks.len();
            marks.retain(|h| h.at >= now_ms - FORGET_AFTER_MS);
            self.forgotten += before - marks.len();
            let names = &self.names.names;
            let value = encode_from(marks.iter().map(|h| (&names[h.id() as usize], h.t(), h.seq)), marks.len());
            out.push((partition, value));
        }
        if self.names.names.len() >= self.names.next_check || self.forgotten >= 1024.max(self.len()) {
            self.compact_names();
        }
        out
    }

    /// Drops the names of publishers forgotten (renumbering the rest), so
    /// that names do not grow with every publisher ever seen: once the
    /// names have doubled (and at least 1 024 more), or as many marks were
    /// forgotten as are held.
    #[cold]
    fn compact_names(&mut self) {
        let mut names = Names::default();
        for marks in self.partitions.values_mut() {
            for h in marks.iter_mut() {
                h.key = Stored::key(names.id(&self.names.names[h.id() as usize]), h.t());
            }
            marks.sort_by_key(|h| h.key);
        }
        names.next_check = 2 * names.names.len() + 1024;
        self.names = names;
        self.forgotten = 0;
    }

    /// Every mark as (publisher, topic id, seq): what a tracker is seeded with.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u32, u64)> + '_ {
        let names = &self.names.names;
        self.partitions.iter().flat_map(move |(&p, marks)| {
            marks.iter().map(move |h| (&*names[h.id() as usize], topic_id(h.t(), p), h.seq))
        })
    }

    /// The marks of `partitions` (sorted), as the ingest threads hand them over.
    pub fn marks_of<'a>(&'a self, partitions: &'a [u32]) -> impl Iterator<Item = Mark> + 'a {
        let names = &self.names.names;
        self.partitions
            .range(partitions.first().copied().unwrap_or(0)..)
            .filter(|(p, _)| partitions.binary_search(p).is_ok())
            .flat_map(move |(&p, marks)| {
                marks.iter().map(move |h| Mark {
                    publisher: names[h.id() as usize].clone(),
                    topic: topic_id(h.t(), p),
                    seq: h.seq,
                })
            })
    }

    /// Keeps the marks of the partitions `keep` says, only.
    pub fn retain_partitions(&mut self, keep: impl Fn(u32) -> bool) {
        self.partitions.retain(|&p, _| keep(p));
        self.moved.retain(|&p| keep(p));
    }

    /// Marks held, over all partitions.
    pub fn len(&self) -> usize {
        self.partitions.values().map(Vec::len).sum()
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

    #[test]
    fn a_partition_taken_again_starts_from_its_committed_marks_not_from_what_was_held_before() {
        let p = |seq, t| Mark { publisher: "p".into(), topic: topic_id(t, 3), seq };
        let mut m = SeqMarks::default();
        // An earlier ownership of partition 3: type 1 moved last at 7.
        m.apply(vec![p(5, 0), p(7, 1)], 0);
        m.take_moved(0);
        // Another member wrote up to 20 and 30 since; taken again.
        m.restart(&[3], vec![p(20, 0), p(30, 1)], 1);
        assert!(!m.has_moved(), "what is committed is not written again");
        m.apply(vec![p(21, 0)], 2);
        let taken = m.take_moved(2);
        assert_eq!(taken.len(), 1);
        let written = decode(&taken[0].1).unwrap();
        assert_eq!(written.get(&(Arc::from("p"), 1)), Some(&30), "not the stale 7 of the earlier ownership");
        assert_eq!(written.get(&(Arc::from("p"), 0)), Some(&21));
        // A partition with no committed marks starts empty.
        m.restart(&[3], Vec::new(), 3);
        assert!(m.is_empty());
        let both = SeqMarks::committed([(3, marks(&[("p", 0, 1)])), (4, marks(&[("q", 2, 9)]))], 0);
        let of4: Vec<Mark> = both.marks_of(&[4, 7]).collect();
        assert_eq!(of4, vec![Mark { publisher: "q".into(), topic: topic_id(2, 4), seq: 9 }]);
    }

    #[test]
    fn marks_taken_over_from_another_set_keep_their_names_and_forgotten_names_are_dropped() {
        let committed = SeqMarks::committed([(5, marks(&[("x", 1, 7), ("y", 2, 8)]))], 0);
        let mut m = SeqMarks::default();
        m.apply(vec![Mark { publisher: "y".into(), topic: topic_id(0, 4), seq: 3 }], 0);
        m.replace(&[5], &committed);
        let mut all: Vec<(String, u32, u64)> = m.iter().map(|(p, t, s)| (p.to_string(), t, s)).collect();
        all.sort();
        let expected = vec![
            ("x".to_string(), topic_id(1, 5), 7),
            ("y".to_string(), topic_id(0, 4), 3),
            ("y".to_string(), topic_id(2, 5), 8),
        ];
        assert_eq!(all, expected);
        // 3 000 publishers seen once, then forgotten a day later: their
        // names go too, and what remains still encodes under its own name.
        let once: Vec<Mark> =
            (0..3000).map(|i| Mark { publisher: format!("once-{i}").into(), topic: topic_id(0, 9), seq: 1 }).collect();
        m.apply(once, 0);
        m.take_moved(0);
        let y = Arc::<str>::from("y");
        let later = [(4, 4), (9, 2)].map(|(p, seq)| Mark { publisher: y.clone(), topic: topic_id(0, p), seq });
        m.apply(later.to_vec(), FORGET_AFTER_MS + 10);
        let taken = m.take_moved(FORGET_AFTER_MS + 10);
        assert_eq!(decode(&taken[0].1).unwrap(), marks(&[("y", 0, 4)]));
        assert_eq!(decode(&taken[1].1).unwrap(), marks(&[("y", 0, 2)]), "the once-seen are forgotten");
        assert!(m.names.names.len() < 100, "{} names kept", m.names.names.len());
        assert_eq!(m.len(), 4, "x and y in 5, y in 4 and 9");
        m.apply(vec![Mark { publisher: "x".into(), topic: topic_id(1, 5), seq: 9 }], FORGET_AFTER_MS + 10);
        let taken = m.take_moved(FORGET_AFTER_MS + 10);
        assert_eq!(decode(&taken[0].1).unwrap(), marks(&[("x", 1, 9)]), "y's mark in 5 is a day old");
    }

    #[test]
    fn applied_marks_equal_a_map_where_the_last_mark_of_a_sequence_wins() {
        let mut model: BTreeMap<(String, u32), u64> = BTreeMap::new();
        let mut m = SeqMarks::default();
        let names: Vec<Arc<str>> = (0..7).map(|i| Arc::from(format!("p{i}"))).collect();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..50 {
            let delta: Vec<Mark> = (0..next() % 40)
                .map(|_| Mark {
                    publisher: names[(next() % 7) as usize].clone(),
                    topic: topic_id((next() % 8) as u8, (next() % 5) as u32),
                    seq: next() % 1000,
                })
                .collect();
            for d in &delta {
                model.insert((d.publisher.to_string(), d.topic), d.seq);
            }
            m.apply(delta, 0);
            let got: BTreeMap<(String, u32), u64> = m.iter().map(|(p, t, s)| ((p.to_string(), t), s)).collect();
            assert_eq!(got, model);
            assert_eq!(m.len(), model.len());
            for (p, value) in m.take_moved(0) {
                let decoded = decode(&value).unwrap();
                let want: PartitionMarks = model
                    .iter()
                    .filter(|((_, t), _)| t % crate::wire::MAX_PARTITIONS == p)
                    .map(|((name, t), &seq)| ((Arc::from(name.as_str()), (t / crate::wire::MAX_PARTITIONS) as u8), seq))
                    .collect();
                assert_eq!(decoded, want);
            }
        }
    }
}
