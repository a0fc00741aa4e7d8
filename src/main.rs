//! The `bid-logger` daemon: parse arguments, install the metrics exporter,
//! build the pipeline, wait for a signal. Everything else lives in the
//! library; the simulator, demo and benchmark are `bid-logger-tools`.

use anyhow::Context as _;
use bid_logger::config::{mask_database_url, Config, ConfigError, LogFormat, Settings};
use bid_logger::db::tables::RollupTable;
use bid_logger::{db, pipeline, telemetry};
use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Subscribes to the bidder fleet's ZeroMQ event streams, samples whole
/// transactions, aggregates them into rollup tiers (minute, hour, day), and flushes them
/// to PostgreSQL exactly once.
#[derive(Parser)]
#[command(name = "bid-logger", version = telemetry::VERSION, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the logger until SIGTERM/SIGINT, then flush everything and exit.
    Run(ConfigArgs),
    /// Apply the SQL migrations (idempotent; `run` applies them too). Reads
    /// database-url from the same places as `run`: flag, BID_LOGGER_DATABASE_URL,
    /// the --config file, then DATABASE_URL.
    Migrate(MigrateArgs),
    /// Validate the configuration and print the effective values (password masked); with --online,
    /// also connect to PostgreSQL (TLS, migrations, grants) and to each publisher endpoint.
    CheckConfig(CheckArgs),
    /// Print events per type, win rate, spend, CPM, installs, revenue and ROAS per country, OS,
    /// campaign, advertiser or exchange (or several at once) over a recent or an absolute range, from
    /// the narrowest rollup that answers it.
    #[command(after_help = "Examples:
  bid-logger report --since 24h --by campaign --top 20
  bid-logger report --since 7d --every 1d --where country=BR
  bid-logger report --by country,os --format csv
  bid-logger report --from 2026-11-01 --to 2026-12-01 --by exchange
  bid-logger report --prices --by exchange --since 1d
  bid-logger report --landscape --by exchange --where exchange=unity")]
    Report(ReportArgs),
    /// Print each fleet group's members (when each joined, when its membership expires unrenewed, the
    /// partitions it owns and claims) and the partitions nobody owns, from the leases in PostgreSQL.
    Fleet(FleetArgs),
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct FleetArgs {
    #[command(subcommand)]
    action: Option<FleetAction>,
    #[command(flatten)]
    database: MigrateArgs,
    /// Only this group.
    #[arg(long, value_name = "NAME")]
    group: Option<String>,
    /// The groups' partition count (the members' `partition-count`): partitions never leased count as unowned.
    #[arg(long, value_name = "N", default_value_t = bid_logger::ingest::DEFAULT_PARTITION_COUNT,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(bid_logger_core::wire::MAX_PARTITIONS)))]
    partition_count: u32,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: bid_logger::fleet::status::Format,
}

#[derive(Subcommand)]
enum FleetAction {
    /// Make this configuration's group-wide settings (partition-count, sample, sample-by-type, raw-sample,
    /// event-types and the rollup tables) its group's: every member must run with them, and one that differs refuses to
    /// start. Refused while a member of the group is live.
    Set(ConfigArgs),
}

