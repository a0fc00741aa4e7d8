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
//!   baseline, flush and latency runs) and the outage soak driver.
//! * [`pgtemp`]: a throwaway PostgreSQL cluster (initdb, pg_ctl) for the
//!   demo, the benchmark and the tests.
//!
//! Dependencies point one way: tools → the service (`bid-logger`) → the
//! core (`bid-logger-core`).

#![warn(missing_docs, rust_2018_idioms, clippy::all)]

pub mod bench;
pub mod demo;
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
