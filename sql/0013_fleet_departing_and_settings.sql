-- Fleets, second form (see docs/fleet-protocol.md).
--
-- 1. A member that stops keeps its row, marked departing, until it has
--    handed every partition over and left: the others leave it out of the
--    shares (so they claim its partitions), and if it dies meanwhile, its
--    row expires like any other and whoever finds it settles what it left
--    outstanding. (It used to delete its row when it started to depart, so
--    a departing member killed half-way was never settled.)
ALTER TABLE bid_logger_members ADD COLUMN IF NOT EXISTS departing boolean NOT NULL DEFAULT false;

-- 2. What the members of a group must agree on, recorded by the first
--    member that starts and checked by every member at start: one that
--    disagrees does not join. Changed only by `bid-logger fleet set`.
CREATE TABLE IF NOT EXISTS bid_logger_groups (
    grp             text        PRIMARY KEY,
    partition_count integer     NOT NULL,
    sample_ppm      integer     NOT NULL,
    raw_sample_ppm  integer     NOT NULL,
    -- The event types subscribed to, sorted, comma-separated.
    event_types     text        NOT NULL,
    -- The rollup tables, each as name:grain:dimensions[<fed-from], sorted.
    tables          text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
