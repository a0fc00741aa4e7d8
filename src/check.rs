//! `bid-logger check-config --online`: what the configuration reaches,
//! tried before a start. It connects to PostgreSQL (with the TLS settings
//! of the URL), reads which migrations are applied and whether the role may
//! apply the rest and write every table, and tries each publisher
//! endpoint's address, saying in one line per problem what is wrong.

use std::time::Duration;

use crate::config::{mask_database_url, Config};
use crate::db;

/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// One thing checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Whether it stands in the way of a start.
    pub problem: bool,
    /// One line: what was checked and what was found.
    pub line: String,
}

fn ok(line: impl Into<String>) -> Finding {
    Finding { problem: false, line: line.into() }
}

fn problem(line: impl Into<String>) -> Finding {
    Finding { problem: true, line: line.into() }
}

/// Checks the database and every `connect` endpoint of `config`.
pub async fn online(config: &Config) -> Vec<Finding> {
    let mut findings = database(config).await;
    for endpoint in &config.ingest.connect {
        findings.push(endpoint_reachable(endpoint).await);
    }
    findings
}

async fn database(config: &Config) -> Vec<Finding> {
    let url = &config.sink.database_url;
    let masked = mask_database_url(url);
    let client = match tokio::time::timeout(PROBE_TIMEOUT * 2, db::connect(url)).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => return vec![problem(format!("database {masked}: cannot connect: {e}"))],
        Err(_) => return vec![problem(format!("database {masked}: no answer in {:?}", PROBE_TIMEOUT * 2))],
    };
    let mut findings = Vec::new();
    match client.query_one(SESSION, &[]).await {
        Ok(row) => {
            let (version, tls): (String, Option<String>) = (row.get(0), row.get(1));
            let tls = tls.map_or_else(|| "without TLS".to_string(), |v| format!("over {v}"));
            findings.push(ok(format!("database {masked}: connected {tls}, PostgreSQL {version}")));
        }
        Err(e) => findings.push(problem(format!("database {masked}: {}", db::cause_of(&e)))),
    }
    findings.extend(migrations(&client).await);
    let live: Vec<String> = config.sink.tables.iter().flat_map(|t| [t.log_table(), t.live_table()]).collect();
    findings.push(autovacuum(&client, &live).await);
    // What a flush and a fold do with each table (docs/postgres.md, grants).
    let mut tables: Vec<String> = Vec::new();
    let mut needs: Vec<&str> = Vec::new();
    for t in &config.sink.tables {
        tables.extend([t.merged.clone(), t.recent_table(), t.live_table(), t.log_table()]);
        needs.extend([
            "SELECT,INSERT,UPDATE",
            "SELECT,INSERT,UPDATE,DELETE",
            "SELECT,INSERT,DELETE",
            "SELECT,INSERT,DELETE",
        ]);
    }
    tables.extend([
        "bid_logger_flush_ledger".to_string(),
        "events_sample".to_string(),
        crate::db::tables::BOUNDARY_TABLE.to_string(),
    ]);
    needs.extend(["SELECT,INSERT,DELETE", "INSERT", "SELECT,INSERT,UPDATE"]);
    match client.query(GRANTS, &[&tables, &needs]).await {
        Ok(rows) => {
            for row in rows {
                let (table, allowed, needed): (String, bool, String) = (row.get(0), row.get(1), row.get(2));
                if !allowed {
                    findings.push(problem(format!(
                        "database: the role may not {} on {table} (see docs/postgres.md, grants)",
                        needed.replace(',', ", ")
                    )));
                }
            }
        }
        Err(e) => findings.push(problem(format!("database: reading the grants: {}", db::cause_of(&e)))),
    }
    findings
}

/// Whether autovacuum runs on the delta logs and live tables: every batch
/// appends to them and every fold deletes what it took, so without it their dead rows
/// pile up and each fold's `DELETE` scans them all (docs/postgres.md,
/// "Fillfactor and autovacuum"). A warning, not a problem: it slows the
/// folds over hours, it does not stop a start.
async fn autovacuum(client: &tokio_postgres::Client, live: &[String]) -> Finding {
    let row = match client.query_one(AUTOVACUUM, &[&live]).await {
        Ok(row) => row,
        Err(e) => return ok(format!("database: warning: reading the autovacuum settings: {}", db::cause_of(&e))),
    };
    let (on, off): (bool, Vec<String>) = (row.get(0), row.get(1));
    let why = "their dead rows pile up and every fold scans them (see docs/postgres.md, autovacuum)";
    if !on {
        ok(format!("database: warning: autovacuum is off on the server: the delta logs and live tables are never vacuumed, so {why}"))
    } else if !off.is_empty() {
        ok(format!("database: warning: autovacuum is off for {}: {why}", off.join(", ")))
    } else {
        ok("database: autovacuum on")
    }
}

