//! Configuration: one set of keys shared by the TOML file, the command-line
//! flags and the `BID_LOGGER_*` environment variables (flag > environment >
//! file > default), validated into each stage's own config.
//!
//! Every key is optional in [`Settings`]; [`Settings::resolve`] fills in the
//! defaults and turns the strings into typed values, failing with a
//! [`ConfigError`] that names the offending key.

use crate::db::tables::RollupTable;
use crate::ingest::{self, IngestConfig};
use crate::sink::{self, SinkConfig};
use bid_logger_core::aggregate::{self, AggregateConfig, Dimension, Dimensions, Grain, Shape};
use bid_logger_core::sample::{parse_type_rates, Rate};
use bid_logger_core::wire::{EventType, MAX_PARTITIONS};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key's value is missing or invalid.
    #[error("invalid configuration: `{key}`: {message}")]
    Invalid {
        /// The key, as spelled in the file (the flag is `--<key>`), or
        /// `rollup.<table>.<key>` for a rollup table's.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown key.
    #[error("invalid configuration file {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message, on one line.
        message: String,
    },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), message: message.into() }
}

/// Every setting of `bid-logger run`, all optional. The same struct is the
/// file's schema (kebab-case keys) and the command line's flags.
#[derive(Debug, Clone, Default, Serialize, Deserialize, clap::Args)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Settings {
    /// Publisher endpoints to connect to (repeatable / comma-separated), each checked at start as libzmq takes it:
    /// `tcp://host:port`, `ipc://path`, `inproc://name`, `pgm://`, `epgm://`. Required unless `bind` is set. A port on
    /// this host in the kernel's ephemeral range is warned about at start (docs/runbook.md, BidLoggerPublisherDown).
    #[arg(long, env = "BID_LOGGER_CONNECT", value_delimiter = ',', value_name = "ENDPOINT")]
    pub connect: Option<Vec<String>>,
    /// Endpoints to bind instead (XPUB/XSUB forwarder set-ups).
    #[arg(long, env = "BID_LOGGER_BIND", value_delimiter = ',', value_name = "ENDPOINT")]
    pub bind: Option<Vec<String>>,
    /// With `bind`: peers allowed to connect, IPs or CIDR networks (`10.0.0.0/8`); others are refused by a ZeroMQ ZAP
    /// handler and counted [default: any].
    #[arg(long, env = "BID_LOGGER_ALLOW", value_delimiter = ',', value_name = "NETWORK")]
    pub allow: Option<Vec<String>>,
    /// PostgreSQL URL or key=value string; logs and `check-config` show it rendered again from what was parsed,
    /// without the password. Required; `DATABASE_URL` is read when it is not set anywhere.
    #[arg(long, env = "BID_LOGGER_DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
    /// The fleet-wide partition count P the publishers use (1–10000) [default: 64].
    #[arg(long, env = "BID_LOGGER_PARTITION_COUNT", value_name = "P")]
    pub partition_count: Option<u32>,
    /// This instance's partitions, e.g. `0-15,32`; several instances split the fleet by giving each its own (or use
    /// `group`) [default: all].
    #[arg(long, env = "BID_LOGGER_PARTITIONS", value_name = "LIST")]
    pub partitions: Option<String>,
    /// A fleet: the instances of one group and database divide the partitions between themselves through leases in
    /// PostgreSQL (see docs/fleet.md); `partitions` must then stay `all` [default: none].
    #[arg(long, env = "BID_LOGGER_GROUP", value_name = "NAME")]
    pub group: Option<String>,
    /// How long a fleet member's unrenewed lease lasts (renewed every third of it); a dead member's partitions are
    /// taken over within 2 × `lease-ttl` [default: 6s].
    #[arg(long, env = "BID_LOGGER_LEASE_TTL", value_name = "DURATION")]
    pub lease_ttl: Option<String>,
    /// With `group`: bytes this member keeps of the partitions it does not own, as a hot standby (their last 2 ×
    /// `lease-ttl` + `flush-interval`), so that a dead member's partitions lose nothing (see docs/fleet.md); 0: no
    /// standby; at least 1 MiB otherwise [default: 0].
    #[arg(long, env = "BID_LOGGER_STANDBY_MEMORY", value_name = "BYTES")]
    pub standby_memory: Option<usize>,
    /// Event types to subscribe to, e.g. `bid,win,impression` [default: all].
    #[arg(long, env = "BID_LOGGER_EVENT_TYPES", value_name = "LIST")]
    pub event_types: Option<String>,
    /// Rollup sampling rate by transaction (`1`, `1/8`, `0.125`); see docs/warehouse.md#sampling [default: 1].
    #[arg(long, env = "BID_LOGGER_SAMPLE", value_name = "RATE")]
    #[serde(default, deserialize_with = "rate_text")]
    pub sample: Option<String>,
    /// A rollup rate of its own for some event types, e.g. `auction=1/64,loss=1/8` (the others stay at `sample`):
    /// each type is sampled by transaction on its own partitions, and its rows carry its rate in `sample_ppm`; see
    /// docs/warehouse.md#sampling-per-event-type [default: none].
    #[arg(long, env = "BID_LOGGER_SAMPLE_BY_TYPE", value_name = "LIST")]
    pub sample_by_type: Option<String>,
    /// How often a batch is written [default: 1s].
    #[arg(long, env = "BID_LOGGER_FLUSH_INTERVAL", value_name = "DURATION")]
    pub flush_interval: Option<String>,
    /// Prometheus endpoint (`/metrics`); localhost only by default [default: 127.0.0.1:9464].
    #[arg(long, env = "BID_LOGGER_METRICS_ADDR", value_name = "ADDR")]
    pub metrics_addr: Option<String>,
    /// Events older than this (event time vs. now) are rejected and counted [default: 7d].
    #[arg(long, env = "BID_LOGGER_MAX_LATENESS", value_name = "DURATION")]
    pub max_lateness: Option<String>,
    /// Events further in the future are rejected and counted [default: 5m].
    #[arg(long, env = "BID_LOGGER_MAX_FUTURE_SKEW", value_name = "DURATION")]
    pub max_future_skew: Option<String>,
    /// Distinct rollup keys held per ingest thread between flushes; new keys beyond it fold into os `other`,
    /// campaign/advertiser `-1` [default: 1000000].
    #[arg(long, env = "BID_LOGGER_MAX_LIVE_KEYS", value_name = "N")]
    pub max_live_keys: Option<usize>,
    /// Distinct OS strings per flush interval; more fold into `other` (1–4000) [default: 1000].
    #[arg(long, env = "BID_LOGGER_MAX_OS_VALUES", value_name = "N")]
    pub max_os_values: Option<usize>,
    /// Distinct exchange strings per flush interval; more fold into `other` (1–4000) [default: 1000].
    #[arg(long, env = "BID_LOGGER_MAX_EXCHANGE_VALUES", value_name = "N")]
    pub max_exchange_values: Option<usize>,
    /// With a bid landscape or a timing table declared (a table with the `bid_price` or `delay` dimension): how
    /// long a bid waits in memory for its transaction's win or loss, and an outcome for its bid (for a timing table,
    /// an impression for its clicks, and a click for its impression), before it leaves unpaired (counted) [default:
    /// 1m].
    #[arg(long, env = "BID_LOGGER_LANDSCAPE_WINDOW", value_name = "DURATION")]
    pub landscape_window: Option<String>,
    /// With a bid landscape or a timing table declared: transactions waiting for their other half per ingest thread
    /// and pairing at most (about 170 bytes each with the hash table's room); one more is not kept (counted)
    /// [default: 1000000].
    #[arg(long, env = "BID_LOGGER_LANDSCAPE_MAX_PENDING", value_name = "N")]
    pub landscape_max_pending: Option<usize>,
    /// ZMQ_RCVHWM, messages (0 = unlimited): libzmq applies it to each connection of each SUB socket (an ingest
    /// thread has one socket per endpoint) [default: 1000000].
    #[arg(long, env = "BID_LOGGER_RECEIVE_HWM", value_name = "N")]
    pub receive_hwm: Option<i32>,
    /// Hard limit on one frame, bytes (ZMQ_MAXMSGSIZE): libzmq disconnects a peer that sends more, and the logger
    /// reconnects it; a guard against hostile peers, at least `max-event-size` [default: 8388608].
    #[arg(long, env = "BID_LOGGER_MAX_MESSAGE_SIZE", value_name = "BYTES")]
    pub max_message_size: Option<i64>,
    /// Largest payload processed, bytes; a larger one is counted invalid (`too_large`) and dropped, costing no other
    /// message [default: 65536].
    #[arg(long, env = "BID_LOGGER_MAX_EVENT_SIZE", value_name = "BYTES")]
    pub max_event_size: Option<usize>,
    /// Largest forward `seq` jump on one publisher's topic counted as lost messages; a larger jump is a sequence
    /// reset (`bid_logger_seq_resets_total`) [default: 10000000].
    #[arg(long, env = "BID_LOGGER_MAX_SEQ_JUMP", value_name = "N")]
    pub max_seq_jump: Option<u64>,
    /// A `connect` endpoint that is connected but has sent nothing for this long is logged (a warning, once; an info
    /// line when it sends again); `0s`: never. Messages per endpoint are in `bid_logger_endpoint_messages_total`
    /// [default: 1m].
    #[arg(long, env = "BID_LOGGER_ENDPOINT_QUIET_AFTER", value_name = "DURATION")]
    pub endpoint_quiet_after: Option<String>,
    /// Receive threads, each with its own SUB socket per endpoint and a round-robin share of the partitions [default:
    /// 1].
    #[arg(long, env = "BID_LOGGER_INGEST_THREADS", value_name = "N")]
    pub ingest_threads: Option<usize>,
    /// This instance's name in the flush ledger; each instance needs its own (the example file leaves it commented
    /// for that reason) [default: the host name].
    #[arg(long, env = "BID_LOGGER_INSTANCE_ID", value_name = "NAME")]
    pub instance_id: Option<String>,
    /// PostgreSQL connections; a batch of ≥ 10 000 rows is written as this many parts in parallel (disjoint hour
    /// keys, each part its own transactions and ledger rows) [default: 2].
    #[arg(long, env = "BID_LOGGER_DB_POOL_SIZE", value_name = "N")]
    pub db_pool_size: Option<usize>,
    /// A flush attempt taking longer is abandoned (its connection closed) and retried; at least `100ms` [default:
    /// 30s].
    #[arg(long, env = "BID_LOGGER_FLUSH_TIMEOUT", value_name = "DURATION")]
    pub flush_timeout: Option<String>,
    /// How long a graceful stop keeps retrying the final flush [default: 30s].
    #[arg(long, env = "BID_LOGGER_SHUTDOWN_TIMEOUT", value_name = "DURATION")]
    pub shutdown_timeout: Option<String>,
    /// Distinct rows waiting while PostgreSQL is slow or down (same folding) [default: 2000000].
    #[arg(long, env = "BID_LOGGER_MAX_PENDING_ROWS", value_name = "N")]
    pub max_pending_rows: Option<usize>,
    /// Raw-event sample rate by transaction for `events_sample` (`0` = off); see docs/warehouse.md#raw-sample-events_sample
    /// [default: 1/1000].
    #[arg(long, env = "BID_LOGGER_RAW_SAMPLE", value_name = "RATE")]
    #[serde(default, deserialize_with = "rate_text")]
    pub raw_sample: Option<String>,
    /// Whole days of `events_sample` kept; older daily partitions are dropped by the logger [default: 7d].
    #[arg(long, env = "BID_LOGGER_RAW_RETENTION", value_name = "DURATION")]
    pub raw_retention: Option<String>,
    /// Raw rows held per ingest thread and in the sink's queue while PostgreSQL is behind; beyond it raw rows are
    /// dropped and counted (rollups stay exact) [default: 1000000].
    #[arg(long, env = "BID_LOGGER_RAW_BUFFER_ROWS", value_name = "N")]
    pub raw_buffer_rows: Option<usize>,
    /// `text` or `json` (structured logs on stderr; level from `RUST_LOG`, default `info`) [default: text].
    #[arg(long, env = "BID_LOGGER_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Rollup tables, `[rollup.<table>]` sections of the file only (see
    /// [`RollupSettings`]); the default set applies without them, and a
    /// section named like a default table overrides just the keys it sets.
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollup: Option<BTreeMap<String, RollupSettings>>,
}

