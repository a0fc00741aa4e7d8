//! Writing one batch, exactly once, minute table first.
//!
//! A batch is written in two transactions, one per rollup table, so that
//! `rollup_minute` (what live dashboards read) is visible as soon as its own
//! rows are in, without waiting for `rollup_hour`'s. Each transaction:
//!
//! 1. `INSERT`s its ledger row `(instance, run_id, batch_id, rollup)` with
//!    `ON CONFLICT DO NOTHING`. If the row exists, an earlier attempt whose
//!    `COMMIT` outcome was lost (connection killed, server restarted) did land,
//!    and that table's rows are not written again.
//! 2. Binary `COPY`s its rows (the minute rows, or the same rows grouped by
//!    hour) into a temporary staging table. The grouping and ordering are done
//!    when the [`Batch`] is formed, not in SQL: each staged key is unique, and
//!    rows are staged in key order.
//! 3. Upserts them additively into its table, a plain
//!    `INSERT … SELECT … ON CONFLICT DO UPDATE` of the stage. A freshly filled
//!    temporary table is read back in the order it was written, so every
//!    instance locks rows in key order and two instances do not deadlock on
//!    overlapping keys (were that order ever broken, PostgreSQL would detect
//!    the deadlock and the batch would be retried: a deadlock is a transient
//!    error).
//!
//! The minute transaction also carries the batch's raw rows (`events_sample`).
//! Retrying either transaction with the same id is therefore always safe, and
//! each table receives every batch exactly once.

use super::batch::Batch;
use bid_logger_core::aggregate::Row;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{pin_mut, SinkExt};
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

/// The rollup table a transaction writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rollup {
    /// `rollup_minute`, plus the batch's raw rows; written first.
    Minute,
    /// `rollup_hour`; written once the minute rows have landed.
    Hour,
}

impl Rollup {
    /// The value of the ledger's `rollup` column.
    pub fn ledger_name(self) -> &'static str {
        match self {
            Rollup::Minute => "minute",
            Rollup::Hour => "hour",
        }
    }
}

/// What an attempt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The table's rows were written now.
    Now {
        /// Rows inserted or updated in the rollup table.
        rows: u64,
        /// Rows written to `events_sample`.
        raw_rows: u64,
    },
    /// An earlier attempt had already written them (found in the ledger).
    Already,
}

const INSERT_LEDGER: &str = "INSERT INTO bid_logger_flush_ledger (instance, run_id, batch_id, rollup, events, rows)
    VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING";

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

/// COPYs `rows` into the stage `(create, copy)`.
async fn stage_rows(
    tx: &tokio_postgres::Transaction<'_>,
    (create, copy): (&str, &str),
    rows: &[Row],
) -> Result<(), tokio_postgres::Error> {
    tx.batch_execute(create).await?;
    let sink = tx.copy_in::<_, Bytes>(copy).await?;
    pin_mut!(sink);
    let chunks = rows.len().div_ceil(COPY_CHUNK_ROWS).max(1);
    for i in 0..chunks {
        let chunk = &rows[(i * COPY_CHUNK_ROWS).min(rows.len())..((i + 1) * COPY_CHUNK_ROWS).min(rows.len())];
        sink.send(encode_stage_rows(chunk, i == 0, i + 1 == chunks)).await?;
    }
    sink.finish().await?;
    Ok(())
}

/// Rows per message sent to the COPY (about 100 bytes each).
const COPY_CHUNK_ROWS: usize = 10_000;

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_US: i64 = 946_684_800_000_000;

