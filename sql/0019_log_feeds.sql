-- Each delta-log row names the tables its sums go on to when it is
-- consumed (`feeds`, comma-separated; NULL: appended by an earlier build,
-- whose rows go where that build sent them). A direct table's folds now
-- feed coarser tables (rollup_hour from rollup_minute's), and a change of
-- who feeds whom between a row's append and its consumption must neither
-- double nor drop its events. Instant (a nullable column, no default).
DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT c.relname::text AS log FROM pg_class c
             WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r'
               AND c.relname LIKE 'bid\_logger\_log\_%'
    LOOP
        EXECUTE format('ALTER TABLE %I ADD COLUMN IF NOT EXISTS feeds text', r.log);
    END LOOP;
END $$;
