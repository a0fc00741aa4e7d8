//! The docs stay true: every metric the logger exports is in the metrics
//! table (docs/metrics.md), every configuration key in the configuration
//! reference (docs/configuration.md); every page is reachable from the
//! README, and no link is broken.

use std::collections::{BTreeMap, BTreeSet};

fn page(path: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// First-column backticked names of the table rows that follow `heading`.
fn table_names(text: &str, heading: &str) -> BTreeSet<String> {
    let start = text.find(heading).unwrap_or_else(|| panic!("no `{heading}` section"));
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
    // the top-level keys: those before the first (possibly commented) section
    example
        .lines()
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .take_while(|l| !l.starts_with('['))
        .filter_map(|l| l.split_once(" = ").map(|(k, _)| k.trim()))
        .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
        .map(str::to_string)
        .collect()
}

#[test]
fn every_metric_is_documented_and_every_documented_metric_exists() {
    let documented = table_names(&page("docs/metrics.md"), "## Metrics");
    let exported: BTreeSet<String> = bid_logger::telemetry::ALL.iter().map(|s| s.to_string()).collect();
    assert_eq!(documented, exported, "docs/metrics.md vs telemetry::ALL");
}

#[test]
fn every_configuration_key_is_documented() {
    let documented = table_names(&page("docs/configuration.md"), "## Configuration reference");
    let keys = example_keys();
    assert_eq!(documented, keys, "docs/configuration.md vs bid-logger.toml");
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
    let mut files = vec![
        root.join("README.md"),
        root.join("RELIABILITY.md"),
        root.join("BENCHMARKS.md"),
        root.join("ARCHITECTURE.md"),
        root.join("UPGRADING.md"),
        root.join("CHANGELOG.md"),
        root.join("scripts/README.md"),
    ];
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

/// The top-level modules of the crate whose sources are under `src`, and
/// for each the other top-level modules it names (`crate::x`).
fn module_graph(src: &std::path::Path) -> BTreeMap<String, BTreeSet<String>> {
    fn sources(path: &std::path::Path, out: &mut String) {
        if path.is_dir() {
            for entry in std::fs::read_dir(path).unwrap() {
                sources(&entry.unwrap().path(), out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push_str(&std::fs::read_to_string(path).unwrap());
        }
    }
    let mut modules = BTreeMap::new();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        if ["lib", "main"].contains(&name.as_str()) {
            continue;
        }
        let text = modules.entry(name).or_insert_with(String::new);
        sources(&path, text);
    }
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    modules
        .iter()
        .map(|(name, text)| {
            let uses = names
                .iter()
                .filter(|other| *other != name && text.contains(&format!("crate::{other}")))
                .cloned()
                .collect();
            (name.clone(), uses)
        })
        .collect()
}

/// A cycle in `graph`, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_module_graphs_of_the_core_and_the_service_have_no_cycle() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for src in [root.join("core/src"), root.join("src"), root.join("tools/src")] {
        let graph = module_graph(&src);
        assert!(graph.len() >= 4, "{}: only {} modules found", src.display(), graph.len());
        if let Some(cycle) = find_cycle(&graph) {
            panic!("{}: import cycle {}", src.display(), cycle.join(" → "));
        }
    }
    // and the crates point one way: the core names neither the service nor the tools
    let mut core = String::new();
    for entry in std::fs::read_dir(root.join("core/src")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            core.push_str(&std::fs::read_to_string(path).unwrap());
        }
    }
    assert!(
        !core.contains("bid_logger::") && !core.contains("bid_logger_tools"),
        "the core depends on nothing above it"
    );
    let manifest: toml::Table = std::fs::read_to_string(root.join("core/Cargo.toml")).unwrap().parse().unwrap();
    let deps = manifest["dependencies"].as_table().unwrap();
    assert!(deps.contains_key("rmp"), "the core's dependencies are read: {deps:?}");
    for dep in deps.keys() {
        assert!(
            !["zmq", "tokio", "postgres", "deadpool"].iter().any(|io| dep.contains(io)),
            "the core depends on {dep}"
        );
    }
}

#[test]
fn every_docs_page_is_reachable_from_the_readme_and_the_readme_stays_short() {
    let readme = page("README.md");
    assert!(readme.len() < 15_000, "the README is the front door: {} bytes", readme.len());
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".md") && name != "README.md" {
            assert!(readme.contains(&format!("(docs/{name}")), "docs/{name} is not linked from the README");
        }
    }
    for top in ["ARCHITECTURE.md", "UPGRADING.md", "RELIABILITY.md", "BENCHMARKS.md", "scripts/README.md"] {
        assert!(readme.contains(&format!("({top}")), "{top} is not linked from the README");
    }
}

#[test]
fn the_generated_parts_of_the_docs_are_what_the_code_generates() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for (page, generated) in bid_logger_tools::docs::generated() {
        let text = std::fs::read_to_string(root.join(page)).unwrap();
        let current = bid_logger_tools::docs::splice(&text, &generated).unwrap_or_else(|e| panic!("{page}: {e}"));
        if current != text {
            let differing: Vec<&str> =
                generated.lines().filter(|line| !text.lines().any(|l| l == *line)).take(3).collect();
            panic!(
                "{page} differs from what the code generates: run `cargo run -p bid-logger-tools -- docs`; \
                 lines not on the page:\n{}",
                differing.join("\n")
            );
        }
    }
}
