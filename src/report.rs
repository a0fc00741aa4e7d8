//! `bid-logger report`: the numbers a data engineer asks for first, from any
//! warehouse, without Grafana: per group (country, OS, campaign, advertiser
//! or exchange, or a combination of them) the events of each type, win
//! rate, spend, CPM, installs attributed and organic, and conversion revenue
//! with its ROAS (revenue over spend), over a recent or an absolute range.
//!
//! It reads the estimates of the `_est` view of the table that answers
//! the range (its rows corrected for sampling, grouped by the report
//! alone: [`RollupTable::estimated_rows_sql`]; see [`source`]): the finest
//! grain suited to the range's length (minute up to
//! [`MINUTE_TIER_UP_TO`], hour up to [`HOUR_TIER_UP_TO`], day beyond) among
//! the tables that keep the group's dimensions, still hold the range's
//! start by their retention and, for an absolute range, whose buckets its
//! bounds fall on; a coarser one when a finer one no longer holds it; a
//! range no table keeps is refused in one line saying what is kept. A
//! bucket is counted when it starts inside the range. The header says
//! which table answered and how fresh it is (its newest bucket).

use crate::db::ranges::{civil, days_from_civil};
use crate::db::tables::RollupTable;
use bid_logger_core::aggregate::{Dimension, Grain};
use std::time::Duration;

/// Ranges up to this long read a minute table, when one keeps them.
pub const MINUTE_TIER_UP_TO: Duration = Duration::from_secs(6 * 3600);

/// Ranges up to this long read an hour table (a day table beyond), when one
/// keeps them.
pub const HOUR_TIER_UP_TO: Duration = Duration::from_secs(31 * 86_400);

/// What to group by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum By {
    /// ISO country.
    Country,
    /// Normalised OS.
    Os,
    /// Campaign id.
    Campaign,
    /// Advertiser id.
    Advertiser,
    /// Ad exchange (from the exchange rollups).
    Exchange,
}

impl By {
    fn dimension(self) -> Dimension {
        match self {
            By::Country => Dimension::Country,
            By::Os => Dimension::Os,
            By::Campaign => Dimension::Campaign,
            By::Advertiser => Dimension::Advertiser,
            By::Exchange => Dimension::Exchange,
        }
    }

    fn column(self) -> &'static str {
        self.dimension().column()
    }
}

/// The report's range: buckets that start inside it are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// The last this long, up to now (`--since`), by the database's clock.
    Since(Duration),
    /// From an instant (inclusive) to another (exclusive) or to now, as
    /// Unix seconds (`--from`, `--to`).
    Between {
        /// The first second counted.
        from: i64,
        /// The first second no longer counted; `None`: up to now.
        to: Option<i64>,
    },
}

impl Range {
    /// How long it is, taking `now` (Unix seconds) as its end when it has none.
    pub fn length(&self, now: i64) -> Duration {
        match *self {
            Range::Since(d) => d,
            Range::Between { from, to } => Duration::from_secs(to.unwrap_or(now).saturating_sub(from).max(0) as u64),
        }
    }

    /// How far back from `now` it starts: what a table must still keep.
    pub fn reach(&self, now: i64) -> Duration {
        match *self {
            Range::Since(d) => d,
            Range::Between { from, .. } => Duration::from_secs(now.saturating_sub(from).max(0) as u64),
        }
    }

    /// Whether its bounds fall on `grain`'s buckets, so that the buckets it
    /// counts cover exactly the range (always, for a range up to now).
    fn falls_on(&self, grain: Grain) -> bool {
        let secs = grain.minutes() * 60;
        match *self {
            Range::Since(_) => true,
            Range::Between { from, to } => from % secs == 0 && to.is_none_or(|t| t % secs == 0),
        }
    }

    /// The range in words: `last 1h`, `2026-12-01T00:00:00Z to now`.
    pub fn describe(&self) -> String {
        match *self {
            Range::Since(d) => format!("last {}", crate::config::format_duration(d)),
            Range::Between { from, to } => {
                format!("{} to {}", rfc3339(from), to.map_or_else(|| "now".to_string(), rfc3339))
            }
        }
    }
}

