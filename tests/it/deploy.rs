//! What cannot run here is checked instead: `deploy/compose.yaml` (no base
//! image can be pulled on these machines) and the multi-stage `Dockerfile`.
//! Every file they mount or copy exists, every pulled image is pinned, and
//! the ports and environment agree with each other and with the logger's own
//! configuration (the real binary validates the environment).

use serde_yaml::Value;
use std::collections::BTreeMap;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn compose() -> Value {
    let text = std::fs::read_to_string(root().join("deploy/compose.yaml")).unwrap();
    serde_yaml::from_str(&text).expect("deploy/compose.yaml is YAML")
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose["services"].get(name).unwrap_or_else(|| panic!("compose has no service {name}"))
}

fn env(service: &Value) -> BTreeMap<String, String> {
    let map = service["environment"].as_mapping().cloned().unwrap_or_default();
    map.into_iter()
        .map(|(k, v)| {
            (k.as_str().unwrap().to_string(), v.as_str().map(str::to_string).unwrap_or_else(|| format!("{v:?}")))
        })
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence().into_iter().flatten().map(|s| s.as_str().unwrap().to_string()).collect()
}

/// The port after the last `:` of `host:port` or `scheme://host:port`.
fn port_of(addr: &str) -> u16 {
    addr.rsplit(':').next().and_then(|p| p.trim_end_matches('/').parse().ok()).unwrap_or_else(|| panic!("{addr}"))
}

