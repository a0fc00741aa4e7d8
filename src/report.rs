//! `bid-logger report`: the numbers a data engineer asks for first, from any
//! warehouse, without Grafana: per group (country, OS, campaign, advertiser
//! or exchange) the events of each type, win rate, spend, CPM, and installs
//! attributed and organic, over a recent range.
//!
//! It reads the narrowest tier that answers the range: `rollup_minute_est`
//! up to [`MINUTE_TIER_UP_TO`], `rollup_hour_est` beyond (a bucket is
//! counted when it starts inside the range); `--by exchange` reads
//! `rollup_exchange_minute_est` and `rollup_exchange_hour_est` the same way.

use std::time::Duration;

/// Ranges up to this long read `rollup_minute_est`; longer ones `rollup_hour_est`.
pub const MINUTE_TIER_UP_TO: Duration = Duration::from_secs(6 * 3600);

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
    fn column(self) -> &'static str {
        match self {
            By::Country => "country",
            By::Os => "os",
            By::Campaign => "campaign_id",
            By::Advertiser => "advertiser_id",
            By::Exchange => "exchange",
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
    /// How far back from now.
    pub since: Duration,
    /// The grouping.
    pub by: By,
    /// Groups shown, by spend (then events).
    pub top: usize,
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
];

/// A report's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The relation it read.
    pub source: &'static str,
    /// The grouping column's name.
    pub by: &'static str,
    /// Per group: its value and [`MEASURES`] (`None` where undefined, e.g.
    /// the win rate without bids).
    pub rows: Vec<(String, Vec<Option<f64>>)>,
}

/// The relation a report over `since` reads.
pub fn source(config: &ReportConfig) -> &'static str {
    let minutes = config.since <= MINUTE_TIER_UP_TO;
    match (config.by, minutes) {
        (By::Exchange, true) => "rollup_exchange_minute_est",
        (By::Exchange, false) => "rollup_exchange_hour_est",
        (_, true) => "rollup_minute_est",
        (_, false) => "rollup_hour_est",
    }
}

/// The query of a report (`$1` is the range in seconds).
pub fn sql(config: &ReportConfig) -> String {
    let source = source(config);
    // count, attributed count and price of the rows matching a filter
    let (count, attributed, price, time) = ("events", "attributed_events", "price_micros", "bucket");
    let of = |t: &str| format!("coalesce(sum({count}) FILTER (WHERE event_type = '{t}'), 0)");
    let group = config.by.column();
    format!(
        "WITH g AS (
    SELECT {group}::text AS grp, coalesce(sum({count}), 0) AS events,
        {auctions} AS auctions, {bids} AS bids, {wins} AS wins, {losses} AS losses,
        {impressions} AS impressions, {clicks} AS clicks, {installs} AS installs, {in_app} AS in_app_events,
        coalesce(sum({price}) FILTER (WHERE event_type = 'impression'), 0) AS spend_micros,
        coalesce(sum({attributed}) FILTER (WHERE event_type = 'install'), 0) AS installs_attributed
    FROM {source} WHERE {time} >= now() - make_interval(secs => $1)
    GROUP BY 1
)
SELECT grp, round(events)::float8, round(auctions)::float8, round(bids)::float8, round(wins)::float8,
    round(losses)::float8, round(impressions)::float8, round(clicks)::float8, round(installs)::float8,
    round(in_app_events)::float8,
    round((wins / nullif(bids, 0))::numeric, 4)::float8,
    round((spend_micros / 1e6)::numeric, 2)::float8,
    round((spend_micros / 1e3 / nullif(impressions, 0))::numeric, 4)::float8,
    round(installs_attributed)::float8, round(installs - installs_attributed)::float8
FROM g ORDER BY spend_micros DESC, events DESC, grp LIMIT $2",
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

/// Runs a report.
pub async fn run(client: &tokio_postgres::Client, config: &ReportConfig) -> Result<Report, tokio_postgres::Error> {
    let secs = config.since.as_secs_f64();
    let top = i64::try_from(config.top).unwrap_or(i64::MAX);
    let rows = client.query(&sql(config), &[&secs, &top]).await?;
    Ok(Report {
        source: source(config),
        by: config.by.column(),
        rows: rows
            .iter()
            .map(|r| (r.get::<_, String>(0), (1..=MEASURES.len()).map(|i| r.get::<_, Option<f64>>(i)).collect()))
            .collect(),
    })
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
    let header: Vec<&str> = std::iter::once(report.by).chain(MEASURES.iter().copied()).collect();
    let rows: Vec<Vec<String>> = report
        .rows
        .iter()
        .map(|(g, values)| std::iter::once(g.clone()).chain(values.iter().map(|v| cell(*v))).collect())
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
                .map(|(g, values)| {
                    let mut o = serde_json::Map::new();
                    o.insert(report.by.to_string(), g.clone().into());
                    for (name, v) in MEASURES.iter().zip(values) {
                        o.insert(name.to_string(), v.map_or(serde_json::Value::Null, Into::into));
                    }
                    serde_json::Value::Object(o)
                })
                .collect();
            let doc = serde_json::json!({
                "source": report.source,
                "since": range, "by": report.by, "rows": rows,
            });
            serde_json::to_string_pretty(&doc).expect("JSON") + "\n"
        }
        Format::Table => {
            format!(
                "last {range} by {}, from {}; spend = impressions' price, CPM per 1000 impressions\n{}",
                report.by,
                report.source,
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
