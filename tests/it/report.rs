//! `bid-logger report` on a warehouse the logger filled with known events:
//! every figure per group equals what was published, from the minute tier
//! for a short range and the hour tier for a long one, in every format.

use crate::support::*;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn report(db: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_bid-logger"))
        .args(["report", "--database-url", db])
        .args(args)
        .env_remove("BID_LOGGER_DATABASE_URL")
        .output()
        .unwrap();
    assert!(out.status.success(), "report {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A JSON report's events per value of its `column`.
fn events_by(doc: &serde_json::Value, column: &str) -> BTreeMap<String, f64> {
    let rows = doc["rows"].as_array().unwrap_or_else(|| panic!("no rows: {doc}"));
    rows.iter().map(|r| (r[column].as_str().unwrap().to_string(), r["events"].as_f64().unwrap())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_gives_exact_figures_per_group_from_the_right_tier_in_every_format() {
    let db = fresh_database("report").await;
    let mut publisher = Publisher::bind();
    let logger = Logger::start(&db, &["--connect", &publisher.endpoint, "--raw-sample", "1"]);
    publisher.wait_for_subscriptions(all_topics(P));
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    // per country: bids, wins, impressions with prices, installs some attributed
    let mut events = Vec::new();
    let mut want: BTreeMap<&str, [f64; 7]> = BTreeMap::new(); // bids, wins, impressions, spend µ, installs, attributed, revenue µ
    for i in 0..3_000u32 {
        let country = ["US", "BR", "DE"][(i % 3) as usize];
        let kind = ["bid", "bid", "win", "impression", "install"][(i % 5) as usize];
        let mut e = TestEvent::new(kind, format!("r-{i}"), now - i64::from(i % 40) * 60_000);
        e.country = Some(country.into());
        e.exchange = Some(["unity", "applovin"][(i % 2) as usize].into());
        let w = want.entry(country).or_default();
        match kind {
            "bid" => w[0] += 1.0,
            "win" => w[1] += 1.0,
            "impression" => {
                e.price = Some(i64::from(i) * 10);
                w[2] += 1.0;
                w[3] += f64::from(i) * 10.0;
            }
            _ => {
                e.attributed = Some(i % 3 == 0);
                e.revenue = Some(i64::from(i) * 100);
                w[4] += 1.0;
                w[5] += f64::from(u8::from(i % 3 == 0));
                w[6] += f64::from(i) * 100.0;
            }
        }
        events.push(e);
    }
    for e in &events {
        publisher.publish(e, P);
    }
    logger.wait_metric("bid_logger_events_flushed_total", events.len() as f64, Duration::from_secs(60));
    logger.stop_ok();

    // 400 days is beyond the hour table's 90: the day table answers it.
    for (since, source) in [("2h", "rollup_minute_est"), ("2d", "rollup_hour_est"), ("400d", "rollup_day_est")] {
        let doc: serde_json::Value =
            serde_json::from_str(&report(&db, &["--since", since, "--by", "country", "--format", "json"])).unwrap();
        assert_eq!(doc["source"], source, "--since {since}");
        assert!(doc["newest_bucket"].as_str().is_some_and(|b| b.ends_with('Z')), "{doc}");
        let rows = doc["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 3, "{doc}");
        for row in rows {
            let w = want[row["country"].as_str().unwrap()];
            let f = |k: &str| row[k].as_f64().unwrap_or_else(|| panic!("{k} in {row}"));
            assert_eq!([f("bids"), f("wins"), f("impressions"), f("installs")], [w[0], w[1], w[2], w[4]], "{row}");
            assert_eq!(f("spend_usd"), (w[3] / 1e4).round() / 100.0, "{row}");
            assert_eq!(f("win_rate"), (w[1] / w[0] * 1e4).round() / 1e4, "{row}");
            assert_eq!(f("cpm_usd"), (w[3] / 1e3 / w[2] * 1e4).round() / 1e4, "{row}");
            assert_eq!([f("installs_attributed"), f("installs_organic")], [w[5], w[4] - w[5]], "{row}");
            assert_eq!(f("revenue_usd"), (w[6] / 1e4).round() / 100.0, "{row}");
            assert_eq!(f("roas"), (w[6] / w[3] * 1e4).round() / 1e4, "{row}");
            assert_eq!(f("events"), w[0] + w[1] + w[2] + w[4], "{row}");
        }
        let spends: Vec<f64> = rows.iter().map(|r| r["spend_usd"].as_f64().unwrap()).collect();
        assert!(spends.windows(2).all(|p| p[0] >= p[1]), "ordered by spend: {spends:?}");
    }

    let csv = report(&db, &["--by", "country", "--format", "csv", "--top", "2"]);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "header and the top 2:\n{csv}");
    assert!(lines[0].starts_with("country,events,auctions,bids,wins"), "{csv}");
    let table = report(&db, &["--by", "country"]);
    assert!(table.starts_with("last 1h by country, from rollup_minute_est (newest bucket 20"), "{table}");

    // the exchange rollups
    let doc: serde_json::Value = serde_json::from_str(&report(&db, &["--by", "exchange", "--format", "json"])).unwrap();
    assert_eq!(doc["source"], "rollup_exchange_minute_est");
    let per = events_by(&doc, "exchange");
    assert_eq!(per, BTreeMap::from([("applovin".into(), 1500.0), ("unity".into(), 1500.0)]));
    // a filter: Brazil alone, exact
    let doc: serde_json::Value =
        serde_json::from_str(&report(&db, &["--by", "exchange", "--where", "country=BR", "--format", "json"])).unwrap();
    let brazil: f64 = doc["rows"].as_array().unwrap().iter().map(|r| r["events"].as_f64().unwrap()).sum();
    let w = want["BR"];
    assert_eq!(brazil, w[0] + w[1] + w[2] + w[4], "{doc}");
    // a trend: ten-minute buckets over the 40 minutes the events span;
    // each country's buckets add up to its total
    let doc: serde_json::Value =
        serde_json::from_str(&report(&db, &["--since", "2h", "--every", "10m", "--by", "country", "--format", "json"]))
            .unwrap();
    let rows = doc["rows"].as_array().unwrap();
    let buckets: std::collections::BTreeSet<&str> = rows.iter().map(|r| r["bucket"].as_str().unwrap()).collect();
    assert!((4..=6).contains(&buckets.len()), "{buckets:?}");
    for (country, w) in &want {
        let sum: f64 = rows.iter().filter(|r| r["country"] == *country).map(|r| r["bids"].as_f64().unwrap()).sum();
        assert_eq!(sum, w[0], "{country}: bids over the buckets");
    }
    let table = report(&db, &["--since", "2h", "--every", "10m", "--where", "country=DE"]);
    assert!(table.starts_with("last 2h every 10m, where country = DE by country"), "{table}");
    assert!(table.lines().nth(1).unwrap().trim_start().starts_with("bucket"), "{table}");

    // two dimensions at once: country × exchange, from the exchange table
    let doc: serde_json::Value =
        serde_json::from_str(&report(&db, &["--by", "country,exchange", "--format", "json"])).unwrap();
    assert_eq!(
        (doc["source"].as_str(), doc["by"].as_str()),
        (Some("rollup_exchange_minute_est"), Some("country,exchange"))
    );
    let per: BTreeMap<(String, String), f64> = doc["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let key = (r["country"].as_str().unwrap().to_string(), r["exchange"].as_str().unwrap().to_string());
            (key, r["events"].as_f64().unwrap())
        })
        .collect();
    assert_eq!(per.len(), 6, "{doc}");
    assert!(per.values().all(|&n| n == 500.0), "3 000 events over 3 countries × 2 exchanges: {per:?}");
    let csv = report(&db, &["--by", "os,country", "--format", "csv"]);
    assert!(csv.starts_with("os,country,events,"), "{csv}");

    // an absolute range: ten whole minutes, every bucket starting inside it
    let from = now / 60_000 * 60 - 20 * 60;
    let iso = |secs: i64| {
        let out = Command::new("date").args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%SZ"]).output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let (from_text, to_text) = (iso(from), iso(from + 600));
    let doc: serde_json::Value = serde_json::from_str(&report(
        &db,
        &["--from", &from_text, "--to", &to_text, "--by", "country", "--format", "json"],
    ))
    .unwrap();
    assert_eq!((doc["from"].as_str(), doc["to"].as_str()), (Some(from_text.as_str()), Some(to_text.as_str())), "{doc}");
    assert_eq!(doc["source"], "rollup_minute_est");
    let mut inside: BTreeMap<String, f64> = BTreeMap::new();
    for e in &events {
        let minute = e.ts.div_euclid(60_000) * 60;
        if (from..from + 600).contains(&minute) {
            *inside.entry(e.country.clone().unwrap()).or_default() += 1.0;
        }
    }
    let got = events_by(&doc, "country");
    assert_eq!(got, inside, "the events of {from_text} to {to_text}");
    assert!(inside.values().sum::<f64>() > 0.0 && inside.values().sum::<f64>() < 3000.0, "{inside:?}");
    let table = report(&db, &["--from", &from_text, "--to", &to_text]);
    assert!(table.starts_with(&format!("{from_text} to {to_text} by country, from rollup_minute_est")), "{table}");

    // beyond the exchange minute table's 30 days, the exchange hour table
    let doc: serde_json::Value =
        serde_json::from_str(&report(&db, &["--since", "400d", "--by", "exchange", "--format", "json"])).unwrap();
    assert_eq!(doc["source"], "rollup_exchange_hour_est");
    let events: f64 = doc["rows"].as_array().unwrap().iter().map(|r| r["events"].as_f64().unwrap()).sum();
    assert_eq!(events, 3000.0);

    // Rows of one key sampled at two rates: each corrected for its own
    // (3 events at 1/8 and 2 at 1/2 are 28), as the `_est` view corrects
    // them, though the report groups the rows itself.
    let client = connect(&db).await;
    client
        .batch_execute(
            "INSERT INTO rollup_minute_merged (bucket, event_type, country, os, campaign_id, advertiser_id, sample_ppm,
                 events, attributed_events, price_micros, revenue_micros)
             SELECT date_trunc('minute', now()) - interval '30 minutes', 'impression', 'ZZ', 'ios', 1, 1, ppm, n, 0, 1000 * n, 0
             FROM (VALUES (125000, 3), (500000, 2)) r(ppm, n)",
        )
        .await
        .unwrap();
    let est: f64 =
        client.query_one("SELECT sum(events) FROM rollup_minute_est WHERE country = 'ZZ'", &[]).await.unwrap().get(0);
    let doc: serde_json::Value = serde_json::from_str(&report(
        &db,
        &["--since", "2h", "--by", "country", "--where", "country=ZZ", "--format", "json"],
    ))
    .unwrap();
    let row = &doc["rows"][0];
    assert_eq!([est, row["events"].as_f64().unwrap(), row["impressions"].as_f64().unwrap()], [28.0; 3], "{doc}");
    assert_eq!(row["spend_usd"].as_f64(), Some(0.03), "28 000 micros: {doc}");
    assert_eq!(row["cpm_usd"].as_f64(), Some(1.0), "{doc}");
}
