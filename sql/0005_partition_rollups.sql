-- Rollup tiers: rollup_minute and rollup_hour become range-partitioned on
-- `bucket` (the logger then creates their day / month ranges ahead of time
-- and drops them past each table's retention).
--
-- An existing table that holds rows is kept as it is, never rewritten: it is
-- renamed to <table>_before and attached as the one range holding every
-- bucket before the start of the next UTC day (rollup_minute) or month
-- (rollup_hour). A CHECK constraint proves that bound first (one sequential
-- scan of the table, under the ACCESS EXCLUSIVE lock the rename takes), so
-- the ATTACH itself skips its scan. Retention drops <table>_before like any
-- other range once all of it is older than the retention.
--
-- An empty table is simply dropped; the logger then creates every declared
-- table partitioned (with its _est view), and backfills rollup_day from
-- rollup_hour in this same transaction (see src/sink/migrate.rs).
DO $$
DECLARE
    t text;
    cut timestamptz;
    has_rows boolean;
BEGIN
    FOREACH t IN ARRAY ARRAY['rollup_minute', 'rollup_hour'] LOOP
        CONTINUE WHEN NOT EXISTS (
            SELECT 1 FROM pg_class
            WHERE relname = t AND relkind = 'r' AND relnamespace = current_schema()::regnamespace);
        EXECUTE format('DROP VIEW IF EXISTS %I', t || '_est');
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I)', t) INTO has_rows;
        IF NOT has_rows THEN
            EXECUTE format('DROP TABLE %I', t);
            CONTINUE;
        END IF;
        cut := CASE t
            WHEN 'rollup_minute' THEN date_trunc('day', now() AT TIME ZONE 'UTC') + interval '1 day'
            ELSE date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month'
        END AT TIME ZONE 'UTC';
        EXECUTE format('ALTER TABLE %I RENAME TO %I', t, t || '_before');
        EXECUTE format('ALTER TABLE %I RENAME CONSTRAINT %I TO %I', t || '_before', t || '_pkey', t || '_before_pkey');
        EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS) PARTITION BY RANGE (bucket)',
                       t, t || '_before');
        EXECUTE format('ALTER TABLE %I ADD PRIMARY KEY (bucket, event_type, country, os, campaign_id, advertiser_id, sample_ppm)', t);
        EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK (bucket < %L)', t || '_before', t || '_before_bound', cut);
        EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (MINVALUE) TO (%L)', t, t || '_before', cut);
        EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', t || '_before', t || '_before_bound');
    END LOOP;
END $$;
