//! bid-logger: subscribes to the bidder fleet's ZeroMQ event streams, samples
//! whole transactions, aggregates events by event-time minute and dimensions,
//! and flushes the rollups to PostgreSQL exactly once.
//!
//! # Layout
//!
//! The workspace has three crates, and dependencies point one way:
//!
//! ```text
//!  bid-logger-tools ──► bid-logger (this crate) ──► bid-logger-core
//!  simulator, demo,     ingest, sink, pipeline,      wire, decode, sample,
//!  bench, pgtemp        config, telemetry, zap;      aggregate, seq, hot_path,
//!                       the `bid-logger` daemon      clock, synth (no I/O)
//! ```
//!
//! The service is a pipeline; each stage is one module with its own config,
//! error type and tests:
//!
//! ```text
//!  ZeroMQ SUB ──► ingest ──► [core: decode ► sample ► aggregate] ──Delta──► sink ──► PostgreSQL
//!  (OS thread per socket, blocking libzmq)                (bounded     (tokio task,
//!                                                          channel)     one tx per batch)
//! ```
//!
//! * [`ingest`]: the receive loop on dedicated OS threads: sockets,
//!   subscriptions, pacing, local counters; the per-message work is the
//!   core's `HotPath`. Hands deltas to the sink through a bounded channel
//!   and never waits for it.
//! * [`sink`]: the exactly-once flush (a delta becomes one or more
//!   [`sink::batch::Batch`]es, each holding every table's projected rows;
//!   each is one transaction: ledger rows, per table a row in its delta log
//!   holding, for a direct table, its live rows too; a consumer
//!   task folds each log into the table at its own interval) with retries
//!   and merging of pending deltas; a batch's transaction also creates the
//!   time ranges its rows need that range maintenance has not made yet.
//! * [`db`]: the database, shared by the sink, the fleet, `migrate`,
//!   `report` and the tools: connection strings with TLS ([`db::tls`]), the
//!   pool, the error type, the migrations, the declared tables
//!   ([`db::tables`]), the time-range partitions ([`db::ranges`]) and the
//!   task that maintains them ([`db::maintenance`]).
//! * [`fleet`]: a fleet member's coordinator (`--group`): membership and
//!   partition leases in PostgreSQL, handovers and fencing. It publishes an
//!   [`assignment::Assignment`] that the ingest threads (subscriptions) and
//!   the sink (the leases every flush is fenced with) follow.
//! * [`pipeline`]: wires the stages together and runs them until a signal.
//! * [`config`]: the configuration file, flags and environment, validated
//!   into each stage's config.
//! * [`telemetry`]: every metric, named and described once; logging set-up.
//!   The library only emits metrics: the executable installs the exporter.
//! * [`zap`]: the address allow-list for bound sockets (a ZeroMQ ZAP handler).
//! * [`check`]: `bid-logger check-config --online`: the database (TLS,
//!   migrations, grants) and the publisher endpoints, tried before a start.
//! * [`report`]: `bid-logger report`, per-group figures from the narrowest
//!   rollup that answers a range.
//!
//! Within the crate the graph is acyclic too: `telemetry` and `assignment`
//! use no other module; `db` uses `telemetry`; `zap`, `ingest` and `sink`
//! use those; `fleet` uses `sink` and `db`; `config` builds each stage's
//! config; `pipeline` uses all of them.

#![warn(missing_docs, rust_2018_idioms, clippy::all)]

pub mod assignment;
pub mod check;
pub mod config;
pub mod db;
pub mod fleet;
pub mod ingest;
pub mod pipeline;
pub mod report;
pub mod sink;
pub mod telemetry;
pub mod zap;
