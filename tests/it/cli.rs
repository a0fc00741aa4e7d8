//! The command line as operators use it: configuration errors, check-config,
//! migrate, fleet.

use crate::support::*;
use std::process::Command;

/// The logger binary without any `BID_LOGGER_*` variable of the test's own
/// environment (an unknown one would stop it at start).
fn logger_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bid-logger"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("BID_LOGGER_")) {
        cmd.env_remove(k);
    }
    cmd
}

fn bid_logger(args: &[&str]) -> (i32, String, String) {
    bid_logger_with_env(args, &[])
}

/// Runs the binary with only the given `BID_LOGGER_*`/`DATABASE_URL` variables set.
fn bid_logger_with_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = logger_command();
    cmd.args(args).env_remove("DATABASE_URL").env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
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
        ("--sample", "2", "`--sample`"),
        ("--partitions", "0-99", "`--partitions`"),
        ("--flush-interval", "often", "`--flush-interval`"),
        ("--event-types", "bids", "`--event-types`"),
        ("--metrics-addr", "nowhere", "`--metrics-addr`"),
        ("--flush-timeout", "0s", "`--flush-timeout`: must be at least 100ms"),
        ("--max-event-size", "10000000", "`max-message-size`: must be at least max-event-size"),
        ("--connect", "tcp://bidder-1", "`--connect`: `tcp://bidder-1` is not a ZeroMQ endpoint"),
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
    // check-config refuses what run would (it passed an endpoint without a port)
    let (code, _, stderr) =
        bid_logger(&["check-config", "--connect", "tcp://bidder-1", "--database-url", "postgres://u@h/d"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("`--connect`") && stderr.contains("no port"), "{stderr}");
}

