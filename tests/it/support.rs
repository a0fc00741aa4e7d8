//! Shared helpers for the integration tests: a real PostgreSQL (DATABASE_URL
//! or a throwaway cluster), a real ZeroMQ publisher, the real logger binary,
//! and an independent reference for the expected rollups.

use bid_logger_tools::pgtemp::TempPostgres;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Read;

use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The server tests create their databases on: `DATABASE_URL` when set,
/// otherwise one throwaway cluster per test binary.
fn server_url() -> String {
    static SERVER: OnceLock<(Option<TempPostgres>, String)> = OnceLock::new();
    SERVER
        .get_or_init(|| match std::env::var("DATABASE_URL") {
            Ok(url) if !url.is_empty() => (None, url),
            _ => {
                let pg = TempPostgres::start().unwrap_or_else(|e| panic!("cannot start a throwaway PostgreSQL: {e}"));
                let url = pg.url();
                (Some(pg), url)
            }
        })
        .1
        .clone()
}

/// Replaces the database name in a URL.
pub fn with_database(url: &str, db: &str) -> String {
    let cfg: tokio_postgres::Config = url.parse().expect("valid DATABASE_URL");
    let user = cfg.get_user().unwrap_or("postgres");
    let password = cfg.get_password().map(|p| String::from_utf8_lossy(p).into_owned());
    url_of(&cfg, user, password.as_deref(), db)
}

/// The URL of the database of `url` as `user` with `password`.
pub fn as_user(url: &str, user: &str, password: &str) -> String {
    let cfg: tokio_postgres::Config = url.parse().expect("valid database URL");
    url_of(&cfg, user, Some(password), cfg.get_dbname().expect("a database in the URL"))
}

/// Rebuilds a URL: user, password, host, port, database (tests run on trust
/// or password-in-URL set-ups).
fn url_of(cfg: &tokio_postgres::Config, user: &str, password: Option<&str>, db: &str) -> String {
    let password = password.map(|p| format!(":{p}")).unwrap_or_default();
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_string(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    format!("postgres://{user}{password}@{host}:{port}/{db}")
}

/// Connects and spawns the connection task.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    bid_logger::db::connect(url).await.unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"))
}

/// A fresh database of its own for one test; returns its URL.
pub async fn fresh_database(test: &str) -> String {
    create_database_on(&server_url(), test).await
}

/// A fresh database on the server at `server`.
pub async fn create_database_on(server: &str, test: &str) -> String {
    let name = format!("bl_{}_{}", test, rand::random::<u32>());
    let admin = connect(server).await;
    admin.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("CREATE DATABASE");
    with_database(server, &name)
}

/// The publishers' partition count in the tests (a logger started by
/// [`Logger::start`] uses it unless told otherwise).
pub const P: u32 = 16;

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    bid_logger_tools::free_port().expect("a free port on loopback")
}

/// An XPUB socket standing in for a bidder's PUB socket: it sends exactly
/// what a PUB does, and also tells us when the logger's subscriptions arrived.
pub struct Publisher {
    _ctx: zmq::Context,
    socket: zmq::Socket,
    pub endpoint: String,
    subscribed: usize,
}

impl Publisher {
    pub fn bind() -> Publisher {
        let ctx = zmq::Context::new();
        let socket = ctx.socket(zmq::XPUB).unwrap();
        socket.set_sndhwm(0).unwrap();
        socket.set_linger(5000).unwrap();
        // Pass every subscription on, repeated ones too (a reconnecting subscriber).
        socket.set_xpub_verbose(true).unwrap();
        socket.set_rcvtimeo(100).unwrap();
        socket.bind("tcp://127.0.0.1:*").unwrap();
        let endpoint = socket.get_last_endpoint().unwrap().unwrap();
        Publisher { _ctx: ctx, socket, endpoint, subscribed: 0 }
    }

