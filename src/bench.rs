//! The end-to-end benchmark: the same pre-generated stream, published at full
//! speed, to (1) a null subscriber that only receives, (2) the logger, end to
//! end until every event is flushed, (3) the logger at `--sample 1/8`, and
//! (4) the Python baseline; one run, one machine.
//!
//! Subjects run as separate processes; their CPU time comes from
//! `/proc/<pid>/stat` between the first message published and the subject
//! being done, and peak RSS from `VmHWM`.

use crate::ingest::{open_socket, subscriptions, IngestConfig};
use crate::sample::{Rate, Sampler};
use crate::simulate::{append_pub_seq, Generator, Produced, SimulateConfig};
use crate::wire::EventType;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A pre-generated stream: every message's two frames.
pub struct Stream {
    /// (topic, payload) per message.
    pub messages: Vec<(Vec<u8>, Vec<u8>)>,
    /// Fleet-wide partition count.
    pub partition_count: u32,
    /// Mean payload size in bytes.
    pub mean_payload: f64,
}

/// Generates `count` valid messages with the simulator's traffic model.
pub fn generate(count: usize, partition_count: u32, seed: u64) -> Stream {
    let config = SimulateConfig { partition_count, seed, late_fraction: 0.01, ..Default::default() };
    let mut gen = Generator::new(&config);
    let now = crate::ingest::now_ms();
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
    Stream { mean_payload: bytes as f64 / count as f64, messages, partition_count }
}

/// Publishes `stream` on an XPUB bound at `endpoint` once `subscriptions`
/// subscriptions have arrived; returns when everything is queued for sending.
/// Calls `started` just before the first message.
pub fn publish(stream: &Stream, endpoint: &str, subscriptions: usize, started: impl FnOnce()) -> zmq::Socket {
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
    started();
    for (topic, payload) in &stream.messages {
        s.send(topic.as_slice(), zmq::SNDMORE).expect("send");
        s.send(payload.as_slice(), 0).expect("send");
    }
    s
}

/// The null subscriber: the same socket set-up and subscriptions as the
/// logger, receiving `count` messages and doing nothing with them.
pub fn null_subscriber(connect: &str, partition_count: u32, sample: Rate, count: u64) {
    let config = IngestConfig {
        connect: vec![connect.to_string()],
        bind: vec![],
        partition_count,
        partitions: (0..partition_count).collect(),
        event_types: EventType::ALL.to_vec(),
        sample,
        raw_sample: Rate::NONE,
        receive_hwm: 1_000_000,
        max_message_size: 65_536,
        threads: 1,
        allow: vec![],
    };
    let sampler = Sampler::new(sample, partition_count);
    let topics = subscriptions(&config, &[&sampler], 0, 1);
    let ctx = zmq::Context::new();
    let socket = open_socket(&ctx, &config, &topics).expect("socket");
    let mut msg = zmq::Message::new();
    let mut n = 0u64;
    let mut bytes = 0usize;
    while n < count {
        match socket.recv(&mut msg, 0) {
            Ok(()) => {
                bytes += msg.len();
                if !msg.get_more() {
                    n += 1;
                }
            }
            Err(zmq::Error::EAGAIN) => {}
            Err(e) => panic!("recv: {e}"),
        }
    }
    std::hint::black_box(bytes);
}

/// CPU seconds (user + system) a process has used so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the name.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
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
}

/// Runs one subject: `spawn` starts it (given the endpoint), `subscriptions`
/// is how many topics it subscribes to, `done` polls whether it has finished
/// (given the child) and is called every 10 ms.
pub fn measure(
    name: &str,
    stream: &Stream,
    subscriptions: usize,
    spawn: impl FnOnce(&str) -> Child,
    mut done: impl FnMut(&mut Child) -> Progress,
) -> Measurement {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint = format!("tcp://127.0.0.1:{port}");
    let mut child = spawn(&endpoint);
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let publisher = std::thread::scope(|scope| {
        let handle = scope.spawn(|| {
            publish(stream, &endpoint, subscriptions, || {
                tx.send((Instant::now(), cpu_seconds(pid))).unwrap();
            })
        });
        let (t0, cpu0) = rx.recv().expect("publisher started");
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
        let socket = handle.join().expect("publisher thread");
        let events = stream.messages.len() as u64;
        (Measurement { name: name.to_string(), events, elapsed, cpu, rss: peak, ingested }, socket)
    });
    let (m, socket) = publisher;
    drop(socket);
    let _ = child.kill();
    let _ = child.wait();
    m
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
    /// This executable (spawned as the subjects).
    pub exe: String,
}

fn exited(child: &mut Child) -> Progress {
    match child.try_wait() {
        Ok(Some(_)) => Progress::Done,
        _ => Progress::Busy,
    }
}

