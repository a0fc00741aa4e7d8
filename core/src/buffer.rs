//! Messages of partitions a fleet member is about to take over, buffered until
//! the lease is passed to it.
//!
//! A lossless handover needs the taker to receive a partition *before* the
//! giver stops: the taker subscribes first and buffers that partition's
//! messages here, the giver writes up to its cut (its committed marks) and
//! passes the lease, and the taker then replays what it buffered through the
//! hot path, dropping what lies at or below the marks (the giver counted
//! it). What did not fit is not buffered; the gap it leaves is counted as lost
//! by the `seq` tracker, like any other gap.
//!
//! Messages are kept as they arrived (topic and payload bytes, nothing
//! decoded: the message is not this member's until the lease is), in
//! chunks per partition, and decoded at the replay, off the hot path.
//!
//! A *standby* member ([`ClaimBuffer::standby`]) buffers every partition it does not
//! own, as a rolling window: chunks older than the window are dropped, and
//! a partition over its share of the memory drops its oldest chunks. When
//! it takes over a dead member's partition, it replays the window above
//! that member's committed marks: what the dead member received but never
//! wrote, and what was published until the takeover, are not lost.

use std::collections::{BTreeMap, VecDeque};

/// A chunk spans at most this long (its messages are dropped together
/// once the newest of them is older than the window).
const CHUNK_MS: i64 = 250;

/// What the buffered messages turned out to be at the replay.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BufferStats {
    /// Replayed through the hot path (above the committed marks).
    pub replayed: u64,
    /// At or below the committed marks: the giver counted them.
    pub duplicates: u64,
    /// Without `pub`/`seq`, or invalid: cut by arrival time, so the giver's
    /// (it owned the partition when they arrived).
    pub unsequenced: u64,
    /// Not buffered, or dropped from a standby window, because the memory limit
    /// was reached: the gap they leave is counted as lost at the replay.
    pub overflowed: u64,
}

/// Messages of one partition that arrived within one [`CHUNK_MS`].
#[derive(Debug, Default)]
struct Chunk {
    first_ms: i64,
    last_ms: i64,
    messages: u64,
    bytes: Vec<u8>,
}

/// The messages buffered per partition, within a byte limit.
#[derive(Debug)]
pub struct ClaimBuffer {
    buffering: Box<[bool]>,
    chunks: BTreeMap<u32, VecDeque<Chunk>>,
    bytes: usize,
    limit: usize,
    /// A standby's window: `None` keeps everything until the replay (a
    /// claim), dropping what arrives over the limit.
    window_ms: Option<i64>,
    /// Partitions buffered now.
    buffered: usize,
    /// Counts since the last take.
    pub stats: BufferStats,
}

impl ClaimBuffer {
    /// Buffers claimed partitions: at most `limit` bytes of messages, over
    /// `partition_count` partitions; what arrives over the limit is not buffered.
    pub fn new(partition_count: u32, limit: usize) -> ClaimBuffer {
        ClaimBuffer {
            buffering: vec![false; partition_count as usize].into_boxed_slice(),
            chunks: BTreeMap::new(),
            bytes: 0,
            limit,
            window_ms: None,
            buffered: 0,
            stats: BufferStats::default(),
        }
    }

    /// A standby's: keeps the last `window_ms` of every partition buffered, each
    /// within an equal share of `limit` (dropping its oldest chunks).
    pub fn standby(partition_count: u32, limit: usize, window_ms: i64) -> ClaimBuffer {
        ClaimBuffer { window_ms: Some(window_ms), ..ClaimBuffer::new(partition_count, limit) }
    }

    /// Whether messages of `partition` are buffered.
    #[inline]
    pub fn buffers(&self, partition: u32) -> bool {
        self.buffering.get(partition as usize).copied().unwrap_or(false)
    }

    /// Starts buffering `partition`'s messages.
    pub fn start(&mut self, partition: u32) {
        if let Some(h) = self.buffering.get_mut(partition as usize) {
            self.buffered += usize::from(!*h);
            *h = true;
        }
    }

    /// Stops buffering `partition` and returns what was buffered, as
    /// (topic, payload) in arrival order (empty when nothing was).
    pub fn stop(&mut self, partition: u32) -> Vec<(Vec<u8>, Vec<u8>)> {
        if let Some(h) = self.buffering.get_mut(partition as usize) {
            self.buffered -= usize::from(*h);
            *h = false;
        }
        let chunks = self.chunks.remove(&partition).unwrap_or_default();
        let mut out = Vec::new();
        for c in chunks {
            self.bytes -= c.bytes.len();
            out.extend(entries(&c.bytes).map(|(t, p)| (t.to_vec(), p.to_vec())));
        }
        out
    }

