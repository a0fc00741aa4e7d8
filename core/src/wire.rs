//! The publisher contract (`docs/wire-format.md`): topics, event types
//! and the partition hash. Everything here is pure and allocation-free.

use std::fmt;

/// The eight kinds of event in a transaction chain, in chain order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum EventType {
    /// An auction the bidder was asked to bid in.
    Auction = 0,
    /// A bid the bidder sent.
    Bid = 1,
    /// An auction won.
    Win = 2,
    /// An auction lost.
    Loss = 3,
    /// An ad impression.
    Impression = 4,
    /// A click on an ad.
    Click = 5,
    /// An app install.
    Install = 6,
    /// An in-app event.
    Event = 7,
}

impl EventType {
    /// Every event type, in chain order (index = discriminant).
    pub const ALL: [EventType; 8] = [
        EventType::Auction,
        EventType::Bid,
        EventType::Win,
        EventType::Loss,
        EventType::Impression,
        EventType::Click,
        EventType::Install,
        EventType::Event,
    ];

    /// The name used in topics, in the `type` payload key and in the warehouse.
    pub const fn as_str(self) -> &'static str {
        match self {
            EventType::Auction => "auction",
            EventType::Bid => "bid",
            EventType::Win => "win",
            EventType::Loss => "loss",
            EventType::Impression => "impression",
            EventType::Click => "click",
            EventType::Install => "install",
            EventType::Event => "event",
        }
    }

    /// Parses a type name as it appears in a topic or payload.
    pub fn from_bytes(name: &[u8]) -> Option<EventType> {
        Some(match name {
            b"auction" => EventType::Auction,
            b"bid" => EventType::Bid,
            b"win" => EventType::Win,
            b"loss" => EventType::Loss,
            b"impression" => EventType::Impression,
            b"click" => EventType::Click,
            b"install" => EventType::Install,
            b"event" => EventType::Event,
            _ => return None,
        })
    }

    /// The discriminant, usable as an array index.
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Largest fleet-wide partition count the format allows (four digits).
pub const MAX_PARTITIONS: u32 = 10_000;

/// 64-bit FNV-1a of `bytes`: the publishers' partition hash.
#[inline]
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The partition a publisher routes `txn` to, for a fleet of `partition_count`.
#[inline]
pub fn partition_of(txn: &[u8], partition_count: u32) -> u32 {
    (fnv1a64(txn) % u64::from(partition_count)) as u32
}

/// The topic string `<type>.<partition>` with the partition zero-padded to
/// four digits, as publishers send it and as SUB sockets subscribe to it.
pub fn topic(event_type: EventType, partition: u32) -> String {
    format!("{}.{:04}", event_type.as_str(), partition)
}

/// Parses a topic frame into its event type and partition number.
///
/// Returns `None` unless the frame is exactly `<type>.<dddd>`.
#[inline]
pub fn parse_topic(frame: &[u8]) -> Option<(EventType, u32)> {
    let dot = frame.len().checked_sub(5)?;
    if frame[dot] != b'.' {
        return None;
    }
    let event_type = EventType::from_bytes(&frame[..dot])?;
    let mut partition = 0u32;
    for &d in &frame[dot + 1..] {
        if !d.is_ascii_digit() {
            return None;
        }
        partition = partition * 10 + u32::from(d - b'0');
    }
    Some((event_type, partition))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fnv_test_vectors_from_the_spec() {
        let bin: Vec<u8> = (0..16)
            .map(|i| u8::from_str_radix(&"0f1e2d3c4b5a69788796a5b4c3d2e1f0"[i * 2..i * 2 + 2], 16).unwrap())
            .collect();
        let vectors: [(&[u8], u64, u32, u32); 5] = [
            (b"", 0xcbf29ce484222325, 37, 37),
            (b"a", 0xaf63dc4c8601ec8c, 12, 140),
            (b"txn-000001", 0x400f5d1ebf464b83, 3, 131),
            (b"9b2f6c1e-3a4d-4e5f-8a9b-0c1d2e3f4a5b", 0x66a3766d91f27bdf, 31, 223),
            (&bin, 0xc991cf3aba9d09e5, 37, 229),
        ];
        for (txn, hash, p64, p256) in vectors {
            assert_eq!(fnv1a64(txn), hash, "fnv1a64({txn:?})");
            assert_eq!(partition_of(txn, 64), p64, "mod 64 of {txn:?}");
            assert_eq!(partition_of(txn, 256), p256, "mod 256 of {txn:?}");
        }
    }

    #[test]
    fn topics_parse_and_reject() {
        assert_eq!(parse_topic(b"bid.0031"), Some((EventType::Bid, 31)));
        assert_eq!(parse_topic(b"impression.0063"), Some((EventType::Impression, 63)));
        assert_eq!(parse_topic(b"event.9999"), Some((EventType::Event, 9999)));
        for bad in [
            &b"bid.31"[..],
            b"bid.00031",
            b"bid-0031",
            b"bids.0031",
            b"bid.00a1",
            b".0031",
            b"",
            b"bid.",
            b"BID.0031",
            b"bid.+031",
        ] {
            assert_eq!(parse_topic(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    proptest! {
        #[test]
        fn topic_round_trips(t in 0usize..8, p in 0u32..10_000) {
            let et = EventType::ALL[t];
            prop_assert_eq!(parse_topic(topic(et, p).as_bytes()), Some((et, p)));
        }
    }
}
