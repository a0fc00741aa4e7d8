//! Writing one batch exactly once, and consuming a coarse table's log.
//!
//! A batch (or each part of a large one) is written in one transaction:
//!
//! 1. `INSERT`s one ledger row per table `(instance, run_id, batch_id,
//!    table)` with `ON CONFLICT DO NOTHING`. If they exist, an earlier
//!    attempt whose `COMMIT` outcome was lost (connection killed, server
//!    restarted) did land, and nothing is written again.
//! 2. For each table: its rows as one row of its delta log (one compressed
//!    payload) and, for a *direct* table, those of buckets from its
//!    boundary as known ([`KnownBoundaries`]) on as its live rows, in the
//!    same log row (an array per column, [`LiveRows`]), or, where its view
//!    reads them from its live table only (on Citus), a binary `COPY` of
//!    them into it. A batch only appends: it locks no row of the
//!    tables, so batches (of one instance or of a fleet) never wait for one
//!    another or for a fold. (The log is a *coarse* table's only way in.)
//! 3. The batch's raw rows (`events_sample`).
//! 4. Its committed sequence marks and event count ([`marks::record`]).
//!
//! A coarse table's log is consumed at the table's own interval by
//! [`consume`]: one transaction that deletes the log's rows, upserts their
//! sums and appends them, coarsened, to the logs of the tables fed from it.
//! Retrying either transaction is always safe, and each table receives
//! every batch exactly once.

use super::batch::Batch;
use super::marks::{self, Watermark};
use super::payload::{pack, Merged, Streamed, COPY_HEADER, COPY_TRAILER, PG_EPOCH_US};
use crate::db::ranges::{self, Parent};
use crate::db::tables::RollupTable;
use crate::db::DbError;
use bid_logger_core::aggregate::{Dimension, Row};
use bid_logger_core::wire::EventType;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{pin_mut, SinkExt, StreamExt};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{to_sql_checked, IsNull, Kind, ToSql, Type};

/// Identifies a batch across attempts and restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchId {
    /// Random per process start, so batch numbers never collide across runs.
    pub run_id: i64,
    /// Sequential within the run.
    pub batch: i64,
}

/// What this process knows of each table's boundary, by configured table,
/// in minutes since the epoch (`i64::MIN` until known): read once before
/// the first batch and by every consumption, set by every move. A lower
/// bound of the boundary, which only moves forward (another member may
/// have moved it since): a batch leaves out of a direct table's live rows
/// the buckets before it, which the view would not show (they show once
/// folded into the merged table, as late events' rows do).
///
/// Also where each table's view reads live rows: from the log rows (this
/// build's migration, on PostgreSQL), or from the live table only (its
/// migration on Citus, where a view reading the coordinator's log could
/// not run on the workers; or an earlier build's view), read with the
/// boundaries. Until read: from the log rows.
#[derive(Debug)]
pub struct KnownBoundaries {
    since: Vec<AtomicI64>,
    rows_in_live_table: Vec<AtomicBool>,
}

