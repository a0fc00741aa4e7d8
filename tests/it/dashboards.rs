//! Grafana dashboards and Prometheus alerts, checked for real: every PromQL
//! expression against a real Prometheus scraping a running logger fed by the
//! simulator, every SQL panel against a real PostgreSQL holding rollups the
//! logger wrote, and the alert rules with `promtool test rules`.

use crate::support::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn dashboards() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root().join("grafana/dashboards")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
            out.push((path.file_name().unwrap().to_string_lossy().into_owned(), v));
        }
    }
    assert!(out.len() >= 2, "expected the operations and warehouse dashboards");
    out
}

fn panels(dash: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner.iter());
        }
    }
    out
}

/// The datasource uid `ds` names in `dash`: a `${variable}` is the
/// datasource variable's default (what a fresh Grafana selects).
fn uid_of(dash: &Value, ds: &Value) -> Option<String> {
    let uid = ds["uid"].as_str()?;
    let Some(name) = uid.strip_prefix("${").and_then(|u| u.strip_suffix('}')) else {
        return Some(uid.to_string());
    };
    let var = dash["templating"]["list"].as_array()?.iter().find(|v| v["name"] == name && v["type"] == "datasource")?;
    var["current"]["value"].as_str().map(str::to_string)
}

/// (datasource uid, query text) of every target.
fn targets(dash: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(dash) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let uid = uid_of(dash, &t["datasource"]).or_else(|| uid_of(dash, &p["datasource"])).unwrap();
            let q = t["expr"].as_str().or(t["rawSql"].as_str()).unwrap_or_default().to_string();
            out.push((uid, q));
        }
    }
    out
}

fn provisioned_uids() -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join("grafana/provisioning/datasources/bid-logger.yaml")).unwrap();
    text.lines().filter_map(|l| l.trim().strip_prefix("uid:")).map(|u| u.trim().to_string()).collect()
}

#[test]
fn dashboards_are_well_formed_and_use_only_provisioned_datasources() {
    let uids = provisioned_uids();
    assert_eq!(uids.len(), 2, "{uids:?}");
    assert!(root().join("grafana/provisioning/dashboards/bid-logger.yaml").is_file());
    for (name, d) in dashboards() {
        assert!(d["schemaVersion"].as_i64().unwrap() >= 39, "{name}: schemaVersion");
        assert!(d.get("__inputs").is_none(), "{name}: __inputs placeholders");
        let ids: Vec<i64> = panels(&d).iter().map(|p| p["id"].as_i64().unwrap()).collect();
        let unique: BTreeSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "{name}: duplicate panel ids {ids:?}");
        for p in panels(&d) {
            if p["type"] == "row" {
                continue;
            }
            let uid = uid_of(&d, &p["datasource"]).unwrap_or_else(|| panic!("{name}: panel without datasource"));
            assert!(uids.contains(&uid), "{name}: panel {} uses unprovisioned datasource {uid}", p["id"]);
            assert!(!p["targets"].as_array().unwrap().is_empty(), "{name}: panel {} has no query", p["id"]);
            let unit = p["fieldConfig"]["defaults"]["unit"].as_str().unwrap_or_default();
            assert!(!unit.is_empty(), "{name}: panel {:?} has no unit", p["title"]);
            let description = p["description"].as_str().unwrap_or_default();
            assert!(description.len() > 20, "{name}: panel {:?} has no description", p["title"]);
        }
        for (uid, q) in targets(&d) {
            assert!(uids.contains(&uid), "{name}: target uses {uid}");
            assert!(!q.trim().is_empty(), "{name}: empty query");
        }
        for v in d["templating"]["list"].as_array().unwrap() {
            if v["type"] == "datasource" {
                let default = v["current"]["value"].as_str().unwrap_or_default();
                assert!(uids.contains(default), "{name}: datasource variable defaults to {default}");
                continue;
            }
            assert!(uids.contains(&uid_of(&d, &v["datasource"]).unwrap()), "{name}: variable datasource");
        }
    }
}

