-- Fleets: the members of a group (`--group`) and their partition leases.
-- Expiry is on the database's clock (now()), never on a member's.

CREATE TABLE IF NOT EXISTS bid_logger_members (
    grp         text        NOT NULL,
    member      text        NOT NULL,
    run_id      bigint      NOT NULL,
    joined_at   timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (grp, member)
);

-- One row per partition of a group once it was first taken. `epoch` goes up
-- with every change of owner: the fencing token every flush checks.
-- `owner` is null when the partition was released (handed over).
CREATE TABLE IF NOT EXISTS bid_logger_leases (
    grp         text        NOT NULL,
    partition   integer     NOT NULL,
    owner       text,
    epoch       bigint      NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (grp, partition)
);

-- Fencing: called in every flush transaction of a group member, before
-- anything is written. Locks the batch's lease rows (so no one can take
-- them until the flush commits) and fails the transaction (SQLSTATE BLF01)
-- unless `member` still holds every one at the given epoch.
CREATE OR REPLACE FUNCTION bid_logger_fence(g text, member text, partitions integer[], epochs bigint[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE held integer;
BEGIN
    SELECT count(*) INTO held FROM (
        SELECT 1 FROM bid_logger_leases l
        JOIN unnest(partitions, epochs) AS t(partition, epoch) ON l.partition = t.partition
        WHERE l.grp = g AND l.owner = member AND l.epoch = t.epoch
        FOR SHARE OF l) AS x;
    IF held <> coalesce(array_length(partitions, 1), 0) THEN
        RAISE EXCEPTION 'bid-logger member % of group % no longer holds every lease of this batch', member, g
            USING ERRCODE = 'BLF01';
    END IF;
END $$;
