//! In-memory rollups by event-time minute and dimension combination.
//!
//! [`Aggregator`] is the synchronous, I/O-free core of the pipeline: the
//! ingest thread calls [`Aggregator::record`] for every sampled event and
//! [`Aggregator::drain`] once per flush interval, which hands a [`Delta`] (one
//! fine-grained row per minute and combination of every dimension) to the
//! sink. Every rollup table is a [`Shape`] (grain and dimensions): its rows
//! are the delta's rows projected and coarsened by [`Shape::project`], so all
//! tables receive exactly the same events.

mod aggregator;
mod delta;
mod normalise;
pub mod price;
mod raw;
mod table;
mod tier;

pub use aggregator::{
    AggregateConfig, AggregateStats, Aggregator, ClickUnpaired, Outcome, PairingConfig, Unpaired,
    DEFAULT_MAX_EXCHANGE_VALUES, DEFAULT_MAX_FUTURE_SKEW_MS, DEFAULT_MAX_LATENESS_MS, DEFAULT_MAX_LIVE_KEYS,
    DEFAULT_MAX_OS_VALUES, DEFAULT_MAX_RAW_ROWS, MAX_NAME_VALUES,
};
pub use delta::{add_up_adjacent, events_of, Counters, Delta, MergeLoss, OsName, Row, RowKey};
pub use normalise::{normalise_country, normalise_os, OS_OTHER, OS_UNKNOWN};
pub use raw::RawRow;
pub use tier::{Dimension, Dimensions, Grain, Shape};

#[cfg(test)]
mod tests;
