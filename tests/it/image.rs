//! The container image as an operator runs it: `scripts/image` builds
//! `bid-logger:TAG` (FROM scratch, with podman) around the tested binary, and
//! the container, on the host's network, fills a real PostgreSQL exactly and
//! stops gracefully on SIGTERM.

use crate::support::*;
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_container_image_runs_the_logger_and_the_warehouse_is_exact() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // podman on these machines: runc, no default ulimits (scripts/image uses
    // the same file unless CONTAINERS_CONF is set).
    let conf =
        std::env::var("CONTAINERS_CONF").unwrap_or_else(|_| root.join("deploy/containers.conf").display().to_string());
    let conf = format!("CONTAINERS_CONF={conf}");
    let podman = Command::new("podman").arg("--version").output();
    assert!(podman.is_ok_and(|o| o.status.success()), "podman is missing: scripts/setup installs it (podman, runc)");
    let tag = format!("it-{}", rand::random::<u32>());
    let out = Command::new(root.join("scripts/image"))
        .args(["--binary", env!("CARGO_BIN_EXE_bid-logger"), "--tag", &tag])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "scripts/image failed:\n{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let image = stdout.lines().last().unwrap_or_default().trim().to_string();
    assert_eq!(image, format!("bid-logger:{tag}"));

    let db = fresh_database("image").await;
    let mut publisher = Publisher::bind();
    let name = format!("bl-{tag}");
    let logger = Logger::start_program(
        &["env", &conf, "podman", "run", "--rm", "--name", &name, "--network", "host", &image],
        &db,
        &["--connect", &publisher.endpoint],
    );
    publisher.wait_for_subscriptions(all_topics(P));
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
    let types = ["auction", "bid", "win", "impression", "click"];
    let events: Vec<TestEvent> = (0..5_000)
        .map(|i| {
            let mut e = TestEvent::new(types[i % types.len()], format!("img-{i}"), now - rng.gen_range(0..600_000));
            e.country = Some(["US", "BR"][i % 2].into());
            e.campaign = rng.gen_range(1..20);
            e.price = Some(rng.gen_range(0..5_000));
            e
        })
        .collect();
    for e in &events {
        publisher.publish(e, P);
    }
    logger.wait_metric("bid_logger_events_flushed_total", events.len() as f64, Duration::from_secs(60));
    let (code, stderr) = logger.stop(); // SIGTERM to podman, passed on to the container
    assert_eq!(code, 0, "the container exits 0 after a graceful stop:\n{stderr}");
    let client = connect(&db).await;
    assert_warehouse_matches(&client, &events, 1_000_000).await;
    let _ = Command::new("env").args([&conf, "podman", "rmi", "--force", &image]).output();
}
