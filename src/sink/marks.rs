//! Committed sequence marks in PostgreSQL: what makes a restart (or a crash)
//! account for every message it loses.
//!
//! Every batch transaction records, with its rows:
//!
//! * the marks of the partitions that moved since the previous batch
//!   (`bid_logger_seq_marks`: per partition, the last `seq` received per
//!   publisher and event type, as of the batch's *generation*: the deltas
//!   the sink had received when the batch was formed);
//! * in `bid_logger_outstanding`, the events received up to that
//!   generation (`drained`), and its own events added to `landed`.
//!
//! A batch may be written as several transactions (parallel parts, or a
//! backlog cut into bounded batches), and a crash may come between them.
//! Then `drained - landed` events are at or below the committed marks but
//! not in the warehouse, and everything received after the marks is above
//! them: the next start counts the first as lost from this table
//! ([`load`]) and the second from the gap between the marks and the first
//! `seq` it receives (its trackers are seeded with the marks). Together
//! that is every event received but not written, plus every message sent
//! while nobody received: nothing unaccounted, and nothing counted twice.

use crate::db::DbError;
use bid_logger_core::marks::{decode, SeqMarks};
use tokio_postgres::types::ToSql;

/// What one batch transaction records besides its rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watermark {
    /// Partitions that moved, in order, and their encoded marks.
    pub partitions: Vec<i32>,
    /// The encoded marks of `partitions`.
    pub values: Vec<Vec<u8>>,
    /// Deltas received when the batch was formed.
    pub generation: i64,
    /// Events received when the batch was formed.
    pub drained: i64,
    /// A fleet member's leases, checked before anything is written.
    pub fence: Option<Fence>,
    /// The `seq` gaps the marks commit (rows of `bid_logger_lost`).
    pub gaps: Gaps,
}

/// `seq` gaps, as columns of `bid_logger_lost`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gaps {
    /// Event type names.
    pub event_types: Vec<&'static str>,
    /// Partitions.
    pub partitions: Vec<i32>,
    /// Publishers.
    pub publishers: Vec<String>,
    /// Messages lost.
    pub events: Vec<i64>,
}

impl Gaps {
    /// The gaps per (publisher, topic), as rows.
    pub fn of(gaps: &rustc_hash::FxHashMap<(std::sync::Arc<str>, u32), u64>) -> Gaps {
        let mut out = Gaps::default();
        use bid_logger_core::wire::{EventType, MAX_PARTITIONS};
        for ((publisher, topic), &n) in gaps {
            let Some(&t) = EventType::ALL.get((topic / MAX_PARTITIONS) as usize) else { continue };
            out.event_types.push(t.as_str());
            out.partitions.push((topic % MAX_PARTITIONS) as i32);
            // PostgreSQL's text cannot hold NUL: a hostile `pub` must not
            // make every batch fail.
            out.publishers.push(publisher.replace('\0', "\u{fffd}"));
            out.events.push(n as i64);
        }
        out
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

/// Adds a batch's gaps to the hour's rows, once: every part of a batch
/// carries the same gaps, and only the first to record the batch in
/// `bid_logger_lost_batches` adds them (a later part waits for it on that
/// row, and adds nothing once it committed).
const INSERT_GAPS: &str = "WITH first AS (
        INSERT INTO bid_logger_lost_batches (run_id, generation) VALUES ($3, $4)
        ON CONFLICT DO NOTHING RETURNING 1)
    INSERT INTO bid_logger_lost AS l (hour, scope, member, event_type, partition, publisher, reason, events)
    SELECT date_trunc('hour', now()), $1, $2, t.event_type, t.partition, t.publisher, 'gap', sum(t.events)
    FROM unnest($5::text[], $6::integer[], $7::text[], $8::bigint[]) AS t(event_type, partition, publisher, events)
    WHERE EXISTS (SELECT 1 FROM first)
    GROUP BY t.event_type, t.partition, t.publisher
    ON CONFLICT (hour, scope, member, event_type, partition, publisher, reason)
    DO UPDATE SET events = l.events + excluded.events, updated_at = now()";

/// The leases a fleet member's batch was received under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The group.
    pub group: String,
    /// Partitions, sorted.
    pub partitions: Vec<i32>,
    /// Their epochs.
    pub epochs: Vec<i64>,
    /// The assignment generation they are from.
    pub generation: u64,
    /// `SET LOCAL idle_in_transaction_session_timeout = …` (see
    /// [`crate::assignment::idle_timeout`]).
    pub idle_timeout: String,
}

/// Fails the transaction (SQLSTATE `BLF01`) unless the member still holds
/// every lease at its epoch, and keeps them from being taken until it ends.
const FENCE: &str = "SELECT bid_logger_fence($1, $2, $3, $4)";

/// Checks `fence` in `tx`, as `member`: the last statement before the
/// commit, so that the lease rows stay locked only from here to the commit
/// (one round trip). A member frozen before it holds no lease lock at all
/// (nothing keeps the others from taking its expired leases, and the fence
/// fails when it thaws); frozen after it, it is idle in its transaction,
/// which the server ends after [`Fence::idle_timeout`].
pub async fn check(
    tx: &tokio_postgres::Transaction<'_>,
    member: &str,
    fence: &Fence,
) -> Result<(), tokio_postgres::Error> {
    let params: [&(dyn ToSql + Sync); 4] = [&fence.group, &member, &fence.partitions, &fence.epochs];
    tx.execute(FENCE, &params).await.map(|_| ())
}

