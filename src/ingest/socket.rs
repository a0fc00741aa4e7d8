//! The SUB socket: options, subscriptions, endpoints; and renewing
//! endpoints that libzmq dropped for good.

use super::{IngestConfig, IngestError};
use crate::telemetry as t;
use metrics::{counter, gauge, Counter, Gauge};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long one `recv` waits before the loop looks at the clock and the stop flag.
pub(crate) const RECV_TIMEOUT_MS: i32 = 50;

/// Creates, configures, subscribes and binds one SUB socket; [`connect_all`]
/// connects it. (The null subscriber of the benchmarks: the logger itself
/// opens one socket per endpoint, see [`open_sources`].)
pub fn open_socket(ctx: &zmq::Context, config: &IngestConfig, topics: &[String]) -> Result<zmq::Socket, IngestError> {
    let socket = sub_socket(ctx, config, topics, !config.bind.is_empty())?;
    for e in &config.bind {
        socket.bind(e).map_err(|source| IngestError::Zmq { what: format!("bind({e})"), source })?;
    }
    Ok(socket)
}

/// A SUB socket with the configured options and `topics` subscribed; with
/// `bound`, under the address allow-list (if any).
fn sub_socket(
    ctx: &zmq::Context,
    config: &IngestConfig,
    topics: &[String],
    bound: bool,
) -> Result<zmq::Socket, IngestError> {
    let z = |what: String| move |source| IngestError::Zmq { what, source };
    let socket = ctx.socket(zmq::SUB).map_err(z("socket(SUB)".into()))?;
    socket.set_rcvhwm(config.receive_hwm).map_err(z("setsockopt(RCVHWM)".into()))?;
    socket.set_maxmsgsize(config.max_message_size).map_err(z("setsockopt(MAXMSGSIZE)".into()))?;
    socket.set_rcvtimeo(RECV_TIMEOUT_MS).map_err(z("setsockopt(RCVTIMEO)".into()))?;
    socket.set_linger(0).map_err(z("setsockopt(LINGER)".into()))?;
    if bound && !config.allow.is_empty() {
        socket.set_zap_domain(crate::zap::ZAP_DOMAIN).map_err(z("setsockopt(ZAP_DOMAIN)".into()))?;
    }
    for tpc in topics {
        socket.set_subscribe(tpc.as_bytes()).map_err(z(format!("subscribe({tpc})")))?;
    }
    Ok(socket)
}

/// Connects `socket` to every `connect` endpoint (after its monitor, if any,
/// is in place: a connection made before would not be reported).
pub fn connect_all(socket: &zmq::Socket, config: &IngestConfig) -> Result<(), IngestError> {
    for e in &config.connect {
        socket.connect(e).map_err(|source| IngestError::Zmq { what: format!("connect({e})"), source })?;
    }
    Ok(())
}

/// The `connect` endpoints on loopback (`127.*`, `localhost`, `[::1]`)
/// whose port lies in the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`), with that range. (The host's other
/// addresses can self-connect too; they are not recognised here.)
///
/// While nothing listens on such a port, the logger's own connection attempt
/// can be given that very port as its source and connect to itself (TCP
/// simultaneous open; Linux offers the same source port again for the same
/// destination, so every retry does it again). The logger then holds the port
/// and the publisher fails to bind it when it starts. Ports below the range,
/// or in `net.ipv4.ip_local_reserved_ports`, are never taken that way.
pub fn self_connect_risks(config: &IngestConfig) -> Vec<(String, (u16, u16))> {
    let Some(range) = ephemeral_range() else { return Vec::new() };
    let reserved = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_reserved_ports").unwrap_or_default();
    config
        .connect
        .iter()
        .filter(|e| {
            let Some((host, port)) = e.strip_prefix("tcp://").and_then(|a| a.rsplit_once(':')) else { return false };
            let Ok(port) = port.parse::<u16>() else { return false };
            let local = matches!(host, "localhost" | "[::1]") || host.starts_with("127.");
            local && (range.0..=range.1).contains(&port) && !port_listed(&reserved, port)
        })
        .map(|e| (e.clone(), range))
        .collect()
}

