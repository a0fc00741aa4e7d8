//! Time-range partitions (in PostgreSQL's sense) of the warehouse tables:
//! `events_sample` by UTC day of `ts`, each rollup table by `bucket` in
//! ranges sized to its grain (minute tables by hour, hour tables by month,
//! day tables by year), named `<table>_pYYYYMMDDHH`, `_pYYYYMM`, `_pYYYY`
//! (`events_sample`: by day, `_pYYYYMMDD`; the minute tables' ranges were
//! days before hours, and such ranges are kept until their retention).
//!
//! Ranges are created ahead of time and on demand (late events), and
//! dropped once wholly past the table's retention. Creation and dropping
//! are serialised across instances by one advisory lock, so several loggers
//! can maintain the same tables. What exists is read from the catalog
//! (bounds included), so a range attached by hand or by the upgrade
//! migration (`<table>_before`, from `MINVALUE`) is respected and dropped
//! by the same rule. (In the rest of the code a "partition" is a topic
//! partition; here the word appears only in SQL.)

use super::tables::RollupTable;
use bid_logger_core::aggregate::Grain;

/// Advisory-lock key for range maintenance ("bidpart").
const RANGE_LOCK: i64 = 0x62_6964_7061_7274;

const LOCK: &str = "SELECT pg_advisory_xact_lock($1)";

/// The ranges of table `$1`: name, lower and upper bound in seconds since
/// the epoch (lower `NULL` for `MINVALUE`), read from the bound expression
/// in the session's own time zone and cast back, so the text format does
/// not matter.
const LIST: &str = "SELECT name,
       extract(epoch FROM (regexp_match(b, 'FROM \\(''([^'']+)''\\)'))[1]::timestamptz)::bigint,
       extract(epoch FROM (regexp_match(b, 'TO \\(''([^'']+)''\\)'))[1]::timestamptz)::bigint
FROM (SELECT c.relname::text AS name, pg_get_expr(c.relpartbound, c.oid) AS b
      FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
      WHERE i.inhparent = to_regclass($1)) r";

/// How much time one range covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    /// A UTC hour.
    Hour,
    /// A UTC day.
    Day,
    /// A calendar month.
    Month,
    /// A calendar year.
    Year,
}

impl Span {
    /// The span of a rollup table of `grain`: about 60 buckets of a
    /// minute table, 720 of an hour table, 365 of a day table. An hour of
    /// `rollup_minute` at the simulator's cardinality is about 3 GB, so the
    /// range being written stays small enough for `shared_buffers` and
    /// autovacuum, and a dashboard over the last hours reads those hours
    /// only.
    pub fn of(grain: Grain) -> Span {
        match grain {
            Grain::Minute => Span::Hour,
            Grain::Hour => Span::Month,
            Grain::Day => Span::Year,
        }
    }

    /// The start (seconds since the epoch) of the range holding `t_s`.
    pub fn start(self, t_s: i64) -> i64 {
        let day = t_s.div_euclid(86_400);
        let (y, _, d) = civil(day);
        match self {
            Span::Hour => t_s - t_s.rem_euclid(3600),
            Span::Day => day * 86_400,
            Span::Month => (day - i64::from(d) + 1) * 86_400,
            Span::Year => days_from_civil(y, 1, 1) * 86_400,
        }
    }

    /// The end (exclusive) of the range starting at `start_s`.
    pub fn end(self, start_s: i64) -> i64 {
        let (y, m, _) = civil(start_s.div_euclid(86_400));
        match self {
            Span::Hour => start_s + 3600,
            Span::Day => start_s + 86_400,
            Span::Month if m == 12 => days_from_civil(y + 1, 1, 1) * 86_400,
            Span::Month => days_from_civil(y, m + 1, 1) * 86_400,
            Span::Year => days_from_civil(y + 1, 1, 1) * 86_400,
        }
    }

    /// The starts of the ranges that hold some of `[from_s, to_s]`.
    pub fn starts(self, from_s: i64, to_s: i64) -> impl Iterator<Item = i64> {
        std::iter::successors(Some(self.start(from_s)), move |&s| Some(self.end(s))).take_while(move |&s| s <= to_s)
    }

    /// `<table>_pYYYYMMDDHH` / `_pYYYYMMDD` / `_pYYYYMM` / `_pYYYY`.
    pub fn name(self, table: &str, start_s: i64) -> String {
        let (y, m, d) = civil(start_s.div_euclid(86_400));
        match self {
            Span::Hour => format!("{table}_p{y:04}{m:02}{d:02}{:02}", start_s.rem_euclid(86_400) / 3600),
            Span::Day => format!("{table}_p{y:04}{m:02}{d:02}"),
            Span::Month => format!("{table}_p{y:04}{m:02}"),
            Span::Year => format!("{table}_p{y:04}"),
        }
    }
}

/// Days since the Unix epoch of a millisecond timestamp.
pub fn day_of(ts_ms: i64) -> i64 {
    ts_ms.div_euclid(86_400_000)
}

