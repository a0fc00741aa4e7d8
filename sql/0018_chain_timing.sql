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
-- [since, until): the first event of each type is the step's, over the
-- whole transaction (a repeated click counts from the first click, even
-- when it came before `since`: then the step is the earlier range's). The
-- transactions with an event in the range are found first (reading the
-- daily ranges it touches), then all their events, whenever they came (an
-- install days after its click). A delay is negative when the second
-- event's publisher clock was behind the first's. `exchange` is the first
-- event's, else the transaction's first (a click or install usually has
-- none); `campaign_id` and `advertiser_id` likewise, 0 meaning none.
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
    WITH started AS (
        SELECT DISTINCT txn FROM events_sample
        WHERE ts >= since AND ts < until AND event_type IN ('bid', 'win', 'impression', 'click')
    ),
    firsts AS (
        SELECT DISTINCT ON (e.txn, e.event_type)
               e.txn, e.event_type, e.ts, e.exchange, e.country, e.os, e.campaign_id, e.advertiser_id, e.sample_ppm
        FROM started s JOIN events_sample e ON e.txn = s.txn
        ORDER BY e.txn, e.event_type, e.ts
    ),
    txns AS (
        SELECT txn,
               (array_agg(exchange ORDER BY ts) FILTER (WHERE exchange IS NOT NULL))[1] AS exchange,
               (array_agg(campaign_id ORDER BY ts) FILTER (WHERE campaign_id <> 0))[1] AS campaign_id,
               (array_agg(advertiser_id ORDER BY ts) FILTER (WHERE advertiser_id <> 0))[1] AS advertiser_id
        FROM firsts GROUP BY txn
    ),
    steps (first_type, second_type, step) AS (
        VALUES ('bid', 'win', 'bid_to_win'), ('bid', 'loss', 'bid_to_loss'),
               ('win', 'impression', 'win_to_impression'), ('impression', 'click', 'impression_to_click'),
               ('click', 'install', 'click_to_install')
    )
    SELECT s.step, a.ts, round(extract(epoch FROM b.ts - a.ts) * 1000)::bigint, a.txn,
           coalesce(a.exchange, t.exchange), a.country, a.os,
           CASE WHEN a.campaign_id <> 0 THEN a.campaign_id ELSE coalesce(t.campaign_id, 0) END,
           CASE WHEN a.advertiser_id <> 0 THEN a.advertiser_id ELSE coalesce(t.advertiser_id, 0) END,
           a.sample_ppm
    FROM steps s
    JOIN firsts a ON a.event_type = s.first_type AND a.ts >= since AND a.ts < until
    JOIN firsts b ON b.txn = a.txn AND b.event_type = s.second_type
    JOIN txns t ON t.txn = a.txn
$$;