/// One `[rollup.<table>]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RollupSettings {
    /// `minute`, `hour` or `day`.
    pub grain: Option<String>,
    /// A subset of `country`, `os`, `campaign`, `advertiser`, `exchange`.
    pub dimensions: Option<Vec<String>>,
    /// How often its rows are written (at least `flush-interval`).
    pub flush_interval: Option<String>,
    /// How long its buckets are kept; `0` = forever.
    pub retention: Option<String>,
    /// A direct table's fold interval (its live rows into its merged rows).
    pub fold_interval: Option<String>,
}

pub use crate::telemetry::LogFormat;

/// The validated configuration of `bid-logger run`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Sockets, partitions, sampling.
    pub ingest: IngestConfig,
    /// Time window and cardinality caps.
    pub aggregate: AggregateConfig,
    /// Database and flushing.
    pub sink: SinkConfig,
    /// Fleet membership (`None`: static partitions).
    pub fleet: Option<crate::fleet::FleetConfig>,
    /// Where /metrics is served.
    pub metrics_addr: SocketAddr,
    /// Log format.
    pub log_format: LogFormat,
}

impl Settings {
    /// Reads a TOML file of settings.
    pub fn from_file(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Settings::from_toml(&text).map_err(|message| ConfigError::Parse { path: path.display().to_string(), message })
    }

    /// Parses TOML text; the error is one line with the line number and,
    /// where the parser points into a `key = value` line, the key.
    pub fn from_toml(text: &str) -> Result<Settings, String> {
        toml::from_str(text).map_err(|e| {
            let message = e.message().trim().replace('\n', " ");
            let Some(span) = e.span() else { return message };
            let line_no = text[..span.start.min(text.len())].matches('\n').count() + 1;
            let line = text.lines().nth(line_no - 1).unwrap_or("");
            let key = line
                .split_once('=')
                .map(|(k, _)| k.trim())
                .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
            match key {
                Some(key) => format!("line {line_no}: `{key}`: {message}"),
                None => format!("line {line_no}: {message}"),
            }
        })
    }

    /// Overlays `self` (flags and environment) on `file`: a value set here
    /// wins. Key by key through serde, so a new key needs no code here.
    pub fn over(self, file: Settings) -> Settings {
        let as_map = |s: Settings| match serde_json::to_value(s) {
            Ok(serde_json::Value::Object(map)) => map,
            other => unreachable!("settings serialize to a map, got {other:?}"),
        };
        let mut merged = as_map(file);
        merged.extend(as_map(self).into_iter().filter(|(_, v)| !v.is_null()));
        serde_json::from_value(serde_json::Value::Object(merged)).expect("merged settings are settings")
    }

    /// The `flush-interval`, validated.
    pub fn flush_interval(&self) -> Result<Duration, ConfigError> {
        let flush_interval = duration("flush-interval", self.flush_interval.as_deref(), sink::DEFAULT_FLUSH_INTERVAL)?;
        if flush_interval < Duration::from_millis(10) {
            return Err(invalid("flush-interval", "must be at least 10ms"));
        }
        Ok(flush_interval)
    }

