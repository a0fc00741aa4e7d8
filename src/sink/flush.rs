//! Writing one batch, exactly once.
//!
//! A batch is written in one transaction:
//!
//! 1. `INSERT` its ledger row `(instance, run_id, batch_id)` with
//!    `ON CONFLICT DO NOTHING`. If the row exists, an earlier attempt whose
//!    `COMMIT` outcome was lost (connection killed, server restarted) did land,
//!    and the batch is not written again.
//! 2. Binary `COPY` its rows into a temporary staging table.
//! 3. One additive upsert into `rollup_minute` and one into `rollup_hour`
//!    (the same rows grouped by hour), each `GROUP BY` the key so a key never
//!    repeats in a statement and `ORDER BY` the key so concurrent instances
//!    lock rows in the same order and cannot deadlock.
//!
//! Retrying a batch with the same id is therefore always safe.

use crate::aggregate::Delta;
use futures_util::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

/// Identifies a batch across attempts and restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchId {
    /// Random per process start, so batch numbers never collide across runs.
    pub run_id: i64,
    /// Sequential within the run.
    pub batch: i64,
}

/// What an attempt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The batch was written now.
    Now {
        /// Rows inserted or updated in `rollup_minute`.
        minute_rows: u64,
        /// Rows inserted or updated in `rollup_hour`.
        hour_rows: u64,
        /// Rows written to `events_sample`.
        raw_rows: u64,
    },
    /// An earlier attempt had already written it (found in the ledger).
    Already,
}

/// Enough memory for the batch's GROUP BY and sort to stay off disk; the
/// order is byte order (`COLLATE "C"`): any fixed order prevents deadlocks,
/// and this one is the cheapest to sort.
const TUNE_TX: &str = "SET LOCAL work_mem = '256MB'";

const INSERT_LEDGER: &str = "INSERT INTO bid_logger_flush_ledger (instance, run_id, batch_id, events, rows)
    VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING";

const CREATE_STAGE: &str = "CREATE TEMP TABLE IF NOT EXISTS bid_logger_stage (
    minute bigint NOT NULL, event_type text NOT NULL, country text NOT NULL, os text NOT NULL,
    campaign_id bigint NOT NULL, advertiser_id bigint NOT NULL, events bigint NOT NULL,
    attributed_events bigint NOT NULL, price_micros bigint NOT NULL, revenue_micros bigint NOT NULL
) ON COMMIT DELETE ROWS";

const COPY_STAGE: &str = "COPY bid_logger_stage (minute, event_type, country, os, campaign_id, advertiser_id,
    events, attributed_events, price_micros, revenue_micros) FROM STDIN (FORMAT binary)";

const STAGE_TYPES: [Type; 10] = [
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
];

/// An additive upsert of the staged rows into `$table`, bucketing the staged
/// minute by `$bucket_key` (a `bigint` expression) whose unit is `$seconds`;
/// `$1` is the sample rate. The two rollup tables differ only in that.
macro_rules! upsert {
    ($table:literal, $bucket_key:literal, $seconds:literal) => {
        concat!(
            "INSERT INTO ",
            $table,
            " AS t (bucket, event_type, country, os, campaign_id,
    advertiser_id, sample_ppm, events, attributed_events, price_micros, revenue_micros, updated_at)
SELECT to_timestamp(",
            $bucket_key,
            " * ",
            $seconds,
            "), event_type, country, os, campaign_id, advertiser_id, $1,
    sum(events), sum(attributed_events), sum(price_micros), sum(revenue_micros), now()
FROM bid_logger_stage
GROUP BY ",
            $bucket_key,
            ", event_type, country, os, campaign_id, advertiser_id
ORDER BY ",
            $bucket_key,
            r#", event_type COLLATE "C", country COLLATE "C", os COLLATE "C", campaign_id, advertiser_id
ON CONFLICT (bucket, event_type, country, os, campaign_id, advertiser_id, sample_ppm) DO UPDATE SET
    events = t.events + EXCLUDED.events,
    attributed_events = t.attributed_events + EXCLUDED.attributed_events,
    price_micros = t.price_micros + EXCLUDED.price_micros,
    revenue_micros = t.revenue_micros + EXCLUDED.revenue_micros,
    updated_at = EXCLUDED.updated_at"#
        )
    };
}

