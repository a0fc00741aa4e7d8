-- A flush's fence no longer keeps its member's heartbeat from renewing the
-- leases. The fence used to lock the batch's lease rows FOR SHARE for the
-- whole flush; a renewal (an UPDATE of expires_at) had to wait for it, and
-- the heartbeat waited holding the group's advisory lock, so one flush
-- slower than lease-ttl (a loaded or locked database) let every member's
-- leases expire and fenced the whole group.
--
-- Now the fence locks FOR KEY SHARE, which only FOR UPDATE waits for: a
-- renewal, a claim and marking a claim ready go ahead, while whatever
-- changes a lease's owner or epoch (taking an expired lease, passing a
-- lease to its claimant, releasing leases, settling an expired member)
-- first locks the rows FOR UPDATE and so still waits until every flush
-- fenced with them has ended. The rows are locked in partition order on
-- both sides, so a flush and a heartbeat cannot deadlock over them.
CREATE OR REPLACE FUNCTION bid_logger_fence(g text, member text, partitions integer[], epochs bigint[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE held integer;
BEGIN
    SELECT count(*) INTO held FROM (
        SELECT 1 FROM bid_logger_leases l
        JOIN unnest(partitions, epochs) AS t(partition, epoch) ON l.partition = t.partition
        WHERE l.grp = g AND l.owner = member AND l.epoch = t.epoch AND l.expires_at >= clock_timestamp()
        ORDER BY l.partition
        FOR KEY SHARE OF l) AS x;
    IF held <> coalesce(array_length(partitions, 1), 0) THEN
        RAISE EXCEPTION 'bid-logger member % of group % no longer holds every lease of this batch', member, g
            USING ERRCODE = 'BLF01';
    END IF;
END $$;
