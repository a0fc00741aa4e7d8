//! The end-to-end benchmark: the same pre-generated stream, published at full
//! speed, to (1) a null subscriber that only receives, (2) the logger, end to
//! end until every event is flushed, (3) the logger at `--sample 1/8`, and
//! (4) the Python baseline; one run, one machine. The logger subjects get
//! it stamped just before it is published ([`Sent::StampedNow`]). Then the
//! whole system on a paced stream ([`paced`]).
//!
//! Subjects run as separate processes; their CPU time comes from
//! `/proc/<pid>/stat` between the first message published and the subject
//! being done, and peak RSS from `VmHWM`.

use bid_logger::ingest::{connect_all, open_socket, subscriptions, IngestConfig};
use bid_logger_core::sample::{PartitionShare, Rate, Sampler};
use bid_logger_core::synth::{append_pub_seq, Generator, Produced, Traffic};
use bid_logger_core::wire::EventType;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod flush;
pub mod latency;
pub mod paced;

/// A pre-generated stream: every message's two frames.
#[derive(Clone)]
pub struct Stream {
    /// (topic, payload) per message.
    pub messages: Vec<(Vec<u8>, Vec<u8>)>,
    /// Fleet-wide partition count.
    pub partition_count: u32,
    /// Mean payload size in bytes.
    pub mean_payload: f64,
    /// The generator's seed.
    pub seed: u64,
}

impl Stream {
    /// The same traffic (same seed, same messages) with event times
    /// relative to now, as a live stream's are.
    pub fn stamped_now(&self) -> Stream {
        generate(self.messages.len(), self.partition_count, self.seed)
    }
}

/// Generates `count` valid messages with the simulator's traffic model.
pub fn generate(count: usize, partition_count: u32, seed: u64) -> Stream {
    let config = Traffic { partition_count, seed, late_fraction: 0.01, ..Default::default() };
    let mut gen = Generator::new(&config);
    let now = bid_logger_core::clock::now_ms();
    let mut seqs = vec![1u64; 8 * partition_count as usize];
    let mut messages = Vec::with_capacity(count);
    let mut bytes = 0usize;
    while messages.len() < count {
        let (mut topic, mut payload) = (Vec::with_capacity(16), Vec::with_capacity(192));
        let (partition, produced) = gen.next(now, &mut topic, &mut payload);
        if let Produced::Valid(et) = produced {
            let slot = &mut seqs[et.index() * partition_count as usize + partition as usize];
            append_pub_seq(&mut payload, "bidder-0", *slot);
            *slot += 1;
        }
        bytes += payload.len();
        messages.push((topic, payload));
    }
    Stream { mean_payload: bytes as f64 / count as f64, messages, partition_count, seed }
}

/// Publishes `stream` on an XPUB bound at `endpoint` once `subscriptions`
/// subscriptions have arrived; returns when everything is queued for sending.
/// Calls `started` just before the first message.
pub fn publish(stream: &Stream, endpoint: &str, subscriptions: usize, started: impl FnOnce()) -> zmq::Socket {
    let s = xpub_waiting(endpoint, subscriptions);
    started();
    send_all(&s, stream);
    s
}

/// Sends one two-frame message.
fn send_message(s: &zmq::Socket, topic: &[u8], payload: &[u8]) {
    s.send(topic, zmq::SNDMORE).expect("send");
    s.send(payload, 0).expect("send");
}

/// Sends every message of `stream`, as fast as the socket takes them.
fn send_all(s: &zmq::Socket, stream: &Stream) {
    for (topic, payload) in &stream.messages {
        send_message(s, topic, payload);
    }
}

/// An XPUB bound at `endpoint` (unbounded send queue) once `subscriptions`
/// subscriptions have arrived, plus 200 ms for the subscriber to settle.
fn xpub_waiting(endpoint: &str, subscriptions: usize) -> zmq::Socket {
    let ctx = zmq::Context::new();
    let s = ctx.socket(zmq::XPUB).expect("XPUB");
    s.set_sndhwm(0).expect("SNDHWM");
    s.set_linger(-1).expect("LINGER");
    s.bind(endpoint).expect("bind");
    s.set_rcvtimeo(60_000).expect("RCVTIMEO");
    let mut seen = 0;
    while seen < subscriptions {
        let msg = s.recv_bytes(0).expect("a subscriber within 60 s");
        if msg.first() == Some(&1) {
            seen += 1;
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    s
}

/// The null subscriber: the same socket set-up, subscriptions and receive
/// loop pacing ([`Pacer`](bid_logger::ingest::Pacer)) as the logger, receiving
/// `count` messages and doing nothing with them.
pub fn null_subscriber(connect: &str, partition_count: u32, sample: Rate, count: u64) {
    let config = ingest_config(connect, partition_count, sample);
    let sampler = Sampler::new(sample, partition_count);
    let topics = subscriptions(&config, &|_, p| sampler.share(p) != PartitionShare::Nothing, 0, 1);
    let ctx = zmq::Context::new();
    let socket = open_socket(&ctx, &config, &topics).expect("socket");
    connect_all(&socket, &config).expect("connect");
    null_receive(&socket, count);
}

/// How many subscriptions the logger (and the null subscriber) sends at
/// `sample` with the defaults otherwise, so that a publisher waits for all of them.
pub fn subscription_count(partition_count: u32, sample: Rate) -> usize {
    let sampler = Sampler::new(sample, partition_count);
    let wants = |_, p| sampler.share(p) != PartitionShare::Nothing;
    subscriptions(&ingest_config("tcp://127.0.0.1:1", partition_count, sample), &wants, 0, 1).len()
}

/// The logger's ingest settings at the defaults, for one endpoint.
fn ingest_config(connect: &str, partition_count: u32, sample: Rate) -> IngestConfig {
    IngestConfig {
        connect: vec![connect.to_string()],
        bind: vec![],
        partition_count,
        partitions: (0..partition_count).collect(),
        event_types: EventType::ALL.to_vec(),
        sample: sample.into(),
        raw_sample: Rate::NONE,
        receive_hwm: bid_logger::ingest::DEFAULT_RECEIVE_HWM,
        quiet_after: bid_logger::ingest::DEFAULT_QUIET_AFTER,
        max_message_size: bid_logger::ingest::DEFAULT_MAX_MESSAGE_SIZE,
        max_event_size: bid_logger::ingest::DEFAULT_MAX_EVENT_SIZE,
        max_seq_jump: bid_logger::ingest::DEFAULT_MAX_SEQ_JUMP,
        threads: 1,
        allow: vec![],
    }
}

/// The null subscriber's receive loop: `count` messages, nothing done with them.
fn null_receive(socket: &zmq::Socket, count: u64) {
    let mut msg = zmq::Message::new();
    let mut n = 0u64;
    let mut bytes = 0usize;
    let mut pacer = bid_logger::ingest::Pacer::default();
    while n < count {
        match socket.recv(&mut msg, pacer.flags()) {
            Ok(()) => {
                pacer.received();
                bytes += msg.len();
                if !msg.get_more() {
                    n += 1;
                }
            }
            Err(zmq::Error::EAGAIN) => {
                pacer.empty();
            }
            Err(e) => panic!("recv: {e}"),
        }
    }
    std::hint::black_box(bytes);
}

/// The fields of `/proc/<pid>/stat` after the command name (which is in
/// parentheses and may hold spaces): state, ppid, … utime is field 14 of
/// stat, index 11 here; stime, cutime, cstime follow. Empty when the
/// process is gone.
fn stat_fields(pid: &str) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')').map_or_else(Vec::new, |(_, rest)| rest.split_whitespace().map(String::from).collect())
}

