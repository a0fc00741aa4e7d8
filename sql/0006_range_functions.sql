-- Time-range partitions are created and dropped by the running logger
-- (ahead of time, for late events, past each table's retention). PostgreSQL
-- lets only a partitioned table's owner do that, so the logger calls these
-- two functions, which run with the rights of the role that migrated
-- (SECURITY DEFINER): the logger's own role keeps only the rights to add
-- rows (docs/postgres.md), and cannot change any table's schema.

-- Creates range partition `name` of `parent` for [lo, hi): only of a
-- partitioned table, only under a name of the form <parent>_p<digits> or
-- <parent>_before. `rollup` adds fillfactor 50 (HOT updates).
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
    IF name !~ ('^' || parent_name || '_p[0-9]{4,8}$') THEN
        RAISE EXCEPTION 'bid_logger_create_range: % is not a range name of %', name, parent;
    END IF;
    EXECUTE format('CREATE TABLE %I.%I PARTITION OF %s FOR VALUES FROM (%L) TO (%L)%s',
                   parent_schema, name, parent, lo, hi, CASE WHEN rollup THEN ' WITH (fillfactor = 50)' ELSE '' END);
END $$;

-- Drops range partition `child` (a table, not itself partitioned, that is a
-- partition of a partitioned table).
CREATE OR REPLACE FUNCTION bid_logger_drop_range(child regclass)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_inherits i JOIN pg_partitioned_table p ON p.partrelid = i.inhparent
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhrelid = child AND c.relkind = 'r') THEN
        RAISE EXCEPTION 'bid_logger_drop_range: % is not a range partition', child;
    END IF;
    EXECUTE format('DROP TABLE %s', child);
END $$;

REVOKE ALL ON FUNCTION bid_logger_create_range(regclass, text, timestamptz, timestamptz, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION bid_logger_drop_range(regclass) FROM PUBLIC;
