-- Lossless handover: a member below its share claims a partition of a
-- member above it (or leaving). The claimant subscribes and holds the
-- partition's messages, then marks its claim ready; the owner writes
-- everything it received of the partition (its marks committed) and passes
-- the lease to the claimant, a new epoch; the claimant replays what it
-- held above the marks.
ALTER TABLE bid_logger_leases
    ADD COLUMN IF NOT EXISTS claimant text,
    ADD COLUMN IF NOT EXISTS claim_ready boolean NOT NULL DEFAULT false;