/// Parses `--from`/`--to`: `2026-12-01`, `2026-12-01T06:00`,
/// `2026-12-01T06:00:00Z`, `2026-12-01 06:00:00+02:00`; without an offset,
/// UTC. Unix seconds.
pub fn instant_arg(s: &str) -> Result<i64, String> {
    let bad = || format!("`{s}`: expected a date or an RFC 3339 time, e.g. 2026-12-01 or 2026-12-01T06:00:00Z");
    let s = s.trim();
    let (date, rest) = s.split_at(s.len().min(10));
    let d: Vec<&str> = date.split('-').collect();
    let num = |t: &str, max: i64| t.parse::<i64>().ok().filter(|v| (0..=max).contains(v) && !t.is_empty());
    let [y, m, day] = d[..] else { return Err(bad()) };
    let (y, m, day) = (num(y, 9999).ok_or_else(bad)?, num(m, 12).ok_or_else(bad)?, num(day, 31).ok_or_else(bad)?);
    let (m, day) = (m as u32, day as u32);
    let days = days_from_civil(y, m, day);
    // a date that does not exist (2026-02-30) does not come back as itself
    if y < 1970 || civil(days) != (y, m, day) {
        return Err(bad());
    }
    let mut secs = days * 86_400;
    if rest.is_empty() {
        return Ok(secs);
    }
    let rest = rest.strip_prefix(['T', 't', ' ']).ok_or_else(bad)?;
    // the offset: `Z`, `+HH:MM`, `-HH:MM`, or none (UTC)
    let (time, offset) = if let Some(t) = rest.strip_suffix(['Z', 'z']) {
        (t, 0)
    } else if let Some(at) = rest.rfind(['+', '-']) {
        let (t, o) = rest.split_at(at);
        let sign = if o.starts_with('-') { -1 } else { 1 };
        let (oh, om) = o[1..].split_once(':').ok_or_else(bad)?;
        (t, sign * (num(oh, 23).ok_or_else(bad)? * 3600 + num(om, 59).ok_or_else(bad)? * 60))
    } else {
        (rest, 0)
    };
    let t: Vec<&str> = time.split(':').collect();
    let (h, mi, sec) = match t[..] {
        [h, mi] => (h, mi, "0"),
        [h, mi, sec] => (h, mi, sec),
        _ => return Err(bad()),
    };
    secs += num(h, 23).ok_or_else(bad)? * 3600 + num(mi, 59).ok_or_else(bad)? * 60 + num(sec, 59).ok_or_else(bad)?;
    Ok(secs - offset)
}

/// Unix seconds as `2026-12-01T06:00:00Z`.
fn rfc3339(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// What a report reads and shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kind {
    /// The rollups' sums ([`MEASURES`]): events, win rate, spend, CPM, ROAS.
    #[default]
    Sums,
    /// Quantiles of the bids' and the wins' (clearing) CPM
    /// ([`PRICE_MEASURES`]), from a price distribution (`--prices`).
    Prices,
    /// The win rate by bid CPM in bands of about 10 %
    /// ([`LANDSCAPE_MEASURES`]), from a bid landscape (`--landscape`).
    Landscape,
}

impl Kind {
    /// The [`Dimensions::kind`](bid_logger_core::aggregate::Dimensions::kind)
    /// of the tables that answer it.
    fn tables_kind(self) -> u8 {
        match self {
            Kind::Sums => 0,
            Kind::Prices => 1,
            Kind::Landscape => 2,
        }
    }

    /// What answers it, for the messages that say none does.
    fn what(self) -> &'static str {
        match self {
            Kind::Sums => "rollup table",
            Kind::Prices => "price distribution (a table with the `price` dimension)",
            Kind::Landscape => "bid landscape (a table with the `bid_price` dimension)",
        }
    }

    /// Its measures, in column order after the group.
    pub fn measures(self) -> &'static [&'static str] {
        match self {
            Kind::Sums => MEASURES,
            Kind::Prices => PRICE_MEASURES,
            Kind::Landscape => LANDSCAPE_MEASURES,
        }
    }
}

/// How the report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns, with a title line.
    Table,
    /// Comma-separated, with a header line.
    Csv,
    /// One JSON object: source, range and rows.
    Json,
}

/// One report's settings.
#[derive(Debug, Clone)]
pub struct ReportConfig {
    /// The range.
    pub range: Range,
    /// The grouping: one dimension or several (`--by country,os`).
    pub by: Vec<By>,
    /// Groups shown, by spend (then events).
    pub top: usize,
    /// The warehouse's rollup tables, as configured (their grains,
    /// dimensions and retentions).
    pub tables: Vec<RollupTable>,
    /// Only rows whose dimension has this value (`--where`), all of them.
    pub filters: Vec<Filter>,
    /// A trend: one row per group and bucket of this length (`--every`).
    pub every: Option<Duration>,
    /// Sums, price quantiles or the landscape.
    pub kind: Kind,
}

/// `--where dimension=value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// The dimension.
    pub dimension: Dimension,
    /// Its value: a name, or an id (campaign, advertiser).
    pub value: FilterValue,
}

/// A filter's value, typed as its column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterValue {
    /// `country`, `os`, `exchange`.
    Text(String),
    /// `campaign`, `advertiser`.
    Id(i64),
}

/// Parses `--where`: `country=BR`, `os=ios`, `exchange=unity`,
/// `campaign=42`, `advertiser=7`.
pub fn filter_arg(s: &str) -> Result<Filter, String> {
    let (name, value) = s.split_once('=').ok_or("expected dimension=value, e.g. country=BR")?;
    let dimension = Dimension::parse(name.trim())
        .ok_or_else(|| format!("unknown dimension `{}`: country, os, exchange, campaign or advertiser", name.trim()))?;
    let value =
        if dimension.is_text() {
            FilterValue::Text(value.to_string())
        } else {
            FilterValue::Id(
                value.trim().parse::<i64>().ok().filter(|v| *v >= 0).ok_or_else(|| {
                    format!("`{}`: a {} is a non-negative integer id", value.trim(), dimension.as_str())
                })?,
            )
        };
    Ok(Filter { dimension, value })
}

