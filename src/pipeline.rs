//! Wires ingest, aggregation and the sink together and runs them until a
//! signal asks for a graceful stop.

use crate::assignment::{Assignment, LateMarks};
use crate::config::Config;
use crate::db::{self, DbError};
use crate::fleet::{Coordinator, CoordinatorLinks, Phase};
use crate::ingest::{self, FlushRequests, IngestError, IngestSummary};
use crate::sink::marks::Previous;
use crate::sink::service::SinkFleet;
use crate::sink::{self, Sink, SinkSummary};
use crate::telemetry::Progress;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};

/// Deltas that may wait between ingest and the sink; when full, ingest keeps
/// merging into its own table instead.
const CHANNEL_CAPACITY: usize = 8;
/// How long a stopping fleet member waits for the others to take its
/// partitions, in lease TTLs (a handover takes about three heartbeats).
const DEPART_TTLS: u32 = 5;

/// Why the pipeline could not run.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A socket could not be set up.
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// The database refused us for a reason retrying cannot fix.
    #[error("database-url: {0}")]
    Database(DbError),
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
/// stops receiving, flushes everything and returns the summary. `progress`
/// follows the run as it goes. `signals` are installed by the caller before
/// anything else it starts, so that a stop in the first moments is handled
/// too; one during the start-up ends the run before it receives.
///
/// Metrics go to whatever recorder the executable installed (none: they are
/// dropped); the library never installs one.
///
/// SIGHUP hands what every ingest thread holds to the sink at once (a
/// flush) and keeps running. A second SIGTERM or SIGINT during the graceful
/// stop exits the process at once with code 1, logging how many accepted
/// events it leaves unwritten.
pub async fn run(
    config: Config,
    progress: Arc<Progress>,
    mut signals: Signals,
    stop: impl std::future::Future<Output = ()>,
) -> Result<RunSummary, PipelineError> {
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        commit = crate::telemetry::COMMIT,
        database = %crate::config::mask_database_url(&config.sink.database_url),
        metrics = %config.metrics_addr,
        sample = %config.ingest.sample.base(),
        sample_by_type = %config.ingest.sample.overrides_text(),
        partitions = config.ingest.partitions.len(),
        partition_count = config.ingest.partition_count,
        "starting"
    );
    for (endpoint, (low, high)) in crate::ingest::socket::self_connect_risks(&config.ingest) {
        tracing::warn!(
            %endpoint,
            ephemeral_ports = %format!("{low}-{high}"),
            "this endpoint's port is one the kernel also gives outgoing connections: while no publisher listens \
             there, the logger may connect to itself and hold the port, and the publisher then cannot bind it; \
             give publishers ports below {low} or list the port in net.ipv4.ip_local_reserved_ports"
        );
    }
    let pool = db::pool(&config.sink.database_url, config.sink.pool_size).map_err(PipelineError::Database)?;
    let flush = Arc::new(FlushRequests::default());
    tokio::pin!(stop);
    // A stop asked for while the database is checked ends the run there:
    // nothing has been received yet. The migration is one transaction,
    // rolled back when dropped. So is the reading of the marks, which
    // records what the previous run left unwritten as lost: a stop may
    // cut it before its commit (the next run records it) or after (then
    // only this run's log line and counter of it are missing).
    let start_up = async {
        let migrated = check_database(&pool, &config.sink.tables).await?;
        let loaded = if migrated { load_marks(&pool, &config.sink).await } else { None };
        Ok::<_, PipelineError>((migrated, loaded))
    };
    let (migrated, loaded) = tokio::select! {
        biased;
        started = start_up => started?,
        () = signals.wait_for_stop(stop.as_mut(), &flush) => {
            tracing::info!("stopped during start-up, before receiving anything");
            return Ok(RunSummary::default());
        }
    };

    metrics::gauge!(crate::telemetry::FLUSH_INTERVAL).set(config.sink.flush_interval.as_secs_f64());
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let stopping = Arc::new(AtomicBool::new(false));
    // The ingest threads' trackers are seeded with the committed marks; the
    // sink keeps them too, so a partition's value keeps the publishers this
    // run has not heard from yet.
    // A fleet member's threads are seeded per partition as it takes them.
    // When the database did not answer, the sink reads the marks later
    // and hands them to the threads through `late`.
    let committed = match (&loaded, &config.fleet) {
        (Some(l), None) => l.marks.clone(),
        _ => Default::default(),
    };
    let late: Option<LateMarks> = (loaded.is_none() && config.fleet.is_none()).then(Default::default);
    let previous = match loaded {
        Some(l) => Previous::Loaded(l),
        None => Previous::Unread(late.clone()),
    };
    let (assignment, assignment_rx) = watch::channel(Arc::new(Assignment::default()));
    let acks: Arc<[AtomicU64]> = (0..config.ingest.threads).map(|_| AtomicU64::new(0)).collect();
    let fleet_links = config.fleet.as_ref().map(|f| ingest::FleetLinks {
        assignment: assignment_rx.clone(),
        acks: acks.clone(),
        standby: (f.standby_memory > 0).then(|| (f.standby_memory, f.standby_window(config.sink.flush_interval))),
    });
    let endpoints = Arc::new(ingest::EndpointActivity::new(&config.ingest));
    let links = ingest::Links {
        sink: tx,
        progress: progress.clone(),
        committed,
        late,
        fleet: fleet_links,
        endpoints: endpoints.clone(),
    };
    let workers = ingest::spawn(
        &config.ingest,
        &config.aggregate,
        config.sink.flush_interval,
        links,
        stopping.clone(),
        flush.clone(),
    )?;
    let quiet =
        tokio::spawn(ingest::QuietWatch::new(endpoints, config.ingest.quiet_after, std::time::Instant::now()).run());
    let (handover, handover_rx) = mpsc::channel(1);
    let (fenced, fenced_rx) = mpsc::unbounded_channel();
    let sink_fleet = config.fleet.as_ref().map(|f| SinkFleet {
        group: f.group.clone(),
        assignment: assignment_rx,
        handover: handover_rx,
        fenced,
        fences: 0,
        idle_timeout: crate::assignment::idle_timeout(f.lease_ttl),
        bounds: crate::fleet::sql::Bounds::new(f.lease_ttl),
    });
    let (phase, coordinator_phase) = watch::channel(Phase::Run);
    let (departed_tx, departed) = oneshot::channel();
    let coordinator = config.fleet.clone().map(|f| {
        let links = CoordinatorLinks { assignment, acks, handover, fenced: fenced_rx };
        let (member, url) = (config.sink.instance_id.clone(), config.sink.database_url.clone());
        let i = &config.ingest;
        let settings = crate::fleet::settings::GroupSettings::of(
            i.partition_count,
            (i.sample, i.raw_sample),
            &i.event_types,
            &config.sink.tables,
        );
        let c = Coordinator::new(f, member, settings, url, links);
        tokio::spawn(c.run(coordinator_phase, departed_tx))
    });
    let sink =
        tokio::spawn(Sink::new(config.sink.clone(), pool, rx, migrated, previous, sink_fleet, progress.clone()).run());

    signals.wait_for_stop(stop, &flush).await;
    let unwritten = progress.clone();
    let forced = tokio::spawn(async move {
        let name = signals.next_stop().await;
        tracing::error!(
            signal = name,
            events_unwritten = unwritten.unwritten(),
            "second signal during the graceful stop: exiting now; these accepted events were NOT written"
        );
        std::process::exit(1);
    });
    // A fleet member hands its partitions over while it still receives them.
    if let Some(f) = &config.fleet {
        let _ = phase.send(Phase::Depart);
        let limit = f.lease_ttl * DEPART_TTLS;
        if tokio::time::timeout(limit, departed).await.is_err() {
            tracing::warn!(
                timeout = ?limit,
                "the other members did not take every partition in time; the rest is released (what its new owners miss is counted as lost)"
            );
        }
    }
    tracing::info!("stopping: no longer receiving; flushing what was accepted (a second SIGTERM/SIGINT exits at once)");
    stopping.store(true, Ordering::Relaxed);
    let ingest = tokio::task::spawn_blocking(move || {
        workers.into_iter().fold(IngestSummary::default(), |mut acc, w| {
            let s = w.join().expect("ingest threads do not panic");
            acc.received += s.received;
            acc.invalid += s.invalid;
            acc.sampled_out += s.sampled_out;
            acc.accepted += s.accepted;
            acc.rejected += s.rejected;
            acc
        })
    })
    .await
    .expect("joining ingest threads");
    let sink = sink.await.expect("the sink task does not panic");
    // A fleet member leaves once its last flush landed: its leases go back
    // for the others to take at once, marks committed.
    let _ = phase.send(Phase::Stop);
    if let Some(c) = coordinator {
        let _ = c.await;
    }
    forced.abort();
    quiet.abort();
    tracing::info!(
        received = ingest.received,
        accepted = ingest.accepted,
        invalid = ingest.invalid,
        sampled_out = ingest.sampled_out,
        rejected = ingest.rejected,
        lost = crate::telemetry::lost_counted(),
        written = sink.events_written,
        unwritten = sink.events_unwritten,
        "stopped"
    );
    Ok(RunSummary { ingest, sink })
}