/// The sum of `fields`' clock ticks at `indices`, in seconds.
fn seconds(fields: &[String], indices: std::ops::Range<usize>) -> f64 {
    let ticks: f64 = indices.map(|i| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)).sum();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// CPU seconds (user + system) a process has used so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    seconds(&stat_fields(&pid.to_string()), 11..13)
}

/// Peak resident set size of a process, in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// One subject's figures.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// Name shown in the table.
    pub name: String,
    /// Published events (the stream's length).
    pub events: u64,
    /// From the first published message to the subject being done.
    pub elapsed: Duration,
    /// CPU seconds the subject used over that time.
    pub cpu: f64,
    /// Peak RSS of the subject.
    pub rss: u64,
    /// For the logger: when every event had been accepted (flushing aside).
    pub ingested: Option<Duration>,
    /// For the logger on a local PostgreSQL: the CPU seconds of the logger
    /// and of every PostgreSQL process from the first published message to
    /// the logger's exit after a graceful stop (its last flush and delta-log
    /// consumptions included) and the settling of its writes after it
    /// ([`Warehouse::settle`]).
    pub whole_system_cpu: Option<f64>,
    /// The part of `whole_system_cpu` spent settling the writes.
    pub settle_cpu: Option<f64>,
    /// The part of `whole_system_cpu` from the SIGTERM to the logger's exit:
    /// its last flush and every delta log consumed, which over a stream
    /// shorter than the fold and consumption intervals is all the folding
    /// and consuming the stream asked for.
    pub stop_cpu: Option<f64>,
}

impl Measurement {
    /// Published events per second.
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }

    /// Published events per second until all were accepted (the rate for
    /// subjects that do not flush).
    pub fn ingest_rate(&self) -> f64 {
        self.events as f64 / self.ingested.unwrap_or(self.elapsed).as_secs_f64()
    }

    /// CPU seconds per million published events.
    pub fn cpu_per_million(&self) -> f64 {
        self.cpu / (self.events as f64 / 1e6)
    }

    /// The whole system's CPU seconds per million published events.
    pub fn whole_system_per_million(&self) -> Option<f64> {
        self.whole_system_cpu.map(|cpu| cpu / (self.events as f64 / 1e6))
    }
}

/// A PostgreSQL server on this machine, whose CPU time can be read from
/// `/proc`: its postmaster's own, its exited children's (backends,
/// autovacuum workers, checkpoints that ended) and its live children's.
#[derive(Debug, Clone, Copy)]
pub struct LocalServer {
    postmaster: u32,
}

/// A subject's database on a [`LocalServer`]: the whole system's CPU counts
/// the work the subject's writes leave to the server as well.
#[derive(Debug, Clone, Copy)]
pub struct Warehouse<'a> {
    /// The server whose CPU is read.
    pub server: LocalServer,
    /// The subject's database.
    pub url: &'a str,
}

impl Warehouse<'_> {
    /// Pays what the writes so far left to the server, so that it falls in
    /// the run that made it and in no other: a `VACUUM` of the database
    /// (the dead rows of folded log and recent rows, the visibility of every page
    /// written), a `CHECKPOINT` (the dirty pages written out), and a wait
    /// (at most 30 s) until no autovacuum worker runs: on the whole server
    /// before a subject's clock starts (one on an earlier subject's
    /// database would count in the run; its start-up's catalog writes are
    /// settled too), on its own database `after` its graceful exit. Then
    /// until its own backend has exited. Errors (a role that may not
    /// `CHECKPOINT`) only leave that part undone, and are reported once.
    pub fn settle(&self, after: bool) {
        let url = self.url.to_string();
        let result = std::thread::spawn(move || -> anyhow::Result<(Option<i32>, Vec<String>)> {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async {
                let client = bid_logger::db::connect(&url).await?;
                let pid: i32 = client.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
                let mut errors = Vec::new();
                for step in ["VACUUM", "CHECKPOINT"] {
                    if let Err(e) = client.batch_execute(step).await {
                        errors.push(format!("{step}: {e}"));
                    }
                }
                // before the clock, any database's (it would count in the
                // run); after it, its own database's only
                let workers = format!(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'{}",
                    if after { " AND datname = current_database()" } else { "" }
                );
                let deadline = Instant::now() + Duration::from_secs(30);
                while Instant::now() < deadline {
                    match client.query_one(&workers, &[]).await {
                        Ok(row) if row.get::<_, i64>(0) == 0 => break,
                        Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                        Err(e) => {
                            errors.push(e.to_string());
                            break;
                        }
                    }
                }
                Ok((Some(pid), errors))
            })
        })
        .join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("panicked")));
        let (pid, errors) = result.unwrap_or_else(|e| (None, vec![format!("{e:#}")]));
        // Its backend's CPU is the server's once it has exited and been
        // reaped (then in the postmaster's children's time).
        let deadline = Instant::now() + Duration::from_secs(5);
        while pid.is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if !errors.is_empty() {
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(|| eprintln!("bench: settling the server's work after a subject: {}", errors.join("; ")));
        }
    }
}