/// The measures, in column order after the group.
pub const MEASURES: &[&str] = &[
    "events",
    "auctions",
    "bids",
    "wins",
    "losses",
    "impressions",
    "clicks",
    "installs",
    "in_app_events",
    "win_rate",
    "spend_usd",
    "cpm_usd",
    "installs_attributed",
    "installs_organic",
    "revenue_usd",
    "roas",
];

/// The measures of `--prices`: CPM quantiles (USD per 1000) of the bids'
/// prices and of the wins' clearing prices, each within 1 %.
pub const PRICE_MEASURES: &[&str] =
    &["bids", "bid_cpm_p50", "bid_cpm_p90", "wins", "clearing_cpm_p50", "clearing_cpm_p90", "clearing_cpm_p99"];

/// The measures of `--landscape`, one row per group and band of bid CPM:
/// the band's bounds (USD per 1000; a bid is in it when `from < bid ≤ to`),
/// its bids, the wins and losses paired with them, the win rate (wins over
/// wins and losses: of the bids that got an outcome) and the wins' mean
/// clearing CPM.
pub const LANDSCAPE_MEASURES: &[&str] =
    &["bid_cpm_from", "bid_cpm_to", "bids", "wins", "losses", "win_rate", "clearing_cpm"];

/// A report's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The relation it read.
    pub source: String,
    /// Its newest bucket (RFC 3339, UTC), `None` when it is empty.
    pub newest: Option<String>,
    /// The grouping columns' names.
    pub by: Vec<&'static str>,
    /// The measures' names ([`Kind::measures`]).
    pub measures: &'static [&'static str],
    /// What the title says the measures are.
    pub legend: &'static str,
    /// Per group (and bucket, for a trend): its values, one per grouping
    /// column, and [`MEASURES`] (`None` where undefined, e.g. the win rate
    /// without bids).
    pub rows: Vec<(Vec<String>, Vec<Option<f64>>)>,
    /// For a trend (`--every`), each row's bucket start (RFC 3339, UTC).
    pub buckets: Option<Vec<String>>,
    /// What the title says of `--every` and `--where` (e.g. ` every 1h, where country = BR`).
    pub title_filters: String,
}

/// The `_est` view a report reads at `now` (Unix seconds; see the
/// module's docs), or why none can answer it.
pub fn source(config: &ReportConfig, now: i64) -> Result<String, String> {
    let (length, reach) = (config.range.length(now), config.range.reach(now));
    let wanted = if length <= MINUTE_TIER_UP_TO {
        Grain::Minute
    } else if length <= HOUR_TIER_UP_TO {
        Grain::Hour
    } else {
        Grain::Day
    };
    let every_fits = |t: &RollupTable| config.every.is_none_or(|e| e.as_secs() >= t.shape.grain.minutes() as u64 * 60);
    let holds = |t: &RollupTable| {
        t.retention.is_none_or(|r| r >= reach) && every_fits(t) && config.range.falls_on(t.shape.grain)
    };
    let needs: Vec<Dimension> =
        config.by.iter().map(|b| b.dimension()).chain(config.filters.iter().map(|f| f.dimension)).collect();
    let by_exchange = config.by.contains(&By::Exchange);
    // Fewer dimensions first: the table made for the question (the exchange
    // tables for `--by exchange`, the full ones otherwise).
    // (A price distribution or a bid landscape holds some events alone: never
    // read for sums, and only they answer quantiles and landscapes.)
    let mut candidates: Vec<&RollupTable> = config
        .tables
        .iter()
        .filter(|t| t.shape.dims.kind() == config.kind.tables_kind() && needs.iter().all(|&d| t.shape.dims.has(d)))
        .collect();
    candidates.sort_by_key(|t| {
        let dims = t.shape.dims.iter().count();
        (t.shape.grain, if by_exchange { dims } else { 5 - dims })
    });
    let fits = |t: &&&RollupTable| t.shape.grain >= wanted && holds(t);
    if let Some(t) = candidates.iter().find(fits) {
        return Ok(format!("{}_est", t.name));
    }
    // A finer table that still holds the range answers it too: the
    // coarsest such, the preferred one of its grain.
    let coarsest = candidates.iter().filter(|t| holds(t)).map(|t| t.shape.grain).max();
    if let Some(t) = candidates.iter().find(|t| Some(t.shape.grain) == coarsest && holds(t)) {
        return Ok(format!("{}_est", t.name));
    }
    let kept: Vec<String> = candidates
        .iter()
        .map(|t| match t.retention {
            Some(r) => format!("{} keeps {}", t.name, crate::config::format_duration(r)),
            None => format!("{} keeps everything", t.name),
        })
        .collect();
    let mut names: Vec<&str> = needs.iter().map(|d| d.as_str()).collect();
    names.dedup();
    let range = match config.range {
        Range::Since(d) => format!("the last {}", crate::config::format_duration(d)),
        Range::Between { .. } => config.range.describe(),
    };
    Err(if kept.is_empty() {
        format!("no {} has the dimensions {}", config.kind.what(), names.join(", "))
    } else if let Some(every) = config.every.filter(|_| candidates.iter().any(|t| !every_fits(t))) {
        format!(
            "no {} keeps {range} in buckets of {} or finer: {}",
            config.kind.what(),
            crate::config::format_duration(every),
            kept.join(", ")
        )
    } else if candidates.iter().any(|t| t.retention.is_none_or(|r| r >= reach)) {
        // some table keeps the start: its buckets do not fall on the bounds
        let mut grains: Vec<&str> = candidates
            .iter()
            .filter(|t| t.retention.is_none_or(|r| r >= reach))
            .map(|t| t.shape.grain.as_str())
            .collect();
        grains.dedup();
        format!(
            "{range} does not start and end on whole {}s, the buckets of the tables that keep it: {}",
            grains.join("s or "),
            kept.join(", ")
        )
    } else {
        format!("no {} keeps {range} by {}: {}", config.kind.what(), names.join(", "), kept.join(", "))
    })
}

