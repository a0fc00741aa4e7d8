-- Warehouse rollups (public interface: see README "Warehouse tables") and the
-- flush ledger (internal bookkeeping that makes flushes exactly once).

CREATE TABLE IF NOT EXISTS rollup_minute (
    bucket            timestamptz NOT NULL,
    event_type        text        NOT NULL,
    country           text        NOT NULL,
    os                text        NOT NULL,
    campaign_id       bigint      NOT NULL,
    advertiser_id     bigint      NOT NULL,
    sample_ppm        integer     NOT NULL CHECK (sample_ppm > 0 AND sample_ppm <= 1000000),
    events            bigint      NOT NULL,
    attributed_events bigint      NOT NULL,
    price_micros      bigint      NOT NULL,
    revenue_micros    bigint      NOT NULL,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bucket, event_type, country, os, campaign_id, advertiser_id, sample_ppm)
);

CREATE TABLE IF NOT EXISTS rollup_hour (LIKE rollup_minute INCLUDING ALL);

-- Unbiased estimates of the true totals: each row scaled by 1e6 / sample_ppm,
-- rows of different sampling rates added up.
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

-- One row per batch written, inserted in the batch's own transaction: a retry
-- of a batch whose COMMIT outcome was unknown finds its row and writes nothing.
CREATE TABLE IF NOT EXISTS bid_logger_flush_ledger (
    instance      text        NOT NULL,
    run_id        bigint      NOT NULL,
    batch_id      bigint      NOT NULL,
    events        bigint      NOT NULL,
    rows          bigint      NOT NULL,
    flushed_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance, run_id, batch_id)
);
CREATE INDEX IF NOT EXISTS bid_logger_flush_ledger_flushed_at ON bid_logger_flush_ledger (flushed_at);
