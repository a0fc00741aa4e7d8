//! `bid-logger report`: the numbers a data engineer asks for first, from any
//! warehouse, without Grafana: per group (country, OS, campaign, advertiser
//! or exchange) the events of each type, win rate, spend, CPM, installs
//! attributed and organic, and conversion revenue with its ROAS (revenue
//! over spend), over a recent range.
//!
//! It reads the `_est` view of the table that answers the range (see
//! [`source`]): the finest grain suited to the range (minute up to
//! [`MINUTE_TIER_UP_TO`], hour up to [`HOUR_TIER_UP_TO`], day beyond) among
//! the tables that keep the group's dimension and still hold the whole
//! range by their retention, a coarser one when a finer one no longer
//! does; a range no table keeps is refused in one line saying what is
//! kept. A bucket is counted when it starts inside the range. The header
//! says which table answered and how fresh it is (its newest bucket).

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
    /// How far back from now.
    pub since: Duration,
    /// The grouping.
    pub by: By,
    /// Groups shown, by spend (then events).
    pub top: usize,
    /// The warehouse's rollup tables, as configured (their grains,
    /// dimensions and retentions).
    pub tables: Vec<RollupTable>,
    /// Only rows whose dimension has this value (`--where`), all of them.
    pub filters: Vec<Filter>,
    /// A trend: one row per group and bucket of this length (`--every`).
    pub every: Option<Duration>,
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

/// A report's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The relation it read.
    pub source: String,
    /// Its newest bucket (RFC 3339, UTC), `None` when it is empty.
    pub newest: Option<String>,
    /// The grouping column's name.
    pub by: &'static str,
    /// Per group (and bucket, for a trend): its value and [`MEASURES`]
    /// (`None` where undefined, e.g. the win rate without bids).
    pub rows: Vec<(String, Vec<Option<f64>>)>,
    /// For a trend (`--every`), each row's bucket start (RFC 3339, UTC).
    pub buckets: Option<Vec<String>>,
    /// What the title says of `--every` and `--where` (e.g. ` every 1h, where country = BR`).
    pub title_filters: String,
}

