//! The receive loop: SUB sockets on dedicated OS threads.
//!
//! libzmq sockets are blocking and not thread-safe, so each ingest thread owns
//! its SUB sockets (one per endpoint, so that each endpoint's messages are
//! counted) outright and runs the whole hot path (decode → sample →
//! aggregate) on them, outside the async runtime: a tokio worker blocked in
//! `zmq_recv` would stall every task scheduled on it, and moving each message
//! across threads would cost more than processing it. The only boundary to
//! tokio is a bounded channel of [`Delta`](bid_logger_core::aggregate::Delta)s, used with `try_reserve`: when the
//! sink is behind, the thread simply keeps aggregating into the same table
//! (which merges the pending interval into the next one) instead of waiting,
//! so nothing the database does can block the receive loop.
//!
//! # Layout
//!
//! * [`topics`]: which topics each thread subscribes to.
//! * [`socket`]: the SUB sockets' set-up (one per endpoint), renewing
//!   endpoints that libzmq dropped for good, and the watch that logs an
//!   endpoint connected but silent.
//! * [`pacer`]: how the receive loop coalesces wake-ups.
//!
//! The per-message work itself ([`HotPath`]: decode, `seq` gaps, the
//! partition check, sampling, aggregation) is the core's, with no socket.
//! * [`worker`]: one ingest thread's loop and counters, and [`spawn`].

pub mod pacer;
pub mod socket;
pub mod topics;
pub mod worker;

pub use bid_logger_core::hot_path::{HotPath, HotPathConfig, DEFAULT_MAX_EVENT_SIZE, DEFAULT_MAX_SEQ_JUMP};
pub use pacer::Pacer;
pub use socket::{connect_all, open_socket, EndpointActivity, Quiet, QuietWatch};
pub use topics::{prefixes_from, subscriptions};
pub use worker::{spawn, FleetLinks, FlushRequests, Ingest, IngestSummary, Links};

use bid_logger_core::aggregate::AggregateConfig;
use bid_logger_core::sample::{Rate, TypeRates};
use bid_logger_core::wire::EventType;

/// Default `partition-count`.
pub const DEFAULT_PARTITION_COUNT: u32 = 64;
/// Default `receive-hwm`, in messages.
pub const DEFAULT_RECEIVE_HWM: i32 = 1_000_000;
/// Default `max-message-size` (ZMQ_MAXMSGSIZE): 8 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: i64 = 8 * 1024 * 1024;
/// Default `endpoint-quiet-after`.
pub const DEFAULT_QUIET_AFTER: std::time::Duration = std::time::Duration::from_secs(60);
/// Default `ingest-threads`.
pub const DEFAULT_THREADS: usize = 1;

/// Settings of the ingest stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestConfig {
    /// Endpoints to connect to.
    pub connect: Vec<String>,
    /// Endpoints to bind.
    pub bind: Vec<String>,
    /// Fleet-wide partition count.
    pub partition_count: u32,
    /// This instance's partitions, sorted.
    pub partitions: Vec<u32>,
    /// Event types subscribed to.
    pub event_types: Vec<EventType>,
    /// Rollup sampling rate of each event type (`sample`, `sample-by-type`).
    pub sample: TypeRates,
    /// Raw-event sampling rate (`events_sample`).
    pub raw_sample: Rate,
    /// ZMQ_RCVHWM.
    pub receive_hwm: i32,
    /// ZMQ_MAXMSGSIZE: the hard limit, a guard against hostile peers (libzmq
    /// drops the connection of a peer that exceeds it).
    pub max_message_size: i64,
    /// Payloads larger than this are counted as `too_large` and dropped,
    /// costing no other message.
    pub max_event_size: usize,
    /// A forward `seq` jump larger than this is a sequence reset, not a loss.
    pub max_seq_jump: u64,
    /// How long a connected endpoint may send nothing before it is logged
    /// (zero: never).
    pub quiet_after: std::time::Duration,
    /// Number of receive threads.
    pub threads: usize,
    /// Peers allowed to connect to bound endpoints (empty = no check).
    pub allow: Vec<crate::zap::Allowed>,
}

/// Failure to set up a socket.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A libzmq call failed.
    #[error("zeromq {what} failed: {source}")]
    Zmq {
        /// The call, with its argument.
        what: String,
        /// libzmq's error.
        source: zmq::Error,
    },
}

impl IngestConfig {
    /// Whether this instance takes every partition (a fleet member's group
    /// takes them all, whatever it owns now).
    pub fn takes_every_partition(&self) -> bool {
        self.partitions.len() == self.partition_count as usize
    }

    /// Whether this instance takes every event of `event_type` (every
    /// partition, the type at rate 1). With one thread it then subscribes
    /// by the type's prefix, and a publisher's partition number cannot make
    /// it miss an event of the type.
    pub fn takes_everything_of(&self, event_type: EventType) -> bool {
        self.takes_every_partition() && self.sample.of(event_type) == Rate::ALL
    }

    /// The hot path's settings.
    pub fn hot_path(&self, aggregate: AggregateConfig) -> HotPathConfig {
        HotPathConfig {
            partition_count: self.partition_count,
            sample: self.sample,
            raw_sample: self.raw_sample,
            takes_every_partition: self.takes_every_partition(),
            max_event_size: self.max_event_size,
            max_seq_jump: self.max_seq_jump,
            aggregate,
        }
    }
}
