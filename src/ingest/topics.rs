//! Which topics an ingest thread subscribes to (ZeroMQ filters by prefix at
//! the publisher, so this decides what is sent over the network at all).

use super::IngestConfig;
use bid_logger_core::wire::{topic, EventType, MAX_PARTITIONS};

/// The topics thread `index` of `threads` subscribes to.
///
/// * With one thread, for each event type it takes whole (every partition,
///   rate 1): the type's prefix (`bid.`), so that whatever partition count
///   the publishers use, no event of it is filtered out at the sender.
/// * Otherwise, for each configured event type: the thread's share of this
///   instance's partitions (round robin), minus partitions that none of the
///   type's samplers (its rollup rate, the raw sample) needs (`wants`), plus its share of the prefixes that
///   cover every partition number from `partition-count` to 9999. A
///   publisher whose partition count agrees sends nothing there; one that
///   uses a larger count is seen (its events counted as partition
///   mismatches) instead of being silently filtered out.
pub fn subscriptions(
    config: &IngestConfig,
    wants: &dyn Fn(EventType, u32) -> bool,
    index: usize,
    threads: usize,
) -> Vec<String> {
    let beyond = prefixes_from(config.partition_count);
    let mut out = Vec::new();
    for &et in &config.event_types {
        if threads == 1 && config.takes_everything_of(et) {
            out.push(format!("{}.", et.as_str()));
            continue;
        }
        for (i, &p) in config.partitions.iter().enumerate() {
            if i % threads == index && wants(et, p) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use bid_logger_core::sample::Rate;
    use bid_logger_core::wire::EventType;
    fn config(partition_count: u32, partitions: std::ops::Range<u32>, threads: usize, sample: &str) -> IngestConfig {
        IngestConfig {
            connect: vec![],
            bind: vec![],
            partition_count,
            partitions: partitions.collect(),
            event_types: vec![EventType::Bid, EventType::Win],
            sample: sample.parse::<Rate>().unwrap().into(),
            raw_sample: Rate::NONE,
            receive_hwm: 0,
            quiet_after: crate::ingest::DEFAULT_QUIET_AFTER,
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

    /// Thread `index`'s subscriptions, decided by the hot path `config` makes.
    fn subs(config: &IngestConfig, index: usize, threads: usize) -> Vec<String> {
        let hot = bid_logger_core::hot_path::HotPath::new(config.hot_path(Default::default()));
        subscriptions(config, &|et, p| hot.wants(et, p), index, threads)
    }

    #[test]
    fn subscriptions_follow_partitions_types_threads_and_sample() {
        // one thread taking everything: one prefix per type, whatever the publishers' count
        assert_eq!(subs(&config(64, 0..64, 1, "1"), 0, 1), vec!["bid.", "win."]);
        // a partition subset: exact topics, plus the partitions beyond the count
        let beyond = prefixes_from(64).len();
        let subset = config(64, 0..16, 2, "1");
        let t0 = subs(&subset, 0, 2);
        let t1 = subs(&subset, 1, 2);
        assert_eq!(t0.len() + t1.len(), 2 * (16 + beyond));
        assert!(t0.contains(&"bid.0000".to_string()) && t1.contains(&"win.0015".to_string()));
        assert!(!t0.contains(&"bid.0016".to_string()) && !t1.contains(&"bid.0016".to_string()));
        assert!(t0.iter().chain(&t1).any(|t| t == "bid.0064") && t0.iter().chain(&t1).any(|t| t == "win.1"));
        // several threads taking everything: no prefix is shared, all partitions are covered
        let threads = config(64, 0..64, 2, "1");
        let (a, b) = (subs(&threads, 0, 2), subs(&threads, 1, 2));
        assert_eq!(a.len() + b.len(), 2 * (64 + beyond));
        assert!(a.iter().all(|t| !b.contains(t)));
        // sampling: partitions outside every sample are not subscribed to
        let exact = |mut topics: Vec<String>| {
            topics.retain(|t| {
                t.len() >= 8 && t[t.len() - 4..].bytes().all(|b| b.is_ascii_digit()) && t[t.len() - 4..] < *"0064"
            });
            topics.sort();
            topics
        };
        let sampled = config(64, 0..16, 1, "1/8");
        assert_eq!(exact(subs(&sampled, 0, 1)), vec!["bid.0000", "bid.0008", "win.0000", "win.0008"]);
        // a raw sample at a lower rate needs no extra partition (samples nest)
        let raw = IngestConfig { raw_sample: "1/1000".parse().unwrap(), ..config(64, 0..16, 1, "1/8") };
        assert_eq!(subs(&raw, 0, 1).len(), 2 * (2 + beyond));
        // at a higher rate it does
        let half = IngestConfig { raw_sample: "1/2".parse().unwrap(), ..config(64, 0..16, 1, "1/8") };
        assert_eq!(subs(&half, 0, 1).len(), 2 * (8 + beyond));
        // a rate per type: each type its own partitions, bids all 16 and wins 1/8 of 64
        let by_type = config(64, 0..16, 1, "1");
        let by_type = IngestConfig { sample: by_type.sample.with(EventType::Win, "1/8".parse().unwrap()), ..by_type };
        let topics = exact(subs(&by_type, 0, 1));
        assert_eq!(topics.iter().filter(|t| t.starts_with("bid.")).count(), 16, "{topics:?}");
        assert_eq!(topics.iter().filter(|t| t.starts_with("win.")).collect::<Vec<_>>(), ["win.0000", "win.0008"]);
        // every partition: the type at rate 1 by its prefix, the sampled one by partition
        let all_by_type = config(64, 0..64, 1, "1");
        let all_by_type =
            IngestConfig { sample: all_by_type.sample.with(EventType::Win, "1/2".parse().unwrap()), ..all_by_type };
        assert!(all_by_type.takes_everything_of(EventType::Bid) && !all_by_type.takes_everything_of(EventType::Win));
        let topics = subs(&all_by_type, 0, 1);
        assert_eq!(topics.iter().filter(|t| t.starts_with("bid.")).collect::<Vec<_>>(), ["bid."]);
        assert_eq!(topics.iter().filter(|t| t.starts_with("win.")).count(), 32 + beyond, "{topics:?}");
    }
}