impl LocalServer {
    /// The server behind `url`, when its data directory is readable here
    /// (`None` for a server elsewhere).
    pub async fn of(url: &str) -> Option<LocalServer> {
        let client = bid_logger::db::connect(url).await.ok()?;
        let data: String = client.query_one("SHOW data_directory", &[]).await.ok()?.get(0);
        let pid = std::fs::read_to_string(std::path::Path::new(&data).join("postmaster.pid")).ok()?;
        let postmaster = pid.lines().next()?.trim().parse().ok()?;
        std::path::Path::new(&format!("/proc/{postmaster}")).exists().then_some(LocalServer { postmaster })
    }

    /// Its CPU seconds so far: the postmaster's utime, stime, cutime and
    /// cstime, and the utime and stime of its live children.
    pub fn cpu_seconds(&self) -> f64 {
        let pm = self.postmaster.to_string();
        let mut total = seconds(&stat_fields(&pm), 11..15);
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == pm || !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let f = stat_fields(&name);
            if f.get(1) == Some(&pm) {
                total += seconds(&f, 11..13);
            }
        }
        total
    }
}

/// How the stream reaches a subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// Published at full speed while the subject runs: the rate is the
    /// slower of publisher and subject.
    Live,
    /// Published in full while the subject is stopped (SIGSTOP), queued in
    /// the publisher's ZeroMQ pipe and the TCP buffers; the clock starts when
    /// the subject continues (SIGCONT). The rate is the subject's own
    /// capacity: the publisher only has to move queued bytes.
    Backlog,
}

/// What a subject is sent.
#[derive(Clone, Copy)]
pub enum Sent<'a> {
    /// This stream.
    Stream(&'a Stream),
    /// This stream stamped just before it is published
    /// ([`Stream::stamped_now`]), once the subject has started and settled:
    /// for a subject that writes to a warehouse, where a stream minutes old
    /// would be late as a whole (before `rollup_minute`'s boundary, a minute
    /// behind the clock), every row written by an upsert into the merged
    /// ranges instead of appended (`BENCHMARKS.md`, "The whole system in a
    /// burst, with the stream stamped now").
    StampedNow(&'a Stream),
}

/// Runs one subject: `spawn` starts it (given the endpoint), `subscriptions`
/// is how many topics it subscribes to, `done` polls whether it has finished
/// (given the child) and is called every 10 ms. With `warehouse`, the
/// subject is then stopped gracefully (SIGTERM) and the whole system's CPU
/// is read up to its exit and the work its writes left to the server
/// ([`Warehouse::settle`], done before the clock starts as well).
pub fn measure(
    name: &str,
    sent: Sent<'_>,
    subscriptions: usize,
    feed: Feed,
    warehouse: Option<Warehouse<'_>>,
    spawn: impl FnOnce(&str) -> Child,
    mut done: impl FnMut(&mut Child) -> Progress,
) -> Measurement {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint = format!("tcp://127.0.0.1:{port}");
    let mut child = spawn(&endpoint);
    let pid = child.id();
    if let Some(w) = warehouse {
        w.settle(false);
    }
    let stamped;
    let stream = match sent {
        Sent::Stream(stream) => stream,
        Sent::StampedNow(stream) => {
            stamped = stream.stamped_now();
            &stamped
        }
    };
    let server = warehouse.map(|w| w.server);
    let (tx, rx) = std::sync::mpsc::channel();
    let publisher = std::thread::scope(|scope| {
        let handle = scope.spawn(|| match feed {
            Feed::Live => publish(stream, &endpoint, subscriptions, || {
                tx.send((Instant::now(), cpu_seconds(pid))).unwrap();
            }),
            Feed::Backlog => {
                let s = xpub_waiting(&endpoint, subscriptions);
                stop_process(pid);
                send_all(&s, stream);
                tx.send((Instant::now(), cpu_seconds(pid))).unwrap();
                // SAFETY: kill with our child's pid and a valid signal.
                unsafe { libc::kill(pid as i32, libc::SIGCONT) };
                s
            }
        });
        let (t0, cpu0) = rx.recv().expect("publisher started");
        let server0 = server.map(|s| s.cpu_seconds());
        let deadline = t0 + Duration::from_secs(600);
        let mut peak = 0;
        let mut ingested = None;
        let (elapsed, cpu) = loop {
            peak = peak.max(peak_rss(pid));
            let cpu_now = cpu_seconds(pid);
            match done(&mut child) {
                Progress::Done => break (t0.elapsed(), cpu_now.max(cpu_seconds(pid)) - cpu0),
                Progress::Ingested if ingested.is_none() => ingested = Some(t0.elapsed()),
                _ => {}
            }
            assert!(Instant::now() < deadline, "{name} did not finish within 600 s");
            std::thread::sleep(Duration::from_millis(10));
        };
        let whole = server.zip(server0).map(|(server, server0)| {
            let (logger_running, server_running) = (cpu_seconds(pid), server.cpu_seconds());
            let logger = stop_gracefully(&mut child, pid, deadline);
            let exited = server.cpu_seconds();
            if let Some(w) = warehouse {
                w.settle(true);
            }
            let settled = server.cpu_seconds();
            let stop = logger - logger_running + exited - server_running;
            (logger - cpu0 + settled - server0, settled - exited, stop)
        });
        let (whole_system_cpu, settle_cpu, stop_cpu) = (whole.map(|w| w.0), whole.map(|w| w.1), whole.map(|w| w.2));
        let socket = handle.join().expect("publisher thread");
        let events = stream.messages.len() as u64;
        let m = Measurement {
            name: name.to_string(),
            events,
            elapsed,
            cpu,
            rss: peak,
            ingested,
            whole_system_cpu,
            settle_cpu,
            stop_cpu,
        };
        (m, socket)
    });
    let (m, socket) = publisher;
    drop(socket);
    let _ = child.kill();
    let _ = child.wait();
    m
}

/// Asks `child` (process `pid`) to stop (SIGTERM) and waits for its exit;
/// returns its CPU seconds as last read before it exited (every 10 ms).
pub(crate) fn stop_gracefully(child: &mut Child, pid: u32, deadline: Instant) -> f64 {
    // SAFETY: kill with our child's pid and a valid signal.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let mut cpu = cpu_seconds(pid);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return cpu;
        }
        cpu = cpu.max(cpu_seconds(pid));
        assert!(Instant::now() < deadline, "the subject did not exit within 600 s of its start");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Stops process `pid` (SIGSTOP) and waits until it is stopped.
fn stop_process(pid: u32) {
    // SAFETY: kill with our child's pid and a valid signal.
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next());
        if state == Some("T") || Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// What a subject's `done` poll reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Still working.
    Busy,
    /// Everything received and accepted, not yet all flushed.
    Ingested,
    /// Finished.
    Done,
}

