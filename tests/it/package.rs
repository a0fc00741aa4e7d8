//! The Debian package as an operator installs it: `scripts/package` builds
//! it around the tested binary, `dpkg -i` installs it, systemd checks the
//! unit, the installed binary runs as the package's own user against a real
//! PostgreSQL, and `dpkg -r` / `--purge` remove it.

use crate::support::*;
use std::path::Path;
use std::process::Command;

fn run(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn installed() -> bool {
    run("dpkg-query", &["-W", "-f=${Status}", "bid-logger"]).1.contains("install ok installed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_debian_package_installs_a_verified_unit_and_a_binary_that_runs_as_its_own_user() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "the package test installs a .deb with dpkg and must run as root (CI does)"
    );
    assert!(
        !installed(),
        "bid-logger is installed on this machine; this test installs and removes the package, so remove it first"
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::temp_dir().join(format!("bl-deb-{}", rand::random::<u32>()));
    let (ok, text) = run(
        root.join("scripts/package").to_str().unwrap(),
        &["--binary", env!("CARGO_BIN_EXE_bid-logger"), "--out", out.to_str().unwrap()],
    );
    assert!(ok, "scripts/package failed:\n{text}");
    let deb = text.lines().find(|l| l.ends_with(".deb")).unwrap_or_default().trim().to_string();
    assert!(deb.ends_with(".deb") && Path::new(&deb).is_file(), "{text}");

    let (ok, text) = run("dpkg", &["-i", &deb]);
    assert!(ok, "dpkg -i failed:\n{text}");
    let removed = scopeguard(|| {
        let _ = run("dpkg", &["--purge", "bid-logger"]);
    });

    // what an operator finds on disk
    for path in [
        "/usr/bin/bid-logger",
        "/lib/systemd/system/bid-logger.service",
        "/etc/bid-logger/bid-logger.toml",
        "/etc/default/bid-logger",
        "/usr/share/bid-logger/grafana/dashboards/bid-logger-warehouse.json",
        "/usr/share/bid-logger/prometheus/alerts.yml",
        "/usr/share/doc/bid-logger/copyright",
    ] {
        assert!(Path::new(path).exists(), "{path} not installed");
    }
    let (_, conffiles) = run("dpkg-query", &["-W", "-f=${Conffiles}", "bid-logger"]);
    assert!(conffiles.contains("/etc/bid-logger/bid-logger.toml"), "{conffiles}");
    assert!(conffiles.contains("/etc/default/bid-logger"), "{conffiles}");
    assert!(run("id", &["-u", "bid-logger"]).0, "the bid-logger system user was not created");

    // the unit: systemd's own check, and what it promises
    let (ok, text) = run("systemd-analyze", &["verify", "/lib/systemd/system/bid-logger.service"]);
    assert!(ok && text.trim().is_empty(), "systemd-analyze verify:\n{text}");
    let unit = std::fs::read_to_string("/lib/systemd/system/bid-logger.service").unwrap();
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("the unit has no {key}="))
            .to_string()
    };
    assert_eq!(value("Restart"), "on-failure");
    assert_eq!(value("RestartPreventExitStatus"), "2", "a configuration error is not restarted every 2 s");
    assert_eq!(value("KillSignal"), "SIGTERM");
    assert_eq!(value("User"), "bid-logger");
    assert_eq!(value("EnvironmentFile"), "-/etc/default/bid-logger");
    assert_eq!(value("NoNewPrivileges"), "yes");
    assert_eq!(value("ProtectSystem"), "strict");
    let stop = bid_logger::config::parse_duration(&value("TimeoutStopSec")).unwrap();
    let config = bid_logger::config::Settings::from_file(Path::new("/etc/bid-logger/bid-logger.toml")).unwrap();
    let shutdown = config.shutdown_timeout.as_deref().map(|d| bid_logger::config::parse_duration(d).unwrap());
    let shutdown = shutdown.unwrap_or(bid_logger::sink::DEFAULT_SHUTDOWN_TIMEOUT);
    assert!(stop > shutdown, "TimeoutStopSec {stop:?} must outlast shutdown-timeout {shutdown:?}");

    // the installed binary, as the unit runs it
    let as_user = |args: &[&str]| {
        let mut all = vec!["-u", "bid-logger", "--", "/usr/bin/bid-logger"];
        all.extend_from_slice(args);
        run("runuser", &all)
    };
    let (ok, text) = as_user(&["--version"]);
    assert!(ok && text.starts_with("bid-logger "), "{text}");
    // As installed it does not start: it names what the operator must set.
    let (ok, text) = as_user(&["check-config", "--config", "/etc/bid-logger/bid-logger.toml"]);
    assert!(!ok && text.contains("`connect`") && text.trim().lines().count() == 1, "{text}");
    let (ok, text) = as_user(&[
        "check-config",
        "--config",
        "/etc/bid-logger/bid-logger.toml",
        "--connect",
        "tcp://bidder-1:5556",
        "--database-url",
        "postgres://bid_logger@db.example/warehouse",
    ]);
    assert!(ok && text.contains("partition-count = 64"), "{text}");
    let db = fresh_database("deb").await;
    let (ok, text) = as_user(&["migrate", "--config", "/etc/bid-logger/bid-logger.toml", "--database-url", &db]);
    assert!(ok && text.contains("schema up to date"), "{text}");

    // removal keeps the configuration; purge removes it
    drop(removed);
    let (ok, text) = run("dpkg", &["-s", "bid-logger"]);
    assert!(!ok || !text.contains("Status: install ok installed"), "still installed:\n{text}");
    assert!(!Path::new("/usr/bin/bid-logger").exists() && !Path::new("/etc/bid-logger").exists());
    let _ = std::fs::remove_dir_all(&out);
}

/// Runs `f` when dropped (also when the test panics), so a failing test does
/// not leave the package installed.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
