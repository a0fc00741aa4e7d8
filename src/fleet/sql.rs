//! The fleet's SQL: every statement the coordinator (and the sink's lease
//! pass) runs, each transaction bounded on the server (`lock_timeout`,
//! `statement_timeout`, `idle_in_transaction_session_timeout`) and on the
//! client (see [`Bounds`]). Expiry is on the database's clock at the time
//! of each statement (`clock_timestamp()`), never on a member's, and never
//! the transaction's start (`now()`), which a transaction that waited
//! would see in the past.

use super::plan::Lease;
use crate::db::DbError;
use bid_logger_core::marks::{decode, SeqMarks};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_postgres::{Client, Transaction};

/// A fleet operation's failure.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// A statement or the connection failed (a lock or statement timeout
    /// included: see [`FleetError::waited`]).
    #[error(transparent)]
    Database(#[from] DbError),
    /// The whole transaction took longer than its client-side bound: the
    /// connection is dropped, so the server rolls it back.
    #[error("{step} took longer than {after:?}; its connection is dropped (the server rolls back)")]
    TimedOut {
        /// What was under way.
        step: &'static str,
        /// The bound.
        after: Duration,
    },
}

impl From<tokio_postgres::Error> for FleetError {
    fn from(e: tokio_postgres::Error) -> FleetError {
        FleetError::Database(DbError::Db(e))
    }
}

impl FleetError {
    /// It waited too long for a lock or a statement (SQLSTATE 55P03 or
    /// 57014): the group is busy, not broken, and the step is retried.
    pub fn waited(&self) -> bool {
        match self {
            FleetError::Database(DbError::Db(e)) => e.code().is_some_and(|c| {
                *c == tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE
                    || *c == tokio_postgres::error::SqlState::QUERY_CANCELED
            }),
            FleetError::TimedOut { .. } => true,
            FleetError::Database(_) => false,
        }
    }
}

/// How long a fleet transaction may wait, from the lease TTL: a
/// transaction that holds lease rows or the group's lock must end well
/// within one TTL whatever the database or the member does (a member
/// frozen inside it included), so that a stall of one member or one
/// statement never costs the others their leases.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// For a lock (the group's, a lease row): a sixth of the TTL.
    pub lock: Duration,
    /// For any statement, and idle inside the transaction: a third.
    pub statement: Duration,
    /// For the whole transaction, on the client: a third.
    pub transaction: Duration,
    /// The TTL, in milliseconds, for the statements that renew.
    pub ttl_ms: f64,
}

impl Bounds {
    /// The bounds for `lease_ttl`.
    pub fn new(lease_ttl: Duration) -> Bounds {
        let at_least = |d: Duration| d.max(Duration::from_millis(100));
        Bounds {
            lock: at_least(lease_ttl / 6),
            statement: at_least(lease_ttl / 3),
            transaction: at_least(lease_ttl / 3),
            ttl_ms: lease_ttl.as_millis() as f64,
        }
    }

    /// The `SET LOCAL`s that bound a transaction on the server.
    fn set_local(&self) -> String {
        format!(
            "SET LOCAL lock_timeout = {}; SET LOCAL statement_timeout = {}; \
             SET LOCAL idle_in_transaction_session_timeout = {}",
            self.lock.as_millis(),
            self.statement.as_millis(),
            self.statement.as_millis()
        )
    }
}

/// Starts a transaction bounded on the server by `bounds`.
pub async fn begin<'c>(client: &'c mut Client, bounds: &Bounds) -> Result<Transaction<'c>, FleetError> {
    let tx = client.transaction().await?;
    tx.batch_execute(&bounds.set_local()).await?;
    Ok(tx)
}

/// Runs `work` within `bounds.transaction`; a timeout is
/// [`FleetError::TimedOut`], and the caller drops the connection.
pub async fn within<T>(
    step: &'static str,
    bounds: &Bounds,
    work: impl std::future::Future<Output = Result<T, FleetError>>,
) -> Result<T, FleetError> {
    match tokio::time::timeout(bounds.transaction, work).await {
        Ok(result) => result,
        Err(_) => Err(FleetError::TimedOut { step, after: bounds.transaction }),
    }
}