#[derive(Args)]
struct ReportArgs {
    #[command(flatten)]
    database: MigrateArgs,
    /// How far back from now, e.g. 15m, 1h, 7d, 400d [default: 1h]. Read from the finest table suited
    /// to the range's length that still keeps all of it (minute up to 6h, hour up to 31d, day beyond; a
    /// coarser one when a finer one's retention is shorter); refused, saying what is kept, when none does.
    #[arg(long, value_name = "DURATION", value_parser = bid_logger::config::duration_arg, conflicts_with = "from")]
    since: Option<std::time::Duration>,
    /// An absolute range's start instead, UTC unless an offset is given, e.g. --from 2026-12-01
    /// --to 2026-12-02, or --from 2026-12-01T06:00:00Z (up to now without --to). Read from a table
    /// whose buckets both bounds fall on.
    #[arg(long, value_name = "TIME", value_parser = bid_logger::report::instant_arg)]
    from: Option<i64>,
    /// The absolute range's end, not included, e.g. --to 2026-12-02T00:00:00Z.
    #[arg(long, value_name = "TIME", value_parser = bid_logger::report::instant_arg, requires = "from")]
    to: Option<i64>,
    /// What to group by: one dimension or several, e.g. --by country,os.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "country")]
    by: Vec<bid_logger::report::By>,
    /// Groups shown, by spend over the whole range.
    #[arg(long, value_name = "N", default_value_t = 10)]
    top: usize,
    /// Only rows where a dimension has a value, e.g. --where country=BR --where os=ios
    /// (country, os, exchange, campaign, advertiser; repeatable, all must hold).
    #[arg(long = "where", value_name = "DIMENSION=VALUE", value_parser = bid_logger::report::filter_arg)]
    filters: Vec<bid_logger::report::Filter>,
    /// A trend: one row per group and bucket of this length, e.g. --since 7d --every 1d
    /// (at least the answering table's grain).
    #[arg(long, value_name = "DURATION", value_parser = bid_logger::config::duration_arg)]
    every: Option<std::time::Duration>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: bid_logger::report::Format,
    /// Quantiles of the bids' CPM and the wins' clearing CPM (p50, p90, p99) per group instead of the sums, from a
    /// price distribution (a table declared with the `price` dimension and the group's).
    #[arg(long, conflicts_with = "landscape")]
    prices: bool,
    /// The win rate by bid CPM (bands of about 10 %) per group instead of the sums, from a bid landscape (a table
    /// declared with the `bid_price` dimension), e.g. --landscape --by exchange --where exchange=unity.
    #[arg(long)]
    landscape: bool,
}

#[derive(Args)]
struct MigrateArgs {
    /// TOML file; only its database-url, flush-interval and [rollup.*] tables are used.
    #[arg(long, env = "BID_LOGGER_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// PostgreSQL URL.
    #[arg(long, env = "BID_LOGGER_DATABASE_URL", value_name = "URL")]
    database_url: Option<String>,
}

impl MigrateArgs {
    fn database_url(self) -> Result<String, ConfigError> {
        Ok(self.load()?.0)
    }

    /// The database URL and the rollup tables the file declares.
    fn load(self) -> Result<(String, Vec<RollupTable>), ConfigError> {
        let file = match &self.config {
            Some(path) => Settings::from_file(path)?,
            None => Settings::default(),
        };
        let flush_interval = file.flush_interval()?;
        let tables = bid_logger::config::rollup_tables(file.rollup.as_ref(), flush_interval)?;
        Ok((bid_logger::config::resolve_database_url(self.database_url.or(file.database_url))?, tables))
    }
}

#[derive(Args)]
struct CheckArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Also connect: to PostgreSQL (with the URL's TLS settings: reports the TLS version, the migrations
    /// applied and still to apply, and the grants on every table) and to each `connect` endpoint's
    /// address; one line per problem on stderr, exit code 1 if there is any.
    #[arg(long)]
    online: bool,
}

#[derive(Args)]
struct ConfigArgs {
    /// TOML file with any of the keys below (flags and environment override it).
    #[arg(long, env = "BID_LOGGER_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
}

impl ConfigArgs {
    /// Whether `log-format` asks for JSON (from a flag, a variable or the
    /// file), read before the rest is validated: a configuration error is
    /// then a JSON line like every other.
    fn wants_json(&self) -> bool {
        let from_file = || self.config.as_deref().and_then(|p| Settings::from_file(p).ok()).and_then(|s| s.log_format);
        self.settings.log_format.clone().or_else(from_file).is_some_and(|f| f == "json")
    }

    fn load(self) -> Result<Config, ConfigError> {
        let file = match &self.config {
            Some(path) => Settings::from_file(path)?,
            None => Settings::default(),
        };
        self.settings.over(file).resolve()
    }
}