/// The query of a report: `$1` is the range's length in seconds
/// ([`Range::Since`]) or its start in Unix seconds ([`Range::Between`]),
/// `$2` the groups shown, `$3` the trend's bucket in seconds (0: none), `$4`
/// the range's end in Unix seconds (infinity: none), then one parameter per
/// filter. The top groups are chosen over the whole range; a trend gives
/// each of them per bucket.
pub fn sql(config: &ReportConfig, source: &str) -> String {
    match config.kind {
        Kind::Sums => sums_sql(config, source),
        Kind::Prices | Kind::Landscape => distribution_sql(config, source),
    }
}

/// The parts every report's query shares: the group columns (`g0`, …) as
/// selected and as listed, their positions after the trend's bucket, and
/// the range's and the filters' conditions.
struct Parts {
    select: String,
    groups: String,
    positions: String,
    bucket: &'static str,
    range: String,
}

fn parts(config: &ReportConfig) -> Parts {
    let groups: Vec<String> = (0..config.by.len()).map(|i| format!("g{i}")).collect();
    let select: Vec<String> =
        config.by.iter().enumerate().map(|(i, b)| format!("{}::text AS g{i}", b.column())).collect();
    let positions: Vec<String> = (2..config.by.len() + 2).map(|i| i.to_string()).collect();
    let start = match config.range {
        Range::Since(_) => "now() - make_interval(secs => $1)",
        Range::Between { .. } => "to_timestamp($1)",
    };
    let filters: String =
        config.filters.iter().enumerate().map(|(i, f)| format!(" AND {} = ${}", f.dimension.column(), i + 5)).collect();
    Parts {
        select: select.join(", "),
        groups: groups.join(", "),
        positions: positions.join(", "),
        bucket: "CASE WHEN $3::float8 > 0
            THEN to_timestamp(floor(extract(epoch FROM bucket) / $3::float8) * $3::float8) END",
        range: format!("bucket >= {start} AND bucket < to_timestamp($4::float8){filters}"),
    }
}

/// `--prices` and `--landscape`: per group (and trend bucket), the rows'
/// counts by type and bucket first, then the quantiles or bands over them
/// (the aggregate reads each bucket once, not each stored row).
fn distribution_sql(config: &ReportConfig, source: &str) -> String {
    let Parts { select, groups, positions, bucket, range } = parts(config);
    // γ, the ratio between neighbouring price buckets (see bid_logger_price)
    let gamma = "1.02020202020202::float8";
    let cpm = |x: &str| format!("round(({x} / 1e3)::numeric, 4)::float8");
    let (inner, rank, outer) = match config.kind {
        Kind::Prices => {
            let q = |q: f64, t: &str| {
                cpm(&format!("bid_logger_quantile({q}, price_bucket, events) FILTER (WHERE event_type = '{t}')"))
            };
            (
                format!(
                    "price_bucket, event_type, sum(events) AS events FROM {source}
    WHERE {range} AND event_type IN ('bid', 'win') GROUP BY 1, {positions}, price_bucket, event_type"
                ),
                "sum(events) FILTER (WHERE event_type = 'win') DESC NULLS LAST, sum(events) DESC",
                format!(
                    "round(coalesce(sum(events) FILTER (WHERE event_type = 'bid'), 0))::float8, {}, {},
    round(coalesce(sum(events) FILTER (WHERE event_type = 'win'), 0))::float8, {}, {}, {}
FROM g JOIN top USING ({groups}) GROUP BY b, top.rank, {groups} ORDER BY b, top.rank",
                    q(0.5, "bid"),
                    q(0.9, "bid"),
                    q(0.5, "win"),
                    q(0.9, "win"),
                    q(0.99, "win"),
                ),
            )
        }
        Kind::Sums => unreachable!("the sums are sums_sql's"),
        Kind::Landscape => (
            format!(
                "(bid_price_bucket - 1) / 5 AS band,
        coalesce(sum(events) FILTER (WHERE event_type = 'bid'), 0) AS bids,
        coalesce(sum(events) FILTER (WHERE event_type = 'win'), 0) AS wins,
        coalesce(sum(events) FILTER (WHERE event_type = 'loss'), 0) AS losses,
        coalesce(sum(price_micros) FILTER (WHERE event_type = 'win'), 0) AS clearing_micros
    FROM {source} WHERE {range} GROUP BY 1, {positions}, band"
            ),
            "sum(bids) DESC",
            format!(
                "{}, {},
    round(bids)::float8, round(wins)::float8, round(losses)::float8,
    round((wins / nullif(wins + losses, 0))::numeric, 4)::float8, {}
FROM g JOIN top USING ({groups}) ORDER BY b, top.rank, band",
                cpm(&format!("power({gamma}, band * 5 - 1)")),
                cpm(&format!("power({gamma}, band * 5 + 4)")),
                cpm("clearing_micros / nullif(wins, 0)"),
            ),
        ),
    };
    format!(
        "WITH g AS (
    SELECT {bucket} AS b, {select}, {inner}
), top AS (
    SELECT {groups}, row_number() OVER (ORDER BY {rank}, {groups}) AS rank FROM g GROUP BY {groups}
    ORDER BY rank LIMIT $2
)
SELECT to_char(b AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), {groups},
    {outer}"
    )
}

