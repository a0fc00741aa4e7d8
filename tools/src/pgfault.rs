//! A PostgreSQL proxy on loopback that injects one fault of a bad link: a
//! `COMMIT` the server executes whose reply never reaches the client, the
//! connection being cut. The client cannot know whether its transaction
//! landed; the tests use it to show that a retry of the same batch lands
//! exactly once, and that flushes keep landing when it happens often.
//!
//! It parses the protocol just enough: the start-up exchange (an
//! `SSLRequest` answered `N` by a server without TLS is relayed, then the
//! startup message), then whole messages each way. A simple query whose text
//! is `COMMIT` (what tokio-postgres sends to commit) is counted; when the
//! fault picks it, it is forwarded, everything the server sends from then on
//! is dropped up to its `ReadyForQuery`, and both connections are closed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Which `COMMIT`s lose their reply (counted over every connection).
#[derive(Debug, Clone, Copy)]
pub enum CommitFault {
    /// None: a plain relay.
    None,
    /// The n-th, 2n-th, … `COMMIT`.
    EveryNth(u64),
    /// Each `COMMIT` with probability 1 / `one_in`, from a seeded generator.
    Random {
        /// The odds.
        one_in: u64,
        /// The generator's seed.
        seed: u64,
    },
}

/// What the proxy saw.
#[derive(Debug, Default)]
struct Counts {
    commits: AtomicU64,
    cut: AtomicU64,
}

/// A running proxy; stopped on drop.
pub struct PgFaultProxy {
    port: u16,
    counts: Arc<Counts>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The codes of the requests a client may send before its startup message.
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;

/// A larger message is taken for garbage and cuts the connection.
const MAX_MESSAGE: usize = 1 << 30;

impl PgFaultProxy {
    /// Listens on a free loopback port and relays to `upstream`.
    pub fn start(upstream: SocketAddr, fault: CommitFault) -> std::io::Result<PgFaultProxy> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let counts = Arc::new(Counts::default());
        let (stop, mut stopped) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let shared = counts.clone();
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = TcpListener::from_std(listener) else { return };
                let picker = Arc::new(Mutex::new(Picker::new(fault)));
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let Ok((client, _)) = accepted else { continue };
                            let (counts, picker) = (shared.clone(), picker.clone());
                            tokio::spawn(async move {
                                let _ = relay(client, upstream, counts, picker).await;
                            });
                        }
                        _ = &mut stopped => break,
                    }
                }
            });
        });
        Ok(PgFaultProxy { port, counts, stop: Some(stop), thread: Some(thread) })
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `COMMIT`s the clients sent.
    pub fn commits_seen(&self) -> u64 {
        self.counts.commits.load(Ordering::Relaxed)
    }

    /// `COMMIT`s executed whose reply was dropped.
    pub fn commits_cut(&self) -> u64 {
        self.counts.cut.load(Ordering::Relaxed)
    }
}

impl Drop for PgFaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Decides which `COMMIT`s are cut.
struct Picker {
    fault: CommitFault,
    rng: SmallRng,
    seen: u64,
}

impl Picker {
    fn new(fault: CommitFault) -> Picker {
        let seed = match fault {
            CommitFault::Random { seed, .. } => seed,
            _ => 0,
        };
        Picker { fault, rng: SmallRng::seed_from_u64(seed), seen: 0 }
    }

    fn cut_next(&mut self) -> bool {
        self.seen += 1;
        match self.fault {
            CommitFault::None => false,
            CommitFault::EveryNth(n) => n > 0 && self.seen.is_multiple_of(n),
            CommitFault::Random { one_in, .. } => one_in > 0 && self.rng.gen_range(0..one_in) == 0,
        }
    }
}