fn main() -> ExitCode {
    let matches = match Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e) => return clap_failure(e),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => return clap_failure(e),
    };
    let sub = matches.subcommand().map(|(_, m)| m.clone()).unwrap_or_default();
    match cli.command {
        Command::Run(args) => {
            if let Some(code) = unknown_variables() {
                return code;
            }
            let file = args.config.clone();
            let json = args.wants_json();
            let config = match args.load() {
                Ok(c) => c,
                Err(e) => return config_failure(e, &sub, file.as_deref(), json),
            };
            telemetry::init_logging(config.log_format, "info");
            let json = config.log_format == LogFormat::Json;
            match run(config) {
                Ok(code) => code,
                Err(e) => fatal(&format!("{e:#}"), json),
            }
        }
        Command::Migrate(args) => {
            let file = args.config.clone();
            let (url, tables) = match args.load() {
                Ok(loaded) => loaded,
                Err(e) => return config_failure(e, &sub, file.as_deref(), false),
            };
            telemetry::init_logging(LogFormat::Text, "info");
            report(migrate(&url, &tables))
        }
        Command::Report(args) => {
            let file = args.database.config.clone();
            let range = match (args.since, args.from) {
                (_, Some(from)) => {
                    if args.to.is_some_and(|to| to <= from) {
                        usage_error("report", "--to must be later than --from");
                    }
                    bid_logger::report::Range::Between { from, to: args.to }
                }
                (since, None) => {
                    bid_logger::report::Range::Since(since.unwrap_or(std::time::Duration::from_secs(3600)))
                }
            };
            if let Some((_, again)) = args.by.iter().enumerate().find(|(i, b)| args.by[..*i].contains(b)) {
                let name = clap::ValueEnum::to_possible_value(again).map(|v| v.get_name().to_string());
                usage_error("report", &format!("--by names {} twice", name.unwrap_or_default()));
            }
            let (url, tables) = match args.database.load() {
                Ok(loaded) => loaded,
                Err(e) => return config_failure(e, &sub, file.as_deref(), false),
            };
            let config = bid_logger::report::ReportConfig {
                range,
                by: args.by,
                top: args.top,
                tables,
                filters: args.filters,
                every: args.every,
                kind: match (args.prices, args.landscape) {
                    (true, _) => bid_logger::report::Kind::Prices,
                    (_, true) => bid_logger::report::Kind::Landscape,
                    _ => bid_logger::report::Kind::Sums,
                },
            };
            telemetry::init_logging(LogFormat::Text, "warn");
            report(report_command(&url, &config, args.format))
        }
        Command::Fleet(FleetArgs { action: Some(FleetAction::Set(args)), .. }) => {
            let sub = sub.subcommand().map(|(_, m)| m.clone()).unwrap_or_default();
            let file = args.config.clone();
            let config = match args.load() {
                Ok(c) => c,
                Err(e) => return config_failure(e, &sub, file.as_deref(), false),
            };
            telemetry::init_logging(LogFormat::Text, "warn");
            report(fleet_set(&config))
        }
        Command::Fleet(args) => {
            let file = args.database.config.clone();
            let url = match args.database.database_url() {
                Ok(url) => url,
                Err(e) => return config_failure(e, &sub, file.as_deref(), false),
            };
            telemetry::init_logging(LogFormat::Text, "warn");
            report(fleet_command(&url, args.group.as_deref(), args.partition_count, args.format))
        }
        Command::CheckConfig(CheckArgs { config: args, online }) => {
            if let Some(code) = unknown_variables() {
                return code;
            }
            let file = args.config.clone();
            match args.load() {
                Ok(c) => {
                    print!("{}", c.to_toml());
                    if online {
                        report(check_online(&c))
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                Err(e) => config_failure(e, &sub, file.as_deref(), false),
            }
        }
    }
}

/// Bad configuration: one line naming the key where the value came from
/// (`--flag`, `BID_LOGGER_…` variable, or the key in the file), exit code 2.
fn config_failure(e: ConfigError, matches: &clap::ArgMatches, file: Option<&std::path::Path>, json: bool) -> ExitCode {
    match e {
        ConfigError::Invalid { key, message } => {
            let id = key.replace('-', "_");
            let source =
                matches.try_contains_id(&id).ok().filter(|&known| known).and_then(|_| matches.value_source(&id));
            let named = match (source, file) {
                (Some(ValueSource::CommandLine), _) => format!("--{key}"),
                (Some(ValueSource::EnvVariable), _) => env_name(&key),
                (_, Some(path)) if key.starts_with("rollup.") => format!("{key}` in `{}", path.display()),
                (_, Some(path)) if key != "DATABASE_URL" && file_sets(path, &key) => {
                    format!("{key}` in `{}", path.display())
                }
                _ => key.to_string(),
            };
            fatal(&format!("invalid configuration: `{named}`: {message}"), json);
        }
        other => {
            fatal(&other.to_string(), json);
        }
    }
    ExitCode::from(2)
}

/// Says why the process stops, in one line: `bid-logger: …` on stderr, or,
/// when logs are JSON, a JSON log line at level ERROR (what a log pipeline
/// parses). Returns the generic failure code.
fn fatal(line: &str, json: bool) -> ExitCode {
    if json {
        telemetry::init_logging(LogFormat::Json, "info");
        tracing::error!(target: "bid_logger", "{line}");
    } else {
        eprintln!("bid-logger: {line}");
    }
    ExitCode::FAILURE
}

/// A `BID_LOGGER_*` variable that is no configuration key (a typo such as
/// `BID_LOGGER_PARTITION_COUNTS` would otherwise be ignored, and the logger
/// would run with the default): one line naming it, exit code 2.
fn unknown_variables() -> Option<ExitCode> {
    let run = Settings::augment_args(clap::Command::new("run"));
    let mut known: Vec<String> =
        run.get_arguments().filter_map(|a| a.get_env()).map(|e| e.to_string_lossy().into_owned()).collect();
    // --config, and the tools' variable naming the daemon's executable.
    known.extend(["BID_LOGGER_CONFIG".to_string(), "BID_LOGGER_BIN".to_string()]);
    let unknown = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .find(|k| k.starts_with("BID_LOGGER_") && !known.contains(k))?;
    eprintln!("bid-logger: invalid configuration: `{unknown}`: not a configuration variable (`bid-logger run --help` lists them)");
    Some(ExitCode::from(2))
}

/// The environment variable of a configuration key.
fn env_name(key: &str) -> String {
    format!("BID_LOGGER_{}", key.to_ascii_uppercase().replace('-', "_"))
}

/// Whether the TOML file at `path` sets `key` (it parsed, so this is only
/// about where a bad value came from).
fn file_sets(path: &std::path::Path, key: &str) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .is_some_and(|table| table.contains_key(key))
}

