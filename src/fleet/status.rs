//! `bid-logger fleet`: what the leases in PostgreSQL say of each group,
//! for an operator: its members (when each joined, how long until its
//! membership expires unrenewed, which partitions it owns and which it has
//! claimed), and the partitions nobody owns. Read on the database's clock,
//! like the leases themselves.

use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One member of a group.
#[derive(Debug, Clone, Serialize)]
pub struct Member {
    /// Its `instance-id`.
    pub name: String,
    /// When it joined (UTC, RFC 3339).
    pub joined: String,
    /// Seconds until its membership expires unless renewed (negative: it
    /// stopped renewing, and the next heartbeat of another member removes it).
    pub expires_in: f64,
    /// Partitions whose lease it holds, unexpired.
    pub owns: Vec<u32>,
    /// Partitions of other members it has claimed (a handover under way).
    pub claims: Vec<u32>,
}

/// One group.
#[derive(Debug, Clone, Serialize)]
pub struct Group {
    /// The group's name.
    pub group: String,
    /// The partitions of the group (`partition-count`).
    pub partitions: u32,
    /// Its members, by name.
    pub members: Vec<Member>,
    /// Partitions whose lease is free, expired, or was never taken.
    pub unowned: Vec<u32>,
    /// Unexpired leases held by a name that is not a member (one that left
    /// or was removed while its leases still run).
    pub owned_by_others: BTreeMap<String, Vec<u32>>,
}

const MEMBERS: &str = "SELECT grp, member, \
    to_char(joined_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
    extract(epoch FROM expires_at - now())::float8 \
    FROM bid_logger_members WHERE $1::text IS NULL OR grp = $1 ORDER BY grp, member";

const LEASES: &str = "SELECT grp, partition, CASE WHEN expires_at > now() THEN owner END, claimant \
    FROM bid_logger_leases WHERE $1::text IS NULL OR grp = $1 ORDER BY grp, partition";

/// A partition's lease as read: its unexpired owner, and its claimant.
type Lease = (Option<String>, Option<String>);

/// Every group in the database (or only `group`), with `partition_count`
/// partitions each. A group with neither members nor leases is not listed.
pub async fn read(
    client: &impl tokio_postgres::GenericClient,
    group: Option<&str>,
    partition_count: u32,
) -> Result<Vec<Group>, tokio_postgres::Error> {
    let mut groups: BTreeMap<String, (Vec<Member>, BTreeMap<u32, Lease>)> = BTreeMap::new();
    for row in client.query(MEMBERS, &[&group]).await? {
        let member =
            Member { name: row.get(1), joined: row.get(2), expires_in: row.get(3), owns: vec![], claims: vec![] };
        groups.entry(row.get(0)).or_default().0.push(member);
    }
    for row in client.query(LEASES, &[&group]).await? {
        let partition: i32 = row.get(1);
        groups.entry(row.get(0)).or_default().1.insert(partition as u32, (row.get(2), row.get(3)));
    }
    Ok(groups
        .into_iter()
        .map(|(name, (mut members, leases))| {
            let mut owned_by_others: BTreeMap<String, Vec<u32>> = BTreeMap::new();
            let mut unowned = Vec::new();
            for p in 0..partition_count {
                let (owner, claimant) = leases.get(&p).cloned().unwrap_or_default();
                match owner {
                    Some(owner) => match members.iter_mut().find(|m| m.name == owner) {
                        Some(m) => m.owns.push(p),
                        None => owned_by_others.entry(owner).or_default().push(p),
                    },
                    None => unowned.push(p),
                }
                if let Some(m) = claimant.and_then(|c| members.iter_mut().find(|m| m.name == c)) {
                    m.claims.push(p);
                }
            }
            Group { group: name, partitions: partition_count, members, unowned, owned_by_others }
        })
        .collect())
}

/// How `bid-logger fleet` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A summary line per group, then a line per member.
    Table,
    /// One JSON array of groups.
    Json,
}

/// The groups as `format` says.
pub fn render(groups: &[Group], format: Format) -> String {
    match format {
        Format::Json => serde_json::to_string_pretty(groups).expect("JSON") + "\n",
        Format::Table => {
            let mut out = String::new();
            if groups.is_empty() {
                out.push_str("no fleet group in this database\n");
            }
            for g in groups {
                let owned = g.partitions as usize - g.unowned.len();
                let claims: usize = g.members.iter().map(|m| m.claims.len()).sum();
                let _ = writeln!(
                    out,
                    "group {}: {} members, {owned} of {} partitions owned, {claims} claimed",
                    g.group,
                    g.members.len(),
                    g.partitions
                );
                let _ = writeln!(
                    out,
                    "  {:<24} {:<20} {:>10} {:>5} {:>6}  partitions",
                    "member", "joined", "expires", "owns", "claims"
                );
                for m in &g.members {
                    let expires = if m.expires_in >= 0.0 { format!("{:.1} s", m.expires_in) } else { "expired".into() };
                    let _ = writeln!(
                        out,
                        "  {:<24} {:<20} {:>10} {:>5} {:>6}  {}",
                        m.name,
                        m.joined,
                        expires,
                        m.owns.len(),
                        m.claims.len(),
                        ranges(&m.owns)
                    );
                }
                for (name, owns) in &g.owned_by_others {
                    let _ = writeln!(out, "  {name} (not a member) still holds {}", ranges(owns));
                }
                if !g.unowned.is_empty() {
                    let _ = writeln!(out, "  unowned: {}", ranges(&g.unowned));
                }
            }
            out
        }
    }
}

/// `0-3,7,9-10`.
fn ranges(partitions: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < partitions.len() {
        let start = partitions[i];
        while i + 1 < partitions.len() && partitions[i + 1] == partitions[i] + 1 {
            i += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        let _ = match partitions[i] {
            end if end == start => write!(out, "{start}"),
            end => write!(out, "{start}-{end}"),
        };
        i += 1;
    }
    if out.is_empty() {
        out.push('-');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_print_as_ranges() {
        assert_eq!(ranges(&[]), "-");
        assert_eq!(ranges(&[5]), "5");
        assert_eq!(ranges(&[0, 1, 2, 3, 7, 9, 10]), "0-3,7,9-10");
    }
}
