//! `bid_logger_lost` (migration 0014): what was counted lost, written in
//! the transaction that proves it. The sink writes a batch's `seq` gaps
//! with its marks (`sink::marks`); this is the other kind.

/// Records events `member` received and never wrote, settled now (in the
/// settling transaction): `$1` scope, `$2` member, `$3` events, `$4` a
/// random key.
const INSERT_UNWRITTEN: &str = "INSERT INTO bid_logger_lost
        (scope, member, event_type, partition, publisher, reason, events, run_id, generation)
    VALUES ($1, $2, '', -1, '', 'unwritten', $3, $4, 0)";

/// Records `events` that `member` (of `scope`) received and never wrote,
/// when there are any, in `tx`: the transaction that settles them.
pub async fn record_unwritten(
    tx: &impl tokio_postgres::GenericClient,
    scope: &str,
    member: &str,
    events: i64,
) -> Result<(), tokio_postgres::Error> {
    if events > 0 {
        tx.execute(INSERT_UNWRITTEN, &[&scope, &member, &events, &rand::random::<i64>()]).await?;
    }
    Ok(())
}