    /// Waits until `topics` subscriptions have arrived (or panics after 30 s).
    pub fn wait_for_subscriptions(&mut self, topics: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.subscribed < topics {
            assert!(Instant::now() < deadline, "only {} of {topics} subscriptions arrived", self.subscribed);
            if let Ok(msg) = self.socket.recv_bytes(0) {
                if msg.first() == Some(&1) {
                    self.subscribed += 1;
                }
            }
        }
    }

    pub fn send(&self, frames: &[&[u8]]) {
        self.socket.send_multipart(frames.iter().copied(), 0).unwrap();
    }

    pub fn publish(&self, ev: &TestEvent, partition_count: u32) {
        let topic = ev.topic(partition_count);
        self.send(&[topic.as_bytes(), &ev.payload()]);
    }
}

/// One event as a publisher would send it.
#[derive(Debug, Clone)]
pub struct TestEvent {
    pub event_type: &'static str,
    pub txn: String,
    pub ts: i64,
    pub publisher: Option<String>,
    pub seq: Option<u64>,
    pub country: Option<String>,
    pub os: Option<String>,
    pub campaign: u32,
    pub advertiser: u32,
    pub price: Option<i64>,
    pub revenue: Option<i64>,
    pub attributed: Option<bool>,
    pub exchange: Option<String>,
    pub extra: Option<Value>,
}

impl TestEvent {
    pub fn new(event_type: &'static str, txn: impl Into<String>, ts: i64) -> TestEvent {
        TestEvent {
            event_type,
            txn: txn.into(),
            ts,
            publisher: None,
            seq: None,
            country: None,
            os: None,
            campaign: 0,
            advertiser: 0,
            price: None,
            revenue: None,
            attributed: None,
            exchange: None,
            extra: None,
        }
    }

    pub fn topic(&self, partition_count: u32) -> String {
        format!("{}.{:04}", self.event_type, bid_logger_core::wire::partition_of(self.txn.as_bytes(), partition_count))
    }

    pub fn payload(&self) -> Vec<u8> {
        let mut m = serde_json::Map::new();
        m.insert("txn".into(), json!(self.txn));
        m.insert("ts".into(), json!(self.ts));
        m.insert("type".into(), json!(self.event_type));
        let mut opt = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                m.insert(k.into(), v);
            }
        };
        opt("pub", self.publisher.as_ref().map(|p| json!(p)));
        opt("seq", self.seq.map(|s| json!(s)));
        opt("country", self.country.as_ref().map(|c| json!(c)));
        opt("os", self.os.as_ref().map(|c| json!(c)));
        opt("campaign", (self.campaign != 0).then(|| json!(self.campaign)));
        opt("advertiser", (self.advertiser != 0).then(|| json!(self.advertiser)));
        opt("price", self.price.map(|p| json!(p)));
        opt("revenue", self.revenue.map(|p| json!(p)));
        opt("attributed", self.attributed.map(|p| json!(p)));
        opt("exchange", self.exchange.as_ref().map(|x| json!(x)));
        opt("extra", self.extra.clone());
        rmp_serde::to_vec(&Value::Object(m)).unwrap()
    }
}

/// (events, attributed, price, revenue)
pub type RowVal = (i64, i64, i64, i64);

/// The reference normalisation, written from `warehouse.md` independently
/// of the logger's code.
pub fn expected_country(c: Option<&str>) -> String {
    match c {
        Some(s) if s.len() == 2 && s.chars().all(|ch| ch.is_ascii_alphabetic()) => s.to_ascii_uppercase(),
        _ => "--".into(),
    }
}

pub fn expected_os(o: Option<&str>) -> String {
    let s = match o {
        None | Some("") => return "unknown".into(),
        Some(s) => s,
    };
    let mut out = String::new();
    for ch in s.chars() {
        if out.len() + ch.len_utf8() > 32 {
            break;
        }
        out.push(if ch.is_ascii_alphabetic() { ch.to_ascii_lowercase() } else { ch });
    }
    out
}