/// Spawns `program args…` with stdout captured and stderr discarded.
pub fn spawn(program: &str, args: &[String]) -> Child {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"))
}

/// Settings of `bid-logger bench`.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Messages in the stream.
    pub count: usize,
    /// Fleet-wide partition count.
    pub partition_count: u32,
    /// The Python baseline script, if it is to be measured.
    pub baseline: Option<std::path::PathBuf>,
    /// The `bid-logger` executable (spawned as the logger subjects).
    pub logger: String,
    /// The `bid-logger-tools` executable (spawned as the null subscriber).
    pub tools: String,
    /// Rounds of the null-subscriber and logger subjects (medians are reported).
    pub rounds: usize,
    /// How long the latency run publishes (zero: not measured).
    pub latency: Duration,
    /// The latency run's rate as a fraction of the logger's median ingest rate.
    pub latency_fraction: f64,
    /// Measure only the latency, at this rate (events/s).
    pub latency_rate: Option<f64>,
    /// How long the paced stream publishes to each of its subjects (zero:
    /// not measured; see [`paced`]).
    pub paced: Duration,
    /// The paced stream's rate (messages/s).
    pub paced_rate: f64,
}

fn exited(child: &mut Child) -> Progress {
    match child.try_wait() {
        Ok(Some(_)) => Progress::Done,
        _ => Progress::Busy,
    }
}

/// Waits until the logger on `port` has done its start-up work on the
/// database (migrations, the time ranges of the retention window: hundreds
/// on a fresh warehouse), as a long-running logger has: the stream is
/// published only then, so that a start's one-off work is not measured as
/// per-event cost. A build without the maintenance metric is given 5 s.
pub(crate) fn settled(port: u16) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        let body = crate::http_get(port, "/metrics").unwrap_or_default();
        if crate::metric_value(&body, bid_logger::telemetry::LAST_MAINTENANCE, "") > 0.0 {
            return;
        }
        if !body.contains(bid_logger::telemetry::LAST_MAINTENANCE) && started.elapsed() > Duration::from_secs(5) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// (events accepted, events flushed) from the logger's /metrics.
fn metrics(port: u16) -> (f64, f64) {
    let m = scrape(port);
    (m(bid_logger::telemetry::EVENTS_ACCEPTED), m(bid_logger::telemetry::EVENTS_FLUSHED))
}

/// The logger's /metrics on `port`, as a function from a metric name (or
/// name prefix) to the sum of its series; 0 for anything missing.
fn scrape(port: u16) -> impl Fn(&str) -> f64 {
    let body = crate::http_get(port, "/metrics").unwrap_or_default();
    move |name: &str| crate::metric_value(&body, name, "")
}