impl KnownBoundaries {
    /// Nothing known of `tables` tables.
    pub fn new(tables: usize) -> KnownBoundaries {
        KnownBoundaries {
            since: (0..tables).map(|_| AtomicI64::new(i64::MIN)).collect(),
            rows_in_live_table: (0..tables).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// Table `t`'s boundary as known (`i64::MIN`: not known).
    pub fn get(&self, t: usize) -> i64 {
        self.since.get(t).map_or(i64::MIN, |b| b.load(Ordering::Relaxed))
    }

    /// Table `t`'s boundary was seen at `minute` (an older sight is kept out).
    pub fn saw(&self, t: usize, minute: i64) {
        if let Some(b) = self.since.get(t) {
            b.fetch_max(minute, Ordering::Relaxed);
        }
    }

    /// Whether table `t`'s view reads live rows from its live table only.
    fn rows_in_live_table(&self, t: usize) -> bool {
        self.rows_in_live_table.get(t).is_some_and(|b| b.load(Ordering::Relaxed))
    }

    /// Reads every table's boundary, and where its view reads live rows.
    pub async fn read(
        &self,
        client: &impl tokio_postgres::GenericClient,
        tables: &[RollupTable],
    ) -> Result<(), tokio_postgres::Error> {
        let read = "SELECT rollup, floor(extract(epoch FROM since) / 60)::bigint FROM bid_logger_boundary";
        for row in client.query(read, &[]).await? {
            if let Some(t) = tables.iter().position(|t| t.name == row.get::<_, &str>(0)) {
                self.saw(t, row.get(1));
            }
        }
        let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
        for row in client.query(ROWS_IN_LIVE_TABLE, &[&names]).await? {
            if let Some(t) = tables.iter().position(|t| t.name == row.get::<_, &str>(0)) {
                self.rows_in_live_table[t].store(row.get(1), Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

/// Per view of `$1`: whether it reads live rows from its live table only
/// (not the log rows' `live_bucket`, …).
const ROWS_IN_LIVE_TABLE: &str =
    "SELECT t, coalesce(position('live_bucket' in pg_get_viewdef(to_regclass(t))) = 0, false)
    FROM unnest($1::text[]) t WHERE to_regclass(t) IS NOT NULL";

/// Where and how batches are written.
#[derive(Debug, Clone, Copy)]
pub struct Writer<'a> {
    /// This instance's name in the ledger.
    pub instance: &'a str,
    /// Whose sequence marks are recorded ([`super::SinkConfig::scope`]).
    pub scope: &'a str,
    /// The rollup tables.
    pub tables: &'a [RollupTable],
    /// The sampling rate recorded with each row, by its event type.
    pub sample_ppm: [u32; EventType::ALL.len()],
    /// The raw sample's rate.
    pub raw_sample_ppm: u32,
    /// The tables' boundaries as known (by `tables`' order).
    pub known: &'a KnownBoundaries,
}

/// What an attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// The rows were written now.
    Now {
        /// Rows written to `events_sample`.
        raw_rows: u64,
        /// Ranges created, per entry of the `ranges` the batch was written with.
        ranges_created: Vec<u64>,
    },
    /// An earlier attempt had already written them (found in the ledger).
    Already,
}

/// One ledger row per table of the batch.
const INSERT_LEDGER: &str = "INSERT INTO bid_logger_flush_ledger (instance, run_id, batch_id, rollup, events, rows)
    SELECT $1, $2, $3, t.name, $4, t.rows FROM unnest($5::text[], $6::bigint[]) AS t(name, rows)
    ON CONFLICT DO NOTHING";

/// The ledger row of one consumption of a log.
const INSERT_CONSUME_LEDGER: &str =
    "INSERT INTO bid_logger_flush_ledger (instance, run_id, batch_id, rollup, events, rows)
    VALUES ($1, $2, $3, $4, $5, $6)";

/// Only one instance consumes a given log at a time; the others skip it.
const TRY_LOCK: &str = "SELECT pg_try_advisory_xact_lock($1)";

/// The advisory-lock key of `table`'s log ("bidlog" and a hash of the name).
pub fn consume_lock(table: &str) -> i64 {
    let hash = bid_logger_core::wire::fnv1a64(table.as_bytes());
    (0x6269_646c_6f67_i64 << 16) ^ (hash & 0xffff_ffff) as i64
}

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

/// `rows` of `table` in PostgreSQL's binary COPY format, written directly
/// (the generic row writer costs several times more per row): the header
/// when `first`, the trailer when `last`, and per row the field count, then
/// each field's length and big-endian value: `bucket` (timestamptz: µs since
/// 2000-01-01), `event_type`, the table's dimensions (text: UTF-8 bytes;
/// ids: int8), `sample_ppm` (int4) when writing to a log, then the four
/// measures (int8).
pub(crate) fn encode_rows(table: &RollupTable, rows: &[Row], log_ppm: Option<&Ppm>, first: bool, last: bool) -> Bytes {
    encode_rows_with(table, rows, log_ppm, None, i64::MIN, first, last)
}

/// [`encode_rows`], with `log_id` (int8) after the measures when given,
/// of the rows of buckets from `from_minute` on.
fn encode_rows_with(
    table: &RollupTable,
    rows: &[Row],
    log_ppm: Option<&Ppm>,
    log_id: Option<i64>,
    from_minute: i64,
    first: bool,
    last: bool,
) -> Bytes {
    let dims: Vec<Dimension> = table.shape.dims.iter().collect();
    let fields = 2 + dims.len() + usize::from(log_ppm.is_some()) + 4 + usize::from(log_id.is_some());
    let mut buf = BytesMut::with_capacity(19 + rows.len() * 120 + 2);
    if first {
        buf.put_slice(COPY_HEADER);
    }
    for (key, c) in rows.iter().filter(|r| r.0.minute >= from_minute) {
        buf.put_i16(fields as i16);
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
        for d in &dims {
            match d {
                Dimension::Country => text(&mut buf, key.country_str()),
                Dimension::Os => text(&mut buf, key.os.as_str()),
                Dimension::Exchange => text(&mut buf, key.exchange.as_str()),
                Dimension::Campaign => int8(&mut buf, key.campaign),
                Dimension::Advertiser => int8(&mut buf, key.advertiser),
                Dimension::Price => int8(&mut buf, i64::from(key.price_bucket)),
                Dimension::BidPrice => int8(&mut buf, i64::from(key.bid_bucket)),
                Dimension::Delay => int8(&mut buf, i64::from(key.delay_bucket)),
            }
        }
        if let Some(ppm) = log_ppm {
            buf.put_i32(4);
            buf.put_i32(ppm[key.event_type.index()]);
        }
        int8(&mut buf, c.events as i64);
        int8(&mut buf, c.attributed as i64);
        int8(&mut buf, c.price);
        int8(&mut buf, c.revenue);
        if let Some(id) = log_id {
            int8(&mut buf, id);
        }
    }
    if last {
        buf.put_slice(COPY_TRAILER);
    }
    buf.freeze()
}

/// Each event type's `sample_ppm`, by [`EventType::index`].
pub(crate) type Ppm = [i32; EventType::ALL.len()];

/// One log row: a batch's rows of a table as one compressed payload.
struct LogRow {
    events: i64,
    rows: i64,
    payload: Vec<u8>,
}

/// What a batch writes to one table: its log row (none when the batch has
/// no rows of it).
struct TablePlan<'a> {
    log: Option<LogRow>,
    /// A direct table's live rows.
    live: Option<Live<'a>>,
}

/// Where a batch's live rows of a table go: where its view reads them.
enum Live<'a> {
    /// Held in its log row.
    InLog(LiveRows),
    /// A row per key in its live table (`rows` of buckets from the minute
    /// on): where the view reads the live table only.
    Rows(&'a [Row], i64),
}

impl<'a> TablePlan<'a> {
    fn new(table: &RollupTable, rows: &'a [Row], ppm: &Ppm, boundary: i64, in_table: bool) -> TablePlan<'a> {
        if rows.is_empty() {
            return TablePlan { log: None, live: None };
        }
        let log = LogRow {
            events: rows.iter().map(|r| r.1.events as i64).sum(),
            rows: rows.len() as i64,
            payload: pack(&encode_rows(table, rows, Some(ppm), true, true)),
        };
        // A direct table's rows are also its live rows: the view shows
        // those from its boundary on at once, and a late event's (before the
        // boundary) once the fold has added it to the merged table (see
        // `RollupTable::view_sql`). Those before the boundary as known are
        // left to the fold (the payload has them): written once, not twice.
        let live = if table.logged {
            None
        } else if in_table {
            rows.iter().any(|r| r.0.minute >= boundary).then_some(Live::Rows(rows, boundary))
        } else {
            LiveRows::of(table, rows, ppm, boundary).map(Live::InLog)
        };
        TablePlan { log: Some(log), live }
    }
}

/// A batch's live rows of a direct table: one PostgreSQL array per column
/// of the view ([`RollupTable::live_array_columns`]), sent in binary and
/// held in the batch's log row, so that they leave with it at the fold. One
/// value per column instead of a row per key: PostgreSQL neither writes,
/// deletes nor vacuums a tuple per key (`BENCHMARKS.md`, "Live rows held in
/// the log").
struct LiveRows(Vec<ColumnArray>);

impl LiveRows {
    /// `rows` of buckets from `from_minute` on, if any.
    fn of(table: &RollupTable, rows: &[Row], ppm: &Ppm, from_minute: i64) -> Option<LiveRows> {
        let dims: Vec<Dimension> = table.shape.dims.iter().collect();
        let mut columns = vec![ColumnArray::new(Type::TIMESTAMPTZ), ColumnArray::new(Type::TEXT)];
        columns.extend(dims.iter().map(|d| ColumnArray::new(if d.is_text() { Type::TEXT } else { Type::INT8 })));
        columns.push(ColumnArray::new(Type::INT4));
        columns.extend((0..4).map(|_| ColumnArray::new(Type::INT8)));
        let mut held = 0;
        for (key, c) in rows.iter().filter(|r| r.0.minute >= from_minute) {
            held += 1;
            let mut col = columns.iter_mut();
            let mut next = || col.next().expect("a column per field");
            next().int8(key.minute * 60_000_000 - PG_EPOCH_US); // timestamptz: µs since 2000
            next().text(key.event_type.as_str());
            for d in &dims {
                match d {
                    Dimension::Country => next().text(key.country_str()),
                    Dimension::Os => next().text(key.os.as_str()),
                    Dimension::Exchange => next().text(key.exchange.as_str()),
                    Dimension::Campaign => next().int8(key.campaign),
                    Dimension::Advertiser => next().int8(key.advertiser),
                    Dimension::Price => next().int8(i64::from(key.price_bucket)),
                    Dimension::BidPrice => next().int8(i64::from(key.bid_bucket)),
                    Dimension::Delay => next().int8(i64::from(key.delay_bucket)),
                }
            }
            next().int4(ppm[key.event_type.index()]);
            for v in [c.events as i64, c.attributed as i64, c.price, c.revenue] {
                next().int8(v);
            }
        }
        (held > 0).then_some(LiveRows(columns))
    }
}

/// One column of live rows as a one-dimensional PostgreSQL array in binary
/// (its elements as a binary `COPY` writes fields: length, then value).
#[derive(Debug)]
struct ColumnArray {
    element: Type,
    len: i32,
    elements: BytesMut,
}

impl ColumnArray {
    fn new(element: Type) -> ColumnArray {
        ColumnArray { element, len: 0, elements: BytesMut::new() }
    }

    fn int8(&mut self, v: i64) {
        self.len += 1;
        self.elements.put_i32(8);
        self.elements.put_i64(v);
    }

    fn int4(&mut self, v: i32) {
        self.len += 1;
        self.elements.put_i32(4);
        self.elements.put_i32(v);
    }

    fn text(&mut self, v: &str) {
        self.len += 1;
        self.elements.put_i32(v.len() as i32);
        self.elements.put_slice(v.as_bytes());
    }
}

impl ToSql for ColumnArray {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        if !matches!(ty.kind(), Kind::Array(member) if *member == self.element) {
            return Err(format!("live rows: a column of {} sent as {ty}", self.element).into());
        }
        // dimensions, no nulls, the element's type, then the one dimension:
        // its length and lower bound
        out.put_i32(1);
        out.put_i32(0);
        out.put_u32(self.element.oid());
        out.put_i32(self.len);
        out.put_i32(1);
        out.put_slice(&self.elements);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(ty.kind(), Kind::Array(_))
    }

    to_sql_checked!();
}

/// The start of `minute` (at most the year 9575).
fn minute_time(minute: i64) -> std::time::SystemTime {
    system_time(minute.min(4_000_000_000).saturating_mul(60_000))
}

/// Writes `batch` (batch `id` of `to.instance`) and `mark` to every table,
/// exactly once, in one transaction; the ranges its rows need that are not
/// known to exist (`ranges`: per range table, the starts) are created in it.
pub async fn write_batch(
    client: &mut tokio_postgres::Client,
    to: &Writer<'_>,
    id: BatchId,
    batch: &Batch,
    mark: &Watermark,
    ranges: &[(Parent<'_>, Vec<i64>)],
) -> Result<Written, tokio_postgres::Error> {
    let Writer { instance, scope, tables, sample_ppm, raw_sample_ppm, known } = *to;
    let tx = client.transaction().await?;
    // The ranges the rows need that are not known to exist, first: the
    // range lock is taken before any other lock of the transaction (see
    // `ranges::ensure_in`), and what it creates is rolled back with the
    // rest if the batch turns out to have landed already.
    let mut ranges_created = Vec::with_capacity(ranges.len());
    for (parent, starts) in ranges {
        ranges_created.push(ranges::ensure_in(&tx, *parent, starts).await?.len() as u64);
    }
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    let counts: Vec<i64> = batch.tables.iter().map(|r| r.len() as i64).collect();
    let ledger: [&(dyn ToSql + Sync); 6] = [&instance, &id.run_id, &id.batch, &(batch.events as i64), &names, &counts];
    // A fleet member's transaction is bounded when idle (see
    // `assignment::idle_timeout`), set with the ledger row in one round trip.
    let inserted = match &mark.fence {
        Some(fence) => {
            futures_util::future::try_join(tx.execute(INSERT_LEDGER, &ledger), tx.batch_execute(&fence.idle_timeout))
                .await?
                .0
        }
        None => tx.execute(INSERT_LEDGER, &ledger).await?,
    };
    if inserted == 0 {
        tx.rollback().await?;
        return Ok(Written::Already);
    }
    let ppm = sample_ppm.map(|p| p as i32);
    let plans: Vec<TablePlan<'_>> = (tables.iter().zip(&batch.tables).enumerate())
        .map(|(i, (t, rows))| TablePlan::new(t, rows, &ppm, known.get(i), known.rows_in_live_table(i)))
        .collect();
    // One round trip: every table's log row, with its live rows (or then
    // a `COPY` of them into its live table, where the view reads them there).
    let txr = &tx;
    let log_ids = futures_util::future::try_join_all(tables.iter().zip(&plans).map(|(table, plan)| async move {
        let Some(log) = &plan.log else { return Ok(None) };
        let feeds = crate::db::tables::feeds_of(tables, &table.name);
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&log.events, &log.rows, &log.payload, &feeds];
        let sql = match &plan.live {
            Some(Live::InLog(live)) => {
                params.extend(live.0.iter().map(|c| c as &(dyn ToSql + Sync)));
                table.log_append_live_sql()
            }
            _ => table.log_append_sql(),
        };
        Ok::<_, tokio_postgres::Error>(Some(txr.query_one(&sql, &params).await?.get::<_, i64>(0)))
    }))
    .await?;
    for ((table, plan), log_id) in tables.iter().zip(&plans).zip(log_ids) {
        if let (Some(Live::Rows(rows, from_minute)), Some(log_id)) = (&plan.live, log_id) {
            let sink = tx.copy_in::<_, Bytes>(&table.live_copy_sql()).await?;
            pin_mut!(sink);
            sink.send(encode_rows_with(table, rows, Some(&ppm), Some(log_id), *from_minute, true, true)).await?;
            sink.finish().await?;
        }
    }
    let raw_rows = copy_raw(&tx, batch, raw_sample_ppm).await?;
    // Last, so the rows it locks (shared by the parts) are held only until the commit.
    marks::record(&tx, scope, instance, id.run_id, mark, batch.events).await?;
    // A fleet member's leases, checked right before the commit (see `marks::check`).
    if let Some(fence) = &mark.fence {
        marks::check(&tx, instance, fence).await?;
    }
    tx.commit().await?;
    Ok(Written::Now { raw_rows, ranges_created })
}

/// What one consumption of a log did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Consumed {
    /// Rows inserted or updated in the table.
    pub rows: u64,
    /// Events taken from the log.
    pub events: u64,
    /// Of those, events not written because their bucket is past the retention.
    pub expired: u64,
    /// Another instance was consuming this log: nothing done.
    pub busy: bool,
    /// The log held more rows than one transaction takes.
    pub more: bool,
    /// The tables whose logs it passed sums on to (bit `i`: the `i`th of
    /// the configured tables).
    pub fed: u64,
    /// What became of the table's boundary.
    pub moved: Moved,
    /// After a move that ran out of time: when the next may be tried.
    pub move_retry: Option<std::time::Duration>,
    /// The table's boundary as it read it, or set it (in minutes since the
    /// epoch; `None` when busy).
    pub boundary: Option<i64>,
}

/// What a consumption did with its table's boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Moved {
    /// Not due, not allowed, or the log was not taken whole: left as it was.
    #[default]
    No,
    /// Moved forward.
    Yes,
    /// The move ran out of time (a lock it waited for past [`MOVE_TIMEOUT`],
    /// or its own work past [`MoveBudget::statements`]) and was undone; the
    /// fold before it was kept.
    OutOfTime,
}

/// Log rows (batches) consumed in one transaction at most (one after a
/// timeout, doubling back after each success): a minute of batches at the
/// default `flush-interval`. Their rows are added up per key in the logger,
/// which is what makes a coarse table cheaper than upserting every batch;
/// the bound keeps the payloads one transaction holds in memory (a few MB
/// per batch at 200 000 events/s) and its time bounded after a backlog.
pub const MAX_CONSUME_ROWS: i64 = 64;

/// Moves at most `limit` rows of `table`'s log into the table, and their
/// sums into the logs of the tables it `feeds`, in one transaction
/// (recorded in the ledger as batch `seq` of the run); moves the table's
/// boundary when it is due and `may_move`, in the same transaction.
///
/// The boundary moves only in a consumption, and this one holds the log's
/// lock: it is read as it is, and no batch reads it (a batch appends every
/// row to the log, with those from the boundary as its process last knew
/// it as its live rows). When it is due to move (and the log
/// was taken whole), the same transaction moves the recent rows before the
/// new boundary into the merged table and sets it ([`move_boundary`]).
#[allow(clippy::too_many_arguments)]
pub async fn consume(
    client: &mut tokio_postgres::Client,
    instance: &str,
    (run_id, seq): (i64, i64),
    table: &RollupTable,
    tables: &[RollupTable],
    limit: i64,
    now_ms: i64,
    move_within: Option<MoveBudget>,
) -> Result<Consumed, DbError> {
    let tx = client.transaction().await?;
    let locked: bool = tx.query_one(TRY_LOCK, &[&consume_lock(&table.name)]).await?.get(0);
    if !locked {
        tx.rollback().await?;
        return Ok(Consumed { busy: true, ..Consumed::default() });
    }
    // The boundary moves by the database's clock, one for every member.
    let read = tx.query_opt(READ_BOUNDARY, &[&table.name]).await?;
    let minutes = |r: &tokio_postgres::Row, i: usize| (r.get::<_, f64>(i) / 60.0).floor() as i64;
    let Some((since, db_minute, backed_off)) = read.map(|r| (minutes(&r, 0), minutes(&r, 1), r.get::<_, bool>(2)))
    else {
        return Err(DbError::Log(format!(
            "{}: no row in bid_logger_boundary (`bid-logger migrate` creates it)",
            table.name
        )));
    };
    let mut done = fold(&tx, table, tables, limit, now_ms, since).await?;
    let moves = move_within.is_some() && !backed_off && table.next_boundary(db_minute) > since && !done.more;
    if done.taken == 0 && !moves {
        tx.rollback().await?;
        return Ok(Consumed { boundary: Some(since), ..Consumed::default() });
    }
    let (mut moved, mut move_retry, mut boundary) = (Moved::No, None, since);
    if let Some(within) = move_within.filter(|_| moves) {
        // A savepoint: a move that runs out of time (a lock on the recent
        // or merged table) is undone, and the fold before it still commits.
        tx.batch_execute("SAVEPOINT bid_logger_move").await?;
        match move_boundary(&tx, table, now_ms, (since, db_minute), within).await {
            Ok((rows, at)) => {
                done.rows += rows;
                (moved, boundary) = (Moved::Yes, at);
            }
            Err(e) if e.is_timeout_or_deadlock() => moved = Moved::OutOfTime,
            Err(e) => return Err(e),
        }
        if moved == Moved::OutOfTime {
            tx.batch_execute("ROLLBACK TO SAVEPOINT bid_logger_move").await?;
            // Whichever member tries next waits (doubling): each attempt
            // holds the folds of the table back while it waits for the lock.
            let wait: f64 = tx.query_one(BACK_OFF_MOVE, &[&table.name]).await?.get(0);
            move_retry = Some(std::time::Duration::from_secs_f64(wait.max(0.0)));
        }
    }
    if done.taken > 0 {
        let ledger: [&(dyn ToSql + Sync); 6] =
            [&instance, &run_id, &seq, &table.name, &(done.events as i64), &(done.rows as i64)];
        tx.execute(INSERT_CONSUME_LEDGER, &ledger).await?;
    }
    tx.commit().await?;
    Ok(Consumed {
        rows: done.rows,
        events: done.events,
        expired: done.expired,
        busy: false,
        more: done.more,
        fed: done.fed,
        moved,
        move_retry,
        boundary: Some(boundary),
    })
}

/// Moves `table`'s boundary from `since` towards its next place at
/// `db_minute` (minutes; [`RollupTable::move_to`]: at most a few buckets
/// past its oldest recent row), in the consumption's transaction, right
/// after a fold that took the whole log: the recent rows before it into the
/// merged table, and the boundary set; returns the keys moved and the
/// boundary (minutes). It waits at most `within.lock` for a lock on the recent or merged
/// table (an analyst's `LOCK`, range maintenance), never for a batch, and
/// each statement runs at most `within.statements` (the plain move's two,
/// and the upsert after a conflict, share it).
///
/// A batch committed after that fold's read of the log is folded by the
/// next fold: until then its live rows of buckets before the new boundary, if any,
/// are not shown (the view shows live rows from the boundary on), and
/// never twice.
async fn move_boundary(
    tx: &tokio_postgres::Transaction<'_>,
    table: &RollupTable,
    now_ms: i64,
    (since, db_minute): (i64, i64),
    within: MoveBudget,
) -> Result<(u64, i64), DbError> {
    let (lock, run) = (within.lock.as_millis().max(1), within.statements.as_millis().max(1));
    tx.batch_execute(&format!("SET LOCAL lock_timeout = '{lock}ms'; SET LOCAL statement_timeout = '{run}ms'")).await?;
    // Only a boundary more than a move's reach behind needs its oldest
    // recent row (a scan of the unindexed table): any recent row is from
    // `since` on, so nearer than that the move goes all the way anyway.
    let behind = table.move_to(db_minute, since, Some(since)) < table.next_boundary(db_minute);
    let oldest = match behind {
        true => tx.query_one(&table.oldest_recent_sql(), &[]).await?.get(0),
        false => Some(since),
    };
    let at_minute = table.move_to(db_minute, since, oldest);
    let at = minute_time(at_minute);
    // Rows past the retention are dropped here, as its ranges are (their
    // range may be gone: a boundary left behind by a long stop).
    let cut_minute = table.retention.map(|_| table.oldest_minute(now_ms));
    let cut = cut_minute.map(minute_time);
    // Normally the merged table holds no row of the buckets moved (see
    // `RollupTable::move_sql`): the logger adds the rows up and inserts
    // their sums without a conflict check ([`move_rows`]). Where it
    // does (written by hand or by a tool: the probe), or should a key
    // conflict anyway, the move is an upsert in one statement, adding to
    // those rows. The plain move and that upsert share one statement's
    // budget: a conflict met late leaves the upsert the rest, and one that
    // runs out is the caller's timeout (undone, the fold kept), never a
    // consumption cut by the client's.
    let held: bool = tx.query_one(&table.merged_holds_sql(), &[&minute_time(since), &at]).await?.get(0);
    let upsert =
        || async { Ok::<i64, tokio_postgres::Error>(tx.query_one(&table.move_sql(true), &[&at, &cut]).await?.get(0)) };
    let moved = if held {
        tracing::info!(table = %table.name, "the merged table holds rows of the buckets moved: the move adds to them");
        upsert().await?
    } else {
        let started = std::time::Instant::now();
        tx.batch_execute("SAVEPOINT bid_logger_append").await?;
        let plain = match move_rows(tx, table, at_minute, cut_minute, (started, within.statements)).await {
            // A server that cannot stream a `DELETE`'s rows (a `COPY` of a
            // data-modifying query: some distributed planners) gets the
            // move as one statement that adds up in SQL.
            Err(DbError::Db(e)) if e.code() == Some(&tokio_postgres::error::SqlState::FEATURE_NOT_SUPPORTED) => {
                tracing::warn!(table = %table.name, error = %crate::db::cause_of(&e),
                    "the server cannot stream the moved rows: the move adds them up in SQL");
                // (what is left of the budget: the rollback undoes a
                // `SET LOCAL` after the savepoint)
                let left = within.statements.saturating_sub(started.elapsed()).as_millis().max(1);
                tx.batch_execute(&format!(
                    "ROLLBACK TO SAVEPOINT bid_logger_append; SET LOCAL statement_timeout = '{left}ms'"
                ))
                .await?;
                tx.query_one(&table.move_sql(false), &[&at, &cut])
                    .await
                    .map(|r| r.get::<_, i64>(0))
                    .map_err(DbError::Db)
            }
            other => other,
        };
        match plain {
            Ok(rows) => {
                // The statements after it (the boundary, the ledger) get the
                // move's budget back.
                tx.batch_execute(&format!(
                    "RELEASE SAVEPOINT bid_logger_append; SET LOCAL statement_timeout = '{run}ms'"
                ))
                .await?;
                rows
            }
            Err(DbError::Db(e)) if crate::db::error::is_key_conflict(&e) => {
                tracing::info!(table = %table.name, error = %crate::db::cause_of(&e),
                    "a key of the move is in the merged table already: the insert undone");
                let left = within.statements.saturating_sub(started.elapsed()).as_millis().max(1);
                tx.batch_execute(&format!(
                    "ROLLBACK TO SAVEPOINT bid_logger_append; SET LOCAL statement_timeout = '{left}ms'"
                ))
                .await?;
                let moved = upsert().await?;
                // The statements after it (the boundary, the ledger) get the
                // move's budget back.
                tx.batch_execute(&format!("SET LOCAL statement_timeout = '{run}ms'")).await?;
                moved
            }
            Err(e) => return Err(e),
        }
    };
    tx.execute(SET_BOUNDARY, &[&table.name, &at]).await?;
    Ok((moved as u64, at_minute))
}

/// The plain move: `table`'s recent rows before `at_minute` deleted and
/// streamed to the logger (one `COPY` of the `DELETE`'s rows), added up per
/// key here, and their sums inserted into the merged table in key order,
/// without a conflict check; those before `cut_minute` (past the retention)
/// left out (through the log's stage). Returns the keys moved. PostgreSQL
/// neither keeps nor groups the deleted rows (a minute of folds' rows:
/// `BENCHMARKS.md`, "Moves added up by the logger"). Its statements share
/// one statement's `budget`, counted from `started` (the caller sets it
/// back after).
async fn move_rows(
    tx: &tokio_postgres::Transaction<'_>,
    table: &RollupTable,
    at_minute: i64,
    cut_minute: Option<i64>,
    (started, budget): (std::time::Instant, std::time::Duration),
) -> Result<i64, DbError> {
    let out = tx.copy_out(&table.move_out_sql(at_minute)).await?;
    pin_mut!(out);
    let (mut sums, mut stream) = (Merged::new(table.shape), Streamed::default());
    let malformed = |e: super::payload::Malformed| DbError::Log(format!("{}, moved rows: {e}", table.recent_table()));
    while let Some(chunk) = out.next().await {
        sums.add_chunk(&mut stream, &chunk?).map_err(malformed)?;
    }
    stream.finish().map_err(malformed)?;
    let sorted = sums.encode(cut_minute.map(|m| m.saturating_mul(60_000_000) - PG_EPOCH_US));
    if sorted.rows > 0 {
        // Through the log's stage (a temporary table, which nobody else
        // locks): a `COPY` into the merged table that fails before it
        // starts (its lock wait run out) leaves the client's connection out
        // of step with the server (an extra `Sync`: rust-postgres #789), a
        // plain statement does not.
        let left = budget.saturating_sub(started.elapsed()).as_millis().max(1);
        tx.batch_execute(&format!("{}; SET LOCAL statement_timeout = '{left}ms'", table.stage_sql(true))).await?;
        let sink = tx.copy_in::<_, Bytes>(&table.copy_sql(true)).await?;
        pin_mut!(sink);
        sink.send(sorted.payload).await?;
        sink.finish().await?;
        tx.execute(&table.stage_insert_sql(), &[]).await?;
        tx.batch_execute(&format!("TRUNCATE {}", table.log_stage_table())).await?;
    }
    Ok(sorted.rows)
}

/// What one fold of log rows did.
#[derive(Debug, Clone, Copy, Default)]
struct Folded {
    taken: usize,
    rows: u64,
    events: u64,
    expired: u64,
    more: bool,
    fed: u64,
}

/// Takes at most `limit` rows of `table`'s log and adds their sums up: the
/// buckets before `since` (minutes) into the merged table, the others into
/// the recent table; their sums, coarsened, to the logs of the tables each
/// row names ([`feeds`]); deletes their live rows.
async fn fold(
    tx: &tokio_postgres::Transaction<'_>,
    table: &RollupTable,
    tables: &[RollupTable],
    limit: i64,
    now_ms: i64,
    since: i64,
) -> Result<Folded, DbError> {
    let taken = tx.query(&table.log_take_sql(), &[&limit]).await?;
    let more = taken.len() as i64 >= limit;
    if taken.is_empty() {
        return Ok(Folded::default());
    }
    let mut merged = Merged::new(table.shape);
    for row in &taken {
        // The payloads are ours; a malformed one or a mismatch means one was
        // cut: never commit that (the log keeps its rows, and the error says
        // so, every retry).
        merged.add(row.get(1)).map_err(|e| DbError::Log(format!("{}: {e}", table.log_table())))?;
    }
    let logged: i64 = taken.iter().map(|r| r.get::<_, i64>(0)).sum();
    if logged != merged.events {
        return Err(DbError::Log(format!(
            "{}: the log's rows hold {logged} events, their payloads {}",
            table.log_table(),
            merged.events
        )));
    }
    let oldest_us = table.retention.map(|_| table.oldest_minute(now_ms).saturating_mul(60_000_000) - PG_EPOCH_US);
    let since_us = since.saturating_mul(60_000_000).saturating_sub(PG_EPOCH_US);
    let [old, new] = merged.encode_split(oldest_us, since_us);
    // Buckets before the boundary are upserted into the merged table (a
    // coarse table's sums, a direct table's late events'), through the
    // stage; the others are appended to the recent table by a `COPY` of
    // their own (no conflict check, no stage: `BENCHMARKS.md`, "Folds
    // append by `COPY`"). Only what has rows runs: a statement into the
    // merged table waits for any lock on it, even to write nothing.
    if old.rows > 0 {
        tx.batch_execute(&table.stage_sql(true)).await?;
        let sink = tx.copy_in::<_, Bytes>(&table.copy_sql(true)).await?;
        pin_mut!(sink);
        sink.send(old.payload).await?;
        sink.finish().await?;
        tx.execute(&table.log_upsert_sql(), &[]).await?;
        tx.batch_execute(&format!("TRUNCATE {}", table.log_stage_table())).await?;
    }
    if new.rows > 0 {
        let sink = tx.copy_in::<_, Bytes>(&table.recent_copy_sql()).await?;
        pin_mut!(sink);
        sink.send(new.payload).await?;
        sink.finish().await?;
    }
    let rows = (old.rows + new.rows) as u64;
    // Each row's sums go on along the links it carries, whatever the
    // configuration is now: normally one list for every row (then the sums
    // just added up serve), several only across a change of who feeds whom.
    let mut lists: Vec<Option<&str>> = taken.iter().map(|r| r.get::<_, Option<&str>>(3)).collect();
    lists.sort_unstable();
    lists.dedup();
    let mut fed = 0u64;
    for list in &lists {
        let before;
        let links = crate::db::tables::links(match list {
            Some(list) => list,
            None => {
                before = crate::db::tables::feeds_before(tables, &table.name);
                &before
            }
        });
        let to = feeds(tables, table, &links);
        if to.is_empty() {
            continue;
        }
        let part;
        let sums = if lists.len() == 1 {
            &merged
        } else {
            let mut m = Merged::new(table.shape);
            for row in taken.iter().filter(|r| r.get::<_, Option<&str>>(3) == *list) {
                m.add(row.get(1)).map_err(|e| DbError::Log(format!("{}: {e}", table.log_table())))?;
            }
            part = m;
            &part
        };
        for to in to {
            let coarse = sums.project(table.shape, to.shape).encode(None);
            let next = crate::db::tables::below(&links, &to.name);
            tx.query_one(&to.log_append_sql(), &[&coarse.events, &coarse.rows, &pack(&coarse.payload), &next]).await?;
            fed |= crate::db::tables::bit_of(tables, &to.name);
        }
    }
    // Its live rows leave with their log rows, taken above: the view reads
    // the folded rows from the recent or merged table from this commit on.
    // So do those written to the live table, a row per key (by an earlier
    // build, a fleet member not upgraded yet, or where the view reads them
    // there, on Citus), whatever the table is now: it may have been
    // direct, with live rows, in an earlier run.
    let ids: Vec<i64> = taken.iter().map(|r| r.get(2)).collect();
    tx.execute(&table.live_delete_sql(), &[&ids]).await?;
    Ok(Folded { taken: taken.len(), rows, events: merged.events as u64, expired: old.expired as u64, more, fed })
}

/// The tables a log row of `table` goes on to: the children of `table`
/// among its `links` (a row of a build before them: where that build sent
/// it, [`feeds_before`](crate::db::tables::feeds_before)), among the
/// configured tables that `table` can compute (one no longer configured,
/// or no longer computable from it, is left out, with a warning: nothing
/// else would write it).
fn feeds<'a>(tables: &'a [RollupTable], table: &RollupTable, links: &[(&str, &str)]) -> Vec<&'a RollupTable> {
    links
        .iter()
        .filter(|(parent, _)| *parent == table.name)
        .filter_map(|&(_, name)| {
            let fed = tables.iter().find(|t| t.name == name && crate::db::tables::computes(table, t));
            if fed.is_none() {
                tracing::warn!(table = %table.name, fed = name,
                    "a delta-log row names a table this configuration does not have or cannot compute from it: \
                     its events are not passed on to it");
            }
            fed
        })
        .collect()
}

/// How long a boundary move may wait for a lock on the tables
/// (`lock_timeout`; the consumer uses at most a sixth of `flush-timeout`).
/// A move that runs out is undone, the fold before it kept, and the next
/// waits (`bid_logger_boundary.move_after`, doubling from a minute to 16,
/// for every member).
pub const MOVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A boundary move's time budget: how long it may wait for a lock, and how
/// long each of its statements may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoveBudget {
    /// Its wait for a lock on the recent or merged table (`lock_timeout`).
    pub lock: std::time::Duration,
    /// Each of its statements' run (`statement_timeout`).
    pub statements: std::time::Duration,
}

