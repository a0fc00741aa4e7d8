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
//!    order one more), and take free or expired leases up to it (a new
//!    epoch each: the fencing token), reading their committed marks; or, when
//!    it holds more than its share and another member holds less, release
//!    the excess.
//!
//! Releasing is a handover: the ingest threads unsubscribe the partitions
//! and hand what they hold to the sink, the sink writes everything received
//! up to then (marks included), and only then is the lease released; the
//! taker starts from those marks. Every flush fences with the leases held
//! ([`bid_logger_fence`, migration 0009](../../sql/0009_leases.sql)).

use crate::assignment::{idle_timeout, Assignment, FlushWait};
use crate::sink::SinkError;
use crate::telemetry as t;
use bid_logger_core::marks::{decode, SeqMarks};
use metrics::{counter, gauge};
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
}

const LOCK: &str = "SELECT pg_advisory_xact_lock(hashtextextended('bid_logger_group:' || $1, 0))";
const RENEW_MEMBER: &str = "INSERT INTO bid_logger_members (grp, member, run_id, expires_at)
    VALUES ($1, $2, $3, now() + $4 * interval '1 millisecond')
    ON CONFLICT (grp, member) DO UPDATE SET run_id = excluded.run_id, expires_at = excluded.expires_at";
const EXPIRED_MEMBERS: &str = "DELETE FROM bid_logger_members WHERE grp = $1 AND expires_at < now() RETURNING member";
const SETTLE_OUTSTANDING: &str = "UPDATE bid_logger_outstanding o SET landed = drained, updated_at = now()
    FROM (SELECT instance, drained - landed AS left FROM bid_logger_outstanding WHERE instance = $1 FOR UPDATE) x
    WHERE o.instance = x.instance RETURNING x.left";
const RENEW_LEASES: &str = "UPDATE bid_logger_leases SET expires_at = now() + $3 * interval '1 millisecond'
    WHERE grp = $1 AND owner = $2 RETURNING partition, epoch";
const MEMBERS: &str = "SELECT member FROM bid_logger_members WHERE grp = $1 ORDER BY member";
const LEASES: &str = "SELECT partition, owner, expires_at < now() FROM bid_logger_leases WHERE grp = $1";
const TAKE: &str = "INSERT INTO bid_logger_leases AS l (grp, partition, owner, epoch, expires_at)
    SELECT $1, p, $2, 1, now() + $4 * interval '1 millisecond' FROM unnest($3::integer[]) AS p
    ON CONFLICT (grp, partition) DO UPDATE SET owner = excluded.owner, epoch = l.epoch + 1,
        expires_at = excluded.expires_at
    WHERE l.owner IS NULL OR l.expires_at < now()
    RETURNING partition, epoch, (xmax <> 0 AND epoch > 1) AS taken_over";
const READ_MARKS: &str = "SELECT partition, marks FROM bid_logger_seq_marks WHERE scope = $1 AND partition = ANY($2)";
const RELEASE: &str = "UPDATE bid_logger_leases SET owner = NULL, expires_at = now()
    WHERE grp = $1 AND owner = $2 AND partition = ANY($3)";
const LEAVE: &str = "DELETE FROM bid_logger_members WHERE grp = $1 AND member = $2";

/// A member's coordinator: heartbeats, takes and releases leases, and
/// publishes the [`Assignment`] the ingest threads and the sink follow.
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
    /// A handover under way.
    release: Release,
    /// Heartbeats so far in this membership (a new member takes nothing in
    /// its first, so that members starting together see each other).
    beats: u64,
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

