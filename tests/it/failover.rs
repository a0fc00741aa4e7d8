//! A primary and its synchronous streaming standby on loopback: the primary
//! crashes under load, the standby is promoted, and the logger, given both
//! hosts with `target_session_attrs=read-write`, follows to the new primary
//! with every table exact and nothing lost.

use crate::support::*;
use bid_logger_tools::pgtemp::{TempPostgres, TempPostgresError, STANDBY_NAME};
use std::time::{Duration, Instant};

/// How the logger under test runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    /// On its own.
    Alone,
    /// As the one member of a group: every partition's lease is its own.
    GroupOfOne,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logger_follows_a_promoted_synchronous_standby_and_totals_stay_exact() {
    follows_a_promoted_standby("failover", Run::Alone).await;
}

/// The default `lease-ttl` (6 s) outlasts the failover: the member keeps
/// its leases (heartbeats that fail meanwhile are retried within 200 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_member_follows_a_promoted_synchronous_standby() {
    follows_a_promoted_standby("failover_fleet", Run::GroupOfOne).await;
}

/// A primary whose commits wait for its standby (`synchronous_commit = on`,
/// `synchronous_standby_names` naming it), the standby streaming, and a
/// fresh database on them; returns both and the database's name.
async fn synchronous_pair(test: &str) -> (TempPostgres, TempPostgres, String) {
    let (primary, standby) = tokio::task::spawn_blocking(|| {
        let primary =
            TempPostgres::start_with(&[("synchronous_standby_names", STANDBY_NAME), ("synchronous_commit", "on")])?;
        let standby = TempPostgres::standby_of(&primary, &[])?;
        Ok::<_, TempPostgresError>((primary, standby))
    })
    .await
    .unwrap()
    .expect("a throwaway primary and its standby");
    let admin = connect(&primary.url()).await;
    let sql = "SELECT 1 FROM pg_stat_replication WHERE application_name = $1 AND sync_state = 'sync'";
    let deadline = Instant::now() + Duration::from_secs(30);
    while admin.query_opt(sql, &[&STANDBY_NAME]).await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "the standby never became synchronous");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let db = create_database_on(&primary.url(), test).await;
    let name = db.parse::<tokio_postgres::Config>().unwrap().get_dbname().unwrap().to_string();
    (primary, standby, name)
}

/// The logger writes to the primary of a synchronous pair, given both hosts.
/// Once batches land, the primary crashes and the standby is promoted; the
/// stream goes on until the logger has accepted 20 000 more events. Then
/// every table on the new primary holds exactly what was sent (per bucket,
/// event type and exchange), and nothing was counted lost.
async fn follows_a_promoted_standby(test: &str, run: Run) {
    let (primary, standby, name) = synchronous_pair(test).await;
    let both = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{name}?target_session_attrs=read-write",
        primary.port(),
        standby.port()
    );
    let endpoint = format!("tcp://127.0.0.1:{}", free_port());
    let member = ["--group", "g", "--instance-id", "a"];
    let extra: &[&str] = if run == Run::GroupOfOne { &member } else { &[] };
    let logger = Logger::start(&both, &[&["--connect", endpoint.as_str()], extra].concat());
    if run == Run::GroupOfOne {
        // Published once the leases are held: a message sent before the
        // member subscribed to its partitions reaches nobody.
        logger.wait_metric("bid_logger_owned_partitions", P as f64, Duration::from_secs(30));
    }
    let simulator = Simulator::start(&endpoint, |c| {
        c.rate = Some(20_000.0);
        // An upper bound: stopped once the logger has accepted enough after
        // the promotion, so a slow machine cannot end the stream before it.
        c.duration = Some(Duration::from_secs(180));
        c.traffic.invalid_fraction = 0.0;
    });
    logger.wait_metric("bid_logger_events_flushed_total", 20_000.0, Duration::from_secs(60));

    // The crash: an immediate stop, and its directory gone. Every commit it
    // acknowledged is on the standby; any batch landing from now on lands on
    // the promoted standby.
    drop(primary);
    let crashed = Instant::now();
    let flushed = logger.metric("bid_logger_events_flushed_total", "");
    standby.promote().expect("promoting the standby");
    let promoted = Instant::now();
    let accepted = logger.metric("bid_logger_events_accepted_total", "");
    logger.wait_metric("bid_logger_events_flushed_total", flushed + 1.0, Duration::from_secs(60));
    eprintln!(
        "{test}: the first batch landed on the new primary {:?} after the promotion ({:?} after the crash)",
        promoted.elapsed(),
        crashed.elapsed()
    );
    logger.wait_metric("bid_logger_events_accepted_total", accepted + 20_000.0, Duration::from_secs(30));

    let truth = simulator.stop().truth;
    logger.wait_metric("bid_logger_events_flushed_total", truth.events as f64, Duration::from_secs(60));
    if run == Run::GroupOfOne {
        assert_eq!(logger.metric("bid_logger_fenced_total", ""), 0.0, "the member kept its leases");
        assert_eq!(logger.metric("bid_logger_owned_partitions", ""), P as f64);
    }
    let stderr = logger.stop_ok();
    assert_eq!(stopped_field(&stderr, "lost"), 0, "nothing counted lost");
    assert_eq!(stopped_field(&stderr, "unwritten"), 0, "everything written");
    let client = connect(&standby.url_for(&name)).await;
    bid_logger_tools::demo::verify(&client, &truth).await.unwrap_or_else(|e| panic!("{test}: {e}"));
}
