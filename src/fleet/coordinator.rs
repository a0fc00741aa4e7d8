//! A member's coordinator: the task loop around [`super::plan`] and
//! [`super::sql`]. Every `lease-ttl / 3` it *renews* (one short transaction,
//! no group lock), then *decides* (one transaction under the group's lock:
//! read the group, [`plan`], write the plan), and changes its own state
//! only once a transaction has committed. It has a connection of its own,
//! and every transaction is bounded on the server and the client
//! ([`Bounds`]): no flush, no other member and no lock can hold its
//! renewals up for a TTL.

use super::plan::{plan, ClaimState, View};
use super::settings::{self, GroupSettings};
use super::sql::{self, Bounds, FleetError, Renewed};
use super::{FleetConfig, Phase};
use crate::assignment::{Assignment, Handover};
use crate::telemetry as t;
use bid_logger_core::marks::SeqMarks;
use metrics::{counter, gauge, Gauge};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::Client;

/// A partition claimed from another member.
#[derive(Debug, Clone, Copy)]
struct Claim {
    /// The assignment generation that first buffered it (0: not published yet).
    generation: u64,
    /// Marked ready in the database.
    ready: bool,
}

/// What a coordinator is linked to.
pub struct CoordinatorLinks {
    /// Where it publishes the assignment.
    pub assignment: watch::Sender<Arc<Assignment>>,
    /// The generation each ingest thread applied.
    pub acks: Arc<[AtomicU64]>,
    /// Asks the sink to write everything received so far and pass leases
    /// in its next transaction.
    pub handover: mpsc::Sender<Handover>,
    /// The sink's reports of failed fences (the batch's assignment generation).
    pub fenced: mpsc::UnboundedReceiver<u64>,
}

/// Where a handover stands.
#[derive(Debug, Default)]
enum Release {
    #[default]
    None,
    /// Waiting for every thread to apply `generation` (unsubscribed, what
    /// they received handed to the sink).
    Acks { partitions: Vec<u32>, generation: u64 },
    /// The sink writes what it received, then passes the leases.
    Passing { partitions: Vec<u32>, passed: oneshot::Receiver<Vec<(u32, Option<String>)>> },
}

/// What one decision did, applied once its transaction committed.
#[derive(Default)]
struct Decision {
    /// Members found expired, and what each left unwritten (lost).
    gone: Vec<(String, u64)>,
    /// Leases that are now this member's: partition → epoch (taken, or
    /// passed to it), and their committed marks.
    taken: BTreeMap<u32, i64>,
    seeds: SeqMarks,
    /// Of those, taken from an expired owner.
    over: u64,
    withdrawn: Vec<u32>,
    ready: Vec<u32>,
    claimed: Vec<u32>,
    hand_over: Vec<u32>,
    /// The members taking a share, and this member's.
    members: usize,
    target: usize,
    /// The leases under this member's name that the decision saw.
    mine: BTreeSet<u32>,
}

/// A member's coordinator: renews, takes, claims and hands over leases, and
/// publishes the [`Assignment`] the ingest threads and the sink follow.
pub struct Coordinator {
    config: FleetConfig,
    member: String,
    run_id: i64,
    partition_count: u32,
    /// This member's group-wide settings, and whether the group's agree.
    settings: GroupSettings,
    agreed: bool,
    database_url: String,
    client: Option<Client>,
    bounds: Bounds,
    links: CoordinatorLinks,
    /// The generation of the last reset: fencing reports of batches formed
    /// before it are about what it already dropped.
    reset_at: u64,
    /// Leases held: partition → epoch.
    held: BTreeMap<u32, i64>,
    /// Partitions claimed from other members, not passed yet.
    claims: BTreeMap<u32, Claim>,
    release: Release,
    /// Renewed since this membership started (the first renewal reads what
    /// an earlier run left).
    renewed: bool,
    /// Decisions committed in this membership (a new member takes nothing
    /// in its first, so that members starting together see each other).
    decisions: u64,
    /// Stopping: handing every partition over; told when done.
    departing: Option<Option<oneshot::Sender<()>>>,
    /// `bid_logger_owned_partitions{group}`.
    owned: Gauge,
    /// Leases an earlier run under this member's name left: not renewed,
    /// taken anew.
    stale: BTreeSet<u32>,
    /// The committed marks of the partitions held, as of their take (see
    /// [`Assignment::seeds`]).
    seeds: Arc<SeqMarks>,
    /// Times fenced (see [`Assignment::fences`]).
    fences: u64,
}

