//! The fleet's decisions, as a pure function: what one member's decision
//! step takes, claims, readies and hands over, given the group as the
//! database shows it under the group's lock. No I/O, no clock: the
//! coordinator ([`super::coordinator`]) reads the view, runs [`plan`],
//! writes the plan in the same transaction, and changes its own state only
//! once that transaction has committed.

use std::collections::{BTreeMap, BTreeSet};

/// One row of `bid_logger_leases`, as the decision step reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The partition.
    pub partition: u32,
    /// Who holds it (`None`: released).
    pub owner: Option<String>,
    /// Its expiry is past (on the database's clock).
    pub expired: bool,
    /// A member that asked for it.
    pub claimant: Option<String>,
    /// The claimant receives and buffers its messages: it can be passed.
    pub claim_ready: bool,
}

/// A claim this member made, as it knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClaimState {
    /// Every ingest thread buffers the partition's messages.
    pub buffered: bool,
    /// Marked ready in the database.
    pub ready: bool,
}

/// What one decision step sees.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    /// This member.
    pub me: &'a str,
    /// The group's `partition-count`.
    pub partition_count: u32,
    /// The members that take a share, sorted by name (a departing member is
    /// not among them; neither is an expired one).
    pub members: &'a [String],
    /// Every lease row of the group.
    pub leases: &'a [Lease],
    /// The leases this member holds (renewed at their epoch).
    pub held: &'a BTreeSet<u32>,
    /// The claims this member made and has not been passed yet.
    pub claims: &'a BTreeMap<u32, ClaimState>,
    /// Leases an earlier run under this member's name left: taken anew.
    pub stale: &'a BTreeSet<u32>,
    /// This is the member's first decision since it joined: it takes only
    /// what an earlier run of it left, so that members starting together
    /// see each other before dividing the partitions.
    pub first: bool,
    /// Stopping: takes and claims nothing, hands its partitions over.
    pub departing: bool,
    /// A handover of this member's is under way: takes and claims nothing
    /// more and starts no other handover until it is done.
    pub releasing: bool,
}

/// What one decision step does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// This member's share of the partitions.
    pub target: usize,
    /// Claims the database no longer shows as this member's (the lease was
    /// released, taken or passed meanwhile): forgotten.
    pub withdrawn: Vec<u32>,
    /// Claims every thread buffers: marked ready.
    pub ready: Vec<u32>,
    /// Free, expired or stale leases to take (a new epoch each).
    pub take: Vec<u32>,
    /// Leases of members above their share to claim.
    pub claim: Vec<u32>,
    /// This member's leases with a ready claim by a member of the group:
    /// to hand over.
    pub hand_over: Vec<u32>,
}

/// `partition_count` divided among `members` (sorted): the first
/// `partition_count mod n` members in name order take one more; a
/// non-member's share is 0.
pub fn share(partition_count: u32, members: &[String], member: &str) -> usize {
    let n = members.len().max(1) as u32;
    match members.iter().position(|m| m == member) {
        Some(i) => (partition_count / n + u32::from((i as u32) < partition_count % n)) as usize,
        None => 0,
    }
}

