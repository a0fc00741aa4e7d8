//! The bidder-fleet simulator: publishes [`Generator`]'s stream on XPUB
//! sockets per the wire format, with `pub`/`seq` on every message, at a
//! rate, for a duration or a count; for load tests, the demo, the
//! benchmark and the integration tests.

use bid_logger_core::synth::{append_pub_seq, Generator, Produced, Traffic, Truth};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Settings of the simulator.
#[derive(Debug, Clone)]
pub struct SimulateConfig {
    /// One XPUB socket (a simulated bidder process) per endpoint.
    pub bind: Vec<String>,
    /// The generated traffic.
    pub traffic: Traffic,
    /// Messages per second; `None` = as fast as possible.
    pub rate: Option<f64>,
    /// Stop after this long …
    pub duration: Option<Duration>,
    /// … or after this many messages (whichever comes first).
    pub count: Option<u64>,
    /// Restart each publisher's sequences every this many messages.
    pub restart_every: Option<u64>,
    /// The first `seq` of every sequence (and after each restart).
    pub first_seq: u64,
    /// Wait (up to this long) for a subscriber on every socket before sending.
    pub wait_for_subscribers: Option<Duration>,
    /// Send high-water mark per socket (0 = unlimited).
    pub send_hwm: i32,
    /// Print a progress line.
    pub progress: bool,
}

impl Default for SimulateConfig {
    fn default() -> Self {
        SimulateConfig {
            bind: vec!["tcp://127.0.0.1:5556".into()],
            traffic: Traffic::default(),
            rate: Some(10_000.0),
            duration: None,
            count: None,
            restart_every: None,
            first_seq: 1,
            wait_for_subscribers: Some(Duration::from_secs(10)),
            send_hwm: 0,
            progress: false,
        }
    }
}

/// What a simulator run sent.
#[derive(Debug, Clone, Default)]
pub struct SimSummary {
    /// Messages sent.
    pub sent: u64,
    /// Per event type, valid events sent.
    pub by_type: BTreeMap<&'static str, u64>,
    /// Wall time from the first message to the last.
    pub elapsed: Duration,
    /// Exact expected totals.
    pub truth: Truth,
}

/// Simulator failure.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    /// A libzmq call failed.
    #[error("zeromq {what} failed: {source}")]
    Zmq {
        /// The call.
        what: String,
        /// libzmq's error.
        source: zmq::Error,
    },
}

/// Publishes until the duration or count is reached, or `stop` is set.
pub fn run(config: &SimulateConfig, stop: &std::sync::atomic::AtomicBool) -> Result<SimSummary, SimulateError> {
    let z = |what: String| move |source| SimulateError::Zmq { what, source };
    let ctx = zmq::Context::new();
    let mut sockets = Vec::new();
    for (i, endpoint) in config.bind.iter().enumerate() {
        let s = ctx.socket(zmq::XPUB).map_err(z("socket(XPUB)".into()))?;
        s.set_sndhwm(config.send_hwm).map_err(z("setsockopt(SNDHWM)".into()))?;
        s.set_linger(2000).map_err(z("setsockopt(LINGER)".into()))?;
        s.bind(endpoint).map_err(z(format!("bind({endpoint})")))?;
        sockets.push((s, format!("bidder-{i}")));
    }
    if let Some(wait) = config.wait_for_subscribers {
        wait_for_subscribers(&sockets, wait);
    }
    let p = config.traffic.partition_count as usize;
    let mut seqs: Vec<Vec<u64>> = vec![vec![config.first_seq; 8 * p]; sockets.len()];
    let mut gen = Generator::new(&config.traffic);
    let mut topic = Vec::with_capacity(32);
    let mut payload = Vec::with_capacity(256);
    let mut summary = SimSummary::default();
    let started = Instant::now();
    let mut last_progress = started;
    let limit = config.count.unwrap_or(u64::MAX);
    let mut now_ms = bid_logger_core::clock::now_ms();
    while summary.sent < limit {
        if summary.sent % 256 == 0 {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            let elapsed = started.elapsed();
            if config.duration.is_some_and(|d| elapsed >= d) {
                break;
            }
            if let Some(rate) = config.rate {
                let due = Duration::from_secs_f64(summary.sent as f64 / rate);
                if due > elapsed {
                    std::thread::sleep(due - elapsed);
                }
            }
            now_ms = bid_logger_core::clock::now_ms();
            if config.progress && last_progress.elapsed() >= Duration::from_millis(500) {
                last_progress = Instant::now();
                let secs = elapsed.as_secs_f64().max(1e-9);
                eprint!(
                    "\r  simulate: {} sent, {:.0} msg/s, {:.1} s   ",
                    summary.sent,
                    summary.sent as f64 / secs,
                    secs
                );
            }
        }
        let (partition, produced) = gen.next(now_ms, &mut topic, &mut payload);
        let which = (summary.sent % sockets.len() as u64) as usize;
        let (socket, publisher) = &sockets[which];
        if let Produced::Valid(et) = produced {
            let slot = &mut seqs[which][et.index() * p + partition as usize];
            append_pub_seq(&mut payload, publisher, *slot);
            *slot += 1;
            *summary.by_type.entry(et.as_str()).or_default() += 1;
        }
        if let Some(every) = config.restart_every {
            if summary.sent > 0 && summary.sent % every == 0 {
                seqs[which].iter_mut().for_each(|s| *s = config.first_seq);
            }
        }
        socket.send(&topic, zmq::SNDMORE).map_err(z("send".into()))?;
        socket.send(&payload, 0).map_err(z("send".into()))?;
        summary.sent += 1;
    }
    summary.elapsed = started.elapsed();
    if config.progress {
        eprintln!();
    }
    summary.truth = gen.truth;
    Ok(summary)
}

/// Waits until every socket has a subscriber and subscriptions have stopped
/// arriving for a moment (a logger sends hundreds, one per topic).
fn wait_for_subscribers(sockets: &[(zmq::Socket, String)], wait: Duration) {
    let deadline = Instant::now() + wait;
    for (s, name) in sockets {
        let _ = s.set_rcvtimeo(200);
        let mut seen = 0;
        loop {
            match s.recv_bytes(0) {
                Ok(msg) if msg.first() == Some(&1) => seen += 1,
                Ok(_) => {}
                Err(_) if seen > 0 => break,
                Err(_) => {}
            }
            if Instant::now() >= deadline {
                tracing::warn!(publisher = %name, "no subscriber yet; sending anyway");
                break;
            }
        }
    }
}
