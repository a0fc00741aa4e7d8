//! What a fleet member owns now: the one value the fleet coordinator
//! publishes and the ingest threads and the sink follow (through a
//! `tokio::sync::watch` channel, readable from the OS threads without a
//! runtime).

use bid_logger_core::marks::SeqMarks;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::oneshot;

/// A handover, from the coordinator to the sink: every thread has stopped
/// receiving the partitions and handed the sink what it received of them.
/// The sink writes everything it received before this request (the *cut*)
/// first, then passes the leases to their claimants before it forms any
/// other batch, so no batch formed after the cut fences with them (see
/// `docs/fleet-protocol.md`, "Handover"). It answers with each partition's
/// new owner; it drops the request when it is fenced or stops first.
#[derive(Debug)]
pub struct Handover {
    /// The leases to pass: (partition, epoch).
    pub leases: Vec<(u32, i64)>,
    /// Where the outcome goes: (partition, new owner; `None`: released).
    pub passed: oneshot::Sender<Vec<(u32, Option<String>)>>,
}

/// `SET LOCAL idle_in_transaction_session_timeout` for a fleet member's
/// transactions (heartbeats and fenced flushes): a third of the lease TTL,
/// so that a member frozen inside one (holding the group's lock, or its
/// lease rows) cannot keep the others from taking its leases once they
/// expire.
pub fn idle_timeout(lease_ttl: Duration) -> String {
    format!("SET LOCAL idle_in_transaction_session_timeout = {}", (lease_ttl / 3).as_millis().max(100))
}

/// The marks an earlier run of this (static) instance committed, when the
/// database did not answer at start: the sink sets them once it has read
/// them, and each ingest thread then counts the gap across the restart
/// from them ([`bid_logger_core::seq::SeqTracker::seed_late`]).
pub type LateMarks = Arc<OnceLock<SeqMarks>>;

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
    /// Partitions claimed from another member, sorted: received and buffered
    /// (not counted) until the lease is passed to this member, then
    /// replayed above the giver's marks (see [`bid_logger_core::buffer`]).
    pub buffer: Vec<u32>,
    /// The committed marks of every partition held, as of when it was
    /// taken: a thread that starts receiving a partition tracks it from
    /// them (and a claimed partition replays what it buffered above them), and
    /// hands them to the sink with its next delta. Every generation carries
    /// them all, since a follower sees the latest generation only.
    pub seeds: Arc<SeqMarks>,
    /// How many times this member was fenced (its leases were taken while
    /// it could not renew them): a follower that sees it go up drops
    /// everything it gathered or buffered and starts again. A count, not a flag, for the same
    /// reason.
    pub fences: u64,
}

impl Assignment {
    /// Whether `partition` is received.
    pub fn receives(&self, partition: u32) -> bool {
        self.receive.binary_search(&partition).is_ok()
    }

    /// Whether `partition` is buffered (claimed, not passed yet).
    pub fn buffers(&self, partition: u32) -> bool {
        self.buffer.binary_search(&partition).is_ok()
    }
}