    /// Fills in defaults and validates every key.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let flush_interval = self.flush_interval()?;
        let connect = self.connect.unwrap_or_default();
        let bind = self.bind.unwrap_or_default();
        for (key, endpoints) in [("connect", &connect), ("bind", &bind)] {
            for e in endpoints {
                check_endpoint(e, key == "bind").map_err(|why| {
                    invalid(key, format!("`{e}` is not a ZeroMQ endpoint such as tcp://127.0.0.1:5556: {why}"))
                })?;
            }
        }
        if connect.is_empty() && bind.is_empty() {
            return Err(invalid(
                "connect",
                "not set: the publishers' endpoints (in the file, --connect or BID_LOGGER_CONNECT; or `bind`)",
            ));
        }
        let allow = self
            .allow
            .unwrap_or_default()
            .iter()
            .map(|a| crate::zap::Allowed::parse(a))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|m| invalid("allow", m))?;
        if !allow.is_empty() && bind.is_empty() {
            return Err(invalid("allow", "only applies to bound endpoints: set --bind too"));
        }
        let partition_count = self.partition_count.unwrap_or(ingest::DEFAULT_PARTITION_COUNT);
        if partition_count == 0 || partition_count > MAX_PARTITIONS {
            return Err(invalid("partition-count", format!("must be 1 to {MAX_PARTITIONS}, got {partition_count}")));
        }
        let mut partitions = match self.partitions.as_deref() {
            None | Some("all") => (0..partition_count).collect(),
            Some(list) => parse_partitions(list, partition_count).map_err(|m| invalid("partitions", m))?,
        };
        let lease_ttl = duration("lease-ttl", self.lease_ttl.as_deref(), crate::fleet::DEFAULT_LEASE_TTL)?;
        if lease_ttl < Duration::from_millis(900) {
            return Err(invalid("lease-ttl", "must be at least 900ms (it is renewed every third of it)"));
        }
        let fleet = match self.group {
            None if self.standby_memory.is_some_and(|m| m > 0) => {
                return Err(invalid("standby-memory", "needs group: a standby takes over the partitions of its group"));
            }
            None => None,
            Some(group) => {
                if group.is_empty() || group.len() > 128 {
                    return Err(invalid("group", "must be 1 to 128 characters"));
                }
                if self.partitions.as_deref().is_some_and(|p| p != "all") {
                    return Err(invalid(
                        "partitions",
                        "cannot be set with group: the group's members share every partition",
                    ));
                }
                // A member receives the partitions it holds leases of, none at first.
                partitions.clear();
                let standby_memory = self.standby_memory.unwrap_or(0);
                if standby_memory > 0 && standby_memory < 1 << 20 {
                    return Err(invalid("standby-memory", "must be 0 (no standby) or at least 1048576 (1 MiB)"));
                }
                Some(crate::fleet::FleetConfig { group, lease_ttl, standby_memory })
            }
        };
        let event_types = match self.event_types.as_deref() {
            None | Some("all") => EventType::ALL.to_vec(),
            Some(list) => parse_event_types(list).map_err(|m| invalid("event-types", m))?,
        };
        let sample: Rate =
            self.sample.as_deref().unwrap_or("1").parse().map_err(|e| invalid("sample", format!("{e}")))?;
        let sample = parse_type_rates(sample, self.sample_by_type.as_deref().unwrap_or(""))
            .map_err(|m| invalid("sample-by-type", m))?;
        if let Some((t, _)) = sample.overrides().find(|(t, _)| !event_types.contains(t)) {
            return Err(invalid("sample-by-type", format!("`{t}` is not in `event-types`")));
        }
        let metrics_addr = self.metrics_addr.as_deref().unwrap_or(DEFAULT_METRICS_ADDR);
        let metrics_addr: SocketAddr = metrics_addr.parse().map_err(|_| {
            invalid("metrics-addr", format!("expected HOST:PORT such as 127.0.0.1:9464, got `{metrics_addr}`"))
        })?;
        let max_lateness =
            duration("max-lateness", self.max_lateness.as_deref(), ms(aggregate::DEFAULT_MAX_LATENESS_MS))?;
        let max_future_skew =
            duration("max-future-skew", self.max_future_skew.as_deref(), ms(aggregate::DEFAULT_MAX_FUTURE_SKEW_MS))?;
        let max_live_keys = positive("max-live-keys", self.max_live_keys.unwrap_or(aggregate::DEFAULT_MAX_LIVE_KEYS))?;
        let max_os_values = self.max_os_values.unwrap_or(aggregate::DEFAULT_MAX_OS_VALUES);
        let max_exchange_values = self.max_exchange_values.unwrap_or(aggregate::DEFAULT_MAX_EXCHANGE_VALUES);
        for (key, n) in [("max-os-values", max_os_values), ("max-exchange-values", max_exchange_values)] {
            if n == 0 || n > aggregate::MAX_NAME_VALUES {
                return Err(invalid(key, format!("must be 1 to {}, got {n}", aggregate::MAX_NAME_VALUES)));
            }
        }
        let landscape_window =
            duration("landscape-window", self.landscape_window.as_deref(), DEFAULT_LANDSCAPE_WINDOW)?;
        let landscape_max_pending =
            positive("landscape-max-pending", self.landscape_max_pending.unwrap_or(DEFAULT_LANDSCAPE_MAX_PENDING))?;
        let receive_hwm = self.receive_hwm.unwrap_or(ingest::DEFAULT_RECEIVE_HWM);
        if receive_hwm < 0 {
            return Err(invalid("receive-hwm", "must be 0 (unlimited) or more"));
        }
        let max_event_size = self.max_event_size.unwrap_or(ingest::DEFAULT_MAX_EVENT_SIZE);
        if max_event_size < 64 {
            return Err(invalid("max-event-size", "must be at least 64 bytes"));
        }
        let max_message_size = self.max_message_size.unwrap_or(ingest::DEFAULT_MAX_MESSAGE_SIZE);
        if max_message_size < max_event_size as i64 {
            return Err(invalid(
                "max-message-size",
                format!("must be at least max-event-size ({max_event_size}), got {max_message_size}"),
            ));
        }
        let endpoint_quiet_after =
            duration("endpoint-quiet-after", self.endpoint_quiet_after.as_deref(), ingest::DEFAULT_QUIET_AFTER)?;
        let max_seq_jump = self.max_seq_jump.unwrap_or(ingest::DEFAULT_MAX_SEQ_JUMP);
        if max_seq_jump == 0 || max_seq_jump > i64::MAX as u64 {
            return Err(invalid("max-seq-jump", format!("must be 1 to {}", i64::MAX)));
        }
        let ingest_threads = positive("ingest-threads", self.ingest_threads.unwrap_or(ingest::DEFAULT_THREADS))?;
        if ingest_threads > 64 {
            return Err(invalid("ingest-threads", "must be 1 to 64"));
        }
        let database_url = resolve_database_url(self.database_url)?;
        let instance_id = self.instance_id.unwrap_or_else(default_instance_id);
        if instance_id.is_empty() || instance_id.len() > 128 {
            return Err(invalid("instance-id", "must be 1 to 128 characters"));
        }
        let pool_size = positive("db-pool-size", self.db_pool_size.unwrap_or(sink::DEFAULT_POOL_SIZE))?;
        let flush_timeout = duration("flush-timeout", self.flush_timeout.as_deref(), sink::DEFAULT_FLUSH_TIMEOUT)?;
        if flush_timeout < Duration::from_millis(100) {
            return Err(invalid("flush-timeout", "must be at least 100ms (a flush needs several round trips)"));
        }
        let shutdown_timeout =
            duration("shutdown-timeout", self.shutdown_timeout.as_deref(), sink::DEFAULT_SHUTDOWN_TIMEOUT)?;
        let max_pending_rows =
            positive("max-pending-rows", self.max_pending_rows.unwrap_or(sink::DEFAULT_MAX_PENDING_ROWS))?;
        let raw_sample: Rate = self
            .raw_sample
            .as_deref()
            .unwrap_or("1/1000")
            .parse()
            .map_err(|e| invalid("raw-sample", format!("{e}")))?;
        let raw_retention = duration(
            "raw-retention",
            self.raw_retention.as_deref(),
            Duration::from_secs(sink::DEFAULT_RAW_RETENTION_DAYS * 86_400),
        )?;
        if raw_retention < Duration::from_secs(86_400) || raw_retention.as_secs() % 86_400 != 0 {
            return Err(invalid("raw-retention", "must be a whole number of days, at least 1d"));
        }
        let raw_buffer_rows =
            positive("raw-buffer-rows", self.raw_buffer_rows.unwrap_or(aggregate::DEFAULT_MAX_RAW_ROWS))?;
        let tables = rollup_tables(self.rollup.as_ref(), flush_interval)?;
        let (landscape, timing) = (crate::db::tables::landscape_dims(&tables), crate::db::tables::timing_dims(&tables));
        let pairing = (landscape.is_some() || timing.is_some()).then_some((landscape, timing));
        // (the types subscribed to: another's rate does not matter)
        let one_rate = |types: &[EventType]| {
            let paired: Vec<EventType> = types.iter().copied().filter(|t| event_types.contains(t)).collect();
            paired.iter().all(|&t| sample.of(t) == sample.of(paired[0]))
        };
        if pairing.is_some() && !one_rate(&[EventType::Bid, EventType::Win, EventType::Loss]) {
            return Err(invalid(
                "sample-by-type",
                "a bid landscape or a timing table (a table with `bid_price` or `delay`) pairs bids with wins and \
                 losses: give bid, win and loss one rate",
            ));
        }
        if timing.is_some() && !one_rate(&[EventType::Impression, EventType::Click]) {
            return Err(invalid(
                "sample-by-type",
                "a timing table (a table with `delay`) pairs impressions with clicks: give impression and click one \
                 rate",
            ));
        }
        let log_format = match self.log_format.as_deref().unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => return Err(invalid("log-format", format!("expected `text` or `json`, got `{other}`"))),
        };
        Ok(Config {
            ingest: IngestConfig {
                connect,
                bind,
                partition_count,
                partitions,
                event_types,
                sample,
                raw_sample,
                receive_hwm,
                max_message_size,
                max_event_size,
                max_seq_jump,
                quiet_after: endpoint_quiet_after,
                threads: ingest_threads,
                allow,
            },
            aggregate: AggregateConfig {
                max_lateness_ms: max_lateness.as_millis() as i64,
                max_future_skew_ms: max_future_skew.as_millis() as i64,
                max_live_keys,
                max_os_values,
                max_exchange_values,
                max_raw_rows: raw_buffer_rows,
                price_dims: crate::db::tables::price_dims(&tables),
                pairing: pairing.map(|(landscape, timing)| aggregate::PairingConfig {
                    landscape,
                    timing,
                    window_ms: landscape_window.as_millis() as i64,
                    max_pending: landscape_max_pending,
                }),
            },
            sink: SinkConfig {
                database_url,
                instance_id,
                flush_interval,
                flush_timeout,
                shutdown_timeout,
                pool_size,
                max_pending_rows,
                sample_ppm: sample.ppm_by_type(),
                raw_sample_ppm: raw_sample.ppm(),
                raw_retention_days: (raw_retention.as_secs() / 86_400) as i64,
                max_raw_rows: raw_buffer_rows,
                max_lateness_ms: max_lateness.as_millis() as i64,
                tables,
                group: fleet.as_ref().map(|f| f.group.clone()),
            },
            fleet,
            metrics_addr,
            log_format,
        })
    }
}