const LOCK_GROUP: &str = "SELECT pg_advisory_xact_lock(hashtextextended('bid_logger_group:' || $1, 0))";
const RENEW_MEMBER: &str = "INSERT INTO bid_logger_members AS m (grp, member, run_id, expires_at, departing)
    VALUES ($1, $2, $3, clock_timestamp() + $4 * interval '1 millisecond', $5)
    ON CONFLICT (grp, member) DO UPDATE SET run_id = excluded.run_id, expires_at = excluded.expires_at,
        departing = excluded.departing";
/// Renews the leases under this member's name (those passed to it since
/// included), except `$4`: those an earlier run of it left, taken anew with
/// a new epoch instead, which fences that run if it still lives. An
/// expired lease is not renewed: another member may have settled this one
/// already, so it is fenced.
const RENEW_LEASES: &str = "UPDATE bid_logger_leases SET expires_at = clock_timestamp() + $3 * interval '1 millisecond'
    WHERE grp = $1 AND owner = $2 AND NOT partition = ANY($4) AND expires_at >= clock_timestamp()
    RETURNING partition, epoch";
const STALE_LEASES: &str = "SELECT partition FROM bid_logger_leases WHERE grp = $1 AND owner = $2";
/// Members whose row expired: removed (and settled, see [`settle`]).
const EXPIRED_MEMBERS: &str =
    "DELETE FROM bid_logger_members WHERE grp = $1 AND expires_at < clock_timestamp() RETURNING member";
/// Before a member's outstanding events are settled: waits for the flushes
/// still fencing with its leases (they lock them `FOR KEY SHARE` from their
/// fence to their commit) and ends the leases now, so that no later flush
/// of it passes its fence: nothing settled here lands afterwards.
const LOCK_LEASES_OF: &str =
    "SELECT partition FROM bid_logger_leases WHERE grp = $1 AND owner = $2 ORDER BY partition FOR UPDATE";
const END_LEASES_OF: &str = "UPDATE bid_logger_leases SET expires_at = least(expires_at, clock_timestamp())
    WHERE grp = $1 AND owner = $2";
const SETTLE_OUTSTANDING: &str = "UPDATE bid_logger_outstanding o SET landed = drained, updated_at = now()
    FROM (SELECT instance, drained - landed AS left FROM bid_logger_outstanding WHERE instance = $1 FOR UPDATE) x
    WHERE o.instance = x.instance RETURNING x.left";
const MEMBERS: &str = "SELECT member FROM bid_logger_members WHERE grp = $1 AND NOT departing ORDER BY member";
const ALL_MEMBERS: &str = "SELECT member FROM bid_logger_members WHERE grp = $1";
const LEASES: &str = "SELECT partition, owner, expires_at < clock_timestamp(), claimant, claim_ready
    FROM bid_logger_leases WHERE grp = $1 ORDER BY partition";
/// Before a lease changes owner or epoch: waits for the flushes fencing
/// with it to commit, in partition order as the fence locks them.
const LOCK_TO_MOVE: &str =
    "SELECT partition FROM bid_logger_leases WHERE grp = $1 AND partition = ANY($2) ORDER BY partition FOR UPDATE";
const TAKE: &str = "INSERT INTO bid_logger_leases AS l (grp, partition, owner, epoch, expires_at)
    SELECT $1, p, $2, 1, clock_timestamp() + $4 * interval '1 millisecond' FROM unnest($3::integer[]) AS p
    ON CONFLICT (grp, partition) DO UPDATE SET owner = excluded.owner, epoch = l.epoch + 1,
        expires_at = excluded.expires_at, claimant = NULL, claim_ready = false
    WHERE l.owner IS NULL OR l.expires_at < clock_timestamp() OR l.owner = $2
    RETURNING partition, epoch, (xmax <> 0 AND epoch > 1) AS taken_over";
const CLAIM: &str = "UPDATE bid_logger_leases SET claimant = $2, claim_ready = false
    WHERE grp = $1 AND partition = ANY($3) AND owner IS NOT NULL AND owner <> $2 RETURNING partition";
const CLAIM_READY: &str = "UPDATE bid_logger_leases SET claim_ready = true
    WHERE grp = $1 AND claimant = $2 AND partition = ANY($3)";
const WITHDRAW: &str =
    "UPDATE bid_logger_leases SET claimant = NULL, claim_ready = false WHERE grp = $1 AND claimant = $2";
