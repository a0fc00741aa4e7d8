//! Writing one batch, exactly once.
//!
//! A batch is written in one transaction:
//!
//! 1. `INSERT` its ledger row `(instance, run_id, batch_id)` with
//!    `ON CONFLICT DO NOTHING`. If the row exists, an earlier attempt whose
//!    `COMMIT` outcome was lost (connection killed, server restarted) did land,
//!    and the batch is not written again.
//! 2. Binary `COPY` its minute rows, and the same rows grouped by hour, into
//!    two temporary staging tables. The grouping and ordering happen here, not
//!    in SQL: each staged key is unique, and rows are staged in key order.
//! 3. One additive upsert into `rollup_minute` and one into `rollup_hour`,
//!    each a plain `INSERT … SELECT … ON CONFLICT DO UPDATE` of its stage. A
//!    freshly filled temporary table is read back in the order it was written,
//!    so every instance locks rows in key order and two instances do not
//!    deadlock on overlapping keys (were that order ever broken, PostgreSQL
//!    would detect the deadlock and the batch would be retried: a deadlock is
//!    a transient error).
//!
//! Retrying a batch with the same id is therefore always safe.

use crate::aggregate::{Counters, Delta, RowKey};
use futures_util::pin_mut;
use rustc_hash::FxHashMap;
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

const INSERT_LEDGER: &str = "INSERT INTO bid_logger_flush_ledger (instance, run_id, batch_id, events, rows)
    VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING";

/// The staging tables (`$stage` is `minute` or `hour`) and their COPY.
macro_rules! stage {
    ($stage:literal) => {
        (
            concat!(
                "CREATE TEMP TABLE IF NOT EXISTS bid_logger_stage_",
                $stage,
                " (
    bucket timestamptz NOT NULL, event_type text NOT NULL, country text NOT NULL, os text NOT NULL,
    campaign_id bigint NOT NULL, advertiser_id bigint NOT NULL, events bigint NOT NULL,
    attributed_events bigint NOT NULL, price_micros bigint NOT NULL, revenue_micros bigint NOT NULL
) ON COMMIT DELETE ROWS"
            ),
            concat!(
                "COPY bid_logger_stage_",
                $stage,
                " (bucket, event_type, country, os, campaign_id, advertiser_id,
    events, attributed_events, price_micros, revenue_micros) FROM STDIN (FORMAT binary)"
            ),
        )
    };
}

const STAGE_MINUTE: (&str, &str) = stage!("minute");
const STAGE_HOUR: (&str, &str) = stage!("hour");

const STAGE_TYPES: [Type; 10] = [
    Type::TIMESTAMPTZ,
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

/// An additive upsert of one stage into its table; `$1` is the sample rate.
/// Staged keys are unique, so no row is affected twice.
macro_rules! upsert {
    ($table:literal, $stage:literal) => {
        concat!(
            "INSERT INTO ",
            $table,
            " AS t (bucket, event_type, country, os, campaign_id,
    advertiser_id, sample_ppm, events, attributed_events, price_micros, revenue_micros, updated_at)
SELECT bucket, event_type, country, os, campaign_id, advertiser_id, $1,
    events, attributed_events, price_micros, revenue_micros, now()
FROM bid_logger_stage_",
            $stage,
            r#"
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
const UPSERT_MINUTE: &str = upsert!("rollup_minute", "minute");

/// Upsert into `rollup_hour`.
const UPSERT_HOUR: &str = upsert!("rollup_hour", "hour");

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

/// One staged row.
type Row = (RowKey, Counters);

/// The delta's rows in key order, and the same rows grouped by hour (keyed
/// by the hour's first minute), in key order.
fn minute_and_hour_rows(delta: &Delta) -> (Vec<Row>, Vec<Row>) {
    let mut minute: Vec<Row> = delta.rows.iter().map(|(k, c)| (*k, *c)).collect();
    minute.sort_unstable_by_key(|r| r.0);
    let mut hour: Vec<Row> = Vec::with_capacity(minute.len());
    let mut by_hour: FxHashMap<RowKey, usize> = FxHashMap::default();
    for (key, counters) in &minute {
        let key = RowKey { minute: key.minute.div_euclid(60) * 60, ..*key };
        match by_hour.get(&key) {
            Some(&i) => hour[i].1.add(counters),
            None => {
                by_hour.insert(key, hour.len());
                hour.push((key, *counters));
            }
        }
    }
    hour.sort_unstable_by_key(|r| r.0);
    (minute, hour)
}

/// COPYs `rows` into the stage `(create, copy)`.
async fn stage_rows(
    tx: &tokio_postgres::Transaction<'_>,
    (create, copy): (&str, &str),
    rows: &[Row],
) -> Result<(), tokio_postgres::Error> {
    tx.batch_execute(create).await?;
    let sink = tx.copy_in(copy).await?;
    let writer = BinaryCopyInWriter::new(sink, &STAGE_TYPES);
    pin_mut!(writer);
    for (key, c) in rows {
        let row: [&(dyn ToSql + Sync); 10] = [
            &system_time(key.minute * 60_000),
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
    Ok(())
}

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
    let (minute, hour) = minute_and_hour_rows(delta);
    stage_rows(&tx, STAGE_MINUTE, &minute).await?;
    stage_rows(&tx, STAGE_HOUR, &hour).await?;
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