#[test]
fn a_bad_environment_variable_is_named_not_the_flag() {
    let base = ["run", "--connect", "tcp://127.0.0.1:1", "--database-url", "postgres://u@127.0.0.1:1/db"];
    for (var, value, expected) in [
        // checked by the logger
        ("BID_LOGGER_FLUSH_TIMEOUT", "0s", "`BID_LOGGER_FLUSH_TIMEOUT`: must be at least 100ms"),
        ("BID_LOGGER_SAMPLE", "3", "`BID_LOGGER_SAMPLE`: expected a rate"),
        // parsed by clap (a number)
        ("BID_LOGGER_PARTITION_COUNT", "sixty-four", "`BID_LOGGER_PARTITION_COUNT`: invalid value `sixty-four`"),
        ("BID_LOGGER_MAX_EVENT_SIZE", "-1", "`BID_LOGGER_MAX_EVENT_SIZE`: invalid value `-1`"),
    ] {
        let (code, _, stderr) = bid_logger_with_env(&base, &[(var, value)]);
        assert_eq!(code, 2, "{var}={value}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(expected), "{var}={value}: {stderr}");
        assert!(!stderr.contains("--"), "the flag was not used: {stderr}");
    }
    // the same value on the command line is blamed on the flag
    let mut args = base.to_vec();
    args.extend(["--partition-count", "sixty-four"]);
    let (code, _, stderr) = bid_logger_with_env(&args, &[("BID_LOGGER_PARTITION_COUNT", "sixty-four")]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--partition-count") && !stderr.contains("BID_LOGGER_"), "{stderr}");
    // DATABASE_URL, the fallback, is named when it is the culprit
    let (code, _, stderr) =
        bid_logger_with_env(&["run", "--connect", "tcp://127.0.0.1:1"], &[("DATABASE_URL", "mysql://u@h/db")]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("`DATABASE_URL`: `mysql://` is not a PostgreSQL URL"), "{stderr}");
}

#[test]
fn a_bad_file_value_names_the_key_in_the_file_and_type_errors_give_the_line() {
    let dir = std::env::temp_dir().join(format!("bl-cli-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bid-logger.toml");
    let path = file.to_str().unwrap();
    std::fs::write(&file, "connect = [\"tcp://127.0.0.1:1\"]\nflush-timeout = \"0s\"\n").unwrap();
    let (code, _, stderr) = bid_logger(&["check-config", "--config", path, "--database-url", "postgres://u@h/db"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains(&format!("`flush-timeout` in `{path}`: must be at least 100ms")), "{stderr}");
    std::fs::write(&file, "connect = [\"tcp://127.0.0.1:1\"]\n# a comment\npartition-count = \"64\"\n").unwrap();
    let (code, _, stderr) = bid_logger(&["check-config", "--config", path, "--database-url", "postgres://u@h/db"]);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("line 3: `partition-count`:"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
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
        "--connect",
        "tcp://bidder-1:5556",
        "--database-url",
        "postgres://logger:hunter2@db.internal:5432/warehouse",
        "--sample",
        "1/8",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stdout.contains("hunter2"), "{stdout}");
    assert!(stdout.contains("database-url = \"postgres://logger@db.internal:5432/warehouse\""), "{stdout}");
    // A key=value string with a quoted password holding a space: rendered
    // again from what was parsed, none of the password shows.
    let (code, shown, stderr) = bid_logger(&[
        "check-config",
        "--connect",
        "tcp://127.0.0.1:5556",
        "--database-url",
        "host=db.internal user=logger password='hunter 2' dbname=warehouse",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!shown.contains("hunter") && !shown.contains(" 2'"), "{shown}");
    assert!(shown.contains("database-url = \"postgres://logger@db.internal/warehouse\""), "{shown}");
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
    assert_eq!(versions as usize, bid_logger::db::migrate::MIGRATIONS.len());
    // the recent tables are appended to: no key, no room kept for updates,
    // also when an earlier build made them keyed (a table's other options
    // are the operator's)
    let keyed = "ALTER TABLE rollup_minute_recent SET (fillfactor = 50),
                 ADD PRIMARY KEY (bucket, event_type, country, os, campaign_id, advertiser_id, sample_ppm)";
    client.batch_execute(keyed).await.unwrap();
    assert_eq!(bid_logger(&["migrate", "--database-url", &db]).0, 0);
    let recent = "SELECT relname::text, coalesce(reloptions, '{}')::text,
                         (SELECT count(*) FROM pg_index WHERE indrelid = c.oid)
                  FROM pg_class c WHERE relname LIKE 'rollup%\\_recent' ORDER BY 1";
    let rows: Vec<(String, String, i64)> =
        client.query(recent, &[]).await.unwrap().iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert_eq!(rows.len(), 5, "{rows:?}");
    // (but autovacuum's ANALYZE, which comes rarely: `db::tables::ANALYZE_RARELY`)
    let rarely = format!("{{{}}}", bid_logger::db::tables::ANALYZE_RARELY);
    assert!(rows.iter().all(|(_, options, indexes)| *options == rarely && *indexes == 0), "{rows:?}");
    client.batch_execute("ALTER TABLE rollup_minute_recent SET (autovacuum_vacuum_scale_factor = 0.01)").await.unwrap();
    assert_eq!(bid_logger(&["migrate", "--database-url", &db]).0, 0);
    let options: String = client
        .query_one("SELECT reloptions::text FROM pg_class WHERE relname = 'rollup_minute_recent'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        options,
        format!("{{{},autovacuum_vacuum_scale_factor=0.01}}", bid_logger::db::tables::ANALYZE_RARELY),
        "an operator's option stays"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warehouse_migrated_by_a_newer_release_is_refused_by_migrate_and_run() {
    let db = fresh_database("migrate_newer").await;
    assert_eq!(bid_logger(&["migrate", "--database-url", &db]).0, 0);
    connect(&db)
        .await
        .execute("INSERT INTO bid_logger_migrations (version, name) VALUES (9001, 'from a newer release')", &[])
        .await
        .unwrap();
    let (code, stdout, stderr) = bid_logger(&["migrate", "--database-url", &db]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(!stdout.contains("up to date"), "{stdout}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("migration 9001 is applied") && stderr.contains("newer than this binary"), "{stderr}");
    let metrics = format!("127.0.0.1:{}", free_port());
    let run = ["run", "--database-url", &db, "--connect", "tcp://127.0.0.1:9", "--metrics-addr", &metrics];
    let (code, _, stderr) = bid_logger(&run);
    assert_ne!(code, 0, "{stderr}");
    assert!(stderr.contains("migration 9001 is applied"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_status_of_a_database_never_migrated_says_so_in_one_line_and_of_a_migrated_one_lists_no_group() {
    let db = fresh_database("fleet_status").await;
    let (code, stdout, stderr) = bid_logger(&["fleet", "--database-url", &db]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("has no fleet tables") && stderr.contains("bid-logger migrate"), "{stderr}");
    assert_eq!(bid_logger(&["migrate", "--database-url", &db]).0, 0);
    let (code, stdout, stderr) = bid_logger(&["fleet", "--database-url", &db]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "no fleet group in this database\n");
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
    // The last line is the failure: the key, and the server's own words with
    // its SQLSTATE (3D000 invalid_catalog_name), not just "db error".
    let last = stderr.trim().lines().last().unwrap_or_default();
    assert!(last.contains("database-url"), "{stderr}");
    assert!(last.contains("3D000") && last.contains("\"no_such_database_here\" does not exist"), "{last}");
    // migrate says the same
    let (code, _, stderr) = bid_logger(&["migrate", "--database-url", &missing]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("3D000") && stderr.contains("does not exist"), "{stderr}");
}

#[test]
fn an_unreachable_database_is_reported_with_the_os_error() {
    use std::io::Read;
    let port = free_port(); // nothing listens there
    let mut child = logger_command()
        .args(["run", "--connect", "tcp://127.0.0.1:1"])
        .args(["--database-url", &format!("postgres://u@127.0.0.1:{port}/db")])
        .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port())])
        .env_remove("DATABASE_URL")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = pipe.read(&mut buf) {
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
            if text.contains("retrying in the background") {
                break;
            }
        }
        text
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !reader.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = reader.join().unwrap();
    let line = text.lines().find(|l| l.contains("retrying in the background")).unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("Connection refused"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_reads_the_same_configuration_as_run() {
    let dir = std::env::temp_dir().join(format!("bl-cli-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let from_file = fresh_database("migrate_file").await;
    let file = dir.join("bid-logger.toml");
    std::fs::write(&file, format!("database-url = \"{from_file}\"\n")).unwrap();
    let (code, stdout, stderr) = bid_logger(&["migrate", "--config", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("schema up to date"), "{stdout}");
    let from_env = fresh_database("migrate_env").await;
    let (code, _, stderr) = bid_logger_with_env(&["migrate"], &[("BID_LOGGER_DATABASE_URL", &from_env)]);
    assert_eq!(code, 0, "{stderr}");
    for db in [&from_file, &from_env] {
        let client = connect(db).await;
        let n: i64 = client.query_one("SELECT count(*) FROM bid_logger_migrations", &[]).await.unwrap().get(0);
        assert_eq!(n as usize, bid_logger::db::migrate::MIGRATIONS.len(), "{db}");
    }
    // and fails like run on a bad URL
    let (code, _, stderr) = bid_logger(&["migrate", "--database-url", "mysql://u@h/db"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("`--database-url`"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn logs_through_a_pipe_carry_no_colour_codes() {
    // stderr is a pipe here, as under journald or a log shipper; NO_COLOR unset
    let mut cmd = logger_command();
    cmd.args(["run", "--connect", "tcp://127.0.0.1:1"])
        .args(["--database-url", &format!("postgres://u@127.0.0.1:{}/db", free_port())])
        .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port())])
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    // SAFETY: kill with a valid pid and signal.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("starting"), "{text}");
    assert!(!text.contains('\x1b'), "escape codes in piped logs: {text:?}");
}

#[test]
fn version_names_the_release_and_the_git_commit_it_was_built_from() {
    let (code, stdout, _) = bid_logger(&["--version"]);
    assert_eq!(code, 0);
    let head = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output().expect("git is installed");
    let head = String::from_utf8_lossy(&head.stdout).trim().to_string();
    assert_eq!(head.len(), 12, "the tests run in a git checkout");
    assert_eq!(stdout.trim(), format!("bid-logger {} (commit {head})", env!("CARGO_PKG_VERSION")));
}

#[test]
fn an_unknown_bid_logger_variable_is_refused_naming_it() {
    let args = ["check-config", "--connect", "tcp://127.0.0.1:5556", "--database-url", "postgres://u@h/db"];
    let (code, _, stderr) = bid_logger_with_env(&args, &[("BID_LOGGER_PARTITION_COUNTS", "16")]);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(
        stderr.trim(),
        "bid-logger: invalid configuration: `BID_LOGGER_PARTITION_COUNTS`: not a configuration variable \
         (`bid-logger run --help` lists them)"
    );
    let (code, _, stderr) = bid_logger_with_env(&args, &[("BID_LOGGER_PARTITION_COUNT", "16")]);
    assert_eq!(code, 0, "the real variable is accepted: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_online_names_each_unreachable_part_in_one_line_and_passes_once_all_answer() {
    let db = fresh_database("check_online").await;
    let publisher = Publisher::bind();
    let dead = format!("tcp://127.0.0.1:{}", free_port());
    let endpoints = format!("{},{dead}", publisher.endpoint);
    let (code, stdout, stderr) =
        bid_logger(&["check-config", "--online", "--connect", &endpoints, "--database-url", &db]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    let problems: Vec<&str> = stderr.lines().collect();
    assert_eq!(problems.len(), 1, "{stderr}");
    assert!(problems[0].contains(&dead) && problems[0].contains("refused"), "{stderr}");
    assert!(stdout.contains("migrations to apply"), "{stdout}");
    assert!(stdout.contains(&format!("endpoint {}", publisher.endpoint)), "{stdout}");

    let (code, _, stderr) = bid_logger(&["migrate", "--database-url", &db]);
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, stderr) =
        bid_logger(&["check-config", "--online", "--connect", &publisher.endpoint, "--database-url", &db]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("schema up to date") && stdout.contains("without TLS"), "{stdout}");
    // Autovacuum, as the server has it (this machine's may run without),
    // then off for one delta log: a warning on stdout, not a problem.
    let client = connect(&db).await;
    let server_on: bool = client.query_one("SELECT current_setting('autovacuum') = 'on'", &[]).await.unwrap().get(0);
    let expected = if server_on { "database: autovacuum on" } else { "autovacuum is off on the server" };
    assert!(stdout.contains(expected), "{stdout}");
    client.batch_execute("ALTER TABLE bid_logger_log_rollup_minute SET (autovacuum_enabled = false)").await.unwrap();
    let (code, stdout, stderr) =
        bid_logger(&["check-config", "--online", "--connect", &publisher.endpoint, "--database-url", &db]);
    assert_eq!(code, 0, "{stderr}");
    let expected = if server_on {
        "autovacuum is off for bid_logger_log_rollup_minute:"
    } else {
        "autovacuum is off on the server"
    };
    assert!(stdout.contains(expected) && stdout.contains("warning"), "{stdout}");

    // A database that is not there: one line, naming the cause.
    let gone = format!("postgres://postgres@127.0.0.1:{}/x", free_port());
    let (code, _, stderr) =
        bid_logger(&["check-config", "--online", "--connect", &publisher.endpoint, "--database-url", &gone]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot connect") && stderr.contains("refused"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_cpu_seconds_keep_their_fraction() {
    // A logger that has just started has used a fraction of a CPU second:
    // as a whole-number counter it read 0, and the CPU panel stayed flat.
    let db = fresh_database("process_cpu").await;
    let logger = Logger::start(&db, &["--connect", "tcp://127.0.0.1:9"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let cpu = loop {
        let cpu = logger.metric("process_cpu_seconds_total", "");
        if cpu > 0.0 || std::time::Instant::now() > deadline {
            break cpu;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(cpu > 0.0 && cpu.fract() != 0.0, "process_cpu_seconds_total = {cpu}");
    logger.stop_ok();
}

#[test]
fn with_json_logs_a_configuration_error_and_a_fatal_error_are_json_lines() {
    let (code, _, stderr) = bid_logger(&[
        "run",
        "--log-format",
        "json",
        "--connect",
        "tcp://127.0.0.1:1",
        "--database-url",
        "postgres://u@127.0.0.1:1/db",
        "--sample",
        "2",
    ]);
    assert_eq!(code, 2, "{stderr}");
    let line: serde_json::Value = serde_json::from_str(stderr.trim()).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert_eq!(line["level"], "ERROR", "{stderr}");
    assert!(line["fields"]["message"].as_str().unwrap().contains("`--sample`"), "{stderr}");
    // From the file too, and for a fatal error past the configuration (the
    // metrics address is taken).
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = std::env::temp_dir().join(format!("bid-logger-json-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bid-logger.toml");
    std::fs::write(&file, "log-format = \"json\"\n").unwrap();
    let (code, _, stderr) = bid_logger(&[
        "run",
        "--config",
        file.to_str().unwrap(),
        "--connect",
        "tcp://127.0.0.1:1",
        "--database-url",
        "postgres://u@127.0.0.1:1/db",
        "--metrics-addr",
        &addr,
    ]);
    assert_ne!(code, 0, "{stderr}");
    let last = stderr.trim().lines().last().unwrap_or_default();
    let line: serde_json::Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert_eq!(line["level"], "ERROR", "{stderr}");
    assert!(line["fields"]["message"].as_str().unwrap().contains("metrics-addr"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Migration 0019 (delta-log rows say where their sums go on) is not
/// applied while an earlier build's rows wait in a delta log: where they go
/// depends on that build's configuration. `migrate` fails with one line
/// naming the log and what to do, and applies it once the log is empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_builds_rows_left_in_a_delta_log_hold_back_the_feeds_migration() {
    let db = fresh_database("feeds_migration").await;
    assert_eq!(bid_logger(&["migrate", "--database-url", &db]).0, 0);
    let client = connect(&db).await;
    // the warehouse as an earlier build left it after a hard kill
    client
        .batch_execute(
            "DELETE FROM bid_logger_migrations WHERE version = 19;
             ALTER TABLE bid_logger_log_rollup_hour DROP COLUMN feeds;
             INSERT INTO bid_logger_log_rollup_hour (events, rows, payload) VALUES (3, 1, '\\x00')",
        )
        .await
        .unwrap();
    let (code, _, stderr) = bid_logger(&["migrate", "--database-url", &db]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("bid_logger_log_rollup_hour holds 1 rows an earlier build did not consume")
            && stderr.contains("stop it with SIGTERM"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    client.batch_execute("DELETE FROM bid_logger_log_rollup_hour").await.unwrap();
    let (code, _, stderr) = bid_logger(&["migrate", "--database-url", &db]);
    assert_eq!(code, 0, "{stderr}");
    let feeds: i64 = client
        .query_one("SELECT count(*) FROM information_schema.columns WHERE column_name = 'feeds'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(feeds >= 5, "every delta log has `feeds` again: {feeds}");
}
