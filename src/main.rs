//! The `bid-logger` command: parse arguments, build the pipeline, wait for a
//! signal. Everything else lives in the library.

use anyhow::Context as _;
use bid_logger::config::{mask_database_url, Config, ConfigError, LogFormat, Settings};
use bid_logger::{pipeline, sink, telemetry};
use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Subscribes to the bidder fleet's ZeroMQ event streams, samples whole
/// transactions, aggregates them by minute and hour, and flushes the rollups
/// to PostgreSQL exactly once.
#[derive(Parser)]
#[command(name = "bid-logger", version, propagate_version = true)]
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
    /// Validate the configuration and print the effective values (password masked).
    CheckConfig(ConfigArgs),
    /// Publish a realistic bidder-fleet stream (auction → bid → win → impression → click → install → events).
    Simulate(SimulateArgs),
    /// End-to-end benchmark: null subscriber, logger (sample 1 and 1/8) and the Python baseline on one stream.
    Bench(BenchArgs),
    /// (benchmark helper) Receive N messages with the logger's socket set-up and do nothing else.
    #[command(hide = true)]
    NullSubscriber {
        #[arg(long)]
        connect: String,
        #[arg(long, default_value_t = 64)]
        partition_count: u32,
        #[arg(long, default_value = "1")]
        sample: String,
        #[arg(long)]
        count: u64,
    },
    /// (soak helper) PostgreSQL down for a while under load; see scripts/soak-outage.
    #[command(hide = true)]
    SoakOutage {
        #[arg(long, default_value_t = 10)]
        minutes: u64,
    },
    /// One-command demo: throwaway PostgreSQL (unless DATABASE_URL is set), simulator and logger,
    /// graceful stop, warehouse checked against the simulator's truth, and a short report.
    Demo(DemoArgs),
}

#[derive(Args)]
struct SimulateArgs {
    /// Endpoint to bind a PUB socket to, one per simulated bidder process (repeatable).
    #[arg(long, value_name = "ENDPOINT", default_value = "tcp://127.0.0.1:5556")]
    bind: Vec<String>,
    /// Fleet-wide partition count.
    #[arg(long, value_name = "P", default_value_t = 64)]
    partition_count: u32,
    /// Messages per second.
    #[arg(long, value_name = "N", default_value_t = 10_000.0, conflicts_with = "max")]
    rate: f64,
    /// Publish as fast as possible.
    #[arg(long)]
    max: bool,
    /// Stop after this long (e.g. 30s, 5m).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    duration: Option<std::time::Duration>,
    /// Stop after this many messages.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Generator seed (same seed, same stream).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Fraction of transaction chains that arrive hours late.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.01)]
    late_fraction: f64,
    /// Fraction of messages that are invalid.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.0)]
    invalid_fraction: f64,
    /// Send a new OS string with every transaction (cardinality explosion).
    #[arg(long)]
    os_explosion: bool,
    /// Restart every publisher's sequences every N messages.
    #[arg(long, value_name = "N")]
    restart_every: Option<u64>,
    /// Send high-water mark per socket (0 = unlimited).
    #[arg(long, value_name = "N", default_value_t = 0)]
    send_hwm: i32,
    /// Do not wait for a subscriber before sending.
    #[arg(long)]
    no_wait: bool,
    /// Write the exact expected warehouse totals as JSON to this file.
    #[arg(long, value_name = "FILE")]
    truth: Option<PathBuf>,
}

#[derive(Args)]
struct BenchArgs {
    /// Messages in the pre-generated stream.
    #[arg(long, value_name = "N", default_value_t = 2_000_000)]
    count: usize,
    /// Fleet-wide partition count.
    #[arg(long, value_name = "P", default_value_t = 64)]
    partition_count: u32,
    /// The Python baseline script (measured when the file exists).
    #[arg(long, value_name = "FILE", default_value = "scripts/baseline/py_bid_logger.py")]
    baseline: PathBuf,
    /// Rounds of the null-subscriber and logger runs; the table shows medians.
    #[arg(long, value_name = "N", default_value_t = 3)]
    rounds: usize,
    /// How long the latency run (at half the logger's ingest rate) publishes; 0s skips it.
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = parse_duration)]
    latency: std::time::Duration,
    /// The latency run's rate, as a fraction of the logger's median ingest rate.
    #[arg(long, value_name = "F", default_value_t = 0.5)]
    latency_fraction: f64,
    /// Measure only the latency, at this rate in events/s (skips the subjects, the baseline and the flush
    /// comparison).
    #[arg(long, value_name = "EVENTS_PER_S")]
    latency_rate: Option<f64>,
}

