//! `connector`: run a tunnel server, an agent, or a self-contained demo.

mod admin;
mod agent_cmd;
mod agents_cmd;
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
    /// List the agents connected to a server, from its admin listener (`--admin`).
    Agents(agents_cmd::AgentsArgs),
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
///
/// mimalloc asks for transparent huge pages on the memory it reserves
/// (`madvise(MADV_HUGEPAGE)`), so where THP is on (`always` or `madvise`) a
/// single touched byte made 2 MiB resident: an idle agent held 34 MiB RSS, 22
/// of them huge pages, and 500 agents in one process 2.3 MiB each instead of 121
/// KiB. Built with its `no_thp` feature, mimalloc does not ask; and `main`
/// turns THP off for the process first (`PR_SET_THP_DISABLE`), for hosts
/// where THP is `always`. The feature covers what mimalloc touches before
/// `main` (two huge pages, 4 MiB of an idle agent). Bulk throughput did not
/// change (`docs/benchmarks.md`).
///
/// `--features system-allocator` keeps glibc's malloc, for heap profiles
/// (heaptrack follows malloc only).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    // Before anything allocates much (see GLOBAL). Best effort: logged below.
    let small_pages = rustix::thread::disable_transparent_huge_pages(true);
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
    if let Err(e) = small_pages {
        tracing::info!(%e, "transparent huge pages stay on for this process; memory use may be higher");
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Server(args) => server_cmd::run(*args).await,
            Command::Agent(args) => agent_cmd::run(*args).await,
            Command::Agents(args) => agents_cmd::run(args).await,
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

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use clap::{CommandFactory, Parser};
    use connector_core::settings::{AgentSettings, Schema, ServerSettings};

    use super::{Cli, Command};

    /// Parses `connector <command> --config FILE` with `section` as the file's table.
    fn parse_file(command: &str, section: &str) -> Cli {
        let dir = std::env::temp_dir().join(format!("connector-reach-{}-{command}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("connector.toml");
        std::fs::write(&path, format!("[{command}]\n{section}")).unwrap();
        let argv: Vec<OsString> = vec!["connector".into(), command.into(), "--config".into(), path.into()];
        let argv = crate::config_file::expand(argv, &Cli::command()).unwrap();
        Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{section}: {e}"))
    }

    /// Checks that every field of `T` is a flag of `command` with its
    /// variable, and a key of its TOML table that reaches the field.
    fn reachable<T: Schema>(command: &str, settings_of: impl Fn(Cli) -> T) {
        let cli = Cli::command();
        let sub = cli.find_subcommand(command).unwrap();
        for field in T::FIELDS {
            let name = field.name();
            let arg = sub
                .get_arguments()
                .find(|a| a.get_long() == Some(name.as_str()))
                .unwrap_or_else(|| panic!("connector {command} has no --{name}"));
            assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some(field.env().as_str()));
            let sample = field.sample::<T>();
            let mut expected = T::default();
            expected.set(&name, &sample).unwrap();
            for key in [name.clone(), field.key.to_owned()] {
                let settings = settings_of(parse_file(command, &format!("{key} = {sample:?}\n")));
                assert_eq!(settings.text(&name).unwrap(), expected.text(&name).unwrap(), "{key}");
            }
        }
    }

    /// Every setting of the schema is a flag (with its `CONNECTOR_*`
    /// variable) and a `--config` file key, under both spellings; C and
    /// Python have their own such test (connector-ffi's config tests,
    /// connector-py's tests/test_settings.py).
    #[test]
    fn every_setting_is_a_flag_and_a_file_key() {
        reachable::<ServerSettings>("server", |cli| match cli.command {
            Command::Server(args) => args.settings.0,
            _ => unreachable!(),
        });
        reachable::<AgentSettings>("agent", |cli| match cli.command {
            Command::Agent(args) => args.settings.0,
            _ => unreachable!(),
        });
    }

    /// The settings reference in docs/settings.md, generated from the
    /// schema's doc comments.
    fn settings_reference() -> String {
        fn table<T: Schema>(out: &mut String, command: &str) {
            out.push_str(&format!(
                "\n## `connector {command}` (`[{command}]`)\n\n| Setting | Variable | Default | |\n|---|---|---|---|\n"
            ));
            let defaults = T::default();
            for field in T::FIELDS {
                let default = defaults.text(field.key).unwrap();
                let default = if default.is_empty() {
                    String::new()
                } else {
                    format!("`{default}`")
                };
                out.push_str(&format!(
                    "| `{}` | `{}` | {default} | {} |\n",
                    field.name(),
                    field.env(),
                    field.help().replace('|', "\\|")
                ));
            }
        }
        let mut out = String::from(
            "# Settings reference\n\n\
             <!-- Generated from the doc comments of connector-core/src/settings/{server,agent}.rs \
             by `UPDATE_DOCS=1 cargo test -p connector-cli settings_reference`; do not edit. -->\n\n\
             Every setting below is, under the same name, a flag of the `connector` binary\n\
             (`--max-agents`), a key of its `--config` file's table (`max-agents` or\n\
             `max_agents`), an environment variable (precedence: flag, variable, file,\n\
             default), a key of the C API's `connector_server_config_set` /\n\
             `connector_agent_config_set` (and `_set_toml`), and a keyword of Python's\n\
             `connector.Server` / `connector.Agent` (`max_agents`; `tokens` is `tokens_file`\n\
             there and `congestion-control` is `congestion`, and durations may be given in\n\
             seconds). Values are checked by one `validate()` in `connector_core::settings`.\n\
             Durations read `500ms`, `5s`, `2m`, `1h` (a bare number is seconds); lists take\n\
             several values (a TOML array, a repeated flag) or commas.\n",
        );
        table::<ServerSettings>(&mut out, "server");
        table::<AgentSettings>(&mut out, "agent");
        out
    }

    #[test]
    fn settings_reference_is_up_to_date() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/settings.md");
        let generated = settings_reference();
        if std::env::var_os("UPDATE_DOCS").is_some() {
            std::fs::write(path, &generated).unwrap();
        }
        let current = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            current == generated,
            "docs/settings.md is stale: run UPDATE_DOCS=1 cargo test -p connector-cli settings_reference"
        );
    }
}
