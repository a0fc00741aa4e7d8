-- `sample-by-type`: a fleet's members agree on each event type's rollup
-- rate, as they agree on `sample`. The types whose rate is not `sample`'s,
-- as `auction=0.015625,loss=0.125`; empty when every type is at `sample`
-- (every group recorded before this migration).
ALTER TABLE bid_logger_groups ADD COLUMN IF NOT EXISTS sample_by_type text NOT NULL DEFAULT '';
