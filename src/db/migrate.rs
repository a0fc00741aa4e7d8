//! Schema migrations: the files in `sql/`, applied in order, once; then the
//! declared rollup tables, created when missing.

use super::tables::{check_existing, RollupTable, EXISTING_COLUMNS, LIVE_ROWS_IN_TABLE};
use super::DbError;
use bid_logger_core::aggregate::{Dimensions, Grain};

/// Every migration, in order: (version, name, SQL).
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "rollups", include_str!("../../sql/0001_rollups.sql")),
    (2, "events_sample", include_str!("../../sql/0002_events_sample.sql")),
    (3, "rollup_upsert_speed", include_str!("../../sql/0003_rollup_upsert_speed.sql")),
    (4, "ledger_per_rollup", include_str!("../../sql/0004_ledger_per_rollup.sql")),
    (5, "partition_rollups", include_str!("../../sql/0005_partition_rollups.sql")),
    (6, "range_functions", include_str!("../../sql/0006_range_functions.sql")),
    (7, "hour_ranges", include_str!("../../sql/0007_hour_ranges.sql")),
    (8, "seq_marks", include_str!("../../sql/0008_seq_marks.sql")),
    (9, "leases", include_str!("../../sql/0009_leases.sql")),
    (10, "lease_claims", include_str!("../../sql/0010_lease_claims.sql")),
    (11, "fence_expiry", include_str!("../../sql/0011_fence_expiry.sql")),
    (12, "fence_key_share", include_str!("../../sql/0012_fence_key_share.sql")),
    (13, "fleet_departing_and_settings", include_str!("../../sql/0013_fleet_departing_and_settings.sql")),
    (14, "lost", include_str!("../../sql/0014_lost.sql")),
    (15, "live_layout", include_str!("../../sql/0015_live_layout.sql")),
    (16, "price_distributions", include_str!("../../sql/0016_price_distributions.sql")),
    (17, "sample_by_type", include_str!("../../sql/0017_sample_by_type.sql")),
    (18, "chain_timing", include_str!("../../sql/0018_chain_timing.sql")),
    (19, "log_feeds", include_str!("../../sql/0019_log_feeds.sql")),
];

/// The migration that partitions the rollups; `rollup_day` is backfilled
/// when it is applied.
const PARTITION_ROLLUPS: i32 = 5;

/// Serialises concurrent migrations of several instances (an arbitrary,
/// fixed advisory-lock key: "bidlog" in ASCII).
const MIGRATION_LOCK: i64 = 0x6269_646c_6f67;

const CREATE_VERSIONS: &str = "CREATE TABLE IF NOT EXISTS bid_logger_migrations (
    version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())";
const LOCK: &str = "SELECT pg_advisory_xact_lock($1)";
const APPLIED: &str = "SELECT version FROM bid_logger_migrations";
const RECORD: &str = "INSERT INTO bid_logger_migrations (version, name) VALUES ($1, $2)";

/// The migration after which every delta-log row says where its sums go on.
const LOG_FEEDS: i32 = 19;

/// Before [`LOG_FEEDS`]: an earlier build's rows left in a delta log (a
/// hard kill, a stop that could not consume) went on where that build's
/// configuration, intervals included, sent them, which this build cannot
/// know for a coarse table feeding another: every log must be empty. The
/// earlier build empties them at a graceful stop (it still starts on a
/// warehouse without the migration).
async fn logs_consumed(tx: &tokio_postgres::Transaction<'_>) -> Result<(), DbError> {
    let logs = tx
        .query(
            "SELECT c.relname::text FROM pg_class c
             WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r'
               AND c.relname LIKE 'bid\\_logger\\_log\\_%' ORDER BY 1",
            &[],
        )
        .await?;
    for log in logs {
        let log: String = log.get(0);
        let rows: i64 =
            tx.query_one(&format!("SELECT count(*) FROM (SELECT 1 FROM {log} LIMIT 1000000) r"), &[]).await?.get(0);
        if rows > 0 {
            return Err(DbError::Unconsumed(format!(
                "{log} holds {rows} rows an earlier build did not consume: start that build once more and stop it \
                 with SIGTERM (its stop consumes every delta log), then start this one (UPGRADING.md)"
            )));
        }
    }
    Ok(())
}

