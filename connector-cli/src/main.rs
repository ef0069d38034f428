//! `connector`: run a tunnel server, an agent, or a self-contained demo.

mod admin;
mod agent_cmd;
mod config_file;
mod demo;
mod dev_pki;
mod forward_cmd;
mod frontends;
mod server_cmd;
mod settings_args;
mod units;

use clap::{CommandFactory, Parser, Subcommand};

/// Reverse tunnels over QUIC: a control plane reaches nodes in private networks.
///
/// An agent in the private network dials out to the server and keeps the
/// connection open; the server then opens TCP connections through it to any
/// host:port the agent can reach. Start with `connector demo`.
#[derive(Debug, Parser)]
#[command(name = "connector", version, propagate_version = true, args_override_self = true)]
struct Cli {
    /// Settings from a TOML file (flags and environment variables take precedence;
    /// see docs/operations.md).
    #[arg(long, global = true, env = "CONNECTOR_CONFIG", value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// Log filter (tracing-subscriber syntax, e.g. `info` or `connector_core=debug`).
    #[arg(long, global = true, env = "CONNECTOR_LOG", default_value = "info")]
    log: String,
    /// Log format: `text` (human-readable) or `json` (one object per line, with
    /// span fields such as agent, server_id and request_id).
    #[arg(long, global = true, env = "CONNECTOR_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a server that agents connect to (next to the apiserver).
    Server(Box<server_cmd::ServerArgs>),
    /// Run an agent that connects out to a server and serves its dials (on the node side).
    Agent(Box<agent_cmd::AgentArgs>),
    /// Tunnel a local TCP port to a target through a server's HTTP CONNECT frontend.
    Forward(forward_cmd::ForwardArgs),
    /// Start a server, an agent and a target in one process, tunnel traffic and report.
    Demo(demo::DemoArgs),
    /// Write a throw-away CA, certificates and a token for trying server and agent by hand.
    DevPki(dev_pki::DevPkiArgs),
}

/// mimalloc instead of glibc's malloc. Under bulk traffic glibc trimmed and
/// regrew its per-thread heaps as quinn's send buffers filled and drained:
/// the agent's profile showed page faults and `unmap_page_range` on the
/// data path, and turning trimming off (`GLIBC_TUNABLES` trim and mmap
/// thresholds) gave the same gain as mimalloc. Through `--forward` on
/// loopback, 3 s rows, three each: 9.1-9.3 / 8.8-9.3 Gbit/s up / down and
/// 1.32-1.36 CPU s/GiB, against glibc's 7.1-8.5 / 7.1-7.5 and 1.51-1.71.
/// Idle tunnelled connections cost 7.7 KiB each instead of 5.1 (server +
/// agent, `netbench idle`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args = config_file::expand(std::env::args_os().collect(), &Cli::command())?;
    let cli = Cli::parse_from(args);
    let filter = match &cli.command {
        // The demo prints its own report; keep the logs to warnings unless asked.
        Command::Demo(_) if std::env::var_os("CONNECTOR_LOG").is_none() && cli.log == "info" => "warn".to_owned(),
        _ => cli.log.clone(),
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&filter)?)
        .with_writer(std::io::stderr);
    if cli.log_format == "json" {
        logs.json().with_current_span(true).with_span_list(false).init();
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Server(args) => server_cmd::run(*args).await,
            Command::Agent(args) => agent_cmd::run(*args).await,
            Command::Forward(args) => forward_cmd::run(args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::DevPki(args) => dev_pki::run(args),
        }
    })
}

/// Resolves when the process is asked to stop (Ctrl-C or SIGTERM).
pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