fn ephemeral_range() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = text.split_whitespace().map(|n| n.parse::<u16>().ok());
    Some((it.next()??, it.next()??))
}

/// Whether `port` is in a kernel port list such as `1000,2000-2010`.
fn port_listed(list: &str, port: u16) -> bool {
    list.trim().split(',').filter(|p| !p.is_empty()).any(|p| match p.split_once('-') {
        Some((a, b)) => a.parse().is_ok_and(|a: u16| a <= port) && b.parse().is_ok_and(|b: u16| port <= b),
        None => p.parse() == Ok(port),
    })
}

/// Messages received and connections, per configured endpoint, over all
/// ingest threads: what the [`QuietWatch`] reads to
/// log an endpoint that is connected but sends nothing.
#[derive(Debug)]
pub struct EndpointActivity {
    /// The `connect` endpoints, then the `bind` ones, as configured.
    pub endpoints: Vec<String>,
    /// How many of them are `connect` endpoints (the first ones).
    pub connected_ones: usize,
    messages: Vec<AtomicU64>,
    connections: Vec<AtomicI64>,
}

impl EndpointActivity {
    /// The configuration's endpoints, with nothing received yet.
    pub fn new(config: &IngestConfig) -> EndpointActivity {
        let endpoints: Vec<String> = config.connect.iter().chain(&config.bind).cloned().collect();
        EndpointActivity {
            messages: endpoints.iter().map(|_| AtomicU64::new(0)).collect(),
            connections: endpoints.iter().map(|_| AtomicI64::new(0)).collect(),
            connected_ones: config.connect.len(),
            endpoints,
        }
    }

    /// Messages received from endpoint `i` so far (ingest counts at most
    /// 200 ms late).
    pub fn messages(&self, i: usize) -> u64 {
        self.messages[i].load(Ordering::Relaxed)
    }

    /// Whether some ingest thread is connected to `connect` endpoint `i`
    /// (a bound endpoint: always, as far as anyone can tell).
    pub fn is_connected(&self, i: usize) -> bool {
        i >= self.connected_ones || self.connections[i].load(Ordering::Relaxed) > 0
    }
}

/// Logs a `connect` endpoint that is connected but sends nothing for
/// `endpoint-quiet-after` (once), and when it sends again.
#[derive(Debug)]
pub struct QuietWatch {
    activity: Arc<EndpointActivity>,
    after: Duration,
    /// Per `connect` endpoint: its count when last looked at, since when it
    /// has not changed (or the endpoint was not connected), and whether it
    /// is reported quiet.
    seen: Vec<(u64, Instant, bool)>,
}

/// A change [`QuietWatch::check`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Quiet {
    /// Connected, and nothing received for `endpoint-quiet-after`.
    Began(String),
    /// A quiet endpoint sent again.
    Ended(String),
}

impl QuietWatch {
    /// Watches `activity`'s `connect` endpoints from `now`.
    pub fn new(activity: Arc<EndpointActivity>, after: Duration, now: Instant) -> QuietWatch {
        let seen = (0..activity.connected_ones).map(|i| (activity.messages(i), now, false)).collect();
        QuietWatch { activity, after, seen }
    }

    /// What changed since the last call.
    pub fn check(&mut self, now: Instant) -> Vec<Quiet> {
        let mut out = Vec::new();
        for (i, (count, since, quiet)) in self.seen.iter_mut().enumerate() {
            let (n, endpoint) = (self.activity.messages(i), &self.activity.endpoints[i]);
            if n != *count || !self.activity.is_connected(i) {
                // Sending, or down (which is logged and alerted on its own).
                if *quiet && n != *count {
                    out.push(Quiet::Ended(endpoint.clone()));
                }
                *quiet = false;
                (*count, *since) = (n, now);
            } else if !*quiet && now.duration_since(*since) >= self.after {
                *quiet = true;
                out.push(Quiet::Began(endpoint.clone()));
            }
        }
        out
    }

