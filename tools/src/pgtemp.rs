//! A throwaway PostgreSQL cluster from the system's server binaries, for the
//! demo and the tests when `DATABASE_URL` is not set.
//!
//! The cluster lives in a temporary directory, listens on a free loopback
//! port with trust authentication and `fsync` off, and is removed when the
//! [`TempPostgres`] is dropped, or, should the process die first, by a small
//! watchdog process that outlives it. As root, the server runs as the
//! `postgres` user (PostgreSQL refuses to run as root).
//!
//! For failover tests a cluster can have streaming standbys
//! ([`TempPostgres::standby_of`]), each a cluster of its own in the same
//! sense (own directory, port, watchdog), which can be promoted.

use std::ffi::CString;

use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

/// Why a cluster could not be started.
#[derive(Debug, thiserror::Error)]
pub enum TempPostgresError {
    /// No `initdb` found.
    #[error(
        "no PostgreSQL server binaries (initdb, pg_ctl) found on PATH, via pg_config --bindir or under \
         /usr/lib/postgresql/*/bin; install the server (Debian: apt-get install postgresql) or set DATABASE_URL"
    )]
    NoBinaries,
    /// A step failed.
    #[error("{step} failed: {detail}")]
    Step {
        /// What was being done.
        step: &'static str,
        /// Output or error.
        detail: String,
    },
}

fn step(step: &'static str) -> impl Fn(std::io::Error) -> TempPostgresError {
    move |e| TempPostgresError::Step { step, detail: e.to_string() }
}

/// A running throwaway cluster; stopped and deleted on drop.
#[derive(Debug)]
pub struct TempPostgres {
    dir: PathBuf,
    bindir: PathBuf,
    port: u16,
    run_as: Option<(u32, u32)>,
}

/// The server settings every throwaway cluster runs with, before the
/// caller's: loopback only, and durability traded for speed (a test's data
/// need not survive a crash of the machine).
const DEFAULT_SETTINGS: [(&str, &str); 6] = [
    ("listen_addresses", "127.0.0.1"),
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
    ("max_connections", "200"),
    ("shared_buffers", "128MB"),
];

/// The `application_name` a standby streams under (in the primary's
/// `pg_stat_replication`), the name `synchronous_standby_names` gives.
pub const STANDBY_NAME: &str = "standby";

impl TempPostgres {
    /// Initialises and starts a cluster.
    pub fn start() -> Result<TempPostgres, TempPostgresError> {
        TempPostgres::start_with(&[])
    }

    /// Like [`TempPostgres::start`], with extra server settings given to the
    /// server as `-c name=value` (after the defaults, so they override
    /// them: `("synchronous_commit", "on")` undoes the default `off`).
    ///
    /// Settings on the command line stay with this server: a standby copies
    /// the data directory (`postgresql.auto.conf`, so `ALTER SYSTEM`
    /// included), not them. [`TempPostgres::restart`] keeps them: pg_ctl
    /// replays the command line from `postmaster.opts`, in double quotes,
    /// so a value holding `"`, `$`, `` ` `` or `\` would not survive it.
    pub fn start_with(settings: &[(&str, &str)]) -> Result<TempPostgres, TempPostgresError> {
        let bindir = find_bindir().ok_or(TempPostgresError::NoBinaries)?;
        let pg = TempPostgres::create(bindir, unprivileged_user()?)?;
        pg.command("initdb")
            .arg("-D")
            .arg(pg.data_dir())
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"])
            .output_ok("initdb")?;
        pg.start_server(settings)?;
        Ok(pg)
    }

