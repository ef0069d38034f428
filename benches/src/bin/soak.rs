//! `soak`: the driver behind `scripts/soak`. Runs one `connector server`,
//! several agents and many checked tunnelled connections for a while, kills
//! and restarts agents at random, prints each process's RSS, fds, threads and
//! tokio tasks every interval, and exits 0 only if no byte was lost and
//! nothing kept growing (see `connector_benches::soak`).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use connector_benches::soak::{self, SoakConfig};

#[derive(Parser)]
#[command(about = "Soak test: long-running churn through connector, every byte checked, growth judged")]
struct Cli {
    /// The `connector` binary (default: next to this program).
    #[arg(long)]
    connector: Option<PathBuf>,
    /// A `connector dev-pki --out` directory.
    #[arg(long)]
    pki: PathBuf,
    /// Where process logs and samples.csv go (default: the --pki directory).
    #[arg(long)]
    out: Option<PathBuf>,
    /// How long the traffic runs (`90s`, `10m`, `1h`).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    duration: Duration,
    /// Tunnelled connections open at once.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Agents; agent 0 is never restarted, the others are killed and restarted at random.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
    agents: u16,
    /// Time between samples.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    interval: Duration,
    /// Samples before this are not judged for growth (default: a fifth of --duration, at most 5m).
    #[arg(long, value_parser = parse_duration)]
    warmup: Option<Duration>,
    /// Mean time between agent kills.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    kill_every: Duration,
}

/// `250ms`, `90s`, `10m`, `1h`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number and a unit, e.g. 10m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{text:?}: the unit must be ms, s, m or h")),
    }
}

fn main() {
    match run(Cli::parse()) {
        Ok(true) => std::process::exit(0),
        Ok(false) => std::process::exit(1),
        Err(err) => {
            eprintln!("soak: {err:#}");
            std::process::exit(2);
        }
    }
}

/// Whether the run passed; errors are setup failures.
fn run(cli: Cli) -> anyhow::Result<bool> {
    let connector = match cli.connector {
        Some(path) => path,
        None => std::env::current_exe()?.with_file_name("connector"),
    };
    let config = SoakConfig {
        connector,
        out: cli.out.unwrap_or_else(|| cli.pki.clone()),
        pki: cli.pki,
        duration: cli.duration,
        connections: cli.connections,
        agents: usize::from(cli.agents),
        interval: cli.interval,
        warmup: cli.warmup.unwrap_or((cli.duration / 5).min(Duration::from_secs(300))),
        kill_every: cli.kill_every,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let passed = runtime.block_on(soak::run(config))?;
    // Workers still blocked on a dead tunnel must not delay the exit.
    runtime.shutdown_timeout(Duration::from_secs(5));
    Ok(passed)
}
