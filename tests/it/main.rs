//! The integration tests: one crate (one link step, one PostgreSQL cluster
//! per run), one module per area. Every test talks to real ZeroMQ sockets,
//! a real PostgreSQL (`DATABASE_URL`, or one throwaway cluster shared by the
//! run; the restart tests start clusters of their own) and, for dashboards
//! and alerts, a real Prometheus and promtool. Shared helpers are in
//! [`support`].

mod support;

mod cli;
mod dashboards;
mod deploy;
mod docs;
mod failover;
mod faults;
mod fleet;
mod image;
mod package;
mod pipeline;
mod postgres;
mod prices;
mod python_publisher;
mod raw_sample;
mod report;
mod tiers;
mod tls;