/// Upsert into `rollup_minute`.
const UPSERT_MINUTE: &str = upsert!("rollup_minute", "minute", "60");

/// Upsert into `rollup_hour`: the staged minutes grouped by hour with integer
/// arithmetic (no dependence on the session's time zone).
const UPSERT_HOUR: &str = upsert!("rollup_hour", "div(minute, 60)", "3600");

const COPY_RAW: &str = "COPY events_sample (ts, received_at, event_type, txn, partition, pub, seq, country, os,
    campaign_id, advertiser_id, exchange, name, price_micros, revenue_micros, attributed, sample_ppm)
    FROM STDIN (FORMAT binary)";

const RAW_TYPES: [Type; 17] = [
    Type::TIMESTAMPTZ,
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::BYTEA,
    Type::INT4,
    Type::TEXT,
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::INT8,
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::INT8,
    Type::INT8,
    Type::BOOL,
    Type::INT4,
];

fn system_time(ms: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64)
}

/// Deletes ledger rows old enough that no retry can still be looking for them.
pub const PRUNE_LEDGER: &str = "DELETE FROM bid_logger_flush_ledger WHERE flushed_at < now() - interval '2 days'";

/// Writes `delta` as batch `id` of `instance`, exactly once.
pub async fn write_batch(
    client: &mut tokio_postgres::Client,
    instance: &str,
    id: BatchId,
    delta: &Delta,
    sample_ppm: u32,
    raw_sample_ppm: u32,
) -> Result<Written, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let events = delta.events as i64;
    let rows = delta.rows.len() as i64;
    let new = tx.execute(INSERT_LEDGER, &[&instance, &id.run_id, &id.batch, &events, &rows]).await?;
    if new == 0 {
        tx.rollback().await?;
        return Ok(Written::Already);
    }
    tx.batch_execute(TUNE_TX).await?;
    tx.batch_execute(CREATE_STAGE).await?;
    let sink = tx.copy_in(COPY_STAGE).await?;
    let writer = BinaryCopyInWriter::new(sink, &STAGE_TYPES);
    pin_mut!(writer);
    for (key, c) in &delta.rows {
        let row: [&(dyn ToSql + Sync); 10] = [
            &key.minute,
            &key.event_type.as_str(),
            &key.country_str(),
            &key.os.as_str(),
            &key.campaign,
            &key.advertiser,
            &(c.events as i64),
            &(c.attributed as i64),
            &c.price,
            &c.revenue,
        ];
        writer.as_mut().write(&row).await?;
    }
    writer.finish().await?;
    let ppm = sample_ppm as i32;
    let minute_rows = tx.execute(UPSERT_MINUTE, &[&ppm]).await?;
    let hour_rows = tx.execute(UPSERT_HOUR, &[&ppm]).await?;
    let raw_rows = delta.raw.len() as u64;
    if raw_rows > 0 {
        let sink = tx.copy_in(COPY_RAW).await?;
        let writer = BinaryCopyInWriter::new(sink, &RAW_TYPES);
        pin_mut!(writer);
        let raw_ppm = raw_sample_ppm as i32;
        for r in &delta.raw {
            let row: [&(dyn ToSql + Sync); 17] = [
                &system_time(r.ts_ms),
                &system_time(r.received_ms),
                &r.event_type.as_str(),
                &r.txn,
                &(r.partition as i32),
                &r.publisher,
                &r.seq.map(|s| s as i64),
                &std::str::from_utf8(&r.country).unwrap_or("--"),
                &r.os.as_str(),
                &i64::from(r.campaign),
                &i64::from(r.advertiser),
                &r.exchange,
                &r.name,
                &r.price,
                &r.revenue,
                &r.attributed,
                &raw_ppm,
            ];
            writer.as_mut().write(&row).await?;
        }
        writer.finish().await?;
    }
    tx.commit().await?;
    Ok(Written::Now { minute_rows, hour_rows, raw_rows })
}