fn promtool() -> &'static str {
    match Command::new("promtool").arg("--version").output() {
        Ok(o) if o.status.success() => "promtool",
        _ => panic!("promtool is missing: run scripts/setup (Debian package `prometheus`)"),
    }
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = root().join("prometheus");
    for args in [
        vec!["check", "rules", "alerts.yml"],
        vec!["test", "rules", "alerts.test.yml"],
        vec!["check", "config", "prometheus.yml"],
    ] {
        let out = Command::new(promtool()).args(&args).current_dir(&dir).output().unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The alert rules' expressions, with comparisons turned into `bool` ones so
/// that they return a series whether or not the alert would fire.
fn rule_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("prometheus/alerts.yml")).unwrap();
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim();
        if let Some(e) = t.strip_prefix("expr:") {
            let mut expr = e.trim().trim_start_matches('>').trim().to_string();
            while let Some(next) = lines.peek() {
                let n = next.trim();
                if n.is_empty() || n.contains(':') && !n.contains('[') && !n.contains('{') {
                    break;
                }
                expr.push(' ');
                expr.push_str(n);
                lines.next();
            }
            out.push(expr);
        }
    }
    let alerts = text.lines().filter(|l| l.trim().starts_with("- alert:")).count();
    assert_eq!(out.len(), alerts, "one expression per alert: {out:?}");
    out.iter()
        .map(|e| {
            let mut s = String::new();
            let toks: Vec<&str> = e.split(' ').collect();
            for (i, tok) in toks.iter().enumerate() {
                s.push_str(tok);
                if matches!(*tok, "==" | "!=" | ">=" | "<=" | ">" | "<") && i + 1 < toks.len() {
                    s.push_str(" bool");
                }
                s.push(' ');
            }
            s.trim().to_string()
        })
        .collect()
}

fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("bid_logger_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        out.insert(expr[start..end].to_string());
        i = end;
    }
    out
}