    /// Checks every few seconds, logging what changed, until the process
    /// ends (a zero `after` watches nothing).
    pub async fn run(mut self) {
        if self.after.is_zero() || self.seen.is_empty() {
            return;
        }
        let every = (self.after / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for change in self.check(Instant::now()) {
                match change {
                    Quiet::Began(endpoint) => tracing::warn!(
                        %endpoint,
                        quiet_for = ?self.after,
                        "publisher endpoint connected but sending nothing (wrong port or topic, or the publisher is idle)"
                    ),
                    Quiet::Ended(endpoint) => tracing::info!(%endpoint, "publisher endpoint sending again"),
                }
            }
        }
    }
}

/// One endpoint's SUB socket in an ingest thread.
///
/// A SUB socket does not say which connection a message came in on, so
/// each thread opens one socket per endpoint (all with the same
/// subscriptions): the messages of each are counted exactly, and each
/// socket's monitor speaks of its one endpoint.
pub(crate) struct Source {
    pub(crate) socket: zmq::Socket,
    /// A `connect` endpoint's: renews the connection libzmq drops for good.
    pub(crate) reconnector: Option<Reconnector>,
    /// Messages received since the counts were last published.
    pub(crate) received: u64,
    messages: Counter,
    index: usize,
}

impl Source {
    /// Adds what was received since the last call to the endpoint's
    /// metric and activity, and returns it.
    pub(crate) fn publish(&mut self, activity: &EndpointActivity) -> u64 {
        let n = std::mem::take(&mut self.received);
        if n > 0 {
            self.messages.increment(n);
            activity.messages[self.index].fetch_add(n, Ordering::Relaxed);
        }
        n
    }
}

/// Subscribes every source of a thread to `topic` (`on`), or unsubscribes
/// it; a failure is logged (the source keeps its other subscriptions).
pub(crate) fn set_subscribed(sources: &[Source], topic: &str, on: bool) {
    for source in sources {
        let result = if on {
            source.socket.set_subscribe(topic.as_bytes())
        } else {
            source.socket.set_unsubscribe(topic.as_bytes())
        };
        if let Err(e) = result {
            tracing::error!(error = %e, topic, "{}", if on { "subscribe failed" } else { "unsubscribe failed" });
        }
    }
}

/// Opens thread `thread`'s sockets, subscribed to `topics`: one per
/// `connect` endpoint (monitored, then connected) and one per `bind`
/// endpoint.
pub(crate) fn open_sources(
    ctx: &zmq::Context,
    config: &IngestConfig,
    topics: &[String],
    thread: usize,
    activity: &Arc<EndpointActivity>,
) -> Result<Vec<Source>, IngestError> {
    let mut sources = Vec::new();
    for (index, endpoint) in activity.endpoints.iter().enumerate() {
        let connecting = index < activity.connected_ones;
        let socket = sub_socket(ctx, config, topics, !connecting)?;
        let reconnector = if connecting {
            let r = Reconnector::new(ctx, &socket, endpoint, index, thread, activity.clone())?;
            socket
                .connect(endpoint)
                .map_err(|source| IngestError::Zmq { what: format!("connect({endpoint})"), source })?;
            Some(r)
        } else {
            socket.bind(endpoint).map_err(|source| IngestError::Zmq { what: format!("bind({endpoint})"), source })?;
            None
        };
        let messages = counter!(t::ENDPOINT_MESSAGES, "endpoint" => endpoint.clone());
        sources.push(Source { socket, reconnector, received: 0, messages, index });
    }
    Ok(sources)
}