    /// A streaming standby of `primary`, started with `settings` as
    /// [`TempPostgres::start_with`] takes them; it has its own directory,
    /// port and watchdog, and is removed on drop like any cluster.
    ///
    /// It is a `pg_basebackup -R -X stream` of the primary (a fast
    /// checkpoint, so it does not wait for a spread one), connecting as
    /// [`STANDBY_NAME`]: a primary with `synchronous_standby_names` naming it
    /// waits for it once it streams (the primary's `pg_stat_replication`
    /// shows `sync_state = 'sync'`). A commit waits for it only where
    /// `synchronous_commit` is not `off`, and it is `off` by default here:
    /// start the primary with `("synchronous_commit", "on")`. The primary
    /// lets replication connections in from 127.0.0.1 (`initdb -A trust`
    /// writes that line in `pg_hba.conf`); the standby copies its
    /// `postgresql.auto.conf` and `pg_hba.conf`, not its command line.
    pub fn standby_of(primary: &TempPostgres, settings: &[(&str, &str)]) -> Result<TempPostgres, TempPostgresError> {
        let pg = TempPostgres::create(primary.bindir.clone(), primary.run_as)?;
        let conninfo = format!("host=127.0.0.1 port={} user=postgres application_name={STANDBY_NAME}", primary.port);
        pg.command("pg_basebackup")
            .arg("-D")
            .arg(pg.data_dir())
            .args(["-d", &conninfo, "-X", "stream", "-R", "-c", "fast", "--no-sync"])
            .output_ok("pg_basebackup")?;
        pg.start_server(settings)?;
        Ok(pg)
    }