impl Config {
    /// The effective configuration as TOML, the database password masked:
    /// [`Config::effective`] through the same serde schema the file uses.
    pub fn to_toml(&self) -> String {
        toml::to_string(&self.effective()).expect("settings serialize to TOML")
    }

    /// The effective value of every key, as settings (what `check-config`
    /// prints, and what a file holding it resolves to again), the database
    /// password masked.
    pub fn effective(&self) -> Settings {
        let (i, a, s) = (&self.ingest, &self.aggregate, &self.sink);
        let text = |d: Duration| Some(format_duration(d));
        Settings {
            connect: Some(i.connect.clone()),
            bind: Some(i.bind.clone()),
            allow: Some(i.allow.iter().map(ToString::to_string).collect()),
            database_url: Some(mask_database_url(&s.database_url)),
            partition_count: Some(i.partition_count),
            partitions: Some(if self.fleet.is_some() { "all".into() } else { format_partitions(&i.partitions) }),
            group: self.fleet.as_ref().map(|f| f.group.clone()),
            lease_ttl: text(self.fleet.as_ref().map_or(crate::fleet::DEFAULT_LEASE_TTL, |f| f.lease_ttl)),
            standby_memory: Some(self.fleet.as_ref().map_or(0, |f| f.standby_memory)),
            event_types: Some(i.event_types.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(",")),
            sample: Some(i.sample.base().to_string()),
            sample_by_type: Some(i.sample.overrides_text()).filter(|t| !t.is_empty()),
            flush_interval: text(s.flush_interval),
            metrics_addr: Some(self.metrics_addr.to_string()),
            max_lateness: text(ms(a.max_lateness_ms)),
            max_future_skew: text(ms(a.max_future_skew_ms)),
            max_live_keys: Some(a.max_live_keys),
            max_os_values: Some(a.max_os_values),
            max_exchange_values: Some(a.max_exchange_values),
            landscape_window: text(a.pairing.map_or(DEFAULT_LANDSCAPE_WINDOW, |p| ms(p.window_ms))),
            landscape_max_pending: Some(a.pairing.map_or(DEFAULT_LANDSCAPE_MAX_PENDING, |p| p.max_pending)),
            receive_hwm: Some(i.receive_hwm),
            max_message_size: Some(i.max_message_size),
            max_event_size: Some(i.max_event_size),
            max_seq_jump: Some(i.max_seq_jump),
            endpoint_quiet_after: text(i.quiet_after),
            ingest_threads: Some(i.threads),
            instance_id: Some(s.instance_id.clone()),
            db_pool_size: Some(s.pool_size),
            flush_timeout: text(s.flush_timeout),
            shutdown_timeout: text(s.shutdown_timeout),
            max_pending_rows: Some(s.max_pending_rows),
            raw_sample: Some(i.raw_sample.to_string()),
            raw_retention: Some(format!("{}d", s.raw_retention_days)),
            raw_buffer_rows: Some(s.max_raw_rows),
            log_format: Some(if self.log_format == LogFormat::Json { "json" } else { "text" }.to_string()),
            rollup: Some(
                s.tables
                    .iter()
                    .map(|t| {
                        let section = RollupSettings {
                            grain: Some(t.shape.grain.to_string()),
                            dimensions: Some(t.shape.dims.iter().map(|d| d.as_str().to_string()).collect()),
                            flush_interval: text(t.flush_interval),
                            retention: Some(t.retention.map_or("0".to_string(), format_duration)),
                            fold_interval: (!t.logged).then(|| format_duration(t.fold_interval)),
                        };
                        (t.name.clone(), section)
                    })
                    .collect(),
            ),
        }
    }
}

/// Defaults the help says in words, not as a value (`partitions`,
/// `event-types`, `allow`, `instance-id`, `group`).
const DESCRIPTIVE_DEFAULTS: [&str; 4] = ["all", "any", "the host name", "none"];

/// The configuration reference of `docs/configuration.md`, generated from
/// the flags of `run`: each key in declaration order, its default as its
/// help says it (which a unit test holds to the default the code uses),
/// and the help itself. `bid-logger-tools docs` writes it into the page;
/// the docs tests fail when the page differs.
pub fn reference_table() -> String {
    use clap::Args;
    let cmd = Settings::augment_args(clap::Command::new("run"));
    let mut out = String::from("| key | default | meaning |\n|---|---|---|\n");
    for arg in cmd.get_arguments() {
        let (Some(key), Some(help)) = (arg.get_long(), arg.get_long_help().or(arg.get_help())) else { continue };
        let help = help.to_string();
        let (meaning, default) = match help.split_once(" [default: ") {
            Some((meaning, rest)) => {
                let default = rest.split(']').next().unwrap_or_default();
                let default =
                    if DESCRIPTIVE_DEFAULTS.contains(&default) { default.to_string() } else { format!("`{default}`") };
                (meaning.to_string(), default)
            }
            None => (help.clone(), "—".to_string()),
        };
        // `docs/fleet.md` in the help is a link on the page, beside it
        let mut linked = String::new();
        for (i, part) in meaning.trim_end_matches('.').split("docs/").enumerate() {
            match (i, part.split_once(".md")) {
                (0, _) | (_, None) => linked += &format!("{}{part}", if i == 0 { "" } else { "docs/" }),
                (_, Some((page, rest))) => {
                    // an anchor, `docs/warehouse.md#sampling`, goes into the link
                    let anchor_len = rest.strip_prefix('#').map_or(0, |a| {
                        1 + a.find(|c: char| !(c.is_alphanumeric() || c == '-' || c == '_')).unwrap_or(a.len())
                    });
                    let (anchor, rest) = rest.split_at(anchor_len);
                    linked += &format!("[{page}.md{anchor}]({page}.md{anchor}){rest}")
                }
            }
        }
        out += &format!("| `{key}` | {default} | {} |\n", linked.replace('|', "\\|"));
    }
    out
}