const READ_MARKS: &str = "SELECT partition, marks FROM bid_logger_seq_marks WHERE scope = $1 AND partition = ANY($2)";
/// A lease's claimant, when it is a live member of the group taking a
/// share: whom a lease is passed to (`NULL`: released).
const LIVE_CLAIMANT: &str = "(SELECT m.member FROM bid_logger_members m
    WHERE m.grp = l.grp AND m.member = l.claimant AND NOT m.departing AND m.expires_at >= clock_timestamp())";

/// Passes each lease still held at its epoch to its live claimant whose
/// claim is ready (it buffers the partition), a new epoch; releases it
/// otherwise (the claim was withdrawn or made anew, or its member is gone).
fn pass_sql() -> String {
    format!(
        "UPDATE bid_logger_leases l SET owner = CASE WHEN l.claim_ready THEN {LIVE_CLAIMANT} END,
            epoch = l.epoch + 1,
            expires_at = CASE WHEN l.claim_ready AND {LIVE_CLAIMANT} IS NOT NULL
                              THEN clock_timestamp() + $5 * interval '1 millisecond'
                              ELSE clock_timestamp() END,
            claimant = NULL, claim_ready = false
        FROM unnest($3::integer[], $4::bigint[]) AS h(partition, epoch)
        WHERE l.grp = $1 AND l.owner = $2 AND l.partition = h.partition AND l.epoch = h.epoch
        RETURNING l.partition, l.owner"
    )
}
/// Gives back the leases under this member's name, except those held at
/// another epoch than `$3`/`$4` say (taken anew since by a later run under
/// the same name: they stay with it): passed (a new epoch) to a live
/// member whose claim is ready (it buffers the partition and replays what
/// lies above the committed marks: nothing is lost), released otherwise.
fn release_sql() -> String {
    format!(
        "UPDATE bid_logger_leases l SET
            owner = CASE WHEN l.claim_ready THEN {LIVE_CLAIMANT} END,
            epoch = l.epoch + 1,
            expires_at = CASE WHEN l.claim_ready AND {LIVE_CLAIMANT} IS NOT NULL
                              THEN clock_timestamp() + $5 * interval '1 millisecond'
                              ELSE clock_timestamp() END,
            claimant = NULL, claim_ready = false
        WHERE l.grp = $1 AND l.owner = $2 AND NOT EXISTS (
            SELECT 1 FROM unnest($3::integer[], $4::bigint[]) AS h(partition, epoch)
            WHERE h.partition = l.partition AND h.epoch <> l.epoch)"
    )
}

/// Locks a member's outstanding row first, as its flushes do (they upsert
/// it before their fence locks the lease rows): settling and giving back
/// then take the two in the same order, and cannot deadlock with them.
const LOCK_OUTSTANDING: &str = "SELECT 1 FROM bid_logger_outstanding WHERE instance = $1 FOR UPDATE";
const LEAVE: &str = "DELETE FROM bid_logger_members WHERE grp = $1 AND member = $2";

fn ints(ps: impl IntoIterator<Item = u32>) -> Vec<i32> {
    ps.into_iter().map(|p| p as i32).collect()
}

/// What a renewal found.
#[derive(Debug, Default)]
pub struct Renewed {
    /// The leases under this member's name, renewed: partition → epoch.
    pub leases: BTreeMap<u32, i64>,
    /// At a run's first renewal: the leases an earlier run left.
    pub stale: Vec<u32>,
}

/// Renews the member's row (as `departing` or not) and its leases, except
/// `stale`; at a run's `first` renewal, also reads what an earlier run left.
/// No group lock: a renewal never waits for another member's decision.
pub async fn renew(
    client: &mut Client,
    bounds: &Bounds,
    (group, member, run_id): (&str, &str, i64),
    departing: bool,
    first: bool,
    stale: &[u32],
) -> Result<Renewed, FleetError> {
    let tx = begin(client, bounds).await?;
    tx.execute(RENEW_MEMBER, &[&group, &member, &run_id, &bounds.ttl_ms, &departing]).await?;
    let stale: Vec<u32> = if first {
        tx.query(STALE_LEASES, &[&group, &member]).await?.iter().map(|r| r.get::<_, i32>(0) as u32).collect()
    } else {
        stale.to_vec()
    };
    let leases = tx
        .query(RENEW_LEASES, &[&group, &member, &bounds.ttl_ms, &ints(stale.iter().copied())])
        .await?
        .iter()
        .map(|r| (r.get::<_, i32>(0) as u32, r.get::<_, i64>(1)))
        .collect();
    tx.commit().await?;
    Ok(Renewed { leases, stale: if first { stale } else { Vec::new() } })
}

