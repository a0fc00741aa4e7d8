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
use bid_logger::sink::batch::Batch;
use bid_logger::sink::flush::{write_batch, BatchId};
use bid_logger_core::aggregate::{AggregateConfig, Aggregator, Delta};
use bytes::Bytes;
use futures_util::SinkExt;
use std::collections::BTreeMap;
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

/// COPY text of the minute rows and of the same rows grouped by hour.
fn plain_copy_text(delta: &Delta) -> (String, String, u64) {
    let mut hours: BTreeMap<_, [i64; 4]> = BTreeMap::new();
    let mut minute = String::new();
    for (k, c) in &delta.rows {
        let v = [c.events as i64, c.attributed as i64, c.price, c.revenue];
        let dims = (k.event_type.as_str(), k.country_str().to_string(), k.os.as_str().to_string(), k.campaign);
        let _ = writeln!(
            minute,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            k.minute * 60,
            dims.0,
            dims.1,
            dims.2,
            k.campaign,
            k.advertiser,
            v[0],
            v[1],
            v[2],
            v[3]
        );
        let h = hours.entry((k.minute.div_euclid(60), dims, k.advertiser)).or_default();
        for i in 0..4 {
            h[i] += v[i];
        }
    }
    let mut hour = String::new();
    for ((h, (et, country, os, campaign), advertiser), v) in &hours {
        let _ = writeln!(
            hour,
            "{}\t{et}\t{country}\t{os}\t{campaign}\t{advertiser}\t{}\t{}\t{}\t{}",
            h * 3600,
            v[0],
            v[1],
            v[2],
            v[3]
        );
    }
    let rows = (delta.rows.len() + hours.len()) as u64;
    (minute, hour, rows)
}

async fn connect_migrated(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (mut client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    bid_logger::sink::migrate(&mut client).await?;
    Ok(client)
}

async fn plain_write(client: &mut tokio_postgres::Client, minute: &Bytes, hour: &Bytes) -> anyhow::Result<()> {
    let tx = client.transaction().await?;
    tx.batch_execute(PLAIN_STAGE).await?;
    for (text, table) in [(minute, "rollup_minute"), (hour, "rollup_hour")] {
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
    let (minute, hour, rows) = plain_copy_text(delta);
    let (minute, hour) = (Bytes::from(minute), Bytes::from(hour));
    let batch = Batch::parts(delta.clone(), 1).pop().expect("a non-empty delta");
    let mut out = Vec::new();
    for round in 0..rounds {
        let t = Instant::now();
        let id = BatchId { run_id: 1, batch: round as i64 };
        write_batch(&mut logger, "bench-flush", id, &batch, 1_000_000, 0).await?;
        let logger_time = t.elapsed();
        let t = Instant::now();
        plain_write(&mut plain, &minute, &hour).await?;
        let plain_time = t.elapsed();
        out.push(FlushRound { rows, logger: logger_time, plain: plain_time });
    }
    // Both sides must have written the same thing.
    let totals = "SELECT (SELECT sum(events) FROM rollup_minute)::bigint, (SELECT count(*) FROM rollup_hour)";
    let a = logger.query_one(totals, &[]).await?;
    let b = plain.query_one(totals, &[]).await?;
    let (a, b): ((i64, i64), (i64, i64)) = ((a.get(0), a.get(1)), (b.get(0), b.get(1)));
    anyhow::ensure!(a == b, "logger and plain flush disagree: (events, hour rows) {a:?} vs {b:?}");
    Ok(out)
}
