//! Price distributions: rollup tables with the `price` dimension, and the
//! quantiles read from them.

use crate::support::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::time::Duration;

const P: u32 = 16;
const EXCHANGES: [&str; 3] = ["ex_a", "ex_b", "ex_c"];

/// `n` transactions spread over the last three hours (late and out of
/// order): an auction, a bid with a log-uniform price (each exchange on its
/// own scale), and for one in three a win and an impression at a clearing
/// price below the bid, or else a loss; some bids carry a price of 0.
fn transactions(rng: &mut SmallRng, n: usize, tag: &str, now: i64) -> Vec<TestEvent> {
    let mut events = Vec::new();
    for i in 0..n {
        let ts = now - rng.gen_range(0..3 * 3_600_000);
        let x = i % EXCHANGES.len();
        let event = |event_type: &'static str, ts: i64, price: Option<i64>| {
            let mut e = TestEvent::new(event_type, format!("{tag}-{i}"), ts);
            e.exchange = Some(EXCHANGES[x].into());
            e.country = Some(["US", "BR", "DE"][i % 3].into());
            e.os = Some(["ios", "android"][i % 2].into());
            e.campaign = (i % 4) as u32 + 1;
            e.advertiser = 7;
            e.price = price;
            e
        };
        let scale = [1.0, 4.0, 0.5][x];
        let bid = (scale * (rng.gen_range(10_000f64.ln()..20_000_000f64.ln())).exp()) as i64;
        events.push(event("auction", ts, None));
        events.push(event("bid", ts + 5, Some(if i % 50 == 0 { 0 } else { bid })));
        if rng.gen_bool(1.0 / 3.0) {
            let clearing = (bid as f64 * rng.gen_range(0.3..1.0)) as i64;
            events.push(event("win", ts + 90, Some(clearing)));
            events.push(event("impression", ts + 400, Some(clearing)));
        } else {
            events.push(event("loss", ts + 90, None));
        }
    }
    events
}