/// Re-connects a publisher that libzmq dropped for good, and reports its
/// connection.
///
/// libzmq reconnects a connecting socket after a lost connection, but not
/// after a *protocol* error: a publisher sending one message larger than
/// `ZMQ_MAXMSGSIZE` would otherwise be cut off until the logger restarts. A
/// socket monitor reports each disconnect, and an endpoint that libzmq is not
/// reconnecting [`RENEW_AFTER`] later (no retry or connect event for it) is
/// connected anew (libzmq re-sends the subscriptions).
///
/// Not at once, and not when libzmq reconnects by itself: renewing an
/// endpoint discards its connection's pipe, and with it the messages still
/// queued there (a publisher's last ones, when it exits right after sending).
/// libzmq schedules a reconnect (`CONNECT_RETRIED`) right after an ordinary
/// disconnect, so only a protocol error waits out the delay and is renewed.
pub(crate) struct Reconnector {
    monitor: zmq::Socket,
    endpoint: String,
    index: usize,
    reconnects: Counter,
    /// Whether this thread's socket is connected to the endpoint.
    connected: bool,
    /// `bid_logger_endpoint_connected`: the threads connected to it, over
    /// all threads.
    gauge: Gauge,
    activity: Arc<EndpointActivity>,
    /// Whether this thread logs connections (one thread does, not each).
    logs: bool,
    /// When to renew the endpoint, after a dropped connection, unless
    /// libzmq reports reconnecting it first.
    due: Option<Instant>,
}

/// How long after a dropped connection an endpoint that libzmq is not
/// reconnecting is renewed.
const RENEW_AFTER: Duration = Duration::from_millis(250);

impl Reconnector {
    fn new(
        ctx: &zmq::Context,
        socket: &zmq::Socket,
        endpoint: &str,
        index: usize,
        thread: usize,
        activity: Arc<EndpointActivity>,
    ) -> Result<Reconnector, IngestError> {
        let z = |what: &'static str| move |source| IngestError::Zmq { what: what.into(), source };
        let addr = format!("inproc://bid-logger-monitor-{}-{thread}-{index}", std::process::id());
        let events = [
            zmq::SocketEvent::DISCONNECTED,
            zmq::SocketEvent::CONNECT_RETRIED,
            zmq::SocketEvent::CONNECT_DELAYED,
            zmq::SocketEvent::CONNECTED,
        ]
        .iter()
        .fold(0, |mask, e| mask | e.to_raw());
        socket.monitor(&addr, i32::from(events)).map_err(z("monitor"))?;
        let monitor = ctx.socket(zmq::PAIR).map_err(z("socket(PAIR)"))?;
        monitor.connect(&addr).map_err(z("connect(monitor)"))?;
        let gauge = gauge!(t::ENDPOINT_CONNECTED, "endpoint" => endpoint.to_string());
        gauge.increment(0.0);
        Ok(Reconnector {
            monitor,
            endpoint: endpoint.to_string(),
            index,
            reconnects: counter!(t::RECONNECTS),
            connected: false,
            gauge,
            activity,
            logs: thread == 0,
            due: None,
        })
    }

    /// Records that this thread's connection is up or down.
    fn set_connected(&mut self, up: bool) {
        if self.connected == up {
            return;
        }
        self.connected = up;
        self.gauge.increment(if up { 1.0 } else { -1.0 });
        self.activity.connections[self.index].fetch_add(if up { 1 } else { -1 }, Ordering::Relaxed);
        if self.logs {
            let endpoint = &self.endpoint;
            if up {
                tracing::info!(%endpoint, "publisher endpoint connected");
            } else {
                tracing::warn!(%endpoint, "publisher endpoint disconnected; reconnecting");
            }
        }
    }

