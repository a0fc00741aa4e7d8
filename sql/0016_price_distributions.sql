-- Price distributions: a rollup table declared with the `price` dimension
-- holds, per bucket, event type and its other dimensions, how many events
-- carried a price in each logarithmic price bucket (column `price_bucket`:
-- bucket i + 1 holds the prices p, micro-USD, with γ^(i−1) < p ≤ γ^i,
-- γ = 1.01 / 0.99). The counts add up like every rollup's; these functions
-- read prices back from them, each within 1 % of the true price.

-- The representative price (micro-USD) of `price_bucket` b: within 1 % of
-- every price counted in it.
CREATE OR REPLACE FUNCTION bid_logger_price(b bigint) RETURNS double precision
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT 2 * power(1.02020202020202::float8, b - 1) / (1.02020202020202::float8 + 1) $$;

-- The aggregate's state: element 0 is the quantile asked for, element b the
-- weight of price bucket b.
CREATE OR REPLACE FUNCTION bid_logger_quantile_add(state float8[], q float8, b bigint, w float8)
    RETURNS float8[] LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF state IS NULL THEN
        state := array_fill(q, ARRAY[1], ARRAY[0]);
    END IF;
    IF b >= 1 AND b <= 4096 AND w > 0 THEN
        state[b] := coalesce(state[b], 0) + w;
    END IF;
    RETURN state;
END $$;

-- The price of rank q × (total weight − 1), counting from 0, in bucket
-- order: the lower nearest-rank quantile, as the representative price of
-- the bucket holding it.
CREATE OR REPLACE FUNCTION bid_logger_quantile_final(state float8[])
    RETURNS double precision LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    total float8 := 0;
    seen float8 := 0;
    rank float8;
    b int;
BEGIN
    IF state IS NULL OR state[0] IS NULL OR array_upper(state, 1) < 1 THEN
        RETURN NULL;
    END IF;
    IF state[0] < 0 OR state[0] > 1 THEN
        RAISE EXCEPTION 'bid_logger_quantile: q must be between 0 and 1, got %', state[0];
    END IF;
    FOR b IN 1 .. array_upper(state, 1) LOOP
        total := total + coalesce(state[b], 0);
    END LOOP;
    IF total <= 0 THEN
        RETURN NULL;
    END IF;
    rank := state[0] * (total - 1);
    FOR b IN 1 .. array_upper(state, 1) LOOP
        seen := seen + coalesce(state[b], 0);
        IF seen > rank THEN
            RETURN bid_logger_price(b);
        END IF;
    END LOOP;
    RETURN bid_logger_price(array_upper(state, 1));
END $$;

-- bid_logger_quantile(q, price_bucket, events): the q-quantile (0 ≤ q ≤ 1)
-- of the prices of the rows aggregated, each row weighing its `events`
-- (the `_est` views' scaled events for an estimate of a sampled stream),
-- micro-USD, within 1 % of the true quantile. q is the first row's.
--   SELECT exchange, bid_logger_quantile(0.5, price_bucket, events) AS p50
--   FROM price_hour WHERE event_type = 'win' AND bucket >= now() - interval '1 day'
--   GROUP BY exchange;
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_proc WHERE proname = 'bid_logger_quantile' AND prokind = 'a') THEN
        CREATE AGGREGATE bid_logger_quantile(q float8, b bigint, w float8) (
            SFUNC = bid_logger_quantile_add,
            STYPE = float8[],
            FINALFUNC = bid_logger_quantile_final,
            PARALLEL = SAFE
        );
    END IF;
END $$;

-- A boundary move that ran out of time is tried again after a wait that
-- doubles up to 16 minutes, whichever member tries it (see the sink's
-- `consume`): kept beside the boundary. (A new warehouse's table is created
-- with these columns by the logger.)
ALTER TABLE IF EXISTS bid_logger_boundary
    ADD COLUMN IF NOT EXISTS move_after timestamptz,
    ADD COLUMN IF NOT EXISTS move_backoff interval NOT NULL DEFAULT interval '1 minute';