/// The price tables exact per bucket through a PostgreSQL down for a while
/// and restarted mid-run and a graceful stop with coarse rows pending; the
/// rollups unchanged by them; and every quantile read with
/// `bid_logger_quantile` within 1 % of the exact one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn price_distributions_count_every_priced_event_once_and_give_quantiles_within_one_percent() {
    // Needs a server this test may restart: a private cluster.
    let pg = bid_logger_tools::pgtemp::TempPostgres::start().expect("throwaway PostgreSQL for the restart");
    let db = create_database_on(&pg.url(), "prices").await;
    let config = rollup_config(
        "prices",
        "[rollup.price_hour]\ngrain = \"hour\"\ndimensions = [\"exchange\", \"country\", \"os\", \"price\"]\n\n\
         [rollup.price_campaign_day]\ngrain = \"day\"\ndimensions = [\"exchange\", \"campaign\", \"price\"]\n",
    );
    let mut publisher = Publisher::bind();
    let logger = Logger::start(&db, &["--connect", &publisher.endpoint, "--config", &config]);
    publisher.wait_for_subscriptions(all_topics(P));
    let mut rng = SmallRng::seed_from_u64(32);
    let now = now_ms();
    let first = transactions(&mut rng, 3000, "first", now);
    for e in &first {
        publisher.publish(e, P);
    }
    logger.wait_metric("bid_logger_events_flushed_total", first.len() as f64, Duration::from_secs(30));
    let second = transactions(&mut rng, 3000, "second", now);
    pg.stop().expect("stopping PostgreSQL");
    for e in &second {
        publisher.publish(e, P); // (counted while the database is down)
    }
    let all: Vec<TestEvent> = first.into_iter().chain(second).collect();
    logger.wait_metric("bid_logger_events_accepted_total", all.len() as f64, Duration::from_secs(30));
    logger.wait_metric("bid_logger_flush_failures_total", 1.0, Duration::from_secs(30));
    pg.restart().expect("starting PostgreSQL again");
    logger.wait_metric("bid_logger_events_flushed_total", all.len() as f64, Duration::from_secs(60));
    logger.stop_ok();
    let client = connect(&db).await;

    for (table, bucket_s, dims) in [
        ("price_hour", 3600, &["exchange", "country", "os", "price_bucket"][..]),
        ("price_campaign_day", 86_400, &["exchange", "campaign_id", "price_bucket"][..]),
    ] {
        let expected = expected_table_rows(&all, bucket_s, dims, 1_000_000);
        assert!(expected.len() > 1000, "{table}: a distribution of many buckets ({})", expected.len());
        assert_table_eq(&table_rows(&client, table, dims).await, &expected, table);
    }
    assert_warehouse_matches(&client, &all, 1_000_000).await;

    let mut prices: BTreeMap<(&str, &str), Vec<i64>> = BTreeMap::new();
    for e in all.iter().filter(|e| e.price.is_some_and(|p| p > 0)) {
        prices.entry((e.exchange.as_deref().unwrap(), e.event_type)).or_default().push(e.price.unwrap());
    }
    assert_eq!(prices.len(), 9, "three exchanges by bid, win and impression");
    let quantile = "SELECT bid_logger_quantile($1, price_bucket, events) FROM price_hour
                    WHERE exchange = $2 AND event_type = $3";
    let estimated = "SELECT bid_logger_quantile($1, price_bucket, events) FROM price_campaign_day_est
                     WHERE exchange = $2 AND event_type = $3";
    for ((exchange, event_type), mut p) in prices {
        p.sort_unstable();
        for q in [0.0, 0.01, 0.25, 0.5, 0.9, 0.99, 1.0] {
            let exact = p[(q * (p.len() - 1) as f64).floor() as usize] as f64;
            let got: f64 = client.query_one(quantile, &[&q, &exchange, &event_type]).await.unwrap().get(0);
            let error = (got - exact).abs() / exact;
            assert!(error <= 0.01 + 1e-9, "{exchange} {event_type} q{q}: {got} for {exact} ({} prices)", p.len());
            let est: f64 = client.query_one(estimated, &[&q, &exchange, &event_type]).await.unwrap().get(0);
            assert!((est - exact).abs() / exact <= 0.01 + 1e-9, "the _est view, another table: {est} for {exact}");
        }
    }
    let none: Option<f64> = client.query_one(quantile, &[&0.5, &"no such exchange", &"win"]).await.unwrap().get(0);
    assert_eq!(none, None, "no rows, no quantile");
    let percent = client.query_one(quantile, &[&50.0, &"ex_a", &"win"]).await.unwrap_err();
    assert!(format!("{percent:?}").contains("q must be between 0 and 1"), "{percent:?}");
    let null: Option<f64> = client
        .query_one("SELECT bid_logger_quantile(NULL, price_bucket, events) FROM price_hour", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(null, None, "no q, no quantile");
}

/// Counts `e` in an hourly table by exchange and bucket (a landscape's
/// bid price bucket or a timing table's delay bucket), unsampled.
fn count_hourly(expected: &mut AnyRows, e: &TestEvent, exchange: &str, bucket: u16) {
    let key = (
        e.ts.div_euclid(3_600_000) * 3600,
        e.event_type.to_string(),
        vec![exchange.to_string(), bucket.to_string()],
        1_000_000,
    );
    let v = expected.entry(key).or_default();
    v.0 += 1;
    v.2 += e.price.unwrap_or(0);
}

