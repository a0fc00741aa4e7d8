//! The PostgreSQL sink: migrations and the exactly-once flush.
//!
//! * [`migrate`]: applies `sql/*.sql` once, under an advisory lock, so that
//!   several instances starting together are safe.
//! * [`tables`]: the declared rollup tables and their SQL.
//! * [`flush`]: writes one batch in one transaction (ledger rows, then per
//!   direct table a binary `COPY` into a staging table and an additive
//!   upsert, per coarse table a `COPY` into its delta log), and consumes a
//!   coarse table's delta log.
//! * [`marks`]: the committed sequence marks and outstanding events that
//!   make a restart count what it lost.
//! * [`ranges`]: the time-range partitions, ahead of time, on demand and
//!   past the retention.
//! * [`service`]: the task that receives deltas from ingest, merges them
//!   while the database is slow or down, and retries with backoff.

pub mod batch;
pub mod flush;
pub mod marks;
pub mod migrate;
pub mod payload;
pub mod ranges;
pub mod service;
pub mod tables;

pub use migrate::migrate;
pub use service::{Sink, SinkSummary};

use std::time::Duration;

/// Default `flush-interval`.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Default `flush-timeout`.
pub const DEFAULT_FLUSH_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `shutdown-timeout`.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `db-pool-size`.
pub const DEFAULT_POOL_SIZE: usize = 2;
/// Default `max-pending-rows`.
pub const DEFAULT_MAX_PENDING_ROWS: usize = 2_000_000;
/// Default `raw-retention`, in days.
pub const DEFAULT_RAW_RETENTION_DAYS: u64 = 7;

/// Settings of the sink stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkConfig {
    /// PostgreSQL URL.
    pub database_url: String,
    /// This instance's name in the ledger.
    pub instance_id: String,
    /// How often a batch is written.
    pub flush_interval: Duration,
    /// Longest one flush attempt may take.
    pub flush_timeout: Duration,
    /// Longest a graceful stop keeps trying.
    pub shutdown_timeout: Duration,
    /// Connections in the pool.
    pub pool_size: usize,
    /// Cap on distinct rows waiting to be written.
    pub max_pending_rows: usize,
    /// The sampling rate recorded with every row.
    pub sample_ppm: u32,
    /// The raw sample's rate (0 = no raw sample).
    pub raw_sample_ppm: u32,
    /// Days of `events_sample` kept.
    pub raw_retention_days: i64,
    /// Cap on raw rows waiting to be written.
    pub max_raw_rows: usize,
    /// Oldest accepted event time relative to now, ms (day tables are made for it).
    pub max_lateness_ms: i64,
    /// The rollup tables written.
    pub tables: Vec<tables::RollupTable>,
    /// The fleet group this instance is a member of.
    pub group: Option<String>,
}

impl SinkConfig {
    /// Whose sequence marks this instance records and reads: its group's,
    /// or its own (the instance id).
    pub fn scope(&self) -> &str {
        self.group.as_deref().unwrap_or(&self.instance_id)
    }
}

/// A database failure.
///
/// Its message carries the whole cause: tokio-postgres's own `Display`
/// stops at "db error" or "error connecting to server", and deadpool's
/// wraps that again, while what an operator needs (the server's message and
/// SQLSTATE, or the OS error such as "Connection refused") sits further
/// down the source chain. The variants therefore keep their inner errors
/// private (no `source()`), so that `{:#}` does not print the chain twice.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A statement or the connection failed.
    #[error("database error: {}", cause_of(.0))]
    Db(tokio_postgres::Error),
    /// No connection could be had from the pool.
    #[error("no database connection: {}", pool_cause(.0))]
    Pool(deadpool_postgres::PoolError),
    /// The pool could not be built.
    #[error("cannot build the connection pool: {0}")]
    Build(deadpool_postgres::BuildError),
    /// The URL does not parse.
    #[error("invalid database url: {}", cause_of(.0))]
    Url(tokio_postgres::Error),
    /// An attempt took longer than allowed.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// A delta log holds what its writer cannot have written.
    #[error("inconsistent delta log: {0}")]
    Log(String),
    /// The database's tables contradict the configuration.
    #[error("invalid configuration: {0}")]
    Schema(String),
}

