-- What was lost, next to the rollups: every message counted in
-- bid_logger_messages_lost_total, recorded in the same transaction as what
-- proves it, so no crash or lost reply drops or doubles a row.
--
-- * reason 'gap': messages a publisher sent that never arrived (a `seq`
--   gap), per event type, partition and publisher; written with the batch
--   whose marks commit the gap. The parts of a batch written in parallel
--   carry the same rows: the first to commit writes them.
-- * reason 'unwritten': events a run received and never wrote (killed,
--   or fenced), settled by whoever finds them (the next start, or the
--   fleet member that finds the run's membership expired); their type,
--   partition and publisher are not known.
--
-- Lost messages have no event time (they never arrived): rows are bucketed
-- by when the loss was found. They are counts of messages, before
-- sampling, so no `_est` scaling applies.
CREATE TABLE IF NOT EXISTS bid_logger_lost (
    found_at    timestamptz NOT NULL DEFAULT now(),
    scope       text        NOT NULL,
    member      text        NOT NULL,
    event_type  text        NOT NULL,
    partition   integer     NOT NULL,
    publisher   text        NOT NULL,
    reason      text        NOT NULL,
    events      bigint      NOT NULL,
    run_id      bigint      NOT NULL,
    generation  bigint      NOT NULL,
    PRIMARY KEY (run_id, generation, event_type, partition, publisher, reason)
);
CREATE INDEX IF NOT EXISTS bid_logger_lost_found_at ON bid_logger_lost (found_at);

CREATE OR REPLACE VIEW bid_logger_lost_hourly AS
    SELECT date_trunc('hour', found_at) AS hour, scope, event_type, partition, publisher, reason,
           sum(events)::bigint AS events
    FROM bid_logger_lost
    GROUP BY 1, 2, 3, 4, 5, 6;
