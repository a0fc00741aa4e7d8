//! The whole system on a paced stream: the simulator's traffic at a live
//! rate into the logger and PostgreSQL, then into the null subscriber; the
//! CPU of each per event. The folds (every 10 s) and the minute tables'
//! moves (every minute) run as in a running service; the run waits for the
//! moves of its last minute before the stop. The hour and day tables,
//! consumed every 5 and 15 minutes, are consumed by the graceful stop
//! (counted) when the stream is shorter: once for the whole stream, as a
//! running service's are once per interval.
//!
//! A burst of a few seconds (the subjects of [`super::run`]) ends before
//! its first fold is due: its graceful stop does every fold and
//! consumption, and every key is new to every table. A running service
//! pays those as it goes, a fold's keys at a time; this is that cost.

use super::{cpu_seconds, fresh_db, logger_args, settled, stop_gracefully, LocalServer, Warehouse};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What [`measure`] found.
#[derive(Debug, Clone)]
pub struct Paced {
    /// Messages per second the simulator was asked for.
    pub rate: f64,
    /// How long it published to each subject.
    pub duration: Duration,
    /// The rates it reached, to the logger and to the null subscriber.
    pub achieved: [f64; 2],
    /// How long the logger ran after the stream, until the minute tables'
    /// boundaries had passed its last minute (inside the measurement).
    pub waited: Duration,
    /// Messages it sent to the logger.
    pub published: u64,
    /// Events in `rollup_minute` (the same in every default table).
    pub events: u64,
    /// The logger's CPU seconds, from the first message to its exit.
    pub logger_cpu: f64,
    /// PostgreSQL's over the same time, and the settling of the writes.
    pub server_cpu: f64,
    /// The part of both from the SIGTERM to the logger's exit.
    pub stop_cpu: f64,
    /// Messages the null subscriber received (95 % of the stream, so that
    /// it never waits for one the simulator did not send).
    pub null_messages: u64,
    /// Its CPU seconds for them.
    pub null_cpu: f64,
}

impl Paced {
    /// The logger's and PostgreSQL's CPU seconds per million events.
    pub fn whole_system_per_million(&self) -> f64 {
        (self.logger_cpu + self.server_cpu) / self.events as f64 * 1e6
    }

    /// The null subscriber's CPU seconds per million messages.
    pub fn null_per_million(&self) -> f64 {
        self.null_cpu / self.null_messages as f64 * 1e6
    }
}