impl From<tokio_postgres::Error> for SinkError {
    fn from(e: tokio_postgres::Error) -> SinkError {
        SinkError::Db(e)
    }
}

impl From<deadpool_postgres::PoolError> for SinkError {
    fn from(e: deadpool_postgres::PoolError) -> SinkError {
        SinkError::Pool(e)
    }
}

impl From<deadpool_postgres::BuildError> for SinkError {
    fn from(e: deadpool_postgres::BuildError) -> SinkError {
        SinkError::Build(e)
    }
}

fn pool_cause(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(e) => cause_of(e),
        other => other.to_string(),
    }
}

/// One line with what went wrong, down to the root cause: the server's
/// severity, SQLSTATE and message (plus detail and hint) for an error the
/// server reported, otherwise every message of the source chain (for
/// example `error connecting to server: Connection refused (os error 111)`).
pub fn cause_of(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return describe_db_error(db);
    }
    let mut out = e.to_string();
    let mut next = std::error::Error::source(e);
    while let Some(cause) = next {
        if let Some(db) = cause.downcast_ref::<tokio_postgres::error::DbError>() {
            out = format!("{out}: {}", describe_db_error(db));
            break;
        }
        let text = cause.to_string();
        if !out.contains(&text) {
            out = format!("{out}: {text}");
        }
        next = cause.source();
    }
    out
}

fn describe_db_error(db: &tokio_postgres::error::DbError) -> String {
    let mut out = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    if let Some(detail) = db.detail() {
        out.push_str(&format!(" (detail: {detail})"));
    }
    if let Some(hint) = db.hint() {
        out.push_str(&format!(" (hint: {hint})"));
    }
    out.replace('\n', " ")
}

impl SinkError {
    /// Whether a fleet member's flush found one of its leases taken
    /// (SQLSTATE `BLF01`): retrying cannot help.
    pub fn is_fenced(&self) -> bool {
        matches!(self, SinkError::Db(e) if e.code().is_some_and(|c| c.code() == marks::FENCED))
    }

    /// Whether retrying can help without anyone changing anything: lost
    /// connections, server restarts, timeouts, lock and serialization
    /// conflicts. Decided from the error's class, never its text.
    pub fn is_transient(&self) -> bool {
        match self {
            SinkError::Db(e) => db_error_is_transient(e),
            SinkError::Pool(deadpool_postgres::PoolError::Backend(e)) => db_error_is_transient(e),
            SinkError::Pool(_) | SinkError::Timeout(_) => true,
            SinkError::Build(_) | SinkError::Url(_) | SinkError::Schema(_) | SinkError::Log(_) => false,
        }
    }
}

fn db_error_is_transient(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        // No SQLSTATE: I/O, connect or protocol failure.
        None => true,
        Some(state) => {
            let code = state.code();
            // 08 connection exception, 53 insufficient resources, 57 operator
            // intervention (shutdown, statement timeout), 40001 serialization
            // failure, 40P01 deadlock, 55P03 lock not available, 25P03 a
            // transaction left idle past the timeout a fleet member sets (the
            // process starved of CPU: the server ended its session).
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57")
                || matches!(code, "40001" | "40P01" | "55P03" | "25P03")
        }
    }
}

/// Builds a connection pool for `url`, tagging connections with
/// `application_name = bid-logger` so operators can find them.
pub fn pool(url: &str, size: usize) -> Result<deadpool_postgres::Pool, SinkError> {
    let mut pg: tokio_postgres::Config = url.parse().map_err(SinkError::Url)?;
    if pg.get_application_name().is_none() {
        pg.application_name("bid-logger");
    }
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(Duration::from_secs(5));
    }
    // Notices such as "relation already exists, skipping" are noise here.
    if pg.get_options().is_none() {
        pg.options("-c client_min_messages=warning");
    }
    pg.keepalives(true).keepalives_idle(Duration::from_secs(30));
    let manager = deadpool_postgres::Manager::from_config(
        pg,
        tokio_postgres::NoTls,
        deadpool_postgres::ManagerConfig { recycling_method: deadpool_postgres::RecyclingMethod::Fast },
    );
    Ok(deadpool_postgres::Pool::builder(manager)
        .max_size(size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(10)))
        .build()?)
}
