//! The per-message hot path without sockets: decode, sample, aggregate.
//! Run with `cargo bench --bench hot_path`; figures are per message on one core.

use bid_logger_core::aggregate::{AggregateConfig, Aggregator, Dimension, Dimensions, PairingConfig};
use bid_logger_core::decode::decode;
use bid_logger_core::hot_path::{HotPath, HotPathConfig};
use bid_logger_core::sample::Sampler;
use bid_logger_core::synth::{append_pub_seq, Generator, Traffic};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;

fn stream(n: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut gen = Generator::new(&Traffic::default());
    let now = 1_764_180_000_000;
    (0..n)
        .map(|i| {
            let (mut t, mut p) = (Vec::new(), Vec::new());
            gen.next(now, &mut t, &mut p);
            append_pub_seq(&mut p, "bidder-0", i as u64);
            (t, p)
        })
        .collect()
}

fn hot_path(c: &mut Criterion) {
    let msgs = stream(100_000);
    let now = 1_764_180_000_000;
    let mut group = c.benchmark_group("hot_path");
    group.throughput(Throughput::Elements(msgs.len() as u64));
    group.bench_function("decode/simulated", |b| {
        b.iter(|| {
            for (t, p) in &msgs {
                black_box(decode(t, p).unwrap());
            }
        })
    });
    let sampler = Sampler::new("0.3".parse().unwrap(), 64);
    let evs: Vec<_> = msgs.iter().map(|(t, p)| decode(t, p).unwrap()).collect();
    group.bench_function("sample/keep_0.3", |b| b.iter(|| evs.iter().filter(|e| sampler.keep(e.txn)).count()));
    group.bench_function("aggregate/record", |b| {
        let mut agg = Aggregator::new(AggregateConfig::default());
        b.iter(|| {
            for e in &evs {
                agg.record(e, now);
            }
            black_box(agg.drain());
        })
    });
    // with price distributions by exchange, country, OS and campaign
    // declared: every priced event is also counted under its price bucket
    let dims = Dimensions::of(&[
        Dimension::Exchange,
        Dimension::Country,
        Dimension::Os,
        Dimension::Campaign,
        Dimension::Price,
    ]);
    let prices = AggregateConfig { price_dims: Some(dims), ..AggregateConfig::default() };
    group.bench_function("aggregate/record+prices", |b| {
        let mut agg = Aggregator::new(prices.clone());
        b.iter(|| {
            for e in &evs {
                agg.record(e, now);
            }
            black_box(agg.drain());
        })
    });
    group.bench_function("message/decode+record", |b| {
        let mut agg = Aggregator::new(AggregateConfig::default());
        b.iter(|| {
            for (t, p) in &msgs {
                let e = decode(t, p).unwrap();
                agg.record(&e, now);
            }
            black_box(agg.drain());
        })
    });
    group.bench_function("message/process", |b| {
        // What an ingest thread runs per message at the defaults: decode, seq
        // tracking, sample 1, raw sample 1/1000, aggregation.
        let mut hot = HotPath::new(HotPathConfig::default());
        b.iter(|| {
            for (t, p) in &msgs {
                hot.process(t, p, now);
            }
            black_box(hot.aggregator.drain());
        })
    });
    // a bid landscape by exchange declared: every bid, win and loss is
    // paired in memory (the simulator's transactions, in order)
    let landscape = (Some(Dimensions::of(&[Dimension::Exchange, Dimension::BidPrice])), None);
    // a timing table by exchange declared: every bid, win and loss is
    // paired, and every impression waits for its clicks
    let timing = (None, Some(Dimensions::of(&[Dimension::Exchange, Dimension::Delay])));
    for (name, (landscape, timing)) in [("message/process+landscape", landscape), ("message/process+timing", timing)] {
        group.bench_function(name, |b| {
            let pairing = PairingConfig { landscape, timing, window_ms: 60_000, max_pending: 1_000_000 };
            let aggregate = AggregateConfig { pairing: Some(pairing), ..AggregateConfig::default() };
            let mut hot = HotPath::new(HotPathConfig { aggregate, ..HotPathConfig::default() });
            b.iter(|| {
                for (t, p) in &msgs {
                    hot.process(t, p, now);
                }
                hot.aggregator.expire_waiting(now + 120_000);
                black_box(hot.aggregator.drain());
            })
        });
    }
    group.bench_function("message/process+prices", |b| {
        let mut hot = HotPath::new(HotPathConfig { aggregate: prices.clone(), ..HotPathConfig::default() });
        b.iter(|| {
            for (t, p) in &msgs {
                hot.process(t, p, now);
            }
            black_box(hot.aggregator.drain());
        })
    });
    group.finish();
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
