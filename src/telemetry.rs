//! Every metric the logger exports, described once, and logging set-up.
//!
//! Dashboards, alerts, docs/metrics.md and the tests use exactly these names.
//! Labels come only from small fixed sets (`event_type`, `reason`, `table`).

use metrics::Unit;
use std::net::SocketAddr;

/// The git commit this build comes from (`unknown` outside a checkout).
pub const COMMIT: &str = env!("BUILD_GIT_COMMIT");

/// What `--version` prints after the name: `0.1.0 (commit 1a2b3c4d5e6f)`.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("BUILD_GIT_COMMIT"), ")");

/// The one table of metrics: each row names a metric once and generates its
/// constant (documented by its help text), its entry in [`ALL`] and its
/// description in [`describe`].
macro_rules! metrics_table {
    ($($kind:ident $name:ident = $metric:literal, $unit:ident, $help:literal;)*) => {
        $(
            #[doc = $help]
            pub const $name: &str = $metric;
        )*

        /// Every metric name, in table order (documentation checks use it).
        pub const ALL: &[&str] = &[$($name),*];

        /// Describes every metric (type, unit, help) with the installed
        /// recorder. The `process_*` family is described by `metrics-process`.
        pub fn describe() {
            $(metrics_table!(@describe $kind $name, $unit, $help);)*
            metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "commit" => COMMIT).set(1.0);
        }
    };
    (@describe counter $name:ident, $unit:ident, $help:literal) => {
        metrics::describe_counter!($name, Unit::$unit, $help)
    };
    (@describe gauge $name:ident, $unit:ident, $help:literal) => {
        metrics::describe_gauge!($name, Unit::$unit, $help)
    };
    (@describe histogram $name:ident, $unit:ident, $help:literal) => {
        metrics::describe_histogram!($name, Unit::$unit, $help)
    };
    (@describe process $name:ident, $unit:ident, $help:literal) => {};
}