impl Coordinator {
    /// A coordinator for `member` of a fleet of `partition_count` partitions.
    pub fn new(
        config: FleetConfig,
        member: String,
        partition_count: u32,
        pool: deadpool_postgres::Pool,
        links: CoordinatorLinks,
    ) -> Coordinator {
        gauge!(t::OWNED_PARTITIONS).set(0.0);
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
            release: Release::None,
            beats: 0,
        }
    }

    /// Heartbeats until `stop` turns true, then leaves the group (its leases
    /// released: the pipeline stops it after the last flush landed).
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let beat = self.config.lease_ttl / 3;
        let mut next_beat = tokio::time::Instant::now();
        tracing::info!(group = %self.config.group, member = %self.member, lease_ttl = ?self.config.lease_ttl, "joining the group");
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next_beat.min(tokio::time::Instant::now() + Duration::from_millis(50))) => {}
                _ = stop.changed() => break,
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
        }
        self.leave().await;
    }

    /// One heartbeat transaction (see the module's docs).
    async fn heartbeat(&mut self) -> Result<(), SinkError> {
        let mut client = self.pool.get().await?;
        let (group, member) = (&self.config.group, &self.member);
        let ttl_ms = self.config.lease_ttl.as_millis() as f64;
        let tx = client.transaction().await?;
        // A member frozen (SIGSTOP, a VM pause) inside this transaction would
        // hold the group's lock for as long as it is frozen: the server ends
        // its session instead.
        tx.batch_execute(&idle_timeout(self.config.lease_ttl)).await?;
        tx.execute(LOCK, &[group]).await?;
        tx.execute(RENEW_MEMBER, &[group, member, &self.run_id, &ttl_ms]).await?;
        let renewed: BTreeMap<u32, i64> = tx
            .query(RENEW_LEASES, &[group, member, &ttl_ms])
            .await?
            .iter()
            .map(|r| (r.get::<_, i32>(0) as u32, r.get::<_, i64>(1)))
            .collect();
        if self.held.iter().any(|(p, e)| renewed.get(p) != Some(e)) {
            tx.rollback().await?;
            drop(client);
            self.reset("a lease was taken while this member could not renew it").await;
            return Ok(());
        }
        let mut lost = 0u64;
        for row in tx.query(EXPIRED_MEMBERS, &[group]).await? {
            let gone: String = row.get(0);
            let left: i64 = tx.query_opt(SETTLE_OUTSTANDING, &[&gone]).await?.map_or(0, |r| r.get(0));
            tracing::warn!(group = %group, member = %gone, unwritten_events = left, "a member's lease expired: it left without a handover");
            lost += left.max(0) as u64;
        }
        let members: Vec<String> = tx.query(MEMBERS, &[group]).await?.iter().map(|r| r.get(0)).collect();
        let leases: Vec<(u32, Option<String>, bool)> =
            tx.query(LEASES, &[group]).await?.iter().map(|r| (r.get::<_, i32>(0) as u32, r.get(1), r.get(2))).collect();
        self.beats += 1;
        let n = members.len().max(1) as u32;
        let target_of = |m: &str| {
            let i = members.iter().position(|x| x == m).unwrap_or(members.len()) as u32;
            self.partition_count / n + u32::from(i < self.partition_count % n)
        };
        let target = target_of(member) as usize;
        let mut taken = Vec::new();
        let mut seeds = SeqMarks::default();
        if self.held.len() < target && self.beats > 1 && matches!(self.release, Release::None) {
            let busy: BTreeMap<u32, bool> =
                leases.iter().map(|(p, owner, expired)| (*p, owner.is_some() && !expired)).collect();
            let free: Vec<i32> = (0..self.partition_count)
                .filter(|p| !busy.get(p).copied().unwrap_or(false) && !self.held.contains_key(p))
                .take(target - self.held.len())
                .map(|p| p as i32)
                .collect();
            if !free.is_empty() {
                for row in tx.query(TAKE, &[group, member, &free, &ttl_ms]).await? {
                    let (p, epoch, over): (i32, i64, bool) = (row.get(0), row.get(1), row.get(2));
                    taken.push(p as u32);
                    self.held.insert(p as u32, epoch);
                    if over {
                        counter!(t::LEASE_TAKEOVERS).increment(1);
                    }
                }
                let parts: Vec<i32> = taken.iter().map(|&p| p as i32).collect();
                let mut values = Vec::new();
                for row in tx.query(READ_MARKS, &[group, &parts]).await? {
                    let (p, bytes): (i32, Vec<u8>) = (row.get(0), row.get(1));
                    match decode(&bytes) {
                        Ok(m) => values.push((p as u32, m)),
                        Err(e) => tracing::warn!(partition = p, error = %e, "committed marks cannot be read; left out"),
                    }
                }
                seeds = SeqMarks::committed(values, bid_logger_core::clock::now_ms());
            }
        }
        tx.commit().await?;
        t::count_lost(lost);
        if !taken.is_empty() {
            taken.sort_unstable();
            tracing::info!(group = %group, partitions = ?taken, marks = seeds.len(), owned = self.held.len(), target, members = members.len(), "leases taken");
            self.publish(taken, seeds, false);
        }
        // More than our share while another member has less: hand the excess over.
        if self.held.len() > target && matches!(self.release, Release::None) {
            let mut owned: BTreeMap<&str, usize> = BTreeMap::new();
            for (_, owner, expired) in &leases {
                if let (Some(o), false) = (owner, expired) {
                    *owned.entry(o.as_str()).or_default() += 1;
                }
            }
            let needy = members.iter().any(|m| owned.get(m.as_str()).copied().unwrap_or(0) < target_of(m) as usize);
            if needy {
                let excess: Vec<u32> = self.held.keys().rev().take(self.held.len() - target).copied().collect();
                tracing::info!(group = %group, partitions = ?excess, "handing partitions over to a member below its share");
                self.release = Release::Acks { partitions: excess, generation: 0 };
                let published = self.publish(Vec::new(), SeqMarks::default(), false);
                if let Release::Acks { generation, .. } = &mut self.release {
                    *generation = published;
                }
            }
        }
        Ok(())
    }

    /// Publishes the held leases, all received but those being released.
    fn publish(&self, taken: Vec<u32>, seeds: SeqMarks, discard: bool) -> u64 {
        let releasing: &[u32] = match &self.release {
            Release::Acks { partitions, .. } | Release::Flush { partitions, .. } => partitions,
            Release::None => &[],
        };
        let generation = self.links.assignment.borrow().generation + 1;
        let a = Assignment {
            generation,
            receive: self.held.keys().copied().filter(|p| !releasing.contains(p)).collect(),
            held: self.held.iter().map(|(&p, &e)| (p, e)).collect(),
            taken,
            seeds: Arc::new(seeds),
            discard,
        };
        gauge!(t::OWNED_PARTITIONS).set(self.held.len() as f64);
        self.links.assignment.send_replace(Arc::new(a));
        generation
    }

    /// Moves a handover along: once every thread applied it, asks the sink
    /// to write what they handed over; once that landed, releases the leases.
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
                Ok(()) => {
                    let parts: Vec<i32> = partitions.iter().map(|&p| p as i32).collect();
                    let result = async {
                        let client = self.pool.get().await?;
                        client.execute(RELEASE, &[&self.config.group, &self.member, &parts]).await?;
                        Ok::<_, SinkError>(())
                    }
                    .await;
                    match result {
                        Ok(()) => {
                            for p in &partitions {
                                self.held.remove(p);
                            }
                            tracing::info!(partitions = ?partitions, owned = self.held.len(), "partitions handed over");
                            self.publish(Vec::new(), SeqMarks::default(), false);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "releasing handed-over leases failed; retrying");
                            let (done, landed) = oneshot::channel();
                            let _ = done.send(());
                            self.release = Release::Flush { partitions, landed };
                        }
                    }
                }
                Err(oneshot::error::TryRecvError::Empty) => self.release = Release::Flush { partitions, landed },
                Err(oneshot::error::TryRecvError::Closed) => {}
            },
        }
    }

    /// Drops everything and starts again as a new member: fenced.
    async fn reset(&mut self, why: &str) {
        counter!(t::FENCED).increment(1);
        tracing::error!(
            reason = why,
            owned = self.held.len(),
            "fenced: dropping what this member holds; the new owners count it from the committed marks"
        );
        self.held.clear();
        self.release = Release::None;
        self.reset_at = self.publish(Vec::new(), SeqMarks::default(), true);
        self.beats = 0;
        self.run_id = rand::random();
        if let Err(e) = self.give_back().await {
            tracing::warn!(error = %e, "releasing the remaining leases failed; they expire after lease-ttl");
        }
    }

    /// Releases every lease of this member and settles what it left
    /// outstanding (counted as lost).
    async fn give_back(&self) -> Result<(), SinkError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "UPDATE bid_logger_leases SET owner = NULL, expires_at = now() WHERE grp = $1 AND owner = $2",
            &[&self.config.group, &self.member],
        )
        .await?;
        let left: i64 = tx.query_opt(SETTLE_OUTSTANDING, &[&self.member]).await?.map_or(0, |r| r.get(0));
        tx.commit().await?;
        t::count_lost(left.max(0) as u64);
        Ok(())
    }

    /// Leaves the group: the last flush has landed, so every lease goes
    /// back, marks committed, for the others to take at once.
    async fn leave(&self) {
        let result = async {
            self.give_back().await?;
            let client = self.pool.get().await?;
            client.execute(LEAVE, &[&self.config.group, &self.member]).await?;
            Ok::<_, SinkError>(())
        }
        .await;
        match result {
            Ok(()) => tracing::info!(group = %self.config.group, handed_over = self.held.len(), "left the group"),
            Err(e) => tracing::warn!(error = %e, "leaving the group failed; the leases expire after lease-ttl"),
        }
        gauge!(t::OWNED_PARTITIONS).set(0.0);
    }
}
