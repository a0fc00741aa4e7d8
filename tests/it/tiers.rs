//! Rollup tiers: declared tables, retention by time range, the upgrade of
//! a warehouse written before partitioning.

use crate::support::*;
use std::time::Duration;

async fn sum_events(client: &tokio_postgres::Client, table: &str) -> i64 {
    client.query_one(&format!("SELECT coalesce(sum(events), 0)::bigint FROM {table}"), &[]).await.unwrap().get(0)
}

/// (sample_ppm, events, price) of `table`, per sample rate.
async fn by_rate(client: &tokio_postgres::Client, table: &str) -> Vec<(i32, i64, i64)> {
    let sql =
        format!("SELECT sample_ppm, sum(events)::bigint, sum(price_micros)::bigint FROM {table} GROUP BY 1 ORDER BY 1");
    client.query(&sql, &[]).await.unwrap().iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect()
}

/// The range partitions of `table`, by name.
async fn ranges_of(client: &tokio_postgres::Client, table: &str) -> Vec<String> {
    texts(
        client,
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = to_regclass($1) ORDER BY c.relname::text COLLATE \"C\"",
        table,
    )
    .await
}

/// The text in the first column of each row of `sql`, whose one parameter
/// is `arg`.
async fn texts(client: &tokio_postgres::Client, sql: &str, arg: &str) -> Vec<String> {
    client.query(sql, &[&arg]).await.unwrap().iter().map(|r| r.get(0)).collect()
}