/// Runs the `bid-logger` executable with `args` to the end (its database
/// only from the arguments, never from this process's environment).
pub fn bid_logger(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_bid-logger"))
        .args(args)
        .env_remove("BID_LOGGER_DATABASE_URL")
        .output()
        .expect("running bid-logger")
}

/// A configuration file for a test (`--config`), holding `toml`; returns its path.
pub fn rollup_config(test: &str, toml: &str) -> String {
    let path = std::env::temp_dir().join(format!("bid-logger-test-{test}-{}.toml", std::process::id()));
    std::fs::write(&path, toml).unwrap();
    path.display().to_string()
}

/// The default rollup tables: (name, bucket seconds, dimension columns).
pub const TABLES: [(&str, i64, &[&str]); 5] = [
    ("rollup_minute", 60, &["country", "os", "campaign_id", "advertiser_id"]),
    ("rollup_hour", 3600, &["country", "os", "campaign_id", "advertiser_id"]),
    ("rollup_day", 86_400, &["country", "os", "campaign_id", "advertiser_id"]),
    ("rollup_exchange_minute", 60, &["exchange", "country", "os"]),
    ("rollup_exchange_hour", 3600, &["exchange", "country", "os"]),
];

/// Rows of any rollup table: (bucket epoch seconds, event_type, its
/// dimensions as text, sample_ppm) → measures.
pub type AnyRows = BTreeMap<(i64, String, Vec<String>, i32), RowVal>;

/// Expected rows of a table of `bucket_s` and `dims` for `events`.
pub fn expected_table_rows<'a>(
    events: impl IntoIterator<Item = &'a TestEvent>,
    bucket_s: i64,
    dims: &[&str],
    sample_ppm: i32,
) -> AnyRows {
    let mut rows = AnyRows::new();
    let price_table = dims.contains(&"price_bucket");
    for e in events {
        // a price distribution holds the events with a positive price alone
        let bucket = e.price.and_then(bid_logger_core::aggregate::price::price_bucket);
        if price_table && bucket.is_none() {
            continue;
        }
        let dim = |d: &str| match d {
            "price_bucket" => bucket.expect("a priced event").to_string(),
            "country" => expected_country(e.country.as_deref()),
            "os" => expected_os(e.os.as_deref()),
            "exchange" => expected_os(e.exchange.as_deref()),
            "campaign_id" => e.campaign.to_string(),
            "advertiser_id" => e.advertiser.to_string(),
            other => panic!("no dimension {other}"),
        };
        let key = (
            e.ts.div_euclid(bucket_s * 1000) * bucket_s,
            e.event_type.to_string(),
            dims.iter().map(|d| dim(d)).collect(),
            sample_ppm,
        );
        let v = rows.entry(key).or_default();
        v.0 += 1;
        v.1 += i64::from(e.attributed == Some(true));
        v.2 += e.price.unwrap_or(0);
        v.3 += e.revenue.unwrap_or(0);
    }
    rows
}

/// The rows of `table`, whose dimension columns are `dims`.
pub async fn table_rows(client: &tokio_postgres::Client, table: &str, dims: &[&str]) -> AnyRows {
    let cols: Vec<String> = dims.iter().map(|d| format!("{d}::text")).collect();
    let sql = format!(
        "SELECT extract(epoch FROM bucket)::bigint, event_type, ARRAY[{}]::text[], sample_ppm,
                events, attributed_events, price_micros, revenue_micros FROM {table}",
        cols.join(", ")
    );
    let mut rows = AnyRows::new();
    for r in client.query(&sql, &[]).await.unwrap() {
        let key = (r.get(0), r.get(1), r.get(2), r.get(3));
        if let Some(was) = rows.insert(key.clone(), (r.get(4), r.get(5), r.get(6), r.get(7))) {
            panic!("{table}: two rows for the key {key:?} (one was {was:?}): one row per key is the contract");
        }
    }
    rows
}

