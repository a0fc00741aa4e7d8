//! Fleets: the members of a group (`--group`) divide the partitions between
//! themselves through leases in PostgreSQL, and account for every event
//! when partitions move.
//!
//! Every `lease-ttl / 3` a member's [`Coordinator`] runs one *heartbeat*
//! transaction, serialised with the group's other members by an advisory
//! lock, on the database's clock (`now()`), never on a member's:
//!
//! 1. renew its member row and every lease it holds (`expires_at = now() +
//!    ttl`); a lease it believed it held and no longer does means it was
//!    fenced (frozen past the TTL, its partitions taken): it drops what it
//!    holds and starts again;
//! 2. remove members whose row expired, settling what each left outstanding
//!    (events it received at or below its committed marks but did not write:
//!    counted as lost here);
//! 3. compute its target share, `P / N` (the first `P mod N` members in name
//!    order one more; 0 for a member leaving), and take free or expired
//!    leases up to it (a new epoch each: the fencing token), reading their
//!    committed marks; then, still below its share, *claim* partitions of
//!    members above theirs;
//! 4. mark ready the claims every ingest thread now holds, and pick up the
//!    leases passed to it;
//! 5. hand over its own partitions whose claims are ready.
//!
//! A handover loses nothing and doubles nothing. The claimant subscribes
//! and holds the partition's messages ([`bid_logger_core::held`]) before
//! it marks the claim ready. The owner's ingest threads then unsubscribe
//! the partition and hand what they hold to the sink, the sink writes it
//! with its marks (the cut), and only then is the lease *passed* to the
//! claimant, a new epoch. The claimant starts its trackers from the marks
//! and replays what it held above them. Every flush fences with the leases
//! held ([`bid_logger_fence`, migration 0012](../../sql/0012_fence_key_share.sql)):
//! it locks them `FOR KEY SHARE` until it commits, which holds up whatever
//! changes their owner or epoch (those lock `FOR UPDATE` first) but not a
//! renewal, so a slow flush never costs a member its leases.
//! A member stopping ([`Phase::Depart`]) leaves the members first, so the
//! others claim everything it holds.
//!
//! [`status`] reads the same tables for `bid-logger fleet`.

pub mod status;

use crate::assignment::{idle_timeout, Assignment, FlushWait};
use crate::db::DbError;
use crate::telemetry as t;
use bid_logger_core::marks::{decode, SeqMarks};
use metrics::{counter, gauge, Gauge};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// Default `lease-ttl`.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(6);

/// Settings of a fleet member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetConfig {
    /// The group's name.
    pub group: String,
    /// How long an unrenewed lease lasts.
    pub lease_ttl: Duration,
    /// Bytes of the partitions it does not own a hot standby keeps (0: not
    /// a standby).
    pub standby_memory: usize,
}

impl FleetConfig {
    /// How far back a standby keeps the partitions it does not own: past
    /// the last flush of a member that dies (one flush interval), its
    /// lease's expiry (one TTL) and the survivors' next heartbeat, with a
    /// margin.
    pub fn standby_window(&self, flush_interval: Duration) -> Duration {
        2 * self.lease_ttl + flush_interval
    }
}

const LOCK: &str = "SELECT pg_advisory_xact_lock(hashtextextended('bid_logger_group:' || $1, 0))";
const RENEW_MEMBER: &str = "INSERT INTO bid_logger_members (grp, member, run_id, expires_at)
    VALUES ($1, $2, $3, now() + $4 * interval '1 millisecond')
    ON CONFLICT (grp, member) DO UPDATE SET run_id = excluded.run_id, expires_at = excluded.expires_at";
const EXPIRED_MEMBERS: &str = "DELETE FROM bid_logger_members WHERE grp = $1 AND expires_at < now() RETURNING member";
const SETTLE_OUTSTANDING: &str = "UPDATE bid_logger_outstanding o SET landed = drained, updated_at = now()
    FROM (SELECT instance, drained - landed AS left FROM bid_logger_outstanding WHERE instance = $1 FOR UPDATE) x
    WHERE o.instance = x.instance RETURNING x.left";
