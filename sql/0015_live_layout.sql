-- The live layout (issue 31): every rollup table `T` is from now on a view
-- over `T_merged` (its keyed, range-partitioned rows of buckets before the
-- table's boundary in `bid_logger_boundary`, the former table),
-- `T_recent` (keyed sums of the buckets from the boundary on) and `T_live`
-- (the rows of the batches not folded yet), with a delta log
-- `bid_logger_log_T` for every table. The tables themselves are converted
-- by the logger where it creates the declared tables (they are declared in
-- the configuration, not here). This migration marks the warehouse, so that
-- a build from before the layout refuses it instead of failing at every
-- batch.
COMMENT ON TABLE bid_logger_migrations IS 'bid-logger: applied migrations (from 15 on, rollup tables are views over _merged, _recent and _live)';

-- A range is created and then attached: ATTACH PARTITION takes SHARE UPDATE
-- EXCLUSIVE on the parent, which neither waits for nor blocks the batches
-- and folds writing it (CREATE TABLE … PARTITION OF took ACCESS EXCLUSIVE:
-- queued behind a fold holding the merged table, it held up every writer
-- queued behind it for up to its lock timeout). Same checks and names as
-- before (migrations 0006, 0007).
CREATE OR REPLACE FUNCTION bid_logger_create_range(parent regclass, name text, lo timestamptz, hi timestamptz,
                                                   rollup boolean)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    parent_name text := (SELECT relname FROM pg_class WHERE oid = parent);
    parent_schema text := (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                           WHERE c.oid = parent);
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = parent) THEN
        RAISE EXCEPTION 'bid_logger_create_range: % is not a partitioned table', parent;
    END IF;
    IF name !~ ('^' || parent_name || '_p[0-9]{4,10}$') THEN
        RAISE EXCEPTION 'bid_logger_create_range: % is not a range name of %', name, parent;
    END IF;
    EXECUTE format('CREATE TABLE %I.%I (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES)%s',
                   parent_schema, name, parent, CASE WHEN rollup THEN ' WITH (fillfactor = 50)' ELSE '' END);
    EXECUTE format('ALTER TABLE %s ATTACH PARTITION %I.%I FOR VALUES FROM (%L) TO (%L)',
                   parent, parent_schema, name, lo, hi);
END $$;

REVOKE ALL ON FUNCTION bid_logger_create_range(regclass, text, timestamptz, timestamptz, boolean) FROM PUBLIC;
