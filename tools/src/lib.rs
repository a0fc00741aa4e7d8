//! bid-logger's tools, kept out of the daemon (the way Relay keeps `tools/`
//! and Vector keeps `vdev`): the `bid-logger-tools` binary and the library
//! the integration tests share.
//!
//! * [`simulate`]: the bidder-fleet simulator (publishes the core's
//!   synthetic stream on XPUB sockets); users load-test a set-up with
//!   `bid-logger-tools simulate`.
//! * [`demo`]: the one-command demo: a throwaway PostgreSQL, the simulator
//!   and the logger, a graceful stop, the warehouse checked against the
//!   simulator's truth, and a short report.
//! * [`bench`]: the end-to-end benchmark (null subscriber, logger, Python
//!   baseline, the whole system on a paced stream, flush and latency runs)
//!   and the outage soak driver.
//! * [`pgfault`]: a PostgreSQL proxy that loses COMMIT replies (the tests'
//!   bad link).
//! * [`pgtemp`]: a throwaway PostgreSQL cluster (initdb, pg_ctl) for the
//!   demo, the benchmark and the tests.
//!
//! Dependencies point one way: tools → the service (`bid-logger`) → the
//! core (`bid-logger-core`).

#![warn(missing_docs, rust_2018_idioms, clippy::all)]

pub mod bench;
pub mod demo;
pub mod docs;
pub mod pgfault;
pub mod pgtemp;
pub mod simulate;

use std::path::PathBuf;

/// The `bid-logger` executable the tools start: `BID_LOGGER_BIN` when set,
/// otherwise the one built beside the running executable (cargo puts every
/// binary of the workspace in one folder), otherwise `bid-logger` on the
/// `PATH`.
pub fn logger_exe() -> PathBuf {
    if let Some(path) = std::env::var_os("BID_LOGGER_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            // Test and example executables live one folder deeper (deps/, examples/).
            let dir = exe.parent()?;
            [dir.join("bid-logger"), dir.parent()?.join("bid-logger")].into_iter().find(|p| p.is_file())
        })
        .unwrap_or_else(|| PathBuf::from("bid-logger"))
}

/// A free TCP port on loopback (bound, then released for the caller), below
/// the kernel's ephemeral range.
///
/// A port the kernel hands out for `:0` is one it also hands out as the
/// source port of an outgoing connection. A logger that connects to such a
/// port before its publisher binds it can be given that very port as its
/// source (Linux picks the same one again for the same destination) and
/// connect to itself, holding the port the publisher then fails to bind.
/// Ports from a range no connection draws from cannot be taken that way.
pub fn free_port() -> std::io::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    // Below the kernel's range (Linux's default starts at 32768).
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    if low <= 2_048 {
        return Err(std::io::Error::other(format!("the kernel's ephemeral ports start at {low}: no room below")));
    }
    // the 12 000 ports below it (or down to 1024)
    let first = low.saturating_sub(12_000).max(1_024);
    let count = low - first;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Processes running side by side start at different places.
    let start = std::process::id().wrapping_mul(2_654_435_761) % count;
    for _ in 0..count {
        let port = first + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % count;
        if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return Ok(port as u16);
        }
    }
    Err(std::io::Error::new(std::io::ErrorKind::AddrInUse, "no free port below the ephemeral range on loopback"))
}

/// `GET path` from an HTTP server on loopback `port` (the logger's
/// `/metrics`, Prometheus' API): the whole response, or `None` when nothing
/// answers.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// The sum of the samples of metric `name` (exactly that series name) whose
/// label text contains `labels`, in a Prometheus text exposition; 0 when
/// there are none.
pub fn metric_value(exposition: &str, name: &str, labels: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').map_or((series, ""), |(n, r)| (n, r));
            (n == name && rest.contains(labels)).then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}
