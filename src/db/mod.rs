//! The database: one home for what the sink, the fleet coordinator,
//! `migrate`, `report` and the tools share.
//!
//! * [`connect`]: connection strings as a `psql` user writes them (TLS
//!   keys included), the pool, one-off connections.
//! * [`tls`]: TLS with libpq's meaning of `sslmode`, on rustls.
//! * [`error`]: the one error type, its one-line cause and the retry
//!   decision.
//! * [`migrate`]: applies `sql/*.sql` once, under an advisory lock, so that
//!   several instances starting together are safe.
//! * [`tables`]: the declared rollup tables and their SQL.
//! * [`ranges`]: the time-range partitions, created ahead of time and
//!   dropped past the retention.
//! * [`maintenance`]: the task that keeps the ranges, at start-up and
//!   periodically, apart from any flush.

pub mod connect;
pub mod error;
pub mod lost;
pub mod maintenance;
pub mod migrate;
pub mod ranges;
pub mod tables;
pub mod tls;

pub use connect::{connect, pool, validate, ConnectConfig};
pub use error::{cause_of, DbError, FENCED};
pub use migrate::migrate;