/// Renews the leases under this member's name (those passed to it since
/// included), except `$4`: those an earlier run of it left, which are not
/// renewed but taken anew with a new epoch ([`TAKE`]), fencing that run if
/// it still lives. An expired lease is not renewed: its member may have
/// been settled already (see [`LOCK_LEASES_OF`]), so it is fenced.
const RENEW_LEASES: &str = "UPDATE bid_logger_leases SET expires_at = now() + $3 * interval '1 millisecond'
    WHERE grp = $1 AND owner = $2 AND NOT partition = ANY($4) AND expires_at >= now() RETURNING partition, epoch";
/// Before an expired member's outstanding events are settled (or a member
/// gives its own back): waits for the flushes still fencing with its leases
/// (they hold them `FOR KEY SHARE`, migration 0012) to end. Every later
/// flush of it fails its fence (the leases have expired, migration 0011,
/// or have no owner), so nothing settled here lands afterwards.
const LOCK_LEASES_OF: &str =
    "SELECT partition FROM bid_logger_leases WHERE grp = $1 AND owner = $2 ORDER BY partition FOR UPDATE";
/// Before a lease changes owner or epoch ([`TAKE`], [`PASS`]): waits for
/// the flushes fencing with it to end, so that none lands after the change.
/// Renewals and claims do not wait for flushes: a slow flush never holds up
/// a heartbeat. In partition order, as the fence locks them.
const LOCK_TO_MOVE: &str =
    "SELECT partition FROM bid_logger_leases WHERE grp = $1 AND partition = ANY($2) ORDER BY partition FOR UPDATE";
/// At a run's first heartbeat (it holds nothing yet): the leases an earlier
/// run under this name left.
const STALE_LEASES: &str = "SELECT partition FROM bid_logger_leases WHERE grp = $1 AND owner = $2";
const MEMBERS: &str = "SELECT member FROM bid_logger_members WHERE grp = $1 ORDER BY member";
const LEASES: &str = "SELECT partition, owner, expires_at < now(), claimant, claim_ready
    FROM bid_logger_leases WHERE grp = $1";
const TAKE: &str = "INSERT INTO bid_logger_leases AS l (grp, partition, owner, epoch, expires_at)
    SELECT $1, p, $2, 1, now() + $4 * interval '1 millisecond' FROM unnest($3::integer[]) AS p
    ON CONFLICT (grp, partition) DO UPDATE SET owner = excluded.owner, epoch = l.epoch + 1,
        expires_at = excluded.expires_at, claimant = NULL, claim_ready = false
    WHERE l.owner IS NULL OR l.expires_at < now() OR l.owner = $2
    RETURNING partition, epoch, (xmax <> 0 AND epoch > 1) AS taken_over";
const CLAIM: &str = "UPDATE bid_logger_leases SET claimant = $2, claim_ready = false
    WHERE grp = $1 AND partition = ANY($3) AND owner IS NOT NULL AND owner <> $2 RETURNING partition";
const CLAIM_READY: &str = "UPDATE bid_logger_leases SET claim_ready = true
    WHERE grp = $1 AND claimant = $2 AND partition = ANY($3)";
const WITHDRAW: &str =
    "UPDATE bid_logger_leases SET claimant = NULL, claim_ready = false WHERE grp = $1 AND claimant = $2";
const READ_MARKS: &str = "SELECT partition, marks FROM bid_logger_seq_marks WHERE scope = $1 AND partition = ANY($2)";
/// Passes each lease to its claimant (a new epoch), or releases it when
/// the claim was withdrawn meanwhile.
const PASS: &str = "UPDATE bid_logger_leases SET owner = claimant, epoch = epoch + 1,
        expires_at = CASE WHEN claimant IS NULL THEN now() ELSE now() + $4 * interval '1 millisecond' END,
        claimant = NULL, claim_ready = false
    WHERE grp = $1 AND owner = $2 AND partition = ANY($3) RETURNING partition, owner";
const LEAVE: &str = "DELETE FROM bid_logger_members WHERE grp = $1 AND member = $2";

