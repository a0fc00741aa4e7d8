//! The database error: one type for the sink, the fleet coordinator,
//! range maintenance and the one-off commands, with the whole cause in one
//! line and the retry decision made from the error's class.

use std::time::Duration;

/// The SQLSTATE of a failed fence (raised by `bid_logger_fence`, sql/0009).
pub const FENCED: &str = "BLF01";

/// A database failure.
///
/// Its message carries the whole cause: tokio-postgres's own `Display`
/// stops at "db error" or "error connecting to server", and deadpool's
/// wraps that again, while what an operator needs (the server's message and
/// SQLSTATE, or the OS error such as "Connection refused") sits further
/// down the source chain. The variants therefore keep their inner errors
/// private (no `source()`), so that `{:#}` does not print the chain twice.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// A statement or the connection failed.
    #[error("database error: {}", cause_of(.0))]
    Db(tokio_postgres::Error),
    /// No connection could be had from the pool.
    #[error("no database connection: {}", pool_cause(.0))]
    Pool(deadpool_postgres::PoolError),
    /// The pool could not be built.
    #[error("cannot build the connection pool: {0}")]
    Build(deadpool_postgres::BuildError),
    /// The connection string does not parse.
    #[error("invalid database url: {0}")]
    Url(String),
    /// The TLS settings cannot be used (a file, or settings that contradict).
    #[error("invalid TLS settings: {0}")]
    Tls(String),
    /// An attempt took longer than allowed.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// A delta log holds what its writer cannot have written.
    #[error("inconsistent delta log: {0}")]
    Log(String),
    /// An earlier build left rows in a delta log that this build's
    /// migration cannot tell where to pass on.
    #[error("{0}")]
    Unconsumed(String),
    /// The database's tables contradict the configuration.
    #[error("invalid configuration: {0}")]
    Schema(String),
    /// The warehouse carries a migration this binary does not know: a newer
    /// release migrated it, and this one cannot know what that changed.
    #[error(
        "the warehouse is newer than this binary: migration {applied:04} is applied, this binary knows up to \
         {known:04}; run a release at least as new as the one that applied it"
    )]
    Newer {
        /// The newest migration applied.
        applied: i32,
        /// The newest this binary knows.
        known: i32,
    },
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> DbError {
        DbError::Db(e)
    }
}

impl From<deadpool_postgres::PoolError> for DbError {
    fn from(e: deadpool_postgres::PoolError) -> DbError {
        DbError::Pool(e)
    }
}

impl From<deadpool_postgres::BuildError> for DbError {
    fn from(e: deadpool_postgres::BuildError) -> DbError {
        DbError::Build(e)
    }
}

fn pool_cause(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(e) => cause_of(e),
        other => other.to_string(),
    }
}

/// One line with what went wrong, down to the root cause: the server's
/// severity, SQLSTATE and message (plus detail and hint) for an error the
/// server reported, otherwise every message of the source chain (for
/// example `error connecting to server: Connection refused (os error 111)`).
pub fn cause_of(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return describe_db_error(db);
    }
    let mut out = e.to_string();
    let mut next = std::error::Error::source(e);
    while let Some(cause) = next {
        if let Some(db) = cause.downcast_ref::<tokio_postgres::error::DbError>() {
            out = format!("{out}: {}", describe_db_error(db));
            break;
        }
        if let Some(tls) = super::tls::describe(cause) {
            out = format!("{out}: {tls}");
            break;
        }
        let text = cause.to_string();
        if !out.contains(&text) {
            out = format!("{out}: {text}");
        }
        next = cause.source();
    }
    out
}

fn describe_db_error(db: &tokio_postgres::error::DbError) -> String {
    let mut out = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    if let Some(detail) = db.detail() {
        out.push_str(&format!(" (detail: {detail})"));
    }
    if let Some(hint) = db.hint() {
        out.push_str(&format!(" (hint: {hint})"));
    }
    out.replace('\n', " ")
}

impl DbError {
    /// Whether a fleet member's flush found one of its leases taken
    /// (SQLSTATE `BLF01`): retrying cannot help.
    pub fn is_fenced(&self) -> bool {
        matches!(self, DbError::Db(e) if e.code().is_some_and(|c| c.code() == FENCED))
    }

    /// Whether a write found no range for its rows (SQLSTATE 23514, "no
    /// partition of relation … found for row"): one was dropped under us.
    pub fn is_missing_range(&self) -> bool {
        matches!(self, DbError::Db(e) if e.code() == Some(&tokio_postgres::error::SqlState::CHECK_VIOLATION))
    }

    /// Whether a statement ran past `statement_timeout`, waited past
    /// `lock_timeout` or was chosen to break a deadlock (SQLSTATE 57014,
    /// 55P03, 40P01): the session is still there, its transaction can roll
    /// back to a savepoint.
    pub fn is_timeout_or_deadlock(&self) -> bool {
        matches!(self, DbError::Db(e) if e.code().is_some_and(|c| matches!(c.code(), "57014" | "55P03" | "40P01")))
    }

    /// Whether retrying can help without anyone changing anything: lost
    /// connections, server restarts, timeouts, lock and serialization
    /// conflicts. Decided from the error's class, never its text.
    pub fn is_transient(&self) -> bool {
        match self {
            DbError::Db(e) => db_error_is_transient(e),
            DbError::Pool(deadpool_postgres::PoolError::Backend(e)) => db_error_is_transient(e),
            DbError::Pool(_) | DbError::Timeout(_) => true,
            DbError::Build(_)
            | DbError::Url(_)
            | DbError::Tls(_)
            | DbError::Schema(_)
            | DbError::Log(_)
            | DbError::Unconsumed(_)
            | DbError::Newer { .. } => false,
        }
    }
}

/// Whether a statement failed on a key already in a unique index: SQLSTATE
/// 23505, or, on Citus, XX000 with PostgreSQL's message for it (Citus
/// re-raises an error a worker reports while it copies rows through the
/// coordinator without its code; `docs/citus.md`). The message is matched
/// as PostgreSQL writes it in English, the workers' default `lc_messages`.
pub fn is_key_conflict(e: &tokio_postgres::Error) -> bool {
    let Some(db) = e.as_db_error() else { return false };
    match db.code().code() {
        "23505" => true,
        "XX000" => db.message().starts_with("duplicate key value violates unique constraint"),
        _ => false,
    }
}

fn db_error_is_transient(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        // No SQLSTATE: I/O, connect or protocol failure.
        None => true,
        Some(state) => {
            let code = state.code();
            // 08 connection exception, 53 insufficient resources, 57 operator
            // intervention (shutdown, statement timeout), 40001 serialization
            // failure, 40P01 deadlock, 55P03 lock not available, 25P03 a
            // transaction left idle past the timeout a fleet member sets (the
            // process starved of CPU: the server ended its session).
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57")
                || matches!(code, "40001" | "40P01" | "55P03" | "25P03")
        }
    }
}
