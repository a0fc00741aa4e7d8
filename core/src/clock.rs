//! The two clocks every stage reads: wall-clock milliseconds (event times,
//! lateness, day partitions) and a coarse monotonic clock cheap enough to
//! read after every message. The lowest module, so that no stage needs
//! another stage for the time.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// `CLOCK_MONOTONIC_COARSE` in milliseconds: read from the vDSO without a
/// syscall or a TSC read, with the kernel tick's resolution (1–4 ms).
#[inline]
pub fn coarse_monotonic_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the timespec we pass it.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}
