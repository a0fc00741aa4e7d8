//! Wires ingest, aggregation and the sink together and runs them until a
//! signal asks for a graceful stop.

use crate::config::Config;
use crate::ingest::{self, IngestError, IngestSummary};
use crate::sink::{self, Sink, SinkError, SinkSummary};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Deltas that may wait between ingest and the sink; when full, ingest keeps
/// merging into its own table instead.
const CHANNEL_CAPACITY: usize = 8;

/// Why the pipeline could not run.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A socket could not be set up.
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// The database refused us for a reason retrying cannot fix.
    #[error("database-url: {0}")]
    Database(SinkError),
    /// The metrics endpoint could not be served.
    #[error("metrics-addr: {0}")]
    Metrics(String),
    /// Waiting for signals failed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// How a run ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Summed over ingest threads.
    pub ingest: IngestSummary,
    /// The sink's account.
    pub sink: SinkSummary,
}

/// Runs the logger until SIGTERM or SIGINT (or until `stop` resolves), then
/// stops receiving, flushes everything and returns the summary.
pub async fn run(config: Config, stop: impl std::future::Future<Output = ()>) -> Result<RunSummary, PipelineError> {
    crate::telemetry::install_exporter(config.metrics_addr).map_err(|e| PipelineError::Metrics(e.to_string()))?;
    let process_metrics = tokio::spawn(crate::telemetry::sample_process_metrics());
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        database = %crate::config::mask_database_url(&config.sink.database_url),
        metrics = %config.metrics_addr,
        sample = %config.ingest.sample,
        partitions = config.ingest.partitions.len(),
        partition_count = config.ingest.partition_count,
        "starting"
    );
    let pool = sink::pool(&config.sink.database_url, config.sink.pool_size).map_err(PipelineError::Database)?;
    let migrated = check_database(&pool).await?;

    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let stopping = Arc::new(AtomicBool::new(false));
    let workers = ingest::spawn(&config.ingest, &config.aggregate, config.sink.flush_interval, tx, stopping.clone())?;
    let sink = tokio::spawn(Sink::new(config.sink.clone(), pool, rx, migrated).run());

    wait_for_stop(stop).await?;
    tracing::info!("stopping: no longer receiving; flushing what was accepted");
    stopping.store(true, Ordering::Relaxed);
    let ingest = tokio::task::spawn_blocking(move || {
        workers.into_iter().fold(IngestSummary::default(), |mut acc, w| {
            let s = w.join().expect("ingest threads do not panic");
            acc.received += s.received;
            acc.invalid += s.invalid;
            acc.sampled_out += s.sampled_out;
            acc.accepted += s.accepted;
            acc.rejected += s.rejected;
            acc.lost += s.lost;
            acc
        })
    })
    .await
    .expect("joining ingest threads");
    let sink = sink.await.expect("the sink task does not panic");
    process_metrics.abort();
    tracing::info!(
        received = ingest.received,
        accepted = ingest.accepted,
        invalid = ingest.invalid,
        sampled_out = ingest.sampled_out,
        rejected = ingest.rejected,
        lost = ingest.lost,
        written = sink.events_written,
        unwritten = sink.events_unwritten,
        "stopped"
    );
    Ok(RunSummary { ingest, sink })
}

/// Fails fast when the database refuses us for good (bad password, no such
/// database); when it is merely unreachable, says so and carries on: the
/// sink retries (migrations included) until it appears. Returns whether the
/// migrations are applied.
async fn check_database(pool: &deadpool_postgres::Pool) -> Result<bool, PipelineError> {
    let result = async {
        let mut client = pool.get().await?;
        sink::migrate(&mut client).await
    }
    .await;
    match result {
        Ok(_) => Ok(true),
        Err(e) if e.is_transient() => {
            tracing::warn!(error = %e, "database not reachable yet; receiving anyway and retrying in the background");
            Ok(false)
        }
        Err(e) => Err(PipelineError::Database(e)),
    }
}

async fn wait_for_stop(stop: impl std::future::Future<Output = ()>) -> Result<(), PipelineError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(PipelineError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(PipelineError::Signals)?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
        _ = stop => {}
    }
    Ok(())
}