/// Runs every subject and prints the table and ratios; `database_url` is a
/// server where fresh databases can be created.
pub async fn run(cfg: BenchConfig, server_url: &str) -> anyhow::Result<Vec<Measurement>> {
    let p = cfg.partition_count;
    eprintln!("bench: generating {} messages (partition count {p})…", cfg.count);
    let stream = generate(cfg.count, p, 7);
    eprintln!("bench: mean payload {:.0} bytes", stream.mean_payload);
    if let Some(rate) = cfg.latency_rate {
        latency_only(&cfg, &stream, rate, server_url).await?;
        return Ok(Vec::new());
    }
    let eighth: Rate = "1/8".parse().expect("valid rate");
    let sampler = Sampler::new(eighth, p);
    let mut kept_messages = 0u64;
    let mut kept_events = 0u64;
    for (topic, payload) in &stream.messages {
        let ev = bid_logger_core::decode::decode(topic, payload).expect("generated messages are valid");
        if sampler.share(ev.partition) != PartitionShare::Nothing {
            kept_messages += 1;
        }
        kept_events += u64::from(sampler.keep(ev.txn));
    }
    let subscribed_eighth = subscription_count(p, eighth);
    let subscribed_all = subscription_count(p, Rate::ALL);
    let n = cfg.count as u64;
    let (logger_exe, tools_exe) = (cfg.logger.clone(), cfg.tools.clone());
    // The whole system's CPU (logger + PostgreSQL) is read when the server
    // runs on this machine.
    let server = LocalServer::of(server_url).await;
    if server.is_none() {
        eprintln!(
            "bench: PostgreSQL is not on this machine (or its data directory is unreadable): no whole-system CPU"
        );
    }
    let mut results = Vec::new();

    let null = |name: &str, sample: &str, count: u64, subs: usize, feed: Feed| {
        eprintln!("bench: {name}…");
        measure(
            name,
            Sent::Stream(&stream),
            subs,
            feed,
            None,
            |ep| {
                spawn(
                    &tools_exe,
                    &[
                        "null-subscriber".into(),
                        "--connect".into(),
                        ep.into(),
                        "--partition-count".into(),
                        p.to_string(),
                        "--sample".into(),
                        sample.into(),
                        "--count".into(),
                        count.to_string(),
                    ],
                )
            },
            exited,
        )
    };

    let logger = |name: &str, sample: &str, expected: u64, subs: usize, db: String, feed: Feed| {
        eprintln!("bench: {name}…");
        let port = free_port();
        let mut last_poll = Instant::now();
        measure(
            name,
            Sent::StampedNow(&stream),
            subs,
            feed,
            server.map(|server| Warehouse { server, url: &db }),
            |ep| {
                let child = spawn(&logger_exe, &logger_args(ep, &db, p, sample, port));
                settled(port);
                child
            },
            |child| {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("{name} exited early ({status}); run it by hand to see its log");
                }
                if last_poll.elapsed() < Duration::from_millis(20) {
                    return Progress::Busy;
                }
                last_poll = Instant::now();
                let (accepted, flushed) = metrics(port);
                if flushed >= expected as f64 {
                    Progress::Done
                } else if accepted >= expected as f64 {
                    Progress::Ingested
                } else {
                    Progress::Busy
                }
            },
        )
    };
    // Subjects alternate round by round, so slow phases of the shared
    // machine spread over all of them; the table shows each one's medians.
    let mut rounds: Vec<Vec<Measurement>> = vec![Vec::new(); 4];
    for round in 1..=cfg.rounds.max(1) {
        eprintln!("bench: round {round} of {}", cfg.rounds.max(1));
        rounds[0].push(null("null subscriber", "1", n, subscribed_all, Feed::Live));
        let db = fresh_db(server_url, "bench_logger").await?;
        rounds[1].push(logger("bid-logger (sample 1)", "1", n, subscribed_all, db.clone(), Feed::Live));
        drop_db(server_url, &db).await?;
        rounds[2].push(null("null subscriber (sample 1/8)", "1/8", kept_messages, subscribed_eighth, Feed::Live));
        let db = fresh_db(server_url, "bench_logger8").await?;
        rounds[3].push(logger(
            "bid-logger (sample 1/8)",
            "1/8",
            kept_events,
            subscribed_eighth,
            db.clone(),
            Feed::Live,
        ));
        drop_db(server_url, &db).await?;
    }
    for r in &rounds {
        for m in r {
            eprintln!(
                "bench: {:<30} ingest {:.3} s, done {:.3} s, {:.3} CPU s/M{}",
                m.name,
                m.ingested.unwrap_or(m.elapsed).as_secs_f64(),
                m.elapsed.as_secs_f64(),
                m.cpu_per_million(),
                whole_system_note(m)
            );
        }
    }
    results.extend(rounds.iter().map(|r| median(r)));

    let python = |script: &std::path::Path, db: String, feed: Feed| {
        eprintln!("bench: python baseline…");
        let script = script.display().to_string();
        measure(
            "python baseline",
            Sent::Stream(&stream),
            1,
            feed,
            None,
            |ep| {
                spawn(
                    "python3",
                    &[script, "--connect".into(), ep.into(), "--dsn".into(), db, "--count".into(), n.to_string()],
                )
            },
            exited,
        )
    };
    if let Some(script) = &cfg.baseline {
        let db = fresh_db(server_url, "bench_py").await?;
        results.push(python(script, db.clone(), Feed::Live));
        drop_db(server_url, &db).await?;
    }
    print_table(&results, &stream);

    // Capacity: the same stream queued while each subject is stopped, then
    // drained at the subject's own pace.
    let mut backlog: Vec<Vec<Measurement>> = vec![Vec::new(); 2];
    for round in 1..=cfg.rounds.max(1) {
        eprintln!("bench: backlog round {round} of {}", cfg.rounds.max(1));
        backlog[0].push(null("null subscriber", "1", n, subscribed_all, Feed::Backlog));
        let db = fresh_db(server_url, "bench_backlog").await?;
        backlog[1].push(logger("bid-logger (sample 1)", "1", n, subscribed_all, db.clone(), Feed::Backlog));
        drop_db(server_url, &db).await?;
    }
    for m in backlog.iter().flatten() {
        eprintln!(
            "bench: backlog {:<22} drain {:.3} s, {:.3} CPU s/M{}",
            m.name,
            m.elapsed.as_secs_f64(),
            m.cpu_per_million(),
            whole_system_note(m)
        );
    }
    let mut drained: Vec<Measurement> = backlog.iter().map(|r| median(r)).collect();
    if let Some(script) = &cfg.baseline {
        let db = fresh_db(server_url, "bench_py_backlog").await?;
        drained.push(python(script, db.clone(), Feed::Backlog));
        drop_db(server_url, &db).await?;
    }
    print_backlog(&drained);

    if !cfg.paced.is_zero() {
        match server {
            Some(server) => {
                eprintln!(
                    "bench: the whole system on a paced stream: the simulator at {:.0} msg/s for {:?} to the logger, \
                     then to the null subscriber…",
                    cfg.paced_rate, cfg.paced
                );
                let paced =
                    paced::measure(&cfg.logger, &cfg.tools, server, server_url, p, cfg.paced_rate, cfg.paced).await?;
                paced::print(&paced);
            }
            None => eprintln!(
                "bench: PostgreSQL is not on this machine: no paced stream (its figure is the whole system's)"
            ),
        }
    }

    eprintln!("bench: flush, logger vs plain COPY + INSERT … ON CONFLICT…");
    let delta = flush::batch_of(&stream, bid_logger::sink::service::MAX_BATCH_ROWS);
    let a = fresh_db(server_url, "bench_flush_logger").await?;
    let b = fresh_db(server_url, "bench_flush_plain").await?;
    let flush_rounds = flush::compare(&a, &b, &delta, 5).await?;
    drop_db(server_url, &a).await?;
    drop_db(server_url, &b).await?;
    print_flush(&flush_rounds);

    if !cfg.latency.is_zero() {
        let fraction = cfg.latency_fraction;
        let rate = (results[1].ingest_rate() * fraction).round();
        eprintln!(
            "bench: latency at {rate:.0} events/s ({:.0} % of the logger's ingest rate) for {:?}…",
            fraction * 100.0,
            cfg.latency
        );
        // The same traffic stamped now: the stream above is minutes old, and
        // an event older than rollup_minute's boundary shows at a fold, not
        // at its batch's commit (the latency measured).
        let stream = generate(cfg.count, p, 7);
        let db = fresh_db(server_url, "bench_latency").await?;
        let report = latency_run(&cfg.logger, &db, &stream, rate, cfg.latency).await?;
        drop_db(server_url, &db).await?;
        print_latency(&report, &format!("{:.0} % of the logger's ingest rate", fraction * 100.0));
    }
    Ok(results)
}

