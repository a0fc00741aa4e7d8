//! End-to-end: a real ZeroMQ publisher, the real `bid-logger` binary and a
//! real PostgreSQL; the warehouse must equal an independently computed
//! expectation exactly, in both rollup tables.

use crate::support::*;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::time::Duration;

const COUNTRIES: &[Option<&str>] =
    &[Some("BR"), Some("us"), Some("Us"), Some("BRA"), Some(""), Some("ü1"), None, Some("d'"), Some("DE")];
const OSES: &[Option<&str>] = &[
    Some("Android"),
    Some("iOS"),
    Some(""),
    None,
    Some("Win'dows \"10\"; DROP TABLE rollup_minute; --"),
    Some("ÄndrOID ☃"),
    Some("an-os-name-that-is-much-longer-than-32-bytes"),
    Some("ééééééééééééééééééé"),
];

/// Whole transaction chains with RTB-like funnel ratios; `ts_of` gives
/// each chain's base time. Each chain's campaign is unique when `unique_campaigns`.
fn chains(
    rng: &mut SmallRng,
    count: usize,
    ts_of: &dyn Fn(&mut SmallRng) -> i64,
    unique_campaigns: bool,
) -> Vec<TestEvent> {
    let mut out = Vec::new();
    for i in 0..count {
        let txn = format!("txn-{}-{i:06}", rng.gen::<u32>());
        // A chain spans 400 s: end it at ts_of so no event is in the future.
        let base = ts_of(rng) - 400_000;
        let country = COUNTRIES[rng.gen_range(0..COUNTRIES.len())].map(str::to_string);
        let os = OSES[rng.gen_range(0..OSES.len())].map(str::to_string);
        // exchanges normalise like OS names (case, length, absence)
        let exchange = OSES[rng.gen_range(0..OSES.len())].map(|o| format!("X-{o}"));
        let campaign = if unique_campaigns { i as u32 + 1 } else { rng.gen_range(0..20) };
        let advertiser = if campaign == 0 { 0 } else { campaign % 7 + 1 };
        let ev = |t: &'static str, dt: i64| {
            let mut e = TestEvent::new(t, txn.clone(), base + dt);
            e.country = country.clone();
            e.os = os.clone();
            e.exchange = exchange.clone();
            if t != "auction" && t != "loss" {
                e.campaign = campaign;
                e.advertiser = advertiser;
            }
            e
        };
        out.push(ev("auction", 0));
        if rng.gen_bool(0.6) {
            let mut bid = ev("bid", 5);
            bid.price = Some(rng.gen_range(100_000..3_000_000));
            out.push(bid);
            if rng.gen_bool(0.4) {
                let mut win = ev("win", 80);
                win.price = Some(rng.gen_range(50_000..2_000_000));
                out.push(win.clone());
                let mut imp = ev("impression", 900);
                imp.price = win.price;
                out.push(imp);
                if rng.gen_bool(0.2) {
                    let mut click = ev("click", 20_000);
                    click.attributed = Some(true);
                    out.push(click);
                    if rng.gen_bool(0.5) {
                        let mut inst = ev("install", 300_000);
                        inst.attributed = Some(rng.gen_bool(0.7));
                        inst.revenue = Some(rng.gen_range(0..5_000_000));
                        out.push(inst);
                        let mut purchase = ev("event", 400_000);
                        purchase.revenue = Some(rng.gen_range(1..9_000_000));
                        purchase.attributed = Some(true);
                        purchase.extra = Some(serde_json::json!({"name": "purchase", "nested": [1, {"x": null}]}));
                        out.push(purchase);
                    }
                } else {
                    out.push(ev("loss", 100));
                }
            }
        }
    }
    out
}

