//! What a fleet member owns now: the one value the fleet coordinator
//! publishes and the ingest threads and the sink follow (through a
//! `tokio::sync::watch` channel, readable from the OS threads without a
//! runtime).

use bid_logger_core::marks::SeqMarks;
use std::sync::Arc;

/// A member's partitions, as of one decision of its coordinator.
#[derive(Debug, Clone, Default)]
pub struct Assignment {
    /// Goes up with every change.
    pub generation: u64,
    /// Partitions to receive, sorted.
    pub receive: Vec<u32>,
    /// Leases held, as (partition, epoch), sorted: what every flush fences
    /// with. It includes the partitions being released (no longer received,
    /// their last rows not yet written).
    pub held: Vec<(u32, i64)>,
    /// Partitions taken in this generation, and their committed marks: the
    /// trackers start from them.
    pub taken: Vec<u32>,
    /// The committed marks of `taken`.
    pub seeds: Arc<SeqMarks>,
    /// This member was fenced (its leases were taken while it could not
    /// renew them): drop everything held and start again.
    pub discard: bool,
}

impl Assignment {
    /// Whether `partition` is received.
    pub fn receives(&self, partition: u32) -> bool {
        self.receive.binary_search(&partition).is_ok()
    }
}
