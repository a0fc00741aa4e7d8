//! The PostgreSQL sink: the exactly-once flush (the database itself, its
//! connections, migrations, tables and ranges, is [`crate::db`]'s).
//!
//! * [`batch`]: a delta as the rows of every table, split into parts.
//! * [`consumer`]: the task that moves the coarse tables' delta logs into
//!   their tables.
//! * [`flush`]: writes one batch in one transaction (ledger rows, then per
//!   table a compressed row in its delta log, holding a direct table's
//!   live rows too: appends only), and consumes (folds) a
//!   table's delta log.
//! * [`marks`]: the committed sequence marks and outstanding events that
//!   make a restart count what it lost.
//! * [`service`]: the task that receives deltas from ingest, merges them
//!   while the database is slow or down, and retries with backoff.

pub mod batch;
pub mod consumer;
pub mod flush;
pub mod marks;
pub mod payload;
pub mod service;

pub use service::{Sink, SinkSummary};

use bid_logger_core::wire::EventType;
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
    /// The sampling rate recorded with each row, by its event type
    /// ([`EventType::index`](bid_logger_core::wire::EventType::index)).
    pub sample_ppm: [u32; EventType::ALL.len()],
    /// The raw sample's rate (0 = no raw sample).
    pub raw_sample_ppm: u32,
    /// Days of `events_sample` kept.
    pub raw_retention_days: i64,
    /// Cap on raw rows waiting to be written.
    pub max_raw_rows: usize,
    /// Oldest accepted event time relative to now, ms (day tables are made for it).
    pub max_lateness_ms: i64,
    /// The rollup tables written.
    pub tables: Vec<crate::db::tables::RollupTable>,
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