/// Locks the group for a decision (the transaction holds it to its end).
pub async fn lock_group(tx: &Transaction<'_>, group: &str) -> Result<(), FleetError> {
    tx.execute(LOCK_GROUP, &[&group]).await?;
    Ok(())
}

/// Removes the members whose row expired and settles each: (member,
/// events it received at or below its committed marks and did not write).
pub async fn remove_expired(tx: &Transaction<'_>, group: &str) -> Result<Vec<(String, u64)>, FleetError> {
    let mut gone = Vec::new();
    for row in tx.query(EXPIRED_MEMBERS, &[&group]).await? {
        let member: String = row.get(0);
        let left = settle(tx, group, &member).await?;
        gone.push((member, left));
    }
    Ok(gone)
}

/// Settles what `member` left outstanding once its flushes under way have
/// committed, and ends its leases (see [`LOCK_LEASES_OF`]).
async fn settle(tx: &Transaction<'_>, group: &str, member: &str) -> Result<u64, FleetError> {
    tx.execute(LOCK_OUTSTANDING, &[&member]).await?;
    tx.execute(LOCK_LEASES_OF, &[&group, &member]).await?;
    tx.execute(END_LEASES_OF, &[&group, &member]).await?;
    let left: i64 = tx.query_opt(SETTLE_OUTSTANDING, &[&member]).await?.map_or(0, |r| r.get(0));
    record_unwritten(tx, group, member, left).await?;
    Ok(left.max(0) as u64)
}

/// Records `left` events `member` received and never wrote in
/// `bid_logger_lost`, in the transaction that settles them.
async fn record_unwritten(tx: &Transaction<'_>, group: &str, member: &str, left: i64) -> Result<(), FleetError> {
    Ok(crate::db::lost::record_unwritten(tx, group, member, left).await?)
}

/// The members that take a share, sorted, and every lease row.
pub async fn read_group(tx: &Transaction<'_>, group: &str) -> Result<(Vec<String>, Vec<Lease>), FleetError> {
    let members = tx.query(MEMBERS, &[&group]).await?.iter().map(|r| r.get(0)).collect();
    let leases = tx
        .query(LEASES, &[&group])
        .await?
        .iter()
        .map(|r| Lease {
            partition: r.get::<_, i32>(0) as u32,
            owner: r.get(1),
            expired: r.get(2),
            claimant: r.get(3),
            claim_ready: r.get(4),
        })
        .collect();
    Ok((members, leases))
}

/// Whether `member` has a row (departing or not).
pub async fn is_member(tx: &Transaction<'_>, group: &str, member: &str) -> Result<bool, FleetError> {
    Ok(tx.query(ALL_MEMBERS, &[&group]).await?.iter().any(|r| r.get::<_, &str>(0) == member))
}

/// What a take did: partition → new epoch, and how many were taken over
/// from another member whose lease had expired.
pub struct Taken {
    /// Partition → its new epoch.
    pub epochs: BTreeMap<u32, i64>,
    /// Taken from an expired owner.
    pub over: u64,
}

/// Takes `partitions` (free, expired or this member's), once the flushes
/// fencing with them have committed.
pub async fn take(
    tx: &Transaction<'_>,
    bounds: &Bounds,
    group: &str,
    member: &str,
    partitions: &[u32],
) -> Result<Taken, FleetError> {
    let parts = ints(partitions.iter().copied());
    tx.execute(LOCK_TO_MOVE, &[&group, &parts]).await?;
    let mut taken = Taken { epochs: BTreeMap::new(), over: 0 };
    for row in tx.query(TAKE, &[&group, &member, &parts, &bounds.ttl_ms]).await? {
        taken.epochs.insert(row.get::<_, i32>(0) as u32, row.get(1));
        taken.over += u64::from(row.get::<_, bool>(2));
    }
    Ok(taken)
}