/// (events accepted, events flushed) from the logger's /metrics.
fn metrics(port: u16) -> (f64, f64) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0.0, 0.0);
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(s, "GET /metrics HTTP/1.0\r\n\r\n").is_err() {
        return (0.0, 0.0);
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    let sum = |name: &str| -> f64 {
        body.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum()
    };
    (sum(crate::telemetry::EVENTS_ACCEPTED), sum(crate::telemetry::EVENTS_FLUSHED))
}

/// Runs every subject and prints the table and ratios; `database_url` is a
/// server where fresh databases can be created.
pub async fn run(cfg: BenchConfig, server_url: &str) -> anyhow::Result<Vec<Measurement>> {
    let p = cfg.partition_count;
    eprintln!("bench: generating {} messages (partition count {p})…", cfg.count);
    let stream = generate(cfg.count, p, 7);
    eprintln!("bench: mean payload {:.0} bytes", stream.mean_payload);
    let eighth: Rate = "1/8".parse().expect("valid rate");
    let sampler = Sampler::new(eighth, p);
    let mut kept_messages = 0u64;
    let mut kept_events = 0u64;
    for (topic, payload) in &stream.messages {
        let ev = crate::decode::decode(topic, payload, p).expect("generated messages are valid");
        if sampler.share(ev.partition) != crate::sample::PartitionShare::Nothing {
            kept_messages += 1;
        }
        kept_events += u64::from(sampler.keep(ev.txn));
    }
    let subscribed_eighth = 8 * (0..p).filter(|&q| sampler.share(q) != crate::sample::PartitionShare::Nothing).count();
    let n = cfg.count as u64;
    let exe = cfg.exe.clone();
    let mut results = Vec::new();

    let null = |name: &str, sample: &str, count: u64, subs: usize| {
        eprintln!("bench: {name}…");
        measure(
            name,
            &stream,
            subs,
            |ep| {
                spawn(
                    &exe,
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
    results.push(null("null subscriber", "1", n, 8 * p as usize));

    let logger = |name: &str, sample: &str, expected: u64, subs: usize, db: String| {
        eprintln!("bench: {name}…");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut last_poll = Instant::now();
        measure(
            name,
            &stream,
            subs,
            |ep| {
                spawn(
                    &exe,
                    &[
                        "run".into(),
                        "--connect".into(),
                        ep.into(),
                        "--database-url".into(),
                        db,
                        "--partition-count".into(),
                        p.to_string(),
                        "--sample".into(),
                        sample.into(),
                        "--metrics-addr".into(),
                        format!("127.0.0.1:{port}"),
                        "--instance-id".into(),
                        "bench".into(),
                    ],
                )
            },
            |_| {
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
    let db1 = fresh_db(server_url, "bench_logger").await?;
    results.push(logger("bid-logger (sample 1)", "1", n, 8 * p as usize, db1));
    results.push(null("null subscriber (sample 1/8)", "1/8", kept_messages, subscribed_eighth));
    let db8 = fresh_db(server_url, "bench_logger8").await?;
    results.push(logger("bid-logger (sample 1/8)", "1/8", kept_events, subscribed_eighth, db8));

    if let Some(script) = &cfg.baseline {
        eprintln!("bench: python baseline…");
        let db = fresh_db(server_url, "bench_py").await?;
        let script = script.display().to_string();
        results.push(measure(
            "python baseline",
            &stream,
            1,
            |ep| {
                spawn(
                    "python3",
                    &[script, "--connect".into(), ep.into(), "--dsn".into(), db, "--count".into(), n.to_string()],
                )
            },
            exited,
        ));
    }
    print_table(&results, &stream);
    Ok(results)
}

async fn fresh_db(server_url: &str, prefix: &str) -> anyhow::Result<String> {
    let (client, conn) = tokio_postgres::connect(server_url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let name = format!("{prefix}_{}", crate::ingest::now_ms());
    client.batch_execute(&format!("CREATE DATABASE {name}")).await?;
    Ok(crate::demo::with_dbname(server_url, &name)?)
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
pub fn soak_outage(exe: &str, minutes: u64) -> anyhow::Result<()> {
    let pg = crate::pgtemp::TempPostgres::start()?;
    let url = pg.url();
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mport = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let endpoint = format!("tcp://127.0.0.1:{port}");
    let run = |args: &[&str]| {
        Command::new(exe).args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn()
    };
    let mut sim = run(&["simulate", "--bind", &endpoint, "--rate", "20000", "--os-explosion", "--seed", "5"])?;
    let mut logger = run(&[
        "run",
        "--connect",
        &endpoint,
        "--database-url",
        &url,
        "--metrics-addr",
        &format!("127.0.0.1:{mport}"),
        "--instance-id",
        "soak-outage",
    ])?;
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
