//! Flush speed: the logger's exactly-once batch write against what
//! PostgreSQL itself does for a plain `COPY` + `INSERT … ON CONFLICT` of the
//! same rows, on the same server, into identical fresh tables.
//!
//! The rows are the benchmark stream aggregated by the logger's own
//! [`Aggregator`] (one batch, capped at the sink's largest transaction). The
//! plain side gets every advantage: its rows (minute *and* hour) are encoded
//! as COPY text before the clock starts, and its statements have no ledger,
//! no `GROUP BY` and no `ORDER BY`. Round 1 inserts new rows; later rounds
//! update every row (the steady state of a busy minute).

use super::Stream;
use bid_logger::db::ranges;
use bid_logger::db::tables::RollupTable;
use bid_logger::sink::batch::Batch;
use bid_logger::sink::flush::{write_batch, BatchId, KnownBoundaries, Writer};
use bid_logger::sink::marks::Watermark;
use bid_logger_core::aggregate::{AggregateConfig, Aggregator, Delta, Row};
use bytes::Bytes;
use futures_util::SinkExt;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// One round of the comparison.
#[derive(Debug, Clone, Copy)]
pub struct FlushRound {
    /// Rows written (minute + hour) per attempt.
    pub rows: u64,
    /// The logger's `write_batch`.
    pub logger: Duration,
    /// Plain COPY + INSERT … ON CONFLICT.
    pub plain: Duration,
}

impl FlushRound {
    /// Plain rows/s ÷ logger rows/s: how many times slower the logger is.
    pub fn ratio(&self) -> f64 {
        self.logger.as_secs_f64() / self.plain.as_secs_f64()
    }
}

const PLAIN_STAGE: &str = "CREATE TEMP TABLE IF NOT EXISTS plain_stage (
    bucket_s bigint, event_type text, country text, os text, campaign_id bigint, advertiser_id bigint,
    events bigint, attributed_events bigint, price_micros bigint, revenue_micros bigint) ON COMMIT DELETE ROWS";

fn plain_upsert(table: &str) -> String {
    format!(
        "INSERT INTO {table} AS t (bucket, event_type, country, os, campaign_id, advertiser_id, sample_ppm,
            events, attributed_events, price_micros, revenue_micros)
         SELECT to_timestamp(bucket_s), event_type, country, os, campaign_id, advertiser_id, 1000000,
            events, attributed_events, price_micros, revenue_micros FROM plain_stage
         ON CONFLICT (bucket, event_type, country, os, campaign_id, advertiser_id, sample_ppm) DO UPDATE SET
            events = t.events + EXCLUDED.events,
            attributed_events = t.attributed_events + EXCLUDED.attributed_events,
            price_micros = t.price_micros + EXCLUDED.price_micros,
            revenue_micros = t.revenue_micros + EXCLUDED.revenue_micros,
            updated_at = now()"
    )
}

/// The stream aggregated into one batch of at most `max_rows` minute rows.
pub fn batch_of(stream: &Stream, max_rows: usize) -> Delta {
    let mut agg = Aggregator::new(AggregateConfig::default());
    let now = bid_logger_core::clock::now_ms();
    for (topic, payload) in &stream.messages {
        if let Ok(ev) = bid_logger_core::decode::decode(topic, payload) {
            agg.record(&ev, now);
        }
    }
    let mut all = agg.drain();
    all.split_off(max_rows, 0)
}

/// COPY text of a table's rows.
fn plain_copy_text(rows: &[Row]) -> String {
    let mut text = String::new();
    for (k, c) in rows {
        let _ = writeln!(
            text,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            k.minute * 60,
            k.event_type.as_str(),
            k.country_str(),
            k.os.as_str(),
            k.campaign,
            k.advertiser,
            c.events,
            c.attributed,
            c.price,
            c.revenue
        );
    }
    text
}

/// The tables the comparison writes: `rollup_minute` and `rollup_hour`,
/// both upserted by every batch (the plain side's work).
fn compared_tables() -> Vec<RollupTable> {
    let mut tables = bid_logger::db::tables::default_tables(Duration::from_secs(1));
    tables.retain(|t| t.name == "rollup_minute" || t.name == "rollup_hour");
    for t in &mut tables {
        t.logged = false;
    }
    tables
}