/// The civil (proleptic Gregorian) date of a day number (Howard Hinnant's
/// `civil_from_days`).
pub fn civil(day: i64) -> (i64, u32, u32) {
    let z = day + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The day number of a civil date (Howard Hinnant's `days_from_civil`).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// One range partition as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// Its table.
    pub name: String,
    /// Lower bound, seconds since the epoch (`None` = `MINVALUE`).
    pub from: Option<i64>,
    /// Upper bound (exclusive), seconds since the epoch.
    pub to: Option<i64>,
}

/// The ranges of `table`.
pub async fn list(
    client: &impl tokio_postgres::GenericClient,
    table: &str,
) -> Result<Vec<Range>, tokio_postgres::Error> {
    Ok(client
        .query(LIST, &[&table])
        .await?
        .iter()
        .map(|r| Range { name: r.get(0), from: r.get(1), to: r.get(2) })
        .collect())
}

/// Whether a range of `existing` overlaps `[lo, hi)` (a range of another
/// span, made by an earlier release or by hand, counts: it is respected).
pub fn covered(existing: &[Range], lo: i64, hi: i64) -> bool {
    existing.iter().any(|r| r.from.is_none_or(|from| from < hi) && r.to.is_none_or(|to| to > lo))
}

/// A range table to maintain: the parent, its span and storage options.
#[derive(Debug, Clone, Copy)]
pub struct Parent<'a> {
    /// The partitioned table.
    pub table: &'a str,
    /// The span of one range.
    pub span: Span,
    /// A rollup table: new ranges get `fillfactor = 50`, so that the
    /// additive updates are HOT updates.
    pub rollup: bool,
}

impl Parent<'static> {
    /// `events_sample`, by UTC day.
    pub const RAW: Parent<'static> = Parent { table: "events_sample", span: Span::Day, rollup: false };
}

impl<'a> Parent<'a> {
    /// A rollup table, in ranges sized to its grain.
    pub fn rollup(table: &'a RollupTable) -> Parent<'a> {
        Parent { table: &table.merged, span: Span::of(table.shape.grain), rollup: true }
    }
}

/// Today, in days since the Unix epoch (UTC).
pub fn today() -> i64 {
    day_of(bid_logger_core::clock::now_ms())
}

/// How many of the range names `$1` do not exist.
const ABSENT: &str = "SELECT count(*) FROM unnest($1::text[]) n WHERE to_regclass(n) IS NULL";

/// How long maintenance's own transactions (creating ahead, dropping past
/// the retention) wait for a lock: their ACCESS EXCLUSIVE lock, queued
/// behind a long reader, would hold up every writer of the table.
const MAINTENANCE_LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '2s'";

/// Creates a range through the migrating role's function (sql/0006, 0007).
const CREATE: &str = "SELECT bid_logger_create_range($1::text::regclass, $2, $3, $4, $5)";
/// Drops a range through the migrating role's function (sql/0006).
const DROP: &str = "SELECT bid_logger_drop_range($1::text::regclass)";

fn system_time(s: i64) -> std::time::SystemTime {
    if s >= 0 {
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(s as u64)
    } else {
        std::time::UNIX_EPOCH - std::time::Duration::from_secs(s.unsigned_abs())
    }
}

/// Creates the ranges starting at `starts` (seconds since the epoch) that
/// no existing range overlaps, in a transaction of their own; returns the
/// names created.
pub async fn ensure(
    client: &mut tokio_postgres::Client,
    parent: Parent<'_>,
    starts: &[i64],
) -> Result<Vec<String>, tokio_postgres::Error> {
    if starts.is_empty() {
        return Ok(Vec::new());
    }
    let tx = client.transaction().await?;
    // Creating attaches the range (SHARE UPDATE EXCLUSIVE on the table,
    // migration 0015; ACCESS EXCLUSIVE before it): behind a lock that
    // conflicts, give up (and retry later) rather than queue every writer.
    tx.batch_execute(MAINTENANCE_LOCK_TIMEOUT).await?;
    let created = ensure_in(&tx, parent, starts).await?;
    tx.commit().await?;
    Ok(created)
}

/// Creates, inside `tx`, the ranges starting at `starts` that no existing
/// range overlaps (a range of another span, made by an earlier release or
/// by hand, is kept and respected); returns the names created.
///
/// When a range is missing it takes the range lock until `tx` ends: a
/// transaction must call it before it touches any range table, so that it
/// never holds a lock that creating a range waits for while waiting for
/// the range lock.
pub async fn ensure_in(
    tx: &tokio_postgres::Transaction<'_>,
    parent: Parent<'_>,
    starts: &[i64],
) -> Result<Vec<String>, tokio_postgres::Error> {
    let missing = |existing: &[Range]| -> Vec<i64> {
        starts.iter().copied().filter(|&s| !covered(existing, s, parent.span.end(s))).collect()
    };
    if starts.is_empty() {
        return Ok(Vec::new());
    }
    // Most calls find every range there (a process that just started knows
    // none yet): look them up by name first, without the lock, so they
    // neither queue for it nor read the whole catalog.
    let names: Vec<String> = starts.iter().map(|&s| parent.span.name(parent.table, s)).collect();
    let absent: i64 = tx.query_one(ABSENT, &[&names]).await?.get(0);
    if absent == 0 || missing(&list(tx, parent.table).await?).is_empty() {
        return Ok(Vec::new());
    }
    tx.execute(LOCK, &[&RANGE_LOCK]).await?;
    let mut created = Vec::new();
    for start in missing(&list(tx, parent.table).await?) {
        let hi = parent.span.end(start);
        let lo = start;
        let name = parent.span.name(parent.table, start);
        let (from, to) = (system_time(lo), system_time(hi));
        tx.execute(CREATE, &[&parent.table, &name, &from, &to, &parent.rollup]).await?;
        tracing::debug!(range = %name, "range created");
        created.push(name);
    }
    // One line per table and call: a first start creates hundreds.
    if let (Some(first), Some(last)) = (created.first(), created.last()) {
        tracing::info!(table = %parent.table, count = created.len(), %first, %last, "time ranges created");
    }
    Ok(created)
}

/// Drops the ranges of `table` that end at or before `cutoff_s` (seconds
/// since the epoch); returns their names.
pub async fn drop_ending_by(
    client: &mut tokio_postgres::Client,
    table: &str,
    cutoff_s: i64,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.batch_execute(MAINTENANCE_LOCK_TIMEOUT).await?;
    tx.execute(LOCK, &[&RANGE_LOCK]).await?;
    let mut dropped = Vec::new();
    for range in list(&tx, table).await? {
        if range.to.is_some_and(|to| to <= cutoff_s) {
            tx.execute(DROP, &[&range.name]).await?;
            tracing::debug!(range = %range.name, "range dropped (retention)");
            dropped.push(range.name);
        }
    }
    tx.commit().await?;
    if let (Some(first), Some(last)) = (dropped.first(), dropped.last()) {
        tracing::info!(%table, count = dropped.len(), %first, %last, "time ranges dropped (retention)");
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_round_trip() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(day_of(1_764_180_000_000)), (2025, 11, 26));
        assert_eq!(civil(11_016), (2000, 2, 29));
        assert_eq!(civil(-1), (1969, 12, 31));
        for day in -1000..60_000 {
            let (y, m, d) = civil(day);
            assert_eq!(days_from_civil(y, m, d), day);
        }
    }

