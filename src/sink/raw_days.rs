//! The raw sample's day tables: `events_sample` is range-partitioned (in
//! PostgreSQL's sense) into one table per UTC day, `events_sample_pYYYYMMDD`,
//! created ahead of time and on demand (late events) and dropped past the
//! retention. Serialised across instances by an advisory lock, so several
//! loggers can maintain the same table. (In the rest of the code a
//! "partition" is a topic partition; here the word appears only in SQL.)

use std::collections::BTreeSet;

/// Advisory-lock key for day-table maintenance ("bidpart").
const DAY_TABLE_LOCK: i64 = 0x62_6964_7061_7274;

const LOCK: &str = "SELECT pg_advisory_xact_lock($1)";
const EXISTS: &str = "SELECT to_regclass($1) IS NOT NULL";
const LIST: &str = "SELECT c.relname FROM pg_inherits i
    JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
    WHERE p.relname = 'events_sample'";

/// Days since the Unix epoch of a millisecond timestamp.
pub fn day_of(ts_ms: i64) -> i64 {
    ts_ms.div_euclid(86_400_000)
}

/// The civil (proleptic Gregorian) date of a day number (Howard Hinnant's
/// `civil_from_days`).
pub fn civil(day: i64) -> (i64, u32, u32) {
    let z = day + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `events_sample_pYYYYMMDD`.
pub fn table_name(day: i64) -> String {
    let (y, m, d) = civil(day);
    format!("events_sample_p{y:04}{m:02}{d:02}")
}

/// The day a day table's name stands for, if it is one of ours.
pub fn day_of_name(name: &str) -> Option<i64> {
    let digits = name.strip_prefix("events_sample_p")?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (y, m, d) =
        (digits[..4].parse::<i64>().ok()?, digits[4..6].parse::<u32>().ok()?, digits[6..].parse::<u32>().ok()?);
    // Search around the approximate day; names are only ever made by table_name.
    let approx = (y - 1970) * 365 + (y - 1969) / 4 + i64::from(m - 1) * 30;
    (approx - 40..approx + 40).find(|&day| civil(day) == (y, m, d))
}

fn date_literal(day: i64) -> String {
    let (y, m, d) = civil(day);
    format!("{y:04}-{m:02}-{d:02} 00:00:00+00")
}

/// Creates the day tables of `days` that do not exist; returns how many it created.
///
/// The DDL is built from day numbers we format ourselves (partition bounds
/// cannot be bound parameters), never from event data.
pub async fn ensure(client: &mut tokio_postgres::Client, days: &BTreeSet<i64>) -> Result<u64, tokio_postgres::Error> {
    if days.is_empty() {
        return Ok(0);
    }
    let tx = client.transaction().await?;
    tx.execute(LOCK, &[&DAY_TABLE_LOCK]).await?;
    let mut created = 0;
    for &day in days {
        let name = table_name(day);
        let exists: bool = tx.query_one(EXISTS, &[&name]).await?.get(0);
        if !exists {
            tx.batch_execute(&format!(
                "CREATE TABLE {name} PARTITION OF events_sample FOR VALUES FROM ('{}') TO ('{}')",
                date_literal(day),
                date_literal(day + 1)
            ))
            .await?;
            created += 1;
            tracing::info!(table = %name, "events_sample day table created");
        }
    }
    tx.commit().await?;
    Ok(created)
}

/// Drops the day tables of days before `oldest_kept`; returns the days dropped.
pub async fn drop_before(
    client: &mut tokio_postgres::Client,
    oldest_kept: i64,
) -> Result<Vec<i64>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute(LOCK, &[&DAY_TABLE_LOCK]).await?;
    let mut dropped = Vec::new();
    for row in tx.query(LIST, &[]).await? {
        let name: String = row.get(0);
        if let Some(day) = day_of_name(&name).filter(|&d| d < oldest_kept) {
            tx.batch_execute(&format!("DROP TABLE IF EXISTS {}", table_name(day))).await?;
            tracing::info!(table = %name, "events_sample day table dropped (retention)");
            dropped.push(day);
        }
    }
    tx.commit().await?;
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(day_of(1_764_180_000_000)), (2025, 11, 26));
        assert_eq!(civil(11_016), (2000, 2, 29));
        assert_eq!(civil(-1), (1969, 12, 31));
        assert_eq!(table_name(20_448), "events_sample_p20251226");
    }

    #[test]
    fn names_round_trip() {
        for day in [0, 1, 59, 11_016, 20_000, 20_418, 30_000, 50_000] {
            assert_eq!(day_of_name(&table_name(day)), Some(day), "{day}");
        }
        assert_eq!(day_of_name("events_sample_p2025122"), None);
        assert_eq!(day_of_name("other_table"), None);
    }
}
