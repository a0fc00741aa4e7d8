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