struct Prometheus {
    child: Child,
    port: u16,
    _dir: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

fn start_prometheus(target_port: u16) -> Prometheus {
    promtool();
    let dir = std::env::temp_dir().join(format!("bl-prom-{}", rand::random::<u32>()));
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: bid-logger\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus is missing: run scripts/setup (Debian package `prometheus`)");
    Prometheus { child, port, _dir: dir }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn prom_query(port: u16, expr: &str) -> Value {
    let body = http_get(port, &format!("/api/v1/query?query={}", url_encode(expr))).unwrap_or_default();
    let json = body.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    serde_json::from_str(json).unwrap_or(Value::Null)
}

/// Each value as a PostgreSQL literal, as Grafana's datasource quotes a
/// multi-value variable's selection.
fn quoted(values: &[String]) -> Vec<String> {
    values.iter().map(|v| format!("'{}'", v.replace('\'', "''"))).collect()
}

/// Grafana's PostgreSQL macros, expanded the way its datasource does
/// (`vars`: each variable's values as they are inserted; `interval_ms`:
/// `$__interval_ms`, the range over the points a panel is wide).
fn expand_sql(sql: &str, vars: &[(String, Vec<String>)], from: &str, to: &str, interval_ms: i64) -> String {
    let mut s = sql.to_string();
    s = s.replace("$__interval_ms", &interval_ms.to_string());
    for (unit, secs) in [("'1m'", 60), ("'1h'", 3600)] {
        s = s.replace(
            &format!("$__timeGroupAlias(bucket, {unit})"),
            &format!("floor(extract(epoch from bucket)/{secs})*{secs} AS \"time\""),
        );
    }
    s = s.replace("$__timeFilter(bucket)", &format!("bucket BETWEEN '{from}' AND '{to}'"));
    s = s.replace("$__timeFrom()", &format!("'{from}'")).replace("$__timeTo()", &format!("'{to}'"));
    for (name, values) in vars {
        s = s.replace(&format!("${name}"), &values.join(","));
    }
    assert!(!s.contains('$'), "unexpanded macro or variable in:\n{s}");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_query_and_alert_expression_returns_data_from_a_running_logger() {
    let db = fresh_database("dash").await;
    let sim_port = free_port();
    let endpoint = format!("tcp://127.0.0.1:{sim_port}");
    let simulator = Simulator::start(&endpoint, |c| {
        c.rate = Some(6000.0);
        c.duration = Some(Duration::from_secs(40));
        c.traffic.invalid_fraction = 0.01;
        c.traffic.late_fraction = 0.05;
        c.traffic.seed = 3;
        c.restart_every = Some(20_000);
    });
    // A fleet group of one (it owns every partition), so that the fleet
    // panels and alerts have their series too; with the price distribution
    // and the bid landscape the prices dashboard reads, as the example
    // configuration declares them.
    let config = rollup_config("dash", &example_price_tables());
    let args = [
        "--connect",
        &endpoint,
        "--flush-interval",
        "500ms",
        "--max-os-values",
        "2",
        "--group",
        "dash",
        "--config",
        &config,
    ];
    let logger = Logger::start(&db, &args);
    let prometheus = start_prometheus(logger.metrics_port);

    // Let Prometheus gather enough samples for rate() windows.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = prom_query(prometheus.port, "count_over_time(bid_logger_events_flushed_total[1m])");
        let samples = r["data"]["result"][0]["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        if samples >= 12.0 && logger.metric("bid_logger_events_flushed_total", "") > 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "Prometheus did not collect samples from the logger");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let exported = logger.metrics_text();

    let mut exprs: Vec<(String, String)> = Vec::new();
    for (name, d) in dashboards() {
        for (uid, q) in targets(&d) {
            if uid == "bid-logger-prometheus" {
                exprs.push((
                    name.clone(),
                    q.replace("$__rate_interval", "10s").replace("$instance", ".*").replace("$job", ".*"),
                ));
            }
        }
        for v in d["templating"]["list"].as_array().unwrap() {
            if uid_of(&d, &v["datasource"]).as_deref() == Some("bid-logger-prometheus") {
                // label_values(metric, label) is Grafana's; check the metric has the label.
                let q = v["query"]["query"].as_str().unwrap().replace("$job", ".*");
                let inner = q.trim_start_matches("label_values(").trim_end_matches(')');
                let (metric, label) = inner.split_once(',').unwrap();
                exprs.push((name.clone(), format!("count by ({}) ({})", label.trim(), metric.trim())));
            }
        }
    }
    for e in rule_exprs() {
        exprs.push(("alerts.yml".into(), e));
    }
    let mut failures = Vec::new();
    for (source, expr) in &exprs {
        for m in metric_names(expr) {
            if !exported.lines().any(|l| l.starts_with(&m) && l[m.len()..].starts_with(['{', ' '])) {
                failures.push(format!("{source}: metric {m} is not exported by the logger"));
            }
        }
        let r = prom_query(prometheus.port, expr);
        let empty = r["data"]["result"].as_array().is_none_or(|a| a.is_empty());
        if r["status"] != "success" {
            failures.push(format!("{source}: `{expr}` failed: {r}"));
        } else if let Some(inner) = expr.strip_prefix("absent(").and_then(|e| e.strip_suffix(')')) {
            // absent() has data only when its series is missing: here it must be there.
            if !empty || prom_query(prometheus.port, inner)["data"]["result"].as_array().is_none_or(|a| a.is_empty()) {
                failures.push(format!("{source}: `{inner}` is missing while a logger is scraped"));
            }
        } else if empty {
            failures.push(format!("{source}: `{expr}` returned no data"));
        }
    }
    assert!(failures.is_empty(), "{} of {} expressions failed:\n{}", failures.len(), exprs.len(), failures.join("\n"));

    // SQL panels on the rollups the logger has written.
    simulator.stop();
    logger.stop_ok();
    let client = connect(&db).await;
    fill_history(&client).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    // Grafana's default range and a long one, as a panel 1 000 points wide
    // asks for them: (from, to, $__interval_ms, how long)
    let ranges = [
        (rfc3339(&client, now - 6 * 3600).await, rfc3339(&client, now + 60).await, 6 * 3600, "6h"),
        (rfc3339(&client, now - 90 * 86_400).await, rfc3339(&client, now + 60).await, 90 * 86_400, "90d"),
    ];
    let mut checked = 0;
    for (name, d) in dashboards() {
        let mut vars = Vec::new();
        for v in d["templating"]["list"].as_array().unwrap() {
            if uid_of(&d, &v["datasource"]).as_deref() != Some("bid-logger-postgres") {
                continue;
            }
            let q = v["query"].as_str().unwrap();
            let values: Vec<String> = client.query(q, &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
            assert!(!values.is_empty(), "{name}: variable {} has no values", v["name"]);
            let all = v["allValue"].as_str().map(str::to_string);
            vars.push((v["name"].as_str().unwrap().to_string(), values, all));
        }
        // longest names first, so $campaign is not mistaken for a prefix of another
        vars.sort_by_key(|(n, _, _)| std::cmp::Reverse(n.len()));
        // Every value selected one by one, and "All" (Grafana inserts a
        // variable's custom allValue as it is, unquoted): the same rows.
        let every: Vec<(String, Vec<String>)> = vars.iter().map(|(n, v, _)| (n.clone(), quoted(v))).collect();
        let all: Vec<(String, Vec<String>)> =
            vars.iter().map(|(n, v, a)| (n.clone(), a.clone().map_or_else(|| quoted(v), |a| vec![a]))).collect();
        for (uid, q) in targets(&d) {
            if uid != "bid-logger-postgres" {
                continue;
            }
            for (from, to, interval_ms, range) in &ranges {
                let mut results = Vec::new();
                for selection in [&every, &all] {
                    let sql = expand_sql(&q, selection, from, to, *interval_ms);
                    let rows =
                        client.query(&sql, &[]).await.unwrap_or_else(|e| panic!("{name}: SQL failed: {e}\n{sql}"));
                    assert!(!rows.is_empty(), "{name}: SQL returned no rows:\n{sql}");
                    results.push(rows.len());
                    checked += 1;
                    // A time series covers the whole range, in a number of
                    // points a browser draws: the tier that still keeps the
                    // range, grouped to Grafana's interval.
                    if let Some(at) = rows[0].columns().iter().position(|c| c.name() == "time") {
                        let times: BTreeSet<std::time::SystemTime> = rows.iter().map(|r| r.get(at)).collect();
                        let oldest = times.first().unwrap().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
                        let span = now - oldest as i64;
                        let (least, most) = if *range == "6h" { (5 * 3600, 400) } else { (60 * 86_400, 1500) };
                        assert!(
                            span >= least && times.len() <= most,
                            "{name}, {range}: {} points, the oldest {span} s ago (wanted at most {most}, the oldest \
                             at least {least} s ago):\n{sql}",
                            times.len()
                        );
                    }
                }
                assert_eq!(results[0], results[1], "{name}: \"All\" and every value selected differ:\n{q}");
            }
        }
    }
    // the warehouse's 12 panels and the prices' 5, over two ranges, each selection
    assert!(checked >= 2 * 2 * (12 + 5), "only {checked} SQL panel queries checked");
}

/// History in every rollup table, as a warehouse that has run for months
/// holds it: 40 rows of the fullest bucket (every event type) copied back over 400 minutes
/// (minute tables), 95 days (hour and day tables), into ranges created the
/// way the logger names them. The price tables by exchange alone then get
/// what the price tables by country and OS hold beyond them, summed: the
/// dashboard reads either for the same answer.
async fn fill_history(client: &tokio_postgres::Client) {
    // (table, bucket, buckets back, range span, range name format, summed from)
    let tables = [
        ("rollup_minute", "1 minute", 400, "hour", "YYYYMMDDHH24", None),
        ("rollup_exchange_minute", "1 minute", 400, "hour", "YYYYMMDDHH24", None),
        ("rollup_hour", "1 hour", 95 * 24, "month", "YYYYMM", None),
        ("rollup_exchange_hour", "1 hour", 95 * 24, "month", "YYYYMM", None),
        ("rollup_day", "1 day", 95, "year", "YYYY", None),
        ("price_hour", "1 hour", 95 * 24, "month", "YYYYMM", None),
        ("price_day", "1 day", 95, "year", "YYYY", None),
        ("price_exchange_hour", "1 hour", 95 * 24, "month", "YYYYMM", Some("price_hour")),
        ("price_exchange_day", "1 day", 95, "year", "YYYY", Some("price_day")),
        ("landscape_hour", "1 hour", 95 * 24, "month", "YYYYMM", None),
        ("landscape_day", "1 day", 95, "year", "YYYY", None),
    ];
    for (view, step, back, span, format, summed_from) in tables {
        // the history goes into the merged table, under the view
        let table = format!("{view}_merged");
        let ranges = format!(
            "SELECT bid_logger_create_range('{table}', '{table}_p' || to_char(r, '{format}'), r AT TIME ZONE 'UTC',
                 (r + interval '1 {span}') AT TIME ZONE 'UTC', true)
             FROM generate_series(date_trunc('{span}', (now() - {back} * interval '{step}') AT TIME ZONE 'UTC'),
                                  date_trunc('{span}', now() AT TIME ZONE 'UTC'), interval '1 {span}') r
             WHERE to_regclass('{table}_p' || to_char(r, '{format}')) IS NULL"
        );
        client.execute(&ranges, &[]).await.unwrap_or_else(|e| panic!("{table}: {e}\n{ranges}"));
        let columns: String = client
            .query_one(
                "SELECT string_agg(column_name, ', ' ORDER BY ordinal_position) FROM information_schema.columns
                 WHERE table_name = $1 AND column_name <> 'bucket'",
                &[&table.as_str()],
            )
            .await
            .unwrap()
            .get(0);
        let copy = match summed_from {
            None => format!(
                "INSERT INTO {table} (bucket, {columns})
                 SELECT r.bucket - k * interval '{step}', {columns}
                 FROM (SELECT * FROM {table}
                       WHERE bucket = (SELECT bucket FROM {table} GROUP BY 1 ORDER BY count(*) DESC LIMIT 1)
                       ORDER BY row_number() OVER (PARTITION BY event_type ORDER BY events DESC) LIMIT 40) r,
                      generate_series(1, {back}) k
                 ON CONFLICT DO NOTHING"
            ),
            Some(from) => format!(
                "INSERT INTO {table} AS m (bucket, event_type, exchange, price_bucket, sample_ppm,
                                           events, attributed_events, price_micros, revenue_micros)
                 SELECT bucket, event_type, exchange, price_bucket, sample_ppm,
                        s.events - coalesce(e.events, 0), s.attributed - coalesce(e.attributed_events, 0),
                        s.price - coalesce(e.price_micros, 0), s.revenue - coalesce(e.revenue_micros, 0)
                 FROM (SELECT bucket, event_type, exchange, price_bucket, sample_ppm, sum(events) AS events,
                              sum(attributed_events) AS attributed, sum(price_micros) AS price,
                              sum(revenue_micros) AS revenue
                       FROM {from} GROUP BY 1, 2, 3, 4, 5) s
                 LEFT JOIN {view} e USING (bucket, event_type, exchange, price_bucket, sample_ppm)
                 WHERE (s.events, s.attributed, s.price, s.revenue)
                       IS DISTINCT FROM (e.events, e.attributed_events, e.price_micros, e.revenue_micros)
                 ON CONFLICT ON CONSTRAINT {table}_pkey DO UPDATE SET
                     events = m.events + excluded.events, attributed_events = m.attributed_events + excluded.attributed_events,
                     price_micros = m.price_micros + excluded.price_micros,
                     revenue_micros = m.revenue_micros + excluded.revenue_micros"
            ),
        };
        let rows = client.execute(&copy, &[]).await.unwrap_or_else(|e| panic!("{table}: {e}\n{copy}"));
        assert!(rows >= back, "{table}: {rows} rows of history");
    }
}

/// The price and landscape sections of `bid-logger.toml`, uncommented: the
/// tables the prices dashboard reads.
fn example_price_tables() -> String {
    let example = std::fs::read_to_string(root().join("bid-logger.toml")).unwrap();
    let mut out = String::new();
    let mut inside = false;
    for line in example.lines() {
        let line = line.strip_prefix("# ").unwrap_or(line);
        if line.starts_with('[') {
            inside = line.starts_with("[rollup.price_") || line.starts_with("[rollup.landscape_");
        } else if !line.contains(" = ") {
            inside = false;
        }
        if inside {
            out += line;
            out += "\n";
        }
    }
    assert_eq!(out.matches("dimensions").count(), 6, "the six tables in bid-logger.toml:\n{out}");
    out
}

/// A Unix time as Grafana writes it into `$__timeFilter`.
async fn rfc3339(client: &tokio_postgres::Client, unix: i64) -> String {
    client
        .query_one(
            "SELECT to_char(to_timestamp($1::float8) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
            &[&(unix as f64)],
        )
        .await
        .unwrap()
        .get(0)
}

#[test]
fn grafana_readme_exists() {
    let readme = std::fs::read_to_string(root().join("grafana/README.md")).expect("grafana/README.md");
    assert!(readme.contains("provisioning"));
    assert!(Path::new(&root().join("prometheus/prometheus.yml")).is_file());
}
