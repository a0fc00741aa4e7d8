//! An address allow-list for bound sockets, enforced by a ZeroMQ ZAP handler.
//!
//! When the logger binds (forwarder set-ups), anyone who can reach the port
//! could publish into the warehouse. libzmq asks the ZAP handler at
//! `inproc://zeromq.zap.01` about every new connection to a socket that has a
//! ZAP domain; this handler answers 200 for peers whose IP address is on the
//! allow-list and 400 for everybody else, and libzmq closes those.

use metrics::counter;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The ZAP domain our SUB sockets declare (it switches ZAP on for the NULL mechanism).
pub const ZAP_DOMAIN: &str = "bid-logger";
const ZAP_ENDPOINT: &str = "inproc://zeromq.zap.01";

/// One allowed network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowed {
    addr: IpAddr,
    prefix: u8,
}

impl Allowed {
    /// Parses `10.1.2.3`, `10.1.0.0/16`, `::1` or `fd00::/8`.
    pub fn parse(s: &str) -> Result<Allowed, String> {
        let (a, p) = s.split_once('/').map_or((s, None), |(a, p)| (a, Some(p)));
        let addr: IpAddr = a.trim().parse().map_err(|_| format!("`{s}` is not an IP address or CIDR network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => {
                p.trim().parse::<u8>().ok().filter(|&p| p <= max).ok_or_else(|| format!("`{s}`: bad prefix length"))?
            }
        };
        Ok(Allowed { addr, prefix })
    }

    /// Whether `ip` is inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (a, b, bits) = match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                (u128::from(u32::from(a)) << 96, u128::from(u32::from(b)) << 96, self.prefix)
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), self.prefix),
            (IpAddr::V4(a), IpAddr::V6(b)) => match b.to_ipv4_mapped() {
                Some(b) => (u128::from(u32::from(a)) << 96, u128::from(u32::from(b)) << 96, self.prefix),
                None => return false,
            },
            (IpAddr::V6(_), IpAddr::V4(_)) => return false,
        };
        if bits == 0 {
            return true;
        }
        let mask = u128::MAX << (128 - u32::from(bits));
        a & mask == b & mask
    }
}

impl std::fmt::Display for Allowed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Starts the ZAP handler in `ctx`; it runs until `stop` is set. Must be
/// started before any socket with [`ZAP_DOMAIN`] binds.
pub fn spawn(
    ctx: &zmq::Context,
    allowed: Vec<Allowed>,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, zmq::Error> {
    let socket = ctx.socket(zmq::REP)?;
    socket.set_rcvtimeo(100)?;
    socket.set_linger(0)?;
    socket.bind(ZAP_ENDPOINT)?;
    let refused = counter!(crate::telemetry::CONNECTIONS_REFUSED);
    Ok(std::thread::Builder::new()
        .name("zap".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let request = match socket.recv_multipart(0) {
                    Ok(r) => r,
                    Err(_) => continue, // timeout: look at the stop flag
                };
                // version, request id, domain, address, identity, mechanism, credentials…
                let field = |i: usize| request.get(i).map(Vec::as_slice).unwrap_or_default();
                let address = String::from_utf8_lossy(field(3)).into_owned();
                let ok = address.parse::<IpAddr>().is_ok_and(|ip| allowed.iter().any(|a| a.contains(ip)));
                if !ok {
                    refused.increment(1);
                    tracing::warn!(peer = %address, "connection refused: address not in the allow-list");
                }
                let (status, text): (&[u8], &[u8]) =
                    if ok { (b"200", b"OK") } else { (b"400", b"address not allowed") };
                let reply: [&[u8]; 6] = [b"1.0", field(1), status, text, b"", b""];
                let _ = socket.send_multipart(reply, 0);
            }
        })
        .expect("spawning an OS thread"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_match() {
        let lo = Allowed::parse("127.0.0.1").unwrap();
        assert!(lo.contains("127.0.0.1".parse().unwrap()));
        assert!(!lo.contains("127.0.0.2".parse().unwrap()));
        let net = Allowed::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.2.3".parse().unwrap()));
        let v6 = Allowed::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        assert!(Allowed::parse("0.0.0.0/0").unwrap().contains("8.8.8.8".parse().unwrap()));
        assert!(Allowed::parse("10.0.0.0/33").is_err());
        assert!(Allowed::parse("host.example").is_err());
    }
}