/// The sums' query.
fn sums_sql(config: &ReportConfig, source: &str) -> String {
    // count, attributed count and price of the rows matching a filter
    let (count, attributed, price) = ("events", "attributed_events", "price_micros");
    let of = |t: &str| format!("coalesce(sum({count}) FILTER (WHERE event_type = '{t}'), 0)");
    let Parts { select, groups, positions, bucket, range } = parts(config);
    format!(
        "WITH g AS (
    SELECT {bucket} AS b,
        {select}, coalesce(sum({count}), 0) AS events,
        {auctions} AS auctions, {bids} AS bids, {wins} AS wins, {losses} AS losses,
        {impressions} AS impressions, {clicks} AS clicks, {installs} AS installs, {in_app} AS in_app_events,
        coalesce(sum({price}) FILTER (WHERE event_type = 'impression'), 0) AS spend_micros,
        coalesce(sum({attributed}) FILTER (WHERE event_type = 'install'), 0) AS installs_attributed,
        coalesce(sum(revenue_micros), 0) AS revenue_micros
    FROM {source} WHERE {range}
    GROUP BY 1, {positions}
), top AS (
    SELECT {groups} FROM g GROUP BY {groups} ORDER BY sum(spend_micros) DESC, sum(events) DESC, {groups} LIMIT $2
)
SELECT to_char(b AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), {groups},
    round(events)::float8, round(auctions)::float8, round(bids)::float8, round(wins)::float8,
    round(losses)::float8, round(impressions)::float8, round(clicks)::float8, round(installs)::float8,
    round(in_app_events)::float8,
    round((wins / nullif(bids, 0))::numeric, 4)::float8,
    round((spend_micros / 1e6)::numeric, 2)::float8,
    round((spend_micros / 1e3 / nullif(impressions, 0))::numeric, 4)::float8,
    round(installs_attributed)::float8, round(installs - installs_attributed)::float8,
    round((revenue_micros / 1e6)::numeric, 2)::float8,
    round((revenue_micros / nullif(spend_micros, 0))::numeric, 4)::float8
FROM g JOIN top USING ({groups}) ORDER BY b, spend_micros DESC, events DESC, {groups}",
        auctions = of("auction"),
        bids = of("bid"),
        wins = of("win"),
        losses = of("loss"),
        impressions = of("impression"),
        clicks = of("click"),
        installs = of("install"),
        in_app = of("event"),
    )
}