/// `rollup_day` from `rollup_hour` (same dimensions), into one range
/// `rollup_day_before` of `rollup_day_merged` holding every day before the
/// next year (the tables are views by then).
const BACKFILL_DAY: &str = "
DO $$
DECLARE cut timestamptz := (date_trunc('year', now() AT TIME ZONE 'UTC') + interval '1 year') AT TIME ZONE 'UTC';
BEGIN
    IF EXISTS (SELECT 1 FROM rollup_hour) THEN
        EXECUTE format('CREATE TABLE rollup_day_before PARTITION OF rollup_day_merged FOR VALUES FROM (MINVALUE) TO (%L)
                        WITH (fillfactor = 50)', cut);
        INSERT INTO rollup_day_merged (bucket, event_type, country, os, campaign_id, advertiser_id, sample_ppm,
                                events, attributed_events, price_micros, revenue_micros, updated_at)
        SELECT date_trunc('day', bucket AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', event_type, country, os,
               campaign_id, advertiser_id, sample_ppm, sum(events), sum(attributed_events), sum(price_micros),
               sum(revenue_micros), max(updated_at)
        FROM rollup_hour
        GROUP BY 1, event_type, country, os, campaign_id, advertiser_id, sample_ppm;
    END IF;
END $$";

/// Applies the migrations not applied yet and creates the declared tables
/// that do not exist; returns how many migrations were applied. Idempotent
/// and safe to run from several instances at once. Fails (naming the
/// configuration key) when an existing table has other dimensions than
/// declared.
pub async fn migrate(client: &mut tokio_postgres::Client, tables: &[RollupTable]) -> Result<usize, DbError> {
    let tx = client.transaction().await?;
    tx.execute(LOCK, &[&MIGRATION_LOCK]).await?;
    tx.batch_execute(CREATE_VERSIONS).await?;
    let applied: Vec<i32> = tx.query(APPLIED, &[]).await?.iter().map(|r| r.get(0)).collect();
    let known = MIGRATIONS.iter().map(|m| m.0).max().unwrap_or(0);
    if let Some(&newer) = applied.iter().filter(|&&v| v > known).max() {
        return Err(DbError::Newer { applied: newer, known });
    }
    if !applied.contains(&LOG_FEEDS) {
        logs_consumed(&tx).await?;
    }
    let mut count = 0;
    let mut partitioned_now = false;
    for &(version, name, sql) in MIGRATIONS {
        if applied.contains(&version) {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(RECORD, &[&version, &name]).await?;
        tracing::info!(version, name, "migration applied");
        partitioned_now |= version == PARTITION_ROLLUPS;
        count += 1;
    }
    for table in tables {
        let columns: Vec<String> = tx.query(EXISTING_COLUMNS, &[&table.name]).await?.iter().map(|r| r.get(0)).collect();
        check_existing(table, &columns).map_err(DbError::Schema)?;
        tx.batch_execute(&table.create_sql()).await?;
        // what only the owner may change, which create_sql changed when it might
        let indexes = table.range_indexes();
        let row = tx.query_one(&owners_work_done(), &[&table.name, &indexes]).await?;
        if !row.get::<_, bool>(0) {
            tracing::warn!(table = %table.name,
                "the view is an earlier build's, read without parallel scans (the same rows, slower): \
                 run `bid-logger migrate` as the role that owns it (UPGRADING.md)");
        }
        if !row.get::<_, bool>(1) {
            tracing::warn!(table = %table.name,
                "its ranges lack an index of this build's (on bucket: BRIN, and one per event type), \
                 so long queries read more of them: run `bid-logger migrate` as the role that owns it (UPGRADING.md)");
        }
        if !row.get::<_, bool>(2) {
            tracing::warn!(table = %table.name,
                "the view reads the live rows held in the delta log, where this database keeps them in the live \
                 table (on Citus the view then runs on the coordinator: the same rows, slower): \
                 run `bid-logger migrate` as the role that owns it (docs/citus.md)");
        }
    }
    let day_like_hour =
        |t: &RollupTable| t.name == "rollup_day" && t.shape.grain == Grain::Day && t.shape.dims == hour_dims(tables);
    if partitioned_now && tables.iter().any(day_like_hour) {
        let started = std::time::Instant::now();
        tx.batch_execute(BACKFILL_DAY).await?;
        let rows: i64 = tx.query_one("SELECT count(*) FROM rollup_day", &[]).await?.get(0);
        if rows > 0 {
            tracing::info!(rows, elapsed = ?started.elapsed(), "rollup_day backfilled from rollup_hour");
        }
    }
    tx.commit().await?;
    Ok(count)
}

/// For a rollup table (`$1`: its name; `$2`: its ranges' indexes'
/// names, [`RollupTable::range_indexes`]): whether its view joins its
/// boundary, as [`RollupTable::view_sql`] makes it (an earlier build's read
/// it in a subquery, which keeps PostgreSQL from scanning its merged
/// ranges in parallel), whether every one of those indexes exists, and
/// whether its view reads live rows where the database keeps them (on
/// Citus, or where `bid_logger.live_rows` is `table`, from the live table
/// only: a view made before reads the log's too, which Citus runs on the
/// coordinator: [`LIVE_ROWS_IN_TABLE`]). Only the owner makes any.
fn owners_work_done() -> String {
    format!(
        "SELECT coalesce(position('JOIN bid_logger_boundary' in pg_get_viewdef(to_regclass($1)::oid)) > 0, true),
            NOT EXISTS (SELECT FROM unnest($2::text[]) i WHERE to_regclass(i) IS NULL),
            NOT ({LIVE_ROWS_IN_TABLE}
                 AND coalesce(position('live_bucket' in pg_get_viewdef(to_regclass($1)::oid)) > 0, false))"
    )
}

fn hour_dims(tables: &[RollupTable]) -> Dimensions {
    tables.iter().find(|t| t.name == "rollup_hour").map_or(Dimensions::ALL, |t| t.shape.dims)
}
