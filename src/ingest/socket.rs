//! The SUB socket: options, subscriptions, endpoints; and renewing
//! endpoints that libzmq dropped for good.

use super::{IngestConfig, IngestError};
use crate::telemetry as t;
use metrics::{counter, gauge, Counter, Gauge};
use std::time::{Duration, Instant};

/// How long one `recv` waits before the loop looks at the clock and the stop flag.
const RECV_TIMEOUT_MS: i32 = 50;

/// Creates, configures, subscribes and binds one SUB socket; [`connect_all`]
/// connects it.
pub fn open_socket(ctx: &zmq::Context, config: &IngestConfig, topics: &[String]) -> Result<zmq::Socket, IngestError> {
    let z = |what: String| move |source| IngestError::Zmq { what, source };
    let socket = ctx.socket(zmq::SUB).map_err(z("socket(SUB)".into()))?;
    socket.set_rcvhwm(config.receive_hwm).map_err(z("setsockopt(RCVHWM)".into()))?;
    socket.set_maxmsgsize(config.max_message_size).map_err(z("setsockopt(MAXMSGSIZE)".into()))?;
    socket.set_rcvtimeo(RECV_TIMEOUT_MS).map_err(z("setsockopt(RCVTIMEO)".into()))?;
    socket.set_linger(0).map_err(z("setsockopt(LINGER)".into()))?;
    if !config.allow.is_empty() {
        socket.set_zap_domain(crate::zap::ZAP_DOMAIN).map_err(z("setsockopt(ZAP_DOMAIN)".into()))?;
    }
    for tpc in topics {
        socket.set_subscribe(tpc.as_bytes()).map_err(z(format!("subscribe({tpc})")))?;
    }
    for e in &config.bind {
        socket.bind(e).map_err(z(format!("bind({e})")))?;
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

/// Re-connects publishers that libzmq dropped for good.
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
/// disconnect, so only a protocol error, or an endpoint whose events name
/// another address (a host name), waits out the delay and is renewed.
pub(crate) struct Reconnector {
    monitor: zmq::Socket,
    endpoints: Vec<String>,
    reconnects: Counter,
    /// Per configured endpoint: whether this thread's socket is connected
    /// to it, and its `bid_logger_endpoint_connected` gauge (the threads
    /// connected to it, over all threads).
    connected: Vec<(bool, Gauge)>,
    /// Whether this thread logs connections (one thread does, not each).
    logs: bool,
    /// Endpoints whose connection dropped, and when to renew each unless
    /// libzmq reports reconnecting it first.
    due: Vec<(String, Instant)>,
}

/// How long after a dropped connection an endpoint that libzmq is not
/// reconnecting is renewed.
const RENEW_AFTER: Duration = Duration::from_millis(250);

impl Reconnector {
    pub(crate) fn new(
        ctx: &zmq::Context,
        socket: &zmq::Socket,
        endpoints: &[String],
        index: usize,
    ) -> Result<Reconnector, IngestError> {
        let z = |what: &'static str| move |source| IngestError::Zmq { what: what.into(), source };
        let addr = format!("inproc://bid-logger-monitor-{}-{index}", std::process::id());
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
        let connected = endpoints
            .iter()
            .map(|e| {
                let g = gauge!(t::ENDPOINT_CONNECTED, "endpoint" => e.clone());
                g.increment(0.0);
                (false, g)
            })
            .collect();
        Ok(Reconnector {
            monitor,
            endpoints: endpoints.to_vec(),
            reconnects: counter!(t::RECONNECTS),
            connected,
            logs: index == 0,
            due: Vec::new(),
        })
    }

    /// The configured endpoint an event's address stands for: the one it
    /// names, or the only one, or the only one on its port (a host name
    /// resolves to another address); `None` when that is ambiguous.
    fn endpoint_of(&self, peer: &str) -> Option<usize> {
        if let Some(i) = self.endpoints.iter().position(|e| e == peer) {
            return Some(i);
        }
        if self.endpoints.len() == 1 {
            return Some(0);
        }
        let port = |e: &str| e.rsplit_once(':').map(|(_, p)| p.to_string());
        let same_port: Vec<usize> = (0..self.endpoints.len())
            .filter(|&i| port(&self.endpoints[i]).is_some() && port(&self.endpoints[i]) == port(peer))
            .collect();
        (same_port.len() == 1).then(|| same_port[0])
    }

    /// Records that this thread's connection to endpoint `i` is up or down.
    fn set_connected(&mut self, i: usize, up: bool) {
        let (was, gauge) = &mut self.connected[i];
        if *was == up {
            return;
        }
        *was = up;
        gauge.increment(if up { 1.0 } else { -1.0 });
        if self.logs {
            let endpoint = &self.endpoints[i];
            if up {
                tracing::info!(%endpoint, "publisher endpoint connected");
            } else {
                tracing::warn!(%endpoint, "publisher endpoint disconnected; reconnecting");
            }
        }
    }

    /// Handles the events reported since the last call, and renews the
    /// endpoints that are due (never blocks).
    pub(crate) fn poll(&mut self, socket: &zmq::Socket) {
        let now = Instant::now();
        while let Ok(frames) = self.monitor.recv_multipart(zmq::DONTWAIT) {
            let event = frames.first().filter(|f| f.len() >= 2).map(|f| u16::from_le_bytes([f[0], f[1]]));
            let peer = frames.get(1).map(|f| String::from_utf8_lossy(f).into_owned()).unwrap_or_default();
            // The event names the resolved address; a configured host name
            // may not match it, in which case every endpoint is concerned.
            let matching: Vec<String> = self.endpoints.iter().filter(|e| **e == peer).cloned().collect();
            let endpoint = self.endpoint_of(&peer);
            if event == Some(zmq::SocketEvent::CONNECTED.to_raw()) {
                if let Some(i) = endpoint {
                    self.set_connected(i, true);
                }
            }
            if event == Some(zmq::SocketEvent::DISCONNECTED.to_raw()) {
                if let Some(i) = endpoint {
                    self.set_connected(i, false);
                }
                let targets = if matching.is_empty() { self.endpoints.clone() } else { matching };
                for e in targets {
                    if !self.due.iter().any(|(d, _)| *d == e) {
                        self.due.push((e, now + RENEW_AFTER));
                    }
                }
            } else {
                // libzmq is reconnecting (or has reconnected) this endpoint.
                // Only an exact match is known; the others are renewed when
                // due, by which time their queued messages have been taken.
                self.due.retain(|(d, _)| *d != peer);
            }
        }
        let (renew, wait): (Vec<_>, Vec<_>) = self.due.drain(..).partition(|(_, at)| *at <= now);
        self.due = wait;
        for (e, _) in renew {
            tracing::warn!(endpoint = %e, "publisher connection dropped and not being restored (e.g. after an oversized message); connecting again");
            let _ = socket.disconnect(&e);
            if let Err(err) = socket.connect(&e) {
                tracing::error!(endpoint = %e, error = %err, "reconnect failed");
            }
            self.reconnects.increment(1);
        }
    }
}