/// The rollup tables: the default set, overridden and extended by the
/// `[rollup.<table>]` sections, validated. `flush_interval` is the logger's
/// own: a table flushed at it is direct, a slower one goes through its log.
pub fn rollup_tables(
    sections: Option<&BTreeMap<String, RollupSettings>>,
    flush_interval: Duration,
) -> Result<Vec<RollupTable>, ConfigError> {
    let empty = BTreeMap::new();
    let sections = sections.unwrap_or(&empty);
    let mut names: Vec<String> = crate::db::tables::DEFAULT_TABLES.iter().map(|t| t.0.to_string()).collect();
    let custom: Vec<String> = sections.keys().filter(|n| !names.contains(n)).cloned().collect();
    names.extend(custom);
    let mut tables = Vec::with_capacity(names.len());
    for name in names {
        let key = |k: &str| format!("rollup.{name}.{k}");
        let default = crate::db::tables::DEFAULT_TABLES.iter().find(|t| t.0 == name);
        let section = sections.get(&name).cloned().unwrap_or_default();
        let valid_name = name.len() <= 40
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        let reserved = ["_merged", "_recent", "_live", "_est"].iter().any(|s| name.ends_with(s));
        if !valid_name || name.starts_with("bid_logger") || name.starts_with("events_sample") || reserved {
            return Err(invalid(
                format!("rollup.{name}"),
                "a table name is 1 to 40 of a-z, 0-9 and _, starting with a letter, not bid_logger* or \
                 events_sample*, and not ending in _merged, _recent, _live or _est (the names of a table's parts)",
            ));
        }
        let grain = match (section.grain.as_deref(), default) {
            (Some(g), _) => Grain::parse(g)
                .ok_or_else(|| invalid(key("grain"), format!("expected minute, hour or day, got `{g}`")))?,
            (None, Some(d)) => d.1,
            (None, None) => return Err(invalid(key("grain"), "missing: minute, hour or day")),
        };
        let dims = match (&section.dimensions, default) {
            (Some(list), _) => {
                let mut dims = Vec::new();
                for d in list {
                    let dim = Dimension::parse(d).ok_or_else(|| {
                        invalid(
                            key("dimensions"),
                            format!(
                                "unknown dimension `{d}` (expected country, os, campaign, advertiser, exchange, \
                                 price for a price distribution, bid_price for a bid landscape, or delay for a \
                                 timing table)"
                            ),
                        )
                    })?;
                    if dims.contains(&dim) {
                        return Err(invalid(key("dimensions"), format!("`{d}` is listed twice")));
                    }
                    dims.push(dim);
                }
                if dims.contains(&Dimension::BidPrice)
                    && (dims.contains(&Dimension::Price) || dims.contains(&Dimension::Advertiser))
                {
                    return Err(invalid(
                        key("dimensions"),
                        "a bid landscape (with `bid_price`) can have country, os, exchange and campaign, \
                         not price or advertiser",
                    ));
                }
                if dims.contains(&Dimension::Delay)
                    && [Dimension::Price, Dimension::BidPrice, Dimension::Advertiser].iter().any(|d| dims.contains(d))
                {
                    return Err(invalid(
                        key("dimensions"),
                        "a timing table (with `delay`) can have country, os, exchange and campaign, not price, \
                         bid_price or advertiser",
                    ));
                }
                if dims.contains(&Dimension::Price) && dims.contains(&Dimension::Advertiser) {
                    return Err(invalid(
                        key("dimensions"),
                        "a price distribution (with `price`) can have country, os, exchange and campaign, \
                         not advertiser",
                    ));
                }
                Dimensions::of(&dims)
            }
            (None, Some(d)) => Dimensions::of(d.2),
            (None, None) => {
                return Err(invalid(key("dimensions"), "missing: a list such as [\"exchange\", \"country\"]"))
            }
        };
        let table_interval = match section.flush_interval.as_deref() {
            Some(v) => {
                let d = parse_duration(v).ok_or_else(|| {
                    invalid(key("flush-interval"), format!("expected a duration such as 1s or 10s, got `{v}`"))
                })?;
                if d < flush_interval {
                    return Err(invalid(
                        key("flush-interval"),
                        format!("must be at least flush-interval ({}), got {v}", format_duration(flush_interval)),
                    ));
                }
                d
            }
            None => crate::db::tables::default_flush_interval(grain, flush_interval),
        };
        let fold_interval = match section.fold_interval.as_deref() {
            Some(v) => {
                let d = parse_duration(v).ok_or_else(|| {
                    invalid(key("fold-interval"), format!("expected a duration such as 10s or 1m, got `{v}`"))
                })?;
                if d < table_interval || d > Duration::from_secs(3600) {
                    return Err(invalid(
                        key("fold-interval"),
                        format!(
                            "must be at least the table's flush interval ({}) and at most 1h, got {v}",
                            format_duration(table_interval)
                        ),
                    ));
                }
                d
            }
            None => crate::db::tables::FOLD_INTERVAL.max(table_interval),
        };
        let retention = match section.retention.as_deref() {
            Some("0") => None,
            Some(v) => {
                let d = parse_duration(v).ok_or_else(|| {
                    invalid(
                        key("retention"),
                        format!("expected a duration such as 7d, or 0 to keep forever, got `{v}`"),
                    )
                })?;
                Some(d)
            }
            None => default.and_then(|d| (d.3 > 0).then(|| Duration::from_secs(d.3 * 86_400))),
        };
        if let Some(r) = retention {
            if (r.as_secs() as i64) < grain.minutes() * 60 {
                return Err(invalid(
                    key("retention"),
                    format!(
                        "{} is shorter than the table's grain ({grain}): nothing would be kept",
                        format_duration(r)
                    ),
                ));
            }
        }
        tables.push(RollupTable {
            merged: format!("{name}_merged"),
            fold_interval,
            name,
            shape: Shape { grain, dims },
            flush_interval: table_interval,
            retention,
            logged: table_interval > flush_interval,
            fed_by: None,
        });
    }
    crate::db::tables::link(&mut tables);
    Ok(tables)
}

/// Default `metrics-addr`.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";

/// Default `landscape-window`.
pub const DEFAULT_LANDSCAPE_WINDOW: Duration = Duration::from_secs(60);

/// Default `landscape-max-pending`.
pub const DEFAULT_LANDSCAPE_MAX_PENDING: usize = 1_000_000;

/// The database URL: the setting, else `DATABASE_URL`. Only a PostgreSQL
/// URL (`postgres://`, `postgresql://`) or key-value string (`host=… dbname=…`)
/// is accepted, so that a URL meant for something else fails here, at start.
pub fn resolve_database_url(setting: Option<String>) -> Result<String, ConfigError> {
    let (key, url) = match setting {
        Some(url) => ("database-url", url),
        None => match std::env::var("DATABASE_URL").ok().filter(|s| !s.is_empty()) {
            Some(url) => ("DATABASE_URL", url),
            None => {
                return Err(invalid(
                    "database-url",
                    "not set: the warehouse (in the file, --database-url, BID_LOGGER_DATABASE_URL or DATABASE_URL)",
                ))
            }
        },
    };
    match url.split_once("://") {
        Some(("postgres" | "postgresql", _)) => {}
        Some((scheme, _)) => {
            return Err(invalid(key, format!("`{scheme}://` is not a PostgreSQL URL (postgres://USER@HOST:PORT/DB)")))
        }
        None if !url.contains('=') => {
            return Err(invalid(key, "not a PostgreSQL URL (postgres://USER@HOST:PORT/DB) or key-value string"))
        }
        None => {}
    }
    crate::db::validate(&url).map_err(|e| invalid(key, e.to_string()))?;
    Ok(url)
}