/// Upserts the marks of the moved partitions, unless a later generation of
/// the same run is there already (a retried batch, or a parallel part).
const UPSERT_MARKS: &str = "INSERT INTO bid_logger_seq_marks AS m (scope, partition, marks, run_id, generation)
    SELECT $1, t.partition, t.marks, $4, $5 FROM unnest($2::integer[], $3::bytea[]) AS t(partition, marks)
    ON CONFLICT (scope, partition) DO UPDATE
    SET marks = excluded.marks, run_id = excluded.run_id, generation = excluded.generation, updated_at = now()
    WHERE m.run_id <> excluded.run_id OR m.generation < excluded.generation";

/// Adds a batch's events to `landed`; moves `drained` to the batch's
/// generation when it is newer. A new run starts the row afresh, carrying
/// over what the previous run left unsettled: nothing after a start
/// ([`load`] has counted and settled it), but a fleet member fenced in
/// the middle of a run, whose settling failed (its database connection
/// gone, say), leaves its half-landed batches here, and they are counted
/// when this run is settled instead of never.
const UPSERT_OUTSTANDING: &str =
    "INSERT INTO bid_logger_outstanding AS o (instance, run_id, generation, drained, landed)
    VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (instance) DO UPDATE SET
        landed = CASE WHEN o.run_id = excluded.run_id THEN o.landed + excluded.landed
                      ELSE excluded.landed - greatest(o.drained - o.landed, 0) END,
        drained = CASE WHEN o.run_id = excluded.run_id THEN greatest(o.drained, excluded.drained)
                       ELSE excluded.drained END,
        generation = CASE WHEN o.run_id = excluded.run_id THEN greatest(o.generation, excluded.generation)
                          ELSE excluded.generation END,
        run_id = excluded.run_id, updated_at = now()";

const CLAIM_OUTSTANDING: &str = "SELECT drained - landed FROM bid_logger_outstanding WHERE instance = $1 FOR UPDATE";
const SETTLE_OUTSTANDING: &str =
    "UPDATE bid_logger_outstanding SET landed = drained, updated_at = now() WHERE instance = $1";
const READ_MARKS: &str = "SELECT partition, marks FROM bid_logger_seq_marks WHERE scope = $1";

/// Records `mark` and a part's `events` in `tx` (the part's own transaction).
pub async fn record(
    tx: &tokio_postgres::Transaction<'_>,
    scope: &str,
    instance: &str,
    run_id: i64,
    mark: &Watermark,
    events: u64,
) -> Result<(), tokio_postgres::Error> {
    if !mark.gaps.is_empty() {
        let g = &mark.gaps;
        let params: [&(dyn ToSql + Sync); 8] =
            [&scope, &instance, &run_id, &mark.generation, &g.event_types, &g.partitions, &g.publishers, &g.events];
        tx.execute(INSERT_GAPS, &params).await?;
    }
    let outstanding: [&(dyn ToSql + Sync); 5] = [&instance, &run_id, &mark.generation, &mark.drained, &(events as i64)];
    if mark.partitions.is_empty() {
        tx.execute(UPSERT_OUTSTANDING, &outstanding).await?;
        return Ok(());
    }
    let marks: [&(dyn ToSql + Sync); 5] = [&scope, &mark.partitions, &mark.values, &run_id, &mark.generation];
    // Sent together: one round trip.
    futures_util::future::try_join(tx.execute(UPSERT_MARKS, &marks), tx.execute(UPSERT_OUTSTANDING, &outstanding))
        .await?;
    Ok(())
}

/// What an earlier run left.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The committed marks of the scope.
    pub marks: SeqMarks,
    /// Events the previous run of this instance had received at or below
    /// its committed marks but not written: lost (now counted, and settled
    /// in the table so that no later start counts them again).
    pub lost: u64,
    /// Partitions whose value could not be decoded (left out).
    pub malformed: Vec<i32>,
}

/// What the sink starts from.
#[derive(Debug)]
pub enum Previous {
    /// What the previous run left, read at start (already counted).
    Loaded(Loaded),
    /// Not read yet (the database did not answer at start): the first
    /// flush reads it, and puts the marks in the cell, if any, for the
    /// ingest threads.
    Unread(Option<crate::assignment::LateMarks>),
}

/// Reads the committed marks of `scope` and settles what the previous run
/// of `instance` left outstanding, in one transaction.
pub async fn load(client: &mut tokio_postgres::Client, scope: &str, instance: &str) -> Result<Loaded, DbError> {
    let tx = client.transaction().await?;
    let lost: i64 = tx.query_opt(CLAIM_OUTSTANDING, &[&instance]).await?.map_or(0, |r| r.get(0));
    if lost != 0 {
        tx.execute(SETTLE_OUTSTANDING, &[&instance]).await?;
    }
    crate::db::lost::record_unwritten(&tx, scope, instance, lost).await?;
    let now_ms = bid_logger_core::clock::now_ms();
    let mut malformed = Vec::new();
    let mut values = Vec::new();
    for row in tx.query(READ_MARKS, &[&scope]).await? {
        let (partition, bytes): (i32, Vec<u8>) = (row.get(0), row.get(1));
        match decode(&bytes) {
            Ok(marks) if partition >= 0 => values.push((partition as u32, marks)),
            _ => malformed.push(partition),
        }
    }
    tx.commit().await?;
    // A negative count would be a row written by something else than this
    // logger; it is not a loss.
    Ok(Loaded { marks: SeqMarks::committed(values, now_ms), lost: lost.max(0) as u64, malformed })
}