/// A command-line error from clap. A value that clap itself could not parse
/// (a number, say) but that came from a `BID_LOGGER_*` variable, not the
/// flag, is blamed on the variable, in the same one-line form as every
/// other configuration error; everything else is clap's usual message.
fn clap_failure(e: clap::Error) -> ExitCode {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if matches!(e.kind(), ErrorKind::InvalidValue | ErrorKind::ValueValidation) {
        let arg = match e.get(ContextKind::InvalidArg) {
            Some(ContextValue::String(arg)) => arg.clone(),
            _ => String::new(),
        };
        // "--partition-count <P>" → "partition-count"
        let key = arg.strip_prefix("--").and_then(|a| a.split([' ', '=']).next()).unwrap_or_default();
        let on_command_line = std::env::args().any(|a| a == format!("--{key}") || a.starts_with(&format!("--{key}=")));
        let var = env_name(key);
        if !key.is_empty() && !on_command_line && std::env::var_os(&var).is_some() {
            let value = match e.get(ContextKind::InvalidValue) {
                Some(ContextValue::String(v)) => v.clone(),
                _ => String::new(),
            };
            let why = std::error::Error::source(&e).map(|s| format!(": {s}")).unwrap_or_default();
            eprintln!("bid-logger: invalid configuration: `{var}`: invalid value `{value}`{why}");
            return ExitCode::from(2);
        }
    }
    let code = if e.use_stderr() { 2 } else { 0 };
    let _ = e.print();
    ExitCode::from(code)
}