pub(crate) fn free_port() -> u16 {
    crate::free_port().expect("a free port on loopback")
}

pub(crate) fn logger_args(
    endpoint: &str,
    db: &str,
    partition_count: u32,
    sample: &str,
    metrics_port: u16,
) -> Vec<String> {
    [
        "run",
        "--connect",
        endpoint,
        "--database-url",
        db,
        "--partition-count",
        &partition_count.to_string(),
        "--sample",
        sample,
        "--metrics-addr",
        &format!("127.0.0.1:{metrics_port}"),
        "--instance-id",
        "bench",
    ]
    .map(String::from)
    .to_vec()
}

/// The middle value of `v` (the upper one of an even count).
fn mid<T: Copy + PartialOrd>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

/// Each figure's median over the rounds (peak RSS: the largest).
fn median(rounds: &[Measurement]) -> Measurement {
    let first = &rounds[0];
    Measurement {
        name: first.name.clone(),
        events: first.events,
        elapsed: mid(rounds.iter().map(|m| m.elapsed).collect()),
        cpu: mid(rounds.iter().map(|m| m.cpu).collect()),
        rss: rounds.iter().map(|m| m.rss).max().unwrap_or(0),
        ingested: first.ingested.map(|_| mid(rounds.iter().filter_map(|m| m.ingested).collect())),
        whole_system_cpu: first
            .whole_system_cpu
            .map(|_| mid(rounds.iter().filter_map(|m| m.whole_system_cpu).collect())),
        settle_cpu: first.settle_cpu.map(|_| mid(rounds.iter().filter_map(|m| m.settle_cpu).collect())),
        stop_cpu: first.stop_cpu.map(|_| mid(rounds.iter().filter_map(|m| m.stop_cpu).collect())),
    }
}

/// The latency run alone, at `rate` events/s.
async fn latency_only(cfg: &BenchConfig, stream: &Stream, rate: f64, server_url: &str) -> anyhow::Result<()> {
    anyhow::ensure!(!cfg.latency.is_zero(), "--latency-rate needs a --latency duration above zero");
    eprintln!("bench: latency at {rate:.0} events/s for {:?}…", cfg.latency);
    let db = fresh_db(server_url, "bench_latency").await?;
    let report = latency_run(&cfg.logger, &db, stream, rate, cfg.latency).await?;
    drop_db(server_url, &db).await?;
    print_latency(&report, "as asked");
    Ok(())
}

fn print_latency(report: &latency::LatencyReport, rate_is: &str) {
    println!(
        "\nlatency at {:.0} events/s ({rate_is}), publish → visible in rollup_minute, \
         {} events after a 2 s warm-up, flush interval 1 s: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        report.rate,
        report.events,
        report.p50.as_secs_f64() * 1e3,
        report.p99.as_secs_f64() * 1e3,
        report.max.as_secs_f64() * 1e3
    );
}

