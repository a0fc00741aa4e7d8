//! What recording the committed `seq` marks adds to a flush, at the size
//! the fleet issue asks for: 200 publishers × 8 types × 64 partitions
//! (102 400 marks, every one moved since the last flush).
//!
//! One second of the benchmark stream at 200 000 events/s (200 000
//! messages, aggregated by the logger's aggregator) is written with the
//! logger's own `write_batch` into the five default rollup tables, in
//! alternating rounds without marks and with them (their encoding
//! included); prints the median of each and the overhead (stderr):
//!
//! ```text
//! cargo build --release --example marks_cost
//! DATABASE_URL=postgres://… target/release/examples/marks_cost 30
//! ```
//!
//! The argument is the number of round pairs. Without `DATABASE_URL`, a
//! throwaway PostgreSQL is started.

use bid_logger::db::ranges;
use bid_logger::sink::batch::Batch;
use bid_logger::sink::flush::{write_batch, BatchId, KnownBoundaries, Writer};
use bid_logger::sink::marks::Watermark;
use bid_logger_core::marks::SeqMarks;
use bid_logger_core::seq::{topic_id, Mark};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let pairs: usize = std::env::args().nth(1).map_or(Ok(30), |n| n.parse())?;
    let temp;
    let server = match std::env::var("DATABASE_URL") {
        Ok(url) => url,
        Err(_) => {
            temp = bid_logger_tools::pgtemp::TempPostgres::start()?;
            temp.url()
        }
    };
    let admin = bid_logger::db::connect(&server).await?;
    let db = format!("marks_cost_{}", std::process::id());
    admin.batch_execute(&format!("CREATE DATABASE {db}")).await?;
    let mut cfg: tokio_postgres::Config = server.parse()?;
    cfg.dbname(&db);
    let (mut client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let tables = bid_logger::db::tables::default_tables(Duration::from_secs(1));
    bid_logger::db::migrate(&mut client, &tables).await?;
    let today_s = ranges::day_of(bid_logger_core::clock::now_ms()) * 86_400;
    for table in &tables {
        let span = ranges::Span::of(table.shape.grain);
        let starts: Vec<i64> = span.starts(today_s - 86_400, today_s + 2 * 86_400 - 1).collect();
        ranges::ensure(&mut client, ranges::Parent { table: &table.merged, span, rollup: true }, &starts).await?;
    }

    let stream = bid_logger_tools::bench::generate(200_000, 64, 1);
    let delta = bid_logger_tools::bench::flush::batch_of(&stream, usize::MAX);
    let now = bid_logger_core::clock::now_ms();
    let batch = Batch::parts(delta, 1, &tables, now).pop().expect("a non-empty delta");
    let publishers: Vec<Arc<str>> = (0..200).map(|p| Arc::from(format!("bidder-{p:03}"))).collect();
    let mut marks = SeqMarks::default();
    let known = KnownBoundaries::new(tables.len());
    let to = Writer {
        instance: "marks-cost",
        scope: "marks-cost",
        tables: &tables,
        sample_ppm: [1_000_000; bid_logger_core::wire::EventType::ALL.len()],
        raw_sample_ppm: 0,
        known: &known,
    };
    let (mut without, mut with, mut encode) = (Vec::new(), Vec::new(), Vec::new());
    let mut id = 0;
    for round in 0..=pairs {
        for with_marks in [false, true] {
            id += 1;
            let started = Instant::now();
            let mark = if with_marks {
                // every sequence moved by ~2 000 since the last flush
                let moved: Vec<Mark> = publishers
                    .iter()
                    .flat_map(|p| {
                        (0..8u8).flat_map(move |t| {
                            (0..64u32).map(move |part| Mark {
                                publisher: p.clone(),
                                topic: topic_id(t, part),
                                seq: 1_000_000 + round as u64 * 2_000 + u64::from(part) * 7 + u64::from(t),
                            })
                        })
                    })
                    .collect();
                marks.apply(moved, now);
                let taken = marks.take_moved(now);
                if round > 0 {
                    encode.push(started.elapsed().as_secs_f64() * 1000.0);
                }
                Watermark {
                    partitions: taken.iter().map(|(p, _)| *p as i32).collect(),
                    values: taken.into_iter().map(|(_, v)| v).collect(),
                    generation: id,
                    drained: 0,
                    fence: None,
                    gaps: Default::default(),
                }
            } else {
                Watermark {
                    partitions: vec![],
                    values: vec![],
                    generation: id,
                    drained: 0,
                    fence: None,
                    gaps: Default::default(),
                }
            };
            write_batch(&mut client, &to, BatchId { run_id: 1, batch: id }, &batch, &mark, &[]).await?;
            let elapsed = started.elapsed().as_secs_f64() * 1000.0;
            if round > 0 {
                // round 0 inserts every row; later rounds update them (the steady state)
                if with_marks {
                    with.push(elapsed)
                } else {
                    without.push(elapsed)
                }
            }
        }
    }
    let bytes: i64 =
        client.query_one("SELECT coalesce(sum(length(marks)), 0)::bigint FROM bid_logger_seq_marks", &[]).await?.get(0);
    drop(client);
    admin.batch_execute(&format!("DROP DATABASE {db}")).await?;
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (a, b, e) = (median(&mut without), median(&mut with), median(&mut encode));
    eprintln!(
        "flush of {} rows ({} events): {a:.1} ms without marks, {b:.1} ms with 102 400 marks ({} KB in 64 values; {e:.1} ms of it gathering and encoding them): +{:.1} % ({pairs} pairs, medians)",
        batch.rows(),
        batch.events,
        bytes / 1024,
        (b / a - 1.0) * 100.0
    );
    Ok(())
}
