//! The flush's own per-row cost before the database: draining the
//! aggregator into a sorted [`Delta`](bid_logger_core::aggregate::Delta) and
//! forming the batch's parts ([`Batch::parts`], two as with the default
//! `db-pool-size`, each projected onto the five default rollup tables), over
//! the benchmark's simulated stream, ten times. Prints the fastest pass's
//! nanoseconds per fine row for each step (stderr):
//!
//! ```text
//! cargo build --release --example flush_profile
//! target/release/examples/flush_profile 1000000
//! ```
//!
//! The argument is the message count per pass.

use bid_logger::ingest::{HotPath, HotPathConfig};
use bid_logger::sink::batch::Batch;
use bid_logger_core::sample::Rate;
use std::time::Instant;

fn main() {
    let count: usize = match std::env::args().nth(1) {
        Some(n) => n.parse().expect("the argument is a message count"),
        None => 1_000_000,
    };
    let stream = bid_logger_tools::bench::generate(count, 64, 1);
    let now = bid_logger_core::clock::now_ms();
    let raw: Rate = "1/1000".parse().expect("a rate");
    let mut hot = HotPath::new(HotPathConfig { raw_sample: raw, ..HotPathConfig::default() });
    let (mut best_drain, mut best_parts) = (f64::MAX, f64::MAX);
    let mut rows = 0;
    let tables = bid_logger::db::tables::default_tables(std::time::Duration::from_secs(1));
    for _ in 0..10 {
        for (t, p) in &stream.messages {
            hot.process(t, p, now);
        }
        let s = Instant::now();
        let delta = hot.aggregator.drain();
        let d = s.elapsed().as_nanos() as f64;
        rows = delta.rows.len();
        let events = delta.events;
        let s = Instant::now();
        let parts = std::hint::black_box(Batch::parts(delta, 2, &tables, now));
        let p = s.elapsed().as_nanos() as f64;
        assert_eq!(parts.iter().map(|b| b.events).sum::<u64>(), events, "every event in one part");
        best_drain = best_drain.min(d / rows as f64);
        best_parts = best_parts.min(p / rows as f64);
    }
    eprintln!("{rows} rows: drain {best_drain:.1} ns/row, parts {best_parts:.1} ns/row");
}
