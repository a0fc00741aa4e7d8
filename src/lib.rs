//! bid-logger: subscribes to the bidder fleet's ZeroMQ event streams, samples
//! whole transactions, aggregates events by event-time minute and dimensions,
//! and flushes the rollups to PostgreSQL exactly once.
//!
//! # Layout
//!
//! The service is a pipeline; each stage is one module with its own config,
//! error type and tests:
//!
//! ```text
//!  ZeroMQ SUB ──► ingest ──► decode ──► sample ──► aggregate ──Delta──► sink ──► PostgreSQL
//!  (OS thread per socket, blocking libzmq)            (sync core)  (bounded   (tokio task,
//!                                                                   channel)   one tx per batch)
//! ```
//!
//! * [`wire`]: the publisher contract: topics, event types, the FNV-1a
//!   partition hash.
//! * [`decode`]: one message (topic + MessagePack payload) into a borrowed
//!   [`decode::Event`], or a [`decode::DecodeError`] naming the reason.
//! * [`sample`]: consistent sampling by transaction id, and which partitions
//!   are worth subscribing to at all.
//! * [`aggregate`]: the synchronous, I/O-free rollup core:
//!   `record(&Event)` per event, `drain() -> Delta` per flush interval. Its
//!   table of packed keys prefetches an event's row and adds the event one
//!   event later, so the cache miss overlaps the next message's decoding.
//! * [`ingest`]: the receive loop on dedicated OS threads: sockets,
//!   subscriptions, local counters; the per-message work itself is
//!   [`ingest::HotPath`] (decode, `seq` gaps, sampling, aggregation). Hands
//!   deltas to the sink through a bounded channel and never waits for it.
//! * [`sink`]: migrations and the exactly-once flush (a delta becomes one or
//!   more [`sink::batch::Batch`]es of sorted minute and hour rows; each is
//!   written as two transactions, `rollup_minute` first, then `rollup_hour`:
//!   ledger row, binary `COPY` into a staging table, additive upsert) with
//!   retries and merging of pending deltas.
//! * [`pipeline`]: wires the stages together and runs them until a signal.
//! * [`config`]: the configuration file, flags and environment, validated
//!   into each stage's config.
//! * [`telemetry`]: every metric name, described once; logging set-up.
//! * [`clock`]: wall-clock and coarse monotonic milliseconds (the lowest
//!   module: no stage needs another for the time).
//! * [`pgtemp`]: a throwaway PostgreSQL cluster for the demo and the tests.
//! * [`zap`]: the address allow-list for bound sockets (a ZeroMQ ZAP handler).
//! * [`simulate`], [`demo`], [`bench`]: the bidder-fleet simulator, the
//!   one-command demo and the end-to-end benchmark.

#![warn(missing_docs, rust_2018_idioms, clippy::all)]

pub mod aggregate;
pub mod bench;
pub mod clock;
pub mod config;
pub mod decode;
pub mod demo;
pub mod ingest;
pub mod pgtemp;
pub mod pipeline;
pub mod sample;
pub mod simulate;
pub mod sink;
pub mod telemetry;
pub mod wire;
pub mod zap;
