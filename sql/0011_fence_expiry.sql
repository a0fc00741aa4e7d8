-- A lease past its expiry is no longer held: a batch fenced with it fails
-- (BLF01) even though nobody has taken the lease yet. A member whose
-- heartbeats stopped for a whole TTL (starved of CPU, cut off from the
-- database) therefore lands nothing more once its membership has expired,
-- and what another member settles of it (events received, not written,
-- counted as lost) cannot land afterwards and be counted twice. The clock
-- is read when the lease rows are locked (`clock_timestamp()`, not the
-- transaction's start): a flush that waited for the settling member's lock
-- sees that the lease has expired meanwhile.
CREATE OR REPLACE FUNCTION bid_logger_fence(g text, member text, partitions integer[], epochs bigint[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE held integer;
BEGIN
    SELECT count(*) INTO held FROM (
        SELECT 1 FROM bid_logger_leases l
        JOIN unnest(partitions, epochs) AS t(partition, epoch) ON l.partition = t.partition
        WHERE l.grp = g AND l.owner = member AND l.epoch = t.epoch AND l.expires_at >= clock_timestamp()
        FOR SHARE OF l) AS x;
    IF held <> coalesce(array_length(partitions, 1), 0) THEN
        RAISE EXCEPTION 'bid-logger member % of group % no longer holds every lease of this batch', member, g
            USING ERRCODE = 'BLF01';
    END IF;
END $$;
