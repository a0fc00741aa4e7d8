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
/// constant (documented by its help text), its entry in [`ALL`] and
/// [`TABLE`], and its description in [`describe`]. A row: kind (a
/// `process_*` one is exported by `metrics-process`), constant, name, unit,
/// labels (as the docs say them), help.
macro_rules! metrics_table {
    ($($kind:ident $name:ident = $metric:literal, $unit:ident, $labels:literal, $help:literal;)*) => {
        $(
            #[doc = $help]
            pub const $name: &str = $metric;
        )*

        /// Every metric name, in table order (documentation checks use it).
        pub const ALL: &[&str] = &[$($name),*];

        /// Every metric: name, type, labels, help (what docs/metrics.md's
        /// table is generated from, see [`reference_table`]).
        pub const TABLE: &[(&str, &str, &str, &str)] = &[$(
            ($metric, metrics_table!(@type $kind), $labels, $help)
        ),*];

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
    (@describe process_gauge $name:ident, $unit:ident, $help:literal) => {};
    (@describe process_counter $name:ident, $unit:ident, $help:literal) => {};
    (@type process_gauge) => { "gauge" };
    (@type process_counter) => { "counter" };
    (@type $kind:ident) => { stringify!($kind) };
}

/// The metrics table of `docs/metrics.md`, generated from [`TABLE`]
/// (`bid-logger-tools docs` writes it; the docs tests fail when the page
/// differs).
pub fn reference_table() -> String {
    let mut out = String::from("| metric | type | labels | meaning |\n|---|---|---|---|\n");
    for (name, kind, labels, help) in TABLE {
        let help = help.strip_suffix('.').unwrap_or(help);
        out += &format!("| `{name}` | {kind} | {labels} | {help} |\n");
    }
    out
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
    counter MESSAGES_RECEIVED = "bid_logger_messages_received_total", Count, "",
        "Messages taken off the SUB sockets, valid or not.";
    counter EVENTS_ACCEPTED = "bid_logger_events_accepted_total", Count, "`event_type`",
        "Valid, sampled, in-window events counted into the rollups.";
    counter MESSAGES_INVALID = "bid_logger_messages_invalid_total", Count, "`reason` = `frames`, `topic`, `too_large`, `malformed`, `not_map`, `missing_field`, `wrong_type`, `out_of_range`, `type_mismatch`, `invalid_utf8`, `partition_mismatch`",
        "Invalid messages dropped (reasons in [`docs/wire-format.md`](wire-format.md#invalid-messages)).";
    counter EVENTS_SAMPLED_OUT = "bid_logger_events_sampled_out_total", Count, "",
        "Valid events outside the sample (within subscribed partitions).";
    counter EVENTS_REJECTED = "bid_logger_events_rejected_total", Count, "`reason` = `late`, `future`",
        "Events outside the accepted event-time window.";
    counter MESSAGES_LOST = "bid_logger_messages_lost_total", Count, "",
        "Messages lost between publishers and the logger (`seq` gaps per publisher and topic, including the gap across a restart, a handover or a takeover), plus events a killed instance or member received but did not write (counted by whoever settles it: the restart, or the member that finds its lease expired). A gap is counted once the batch carrying its marks commits (within a flush): a gap whose marks never commit (a kill, a fence) is counted by whoever next starts from the committed marks, not twice.";
    counter MESSAGES_UNOWNED = "bid_logger_messages_unowned_total", Count, "",
        "Fleet members: messages of partitions no longer owned (in flight when it unsubscribed), left to the new owner.";
    counter HANDOVER_MESSAGES = "bid_logger_handover_messages_total", Count, "`outcome` = `replayed`, `duplicate`, `unsequenced`, `overflowed`",
        "Fleet members: messages of claimed partitions (or kept as a hot standby) buffered until the lease came to this member: replayed above the previous owner's marks, dropped at or below them (it wrote them), dropped without `pub`/`seq` or invalid (the previous owner's), or not buffered because the claim buffer (256 MiB) or `standby-memory` was full (their gap is counted as lost if they were needed).";
    gauge BUFFERED_BYTES = "bid_logger_handover_buffered_bytes", Bytes, "",
        "Fleet members: bytes of messages buffered for claimed partitions, or kept as a hot standby.";
    gauge OWNED_PARTITIONS = "bid_logger_owned_partitions", Count, "`group`",
        "Fleet members: partitions whose lease this member holds.";
    gauge GROUP_PARTITIONS = "bid_logger_group_partitions", Count, "`group`",
        "Fleet members: the partitions the group divides (`partition-count`); the members' owned partitions add up to it once every lease is held.";
    counter LEASE_TAKEOVERS = "bid_logger_lease_takeovers_total", Count, "",
        "Fleet members: leases taken over after they expired (their owner died or froze).";
    counter COORDINATOR_RETRIES = "bid_logger_coordinator_retries_total", Count, "",
        "Fleet members: heartbeats that failed or waited past their bound (a third of `lease-ttl`) and were retried: the database down, slow, or busy with the group's locks.";
    counter FENCED = "bid_logger_fenced_total", Count, "",
        "Fleet members: times this member found its leases taken (frozen past `lease-ttl`) and dropped what it had gathered.";
    counter PUBLISHER_RESTARTS = "bid_logger_publisher_restarts_total", Count, "",
        "`seq` going backwards (a publisher restart, not a loss).";
    counter SEQ_RESETS = "bid_logger_seq_resets_total", Count, "",
        "`seq` jumping forward by more than `max-seq-jump` (a reset or a bogus value, not a loss).";
    counter SEQ_PUBLISHERS_EVICTED = "bid_logger_seq_publishers_evicted_total", Count, "",
        "Publishers dropped from `seq` tracking to keep it bounded (10 000 publishers, 200 000 sequences; single-message publishers go first).";
    counter PARTITION_MISMATCH = "bid_logger_partition_mismatch_total", Count, "",
        "Events whose topic partition is not `fnv1a64(txn) mod partition-count` (publishers using another count); kept when the instance takes every partition and the event's type is at rate 1, dropped as `partition_mismatch` otherwise.";
    gauge FLUSH_INTERVAL = "bid_logger_flush_interval_seconds", Seconds, "",
        "The configured `flush-interval` (the `BidLoggerNoFlush` threshold follows it).";
    gauge LIVE_KEYS = "bid_logger_live_keys", Count, "",
        "Distinct rollup keys in memory (ingest tables + pending batches).";
    counter OVERFLOW_FOLDED = "bid_logger_overflow_folded_events_total", Count, "",
        "Events folded into `other`/`-1` by a cardinality cap.";
    counter LANDSCAPE_PAIRED = "bid_logger_landscape_paired_total", Count, "",
        "Wins and losses paired with their transaction's bid for the bid landscapes (tables with the `bid_price` dimension).";
    counter LANDSCAPE_UNPAIRED = "bid_logger_landscape_unpaired_total", Count, "`reason` = `no_outcome`, `no_bid`, `full`, `handover`, `stopped`",
        "Bids and outcomes that left the landscapes' pairing without their other half: a bid with no win or loss within `landscape-window`, a win or loss with no bid, one not kept because `landscape-max-pending` were waiting, one waiting in a partition a fleet member handed over or lost to a fence, or one waiting at a stop. The events themselves are in every rollup.";
    gauge LANDSCAPE_WAITING = "bid_logger_landscape_waiting", Count, "",
        "Bids and outcomes waiting for their other half in memory (bounded by `landscape-max-pending` per ingest thread).";
    counter CLICKS_PAIRED = "bid_logger_clicks_paired_total", Count, "",
        "Clicks paired with their transaction's impression for the timing tables (tables with the `delay` dimension).";
    counter CLICKS_UNPAIRED = "bid_logger_clicks_unpaired_total", Count, "`reason` = `no_impression`, `full`, `handover`, `stopped`",
        "Clicks that left the timing tables' pairing without their impression: no impression within `landscape-window` (before or after), not kept because `landscape-max-pending` were waiting, waiting in a partition a fleet member handed over or lost to a fence, or waiting at a stop. Impressions never clicked are not counted. The events themselves are in every rollup.";
    counter IMPRESSIONS_UNKEPT = "bid_logger_impressions_unkept_total", Count, "",
        "Impressions the timing tables' pairing could not keep because `landscape-max-pending` were waiting: their clicks, if any, are counted in `bid_logger_clicks_unpaired_total` when they leave.";
    gauge CLICKS_WAITING = "bid_logger_clicks_waiting", Count, "",
        "Impressions (for the window, for their clicks) and clicks (for their impression) in memory for the timing tables (bounded by `landscape-max-pending` per ingest thread).";
    histogram FLUSH_DURATION = "bid_logger_flush_duration_seconds", Seconds, "",
        "Duration of successful flushes (one transaction: the live rows, the delta logs, the raw sample; buckets 1 ms … 30 s).";
    counter ROWS_UPSERTED = "bid_logger_rows_upserted_total", Count, "`table` = each rollup table",
        "Rows inserted or updated in a table's merged and recent rows, by its folds and consumptions (a batch only appends).";
    counter EVENTS_FLUSHED = "bid_logger_events_flushed_total", Count, "",
        "Events written: in every table's delta log (and a direct table's live rows), in one transaction (each event counted once).";
    counter FLUSH_FAILURES = "bid_logger_flush_failures_total", Count, "",
        "Failed flush attempts (each is retried).";
    gauge PENDING_BATCHES = "bid_logger_pending_batches", Count, "",
        "Batches waiting for the database (queued and in flight).";
    gauge PENDING_EVENTS = "bid_logger_pending_events", Count, "",
        "Accepted events not yet written.";
    gauge LAST_FLUSH = "bid_logger_last_flush_timestamp_seconds", Seconds, "",
        "Unix time of the last successful flush.";
    counter RAW_ROWS_WRITTEN = "bid_logger_raw_rows_written_total", Count, "",
        "Rows written to `events_sample`.";
    counter RAW_ROWS_DROPPED = "bid_logger_raw_rows_dropped_total", Count, "`reason` = `buffer_full`, `expired`",
        "Raw rows not written: buffer full while the database was behind, or already past `raw-retention`.";
    counter RAW_PARTITIONS_CREATED = "bid_logger_raw_partitions_created_total", Count, "",
        "Daily `events_sample` partitions created.";
    counter RAW_PARTITIONS_DROPPED = "bid_logger_raw_partitions_dropped_total", Count, "",
        "Daily partitions dropped by retention.";
    counter ROLLUP_PARTITIONS_CREATED = "bid_logger_rollup_partitions_created_total", Count, "`table`",
        "Time-range partitions of a rollup table created (ahead of time, or for late events).";
    counter ROLLUP_PARTITIONS_DROPPED = "bid_logger_rollup_partitions_dropped_total", Count, "`table`",
        "Time-range partitions of a rollup table dropped by its `retention`.";
    counter MAINTENANCE_FAILURES = "bid_logger_maintenance_failures_total", Count, "",
        "Rounds of range maintenance (retention, ranges ahead of time) that failed; retried after a backoff.";
    gauge LAST_MAINTENANCE = "bid_logger_last_maintenance_timestamp_seconds", Seconds, "",
        "Unix time of the last successful round of range maintenance (at start-up, then every 15 minutes, idle or not).";
    counter ROLLUP_EVENTS_EXPIRED = "bid_logger_rollup_events_expired_total", Count, "`table`",
        "Accepted events not added to a table because their bucket is past its `retention` (coarser tables with a longer retention still get them).";
    counter LOG_EVENTS_CONSUMED = "bid_logger_log_events_consumed_total", Count, "`table`",
        "Events moved from a coarse table's delta log into the table.";
    gauge LOG_LAST_CONSUMED = "bid_logger_log_last_consumed_timestamp_seconds", Seconds, "`table`",
        "Unix time a coarse table's delta log was last consumed.";
    counter LOG_FAILURES = "bid_logger_log_consume_failures_total", Count, "`table`",
        "Failed attempts to consume a delta log (retried; its rows stay in the log).";
    gauge ENDPOINT_CONNECTED = "bid_logger_endpoint_connected", Count, "`endpoint` (each `connect` endpoint, as configured)",
        "The ingest threads connected to that publisher now: `ingest-threads` when it is up, 0 when it is down, refused or unreachable (from libzmq's socket monitor; a log line says when an endpoint connects or drops, and when one connected has sent nothing for `endpoint-quiet-after`).";
    counter ENDPOINT_MESSAGES = "bid_logger_endpoint_messages_total", Count, "`endpoint` (each `connect` and `bind` endpoint, as configured)",
        "Messages received from that endpoint, valid or not (each ingest thread has one SUB socket per endpoint, so the count is exact); summed over endpoints it is `bid_logger_messages_received_total`.";
    counter RECONNECTS = "bid_logger_reconnects_total", Count, "",
        "Publisher endpoints connected again by the logger, when libzmq was not reconnecting a dropped connection 250 ms later (it does not reconnect by itself after a protocol error such as a message over `max-message-size`).";
    counter CONNECTIONS_REFUSED = "bid_logger_connections_refused_total", Count, "",
        "Connections to a bound endpoint refused by `allow`.";
    process_gauge PROCESS_CPU = "process_cpu_seconds_total", Seconds, "",
        "CPU time (user + system) used by the process, in fractional seconds (a gauge: the `metrics` crate's counters are whole numbers, which read 0 for a lightly loaded process; `rate()` works on it as on a counter).";
    process_gauge PROCESS_RSS = "process_resident_memory_bytes", Bytes, "",
        "Resident set size.";
    process_gauge PROCESS_VIRTUAL_MEMORY = "process_virtual_memory_bytes", Bytes, "",
        "Virtual memory size.";
    process_gauge PROCESS_OPEN_FDS = "process_open_fds", Count, "",
        "Open file descriptors (sockets included).";
    process_gauge PROCESS_MAX_FDS = "process_max_fds", Count, "",
        "The file-descriptor limit.";
    process_gauge PROCESS_START_TIME = "process_start_time_seconds", Seconds, "",
        "Unix time the process started.";
    process_gauge PROCESS_THREADS = "process_threads", Count, "",
        "OS threads.";
    gauge BUILD_INFO = "bid_logger_build_info", Count, "`version`, `commit`",
        "Always 1 (`bid-logger --version` prints both too).";
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
