//! A fixed amount of hot-path work (decode, then aggregate, of 200 000
//! simulated messages, ten times) for instruction-count profiling, which is
//! repeatable on a shared machine where timings are not:
//!
//! ```text
//! cargo build --release --example hot_path_profile
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out target/release/examples/hot_path_profile
//! callgrind_annotate /tmp/cg.out | head -40
//! ```

use bid_logger::aggregate::{AggregateConfig, Aggregator};
use bid_logger::decode::decode;
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
    let mut agg = Aggregator::new(AggregateConfig::default());
    let mut accepted = 0u64;
    for _ in 0..10 {
        for (t, p) in &msgs {
            if let Ok(e) = decode(t, p, 64) {
                accepted += u64::from(agg.record(&e, now) == bid_logger::aggregate::Outcome::Accepted);
            }
        }
        std::hint::black_box(agg.drain());
    }
    println!("{accepted} events aggregated");
}