/// Runs a report from `source` (see [`source`]).
pub async fn run(
    client: &tokio_postgres::Client,
    config: &ReportConfig,
    source: &str,
) -> Result<Report, tokio_postgres::Error> {
    let (start, end) = match config.range {
        Range::Since(d) => (d.as_secs_f64(), f64::INFINITY),
        Range::Between { from, to } => (from as f64, to.map_or(f64::INFINITY, |t| t as f64)),
    };
    let top = i64::try_from(config.top).unwrap_or(i64::MAX);
    let every = config.every.map_or(0.0, |e| e.as_secs_f64());
    let mut params: Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>> =
        vec![Box::new(start), Box::new(top), Box::new(every), Box::new(end)];
    for f in &config.filters {
        match &f.value {
            FilterValue::Text(v) => params.push(Box::new(v.clone())),
            FilterValue::Id(v) => params.push(Box::new(*v)),
        }
    }
    let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
        params.iter().map(|p| p.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
    // The `_est` view's rows before its grouping by key, and its table's
    // view for the newest bucket (the same buckets, found through the
    // ranges' keys instead of after that grouping: 3 s over
    // `rollup_day_est` a year long, 8 ms over `rollup_day`)
    let table = source.strip_suffix("_est").and_then(|name| config.tables.iter().find(|t| t.name == name));
    let (from, newest_from) = match table {
        Some(t) => (format!("({}) est", t.estimated_rows_sql()), t.name.as_str()),
        None => (source.to_string(), source),
    };
    let rows = client.query(&sql(config, &from), &refs).await?;
    let newest =
        format!("SELECT to_char(max(bucket) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') FROM {newest_from}");
    let newest: Option<String> = client.query_one(&newest, &[]).await?.get(0);
    Ok(Report {
        source: source.to_string(),
        newest,
        by: config.by.iter().map(|b| b.column()).collect(),
        measures: config.kind.measures(),
        legend: match config.kind {
            Kind::Sums => "spend = impressions' price, CPM per 1000 impressions, ROAS = revenue / spend",
            Kind::Prices => "CPM (USD per 1000) quantiles within 1 %: bids' prices, and wins' clearing prices",
            Kind::Landscape => {
                "bids by bid CPM band (USD per 1000), the wins and losses paired with them, \
                                win rate = wins / (wins + losses), the wins' mean clearing CPM"
            }
        },
        title_filters: title_filters(config),
        buckets: config.every.map(|_| rows.iter().map(|r| r.get::<_, Option<String>>(0).unwrap_or_default()).collect()),
        rows: rows
            .iter()
            .map(|r| {
                let n = config.by.len();
                let groups = (1..=n).map(|i| r.get::<_, String>(i)).collect();
                (groups, (n + 1..=n + config.kind.measures().len()).map(|i| r.get::<_, Option<f64>>(i)).collect())
            })
            .collect(),
    })
}

fn title_filters(config: &ReportConfig) -> String {
    let mut out = String::new();
    if let Some(every) = config.every {
        out += &format!(" every {}", crate::config::format_duration(every));
    }
    for (i, f) in config.filters.iter().enumerate() {
        let value = match &f.value {
            FilterValue::Text(v) => v.clone(),
            FilterValue::Id(v) => v.to_string(),
        };
        out += &format!("{} {} = {value}", if i == 0 { ", where" } else { " and" }, f.dimension.as_str());
    }
    out
}

fn cell(v: Option<f64>) -> String {
    match v {
        None => String::new(),
        Some(v) if v.fract() == 0.0 && v.abs() < 1e15 => format!("{}", v as i64),
        Some(v) => format!("{v}"),
    }
}

/// The report of `range` as text in `format`.
pub fn render(report: &Report, format: Format, range: &Range) -> String {
    let bucket = report.buckets.as_ref();
    let header: Vec<&str> = bucket
        .map(|_| "bucket")
        .into_iter()
        .chain(report.by.iter().copied())
        .chain(report.measures.iter().copied())
        .collect();
    let rows: Vec<Vec<String>> = report
        .rows
        .iter()
        .enumerate()
        .map(|(i, (g, values))| {
            bucket
                .map(|b| b[i].clone())
                .into_iter()
                .chain(g.iter().cloned())
                .chain(values.iter().map(|v| cell(*v)))
                .collect()
        })
        .collect();
    match format {
        Format::Csv => {
            let quote = |s: &str| {
                if s.contains([',', '"', '\n']) {
                    format!("\"{}\"", s.replace('"', "\"\""))
                } else {
                    s.to_string()
                }
            };
            let mut out = header.join(",") + "\n";
            for r in &rows {
                out += &(r.iter().map(|c| quote(c)).collect::<Vec<_>>().join(",") + "\n");
            }
            out
        }
        Format::Json => {
            let rows: Vec<serde_json::Value> = report
                .rows
                .iter()
                .enumerate()
                .map(|(i, (g, values))| {
                    let mut o = serde_json::Map::new();
                    if let Some(b) = bucket {
                        o.insert("bucket".into(), b[i].clone().into());
                    }
                    for (name, value) in report.by.iter().zip(g) {
                        o.insert(name.to_string(), value.clone().into());
                    }
                    for (name, v) in report.measures.iter().zip(values) {
                        o.insert(name.to_string(), v.map_or(serde_json::Value::Null, Into::into));
                    }
                    serde_json::Value::Object(o)
                })
                .collect();
            let (from, to) = match range {
                Range::Since(_) => (None, None),
                Range::Between { from, to } => (Some(rfc3339(*from)), to.map(rfc3339)),
            };
            let since = match range {
                Range::Since(d) => Some(crate::config::format_duration(*d)),
                Range::Between { .. } => None,
            };
            let doc = serde_json::json!({
                "source": report.source, "newest_bucket": report.newest,
                "since": since, "from": from, "to": to, "by": report.by.join(","), "rows": rows,
            });
            serde_json::to_string_pretty(&doc).expect("JSON") + "\n"
        }
        Format::Table => {
            format!(
                "{}{} by {}, from {} (newest bucket {}); {}\n{}",
                range.describe(),
                report.title_filters,
                report.by.join(", "),
                report.source,
                report.newest.as_deref().unwrap_or("none: the table is empty"),
                report.legend,
                aligned(&header, &rows, "")
            )
        }
    }
}

/// `header` and `rows` as right-aligned columns, each line after `indent`
/// (the table format of `report` and of the demo's report).
pub fn aligned(header: &[&str], rows: &[Vec<String>], indent: &str) -> String {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].len()).chain([header[i].len()]).max().unwrap_or(0))
        .collect();
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let c: Vec<String> = cells.zip(&widths).map(|(c, w)| format!("{c:>w$}")).collect();
        format!("{indent}{}\n", c.join("  ").trim_end())
    };
    let mut out = line(&mut header.iter().copied());
    for r in rows {
        out += &line(&mut r.iter().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bid_logger_core::aggregate::Dimensions;

    const NOW: i64 = 1_796_000_000;

    fn config(since_days: u64, by: By, tables: Vec<RollupTable>) -> ReportConfig {
        ReportConfig {
            range: Range::Since(Duration::from_secs(since_days * 86_400)),
            by: vec![by],
            top: 10,
            tables,
            filters: Vec::new(),
            every: None,
            kind: Kind::Sums,
        }
    }

    #[test]
    fn the_finest_table_that_keeps_the_range_answers_it() {
        let tables = crate::db::tables::default_tables(Duration::from_secs(1));
        let at = |hours: u64, by: By| {
            source(
                &ReportConfig {
                    range: Range::Since(Duration::from_secs(hours * 3600)),
                    by: vec![by],
                    top: 1,
                    tables: tables.clone(),
                    filters: Vec::new(),
                    every: None,
                    kind: Kind::Sums,
                },
                NOW,
            )
        };
        assert_eq!(at(2, By::Country).unwrap(), "rollup_minute_est");
        assert_eq!(at(48, By::Campaign).unwrap(), "rollup_hour_est");
        assert_eq!(at(400 * 24, By::Country).unwrap(), "rollup_day_est");
        assert_eq!(at(2, By::Exchange).unwrap(), "rollup_exchange_minute_est");
        assert_eq!(at(400 * 24, By::Exchange).unwrap(), "rollup_exchange_hour_est");
    }

    #[test]
    fn filters_parse_as_their_columns_and_choose_a_table_that_has_them() {
        assert_eq!(
            filter_arg("country=BR").unwrap(),
            Filter { dimension: Dimension::Country, value: FilterValue::Text("BR".into()) }
        );
        assert_eq!(filter_arg("campaign=42").unwrap().value, FilterValue::Id(42));
        for (bad, why) in
            [("country", "dimension=value"), ("planet=mars", "unknown dimension"), ("campaign=x", "integer")]
        {
            let err = filter_arg(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
        let tables = crate::db::tables::default_tables(Duration::from_secs(1));
        let mut c = config(1, By::Exchange, tables);
        c.range = Range::Since(Duration::from_secs(3600));
        c.filters = vec![filter_arg("country=BR").unwrap()];
        assert_eq!(source(&c, NOW).unwrap(), "rollup_exchange_minute_est");
        // no table has both the exchange and the campaign
        c.filters = vec![filter_arg("campaign=42").unwrap()];
        let why = source(&c, NOW).unwrap_err();
        assert!(why.contains("exchange, campaign"), "{why}");
    }

    #[test]
    fn a_trend_reads_a_table_no_coarser_than_its_buckets() {
        let tables = crate::db::tables::default_tables(Duration::from_secs(1));
        let mut c = config(2, By::Country, tables);
        c.every = Some(Duration::from_secs(600));
        // two days would read the hour table; 10-minute buckets need the minute table
        assert_eq!(source(&c, NOW).unwrap(), "rollup_minute_est");
        // ten days: the exchange minute table (30 days, countries too)
        c.range = Range::Since(Duration::from_secs(10 * 86_400));
        assert_eq!(source(&c, NOW).unwrap(), "rollup_exchange_minute_est");
        // sixty days: no minute table keeps them
        c.range = Range::Since(Duration::from_secs(60 * 86_400));
        let why = source(&c, NOW).unwrap_err();
        assert!(why.contains("buckets of 10m"), "{why}");
        c.every = Some(Duration::from_secs(86_400));
        assert_eq!(source(&c, NOW).unwrap(), "rollup_day_est");
    }

    #[test]
    fn a_range_no_table_keeps_is_refused_saying_what_is_kept() {
        let tables: Vec<RollupTable> = crate::db::tables::default_tables(Duration::from_secs(1))
            .into_iter()
            .filter(|t| t.name != "rollup_day")
            .collect();
        // Campaigns are in the minute, hour and day tables only.
        let why = source(&config(400, By::Campaign, tables.clone()), NOW).unwrap_err();
        assert!(why.contains("400d") && why.contains("rollup_hour keeps 90d"), "{why}");
        // within the hour table's retention, it answers
        assert_eq!(source(&config(60, By::Campaign, tables.clone()), NOW).unwrap(), "rollup_hour_est");
        // Countries are in the exchange tables too: the exchange hour table
        // keeps everything, and answers.
        assert_eq!(source(&config(400, By::Country, tables), NOW).unwrap(), "rollup_exchange_hour_est");
    }

    #[test]
    fn instants_parse_as_utc_unless_they_say_otherwise() {
        let day = instant_arg("2026-12-01").unwrap();
        assert_eq!(rfc3339(day), "2026-12-01T00:00:00Z");
        assert_eq!(instant_arg("2026-12-01T06:00").unwrap(), day + 6 * 3600);
        assert_eq!(instant_arg("2026-12-01T06:00:30Z").unwrap(), day + 6 * 3600 + 30);
        assert_eq!(instant_arg("2026-12-01 06:00:00+02:00").unwrap(), day + 4 * 3600);
        assert_eq!(instant_arg("2026-12-01T06:00:00-01:30").unwrap(), day + 7 * 3600 + 1800);
        assert_eq!(instant_arg("2024-02-29").unwrap(), 1_709_164_800);
        assert_eq!(instant_arg("1970-01-01T00:00:00Z").unwrap(), 0);
        for bad in
            ["yesterday", "2026-13-01", "2026-02-30", "2026-12-01T25:00", "2026-12-01T06", "2026-12-01X", "1969-12-31"]
        {
            let why = instant_arg(bad).unwrap_err();
            assert!(why.contains("RFC 3339"), "{bad}: {why}");
        }
        for secs in [0, 951_782_400, 1_796_000_000, 4_102_444_800] {
            assert_eq!(instant_arg(&rfc3339(secs)).unwrap(), secs);
        }
    }

    #[test]
    fn an_absolute_range_reads_a_table_whose_buckets_its_bounds_fall_on() {
        let tables = crate::db::tables::default_tables(Duration::from_secs(1));
        let day = NOW - NOW % 86_400;
        let mut c = config(1, By::Country, tables);
        // two whole days a week ago: the hour table (the range is 48h long)
        c.range = Range::Between { from: day - 7 * 86_400, to: Some(day - 5 * 86_400) };
        assert_eq!(source(&c, NOW).unwrap(), "rollup_hour_est");
        // 40 days: the day table
        c.range = Range::Between { from: day - 60 * 86_400, to: Some(day - 20 * 86_400) };
        assert_eq!(source(&c, NOW).unwrap(), "rollup_day_est");
        // 40 days from half past an hour: only a minute table counts it
        // exactly, and none keeps 60 days
        c.range = Range::Between { from: day - 60 * 86_400 + 1800, to: Some(day - 20 * 86_400) };
        let why = source(&c, NOW).unwrap_err();
        assert!(why.contains("does not start and end on whole hours or days"), "{why}");
        // half past an hour, yesterday: the minute table
        c.range = Range::Between { from: day - 86_400 + 1800, to: None };
        assert_eq!(source(&c, NOW).unwrap(), "rollup_minute_est");
        // a minute tier 3 days long is gone 4 days back: the exchange minute table keeps 30
        c.range = Range::Between { from: day - 4 * 86_400 + 1800, to: Some(day - 4 * 86_400 + 3600) };
        assert_eq!(source(&c, NOW).unwrap(), "rollup_exchange_minute_est");
        assert_eq!(
            c.range.describe(),
            format!("{} to {}", rfc3339(day - 4 * 86_400 + 1800), rfc3339(day - 4 * 86_400 + 3600))
        );
    }

    #[test]
    fn two_dimensions_read_a_table_that_has_both() {
        let tables = crate::db::tables::default_tables(Duration::from_secs(1));
        let mut c = config(1, By::Country, tables);
        c.range = Range::Since(Duration::from_secs(3600));
        c.by = vec![By::Country, By::Os];
        assert_eq!(source(&c, NOW).unwrap(), "rollup_minute_est");
        c.by = vec![By::Exchange, By::Country];
        assert_eq!(source(&c, NOW).unwrap(), "rollup_exchange_minute_est");
        c.by = vec![By::Exchange, By::Campaign];
        let why = source(&c, NOW).unwrap_err();
        assert!(why.contains("exchange, campaign"), "{why}");
        // a price distribution has both, but holds the priced events alone
        let mut price = c.tables[0].clone();
        price.name = "price_exchange_campaign".into();
        price.shape.dims = Dimensions::of(&[Dimension::Exchange, Dimension::Campaign, Dimension::Price]);
        c.tables.push(price);
        assert!(source(&c, NOW).is_err(), "never read for sums");
        // ... and the one table a price report reads
        c.kind = Kind::Prices;
        assert_eq!(source(&c, NOW).unwrap(), "price_exchange_campaign_est");
        c.by = vec![By::Country];
        let why = source(&c, NOW).unwrap_err();
        assert_eq!(why, "no price distribution (a table with the `price` dimension) has the dimensions country");
        c.kind = Kind::Landscape;
        c.by = vec![By::Exchange];
        assert!(source(&c, NOW).unwrap_err().starts_with("no bid landscape"));
        c.kind = Kind::Sums;
        c.by = vec![By::Exchange, By::Campaign];
        let sql = sql(&c, "rollup_minute_est");
        assert!(
            sql.contains("exchange::text AS g0, campaign_id::text AS g1") && sql.contains("USING (g0, g1)"),
            "{sql}"
        );
    }
}