#[derive(Args)]
struct DemoArgs {
    /// How long the simulator publishes.
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = parse_duration)]
    duration: std::time::Duration,
    /// Simulated messages per second.
    #[arg(long, value_name = "N", default_value_t = 20_000.0)]
    rate: f64,
    /// Fleet-wide partition count.
    #[arg(long, value_name = "P", default_value_t = 64)]
    partition_count: u32,
    /// Simulator seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Where the logger serves /metrics during the demo.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9464")]
    metrics_addr: std::net::SocketAddr,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    bid_logger::config::parse_duration(s).ok_or_else(|| format!("expected a duration such as 30s or 5m, got `{s}`"))
}

#[derive(Args)]
struct MigrateArgs {
    /// TOML file; only its database-url is used.
    #[arg(long, env = "BID_LOGGER_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// PostgreSQL URL.
    #[arg(long, env = "BID_LOGGER_DATABASE_URL", value_name = "URL")]
    database_url: Option<String>,
}

impl MigrateArgs {
    fn database_url(self) -> Result<String, ConfigError> {
        let file = match &self.config {
            Some(path) => Settings::from_file(path)?,
            None => Settings::default(),
        };
        bid_logger::config::resolve_database_url(self.database_url.or(file.database_url))
    }
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
            let file = args.config.clone();
            let config = match args.load() {
                Ok(c) => c,
                Err(e) => return config_failure(e, &sub, file.as_deref()),
            };
            telemetry::init_logging(config.log_format, "info");
            report(run(config))
        }
        Command::Migrate(args) => {
            let file = args.config.clone();
            let url = match args.database_url() {
                Ok(url) => url,
                Err(e) => return config_failure(e, &sub, file.as_deref()),
            };
            telemetry::init_logging(LogFormat::Text, "info");
            report(migrate(&url))
        }
        Command::Simulate(args) => {
            telemetry::init_logging(LogFormat::Text, "info");
            report(simulate(args))
        }
        Command::Demo(args) => {
            // The demo narrates on stdout; logs only for problems.
            telemetry::init_logging(LogFormat::Text, "warn");
            let config = bid_logger::demo::DemoConfig {
                duration: args.duration,
                rate: args.rate,
                partition_count: args.partition_count,
                seed: args.seed,
                metrics_addr: args.metrics_addr,
            };
            report(runtime().and_then(|rt| {
                rt.block_on(bid_logger::demo::run(config))?;
                Ok(ExitCode::SUCCESS)
            }))
        }
        Command::Bench(args) => {
            telemetry::init_logging(LogFormat::Text, "warn");
            report(bench(args))
        }
        Command::NullSubscriber { connect, partition_count, sample, count } => {
            let rate = match sample.parse() {
                Ok(r) => r,
                Err(e) => {
                    return config_failure(ConfigError::Invalid { key: "sample", message: format!("{e}") }, &sub, None)
                }
            };
            bid_logger::bench::null_subscriber(&connect, partition_count, rate, count);
            ExitCode::SUCCESS
        }
        Command::SoakOutage { minutes } => {
            telemetry::init_logging(LogFormat::Text, "warn");
            report(std::env::current_exe().map_err(anyhow::Error::from).and_then(|exe| {
                bid_logger::bench::soak_outage(&exe.display().to_string(), minutes)?;
                Ok(ExitCode::SUCCESS)
            }))
        }
        Command::CheckConfig(args) => {
            let file = args.config.clone();
            match args.load() {
                Ok(c) => {
                    print!("{}", c.to_toml());
                    ExitCode::SUCCESS
                }
                Err(e) => config_failure(e, &sub, file.as_deref()),
            }
        }
    }
}