fn report(result: anyhow::Result<ExitCode>) -> ExitCode {
    result.unwrap_or_else(|e| {
        eprintln!("bid-logger: {e:#}");
        ExitCode::FAILURE
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    pipeline::runtime().context("starting the async runtime")
}

fn run(config: Config) -> anyhow::Result<ExitCode> {
    let json = config.log_format == LogFormat::Json;
    let rt = runtime()?;
    // metrics-rs: libraries emit, the executable installs the recorder.
    let _guard = rt.enter();
    let signals = pipeline::Signals::install()?;
    telemetry::install_exporter(config.metrics_addr)
        .with_context(|| format!("metrics-addr: {}", config.metrics_addr))?;
    let process_metrics = rt.spawn(telemetry::sample_process_metrics());
    let progress = std::sync::Arc::new(telemetry::Progress::default());
    let summary = rt.block_on(pipeline::run(config, progress, signals, std::future::pending()))?;
    process_metrics.abort();
    if summary.sink.events_unwritten > 0 {
        let unwritten = summary.sink.events_unwritten;
        return Ok(fatal(
            &format!("stopped with {unwritten} accepted events NOT written (database unreachable)"),
            json,
        ));
    }
    Ok(ExitCode::SUCCESS)
}

/// `check-config --online`: each finding on a line of its own, problems on
/// stderr.
fn check_online(config: &Config) -> anyhow::Result<ExitCode> {
    let findings = runtime()?.block_on(bid_logger::check::online(config));
    for f in &findings {
        if f.problem {
            eprintln!("bid-logger: check: {}", f.line);
        } else {
            println!("# check: {}", f.line);
        }
    }
    Ok(if findings.iter().any(|f| f.problem) { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// A command-line error found after parsing: clap's message and usage for
/// `sub`, exit 2.
fn usage_error(sub: &str, message: &str) -> ! {
    let mut cli = Cli::command();
    cli.build();
    let mut sub = cli.find_subcommand_mut(sub).expect("a subcommand").clone();
    sub.error(clap::error::ErrorKind::ValueValidation, message).exit()
}

fn report_command(
    url: &str,
    config: &bid_logger::report::ReportConfig,
    format: bid_logger::report::Format,
) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        // Refused before connecting: no table keeps the range.
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        let source = bid_logger::report::source(config, now).map_err(|why| anyhow::anyhow!(why))?;
        let client = connect(url).await?;
        let report = bid_logger::report::run(&client, config, &source)
            .await
            .map_err(db::DbError::from)
            .with_context(|| format!("reading {source}"))?;
        print!("{}", bid_logger::report::render(&report, format, &config.range));
        Ok(ExitCode::SUCCESS)
    })
}

fn fleet_command(
    url: &str,
    group: Option<&str>,
    partition_count: u32,
    format: bid_logger::fleet::status::Format,
) -> anyhow::Result<ExitCode> {
    use bid_logger::fleet::status;
    runtime()?.block_on(async {
        let client = connect(url).await?;
        let groups = match status::read(&**client, group, partition_count).await {
            Ok(groups) => groups,
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
                eprintln!(
                    "bid-logger: {} has no fleet tables (bid_logger_members, bid_logger_leases): \
                     no member has run against it; `bid-logger migrate` creates them",
                    mask_database_url(url)
                );
                return Ok(ExitCode::FAILURE);
            }
            Err(e) => return Err(db::DbError::from(e)).context("reading bid_logger_members and bid_logger_leases"),
        };
        print!("{}", status::render(&groups, format));
        Ok(ExitCode::SUCCESS)
    })
}

/// `fleet set`: records the configuration's group-wide settings as its group's.
fn fleet_set(config: &Config) -> anyhow::Result<ExitCode> {
    use bid_logger::fleet::settings::{self, GroupSettings, SetError};
    let Some(fleet) = &config.fleet else {
        eprintln!("bid-logger: invalid configuration: `group`: `fleet set` needs the group whose settings to set");
        return Ok(ExitCode::from(2));
    };
    let i = &config.ingest;
    let new = GroupSettings::of(i.partition_count, (i.sample, i.raw_sample), &i.event_types, &config.sink.tables);
    runtime()?.block_on(async {
        let mut client = db::connect(&config.sink.database_url)
            .await
            .with_context(|| format!("connecting to {}", mask_database_url(&config.sink.database_url)))?;
        db::migrate(&mut client, &config.sink.tables).await?;
        match settings::set(&mut client, &fleet.group, &new).await {
            Ok(old) => {
                match old.as_ref().and_then(|old| new.differs(old)) {
                    Some((key, new, old)) => println!("group `{}`: {key} {old} → {new}", fleet.group),
                    None if old.is_some() => println!("group `{}`: settings unchanged", fleet.group),
                    None => println!("group `{}`: settings recorded", fleet.group),
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(e @ SetError::Live { .. }) => {
                eprintln!("bid-logger: {e}");
                Ok(ExitCode::FAILURE)
            }
            Err(SetError::Database(e)) => Err(db::DbError::from(e)).context("writing bid_logger_groups"),
        }
    })
}

/// One connection for a one-off command (`migrate`, `report`, `fleet`).
async fn connect(url: &str) -> anyhow::Result<deadpool_postgres::Object> {
    let pool = db::pool(url, 1)?;
    pool.get().await.map_err(db::DbError::from).with_context(|| format!("connecting to {}", mask_database_url(url)))
}

fn migrate(url: &str, tables: &[RollupTable]) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let mut client = connect(url).await?;
        let applied = db::migrate(&mut client, tables).await?;
        println!("migrations: {applied} applied, schema up to date");
        Ok(ExitCode::SUCCESS)
    })
}