    /// Bytes buffered now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Buffers one message of `partition` (which must be buffered), arrived at `now_ms`.
    pub fn push(&mut self, partition: u32, topic: &[u8], payload: &[u8], now_ms: i64) {
        let (Ok(t), Ok(p)) = (u16::try_from(topic.len()), u32::try_from(payload.len())) else {
            self.stats.overflowed += 1;
            return;
        };
        let size = 2 + 4 + topic.len() + payload.len();
        let chunks = self.chunks.entry(partition).or_default();
        let mut freed = 0;
        if let Some(window) = self.window_ms {
            // Standby: a rolling window, each partition within its share.
            while chunks.front().is_some_and(|c| c.last_ms < now_ms - window) {
                freed += chunks.pop_front().map_or(0, |c| c.bytes.len());
            }
            let share = self.limit / self.buffered.max(1);
            let mut mine: usize = chunks.iter().map(|c| c.bytes.len()).sum();
            while mine + size > share {
                let Some(c) = chunks.pop_front() else { break };
                mine -= c.bytes.len();
                freed += c.bytes.len();
                self.stats.overflowed += c.messages;
            }
            if size > share {
                self.bytes -= freed;
                self.stats.overflowed += 1;
                return;
            }
        } else if self.bytes + size > self.limit {
            self.stats.overflowed += 1;
            return;
        }
        self.bytes = self.bytes - freed + size;
        if chunks.back().is_none_or(|c| c.first_ms < now_ms - CHUNK_MS) {
            chunks.push_back(Chunk { first_ms: now_ms, ..Chunk::default() });
        }
        let c = chunks.back_mut().expect("pushed above");
        c.last_ms = now_ms;
        c.messages += 1;
        c.bytes.extend_from_slice(&t.to_le_bytes());
        c.bytes.extend_from_slice(&p.to_le_bytes());
        c.bytes.extend_from_slice(topic);
        c.bytes.extend_from_slice(payload);
    }
}

/// The (topic, payload) entries of a chunk, in arrival order.
fn entries(bytes: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        if rest.len() < 6 {
            return None;
        }
        let t = u16::from_le_bytes([rest[0], rest[1]]) as usize;
        let p = u32::from_le_bytes([rest[2], rest[3], rest[4], rest[5]]) as usize;
        let body = &rest[6..];
        rest = &body[t + p..];
        Some((&body[..t], &body[t..t + p]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(buffered: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(String, String)> {
        buffered.into_iter().map(|(t, p)| (String::from_utf8(t).unwrap(), String::from_utf8(p).unwrap())).collect()
    }

    #[test]
    fn buffered_messages_come_back_in_arrival_order_per_partition() {
        let mut h = ClaimBuffer::new(64, 1 << 20);
        h.start(3);
        h.start(5);
        h.push(3, b"bid.0003", b"one", 0);
        h.push(5, b"bid.0005", b"other", 0);
        h.push(3, b"bid.0003", b"", 1000);
        assert!(h.buffers(3) && h.buffers(5) && !h.buffers(4));
        let three = texts(h.stop(3));
        assert_eq!(three, vec![("bid.0003".into(), "one".into()), ("bid.0003".into(), "".into())]);
        assert!(!h.buffers(3));
        assert_eq!(h.stop(5).len(), 1);
        assert_eq!(h.bytes(), 0);
    }

    #[test]
    fn what_does_not_fit_is_counted_not_buffered() {
        let mut h = ClaimBuffer::new(8, 50);
        h.start(1);
        for _ in 0..5 {
            h.push(1, b"bid.0001", b"0123456789", 0);
        }
        // 24 bytes an entry: two fit.
        assert_eq!(h.stats.overflowed, 3);
        assert_eq!(h.stop(1).len(), 2);
    }

    #[test]
    fn a_standby_keeps_the_last_window_within_its_share() {
        let mut h = ClaimBuffer::standby(8, 1 << 20, 1000);
        h.start(1);
        for ms in (0..5000).step_by(10) {
            h.push(1, b"bid.0001", ms.to_string().as_bytes(), ms);
        }
        let kept = texts(h.stop(1));
        let first: i64 = kept[0].1.parse().unwrap();
        // whole chunks older than the window are dropped
        assert!((3750..=4000).contains(&first), "oldest kept: {first}");
        assert_eq!(kept.last().unwrap().1, "4990");
        assert_eq!(h.stats.overflowed, 0, "expiry is not overflow");
        // two partitions share 2 000 bytes: each keeps its newest ~1 000
        let mut h = ClaimBuffer::standby(8, 2000, 60_000);
        h.start(1);
        h.start(2);
        for ms in (0..5000).step_by(10) {
            h.push(1, b"bid.0001", b"0123456789", ms);
            h.push(2, b"bid.0002", b"0123456789", ms);
        }
        assert!(h.bytes() <= 2000, "{}", h.bytes());
        assert!(h.stats.overflowed > 0);
        let kept = h.stop(1).len();
        assert!((20..=42).contains(&kept), "{kept} kept of partition 1");
    }
}