#[test]
fn the_compose_stack_mounts_what_exists_pins_its_images_and_agrees_with_the_configuration() {
    let compose = compose();
    let deploy = root().join("deploy");
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let services = compose["services"].as_mapping().unwrap();
    for name in ["postgres", "bid-logger", "simulator", "prometheus", "grafana"] {
        service(&compose, name);
    }
    for (name, s) in services {
        let name = name.as_str().unwrap();
        if let Some(build) = s.get("build") {
            let context = deploy.join(build["context"].as_str().unwrap());
            assert!(context.join(build["dockerfile"].as_str().unwrap()).is_file(), "{name}: no Dockerfile");
            let target = build["target"].as_str().unwrap();
            assert!(dockerfile.contains(&format!(" AS {target}\n")), "{name}: the Dockerfile has no stage {target}");
        } else {
            let image = s["image"].as_str().unwrap_or_else(|| panic!("{name}: no image"));
            let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
            assert!(tag != "latest" && tag.chars().any(|c| c.is_ascii_digit()), "{name}: image {image} is not pinned");
        }
        for volume in strings(&s["volumes"]) {
            let source = volume.split(':').next().unwrap();
            assert!(source.starts_with('.'), "{name}: {volume} is not a file of the repository");
            assert!(deploy.join(source).exists(), "{name}: mounts {source}, which does not exist");
        }
    }

    // the logger's environment is valid configuration, checked by the logger itself
    let logger = env(service(&compose, "bid-logger"));
    let known: Vec<String> = {
        use clap::Args;
        let cmd = bid_logger::config::Settings::augment_args(clap::Command::new("run"));
        cmd.get_arguments().filter_map(|a| a.get_env()).map(|e| e.to_string_lossy().into_owned()).collect()
    };
    for key in logger.keys() {
        assert!(known.contains(key), "{key} is not a configuration variable of the logger (see docs/configuration.md)");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bid-logger"))
        .arg("check-config")
        .env_clear()
        .envs(&logger)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "check-config with the compose environment: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(printed.contains("partition-count = 64"), "{printed}");

    // ports: published metrics port, Prometheus' target, the simulator's endpoint
    let metrics_port = port_of(&logger["BID_LOGGER_METRICS_ADDR"]);
    let published = strings(&service(&compose, "bid-logger")["ports"]);
    assert!(
        published.iter().any(|p| port_of(p) == metrics_port),
        "bid-logger publishes {published:?}, not {metrics_port}"
    );
    let prometheus: Value =
        serde_yaml::from_str(&std::fs::read_to_string(deploy.join("compose/prometheus.yml")).unwrap()).unwrap();
    let targets = strings(&prometheus["scrape_configs"][0]["static_configs"][0]["targets"]);
    assert_eq!(targets, vec![format!("bid-logger:{metrics_port}")]);
    assert_eq!(strings(&prometheus["rule_files"]), vec!["alerts.yml"]);
    let simulator = strings(&service(&compose, "simulator")["command"]);
    let bind = &simulator[simulator.iter().position(|a| a == "--bind").unwrap() + 1];
    assert_eq!(port_of(bind), port_of(&logger["BID_LOGGER_CONNECT"]), "simulator binds {bind}");
    assert!(logger["BID_LOGGER_CONNECT"].contains("//simulator:"));
    let count = &simulator[simulator.iter().position(|a| a == "--partition-count").unwrap() + 1];
    assert_eq!(count, &logger["BID_LOGGER_PARTITION_COUNT"]);

    // the database: the postgres service's name, password and database
    let pg = env(service(&compose, "postgres"));
    let url = &logger["BID_LOGGER_DATABASE_URL"];
    let want = format!("postgres://postgres:{}@postgres:5432/{}", pg["POSTGRES_PASSWORD"], pg["POSTGRES_DB"]);
    assert_eq!(url, &want);

    // Grafana: the datasource uids the dashboards use, the dashboards where the provisioning looks
    let datasources = std::fs::read_to_string(deploy.join("compose/grafana-datasources.yaml")).unwrap();
    for dashboard in ["bid-logger-operations.json", "bid-logger-warehouse.json"] {
        let text = std::fs::read_to_string(root().join("grafana/dashboards").join(dashboard)).unwrap();
        for uid in ["bid-logger-prometheus", "bid-logger-postgres"] {
            if text.contains(uid) {
                assert!(datasources.contains(&format!("uid: {uid}")), "{dashboard} uses datasource {uid}");
            }
        }
    }
    let provisioning = std::fs::read_to_string(root().join("grafana/provisioning/dashboards/bid-logger.yaml")).unwrap();
    let path = provisioning.lines().find_map(|l| l.trim().strip_prefix("path: ")).unwrap();
    let grafana = strings(&service(&compose, "grafana")["volumes"]);
    assert!(
        grafana.iter().any(|v| v.starts_with("../grafana/dashboards:") && v.contains(&format!(":{path}"))),
        "{grafana:?}"
    );
}

#[test]
fn the_dockerfile_copies_what_exists_and_runs_the_daemon_as_a_user() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    for line in dockerfile.lines().filter(|l| l.starts_with("COPY ") && !l.contains("--from")) {
        let source = line.split_whitespace().nth(1).unwrap();
        assert!(root().join(source).exists(), "Dockerfile copies {source}, which does not exist");
    }
    let last_stage = dockerfile.rsplit("\nFROM ").next().unwrap();
    assert!(last_stage.contains("USER 10001"), "the daemon's stage runs as root");
    assert!(last_stage.contains("ENTRYPOINT [\"/usr/bin/bid-logger\"]"));
    assert!(dockerfile.lines().filter(|l| l.starts_with("FROM ")).all(|l| !l.contains(":latest")));
}

/// Every variable `deploy/bid-logger.default` offers (commented out, with
/// an example value) is one the logger accepts, all of them together.
#[test]
fn the_default_file_offers_only_variables_the_logger_accepts_with_their_example_values() {
    let text = std::fs::read_to_string(root().join("deploy/bid-logger.default")).unwrap();
    let offered: BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.starts_with("BID_LOGGER_"))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert!(offered.contains_key("BID_LOGGER_GROUP") && offered.len() >= 6, "{offered:?}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bid-logger"))
        .arg("check-config")
        .env_clear()
        .envs(&offered)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "check-config with the file's examples: {}", String::from_utf8_lossy(&out.stderr));
    assert!(printed.contains("group = \"eu-west\"") && printed.contains("standby-memory = 268435456"), "{printed}");
}
