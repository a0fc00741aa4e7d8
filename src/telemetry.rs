//! Every metric the logger exports, described once, and logging set-up.
//!
//! Dashboards, alerts, the README and the tests use exactly these names.
//! Labels come only from small fixed sets (`event_type`, `reason`, `table`).

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use std::net::SocketAddr;

/// Messages taken off the SUB sockets (valid or not).
pub const MESSAGES_RECEIVED: &str = "bid_logger_messages_received_total";
/// Valid, sampled, in-window events counted into the rollups, by `event_type`.
pub const EVENTS_ACCEPTED: &str = "bid_logger_events_accepted_total";
/// Invalid messages dropped, by `reason`.
pub const MESSAGES_INVALID: &str = "bid_logger_messages_invalid_total";
/// Valid events outside the transaction sample.
pub const EVENTS_SAMPLED_OUT: &str = "bid_logger_events_sampled_out_total";
/// Valid events rejected for their event time, by `reason` (`late`, `future`).
pub const EVENTS_REJECTED: &str = "bid_logger_events_rejected_total";
/// Messages lost between publishers and the logger, from `seq` gaps.
pub const MESSAGES_LOST: &str = "bid_logger_messages_lost_total";
/// Publisher restarts seen (a `seq` going backwards).
pub const PUBLISHER_RESTARTS: &str = "bid_logger_publisher_restarts_total";
/// `seq` jumps forward larger than `max-seq-jump`: sequence resets, not losses.
pub const SEQ_RESETS: &str = "bid_logger_seq_resets_total";
/// Publishers dropped from `seq` tracking to keep its memory bounded.
pub const SEQ_PUBLISHERS_EVICTED: &str = "bid_logger_seq_publishers_evicted_total";
/// Events whose topic partition is not `fnv1a64(txn) mod partition-count`.
pub const PARTITION_MISMATCH: &str = "bid_logger_partition_mismatch_total";
/// The configured flush interval (alert thresholds follow it).
pub const FLUSH_INTERVAL: &str = "bid_logger_flush_interval_seconds";
/// Distinct rollup keys held in memory, by ingest and by the sink's pending batch.
pub const LIVE_KEYS: &str = "bid_logger_live_keys";
/// Events folded into `other`/`-1` by a cardinality cap.
pub const OVERFLOW_FOLDED: &str = "bid_logger_overflow_folded_events_total";
/// Time a successful flush took.
pub const FLUSH_DURATION: &str = "bid_logger_flush_duration_seconds";
/// Rows inserted or updated, by `table`.
pub const ROWS_UPSERTED: &str = "bid_logger_rows_upserted_total";
/// Events written to PostgreSQL (each event once, whatever the number of tables).
pub const EVENTS_FLUSHED: &str = "bid_logger_events_flushed_total";
/// Flush attempts that failed (and will be retried).
pub const FLUSH_FAILURES: &str = "bid_logger_flush_failures_total";
/// Batches waiting to be written (queued and in flight).
pub const PENDING_BATCHES: &str = "bid_logger_pending_batches";
/// Events accepted but not yet written.
pub const PENDING_EVENTS: &str = "bid_logger_pending_events";
/// Unix time of the last successful flush.
pub const LAST_FLUSH: &str = "bid_logger_last_flush_timestamp_seconds";
/// Raw rows written to `events_sample`.
pub const RAW_ROWS_WRITTEN: &str = "bid_logger_raw_rows_written_total";
/// Raw rows dropped, by `reason` (`buffer_full`, `expired`).
pub const RAW_ROWS_DROPPED: &str = "bid_logger_raw_rows_dropped_total";
/// Daily `events_sample` partitions created.
pub const RAW_PARTITIONS_CREATED: &str = "bid_logger_raw_partitions_created_total";
/// Daily `events_sample` partitions dropped by retention.
pub const RAW_PARTITIONS_DROPPED: &str = "bid_logger_raw_partitions_dropped_total";
/// Publisher endpoints connected again by the logger, when libzmq was not
/// reconnecting a dropped connection 250 ms later.
pub const RECONNECTS: &str = "bid_logger_reconnects_total";
/// Connections to a bound socket refused by the address allow-list.
pub const CONNECTIONS_REFUSED: &str = "bid_logger_connections_refused_total";
/// The standard process metrics (the `process_*` family every Prometheus
/// client library exports, so stock dashboards and alerts work), collected
/// by the `metrics-process` crate from `/proc/self`.
pub const PROCESS_CPU: &str = "process_cpu_seconds_total";
/// Resident set size of the process.
pub const PROCESS_RSS: &str = "process_resident_memory_bytes";
/// Virtual memory size of the process.
pub const PROCESS_VIRTUAL_MEMORY: &str = "process_virtual_memory_bytes";
/// Open file descriptors (sockets included).
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
/// The file-descriptor limit.
pub const PROCESS_MAX_FDS: &str = "process_max_fds";
/// Unix time the process started.
pub const PROCESS_START_TIME: &str = "process_start_time_seconds";
/// OS threads of the process.
pub const PROCESS_THREADS: &str = "process_threads";
/// Always 1, with the version as a label.
pub const BUILD_INFO: &str = "bid_logger_build_info";