    /// Handles the events reported since the last call, and renews the
    /// endpoint when it is due (never blocks).
    pub(crate) fn poll(&mut self, socket: &zmq::Socket) {
        let now = Instant::now();
        while let Ok(frames) = self.monitor.recv_multipart(zmq::DONTWAIT) {
            let event = frames.first().filter(|f| f.len() >= 2).map(|f| u16::from_le_bytes([f[0], f[1]]));
            if event == Some(zmq::SocketEvent::CONNECTED.to_raw()) {
                self.set_connected(true);
                self.due = None;
            } else if event == Some(zmq::SocketEvent::DISCONNECTED.to_raw()) {
                self.set_connected(false);
                self.due.get_or_insert(now + RENEW_AFTER);
            } else {
                // libzmq is reconnecting (or has reconnected) the endpoint.
                self.due = None;
            }
        }
        if self.due.is_some_and(|at| at <= now) {
            self.due = None;
            let e = &self.endpoint;
            tracing::warn!(endpoint = %e, "publisher connection dropped and not being restored (e.g. after an oversized message); connecting again");
            let _ = socket.disconnect(e);
            if let Err(err) = socket.connect(e) {
                tracing::error!(endpoint = %e, error = %err, "reconnect failed");
            }
            self.reconnects.increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::IngestConfig;

    fn activity() -> Arc<EndpointActivity> {
        let config = IngestConfig {
            connect: vec!["tcp://a:1".into(), "tcp://b:2".into()],
            bind: vec!["tcp://*:3".into()],
            partition_count: 1,
            partitions: vec![0],
            event_types: vec![],
            sample: bid_logger_core::sample::Rate::ALL.into(),
            raw_sample: bid_logger_core::sample::Rate::NONE,
            receive_hwm: 0,
            quiet_after: Duration::from_secs(60),
            max_message_size: 1,
            max_event_size: 1,
            max_seq_jump: 1,
            threads: 1,
            allow: vec![],
        };
        Arc::new(EndpointActivity::new(&config))
    }

    #[test]
    fn reserved_port_lists_are_read_as_the_kernel_writes_them() {
        assert!(port_listed("1000,40000-40010", 40005));
        assert!(port_listed("1000,40000-40010", 1000));
        assert!(!port_listed("1000,40000-40010", 40011));
        assert!(!port_listed("\n", 40000));
    }

    #[test]
    fn a_connected_endpoint_that_sends_nothing_is_reported_once_and_again_when_it_sends() {
        let a = activity();
        let t0 = Instant::now();
        let mut watch = QuietWatch::new(a.clone(), Duration::from_secs(60), t0);
        let at = |s: u64| t0 + Duration::from_secs(s);
        // not connected: down, not quiet (that has its own log line and alert)
        assert_eq!(watch.check(at(120)), vec![]);
        a.connections[0].fetch_add(1, Ordering::Relaxed);
        a.connections[1].fetch_add(1, Ordering::Relaxed);
        assert_eq!(watch.check(at(121)), vec![], "connected just now");
        a.messages[1].fetch_add(5, Ordering::Relaxed);
        assert_eq!(watch.check(at(150)), vec![]);
        assert_eq!(watch.check(at(181)), vec![Quiet::Began("tcp://a:1".into())], "b sent at 150");
        assert_eq!(watch.check(at(200)), vec![], "reported once");
        assert_eq!(watch.check(at(211)), vec![Quiet::Began("tcp://b:2".into())]);
        a.messages[0].fetch_add(1, Ordering::Relaxed);
        assert_eq!(watch.check(at(212)), vec![Quiet::Ended("tcp://a:1".into())]);
        assert_eq!(watch.check(at(250)), vec![]);
        // a quiet endpoint that disconnects is no longer quiet, and says nothing
        a.connections[1].fetch_sub(1, Ordering::Relaxed);
        assert_eq!(watch.check(at(260)), vec![]);
        a.connections[1].fetch_add(1, Ordering::Relaxed);
        a.messages[0].fetch_add(1, Ordering::Relaxed);
        assert_eq!(watch.check(at(300)), vec![]);
        assert_eq!(watch.check(at(321)), vec![Quiet::Began("tcp://b:2".into())]);
        // the bound endpoint is not watched
        assert!(a.is_connected(2));
    }
}