fn positive(key: &'static str, n: usize) -> Result<usize, ConfigError> {
    if n == 0 {
        Err(invalid(key, "must be at least 1"))
    } else {
        Ok(n)
    }
}

fn duration(key: &'static str, value: Option<&str>, default: Duration) -> Result<Duration, ConfigError> {
    let Some(v) = value else { return Ok(default) };
    parse_duration(v)
        .ok_or_else(|| invalid(key, format!("expected a duration such as 250ms, 1s, 5m, 2h or 7d, got `{v}`")))
}

fn ms(ms: i64) -> Duration {
    Duration::from_millis(ms as u64)
}

/// [`parse_duration`] as a clap value parser, for the commands' own
/// duration flags (`report --since`, the tools' `--duration`).
pub fn duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s).ok_or_else(|| format!("expected a duration such as 250ms, 30s, 5m, 1h or 7d, got `{s}`"))
}

/// Parses `250ms`, `1s`, `1.5s`, `5m`, `2h`, `7d` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        _ => return None,
    };
    (secs.is_finite() && (0.0..1e9).contains(&secs)).then(|| Duration::from_secs_f64(secs))
}

/// Formats a duration in the largest unit that divides it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// Parses `0-15,32` into sorted, distinct partitions below `count`.
pub fn parse_partitions(list: &str, count: u32) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse::<u32>(), b.trim().parse::<u32>()),
            None => (part.parse::<u32>(), part.parse::<u32>()),
        };
        let (lo, hi) = match (lo, hi) {
            (Ok(lo), Ok(hi)) if lo <= hi => (lo, hi),
            _ => return Err(format!("`{part}` is not a partition or range such as 0-15")),
        };
        if hi >= count {
            return Err(format!("partition {hi} is not below partition-count {count}"));
        }
        out.extend(lo..=hi);
    }
    out.sort_unstable();
    out.dedup();
    if out.is_empty() {
        return Err("no partition listed".into());
    }
    Ok(out)
}

fn format_partitions(p: &[u32]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < p.len() {
        let start = p[i];
        while i + 1 < p.len() && p[i + 1] == p[i] + 1 {
            i += 1;
        }
        parts.push(if p[i] == start { start.to_string() } else { format!("{start}-{}", p[i]) });
        i += 1;
    }
    parts.join(",")
}

fn parse_event_types(list: &str) -> Result<Vec<EventType>, String> {
    let mut out = Vec::new();
    for name in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let t = EventType::from_bytes(name.as_bytes()).ok_or_else(|| {
            format!("unknown event type `{name}` (expected auction, bid, win, loss, impression, click, install, event)")
        })?;
        if !out.contains(&t) {
            out.push(t);
        }
    }
    if out.is_empty() {
        return Err("no event type listed".into());
    }
    out.sort();
    Ok(out)
}

fn default_instance_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "bid-logger".to_string())
}

/// Checks a ZeroMQ endpoint as libzmq would take it, so that a typo fails at
/// start naming its key instead of at the socket: `tcp://host:port` (a port
/// number; `*` for either part when binding), `ipc://path`,
/// `inproc://name`, `pgm://` and `epgm://`.
fn check_endpoint(endpoint: &str, bind: bool) -> Result<(), String> {
    let Some((transport, address)) = endpoint.split_once("://") else {
        return Err("no transport (`tcp://`, `ipc://`, …)".into());
    };
    if address.is_empty() {
        return Err("no address after the transport".into());
    }
    match transport {
        "tcp" => {
            // `tcp://source;destination` connects from a given interface.
            let target = address.rsplit(';').next().unwrap_or(address);
            let Some((host, port)) = target.rsplit_once(':') else {
                return Err("no port: tcp endpoints are host:port".into());
            };
            if host.is_empty() || (host.starts_with('[') != host.ends_with(']')) {
                return Err(format!("`{host}` is not a host"));
            }
            if host == "*" && !bind {
                return Err("`*` is for binding: connect to a host".into());
            }
            let wildcard_port = bind && port == "*";
            if !wildcard_port && !port.parse::<u16>().is_ok_and(|p| p > 0) {
                return Err(format!("`{port}` is not a port (1 to 65535)"));
            }
            Ok(())
        }
        "ipc" | "inproc" | "pgm" | "epgm" => Ok(()),
        other => Err(format!("unknown transport `{other}` (tcp, ipc, inproc, pgm, epgm)")),
    }
}

/// A rate in the file: a string (`"1/8"`, `"0.125"`) or a TOML number
/// (`0.125`, `1`), read as the same text.
fn rate_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Rate {
        Text(String),
        Integer(i64),
        Float(f64),
    }
    Ok(Option::<Rate>::deserialize(d)?.map(|r| match r {
        Rate::Text(t) => t,
        Rate::Integer(i) => i.to_string(),
        Rate::Float(f) => f.to_string(),
    }))
}