/// Asserts equality and prints a readable difference when they differ.
pub fn assert_table_eq(actual: &AnyRows, expected: &AnyRows, what: &str) {
    if actual == expected {
        return;
    }
    let mut diff = Vec::new();
    for (k, v) in expected {
        match actual.get(k) {
            Some(a) if a == v => {}
            other => diff.push(format!("  {k:?}: expected {v:?}, got {other:?}")),
        }
    }
    for (k, v) in actual {
        if !expected.contains_key(k) {
            diff.push(format!("  {k:?}: unexpected {v:?}"));
        }
    }
    let shown: Vec<_> = diff.iter().take(20).cloned().collect();
    panic!("{what}: {} rows differ (of {} expected):\n{}", diff.len(), expected.len(), shown.join("\n"));
}

/// Migrates `db` and sets every table's boundary ten minutes back, so that
/// the logger's next folds move it; the connection that did it.
pub async fn migrated_with_boundary_back(db: &str) -> tokio_postgres::Client {
    assert!(bid_logger(&["migrate", "--database-url", db]).status.success(), "migrate");
    let client = connect(db).await;
    let back = "UPDATE bid_logger_boundary SET since = date_trunc('minute', now()) - interval '10 minutes'";
    client.batch_execute(back).await.unwrap();
    client
}

/// Asserts all five default rollup tables equal what `events` should produce.
pub async fn assert_warehouse_matches(client: &tokio_postgres::Client, events: &[TestEvent], sample_ppm: i32) {
    for (table, bucket_s, dims) in TABLES {
        assert_table_eq(
            &table_rows(client, table, dims).await,
            &expected_table_rows(events, bucket_s, dims, sample_ppm),
            table,
        );
    }
}

/// [`assert_warehouse_matches`] with each event type at its own rate
/// (`sample-by-type`): `ppm_of(type)` is its rows' `sample_ppm`.
pub async fn assert_warehouse_matches_by_type(
    client: &tokio_postgres::Client,
    events: &[TestEvent],
    ppm_of: &dyn Fn(&str) -> i32,
) {
    for (table, bucket_s, dims) in TABLES {
        let mut expected = AnyRows::new();
        for t in bid_logger_core::wire::EventType::ALL.map(|t| t.as_str()) {
            let of_type = events.iter().filter(|e| e.event_type == t);
            expected.extend(expected_table_rows(of_type, bucket_s, dims, ppm_of(t)));
        }
        assert_table_eq(&table_rows(client, table, dims).await, &expected, table);
    }
}

/// Terminates the logger's PostgreSQL sessions on the current database;
/// returns how many were killed.
pub async fn kill_logger_connections(client: &tokio_postgres::Client) -> usize {
    client
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name = 'bid-logger'",
            &[],
        )
        .await
        .unwrap()
        .len()
}

