//! The README stays true: every metric the logger exports is in its metrics
//! table, and every configuration key is in its configuration reference.

use std::collections::BTreeSet;

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap()
}

/// First-column backticked names of the table rows that follow `heading`.
fn table_names(text: &str, heading: &str) -> BTreeSet<String> {
    let start = text.find(heading).unwrap_or_else(|| panic!("README has no `{heading}` section"));
    text[start..]
        .lines()
        .skip(1)
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.split('|').nth(1))
        .filter_map(|cell| cell.trim().strip_prefix('`').and_then(|c| c.split('`').next()))
        .map(str::to_string)
        .collect()
}

/// The keys of the commented example configuration, those it sets and
/// those it shows commented out (`# instance-id = …`).
fn example_keys() -> BTreeSet<String> {
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/bid-logger.toml")).unwrap();
    example
        .lines()
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .filter_map(|l| l.split_once(" = ").map(|(k, _)| k.trim()))
        .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
        .map(str::to_string)
        .collect()
}

#[test]
fn every_metric_is_documented_and_every_documented_metric_exists() {
    let documented = table_names(&readme(), "## Metrics");
    let exported: BTreeSet<String> = bid_logger::telemetry::ALL.iter().map(|s| s.to_string()).collect();
    assert_eq!(documented, exported, "README metrics table vs telemetry::ALL");
}

#[test]
fn every_configuration_key_is_documented() {
    let documented = table_names(&readme(), "## Configuration reference");
    let keys = example_keys();
    assert_eq!(documented, keys, "README configuration reference vs bid-logger.toml");
}

#[test]
fn the_example_file_has_every_flag_of_run() {
    use clap::Args;
    let cmd = bid_logger::config::Settings::augment_args(clap::Command::new("run"));
    let flags: BTreeSet<String> = cmd.get_arguments().filter_map(|a| a.get_long()).map(str::to_string).collect();
    let keys = example_keys();
    assert_eq!(flags, keys, "flags of `run` vs keys of bid-logger.toml");
}

/// Every Markdown file a user reads, with its path.
fn user_docs() -> Vec<(String, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md"), root.join("RELIABILITY.md"), root.join("BENCHMARKS.md")];
    for dir in ["docs", "grafana"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
    }
    files.into_iter().map(|p| (p.display().to_string(), std::fs::read_to_string(&p).unwrap())).collect()
}

#[test]
fn nothing_a_user_reads_points_outside_the_repository() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for (path, text) in user_docs() {
        assert!(
            !text.contains("shared/spec") && !text.contains("shared/baseline"),
            "{path} points outside the repository"
        );
        // relative links ](target) must exist
        for link in text.split("](").skip(1).filter_map(|rest| rest.split(')').next()) {
            let target = link.split('#').next().unwrap();
            if target.is_empty() || target.contains("://") {
                continue;
            }
            let base = std::path::Path::new(&path).parent().unwrap();
            assert!(base.join(target).exists() || root.join(target).exists(), "{path}: broken link {link}");
        }
    }
}

#[test]
fn every_alert_has_a_runbook_section() {
    let alerts = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/prometheus/alerts.yml")).unwrap();
    let runbook = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/runbook.md")).unwrap();
    let names: Vec<&str> = alerts.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")).collect();
    let urls: Vec<&str> =
        alerts.lines().filter_map(|l| l.trim().strip_prefix("runbook_url: ")).map(|u| u.trim_matches('"')).collect();
    assert_eq!(names.len(), urls.len(), "every alert has one runbook_url");
    for (name, url) in names.iter().zip(&urls) {
        assert_eq!(*url, format!("docs/runbook.md#{}", name.to_lowercase()), "{name}");
        assert!(runbook.contains(&format!("\n## {name}\n")), "docs/runbook.md has no section for {name}");
    }
}

/// The Python publisher in docs/wire-format.md runs as printed (its FNV-1a
/// matches the spec's test vectors) and its message reaches a subscriber
/// decoded by the logger's own decoder on the right partition.
#[test]
fn the_wire_format_python_example_runs_and_its_message_decodes() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/wire-format.md")).unwrap();
    let section = doc.split("## A publisher in Python").nth(1).expect("the Python section");
    let code = section.split("```python\n").nth(1).and_then(|c| c.split("```").next()).expect("a python block");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint = format!("tcp://127.0.0.1:{port}");
    // A subscriber connected before the example publishes: the example waits
    // for it (a PUB drops messages for subscribers that are not there yet).
    let wrapped =
        code.replace("publish(\"bid\", {", "time.sleep(1.0)  # the test's subscriber joins\npublish(\"bid\", {");
    let ctx = zmq::Context::new();
    let sub = ctx.socket(zmq::SUB).unwrap();
    sub.set_subscribe(b"bid.").unwrap();
    sub.set_rcvtimeo(10_000).unwrap();
    sub.connect(&endpoint).unwrap();
    let out = std::process::Command::new("python3")
        .args(["-c", &wrapped])
        .env("ENDPOINT", &endpoint)
        .output()
        .expect("python3 (scripts/setup installs pyzmq and msgpack)");
    assert!(out.status.success(), "the example failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let frames = sub.recv_multipart(0).expect("the example's message");
    let ev = bid_logger_core::decode::decode(&frames[0], &frames[1]).expect("a valid message");
    assert_eq!(ev.partition, bid_logger_core::wire::partition_of(ev.txn, 64));
    assert_eq!((ev.campaign, ev.price), (4021, Some(1_250_000)));
}
