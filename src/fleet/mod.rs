//! Fleets: the members of a group (`--group`) divide the partitions between
//! themselves through leases in PostgreSQL, and account for every event
//! when partitions move. `docs/fleet-protocol.md` describes the protocol
//! as a reviewer would hold it against this code.
//!
//! - [`plan`]: the decisions, as a pure function of the group's state
//!   (what to take, claim, ready and hand over).
//! - [`sql`]: every statement, each transaction bounded on the server and
//!   the client.
//! - [`coordinator`]: the task loop: renew, decide, apply once committed,
//!   and move handovers along; the sink passes a handed-over lease itself,
//!   right after the batch that holds the cut ([`crate::assignment::Handover`]).
//! - [`status`]: reads the same tables for `bid-logger fleet`.

pub mod coordinator;
pub mod plan;
pub mod settings;
pub mod sql;
pub mod status;

pub use coordinator::{Coordinator, CoordinatorLinks};

use std::time::Duration;

/// Default `lease-ttl`.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(6);

/// Settings of a fleet member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetConfig {
    /// The group's name.
    pub group: String,
    /// How long an unrenewed lease lasts.
    pub lease_ttl: Duration,
    /// Bytes of the partitions it does not own a hot standby keeps (0: not
    /// a standby).
    pub standby_memory: usize,
}

impl FleetConfig {
    /// How far back a standby keeps the partitions it does not own: past
    /// the last flush of a member that dies (one flush interval), its
    /// lease's expiry (one TTL) and the survivors' next heartbeat, with a
    /// margin.
    pub fn standby_window(&self, flush_interval: Duration) -> Duration {
        2 * self.lease_ttl + flush_interval
    }
}

/// Where a member's life stands, as the pipeline tells its coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Taking and keeping its share.
    Run,
    /// Stopping (SIGTERM): leaves the members, so that the others claim
    /// its partitions, and hands each over as its claim is ready.
    Depart,
    /// The last flush landed: releases what is left and leaves.
    Stop,
}