/// Where a member's life stands, as the pipeline tells its coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Taking and keeping its share.
    Run,
    /// Stopping (SIGTERM): leaves the members, so that the others claim
    /// its partitions, and hands each over as its claim is ready.
    Depart,
    /// The last flush landed: releases what is left and leaves.
    Stop,
}

/// A partition claimed from another member.
#[derive(Debug, Clone, Copy)]
struct Claim {
    /// The assignment generation that first held it (0: not published yet).
    generation: u64,
    /// Marked ready in the database (every thread holds its messages).
    ready: bool,
}

/// A member's coordinator: heartbeats, takes, claims and passes leases,
/// and publishes the [`Assignment`] the ingest threads and the sink follow.
pub struct Coordinator {
    config: FleetConfig,
    member: String,
    run_id: i64,
    partition_count: u32,
    pool: deadpool_postgres::Pool,
    links: CoordinatorLinks,
    /// The generation of the last reset: fencing reports of batches formed
    /// before it are about what it already dropped.
    reset_at: u64,
    /// Leases held: partition → epoch.
    held: BTreeMap<u32, i64>,
    /// Partitions claimed from other members, not passed yet.
    claims: BTreeMap<u32, Claim>,
    /// A handover under way.
    release: Release,
    /// Heartbeats so far in this membership (a new member takes nothing in
    /// its first, so that members starting together see each other).
    beats: u64,
    /// Stopping: handing every partition over; told when done.
    departing: Option<Option<oneshot::Sender<()>>>,
    /// `bid_logger_owned_partitions{group}`.
    owned: Gauge,
    /// Leases an earlier run under this member's name left (found at this
    /// run's first heartbeat): not renewed, taken anew.
    stale: std::collections::BTreeSet<u32>,
    /// The committed marks of the partitions held, as of their take (see
    /// [`Assignment::seeds`]).
    seeds: Arc<SeqMarks>,
    /// Times fenced (see [`Assignment::fences`]).
    fences: u64,
}

/// What a coordinator is linked to.
pub struct CoordinatorLinks {
    /// Where it publishes the assignment.
    pub assignment: watch::Sender<Arc<Assignment>>,
    /// The generation each ingest thread applied.
    pub acks: Arc<[AtomicU64]>,
    /// Asks the sink to say when what it received has landed.
    pub flush_wait: mpsc::Sender<FlushWait>,
    /// The sink's reports of failed fences (the batch's assignment generation).
    pub fenced: mpsc::UnboundedReceiver<u64>,
}

/// Where a handover stands.
#[derive(Debug, Default)]
enum Release {
    #[default]
    None,
    /// Waiting for every thread to apply `generation` (unsubscribed, what
    /// they held handed over).
    Acks { partitions: Vec<u32>, generation: u64 },
    /// Waiting for the sink to write it.
    Flush { partitions: Vec<u32>, landed: oneshot::Receiver<()> },
}

/// What one heartbeat decided, applied once its transaction committed.
#[derive(Default)]
struct Beat {
    /// Partitions taken (free, expired or passed to this member).
    taken: Vec<u32>,
    seeds: SeqMarks,
    /// Claims made, withdrawn or readied: the assignment changes.
    claims_changed: bool,
    /// Ready claims on this member's leases: to hand over.
    hand_over: Vec<u32>,
    /// Events members that expired left unwritten.
    lost: u64,
    members: usize,
    target: usize,
}

impl Coordinator {
    /// A coordinator for `member` of a fleet of `partition_count` partitions.
    pub fn new(
        config: FleetConfig,
        member: String,
        partition_count: u32,
        pool: deadpool_postgres::Pool,
        links: CoordinatorLinks,
    ) -> Coordinator {
        let group = config.group.clone();
        let owned = gauge!(t::OWNED_PARTITIONS, "group" => group.clone());
        owned.set(0.0);
        gauge!(t::GROUP_PARTITIONS, "group" => group).set(f64::from(partition_count));
        counter!(t::LEASE_TAKEOVERS).increment(0);
        counter!(t::FENCED).increment(0);
        Coordinator {
            config,
            member,
            run_id: rand::random(),
            partition_count,
            pool,
            links,
            reset_at: 0,
            held: BTreeMap::new(),
            claims: BTreeMap::new(),
            release: Release::None,
            beats: 0,
            departing: None,
            owned,
            stale: Default::default(),
            seeds: Arc::default(),
            fences: 0,
        }
    }