/// The async runtime the pipeline runs on: two workers are plenty, since
/// the receive loops run on OS threads of their own and the runtime only
/// carries the sink, signals and the metrics listener.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()
}

/// Fails fast when the database refuses us for good (bad password, no such
/// database); when it is merely unreachable, says so and carries on: the
/// sink retries (migrations included) until it appears. Returns whether the
/// migrations are applied.
async fn check_database(
    pool: &deadpool_postgres::Pool,
    tables: &[db::tables::RollupTable],
) -> Result<bool, PipelineError> {
    let result = async {
        let mut client = pool.get().await?;
        db::migrate(&mut client, tables).await
    }
    .await;
    match result {
        Ok(applied) => {
            tracing::info!(migrations_applied = applied, "database answered; the warehouse schema is up to date");
            Ok(true)
        }
        Err(e) if e.is_transient() => {
            tracing::warn!(error = %e, "database not reachable yet; receiving anyway and retrying in the background");
            Ok(false)
        }
        Err(e) => Err(PipelineError::Database(e)),
    }
}

/// Reads the sequence marks committed by the previous run and counts what
/// it left unwritten ([`sink::marks`]); `None` (read later by the sink) when
/// the database does not answer.
async fn load_marks(pool: &deadpool_postgres::Pool, config: &sink::SinkConfig) -> Option<sink::marks::Loaded> {
    let result = async {
        let mut client = pool.get().await?;
        sink::marks::load(&mut client, config.scope(), &config.instance_id).await
    }
    .await;
    match result {
        Ok(loaded) => {
            sink::service::account_loaded(&loaded);
            tracing::info!(marks = loaded.marks.len(), lost = loaded.lost, "committed sequence marks read");
            Some(loaded)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the committed sequence marks yet; the sink retries");
            None
        }
    }
}

