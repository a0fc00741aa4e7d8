//! `docs/postgres.md` as an operator follows it: its grant blocks run as
//! written (roles renamed per run), the logger migrates as the owner and
//! runs as the writer, and the warehouse is exact.

use crate::support::*;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The SQL blocks of docs/postgres.md, in order.
fn sql_blocks() -> Vec<String> {
    let doc =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/postgres.md")).unwrap();
    doc.split("```sql\n").skip(1).map(|b| b.split("```").next().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_grants_are_enough_to_migrate_and_run() {
    let db = fresh_database("grants").await;
    let db_name: String = db.rsplit('/').next().unwrap().to_string();
    let tag = rand::random::<u32>();
    let (owner, writer) = (format!("bl_owner_{tag}"), format!("bl_writer_{tag}"));
    let rename = |sql: &str| {
        sql.replace("bid_logger_owner", &owner)
            .replace("bid_logger_writer", &writer)
            .replace(" warehouse ", &format!(" {db_name} "))
    };
    let blocks = sql_blocks();
    assert_eq!(blocks.len(), 2, "docs/postgres.md has the roles block and the after-migrate block");

    let admin = connect(&db).await;
    admin.batch_execute(&rename(&blocks[0])).await.expect("the roles block runs");
    let owner_url = as_user(&db, &owner, "change-me");
    let out = bid_logger(&["migrate", "--database-url", &owner_url]);
    assert!(out.status.success(), "migrate as the owner: {}", String::from_utf8_lossy(&out.stderr));
    let as_owner = connect(&owner_url).await;
    as_owner.batch_execute(&rename(&blocks[1])).await.expect("the after-migrate block runs as the owner");

    let writer_url = as_user(&db, &writer, "change-me");
    let mut publisher = Publisher::bind();
    let logger = Logger::start(&writer_url, &["--connect", &publisher.endpoint, "--raw-sample", "1"]);
    publisher.wait_for_subscriptions(all_topics(P));
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    let events: Vec<TestEvent> = (0..2_000)
        .map(|i| {
            // some two days late: a day table the writer creates on demand
            let mut e = TestEvent::new(
                ["bid", "win", "impression"][i % 3],
                format!("g-{i}"),
                now - (i as i64 % 3) * 86_400_000,
            );
            e.campaign = (i % 7) as u32;
            e.price = Some(i as i64);
            e
        })
        .collect();
    for e in &events {
        publisher.publish(e, P);
    }
    logger.wait_metric("bid_logger_events_flushed_total", events.len() as f64, Duration::from_secs(60));
    let (code, stderr) = logger.stop();
    assert_eq!(code, 0, "the writer runs: {stderr}");
    assert!(!stderr.contains("permission denied"), "{stderr}");
    assert_warehouse_matches(&admin, &events, 1_000_000).await;
    let raw: i64 = admin.query_one("SELECT count(*) FROM events_sample", &[]).await.unwrap().get(0);
    assert_eq!(raw as usize, events.len(), "every event in the raw sample, day tables made by the writer");

    // and no more than that: the writer cannot change the rollups' schema
    let as_writer = connect(&writer_url).await;
    let err = as_writer.batch_execute("ALTER TABLE rollup_minute_merged ADD COLUMN x int").await.unwrap_err();
    assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE), "{err}");

    // An upgrade from a build whose view showed every live row: the writer
    // cannot replace the owner's view, and says who must; the owner's
    // migrate replaces it.
    let minute = bid_logger::db::tables::default_tables(Duration::from_secs(1))
        .into_iter()
        .find(|t| t.name == "rollup_minute")
        .unwrap();
    let filter = " JOIN bid_logger_boundary ON rollup = 'rollup_minute' AND bucket >= since";
    assert!(minute.view_sql().contains(filter), "set-up: the view's live condition");
    as_owner.batch_execute(&minute.view_sql().replace(filter, "")).await.expect("the earlier view");
    let out = bid_logger(&["migrate", "--database-url", &writer_url]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("run `bid-logger migrate` as the role that owns it"), "{stderr}");
    let out = bid_logger(&["migrate", "--database-url", &owner_url]);
    assert!(out.status.success(), "migrate as the owner: {}", String::from_utf8_lossy(&out.stderr));
    let view = "SELECT pg_get_viewdef('rollup_minute'::regclass)";
    let def: String = admin.query_one(view, &[]).await.unwrap().get(0);
    assert!(def.contains("JOIN bid_logger_boundary"), "the owner's migrate replaced the view: {def}");
    // An earlier build's part only the owner may change: the writer's
    // migrate goes on without changing it and warns, naming the table.
    let writer_goes_on_and_says = |says: &str, table: &str| {
        let out = bid_logger(&["migrate", "--database-url", &writer_url]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "the writer goes on: {stderr}");
        assert!(stderr.contains(says) && stderr.contains(table), "and says so: {stderr}");
    };
    // From a build whose view read the boundary in a subquery (the same
    // rows, its merged ranges never scanned in parallel): the writer goes
    // on with it, the owner's migrate replaces it.
    let subquery = "\n      WHERE bucket >= (SELECT since FROM bid_logger_boundary WHERE rollup = 'rollup_minute')";
    as_owner.batch_execute(&minute.view_sql().replace(filter, subquery)).await.expect("the earlier view");
    writer_goes_on_and_says("read without parallel scans", "rollup_minute");
    let def: String = admin.query_one(view, &[]).await.unwrap().get(0);
    assert!(!def.contains("JOIN bid_logger_boundary"), "only its owner replaces the view: {def}");
    let out = bid_logger(&["migrate", "--database-url", &owner_url]);
    assert!(out.status.success(), "migrate as the owner: {}", String::from_utf8_lossy(&out.stderr));
    let def: String = admin.query_one(view, &[]).await.unwrap().get(0);
    assert!(def.contains("JOIN bid_logger_boundary"), "the owner's migrate joins the boundary: {def}");
    // From a build whose batches wrote their live rows to the live table,
    // a row per key (its log without the live rows' columns, its view
    // without them): the writer may not add them and says who must; the
    // owner's migrate adds them and replaces the view.
    let current = minute.view_sql();
    let from = current
        .find("\n            UNION ALL\n            SELECT u.")
        .expect("set-up: the log's live rows in the view");
    let to = current.find(") live\n").expect("set-up: the view's live rows");
    as_owner.batch_execute(&format!("{}{}", &current[..from], &current[to..])).await.expect("the earlier view");
    let drops: Vec<String> = minute.live_array_columns().into_iter().map(|(c, _)| format!("DROP COLUMN {c}")).collect();
    let earlier_log = format!("ALTER TABLE bid_logger_log_rollup_minute {}, DROP COLUMN written_at", drops.join(", "));
    as_owner.batch_execute(&earlier_log).await.expect("the earlier log");
    let out = bid_logger(&["migrate", "--database-url", &writer_url]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let says = "bid_logger_log_rollup_minute lacks the live rows' columns of this build: \
                run `bid-logger migrate` as the role that owns it";
    assert!(!out.status.success() && stderr.contains(says), "{stderr}");
    let out = bid_logger(&["migrate", "--database-url", &owner_url]);
    assert!(out.status.success(), "migrate as the owner: {}", String::from_utf8_lossy(&out.stderr));
    let def: String = admin.query_one(view, &[]).await.unwrap().get(0);
    assert!(def.contains("live_bucket"), "the owner's migrate shows the log's live rows: {def}");
    let columns = "SELECT count(*) FROM pg_attribute WHERE attrelid = 'bid_logger_log_rollup_minute'::regclass
                   AND (attname LIKE 'live\\_%' OR attname = 'written_at') AND NOT attisdropped";
    let columns: i64 = admin.query_one(columns, &[]).await.unwrap().get(0);
    assert_eq!(columns as usize, minute.live_array_columns().len() + 1, "the owner's migrate added the columns");
    // A database that keeps its live rows in the live tables (as on Citus)
    // whose views were made before: the writer goes on with them (the same
    // rows, the log's read too) and says so; the owner's migrate makes them
    // read the live table only.
    admin.batch_execute(&format!("ALTER DATABASE {db_name} SET bid_logger.live_rows = 'table'")).await.unwrap();
    writer_goes_on_and_says("the view reads the live rows held in the delta log", "rollup_minute");
    let out = bid_logger(&["migrate", "--database-url", &owner_url]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !stderr.contains("held in the delta log"), "migrate as the owner: {stderr}");
    let def: String = admin.query_one(view, &[]).await.unwrap().get(0);
    assert!(!def.contains("live_bucket"), "the owner's migrate reads the live table only: {def}");
    admin.batch_execute(&format!("ALTER DATABASE {db_name} RESET bid_logger.live_rows")).await.unwrap();
    let out = bid_logger(&["migrate", "--database-url", &owner_url]);
    assert!(out.status.success(), "migrate as the owner: {}", String::from_utf8_lossy(&out.stderr));
    // From a build without the hour and day ranges' BRIN index, or without
    // their indexes per event type: the writer goes on without them and
    // says so, the owner's migrate makes them.
    for index in ["rollup_hour_merged_bucket_brin", "rollup_day_merged_impression"] {
        as_owner.batch_execute(&format!("DROP INDEX {index}")).await.expect("the earlier ranges");
        let table = index.split("_merged").next().unwrap();
        writer_goes_on_and_says("its ranges lack an index of this build's", table);
        let left: bool = admin.query_one("SELECT to_regclass($1) IS NULL", &[&index]).await.unwrap().get(0);
        assert!(left, "only the owner makes {index}");
        let out = bid_logger(&["migrate", "--database-url", &owner_url]);
        assert!(out.status.success(), "migrate as the owner: {}", String::from_utf8_lossy(&out.stderr));
        let made: bool = admin.query_one("SELECT to_regclass($1) IS NOT NULL", &[&index]).await.unwrap().get(0);
        assert!(made, "the owner's migrate made {index}");
    }
    // The same from a build whose recent tables were keyed.
    let keyed = "ALTER TABLE rollup_minute_recent SET (fillfactor = 50),
                 ADD PRIMARY KEY (bucket, event_type, country, os, campaign_id, advertiser_id, sample_ppm)";
    as_owner.batch_execute(keyed).await.expect("the earlier recent table");
    let out = bid_logger(&["migrate", "--database-url", &writer_url]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let says = "rollup_minute_recent is keyed by an earlier build: run `bid-logger migrate` as the role that owns it";
    assert!(!out.status.success() && stderr.contains(says), "{stderr}");
    let out = bid_logger(&["migrate", "--database-url", &owner_url]);
    assert!(out.status.success(), "migrate as the owner: {}", String::from_utf8_lossy(&out.stderr));
    let keys: i64 = admin
        .query_one("SELECT count(*) FROM pg_constraint WHERE conrelid = 'rollup_minute_recent'::regclass", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(keys, 0, "the owner's migrate dropped the recent table's key");
    drop((as_owner, as_writer));
    let _ = admin
        .batch_execute(&format!(
            "REASSIGN OWNED BY {owner}, {writer} TO CURRENT_USER; DROP OWNED BY {owner}, {writer}; DROP ROLE {owner}, {writer}"
        ))
        .await;
}

/// A transaction the server ended because it sat idle (SQLSTATE 25P03: a
/// member starved of CPU inside a flush, which `lease-ttl / 3` of
/// `idle_in_transaction_session_timeout` ends on purpose) is a transient
/// failure, retried quietly: it needs no operator.
#[tokio::test(flavor = "current_thread")]
async fn a_transaction_ended_by_the_idle_timeout_is_a_transient_failure() {
    let db = fresh_database("idle_ended").await;
    let mut client = connect(&db).await;
    let tx = client.transaction().await.unwrap();
    tx.batch_execute("SET LOCAL idle_in_transaction_session_timeout = 100").await.unwrap();
    // The runtime's only thread sleeps, as a starved member does: the
    // client reads the server's FATAL only as the answer to its next
    // statement (when it reads it first, it is a closed connection).
    std::thread::sleep(Duration::from_millis(500));
    let e = tx.batch_execute("SELECT 1").await.expect_err("the server ended the session");
    assert_eq!(e.code(), Some(&tokio_postgres::error::SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT), "{e}");
    let e = bid_logger::db::DbError::Db(e);
    assert!(e.is_transient(), "{e}");
}
