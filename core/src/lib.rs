//! bid-logger's core: everything that happens to a message once its frames
//! are in memory, with no socket, no runtime and no database. The service
//! (`bid-logger`) feeds it from ZeroMQ and writes what it produces to
//! PostgreSQL; benchmarks, profiles and fuzz targets drive it directly.
//!
//! # Layout
//!
//! ```text
//!  frames ──► decode ──► sample ──► aggregate ──► Delta (sorted rows, drained per flush)
//!             └──────────── hot_path: one message, counted ─────────┘
//! ```
//!
//! * [`wire`]: the publisher contract: topics, event types, the FNV-1a
//!   partition hash.
//! * [`decode`]: one message (topic + MessagePack payload) into a borrowed
//!   [`decode::Event`], or a [`decode::DecodeError`] naming the reason.
//! * [`sample`]: consistent sampling by transaction id, and which partitions
//!   are worth subscribing to at all.
//! * [`aggregate`]: `record(&Event)` per event, `drain() -> Delta` per flush
//!   interval. Its table of packed keys prefetches an event's row and adds
//!   the event one event later, so the cache miss overlaps the next
//!   message's decoding.
//! * [`seq`]: `seq` gaps, restarts and resets per publisher, in bounded
//!   memory, and the marks (last `seq` per publisher and topic) a flush
//!   commits.
//! * [`marks`]: the committed marks per partition, as one compact value
//!   each.
//! * [`held`]: messages of partitions a fleet member is about to take
//!   over, held until the lease is passed, then replayed above the marks.
//! * [`hot_path`]: the per-message work ([`hot_path::HotPath`]): the size
//!   limit, decode, `seq` tracking, the partition check, sampling and
//!   aggregation, with local counts.
//! * [`clock`]: wall-clock and coarse monotonic milliseconds.
//! * [`synth`]: a seeded synthetic fleet stream and its exact truth, for the
//!   simulator, benchmarks and tests.
//!
//! Dependencies point one way: `wire` ← `decode` ← `sample`/`aggregate`/`seq`
//! ← `hot_path`; `synth` uses `wire` and `aggregate`'s normalisation.

#![warn(missing_docs, rust_2018_idioms, clippy::all)]

pub mod aggregate;
pub mod buffer;
pub mod clock;
pub mod decode;
pub mod hot_path;
pub mod marks;
pub mod sample;
pub mod seq;
pub mod synth;
pub mod wire;