/// Losses counted so far by this process.
static LOST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Counts `n` lost messages: `seq` gaps once the batch carrying their marks
/// has committed, events a previous run or a dead member left unwritten
/// once they are settled.
pub fn count_lost(n: u64) {
    if n > 0 {
        metrics::counter!(MESSAGES_LOST).increment(n);
        LOST.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What [`count_lost`] counted so far.
pub fn lost_counted() -> u64 {
    LOST.load(std::sync::atomic::Ordering::Relaxed)
}

metrics_table! {
    counter MESSAGES_RECEIVED = "bid_logger_messages_received_total", Count,
        "Messages taken off the SUB sockets, valid or not.";
    counter EVENTS_ACCEPTED = "bid_logger_events_accepted_total", Count,
        "Valid, sampled, in-window events counted into the rollups, by event_type.";
    counter MESSAGES_INVALID = "bid_logger_messages_invalid_total", Count,
        "Invalid messages dropped, by reason.";
    counter EVENTS_SAMPLED_OUT = "bid_logger_events_sampled_out_total", Count,
        "Valid events outside the transaction sample.";
    counter EVENTS_REJECTED = "bid_logger_events_rejected_total", Count,
        "Valid events rejected for their event time, by reason (late, future).";
    counter MESSAGES_LOST = "bid_logger_messages_lost_total", Count,
        "Messages lost between publishers and the logger, from seq gaps (across restarts and handovers too), plus events received but not written before a crash.";
    counter MESSAGES_UNOWNED = "bid_logger_messages_unowned_total", Count,
        "Messages of partitions this fleet member no longer owns (in flight when it unsubscribed), left to the new owner.";
    counter HANDOVER_MESSAGES = "bid_logger_handover_messages_total", Count,
        "Messages of partitions claimed from another member, buffered until the lease was passed, by outcome: replayed (above the giver's marks), duplicate (the giver counted them), unsequenced (no pub/seq: the giver's), overflowed (not buffered: the buffer limit was reached; counted as lost at the replay).";
    gauge BUFFERED_BYTES = "bid_logger_handover_buffered_bytes", Bytes,
        "Bytes of messages buffered for partitions this fleet member is about to take over (claims), or keeps as a hot standby.";
    gauge OWNED_PARTITIONS = "bid_logger_owned_partitions", Count,
        "Partitions whose lease this fleet member holds, by group.";
    gauge GROUP_PARTITIONS = "bid_logger_group_partitions", Count,
        "Partitions a fleet member's group divides (partition-count), by group: the sum of the members' owned partitions once every lease is held.";
    counter LEASE_TAKEOVERS = "bid_logger_lease_takeovers_total", Count,
        "Partition leases this member took over after they expired (their owner died or froze).";
    counter COORDINATOR_RETRIES = "bid_logger_coordinator_retries_total", Count,
        "Fleet heartbeats that failed or waited past their bound (a third of lease-ttl) and were retried: the database was down, slow or busy with the group's locks.";
    counter FENCED = "bid_logger_fenced_total", Count,
        "Times this member found its leases taken (frozen past lease-ttl) and dropped what it held.";
    counter PUBLISHER_RESTARTS = "bid_logger_publisher_restarts_total", Count,
        "Publisher restarts seen (seq going backwards).";
    counter SEQ_RESETS = "bid_logger_seq_resets_total", Count,
        "seq jumps forward larger than max-seq-jump (sequence resets, not losses).";
    counter SEQ_PUBLISHERS_EVICTED = "bid_logger_seq_publishers_evicted_total", Count,
        "Publishers dropped from seq tracking to keep its memory bounded.";
    counter PARTITION_MISMATCH = "bid_logger_partition_mismatch_total", Count,
        "Events whose topic partition is not fnv1a64(txn) mod partition-count.";
    gauge FLUSH_INTERVAL = "bid_logger_flush_interval_seconds", Seconds,
        "The configured flush interval (alert thresholds follow it).";
    gauge LIVE_KEYS = "bid_logger_live_keys", Count,
        "Distinct rollup keys held in memory, by ingest and by the sink's pending batch.";
    counter OVERFLOW_FOLDED = "bid_logger_overflow_folded_events_total", Count,
        "Events folded into other/-1 by a cardinality cap.";
    histogram FLUSH_DURATION = "bid_logger_flush_duration_seconds", Seconds,
        "Time a successful flush took (every direct table, the delta logs and the raw sample).";
    counter ROWS_UPSERTED = "bid_logger_rows_upserted_total", Count,
        "Rollup rows inserted or updated, by table.";
    counter EVENTS_FLUSHED = "bid_logger_events_flushed_total", Count,
        "Events written to PostgreSQL (each event once, whatever the number of tables).";
    counter FLUSH_FAILURES = "bid_logger_flush_failures_total", Count,
        "Flush attempts that failed and will be retried.";
    gauge PENDING_BATCHES = "bid_logger_pending_batches", Count,
        "Batches waiting to be written (queued and in flight).";
    gauge PENDING_EVENTS = "bid_logger_pending_events", Count,
        "Events accepted but not yet written.";
    gauge LAST_FLUSH = "bid_logger_last_flush_timestamp_seconds", Seconds,
        "Unix time of the last successful flush.";
    counter RAW_ROWS_WRITTEN = "bid_logger_raw_rows_written_total", Count,
        "Raw rows written to events_sample.";
    counter RAW_ROWS_DROPPED = "bid_logger_raw_rows_dropped_total", Count,
        "Raw rows dropped, by reason (buffer_full, expired).";
    counter RAW_PARTITIONS_CREATED = "bid_logger_raw_partitions_created_total", Count,
        "Day tables (PostgreSQL partitions) of events_sample created.";
    counter RAW_PARTITIONS_DROPPED = "bid_logger_raw_partitions_dropped_total", Count,
        "Day tables (PostgreSQL partitions) of events_sample dropped by retention.";
    counter ROLLUP_PARTITIONS_CREATED = "bid_logger_rollup_partitions_created_total", Count,
        "Time-range partitions of the rollup tables created (ahead of time or for late events), by table.";
    counter ROLLUP_PARTITIONS_DROPPED = "bid_logger_rollup_partitions_dropped_total", Count,
        "Time-range partitions of the rollup tables dropped by their retention, by table.";
    counter MAINTENANCE_FAILURES = "bid_logger_maintenance_failures_total", Count,
        "Rounds of range maintenance (retention, ranges ahead of time) that failed; each is retried after a backoff.";
    gauge LAST_MAINTENANCE = "bid_logger_last_maintenance_timestamp_seconds", Seconds,
        "Unix time of the last round of range maintenance that succeeded (at start-up, then every 15 minutes).";
    counter ROLLUP_EVENTS_EXPIRED = "bid_logger_rollup_events_expired_total", Count,
        "Accepted events not added to a rollup table because their bucket is past its retention, by table (coarser tables still get them).";
    counter LOG_EVENTS_CONSUMED = "bid_logger_log_events_consumed_total", Count,
        "Events moved from a coarse table's delta log into the table, by table.";
    gauge LOG_LAST_CONSUMED = "bid_logger_log_last_consumed_timestamp_seconds", Seconds,
        "Unix time a coarse table's delta log was last consumed, by table.";
    counter LOG_FAILURES = "bid_logger_log_consume_failures_total", Count,
        "Attempts to consume a coarse table's delta log that failed and will be retried, by table.";
    gauge ENDPOINT_CONNECTED = "bid_logger_endpoint_connected", Count,
        "Per `connect` endpoint: the ingest threads whose socket is connected to it now (0: the publisher is down or unreachable).";
    counter ENDPOINT_MESSAGES = "bid_logger_endpoint_messages_total", Count,
        "Per `connect` or `bind` endpoint: messages received from it (each is one SUB socket per ingest thread).";
    counter RECONNECTS = "bid_logger_reconnects_total", Count,
        "Publisher endpoints connected again when libzmq was not reconnecting them 250 ms after a drop.";
    counter CONNECTIONS_REFUSED = "bid_logger_connections_refused_total", Count,
        "Connections to a bound socket refused by the address allow-list.";
    process PROCESS_CPU = "process_cpu_seconds_total", Seconds,
        "CPU time of the process (the standard process_* family, from /proc/self by metrics-process).";
    process PROCESS_RSS = "process_resident_memory_bytes", Bytes,
        "Resident set size of the process.";
    process PROCESS_VIRTUAL_MEMORY = "process_virtual_memory_bytes", Bytes,
        "Virtual memory size of the process.";
    process PROCESS_OPEN_FDS = "process_open_fds", Count,
        "Open file descriptors (sockets included).";
    process PROCESS_MAX_FDS = "process_max_fds", Count,
        "The file-descriptor limit.";
    process PROCESS_START_TIME = "process_start_time_seconds", Seconds,
        "Unix time the process started.";
    process PROCESS_THREADS = "process_threads", Count,
        "OS threads of the process.";
    gauge BUILD_INFO = "bid_logger_build_info", Count,
        "Always 1; the version and the git commit are labels.";
}

/// Messages received, events accepted by ingest and events written by the
/// sink, shared by the stages so that a forced exit (a second SIGTERM/SIGINT
/// during a graceful stop) can say how many accepted events it leaves
/// unwritten, and so that an embedding program (the demo) can follow a run
/// without scraping its own metrics.
#[derive(Debug, Default)]
pub struct Progress {
    received: std::sync::atomic::AtomicU64,
    accepted: std::sync::atomic::AtomicU64,
    written: std::sync::atomic::AtomicU64,
}

impl Progress {
    /// Ingest took `n` more messages off its sockets.
    pub fn received(&self, n: u64) {
        self.received.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Messages received so far (ingest counts at most 200 ms late).
    pub fn messages_received(&self) -> u64 {
        self.received.load(std::sync::atomic::Ordering::Relaxed)
    }

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