/// A child process killed (if still running) and reaped when dropped: a
/// measurement cut by an error leaves no subject behind.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if !matches!(self.0.try_wait(), Ok(Some(_))) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Publishes the simulator's default traffic (`bid-logger-tools simulate`,
/// a process of its own, not counted) at `rate` messages/s for `duration`
/// to the logger (sample 1, `partition_count` partitions) on a fresh
/// database of `server_url` (a [`LocalServer`]), then to the null
/// subscriber; checks that every default table holds the same events.
pub async fn measure(
    logger_exe: &str,
    tools_exe: &str,
    server: LocalServer,
    server_url: &str,
    partition_count: u32,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<Paced> {
    let db = fresh_db(server_url, "bench_paced").await?;
    let logged = logger_part(logger_exe, tools_exe, server, &db, partition_count, rate, duration).await;
    // (on an error too: a database left behind draws autovacuum into what runs next)
    let dropped = super::drop_db(server_url, &db).await;
    let logged = logged?;
    dropped?;

    // (95 %: it never waits for a message the simulator did not send)
    let null_messages = logged.published * 95 / 100;
    let endpoint = format!("tcp://127.0.0.1:{}", super::free_port());
    let mut null = Reaped(super::spawn(
        tools_exe,
        &[
            "null-subscriber".into(),
            "--connect".into(),
            endpoint.clone(),
            "--partition-count".into(),
            partition_count.to_string(),
            "--count".into(),
            null_messages.to_string(),
        ],
    ));
    let null_pid = null.0.id();
    let null0 = cpu_seconds(null_pid);
    let (tx, rx) = std::sync::mpsc::channel::<Instant>();
    let failed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Its CPU, read until it exits; `None` if it fails, or is still
    // receiving at the deadline sent once the stream has ended (or the
    // stream failed: the sender is gone). Dropped there, it is killed.
    let reader = std::thread::spawn({
        let failed = failed.clone();
        move || {
            let cpu = null_cpu(&mut null, null_pid, null0, rx);
            failed.store(cpu.is_none(), std::sync::atomic::Ordering::Relaxed);
            cpu
        }
    });
    let gone = || failed.load(std::sync::atomic::Ordering::Relaxed);
    let null_achieved = simulate(tools_exe, &endpoint, partition_count, rate, duration, gone)?.1;
    let _ = tx.send(Instant::now() + Duration::from_secs(30));
    let null_cpu =
        reader.join().map_err(|_| anyhow::anyhow!("the null subscriber's reader panicked"))?.ok_or_else(|| {
            anyhow::anyhow!(
                "the null subscriber failed, or did not receive {null_messages} messages within 30 s of the stream's end"
            )
        })?;
    Ok(Paced {
        rate,
        duration,
        achieved: [logged.achieved, null_achieved],
        waited: logged.waited,
        published: logged.published,
        events: logged.events,
        logger_cpu: logged.logger_cpu,
        server_cpu: logged.server_cpu,
        stop_cpu: logged.stop_cpu,
        null_messages,
        null_cpu,
    })
}

/// The null subscriber's CPU seconds from `null0` until it exits: `None`
/// if it fails, or is still running at the deadline `rx` sends (or when
/// its sender is gone first).
fn null_cpu(null: &mut Reaped, pid: u32, null0: f64, rx: std::sync::mpsc::Receiver<Instant>) -> Option<f64> {
    let mut cpu = null0;
    let mut deadline = None;
    loop {
        if let Ok(Some(status)) = null.0.try_wait() {
            return status.success().then_some(cpu - null0);
        }
        cpu = cpu.max(cpu_seconds(pid));
        match rx.try_recv() {
            Ok(at) => deadline = Some(at),
            Err(std::sync::mpsc::TryRecvError::Disconnected) if deadline.is_none() => return None,
            Err(_) => {}
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The logger's part of [`measure`], on the database `db`.
struct Logged {
    published: u64,
    achieved: f64,
    waited: Duration,
    events: u64,
    logger_cpu: f64,
    server_cpu: f64,
    stop_cpu: f64,
}

#[allow(clippy::too_many_arguments)]
async fn logger_part(
    logger_exe: &str,
    tools_exe: &str,
    server: LocalServer,
    db: &str,
    partition_count: u32,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<Logged> {
    let port = super::free_port();
    let endpoint = format!("tcp://127.0.0.1:{}", super::free_port());
    let mut child = Reaped(super::spawn(logger_exe, &logger_args(&endpoint, db, partition_count, "1", port)));
    let pid = child.0.id();
    settled(port);
    let warehouse = Warehouse { server, url: db };
    warehouse.settle(false);
    let (logger0, server0) = (cpu_seconds(pid), server.cpu_seconds());
    let (published, achieved) =
        simulate(tools_exe, &endpoint, partition_count, rate, duration, || matches!(child.0.try_wait(), Ok(Some(_))))?;
    // what is still in the logger's socket and queue
    std::thread::sleep(Duration::from_secs(2));
    if let Ok(Some(status)) = child.0.try_wait() {
        anyhow::bail!("the logger exited during the paced stream ({status})");
    }
    let waited = moved_past_the_stream(db).await?;
    let (logger_running, server_running) = (cpu_seconds(pid), server.cpu_seconds());
    let logger1 = stop_gracefully(&mut child.0, pid, Instant::now() + Duration::from_secs(600));
    let exited = server.cpu_seconds();
    warehouse.settle(true);
    let server1 = server.cpu_seconds();
    let totals = totals(db).await?;
    let events = totals[0].1;
    anyhow::ensure!(
        totals.iter().all(|(_, n)| *n == events),
        "the default tables hold different events after the paced stream: {totals:?}"
    );
    anyhow::ensure!(events > 0, "the logger wrote no event of the paced stream");
    Ok(Logged {
        published,
        achieved,
        waited,
        events: events as u64,
        logger_cpu: logger1 - logger0,
        server_cpu: server1 - server0,
        stop_cpu: (logger1 - logger_running) + (exited - server_running),
    })
}

/// Waits (at most 180 s) until the minute tables' boundaries have passed
/// the minute now, the stream's last: a graceful stop does not move them,
/// and the recent rows of a run's last minutes, never moved, would leave
/// the moves' cost out of the measurement. Returns how long it waited.
/// (An idle logger costs nothing; the server's idle work in the meantime
/// counts, a slight overcount.)
async fn moved_past_the_stream(db: &str) -> anyhow::Result<Duration> {
    let client = bid_logger::db::connect(db).await?;
    let last: std::time::SystemTime = client.query_one("SELECT date_trunc('minute', now())", &[]).await?.get(0);
    let passed = "SELECT coalesce(bool_and(since > $1), true) FROM bid_logger_boundary
                  WHERE rollup IN ('rollup_minute', 'rollup_exchange_minute')";
    let started = Instant::now();
    while !client.query_one(passed, &[&last]).await?.get::<_, bool>(0) {
        if started.elapsed() > Duration::from_secs(180) {
            eprintln!("bench: the minute tables' boundaries did not pass the stream's last minute within 180 s");
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(started.elapsed())
}

/// Runs the simulator bound at `endpoint` until it has published for
/// `duration`; returns the messages it sent and the rate it reached. It
/// waits for a subscriber first: `subject_gone`, polled every 100 ms, ends
/// it with an error should the subject have died.
fn simulate(
    tools_exe: &str,
    endpoint: &str,
    partition_count: u32,
    rate: f64,
    duration: Duration,
    mut subject_gone: impl FnMut() -> bool,
) -> anyhow::Result<(u64, f64)> {
    let mut sim = Reaped(
        Command::new(tools_exe)
            .args(["simulate", "--bind", endpoint, "--partition-count", &partition_count.to_string()])
            .args(["--rate", &rate.to_string(), "--duration", &format!("{}ms", duration.as_millis())])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?,
    );
    // (it waits for a subscriber: one that has died would keep it waiting)
    while sim.0.try_wait()?.is_none() {
        anyhow::ensure!(!subject_gone(), "the subject exited while the simulator was publishing to it");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut text = String::new();
    if let Some(mut out) = sim.0.stdout.take() {
        std::io::Read::read_to_string(&mut out, &mut text)?;
    }
    let status = sim.0.wait()?;
    anyhow::ensure!(status.success(), "the simulator failed ({status}): {text}");
    // "simulate: N messages in S s = R msg/s (I invalid)"
    let said = text.lines().find_map(|l| {
        let words: Vec<&str> = l.strip_prefix("simulate: ")?.split_whitespace().collect();
        Some((words.first()?.parse().ok()?, words.get(6)?.parse().ok()?))
    });
    said.ok_or_else(|| anyhow::anyhow!("the simulator did not say how many messages it sent: {text}"))
}

/// Each default table's events.
async fn totals(db: &str) -> anyhow::Result<Vec<(&'static str, i64)>> {
    let client = bid_logger::db::connect(db).await?;
    let mut totals = Vec::new();
    for (table, _) in crate::demo::DEFAULT_TABLES {
        let sql = format!("SELECT coalesce(sum(events), 0)::bigint FROM {table}");
        totals.push((table, client.query_one(&sql, &[]).await?.get(0)));
    }
    Ok(totals)
}

/// Prints the paced stream's figures.
pub fn print(p: &Paced) {
    let per_million = |cpu: f64| cpu / p.events as f64 * 1e6;
    println!(
        "\nwhole system on a paced stream: the simulator's traffic at {:.0} msg/s for {:.0} s (it reached {:.0} and \
         {:.0} msg/s); {} messages published to the logger, {} events in each of the five default tables; the \
         logger ran {:.0} s more, until the minute tables' boundaries had passed the stream",
        p.rate,
        p.duration.as_secs_f64(),
        p.achieved[0],
        p.achieved[1],
        p.published,
        p.events,
        p.waited.as_secs_f64()
    );
    println!("{:<30} {:>16}", "", "CPU s / M events");
    println!("{:<30} {:>16.3}", "bid-logger", per_million(p.logger_cpu));
    println!("{:<30} {:>16.3}", "PostgreSQL", per_million(p.server_cpu));
    println!("{:<30} {:>16.3}", "whole system", p.whole_system_per_million());
    println!("{:<30} {:>16.3}", "  of which the graceful stop", per_million(p.stop_cpu));
    println!("{:<30} {:>16.3}", "null subscriber", p.null_per_million());
    println!(
        "paced: whole system (logger + PostgreSQL, up to the logger's graceful exit and the VACUUM and CHECKPOINT of \
         its writes) / null subscriber on the same stream: {:.2}× (target ≤ 3)",
        p.whole_system_per_million() / p.null_per_million()
    );
}