async fn latency_run(
    exe: &str,
    db: &str,
    stream: &Stream,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<latency::LatencyReport> {
    let port = free_port();
    let endpoint = format!("tcp://127.0.0.1:{}", free_port());
    let p = stream.partition_count;
    let mut child = spawn(exe, &logger_args(&endpoint, db, p, "1", port));
    let (at, wall_ms) = (Instant::now(), bid_logger_core::clock::now_ms());
    let published = std::sync::Arc::new(std::sync::OnceLock::new());
    let publisher = {
        let (stream, endpoint, published) = (stream.clone(), endpoint.clone(), published.clone());
        std::thread::spawn(move || {
            let (socket, timeline) =
                latency::paced_publish(&stream, &endpoint, subscription_count(p, Rate::ALL), rate, duration);
            let _ = published.set(timeline.last().map_or(0, |t| t.1));
            (socket, timeline)
        })
    };
    let visible = latency::poll_visible(db, || published.get().copied(), duration + Duration::from_secs(120)).await;
    let (socket, timeline) = publisher.join().expect("publisher thread");
    let m = scrape(port);
    let flushes = m(&format!("{}_count", bid_logger::telemetry::FLUSH_DURATION));
    let flushing = m(&format!("{}_sum", bid_logger::telemetry::FLUSH_DURATION));
    // Ingest keeps pace while flushes run when every published message was
    // received, none lost, and the latency stays bounded.
    eprintln!(
        "bench: latency run: {flushes:.0} flushes, mean {:.0} ms, {:.0} rows upserted by the folds and consumptions per flush; \
         a flush was running {:.0} % of the time; {:.0} of {} published messages received, {:.0} lost",
        flushing / flushes * 1e3,
        m(bid_logger::telemetry::ROWS_UPSERTED) / flushes,
        flushing / duration.as_secs_f64() * 100.0,
        m(bid_logger::telemetry::MESSAGES_RECEIVED),
        published.get().copied().unwrap_or(0),
        m(bid_logger::telemetry::MESSAGES_LOST)
    );
    drop(socket);
    eprintln!(
        "bench: latency run: at most {:.1} % of the events were older than rollup_minute's boundary when published: \
         the view shows those at the next fold (fold-interval), not at their batch's commit, which the figures below measure",
        latency::behind_boundary(stream, &timeline, at, wall_ms) * 100.0
    );
    // A graceful stop folds what the view does not show yet (late events'
    // live rows); then the table holds exactly what the ledger says.
    let pid = child.id();
    stop_gracefully(&mut child, pid, Instant::now() + Duration::from_secs(120));
    let visible = visible?;
    let client = bid_logger::db::connect(db).await?;
    let sql = format!("SELECT (SELECT sum(events) FROM rollup_minute)::bigint, ({})", latency::VISIBLE);
    let row = client.query_one(&sql, &[]).await?;
    let (rollup, ledger): (i64, i64) = (row.get(0), row.get(1));
    anyhow::ensure!(rollup == ledger, "rollup_minute holds {rollup} events but the ledger says {ledger}");
    latency::report(rate, &timeline, &visible, Duration::from_secs(2))
        .ok_or_else(|| anyhow::anyhow!("no latency samples"))
}

fn print_backlog(results: &[Measurement]) {
    println!("\nbacklog drain (the stream queued while the subject was stopped; each subject's own capacity)");
    println!("{:<30} {:>10} {:>12} {:>16}", "subject", "drain s", "events/s", "CPU s / M events");
    for m in results {
        let drained = m.ingested.unwrap_or(m.elapsed);
        println!(
            "{:<30} {:>10.3} {:>12.0} {:>16.3}",
            m.name,
            drained.as_secs_f64(),
            m.ingest_rate(),
            m.cpu_per_million()
        );
    }
    let find = |n: &str| results.iter().find(|m| m.name == n);
    if let (Some(null), Some(logger)) = (find("null subscriber"), find("bid-logger (sample 1)")) {
        println!(
            "backlog: logger / null subscriber: drain rate {:.2}×, CPU per event {:.2}×",
            logger.ingest_rate() / null.ingest_rate(),
            logger.cpu_per_million() / null.cpu_per_million()
        );
        print_whole_system("backlog: ", logger, null);
        if let Some(py) = find("python baseline") {
            println!(
                "backlog: logger / python baseline: drain rate {:.1}× (null subscriber / python: {:.1}×)",
                logger.ingest_rate() / py.ingest_rate(),
                null.ingest_rate() / py.ingest_rate()
            );
        }
    }
}

fn print_flush(rounds: &[flush::FlushRound]) {
    println!(
        "\nflush: one batch of {} rows (minute + hour), logger write_batch (appends; folded later) vs plain COPY + INSERT … ON CONFLICT",
        rounds[0].rows
    );
    println!(
        "{:<8} {:>14} {:>16} {:>14} {:>16} {:>8}",
        "round", "logger s", "logger rows/s", "plain s", "plain rows/s", "ratio"
    );
    for (i, r) in rounds.iter().enumerate() {
        println!(
            "{:<8} {:>14.3} {:>16.0} {:>14.3} {:>16.0} {:>8.2}",
            if i == 0 { "insert".to_string() } else { format!("update {i}") },
            r.logger.as_secs_f64(),
            r.rows as f64 / r.logger.as_secs_f64(),
            r.plain.as_secs_f64(),
            r.rows as f64 / r.plain.as_secs_f64(),
            r.ratio()
        );
    }
    let ratio = mid(rounds.iter().map(|r| r.ratio()).collect());
    println!("flush: logger takes {ratio:.2}× the plain time (median of {} rounds)", rounds.len());
}

/// Drops a database [`fresh_db`] made, once its subject is done: a
/// server holding every earlier subject's database (hundreds of ranges
/// each) has its autovacuum visit them all, which would count in the
/// next subjects' whole-system CPU.
pub(crate) async fn drop_db(server_url: &str, db_url: &str) -> anyhow::Result<()> {
    let name: String = bid_logger::db::connect(db_url).await?.query_one("SELECT current_database()", &[]).await?.get(0);
    let client = bid_logger::db::connect(server_url).await?;
    client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await?;
    Ok(())
}

pub(crate) async fn fresh_db(server_url: &str, prefix: &str) -> anyhow::Result<String> {
    let client = bid_logger::db::connect(server_url).await?;
    let name = format!("{prefix}_{}", bid_logger_core::clock::now_ms());
    client.batch_execute(&format!("CREATE DATABASE {name}")).await?;
    Ok(crate::demo::with_dbname(server_url, &name)?)
}

/// A round's whole-system CPU for its `bench:` line ("" when not measured).
fn whole_system_note(m: &Measurement) -> String {
    match (m.whole_system_per_million(), m.settle_cpu, m.stop_cpu) {
        (Some(w), Some(s), Some(stop)) => {
            let per_million = |x: f64| x / (m.events as f64 / 1e6);
            format!(
                ", whole system {w:.3} CPU s/M (its graceful stop {:.3}, settling its writes {:.3})",
                per_million(stop),
                per_million(s)
            )
        }
        _ => String::new(),
    }
}

/// The whole system's CPU per event against the null subscriber's, when it
/// was measured.
fn print_whole_system(prefix: &str, logger: &Measurement, null: &Measurement) {
    if let Some(whole) = logger.whole_system_per_million() {
        println!(
            "{prefix}whole system (logger + PostgreSQL, up to the logger's graceful exit and the VACUUM and CHECKPOINT of its writes) / null subscriber: {:.2} / \
             {:.2} CPU s per M events = {:.2}×",
            whole,
            null.cpu_per_million(),
            whole / null.cpu_per_million()
        );
        if let Some(stop) = logger.stop_cpu {
            // The stop does what the folds and consumptions left to it:
            // over a short stream, all of them, which a running service
            // pays as it goes. Without it the figure is a floor, not the
            // running cost (BENCHMARKS.md, "The whole system in a burst:
            // the graceful stop's part").
            let running = whole - stop / (logger.events as f64 / 1e6);
            println!(
                "{prefix}  of which its graceful stop {:.2} CPU s per M events; without it {:.2} = {:.2}×",
                whole - running,
                running,
                running / null.cpu_per_million()
            );
        }
    }
}

fn print_table(results: &[Measurement], stream: &Stream) {
    println!(
        "\nstream: {} messages, mean payload {:.0} bytes, partition count {}",
        stream.messages.len(),
        stream.mean_payload,
        stream.partition_count
    );
    println!(
        "{:<30} {:>10} {:>12} {:>14} {:>12} {:>16} {:>12}",
        "subject", "ingest s", "ingest ev/s", "all flushed s", "e2e ev/s", "CPU s / M events", "peak RSS MiB"
    );
    for m in results {
        let ingest = m.ingested.unwrap_or(m.elapsed);
        println!(
            "{:<30} {:>10.3} {:>12.0} {:>14} {:>12.0} {:>16.3} {:>12.1}",
            m.name,
            ingest.as_secs_f64(),
            m.events as f64 / ingest.as_secs_f64(),
            if m.ingested.is_some() { format!("{:.3}", m.elapsed.as_secs_f64()) } else { "-".into() },
            m.rate(),
            m.cpu_per_million(),
            m.rss as f64 / 1048576.0
        );
    }
    let find = |n: &str| results.iter().find(|m| m.name == n);
    if let (Some(null), Some(logger)) = (find("null subscriber"), find("bid-logger (sample 1)")) {
        println!(
            "\nlogger / null subscriber: ingest throughput {:.2}×, end-to-end throughput {:.2}×, CPU per event {:.2}×",
            logger.ingest_rate() / null.rate(),
            logger.rate() / null.rate(),
            logger.cpu_per_million() / null.cpu_per_million()
        );
        print_whole_system("", logger, null);
        if let Some(py) = find("python baseline") {
            println!(
                "logger / python baseline: ingest throughput {:.1}×, end-to-end throughput {:.1}×, CPU per event {:.3}× ({:.1}× less)",
                logger.ingest_rate() / py.rate(),
                logger.rate() / py.rate(),
                logger.cpu_per_million() / py.cpu_per_million(),
                py.cpu_per_million() / logger.cpu_per_million()
            );
        }
        if let Some(l8) = find("bid-logger (sample 1/8)") {
            println!(
                "sample 1/8: logger CPU per published event {:.1}× lower than at sample 1",
                logger.cpu_per_million() / l8.cpu_per_million()
            );
        }
    }
}

/// `scripts/soak-outage`: PostgreSQL down for `minutes` while the simulator
/// publishes at 20 000 msg/s with an OS explosion; reports the logger's peak
/// RSS during the outage and checks that everything accepted is written after.
pub fn soak_outage(logger_exe: &str, tools_exe: &str, minutes: u64) -> anyhow::Result<()> {
    let pg = crate::pgtemp::TempPostgres::start()?;
    let url = pg.url();
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mport = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let endpoint = format!("tcp://127.0.0.1:{port}");
    let run = |exe: &str, args: &[&str]| {
        Command::new(exe).args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn()
    };
    let mut sim =
        run(tools_exe, &["simulate", "--bind", &endpoint, "--rate", "20000", "--os-explosion", "--seed", "5"])?;
    let mut logger = run(
        logger_exe,
        &[
            "run",
            "--connect",
            &endpoint,
            "--database-url",
            &url,
            "--metrics-addr",
            &format!("127.0.0.1:{mport}"),
            "--instance-id",
            "soak-outage",
        ],
    )?;
    let pid = logger.id();
    std::thread::sleep(Duration::from_secs(5));
    pg.stop()?;
    eprintln!("soak-outage: database stopped; publishing for {minutes} min");
    let started = Instant::now();
    let mut last = Instant::now();
    while started.elapsed() < Duration::from_secs(minutes * 60) {
        std::thread::sleep(Duration::from_secs(1));
        if last.elapsed() >= Duration::from_secs(30) {
            last = Instant::now();
            let (accepted, flushed) = metrics(mport);
            eprintln!(
                "soak-outage: {:>4.0} s, accepted {accepted:.0}, flushed {flushed:.0}, peak RSS {} MiB",
                started.elapsed().as_secs_f64(),
                peak_rss(pid) / 1048576
            );
        }
    }
    let peak = peak_rss(pid);
    let _ = sim.kill();
    let _ = sim.wait();
    pg.restart()?;
    std::thread::sleep(Duration::from_secs(2));
    let (accepted, _) = metrics(mport);
    let deadline = Instant::now() + Duration::from_secs(600);
    while metrics(mport).1 < accepted && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let (accepted, flushed) = metrics(mport);
    // SAFETY: kill with a valid pid and signal.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = logger.wait()?;
    println!(
        "soak-outage: database down {minutes} min at 20000 msg/s with a new OS per transaction: peak RSS {} MiB; \
         accepted {accepted:.0}, flushed {flushed:.0} after recovery; logger exit {status}",
        peak / 1048576
    );
    anyhow::ensure!(flushed >= accepted, "not everything accepted was written");
    Ok(())
}