/// One member's decision (see the module's docs).
pub fn plan(v: &View<'_>) -> Plan {
    let lease = |p: u32| v.leases.iter().find(|l| l.partition == p);
    let member = |m: Option<&str>| m.is_some_and(|m| v.members.iter().any(|x| x == m));
    let target = share(v.partition_count, v.members, v.me);
    let mut plan = Plan { target, ..Plan::default() };

    // A claim whose lease was passed to this member since its renewal is
    // not withdrawn: it is taken below (what was buffered is replayed).
    plan.withdrawn = v
        .claims
        .keys()
        .copied()
        .filter(|&p| lease(p).is_none_or(|l| l.claimant.as_deref() != Some(v.me) && l.owner.as_deref() != Some(v.me)))
        .collect();
    let claims: BTreeMap<u32, ClaimState> =
        v.claims.iter().filter(|(p, _)| !plan.withdrawn.contains(p)).map(|(&p, &c)| (p, c)).collect();
    plan.ready = claims.iter().filter(|(_, c)| c.buffered && !c.ready).map(|(&p, _)| p).collect();

    if !v.departing && !v.releasing && (!v.first || !v.stale.is_empty()) {
        let have = v.held.len() + claims.len();
        // Free or expired leases (an expired owner's events are counted
        // from the marks; a claimed one replays what was buffered), and
        // those an earlier run of this member left.
        let free = |p: u32| {
            v.stale.contains(&p)
                || !v.first
                    && lease(p).is_none_or(|l| l.owner.is_none() || l.expired || l.owner.as_deref() == Some(v.me))
        };
        plan.take = claims.keys().copied().filter(|&p| free(p)).collect();
        plan.take.extend(
            (0..v.partition_count)
                .filter(|p| !v.held.contains(p) && !claims.contains_key(p) && free(*p))
                .take(target.saturating_sub(have)),
        );
        let have = have + plan.take.iter().filter(|p| !claims.contains_key(p)).count();
        // Then claims on the partitions of members above their share (or
        // not members any more: departing), highest partitions first.
        if !v.first && have < target {
            let mut owned: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
            for l in v.leases.iter().filter(|l| !l.expired) {
                if let Some(o) = l.owner.as_deref().filter(|&o| o != v.me) {
                    owned.entry(o).or_default().push(l.partition);
                }
            }
            for (owner, mut parts) in owned {
                let surplus = parts.len().saturating_sub(share(v.partition_count, v.members, owner));
                parts.retain(|&p| lease(p).is_some_and(|l| !member(l.claimant.as_deref())) && !claims.contains_key(&p));
                parts.sort_unstable_by(|a, b| b.cmp(a));
                plan.claim.extend(parts.into_iter().take(surplus));
            }
            plan.claim.truncate(target - have);
            plan.claim.sort_unstable();
        }
    }
    if !v.releasing {
        plan.hand_over = v
            .leases
            .iter()
            .filter(|l| l.owner.as_deref() == Some(v.me) && !l.expired && v.held.contains(&l.partition))
            .filter(|l| l.claim_ready && member(l.claimant.as_deref()))
            .map(|l| l.partition)
            .collect();
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn free(p: u32) -> Lease {
        Lease { partition: p, owner: None, expired: false, claimant: None, claim_ready: false }
    }

    fn owned(p: u32, owner: &str) -> Lease {
        Lease { owner: Some(owner.into()), ..free(p) }
    }

    fn view<'a>(
        me: &'a str,
        members: &'a [String],
        leases: &'a [Lease],
        held: &'a BTreeSet<u32>,
        claims: &'a BTreeMap<u32, ClaimState>,
    ) -> View<'a> {
        static NONE: BTreeSet<u32> = BTreeSet::new();
        View {
            me,
            partition_count: 16,
            members,
            leases,
            held,
            claims,
            stale: &NONE,
            first: false,
            departing: false,
            releasing: false,
        }
    }

    #[test]
    fn shares_differ_by_one_at_most_and_add_up() {
        for n in 1..=7 {
            let members: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
            let shares: Vec<usize> = members.iter().map(|m| share(16, &members, m)).collect();
            assert_eq!(shares.iter().sum::<usize>(), 16);
            assert!(shares.iter().max().unwrap() - shares.iter().min().unwrap() <= 1, "{shares:?}");
        }
        assert_eq!(share(16, &names(&["a"]), "b"), 0, "a non-member takes nothing");
    }

    #[test]
    fn a_first_decision_takes_only_what_an_earlier_run_left() {
        let members = names(&["a"]);
        let leases: Vec<Lease> = (0..16).map(free).collect();
        let (held, claims) = (BTreeSet::new(), BTreeMap::new());
        let stale = BTreeSet::from([3, 4]);
        let mut v = view("a", &members, &leases, &held, &claims);
        v.first = true;
        assert_eq!(plan(&v).take, Vec::<u32>::new());
        v.stale = &stale;
        assert_eq!(plan(&v).take, vec![3, 4]);
        v.first = false;
        assert_eq!(plan(&v).take, (0..16).collect::<Vec<_>>());
    }

    #[test]
    fn expired_leases_are_taken_and_live_ones_claimed_above_the_owners_share() {
        let members = names(&["a", "b"]);
        // b holds everything; half of it has expired.
        let leases: Vec<Lease> = (0..16).map(|p| Lease { expired: p < 4, ..owned(p, "b") }).collect();
        let (held, claims) = (BTreeSet::new(), BTreeMap::new());
        let p = plan(&view("a", &members, &leases, &held, &claims));
        assert_eq!(p.target, 8);
        assert_eq!(p.take, vec![0, 1, 2, 3]);
        // b holds 12 live leases for a share of 8: a claims 4, the highest.
        assert_eq!(p.claim, vec![12, 13, 14, 15]);
    }

    #[test]
    fn nothing_is_taken_or_claimed_while_departing_or_releasing() {
        let members = names(&["b"]);
        let mut leases: Vec<Lease> = (0..16).map(|p| owned(p, "b")).collect();
        leases[0] = Lease { owner: Some("a".into()), claimant: Some("b".into()), claim_ready: true, ..free(0) };
        let held = BTreeSet::from([0]);
        let claims = BTreeMap::new();
        let mut v = view("a", &members, &leases, &held, &claims);
        v.departing = true;
        let p = plan(&v);
        assert!(p.take.is_empty() && p.claim.is_empty());
        assert_eq!(p.hand_over, vec![0], "a departing member hands over to a member's ready claim");
        v.releasing = true;
        assert!(plan(&v).hand_over.is_empty(), "one handover at a time");
    }

    #[test]
    fn a_claim_the_database_no_longer_shows_is_withdrawn_and_a_buffered_one_readied() {
        let members = names(&["a", "b"]);
        let mut leases: Vec<Lease> = (0..16).map(|p| owned(p, "b")).collect();
        leases[14].claimant = Some("a".into());
        let held = BTreeSet::new();
        let claims = BTreeMap::from([
            (14, ClaimState { buffered: true, ready: false }),
            (15, ClaimState { buffered: true, ready: false }),
        ]);
        let p = plan(&view("a", &members, &leases, &held, &claims));
        assert_eq!(p.withdrawn, vec![15]);
        assert_eq!(p.ready, vec![14]);
        // Passed to this member since its renewal: kept, and taken.
        leases[15] = owned(15, "a");
        let p = plan(&view("a", &members, &leases, &held, &claims));
        assert!(p.withdrawn.is_empty());
        assert_eq!(p.take, vec![15]);
        // A hand-over needs a ready claim by a member.
        leases[13] = Lease { claimant: Some("gone".into()), claim_ready: true, ..owned(13, "a") };
        let held = BTreeSet::from([13]);
        assert!(plan(&view("a", &members, &leases, &held, &BTreeMap::new())).hand_over.is_empty());
    }

    /// The group's database, as the decisions change it: a model of the
    /// SQL the coordinator runs for a plan, with handovers that finish at a
    /// random later step.
    struct Model {
        leases: Vec<Lease>,
        members: Vec<String>,
        held: BTreeMap<String, BTreeSet<u32>>,
        claims: BTreeMap<String, BTreeMap<u32, ClaimState>>,
        releasing: BTreeMap<String, Vec<u32>>,
        decided: BTreeSet<String>,
    }

    impl Model {
        fn new() -> Model {
            Model {
                leases: (0..16).map(free).collect(),
                members: Vec::new(),
                held: BTreeMap::new(),
                claims: BTreeMap::new(),
                releasing: BTreeMap::new(),
                decided: BTreeSet::new(),
            }
        }

        fn join(&mut self, m: &str) {
            self.members.push(m.into());
            self.members.sort();
        }

        /// A member dies: its row and its leases expire.
        fn die(&mut self, m: &str) {
            self.members.retain(|x| x != m);
            for l in self.leases.iter_mut().filter(|l| l.owner.as_deref() == Some(m)) {
                l.expired = true;
            }
            for l in self.leases.iter_mut().filter(|l| l.claimant.as_deref() == Some(m)) {
                l.claimant = None;
                l.claim_ready = false;
            }
            self.held.remove(m);
            self.claims.remove(m);
            self.releasing.remove(m);
            self.decided.remove(m);
        }

        fn decide(&mut self, m: &str) {
            let empty = BTreeSet::new();
            let held = self.held.get(m).cloned().unwrap_or_default();
            let claims = self.claims.get(m).cloned().unwrap_or_default();
            let v = View {
                me: m,
                partition_count: 16,
                members: &self.members,
                leases: &self.leases,
                held: &held,
                claims: &claims,
                stale: &empty,
                first: !self.decided.contains(m),
                departing: false,
                releasing: self.releasing.contains_key(m),
            };
            let p = plan(&v);
            self.decided.insert(m.into());
            let claims = self.claims.entry(m.into()).or_default();
            for c in &p.withdrawn {
                claims.remove(c);
            }
            for c in &p.ready {
                self.leases[*c as usize].claim_ready = true;
                claims.get_mut(c).unwrap().ready = true;
            }
            for &t in &p.take {
                let l = &mut self.leases[t as usize];
                assert!(l.owner.is_none() || l.expired || l.owner.as_deref() == Some(m), "took a live lease: {l:?}");
                *l = Lease { owner: Some(m.into()), ..free(t) };
                claims.remove(&t);
                self.held.entry(m.into()).or_default().insert(t);
            }
            for &c in &p.claim {
                let l = &mut self.leases[c as usize];
                assert!(l.owner.is_some() && l.owner.as_deref() != Some(m));
                l.claimant = Some(m.into());
                l.claim_ready = false;
                // Buffered by the next decision.
                claims.insert(c, ClaimState { buffered: true, ready: false });
            }
            if !p.hand_over.is_empty() {
                self.releasing.insert(m.into(), p.hand_over);
            }
        }

        /// A handover finishes: the cut has landed, the leases pass.
        fn pass(&mut self, m: &str) {
            let Some(parts) = self.releasing.remove(m) else { return };
            for p in parts {
                let l = &mut self.leases[p as usize];
                let to = l.claimant.take();
                l.owner = to.clone();
                l.claim_ready = false;
                self.held.get_mut(m).unwrap().remove(&p);
                if let Some(to) = to {
                    self.held.entry(to.clone()).or_default().insert(p);
                    self.claims.get_mut(&to).map(|c| c.remove(&p));
                }
            }
        }

        fn balanced(&self) -> bool {
            let mut counts = Vec::new();
            for m in &self.members {
                let n = self.leases.iter().filter(|l| l.owner.as_deref() == Some(m) && !l.expired).count();
                counts.push(n);
            }
            counts.iter().sum::<usize>() == 16 && counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1
        }
    }

    /// Churn: members join and die at random, decide in a random order and
    /// finish handovers at random later steps. Whatever the order, a lease
    /// is never taken while another member holds it live, and a group left
    /// alone for a while ends balanced, every partition owned.
    #[test]
    fn any_order_of_decisions_and_churn_ends_balanced() {
        for seed in 0..200u64 {
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut model = Model::new();
            let mut next = 0;
            for _ in 0..rng.gen_range(1..4) {
                model.join(&format!("m{next}"));
                next += 1;
            }
            for step in 0..400 {
                let churn = step < 200;
                match rng.gen_range(0..100) {
                    0..=2 if churn => {
                        model.join(&format!("m{next}"));
                        next += 1;
                    }
                    3..=4 if churn && model.members.len() > 1 => {
                        let m = model.members[rng.gen_range(0..model.members.len())].clone();
                        model.die(&m);
                    }
                    5..=40 => {
                        let m = model.members[rng.gen_range(0..model.members.len())].clone();
                        model.pass(&m);
                    }
                    _ => {
                        let m = model.members[rng.gen_range(0..model.members.len())].clone();
                        model.decide(&m);
                    }
                }
            }
            // Left alone: every member decides and finishes its handovers in turn.
            for _ in 0..40 {
                for m in model.members.clone() {
                    model.decide(&m);
                    model.pass(&m);
                }
            }
            assert!(model.balanced(), "seed {seed}: not balanced: {:?} among {:?}", model.leases, model.members);
        }
    }
}
