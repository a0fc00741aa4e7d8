//! `bid_logger_lost` (migration 0014): what was counted lost, written in
//! the transaction that proves it. The sink writes a batch's `seq` gaps
//! with its marks (`sink::marks`); this is the other kind.

/// Adds events `member` received and never wrote, settled now (in the
/// settling transaction), to the hour's row: `$1` scope, `$2` member, `$3`
/// events.
const INSERT_UNWRITTEN: &str = "INSERT INTO bid_logger_lost AS l
        (hour, scope, member, event_type, partition, publisher, reason, events)
    VALUES (date_trunc('hour', now()), $1, $2, '', -1, '', 'unwritten', $3)
    ON CONFLICT (hour, scope, member, event_type, partition, publisher, reason)
    DO UPDATE SET events = l.events + excluded.events, updated_at = now()";

/// Forgets the batches recorded in `bid_logger_lost_batches` with the
/// ledger's horizon (a retry comes within minutes, not days).
pub const PRUNE_LOST_BATCHES: &str =
    "DELETE FROM bid_logger_lost_batches WHERE recorded_at < now() - interval '2 days'";

/// Records `events` that `member` (of `scope`) received and never wrote,
/// when there are any, in `tx`: the transaction that settles them.
pub async fn record_unwritten(
    tx: &impl tokio_postgres::GenericClient,
    scope: &str,
    member: &str,
    events: i64,
) -> Result<(), tokio_postgres::Error> {
    if events > 0 {
        tx.execute(INSERT_UNWRITTEN, &[&scope, &member, &events]).await?;
    }
    Ok(())
}