    /// A new cluster directory (owned by the server's user), a free port and
    /// the watchdog; nothing in the directory yet.
    fn create(bindir: PathBuf, run_as: Option<(u32, u32)>) -> Result<TempPostgres, TempPostgresError> {
        let dir = std::env::temp_dir().join(format!("bid-logger-pg-{}-{}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(&dir).map_err(step("creating the cluster directory"))?;
        if let Some((uid, gid)) = run_as {
            chown(&dir, uid, gid)?;
        }
        let port = crate::free_port().map_err(step("finding a free port"))?;
        let pg = TempPostgres { dir, bindir, port, run_as };
        pg.watchdog();
        Ok(pg)
    }

    /// `pg_ctl start` with the defaults, then `settings`, as `-c` options.
    fn start_server(&self, settings: &[(&str, &str)]) -> Result<(), TempPostgresError> {
        let mut options = format!("-p {} -k {}", self.port, shell_quoted(&self.dir.display().to_string()));
        let defaults: &[(&str, &str)] = &DEFAULT_SETTINGS;
        for (name, value) in defaults.iter().chain(settings) {
            options.push_str(&format!(" -c {}", shell_quoted(&format!("{name}={value}"))));
        }
        self.command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-o", &options, "-l"])
            .arg(self.dir.join("server.log"))
            .args(["-w", "-t", "60", "start"])
            .output_ok("pg_ctl start")
            .map_err(|e| self.with_server_log(e))
    }

    /// The URL of the `postgres` database.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// The URL of database `db` on this cluster.
    pub fn url_for(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Writes `contents` to `relative` inside the data directory (whose
    /// folders must exist), owned by the server's user, with permission
    /// bits `mode` (0o600 for a key file: the server refuses a key others
    /// can read).
    pub fn write_file(&self, relative: &str, contents: &[u8], mode: u32) -> Result<(), TempPostgresError> {
        use std::io::Write;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        const WHAT: &str = "writing a file in the data directory";
        let inside =
            !relative.is_empty() && Path::new(relative).components().all(|c| matches!(c, Component::Normal(_)));
        if !inside {
            return Err(TempPostgresError::Step {
                step: WHAT,
                detail: format!("{relative:?} is not a path inside it"),
            });
        }
        let path = self.data_dir().join(relative);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&path)
            .map_err(step(WHAT))?;
        file.write_all(contents).map_err(step(WHAT))?;
        // The mode given at creation is narrowed by the umask, and an
        // existing file keeps its own: set it outright.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(step(WHAT))?;
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(step(WHAT))?;
        }
        Ok(())
    }

    /// Stops the server (fast shutdown: connections are cut).
    pub fn stop(&self) -> Result<(), TempPostgresError> {
        self.pg_ctl(&["-m", "fast", "-w", "stop"])
    }

    /// Starts the server again after [`TempPostgres::stop`] (or stops and
    /// starts it), with the settings it was started with: pg_ctl reads them
    /// back from `postmaster.opts`. A standby comes back a standby, a
    /// promoted one a primary.
    pub fn restart(&self) -> Result<(), TempPostgresError> {
        self.pg_ctl(&["-m", "fast", "-w", "-t", "60", "restart"])
    }

    /// Promotes a standby to a primary, returning once it accepts writes.
    pub fn promote(&self) -> Result<(), TempPostgresError> {
        self.pg_ctl(&["-w", "-t", "60", "promote"])
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<(), TempPostgresError> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D").arg(self.data_dir()).args(args);
        if args.contains(&"restart") || args.contains(&"start") {
            cmd.arg("-l").arg(self.dir.join("server.log"));
        }
        cmd.output_ok("pg_ctl")
    }

    /// Appends the end of the server's log to a start-up error.
    fn with_server_log(&self, e: TempPostgresError) -> TempPostgresError {
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(10).collect::<Vec<_>>().into_iter().rev().collect();
        match e {
            TempPostgresError::Step { step, detail } => {
                TempPostgresError::Step { step, detail: format!("{detail}\nserver log:\n{}", tail.join("\n")) }
            }
            other => other,
        }
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bindir.join(program));
        cmd.stdin(Stdio::null()).current_dir(&self.dir);
        if let Some((uid, gid)) = self.run_as {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    /// A detached shell that waits for this process to exit, then stops the
    /// server and removes the directory: cleanup even after a panic or kill.
    fn watchdog(&self) {
        let script = format!(
            "while [ -d /proc/{pid} ]; do sleep 1; done; \"{pg_ctl}\" -D \"{dir}/data\" -m immediate stop >/dev/null 2>&1; rm -rf \"{dir}\"",
            pid = std::process::id(),
            pg_ctl = self.bindir.join("pg_ctl").display(),
            dir = self.dir.display()
        );
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &script]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        if let Some((uid, gid)) = self.run_as {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0); // not killed with our process group
        }
        let _ = cmd.spawn();
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-m", "immediate", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

trait OutputOk {
    fn output_ok(&mut self, step: &'static str) -> Result<(), TempPostgresError>;
}

impl OutputOk for Command {
    fn output_ok(&mut self, what: &'static str) -> Result<(), TempPostgresError> {
        let out = self.output().map_err(step(what))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(TempPostgresError::Step {
                step: what,
                detail: format!(
                    "{}: {}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            })
        }
    }
}

/// Where `initdb` and `pg_ctl` are: `pg_config --bindir`, then `PATH`, then
/// the newest `/usr/lib/postgresql/*/bin` (Debian keeps them off `PATH`).
pub fn find_bindir() -> Option<PathBuf> {
    let has = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has(&dir) {
            return Some(dir);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has(&dir) {
                // initdb may be a symlink into the real bindir, where postgres lives
                let real = std::fs::canonicalize(dir.join("initdb")).ok()?;
                return real.parent().map(Path::to_path_buf).filter(|d| has(d)).or(Some(dir));
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, d): &(u32, PathBuf)| has(d))
        .collect();
    versions.sort();
    versions.pop().map(|(_, d)| d)
}

/// As root, the uid/gid of `postgres` (or `nobody`) to run the server as.
fn unprivileged_user() -> Result<Option<(u32, u32)>, TempPostgresError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    for name in ["postgres", "nobody"] {
        let cname = CString::new(name).expect("no NUL");
        // SAFETY: getpwnam returns a pointer to static storage or null; we
        // copy the two fields out immediately, before any other call.
        let pw = unsafe { libc::getpwnam(cname.as_ptr()) };
        if !pw.is_null() {
            let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
            return Ok(Some((uid, gid)));
        }
    }
    Err(TempPostgresError::Step {
        step: "finding an unprivileged user",
        detail: "running as root and neither `postgres` nor `nobody` exists".into(),
    })
}

/// `s` quoted for the shell through which pg_ctl starts the server.
fn shell_quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), TempPostgresError> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(step("chown of the cluster directory"))
}