/// `n` events at `ts`, each its own transaction, with an exchange.
fn at(ts: i64, n: usize, tag: &str) -> Vec<TestEvent> {
    (0..n)
        .map(|i| {
            let mut e = TestEvent::new(["bid", "win", "impression"][i % 3], format!("{tag}-{i}"), ts);
            e.country = Some(["US", "br"][i % 2].into());
            e.os = Some("Android".into());
            e.exchange = Some(["Unity", "applovin", ""][i % 3].into());
            e.campaign = (i % 5) as u32 + 1;
            e.advertiser = 9;
            e.price = Some(i as i64 * 1000);
            e
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_table_is_created_and_filled_exactly() {
    let db = fresh_database("custom").await;
    let config = rollup_config(
        "custom",
        "[rollup.rollup_exchange_day]\ngrain = \"day\"\ndimensions = [\"exchange\", \"country\"]\nflush-interval = \"1s\"\n",
    );
    let mut publisher = Publisher::bind();
    let logger = Logger::start(&db, &["--connect", &publisher.endpoint, "--config", &config]);
    publisher.wait_for_subscriptions(all_topics(P));
    let now = now_ms();
    let events: Vec<TestEvent> = [at(now, 300, "today"), at(now - 30 * 3_600_000, 200, "yesterday")].concat();
    for e in &events {
        publisher.publish(e, P);
    }
    logger.wait_metric("bid_logger_events_flushed_total", events.len() as f64, Duration::from_secs(30));
    // a coarse table: its log is consumed at its own interval, while running
    logger.wait_metric("bid_logger_log_events_consumed_total", events.len() as f64, Duration::from_secs(30));
    logger.stop_ok();
    let client = connect(&db).await;
    let dims = ["exchange", "country"];
    assert_table_eq(
        &table_rows(&client, "rollup_exchange_day", &dims).await,
        &expected_table_rows(&events, 86_400, &dims, 1_000_000),
        "rollup_exchange_day",
    );
    assert_warehouse_matches(&client, &events, 1_000_000).await;
    let est: f64 = client.query_one("SELECT sum(events) FROM rollup_exchange_day_est", &[]).await.unwrap().get(0);
    assert_eq!(est as usize, events.len(), "its _est view exists");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shorter_retention_drops_old_minute_ranges_while_hour_and_day_keep_every_event() {
    let db = fresh_database("retention").await;
    let mut publisher = Publisher::bind();
    let endpoint = publisher.endpoint.clone();
    let now = now_ms();
    let old = at(now - 4 * 86_400_000, 100, "old");
    let recent = at(now, 100, "recent");

    // Under a long retention events 4 days old land everywhere.
    let long = rollup_config("retention-long", "[rollup.rollup_minute]\nretention = \"7d\"\n");
    let logger = Logger::start(&db, &["--connect", &endpoint, "--config", &long]);
    publisher.wait_for_subscriptions(all_topics(P));
    for e in old.iter().chain(&recent) {
        publisher.publish(e, P);
    }
    logger.wait_metric("bid_logger_events_flushed_total", 200.0, Duration::from_secs(30));
    assert_eq!(logger.stop().0, 0);
    let client = connect(&db).await;
    let all: Vec<TestEvent> = old.iter().chain(&recent).cloned().collect();
    assert_warehouse_matches(&client, &all, 1_000_000).await;
    let hour = bid_logger::db::ranges::Span::Hour;
    let old_range = hour.name("rollup_minute_merged", hour.start((now - 4 * 86_400_000) / 1000));
    assert!(ranges_of(&client, "rollup_minute_merged").await.contains(&old_range));

    // Restarted with a 2-day retention for rollup_minute: its old ranges go
    // at the first flush, and another event 4 days old skips it (counted)
    // but reaches the coarser tables.
    let config = rollup_config("retention", "[rollup.rollup_minute]\nretention = \"2d\"\n");
    let logger = Logger::start(&db, &["--connect", &endpoint, "--config", &config]);
    publisher.wait_for_subscriptions(2 * all_topics(P));
    let late = at(now - 4 * 86_400_000 + 60_000, 10, "late");
    for e in &late {
        publisher.publish(e, P);
    }
    logger.wait_metric("bid_logger_events_flushed_total", 10.0, Duration::from_secs(30));
    let table = "table=\"rollup_minute\"";
    // Range maintenance runs apart from the flushes: wait for it.
    logger.wait_metric("bid_logger_rollup_partitions_dropped_total", 1.0, Duration::from_secs(30));
    assert!(logger.metric("bid_logger_rollup_partitions_dropped_total", table) >= 1.0);
    // (rollup_minute feeds rollup_hour: its fold, every 10 s, leaves them out, counted)
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while logger.metric("bid_logger_rollup_events_expired_total", table) < 10.0 {
        assert!(std::time::Instant::now() < deadline, "rollup_minute's fold did not count the expired events");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(logger.metric("bid_logger_rollup_events_expired_total", table), 10.0);
    assert_eq!(logger.metric("bid_logger_rollup_events_expired_total", "table=\"rollup_hour\""), 0.0);
    logger.stop_ok();

    let minute_ranges = ranges_of(&client, "rollup_minute_merged").await;
    assert!(!minute_ranges.contains(&old_range), "{old_range} dropped: {minute_ranges:?}");
    assert_eq!(sum_events(&client, "rollup_minute").await, 100, "only the recent events are left");
    for table in ["rollup_hour", "rollup_day", "rollup_exchange_minute", "rollup_exchange_hour"] {
        assert_eq!(sum_events(&client, table).await, 210, "{table} keeps every event");
    }
    let everything: Vec<TestEvent> = all.iter().chain(&late).cloned().collect();
    let dims = ["country", "os", "campaign_id", "advertiser_id"];
    for (table, bucket_s) in [("rollup_hour", 3600), ("rollup_day", 86_400)] {
        assert_table_eq(
            &table_rows(&client, table, &dims).await,
            &expected_table_rows(&everything, bucket_s, &dims, 1_000_000),
            table,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warehouse_of_the_previous_release_is_partitioned_in_place_with_its_sums_unchanged() {
    let db = fresh_database("upgrade").await;
    let client = connect(&db).await;
    // The schema of the release before partitioning: migrations 1 to 4.
    client
        .batch_execute(
            "CREATE TABLE bid_logger_migrations (version integer PRIMARY KEY, name text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .unwrap();
    for &(version, name, sql) in &bid_logger::db::migrate::MIGRATIONS[..4] {
        client.batch_execute(sql).await.unwrap();
        client.execute("INSERT INTO bid_logger_migrations VALUES ($1, $2)", &[&version, &name]).await.unwrap();
    }
    // Its rows: 40 days of hours and 2 days of minutes, two sample rates.
    client
        .batch_execute(
            "INSERT INTO rollup_hour (bucket, event_type, country, os, campaign_id, advertiser_id, sample_ppm,
                                      events, attributed_events, price_micros, revenue_micros)
             SELECT date_trunc('hour', now()) - h * interval '1 hour', t, 'US', 'ios', c, 1, ppm, h + c, 1, 10 * h, c
             FROM generate_series(0, 960) h, unnest(ARRAY['bid', 'win']) t, generate_series(1, 3) c,
                  unnest(ARRAY[1000000, 125000]) ppm;
             INSERT INTO rollup_minute (bucket, event_type, country, os, campaign_id, advertiser_id, sample_ppm,
                                        events, attributed_events, price_micros, revenue_micros)
             SELECT date_trunc('minute', now()) - m * interval '1 minute', 'bid', 'BR', 'android', c, 2, 1000000,
                    m + c, 0, m, 0
             FROM generate_series(0, 2880) m, generate_series(1, 3) c;",
        )
        .await
        .unwrap();
    let sums = "SELECT (SELECT sum(events) FROM rollup_minute)::bigint, (SELECT sum(price_micros) FROM rollup_minute)::bigint,
                       (SELECT sum(events) FROM rollup_hour)::bigint, (SELECT sum(price_micros) FROM rollup_hour)::bigint,
                       (SELECT count(*) FROM rollup_hour)";
    let before: (i64, i64, i64, i64, i64) = {
        let r = client.query_one(sums, &[]).await.unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))
    };
    let file_of = "SELECT pg_relation_filenode($1::text::regclass)";
    let minute_file: i64 = client.query_one(file_of, &[&"rollup_minute"]).await.unwrap().get::<_, u32>(0).into();

    let out = bid_logger(&["migrate", "--database-url", &db]);
    assert!(out.status.success(), "migrate: {}", String::from_utf8_lossy(&out.stderr));

    let after: (i64, i64, i64, i64, i64) = {
        let r = client.query_one(sums, &[]).await.unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))
    };
    assert_eq!(after, before, "every row kept");
    for table in ["rollup_minute", "rollup_hour", "rollup_day", "rollup_exchange_minute", "rollup_exchange_hour"] {
        let kind: i8 = client
            .query_one("SELECT relkind::\"char\" FROM pg_class WHERE oid = to_regclass($1 || '_merged')", &[&table])
            .await
            .unwrap()
            .get(0);
        assert_eq!(kind as u8, b'p', "{table} is partitioned");
    }
    assert_eq!(ranges_of(&client, "rollup_minute_merged").await, ["rollup_minute_before"]);
    let moved: i64 = client.query_one(file_of, &[&"rollup_minute_before"]).await.unwrap().get::<_, u32>(0).into();
    assert_eq!(moved, minute_file, "the old table is attached as it is, not rewritten");
    // rollup_day is rollup_hour by day, per sample rate
    let day = by_rate(&client, "rollup_day").await;
    let hour = by_rate(&client, "rollup_hour").await;
    assert_eq!(day, hour, "rollup_day backfilled from rollup_hour");
    let est: f64 = client.query_one("SELECT sum(events) FROM rollup_hour_est", &[]).await.unwrap().get(0);
    assert!(est > before.2 as f64, "the _est views are back (scaling the 1/8 rows)");

    // The logger runs on it: new events add up on top of the old sums.
    let mut publisher = Publisher::bind();
    let logger = Logger::start(&db, &["--connect", &publisher.endpoint]);
    publisher.wait_for_subscriptions(all_topics(P));
    let events = at(now_ms(), 300, "new");
    for e in &events {
        publisher.publish(e, P);
    }
    logger.wait_metric("bid_logger_events_flushed_total", 300.0, Duration::from_secs(30));
    logger.stop_ok();
    assert_eq!(sum_events(&client, "rollup_minute").await, before.0 + 300);
    assert_eq!(sum_events(&client, "rollup_hour").await, before.2 + 300);
    assert_eq!(sum_events(&client, "rollup_day").await, before.2 + 300);
    // The migrated range holds every minute up to the next UTC day; hour
    // ranges begin where it ends, two days ahead of the logger's clock (an
    // hour earlier if the hour turned since).
    let ranges = ranges_of(&client, "rollup_minute_merged").await;
    let hour = bid_logger::db::ranges::Span::Hour;
    let now_s = now_ms() / 1000;
    let midnight = now_s.div_euclid(86_400) * 86_400 + 86_400;
    let expected = |to_s: i64| -> Vec<String> {
        let mut names: Vec<String> =
            hour.starts(midnight, to_s).map(|s| hour.name("rollup_minute_merged", s)).collect();
        names.push("rollup_minute_before".to_string());
        names.sort();
        names
    };
    let ahead = now_s + 2 * 86_400;
    assert!(ranges == expected(ahead) || ranges == expected(ahead - 3600), "{ranges:?}");
}

#[test]
fn invalid_declarations_fail_at_start_with_one_line_naming_the_key_in_the_file() {
    for (toml, key) in [
        ("[rollup.rollup_x]\ngrain = \"day\"\ndimensions = [\"planet\"]\n", "rollup.rollup_x.dimensions"),
        ("[rollup.rollup_day]\nretention = \"1h\"\n", "rollup.rollup_day.retention"),
        ("[rollup.price_x]\ngrain = \"hour\"\ndimensions = [\"advertiser\", \"price\"]\n", "rollup.price_x.dimensions"),
    ] {
        let config = rollup_config("invalid", toml);
        let out = bid_logger(&[
            "run",
            "--config",
            &config,
            "--connect",
            "tcp://127.0.0.1:1",
            "--database-url",
            "postgres://u@h/db",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(&format!("`{key}` in `{config}`")), "{stderr}");
    }
    // A table declared twice is refused by the file's parser, naming the line.
    let config = rollup_config("twice", "[rollup.rollup_x]\ngrain = \"day\"\n\n[rollup.rollup_x]\ngrain = \"hour\"\n");
    let out = bid_logger(&["check-config", "--config", &config, "--connect", "tcp://127.0.0.1:1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("line 4") && stderr.contains("rollup_x"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_logger_applies_the_retention_at_start_up() {
    let db = fresh_database("idle_retention").await;
    let out = bid_logger(&["migrate", "--database-url", &db]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Minute ranges 3 to 5 days old, as a longer retention left them.
    let mut client = connect(&db).await;
    let hour = bid_logger::db::ranges::Span::Hour;
    let now_s = now_ms() / 1000;
    let old: Vec<i64> = (3 * 24..5 * 24).step_by(6).map(|h| hour.start(now_s - h * 3600)).collect();
    let parent = bid_logger::db::ranges::Parent { table: "rollup_minute_merged", span: hour, rollup: true };
    bid_logger::db::ranges::ensure(&mut client, parent, &old).await.unwrap();
    let names: Vec<String> = old.iter().map(|&s| hour.name("rollup_minute_merged", s)).collect();
    let before = ranges_of(&client, "rollup_minute_merged").await;
    assert!(names.iter().all(|n| before.contains(n)), "set-up: {before:?}");

    // Started with a 2-day retention and no publisher at all.
    let config = rollup_config("idle-retention", "[rollup.rollup_minute]\nretention = \"2d\"\n");
    let logger = Logger::start(&db, &["--connect", "tcp://127.0.0.1:1", "--config", &config]);
    logger.wait_metric("bid_logger_rollup_partitions_dropped_total", names.len() as f64, Duration::from_secs(30));
    // The round goes on with the ranges from the oldest accepted time to two days ahead.
    logger.wait_metric("bid_logger_last_maintenance_timestamp_seconds", 1.0, Duration::from_secs(60));
    let left = ranges_of(&client, "rollup_minute_merged").await;
    assert!(names.iter().all(|n| !left.contains(n)), "old ranges left: {left:?}");
    // The ranges of now and ahead were made the same way.
    assert!(left.contains(&hour.name("rollup_minute_merged", hour.start(now_s))), "{left:?}");
    assert_eq!(logger.metric("bid_logger_events_flushed_total", ""), 0.0, "nothing was flushed");
    logger.stop_ok();
}

/// Every rollup view can be read by parallel workers: its merged ranges
/// scanned in parallel (a `Parallel Append`), as a plain table's would be;
/// and an hour or day table's ranges have a BRIN index on `bucket`, and a
/// B-tree on `bucket` per event type, of that type's rows.
/// A view reading its boundary in a subquery (an init plan: parallel
/// restricted) kept a 90-day dashboard query on one core, 1.7 x slower
/// than its merged table (BENCHMARKS.md).
#[tokio::test(flavor = "current_thread")]
async fn every_rollup_view_is_read_in_parallel() {
    let db = fresh_database("parallel_views").await;
    let out = bid_logger(&["migrate", "--database-url", &db]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut client = connect(&db).await;
    let bucket = bid_logger::db::ranges::Span::Hour.start(now_ms() / 1000);
    for table in bid_logger::db::tables::default_tables(Duration::from_secs(1)) {
        let span = bid_logger::db::ranges::Span::of(table.shape.grain);
        let parent = bid_logger::db::ranges::Parent { table: &table.merged, span, rollup: true };
        bid_logger::db::ranges::ensure(&mut client, parent, &[span.start(bucket)]).await.unwrap();
        let tx = client.transaction().await.unwrap();
        // what a large table costs, on these empty ones
        tx.batch_execute(
            "SET LOCAL parallel_setup_cost = 0; SET LOCAL parallel_tuple_cost = 0;
             SET LOCAL min_parallel_table_scan_size = 0; SET LOCAL max_parallel_workers_per_gather = 2",
        )
        .await
        .unwrap();
        let plan: Vec<String> = tx
            .query(
                &format!("EXPLAIN SELECT sum(events) FROM {} WHERE bucket > now() - interval '1 day'", table.name),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(
            plan.iter().any(|l| l.contains("Parallel Append")),
            "{} is read on one core:\n{}",
            table.name,
            plan.join("\n")
        );
        tx.rollback().await.unwrap();
        // an hour or day table's ranges (a month, a year of buckets) are
        // indexed on `bucket` in BRIN, the range just made too
        let brin = texts(
            &client,
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             JOIN pg_index x ON x.indrelid = c.oid JOIN pg_class ix ON ix.oid = x.indexrelid
             JOIN pg_am am ON am.oid = ix.relam
             WHERE i.inhparent = $1::text::regclass AND am.amname = 'brin'",
            &table.merged,
        )
        .await;
        let coarse = table.shape.grain != bid_logger_core::aggregate::Grain::Minute;
        assert_eq!(brin.len(), usize::from(coarse), "{}'s ranges with a BRIN index: {brin:?}", table.name);
        // and on `bucket` per event type, each for that type's rows only
        let mut per_type = texts(
            &client,
            "SELECT pg_get_expr(x.indpred, x.indrelid) FROM pg_inherits i JOIN pg_index x ON x.indrelid = i.inhrelid
             WHERE i.inhparent = $1::text::regclass AND x.indpred IS NOT NULL
               AND pg_get_indexdef(x.indexrelid) LIKE '%USING btree (bucket) WHERE%'",
            &table.merged,
        )
        .await;
        per_type.sort();
        let types = if coarse { &bid_logger_core::wire::EventType::ALL[..] } else { &[] };
        let mut expected: Vec<String> =
            types.iter().map(|t| format!("(event_type = '{}'::text)", t.as_str())).collect();
        expected.sort();
        assert_eq!(per_type, expected, "{}'s ranges' indexes per event type", table.name);
    }
    // A second migrate, over ranges that exist, keeps one index per range.
    let out = bid_logger(&["migrate", "--database-url", &db]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let per_range: (i64, i64) = client
        .query_one(
            "SELECT count(*) FILTER (WHERE am.amname = 'brin'), count(*) FILTER (WHERE x.indpred IS NOT NULL)
             FROM pg_index x JOIN pg_class ix ON ix.oid = x.indexrelid JOIN pg_am am ON am.oid = ix.relam",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    // three coarse tables, each a parent index and one range's, one of
    // each kind and eight per event type
    assert_eq!(per_range, (6, 48), "BRIN and per-type indexes after a second migrate");
}

/// `table` holds one row per key (the view adds up merged and live rows).
async fn one_row_per_key(client: &tokio_postgres::Client, table: &str, dims: &str) {
    let sql = format!("SELECT count(*), count(DISTINCT (bucket, event_type, {dims}, sample_ppm)) FROM {table}");
    let row = client.query_one(&sql, &[]).await.unwrap();
    let (rows, keys): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(rows, keys, "{table}: one row per key");
}

/// A late event (a bucket before the boundary) reaches a direct table
/// through the fold, like any other: its batch appends it to the log only
/// (not as a live row: the view would not show it, and a key already in the
/// merged table must never show twice); the fold (here, the graceful
/// stop's) adds it to the merged row. A first run leaves keys five minutes
/// back in the merged table; a second, whose folds are an hour apart,
/// receives the same keys again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_event_shows_once_folded_into_its_merged_row_never_twice() {
    let db = fresh_database("late_folded").await;
    let config = rollup_config("late-folded", "[rollup.rollup_minute]\nfold-interval = \"1h\"\n");
    let mut publisher = Publisher::bind();
    let args = ["--connect", &publisher.endpoint, "--flush-interval", "200ms", "--config", &config];
    let ts = now_ms() - 5 * 60_000;
    let first = at(ts, 300, "first");
    let logger = Logger::start(&db, &args);
    publisher.wait_for_subscriptions(all_topics(P));
    for e in &first {
        publisher.publish(e, P);
    }
    logger.wait_metric("bid_logger_events_flushed_total", 300.0, Duration::from_secs(30));
    logger.stop_ok();
    let client = connect(&db).await;
    let full = "country, os, campaign_id, advertiser_id";
    assert_eq!(sum_events(&client, "rollup_minute_merged").await, 300, "set-up: the first run's rows are merged");

    let mut publisher = Publisher::bind();
    let args = ["--connect", &publisher.endpoint, "--flush-interval", "200ms", "--config", &config];
    let logger = Logger::start(&db, &args);
    publisher.wait_for_subscriptions(all_topics(P));
    let second = at(ts, 300, "second"); // the same keys, other transactions
    for e in &second {
        publisher.publish(e, P);
    }
    logger.wait_metric("bid_logger_events_flushed_total", 300.0, Duration::from_secs(30));
    let live = format!("SELECT count(*) FROM {} x", live_rows("rollup_minute"));
    let live: i64 = client.query_one(&live, &[]).await.unwrap().get(0);
    assert_eq!(live, 0, "late rows are not written as live rows");
    let logged: i64 = client
        .query_one("SELECT coalesce(sum(events), 0)::bigint FROM bid_logger_log_rollup_minute", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(logged, 300, "the late rows wait in the log");
    one_row_per_key(&client, "rollup_minute", full).await;
    assert_eq!(sum_events(&client, "rollup_minute").await, 300, "a late row not folded yet is not shown");
    logger.stop_ok();
    one_row_per_key(&client, "rollup_minute", full).await;
    assert_boundary_holds(&client, "rollup_minute").await;
    let all: Vec<TestEvent> = first.into_iter().chain(second).collect();
    assert_warehouse_matches(&client, &all, 1_000_000).await;
    assert_eq!(sum_events(&client, "rollup_minute_merged").await, 600, "folded into the merged rows");
}

/// The view shows live rows from the boundary on only. A logger knows the
/// boundary as it read it at start or at its last fold: another member (here
/// this test) may have moved it since, and the logger's batches then write
/// live rows of buckets before it, which must not show (their key may be in
/// the merged rows already: twice) until a fold adds them to the merged
/// rows. The boundary ten minutes back at the start, folds an hour apart,
/// events three minutes back; the boundary moved to a minute back by hand
/// while the logger runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_rows_behind_a_boundary_another_moved_show_only_once_folded() {
    let db = fresh_database("live_behind").await;
    let client = migrated_with_boundary_back(&db).await;
    let config = rollup_config("live-behind", "[rollup.rollup_minute]\nfold-interval = \"1h\"\n");
    let mut publisher = Publisher::bind();
    let args = ["--connect", &publisher.endpoint, "--flush-interval", "200ms", "--config", &config];
    let logger = Logger::start(&db, &args);
    publisher.wait_for_subscriptions(all_topics(P));
    let first = at(now_ms() - 3 * 60_000, 100, "before");
    for e in &first {
        publisher.publish(e, P);
    }
    logger.wait_metric("bid_logger_events_flushed_total", 100.0, Duration::from_secs(30));
    assert_eq!(sum_events(&client, "rollup_minute").await, 100, "set-up: shown as live rows");
    let moved = "UPDATE bid_logger_boundary SET since = date_trunc('minute', now()) - interval '1 minute'
                 WHERE rollup = 'rollup_minute'";
    client.batch_execute(moved).await.unwrap();
    let second = at(now_ms() - 3 * 60_000, 100, "after");
    for e in &second {
        publisher.publish(e, P);
    }
    logger.wait_metric("bid_logger_events_flushed_total", 200.0, Duration::from_secs(30));
    let behind = format!(
        "SELECT coalesce(sum(l.events), 0)::bigint FROM {} l JOIN bid_logger_boundary b
         ON b.rollup = 'rollup_minute' AND l.bucket < b.since",
        live_rows("rollup_minute")
    );
    let behind: i64 = client.query_one(&behind, &[]).await.unwrap().get(0);
    assert_eq!(behind, 200, "set-up: the logger wrote live rows before the boundary it did not know");
    assert_eq!(sum_events(&client, "rollup_minute").await, 0, "live rows before the boundary are not shown");
    logger.stop_ok();
    assert_boundary_holds(&client, "rollup_minute").await;
    one_row_per_key(&client, "rollup_minute", "country, os, campaign_id, advertiser_id").await;
    let all: Vec<TestEvent> = first.into_iter().chain(second).collect();
    assert_warehouse_matches(&client, &all, 1_000_000).await;
}

/// A fold appends its sums to the recent table without looking for the
/// key: two folds of the same keys leave two rows per key there, which the
/// view adds up, and the move into the merged table adds up into one row
/// per key. Two runs each fold once (at their stop: no folds while they
/// run, no move at a stop) the same keys three minutes back (the boundary
/// ten minutes back); a third run's first fold moves the boundary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_folded_twice_are_two_recent_rows_shown_as_one_and_moved_as_one() {
    let db = fresh_database("recent_appended").await;
    let client = migrated_with_boundary_back(&db).await;
    let quiet = rollup_config("recent-appended", "[rollup.rollup_minute]\nfold-interval = \"1h\"\n");
    let ts = now_ms() - 3 * 60_000;
    let mut all = Vec::new();
    for tag in ["first", "second"] {
        let mut publisher = Publisher::bind();
        let args = ["--connect", &publisher.endpoint, "--flush-interval", "200ms", "--config", &quiet];
        let logger = Logger::start(&db, &args);
        publisher.wait_for_subscriptions(all_topics(P));
        let events = at(ts, 300, tag);
        for e in &events {
            publisher.publish(e, P);
        }
        logger.wait_metric("bid_logger_events_flushed_total", 300.0, Duration::from_secs(30));
        logger.stop_ok();
        all.extend(events);
    }
    let full = "bucket, event_type, country, os, campaign_id, advertiser_id, sample_ppm";
    let counts = format!(
        "SELECT count(*), count(DISTINCT ({full})), coalesce(sum(events), 0)::bigint FROM rollup_minute_recent"
    );
    let row = client.query_one(&counts, &[]).await.unwrap();
    let (rows, keys, events): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert!(keys > 0 && rows == 2 * keys, "each fold appended each key once: {rows} rows, {keys} keys");
    assert_eq!(events, 600, "set-up: both runs' events are in the recent rows");
    one_row_per_key(&client, "rollup_minute", "country, os, campaign_id, advertiser_id").await;
    assert_warehouse_matches(&client, &all, 1_000_000).await;

    let moved = "SELECT since >= date_trunc('minute', now()) - interval '1 minute' FROM bid_logger_boundary
                 WHERE rollup = 'rollup_minute'";
    let mut publisher = Publisher::bind();
    let often = rollup_config("recent-moved", "[rollup.rollup_minute]\nfold-interval = \"1s\"\n");
    let logger = Logger::start(&db, &["--connect", &publisher.endpoint, "--config", &often]);
    publisher.wait_for_subscriptions(all_topics(P));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !client.query_one(moved, &[]).await.unwrap().get::<_, bool>(0) {
        assert!(std::time::Instant::now() < deadline, "the boundary did not move");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    logger.stop_ok();
    let merged = format!(
        "SELECT count(*), count(DISTINCT ({full})), coalesce(sum(events), 0)::bigint FROM rollup_minute_merged"
    );
    let row = client.query_one(&merged, &[]).await.unwrap();
    let (rows, merged_keys, events): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((rows, merged_keys, events), (keys, keys, 600), "moved as one row per key, every event once");
    assert_boundary_holds(&client, "rollup_minute").await;
    assert_warehouse_matches(&client, &all, 1_000_000).await;
}

/// A fresh warehouse's boundaries start where a running one's stand: a
/// direct table's a minute behind the clock, a coarse table's at the next
/// bucket. So the events of the minute before the first start are appended
/// to the recent rows, as a running warehouse's are, not written as late
/// events (an upsert each into the merged table).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_warehouse_starts_its_boundaries_where_a_running_one_keeps_them() {
    let db = fresh_database("fresh_boundary").await;
    let client = connect(&db).await;
    client.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    // (the clock read before and after: the minute may turn in between)
    let before: std::time::SystemTime = client.query_one("SELECT now()", &[]).await.unwrap().get(0);
    assert!(bid_logger(&["migrate", "--database-url", &db]).status.success(), "migrate");
    let placed = "SELECT rollup, since, bool_or(CASE
                      WHEN rollup LIKE '%minute' THEN since = date_trunc('minute', t) - interval '1 minute'
                      WHEN rollup LIKE '%hour' THEN since = date_trunc('hour', t) + interval '1 hour'
                      WHEN rollup LIKE '%day' THEN since = date_trunc('day', t) + interval '1 day' END)
                  FROM bid_logger_boundary, (VALUES ($1::timestamptz), (now())) AS clock(t)
                  GROUP BY rollup, since ORDER BY rollup";
    let rows = client.query(placed, &[&before]).await.unwrap();
    assert_eq!(rows.len(), 5, "one boundary per default table");
    for r in &rows {
        let (table, since, placed): (String, std::time::SystemTime, bool) = (r.get(0), r.get(1), r.get(2));
        assert!(placed, "{table}'s boundary starts at {since:?}, not where a running warehouse keeps it");
    }

    // an event of the minute before this one
    let ts = (now_ms().div_euclid(60_000) - 1) * 60_000 + 1_000;
    let mut publisher = Publisher::bind();
    let quiet = rollup_config("fresh-boundary", "[rollup.rollup_minute]\nfold-interval = \"1h\"\n");
    let logger =
        Logger::start(&db, &["--connect", &publisher.endpoint, "--flush-interval", "200ms", "--config", &quiet]);
    publisher.wait_for_subscriptions(all_topics(P));
    let events = at(ts, 100, "fresh");
    for e in &events {
        publisher.publish(e, P);
    }
    logger.wait_metric("bid_logger_events_flushed_total", 100.0, Duration::from_secs(30));
    logger.stop_ok();
    assert_eq!(sum_events(&client, "rollup_minute_recent").await, 100, "appended to the recent rows");
    assert_eq!(sum_events(&client, "rollup_minute_merged").await, 0, "none written as a late event");
    assert_warehouse_matches(&client, &events, 1_000_000).await;
}

/// A move normally inserts its keys into buckets the merged table has no
/// row of. Where it has (here: a copy of the recent rows, as rows written
/// there by hand could be), the move adds them to those rows: found by a
/// probe of the buckets it moves (`rollup_minute`), or, should a key
/// conflict anyway (`rollup_exchange_minute`, whose recent rows are put
/// before its boundary), by the insert's failure, reported here as Citus
/// reports it through its coordinator (XX000). Every event is counted
/// once, in one row per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_into_buckets_the_merged_table_already_holds_adds_to_its_rows() {
    let db = fresh_database("move_adds").await;
    let client = migrated_with_boundary_back(&db).await;
    let fold_every = |tag: &str, every: &str| {
        let table = |t: &str| format!("[rollup.{t}]\nfold-interval = \"{every}\"\n");
        rollup_config(tag, &(table("rollup_minute") + &table("rollup_exchange_minute")))
    };
    let quiet = fold_every("move-adds-quiet", "1h");
    let mut publisher = Publisher::bind();
    let logger =
        Logger::start(&db, &["--connect", &publisher.endpoint, "--flush-interval", "200ms", "--config", &quiet]);
    publisher.wait_for_subscriptions(all_topics(P));
    let ts = now_ms() - 3 * 60_000;
    for e in &at(ts, 300, "move-adds") {
        publisher.publish(e, P);
    }
    logger.wait_metric("bid_logger_events_flushed_total", 300.0, Duration::from_secs(30));
    logger.stop_ok(); // folds at its stop (into the recent rows), no move
    let mut keys = Vec::new();
    for t in ["rollup_minute", "rollup_exchange_minute"] {
        let copy = format!("INSERT INTO {t}_merged SELECT * FROM {t}_recent");
        keys.push(client.execute(&copy, &[]).await.unwrap() as i64);
    }
    assert!(keys.iter().all(|&k| k > 0), "set-up: the recent rows were copied into the merged tables");
    // Citus reports a key conflict met while it copies rows through the
    // coordinator as XX000, not 23505: so does this trigger, for an insert
    // without ON CONFLICT.
    client
        .batch_execute(
            "CREATE FUNCTION conflict_as_citus_reports_it() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF current_query() NOT LIKE '%ON CONFLICT%' AND EXISTS (
                     SELECT 1 FROM rollup_exchange_minute_merged m
                     WHERE (m.bucket, m.event_type, m.country, m.os, m.exchange, m.sample_ppm)
                         = (NEW.bucket, NEW.event_type, NEW.country, NEW.os, NEW.exchange, NEW.sample_ppm)) THEN
                     RAISE EXCEPTION 'duplicate key value violates unique constraint' USING ERRCODE = 'XX000';
                 END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER conflict_as_citus BEFORE INSERT ON rollup_exchange_minute_merged
                 FOR EACH ROW EXECUTE FUNCTION conflict_as_citus_reports_it();",
        )
        .await
        .unwrap();
    let ahead = "UPDATE bid_logger_boundary SET since = to_timestamp($1::float8 / 1000) + interval '1 minute'
                 WHERE rollup = 'rollup_exchange_minute'";
    client.execute(ahead, &[&((ts / 60_000 * 60_000) as f64)]).await.unwrap();

    let often = fold_every("move-adds-often", "1s");
    let logger = Logger::start(&db, &["--connect", &publisher.endpoint, "--config", &often]);
    let moved = "SELECT bool_and(since >= date_trunc('minute', now()) - interval '1 minute') FROM bid_logger_boundary
                 WHERE rollup IN ('rollup_minute', 'rollup_exchange_minute')";
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !client.query_one(moved, &[]).await.unwrap().get::<_, bool>(0) {
        assert!(std::time::Instant::now() < deadline, "the boundaries did not move");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stderr = logger.stop_ok();
    assert!(
        stderr.contains("a key of the move is in the merged table already") && stderr.contains("XX000"),
        "the exchange table's move fell back from the conflict reported as XX000:\n{stderr}"
    );
    for (t, keys) in ["rollup_minute", "rollup_exchange_minute"].into_iter().zip(keys) {
        let merged = format!("SELECT count(*), coalesce(sum(events), 0)::bigint FROM {t}_merged");
        let row = client.query_one(&merged, &[]).await.unwrap();
        assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (keys, 600), "{t}: each key once, its events added");
        assert_eq!(sum_events(&client, t).await, 600, "{t}");
        assert_boundary_holds(&client, t).await;
    }
    one_row_per_key(&client, "rollup_minute", "country, os, campaign_id, advertiser_id").await;
    one_row_per_key(&client, "rollup_exchange_minute", "country, os, exchange").await;
}

/// Moves `db`'s minute tables' boundaries: runs a logger folding every
/// second until both stand a minute behind the clock; its stderr.
async fn move_the_minute_boundaries(db: &str, client: &tokio_postgres::Client, tag: &str) -> String {
    let table = |t: &str| format!("[rollup.{t}]\nfold-interval = \"1s\"\n");
    let often = rollup_config(tag, &(table("rollup_minute") + &table("rollup_exchange_minute")));
    let publisher = Publisher::bind();
    let logger = Logger::start(db, &["--connect", &publisher.endpoint, "--config", &often]);
    let moved = "SELECT bool_and(since >= date_trunc('minute', now()) - interval '1 minute') FROM bid_logger_boundary
                 WHERE rollup IN ('rollup_minute', 'rollup_exchange_minute')";
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !client.query_one(moved, &[]).await.unwrap().get::<_, bool>(0) {
        assert!(std::time::Instant::now() < deadline, "the boundaries did not move");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    logger.stop_ok()
}

/// Events three minutes back into recent rows: a logger that folds only at
/// its stop (no move), the boundaries ten minutes back.
async fn events_in_recent_rows(db: &str, tag: &str) -> Vec<TestEvent> {
    let quiet = rollup_config(tag, "[rollup.rollup_minute]\nfold-interval = \"1h\"\n");
    let mut publisher = Publisher::bind();
    let logger =
        Logger::start(db, &["--connect", &publisher.endpoint, "--flush-interval", "200ms", "--config", &quiet]);
    publisher.wait_for_subscriptions(all_topics(P));
    let events = at(now_ms() - 3 * 60_000, 300, tag);
    for e in &events {
        publisher.publish(e, P);
    }
    logger.wait_metric("bid_logger_events_flushed_total", 300.0, Duration::from_secs(30));
    logger.stop_ok();
    events
}

/// A server that cannot stream the rows a `DELETE` takes (some distributed
/// planners refuse a `COPY` of a data-modifying query with SQLSTATE 0A000;
/// here a trigger refuses it so) gets the move as one statement that adds
/// up in SQL: the boundary moves, the recent rows land in the merged rows
/// once, every table exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_the_server_cannot_stream_is_done_in_one_statement() {
    let db = fresh_database("move_unstreamed").await;
    let client = migrated_with_boundary_back(&db).await;
    let events = events_in_recent_rows(&db, "move-unstreamed").await;
    let recent = "SELECT coalesce(sum(events), 0)::bigint FROM rollup_minute_recent";
    assert_eq!(client.query_one(recent, &[]).await.unwrap().get::<_, i64>(0), 300, "set-up: recent rows to move");
    client
        .batch_execute(
            "CREATE FUNCTION refuse_streamed_delete() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF current_query() LIKE 'COPY (DELETE%' THEN
                     RAISE EXCEPTION 'COPY of a DELETE is not supported here' USING ERRCODE = '0A000';
                 END IF;
                 RETURN NULL;
             END $$;
             CREATE TRIGGER refuse_streamed_delete BEFORE DELETE ON rollup_minute_recent
                 FOR EACH STATEMENT EXECUTE FUNCTION refuse_streamed_delete();",
        )
        .await
        .unwrap();
    let stderr = move_the_minute_boundaries(&db, &client, "move-unstreamed-often").await;
    assert!(
        stderr.contains("the server cannot stream the moved rows"),
        "rollup_minute's move fell back to one statement:\n{stderr}"
    );
    assert_eq!(sum_events(&client, "rollup_minute_merged").await, 300, "moved into the merged rows");
    assert_eq!(client.query_one(recent, &[]).await.unwrap().get::<_, i64>(0), 0, "no recent row left");
    for t in ["rollup_minute", "rollup_exchange_minute"] {
        assert_boundary_holds(&client, t).await;
    }
    one_row_per_key(&client, "rollup_minute", "country, os, campaign_id, advertiser_id").await;
    assert_warehouse_matches(&client, &events, 1_000_000).await;
}

/// Recent rows past the retention (a boundary left behind by a stop of
/// days) leave with the move as the retention's ranges do: the logger adds
/// up the rows the move takes and writes none of a bucket before the
/// retention (its range is gone: writing it would fail every move). Here a
/// recent row four days back (`rollup_minute` keeps three) beside the
/// recent rows of a run three minutes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recent_rows_past_the_retention_leave_with_the_move() {
    let db = fresh_database("move_expired").await;
    let client = migrated_with_boundary_back(&db).await;
    let events = events_in_recent_rows(&db, "move-expired").await;
    client
        .batch_execute(
            "UPDATE bid_logger_boundary SET since = date_trunc('minute', now()) - interval '4 days 10 minutes'
                 WHERE rollup = 'rollup_minute';
             INSERT INTO rollup_minute_recent (bucket, event_type, country, os, campaign_id, advertiser_id,
                     sample_ppm, events, attributed_events, price_micros, revenue_micros)
                 VALUES (date_trunc('minute', now()) - interval '4 days', 'auction', 'US', 'ios', 1, 1,
                     1000000, 7, 0, 0, 0);",
        )
        .await
        .unwrap();
    assert_eq!(sum_events(&client, "rollup_minute").await, 307, "set-up: the old recent row is shown");
    move_the_minute_boundaries(&db, &client, "move-expired-often").await;
    let old = "SELECT count(*) FROM rollup_minute WHERE bucket < now() - interval '3 days'";
    assert_eq!(client.query_one(old, &[]).await.unwrap().get::<_, i64>(0), 0, "the row past the retention left");
    assert_eq!(sum_events(&client, "rollup_minute_merged").await, 300, "the run's rows moved");
    assert_boundary_holds(&client, "rollup_minute").await;
    assert_warehouse_matches(&client, &events, 1_000_000).await;
}

/// A view that reads live rows from its live table only (as `migrate`
/// makes it on Citus, where a view reading the coordinator's log could not
/// run on the workers, or where the database says so): the logger reads
/// that at start and writes its batches' live rows there, a row per key,
/// so they show at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_reading_the_live_table_only_gets_the_live_rows_there() {
    let db = fresh_database("live_table_view").await;
    let out = bid_logger(&["migrate", "--database-url", &db]);
    assert!(out.status.success(), "migrate: {}", String::from_utf8_lossy(&out.stderr));
    let client = connect(&db).await;
    let name: String = client.query_one("SELECT current_database()::text", &[]).await.unwrap().get(0);
    client.batch_execute(&format!("ALTER DATABASE {name} SET bid_logger.live_rows = 'table'")).await.unwrap();
    let out = bid_logger(&["migrate", "--database-url", &db]);
    assert!(out.status.success(), "migrate: {}", String::from_utf8_lossy(&out.stderr));
    let def: String = client.query_one("SELECT pg_get_viewdef('rollup_minute')", &[]).await.unwrap().get(0);
    assert!(!def.contains("live_bucket"), "the owner's migrate made the view read the live table only: {def}");
    let mut publisher = Publisher::bind();
    let config = rollup_config("live-table-view", "[rollup.rollup_minute]\nfold-interval = \"1h\"\n");
    let args = ["--connect", &publisher.endpoint, "--flush-interval", "200ms", "--config", &config];
    let logger = Logger::start(&db, &args);
    publisher.wait_for_subscriptions(all_topics(P));
    let events = at(now_ms(), 300, "table-view");
    for e in &events {
        publisher.publish(e, P);
    }
    logger.wait_metric("bid_logger_events_flushed_total", 300.0, Duration::from_secs(30));
    let in_table: i64 = client.query_one("SELECT count(*) FROM rollup_minute_live", &[]).await.unwrap().get(0);
    let in_log = "SELECT coalesce(sum(cardinality(live_bucket)), 0)::bigint FROM bid_logger_log_rollup_minute";
    let in_log: i64 = client.query_one(in_log, &[]).await.unwrap().get(0);
    assert!(in_table > 0 && in_log == 0, "live rows in the live table ({in_table}), none in the log ({in_log})");
    assert_eq!(sum_events(&client, "rollup_minute").await, 300, "shown at once, before any fold");
    logger.stop_ok();
    let left: i64 = client.query_one("SELECT count(*) FROM rollup_minute_live", &[]).await.unwrap().get(0);
    assert_eq!(left, 0, "folded at the stop, the live rows with their log rows");
    assert_warehouse_matches(&client, &events, 1_000_000).await;
}

/// Live rows as an earlier build wrote them (a row per key in the live
/// table, none in the log row), left by a hard kill or by a fleet member
/// not upgraded yet: the view shows them, and the fold that takes their
/// log rows deletes them, so every event is shown once, before and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_rows_an_earlier_build_wrote_to_the_live_table_show_once_and_leave_with_their_log_rows() {
    let db = fresh_database("earlier_live_rows").await;
    let mut publisher = Publisher::bind();
    // no fold before the kill
    let config = rollup_config("earlier-live", "[rollup.rollup_minute]\nfold-interval = \"1h\"\n");
    let args = ["--connect", &publisher.endpoint, "--flush-interval", "200ms", "--config", &config];
    let first = Logger::start(&db, &args);
    publisher.wait_for_subscriptions(all_topics(P));
    let events = at(now_ms(), 300, "earlier");
    for e in &events {
        publisher.publish(e, P);
    }
    first.wait_metric("bid_logger_events_flushed_total", 300.0, Duration::from_secs(30));
    drop(first); // SIGKILL: the batches wait in the log
    let client = connect(&db).await;
    let held = format!("SELECT count(*) FROM {} x", live_rows("rollup_minute"));
    let held: i64 = client.query_one(&held, &[]).await.unwrap().get(0);
    assert!(held > 0, "set-up: rollup_minute has live rows");
    // as an earlier build leaves them: in the live table, a row per key
    let arrays = "live_bucket, live_event_type, live_country, live_os, live_campaign_id, live_advertiser_id, \
                  live_sample_ppm, live_events, live_attributed_events, live_price_micros, live_revenue_micros";
    let nulls = arrays.split(", ").map(|c| format!("{} = NULL", c.trim())).collect::<Vec<_>>().join(", ");
    client
        .batch_execute(&format!(
            "INSERT INTO rollup_minute_live (bucket, event_type, country, os, campaign_id, advertiser_id, sample_ppm,
                                             events, attributed_events, price_micros, revenue_micros, log_id)
             SELECT u.*, g.id FROM bid_logger_log_rollup_minute g, unnest({arrays}) AS u;
             UPDATE bid_logger_log_rollup_minute SET {nulls}, written_at = NULL;"
        ))
        .await
        .unwrap();
    let in_table: i64 = client.query_one("SELECT count(*) FROM rollup_minute_live", &[]).await.unwrap().get(0);
    assert_eq!(in_table, held, "set-up: the live rows moved to the live table");
    assert_eq!(sum_events(&client, "rollup_minute").await, 300, "the live table's rows are shown, once");

    let second = Logger::start(&db, &["--connect", &publisher.endpoint]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while second.metric("bid_logger_log_events_consumed_total", "table=\"rollup_minute\"") < 300.0 {
        assert!(std::time::Instant::now() < deadline, "rollup_minute's log was not folded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    second.stop_ok();
    let left: i64 = client.query_one("SELECT count(*) FROM rollup_minute_live", &[]).await.unwrap().get(0);
    assert_eq!(left, 0, "the live table's rows left with their log rows");
    assert_eq!(sum_events(&client, "rollup_minute").await, 300, "every event once");
    assert_boundary_holds(&client, "rollup_minute").await;
    assert_warehouse_matches(&client, &events, 1_000_000).await;
}

/// A table that was direct (live rows written, not folded yet when the
/// logger was killed) and is coarse at the next start: its next
/// consumption moves its log into its merged rows and takes the live rows
/// with it, so nothing is counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_rows_left_by_a_direct_table_leave_with_its_log_when_it_is_coarse_at_the_next_start() {
    let db = fresh_database("direct_then_coarse").await;
    let mut publisher = Publisher::bind();
    // rollup_hour at the logger's 2 s interval is direct; no fold before the kill
    let config =
        rollup_config("direct-hour", "[rollup.rollup_hour]\nflush-interval = \"2s\"\nfold-interval = \"1h\"\n");
    let args = ["--connect", &publisher.endpoint, "--flush-interval", "2s", "--config", &config];
    let first = Logger::start(&db, &args);
    publisher.wait_for_subscriptions(all_topics(P));
    let events = at(now_ms(), 300, "direct");
    for e in &events {
        publisher.publish(e, P);
    }
    first.wait_metric("bid_logger_events_flushed_total", 300.0, Duration::from_secs(30));
    drop(first); // SIGKILL: rollup_hour's rows wait as live rows and in its log
    let client = connect(&db).await;
    let live_hour = format!("SELECT count(*) FROM {} x", live_rows("rollup_hour"));
    let live: i64 = client.query_one(&live_hour, &[]).await.unwrap().get(0);
    assert!(live > 0, "set-up: rollup_hour has live rows");
    assert_eq!(sum_events(&client, "rollup_hour").await, 300);

    // rollup_hour coarse (at 10 s, fed through its log; the default is 5 minutes)
    let coarse = rollup_config("coarse-hour", "[rollup.rollup_hour]\nflush-interval = \"10s\"\n");
    let second = Logger::start(&db, &["--connect", &publisher.endpoint, "--config", &coarse]);
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    while second.metric("bid_logger_log_events_consumed_total", "table=\"rollup_hour\"") < 300.0 {
        assert!(std::time::Instant::now() < deadline, "rollup_hour's log was not consumed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    second.stop_ok();
    let live: i64 = client.query_one(&live_hour, &[]).await.unwrap().get(0);
    assert_eq!(live, 0, "the live rows left with their log rows");
    assert_eq!(sum_events(&client, "rollup_hour").await, 300, "every event once");
    assert_eq!(sum_events(&client, "rollup_hour_merged").await, 300, "all in the merged rows");
    one_row_per_key(&client, "rollup_hour", "country, os, campaign_id, advertiser_id").await;
}

/// Whatever side of a direct table's boundary a row falls on, it lands
/// once: the boundary starts ten minutes back, the folds (every second)
/// move it to a minute back, and events of the last ten minutes arrive
/// before and after that move: after it, most are late (appended to the
/// log, then added to the merged table by the next fold), the rest live.
/// The view keeps one row per key, the tables their sides of the boundary,
/// the sums every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_on_both_sides_of_a_moving_boundary_land_once_on_their_side() {
    let db = fresh_database("boundary").await;
    let client = migrated_with_boundary_back(&db).await;
    let config = rollup_config("boundary", "[rollup.rollup_minute]\nfold-interval = \"1s\"\n");
    let mut publisher = Publisher::bind();
    let args = ["--connect", &publisher.endpoint, "--flush-interval", "200ms", "--config", &config];
    let logger = Logger::start(&db, &args);
    publisher.wait_for_subscriptions(all_topics(P));
    let spread = |tag: &str| -> Vec<TestEvent> {
        let now = now_ms();
        (0..9).flat_map(|m| at(now - m * 60_000, 60, &format!("{tag}-{m}"))).collect()
    };
    let before = spread("before");
    for e in &before {
        publisher.publish(e, P);
    }
    logger.wait_metric("bid_logger_events_flushed_total", before.len() as f64, Duration::from_secs(30));
    let moved = "SELECT since >= date_trunc('minute', now()) - interval '1 minute' FROM bid_logger_boundary
                 WHERE rollup = 'rollup_minute'";
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !client.query_one(moved, &[]).await.unwrap().get::<_, bool>(0) {
        assert!(std::time::Instant::now() < deadline, "the folds did not move rollup_minute's boundary");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = spread("after");
    for e in &after {
        publisher.publish(e, P);
    }
    let all: Vec<TestEvent> = before.into_iter().chain(after).collect();
    logger.wait_metric("bid_logger_events_flushed_total", all.len() as f64, Duration::from_secs(30));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while logger.metric("bid_logger_log_events_consumed_total", "table=\"rollup_minute\"") < all.len() as f64 {
        assert!(std::time::Instant::now() < deadline, "the folds did not take every batch");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // while running, once folded: every side right, one row per key, every event once
    for table in ["rollup_minute", "rollup_exchange_minute"] {
        assert_boundary_holds(&client, table).await;
    }
    one_row_per_key(&client, "rollup_minute", "country, os, campaign_id, advertiser_id").await;
    assert_eq!(sum_events(&client, "rollup_minute").await, all.len() as i64, "every event once, while running");
    let merged = sum_events(&client, "rollup_minute_merged").await;
    assert!(merged >= 7 * 60 * 2, "the events of buckets before the boundary are in the merged table ({merged})");
    logger.stop_ok();
    for table in ["rollup_minute", "rollup_exchange_minute"] {
        assert_boundary_holds(&client, table).await;
    }
    one_row_per_key(&client, "rollup_minute", "country, os, campaign_id, advertiser_id").await;
    one_row_per_key(&client, "rollup_exchange_minute", "exchange, country, os").await;
    assert_warehouse_matches(&client, &all, 1_000_000).await;
}

/// Who feeds `rollup_hour` changes between runs while log rows wait (each
/// run killed before its folds): with `rollup_minute` folded hourly, an
/// hour table consumed every 10 s is fed by the batches (config A), one
/// consumed every 2 h from `rollup_minute`'s folds (config B). Each log
/// row goes where the run that appended it sent it, so the last run's
/// graceful stop neither drops (B's rows folded under A) nor doubles (A's
/// rows folded under B) an event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_rows_go_on_where_their_run_sent_them_when_the_feeds_change_between_runs() {
    let db = fresh_database("feeds_change").await;
    let mut publisher = Publisher::bind();
    let batch_fed = rollup_config(
        "feeds-a",
        "[rollup.rollup_minute]\nfold-interval = \"1h\"\n[rollup.rollup_hour]\nflush-interval = \"10s\"\n",
    );
    let fold_fed = rollup_config(
        "feeds-b",
        "[rollup.rollup_minute]\nfold-interval = \"1h\"\n[rollup.rollup_hour]\nflush-interval = \"2h\"\n",
    );
    let client = connect(&db).await;
    let minute_log = |feeds: &'static str| {
        let client = &client;
        async move {
            let sql = "SELECT count(*) FROM bid_logger_log_rollup_minute WHERE feeds = $1";
            client.query_one(sql, &[&feeds]).await.unwrap().get::<_, i64>(0)
        }
    };
    // The `nth` logger started with `config` (the publisher counts
    // subscriptions over every run), once it has flushed `n` events tagged `tag`.
    let run = |publisher: &mut Publisher, config: &str, nth: usize, tag: &str, n: usize| {
        let logger = Logger::start(&db, &["--connect", &publisher.endpoint, "--config", config]);
        publisher.wait_for_subscriptions(nth * all_topics(P));
        for e in &at(now_ms(), n, tag) {
            publisher.publish(e, P);
        }
        logger.wait_metric("bid_logger_events_flushed_total", n as f64, Duration::from_secs(30));
        logger
    };
    let mut sent = 0;
    for (round, (config, graceful)) in [
        (&batch_fed, false),
        (&fold_fed, false),
        (&batch_fed, true),
        (&fold_fed, false),
        (&batch_fed, false),
        (&fold_fed, true),
    ]
    .into_iter()
    .enumerate()
    {
        let logger = run(&mut publisher, config, round + 1, &format!("round{round}"), 100);
        sent += 100;
        if graceful {
            logger.stop_ok();
            for table in
                ["rollup_minute", "rollup_hour", "rollup_day", "rollup_exchange_minute", "rollup_exchange_hour"]
            {
                assert_eq!(sum_events(&client, table).await, sent, "{table} after round {round}");
            }
            continue;
        }
        drop(logger); // SIGKILL, before any fold of rollup_minute
                      // set-up: this run's rows wait in rollup_minute's log, naming what they feed
                      // (under B, rollup_day, consumed every 15 minutes, is fed by the batches)
        let feeds = if config == &batch_fed { "" } else { "rollup_minute>rollup_hour" };
        assert!(minute_log(feeds).await > 0, "round {round}: rollup_minute's log holds rows feeding `{feeds}`");
    }
    // and a row of a build before `feeds` (NULL) goes where those builds sent
    // it: a minute table's nowhere (they fed the hour table from the batches)
    drop(run(&mut publisher, &batch_fed, 7, "before", 100));
    sent += 100;
    client.execute("UPDATE bid_logger_log_rollup_minute SET feeds = NULL", &[]).await.unwrap();
    run(&mut publisher, &fold_fed, 8, "after", 10).stop_ok();
    sent += 10;
    for table in ["rollup_minute", "rollup_hour", "rollup_day"] {
        assert_eq!(sum_events(&client, table).await, sent, "{table} after a build's rows without feeds");
    }
}

/// The live and recent tables (emptied every few seconds, read whole)
/// are not analyzed by autovacuum every minute; a table made by an earlier
/// build gets the setting at the next `migrate`, and one an operator set
/// a threshold on keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_and_recent_tables_are_analyzed_rarely_also_when_made_by_an_earlier_build() {
    let db = fresh_database("analyze_rarely").await;
    let migrate = || {
        let out = bid_logger(&["migrate", "--database-url", &db]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    migrate();
    let client = connect(&db).await;
    let settings = "SELECT c.relname::text, coalesce(c.reloptions, '{}')::text[] FROM pg_class c
                    WHERE c.relkind = 'r' AND c.relname ~ '^rollup_.*_(live|recent)$' ORDER BY 1";
    let rarely = bid_logger::db::tables::ANALYZE_RARELY.to_string();
    let own = "autovacuum_analyze_threshold=50".to_string();
    let check = |rows: Vec<tokio_postgres::Row>, operators: &str| {
        let tables: Vec<(String, Vec<String>)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        assert_eq!(tables.len(), 10, "five live and five recent tables: {tables:?}");
        for (table, options) in &tables {
            let expected = if table == operators { &own } else { &rarely };
            assert!(options.contains(expected), "{table}: {options:?}");
        }
    };
    check(client.query(settings, &[]).await.unwrap(), "");
    // as an earlier build left them, and an operator's own setting
    for t in ["rollup_minute_live", "rollup_exchange_minute_recent"] {
        client.batch_execute(&format!("ALTER TABLE {t} RESET (autovacuum_analyze_threshold)")).await.unwrap();
    }
    client.batch_execute("ALTER TABLE rollup_hour_recent SET (autovacuum_analyze_threshold = 50)").await.unwrap();
    migrate();
    check(client.query(settings, &[]).await.unwrap(), "rollup_hour_recent");
}
