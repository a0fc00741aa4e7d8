-- Raw events of a consistent sample of transactions (public interface), range
-- partitioned by UTC day of the event time. The logger creates the daily
-- partitions (events_sample_pYYYYMMDD) ahead of time and on demand for late
-- events, and drops those older than its raw-retention.
CREATE TABLE IF NOT EXISTS events_sample (
    ts             timestamptz NOT NULL,
    received_at    timestamptz NOT NULL,
    event_type     text        NOT NULL,
    txn            bytea       NOT NULL,
    partition      integer     NOT NULL,
    pub            text,
    seq            bigint,
    country        text        NOT NULL,
    os             text        NOT NULL,
    campaign_id    bigint      NOT NULL,
    advertiser_id  bigint      NOT NULL,
    exchange       text,
    name           text,
    price_micros   bigint,
    revenue_micros bigint,
    attributed     boolean,
    sample_ppm     integer     NOT NULL
) PARTITION BY RANGE (ts);

-- Rebuilding a transaction's chain is the common query.
CREATE INDEX IF NOT EXISTS events_sample_txn ON events_sample (txn, ts);