/// The server's `autovacuum`, and those of the tables `$1` whose own
/// `autovacuum_enabled` is false.
const AUTOVACUUM: &str = "SELECT current_setting('autovacuum') = 'on',
       coalesce(array_agg(relname::text ORDER BY relname) FILTER (
           WHERE EXISTS (SELECT 1 FROM unnest(reloptions) o WHERE o ~* '^autovacuum_enabled=(false|off|no|n|f|0)$')), '{}')
FROM pg_class WHERE relkind = 'r' AND oid = ANY(SELECT to_regclass(t) FROM unnest($1::text[]) t)";

/// The server's version and the session's TLS version, if any.
const SESSION: &str = "SELECT current_setting('server_version'),
       (SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND ssl)";

/// Per existing table of `$1`: whether the role holds every privilege of
/// `$2` (comma-separated) on it. (`has_table_privilege` with a list is true
/// when *any* is held: each is asked on its own.)
const GRANTS: &str = "SELECT t, bool_and(has_table_privilege(t, p)), min(ps)
FROM unnest($1::text[], $2::text[]) AS x(t, ps), unnest(string_to_array(ps, ',')) p
WHERE to_regclass(t) IS NOT NULL GROUP BY t ORDER BY t";

async fn migrations(client: &tokio_postgres::Client) -> Vec<Finding> {
    let known: Vec<i32> = db::migrate::MIGRATIONS.iter().map(|m| m.0).collect();
    let newest_known = known.iter().copied().max().unwrap_or(0);
    let applied: Result<Vec<i32>, _> = async {
        let exists: bool =
            client.query_one("SELECT to_regclass('bid_logger_migrations') IS NOT NULL", &[]).await?.get(0);
        if !exists {
            return Ok(Vec::new());
        }
        let rows = client.query("SELECT version FROM bid_logger_migrations", &[]).await?;
        Ok::<_, tokio_postgres::Error>(rows.iter().map(|r| r.get(0)).collect())
    }
    .await;
    let applied = match applied {
        Ok(a) => a,
        Err(e) => return vec![problem(format!("database: reading the applied migrations: {}", db::cause_of(&e)))],
    };
    if let Some(newer) = applied.iter().copied().filter(|&v| v > newest_known).max() {
        return vec![problem(format!(
            "database: migration {newer:04} is applied, newer than this binary knows ({newest_known:04}): run a \
             release at least as new as the one that applied it"
        ))];
    }
    let pending = known.iter().filter(|v| !applied.contains(v)).count();
    if pending == 0 {
        return vec![ok(format!("database: schema up to date ({} migrations)", known.len()))];
    }
    let may_create: bool =
        match client.query_one("SELECT has_database_privilege(current_database(), 'CREATE')", &[]).await {
            Ok(row) => row.get(0),
            Err(e) => return vec![problem(format!("database: reading the grants: {}", db::cause_of(&e)))],
        };
    if may_create {
        vec![ok(format!("database: {pending} migrations to apply (`run` and `migrate` apply them)"))]
    } else {
        vec![problem(format!(
            "database: {pending} migrations to apply, and the role may not CREATE in the database: run `bid-logger \
             migrate` as the owner first"
        ))]
    }
}

/// Whether a publisher endpoint's address answers: a TCP connection for
/// `tcp://`, the socket file for `ipc://`.
async fn endpoint_reachable(endpoint: &str) -> Finding {
    let Some((scheme, address)) = endpoint.split_once("://") else {
        return problem(format!("endpoint {endpoint}: not a ZeroMQ endpoint (tcp://HOST:PORT or ipc://PATH)"));
    };
    match scheme {
        "tcp" => {
            let probe = async {
                let addrs: Vec<_> = tokio::net::lookup_host(address).await?.collect();
                let mut last = std::io::Error::other("the name resolves to no address");
                for addr in addrs {
                    match tokio::net::TcpStream::connect(addr).await {
                        Ok(_) => return Ok(addr),
                        Err(e) => last = e,
                    }
                }
                Err(last)
            };
            match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
                Ok(Ok(addr)) => ok(format!("endpoint {endpoint}: {addr} accepts connections")),
                Ok(Err(e)) => problem(format!("endpoint {endpoint}: {e}")),
                Err(_) => problem(format!("endpoint {endpoint}: no answer in {PROBE_TIMEOUT:?}")),
            }
        }
        "ipc" if std::path::Path::new(address).exists() => ok(format!("endpoint {endpoint}: the socket file exists")),
        "ipc" => problem(format!("endpoint {endpoint}: no socket file at {address} (is the publisher running?)")),
        _ => ok(format!("endpoint {endpoint}: not probed ({scheme})")),
    }
}
