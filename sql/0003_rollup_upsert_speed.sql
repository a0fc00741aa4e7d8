-- Make the additive upserts cheap (the flush is bounded by them):
--
-- * fillfactor 50: a busy bucket's rows are updated once per flush. An update
--   that finds room on its own page is a HOT update: no new entry in the
--   seven-column primary key, and the dead version is pruned in place. With
--   full pages (the default) every update also inserts into the index.
-- * COLLATE "C" on the text key columns: the primary key compares them with
--   memcmp instead of the database's locale rules. Their values are ASCII
--   codes and lower-case OS names, so sort order is unchanged for them; a
--   query may still ask for another order with its own COLLATE.
-- The estimate views depend on the columns: dropped here, recreated as in 0001.
DROP VIEW IF EXISTS rollup_minute_est, rollup_hour_est;
ALTER TABLE rollup_minute SET (fillfactor = 50);
ALTER TABLE rollup_hour SET (fillfactor = 50);
ALTER TABLE rollup_minute
    ALTER COLUMN event_type TYPE text COLLATE "C",
    ALTER COLUMN country TYPE text COLLATE "C",
    ALTER COLUMN os TYPE text COLLATE "C";
ALTER TABLE rollup_hour
    ALTER COLUMN event_type TYPE text COLLATE "C",
    ALTER COLUMN country TYPE text COLLATE "C",
    ALTER COLUMN os TYPE text COLLATE "C";

CREATE OR REPLACE VIEW rollup_minute_est AS
SELECT bucket, event_type, country, os, campaign_id, advertiser_id,
       sum(events            * 1000000.0 / sample_ppm)::double precision AS events,
       sum(attributed_events * 1000000.0 / sample_ppm)::double precision AS attributed_events,
       sum(price_micros      * 1000000.0 / sample_ppm)::double precision AS price_micros,
       sum(revenue_micros    * 1000000.0 / sample_ppm)::double precision AS revenue_micros,
       max(updated_at) AS updated_at
FROM rollup_minute
GROUP BY bucket, event_type, country, os, campaign_id, advertiser_id;

CREATE OR REPLACE VIEW rollup_hour_est AS
SELECT bucket, event_type, country, os, campaign_id, advertiser_id,
       sum(events            * 1000000.0 / sample_ppm)::double precision AS events,
       sum(attributed_events * 1000000.0 / sample_ppm)::double precision AS attributed_events,
       sum(price_micros      * 1000000.0 / sample_ppm)::double precision AS price_micros,
       sum(revenue_micros    * 1000000.0 / sample_ppm)::double precision AS revenue_micros,
       max(updated_at) AS updated_at
FROM rollup_hour
GROUP BY bucket, event_type, country, os, campaign_id, advertiser_id;
