//! A fixed amount of hot-path work (the ingest threads' own
//! [`HotPath::process`]: decode, `seq` tracking, sampling at 1 with the
//! default raw sample of 1/1000, aggregation; over 200 000 simulated
//! messages, ten times, each pass ending with a drain) for instruction-count
//! profiling, which is repeatable on a shared machine where timings are not:
//!
//! ```text
//! cargo build --release --example hot_path_profile
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out target/release/examples/hot_path_profile
//! callgrind_annotate /tmp/cg.out | head -40
//! ```
//!
//! It also prints the fastest pass's time per message (stderr). An argument
//! sets the message count: `hot_path_profile 1000000` holds ~58 000 rows per
//! pass, enough for cache misses on the rollup table to show. Compare two
//! builds by running them alternately, several times each.

use bid_logger_core::hot_path::{HotPath, HotPathConfig};
use bid_logger_core::sample::Rate;
use bid_logger_core::synth::{append_pub_seq, Generator, Traffic};
use std::time::Instant;

fn main() {
    let count: usize = match std::env::args().nth(1) {
        Some(n) => n.parse().expect("the argument is a message count"),
        None => 200_000,
    };
    let now = 1_764_180_000_000;
    let mut gen = Generator::new(&Traffic::default());
    let msgs: Vec<(Vec<u8>, Vec<u8>)> = (0..count)
        .map(|i| {
            let (mut t, mut p) = (Vec::new(), Vec::new());
            gen.next(now, &mut t, &mut p);
            append_pub_seq(&mut p, "bidder-0", i as u64);
            (t, p)
        })
        .collect();
    let raw: Rate = "1/1000".parse().expect("a rate");
    let mut hot = HotPath::new(HotPathConfig { raw_sample: raw, ..HotPathConfig::default() });
    let (mut fastest, mut rows) = (f64::MAX, 0);
    for _ in 0..10 {
        let started = Instant::now();
        for (t, p) in &msgs {
            hot.process(t, p, now);
        }
        rows = std::hint::black_box(hot.aggregator.drain()).rows.len();
        fastest = fastest.min(started.elapsed().as_nanos() as f64 / count as f64);
    }
    let stats = hot.aggregator.take_stats();
    println!("{} events aggregated", stats.accepted.iter().sum::<u64>());
    eprintln!("{count} messages, {rows} rows per pass: fastest pass {fastest:.1} ns per message");
}
