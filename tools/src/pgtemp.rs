//! A throwaway PostgreSQL cluster from the system's server binaries, for the
//! demo and the tests when `DATABASE_URL` is not set.
//!
//! The cluster lives in a temporary directory, listens on a free loopback
//! port with trust authentication and `fsync` off, and is removed when the
//! [`TempPostgres`] is dropped, or, should the process die first, by a small
//! watchdog process that outlives it. As root, the server runs as the
//! `postgres` user (PostgreSQL refuses to run as root).

use std::ffi::CString;

use std::path::{Path, PathBuf};
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

impl TempPostgres {
    /// Initialises and starts a cluster.
    pub fn start() -> Result<TempPostgres, TempPostgresError> {
        let bindir = find_bindir().ok_or(TempPostgresError::NoBinaries)?;
        let run_as = unprivileged_user()?;
        let dir = std::env::temp_dir().join(format!("bid-logger-pg-{}-{}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(&dir).map_err(step("creating the cluster directory"))?;
        if let Some((uid, gid)) = run_as {
            chown(&dir, uid, gid)?;
        }
        let port = crate::free_port().map_err(step("finding a free port"))?;
        let pg = TempPostgres { dir, bindir, port, run_as };
        let data = pg.dir.join("data");
        pg.command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"])
            .output_ok("initdb")?;
        pg.watchdog();
        let options = format!(
            "-p {port} -k {dir} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=200 -c shared_buffers=128MB",
            dir = pg.dir.display()
        );
        pg.command("pg_ctl")
            .arg("-D")
            .arg(&data)
            .args(["-o", &options, "-l"])
            .arg(pg.dir.join("server.log"))
            .args(["-w", "-t", "60", "start"])
            .output_ok("pg_ctl start")
            .map_err(|e| pg.with_server_log(e))?;
        Ok(pg)
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

    /// Stops the server (fast shutdown: connections are cut).
    pub fn stop(&self) -> Result<(), TempPostgresError> {
        self.pg_ctl(&["-m", "fast", "-w", "stop"])
    }

    /// Starts the server again after [`TempPostgres::stop`].
    pub fn restart(&self) -> Result<(), TempPostgresError> {
        self.pg_ctl(&["-m", "fast", "-w", "-t", "60", "restart"])
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<(), TempPostgresError> {
        let data = self.dir.join("data");
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D").arg(&data).args(args);
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

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), TempPostgresError> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(step("chown of the cluster directory"))
}
