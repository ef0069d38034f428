//! `connector agent`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use connector_core::settings::{AgentSettings, parse_duration};
use connector_core::setup::SetupError;

use crate::settings_args::{SettingsArgs, flag_error};

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The settings of `connector_core::settings::AgentSettings`, one flag each.
    #[command(flatten)]
    pub(crate) settings: SettingsArgs<AgentSettings>,
    /// On SIGTERM (node shutdown): servers are sent GoAway so they route no new dials
    /// here; open tunnelled connections may finish within this grace, then the agent exits.
    #[arg(long, env = "CONNECTOR_DRAIN_GRACE", default_value = "20s", value_parser = parse_duration)]
    drain_grace: Duration,
    /// Admin HTTP endpoints on this TCP address: /metrics (Prometheus), /healthz, /readyz.
    #[arg(long, env = "CONNECTOR_ADMIN", value_name = "ADDR")]
    admin: Option<std::net::SocketAddr>,
    /// Check the settings (certificates, token file, a `--config` file) and exit without
    /// connecting: `connector agent --check-config FILE`.
    #[arg(long, value_name = "FILE")]
    check_config: Option<PathBuf>,
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let mut settings = args.settings.0;
    settings.agent_id.get_or_insert_with(crate::server_cmd::host_name);
    let setup = settings.into_setup().map_err(flag_error)?;
    match setup.check() {
        Err(SetupError::NoCredential) => anyhow::bail!("no credential: pass --token-file FILE and/or --cert/--key"),
        Err(SetupError::ServerName(server)) => {
            anyhow::bail!("cannot take a server name from --server {server:?}; pass --server-name")
        }
        checked => checked?,
    }
    if let Some(file) = &args.check_config {
        println!("{}: the agent configuration is valid", file.display());
        return Ok(());
    }
    let agent = setup.start()?;
    if let Some(addr) = args.admin {
        crate::admin::start(addr, Arc::new(agent.observer())).await?;
    }
    crate::shutdown_signal().await;
    tracing::info!(grace = ?args.drain_grace, "draining: servers are told to route no new dials here (signal again to stop at once)");
    tokio::select! {
        _ = agent.drain(args.drain_grace) => tracing::info!("stopped"),
        _ = crate::shutdown_signal() => tracing::info!("stopping at once"),
    }
    Ok(())
}