    #[test]
    fn spans_cover_consecutive_ranges() {
        let day = days_from_civil(2026, 12, 2);
        let noon = day * 86_400 + 12 * 3600 + 1234;
        assert_eq!(Span::Day.name("events_sample", Span::Day.start(noon)), "events_sample_p20261202");
        assert_eq!(Span::Hour.start(noon), day * 86_400 + 12 * 3600);
        assert_eq!(Span::Hour.name("rollup_minute", Span::Hour.start(noon)), "rollup_minute_p2026120212");
        assert_eq!(Span::Hour.name("rollup_minute", day * 86_400), "rollup_minute_p2026120200");
        assert_eq!(Span::Month.start(noon), days_from_civil(2026, 12, 1) * 86_400);
        assert_eq!(Span::Month.end(Span::Month.start(noon)), days_from_civil(2027, 1, 1) * 86_400);
        assert_eq!(Span::Month.name("rollup_hour", Span::Month.start(noon)), "rollup_hour_p202612");
        assert_eq!(Span::Year.start(noon), days_from_civil(2026, 1, 1) * 86_400);
        assert_eq!(Span::Year.name("rollup_day", Span::Year.start(noon)), "rollup_day_p2026");
        for span in [Span::Hour, Span::Day, Span::Month, Span::Year] {
            let mut start = span.start(days_from_civil(1999, 12, 31) * 86_400 - 1);
            for _ in 0..40 {
                let end = span.end(start);
                assert!(end > start);
                assert_eq!(span.start(end - 1), start, "{span:?}");
                assert_eq!(span.start(end), end, "{span:?}");
                start = end;
            }
        }
    }

    #[test]
    fn starts_cover_an_interval() {
        let t = days_from_civil(2026, 12, 2) * 86_400 + 1800;
        let hours: Vec<i64> = Span::Hour.starts(t, t + 2 * 3600).collect();
        assert_eq!(hours, [t - 1800, t + 1800, t + 5400]);
        assert_eq!(Span::Hour.starts(t, t).count(), 1);
        let days: Vec<i64> = Span::Day.starts(t - 86_400, t).collect();
        assert_eq!(days, [t - 1800 - 86_400, t - 1800]);
        assert_eq!(Span::Year.starts(t, t + 400 * 86_400).count(), 3);
    }
}
