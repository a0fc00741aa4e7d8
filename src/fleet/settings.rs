//! Group-wide settings: what every member of a group must agree on, or its
//! partitions' events are lost without a count (a smaller `partition-count`
//! claims partitions it never subscribes to), sampled differently, or
//! written to different tables. The first member records them in
//! `bid_logger_groups`; every member checks them before it joins, and one
//! that disagrees does not join. `bid-logger fleet set` changes them.

use crate::db::tables::RollupTable;
use bid_logger_core::sample::Rate;
use std::fmt::Write;
use tokio_postgres::GenericClient;

/// What the members of a group agree on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSettings {
    /// `partition-count`.
    pub partition_count: u32,
    /// `sample`, in parts per million.
    pub sample_ppm: u32,
    /// `raw-sample`, in parts per million.
    pub raw_sample_ppm: u32,
    /// The rollup tables: `name:grain:dimensions:direct|logged[<fed-by]`,
    /// sorted by name, separated by spaces.
    pub tables: String,
}

impl GroupSettings {
    /// A member's, from its `partition-count`, `sample`, `raw-sample` and
    /// rollup tables.
    pub fn of(partition_count: u32, sample: Rate, raw_sample: Rate, tables: &[RollupTable]) -> GroupSettings {
        let mut tables: Vec<String> = tables
            .iter()
            .map(|t| {
                let dims: Vec<&str> = t.shape.dims.iter().map(|d| d.as_str()).collect();
                let mut s = format!(
                    "{}:{}:{}:{}",
                    t.name,
                    t.shape.grain,
                    dims.join(","),
                    if t.logged { "logged" } else { "direct" }
                );
                if let Some(from) = &t.fed_by {
                    let _ = write!(s, "<{from}");
                }
                s
            })
            .collect();
        tables.sort();
        GroupSettings {
            partition_count,
            sample_ppm: sample.ppm(),
            raw_sample_ppm: raw_sample.ppm(),
            tables: tables.join(" "),
        }
    }

    /// The first setting that differs from `group`'s: (key, this member's
    /// value, the group's).
    pub fn differs(&self, group: &GroupSettings) -> Option<(&'static str, String, String)> {
        let ppm = |p: u32| format!("{}", f64::from(p) / 1e6);
        if self.partition_count != group.partition_count {
            return Some(("partition-count", self.partition_count.to_string(), group.partition_count.to_string()));
        }
        if self.sample_ppm != group.sample_ppm {
            return Some(("sample", ppm(self.sample_ppm), ppm(group.sample_ppm)));
        }
        if self.raw_sample_ppm != group.raw_sample_ppm {
            return Some(("raw-sample", ppm(self.raw_sample_ppm), ppm(group.raw_sample_ppm)));
        }
        if self.tables != group.tables {
            return Some(("rollup", self.tables.clone(), group.tables.clone()));
        }
        None
    }
}

const RECORD: &str = "INSERT INTO bid_logger_groups (grp, partition_count, sample_ppm, raw_sample_ppm, tables)
    VALUES ($1, $2, $3, $4, $5) ON CONFLICT (grp) DO NOTHING";
const READ: &str = "SELECT partition_count, sample_ppm, raw_sample_ppm, tables FROM bid_logger_groups WHERE grp = $1";

/// Records `ours` as `group`'s settings if it has none yet, and returns the
/// group's.
pub async fn record_or_read(
    client: &impl GenericClient,
    group: &str,
    ours: &GroupSettings,
) -> Result<GroupSettings, tokio_postgres::Error> {
    let (p, s, r) = (ours.partition_count as i32, ours.sample_ppm as i32, ours.raw_sample_ppm as i32);
    client.execute(RECORD, &[&group, &p, &s, &r, &ours.tables]).await?;
    let row = client.query_one(READ, &[&group]).await?;
    Ok(GroupSettings {
        partition_count: row.get::<_, i32>(0) as u32,
        sample_ppm: row.get::<_, i32>(1) as u32,
        raw_sample_ppm: row.get::<_, i32>(2) as u32,
        tables: row.get(3),
    })
}

/// Why `fleet set` refused.
#[derive(Debug, thiserror::Error)]
pub enum SetError {
    /// Members are running.
    #[error("group `{group}` has live members ({members}): stop every member first (their settings would disagree)")]
    Live {
        /// The group.
        group: String,
        /// Their names.
        members: String,
    },
    /// The database failed.
    #[error(transparent)]
    Database(#[from] tokio_postgres::Error),
}

/// Replaces `group`'s settings with `new` (`fleet set`), refusing while a
/// member's row is live; returns the settings it had, if any.
pub async fn set(
    client: &mut tokio_postgres::Client,
    group: &str,
    new: &GroupSettings,
) -> Result<Option<GroupSettings>, SetError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock(hashtextextended('bid_logger_group:' || $1, 0))", &[&group]).await?;
    let live: Vec<String> = tx
        .query(
            "SELECT member FROM bid_logger_members WHERE grp = $1 AND expires_at >= clock_timestamp() ORDER BY member",
            &[&group],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !live.is_empty() {
        return Err(SetError::Live { group: group.into(), members: live.join(", ") });
    }
    let old = tx.query_opt(READ, &[&group]).await?.map(|row| GroupSettings {
        partition_count: row.get::<_, i32>(0) as u32,
        sample_ppm: row.get::<_, i32>(1) as u32,
        raw_sample_ppm: row.get::<_, i32>(2) as u32,
        tables: row.get(3),
    });
    let (p, s, r) = (new.partition_count as i32, new.sample_ppm as i32, new.raw_sample_ppm as i32);
    tx.execute(
        "INSERT INTO bid_logger_groups (grp, partition_count, sample_ppm, raw_sample_ppm, tables)
            VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (grp) DO UPDATE SET partition_count = excluded.partition_count,
                sample_ppm = excluded.sample_ppm, raw_sample_ppm = excluded.raw_sample_ppm,
                tables = excluded.tables, updated_at = now()",
        &[&group, &p, &s, &r, &new.tables],
    )
    .await?;
    tx.commit().await?;
    Ok(old)
}