/// Every metric name, for documentation checks.
pub const ALL: &[&str] = &[
    MESSAGES_RECEIVED,
    EVENTS_ACCEPTED,
    MESSAGES_INVALID,
    EVENTS_SAMPLED_OUT,
    EVENTS_REJECTED,
    MESSAGES_LOST,
    PUBLISHER_RESTARTS,
    SEQ_RESETS,
    SEQ_PUBLISHERS_EVICTED,
    PARTITION_MISMATCH,
    FLUSH_INTERVAL,
    LIVE_KEYS,
    OVERFLOW_FOLDED,
    FLUSH_DURATION,
    ROWS_UPSERTED,
    EVENTS_FLUSHED,
    FLUSH_FAILURES,
    PENDING_BATCHES,
    PENDING_EVENTS,
    LAST_FLUSH,
    RAW_ROWS_WRITTEN,
    RAW_ROWS_DROPPED,
    RAW_PARTITIONS_CREATED,
    RAW_PARTITIONS_DROPPED,
    RECONNECTS,
    CONNECTIONS_REFUSED,
    PROCESS_CPU,
    PROCESS_RSS,
    PROCESS_VIRTUAL_MEMORY,
    PROCESS_OPEN_FDS,
    PROCESS_MAX_FDS,
    PROCESS_START_TIME,
    PROCESS_THREADS,
    BUILD_INFO,
];

/// Events accepted by ingest and written by the sink, shared by the stages
/// so that a forced exit (a second SIGTERM/SIGINT during a graceful stop)
/// can say how many accepted events it leaves unwritten.
#[derive(Debug, Default)]
pub struct Progress {
    accepted: std::sync::atomic::AtomicU64,
    written: std::sync::atomic::AtomicU64,
}

