-- Minute tables are range-partitioned by hour (<table>_pYYYYMMDDHH) from
-- now on: bid_logger_create_range accepts ten-digit range names. The day
-- ranges made before stay as they are until their retention drops them;
-- the logger creates hour ranges only where no range exists.
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
    EXECUTE format('CREATE TABLE %I.%I PARTITION OF %s FOR VALUES FROM (%L) TO (%L)%s',
                   parent_schema, name, parent, lo, hi, CASE WHEN rollup THEN ' WITH (fillfactor = 50)' ELSE '' END);
END $$;

REVOKE ALL ON FUNCTION bid_logger_create_range(regclass, text, timestamptz, timestamptz, boolean) FROM PUBLIC;
