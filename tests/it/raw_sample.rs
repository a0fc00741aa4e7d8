//! `events_sample`: whole transactions, daily partitions, retention, and no
//! duplicates across retried flushes.

use crate::support::*;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

const DAY: i64 = 86_400_000;

/// Chains of 3 to 8 events; each transaction's events spread over `spread` ms
/// ending at most at `end`.
fn chains(rng: &mut SmallRng, n: usize, end: i64, spread: i64) -> Vec<TestEvent> {
    let types = ["auction", "bid", "win", "impression", "click", "install", "event", "event"];
    let mut out = Vec::new();
    for i in 0..n {
        let txn = format!("raw-{}-{i}", rng.gen::<u32>());
        let len = rng.gen_range(3..=8);
        let start = end - rng.gen_range(0..spread);
        for (k, t) in types.iter().take(len).enumerate() {
            let mut e = TestEvent::new(t, txn.clone(), start + k as i64 * 1000 - 8000);
            e.country = Some("br".into());
            e.os = Some("Android".into());
            e.campaign = i as u32 + 1;
            e.advertiser = 9;
            e.publisher = Some("bidder-7".into());
            e.price = (k % 2 == 0).then_some(1_000 + k as i64);
            out.push(e);
        }
    }
    out
}

async fn raw_rows(client: &tokio_postgres::Client) -> BTreeMap<Vec<u8>, Vec<(String, i64)>> {
    let mut by_txn: BTreeMap<Vec<u8>, Vec<(String, i64)>> = BTreeMap::new();
    for r in client
        .query("SELECT txn, event_type, (extract(epoch FROM ts) * 1000)::bigint FROM events_sample", &[])
        .await
        .unwrap()
    {
        by_txn.entry(r.get(0)).or_default().push((r.get(1), r.get(2)));
    }
    by_txn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_transactions_are_complete_late_events_included_and_never_duplicated() {
    let db = fresh_database("raw").await;
    let admin = connect(&db).await;
    let mut publisher = Publisher::bind();
    let logger =
        Logger::start(&db, &["--connect", &publisher.endpoint, "--raw-sample", "1/4", "--flush-interval", "100ms"]);
    publisher.wait_for_subscriptions(all_topics(16));
    let now = now_ms();
    let mut rng = SmallRng::seed_from_u64(21);
    let mut events = chains(&mut rng, 2000, now, 600_000);
    // hours-late chains too
    events.extend(chains(&mut rng, 200, now - 5 * 3_600_000, 3_600_000));
    events.shuffle(&mut rng); // out of order
    let mut killed = 0;
    for (i, e) in events.iter().enumerate() {
        publisher.publish(e, P);
        if i % 2000 == 1999 {
            // lose the logger's connections mid-run: retried batches must not duplicate
            tokio::time::sleep(Duration::from_millis(120)).await;
            killed += kill_logger_connections(&admin).await;
        }
    }
    assert!(killed > 0, "no connection was killed; the test would prove nothing about retries");
    logger.wait_metric("bid_logger_events_flushed_total", events.len() as f64, Duration::from_secs(60));
    logger.stop_ok();

    let mut published: HashMap<Vec<u8>, Vec<(String, i64)>> = HashMap::new();
    for e in &events {
        published.entry(e.txn.as_bytes().to_vec()).or_default().push((e.event_type.to_string(), e.ts));
    }
    let stored = raw_rows(&admin).await;
    assert!(!stored.is_empty());
    for (txn, rows) in &stored {
        let mut want = published[txn].clone();
        let mut got = rows.clone();
        want.sort();
        got.sort();
        assert_eq!(got, want, "transaction {} is incomplete or duplicated", String::from_utf8_lossy(txn));
    }
    let fraction = stored.len() as f64 / published.len() as f64;
    let sd = (0.25 * 0.75 / published.len() as f64).sqrt();
    assert!((fraction - 0.25).abs() < 5.0 * sd, "sampled {fraction} of transactions, expected ~0.25");
    // exactly the documented rule's transactions
    let sampler = bid_logger_core::sample::Sampler::new("1/4".parse().unwrap(), P);
    let expected: usize = published.keys().filter(|t| sampler.keep(t)).count();
    assert_eq!(stored.len(), expected);
    // a raw-sampled transaction is counted in the rollups too (sample 1 here)
    let (txn, _) = stored.iter().next().unwrap();
    let campaign: i64 = events.iter().find(|e| e.txn.as_bytes() == txn.as_slice()).unwrap().campaign.into();
    let n: i64 = admin
        .query_one("SELECT coalesce(sum(events), 0)::bigint FROM rollup_minute WHERE campaign_id = $1", &[&campaign])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n as usize, stored[txn].len());
    // fields as received, normalised like the rollups
    let row = admin
        .query_one("SELECT country, os, pub, sample_ppm, partition FROM events_sample LIMIT 1", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "BR");
    assert_eq!(row.get::<_, String>(1), "android");
    assert_eq!(row.get::<_, Option<String>>(2).as_deref(), Some("bidder-7"));
    assert_eq!(row.get::<_, i32>(3), 250_000);
    assert!((0..16).contains(&row.get::<_, i32>(4)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_partitions_are_created_for_late_days_and_dropped_past_retention() {
    let db = fresh_database("days").await;
    let admin = connect(&db).await;
    // An old partition from an earlier run: retention must drop it.
    let (code, _, stderr) = {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_bid-logger"))
            .args(["migrate", "--database-url", &db])
            .output()
            .unwrap();
        (out.status.code(), String::new(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    assert_eq!(code, Some(0), "{stderr}");
    admin
        .batch_execute(
            "CREATE TABLE events_sample_p20200101 PARTITION OF events_sample
             FOR VALUES FROM ('2020-01-01 00:00:00+00') TO ('2020-01-02 00:00:00+00')",
        )
        .await
        .unwrap();

    let mut publisher = Publisher::bind();
    let logger = Logger::start(
        &db,
        &["--connect", &publisher.endpoint, "--raw-sample", "1", "--raw-retention", "3d", "--max-lateness", "6d"],
    );
    publisher.wait_for_subscriptions(all_topics(16));
    let now = now_ms();
    let today = now.div_euclid(DAY);
    let mut events = Vec::new();
    for (i, days_ago) in [0i64, 1, 2, 5].iter().enumerate() {
        for k in 0..10 {
            // noon of past days; for today, half-way between midnight and now
            let ts =
                if *days_ago == 0 { today * DAY + (now - today * DAY) / 2 } else { (today - days_ago) * DAY + DAY / 2 };
            events.push(TestEvent::new("bid", format!("d{i}-{k}"), ts));
        }
    }
    for e in &events {
        publisher.publish(e, P);
    }
    logger.wait_metric("bid_logger_events_flushed_total", events.len() as f64, Duration::from_secs(30));
    assert_eq!(logger.metric("bid_logger_raw_rows_dropped_total", "reason=\"expired\""), 10.0);
    assert_eq!(logger.metric("bid_logger_raw_rows_written_total", ""), 30.0);
    // Retention runs in range maintenance, apart from the flushes: wait for it.
    logger.wait_metric("bid_logger_raw_partitions_dropped_total", 1.0, Duration::from_secs(30));
    logger.stop_ok();

    let parts: Vec<String> = admin
        .query(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'events_sample' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let name = |days_ago: i64| bid_logger::db::ranges::Span::Day.name("events_sample", (today - days_ago) * 86_400);
    assert!(!parts.contains(&"events_sample_p20200101".to_string()), "old partition dropped: {parts:?}");
    for d in [0, 1, 2] {
        assert!(parts.contains(&name(d)), "partition for {d} days ago: {parts:?}");
        let n: i64 = admin.query_one(&format!("SELECT count(*) FROM {}", name(d)), &[]).await.unwrap().get(0);
        assert_eq!(n, 10, "rows in the partition of {d} days ago");
    }
    assert!(parts.contains(&name(-2)), "created ahead of time: {parts:?}");
    assert!(!parts.contains(&name(5)), "a day past retention gets no partition: {parts:?}");
    // 5 days ago is inside max-lateness (rollups) but past raw retention (and
    // past rollup_minute's 3 days: rollup_hour has them)
    let rollup: i64 = admin.query_one("SELECT sum(events)::bigint FROM rollup_hour", &[]).await.unwrap().get(0);
    assert_eq!(rollup, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_rows_beyond_the_buffer_are_dropped_and_counted_while_rollups_stay_exact() {
    let pg = bid_logger_tools::pgtemp::TempPostgres::start().expect("throwaway PostgreSQL");
    let db = create_database_on(&pg.url(), "rawbuf").await;
    let mut publisher = Publisher::bind();
    let logger = Logger::start(
        &db,
        &[
            "--connect",
            &publisher.endpoint,
            "--raw-sample",
            "1",
            "--raw-buffer-rows",
            "100",
            "--flush-interval",
            "100ms",
        ],
    );
    publisher.wait_for_subscriptions(all_topics(16));
    // Let the first flush (migrations) happen, then take the database away.
    let now = now_ms();
    publisher.publish(&TestEvent::new("auction", "warm-up", now), P);
    logger.wait_metric("bid_logger_events_flushed_total", 1.0, Duration::from_secs(30));
    pg.stop().unwrap();
    let mut rng = SmallRng::seed_from_u64(4);
    let events: Vec<TestEvent> =
        (0..1000).map(|i| TestEvent::new("bid", format!("buf-{i}"), now - rng.gen_range(0..60_000))).collect();
    for e in &events {
        publisher.publish(e, P);
    }
    logger.wait_metric("bid_logger_events_accepted_total", 1001.0, Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dropped = logger.metric("bid_logger_raw_rows_dropped_total", "reason=\"buffer_full\"");
    assert!(dropped >= 700.0, "at most a few buffers of 100 raw rows are kept, {dropped} dropped");
    pg.restart().unwrap();
    logger.wait_metric("bid_logger_events_flushed_total", 1001.0, Duration::from_secs(60));
    let written = logger.metric("bid_logger_raw_rows_written_total", "");
    let dropped = logger.metric("bid_logger_raw_rows_dropped_total", "reason=\"buffer_full\"");
    assert_eq!(written + dropped, 1001.0, "every raw row is written or counted as dropped");
    logger.stop_ok();
    let client = connect(&db).await;
    let stored: i64 = client.query_one("SELECT count(*) FROM events_sample", &[]).await.unwrap().get(0);
    assert_eq!(stored as f64, written);
    let rollup: i64 = client.query_one("SELECT sum(events)::bigint FROM rollup_minute", &[]).await.unwrap().get(0);
    assert_eq!(rollup, 1001, "rollups stay exact");
}

/// `bid_logger_chain_timing`: every step of every transaction in the raw
/// sample, with its delay, against the truth worked out from the events
/// published (out of order, a click repeated, an install whose clock is
/// behind its click's, clicks without a campaign, steps that never came),
/// over ranges that cut a transaction's repeated clicks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_timing_gives_every_step_of_the_sampled_transactions_with_its_delay() {
    let db = fresh_database("chain_timing").await;
    let mut publisher = Publisher::bind();
    let logger = Logger::start(&db, &["--connect", &publisher.endpoint, "--raw-sample", "1/2"]);
    publisher.wait_for_subscriptions(all_topics(16));
    let now = now_ms();
    let mut rng = SmallRng::seed_from_u64(37);
    let mut events = Vec::new();
    for i in 0..800 {
        let txn = format!("timed-{i}");
        let exchange = ["x1", "x2", "x3"][rng.gen_range(0..3)];
        let campaign = rng.gen_range(1..40);
        let mut at = now - rng.gen_range(3_700_000..7_000_000);
        let mut push = |t: &'static str, ts: i64, with_exchange: bool, with_campaign: bool| {
            let mut e = TestEvent::new(t, txn.clone(), ts);
            e.exchange = with_exchange.then(|| exchange.to_string());
            if with_campaign {
                e.campaign = campaign;
                e.advertiser = campaign % 5 + 1;
            }
            events.push(e);
        };
        push("auction", at, true, false);
        at += rng.gen_range(1..50);
        push("bid", at, true, true);
        if rng.gen_bool(0.3) {
            push("loss", at + rng.gen_range(10..3000), rng.gen_bool(0.5), false);
            continue;
        }
        at += rng.gen_range(10..3000);
        push("win", at, rng.gen_bool(0.5), true);
        at += rng.gen_range(100..5000);
        push("impression", at, false, true);
        if rng.gen_bool(0.5) {
            continue;
        }
        at += rng.gen_range(1000..600_000);
        // some trackers send clicks without the campaign: the transaction's is taken
        let click_campaign = rng.gen_bool(0.7);
        push("click", at, false, click_campaign);
        if rng.gen_bool(0.2) {
            push("click", at + rng.gen_range(1..10_000), false, click_campaign);
        }
        // an install up to an hour later, or (a skewed clock) a little before its click
        let install = if rng.gen_bool(0.1) { at - rng.gen_range(1..2000) } else { at + rng.gen_range(1..3_600_000) };
        push("install", install.min(now), false, true);
    }
    events.shuffle(&mut rng);
    for e in &events {
        publisher.publish(e, P);
    }
    logger.wait_metric("bid_logger_events_flushed_total", events.len() as f64, Duration::from_secs(30));
    logger.stop_ok();

    // The truth: for each sampled transaction, the first event of each type,
    // and its exchange and campaign (every event that has one has the same).
    let sampler = bid_logger_core::sample::Sampler::new("1/2".parse().unwrap(), P);
    let sampled: Vec<&TestEvent> = events.iter().filter(|e| sampler.keep(e.txn.as_bytes())).collect();
    let mut firsts: BTreeMap<(&str, &str), &TestEvent> = BTreeMap::new();
    for &e in &sampled {
        let first = firsts.entry((e.txn.as_str(), e.event_type)).or_insert(e);
        if e.ts < first.ts {
            *first = e;
        }
    }
    let exchange_of: HashMap<&str, String> =
        sampled.iter().filter_map(|e| Some((e.txn.as_str(), e.exchange.clone()?))).collect();
    let campaign_of: HashMap<&str, (u32, u32)> =
        sampled.iter().filter(|e| e.campaign != 0).map(|e| (e.txn.as_str(), (e.campaign, e.advertiser))).collect();
    let steps = [
        ("bid", "win", "bid_to_win"),
        ("bid", "loss", "bid_to_loss"),
        ("win", "impression", "win_to_impression"),
        ("impression", "click", "impression_to_click"),
        ("click", "install", "click_to_install"),
    ];
    type Step = (String, String, i64, i64, String, i64, i64);
    let expected = |since: i64, until: i64| -> Vec<Step> {
        let mut out = Vec::new();
        for (&(txn, t), a) in &firsts {
            for (first, second, step) in steps {
                let Some(b) = firsts.get(&(txn, second)).filter(|_| t == first && a.ts >= since && a.ts < until) else {
                    continue;
                };
                let exchange = a.exchange.clone().unwrap_or_else(|| exchange_of[txn].clone());
                let (campaign, advertiser) =
                    if a.campaign != 0 { (a.campaign, a.advertiser) } else { campaign_of[txn] };
                let (campaign, advertiser) = (i64::from(campaign), i64::from(advertiser));
                out.push((step.to_string(), txn.to_string(), a.ts, b.ts - a.ts, exchange, campaign, advertiser));
            }
        }
        out.sort();
        out
    };
    let client = connect(&db).await;
    let actual = |since: i64, until: i64| {
        let client = &client;
        async move {
            let sql =
                "SELECT step, convert_from(txn, 'UTF8'), (extract(epoch FROM started_at) * 1000)::bigint, delay_ms,
                              exchange, campaign_id, advertiser_id
                       FROM bid_logger_chain_timing(to_timestamp($1::float8 / 1000), to_timestamp($2::float8 / 1000))";
            let mut rows: Vec<Step> = client
                .query(sql, &[&(since as f64), &(until as f64)])
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6)))
                .collect();
            rows.sort();
            rows
        }
    };
    let (day_ago, later) = (now - 86_400_000, now + 1);
    let all = expected(day_ago, later);
    assert!(all.iter().any(|s| s.0 == "click_to_install" && s.3 < 0), "a skewed install is in the test");
    assert!(all.iter().filter(|s| s.0 == "impression_to_click").count() > 50, "{} steps", all.len());
    assert_eq!(actual(day_ago, later).await, all);
    // only the steps whose first event is in the range
    let until = now - 5_000_000;
    let part = expected(day_ago, until);
    assert!(!part.is_empty() && part.len() < all.len());
    assert_eq!(actual(day_ago, until).await, part);
    // a range that starts between a transaction's two clicks: its click step
    // is the earlier range's, from the first click, never this one's
    let repeated = sampled
        .iter()
        .filter(|e| e.event_type == "click")
        .find(|e| firsts[&(e.txn.as_str(), "click")].ts < e.ts && firsts.contains_key(&(e.txn.as_str(), "install")))
        .expect("a sampled transaction with two clicks and an install");
    let since = firsts[&(repeated.txn.as_str(), "click")].ts + 1;
    let from_there = expected(since, later);
    assert!(!from_there.iter().any(|s| s.1 == repeated.txn && s.0 == "click_to_install"));
    assert_eq!(actual(since, later).await, from_there);
}