/// Bad configuration: one line naming the key where the value came from
/// (`--flag`, `BID_LOGGER_…` variable, or the key in the file), exit code 2.
fn config_failure(e: ConfigError, matches: &clap::ArgMatches, file: Option<&std::path::Path>) -> ExitCode {
    match e {
        ConfigError::Invalid { key, message } => {
            let id = key.replace('-', "_");
            let source =
                matches.try_contains_id(&id).ok().filter(|&known| known).and_then(|_| matches.value_source(&id));
            let named = match (source, file) {
                (Some(ValueSource::CommandLine), _) => format!("--{key}"),
                (Some(ValueSource::EnvVariable), _) => env_name(key),
                (_, Some(path)) if key != "DATABASE_URL" && file_sets(path, key) => {
                    format!("{key}` in `{}", path.display())
                }
                _ => key.to_string(),
            };
            eprintln!("bid-logger: invalid configuration: `{named}`: {message}");
        }
        other => eprintln!("bid-logger: {other}"),
    }
    ExitCode::from(2)
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
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn run(config: Config) -> anyhow::Result<ExitCode> {
    let summary = runtime()?.block_on(pipeline::run(config, std::future::pending()))?;
    if summary.sink.events_unwritten > 0 {
        eprintln!(
            "bid-logger: stopped with {} accepted events NOT written (database unreachable)",
            summary.sink.events_unwritten
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn migrate(url: &str) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let pool = sink::pool(url, 1)?;
        let mut client = pool
            .get()
            .await
            .map_err(sink::SinkError::from)
            .with_context(|| format!("connecting to {}", mask_database_url(url)))?;
        let applied = sink::migrate(&mut client).await?;
        println!("migrations: {applied} applied, schema up to date");
        Ok(ExitCode::SUCCESS)
    })
}

fn simulate(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal;
    let config = bid_logger::simulate::SimulateConfig {
        bind: args.bind,
        partition_count: args.partition_count,
        rate: (!args.max).then_some(args.rate),
        duration: args.duration,
        count: args.count,
        seed: args.seed,
        late_fraction: args.late_fraction,
        invalid_fraction: args.invalid_fraction,
        os_explosion: args.os_explosion,
        restart_every: args.restart_every,
        wait_for_subscribers: (!args.no_wait).then_some(std::time::Duration::from_secs(3600)),
        send_hwm: args.send_hwm,
        progress: std::io::stderr().is_terminal(),
    };
    anyhow::ensure!(
        (1..=bid_logger::wire::MAX_PARTITIONS).contains(&config.partition_count),
        "--partition-count must be 1 to 10000"
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _ = STOP.set(stop.clone());
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    if !args.no_wait {
        eprintln!("simulate: waiting for a subscriber on {}", config.bind.join(", "));
    }
    let summary = bid_logger::simulate::run(&config, &stop)?;
    let secs = summary.elapsed.as_secs_f64().max(1e-9);
    println!(
        "simulate: {} messages in {:.2} s = {:.0} msg/s ({} invalid)",
        summary.sent,
        secs,
        summary.sent as f64 / secs,
        summary.truth.invalid
    );
    for (t, n) in &summary.by_type {
        println!("  {t:<10} {n}");
    }
    if let Some(path) = args.truth {
        std::fs::write(&path, serde_json::to_vec_pretty(&summary.truth.to_json())?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("truth written to {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Set by SIGINT/SIGTERM so the simulator ends cleanly, with its summary.
static STOP: std::sync::OnceLock<std::sync::Arc<std::sync::atomic::AtomicBool>> = std::sync::OnceLock::new();

extern "C" fn on_signal(_: libc::c_int) {
    if let Some(stop) = STOP.get() {
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe()?.display().to_string();
    let baseline = args.baseline.is_file().then(|| args.baseline.clone());
    if baseline.is_none() {
        eprintln!("bench: {} not found; the Python baseline is not measured", args.baseline.display());
    }
    let config = bid_logger::bench::BenchConfig {
        count: args.count,
        partition_count: args.partition_count,
        baseline,
        exe,
        rounds: args.rounds,
        latency: args.latency,
        latency_fraction: args.latency_fraction,
        latency_rate: args.latency_rate,
    };
    runtime()?.block_on(async {
        let (_cluster, url) = match std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) {
            Some(url) => (None, url),
            None => {
                let pg = tokio::task::spawn_blocking(bid_logger::pgtemp::TempPostgres::start).await??;
                let url = pg.url();
                (Some(pg), url)
            }
        };
        bid_logger::bench::run(config, &url).await?;
        Ok(ExitCode::SUCCESS)
    })
}