/// A bid landscape: every bid under its own price's bucket, every win or
/// loss under its bid's (in either order, a win without an exchange taking
/// its bid's), within `landscape-window`; what finds no other half in time
/// is counted by reason and is in no landscape row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bid_landscape_pairs_each_outcome_with_its_bid_in_either_order_within_the_window() {
    let db = fresh_database("landscape").await;
    let config = rollup_config(
        "landscape",
        "[rollup.landscape_hour]\ngrain = \"hour\"\ndimensions = [\"exchange\", \"bid_price\"]\nflush-interval = \"1s\"\n",
    );
    let mut publisher = Publisher::bind();
    let args = ["--connect", &publisher.endpoint, "--config", &config, "--landscape-window", "2s"];
    let logger = Logger::start(&db, &args);
    publisher.wait_for_subscriptions(all_topics(P));
    let mut rng = SmallRng::seed_from_u64(7);
    let now = now_ms();
    let event = |event_type: &'static str, txn: String, exchange: Option<&str>, price: i64| {
        let mut e = TestEvent::new(event_type, txn, now);
        e.exchange = exchange.map(Into::into);
        e.price = Some(price);
        e
    };
    let mut expected = AnyRows::new();
    let mut add = |e: &TestEvent, exchange: &str, bid_price: i64| {
        let bucket = bid_logger_core::aggregate::price::price_bucket(bid_price).unwrap();
        count_hourly(&mut expected, e, exchange, bucket);
    };
    let mut first = Vec::new();
    let mut late_wins = Vec::new();
    let (mut paired, mut no_outcome, mut no_bid) = (0, 0, 0);
    for i in 0..400 {
        let bid_price = rng.gen_range(1_000..5_000_000);
        let clearing = bid_price * rng.gen_range(30..100) / 100;
        let txn = format!("t{i}");
        let bid = event("bid", txn.clone(), Some(["ex_a", "ex_b"][i % 2]), bid_price);
        match i % 5 {
            0 => {
                // bid, then its win
                let win = event("win", txn, Some(["ex_a", "ex_b"][i % 2]), clearing);
                add(&bid, ["ex_a", "ex_b"][i % 2], bid_price);
                add(&win, ["ex_a", "ex_b"][i % 2], bid_price);
                first.extend([bid, win]);
                paired += 1;
            }
            1 => {
                // the loss first, without an exchange: it takes the bid's
                let loss = event("loss", txn, None, 0);
                add(&bid, ["ex_a", "ex_b"][i % 2], bid_price);
                let mut l = loss.clone();
                l.price = Some(0);
                add(&l, ["ex_a", "ex_b"][i % 2], bid_price);
                first.extend([loss, bid]);
                paired += 1;
            }
            2 => {
                // a bid whose outcome never comes
                add(&bid, ["ex_a", "ex_b"][i % 2], bid_price);
                first.push(bid);
                no_outcome += 1;
            }
            3 => {
                // a win whose bid never comes
                first.push(event("win", txn, Some("ex_a"), clearing));
                no_bid += 1;
            }
            _ => {
                // a win after the window: both halves leave unpaired
                add(&bid, ["ex_a", "ex_b"][i % 2], bid_price);
                first.push(bid);
                late_wins.push(event("win", txn, Some("ex_a"), clearing));
                no_outcome += 1;
                no_bid += 1;
            }
        }
    }
    for e in &first {
        publisher.publish(e, P);
    }
    logger.wait_metric("bid_logger_events_flushed_total", first.len() as f64, Duration::from_secs(30));
    // past the window, and a flush after it, then the late wins
    tokio::time::sleep(Duration::from_secs(4)).await;
    for e in &late_wins {
        publisher.publish(e, P);
    }
    let all = first.len() + late_wins.len();
    logger.wait_metric("bid_logger_events_flushed_total", all as f64, Duration::from_secs(30));
    let unpaired = |reason: &str| logger.metric("bid_logger_landscape_unpaired_total", &format!("reason=\"{reason}\""));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while unpaired("no_bid") < no_bid as f64 {
        assert!(std::time::Instant::now() < deadline, "{}", logger.metrics_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(logger.metric("bid_logger_landscape_paired_total", ""), paired as f64);
    assert_eq!(unpaired("no_outcome"), no_outcome as f64);
    assert_eq!(unpaired("no_bid"), no_bid as f64);
    assert_eq!(unpaired("full"), 0.0);
    logger.stop_ok();
    let client = connect(&db).await;
    let rows = table_rows(&client, "landscape_hour", &["exchange", "bid_price_bucket"]).await;
    let rows: AnyRows = rows.into_iter().map(|(k, v)| (k, (v.0, 0, v.2, 0))).collect();
    assert_table_eq(&rows, &expected, "landscape_hour");
    // the win rate by bid bucket reads from it
    let rate: f64 = client
        .query_one(
            "SELECT (sum(events) FILTER (WHERE event_type = 'win'))::float8
                  / sum(events) FILTER (WHERE event_type IN ('win', 'loss')) FROM landscape_hour",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!((rate - 0.5).abs() < 1e-9, "as many wins as losses paired: {rate}");
}

/// `report --prices` and `report --landscape`: per exchange, the bids' and
/// the wins' CPM quantiles within 1 % of the exact ones, and per band of
/// bid CPM the bids, wins and losses exactly, with the win rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_gives_each_exchanges_cpm_quantiles_and_its_landscape() {
    let db = fresh_database("price_report").await;
    let config = rollup_config(
        "price_report",
        "[rollup.price_hour]\ngrain = \"hour\"\ndimensions = [\"exchange\", \"country\", \"os\", \"price\"]\n\n\
         [rollup.landscape_hour]\ngrain = \"hour\"\ndimensions = [\"exchange\", \"bid_price\"]\n",
    );
    let mut publisher = Publisher::bind();
    let logger = Logger::start(&db, &["--connect", &publisher.endpoint, "--config", &config]);
    publisher.wait_for_subscriptions(all_topics(P));
    let mut rng = SmallRng::seed_from_u64(41);
    let now = now_ms();
    let events = transactions(&mut rng, 4000, "report", now);
    for e in &events {
        publisher.publish(e, P);
    }
    logger.wait_metric("bid_logger_events_flushed_total", events.len() as f64, Duration::from_secs(30));
    logger.stop_ok();
    let report = |extra: &[&str]| -> serde_json::Value {
        let args =
            [&["report", "--database-url", &db, "--config", &config, "--since", "4h", "--format", "json"], extra];
        let out = bid_logger(&args.concat());
        assert!(out.status.success(), "{extra:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };

    // --prices: the exact quantiles of each exchange's bid and clearing prices
    let prices = report(&["--prices", "--by", "exchange"]);
    assert_eq!(prices["source"], "price_hour_est");
    let rows = prices["rows"].as_array().unwrap();
    assert_eq!(rows.len(), EXCHANGES.len(), "{prices}");
    let quantile = |list: &[i64], q: f64| list[(q * (list.len() - 1) as f64).floor() as usize] as f64 / 1e3;
    for row in rows {
        let exchange = row["exchange"].as_str().unwrap();
        let priced = |t: &str| -> Vec<i64> {
            let of = |e: &&TestEvent| e.event_type == t && e.exchange.as_deref() == Some(exchange);
            events.iter().filter(of).filter_map(|e| e.price).filter(|&p| p > 0).collect()
        };
        let (mut bids, mut wins) = (priced("bid"), priced("win"));
        bids.sort_unstable();
        wins.sort_unstable();
        assert_eq!((row["bids"].as_f64(), row["wins"].as_f64()), (Some(bids.len() as f64), Some(wins.len() as f64)));
        for (column, list, q) in [
            ("bid_cpm_p50", &bids, 0.5),
            ("bid_cpm_p90", &bids, 0.9),
            ("clearing_cpm_p50", &wins, 0.5),
            ("clearing_cpm_p90", &wins, 0.9),
            ("clearing_cpm_p99", &wins, 0.99),
        ] {
            let (got, exact) = (row[column].as_f64().unwrap(), quantile(list, q));
            assert!((got - exact).abs() / exact <= 0.01 + 1e-4, "{exchange} {column}: {got} for {exact}");
        }
    }

    // --landscape: each band's bids, and the outcomes of its bids
    let landscape = report(&["--landscape", "--by", "exchange", "--where", "exchange=ex_b", "--top", "5"]);
    assert_eq!(landscape["source"], "landscape_hour_est");
    let band_of = |price: i64| (bid_logger_core::aggregate::price::price_bucket(price).unwrap() - 1) / 5;
    let mut expected: BTreeMap<u16, [f64; 3]> = BTreeMap::new();
    let mut prices_in: BTreeMap<u16, Vec<i64>> = BTreeMap::new();
    let bids: BTreeMap<&str, i64> = events
        .iter()
        .filter(|e| e.event_type == "bid" && e.exchange.as_deref() == Some("ex_b") && e.price.unwrap() > 0)
        .map(|e| (e.txn.as_str(), e.price.unwrap()))
        .collect();
    for e in &events {
        let Some(&bid) = bids.get(e.txn.as_str()) else { continue };
        let column = ["bid", "win", "loss"].iter().position(|t| *t == e.event_type);
        if let Some(c) = column {
            expected.entry(band_of(bid)).or_default()[c] += 1.0;
        }
        if e.event_type == "bid" {
            prices_in.entry(band_of(bid)).or_default().push(bid);
        }
    }
    let rows = landscape["rows"].as_array().unwrap();
    assert_eq!(rows.len(), expected.len(), "one row per band with bids: {landscape}");
    let gamma = bid_logger_core::aggregate::price::GAMMA;
    for (row, (band, [bids, wins, losses])) in rows.iter().zip(&expected) {
        let (from, to) = (gamma.powi(i32::from(*band) * 5 - 1) / 1e3, gamma.powi(i32::from(*band) * 5 + 4) / 1e3);
        assert!((row["bid_cpm_from"].as_f64().unwrap() - from).abs() < 1e-4, "{row} band {band}");
        assert!((row["bid_cpm_to"].as_f64().unwrap() - to).abs() < 1e-4, "{row} band {band}");
        // every bid of the band is within its bounds as printed (CPM = micro-USD / 1000)
        let (lo, hi) = (row["bid_cpm_from"].as_f64().unwrap() * 1e3, row["bid_cpm_to"].as_f64().unwrap() * 1e3);
        for &p in &prices_in[band] {
            assert!(lo - 0.1 < p as f64 && p as f64 <= hi + 0.1, "a bid of {p} micro-USD in ({lo}, {hi}]");
        }
        let counts = [&row["bids"], &row["wins"], &row["losses"]].map(|v| v.as_f64().unwrap());
        assert_eq!(counts, [*bids, *wins, *losses], "band {band}: {row}");
        if wins + losses > 0.0 {
            let rate = (wins / (wins + losses) * 1e4).round() / 1e4;
            assert_eq!(row["win_rate"].as_f64(), Some(rate), "band {band}");
        }
    }
    assert!(expected.values().map(|v| v[1]).sum::<f64>() > 100.0, "wins in the landscape");

    // sums never read a distribution, and a question none answers is refused
    let out = bid_logger(&["report", "--database-url", &db, "--config", &config, "--prices", "--by", "campaign"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no price distribution (a table with the `price` dimension) has the dimensions campaign"),
        "{stderr}"
    );
}

/// A timing table: every win or loss under its delay after its bid, every
/// click under its delay after its impression (each click of a transaction
/// clicked twice), in either order, from two publishers (the bidder's bids,
/// the tracker's outcomes and clicks), through a PostgreSQL restart with
/// halves waiting and a graceful stop; what finds no other half within the
/// window is counted by reason; every quantile of the delays within 1 %.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timing_table_gives_each_delay_after_the_bid_and_the_impression_within_one_percent() {
    // Needs a server this test may restart: a private cluster.
    let pg = bid_logger_tools::pgtemp::TempPostgres::start().expect("throwaway PostgreSQL for the restart");
    let db = create_database_on(&pg.url(), "timing").await;
    let config =
        rollup_config("timing", "[rollup.timing_hour]\ngrain = \"hour\"\ndimensions = [\"exchange\", \"delay\"]\n");
    let (mut bidder, mut tracker) = (Publisher::bind(), Publisher::bind());
    let endpoints = format!("{},{}", bidder.endpoint, tracker.endpoint);
    let args = ["--connect", &endpoints, "--config", &config, "--landscape-window", "3s"];
    let logger = Logger::start(&db, &args);
    bidder.wait_for_subscriptions(all_topics(P));
    tracker.wait_for_subscriptions(all_topics(P));
    let mut rng = SmallRng::seed_from_u64(11);
    let now = now_ms();
    let log_uniform = |rng: &mut SmallRng, lo: f64, hi: f64| rng.gen_range(lo.ln()..hi.ln()).exp() as i64;
    // (event, on the bidder's socket), in publishing order; late clicks after the window
    let (mut first, mut late) = (Vec::new(), Vec::new());
    let mut expected = AnyRows::new();
    let mut delays: BTreeMap<(String, &str), Vec<i64>> = BTreeMap::new();
    let (mut outcomes_paired, mut no_outcome, mut clicks_paired, mut no_impression) = (0, 0, 0, 0);
    for i in 0..600 {
        let exchange = ["ex_a", "ex_b"][(i / 6) % 2]; // (every case from both)
        let txn = format!("t{i}");
        let bid_ts = now - 15 * 60_000 - rng.gen_range(0..3 * 3_600_000); // (a click up to 11 min later)
        let outcome_ts = bid_ts + log_uniform(&mut rng, 5.0, 5_000.0) * [1, 3][i % 2];
        let impression_ts = outcome_ts + 300;
        let click_ts = impression_ts + log_uniform(&mut rng, 100.0, 600_000.0);
        let event = |event_type: &'static str, ts: i64, exchange: Option<&str>, price: Option<i64>| {
            let mut e = TestEvent::new(event_type, txn.clone(), ts);
            e.exchange = exchange.map(Into::into);
            e.price = price;
            e
        };
        let bid = event("bid", bid_ts, Some(exchange), Some(rng.gen_range(1_000..5_000_000)));
        let win = event("win", outcome_ts, Some(exchange), Some(rng.gen_range(500..1_000)));
        let impression = event("impression", impression_ts, Some(exchange), None);
        let click = event("click", click_ts, Some(exchange), None);
        let mut paired = |e: &TestEvent, after: i64| {
            let delay = e.ts - after;
            count_hourly(&mut expected, e, exchange, bid_logger_core::aggregate::price::delay_bucket(delay));
            delays.entry((exchange.to_string(), e.event_type)).or_default().push(delay.max(1));
        };
        first.push((bid.clone(), true));
        match i % 6 {
            0 => {
                // in order; the win and the click without an exchange take their first half's
                let (win, click) = (TestEvent { exchange: None, ..win }, TestEvent { exchange: None, ..click });
                paired(&win, bid_ts);
                paired(&click, impression_ts);
                first.extend([(win, false), (impression, false), (click, false)]);
                (outcomes_paired, clicks_paired) = (outcomes_paired + 1, clicks_paired + 1);
            }
            1 => {
                // the loss before its bid
                let loss = event("loss", outcome_ts, Some(exchange), None);
                paired(&loss, bid_ts);
                first.insert(first.len() - 1, (loss, false));
                outcomes_paired += 1;
            }
            2 => {
                // clicked twice
                let again = event("click", click_ts + log_uniform(&mut rng, 10.0, 60_000.0), Some(exchange), None);
                paired(&win, bid_ts);
                paired(&click, impression_ts);
                paired(&again, impression_ts);
                first.extend([(win, false), (impression, false), (click, false), (again, false)]);
                (outcomes_paired, clicks_paired) = (outcomes_paired + 1, clicks_paired + 2);
            }
            3 => {
                // the click before its impression, and stamped 10 ms before it (clocks differ)
                let click = event("click", impression_ts - 10, Some(exchange), None);
                paired(&win, bid_ts);
                paired(&click, impression_ts);
                first.extend([(win, false), (click, false), (impression, false)]);
                (outcomes_paired, clicks_paired) = (outcomes_paired + 1, clicks_paired + 1);
            }
            4 => {
                // no outcome; a click whose impression never comes
                first.push((click, false));
                (no_outcome, no_impression) = (no_outcome + 1, no_impression + 1);
            }
            _ => {
                // the click after the window: impression and click leave unpaired
                paired(&win, bid_ts);
                first.extend([(win, false), (impression, false)]);
                late.push((click, false));
                (outcomes_paired, no_impression) = (outcomes_paired + 1, no_impression + 1);
            }
        }
    }
    let (half, rest) = first.split_at(first.len() / 2);
    let publish = |events: &[(TestEvent, bool)], bidder: &mut Publisher, tracker: &mut Publisher| {
        for (e, on_bidder) in events {
            if *on_bidder {
                bidder.publish(e, P)
            } else {
                tracker.publish(e, P)
            }
        }
    };
    publish(half, &mut bidder, &mut tracker);
    logger.wait_metric("bid_logger_events_flushed_total", half.len() as f64, Duration::from_secs(30));
    // PostgreSQL restarted while halves wait in memory
    pg.restart().expect("restarting PostgreSQL");
    publish(rest, &mut bidder, &mut tracker);
    logger.wait_metric("bid_logger_events_flushed_total", first.len() as f64, Duration::from_secs(60));
    tokio::time::sleep(Duration::from_secs(5)).await; // past the window
    publish(&late, &mut bidder, &mut tracker);
    let clicks_unpaired =
        |reason: &str| logger.metric("bid_logger_clicks_unpaired_total", &format!("reason=\"{reason}\""));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while clicks_unpaired("no_impression") < no_impression as f64 {
        assert!(std::time::Instant::now() < deadline, "{}", logger.metrics_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(logger.metric("bid_logger_landscape_paired_total", ""), outcomes_paired as f64);
    assert_eq!(logger.metric("bid_logger_landscape_unpaired_total", "reason=\"no_outcome\""), no_outcome as f64);
    assert_eq!(logger.metric("bid_logger_clicks_paired_total", ""), clicks_paired as f64);
    assert_eq!(clicks_unpaired("no_impression"), no_impression as f64);
    assert_eq!(clicks_unpaired("full"), 0.0);
    logger.stop_ok();
    let client = connect(&db).await;
    let all: Vec<TestEvent> = first.iter().chain(&late).map(|(e, _)| e.clone()).collect();
    assert_warehouse_matches(&client, &all, 1_000_000).await;
    let rows = table_rows(&client, "timing_hour", &["exchange", "delay_bucket"]).await;
    let rows: AnyRows = rows.into_iter().map(|(k, v)| (k, (v.0, 0, v.2, 0))).collect();
    assert_table_eq(&rows, &expected, "timing_hour");
    assert_eq!(delays.len(), 6, "two exchanges by win, loss and click");
    let quantile = "SELECT bid_logger_quantile($1, delay_bucket, events) FROM timing_hour_est
                    WHERE exchange = $2 AND event_type = $3";
    for ((exchange, event_type), mut d) in delays {
        d.sort_unstable();
        for q in [0.0, 0.1, 0.5, 0.9, 0.99, 1.0] {
            let exact = d[(q * (d.len() - 1) as f64).floor() as usize] as f64;
            let got: f64 = client.query_one(quantile, &[&q, &exchange, &event_type]).await.unwrap().get(0);
            assert!((got - exact).abs() / exact <= 0.01 + 1e-9, "{exchange} {event_type} q{q}: {got} ms for {exact}");
        }
    }
}
