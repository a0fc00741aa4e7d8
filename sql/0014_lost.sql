-- What was lost, next to the rollups: every message counted in
-- bid_logger_messages_lost_total, added in the same transaction as what
-- proves it, so no crash or lost reply drops or doubles a count.
--
-- * reason 'gap': messages a publisher sent that never arrived (a `seq`
--   gap), per event type, partition and publisher, added by the batch whose
--   marks commit the gap. The parts of a batch written in parallel carry
--   the same gaps: the first to commit adds them (bid_logger_lost_batches).
-- * reason 'unwritten': events a run received and never wrote (killed, or
--   fenced), added by whoever settles them (the next start, or the fleet
--   member that finds the run's membership expired); their type, partition
--   and publisher are not known.
--
-- Lost messages have no event time (they never arrived): rows are bucketed
-- by the UTC hour the loss was found in. They count messages before
-- sampling, so no `_est` scaling applies. One row per hour and (member,
-- type, partition, publisher, reason) with a loss: it grows like a small
-- rollup, not with the number of batches.
CREATE TABLE IF NOT EXISTS bid_logger_lost (
    hour        timestamptz NOT NULL,
    scope       text        NOT NULL,
    member      text        NOT NULL,
    event_type  text        NOT NULL,
    partition   integer     NOT NULL,
    publisher   text        NOT NULL,
    reason      text        NOT NULL,
    events      bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (hour, scope, member, event_type, partition, publisher, reason)
);

-- The batches whose gaps are in bid_logger_lost (pruned with the ledger).
CREATE TABLE IF NOT EXISTS bid_logger_lost_batches (
    run_id      bigint      NOT NULL,
    generation  bigint      NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, generation)
);

-- Per hour, whoever counted it.
CREATE OR REPLACE VIEW bid_logger_lost_hourly AS
    SELECT hour, scope, event_type, partition, publisher, reason, sum(events)::bigint AS events
    FROM bid_logger_lost
    GROUP BY 1, 2, 3, 4, 5, 6;
