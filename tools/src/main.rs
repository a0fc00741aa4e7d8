//! `bid-logger-tools`: the simulator users load-test a set-up with, the
//! one-command demo, the end-to-end benchmark and the soak helpers. Kept
//! out of the daemon: `bid-logger` carries only what runs in production.
//! The tools start the `bid-logger` built beside them (or `BID_LOGGER_BIN`).

use anyhow::Context as _;
use bid_logger::config::LogFormat;
use bid_logger::telemetry;
use bid_logger_core::synth::Traffic;
use bid_logger_tools::simulate::{self, SimulateConfig};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// bid-logger's tools: a bidder-fleet simulator, the demo and the benchmark.
#[derive(Parser)]
#[command(name = "bid-logger-tools", version = telemetry::VERSION, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Publish a realistic bidder-fleet stream (auction → bid → win → impression → click → install → events).
    Simulate(SimulateArgs),
    /// One-command demo: throwaway PostgreSQL (unless DATABASE_URL is set), simulator and logger,
    /// graceful stop, warehouse checked against the simulator's truth, and a short report.
    Demo(DemoArgs),
    /// End-to-end benchmark: null subscriber, logger (sample 1 and 1/8) and the Python baseline on one stream.
    Bench(BenchArgs),
    /// Write the generated parts of the docs (the configuration reference in
    /// docs/configuration.md, the metrics table in docs/metrics.md) from the code; with --check, only say whether they are current.
    Docs {
        /// Exit 1 if a page differs from what the code generates, writing nothing.
        #[arg(long)]
        check: bool,
    },
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
    #[arg(long, value_name = "DURATION", value_parser = bid_logger::config::duration_arg)]
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
    /// The first seq of every (publisher, topic) sequence, and after each restart.
    #[arg(long, value_name = "N", default_value_t = 1)]
    first_seq: u64,
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
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = bid_logger::config::duration_arg)]
    latency: std::time::Duration,
    /// The latency run's rate, as a fraction of the logger's median ingest rate.
    #[arg(long, value_name = "F", default_value_t = 0.5)]
    latency_fraction: f64,
    /// Measure only the latency, at this rate in events/s (skips the subjects, the baseline and the flush
    /// comparison).
    #[arg(long, value_name = "EVENTS_PER_S")]
    latency_rate: Option<f64>,
    /// How long the paced stream (the simulator's traffic at --paced-rate, into the logger and PostgreSQL, then
    /// into the null subscriber: the whole system's CPU per event as a running service pays it) publishes to each;
    /// 0s skips it.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = bid_logger::config::duration_arg)]
    paced: std::time::Duration,
    /// The paced stream's rate in messages/s.
    #[arg(long, value_name = "N", default_value_t = 200_000.0)]
    paced_rate: f64,
}

#[derive(Args)]
struct DemoArgs {
    /// How long the simulator publishes.
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = bid_logger::config::duration_arg)]
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Docs { check } => report(docs(check)),
        Command::Simulate(args) => {
            telemetry::init_logging(LogFormat::Text, "info");
            report(simulate(args))
        }
        Command::Demo(args) => {
            // The demo narrates on stdout; logs only for problems.
            telemetry::init_logging(LogFormat::Text, "warn");
            let config = bid_logger_tools::demo::DemoConfig {
                duration: args.duration,
                rate: args.rate,
                partition_count: args.partition_count,
                seed: args.seed,
                metrics_addr: args.metrics_addr,
            };
            report(runtime().and_then(|rt| {
                let _guard = rt.enter();
                telemetry::install_exporter(config.metrics_addr)
                    .with_context(|| format!("--metrics-addr {}", config.metrics_addr))?;
                rt.block_on(bid_logger_tools::demo::run(config))?;
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
                    eprintln!("bid-logger-tools: invalid configuration: `--sample`: {e}");
                    return ExitCode::from(2);
                }
            };
            bid_logger_tools::bench::null_subscriber(&connect, partition_count, rate, count);
            ExitCode::SUCCESS
        }
        Command::SoakOutage { minutes } => {
            telemetry::init_logging(LogFormat::Text, "warn");
            report(std::env::current_exe().map_err(anyhow::Error::from).and_then(|exe| {
                let logger = bid_logger_tools::logger_exe().display().to_string();
                bid_logger_tools::bench::soak_outage(&logger, &exe.display().to_string(), minutes)?;
                Ok(ExitCode::SUCCESS)
            }))
        }
    }
}

fn report(result: anyhow::Result<ExitCode>) -> ExitCode {
    result.unwrap_or_else(|e| {
        eprintln!("bid-logger-tools: {e:#}");
        ExitCode::FAILURE
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    bid_logger::pipeline::runtime().context("starting the async runtime")
}

fn simulate(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal;
    let config = SimulateConfig {
        bind: args.bind,
        traffic: Traffic {
            partition_count: args.partition_count,
            seed: args.seed,
            late_fraction: args.late_fraction,
            invalid_fraction: args.invalid_fraction,
            os_explosion: args.os_explosion,
        },
        rate: (!args.max).then_some(args.rate),
        duration: args.duration,
        count: args.count,
        restart_every: args.restart_every,
        first_seq: args.first_seq,
        wait_for_subscribers: (!args.no_wait).then_some(std::time::Duration::from_secs(3600)),
        send_hwm: args.send_hwm,
        progress: std::io::stderr().is_terminal(),
    };
    anyhow::ensure!(
        (1..=bid_logger_core::wire::MAX_PARTITIONS).contains(&config.traffic.partition_count),
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
    let summary = simulate::run(&config, &stop)?;
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
    let tools = std::env::current_exe()?.display().to_string();
    let logger = bid_logger_tools::logger_exe().display().to_string();
    let baseline = args.baseline.is_file().then(|| args.baseline.clone());
    if baseline.is_none() {
        eprintln!("bench: {} not found; the Python baseline is not measured", args.baseline.display());
    }
    anyhow::ensure!(args.paced.is_zero() || args.paced_rate > 0.0, "--paced-rate must be above zero");
    let config = bid_logger_tools::bench::BenchConfig {
        count: args.count,
        partition_count: args.partition_count,
        baseline,
        logger,
        tools,
        rounds: args.rounds,
        latency: args.latency,
        latency_fraction: args.latency_fraction,
        latency_rate: args.latency_rate,
        paced: args.paced,
        paced_rate: args.paced_rate,
    };
    runtime()?.block_on(async {
        let (_cluster, url) = match std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) {
            Some(url) => (None, url),
            None => {
                let pg = tokio::task::spawn_blocking(bid_logger_tools::pgtemp::TempPostgres::start).await??;
                let url = pg.url();
                (Some(pg), url)
            }
        };
        bid_logger_tools::bench::run(config, &url).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `docs`: the generated sections of the docs pages, from the code.
fn docs(check: bool) -> anyhow::Result<ExitCode> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut stale = Vec::new();
    for (page, generated) in bid_logger_tools::docs::generated() {
        let path = root.join(page);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {page}"))?;
        let new = bid_logger_tools::docs::splice(&text, &generated).map_err(|e| anyhow::anyhow!("{page}: {e}"))?;
        if new != text {
            stale.push(page);
            if !check {
                std::fs::write(&path, new).with_context(|| format!("writing {page}"))?;
                println!("docs: {page} written");
            }
        }
    }
    if check && !stale.is_empty() {
        eprintln!("docs: {} differ from the code; run `cargo run -p bid-logger-tools -- docs`", stale.join(", "));
        return Ok(ExitCode::FAILURE);
    }
    if stale.is_empty() {
        println!("docs: current");
    }
    Ok(ExitCode::SUCCESS)
}
