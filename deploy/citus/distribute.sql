-- Distributes bid-logger's rollup tables over a Citus cluster's workers
-- (docs/citus.md). Run it on the coordinator, as a role that may call
-- create_distributed_table, after `bid-logger migrate` has made the tables,
-- and again after `migrate` has made tables newly declared in [rollup.*]:
-- a table already distributed is left as it is.
--
--   psql "$COORDINATOR_URL" -v shards=8 -f deploy/citus/distribute.sql
--
-- Each rollup table T is three tables: T_merged (ranges by bucket), T_recent
-- and T_live (on Citus the live rows stay there, not in the coordinator's
-- delta log: migrate makes the views so). All three are distributed by
-- the same column, so that the view T (which adds up recent and live rows
-- per key), the fold (recent) and the move (recent -> merged) run on each
-- worker for its own shards:
--   * campaign_id, when T has it (rollup_minute, rollup_hour, rollup_day, ...);
--   * otherwise exchange (rollup_exchange_*, price, landscape and timing
--     tables by exchange);
--   * otherwise T stays on the coordinator (a table by country or OS alone
--     is small).
-- Everything else stays on the coordinator: the ledger, the delta logs, the
-- boundaries, the marks, the fleet's leases and members, the loss tables and
-- events_sample (a sample of 1/1000 of the transactions by default).
\set ON_ERROR_STOP on
\if :{?shards}
\else
\set shards 8
\endif
SELECT set_config('citus.shard_count', :'shards', false);
DO $$
DECLARE
    r      record;
    col    text;
    part   text;
    n      integer := 0;
BEGIN
    FOR r IN SELECT rollup FROM bid_logger_boundary ORDER BY rollup LOOP
        col := (SELECT c FROM unnest(ARRAY['campaign_id', 'exchange']) WITH ORDINALITY AS u(c, i)
                WHERE EXISTS (SELECT 1 FROM information_schema.columns
                              WHERE table_schema = current_schema() AND table_name = r.rollup || '_merged'
                                AND column_name = u.c)
                ORDER BY i LIMIT 1);
        IF col IS NULL THEN
            RAISE NOTICE '% stays on the coordinator (neither campaign_id nor exchange)', r.rollup;
            CONTINUE;
        END IF;
        FOREACH part IN ARRAY ARRAY['_merged', '_recent', '_live'] LOOP
            IF NOT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = (r.rollup || part)::regclass) THEN
                PERFORM create_distributed_table(r.rollup || part, col);
                n := n + 1;
            END IF;
        END LOOP;
    END LOOP;
    RAISE NOTICE '% tables distributed', n;
END $$;
SELECT table_name, distribution_column, shard_count, colocation_id FROM citus_tables ORDER BY colocation_id, table_name;