/// The `_est` view a report reads (see the module's docs), or why none can
/// answer it.
pub fn source(config: &ReportConfig) -> Result<String, String> {
    let dimension = config.by.dimension();
    let wanted = if config.since <= MINUTE_TIER_UP_TO {
        Grain::Minute
    } else if config.since <= HOUR_TIER_UP_TO {
        Grain::Hour
    } else {
        Grain::Day
    };
    let every_fits = |t: &RollupTable| config.every.is_none_or(|e| e.as_secs() >= t.shape.grain.minutes() as u64 * 60);
    let holds = |t: &RollupTable| t.retention.is_none_or(|r| r >= config.since) && every_fits(t);
    let needs: Vec<Dimension> = std::iter::once(dimension).chain(config.filters.iter().map(|f| f.dimension)).collect();
    // Fewer dimensions first: the table made for the question (the exchange
    // tables for `--by exchange`, the full ones otherwise).
    let mut candidates: Vec<&RollupTable> =
        config.tables.iter().filter(|t| needs.iter().all(|&d| t.shape.dims.has(d))).collect();
    candidates.sort_by_key(|t| {
        (
            t.shape.grain,
            if dimension == Dimension::Exchange {
                t.shape.dims.iter().count()
            } else {
                5 - t.shape.dims.iter().count()
            },
        )
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
    let names: Vec<&str> = needs.iter().map(|d| d.as_str()).collect();
    Err(if kept.is_empty() {
        format!("no rollup table has the dimensions {}", names.join(", "))
    } else if let Some(every) = config.every.filter(|_| candidates.iter().any(|t| !every_fits(t))) {
        format!(
            "no rollup table keeps the last {} in buckets of {} or finer: {}",
            crate::config::format_duration(config.since),
            crate::config::format_duration(every),
            kept.join(", ")
        )
    } else {
        format!(
            "no rollup table keeps the last {} by {}: {}",
            crate::config::format_duration(config.since),
            names.join(", "),
            kept.join(", ")
        )
    })
}

/// The query of a report: `$1` is the range in seconds, `$2` the groups
/// shown, `$3` the trend's bucket in seconds (0: none), then one parameter
/// per filter. The top groups are chosen over the whole range; a trend
/// gives each of them per bucket.
pub fn sql(config: &ReportConfig, source: &str) -> String {
    // count, attributed count and price of the rows matching a filter
    let (count, attributed, price, time) = ("events", "attributed_events", "price_micros", "bucket");
    let of = |t: &str| format!("coalesce(sum({count}) FILTER (WHERE event_type = '{t}'), 0)");
    let group = config.by.column();
    let filters: String =
        config.filters.iter().enumerate().map(|(i, f)| format!(" AND {} = ${}", f.dimension.column(), i + 4)).collect();
    format!(
        "WITH g AS (
    SELECT CASE WHEN $3::float8 > 0
            THEN to_timestamp(floor(extract(epoch FROM {time}) / $3::float8) * $3::float8) END AS b,
        {group}::text AS grp, coalesce(sum({count}), 0) AS events,
        {auctions} AS auctions, {bids} AS bids, {wins} AS wins, {losses} AS losses,
        {impressions} AS impressions, {clicks} AS clicks, {installs} AS installs, {in_app} AS in_app_events,
        coalesce(sum({price}) FILTER (WHERE event_type = 'impression'), 0) AS spend_micros,
        coalesce(sum({attributed}) FILTER (WHERE event_type = 'install'), 0) AS installs_attributed,
        coalesce(sum(revenue_micros), 0) AS revenue_micros
    FROM {source} WHERE {time} >= now() - make_interval(secs => $1){filters}
    GROUP BY 1, 2
), top AS (
    SELECT grp FROM g GROUP BY grp ORDER BY sum(spend_micros) DESC, sum(events) DESC, grp LIMIT $2
)
SELECT to_char(b AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), grp,
    round(events)::float8, round(auctions)::float8, round(bids)::float8, round(wins)::float8,
    round(losses)::float8, round(impressions)::float8, round(clicks)::float8, round(installs)::float8,
    round(in_app_events)::float8,
    round((wins / nullif(bids, 0))::numeric, 4)::float8,
    round((spend_micros / 1e6)::numeric, 2)::float8,
    round((spend_micros / 1e3 / nullif(impressions, 0))::numeric, 4)::float8,
    round(installs_attributed)::float8, round(installs - installs_attributed)::float8,
    round((revenue_micros / 1e6)::numeric, 2)::float8,
    round((revenue_micros / nullif(spend_micros, 0))::numeric, 4)::float8
FROM g WHERE grp IN (SELECT grp FROM top) ORDER BY b, spend_micros DESC, events DESC, grp",
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
    let secs = config.since.as_secs_f64();
    let top = i64::try_from(config.top).unwrap_or(i64::MAX);
    let every = config.every.map_or(0.0, |e| e.as_secs_f64());
    let mut params: Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>> =
        vec![Box::new(secs), Box::new(top), Box::new(every)];
    for f in &config.filters {
        match &f.value {
            FilterValue::Text(v) => params.push(Box::new(v.clone())),
            FilterValue::Id(v) => params.push(Box::new(*v)),
        }
    }
    let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
        params.iter().map(|p| p.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
    let rows = client.query(&sql(config, source), &refs).await?;
    let newest =
        format!("SELECT to_char(max(bucket) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') FROM {source}");
    let newest: Option<String> = client.query_one(&newest, &[]).await?.get(0);
    Ok(Report {
        source: source.to_string(),
        newest,
        by: config.by.column(),
        title_filters: title_filters(config),
        buckets: config.every.map(|_| rows.iter().map(|r| r.get::<_, Option<String>>(0).unwrap_or_default()).collect()),
        rows: rows
            .iter()
            .map(|r| (r.get::<_, String>(1), (2..=MEASURES.len() + 1).map(|i| r.get::<_, Option<f64>>(i)).collect()))
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

/// The report as text in `format`; `range` names the range (e.g. `1h`).
pub fn render(report: &Report, format: Format, range: &str) -> String {
    let bucket = report.buckets.as_ref();
    let header: Vec<&str> =
        bucket.map(|_| "bucket").into_iter().chain([report.by]).chain(MEASURES.iter().copied()).collect();
    let rows: Vec<Vec<String>> = report
        .rows
        .iter()
        .enumerate()
        .map(|(i, (g, values))| {
            bucket.map(|b| b[i].clone()).into_iter().chain([g.clone()]).chain(values.iter().map(|v| cell(*v))).collect()
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
                    o.insert(report.by.to_string(), g.clone().into());
                    for (name, v) in MEASURES.iter().zip(values) {
                        o.insert(name.to_string(), v.map_or(serde_json::Value::Null, Into::into));
                    }
                    serde_json::Value::Object(o)
                })
                .collect();
            let doc = serde_json::json!({
                "source": report.source, "newest_bucket": report.newest,
                "since": range, "by": report.by, "rows": rows,
            });
            serde_json::to_string_pretty(&doc).expect("JSON") + "\n"
        }
        Format::Table => {
            format!(
                "last {range}{} by {}, from {} (newest bucket {}); spend = impressions' price, CPM per 1000 \
                 impressions, ROAS = revenue / spend\n{}",
                report.title_filters,
                report.by,
                report.source,
                report.newest.as_deref().unwrap_or("none: the table is empty"),
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

    fn config(since_days: u64, by: By, tables: Vec<RollupTable>) -> ReportConfig {
        ReportConfig {
            since: Duration::from_secs(since_days * 86_400),
            by,
            top: 10,
            tables,
            filters: Vec::new(),
            every: None,
        }
    }

    #[test]
    fn the_finest_table_that_keeps_the_range_answers_it() {
        let tables = crate::db::tables::default_tables(Duration::from_secs(1));
        let at = |hours: u64, by: By| {
            source(&ReportConfig {
                since: Duration::from_secs(hours * 3600),
                by,
                top: 1,
                tables: tables.clone(),
                filters: Vec::new(),
                every: None,
            })
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
        c.since = Duration::from_secs(3600);
        c.filters = vec![filter_arg("country=BR").unwrap()];
        assert_eq!(source(&c).unwrap(), "rollup_exchange_minute_est");
        // no table has both the exchange and the campaign
        c.filters = vec![filter_arg("campaign=42").unwrap()];
        let why = source(&c).unwrap_err();
        assert!(why.contains("exchange, campaign"), "{why}");
    }

    #[test]
    fn a_trend_reads_a_table_no_coarser_than_its_buckets() {
        let tables = crate::db::tables::default_tables(Duration::from_secs(1));
        let mut c = config(2, By::Country, tables);
        c.every = Some(Duration::from_secs(600));
        // two days would read the hour table; 10-minute buckets need the minute table
        assert_eq!(source(&c).unwrap(), "rollup_minute_est");
        // ten days: the exchange minute table (30 days, countries too)
        c.since = Duration::from_secs(10 * 86_400);
        assert_eq!(source(&c).unwrap(), "rollup_exchange_minute_est");
        // sixty days: no minute table keeps them
        c.since = Duration::from_secs(60 * 86_400);
        let why = source(&c).unwrap_err();
        assert!(why.contains("buckets of 10m"), "{why}");
        c.every = Some(Duration::from_secs(86_400));
        assert_eq!(source(&c).unwrap(), "rollup_day_est");
    }

    #[test]
    fn a_range_no_table_keeps_is_refused_saying_what_is_kept() {
        let tables: Vec<RollupTable> = crate::db::tables::default_tables(Duration::from_secs(1))
            .into_iter()
            .filter(|t| t.name != "rollup_day")
            .collect();
        // Campaigns are in the minute, hour and day tables only.
        let why = source(&config(400, By::Campaign, tables.clone())).unwrap_err();
        assert!(why.contains("400d") && why.contains("rollup_hour keeps 90d"), "{why}");
        // within the hour table's retention, it answers
        assert_eq!(source(&config(60, By::Campaign, tables.clone())).unwrap(), "rollup_hour_est");
        // Countries are in the exchange tables too: the exchange hour table
        // keeps everything, and answers.
        assert_eq!(source(&config(400, By::Country, tables)).unwrap(), "rollup_exchange_hour_est");
    }
}