/// `rows` in PostgreSQL's binary COPY format, written directly (the
/// generic row writer costs several times more per row): the header when
/// `first`, the trailer when `last`, and per row the field count, then each
/// field's length and big-endian value: `bucket` (timestamptz: µs since
/// 2000-01-01), `event_type`, `country`, `os` (text: UTF-8 bytes), then the
/// two ids and four measures (int8).
fn encode_stage_rows(rows: &[Row], first: bool, last: bool) -> Bytes {
    let mut buf = BytesMut::with_capacity(19 + rows.len() * 120 + 2);
    if first {
        buf.put_slice(b"PGCOPY\n\xff\r\n\0");
        buf.put_i32(0); // flags
        buf.put_i32(0); // header extension length
    }
    for (key, c) in rows {
        buf.put_i16(10);
        let int8 = |buf: &mut BytesMut, v: i64| {
            buf.put_i32(8);
            buf.put_i64(v);
        };
        let text = |buf: &mut BytesMut, v: &str| {
            buf.put_i32(v.len() as i32);
            buf.put_slice(v.as_bytes());
        };
        int8(&mut buf, key.minute * 60_000_000 - PG_EPOCH_US); // timestamptz: µs since 2000
        text(&mut buf, key.event_type.as_str());
        text(&mut buf, key.country_str());
        text(&mut buf, key.os.as_str());
        int8(&mut buf, key.campaign);
        int8(&mut buf, key.advertiser);
        int8(&mut buf, c.events as i64);
        int8(&mut buf, c.attributed as i64);
        int8(&mut buf, c.price);
        int8(&mut buf, c.revenue);
    }
    if last {
        buf.put_i16(-1);
    }
    buf.freeze()
}

/// Writes `rollup`'s rows of `batch` (batch `id` of `instance`), exactly once.
pub async fn write_rollup(
    client: &mut tokio_postgres::Client,
    instance: &str,
    id: BatchId,
    batch: &Batch,
    rollup: Rollup,
    sample_ppm: u32,
    raw_sample_ppm: u32,
) -> Result<Written, tokio_postgres::Error> {
    let (rows, stage, upsert) = match rollup {
        Rollup::Minute => (&batch.minute, STAGE_MINUTE, UPSERT_MINUTE),
        Rollup::Hour => (&batch.hour, STAGE_HOUR, UPSERT_HOUR),
    };
    let tx = client.transaction().await?;
    let ledger: [&(dyn ToSql + Sync); 6] =
        [&instance, &id.run_id, &id.batch, &rollup.ledger_name(), &(batch.events as i64), &(rows.len() as i64)];
    if tx.execute(INSERT_LEDGER, &ledger).await? == 0 {
        tx.rollback().await?;
        return Ok(Written::Already);
    }
    stage_rows(&tx, stage, rows).await?;
    let upserted = tx.execute(upsert, &[&(sample_ppm as i32)]).await?;
    let raw_rows = match rollup {
        Rollup::Minute => copy_raw(&tx, batch, raw_sample_ppm).await?,
        Rollup::Hour => 0,
    };
    tx.commit().await?;
    Ok(Written::Now { rows: upserted, raw_rows })
}

/// Writes all of `batch`: its minute rows, then its hour rows.
pub async fn write_batch(
    client: &mut tokio_postgres::Client,
    instance: &str,
    id: BatchId,
    batch: &Batch,
    sample_ppm: u32,
    raw_sample_ppm: u32,
) -> Result<(), tokio_postgres::Error> {
    for rollup in [Rollup::Minute, Rollup::Hour] {
        write_rollup(client, instance, id, batch, rollup, sample_ppm, raw_sample_ppm).await?;
    }
    Ok(())
}

/// COPYs `batch`'s raw rows into `events_sample`; returns how many.
async fn copy_raw(
    tx: &tokio_postgres::Transaction<'_>,
    batch: &Batch,
    raw_sample_ppm: u32,
) -> Result<u64, tokio_postgres::Error> {
    if batch.raw.is_empty() {
        return Ok(0);
    }
    let sink = tx.copy_in(COPY_RAW).await?;
    let writer = BinaryCopyInWriter::new(sink, &RAW_TYPES);
    pin_mut!(writer);
    let raw_ppm = raw_sample_ppm as i32;
    for r in &batch.raw {
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
    Ok(batch.raw.len() as u64)
}
