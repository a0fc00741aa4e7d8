//! Coalescing the receive loop's wake-ups.

use std::time::Duration;

/// How long a receive loop that found its socket empty sleeps before looking
/// again, and how many such naps in a row before it blocks in `recv`.
pub(crate) const NAP: Duration = Duration::from_millis(1);
pub(crate) const NAPS_BEFORE_BLOCKING: u32 = 4;

/// Coalesces wake-ups when the stream is thinner than what the thread can take.
///
/// A thread blocked in `recv` is woken by libzmq's I/O thread for every few
/// messages that arrive: two context switches and a mailbox signal each time,
/// which costs more than processing the messages when they trickle in (a
/// sampled stream, or a publisher slower than the logger). So once the
/// socket is empty the loop sleeps [`NAP`] and then takes everything that
/// queued meanwhile in one go, at most one wake-up per millisecond. A stream
/// that stays empty over [`NAPS_BEFORE_BLOCKING`] naps is idle: the loop then
/// blocks in `recv` again (with its timeout), so an idle logger costs nothing.
/// Messages wait at most one nap longer; the receive high-water mark and the
/// kernel's socket buffers hold what arrives meanwhile.
#[derive(Debug, Default)]
pub struct Pacer {
    naps: u32,
}

impl Pacer {
    /// The flags for the next `recv`: non-blocking while the stream is busy.
    #[inline]
    pub fn flags(&self) -> i32 {
        if self.naps < NAPS_BEFORE_BLOCKING {
            zmq::DONTWAIT
        } else {
            0
        }
    }

    /// A message was received.
    #[inline]
    pub fn received(&mut self) {
        self.naps = 0;
    }

    /// `recv` found nothing: naps, unless the stream has been idle long
    /// enough to block instead. Returns whether it napped.
    pub fn empty(&mut self) -> bool {
        if self.naps < NAPS_BEFORE_BLOCKING {
            self.naps += 1;
            std::thread::sleep(NAP);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    #[test]
    fn the_pacer_naps_while_the_stream_is_busy_and_blocks_once_it_is_idle() {
        let mut p = Pacer::default();
        assert_eq!(p.flags(), zmq::DONTWAIT, "a busy stream is polled");
        let started = Instant::now();
        for _ in 0..NAPS_BEFORE_BLOCKING {
            assert_eq!(p.flags(), zmq::DONTWAIT);
            assert!(p.empty());
        }
        assert!(started.elapsed() >= NAP * NAPS_BEFORE_BLOCKING, "each empty poll naps");
        assert_eq!(p.flags(), 0, "an idle stream blocks in recv");
        assert!(!p.empty(), "no nap once blocking (recv already waited)");
        p.received();
        assert_eq!(p.flags(), zmq::DONTWAIT, "a message makes the stream busy again");
    }
}