impl Coordinator {
    /// A coordinator for `member` with group-wide `settings`, on a
    /// connection of its own to `database_url`.
    pub fn new(
        config: FleetConfig,
        member: String,
        settings: GroupSettings,
        database_url: String,
        links: CoordinatorLinks,
    ) -> Coordinator {
        let partition_count = settings.partition_count;
        let group = config.group.clone();
        let owned = gauge!(t::OWNED_PARTITIONS, "group" => group.clone());
        owned.set(0.0);
        gauge!(t::GROUP_PARTITIONS, "group" => group).set(f64::from(partition_count));
        counter!(t::LEASE_TAKEOVERS).increment(0);
        counter!(t::FENCED).increment(0);
        counter!(t::COORDINATOR_RETRIES).increment(0);
        let bounds = Bounds::new(config.lease_ttl);
        Coordinator {
            config,
            member,
            run_id: rand::random(),
            partition_count,
            settings,
            agreed: false,
            database_url,
            client: None,
            bounds,
            links,
            reset_at: 0,
            held: BTreeMap::new(),
            claims: BTreeMap::new(),
            release: Release::None,
            renewed: false,
            decisions: 0,
            departing: None,
            owned,
            stale: BTreeSet::new(),
            seeds: Arc::default(),
            fences: 0,
        }
    }

