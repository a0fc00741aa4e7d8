//! The command line as operators use it: configuration errors, check-config,
//! migrate.

mod support;

use std::process::Command;
use support::*;

fn bid_logger(args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bid-logger"));
    cmd.args(args).env_remove("DATABASE_URL");
    for (k, _) in std::env::vars() {
        if k.starts_with("BID_LOGGER_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_configuration_fails_at_start_with_one_line_naming_the_key() {
    let base = ["run", "--connect", "tcp://127.0.0.1:1", "--database-url", "postgres://u@127.0.0.1:1/db"];
    for (flag, value, key) in [
        ("--sample", "2", "`sample`"),
        ("--partitions", "0-99", "`partitions`"),
        ("--flush-interval", "often", "`flush-interval`"),
        ("--event-types", "bids", "`event-types`"),
        ("--metrics-addr", "nowhere", "`metrics-addr`"),
    ] {
        let mut args = base.to_vec();
        args.extend([flag, value]);
        let (code, _, stderr) = bid_logger(&args);
        assert_eq!(code, 2, "{flag} {value}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(key), "{stderr}");
    }
    let (code, _, stderr) = bid_logger(&["run", "--connect", "tcp://127.0.0.1:1"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("`database-url`"), "{stderr}");
}

#[test]
fn unknown_file_keys_are_rejected_by_name() {
    let dir = std::env::temp_dir().join(format!("bl-cli-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "conect = [\"tcp://127.0.0.1:5556\"]\n").unwrap();
    let (code, _, stderr) = bid_logger(&["check-config", "--config", file.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("conect"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn check_config_prints_every_key_with_the_password_masked() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/bid-logger.toml");
    let (code, stdout, stderr) = bid_logger(&[
        "check-config",
        "--config",
        example,
        "--database-url",
        "postgres://logger:hunter2@db.internal:5432/warehouse",
        "--sample",
        "1/8",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stdout.contains("hunter2"), "{stdout}");
    assert!(stdout.contains("postgres://logger:***@db.internal:5432/warehouse"), "{stdout}");
    assert!(stdout.contains("sample = \"1/8\""), "flags override the file: {stdout}");
    let example_keys: Vec<String> = std::fs::read_to_string(example)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(" = "))
        .map(|l| l.split(" = ").next().unwrap().to_string())
        .collect();
    for key in &example_keys {
        assert!(stdout.contains(&format!("{key} = ")), "check-config omits {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_is_idempotent_and_creates_the_warehouse() {
    let db = fresh_database("migrate").await;
    for _ in 0..2 {
        let (code, stdout, stderr) = bid_logger(&["migrate", "--database-url", &db]);
        assert_eq!(code, 0, "{stderr}");
        assert!(stdout.contains("schema up to date"), "{stdout}");
    }
    let client = connect(&db).await;
    for rel in [
        "rollup_minute",
        "rollup_hour",
        "rollup_minute_est",
        "rollup_hour_est",
        "bid_logger_flush_ledger",
        "events_sample",
    ] {
        let n: i64 =
            client.query_one("SELECT count(*) FROM pg_class WHERE relname = $1", &[&rel]).await.unwrap().get(0);
        assert_eq!(n, 1, "{rel}");
    }
    let versions: i64 = client.query_one("SELECT count(*) FROM bid_logger_migrations", &[]).await.unwrap().get(0);
    assert_eq!(versions as usize, bid_logger::sink::migrate::MIGRATIONS.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_refuses_us_for_good_fails_fast_naming_the_key() {
    let db = fresh_database("refuse").await;
    let missing = with_database(&db, "no_such_database_here");
    let (code, _, stderr) = bid_logger(&[
        "run",
        "--connect",
        "tcp://127.0.0.1:1",
        "--database-url",
        &missing,
        "--metrics-addr",
        &format!("127.0.0.1:{}", free_port()),
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("database-url"), "{stderr}");
    assert!(stderr.contains("no_such_database_here"), "{stderr}");
}
