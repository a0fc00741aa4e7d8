//! Schema migrations: the files in `sql/`, applied in order, once.

use super::SinkError;

/// Every migration, in order: (version, name, SQL).
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "rollups", include_str!("../../sql/0001_rollups.sql")),
    (2, "events_sample", include_str!("../../sql/0002_events_sample.sql")),
    (3, "rollup_upsert_speed", include_str!("../../sql/0003_rollup_upsert_speed.sql")),
    (4, "ledger_per_rollup", include_str!("../../sql/0004_ledger_per_rollup.sql")),
];

/// Serialises concurrent migrations of several instances (an arbitrary,
/// fixed advisory-lock key: "bidlog" in ASCII).
const MIGRATION_LOCK: i64 = 0x6269_646c_6f67;

const CREATE_VERSIONS: &str = "CREATE TABLE IF NOT EXISTS bid_logger_migrations (
    version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())";
const LOCK: &str = "SELECT pg_advisory_xact_lock($1)";
const APPLIED: &str = "SELECT version FROM bid_logger_migrations";
const RECORD: &str = "INSERT INTO bid_logger_migrations (version, name) VALUES ($1, $2)";

/// Applies the migrations not applied yet; returns how many were applied.
/// Idempotent and safe to run from several instances at once.
pub async fn migrate(client: &mut tokio_postgres::Client) -> Result<usize, SinkError> {
    let tx = client.transaction().await?;
    tx.execute(LOCK, &[&MIGRATION_LOCK]).await?;
    tx.batch_execute(CREATE_VERSIONS).await?;
    let applied: Vec<i32> = tx.query(APPLIED, &[]).await?.iter().map(|r| r.get(0)).collect();
    let mut count = 0;
    for &(version, name, sql) in MIGRATIONS {
        if applied.contains(&version) {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(RECORD, &[&version, &name]).await?;
        tracing::info!(version, name, "migration applied");
        count += 1;
    }
    tx.commit().await?;
    Ok(count)
}