/// The real `bid-logger run` process.
pub struct Logger {
    child: Child,
    pub metrics_port: u16,
    /// Its stderr, read as it comes (an undrained pipe would block the
    /// logger once it holds 64 KiB of log lines).
    stderr: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Logger {
    /// Starts `bid-logger run` with `args` (plus a free metrics port, and
    /// [`P`] partitions and a short flush interval unless given).
    pub fn start(database_url: &str, args: &[&str]) -> Logger {
        Logger::start_program(&[env!("CARGO_BIN_EXE_bid-logger")], database_url, args)
    }

    /// [`Logger::start`] with another way to run `bid-logger` (`program`,
    /// its arguments first: a container image, an installed package).
    pub fn start_program(program: &[&str], database_url: &str, args: &[&str]) -> Logger {
        let metrics_port = free_port();
        let mut cmd = Command::new(program[0]);
        cmd.args(&program[1..])
            .arg("run")
            .args(["--database-url", database_url])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")]);
        if !args.contains(&"--flush-interval") {
            cmd.args(["--flush-interval", "200ms"]);
        }
        if !args.contains(&"--partition-count") {
            cmd.args(["--partition-count", &P.to_string()]);
        }
        cmd.args(args);
        for (k, _) in std::env::vars() {
            if k.starts_with("BID_LOGGER_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("RUST_LOG", "info,bid_logger=debug").stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("starting bid-logger");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let reader = {
            let (mut pipe, sink) = (child.stderr.take().expect("piped stderr"), stderr.clone());
            std::thread::spawn(move || {
                let mut chunk = [0u8; 8192];
                while let Ok(n @ 1..) = pipe.read(&mut chunk) {
                    sink.lock().unwrap().extend_from_slice(&chunk[..n]);
                }
            })
        };
        Logger { child, metrics_port, stderr, reader: Some(reader) }
    }

    /// What the logger has written to stderr so far.
    pub fn stderr_so_far(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// The current value of a metric (summed over label sets matching `labels`), or 0.
    pub fn metric(&self, name: &str, labels: &str) -> f64 {
        let body = match http_get(self.metrics_port, "/metrics") {
            Some(b) => b,
            None => return 0.0,
        };
        parse_metric(&body, name, labels)
    }

    /// Waits until `name` reaches `value` (panics after `timeout`).
    pub fn wait_metric(&self, name: &str, value: f64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.metric(name, "");
            if now >= value {
                return;
            }
            if Instant::now() >= deadline {
                let log = self.stderr_so_far();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                panic!("{name} stayed at {now}, expected {value}; the logger's last log lines:\n{}", tail.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The whole /metrics text.
    pub fn metrics_text(&self) -> String {
        http_get(self.metrics_port, "/metrics").unwrap_or_default()
    }

    /// SIGTERM, then waits; returns (exit code, stderr).
    pub fn stop(mut self) -> (i32, String) {
        // SAFETY: kill with a valid pid and signal.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.wait()
    }

    /// SIGTERM, then waits: it must exit 0 (panics with its stderr
    /// otherwise); returns its stderr.
    pub fn stop_ok(self) -> String {
        let (code, stderr) = self.stop();
        assert_eq!(code, 0, "{stderr}");
        stderr
    }

    /// Waits for exit (panics after 60 s); returns (exit code, stderr).
    pub fn wait(&mut self) -> (i32, String) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                if let Some(reader) = self.reader.take() {
                    reader.join().expect("stderr reader");
                }
                return (status.code().unwrap_or(-1), self.stderr_so_far());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("bid-logger did not exit within 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Logger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub use bid_logger_tools::{http_get, metric_value as parse_metric};

/// The subscriptions of a logger that takes every partition at rate 1 on
/// one ingest thread, whatever the partition count: one prefix per event
/// type (`bid.`, …).
pub fn all_topics(_partition_count: u32) -> usize {
    8
}

/// The subscriptions of a logger that samples or takes a partition subset:
/// for each of `types` event types, `partitions` exact topics plus the
/// prefixes that cover the partition numbers from `partition_count` to 9999
/// (counted here independently of the logger's code).
pub fn subset_topics(partition_count: u32, types: usize, partitions: usize) -> usize {
    types * (partitions + covering_prefixes(partition_count))
}

/// How many decimal prefixes cover the four-digit numbers `from..10000`
/// exactly, by a greedy walk over aligned blocks of 1, 10, 100, 1000.
fn covering_prefixes(from: u32) -> usize {
    let (mut n, mut count) = (from, 0);
    while n < 10_000 {
        let size = [1000, 100, 10].into_iter().find(|&b| n % b == 0 && n + b <= 10_000).unwrap_or(1);
        n += size;
        count += 1;
    }
    count
}

/// The tools' simulator publishing in a thread of the test process (what
/// `bid-logger-tools simulate` runs), until its duration ends or it is
/// stopped.
pub struct Simulator {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<bid_logger_tools::simulate::SimSummary>>,
}

impl Simulator {
    /// Binds `endpoint` with 16 partitions and `traffic`'s shape, and starts
    /// publishing once a subscriber arrived; `set` adjusts the rest.
    pub fn start(endpoint: &str, set: impl FnOnce(&mut bid_logger_tools::simulate::SimulateConfig)) -> Simulator {
        let mut config = bid_logger_tools::simulate::SimulateConfig {
            bind: vec![endpoint.to_string()],
            traffic: bid_logger_core::synth::Traffic { partition_count: 16, ..Default::default() },
            wait_for_subscribers: Some(Duration::from_secs(60)),
            ..Default::default()
        };
        set(&mut config);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            bid_logger_tools::simulate::run(&config, &flag).unwrap_or_else(|e| panic!("simulator: {e}"))
        });
        Simulator { stop, thread: Some(thread) }
    }

    /// Waits for the end of its duration or count; what it sent.
    pub fn wait(mut self) -> bid_logger_tools::simulate::SimSummary {
        self.thread.take().expect("joined once").join().expect("the simulator does not panic")
    }

    /// Stops publishing now; what it sent.
    pub fn stop(self) -> bid_logger_tools::simulate::SimSummary {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.wait()
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A field `key=value` of the logger's final `stopped` log line.
pub fn stopped_field(stderr: &str, key: &str) -> u64 {
    let line =
        stderr.lines().rev().find(|l| l.contains("stopped")).unwrap_or_else(|| panic!("no stopped line:\n{stderr}"));
    let plain: String = strip_ansi(line);
    plain
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {plain}"))
}

pub fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// The events of direct table `table` that have landed, read in one
/// statement: those folded (its merged and recent rows) and those of the
/// batches not folded yet (its log: the view shows their live rows from the
/// boundary on at once, late events' rows once a fold has added them to the
/// merged table; a killed logger leaves them to the next fold).
pub async fn landed_events(client: &tokio_postgres::Client, table: &str) -> i64 {
    let sql = format!(
        "SELECT ((SELECT coalesce(sum(events), 0) FROM {table}_merged)
               + (SELECT coalesce(sum(events), 0) FROM {table}_recent)
               + (SELECT coalesce(sum(events), 0) FROM bid_logger_log_{table}))::bigint"
    );
    client.query_one(&sql, &[]).await.unwrap().get(0)
}

/// A subquery of `table`'s live rows (`bucket`, `events`): those its log
/// rows hold, and those an earlier build wrote to its live table.
pub fn live_rows(table: &str) -> String {
    format!(
        "(SELECT u.bucket, u.events FROM bid_logger_log_{table} g, unnest(g.live_bucket, g.live_events) AS u(bucket, events)
          UNION ALL SELECT bucket, events FROM {table}_live)"
    )
}

/// The invariant of a rollup table's parts: every bucket of its merged
/// table before its boundary, every bucket of its recent table from it on
/// (so that the view's merged rows and added-up rows never share a key),
/// and no live row before it once the folds have taken every batch (a live
/// row a batch wrote before a boundary another moved, unknown to its logger,
/// waits there, not shown, for the next fold).
pub async fn assert_boundary_holds(client: &tokio_postgres::Client, table: &str) {
    let sql = format!(
        "SELECT (SELECT count(*) FROM {table}_merged WHERE bucket >= b.since),
                (SELECT count(*) FROM {table}_recent WHERE bucket < b.since),
                (SELECT count(*) FROM {live} l WHERE l.bucket < b.since)
         FROM bid_logger_boundary b WHERE b.rollup = '{table}'",
        live = live_rows(table)
    );
    let row = client.query_one(&sql, &[]).await.unwrap();
    let (merged, recent, live): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        (merged, recent, live),
        (0, 0, 0),
        "{table}: rows on the wrong side of the boundary (merged from it on, recent and live before it)"
    );
}