    /// Heartbeats until `phase` says [`Phase::Stop`], then leaves the group
    /// (what is left released: the pipeline stops it after the last flush
    /// landed). On [`Phase::Depart`] it hands every partition over to the
    /// others first, and says so on `departed` once it holds none.
    pub async fn run(mut self, mut phase: watch::Receiver<Phase>, departed: oneshot::Sender<()>) {
        let beat = self.config.lease_ttl / 3;
        let mut next_beat = tokio::time::Instant::now();
        let mut departed = Some(departed);
        tracing::info!(group = %self.config.group, member = %self.member, lease_ttl = ?self.config.lease_ttl, "joining the group");
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next_beat.min(tokio::time::Instant::now() + Duration::from_millis(50))) => {}
                changed = phase.changed() => {
                    let now = *phase.borrow_and_update();
                    if changed.is_err() || now == Phase::Stop {
                        break;
                    }
                    if now == Phase::Depart && self.departing.is_none() {
                        self.depart(departed.take()).await;
                        next_beat = tokio::time::Instant::now();
                    }
                }
                Some(generation) = self.links.fenced.recv() => {
                    if generation > self.reset_at {
                        self.reset("a flush found a lease taken").await;
                    }
                    continue;
                }
            }
            self.advance_release().await;
            if tokio::time::Instant::now() >= next_beat {
                next_beat = tokio::time::Instant::now() + beat;
                if let Err(e) = self.heartbeat().await {
                    tracing::warn!(error = %e, "heartbeat failed; retrying (leases last lease-ttl without one)");
                    next_beat = tokio::time::Instant::now() + Duration::from_millis(200).min(beat);
                }
            }
            self.check_departed(false);
        }
        self.leave().await;
    }

    /// Starts handing every partition over: leaves the members (the others'
    /// shares now leave it out, so they claim its partitions) and withdraws
    /// its own claims.
    async fn depart(&mut self, departed: Option<oneshot::Sender<()>>) {
        tracing::info!(group = %self.config.group, owned = self.held.len(), "stopping: handing every partition over to the other members");
        self.departing = Some(departed);
        self.claims.clear();
        self.publish();
        let result = async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            tx.execute(LOCK, &[&self.config.group]).await?;
            tx.execute(LEAVE, &[&self.config.group, &self.member]).await?;
            tx.execute(WITHDRAW, &[&self.config.group, &self.member]).await?;
            tx.commit().await?;
            Ok::<_, DbError>(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "leaving the members failed; the others claim nothing until its row expires");
        }
    }

    /// Says the departure is done once nothing is held (or nobody is left
    /// to hand over to: `alone`).
    fn check_departed(&mut self, alone: bool) {
        let done = (self.held.is_empty() && matches!(self.release, Release::None)) || alone;
        if let Some(slot) = self.departing.as_mut().filter(|_| done) {
            if let Some(tx) = slot.take() {
                if alone && !self.held.is_empty() {
                    tracing::info!(owned = self.held.len(), "no other member to hand over to");
                } else {
                    tracing::info!("every partition handed over");
                }
                let _ = tx.send(());
            }
        }
    }

    /// One heartbeat transaction (see the module's docs).
    async fn heartbeat(&mut self) -> Result<(), DbError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // A member frozen (SIGSTOP, a VM pause) inside this transaction would
        // hold the group's lock for as long as it is frozen: the server ends
        // its session instead.
        tx.batch_execute(&idle_timeout(self.config.lease_ttl)).await?;
        tx.execute(LOCK, &[&self.config.group]).await?;
        let Some(beat) = self.decide(&tx).await? else {
            tx.rollback().await?;
            drop(client);
            self.reset("a lease was taken while this member could not renew it").await;
            return Ok(());
        };
        tx.commit().await?;
        self.apply(beat);
        Ok(())
    }

    /// The heartbeat's statements; `None` when this member was fenced.
    async fn decide(&mut self, tx: &tokio_postgres::Transaction<'_>) -> Result<Option<Beat>, DbError> {
        let (group, member) = (&self.config.group, &self.member);
        let ttl_ms = self.config.lease_ttl.as_millis() as f64;
        if self.departing.is_none() {
            tx.execute(RENEW_MEMBER, &[group, member, &self.run_id, &ttl_ms]).await?;
        }
        if self.beats == 0 {
            self.stale =
                tx.query(STALE_LEASES, &[group, member]).await?.iter().map(|r| r.get::<_, i32>(0) as u32).collect();
            if !self.stale.is_empty() {
                tracing::warn!(
                    group = %group,
                    partitions = ?self.stale,
                    "leases an earlier run of this instance-id left are taken anew (new epochs): it stopped without \
                     handing them over, or it runs elsewhere with the same instance-id (then it is fenced)"
                );
            }
        }
        let stale: Vec<i32> = self.stale.iter().map(|&p| p as i32).collect();
        let renewed: BTreeMap<u32, i64> = tx
            .query(RENEW_LEASES, &[group, member, &ttl_ms, &stale])
            .await?
            .iter()
            .map(|r| (r.get::<_, i32>(0) as u32, r.get::<_, i64>(1)))
            .collect();
        if self.held.iter().any(|(p, e)| renewed.get(p) != Some(e)) {
            return Ok(None);
        }
        let mut beat = Beat::default();
        for row in tx.query(EXPIRED_MEMBERS, &[group]).await? {
            let gone: String = row.get(0);
            tx.execute(LOCK_LEASES_OF, &[group, &gone]).await?;
            let left: i64 = tx.query_opt(SETTLE_OUTSTANDING, &[&gone]).await?.map_or(0, |r| r.get(0));
            tracing::warn!(group = %group, member = %gone, unwritten_events = left, "a member's lease expired: it left without a handover");
            beat.lost += left.max(0) as u64;
        }
        // Leases passed to this member since the last heartbeat.
        let passed: Vec<(u32, i64)> =
            renewed.iter().filter(|(p, _)| !self.held.contains_key(p)).map(|(&p, &e)| (p, e)).collect();
        for (p, epoch) in passed {
            self.held.insert(p, epoch);
            beat.claims_changed |= self.claims.remove(&p).is_some();
            beat.taken.push(p);
        }
        let members: Vec<String> = tx.query(MEMBERS, &[group]).await?.iter().map(|r| r.get(0)).collect();
        let leases: Vec<LeaseRow> = tx.query(LEASES, &[group]).await?.iter().map(LeaseRow::from).collect();
        // An earlier run's lease taken by another member meanwhile is no longer this one's concern.
        self.stale.retain(|p| leases.iter().any(|l| l.partition == *p && l.owner.as_deref() == Some(member)));
        self.beats += 1;
        let n = members.len().max(1) as u32;
        let partition_count = self.partition_count;
        let target_of = |m: &str| match members.iter().position(|x| x == m) {
            Some(i) => (partition_count / n + u32::from((i as u32) < partition_count % n)) as usize,
            None => 0,
        };
        beat.members = members.len();
        beat.target = target_of(member);
        let live = |m: &Option<String>| m.as_deref().is_some_and(|m| members.iter().any(|x| x == m));

        // Claims withdrawn (the lease expired and was taken by another, or
        // passed here): no longer held.
        let before = self.claims.len();
        let mine: Vec<u32> =
            leases.iter().filter(|l| l.claimant.as_deref() == Some(member)).map(|l| l.partition).collect();
        self.claims.retain(|p, _| mine.contains(p));
        beat.claims_changed |= self.claims.len() != before;
        // Claims every thread now holds: ready.
        let acked = |g: u64| g > 0 && self.links.acks.iter().all(|a| a.load(Ordering::Acquire) >= g);
        let ready: Vec<i32> =
            self.claims.iter().filter(|(_, c)| !c.ready && acked(c.generation)).map(|(&p, _)| p as i32).collect();
        if !ready.is_empty() {
            tx.execute(CLAIM_READY, &[group, member, &ready]).await?;
            for p in &ready {
                if let Some(c) = self.claims.get_mut(&(*p as u32)) {
                    c.ready = true;
                }
            }
        }

        // A member's first heartbeat takes only what an earlier run of it
        // left (so that members starting together see each other first).
        let first = self.beats == 1;
        if self.departing.is_none() && (!first || !self.stale.is_empty()) && matches!(self.release, Release::None) {
            let wanted = beat.target.saturating_sub(self.held.len() + self.claims.len());
            // Free or expired leases first (an expired owner's events are
            // counted from the marks; a claimed one replays what it held),
            // and those an earlier run of this member left.
            let is_free = |p: &u32| {
                self.stale.contains(p)
                    || !first
                        && leases.iter().find(|l| l.partition == *p).is_none_or(|l| l.owner.is_none() || l.expired)
            };
            let mut free: Vec<i32> = self.claims.keys().copied().filter(is_free).map(|p| p as i32).collect();
            free.extend(
                (0..partition_count)
                    .filter(|p| !self.held.contains_key(p) && !self.claims.contains_key(p) && is_free(p))
                    .take(wanted)
                    .map(|p| p as i32),
            );
            if !free.is_empty() {
                tx.execute(LOCK_TO_MOVE, &[group, &free]).await?;
                for row in tx.query(TAKE, &[group, member, &free, &ttl_ms]).await? {
                    let (p, epoch, over): (i32, i64, bool) = (row.get(0), row.get(1), row.get(2));
                    beat.taken.push(p as u32);
                    self.held.insert(p as u32, epoch);
                    self.stale.remove(&(p as u32));
                    beat.claims_changed |= self.claims.remove(&(p as u32)).is_some();
                    if over {
                        counter!(t::LEASE_TAKEOVERS).increment(1);
                    }
                }
            }
            // Then claims on the partitions of members above their share
            // (or no longer members: leaving).
            let wanted = beat.target.saturating_sub(self.held.len() + self.claims.len());
            if wanted > 0 && !first {
                let mut owned: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
                for l in leases.iter().filter(|l| !l.expired) {
                    if let Some(o) = l.owner.as_deref().filter(|&o| o != member) {
                        owned.entry(o).or_default().push(l.partition);
                    }
                }
                let mut candidates = Vec::new();
                for (owner, mut parts) in owned {
                    let surplus = parts.len().saturating_sub(target_of(owner));
                    parts.retain(|p| leases.iter().any(|l| l.partition == *p && !live(&l.claimant)));
                    parts.sort_unstable_by(|a, b| b.cmp(a));
                    candidates.extend(parts.into_iter().take(surplus).map(|p| p as i32));
                }
                candidates.truncate(wanted);
                if !candidates.is_empty() {
                    for row in tx.query(CLAIM, &[group, member, &candidates]).await? {
                        let p: i32 = row.get(0);
                        self.claims.insert(p as u32, Claim { generation: 0, ready: false });
                        beat.claims_changed = true;
                    }
                }
            }
        }
        if !beat.taken.is_empty() {
            beat.taken.sort_unstable();
            let parts: Vec<i32> = beat.taken.iter().map(|&p| p as i32).collect();
            let mut values = Vec::new();
            for row in tx.query(READ_MARKS, &[group, &parts]).await? {
                let (p, bytes): (i32, Vec<u8>) = (row.get(0), row.get(1));
                match decode(&bytes) {
                    Ok(m) => values.push((p as u32, m)),
                    Err(e) => tracing::warn!(partition = p, error = %e, "committed marks cannot be read; left out"),
                }
            }
            beat.seeds = SeqMarks::committed(values, bid_logger_core::clock::now_ms());
        }
        // Ready claims of live members on this member's leases: hand them over.
        if matches!(self.release, Release::None) {
            beat.hand_over = leases
                .iter()
                .filter(|l| l.owner.as_deref() == Some(member) && l.ready && live(&l.claimant))
                .filter(|l| self.held.contains_key(&l.partition))
                .map(|l| l.partition)
                .collect();
        }
        Ok(Some(beat))
    }

    /// Applies a committed heartbeat: publishes what changed, starts a handover.
    fn apply(&mut self, beat: Beat) {
        t::count_lost(beat.lost);
        if !beat.taken.is_empty() {
            tracing::info!(group = %self.config.group, partitions = ?beat.taken, marks = beat.seeds.len(), owned = self.held.len(), target = beat.target, members = beat.members, "leases taken");
        }
        let hand_over = !beat.hand_over.is_empty() && matches!(self.release, Release::None);
        if hand_over {
            tracing::info!(group = %self.config.group, partitions = ?beat.hand_over, "handing partitions over to their claimants");
            self.release = Release::Acks { partitions: beat.hand_over, generation: 0 };
        }
        // One assignment for the whole heartbeat. Each carries the whole
        // state (every seed, the fence count): a follower sees only the
        // latest, and misses nothing by skipping one.
        if !beat.taken.is_empty() || beat.claims_changed || hand_over {
            let new: Vec<u32> = self.claims.iter().filter(|(_, c)| c.generation == 0).map(|(&p, _)| p).collect();
            if !new.is_empty() {
                tracing::info!(group = %self.config.group, partitions = ?new, "claimed from members above their share: holding their messages until handed over");
            }
            if !beat.taken.is_empty() {
                Arc::make_mut(&mut self.seeds).replace(&beat.taken, &beat.seeds);
            }
            let generation = self.publish();
            for c in self.claims.values_mut().filter(|c| c.generation == 0) {
                c.generation = generation;
            }
            if let Release::Acks { generation: g @ 0, .. } = &mut self.release {
                *g = generation;
            }
        }
        self.check_departed(self.departing.is_some() && beat.members == 0);
    }

    /// Publishes the held leases, all received but those being released,
    /// and the claims, held.
    fn publish(&mut self) -> u64 {
        if !self.seeds.is_empty() {
            let held = &self.held;
            Arc::make_mut(&mut self.seeds).retain_partitions(|p| held.contains_key(&p));
        }
        let releasing: &[u32] = match &self.release {
            Release::Acks { partitions, .. } | Release::Flush { partitions, .. } => partitions,
            Release::None => &[],
        };
        let generation = self.links.assignment.borrow().generation + 1;
        let a = Assignment {
            generation,
            receive: self.held.keys().copied().filter(|p| !releasing.contains(p)).collect(),
            held: self.held.iter().map(|(&p, &e)| (p, e)).collect(),
            hold: self.claims.keys().copied().collect(),
            seeds: self.seeds.clone(),
            fences: self.fences,
        };
        self.owned.set(self.held.len() as f64);
        self.links.assignment.send_replace(Arc::new(a));
        generation
    }

    /// Moves a handover along: once every thread applied it, asks the sink
    /// to write what they handed over; once that landed, passes the leases
    /// to their claimants.
    async fn advance_release(&mut self) {
        match std::mem::take(&mut self.release) {
            Release::None => {}
            Release::Acks { partitions, generation } => {
                if self.links.acks.iter().all(|a| a.load(Ordering::Acquire) >= generation) {
                    let (done, landed) = oneshot::channel();
                    if self.links.flush_wait.send(FlushWait(done)).await.is_err() {
                        return; // the sink is gone: stopping
                    }
                    self.release = Release::Flush { partitions, landed };
                } else {
                    self.release = Release::Acks { partitions, generation };
                }
            }
            Release::Flush { partitions, mut landed } => match landed.try_recv() {
                Ok(()) => match self.pass(&partitions).await {
                    Ok(to) => {
                        for p in &partitions {
                            self.held.remove(p);
                        }
                        tracing::info!(partitions = ?to, owned = self.held.len(), "partitions handed over");
                        self.publish();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "passing handed-over leases failed; retrying");
                        let (done, landed) = oneshot::channel();
                        let _ = done.send(());
                        self.release = Release::Flush { partitions, landed };
                    }
                },
                Err(oneshot::error::TryRecvError::Empty) => self.release = Release::Flush { partitions, landed },
                Err(oneshot::error::TryRecvError::Closed) => {}
            },
        }
    }

    /// Passes `partitions` to their claimants (released when a claim was
    /// withdrawn meanwhile): (partition, new owner).
    async fn pass(&self, partitions: &[u32]) -> Result<Vec<(u32, Option<String>)>, DbError> {
        let parts: Vec<i32> = partitions.iter().map(|&p| p as i32).collect();
        let ttl_ms = self.config.lease_ttl.as_millis() as f64;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute(LOCK_TO_MOVE, &[&self.config.group, &parts]).await?;
        let rows = tx.query(PASS, &[&self.config.group, &self.member, &parts, &ttl_ms]).await?;
        tx.commit().await?;
        Ok(rows.iter().map(|r| (r.get::<_, i32>(0) as u32, r.get(1))).collect())
    }

    /// Drops everything and starts again as a new member: fenced.
    async fn reset(&mut self, why: &str) {
        counter!(t::FENCED).increment(1);
        tracing::error!(
            reason = why,
            owned = self.held.len(),
            "fenced: dropping what this member holds; the new owners count it from the committed marks"
        );
        let held = std::mem::take(&mut self.held);
        self.claims.clear();
        self.release = Release::None;
        self.fences += 1;
        self.reset_at = self.publish();
        self.beats = 0;
        self.run_id = rand::random();
        if let Err(e) = self.give_back(&held).await {
            tracing::warn!(error = %e, "releasing the remaining leases failed; they expire after lease-ttl");
        }
    }

    /// Releases the leases under this member's name, except those of `held`
    /// at another epoch than held here (taken anew since by a later run
    /// under the same name: they stay with it); withdraws this member's
    /// claims, and settles what it left outstanding (counted as lost).
    async fn give_back(&self, held: &BTreeMap<u32, i64>) -> Result<(), DbError> {
        let (partitions, epochs): (Vec<i32>, Vec<i64>) = held.iter().map(|(&p, &e)| (p as i32, e)).unzip();
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // Its flushes still under way land first, then what is left is settled.
        tx.execute(LOCK_LEASES_OF, &[&self.config.group, &self.member]).await?;
        tx.execute(
            "UPDATE bid_logger_leases l SET owner = NULL, expires_at = now(), claimant = NULL, claim_ready = false
                WHERE l.grp = $1 AND l.owner = $2 AND NOT EXISTS (
                    SELECT 1 FROM unnest($3::integer[], $4::bigint[]) AS h(partition, epoch)
                    WHERE h.partition = l.partition AND h.epoch <> l.epoch)",
            &[&self.config.group, &self.member, &partitions, &epochs],
        )
        .await?;
        tx.execute(WITHDRAW, &[&self.config.group, &self.member]).await?;
        let left: i64 = tx.query_opt(SETTLE_OUTSTANDING, &[&self.member]).await?.map_or(0, |r| r.get(0));
        tx.commit().await?;
        t::count_lost(left.max(0) as u64);
        Ok(())
    }

    /// Leaves the group: the last flush has landed, so every lease still
    /// held goes back, marks committed, for the others to take at once.
    async fn leave(&self) {
        let result = async {
            self.give_back(&self.held).await?;
            let client = self.pool.get().await?;
            client.execute(LEAVE, &[&self.config.group, &self.member]).await?;
            Ok::<_, DbError>(())
        }
        .await;
        match result {
            Ok(()) => tracing::info!(group = %self.config.group, released = self.held.len(), "left the group"),
            Err(e) => tracing::warn!(error = %e, "leaving the group failed; the leases expire after lease-ttl"),
        }
        self.owned.set(0.0);
    }
}

/// One row of `bid_logger_leases`, as a heartbeat reads it.
struct LeaseRow {
    partition: u32,
    owner: Option<String>,
    expired: bool,
    claimant: Option<String>,
    ready: bool,
}

impl From<&tokio_postgres::Row> for LeaseRow {
    fn from(r: &tokio_postgres::Row) -> LeaseRow {
        LeaseRow {
            partition: r.get::<_, i32>(0) as u32,
            owner: r.get(1),
            expired: r.get(2),
            claimant: r.get(3),
            ready: r.get(4),
        }
    }
}