/// Invalid messages, one per rule, on topics the logger subscribes to.
fn garbage() -> Vec<(Vec<Vec<u8>>, &'static str)> {
    let valid = |ts: serde_json::Value| rmp_serde::to_vec(&serde_json::json!({"txn": "g", "ts": ts})).unwrap();
    let topic = format!("bid.{:04}", bid_logger_core::wire::partition_of(b"g", P)).into_bytes();
    let bad_utf8 = {
        let mut b = Vec::new();
        rmp::encode::write_map_len(&mut b, 3).unwrap();
        rmp::encode::write_str(&mut b, "txn").unwrap();
        rmp::encode::write_str(&mut b, "g").unwrap();
        rmp::encode::write_str(&mut b, "ts").unwrap();
        rmp::encode::write_uint(&mut b, 1).unwrap();
        rmp::encode::write_str(&mut b, "os").unwrap();
        rmp::encode::write_str_len(&mut b, 1).unwrap();
        b.push(0xff);
        b
    };
    vec![
        (vec![topic.clone()], "frames"),
        (vec![topic.clone(), valid(serde_json::json!(1)), b"third".to_vec()], "frames"),
        (vec![b"bid.00001".to_vec(), valid(serde_json::json!(1))], "topic"),
        (vec![topic.clone(), b"\xc1".to_vec()], "malformed"),
        (vec![topic.clone(), rmp_serde::to_vec(&serde_json::json!([1, 2])).unwrap()], "not_map"),
        (vec![topic.clone(), rmp_serde::to_vec(&serde_json::json!({"txn": "g"})).unwrap()], "missing_field"),
        (vec![topic.clone(), valid(serde_json::json!(1.5))], "wrong_type"),
        (
            vec![topic.clone(), rmp_serde::to_vec(&serde_json::json!({"txn": "g", "ts": 1, "campaign": -3})).unwrap()],
            "out_of_range",
        ),
        (
            vec![topic.clone(), rmp_serde::to_vec(&serde_json::json!({"txn": "g", "ts": 1, "type": "win"})).unwrap()],
            "type_mismatch",
        ),
        (vec![topic, bad_utf8], "invalid_utf8"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_totals_with_late_out_of_order_invalid_and_odd_values() {
    let db = fresh_database("exact").await;
    let mut publisher = Publisher::bind();
    let mut second = Publisher::bind();
    let endpoints = format!("{},{}", publisher.endpoint, second.endpoint);
    // rollup_day consumed only at the stop (its log is checked below)
    let config = rollup_config("exact", "[rollup.rollup_day]\nflush-interval = \"1h\"\n");
    let logger = Logger::start(&db, &["--connect", &endpoints, "--config", &config]);
    publisher.wait_for_subscriptions(all_topics(P));
    second.wait_for_subscriptions(all_topics(P));

    let now = now_ms();
    let mut rng = SmallRng::seed_from_u64(7);
    let recent = |r: &mut SmallRng| now - r.gen_range(0..600_000);
    let mut events = chains(&mut rng, 3000, &recent, false);
    // hours late, and the edges of the accepted window
    let late = |r: &mut SmallRng| now - 3 * 3_600_000 - r.gen_range(0..3_600_000);
    events.extend(chains(&mut rng, 300, &late, false));
    let rejected_late = TestEvent::new("click", "too-old", now - 8 * 86_400_000);
    let rejected_future = TestEvent::new("click", "too-new", now + 20 * 60_000);
    events.shuffle(&mut rng); // out of event-time order
                              // seq follows the publishing order, as a publisher's does (one per endpoint)
    let on_second = |e: &TestEvent| e.txn.ends_with(['0', '2', '4', '6', '8']);
    let mut seqs = std::collections::HashMap::new();
    for e in events.iter_mut() {
        let name = if on_second(e) { "bidder-2" } else { "bidder-1" };
        let s = seqs.entry((name, e.topic(P))).or_insert(1000u64);
        e.publisher = Some(name.to_string());
        e.seq = Some(*s);
        *s += 1;
    }
    let garbage = garbage();
    for (i, e) in events.iter().enumerate() {
        // two endpoints: whole transactions on either
        if on_second(e) {
            second.publish(e, P);
        } else {
            publisher.publish(e, P);
        }
        if i % 500 == 0 {
            let frames: Vec<&[u8]> = garbage[(i / 500) % garbage.len()].0.iter().map(Vec::as_slice).collect();
            publisher.send(&frames);
        }
    }
    for (frames, _) in &garbage {
        let frames: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        publisher.send(&frames);
    }
    publisher.publish(&rejected_late, P);
    publisher.publish(&rejected_future, P);
    let garbage_sent = garbage.len() + events.len().div_ceil(500);
    let total = events.len() + garbage_sent + 2;
    logger.wait_metric("bid_logger_messages_received_total", total as f64, Duration::from_secs(60));
    logger.wait_metric("bid_logger_events_flushed_total", events.len() as f64, Duration::from_secs(30));

    let invalid = logger.metric("bid_logger_messages_invalid_total", "");
    assert_eq!(invalid as usize, garbage_sent, "every invalid message counted once");
    for (_, reason) in &garbage {
        assert!(
            logger.metric("bid_logger_messages_invalid_total", &format!("reason=\"{reason}\"")) >= 1.0,
            "reason {reason} counted"
        );
    }
    assert_eq!(logger.metric("bid_logger_events_rejected_total", "reason=\"late\""), 1.0);
    assert_eq!(logger.metric("bid_logger_events_rejected_total", "reason=\"future\""), 1.0);
    assert_eq!(logger.metric("bid_logger_messages_lost_total", ""), 0.0, "no false loss");
    assert_eq!(logger.metric("bid_logger_events_accepted_total", "") as usize, events.len());
    // the day table's rows still wait in its delta log, or in the logs of
    // rollup_hour and rollup_minute (whose consumptions and folds feed it):
    // the stop must deliver them
    let reader = connect(&db).await;
    let sql = "SELECT (SELECT coalesce(sum(events), 0) FROM bid_logger_log_rollup_day)::bigint,
                      (SELECT coalesce(sum(events), 0) FROM bid_logger_log_rollup_hour)::bigint,
                      (SELECT coalesce(sum(events), 0) FROM bid_logger_log_rollup_minute)::bigint,
                      (SELECT count(*) FROM rollup_day)::bigint";
    let row = reader.query_one(sql, &[]).await.unwrap();
    let (day_log, hour_log, minute_log, day_rows): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(
        (day_log + hour_log + minute_log) as usize,
        events.len(),
        "every event waits for rollup_day before the stop"
    );
    assert_eq!(day_rows, 0, "rollup_day is written at its own interval only");

    let (code, stderr) = logger.stop();
    assert_eq!(code, 0, "graceful stop exits 0; stderr:\n{stderr}");

    let client = connect(&db).await;
    assert_warehouse_matches(&client, &events, 1_000_000).await;
    // the estimate views equal the rollups at a full sample
    let est: f64 = client.query_one("SELECT sum(events) FROM rollup_hour_est", &[]).await.unwrap().get(0);
    assert_eq!(est as usize, events.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_flushes_everything_even_with_a_long_flush_interval() {
    let db = fresh_database("stop").await;
    let mut publisher = Publisher::bind();
    let logger = Logger::start(&db, &["--connect", &publisher.endpoint, "--flush-interval", "1h"]);
    publisher.wait_for_subscriptions(all_topics(P));
    let now = now_ms();
    let mut rng = SmallRng::seed_from_u64(11);
    let events = chains(&mut rng, 500, &|r: &mut SmallRng| now - r.gen_range(0..60_000), false);
    for e in &events {
        publisher.publish(e, P);
    }
    logger.wait_metric("bid_logger_messages_received_total", events.len() as f64, Duration::from_secs(30));
    logger.stop_ok();
    let client = connect(&db).await;
    // every table, the coarse ones too: their last rows were consumed at the stop
    assert_warehouse_matches(&client, &events, 1_000_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_database_connections_mid_run_still_give_exact_totals() {
    let db = fresh_database("kill").await;
    let admin = connect(&db).await;
    let mut publisher = Publisher::bind();
    let logger = Logger::start(&db, &["--connect", &publisher.endpoint, "--flush-interval", "100ms"]);
    publisher.wait_for_subscriptions(all_topics(P));
    let now = now_ms();
    let mut rng = SmallRng::seed_from_u64(3);
    let mut all = Vec::new();
    let mut killed = 0;
    for _wave in 0..6 {
        let events = chains(&mut rng, 400, &|r: &mut SmallRng| now - r.gen_range(0..7_200_000), false);
        for e in &events {
            publisher.publish(e, P);
        }
        all.extend(events);
        // Kill the logger's sessions while flushes are under way.
        for _ in 0..5 {
            killed += kill_logger_connections(&admin).await;
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
    }
    assert!(killed > 0, "the test killed no connection, so it proved nothing");
    logger.wait_metric("bid_logger_events_flushed_total", all.len() as f64, Duration::from_secs(60));
    logger.stop_ok();
    assert_warehouse_matches(&admin, &all, 1_000_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_down_at_start_and_restarted_mid_run_gives_exact_totals() {
    // Needs a server this test may stop and start: always a private cluster.
    let pg = bid_logger_tools::pgtemp::TempPostgres::start().expect("throwaway PostgreSQL for the restart test");
    let db = create_database_on(&pg.url(), "restart").await;
    pg.stop().unwrap();

    let mut publisher = Publisher::bind();
    let logger = Logger::start(&db, &["--connect", &publisher.endpoint]);
    publisher.wait_for_subscriptions(all_topics(P));
    let now = now_ms();
    let mut rng = SmallRng::seed_from_u64(5);
    let mut all = Vec::new();
    for wave in 0..3 {
        let events = chains(&mut rng, 500, &|r: &mut SmallRng| now - r.gen_range(0..600_000), false);
        for e in &events {
            publisher.publish(e, P);
        }
        all.extend(events);
        logger.wait_metric("bid_logger_events_accepted_total", all.len() as f64, Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(700)).await;
        if wave == 0 {
            assert_eq!(logger.metric("bid_logger_events_flushed_total", ""), 0.0, "nothing can be flushed yet");
            assert!(logger.metric("bid_logger_flush_failures_total", "") >= 1.0);
        }
        pg.restart().unwrap();
    }
    logger.wait_metric("bid_logger_events_flushed_total", all.len() as f64, Duration::from_secs(60));
    logger.stop_ok();
    let client = connect(&db).await;
    assert_warehouse_matches(&client, &all, 1_000_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_gone_for_good_exits_nonzero_and_says_how_much_was_lost() {
    let pg = bid_logger_tools::pgtemp::TempPostgres::start().expect("throwaway PostgreSQL");
    let db = create_database_on(&pg.url(), "gone").await;
    let mut publisher = Publisher::bind();
    let logger =
        Logger::start(&db, &["--connect", &publisher.endpoint, "--shutdown-timeout", "2s", "--flush-interval", "1h"]);
    publisher.wait_for_subscriptions(all_topics(P));
    pg.stop().unwrap();
    let now = now_ms();
    let mut rng = SmallRng::seed_from_u64(9);
    let events = chains(&mut rng, 100, &|r: &mut SmallRng| now - r.gen_range(0..60_000), false);
    for e in &events {
        publisher.publish(e, P);
    }
    logger.wait_metric("bid_logger_events_accepted_total", events.len() as f64, Duration::from_secs(30));
    let (code, stderr) = logger.stop();
    assert_ne!(code, 0);
    assert!(stderr.contains(&format!("{} accepted events NOT written", events.len())), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_while_the_database_never_answered_takes_one_shutdown_timeout_and_a_few_true_lines() {
    // Nothing listens on this port: the run never reaches a database.
    let db = format!("postgres://postgres@127.0.0.1:{}/nowhere?connect_timeout=1", free_port());
    let mut publisher = Publisher::bind();
    let logger = Logger::start(&db, &["--connect", &publisher.endpoint, "--shutdown-timeout", "3s"]);
    publisher.wait_for_subscriptions(all_topics(P));
    let now = now_ms();
    let mut rng = SmallRng::seed_from_u64(10);
    let events = chains(&mut rng, 100, &|r: &mut SmallRng| now - r.gen_range(0..60_000), false);
    for e in &events {
        publisher.publish(e, P);
    }
    logger.wait_metric("bid_logger_events_accepted_total", events.len() as f64, Duration::from_secs(30));
    let before = logger.stderr_so_far().lines().count();
    let stopping = std::time::Instant::now();
    let (code, stderr) = logger.stop();
    let took = stopping.elapsed();
    assert_ne!(code, 0);
    // One shutdown-timeout (3 s), plus one attempt in flight when it ran out.
    assert!(took < Duration::from_secs(5), "the stop took {took:?}:\n{stderr}");
    let at_stop: Vec<&str> = stderr.lines().skip(before).collect();
    let loud = at_stop.iter().filter(|l| l.contains("WARN") || l.contains("ERROR")).count();
    assert!(loud <= 4, "{loud} warnings at stop:\n{}", at_stop.join("\n"));
    assert!(stderr.contains(&format!("{} accepted events NOT written", events.len())), "{stderr}");
    assert!(!stderr.contains("they are in PostgreSQL"), "{stderr}");
}

#[test]
fn a_stop_in_the_first_moments_while_the_database_is_checked_exits_cleanly() {
    // A database that takes the connection and never answers holds the
    // start-up in its check; the metrics endpoint already answers. A
    // SIGTERM now (a service manager stopping a logger it just started)
    // is a graceful stop, not the signal's default action.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let db = format!("postgres://postgres@{}/silent", silent.local_addr().unwrap());
    let logger = Logger::start(&db, &["--connect", "tcp://127.0.0.1:9"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while logger.metric("process_cpu_seconds_total", "") == 0.0 {
        assert!(std::time::Instant::now() < deadline, "no metrics:\n{}", logger.stderr_so_far());
        std::thread::sleep(Duration::from_millis(20));
    }
    let stopping = std::time::Instant::now();
    let stderr = logger.stop_ok();
    assert!(stopping.elapsed() < Duration::from_secs(5), "the stop took {:?}:\n{stderr}", stopping.elapsed());
    assert!(stderr.contains("stopped during start-up, before receiving anything"), "{stderr}");
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_keeps_whole_transactions_and_subscribes_to_fewer_partitions() {
    let db = fresh_database("sample").await;
    let mut publisher = Publisher::bind();
    let logger = Logger::start(&db, &["--connect", &publisher.endpoint, "--sample", "0.3"]);
    // 0.3 of 16 partitions: 4 whole and one refined by the hash
    publisher.wait_for_subscriptions(subset_topics(16, 8, 5));
    let now = now_ms();
    let mut rng = SmallRng::seed_from_u64(13);
    let events = chains(&mut rng, 4000, &|r: &mut SmallRng| now - r.gen_range(0..600_000), true);
    for e in &events {
        publisher.publish(e, P);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let received = logger.metric("bid_logger_messages_received_total", "");
    assert!(received < events.len() as f64 * 0.4, "unsubscribed partitions are filtered at the publisher: {received}");
    logger.stop_ok();

    // Each transaction has its own campaign: a kept transaction must be complete.
    let mut chain_len = std::collections::HashMap::new();
    for e in events.iter().filter(|e| e.campaign != 0) {
        *chain_len.entry(i64::from(e.campaign)).or_insert(0i64) += 1;
    }
    let client = connect(&db).await;
    let rows = client
        .query("SELECT campaign_id, sum(events)::bigint, min(sample_ppm), max(sample_ppm) FROM rollup_minute WHERE campaign_id <> 0 GROUP BY 1", &[])
        .await
        .unwrap();
    for r in &rows {
        let (c, n, lo, hi): (i64, i64, i32, i32) = (r.get(0), r.get(1), r.get(2), r.get(3));
        assert_eq!(n, chain_len[&c], "transaction of campaign {c} is incomplete");
        assert_eq!((lo, hi), (300_000, 300_000));
    }
    let kept = rows.len() as f64 / chain_len.len() as f64;
    let sd = (0.3 * 0.7 / chain_len.len() as f64).sqrt();
    assert!((kept - 0.3).abs() < 5.0 * sd, "kept {kept} of transactions with a bid, expected ~0.3");
    // and exactly the transactions the documented rule selects
    let sampler = bid_logger_core::sample::Sampler::new("0.3".parse().unwrap(), P);
    let expected: Vec<TestEvent> = events.iter().filter(|e| sampler.keep(e.txn.as_bytes())).cloned().collect();
    assert_warehouse_matches(&client, &expected, 300_000).await;
}

/// `sample-by-type`: auctions at 1/8 and losses at 1/4 of the 16
/// partitions while the other types stay exact, for a single instance and
/// for a fleet member (which subscribes partition by partition as it takes
/// them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_per_type_subscribes_each_type_to_its_own_partitions_and_scales_only_its_rows() {
    for fleet in [false, true] {
        sampled_by_type(fleet).await;
    }
}

async fn sampled_by_type(fleet: bool) {
    let db = fresh_database(if fleet { "sample_type_fleet" } else { "sample_type" }).await;
    let mut publisher = Publisher::bind();
    let mut args = vec!["--connect", &publisher.endpoint, "--sample-by-type", "auction=1/8,loss=1/4"];
    if fleet {
        args.extend(["--group", "g", "--instance-id", "a"]);
    }
    let logger = Logger::start(&db, &args);
    // whole partitions: 2 of 16 for auctions, 4 for losses; the six other
    // types, at rate 1, by their prefix (a fleet member: partition by partition)
    let others = if fleet { subset_topics(P, 6, 16) } else { 6 };
    publisher.wait_for_subscriptions(subset_topics(P, 1, 2) + subset_topics(P, 1, 4) + others);
    let now = now_ms();
    let mut rng = SmallRng::seed_from_u64(29);
    let events = chains(&mut rng, 3000, &|r: &mut SmallRng| now - r.gen_range(0..600_000), false);
    for e in &events {
        publisher.publish(e, P);
    }
    let rate = |t: &str| match t {
        "auction" => "1/8",
        "loss" => "1/4",
        _ => "1",
    };
    let kept: Vec<TestEvent> = events
        .iter()
        .filter(|e| {
            bid_logger_core::sample::Sampler::new(rate(e.event_type).parse().unwrap(), P).keep(e.txn.as_bytes())
        })
        .cloned()
        .collect();
    let auctions = |list: &[TestEvent]| list.iter().filter(|e| e.event_type == "auction").count();
    assert!(auctions(&kept) * 5 < auctions(&events), "{} of {} auctions", auctions(&kept), auctions(&events));
    logger.wait_metric("bid_logger_events_flushed_total", kept.len() as f64, Duration::from_secs(30));
    // what a type's rate leaves out was never sent: the publisher filtered it
    assert_eq!(logger.metric("bid_logger_messages_received_total", ""), kept.len() as f64, "fleet: {fleet}");
    logger.stop_ok();
    let client = connect(&db).await;
    let ppm = |t: &str| match t {
        "auction" => 125_000,
        "loss" => 250_000,
        _ => 1_000_000,
    };
    assert_warehouse_matches_by_type(&client, &kept, &ppm).await;
    // the estimates scale each type by its own rate
    for r in client.query("SELECT event_type, sum(events) FROM rollup_hour_est GROUP BY 1", &[]).await.unwrap() {
        let (t, estimate): (String, f64) = (r.get(0), r.get(1));
        let n = kept.iter().filter(|e| e.event_type == t).count() as f64;
        assert_eq!(estimate, n * 1e6 / f64::from(ppm(&t)), "{t}, fleet: {fleet}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seq_gaps_are_reported_as_lost_and_restarts_are_not() {
    let db = fresh_database("seq").await;
    let mut publisher = Publisher::bind();
    let logger = Logger::start(&db, &["--connect", &publisher.endpoint, "--event-types", "bid"]);
    publisher.wait_for_subscriptions(1);
    let now = now_ms();
    let mut e = TestEvent::new("bid", "same-txn", now);
    e.publisher = Some("b1".into());
    // 10, 11, [12-14 lost], 15, restart at 3, 4, [5 lost], 6
    for seq in [10, 11, 15, 3, 4, 6] {
        e.seq = Some(seq);
        publisher.publish(&e, P);
    }
    logger.wait_metric("bid_logger_messages_received_total", 6.0, Duration::from_secs(30));
    // Counted once the batch carrying the gaps' marks has committed.
    logger.wait_metric("bid_logger_messages_lost_total", 4.0, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(logger.metric("bid_logger_messages_lost_total", ""), 4.0);
    assert_eq!(logger.metric("bid_logger_publisher_restarts_total", ""), 1.0);
    let (code, _) = logger.stop();
    assert_eq!(code, 0);
}