impl MoveBudget {
    /// The budget within a consumption bounded by `flush_timeout`: a lock
    /// wait of [`MOVE_TIMEOUT`] at most (a sixth of it, if less), and half
    /// of it for each statement. The work is not cut at the lock's budget:
    /// a move normally adds up a minute of the folds' rows (1.8 s at 200 000
    /// events/s on a slow 2-core machine, in SQL; about 1 s added up by the
    /// logger, `BENCHMARKS.md`, "Moves added up by the logger"); after a stall, at most
    /// [`MOVE_MOST_BUCKETS`](crate::db::tables::MOVE_MOST_BUCKETS) buckets
    /// beyond a consumption interval's. (A fold taking more than the other half, then a move
    /// its whole budget, would meet the client's timeout: the consumption
    /// is undone whole and retried with one log row.)
    pub fn within(flush_timeout: std::time::Duration) -> MoveBudget {
        let lock = MOVE_TIMEOUT.min(flush_timeout / 6);
        MoveBudget { lock, statements: (flush_timeout / 2).max(lock) }
    }
}

/// A table's boundary and the database's clock, in seconds since the
/// epoch, and whether a move must wait (one ran out of time lately).
const READ_BOUNDARY: &str = "SELECT extract(epoch FROM since)::float8, extract(epoch FROM now())::float8,
    coalesce(move_after > now(), false) FROM bid_logger_boundary WHERE rollup = $1";

/// After a move that ran out of time: the next waits, twice as long as the
/// last up to 16 minutes; returns the wait in seconds.
const BACK_OFF_MOVE: &str = "UPDATE bid_logger_boundary
    SET move_after = now() + move_backoff, move_backoff = least(move_backoff * 2, interval '16 minutes')
    WHERE rollup = $1 RETURNING extract(epoch FROM move_after - now())::float8";

/// Moves a table's boundary forward (never back).
const SET_BOUNDARY: &str = "UPDATE bid_logger_boundary SET since = $2, move_after = NULL,
    move_backoff = interval '1 minute' WHERE rollup = $1 AND since < $2";

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