impl Progress {
    /// Ingest accepted `n` more events into the rollups.
    pub fn accepted(&self, n: u64) {
        self.accepted.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// The sink wrote `n` more events.
    pub fn written(&self, n: u64) {
        self.written.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Accepted events not written yet (ingest counts at most 200 ms late).
    pub fn unwritten(&self) -> u64 {
        use std::sync::atomic::Ordering::Relaxed;
        self.accepted.load(Relaxed).saturating_sub(self.written.load(Relaxed))
    }
}

/// How logs are written (the `log-format` key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Buckets of [`FLUSH_DURATION`], in seconds.
pub const FLUSH_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Describes every metric (type, unit, help) with the installed recorder.
pub fn describe() {
    describe_counter!(MESSAGES_RECEIVED, Unit::Count, "Messages taken off the SUB sockets, valid or not.");
    describe_counter!(EVENTS_ACCEPTED, Unit::Count, "Valid, sampled, in-window events counted into the rollups.");
    describe_counter!(MESSAGES_INVALID, Unit::Count, "Invalid messages dropped, by reason.");
    describe_counter!(EVENTS_SAMPLED_OUT, Unit::Count, "Valid events outside the transaction sample.");
    describe_counter!(EVENTS_REJECTED, Unit::Count, "Valid events rejected for their event time (late, future).");
    describe_counter!(MESSAGES_LOST, Unit::Count, "Messages lost between publishers and the logger, from seq gaps.");
    describe_counter!(PUBLISHER_RESTARTS, Unit::Count, "Publisher restarts seen (seq going backwards).");
    describe_counter!(SEQ_RESETS, Unit::Count, "seq jumps forward larger than max-seq-jump (resets, not losses).");
    describe_counter!(SEQ_PUBLISHERS_EVICTED, Unit::Count, "Publishers dropped from seq tracking (bounded memory).");
    describe_counter!(
        PARTITION_MISMATCH,
        Unit::Count,
        "Events whose topic partition is not fnv1a64(txn) mod partition-count."
    );
    describe_gauge!(FLUSH_INTERVAL, Unit::Seconds, "The configured flush interval.");
    describe_gauge!(LIVE_KEYS, Unit::Count, "Distinct rollup keys held in memory.");
    describe_counter!(OVERFLOW_FOLDED, Unit::Count, "Events folded into other/-1 by a cardinality cap.");
    describe_histogram!(FLUSH_DURATION, Unit::Seconds, "Time a successful flush took (both tables).");
    describe_counter!(ROWS_UPSERTED, Unit::Count, "Rollup rows inserted or updated, by table.");
    describe_counter!(EVENTS_FLUSHED, Unit::Count, "Events written to both rollup tables.");
    describe_counter!(FLUSH_FAILURES, Unit::Count, "Flush attempts that failed and will be retried.");
    describe_gauge!(PENDING_BATCHES, Unit::Count, "Batches waiting to be written (queued and in flight).");
    describe_gauge!(PENDING_EVENTS, Unit::Count, "Events accepted but not yet written.");
    describe_gauge!(LAST_FLUSH, Unit::Seconds, "Unix time of the last successful flush.");
    describe_counter!(RAW_ROWS_WRITTEN, Unit::Count, "Raw rows written to events_sample.");
    describe_counter!(RAW_ROWS_DROPPED, Unit::Count, "Raw rows dropped, by reason (buffer_full, expired).");
    describe_counter!(RAW_PARTITIONS_CREATED, Unit::Count, "Daily events_sample partitions created.");
    describe_counter!(RAW_PARTITIONS_DROPPED, Unit::Count, "Daily events_sample partitions dropped by retention.");
    describe_counter!(
        RECONNECTS,
        Unit::Count,
        "Publisher endpoints connected again when libzmq was not reconnecting them."
    );
    describe_counter!(CONNECTIONS_REFUSED, Unit::Count, "Connections to a bound socket refused by the allow-list.");
    describe_gauge!(BUILD_INFO, Unit::Count, "Always 1; the version is a label.");
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// Installs the Prometheus exporter serving `/metrics` on `addr` and
/// describes every metric. Must be called inside a tokio runtime.
pub fn install_exporter(addr: SocketAddr) -> Result<(), metrics_exporter_prometheus::BuildError> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(metrics_exporter_prometheus::Matcher::Full(FLUSH_DURATION.into()), FLUSH_BUCKETS)?
        .install()?;
    describe();
    Ok(())
}

/// Sets up `tracing` on stderr; the filter comes from `RUST_LOG`, else `default`
/// (e.g. `info`). PostgreSQL's notices (logged by tokio-postgres) are kept
/// out unless `RUST_LOG` asks for them.
pub fn init_logging(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{default},tokio_postgres=warn")));
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colour_wanted());
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Colour codes only for a person at a terminal: never into a pipe, a file
/// or journald (where they arrive as literal escape sequences), and never
/// when `NO_COLOR` is set to anything (<https://no-color.org>).
fn colour_wanted() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Collects the standard `process_*` metrics every second (the exporter
/// renders only what is recorded, so they are sampled into it).
pub async fn sample_process_metrics() {
    let collector = metrics_process::Collector::default();
    collector.describe();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        collector.collect();
    }
}