/// What the connection string connects to, without its password (see
/// [`crate::db::connect::describe`]), for logs and `check-config`.
pub fn mask_database_url(url: &str) -> String {
    crate::db::connect::describe(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Settings {
        Settings {
            connect: Some(vec!["tcp://127.0.0.1:5556".into()]),
            database_url: Some("postgres://postgres:secret@127.0.0.1:5432/db".into()),
            ..Default::default()
        }
    }

    fn key_of(s: Settings) -> String {
        match s.resolve() {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected an invalid key, got {other:?}"),
        }
    }

    #[test]
    fn defaults_resolve() {
        let c = base().resolve().unwrap();
        assert_eq!(c.ingest.partition_count, 64);
        assert_eq!(c.ingest.partitions.len(), 64);
        assert_eq!(c.ingest.event_types.len(), 8);
        assert_eq!(c.ingest.sample, Rate::ALL.into());
        assert_eq!(c.sink.flush_interval, Duration::from_secs(1));
        assert_eq!(c.aggregate.max_lateness_ms, 7 * 86_400_000);
        assert_eq!(c.aggregate.max_future_skew_ms, 300_000);
        assert_eq!(c.metrics_addr.to_string(), "127.0.0.1:9464");
    }

    #[test]
    fn each_bad_value_names_its_key() {
        type Mutation = Box<dyn Fn(&mut Settings)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("partition-count", Box::new(|s| s.partition_count = Some(0))),
            ("partition-count", Box::new(|s| s.partition_count = Some(10_001))),
            ("partitions", Box::new(|s| s.partitions = Some("0-64".into()))),
            ("partitions", Box::new(|s| s.partitions = Some("5-2".into()))),
            (
                "partitions",
                Box::new(|s| {
                    s.group = Some("g".into());
                    s.partitions = Some("0-7".into());
                }),
            ),
            ("group", Box::new(|s| s.group = Some(String::new()))),
            ("lease-ttl", Box::new(|s| s.lease_ttl = Some("500ms".into()))),
            ("lease-ttl", Box::new(|s| s.lease_ttl = Some("forever".into()))),
            ("standby-memory", Box::new(|s| s.standby_memory = Some(1 << 30))),
            (
                "standby-memory",
                Box::new(|s| {
                    s.group = Some("g".into());
                    s.standby_memory = Some(1000);
                }),
            ),
            ("event-types", Box::new(|s| s.event_types = Some("bid,wins".into()))),
            ("sample", Box::new(|s| s.sample = Some("2".into()))),
            ("flush-interval", Box::new(|s| s.flush_interval = Some("soon".into()))),
            ("metrics-addr", Box::new(|s| s.metrics_addr = Some("localhost".into()))),
            ("max-lateness", Box::new(|s| s.max_lateness = Some("7 weeks".into()))),
            ("max-live-keys", Box::new(|s| s.max_live_keys = Some(0))),
            ("connect", Box::new(|s| s.connect = Some(vec!["127.0.0.1:5556".into()]))),
            ("log-format", Box::new(|s| s.log_format = Some("xml".into()))),
            ("database-url", Box::new(|s| s.database_url = Some("postgres://h:notaport/db".into()))),
            ("database-url", Box::new(|s| s.database_url = Some("mysql://u@h:3306/db".into()))),
            ("database-url", Box::new(|s| s.database_url = Some("localhost".into()))),
            ("flush-timeout", Box::new(|s| s.flush_timeout = Some("0s".into()))),
            ("flush-timeout", Box::new(|s| s.flush_timeout = Some("99ms".into()))),
            ("max-event-size", Box::new(|s| s.max_event_size = Some(10))),
            ("max-message-size", Box::new(|s| s.max_message_size = Some(1000))),
            ("max-seq-jump", Box::new(|s| s.max_seq_jump = Some(0))),
            ("max-exchange-values", Box::new(|s| s.max_exchange_values = Some(4001))),
            ("max-os-values", Box::new(|s| s.max_os_values = Some(0))),
            ("landscape-window", Box::new(|s| s.landscape_window = Some("a minute".into()))),
            ("landscape-max-pending", Box::new(|s| s.landscape_max_pending = Some(0))),
            ("sample-by-type", Box::new(|s| s.sample_by_type = Some("bids=1/2".into()))),
            ("sample-by-type", Box::new(|s| s.sample_by_type = Some("bid=0".into()))),
            (
                "sample-by-type",
                Box::new(|s| {
                    s.event_types = Some("bid".into());
                    s.sample_by_type = Some("win=1/2".into());
                }),
            ),
        ];
        for (key, mutate) in cases {
            let mut s = base();
            mutate(&mut s);
            assert_eq!(key_of(s), key);
        }
        let err = Settings { sample: Some("abc".into()), ..base() }.resolve().unwrap_err().to_string();
        assert!(err.starts_with("invalid configuration: `sample`:"), "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn a_rate_per_type_overrides_sample_round_trips_and_keeps_a_landscape_whole() {
        let file = Settings::from_toml("sample = \"1/2\"\nsample-by-type = \"auction=1/64, win=1\"\n").unwrap();
        let c = Settings { sample: file.sample, sample_by_type: file.sample_by_type, ..base() }.resolve().unwrap();
        let rates = c.ingest.sample;
        assert_eq!((rates.of(EventType::Auction).ppm(), rates.of(EventType::Win).ppm()), (15_625, 1_000_000));
        assert_eq!(rates.of(EventType::Bid).ppm(), 500_000);
        let shown = c.effective();
        assert_eq!(shown.sample.as_deref(), Some("1/2"));
        assert_eq!(shown.sample_by_type.as_deref(), Some("auction=1/64,win=1"));
        let again = Settings { database_url: base().database_url, ..shown }.resolve().unwrap();
        assert_eq!(again.ingest.sample, rates, "check-config's output reads back");
        assert_eq!(base().resolve().unwrap().effective().sample_by_type, None);
        // a landscape needs its bids, wins and losses at one rate
        let landscape =
            Settings::from_toml("[rollup.landscape]\ngrain = \"hour\"\ndimensions = [\"exchange\", \"bid_price\"]\n")
                .unwrap()
                .rollup;
        let with = |by_type: &str| {
            Settings { rollup: landscape.clone(), sample_by_type: Some(by_type.into()), ..base() }.resolve()
        };
        assert!(with("auction=1/64").is_ok(), "auctions are not paired");
        let only_bids_and_wins = Settings {
            rollup: landscape.clone(),
            event_types: Some("bid,win".into()),
            sample_by_type: Some("bid=1/2,win=1/2".into()),
            ..base()
        };
        assert!(only_bids_and_wins.resolve().is_ok(), "the rate of a type not subscribed to does not matter");
        let err = with("loss=1/8").unwrap_err().to_string();
        assert!(err.starts_with("invalid configuration: `sample-by-type`: a bid landscape"), "{err}");
    }

    fn rollup_error(toml: &str) -> String {
        let file = Settings::from_toml(toml).unwrap();
        let err = Settings { rollup: file.rollup, ..base() }.resolve().unwrap_err().to_string();
        assert!(!err.contains('\n'), "{err}");
        err
    }

    #[test]
    fn the_default_tables_apply_and_a_section_overrides_only_its_keys() {
        let c = base().resolve().unwrap();
        let names: Vec<&str> = c.sink.tables.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            ["rollup_minute", "rollup_hour", "rollup_day", "rollup_exchange_minute", "rollup_exchange_hour"]
        );
        assert_eq!(c.sink.tables, crate::db::tables::default_tables(Duration::from_secs(1)));
        let logged: Vec<bool> = c.sink.tables.iter().map(|t| t.logged).collect();
        assert_eq!(logged, [false, true, true, false, true], "coarse tables go through their logs");
        let file = Settings::from_toml(
            "[rollup.rollup_hour]\nretention = \"30d\"\n[rollup.rollup_day_exchange]\ngrain = \"day\"\ndimensions = [\"exchange\"]\n",
        )
        .unwrap();
        let c = Settings { rollup: file.rollup, ..base() }.resolve().unwrap();
        let hour = &c.sink.tables[1];
        assert_eq!(hour.retention, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!((hour.shape.grain, hour.flush_interval), (Grain::Hour, Duration::from_secs(300)), "other keys kept");
        let custom = c.sink.tables.iter().find(|t| t.name == "rollup_day_exchange").unwrap();
        assert_eq!(custom.shape, Shape { grain: Grain::Day, dims: Dimensions::of(&[Dimension::Exchange]) });
        assert_eq!((custom.flush_interval, custom.retention), (Duration::from_secs(900), None));
        // The effective configuration resolves to itself.
        let again = Settings::from_toml(&c.to_toml()).unwrap();
        let again = Settings { database_url: base().database_url, ..again }.resolve().unwrap();
        assert_eq!(again.sink.tables, c.sink.tables);
    }

    #[test]
    fn bad_rollup_declarations_fail_naming_the_key() {
        for (toml, key) in [
            ("[rollup.rollup_x]\ngrain = \"day\"\ndimensions = [\"planet\"]\n", "rollup.rollup_x.dimensions"),
            ("[rollup.rollup_x]\ngrain = \"week\"\ndimensions = [\"os\"]\n", "rollup.rollup_x.grain"),
            ("[rollup.rollup_x]\ndimensions = [\"os\"]\n", "rollup.rollup_x.grain"),
            ("[rollup.rollup_x]\ngrain = \"day\"\n", "rollup.rollup_x.dimensions"),
            ("[rollup.rollup_x]\ngrain = \"day\"\ndimensions = [\"os\", \"os\"]\n", "rollup.rollup_x.dimensions"),
            ("[rollup.rollup_day]\nretention = \"12h\"\n", "rollup.rollup_day.retention"),
            ("[rollup.rollup_hour]\nflush-interval = \"100ms\"\n", "rollup.rollup_hour.flush-interval"),
            ("[rollup.Rollup_X]\ngrain = \"day\"\ndimensions = [\"os\"]\n", "rollup.Rollup_X"),
            ("[rollup.bid_logger_x]\ngrain = \"day\"\ndimensions = [\"os\"]\n", "rollup.bid_logger_x"),
        ] {
            let err = rollup_error(toml);
            assert!(err.starts_with(&format!("invalid configuration: `{key}`:")), "{toml}: {err}");
        }
        // A table declared twice is a TOML error on its own line.
        let twice = "[rollup.rollup_x]\ngrain = \"day\"\n[rollup.rollup_x]\ngrain = \"hour\"\n";
        let err = Settings::from_toml(twice).unwrap_err();
        assert!(err.starts_with("line 3:") && err.contains("rollup_x"), "{err}");
        // An unknown key of a section is named.
        let err = Settings::from_toml("[rollup.rollup_x]\ngranularity = \"day\"\n").unwrap_err();
        assert!(err.contains("granularity"), "{err}");
    }

    #[test]
    fn flags_win_over_the_file() {
        let file = Settings { sample: Some("1/8".into()), partition_count: Some(256), ..Default::default() };
        let flags = Settings { sample: Some("1/2".into()), ..base() };
        let c = flags.over(file).resolve().unwrap();
        assert_eq!(c.ingest.sample.base().ppm(), 500_000);
        assert_eq!(c.ingest.partition_count, 256);
    }

    #[test]
    fn the_example_file_parses_and_resolves() {
        let s = Settings::from_toml(include_str!("../bid-logger.toml")).expect("bid-logger.toml parses");
        // It sets neither of the two keys without a default: as packaged, it
        // does not start until the operator sets them.
        let key = |s: Settings| match s.resolve() {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected a missing key, got {other:?}"),
        };
        assert_eq!(key(s.clone()), "connect");
        let with_connect = Settings { connect: Some(vec!["tcp://127.0.0.1:5556".into()]), ..s.clone() };
        if std::env::var_os("DATABASE_URL").is_none() {
            assert_eq!(key(with_connect), "database-url");
        }
        let required = |s: Settings| Settings {
            connect: Some(vec!["tcp://127.0.0.1:5556".into()]),
            database_url: Some("postgres://u@h/db".into()),
            ..s
        };
        let c = required(s).resolve().expect("bid-logger.toml is valid");
        // Every key it sets is set to its default.
        let defaults = required(Settings::default()).resolve().unwrap();
        assert_eq!(c.to_toml(), defaults.to_toml(), "bid-logger.toml sets a key to other than its default");
        assert_eq!(c.ingest.partition_count, 64);
        // round trip: the printed effective config parses again with the same meaning
        let printed = Settings::from_toml(&c.to_toml()).unwrap();
        let again = Settings { database_url: Some(c.sink.database_url.clone()), ..printed }.resolve().unwrap();
        assert_eq!(again.to_toml(), c.to_toml());
    }

    #[test]
    fn the_size_limits_and_flush_timeout_have_sane_defaults_and_minimums() {
        let c = base().resolve().unwrap();
        assert_eq!(c.ingest.max_message_size, 8 * 1024 * 1024);
        assert_eq!(c.ingest.max_event_size, 65_536);
        assert_eq!(c.ingest.max_seq_jump, 10_000_000);
        let ok = Settings { flush_timeout: Some("100ms".into()), ..base() }.resolve().unwrap();
        assert_eq!(ok.sink.flush_timeout, Duration::from_millis(100));
        let kv = Settings { database_url: Some("host=/run/postgresql dbname=w".into()), ..base() };
        assert!(kv.resolve().is_ok(), "key-value connection strings are PostgreSQL's too");
    }

    #[test]
    fn every_default_in_the_help_is_the_default_the_logger_uses() {
        use clap::Args;
        // Defaults live in code (DEFAULT_* beside each stage's config); the
        // help text says them in words, so it is checked against them here.
        let effective = toml::Table::try_from(base().resolve().unwrap().effective()).unwrap();
        let cmd = Settings::augment_args(clap::Command::new("run"));
        let mut checked = 0;
        for arg in cmd.get_arguments() {
            let (Some(key), Some(help)) = (arg.get_long(), arg.get_help()) else { continue };
            let help = help.to_string();
            let Some(said) = help.split("[default: ").nth(1).and_then(|d| d.split(']').next()) else { continue };
            if DESCRIPTIVE_DEFAULTS.contains(&said) {
                continue;
            }
            let value = match &effective[key] {
                toml::Value::String(v) => v.clone(),
                other => other.to_string(),
            };
            assert_eq!(said, value, "`--{key}`: the help says {said}, the logger uses {value}");
            checked += 1;
        }
        assert!(checked >= 20, "only {checked} defaults found in the help");
    }

    #[test]
    fn toml_type_errors_name_the_line_and_the_key() {
        let err = Settings::from_toml("sample = \"1\"\n\npartition-count = \"sixty-four\"\n").unwrap_err();
        assert!(err.starts_with("line 3: `partition-count`: "), "{err}");
        assert!(err.contains("expected u32"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        let err = Settings::from_toml("flush-interval = 5\n").unwrap_err();
        assert!(err.starts_with("line 1: `flush-interval`: "), "{err}");
        let err = Settings::from_toml("connect = [\"tcp://x:1\"\n").unwrap_err();
        assert!(err.starts_with("line "), "a syntax error gives its line: {err}");
    }

    #[test]
    fn rates_in_the_file_may_be_numbers_or_text() {
        for (toml, ppm) in [("sample = 0.5", 500_000), ("sample = \"0.125\"", 125_000), ("sample = 1", 1_000_000)] {
            let s = Settings {
                connect: Some(vec!["tcp://h:1".into()]),
                database_url: Some("postgres://u@h/d".into()),
                ..Settings::from_toml(toml).unwrap()
            };
            assert_eq!(s.resolve().unwrap().ingest.sample.base().ppm(), ppm, "{toml}");
        }
        let s = Settings::from_toml("raw-sample = 0.001").unwrap();
        assert_eq!(s.raw_sample.as_deref(), Some("0.001"));
    }

    #[test]
    fn unknown_file_keys_are_named() {
        let err = Settings::from_toml("conect = [\"tcp://x:1\"]").unwrap_err();
        assert!(err.contains("conect"), "{err}");
    }

    #[test]
    fn endpoints_are_checked_as_libzmq_takes_them() {
        for ok in
            ["tcp://bidder-1:5556", "tcp://10.0.0.1:1", "tcp://[::1]:5556", "tcp://eth0;10.0.0.1:5556", "ipc:///run/b"]
        {
            assert!(check_endpoint(ok, false).is_ok(), "{ok}");
        }
        assert!(check_endpoint("tcp://*:5556", true).is_ok());
        assert!(check_endpoint("tcp://0.0.0.0:*", true).is_ok());
        for (bad, why) in [
            ("tcp://bidder-1", "no port"),
            ("tcp://bidder-1:", "not a port"),
            ("tcp://bidder-1:65536", "not a port"),
            ("tcp://bidder-1:0", "not a port"),
            ("tcp://:5556", "not a host"),
            ("tcp://*:5556", "for binding"),
            ("tcp://bidder-1:*", "not a port"),
            ("tcp://", "no address"),
            ("udp://bidder-1:5556", "unknown transport"),
            ("bidder-1:5556", "no transport"),
        ] {
            let err = check_endpoint(bad, false).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn passwords_are_masked() {
        assert_eq!(mask_database_url("postgres://u:pw@h:5432/db"), "postgres://u@h:5432/db");
        assert_eq!(mask_database_url("postgres://u@h/db?password=pw&connect_timeout=3"), "postgres://u@h:5432/db");
        assert_eq!(mask_database_url("host=h password=pw user=u"), "postgres://u@h/");
        assert_eq!(mask_database_url("postgres://h/db"), "postgres://h:5432/db");
        // Quoted, with spaces and quotes inside: nothing of it is printed.
        for dsn in [
            "host=h user=u password='hunter 2' dbname=d",
            r"host=h user=u password='it\'s 2' dbname=d sslmode=require",
            "postgresql://u:hunter%202@h1:5432,h2:5433/d?sslmode=verify-full&sslrootcert=system",
        ] {
            let shown = mask_database_url(dsn);
            assert!(!shown.contains("hunter") && !shown.contains(" 2") && !shown.contains("it"), "{dsn} → {shown}");
            assert!(shown.starts_with("postgres://u@h") && shown.contains("/d"), "{dsn} → {shown}");
        }
        assert_eq!(
            mask_database_url("postgresql://u:pw@h1:5432,h2:5433/d?sslmode=verify-full&sslrootcert=system"),
            "postgres://u@h1:5432,h2:5433/d?sslmode=verify-full&sslrootcert=system"
        );
        assert_eq!(mask_database_url("host=h password='unterminated"), "(a connection string that does not parse)");
        let c = base().resolve().unwrap();
        assert!(!c.to_toml().contains("secret"));
    }

    #[test]
    fn durations_and_partitions_parse() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
        assert_eq!(parse_partitions("0-3, 8,2", 64).unwrap(), vec![0, 1, 2, 3, 8]);
        assert_eq!(format_partitions(&[0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11");
    }
}
