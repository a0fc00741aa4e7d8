//! Group-wide settings: what every member of a group must agree on, or its
//! partitions' events are lost without a count (a smaller `partition-count`
//! claims partitions it never subscribes to), sampled differently, or
//! written to different tables. The first member records them in
//! `bid_logger_groups`; every member checks them before it joins, and one
//! that disagrees does not join. `bid-logger fleet set` changes them.

use crate::db::tables::RollupTable;
use bid_logger_core::sample::{Rate, TypeRates};
use bid_logger_core::wire::EventType;
use std::fmt::Write;
use tokio_postgres::GenericClient;

/// What the members of a group agree on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSettings {
    /// `partition-count`.
    pub partition_count: u32,
    /// `sample`, in parts per million.
    pub sample_ppm: u32,
    /// `sample-by-type`: the types whose rate is not `sample`'s, as
    /// `auction=0.015625,loss=0.125` (empty when there are none).
    pub sample_by_type: String,
    /// `raw-sample`, in parts per million.
    pub raw_sample_ppm: u32,
    /// `event-types`, sorted, comma-separated (a member without a type
    /// would own partitions whose events of that type nobody receives).
    pub event_types: String,
    /// The rollup tables: `name:grain:dimensions:direct|logged[<fed-by]`,
    /// sorted by name, separated by spaces.
    pub tables: String,
}

impl GroupSettings {
    /// A member's, from its `partition-count`, `sample` and
    /// `sample-by-type`, `raw-sample`, `event-types` and rollup tables.
    pub fn of(
        partition_count: u32,
        (sample, raw_sample): (TypeRates, Rate),
        event_types: &[EventType],
        tables: &[RollupTable],
    ) -> GroupSettings {
        let mut types: Vec<&str> = event_types.iter().map(|t| t.as_str()).collect();
        types.sort_unstable();
        types.dedup();
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
            sample_ppm: sample.base().ppm(),
            sample_by_type: sample
                .overrides()
                .map(|(t, r)| format!("{t}={}", f64::from(r.ppm()) / 1e6))
                .collect::<Vec<_>>()
                .join(","),
            raw_sample_ppm: raw_sample.ppm(),
            event_types: types.join(","),
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
        if self.sample_by_type != group.sample_by_type {
            let text = |s: &str| if s.is_empty() { "none".to_string() } else { s.to_string() };
            return Some(("sample-by-type", text(&self.sample_by_type), text(&group.sample_by_type)));
        }
        if self.raw_sample_ppm != group.raw_sample_ppm {
            return Some(("raw-sample", ppm(self.raw_sample_ppm), ppm(group.raw_sample_ppm)));
        }
        if self.event_types != group.event_types {
            return Some(("event-types", self.event_types.clone(), group.event_types.clone()));
        }
        if self.tables != group.tables {
            return Some(("rollup", self.tables.clone(), group.tables.clone()));
        }
        None
    }
}

const RECORD: &str = "INSERT INTO bid_logger_groups
    (grp, partition_count, sample_ppm, raw_sample_ppm, tables, event_types, sample_by_type)
    VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (grp) DO NOTHING";
const READ: &str = "SELECT partition_count, sample_ppm, raw_sample_ppm, tables, event_types, sample_by_type
    FROM bid_logger_groups WHERE grp = $1";

fn from_row(row: &tokio_postgres::Row) -> GroupSettings {
    GroupSettings {
        partition_count: row.get::<_, i32>(0) as u32,
        sample_ppm: row.get::<_, i32>(1) as u32,
        raw_sample_ppm: row.get::<_, i32>(2) as u32,
        tables: row.get(3),
        event_types: row.get(4),
        sample_by_type: row.get(5),
    }
}

/// Records `ours` as `group`'s settings if it has none yet, and returns the
/// group's.
pub async fn record_or_read(
    client: &impl GenericClient,
    group: &str,
    ours: &GroupSettings,
) -> Result<GroupSettings, tokio_postgres::Error> {
    let (p, s, r) = (ours.partition_count as i32, ours.sample_ppm as i32, ours.raw_sample_ppm as i32);
    client.execute(RECORD, &[&group, &p, &s, &r, &ours.tables, &ours.event_types, &ours.sample_by_type]).await?;
    Ok(from_row(&client.query_one(READ, &[&group]).await?))
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
    let old = tx.query_opt(READ, &[&group]).await?.as_ref().map(from_row);
    let (p, s, r) = (new.partition_count as i32, new.sample_ppm as i32, new.raw_sample_ppm as i32);
    tx.execute(
        "INSERT INTO bid_logger_groups
                (grp, partition_count, sample_ppm, raw_sample_ppm, tables, event_types, sample_by_type)
            VALUES ($1, $2, $3, $4, $5, $6, $7)
            ON CONFLICT (grp) DO UPDATE SET partition_count = excluded.partition_count,
                sample_ppm = excluded.sample_ppm, raw_sample_ppm = excluded.raw_sample_ppm,
                tables = excluded.tables, event_types = excluded.event_types,
                sample_by_type = excluded.sample_by_type, updated_at = now()",
        &[&group, &p, &s, &r, &new.tables, &new.event_types, &new.sample_by_type],
    )
    .await?;
    tx.commit().await?;
    Ok(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_setting_that_differs_is_named_with_both_values() {
        let tables = crate::db::tables::default_tables(std::time::Duration::from_secs(1));
        let of = |p: u32, sample: &str, types: &[EventType]| {
            let (base, by_type) = sample.split_once(' ').unwrap_or((sample, ""));
            let rates = bid_logger_core::sample::parse_type_rates(base.parse().unwrap(), by_type).unwrap();
            GroupSettings::of(p, (rates, Rate::NONE), types, &tables)
        };
        let group = of(16, "1", &[EventType::Bid, EventType::Auction]);
        assert_eq!(of(16, "1", &[EventType::Auction, EventType::Bid]).differs(&group), None, "order does not matter");
        assert_eq!(of(8, "1", &[EventType::Bid]).differs(&group), Some(("partition-count", "8".into(), "16".into())));
        assert_eq!(of(16, "0.5", &[EventType::Bid]).differs(&group), Some(("sample", "0.5".into(), "1".into())));
        let both = [EventType::Bid, EventType::Auction];
        assert_eq!(
            of(16, "1 auction=1/64", &both).differs(&group),
            Some(("sample-by-type", "auction=0.015625".into(), "none".into()))
        );
        assert_eq!(
            of(16, "1 auction=1/64", &both).differs(&of(16, "1 auction=1/8", &both)),
            Some(("sample-by-type", "auction=0.015625".into(), "auction=0.125".into()))
        );
        // the same rates however they are written
        assert_eq!(of(16, "1 auction=1/64", &both).differs(&of(16, "1 auction=0.015625,bid=1", &both)), None);
        assert_eq!(
            of(16, "1", &[EventType::Bid]).differs(&group),
            Some(("event-types", "bid".into(), "auction,bid".into()))
        );
        let mut fewer = group.clone();
        fewer.tables = "rollup_minute:minute:country:direct".into();
        assert_eq!(group.differs(&fewer).map(|d| d.0), Some("rollup"));
    }
}
