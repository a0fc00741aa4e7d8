//! `bid-logger demo`: the whole pipeline on one machine in one command.
//!
//! Uses `DATABASE_URL` when set (in a fresh database created on that server),
//! otherwise a throwaway PostgreSQL cluster; runs the simulator and the logger
//! together, stops gracefully, checks the warehouse against the simulator's
//! exact truth, and prints a short report from the rollups with its SQL.

use crate::pgtemp::TempPostgres;
use crate::simulate::{self, SimulateConfig};
use bid_logger::config::{mask_database_url, Settings};
use bid_logger_core::synth::{Totals, Traffic, Truth};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Settings of the demo.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// How long the simulator publishes.
    pub duration: Duration,
    /// Simulated messages per second.
    pub rate: f64,
    /// Fleet-wide partition count.
    pub partition_count: u32,
    /// Simulator seed.
    pub seed: u64,
    /// Where the logger serves /metrics.
    pub metrics_addr: SocketAddr,
}

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// No database.
    #[error("database: {0}")]
    Database(String),
    /// The logger failed.
    #[error("logger: {0}")]
    Pipeline(#[from] bid_logger::pipeline::PipelineError),
    /// The simulator failed.
    #[error("simulator: {0}")]
    Simulate(#[from] simulate::SimulateError),
    /// The warehouse does not match the truth.
    #[error("verification failed: {0}")]
    Mismatch(String),
}

fn db_err(e: impl std::fmt::Display) -> DemoError {
    DemoError::Database(e.to_string())
}

/// Runs the demo, printing its progress and report on stdout.
pub async fn run(cfg: DemoConfig) -> Result<(), DemoError> {
    println!("bid-logger demo: simulator → ZeroMQ → bid-logger → PostgreSQL, for {:?}\n", cfg.duration);

    // 1. database
    let (cluster, server_url) = match std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) {
        Some(url) => {
            println!("[1/5] database: DATABASE_URL is set ({})", mask_database_url(&url));
            (None, url)
        }
        None => {
            println!("[1/5] database: DATABASE_URL not set; starting a throwaway PostgreSQL (initdb, pg_ctl)…");
            let pg = tokio::task::spawn_blocking(TempPostgres::start).await.expect("join").map_err(db_err)?;
            let url = pg.url();
            println!("      running on 127.0.0.1:{} (removed when the demo ends)", pg.port());
            (Some(pg), url)
        }
    };
    let db_name = format!("bid_logger_demo_{}", bid_logger_core::clock::now_ms() / 1000);
    let admin = connect(&server_url).await?;
    admin
        .batch_execute(&format!("CREATE DATABASE {db_name}"))
        .await
        .map_err(|e| db_err(format!("cannot create database {db_name} (needs CREATEDB): {e}")))?;
    let db_url = with_dbname(&server_url, &db_name)?;
    println!("      fresh database `{db_name}`");

    // 2. logger
    let port = crate::free_port().map_err(db_err)?;
    let endpoint = format!("tcp://127.0.0.1:{port}");
    let settings = Settings {
        connect: Some(vec![endpoint.clone()]),
        database_url: Some(db_url.clone()),
        partition_count: Some(cfg.partition_count),
        metrics_addr: Some(cfg.metrics_addr.to_string()),
        instance_id: Some("demo".into()),
        ..Default::default()
    };
    let config = settings.resolve().map_err(|e| DemoError::Mismatch(e.to_string()))?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let progress = Arc::new(bid_logger::telemetry::Progress::default());
    let signals = bid_logger::pipeline::Signals::install()?;
    let logger = tokio::spawn(bid_logger::pipeline::run(config, progress.clone(), signals, async {
        let _ = stop_rx.await;
    }));
    println!("[2/5] logger: subscribed to {endpoint}; metrics at http://{}/metrics", cfg.metrics_addr);

    // 3. simulator
    println!("[3/5] simulator: {} msg/s for {:?} over {} partitions", cfg.rate, cfg.duration, cfg.partition_count);
    let sim_config = SimulateConfig {
        bind: vec![endpoint],
        traffic: Traffic {
            partition_count: cfg.partition_count,
            seed: cfg.seed,
            late_fraction: 0.02,
            ..Default::default()
        },
        rate: Some(cfg.rate),
        duration: Some(cfg.duration),
        wait_for_subscribers: Some(Duration::from_secs(20)),
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        ..Default::default()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let sim = tokio::task::spawn_blocking(move || simulate::run(&sim_config, &stop)).await.expect("join")?;
    let by_type: Vec<String> = sim.by_type.iter().map(|(t, n)| format!("{t} {n}")).collect();
    println!("      sent {} messages in {:.1} s: {}", sim.sent, sim.elapsed.as_secs_f64(), by_type.join(", "));

    // 4. graceful stop once everything sent has been received
    let deadline = Instant::now() + Duration::from_secs(15);
    while progress.messages_received() < sim.sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("[4/5] stopping the logger gracefully (flushes everything it accepted)…");
    let _ = stop_tx.send(());
    let summary = logger.await.expect("join")?;
    println!(
        "      received {}, accepted {}, invalid {}, written {}, unwritten {}",
        summary.ingest.received,
        summary.ingest.accepted,
        summary.ingest.invalid,
        summary.sink.events_written,
        summary.sink.events_unwritten
    );

    // 5. verify and report
    let client = connect(&db_url).await?;
    verify(&client, &sim.truth).await?;
    println!(
        "[5/5] verified: all five rollup tables equal the simulator's exact totals ({} events)\n",
        sim.truth.events
    );
    report(&client).await?;
    if cluster.is_some() {
        println!("The throwaway PostgreSQL is removed now; set DATABASE_URL to keep the data and query it yourself.");
    } else {
        println!("Query it yourself: psql '{}'", mask_database_url(&db_url));
    }
    Ok(())
}

/// The default rollup tables and their grains in minutes.
pub const DEFAULT_TABLES: [(&str, i64); 5] = [
    ("rollup_minute", 1),
    ("rollup_hour", 60),
    ("rollup_day", 1440),
    ("rollup_exchange_minute", 1),
    ("rollup_exchange_hour", 60),
];

/// Compares every default table with the truth: totals per event type and
/// per (bucket, event type), and for the exchange tables per (exchange,
/// event type).
pub async fn verify(client: &tokio_postgres::Client, truth: &Truth) -> Result<(), DemoError> {
    for (table, grain) in DEFAULT_TABLES {
        let sql = format!(
            "SELECT (extract(epoch FROM bucket) / 60)::bigint, event_type, sum(events)::bigint,
                    sum(attributed_events)::bigint, sum(price_micros)::bigint, sum(revenue_micros)::bigint
             FROM {table} GROUP BY 1, 2"
        );
        let mut got: BTreeMap<(i64, String), Totals> = BTreeMap::new();
        for r in client.query(&sql, &[]).await.map_err(db_err)? {
            got.insert((r.get(0), r.get(1)), totals(&r, 2));
        }
        let mut want: BTreeMap<(i64, String), Totals> = BTreeMap::new();
        for ((m, t), v) in &truth.by_minute {
            want.entry((m - m.rem_euclid(grain), t.to_string())).or_default().add_totals(v);
        }
        if got != want {
            let differing = want.iter().filter(|(k, v)| got.get(*k) != Some(v)).count()
                + got.keys().filter(|k| !want.contains_key(*k)).count();
            return Err(DemoError::Mismatch(format!(
                "{table}: {differing} of {} (bucket, event type) totals differ",
                want.len()
            )));
        }
        if table.starts_with("rollup_exchange") {
            let sql = format!(
                "SELECT exchange::text, event_type, sum(events)::bigint, sum(attributed_events)::bigint,
                        sum(price_micros)::bigint, sum(revenue_micros)::bigint FROM {table} GROUP BY 1, 2"
            );
            let mut got: BTreeMap<(String, String), Totals> = BTreeMap::new();
            for r in client.query(&sql, &[]).await.map_err(db_err)? {
                got.insert((r.get(0), r.get(1)), totals(&r, 2));
            }
            let want: BTreeMap<(String, String), Totals> =
                truth.by_exchange.iter().map(|((x, t), v)| ((x.clone(), t.to_string()), *v)).collect();
            if got != want {
                return Err(DemoError::Mismatch(format!("{table} per exchange: expected {want:?}, found {got:?}")));
            }
        }
    }
    Ok(())
}

fn totals(r: &tokio_postgres::Row, from: usize) -> Totals {
    Totals {
        events: r.get::<_, i64>(from) as u64,
        attributed: r.get::<_, i64>(from + 1) as u64,
        price_micros: r.get(from + 2),
        revenue_micros: r.get(from + 3),
    }
}

/// The report's queries: (title, SQL).
pub const REPORT: &[(&str, &str)] = &[
    (
        "Events per type (estimated totals)",
        "SELECT event_type, round(sum(events))::bigint AS events
FROM rollup_hour_est GROUP BY event_type ORDER BY events DESC",
    ),
    (
        "Win rate and spend by country",
        "SELECT country,
       round(sum(events) FILTER (WHERE event_type = 'bid'))::bigint AS bids,
       round(sum(events) FILTER (WHERE event_type = 'win'))::bigint AS wins,
       round((100 * sum(events) FILTER (WHERE event_type = 'win')
             / nullif(sum(events) FILTER (WHERE event_type = 'bid'), 0))::numeric, 1) AS win_rate_pct,
       round((sum(price_micros) FILTER (WHERE event_type = 'impression') / 1e6)::numeric, 2) AS spend_usd
FROM rollup_hour_est GROUP BY country ORDER BY spend_usd DESC NULLS LAST LIMIT 8",
    ),
    (
        "Win rate and spend by OS",
        "SELECT os,
       round((100 * sum(events) FILTER (WHERE event_type = 'win')
             / nullif(sum(events) FILTER (WHERE event_type = 'bid'), 0))::numeric, 1) AS win_rate_pct,
       round((sum(price_micros) FILTER (WHERE event_type = 'impression') / 1e6)::numeric, 2) AS spend_usd
FROM rollup_hour_est GROUP BY os ORDER BY spend_usd DESC NULLS LAST",
    ),
    (
        "Top campaigns by spend",
        "SELECT campaign_id, advertiser_id,
       round((sum(price_micros) FILTER (WHERE event_type = 'impression') / 1e6)::numeric, 2) AS spend_usd,
       round(sum(events) FILTER (WHERE event_type = 'install'))::bigint AS installs,
       round(sum(attributed_events) FILTER (WHERE event_type = 'install'))::bigint AS attributed_installs,
       round((sum(revenue_micros) / 1e6)::numeric, 2) AS revenue_usd
FROM rollup_hour_est WHERE campaign_id > 0
GROUP BY campaign_id, advertiser_id ORDER BY spend_usd DESC NULLS LAST LIMIT 5",
    ),
];

/// Prints each report query and its result as a table.
pub async fn report(client: &tokio_postgres::Client) -> Result<(), DemoError> {
    for (title, sql) in REPORT {
        println!("── {title}\n{sql};\n");
        let mut header: Vec<String> = Vec::new();
        let mut rows: Vec<Vec<String>> = Vec::new();
        for msg in client.simple_query(sql).await.map_err(db_err)? {
            if let tokio_postgres::SimpleQueryMessage::Row(r) = msg {
                if header.is_empty() {
                    header = r.columns().iter().map(|c| c.name().to_string()).collect();
                }
                rows.push((0..r.len()).map(|i| r.get(i).unwrap_or("").to_string()).collect());
            }
        }
        let header: Vec<&str> = header.iter().map(String::as_str).collect();
        print!("{}", bid_logger::report::aligned(&header, &rows, "  "));
        println!();
    }
    Ok(())
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, DemoError> {
    bid_logger::db::connect(url).await.map_err(|e| db_err(format!("cannot connect to {}: {e}", mask_database_url(url))))
}

/// `url` with its database replaced by `db` (URL or key-value form).
pub fn with_dbname(url: &str, db: &str) -> Result<String, DemoError> {
    if url.contains("://") {
        let (head, query) = url.split_once('?').map_or((url, None), |(h, q)| (h, Some(q)));
        let scheme_end = head.find("://").expect("checked") + 3;
        let base = match head[scheme_end..].find('/') {
            Some(i) => &head[..scheme_end + i],
            None => head,
        };
        Ok(match query {
            Some(q) => format!("{base}/{db}?{q}"),
            None => format!("{base}/{db}"),
        })
    } else {
        Ok(format!("{url} dbname={db}"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn database_names_are_replaced() {
        assert_eq!(super::with_dbname("postgres://u@h:5/x", "d").unwrap(), "postgres://u@h:5/d");
        assert_eq!(super::with_dbname("postgres://u@h:5", "d").unwrap(), "postgres://u@h:5/d");
        assert_eq!(
            super::with_dbname("postgresql://u@h/x?sslmode=disable", "d").unwrap(),
            "postgresql://u@h/d?sslmode=disable"
        );
        assert_eq!(super::with_dbname("host=h user=u", "d").unwrap(), "host=h user=u dbname=d");
    }
}