    /// Heartbeats until `phase` says [`Phase::Stop`], then leaves the group
    /// (what is left released: the pipeline stops it after the last flush
    /// landed). On [`Phase::Depart`] it hands every partition over to the
    /// others first, and says so on `departed` once it holds none.
    pub async fn run(mut self, mut phase: watch::Receiver<Phase>, departed: oneshot::Sender<()>) {
        let every = self.config.lease_ttl / 3;
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
            self.advance_release();
            if tokio::time::Instant::now() >= next_beat {
                next_beat = tokio::time::Instant::now() + every;
                if let Err(e) = self.heartbeat().await {
                    self.client = None;
                    counter!(t::COORDINATOR_RETRIES).increment(1);
                    if e.waited() {
                        tracing::info!(error = %e, "the group was busy; retrying (leases last lease-ttl)");
                    } else {
                        tracing::warn!(error = %e, "heartbeat failed; retrying (leases last lease-ttl without one)");
                    }
                    next_beat = tokio::time::Instant::now() + Duration::from_millis(200).min(every);
                }
            }
            self.check_departed(false);
        }
        self.leave().await;
    }

    /// This coordinator's connection, opened (again) when needed.
    async fn client(&mut self) -> Result<&mut Client, FleetError> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            let connect = crate::db::connect(&self.database_url);
            let client = match tokio::time::timeout(self.bounds.transaction * 3, connect).await {
                Ok(client) => client?,
                Err(_) => return Err(FleetError::TimedOut { step: "connecting", after: self.bounds.transaction * 3 }),
            };
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    /// One heartbeat: renew, then decide (see the module's docs). Before
    /// the first, the group's settings are checked.
    async fn heartbeat(&mut self) -> Result<(), FleetError> {
        if !self.agreed {
            self.check_settings().await?;
        }
        let renewed = self.renew().await?;
        // Leases the sink is passing may be gone already: passed, not taken.
        let passing: &[u32] = match &self.release {
            Release::Passing { partitions, .. } => partitions,
            _ => &[],
        };
        if self.held.iter().any(|(p, e)| renewed.leases.get(p) != Some(e) && !passing.contains(p)) {
            self.reset("a lease was taken while this member could not renew it").await;
            return Ok(());
        }
        // Renewed but not held: passed to this member since.
        let passed: BTreeMap<u32, i64> = renewed
            .leases
            .iter()
            .filter(|(p, _)| !self.held.contains_key(p) && !self.stale.contains(p))
            .map(|(&p, &e)| (p, e))
            .collect();
        let decision = self.decide(passed).await?;
        self.apply(decision);
        Ok(())
    }

    /// Records this member's settings as the group's if it has none, and
    /// refuses to join a group whose settings differ: exit code 2, one line
    /// naming the setting and both values. Nothing is lost by exiting here:
    /// the member holds no lease yet, so it has counted and written nothing.
    async fn check_settings(&mut self) -> Result<(), FleetError> {
        let (bounds, group, ours) = (self.bounds, self.config.group.clone(), self.settings.clone());
        let client = self.client().await?;
        let read = async { Ok(settings::record_or_read(&*client, &group, &ours).await?) };
        let theirs = sql::within("reading the group's settings", &bounds, read).await?;
        if let Some((key, ours, theirs)) = self.settings.differs(&theirs) {
            let line = format!(
                "invalid configuration: `{key}`: {ours} here, but group `{group}` runs with {theirs}; \
                 run every member with the group's value, or change the group's with `bid-logger fleet set` \
                 once every member is stopped"
            );
            tracing::error!(setting = key, "{line}");
            eprintln!("bid-logger: {line}");
            std::process::exit(2);
        }
        self.agreed = true;
        Ok(())
    }

    /// Renews the member row and the leases held (see [`sql::renew`]).
    async fn renew(&mut self) -> Result<Renewed, FleetError> {
        let (bounds, first, departing) = (self.bounds, !self.renewed, self.departing.is_some());
        let stale: Vec<u32> = self.stale.iter().copied().collect();
        let (group, member, run_id) = (self.config.group.clone(), self.member.clone(), self.run_id);
        let client = self.client().await?;
        let renewed = sql::within(
            "renewing the leases",
            &bounds,
            sql::renew(client, &bounds, (&group, &member, run_id), departing, first, &stale),
        )
        .await?;
        if first {
            self.renewed = true;
            self.stale = renewed.stale.iter().copied().collect();
            if !self.stale.is_empty() {
                tracing::warn!(
                    group = %group,
                    partitions = ?self.stale,
                    "leases an earlier run of this instance-id left are taken anew (new epochs): it stopped without \
                     handing them over, or it runs elsewhere with the same instance-id (then it is fenced)"
                );
            }
        }
        Ok(renewed)
    }

    /// One decision transaction; nothing of this coordinator changes until
    /// it has committed ([`Coordinator::apply`]).
    async fn decide(&mut self, passed: BTreeMap<u32, i64>) -> Result<Decision, FleetError> {
        let acked = |g: u64| g > 0 && self.links.acks.iter().all(|a| a.load(Ordering::Acquire) >= g);
        let claims: BTreeMap<u32, ClaimState> = self
            .claims
            .iter()
            .map(|(&p, c)| (p, ClaimState { buffered: acked(c.generation), ready: c.ready }))
            .collect();
        let mut held: BTreeSet<u32> = self.held.keys().copied().collect();
        held.extend(passed.keys());
        let (bounds, group, member) = (self.bounds, self.config.group.clone(), self.member.clone());
        let (partition_count, first) = (self.partition_count, self.decisions == 0);
        let (departing, releasing) = (self.departing.is_some(), !matches!(self.release, Release::None));
        let stale = self.stale.clone();
        let adopt = !departing;
        let client = self.client().await?;
        let work = async {
            let tx = sql::begin(client, &bounds).await?;
            sql::lock_group(&tx, &group).await?;
            let gone = sql::remove_expired(&tx, &group).await?;
            let (members, leases) = sql::read_group(&tx, &group).await?;
            let view = View {
                me: &member,
                partition_count,
                members: &members,
                leases: &leases,
                held: &held,
                claims: &claims,
                stale: &stale,
                first,
                departing,
                releasing,
            };
            let plan = plan(&view);
            if !plan.ready.is_empty() {
                sql::claims_ready(&tx, &group, &member, &plan.ready).await?;
            }
            let mut taken = passed;
            let mut over = 0;
            if !plan.take.is_empty() {
                let t = sql::take(&tx, &bounds, &group, &member, &plan.take).await?;
                over = t.over;
                taken.extend(t.epochs);
            }
            let mut claimed =
                if plan.claim.is_empty() { Vec::new() } else { sql::claim(&tx, &group, &member, &plan.claim).await? };
            // Claims of this member's that it does not know (a decision whose
            // COMMIT reply was lost made them): adopted, so they are
            // buffered and readied, never left to block the partition.
            if adopt {
                claimed.extend(
                    leases
                        .iter()
                        .filter(|l| l.claimant.as_deref() == Some(member.as_str()) && !l.claim_ready)
                        .map(|l| l.partition)
                        .filter(|p| !claims.contains_key(p) && !held.contains(p) && !taken.contains_key(p)),
                );
            }
            let parts: Vec<u32> = taken.keys().copied().collect();
            let seeds =
                if parts.is_empty() { SeqMarks::default() } else { sql::read_marks(&tx, &group, &parts).await? };
            tx.commit().await?;
            let mine = leases.iter().filter(|l| l.owner.as_deref() == Some(&member)).map(|l| l.partition).collect();
            Ok(Decision {
                gone,
                taken,
                seeds,
                over,
                withdrawn: plan.withdrawn,
                ready: plan.ready,
                claimed,
                hand_over: plan.hand_over,
                members: members.len(),
                target: plan.target,
                mine,
            })
        };
        sql::within("deciding", &bounds, work).await
    }

    /// Applies a committed decision: publishes what changed, starts a handover.
    fn apply(&mut self, d: Decision) {
        self.decisions += 1;
        for (gone, left) in &d.gone {
            tracing::warn!(group = %self.config.group, member = %gone, unwritten_events = left, "a member's lease expired: it left without a handover");
            t::count_lost(*left);
        }
        counter!(t::LEASE_TAKEOVERS).increment(d.over);
        let mut changed = !d.withdrawn.is_empty() || !d.ready.is_empty() || !d.claimed.is_empty();
        for p in &d.withdrawn {
            self.claims.remove(p);
        }
        for p in &d.ready {
            if let Some(c) = self.claims.get_mut(p) {
                c.ready = true;
            }
        }
        for &p in &d.claimed {
            self.claims.insert(p, Claim { generation: 0, ready: false });
        }
        for (&p, &epoch) in &d.taken {
            self.held.insert(p, epoch);
            self.claims.remove(&p);
            self.stale.remove(&p);
            changed = true;
        }
        // An earlier run's lease taken by another member meanwhile is no
        // longer this run's concern.
        self.stale.retain(|p| d.mine.contains(p));
        if !d.taken.is_empty() {
            let taken: Vec<u32> = d.taken.keys().copied().collect();
            tracing::info!(group = %self.config.group, partitions = ?taken, marks = d.seeds.len(), owned = self.held.len(), target = d.target, members = d.members, "leases taken");
            Arc::make_mut(&mut self.seeds).replace(&taken, &d.seeds);
        }
        if !d.claimed.is_empty() {
            tracing::info!(group = %self.config.group, partitions = ?d.claimed, "claimed from members above their share: buffering their messages until handed over");
        }
        if !d.hand_over.is_empty() && matches!(self.release, Release::None) {
            tracing::info!(group = %self.config.group, partitions = ?d.hand_over, "handing partitions over to their claimants");
            self.release = Release::Acks { partitions: d.hand_over, generation: 0 };
            changed = true;
        }
        // One assignment for the whole decision. Each carries the whole
        // state (every seed, the fence count): a follower sees only the
        // latest, and misses nothing by skipping one.
        if changed {
            let generation = self.publish();
            for c in self.claims.values_mut().filter(|c| c.generation == 0) {
                c.generation = generation;
            }
            if let Release::Acks { generation: g @ 0, .. } = &mut self.release {
                *g = generation;
            }
        }
        self.check_departed(self.departing.is_some() && d.members == 0);
    }

    /// Publishes the leases held, all received but those being released,
    /// and the claims, buffered.
    fn publish(&mut self) -> u64 {
        if !self.seeds.is_empty() {
            let held = &self.held;
            Arc::make_mut(&mut self.seeds).retain_partitions(|p| held.contains_key(&p));
        }
        let releasing: &[u32] = match &self.release {
            Release::Acks { partitions, .. } | Release::Passing { partitions, .. } => partitions,
            Release::None => &[],
        };
        let generation = self.links.assignment.borrow().generation + 1;
        let a = Assignment {
            generation,
            receive: self.held.keys().copied().filter(|p| !releasing.contains(p)).collect(),
            held: self.held.iter().map(|(&p, &e)| (p, e)).collect(),
            buffer: self.claims.keys().copied().collect(),
            seeds: self.seeds.clone(),
            fences: self.fences,
        };
        self.owned.set(self.held.len() as f64);
        self.links.assignment.send_replace(Arc::new(a));
        generation
    }

    /// Moves a handover along: once every thread applied it, asks the sink
    /// to write what they handed over and pass the leases in its next
    /// transaction; once passed, they are no longer held.
    fn advance_release(&mut self) {
        match std::mem::take(&mut self.release) {
            Release::None => {}
            Release::Acks { partitions, generation } => {
                if generation > 0 && self.links.acks.iter().all(|a| a.load(Ordering::Acquire) >= generation) {
                    let leases = partitions.iter().filter_map(|p| self.held.get(p).map(|&e| (*p, e))).collect();
                    let (done, passed) = oneshot::channel();
                    match self.links.handover.try_send(Handover { leases, passed: done }) {
                        Ok(()) => self.release = Release::Passing { partitions, passed },
                        // Full (cannot be: one handover at a time) or the sink is gone: stopping.
                        Err(_) => self.release = Release::Acks { partitions, generation },
                    }
                } else {
                    self.release = Release::Acks { partitions, generation };
                }
            }
            Release::Passing { partitions, mut passed } => match passed.try_recv() {
                Ok(to) => {
                    for p in &partitions {
                        self.held.remove(p);
                    }
                    tracing::info!(partitions = ?to, owned = self.held.len(), "partitions handed over");
                    self.publish();
                }
                Err(oneshot::error::TryRecvError::Empty) => self.release = Release::Passing { partitions, passed },
                // The sink dropped it: fenced, or stopping.
                Err(oneshot::error::TryRecvError::Closed) => {}
            },
        }
    }

    /// Starts handing every partition over: marked departing, the others'
    /// shares leave it out, so they claim its partitions; its own claims
    /// are withdrawn. (Every renewal says departing too, so a failure here
    /// only delays it.)
    async fn depart(&mut self, departed: Option<oneshot::Sender<()>>) {
        tracing::info!(group = %self.config.group, owned = self.held.len(), "stopping: handing every partition over to the other members");
        self.departing = Some(departed);
        self.claims.clear();
        self.publish();
        let (bounds, group, member) = (self.bounds, self.config.group.clone(), self.member.clone());
        let result = match self.client().await {
            Ok(client) => sql::within("departing", &bounds, sql::depart(client, &bounds, &group, &member)).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            self.client = None;
            tracing::warn!(error = %e, "marking this member departing failed; its next renewal does");
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
        self.renewed = false;
        self.agreed = false;
        self.decisions = 0;
        self.stale.clear();
        self.run_id = rand::random();
        match self.give_back(&held, false).await {
            Ok(left) => t::count_lost(left),
            Err(e) => {
                tracing::warn!(error = %e, "releasing the remaining leases failed; they expire after lease-ttl")
            }
        }
    }

    /// See [`sql::give_back`].
    async fn give_back(&mut self, held: &BTreeMap<u32, i64>, leave: bool) -> Result<u64, FleetError> {
        let (bounds, group, member) = (self.bounds, self.config.group.clone(), self.member.clone());
        let client = self.client().await?;
        let result =
            sql::within("releasing leases", &bounds, sql::give_back(client, &bounds, &group, &member, held, leave))
                .await;
        if result.is_err() {
            self.client = None;
        }
        result
    }

    /// Leaves the group: the last flush has landed, so every lease still
    /// held goes back, marks committed, for the others to take at once.
    async fn leave(&mut self) {
        let held = self.held.clone();
        match self.give_back(&held, true).await {
            Ok(left) => {
                t::count_lost(left);
                tracing::info!(group = %self.config.group, released = held.len(), "left the group")
            }
            Err(e) => tracing::warn!(error = %e, "leaving the group failed; the leases expire after lease-ttl"),
        }
        self.owned.set(0.0);
    }
}
