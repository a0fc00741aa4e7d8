//! Interoperability with an encoder we did not write: the bidders' own stack
//! (Python, pyzmq, msgpack) publishes; the warehouse must match exactly.

use crate::support::*;
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_from_python_land_exactly() {
    let check = Command::new("python3").args(["-c", "import zmq, msgpack"]).output();
    match check {
        Ok(out) if out.status.success() => {}
        _ => panic!(
            "this test needs python3 with pyzmq and msgpack: run scripts/setup \
             (or `python3 -m pip install pyzmq msgpack`)"
        ),
    }
    let db = fresh_database("python").await;
    let port = free_port();
    let endpoint = format!("tcp://127.0.0.1:{port}");
    let n = 3000;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/publish.py");
    let publisher = Command::new("python3")
        .args([script, &endpoint, "16", &all_topics(16).to_string(), &n.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    std::thread::sleep(Duration::from_millis(300)); // let it bind
    let logger = Logger::start(&db, &["--connect", &endpoint]);
    let out = publisher.wait_with_output().unwrap();
    assert!(out.status.success(), "publisher failed: {}", String::from_utf8_lossy(&out.stderr));

    let mut events = Vec::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let et: &'static str = ["auction", "bid", "win", "loss", "impression", "click", "install", "event"]
            .into_iter()
            .find(|t| *t == v["type"].as_str().unwrap())
            .unwrap();
        let mut e = TestEvent::new(et, v["txn"].as_str().unwrap(), v["ts"].as_i64().unwrap());
        e.country = v["country"].as_str().map(String::from);
        e.os = v["os"].as_str().map(String::from);
        e.campaign = v["campaign"].as_u64().unwrap_or(0) as u32;
        e.advertiser = v["advertiser"].as_u64().unwrap_or(0) as u32;
        e.price = v["price"].as_i64();
        e.revenue = v["revenue"].as_i64();
        e.attributed = v["attributed"].as_bool();
        events.push(e);
    }
    assert_eq!(events.len(), n);
    logger.wait_metric("bid_logger_events_accepted_total", n as f64, Duration::from_secs(30));
    assert_eq!(logger.metric("bid_logger_messages_invalid_total", ""), 0.0);
    assert_eq!(logger.metric("bid_logger_messages_lost_total", ""), 0.0);
    logger.stop_ok();
    let client = connect(&db).await;
    assert_warehouse_matches(&client, &events, 1_000_000).await;
}