/// One client connection.
async fn relay(
    client: TcpStream,
    upstream: SocketAddr,
    counts: Arc<Counts>,
    picker: Arc<Mutex<Picker>>,
) -> std::io::Result<()> {
    let server = TcpStream::connect(upstream).await?;
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    // Start-up: untyped messages (length, code, …) until the startup message.
    loop {
        let len = cr.read_u32().await? as usize;
        if !(8..MAX_MESSAGE).contains(&len) {
            return Ok(());
        }
        let mut body = vec![0; len - 4];
        cr.read_exact(&mut body).await?;
        sw.write_u32(len as u32).await?;
        sw.write_all(&body).await?;
        let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        if code != SSL_REQUEST && code != GSSENC_REQUEST {
            break;
        }
        let answer = sr.read_u8().await?;
        cw.write_u8(answer).await?;
        if answer != b'N' {
            // Encrypted from here on: relay blindly, no fault.
            let up = tokio::io::copy(&mut cr, &mut sw);
            let down = tokio::io::copy(&mut sr, &mut cw);
            let _ = tokio::try_join!(up, down);
            return Ok(());
        }
    }
    let (cutting, cut_started) = tokio::sync::watch::channel(false);
    // Either side ending (the client closing, the server closing, or the
    // cut COMMIT's ReadyForQuery) closes both connections.
    tokio::select! {
        r = downstream(sr, cw, cut_started) => r,
        r = upstream_relay(cr, sw, cutting, counts, picker) => r,
    }
}

/// Server to client, until the server's `ReadyForQuery` after a cut `COMMIT`.
async fn downstream(
    mut sr: OwnedReadHalf,
    mut cw: OwnedWriteHalf,
    mut cut_started: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    loop {
        let (kind, body) = read_message(&mut sr).await?;
        if *cut_started.borrow_and_update() {
            if kind == b'Z' {
                return Ok(());
            }
            continue;
        }
        write_message(&mut cw, kind, &body).await?;
    }
}

/// Client to server; a cut `COMMIT` is forwarded, then nothing more.
async fn upstream_relay(
    mut cr: OwnedReadHalf,
    mut sw: OwnedWriteHalf,
    cutting: tokio::sync::watch::Sender<bool>,
    counts: Arc<Counts>,
    picker: Arc<Mutex<Picker>>,
) -> std::io::Result<()> {
    loop {
        let (kind, body) = read_message(&mut cr).await?;
        if kind == b'Q' && is_commit(&body) {
            counts.commits.fetch_add(1, Ordering::Relaxed);
            if picker.lock().unwrap_or_else(|e| e.into_inner()).cut_next() {
                let _ = cutting.send(true);
                write_message(&mut sw, kind, &body).await?;
                counts.cut.fetch_add(1, Ordering::Relaxed);
                // The downstream side ends the connection at the reply's end.
                return std::future::pending().await;
            }
        }
        write_message(&mut sw, kind, &body).await?;
    }
}

/// A typed message: kind, then the body without its length.
async fn read_message(r: &mut OwnedReadHalf) -> std::io::Result<(u8, Vec<u8>)> {
    let kind = r.read_u8().await?;
    let len = r.read_u32().await? as usize;
    if !(4..MAX_MESSAGE).contains(&len) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "bad message length"));
    }
    let mut body = vec![0; len - 4];
    r.read_exact(&mut body).await?;
    Ok((kind, body))
}

async fn write_message(w: &mut OwnedWriteHalf, kind: u8, body: &[u8]) -> std::io::Result<()> {
    let mut frame = Vec::with_capacity(5 + body.len());
    frame.push(kind);
    frame.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    frame.extend_from_slice(body);
    w.write_all(&frame).await
}

/// Whether a simple query's text (NUL-terminated) is `COMMIT`.
fn is_commit(body: &[u8]) -> bool {
    let text = body.strip_suffix(&[0]).unwrap_or(body);
    let text = String::from_utf8_lossy(text);
    let text = text.trim().trim_end_matches(';').trim();
    text.eq_ignore_ascii_case("COMMIT")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_is_recognised_in_the_forms_a_client_sends() {
        assert!(is_commit(b"COMMIT\0"));
        assert!(is_commit(b" commit; \0"));
        assert!(!is_commit(b"COMMIT PREPARED 'x'\0"));
        assert!(!is_commit(b"SELECT 1\0"));
    }

    #[test]
    fn every_third_and_one_in_three_pick_what_they_say() {
        let mut every = Picker::new(CommitFault::EveryNth(3));
        let picked: Vec<bool> = (0..6).map(|_| every.cut_next()).collect();
        assert_eq!(picked, [false, false, true, false, false, true]);
        let mut random = Picker::new(CommitFault::Random { one_in: 3, seed: 7 });
        let cut = (0..3000).filter(|_| random.cut_next()).count();
        assert!((800..1200).contains(&cut), "{cut} of 3000");
    }
}
