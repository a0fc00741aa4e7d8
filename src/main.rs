//! The `bid-logger` command: parse arguments, build the pipeline, wait for a
//! signal. Everything else lives in the library.

use anyhow::Context as _;
use bid_logger::config::{mask_database_url, Config, ConfigError, LogFormat, Settings};
use bid_logger::{pipeline, sink, telemetry};
use clap::{Args, Parser, Subcommand};
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
    /// Apply the SQL migrations (idempotent; `run` applies them too).
    Migrate {
        /// PostgreSQL URL.
        #[arg(long, env = "DATABASE_URL", value_name = "URL")]
        database_url: String,
    },
    /// Validate the configuration and print the effective values (password masked).
    CheckConfig(ConfigArgs),
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
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            let config = match args.load() {
                Ok(c) => c,
                Err(e) => return config_failure(e),
            };
            telemetry::init_logging(config.log_format);
            report(run(config))
        }
        Command::Migrate { database_url } => {
            telemetry::init_logging(LogFormat::Text);
            report(migrate(&database_url))
        }
        Command::CheckConfig(args) => match args.load() {
            Ok(c) => {
                print!("{}", c.to_toml());
                ExitCode::SUCCESS
            }
            Err(e) => config_failure(e),
        },
    }
}

/// Bad configuration: one line naming the key, exit code 2.
fn config_failure(e: ConfigError) -> ExitCode {
    eprintln!("bid-logger: {e}");
    ExitCode::from(2)
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
            .with_context(|| format!("connecting to {}", mask_database_url(url)))?;
        let applied = sink::migrate(&mut client).await?;
        println!("migrations: {applied} applied, schema up to date");
        Ok(ExitCode::SUCCESS)
    })
}
