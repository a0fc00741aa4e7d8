-- Chain timing from the raw sample: how long a transaction took from one
-- step of its chain to the next (bid → win, win → impression, impression →
-- click, click → install, and bid → loss), for the transactions of
-- `events_sample`.
--
-- The raw sample keeps whole transactions, chosen by their id alone, so the
-- delays of its transactions are an unbiased sample of every transaction's
-- delays: quantiles need no scaling, and a count scales by
-- 1e6 / sample_ppm (the raw rate), as the `_est` views do.
--
-- One row per step a sampled transaction took whose first event falls in
-- [since, until): the first event of each type is the step's (a repeated
-- click counts from the first click). The second event may come any time
-- later (an install days after its click), so `events_sample` is read from
-- `since` on. A delay is negative when the second event's publisher clock
-- was behind the first's. `exchange` is the transaction's (the first event
-- with one: a click or install usually has none), `campaign_id` and
-- `advertiser_id` the step's first event's, else the transaction's.
CREATE OR REPLACE FUNCTION bid_logger_chain_timing(since timestamptz, until timestamptz)
RETURNS TABLE (
    step          text,
    started_at    timestamptz,
    delay_ms      bigint,
    txn           bytea,
    exchange      text,
    country       text,
    os            text,
    campaign_id   bigint,
    advertiser_id bigint,
    sample_ppm    integer
)
LANGUAGE sql STABLE AS $$
    WITH firsts AS (
        SELECT DISTINCT ON (txn, event_type)
               txn, event_type, ts, exchange, country, os, campaign_id, advertiser_id, sample_ppm
        FROM events_sample
        WHERE ts >= since AND event_type IN ('bid', 'win', 'loss', 'impression', 'click', 'install')
        ORDER BY txn, event_type, ts
    ),
    txns AS (
        SELECT DISTINCT ON (txn) txn, exchange, campaign_id, advertiser_id
        FROM firsts
        ORDER BY txn, (exchange IS NULL), (campaign_id = 0), ts
    ),
    steps (first_type, second_type, step) AS (
        VALUES ('bid', 'win', 'bid_to_win'), ('bid', 'loss', 'bid_to_loss'),
               ('win', 'impression', 'win_to_impression'), ('impression', 'click', 'impression_to_click'),
               ('click', 'install', 'click_to_install')
    )
    SELECT s.step, a.ts, round(extract(epoch FROM b.ts - a.ts) * 1000)::bigint, a.txn,
           coalesce(a.exchange, t.exchange), a.country, a.os,
           CASE WHEN a.campaign_id <> 0 THEN a.campaign_id ELSE t.campaign_id END,
           CASE WHEN a.advertiser_id <> 0 THEN a.advertiser_id ELSE t.advertiser_id END,
           a.sample_ppm
    FROM steps s
    JOIN firsts a ON a.event_type = s.first_type AND a.ts < until
    JOIN firsts b ON b.txn = a.txn AND b.event_type = s.second_type
    JOIN txns t ON t.txn = a.txn
$$;
