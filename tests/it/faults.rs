//! The fault matrix: inject real faults (database outages, locks, killed
//! processes, overflowing high-water marks, several instances) and compare
//! the warehouse with exactly what was published.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::support::*;
use bid_logger_tools::pgfault::{CommitFault, PgFaultProxy};
use std::time::{Duration, Instant};

fn events(rng: &mut SmallRng, n: usize, tag: &str) -> Vec<TestEvent> {
    const TYPES: [&str; 8] = ["auction", "bid", "win", "loss", "impression", "click", "install", "event"];
    let now = now_ms();
    (0..n)
        .map(|i| {
            let mut e =
                TestEvent::new(TYPES[rng.gen_range(0..8)], format!("{tag}-{i}"), now - rng.gen_range(0..3_600_000));
            e.country = Some(["US", "BR", "DE"][rng.gen_range(0..3)].into());
            e.campaign = rng.gen_range(0..50);
            e.price = Some(rng.gen_range(0..10_000));
            e
        })
        .collect()
}

async fn total_events(client: &impl tokio_postgres::GenericClient, table: &str) -> i64 {
    client.query_one(&format!("SELECT coalesce(sum(events), 0)::bigint FROM {table}"), &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_disjoint_partitions_write_the_same_tables_exactly() {
    let db = fresh_database("two").await;
    let mut publisher = Publisher::bind();
    let endpoint = publisher.endpoint.clone();
    let common = ["--connect", &endpoint, "--flush-interval", "50ms"];
    let a = Logger::start(&db, &[&common[..], &["--partitions", "0-7", "--instance-id", "a"]].concat());
    let b = Logger::start(&db, &[&common[..], &["--partitions", "8-15", "--instance-id", "b"]].concat());
    publisher.wait_for_subscriptions(2 * subset_topics(16, 8, 8));
    let mut rng = SmallRng::seed_from_u64(1);
    let all = events(&mut rng, 20_000, "two");
    for e in &all {
        publisher.publish(e, P);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while a.metric("bid_logger_events_flushed_total", "") + b.metric("bid_logger_events_flushed_total", "")
        < all.len() as f64
    {
        assert!(Instant::now() < deadline, "the two instances did not flush everything (deadlock?)");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        a.metric("bid_logger_events_flushed_total", "") > 0.0 && b.metric("bid_logger_events_flushed_total", "") > 0.0
    );
    assert_eq!((a.stop().0, b.stop().0), (0, 0));
    let client = connect(&db).await;
    assert_warehouse_matches(&client, &all, 1_000_000).await;
}

/// A logger (with `extra` arguments) that flushes every 100 ms with attempts
/// that time out after 500 ms, on a fresh database, after `n` random events
/// (seed `seed`) have been published and flushed.
async fn logger_with_flushed_events(
    test: &str,
    seed: u64,
    n: usize,
    extra: &[&str],
) -> (String, Publisher, Logger, SmallRng, Vec<TestEvent>) {
    let db = fresh_database(test).await;
    let mut publisher = Publisher::bind();
    let endpoint = publisher.endpoint.clone();
    let mut args = vec!["--connect", &endpoint, "--flush-timeout", "500ms", "--flush-interval", "100ms"];
    args.extend_from_slice(extra);
    let logger = Logger::start(&db, &args);
    // One thread taking everything subscribes by type prefix; several split
    // the partitions (and the prefixes beyond the partition count) between them.
    let threads = extra.iter().position(|a| *a == "--ingest-threads").map_or(1, |i| extra[i + 1].parse().unwrap());
    publisher.wait_for_subscriptions(if threads == 1 { all_topics(16) } else { subset_topics(16, 8, 16) });
    let mut rng = SmallRng::seed_from_u64(seed);
    let first = events(&mut rng, n, "before");
    for e in &first {
        publisher.publish(e, P);
    }
    logger.wait_metric("bid_logger_events_flushed_total", first.len() as f64, Duration::from_secs(30));
    (db, publisher, logger, rng, first)
}

/// With every flush held (the flush ledger locked: a batch waits at its
/// first statement; locking the view `rollup_minute` would lock its three
/// tables one by one and could deadlock with a fold), publishes `rounds` ×
/// `per_round` events, one
/// round per 150 ms (longer than the 100 ms flush interval), and waits until
/// flushes have timed out against the lock twice; then releases it and
/// checks that the warehouse holds every event exactly once.
async fn publish_while_rollup_minute_is_locked(test: &str, seed: u64, extra: &[&str], rounds: usize, per_round: usize) {
    let (db, publisher, logger, mut rng, first) = logger_with_flushed_events(test, seed, 2000, extra).await;
    let mut locker = connect(&db).await;
    let tx = locker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE bid_logger_flush_ledger IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let mut second = Vec::new();
    for round in 0..rounds {
        let batch = events(&mut rng, per_round, &format!("during-{round}"));
        for e in &batch {
            publisher.publish(e, P);
        }
        second.extend(batch);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    logger.wait_metric(
        "bid_logger_events_accepted_total",
        (first.len() + second.len()) as f64,
        Duration::from_secs(30),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while logger.metric("bid_logger_flush_failures_total", "") < 2.0 {
        assert!(Instant::now() < deadline, "flushes did not time out against the lock:\n{}", logger.stderr_so_far());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(logger.metric("bid_logger_events_flushed_total", ""), first.len() as f64, "nothing lands while locked");
    tx.rollback().await.unwrap();
    let all: Vec<TestEvent> = first.into_iter().chain(second).collect();
    logger.wait_metric("bid_logger_events_flushed_total", all.len() as f64, Duration::from_secs(30));
    logger.stop_ok();
    let client = connect(&db).await;
    assert_warehouse_matches(&client, &all, 1_000_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_held_on_the_rollup_table_makes_flushes_wait_and_retry_without_loss() {
    publish_while_rollup_minute_is_locked("lock", 2, &[], 1, 3000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ingest_threads_deltas_merge_exactly_while_flushes_are_blocked() {
    // Each thread takes half the topics, and both see every row key (keys do
    // not include the partition). While rollup_minute is locked, every
    // interval of both threads merges into the sink's queue, overlapping keys
    // included.
    publish_while_rollup_minute_is_locked("threads", 4, &["--ingest-threads", "2"], 5, 1000).await;
}

/// The sum of `events` in `table` plus what waits in its delta log.
async fn table_and_log(client: &impl tokio_postgres::GenericClient, table: &str) -> (i64, i64) {
    let sql = format!(
        "SELECT (SELECT coalesce(sum(events), 0) FROM {table})::bigint,
                (SELECT coalesce(sum(events), 0) FROM bid_logger_log_{table})::bigint"
    );
    let row = client.query_one(&sql, &[]).await.unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_land_while_a_coarse_table_is_locked_and_its_log_delivers_exactly_once() {
    let config = rollup_config("hourlock", "[rollup.rollup_hour]\nflush-interval = \"300ms\"\n");
    let (db, publisher, logger, mut rng, first) =
        logger_with_flushed_events("hourlock", 9, 1000, &["--config", &config]).await;

    let mut locker = connect(&db).await;
    let tx = locker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE rollup_hour_merged IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let second = events(&mut rng, 2000, "during");
    for e in &second {
        publisher.publish(e, P);
    }
    // Batches do not touch rollup_hour (its rows go to its log): they land.
    let all: Vec<TestEvent> = first.into_iter().chain(second).collect();
    logger.wait_metric("bid_logger_events_flushed_total", all.len() as f64, Duration::from_secs(30));
    let labels = "table=\"rollup_hour\"";
    let deadline = Instant::now() + Duration::from_secs(20);
    while logger.metric("bid_logger_log_consume_failures_total", labels) < 1.0 {
        assert!(Instant::now() < deadline, "consuming the hour log did not time out against the lock");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Whatever reached rollup_minute is in rollup_hour or in its log.
    let (hour, log) = table_and_log(&tx, "rollup_hour").await;
    assert_eq!(hour + log, all.len() as i64, "rollup_hour {hour} + log {log}");
    assert!(log >= 2000, "the events published under the lock wait in the log ({log})");
    tx.rollback().await.unwrap();

    let reader = connect(&db).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while table_and_log(&reader, "rollup_hour").await.1 > 0 {
        assert!(Instant::now() < deadline, "the hour log was not consumed after the lock went");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    logger.stop_ok();
    assert_warehouse_matches(&reader, &all, 1_000_000).await;
    // One ledger row per table per batch; the log's consumptions have their own.
    let sql = "SELECT count(*) FILTER (WHERE rollup = 'rollup_minute' AND batch_id > 0),
                      count(*) FILTER (WHERE rollup = 'rollup_hour' AND batch_id > 0),
                      count(*) FILTER (WHERE rollup = 'rollup_hour' AND batch_id < 0)
               FROM bid_logger_flush_ledger";
    let row = reader.query_one(sql, &[]).await.unwrap();
    let (minute, hour, consumed): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(minute, hour, "every batch has a ledger row per table");
    assert!(consumed >= 1, "consumptions are in the ledger");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_full_load_writes_every_event_received() {
    let db = fresh_database("term").await;
    let port = free_port();
    let endpoint = format!("tcp://127.0.0.1:{port}");
    let simulator = Simulator::start(&endpoint, |c| {
        c.rate = None;
        c.duration = Some(Duration::from_secs(30));
    });
    let logger = Logger::start(&db, &["--connect", &endpoint]);
    logger.wait_metric("bid_logger_events_accepted_total", 200_000.0, Duration::from_secs(60));
    let (code, stderr) = logger.stop(); // while the simulator is still publishing at full speed
    simulator.stop();
    assert_eq!(code, 0, "{stderr}");
    let accepted = stopped_field(&stderr, "accepted");
    let written = stopped_field(&stderr, "written");
    assert!(accepted >= 200_000);
    assert_eq!(written, accepted, "every accepted event written");
    assert_eq!(stopped_field(&stderr, "unwritten"), 0);
    let client = connect(&db).await;
    assert_eq!(total_events(&client, "rollup_minute").await as u64, accepted);
    assert_eq!(total_events(&client, "rollup_hour").await as u64, accepted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_at_most_the_unflushed_interval_and_the_next_start_is_clean() {
    let db = fresh_database("kill9").await;
    let mut publisher = Publisher::bind();
    let endpoint = publisher.endpoint.clone();
    let args = ["--connect", &endpoint, "--instance-id", "k"];
    let first = Logger::start(&db, &args);
    publisher.wait_for_subscriptions(all_topics(16));
    let mut rng = SmallRng::seed_from_u64(3);
    let flushed = events(&mut rng, 3000, "flushed");
    for e in &flushed {
        publisher.publish(e, P);
    }
    first.wait_metric("bid_logger_events_flushed_total", flushed.len() as f64, Duration::from_secs(30));
    let unflushed = events(&mut rng, 500, "unflushed");
    for e in &unflushed {
        publisher.publish(e, P);
    }
    first.wait_metric(
        "bid_logger_events_accepted_total",
        (flushed.len() + unflushed.len()) as f64,
        Duration::from_secs(30),
    );
    drop(first); // SIGKILL
    let client = connect(&db).await;
    let after_kill = landed_events(&client, "rollup_minute").await as usize;
    assert!(after_kill >= flushed.len() && after_kill <= flushed.len() + unflushed.len(), "{after_kill}");
    // Whatever reached rollup_minute is in every coarser table, its log, or
    // the logs of the tables feeding it (rollup_hour is fed from
    // rollup_minute's folds, rollup_day from rollup_hour's consumptions).
    for (table, feeders) in [
        ("rollup_hour", &["rollup_minute"][..]),
        ("rollup_day", &["rollup_hour", "rollup_minute"][..]),
        ("rollup_exchange_hour", &["rollup_exchange_minute"][..]),
    ] {
        let (rows, log) = table_and_log(&client, table).await;
        let mut upstream = 0;
        for feeder in feeders {
            upstream += table_and_log(&client, feeder).await.1;
        }
        assert_eq!((rows + log + upstream) as usize, after_kill, "{table}: {rows} + {log} in its log + {upstream}");
    }
    assert_eq!(landed_events(&client, "rollup_exchange_minute").await as usize, after_kill);

    let second = Logger::start(&db, &args);
    publisher.wait_for_subscriptions(2 * all_topics(16));
    let more = events(&mut rng, 2000, "second");
    for e in &more {
        publisher.publish(e, P);
    }
    second.wait_metric("bid_logger_events_flushed_total", more.len() as f64, Duration::from_secs(30));
    let stderr = second.stop_ok();
    assert!(!strip_ansi(&stderr).contains("ERROR"), "the restart is clean:\n{stderr}");
    // The next start delivers what the kill left in the logs: nothing is behind for good.
    for table in ["rollup_minute", "rollup_hour", "rollup_day", "rollup_exchange_minute", "rollup_exchange_hour"] {
        assert_eq!(total_events(&client, table).await as usize, after_kill + more.len(), "{table}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_dropped_by_overflowing_high_water_marks_are_counted_exactly() {
    let db = fresh_database("hwm").await;
    let ctx = zmq::Context::new();
    let xpub = ctx.socket(zmq::XPUB).unwrap();
    xpub.set_sndhwm(100).unwrap();
    xpub.set_rcvtimeo(30_000).unwrap();
    xpub.bind("tcp://127.0.0.1:*").unwrap();
    let endpoint = xpub.get_last_endpoint().unwrap().unwrap();
    let logger = Logger::start(&db, &["--connect", &endpoint, "--event-types", "bid", "--receive-hwm", "100"]);
    for _ in 0..all_topics(16) / 8 {
        xpub.recv_bytes(0).unwrap(); // the subscription (`bid.`)
    }
    let txn = "hwm-txn";
    let mut e = TestEvent::new("bid", txn, now_ms());
    e.publisher = Some("p".into());
    let topic = e.topic(P);
    // Freeze the logger so both high-water marks overflow and ZeroMQ drops.
    let pid = logger_pid(&logger);
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let n = 50_000u64;
    for seq in 1..=n {
        e.seq = Some(seq);
        let _ = xpub.send_multipart([topic.as_bytes(), &e.payload()], zmq::DONTWAIT);
    }
    unsafe { libc::kill(pid, libc::SIGCONT) };
    std::thread::sleep(Duration::from_millis(1500));
    // One last message after the backlog drained, so every gap is closed by a later seq.
    e.seq = Some(n + 1);
    xpub.send_multipart([topic.as_bytes(), &e.payload()], 0).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let received = logger.metric("bid_logger_messages_received_total", "");
        let lost = logger.metric("bid_logger_messages_lost_total", "");
        if received > 0.0 && received + lost >= (n + 1) as f64 {
            assert!(lost > 0.0, "the test overflowed nothing, so it proved nothing");
            assert_eq!(received + lost, (n + 1) as f64, "lost = published - received, exactly");
            break;
        }
        assert!(Instant::now() < deadline, "received {received} + lost {lost} never reached {}", n + 1);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(logger.stop().0, 0);
}

fn outage_secs() -> u64 {
    std::env::var("BID_LOGGER_TEST_OUTAGE_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(5)
}

fn logger_pid(logger: &Logger) -> i32 {
    logger.pid() as i32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_under_load_never_stalls_ingest_and_totals_match_the_truth() {
    let pg = bid_logger_tools::pgtemp::TempPostgres::start().expect("throwaway PostgreSQL");
    let db = create_database_on(&pg.url(), "outage").await;
    let port = free_port();
    let endpoint = format!("tcp://127.0.0.1:{port}");
    let simulator = Simulator::start(&endpoint, |c| {
        c.rate = Some(20_000.0);
        // An upper bound: stopped once the logger receives again after the
        // outage, so a slow machine cannot end the stream during it.
        c.duration = Some(Duration::from_secs(outage_secs() + 120));
        c.traffic.late_fraction = 0.05;
    });
    let logger = Logger::start(&db, &["--connect", &endpoint]);
    logger.wait_metric("bid_logger_events_flushed_total", 20_000.0, Duration::from_secs(30));
    pg.stop().unwrap();
    let before = logger.metric("bid_logger_events_accepted_total", "");
    // 5 s in CI; BID_LOGGER_TEST_OUTAGE_SECS=30 runs the full row of the matrix.
    tokio::time::sleep(Duration::from_secs(outage_secs())).await;
    let during = logger.metric("bid_logger_events_accepted_total", "");
    assert!(during - before > 20_000.0, "ingest stalled while the database was down: {before} → {during}");
    assert!(logger.metric("bid_logger_pending_events", "") > 0.0);
    pg.restart().unwrap();
    let accepted = logger.metric("bid_logger_events_accepted_total", "");
    logger.wait_metric("bid_logger_events_accepted_total", accepted + 20_000.0, Duration::from_secs(30));
    let truth = simulator.stop().truth.to_json();
    let total = truth["events"].as_u64().unwrap();
    logger.wait_metric("bid_logger_events_flushed_total", total as f64, Duration::from_secs(60));
    logger.stop_ok();
    let client = connect(&db).await;
    for (et, t) in truth["by_type"].as_object().unwrap() {
        let r = client
            .query_one(
                "SELECT coalesce(sum(events), 0)::bigint, coalesce(sum(price_micros), 0)::bigint,
                        coalesce(sum(revenue_micros), 0)::bigint FROM rollup_hour WHERE event_type = $1",
                &[et],
            )
            .await
            .unwrap();
        assert_eq!(r.get::<_, i64>(0) as u64, t["events"].as_u64().unwrap(), "{et} events");
        assert_eq!(r.get::<_, i64>(1), t["price_micros"].as_i64().unwrap(), "{et} price");
        assert_eq!(r.get::<_, i64>(2), t["revenue_micros"].as_i64().unwrap(), "{et} revenue");
    }
    assert_eq!(total_events(&client, "rollup_minute").await as u64, total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_logger_refuses_publishers_outside_its_allow_list() {
    let db = fresh_database("zap").await;
    let port = free_port();
    let bound = format!("tcp://127.0.0.1:{port}");
    let logger = Logger::start(&db, &["--bind", &bound, "--allow", "127.0.0.1", "--event-types", "bid"]);
    let ctx = zmq::Context::new();
    let publish_from = |source: &str, tag: &str, n: usize| {
        let s = ctx.socket(zmq::PUB).unwrap();
        s.set_linger(0).unwrap();
        // "source;destination": connect from a chosen loopback address
        s.connect(&format!("tcp://{source}:0;127.0.0.1:{port}")).unwrap();
        std::thread::sleep(Duration::from_millis(700)); // handshake and subscriptions
        for i in 0..n {
            let e = TestEvent::new("bid", format!("{tag}-{i}"), now_ms());
            s.send_multipart([e.topic(P).as_bytes(), &e.payload()], 0).unwrap();
        }
        std::thread::sleep(Duration::from_millis(300));
        s
    };
    let _outsider = publish_from("127.0.0.2", "outsider", 100);
    assert!(logger.metric("bid_logger_connections_refused_total", "") >= 1.0, "127.0.0.2 was not refused");
    assert_eq!(logger.metric("bid_logger_messages_received_total", ""), 0.0, "nothing from 127.0.0.2");
    let _insider = publish_from("127.0.0.1", "insider", 100);
    logger.wait_metric("bid_logger_messages_received_total", 100.0, Duration::from_secs(10));
    logger.stop_ok();
    let client = connect(&db).await;
    assert_eq!(total_events(&client, "rollup_minute").await, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_does_not_cut_the_publisher_off_for_good() {
    let db = fresh_database("oversized").await;
    let mut publisher = Publisher::bind();
    let logger = Logger::start(
        &db,
        &[
            "--connect",
            &publisher.endpoint,
            "--event-types",
            "bid",
            "--max-message-size",
            "4096",
            "--max-event-size",
            "4096",
        ],
    );
    publisher.wait_for_subscriptions(1);
    let mut rng = SmallRng::seed_from_u64(8);
    let before: Vec<TestEvent> =
        (0..100).map(|i| TestEvent::new("bid", format!("before-{i}"), now_ms() - rng.gen_range(0..1000))).collect();
    for e in &before {
        publisher.publish(e, P);
    }
    logger.wait_metric("bid_logger_events_accepted_total", 100.0, Duration::from_secs(10));
    // libzmq drops the connection on a message over ZMQ_MAXMSGSIZE and, being
    // a protocol error, would never reconnect by itself.
    let big = vec![0u8; 10_000];
    publisher.send(&[before[0].topic(P).as_bytes(), &big]);
    logger.wait_metric("bid_logger_reconnects_total", 1.0, Duration::from_secs(10));
    publisher.wait_for_subscriptions(2); // subscriptions arrive again
    let after: Vec<TestEvent> =
        (0..100).map(|i| TestEvent::new("bid", format!("after-{i}"), now_ms() - rng.gen_range(0..1000))).collect();
    for e in &after {
        publisher.publish(e, P);
    }
    logger.wait_metric("bid_logger_events_accepted_total", 200.0, Duration::from_secs(10));
    logger.stop_ok();
    let client = connect(&db).await;
    assert_warehouse_matches(&client, &[before, after].concat(), 1_000_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_that_exits_right_after_sending_loses_nothing() {
    // The publisher's last messages are still queued in the logger when its
    // connection drops; renewing the endpoint at once (as libzmq needs after
    // a protocol error) would discard them with the connection's pipe.
    let db = fresh_database("exits").await;
    let mut publisher = Publisher::bind();
    let logger = Logger::start(&db, &["--connect", &publisher.endpoint]);
    publisher.wait_for_subscriptions(all_topics(16));
    let mut rng = SmallRng::seed_from_u64(12);
    let sent = events(&mut rng, 30_000, "exiting");
    for e in &sent {
        publisher.publish(e, P);
    }
    drop(publisher); // closes the socket (its linger sends what is queued) and the connection
    logger.wait_metric("bid_logger_events_accepted_total", sent.len() as f64, Duration::from_secs(60));
    logger.wait_metric("bid_logger_events_flushed_total", sent.len() as f64, Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(500)).await; // past the renewal delay
    assert_eq!(logger.metric("bid_logger_reconnects_total", ""), 0.0, "libzmq reconnects by itself: not renewed");
    logger.stop_ok();
    let client = connect(&db).await;
    assert_warehouse_matches(&client, &sent, 1_000_000).await;
}

/// A batch of 10 000 rows or more is written as `db-pool-size` parts in
/// parallel, each its own transaction: a part blocked (here the first, which
/// carries the batch's raw rows, behind another session's lock on
/// `events_sample`) times out and is retried alone while the other parts
/// land, and in the end every event is in every table exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_batch_lands_in_parallel_parts_and_a_blocked_part_is_retried_alone() {
    let db = fresh_database("parts").await;
    let mut publisher = Publisher::bind();
    let logger = Logger::start(
        &db,
        &[
            "--connect",
            &publisher.endpoint,
            "--db-pool-size",
            "3",
            "--flush-timeout",
            "1s",
            "--flush-interval",
            "2s",
            "--raw-sample",
            "1",
        ],
    );
    publisher.wait_for_subscriptions(all_topics(16));
    let now = now_ms() - 300_000;
    let event = |i: usize, campaign: u32| {
        let mut e = TestEvent::new("bid", format!("parts-{i}"), now);
        e.country = Some("BR".into());
        e.campaign = campaign;
        e.price = Some(i as i64);
        e
    };
    // A first batch lands; then a session locks the raw sample's table.
    let seed = vec![event(0, 7)];
    publisher.publish(&seed[0], P);
    logger.wait_metric("bid_logger_events_flushed_total", 1.0, Duration::from_secs(30));
    let mut locker = connect(&db).await;
    let tx = locker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE events_sample IN SHARE MODE").await.unwrap();

    // 30 000 distinct keys (one campaign each): one batch of three parts,
    // the first of which writes the raw rows.
    let big: Vec<TestEvent> = (1..=30_000).map(|i| event(i, if i == 30_000 { 7 } else { 1_000 + i as u32 })).collect();
    for e in &big {
        publisher.publish(e, P);
    }
    logger.wait_metric("bid_logger_events_accepted_total", 30_001.0, Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(30);
    while logger.metric("bid_logger_flush_failures_total", "") < 1.0
        || logger.metric("bid_logger_events_flushed_total", "") <= 1.0
    {
        assert!(Instant::now() < deadline, "no part landed, or the blocked part did not time out");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let flushed = logger.metric("bid_logger_events_flushed_total", "");
    assert!(flushed < 30_001.0, "the part with the raw rows cannot land while events_sample is locked ({flushed})");
    let landed_parts: i64 = tx
        .query_one("SELECT count(DISTINCT batch_id) FROM bid_logger_flush_ledger WHERE batch_id > 0", &[])
        .await
        .unwrap()
        .get(0);
    assert!(landed_parts >= 3, "the seed batch and at least two parts have landed ({landed_parts} ledger rows)");
    tx.rollback().await.unwrap();

    let all: Vec<TestEvent> = seed.into_iter().chain(big).collect();
    logger.wait_metric("bid_logger_events_flushed_total", all.len() as f64, Duration::from_secs(60));
    logger.stop_ok();
    let client = connect(&db).await;
    assert_warehouse_matches(&client, &all, 1_000_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_cost_only_themselves() {
    // Three oversized events (200 KB, 2 MB, 4 MB: over max-event-size, under
    // the hard max-message-size) among 40 000 from one publisher, at full speed.
    let db = fresh_database("oversized_cost").await;
    let mut publisher = Publisher::bind();
    let logger = Logger::start(&db, &["--connect", &publisher.endpoint]);
    publisher.wait_for_subscriptions(all_topics(P));
    let mut rng = SmallRng::seed_from_u64(21);
    let mut all = events(&mut rng, 40_003, "ev");
    for (i, size) in [(5_000, 200_000), (15_000, 2_000_000), (25_000, 4_000_000)] {
        all[i].extra = Some(serde_json::json!("x".repeat(size)));
    }
    // one publisher, consecutive seqs per topic in sending order
    let mut seqs = std::collections::HashMap::new();
    for e in &mut all {
        let s = seqs.entry(e.topic(P)).or_insert(0u64);
        *s += 1;
        e.publisher = Some("bidder-1".into());
        e.seq = Some(*s);
    }
    for e in &all {
        publisher.publish(e, P);
    }
    let good: Vec<TestEvent> = all.into_iter().filter(|e| e.extra.is_none()).collect();
    assert_eq!(good.len(), 40_000);
    logger.wait_metric("bid_logger_messages_received_total", 40_003.0, Duration::from_secs(60));
    logger.wait_metric("bid_logger_events_flushed_total", 40_000.0, Duration::from_secs(30));
    assert_eq!(logger.metric("bid_logger_messages_invalid_total", "reason=\"too_large\""), 3.0);
    assert_eq!(logger.metric("bid_logger_messages_invalid_total", ""), 3.0);
    assert_eq!(logger.metric("bid_logger_messages_lost_total", ""), 0.0, "an oversized event's seq is not a gap");
    assert_eq!(logger.metric("bid_logger_reconnects_total", ""), 0.0, "the connection stayed up");
    logger.stop_ok();
    assert_warehouse_matches(&connect(&db).await, &good, 1_000_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_flushes_and_keeps_running_under_load_with_exact_totals() {
    let db = fresh_database("sighup").await;
    let mut publisher = Publisher::bind();
    // An hour-long interval: only SIGHUP (and the final stop) can flush.
    let logger = Logger::start(&db, &["--connect", &publisher.endpoint, "--flush-interval", "1h"]);
    publisher.wait_for_subscriptions(all_topics(P));
    let mut rng = SmallRng::seed_from_u64(22);
    let first = events(&mut rng, 5_000, "first");
    for e in &first {
        publisher.publish(e, P);
    }
    logger.wait_metric("bid_logger_events_accepted_total", 5_000.0, Duration::from_secs(30));
    assert_eq!(logger.metric("bid_logger_events_flushed_total", ""), 0.0);
    // SAFETY: kill with a valid pid and signal.
    unsafe { libc::kill(logger.pid() as i32, libc::SIGHUP) };
    logger.wait_metric("bid_logger_events_flushed_total", 5_000.0, Duration::from_secs(30));
    let client = connect(&db).await;
    assert_eq!(landed_events(&client, "rollup_minute").await, 5_000, "landed after SIGHUP");
    // More load, with SIGHUPs arriving while it is received.
    let second = events(&mut rng, 50_000, "second");
    for (i, e) in second.iter().enumerate() {
        publisher.publish(e, P);
        if i % 10_000 == 0 {
            // SAFETY: as above.
            unsafe { libc::kill(logger.pid() as i32, libc::SIGHUP) };
        }
    }
    logger.wait_metric("bid_logger_events_accepted_total", 55_000.0, Duration::from_secs(60));
    let (code, stderr) = logger.stop();
    assert_eq!(code, 0, "SIGHUP must not end the logger: {stderr}");
    assert!(stderr.contains("SIGHUP received"), "{stderr}");
    assert_warehouse_matches(&client, &[first, second].concat(), 1_000_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_during_a_slow_graceful_stop_exits_at_once_saying_what_is_lost() {
    let (db, publisher, mut logger, mut rng, first) =
        logger_with_flushed_events("second_signal", 23, 1000, &["--shutdown-timeout", "2m"]).await;
    let mut locker = connect(&db).await;
    let tx = locker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE bid_logger_flush_ledger IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let stuck = events(&mut rng, 3000, "stuck");
    for e in &stuck {
        publisher.publish(e, P);
    }
    logger.wait_metric("bid_logger_events_accepted_total", (first.len() + stuck.len()) as f64, Duration::from_secs(30));
    // SAFETY: kill with a valid pid and signal.
    unsafe { libc::kill(logger.pid() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !logger.stderr_so_far().contains("stopping: no longer receiving") {
        assert!(Instant::now() < deadline, "no graceful stop began");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = Instant::now();
    // SAFETY: as above.
    unsafe { libc::kill(logger.pid() as i32, libc::SIGINT) };
    let (code, stderr) = logger.wait();
    assert!(second.elapsed() < Duration::from_secs(5), "the second signal did not exit at once");
    assert_eq!(code, 1, "{stderr}");
    let line = stderr.lines().find(|l| l.contains("second signal")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(strip_ansi(line).contains(&format!("events_unwritten={}", stuck.len())), "{line}");
    tx.rollback().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_with_another_partition_count_lose_nothing_at_rate_1_and_are_counted() {
    // The publishers use 64 partitions, the logger 16.
    let db = fresh_database("mismatch_all").await;
    let mut publisher = Publisher::bind();
    let logger = Logger::start(&db, &["--connect", &publisher.endpoint]);
    publisher.wait_for_subscriptions(all_topics(16));
    let mut rng = SmallRng::seed_from_u64(24);
    let sent = events(&mut rng, 10_000, "p64");
    for e in &sent {
        publisher.publish(e, 64);
    }
    let mismatching = sent
        .iter()
        .filter(|e| {
            let t = e.txn.as_bytes();
            bid_logger_core::wire::partition_of(t, 64) != bid_logger_core::wire::partition_of(t, 16)
        })
        .count();
    assert!(mismatching > 5_000, "three quarters of the partitions disagree");
    logger.wait_metric("bid_logger_events_flushed_total", sent.len() as f64, Duration::from_secs(30));
    assert_eq!(logger.metric("bid_logger_partition_mismatch_total", ""), mismatching as f64);
    assert_eq!(logger.metric("bid_logger_messages_invalid_total", ""), 0.0);
    let stderr = logger.stop_ok();
    let warning = stderr.lines().find(|l| l.contains("another partition count")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(strip_ansi(warning).contains("publishers_partition_count=64"), "{warning}");
    assert_warehouse_matches(&connect(&db).await, &sent, 1_000_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_subset_sees_publishers_with_a_larger_count_and_drops_what_it_cannot_sample() {
    // Publishers at 64, the logger at 16 taking partitions 0-7. As 16 divides
    // 64, every event on 0000-0007 agrees; the events on 0016-0063 are only
    // seen because the logger also subscribes beyond its partition count.
    let db = fresh_database("mismatch_subset").await;
    let mut publisher = Publisher::bind();
    let logger = Logger::start(&db, &["--connect", &publisher.endpoint, "--partitions", "0-7"]);
    publisher.wait_for_subscriptions(subset_topics(16, 8, 8));
    let mut rng = SmallRng::seed_from_u64(25);
    let sent = events(&mut rng, 10_000, "sub");
    for e in &sent {
        publisher.publish(e, 64);
    }
    let p64 = |e: &TestEvent| bid_logger_core::wire::partition_of(e.txn.as_bytes(), 64);
    let kept: Vec<TestEvent> = sent.iter().filter(|e| p64(e) < 8).cloned().collect();
    let beyond = sent.iter().filter(|e| p64(e) >= 16).count();
    logger.wait_metric("bid_logger_messages_received_total", (kept.len() + beyond) as f64, Duration::from_secs(30));
    logger.wait_metric("bid_logger_events_flushed_total", kept.len() as f64, Duration::from_secs(30));
    assert_eq!(logger.metric("bid_logger_partition_mismatch_total", ""), beyond as f64);
    assert_eq!(logger.metric("bid_logger_messages_invalid_total", "reason=\"partition_mismatch\""), beyond as f64);
    logger.stop_ok();
    assert_warehouse_matches(&connect(&db).await, &kept, 1_000_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bogus_seq_jump_is_a_reset_and_a_flood_of_publisher_ids_locks_nobody_out() {
    let db = fresh_database("seq_poison").await;
    let mut publisher = Publisher::bind();
    let logger = Logger::start(&db, &["--connect", &publisher.endpoint]);
    publisher.wait_for_subscriptions(all_topics(16));
    let now = now_ms();
    let on_one_topic = |txn: String, publisher: &str, seq: u64| {
        let mut e = TestEvent::new("bid", txn, now);
        e.publisher = Some(publisher.into());
        e.seq = Some(seq);
        e
    };
    // seq 1, 2, 3, then 2^63, then 2^63 + 1: one reset, nothing lost
    let txn = "fixed-txn".to_string();
    let mut sent = Vec::new();
    for seq in [1, 2, 3, 1 << 63, (1 << 63) + 1] {
        sent.push(on_one_topic(txn.clone(), "bogus", seq));
    }
    // 30 000 publishers, one message each (more than the tracker holds)
    for i in 0..30_000 {
        sent.push(on_one_topic(format!("flood-{i}"), &format!("flood-{i}"), 1));
    }
    // a publisher that appears afterwards, with a real gap of 5
    for seq in [100, 101, 107] {
        sent.push(on_one_topic(txn.clone(), "late", seq));
    }
    for e in &sent {
        publisher.publish(e, P);
    }
    logger.wait_metric("bid_logger_events_flushed_total", sent.len() as f64, Duration::from_secs(30));
    assert_eq!(logger.metric("bid_logger_seq_resets_total", ""), 1.0);
    assert_eq!(logger.metric("bid_logger_messages_lost_total", ""), 5.0, "only the late publisher's real gap");
    // 30 000 publishers through trackers of 10 000 that evict half when
    // full: at least 20 000 evicted (counts are published every 200 ms, not
    // with the batch)
    logger.wait_metric("bid_logger_seq_publishers_evicted_total", 20_000.0, Duration::from_secs(5));
    logger.stop_ok();
}

/// The logger writes through a proxy that executes a COMMIT and loses its
/// reply (cutting the connection) as `fault` says, under 20 000 events/s:
/// batches keep landing, and every table ends exact.
async fn flushes_land_while_commit_replies_are_lost(test: &str, fault: CommitFault) {
    let db = fresh_database(test).await;
    let out = bid_logger(&["migrate", "--database-url", &db]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cfg: tokio_postgres::Config = db.parse().unwrap();
    let server = std::net::SocketAddr::from(([127, 0, 0, 1], cfg.get_ports()[0]));
    let proxy = PgFaultProxy::start(server, fault).unwrap();
    let via = format!(
        "postgres://{}@127.0.0.1:{}/{}?sslmode=disable",
        cfg.get_user().unwrap(),
        proxy.port(),
        cfg.get_dbname().unwrap()
    );
    let endpoint = format!("tcp://127.0.0.1:{}", free_port());
    let simulator = Simulator::start(&endpoint, |c| {
        c.rate = Some(20_000.0);
        c.duration = Some(Duration::from_secs(180));
        c.traffic.invalid_fraction = 0.0;
    });
    let logger = Logger::start(&via, &["--connect", &endpoint]);
    logger.wait_metric("bid_logger_events_flushed_total", 1.0, Duration::from_secs(60));
    // From the first batch on, until 20 replies were lost and 100 000 more
    // events have landed: the longest time with no batch landing.
    let (mut last, mut since, mut longest) =
        (logger.metric("bid_logger_events_flushed_total", ""), Instant::now(), Duration::ZERO);
    let deadline = Instant::now() + Duration::from_secs(150);
    let until = last + 100_000.0;
    while last < until || proxy.commits_cut() < 20 {
        assert!(
            Instant::now() < deadline,
            "{last} events landed in 150 s; {} COMMITs, {} cut; the logger's last lines:\n{}",
            proxy.commits_seen(),
            proxy.commits_cut(),
            logger.stderr_so_far().lines().rev().take(5).collect::<Vec<_>>().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = logger.metric("bid_logger_events_flushed_total", "");
        if now > last {
            (last, since) = (now, Instant::now());
        }
        longest = longest.max(since.elapsed());
    }
    let truth = simulator.stop().truth;
    logger.wait_metric("bid_logger_events_flushed_total", truth.events as f64, Duration::from_secs(60));
    let (commits, cut) = (proxy.commits_seen(), proxy.commits_cut());
    eprintln!("{test}: {commits} COMMITs, {cut} replies lost; longest time without a batch landing: {longest:?}");
    assert!(cut * 5 >= commits && cut >= 20, "the fault happened: {cut} of {commits}");
    assert!(longest < Duration::from_secs(10), "no batch landed for {longest:?}");
    assert_eq!(logger.metric("bid_logger_messages_lost_total", ""), 0.0);
    logger.stop_ok();
    drop(proxy);
    bid_logger_tools::demo::verify(&connect(&db).await, &truth).await.unwrap_or_else(|e| panic!("{test}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_reply_lost_every_third_commit_still_lands_every_batch_exactly_once() {
    flushes_land_while_commit_replies_are_lost("commit_every_third", CommitFault::EveryNth(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_reply_lost_at_random_one_in_three_still_lands_every_batch_exactly_once() {
    let seed = rand::random::<u64>();
    eprintln!("seed {seed}");
    flushes_land_while_commit_replies_are_lost("commit_random", CommitFault::Random { one_in: 3, seed }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_endpoint_shows_whether_it_is_connected_and_a_line_says_when_it_connects_or_drops() {
    let db = fresh_database("endpoints").await;
    let mut publisher = Publisher::bind();
    // Nothing listens here: a publisher that is down from the start.
    let dead = format!("tcp://127.0.0.1:{}", free_port());
    // A port the kernel also gives outgoing connections (what `:0` hands
    // out): the logger could connect to itself there, and says so at start.
    let ephemeral =
        format!("tcp://127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port());
    let logger = Logger::start(&db, &["--connect", &publisher.endpoint, "--connect", &dead, "--connect", &ephemeral]);
    publisher.wait_for_subscriptions(all_topics(P));
    let up = format!("endpoint=\"{}\"", publisher.endpoint);
    let down = format!("endpoint=\"{dead}\"");
    let connected = |labels: &str| logger.metric("bid_logger_endpoint_connected", labels);
    let deadline = Instant::now() + Duration::from_secs(10);
    while connected(&up) < 1.0 {
        assert!(Instant::now() < deadline, "{}", logger.metrics_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        logger.metrics_text().contains(&format!("bid_logger_endpoint_connected{{{down}}} 0")),
        "{}",
        logger.metrics_text()
    );
    let endpoint = publisher.endpoint.clone();
    drop(publisher);
    let deadline = Instant::now() + Duration::from_secs(10);
    while connected(&up) > 0.0 {
        assert!(Instant::now() < deadline, "still connected after the publisher closed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let stderr = logger.stop_ok();
    let lines = |what: &str| stderr.lines().filter(|l| l.contains(what) && l.contains(&endpoint)).count();
    assert_eq!(lines("publisher endpoint connected"), 1, "{stderr}");
    assert_eq!(lines("publisher endpoint disconnected"), 1, "{stderr}");
    // (the publisher's port, bound with `*`, is an ephemeral one too)
    let warned: Vec<&str> = stderr.lines().filter(|l| l.contains("may connect to itself")).collect();
    assert!(warned.iter().any(|l| l.contains(&format!("endpoint={ephemeral} ")) && l.contains("WARN")), "{stderr}");
    assert!(!warned.iter().any(|l| l.contains(&format!("endpoint={dead} "))), "a port below the range: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_endpoints_messages_are_counted_and_one_connected_but_silent_is_logged_until_it_sends() {
    let db = fresh_database("endpoint_quiet").await;
    let (mut talker, mut silent) = (Publisher::bind(), Publisher::bind());
    let args = [
        "--connect",
        &talker.endpoint,
        "--connect",
        &silent.endpoint,
        "--endpoint-quiet-after",
        "1s",
        "--ingest-threads",
        "2",
    ];
    let logger = Logger::start(&db, &args);
    talker.wait_for_subscriptions(subset_topics(16, 8, 16));
    silent.wait_for_subscriptions(subset_topics(16, 8, 16));
    let mut rng = SmallRng::seed_from_u64(17);
    let first = events(&mut rng, 3000, "talker");
    for e in &first {
        talker.publish(e, P);
    }
    logger.wait_metric("bid_logger_events_flushed_total", first.len() as f64, Duration::from_secs(30));
    let quiet = "sending nothing";
    let deadline = Instant::now() + Duration::from_secs(15);
    while !logger.stderr_so_far().lines().any(|l| l.contains(quiet) && l.contains(&silent.endpoint)) {
        assert!(Instant::now() < deadline, "no line for the silent endpoint:\n{}", logger.stderr_so_far());
        std::thread::sleep(Duration::from_millis(100));
    }
    let second = events(&mut rng, 1000, "silent");
    for e in &second {
        silent.publish(e, P);
    }
    logger.wait_metric("bid_logger_events_flushed_total", (first.len() + second.len()) as f64, Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(15);
    while !logger.stderr_so_far().lines().any(|l| l.contains("sending again") && l.contains(&silent.endpoint)) {
        assert!(Instant::now() < deadline, "no line when it sent:\n{}", logger.stderr_so_far());
        std::thread::sleep(Duration::from_millis(100));
    }
    let messages = |e: &str| logger.metric("bid_logger_endpoint_messages_total", &format!("endpoint=\"{e}\""));
    logger.wait_metric("bid_logger_messages_received_total", 4000.0, Duration::from_secs(5));
    assert_eq!((messages(&talker.endpoint), messages(&silent.endpoint)), (3000.0, 1000.0), "{}", logger.metrics_text());
    let stderr = logger.stop_ok();
    // Once each, in turn: quiet, then sending again, and quiet once more
    // only if the stop came a second after its last message.
    let turns: String = stderr
        .lines()
        .filter(|l| l.contains(&silent.endpoint))
        .filter_map(|l| if l.contains(quiet) { Some('q') } else { l.contains("sending again").then_some('a') })
        .collect();
    assert!(turns == "qa" || turns == "qaq", "once each, in turn ({turns}):\n{stderr}");
}

/// Events of the last ten minutes (a direct table's live rows while its
/// boundary is ten minutes back, folded every 10 s).
fn recent_events(rng: &mut SmallRng, n: usize, tag: &str) -> Vec<TestEvent> {
    let now = now_ms();
    let mut list = events(rng, n, tag);
    for e in &mut list {
        e.ts = now - rng.gen_range(0..540_000);
    }
    list
}

/// A fold (one transaction: the log's rows taken, their sums upserted into
/// `rollup_minute_recent`, the live rows deleted, the boundary moved) killed
/// half-way, held at its upsert by a lock: nothing is lost or doubled, the
/// view shows every event meanwhile, and the next start folds them. The
/// boundary starts ten minutes back, so that the folds also move rows into
/// the merged table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fold_killed_half_way_loses_and_doubles_nothing_and_the_next_start_folds_it() {
    let db = fresh_database("foldkill").await;
    let mut publisher = Publisher::bind();
    let endpoint = publisher.endpoint.clone();
    let args = ["--connect", &endpoint, "--flush-interval", "100ms", "--flush-timeout", "60s"];
    migrated_with_boundary_back(&db).await;
    let logger = Logger::start(&db, &args);
    publisher.wait_for_subscriptions(all_topics(16));
    let mut rng = SmallRng::seed_from_u64(31);
    let first = recent_events(&mut rng, 1000, "before");
    for e in &first {
        publisher.publish(e, P);
    }
    logger.wait_metric("bid_logger_events_flushed_total", first.len() as f64, Duration::from_secs(30));

    // The recent table refuses writes: the next fold takes the log's rows
    // and waits at its upsert; batches append to the log meanwhile.
    let mut locker = connect(&db).await;
    let tx = locker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE rollup_minute_recent IN EXCLUSIVE MODE").await.unwrap();
    let waiting = "SELECT count(*) FROM pg_locks WHERE relation = 'rollup_minute_recent'::regclass AND NOT granted";
    let deadline = Instant::now() + Duration::from_secs(30);
    while tx.query_one(waiting, &[]).await.unwrap().get::<_, i64>(0) == 0 {
        assert!(Instant::now() < deadline, "no fold came to wait at the merged table");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let second = recent_events(&mut rng, 2000, "during");
    for e in &second {
        publisher.publish(e, P);
    }
    let all: Vec<TestEvent> = first.into_iter().chain(second).collect();
    logger.wait_metric("bid_logger_events_flushed_total", all.len() as f64, Duration::from_secs(30));
    let merged_before = total_events(&tx, "rollup_minute_merged").await;
    let recent_before = total_events(&tx, "rollup_minute_recent").await;
    let log_before: i64 = tx.query_one("SELECT count(*) FROM bid_logger_log_rollup_minute", &[]).await.unwrap().get(0);
    assert!(log_before > 0, "set-up: batches wait in the log");
    drop(logger); // SIGKILL, the fold still waiting
    tx.rollback().await.unwrap();

    let reader = connect(&db).await;
    assert_eq!(total_events(&reader, "rollup_minute").await, all.len() as i64, "the view right after the kill");
    // The killed fold's transaction ends without committing (its client is gone).
    let deadline = Instant::now() + Duration::from_secs(30);
    while reader.query_one(waiting, &[]).await.unwrap().get::<_, i64>(0) > 0 {
        assert!(Instant::now() < deadline, "the killed fold still waits");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // and its advisory lock (the fold's transaction) is gone: it committed nothing
    let fold_lock = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'";
    while reader.query_one(fold_lock, &[]).await.unwrap().get::<_, i64>(0) > 0 {
        assert!(Instant::now() < deadline, "the killed fold's transaction did not end");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(total_events(&reader, "rollup_minute").await, all.len() as i64, "after the killed fold ended");
    assert_eq!(total_events(&reader, "rollup_minute_merged").await, merged_before, "the killed fold wrote nothing");
    assert_eq!(total_events(&reader, "rollup_minute_recent").await, recent_before, "the killed fold wrote nothing");
    assert_boundary_holds(&reader, "rollup_minute").await;
    let log_after: i64 =
        reader.query_one("SELECT count(*) FROM bid_logger_log_rollup_minute", &[]).await.unwrap().get(0);
    assert!(log_after >= log_before, "the log rows it had taken are back ({log_after} < {log_before})");

    // The next start folds them (its graceful stop folds everything).
    let second = Logger::start(&db, &args);
    let deadline = Instant::now() + Duration::from_secs(30);
    while second.metric("bid_logger_log_events_consumed_total", "table=\"rollup_minute\"") < 1.0 {
        assert!(Instant::now() < deadline, "the next start did not fold rollup_minute");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    second.stop_ok();
    assert_warehouse_matches(&reader, &all, 1_000_000).await;
    let (live, log): (i64, i64) = {
        let r = reader
            .query_one(
                "SELECT (SELECT count(*) FROM rollup_minute_live), (SELECT count(*) FROM bid_logger_log_rollup_minute)",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((live, log), (0, 0), "everything folded");
    let merged = total_events(&reader, "rollup_minute_merged").await;
    let recent = total_events(&reader, "rollup_minute_recent").await;
    assert_eq!(merged + recent, all.len() as i64, "every event in the merged and recent tables exactly once");
    assert!(merged > 0, "the boundary moved: the folds moved rows into the merged table");
    assert_boundary_holds(&reader, "rollup_minute").await;
    let keys =
        "SELECT count(*), count(DISTINCT (bucket, event_type, country, os, campaign_id, advertiser_id, sample_ppm))
                FROM rollup_minute";
    let row = reader.query_one(keys, &[]).await.unwrap();
    assert_eq!(row.get::<_, i64>(0), row.get::<_, i64>(1), "one row per key");
}

/// A fold that moves the boundary while the merged table is locked (an
/// analyst's `LOCK`, a long migration) waits at its move of the recent
/// rows: batches keep landing within their flush interval meanwhile (they
/// only append; the move gives up after 5 s, keeping the fold, and is tried
/// again), and once the lock goes the boundary moves and every event is
/// there once, on its side of the boundary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fold_waiting_to_move_the_boundary_does_not_hold_batches_back() {
    let db = fresh_database("movewait").await;
    let setup = migrated_with_boundary_back(&db).await;
    // No fold until the merged table is locked: this test holds the log's lock.
    let mut holder = connect(&db).await;
    let hold = holder.transaction().await.unwrap();
    let fold_lock = bid_logger::sink::flush::consume_lock("rollup_minute");
    hold.execute("SELECT pg_advisory_xact_lock($1)", &[&fold_lock]).await.unwrap();
    let mut publisher = Publisher::bind();
    let endpoint = publisher.endpoint.clone();
    let config = rollup_config("movewait", "[rollup.rollup_minute]\nfold-interval = \"1s\"\n");
    let args = ["--connect", &endpoint, "--flush-interval", "100ms", "--flush-timeout", "60s", "--config", &config];
    let logger = Logger::start(&db, &args);
    publisher.wait_for_subscriptions(all_topics(16));
    let mut rng = SmallRng::seed_from_u64(32);
    let first = recent_events(&mut rng, 1000, "first");
    for e in &first {
        publisher.publish(e, P);
    }
    // flushed: every range the rows need exists
    logger.wait_metric("bid_logger_events_flushed_total", first.len() as f64, Duration::from_secs(30));
    let mut locker = connect(&db).await;
    let tx = locker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE rollup_minute_merged IN EXCLUSIVE MODE").await.unwrap();
    hold.rollback().await.unwrap();
    let waiting = "SELECT count(*) FROM pg_locks WHERE relation = 'rollup_minute_merged'::regclass AND NOT granted";
    let deadline = Instant::now() + Duration::from_secs(30);
    while tx.query_one(waiting, &[]).await.unwrap().get::<_, i64>(0) == 0 {
        assert!(Instant::now() < deadline, "no fold came to wait at the merged table");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // a fold waits to move rows into the merged table: batches still land at once
    let second = recent_events(&mut rng, 2000, "second");
    for e in &second {
        publisher.publish(e, P);
    }
    let all: Vec<TestEvent> = first.into_iter().chain(second).collect();
    logger.wait_metric("bid_logger_events_flushed_total", all.len() as f64, Duration::from_secs(3));
    // the move gave up after 5 s and kept the fold: the first events left the log
    let deadline = Instant::now() + Duration::from_secs(20);
    while logger.metric("bid_logger_log_events_consumed_total", "table=\"rollup_minute\"") < 1000.0 {
        assert!(Instant::now() < deadline, "no fold was kept while its move waited");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tx.rollback().await.unwrap();
    // tried again a minute after it gave up
    wait_boundary_moved(&setup, Duration::from_secs(90)).await;
    let stderr = logger.stop_ok();
    assert!(stderr.contains("moving the boundary ran out of time") && stderr.contains("retry_in=60s"), "{stderr}");
    assert_boundary_holds(&setup, "rollup_minute").await;
    assert_warehouse_matches(&setup, &all, 1_000_000).await;
}

/// Waits until `rollup_minute`'s boundary is at most a minute behind the clock.
async fn wait_boundary_moved(client: &tokio_postgres::Client, within: Duration) {
    let moved = "SELECT since >= date_trunc('minute', now()) - interval '1 minute' FROM bid_logger_boundary
                 WHERE rollup = 'rollup_minute'";
    let deadline = Instant::now() + within;
    while !client.query_one(moved, &[]).await.unwrap().get::<_, bool>(0) {
        assert!(Instant::now() < deadline, "the boundary did not move within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A batch that stalls (here behind a lock on the raw sample's table, its
/// log and live rows written) holds back neither the folds nor the moves
/// of the boundary: a batch reads no boundary and locks no row of the
/// rollup tables. Once it goes on, every event is there once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_batch_holds_back_neither_the_folds_nor_the_boundary() {
    let db = fresh_database("moveheld").await;
    let setup = migrated_with_boundary_back(&db).await;
    // No fold (nor move) until the batch is stalled: this test holds the log's lock.
    let mut holder = connect(&db).await;
    let hold = holder.transaction().await.unwrap();
    let fold_lock = bid_logger::sink::flush::consume_lock("rollup_minute");
    hold.execute("SELECT pg_advisory_xact_lock($1)", &[&fold_lock]).await.unwrap();
    let mut publisher = Publisher::bind();
    let config = rollup_config("moveheld", "[rollup.rollup_minute]\nfold-interval = \"1s\"\n");
    let args = [
        "--connect",
        &publisher.endpoint,
        "--flush-interval",
        "100ms",
        "--flush-timeout",
        "60s",
        "--raw-sample",
        "1",
        "--config",
        &config,
    ];
    let logger = Logger::start(&db, &args);
    publisher.wait_for_subscriptions(all_topics(16));
    let mut rng = SmallRng::seed_from_u64(33);
    let first = recent_events(&mut rng, 1000, "first");
    for e in &first {
        publisher.publish(e, P);
    }
    logger.wait_metric("bid_logger_events_flushed_total", first.len() as f64, Duration::from_secs(30));
    // The next batch stalls at its raw rows, after its log and live rows.
    let mut locker = connect(&db).await;
    let tx = locker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE events_sample IN SHARE MODE").await.unwrap();
    let second = recent_events(&mut rng, 1000, "second");
    for e in &second {
        publisher.publish(e, P);
    }
    let stalled = "SELECT count(*) FROM pg_locks WHERE relation = 'events_sample'::regclass AND NOT granted";
    let deadline = Instant::now() + Duration::from_secs(30);
    while tx.query_one(stalled, &[]).await.unwrap().get::<_, i64>(0) == 0 {
        assert!(Instant::now() < deadline, "set-up: no batch came to wait at events_sample");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let still_back = "SELECT since < date_trunc('minute', now()) - interval '5 minutes' FROM bid_logger_boundary
                      WHERE rollup = 'rollup_minute'";
    assert!(setup.query_one(still_back, &[]).await.unwrap().get::<_, bool>(0), "set-up: no move yet");
    hold.rollback().await.unwrap();
    // the boundary (ten minutes back) moves meanwhile, and the first events are folded
    wait_boundary_moved(&setup, Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while logger.metric("bid_logger_log_events_consumed_total", "table=\"rollup_minute\"") < 1000.0 {
        assert!(Instant::now() < deadline, "the folds did not take the first batches");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(logger.metric("bid_logger_events_flushed_total", ""), 1000.0, "set-up: the second batch still waits");
    assert!(!logger.stderr_so_far().contains("ran out of time"), "{}", logger.stderr_so_far());
    tx.rollback().await.unwrap();
    let all: Vec<TestEvent> = first.into_iter().chain(second).collect();
    logger.wait_metric("bid_logger_events_flushed_total", all.len() as f64, Duration::from_secs(30));
    logger.stop_ok();
    assert_boundary_holds(&setup, "rollup_minute").await;
    assert_warehouse_matches(&setup, &all, 1_000_000).await;
}

/// Publishers at 64 partitions, the logger at 16 taking them all with
/// auctions sampled at 1/4: the other types, at rate 1, still keep every
/// event whatever its partition (by their type prefix), while an auction
/// on a mismatching partition is dropped and counted (its transaction
/// cannot be sampled whole).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_with_another_partition_count_lose_nothing_of_the_types_at_rate_1_while_another_is_sampled() {
    let db = fresh_database("mismatch_by_type").await;
    let mut publisher = Publisher::bind();
    let logger = Logger::start(&db, &["--connect", &publisher.endpoint, "--sample-by-type", "auction=1/4"]);
    // seven type prefixes, and the auctions' 4 partitions of 16 plus those beyond 16
    publisher.wait_for_subscriptions(7 + subset_topics(16, 1, 4));
    let mut rng = SmallRng::seed_from_u64(26);
    let sent = events(&mut rng, 10_000, "by-type");
    for e in &sent {
        publisher.publish(e, 64);
    }
    let p64 = |e: &TestEvent| bid_logger_core::wire::partition_of(e.txn.as_bytes(), 64);
    let p16 = |e: &TestEvent| bid_logger_core::wire::partition_of(e.txn.as_bytes(), 16);
    let auctions = bid_logger_core::sample::Sampler::new("1/4".parse().unwrap(), 16);
    let kept: Vec<TestEvent> = sent
        .iter()
        .filter(|e| e.event_type != "auction" || (p64(e) < 16 && auctions.keep(e.txn.as_bytes())))
        .cloned()
        .collect();
    let dropped = sent.iter().filter(|e| e.event_type == "auction" && p64(e) >= 16).count();
    let mismatching = sent.iter().filter(|e| e.event_type != "auction" && p64(e) != p16(e)).count() + dropped;
    assert!(kept.iter().filter(|e| e.event_type != "auction" && p64(e) != p16(e)).count() > 5_000);
    logger.wait_metric("bid_logger_events_flushed_total", kept.len() as f64, Duration::from_secs(30));
    logger.wait_metric("bid_logger_partition_mismatch_total", mismatching as f64, Duration::from_secs(10));
    assert_eq!(logger.metric("bid_logger_messages_invalid_total", "reason=\"partition_mismatch\""), dropped as f64);
    let stderr = logger.stop_ok();
    let warning = stderr.lines().find(|l| l.contains("another partition count")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(strip_ansi(warning).contains("kept for bid, win, loss, impression, click, install, event"), "{warning}");
    let ppm = |t: &str| if t == "auction" { 250_000 } else { 1_000_000 };
    assert_warehouse_matches_by_type(&connect(&db).await, &kept, &ppm).await;
}
