//! In-memory rollups by event-time minute and dimension combination.
//!
//! [`Aggregator`] is the synchronous, I/O-free core of the pipeline: the
//! ingest thread calls [`Aggregator::record`] for every sampled event and
//! [`Aggregator::drain`] once per flush interval, which hands a [`Delta`] (one
//! row per minute bucket and dimensions) to the sink. The hour rollup is the
//! same rows grouped by hour, which the sink derives from the delta, so both
//! tables receive exactly the same events (each in its own transaction, the
//! minute table first).

mod aggregator;
mod delta;
mod normalise;
mod raw;
mod table;

pub use aggregator::{
    AggregateConfig, AggregateStats, Aggregator, Outcome, DEFAULT_MAX_FUTURE_SKEW_MS, DEFAULT_MAX_LATENESS_MS,
    DEFAULT_MAX_LIVE_KEYS, DEFAULT_MAX_OS_VALUES, DEFAULT_MAX_RAW_ROWS,
};
pub use delta::{add_up_adjacent, Counters, Delta, MergeLoss, OsName, Row, RowKey};
pub use normalise::{normalise_country, normalise_os, OS_OTHER, OS_UNKNOWN};
pub use raw::RawRow;

#[cfg(test)]
mod tests;
