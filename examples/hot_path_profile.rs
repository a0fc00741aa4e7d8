//! A fixed amount of hot-path work (the ingest threads' own
//! [`HotPath::process`]: decode, `seq` tracking, sampling at 1 with the
//! default raw sample of 1/1000, aggregation; over 200 000 simulated
//! messages, ten times) for instruction-count profiling, which is repeatable
//! on a shared machine where timings are not:
//!
//! ```text
//! cargo build --release --example hot_path_profile
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out target/release/examples/hot_path_profile
//! callgrind_annotate /tmp/cg.out | head -40
//! ```

use bid_logger::aggregate::AggregateConfig;
use bid_logger::ingest::HotPath;
use bid_logger::sample::Rate;
use bid_logger::simulate::{append_pub_seq, Generator, SimulateConfig};

fn main() {
    let now = 1_764_180_000_000;
    let mut gen = Generator::new(&SimulateConfig::default());
    let msgs: Vec<(Vec<u8>, Vec<u8>)> = (0..200_000)
        .map(|i| {
            let (mut t, mut p) = (Vec::new(), Vec::new());
            gen.next(now, &mut t, &mut p);
            append_pub_seq(&mut p, "bidder-0", i as u64);
            (t, p)
        })
        .collect();
    let raw: Rate = "1/1000".parse().expect("a rate");
    let mut hot = HotPath::new(64, Rate::ALL, raw, AggregateConfig::default());
    for _ in 0..10 {
        for (t, p) in &msgs {
            hot.process(t, p, now);
        }
        std::hint::black_box(hot.aggregator.drain());
    }
    let stats = hot.aggregator.take_stats();
    println!("{} events aggregated", stats.accepted.iter().sum::<u64>());
}