/// Claims `partitions`: those still owned by another member.
pub async fn claim(
    tx: &Transaction<'_>,
    group: &str,
    member: &str,
    partitions: &[u32],
) -> Result<Vec<u32>, FleetError> {
    let parts = ints(partitions.iter().copied());
    Ok(tx.query(CLAIM, &[&group, &member, &parts]).await?.iter().map(|r| r.get::<_, i32>(0) as u32).collect())
}

/// Marks `partitions`' claims ready.
pub async fn claims_ready(
    tx: &Transaction<'_>,
    group: &str,
    member: &str,
    partitions: &[u32],
) -> Result<(), FleetError> {
    tx.execute(CLAIM_READY, &[&group, &member, &ints(partitions.iter().copied())]).await?;
    Ok(())
}

/// The committed marks of `partitions` (in `scope`, the group).
pub async fn read_marks(tx: &Transaction<'_>, scope: &str, partitions: &[u32]) -> Result<SeqMarks, FleetError> {
    let mut values = Vec::new();
    for row in tx.query(READ_MARKS, &[&scope, &ints(partitions.iter().copied())]).await? {
        let (p, bytes): (i32, Vec<u8>) = (row.get(0), row.get(1));
        match decode(&bytes) {
            Ok(m) => values.push((p as u32, m)),
            Err(e) => tracing::warn!(partition = p, error = %e, "committed marks cannot be read; left out"),
        }
    }
    Ok(SeqMarks::committed(values, bid_logger_core::clock::now_ms()))
}

/// Passes `held` (partition, epoch) to their claimants, or releases those
/// whose claim was withdrawn; returns (partition, new owner) for each.
/// A lease no longer held at its epoch is left alone (a retry after a lost
/// reply finds it passed already; a taken one fences this member).
pub async fn pass(
    client: &mut Client,
    bounds: &Bounds,
    group: &str,
    member: &str,
    held: &[(u32, i64)],
) -> Result<Vec<(u32, Option<String>)>, FleetError> {
    let (parts, epochs): (Vec<i32>, Vec<i64>) = held.iter().map(|&(p, e)| (p as i32, e)).unzip();
    let tx = begin(client, bounds).await?;
    tx.execute(LOCK_TO_MOVE, &[&group, &parts]).await?;
    let rows = tx.query(&pass_sql(), &[&group, &member, &parts, &epochs, &bounds.ttl_ms]).await?;
    tx.commit().await?;
    Ok(rows.iter().map(|r| (r.get::<_, i32>(0) as u32, r.get(1))).collect())
}

/// Stops taking a share: marks the member row departing (it stays, so that
/// if this run dies now, whoever finds the row expired settles it) and
/// withdraws its claims.
pub async fn depart(client: &mut Client, bounds: &Bounds, group: &str, member: &str) -> Result<(), FleetError> {
    let tx = begin(client, bounds).await?;
    tx.execute("UPDATE bid_logger_members SET departing = true WHERE grp = $1 AND member = $2", &[&group, &member])
        .await?;
    tx.execute(WITHDRAW, &[&group, &member]).await?;
    tx.commit().await?;
    Ok(())
}

/// Releases the leases under this member's name but those `held` at
/// another epoch, withdraws its claims and settles what it left
/// outstanding (returned: counted as lost); with `leave`, removes its row.
pub async fn give_back(
    client: &mut Client,
    bounds: &Bounds,
    group: &str,
    member: &str,
    held: &BTreeMap<u32, i64>,
    leave: bool,
) -> Result<u64, FleetError> {
    let (parts, epochs): (Vec<i32>, Vec<i64>) = held.iter().map(|(&p, &e)| (p as i32, e)).unzip();
    let tx = begin(client, bounds).await?;
    // Its flushes still under way commit first; what is left is settled.
    tx.execute(LOCK_OUTSTANDING, &[&member]).await?;
    tx.execute(LOCK_LEASES_OF, &[&group, &member]).await?;
    tx.execute(&release_sql(), &[&group, &member, &parts, &epochs, &bounds.ttl_ms]).await?;
    tx.execute(WITHDRAW, &[&group, &member]).await?;
    let left: i64 = tx.query_opt(SETTLE_OUTSTANDING, &[&member]).await?.map_or(0, |r| r.get(0));
    record_unwritten(&tx, group, member, left).await?;
    if leave {
        tx.execute(LEAVE, &[&group, &member]).await?;
    }
    tx.commit().await?;
    Ok(left.max(0) as u64)
}