/// The signals the logger acts on, installed before anything else starts
/// (the metrics listener included) so that none arrives unhandled: the
/// default action of each would kill the process.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers; signals arriving from now on are kept until
    /// the run reads them.
    pub fn install() -> Result<Signals, PipelineError> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).map_err(PipelineError::Signals)?,
            int: signal(SignalKind::interrupt()).map_err(PipelineError::Signals)?,
            hup: signal(SignalKind::hangup()).map_err(PipelineError::Signals)?,
        })
    }

    /// Waits for SIGTERM, SIGINT or `stop`; every SIGHUP meanwhile asks the
    /// ingest threads to flush.
    async fn wait_for_stop(&mut self, stop: impl std::future::Future<Output = ()>, flush: &FlushRequests) {
        tokio::pin!(stop);
        loop {
            let name = tokio::select! {
                _ = self.hup.recv() => {
                    tracing::info!("SIGHUP received: flushing now and carrying on");
                    flush.request();
                    continue;
                }
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
                _ = &mut stop => return,
            };
            tracing::info!(signal = name, "stop requested");
            return;
        }
    }

    /// The next SIGTERM or SIGINT (SIGHUP is ignored once stopping).
    async fn next_stop(&mut self) -> &'static str {
        loop {
            tokio::select! {
                _ = self.term.recv() => return "SIGTERM",
                _ = self.int.recv() => return "SIGINT",
                _ = self.hup.recv() => {}
            }
        }
    }
}