async fn connect_migrated(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let mut client = bid_logger::db::connect(url).await?;
    bid_logger::db::migrate(&mut client, &compared_tables()).await?;
    // the ranges of the batch's buckets (the stream's times are around now:
    // yesterday to tomorrow)
    let today_s = ranges::day_of(bid_logger_core::clock::now_ms()) * 86_400;
    for table in compared_tables() {
        let span = ranges::Span::of(table.shape.grain);
        let starts: Vec<i64> = span.starts(today_s - 86_400, today_s + 2 * 86_400 - 1).collect();
        ranges::ensure(&mut client, ranges::Parent { table: &table.merged, span, rollup: true }, &starts).await?;
    }
    Ok(client)
}

async fn plain_write(client: &mut tokio_postgres::Client, minute: &Bytes, hour: &Bytes) -> anyhow::Result<()> {
    let tx = client.transaction().await?;
    tx.batch_execute(PLAIN_STAGE).await?;
    // (into the tables behind the views: a rollup table is a view)
    for (text, table) in [(minute, "rollup_minute_merged"), (hour, "rollup_hour_merged")] {
        let sink = tx.copy_in("COPY plain_stage FROM STDIN").await?;
        futures_util::pin_mut!(sink);
        sink.send(text.clone()).await?;
        sink.as_mut().finish().await?;
        tx.batch_execute(&plain_upsert(table)).await?;
        tx.batch_execute("TRUNCATE plain_stage").await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Writes `delta` `rounds` times with the logger's `write_batch` into one
/// fresh database and with plain COPY + upsert into another; `fresh_db`
/// makes a database and returns its URL.
pub async fn compare(
    logger_url: &str,
    plain_url: &str,
    delta: &Delta,
    rounds: usize,
) -> anyhow::Result<Vec<FlushRound>> {
    let mut logger = connect_migrated(logger_url).await?;
    let mut plain = connect_migrated(plain_url).await?;
    let tables = compared_tables();
    let now = bid_logger_core::clock::now_ms();
    let batch = Batch::parts(delta.clone(), 1, &tables, now).pop().expect("a non-empty delta");
    let rows = batch.rows() as u64;
    let minute = Bytes::from(plain_copy_text(&batch.tables[0]));
    let hour = Bytes::from(plain_copy_text(&batch.tables[1]));
    // (no boundary known: every row is a live row too, as the plain side
    // writes every row)
    let known = KnownBoundaries::new(tables.len());
    let mut out = Vec::new();
    for round in 0..rounds {
        let t = Instant::now();
        let id = BatchId { run_id: 1, batch: round as i64 };
        let mark = Watermark {
            partitions: vec![],
            values: vec![],
            generation: round as i64,
            drained: 0,
            fence: None,
            gaps: Default::default(),
        };
        let to = Writer {
            instance: "bench-flush",
            scope: "bench-flush",
            tables: &tables,
            sample_ppm: [1_000_000; bid_logger_core::wire::EventType::ALL.len()],
            raw_sample_ppm: 0,
            known: &known,
        };
        write_batch(&mut logger, &to, id, &batch, &mark, &[]).await?;
        let logger_time = t.elapsed();
        let t = Instant::now();
        plain_write(&mut plain, &minute, &hour).await?;
        let plain_time = t.elapsed();
        out.push(FlushRound { rows, logger: logger_time, plain: plain_time });
    }
    // Both sides must have written the same thing: the logger's batches
    // append every row to the tables' logs (its folds, later, add them up),
    // the plain side upserts them: the events of every round, and each
    // round's hour keys (none while `rollup_hour` is fed from the minute
    // table's folds, as in the default set: then neither side writes it).
    let appended = "SELECT (SELECT sum(events) FROM bid_logger_log_rollup_minute)::bigint,
        (SELECT coalesce(max(rows), 0) FROM bid_logger_log_rollup_hour)::bigint";
    let totals = "SELECT (SELECT sum(events) FROM rollup_minute)::bigint, (SELECT count(*) FROM rollup_hour)";
    let a = logger.query_one(appended, &[]).await?;
    let b = plain.query_one(totals, &[]).await?;
    let (a, b): ((i64, i64), (i64, i64)) = ((a.get(0), a.get(1)), (b.get(0), b.get(1)));
    anyhow::ensure!(a == b, "logger and plain flush disagree: (events, hour rows) {a:?} vs {b:?}");
    Ok(out)
}
