-- Committed sequence marks ("nothing unaccounted"): what every flush
-- records, in its own transaction, so that the next receiver of a partition
-- counts what was lost in between.
--
-- bid_logger_seq_marks: per scope (the instance id; a fleet's group later)
-- and partition, the highest `seq` written for every (pub, event type), as
-- one compact value (see the logger's `marks` module for the encoding).
-- `generation` orders the values of one run: a retried older batch never
-- overwrites a newer value.
CREATE TABLE IF NOT EXISTS bid_logger_seq_marks (
    scope       text        NOT NULL,
    partition   integer     NOT NULL,
    marks       bytea       NOT NULL,
    run_id      bigint      NOT NULL,
    generation  bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, partition)
);
-- The values are compact already (about 3 bytes a mark): stored out of
-- line without compression, which costs the server nothing per flush.
ALTER TABLE bid_logger_seq_marks ALTER COLUMN marks SET STORAGE EXTERNAL;

-- bid_logger_outstanding: per instance, the events its run had received up
-- to the marks last committed (`drained`) and those of them written
-- (`landed`, added by every batch's transaction). After a crash, drained -
-- landed events are at or below the marks but not in the warehouse: the
-- next start counts them as lost and sets landed = drained.
CREATE TABLE IF NOT EXISTS bid_logger_outstanding (
    instance    text        PRIMARY KEY,
    run_id      bigint      NOT NULL,
    generation  bigint      NOT NULL,
    drained     bigint      NOT NULL,
    landed      bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
